//go:build linux

// Package held is how a herd thread waits in a system call while keeping
// its P: the rule for when it may, and the raw waits themselves.
//
// A blocking system call made the ordinary way (unix.Syscall) tells the Go
// scheduler, and sysmon takes the P of a call that outlasts its 20µs tick,
// hands it to another thread and then wakes every 20µs to look again;
// getting the P back on return costs futex wakes. For a thread that waits
// for connections or events many times a millisecond, those are context
// switches paid per connection (internal/httpd's waiter has the figures).
// A raw call (unix.RawSyscall) keeps the P, and none of that happens.
//
// Holding the P is safe only where the process has another P for its other
// goroutines and the runtime can take the thread back by signal: its
// preemption signal ends the wait with EINTR (sysmon's every 10ms, a
// stop-the-world's at once), so no one waits on a sleeping thread. CanHold
// says where; every held wait is also bounded (Bound), should a signal be
// lost. A call the kernel restarts after a caught signal (flock(2)) must
// never be held: the signal would not end it.
//
// A held wait looks to sysmon as if the goroutine had run since it was last
// scheduled, so it is preempted every 10ms: a thread that has had nothing to
// do for IdleAfter waits the ordinary way instead (Waits), and sleeps.
package held

import (
	"os"
	"runtime"
	"strings"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

const (
	// IdleAfter is how long a thread goes without work before its waits
	// stop holding the P.
	IdleAfter = time.Second
	// Bound bounds a wait that holds the P, so that the thread looks again
	// soon whether work still comes: the wait is preempted every 10ms while
	// it lasts (a mutex waiter goes back to sleep after the signal's EINTR),
	// and an idle worker's accept-lock waiter held for a 10s bound made 400
	// context switches a second.
	Bound = 100 * time.Millisecond
)

// CanHold reports whether a goroutine of a process with procs Ps may keep
// its P in a raw blocking wait: there is a second P for the process's other
// goroutines, and the runtime preempts threads by signal (not with
// GODEBUG=asyncpreemptoff=1).
func CanHold(procs int) bool {
	return procs >= 2 && !asyncPreemptOff(os.Getenv("GODEBUG"))
}

// asyncPreemptOff reads GODEBUG as the runtime does: comma-separated
// settings, the last one for a key wins.
func asyncPreemptOff(godebug string) bool {
	off := false
	for _, kv := range strings.Split(godebug, ",") {
		if v, ok := strings.CutPrefix(strings.TrimSpace(kv), "asyncpreemptoff="); ok {
			off = v == "1"
		}
	}
	return off
}

// EpollWait is epoll_wait(2) for at most msec milliseconds, keeping the P.
// The caller bounds msec (Bound) and has asked CanHold.
func EpollWait(ep int, events []unix.EpollEvent, msec int) (int, error) {
	r, _, e := unix.RawSyscall6(unix.SYS_EPOLL_PWAIT, uintptr(ep), uintptr(unsafe.Pointer(&events[0])), uintptr(len(events)), uintptr(msec), 0, 0)
	if e != 0 {
		return 0, e
	}
	return int(r), nil
}

// Poll is ppoll(2) for at most timeout, keeping the P. The caller bounds
// timeout (Bound) and has asked CanHold.
func Poll(fds []unix.PollFd, timeout time.Duration) (int, error) {
	ts := unix.NsecToTimespec(timeout.Nanoseconds())
	r, _, e := unix.RawSyscall6(unix.SYS_PPOLL, uintptr(unsafe.Pointer(&fds[0])), uintptr(len(fds)), uintptr(unsafe.Pointer(&ts)), 0, 0, 0)
	if e != 0 {
		return 0, e
	}
	return int(r), nil
}

// Waits is the rule by which a thread that waits for work — the accepting
// threads of the strategies that block (accept4, the accept lock's poll or
// futex), the worker's control reader — waits as the engine's loop does:
// for hold after work last came its waits are held; otherwise they are the
// ordinary ones, and the thread yields (Yielder). A held wait needs no
// yield: sysmon preempts it every 10ms, and a Gosched besides is a
// hand-over of the goroutine to another thread each time. The caller's held
// waits must end on the runtime's preemption signal (EINTR).
type Waits struct {
	hold   time.Duration
	active time.Time // when work last came
	may    int8      // CanHold, asked once per busy spell: 0 not yet, 1 yes, -1 no
	y      Yielder
}

// NewWaits makes the rule for a thread that may hold for hold after work
// (0: never). Where the process may not hold a P (CanHold with its
// GOMAXPROCS) the waits are never held; that is asked at the start of each
// busy spell, since a worker sets its GOMAXPROCS after some of its threads
// have started.
func NewWaits(hold time.Duration) *Waits {
	return &Waits{hold: hold}
}

// Before is called before each wait: it reports whether the wait may keep
// the P, and yields if not.
func (w *Waits) Before(now time.Time) bool {
	if now.Sub(w.active) < w.hold {
		if w.may == 0 {
			w.may = -1
			if CanHold(runtime.GOMAXPROCS(0)) {
				w.may = 1
			}
		}
		if w.may > 0 {
			return true
		}
	} else {
		w.may = 0
	}
	w.y.Yield(now)
	return false
}

// Came records that a wait brought work at now.
func (w *Waits) Came(now time.Time) { w.active = now }

// Yielder lets a goroutine that waits in ordinary system calls be
// rescheduled every few milliseconds. A goroutine that only ever makes
// system calls is never rescheduled, and after 10ms on the same schedule
// tick the runtime's sysmon treats each of its calls that lasts 20µs as one
// to take the P from, even while another P is idle (proc.go, retake): a
// futex hand-off per call, and sysmon waking every 20µs again. A Gosched
// every 5ms resets the tick; one per connection would cost a futex wake
// each. The goroutine is not locked to its thread for the same reason: a
// locked goroutine's Gosched is two context switches.
type Yielder struct{ last time.Time }

// Yield calls runtime.Gosched if the last call did 5ms or more before now.
func (y *Yielder) Yield(now time.Time) {
	if now.Sub(y.last) >= 5*time.Millisecond {
		runtime.Gosched()
		y.last = now
	}
}
