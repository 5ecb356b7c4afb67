package accept

import (
	"errors"
	"fmt"
	"runtime"
	"sync/atomic"

	"github.com/herd-run/herd/internal/shm"
	"golang.org/x/sys/unix"
)

// Strategy "nginx": nginx's accept_mutex (ngx_event_accept.c,
// ngx_trylock_accept_mutex; seed 003), one event loop per accepting thread:
//
//   - If the worker is loaded — accept_disabled = worker_connections/8 −
//     free connections is positive — it sits this round out and counts
//     accept_disabled down instead of competing for the lock.
//   - Otherwise it tries the shared-memory mutex without waiting. The winner
//     adds the listeners to its epoll if they are not there yet; a loser that
//     had them removes them. Only the holder's epoll watches the listeners.
//   - The holder waits for events with no bound (it holds the mutex while it
//     waits, as nginx does); a loser waits at most accept_mutex_delay
//     (--accept-mutex-delay, 500ms) before it tries again.
//   - Accept events are handled while the mutex is held (nginx posts them
//     and runs them first), then the mutex is released.
//   - EMFILE/ENFILE: give the mutex up and sit out a round, instead of
//     spinning on accept4.
//
// nginx turned accept_mutex off by default in 1.11.3 because one worker
// tends to take every connection; the lab shows that here too.
type nginxStrategy struct {
	cfg      Config
	stop     *stopEvent
	disabled atomic.Int64 // ngx_accept_disabled, per worker
	out      exhaustion
}

func newNginx(cfg Config) (Strategy, error) {
	if cfg.Mutex == nil {
		return nil, errors.New("nginx: no shared mutex")
	}
	if err := setNonblock(cfg.Listeners); err != nil {
		return nil, err
	}
	stop, err := newStopEvent()
	if err != nil {
		return nil, fmt.Errorf("nginx: %w", err)
	}
	return &nginxStrategy{cfg: cfg, stop: stop}, nil
}

func (s *nginxStrategy) Stop() { s.stop.signal() }

func (s *nginxStrategy) Serve(deliver func(fd int)) error {
	defer unix.Close(s.stop.fd)
	return runThreads(s.cfg.Threads, func() error { return s.thread(deliver) }, s.Stop)
}

func (s *nginxStrategy) thread(deliver func(fd int)) error {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	ep, err := s.stop.epoll()
	if err != nil {
		return fmt.Errorf("nginx: %w", err)
	}
	defer unix.Close(ep)
	mu, pid, st := s.cfg.Mutex, s.cfg.PID, s.cfg.Stats
	held := false // the listeners are in this thread's epoll
	setListening := func(on bool) error {
		if on == held {
			return nil
		}
		for i, l := range s.cfg.Listeners {
			var err error
			if on {
				err = unix.EpollCtl(ep, unix.EPOLL_CTL_ADD, l.FD, &unix.EpollEvent{Events: unix.EPOLLIN, Fd: int32(i)})
			} else {
				err = unix.EpollCtl(ep, unix.EPOLL_CTL_DEL, l.FD, nil)
			}
			if err != nil {
				return fmt.Errorf("nginx: epoll_ctl %s: %w", l.Addr, err)
			}
		}
		held = on
		return nil
	}
	events := make([]unix.EpollEvent, len(s.cfg.Listeners)+1)
	delay := int(s.cfg.MutexDelay.Milliseconds())
	for !s.stop.stopped.Load() {
		locked := false
		if s.disabled.Load() > 0 {
			s.disabled.Add(-1)
			if err := setListening(false); err != nil {
				return err
			}
		} else if mu.TryLock(pid) {
			locked = true
			if err := setListening(true); err != nil {
				mu.Unlock(pid)
				return err
			}
		} else if err := setListening(false); err != nil {
			return err
		}

		timeout := delay
		if locked {
			timeout = -1
		}
		n, err := unix.EpollWait(ep, events, timeout)
		if err != nil && err != unix.EINTR {
			if locked {
				mu.Unlock(pid)
			}
			return fmt.Errorf("nginx: epoll_wait: %w", err)
		}
		got, woken := 0, false
		for _, ev := range events[:max(n, 0)] {
			if ev.Fd < 0 {
				continue // Stop
			}
			woken = true
			k, err := acceptBurst(s.cfg.Listeners[ev.Fd], &s.cfg, &s.out, deliver)
			got += k
			if err != nil {
				if locked {
					mu.Unlock(pid)
				}
				return fmt.Errorf("nginx: %w", err)
			}
			s.disabled.Store(int64(acceptDisabled(s.cfg)))
			if s.out.active.Load() {
				s.disabled.Store(1) // out of descriptors: sit the next round out
			}
		}
		switch {
		case woken:
			st.Inc(shm.Wakeups)
			if got == 0 {
				st.Inc(shm.Spurious)
			}
		case n == 0:
			st.Inc(shm.Timeouts)
		}
		if locked {
			mu.Unlock(pid)
		}
	}
	return nil
}
