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

// HeldWaits is the rule by which a thread that waits for connections — in
// accept4, the accept lock's poll or futex, the worker's control reader
// (fdpass) — waits as the engine's loop does (httpd's waiter): for hold
// after work last came, its waits are raw and keep the P, so that the
// scheduler does not take the P of each wait and hand it back; otherwise
// they are the ordinary ones, and the thread yields (Yielder). A held wait
// needs no yield: sysmon preempts it every 10ms, and a Gosched besides is a
// hand-over of the goroutine to another thread each time. The caller's
// held waits must end on the runtime's preemption signal (EINTR), or a
// stop-the-world would wait for them.
type HeldWaits struct {
	hold   time.Duration
	active time.Time // when work last came
	y      Yielder
}

// NewHeldWaits makes the rule for a thread that may hold for hold after
// work (Config.HoldFor; 0: never) — and never where the process has a
// single P, which a held wait would keep from every other goroutine.
func NewHeldWaits(hold time.Duration) *HeldWaits {
	if runtime.GOMAXPROCS(0) < 2 {
		hold = 0
	}
	return &HeldWaits{hold: hold}
}

// Before is called before each wait: it reports whether the wait may keep
// the P, and yields if not.
func (h *HeldWaits) Before(now time.Time) bool {
	if now.Sub(h.active) < h.hold {
		return true
	}
	h.y.Yield(now)
	return false
}

// Came records that a wait brought work at now.
func (h *HeldWaits) Came(now time.Time) { h.active = now }
