//go:build linux

package httpd

import (
	"crypto/tls"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/herd-run/herd/internal/shm"
	"golang.org/x/sys/unix"
)

// The native engine: one event loop per worker on its own epoll instance,
// one goroutine that keeps its P while it has work (waiter), as an nginx
// worker runs — no goroutine per connection, no net/http. It serves the
// static files under a root over HTTP/1.1 and 1.0: keep-alive, pipelining,
// conditional and range requests, precompressed .gz siblings, bodies by
// sendfile(2) with the header sent MSG_MORE so both leave in the same
// segments (seed 001's TCP_CORK, without the two extra setsockopt calls).
//
// The engine is three files: this one, the loop (accepting, timers,
// draining); conn.go, one connection's reads, writes and close; and
// response.go, what is answered to a request.

// Options are how static files are served, as the operator sets them. The
// master passes them to every worker as they are; the engine (New) and the
// nethttp handler (Static, which uses FollowSymlinks and Autoindex) read
// them. Zero means the default.
type Options struct {
	// FollowSymlinks lets a symlink inside the root point outside it. Off,
	// any path that resolves outside the root — by "..", by an encoded
	// "%2e%2e", or through a symlink — is refused.
	FollowSymlinks bool `json:"follow_symlinks,omitempty"`
	// Autoindex lists a directory that has no index.html (nginx's
	// autoindex); off, such a directory is 403.
	Autoindex     bool          `json:"autoindex,omitempty"`
	HeaderTimeout time.Duration `json:"header_timeout,omitempty"`    // for a request head (and a GET's body) to arrive; default 10s (408)
	IdleTimeout   time.Duration `json:"keepalive_timeout,omitempty"` // keep-alive between requests; default 75s, nginx's keepalive_timeout
	SendTimeout   time.Duration `json:"send_timeout,omitempty"`      // for a stalled client to take more of a response; default 60s
}

func (o Options) withDefaults() Options {
	if o.HeaderTimeout <= 0 {
		o.HeaderTimeout = 10 * time.Second
	}
	if o.IdleTimeout <= 0 {
		o.IdleTimeout = 75 * time.Second
	}
	if o.SendTimeout <= 0 {
		o.SendTimeout = 60 * time.Second
	}
	return o
}

// Config is what an engine serves and how: the operator's Options and
// what the worker knows.
type Config struct {
	Options
	Root              string
	WorkerConnections int         // more connections than this are closed at once; default 1024
	Stats             *shm.Record // Requests, BytesOut, Active (the accept strategy counted it in)
	Log               *slog.Logger

	// AccessLog, if set, gets one Common Log Format line per answer, in
	// one Write each, from the thread that answered: the loop's, or an
	// accepting thread's front (front.go) — so Write must be safe for
	// concurrent use, as OnRequest must be.
	AccessLog io.Writer
	// RedirectHTTPS, if set (":443", ":8443"), answers every request with a
	// permanent redirect to the same host, path and query over HTTPS on
	// that port (the port is left out for 443).
	RedirectHTTPS string
	// OnRequest, if set, is called after every answer with the worker's
	// request count (the worker's --max-requests).
	OnRequest func(total uint64)

	// Inline, if set, is an accept strategy whose listeners this loop
	// watches and accepts from itself (no hand-off between threads).
	Inline Inline
	// Nonblocking: descriptors arrive non-blocking (accepted with
	// SOCK_NONBLOCK), so the loop need not set the flag.
	Nonblocking bool
	// Passed: descriptors come from another process that may still hold
	// a copy of each (fdpass: the master, until it sees one taken), so
	// closing one must shut the connection down.
	Passed bool
	// TLS, if set, makes every connection TLS (tls.go): handshakes on
	// goroutines of their own, then served by the loop over crypto/tls,
	// in HTTP/2 (h2.go) if NextProtos offers "h2" and the client takes it.
	TLS *tls.Config

	// ReadFirst: connections arrive with their first bytes already
	// received (the listeners have TCP_DEFER_ACCEPT), so the loop reads and
	// answers at once and registers a connection with epoll only if it is
	// still open afterwards. A client that sends one request and takes the
	// answer with "Connection: close" then costs accept4, read, send and
	// close, and no epoll_ctl or second epoll_wait.
	ReadFirst bool
}

