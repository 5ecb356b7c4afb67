//go:build linux

package worker

import (
	"bufio"
	"context"
	"crypto/tls"
	"io"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/herd-run/herd/internal/httpd"
	"github.com/herd-run/herd/internal/shm"
)

// The nethttp engine serves the user's http.Handler with net/http.Server over
// a net.Listener that the accept strategy feeds.

// httpEngine is net/http as a worker's engine.
type httpEngine struct {
	srv      *http.Server
	ln       *handoff
	st       *shm.Record
	log      *slog.Logger
	draining atomic.Bool
	closed   chan struct{}
	once     sync.Once
	tls      *tls.Config  // if set, connections are TLS (serveTLS)
	endBase  func()       // cancels the server's base context
	inflight atomic.Int64 // handlers running
	freshN   atomic.Int64 // connections whose first request has not been read
}

// freshFlag is the flag on a connection that says its first request has
// not been read yet: a field of countedConn, under crypto/tls's if any (a
// map of connections would cost a lookup at every request's two state
// changes).
func freshFlag(c net.Conn) *atomic.Bool {
	if t, ok := c.(*tls.Conn); ok {
		c = t.NetConn()
	}
	if cc, ok := c.(*countedConn); ok {
		return &cc.fresh
	}
	return nil
}

func newHTTPEngine(addr net.Addr, h http.Handler, configure func(*http.Server), st *shm.Record, log *slog.Logger) *httpEngine {
	srv := &http.Server{ErrorLog: slog.NewLogLogger(log.Handler(), slog.LevelWarn)}
	if configure != nil {
		configure(srv)
	}
	e := &httpEngine{srv: srv, st: st, log: log}
	srv.Handler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		e.inflight.Add(1)
		defer e.inflight.Add(-1)
		h.ServeHTTP(w, r)
	})
	// The server's base context — every request's context derives from
	// it — ends when serving ends: after the drain, or when the drain
	// timeout or a fast stop cuts it. Requests in flight keep theirs until
	// then, as a program's BaseContext too.
	base, cancel := context.WithCancel(context.Background())
	if user := srv.BaseContext; user != nil {
		srv.BaseContext = func(l net.Listener) context.Context {
			ctx, stop := context.WithCancel(user(l))
			context.AfterFunc(base, stop)
			return ctx
		}
	} else {
		srv.BaseContext = func(net.Listener) context.Context { return base }
	}
	// Connections whose first request has not been read yet are counted,
	// so the drain knows when http.Server.Shutdown can no longer drop one
	// (see Run).
	user := srv.ConnState
	srv.ConnState = func(c net.Conn, state http.ConnState) {
		if f := freshFlag(c); f != nil {
			if state == http.StateNew {
				f.Store(true)
				e.freshN.Add(1)
			} else if f.CompareAndSwap(true, false) {
				e.freshN.Add(-1)
			}
		}
		if user != nil {
			user(c, state)
		}
	}
	e.ln, e.closed, e.endBase = newHandoff(addr), make(chan struct{}), cancel
	return e
}

// freshWait bounds how long a drain waits for connections to send their
// first request before it calls Shutdown: net/http's own Shutdown treats a
// connection that has sent nothing for 5s as idle.
const freshWait = 5 * time.Second

// Run serves until drained — every connection the worker accepted is
// closed — or closed.
func (e *httpEngine) Run() error {
	defer e.endBase()
	var ln net.Listener = e.ln
	if e.tls != nil {
		ln = tls.NewListener(e.ln, e.tls)
	}
	err := e.srv.Serve(ln)
	if !e.draining.Load() {
		return err
	}
	t := time.NewTicker(10 * time.Millisecond)
	defer t.Stop()
	// Run what the program registered with RegisterOnShutdown (closing
	// hijacked and upgraded connections, which the server no longer
	// tracks) through http.Server.Shutdown — but only once no accepted
	// connection is still to send its first request: Shutdown makes such
	// a connection hang up without an answer when its request arrives.
	// With keep-alive off, a connection being answered closes after its
	// answer and never reads another. Shutdown then closes what is idle
	// and waits for the rest, as the loop below does too.
	for end := time.Now().Add(freshWait); e.freshN.Load() > 0 && time.Now().Before(end); {
		select {
		case <-e.closed:
			return nil
		case <-t.C:
		}
	}
	ctx, stop := context.WithCancel(context.Background())
	defer stop()
	go e.srv.Shutdown(ctx)
	for e.st.Load(shm.Active) > 0 {
		select {
		case <-e.closed:
			return nil
		case <-t.C:
		}
	}
	return nil
}

