//go:build linux

package master

import (
	"fmt"

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

// activated returns the listening sockets systemd passed (socket
// activation: LISTEN_FDS, LISTEN_PID), or nil when there are none. It is
// used only when no --listen address is given.
func activated() ([]*Socket, error) {
	files := activation.Files(true) // unsets LISTEN_*: workers must not see them
	var out []*Socket
	for _, f := range files {
		// Keep the descriptor bare (see Socket): take it from the *os.File
		// without Fd, which would make the socket blocking, and without
		// Close, which would close it.
		rc, err := f.SyscallConn()
		if err != nil {
			return nil, fmt.Errorf("socket activation: %w", err)
		}
		var fd int
		rc.Control(func(x uintptr) { fd, err = unix.FcntlInt(x, unix.F_DUPFD_CLOEXEC, 0) })
		if err != nil {
			return nil, fmt.Errorf("socket activation: dup: %w", err)
		}
		f.Close()
		sa, err := getsockname(fd)
		if err != nil {
			return nil, fmt.Errorf("socket activation: fd %d: %w", fd, err)
		}
		out = append(out, &Socket{Addr: sa, fd: fd})
	}
	return out, nil
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
