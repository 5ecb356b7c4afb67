package httpd

// The engine's rules as pure functions, in table tests and fuzz targets:
// ranges and validators (RFC 9110), the request head's protocol details
// and chunked bodies (RFC 9112). edge_test.go tries the same over a socket.

import (
	"net/http"
	"strings"
	"testing"
	"time"
)

// byteRange and notModified as pure functions, as net/http tests
// parseRange: the status for every shape of Range, and the validators.
func TestByteRange(t *testing.T) {
	for _, tc := range []struct {
		spec       string
		size       int64
		start, end int64
		status     int
	}{
		{"bytes=0-4", 13, 0, 5, 206},
		{"BYTES=0-4", 13, 0, 5, 206},
		{"Bytes = 0-4", 13, 0, 5, 206},
		{"bytes=7-", 13, 7, 13, 206},
		{"bytes=-6", 13, 7, 13, 206},
		{"bytes=-100", 13, 0, 13, 206},
		{"bytes=5-100", 13, 5, 13, 206},
		{"bytes= 0-4 ", 13, 0, 5, 206},
		{"bytes=0-4,", 13, 0, 5, 206},
		{"bytes=0-4, 20-30", 13, 0, 5, 206},
		{"bytes=0-0", 1, 0, 1, 206},
		{"bytes=13-", 13, 0, 0, 416},
		{"bytes=-0", 13, 0, 0, 416},
		{"bytes=20-30, 40-", 13, 0, 0, 416},
		{"bytes=abc-", 13, 0, 0, 416},
		{"bytes=-abc", 13, 0, 0, 416},
		{"bytes=1-abc", 13, 0, 0, 416},
		{"bytes=+1-2", 13, 0, 0, 416},
		{"bytes=5-3", 13, 0, 0, 416},
		{"bytes=", 13, 0, 0, 416},
		{"bytes=,", 13, 0, 0, 416},
		{"bytes=1", 13, 0, 0, 416},
		{"bytes=0-1, x", 13, 0, 0, 416},
		{"bytes=99999999999999999999-", 13, 0, 0, 416},
		{"bytes=0-1,3-4", 13, 0, 13, 200},
		{"items=0-4", 13, 0, 13, 200},
		{"bytes0-4", 13, 0, 13, 200},
		{"bytes=-1", 0, 0, 0, 200},
		{"bytes=0-", 0, 0, 0, 200},
		{"bytes=-0", 0, 0, 0, 200},
		{"bytes=1-", 0, 0, 0, 416},
	} {
		start, end, status := byteRange([]byte(tc.spec), tc.size)
		if status != tc.status || (status != 416 && (start != tc.start || end != tc.end)) {
			t.Errorf("byteRange(%q, %d) = [%d,%d) %d; want [%d,%d) %d", tc.spec, tc.size, start, end, status,
				tc.start, tc.end, tc.status)
		}
	}
}

// fieldValue is a header field's value as the parser leaves it: nil when the
// request has none ("" here).
func fieldValue(v string) []byte {
	if v == "" {
		return nil
	}
	return []byte(v)
}

func TestNotModifiedAndIfRange(t *testing.T) {
	mtime := time.Date(2026, 11, 1, 10, 0, 0, 500, time.UTC)
	etag, lastMod := `"abc-d"`, mtime.Format(http.TimeFormat)
	for _, tc := range []struct {
		inm, ims string
		want     bool
	}{
		{`"abc-d"`, "", true},
		{`W/"abc-d"`, "", true},
		{`"x", "abc-d"`, "", true},
		{`*`, "", true},
		{` * `, "", true},
		{`W/"x", *`, "", false}, // "*" is valid only alone (RFC 9110 13.1.2)
		{`"x"`, "", false},
		{`"x"`, lastMod, false}, // If-None-Match wins over If-Modified-Since
		{"", lastMod, true},
		{"", mtime.Add(time.Hour).Format(http.TimeFormat), true},
		{"", mtime.Add(-time.Hour).Format(http.TimeFormat), false},
		{"", "yesterday", false},
	} {
		if got := notModified(fieldValue(tc.inm), fieldValue(tc.ims), etag, mtime); got != tc.want {
			t.Errorf("notModified(%q, %q) = %v", tc.inm, tc.ims, got)
		}
	}
	for _, tc := range []struct {
		ifMatch, iums string
		failed        bool
	}{
		{"", "", false},
		{`"abc-d"`, "", false},
		{` "x" , "abc-d" `, "", false},
		{`*`, "", false},
		{` * `, "", false},
		{`"x"`, "", true},
		{`W/"abc-d"`, "", true}, // If-Match compares strongly (RFC 9110 13.1.1)
		{`"abc-d"`, "Mon, 01 Jan 2001 00:00:00 GMT", false}, // If-Match wins over If-Unmodified-Since
		{"", lastMod, false},
		{"", mtime.Add(time.Hour).Format(http.TimeFormat), false},
		{"", mtime.Add(-time.Hour).Format(http.TimeFormat), true},
		{"", "yesterday", false}, // not a date: ignored (RFC 9110 13.1.4)
	} {
		if got := preconditionFailed(fieldValue(tc.ifMatch), fieldValue(tc.iums), etag, mtime); got != tc.failed {
			t.Errorf("preconditionFailed(%q, %q) = %v", tc.ifMatch, tc.iums, got)
		}
	}
	for _, tc := range []struct {
		ifRange string
		want    bool
	}{{etag, true}, {lastMod, true}, {`W/"abc-d"`, false}, {`"stale"`, false}, {"Mon, 01 Jan 2001 00:00:00 GMT", false}} {
		if got := ifRangeHolds([]byte(tc.ifRange), etag, lastMod); got != tc.want {
			t.Errorf("ifRangeHolds(%q) = %v", tc.ifRange, got)
		}
	}
	if !ifRangeHolds(nil, etag, lastMod) {
		t.Error("no If-Range: a Range must apply")
	}
}

