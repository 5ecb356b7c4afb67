package main

import (
	"net"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/herd-run/herd/internal/master"
)

// Socket activation: under systemd-socket-activate (Debian's systemd
// package), herd started with no --listen serves on the socket it is
// passed.
func TestSocketActivation(t *testing.T) {
	activate, err := exec.LookPath("systemd-socket-activate")
	if err != nil {
		t.Skip("systemd-socket-activate not installed (.ci/run installs systemd)")
	}
	root, _ := docroot(t)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	must(t, err)
	addr := l.Addr().String()
	l.Close()
	// systemd-socket-activate starts the program only when the first
	// connection comes (it waits in the passed socket's queue), so the
	// first request is sent while herd is being started.
	first := make(chan string, 1)
	go func() {
		for deadline := time.Now().Add(20 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
			if code, body, err := get(client(), "http://"+addr+"/hello.txt"); err == nil && code == 200 {
				first <- string(body)
				return
			}
		}
		first <- ""
	}()
	h := startWrapped(t, []string{activate, "-l", addr, "-E", "HERD_TEST_MAIN=1"}, root, "--workers", "2")
	got := <-first
	if got != "hello, herd\n" {
		t.Fatalf("no answer on the activated socket")
	}
	if !strings.Contains(h.Log(), "using sockets from systemd") {
		t.Errorf("herd did not say it used systemd's socket")
	}
	res := load("http://"+addr+"/hello.txt", []byte("hello, herd\n"), 4, 100, 20*time.Second, nil)
	if res.failed != 0 {
		t.Errorf("%d of %d failed on the activated socket (%s)", res.failed, res.sent, res.firstErr)
	}
}

// Type=notify: the master sends READY=1 once its workers are ready,
// RELOADING=1 and READY=1 around a reload, and STOPPING=1.
func TestSystemdNotify(t *testing.T) {
	dir := t.TempDir()
	sockPath := filepath.Join(dir, "notify.sock")
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: sockPath, Net: "unixgram"})
	must(t, err)
	defer conn.Close()
	msgs := make(chan string, 16)
	go func() {
		buf := make([]byte, 512)
		for {
			n, err := conn.Read(buf)
			if err != nil {
				return
			}
			msgs <- string(buf[:n])
		}
	}()
	t.Setenv("NOTIFY_SOCKET", sockPath)
	root, _ := docroot(t)
	h := startHerd(t, root, "--workers", "2")
	expect := func(want string) {
		t.Helper()
		select {
		case m := <-msgs:
			if !strings.Contains(m, want) {
				t.Fatalf("notify: got %q, want %q", m, want)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("notify: no %q", want)
		}
	}
	expect("READY=1")
	h.signal(syscall.SIGHUP)
	expect("RELOADING=1")
	expect("READY=1")
	h.signal(syscall.SIGTERM)
	expect("STOPPING=1")
	h.waitExit(10 * time.Second)
	select {
	case m := <-msgs:
		t.Errorf("unexpected notification %q (from a worker?)", m)
	case <-time.After(200 * time.Millisecond):
	}
}

// Socket activation with HTTPS: systemd passes :80-like and :443-like
// sockets, the second named "https" (FileDescriptorName=https); herd
// serves TLS on that one and plain HTTP on the other, and still does after
// a reload and a binary upgrade (the new master learns which inherited sockets are TLS
// from the old one).
func TestSocketActivationTLS(t *testing.T) {
	activate, err := exec.LookPath("systemd-socket-activate")
	if err != nil {
		t.Skip("systemd-socket-activate not installed (.ci/run installs systemd)")
	}
	root, _ := docroot(t)
	plainAddr, tlsAddr := freeAddr(t), freeAddr(t)
	cert, key := writeCert(t, t.TempDir(), 1)
	first := make(chan bool, 1)
	go func() { // the first connection starts herd
		for deadline := time.Now().Add(20 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
			if code, _, err := get(tlsClient(), "https://"+tlsAddr+"/hello.txt"); err == nil && code == 200 {
				first <- true
				return
			}
		}
		first <- false
	}()
	h := startWrapped(t, []string{activate, "-l", plainAddr, "-l", tlsAddr, "--fdname=http:https", "-E", "HERD_TEST_MAIN=1"},
		root, "--workers", "2", "--tls-cert", cert, "--tls-key", key)
	if !<-first {
		t.Fatalf("no HTTPS answer on the socket named https:\n%s", h.Log())
	}
	check := func(when string) {
		t.Helper()
		if code, body, err := get(tlsClient(), "https://"+tlsAddr+"/hello.txt"); err != nil || code != 200 || string(body) != "hello, herd\n" {
			t.Errorf("%s: HTTPS on %s: %d %q %v", when, tlsAddr, code, body, err)
		}
		if code, body, err := get(client(), "http://"+plainAddr+"/hello.txt"); err != nil || code != 200 || string(body) != "hello, herd\n" {
			t.Errorf("%s: plain HTTP on %s: %d %q %v", when, plainAddr, code, body, err)
		}
	}
	check("started")
	// HUP judges the new configuration with the sockets that serve on:
	// the certificate has a TLS listener, systemd's, though no
	// --tls-listen names it (it was refused as "no TLS listener").
	must(t, syscall.Kill(h.pid(), syscall.SIGHUP))
	if !h.logged("reload done", 10*time.Second) || strings.Contains(h.Log(), "invalid") {
		t.Fatalf("HUP with activated TLS sockets:\n%s", h.Log())
	}
	check("reloaded")
	old := h.pid()
	must(t, syscall.Kill(old, syscall.SIGUSR2))
	for deadline := time.Now().Add(15 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		if pid, err := master.ReadPIDFile(h.pidFile); err == nil && pid != old && !alive(old) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the upgrade did not finish:\n%s", h.Log())
		}
	}
	check("upgraded")
}
