// Package herd runs an http.Handler as a prefork server on Linux: one master
// process owns the listening sockets and keeps N worker processes serving
// them, reloading, resizing and stopping them on the signals nginx and
// gunicorn users know.
//
// Go cannot fork, so the workers are this same program executed again. The
// program's main builds a Server the same way in the master and in every
// worker and calls ListenAndServe (or Start); in a worker that call serves
// and then exits the process, so nothing after it runs there:
//
//	func main() {
//		srv := &herd.Server{Listen: []string{":8080"}, Handler: myHandler}
//		if err := srv.ListenAndServe(); err != nil {
//			log.Fatal(err)
//		}
//	}
//
// How a connection gets from the kernel to one worker is the Strategy; see
// docs/STRATEGIES.md for what each one does and costs.
//
// Signals to the master: TERM and QUIT stop gracefully (workers stop
// accepting and finish in-flight requests, bounded by DrainTimeout; a second
// TERM stops at once), INT stops at once, HUP starts a new generation of
// workers and retires the old one once the new one is ready, USR1 makes the
// workers reopen the access log, USR2 upgrades the binary, TTIN and TTOU add
// or remove a worker. A program that handles SIGTERM itself and calls
// Shutdown gets the same graceful stop: both ask for it, and asking twice
// changes nothing.
package herd

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"time"

	"github.com/herd-run/herd/internal/accept"
	"github.com/herd-run/herd/internal/httpd"
	"github.com/herd-run/herd/internal/master"
	"github.com/herd-run/herd/internal/proto"
	"github.com/herd-run/herd/internal/shm"
	"github.com/herd-run/herd/internal/worker"
	"golang.org/x/sys/unix"
)

