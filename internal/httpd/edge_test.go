package httpd

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/herd-run/herd/internal/shm"
	"golang.org/x/sys/unix"
)

// Regression tests for what a hostile client (or an unlucky document root)
// did to the engine: each names the class it covers in docs/SECURITY.md.

// A FIFO under the root, or as a file's .gz sibling, is not opened for
// reading: opening one blocks until a writer comes, and would hang the
// loop and every connection on it.
func TestSpecialFilesDoNotBlock(t *testing.T) {
	root, _ := siteRoot(t)
	for _, name := range []string{"fifo", "page.js.gz"} {
		if err := unix.Mkfifo(filepath.Join(root, name), 0o644); err != nil {
			t.Skipf("mkfifo: %v", err)
		}
	}
	os.WriteFile(filepath.Join(root, "page.js"), []byte("page\n"), 0o644)
	addr, _ := testEngine(t, root, nil)
	for _, tc := range []struct {
		raw    string
		status int
		body   string
	}{
		{get("/fifo"), 404, ""},
		{get("/fifo", "Range: bytes=0-1\r\n"), 404, ""},
		{get("/page.js", "Accept-Encoding: gzip\r\n"), 200, "page\n"},
		{get("/hello.txt"), 200, "Hello, world\n"}, // the loop is still alive
	} {
		resps, bodies, _ := exchange(t, addr, tc.raw, 1) // 5 s deadline: a hang fails here
		if resps[0].StatusCode != tc.status || (tc.body != "" && string(bodies[0]) != tc.body) {
			t.Errorf("%s: %d %q, want %d %q", firstLine(tc.raw), resps[0].StatusCode, bodies[0], tc.status, tc.body)
		}
	}
}

// The loop itself writes the heartbeat: while it is stuck, or a front
// answering on an accepting thread is, the heartbeat stops, so the
// master's --worker-timeout can replace the worker.
func TestHeartbeatComesFromTheLoop(t *testing.T) {
	for _, who := range []string{"loop", "front"} {
		t.Run(who, func(t *testing.T) { testHeartbeatStops(t, who) })
	}
}

func testHeartbeatStops(t *testing.T, who string) {
	root, _ := siteRoot(t)
	stuck, release := make(chan struct{}), make(chan struct{})
	addr, st := testEngine(t, root, func(c *Config) {
		// With deferred accept the request is there when the connection is
		// accepted, and the front answers it; without, and a client that
		// writes late, the front reads nothing and the loop answers.
		c.ReadFirst = who == "front"
		c.OnRequest = func(uint64) { // runs on the thread that answers
			close(stuck)
			<-release
		}
	})
	waitBeat := func(after uint64) uint64 {
		t.Helper()
		deadline := time.Now().Add(3 * time.Second)
		for time.Now().Before(deadline) {
			if b := st.Load(shm.Heartbeat); b > after {
				return b
			}
			time.Sleep(20 * time.Millisecond)
		}
		t.Fatalf("no heartbeat after %d", after)
		return 0
	}
	beat := waitBeat(0)
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if who == "loop" {
		time.Sleep(100 * time.Millisecond) // the front has let go
	}
	io.WriteString(c, get("/hello.txt"))
	<-stuck
	time.Sleep(1100 * time.Millisecond) // a front counts as stuck after a second
	frozen := st.Load(shm.Heartbeat)
	time.Sleep(2 * time.Second)
	if b := st.Load(shm.Heartbeat); b != frozen {
		t.Errorf("heartbeat moved from %d to %d while the %s was stuck", frozen, b, who)
	}
	close(release)
	if waitBeat(frozen) <= beat {
		t.Error("heartbeat did not resume")
	}
}

