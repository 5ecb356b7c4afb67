package main

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/herd-run/herd"
	"github.com/herd-run/herd/internal/lab"
	"github.com/herd-run/herd/internal/master"
	"github.com/herd-run/herd/internal/shm"
)

// strategyArgs are the extra flags a strategy's tests run with. nginx's
// accept mutex lets one worker take every connection until the worker is
// loaded (that is why nginx turned it off by default); a small connection
// budget and a short accept_mutex_delay make its load rule visible in a
// short test.
func strategyArgs(name string) []string {
	if name == "nginx" {
		return []string{"--worker-connections", "8", "--accept-mutex-delay", "5ms"}
	}
	return nil
}

// For every strategy: 4 workers answer 2,000 requests, each on a new
// connection, from 8 concurrent clients with no failure; every worker
// accepts some; the scoreboard agrees with the client; and a reload in the
// middle of the load fails nothing.
func TestEveryStrategyServesAndReloads(t *testing.T) {
	for _, name := range herd.Strategies() {
		t.Run(name, func(t *testing.T) {
			root, _ := docroot(t)
			h := startHerd(t, append([]string{root, "--workers", "4", "--strategy", name}, strategyArgs(name)...)...)
			url := "http://" + h.addr + "/hello.txt"
			want := []byte("hello, herd\n")

			const n = 2000
			res := load(url, want, 8, n, 60*time.Second, nil)
			if res.failed != 0 || res.sent != n {
				t.Fatalf("sent %d, failed %d (first: %s)", res.sent, res.failed, res.firstErr)
			}
			s := h.waitStatus("requests counted", 5*time.Second, func(s shm.Snapshot) bool { return s.Total.Requests >= n })
			if s.Total.Accepts != n || s.Total.Requests != n {
				t.Errorf("scoreboard: %d accepts, %d requests; want %d of each", s.Total.Accepts, s.Total.Requests, n)
			}
			for _, w := range s.Live {
				if w.Accepts == 0 {
					t.Errorf("worker slot %d accepted nothing: %+v", w.Slot, perWorker(s))
				}
			}
			t.Logf("per-worker accepts %v, wakeups %d, spurious %d", perWorker(s), s.Total.Wakeups, s.Total.Spurious)

			stop := make(chan struct{})
			done := make(chan loadResult)
			go func() { done <- load(url, want, 8, 100000, 30*time.Second, stop) }()
			time.Sleep(150 * time.Millisecond)
			h.signal(syscall.SIGHUP)
			h.waitStatus("reloaded", 15*time.Second, func(s shm.Snapshot) bool {
				return s.Generation == 2 && len(readyPIDs(s, 2)) == 4 && len(s.Live) == 4
			})
			time.Sleep(150 * time.Millisecond)
			close(stop)
			if r := <-done; r.failed != 0 {
				t.Errorf("across a reload: sent %d, failed %d (first: %s)", r.sent, r.failed, r.firstErr)
			}
		})
	}
}

func perWorker(s shm.Snapshot) []uint64 {
	out := make([]uint64, 0, len(s.Live))
	for _, w := range s.Live {
		out = append(out, w.Accepts)
	}
	return out
}

// The herd made visible: with 8 workers on the same load, each connection
// wakes more epoll workers than any strategy built to avoid it. One client
// at a time, so every worker is idle when a connection arrives — the
// condition under which a herd forms. Only the order is asserted, never
// timings.
func TestEpollWakesMoreThanTheOthers(t *testing.T) {
	perConn := map[string]float64{}
	for _, name := range []string{"epoll", "exclusive", "accept", "mutex", "fdpass", "reuseport"} {
		root, _ := docroot(t)
		h := startHerd(t, root, "--workers", "8", "--strategy", name)
		const n = 300
		res := load("http://"+h.addr+"/hello.txt", []byte("hello, herd\n"), 1, n, 60*time.Second, nil)
		if res.failed != 0 {
			t.Fatalf("%s: %d of %d failed (%s)", name, res.failed, res.sent, res.firstErr)
		}
		s := h.waitStatus("requests counted", 5*time.Second, func(s shm.Snapshot) bool { return s.Total.Requests >= n })
		perConn[name] = float64(s.Total.Wakeups) / float64(s.Total.Accepts)
		h.signal(syscall.SIGTERM)
		h.waitExit(10 * time.Second)
	}
	t.Logf("wakeups per accepted connection: %v", perConn)
	for name, v := range perConn {
		if name != "epoll" && perConn["epoll"] <= v {
			t.Errorf("epoll: %.2f wakeups per connection, not more than %s's %.2f", perConn["epoll"], name, v)
		}
	}
}

