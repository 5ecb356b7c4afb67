//go:build linux

package httpd

import (
	"bytes"
	"errors"
	"fmt"
	"html"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/herd-run/herd/internal/shm"
	"golang.org/x/sys/unix"
)

// What the native engine answers: files, directory redirects and listings,
// conditional and range answers, error pages, and the access log line of
// each.

var errNoFile = errors.New("no file")

// respond builds the answer to req into c.out (and c.file), and counts
// and logs it.
func (e *Engine) respond(c *conn, req *request) {
	c.requests++
	c.close = !req.keep || e.draining.Load()
	e.answer(c, req)
	e.account(c, req)
}

// account counts an answer, starts its access log line, and tells
// OnRequest. req is nil for a request that could not be read. The line is
// finished by logAnswer once the answer is sent or cut short, with the
// bytes actually sent.
func (e *Engine) account(c *conn, req *request) {
	n := e.cfg.Stats.Add(shm.Requests, 1)
	c.answering, c.started = true, e.now
	if e.cfg.AccessLog != nil {
		e.startLog(c, req)
	}
	if e.cfg.OnRequest != nil {
		e.cfg.OnRequest(n)
	}
}

// startLog notes the start of c's access log line while the request's
// bytes are still in the buffer:
//
//	127.0.0.1 - - [22/Nov/2026:19:41:29 +0000] "GET /hello.txt HTTP/1.1" 200 13
//
// (the format of the nethttp engine's log; the size is the body's).
func (e *Engine) startLog(c *conn, req *request) {
	if c.peer == "" {
		c.peer = peerHost(c.fd)
	}
	b := append(c.logLine[:0], c.peer...)
	b = append(b, " - - ["...)
	b = append(b, e.logTime...)
	b = append(b, "] "...)
	if req == nil {
		b = append(b, `"-"`...)
	} else {
		proto := "HTTP/1." + strconv.Itoa(req.minor)
		if c.h2 != nil {
			proto = "HTTP/2.0" // as nginx logs it; the head was written out as HTTP/1.1 for the parser
		}
		b = strconv.AppendQuote(b, string(req.method)+" "+string(req.target)+" "+proto)
	}
	c.logLine, c.logging = b, true
}

// answerLog is what an answer's end needs for the metrics and the access
// log: a connection's (HTTP/1) or a stream's (HTTP/2).
type answerLog struct {
	status    int       // of the answer being sent
	answering bool      // an answer was counted and not yet finished (finishAnswer)
	started   time.Time // when its request was read, on the loop's clock
	logging   bool      // logLine holds the start of this answer's access log line
	logLine   []byte    // "peer - - [time] "request" ", completed when the answer ends
}

// finishAnswer ends c's answer, sent or cut short (see endAnswer).
func (e *Engine) finishAnswer(c *conn) {
	e.endAnswer(&c.answerLog, int64(max(0, min(c.outOff, len(c.out))-c.headLen))+c.fileSent)
}

// endAnswer ends an answer, sent or cut short: its status and duration go
// to the scoreboard (the master's /metrics), and its access log line is
// written with the body bytes that reached the socket — all of them, or as
// many as were sent before the connection was lost. Durations are on the
// loop's clock, refreshed each time it wakes.
func (e *Engine) endAnswer(a *answerLog, body int64) {
	if !a.answering {
		return
	}
	a.answering = false
	e.cfg.Stats.Observe(a.status, e.now.Sub(a.started))
	if !a.logging {
		return
	}
	a.logging = false
	b := append(a.logLine, ' ')
	b = strconv.AppendInt(b, int64(a.status), 10)
	b = append(b, ' ')
	b = strconv.AppendInt(b, body, 10)
	b = append(b, '\n')
	e.cfg.AccessLog.Write(b)
	a.logLine = b[:0]
}

// peerHost is the client's address for the access log, "-" if not IP.
func peerHost(fd int) string {
	sa, err := unix.Getpeername(fd)
	if err != nil {
		return "-"
	}
	switch a := sa.(type) {
	case *unix.SockaddrInet4:
		return netip.AddrFrom4(a.Addr).String()
	case *unix.SockaddrInet6:
		return netip.AddrFrom16(a.Addr).Unmap().String()
	}
	return "-"
}

