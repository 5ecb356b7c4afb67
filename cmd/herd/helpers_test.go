package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/herd-run/herd/internal/shm"
)

// The tests run the real herd: this test binary, started again with
// HERD_TEST_MAIN=1, is the herd command (the os/exec helper-process pattern).
// Its workers re-execute it in turn, exactly as a built herd re-executes itself.
func TestMain(m *testing.M) {
	if os.Getenv("HERD_TEST_MAIN") == "1" {
		os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
	}
	// Under -race, a process that exits sleeps a second first (GORACE's
	// atexit_sleep_ms), keeping a killed worker's connections open; the
	// tests' processes must exit when they say.
	os.Setenv("GORACE", "atexit_sleep_ms=0")
	os.Exit(m.Run())
}

// herdProc is a running `herd serve` master.
type herdProc struct {
	t       testing.TB
	cmd     *exec.Cmd
	addr    string   // first listen address, host:port
	addrs   []string // every listen address as bound, plain ones first, from the ready line
	pidFile string
	stderr  *os.File // the read end of the master's standard error
	mu      sync.Mutex
	log     bytes.Buffer
	exited  chan struct{}
}

var readyLine = regexp.MustCompile(`msg="herd ready" listen=(\S+)`)

// startHerd starts `herd serve ARGS...` (on 127.0.0.1:0 unless ARGS say
// --listen) and returns once the master logs that every worker is ready.
// Whatever is left is killed at cleanup.
func startHerd(t testing.TB, args ...string) *herdProc {
	t.Helper()
	if !containsFlag(args, "--listen") {
		args = append(args, "--listen", "127.0.0.1:0")
	}
	return startWrapped(t, nil, args...)
}

// startWrapped is startHerd under another program — wrapper is its command
// line, followed by herd's (strace, systemd-socket-activate, a shell that
// lowers a limit) — and without a default --listen. The master is then a
// descendant of h.cmd: signal it through h.pidFile.
func startWrapped(t testing.TB, wrapper []string, args ...string) *herdProc {
	t.Helper()
	return startBinary(t, wrapper, os.Args[0], args...)
}

// startBinary is startWrapped with another copy of this test binary.
func startBinary(t testing.TB, wrapper []string, exe string, args ...string) *herdProc {
	t.Helper()
	h := &herdProc{t: t, pidFile: filepath.Join(t.TempDir(), "herd.pid"), exited: make(chan struct{})}
	argv := append(append(append([]string(nil), wrapper...), exe, "serve", "--pid", h.pidFile), args...)
	h.cmd = exec.Command(argv[0], argv[1:]...)
	h.cmd.Env = append(os.Environ(), "HERD_TEST_MAIN=1")
	h.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	// A pipe of our own rather than StderrPipe: Wait closes that one's read
	// end when the process exits, and the log of a new master started by
	// USR2, which outlives it and writes to the same stderr, would be lost.
	stderr, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	h.stderr = stderr
	h.cmd.Stderr = w
	if err := h.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	w.Close()
	t.Cleanup(func() { stderr.Close() })
	ready := make(chan []string, 1)
	go func() {
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			line := sc.Text()
			h.mu.Lock()
			h.log.WriteString(line + "\n")
			h.mu.Unlock()
			if m := readyLine.FindStringSubmatch(line); m != nil {
				select {
				case ready <- strings.Split(m[1], ","):
				default:
				}
			}
		}
	}()
	go func() { h.cmd.Wait(); close(h.exited) }()
	t.Cleanup(func() {
		syscall.Kill(-h.cmd.Process.Pid, syscall.SIGKILL)
		<-h.exited
		if t.Failed() {
			t.Logf("herd log:\n%s", h.Log())
		}
	})
	select {
	case h.addrs = <-ready:
		h.addr = h.addrs[0]
	case <-h.exited:
		t.Fatalf("herd exited before ready:\n%s", h.Log())
	case <-time.After(20 * time.Second):
		t.Fatalf("herd not ready in 20s:\n%s", h.Log())
	}
	return h
}

func containsFlag(args []string, flag string) bool {
	for _, a := range args {
		if a == flag || strings.HasPrefix(a, flag+"=") {
			return true
		}
	}
	return false
}

func (h *herdProc) Log() string {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.log.String()
}

// logged reports whether the log has a line containing s, waiting up to d
// for it: a line reaches the test through a pipe and a scanner, after
// whatever it reports may already be visible to a client.
func (h *herdProc) logged(s string, d time.Duration) bool {
	for end := time.Now().Add(d); ; time.Sleep(10 * time.Millisecond) {
		if strings.Contains(h.Log(), s) {
			return true
		}
		if time.Now().After(end) {
			return false
		}
	}
}