// The mutex strategy survives the death of the lock's holder: the master
// frees the lock, and serving goes on within a second.
func TestMutexHolderKilled(t *testing.T) {
	for _, name := range []string{"mutex", "nginx"} {
		t.Run(name, func(t *testing.T) {
			root, _ := docroot(t)
			h := startHerd(t, root, "--workers", "3", "--strategy", name)
			// An idle holder keeps the lock while it polls, so there is
			// nearly always one to kill.
			s := h.waitStatus("someone holds the accept mutex", 5*time.Second, func(s shm.Snapshot) bool { return s.MutexHolder != 0 })
			holder := s.MutexHolder
			if err := syscall.Kill(holder, syscall.SIGKILL); err != nil {
				t.Fatal(err)
			}
			start := time.Now()
			res := load("http://"+h.addr+"/hello.txt", []byte("hello, herd\n"), 1, 1, 5*time.Second, nil)
			if res.failed != 0 {
				t.Fatalf("first request after killing the holder failed: %s", res.firstErr)
			}
			if d := time.Since(start); d > time.Second {
				t.Errorf("serving stalled %v after the holder was killed", d)
			}
			if !h.logged("freed the accept mutex", 5*time.Second) {
				t.Errorf("the master did not report freeing the lock:\n%s", h.Log())
			}
		})
	}
}

// The scoreboard's counts agree with the kernel's: under epoll every wakeup
// makes exactly one accept4 call, which strace counts independently.
func TestWakeupsAgreeWithStrace(t *testing.T) {
	strace, err := exec.LookPath("strace")
	if err != nil {
		t.Skip("strace not installed (.ci/run installs it)")
	}
	root, _ := docroot(t)
	out := filepath.Join(t.TempDir(), "strace.out")
	h := startWrapped(t, []string{strace, "-f", "-c", "-e", "trace=accept4", "-o", out},
		root, "--workers", "4", "--strategy", "epoll", "--listen", "127.0.0.1:0")
	addr := h.addr
	res := load("http://"+addr+"/hello.txt", []byte("hello, herd\n"), 4, 300, 60*time.Second, nil)
	if res.failed != 0 {
		t.Fatalf("%d failed (%s)", res.failed, res.firstErr)
	}
	time.Sleep(200 * time.Millisecond)
	s := h.status()
	pid, err := master.ReadPIDFile(h.pidFile)
	must(t, err)
	must(t, syscall.Kill(pid, syscall.SIGTERM))
	if code := h.waitExit(10 * time.Second); code != 0 {
		t.Fatalf("strace: exit %d\n%s", code, h.Log())
	}
	calls := straceCalls(t, readFile(t, out), "accept4")
	ours := s.Total.Wakeups
	t.Logf("accept4 calls: strace %d, scoreboard wakeups %d (accepts %d, spurious %d)", calls, ours, s.Total.Accepts, s.Total.Spurious)
	if diff := float64(calls) - float64(ours); diff < -0.03*float64(calls) || diff > 0.03*float64(calls) {
		t.Errorf("strace counted %d accept4 calls, the scoreboard %d wakeups: more than 3%% apart", calls, ours)
	}

	// And the lab measures the strategy, not herd's plumbing: blocking
	// accept (kernel wake-one) costs about one context switch per
	// connection (1.3-1.5 here; the target is 2.5), as uWSGI's does; it
	// cost 13-15 while every connection was handed to a second thread and
	// sysmon spun. The bound leaves room for a busy 2-core machine.
	t.Run("native cost", func(t *testing.T) {
		rep := benchJSON(t, "--strategies", "accept", "--workers", "8", "--concurrency", "4", "--mode", "close", "--requests", "3000")
		r := rep.Runs[0]
		t.Logf("accept: %.2f context switches per connection, %.0f req/s", r.CtxSwitchesPerRequest, r.RPS)
		if r.CtxSwitchesPerRequest > 5 {
			t.Errorf("accept: %.2f context switches per connection; want about 1.5 (at most 5 on a busy machine)", r.CtxSwitchesPerRequest)
		}
	})
}

