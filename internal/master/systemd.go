//go:build linux

package master

import (
	"fmt"
	"slices"

	"github.com/coreos/go-systemd/v22/activation"
	"github.com/coreos/go-systemd/v22/daemon"
	"golang.org/x/sys/unix"
)

// notify tells systemd (Type=notify) what the master is doing: READY=1 once
// every worker is ready (and again after a reload), RELOADING=1 when a
// reload starts, STOPPING=1, and MAINPID= when a binary upgrade hands over.
// Without NOTIFY_SOCKET it does nothing.
func notify(state string) {
	daemon.SdNotify(false, state)
}

// tlsSocketNames are the FileDescriptorName= values (LISTEN_FDNAMES) that
// make an activated socket a TLS listener: a .socket unit for :443 names
// its sockets "https".
var tlsSocketNames = []string{"https", "tls"}

// activated returns the listening sockets systemd passed (socket
// activation: LISTEN_FDS, LISTEN_PID), plain ones and TLS ones (named in
// tlsSocketNames), or none. It is used only when no address is given.
func activated() (plain, secure []*Socket, err error) {
	files := activation.Files(true) // unsets LISTEN_*: workers must not see them
	for _, f := range files {
		// Keep the descriptor bare (see Socket): take it from the *os.File
		// without Fd, which would make the socket blocking, and without
		// Close, which would close it.
		rc, err := f.SyscallConn()
		if err != nil {
			return nil, nil, fmt.Errorf("socket activation: %w", err)
		}
		var fd int
		rc.Control(func(x uintptr) { fd, err = unix.FcntlInt(x, unix.F_DUPFD_CLOEXEC, 0) })
		if err != nil {
			return nil, nil, fmt.Errorf("socket activation: dup: %w", err)
		}
		name := f.Name()
		f.Close()
		sa, err := getsockname(fd)
		if err != nil {
			return nil, nil, fmt.Errorf("socket activation: fd %d: %w", fd, err)
		}
		if slices.Contains(tlsSocketNames, name) {
			secure = append(secure, &Socket{Addr: sa, fd: fd})
		} else {
			plain = append(plain, &Socket{Addr: sa, fd: fd})
		}
	}
	return plain, secure, nil
}

func getsockname(fd int) (string, error) {
	sa, err := unix.Getsockname(fd)
	if err != nil {
		return "", err
	}
	if u, ok := sa.(*unix.SockaddrUnix); ok {
		return "unix:" + u.Name, nil
	}
	return sockaddrString(sa), nil
}
