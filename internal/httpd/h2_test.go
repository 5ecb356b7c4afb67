//go:build linux

package httpd

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/herd-run/herd/internal/shm"
	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// h2Engine runs a TLS engine that offers HTTP/2.
func h2Engine(t *testing.T, root string, tune func(*Config)) (string, *shm.Record) {
	t.Helper()
	return tlsEngine(t, root, func(c *Config) {
		c.TLS.NextProtos = []string{"h2", "http/1.1"}
		if tune != nil {
			tune(c)
		}
	})
}

func h2Client() *http.Client {
	return &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{ForceAttemptHTTP2: true,
		TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}}
}

// Go's HTTP/2 client gets what an HTTP/1.1 client gets: files byte-exact
// (a body larger than the client's first windows), ranges, 304, 404, HEAD
// without a body, the precompressed sibling — many streams at once on one
// connection.
func TestH2Answers(t *testing.T) {
	root, bigFile := siteRoot(t)
	addr, st := h2Engine(t, root, nil)
	client := h2Client()
	type check struct {
		method, path string
		header       map[string]string
		status       int
		body         []byte
		hdr          map[string]string
	}
	checks := []check{
		{"GET", "/hello.txt", nil, 200, []byte("Hello, world\n"), map[string]string{"Content-Type": "text/plain; charset=utf-8", "Content-Length": "13"}},
		{"GET", "/big.bin", nil, 200, bigFile, nil},
		{"GET", "/big.bin", map[string]string{"Range": "bytes=10-19"}, 206, bigFile[10:20], map[string]string{"Content-Range": fmt.Sprintf("bytes 10-19/%d", len(bigFile))}},
		{"GET", "/missing", nil, 404, nil, nil},
		{"HEAD", "/hello.txt", nil, 200, []byte{}, map[string]string{"Content-Length": "13"}},
		{"GET", "/docs", nil, 301, nil, map[string]string{"Location": "/docs/"}},
		{"POST", "/hello.txt", nil, 405, nil, map[string]string{"Allow": "GET, HEAD"}},
		{"GET", "/app.js", map[string]string{"Accept-Encoding": "gzip"}, 200, nil, map[string]string{"Content-Encoding": "gzip"}},
	}
	var wg sync.WaitGroup
	for round := 0; round < 4; round++ {
		for _, ck := range checks {
			wg.Add(1)
			go func() {
				defer wg.Done()
				req, _ := http.NewRequest(ck.method, "https://"+addr+ck.path, nil)
				for k, v := range ck.header {
					req.Header.Set(k, v)
				}
				tr := client.Transport.(*http.Transport)
				resp, err := (&http.Client{Transport: tr, Timeout: 10 * time.Second,
					CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}).Do(req)
				if err != nil {
					t.Errorf("%s %s: %v", ck.method, ck.path, err)
					return
				}
				defer resp.Body.Close()
				b, err := io.ReadAll(resp.Body)
				if err != nil || resp.Proto != "HTTP/2.0" || resp.StatusCode != ck.status || (ck.body != nil && !bytes.Equal(b, ck.body)) {
					t.Errorf("%s %s: %s %d, %d bytes, %v; want HTTP/2.0 %d, %d bytes", ck.method, ck.path, resp.Proto, resp.StatusCode, len(b), err, ck.status, len(ck.body))
				}
				for k, v := range ck.hdr {
					if got := resp.Header.Get(k); got != v {
						t.Errorf("%s %s: %s: %q, want %q", ck.method, ck.path, k, got, v)
					}
				}
				if resp.Header.Get("Connection") != "" {
					t.Errorf("%s %s: a Connection field in HTTP/2", ck.method, ck.path)
				}
			}()
		}
		wg.Wait()
	}
	// Conditional: the ETag it sent makes a 304.
	resp, err := client.Get("https://" + addr + "/hello.txt")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	req, _ := http.NewRequest("GET", "https://"+addr+"/hello.txt", nil)
	req.Header.Set("If-None-Match", resp.Header.Get("ETag"))
	resp, err = client.Do(req)
	if err != nil || resp.StatusCode != 304 {
		t.Errorf("conditional GET: %v %v", resp, err)
	} else {
		resp.Body.Close()
	}
	client.CloseIdleConnections()
	waitIdle(t, st)
}