// Server is a prefork HTTP server. The zero value of every option but
// Handler (or Static) is usable: for every number and duration, zero means
// the default given with it, and a negative value turns the option off
// where that means anything (DeferAccept, WorkerTimeout, ExclusiveReorder)
// and is an error where it does not. herd serve's flags and configuration
// file follow the same rule.
type Server struct {
	// Handler answers requests in the workers, through net/http.
	Handler http.Handler

	// Static, if set, serves the files under a directory with herd's native
	// engine — an epoll event loop per worker, sendfile, no net/http —
	// instead of Handler.
	Static *StaticFiles

	// Listen lists the addresses to listen on: "host:port" for TCP (an
	// empty host means all IPv4 addresses), "unix:PATH" or a path with a
	// slash for a unix socket. Port 0 picks a free port; Addrs tells which.
	// Default: the sockets systemd passes (socket activation), or ":8080".
	Listen []string

	// TLSListen lists the addresses served over TLS (HTTPS), beside the
	// plain ones in Listen: ":443" next to ":80". Connections on them are
	// served by crypto/tls and net/http in the workers, with HTTP/2 by
	// ALPN, and session tickets that resume on any worker. The certificate
	// comes from TLSCertFile and TLSKeyFile (PEM, re-read by every new
	// generation: HUP reloads it), from TLSConfig, or both.
	TLSListen               []string
	TLSCertFile, TLSKeyFile string
	TLSConfig               *tls.Config

	// Workers is the number of worker processes; default the number of CPUs.
	Workers int

	// Strategy names how connections reach workers: see Strategies. Default
	// "exclusive" where the kernel has EPOLLEXCLUSIVE (Linux 4.5+), else
	// "accept".
	Strategy string

	// Threads is the number of accepting threads per worker (per listener
	// for the blocking strategies); default 1.
	Threads int

	// Backlog is the listen(2) backlog; default 511. The kernel caps it at
	// net.core.somaxconn.
	Backlog int

	// DeferAccept sets TCP_DEFER_ACCEPT on the TCP sockets the server
	// creates: a connection is queued for accept only once its first bytes
	// have arrived, or after about this long anyway (whole seconds). HTTP
	// clients speak first, so workers are never woken for a connection they
	// can only wait on, and the native engine answers at once. Default 1s,
	// as nginx's "listen ... deferred"; negative: off. Sockets from systemd
	// keep their own setting (DeferAcceptSec=). Not set with the reuseport
	// strategy, whose per-worker sockets close when workers are removed:
	// the kernel resets connections still waiting for their first bytes in
	// a closing socket.
	DeferAccept time.Duration

	// DrainTimeout bounds how long a stopping worker may take to finish the
	// requests it has; default 30s.
	DrainTimeout time.Duration

	// ReadyTimeout bounds how long workers may take to report ready, at
	// start and on reload; default 30s.
	ReadyTimeout time.Duration

	// ShutdownDelay makes a graceful stop a lame duck first: the admin
	// endpoint's /readyz answers 503 at once, and the workers go on
	// serving this long — while a load balancer or Kubernetes takes the
	// server out of rotation — before they drain. Default 0: drain at once.
	ShutdownDelay time.Duration

	// PIDFile, if set, receives the master's pid.
	PIDFile string

	// AccessLog, if set, is a file the workers append one line per request
	// to, in the Common Log Format ("-": standard output).
	AccessLog string

	// User and Group, if set, are who the workers run as (a name or a
	// number; Group defaults to User's groups). The master binds the
	// sockets as whoever starts it, and workers drop to these before they
	// serve, as nginx's "user" directive does. Unset, workers run as the
	// master, and a master running as root logs a warning.
	User, Group string

	// SocketMode and SocketOwner ("user", "user:group" or ":group") are
	// applied to the unix sockets the server creates; zero and "" leave
	// them as the umask and the master's identity make them.
	SocketMode  os.FileMode
	SocketOwner string

	// Admin, if set, is a loopback address or unix socket where the master
	// serves /metrics (Prometheus), /status, /healthz and /readyz.
	Admin string

	// MultiAccept makes the epoll-based strategies (epoll, exclusive,
	// nginx) accept until EAGAIN on each wakeup instead of once.
	MultiAccept bool

	// WorkerConnections is each worker's connection budget: nginx's
	// accept_disabled rule and fdpass's limit use it. Default 1024.
	WorkerConnections int

	// AcceptMutexDelay is how long a worker that lost the accept mutex
	// waits before trying again (strategy nginx). Default 500ms.
	AcceptMutexDelay time.Duration

	// ExclusiveReorder re-adds the listener to a worker's epoll every N
	// accepts (strategy exclusive; nginx 1.21.6 uses 16). Default 16;
	// negative: never.
	ExclusiveReorder int

	// WorkerTimeout kills and replaces a worker whose heartbeat (refreshed
	// every second by the worker process) is older than this: a frozen
	// process. Default 30s, as gunicorn; negative: never.
	WorkerTimeout time.Duration

	// MaxRequests replaces a worker after it has answered this many
	// requests, plus up to MaxRequestsJitter more (random per worker). The
	// successor starts first; nothing is dropped. 0: never.
	MaxRequests       int
	MaxRequestsJitter int

	// ConfigureServer, if set, adjusts each worker's http.Server before it
	// serves: timeouts, limits, ErrorLog.
	ConfigureServer func(*http.Server)

	// Reconfigure, if set, is called in the master on HUP (and Reload) for
	// the options of the new generation: worker count, strategy and its
	// options, Static, AccessLog, User and Group, timeouts and limits.
	// Options that need new sockets (Listen, Backlog, DeferAccept, Admin,
	// SocketMode, SocketOwner, and a switch to or from a strategy with a
	// master half) keep their running values, and the log says USR2 is
	// needed. An error keeps the running generation. herd serve sets it to
	// read its flags, environment and configuration file again.
	Reconfigure func() (*Server, error)

	// Logger receives the master's and workers' events; default slog.Default().
	Logger *slog.Logger

	master *master.Master
	done   chan struct{}
	err    error
}

// StaticFiles configures the native engine.
type StaticFiles struct {
	Root           string        // the document root
	FollowSymlinks bool          // serve symlinks that lead outside Root
	Autoindex      bool          // list directories without index.html (off: 403, as nginx)
	HeaderTimeout  time.Duration // a request head must arrive whole within this (408); default 10s
	IdleTimeout    time.Duration // a keep-alive connection may wait this long for its next request; default 75s
}

// ListenAndServe starts the server and blocks until it has stopped. In a
// worker process it does not return.
func (s *Server) ListenAndServe() error {
	if err := s.Start(); err != nil {
		return err
	}
	return s.Wait()
}

// ListenAndServe runs handler prefork on addr with the default options.
func ListenAndServe(addr string, handler http.Handler) error {
	return (&Server{Listen: []string{addr}, Handler: handler}).ListenAndServe()
}

// IsWorker reports whether this process is a herd worker, for programs that
// want to skip master-only work (such as printing a banner) in workers.
func IsWorker() bool {
	_, ok := os.LookupEnv(proto.WorkerEnv)
	return ok
}

// Strategies lists the accept strategies this build has.
func Strategies() []string { return accept.Names() }

