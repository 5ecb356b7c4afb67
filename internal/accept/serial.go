//go:build linux

package accept

import (
	"fmt"
	"sync/atomic"
	"time"

	"github.com/herd-run/herd/internal/held"
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
	// not acquired. keep: the wait may keep the thread's P (see thread).
	lock(bound time.Duration, quit func() bool, keep bool) (bool, error)
	unlock() error
	close() error
}

// A holder polls, and a waiter sleeps, for at most sleepBound before it
// looks again: a stop's signal (interrupter) cuts the holder's poll short,
// and a waiter's sleep where the lock allows it.
type serialized struct {
	cfg     Config
	name    string
	newLock func() (acceptLock, error)
	// interruptible: a signal ends a wait for the lock (mutex), so the
	// waits may also keep the thread's P while connections come (see
	// thread). If not (flock), a stop leaves the threads waiting for the
	// lock behind (interrupter).
	interruptible bool
	stopping      atomic.Bool
	stopped       chan struct{} // closed by Stop
	out           exhaustion
	in            interrupter
}

func newSerialized(cfg Config, name string, newLock func() (acceptLock, error), interruptible bool) (*serialized, error) {
	if err := setNonblock(cfg.Listeners); err != nil {
		return nil, err
	}
	return &serialized{cfg: cfg, name: name, newLock: newLock, interruptible: interruptible, stopped: make(chan struct{})}, nil
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
		go s.in.interrupt(sleepBound)
	}
}

// Serve returns once every thread has returned, or, after Stop, once the
// rest wait for a lock no signal interrupts.
func (s *serialized) Serve(deliver func(fd int)) error {
	return runThreads(s.cfg.Threads, func() error {
		l, err := s.newLock()
		if err != nil {
			return err
		}
		defer l.close()
		return s.thread(l, deliver)
	}, s.Stop, s.stopped, s.in.settled)
}

func (s *serialized) thread(l acceptLock, deliver func(fd int)) error {
	st := s.cfg.Stats
	pfds := make([]unix.PollFd, len(s.cfg.Listeners))
	var fds []int // accepted under the lock, handed on after it
	s.in.enter()
	defer s.in.leave()
	// While connections come the waits keep the thread's P (held.Waits):
	// the holder's poll, and a mutex waiter's FUTEX_WAIT; the runtime's
	// preemption signal ends both, as a stop's does. flock's do not: a
	// signal does not end flock(2), and a holder polling with its P comes
	// back for the lock sooner and steals it more (see flockLock.lock).
	hold := time.Duration(0)
	if s.interruptible {
		hold = s.cfg.HoldFor
	}
	waits := held.NewWaits(hold)
	for !s.stopping.Load() {
		keep := waits.Before(time.Now())
		bound := sleepBound
		if keep {
			bound = held.Bound
		}
		if !s.interruptible {
			s.in.park()
		}
		got, err := l.lock(bound, s.stopping.Load, keep)
		if !s.interruptible {
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
		n, err := poll(pfds, bound, keep)
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
					waits.Came(time.Now())
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

// poll is poll(2) for at most timeout, keeping the P if keep.
func poll(fds []unix.PollFd, timeout time.Duration, keep bool) (int, error) {
	if keep {
		return held.Poll(fds, timeout)
	}
	return unix.Poll(fds, int(timeout/time.Millisecond))
}

// runThreads runs n copies of thread and returns the first error once all
// have returned — or, once stopped is closed, once settled reports that
// the rest may be left behind (nil, nil: never); an error in one calls stop
// so the others end too.
func runThreads(n int, thread func() error, stop func(), stopped <-chan struct{}, settled func() bool) error {
	errs := make(chan error, n)
	for range n {
		go func() {
			err := thread()
			if err != nil {
				stop()
			}
			errs <- err
		}()
	}
	var first error
	var settle <-chan time.Time // ticks once stopped, while threads remain
	for left := n; left > 0; {
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
			if settled() {
				return first
			}
		}
	}
	return first
}
