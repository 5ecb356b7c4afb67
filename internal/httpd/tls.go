//go:build linux

package httpd

import (
	"crypto/tls"
	"io"
	"net"
	"sync"
	"time"

	"github.com/herd-run/herd/internal/shm"
	"golang.org/x/sys/unix"
)

// TLS in the native engine (Config.TLS). A connection on a TLS listener
// starts with a handshake, which crypto/tls runs as a sequence of blocking
// calls: it runs on a goroutine of its own, over a duplicate of the socket
// in Go's netpoller, so a slow or silent client holds no thread, and the
// loop never waits for a signature. Then the socket is the loop's, as a
// plain connection is. crypto/tls reads records through tlsSocket,
// non-blocking, from the descriptor — a read that would block is a
// temporary net.Error, which crypto/tls does not hold against the
// connection — and writes the records it seals into tlsSocket's buffer,
// which the loop sends as the socket takes it. Requests are parsed and
// answered by the same code as on plain connections; only the bytes pass
// through crypto/tls, and a file body is read (pread) and sealed in records
// of up to 16 KiB where a plain connection has sendfile.
//
// nginx serves TLS in its loop the same way, with OpenSSL's non-blocking
// SSL_read and SSL_write; what Go's crypto/tls cannot do is resume a
// handshake that would block, hence the goroutine for that part only.
//
// A connection that negotiates HTTP/2 by ALPN is the loop's too (h2.go).

// tlsSocket is the net.Conn under a native TLS connection.
type tlsSocket struct {
	nc    net.Conn // the duplicate in Go's netpoller, for the handshake; nil once the loop owns fd
	fd    int      // the socket, the loop's after the handshake
	dry   bool     // the last read came back short or would block: nothing more until EPOLLIN
	out   []byte   // sealed records not yet sent (the loop's)
	sent  int      // bytes of out sent
	stats *shm.Record
	once  sync.Once
}

// wouldBlock is a read on an empty socket. crypto/tls keeps the record it
// was reading, and the connection, after a temporary net.Error.
type wouldBlock struct{}

func (wouldBlock) Error() string   { return "read would block" }
func (wouldBlock) Timeout() bool   { return true }
func (wouldBlock) Temporary() bool { return true }

func (s *tlsSocket) Read(p []byte) (int, error) {
	if s.nc != nil {
		return s.nc.Read(p)
	}
	if s.dry {
		// The socket was emptied by the last read, and edge-triggered
		// epoll reports anything new: a read now would find EAGAIN.
		return 0, wouldBlock{}
	}
	for {
		n, err := rawRead(s.fd, p)
		switch {
		case err == unix.EINTR:
			continue
		case err == unix.EAGAIN:
			s.dry = true
			return 0, wouldBlock{}
		case err != nil:
			return 0, &net.OpError{Op: "read", Net: "tcp", Err: err}
		case n == 0:
			return 0, io.EOF
		}
		s.dry = n < len(p)
		return n, nil
	}
}

// Write takes a sealed record: the loop sends it (flushTLS).
func (s *tlsSocket) Write(p []byte) (int, error) {
	if s.nc != nil {
		n, err := s.nc.Write(p)
		s.stats.Add(shm.BytesOut, int64(n))
		return n, err
	}
	s.out = append(s.out, p...)
	return len(p), nil
}

// Close ends a handshake that failed: once the loop owns the socket it
// closes it itself.
func (s *tlsSocket) Close() error {
	if s.nc == nil {
		return nil
	}
	s.once.Do(func() { s.stats.Add(shm.Active, -1) })
	return s.nc.Close()
}

func (s *tlsSocket) LocalAddr() net.Addr {
	if s.nc == nil {
		return LocalAddr(s.fd)
	}
	return s.nc.LocalAddr()
}

func (s *tlsSocket) RemoteAddr() net.Addr {
	if s.nc == nil {
		a, _ := sockAddr(unix.Getpeername(s.fd))
		return a
	}
	return s.nc.RemoteAddr()
}

// The deadlines are the netpoller's; the loop keeps its own timers.
func (s *tlsSocket) SetDeadline(t time.Time) error {
	if s.nc == nil {
		return nil
	}
	return s.nc.SetDeadline(t)
}

func (s *tlsSocket) SetReadDeadline(t time.Time) error {
	if s.nc == nil {
		return nil
	}
	return s.nc.SetReadDeadline(t)
}

func (s *tlsSocket) SetWriteDeadline(t time.Time) error {
	if s.nc == nil {
		return nil
	}
	return s.nc.SetWriteDeadline(t)
}

