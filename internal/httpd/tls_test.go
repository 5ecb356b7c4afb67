//go:build linux

package httpd

import (
	"bufio"
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"io"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/herd-run/herd/internal/shm"
	"golang.org/x/sys/unix"
)

// testCert is a self-signed ECDSA P-256 certificate for 127.0.0.1.
func testCert(t testing.TB) tls.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

// tlsEngine runs a TLS engine as testEngine runs a plain one.
func tlsEngine(t *testing.T, root string, tune func(*Config)) (string, *shm.Record) {
	t.Helper()
	cert := testCert(t)
	return testEngine(t, root, func(c *Config) {
		c.TLS = &tls.Config{Certificates: []tls.Certificate{cert}, NextProtos: []string{"http/1.1"}}
		if tune != nil {
			tune(c)
		}
	})
}

// dialTLS connects to addr over TLS, with a deadline for everything the
// test does on the connection.
func dialTLS(t *testing.T, addr string, protos ...string) *tls.Conn {
	t.Helper()
	c, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", addr,
		&tls.Config{InsecureSkipVerify: true, NextProtos: protos})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(10 * time.Second))
	return c
}

// readAnswers reads n answers to GET requests from br.
func readAnswers(t *testing.T, br *bufio.Reader, n int) ([]*http.Response, [][]byte) {
	t.Helper()
	var resps []*http.Response
	var bodies [][]byte
	for i := range n {
		resp, err := http.ReadResponse(br, &http.Request{Method: "GET"})
		if err != nil {
			t.Fatalf("answer %d: %v", i+1, err)
		}
		b, err := io.ReadAll(resp.Body)
		if err != nil {
			t.Fatalf("answer %d's body: %v", i+1, err)
		}
		resps, bodies = append(resps, resp), append(bodies, b)
	}
	return resps, bodies
}

// Over TLS the loop answers as it does in the clear: keep-alive, pipelined
// requests in one record and in many, ranges, a body larger than a batch
// of records (byte-exact), and a close when asked.
func TestTLSKeepAliveAndPipelining(t *testing.T) {
	root, bigFile := siteRoot(t)
	addr, st := tlsEngine(t, root, nil)
	c := dialTLS(t, addr)
	br := bufio.NewReader(c)
	// Three requests in one record, then two in records of their own sent
	// back to back.
	io.WriteString(c, get("/hello.txt")+get("/missing")+get("/big.bin"))
	io.WriteString(c, get("/big.bin", "Range: bytes=100-199\r\n"))
	io.WriteString(c, get("/docs/"))
	resps, bodies := readAnswers(t, br, 5)
	want := []struct {
		status int
		body   []byte
	}{{200, []byte("Hello, world\n")}, {404, nil}, {200, bigFile}, {206, bigFile[100:200]}, {200, []byte("docs\n")}}
	for i, w := range want {
		if resps[i].StatusCode != w.status || (w.body != nil && !bytes.Equal(bodies[i], w.body)) {
			t.Errorf("answer %d: %d, %d bytes; want %d, %d bytes", i+1, resps[i].StatusCode, len(bodies[i]), w.status, len(w.body))
		}
	}
	io.WriteString(c, get("/hello.txt", "Connection: close\r\n"))
	resps, _ = readAnswers(t, br, 1)
	if !resps[0].Close {
		t.Error(`no "Connection: close" on the last answer`)
	}
	if _, err := br.ReadByte(); err != io.EOF {
		t.Errorf("connection not closed after Connection: close (%v)", err)
	}
	waitIdle(t, st)
}

// waitIdle waits for the engine to count every connection out.
func waitIdle(t *testing.T, st *shm.Record) {
	t.Helper()
	for end := time.Now().Add(5 * time.Second); st.Load(shm.Active) != 0; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(end) {
			t.Fatalf("%d connections still counted active", st.Load(shm.Active))
		}
	}
}

// A client that takes a large answer slowly: the loop waits for the socket
// (EPOLLOUT) between batches of records, and the body arrives whole.
func TestTLSSlowReader(t *testing.T) {
	root, _ := siteRoot(t)
	huge := make([]byte, 8<<20+7)
	rand.Read(huge)
	os.WriteFile(filepath.Join(root, "huge.bin"), huge, 0o644)
	addr, _ := tlsEngine(t, root, nil)
	d := &net.Dialer{Timeout: 5 * time.Second, Control: func(_, _ string, rc syscall.RawConn) error {
		return rc.Control(func(fd uintptr) { unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUF, 8192) })
	}}
	c, err := tls.DialWithDialer(d, "tcp", addr, &tls.Config{InsecureSkipVerify: true})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(20 * time.Second))
	io.WriteString(c, get("/huge.bin"))
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	var got bytes.Buffer
	buf := make([]byte, 64<<10)
	for got.Len() < len(huge) {
		n, err := resp.Body.Read(buf)
		got.Write(buf[:n])
		if err != nil {
			break
		}
		if got.Len() < 1<<20 {
			time.Sleep(5 * time.Millisecond) // slow at first: the socket fills
		}
	}
	if !bytes.Equal(got.Bytes(), huge) {
		t.Errorf("got %d bytes, want %d byte-exact", got.Len(), len(huge))
	}
}

