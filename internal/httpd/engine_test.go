package httpd

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"crypto/rand"
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/herd-run/herd/internal/shm"
	"golang.org/x/sys/unix"
)

// testEngine runs an engine on a loopback listener, feeding it accepted
// descriptors as a strategy would, and returns its address.
func testEngine(t *testing.T, root string, tune func(*Config)) (string, *shm.Record) {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	return serveListener(t, l, root, tune)
}

// runEngine runs an engine with cfg and a scoreboard record of its own
// (cfg.Stats), until the test ends.
func runEngine(t *testing.T, cfg Config) (*Engine, *shm.Record) {
	t.Helper()
	region, err := shm.Create("test", shm.Size(1))
	if err != nil {
		t.Fatal(err)
	}
	board, _ := shm.NewScoreboard(region.Bytes(), 1)
	cfg.Stats = board.Record(board.Claim(0, 1, 0))
	eng, err := New(cfg)
	if err != nil {
		region.Close()
		t.Fatal(err)
	}
	go eng.Run()
	t.Cleanup(func() {
		eng.Close()
		<-eng.Done()
		region.Close()
	})
	return eng, cfg.Stats
}

// serveListener is testEngine on a listener the test has set up.
func serveListener(t *testing.T, l net.Listener, root string, tune func(*Config)) (string, *shm.Record) {
	t.Helper()
	cfg := Config{Root: root}
	if tune != nil {
		tune(&cfg)
	}
	if cfg.ReadFirst { // as the master sets up the listener for it
		setSockopt(t, l.(*net.TCPListener), unix.IPPROTO_TCP, unix.TCP_DEFER_ACCEPT, 1)
	}
	eng, st := runEngine(t, cfg)
	go func() {
		for {
			c, err := l.Accept()
			if errors.Is(err, net.ErrClosed) {
				return
			}
			if err != nil {
				// Out of descriptors: TestOutOfDescriptors fills the table,
				// and accept4 takes a descriptor number before it looks at
				// the queue, so it fails with EMFILE then even with nothing
				// queued. Pause and go on, as the strategies do.
				time.Sleep(10 * time.Millisecond)
				continue
			}
			f, err := c.(*net.TCPConn).File() // a blocking duplicate, as accept4 gives
			c.Close()
			if err != nil {
				continue
			}
			st.Inc(shm.Active)
			fd, _ := dupFD(f)
			eng.Add(fd)
		}
	}()
	t.Cleanup(func() { l.Close() }) // before the engine's cleanup: cleanups run last first
	return l.Addr().String(), st
}

// setSockopt sets an integer socket option on c's socket, or ends the test.
func setSockopt(t *testing.T, c syscall.Conn, level, opt, value int) {
	t.Helper()
	rc, err := c.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	if cerr := rc.Control(func(fd uintptr) { err = unix.SetsockoptInt(int(fd), level, opt, value) }); cerr != nil {
		t.Fatal(cerr)
	}
	if err != nil {
		t.Fatalf("setsockopt %d: %v", opt, err)
	}
}

func dupFD(f *os.File) (int, error) {
	defer f.Close()
	rc, err := f.SyscallConn()
	if err != nil {
		return -1, err
	}
	var fd int
	var derr error
	rc.Control(func(x uintptr) { fd, derr = dup(int(x)) })
	return fd, derr
}