// h2Raw is a client speaking frames, to hold the server to the protocol's
// rules where an ordinary client would hide them.
type h2Raw struct {
	t   *testing.T
	c   *tls.Conn
	fr  *http2.Framer
	enc *hpack.Encoder
	buf bytes.Buffer
}

func dialH2(t *testing.T, addr string, settings ...http2.Setting) *h2Raw {
	t.Helper()
	c := dialTLS(t, addr, "h2")
	if p := c.ConnectionState().NegotiatedProtocol; p != "h2" {
		t.Fatalf("ALPN gave %q", p)
	}
	return startH2Raw(t, c, settings...)
}

// startH2Raw begins HTTP/2 on c, a TLS connection that negotiated it:
// the client's preface and SETTINGS.
func startH2Raw(t *testing.T, c *tls.Conn, settings ...http2.Setting) *h2Raw {
	r := &h2Raw{t: t, c: c, fr: http2.NewFramer(c, c)}
	r.fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	r.fr.AllowIllegalWrites = true // the point of some tests
	r.enc = hpack.NewEncoder(&r.buf)
	io.WriteString(c, http2.ClientPreface)
	r.fr.WriteSettings(settings...)
	return r
}

func (r *h2Raw) get(id uint32, path string, extra ...hpack.HeaderField) {
	r.buf.Reset()
	for _, f := range append([]hpack.HeaderField{{Name: ":method", Value: "GET"}, {Name: ":scheme", Value: "https"},
		{Name: ":authority", Value: "x"}, {Name: ":path", Value: path}}, extra...) {
		r.enc.WriteField(f)
	}
	r.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: r.buf.Bytes(), EndStream: true, EndHeaders: true})
}

// next reads frames until one for which keep returns true.
func (r *h2Raw) next(keep func(http2.Frame) bool) http2.Frame {
	r.t.Helper()
	for {
		f, err := r.fr.ReadFrame()
		if err != nil {
			r.t.Fatalf("reading frames: %v", err)
		}
		if sf, ok := f.(*http2.SettingsFrame); ok && !sf.IsAck() {
			r.fr.WriteSettingsAck()
		}
		if keep(f) {
			return f
		}
	}
}

// The server sends no more DATA than the client's windows allow, and goes
// on when they open; it answers PING, refuses a malformed request with
// RST_STREAM, and leaves other streams alone.
func TestH2FlowControlAndFrames(t *testing.T) {
	root, bigFile := siteRoot(t)
	addr, _ := h2Engine(t, root, nil)
	r := dialH2(t, addr, http2.Setting{ID: http2.SettingInitialWindowSize, Val: 1000})
	r.get(1, "/big.bin")
	got := 0
	r.next(func(f http2.Frame) bool { _, ok := f.(*http2.MetaHeadersFrame); return ok })
	for got < 1000 {
		d := r.next(func(f http2.Frame) bool { _, ok := f.(*http2.DataFrame); return ok }).(*http2.DataFrame)
		got += len(d.Data())
	}
	if got != 1000 {
		t.Fatalf("received %d bytes of DATA within a 1000-byte window", got)
	}
	// Nothing more while the window is shut: a PING's answer comes, no DATA before it.
	r.fr.WritePing(false, [8]byte{1, 2, 3, 4, 5, 6, 7, 8})
	f := r.next(func(f http2.Frame) bool {
		if _, ok := f.(*http2.DataFrame); ok {
			t.Fatal("DATA beyond the stream's window")
		}
		_, ok := f.(*http2.PingFrame)
		return ok
	})
	if p := f.(*http2.PingFrame); !p.IsAck() || p.Data != [8]byte{1, 2, 3, 4, 5, 6, 7, 8} {
		t.Errorf("PING answered with %v", p)
	}
	// A malformed request (an upper-case field name) is refused alone.
	r.get(3, "/hello.txt", hpack.HeaderField{Name: "X-Upper", Value: "1"})
	rst := r.next(func(f http2.Frame) bool { _, ok := f.(*http2.RSTStreamFrame); return ok }).(*http2.RSTStreamFrame)
	if rst.StreamID != 3 || rst.ErrCode != http2.ErrCodeProtocol {
		t.Errorf("malformed request: RST_STREAM %d %v", rst.StreamID, rst.ErrCode)
	}
	// Open the windows: the rest of the body arrives, byte-exact.
	body := bytes.Clone(bigFile[:0])
	r.fr.WriteWindowUpdate(0, 1<<30)
	r.fr.WriteWindowUpdate(1, 1<<30)
	r.fr.WriteSettings(http2.Setting{ID: http2.SettingInitialWindowSize, Val: 1 << 30})
	for got < len(bigFile) {
		d := r.next(func(f http2.Frame) bool { _, ok := f.(*http2.DataFrame); return ok }).(*http2.DataFrame)
		body = append(body, d.Data()...)
		got += len(d.Data())
		if d.StreamEnded() != (got == len(bigFile)) {
			t.Fatalf("END_STREAM at %d of %d bytes", got, len(bigFile))
		}
	}
	if !bytes.Equal(body, bigFile[1000:]) {
		t.Error("the body after the window opened is not the file's")
	}
}

