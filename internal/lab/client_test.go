package lab

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

// The client frames an answer by Content-Length, by the chunked coding or
// by the connection's end, however the bytes are cut into reads.
func TestResponseFraming(t *testing.T) {
	for _, tc := range []struct {
		name   string
		raw    string
		status int
		length int64
		close  bool
	}{
		{"length", "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello", 200, 5, false},
		{"length zero", "HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n", 200, 0, false},
		{"connection close", "HTTP/1.1 404 Not Found\r\nContent-Length: 3\r\nConnection: close\r\n\r\nno!", 404, 3, true},
		{"chunked", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\nA;ext=1\r\n0123456789\r\n0\r\n\r\n", 200, 15, false},
		{"chunked trailer", "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n3\r\nabc\r\n0\r\nX-Sum: 1\r\n\r\n", 200, 3, false},
		{"no body", "HTTP/1.1 304 Not Modified\r\nContent-Length: 99\r\n\r\n", 304, 0, false},
		{"http/1.0", "HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok", 200, 2, true},
		{"http/1.0 keep-alive", "HTTP/1.0 200 OK\r\nConnection: Keep-Alive\r\nContent-Length: 2\r\n\r\nok", 200, 2, false},
		{"to eof", "HTTP/1.1 200 OK\r\nServer: x\r\n\r\nuntil the end", 200, 13, true},
	} {
		for _, step := range []int{len(tc.raw), 1, 7} {
			var r response
			done, err := false, error(nil)
			for i := 0; i < len(tc.raw) && !done && err == nil; i += step {
				done, err = r.feed([]byte(tc.raw[i:min(i+step, len(tc.raw))]), false)
			}
			if !done && err == nil {
				done, err = r.feed(nil, true)
			}
			if err != nil || !done || r.status != tc.status || r.bodyLen != tc.length || r.close != tc.close {
				t.Errorf("%s in reads of %d: done %v, err %v, status %d, %d body bytes, close %v; want %d, %d, %v",
					tc.name, step, done, err, r.status, r.bodyLen, r.close, tc.status, tc.length, tc.close)
			}
		}
	}
	for _, tc := range []struct {
		name string
		raw  string
		want error
	}{
		{"cut body", "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhel", io.ErrUnexpectedEOF},
		{"cut header", "HTTP/1.1 200 OK\r\nContent-Le", io.ErrUnexpectedEOF},
		{"nothing", "", io.EOF},
		{"not http", "SSH-2.0-OpenSSH\r\n\r\n", errMalformed},
		{"bad length", "HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n", errMalformed},
		{"bad chunk", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", errMalformed},
		{"cut chunk", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhe", io.ErrUnexpectedEOF},
	} {
		var r response
		_, err := r.feed([]byte(tc.raw), false)
		if err == nil {
			_, err = r.feed(nil, true)
		}
		if !errors.Is(err, tc.want) {
			t.Errorf("%s: %v, want %v", tc.name, err, tc.want)
		}
	}
	var r response
	if _, err := r.feed([]byte("HTTP/1.1 200 OK\r\nX: "+strings.Repeat("x", maxHead)), false); !errors.Is(err, errMalformed) {
		t.Errorf("endless header: %v", err)
	}
}

// Against a real server: a body sent in chunks (net/http chunks an answer
// flushed before its end), and one that ends with the connection.
func TestLoadFramesEveryBody(t *testing.T) {
	body := strings.Repeat("0123456789", 1000)
	ts := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, body[:4000])
		w.(http.Flusher).Flush()
		io.WriteString(w, body[4000:])
	}))
	t.Cleanup(ts.Close)
	addr := strings.TrimPrefix(ts.URL, "http://")
	for _, keep := range []bool{false, true} {
		res, err := Load{Addr: addr, Concurrency: 2, KeepAlive: keep, Requests: 20, WantLength: int64(len(body))}.Run(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		if res.Requests != 20 || res.Errors != 0 {
			t.Errorf("chunked, keepalive=%v: %d ok, %v", keep, res.Requests, res.ErrorKinds)
		}
	}

	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				http.ReadRequest(bufio.NewReader(c))
				io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\n"+body)
			}()
		}
	}()
	res, err := Load{Addr: l.Addr().String(), Concurrency: 2, KeepAlive: true, Requests: 10, WantLength: int64(len(body))}.Run(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if res.Requests != 10 || res.Errors != 0 || res.Connections != 10 {
		t.Errorf("to the connection's end: %d ok, %v, %d connections", res.Requests, res.ErrorKinds, res.Connections)
	}
}