// Start makes the listening sockets and the workers, and returns once every
// worker has reported ready. It returns an error if a socket cannot be made
// (an address in use, say) or the workers are not ready within ReadyTimeout.
//
// In a worker process Start does not return: it serves until the master
// tells it to stop and then exits the process.
func (s *Server) Start() error {
	log := s.Logger
	if log == nil {
		log = slog.Default()
	}
	spec, err := worker.FromEnv()
	if err != nil {
		log.Error(err.Error())
		os.Exit(2)
	}
	if s.Handler == nil && s.Static == nil {
		err := errors.New("herd: Server.Handler is nil")
		if spec != nil { // the master reports it, once, and gives up
			worker.Fail(err, log)
			os.Exit(2)
		}
		return err
	}
	if spec != nil {
		os.Exit(worker.Run(spec, worker.Options{Handler: s.Handler, Configure: s.ConfigureServer, TLSConfig: s.TLSConfig, Log: log}))
	}

	m, err := master.New(s.masterConfig(log))
	if err != nil {
		return fmt.Errorf("herd: %w", err)
	}
	s.master = m
	s.done = make(chan struct{})
	go func() {
		s.err = m.Run()
		close(s.done)
	}()
	timeout := s.ReadyTimeout
	if timeout <= 0 {
		timeout = 30 * time.Second
	}
	select {
	case <-m.Ready():
		return nil
	case <-s.done:
		return fmt.Errorf("herd: stopped before the workers were ready: %w", s.err)
	case <-time.After(timeout):
		m.Signal(unix.SIGINT)
		<-s.done
		return fmt.Errorf("herd: workers not ready within %v", timeout)
	}
}

// Check validates the options without starting anything, as
// `herd serve --check` does.
func (s *Server) Check() error {
	if s.Handler == nil && s.Static == nil {
		return errors.New("herd: Server.Handler is nil")
	}
	if err := master.Check(s.masterConfig(slog.Default())); err != nil {
		return fmt.Errorf("herd: %w", err)
	}
	return nil
}

func (s *Server) masterConfig(log *slog.Logger) master.Config {
	listen := s.Listen
	if len(listen) == 0 && len(s.TLSListen) == 0 && os.Getenv("LISTEN_FDS") == "" {
		listen = []string{":8080"} // unless systemd passes sockets
	}
	tlsProgram := s.TLSConfig != nil && (len(s.TLSConfig.Certificates) > 0 || s.TLSConfig.GetCertificate != nil ||
		s.TLSConfig.GetConfigForClient != nil)
	cfg := master.Config{
		TLSListen: s.TLSListen, TLSCert: s.TLSCertFile, TLSKey: s.TLSKeyFile, TLSProgram: tlsProgram,
		Listen: listen, Backlog: s.Backlog, DeferAccept: s.DeferAccept, Workers: s.Workers, Strategy: s.Strategy,
		DrainTimeout: s.DrainTimeout, ReadyTimeout: s.ReadyTimeout, ShutdownDelay: s.ShutdownDelay, PIDFile: s.PIDFile, Admin: s.Admin,
		AccessLog: s.AccessLog, Log: log, WorkerTimeout: s.WorkerTimeout,
		User: s.User, Group: s.Group, SocketMode: s.SocketMode, SocketOwner: s.SocketOwner,
		MaxRequests: s.MaxRequests, MaxRequestsJitter: s.MaxRequestsJitter,
		Accept: accept.Options{Threads: s.Threads, MultiAccept: s.MultiAccept, WorkerConnections: s.WorkerConnections,
			MutexDelay: s.AcceptMutexDelay, ReorderEvery: s.ExclusiveReorder},
	}
	if st := s.Static; st != nil {
		cfg.StaticRoot = st.Root
		cfg.Static = httpd.Options{FollowSymlinks: st.FollowSymlinks, Autoindex: st.Autoindex,
			HeaderTimeout: st.HeaderTimeout, IdleTimeout: st.IdleTimeout}
	}
	if s.Reconfigure != nil {
		cfg.Reload = func() (master.Config, error) {
			next, err := s.Reconfigure()
			if err != nil {
				return master.Config{}, err
			}
			return next.masterConfig(log), nil
		}
	}
	return cfg
}

// Addrs returns the addresses the server listens on, with chosen ports
// filled in. It is empty before Start.
func (s *Server) Addrs() []string {
	if s.master == nil {
		return nil
	}
	return s.master.Addrs()
}

