// Package master is the supervising process: it owns the listening sockets
// and the scoreboard, spawns workers by executing its own binary again,
// keeps the wanted number of them alive, and turns signals into reloads and
// stops with the meaning nginx and gunicorn users know:
//
//	TERM, INT  fast stop: workers exit at once
//	QUIT       graceful stop: workers stop accepting, finish what they have, exit
//	HUP        reload: a new generation of workers starts; once every one of
//	           them has said it is ready, the old generation stops gracefully
//	TTIN/TTOU  one worker more / fewer
//
// The sockets outlive every worker, so a connection queued in the kernel
// while workers change hands is accepted by whichever worker comes next.
package master

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/coreos/go-systemd/v22/daemon"
	"github.com/herd-run/herd/internal/accept"
	"github.com/herd-run/herd/internal/admin"
	"github.com/herd-run/herd/internal/proto"
	"github.com/herd-run/herd/internal/shm"
	"github.com/herd-run/herd/internal/worker"
	"golang.org/x/sys/unix"
)

// Config is how the master runs.
type Config struct {
	Listen       []string      // addresses; see parseAddr
	Backlog      int           // listen(2) backlog; default 511, as nginx
	DeferAccept  time.Duration // TCP_DEFER_ACCEPT on the TCP sockets the master creates; 0: off
	Workers      int           // default: number of CPUs
	Strategy     string        // accept strategy; default accept.Default()
	Threads      int           // accepting threads per worker and listener; default 1
	DrainTimeout time.Duration // how long a stopping worker may finish requests; default 30s
	ReadyTimeout time.Duration // how long a new worker may take to report ready; default 30s
	StopTimeout  time.Duration // after a fast stop, how long before SIGKILL; default 5s
	PIDFile      string

	MultiAccept       bool          // epoll strategies: accept until EAGAIN per wakeup
	WorkerConnections int           // per worker; nginx's accept_disabled, fdpass's limit; default 1024
	MutexDelay        time.Duration // nginx: accept_mutex_delay; default 500ms
	ReorderEvery      int           // exclusive: re-add every N accepts; default 16, negative: never

	Admin     string // operator endpoint address (loopback or unix socket); "" for none
	AccessLog string // workers log requests here ("-": standard output); "" for none

	// StaticRoot, if set, is served by the native engine (internal/httpd)
	// instead of the program's handler.
	StaticRoot     string
	FollowSymlinks bool
	Autoindex      bool          // native engine: list directories without index.html
	HeaderTimeout  time.Duration // native engine: a request head must arrive within this; default 10s
	IdleTimeout    time.Duration // native engine: keep-alive idle limit; default 75s

	WorkerTimeout     time.Duration // kill a worker whose heartbeat is older; 0: never
	MaxRequests       int           // replace a worker after this many requests; 0: never
	MaxRequestsJitter int           // plus up to this many more, at random per worker

	// Path and Args are the command a worker runs: by default this very
	// executable with this process's arguments. Env is added to the
	// environment the master has.
	Path string
	Args []string
	Env  []string

	Log *slog.Logger
}

// maxWorkers bounds --workers and TTIN. The scoreboard has twice as many
// records, since during a reload two generations are alive.
const maxWorkers = 512

// Master is a running master process.
type Master struct {
	cfg     Config
	log     *slog.Logger
	sockets []*Socket
	region  *shm.Region
	board   *shm.Scoreboard

	half half // the strategy's part in the master (strategy.go)

	admin    net.Listener // --admin
	readyNow atomic.Bool  // every slot has a ready worker of the current generation

	upgrade    *upgradeState // USR2: the new master we started, until it is ready
	handedOver bool          // a new master serves our sockets now
	readyFD    *os.File      // we are the new master of an upgrade: say "ready" here

	signals chan os.Signal
	events  chan event
	ready   chan struct{}
	done    chan struct{} // closed when Run returns

	// Owned by the loop goroutine.
	procs    map[*proc]struct{}
	gen      int
	workers  int
	slots    map[int]*slotState
	reload   *reloadState
	stopping bool
	isReady  bool
	deadline *time.Timer
	closed   sync.Once
}

type proc struct {
	slot, gen, rec int
	cmd            *exec.Cmd
	ctrl           *os.File
	started        time.Time
	ready          bool
	stopping       bool
	retiring       bool // asked to be replaced (max requests): stops once its successor is ready
}

