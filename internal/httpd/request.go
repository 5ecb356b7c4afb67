//go:build linux

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
	method   []byte
	target   []byte // origin-form path and query
	minor    int    // HTTP/1.minor; 1 and above mean HTTP/1.1 (RFC 9110 6.2)
	keep     bool   // the connection may serve another request
	host     bool
	hostName []byte // the Host field's value (validated: host[:port])
	length   int64  // Content-Length, or 0
	chunked  bool   // Transfer-Encoding: chunked
	expect   bool   // Expect: 100-continue, in an HTTP/1.1 request
	ims      []byte
	inm      []byte
	ifMatch  []byte
	iums     []byte // If-Unmodified-Since
	rng      []byte
	ifRange  []byte
	gzip     bool // Accept-Encoding allows gzip
	size     int  // bytes of the request head, including the blank line
	lengths  int  // Content-Length fields seen
	encoding bool // a Transfer-Encoding field seen
}

// hasBody reports whether a body follows the head.
func (r *request) hasBody() bool { return r.length > 0 || r.chunked }

// parseError is a request the engine refuses, with the status to send; the
// connection is closed after the answer.
type parseError struct {
	status int
	reason string
}

func (e *parseError) Error() string { return strconv.Itoa(e.status) + " " + e.reason }

func refuse(status int, reason string) *parseError { return &parseError{status, reason} }

var (
	errBadRequest = refuse(400, "Bad Request")
	errTooLarge   = refuse(431, "Request Header Fields Too Large")
)

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

// nextLine returns the line of buf that starts at from, without its line
// ending, and where the next one starts. Lines end in CRLF, or in a bare LF,
// which RFC 9112 2.2 lets a server accept (nginx and net/http do). ok=false:
// no whole line yet.
func nextLine(buf []byte, from int) (line []byte, next int, ok bool) {
	i := bytes.IndexByte(buf[from:], '\n')
	if i < 0 {
		return nil, 0, false
	}
	line = buf[from : from+i]
	if n := len(line); n > 0 && line[n-1] == '\r' {
		line = line[:n-1]
	}
	return line, from + i + 1, true
}

// parseInto is parse into a request the caller owns (the event loop keeps
// one per connection: no allocation per request). ok=false with a nil
// error: more bytes are needed.
func parseInto(r *request, buf []byte) (ok bool, _ *parseError) {
	*r = request{}
	// Empty lines before the request line are ignored (RFC 9112 2.2: a
	// client may send one after a POST body); they count toward the limit.
	start := 0
	for {
		if bytes.HasPrefix(buf[start:], []byte("\r\n")) {
			start += 2
		} else if bytes.HasPrefix(buf[start:], []byte("\n")) {
			start++
		} else {
			break
		}
		if start > MaxHeaderBytes {
			return false, errTooLarge
		}
	}
	reqLine, pos, whole := nextLine(buf, start)
	if !whole {
		if len(buf)-start > MaxRequestLine {
			return false, refuse(414, "URI Too Long")
		}
		return false, nil
	}
	if len(reqLine) > MaxRequestLine {
		return false, refuse(414, "URI Too Long")
	}
	// The head must be whole before any of it is judged: a refusal of a
	// request still arriving would answer before the client has finished.
	end := pos
	for {
		line, next, whole := nextLine(buf, end)
		if !whole {
			if len(buf) >= MaxHeaderBytes {
				return false, errTooLarge
			}
			return false, nil
		}
		end = next
		if end > MaxHeaderBytes {
			return false, errTooLarge
		}
		if len(line) == 0 {
			break
		}
	}
	r.size = end
	if err := r.parseLine(reqLine); err != nil {
		return false, err
	}
	r.keep = r.minor >= 1
	for n := 0; ; n++ {
		line, next, _ := nextLine(buf, pos)
		pos = next
		if len(line) == 0 {
			break
		}
		if n >= MaxHeaders {
			return false, errTooLarge
		}
		if err := r.field(line); err != nil {
			return false, err
		}
	}
	switch {
	case r.minor >= 1 && !r.host:
		return false, errBadRequest // HTTP/1.1 requires Host (RFC 9112 3.2)
	case r.encoding && (r.lengths > 0 || r.minor == 0):
		// Both framings at once is the classic smuggling vector, and
		// Transfer-Encoding means nothing to HTTP/1.0 (RFC 9112 6.1): refuse
		// and close, as nginx does.
		return false, errBadRequest
	case r.length > MaxBody:
		return false, refuse(413, "Content Too Large")
	}
	return true, nil
}

