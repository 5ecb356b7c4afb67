package main

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/herd-run/herd/internal/lab"
	"github.com/herd-run/herd/internal/master"
	"github.com/herd-run/herd/internal/shm"
)

// Tests of herd as an operator deploys it: the signals a service manager
// or a container runtime sends, and what the docs promise for them.

// slowDownload starts a GET of /big.bin that reads a slice at a time, so
// the transfer takes a couple of seconds, and returns what it received.
func slowDownload(t *testing.T, addr string) <-chan []byte {
	t.Helper()
	d := net.Dialer{Control: func(_, _ string, rc syscall.RawConn) error {
		return rc.Control(func(fd uintptr) { syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, 4096) })
	}}
	c, err := d.Dial("tcp", addr)
	must(t, err)
	got := make(chan []byte, 1)
	go func() {
		defer c.Close()
		c.SetDeadline(time.Now().Add(30 * time.Second))
		io.WriteString(c, "GET /big.bin HTTP/1.1\r\nHost: x\r\n\r\n")
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil {
			got <- nil
			return
		}
		var body bytes.Buffer
		buf := make([]byte, 32<<10)
		for {
			n, err := resp.Body.Read(buf)
			body.Write(buf[:n])
			if err != nil {
				break
			}
			time.Sleep(2 * time.Millisecond) // a slow reader: a few MB/s
		}
		got <- body.Bytes()
	}()
	return got
}

// TERM is graceful, as Kubernetes, Docker and systemd expect: a download
// under way when it arrives completes byte-exact, then the master exits 0.
func TestTermFinishesSlowDownload(t *testing.T) {
	root, big := docroot(t)
	h := startHerd(t, root, "--workers", "2")
	got := slowDownload(t, h.addr)
	time.Sleep(300 * time.Millisecond)
	h.signal(syscall.SIGTERM)
	body := <-got
	if !bytes.Equal(body, big) {
		t.Errorf("download cut by TERM: %d of %d bytes", len(body), len(big))
	}
	if code := h.waitExit(10 * time.Second); code != 0 {
		t.Errorf("exit %d after TERM", code)
	}
}

// A second TERM, or INT, is the fast stop.
func TestSecondTermIsFast(t *testing.T) {
	root, big := docroot(t)
	h := startHerd(t, root, "--workers", "1")
	got := slowDownload(t, h.addr)
	time.Sleep(300 * time.Millisecond)
	h.signal(syscall.SIGTERM)
	time.Sleep(100 * time.Millisecond)
	h.signal(syscall.SIGTERM)
	h.waitExit(5 * time.Second)
	if body := <-got; len(body) >= len(big) {
		t.Errorf("a second TERM let the download finish (%d bytes)", len(body))
	}
}

// herd as PID 1 of a container (here a new PID namespace): TERM from
// outside is a graceful stop too.
func TestTermAsPID1(t *testing.T) {
	if _, err := os.Stat("/usr/bin/unshare"); err != nil {
		t.Skip("unshare(1) not installed")
	}
	root, big := docroot(t)
	port := freeAddr(t)
	h := startWrapped(t, []string{"unshare", "--pid", "--fork", "--mount-proc"}, root, "--workers", "2", "--listen", port)
	kids := children(h.pid())
	if len(kids) != 1 {
		t.Fatalf("unshare has children %v, want the master", kids)
	}
	master := kids[0]
	if b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/status", master)); !strings.Contains(string(b), "NSpid:") ||
		!strings.HasSuffix(strings.Fields(grepLine(string(b), "NSpid:"))[len(strings.Fields(grepLine(string(b), "NSpid:")))-1], "1") {
		t.Fatalf("the master is not PID 1 of its namespace:\n%s", grepLine(string(b), "NSpid:"))
	}
	got := slowDownload(t, port)
	time.Sleep(300 * time.Millisecond)
	must(t, syscall.Kill(master, syscall.SIGTERM))
	if body := <-got; !bytes.Equal(body, big) {
		t.Errorf("download cut by TERM to PID 1: %d of %d bytes", len(body), len(big))
	}
	if code := h.waitExit(10 * time.Second); code != 0 {
		t.Errorf("exit %d", code)
	}
}

func grepLine(s, prefix string) string {
	for _, l := range strings.Split(s, "\n") {
		if strings.HasPrefix(l, prefix) {
			return l
		}
	}
	return ""
}

// children lists a process's child pids.
func children(pid int) []int {
	b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/children", pid, pid))
	var out []int
	for _, f := range strings.Fields(string(b)) {
		n, _ := strconv.Atoi(f)
		out = append(out, n)
	}
	return out
}