func (p *proc) pid() int { return p.cmd.Process.Pid }

type slotState struct {
	failures int       // consecutive early exits
	notAfter time.Time // earliest next spawn (backoff)
	timer    *time.Timer
}

type reloadState struct {
	gen, prevGen int
	waiting      map[*proc]struct{}
	timer        *time.Timer
}

type event struct {
	kind eventKind
	p    *proc
	err  error
}

type eventKind int

const (
	evExited eventKind = iota
	evReady
	evTick        // a backoff or timeout expired: re-examine state
	evReloadTimer // the reload's readiness deadline passed
	evDeadline    // the stop deadline passed: kill what is left
	evUpgradeReady
	evUpgradeFailed
	evRecycle   // a worker reached --max-requests
	evHeartbeat // time to look for stuck workers
)

// New checks the configuration and creates the sockets and the scoreboard.
// It starts no process: that is Run's job.
func New(cfg Config) (*Master, error) {
	if err := fill(&cfg); err != nil {
		return nil, err
	}
	m := &Master{
		cfg:     cfg,
		log:     cfg.Log,
		signals: make(chan os.Signal, 16),
		events:  make(chan event, 64),
		ready:   make(chan struct{}),
		done:    make(chan struct{}),
		procs:   map[*proc]struct{}{},
		slots:   map[int]*slotState{},
		gen:     1,
		workers: cfg.Workers,
	}
	if max := somaxconn(); max > 0 && cfg.Backlog > max {
		m.log.Warn("backlog exceeds net.core.somaxconn; the kernel caps it", "backlog", cfg.Backlog, "somaxconn", max)
	}
	if err := m.open(); err != nil {
		m.closeSockets()
		if m.admin != nil {
			m.admin.Close()
		}
		if m.region != nil {
			m.region.Close()
		}
		m.half.close()
		return nil, err
	}
	return m, nil
}

// open makes what the master holds for its whole life: the sockets (one set,
// or one per slot for reuseport), the scoreboard, the lock file for flock,
// and the pid file last.
func (m *Master) open() error {
	cfg := m.cfg
	m.half = newHalf(m, cfg.Strategy)
	in, err := inherited()
	if err != nil {
		return err
	}
	if in == nil && len(cfg.Listen) == 0 {
		// No address given: systemd socket activation.
		if cfg.Strategy == "reuseport" {
			return errors.New("reuseport makes its own sockets; it cannot use systemd's")
		}
		if m.sockets, err = activated(); err != nil {
			return err
		}
		for _, s := range m.sockets {
			m.cfg.Listen = append(m.cfg.Listen, s.Addr)
		}
		m.log.Info("using sockets from systemd", "listen", strings.Join(m.cfg.Listen, ","))
	} else if in != nil {
		if err := m.adopt(in); err != nil {
			return err
		}
	} else if err := m.half.listen(); err != nil {
		return err
	}
	region, err := shm.Create(shm.ScoreboardName, shm.Size(2*maxWorkers))
	if err != nil {
		return err
	}
	m.region = region
	m.board, _ = shm.NewScoreboard(region.Bytes(), 2*maxWorkers)
	if err := m.half.open(); err != nil {
		return err
	}
	if cfg.Admin != "" {
		if m.admin, err = listenAdmin(cfg.Admin); err != nil {
			return err
		}
	}
	if cfg.PIDFile != "" {
		if err := writePIDFile(cfg.PIDFile); err != nil {
			return err
		}
	}
	return nil
}

// listenConfig is how the master makes its sockets. A SO_REUSEPORT group's
// sockets get no TCP_DEFER_ACCEPT: when a slot's socket closes (TTOU, a
// stop), the kernel resets the connections still in its SYN queue, and a
// deferred connection waits there until its first bytes arrive — a window
// TestReuseportShrinkDropsNothing hit. With net.ipv4.tcp_migrate_req=1
// (off by default) the kernel moves them to another socket of the group
// instead, and the option is kept.
func (m *Master) listenConfig(reusePort bool) socketConfig {
	lc := socketConfig{Backlog: m.cfg.Backlog, ReusePort: reusePort, DeferAccept: m.cfg.DeferAccept}
	if reusePort && !migrateReq() {
		lc.DeferAccept = 0
	}
	return lc
}

