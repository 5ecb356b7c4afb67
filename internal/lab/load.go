//go:build linux

// Package lab is herd's laboratory: a closed-loop HTTP load generator, a
// runner that starts a server per cell of a matrix of strategies, worker
// counts, modes and concurrencies and reads what each worker did, and the
// reports (table, JSON, an HTML page with charts).
package lab

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/HdrHistogram/hdrhistogram-go"
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
	// over: the time bound has passed. The clock is checked too because a
	// context's timer can fire a little after its deadline.
	over := func() bool { return ctx.Err() != nil || !time.Now().Before(end) }

	var (
		issued, done atomic.Int64
		mu           sync.Mutex
		wg           sync.WaitGroup
	)
	res := &Result{ErrorKinds: map[string]int{}, Latency: hdrhistogram.New(1, int64(time.Minute/time.Microsecond), 3)}
	sources := sourceAddrs(l.Addr, !l.KeepAlive)
	request := []byte("GET " + l.Path + " HTTP/1.1\r\nHost: " + l.Addr + "\r\nUser-Agent: herd-bench\r\n")
	if l.KeepAlive {
		request = append(request, "\r\n"...)
	} else {
		request = append(request, "Connection: close\r\n\r\n"...)
	}
	stopProgress := l.progress(&done)
	start := time.Now()
	for range l.Concurrency {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c := &client{load: &l, request: request, source: sources}
			defer c.close()
			local := hdrhistogram.New(1, int64(time.Minute/time.Microsecond), 3)
			ok, conns := 0, 0
			kinds := map[string]int{}
			for !over() {
				if l.Requests > 0 && issued.Add(1) > int64(l.Requests) {
					break
				}
				t0 := time.Now()
				err := c.do(ctx)
				if err != nil && over() {
					// The time bound cut this request (net reports a dial
					// cut by a context deadline as "i/o timeout"): not a
					// server error, and not a request.
					break
				}
				done.Add(1)
				if err != nil {
					kinds[errorKind(err)]++
					continue
				}
				ok++
				local.RecordValue(int64(time.Since(t0) / time.Microsecond))
			}
			conns = c.dials
			mu.Lock()
			defer mu.Unlock()
			res.Requests += ok
			res.Connections += conns
			for k, n := range kinds {
				res.ErrorKinds[k] += n
				res.Errors += n
			}
			res.Latency.Merge(local)
		}()
	}
	wg.Wait()
	res.Elapsed = time.Since(start)
	stopProgress()
	return res, nil
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
func sourceAddrs(target string, spread bool) func() *net.TCPAddr {
	host, _, _ := net.SplitHostPort(target)
	ip, err := netip.ParseAddr(host)
	if !spread || err != nil || !ip.Is4() {
		return func() *net.TCPAddr { return nil }
	}
	var n atomic.Uint64
	return func() *net.TCPAddr {
		k := n.Add(1)
		return &net.TCPAddr{IP: net.IPv4(127, byte(1+(k/62500)%200), byte((k/250)%250), byte(2+k%250))}
	}
}

// client is one closed-loop client.
type client struct {
	load    *Load
	request []byte
	source  func() *net.TCPAddr
	conn    net.Conn
	br      *bufio.Reader
	dials   int
}

func (c *client) close() {
	if c.conn != nil {
		c.conn.Close()
		c.conn = nil
	}
}

func (c *client) do(ctx context.Context) error {
	l := c.load
	if c.conn == nil {
		d := net.Dialer{Timeout: l.Timeout}
		if a := c.source(); a != nil {
			d.LocalAddr = a
			d.Control = bindNoPort
		}
		conn, err := d.DialContext(ctx, "tcp", l.Addr)
		if err != nil {
			return err
		}
		c.dials++
		c.conn = conn
		c.br = bufio.NewReaderSize(conn, 16<<10)
	}
	c.conn.SetDeadline(time.Now().Add(l.Timeout))
	if _, err := c.conn.Write(c.request); err != nil {
		c.close()
		return err
	}
	resp, err := http.ReadResponse(c.br, nil)
	if err != nil {
		c.close()
		return err
	}
	n, err := io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if err != nil {
		c.close()
		return err
	}
	if resp.StatusCode != l.WantStatus || (l.WantLength >= 0 && n != l.WantLength) {
		c.close()
		return &badResponse{status: resp.StatusCode, length: n}
	}
	if !l.KeepAlive || resp.Close {
		c.close()
	}
	return nil
}

// bindNoPort sets IP_BIND_ADDRESS_NO_PORT on a socket about to be bound
// to a source address: the port is then chosen at connect(2), against the
// whole 4-tuple, instead of at bind(2), where the kernel must find a port
// free for every destination and gives up with EAGAIN under churn.
func bindNoPort(_, _ string, rc syscall.RawConn) error {
	var err error
	rc.Control(func(fd uintptr) {
		err = unix.SetsockoptInt(int(fd), unix.IPPROTO_IP, unix.IP_BIND_ADDRESS_NO_PORT, 1)
	})
	return err
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
