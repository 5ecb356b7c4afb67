package shm

import (
	"fmt"
	"os"
	"runtime"
	"sync/atomic"
	"testing"
	"time"
)

func newBoard(t *testing.T, n int) (*Region, *Scoreboard) {
	t.Helper()
	r, err := Create("test", Size(n))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close() })
	b, err := NewScoreboard(r.Bytes(), n)
	if err != nil {
		t.Fatal(err)
	}
	return r, b
}

func TestRecordsAreCacheLineAligned(t *testing.T) {
	_, b := newBoard(t, 4)
	base := &b.mem[0]
	for i := 0; i < 4; i++ {
		off := uintptrOf(b.Record(i)) - uintptrOf(base)
		if off%64 != 0 {
			t.Errorf("record %d at offset %d, not on a cache line", i, off)
		}
	}
}

func TestClaimReleaseKeepsTotals(t *testing.T) {
	_, b := newBoard(t, 2)
	i := b.Claim(0, 1, 1)
	j := b.Claim(1, 1, 1)
	if i < 0 || j < 0 || i == j {
		t.Fatalf("claims %d, %d", i, j)
	}
	if k := b.Claim(2, 1, 1); k != -1 {
		t.Fatalf("claimed record %d from a full board", k)
	}
	b.Record(i).Add(Requests, 5)
	b.Record(i).Add(Accepts, 4)
	b.Record(j).Add(Requests, 2)
	b.Release(i)
	s := b.Snapshot()
	if len(s.Live) != 1 || s.Total.Requests != 7 || s.Total.Accepts != 4 {
		t.Fatalf("after release: %d live, totals %+v", len(s.Live), s.Total)
	}
	k := b.Claim(3, 2, 1)
	if k != i || b.Record(k).Load(Requests) != 0 || b.Record(k).Load(Slot) != 3 {
		t.Fatalf("reclaimed record %d not reset: requests %d slot %d", k, b.Record(k).Load(Requests), b.Record(k).Load(Slot))
	}
}

// A status reader maps the master's memfd read-only and sees its writes.
func TestSharedAcrossMappings(t *testing.T) {
	r, b := newBoard(t, 3)
	b.SetMaster(42, 7, 3)
	b.Record(b.Claim(0, 7, 1)).Add(Wakeups, 9)
	f, err := os.Open("/proc/self/fd/" + itoa(int(r.File().Fd())))
	if err != nil {
		t.Fatal(err)
	}
	ro, err := Open(f, false)
	if err != nil {
		t.Fatal(err)
	}
	defer ro.Close()
	view, err := AttachScoreboard(ro.Bytes())
	if err != nil {
		t.Fatal(err)
	}
	s := view.Snapshot()
	if s.MasterPID != 42 || s.Generation != 7 || s.Total.Wakeups != 9 || view.Len() != 3 {
		t.Fatalf("read-only view: %+v", s)
	}
}

// The scoreboard is untrusted input: a corrupted header is refused and
// out-of-range indices give nil, not a panic or a stray write.
func TestUntrustedScoreboard(t *testing.T) {
	_, b := newBoard(t, 2)
	if b.Record(-1) != nil || b.Record(2) != nil {
		t.Fatal("out-of-range record index accepted")
	}
	b.Release(99) // must not panic
	mem := make([]byte, Size(2))
	if _, err := AttachScoreboard(mem); err == nil {
		t.Fatal("attached to a region with no magic")
	}
	copy(mem, b.mem[:headerSize])
	b2 := &Scoreboard{mem: mem}
	b2.h(hRecords).Store(1 << 40)
	if _, err := AttachScoreboard(mem); err == nil {
		t.Fatal("attached to a header that claims more records than fit")
	}
	b.Record(0).Store(PID, 1<<63)
	b.Record(0).Store(State, StateReady)
	if s := b.Snapshot(); s.Live[0].PID != -1 {
		t.Fatalf("absurd pid shown as %d", s.Live[0].PID)
	}
}