// Check validates a configuration without starting or binding anything
// (herd serve --check): every mistake New would find before it listens.
func Check(cfg Config) error {
	if err := fill(&cfg); err != nil {
		return err
	}
	for _, a := range cfg.Listen {
		network, _, err := parseAddr(a)
		if err != nil {
			return err
		}
		if network == "unix" && cfg.Strategy == "reuseport" {
			return fmt.Errorf("listen %s: the reuseport strategy needs TCP addresses", a)
		}
	}
	if cfg.Admin != "" {
		network, a, err := parseAddr(cfg.Admin)
		if err != nil {
			return fmt.Errorf("admin: %w", err)
		}
		if host, _, _ := net.SplitHostPort(a); network == "tcp" && host != "localhost" {
			if ip := net.ParseIP(host); ip == nil || !ip.IsLoopback() {
				return fmt.Errorf("admin %s: must be a loopback address or a unix socket", cfg.Admin)
			}
		}
	}
	return nil
}

func fill(cfg *Config) error {
	if len(cfg.Listen) == 0 && os.Getenv("LISTEN_FDS") == "" && os.Getenv(proto.UpgradeEnv) == "" {
		return errors.New("no listen address (and no sockets from systemd)")
	}
	if cfg.Workers == 0 {
		cfg.Workers = runtime.NumCPU()
	}
	if cfg.Workers < 1 || cfg.Workers > maxWorkers {
		return fmt.Errorf("workers must be between 1 and %d, not %d", maxWorkers, cfg.Workers)
	}
	if cfg.Backlog == 0 {
		cfg.Backlog = 511
	}
	if cfg.Backlog < 1 {
		return fmt.Errorf("backlog must be positive, not %d", cfg.Backlog)
	}
	if cfg.Strategy == "" {
		cfg.Strategy = accept.Default()
	}
	if err := accept.Check(cfg.Strategy); err != nil {
		return err
	}
	if cfg.Threads == 0 {
		cfg.Threads = 1
	}
	if cfg.Threads < 1 || cfg.Threads > 1024 {
		return fmt.Errorf("threads must be between 1 and 1024, not %d", cfg.Threads)
	}
	for _, d := range []*time.Duration{&cfg.DrainTimeout, &cfg.ReadyTimeout} {
		if *d == 0 {
			*d = 30 * time.Second
		}
	}
	if cfg.StopTimeout == 0 {
		cfg.StopTimeout = 5 * time.Second
	}
	if cfg.WorkerConnections == 0 {
		cfg.WorkerConnections = 1024
	}
	if cfg.WorkerConnections < 1 {
		return fmt.Errorf("worker connections must be positive, not %d", cfg.WorkerConnections)
	}
	if cfg.MutexDelay == 0 {
		cfg.MutexDelay = 500 * time.Millisecond
	}
	switch {
	case cfg.ReorderEvery == 0:
		cfg.ReorderEvery = 16 // nginx 1.21.6
	case cfg.ReorderEvery < 0:
		cfg.ReorderEvery = 0
	}
	if cfg.DrainTimeout < 0 || cfg.ReadyTimeout < 0 || cfg.StopTimeout < 0 {
		return errors.New("timeouts must not be negative")
	}
	if cfg.Path == "" {
		exe, err := os.Executable()
		if err != nil {
			return fmt.Errorf("find own executable: %w", err)
		}
		cfg.Path = exe
		if cfg.Args == nil {
			cfg.Args = os.Args[1:]
		}
	}
	if cfg.Log == nil {
		cfg.Log = slog.Default()
	}
	return nil
}

// Addrs are the addresses the master listens on, with ports resolved.
func (m *Master) Addrs() []string {
	a := make([]string, len(m.sockets))
	for i, s := range m.sockets {
		a[i] = s.Addr
	}
	return a
}

// AdminAddr is the admin endpoint's address, or "".
func (m *Master) AdminAddr() string {
	if m.admin == nil {
		return ""
	}
	return m.admin.Addr().String()
}

// Ready is closed once the first generation of workers is all ready.
func (m *Master) Ready() <-chan struct{} { return m.ready }

// Signal delivers sig to the master as if it came from kill(1). The library
// uses it for Shutdown and Reload.
func (m *Master) Signal(sig os.Signal) { m.signals <- sig }

