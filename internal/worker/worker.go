//go:build linux

// Package worker is a worker process's life: it picks up what the master
// passed it (listening sockets, the scoreboard, a control socket), runs the
// accept strategy feeding the serving engine, reports readiness, and stops
// the way it is asked — gracefully on SIGQUIT or SIGTERM, at once on SIGINT,
// and at once when the master itself is gone.
package worker

import (
	"crypto/tls"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"strings"
	"sync"
	"time"

	"github.com/herd-run/herd/internal/accept"
	"github.com/herd-run/herd/internal/held"
	"github.com/herd-run/herd/internal/httpd"
	"github.com/herd-run/herd/internal/proto"
	"github.com/herd-run/herd/internal/shm"
	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sys/unix"
)

// Options are the parts of a worker that come from the program rather than
// from the master.
type Options struct {
	Handler http.Handler
	// Configure, if set, adjusts the http.Server before it serves
	// (timeouts, ErrorLog, ...). Handler and ConnState belong to herd.
	Configure func(*http.Server)
	// TLSConfig is the program's own, for TLS listeners (cloned; the
	// certificate files of the spec are added to it).
	TLSConfig *tls.Config
	// Metrics, if set, is the program's own registry: the master gathers it
	// on every scrape of its /metrics.
	Metrics prometheus.Gatherer
	// Start, if set, runs before the worker reports ready (an error fails
	// the worker); Stop after it has finished serving.
	Start func() error
	Stop  func()
	Log   *slog.Logger
}

// Run is the whole life of a worker process and returns its exit code.
func Run(spec *Spec, opts Options) int {
	os.Unsetenv(proto.WorkerEnv) // a handler's child processes are not herd workers
	takeMastersName(os.Args[0])
	log := opts.Log
	if log == nil {
		log = slog.Default()
	}
	log = log.With("worker", spec.Slot, "gen", spec.Generation, "pid", os.Getpid())
	if err := run(spec, opts, log); err != nil {
		Fail(err, log)
		return 1
	}
	return 0
}

// takeMastersName gives the worker the command name its master has, the
// base name of the path it was started as (argv0). The master runs workers
// through /proc/self/exe — its own binary, even once the file on disk is
// replaced — so the kernel names every worker "exe": top, ps -e and pgrep
// would not show them under the program's name, as they show nginx's or
// Apache's workers under theirs. Every thread is named, not only the main
// one (/proc/self/comm), or top -H and perf would still show the runtime's
// threads as "exe"; a thread started later takes the name of the thread
// that starts it. The kernel keeps 15 bytes.
func takeMastersName(argv0 string) {
	name := filepath.Base(argv0)
	if argv0 == "" || name == "exe" {
		return
	}
	named := map[string]bool{}
	for range 3 { // again while threads appear: one started meanwhile by a thread not yet named
		tasks, err := os.ReadDir("/proc/self/task")
		if err != nil {
			return // no /proc: the name is cosmetic
		}
		fresh := false
		for _, t := range tasks {
			if named[t.Name()] {
				continue
			}
			named[t.Name()], fresh = true, true
			if f, err := os.OpenFile("/proc/self/task/"+t.Name()+"/comm", os.O_WRONLY, 0); err == nil {
				f.WriteString(name)
				f.Close()
			}
		}
		if !fresh {
			return
		}
	}
}

// Fail tells the master why this worker cannot serve, before it exits.
// The master reports it (once, if workers cannot start at all); the worker
// logs it itself only if the master cannot hear it.
func Fail(err error, log *slog.Logger) {
	// The master's report starts with "herd:" already.
	msg := proto.Msg{Kind: proto.Failed, Text: strings.TrimPrefix(err.Error(), "herd: ")}.Encode()
	if _, werr := unix.Write(proto.CtrlFD, msg); werr != nil {
		log.Error("worker failed", "err", err)
	}
}