// Plain HTTP sent to a TLS listener gets a 400 that says so, in the
// clear; a client that never finishes its handshake is closed after the
// header timeout; neither stays counted.
func TestTLSHandshakeFailures(t *testing.T) {
	root, _ := siteRoot(t)
	addr, st := tlsEngine(t, root, func(c *Config) { c.HeaderTimeout = 300 * time.Millisecond })
	c := dial(t, addr, 5*time.Second)
	io.WriteString(c, get("/hello.txt"))
	b, _ := io.ReadAll(c)
	if !strings.HasPrefix(string(b), "HTTP/1.0 400 ") || !strings.Contains(string(b), "plain HTTP request was sent to an HTTPS port") {
		t.Errorf("plain HTTP on the TLS port: %q", b)
	}
	silent := dial(t, addr, 5*time.Second)
	start := time.Now()
	if _, err := silent.Read(make([]byte, 1)); err != io.EOF {
		t.Errorf("silent client: %v, want the server's close", err)
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Errorf("silent client closed after %v", d)
	}
	waitIdle(t, st)
}

// A connection accepted before the drain whose handshake is still under
// way is answered, with "Connection: close", before the loop ends.
func TestTLSDrainWaitsForHandshakes(t *testing.T) {
	root, _ := siteRoot(t)
	cert := testCert(t)
	eng, st := runEngine(t, Config{Root: root, TLS: &tls.Config{Certificates: []tls.Certificate{cert}}})
	server, client := acceptedSock(t)
	st.Inc(shm.Active)
	eng.Add(server)
	time.Sleep(50 * time.Millisecond) // the handshake waits for the client
	eng.Drain()
	time.Sleep(100 * time.Millisecond) // the loop has seen the drain
	tc := tls.Client(client, &tls.Config{InsecureSkipVerify: true})
	tc.SetDeadline(time.Now().Add(5 * time.Second))
	io.WriteString(tc, get("/hello.txt"))
	resps, bodies := readAnswers(t, bufio.NewReader(tc), 1)
	if resps[0].StatusCode != 200 || string(bodies[0]) != "Hello, world\n" || !resps[0].Close {
		t.Errorf("answer during the drain: %d %q close=%v", resps[0].StatusCode, bodies[0], resps[0].Close)
	}
	select {
	case <-eng.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("the drained engine did not end")
	}
	if n := st.Load(shm.Active); n != 0 {
		t.Errorf("%d connections still counted after the drain", n)
	}
}

// The access log counts the body bytes that left over TLS: a transfer cut
// by the client logs less than the file.
func TestTLSAccessLogCountsWhatWasSent(t *testing.T) {
	root, _ := siteRoot(t)
	os.WriteFile(filepath.Join(root, "huge.bin"), make([]byte, 32<<20), 0o644)
	logFile, err := os.Create(filepath.Join(t.TempDir(), "access.log"))
	if err != nil {
		t.Fatal(err)
	}
	defer logFile.Close()
	addr, st := tlsEngine(t, root, func(c *Config) { c.AccessLog = logFile })
	c := dialTLS(t, addr)
	io.WriteString(c, get("/hello.txt")+get("/huge.bin"))
	io.ReadFull(c, make([]byte, 1000))
	time.Sleep(200 * time.Millisecond)
	c.NetConn().(*net.TCPConn).SetLinger(0)
	c.NetConn().Close()
	waitIdle(t, st)
	b, _ := os.ReadFile(logFile.Name())
	if !strings.Contains(string(b), `"GET /hello.txt HTTP/1.1" 200 13`+"\n") {
		t.Errorf("no whole answer logged:\n%s", b)
	}
	m := regexp.MustCompile(`"GET /huge.bin HTTP/1.1" 200 (\d+)\n`).FindSubmatch(b)
	if m == nil || string(m[1]) == "33554432" {
		t.Errorf("the cut transfer is logged as %q, want what was sent:\n%s", m, b)
	}
}

// Handshakes under way count against WorkerConnections: clients that
// send a byte and stall cannot make the worker hold a goroutine and two
// descriptors each without end; one over the limit is closed at once.
func TestTLSHandshakesBounded(t *testing.T) {
	root, _ := siteRoot(t)
	addr, st := tlsEngine(t, root, func(c *Config) { c.WorkerConnections = 3 })
	for range 3 {
		c := dial(t, addr, 10*time.Second)
		c.Write([]byte{0x16}) // the first byte of a ClientHello, and no more
	}
	for end := time.Now().Add(5 * time.Second); st.Load(shm.Active) != 3; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(end) {
			t.Fatalf("%d active, want the 3 stalled handshakes", st.Load(shm.Active))
		}
	}
	extra := dial(t, addr, 10*time.Second)
	extra.Write([]byte{0x16})
	extra.SetReadDeadline(time.Now().Add(2 * time.Second))
	_, err := extra.Read(make([]byte, 1))
	if ne, ok := err.(net.Error); err == nil || ok && ne.Timeout() {
		t.Errorf("a handshake over the limit: %v, want the server's close (EOF or reset) at once", err)
	}
}
