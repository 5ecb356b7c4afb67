package httpd

import (
	"unsafe"

	"golang.org/x/sys/unix"
)

// The event loop's calls on non-blocking sockets cannot block, so they are
// made raw: without telling the Go scheduler, which otherwise lets sysmon
// hand this thread's P to another thread during each of them (a futex
// wake and a nanosleep per few requests, measured with strace). epoll_wait,
// which does block, and sendfile, which may wait for the disk, stay
// ordinary syscalls.

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

// wait returns ready events. After a busy round (more than one event) it
// first tries a raw epoll_wait that does not block: under load events are
// almost always ready, and the scheduler need not hear of it. Otherwise,
// or when none are ready, it makes the blocking call, which the scheduler
// must know about so other goroutines keep running. (Always polling first
// costs a wasted syscall per wakeup when the loop is not busy.)
func wait(ep int, events []unix.EpollEvent, msec int, busy bool) (int, error) {
	if busy {
		r, _, e := unix.RawSyscall6(unix.SYS_EPOLL_PWAIT, uintptr(ep), uintptr(unsafe.Pointer(&events[0])), uintptr(len(events)), 0, 0, 0)
		if e == 0 && r > 0 {
			return int(r), nil
		}
	}
	return unix.EpollWait(ep, events, msec)
}