// post hands an event from another goroutine to the loop, or drops it once
// the loop has ended (a late timer has nobody to tell).
func (m *Master) post(ev event) {
	select {
	case m.events <- ev:
	case <-m.done:
	}
}

// Snapshot copies the scoreboard.
func (m *Master) Snapshot() shm.Snapshot { return m.board.Snapshot() }

// Run spawns the workers and supervises them until a stop signal has been
// handled and every worker has exited. It releases the sockets, the
// scoreboard and the pid file before returning.
func (m *Master) Run() error {
	signal.Notify(m.signals, unix.SIGHUP, unix.SIGQUIT, unix.SIGTERM, unix.SIGINT,
		unix.SIGTTIN, unix.SIGTTOU, unix.SIGUSR2)
	defer signal.Stop(m.signals)
	defer m.close()
	defer close(m.done)

	m.board.SetMaster(os.Getpid(), m.gen, m.workers)
	m.log.Info("herd master started", "pid", os.Getpid(), "listen", strings.Join(m.Addrs(), ","),
		"workers", m.workers, "strategy", m.cfg.Strategy)
	if err := m.half.run(); err != nil {
		return err
	}
	if m.cfg.WorkerTimeout > 0 {
		tick := time.NewTicker(min(m.cfg.WorkerTimeout/2, time.Second))
		defer tick.Stop()
		go func() {
			for {
				select {
				case <-tick.C:
					m.post(event{kind: evHeartbeat})
				case <-m.done:
					return
				}
			}
		}()
	}
	if m.admin != nil {
		srv := admin.Server(admin.Handler(adminSource{m}, m.cfg.Strategy))
		go srv.Serve(admin.LimitListener(m.admin))
		defer srv.Close()
		m.log.Info("admin endpoint", "listen", m.admin.Addr().String())
	}
	m.fillSlots()
	for !(m.stopping && len(m.procs) == 0) {
		select {
		case sig := <-m.signals:
			m.handleSignal(sig)
		case ev := <-m.events:
			m.handleEvent(ev)
		}
		if !m.stopping {
			m.fillSlots()
		}
		m.readyNow.Store(m.allSlotsReady())
	}
	m.log.Info("herd master stopped")
	return nil
}

func (m *Master) handleSignal(sig os.Signal) {
	switch sig {
	case unix.SIGTERM, unix.SIGINT:
		m.stop(false, sig)
	case unix.SIGQUIT:
		m.stop(true, sig)
	case unix.SIGHUP:
		m.startReload()
	case unix.SIGTTIN:
		if m.stopping || m.workers >= maxWorkers {
			return
		}
		m.workers++
		m.board.SetMaster(os.Getpid(), m.gen, m.workers)
		m.log.Info("TTIN: one worker more", "workers", m.workers)
		m.half.resized()
	case unix.SIGTTOU:
		if m.stopping || m.workers <= 1 {
			return
		}
		m.workers--
		m.board.SetMaster(os.Getpid(), m.gen, m.workers)
		m.log.Info("TTOU: one worker fewer", "workers", m.workers)
		m.half.resized()
		for p := range m.procs {
			if p.slot >= m.workers {
				m.stopProc(p, unix.SIGQUIT)
				m.unwait(p)
			}
		}
	case unix.SIGUSR2:
		m.startUpgrade()
	}
}

func (m *Master) handleEvent(ev event) {
	switch ev.kind {
	case evReady:
		if _, live := m.procs[ev.p]; !live {
			return
		}
		ev.p.ready = true
		m.board.Record(ev.p.rec).Store(shm.State, shm.StateReady)
		if !ev.p.stopping {
			m.half.ready(ev.p)
		}
		m.log.Debug("worker ready", "slot", ev.p.slot, "gen", ev.p.gen, "pid", ev.p.pid())
		m.unwait(ev.p)
		m.retireReplaced(ev.p)
		m.checkReady()
	case evExited:
		m.reap(ev.p, ev.err)
	case evReloadTimer:
		if m.reload != nil {
			m.failReload(fmt.Sprintf("new workers not ready within %v", m.cfg.ReadyTimeout))
		}
	case evDeadline:
		for p := range m.procs {
			m.log.Warn("worker did not stop in time; killing", "slot", p.slot, "pid", p.pid())
			p.cmd.Process.Signal(unix.SIGKILL)
		}
	case evRecycle:
		if _, live := m.procs[ev.p]; live && !ev.p.stopping && !ev.p.retiring && ev.p.gen == m.gen {
			ev.p.retiring = true // fillSlots starts its successor
			m.log.Info("worker reached max requests; replacing it", "slot", ev.p.slot, "pid", ev.p.pid())
		}
	case evHeartbeat:
		m.checkHeartbeats()
	case evUpgradeReady:
		if m.upgrade != nil {
			m.upgradeDone()
		}
	case evUpgradeFailed:
		m.upgradeFailed(ev.err)
	case evTick:
	}
}

