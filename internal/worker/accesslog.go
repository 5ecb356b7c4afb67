//go:build linux

package worker

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strconv"
	"sync"
	"time"
)

// accessLog writes one line per request in the Common Log Format (as
// Apache's and nginx's default "combined" without referer and agent):
//
//	127.0.0.1 - - [22/Nov/2026:19:41:29 +0000] "GET /hello.txt HTTP/1.1" 200 13
//
// Lines go into a 64 KiB buffer that is flushed every second and at exit,
// so the hot path costs a mutex and a formatted append, not a write(2).
type accessLog struct {
	mu   sync.Mutex
	path string
	w    *bufio.Writer
	out  io.Closer
	buf  []byte
}

// openAccessLog opens path for appending ("-": standard output).
func openAccessLog(path string) (*accessLog, error) {
	var f *os.File
	if path == "-" {
		f = os.Stdout
	} else {
		var err error
		if f, err = os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644); err != nil {
			return nil, fmt.Errorf("access log: %w", err)
		}
	}
	a := &accessLog{path: path, w: bufio.NewWriterSize(f, 64<<10), out: f}
	if path == "-" {
		a.out = nil
	}
	go func() {
		for range time.Tick(time.Second) {
			a.mu.Lock()
			a.w.Flush()
			a.mu.Unlock()
		}
	}()
	return a, nil
}

// Write adds one formatted line (the native engine formats its own).
func (a *accessLog) Write(line []byte) (int, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.w.Write(line)
}

// reopen flushes what is buffered and opens the file at the same path
// again: after logrotate has moved the old one, lines go to a new file
// (nginx's USR1). Standard output is left as it is.
func (a *accessLog) reopen() error {
	if a.path == "-" {
		return nil
	}
	f, err := os.OpenFile(a.path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
	if err != nil {
		return fmt.Errorf("access log: %w", err)
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	a.w.Flush()
	old := a.out
	a.w.Reset(f)
	a.out = f
	if old != nil {
		old.Close()
	}
	return nil
}

// Close flushes what is buffered.
func (a *accessLog) Close() error {
	a.mu.Lock()
	defer a.mu.Unlock()
	err := a.w.Flush()
	if a.out != nil {
		a.out.Close()
	}
	return err
}

// wrap logs every request h answers.
func (a *accessLog) wrap(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		rec := &recorder{ResponseWriter: w, status: http.StatusOK}
		start := time.Now()
		h.ServeHTTP(rec, r)
		a.log(r, rec, start)
	})
}

func (a *accessLog) log(r *http.Request, rec *recorder, t time.Time) {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		host = r.RemoteAddr
	}
	if host == "" {
		host = "-"
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	b := a.buf[:0]
	b = append(b, host...)
	b = append(b, " - - ["...)
	b = t.AppendFormat(b, "02/Jan/2006:15:04:05 -0700")
	b = append(b, "] "...)
	b = strconv.AppendQuote(b, r.Method+" "+r.RequestURI+" "+r.Proto)
	b = append(b, ' ')
	b = strconv.AppendInt(b, int64(rec.status), 10)
	b = append(b, ' ')
	b = strconv.AppendInt(b, rec.bytes, 10)
	b = append(b, '\n')
	a.w.Write(b)
	a.buf = b
}

// recorder notes the status and body size of a response. It keeps
// ReadFrom, which is how net/http sends a file with sendfile(2), and
// Unwrap, which http.ResponseController uses.
type recorder struct {
	http.ResponseWriter
	status int
	bytes  int64
}

func (r *recorder) WriteHeader(code int) {
	r.status = code
	r.ResponseWriter.WriteHeader(code)
}

func (r *recorder) Write(p []byte) (int, error) {
	n, err := r.ResponseWriter.Write(p)
	r.bytes += int64(n)
	return n, err
}

func (r *recorder) ReadFrom(src io.Reader) (int64, error) {
	var n int64
	var err error
	if rf, ok := r.ResponseWriter.(io.ReaderFrom); ok {
		n, err = rf.ReadFrom(src)
	} else {
		n, err = io.Copy(struct{ io.Writer }{r.ResponseWriter}, src)
	}
	r.bytes += n
	return n, err
}

func (r *recorder) Unwrap() http.ResponseWriter { return r.ResponseWriter }
