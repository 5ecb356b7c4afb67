//go:build linux

// Package master is the supervising process: it owns the listening sockets
// and the scoreboard, spawns workers by executing its own binary again,
// keeps the wanted number of them alive, and turns signals into reloads and
// stops with the meaning container, systemd and gunicorn users know:
//
//	TERM       graceful stop (what Kubernetes, Docker and systemd send): workers
//	           stop accepting, finish what they have within the drain timeout,
//	           exit; a second TERM makes it a fast stop
//	QUIT       graceful stop, as TERM (a second one changes nothing)
//	INT        fast stop: workers exit at once
//	HUP        reload: a new generation of workers starts; once every one of
//	           them has said it is ready, the old generation stops gracefully
//	USR1       reopen logs: workers reopen their access logs (logrotate)
//	USR2       binary upgrade (upgrade.go)
//	TTIN/TTOU  one worker more / fewer
//
// Workers take TERM and QUIT as a graceful stop and INT as a fast one, and
// the master sends them QUIT and INT: a TERM that reaches every process of
// the service at once (systemd's KillMode=control-group) drains them too.
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
	"os/signal"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/herd-run/herd/internal/admin"
	"github.com/herd-run/herd/internal/proto"
	"github.com/herd-run/herd/internal/shm"
	"golang.org/x/sys/unix"
)

// Master is a running master process.
type Master struct {
	cfg      Config
	strategy atomic.Value // cfg.Strategy, for Strategy from other goroutines: a reload changes cfg
	log      *slog.Logger
	sockets  []*Socket
	region   *shm.Region
	board    *shm.Scoreboard

	half half // the strategy's part in the master (strategy.go)

	admin     net.Listener // --admin
	adminPath string       // its unix socket file, if it is one

	tickets  ticketKeys      // TLS session ticket keys, newest first (tickets.go)
	live     live            // workers the admin endpoint may ask for metrics (metrics.go)
	creds    *Credentials    // who workers run as; nil: as the master
	sockOwn  socketOwnership // --socket-mode, --socket-owner
	readyNow atomic.Bool     // every slot has a ready worker of the current generation

	upgrade    *upgradeState // USR2: the new master we started, until it is ready
	handedOver bool          // a new master serves our sockets now
	readyFD    *os.File      // we are the new master of an upgrade: say "ready" here

	signals chan os.Signal
	events  chan event
	ready   chan struct{}
	done    chan struct{} // closed when Run returns

	start startFunc // how a worker is started: execStart, or a test's
	clock clock     // the supervisor's time: realClock, or a test's

	// Owned by the loop goroutine.
	procs         map[*proc]struct{}
	gen           int
	workers       int
	slots         map[int]*slotState
	reload        *reloadState
	reloadAgain   bool // a HUP came while reload was under way: another reload follows it
	upgradeAfter  bool // a USR2 came while reload was under way: the upgrade follows it
	stopping      bool
	fast          bool    // stopping, and not gracefully
	lameDuck      stopper // stopping, still serving for ShutdownDelay
	terms         int     // TERMs received
	failed        error   // workers could not start: Run returns it
	startReported bool    // a start-up failure was logged
	isReady       bool
	deadline      stopper
	closed        sync.Once
}

// proc is a worker the master started.
type proc struct {
	slot, gen, rec int
	process        process
	ctrl           *os.File
	started        time.Time
	ready          bool
	stopping       bool
	retiring       bool          // asked to be replaced (max requests): stops once its successor is ready
	failure        atomic.Value  // string: why it could not serve, as it told the master (proto.Failed)
	ctrlDone       chan struct{} // closed when its control socket has been read to the end
}

// why is what the worker said made it fail, or "".
func (p *proc) why() string {
	s, _ := p.failure.Load().(string)
	return s
}

func (p *proc) pid() int { return p.process.Pid() }

type slotState struct {
	failures int       // consecutive early exits
	notAfter time.Time // earliest next spawn (backoff)
	timer    stopper
}

