package main

import (
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/herd-run/herd/internal/shm"
	"golang.org/x/sys/unix"
)

// Slowloris: hundreds of connections dribbling a request head a byte at a
// time neither starve a normal client nor stay: the header timeout answers
// them 408 and closes them.
func TestSlowlorisDoesNotStarve(t *testing.T) {
	root, _ := docroot(t)
	h := startHerd(t, root, "--workers", "2", "--header-timeout", "1s", "--worker-connections", "2048")
	const slow = 2000
	var closed atomic.Int32
	var wg sync.WaitGroup
	deadline := time.Now().Add(6 * time.Second) // every dribbling loop ends by then
	for range slow {
		c, err := net.Dial("tcp", h.addr)
		if err != nil {
			t.Fatalf("slow connection: %v", err)
		}
		defer c.Close()
		wg.Add(1)
		go func() {
			defer wg.Done()
			io.WriteString(c, "GET /hello.txt HTTP/1.1\r\nHost: x\r\nX-Slow: ")
			for time.Now().Before(deadline) {
				if _, err := c.Write([]byte("a")); err != nil {
					closed.Add(1)
					return
				}
				c.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
				if _, err := c.Read(make([]byte, 64)); err == nil || !isTimeout(err) {
					closed.Add(1) // the server answered (408) or closed
					return
				}
			}
		}()
	}
	// Meanwhile a normal client is served.
	res := load("http://"+h.addr+"/hello.txt", []byte("hello, herd\n"), 2, 50, 5*time.Second, nil)
	if res.failed != 0 || res.sent != 50 {
		t.Errorf("normal client during the slowloris: sent %d, failed %d (%s)", res.sent, res.failed, res.firstErr)
	}
	wg.Wait()
	if n := closed.Load(); n < slow*9/10 {
		t.Errorf("only %d of %d slow connections were cut off by the header timeout", n, slow)
	}
}

func isTimeout(err error) bool {
	ne, ok := err.(net.Error)
	return ok && ne.Timeout()
}

// A backlog above net.core.somaxconn is reported at start: the kernel
// silently caps it.
func TestBacklogAboveSomaxconnIsReported(t *testing.T) {
	b, err := os.ReadFile("/proc/sys/net/core/somaxconn")
	must(t, err)
	max, _ := strconv.Atoi(strings.TrimSpace(string(b)))
	root, _ := docroot(t)
	h := startHerd(t, root, "--workers", "1", "--backlog", strconv.Itoa(max+1))
	if !strings.Contains(h.Log(), "backlog exceeds net.core.somaxconn") {
		t.Errorf("backlog %d above somaxconn %d not reported:\n%s", max+1, max, h.Log())
	}
}

// Out of file descriptors (RLIMIT_NOFILE lowered): a worker pauses accepting
// instead of spinning, says so once, and serves again once descriptors free up.
func TestDescriptorExhaustion(t *testing.T) {
	root, _ := docroot(t)
	h := startWrapped(t, []string{"sh", "-c", `ulimit -n 40 && exec "$0" "$@"`}, root,
		"--workers", "1", "--listen", "127.0.0.1:0", "--header-timeout", "30s")
	addr := h.addr
	worker := h.status().Live[0].PID

	// Idle connections until the worker runs out of descriptors.
	var idle []net.Conn
	for range 60 {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			break
		}
		idle = append(idle, c)
	}
	if !h.logged("accept paused", 10*time.Second) {
		t.Fatalf("no pause reported with %d connections open", len(idle))
	}
	// Paused, not spinning: the worker uses little CPU while exhausted.
	before := cpuTicks(t, worker)
	time.Sleep(time.Second)
	if used := cpuTicks(t, worker) - before; used > 30 {
		t.Errorf("worker used %d ticks of CPU in 1s while out of descriptors: spinning", used)
	}
	// Retried every 100ms for over a second, reported once.
	if n := strings.Count(h.Log(), "accept paused"); n != 1 {
		t.Errorf("one episode was logged %d times, want once", n)
	}
	// A request now waits in the backlog; freeing descriptors lets it through.
	got := make(chan error, 1)
	go func() {
		code, _, err := get(client(), "http://"+addr+"/hello.txt")
		if err == nil && code != 200 {
			err = io.ErrUnexpectedEOF
		}
		got <- err
	}()
	time.Sleep(300 * time.Millisecond)
	for _, c := range idle {
		c.Close()
	}
	select {
	case err := <-got:
		if err != nil {
			t.Errorf("request after descriptors were freed: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("not served after descriptors were freed")
	}
	if !h.logged("accept resumed", 5*time.Second) {
		t.Errorf("the end of the episode was not logged")
	}
}

// cpuTicks is a process's utime+stime from /proc.
func cpuTicks(t *testing.T, pid int) int {
	t.Helper()
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	must(t, err)
	s := string(b)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+2:])
	u, _ := strconv.Atoi(f[11])
	k, _ := strconv.Atoi(f[12])
	return u + k
}