// AdminAddr is the address of the admin endpoint, or "" if there is none.
func (s *Server) AdminAddr() string {
	if s.master == nil {
		return ""
	}
	return s.master.AdminAddr()
}

// Wait blocks until the server has stopped — by a signal, Shutdown or Close.
func (s *Server) Wait() error {
	if s.done == nil {
		return errors.New("herd: server not started")
	}
	<-s.done
	return s.err
}

// Shutdown stops the server gracefully, as SIGQUIT does: workers stop
// accepting and finish their requests. If ctx ends first, the workers are
// stopped at once and ctx's error is returned.
func (s *Server) Shutdown(ctx context.Context) error {
	if s.master == nil {
		return errors.New("herd: server not started")
	}
	s.master.Signal(unix.SIGQUIT)
	select {
	case <-s.done:
		return s.err
	case <-ctx.Done():
		s.master.Signal(unix.SIGINT)
		<-s.done
		return ctx.Err()
	}
}

// Close stops the server at once, as SIGINT does.
func (s *Server) Close() error {
	if s.master == nil {
		return errors.New("herd: server not started")
	}
	s.master.Signal(unix.SIGINT)
	return s.Wait()
}

// Reload replaces every worker with a new one, as SIGHUP does.
func (s *Server) Reload() {
	if s.master != nil {
		s.master.Signal(unix.SIGHUP)
	}
}

// Stats is a copy of the scoreboard at one moment: the master's state, one
// entry per live worker, and totals that include workers that have exited
// (so counts survive reloads). It is what `herd status --json` and the
// admin endpoint's /status print.
type Stats struct {
	MasterPID  int    `json:"master_pid"`
	Generation int    `json:"generation"` // the current generation; a reload starts the next
	Workers    int    `json:"workers"`    // wanted, after TTIN/TTOU
	Reloads    uint64 `json:"reloads"`
	Restarts   uint64 `json:"restarts"` // workers replaced after dying
	// MutexHolder is the pid holding the accept mutex (strategies mutex
	// and nginx), or 0.
	MutexHolder int           `json:"accept_mutex_holder"`
	Live        []WorkerStats `json:"live"`
	Total       WorkerStats   `json:"total"`
}

// WorkerStats are one worker's counters. Wakeups counts returns from the
// call a worker sleeps in (accept, epoll_wait, a lock); Spurious those that
// brought no connection: the thundering herd, measured.
type WorkerStats struct {
	Record     int    `json:"record"` // the scoreboard record
	PID        int    `json:"pid"`
	Slot       int    `json:"slot"`
	Generation int    `json:"generation"`
	State      string `json:"state"`             // starting, ready, stopping
	Started    int64  `json:"started_unix_ns"`   // when the master started it
	Heartbeat  int64  `json:"heartbeat_unix_ns"` // last sign of life of its serving loop
	Accepts    uint64 `json:"accepts"`
	Wakeups    uint64 `json:"wakeups"`
	Spurious   uint64 `json:"spurious_wakeups"`
	Timeouts   uint64 `json:"timeouts"`
	Active     uint64 `json:"active"` // connections open now
	Requests   uint64 `json:"requests"`
	BytesOut   uint64 `json:"bytes_out"`
	// Statuses counts answers by status class, 1xx to 5xx. DurationSum
	// (nanoseconds) and DurationBuckets describe how long answers took, from
	// request to last byte: DurationBuckets[i] counts those within
	// DurationBounds[i] seconds and above the bound before (the rest took
	// longer than the last bound).
	Statuses        [5]uint64              `json:"statuses"`
	DurationSum     uint64                 `json:"duration_sum_ns"`
	DurationBuckets [shm.NumBuckets]uint64 `json:"duration_buckets"`
}

// DurationBounds are the upper bounds, in seconds, of WorkerStats's
// duration buckets (and of the admin endpoint's histogram).
var DurationBounds = shm.DurationBuckets

// Stats reads the scoreboard.
func (s *Server) Stats() Stats {
	if s.master == nil {
		return Stats{}
	}
	return statsOf(s.master.Snapshot())
}

func statsOf(snap shm.Snapshot) Stats {
	st := Stats{MasterPID: snap.MasterPID, Generation: snap.Generation, Workers: snap.Workers,
		Reloads: snap.Reloads, Restarts: snap.Restarts, MutexHolder: snap.MutexHolder,
		Total: WorkerStats(snap.Total)}
	for _, w := range snap.Live {
		st.Live = append(st.Live, WorkerStats(w))
	}
	return st
}