// A drain sends GOAWAY naming the last stream, answers that stream, and
// closes the connection once it is answered.
func TestH2DrainSendsGoAway(t *testing.T) {
	root, _ := siteRoot(t)
	cert := testCert(t)
	eng, st := runEngine(t, Config{Root: root, TLS: &tls.Config{Certificates: []tls.Certificate{cert}, NextProtos: []string{"h2"}}})
	server, client := acceptedSock(t)
	st.Inc(shm.Active)
	eng.Add(server)
	tc := tls.Client(client, &tls.Config{InsecureSkipVerify: true, NextProtos: []string{"h2"}})
	tc.SetDeadline(time.Now().Add(5 * time.Second))
	if err := tc.Handshake(); err != nil {
		t.Fatal(err)
	}
	r := startH2Raw(t, tc)
	r.get(1, "/hello.txt")
	r.next(func(f http2.Frame) bool { d, ok := f.(*http2.DataFrame); return ok && d.StreamEnded() })
	eng.Drain()
	ga := r.next(func(f http2.Frame) bool { _, ok := f.(*http2.GoAwayFrame); return ok }).(*http2.GoAwayFrame)
	if ga.LastStreamID != 1 || ga.ErrCode != http2.ErrCodeNo {
		t.Errorf("GOAWAY last stream %d, code %v", ga.LastStreamID, ga.ErrCode)
	}
	if _, err := r.fr.ReadFrame(); err == nil {
		t.Error("the connection stayed open after GOAWAY with nothing left to answer")
	}
	select {
	case <-eng.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("the drained engine did not end")
	}
}

// Each stream has its own access log line, with the bytes of its body.
func TestH2AccessLog(t *testing.T) {
	root, bigFile := siteRoot(t)
	logFile, err := os.Create(filepath.Join(t.TempDir(), "access.log"))
	if err != nil {
		t.Fatal(err)
	}
	defer logFile.Close()
	addr, st := h2Engine(t, root, func(c *Config) { c.AccessLog = logFile })
	client := h2Client()
	for _, p := range []string{"/hello.txt", "/big.bin", "/missing"} {
		resp, err := client.Get("https://" + addr + p)
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
	}
	client.CloseIdleConnections()
	waitIdle(t, st)
	b, _ := os.ReadFile(logFile.Name())
	for _, want := range []string{`"GET /hello.txt HTTP/2.0" 200 13`, fmt.Sprintf(`"GET /big.bin HTTP/2.0" 200 %d`, len(bigFile)), `"GET /missing HTTP/2.0" 404 `} {
		if !regexp.MustCompile(regexp.QuoteMeta(want)).Match(b) {
			t.Errorf("no %s in the access log:\n%s", want, b)
		}
	}
	if n := strings.Count(string(b), "\n"); n != 3 {
		t.Errorf("%d log lines, want 3", n)
	}
}