// Inline is an accept strategy whose wait is an epoll_wait on the listeners
// (internal/accept's epoll, exclusive and nginx): the engine puts the
// listeners in its own epoll set and accepts where it serves — no thread
// hop per connection.
type Inline interface {
	// Attach adds the listeners to the epoll instance ep, reporting
	// listener i with the event token base+i.
	Attach(ep int, base int32) error
	// Ready accepts from listener i, which ep reported readable (once, or
	// until EAGAIN with multi-accept), and hands what it took to deliver.
	Ready(ep int, i int, deliver func(fd int)) error
	// Detach takes the listeners out of ep: the worker stops accepting;
	// what is queued stays for the others. A listener whose queue is this
	// worker's alone (reuseport) is emptied into deliver first, unless
	// deliver is nil (the worker closes at once).
	Detach(ep int, deliver func(fd int))
}

// Cycler is an Inline strategy that acts around each wait of the loop
// (nginx's accept mutex). Each round: Before, with the loop's own timeout,
// returns the one to wait with; the loop waits, calls Ready for the
// listeners reported, then After with the number of events — before it
// serves anything else, connections just accepted included.
type Cycler interface {
	Inline
	Before(ep int, timeout int) (int, error)
	After(ep int, n int)
}

// listenerToken is the first epoll event token of an Inline strategy's
// listeners; connections use their descriptor numbers, which stay far below.
const listenerToken = 1 << 30

// Engine is one worker's event loop.
type Engine struct {
	cfg   Config
	ep    int
	wake  int // eventfd: new connections, drain, close
	files *fileCache
	conns map[int]*conn

	mu       sync.Mutex
	pending  []int
	adopted  []*conn      // connections a front answered first, still open
	fronts   []*Engine    // idle fronts (front.go)
	made     []*Engine    // every front, idle or answering
	draining *atomic.Bool // shared with the fronts
	closing  atomic.Bool
	done     chan struct{}

	loop      *Engine      // set in a front: the engine whose loop takes its open connections
	lastCheck time.Time    // a front's last look at the document root
	busySince atomic.Int64 // a front answering since (UnixNano), or 0

	turn    uint64  // the loop's turns, counted (conn.turn)
	next    []*conn // connections that used their share of this turn, for the next (again)
	later   []*conn // the list being served, kept for its array
	free    []*conn // closed connections, with their buffers, for reuse
	now     time.Time
	date    []byte
	dateSec int64
	logTime []byte // the access log's [time], refreshed with date
	events  []unix.EpollEvent

	postReads  bool                    // accepting under a Cycler: first reads wait in posted
	posted     []*conn                 // for the mutex to be released
	handshaken []handshaken            // TLS connections ready for the loop (under mu)
	shaking    map[*tlsSocket]net.Conn // the TLS handshakes under way (under mu), with their netpoller connections once made
	shakers    sync.WaitGroup          // the handshakes' goroutines, for stopHandshakes to wait on
	stopped    bool                    // the loop has ended (under mu): handshakes close what they finish
	sealBuf    []byte                  // a file body's plaintext, read to be sealed (TLS)
	holdP      int8                    // calls that may block keep the P (1) or not (-1); 0: not asked yet (mayHoldP)

	full     bool // at WorkerConnections: logged once per episode
	rootGone bool // the root's path fails to open: logged once per episode
}

