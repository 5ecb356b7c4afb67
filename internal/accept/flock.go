//go:build linux

package accept

import (
	"fmt"
	"os"
	"time"

	"golang.org/x/sys/unix"
)

// Strategy "flock": accept serialised by flock(2) on a lock file — UNP §30.7
// and Apache's AcceptMutex flock. The loop is serial.go's.
//
// A flock lock belongs to the open file description, not to the process or
// the descriptor: a lock file opened once by the master and inherited would
// be one description shared by every worker, and every worker would "hold"
// the lock at once. So every accepting thread opens the file itself.
//
// flock(LOCK_EX) cannot be bounded or woken (the kernel restarts it after a
// caught signal), so a stopping worker leaves its threads that wait for the
// lock behind (serialized, interrupter): once one gets the lock it sees the
// stop and lets go, and if the worker has exited the kernel drops its
// request. An unlock wakes a waiter, which may wake those queued behind it
// (the lock's own small herd, which seed 000's comment thread points out;
// see docs/STRATEGIES.md).
type flockLock struct{ f *os.File }

func newFlock(cfg Config) (Strategy, error) {
	if cfg.LockFile == "" {
		return nil, fmt.Errorf("flock: no lock file")
	}
	return newSerialized(cfg, "flock", func() (acceptLock, error) {
		f, err := os.OpenFile(cfg.LockFile, os.O_RDWR, 0)
		if err != nil {
			return nil, fmt.Errorf("flock: %w", err)
		}
		return &flockLock{f}, nil
	}, false)
}

// flock's waits never keep the P. flock(2) is restarted after a caught
// signal, so the runtime's preemption signal would not end a held wait;
// and a holder that polls holding its P comes back for the lock sooner,
// ahead of the waiter its unlock woke, more often: 5.73 switches per
// connection against 3.72 (results/strategies-cost.txt).
func (l *flockLock) lock(time.Duration, func() bool, bool) (bool, error) {
	for {
		err := unix.Flock(int(l.f.Fd()), unix.LOCK_EX)
		if err != unix.EINTR {
			return err == nil, err
		}
	}
}

func (l *flockLock) unlock() error { return unix.Flock(int(l.f.Fd()), unix.LOCK_UN) }
func (l *flockLock) close() error  { return l.f.Close() }
