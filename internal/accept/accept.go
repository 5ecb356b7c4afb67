//go:build linux

// Package accept holds herd's accept strategies: the ways a connection
// travels from the kernel's accept queue of a shared listening socket to
// exactly one worker process. Each strategy lives in one file named after
// it, so "where does a connection get accepted under strategy X" has a
// one-file answer:
//
//	go         netpoll.go    Go's netpoller on the inherited listener: the herd
//	accept     blocking.go   threads blocked in accept4(2), kernel wake-one
//	flock      flock.go      accept serialised by flock(2) (serial.go)
//	mutex      mutex.go      accept serialised by a futex in shared memory (serial.go)
//	epoll      epoll.go      each worker's own level-triggered epoll: the herd
//	exclusive  exclusive.go  the same with EPOLLEXCLUSIVE, re-added every 16 accepts
//	nginx      nginx.go      nginx's accept_mutex: trylock, the holder polls the listener
//	reuseport  reuseport.go  one SO_REUSEPORT socket per worker slot, held by the master
//	fdpass     fdpass.go     the master accepts and passes descriptors (SCM_RIGHTS)
//
// Every strategy counts what it does in the worker's scoreboard record:
// wakeups (returns from the call that waits for a connection), accepts,
// spurious wakeups (woken, nothing to accept) and timeouts (returned because
// a bound expired). See docs/STRATEGIES.md.
package accept

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sort"
	"sync/atomic"
	"time"

	"github.com/herd-run/herd/internal/shm"
	"golang.org/x/sys/unix"
)

// A Strategy accepts connections for one worker process.
//
// Serve runs the strategy's accepting threads and passes every accepted
// connection's descriptor (blocking, close-on-exec) to deliver, which takes
// ownership of it: the engine decides how to serve it. It returns when Stop
// has been called and no more connections will be delivered, or with an
// error when the strategy cannot go on.
//
// Stop asks Serve to stop accepting and returns at once. A connection the
// kernel has queued but this worker has not yet accepted must stay queued
// for the other workers: a stopping strategy may finish an accept already
// under way (and deliver it), but never closes the shared listener.
type Strategy interface {
	Serve(deliver func(fd int)) error
	Stop()
}

// Besides Serve, the epoll-based strategies (epoll, exclusive, nginx) can
// run inside an event loop of the worker's own, as an nginx worker accepts
// where it serves: they have the methods of httpd.Inline (Attach, Ready,
// Detach), and nginx those of httpd.Cycler (Before, After), the interfaces
// their one consumer, the native engine, defines. Serve and the inline
// form are two ways to run the same strategy; a worker uses one.

// Listener is an inherited listening socket as a strategy sees it.
type Listener struct {
	FD   int    // descriptor number in this process
	Addr string // for logs
}

// Options are how a worker's strategy accepts, as the operator sets them.
// The master passes them to every worker as they are; only New reads
// them, through WithDefaults. As everywhere in herd, zero means the
// default and a negative value turns a setting off where that means
// anything (and is refused by Check where it does not).
type Options struct {
	Threads           int           `json:"threads,omitempty"`            // accepting threads per worker (per listener for accept, reuseport); default 1
	MultiAccept       bool          `json:"multi_accept,omitempty"`       // epoll, exclusive, nginx: accept until EAGAIN per wakeup
	WorkerConnections int           `json:"worker_connections,omitempty"` // nginx's accept_disabled budget, fdpass's limit; default 1024
	MutexDelay        time.Duration `json:"accept_mutex_delay,omitempty"` // nginx: accept_mutex_delay; default 500ms
	ReorderEvery      int           `json:"exclusive_reorder,omitempty"`  // exclusive: re-add the listener every N accepts; default 16 (nginx 1.21.6), negative: never
}

// WithDefaults fills what is zero with its default.
func (o Options) WithDefaults() Options {
	if o.Threads == 0 {
		o.Threads = 1
	}
	if o.WorkerConnections == 0 {
		o.WorkerConnections = 1024
	}
	if o.MutexDelay == 0 {
		o.MutexDelay = 500 * time.Millisecond
	}
	if o.ReorderEvery == 0 {
		o.ReorderEvery = 16
	}
	return o
}

