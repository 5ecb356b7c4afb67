package httpd

import (
	"bytes"
	"strconv"
)

// Limits of the native engine's request parser. A request line longer than
// MaxRequestLine is answered 414; a header block longer than MaxHeaderBytes
// or with more than MaxHeaders fields, 431 (nginx: 414 and 400 with its
// large_client_header_buffers of 4 × 8k).
const (
	MaxRequestLine = 8 << 10
	MaxHeaderBytes = 16 << 10
	MaxHeaders     = 100
	MaxBody        = 64 << 10 // a GET or HEAD body is read and dropped up to this size; more is 413
)

// request is one parsed request. Its byte slices point into the
// connection's read buffer and live until the next request is parsed.
type request struct {
	method  []byte
	target  []byte // origin-form path and query
	minor   int    // HTTP/1.minor
	keep    bool   // the connection may serve another request
	host    bool
	length  int64 // Content-Length, or 0
	ims     []byte
	inm     []byte
	rng     []byte
	ifRange []byte
	gzip    bool // Accept-Encoding allows gzip
	size    int  // bytes of the request head, including the blank line
}

// parseError is a request the engine refuses, with the status to send; the
// connection is closed after the answer.
type parseError struct {
	status int
	reason string
}

func (e *parseError) Error() string { return strconv.Itoa(e.status) + " " + e.reason }

func refuse(status int, reason string) *parseError { return &parseError{status, reason} }

// parse reads one request head from buf into a new request. It returns
// (nil, nil) when buf holds only part of a head and more may come.
func parse(buf []byte) (*request, *parseError) {
	r := new(request)
	ok, err := parseInto(r, buf)
	if !ok {
		return nil, err
	}
	return r, nil
}

// parseInto is parse into a request the caller owns (the event loop keeps
// one per connection: no allocation per request). ok=false with a nil
// error: more bytes are needed.
func parseInto(r *request, buf []byte) (ok bool, _ *parseError) {
	*r = request{}
	end := bytes.Index(buf, []byte("\r\n\r\n"))
	if end < 0 {
		if i := bytes.IndexByte(buf, '\n'); i < 0 && len(buf) > MaxRequestLine {
			return false, refuse(414, "URI Too Long")
		}
		if len(buf) >= MaxHeaderBytes {
			return false, refuse(431, "Request Header Fields Too Large")
		}
		return false, nil
	}
	if end+4 > MaxHeaderBytes {
		return false, refuse(431, "Request Header Fields Too Large")
	}
	r.size = end + 4
	head := buf[:end]
	lineEnd := bytes.Index(head, []byte("\r\n"))
	if lineEnd < 0 {
		lineEnd = len(head)
	}
	if lineEnd > MaxRequestLine {
		return false, refuse(414, "URI Too Long")
	}
	if err := r.parseLine(head[:lineEnd]); err != nil {
		return false, err
	}
	r.keep = r.minor == 1
	var lengths int
	var te bool
	fields := head[lineEnd:]
	for n := 0; len(fields) > 0; n++ {
		if n >= MaxHeaders {
			return false, refuse(431, "Request Header Fields Too Large")
		}
		fields = fields[2:] // the CRLF before this field
		i := bytes.Index(fields, []byte("\r\n"))
		line := fields
		if i >= 0 {
			line, fields = fields[:i], fields[i:]
		} else {
			fields = nil
		}
		colon := bytes.IndexByte(line, ':')
		if colon <= 0 || !isToken(line[:colon]) {
			// Also refuses obsolete line folding (a line starting with
			// white space) and white space before the colon (RFC 9112 5.1).
			return false, refuse(400, "Bad Request")
		}
		name, value := line[:colon], trim(line[colon+1:])
		if bytes.IndexByte(value, 0) >= 0 || bytes.IndexByte(value, '\r') >= 0 || bytes.IndexByte(value, '\n') >= 0 {
			return false, refuse(400, "Bad Request")
		}
		switch {
		case fold(name, "host"):
			if r.host {
				return false, refuse(400, "Bad Request") // two Host fields
			}
			r.host = true
		case fold(name, "connection"):
			for _, tok := range bytes.Split(value, []byte(",")) {
				switch tok = trim(tok); {
				case fold(tok, "close"):
					r.keep = false
				case fold(tok, "keep-alive") && r.minor == 0:
					r.keep = true
				}
			}
		case fold(name, "content-length"):
			n, err := strconv.ParseInt(string(value), 10, 64)
			if err != nil || n < 0 || (lengths > 0 && n != r.length) {
				return false, refuse(400, "Bad Request") // malformed, or two that differ
			}
			r.length = n
			lengths++
		case fold(name, "transfer-encoding"):
			te = true
		case fold(name, "if-modified-since"):
			r.ims = value
		case fold(name, "if-none-match"):
			r.inm = value
		case fold(name, "range"):
			r.rng = value
		case fold(name, "if-range"):
			r.ifRange = value
		case fold(name, "accept-encoding"):
			r.gzip = acceptsGzip(value)
		}
	}
	if r.minor == 1 && !r.host {
		return false, refuse(400, "Bad Request") // HTTP/1.1 requires Host (RFC 9112 3.2)
	}
	if te {
		// A static server takes no request bodies; a chunked one is also
		// the classic smuggling vector. Refuse and close.
		return false, refuse(501, "Not Implemented")
	}
	if r.length > MaxBody {
		return false, refuse(413, "Content Too Large")
	}
	return true, nil
}

