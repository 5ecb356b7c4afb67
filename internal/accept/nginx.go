//go:build linux

package accept

import (
	"errors"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/herd-run/herd/internal/held"
	"github.com/herd-run/herd/internal/shm"
	"golang.org/x/sys/unix"
)

// Strategy "nginx": nginx's accept_mutex (ngx_event_accept.c,
// ngx_trylock_accept_mutex; seed 003), one event loop per accepting thread:
//
//   - If the worker is loaded — accept_disabled = worker_connections/8 −
//     free connections is positive — it does not compete for the lock this
//     round and counts accept_disabled down. It leaves its epoll as it is:
//     a loaded worker that held the lock keeps the listeners until it next
//     tries the lock and loses (ngx_process_events_and_timers touches
//     nothing in that branch), so for a while two workers may listen.
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
//
// The cycle runs in a thread of its own (Serve), or — under the native
// engine with one accepting thread — inside the engine's event loop
// (Inline and Cycler), which is where nginx runs it: before each
// epoll_wait the loop tries the mutex, accepts first when it wakes, lets
// the mutex go, and only then reads from the new connections (nginx posts
// those reads to ngx_posted_events for that reason: the lock is held for
// the accepts alone).
type nginxStrategy struct {
	cfg      Config
	stop     *stopEvent
	disabled atomic.Int64 // ngx_accept_disabled, per worker
	out      exhaustion
	inline   *cycle // Inline: the engine loop's cycle
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
	return runThreads(s.cfg.Threads, func() error { return s.thread(deliver) }, s.Stop, nil, nil)
}

// cycle is one event loop's side of the accept mutex: its epoll instance,
// whether the listeners are in it, and whether it holds the mutex.
type cycle struct {
	s      *nginxStrategy
	ep     int
	base   int32 // event token of listener 0
	held   bool  // the listeners are in ep
	locked bool  // this loop holds the mutex
	woken  bool  // a listener was reported this round
	got    int   // connections accepted this round
}

// setListening adds the listeners to the loop's epoll or takes them out.
func (c *cycle) setListening(on bool) error {
	if on == c.held {
		return nil
	}
	for i, l := range c.s.cfg.Listeners {
		var err error
		if on {
			err = unix.EpollCtl(c.ep, unix.EPOLL_CTL_ADD, l.FD, &unix.EpollEvent{Events: unix.EPOLLIN, Fd: c.base + int32(i)})
		} else {
			err = unix.EpollCtl(c.ep, unix.EPOLL_CTL_DEL, l.FD, nil)
		}
		if err != nil {
			return fmt.Errorf("nginx: epoll_ctl %s: %w", l.Addr, err)
		}
	}
	c.held = on
	return nil
}

// before is ngx_process_events_and_timers up to the wait: sit out while
// loaded, else try the mutex; it returns how long the wait may last, given
// the loop's own limit (-1: none).
func (c *cycle) before(timeout int) (int, error) {
	s := c.s
	c.locked, c.woken, c.got = false, false, 0
	switch {
	case s.disabled.Load() > 0:
		s.disabled.Add(-1) // and the listeners stay where they are, as in nginx
		return timeout, nil
	case s.cfg.Mutex.TryLock(s.cfg.PID):
		c.locked = true
		if err := c.setListening(true); err != nil {
			c.release()
			return 0, err
		}
		return timeout, nil
	}
	if err := c.setListening(false); err != nil {
		return 0, err
	}
	if delay := int(s.cfg.MutexDelay.Milliseconds()); timeout < 0 || timeout > delay {
		timeout = delay
	}
	return timeout, nil
}

// accept handles a readable listener (ngx_event_accept), updating
// accept_disabled after each burst as nginx does.
func (c *cycle) accept(i int, deliver func(fd int)) error {
	s := c.s
	c.woken = true
	k, err := acceptBurst(s.cfg.Listeners[i], &s.cfg, &s.out, deliver)
	c.got += k
	if err != nil {
		return fmt.Errorf("nginx: %w", err)
	}
	s.disabled.Store(int64(acceptDisabled(s.cfg)))
	if s.out.active.Load() {
		s.disabled.Store(1) // out of descriptors: sit the next round out
	}
	return nil
}

// after ends the accept part of a round of n events: counts it, and lets
// the mutex go.
func (c *cycle) after(n int) {
	st := c.s.cfg.Stats
	switch {
	case c.woken:
		st.Inc(shm.Wakeups)
		if c.got == 0 {
			st.Inc(shm.Spurious)
		}
	case n == 0:
		st.Inc(shm.Timeouts)
	}
	c.release()
}

func (c *cycle) release() {
	if c.locked {
		c.s.cfg.Mutex.Unlock(c.s.cfg.PID)
		c.locked = false
	}
}

func (s *nginxStrategy) thread(deliver func(fd int)) error {
	ep, err := s.stop.epoll()
	if err != nil {
		return fmt.Errorf("nginx: %w", err)
	}
	defer unix.Close(ep)
	c := &cycle{s: s, ep: ep}
	defer c.release()
	events := make([]unix.EpollEvent, len(s.cfg.Listeners)+1)
	var y held.Yielder
	for !s.stop.stopped.Load() {
		y.Yield(time.Now())
		// The holder waits with no bound, holding the mutex, as nginx
		// does when no timer is due; a loser waits accept_mutex_delay.
		timeout, err := c.before(-1)
		if err != nil {
			return err
		}
		n, err := unix.EpollWait(ep, events, timeout)
		if err != nil && err != unix.EINTR {
			return fmt.Errorf("nginx: epoll_wait: %w", err)
		}
		for _, ev := range events[:max(n, 0)] {
			if ev.Fd < 0 {
				continue // Stop
			}
			if err := c.accept(int(ev.Fd), deliver); err != nil {
				return err
			}
		}
		c.after(max(n, 0))
	}
	return nil
}

// Attach, Before, Ready, After and Detach run the cycle in an engine's
// event loop (Inline, Cycler). The listeners join the loop's epoll only
// while it holds the mutex.
func (s *nginxStrategy) Attach(ep int, base int32) error {
	s.inline = &cycle{s: s, ep: ep, base: base}
	return nil
}

func (s *nginxStrategy) Before(ep int, timeout int) (int, error) { return s.inline.before(timeout) }

func (s *nginxStrategy) Ready(ep int, i int, deliver func(fd int)) error {
	return s.inline.accept(i, deliver)
}

func (s *nginxStrategy) After(ep int, n int) { s.inline.after(n) }

func (s *nginxStrategy) Detach(ep int, _ func(fd int)) {
	if c := s.inline; c != nil {
		c.setListening(false)
		c.release()
	}
}
