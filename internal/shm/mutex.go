//go:build linux

package shm

import (
	"sync/atomic"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Mutex is a lock shared by processes through the scoreboard's mapping: a
// futex word that holds the pid of the process holding it (0: free), with
// its top bit set while others may be sleeping on it.
//
// It is what UNP §30.8 builds from a pthread mutex in shared memory and
// Apache's `Mutex pthread` uses, and it behaves as glibc's: the word's three
// states (free, locked, locked with sleepers) are Drepper's mutex in
// "Futexes Are Tricky". Waiters sleep in FUTEX_WAIT on the shared page — no
// FUTEX_PRIVATE_FLAG, since the waiters are different processes. An unlock
// wakes one sleeper, and only when the contended bit says there may be one;
// a thread that takes the lock while it is free, ahead of a woken sleeper
// (common under load: the woken thread is queued on the unlocker's CPU, and
// the unlocker is back from answering its connection first; traced for the
// flock lock in docs/STRATEGIES.md), takes it without the bit, so its
// unlock wakes nobody, and the woken thread sets the bit again before it
// sleeps: one wakeup per episode of contention, not one per unlock.
//
// Robustness: a process killed while holding the lock cannot release it;
// the master, which reaps every worker, does (ForceUnlock), as nginx's
// master does in ngx_reap_children. uWSGI's thunder lock, which has no such
// step, deadlocks after a holder is killed (unbit/uwsgi#1571).
type Mutex struct {
	word *atomic.Uint32
}

// contended marks the word of a held lock that may have sleepers. Pids stay
// below 2^22 on Linux (PID_MAX_LIMIT), far from this bit.
const contended = 1 << 31

// AcceptMutex is the scoreboard's accept mutex, for the plain listeners.
func (s *Scoreboard) AcceptMutex() *Mutex { return s.mutex(hMutex) }

// TLSAcceptMutex is the TLS listeners' accept mutex. The listeners of
// each kind are served by a loop of their own in every worker, and a lock
// serialises accept on the listeners its holder watches: with one lock
// for both, a loop holding it for the plain listeners would leave TLS
// connections waiting for it in every worker.
func (s *Scoreboard) TLSAcceptMutex() *Mutex { return s.mutex(hTLSMutex) }

func (s *Scoreboard) mutex(word int) *Mutex {
	return &Mutex{word: (*atomic.Uint32)(unsafe.Pointer(&s.mem[word*8]))}
}

// TryLock takes the lock for pid if it is free.
func (m *Mutex) TryLock(pid int) bool { return m.word.CompareAndSwap(0, uint32(pid)) }

// Lock takes the lock for pid, sleeping until it is free; it returns false,
// without the lock, once timeout has passed, or when quit reports true after
// the sleep was cut short. A caught signal ends the sleep: FUTEX_WAIT with a
// timeout fails with EINTR after a signal handler ran, SA_RESTART or not
// (the kernel's ERESTART_RESTARTBLOCK), so a stopping worker's waiters need
// no short timeout to notice the stop. raw: the sleep keeps the thread's P
// (the Go scheduler does not see it as a system call); the caller must be
// able to spare the P, and the runtime's preemption signal ends the sleep
// as a stop's does.
func (m *Mutex) Lock(pid int, timeout time.Duration, quit func() bool, raw bool) bool {
	if m.TryLock(pid) {
		return true
	}
	deadline := time.Now().Add(timeout)
	for {
		v := m.word.Load()
		if v == 0 {
			// Taken after waiting: others may sleep behind this thread,
			// so the lock is taken as contended (glibc's lll_lock takes
			// it as 2 once it has waited).
			if m.word.CompareAndSwap(0, uint32(pid)|contended) {
				return true
			}
			continue
		}
		if v&contended == 0 && !m.word.CompareAndSwap(v, v|contended) {
			continue
		}
		// The bit is set before giving up, so the holder's unlock wakes
		// someone even if this thread leaves now.
		left := time.Until(deadline)
		if left <= 0 || quit() {
			return false
		}
		ts := unix.NsecToTimespec(left.Nanoseconds())
		if raw {
			rawFutex(m.word, futexWait, v|contended, &ts)
		} else {
			futex(m.word, futexWait, v|contended, &ts)
		}
	}
}

// Unlock releases the lock if pid holds it, and wakes one sleeper if there
// may be one.
func (m *Mutex) Unlock(pid int) bool {
	v, ok := m.release(pid)
	if ok && v&contended != 0 {
		futex(m.word, futexWake, 1, nil)
	}
	return ok
}

// ForceUnlock releases the lock if the dead process pid still holds it. The
// master calls it for every worker it reaps.
func (m *Mutex) ForceUnlock(pid int) bool {
	if pid <= 0 {
		return false
	}
	_, ok := m.release(pid)
	if ok {
		futex(m.word, futexWake, 1, nil)
	}
	return ok
}

// release frees the lock if pid holds it, and returns the word it held.
func (m *Mutex) release(pid int) (uint32, bool) {
	for {
		v := m.word.Load()
		if v&^contended != uint32(pid) || v == 0 {
			return v, false
		}
		if m.word.CompareAndSwap(v, 0) {
			return v, true
		}
	}
}

// Holder is the pid holding the lock, or 0.
func (m *Mutex) Holder() int { return int(m.word.Load() &^ contended) }

// futex(2) operations; x/sys/unix does not name them. Not ORed with
// FUTEX_PRIVATE_FLAG (128): the word is shared between processes.
const (
	futexWait = 0
	futexWake = 1
)

func rawFutex(addr *atomic.Uint32, op int, val uint32, ts *unix.Timespec) {
	unix.RawSyscall6(unix.SYS_FUTEX, uintptr(unsafe.Pointer(addr)), uintptr(op), uintptr(val),
		uintptr(unsafe.Pointer(ts)), 0, 0)
}

func futex(addr *atomic.Uint32, op int, val uint32, ts *unix.Timespec) {
	unix.Syscall6(unix.SYS_FUTEX, uintptr(unsafe.Pointer(addr)), uintptr(op), uintptr(val),
		uintptr(unsafe.Pointer(ts)), 0, 0)
}