// answer builds the answer to req into c.out (and c.file), and notes its
// status in c.
func (e *Engine) answer(c *conn, req *request) {
	head := string(req.method) == "HEAD"
	c.head = head
	if e.cfg.RedirectHTTPS != "" {
		e.errorPage(c, 301, "Moved Permanently", [][2]string{{"Location", httpsLocation(req, e.cfg.RedirectHTTPS)}})
		return
	}
	if !head && string(req.method) != "GET" {
		e.errorPage(c, 405, "Method Not Allowed", [][2]string{{"Allow", "GET, HEAD"}})
		return
	}
	var (
		f          *file
		isDir, dir bool
		err        error
		name       string
	)
	if raw, ok := plainPath(req.target); ok {
		if f, isDir, err = e.files.lookup(raw, e.now); isDir {
			name = string(raw)
		}
	} else {
		if name, dir, ok = cleanPath(req.target); !ok {
			c.close = true
			e.errorPage(c, 400, "Bad Request", nil)
			return
		}
		f, isDir, err = e.files.open(name, e.now)
		if err == nil && !isDir && dir {
			err = unix.ENOTDIR // "/file.txt/": a file is no directory (nginx: 404)
		}
	}
	if err == nil && isDir {
		if !dir {
			e.errorPage(c, 301, "Moved Permanently", [][2]string{{"Location", dirLocation(name, req.target)}})
			return
		}
		f, isDir, err = e.files.open(path2(name, "index.html"), e.now)
		if err == nil && isDir {
			err = errNoFile
		}
		if err == unix.ENOENT && e.cfg.Autoindex {
			e.listing(c, name)
			return
		}
		if err == unix.ENOENT {
			err = unix.EACCES // a directory without an index is not listed: 403, as nginx
		}
	}
	if err != nil {
		e.openFailed(c, err)
		return
	}
	e.sendFile(c, req, f, head)
}

// openFailed answers a request whose file could not be opened, with
// nginx's statuses: 404 for what is not there (or is no regular file),
// 403 for what may not be read, 503 while the process is out of
// descriptors, 500 for the rest. The last two are logged (once per episode
// of descriptor shortage), and none of them is kept in the file cache.
func (e *Engine) openFailed(c *conn, err error) {
	switch err {
	case unix.ENOENT, unix.ENOTDIR, unix.ENAMETOOLONG, unix.ENXIO, errNoFile, errNotRegular:
		e.errorPage(c, 404, "Not Found", nil)
	case errEscape, unix.EACCES, unix.EPERM:
		e.errorPage(c, 403, "Forbidden", nil)
	case unix.EMFILE, unix.ENFILE:
		if !e.files.shortLogged {
			e.files.shortLogged = true
			e.cfg.Log.Error("out of file descriptors: answering 503 until a file opens again", "err", err)
		}
		c.close = true // one descriptor fewer in use
		e.errorPage(c, 503, "Service Unavailable", [][2]string{{"Retry-After", "1"}})
	default:
		e.cfg.Log.Error("open failed", "err", err)
		e.errorPage(c, 500, "Internal Server Error", nil)
	}
}

func path2(dir, file string) string {
	if dir == "." {
		return file
	}
	return dir + "/" + file
}

// dirLocation is the Location of the redirect from a directory's name
// without its slash to the name with one: an absolute path with each
// segment percent-encoded — so that "?", "#", "%", spaces and controls in
// a name stay in the path and no byte can end the header (RFC 9110 10.2.2)
// — and the query as the client sent it.
func dirLocation(name string, target []byte) string {
	var b strings.Builder
	for _, seg := range strings.Split(name, "/") {
		b.WriteByte('/')
		b.WriteString(url.PathEscape(seg))
	}
	b.WriteByte('/')
	if _, query, ok := bytes.Cut(target, []byte("?")); ok {
		query, _, _ = bytes.Cut(query, []byte("#"))
		b.WriteByte('?')
		for _, ch := range query {
			// The parser let no control or space through; bytes above
			// ASCII are escaped so the header stays ASCII.
			if ch >= 0x80 {
				fmt.Fprintf(&b, "%%%02X", ch)
			} else {
				b.WriteByte(ch)
			}
		}
	}
	return b.String()
}