// An engine serves the connections a worker's strategy accepts: herd's
// native event loop (*httpd.Engine), or net/http with the program's
// handler (httpEngine). Both have one life: Run serves until drained or
// closed; Add hands it an accepted descriptor, from any goroutine; Drain
// makes it finish what it has and accept nothing more; Close ends it at
// once.
type engine interface {
	Run() error
	Add(fd int)
	Drain()
	Close()
}

// proc is a worker process's state while it serves.
type proc struct {
	spec       *Spec
	log        *slog.Logger
	st         *shm.Record
	ctrl       *control
	sigs       chan os.Signal
	masterGone chan struct{}
	alog       *accessLog // or nil
}

// signal waits for the next signal that stops the worker: graceful (QUIT,
// TERM) or not (INT). USR1 reopens the access log on the way.
func (w *proc) signal() (graceful bool) {
	for sig := range w.sigs {
		switch sig {
		case unix.SIGUSR1:
			w.reopenLog()
		case unix.SIGINT:
			return false
		default:
			return true
		}
	}
	return false
}

func (w *proc) reopenLog() {
	if w.alog == nil {
		return
	}
	if err := w.alog.reopen(); err != nil {
		w.log.Error("USR1: cannot reopen the access log; writing to the old one", "err", err)
		return
	}
	w.log.Debug("USR1: access log reopened")
}

// fastSignal is closed by the first INT, after a graceful stop began:
// further QUITs and TERMs change nothing (systemd's TERM and the master's
// QUIT both arrive), USR1 still reopens the log.
func (w *proc) fastSignal() <-chan struct{} {
	fast := make(chan struct{})
	go func() {
		for w.signal() { // QUIT and TERM again change nothing
		}
		close(fast)
	}()
	return fast
}

