//go:build linux

package httpd

import (
	"time"

	"golang.org/x/sys/unix"
)

// A connection taken by a strategy's own accepting thread (accept, flock,
// mutex, fdpass, go: every strategy that does not accept inside the loop)
// is answered on that thread, by a front, before the loop sees it. That is
// where its origin answers it: Apache's prefork child and uWSGI's worker
// serve what they accepted, on the thread that accepted it. Handing every
// connection to the loop instead costs a wakeup of a second thread per
// connection, and a lab that counts context switches would charge that
// hand-off to the strategy (seed 002's blocking accept would look ten
// times dearer than EPOLLEXCLUSIVE; it is not).
//
// A front answers what the connection brought with it — with deferred
// accept, the first request is there when accept4 returns — and the loop
// adopts a connection only if it is still open afterwards: a keep-alive
// client waiting to send its next request, an answer the socket could not
// take whole, a request still arriving, a close that lingers. A front never
// waits for a client: its reads and sends are non-blocking, and what would
// block is the loop's. So a slow or silent client holds the accepting
// thread no longer than one read.
//
// A front is an Engine without a loop: the same request and answer code,
// with a file cache of its own (a cache belongs to one thread and needs no
// lock). Fronts are made as accepting threads need them, at most one per
// thread, and kept for the next connection.

// Add hands the engine a connection its strategy accepted, from any
// goroutine but the loop's: the calling thread answers what it brought
// (see above), and the loop takes it only if it stays open.
func (e *Engine) Add(fd int) {
	if e.cfg.TLS != nil {
		e.startHandshake(fd) // the handshake's goroutine, then the loop
		return
	}
	f := e.takeFront()
	if f == nil { // no front could be made (the root is gone): the loop serves it
		e.mu.Lock()
		e.pending = append(e.pending, fd)
		e.pokeLocked()
		e.mu.Unlock()
		return
	}
	f.tick() // the front's clock: the answer's Date, durations, and this
	f.busySince.Store(f.now.UnixNano())
	f.serveFirst(fd)
	f.busySince.Store(0)
	e.mu.Lock()
	e.fronts = append(e.fronts, f)
	e.mu.Unlock()
}

// frontStuck reports whether a front has been answering one connection for
// more than a second — a blocking open, a stalled access log — so the
// loop's clock stops beating for the worker (see tick): a worker whose
// accepting thread is stuck serves no one new, and the master's
// --worker-timeout must replace it as it would a stuck loop.
func (e *Engine) frontStuck(now time.Time) bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	for _, f := range e.made {
		if since := f.busySince.Load(); since != 0 && now.UnixNano()-since > int64(time.Second) {
			return true
		}
	}
	return false
}

// takeFront returns an idle front, or makes one.
func (e *Engine) takeFront() *Engine {
	e.mu.Lock()
	if n := len(e.fronts); n > 0 {
		f := e.fronts[n-1]
		e.fronts = e.fronts[:n-1]
		e.mu.Unlock()
		return f
	}
	e.mu.Unlock()
	files, err := newFileCache(e.cfg.Root, e.cfg.FollowSymlinks)
	if err != nil {
		return nil
	}
	f := &Engine{cfg: e.cfg, ep: -1, wake: -1, files: files, conns: map[int]*conn{},
		draining: e.draining, loop: e}
	e.mu.Lock()
	e.made = append(e.made, f)
	e.mu.Unlock()
	return f
}

// serveFirst answers what the connection fd brought, on the calling
// thread, and passes it to the loop if it is still open afterwards. The
// front's clock has been read (tick).
func (f *Engine) serveFirst(fd int) {
	if !f.cfg.Nonblocking {
		if err := unix.SetNonblock(fd, true); err != nil {
			f.drop(fd)
			return
		}
	}
	if f.now.Sub(f.lastCheck) >= 500*time.Millisecond {
		f.files.refreshRoot() // the loop's sweep logs a root that changed or went
		f.lastCheck = f.now
	}
	c := f.newConn(fd)
	f.conns[fd] = c
	f.turn++ // a share of its own for each connection (turnRead)
	f.onReadable(c)
	if f.conns[fd] != c {
		return // answered and closed
	}
	delete(f.conns, fd)
	if c.file != nil {
		// The file's descriptor belongs to this front's cache: the loop
		// gets a copy that is its own and closes when the answer ends.
		c.file = f.files.detach(c.file)
		if c.file == nil {
			f.conns[fd] = c
			f.closeConn(c)
			return
		}
	}
	e := f.loop
	e.mu.Lock()
	e.adopted = append(e.adopted, c)
	e.pokeLocked()
	e.mu.Unlock()
}

// adopt takes over a connection a front answered first, on the loop's
// thread, where the front left it: idle between requests, with a request
// partly read, with an answer partly sent, or lingering.
func (e *Engine) adopt(c *conn) {
	e.conns[c.fd] = c
	c.turn = 0 // the front's turns are not the loop's
	if e.atLimit() {
		e.closeConn(c)
		return
	}
	c.since = e.now
	// Edge-triggered: adding reports what is ready already, so whatever
	// arrived or drained since the front let go is not missed.
	e.register(c, c.writing())
}