// What a hostile client sends is bounded: a header list that decodes to
// more than a head may hold (a small block naming a large table entry
// again and again) is answered 431 on its stream, and a header block that
// grows without end through CONTINUATION frames ends the connection with
// ENHANCE_YOUR_CALM.
func TestH2Limits(t *testing.T) {
	root, _ := siteRoot(t)
	addr, st := h2Engine(t, root, nil)
	r := dialH2(t, addr)
	big := hpack.HeaderField{Name: "x-big", Value: strings.Repeat("a", 3000)}
	r.buf.Reset()
	for _, f := range []hpack.HeaderField{{Name: ":method", Value: "GET"}, {Name: ":scheme", Value: "https"},
		{Name: ":authority", Value: "x"}, {Name: ":path", Value: "/hello.txt"}, big} {
		r.enc.WriteField(f)
	}
	for range 20 { // indexed: a byte or two each, 3 KB each decoded
		r.enc.WriteField(big)
	}
	if r.buf.Len() > 4000 {
		t.Fatalf("the block is %d bytes; the test wants it small", r.buf.Len())
	}
	r.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: r.buf.Bytes(), EndStream: true, EndHeaders: true})
	h := r.next(func(f http2.Frame) bool { _, ok := f.(*http2.MetaHeadersFrame); return ok }).(*http2.MetaHeadersFrame)
	if s := h.PseudoValue("status"); s != "431" {
		t.Errorf("a header list of 60 KB decoded: status %s, want 431", s)
	}
	r.get(3, "/hello.txt") // the connection serves on
	h = r.next(func(f http2.Frame) bool { _, ok := f.(*http2.MetaHeadersFrame); return ok }).(*http2.MetaHeadersFrame)
	if s := h.PseudoValue("status"); h.StreamID != 3 || s != "200" {
		t.Errorf("after the 431: stream %d status %s", h.StreamID, s)
	}

	r.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 5, BlockFragment: []byte{0x82}, EndStream: true})
	chunk := bytes.Repeat([]byte{0}, 4096)
	for range 8 {
		if err := r.fr.WriteContinuation(5, false, chunk); err != nil {
			break // the server has closed
		}
	}
	ga := r.next(func(f http2.Frame) bool { _, ok := f.(*http2.GoAwayFrame); return ok }).(*http2.GoAwayFrame)
	if ga.ErrCode != http2.ErrCodeEnhanceYourCalm {
		t.Errorf("endless CONTINUATION: GOAWAY %v", ga.ErrCode)
	}
	r.c.Close() // the server lingers until the client lets go
	waitIdle(t, st)
}

// A header block of a few kilobytes can name one large table entry
// thousands of times; decoding keeps no more than a head may hold.
func TestH2HeaderListBounded(t *testing.T) {
	c := &conn{}
	(&Engine{}).startH2(c)
	h := c.h2
	var buf bytes.Buffer
	enc := hpack.NewEncoder(&buf)
	big := hpack.HeaderField{Name: "x-big", Value: strings.Repeat("a", 4000)}
	for range 5000 {
		enc.WriteField(big)
	}
	h.block = buf.Bytes()
	if err := h.decode(); err != nil {
		t.Fatal(err)
	}
	if !h.tooLarge || len(h.fields) > MaxHeaders || h.listSize > MaxHeaderBytes+5000 {
		t.Errorf("decoded %d fields, %d bytes, tooLarge=%v from a %d-byte block", len(h.fields), h.listSize, h.tooLarge, len(h.block))
	}
	// The next block decodes against the same table.
	buf.Reset()
	enc.WriteField(hpack.HeaderField{Name: ":path", Value: "/"})
	h.block = buf.Bytes()
	if err := h.decode(); err != nil || h.tooLarge || len(h.fields) != 1 {
		t.Errorf("the next block: %v, %d fields, tooLarge=%v", err, len(h.fields), h.tooLarge)
	}
}