// freeAddr is a loopback address with a port nothing listens on now, for
// the tests that must name an address before herd binds it.
//
// The port is drawn below the kernel's ephemeral range: a port the kernel
// handed out for ":0" and took back could go to the next test's ":0"
// listener or to any client's connection before herd binds it (CI saw a
// TLS test lose its port so), while ports below the range are only ever
// chosen here, at random.
func freeAddr(t *testing.T) string {
	t.Helper()
	low := 32768
	if b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range"); err == nil {
		if f := strings.Fields(string(b)); len(f) == 2 {
			if n, err := strconv.Atoi(f[0]); err == nil {
				low = n
			}
		}
	}
	const base = 10000
	if low <= base+1000 {
		low = 65536 // an unusual range: any port not bound now
	}
	for range 100 {
		addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(base+rand.IntN(low-base)))
		if l, err := net.Listen("tcp", addr); err == nil {
			l.Close()
			return addr
		}
	}
	t.Fatal("no free port found below the ephemeral range")
	return ""
}

// USR1 after logrotate has moved the access log: the workers write a new
// file at the configured path.
func TestUSR1ReopensAccessLog(t *testing.T) {
	for _, engine := range []string{"native", "nethttp"} {
		t.Run(engine, func(t *testing.T) {
			root, _ := docroot(t)
			dir := t.TempDir()
			logPath := filepath.Join(dir, "access.log")
			h := startHerd(t, root, "--workers", "1", "--access-log", logPath, "--engine", engine)
			waitLine := func(path, want string) {
				t.Helper()
				for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(50 * time.Millisecond) {
					if b, _ := os.ReadFile(path); strings.Contains(string(b), want) {
						return
					}
					if time.Now().After(deadline) {
						b, _ := os.ReadFile(path)
						t.Fatalf("%s has no %q:\n%s", path, want, b)
					}
				}
			}
			get(client(), "http://"+h.addr+"/hello.txt?before")
			waitLine(logPath, "/hello.txt?before")
			must(t, os.Rename(logPath, logPath+".1")) // what logrotate does
			h.signal(syscall.SIGUSR1)
			if !h.logged("USR1: workers reopen their logs", 5*time.Second) {
				t.Fatal("USR1 not handled")
			}
			// The worker hears USR1 a moment after the master: requests go
			// on until one of them is logged in the new file.
			for i, deadline := 0, time.Now().Add(5*time.Second); ; i++ {
				get(client(), fmt.Sprintf("http://%s/hello.txt?after-%d", h.addr, i))
				if b, _ := os.ReadFile(logPath); strings.Contains(string(b), "?after-") {
					break
				}
				if time.Now().After(deadline) {
					t.Fatalf("no line in a new %s after USR1", logPath)
				}
				time.Sleep(50 * time.Millisecond)
			}
			waitLine(logPath+".1", "/hello.txt?before")
		})
	}
}

// A disk that fills up costs the access log the lines written meanwhile,
// not every line after: once there is room again, lines are written again,
// and the worker's log says when writing failed and when it came back.
// Before, the first failed write stopped the log for good (until USR1 or
// the worker's replacement), without a word. Needs root, for a small tmpfs.
func TestAccessLogSurvivesAFullDisk(t *testing.T) {
	for _, engine := range []string{"native", "nethttp"} {
		t.Run(engine, func(t *testing.T) {
			root, _ := docroot(t)
			dir := t.TempDir()
			if err := syscall.Mount("tmpfs", dir, "tmpfs", 0, "size=64k"); err != nil {
				t.Skipf("a small tmpfs for the log (needs root): %v", err)
			}
			t.Cleanup(func() { syscall.Unmount(dir, syscall.MNT_DETACH) })
			logPath, fill := filepath.Join(dir, "access.log"), filepath.Join(dir, "fill")
			h := startHerd(t, root, "--workers", "1", "--access-log", logPath, "--engine", engine)
			// Fill the disk, then ask until the worker's write fails (its
			// file's last page may take a few lines first).
			f, err := os.Create(fill)
			must(t, err)
			for {
				if _, err := f.Write(make([]byte, 4096)); err != nil {
					break
				}
			}
			f.Close()
			for i, deadline := 0, time.Now().Add(10*time.Second); !strings.Contains(h.Log(), "access log: write failed"); i++ {
				if time.Now().After(deadline) {
					t.Fatalf("no failed write logged with the disk full:\n%s", h.Log())
				}
				get(client(), fmt.Sprintf("http://%s/hello.txt?full-%d", h.addr, i))
				time.Sleep(5 * time.Millisecond)
			}
			must(t, os.Remove(fill))
			for i, deadline := 0, time.Now().Add(5*time.Second); ; i++ {
				get(client(), fmt.Sprintf("http://%s/hello.txt?after-%d", h.addr, i))
				if b, _ := os.ReadFile(logPath); strings.Contains(string(b), "?after-") {
					break
				}
				if time.Now().After(deadline) {
					t.Fatalf("no line written once the disk had room again:\n%s", h.Log())
				}
				time.Sleep(50 * time.Millisecond)
			}
			if !h.logged("access log: writing again", 5*time.Second) {
				t.Errorf("the recovery was not logged:\n%s", h.Log())
			}
		})
	}
}