// retireReplaced stops, gracefully, the retiring workers of the slot whose
// successor q has just become ready.
func (m *Master) retireReplaced(q *proc) {
	for p := range m.procs {
		if p != q && p.retiring && p.slot == q.slot && p.gen == q.gen {
			m.stopProc(p, unix.SIGQUIT)
		}
	}
}

// checkHeartbeats kills workers whose heartbeat is older than
// --worker-timeout: a frozen process (stopped, deadlocked runtime, swapped
// out) that still holds its share of connections. gunicorn and unicorn do
// the same with their worker timeouts. The slot is then refilled as after
// any death. A worker's goroutines beat independently of its handlers, so
// one slow request does not count as stuck; a whole process that does not
// run does.
func (m *Master) checkHeartbeats() {
	now := time.Now().UnixNano()
	limit := m.cfg.WorkerTimeout.Nanoseconds()
	for p := range m.procs {
		r := m.board.Record(p.rec)
		if !p.ready || r == nil {
			continue
		}
		beat := int64(r.Load(shm.Heartbeat))
		if beat > 0 && now-beat > limit {
			m.log.Error("worker stopped responding; killing it", "slot", p.slot, "pid", p.pid(),
				"silent_for", time.Duration(now-beat).Truncate(time.Millisecond))
			p.cmd.Process.Signal(unix.SIGKILL)
		}
	}
}

// allSlotsReady: every slot has a ready, running worker of the current
// generation — false during a reload until the new generation is up.
func (m *Master) allSlotsReady() bool {
	if m.stopping {
		return false
	}
	ready := map[int]bool{}
	for p := range m.procs {
		if p.ready && !p.stopping && p.gen == m.gen {
			ready[p.slot] = true
		}
	}
	for slot := 0; slot < m.workers; slot++ {
		if !ready[slot] {
			return false
		}
	}
	return true
}

// adminSource is what the admin endpoint reads.
type adminSource struct{ m *Master }

func (a adminSource) Snapshot() shm.Snapshot { return a.m.board.Snapshot() }
func (a adminSource) Ready() bool            { return a.m.readyNow.Load() }

// listenAdmin opens the admin endpoint's socket: a loopback TCP address or
// a unix socket, never a public address.
func listenAdmin(addr string) (net.Listener, error) {
	network, a, err := parseAddr(addr)
	if err != nil {
		return nil, fmt.Errorf("admin: %w", err)
	}
	if network == "tcp" {
		host, _, _ := net.SplitHostPort(a)
		if ip := net.ParseIP(host); host != "localhost" && (ip == nil || !ip.IsLoopback()) {
			return nil, fmt.Errorf("admin %s: must be a loopback address or a unix socket", addr)
		}
	} else if err := removeStaleSocket(a); err != nil {
		return nil, fmt.Errorf("admin: %w", err)
	}
	l, err := net.Listen(network, a)
	if err != nil {
		return nil, fmt.Errorf("admin: %w", err)
	}
	return l, nil
}

// checkReady closes Ready once the current generation fills every slot.
func (m *Master) checkReady() {
	if m.isReady {
		return
	}
	n := 0
	for p := range m.procs {
		if p.ready && p.gen == m.gen {
			n++
		}
	}
	if n >= m.workers {
		m.isReady = true
		close(m.ready)
		m.log.Info("herd ready", "listen", strings.Join(m.Addrs(), ","), "workers", n)
		notify(daemon.SdNotifyReady)
		if m.readyFD != nil {
			// We are the new master of a binary upgrade: the old one may go.
			m.readyFD.Write(proto.Msg{Kind: proto.Ready}.Encode())
			m.readyFD.Close()
			m.readyFD = nil
		}
	}
}

