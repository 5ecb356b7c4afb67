//go:build linux

// Package lab is herd's laboratory: a closed-loop HTTP load generator, a
// runner that starts a server per cell of a matrix of strategies, worker
// counts, modes and concurrencies and reads what each worker did, and the
// reports (table, JSON, an HTML page with charts).
package lab

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"runtime"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/HdrHistogram/hdrhistogram-go"
	"github.com/herd-run/herd/internal/held"
	"golang.org/x/sys/unix"
)

// Load describes one closed-loop load: Concurrency clients, each sending a
// request, waiting for the whole answer, and sending the next.
type Load struct {
	Addr        string        // host:port; must be a loopback address
	Path        string        // default "/"
	Concurrency int           // clients; default 1
	KeepAlive   bool          // reuse connections; otherwise one connection per request
	Requests    int           // stop after this many requests (0: no count bound)
	Duration    time.Duration // stop after this long (0: no time bound)
	Timeout     time.Duration // per request; default 5s
	WantStatus  int           // default 200
	WantLength  int64         // expected body length; -1 for any
	// Progress, if set, is called with the number of finished requests,
	// at most every 100ms.
	Progress func(done int)
}

// maxDuration bounds every load, whatever it asks for: a load loop always
// stops by itself.
const maxDuration = 10 * time.Minute

// Result is what a load measured.
type Result struct {
	Requests    int            // answered as expected
	Errors      int            // failed, of any kind
	ErrorKinds  map[string]int // refused, reset, timeout, bad_response, other
	Connections int            // connections opened
	Elapsed     time.Duration
	Latency     *hdrhistogram.Histogram // microseconds, successful requests
	ClientCPU   time.Duration           // CPU time the load generator's thread used
}

// RPS is successful requests per second.
func (r *Result) RPS() float64 {
	if r.Elapsed <= 0 {
		return 0
	}
	return float64(r.Requests) / r.Elapsed.Seconds()
}

// Check verifies that a load only targets this machine's loopback
// addresses: the lab never sends traffic anywhere else.
func checkAddr(addr string) error {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("lab: target %q: %w", addr, err)
	}
	if host == "localhost" {
		return nil
	}
	ip, err := netip.ParseAddr(host)
	if err != nil || !ip.IsLoopback() {
		return fmt.Errorf("lab: target %q is not a loopback address; the lab only loads 127.0.0.0/8 and ::1", addr)
	}
	return nil
}

// Run sends the load and returns what it measured. It stops at the first of
// Requests, Duration, maxDuration or ctx's end.
func (l Load) Run(ctx context.Context) (*Result, error) {
	if err := checkAddr(l.Addr); err != nil {
		return nil, err
	}
	if l.Requests <= 0 && l.Duration <= 0 {
		return nil, errors.New("lab: a load needs a request count or a duration")
	}
	if l.Concurrency < 1 {
		l.Concurrency = 1
	}
	if l.Path == "" {
		l.Path = "/"
	}
	if l.Timeout <= 0 {
		l.Timeout = 5 * time.Second
	}
	if l.WantStatus == 0 {
		l.WantStatus = 200
	}
	d := maxDuration
	if l.Duration > 0 && l.Duration < d {
		d = l.Duration
	}
	ctx, cancel := context.WithTimeout(ctx, d)
	defer cancel()
	end, _ := ctx.Deadline()
	to, family, err := sockaddr(l.Addr)
	if err != nil {
		return nil, err
	}
	var issued, done atomic.Int64
	request := []byte("GET " + l.Path + " HTTP/1.1\r\nHost: " + l.Addr + "\r\nUser-Agent: herd-bench\r\n")
	if l.KeepAlive {
		request = append(request, "\r\n"...)
	} else {
		request = append(request, "Connection: close\r\n\r\n"...)
	}
	lp, err := newLoop(&l, to, family, request, l.Concurrency)
	if err != nil {
		return nil, err
	}
	lp.source = sourceAddrs(l.Addr, !l.KeepAlive)
	lp.take = func() bool { return l.Requests <= 0 || issued.Add(1) <= int64(l.Requests) }
	// The clock is checked too because a context's timer can fire a little
	// after its deadline.
	lp.over = func(now time.Time) bool { return ctx.Err() != nil || !now.Before(end) }
	lp.done, lp.cancel = &done, ctx.Done()
	lp.held = held.CanHold(runtime.GOMAXPROCS(0))
	stopProgress := l.progress(&done)
	start := time.Now()
	lp.run()
	res := &Result{Elapsed: time.Since(start), Requests: lp.ok, Connections: lp.dials, ErrorKinds: lp.kinds,
		Latency: lp.latency, ClientCPU: lp.cpu}
	for _, n := range lp.kinds {
		res.Errors += n
	}
	stopProgress()
	return res, nil
}