// FuzzRange: byteRange never panics and never answers a range outside
// the file; whatever it answers 206 is a non-empty part of it.
//
//	go test ./internal/httpd -run '^$' -fuzz FuzzRange -fuzztime 1m
func FuzzRange(f *testing.F) {
	for _, s := range []string{"bytes=0-4", "bytes=-0", "bytes=5-", "BYTES=1-2,3-4", "bytes=-1", "bytes=abc-"} {
		f.Add([]byte(s), int64(13))
	}
	f.Fuzz(func(t *testing.T, spec []byte, size int64) {
		if size < 0 {
			size = -size
		}
		start, end, status := byteRange(spec, size)
		switch status {
		case 206:
			if start < 0 || start >= end || end > size {
				t.Fatalf("byteRange(%q, %d) = [%d,%d) 206", spec, size, start, end)
			}
		case 200:
			if start != 0 || end != size {
				t.Fatalf("byteRange(%q, %d) = [%d,%d) 200, not the whole", spec, size, start, end)
			}
		case 416:
		default:
			t.Fatalf("status %d", status)
		}
		notModified(spec, spec, `"a"`, time.Unix(size, 0))
		preconditionFailed(spec, spec, `"a"`, time.Unix(size, 0))
	})
}

// The parser's answers to the protocol details of RFC 9112 and 9110 that
// a client may rely on.
func TestParseProtocolDetails(t *testing.T) {
	for _, tc := range []struct {
		name, in string
		status   int // 0: accepted
		target   string
		keep     bool
	}{
		{"bare LF", "GET /a HTTP/1.1\nHost: x\n\n", 0, "/a", true},
		{"mixed endings", "GET /a HTTP/1.1\r\nHost: x\n\r\n", 0, "/a", true},
		{"empty lines first", "\r\n\r\n\nGET /a HTTP/1.1\r\nHost: x\r\n\r\n", 0, "/a", true},
		{"HTTP/1.2 is 1.1", "GET /a HTTP/1.2\r\nHost: x\r\n\r\n", 0, "/a", true},
		{"HTTP/1.2 needs Host", "GET /a HTTP/1.2\r\n\r\n", 400, "", false},
		{"HTTP/2.0", "GET /a HTTP/2.0\r\nHost: x\r\n\r\n", 505, "", false},
		{"HTTP/0.9", "GET /a HTTP/0.9\r\n\r\n", 505, "", false},
		{"lower-case version", "GET /a http/1.1\r\nHost: x\r\n\r\n", 400, "", false},
		{"scheme in capitals", "GET HTTP://h/a?b HTTP/1.1\r\nHost: h\r\n\r\n", 0, "/a?b", true},
		{"https scheme", "GET HtTpS://h HTTP/1.1\r\nHost: h\r\n\r\n", 0, "/", true},
		{"authority then query", "GET http://h?q HTTP/1.1\r\nHost: h\r\n\r\n", 0, "/?q", true},
		{"other scheme", "GET ftp://h/a HTTP/1.1\r\nHost: h\r\n\r\n", 400, "", false},
		{"authority with port", "GET http://h:8080/a HTTP/1.1\r\nHost: h\r\n\r\n", 0, "/a", true},
		{"authority IPv6", "GET http://[::1]:80/a HTTP/1.1\r\nHost: h\r\n\r\n", 0, "/a", true},
		{"authority with userinfo", "GET http://u:p@h/a HTTP/1.1\r\nHost: h\r\n\r\n", 400, "", false},
		{"authority empty", "GET http:///a HTTP/1.1\r\nHost: h\r\n\r\n", 400, "", false},
		{"authority bad port", "GET http://h:x/a HTTP/1.1\r\nHost: h\r\n\r\n", 400, "", false},
		{"Host with port", "GET / HTTP/1.1\r\nHost: example.com:8080\r\n\r\n", 0, "/", true},
		{"Host IPv6", "GET / HTTP/1.1\r\nHost: [::1]:80\r\n\r\n", 0, "/", true},
		{"Host empty", "GET / HTTP/1.1\r\nHost:\r\n\r\n", 0, "/", true},
		{"Host with space", "GET / HTTP/1.1\r\nHost: a b\r\n\r\n", 400, "", false},
		{"Host with slash", "GET / HTTP/1.1\r\nHost: a/b\r\n\r\n", 400, "", false},
		{"Host with userinfo", "GET / HTTP/1.1\r\nHost: u@h\r\n\r\n", 400, "", false},
		{"Host bad port", "GET / HTTP/1.1\r\nHost: h:8o\r\n\r\n", 400, "", false},
		{"Host bad bracket", "GET / HTTP/1.1\r\nHost: [::1\r\n\r\n", 400, "", false},
		{"Content-Length +3", "GET / HTTP/1.1\r\nHost: x\r\nContent-Length: +3\r\n\r\nabc", 400, "", false},
		{"Content-Length -0", "GET / HTTP/1.1\r\nHost: x\r\nContent-Length: -0\r\n\r\n", 400, "", false},
		{"Content-Length 0x3", "GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 0x3\r\n\r\nabc", 400, "", false},
		{"Content-Length list", "GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 3, 3\r\n\r\nabc", 400, "", false},
		{"Content-Length 3", "GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc", 0, "/", true},
		{"Content-Length twice, same", "GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc", 0, "/", true},
		{"bare CR in a field", "GET / HTTP/1.1\r\nHost: x\r\nX: a\rb\r\n\r\n", 400, "", false},
		{"Expect 100-continue", "GET / HTTP/1.1\r\nHost: x\r\nExpect: 100-Continue\r\n\r\n", 0, "/", true},
		{"Expect other", "GET / HTTP/1.1\r\nHost: x\r\nExpect: x\r\n\r\n", 417, "", false},
		{"Expect in HTTP/1.0", "GET / HTTP/1.0\r\nExpect: x\r\n\r\n", 0, "/", false},
	} {
		r, err := parse([]byte(tc.in))
		switch {
		case tc.status != 0:
			if err == nil || err.status != tc.status {
				t.Errorf("%s: want %d, got %+v %v", tc.name, tc.status, r, err)
			}
		case err != nil || r == nil:
			t.Errorf("%s: refused: %v", tc.name, err)
		case string(r.target) != tc.target || r.keep != tc.keep || r.size != len(tc.in)-int(r.length):
			t.Errorf("%s: target %q keep %v size %d", tc.name, r.target, r.keep, r.size)
		}
	}
}