// Directory redirects percent-encode the name and keep the query; no byte
// of a name can end the Location header and start another.
func TestRedirectLocation(t *testing.T) {
	root, _ := siteRoot(t)
	for _, d := range []string{"a dir", "q?x", "x\r\nSet-Cookie: a=1", "50%", "é"} {
		if err := os.Mkdir(filepath.Join(root, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	addr, _ := testEngine(t, root, nil)
	for _, tc := range []struct{ target, location string }{
		{"/docs", "/docs/"},
		{"/docs?x=1&y=%2F", "/docs/?x=1&y=%2F"},
		{"/a%20dir", "/a%20dir/"},
		{"/a%20dir?q=1", "/a%20dir/?q=1"},
		{"/q%3fx", "/q%3Fx/"},
		{"/x%0d%0aSet-Cookie:%20a=1", "/x%0D%0ASet-Cookie:%20a=1/"},
		{"/50%25", "/50%25/"},
		{"/%C3%A9", "/%C3%A9/"},
		{"/docs/./../docs", "/docs/"},
		{"http://example.com/docs?z", "/docs/?z"},
	} {
		resps, _, _ := exchange(t, addr, get(tc.target), 1)
		r := resps[0]
		if r.StatusCode != 301 || r.Header.Get("Location") != tc.location || r.Header.Get("Set-Cookie") != "" {
			t.Errorf("GET %s: %d Location %q Set-Cookie %q; want 301 %q", tc.target, r.StatusCode,
				r.Header.Get("Location"), r.Header.Get("Set-Cookie"), tc.location)
		}
	}
}

// A listing's links are relative ("./name"): a file named like a URL
// scheme stays a file, and names are escaped for the URL and for HTML.
func TestAutoindexLinksStayRelative(t *testing.T) {
	root, _ := siteRoot(t)
	for _, n := range []string{"javascript:alert(1)", "data:text", `"><script>x<`} {
		if err := os.WriteFile(filepath.Join(root, "empty", n), []byte("x"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	addr, _ := testEngine(t, root, func(c *Config) { c.Autoindex = true })
	_, bodies, _ := exchange(t, addr, get("/empty/"), 1)
	body := string(bodies[0])
	for _, href := range regexp.MustCompile(`href="([^"]*)"`).FindAllStringSubmatch(body, -1) {
		if h := href[1]; !strings.HasPrefix(h, "./") && h != "../" {
			t.Errorf("link %q is not relative to the directory", h)
		}
	}
	for _, want := range []string{`href="./javascript:alert%281%29"`, `href="./data:text"`} {
		if !strings.Contains(body, want) {
			t.Errorf("listing lacks %s:\n%s", want, body)
		}
	}
	if strings.Contains(body, "<script>") {
		t.Errorf("a name reached the page unescaped:\n%s", body)
	}
}

// Range answers over the wire: a 416 never carries the file's validators
// as if it were the file, and an empty file ignores ranges from its start.
func TestRangeAnswers(t *testing.T) {
	root, _ := siteRoot(t)
	os.WriteFile(filepath.Join(root, "empty.txt"), nil, 0o644)
	addr, _ := testEngine(t, root, nil)
	for _, tc := range []struct {
		raw    string
		status int
		length int64
	}{
		{get("/hello.txt", "Range: bytes=-0\r\n"), 416, 0},
		{get("/hello.txt", "Range: BYTES=0-4\r\n"), 206, 5},
		{get("/hello.txt", "Range: bytes=abc-\r\n"), 416, 0},
		{get("/hello.txt", "Range: bytes=-abc\r\n"), 416, 0},
		{get("/empty.txt", "Range: bytes=-1\r\n"), 200, 0},
	} {
		resps, _, _ := exchange(t, addr, tc.raw, 1)
		r := resps[0]
		if r.StatusCode != tc.status || r.ContentLength != tc.length {
			t.Errorf("%q: %d length %d; want %d length %d", strings.TrimSpace(tc.raw), r.StatusCode, r.ContentLength, tc.status, tc.length)
		}
		if r.StatusCode == 416 && (r.Header.Get("ETag") != "" || r.Header.Get("Content-Range") != "bytes */13") {
			t.Errorf("%q: 416 with ETag %q, Content-Range %q", strings.TrimSpace(tc.raw), r.Header.Get("ETag"), r.Header.Get("Content-Range"))
		}
	}
}

// Protocol details over the wire: bodies read and dropped (chunked
// included) with the next request answered, 100-continue answered before
// the client sends its body, a refused method with a body answered at
// once, a file never served as a directory.
func TestProtocolDetailsOverTheWire(t *testing.T) {
	root, _ := siteRoot(t)
	addr, _ := testEngine(t, root, nil)
	for _, tc := range []struct {
		raw    string
		n      int
		status []int
	}{
		{"GET /hello.txt HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n" + get("/hello.txt"), 2, []int{200, 200}},
		{"GET /hello.txt HTTP/1.1\nHost: x\n\n", 1, []int{200}},
		{"\r\n" + get("/hello.txt"), 1, []int{200}},
		{"GET /hello.txt HTTP/1.2\r\nHost: x\r\n\r\n", 1, []int{200}},
		{"GET HTTP://x/hello.txt HTTP/1.1\r\nHost: x\r\n\r\n", 1, []int{200}},
		{get("/hello.txt/"), 1, []int{404}},
		{get("/hello.txt/."), 1, []int{404}},
		{get("/hello.txt/%2e"), 1, []int{404}},
		{get("/docs/."), 1, []int{200}},
		{"GET / HTTP/1.1\r\nHost: a b\r\n\r\n", 1, []int{400}},
	} {
		resps, _, _ := exchange(t, addr, tc.raw, tc.n)
		for i, want := range tc.status {
			if resps[i].StatusCode != want {
				t.Errorf("%q: answer %d is %d, want %d", tc.raw, i+1, resps[i].StatusCode, want)
			}
		}
	}

	// Expect: 100-continue — the interim answer comes before any body is sent.
	c := dial(t, addr, 5*time.Second)
	io.WriteString(c, "GET /hello.txt HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n")
	br := bufio.NewReader(c)
	if line, err := br.ReadString('\n'); err != nil || line != "HTTP/1.1 100 Continue\r\n" {
		t.Fatalf("before the body: %q %v", line, err)
	}
	br.ReadString('\n')
	io.WriteString(c, "hello")
	if resp, err := http.ReadResponse(br, nil); err != nil || resp.StatusCode != 200 {
		t.Fatalf("after the body: %v %v", resp, err)
	}

	// POST with Expect: 405 at once, no 100, and the connection closes.
	c2 := dial(t, addr, 5*time.Second)
	io.WriteString(c2, "POST /hello.txt HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 1000\r\n\r\n")
	resp, err := http.ReadResponse(bufio.NewReader(c2), nil)
	if err != nil || resp.StatusCode != 405 || !resp.Close {
		t.Fatalf("POST with Expect: %v %v", resp, err)
	}
}

// A refused request says "Connection: close" and the connection then
// closes cleanly: a request pipelined behind it is not answered, and a
// client still sending gets the answer and a FIN, not a reset.
func TestRefusalsCloseHonestly(t *testing.T) {
	root, _ := siteRoot(t)
	addr, _ := testEngine(t, root, nil)

	resps, _, c := exchange(t, addr, "GET /%zz HTTP/1.1\r\nHost: x\r\n\r\n"+get("/hello.txt"), 1)
	if resps[0].StatusCode != 400 || !resps[0].Close {
		t.Errorf("bad escape: %d close=%v", resps[0].StatusCode, resps[0].Close)
	}
	if n, err := c.Read(make([]byte, 512)); n != 0 || err != io.EOF {
		t.Errorf("after the refusal: %d bytes, %v; want EOF", n, err)
	}

	// 413 while the client is still sending its body: it must be able to
	// read the whole answer, then see the end of the stream.
	c = dial(t, addr, 10*time.Second)
	io.WriteString(c, "GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 10000000\r\n\r\n")
	sent := make(chan error, 1)
	go func() {
		chunk := bytes.Repeat([]byte("x"), 64<<10)
		var err error
		for i := 0; i < 32 && err == nil; i++ { // 2 MiB, bounded
			_, err = c.Write(chunk)
		}
		sent <- err
	}()
	time.Sleep(100 * time.Millisecond) // let the answer and some body cross
	all, err := io.ReadAll(c)
	if err != nil {
		t.Fatalf("reading the 413: %v (a reset instead of a lingering close)", err)
	}
	if !bytes.HasPrefix(all, []byte("HTTP/1.1 413 ")) || !bytes.Contains(all, []byte("Connection: close")) {
		t.Errorf("answer: %q", all)
	}
	<-sent
}

// Out of descriptors, a file request is 503, and the failure is not
// remembered: the same file is served as soon as descriptors are free.
func TestOutOfDescriptors(t *testing.T) {
	root, _ := siteRoot(t)
	os.WriteFile(filepath.Join(root, "other.txt"), []byte("other\n"), 0o644)
	addr, _ := testEngine(t, root, nil)
	resps, _, c := exchange(t, addr, get("/hello.txt"), 1) // the connection is in the loop now
	if resps[0].StatusCode != 200 {
		t.Fatal(resps[0].Status)
	}
	br := bufio.NewReader(c)
	ask := func(target string) int {
		t.Helper()
		io.WriteString(c, get(target))
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatalf("GET %s: %v", target, err)
		}
		io.Copy(io.Discard, resp.Body)
		return resp.StatusCode
	}

	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		t.Fatal(err)
	}
	var fillers []int
	func() {
		low := lim
		low.Cur = 4096
		if low.Cur > lim.Cur {
			low.Cur = lim.Cur
		}
		if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &low); err != nil {
			t.Skipf("setrlimit: %v", err)
		}
		defer syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim)
		for {
			fd, err := unix.Dup(0)
			if err != nil {
				if !errors.Is(err, unix.EMFILE) {
					t.Fatalf("dup: %v", err)
				}
				break
			}
			fillers = append(fillers, fd)
		}
		io.WriteString(c, get("/other.txt"))
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatalf("out of descriptors: %v", err)
		}
		io.Copy(io.Discard, resp.Body)
		if resp.StatusCode != 503 || resp.Header.Get("Retry-After") == "" || !resp.Close {
			t.Errorf("out of descriptors: %d Retry-After %q close=%v; want 503, Retry-After, close",
				resp.StatusCode, resp.Header.Get("Retry-After"), resp.Close)
		}
		for _, fd := range fillers {
			unix.Close(fd)
		}
	}()
	c.Close()
	resps, bodies, c := exchange(t, addr, get("/other.txt"), 1)
	if resps[0].StatusCode != 200 || string(bodies[0]) != "other\n" {
		t.Errorf("descriptors free again: %d %q; want 200 at once", resps[0].StatusCode, bodies[0])
	}
	br = bufio.NewReader(c)
	if s := ask("/" + strings.Repeat("n", 300)); s != 404 {
		t.Errorf("name too long: %d, want 404", s)
	}
}

// The access log tells how many body bytes reached the client, also when
// the client leaves in the middle of a large file.
func TestAccessLogCountsWhatWasSent(t *testing.T) {
	root, _ := siteRoot(t)
	huge := make([]byte, 32<<20)
	os.WriteFile(filepath.Join(root, "huge.bin"), huge, 0o644)
	logFile, err := os.Create(filepath.Join(t.TempDir(), "access.log"))
	if err != nil {
		t.Fatal(err)
	}
	defer logFile.Close()
	addr, st := testEngine(t, root, func(c *Config) { c.AccessLog = logFile })
	d := net.Dialer{Control: func(_, _ string, rc syscall.RawConn) error {
		return rc.Control(func(fd uintptr) { unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUF, 4096) })
	}}
	c, err := d.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	io.WriteString(c, get("/huge.bin"))
	io.ReadFull(c, make([]byte, 1000))
	time.Sleep(200 * time.Millisecond)
	c.(*net.TCPConn).SetLinger(0)
	c.Close() // a reset: the rest of the file cannot be sent
	deadline := time.Now().Add(5 * time.Second)
	for st.Load(shm.Active) != 0 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	b, _ := os.ReadFile(logFile.Name())
	m := regexp.MustCompile(`"GET /huge.bin HTTP/1.1" 200 (\d+)\n`).FindSubmatch(b)
	if m == nil {
		t.Fatalf("no log line for the cut transfer:\n%s", b)
	}
	if string(m[1]) == "33554432" {
		t.Errorf("logged the planned %s bytes, not what was sent", m[1])
	}
}