// Check refuses values that cannot mean anything.
func (o Options) Check() error {
	switch {
	case o.Threads < 0 || o.Threads > 1024:
		return fmt.Errorf("threads must be between 1 and 1024, not %d", o.Threads)
	case o.WorkerConnections < 0:
		return fmt.Errorf("worker connections must be positive, not %d", o.WorkerConnections)
	case o.MutexDelay < 0:
		return fmt.Errorf("accept mutex delay must not be negative, not %v", o.MutexDelay)
	}
	return nil
}

// Config is what a worker gives its strategy: the operator's Options, and
// what the worker itself knows. The fields after Log matter only to the
// strategies that name them.
type Config struct {
	Options
	Listeners []Listener
	Stats     *shm.Record // this worker's scoreboard record
	Log       *slog.Logger

	PID      int        // this worker's pid: the accept mutex's owner word
	LockFile string     // flock: the file every accepting thread opens and locks
	Mutex    *shm.Mutex // mutex, nginx: the accept mutex in shared memory
	// Passes (fdpass) makes take be called, on the thread that receives
	// them, with each descriptor the master sends, until stop is called;
	// stop returns once no call is under way.
	Passes func(take func(Passed)) (stop func())
	// Nonblock: accept4 with SOCK_NONBLOCK, for an engine that wants
	// non-blocking descriptors (saves it two fcntl calls per connection).
	Nonblock bool
	// Loop: the strategy will run inside the engine's event loop (see
	// httpd.Inline) if it can; reuseport then takes its loop form.
	Loop bool
	// HoldFor: for how long after its last connection a thread that waits
	// for connections (accept4, the accept lock) keeps its P, as the
	// engine's loop does in epoll_wait (held.Waits); 0: never. It holds only
	// where the process may (held.CanHold).
	HoldFor time.Duration
}

// acceptFlags are the flags every strategy's accept4 uses.
func (c *Config) acceptFlags() int {
	if c.Nonblock {
		return unix.SOCK_CLOEXEC | unix.SOCK_NONBLOCK
	}
	return unix.SOCK_CLOEXEC
}

type factory func(Config) (Strategy, error)

var strategies = map[string]factory{
	"go":        newNetpoll,
	"accept":    newBlocking,
	"flock":     newFlock,
	"mutex":     newMutex,
	"epoll":     newEpoll,
	"exclusive": newExclusive,
	"nginx":     newNginx,
	"reuseport": newReuseport,
	"fdpass":    newFdpass,
}

// Default is the strategy used when none is named: "exclusive" where the
// kernel has EPOLLEXCLUSIVE (Linux 4.5), else "accept". Exclusive runs
// inside the native engine's loop, shares connections evenly (listener
// re-adding) and loses no queued connection when a worker is killed —
// what nginx does by default on such kernels; accept, kernel wake-one on
// every Linux, is next best.
func Default() string {
	if ProbeExclusive() == nil {
		return "exclusive"
	}
	return "accept"
}

// ProbeExclusive reports whether the kernel honours EPOLLEXCLUSIVE. Kernels
// before 4.5 ignore the unknown flag on EPOLL_CTL_ADD, so adding proves
// nothing; 4.5 and later refuse it on EPOLL_CTL_MOD with EINVAL, and that
// refusal is the test.
func ProbeExclusive() error {
	ep, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return fmt.Errorf("epoll_create1: %w", err)
	}
	defer unix.Close(ep)
	efd, err := unix.Eventfd(0, unix.EFD_CLOEXEC)
	if err != nil {
		return fmt.Errorf("eventfd: %w", err)
	}
	defer unix.Close(efd)
	if err := unix.EpollCtl(ep, unix.EPOLL_CTL_ADD, efd, &unix.EpollEvent{Events: unix.EPOLLIN}); err != nil {
		return fmt.Errorf("epoll_ctl: %w", err)
	}
	err = unix.EpollCtl(ep, unix.EPOLL_CTL_MOD, efd, &unix.EpollEvent{Events: unix.EPOLLIN | unix.EPOLLEXCLUSIVE})
	if err != unix.EINVAL {
		return errors.New("EPOLLEXCLUSIVE not known to this kernel (Linux 4.5+)")
	}
	return nil
}