// New opens the root and the epoll instance. Run serves.
func New(cfg Config) (*Engine, error) {
	cfg.Options = cfg.Options.withDefaults()
	if cfg.WorkerConnections <= 0 {
		cfg.WorkerConnections = 1024
	}
	if cfg.Log == nil {
		cfg.Log = slog.Default()
	}
	files, err := newFileCache(cfg.Root, cfg.FollowSymlinks)
	if err != nil {
		return nil, err
	}
	ep, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		files.close()
		return nil, fmt.Errorf("httpd: epoll_create1: %w", err)
	}
	wake, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		unix.Close(ep)
		files.close()
		return nil, fmt.Errorf("httpd: eventfd: %w", err)
	}
	if err := unix.EpollCtl(ep, unix.EPOLL_CTL_ADD, wake, &unix.EpollEvent{Events: unix.EPOLLIN, Fd: int32(wake)}); err != nil {
		unix.Close(wake)
		unix.Close(ep)
		files.close()
		return nil, fmt.Errorf("httpd: epoll_ctl: %w", err)
	}
	return &Engine{cfg: cfg, ep: ep, wake: wake, files: files, conns: map[int]*conn{},
		draining: new(atomic.Bool), done: make(chan struct{}), events: make([]unix.EpollEvent, 256)}, nil
}

// poke wakes the loop, unless it has ended: its eventfd's number may
// belong to another descriptor by then.
func (e *Engine) poke() {
	e.mu.Lock()
	e.pokeLocked()
	e.mu.Unlock()
}

// pokeLocked is poke for a caller that holds mu (it has just queued
// something for the loop under it).
func (e *Engine) pokeLocked() {
	if !e.stopped {
		unix.Write(e.wake, []byte{1, 0, 0, 0, 0, 0, 0, 0})
	}
}

// Drain makes the engine finish: idle keep-alive connections are closed,
// a connection busy with a request gets its answer with "Connection:
// close". Run returns once none is left. No Add may follow.
func (e *Engine) Drain() {
	e.draining.Store(true)
	e.poke()
}

// Close makes Run return at once, closing every connection.
func (e *Engine) Close() {
	e.closing.Store(true)
	e.poke()
}

// Done is closed when Run has returned.
func (e *Engine) Done() <-chan struct{} { return e.done }

// Run is the event loop. It returns when drained or closed.
//
// The loop's goroutine is not locked to its thread: sysmon preempts it
// every 10ms under load (see waiter), and a locked goroutine's preemption
// hands its P to another thread and back, where an unlocked one's goes on
// where it was. Locked and unlocked, in results/loop-wait.txt: herd bench
// --strategies exclusive --mode close, 1.41 and 1.30 context switches per
// connection (medians of three interleaved runs); bench/ab.sh with a 1 MiB
// file, 0.28 and 0.26 per answer; requests a second and CPU per request
// moved less than the runs spread.
func (e *Engine) Run() error {
	defer close(e.done)
	defer e.shutdown()
	lastSweep := time.Now()
	attached, busy := false, false
	w := &waiter{ep: e.ep, holdP: e.mayHoldP(), active: time.Now()}
	cycler, _ := e.cfg.Inline.(Cycler)
	if e.cfg.Inline != nil {
		if err := e.cfg.Inline.Attach(e.ep, listenerToken); err != nil {
			return err
		}
		attached = true
		defer func() {
			if attached {
				e.cfg.Inline.Detach(e.ep, nil) // a Cycler lets go of its mutex
			}
		}()
	}
	for {
		e.tick()
		if e.closing.Load() || (e.draining.Load() && len(e.conns) == 0 && e.noPending()) {
			return nil
		}
		timeout, cycling := 500, attached && cycler != nil
		if cycling {
			var err error
			if timeout, err = cycler.Before(e.ep, timeout); err != nil {
				return err
			}
		}
		if len(e.next) > 0 {
			timeout = 0 // connections wait for their next share (again)
		}
		n, err := w.wait(e.events, timeout, busy, e.now)
		busy = n > 1
		if err != nil && err != unix.EINTR {
			return fmt.Errorf("httpd: epoll_wait: %w", err)
		}
		n = max(n, 0)
		e.tick()
		if n > 0 {
			w.active = e.now
		}
		// A new turn: every connection served from here on gets a new
		// share, and those that used theirs in the last turn are served
		// after this turn's events.
		e.turn++
		again := e.next
		e.next = e.later[:0]
		// Accept first, as nginx handles its posted accept events first.
		// Under a Cycler the new connections' first reads wait until the
		// mutex is released (postReads), as nginx posts them too.
		e.postReads = cycling
		for _, ev := range e.events[:n] {
			if fd := int(ev.Fd); fd >= listenerToken && attached {
				if err := e.cfg.Inline.Ready(e.ep, fd-listenerToken, e.addConn); err != nil {
					return err
				}
			}
		}
		if cycling {
			cycler.After(e.ep, n)
			e.postReads = false
			for _, c := range e.posted {
				e.firstRead(c)
			}
			clear(e.posted)
			e.posted = e.posted[:0]
		}
		for _, ev := range e.events[:n] {
			fd := int(ev.Fd)
			if fd == e.wake {
				var buf [8]byte
				unix.Read(e.wake, buf[:])
				e.takePending()
				if e.draining.Load() {
					if attached {
						e.cfg.Inline.Detach(e.ep, e.addConn) // stop accepting first
						attached = false
					}
					e.closeIdle()
				}
				continue
			}
			if c := e.conns[fd]; c != nil && fd < listenerToken {
				e.serve(c, ev.Events)
			}
		}
		for i, c := range again {
			again[i] = nil
			c.again = false
			if e.conns[c.fd] == c {
				e.serve(c, unix.EPOLLIN|unix.EPOLLOUT)
			}
		}
		e.later = again[:0]
		if e.now.Sub(lastSweep) >= 500*time.Millisecond {
			e.sweep()
			lastSweep = e.now
		}
	}
}