// The document root is followed when its path names another directory:
// a symlink switched by a deploy, then the old release deleted.
func TestRootFollowsDeploy(t *testing.T) {
	base := t.TempDir()
	for _, rel := range []string{"release-1", "release-2"} {
		os.Mkdir(filepath.Join(base, rel), 0o755)
		os.WriteFile(filepath.Join(base, rel, "v.txt"), []byte(rel), 0o644)
	}
	current := filepath.Join(base, "current")
	if err := os.Symlink("release-1", current); err != nil {
		t.Fatal(err)
	}
	engines := everyEngine(t, current)
	for _, e := range engines {
		if _, bodies, _ := exchange(t, e.addr, get("/v.txt"), 1); string(bodies[0]) != "release-1" {
			t.Fatalf("%s before: %q", e.name, bodies[0])
		}
	}
	// Switch atomically, as deploy tools do, and delete the old release.
	os.Symlink("release-2", current+".new")
	if err := os.Rename(current+".new", current); err != nil {
		t.Fatal(err)
	}
	os.RemoveAll(filepath.Join(base, "release-1"))
	deadline := time.Now().Add(5 * time.Second)
	for _, e := range engines {
		for {
			resps, bodies, _ := exchange(t, e.addr, get("/v.txt"), 1)
			if resps[0].StatusCode == 200 && string(bodies[0]) == "release-2" {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s after the switch: %d %q", e.name, resps[0].StatusCode, bodies[0])
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
}

type servedBy struct{ name, addr string }

// everyEngine serves root with the native engine — once as the strategies
// that answer on their accepting thread run it (a front first), once as
// those that accept inside the loop (epoll, exclusive, nginx, reuseport) —
// and with the nethttp handler (Static under net/http), each on its own
// loopback port. The loop's own work (its sweep, for one) is only what
// serves the second.
func everyEngine(t *testing.T, root string) []servedBy {
	t.Helper()
	native, _ := testEngine(t, root, nil)
	inline, _ := inlineEngine(t, root, nil)
	h, err := Static(root, Options{})
	if err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: h}
	go srv.Serve(l)
	t.Cleanup(func() { srv.Close() })
	return []servedBy{{"native", native}, {"native, accepting in its loop", inline}, {"nethttp", l.Addr().String()}}
}

// Every engine, one table of raw requests: the classes above answer with
// the same status and the same framing, whichever engine serves.
func TestEnginesAgree(t *testing.T) {
	root, _ := siteRoot(t)
	if err := unix.Mkfifo(filepath.Join(root, "fifo"), 0o644); err != nil {
		t.Skipf("mkfifo: %v", err)
	}
	for _, d := range []string{"a dir", "q?x", "x\r\nSet-Cookie: a=1"} {
		os.Mkdir(filepath.Join(root, d), 0o755)
	}
	engines := everyEngine(t, root)
	for _, tc := range []struct {
		raw      string
		status   int
		location string
	}{
		{get("/hello.txt"), 200, ""},
		{get("/fifo"), 404, ""},
		{get("/missing"), 404, ""},
		{get("/leak.txt"), 403, ""},
		{get("/empty/"), 403, ""},
		{get("/docs"), 301, "/docs/"},
		{get("/docs?x=1"), 301, "/docs/?x=1"},
		{get("/a%20dir"), 301, "/a%20dir/"},
		{get("/q%3fx"), 301, "/q%3Fx/"},
		{get("/x%0d%0aSet-Cookie:%20a=1"), 301, "/x%0D%0ASet-Cookie:%20a=1/"},
		{get("/hello.txt", "Range: bytes=0-4\r\n"), 206, ""},
		{get("/hello.txt", "Range: bytes=13-\r\n"), 416, ""},
		{get("/hello.txt", "Range: bytes=abc-\r\n"), 416, ""},
		{get("/hello.txt", `If-Match: "stale"`+"\r\n"), 412, ""},
		{get("/hello.txt", "If-Match: *\r\n"), 200, ""},
		{get("/hello.txt", "If-Unmodified-Since: Thu, 01 Jan 1970 00:00:00 GMT\r\n"), 412, ""},
		{get("/hello.txt", "Range: bytes=0-4\r\n", "If-Unmodified-Since: Thu, 01 Jan 1970 00:00:00 GMT\r\n"), 412, ""},
		{get("/hello.txt", "If-Unmodified-Since: garbage\r\n"), 200, ""},
		{get("/missing", `If-Match: "stale"`+"\r\n"), 404, ""},
		{"POST /hello.txt HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n", 405, ""},
		{"HEAD /missing HTTP/1.1\r\nHost: x\r\n\r\n", 404, ""},
	} {
		for _, e := range engines {
			resps, _, _ := exchange(t, e.addr, tc.raw, 1)
			r := resps[0]
			if r.StatusCode != tc.status || r.Header.Get("Location") != tc.location || r.Header.Get("Set-Cookie") != "" {
				t.Errorf("%s: %s: %d Location %q; want %d %q", e.name, firstLine(tc.raw), r.StatusCode,
					r.Header.Get("Location"), tc.status, tc.location)
			}
		}
	}
}

// A path that climbs above the root is a bad request, as in nginx, not a
// quiet lookup of what it cleans to; climbing inside the root is fine.
func TestClimbingAboveTheRoot(t *testing.T) {
	root, _ := siteRoot(t)
	addr, _ := testEngine(t, root, nil)
	for _, tc := range []struct {
		target string
		status int
	}{
		{"/../secret.txt", 400},
		{"/%2e%2e/%2e%2e/etc/passwd", 400},
		{"/docs/../../secret.txt", 400},
		{"/docs/./../../hello.txt", 400},
		{"/docs/../hello.txt", 200},
		{"/docs/x/../../hello.txt", 200},
		{"/docs/..", 200},
	} {
		resps, _, _ := exchange(t, addr, get(tc.target), 1)
		if resps[0].StatusCode != tc.status {
			t.Errorf("GET %s: %d, want %d", tc.target, resps[0].StatusCode, tc.status)
		}
	}
}

// Every answer is counted in the scoreboard by status class and duration,
// once, when it has been sent (the master's /metrics adds the workers up).
func TestAnswersCountedByClassAndDuration(t *testing.T) {
	root, _ := siteRoot(t)
	addr, st := testEngine(t, root, nil)
	exchange(t, addr, get("/hello.txt")+get("/missing")+get("/docs"), 3)
	exchange(t, addr, "GET /%zz HTTP/1.1\r\nHost: x\r\n\r\n", 1)
	want := map[shm.Field]uint64{shm.Status2xx: 1, shm.Status3xx: 1, shm.Status4xx: 2}
	// An answer is counted just after it is sent, by the thread that sent
	// it (the loop, or the front that answered first): wait for all four.
	deadline := time.Now().Add(3 * time.Second)
	for st.Load(shm.Status2xx)+st.Load(shm.Status3xx)+st.Load(shm.Status4xx) < 4 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	for f, n := range want {
		if got := st.Load(f); got != n {
			t.Errorf("field %d: %d answers, want %d", f, got, n)
		}
	}
	var inBuckets uint64
	for i := range shm.NumBuckets {
		inBuckets += st.Load(shm.DurationBucket0 + shm.Field(i))
	}
	if inBuckets != 4 || st.Load(shm.Requests) != 4 {
		t.Errorf("%d answers in the duration buckets, %d requests; want 4 and 4", inBuckets, st.Load(shm.Requests))
	}
}

// Every engine keeps small files in memory, and looks at them again after a
// second: a file changed on disk is served changed within about a second.
func TestChangedFileServedAnew(t *testing.T) {
	root, _ := siteRoot(t)
	engines := everyEngine(t, root)
	for _, e := range engines {
		if _, bodies, _ := exchange(t, e.addr, get("/hello.txt"), 1); string(bodies[0]) != "Hello, world\n" {
			t.Fatalf("%s: %q", e.name, bodies[0])
		}
	}
	os.WriteFile(filepath.Join(root, "hello.txt"), []byte("Hello again, a longer line\n"), 0o644)
	deadline := time.Now().Add(3 * time.Second)
	for _, e := range engines {
		for {
			_, bodies, _ := exchange(t, e.addr, get("/hello.txt"), 1)
			if string(bodies[0]) == "Hello again, a longer line\n" {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s still serves %q", e.name, bodies[0])
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
}

// RedirectHTTPS: every plain request goes to the same host, path and
// query over HTTPS, on the TLS port (left out for 443).
func TestRedirectHTTPS(t *testing.T) {
	root, _ := siteRoot(t)
	for _, tc := range []struct {
		port, raw, location string
	}{
		{":8443", "GET /hello.txt?a=1 HTTP/1.1\r\nHost: example.com:8080\r\n\r\n", "https://example.com:8443/hello.txt?a=1"},
		{":8443", "GET /x HTTP/1.1\r\nHost: [::1]:80\r\n\r\n", "https://[::1]:8443/x"},
		{":443", "GET /docs HTTP/1.1\r\nHost: example.com\r\n\r\n", "https://example.com/docs"},
		{":443", "GET /%C3%A9 HTTP/1.0\r\n\r\n", "https://localhost/%C3%A9"},
	} {
		addr, _ := testEngine(t, root, func(c *Config) { c.RedirectHTTPS = tc.port })
		resps, _, _ := exchange(t, addr, tc.raw, 1)
		if r := resps[0]; r.StatusCode != 301 || r.Header.Get("Location") != tc.location {
			t.Errorf("%s: %d %q, want 301 %q", firstLine(tc.raw), r.StatusCode, r.Header.Get("Location"), tc.location)
		}
	}
}

// What the loop may move of one connection's flood before it serves
// another: a few shares (64 KiB read, 2 MiB sent, and the answer under way),
// in numbers of their own, so that a share made unbounded fails the tests.
const (
	readLimit = 256 << 10
	sendLimit = 6 << 20
)

// One client cannot hold a worker's loop: a connection that keeps its
// socket busy gets a share of each turn (turnRead, turnSend), and a request
// on another connection is answered in the next turn. Each flood is queued
// in the kernel while the loop is held in OnRequest, with buffers large
// enough that the socket cannot run dry or fill within a few shares; then
// the victim asks, the loop goes on, and what the loop had moved of the
// flood when the victim's answer came is measured in the kernel's queues.
// Without the shares the loop moved all of it first.
func TestOneClientCannotHoldTheLoop(t *testing.T) {
	needForcedBuffers(t)
	root, _ := siteRoot(t)
	for _, tc := range []struct {
		name  string
		first string // answered while the loop is held
		flood string // queued meanwhile, as often as the kernel takes it
		send  bool   // the flood is of answers the loop sends, not bytes it reads
		tls   bool   // over TLS (the loop's sends of sealed records)
		limit int    // what the loop may move of it before the victim's turn
	}{
		{"pipelined requests with 9 KB heads", fatRequest, strings.Repeat(fatRequest, 8), false, false, readLimit},
		{"a body sent to a lingering close", "POST /hello.txt HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000000000\r\n\r\n",
			strings.Repeat("x", 64<<10), false, false, readLimit},
		{"a large file taken as fast as it comes", get("/big.bin"), strings.Repeat(get("/big.bin"), 64), true, false, sendLimit},
		{"a large file over TLS", get("/big.bin"), strings.Repeat(get("/big.bin"), 64), true, true, sendLimit},
	} {
		t.Run(tc.name, func(t *testing.T) {
			// The loop is held twice: in OnRequest while the flood is
			// queued, and in the access log's write for the victim's
			// answer while the queues are measured.
			entered, release := make(chan struct{}), make(chan struct{})
			answered, measured := make(chan struct{}), make(chan struct{})
			var hold atomic.Bool
			var cert tls.Certificate
			if tc.tls {
				cert = testCert(t)
			}
			addr, _ := inlineEngine(t, root, func(c *Config) {
				if tc.tls {
					c.TLS = &tls.Config{Certificates: []tls.Certificate{cert}, NextProtos: []string{"http/1.1"}}
				}
				c.OnRequest = func(uint64) {
					if hold.CompareAndSwap(true, false) {
						close(entered)
						<-release
					}
				}
				c.AccessLog = holdOnAnswer("/index.html", answered, measured)
			})
			var clientTLS *tls.Config
			if tc.tls {
				clientTLS = &tls.Config{InsecureSkipVerify: true, NextProtos: []string{"http/1.1"}}
			}
			connect := func() (net.Conn, *net.TCPConn) { return bigConn(t, addr, clientTLS) }
			victim, _ := connect()
			vr := bufio.NewReader(victim)
			ask := func() {
				t.Helper()
				io.WriteString(victim, get("/hello.txt"))
				resp, err := http.ReadResponse(vr, nil)
				if err != nil {
					t.Fatalf("the victim's answer: %v", err)
				}
				io.Copy(io.Discard, resp.Body)
			}
			ask() // the victim is the loop's, idle between requests

			flood, sock := connect()
			hold.Store(true)
			io.WriteString(flood, tc.first)
			await(t, entered, "the answer to the flood's first request")
			wrote := queueFlood(t, flood, sock, tc.flood, tc.send)
			io.WriteString(victim, get("/index.html"))
			close(release)
			await(t, answered, "the victim's answer")
			defer close(measured)

			moved, queued := floodMoved(t, sock, wrote, tc.send), wrote
			if tc.send {
				queued = (strings.Count(tc.flood, "GET ") + 1) * (1 << 20)
			}
			t.Logf("the loop had moved %d bytes of the flood (%d queued) when the victim was answered", moved, queued)
			if queued < 4*tc.limit {
				t.Fatalf("the kernel queued %d bytes of the flood; the test needs %d", queued, 4*tc.limit)
			}
			if moved > tc.limit {
				t.Errorf("the loop moved %d bytes of one connection's flood before it answered another (limit %d): one client held the loop", moved, tc.limit)
			}
		})
	}
}

// Over TLS a client chooses how small its records are, and each costs a
// decryption and the handling of what is in it: one request per record
// here (an HTTP/2 client did the same with a PING per record). The loop
// charges each record beside its bytes (tlsRecordCost), and reads records
// until its buffer is full, so that what they hold is answered together.
// Before, a share was 64 KiB of plaintext, some 1,800 of these records,
// each answered with a send(2) of its own: the loop's other clients waited
// 50 ms and more each turn (an HTTP/2 PING flood, measured beside nginx,
// which kept them at 3 ms). Measured like the floods above: how many of the
// flood's requests the loop had answered when it answered the victim's.
func TestSmallTLSRecordsTakeTheirShare(t *testing.T) {
	const limit = 400 // requests, against some 60 a share
	rig := newTLSFloodRig(t, "http/1.1")
	flood, sock := bigConn(t, rig.addr, &tls.Config{InsecureSkipVerify: true, NextProtos: []string{"http/1.1"}})
	io.WriteString(flood, get("/hello.txt?first"))
	await(t, rig.entered, "the answer to the flood's first request")
	const records = 4000
	for range records {
		if _, err := io.WriteString(flood, get("/hello.txt?f")); err != nil { // a record each
			t.Fatal(err)
		}
	}
	waitQueued(t, sock)
	n := rig.victimAsks()
	t.Logf("the loop had answered %d of the flood's %d requests when it answered the victim", n, records)
	if n > limit {
		t.Errorf("the loop answered %d requests of one connection, in records of their own, before it answered another (limit %d): one client held the loop", n, limit)
	}
}

// tlsFloodRig is a TLS engine accepting in its loop, offering protos, with
// a victim on it: an HTTP/1.1 connection already answered once, so that it
// is the loop's. The next request the engine answers — the flood's first —
// holds the loop in OnRequest (entered) until the victim asks (victimAsks),
// so the flood can be queued whole in the kernel meanwhile; the access log
// counts the flood's answers (GET /hello.txt?f) until the victim's.
type tlsFloodRig struct {
	t                  *testing.T
	addr               string
	victim             net.Conn
	vr                 *bufio.Reader
	entered, release   chan struct{}
	answered, measured chan struct{}
	before             atomic.Int64 // the flood's requests answered before the victim's
}

func newTLSFloodRig(t *testing.T, protos ...string) *tlsFloodRig {
	t.Helper()
	needForcedBuffers(t)
	root, _ := siteRoot(t)
	r := &tlsFloodRig{t: t, entered: make(chan struct{}), release: make(chan struct{}),
		answered: make(chan struct{}), measured: make(chan struct{})}
	var hold atomic.Bool
	cert := testCert(t)
	r.addr, _ = inlineEngine(t, root, func(c *Config) {
		c.TLS = &tls.Config{Certificates: []tls.Certificate{cert}, NextProtos: protos}
		c.OnRequest = func(uint64) {
			if hold.CompareAndSwap(true, false) {
				close(r.entered)
				<-r.release
			}
		}
		victimsAnswer := holdOnAnswer("/index.html", r.answered, r.measured)
		c.AccessLog = writerFunc(func(line []byte) {
			if bytes.Contains(line, []byte("GET /hello.txt?f ")) {
				r.before.Add(1)
			}
			victimsAnswer.Write(line)
		})
	})
	r.victim, _ = bigConn(t, r.addr, &tls.Config{InsecureSkipVerify: true, NextProtos: []string{"http/1.1"}})
	r.vr = bufio.NewReader(r.victim)
	io.WriteString(r.victim, get("/hello.txt"))
	resp, err := http.ReadResponse(r.vr, nil)
	if err != nil {
		t.Fatalf("the victim's first answer: %v", err)
	}
	io.Copy(io.Discard, resp.Body)
	hold.Store(true)
	return r
}

// victimAsks sends the victim's request, lets the loop go on, and returns
// how many of the flood's requests had been answered when the victim's
// was; the loop stays held in that answer until the test ends.
func (r *tlsFloodRig) victimAsks() int64 {
	r.t.Helper()
	io.WriteString(r.victim, get("/index.html"))
	close(r.release)
	await(r.t, r.answered, "the victim's answer")
	r.t.Cleanup(func() { close(r.measured) })
	return r.before.Load()
}

// A connection that used its share alone on the loop gets the next one at
// once: the loop's wait does not block while a connection waits in the
// queue. A 128 MiB answer to a client that reads as fast as it comes takes
// 64 shares, and nothing else wakes the loop between them (the socket
// never fills, so no EPOLLOUT comes); with a blocking wait each share would
// wait out the wait's bound (100 ms while the loop holds its P, 500 ms
// otherwise), and the answer would take 6.4 s or more. The deadline (5 s)
// is a bound on that, not a measure of speed: the answer takes a fraction
// of a second here.
func TestQueuedConnectionIsNotKeptWaiting(t *testing.T) {
	root, _ := siteRoot(t)
	const size = 128 << 20
	f, err := os.Create(filepath.Join(root, "128m.bin"))
	if err != nil {
		t.Fatal(err)
	}
	f.Truncate(size) // sparse: the page cache's zero pages
	f.Close()
	addr, _ := inlineEngine(t, root, nil)
	c := dial(t, addr, 5*time.Second)
	io.WriteString(c, get("/128m.bin"))
	resp, err := http.ReadResponse(bufio.NewReaderSize(c, 1<<20), nil)
	if err != nil {
		t.Fatal(err)
	}
	n, err := io.Copy(io.Discard, resp.Body)
	if err != nil || n != size {
		t.Fatalf("read %d of %d bytes: %v (the loop waited between shares)", n, size, err)
	}
}

// A front (front.go) takes its share of a connection and no more: an
// accepting thread that answers a flood hands the connection to the loop
// after a share, and goes on accepting. Without the share it read the
// whole flood first, or sent answers for as long as the client took them;
// the accepting thread took no one else meanwhile, and a front on one
// connection for a second stops the worker's heartbeat (frontStuck), which
// past --worker-timeout has the master replace the worker.
func TestFrontTakesOneShare(t *testing.T) {
	needForcedBuffers(t)
	root, _ := siteRoot(t)
	for _, tc := range []struct {
		name  string
		flood string
		send  bool // the flood is of answers the front sends, not bytes it reads
		limit int
	}{
		{"pipelined requests with 9 KB heads", strings.Repeat(fatRequest, 8), false, readLimit},
		{"a large file taken as fast as it comes", strings.Repeat(get("/big.bin"), 64), true, sendLimit},
	} {
		t.Run(tc.name, func(t *testing.T) { frontTakesOneShare(t, root, tc.flood, tc.send, tc.limit) })
	}
}

func frontTakesOneShare(t *testing.T, root, floodText string, send bool, limit int) {
	// Held in turn, each in OnRequest: the loop (so that it cannot serve
	// the flood once a front hands it over), then the accepting goroutine's
	// front (while the flood is queued); and the front answering the
	// victim, in its access log write, while the queues are measured.
	var holdLoop, holdFront atomic.Bool
	loopHeld, loopRelease := make(chan struct{}), make(chan struct{})
	frontHeld, frontRelease := make(chan struct{}), make(chan struct{})
	answered, measured := make(chan struct{}), make(chan struct{})
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	setSockopt(t, l.(*net.TCPListener), unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, 64<<20)
	addr, _ := serveListener(t, l, root, func(c *Config) {
		c.ReadFirst = true // accepted once the first request is there, so a front answers it
		c.OnRequest = func(uint64) {
			switch {
			case holdLoop.CompareAndSwap(true, false):
				close(loopHeld)
				<-loopRelease
			case holdFront.CompareAndSwap(true, false):
				close(frontHeld)
				<-frontRelease
			}
		}
		c.AccessLog = holdOnAnswer("/index.html", answered, measured)
	})
	keeper, _ := bigConn(t, addr, nil)
	kr := bufio.NewReader(keeper)
	io.WriteString(keeper, get("/hello.txt"))
	if _, err := http.ReadResponse(kr, nil); err != nil { // a front answers; the loop adopts it
		t.Fatal(err)
	}
	holdLoop.Store(true)
	for range 100 { // until the loop, not a front, answers it
		io.WriteString(keeper, get("/hello.txt"))
		select {
		case <-loopHeld:
		case <-time.After(100 * time.Millisecond):
			if _, err := http.ReadResponse(kr, nil); err != nil {
				t.Fatal(err)
			}
			continue
		}
		break
	}
	defer close(loopRelease)
	await(t, loopHeld, "the loop's hold")

	// The accepting goroutine is held in a front answering another
	// connection while the flood is queued behind it, whole, before the
	// flood is accepted.
	gate, _ := bigConn(t, addr, nil)
	holdFront.Store(true)
	io.WriteString(gate, get("/hello.txt"))
	await(t, frontHeld, "the front's hold")
	flood, sock := bigConn(t, addr, nil)
	wrote := queueFlood(t, flood, sock, floodText, send)
	victim, _ := bigConn(t, addr, nil) // accepted after the flood
	io.WriteString(victim, get("/index.html"))
	close(frontRelease)
	await(t, answered, "the victim's answer")
	defer close(measured)
	moved := floodMoved(t, sock, wrote, send)
	t.Logf("the front had moved %d bytes of the flood when the next connection was answered", moved)
	if moved > limit {
		t.Errorf("the front moved %d bytes of one connection's flood before it took the next (limit %d)", moved, limit)
	}
}

// fatRequest is a request with a head of about 9 KB: a flood of them is
// cheap to send and dear to parse.
var fatRequest = "GET /hello.txt HTTP/1.1\r\nHost: x\r\n" + strings.Repeat("X-Pad: "+strings.Repeat("a", 90)+"\r\n", 90) + "\r\n"

// needForcedBuffers skips a test that sets socket buffers past
// net.core.rmem_max, which takes CAP_NET_ADMIN.
func needForcedBuffers(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs SO_RCVBUFFORCE (CAP_NET_ADMIN) for socket buffers larger than net.core.rmem_max")
	}
}

// floodMoved is how much of a queued flood the server has moved, measured
// while it is held: of requests, what it read (wrote, all of it received,
// less what waits in its receive queue); of answers (send), what the
// client, which read none of them, has in its receive queue.
func floodMoved(t *testing.T, sock *net.TCPConn, wrote int, send bool) int {
	t.Helper()
	if send {
		return socketQueue(t, sock, unix.SIOCINQ)
	}
	return wrote - serverReceiveQueue(t, sock)
}

// bigConn dials addr with a receive buffer of 64 MiB, over TLS if conf is
// set, and returns the connection and its socket.
func bigConn(t *testing.T, addr string, conf *tls.Config) (net.Conn, *net.TCPConn) {
	t.Helper()
	d := net.Dialer{Timeout: 5 * time.Second, Control: func(_, _ string, rc syscall.RawConn) error {
		var err error
		rc.Control(func(fd uintptr) { err = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, 64<<20) })
		return err
	}}
	raw, err := d.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { raw.Close() })
	raw.SetDeadline(time.Now().Add(30 * time.Second))
	if conf == nil {
		return raw, raw.(*net.TCPConn)
	}
	c := tls.Client(raw, conf)
	if err := c.Handshake(); err != nil {
		t.Fatal(err)
	}
	return c, raw.(*net.TCPConn)
}

// queueFlood writes flood to c once (requests whose answers are the flood:
// once) or until 8 MiB are written, and waits until all of it is in the
// server's receive queue, so that nothing moves between the sockets while
// the test measures them. It returns the bytes written.
func queueFlood(t *testing.T, c net.Conn, sock *net.TCPConn, flood string, once bool) int {
	t.Helper()
	var wrote int
	for wrote < 8<<20 {
		n, err := io.WriteString(c, flood)
		wrote += n
		if err != nil {
			t.Fatalf("queueing the flood: %v after %d bytes", err, wrote)
		}
		if once {
			break
		}
	}
	waitQueued(t, sock)
	return wrote
}

// waitQueued waits until all that was written on sock is in the server's
// receive queue: none of it is left unsent in the client's.
func waitQueued(t *testing.T, sock *net.TCPConn) {
	t.Helper()
	for deadline := time.Now().Add(20 * time.Second); socketQueue(t, sock, unix.SIOCOUTQNSD) > 0; time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("the server's receive queue did not take it all: %d bytes left unsent", socketQueue(t, sock, unix.SIOCOUTQNSD))
		}
	}
}