func run(spec *Spec, opts Options, log *slog.Logger) error {
	// Signals first: a QUIT that arrives while we start must not kill us
	// with a goroutine dump (Go's default for SIGQUIT).
	// TERM is graceful too: systemd (KillMode=control-group) and a shell's
	// kill of the process group send it to every process of the service at
	// once, and a worker must drain then, not drop what it serves. INT, a
	// terminal's Ctrl-C or the master's fast stop, ends it at once. USR1
	// reopens the access log.
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, unix.SIGQUIT, unix.SIGTERM, unix.SIGINT, unix.SIGUSR1)
	// The master alone decides about reloads and worker counts.
	signal.Ignore(unix.SIGHUP, unix.SIGTTIN, unix.SIGTTOU, unix.SIGUSR2)
	defer proto.SurviveBrokenPipes()()

	region, err := shm.Open(os.NewFile(proto.ShmFD, "scoreboard"), true)
	if err != nil {
		return err
	}
	board, err := shm.AttachScoreboard(region.Bytes())
	if err != nil {
		return err
	}
	st := board.Record(spec.Record)
	if st == nil {
		return fmt.Errorf("worker: scoreboard record %d out of range", spec.Record)
	}
	st.Store(shm.PID, uint64(os.Getpid()))

	w := &proc{spec: spec, log: log, st: st, ctrl: newControl(proto.CtrlFD), sigs: sigs, masterGone: make(chan struct{})}
	defer func() {
		if w.alog != nil {
			w.alog.Close()
		}
	}()
	w.ctrl.metrics = opts.Metrics
	go w.ctrl.read(w.masterGone)

	listeners := make([]accept.Listener, len(spec.Listeners))
	for i, a := range spec.Listeners {
		listeners[i] = accept.Listener{FD: proto.FirstListenerFD + i, Addr: a}
	}
	split := min(max(spec.TLSFrom, 0), len(listeners))
	plain, secure := listeners[:split], listeners[split:]
	var alog *accessLog
	if spec.AccessLog != "" {
		if alog, err = openAccessLog(spec.AccessLog, log); err != nil {
			return err
		}
		w.alog = alog
	}
	// Every engine wants its connections non-blocking: the native loop,
	// and net/http's, whose connections go to Go's netpoller (sockConn).
	// The TLS listeners' strategy has locks of its own (shm.TLSAcceptMutex).
	newStrategy := func(ls []accept.Listener, loop, secure bool) (accept.Strategy, error) {
		lockFile, mutex := spec.LockFile, board.AcceptMutex()
		if secure {
			mutex = board.TLSAcceptMutex()
			if lockFile != "" {
				lockFile += ".tls"
			}
		}
		return accept.New(spec.Strategy, accept.Config{
			Options: spec.Accept, Listeners: ls, Stats: st, Log: log, PID: os.Getpid(),
			LockFile: lockFile, Mutex: mutex, Passes: w.ctrl.passes, Nonblock: true,
			Loop: loop && spec.Accept.WithDefaults().Threads == 1,
			// Blocked accepting threads wait as the loop does (held.Waits:
			// held for a second after a connection came). setProcs sets
			// GOMAXPROCS later; held.Waits asks held.CanHold when it serves.
			HoldFor: held.IdleAfter,
		})
	}
	handler := func() http.Handler {
		return countRequests(opts.Handler, st, alog, recycler(spec, w.ctrl))
	}
	st.Store(shm.Heartbeat, uint64(time.Now().UnixNano()))
	var lanes []lane
	if len(plain) > 0 {
		strat, err := newStrategy(plain, spec.Engine == "native", false)
		if err != nil {
			return err
		}
		if spec.Engine == "native" {
			// The engine's loop beats from here on (httpd's tick): a loop
			// stuck in a call stops the heartbeat, and the master replaces it.
			eng, inline, err := w.nativeEngine(strat, deferredAccept(plain), alog, nil)
			if err != nil {
				return err
			}
			lanes = append(lanes, lane{name: "native engine", eng: eng, strat: strat, inline: inline, listeners: len(plain)})
		} else {
			h := handler()
			if spec.RedirectHTTPS != "" {
				h = countRequests(redirectHTTPS(spec.RedirectHTTPS), st, nil, nil)
			}
			eng := newHTTPEngine(httpd.LocalAddr(plain[0].FD), h, opts.Configure, st, log)
			lanes = append(lanes, lane{name: "http server", eng: eng, strat: strat, beat: eng.ln.serving(), listeners: len(plain)})
		}
	}
	if len(secure) > 0 {
		tlsCfg, err := w.tlsConfig(opts.TLSConfig)
		if err != nil {
			return err
		}
		var strat accept.Strategy
		if spec.Strategy == "fdpass" && len(lanes) > 0 {
			// One stream of descriptors from the master for every
			// listener: the plain lane's strategy takes them and sends
			// this lane its own (feedBySocket).
		} else if strat, err = newStrategy(secure, spec.Engine == "native", true); err != nil {
			return err
		}
		if spec.Engine == "native" {
			// HTTP/1.1 and HTTP/2 over TLS in a loop of its own (httpd/tls.go).
			eng, inline, err := w.nativeEngine(strat, false, alog, tlsCfg)
			if err != nil {
				return err
			}
			lanes = append(lanes, lane{name: "native tls engine", eng: eng, strat: strat, inline: inline, listeners: len(secure)})
		} else {
			eng := newHTTPEngine(httpd.LocalAddr(secure[0].FD), handler(), opts.Configure, st, log)
			eng.tls = tlsCfg
			lanes = append(lanes, lane{name: "tls server", eng: eng, strat: strat, beat: eng.ln.serving(), listeners: len(secure)})
		}
	}
	if len(lanes) == 2 && lanes[1].strat == nil {
		lanes[0].feed = feedBySocket(plain, secure, lanes[0].eng.Add, lanes[1].eng.Add)
	}
	if w.setProcs(lanes) {
		go anchor(nil, 50)
	}
	if pct, ok := gcPercent(os.Getenv("GOGC"), spec.Engine, len(secure) > 0); ok {
		debug.SetGCPercent(pct)
	}
	if lanes[0].beat != nil { // no native loop to beat
		stopBeat := heartbeat(st, lanes[0].beat)
		defer stopBeat()
	}
	if opts.Start != nil {
		if err := opts.Start(); err != nil {
			return fmt.Errorf("OnWorkerStart: %w", err)
		}
	}
	if opts.Stop != nil {
		defer opts.Stop()
	}
	return w.serve(lanes)
}