func (e *Engine) noPending() bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	return len(e.pending) == 0 && len(e.adopted) == 0 && len(e.shaking) == 0 && len(e.handshaken) == 0
}

// tick refreshes the clock and, once a second, the Date header and the
// worker's heartbeat. The heartbeat is written here, by the loop itself,
// so that a loop stuck in a call (a blocking open, a write to a stalled log
// pipe) stops it, and the master's --worker-timeout replaces the worker:
// a goroutine of its own would go on beating for a worker that serves no
// one.
func (e *Engine) tick() {
	e.now = time.Now()
	if s := e.now.Unix(); s != e.dateSec {
		e.dateSec = s
		if e.loop == nil && !e.frontStuck(e.now) { // only the loop's clock beats
			e.cfg.Stats.Store(shm.Heartbeat, uint64(e.now.UnixNano()))
		}
		e.date = e.now.UTC().AppendFormat(e.date[:0], http.TimeFormat)
		if e.cfg.AccessLog != nil {
			e.logTime = e.now.AppendFormat(e.logTime[:0], "02/Jan/2006:15:04:05 -0700")
		}
	}
}

func (e *Engine) takePending() {
	e.mu.Lock()
	fds, adopted, secured := e.pending, e.adopted, e.handshaken
	e.pending, e.adopted, e.handshaken = nil, nil, nil
	e.mu.Unlock()
	for _, fd := range fds {
		e.addConn(fd)
	}
	for _, c := range adopted {
		e.adopt(c)
	}
	for _, h := range secured {
		e.adoptTLS(h)
	}
}

// drop closes a connection the engine will not serve, and counts it out
// (the strategy counted it in when it accepted it).
func (e *Engine) drop(fd int) {
	rawClose(fd)
	e.cfg.Stats.Add(shm.Active, -1)
}

// addConn starts serving an accepted descriptor, on the loop's thread.
func (e *Engine) addConn(fd int) {
	if e.cfg.TLS != nil {
		e.startHandshake(fd)
		return
	}
	if e.atLimit() {
		e.drop(fd)
		return
	}
	if !e.cfg.Nonblocking {
		if err := unix.SetNonblock(fd, true); err != nil {
			e.drop(fd)
			return
		}
	}
	c := e.newConn(fd)
	e.conns[fd] = c
	if e.cfg.ReadFirst {
		if e.postReads {
			e.posted = append(e.posted, c)
			return
		}
		e.firstRead(c)
		return
	}
	// Otherwise no read now: EPOLL_CTL_ADD reports the socket readable at
	// once if the request is already there, and a read before that finds
	// nothing (three times in four, measured under wrk -c8).
	e.register(c, false)
}

