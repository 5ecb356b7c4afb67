package accept_test

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/herd-run/herd/internal/accept"
	"github.com/herd-run/herd/internal/master"
	"github.com/herd-run/herd/internal/shm"
	"golang.org/x/sys/unix"
)

// board is a scoreboard like the master's, shared by the "workers" of a test.
func board(t *testing.T) *shm.Scoreboard {
	t.Helper()
	r, err := shm.Create("test", shm.Size(4))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close() })
	b, _ := shm.NewScoreboard(r.Bytes(), 4)
	return b
}

// listen opens a listening socket on loopback as the master does.
func listen(t *testing.T) *master.Socket {
	t.Helper()
	sock, err := master.Listen("127.0.0.1:0", 128)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sock.Close() })
	return sock
}

// run starts a strategy on sock and returns the delivered connections and
// a function that stops it and reports how long Serve took to return.
func run(t *testing.T, name string, sock *master.Socket, b *shm.Scoreboard, st *shm.Record) (<-chan net.Conn, func() time.Duration) {
	t.Helper()
	return runAs(t, name, sock, b, st, 0, 2, lockFile(t))
}

// lockFile makes a lock file for the flock strategy.
func lockFile(t *testing.T) string {
	t.Helper()
	f := filepath.Join(t.TempDir(), "accept.lock")
	if err := os.WriteFile(f, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	return f
}

// runAs is run for a worker with this pid and number of accepting threads,
// locking lock (flock).
func runAs(t *testing.T, name string, sock *master.Socket, b *shm.Scoreboard, st *shm.Record, pid, threads int, lock string) (<-chan net.Conn, func() time.Duration) {
	t.Helper()
	fd := sock.FD()
	s, err := accept.New(name, accept.Config{
		Options:   accept.Options{Threads: threads, MutexDelay: 20 * time.Millisecond},
		Listeners: []accept.Listener{{FD: fd, Addr: sock.Addr}}, Stats: st,
		LockFile: lock, Mutex: b.AcceptMutex(), PID: pid, HoldFor: time.Minute,
	})
	if err != nil {
		t.Fatal(err)
	}
	conns := make(chan net.Conn, 100)
	done := make(chan error, 1)
	go func() { done <- s.Serve(func(fd int) { conns <- fileConn(t, fd) }) }()
	return conns, func() time.Duration {
		start := time.Now()
		s.Stop()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Serve: %v", err)
			}
		case <-time.After(5 * time.Second):
			t.Fatal("Serve did not return within 5s of Stop")
		}
		return time.Since(start)
	}
}

// fileConn wraps a delivered descriptor as the nethttp engine does.
func fileConn(t *testing.T, fd int) net.Conn {
	f := os.NewFile(uintptr(fd), "")
	defer f.Close()
	c, err := net.FileConn(f)
	if err != nil {
		t.Error(err)
	}
	return c
}

func dial(t *testing.T, addr string, n int) []net.Conn {
	t.Helper()
	var cs []net.Conn
	for range n {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		cs = append(cs, c)
	}
	return cs
}

func receive(t *testing.T, conns <-chan net.Conn, n int) {
	t.Helper()
	for i := range n {
		select {
		case c := <-conns:
			c.Close()
		case <-time.After(5 * time.Second):
			t.Fatalf("only %d of %d connections delivered", i, n)
		}
	}
}

// Every strategy that accepts in the worker delivers each connection once,
// counts it, stops within its bound, and leaves connections queued after it
// stopped in the queue, for whoever accepts next. (fdpass accepts in the
// master: TestFdpass and the process tests cover it.)
func TestStrategies(t *testing.T) {
	for _, name := range accept.Names() {
		if name == "fdpass" {
			continue
		}
		t.Run(name, func(t *testing.T) {
			sock := listen(t)
			b := board(t)
			st := b.Record(b.Claim(0, 1, 0))
			conns, stop := run(t, name, sock, b, st)
			dial(t, sock.Addr, 20)
			receive(t, conns, 20)
			if got := st.Load(shm.Accepts); got != 20 {
				t.Errorf("accepts = %d, want 20", got)
			}
			if w, sp := st.Load(shm.Wakeups), st.Load(shm.Spurious); sp > w {
				t.Errorf("%d spurious wakeups out of %d wakeups", sp, w)
			}
			if d := stop(); d > time.Second {
				t.Errorf("Serve took %v to return after Stop", d)
			}

			// Queued while nobody accepts: still there for the next worker.
			dial(t, sock.Addr, 3)
			select {
			case <-conns:
				t.Fatal("a stopped strategy delivered a connection")
			case <-time.After(100 * time.Millisecond):
			}
			next := b.Record(b.Claim(1, 1, 0))
			conns2, stop2 := run(t, name, sock, b, next)
			receive(t, conns2, 3)
			stop2()
			if got := next.Load(shm.Accepts); got != 3 {
				t.Errorf("next worker accepted %d queued connections, want 3", got)
			}
		})
	}
}

