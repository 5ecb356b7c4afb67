package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/herd-run/herd/internal/accept"
	"github.com/herd-run/herd/internal/shm"
)

// docroot makes a document root with a few files and a secret beside it
// that must never be served.
func docroot(t testing.TB) (root string, big []byte) {
	t.Helper()
	base := t.TempDir()
	root = filepath.Join(base, "www")
	must(t, os.MkdirAll(filepath.Join(root, "sub"), 0o755))
	must(t, os.MkdirAll(filepath.Join(root, "bare"), 0o755))
	big = make([]byte, 3<<20+17)
	rand.Read(big)
	files := map[string][]byte{
		"index.html":     []byte("<h1>home</h1>\n"),
		"hello.txt":      []byte("hello, herd\n"),
		"style.css":      []byte("body{}\n"),
		"data.json":      []byte(`{"a":1}`),
		"big.bin":        big,
		"sub/index.html": []byte("<p>sub</p>\n"),
	}
	for name, b := range files {
		must(t, os.WriteFile(filepath.Join(root, name), b, 0o644))
	}
	must(t, os.WriteFile(filepath.Join(base, "secret.txt"), []byte("SECRET"), 0o644))
	must(t, os.Symlink(filepath.Join(base, "secret.txt"), filepath.Join(root, "leak.txt")))
	must(t, os.Symlink("hello.txt", filepath.Join(root, "inside.txt")))
	return root, big
}