// An HTTP/2 request becomes the HTTP/1.1 head it stands for, and nothing
// a client sends can add a line to it or smuggle a field HTTP/2 forbids.
func TestH2Head(t *testing.T) {
	req := func(extra ...hpack.HeaderField) []hpack.HeaderField {
		return append([]hpack.HeaderField{{Name: ":method", Value: "GET"}, {Name: ":scheme", Value: "https"},
			{Name: ":authority", Value: "example.com"}, {Name: ":path", Value: "/a?b"}}, extra...)
	}
	for _, tc := range []struct {
		name   string
		fields []hpack.HeaderField
		want   string // "" = malformed
	}{
		{"plain", req(hpack.HeaderField{Name: "range", Value: "bytes=0-1"}),
			"GET /a?b HTTP/1.1\r\nhost: example.com\r\nrange: bytes=0-1\r\n\r\n"},
		{"host beside :authority", req(hpack.HeaderField{Name: "host", Value: "h"}), "GET /a?b HTTP/1.1\r\nhost: h\r\n\r\n"},
		{"te: trailers", req(hpack.HeaderField{Name: "te", Value: "trailers"}), "GET /a?b HTTP/1.1\r\nhost: example.com\r\nte: trailers\r\n\r\n"},
		{"CRLF in a value", req(hpack.HeaderField{Name: "x", Value: "1\r\nrange: bytes=0-0"}), ""},
		{"LF in the path", []hpack.HeaderField{{Name: ":method", Value: "GET"}, {Name: ":path", Value: "/\nx: y"}}, ""},
		{"NUL in a value", req(hpack.HeaderField{Name: "x", Value: "a\x00"}), ""},
		{"upper-case name", req(hpack.HeaderField{Name: "Range", Value: "bytes=0-1"}), ""},
		{"connection-specific", req(hpack.HeaderField{Name: "connection", Value: "close"}), ""},
		{"transfer-encoding", req(hpack.HeaderField{Name: "transfer-encoding", Value: "chunked"}), ""},
		{"te other than trailers", req(hpack.HeaderField{Name: "te", Value: "gzip"}), ""},
		{"pseudo after a field", append(req(hpack.HeaderField{Name: "x", Value: "1"}), hpack.HeaderField{Name: ":path", Value: "/"}), ""},
		{"two paths", req(hpack.HeaderField{Name: ":path", Value: "/b"}), ""},
		{"unknown pseudo", req(hpack.HeaderField{Name: ":protocol", Value: "x"}), ""},
		{"no path", []hpack.HeaderField{{Name: ":method", Value: "GET"}}, ""},
		{"no scheme", []hpack.HeaderField{{Name: ":method", Value: "GET"}, {Name: ":path", Value: "/"}}, ""},
		{"two schemes", req(hpack.HeaderField{Name: ":scheme", Value: "http"}), ""},
	} {
		got, ok := h2Head(nil, tc.fields)
		if (tc.want == "") == ok || (ok && string(got) != tc.want) {
			t.Errorf("%s: %q ok=%v, want %q", tc.name, got, ok, tc.want)
		}
	}
}

// At most 128 streams are open at once: the 129th is refused alone.
func TestH2StreamLimit(t *testing.T) {
	root, _ := siteRoot(t)
	addr, _ := h2Engine(t, root, nil)
	r := dialH2(t, addr, http2.Setting{ID: http2.SettingInitialWindowSize, Val: 0}) // every answer waits
	for i := range uint32(129) {
		r.get(2*i+1, "/big.bin")
	}
	rst := r.next(func(f http2.Frame) bool { _, ok := f.(*http2.RSTStreamFrame); return ok }).(*http2.RSTStreamFrame)
	if rst.StreamID != 257 || rst.ErrCode != http2.ErrCodeRefusedStream {
		t.Errorf("RST_STREAM %d %v, want 257 REFUSED_STREAM", rst.StreamID, rst.ErrCode)
	}
}

