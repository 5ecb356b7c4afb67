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

// Strategy "epoll": each accepting thread of each worker creates its own
// epoll instance after the worker has started and watches the shared
// listeners in it, level-triggered. Every epoll instance is on the socket's
// wait queue without WQ_FLAG_EXCLUSIVE, so one connection wakes every idle
// worker; one wins accept4, the others get EAGAIN — the thundering herd of
// seed 004's second scene, kept on purpose so the lab can show it.
//
// (Creating the epoll instance before fork, the first scene, would share
// one instance between processes: a bug once connections are added, and
// not possible here anyway, since workers are exec'ed.)
//
// The loop is shared with "exclusive"; Stop writes an eventfd that every
// thread's epoll also watches.
type epollStrategy struct {
	cfg       Config
	name      string
	exclusive bool
	stop      *stopEvent
	out       exhaustion
	base      int32 // Inline: the event token of listener 0
	accepts   []int // Inline: per listener, for reordering
}

// stopEvent is an eventfd that every accepting thread's epoll watches, so
// Stop wakes them all at once.
type stopEvent struct {
	fd      int
	stopped atomic.Bool
}

func newStopEvent() (*stopEvent, error) {
	fd, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		return nil, fmt.Errorf("eventfd: %w", err)
	}
	return &stopEvent{fd: fd}, nil
}

func (s *stopEvent) signal() {
	if s.stopped.CompareAndSwap(false, true) {
		unix.Write(s.fd, []byte{1, 0, 0, 0, 0, 0, 0, 0})
	}
}

// epoll makes a thread's epoll instance watching the stop event, which
// reports itself with Fd -1.
func (s *stopEvent) epoll() (int, error) {
	ep, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return -1, fmt.Errorf("epoll_create1: %w", err)
	}
	if err := unix.EpollCtl(ep, unix.EPOLL_CTL_ADD, s.fd, &unix.EpollEvent{Events: unix.EPOLLIN, Fd: -1}); err != nil {
		unix.Close(ep)
		return -1, fmt.Errorf("watch stop eventfd: %w", err)
	}
	return ep, nil
}

func newEpoll(cfg Config) (Strategy, error) { return newEpollStrategy(cfg, "epoll", false) }

func newEpollStrategy(cfg Config, name string, exclusive bool) (*epollStrategy, error) {
	if err := setNonblock(cfg.Listeners); err != nil {
		return nil, err
	}
	stop, err := newStopEvent()
	if err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	return &epollStrategy{cfg: cfg, name: name, exclusive: exclusive, stop: stop}, nil
}

func (e *epollStrategy) Stop() { e.stop.signal() }

func (e *epollStrategy) Serve(deliver func(fd int)) error {
	defer unix.Close(e.stop.fd)
	return runThreads(e.cfg.Threads, func() error { return e.thread(deliver) }, e.Stop, nil, nil)
}

// listenerEvents is what the listeners are watched for.
func (e *epollStrategy) listenerEvents() uint32 {
	if e.exclusive {
		return unix.EPOLLIN | unix.EPOLLEXCLUSIVE
	}
	return unix.EPOLLIN
}

func (e *epollStrategy) thread(deliver func(fd int)) error {
	ep, err := e.stop.epoll()
	if err != nil {
		return fmt.Errorf("%s: %w", e.name, err)
	}
	defer unix.Close(ep)
	for i, l := range e.cfg.Listeners {
		ev := unix.EpollEvent{Events: e.listenerEvents(), Fd: int32(i)}
		if err := unix.EpollCtl(ep, unix.EPOLL_CTL_ADD, l.FD, &ev); err != nil {
			return fmt.Errorf("%s: watch %s: %w", e.name, l.Addr, err)
		}
	}
	st := e.cfg.Stats
	events := make([]unix.EpollEvent, len(e.cfg.Listeners)+1)
	accepts := make([]int, len(e.cfg.Listeners)) // per listener, for reordering
	var y held.Yielder
	for {
		y.Yield(time.Now())
		n, err := unix.EpollWait(ep, events, -1)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return fmt.Errorf("%s: epoll_wait: %w", e.name, err)
		}
		if e.stop.stopped.Load() {
			return nil
		}
		st.Inc(shm.Wakeups)
		got := 0
		for _, ev := range events[:n] {
			if ev.Fd < 0 {
				continue
			}
			i := int(ev.Fd)
			k, err := acceptBurst(e.cfg.Listeners[i], &e.cfg, &e.out, deliver)
			if err != nil {
				return fmt.Errorf("%s: %w", e.name, err)
			}
			got += k
			if e.exclusive && k > 0 {
				accepts[i] += k
				if e.reorderDue(accepts[i], k) {
					if err := reAdd(ep, e.cfg.Listeners[i], int32(i)); err != nil {
						return fmt.Errorf("%s: %w", e.name, err)
					}
				}
			}
		}
		if got == 0 {
			st.Inc(shm.Spurious)
		}
	}
}

// Attach, Ready and Detach run the strategy inside an engine's event loop
// (see Inline): the engine's own epoll instance watches the listeners, as
// each accepting thread's does in Serve.
func (e *epollStrategy) Attach(ep int, base int32) error {
	e.base = base
	e.accepts = make([]int, len(e.cfg.Listeners))
	for i, l := range e.cfg.Listeners {
		ev := unix.EpollEvent{Events: e.listenerEvents(), Fd: base + int32(i)}
		if err := unix.EpollCtl(ep, unix.EPOLL_CTL_ADD, l.FD, &ev); err != nil {
			return fmt.Errorf("%s: watch %s: %w", e.name, l.Addr, err)
		}
	}
	return nil
}

func (e *epollStrategy) Ready(ep int, i int, deliver func(fd int)) error {
	st := e.cfg.Stats
	st.Inc(shm.Wakeups)
	k, err := acceptBurst(e.cfg.Listeners[i], &e.cfg, &e.out, deliver)
	if err != nil {
		return fmt.Errorf("%s: %w", e.name, err)
	}
	if k == 0 {
		st.Inc(shm.Spurious)
		return nil
	}
	if e.exclusive {
		e.accepts[i] += k
		if e.reorderDue(e.accepts[i], k) {
			return reAdd(ep, e.cfg.Listeners[i], e.base+int32(i))
		}
	}
	return nil
}

func (e *epollStrategy) Detach(ep int, _ func(fd int)) {
	for _, l := range e.cfg.Listeners {
		unix.EpollCtl(ep, unix.EPOLL_CTL_DEL, l.FD, nil)
	}
}

// acceptBurst accepts from a listener that polled readable: one connection,
// or with multi-accept every connection until EAGAIN (nginx's
// multi_accept). It returns how many it delivered.
func acceptBurst(l Listener, cfg *Config, out *exhaustion, deliver func(fd int)) (int, error) {
	n := 0
	st, multi, log := cfg.Stats, cfg.MultiAccept, cfg.Log
	for {
		fd, err := accept4(l.FD, cfg.acceptFlags(), false)
		switch {
		case err == nil:
			accepted(st, fd, deliver)
			out.recovered(log)
			n++
			if !multi {
				return n, nil
			}
			continue
		case err == unix.EAGAIN:
			return n, nil
		case transient(err):
			continue
		case out.hit(err, log):
			return n, nil
		}
		return n, fmt.Errorf("accept4 on %s: %w", l.Addr, err)
	}
}