// A master whose standard error is a pipe that nobody reads any more
// (`herd serve 2>&1 | logger`, the logger gone) serves on, reloads and
// stops gracefully, its workers too. Go ends a program that writes to a
// broken pipe on descriptor 1 or 2 with SIGPIPE unless it asks for the
// signal: before, the master died at its first log line after (here, the
// reload's), and every worker with it.
func TestLogReaderGone(t *testing.T) {
	root, _ := docroot(t)
	// At debug level a worker logs as it starts.
	h := startHerd(t, root, "--workers", "2", "--log-level", "debug")
	h.stderr.Close()
	h.signal(syscall.SIGHUP) // the reload logs, the new workers too
	h.signal(syscall.SIGTTIN)
	// The reload ends with three ready workers of the new generation, and
	// none has died meanwhile or a second later (a worker that died at its
	// first log line would have been replaced: a restart).
	settled := func(s shm.Snapshot) bool {
		if s.Reloads < 1 || s.Workers != 3 || len(s.Live) != 3 {
			return false
		}
		for _, w := range s.Live {
			if w.Generation != s.Generation || w.State != "ready" {
				return false
			}
		}
		return true
	}
	var s shm.Snapshot
	for deadline := time.Now().Add(10 * time.Second); !settled(s); s = h.status() {
		select {
		case <-h.exited:
			t.Fatalf("the master exited (%v) once its log's reader had gone", h.cmd.ProcessState)
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("no three ready workers of a new generation within 10s: %+v", s)
		}
	}
	time.Sleep(time.Second)
	if after := h.status(); s.Restarts != 0 || after.Restarts != 0 || !slices.Equal(readyPIDs(after, s.Generation), readyPIDs(s, s.Generation)) {
		t.Fatalf("workers %v (restarts %d), a second later %v (restarts %d); want the same three, none restarted",
			readyPIDs(s, s.Generation), s.Restarts, readyPIDs(after, s.Generation), after.Restarts)
	}
	if code, body, err := get(client(), "http://"+h.addr+"/hello.txt"); err != nil || code != 200 || string(body) != "hello, herd\n" {
		t.Fatalf("after the reload: %d %q %v", code, body, err)
	}
	h.signal(syscall.SIGTERM)
	select {
	case <-h.exited:
		if !h.cmd.ProcessState.Success() {
			t.Errorf("the master's graceful stop ended with %v", h.cmd.ProcessState)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("the master did not stop within 15s of TERM")
	}
}

// README.md and docs/OPERATING.md show the signal table `herd help
// signals` prints, row for row.
func TestSignalTableDocumented(t *testing.T) {
	out, _, code := runHerd(t, "help", "signals")
	if code != 0 {
		t.Fatalf("herd help signals: exit %d", code)
	}
	for _, s := range signals {
		if !strings.Contains(out, s[0]) || !strings.Contains(out, s[1]) {
			t.Errorf("herd help signals lacks %s", s[0])
		}
	}
	for _, doc := range []string{"../../README.md", "../../docs/OPERATING.md"} {
		b, err := os.ReadFile(doc)
		must(t, err)
		if !strings.Contains(string(b), signalsMarkdown()) {
			t.Errorf("%s does not have the signal table; it should read:\n%s", doc, signalsMarkdown())
		}
	}
}

// USR2 with --admin, as the shipped unit runs herd: the new master takes
// the admin socket over with the others (binding it again failed: "address
// already in use"), a client loop on the site and on the admin endpoint
// sees no failure, and /status then answers from the new master.
func TestUpgradeKeepsAdminSocket(t *testing.T) {
	for _, kind := range []string{"tcp", "unix"} {
		t.Run(kind, func(t *testing.T) {
			root, _ := docroot(t)
			adminArg := "127.0.0.1:0"
			if kind == "unix" {
				adminArg = "unix:" + filepath.Join(t.TempDir(), "admin.sock")
			}
			h := startHerd(t, root, "--workers", "2", "--admin", adminArg)
			m := regexp.MustCompile(`msg="admin endpoint" listen=(\S+)`).FindStringSubmatch(h.Log())
			if m == nil {
				t.Fatalf("no admin endpoint logged:\n%s", h.Log())
			}
			adminClient := client()
			adminURL := "http://" + m[1]
			if kind == "unix" {
				path := m[1]
				adminClient.Transport = &http.Transport{DisableKeepAlives: true,
					DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
						return (&net.Dialer{}).DialContext(ctx, "unix", path)
					}}
				adminURL = "http://admin"
			}
			stop := make(chan struct{})
			site := make(chan loadResult)
			go func() {
				site <- load("http://"+h.addr+"/hello.txt", []byte("hello, herd\n"), 2, 100_000, 30*time.Second, stop)
			}()
			type adminResult struct {
				failed int
				first  string
			}
			adminFailed := make(chan adminResult)
			go func() {
				var res adminResult
				for i := 0; i < 100_000; i++ {
					select {
					case <-stop:
						adminFailed <- res
						return
					default:
					}
					if code, _, err := get(adminClient, adminURL+"/healthz"); err != nil || code != 200 {
						if res.failed++; res.first == "" {
							res.first = fmt.Sprintf("%s: %d %v", time.Now().Format("15:04:05.000"), code, err)
						}
					}
				}
				adminFailed <- res
			}()
			old := h.pid()
			h.signal(syscall.SIGUSR2)
			var newPID int
			for deadline := time.Now().Add(15 * time.Second); ; time.Sleep(50 * time.Millisecond) {
				if pid, err := master.ReadPIDFile(h.pidFile); err == nil && pid != old && !alive(old) {
					newPID = pid
					break
				}
				if time.Now().After(deadline) {
					t.Fatalf("upgrade did not complete:\n%s", h.Log())
				}
			}
			time.Sleep(200 * time.Millisecond)
			close(stop)
			if res := <-site; res.failed != 0 {
				t.Errorf("site across the upgrade: %d of %d failed (%s)", res.failed, res.sent, res.firstErr)
			}
			if res := <-adminFailed; res.failed != 0 {
				t.Errorf("%d admin requests failed across the upgrade; the first at %s", res.failed, res.first)
			}
			code, body, err := get(adminClient, adminURL+"/status?format=json")
			if err != nil || code != 200 || !strings.Contains(string(body), fmt.Sprintf(`"master_pid": %d`, newPID)) {
				t.Errorf("/status after the upgrade: %d %v\n%s", code, err, body)
			}
			if strings.Contains(h.Log(), "address already in use") {
				t.Errorf("the new master tried to bind the admin address again:\n%s", h.Log())
			}
			must(t, syscall.Kill(newPID, syscall.SIGINT))
		})
	}
}