// siteRoot makes a document root inside a directory that also holds a
// secret, and a symlink from the root to it.
func siteRoot(t testing.TB) (root string, big []byte) {
	t.Helper()
	base := t.TempDir()
	root = filepath.Join(base, "www")
	os.MkdirAll(filepath.Join(root, "docs"), 0o755)
	os.MkdirAll(filepath.Join(root, "empty"), 0o755)
	big = make([]byte, 1<<20+3)
	rand.Read(big)
	write := func(name string, b []byte) {
		if err := os.WriteFile(filepath.Join(root, name), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("index.html", []byte("<h1>home</h1>\n"))
	write("hello.txt", []byte("Hello, world\n"))
	write("big.bin", big)
	write("docs/index.html", []byte("docs\n"))
	write("app.js", []byte("console.log('plain')\n"))
	var gz bytes.Buffer
	zw := gzip.NewWriter(&gz)
	zw.Write([]byte("console.log('plain')\n"))
	zw.Close()
	write("app.js.gz", gz.Bytes())
	os.WriteFile(filepath.Join(base, "secret.txt"), []byte("SECRET"), 0o644)
	os.Symlink(filepath.Join(base, "secret.txt"), filepath.Join(root, "leak.txt"))
	return root, big
}

// exchange sends raw bytes on a new connection and reads n responses.
func exchange(t *testing.T, addr, raw string, n int) ([]*http.Response, [][]byte, net.Conn) {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.WriteString(c, raw); err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(c)
	var resps []*http.Response
	var bodies [][]byte
	// Each response is read as the answer to its own request's method (a
	// HEAD answer has a length but no body).
	var methods []string
	for _, head := range strings.Split(raw, "\r\n\r\n") {
		if f := strings.Fields(head); len(f) > 0 && isToken([]byte(f[0])) && strings.Contains(head, " HTTP/") {
			methods = append(methods, f[0])
		}
	}
	for i := range n {
		method := "GET"
		if i < len(methods) {
			method = methods[i]
		}
		resp, err := http.ReadResponse(br, &http.Request{Method: method})
		if err != nil {
			t.Fatalf("reading response %d to %q: %v", len(resps)+1, firstLine(raw), err)
		}
		b, err := io.ReadAll(resp.Body)
		if err != nil {
			t.Fatalf("body: %v", err)
		}
		resps = append(resps, resp)
		bodies = append(bodies, b)
	}
	return resps, bodies, c
}

// dial connects to addr with a deadline for everything the test does on
// the connection, and closes it at the end of the test.
func dial(t *testing.T, addr string, d time.Duration) net.Conn {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, d)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(d))
	return c
}

func firstLine(s string) string { l, _, _ := strings.Cut(s, "\r\n"); return l }

func get(target string, headers ...string) string {
	return "GET " + target + " HTTP/1.1\r\nHost: x\r\n" + strings.Join(headers, "") + "\r\n"
}

// With ReadFirst (TCP_DEFER_ACCEPT listeners) a connection is answered
// before it is ever registered with epoll; it must be registered whenever
// it outlives that first read: keep-alive, a request still arriving, a
// response too big for the socket buffer.
func TestReadFirst(t *testing.T) {
	root, big := siteRoot(t)
	addr, st := testEngine(t, root, func(c *Config) { c.ReadFirst = true })

	// One request, Connection: close: answered, then a clean close (FIN).
	resps, bodies, c := exchange(t, addr, get("/hello.txt", "Connection: close\r\n"), 1)
	if resps[0].StatusCode != 200 || string(bodies[0]) != "Hello, world\n" || !resps[0].Close {
		t.Errorf("close: %d %q close=%v", resps[0].StatusCode, bodies[0], resps[0].Close)
	}
	if n, err := c.Read(make([]byte, 1)); n != 0 || err != io.EOF {
		t.Errorf("close: after the answer read %d, %v; want EOF", n, err)
	}

	// Pipelined in the first bytes, then keep-alive: a later request on the
	// same connection is heard through epoll.
	resps, _, c = exchange(t, addr, get("/hello.txt")+get("/docs/")+get("/missing"), 3)
	if resps[0].StatusCode != 200 || resps[1].StatusCode != 200 || resps[2].StatusCode != 404 {
		t.Errorf("pipelined: %d %d %d", resps[0].StatusCode, resps[1].StatusCode, resps[2].StatusCode)
	}
	time.Sleep(50 * time.Millisecond)
	io.WriteString(c, get("/hello.txt", "Connection: close\r\n"))
	if resp, err := http.ReadResponse(bufio.NewReader(c), nil); err != nil || resp.StatusCode != 200 {
		t.Errorf("keep-alive request after the first read: %v %v", resp, err)
	}

	// A request head split across two writes: the first read has half.
	c = dial(t, addr, 5*time.Second)
	io.WriteString(c, "GET /hello.txt HTTP/1.1\r\n")
	time.Sleep(50 * time.Millisecond)
	io.WriteString(c, "Host: x\r\n\r\n")
	if resp, err := http.ReadResponse(bufio.NewReader(c), nil); err != nil || resp.StatusCode != 200 {
		t.Errorf("split head: %v %v", resp, err)
	}

	// A megabyte through sendfile: the socket fills, EPOLLOUT takes over.
	_, bodies, _ = exchange(t, addr, get("/big.bin", "Connection: close\r\n"), 1)
	if !bytes.Equal(bodies[0], big) {
		t.Errorf("big file: %d bytes, want %d byte-exact", len(bodies[0]), len(big))
	}

	// Every connection above is closed by now: none leaked in the loop.
	c.Close()
	deadline := time.Now().Add(3 * time.Second)
	for st.Load(shm.Active) != 0 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if n := st.Load(shm.Active); n != 0 {
		t.Errorf("%d connections still active", n)
	}
}

