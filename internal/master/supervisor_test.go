package master

import (
	"bytes"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/herd-run/herd/internal/proto"
	"github.com/herd-run/herd/internal/shm"
	"github.com/herd-run/herd/internal/worker"
	"golang.org/x/sys/unix"
)

// The supervisor's decisions, driven in-process: workers are fakes that
// say ready or die when told, time is a fake clock, and each test feeds
// the master signals and events as its loop would. The kernel-level claims
// (sockets, nothing dropped) stay with the process tests in cmd/herd.

// fakeClock is a clock whose timers fire when the test advances it.
type fakeClock struct {
	mu     sync.Mutex
	now    time.Time
	timers []*fakeTimer
}

type fakeTimer struct {
	when          time.Time
	f             func()
	stopped, done bool
	c             *fakeClock
}

func (t *fakeTimer) Stop() bool {
	t.c.mu.Lock()
	defer t.c.mu.Unlock()
	was := !t.stopped && !t.done
	t.stopped = true
	return was
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) AfterFunc(d time.Duration, f func()) stopper {
	c.mu.Lock()
	defer c.mu.Unlock()
	t := &fakeTimer{when: c.now.Add(d), f: f, c: c}
	c.timers = append(c.timers, t)
	return t
}

// advance moves the clock on and runs the timers that are then due.
func (c *fakeClock) advance(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	var due []func()
	for _, t := range c.timers {
		if !t.stopped && !t.done && !t.when.After(c.now) {
			t.done = true
			due = append(due, t.f)
		}
	}
	c.mu.Unlock()
	for _, f := range due {
		f()
	}
}

// fakeProc is a worker that does only what the test makes it do.
type fakeProc struct {
	pid  int
	spec worker.Spec
	ctrl *os.File // its end of the control socket
	exit chan error

	mu     sync.Mutex
	sigs   []os.Signal
	obey   bool // exit at QUIT, TERM or KILL
	exited bool
}

func (p *fakeProc) Pid() int    { return p.pid }
func (p *fakeProc) Wait() error { return <-p.exit }

func (p *fakeProc) Signal(sig os.Signal) error {
	p.mu.Lock()
	p.sigs = append(p.sigs, sig)
	obey := p.obey || sig == unix.SIGKILL
	p.mu.Unlock()
	if obey {
		p.die(nil)
	}
	return nil
}

func (p *fakeProc) signals() []os.Signal {
	p.mu.Lock()
	defer p.mu.Unlock()
	return slices.Clone(p.sigs)
}

// ready says ready on the control socket, as a worker does once it accepts.
func (p *fakeProc) ready() { p.ctrl.Write(proto.Msg{Kind: proto.Ready}.Encode()) }

// die ends the process with err (nil: exit 0), once.
func (p *fakeProc) die(err error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.exited {
		return
	}
	p.exited = true
	p.ctrl.Close()
	p.exit <- err
}

// sup is a master under test with its fakes.
type sup struct {
	t     *testing.T
	m     *Master
	clock *fakeClock
	log   *bytes.Buffer
	logMu *sync.Mutex

	mu      sync.Mutex
	started []*fakeProc
	onStart func(*fakeProc)
}

type lockedWriter struct {
	mu *sync.Mutex
	b  *bytes.Buffer
}

func (w lockedWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.b.Write(p)
}

func newSup(t *testing.T, tune func(*Config), onStart func(*fakeProc)) *sup {
	t.Helper()
	s := &sup{t: t, clock: &fakeClock{now: time.Unix(1_800_000_000, 0)}, log: &bytes.Buffer{}, logMu: &sync.Mutex{},
		onStart: onStart}
	cfg := Config{
		Listen: []string{"127.0.0.1:0"}, Workers: 2, Strategy: "accept", Path: "/nonexistent",
		ReadyTimeout: 10 * time.Second, DrainTimeout: 20 * time.Second, StopTimeout: 5 * time.Second,
		Log: slog.New(slog.NewTextHandler(lockedWriter{s.logMu, s.log}, nil)),
	}
	if tune != nil {
		tune(&cfg)
	}
	m, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	m.start, m.clock = s.start, s.clock
	s.m = m
	t.Cleanup(func() {
		for _, p := range s.procs() {
			p.die(errors.New("test over"))
		}
		m.close()
	})
	m.fillSlots()
	return s
}