type reloadState struct {
	gen, prevGen int
	prev         settings // what a failed reload puts back
	waiting      map[*proc]struct{}
	timer        stopper
}

type event struct {
	kind eventKind
	p    *proc
	err  error
	sig  os.Signal
}

type eventKind int

const (
	evExited eventKind = iota
	evReady
	evTick         // a backoff or timeout expired: re-examine state
	evReloadTimer  // the reload's readiness deadline passed
	evDeadline     // the stop deadline passed: kill what is left
	evLameDuckOver // ShutdownDelay passed: drain now
	evRotateTickets
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
		clock:   realClock{},
	}
	m.tickets = m.tickets.rotate()
	m.start = m.execStart
	var err error
	if m.creds, m.sockOwn, err = resolveIdentities(cfg); err != nil {
		return nil, err
	}
	if err := checkFiles(cfg, m.creds); err != nil {
		return nil, err
	}
	if err := prepareAccessLog(cfg.AccessLog, m.creds); err != nil {
		return nil, err
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
		if m.half != nil { // nil if open failed before the strategy was known
			m.half.close()
		}
		return nil, err
	}
	return m, nil
}

// upgradeStrategy is the strategy a master that inherits sockets in an
// upgrade serves with: its configured one, unless that was a default
// (StrategyFallback) and the old master's sockets were made for the other
// kind — one per reuseport slot, or one shared — which adopt refuses to
// mix: the new master then serves on as the old one did.
func upgradeStrategy(cfg Config, in *inheritance) string {
	if in == nil || cfg.StrategyFallback == "" || (in.Reuse != nil) == (cfg.Strategy == "reuseport") {
		return cfg.Strategy
	}
	if in.Reuse != nil {
		return "reuseport"
	}
	return cfg.StrategyFallback
}