// The mutex excludes, a holder's pid is visible, an unlock by someone else
// fails, a bounded wait returns, and the master can free a dead holder's lock.
func TestAcceptMutex(t *testing.T) {
	_, b := newBoard(t, 1)
	m := b.AcceptMutex()
	if !m.TryLock(100) || m.TryLock(200) {
		t.Fatal("lock did not exclude")
	}
	if b.Snapshot().MutexHolder != 100 {
		t.Fatalf("holder %d, want 100", b.Snapshot().MutexHolder)
	}
	if m.Unlock(200) {
		t.Fatal("a non-holder unlocked")
	}
	if m.Lock(200, 20*time.Millisecond, never, false) {
		t.Fatal("Lock succeeded while held")
	}
	got := make(chan bool)
	go func() { got <- m.Lock(200, 5*time.Second, never, false) }()
	time.Sleep(20 * time.Millisecond)
	if !m.ForceUnlock(100) {
		t.Fatal("ForceUnlock of the holder failed")
	}
	if !<-got || m.Holder() != 200 {
		t.Fatalf("waiter not woken by ForceUnlock; holder %d", m.Holder())
	}
	if !m.Unlock(200) || m.Holder() != 0 {
		t.Fatal("unlock by holder failed")
	}
}

func never() bool { return false }

// The mutex excludes under contention and loses no wakeup: threads that
// take it in turn, each waiting with a bound far longer than any hold, never
// time out, and never find another inside.
func TestAcceptMutexContended(t *testing.T) {
	_, b := newBoard(t, 1)
	m := b.AcceptMutex()
	var inside atomic.Int32
	const threads, rounds = 4, 2000
	errs := make(chan string, threads)
	for i := range threads {
		go func(pid int) {
			runtime.LockOSThread()
			for range rounds {
				if !m.Lock(pid, 10*time.Second, never, false) {
					errs <- fmt.Sprintf("pid %d: a wait timed out: a wakeup was lost", pid)
					return
				}
				if n := inside.Add(1); n != 1 {
					errs <- fmt.Sprintf("pid %d: %d inside at once", pid, n)
				}
				inside.Add(-1)
				if !m.Unlock(pid) {
					errs <- fmt.Sprintf("pid %d: unlock failed", pid)
					return
				}
			}
			errs <- ""
		}(100 + i)
	}
	for range threads {
		if e := <-errs; e != "" {
			t.Fatal(e)
		}
	}
	if m.Holder() != 0 || m.word.Load() != 0 {
		t.Fatalf("the lock ends held: word %#x", m.word.Load())
	}
}

// A lock taken while free, with nobody asleep on it, is not marked as
// having sleepers, so its unlock wakes nobody; a sleeper marks it, and is
// woken by the unlock; and the one that takes it after waiting keeps the
// mark for those that may still sleep behind it.
func TestAcceptMutexContendedBit(t *testing.T) {
	_, b := newBoard(t, 1)
	m := b.AcceptMutex()
	if !m.TryLock(100) || m.word.Load() != 100 {
		t.Fatalf("uncontended lock: word %#x, want 100", m.word.Load())
	}
	got := make(chan bool)
	go func() { got <- m.Lock(200, 5*time.Second, never, false) }()
	deadline := time.Now().Add(5 * time.Second)
	for m.word.Load()&contended == 0 && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	if m.word.Load() != 100|contended || m.Holder() != 100 {
		t.Fatalf("with a sleeper: word %#x, holder %d", m.word.Load(), m.Holder())
	}
	if !m.Unlock(100) || !<-got {
		t.Fatal("the sleeper did not get the lock")
	}
	if m.word.Load() != 200|contended {
		t.Fatalf("taken after waiting: word %#x, want 200 with the bit", m.word.Load())
	}
	if !m.Unlock(200) || m.word.Load() != 0 {
		t.Fatalf("after the last unlock: word %#x", m.word.Load())
	}
}