func (s *sup) start(spec *worker.Spec, files []*os.File) (process, error) {
	fd, err := unix.FcntlInt(files[0].Fd(), unix.F_DUPFD_CLOEXEC, 0) // the master closes its copy
	if err != nil {
		return nil, err
	}
	s.mu.Lock()
	p := &fakeProc{pid: 4_000_000 + len(s.started), spec: *spec, ctrl: os.NewFile(uintptr(fd), "ctrl"), exit: make(chan error, 1)}
	s.started = append(s.started, p)
	on := s.onStart
	s.mu.Unlock()
	if on != nil {
		on(p)
	}
	return p, nil
}

func (s *sup) procs() []*fakeProc {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.started)
}

// gen returns the fakes of generation g, in slot order.
func (s *sup) gen(g int) []*fakeProc {
	var out []*fakeProc
	for _, p := range s.procs() {
		if p.spec.Generation == g {
			out = append(out, p)
		}
	}
	slices.SortFunc(out, func(a, b *fakeProc) int { return a.spec.Slot - b.spec.Slot })
	return out
}

// signal is a signal handled as the loop handles it.
func (s *sup) signal(sig os.Signal) {
	s.m.handleSignal(sig)
	s.m.settle()
}

// until handles the master's events, as its loop would, until cond holds.
func (s *sup) until(what string, cond func() bool) {
	s.t.Helper()
	for !cond() {
		select {
		case ev := <-s.m.events:
			s.m.handleEvent(ev)
			s.m.settle()
		case <-time.After(3 * time.Second):
			s.t.Fatalf("%s: no event came; log:\n%s", what, s.logText())
		}
	}
}

// quiet handles whatever events come within a short while.
func (s *sup) quiet() {
	for {
		select {
		case ev := <-s.m.events:
			s.m.handleEvent(ev)
			s.m.settle()
		case <-time.After(50 * time.Millisecond):
			return
		}
	}
}

func (s *sup) logText() string {
	s.logMu.Lock()
	defer s.logMu.Unlock()
	return s.log.String()
}

func (s *sup) allReady() {
	s.t.Helper()
	for _, p := range s.gen(s.m.gen) {
		p.ready()
	}
	s.until("workers ready", func() bool { return s.m.allSlotsReady() })
}

func (p *fakeProc) got(sig os.Signal) bool { return slices.Contains(p.signals(), sig) }

// A reload whose new workers never say ready is given up after
// ReadyTimeout: the new generation is stopped, the old one never signalled.
func TestSupervisorReloadNeverReady(t *testing.T) {
	s := newSup(t, nil, nil)
	s.allReady()
	s.signal(unix.SIGHUP)
	if s.m.gen != 2 || len(s.gen(2)) != 2 {
		t.Fatalf("after HUP: gen %d, %d new workers", s.m.gen, len(s.gen(2)))
	}
	s.clock.advance(9 * time.Second)
	s.quiet()
	if s.m.reload == nil {
		t.Fatal("reload given up before ReadyTimeout")
	}
	s.clock.advance(time.Second)
	s.until("reload failed", func() bool { return s.m.reload == nil })
	if s.m.gen != 1 {
		t.Errorf("generation %d after a failed reload, want 1", s.m.gen)
	}
	for _, p := range s.gen(2) {
		if !p.got(unix.SIGINT) {
			t.Errorf("new worker slot %d not stopped: %v", p.spec.Slot, p.signals())
		}
	}
	for _, p := range s.gen(1) {
		if len(p.signals()) != 0 {
			t.Errorf("old worker slot %d signalled %v", p.spec.Slot, p.signals())
		}
	}
	if !strings.Contains(s.logText(), "reload failed; the old workers keep serving") {
		t.Errorf("not logged:\n%s", s.logText())
	}
}

