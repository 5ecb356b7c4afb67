//go:build linux

package accept

import (
	"errors"
	"time"

	"github.com/herd-run/herd/internal/shm"
)

// Strategy "mutex": accept serialised by a futex mutex in the shared memory
// region — UNP §30.8 (a PTHREAD_PROCESS_SHARED mutex in shared memory) and
// Apache's `Mutex pthread`. The loop is serial.go's; the lock is
// shm.Mutex: the word holds the holder's pid and a bit for possible
// sleepers, waiters sleep in FUTEX_WAIT (a stopping worker's signal ends
// the sleep, see serialized), an unlock wakes one when the bit is set (as
// glibc's mutex), and the master frees the lock of a worker that died
// holding it.
type mutexLock struct {
	m   *shm.Mutex
	pid int
}

func newMutex(cfg Config) (Strategy, error) {
	if cfg.Mutex == nil {
		return nil, errors.New("mutex: no shared mutex")
	}
	return newSerialized(cfg, "mutex", func() (acceptLock, error) {
		return &mutexLock{m: cfg.Mutex, pid: cfg.PID}, nil
	}, true)
}

func (l *mutexLock) lock(bound time.Duration, quit func() bool, keep bool) (bool, error) {
	return l.m.Lock(l.pid, bound, quit, keep), nil
}

func (l *mutexLock) unlock() error {
	if !l.m.Unlock(l.pid) {
		return errors.New("accept mutex taken from its holder")
	}
	return nil
}

func (l *mutexLock) close() error { return nil }
