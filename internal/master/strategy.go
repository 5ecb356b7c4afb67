//go:build linux

package master

import (
	"fmt"
	"os"

	"github.com/herd-run/herd/internal/shm"
	"github.com/herd-run/herd/internal/worker"
	"golang.org/x/sys/unix"
)

// The master's half of an accept strategy. Most strategies live wholly in
// the workers (internal/accept, one file each); four also need the master,
// each in a file of its own here:
//
//	flock          the lock file every accepting thread locks (this file)
//	mutex, nginx   freeing the shared-memory mutex a dead worker held (this file)
//	reuseport      one SO_REUSEPORT socket per slot and address (reuseport.go)
//	fdpass         the master accepts and passes descriptors (fdpass.go)
//
// The supervisor (master.go, spawn.go, generations.go) calls a half at the
// points of the master's and a worker's life below, and never asks which
// strategy runs. The others get shared: every worker inherits the master's
// sockets, and nothing else happens.
type half interface {
	// listen makes the listening sockets when none were inherited or
	// activated; open makes what the half holds for the master's life.
	listen() error
	open() error
	// workerSockets are the listening sockets a worker of slot inherits;
	// spec adds what the strategy's workers must know (flock: the lock).
	workerSockets(slot int) ([]*Socket, error)
	spec(s *worker.Spec)
	// run starts what works while the master runs (fdpass accepts).
	run() error
	// ready: p reported ready.
	ready(p *proc)
	// stopWorker tells p to stop with sig; a half may hold back a graceful
	// stop (fdpass: until p has taken what was sent to it).
	stopWorker(p *proc, sig unix.Signal)
	// exited: p has been reaped (its control socket is still open).
	exited(p *proc)
	// resized: TTIN or TTOU changed the wanted worker count.
	resized()
	// stopping: the master begins to stop, gracefully or not.
	stopping(graceful bool)
	// slots are the per-slot sockets a binary upgrade hands on, or nil;
	// adopted receives them in the new master.
	slots() map[int][]*Socket
	adopted(map[int][]*Socket)
	// close releases what listen and open made, but the shared sockets.
	close()
}

// newHalf returns the master's half of strategy name.
func newHalf(m *Master, name string) half {
	switch name {
	case "flock":
		return &flockHalf{shared: shared{m}}
	case "mutex", "nginx":
		return &mutexHalf{shared{m}}
	case "reuseport":
		return &reuseportHalf{shared: shared{m}, socks: map[int][]*Socket{}}
	case "fdpass":
		return newDispatcher(m)
	}
	return shared{m}
}

// shared is the half of the strategies that live in the workers: every
// worker inherits the master's sockets. The other halves embed it.
type shared struct{ m *Master }

func (h shared) listen() error {
	for _, a := range h.m.cfg.addresses() {
		s, err := h.m.listenConfig(false).Listen(a)
		if err != nil {
			return err
		}
		h.m.sockets = append(h.m.sockets, s)
	}
	return nil
}

func (shared) open() error                            { return nil }
func (h shared) workerSockets(int) ([]*Socket, error) { return h.m.sockets, nil }
func (shared) spec(*worker.Spec)                      {}
func (shared) run() error                             { return nil }
func (shared) ready(*proc)                            {}
func (shared) stopWorker(p *proc, sig unix.Signal)    { p.process.Signal(sig) }
func (shared) exited(*proc)                           {}
func (shared) resized()                               {}
func (shared) stopping(bool)                          {}
func (shared) slots() map[int][]*Socket               { return nil }
func (shared) adopted(map[int][]*Socket)              {}
func (shared) close()                                 {}

// flockHalf makes the lock file that serialises accept under flock: each
// accepting thread opens it for its own open file description and locks
// it around accept (Apache's AcceptMutex flock).
type flockHalf struct {
	shared
	path string
}

func (h *flockHalf) open() error {
	f, err := os.CreateTemp("", "herd-accept-*.lock")
	if err != nil {
		return fmt.Errorf("flock: lock file: %w", err)
	}
	h.path = f.Name()
	f.Close()
	// The TLS listeners have a lock of their own (see
	// shm.TLSAcceptMutex): the same name with ".tls".
	for _, p := range []string{h.path, h.path + ".tls"} {
		if err := os.WriteFile(p, nil, 0o600); err != nil {
			return fmt.Errorf("flock: lock file: %w", err)
		}
		if err := h.m.creds.chown(p); err != nil { // workers open it as themselves
			return fmt.Errorf("flock: lock file: %w", err)
		}
	}
	return nil
}

func (h *flockHalf) spec(s *worker.Spec) { s.LockFile = h.path }

func (h *flockHalf) close() {
	if h.path != "" {
		os.Remove(h.path)
		os.Remove(h.path + ".tls")
	}
}

// mutexHalf frees the accept mutex in shared memory (strategies mutex and
// nginx) when the worker holding it dies: it cannot release it itself, and
// every other worker would wait for it for ever. The mutex is robust only
// this way, since the master alone sees every death.
type mutexHalf struct{ shared }

func (h mutexHalf) exited(p *proc) {
	for _, m := range []*shm.Mutex{h.m.board.AcceptMutex(), h.m.board.TLSAcceptMutex()} {
		if m.ForceUnlock(p.pid()) {
			h.m.log.Warn("freed the accept mutex held by a dead worker", "pid", p.pid())
		}
	}
}