// Names lists the strategies this build implements, sorted.
func Names() []string {
	names := make([]string, 0, len(strategies))
	for n := range strategies {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

// Waiters reports how many threads of a worker the named strategy keeps
// waiting in a system call the Go scheduler knows of (accept4, flock, a
// futex, poll, epoll_wait), with n listeners, when it is not run inline in
// an engine's loop. A worker gives each of them a P of its own and keeps
// one more idle: the runtime's sysmon retakes the P of a thread that has
// been in a system call for 20µs unless some P is idle, and every retake
// makes sysmon wake every 20µs for the next millisecond or more — with
// `herd serve --workers 8 --strategy accept` under `wrk -t1 -c4 -H
// "Connection: close"`, nine nanosleeps of sysmon's per connection in a
// worker (strace -f) and 9.7 context switches per request in master and
// workers, against 2.9 with an idle P (GOMAXPROCS=3; /proc/PID/task/*/status).
func Waiters(name string, o Options, n int) int {
	o = o.WithDefaults()
	switch name {
	case "reuseport":
		if o.Threads == 1 {
			return 0 // in Go's netpoller (or the engine's loop)
		}
		return o.Threads * n
	case "accept":
		return o.Threads * n // one blocking accept4 per listener
	case "fdpass":
		return 1 // the control socket's reader, in recvmsg
	case "go":
		return 0 // goroutines parked in Go's netpoller
	}
	return o.Threads
}

// Check reports whether name is a strategy this build implements.
func Check(name string) error {
	if _, ok := strategies[name]; !ok {
		return fmt.Errorf("unknown accept strategy %q (have: %v)", name, Names())
	}
	return nil
}

// New makes the named strategy.
func New(name string, cfg Config) (Strategy, error) {
	if err := Check(name); err != nil {
		return nil, err
	}
	if len(cfg.Listeners) == 0 {
		return nil, errors.New("accept: no listeners")
	}
	if err := cfg.Options.Check(); err != nil {
		return nil, fmt.Errorf("accept: %w", err)
	}
	cfg.Options = cfg.Options.WithDefaults()
	if cfg.Log == nil {
		cfg.Log = slog.Default()
	}
	if cfg.PID == 0 {
		cfg.PID = os.Getpid()
	}
	return strategies[name](cfg)
}

// accepted counts a connection the moment accept4 has returned it: as
// accepted, and as active — the worker holds it from now on, even before
// the engine has it. (`herd bench --chaos` kills workers that show no
// active connection; the earlier the count, the smaller the window in which
// such a worker holds one anyway.) The engine counts it out when it closes.
func accepted(st *shm.Record, fd int, deliver func(fd int)) {
	st.Inc(shm.Accepts)
	st.Inc(shm.Active)
	deliver(fd)
}

// transient reports whether an accept4 error is about one connection or a
// signal, so the accepting thread simply goes round again.
func transient(err error) bool {
	switch err {
	case unix.EINTR, unix.ECONNABORTED, unix.EPROTO, unix.EPERM:
		return true
	}
	return false
}

// exhaustion throttles a thread that hit the descriptor limit (EMFILE,
// ENFILE, ENOBUFS, ENOMEM): spinning on accept4 would burn a core and make
// matters worse, so the thread sleeps and tries again, and the episode is
// logged once rather than per attempt. nginx does the same by disabling
// accept events for a while (ngx_event_accept.c, ngx_disable_accept_events).
type exhaustion struct {
	active atomic.Bool
}

const exhaustionPause = 100 * time.Millisecond

func (e *exhaustion) hit(err error, log *slog.Logger) bool {
	switch err {
	case unix.EMFILE, unix.ENFILE, unix.ENOBUFS, unix.ENOMEM:
	default:
		return false
	}
	if e.active.CompareAndSwap(false, true) {
		log.Warn("accept paused: out of resources", "err", err)
	}
	time.Sleep(exhaustionPause)
	return true
}

func (e *exhaustion) recovered(log *slog.Logger) {
	if e.active.Load() && e.active.CompareAndSwap(true, false) {
		log.Info("accept resumed")
	}
}
