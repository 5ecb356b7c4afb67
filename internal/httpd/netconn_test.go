//go:build linux

package httpd

import (
	"bytes"
	"crypto/rand"
	"io"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// acceptedSock dials l and returns the accepted side as a raw non-blocking
// descriptor, as a strategy hands it over, and the client's end.
func acceptedSock(t *testing.T) (int, net.Conn) {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	client, err := net.Dial("tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { client.Close() })
	sc, err := l.Accept()
	if err != nil {
		t.Fatal(err)
	}
	f, err := sc.(*net.TCPConn).File() // a duplicate; the original is closed below
	sc.Close()
	if err != nil {
		t.Fatal(err)
	}
	fd, err := unix.Dup(int(f.Fd()))
	f.Close()
	if err == nil {
		err = unix.SetNonblock(fd, true)
	}
	if err != nil {
		t.Fatal(err)
	}
	// net set these on its own connection; the duplicate shares them.
	unix.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_NODELAY, 0)
	unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_KEEPALIVE, 0)
	return fd, client
}

// A sockConn is what net would have made of the socket: its addresses,
// TCP_NODELAY (without it a head and a body written apart wait 40ms for the
// client's delayed ACK: bench/library.sh's 4 KiB answers fell to 1,500/s),
// keep-alive probes; reads, writes, half-close and a file sent by
// sendfile, byte-exact.
func TestSockConn(t *testing.T) {
	fd, client := acceptedSock(t)
	c, err := newSockConn(fd)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if c.RemoteAddr().String() != client.LocalAddr().String() || c.LocalAddr().String() != client.RemoteAddr().String() {
		t.Errorf("addresses %v %v, want %v %v", c.LocalAddr(), c.RemoteAddr(), client.RemoteAddr(), client.LocalAddr())
	}
	for _, opt := range []struct {
		name         string
		level, which int
	}{{"TCP_NODELAY", unix.IPPROTO_TCP, unix.TCP_NODELAY}, {"SO_KEEPALIVE", unix.SOL_SOCKET, unix.SO_KEEPALIVE}} {
		if v, err := unix.GetsockoptInt(fd, opt.level, opt.which); err != nil || v == 0 {
			t.Errorf("%s: %d, %v; want it set", opt.name, v, err)
		}
	}

	// A read cut by a deadline is a temporary net.Error, as net's are:
	// crypto/tls gives up a connection after any other read error.
	c.SetReadDeadline(time.Now().Add(-time.Second))
	_, err = c.Read(make([]byte, 1))
	//lint:ignore SA1019 crypto/tls asks Temporary, so the test does
	if ne, ok := err.(net.Error); !ok || !ne.Timeout() || !ne.Temporary() {
		t.Errorf("read past the deadline: %v (%T), want a temporary net.Error timeout", err, err)
	}

	client.Write([]byte("ping"))
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 4)
	if _, err := io.ReadFull(c, buf); err != nil || string(buf) != "ping" {
		t.Fatalf("read %q, %v", buf, err)
	}

	body := make([]byte, 3<<20+5)
	rand.Read(body)
	path := filepath.Join(t.TempDir(), "f")
	os.WriteFile(path, body, 0o644)
	f, _ := os.Open(path)
	defer f.Close()
	f.Seek(5, io.SeekStart)
	got := make(chan []byte)
	go func() { b, _ := io.ReadAll(client); got <- b }()
	n, err := c.ReadFrom(&io.LimitedReader{R: f, N: 2 << 20})
	if err != nil || n != 2<<20 {
		t.Fatalf("ReadFrom: %d, %v", n, err)
	}
	if off, _ := f.Seek(0, io.SeekCurrent); off != 5+2<<20 {
		t.Errorf("the file's offset is %d after sending, want %d", off, 5+2<<20)
	}
	c.Write([]byte("tail"))
	if err := c.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	want := append(append([]byte{}, body[5:5+2<<20]...), "tail"...)
	if b := <-got; !bytes.Equal(b, want) {
		t.Errorf("the client read %d bytes, want %d byte-exact, then EOF", len(b), len(want))
	}
}
