//go:build linux

package httpd

import (
	"os"
	"runtime"
	"strings"
	"unsafe"

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
func (e *Engine) sendfile(out, in int, off *int64, count int) (int, error) {
	if !e.mayHoldP() {
		return unix.Sendfile(out, in, off, count)
	}
	return rawSendfile(out, in, off, count)
}

// mayHoldP is CanHoldP for this process, asked once per engine (the
// worker has set GOMAXPROCS before the engine runs): the loop's wait and
// its sendfile both ask it, and a front's sendfile too.
func (e *Engine) mayHoldP() bool {
	if e.holdP == 0 {
		e.holdP = -1
		if CanHoldP(runtime.GOMAXPROCS(0)) {
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

// wait returns ready events, blocking up to msec milliseconds.
//
// holdP: the call is raw even when it blocks, so the loop's thread keeps its
// P while it sleeps in epoll_wait. Made the ordinary way, every wait that
// lasts longer than sysmon's 20µs tick has its P retaken and handed off,
// and getting it back on return costs futex wakes and sysmon nanosleeps:
// measured with perf stat at 0.33 nanosleep and 0.16 futex per new
// connection, and about 15% more CPU per connection than nginx. Holding the
// P is safe when the worker has another one for its other goroutines
// (GOMAXPROCS ≥ 2; the engine checks): the runtime's preemption signal —
// sysmon's after 10ms, a stop-the-world's at once — interrupts epoll_wait
// with EINTR, so the garbage collector never waits on a sleeping loop.
//
// It relies on that signal: with asynchronous preemption turned off
// (GODEBUG=asyncpreemptoff=1) a stop-the-world would wait for the sleep to
// end, so CanHoldP says no and the ordinary wait is used. And a held wait
// is never longer than maxHeldWait, which bounds that wait even if a
// signal is lost.
//
// Otherwise, after a busy round (busy: more than one event) it first tries
// a raw epoll_wait that does not block — under load events are almost
// always ready — and only then makes the blocking call the scheduler knows.
func wait(ep int, events []unix.EpollEvent, msec int, holdP, busy bool) (int, error) {
	if holdP || busy {
		timeout := min(msec, maxHeldWait)
		if !holdP {
			timeout = 0
		}
		r, _, e := unix.RawSyscall6(unix.SYS_EPOLL_PWAIT, uintptr(ep), uintptr(unsafe.Pointer(&events[0])), uintptr(len(events)), uintptr(timeout), 0, 0)
		switch {
		case holdP && e != 0:
			return 0, e
		case holdP || (e == 0 && r > 0):
			return int(r), nil
		}
	}
	return unix.EpollWait(ep, events, msec)
}

// maxHeldWait bounds, in milliseconds, an epoll_wait that keeps its P.
const maxHeldWait = 100

// CanHoldP reports whether a goroutine may keep its P in a raw blocking
// wait, as the loop does in epoll_wait: the process has a second P for its
// other goroutines, and the runtime can preempt a thread by signal (see
// wait).
func CanHoldP(procs int) bool {
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