// Stream states and malformed messages (RFC 9113 5.1, 8.1.1), each on a
// connection of its own: the errors h2spec checks, held here too.
func TestH2ProtocolErrors(t *testing.T) {
	root, _ := siteRoot(t)
	addr, _ := h2Engine(t, root, nil)
	post := func(r *h2Raw, id uint32, length string) {
		r.buf.Reset()
		for _, f := range []hpack.HeaderField{{Name: ":method", Value: "POST"}, {Name: ":scheme", Value: "https"},
			{Name: ":authority", Value: "x"}, {Name: ":path", Value: "/hello.txt"}, {Name: "content-length", Value: length}} {
			r.enc.WriteField(f)
		}
		r.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: r.buf.Bytes(), EndHeaders: true})
	}
	for _, tc := range []struct {
		name   string
		send   func(r *h2Raw)
		goAway http2.ErrCode // a connection error, or
		rst    http2.ErrCode // a stream error on stream 1
	}{
		{"DATA on an idle stream", func(r *h2Raw) { r.fr.WriteData(1, true, []byte("x")) }, http2.ErrCodeProtocol, 0},
		{"RST_STREAM on an idle stream", func(r *h2Raw) { r.fr.WriteRSTStream(1, http2.ErrCodeCancel) }, http2.ErrCodeProtocol, 0},
		{"WINDOW_UPDATE on an idle stream", func(r *h2Raw) { r.fr.WriteWindowUpdate(1, 1) }, http2.ErrCodeProtocol, 0},
		{"SETTINGS_ENABLE_PUSH 2", func(r *h2Raw) { r.fr.WriteSettings(http2.Setting{ID: http2.SettingEnablePush, Val: 2}) }, http2.ErrCodeProtocol, 0},
		{"DATA after END_STREAM", func(r *h2Raw) { r.get(1, "/hello.txt"); r.fr.WriteData(1, true, []byte("x")) }, http2.ErrCodeStreamClosed, 0},
		{"a body longer than its content-length", func(r *h2Raw) { post(r, 1, "1"); r.fr.WriteData(1, true, []byte("xy")) }, 0, http2.ErrCodeProtocol},
		{"a body shorter than its content-length", func(r *h2Raw) { post(r, 1, "3"); r.fr.WriteData(1, true, []byte("xy")) }, 0, http2.ErrCodeProtocol},
		{"a stream that depends on itself", func(r *h2Raw) {
			r.fr.WritePriority(1, http2.PriorityParam{StreamDep: 1})
		}, 0, http2.ErrCodeProtocol},
		{"WINDOW_UPDATE of 0 on a stream", func(r *h2Raw) { post(r, 1, "0"); r.fr.WriteWindowUpdate(1, 0) }, 0, http2.ErrCodeProtocol},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := dialH2(t, addr)
			tc.send(r)
			f := r.next(func(f http2.Frame) bool {
				switch f := f.(type) {
				case *http2.GoAwayFrame:
					return true
				case *http2.RSTStreamFrame:
					return f.StreamID == 1
				}
				return false
			})
			switch f := f.(type) {
			case *http2.GoAwayFrame:
				if f.ErrCode != tc.goAway || tc.goAway == 0 {
					t.Errorf("%s: GOAWAY %v, want %v", tc.name, f.ErrCode, map[bool]any{true: "RST_STREAM " + tc.rst.String(), false: tc.goAway}[tc.goAway == 0])
				}
			case *http2.RSTStreamFrame:
				if f.ErrCode != tc.rst || tc.rst == 0 {
					t.Errorf("%s: RST_STREAM %v, want GOAWAY %v", tc.name, f.ErrCode, tc.goAway)
				}
			}
		})
	}
}

