//go:build linux

package accept

import (
	"fmt"

	"github.com/herd-run/herd/internal/shm"
)

// Strategy "reuseport": one SO_REUSEPORT socket per worker slot (seeds 002
// and 004; nginx's "listen ... reuseport"). The kernel spreads incoming
// connections over the sockets of the group by a hash of the 4-tuple, so
// every socket has its own accept queue and its own one waiter: no herd
// and no lock.
//
// Where a connection is accepted: in the native engine's loop, as nginx
// does it — the slot's socket is in the loop's own epoll set (Attach,
// Ready, Detach below), and the loop that accepts serves. For net/http,
// in Go's netpoller (netpoll.go's loop on the slot's socket, which no
// other worker waits on: no herd), where net/http's own goroutines run:
// no thread of its own, as fasthttp's prefork children accept. With more
// than one accepting thread, blocking.go's loop.
//
// The interesting half is in the master (internal/master/reuseport.go): it
// creates and holds each slot's socket, so a worker that reloads or is
// respawned inherits its slot's queue and nothing queued there is lost
// (the failure seed 002 warns of when each worker opens its own socket).
// When the worker count shrinks, the master steers new connections away
// from the removed slot's socket before its worker stops; the stopping
// worker then accepts what is still queued before it exits
// (acceptQueuedOnStop, or Detach), and only then is the socket closed.
func newReuseport(cfg Config) (Strategy, error) {
	if cfg.Loop {
		// The native engine will run it in its loop.
		if err := setNonblock(cfg.Listeners); err != nil {
			return nil, err
		}
		return &ownQueue{&epollStrategy{cfg: cfg, name: "reuseport"}}, nil
	}
	if cfg.Threads == 1 {
		s, err := newNetpoll(cfg)
		if err != nil {
			return nil, err
		}
		n := s.(*netpoll)
		n.acceptQueuedOnStop = true
		return n, nil
	}
	s, err := newBlocking(cfg)
	if err != nil {
		return nil, err
	}
	b := s.(*blocking)
	b.acceptQueuedOnStop = true
	return b, nil
}

// ownQueue is reuseport inside an engine's loop: epoll.go's inline form on
// the worker's own sockets — level-triggered, not exclusive, since no one
// else waits on them — which, leaving, empties their queues.
type ownQueue struct {
	*epollStrategy
}

// Serve and Stop: an ownQueue is only ever run inline (it has no stop
// event for accepting threads).
func (q *ownQueue) Serve(func(fd int)) error {
	return fmt.Errorf("reuseport: made for an engine's loop, not for accepting threads")
}
func (q *ownQueue) Stop() {}

// Detach leaves the sockets and, unless the worker closes at once, first
// accepts what is queued on them: no other worker will.
func (q *ownQueue) Detach(ep int, deliver func(fd int)) {
	q.epollStrategy.Detach(ep, deliver)
	if deliver != nil {
		acceptQueued(&q.cfg, &q.out, deliver)
	}
}

// acceptQueued accepts what is already queued on cfg's listeners, which
// are non-blocking, until EAGAIN: a reuseport slot's socket is its
// worker's alone, and is closed after a stopping worker has gone.
func acceptQueued(cfg *Config, out *exhaustion, deliver func(fd int)) {
	all := *cfg
	all.MultiAccept = true
	for _, l := range cfg.Listeners {
		if k, _ := acceptBurst(l, &all, out, deliver); k > 0 {
			cfg.Stats.Inc(shm.Wakeups)
		}
	}
}