// field reads one header field line.
func (r *request) field(line []byte) *parseError {
	colon := bytes.IndexByte(line, ':')
	if colon <= 0 || !isToken(line[:colon]) {
		// Also refuses obsolete line folding (a line starting with
		// white space) and white space before the colon (RFC 9112 5.1).
		return errBadRequest
	}
	name, value := line[:colon], trim(line[colon+1:])
	for _, c := range value {
		if c < ' ' && c != '\t' || c == 0x7f {
			return errBadRequest // NUL, a bare CR, other controls (RFC 9110 5.5)
		}
	}
	switch {
	case fold(name, "host"):
		if r.host || !validHost(value) {
			return errBadRequest // two Host fields, or not host[:port] (RFC 9112 3.2)
		}
		r.host, r.hostName = true, value
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
		n, ok := parseLength(value)
		if !ok || (r.lengths > 0 && n != r.length) {
			return errBadRequest // not 1*DIGIT (RFC 9110 8.6), or two that differ
		}
		r.length = n
		r.lengths++
	case fold(name, "transfer-encoding"):
		if r.encoding {
			return errBadRequest
		}
		r.encoding = true
		if !fold(value, "chunked") {
			// A coding other than chunked alone (gzip, chunked; identity):
			// a static server decodes none of them (nginx: 501 too).
			return refuse(501, "Not Implemented")
		}
		r.chunked = true
	case fold(name, "expect"):
		if r.minor == 0 {
			break // HTTP/1.0 clients cannot expect an interim answer (RFC 9110 10.1.1)
		}
		if !fold(value, "100-continue") {
			return refuse(417, "Expectation Failed")
		}
		r.expect = true
	case fold(name, "if-modified-since"):
		r.ims = value
	case fold(name, "if-none-match"):
		r.inm = value
	case fold(name, "if-match"):
		r.ifMatch = value
	case fold(name, "if-unmodified-since"):
		r.iums = value
	case fold(name, "range"):
		r.rng = value
	case fold(name, "if-range"):
		r.ifRange = value
	case fold(name, "accept-encoding"):
		r.gzip = acceptsGzip(value)
	}
	return nil
}

// parseLength reads a Content-Length: digits only, no sign, no space, no
// list, and small enough not to overflow.
func parseLength(v []byte) (int64, bool) {
	if len(v) == 0 || len(v) > 18 {
		return 0, false
	}
	var n int64
	for _, c := range v {
		if !isDigit(c) {
			return 0, false
		}
		n = n*10 + int64(c-'0')
	}
	return n, true
}

// validHost reports whether a Host value is uri-host [ ":" port ] (RFC
// 9112 3.2, RFC 3986 3.2.2): a bracketed IP literal, or a reg-name or IPv4
// address, then digits after a colon. An empty value is valid: a request
// whose target has no authority sends one.
func validHost(v []byte) bool {
	host, port := v, []byte(nil)
	if len(v) > 0 && v[0] == '[' {
		i := bytes.IndexByte(v, ']')
		if i < 0 {
			return false
		}
		for _, c := range v[1:i] {
			if !isHex(c) && c != ':' && c != '.' && c != 'v' && c != 'V' && !hostByte(c) {
				return false
			}
		}
		host, port = nil, v[i+1:]
		if len(port) > 0 {
			if port[0] != ':' {
				return false
			}
			port = port[1:]
		}
	} else if i := bytes.LastIndexByte(v, ':'); i >= 0 {
		host, port = v[:i], v[i+1:]
	}
	for _, c := range host {
		if !hostByte(c) {
			return false
		}
	}
	for _, c := range port {
		if !isDigit(c) {
			return false
		}
	}
	return true
}

// hostByte: unreserved, sub-delims and "%" of a reg-name (RFC 3986 3.2.2).
func hostByte(c byte) bool {
	switch {
	case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', isDigit(c):
		return true
	}
	return bytes.IndexByte([]byte("-._~%!$&'()*+,;="), c) >= 0
}