// sendFile answers with f: 200, 206, 304, 412 or 416.
func (e *Engine) sendFile(c *conn, req *request, f *file, head bool) {
	// Hold the files while the answer is built (another lookup may evict
	// them); the one sent by sendfile takes a hold of its own until sent.
	f.refs++
	defer e.files.release(f)
	ctype, vary := f.ctype, false
	var encoding string
	if gz, _, err := e.files.open(f.gz, e.now); err == nil && gz != nil {
		vary = true
		if req.gzip {
			gz.refs++
			defer e.files.release(gz)
			f, encoding = gz, "gzip"
		}
	}
	// The preconditions in RFC 9110 13.2.2's order: a client that resumes
	// a download with Range and If-Unmodified-Since (or If-Match) must not
	// get the rest of a newer file spliced onto what it has.
	if preconditionFailed(req.ifMatch, req.iums, f.etag, f.mtime) {
		e.errorPage(c, 412, "Precondition Failed", nil)
		return
	}
	if notModified(req.inm, req.ims, f.etag, f.mtime) {
		e.begin(c, 304, "Not Modified")
		c.out = e.validators(c.out, f, vary)
		e.endHead(c)
		return
	}
	start, end, status := int64(0), f.size, 200
	if req.rng != nil && ifRangeHolds(req.ifRange, f.etag, f.lastMod) {
		start, end, status = byteRange(req.rng, f.size)
	}
	switch status {
	case 416:
		e.begin(c, 416, "Range Not Satisfiable")
		c.out = append(c.out, "Content-Range: bytes */"...)
		c.out = strconv.AppendInt(c.out, f.size, 10)
		c.out = append(c.out, "\r\nContent-Length: 0\r\n"...)
		e.endHead(c)
		return
	case 206:
		e.begin(c, 206, "Partial Content")
		c.out = fmt.Appendf(c.out, "Content-Range: bytes %d-%d/%d\r\n", start, end-1, f.size)
	default:
		e.begin(c, 200, "OK")
	}
	c.out = append(c.out, "Content-Type: "...)
	c.out = append(c.out, ctype...)
	c.out = append(c.out, "\r\nContent-Length: "...)
	c.out = strconv.AppendInt(c.out, end-start, 10)
	c.out = append(c.out, "\r\nAccept-Ranges: bytes\r\n"...)
	if encoding != "" {
		c.out = append(c.out, "Content-Encoding: gzip\r\n"...)
	}
	c.out = e.validators(c.out, f, vary)
	e.endHead(c)
	if head || end == start {
		return
	}
	if f.small != nil {
		c.out = append(c.out, f.small[start:end]...) // head and body in one write
		return
	}
	f.refs++ // c.file's own hold
	c.file, c.off, c.end = f, start, end
}

// begin starts c's answer with its status line and common headers, and
// notes the status for the access log.
func (e *Engine) begin(c *conn, code int, text string) {
	c.status, c.headLen, c.fileSent = code, 0, 0
	b := append(c.out[:0], "HTTP/1.1 "...)
	b = strconv.AppendInt(b, int64(code), 10)
	b = append(b, ' ')
	b = append(b, text...)
	b = append(b, "\r\nServer: herd\r\nDate: "...)
	b = append(b, e.date...)
	c.out = append(b, "\r\n"...)
}

// endHead ends the head with the Connection field and the empty line;
// what is appended after it is body.
func (e *Engine) endHead(c *conn) {
	if c.close {
		c.out = append(c.out, "Connection: close\r\n\r\n"...)
	} else {
		c.out = append(c.out, "Connection: keep-alive\r\n\r\n"...)
	}
	c.headLen = len(c.out)
}

func (e *Engine) validators(b []byte, f *file, vary bool) []byte {
	b = append(b, "Last-Modified: "...)
	b = append(b, f.lastMod...)
	b = append(b, "\r\nETag: "...)
	b = append(b, f.etag...)
	b = append(b, "\r\n"...)
	if vary {
		b = append(b, "Vary: Accept-Encoding\r\n"...)
	}
	return b
}