// --user: the master binds as root, the workers run as nobody (all four
// uids and gids in /proc, no supplementary group of root's), and a file of
// mode 000 is refused (403) instead of served, as nginx's workers refuse
// it. Without --user, a root master warns.
func TestUserDropsPrivileges(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root, to have privileges to drop")
	}
	exe, root := forNobody(t)
	if err := openableBy(exe, 65534); err != nil {
		t.Fatalf("nobody cannot execute %s: %v", exe, err)
	}
	must(t, os.WriteFile(filepath.Join(root, "private.txt"), []byte("PRIVATE"), 0o000))
	h := startBinary(t, nil, exe, root, "--workers", "1", "--user", "nobody", "--listen", "127.0.0.1:0")
	pid := h.status().Live[0].PID
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	must(t, err)
	for _, want := range []string{"Uid:\t65534\t65534\t65534\t65534", "Gid:\t65534\t65534\t65534\t65534", "Groups:\t65534"} {
		if !strings.Contains(string(b), want) {
			t.Errorf("worker %d: /proc status lacks %q:\n%s", pid, want, b)
		}
	}
	if code, body, err := get(client(), "http://"+h.addr+"/private.txt"); err != nil || code != 403 {
		t.Errorf("mode 000 file: %d %q %v; want 403", code, body, err)
	}
	if code, _, err := get(client(), "http://"+h.addr+"/hello.txt"); err != nil || code != 200 {
		t.Errorf("hello.txt as nobody: %d %v", code, err)
	}
	if !strings.Contains(h.Log(), "workers run as") || strings.Contains(h.Log(), "workers run as root") {
		t.Errorf("log:\n%s", h.Log())
	}
	h2 := startHerd(t, root, "--workers", "1")
	if !strings.Contains(h2.Log(), "workers run as root") {
		t.Errorf("a root master without --user did not warn:\n%s", h2.Log())
	}
}

// A private key only root may read (Let's Encrypt's privkey.pem, Debian's
// /etc/ssl/private) serves workers that run as another user: the master
// reads the certificate and key, as nginx's does, and hands them to each
// worker in a sealed memfd, which the worker closes once read. Before, the
// workers opened the files themselves, and --user nobody with such a key
// could not start ("tls: open key.pem: permission denied").
func TestTLSKeyOnlyRootCanRead(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root, to have privileges to drop")
	}
	exe, root := forNobody(t)
	cert, key := writeCert(t, t.TempDir(), 1) // key.pem 0600 in a 0700 directory, both root's
	h := startBinary(t, nil, exe, root, "--workers", "2", "--user", "nobody", "--listen", "127.0.0.1:0",
		"--tls-listen", "127.0.0.1:0", "--tls-cert", cert, "--tls-key", key)
	for range 4 {
		if code, body, err := get(tlsClient(), "https://"+h.addrs[1]+"/hello.txt"); err != nil || code != 200 || string(body) != "hello, herd\n" {
			t.Fatalf("HTTPS from workers running as nobody: %d %q %v", code, body, err)
		}
	}
	for _, w := range h.status().Live {
		fds, _ := filepath.Glob(fmt.Sprintf("/proc/%d/fd/*", w.PID))
		for _, fd := range fds {
			if target, _ := os.Readlink(fd); strings.Contains(target, "herd-tls") {
				t.Errorf("worker %d still holds the certificate's memfd (%s)", w.PID, fd)
			}
		}
	}
	// The master keeps none either, and a reload reads the files again.
	h.signal(syscall.SIGHUP)
	if !h.logged("reload done", 10*time.Second) {
		t.Fatalf("no reload:\n%s", h.Log())
	}
	fds, _ := filepath.Glob(fmt.Sprintf("/proc/%d/fd/*", h.pid()))
	for _, fd := range fds {
		if target, _ := os.Readlink(fd); strings.Contains(target, "herd-tls") {
			t.Errorf("the master still holds a certificate's memfd (%s)", fd)
		}
	}
	if code, _, err := get(tlsClient(), "https://"+h.addrs[1]+"/hello.txt"); err != nil || code != 200 {
		t.Errorf("HTTPS after the reload: %d %v", code, err)
	}
}