// Once the master has been ready, a slot whose workers die young backs
// off: the second start is at once, then 100ms, 200ms, 400ms... and the
// loop is reported.
func TestSupervisorCrashLoopBacksOff(t *testing.T) {
	first := true
	s := newSup(t, func(c *Config) { c.Workers = 1 }, func(p *fakeProc) {
		if first {
			first = false
			go p.ready()
			return
		}
		go p.die(errors.New("exit status 1"))
	})
	s.until("ready", func() bool { return s.m.isReady })
	s.procs()[0].die(errors.New("exit status 1"))
	starts := func() int { return len(s.procs()) }
	s.until("second start", func() bool { return starts() >= 2 })
	s.until("third start waits", func() bool { return s.m.slot(0).failures == 2 })
	s.quiet()
	if n := starts(); n != 2 {
		t.Fatalf("%d starts before any backoff passed, want 2", n)
	}
	for i, wait := range []time.Duration{100 * time.Millisecond, 200 * time.Millisecond, 400 * time.Millisecond} {
		before := starts()
		s.clock.advance(wait - time.Millisecond)
		s.quiet()
		if starts() != before {
			t.Fatalf("backoff %d: started before %v passed", i, wait)
		}
		s.clock.advance(time.Millisecond)
		s.until(fmt.Sprintf("start after %v", wait), func() bool { return starts() == before+1 })
		s.until("its death", func() bool { return s.m.slot(0).failures == before+1 })
	}
	if !strings.Contains(s.logText(), "worker crash loop") {
		t.Errorf("crash loop not reported:\n%s", s.logText())
	}
	if s.m.failed != nil || s.m.stopping {
		t.Errorf("a master that has been ready gave up: %v", s.m.failed)
	}
}

// Before the master has ever been ready, workers that keep failing make it
// give up after three tries on a slot, with the worker's own reason,
// reported once.
func TestSupervisorGivesUpAtStartup(t *testing.T) {
	s := newSup(t, nil, func(p *fakeProc) {
		go func() {
			p.ctrl.Write(proto.Msg{Kind: proto.Failed, Text: "root /srv/www: permission denied"}.Encode())
			p.die(errors.New("exit status 1"))
		}()
	})
	for i := 0; i < 50 && s.m.failed == nil; i++ {
		s.clock.advance(100 * time.Millisecond) // through the backoff
		s.quiet()
	}
	s.clock.advance(time.Second)
	s.until("stopped", s.m.finished)
	if !strings.Contains(s.m.failed.Error(), "root /srv/www: permission denied") {
		t.Errorf("Run would return %v; want the worker's reason", s.m.failed)
	}
	if n := strings.Count(s.logText(), "a worker failed to start"); n != 1 {
		t.Errorf("reported %d times:\n%s", n, s.logText())
	}
	if strings.Contains(s.logText(), "worker crash loop") {
		t.Errorf("a start-up failure reported as a crash loop:\n%s", s.logText())
	}
}

// A HUP that comes while a reload is under way is not lost: one more
// reload follows it, reading the configuration as it is then, however many
// HUPs came meanwhile. A deploy that writes its configuration and sends HUP
// twice in quick succession gets its second configuration; before, the
// second HUP was ignored with a warning, and the workers served the first.
func TestSupervisorHUPDuringReloadFollows(t *testing.T) {
	reads := 0
	s := newSup(t, func(c *Config) {
		c.Reload = func() (Config, error) {
			reads++
			next := *c
			next.Reload = nil
			return next, nil
		}
	}, nil)
	s.allReady()
	s.signal(unix.SIGHUP)
	s.signal(unix.SIGHUP)
	s.signal(unix.SIGHUP)
	if reads != 1 || s.m.gen != 2 {
		t.Fatalf("during the first reload: %d configurations read, generation %d", reads, s.m.gen)
	}
	for _, p := range s.gen(2) {
		p.ready()
	}
	s.until("the next reload", func() bool { return s.m.gen == 3 })
	for _, p := range s.gen(3) {
		p.ready()
	}
	s.until("reload done", func() bool { return s.m.reload == nil })
	s.quiet()
	if reads != 2 || s.m.gen != 3 || len(s.gen(4)) != 0 {
		t.Errorf("%d configurations read, generation %d, %d workers of a fourth; want 2, 3 and none", reads, s.m.gen, len(s.gen(4)))
	}
	for _, p := range s.gen(2) {
		if !p.got(unix.SIGQUIT) {
			t.Errorf("generation 2's worker in slot %d was not asked to drain: %v", p.spec.Slot, p.signals())
		}
	}
}