// sockaddr resolves a load's target once, for the loop's connect calls.
func sockaddr(addr string) (unix.Sockaddr, int, error) {
	a, err := net.ResolveTCPAddr("tcp", addr)
	if err != nil {
		return nil, 0, fmt.Errorf("lab: target %q: %w", addr, err)
	}
	if ip4 := a.IP.To4(); ip4 != nil {
		return &unix.SockaddrInet4{Port: a.Port, Addr: [4]byte(ip4)}, unix.AF_INET, nil
	}
	sa := &unix.SockaddrInet6{Port: a.Port, Addr: [16]byte(a.IP.To16())}
	if a.Zone != "" {
		ifi, err := net.InterfaceByName(a.Zone)
		if err != nil {
			return nil, 0, fmt.Errorf("lab: target %q: %w", addr, err)
		}
		sa.ZoneId = uint32(ifi.Index)
	}
	return sa, unix.AF_INET6, nil
}

func (l *Load) progress(done *atomic.Int64) (stop func()) {
	if l.Progress == nil {
		return func() {}
	}
	t := time.NewTicker(100 * time.Millisecond)
	quit := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			select {
			case <-t.C:
				l.Progress(int(done.Load()))
			case <-quit:
				t.Stop()
				l.Progress(int(done.Load()))
				return
			}
		}
	}()
	return func() { close(quit); wg.Wait() }
}

// sourceAddrs spreads the connections of a connection-per-request load
// over 127.0.0.0/8 when the target is IPv4 loopback, a new source address
// for every connection (127.1.0.2 onwards, never the server's 127.0.0.1):
// the server closes first, so each finished connection leaves its 4-tuple
// in TIME_WAIT for a minute, and with a fixed source address a fast load
// soon collides with its own old connections (SYNs dropped, clients time
// out) or runs out of the ~28,000 ephemeral ports.
//
// The addresses go straight to bind(2): the loop that calls it binds each
// new socket to the next one.
func sourceAddrs(target string, spread bool) func() *unix.SockaddrInet4 {
	host, _, _ := net.SplitHostPort(target)
	ip, err := netip.ParseAddr(host)
	if !spread || err != nil || !ip.Is4() {
		return func() *unix.SockaddrInet4 { return nil }
	}
	var n uint64
	return func() *unix.SockaddrInet4 {
		n++
		return &unix.SockaddrInet4{Addr: [4]byte{127, byte(1 + (n/62500)%200), byte((n / 250) % 250), byte(2 + n%250)}}
	}
}

type badResponse struct {
	status int
	length int64
}

func (b *badResponse) Error() string {
	return fmt.Sprintf("bad response: status %d, %d bytes", b.status, b.length)
}

func errorKind(err error) string {
	var bad *badResponse
	var ne net.Error
	switch {
	case errors.As(err, &bad):
		return "bad_response"
	case errors.Is(err, syscall.ECONNREFUSED):
		return "refused"
	case errors.Is(err, syscall.ECONNRESET), errors.Is(err, syscall.EPIPE),
		errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		return "reset"
	case errors.Is(err, os.ErrDeadlineExceeded), errors.As(err, &ne) && ne.Timeout():
		return "timeout"
	case errors.Is(err, syscall.EADDRNOTAVAIL):
		return "no_source_port"
	}
	return "other"
}
