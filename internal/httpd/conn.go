//go:build linux

package httpd

import (
	"crypto/tls"
	"time"

	"github.com/herd-run/herd/internal/shm"
	"golang.org/x/sys/unix"
)

// One connection's life in the native engine: reading requests (and the
// bodies that are dropped), sending answers, and closing — at once when
// everything the client sent was read, lingering when it may still be
// sending.

// A connection that closes while its client may still be sending lingers
// (nginx's lingering_close): it is read and dropped until the client
// closes, falls silent for lingerTimeout, or lingerTime has passed
// (nginx's lingering_timeout and lingering_time).
const (
	lingerTimeout = 5 * time.Second
	lingerTime    = 30 * time.Second
)

// A turn of the loop gives each connection it serves a share: at most
// turnRead bytes read and turnSend bytes sent. A connection that uses its
// share up waits for the next turn, after every other connection ready in
// this one, and the loop's wait does not block while one waits (again).
// Without the shares a client that kept its socket busy held the loop for
// as long as it liked, and every other client of the worker waited: by
// pipelining requests with large heads, by sending a body to a lingering
// close, or by reading a large file as fast as loopback carries it. nginx
// bounds the sending side the same way (sendfile_max_chunk, 2 MiB by
// default since 1.21.4: without it one fast connection may seize the
// worker); the reading share is four of the largest heads a client may
// send.
//
// Over TLS a record costs more than its bytes — a decryption, and the
// frames or request in it handled on their own — and a client chooses how
// small its records are: an HTTP/2 client that sent each PING in a record
// of its own (17 bytes) had some 3,800 records handled per share, and the
// loop's other clients waited 50 ms and more each turn. So each record read
// is charged tlsRecordCost beside its bytes.
const (
	turnRead      = 4 * MaxHeaderBytes
	turnSend      = 2 << 20
	tlsRecordCost = 1 << 10
)

// conn is one client connection.
type conn struct {
	fd          int
	req         request // the request being answered; parsed in place
	parsed      bool    // req holds the head at the start of rbuf; its body may still be arriving
	bodyNext    int     // a chunked body is scanned up to here (chunkedBody's next)
	continued   bool    // "100 Continue" was sent for req
	interim     bool    // out holds an interim answer (100): the request goes on after it
	dry         bool    // the last read came back short: nothing more until EPOLLIN
	registered  bool    // in the loop's epoll set
	refused     bool    // answered with an error page: what the client sent was not all read
	outWatch    bool    // EPOLLOUT is in the connection's epoll mask
	head        bool    // the request being answered is HEAD
	lingering   bool    // answered and shut down for writing: reading and dropping until the client closes
	rbuf        []byte  // read, not yet parsed
	out         []byte  // response bytes not yet sent (head, or head and small body)
	outOff      int
	headLen     int   // bytes of out that are the head; the rest is body
	file        *file // body to send with sendfile, from off to end
	off, end    int64
	fileSent    int64 // body bytes sent from file
	close       bool  // close once the response is sent
	eof         bool  // the client has closed its side
	since       time.Time
	lingerStart time.Time
	requests    int
	turn        uint64 // the loop's turn readLeft and sendLeft are for
	readLeft    int    // of this turn's share (turnRead)
	sendLeft    int    // of this turn's share (turnSend)
	again       bool   // used its share: queued for the next turn
	answerLog          // of the answer being sent
	peer        string // the client's address, once the access log asked

	// A TLS connection's (tls.go): the bytes pass through crypto/tls.
	tls        *tls.Conn
	sock       *tlsSocket
	sealed     int     // bytes of out sealed into records
	fileSealed int64   // file bytes sealed, not yet counted as sent
	h2         *h2conn // HTTP/2 (h2.go), negotiated by ALPN
}

// consumed reports whether everything the client sent has been read and
// used: the last read was short and nothing is left in the buffer.
func (c *conn) consumed() bool { return c.dry && len(c.rbuf) == 0 && !c.refused }

func (c *conn) writing() bool { return c.outOff < len(c.out) || c.file != nil }

