//go:build linux

package admin

import (
	"bufio"
	"net"
	"net/http"
	"sync"
	"testing"
	"time"
)

// watched is a listener that reports each connection it hands out and
// when it is closed.
type watched struct {
	net.Listener
	accepted chan struct{}
	closed   chan struct{}
	once     sync.Once
}

func (w *watched) Accept() (net.Conn, error) {
	c, err := w.Listener.Accept()
	if err == nil {
		w.accepted <- struct{}{}
	}
	return c, err
}

func (w *watched) Close() error {
	w.once.Do(func() { close(w.closed) })
	return w.Listener.Close()
}

// A connection the endpoint accepted before Stop is answered, even if its
// request comes after Stop began. With http.Server.Shutdown, which the
// master used, it was closed unanswered: across an upgrade, a health check
// that reached the old master just before it stopped read EOF
// (TestUpgradeKeepsAdminSocket failed so about once in 60 runs on a busy
// machine).
func TestStopAnswersWhatWasAccepted(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	w := &watched{Listener: l, accepted: make(chan struct{}, 1), closed: make(chan struct{})}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(rw http.ResponseWriter, _ *http.Request) { rw.Write([]byte("ok\n")) })
	e := Start(w, mux)

	c, err := net.Dial("tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	select {
	case <-w.accepted:
	case <-time.After(5 * time.Second):
		t.Fatal("the endpoint did not accept")
	}
	stopped := make(chan struct{})
	go func() {
		e.Stop(5 * time.Second)
		close(stopped)
	}()
	<-w.closed // Stop has begun
	time.Sleep(20 * time.Millisecond)
	if _, err := c.Write([]byte("GET /healthz HTTP/1.1\r\nHost: admin\r\n\r\n")); err != nil {
		t.Fatal(err)
	}
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatalf("a request on a connection accepted before Stop: %v", err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 || !resp.Close {
		t.Errorf("answered %d, Connection: close %v; want 200, close", resp.StatusCode, resp.Close)
	}
	select {
	case <-stopped:
	case <-time.After(5 * time.Second):
		t.Fatal("Stop did not return once the connection was answered")
	}
}

// Stop does not wait longer than its bound for a client that sends nothing.
func TestStopIsBounded(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	w := &watched{Listener: l, accepted: make(chan struct{}, 1), closed: make(chan struct{})}
	e := Start(w, http.NewServeMux())
	c, err := net.Dial("tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	<-w.accepted
	start := time.Now()
	e.Stop(200 * time.Millisecond)
	if d := time.Since(start); d > 3*time.Second {
		t.Errorf("Stop took %v with a bound of 200ms", d)
	}
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if n, err := c.Read(make([]byte, 1)); err == nil {
		t.Errorf("the silent connection is still open after Stop (read %d bytes)", n)
	}
}