func TestChunkedBody(t *testing.T) {
	for _, tc := range []struct {
		body   string
		end    int // 0: more needed
		status int
	}{
		{"0\r\n\r\n", 5, 0},
		{"3\r\nabc\r\n0\r\n\r\nGET", 13, 0},
		{"3;ext=1\r\nabc\r\nA\r\n0123456789\r\n0\r\nTrailer: x\r\n\r\n", 46, 0},
		{"3\nabc\n0\n\n", 9, 0},
		{"3\r\nab", 0, 0},
		{"3\r\nabc\r", 0, 0},
		{"0\r\nTrailer: x\r\n", 0, 0},
		{"3\r\nabcd\r\n", 0, 400},
		{"x\r\n", 0, 400},
		{"\r\n", 0, 400},
		{"123456789\r\n", 0, 400},
		{"10000\r\n", 0, 413},
		{"-1\r\n", 0, 400},
	} {
		_, end, err := chunkedBody([]byte(tc.body), 0)
		status := 0
		if err != nil {
			status = err.status
		}
		if end != tc.end || status != tc.status {
			t.Errorf("chunkedBody(%q) = %d, %d; want %d, %d", tc.body, end, status, tc.end, tc.status)
		}
	}
	// Resumed from where it stopped, byte by byte, it finds the same end.
	body := "3\r\nabc\r\n5\r\nhello\r\n0\r\n\r\n"
	next, end := 0, 0
	for n := 1; n <= len(body) && end == 0; n++ {
		var err *parseError
		if next, end, err = chunkedBody([]byte(body[:n]), next); err != nil {
			t.Fatalf("at %d: %v", n, err)
		}
	}
	if end != len(body) {
		t.Errorf("byte by byte: end %d, want %d", end, len(body))
	}
}

