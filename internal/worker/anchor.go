//go:build linux

package worker

import (
	"github.com/herd-run/herd/internal/held"
	"golang.org/x/sys/unix"
)

// anchor keeps one P of a net/http worker in a raw blocking wait for the
// life of the process, so that the runtime never sees all of the worker's
// Ps idle.
//
// Why: a prefork worker runs net/http on one P, and under load it runs out
// of work many times a second — every connection is waiting for its
// client. Each time every P is idle, sysmon goes to sleep on a note, and
// the next goroutine to run must wake it (a futex) and sysmon starts over
// polling every 20µs, backing off only after 50 quiet rounds. perf on a
// worker under `wrk -c64` keep-alive found 14% of its samples in sysmon's
// nanosleep and futex calls, and a keep-alive request cost 20% more CPU
// than in one plain net/http process. With a P held, sysmon keeps its
// backed-off pace (every 10ms). Side by side with the worker without it
// (bench/library's herd mode, five interleaved rounds of wrk -t1 -d3s:
// -c64 keep-alive, and -c8 with "Connection: close"), 17% and 16% more
// requests per second, and less CPU per request than one plain net/http
// process in both (see README, "What prefork costs").
//
// It is the native engine's held epoll_wait (internal/httpd, wait) without
// the events, and safe for the same reasons, which setProcs checks with
// held.CanHold: the runtime's preemption signal interrupts the wait with
// EINTR — sysmon's every 10ms, a stop-the-world's at once — and the wait
// returns into a function call, where the goroutine can be preempted; the
// wait is bounded anyway (50ms) should a signal be lost.
//
// It returns when stop is closed (a worker never closes it: the anchor
// ends with the process), within one wait of msec milliseconds.
func anchor(stop <-chan struct{}, msec int) {
	ep, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return // the worker serves as well without it, only dearer
	}
	defer unix.Close(ep)
	var ev [1]unix.EpollEvent
	for {
		select {
		case <-stop:
			return
		default:
		}
		anchorWait(ep, &ev, msec)
	}
}

// anchorWait waits on an epoll set that never has an event. Not inlined:
// its call is where the goroutine can be preempted after a signal.
//
//go:noinline
func anchorWait(ep int, ev *[1]unix.EpollEvent, msec int) {
	held.EpollWait(ep, ev[:], msec)
}
