//go:build linux

package accept

import (
	"errors"
	"sync"

	"github.com/herd-run/herd/internal/shm"
)

// Strategy "fdpass": descriptor passing (seed 000; UNP §30.9). The master
// is the only process that accepts; it sends each connection's descriptor
// over the worker's control socket (sendmsg with SCM_RIGHTS) to the worker
// with the fewest connections, and keeps its own copy until the worker
// acknowledges receipt. A worker that dies with descriptors in flight loses
// nothing: the master sends them to another worker. When every worker is at
// its connection limit the master stops accepting and the backlog holds the
// rest. The master's half is internal/master/fdpass.go.
//
// Here, in the worker, a received descriptor is wrapped, acknowledged and
// served. A wakeup is the receipt of one descriptor; there are no spurious
// ones — and no herd — but every connection costs the master an accept, a
// sendmsg and a context switch more than the other strategies (seed 004
// measured it slower than locking).
type fdpass struct {
	cfg  Config
	stop chan struct{}
	once sync.Once
}

func newFdpass(cfg Config) (Strategy, error) {
	if cfg.Passed == nil {
		return nil, errors.New("fdpass: no channel from the master")
	}
	return &fdpass{cfg: cfg, stop: make(chan struct{})}, nil
}

func (f *fdpass) Stop() { f.once.Do(func() { close(f.stop) }) }

func (f *fdpass) Serve(deliver func(fd int)) error {
	st := f.cfg.Stats
	for {
		select {
		case <-f.stop:
			return nil
		case p, ok := <-f.cfg.Passed:
			if !ok {
				return nil
			}
			st.Inc(shm.Wakeups)
			p.Ack()
			accepted(st, p.FD, deliver)
		}
	}
}
