//go:build linux

package worker

import (
	"bytes"
	"fmt"
	"io"
	"log/slog"
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
// Lines go into a 64 KiB buffer that is written every second, when full
// and at exit, so the hot path costs a mutex and a formatted append, not a
// write(2).
//
// A write that fails (a full disk, an I/O error) loses the lines it
// carried, as nginx's buffered logs do, and the next write tries again: a
// disk that fills for a minute costs that minute's lines, not every line
// until the worker is replaced (bufio.Writer keeps its first error for
// good). The failure is logged once, and the recovery with the count of
// lines lost.
type accessLog struct {
	mu      sync.Mutex
	path    string
	out     io.Writer // the file, or standard output
	closer  io.Closer // the file, or nil for standard output
	buf     []byte    // lines not yet written
	line    []byte    // the line being formatted (log)
	events  *slog.Logger
	failing bool // the last write failed
	lost    int  // lines lost since it started failing
}

// accessLogBuffer is how much of the log a worker holds before it writes.
const accessLogBuffer = 64 << 10

// openAccessLog opens path for appending ("-": standard output); events
// hears of failed writes.
func openAccessLog(path string, events *slog.Logger) (*accessLog, error) {
	a := &accessLog{path: path, out: os.Stdout, events: events}
	if path != "-" {
		f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
		if err != nil {
			return nil, fmt.Errorf("access log: %w", err)
		}
		a.out, a.closer = f, f
	}
	go func() {
		for range time.Tick(time.Second) {
			a.mu.Lock()
			a.flush()
			a.mu.Unlock()
		}
	}()
	return a, nil
}

// Write adds one formatted line (the native engine formats its own).
func (a *accessLog) Write(line []byte) (int, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.add(line)
	return len(line), nil
}

// add buffers a line, writing what is buffered first if it would not fit.
// Called with mu held.
func (a *accessLog) add(line []byte) {
	if len(a.buf) > 0 && len(a.buf)+len(line) > accessLogBuffer {
		a.flush()
	}
	a.buf = append(a.buf, line...)
}

// flush writes what is buffered. The buffer is emptied either way: lines
// a failed write did not carry are lost, and counted. Called with mu held.
func (a *accessLog) flush() error {
	if len(a.buf) == 0 {
		return nil
	}
	n, err := a.out.Write(a.buf)
	switch {
	case err != nil:
		a.lost += bytes.Count(a.buf[n:], []byte("\n"))
		if !a.failing {
			a.failing = true
			a.events.Error("access log: write failed; lines are lost until a write succeeds", "path", a.path, "err", err)
		}
	case a.failing:
		a.events.Warn("access log: writing again", "path", a.path, "lines_lost", a.lost)
		a.failing, a.lost = false, 0
	}
	a.buf = a.buf[:0]
	return err
}

// reopen writes what is buffered and opens the file at the same path
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
	a.flush()
	a.closer.Close()
	a.out, a.closer = f, f
	return nil
}

// Close writes what is buffered.
func (a *accessLog) Close() error {
	a.mu.Lock()
	defer a.mu.Unlock()
	err := a.flush()
	if a.closer != nil {
		a.closer.Close()
	}
	return err
}

// log writes the line of one answer: its status and the body bytes sent.
func (a *accessLog) log(r *http.Request, status int, sent int64, t time.Time) {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		host = r.RemoteAddr
	}
	if host == "" {
		host = "-"
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	b := a.line[:0]
	b = append(b, host...)
	b = append(b, " - - ["...)
	b = t.AppendFormat(b, "02/Jan/2006:15:04:05 -0700")
	b = append(b, "] "...)
	b = strconv.AppendQuote(b, r.Method+" "+r.RequestURI+" "+r.Proto)
	b = append(b, ' ')
	b = strconv.AppendInt(b, int64(status), 10)
	b = append(b, ' ')
	b = strconv.AppendInt(b, sent, 10)
	b = append(b, '\n')
	a.add(b)
	a.line = b
}