// await waits until ch is closed, failing the test after 20 s.
func await(t *testing.T, ch chan struct{}, what string) {
	t.Helper()
	select {
	case <-ch:
	case <-time.After(20 * time.Second):
		t.Fatalf("%s did not come", what)
	}
}

// holdOnAnswer is an access log that holds the thread answering GET path
// in its write (the answer has been sent): it closes answered and waits
// until measured is closed.
func holdOnAnswer(path string, answered, measured chan struct{}) io.Writer {
	return writerFunc(func(line []byte) {
		if bytes.Contains(line, []byte("GET "+path+" ")) {
			close(answered)
			<-measured
		}
	})
}

// writerFunc is an io.Writer that is a function.
type writerFunc func(p []byte)

func (f writerFunc) Write(p []byte) (int, error) { f(p); return len(p), nil }

// socketQueue is a client socket's receive queue (SIOCINQ) or the part of
// its send queue not sent yet (SIOCOUTQNSD), in bytes.
func socketQueue(t *testing.T, c *net.TCPConn, req uint) int {
	t.Helper()
	rc, err := c.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var n int
	rc.Control(func(fd uintptr) { n, err = unix.IoctlGetInt(int(fd), req) })
	if err != nil {
		t.Fatalf("ioctl: %v", err)
	}
	return n
}