func (e *Engine) serve(c *conn, events uint32) {
	if events&(unix.EPOLLERR|unix.EPOLLHUP) != 0 {
		e.closeConn(c)
		return
	}
	if c.lingering {
		e.discard(c)
		return
	}
	if events&unix.EPOLLRDHUP != 0 {
		c.eof = true
	}
	if events&(unix.EPOLLIN|unix.EPOLLRDHUP) != 0 {
		c.dry = false
		if c.sock != nil {
			c.sock.dry = false
		}
	}
	if c.h2 != nil {
		e.serveH2(c)
		return
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
	if c.lingering {
		e.discard(c)
		return
	}
	for {
		if c.writing() {
			return // the rest waits in the buffer until this answer is out
		}
		if !c.parsed && len(c.rbuf) > 0 {
			// The head is parsed once; a body that arrives in pieces does
			// not make it parsed again.
			complete, perr := parseInto(&c.req, c.rbuf)
			if perr != nil {
				e.fail(c, perr)
				return
			}
			c.parsed, c.bodyNext, c.continued = complete, 0, false
		}
		if c.parsed {
			req := &c.req
			if req.hasBody() && !isGetOrHead(req.method) {
				// Refused whatever the body holds (405): answer now, without
				// waiting for it or asking for it, and close — lingering, so
				// the body still coming is read and dropped, not reset.
				req.keep = false
				c.refused = true
				e.respond(c, req)
				c.parsed, c.rbuf = false, c.rbuf[:0]
				e.flush(c)
				return
			}
			used, perr := e.requestEnd(c)
			if perr != nil {
				e.fail(c, perr)
				return
			}
			if used == 0 { // the body is still arriving
				if req.expect && !c.continued {
					// The client waits for this before it sends the body
					// (RFC 9110 10.1.1).
					c.continued = true
					if !e.interim(c, "HTTP/1.1 100 Continue\r\n\r\n") {
						return
					}
				}
				if !e.read(c) {
					return
				}
				continue
			}
			e.respond(c, req)
			c.parsed = false
			c.rbuf = c.rbuf[:copy(c.rbuf, c.rbuf[used:])]
			if !e.flush(c) {
				return
			}
			continue
		}
		if !e.read(c) {
			return
		}
	}
}

func isGetOrHead(method []byte) bool { return string(method) == "GET" || string(method) == "HEAD" }

// requestEnd returns how many bytes of the buffer the parsed request uses,
// head and body, or 0 while its body has not arrived whole. The body is
// dropped: a static server has no use for it.
func (e *Engine) requestEnd(c *conn) (int, *parseError) {
	req := &c.req
	switch {
	case req.chunked:
		next, end, perr := chunkedBody(c.rbuf[req.size:], c.bodyNext)
		c.bodyNext = next
		if perr != nil || end == 0 {
			return 0, perr
		}
		return req.size + end, nil
	case int64(len(c.rbuf)) < int64(req.size)+req.length:
		return 0, nil
	}
	return req.size + int(req.length), nil
}

// interim sends an informational answer ahead of the final one. false:
// the socket is full (EPOLLOUT goes on with it) or the connection closed.
func (e *Engine) interim(c *conn, answer string) bool {
	c.out = append(c.out[:0], answer...)
	c.outOff, c.headLen, c.interim = 0, len(c.out), true
	return e.flush(c)
}

// read appends what the socket has to the buffer. false: nothing more now
// (EAGAIN, or a short read that emptied the socket), or the connection was
// closed.
func (e *Engine) read(c *conn) bool {
	if c.dry {
		// The last read returned less than it asked for: the socket was
		// empty then, and edge-triggered epoll reports anything new. A read
		// now would only find EAGAIN (nginx skips it the same way).
		if c.eof && len(c.rbuf) == 0 {
			e.closeConn(c)
		}
		return false
	}
	if e.shareUsed(c, &c.readLeft) {
		return false
	}
	if len(c.rbuf) == cap(c.rbuf) {
		if cap(c.rbuf) >= MaxHeaderBytes+MaxBody {
			e.fail(c, refuse(431, "Request Header Fields Too Large"))
			return false
		}
		// A parsed head's slices point into the old buffer, which still
		// holds it unchanged: they stay valid until the request is answered.
		grown := make([]byte, len(c.rbuf), cap(c.rbuf)*2)
		copy(grown, c.rbuf)
		c.rbuf = grown
	}
	var n, charge int
	var err error
	if c.tls != nil {
		n, charge, err = c.readTLS(c.rbuf[len(c.rbuf):cap(c.rbuf)], c.readLeft)
	} else {
		n, err = rawRead(c.fd, c.rbuf[len(c.rbuf):cap(c.rbuf)])
		charge = n
	}
	switch {
	case err == unix.EAGAIN:
		// Over TLS, only now is everything the client sent known to be
		// read: crypto/tls may hold records after a short read.
		c.dry = c.tls != nil
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
	c.dry = c.tls == nil && n < cap(c.rbuf)-len(c.rbuf)
	c.rbuf = c.rbuf[:len(c.rbuf)+n]
	c.readLeft -= charge
	return true
}

// flush sends what is pending. false: the socket is full (EPOLLOUT will
// call again) or the connection was closed.
func (e *Engine) flush(c *conn) bool {
	if c.tls != nil {
		return e.flushTLS(c)
	}
	for c.outOff < len(c.out) {
		flags := unix.MSG_NOSIGNAL
		if c.file != nil || (c.close && c.consumed()) {
			// The body follows: one segment for head and body start. Or
			// close follows: it pushes what MSG_MORE held back, with the
			// FIN in the same segment (nginx gets that from TCP_CORK; a
			// FIN of its own is two more packets per connection). Not if
			// the client may have sent more: that connection lingers.
			flags |= unix.MSG_MORE
		}
		if e.shareUsed(c, &c.sendLeft) {
			return false
		}
		n, err := rawSend(c.fd, c.out[c.outOff:], flags)
		if err == unix.EAGAIN {
			return e.watchWrites(c)
		}
		if err != nil && err != unix.EINTR {
			e.closeConn(c)
			return false
		}
		c.sendLeft -= n
		c.outOff += n
		c.since = e.now
		e.cfg.Stats.Add(shm.BytesOut, int64(n))
	}
	for c.file != nil && c.off < c.end {
		if e.shareUsed(c, &c.sendLeft) {
			return false
		}
		off := c.off
		n, err := e.sendfile(c.fd, c.file.fd, &off, int(min(c.end-c.off, int64(c.sendLeft))))
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
		c.fileSent += int64(n)
		c.sendLeft -= n
		c.since = e.now
		e.cfg.Stats.Add(shm.BytesOut, int64(n))
	}
	return e.answered(c)
}

// answered ends an answer that was sent whole, and closes the connection
// if it is to close. false: the connection was closed.
func (e *Engine) answered(c *conn) bool {
	if c.interim {
		c.interim = false
		c.out, c.outOff, c.sealed = c.out[:0], 0, 0
		return true
	}
	e.finishAnswer(c)
	if c.file != nil {
		e.files.release(c.file)
		c.file = nil
	}
	c.out, c.outOff, c.sealed = c.out[:0], 0, 0
	c.since = e.now
	if c.close || e.draining.Load() {
		if c.tls != nil {
			if !e.settleTLS(c) {
				return false
			}
			e.closeNotify(c)
		}
		if !c.consumed() {
			e.linger(c)
		} else {
			e.closeConn(c)
		}
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

// linger closes a connection whose client may still be sending: a refused
// request, a body not read, requests pipelined behind a "Connection:
// close". close(2) with unread data answers with a reset, and a reset can
// destroy the answer before the client has read it. So, as nginx's
// lingering close, the write side is shut down (the answer, then a FIN)
// and whatever still comes is read and dropped until the client closes.
func (e *Engine) linger(c *conn) {
	if err := unix.Shutdown(c.fd, unix.SHUT_WR); err != nil {
		e.closeConn(c)
		return
	}
	c.lingering, c.since, c.lingerStart = true, e.now, e.now
	c.rbuf, c.parsed = c.rbuf[:0], false
	if !c.registered && !e.register(c, false) {
		return
	}
	e.discard(c)
}

// discard reads and drops what a lingering connection's client sends, and
// closes it at the client's FIN (or an error).
func (e *Engine) discard(c *conn) {
	buf := c.rbuf[:cap(c.rbuf)]
	for !e.shareUsed(c, &c.readLeft) {
		n, err := rawRead(c.fd, buf)
		switch {
		case err == unix.EAGAIN:
			return
		case err == unix.EINTR:
			continue
		case err != nil || n == 0:
			e.closeConn(c)
			return
		}
		c.readLeft -= n
		c.since = e.now
	}
}

// shareUsed reports whether c has used up the part of its share for this
// turn that left counts (its readLeft or sendLeft; see turnRead), and if
// so queues it for the next turn. A connection's first look in a turn
// gives it a new share.
func (e *Engine) shareUsed(c *conn, left *int) bool {
	if c.turn != e.turn {
		c.turn, c.readLeft, c.sendLeft = e.turn, turnRead, turnSend
	}
	if *left > 0 {
		return false
	}
	e.again(c)
	return true
}

// yieldReads spends what is left of c's read share in this turn: c reads
// nothing more until the next, for which it is queued.
func (e *Engine) yieldReads(c *conn) {
	if c.turn != e.turn {
		c.turn, c.sendLeft = e.turn, turnSend
	}
	c.readLeft = 0
	e.again(c)
}

// again queues c to be served in the next turn of the loop, as if its
// socket had reported both readable and writable: what it stopped at goes
// on from there. A front queues nothing: it hands the connection to the
// loop, whose registration reports what is ready (adopt).
func (e *Engine) again(c *conn) {
	if e.loop != nil || c.again {
		return
	}
	c.again = true
	e.next = append(e.next, c)
}

func (e *Engine) closeConn(c *conn) {
	if _, ok := e.conns[c.fd]; !ok {
		return
	}
	e.finishAnswer(c) // an answer cut short is counted and logged with what was sent
	if c.h2 != nil {
		e.closeH2(c)
	}
	delete(e.conns, c.fd)
	if c.file != nil {
		e.files.release(c.file)
		c.file = nil
	}
	// Under fdpass (descriptors not accepted here) the master may still
	// hold a copy of the socket, until it sees this one taken, and close
	// alone ends nothing while another process holds one: shut the
	// connection down, so the FIN goes now rather than when the master
	// closes its copy, and take it out of the epoll set explicitly, or the
	// stale entry would report events under a descriptor number a new
	// connection reuses. Accepted here, close is enough.
	if e.cfg.Passed {
		unix.Shutdown(c.fd, unix.SHUT_RDWR)
		if c.registered {
			rawEpollCtl(e.ep, unix.EPOLL_CTL_DEL, c.fd, nil)
		}
	}
	rawClose(c.fd)
	e.cfg.Stats.Add(shm.Active, -1)
	c.tls, c.sock, c.h2 = nil, nil, nil
	// One queued for the next turn (again) is not reused: the queue knows
	// it by its pointer.
	if len(e.free) < 1024 && cap(c.rbuf) <= 8<<10 && cap(c.out) <= 8<<10 && !c.again {
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
		*c = conn{fd: fd, since: e.now, rbuf: c.rbuf[:0], out: c.out[:0], answerLog: answerLog{logLine: c.logLine[:0]}}
		return c
	}
	return &conn{fd: fd, since: e.now, rbuf: make([]byte, 0, 2048), out: make([]byte, 0, 512)}
}

// fail answers a request that cannot be read and closes the connection,
// saying so ("Connection: close"), lingering for what the client still
// sends.
func (e *Engine) fail(c *conn, perr *parseError) {
	c.rbuf, c.parsed = c.rbuf[:0], false
	c.refused, c.close = true, true
	c.head = false // the request could not be read: its method is unknown
	e.errorPage(c, perr.status, perr.reason, nil)
	e.account(c, nil)
	e.flush(c)
}