// A lane is one engine and the strategy that feeds it: a worker has one
// for its plain listeners and one for its TLS listeners.
type lane struct {
	name      string
	eng       engine
	strat     accept.Strategy
	inline    bool         // the strategy runs inside the engine's loop
	feed      func(fd int) // where the strategy's connections go, if not to eng.Add
	listeners int          // how many listeners the lane's strategy accepts on
	beat      func() bool  // the heartbeat's test, for an engine that does not beat itself
}

// nativeEngine makes the native engine. With one accepting thread, an
// epoll-based strategy runs inside the engine's own loop (inline): the
// listener is in the loop's epoll set.
//
// With secure set it serves TLS.
func (w *proc) nativeEngine(strat accept.Strategy, deferred bool, alog *accessLog, secure *tls.Config) (*httpd.Engine, bool, error) {
	spec := w.spec
	cfg := httpd.Config{
		Options: spec.Static, Root: spec.StaticRoot,
		WorkerConnections: spec.Accept.WithDefaults().WorkerConnections, Stats: w.st, Log: w.log,
		Nonblocking: true, // accepted with SOCK_NONBLOCK, here or by the master (fdpass)
		Passed:      spec.Strategy == "fdpass",
		ReadFirst:   deferred,
		OnRequest:   recycler(spec, w.ctrl),
		TLS:         secure,
	}
	if secure == nil {
		cfg.RedirectHTTPS = spec.RedirectHTTPS
	}
	if alog != nil {
		cfg.AccessLog = alog
	}
	inline, isInline := strat.(httpd.Inline)
	if isInline && spec.Accept.WithDefaults().Threads == 1 {
		cfg.Inline = inline
	}
	eng, err := httpd.New(cfg)
	return eng, cfg.Inline != nil, err
}

// setProcs sets the worker's GOMAXPROCS, unless the spec names one.
//
// A worker is one of N processes, usually one per CPU, so it needs Ps for
// its own threads only: every thread that waits in a system call for the
// strategy (accept.Waiters) needs one, and one more must then stay idle —
// Go's sysmon otherwise takes the P of every such call after 20µs and
// wakes every 20µs itself — besides the one that runs the goroutines. The
// native engine's loops (one per lane: plain, TLS) each hold a P while
// they wait (httpd's wait); the goroutines' P — TLS handshakes run there —
// serves as the idle one. A net/http worker with a strategy that waits in
// Go's netpoller (go) needs one P for its goroutines: net/http then runs
// on one thread, as a prefork worker is meant to. A net/http worker also
// gets a P held by anchor (anchor.go), so that sysmon never finds every P
// idle. It returns whether to start the anchor.
func (w *proc) setProcs(lanes []lane) (anchored bool) {
	spec := w.spec
	want := 1
	if spec.Procs != 0 {
		want = spec.Procs // negative: the runtime's own choice
	} else {
		waiters := 0
		for _, l := range lanes {
			if !l.inline && l.strat != nil {
				waiters += accept.Waiters(spec.Strategy, spec.Accept, l.listeners)
			}
		}
		want += waiters
		switch {
		case spec.Engine == "native":
			want += len(lanes) // each loop's held P; the goroutines' P is mostly idle (but for TLS handshakes)
		case waiters > 0:
			want++ // net/http keeps the goroutines' P busy: one idle beside it
		}
		if spec.Engine != "native" && held.CanHold(want+1) {
			want++ // the anchor's
			anchored = true
		}
	}
	if want > 0 {
		if n := runtime.GOMAXPROCS(want); n != want {
			w.log.Debug("GOMAXPROCS set", "was", n, "now", want)
		}
	}
	return anchored
}

