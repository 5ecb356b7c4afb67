// Package worker is a worker process's life: it picks up what the master
// passed it (listening sockets, the scoreboard, a control socket), runs the
// accept strategy feeding the serving engine, reports readiness, and stops
// the way the master asks — gracefully on SIGQUIT, at once on SIGTERM, and
// at once when the master itself is gone.
package worker

import (
	"context"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/signal"
	"runtime"
	"strconv"
	"sync"
	"time"

	"github.com/herd-run/herd/internal/accept"
	"github.com/herd-run/herd/internal/httpd"
	"github.com/herd-run/herd/internal/proto"
	"github.com/herd-run/herd/internal/shm"
	"golang.org/x/sys/unix"
)

// Options are the parts of a worker that come from the program rather than
// from the master.
type Options struct {
	Handler http.Handler
	// Configure, if set, adjusts the http.Server before it serves
	// (timeouts, ErrorLog, ...). Handler and ConnState belong to herd.
	Configure func(*http.Server)
	Log       *slog.Logger
}

// Run is the whole life of a worker process and returns its exit code.
func Run(spec *Spec, opts Options) int {
	os.Unsetenv(proto.WorkerEnv) // a handler's child processes are not herd workers
	log := opts.Log
	if log == nil {
		log = slog.Default()
	}
	log = log.With("worker", spec.Slot, "gen", spec.Generation, "pid", os.Getpid())
	if err := run(spec, opts, log); err != nil {
		log.Error("worker failed", "err", err)
		return 1
	}
	return 0
}

func run(spec *Spec, opts Options, log *slog.Logger) error {
	// Signals first: a QUIT that arrives while we start must not kill us
	// with a goroutine dump (Go's default for SIGQUIT).
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, unix.SIGQUIT, unix.SIGTERM)
	// The master alone decides about reloads and worker counts; a terminal's
	// Ctrl-C reaches the whole process group, and the master turns it into
	// a stop for everyone.
	signal.Ignore(unix.SIGINT, unix.SIGHUP, unix.SIGTTIN, unix.SIGTTOU, unix.SIGUSR1, unix.SIGUSR2)

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

	ctrl := newControl(proto.CtrlFD)
	masterGone := make(chan struct{})
	go ctrl.read(masterGone)

	listeners := make([]accept.Listener, len(spec.Listeners))
	for i, a := range spec.Listeners {
		listeners[i] = accept.Listener{FD: proto.FirstListenerFD + i, Addr: a}
	}
	addr := listenerAddr(listeners[0].FD) // before a strategy may close the fd
	deferred := deferredAccept(listeners)
	strat, err := accept.New(spec.Strategy, accept.Config{
		Listeners: listeners, Threads: spec.Threads, Stats: st, Log: log,
		PID: os.Getpid(), MultiAccept: spec.MultiAccept, WorkerConnections: spec.WorkerConnections,
		LockFile: spec.LockFile, Mutex: board.AcceptMutex(), MutexDelay: spec.MutexDelay,
		ReorderEvery: spec.ReorderEvery, Passed: ctrl.passed, Nonblock: spec.Engine == "native",
	})
	if err != nil {
		return err
	}
	st.Store(shm.Heartbeat, uint64(time.Now().UnixNano()))
	if spec.Engine == "native" {
		// The engine's loop beats from here on (httpd's tick): a loop
		// stuck in a call stops the heartbeat, and the master replaces it.
		return runNative(spec, strat, deferred, st, ctrl, sigs, masterGone, log)
	}

	ln := newHandoff(addr)
	stopBeat := heartbeat(st, ln.serving())
	defer stopBeat()
	srv := &http.Server{ErrorLog: slog.NewLogLogger(log.Handler(), slog.LevelWarn)}
	if opts.Configure != nil {
		opts.Configure(srv)
	}
	handler := opts.Handler
	if spec.AccessLog != "" {
		alog, err := openAccessLog(spec.AccessLog)
		if err != nil {
			return err
		}
		defer alog.Close()
		handler = alog.wrap(handler)
	}
	srv.Handler = countRequests(handler, st, recycler(spec, ctrl))
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	accepting := make(chan error, 1)
	go func() {
		accepting <- strat.Serve(func(fd int) {
			c, err := fdConn(fd)
			if err != nil {
				st.Add(shm.Active, -1)
				log.Warn("wrap accepted connection", "err", err)
				return
			}
			ln.push(newCountedConn(c, st))
		})
	}()

	if graceful, err := serveUntilStop(spec, st, ctrl, sigs, masterGone, accepting, served, "http server", log); !graceful {
		return err
	}

	// Graceful stop: stop accepting, serve what was accepted, drain.
	st.Store(shm.State, shm.StateStopping)
	strat.Stop()
	ctrl.stopPassing()
	if err := <-accepting; err != nil {
		log.Warn("accept strategy stopped with error", "err", err)
	}
	ln.drain()
	<-served
	ctx, cancel := context.WithTimeout(context.Background(), spec.DrainTimeout)
	defer cancel()
	go func() {
		// A second TERM, or the master's death, cuts the drain short.
		select {
		case <-sigs:
		case <-masterGone:
		case <-ctx.Done():
		}
		cancel()
	}()
	if err := drainConns(ctx, srv, st); err != nil {
		log.Warn("drain cut short", "err", err, "active", st.Load(shm.Active))
		srv.Close()
	}
	return nil
}