func TestStatusesAndBodies(t *testing.T) {
	root, big := siteRoot(t)
	addr, st := testEngine(t, root, nil)
	for _, tc := range []struct {
		raw, body string
		status    int
		header    [2]string
	}{
		{get("/hello.txt"), "Hello, world\n", 200, [2]string{"Content-Type", "text/plain; charset=utf-8"}},
		{get("/"), "<h1>home</h1>\n", 200, [2]string{"Content-Type", "text/html; charset=utf-8"}},
		{get("/docs/"), "docs\n", 200, [2]string{}},
		{get("/docs"), "", 301, [2]string{"Location", "/docs/"}},
		{get("/empty/"), "", 403, [2]string{}},
		{get("/missing"), "", 404, [2]string{}},
		{get("/hello.txt/x"), "", 404, [2]string{}},
		{get("/leak.txt"), "", 403, [2]string{}},
		{"POST /hello.txt HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n", "", 405, [2]string{"Allow", "GET, HEAD"}},
		{"GET http://example.com/hello.txt HTTP/1.1\r\nHost: x\r\n\r\n", "Hello, world\n", 200, [2]string{}},
		{"GET /hello.txt HTTP/1.0\r\n\r\n", "Hello, world\n", 200, [2]string{"Content-Length", "13"}},
		{get("/hello.txt?x=1"), "Hello, world\n", 200, [2]string{"Server", "herd"}},
	} {
		resps, bodies, _ := exchange(t, addr, tc.raw, 1)
		r := resps[0]
		if r.StatusCode != tc.status {
			t.Errorf("%s: status %d, want %d", firstLine(tc.raw), r.StatusCode, tc.status)
		}
		if tc.status == 200 && string(bodies[0]) != tc.body {
			t.Errorf("%s: body %q, want %q", firstLine(tc.raw), bodies[0], tc.body)
		}
		if tc.header[0] != "" && r.Header.Get(tc.header[0]) != tc.header[1] {
			t.Errorf("%s: %s = %q, want %q", firstLine(tc.raw), tc.header[0], r.Header.Get(tc.header[0]), tc.header[1])
		}
		if r.Header.Get("Date") == "" {
			t.Errorf("%s: no Date", firstLine(tc.raw))
		}
		if strings.Contains(tc.raw, "HTTP/1.0") && !r.Close {
			t.Errorf("%s: an HTTP/1.0 request without keep-alive left the connection open", firstLine(tc.raw))
		}
	}
	// Large files byte-exact through sendfile; HEAD has the length, no body.
	_, bodies, _ := exchange(t, addr, get("/big.bin"), 1)
	if !bytes.Equal(bodies[0], big) {
		t.Errorf("big.bin: %d bytes, not the file's %d", len(bodies[0]), len(big))
	}
	resps, bodies, _ := exchange(t, addr, "HEAD /big.bin HTTP/1.1\r\nHost: x\r\n\r\n", 1)
	if resps[0].ContentLength != int64(len(big)) || len(bodies[0]) != 0 {
		t.Errorf("HEAD: Content-Length %d, body %d bytes", resps[0].ContentLength, len(bodies[0]))
	}
	if st.Load(shm.Requests) == 0 || st.Load(shm.BytesOut) < uint64(len(big)) {
		t.Errorf("scoreboard: %d requests, %d bytes", st.Load(shm.Requests), st.Load(shm.BytesOut))
	}
}