// parseLine reads "METHOD SP request-target SP HTTP/1.x".
func (r *request) parseLine(line []byte) *parseError {
	sp := bytes.IndexByte(line, ' ')
	if sp <= 0 || !isToken(line[:sp]) {
		return refuse(400, "Bad Request")
	}
	r.method, line = line[:sp], line[sp+1:]
	sp = bytes.LastIndexByte(line, ' ')
	if sp <= 0 {
		return refuse(400, "Bad Request")
	}
	target, version := line[:sp], line[sp+1:]
	switch {
	case string(version) == "HTTP/1.1":
		r.minor = 1
	case string(version) == "HTTP/1.0":
		r.minor = 0
	case len(version) == 8 && bytes.HasPrefix(version, []byte("HTTP/")) && version[6] == '.' &&
		isDigit(version[5]) && isDigit(version[7]):
		return refuse(505, "HTTP Version Not Supported")
	default:
		return refuse(400, "Bad Request")
	}
	for _, c := range target {
		if c <= ' ' || c == 0x7f {
			return refuse(400, "Bad Request") // spaces, controls, NUL
		}
	}
	// Absolute form (RFC 9112 3.2.2): a server must accept it; keep the path.
	if len(target) > 0 && target[0] != '/' {
		rest, ok := bytes.CutPrefix(target, []byte("http://"))
		if !ok {
			rest, ok = bytes.CutPrefix(target, []byte("https://"))
		}
		if !ok {
			return refuse(400, "Bad Request") // authority-form, asterisk-form, junk
		}
		i := bytes.IndexByte(rest, '/')
		if i < 0 {
			target = []byte("/")
		} else {
			target = rest[i:]
		}
	}
	if len(target) == 0 {
		return refuse(400, "Bad Request")
	}
	r.target = target
	return nil
}

// acceptsGzip reads Accept-Encoding: gzip with a q-value above zero (or
// none).
func acceptsGzip(v []byte) bool {
	for _, part := range bytes.Split(v, []byte(",")) {
		coding, params, _ := bytes.Cut(trim(part), []byte(";"))
		if !fold(trim(coding), "gzip") {
			continue
		}
		q := 1.0
		for _, p := range bytes.Split(params, []byte(";")) {
			if k, val, ok := bytes.Cut(trim(p), []byte("=")); ok && fold(trim(k), "q") {
				if f, err := strconv.ParseFloat(string(trim(val)), 64); err == nil {
					q = f
				}
			}
		}
		return q > 0
	}
	return false
}

func isToken(b []byte) bool {
	if len(b) == 0 {
		return false
	}
	for _, c := range b {
		if c <= ' ' || c >= 0x7f || bytes.IndexByte([]byte(`"(),/:;<=>?@[\]{}`), c) >= 0 {
			return false
		}
	}
	return true
}

func isDigit(c byte) bool { return c >= '0' && c <= '9' }

func trim(b []byte) []byte { return bytes.Trim(b, " \t") }

// fold compares b with a lower-case ASCII word, ignoring case.
func fold(b []byte, word string) bool {
	if len(b) != len(word) {
		return false
	}
	for i := range b {
		c := b[i]
		if 'A' <= c && c <= 'Z' {
			c += 'a' - 'A'
		}
		if c != word[i] {
			return false
		}
	}
	return true
}
