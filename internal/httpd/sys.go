//go:build linux

package httpd

import (
	"runtime"
	"time"
	"unsafe"

	"github.com/herd-run/herd/internal/held"
	"golang.org/x/sys/unix"
)

// The event loop's calls on non-blocking sockets cannot block, so they are
// made raw: without telling the Go scheduler, which otherwise lets sysmon
// hand this thread's P to another thread during each of them (a futex
// wake and a nanosleep per few requests, measured with strace). epoll_wait,
// which does block, and sendfile, which may wait for the disk, are raw
// only when the worker has a P to spare (see wait and sendfile).

func rawRead(fd int, p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	r, _, e := unix.RawSyscall(unix.SYS_READ, uintptr(fd), uintptr(unsafe.Pointer(&p[0])), uintptr(len(p)))
	if e != 0 {
		return 0, e
	}
	return int(r), nil
}

func rawSend(fd int, p []byte, flags int) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	r, _, e := unix.RawSyscall6(unix.SYS_SENDTO, uintptr(fd), uintptr(unsafe.Pointer(&p[0])), uintptr(len(p)), uintptr(flags), 0, 0)
	if e != 0 {
		return 0, e
	}
	return int(r), nil
}

// sendfile is sendfile(2), made raw when the loop may hold its P (see
// wait): a large body's call lasts long enough (about 200µs for 1 MiB over
// loopback) for sysmon to take the P at every one, hand it to another
// thread and go on waking to look — 1.1 nanosleep per 1 MiB answer under
// wrk -c16, 0.1 made raw (strace -c -f on the workers). The loop waits
// for the call either way, also when the file must come from the disk
// (as nginx's does without aio): only the handing off of the P is saved.
//
// Either way a failed call sends 0 bytes: unix.Sendfile returns the
// system call's -1, which the caller would add to its offset on EINTR.
func (e *Engine) sendfile(out, in int, off *int64, count int) (int, error) {
	if !e.mayHoldP() {
		n, err := unix.Sendfile(out, in, off, count)
		if err != nil {
			return 0, err
		}
		return n, nil
	}
	return rawSendfile(out, in, off, count)
}

// mayHoldP is held.CanHold for this process, asked once per engine (the
// worker has set GOMAXPROCS before the engine runs): the loop's wait and
// its sendfile both ask it, and a front's sendfile too.
func (e *Engine) mayHoldP() bool {
	if e.holdP == 0 {
		e.holdP = -1
		if held.CanHold(runtime.GOMAXPROCS(0)) {
			e.holdP = 1
		}
	}
	return e.holdP > 0
}

func rawSendfile(out, in int, off *int64, count int) (int, error) {
	r, _, e := unix.RawSyscall6(unix.SYS_SENDFILE, uintptr(out), uintptr(in), uintptr(unsafe.Pointer(off)), uintptr(count), 0, 0)
	if e != 0 {
		return 0, e
	}
	return int(r), nil
}

func rawClose(fd int) {
	unix.RawSyscall(unix.SYS_CLOSE, uintptr(fd), 0, 0)
}

func rawEpollCtl(ep, op, fd int, ev *unix.EpollEvent) error {
	_, _, e := unix.RawSyscall6(unix.SYS_EPOLL_CTL, uintptr(ep), uintptr(op), uintptr(fd), uintptr(unsafe.Pointer(ev)), 0, 0)
	if e != 0 {
		return e
	}
	return nil
}

// waiter is the loop's wait for events, blocking up to msec milliseconds.
//
// While the loop is active, the wait is held: a raw epoll_wait, so the
// loop's thread keeps its P while it sleeps. Made the ordinary way, every
// wait that lasts longer than sysmon's 20µs tick has its P retaken and
// handed off, and getting it back on return costs futex wakes and sysmon
// nanosleeps: measured with perf stat at 0.33 nanosleep and 0.16 futex per
// new connection, and about 15% more CPU per connection than nginx. Holding
// the P is safe when the worker has another one for its other goroutines
// (GOMAXPROCS ≥ 2; mayHoldP): the runtime's preemption signal interrupts
// epoll_wait with EINTR, so a stop-the-world never waits on a sleeping loop.
// With asynchronous preemption turned off (GODEBUG=asyncpreemptoff=1) it
// would, so held.CanHold says no and the ordinary wait is used. A held wait
// is never longer than held.Bound, which bounds it even if a signal is lost.
//
// Once the loop has had no events for held.IdleAfter, the wait is the ordinary
// one. A goroutine that holds its P in a call looks, to sysmon, as if it had
// run since it was last scheduled, and after 10ms sysmon preempts it: a
// signal, and the scheduler's round with the P — with the loop locked to its
// thread, as it was, about four context switches every 10ms, busy or idle.
// An idle worker made 320 a second (bench/idle.sh), an idle nginx worker
// none. In the ordinary wait sysmon takes the P once, finds every P idle and
// sleeps too: about 8 a second. Under load the held wait stays, with its
// preemptions (cheaper since the loop is not locked; see Run):
// rescheduling the loop more often than sysmon does costs as much, and an
// IdleAfter of 50ms instead of 1s put about 0.1 switches per connection on
// those runs, every return from an ordinary wait waking sysmon. (Sleeping in
// Go's netpoller on the epoll descriptor, nested, costs no preemptions but
// breaks EPOLLEXCLUSIVE: a listener's wakeup does not count as waking an
// epoll instance that only another epoll instance waits on, so the kernel
// wakes the next worker too.) results/loop-wait.txt has the figures.
//
// Without a P to hold, after a busy round (busy: more than one event) it
// first tries a raw epoll_wait that does not block — under load events are
// almost always ready — and only then makes the blocking call the
// scheduler knows.
type waiter struct {
	ep     int
	holdP  bool      // held waits while active (mayHoldP)
	active time.Time // when a wait last returned events (set by the loop)
}

func (w *waiter) wait(events []unix.EpollEvent, msec int, busy bool, now time.Time) (int, error) {
	if w.holdP && now.Sub(w.active) < held.IdleAfter {
		timeout := int(held.Bound / time.Millisecond)
		if msec >= 0 {
			timeout = min(msec, timeout)
		}
		return held.EpollWait(w.ep, events, timeout)
	}
	if busy {
		if n, err := held.EpollWait(w.ep, events, 0); n > 0 || (err != nil && err != unix.EINTR) {
			return n, err
		}
	}
	return unix.EpollWait(w.ep, events, msec)
}
