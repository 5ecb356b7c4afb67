package accept_test

import (
	"net"
	"testing"
	"time"

	"github.com/herd-run/herd/internal/accept"
	"github.com/herd-run/herd/internal/master"
	"github.com/herd-run/herd/internal/shm"
)

func record(t *testing.T) *shm.Record {
	t.Helper()
	r, err := shm.Create("test", shm.Size(1))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close() })
	b, _ := shm.NewScoreboard(r.Bytes(), 1)
	return b.Record(b.Claim(0, 1, 0))
}

// run starts a strategy on sock and returns the delivered connections and
// a function that stops it and reports how long Serve took to return.
func run(t *testing.T, name string, sock *master.Socket, st *shm.Record) (<-chan net.Conn, func() time.Duration) {
	t.Helper()
	var fd int
	rc, _ := sock.File.SyscallConn()
	rc.Control(func(f uintptr) { fd = int(f) })
	s, err := accept.New(name, accept.Config{
		Listeners: []accept.Listener{{FD: fd, Addr: sock.Addr}}, Threads: 2, Stats: st,
	})
	if err != nil {
		t.Fatal(err)
	}
	conns := make(chan net.Conn, 100)
	done := make(chan error, 1)
	go func() { done <- s.Serve(func(c net.Conn) { conns <- c }) }()
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

// Every strategy delivers each connection once, counts it, stops within
// its bound, and leaves connections queued after it stopped in the queue,
// for whoever accepts next.
func TestStrategies(t *testing.T) {
	for _, name := range accept.Names() {
		t.Run(name, func(t *testing.T) {
			sock, err := master.Listen("127.0.0.1:0", 128)
			if err != nil {
				t.Fatal(err)
			}
			defer sock.Close()
			st := record(t)
			conns, stop := run(t, name, sock, st)
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
			next := record(t)
			conns2, stop2 := run(t, name, sock, next)
			receive(t, conns2, 3)
			stop2()
			if got := next.Load(shm.Accepts); got != 3 {
				t.Errorf("next worker accepted %d queued connections, want 3", got)
			}
		})
	}
}

func TestUnknownStrategy(t *testing.T) {
	if err := accept.Check("nope"); err == nil {
		t.Fatal("unknown strategy accepted")
	}
}
