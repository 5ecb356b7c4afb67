//go:build linux

package accept

import (
	"os"
	"strconv"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
)

// interrupter cuts a stopping worker's accepting threads out of the calls
// they sleep in. A worker's idle accepting thread sleeps in accept4 (the
// "accept" strategy) or in poll (the holder of a serialised strategy's
// lock); a bound on that sleep was once the only way it noticed a stop, and
// every return from a bounded sleep woke Go's sysmon for a millisecond of
// 20µs polls: hundreds of context switches a second in a worker that
// served nothing (bench/idle.sh). Instead the sleep is long and a stop
// signals the process's threads with SIGURG, which the Go runtime catches
// (it is its own preemption signal, so every part of the runtime already
// copes with calls interrupted by it) and otherwise ignores. poll, accept4
// on a socket with SO_RCVTIMEO and FUTEX_WAIT with a timeout then fail with
// EINTR rather than restart (signal(7)), and the thread sees that it should
// stop — as Apache's prefork children learn of a graceful stop from a
// signal that interrupts their wait.
//
// Every thread is signalled, not only the accepting ones: a goroutine moves
// between threads, so knowing which thread an accepting goroutine sleeps on
// would cost a gettid before every accept4. Threads in calls that the kernel
// restarts after a caught signal (Go installs its handlers with SA_RESTART;
// flock(2) is one) go back to sleep; the others' callers (the runtime, the
// engine's raw epoll_wait) already retry on EINTR, since the runtime sends
// the same signal to preempt — and a program's handlers, under the nethttp
// engine, are in the same position as with any Go program since Go 1.14,
// whose release notes tell programs to expect slow system calls to fail
// with EINTR for that reason.
//
// A thread in a wait that no signal ends — flock(2), which the kernel
// restarts — is parked: a stop leaves it behind rather than wait for it.
// When it gets the lock it sees the stop and lets go without accepting,
// and if the worker exits first the kernel drops its request.
type interrupter struct {
	running atomic.Int32 // accepting threads that have not returned
	parked  atomic.Int32 // of those, the ones in a wait no signal ends
}

// sleepBound bounds an accepting thread's sleep (accept4's SO_RCVTIMEO, the
// lock holder's poll, a mutex waiter's FUTEX_WAIT) in case every signal of
// a stop misses it. Each return from such a sleep wakes Go's sysmon for a
// millisecond of 20µs polls, about 60 context switches: at 2s an idle
// "accept" worker made 41–48 a second, at 10s 14–20 (bench/idle.sh).
const sleepBound = 10 * time.Second

// interruptEvery is how often a stop signals the threads while an accepting
// thread is still running: a signal that arrives just before a thread enters
// its sleep is lost on it.
const interruptEvery = 20 * time.Millisecond

// enter and leave bracket an accepting thread's loop; park and unpark a
// wait in it that no signal ends.
func (in *interrupter) enter()  { in.running.Add(1) }
func (in *interrupter) leave()  { in.running.Add(-1) }
func (in *interrupter) park()   { in.parked.Add(1) }
func (in *interrupter) unpark() { in.parked.Add(-1) }

// settled reports whether every accepting thread has returned or is parked.
func (in *interrupter) settled() bool { return in.running.Load() <= in.parked.Load() }

// interrupt signals the process's threads every interruptEvery until every
// accepting thread has returned or is parked, for at most bound: past it
// the threads' own bounded sleeps end them.
func (in *interrupter) interrupt(bound time.Duration) {
	pid := unix.Getpid()
	for range bound / interruptEvery {
		if in.settled() {
			return
		}
		signalThreads(pid)
		time.Sleep(interruptEvery)
	}
}

// signalThreads sends SIGURG to every thread of the process pid (this one).
func signalThreads(pid int) {
	tasks, err := os.ReadDir("/proc/self/task")
	if err != nil {
		return // the threads' bounds end them
	}
	for _, t := range tasks {
		if tid, err := strconv.Atoi(t.Name()); err == nil {
			unix.Tgkill(pid, tid, unix.SIGURG)
		}
	}
}
