//go:build linux

package master

import (
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// Socket is a listening socket the master owns for its whole life. Workers
// come and go; the socket, and the connections queued on it, stay.
//
// The master holds it as a bare descriptor, never an *os.File: os.NewFile
// registers a non-blocking descriptor with the Go netpoller, and the
// epoll-based strategies make the shared socket non-blocking. A new master
// after USR2 that wrapped its inherited sockets would then be woken by
// every connection beside the worker that takes it — a non-exclusive
// waiter on the socket. The socket is wrapped (a duplicate) only for as
// long as it takes to start a child (File).
type Socket struct {
	Addr string // as it is reached: "127.0.0.1:8080", "unix:/run/app.sock"
	fd   int    // close-on-exec; passed to workers explicitly
	path string // unix socket path to remove at exit
}

// FD is the socket's descriptor, owned by the Socket.
func (s *Socket) FD() int { return s.fd }

// File returns a duplicate of the socket as an *os.File, for
// exec.Cmd.ExtraFiles. The caller closes it once the child has started.
func (s *Socket) File() (*os.File, error) {
	fd, err := unix.FcntlInt(uintptr(s.fd), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("dup %s: %w", s.Addr, err)
	}
	return os.NewFile(uintptr(fd), s.Addr), nil
}

// parseAddr splits a --listen value into a network and an address. A value
// starting with "unix:" or containing a slash is a unix socket path; anything
// else is TCP host:port, where an empty host means all IPv4 addresses, as in
// nginx's "listen 8080".
func parseAddr(s string) (network, addr string, err error) {
	if p, ok := strings.CutPrefix(s, "unix:"); ok || strings.Contains(s, "/") {
		if !ok {
			p = s
		}
		if p == "" {
			return "", "", fmt.Errorf("listen %q: empty unix socket path", s)
		}
		return "unix", p, nil
	}
	host, port, err := net.SplitHostPort(s)
	if err != nil {
		return "", "", fmt.Errorf("listen %q: want host:port, unix:PATH or a path", s)
	}
	if n, err := strconv.Atoi(port); err != nil || n < 0 || n > 65535 {
		return "", "", fmt.Errorf("listen %q: bad port %q", s, port)
	}
	if host != "" && host != "localhost" && net.ParseIP(host) == nil {
		if _, err := net.LookupHost(host); err != nil {
			return "", "", fmt.Errorf("listen %q: unknown host %q", s, host)
		}
	}
	return "tcp", s, nil
}

// socketConfig is how Listen makes a listening socket.
type socketConfig struct {
	Own       socketOwnership // unix sockets: mode and owner
	Backlog   int             // listen(2) backlog
	ReusePort bool            // TCP: join a SO_REUSEPORT group (every member sets it before bind)

	// DeferAccept sets TCP_DEFER_ACCEPT: the kernel completes the handshake
	// but queues the connection for accept only once the client's first
	// bytes have arrived (or, after about this long, anyway). A worker is
	// then never woken for a connection it can only register and wait on,
	// and connections that never speak hold no worker descriptor. HTTP
	// clients speak first, so herd turns it on by default; nginx's
	// "listen ... deferred" is the same option. 0: off.
	DeferAccept time.Duration
}

// Listen creates a listening socket with raw syscalls, because net.Listen
// neither takes a backlog (it uses net.core.somaxconn) nor leaves the socket
// out of the master's netpoller — and the master must never poll a socket
// its workers accept on, or an exclusive-wakeup strategy would not be.
func (lc socketConfig) Listen(s string) (*Socket, error) {
	network, addr, err := parseAddr(s)
	if err != nil {
		return nil, err
	}
	if network == "unix" {
		if lc.ReusePort {
			return nil, fmt.Errorf("listen %s: the reuseport strategy needs TCP addresses", s)
		}
		s, err := listenUnix(addr, lc.Backlog)
		if err == nil {
			if err = lc.Own.apply(addr); err != nil {
				s.Close()
				return nil, fmt.Errorf("listen unix:%s: %w", addr, err)
			}
		}
		return s, err
	}
	return lc.listenTCP(addr)
}

// Listen creates a listening socket with a backlog and no other option.
func Listen(s string, backlog int) (*Socket, error) { return socketConfig{Backlog: backlog}.Listen(s) }

func (lc socketConfig) listenTCP(addr string) (*Socket, error) {
	fd, err := bindTCP(addr, lc.ReusePort)
	if err != nil {
		return nil, err
	}
	fail := func(op string, err error) (*Socket, error) {
		unix.Close(fd)
		return nil, fmt.Errorf("listen %s: %s: %w", addr, op, err)
	}
	if lc.DeferAccept > 0 {
		secs := int(max(lc.DeferAccept.Round(time.Second), time.Second) / time.Second)
		if err := unix.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_DEFER_ACCEPT, secs); err != nil {
			return fail("TCP_DEFER_ACCEPT", err)
		}
	}
	if err := unix.Listen(fd, lc.Backlog); err != nil {
		return fail("listen", err)
	}
	bound := addr
	if got, err := unix.Getsockname(fd); err == nil {
		bound = sockaddrString(got)
	}
	return &Socket{Addr: bound, fd: fd}, nil
}