// A request that gets no answer fails as a timeout after Load.Timeout, and
// the load goes on to the next.
func TestLoadTimeout(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		var held []net.Conn
		defer func() {
			for _, c := range held {
				c.Close()
			}
		}()
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			held = append(held, c)
		}
	}()
	start := time.Now()
	res, err := Load{Addr: l.Addr().String(), Requests: 2, Timeout: 150 * time.Millisecond, WantLength: -1}.Run(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if res.ErrorKinds["timeout"] != 2 || res.Requests != 0 {
		t.Errorf("silent server: %+v", res.ErrorKinds)
	}
	if d := time.Since(start); d < 300*time.Millisecond || d > 3*time.Second {
		t.Errorf("two requests of 150ms timed out in %v", d)
	}
}

// The client loads IPv6 loopback too, and says what it cost itself.
func TestLoadIPv6AndClientCPU(t *testing.T) {
	l, err := net.Listen("tcp", "[::1]:0")
	if err != nil {
		t.Skip("no IPv6 loopback:", err)
	}
	ts := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, helloBody)
	}))
	ts.Listener.Close()
	ts.Listener = l
	ts.Start()
	t.Cleanup(ts.Close)
	res, err := Load{Addr: l.Addr().String(), Concurrency: 2, Requests: 200, WantLength: int64(len(helloBody))}.Run(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if res.Requests != 200 || res.Errors != 0 {
		t.Errorf("::1: %d ok, %v", res.Requests, res.ErrorKinds)
	}
	if res.ClientCPU <= 0 || res.ClientCPU > res.Elapsed {
		t.Errorf("client CPU %v for a load of %v", res.ClientCPU, res.Elapsed)
	}
}

// Whatever a server sends, and however the reads cut it, the parser
// neither panics nor keeps more than maxHead of a header, and an answer it
// completes is the same whole or cut byte by byte.
func FuzzResponse(f *testing.F) {
	f.Add([]byte("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"), uint8(3))
	f.Add([]byte("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;x\r\nhello\r\n0\r\nA: b\r\n\r\n"), uint8(1))
	f.Add([]byte("HTTP/1.0 204 No Content\r\n\r\n"), uint8(7))
	// A header whose end starts just inside, and just past, maxHead.
	for _, n := range []int{maxHead - 3, maxHead - 2, maxHead - 1, maxHead} {
		f.Add([]byte("HTTP/1.1 200 OK\r\nX: "+strings.Repeat("x", n-len("HTTP/1.1 200 OK\r\nX: "))+"\r\n\r\n"), uint8(5))
	}
	f.Fuzz(func(t *testing.T, raw []byte, step uint8) {
		whole := func(step int) (bool, response, error) {
			var r response
			for i := 0; i < len(raw); i += step {
				done, err := r.feed(raw[i:min(i+step, len(raw))], false)
				if len(r.head) > maxHead+3+step {
					t.Fatalf("kept %d bytes of header", len(r.head))
				}
				if done || err != nil {
					return done, r, err
				}
			}
			done, err := r.feed(nil, true)
			return done, r, err
		}
		d1, r1, e1 := whole(len(raw) + 1)
		d2, r2, e2 := whole(int(step%16) + 1)
		if d1 != d2 || (e1 == nil) != (e2 == nil) || (d1 && (r1.status != r2.status || r1.bodyLen != r2.bodyLen || r1.close != r2.close)) {
			t.Fatalf("whole: %v %v %d %d; in reads of %d: %v %v %d %d", d1, e1, r1.status, r1.bodyLen, step%16+1, d2, e2, r2.status, r2.bodyLen)
		}
	})
}