// fillSlots starts a worker for every slot of the current generation that
// has none, unless the slot is backing off after early exits.
func (m *Master) fillSlots() {
	covered := map[int]bool{}
	for p := range m.procs {
		if p.gen == m.gen && !p.stopping && !p.retiring {
			covered[p.slot] = true
		}
	}
	now := time.Now()
	for slot := 0; slot < m.workers; slot++ {
		if covered[slot] {
			continue
		}
		ss := m.slot(slot)
		if wait := ss.notAfter.Sub(now); wait > 0 {
			if ss.timer == nil {
				ss.timer = time.AfterFunc(wait, func() { m.post(event{kind: evTick}) })
			}
			continue
		}
		ss.timer = nil
		p, err := m.spawn(slot, m.gen)
		if err != nil {
			m.log.Error("cannot start worker", "slot", slot, "err", err)
			m.backoff(slot)
			continue
		}
		if m.reload != nil && p.gen == m.reload.gen {
			m.reload.waiting[p] = struct{}{}
		}
	}
}

func (m *Master) slot(i int) *slotState {
	ss := m.slots[i]
	if ss == nil {
		ss = &slotState{}
		m.slots[i] = ss
	}
	return ss
}

// backoff delays the next start of a slot whose worker exited early: none
// for the first exit, then 100ms doubling to 10s. A crash loop is reported,
// not spun.
func (m *Master) backoff(slot int) {
	ss := m.slot(slot)
	ss.failures++
	if ss.failures < 2 {
		return
	}
	d := 100 * time.Millisecond << min(ss.failures-2, 7)
	d = min(d, 10*time.Second)
	ss.notAfter = time.Now().Add(d)
	if ss.failures >= 3 {
		m.log.Warn("worker crash loop", "slot", slot, "exits_in_a_row", ss.failures, "next_start_in", d)
	}
}

// healthyAfter is how long a worker must live for its exit not to count
// towards a crash loop.
const healthyAfter = 5 * time.Second

func (m *Master) spawn(slot, gen int) (*proc, error) {
	rec := m.board.Claim(slot, gen, time.Now().UnixNano())
	if rec < 0 {
		return nil, errors.New("scoreboard full")
	}
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		m.board.Release(rec)
		return nil, fmt.Errorf("control socket: %w", err)
	}
	unix.SetNonblock(fds[0], true) // the master's end goes to the netpoller
	ctrl := os.NewFile(uintptr(fds[0]), "worker-ctrl")
	child := os.NewFile(uintptr(fds[1]), "master-ctrl")
	defer child.Close()

	sockets, err := m.half.workerSockets(slot)
	if err != nil {
		ctrl.Close()
		m.board.Release(rec)
		return nil, err
	}
	names := make([]string, len(sockets))
	for i, s := range sockets {
		names[i] = s.Addr
	}
	socks, err := socketFiles(sockets)
	if err != nil {
		ctrl.Close()
		m.board.Release(rec)
		return nil, err
	}
	defer closeFiles(socks) // the worker has its own copies once started
	files := proto.WorkerFiles(child, m.region.File(), socks)
	engine := ""
	if m.cfg.StaticRoot != "" {
		engine = "native"
	}
	spec := worker.Spec{
		Engine: engine,
		Slot:   slot, Generation: gen, Record: rec, Listeners: names,
		Strategy: m.cfg.Strategy, Threads: m.cfg.Threads, DrainTimeout: m.cfg.DrainTimeout,
		MultiAccept: m.cfg.MultiAccept, WorkerConnections: m.cfg.WorkerConnections,
		MaxRequests: m.cfg.MaxRequests, MaxRequestsJitter: m.cfg.MaxRequestsJitter, AccessLog: m.cfg.AccessLog,
		StaticRoot: m.cfg.StaticRoot, FollowSymlinks: m.cfg.FollowSymlinks, Autoindex: m.cfg.Autoindex,
		HeaderTimeout: m.cfg.HeaderTimeout, IdleTimeout: m.cfg.IdleTimeout,
		MutexDelay: m.cfg.MutexDelay, ReorderEvery: m.cfg.ReorderEvery,
	}
	m.half.spec(&spec)
	cmd := exec.Command(m.cfg.Path, m.cfg.Args...)
	// Workers never talk to systemd: only the master is the service.
	cmd.Env = append(withoutKey(withoutKey(os.Environ(), proto.WorkerEnv), "NOTIFY_SOCKET"), m.cfg.Env...)
	cmd.Env = append(cmd.Env, spec.Env())
	cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
	cmd.ExtraFiles = files
	if err := cmd.Start(); err != nil {
		ctrl.Close()
		m.board.Release(rec)
		return nil, err
	}
	p := &proc{slot: slot, gen: gen, rec: rec, cmd: cmd, ctrl: ctrl, started: time.Now()}
	m.board.Record(rec).Store(shm.PID, uint64(p.pid()))
	m.procs[p] = struct{}{}
	go m.readControl(p)
	go func() { m.post(event{kind: evExited, p: p, err: cmd.Wait()}) }()
	return p, nil
}