// handshaken is a connection whose handshake is done, for the loop.
type handshaken struct {
	fd   int
	tls  *tls.Conn
	sock *tlsSocket
}

// startHandshake begins serving a TLS connection: its handshake, on a
// goroutine of its own. From any goroutine.
//
// Handshakes under way are bounded by WorkerConnections, as the loop's
// connections are: each holds a goroutine and two descriptors, and a
// client that sends a byte and stalls holds them until the header timeout.
func (e *Engine) startHandshake(fd int) {
	s := &tlsSocket{fd: fd, stats: e.cfg.Stats}
	e.mu.Lock()
	refuse := e.stopped || len(e.shaking) >= e.cfg.WorkerConnections
	if !refuse {
		if e.shaking == nil {
			e.shaking = map[*tlsSocket]net.Conn{}
		}
		e.shaking[s] = nil // its netpoller connection comes with the goroutine
		e.shakers.Add(1)
	}
	e.mu.Unlock()
	if refuse {
		e.drop(fd)
		return
	}
	go e.handshake(s)
}

// stopHandshakes ends the handshakes under way, for a loop that is
// ending, and waits for their goroutines: each closes its connection and
// counts it out.
func (e *Engine) stopHandshakes() {
	e.mu.Lock()
	e.stopped = true
	for _, nc := range e.shaking {
		if nc != nil {
			nc.Close()
		}
	}
	e.mu.Unlock()
	e.shakers.Wait()
}

// handshake runs s's TLS handshake, bounded by the header timeout, and
// hands the connection to the loop.
func (e *Engine) handshake(s *tlsSocket) {
	defer e.shakers.Done()
	fd := s.fd
	var done *handshaken
	defer func() {
		e.mu.Lock()
		delete(e.shaking, s)
		if done != nil && e.stopped {
			done = nil
			e.drop(fd)
		}
		if done != nil {
			e.handshaken = append(e.handshaken, *done)
		}
		e.pokeLocked()
		e.mu.Unlock()
	}()
	var nc net.Conn
	dup, err := unix.FcntlInt(uintptr(fd), unix.F_DUPFD_CLOEXEC, 0)
	if err == nil {
		nc, err = NetConn(dup) // closes dup on error
	}
	if err != nil {
		e.drop(fd)
		return
	}
	s.nc = nc
	e.mu.Lock()
	e.shaking[s] = nc
	stopped := e.stopped
	e.mu.Unlock()
	if stopped {
		nc.Close() // the loop ended while this one started
	}
	tc := tls.Server(s, e.cfg.TLS)
	nc.SetDeadline(time.Now().Add(e.cfg.HeaderTimeout))
	if err := tc.Handshake(); err != nil {
		if re, ok := err.(tls.RecordHeaderError); ok && re.Conn != nil && looksLikeHTTP(re.RecordHeader) {
			// What nginx and net/http do for plain HTTP on a TLS port.
			io.WriteString(nc, "HTTP/1.0 400 Bad Request\r\nContent-Type: text/plain\r\nConnection: close\r\n\r\nThe plain HTTP request was sent to an HTTPS port.\n")
		}
		e.cfg.Log.Debug("tls handshake failed", "peer", nc.RemoteAddr(), "err", err)
		rawClose(fd)
		s.Close() // the duplicate, and the connection's count
		return
	}
	s.nc = nil
	nc.Close() // out of the netpoller: the socket is the loop's
	done = &handshaken{fd: fd, tls: tc, sock: s}
}

// looksLikeHTTP reports whether a TLS record header is the start of an
// HTTP/1 request line.
func looksLikeHTTP(hdr [5]byte) bool {
	switch string(hdr[:]) {
	case "GET /", "HEAD ", "POST ", "PUT /", "OPTIO", "DELET", "PATCH", "CONNE":
		return true
	}
	return false
}

// adoptTLS starts serving a connection whose handshake is done, on the
// loop's thread.
func (e *Engine) adoptTLS(h handshaken) {
	if e.atLimit() {
		e.drop(h.fd)
		return
	}
	c := e.newConn(h.fd)
	c.tls, c.sock = h.tls, h.sock
	e.conns[h.fd] = c
	if !e.register(c, false) {
		return
	}
	// crypto/tls may hold the first request already: it came with the
	// handshake's last flight, and no edge will announce it.
	if h.tls.ConnectionState().NegotiatedProtocol == "h2" {
		e.startH2(c)
		e.serveH2(c)
		return
	}
	e.onReadable(c)
}