// USR1 after logrotate has moved the access log works for workers that run
// as --user, in a log directory only root may write to (as /var/log/nginx
// is): the master creates the new file and gives it to them, as nginx's
// does. Before, the workers could not create it and wrote on to the moved
// file ("cannot reopen the access log; writing to the old one").
func TestUSR1ReopensAccessLogAsUser(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root, to have privileges to drop")
	}
	exe, root := forNobody(t)
	logDir := t.TempDir()
	os.Chmod(logDir, 0o755) // root's: nobody cannot create files in it
	logPath := filepath.Join(logDir, "access.log")
	h := startBinary(t, nil, exe, root, "--workers", "1", "--user", "nobody", "--listen", "127.0.0.1:0", "--access-log", logPath)
	get(client(), "http://"+h.addr+"/hello.txt?before")
	must(t, os.Rename(logPath, logPath+".1"))
	h.signal(syscall.SIGUSR1)
	for i, deadline := 0, time.Now().Add(5*time.Second); ; i++ {
		get(client(), fmt.Sprintf("http://%s/hello.txt?after-%d", h.addr, i))
		if b, _ := os.ReadFile(logPath); strings.Contains(string(b), "?after-") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no line in a new %s after USR1:\n%s", logPath, h.Log())
		}
		time.Sleep(50 * time.Millisecond)
	}
	if strings.Contains(h.Log(), "cannot reopen") {
		t.Errorf("a worker could not reopen the log:\n%s", h.Log())
	}
}

// forNobody returns a copy of the test binary and a document root that the
// user nobody can reach: go test's build directory and t.TempDir are 0700.
func forNobody(t *testing.T) (exe, root string) {
	t.Helper()
	exe = copyTestBinary(t, 0o755)
	root, _ = docroot(t)
	for _, p := range []string{exe, root} {
		for d := filepath.Dir(p); d != "/" && d != os.TempDir(); d = filepath.Dir(d) {
			os.Chmod(d, 0o755)
		}
	}
	os.Chmod(root, 0o755)
	return exe, root
}

// openableBy reports whether uid may execute path, walking its directories.
func openableBy(path string, uid int) error {
	cmd := exec.Command("/bin/sh", "-c", `test -x "$1"`, "sh", path)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uint32(uid), Gid: uint32(uid)}}
	return cmd.Run()
}

// --socket-mode and --socket-owner set the unix listening socket's file.
func TestSocketModeAndOwner(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root, to give the socket away")
	}
	root, _ := docroot(t)
	sock := filepath.Join(t.TempDir(), "site.sock")
	startHerd(t, root, "--workers", "1", "--listen", "127.0.0.1:0", "--listen", "unix:"+sock,
		"--socket-mode", "0660", "--socket-owner", "nobody:nogroup")
	var st syscall.Stat_t
	must(t, syscall.Stat(sock, &st))
	if st.Mode&0o777 != 0o660 || st.Uid != 65534 || st.Gid != 65534 {
		t.Errorf("socket file: mode %o, owner %d:%d; want 660, 65534:65534", st.Mode&0o777, st.Uid, st.Gid)
	}
}

// The shipped unit scores below 3.0 ("OK") in systemd's own exposure
// rating, as docs/systemd/herd.service says.
func TestSystemdUnitIsHardened(t *testing.T) {
	if _, err := exec.LookPath("systemd-analyze"); err != nil {
		t.Skip("systemd-analyze not installed (Debian's systemd package has it)")
	}
	out, err := exec.Command("systemd-analyze", "security", "--offline=true", "--threshold=30", "--no-pager",
		"../../docs/systemd/herd.service").CombinedOutput()
	if err != nil {
		t.Errorf("exposure above 3.0, or the unit does not parse: %v\n%s", err, out)
	}
	if !strings.Contains(string(out), "Overall exposure level for herd.service") {
		t.Errorf("no rating:\n%s", out)
	}
}