func TestConditionalAndRange(t *testing.T) {
	root, big := siteRoot(t)
	addr, _ := testEngine(t, root, nil)
	resps, _, _ := exchange(t, addr, get("/hello.txt"), 1)
	etag, lastMod := resps[0].Header.Get("ETag"), resps[0].Header.Get("Last-Modified")
	if etag == "" || lastMod == "" {
		t.Fatal("no validators")
	}
	for _, tc := range []struct {
		raw    string
		status int
		body   string
		crange string
	}{
		{get("/hello.txt", "If-None-Match: "+etag+"\r\n"), 304, "", ""},
		{get("/hello.txt", `If-None-Match: "other", `+etag+"\r\n"), 304, "", ""},
		{get("/hello.txt", "If-None-Match: *\r\n"), 304, "", ""},
		{get("/hello.txt", `If-None-Match: "other"`+"\r\n"), 200, "Hello, world\n", ""},
		{get("/hello.txt", "If-Modified-Since: "+lastMod+"\r\n"), 304, "", ""},
		{get("/hello.txt", "If-Modified-Since: Mon, 01 Jan 2001 00:00:00 GMT\r\n"), 200, "Hello, world\n", ""},
		{get("/hello.txt", "Range: bytes=0-4\r\n"), 206, "Hello", "bytes 0-4/13"},
		{get("/hello.txt", "Range: bytes=7-\r\n"), 206, "world\n", "bytes 7-12/13"},
		{get("/hello.txt", "Range: bytes=-6\r\n"), 206, "world\n", "bytes 7-12/13"},
		{get("/hello.txt", "Range: bytes=5-100\r\n"), 206, ", world\n", "bytes 5-12/13"},
		{get("/hello.txt", "Range: bytes=13-\r\n"), 416, "", "bytes */13"},
		{get("/hello.txt", "Range: bytes=0-1,3-4\r\n"), 200, "Hello, world\n", ""},
		{get("/hello.txt", "Range: bytes=0-4\r\n", `If-Range: "stale"`+"\r\n"), 200, "Hello, world\n", ""},
		{get("/hello.txt", "Range: bytes=0-4\r\n", "If-Range: "+etag+"\r\n"), 206, "Hello", "bytes 0-4/13"},
		// Preconditions (RFC 9110 13.1.1, 13.1.4): a resumed download whose
		// file changed since gets 412, never the new file's bytes.
		{get("/hello.txt", "If-Match: "+etag+"\r\n"), 200, "Hello, world\n", ""},
		{get("/hello.txt", `If-Match: "other", `+etag+"\r\n"), 200, "Hello, world\n", ""},
		{get("/hello.txt", "If-Match: *\r\n"), 200, "Hello, world\n", ""},
		{get("/hello.txt", `If-Match: "other"`+"\r\n"), 412, "", ""},
		{get("/hello.txt", "If-Match: W/"+etag+"\r\n"), 412, "", ""}, // compared strongly
		{get("/hello.txt", "If-Unmodified-Since: "+lastMod+"\r\n"), 200, "Hello, world\n", ""},
		{get("/hello.txt", "If-Unmodified-Since: Mon, 01 Jan 2001 00:00:00 GMT\r\n"), 412, "", ""},
		{get("/hello.txt", "If-Unmodified-Since: yesterday\r\n"), 200, "Hello, world\n", ""},
		{get("/hello.txt", "If-Match: "+etag+"\r\n", "If-Unmodified-Since: Mon, 01 Jan 2001 00:00:00 GMT\r\n"), 200, "Hello, world\n", ""},
		{get("/hello.txt", "Range: bytes=7-\r\n", "If-Unmodified-Since: "+lastMod+"\r\n"), 206, "world\n", "bytes 7-12/13"},
		{get("/hello.txt", "Range: bytes=7-\r\n", "If-Unmodified-Since: Mon, 01 Jan 2001 00:00:00 GMT\r\n"), 412, "", ""},
		{get("/hello.txt", "Range: bytes=7-\r\n", `If-Match: "stale"`+"\r\n"), 412, "", ""},
	} {
		resps, bodies, _ := exchange(t, addr, tc.raw, 1)
		r := resps[0]
		if r.StatusCode != tc.status || (tc.status < 300 && string(bodies[0]) != tc.body) ||
			r.Header.Get("Content-Range") != tc.crange {
			t.Errorf("%q: %d %q Content-Range %q; want %d %q %q", strings.TrimSpace(tc.raw), r.StatusCode, bodies[0],
				r.Header.Get("Content-Range"), tc.status, tc.body, tc.crange)
		}
	}
	// A range of a large file goes through sendfile at an offset.
	resps, bodies, _ := exchange(t, addr, get("/big.bin", "Range: bytes=100000-300000\r\n"), 1)
	if resps[0].StatusCode != 206 || !bytes.Equal(bodies[0], big[100000:300001]) {
		t.Errorf("range of big.bin: %d, %d bytes", resps[0].StatusCode, len(bodies[0]))
	}
}