// errorPage answers with a status and a small HTML page. Header values are
// the engine's own, or built by dirLocation: never raw client bytes.
func (e *Engine) errorPage(c *conn, code int, text string, headers [][2]string) {
	body := "<html><head><title>" + strconv.Itoa(code) + " " + text + "</title></head><body><h1>" +
		strconv.Itoa(code) + " " + text + "</h1><hr>herd</body></html>\n"
	e.begin(c, code, text)
	for _, h := range headers {
		c.out = append(c.out, h[0]+": "+h[1]+"\r\n"...)
	}
	e.htmlBody(c, body)
}

// htmlBody ends an answer whose head has its status line with an HTML body.
func (e *Engine) htmlBody(c *conn, body string) {
	c.out = append(c.out, "Content-Type: text/html; charset=utf-8\r\nContent-Length: "...)
	c.out = strconv.AppendInt(c.out, int64(len(body)), 10)
	c.out = append(c.out, "\r\n"...)
	e.endHead(c)
	if !c.head {
		c.out = append(c.out, body...) // a HEAD answer has the length, never the body
	}
}

// listing answers with the entries of the directory name (autoindex):
// names linked, directories with a slash, then the time and size, as
// nginx's autoindex shows them. Read on the loop's thread, as nginx does.
// Every link is relative and starts with "./", so that no name can be read
// as a scheme ("javascript:..."), and every name is escaped for the URL and
// for HTML.
func (e *Engine) listing(c *conn, name string) {
	entries, err := e.files.readDir(name)
	if err != nil {
		e.openFailed(c, err)
		return
	}
	title := "/"
	if name != "." {
		title += name + "/"
	}
	var b strings.Builder
	b.WriteString("<html><head><title>Index of " + html.EscapeString(title) + "</title></head><body>\n<h1>Index of " +
		html.EscapeString(title) + "</h1><hr><pre>")
	if name != "." {
		b.WriteString("<a href=\"../\">../</a>\n")
	}
	for _, ent := range entries {
		label, href := ent.Name, "./"+url.PathEscape(ent.Name)
		if ent.Dir {
			label, href = label+"/", href+"/"
		}
		fmt.Fprintf(&b, "<a href=\"%s\">%s</a>%*s %s %12s\n", html.EscapeString(href), html.EscapeString(label),
			max(0, 50-len(label)), "", ent.ModTime.UTC().Format("02-Jan-2006 15:04"), sizeText(ent))
	}
	b.WriteString("</pre><hr></body></html>\n")
	e.begin(c, 200, "OK")
	e.htmlBody(c, b.String())
}

func sizeText(ent dirEntry) string {
	if ent.Dir {
		return "-"
	}
	return strconv.FormatInt(ent.Size, 10)
}

// notModified applies If-None-Match, or else If-Modified-Since (RFC 9110
// 13.1.2, 13.1.3, 13.2.2) to a file with this ETag and modification time.
// If-None-Match compares weakly: W/ is ignored on both sides.
func notModified(inm, ims []byte, etag string, mtime time.Time) bool {
	if inm != nil {
		if string(trim(inm)) == "*" { // "*" alone: any current representation
			return true
		}
		for _, tag := range strings.Split(string(inm), ",") {
			if strings.TrimPrefix(strings.TrimSpace(tag), "W/") == strings.TrimPrefix(etag, "W/") {
				return true
			}
		}
		return false
	}
	if ims != nil {
		t, err := http.ParseTime(string(ims))
		return err == nil && !mtime.Truncate(time.Second).After(t)
	}
	return false
}

// preconditionFailed applies If-Match, or else If-Unmodified-Since (RFC
// 9110 13.1.1, 13.1.4, 13.2.2), to a file with this ETag and modification
// time; true: the answer is 412. If-Match compares strongly (a weak tag
// never matches) and "*" matches any file served; an If-Unmodified-Since
// that is not a date is ignored, as the RFC says (nginx answers 412).
func preconditionFailed(ifMatch, iums []byte, etag string, mtime time.Time) bool {
	if ifMatch != nil {
		if string(trim(ifMatch)) == "*" {
			return false
		}
		for _, tag := range strings.Split(string(ifMatch), ",") {
			if tag = strings.TrimSpace(tag); tag == etag && !strings.HasPrefix(tag, "W/") {
				return false
			}
		}
		return true
	}
	if iums != nil {
		t, err := http.ParseTime(string(iums))
		return err == nil && mtime.Truncate(time.Second).After(t)
	}
	return false
}