// Add wraps an accepted descriptor for net/http.
func (e *httpEngine) Add(fd int) {
	c, err := httpd.NetConn(fd) // a freshly accepted, non-blocking descriptor
	if err != nil {
		e.st.Add(shm.Active, -1)
		e.log.Warn("wrap accepted connection", "err", err)
		return
	}
	e.ln.push(newCountedConn(c, e.st))
}

// Drain finishes what was accepted. It does not use http.Server.Shutdown:
// Shutdown makes a connection that was accepted but whose request has not
// been read yet hang up without an answer (net/http's conn.serve returns
// when it finds the server shutting down), which is the very drop a reload
// must not cause. Instead keep-alive is turned off — idle connections are
// closed, and every request already accepted, or read from now on, is
// answered with "Connection: close" — the hand-off hands out what it still
// holds and then reports closed, and Run waits for the connection count to
// reach zero, running the program's RegisterOnShutdown functions once it
// safely can (see Run). The strategy has stopped before (no more Adds).
func (e *httpEngine) Drain() {
	e.draining.Store(true)
	e.srv.SetKeepAlivesEnabled(false)
	e.ln.finish()
}

// Close ends every connection at once.
// closeGrace is how long Close waits for handlers whose request contexts
// it has just cancelled to return.
const closeGrace = time.Second

// Close ends every connection at once. The requests' contexts end first,
// and their handlers get closeGrace to return — to finish what they were
// doing on the way out — before the worker goes on to exit.
func (e *httpEngine) Close() {
	e.endBase()
	e.srv.Close()
	for end := time.Now().Add(closeGrace); e.inflight.Load() > 0 && time.Now().Before(end); {
		time.Sleep(5 * time.Millisecond)
	}
	e.once.Do(func() { close(e.closed) })
}

// handoff is the net.Listener between a strategy and http.Server: the
// strategy pushes accepted connections, Serve pops them.
//
// Stopping is done in an order that loses nothing: the strategy stops and
// returns (no more pushes), then finish() makes Accept hand out what is left
// and only then report closed. Serve has registered a connection with the
// server by the time it calls Accept again, so once Serve returns every
// accepted connection is known to Server.Shutdown, which waits for it.
type handoff struct {
	conns    chan net.Conn
	finished chan struct{}
	once     sync.Once
	addr     net.Addr
	taken    atomic.Uint64 // connections Accept has handed to the server
}

func newHandoff(addr net.Addr) *handoff {
	return &handoff{conns: make(chan net.Conn, 64), finished: make(chan struct{}), addr: addr}
}

func (h *handoff) push(c net.Conn) { h.conns <- c }

func (h *handoff) Accept() (net.Conn, error) {
	select {
	case c := <-h.conns:
		h.taken.Add(1)
		return c, nil
	case <-h.finished:
		select {
		case c := <-h.conns:
			h.taken.Add(1)
			return c, nil
		default:
			return nil, net.ErrClosed
		}
	}
}

// serving returns the heartbeat's test of net/http's serving path: true
// while the server takes what the strategy hands it — nothing waits, or
// something was taken since the last call. A Serve loop that stopped
// taking connections stops the heartbeat, and the master replaces the
// worker. (A handler stuck on one request holds only its own goroutine,
// and does not count.)
func (h *handoff) serving() func() bool {
	var last uint64
	return func() bool {
		n := h.taken.Load()
		ok := n != last || len(h.conns) == 0
		last = n
		return ok
	}
}

// finish: no more pushes will come; Accept returns the rest, then ErrClosed.
func (h *handoff) finish() { h.once.Do(func() { close(h.finished) }) }

// Close is called by http.Server.Shutdown, after finish.
func (h *handoff) Close() error { h.finish(); return nil }

func (h *handoff) Addr() net.Addr { return h.addr }

// countedConn keeps the scoreboard's Active and BytesOut fields. It must
// keep ReadFrom reachable: net/http's response writer hands a file body to
// the connection's ReadFrom, which is where sendfile(2) happens; hiding it
// behind a plain Write wrapper would silently copy through user space.
type countedConn struct {
	net.Conn
	st    *shm.Record
	once  sync.Once
	fresh atomic.Bool // the first request has not been read (freshFlag)
}

// newCountedConn wraps a connection the strategy has already counted as
// active (it does so the moment accept returns); Close counts it out.
func newCountedConn(c net.Conn, st *shm.Record) *countedConn {
	return &countedConn{Conn: c, st: st}
}

func (c *countedConn) Write(p []byte) (int, error) {
	n, err := c.Conn.Write(p)
	c.st.Add(shm.BytesOut, int64(n))
	return n, err
}

func (c *countedConn) ReadFrom(r io.Reader) (int64, error) {
	n, err := readFrom(c.Conn, r)
	c.st.Add(shm.BytesOut, n)
	return n, err
}

