//go:build linux

package worker

import (
	"bytes"
	"log/slog"
	"strings"
	"syscall"
	"testing"
)

// diskWriter is a file whose disk can be full.
type diskWriter struct {
	full bool
	got  bytes.Buffer
}

func (d *diskWriter) Write(p []byte) (int, error) {
	if d.full {
		return 0, syscall.ENOSPC
	}
	return d.got.Write(p)
}

// A failed write loses the lines it carried, and only those: the log goes
// on once the disk has room again, and says what happened, once each way.
// (bufio.Writer, used before, kept its first error and wrote nothing more
// until the worker was replaced or USR1 reopened the file.)
func TestAccessLogWritesAgainAfterAFailure(t *testing.T) {
	disk := &diskWriter{}
	var events bytes.Buffer
	a := &accessLog{path: "access.log", out: disk, events: slog.New(slog.NewTextHandler(&events, nil))}
	line := func(s string) { a.Write([]byte(s + "\n")) }

	line("one")
	a.flush()
	disk.full = true
	line("two")
	line("three")
	if err := a.flush(); err == nil {
		t.Fatal("a write to a full disk reported no error")
	}
	line("four")
	a.flush()
	disk.full = false
	line("five")
	a.flush()
	line("six")
	a.Close()

	if got := disk.got.String(); got != "one\nfive\nsix\n" {
		t.Errorf("the log holds %q; want one, five and six", got)
	}
	ev := events.String()
	if n := strings.Count(ev, "access log: write failed"); n != 1 {
		t.Errorf("the failure was logged %d times; want once:\n%s", n, ev)
	}
	if !strings.Contains(ev, "access log: writing again") || !strings.Contains(ev, "lines_lost=3") {
		t.Errorf("the recovery was not logged with the 3 lines lost:\n%s", ev)
	}
}

// A full buffer is written before the line that would not fit.
func TestAccessLogWritesWhenFull(t *testing.T) {
	disk := &diskWriter{}
	a := &accessLog{path: "access.log", out: disk, events: slog.New(slog.DiscardHandler)}
	long := strings.Repeat("x", 1000) + "\n"
	for range accessLogBuffer/len(long) + 1 {
		a.Write([]byte(long))
	}
	if disk.got.Len() == 0 || disk.got.Len() > accessLogBuffer {
		t.Errorf("%d bytes written before a flush; want one buffer's worth (at most %d)", disk.got.Len(), accessLogBuffer)
	}
}
