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

// Strategy "accept": every accepting thread of every worker sleeps in a
// blocking accept4(2) on the shared listening socket.
//
// Since Linux 2.6 the listening socket's wait queue entries are exclusive
// (WQ_FLAG_EXCLUSIVE), so an incoming connection wakes exactly one sleeper:
// there is no thundering herd and no lock is needed. This is the prefork
// server of seed 000, UNP §30.6, and Apache's prefork MPM with a single
// listener (SINGLE_LISTEN_UNSERIALIZED_ACCEPT).
//
// A blocking accept cannot watch two sockets, so each listener gets its own
// Threads accepting threads. Closing the socket would wake a thread blocked
// in accept4, but other workers still use it; instead Stop signals the
// worker's threads (interrupter), and a socket with SO_RCVTIMEO set makes
// accept4 fail with EINTR rather than restart; the thread then sees that it
// should stop. The timeout bounds every block in case a signal misses.
//
// While connections come (Config.HoldFor) a thread waits in a raw accept4
// that keeps its P, as the engine's loop waits in epoll_wait: a wait the
// scheduler knows of has its P taken and handed back around it, which
// costs context switches in the runtime's threads. SO_RCVTIMEO also makes
// the runtime's preemption signal end the raw wait with EINTR, so a
// stop-the-world never waits on it. The master's accepting thread (fdpass)
// does not hold: it measured no better there (results/strategies-cost.txt). A
// connection that arrives while a worker is stopping is either accepted by
// that worker before it stops (and served) or left in the queue for
// another: it is never dropped.
type blocking struct {
	cfg      Config
	stopping atomic.Bool
	out      exhaustion
	// acceptQueuedOnStop: when stopping, accept what is already queued before
	// returning (reuseport: the socket is this slot's alone).
	acceptQueuedOnStop bool
	in                 interrupter
}

func newBlocking(cfg Config) (Strategy, error) {
	tv := unix.NsecToTimeval(sleepBound.Nanoseconds())
	for _, l := range cfg.Listeners {
		// The master creates listeners blocking; make sure, since O_NONBLOCK
		// belongs to the open file description that every worker shares.
		if err := unix.SetNonblock(l.FD, false); err != nil {
			return nil, fmt.Errorf("accept: listener %s: %w", l.Addr, err)
		}
		if err := unix.SetsockoptTimeval(l.FD, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
			return nil, fmt.Errorf("accept: SO_RCVTIMEO on %s: %w", l.Addr, err)
		}
	}
	return &blocking{cfg: cfg}, nil
}

func (b *blocking) Stop() {
	if !b.stopping.Swap(true) {
		go b.in.interrupt(sleepBound)
	}
}

// Serve runs Threads accepting threads per listener and returns the first
// error once all have returned; one broken listener stops the worker (the
// master replaces it).
func (b *blocking) Serve(deliver func(fd int)) error {
	next := make(chan Listener, len(b.cfg.Listeners)*b.cfg.Threads)
	for _, l := range b.cfg.Listeners {
		for range b.cfg.Threads {
			next <- l
		}
	}
	return runThreads(cap(next), func() error { return b.thread(<-next, deliver) }, b.Stop, nil, nil)
}

func (b *blocking) thread(l Listener, deliver func(fd int)) error {
	st := b.cfg.Stats
	b.in.enter()
	defer b.in.leave()
	waits := held.NewWaits(b.cfg.HoldFor)
	for !b.stopping.Load() {
		start := time.Now()
		keep := waits.Before(start)
		fd, err := accept4(l.FD, b.cfg.acceptFlags(), !keep)
		switch {
		case err == nil:
			waits.Came(time.Now())
			st.Inc(shm.Wakeups)
			accepted(st, fd, deliver)
			b.out.recovered(b.cfg.Log)
		case err == unix.EAGAIN:
			// Either SO_RCVTIMEO expired (nobody came) or we were woken and
			// another thread took the connection first.
			if time.Since(start) >= sleepBound*9/10 {
				st.Inc(shm.Timeouts)
			} else {
				st.Inc(shm.Wakeups)
				st.Inc(shm.Spurious)
			}
		case err == unix.ECONNABORTED:
			st.Inc(shm.Wakeups) // woken for a connection that was reset while queued
			st.Inc(shm.Spurious)
		case transient(err):
		case b.out.hit(err, b.cfg.Log):
		default:
			return fmt.Errorf("accept4 on %s: %w", l.Addr, err)
		}
	}
	if b.acceptQueuedOnStop {
		b.acceptQueued(l, deliver)
	}
	return nil
}

// acceptQueued accepts connections already queued on l, without waiting for more.
func (b *blocking) acceptQueued(l Listener, deliver func(fd int)) {
	for {
		pfd := []unix.PollFd{{Fd: int32(l.FD), Events: unix.POLLIN}}
		if n, err := unix.Poll(pfd, 0); err != nil || n == 0 {
			return
		}
		fd, err := accept4(l.FD, b.cfg.acceptFlags(), true)
		if err != nil {
			if transient(err) {
				continue
			}
			return // EAGAIN: another thread took it; or the queue is empty
		}
		b.cfg.Stats.Inc(shm.Wakeups)
		accepted(b.cfg.Stats, fd, deliver)
	}
}
