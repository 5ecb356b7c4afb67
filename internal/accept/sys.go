//go:build linux

package accept

import (
	"syscall"

	"golang.org/x/sys/unix"
)

// accept4 takes a connection without asking for the peer's address:
// unix.Accept4 converts it, which costs a getsockopt(SO_PROTOCOL) and an
// allocation per connection, and nothing here uses it. On a non-blocking
// listener the call cannot block, so it is made raw: the Go scheduler is
// not told, and sysmon does not hand this thread's P to another thread for
// the microsecond it takes.
func accept4(fd, flags int, mayBlock bool) (int, error) {
	var r uintptr
	var e syscall.Errno
	if mayBlock {
		r, _, e = unix.Syscall6(unix.SYS_ACCEPT4, uintptr(fd), 0, 0, uintptr(flags), 0, 0)
	} else {
		r, _, e = unix.RawSyscall6(unix.SYS_ACCEPT4, uintptr(fd), 0, 0, uintptr(flags), 0, 0)
	}
	if e != 0 {
		return -1, e
	}
	return int(r), nil
}