// ifRangeHolds reports whether a Range may be applied: there is no
// If-Range, or it names the current representation by a strong ETag or
// its exact Last-Modified date (RFC 9110 13.1.5). A weak tag never does.
func ifRangeHolds(ifRange []byte, etag, lastMod string) bool {
	if ifRange == nil {
		return true
	}
	v := string(ifRange)
	return !strings.HasPrefix(v, "W/") && (v == etag || v == lastMod)
}

// byteRange applies a Range field value to a representation of size
// bytes (RFC 9110 14.1.2, 14.2), as nginx does where the RFC leaves room:
//
//   - a unit other than "bytes" (any case): ignored, 200 with the whole;
//   - a malformed range set ("bytes=abc-", "bytes=5-3", "bytes="): 416,
//     as nginx and net/http answer;
//   - exactly one satisfiable range: 206 with it, clipped to the size;
//   - several satisfiable ranges: 200 with the whole (a server may ignore
//     Range; nginx would send multipart/byteranges);
//   - none satisfiable ("bytes=13-" of 13 bytes, "bytes=-0"): 416, except
//     that an empty representation ignores ranges that start at its
//     beginning ("bytes=-1", "bytes=0-"): 200, as nginx.
//
// It returns the half-open interval [start, end) to send and the status.
func byteRange(spec []byte, size int64) (start, end int64, status int) {
	unit, set, ok := bytes.Cut(spec, []byte("="))
	if !ok || !fold(trim(unit), "bytes") {
		return 0, size, 200
	}
	satisfiable, atStart, specs := 0, false, 0
	for _, elem := range bytes.Split(set, []byte(",")) {
		elem = trim(elem)
		if len(elem) == 0 {
			continue // empty list elements are allowed (RFC 9110 5.6.1)
		}
		specs++
		first, last, found := bytes.Cut(elem, []byte("-"))
		if !found {
			return 0, 0, 416
		}
		first, last = trim(first), trim(last)
		var a, b int64
		if len(first) == 0 { // suffix: the last n bytes
			n, ok := parseLength(last)
			if !ok {
				return 0, 0, 416
			}
			if n == 0 {
				atStart = atStart || size == 0
				continue
			}
			a, b = max(size-n, 0), size
		} else {
			var ok bool
			if a, ok = parseLength(first); !ok {
				return 0, 0, 416
			}
			b = size
			if len(last) > 0 {
				l, ok := parseLength(last)
				if !ok || l < a {
					return 0, 0, 416
				}
				b = min(l+1, size)
			}
		}
		if a >= size {
			atStart = atStart || (a == 0 && size == 0)
			continue
		}
		satisfiable++
		start, end = a, b
	}
	switch {
	case specs == 0:
		return 0, 0, 416
	case satisfiable == 1:
		return start, end, 206
	case satisfiable > 1 || atStart:
		return 0, size, 200
	}
	return 0, 0, 416
}

// httpsLocation is where RedirectHTTPS sends a request: its Host (already
// validated as host[:port], so no byte of it can end the header) without
// the port, the TLS port unless it is 443, and the target as the client
// sent it — path and query, which the parser let through without spaces
// or controls.
func httpsLocation(req *request, port string) string {
	host := string(req.hostName)
	if h, _, err := net.SplitHostPort(host); err == nil {
		host = h
		if strings.Contains(h, ":") {
			host = "[" + h + "]"
		}
	}
	if host == "" {
		host = "localhost"
	}
	if port == ":443" {
		port = ""
	}
	var b strings.Builder
	b.WriteString("https://" + host + port)
	for _, ch := range req.target {
		if ch >= 0x80 {
			fmt.Fprintf(&b, "%%%02X", ch)
		} else {
			b.WriteByte(ch)
		}
	}
	return b.String()
}