// serveUntilStop reports the worker ready and waits for the reason to stop:
// graceful (QUIT) or not — a fast stop (TERM) or the master's death end
// the worker at once (nil error), a failed strategy or engine with an error.
func serveUntilStop(spec *Spec, st *shm.Record, ctrl *control, sigs <-chan os.Signal, masterGone <-chan struct{},
	accepting, served <-chan error, engine string, log *slog.Logger) (graceful bool, err error) {
	st.Store(shm.State, shm.StateReady)
	if err := ctrl.send(proto.Msg{Kind: proto.Ready}); err != nil {
		return false, fmt.Errorf("worker: tell master ready: %w", err)
	}
	log.Debug("worker ready", "strategy", spec.Strategy, "engine", engine)
	select {
	case sig := <-sigs:
		return sig != unix.SIGTERM, nil // TERM: the connections close with the process
	case <-masterGone:
		log.Warn("master is gone; exiting")
		return false, nil
	case err := <-accepting:
		return false, fmt.Errorf("accept strategy %s: %w", spec.Strategy, err)
	case err := <-served:
		return false, fmt.Errorf("%s: %w", engine, err)
	}
}

// runNative serves with the native engine: the strategy hands descriptors
// straight to the event loop; a graceful stop stops the strategy, then lets
// the loop answer what it has, closing keep-alive connections as they go
// idle, bounded by the drain timeout.
func runNative(spec *Spec, strat accept.Strategy, deferred bool, st *shm.Record, ctrl *control, sigs <-chan os.Signal,
	masterGone <-chan struct{}, log *slog.Logger) error {
	cfg := httpd.Config{
		Root: spec.StaticRoot, FollowSymlinks: spec.FollowSymlinks,
		WorkerConnections: spec.WorkerConnections, Stats: st, Log: log,
		HeaderTimeout: spec.HeaderTimeout, IdleTimeout: spec.IdleTimeout,
		Nonblocking: spec.Strategy != "fdpass", // fdpass descriptors come from the master as they are
		ReadFirst:   deferred,
		Autoindex:   spec.Autoindex,
		OnRequest:   recycler(spec, ctrl),
	}
	if spec.AccessLog != "" {
		alog, err := openAccessLog(spec.AccessLog)
		if err != nil {
			return err
		}
		defer alog.Close()
		cfg.AccessLog = alog
	}
	// The loop keeps its P while it sleeps in epoll_wait (see httpd's wait),
	// which leaves the worker's other goroutines — control socket, signals,
	// heartbeat, a blocking strategy's accept threads — without one on a
	// one-CPU machine. A second P costs nothing there.
	if n := runtime.GOMAXPROCS(0); n < 2 {
		runtime.GOMAXPROCS(2)
		log.Info("GOMAXPROCS raised to 2: the event loop holds one P while it waits", "was", n)
	}
	// With one accepting thread, an epoll-based strategy runs inside the
	// engine's own loop: the listener is in the loop's epoll set.
	inline, isInline := strat.(httpd.Inline)
	if isInline && spec.Threads <= 1 {
		cfg.Inline = inline
	}
	eng, err := httpd.New(cfg)
	if err != nil {
		return err
	}
	served := make(chan error, 1)
	go func() { served <- eng.Run() }()
	accepting := make(chan error, 1)
	if cfg.Inline == nil {
		go func() { accepting <- strat.Serve(eng.Add) }()
	}

	if graceful, err := serveUntilStop(spec, st, ctrl, sigs, masterGone, accepting, served, "native engine", log); !graceful {
		return err
	}
	st.Store(shm.State, shm.StateStopping)
	if cfg.Inline == nil {
		strat.Stop()
		if err := <-accepting; err != nil {
			log.Warn("accept strategy stopped with error", "err", err)
		}
	}
	ctrl.stopPassing()
	eng.Drain() // an inline strategy's listeners leave the loop first
	select {
	case <-eng.Done():
	case <-time.After(spec.DrainTimeout):
		log.Warn("drain cut short", "active", st.Load(shm.Active))
		eng.Close()
		<-eng.Done()
	case <-sigs:
		eng.Close()
		<-eng.Done()
	case <-masterGone:
	}
	return nil
}

// drainConns waits until every connection this worker accepted is closed.
//
// It does not use http.Server.Shutdown: Shutdown makes a connection that was
// accepted but whose request has not been read yet hang up without an
// answer (net/http's conn.serve returns when it finds the server shutting
// down), which is the very drop a reload must not cause. Instead keep-alive
// is turned off — idle connections are closed, and every request already
// accepted, or read from now on, is answered with "Connection: close" — and
// the worker waits for the connection count to reach zero.
func drainConns(ctx context.Context, srv *http.Server, st *shm.Record) error {
	srv.SetKeepAlivesEnabled(false)
	t := time.NewTicker(10 * time.Millisecond)
	defer t.Stop()
	for st.Load(shm.Active) > 0 {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
		}
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

func listenerAddr(fd int) net.Addr {
	sa, err := unix.Getsockname(fd)
	if err != nil {
		return &net.TCPAddr{}
	}
	switch a := sa.(type) {
	case *unix.SockaddrInet4:
		return &net.TCPAddr{IP: net.IP(a.Addr[:]), Port: a.Port}
	case *unix.SockaddrInet6:
		return &net.TCPAddr{IP: net.IP(a.Addr[:]), Port: a.Port, Zone: zoneName(a.ZoneId)}
	case *unix.SockaddrUnix:
		return &net.UnixAddr{Name: a.Name, Net: "unix"}
	}
	return &net.TCPAddr{}
}

func zoneName(id uint32) string {
	if id == 0 {
		return ""
	}
	if ifi, err := net.InterfaceByIndex(int(id)); err == nil {
		return ifi.Name
	}
	return strconv.Itoa(int(id))
}
