package httpd

import (
	"errors"
	"fmt"
	"html"
	"io"
	"log/slog"
	"net/http"
	"net/netip"
	"net/url"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/herd-run/herd/internal/accept"
	"github.com/herd-run/herd/internal/shm"
	"golang.org/x/sys/unix"
)

// The native engine: one event loop per worker on its own epoll instance and
// locked OS thread, as an nginx worker runs — no goroutine per connection,
// no net/http. It serves the static files under a root over HTTP/1.1 and
// 1.0: keep-alive, pipelining, conditional and range requests, precompressed
// .gz siblings, bodies by sendfile(2) with the header sent MSG_MORE so both
// leave in the same segments (seed 001's TCP_CORK, without the two extra
// setsockopt calls).

// Config is what an engine serves and how.
type Config struct {
	Root              string
	FollowSymlinks    bool
	WorkerConnections int           // more connections than this are closed at once; default 1024
	HeaderTimeout     time.Duration // for a request head to arrive whole; default 10s (408)
	IdleTimeout       time.Duration // keep-alive between requests; default 75s, nginx's keepalive_timeout
	SendTimeout       time.Duration // for a stalled client to take more of a response; default 60s
	Stats             *shm.Record   // Requests, BytesOut, Active (the accept strategy counted it in)
	Log               *slog.Logger

	// Autoindex lists a directory that has no index.html (nginx's
	// autoindex); off, such a directory is 403.
	Autoindex bool
	// AccessLog, if set, gets one Common Log Format line per answer, in
	// one Write each, from the loop's thread.
	AccessLog io.Writer
	// OnRequest, if set, is called after every answer with the worker's
	// request count (the worker's --max-requests).
	OnRequest func(total uint64)

	// Inline, if set, is an accept strategy whose listeners this loop
	// watches and accepts from itself (no hand-off between threads).
	Inline accept.Inline
	// Nonblocking: descriptors arrive non-blocking (accepted with
	// SOCK_NONBLOCK), so the loop need not set the flag.
	Nonblocking bool
	// ReadFirst: connections arrive with their first bytes already
	// received (the listeners have TCP_DEFER_ACCEPT), so the loop reads and
	// answers at once and registers a connection with epoll only if it is
	// still open afterwards. A client that sends one request and takes the
	// answer with "Connection: close" then costs accept4, read, send and
	// close, and no epoll_ctl or second epoll_wait.
	ReadFirst bool
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

	mu      sync.Mutex
	pending []int
	drain   atomic.Bool
	closing atomic.Bool
	done    chan struct{}

	free    []*conn // closed connections, with their buffers, for reuse
	now     time.Time
	date    []byte
	dateSec int64
	logTime []byte // the access log's [time], refreshed with date
	logLine []byte
	events  []unix.EpollEvent

	postReads bool    // accepting under a Cycler: first reads wait in posted
	posted    []*conn // for the mutex to be released
	full      bool    // at WorkerConnections: logged once per episode
}

// New opens the root and the epoll instance. Run serves.
func New(cfg Config) (*Engine, error) {
	if cfg.WorkerConnections <= 0 {
		cfg.WorkerConnections = 1024
	}
	if cfg.HeaderTimeout <= 0 {
		cfg.HeaderTimeout = 10 * time.Second
	}
	if cfg.IdleTimeout <= 0 {
		cfg.IdleTimeout = 75 * time.Second
	}
	if cfg.SendTimeout <= 0 {
		cfg.SendTimeout = 60 * time.Second
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
		return nil, fmt.Errorf("httpd: %w", err)
	}
	return &Engine{cfg: cfg, ep: ep, wake: wake, files: files, conns: map[int]*conn{},
		done: make(chan struct{}), events: make([]unix.EpollEvent, 256)}, nil
}

// Add hands the engine an accepted connection (from any goroutine).
func (e *Engine) Add(fd int) {
	e.mu.Lock()
	e.pending = append(e.pending, fd)
	e.mu.Unlock()
	e.poke()
}

func (e *Engine) poke() { unix.Write(e.wake, []byte{1, 0, 0, 0, 0, 0, 0, 0}) }

