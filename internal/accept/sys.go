//go:build linux

package accept

import (
	"runtime"
	"syscall"
	"time"

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

// Yielder lets an accepting goroutine be rescheduled every few
// milliseconds. A goroutine that only ever makes system calls is never
// rescheduled, and after 10ms on the same schedule tick the runtime's
// sysmon treats each of its calls that lasts 20µs as one to take the P
// from, even while another P is idle (proc.go, retake): a futex hand-off
// per call, and sysmon waking every 20µs again. A Gosched every 5ms
// resets the tick; one per connection would cost a futex wake each.
// The goroutine is not locked to its thread for the same reason: a locked
// goroutine's Gosched is two context switches.
type Yielder struct{ last time.Time }

// Yield calls runtime.Gosched if the last call did 5ms or more before now.
func (y *Yielder) Yield(now time.Time) {
	if now.Sub(y.last) >= 5*time.Millisecond {
		runtime.Gosched()
		y.last = now
	}
}
