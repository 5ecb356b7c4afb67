//go:build linux

package httpd

import (
	"bufio"
	"bytes"
	"io"
	"net"
	"net/http"
	"os"
	"testing"
	"time"

	"github.com/herd-run/herd/internal/shm"
	"golang.org/x/sys/unix"
)

// A front that fills the socket hands the answer, half sent, to the loop,
// with a descriptor of the file of its own; the loop finishes it
// byte-exact and closes that descriptor.
func TestFrontHandsOverHalfSentAnswer(t *testing.T) {
	root, big := siteRoot(t)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	setSockopt(t, l.(*net.TCPListener), unix.SOL_SOCKET, unix.SO_SNDBUF, 16<<10)
	addr, st := serveListener(t, l, root, func(c *Config) { c.ReadFirst = true })
	// Twice: the descriptors open after the first round (the caches of
	// the front and the loop filled) are all that may be open after the second.
	fds := 0
	for round := range 2 {
		c := dial(t, addr, 5*time.Second)
		io.WriteString(c, get("/big.bin"))
		time.Sleep(200 * time.Millisecond) // the front fills the socket and lets go
		br := bufio.NewReader(c)
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatal(err)
		}
		if body, err := io.ReadAll(resp.Body); err != nil || !bytes.Equal(body, big) {
			t.Fatalf("slow reader: %d bytes, %v; want %d byte-exact", len(body), err, len(big))
		}
		// Keep-alive goes on in the loop.
		io.WriteString(c, get("/hello.txt", "Connection: close\r\n"))
		if resp, err := http.ReadResponse(br, nil); err != nil || resp.StatusCode != 200 {
			t.Fatalf("next request: %v %v", resp, err)
		}
		c.Close()
		deadline := time.Now().Add(3 * time.Second)
		for (st.Load(shm.Active) != 0 || (round > 0 && openFDs(t) > fds)) && time.Now().Before(deadline) {
			time.Sleep(10 * time.Millisecond)
		}
		if n := st.Load(shm.Active); n != 0 {
			t.Errorf("%d connections still active", n)
		}
		if round == 0 {
			fds = openFDs(t)
		} else if n := openFDs(t); n > fds {
			t.Errorf("%d descriptors open, %d after the first round: the hand-over leaked one", n, fds)
		}
	}
}

func openFDs(t *testing.T) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	return len(ents)
}

// Under fdpass the master holds a copy of each connection until it sees it
// taken: closing the worker's descriptor must still end the connection
// (shutdown), or the client waits for the master.
func TestPassedConnectionEndsWhileCopyHeld(t *testing.T) {
	root, _ := siteRoot(t)
	eng, st := runEngine(t, Config{Root: root, Passed: true})
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	c := dial(t, l.Addr().String(), 3*time.Second)
	io.WriteString(c, get("/hello.txt", "Connection: close\r\n"))
	sc, err := l.Accept()
	if err != nil {
		t.Fatal(err)
	}
	f, _ := sc.(*net.TCPConn).File()
	sc.Close()
	copyHeld, _ := unix.Dup(int(f.Fd())) // the master's copy
	defer unix.Close(copyHeld)
	fd, _ := dupFD(f)
	st.Inc(shm.Active)
	eng.Add(fd)
	body, err := io.ReadAll(c) // the deadline fails a connection left open
	if err != nil || !bytes.HasSuffix(body, []byte("Hello, world\n")) {
		t.Fatalf("read %q, %v; want the answer, then EOF while the copy is held", body, err)
	}
}
