//go:build linux

package accept

// Strategy "reuseport": one SO_REUSEPORT socket per worker slot (seeds 002
// and 004; nginx's "listen ... reuseport"). The kernel spreads incoming
// connections over the sockets of the group by a hash of the 4-tuple, so
// every socket has its own accept queue and its own one waiter: no herd
// and no lock.
//
// Where a connection is accepted: the worker side is blocking.go's loop on
// the slot's own socket. The interesting half is in the master
// (internal/master/reuseport.go): it creates and holds each slot's socket,
// so a worker that reloads or is respawned inherits its slot's queue and
// nothing queued there is lost (the failure seed 002 warns of when each
// worker opens its own socket). When the worker count shrinks, the master
// steers new connections away from the removed slot's socket before its
// worker stops; the stopping worker then accepts what is still queued
// (acceptQueuedOnStop) before it exits, and only then is the socket closed.
func newReuseport(cfg Config) (Strategy, error) {
	s, err := newBlocking(cfg)
	if err != nil {
		return nil, err
	}
	b := s.(*blocking)
	b.acceptQueuedOnStop = true
	return b, nil
}