// socketFiles wraps duplicates of sockets for a child's ExtraFiles (see
// Socket); closeFiles closes them once the child has started.
func socketFiles(sockets []*Socket) ([]*os.File, error) {
	files := make([]*os.File, 0, len(sockets))
	for _, s := range sockets {
		f, err := s.File()
		if err != nil {
			closeFiles(files)
			return nil, err
		}
		files = append(files, f)
	}
	return files, nil
}

func closeFiles(files []*os.File) {
	for _, f := range files {
		f.Close()
	}
}

// readControl handles the worker's messages: Ready, sent once the worker
// accepts connections, and Recycle become events for the loop; Ack
// (fdpass) goes straight to the dispatcher.
func (m *Master) readControl(p *proc) {
	buf := make([]byte, proto.MaxMsg)
	for {
		n, err := p.ctrl.Read(buf)
		if err != nil || n == 0 {
			return
		}
		msg, err := proto.Decode(buf[:n])
		switch {
		case err != nil:
			m.log.Warn("bad control message from a worker", "pid", p.pid(), "msg", string(buf[:n]))
		case msg.Kind == proto.Ready:
			m.post(event{kind: evReady, p: p})
		case msg.Kind == proto.Recycle:
			m.post(event{kind: evRecycle, p: p})
		case msg.Kind == proto.Ack:
			m.half.ack(p, msg.Seq)
		}
	}
}

func withoutKey(env []string, key string) []string {
	return slices.DeleteFunc(slices.Clone(env), func(kv string) bool {
		return strings.HasPrefix(kv, key+"=")
	})
}

// reap accounts for an exited worker.
func (m *Master) reap(p *proc, err error) {
	delete(m.procs, p)
	// The control socket stays open until the strategy's half is done
	// with the worker (fdpass takes back what it did not acknowledge).
	m.half.exited(p)
	p.ctrl.Close()
	m.board.Release(p.rec)
	attrs := []any{"slot", p.slot, "gen", p.gen, "pid", p.pid(), "status", exitStatus(err)}
	if p.stopping || m.stopping {
		m.log.Info("worker exited", attrs...)
	} else {
		m.log.Warn("worker died", attrs...)
	}
	if r := m.reload; r != nil {
		if _, ok := r.waiting[p]; ok {
			m.failReload(fmt.Sprintf("new worker exited before it was ready (%s)", exitStatus(err)))
			return
		}
	}
	if p.stopping || m.stopping || p.gen != m.gen || p.slot >= m.workers {
		return
	}
	m.board.CountRestart()
	if !p.ready || time.Since(p.started) < healthyAfter {
		m.backoff(p.slot)
	} else {
		m.slot(p.slot).failures = 0
	}
}

func exitStatus(err error) string {
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		// os/exec reports a syscall.WaitStatus, a type of its own: asking
		// for unix.WaitStatus never matched, and a killed worker was
		// logged as "exit -1".
		if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			return "killed by " + unix.SignalName(ws.Signal())
		}
		return fmt.Sprintf("exit %d", ee.ExitCode())
	}
	if err != nil {
		return err.Error()
	}
	return "exit 0"
}

// startReload begins a new generation. fillSlots starts its workers; the old
// generation keeps accepting until every new worker has reported ready.
func (m *Master) startReload() {
	if m.stopping {
		return
	}
	if m.reload != nil {
		m.log.Warn("HUP: a reload is already under way; ignored")
		return
	}
	r := &reloadState{gen: m.gen + 1, prevGen: m.gen, waiting: map[*proc]struct{}{}}
	r.timer = time.AfterFunc(m.cfg.ReadyTimeout, func() { m.post(event{kind: evReloadTimer}) })
	m.reload = r
	m.gen = r.gen
	m.board.SetMaster(os.Getpid(), m.gen, m.workers)
	m.log.Info("HUP: reloading", "gen", m.gen)
	notify(daemon.SdNotifyReloading)
	// A new generation starts with no crash history.
	for _, ss := range m.slots {
		ss.failures, ss.notAfter = 0, time.Time{}
	}
	m.fillSlots()
}