// open makes what the master holds for its whole life: the sockets (one set,
// or one per slot for reuseport), the scoreboard, the lock file for flock,
// and the pid file last.
func (m *Master) open() error {
	in, err := inherited()
	if err != nil {
		return err
	}
	m.cfg.Strategy = upgradeStrategy(m.cfg, in)
	m.strategy.Store(m.cfg.Strategy)
	m.half = newHalf(m, m.cfg.Strategy)
	cfg := m.cfg
	if in == nil && len(cfg.addresses()) == 0 {
		// No address given: systemd socket activation.
		if cfg.Strategy == "reuseport" {
			return errors.New("reuseport makes its own sockets; it cannot use systemd's")
		}
		plain, secure, err := activated()
		if err != nil {
			return err
		}
		// Plain first, then TLS: a worker knows its TLS listeners by
		// position (Config.addresses).
		m.sockets = append(plain, secure...)
		for _, s := range plain {
			m.cfg.Listen = append(m.cfg.Listen, s.Addr)
		}
		for _, s := range secure {
			m.cfg.TLSListen = append(m.cfg.TLSListen, s.Addr)
		}
		if err := checkTLS(m.cfg); err != nil {
			return err // checked before open against no TLS listener at all
		}
		m.log.Info("using sockets from systemd", "listen", strings.Join(m.cfg.Listen, ","), "tls", strings.Join(m.cfg.TLSListen, ","))
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
	if err := m.openAdmin(in); err != nil {
		return err
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
	lc := socketConfig{Backlog: m.cfg.Backlog, ReusePort: reusePort, DeferAccept: m.cfg.DeferAccept, Own: m.sockOwn}
	if reusePort && !migrateReq() {
		lc.DeferAccept = 0
	}
	return lc
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

// Strategy is the accept strategy the workers use: the configured one, or
// its fallback (Config.StrategyFallback).
func (m *Master) Strategy() string {
	s, _ := m.strategy.Load().(string)
	return s
}

// Run spawns the workers and supervises them until a stop signal has been
// handled and every worker has exited. It releases the sockets, the
// scoreboard and the pid file before returning.
func (m *Master) Run() error {
	signal.Notify(m.signals, unix.SIGHUP, unix.SIGQUIT, unix.SIGTERM, unix.SIGINT,
		unix.SIGTTIN, unix.SIGTTOU, unix.SIGUSR1, unix.SIGUSR2)
	defer signal.Stop(m.signals)
	defer proto.SurviveBrokenPipes()()
	defer m.close()
	defer close(m.done)

	m.board.SetMaster(os.Getpid(), m.gen, m.workers)
	if m.creds == nil && os.Geteuid() == 0 {
		m.log.Warn("workers run as root: any file they can open is served; --user drops their privileges, as nginx's user directive")
	} else if m.creds != nil {
		m.log.Info("workers run as", "user", m.creds.Name, "uid", m.creds.UID, "gid", m.creds.GID)
	}
	m.log.Info("herd master started", "pid", os.Getpid(), "listen", strings.Join(m.Addrs(), ","),
		"workers", m.workers, "strategy", m.cfg.Strategy)
	if err := m.half.run(); err != nil {
		return err
	}
	m.every(ticketRotation, evRotateTickets)
	m.every(time.Second, evHeartbeat) // always: a reload may turn --worker-timeout on
	if m.admin != nil {
		endpoint := admin.Start(m.admin, admin.Handler(adminSource{m}))
		defer endpoint.Stop(time.Second)
		m.log.Info("admin endpoint", "listen", m.admin.Addr().String())
	}
	m.fillSlots()
	for !m.finished() {
		select {
		case sig := <-m.signals:
			m.handleSignal(sig)
		case ev := <-m.events:
			m.handleEvent(ev)
		}
		m.settle()
	}
	m.log.Info("herd master stopped")
	return m.failed
}

// every posts an event of kind to the loop every d, until Run returns.
func (m *Master) every(d time.Duration, kind eventKind) {
	tick := time.NewTicker(d)
	go func() {
		defer tick.Stop()
		for {
			select {
			case <-tick.C:
				m.post(event{kind: kind})
			case <-m.done:
				return
			}
		}
	}()
}

// finished: stopping, and every worker is gone.
func (m *Master) finished() bool { return m.stopping && len(m.procs) == 0 }

// settle follows every signal or event: empty slots get a worker, and
// /readyz its answer.
func (m *Master) settle() {
	if !m.stopping {
		m.fillSlots()
	}
	m.readyNow.Store(m.allSlotsReady())
}

func (m *Master) handleSignal(sig os.Signal) {
	switch sig {
	case unix.SIGTERM:
		// The first TERM is graceful, a second one fast. A QUIT (or the
		// library's Shutdown) before it does not count: a program that
		// calls Shutdown on the TERM herd also hears must not turn it fast.
		m.terms++
		m.stop(m.terms == 1, sig)
	case unix.SIGINT:
		m.stop(false, sig)
	case unix.SIGQUIT:
		m.stop(true, sig)
	case unix.SIGUSR1:
		// After logrotate has moved the log, workers running as --user may
		// not create a new one in a directory that is root's (/var/log/herd,
		// as nginx's): the master creates it and gives it to them first, as
		// nginx's master does.
		if err := prepareAccessLog(m.cfg.AccessLog, m.creds); err != nil {
			m.log.Error("USR1: cannot create the access log for the workers", "err", err)
		}
		m.log.Info("USR1: workers reopen their logs", "workers", len(m.procs))
		for p := range m.procs {
			p.process.Signal(unix.SIGUSR1)
		}
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
	case evRotateTickets:
		m.rotateTickets()
	case evLameDuckOver:
		if m.lameDuck != nil {
			m.stopWorkers(true, ev.sig)
		}
	case evDeadline:
		for p := range m.procs {
			m.log.Warn("worker did not stop in time; killing", "slot", p.slot, "pid", p.pid())
			p.process.Signal(unix.SIGKILL)
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
			if m.adminPath != "" && !m.handedOver {
				os.Remove(m.adminPath)
			}
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
