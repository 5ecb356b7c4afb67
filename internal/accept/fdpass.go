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
// with the fewest connections, and keeps its own copy until it sees, in the
// worker's scoreboard record (shm.Passed), that the worker took it. A worker
// that dies with descriptors in flight loses nothing: the master sends them
// to another worker. When every worker is at its connection limit the
// master stops accepting and the backlog holds the rest. The master's half
// is internal/master/fdpass.go.
//
// Here, in the worker, the thread that reads the control socket — blocked
// in recvmsg, as UNP's child is in read_fd — receives a descriptor, notes
// it taken, and serves it: one wakeup per connection in the worker, one in
// the master, and no reply (an acknowledgement message would wake the
// master a second time). There are no spurious wakeups and no herd, but
// every connection costs the master an accept, a sendmsg and a context
// switch more than the other strategies (seed 004 measured it slower than
// locking).
type fdpass struct {
	cfg  Config
	stop chan struct{}
	once sync.Once
}

// Passed is a connection the master accepted and sent (fdpass), with its
// number in the master's sequence.
type Passed struct {
	FD  int
	Seq uint64
}

func newFdpass(cfg Config) (Strategy, error) {
	if cfg.Passes == nil {
		return nil, errors.New("fdpass: no descriptors from the master")
	}
	return &fdpass{cfg: cfg, stop: make(chan struct{})}, nil
}

func (f *fdpass) Stop() { f.once.Do(func() { close(f.stop) }) }

func (f *fdpass) Serve(deliver func(fd int)) error {
	st := f.cfg.Stats
	stop := f.cfg.Passes(func(p Passed) {
		st.Inc(shm.Wakeups)
		// Active before Passed: from the moment the master may close its
		// copy, the worker shows that it holds a connection (herd bench
		// --chaos kills only workers that hold none).
		st.Inc(shm.Active)
		st.Store(shm.Passed, p.Seq)
		st.Inc(shm.Accepts)
		deliver(p.FD)
	})
	<-f.stop
	stop()
	return nil
}