// Drain makes the engine finish: idle keep-alive connections are closed,
// a connection busy with a request gets its answer with "Connection:
// close". Run returns once none is left. No Add may follow.
func (e *Engine) Drain() {
	e.drain.Store(true)
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
func (e *Engine) Run() error {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	defer close(e.done)
	defer e.shutdown()
	lastSweep := time.Now()
	attached, busy := false, false
	holdP := runtime.GOMAXPROCS(0) >= 2 // see wait
	cycler, _ := e.cfg.Inline.(accept.Cycler)
	if e.cfg.Inline != nil {
		if err := e.cfg.Inline.Attach(e.ep, listenerToken); err != nil {
			return err
		}
		attached = true
		defer func() {
			if attached {
				e.cfg.Inline.Detach(e.ep) // a Cycler lets go of its mutex
			}
		}()
	}
	for {
		e.tick()
		if e.closing.Load() || (e.drain.Load() && len(e.conns) == 0 && e.noPending()) {
			return nil
		}
		timeout, cycling := 500, attached && cycler != nil
		if cycling {
			var err error
			if timeout, err = cycler.Before(e.ep, timeout); err != nil {
				return err
			}
		}
		n, err := wait(e.ep, e.events, timeout, holdP, busy)
		busy = n > 1
		if err != nil && err != unix.EINTR {
			return fmt.Errorf("httpd: epoll_wait: %w", err)
		}
		n = max(n, 0)
		e.tick()
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
				if e.drain.Load() {
					if attached {
						e.cfg.Inline.Detach(e.ep) // stop accepting first
						attached = false
					}
					e.drainIdle()
				}
				continue
			}
			if c := e.conns[fd]; c != nil && fd < listenerToken {
				e.serve(c, ev.Events)
			}
		}
		if e.now.Sub(lastSweep) >= 500*time.Millisecond {
			e.sweep()
			lastSweep = e.now
		}
	}
}

func (e *Engine) noPending() bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	return len(e.pending) == 0
}

// tick refreshes the clock and, once a second, the Date header.
func (e *Engine) tick() {
	e.now = time.Now()
	if s := e.now.Unix(); s != e.dateSec {
		e.dateSec = s
		e.date = e.now.UTC().AppendFormat(e.date[:0], http.TimeFormat)
		if e.cfg.AccessLog != nil {
			e.logTime = e.now.AppendFormat(e.logTime[:0], "02/Jan/2006:15:04:05 -0700")
		}
	}
}

func (e *Engine) takePending() {
	e.mu.Lock()
	fds := e.pending
	e.pending = nil
	e.mu.Unlock()
	for _, fd := range fds {
		e.addConn(fd)
	}
}