func TestPrecompressed(t *testing.T) {
	root, _ := siteRoot(t)
	addr, _ := testEngine(t, root, nil)
	resps, bodies, _ := exchange(t, addr, get("/app.js", "Accept-Encoding: br, gzip\r\n"), 1)
	r := resps[0]
	if r.Header.Get("Content-Encoding") != "gzip" || r.Header.Get("Vary") != "Accept-Encoding" || r.Header.Get("Content-Type") != "text/javascript; charset=utf-8" {
		t.Fatalf("gzip: headers %v", r.Header)
	}
	zr, err := gzip.NewReader(bytes.NewReader(bodies[0]))
	if err != nil {
		t.Fatal(err)
	}
	if plain, _ := io.ReadAll(zr); string(plain) != "console.log('plain')\n" {
		t.Errorf("gzip body decodes to %q", plain)
	}
	for _, ae := range []string{"", "Accept-Encoding: gzip;q=0\r\n", "Accept-Encoding: identity\r\n"} {
		resps, bodies, _ = exchange(t, addr, get("/app.js", ae), 1)
		if resps[0].Header.Get("Content-Encoding") != "" || string(bodies[0]) != "console.log('plain')\n" {
			t.Errorf("%q: got the compressed file", ae)
		}
	}
}

// Pipelined requests are answered in order on one connection.
func TestPipelining(t *testing.T) {
	root, _ := siteRoot(t)
	addr, _ := testEngine(t, root, nil)
	raw := get("/hello.txt") + get("/missing") + get("/docs/") + "HEAD /hello.txt HTTP/1.1\r\nHost: x\r\n\r\n" + get("/index.html")
	resps, bodies, c := exchange(t, addr, raw, 5)
	want := []struct {
		status int
		body   string
	}{{200, "Hello, world\n"}, {404, ""}, {200, "docs\n"}, {200, ""}, {200, "<h1>home</h1>\n"}}
	for i, w := range want {
		if resps[i].StatusCode != w.status || (w.body != "" && string(bodies[i]) != w.body) {
			t.Errorf("response %d: %d %q, want %d %q", i+1, resps[i].StatusCode, bodies[i], w.status, w.body)
		}
	}
	// Still open for more, then closed when asked.
	io.WriteString(c, "GET /hello.txt HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, nil)
	if err != nil || !resp.Close {
		t.Fatalf("close request: %v %v", err, resp)
	}
	io.ReadAll(resp.Body)
	if _, err := br.ReadByte(); err != io.EOF {
		t.Errorf("connection not closed after Connection: close (%v)", err)
	}
}

// A HEAD answer never has a body, error pages included: on a keep-alive
// connection the next response must follow the head directly.
func TestHeadHasNoBody(t *testing.T) {
	root, _ := siteRoot(t)
	addr, _ := testEngine(t, root, nil)
	raw := "HEAD /missing HTTP/1.1\r\nHost: x\r\n\r\n" + "HEAD /docs HTTP/1.1\r\nHost: x\r\n\r\n" + get("/hello.txt")
	resps, bodies, _ := exchange(t, addr, raw, 3)
	if resps[0].StatusCode != 404 || resps[1].StatusCode != 301 || resps[2].StatusCode != 200 || string(bodies[2]) != "Hello, world\n" {
		t.Errorf("HEAD 404, HEAD 301, GET: %d %d %d %q", resps[0].StatusCode, resps[1].StatusCode, resps[2].StatusCode, bodies[2])
	}
}

// Every limit answers with its status and closes the connection. The
// sizes are the documented ones (8 KiB, 16 KiB, 100 fields), written out:
// built from the constants, a test would follow a limit raised by mistake.
func TestLimitsAndMalformed(t *testing.T) {
	root, _ := siteRoot(t)
	addr, _ := testEngine(t, root, nil)
	many := strings.Repeat("X-A: b\r\n", 101)
	for _, tc := range []struct {
		name, raw string
		status    int
	}{
		{"long URI", "GET /" + strings.Repeat("a", 8<<10) + " HTTP/1.1\r\nHost: x\r\n\r\n", 414},
		{"big headers", "GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + strings.Repeat("b", 16<<10) + "\r\n\r\n", 431},
		{"many headers", "GET / HTTP/1.1\r\nHost: x\r\n" + many + "\r\n", 431},
		{"no Host", "GET / HTTP/1.1\r\n\r\n", 400},
		{"two Hosts", "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400},
		{"HTTP/2.0", "GET / HTTP/2.0\r\nHost: x\r\n\r\n", 505},
		{"not HTTP", "GET / FTP/1.0\r\n\r\n", 400},
		{"bad method", "G(T / HTTP/1.1\r\nHost: x\r\n\r\n", 400},
		{"space before colon", "GET / HTTP/1.1\r\nHost : x\r\n\r\n", 400},
		{"space before colon, with a Host", "GET / HTTP/1.1\r\nHost: x\r\nX-A : b\r\n\r\n", 400},
		{"folded header", "GET / HTTP/1.1\r\nHost: x\r\n  folded\r\n\r\n", 400},
		{"folded header with a colon", "GET / HTTP/1.1\r\nHost: x\r\nX-A: b\r\n c: d\r\n\r\n", 400},
		{"gzip-coded body", "GET / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n", 501},
		{"both framings", "GET / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n", 400},
		{"chunked HTTP/1.0", "GET / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400},
		{"bad chunk size", "GET / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n\r\n", 400},
		{"huge chunk", "GET / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nffffff\r\n", 413},
		{"expectation", "GET / HTTP/1.1\r\nHost: x\r\nExpect: teapot\r\n\r\n", 417},
		{"differing lengths", "GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab", 400},
		{"bad length", "GET / HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n", 400},
		{"huge body", "GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999\r\n\r\n", 413},
		{"NUL in path", "GET /hello%00.txt HTTP/1.1\r\nHost: x\r\n\r\n", 400},
		{"bad escape", "GET /%zz HTTP/1.1\r\nHost: x\r\n\r\n", 400},
		{"backslash", "GET /..%5c..%5csecret.txt HTTP/1.1\r\nHost: x\r\n\r\n", 400},
		{"asterisk", "GET * HTTP/1.1\r\nHost: x\r\n\r\n", 400},
	} {
		resps, _, c := exchange(t, addr, tc.raw, 1)
		if resps[0].StatusCode != tc.status {
			t.Errorf("%s: status %d, want %d", tc.name, resps[0].StatusCode, tc.status)
			continue
		}
		if !resps[0].Close {
			t.Errorf("%s: refused with Connection: %q, then closed", tc.name, resps[0].Header.Get("Connection"))
		}
		{
			c.SetReadDeadline(time.Now().Add(2 * time.Second))
			if n, err := c.Read(make([]byte, 1)); err == nil || n > 0 {
				t.Errorf("%s: connection left open", tc.name)
			}
		}
	}
	// A GET with a small body: the body is read and dropped, the connection lives.
	resps, bodies, _ := exchange(t, addr, "GET /hello.txt HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc"+get("/hello.txt"), 2)
	if resps[1].StatusCode != 200 || string(bodies[1]) != "Hello, world\n" {
		t.Errorf("request after a dropped body: %d %q", resps[1].StatusCode, bodies[1])
	}
}

// Nothing outside the root is ever read, however the path is spelled.
func TestContainment(t *testing.T) {
	root, _ := siteRoot(t)
	addr, _ := testEngine(t, root, nil)
	for _, target := range []string{
		"/../secret.txt", "/%2e%2e/secret.txt", "/%2E%2E/secret.txt", "/docs/../../secret.txt",
		"/docs/%2e%2e/%2e%2e/secret.txt", "/..%2fsecret.txt", "/%2e%2e%2fsecret.txt", "/leak.txt",
		"/%252e%252e/secret.txt", "//../secret.txt", "/./../secret.txt",
	} {
		resps, bodies, _ := exchange(t, addr, get(target), 1)
		if resps[0].StatusCode == 200 || bytes.Contains(bodies[0], []byte("SECRET")) {
			t.Errorf("GET %s: %d %q", target, resps[0].StatusCode, bodies[0])
		}
	}
	addr2, _ := testEngine(t, root, func(c *Config) { c.FollowSymlinks = true })
	_, bodies, _ := exchange(t, addr2, get("/leak.txt"), 1)
	if string(bodies[0]) != "SECRET" {
		t.Errorf("FollowSymlinks: %q", bodies[0])
	}
}

// A client that sends half a head gets 408 and is closed; an idle
// keep-alive connection is closed.
func TestTimeouts(t *testing.T) {
	root, _ := siteRoot(t)
	addr, _ := testEngine(t, root, func(c *Config) {
		c.HeaderTimeout = 300 * time.Millisecond
		c.IdleTimeout = 300 * time.Millisecond
	})
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	io.WriteString(c, "GET /hello.txt HTTP/1.1\r\nHo")
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil || resp.StatusCode != 408 {
		t.Errorf("slow head: %v %v", err, resp)
	}
	_, _, kc := exchange(t, addr, get("/hello.txt"), 1)
	kc.SetReadDeadline(time.Now().Add(5 * time.Second))
	start := time.Now()
	if _, err := kc.Read(make([]byte, 1)); err != io.EOF {
		t.Errorf("idle keep-alive connection: %v", err)
	}
	if time.Since(start) > 3*time.Second {
		t.Errorf("idle connection closed only after %v", time.Since(start))
	}
}

func dup(fd int) (int, error) { return unix.FcntlInt(uintptr(fd), unix.F_DUPFD_CLOEXEC, 0) }

// Autoindex lists a directory without index.html: entries sorted, names
// escaped for HTML and for the URL, directories with a slash.
func TestAutoindex(t *testing.T) {
	root, _ := siteRoot(t)
	os.WriteFile(filepath.Join(root, "empty", `<b>&"x".txt`), []byte("x"), 0o644)
	os.Mkdir(filepath.Join(root, "empty", "sub"), 0o755)
	addr, _ := testEngine(t, root, func(c *Config) { c.Autoindex = true })
	resps, bodies, _ := exchange(t, addr, get("/empty/"), 1)
	body := string(bodies[0])
	if resps[0].StatusCode != 200 || resps[0].Header.Get("Content-Type") != "text/html; charset=utf-8" {
		t.Fatalf("listing: %d %q", resps[0].StatusCode, resps[0].Header.Get("Content-Type"))
	}
	for _, want := range []string{"<title>Index of /empty/</title>", `<a href="../">../</a>`,
		`<a href="./%3Cb%3E&amp;%22x%22.txt">&lt;b&gt;&amp;&#34;x&#34;.txt</a>`, `<a href="./sub/">sub/</a>`} {
		if !strings.Contains(body, want) {
			t.Errorf("listing lacks %s:\n%s", want, body)
		}
	}
	if strings.Index(body, "%3Cb") > strings.Index(body, "sub/") {
		t.Errorf("entries not sorted by name:\n%s", body)
	}
	if strings.Contains(body, "<b>") {
		t.Errorf("a file name reached the page unescaped:\n%s", body)
	}
	// A directory with an index is still answered by it; HEAD has no body.
	if _, bodies, _ := exchange(t, addr, get("/docs/"), 1); string(bodies[0]) != "docs\n" {
		t.Errorf("/docs/ with autoindex: %q, want its index.html", bodies[0])
	}
	resps, bodies, _ = exchange(t, addr, "HEAD /empty/ HTTP/1.1\r\nHost: x\r\n\r\n", 1)
	if resps[0].StatusCode != 200 || len(bodies[0]) != 0 || resps[0].ContentLength != int64(len(body)) {
		t.Errorf("HEAD listing: %d, %d body bytes, length %d", resps[0].StatusCode, len(bodies[0]), resps[0].ContentLength)
	}
}

// Every answer, refusals included, gets an access log line with the
// client's address, the request, the status and the body size, and is
// reported to OnRequest with the running count.
func TestAccessLogAndOnRequest(t *testing.T) {
	root, _ := siteRoot(t)
	log, err := os.Create(filepath.Join(t.TempDir(), "access.log"))
	if err != nil {
		t.Fatal(err)
	}
	defer log.Close()
	var counts []uint64
	var mu sync.Mutex
	addr, _ := testEngine(t, root, func(c *Config) {
		c.AccessLog = log // written once each answer is sent
		c.OnRequest = func(n uint64) { mu.Lock(); counts = append(counts, n); mu.Unlock() }
	})
	exchange(t, addr, get("/hello.txt")+"HEAD /hello.txt HTTP/1.0\r\n\r\n", 2)
	exchange(t, addr, get("/missing"), 1)
	exchange(t, addr, get("/big.bin", "Range: bytes=0-9\r\n"), 1)
	exchange(t, addr, "GET / FTP/1.0\r\n\r\n", 1)
	want := []string{
		`"GET /hello.txt HTTP/1.1" 200 13`,
		`"HEAD /hello.txt HTTP/1.0" 200 0`,
		`"GET /missing HTTP/1.1" 404 `,
		`"GET /big.bin HTTP/1.1" 206 10`,
		`"-" 400 `,
	}
	// A line is written once its answer has been sent: the client may read
	// the answer a moment before.
	var b []byte
	var lines []string
	for deadline := time.Now().Add(3 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		b, _ = os.ReadFile(log.Name())
		lines = strings.Split(strings.TrimSpace(string(b)), "\n")
		if len(lines) >= len(want) || time.Now().After(deadline) {
			break
		}
	}
	if len(lines) != len(want) {
		t.Fatalf("%d lines for %d answers:\n%s", len(lines), len(want), b)
	}
	// Each answer's line, in any order: a line is written after its answer
	// is sent, by the thread that sent it — the accepting thread's front or
	// the loop — so a client can read one answer and get the next before
	// the first one's line is out (a front descheduled between its send and
	// its Write did that on a busy machine).
	format := regexp.MustCompile(`^127\.0\.0\.1 - - \[\d\d/\w{3}/\d{4}:\d\d:\d\d:\d\d [+-]\d{4}\] "[^"]*" \d{3} \d+$`)
	for i, l := range lines {
		if !format.MatchString(l) {
			t.Errorf("line %d: %q, want Common Log Format", i+1, l)
		}
	}
	left := slices.Clone(lines)
	for _, w := range want {
		i := slices.IndexFunc(left, func(l string) bool { return strings.Contains(l, w) })
		if i < 0 {
			t.Errorf("no line with %s in\n%s", w, b)
			continue
		}
		left = slices.Delete(left, i, i+1)
	}
	mu.Lock()
	defer mu.Unlock()
	if !slices.Equal(counts, []uint64{1, 2, 3, 4, 5}) {
		t.Errorf("OnRequest saw %v, want 1..5", counts)
	}
}