// Threads that keep their P in their waits (HoldFor) do not hold up a
// stop-the-world: the runtime's preemption signal ends a raw accept4 (the
// listener has SO_RCVTIMEO), a mutex holder's ppoll and a waiter's
// FUTEX_WAIT, so a collection finishes at once rather than when the waits'
// 10s bound runs out.
func TestHeldWaitsLetTheWorldStop(t *testing.T) {
	for _, name := range []string{"accept", "mutex"} {
		t.Run(name, func(t *testing.T) {
			sock := listen(t)
			b := board(t)
			conns, stop := runAs(t, name, sock, b, b.Record(b.Claim(0, 1, 0)), 0, 2, "")
			defer stop()
			dial(t, sock.Addr, 4)
			receive(t, conns, 4) // the threads are back in their waits, holding their Ps
			time.Sleep(50 * time.Millisecond)
			start := time.Now()
			runtime.GC()
			if d := time.Since(start); d > time.Second {
				t.Errorf("a collection took %v with threads held in their waits", d)
			}
		})
	}
}

// A worker whose thread waits for the accept lock while another worker
// holds it stops within a second, though a holder polls for seconds when
// nothing comes (so that an idle worker hardly wakes). The holder here is
// another process's (the lock is simply taken: a signal to this process
// would reach an in-process holder too) and never lets go. mutex: the
// stop's signal ends the waiter's sleep (a FUTEX_WAIT with a timeout is not
// restarted). flock: no signal ends flock(2), so the stop leaves the
// waiting thread behind; it lets go at once when it gets the lock.
func TestSerializedStopWhileAnotherHolds(t *testing.T) {
	for _, name := range []string{"flock", "mutex"} {
		t.Run(name, func(t *testing.T) {
			sock := listen(t)
			b := board(t)
			lock := lockFile(t)
			if name == "mutex" {
				if !b.AcceptMutex().TryLock(1001) {
					t.Fatal("the lock is taken")
				}
			} else {
				f, err := os.Open(lock) // a description of its own, as another worker's
				if err != nil {
					t.Fatal(err)
				}
				defer f.Close() // lets the waiter left behind get the lock, and leave
				if err := unix.Flock(int(f.Fd()), unix.LOCK_EX); err != nil {
					t.Fatal(err)
				}
			}
			_, stop := runAs(t, name, sock, b, b.Record(b.Claim(1, 1, 0)), 1002, 1, lock)
			time.Sleep(100 * time.Millisecond) // the thread waits for the lock
			if d := stop(); d > time.Second {
				t.Errorf("the waiting worker took %v to stop", d)
			}
		})
	}
}

// fdpass serves what the master passes on the thread that receives it, and
// notes each descriptor taken in the scoreboard (the master reads it there).
func TestFdpass(t *testing.T) {
	sock := listen(t)
	b := board(t)
	st := b.Record(b.Claim(0, 1, 0))
	var mu sync.Mutex
	var take func(accept.Passed)
	passes := func(fn func(accept.Passed)) func() {
		mu.Lock()
		take = fn
		mu.Unlock()
		return func() { mu.Lock(); take = nil; mu.Unlock() }
	}
	s, err := accept.New("fdpass", accept.Config{
		Listeners: []accept.Listener{{FD: -1, Addr: "master"}}, Stats: st, Passes: passes,
	})
	if err != nil {
		t.Fatal(err)
	}
	got := make(chan net.Conn, 10)
	done := make(chan error)
	go func() { done <- s.Serve(func(fd int) { got <- fileConn(t, fd) }) }()
	for seq := uint64(1); seq <= 5; seq++ {
		dial(t, sock.Addr, 1)
		fd, _, err := unix.Accept4(sock.FD(), unix.SOCK_CLOEXEC)
		if err != nil {
			t.Fatal(err)
		}
		for { // until Serve has registered
			mu.Lock()
			fn := take
			mu.Unlock()
			if fn != nil {
				fn(accept.Passed{FD: fd, Seq: seq * 10})
				break
			}
			time.Sleep(time.Millisecond)
		}
	}
	receive(t, got, 5)
	s.Stop()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if take != nil {
		t.Error("Serve returned still taking descriptors")
	}
	if st.Load(shm.Passed) != 50 || st.Load(shm.Accepts) != 5 {
		t.Errorf("last taken %d, %d accepts; want 50 and 5", st.Load(shm.Passed), st.Load(shm.Accepts))
	}
}

func TestUnknownStrategy(t *testing.T) {
	if err := accept.Check("nope"); err == nil {
		t.Fatal("unknown strategy accepted")
	}
}

// The probe agrees with the kernel version: EPOLLEXCLUSIVE came in 4.5, and
// the default strategy follows it.
func TestProbeExclusive(t *testing.T) {
	var u unix.Utsname
	if err := unix.Uname(&u); err != nil {
		t.Fatal(err)
	}
	var major, minor int
	fmt.Sscanf(unix.ByteSliceToString(u.Release[:]), "%d.%d", &major, &minor)
	has := major > 4 || major == 4 && minor >= 5
	if err := accept.ProbeExclusive(); (err == nil) != has {
		t.Errorf("kernel %d.%d: ProbeExclusive() = %v", major, minor, err)
	}
	want := map[bool]string{true: "exclusive", false: "accept"}[has]
	if got := accept.Default(); got != want {
		t.Errorf("kernel %d.%d: Default() = %q, want %q", major, minor, got, want)
	}
}