// addConn starts serving an accepted descriptor, on the loop's thread.
func (e *Engine) addConn(fd int) {
	if len(e.conns) >= e.cfg.WorkerConnections {
		if !e.full {
			e.full = true
			e.cfg.Log.Warn("worker_connections reached; closing new connections", "limit", e.cfg.WorkerConnections)
		}
		unix.Close(fd)
		e.cfg.Stats.Add(shm.Active, -1)
		return
	}
	e.full = false
	if !e.cfg.Nonblocking {
		if err := unix.SetNonblock(fd, true); err != nil {
			unix.Close(fd)
			e.cfg.Stats.Add(shm.Active, -1)
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

// sweep closes connections past their timeouts.
func (e *Engine) sweep() {
	for _, c := range e.conns {
		switch {
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

// drainIdle closes the keep-alive connections that wait for their next
// request. A connection that has not had its first request yet is not
// idle: its client has sent, or is sending, a request that must be
// answered (closing it is the drop net/http's Shutdown makes).
func (e *Engine) drainIdle() {
	for _, c := range e.conns {
		if !c.writing() && len(c.rbuf) == 0 && c.requests > 0 {
			e.closeConn(c)
		}
	}
}

func (e *Engine) shutdown() {
	for _, c := range e.conns {
		e.closeConn(c)
	}
	e.mu.Lock()
	for _, fd := range e.pending {
		unix.Close(fd)
		e.cfg.Stats.Add(shm.Active, -1)
	}
	e.pending = nil
	e.mu.Unlock()
	unix.Close(e.ep)
	unix.Close(e.wake)
	e.files.close()
}

// conn is one client connection.
type conn struct {
	fd         int
	req        request // the request being answered; parsed in place
	drained    bool    // the last read came back short: nothing more until EPOLLIN
	registered bool    // in the loop's epoll set
	refused    bool    // answered with an error page: what the client sent was not all read
	outWatch   bool    // EPOLLOUT is in the connection's epoll mask
	head       bool    // the request being answered is HEAD
	rbuf       []byte  // read, not yet parsed
	out        []byte  // response bytes not yet sent (head, or head and small body)
	outOff     int
	file       *file // body to send with sendfile, from off to end
	off, end   int64
	close      bool // close once the response is sent
	eof        bool // the client has closed its side
	since      time.Time
	requests   int
	status     int    // of the answer being sent, for the access log
	bodyBytes  int64  // its body's size
	peer       string // the client's address, once the access log asked
}

// consumed reports whether everything the client sent has been read and
// used: the last read was short and nothing is left in the buffer.
func (c *conn) consumed() bool { return c.drained && len(c.rbuf) == 0 && !c.refused }

func (c *conn) writing() bool { return c.outOff < len(c.out) || c.file != nil }

func (e *Engine) serve(c *conn, events uint32) {
	if events&(unix.EPOLLERR|unix.EPOLLHUP) != 0 {
		e.closeConn(c)
		return
	}
	if events&unix.EPOLLRDHUP != 0 {
		c.eof = true
	}
	if events&(unix.EPOLLIN|unix.EPOLLRDHUP) != 0 {
		c.drained = false
	}
	if c.writing() {
		if events&unix.EPOLLOUT == 0 || !e.flush(c) {
			return
		}
		e.onReadable(c) // answer what was pipelined behind it
		return
	}
	if events&(unix.EPOLLIN|unix.EPOLLRDHUP) != 0 {
		e.onReadable(c)
	}
	// EPOLLOUT alone on an idle connection (registration fires one): nothing to do.
}

// onReadable reads what the client sent and answers every complete request
// in order (pipelining), as far as the socket takes the answers.
func (e *Engine) onReadable(c *conn) {
	for {
		if c.writing() {
			return // the rest waits in the buffer until this answer is out
		}
		if len(c.rbuf) > 0 {
			complete, perr := parseInto(&c.req, c.rbuf)
			if perr != nil {
				e.fail(c, perr)
				return
			}
			if req := &c.req; complete {
				if int64(len(c.rbuf)) < int64(req.size)+req.length {
					if !e.read(c) {
						return
					}
					continue // wait for the body, which is dropped
				}
				e.respond(c, req)
				c.rbuf = c.rbuf[:copy(c.rbuf, c.rbuf[req.size+int(req.length):])]
				if !e.flush(c) {
					return
				}
				continue
			}
		}
		if !e.read(c) {
			return
		}
	}
}

// read appends what the socket has to the buffer. false: nothing more now
// (EAGAIN, or a short read that emptied the socket), or the connection was
// closed.
func (e *Engine) read(c *conn) bool {
	if c.drained {
		// The last read returned less than it asked for: the socket was
		// empty then, and edge-triggered epoll reports anything new. A read
		// now would only find EAGAIN (nginx skips it the same way).
		if c.eof && len(c.rbuf) == 0 {
			e.closeConn(c)
		}
		return false
	}
	if len(c.rbuf) == cap(c.rbuf) {
		if cap(c.rbuf) >= MaxHeaderBytes+MaxBody {
			e.fail(c, refuse(431, "Request Header Fields Too Large"))
			return false
		}
		grown := make([]byte, len(c.rbuf), cap(c.rbuf)*2)
		copy(grown, c.rbuf)
		c.rbuf = grown
	}
	n, err := rawRead(c.fd, c.rbuf[len(c.rbuf):cap(c.rbuf)])
	switch {
	case err == unix.EAGAIN:
		if c.eof && len(c.rbuf) == 0 {
			e.closeConn(c)
		}
		return false
	case err == unix.EINTR:
		return true
	case err != nil || n == 0:
		e.closeConn(c) // peer closed or reset; a partial request is dropped
		return false
	}
	if len(c.rbuf) == 0 {
		c.since = e.now // a new request starts: the header timeout runs
	}
	c.drained = n < cap(c.rbuf)-len(c.rbuf)
	c.rbuf = c.rbuf[:len(c.rbuf)+n]
	return true
}

// flush sends what is pending. false: the socket is full (EPOLLOUT will
// call again) or the connection was closed.
func (e *Engine) flush(c *conn) bool {
	for c.outOff < len(c.out) {
		flags := unix.MSG_NOSIGNAL
		if c.file != nil || (c.close && c.consumed()) {
			// The body follows: one segment for head and body start. Or
			// close follows: it pushes what MSG_MORE held back, with the
			// FIN in the same segment (nginx gets that from TCP_CORK; a
			// FIN of its own is two more packets per connection). Not if
			// the client may have sent more: close would answer that with
			// a reset, which discards the held-back answer too.
			flags |= unix.MSG_MORE
		}
		n, err := rawSend(c.fd, c.out[c.outOff:], flags)
		if err == unix.EAGAIN {
			return e.watchWrites(c)
		}
		if err != nil && err != unix.EINTR {
			e.closeConn(c)
			return false
		}
		c.outOff += n
		c.since = e.now
		e.cfg.Stats.Add(shm.BytesOut, int64(n))
	}
	for c.file != nil && c.off < c.end {
		off := c.off
		n, err := unix.Sendfile(c.fd, c.file.fd, &off, int(min(c.end-c.off, 1<<30)))
		if err == unix.EAGAIN {
			return e.watchWrites(c)
		}
		if err != nil && err != unix.EINTR {
			e.closeConn(c)
			return false
		}
		if n == 0 && err == nil {
			e.closeConn(c) // the file shrank under us: the response cannot be completed
			return false
		}
		c.off += int64(n)
		c.since = e.now
		e.cfg.Stats.Add(shm.BytesOut, int64(n))
	}
	if c.file != nil {
		e.files.release(c.file)
		c.file = nil
	}
	c.out, c.outOff = c.out[:0], 0
	c.since = e.now
	if c.close || e.drain.Load() {
		e.closeConn(c)
		return false
	}
	return true
}

// watchWrites adds EPOLLOUT to a connection whose send would block, so the
// loop hears when the client has taken some of the response. It stays: an
// edge-triggered EPOLLOUT fires only when space frees after a full buffer.
// Always false: the caller waits for that event.
func (e *Engine) watchWrites(c *conn) bool {
	if !c.outWatch {
		e.register(c, true)
	}
	return false
}

func (e *Engine) closeConn(c *conn) {
	if _, ok := e.conns[c.fd]; !ok {
		return
	}
	delete(e.conns, c.fd)
	if c.file != nil {
		e.files.release(c.file)
		c.file = nil
	}
	// Under fdpass (descriptors not accepted here), remove it from the epoll
	// set explicitly: close alone does not when another process still holds
	// the socket (the master keeps its copy until the worker's ack is
	// read), and the stale entry would report events under a descriptor
	// number a new connection reuses. Accepted here, close is enough.
	if !e.cfg.Nonblocking && c.registered {
		rawEpollCtl(e.ep, unix.EPOLL_CTL_DEL, c.fd, nil)
	}
	rawClose(c.fd)
	e.cfg.Stats.Add(shm.Active, -1)
	if len(e.free) < 1024 && cap(c.rbuf) <= 8<<10 && cap(c.out) <= 8<<10 {
		e.free = append(e.free, c)
	}
}

// newConn takes a connection from the free list, or makes one: at
// thousands of connections a second, fresh buffers for each would be the
// loop's main source of garbage.
func (e *Engine) newConn(fd int) *conn {
	if n := len(e.free); n > 0 {
		c := e.free[n-1]
		e.free = e.free[:n-1]
		*c = conn{fd: fd, since: e.now, rbuf: c.rbuf[:0], out: c.out[:0]}
		return c
	}
	return &conn{fd: fd, since: e.now, rbuf: make([]byte, 0, 2048), out: make([]byte, 0, 512)}
}

// fail answers a refused request and closes the connection.
func (e *Engine) fail(c *conn, perr *parseError) {
	c.rbuf = c.rbuf[:0]
	c.refused = true
	c.head = false // the request could not be read: its method is unknown
	e.errorPage(c, perr.status, perr.reason, nil)
	c.close = true
	e.account(c, nil)
	e.flush(c)
}

var errNoFile = errors.New("no file")

// respond builds the answer to req into c.out (and c.file), and counts
// and logs it.
func (e *Engine) respond(c *conn, req *request) {
	c.requests++
	c.close = !req.keep || e.drain.Load()
	e.answer(c, req)
	e.account(c, req)
}

// account counts an answer, logs it, and tells OnRequest. req is nil for a
// request that could not be read.
func (e *Engine) account(c *conn, req *request) {
	n := e.cfg.Stats.Add(shm.Requests, 1)
	if e.cfg.AccessLog != nil {
		e.logRequest(c, req)
	}
	if e.cfg.OnRequest != nil {
		e.cfg.OnRequest(n)
	}
}

// logRequest writes the access log line of c's answer:
//
//	127.0.0.1 - - [22/Nov/2026:19:41:29 +0000] "GET /hello.txt HTTP/1.1" 200 13
//
// (the format of the nethttp engine's log; the size is the body's).
func (e *Engine) logRequest(c *conn, req *request) {
	if c.peer == "" {
		c.peer = peerHost(c.fd)
	}
	b := append(e.logLine[:0], c.peer...)
	b = append(b, " - - ["...)
	b = append(b, e.logTime...)
	b = append(b, "] "...)
	if req == nil {
		b = append(b, `"-"`...)
	} else {
		b = strconv.AppendQuote(b, string(req.method)+" "+string(req.target)+" HTTP/1."+strconv.Itoa(req.minor))
	}
	b = append(b, ' ')
	b = strconv.AppendInt(b, int64(c.status), 10)
	b = append(b, ' ')
	b = strconv.AppendInt(b, c.bodyBytes, 10)
	b = append(b, '\n')
	e.cfg.AccessLog.Write(b)
	e.logLine = b
}

// peerHost is the client's address for the access log, "-" if not IP.
func peerHost(fd int) string {
	sa, err := unix.Getpeername(fd)
	if err != nil {
		return "-"
	}
	switch a := sa.(type) {
	case *unix.SockaddrInet4:
		return netip.AddrFrom4(a.Addr).String()
	case *unix.SockaddrInet6:
		return netip.AddrFrom16(a.Addr).Unmap().String()
	}
	return "-"
}

// answer builds the answer to req into c.out (and c.file), and notes its
// status and body size in c.
func (e *Engine) answer(c *conn, req *request) {
	head := string(req.method) == "HEAD"
	c.head = head
	if !head && string(req.method) != "GET" {
		e.errorPage(c, 405, "Method Not Allowed", [][2]string{{"Allow", "GET, HEAD"}})
		return
	}
	var (
		f          *file
		isDir, dir bool
		err        error
		name       string
	)
	if raw, ok := plainPath(req.target); ok {
		if f, isDir, err = e.files.lookup(raw, e.now); isDir {
			name = string(raw)
		}
	} else {
		if name, dir, ok = cleanPath(req.target); !ok {
			e.errorPage(c, 400, "Bad Request", nil)
			c.close = true
			return
		}
		f, isDir, err = e.files.open(name, e.now)
	}
	if err == nil && isDir {
		if !dir {
			loc := "/" + strings.TrimPrefix(name+"/", "./")
			e.errorPage(c, 301, "Moved Permanently", [][2]string{{"Location", loc}})
			return
		}
		f, isDir, err = e.files.open(path2(name, "index.html"), e.now)
		if err == nil && isDir {
			err = errNoFile
		}
		if err == unix.ENOENT && e.cfg.Autoindex {
			e.listing(c, name)
			return
		}
		if err == unix.ENOENT {
			err = unix.EACCES // a directory without an index is not listed: 403, as nginx
		}
	}
	switch {
	case err == nil:
	case err == unix.ENOENT || err == unix.ENOTDIR || err == errNoFile:
		e.errorPage(c, 404, "Not Found", nil)
		return
	default: // errEscape, EACCES, ...
		e.errorPage(c, 403, "Forbidden", nil)
		return
	}
	e.sendFile(c, req, f, head)
}

func path2(dir, file string) string {
	if dir == "." {
		return file
	}
	return dir + "/" + file
}

// sendFile answers with f: 200, 206, 304 or 416.
func (e *Engine) sendFile(c *conn, req *request, f *file, head bool) {
	// Hold the files while the answer is built (another lookup may evict
	// them); the one sent by sendfile takes a hold of its own until sent.
	f.refs++
	defer e.files.release(f)
	ctype, vary := f.ctype, false
	var encoding string
	if gz, _, err := e.files.open(f.gz, e.now); err == nil && gz != nil {
		vary = true
		if req.gzip {
			gz.refs++
			defer e.files.release(gz)
			f, encoding = gz, "gzip"
		}
	}
	lastMod := f.lastMod
	if notModified(req, f, lastMod) {
		e.begin(c, 304, "Not Modified")
		c.out = e.validators(c.out, f, lastMod, vary)
		c.out = e.connection(c.out, c)
		c.out = append(c.out, "\r\n"...)
		return
	}
	start, end, partial, ok := byteRange(req, f, lastMod)
	if !ok {
		e.begin(c, 416, "Range Not Satisfiable")
		c.out = append(c.out, "Content-Range: bytes */"...)
		c.out = strconv.AppendInt(c.out, f.size, 10)
		c.out = append(c.out, "\r\nContent-Length: 0\r\n"...)
		c.out = e.connection(c.out, c)
		c.out = append(c.out, "\r\n"...)
		return
	}
	if partial {
		e.begin(c, 206, "Partial Content")
		c.out = fmt.Appendf(c.out, "Content-Range: bytes %d-%d/%d\r\n", start, end-1, f.size)
	} else {
		e.begin(c, 200, "OK")
	}
	c.out = append(c.out, "Content-Type: "...)
	c.out = append(c.out, ctype...)
	c.out = append(c.out, "\r\nContent-Length: "...)
	c.out = strconv.AppendInt(c.out, end-start, 10)
	c.out = append(c.out, "\r\nAccept-Ranges: bytes\r\n"...)
	if encoding != "" {
		c.out = append(c.out, "Content-Encoding: gzip\r\n"...)
	}
	c.out = e.validators(c.out, f, lastMod, vary)
	c.out = e.connection(c.out, c)
	c.out = append(c.out, "\r\n"...)
	if head || end == start {
		return
	}
	c.bodyBytes = end - start
	if f.small != nil {
		c.out = append(c.out, f.small[start:end]...) // head and body in one write
		return
	}
	f.refs++ // c.file's own hold
	c.file, c.off, c.end = f, start, end
}

// begin starts c's answer with its status line and common headers, and
// notes the status for the access log (the body's size is added by whoever
// appends or sends one).
func (e *Engine) begin(c *conn, code int, text string) {
	c.status, c.bodyBytes = code, 0
	b := append(c.out[:0], "HTTP/1.1 "...)
	b = strconv.AppendInt(b, int64(code), 10)
	b = append(b, ' ')
	b = append(b, text...)
	b = append(b, "\r\nServer: herd\r\nDate: "...)
	b = append(b, e.date...)
	c.out = append(b, "\r\n"...)
}

func (e *Engine) validators(b []byte, f *file, lastMod string, vary bool) []byte {
	b = append(b, "Last-Modified: "...)
	b = append(b, lastMod...)
	b = append(b, "\r\nETag: "...)
	b = append(b, f.etag...)
	b = append(b, "\r\n"...)
	if vary {
		b = append(b, "Vary: Accept-Encoding\r\n"...)
	}
	return b
}

func (e *Engine) connection(b []byte, c *conn) []byte {
	if c.close {
		return append(b, "Connection: close\r\n"...)
	}
	return append(b, "Connection: keep-alive\r\n"...)
}

func (e *Engine) errorPage(c *conn, code int, text string, headers [][2]string) {
	body := "<html><head><title>" + strconv.Itoa(code) + " " + text + "</title></head><body><h1>" +
		strconv.Itoa(code) + " " + text + "</h1><hr>herd</body></html>\n"
	e.begin(c, code, text)
	for _, h := range headers {
		c.out = append(c.out, h[0]+": "+h[1]+"\r\n"...)
	}
	e.htmlBody(c, body)
}

// htmlBody ends an answer whose head has its status line with an HTML body.
func (e *Engine) htmlBody(c *conn, body string) {
	c.out = append(c.out, "Content-Type: text/html; charset=utf-8\r\nContent-Length: "...)
	c.out = strconv.AppendInt(c.out, int64(len(body)), 10)
	c.out = append(c.out, "\r\n"...)
	c.out = e.connection(c.out, c)
	c.out = append(c.out, "\r\n"...)
	if !c.head {
		c.out = append(c.out, body...) // a HEAD answer has the length, never the body
		c.bodyBytes = int64(len(body))
	}
}

// listing answers with the entries of the directory name (autoindex):
// names linked, directories with a slash, then the time and size, as
// nginx's autoindex shows them. Read on the loop's thread, as nginx does.
func (e *Engine) listing(c *conn, name string) {
	entries, err := e.files.readDir(name)
	if err != nil {
		e.errorPage(c, 403, "Forbidden", nil)
		return
	}
	title := "/"
	if name != "." {
		title += name + "/"
	}
	var b strings.Builder
	b.WriteString("<html><head><title>Index of " + html.EscapeString(title) + "</title></head><body>\n<h1>Index of " +
		html.EscapeString(title) + "</h1><hr><pre>")
	if name != "." {
		b.WriteString("<a href=\"../\">../</a>\n")
	}
	for _, ent := range entries {
		label, href := ent.Name, url.PathEscape(ent.Name)
		if ent.Dir {
			label, href = label+"/", href+"/"
		}
		fmt.Fprintf(&b, "<a href=\"%s\">%s</a>%*s %s %12s\n", html.EscapeString(href), html.EscapeString(label),
			max(0, 50-len(label)), "", ent.ModTime.UTC().Format("02-Jan-2006 15:04"), sizeText(ent))
	}
	b.WriteString("</pre><hr></body></html>\n")
	e.begin(c, 200, "OK")
	e.htmlBody(c, b.String())
}

func sizeText(ent dirEntry) string {
	if ent.Dir {
		return "-"
	}
	return strconv.FormatInt(ent.Size, 10)
}

// notModified applies If-None-Match, or else If-Modified-Since (RFC 9110 13.2.2).
func notModified(req *request, f *file, lastMod string) bool {
	if req.inm != nil {
		for _, tag := range strings.Split(string(req.inm), ",") {
			tag = strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(tag), "W/"))
			if tag == "*" || tag == f.etag {
				return true
			}
		}
		return false
	}
	if req.ims != nil {
		t, err := http.ParseTime(string(req.ims))
		return err == nil && !f.mtime.Truncate(time.Second).After(t)
	}
	return false
}

// byteRange reads a single Range (RFC 9110 14.1.2): "bytes=a-b", "a-" or
// "-n". Several ranges, another unit or a failed If-Range: the whole file.
// ok=false: unsatisfiable (416).
func byteRange(req *request, f *file, lastMod string) (start, end int64, partial, ok bool) {
	size := f.size
	spec, isBytes := strings.CutPrefix(string(req.rng), "bytes=")
	if req.rng == nil || !isBytes || strings.Contains(spec, ",") {
		return 0, size, false, true
	}
	if req.ifRange != nil && string(req.ifRange) != f.etag && string(req.ifRange) != lastMod {
		return 0, size, false, true
	}
	first, last, found := strings.Cut(strings.TrimSpace(spec), "-")
	if !found {
		return 0, size, false, true
	}
	if first == "" { // suffix: the last n bytes
		n, err := strconv.ParseInt(last, 10, 64)
		if err != nil || n <= 0 {
			return 0, 0, false, n == 0 && err == nil && size > 0
		}
		return max(size-n, 0), size, true, size > 0
	}
	a, err := strconv.ParseInt(first, 10, 64)
	if err != nil || a < 0 {
		return 0, size, false, true
	}
	b := size - 1
	if last != "" {
		if b, err = strconv.ParseInt(last, 10, 64); err != nil || b < a {
			return 0, size, false, true
		}
		b = min(b, size-1)
	}
	if a >= size {
		return 0, 0, false, false
	}
	return a, b + 1, true, true
}