// parseLine reads "METHOD SP request-target SP HTTP/1.x".
func (r *request) parseLine(line []byte) *parseError {
	sp := bytes.IndexByte(line, ' ')
	if sp <= 0 || !isToken(line[:sp]) {
		return errBadRequest
	}
	r.method, line = line[:sp], line[sp+1:]
	sp = bytes.LastIndexByte(line, ' ')
	if sp <= 0 {
		return errBadRequest
	}
	target, version := line[:sp], line[sp+1:]
	if len(version) != 8 || !bytes.HasPrefix(version, []byte("HTTP/")) || version[6] != '.' ||
		!isDigit(version[5]) || !isDigit(version[7]) {
		return errBadRequest
	}
	if version[5] != '1' {
		return refuse(505, "HTTP Version Not Supported")
	}
	// HTTP/1.2 and up are HTTP/1.1 to this server: a recipient treats a
	// higher minor version as the highest it supports (RFC 9110 6.2).
	r.minor = int(version[7] - '0')
	for _, c := range target {
		if c <= ' ' || c == 0x7f {
			return errBadRequest // spaces, controls, NUL
		}
	}
	// Absolute form (RFC 9112 3.2.2): a server must accept it; keep the path.
	// The scheme is case-insensitive (RFC 3986 3.1).
	if len(target) > 0 && target[0] != '/' {
		colon := bytes.Index(target, []byte("://"))
		if colon < 0 || !(fold(target[:colon], "http") || fold(target[:colon], "https")) {
			return errBadRequest // authority-form, asterisk-form, junk
		}
		rest := target[colon+3:]
		i := bytes.IndexAny(rest, "/?")
		authority := rest
		if i >= 0 {
			authority = rest[:i]
		}
		if len(authority) == 0 || !validHost(authority) {
			// An http URI needs a host, and userinfo ("http://u@h/") is
			// refused: RFC 9110 4.2.4 calls it a likely phishing device
			// (nginx: 400).
			return errBadRequest
		}
		switch {
		case i < 0:
			target = []byte("/")
		case rest[i] == '?':
			// "http://host?q": the path is empty, which means "/".
			target = append([]byte("/"), rest[i:]...)
		default:
			target = rest[i:]
		}
	}
	if len(target) == 0 {
		return errBadRequest
	}
	r.target = target
	return nil
}

// chunkedBody finds the end of a chunked body (RFC 9112 7.1): chunks of
// hex-sized data, a last chunk of size zero, trailer fields and an empty
// line. It scans from `from`, an offset at a chunk boundary that an earlier
// call returned as next (0 at first), so a body that arrives in pieces is
// scanned once. It returns where the next unscanned chunk starts, and the
// body's length once it is whole (end > 0). Bodies are bounded by MaxBody.
func chunkedBody(body []byte, from int) (next, end int, _ *parseError) {
	pos := from
	for {
		line, after, whole := nextLine(body, pos)
		if !whole {
			if len(body)-pos > 1024 {
				return pos, 0, errBadRequest // a size line no client needs
			}
			return pos, 0, nil
		}
		hexLen := 0
		for hexLen < len(line) && isHex(line[hexLen]) {
			hexLen++
		}
		if hexLen == 0 || hexLen > 8 {
			return pos, 0, errBadRequest
		}
		if rest := line[hexLen:]; len(rest) > 0 && rest[0] != ';' && rest[0] != ' ' && rest[0] != '\t' {
			return pos, 0, errBadRequest // only chunk extensions may follow the size
		}
		size, _ := strconv.ParseInt(string(line[:hexLen]), 16, 64)
		if size > MaxBody || int64(after)+size > MaxBody {
			return pos, 0, refuse(413, "Content Too Large")
		}
		if size == 0 {
			// The trailer section: field lines up to an empty line.
			for p := after; ; {
				line, n, whole := nextLine(body, p)
				if !whole {
					if len(body) > MaxBody {
						return pos, 0, refuse(413, "Content Too Large")
					}
					return pos, 0, nil
				}
				if len(line) == 0 {
					return n, n, nil
				}
				p = n
			}
		}
		dataEnd := after + int(size)
		if len(body) < dataEnd+1 {
			return pos, 0, nil
		}
		switch {
		case body[dataEnd] == '\n':
			pos = dataEnd + 1
		case body[dataEnd] == '\r' && len(body) < dataEnd+2:
			return pos, 0, nil
		case body[dataEnd] == '\r' && body[dataEnd+1] == '\n':
			pos = dataEnd + 2
		default:
			return pos, 0, errBadRequest
		}
	}
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