// Workers that cannot start — here their user may not execute the binary —
// are reported once, with the reason, and herd serve exits 1 within
// seconds instead of retrying for ever.
func TestStartupFailureReportedOnce(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root, to run workers as another user")
	}
	exe := copyTestBinary(t, 0o700) // root alone may execute it
	root, _ := docroot(t)
	for d := root; d != "/" && d != os.TempDir(); d = filepath.Dir(d) {
		os.Chmod(d, 0o755) // the root is readable; only the binary is out of reach
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, exe, "serve", root, "--user", "nobody", "--listen", "127.0.0.1:0", "--workers", "2")
	cmd.Env = append(os.Environ(), "HERD_TEST_MAIN=1")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	start := time.Now()
	err := cmd.Run()
	if code := cmd.ProcessState.ExitCode(); code != 1 {
		t.Errorf("exit %d (%v), want 1", code, err)
	}
	out := stderr.String()
	if time.Since(start) > 10*time.Second {
		t.Errorf("gave up after %v", time.Since(start))
	}
	if n := strings.Count(out, "a worker failed to start"); n != 1 || !strings.Contains(out, "permission denied") ||
		!strings.Contains(out, "workers cannot start") || strings.Contains(out, "<nil>") {
		t.Errorf("reported %d times; stderr:\n%s", n, out)
	}
	if n := strings.Count(out, "\n"); n > 10 {
		t.Errorf("%d lines for a failed start:\n%s", n, out)
	}
}

// HUP reads the configuration again: a new worker count applies to the new
// generation; an invalid file is reported and the running workers serve
// on; a new listen address needs new sockets and says USR2; a binary
// replaced on disk is reported, and new workers still run the master's.
func TestHUPReadsConfiguration(t *testing.T) {
	root, _ := docroot(t)
	exe := copyTestBinary(t, 0o755)
	self, err := os.ReadFile(exe)
	must(t, err)
	cfg := filepath.Join(filepath.Dir(exe), "herd.toml")
	write := func(body string) { must(t, os.WriteFile(cfg, []byte(body), 0o644)) }
	write("workers = 2\nlisten = [\"127.0.0.1:0\"]\n")
	h := startBinary(t, nil, exe, root, "--config", cfg)
	ready := func(gen, n int) {
		t.Helper()
		h.waitStatus(fmt.Sprintf("generation %d with %d workers", gen, n), 15*time.Second, func(s shm.Snapshot) bool {
			return s.Generation == gen && len(readyPIDs(s, gen)) == n && len(s.Live) == n
		})
	}
	ready(1, 2)

	write("workers = 3\nlisten = [\"127.0.0.1:0\"]\n")
	h.signal(syscall.SIGHUP)
	ready(2, 3)

	write("workers = \"many\"\n")
	h.signal(syscall.SIGHUP)
	if !h.logged("HUP: the configuration is invalid; the running workers keep serving", 5*time.Second) {
		t.Fatalf("an invalid file was not reported:\n%s", h.Log())
	}
	if s := h.status(); s.Generation != 2 || len(readyPIDs(s, 2)) != 3 {
		t.Errorf("after an invalid file: generation %d, %d ready", s.Generation, len(readyPIDs(s, 2)))
	}
	if code, _, err := get(client(), "http://"+h.addr+"/hello.txt"); err != nil || code != 200 {
		t.Errorf("serving after an invalid file: %d %v", code, err)
	}

	write("workers = 3\nlisten = [\"127.0.0.1:0\", \"" + freeAddr(t) + "\"]\n")
	// Replace the binary on disk, as a deploy does (a new file renamed in).
	must(t, os.WriteFile(exe+".new", append(self, 0), 0o755))
	must(t, os.Rename(exe+".new", exe))
	h.signal(syscall.SIGHUP)
	ready(3, 3)
	for _, want := range []string{"these settings need new sockets", "settings=listen", "the binary on disk is not the one running"} {
		if !strings.Contains(h.Log(), want) {
			t.Errorf("log lacks %q:\n%s", want, h.Log())
		}
	}
	var masterExe, workerExe syscall.Stat_t
	must(t, syscall.Stat(fmt.Sprintf("/proc/%d/exe", h.pid()), &masterExe))
	must(t, syscall.Stat(fmt.Sprintf("/proc/%d/exe", readyPIDs(h.status(), 3)[0]), &workerExe))
	if masterExe.Ino != workerExe.Ino {
		t.Errorf("a new worker runs the replaced binary (inode %d), not its master's (%d)", workerExe.Ino, masterExe.Ino)
	}
}