// atLimit reports whether the loop holds WorkerConnections already, so a
// new connection must be closed; the first of a run is logged.
func (e *Engine) atLimit() bool {
	if len(e.conns) < e.cfg.WorkerConnections {
		e.full = false
		return false
	}
	if !e.full {
		e.full = true
		e.cfg.Log.Warn("worker_connections reached; closing new connections", "limit", e.cfg.WorkerConnections)
	}
	return true
}

// firstRead serves a connection that came with its first bytes, and
// registers it if it is still open afterwards.
func (e *Engine) firstRead(c *conn) {
	e.onReadable(c)
	if e.conns[c.fd] == c && !c.registered {
		e.register(c, false)
	}
}

// register adds the connection to the loop's epoll set, or changes what it
// is watched for. EPOLLOUT only once a send would block (watchWrites):
// registered from the start, it fires once for every new connection, for
// nothing. Adding an edge-triggered descriptor reports what is already
// ready, so nothing that arrived before is missed.
func (e *Engine) register(c *conn, writes bool) bool {
	if e.loop != nil {
		return true // a front: the loop registers what it adopts
	}
	ev := unix.EpollEvent{Events: unix.EPOLLIN | unix.EPOLLRDHUP | unix.EPOLLET, Fd: int32(c.fd)}
	if writes {
		ev.Events |= unix.EPOLLOUT
	}
	op := unix.EPOLL_CTL_ADD
	if c.registered {
		op = unix.EPOLL_CTL_MOD
	}
	if err := rawEpollCtl(e.ep, op, c.fd, &ev); err != nil {
		e.closeConn(c)
		return false
	}
	c.registered, c.outWatch = true, writes
	return true
}

// sweep closes connections past their timeouts, and follows a document
// root that now names another directory.
func (e *Engine) sweep() {
	switch changed, err := e.files.refreshRoot(); {
	case err != nil:
		if !e.rootGone {
			e.cfg.Log.Warn("document root cannot be opened; serving the previous one", "root", e.cfg.Root, "err", err)
		}
		e.rootGone = true
	case changed:
		e.cfg.Log.Info("document root changed; serving the new directory", "root", e.cfg.Root)
		fallthrough
	default:
		e.rootGone = false
	}
	for _, c := range e.conns {
		switch {
		case c.lingering:
			if e.now.Sub(c.since) > lingerTimeout || e.now.Sub(c.lingerStart) > lingerTime {
				e.closeConn(c)
			}
		case c.h2 != nil:
			e.sweepH2(c)
		case c.writing():
			if e.now.Sub(c.since) > e.cfg.SendTimeout {
				e.closeConn(c)
			}
		case len(c.rbuf) > 0 || c.requests == 0:
			if e.now.Sub(c.since) > e.cfg.HeaderTimeout {
				e.fail(c, refuse(408, "Request Timeout"))
			}
		default:
			if e.now.Sub(c.since) > e.cfg.IdleTimeout {
				e.closeConn(c)
			}
		}
	}
}

// closeIdle closes the keep-alive connections that wait for their next
// request. A connection that has not had its first request yet is not
// idle: its client has sent, or is sending, a request that must be
// answered (closing it is the drop net/http's Shutdown makes).
func (e *Engine) closeIdle() {
	for _, c := range e.conns {
		if c.h2 != nil {
			e.serveH2(c) // GOAWAY, and a close once its streams are answered
			continue
		}
		if !c.writing() && !c.lingering && len(c.rbuf) == 0 && c.requests > 0 {
			e.closeConn(c)
		}
	}
}

func (e *Engine) shutdown() {
	for _, c := range e.conns {
		e.closeConn(c)
	}
	e.stopHandshakes()
	e.mu.Lock()
	for _, fd := range e.pending {
		e.drop(fd)
	}
	e.pending = nil
	for _, c := range e.adopted {
		e.conns[c.fd] = c
		e.closeConn(c)
	}
	e.adopted = nil
	for _, h := range e.handshaken {
		e.drop(h.fd)
	}
	e.handshaken = nil // stopped since stopHandshakes
	for _, f := range e.made {
		f.files.close()
	}
	e.fronts, e.made = nil, nil
	e.mu.Unlock()
	unix.Close(e.ep)
	unix.Close(e.wake)
	e.files.close()
}