// readFrom copies src to w through w's own ReadFrom if it has one (where
// sendfile happens), else through its Write alone: io.Copy on w itself would
// find the wrapper's ReadFrom again.
func readFrom(w io.Writer, src io.Reader) (int64, error) {
	if rf, ok := w.(io.ReaderFrom); ok {
		return rf.ReadFrom(src)
	}
	return io.Copy(struct{ io.Writer }{w}, src)
}

func (c *countedConn) Close() error {
	c.once.Do(func() { c.st.Add(shm.Active, -1) })
	return c.Conn.Close()
}

// countRequests counts every answer once its handler has returned — in
// Requests, by status class and duration — writes its access log line
// (if alog is set), and tells after (if set) the new count.
func countRequests(h http.Handler, st *shm.Record, alog *accessLog, after func(n uint64)) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		aw := &answerWriter{ResponseWriter: w}
		h.ServeHTTP(aw.outer(), r)
		n := st.Add(shm.Requests, 1)
		if aw.status == 0 {
			aw.status = http.StatusOK
		}
		st.Observe(aw.status, time.Since(start))
		if alog != nil {
			alog.log(r, aw.status, aw.sent, start)
		}
		if after != nil {
			after(n)
		}
	})
}

// answerWriter notes what a handler answers: the status and the body bytes.
//
// A handler must find on it every optional interface net/http's own
// ResponseWriters have: http.Flusher, which is how net/http's documentation
// streams (w.(http.Flusher)); http.Hijacker on HTTP/1 and http.Pusher on
// HTTP/2, which WebSocket and push code asks for the same way; the
// deprecated http.CloseNotifier, which gin's streaming still calls;
// io.ReaderFrom, where sendfile(2) happens (a plain Write wrapper would copy
// every file through user space); io.StringWriter; and Unwrap, for
// http.ResponseController. Hijack and Push are on variants (outer), so that
// a writer offers them only where the one it wraps does.
type answerWriter struct {
	http.ResponseWriter
	status int   // 0 until the head is sent (1xx answers do not count)
	sent   int64 // body bytes
}

// outer is aw as the handler sees it, with Hijack or Push if the writer it
// wraps has them.
func (aw *answerWriter) outer() http.ResponseWriter {
	switch aw.ResponseWriter.(type) {
	case http.Hijacker:
		return hijackableWriter{aw}
	case http.Pusher:
		return pushableWriter{aw}
	}
	return aw
}

func (aw *answerWriter) WriteHeader(code int) {
	if aw.status == 0 && code >= 200 {
		aw.status = code
	}
	aw.ResponseWriter.WriteHeader(code)
}

func (aw *answerWriter) Write(p []byte) (int, error) {
	if aw.status == 0 {
		aw.status = http.StatusOK
	}
	n, err := aw.ResponseWriter.Write(p)
	aw.sent += int64(n)
	return n, err
}

func (aw *answerWriter) WriteString(s string) (int, error) {
	if aw.status == 0 {
		aw.status = http.StatusOK
	}
	n, err := io.WriteString(aw.ResponseWriter, s)
	aw.sent += int64(n)
	return n, err
}

func (aw *answerWriter) ReadFrom(src io.Reader) (int64, error) {
	if aw.status == 0 {
		aw.status = http.StatusOK
	}
	n, err := readFrom(aw.ResponseWriter, src)
	aw.sent += n
	return n, err
}

// Flush sends what is buffered, the head first if it was not sent.
func (aw *answerWriter) Flush() {
	if aw.status == 0 {
		aw.status = http.StatusOK
	}
	if f, ok := aw.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

// CloseNotify is the deprecated http.CloseNotifier's, which both of
// net/http's ResponseWriters still have and code still asks for: gin's
// Context.Stream (its SSE) calls it through a type assertion that panics
// without it.
func (aw *answerWriter) CloseNotify() <-chan bool {
	//lint:ignore SA1019 gin and older handlers still ask for it
	return aw.ResponseWriter.(http.CloseNotifier).CloseNotify()
}

func (aw *answerWriter) Unwrap() http.ResponseWriter { return aw.ResponseWriter }

// hijackableWriter is an answerWriter over an HTTP/1 ResponseWriter.
type hijackableWriter struct{ *answerWriter }

func (w hijackableWriter) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	return w.ResponseWriter.(http.Hijacker).Hijack()
}

// pushableWriter is an answerWriter over an HTTP/2 ResponseWriter.
type pushableWriter struct{ *answerWriter }

func (w pushableWriter) Push(target string, opts *http.PushOptions) error {
	return w.ResponseWriter.(http.Pusher).Push(target, opts)
}