// unwait takes p off the list a reload is waiting for, and finishes the
// reload when the list is empty.
func (m *Master) unwait(p *proc) {
	r := m.reload
	if r == nil {
		return
	}
	if _, ok := r.waiting[p]; ok {
		delete(r.waiting, p)
		if len(r.waiting) == 0 {
			m.finishReload()
		}
	}
}

func (m *Master) finishReload() {
	r := m.reload
	r.timer.Stop()
	m.reload = nil
	for p := range m.procs {
		if p.gen < r.gen {
			m.stopProc(p, unix.SIGQUIT)
		}
	}
	m.board.CountReload()
	m.log.Info("reload done: old workers are draining", "gen", r.gen)
	notify(daemon.SdNotifyReady)
}

// failReload stops the new generation and keeps the old one serving.
func (m *Master) failReload(why string) {
	r := m.reload
	r.timer.Stop()
	m.reload = nil
	m.gen = r.prevGen
	m.board.SetMaster(os.Getpid(), m.gen, m.workers)
	for p := range m.procs {
		if p.gen == r.gen {
			m.stopProc(p, unix.SIGTERM)
		}
	}
	m.log.Error("reload failed; the old workers keep serving", "reason", why)
	notify(daemon.SdNotifyReady)
}

func (m *Master) stopProc(p *proc, sig unix.Signal) {
	if p.stopping && sig == unix.SIGQUIT {
		return
	}
	p.stopping = true
	if r := m.board.Record(p.rec); r != nil && sig == unix.SIGQUIT {
		r.Store(shm.State, shm.StateStopping)
	}
	m.half.stopWorker(p, sig)
}

// stop makes every worker stop: gracefully (QUIT: bounded by the drain
// timeout) or fast (TERM). Whatever is left when the bound passes is killed.
func (m *Master) stop(graceful bool, sig os.Signal) {
	if m.stopping && graceful {
		return // a fast stop is never downgraded; a second QUIT changes nothing
	}
	m.stopping = true
	if m.upgrade != nil {
		m.upgradeFailed(errors.New("this master was told to stop"))
	}
	if m.reload != nil {
		m.reload.timer.Stop()
		m.reload = nil
	}
	m.half.stopping(graceful)
	wsig, bound := unix.SIGTERM, m.cfg.StopTimeout
	if graceful {
		wsig, bound = unix.SIGQUIT, m.cfg.DrainTimeout+m.cfg.StopTimeout
	}
	m.log.Info("stopping", "signal", sig.String(), "graceful", graceful, "workers", len(m.procs))
	if !m.handedOver {
		notify(daemon.SdNotifyStopping)
	}
	for p := range m.procs {
		m.stopProc(p, wsig)
	}
	if m.deadline != nil {
		m.deadline.Stop()
	}
	m.deadline = time.AfterFunc(bound, func() { m.post(event{kind: evDeadline}) })
}

// close releases everything the master owns. Queued connections that no
// worker accepted are reset by the kernel here, and only here.
func (m *Master) close() {
	m.closed.Do(func() {
		if m.deadline != nil {
			m.deadline.Stop()
		}
		if m.handedOver {
			m.forgetSocketPaths() // the new master's now: keep the unix socket files
		}
		m.closeSockets()
		if m.admin != nil {
			m.admin.Close()
		}
		m.half.close()
		m.region.Close()
		if m.cfg.PIDFile != "" {
			removePIDFile(m.cfg.PIDFile)
			removePIDFile(m.cfg.PIDFile + ".oldbin")
		}
	})
}

func (m *Master) closeSockets() {
	for _, s := range m.sockets {
		s.Close()
	}
}

func (m *Master) forgetSocketPaths() {
	for _, s := range m.sockets {
		s.path = ""
	}
}

// Close releases the sockets and scoreboard of a master that was made by New
// but never Run.
func (m *Master) Close() { m.close() }