// readTLS is read's crypto/tls form: EAGAIN when neither crypto/tls nor
// the socket has anything more, 0 at the client's close. crypto/tls gives
// one record per Read, so it reads record after record until p is full,
// nothing more has come, or the records read have cost budget (their bytes
// and tlsRecordCost each): the frames or requests of many small records
// are then handled, and answered, together — as nginx fills its buffer
// with SSL_read — rather than a send(2) for each. charge is what they cost.
func (c *conn) readTLS(p []byte, budget int) (n, charge int, err error) {
	for n < len(p) && charge < budget {
		m, err := c.tls.Read(p[n:])
		if m > 0 {
			n, charge = n+m, charge+m+tlsRecordCost
		}
		switch err.(type) {
		case nil:
			continue
		case wouldBlock:
			if n > 0 {
				return n, charge, nil // the next read finds EAGAIN
			}
			return 0, 0, unix.EAGAIN
		}
		if n > 0 {
			return n, charge, nil // the close or the error again, at the next read
		}
		if err == io.EOF {
			return 0, 0, nil
		}
		return 0, 0, err
	}
	return n, charge, nil
}

// sealBatch is how much plaintext is sealed before it is sent: four full
// records per send(2).
const sealBatch = 64 << 10

// flushTLS is flush for a TLS connection: the answer is sealed in records
// and sent as the socket takes them. What the access log counts as sent
// advances by batches, once a batch has left whole.
func (e *Engine) flushTLS(c *conn) bool {
	for {
		if !e.sendSealed(c) {
			return false
		}
		c.outOff, c.fileSent = c.sealed, c.fileSent+c.fileSealed
		c.fileSealed = 0
		if c.sealed < len(c.out) {
			if !e.seal(c, c.out[c.sealed:]) {
				return false
			}
			c.sealed = len(c.out)
			continue
		}
		if c.file == nil || c.off >= c.end {
			break
		}
		if e.sealBuf == nil {
			e.sealBuf = make([]byte, sealBatch)
		}
		n, err := unix.Pread(c.file.fd, e.sealBuf[:min(int64(len(e.sealBuf)), c.end-c.off)], c.off)
		if err == unix.EINTR {
			continue
		}
		if err != nil || n == 0 {
			e.closeConn(c) // the file shrank under us: the answer cannot be completed
			return false
		}
		if !e.seal(c, e.sealBuf[:n]) {
			return false
		}
		c.off += int64(n)
		c.fileSealed += int64(n)
	}
	return e.answered(c)
}

// settleTLS finds out, before a TLS connection closes, whether its client
// has sent more than was read: crypto/tls may hold records after the
// socket was emptied, so only a read that would block says nothing is
// left (then the connection closes at once, rather than lingering). false:
// the read found the connection closed.
func (e *Engine) settleTLS(c *conn) bool {
	if c.dry || len(c.rbuf) > 0 {
		return true
	}
	e.read(c)
	return e.conns[c.fd] == c
}

// sendSealed sends the records sealed for c. false: the socket is full
// (EPOLLOUT calls again) or the connection was closed.
func (e *Engine) sendSealed(c *conn) bool {
	s := c.sock
	for s.sent < len(s.out) {
		if e.shareUsed(c, &c.sendLeft) {
			return false
		}
		n, err := rawSend(c.fd, s.out[s.sent:], unix.MSG_NOSIGNAL)
		if err == unix.EAGAIN {
			return e.watchWrites(c)
		}
		if err != nil && err != unix.EINTR {
			e.closeConn(c)
			return false
		}
		c.sendLeft -= max(n, 0)
		s.sent += max(n, 0)
		c.since = e.now
		e.cfg.Stats.Add(shm.BytesOut, int64(max(n, 0)))
	}
	s.out, s.sent = s.out[:0], 0
	return true
}

// seal seals p into records for c (sendSealed sends them). false: the
// connection was closed.
func (e *Engine) seal(c *conn, p []byte) bool {
	if _, err := c.tls.Write(p); err != nil {
		e.closeConn(c)
		return false
	}
	return true
}

// closeNotify tells a TLS client the connection ends here (a close_notify
// alert), if the socket takes it at once.
func (e *Engine) closeNotify(c *conn) {
	if c.tls.CloseWrite() == nil && len(c.sock.out) > 0 {
		rawSend(c.fd, c.sock.out, unix.MSG_NOSIGNAL)
	}
	c.sock.out = c.sock.out[:0]
}