func TestParseTable(t *testing.T) {
	for _, tc := range []struct {
		in      string
		partial bool
		status  int
		target  string
		keep    bool
	}{
		{"GET / HTTP/1.1\r\nHost: x\r\n\r\n", false, 0, "/", true},
		{"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", false, 0, "/", false},
		{"GET / HTTP/1.0\r\n\r\n", false, 0, "/", false},
		{"GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n", false, 0, "/", true},
		{"GET /a?b HTTP/1.1\r\nhOsT: x\r\n\r\n", false, 0, "/a?b", true},
		{"GET / HTTP/1.1\r\nHost: x\r\n", true, 0, "", false},
		{"GET / HTTP/1.1\r\nHost: x\r\nX: \x00\r\n\r\n", false, 400, "", false},
		{"GET /\x01 HTTP/1.1\r\nHost: x\r\n\r\n", false, 400, "", false},
		{" GET / HTTP/1.1\r\nHost: x\r\n\r\n", false, 400, "", false},
		{"GET  / HTTP/1.1\r\nHost: x\r\n\r\n", false, 400, "", false},
	} {
		r, err := parse([]byte(tc.in))
		switch {
		case tc.partial:
			if r != nil || err != nil {
				t.Errorf("%q: want partial, got %v %v", tc.in, r, err)
			}
		case tc.status != 0:
			if err == nil || err.status != tc.status {
				t.Errorf("%q: want %d, got %v", tc.in, tc.status, err)
			}
		default:
			if err != nil || r == nil || string(r.target) != tc.target || r.keep != tc.keep {
				t.Errorf("%q: got %+v %v", tc.in, r, err)
			}
		}
	}
}

// FuzzParse: the parser never panics, never reads past what it was given,
// and anything it accepts has a path target.
//
//	go test ./internal/httpd -run '^$' -fuzz FuzzParse -fuzztime 1m
func FuzzParse(f *testing.F) {
	for _, s := range []string{
		"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
		"GET http://a/b HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
		"HEAD /x HTTP/1.1\r\nHost: x\r\nRange: bytes=0-1\r\nIf-None-Match: \"a\"\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc",
		"GET / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		r, err := parse(data)
		if r != nil && err != nil {
			t.Fatal("both a request and an error")
		}
		if r == nil {
			return
		}
		if r.size > len(data) || len(r.target) == 0 || r.target[0] != '/' {
			t.Fatalf("accepted %q: size %d, target %q", data, r.size, r.target)
		}
		name, dir, ok := cleanPath(r.target)
		// A name may start with two dots ("..00000" is a file); it may not
		// be "..", or start with "../" or "/".
		if ok && (name == ".." || strings.HasPrefix(name, "../") || strings.HasPrefix(name, "/")) {
			t.Fatalf("path %q cleans to %q", r.target, name)
		}
		if r.chunked {
			if next, end, _ := chunkedBody(data[r.size:], 0); next < 0 || end < 0 || end > len(data)-r.size || next > len(data)-r.size {
				t.Fatalf("chunked body of %q: next %d end %d", data, next, end)
			}
		}
		// The fast path never disagrees with the full one.
		if plain, pok := plainPath(r.target); pok && (!ok || dir || string(plain) != name) {
			t.Fatalf("path %q: plainPath %q, cleanPath %q dir=%v ok=%v", r.target, plain, name, dir, ok)
		}
	})
}

// plainPath takes only paths that cleanPath would leave as they are, and
// gives the same name for them.
func TestPlainPath(t *testing.T) {
	for _, tc := range []struct {
		target, name string
		plain        bool
	}{
		{"/hello.txt", "hello.txt", true},
		{"/docs/index.html?x=1#f", "docs/index.html", true},
		{"/a.b/c..d", "a.b/c..d", true},
		{"/", "", false},
		{"/docs/", "", false},
		{"/a//b", "", false},
		{"/./a", "", false},
		{"/a/../b", "", false},
		{"/a/..", "", false},
		{"/a/.", "", false},
		{"/.hidden", "", false},
		{"/%2e%2e/secret", "", false},
		{"/a\\b", "", false},
		{"/a\x00b", "", false},
		{"*", "", false},
	} {
		name, ok := plainPath([]byte(tc.target))
		if ok != tc.plain || string(name) != tc.name {
			t.Errorf("plainPath(%q) = %q, %v; want %q, %v", tc.target, name, ok, tc.name, tc.plain)
		}
		if ok {
			if clean, dir, cok := cleanPath([]byte(tc.target)); !cok || dir || clean != string(name) {
				t.Errorf("%q: plainPath %q, cleanPath %q dir=%v ok=%v", tc.target, name, clean, dir, cok)
			}
		}
	}
}