// A HUP may swap a strategy that lives in the workers; the admin endpoint
// then names the one the workers use (herd_info and /status named the
// strategy the master started with).
func TestHUPSwapsStrategy(t *testing.T) {
	root, _ := docroot(t)
	exe := copyTestBinary(t, 0o755)
	cfg := filepath.Join(filepath.Dir(exe), "herd.toml")
	write := func(strategy string) {
		body := fmt.Sprintf("workers = 2\nlisten = [\"127.0.0.1:0\"]\nadmin = \"127.0.0.1:0\"\nstrategy = %q\n", strategy)
		must(t, os.WriteFile(cfg, []byte(body), 0o644))
	}
	write("exclusive")
	h := startBinary(t, nil, exe, root, "--config", cfg)
	m := regexp.MustCompile(`msg="admin endpoint" listen=(\S+)`).FindStringSubmatch(h.Log())
	if m == nil {
		t.Fatalf("no admin endpoint in the log:\n%s", h.Log())
	}
	admin := m[1]
	info := func() string {
		_, body, err := get(client(), "http://"+admin+"/metrics")
		must(t, err)
		for _, line := range strings.Split(string(body), "\n") {
			if strings.HasPrefix(line, "herd_info{") {
				return line
			}
		}
		return ""
	}
	if got := info(); got != `herd_info{strategy="exclusive"} 1` {
		t.Fatalf("before the HUP: %q", got)
	}
	write("accept")
	h.signal(syscall.SIGHUP)
	h.waitStatus("generation 2 ready", 15*time.Second, func(s shm.Snapshot) bool {
		return s.Generation == 2 && len(readyPIDs(s, 2)) == 2 && len(s.Live) == 2
	})
	if got := info(); got != `herd_info{strategy="accept"} 1` {
		t.Errorf("after a HUP to accept: %q", got)
	}
	_, page, err := get(client(), "http://"+admin+"/status")
	must(t, err)
	if !strings.Contains(string(page), "strategy accept") {
		t.Errorf("/status does not name the new strategy:\n%s", page)
	}
}

// Behind a load balancer, across two instances: HAProxy (Debian's) in front
// of two herd instances on two loopback addresses, health-checking /readyz
// on their admin endpoints and retrying a connection that fails, as an
// operator configures it. A client loop through HAProxy sees no failure
// while one instance is stopped with TERM and started again and the other
// is upgraded with USR2.
func TestBehindHAProxy(t *testing.T) {
	haproxy, err := exec.LookPath("haproxy")
	if err != nil {
		t.Skip("haproxy not installed (.ci/run installs Debian's)")
	}
	root, _ := docroot(t)
	site := func(ip string) string {
		l, err := net.Listen("tcp", ip+":0")
		must(t, err)
		defer l.Close()
		return l.Addr().String()
	}
	siteA, adminA := site("127.0.0.1"), site("127.0.0.1")
	siteB, adminB := site("127.0.0.2"), site("127.0.0.2")
	front := site("127.0.0.1")
	argsA := []string{root, "--workers", "2", "--listen", siteA, "--admin", adminA}
	a := startHerd(t, argsA...)
	b := startHerd(t, root, "--workers", "2", "--listen", siteB, "--admin", adminB)

	host := func(addr string) string { h, _, _ := net.SplitHostPort(addr); return h }
	port := func(addr string) string { _, p, _ := net.SplitHostPort(addr); return p }
	cfg := filepath.Join(t.TempDir(), "haproxy.cfg")
	must(t, os.WriteFile(cfg, []byte(fmt.Sprintf(`defaults
	mode http
	timeout connect 2s
	timeout client 10s
	timeout server 10s
	retries 3
	option redispatch 1
	retry-on all-retryable-errors
frontend site
	bind %s
	default_backend herd
backend herd
	balance roundrobin
	option httpchk GET /readyz
	default-server inter 100ms fall 1 rise 2
	server a %s check addr %s port %s
	server b %s check addr %s port %s
`, front, siteA, host(adminA), port(adminA), siteB, host(adminB), port(adminB))), 0o644))
	hp := exec.Command(haproxy, "-f", cfg, "-db")
	var hpLog bytes.Buffer
	hp.Stdout, hp.Stderr = &hpLog, &hpLog
	must(t, hp.Start())
	t.Cleanup(func() { hp.Process.Kill(); hp.Wait() })
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		if code, _, err := get(client(), "http://"+front+"/hello.txt"); err == nil && code == 200 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("haproxy does not serve:\n%s", hpLog.String())
		}
	}
	time.Sleep(500 * time.Millisecond) // both servers up in haproxy's eyes

	stop := make(chan struct{})
	done := make(chan loadResult)
	go func() {
		done <- load("http://"+front+"/hello.txt", []byte("hello, herd\n"), 4, 1_000_000, 60*time.Second, stop)
	}()

	time.Sleep(300 * time.Millisecond)
	a.signal(syscall.SIGTERM) // what an orchestrator sends
	if code := a.waitExit(15 * time.Second); code != 0 {
		t.Errorf("instance a: exit %d after TERM", code)
	}
	time.Sleep(300 * time.Millisecond)
	startHerd(t, argsA...) // and starts it again, on the same address
	time.Sleep(500 * time.Millisecond)

	old := b.pid()
	b.signal(syscall.SIGUSR2)
	for deadline := time.Now().Add(15 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		if pid, err := master.ReadPIDFile(b.pidFile); err == nil && pid != old && !alive(old) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("instance b's upgrade did not complete:\n%s", b.Log())
		}
	}
	time.Sleep(500 * time.Millisecond)
	close(stop)
	res := <-done
	if res.failed != 0 || res.sent < 100 {
		t.Errorf("through haproxy: %d requests, %d failed (first: %s)\nhaproxy:\n%s", res.sent, res.failed, res.firstErr, hpLog.String())
	}
	t.Logf("%d requests through haproxy across a TERM, a restart and an upgrade", res.sent)
}

