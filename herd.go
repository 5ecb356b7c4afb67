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
// changes nothing. While the master serves, and in workers, SIGPIPE is
// caught: a write to a standard output or error whose reader has gone fails
// with EPIPE instead of ending the process (Go's default), as nginx ignores
// it.
package herd

import (
	"crypto/tls"
	"log/slog"
	"net/http"
	"os"
	"time"

	"github.com/herd-run/herd/internal/proto"
	"github.com/herd-run/herd/internal/shm"
	"github.com/prometheus/client_golang/prometheus"
)

// Server is a prefork HTTP server. The zero value of every option but
// Handler (or Static) is usable: for every number and duration, zero means
// the default given with it, and a negative value turns the option off
// where that means anything (DeferAccept, WorkerTimeout, ExclusiveReorder)
// and is an error where it does not. herd serve's flags and configuration
// file follow the same rule.
type Server struct {
	// ---- What it serves ----
	//
	// Handler answers requests in the workers, through net/http.
	Handler http.Handler

	// ConfigureServer, if set, adjusts each worker's http.Server before it
	// serves: timeouts, limits, ErrorLog, ConnState, BaseContext (request
	// contexts still end only when the drain does), RegisterOnShutdown (its
	// functions run when the worker drains, once no accepted connection is
	// still to send its first request).
	ConfigureServer func(*http.Server)

	// Static, if set, serves the files under a directory with herd's native
	// engine — an epoll event loop per worker, sendfile, no net/http —
	// instead of Handler.
	Static *StaticFiles

	// ---- Where it listens (the master's sockets, kept across reloads and upgrades) ----
	//
	// Listen lists the addresses to listen on: "host:port" for TCP (an
	// empty host means all IPv4 addresses), "unix:PATH" or a path with a
	// slash for a unix socket. Port 0 picks a free port; Addrs tells which.
	// Default: the sockets systemd passes (socket activation), or ":8080".
	Listen []string

	// TLSListen lists the addresses served over TLS (HTTPS), beside the
	// plain ones in Listen: ":443" next to ":80". Connections on them are
	// served with crypto/tls in the workers — a Handler by net/http, Static
	// by the native engine — with HTTP/2 by ALPN, and session tickets that
	// resume on any worker. The certificate
	// comes from TLSCertFile and TLSKeyFile (PEM, re-read by every new
	// generation: HUP reloads it), from TLSConfig, or both.
	TLSListen               []string
	TLSCertFile, TLSKeyFile string
	TLSConfig               *tls.Config

	// RedirectHTTPS makes the plain listeners answer every request with a
	// permanent redirect to HTTPS on the first TLS listener's port.
	RedirectHTTPS bool

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

	// SocketMode and SocketOwner ("user", "user:group" or ":group") are
	// applied to the unix sockets the server creates; zero and "" leave
	// them as the umask and the master's identity make them.
	SocketMode  os.FileMode
	SocketOwner string

	// ---- The workers ----
	//
	// Workers is the number of worker processes; default the number of CPUs.
	Workers int

	// WorkerProcs is each worker's GOMAXPROCS. Default: what the worker
	// needs, not one P per CPU in each of N processes — one to run
	// goroutines, one more for each thread the strategy keeps waiting in a
	// system call plus one idle beside them, one more for the native
	// engine's loop. A Handler's worker with the default strategy gets 2:
	// net/http on one thread, and one P held in a wait so that the Go
	// runtime's sysmon never finds every P idle (bench/library.sh: 0.55
	// context switches per new connection, against 1.18 for one plain
	// net/http process). Set, it is used as it is, without that held P.
	// Negative: the runtime's default.
	WorkerProcs int

	// OnWorkerStart, if set, runs in each worker before it reports ready:
	// open a database pool once per worker, warm a cache. An error fails
	// that worker, and so the start (Start returns it) or the reload (the
	// running generation serves on). OnWorkerStop runs in each worker once
	// it has finished its connections, before it exits.
	OnWorkerStart func(WorkerInfo) error
	OnWorkerStop  func(WorkerInfo)

	// User and Group, if set, are who the workers run as (a name or a
	// number; Group defaults to User's groups). The master binds the
	// sockets as whoever starts it, and workers drop to these before they
	// serve, as nginx's "user" directive does. Unset, workers run as the
	// master, and a master running as root logs a warning.
	User, Group string

	// MaxRequests replaces a worker after it has answered this many
	// requests, plus up to MaxRequestsJitter more (random per worker). The
	// successor starts first; nothing is dropped. 0: never.
	MaxRequests       int
	MaxRequestsJitter int

	// WorkerTimeout kills and replaces a worker whose heartbeat (refreshed
	// every second by the worker process) is older than this: a frozen
	// process. Default 30s, as gunicorn; negative: never.
	WorkerTimeout time.Duration

	// ---- How a connection reaches one worker (docs/STRATEGIES.md) ----
	//
	// Strategy names how connections reach workers: see Strategies.
	// Default, for a Handler: "reuseport" — one SO_REUSEPORT socket per
	// worker, made by the master and kept across reloads, with Go's own
	// netpoller waiting on it — so that the kernel spreads connections
	// evenly over the workers and net/http takes each on the thread that
	// accepted it, a worker running on one thread (see WorkerProcs). With
	// a strategy whose workers share one socket through Go's netpoller
	// ("go"), whichever worker wakes first takes every connection queued:
	// wrk's 64 keep-alive connections all landed on one of two workers in
	// some runs, and that worker alone served them, at two thirds of the
	// rate (bench/library.sh and results/library-ab.txt measured both). Where reuseport cannot serve
	// — a unix socket address, sockets from systemd, an upgrade from a
	// binary that served "go" — the default is "go". Default for Static:
	// "exclusive" where the kernel has EPOLLEXCLUSIVE (Linux 4.5+), inside
	// the native engine's loop; else "accept".
	Strategy string

	// Threads is the number of accepting threads per worker (per listener
	// for the blocking strategies); default 1.
	Threads int

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

	// ---- Stopping and reloading ----
	//
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

	// Reconfigure, if set, is called in the master on HUP (and Reload) for
	// the options of the new generation: worker count, strategy and its
	// options, Static, AccessLog, User and Group, timeouts and limits.
	// Options that need new sockets (Listen, Backlog, DeferAccept, Admin,
	// SocketMode, SocketOwner, and a switch to or from a strategy with a
	// master half) keep their running values, and the log says USR2 is
	// needed. An error keeps the running generation. herd serve sets it to
	// read its flags, environment and configuration file again.
	Reconfigure func() (*Server, error)

	// ---- Watching it run ----
	//
	// PIDFile, if set, receives the master's pid.
	PIDFile string

	// AccessLog, if set, is a file the workers append one line per request
	// to, in the Common Log Format ("-": standard output).
	AccessLog string

	// Admin, if set, is a loopback address or unix socket where the master
	// serves /metrics (Prometheus), /status, /healthz and /readyz.
	Admin string

	// Metrics, if set, is the program's own Prometheus registry (say
	// prometheus.DefaultGatherer), one per worker process. On every scrape
	// of the admin endpoint's /metrics the master gathers it from each live
	// worker and labels each series with the worker's slot (herd_slot): a
	// handler's counter, N counters in N processes, is seen whole, and
	// sum by (...) adds the slots up, resets included.
	Metrics prometheus.Gatherer

	// Logger receives the master's and workers' events; default slog.Default().
	Logger *slog.Logger

	run *running // once started (herd_linux.go, herd_other.go)
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
	// Strategy is the accept strategy the workers use (Server.Strategy,
	// or the default it resolved to).
	Strategy string `json:"strategy"`
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

// WorkerInfo is a worker's identity (CurrentWorker).
type WorkerInfo struct {
	Slot       int // 0 to Workers-1; the worker that replaces another takes its slot
	Generation int // 1, then one more for every reload
	Workers    int // the number of slots when it was started
}