// A FIFO under the root hangs no worker, with either engine: it is
// answered 404 and the same (only) worker serves the next request; a
// reload then replaces the worker as usual.
func TestFIFODoesNotHangAWorker(t *testing.T) {
	for _, engine := range []string{"native", "nethttp"} {
		t.Run(engine, func(t *testing.T) {
			root, _ := docroot(t)
			must(t, unix.Mkfifo(filepath.Join(root, "fifo"), 0o644))
			h := startHerd(t, root, "--workers", "1", "--engine", engine)
			c := &http.Client{Timeout: 5 * time.Second}
			for range 3 {
				if code, _, err := get(c, "http://"+h.addr+"/fifo"); err != nil || code != 404 {
					t.Fatalf("GET /fifo: %d %v; want 404 at once", code, err)
				}
			}
			if code, body, err := get(c, "http://"+h.addr+"/hello.txt"); err != nil || code != 200 || string(body) != "hello, herd\n" {
				t.Fatalf("GET /hello.txt after the FIFO: %d %q %v", code, body, err)
			}
			old := h.status().Live[0].PID
			h.signal(unix.SIGHUP)
			h.waitStatus("old worker gone after HUP", 10*time.Second, func(s shm.Snapshot) bool {
				return len(s.Live) == 1 && s.Live[0].PID != old && s.Live[0].State == "ready"
			})
		})
	}
}

// A worker whose event loop is stuck — here in a write to an access log
// that is a pipe nobody reads — stops its heartbeat, and the master's
// --worker-timeout replaces it; once the pipe is read again, the
// replacement serves.
func TestStuckLoopIsReplaced(t *testing.T) {
	root, _ := docroot(t)
	fifo := filepath.Join(t.TempDir(), "access.fifo")
	must(t, unix.Mkfifo(fifo, 0o644))
	pipe, err := os.OpenFile(fifo, os.O_RDWR, 0) // a reader that reads nothing (yet)
	must(t, err)
	defer pipe.Close()
	unix.FcntlInt(pipe.Fd(), unix.F_SETPIPE_SZ, 4096)
	h := startHerd(t, root, "--workers", "1", "--worker-timeout", "2s", "--access-log", fifo)
	stuck := h.status().Live[0].PID

	// Requests fill the pipe; the loop blocks in its next log write.
	c := &http.Client{Timeout: time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	deadline := time.Now().Add(20 * time.Second)
	for n := 0; ; n++ {
		if _, _, err := get(c, "http://"+h.addr+"/hello.txt"); err != nil {
			break
		}
		if n > 5000 || time.Now().After(deadline) {
			t.Fatalf("the loop never blocked on the full log pipe (%d requests)", n)
		}
	}
	if !h.logged("worker stopped responding; killing it", 10*time.Second) {
		t.Fatal("a worker with a stuck loop was not killed by --worker-timeout")
	}
	go io.Copy(io.Discard, pipe) // the log is read again
	h.waitStatus("a replacement worker", 10*time.Second, func(s shm.Snapshot) bool {
		return len(s.Live) == 1 && s.Live[0].PID != stuck && s.Live[0].State == "ready"
	})
	c.Timeout = 5 * time.Second
	if code, _, err := get(c, "http://"+h.addr+"/hello.txt"); err != nil || code != 200 {
		t.Errorf("the replacement: %d %v", code, err)
	}
}