// gcPercent is the GOGC a worker sets, if any: none when the environment
// names one (the operator's, or the program's), and 400 for a herd serve
// worker (the native engine) with TLS listeners. Its own heap is small —
// the engine allocates almost nothing — and its garbage is crypto/tls's,
// made at every handshake: collecting a fifth as often gave 7-15% more
// full handshakes per second (wrk -t1 -c8 "Connection: close" over HTTPS,
// 2 workers, GOGC=100 against 400 side by side, 3 rounds), for a heap of a
// few megabytes more per worker. A program's own workers keep the
// runtime's default: their heap is the program's.
func gcPercent(env, engine string, tls bool) (int, bool) {
	if env != "" || engine != "native" || !tls {
		return 0, false
	}
	return 400, true
}

// serve runs each lane's engine fed by its strategy (or accepting inline),
// reports the worker ready, and stops the way it is told: a graceful stop
// (QUIT, TERM) stops accepting — what is queued stays for the other
// workers — then lets the engines finish what they have, bounded by the
// drain timeout; a fast stop (INT) or the master's death end the worker at
// once; a failed strategy or engine ends it with an error.
func (w *proc) serve(lanes []lane) error {
	type failure struct {
		what string
		err  error
	}
	failed := make(chan failure, 2*len(lanes))
	done := make([]chan struct{}, len(lanes))
	accepting := make([]chan error, len(lanes))
	for i, l := range lanes {
		done[i] = make(chan struct{})
		go func() {
			err := l.eng.Run()
			if err != nil {
				failed <- failure{l.name, err}
			}
			close(done[i])
		}()
		accepting[i] = make(chan error, 1)
		if !l.inline && l.strat != nil {
			feed := l.feed
			if feed == nil {
				feed = l.eng.Add
			}
			go func() {
				err := l.strat.Serve(feed)
				accepting[i] <- err
				if err != nil {
					failed <- failure{"accept strategy " + w.spec.Strategy, err}
				}
			}()
		}
	}

	w.st.Store(shm.State, shm.StateReady)
	if err := w.ctrl.send(proto.Msg{Kind: proto.Ready}); err != nil {
		return fmt.Errorf("worker: tell master ready: %w", err)
	}
	w.log.Debug("worker ready", "strategy", w.spec.Strategy, "lanes", len(lanes))
	graceful := make(chan bool, 1)
	go func() { graceful <- w.signal() }()
	select {
	case g := <-graceful:
		if !g {
			return nil // the connections close with the process
		}
	case <-w.masterGone:
		w.log.Warn("master is gone; exiting")
		return nil
	case f := <-failed:
		return fmt.Errorf("%s: %w", f.what, f.err)
	}

	w.st.Store(shm.State, shm.StateStopping)
	for i, l := range lanes {
		if !l.inline && l.strat != nil {
			l.strat.Stop()
			if err := <-accepting[i]; err != nil {
				w.log.Warn("accept strategy stopped with error", "err", err)
			}
		}
	}
	for _, l := range lanes {
		l.eng.Drain() // an inline strategy's listeners leave the loop first
	}
	all := make(chan struct{})
	go func() {
		for _, d := range done {
			<-d
		}
		close(all)
	}()
	closeAll := func() {
		for _, l := range lanes {
			l.eng.Close()
		}
		<-all
	}
	select {
	case <-all:
	case <-time.After(w.spec.DrainTimeout):
		w.log.Warn("drain cut short", "active", w.st.Load(shm.Active))
		closeAll()
	case <-w.fastSignal(): // INT cuts the drain short
		closeAll()
	case <-w.masterGone:
	}
	return nil
}