// benchJSON runs herd bench with args and reads its JSON report.
func benchJSON(t *testing.T, args ...string) *lab.Report {
	t.Helper()
	path := filepath.Join(t.TempDir(), "r.json")
	_, errOut, code := runHerd(t, append([]string{"bench", "--json", path}, args...)...)
	if code != 0 {
		t.Fatalf("bench %v: exit %d\n%s", args, code, errOut)
	}
	rep, err := lab.ReadReport(path)
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Runs) == 0 {
		t.Fatalf("bench %v: no runs", args)
	}
	return rep
}

var straceRow = regexp.MustCompile(`(?m)^\s*[\d.]+\s+[\d.]+\s+\d+\s+(\d+)\s+(?:\d+\s+)?(\w+)\s*$`)

// straceCalls reads the calls column of a syscall's row in strace -c output.
func straceCalls(t *testing.T, out, name string) int {
	t.Helper()
	for _, m := range straceRow.FindAllStringSubmatch(out, -1) {
		if m[2] == name {
			n, _ := strconv.Atoi(m[1])
			return n
		}
	}
	t.Fatalf("no %s row in strace output:\n%s", name, out)
	return 0
}

func readFile(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// Shrinking a reuseport server resets no queued connection: the retired
// slot's socket is steered away from, whose queue its worker accepts, then closed.
func TestReuseportShrinkDropsNothing(t *testing.T) {
	for _, engine := range []string{"native", "nethttp"} {
		t.Run(engine, func(t *testing.T) { testReuseportShrink(t, engine) })
	}
}

func testReuseportShrink(t *testing.T, engine string) {
	root, _ := docroot(t)
	h := startHerd(t, root, "--workers", "4", "--strategy", "reuseport", "--engine", engine)
	stop := make(chan struct{})
	done := make(chan loadResult)
	go func() {
		done <- load("http://"+h.addr+"/hello.txt", []byte("hello, herd\n"), 8, 100000, 30*time.Second, stop)
	}()
	for want := 3; want >= 1; want-- {
		time.Sleep(150 * time.Millisecond)
		h.signal(syscall.SIGTTOU)
		h.waitStatus("a slot retired", 10*time.Second, func(s shm.Snapshot) bool {
			return s.Workers == want && len(s.Live) == want
		})
	}
	h.signal(syscall.SIGTTIN)
	h.waitStatus("a slot back", 10*time.Second, func(s shm.Snapshot) bool { return len(readyPIDs(s, 1)) == 2 })
	time.Sleep(150 * time.Millisecond)
	close(stop)
	res := <-done
	if res.failed != 0 || res.sent < 100 {
		t.Fatalf("across 3 TTOU and a TTIN: sent %d, failed %d (first: %s)", res.sent, res.failed, res.firstErr)
	}
	if !h.logged("reuseport: retiring slot sockets", 5*time.Second) {
		t.Errorf("the steering was not logged:\n%s", h.Log())
	}
	t.Logf("%d requests across the resizes, none failed", res.sent)
}

// fdpass: a worker that dies holding descriptors it never acknowledged
// loses no connection; the master sends them to another worker.
func TestFdpassResendsWhenWorkerDies(t *testing.T) {
	root, _ := docroot(t)
	h := startHerd(t, root, "--workers", "2", "--strategy", "fdpass")
	s := h.status()
	victim := s.Live[0].PID
	// A stopped process neither reads its control socket nor acknowledges:
	// what the master sends it stays in flight.
	must(t, syscall.Kill(victim, syscall.SIGSTOP))
	// Only once it has stopped: a connection it took in the meantime and
	// was stopped serving would die with it, as with any worker killed
	// mid-request (the master closes its copy once a worker has taken one).
	for deadline := time.Now().Add(5 * time.Second); procState(victim) != "T" && time.Now().Before(deadline); {
		time.Sleep(time.Millisecond)
	}
	done := make(chan loadResult)
	go func() {
		done <- load("http://"+h.addr+"/hello.txt", []byte("hello, herd\n"), 4, 40, 30*time.Second, nil)
	}()
	time.Sleep(500 * time.Millisecond)
	must(t, syscall.Kill(victim, syscall.SIGKILL))
	res := <-done
	if res.failed != 0 || res.sent != 40 {
		t.Fatalf("sent %d, failed %d (first: %s)", res.sent, res.failed, res.firstErr)
	}
	if !h.logged("fdpass: re-sending connections", 5*time.Second) {
		t.Errorf("no connection was in flight to the stopped worker, so nothing was tested:\n%s", h.Log())
	}
}

// procState is a process's state letter from /proc/PID/stat ("T": stopped).
func procState(pid int) string {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return ""
	}
	s := string(b)
	if i := strings.LastIndexByte(s, ')'); i >= 0 && i+2 < len(s) {
		return s[i+2 : i+3]
	}
	return ""
}