func must(t testing.TB, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// rawGet sends a request line exactly as written, bypassing the client's
// own path cleaning, and returns the status code and body.
func rawGet(t *testing.T, addr, target string) (int, string) {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	fmt.Fprintf(c, "GET %s HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", target)
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatalf("GET %s: %v", target, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func TestServeFiles(t *testing.T) {
	root, big := docroot(t)
	h := startHerd(t, root, "--workers", "2")
	base := "http://" + h.addr
	c := client()

	for _, tc := range []struct {
		path, ctype string
		body        []byte
	}{
		{"/hello.txt", "text/plain; charset=utf-8", []byte("hello, herd\n")},
		{"/", "text/html; charset=utf-8", []byte("<h1>home</h1>\n")},
		{"/sub/", "text/html; charset=utf-8", []byte("<p>sub</p>\n")},
		{"/style.css", "text/css; charset=utf-8", []byte("body{}\n")},
		{"/data.json", "application/json", []byte(`{"a":1}`)},
		{"/big.bin", "application/octet-stream", big},
		{"/inside.txt", "text/plain; charset=utf-8", []byte("hello, herd\n")},
	} {
		resp, err := c.Get(base + tc.path)
		if err != nil {
			t.Fatalf("GET %s: %v", tc.path, err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || !bytes.Equal(b, tc.body) {
			t.Errorf("GET %s: status %d, %d bytes; want 200, %d bytes exactly", tc.path, resp.StatusCode, len(b), len(tc.body))
		}
		if got := resp.Header.Get("Content-Type"); got != tc.ctype {
			t.Errorf("GET %s: Content-Type %q, want %q", tc.path, got, tc.ctype)
		}
	}

	resp, err := c.Head(base + "/big.bin")
	must(t, err)
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || len(b) != 0 || resp.ContentLength != int64(len(big)) {
		t.Errorf("HEAD: status %d, body %d, Content-Length %d", resp.StatusCode, len(b), resp.ContentLength)
	}
	resp, err = c.Post(base+"/hello.txt", "text/plain", strings.NewReader("x"))
	must(t, err)
	resp.Body.Close()
	if resp.StatusCode != 405 || resp.Header.Get("Allow") != "GET, HEAD" {
		t.Errorf("POST: status %d Allow %q, want 405 with Allow", resp.StatusCode, resp.Header.Get("Allow"))
	}
	if code, _, _ := get(c, base+"/missing"); code != 404 {
		t.Errorf("missing file: status %d, want 404", code)
	}
	if code, _, _ := get(c, base+"/bare/"); code != 403 {
		t.Errorf("directory without index: status %d, want 403", code)
	}

	// Nothing outside the root, however the path is spelled.
	for _, target := range []string{
		"/../secret.txt", "/%2e%2e/secret.txt", "/%2E%2E/secret.txt", "/sub/../../secret.txt",
		"/sub/%2e%2e/%2e%2e/secret.txt", "/..%2fsecret.txt", "/leak.txt", "/%2e%2e%2fsecret.txt",
	} {
		code, body := rawGet(t, h.addr, target)
		if strings.Contains(body, "SECRET") || code == 200 {
			t.Errorf("GET %s: status %d, body %q: escaped the root", target, code, body)
		}
	}
}

func TestServeFollowSymlinks(t *testing.T) {
	root, _ := docroot(t)
	h := startHerd(t, root, "--workers", "1", "--follow-symlinks")
	code, body, err := get(client(), "http://"+h.addr+"/leak.txt")
	if err != nil || code != 200 || string(body) != "SECRET" {
		t.Errorf("--follow-symlinks: status %d body %q err %v; want the link's target", code, body, err)
	}
}

func TestServeBuiltinPage(t *testing.T) {
	h := startHerd(t, "--workers", "1")
	code, body, err := get(client(), "http://"+h.addr+"/")
	if err != nil || code != 200 || !strings.Contains(string(body), "herd is serving") {
		t.Errorf("built-in page: status %d err %v body %q", code, err, body)
	}
}

func TestServeUnixSocket(t *testing.T) {
	root, _ := docroot(t)
	sock := filepath.Join(t.TempDir(), "herd.sock")
	h := startHerd(t, root, "--workers", "2", "--listen", "unix:"+sock)
	c := &http.Client{Transport: &http.Transport{
		DisableKeepAlives: true,
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", sock)
		},
	}}
	for range 10 {
		code, body, err := get(c, "http://herd/hello.txt")
		if err != nil || code != 200 || string(body) != "hello, herd\n" {
			t.Fatalf("over unix socket: status %d body %q err %v", code, body, err)
		}
	}
	h.signal(syscall.SIGTERM)
	h.waitExit(10 * time.Second)
	if _, err := os.Lstat(sock); !os.IsNotExist(err) {
		t.Errorf("socket file left behind after stop: %v", err)
	}
}

// The workers are real child processes of the master, one per slot.
func TestWorkersAreChildProcesses(t *testing.T) {
	root, _ := docroot(t)
	h := startHerd(t, root, "--workers", "3")
	s := h.status()
	if s.MasterPID != h.pid() || s.Workers != 3 {
		t.Fatalf("status names master %d with %d workers; want %d with 3", s.MasterPID, s.Workers, h.pid())
	}
	pids := readyPIDs(s, 1)
	if len(pids) != 3 {
		t.Fatalf("%d ready workers, want 3: %+v", len(pids), s.Live)
	}
	slots := map[int]bool{}
	for _, w := range s.Live {
		slots[w.Slot] = true
		if p := ppid(t, w.PID); p != h.pid() {
			t.Errorf("worker %d has parent %d, want the master %d", w.PID, p, h.pid())
		}
	}
	if len(slots) != 3 {
		t.Errorf("slots %v, want 0,1,2", slots)
	}
}

// Every request the test sends is counted once, in the scoreboard, for
// each strategy.
func TestScoreboardCountsRequests(t *testing.T) {
	for _, strategy := range []string{"accept", "go"} {
		t.Run(strategy, func(t *testing.T) {
			root, _ := docroot(t)
			h := startHerd(t, root, "--workers", "2", "--strategy", strategy, "--threads", "2")
			const n = 60
			res := load("http://"+h.addr+"/hello.txt", []byte("hello, herd\n"), 4, n, 30*time.Second, nil)
			if res.failed != 0 || res.sent != n {
				t.Fatalf("sent %d, failed %d (%s)", res.sent, res.failed, res.firstErr)
			}
			// A response is on the wire before the handler returns and the
			// worker counts it, so allow the counters a moment.
			s := h.waitStatus("requests counted", 5*time.Second, func(s shm.Snapshot) bool {
				return s.Total.Requests >= n
			})
			tot := s.Total
			if tot.Requests != n || tot.Accepts != n {
				t.Errorf("scoreboard: %d requests, %d accepts; sent %d requests on %d connections", tot.Requests, tot.Accepts, n, n)
			}
			if tot.Wakeups < tot.Accepts-tot.Wakeups && strategy == "accept" {
				t.Errorf("accept strategy: %d wakeups for %d accepts", tot.Wakeups, tot.Accepts)
			}
			if tot.BytesOut < n*uint64(len("hello, herd\n")) {
				t.Errorf("bytes out %d, less than the bodies sent", tot.BytesOut)
			}
			var perWorker uint64
			for _, w := range s.Live {
				perWorker += w.Requests
			}
			if perWorker != tot.Requests {
				t.Errorf("per-worker requests add up to %d, total says %d", perWorker, tot.Requests)
			}
		})
	}
}

// HUP starts a new generation, and only once it is ready retires the old
// one: a client loop running across the reload sees no failure.
func TestReloadUnderLoadFailsNothing(t *testing.T) {
	for _, strategy := range []string{"accept", "go"} {
		t.Run(strategy, func(t *testing.T) {
			root, _ := docroot(t)
			h := startHerd(t, root, "--workers", "2", "--strategy", strategy)
			before := readyPIDs(h.status(), 1)

			stop := make(chan struct{})
			done := make(chan loadResult)
			go func() {
				done <- load("http://"+h.addr+"/hello.txt", []byte("hello, herd\n"), 4, 100000, 30*time.Second, stop)
			}()
			time.Sleep(200 * time.Millisecond)
			for gen := 2; gen <= 4; gen++ {
				h.signal(syscall.SIGHUP)
				h.waitStatus("new generation ready and old one gone", 15*time.Second, func(s shm.Snapshot) bool {
					return s.Generation == gen && len(readyPIDs(s, gen)) == 2 && len(s.Live) == 2
				})
				time.Sleep(100 * time.Millisecond)
			}
			close(stop)
			res := <-done

			s := h.status()
			after := readyPIDs(s, 4)
			for _, p := range before {
				if slices.Contains(after, p) || alive(p) {
					t.Errorf("old worker %d survived the reloads", p)
				}
			}
			if s.Reloads != 3 {
				t.Errorf("reloads = %d, want 3", s.Reloads)
			}
			if res.failed != 0 || res.sent < 20 {
				t.Fatalf("across 3 reloads: sent %d, failed %d (first: %s)", res.sent, res.failed, res.firstErr)
			}
			if s.Total.Requests != uint64(res.sent) {
				t.Errorf("scoreboard counts %d requests across reloads, client sent %d", s.Total.Requests, res.sent)
			}
			t.Logf("%d requests across 3 reloads, none failed", res.sent)
		})
	}
}

// QUIT lets a request that is being answered finish: a 3 MiB body read
// slowly is still whole when the worker that sends it has been told to stop.
func TestGracefulStopFinishesInFlight(t *testing.T) {
	root, big := docroot(t)
	h := startHerd(t, root, "--workers", "1")
	c, err := net.Dial("tcp", h.addr)
	must(t, err)
	defer c.Close()
	fmt.Fprintf(c, "GET /big.bin HTTP/1.1\r\nHost: x\r\n\r\n")
	br := bufio.NewReaderSize(c, 1024)
	resp, err := http.ReadResponse(br, nil)
	must(t, err)
	head := make([]byte, 64<<10)
	_, err = io.ReadFull(resp.Body, head)
	must(t, err)

	h.signal(syscall.SIGQUIT)
	time.Sleep(300 * time.Millisecond) // the worker is stopping while we still read

	rest, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("in-flight body cut short after %d bytes: %v", len(head)+len(rest), err)
	}
	if !bytes.Equal(append(head, rest...), big) {
		t.Fatalf("in-flight body: %d bytes, differs from the file's %d", len(head)+len(rest), len(big))
	}
	if code := h.waitExit(10 * time.Second); code != 0 {
		t.Errorf("master exit code %d after QUIT, want 0", code)
	}
}

// TERM stops everything: the master and every worker are gone, and the pid
// file is removed.
func TestFastStopLeavesNoProcess(t *testing.T) {
	root, _ := docroot(t)
	h := startHerd(t, root, "--workers", "3")
	pids := readyPIDs(h.status(), 1)
	h.signal(syscall.SIGTERM)
	if code := h.waitExit(10 * time.Second); code != 0 {
		t.Errorf("master exit code %d after TERM, want 0", code)
	}
	for _, p := range pids {
		if alive(p) {
			t.Errorf("worker %d still running after TERM", p)
		}
	}
	if _, err := os.Stat(h.pidFile); !os.IsNotExist(err) {
		t.Errorf("pid file left behind: %v", err)
	}
	if _, err := net.DialTimeout("tcp", h.addr, time.Second); err == nil {
		t.Errorf("something still listens on %s", h.addr)
	}
}

// A master killed with SIGKILL cannot tell anyone; its workers notice the
// control socket's EOF and exit on their own within 2 s.
func TestWorkersDieWithMaster(t *testing.T) {
	root, _ := docroot(t)
	h := startHerd(t, root, "--workers", "3")
	pids := readyPIDs(h.status(), 1)
	if err := syscall.Kill(h.pid(), syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(2 * time.Second)
	for _, p := range pids {
		for alive(p) && time.Now().Before(deadline) {
			time.Sleep(20 * time.Millisecond)
		}
		if alive(p) {
			t.Errorf("worker %d outlived its SIGKILLed master by 2s", p)
		}
	}
}

// A worker killed with SIGKILL is replaced in its slot, and serving goes on.
func TestKilledWorkerIsReplaced(t *testing.T) {
	root, _ := docroot(t)
	h := startHerd(t, root, "--workers", "2")
	s := h.status()
	victim := s.Live[0]
	must(t, syscall.Kill(victim.PID, syscall.SIGKILL))
	s = h.waitStatus("killed worker replaced", 10*time.Second, func(s shm.Snapshot) bool {
		for _, w := range s.Live {
			if w.Slot == victim.Slot && w.PID != victim.PID && w.State == "ready" {
				return true
			}
		}
		return false
	})
	if s.Restarts != 1 {
		t.Errorf("restarts = %d, want 1", s.Restarts)
	}
	if want := "strategy=" + accept.Default(); !strings.Contains(h.Log(), want) {
		t.Errorf("started without %s, the default on this kernel:\n%s", want, h.Log())
	}
	if !h.logged("worker died", 5*time.Second) || !h.logged("killed by SIGKILL", time.Second) {
		t.Errorf("the death and its signal were not logged:\n%s", h.Log())
	}
	res := load("http://"+h.addr+"/hello.txt", []byte("hello, herd\n"), 2, 20, 10*time.Second, nil)
	if res.failed != 0 {
		t.Errorf("after the replacement: %d of %d failed (%s)", res.failed, res.sent, res.firstErr)
	}
}

// TTIN and TTOU change the worker count by one.
func TestTTINAndTTOU(t *testing.T) {
	root, _ := docroot(t)
	h := startHerd(t, root, "--workers", "2")
	h.signal(syscall.SIGTTIN)
	h.waitStatus("three workers after TTIN", 10*time.Second, func(s shm.Snapshot) bool {
		return s.Workers == 3 && len(readyPIDs(s, 1)) == 3
	})
	// Two identical signals sent at once may arrive as one (POSIX merges
	// pending signals), so wait for each to take effect.
	h.signal(syscall.SIGTTOU)
	h.waitStatus("two workers after TTOU", 10*time.Second, func(s shm.Snapshot) bool {
		return s.Workers == 2 && len(s.Live) == 2
	})
	h.signal(syscall.SIGTTOU)
	s := h.waitStatus("one worker after two TTOU", 10*time.Second, func(s shm.Snapshot) bool {
		return s.Workers == 1 && len(s.Live) == 1
	})
	if s.Live[0].Slot != 0 {
		t.Errorf("the worker left is slot %d, want 0", s.Live[0].Slot)
	}
	h.signal(syscall.SIGTTOU) // never below one
	time.Sleep(300 * time.Millisecond)
	if s := h.status(); s.Workers != 1 || len(s.Live) != 1 {
		t.Errorf("TTOU at one worker: %d workers, %d live", s.Workers, len(s.Live))
	}
}

// A worker that stops running (here: SIGSTOP) stops beating; the master
// kills it after --worker-timeout and a new one takes its slot.
func TestStuckWorkerIsReplaced(t *testing.T) {
	root, _ := docroot(t)
	h := startHerd(t, root, "--workers", "2", "--worker-timeout", "1s")
	victim := h.status().Live[0]
	must(t, syscall.Kill(victim.PID, syscall.SIGSTOP))
	h.waitStatus("stuck worker replaced", 10*time.Second, func(s shm.Snapshot) bool {
		for _, w := range s.Live {
			if w.Slot == victim.Slot && w.PID != victim.PID && w.State == "ready" {
				return true
			}
		}
		return false
	})
	if alive(victim.PID) {
		t.Errorf("stuck worker %d still exists", victim.PID)
	}
	if !h.logged("worker stopped responding", 5*time.Second) {
		t.Errorf("not logged:\n%s", h.Log())
	}
}

// --max-requests recycles workers under load without a failed request.
// The load goes on until six workers have been recycled: how many requests
// that takes depends on the machine, since a retiring worker serves on
// until its successor is ready (on a busy machine, hundreds of requests).
func TestMaxRequestsRecyclesWithoutDrops(t *testing.T) {
	root, _ := docroot(t)
	h := startHerd(t, root, "--workers", "2", "--max-requests", "100", "--max-requests-jitter", "20")
	first := readyPIDs(h.status(), 1)
	var res loadResult
	recycles := func() int { return strings.Count(h.Log(), "reached max requests") }
	for res.sent < 5000 && recycles() < 6 {
		r := load("http://"+h.addr+"/hello.txt", []byte("hello, herd\n"), 4, 250, 30*time.Second, nil)
		res.sent, res.failed = res.sent+r.sent, res.failed+r.failed
		if res.firstErr == "" {
			res.firstErr = r.firstErr
		}
	}
	if res.failed != 0 {
		t.Fatalf("sent %d, failed %d (first: %s)", res.sent, res.failed, res.firstErr)
	}
	s := h.waitStatus("workers recycled", 10*time.Second, func(s shm.Snapshot) bool { return s.Total.Requests >= uint64(res.sent) })
	for _, p := range first {
		if slices.Contains(readyPIDs(s, 1), p) {
			t.Errorf("worker %d served past its quota", p)
		}
	}
	// A worker's life is at most 120 requests and what it serves while its
	// successor starts (at most 200, below): 5000 requests are more than
	// six lives of two workers.
	if n := recycles(); n < 6 {
		t.Errorf("%d recycles for %d requests at 100-120 per worker, want at least 6", n, res.sent)
	}
	for _, w := range s.Live {
		if w.Requests > 120+200 { // a retiring worker serves on until its successor is ready
			t.Errorf("worker %d answered %d requests, over its quota", w.PID, w.Requests)
		}
	}
}

// A keep-alive connection whose response is being sent when its worker is
// told to stop gets the whole response, then is closed (never mid-request);
// an idle keep-alive connection is closed.
func TestDrainClosesKeepAliveBetweenRequests(t *testing.T) {
	root, big := docroot(t)
	h := startHerd(t, root, "--workers", "1")
	busy, err := net.Dial("tcp", h.addr)
	must(t, err)
	defer busy.Close()
	idle, err := net.Dial("tcp", h.addr)
	must(t, err)
	defer idle.Close()
	// The idle connection serves one request and stays open.
	fmt.Fprintf(idle, "GET /hello.txt HTTP/1.1\r\nHost: x\r\n\r\n")
	ir := bufio.NewReader(idle)
	resp, err := http.ReadResponse(ir, nil)
	must(t, err)
	io.ReadAll(resp.Body)
	resp.Body.Close()

	fmt.Fprintf(busy, "GET /big.bin HTTP/1.1\r\nHost: x\r\n\r\n")
	br := bufio.NewReaderSize(busy, 1024)
	resp, err = http.ReadResponse(br, nil)
	must(t, err)
	head := make([]byte, 32<<10)
	_, err = io.ReadFull(resp.Body, head)
	must(t, err)

	h.signal(syscall.SIGHUP) // the one worker is replaced and drains
	h.waitStatus("replacement ready", 10*time.Second, func(s shm.Snapshot) bool { return len(readyPIDs(s, 2)) == 1 })

	idle.SetReadDeadline(time.Now().Add(5 * time.Second))
	if n, err := ir.Read(make([]byte, 1)); err != io.EOF {
		t.Errorf("idle keep-alive connection: read %d bytes, %v; want it closed (EOF)", n, err)
	}
	rest, err := io.ReadAll(resp.Body)
	if err != nil || !bytes.Equal(append(head, rest...), big) {
		t.Fatalf("in-flight keep-alive response cut: %d of %d bytes, %v", len(head)+len(rest), len(big), err)
	}
	busy.SetReadDeadline(time.Now().Add(5 * time.Second))
	if n, err := br.Read(make([]byte, 1)); err != io.EOF {
		t.Errorf("after its response the draining worker's connection: read %d bytes, %v; want EOF", n, err)
	}
}

// By default a worker gets a connection only once its request has arrived
// (TCP_DEFER_ACCEPT): a client that connects and says nothing holds no
// worker descriptor. --defer-accept -1s hands connections over at once.
func TestDeferAccept(t *testing.T) {
	root, _ := docroot(t)
	for _, tc := range []struct {
		name           string
		args           []string
		acceptedSilent bool
	}{
		{"default", nil, false},
		{"off", []string{"--defer-accept", "-1s"}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := startHerd(t, append([]string{root, "--workers", "1", "--strategy", "exclusive"}, tc.args...)...)
			c, err := net.Dial("tcp", h.addr)
			must(t, err)
			defer c.Close()
			if tc.acceptedSilent {
				h.waitStatus("silent connection accepted", 5*time.Second, func(s shm.Snapshot) bool { return s.Total.Accepts == 1 })
			} else {
				time.Sleep(300 * time.Millisecond) // the kernel would release it after 1s
				if n := h.status().Total.Accepts; n != 0 {
					t.Fatalf("a connection that sent nothing was accepted (%d accepts)", n)
				}
			}
			c.SetDeadline(time.Now().Add(5 * time.Second))
			io.WriteString(c, "GET /hello.txt HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
			b, err := io.ReadAll(c)
			if err != nil || !strings.HasPrefix(string(b), "HTTP/1.1 200 ") || !strings.HasSuffix(string(b), "hello, herd\n") {
				t.Fatalf("answer: %q, %v", b, err)
			}
			if n := h.status().Total.Accepts; n != 1 {
				t.Errorf("%d accepts for one connection", n)
			}
		})
	}
}
