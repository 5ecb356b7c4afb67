//go:build linux

package shm

import (
	"sync/atomic"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Mutex is a lock shared by processes through the scoreboard's mapping: a
// futex word that holds the pid of the process holding it (0: free) and a
// count of sleepers, so an unlock with nobody waiting costs no syscall.
//
// It is what UNP §30.8 builds from a pthread mutex in shared memory and
// nginx's ngx_shmtx from an atomic word (plus a semaphore to sleep on):
// here waiters sleep in FUTEX_WAIT on the shared page — no
// FUTEX_PRIVATE_FLAG, since the waiters are different processes — and an
// unlock wakes one.
//
// Robustness: a process killed while holding the lock cannot release it;
// the master, which reaps every worker, does (ForceUnlock), as nginx's
// master does in ngx_reap_children. uWSGI's thunder lock, which has no such
// step, deadlocks after a holder is killed (unbit/uwsgi#1571).
type Mutex struct {
	word    *atomic.Uint32
	waiters *atomic.Uint32
}

// AcceptMutex is the scoreboard's accept mutex, for the plain listeners.
func (s *Scoreboard) AcceptMutex() *Mutex { return s.mutex(hMutex, hMutexWaiters) }

// TLSAcceptMutex is the TLS listeners' accept mutex. The listeners of
// each kind are served by a loop of their own in every worker, and a lock
// serialises accept on the listeners its holder watches: with one lock
// for both, a loop holding it for the plain listeners would leave TLS
// connections waiting for it in every worker.
func (s *Scoreboard) TLSAcceptMutex() *Mutex { return s.mutex(hTLSMutex, hTLSMutexWaiters) }

func (s *Scoreboard) mutex(word, waiters int) *Mutex {
	return &Mutex{
		word:    (*atomic.Uint32)(unsafe.Pointer(&s.mem[word*8])),
		waiters: (*atomic.Uint32)(unsafe.Pointer(&s.mem[waiters*8])),
	}
}

// TryLock takes the lock for pid if it is free.
func (m *Mutex) TryLock(pid int) bool { return m.word.CompareAndSwap(0, uint32(pid)) }

// Lock takes the lock for pid, sleeping until it is free or until timeout
// has passed (then it returns false). The bound lets a waiting thread notice
// that its worker is stopping.
func (m *Mutex) Lock(pid int, timeout time.Duration) bool {
	deadline := time.Now().Add(timeout)
	for {
		if m.TryLock(pid) {
			return true
		}
		left := time.Until(deadline)
		if left <= 0 {
			return false
		}
		m.waiters.Add(1)
		if v := m.word.Load(); v != 0 {
			ts := unix.NsecToTimespec(left.Nanoseconds())
			futex(m.word, futexWait, v, &ts)
		}
		m.waiters.Add(^uint32(0))
	}
}

// Unlock releases the lock if pid holds it, and wakes one sleeper.
func (m *Mutex) Unlock(pid int) bool {
	if !m.word.CompareAndSwap(uint32(pid), 0) {
		return false
	}
	if m.waiters.Load() > 0 {
		futex(m.word, futexWake, 1, nil)
	}
	return true
}

// ForceUnlock releases the lock if the dead process pid still holds it. The
// master calls it for every worker it reaps.
func (m *Mutex) ForceUnlock(pid int) bool {
	if pid <= 0 || !m.word.CompareAndSwap(uint32(pid), 0) {
		return false
	}
	futex(m.word, futexWake, 1, nil)
	return true
}

// Holder is the pid holding the lock, or 0.
func (m *Mutex) Holder() int { return int(m.word.Load()) }

// futex(2) operations; x/sys/unix does not name them. Not ORed with
// FUTEX_PRIVATE_FLAG (128): the word is shared between processes.
const (
	futexWait = 0
	futexWake = 1
)

func futex(addr *atomic.Uint32, op int, val uint32, ts *unix.Timespec) {
	unix.Syscall6(unix.SYS_FUTEX, uintptr(unsafe.Pointer(addr)), uintptr(op), uintptr(val),
		uintptr(unsafe.Pointer(ts)), 0, 0)
}