// Nothing dropped, for every strategy: a client loop of new connections
// runs across 5 HUP reloads and a USR2 binary upgrade without one failure.
func TestReloadsAndUpgradeDropNothing(t *testing.T) {
	type run struct{ name, strategy, engine string }
	var runs []run
	for _, name := range herd.Strategies() {
		runs = append(runs, run{name, name, "native"})
	}
	// net/http's workers: the library's default strategy, and reuseport
	// in Go's netpoller.
	runs = append(runs, run{"nethttp-go", "go", "nethttp"}, run{"nethttp-reuseport", "reuseport", "nethttp"})
	for _, r := range runs {
		name := r.strategy
		t.Run(r.name, func(t *testing.T) {
			root, _ := docroot(t)
			h := startHerd(t, append([]string{root, "--workers", "2", "--strategy", name, "--engine", r.engine}, strategyArgs(name)...)...)
			stop := make(chan struct{})
			done := make(chan loadResult)
			go func() {
				done <- load("http://"+h.addr+"/hello.txt", []byte("hello, herd\n"), 4, 1_000_000, 60*time.Second, stop)
			}()
			oldMaster := h.pid()
			var took []time.Duration // per reload, then the upgrade: logged, to see where a slow run goes
			for gen := 2; gen <= 6; gen++ {
				time.Sleep(50 * time.Millisecond)
				start := time.Now()
				must(t, syscall.Kill(oldMaster, syscall.SIGHUP))
				h.waitStatus("reloaded", 15*time.Second, func(s shm.Snapshot) bool {
					return s.Generation == gen && len(readyPIDs(s, gen)) == 2 && len(s.Live) == 2
				})
				took = append(took, time.Since(start).Round(time.Millisecond))
			}
			start := time.Now()
			must(t, syscall.Kill(oldMaster, syscall.SIGUSR2))
			var s shm.Snapshot
			deadline := time.Now().Add(15 * time.Second)
			for {
				if pid, err := master.ReadPIDFile(h.pidFile); err == nil && pid != oldMaster {
					if s = h.status(); s.MasterPID == pid && len(readyPIDs(s, 1)) == 2 && !alive(oldMaster) {
						break
					}
				}
				if time.Now().After(deadline) {
					t.Fatalf("upgrade did not complete; log:\n%s", h.Log())
				}
				time.Sleep(50 * time.Millisecond)
			}
			if code := h.waitExit(5 * time.Second); code != 0 {
				t.Errorf("old master exit code %d", code)
			}
			t.Logf("reloads took %v, the upgrade %v", took, time.Since(start).Round(time.Millisecond))
			// The new master inherited the sockets; it must not poll them
			// (the epoll strategies make them non-blocking, and os.NewFile
			// would register them with its netpoller: a wakeup of the
			// master for every connection).
			if fds := polledListeners(t, s.MasterPID, h.addr); len(fds) > 0 {
				t.Errorf("the new master's epoll watches its listening socket (fd %v)", fds)
			}
			time.Sleep(100 * time.Millisecond)
			close(stop)
			res := <-done
			if res.failed != 0 || res.sent < 50 {
				t.Fatalf("across 5 reloads and an upgrade: sent %d, failed %d (first: %s)", res.sent, res.failed, res.firstErr)
			}
			t.Logf("%d requests across 5 reloads and an upgrade, none failed", res.sent)
			must(t, syscall.Kill(s.MasterPID, syscall.SIGTERM))
		})
	}
}