// bindTCP makes a TCP socket bound to addr, with SO_REUSEADDR (a restarted
// server binds at once, past its old connections in TIME_WAIT) and, if
// reusePort, SO_REUSEPORT.
func bindTCP(addr string, reusePort bool) (int, error) {
	ta, err := net.ResolveTCPAddr("tcp", addr)
	if err != nil {
		return -1, fmt.Errorf("listen %s: %w", addr, err)
	}
	family := unix.AF_INET
	var sa unix.Sockaddr
	if ip4 := ta.IP.To4(); ta.IP == nil || ip4 != nil {
		a := &unix.SockaddrInet4{Port: ta.Port}
		if ip4 != nil {
			copy(a.Addr[:], ip4)
		}
		sa = a
	} else {
		family = unix.AF_INET6
		a := &unix.SockaddrInet6{Port: ta.Port}
		copy(a.Addr[:], ta.IP.To16())
		if ta.Zone != "" {
			if ifi, err := net.InterfaceByName(ta.Zone); err == nil {
				a.ZoneId = uint32(ifi.Index)
			}
		}
		sa = a
	}
	fd, err := unix.Socket(family, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, unix.IPPROTO_TCP)
	if err != nil {
		return -1, fmt.Errorf("listen %s: socket: %w", addr, err)
	}
	fail := func(op string, err error) (int, error) {
		unix.Close(fd)
		return -1, fmt.Errorf("listen %s: %s: %w", addr, op, err)
	}
	if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_REUSEADDR, 1); err != nil {
		return fail("SO_REUSEADDR", err)
	}
	if reusePort {
		if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_REUSEPORT, 1); err != nil {
			return fail("SO_REUSEPORT", err)
		}
	}
	if family == unix.AF_INET6 {
		if err := unix.SetsockoptInt(fd, unix.IPPROTO_IPV6, unix.IPV6_V6ONLY, 1); err != nil {
			return fail("IPV6_V6ONLY", err)
		}
	}
	if err := unix.Bind(fd, sa); err != nil {
		return fail("bind", err)
	}
	return fd, nil
}

// checkFree fails as a plain listen would if a TCP address is in use. A
// SO_REUSEPORT socket binds beside other listening sockets of the same
// user that set it too, so without this a second herd (or a second
// reuseport strategy's master) on a busy port would join the first one's
// group and share its connections, instead of saying the address is in
// use. The probe binds without SO_REUSEPORT and never listens, so no
// connection reaches it. Port 0 is always free.
func checkFree(addr string) error {
	if _, port, err := net.SplitHostPort(addr); err == nil && port == "0" {
		return nil
	}
	fd, err := bindTCP(addr, false)
	if err != nil {
		return err
	}
	return unix.Close(fd)
}

func listenUnix(path string, backlog int) (*Socket, error) {
	if err := removeStaleSocket(path); err != nil {
		return nil, err
	}
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("listen unix:%s: socket: %w", path, err)
	}
	if err := unix.Bind(fd, &unix.SockaddrUnix{Name: path}); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("listen unix:%s: bind: %w", path, err)
	}
	if err := unix.Listen(fd, backlog); err != nil {
		unix.Close(fd)
		os.Remove(path)
		return nil, fmt.Errorf("listen unix:%s: listen: %w", path, err)
	}
	return &Socket{Addr: "unix:" + path, fd: fd, path: path}, nil
}

// removeStaleSocket removes a socket file left by a server that died, and
// refuses to touch one that something still listens on, or a non-socket.
func removeStaleSocket(path string) error {
	fi, err := os.Lstat(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("listen unix:%s: %w", path, err)
	}
	if fi.Mode()&os.ModeSocket == 0 {
		return fmt.Errorf("listen unix:%s: file exists and is not a socket", path)
	}
	if c, err := net.Dial("unix", path); err == nil {
		c.Close()
		return fmt.Errorf("listen unix:%s: address already in use", path)
	}
	return os.Remove(path)
}

// Close closes the socket and removes a unix socket's file.
func (s *Socket) Close() error {
	err := unix.Close(s.fd)
	if s.path != "" {
		os.Remove(s.path)
	}
	return err
}

func sockaddrString(sa unix.Sockaddr) string {
	switch a := sa.(type) {
	case *unix.SockaddrInet4:
		return net.JoinHostPort(net.IP(a.Addr[:]).String(), strconv.Itoa(a.Port))
	case *unix.SockaddrInet6:
		return net.JoinHostPort(net.IP(a.Addr[:]).String(), strconv.Itoa(a.Port))
	}
	return fmt.Sprint(sa)
}

// somaxconn is the kernel's cap on any listen backlog, or 0 if unknown.
func somaxconn() int {
	b, err := os.ReadFile("/proc/sys/net/core/somaxconn")
	if err != nil {
		return 0
	}
	n, _ := strconv.Atoi(strings.TrimSpace(string(b)))
	return n
}