// --shutdown-delay: TERM turns readiness off at once (herd probe, the
// exec probe for Kubernetes, fails) while the site keeps answering new
// connections; after the delay the workers drain and the master exits.
func TestShutdownDelayAndProbe(t *testing.T) {
	root, _ := docroot(t)
	admin := freeAddr(t)
	h := startHerd(t, root, "--workers", "2", "--admin", admin, "--shutdown-delay", "3s")
	if out, errOut, code := runHerd(t, "probe", "--admin", admin); code != 0 || !strings.Contains(out, "ready") {
		t.Fatalf("probe while ready: exit %d %q %q", code, out, errOut)
	}
	start := time.Now()
	h.signal(syscall.SIGTERM)
	for {
		_, errOut, code := runHerd(t, "probe", "--admin", admin)
		if code == 1 && strings.Contains(errOut, "503") {
			break
		}
		if time.Since(start) > 2*time.Second {
			t.Fatalf("probe after TERM: exit %d %q; want 1 and 503", code, errOut)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if code, _, err := get(client(), "http://"+h.addr+"/hello.txt"); err != nil || code != 200 {
		t.Errorf("a new connection during the delay: %d %v", code, err)
	}
	if code := h.waitExit(10 * time.Second); code != 0 {
		t.Errorf("exit %d", code)
	}
	if d := time.Since(start); d < 3*time.Second {
		t.Errorf("stopped after %v, before the delay", d)
	}
}

// copyTestBinary copies this test binary (which is herd under
// HERD_TEST_MAIN) into a directory of its own, with mode.
func copyTestBinary(t *testing.T, mode os.FileMode) string {
	t.Helper()
	exe := filepath.Join(t.TempDir(), "herd.test")
	self, err := os.ReadFile(os.Args[0])
	must(t, err)
	must(t, os.WriteFile(exe, self, mode))
	return exe
}

// Workers carry their master's command name, as nginx's and Apache's do:
// started through /proc/self/exe, they were all named "exe", so top, ps -e
// and pgrep did not show them under the program's name — nor top -H and
// perf their threads, when only the main thread was renamed.
func TestWorkersNamedAsMaster(t *testing.T) {
	root, _ := docroot(t)
	h := startHerd(t, root, "--workers", "2")
	comm := func(pid int) string {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid))
		if err != nil {
			t.Fatal(err)
		}
		return strings.TrimSpace(string(b))
	}
	want := comm(h.pid())
	workers := h.status().Live
	if len(workers) != 2 {
		t.Fatalf("status shows %d workers, want 2", len(workers))
	}
	for _, w := range workers {
		if got := comm(w.PID); got != want {
			t.Errorf("worker %d is named %q, the master %q", w.PID, got, want)
		}
		// and every thread of it, as top -H and perf show them
		tasks, err := os.ReadDir(fmt.Sprintf("/proc/%d/task", w.PID))
		if err != nil {
			t.Fatal(err)
		}
		for _, task := range tasks {
			b, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%s/comm", w.PID, task.Name()))
			if err == nil && strings.TrimSpace(string(b)) != want {
				t.Errorf("worker %d's thread %s is named %q, the master %q", w.PID, task.Name(), strings.TrimSpace(string(b)), want)
			}
		}
	}
}

// An idle worker sleeps. Its loop used to hold its P in every epoll_wait,
// so the runtime's sysmon preempted it every 10ms, idle or not — 320
// context switches a second per idle worker, where an idle nginx worker
// makes none; the loop now waits the ordinary way once it has been idle
// for a second (internal/httpd's waiter). The bound leaves room for the
// few wakeups that remain (the loop's timeout, sysmon) on a busy machine.
func TestIdleWorkersSleep(t *testing.T) {
	root, _ := docroot(t)
	h := startHerd(t, root, "--workers", "2")
	if code, _, err := get(client(), "http://"+h.addr+"/hello.txt"); err != nil || code != 200 {
		t.Fatalf("GET: %d %v", code, err)
	}
	workers := h.status().Live
	if len(workers) != 2 {
		t.Fatalf("status shows %d workers, want 2", len(workers))
	}
	time.Sleep(1500 * time.Millisecond) // past the loop's second of held waits
	const window = 2 * time.Second
	before := make([]uint64, len(workers))
	for i, w := range workers {
		before[i] = contextSwitches(t, w.PID)
	}
	time.Sleep(window)
	for i, w := range workers {
		perSecond := float64(contextSwitches(t, w.PID)-before[i]) / window.Seconds()
		t.Logf("idle worker %d: %.0f context switches a second", w.PID, perSecond)
		if perSecond > 100 {
			t.Errorf("idle worker %d made %.0f context switches a second; want under 100", w.PID, perSecond)
		}
	}
}

// contextSwitches sums the voluntary and involuntary context switches of
// every thread of pid.
func contextSwitches(t *testing.T, pid int) uint64 {
	t.Helper()
	st, err := lab.ReadProcStats(pid)
	if err != nil {
		t.Fatalf("threads of %d: %v", pid, err)
	}
	return st.Voluntary + st.Involuntary
}
