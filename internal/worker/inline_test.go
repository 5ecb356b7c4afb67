package worker

import (
	"net"
	"testing"

	"github.com/herd-run/herd/internal/accept"
	"github.com/herd-run/herd/internal/httpd"
	"github.com/herd-run/herd/internal/shm"
)

// The strategies whose wait is an epoll_wait run inside the native engine's
// loop: they must keep satisfying the interfaces the engine defines, or
// the worker would silently fall back to a thread hop per connection.
func TestInlineStrategies(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	f, _ := l.(*net.TCPListener).File()
	defer f.Close()
	region, err := shm.Create("test", shm.Size(1))
	if err != nil {
		t.Fatal(err)
	}
	defer region.Close()
	board, _ := shm.NewScoreboard(region.Bytes(), 1)
	for _, name := range accept.Names() {
		strat, err := accept.New(name, accept.Config{
			Listeners: []accept.Listener{{FD: int(f.Fd()), Addr: l.Addr().String()}},
			Stats:     board.Record(board.Claim(0, 1, 0)), Mutex: board.AcceptMutex(),
			LockFile: t.TempDir() + "/lock", Passes: func(func(accept.Passed)) func() { return func() {} },
		})
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		_, inline := strat.(httpd.Inline)
		_, cycler := strat.(httpd.Cycler)
		wantInline := name == "epoll" || name == "exclusive" || name == "nginx"
		if inline != wantInline || cycler != (name == "nginx") {
			t.Errorf("%s: Inline %v, Cycler %v", name, inline, cycler)
		}
	}
}

// herd serve's TLS workers collect garbage a fifth as often, unless GOGC
// says otherwise; a program's workers keep the runtime's default.
func TestGCPercent(t *testing.T) {
	for _, tc := range []struct {
		env, engine string
		tls         bool
		want        int
		set         bool
	}{
		{"", "native", true, 400, true},
		{"100", "native", true, 0, false},
		{"", "native", false, 0, false},
		{"", "", true, 0, false},
	} {
		if got, set := gcPercent(tc.env, tc.engine, tc.tls); got != tc.want || set != tc.set {
			t.Errorf("gcPercent(%q, %q, %v) = %d, %v; want %d, %v", tc.env, tc.engine, tc.tls, got, set, tc.want, tc.set)
		}
	}
}