// TTOU during a reload: the reload waits only for the slots still wanted,
// and the removed slot's workers, old and new, are stopped.
func TestSupervisorTTOUDuringReload(t *testing.T) {
	s := newSup(t, nil, nil)
	s.allReady()
	s.signal(unix.SIGHUP)
	s.signal(unix.SIGTTOU)
	if s.m.workers != 1 {
		t.Fatalf("workers %d after TTOU", s.m.workers)
	}
	old, fresh := s.gen(1), s.gen(2)
	if !old[1].got(unix.SIGQUIT) || !fresh[1].got(unix.SIGQUIT) {
		t.Errorf("slot 1 not stopped: old %v, new %v", old[1].signals(), fresh[1].signals())
	}
	fresh[0].ready()
	s.until("reload done", func() bool { return s.m.reload == nil })
	if s.m.gen != 2 || !old[0].got(unix.SIGQUIT) || len(fresh[0].signals()) != 0 {
		t.Errorf("gen %d; old slot 0 %v; new slot 0 %v", s.m.gen, old[0].signals(), fresh[0].signals())
	}
}

// A worker of the old generation that dies while it drains is not a crash:
// no restart is counted and its slot is not refilled for its generation.
func TestSupervisorDeathWhileDraining(t *testing.T) {
	s := newSup(t, nil, nil)
	s.allReady()
	s.signal(unix.SIGHUP)
	for _, p := range s.gen(2) {
		p.ready()
	}
	s.until("reload done", func() bool { return s.m.reload == nil })
	old := s.gen(1)
	if !old[0].got(unix.SIGQUIT) {
		t.Fatalf("old worker not asked to drain: %v", old[0].signals())
	}
	n := len(s.procs())
	old[0].die(errors.New("signal: killed"))
	s.until("reaped", func() bool { _, live := s.m.procs[s.m.procFor(old[0])]; return !live })
	s.quiet()
	if len(s.procs()) != n || s.m.board.Snapshot().Restarts != 0 {
		t.Errorf("a draining worker's death started %d workers, counted %d restarts", len(s.procs())-n, s.m.board.Snapshot().Restarts)
	}
	if strings.Contains(s.logText(), "worker died") {
		t.Errorf("logged as a death:\n%s", s.logText())
	}
}

// A fast stop (INT, or a second TERM) sends INT to the workers; what has
// not exited when StopTimeout passes is killed. A graceful stop (TERM,
// QUIT) sends QUIT and allows DrainTimeout first.
func TestSupervisorStopDeadline(t *testing.T) {
	for _, tc := range []struct {
		name  string
		sigs  []unix.Signal
		sent  unix.Signal
		bound time.Duration
	}{
		{"INT", []unix.Signal{unix.SIGINT}, unix.SIGINT, 5 * time.Second},
		{"TERM", []unix.Signal{unix.SIGTERM}, unix.SIGQUIT, 25 * time.Second},
		{"QUIT", []unix.Signal{unix.SIGQUIT}, unix.SIGQUIT, 25 * time.Second},
		{"QUIT then TERM", []unix.Signal{unix.SIGQUIT, unix.SIGTERM}, unix.SIGQUIT, 25 * time.Second},
		{"TERM TERM", []unix.Signal{unix.SIGTERM, unix.SIGTERM}, unix.SIGINT, 5 * time.Second},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := newSup(t, nil, nil)
			s.allReady()
			for _, sig := range tc.sigs {
				s.signal(sig)
			}
			for _, p := range s.procs() {
				if !p.got(tc.sent) {
					t.Fatalf("worker not sent %v: %v", tc.sent, p.signals())
				}
			}
			s.clock.advance(tc.bound - time.Millisecond)
			s.quiet()
			if s.m.finished() {
				t.Fatal("finished before anyone exited")
			}
			s.clock.advance(time.Millisecond)
			s.until("everyone killed and reaped", s.m.finished)
			for _, p := range s.procs() {
				if !p.got(unix.SIGKILL) {
					t.Errorf("worker not killed at the deadline: %v", p.signals())
				}
			}
		})
	}
}

// A worker whose heartbeat is older than WorkerTimeout is killed, and its
// slot refilled.
func TestSupervisorHeartbeat(t *testing.T) {
	s := newSup(t, func(c *Config) { c.WorkerTimeout = 10 * time.Second }, nil)
	s.allReady()
	now := s.clock.Now()
	first := s.gen(1)
	for _, p := range first {
		s.m.board.Record(p.spec.Record).Store(shm.Heartbeat, uint64(now.UnixNano()))
	}
	s.m.board.Record(first[1].spec.Record).Store(shm.Heartbeat, uint64(now.Add(-11*time.Second).UnixNano()))
	s.m.handleEvent(event{kind: evHeartbeat})
	if first[0].got(unix.SIGKILL) || !first[1].got(unix.SIGKILL) {
		t.Fatalf("killed: slot 0 %v, slot 1 %v", first[0].signals(), first[1].signals())
	}
	s.until("slot 1 refilled", func() bool { return len(s.procs()) == 3 })
}