// polledListeners returns the descriptors of process pid that are the TCP
// socket listening on addr's port and that one of the process's epoll
// instances watches (from /proc: the socket inodes in /proc/net/tcp*, the
// watched descriptors in the epoll instances' fdinfo "tfd:" lines).
func polledListeners(t *testing.T, pid int, addr string) []int {
	t.Helper()
	_, port, _ := strings.Cut(addr, ":")
	p, _ := strconv.Atoi(port)
	inodes := map[string]bool{}
	for _, table := range []string{"/proc/net/tcp", "/proc/net/tcp6"} {
		b, _ := os.ReadFile(table)
		for _, line := range strings.Split(string(b), "\n")[1:] {
			f := strings.Fields(line)
			if len(f) > 9 && f[3] == "0A" && strings.HasSuffix(f[1], fmt.Sprintf(":%04X", p)) {
				inodes[f[9]] = true
			}
		}
	}
	fdDir := fmt.Sprintf("/proc/%d/fd", pid)
	ents, err := os.ReadDir(fdDir)
	if err != nil {
		t.Fatal(err)
	}
	listening, polled := map[int]bool{}, []int{}
	var epolls []string
	for _, e := range ents {
		link, _ := os.Readlink(filepath.Join(fdDir, e.Name()))
		n, _ := strconv.Atoi(e.Name())
		if ino, ok := strings.CutPrefix(link, "socket:["); ok && inodes[strings.TrimSuffix(ino, "]")] {
			listening[n] = true
		}
		if link == "anon_inode:[eventpoll]" {
			epolls = append(epolls, e.Name())
		}
	}
	if len(listening) == 0 {
		t.Fatalf("process %d has no socket listening on port %d", pid, p)
	}
	for _, ep := range epolls {
		b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/fdinfo/%s", pid, ep))
		for _, line := range strings.Split(string(b), "\n") {
			if f := strings.Fields(line); len(f) > 1 && f[0] == "tfd:" {
				if n, _ := strconv.Atoi(f[1]); listening[n] {
					polled = append(polled, n)
				}
			}
		}
	}
	return polled
}

// USR2 after the configuration's listen addresses were edited: the new
// master keeps the inherited socket that is still configured, opens the new
// address and closes the one no longer configured — it used to keep the
// old addresses by position and silently serve the old port.
func TestUpgradeFollowsEditedListen(t *testing.T) {
	root, _ := docroot(t)
	a, b := freeAddr(t), freeAddr(t)
	cfg := filepath.Join(t.TempDir(), "herd.toml")
	write := func(addrs ...string) {
		must(t, os.WriteFile(cfg, []byte(fmt.Sprintf("workers = 1\nlisten = [\"%s\"]\n", strings.Join(addrs, `", "`))), 0o644))
	}
	upgrade := func(old int) int {
		t.Helper()
		must(t, syscall.Kill(old, syscall.SIGUSR2))
		h := &herdProc{t: t, pidFile: filepath.Join(filepath.Dir(cfg), "herd.pid")}
		for deadline := time.Now().Add(15 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
			if pid, err := master.ReadPIDFile(h.pidFile); err == nil && pid != old && !alive(old) {
				if s := h.status(); s.MasterPID == pid && len(readyPIDs(s, 1)) == 1 {
					return pid
				}
			}
		}
		t.Fatalf("upgrade from %d did not complete", old)
		return 0
	}
	serves := func(addr string) bool {
		code, _, err := get(client(), "http://"+addr+"/hello.txt")
		return err == nil && code == 200
	}
	write(a)
	h := startWrapped(t, nil, root, "--config", cfg, "--pid", filepath.Join(filepath.Dir(cfg), "herd.pid"))
	if !serves(a) || serves(b) {
		t.Fatalf("before: %s serves %v, %s serves %v", a, serves(a), b, serves(b))
	}
	write(a, b)
	pid := upgrade(h.pid())
	if !serves(a) || !serves(b) {
		t.Fatalf("after adding %s: %s serves %v, %s serves %v\n%s", b, a, serves(a), b, serves(b), h.Log())
	}
	write(b)
	upgrade(pid)
	if serves(a) || !serves(b) {
		t.Fatalf("after removing %s: %s serves %v, %s serves %v\n%s", a, a, serves(a), b, serves(b), h.Log())
	}
}