// serverReceiveQueue is what the server's end of c has received and the
// server not yet read: rx_queue in /proc/net/tcp.
func serverReceiveQueue(t *testing.T, c *net.TCPConn) int {
	t.Helper()
	hexAddr := func(a *net.TCPAddr) string {
		ip := a.IP.To4()
		return fmt.Sprintf("%02X%02X%02X%02X:%04X", ip[3], ip[2], ip[1], ip[0], a.Port)
	}
	local, remote := hexAddr(c.RemoteAddr().(*net.TCPAddr)), hexAddr(c.LocalAddr().(*net.TCPAddr))
	b, err := os.ReadFile("/proc/net/tcp")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) > 4 && f[1] == local && f[2] == remote {
			_, rx, _ := strings.Cut(f[4], ":")
			n, err := strconv.ParseInt(rx, 16, 64)
			if err != nil {
				t.Fatalf("/proc/net/tcp: %q: %v", line, err)
			}
			return int(n)
		}
	}
	t.Fatalf("/proc/net/tcp has no socket %s -> %s", local, remote)
	return 0
}

// inlineEngine runs an engine that accepts inside its loop, as under the
// exclusive strategy (testEngine's connections are answered first on the
// accepting goroutine, a front), and returns its address. Its listener's
// receive buffer, which accepted connections inherit, is 64 MiB where the
// test may set it.
func inlineEngine(t *testing.T, root string, tune func(*Config)) (string, *shm.Record) {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	f, err := l.(*net.TCPListener).File()
	if err != nil {
		t.Fatal(err)
	}
	fd, err := dupFD(f)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	// Past net.core.rmem_max only with CAP_NET_ADMIN; the tests that need
	// it skip without.
	unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, 64<<20)
	in := &testInline{fd: fd}
	cfg := Config{Root: root, Inline: in, Nonblocking: true}
	if tune != nil {
		tune(&cfg)
	}
	_, st := runEngine(t, cfg)
	in.st.Store(st)
	return l.Addr().String(), st
}

// testInline is an Inline strategy with one listener, accepting one
// connection per readiness, as exclusive does without multi-accept.
type testInline struct {
	fd int
	st atomic.Pointer[shm.Record] // set once the engine runs, before the test dials
}

func (in *testInline) Attach(ep int, base int32) error {
	return unix.EpollCtl(ep, unix.EPOLL_CTL_ADD, in.fd, &unix.EpollEvent{Events: unix.EPOLLIN, Fd: base})
}

func (in *testInline) Ready(ep int, i int, deliver func(fd int)) error {
	fd, _, err := unix.Accept4(in.fd, unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC)
	if err == nil {
		in.st.Load().Inc(shm.Active)
		deliver(fd)
	}
	return nil
}

func (in *testInline) Detach(ep int, deliver func(fd int)) {
	unix.EpollCtl(ep, unix.EPOLL_CTL_DEL, in.fd, nil)
}