// An upgrade whose new master is not ready in time is stopped, and the pid
// file names this master again.
func TestSupervisorUpgradeTimeout(t *testing.T) {
	dir := t.TempDir()
	pidFile := filepath.Join(dir, "herd.pid")
	s := newSup(t, func(c *Config) { c.Path, c.Args, c.PIDFile = "/bin/sleep", []string{"30"}, pidFile }, nil)
	s.allReady()
	s.signal(unix.SIGUSR2)
	if s.m.upgrade == nil {
		t.Fatalf("no upgrade started:\n%s", s.logText())
	}
	newMaster := s.m.upgrade.cmd.Process
	if _, err := os.Stat(pidFile + ".oldbin"); err != nil {
		t.Errorf("pid file not moved aside: %v", err)
	}
	s.clock.advance(s.m.cfg.ReadyTimeout + time.Second)
	s.until("upgrade given up", func() bool { return s.m.upgrade == nil })
	if pid, err := ReadPIDFile(pidFile); err != nil || pid != os.Getpid() {
		t.Errorf("pid file: %d %v, want %d", pid, err, os.Getpid())
	}
	if !strings.Contains(s.logText(), "upgrade failed; this master keeps serving") {
		t.Errorf("not logged:\n%s", s.logText())
	}
	deadline := time.Now().Add(3 * time.Second)
	for newMaster.Signal(unix.Signal(0)) == nil && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if newMaster.Signal(unix.Signal(0)) == nil {
		t.Error("the new master still runs")
	}
}

// A USR2 that comes while a reload is under way is not lost either: the
// upgrade starts once the reload has ended. Before, it was ignored with a
// warning, and the old binary served on.
func TestSupervisorUpgradeAfterReload(t *testing.T) {
	pidFile := filepath.Join(t.TempDir(), "herd.pid")
	s := newSup(t, func(c *Config) { c.Path, c.Args, c.PIDFile = "/bin/sleep", []string{"30"}, pidFile }, nil)
	s.allReady()
	s.signal(unix.SIGHUP)
	s.signal(unix.SIGUSR2)
	if s.m.upgrade != nil {
		t.Fatal("an upgrade started during the reload")
	}
	for _, p := range s.gen(2) {
		p.ready()
	}
	s.until("the upgrade", func() bool { return s.m.upgrade != nil })
	newMaster := s.m.upgrade.cmd.Process
	t.Cleanup(func() { newMaster.Kill() })
	if s.m.gen != 2 {
		t.Errorf("generation %d; the reload should have ended first", s.m.gen)
	}
}

// procFor finds the master's proc of a fake.
func (m *Master) procFor(f *fakeProc) *proc {
	for p := range m.procs {
		if p.process == process(f) {
			return p
		}
	}
	return nil
}

// With a shutdown delay, a graceful stop is first a lame duck: readiness
// goes at once, the workers serve on, and only after the delay are they
// told to drain. A second TERM does not wait.
func TestSupervisorLameDuck(t *testing.T) {
	for _, second := range []bool{false, true} {
		s := newSup(t, func(c *Config) { c.ShutdownDelay = 5 * time.Second }, nil)
		s.allReady()
		s.signal(unix.SIGTERM)
		if s.m.allSlotsReady() || s.m.readyNow.Load() {
			t.Error("still ready after TERM")
		}
		for _, p := range s.procs() {
			if len(p.signals()) != 0 {
				t.Fatalf("a worker was signalled during the delay: %v", p.signals())
			}
		}
		if second {
			s.signal(unix.SIGTERM)
			for _, p := range s.procs() {
				if !p.got(unix.SIGINT) {
					t.Errorf("second TERM: worker sent %v, want INT at once", p.signals())
				}
			}
			continue
		}
		s.clock.advance(5*time.Second - time.Millisecond)
		s.quiet()
		if p := s.procs()[0]; len(p.signals()) != 0 {
			t.Fatalf("drained before the delay: %v", p.signals())
		}
		s.clock.advance(time.Millisecond)
		s.until("drain after the delay", func() bool { return s.procs()[0].got(unix.SIGQUIT) })
	}
}
