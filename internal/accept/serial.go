//go:build linux

package accept

import (
	"fmt"
	"runtime"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"github.com/herd-run/herd/internal/shm"
	"golang.org/x/sys/unix"
)

// The serialised strategies (flock, mutex) share this loop, the one of
// Apache's prefork child and UNP §30.7–30.8:
//
//	lock; poll the listeners; accept; unlock; serve
//
// Only the lock holder waits on the listening sockets, so a connection
// wakes one process whatever the kernel's wakeup policy, and with several
// listeners (where blocking accept cannot wait on all of them) the holder
// polls them all. The price is a lock round trip per connection, and the
// lock's own wakeups: waking the next holder is the lock's business
// (flock wakes every waiter, the futex one).

// acceptLock serialises accept between processes. One per accepting thread.
type acceptLock interface {
	// lock waits for the lock, at most about bound where the lock allows
	// a bound, and less if it can tell that quit reports true; false means
	// not acquired. held: the wait may keep the thread's P (see thread).
	lock(bound time.Duration, quit func() bool, held bool) (bool, error)
	unlock() error
	close() error
}

type serialized struct {
	cfg     Config
	name    string
	newLock func() (acceptLock, error)
	// hold is how long a holder polls before it lets go of the lock, and
	// how long a waiter sleeps before it looks again. A stop's signal
	// (interrupter) cuts the holder's poll short, and a waiter's sleep
	// where the lock allows it (mutex; not flock).
	hold time.Duration
	// mayHoldP: while connections come, the waits may keep the thread's P
	// (see thread).
	mayHoldP bool
	// leaveWaiters: no signal ends a wait for the lock (flock), so a stop
	// leaves the threads in one behind (interrupter).
	leaveWaiters bool
	stopping     atomic.Bool
	stopped      chan struct{} // closed by Stop
	out          exhaustion
	in           interrupter
}

func newSerialized(cfg Config, name string, newLock func() (acceptLock, error), hold time.Duration, interruptible bool) (*serialized, error) {
	if err := setNonblock(cfg.Listeners); err != nil {
		return nil, err
	}
	return &serialized{cfg: cfg, name: name, newLock: newLock, hold: hold,
		mayHoldP: interruptible, leaveWaiters: !interruptible, stopped: make(chan struct{})}, nil
}

// setNonblock makes the listeners non-blocking: a holder that polled
// readable must not then block in accept4 if the connection went away
// (reset while queued), holding the lock.
func setNonblock(ls []Listener) error {
	for _, l := range ls {
		if err := unix.SetNonblock(l.FD, true); err != nil {
			return fmt.Errorf("accept: listener %s: %w", l.Addr, err)
		}
	}
	return nil
}

func (s *serialized) Stop() {
	if !s.stopping.Swap(true) {
		close(s.stopped)
		go s.in.interrupt(s.hold)
	}
}

// Serve returns the first thread's error once every thread has returned,
// or, after Stop, once the rest wait for a lock no signal interrupts.
func (s *serialized) Serve(deliver func(fd int)) error {
	errs := make(chan error, s.cfg.Threads)
	for range s.cfg.Threads {
		go func() {
			err := s.run(deliver)
			if err != nil {
				s.Stop() // one broken thread stops the worker; the master replaces it
			}
			errs <- err
		}()
	}
	var first error
	stopped, settle := s.stopped, (<-chan time.Time)(nil)
	for left := s.cfg.Threads; left > 0; {
		select {
		case err := <-errs:
			left--
			if first == nil {
				first = err
			}
		case <-stopped:
			stopped = nil
			t := time.NewTicker(interruptEvery)
			defer t.Stop()
			settle = t.C
		case <-settle:
			if s.in.settled() {
				return first
			}
		}
	}
	return first
}

func (s *serialized) run(deliver func(fd int)) error {
	l, err := s.newLock()
	if err != nil {
		return err
	}
	defer l.close()
	return s.thread(l, deliver)
}