// Streams a client opens and never ends count against the limit: past
// 128 they are refused, and a client that goes on opening them is cut
// off, so what the connection remembers of them stays bounded.
func TestH2UnendedStreamsBounded(t *testing.T) {
	root, _ := siteRoot(t)
	addr, st := h2Engine(t, root, nil)
	r := dialH2(t, addr)
	var refused bool
	for i := range uint32(400) {
		r.buf.Reset()
		for _, f := range []hpack.HeaderField{{Name: ":method", Value: "POST"}, {Name: ":scheme", Value: "https"},
			{Name: ":authority", Value: "x"}, {Name: ":path", Value: "/hello.txt"}} {
			r.enc.WriteField(f)
		}
		if r.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 2*i + 1, BlockFragment: r.buf.Bytes(), EndHeaders: true}) != nil {
			break // cut off
		}
	}
	for {
		f, err := r.fr.ReadFrame()
		if err != nil {
			t.Fatalf("the connection ended without GOAWAY ENHANCE_YOUR_CALM: %v (refused some: %v)", err, refused)
		}
		if rst, ok := f.(*http2.RSTStreamFrame); ok && rst.ErrCode == http2.ErrCodeRefusedStream {
			refused = true
		}
		if ga, ok := f.(*http2.GoAwayFrame); ok {
			if ga.ErrCode != http2.ErrCodeEnhanceYourCalm || !refused {
				t.Errorf("GOAWAY %v after refusing: %v", ga.ErrCode, refused)
			}
			break
		}
	}
	r.c.Close() // the server lingers until the client lets go
	waitIdle(t, st)
}

// A client that opens and resets streams as fast as it can ("rapid reset",
// CVE-2023-44487) never has more than h2Streams open, but each stream it
// opens is answered: the loop opens at most h2TurnStreams of one
// connection's streams in a turn, and the rest wait in the buffer for the
// next. Here the HEADERS and RST_STREAM frames come packed in full TLS
// records, so the records' own charge (TestSmallTLSRecordsTakeTheirShare)
// does not bound them: before, a turn answered some 1,900 of them, and a
// victim on the loop waited 2 ms at the median (scratch flooder; nginx
// 0.5 ms, 0.6 ms now). Measured like the floods in edge_test.go: how many
// of the flood's requests were answered when the victim's was.
func TestH2RapidResetTakesItsTurn(t *testing.T) {
	const limit = 600 // requests, against h2TurnStreams (256) a turn
	rig := newTLSFloodRig(t, "h2", "http/1.1")
	conn, sock := bigConn(t, rig.addr, &tls.Config{InsecureSkipVerify: true, NextProtos: []string{"h2"}})
	go io.Copy(io.Discard, conn)                // the flood's answers
	packed := bufio.NewWriterSize(conn, 16<<10) // full records
	fr := http2.NewFramer(packed, nil)
	var block bytes.Buffer
	enc := hpack.NewEncoder(&block)
	request := func(id uint32, path string) {
		block.Reset()
		for _, f := range []hpack.HeaderField{{Name: ":method", Value: "GET"}, {Name: ":scheme", Value: "https"},
			{Name: ":authority", Value: "x"}, {Name: ":path", Value: path}} {
			enc.WriteField(f)
		}
		fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: block.Bytes(), EndStream: true, EndHeaders: true})
	}
	io.WriteString(packed, http2.ClientPreface)
	fr.WriteSettings()
	request(1, "/hello.txt?first")
	packed.Flush()
	await(t, rig.entered, "the answer to the flood's first request")
	const streams = 20000
	for id := uint32(3); id < 3+2*streams; id += 2 {
		request(id, "/hello.txt?f")
		fr.WriteRSTStream(id, http2.ErrCodeCancel)
	}
	if err := packed.Flush(); err != nil {
		t.Fatal(err)
	}
	waitQueued(t, sock)
	n := rig.victimAsks()
	t.Logf("the loop had answered %d of the flood's %d streams when it answered the victim", n, streams)
	if n > limit {
		t.Errorf("the loop answered %d streams of one connection before it answered another (limit %d): one client held the loop", n, limit)
	}
}
