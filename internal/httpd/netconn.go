//go:build linux

package httpd

import (
	"errors"
	"io"
	"net"
	"net/netip"
	"os"
	"strconv"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// sockConn is an accepted socket as a net.Conn without the dup(2) that
// net.FileConn makes: an *os.File of a non-blocking descriptor is in Go's
// netpoller, with deadlines, as a net.Conn is. A connection then costs
// what net/http's own Accept costs — accept4, epoll_ctl, getsockname — and
// a getpeername, instead of a dup, two fcntl, a getsockopt, both address
// calls, the epoll_ctl and a close. It sets what net sets on a TCP
// connection it accepts (TCP_NODELAY, keep-alive probes).
type sockConn struct {
	f             *os.File // not embedded: its Fd method would make the socket blocking, behind the netpoller's back
	local, remote net.Addr
}

// NetConn makes an accepted, non-blocking socket a net.Conn in Go's
// netpoller (see sockConn). The connection owns fd from then on; on error
// fd is closed.
func NetConn(fd int) (net.Conn, error) {
	c, err := newSockConn(fd)
	if err != nil {
		return nil, err
	}
	return c, nil
}

func newSockConn(fd int) (*sockConn, error) {
	local, err := sockAddr(unix.Getsockname(fd))
	if err != nil {
		unix.Close(fd)
		return nil, err
	}
	remote, err := sockAddr(unix.Getpeername(fd))
	if err != nil {
		unix.Close(fd)
		return nil, err
	}
	if _, tcp := local.(*net.TCPAddr); tcp {
		// What net's TCP connections get: no Nagle (a head and a body
		// written apart would wait for the peer's delayed ACK, 40ms), and
		// keep-alive probes after 15s idle.
		unix.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_NODELAY, 1)
		unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_KEEPALIVE, 1)
		unix.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_KEEPIDLE, 15)
		unix.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_KEEPINTVL, 15)
	}
	return &sockConn{f: os.NewFile(uintptr(fd), ""), local: local, remote: remote}, nil
}

func (c *sockConn) LocalAddr() net.Addr                { return c.local }
func (c *sockConn) RemoteAddr() net.Addr               { return c.remote }
func (c *sockConn) Close() error                       { return c.f.Close() }
func (c *sockConn) SetDeadline(t time.Time) error      { return c.f.SetDeadline(t) }
func (c *sockConn) SetReadDeadline(t time.Time) error  { return c.f.SetReadDeadline(t) }
func (c *sockConn) SetWriteDeadline(t time.Time) error { return c.f.SetWriteDeadline(t) }

// SyscallConn gives the descriptor to code that sets socket options, as
// a *net.TCPConn's does.
func (c *sockConn) SyscallConn() (syscall.RawConn, error) { return c.f.SyscallConn() }

// Read and Write return errors as net's connections do: a *net.OpError,
// which is a net.Error (Timeout and Temporary), not the *os.PathError an
// *os.File returns. crypto/tls keeps a connection usable after a read
// error only if it is a temporary net.Error, and net/http ends every
// request's background read with a deadline in the past: with PathErrors
// every TLS connection broke after its first request (keep-alive over
// HTTPS fell to one full handshake per request). io.EOF stays io.EOF.
func (c *sockConn) Read(p []byte) (int, error) {
	n, err := c.f.Read(p)
	return n, c.opError("read", err)
}

func (c *sockConn) Write(p []byte) (int, error) {
	n, err := c.f.Write(p)
	return n, c.opError("write", err)
}

func (c *sockConn) opError(op string, err error) error {
	pe, ok := err.(*os.PathError) // what *os.File returns; errors.As was 0.7% of a worker's samples under keep-alive (perf)
	if !ok {
		return err
	}
	return &net.OpError{Op: op, Net: c.local.Network(), Source: c.local, Addr: c.remote, Err: pe.Err}
}

// CloseWrite shuts the sending side down: net/http's graceful close of a
// connection with unread input.
func (c *sockConn) CloseWrite() error {
	return c.control(func(fd int) error { return unix.Shutdown(fd, unix.SHUT_WR) })
}

func (c *sockConn) control(f func(fd int) error) error {
	rc, err := c.f.SyscallConn()
	if err != nil {
		return err
	}
	var ferr error
	if err := rc.Control(func(fd uintptr) { ferr = f(int(fd)) }); err != nil {
		return err
	}
	return ferr
}

// ReadFrom sends a file body with sendfile(2), as *net.TCPConn does:
// net/http hands a response's file (or an io.LimitedReader of one, for a
// range) to the connection's ReadFrom. Anything else is copied.
func (c *sockConn) ReadFrom(r io.Reader) (int64, error) {
	src, remain := r, int64(1<<62)
	lr, limited := r.(*io.LimitedReader)
	if limited {
		src, remain = lr.R, lr.N
	}
	f, ok := src.(*os.File)
	if !ok || remain <= 0 {
		return io.Copy(writerOnly{c}, r)
	}
	off, err := f.Seek(0, io.SeekCurrent)
	if err != nil {
		return io.Copy(writerOnly{c}, r)
	}
	frc, err := f.SyscallConn()
	if err != nil {
		return io.Copy(writerOnly{c}, r)
	}
	crc, err := c.f.SyscallConn()
	if err != nil {
		return 0, err
	}
	var sent int64
	var serr error
	ferr := frc.Control(func(sfd uintptr) {
		for remain > 0 && serr == nil {
			var n int
			werr := crc.Write(func(dfd uintptr) bool {
				o := off
				n, serr = unix.Sendfile(int(dfd), int(sfd), &o, int(min(remain, 1<<30)))
				if serr == unix.EAGAIN {
					serr = nil
					return false // wait until the socket takes more
				}
				return true
			})
			if werr != nil {
				serr = werr
			}
			if n <= 0 && serr == nil {
				break // the end of the file
			}
			off += int64(max(n, 0))
			sent += int64(max(n, 0))
			remain -= int64(max(n, 0))
		}
	})
	if _, err := f.Seek(off, io.SeekStart); err != nil && serr == nil {
		serr = err
	}
	if limited {
		lr.N -= sent
	}
	if serr == nil {
		serr = ferr
	}
	return sent, serr
}

type writerOnly struct{ io.Writer }

// LocalAddr is the address the socket fd is bound to, as net names it; an
// empty TCP address if it cannot be read.
func LocalAddr(fd int) net.Addr {
	a, err := sockAddr(unix.Getsockname(fd))
	if err != nil {
		return &net.TCPAddr{}
	}
	return a
}

func sockAddr(sa unix.Sockaddr, err error) (net.Addr, error) {
	if err != nil {
		return nil, err
	}
	switch a := sa.(type) {
	case *unix.SockaddrInet4:
		return net.TCPAddrFromAddrPort(netip.AddrPortFrom(netip.AddrFrom4(a.Addr), uint16(a.Port))), nil
	case *unix.SockaddrInet6:
		ip := netip.AddrFrom16(a.Addr)
		if a.ZoneId != 0 {
			ip = ip.WithZone(zoneName(a.ZoneId))
		}
		return net.TCPAddrFromAddrPort(netip.AddrPortFrom(ip, uint16(a.Port))), nil
	case *unix.SockaddrUnix:
		return &net.UnixAddr{Name: a.Name, Net: "unix"}, nil
	}
	return nil, errors.New("httpd: socket of an unknown family")
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