func (h *herdProc) pid() int { return h.cmd.Process.Pid }

func (h *herdProc) signal(sig syscall.Signal) {
	h.t.Helper()
	if err := h.cmd.Process.Signal(sig); err != nil {
		h.t.Fatalf("signal %v: %v", sig, err)
	}
}

// waitExit waits for the master to exit and returns its exit code.
func (h *herdProc) waitExit(d time.Duration) int {
	h.t.Helper()
	select {
	case <-h.exited:
		return h.cmd.ProcessState.ExitCode()
	case <-time.After(d):
		h.t.Fatalf("master still running after %v", d)
		return -1
	}
}

// status runs `herd status --json` against the master, as a user would.
func (h *herdProc) status() shm.Snapshot {
	h.t.Helper()
	out, errOut, code := runHerd(h.t, "status", "--json", "--pid", h.pidFile)
	if code != 0 {
		h.t.Fatalf("herd status: exit %d: %s", code, errOut)
	}
	var s shm.Snapshot
	if err := json.Unmarshal([]byte(out), &s); err != nil {
		h.t.Fatalf("herd status json: %v\n%s", err, out)
	}
	return s
}

// waitStatus polls the scoreboard until cond holds.
func (h *herdProc) waitStatus(what string, d time.Duration, cond func(shm.Snapshot) bool) shm.Snapshot {
	h.t.Helper()
	deadline := time.Now().Add(d)
	for {
		s := h.status()
		if cond(s) {
			return s
		}
		if time.Now().After(deadline) {
			h.t.Fatalf("%s: not within %v; last status %+v", what, d, s)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// readyPIDs are the pids of ready workers of generation gen.
func readyPIDs(s shm.Snapshot, gen int) []int {
	var pids []int
	for _, w := range s.Live {
		if w.Generation == gen && w.State == "ready" {
			pids = append(pids, w.PID)
		}
	}
	return pids
}

// runHerd runs the herd command to completion.
func runHerd(t testing.TB, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	cmd := exec.Command(os.Args[0], args...)
	cmd.Env = append(os.Environ(), "HERD_TEST_MAIN=1")
	var o, e bytes.Buffer
	cmd.Stdout, cmd.Stderr = &o, &e
	err := cmd.Run()
	var ee *exec.ExitError
	if err != nil && !errors.As(err, &ee) {
		t.Fatal(err)
	}
	return o.String(), e.String(), cmd.ProcessState.ExitCode()
}

// client makes one new connection per request, like ab without -k.
func client() *http.Client {
	return &http.Client{
		Transport: &http.Transport{DisableKeepAlives: true},
		Timeout:   10 * time.Second,
	}
}

func get(c *http.Client, url string) (int, []byte, error) {
	resp, err := c.Get(url)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, b, err
}

// load runs workers goroutines each sending requests until stop is closed
// or max requests have been sent in all, and reports the outcome. Bounded in
// count and in time (deadline), it always stops by itself.
type loadResult struct {
	sent, failed int
	firstErr     string
}

func load(url string, want []byte, workers, max int, deadline time.Duration, stop <-chan struct{}) loadResult {
	return loadWith(client(), url, want, workers, max, deadline, stop)
}

// loadWith is load with a client of the caller's (HTTPS).
func loadWith(c *http.Client, url string, want []byte, workers, max int, deadline time.Duration, stop <-chan struct{}) loadResult {
	var mu sync.Mutex
	var res loadResult
	var wg sync.WaitGroup
	end := time.Now().Add(deadline)
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				mu.Lock()
				if res.sent >= max || time.Now().After(end) {
					mu.Unlock()
					return
				}
				res.sent++
				mu.Unlock()
				code, body, err := get(c, url)
				if err == nil && (code != 200 || !bytes.Equal(body, want)) {
					err = fmt.Errorf("status %d, %d bytes", code, len(body))
				}
				if err != nil {
					mu.Lock()
					res.failed++
					if res.firstErr == "" {
						res.firstErr = err.Error()
					}
					mu.Unlock()
				}
			}
		}()
	}
	wg.Wait()
	return res
}

// alive reports whether pid exists and is not a zombie.
func alive(pid int) bool {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return false
	}
	// The state follows the parenthesised command name.
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	return i < 0 || i+2 >= len(s) || s[i+2] != 'Z'
}

// ppid reads a process's parent pid from /proc.
func ppid(t *testing.T, pid int) int {
	t.Helper()
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		t.Fatalf("process %d: %v", pid, err)
	}
	s := string(b)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+2:])
	n, _ := strconv.Atoi(f[1])
	return n
}