func (s *serialized) thread(l acceptLock, deliver func(fd int)) error {
	st := s.cfg.Stats
	pfds := make([]unix.PollFd, len(s.cfg.Listeners))
	var fds []int // accepted under the lock, handed on after it
	var y Yielder
	s.in.enter()
	defer s.in.leave()
	// While connections come the waits keep the thread's P (Config.HoldFor,
	// as blocking's accept4): the holder's poll, and a mutex waiter's
	// FUTEX_WAIT; the runtime's preemption signal ends both, as a stop's
	// does. A held wait needs no yield: sysmon preempts it.
	hold := s.cfg.HoldFor
	if !s.mayHoldP || runtime.GOMAXPROCS(0) < 2 {
		hold = 0
	}
	var active time.Time // when this thread last accepted
	for !s.stopping.Load() {
		now := time.Now()
		held := now.Sub(active) < hold
		bound := s.hold
		if held {
			bound = heldBound
		} else {
			y.Yield(now)
		}
		if s.leaveWaiters {
			s.in.park()
		}
		got, err := l.lock(bound, s.stopping.Load, held)
		if s.leaveWaiters {
			s.in.unpark()
		}
		if err != nil {
			return fmt.Errorf("%s: lock: %w", s.name, err)
		}
		if !got {
			st.Inc(shm.Timeouts)
			continue
		}
		if s.stopping.Load() {
			l.unlock()
			break
		}
		for i, ls := range s.cfg.Listeners {
			pfds[i] = unix.PollFd{Fd: int32(ls.FD), Events: unix.POLLIN}
		}
		n, err := poll(pfds, bound, held)
		switch {
		case err == unix.EINTR || n == 0:
			st.Inc(shm.Timeouts)
		case err != nil:
			l.unlock()
			return fmt.Errorf("%s: poll: %w", s.name, err)
		default:
			st.Inc(shm.Wakeups)
			fds = fds[:0]
			for i, p := range pfds {
				if p.Revents&unix.POLLIN == 0 {
					continue
				}
				fd, err := accept4(s.cfg.Listeners[i].FD, s.cfg.acceptFlags(), false)
				switch {
				case err == nil:
					active = time.Now()
					st.Inc(shm.Active) // held from here; accepted() below counts it in full
					fds = append(fds, fd)
				case err == unix.EAGAIN || err == unix.ECONNABORTED:
					st.Inc(shm.Spurious)
				case transient(err):
				case s.out.hit(err, s.cfg.Log):
				default:
					l.unlock()
					return fmt.Errorf("%s: accept4 on %s: %w", s.name, s.cfg.Listeners[i].Addr, err)
				}
			}
		}
		// Unlock before serving: the next connection should not wait for
		// this one's wrapping and hand-off.
		if err := l.unlock(); err != nil {
			return fmt.Errorf("%s: unlock: %w", s.name, err)
		}
		for _, fd := range fds {
			st.Add(shm.Active, -1)
			accepted(st, fd, deliver)
			s.out.recovered(s.cfg.Log)
		}
		fds = fds[:0]
	}
	return nil
}

// heldBound bounds a wait that keeps the P (as httpd.HeldWaitBound does
// the loop's), so that a thread looks again soon whether connections still
// come: a mutex waiter's Lock goes back to sleep after the preemption
// signal's EINTR, and an idle worker's waiter held for the 10s bound was
// preempted every 10ms meanwhile — 400 context switches a second.
const heldBound = 100 * time.Millisecond

// poll is poll(2) for at most timeout, raw (keeping the P) if held.
func poll(fds []unix.PollFd, timeout time.Duration, held bool) (int, error) {
	if !held {
		return unix.Poll(fds, int(timeout/time.Millisecond))
	}
	ts := unix.NsecToTimespec(timeout.Nanoseconds())
	r, _, e := unix.RawSyscall6(unix.SYS_PPOLL, uintptr(unsafe.Pointer(&fds[0])), uintptr(len(fds)), uintptr(unsafe.Pointer(&ts)), 0, 0, 0)
	if e != 0 {
		return 0, e
	}
	return int(r), nil
}

// runThreads runs n copies of thread and returns the first error once all
// have returned; an error in one calls stop so the others end too.
func runThreads(n int, thread func() error, stop func()) error {
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := thread(); err != nil {
				stop()
				errs <- err
			}
		}()
	}
	wg.Wait()
	close(errs)
	return <-errs
}