// recycler returns what to call after each request: under --max-requests,
// once this worker has answered its quota (max plus a random jitter, so
// workers started together do not all recycle at once) it asks the master
// for a replacement, once. The master starts the new worker first and stops
// this one gracefully only when the new one is ready, so no request is
// dropped (gunicorn's max_requests, without its gap).
func recycler(spec *Spec, ctrl *control) func(n uint64) {
	if spec.MaxRequests <= 0 {
		return nil
	}
	limit := uint64(spec.MaxRequests)
	if spec.MaxRequestsJitter > 0 {
		limit += uint64(rand.IntN(spec.MaxRequestsJitter + 1))
	}
	var once sync.Once
	return func(n uint64) {
		if n >= limit {
			once.Do(func() { ctrl.send(proto.Msg{Kind: proto.Recycle}) })
		}
	}
}

// heartbeat refreshes the record's Heartbeat field every second, while
// alive says the worker serves, so the master (and `herd status`) can tell
// a stuck worker from a quiet one.
func heartbeat(st *shm.Record, alive func() bool) (stop func()) {
	t := time.NewTicker(time.Second)
	done := make(chan struct{})
	st.Store(shm.Heartbeat, uint64(time.Now().UnixNano()))
	go func() {
		for {
			select {
			case now := <-t.C:
				if alive() {
					st.Store(shm.Heartbeat, uint64(now.UnixNano()))
				}
			case <-done:
				t.Stop()
				return
			}
		}
	}()
	return func() { close(done) }
}

// listenerAddr reads a socket's local address without wrapping the
// descriptor in a net.Listener (which would register it with the netpoller).
// deferredAccept reports whether every listener is TCP with TCP_DEFER_ACCEPT
// set — by herd's master, systemd's DeferAcceptSec= or a previous master —
// so that accepted connections come with their first bytes.
func deferredAccept(listeners []accept.Listener) bool {
	for _, l := range listeners {
		v, err := unix.GetsockoptInt(l.FD, unix.IPPROTO_TCP, unix.TCP_DEFER_ACCEPT)
		if err != nil || v <= 0 {
			return false
		}
	}
	return len(listeners) > 0
}

// feedBySocket sends each connection the master passes (fdpass) to the
// lane of the listener it arrived on, told by its local address: the
// master accepts on every listener and sends one stream of descriptors.
// A listener on the exact address wins over one on the wildcard address
// of the same port; a connection that matches none goes to the plain lane.
func feedBySocket(plain, secure []accept.Listener, toPlain, toSecure func(fd int)) func(fd int) {
	type route struct {
		addr   net.Addr
		secure bool
	}
	var routes []route
	for _, l := range plain {
		routes = append(routes, route{httpd.LocalAddr(l.FD), false})
	}
	for _, l := range secure {
		routes = append(routes, route{httpd.LocalAddr(l.FD), true})
	}
	return func(fd int) {
		local := httpd.LocalAddr(fd)
		best, secureConn := 0, false
		for _, r := range routes {
			if m := addrMatch(r.addr, local); m > best {
				best, secureConn = m, r.secure
			}
		}
		if secureConn {
			toSecure(fd)
		} else {
			toPlain(fd)
		}
	}
}

// addrMatch scores how well a listener's address ln names a connection's
// local address: 2 exactly, 1 by port on a wildcard address, 0 not at all.
func addrMatch(ln, local net.Addr) int {
	switch l := ln.(type) {
	case *net.TCPAddr:
		c, ok := local.(*net.TCPAddr)
		switch {
		case !ok || c.Port != l.Port:
			return 0
		case l.IP.Equal(c.IP):
			return 2
		case l.IP.IsUnspecified():
			return 1
		}
	case *net.UnixAddr:
		if c, ok := local.(*net.UnixAddr); ok && c.Name == l.Name {
			return 2
		}
	}
	return 0
}
