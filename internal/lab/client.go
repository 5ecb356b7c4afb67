//go:build linux

package lab

import (
	"fmt"
	"os"
	"runtime"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/HdrHistogram/hdrhistogram-go"
	"github.com/herd-run/herd/internal/held"
	"golang.org/x/sys/unix"
)

// The load generator shares the machine with the server it measures, so
// what it costs is taken from the server: with a goroutine per client on
// net.Conn (Go's netpoller, a timer per deadline, a goroutine parked and
// woken per read) it used 1.2 CPUs of this 2-core machine to drive about
// 10,000 new connections a second, 121–143 µs per request against the
// server's 45–55,
// and the strategies whose path runs through two processes lost the most
// to it (preempted more often: docs/LAB.md, forced/req). So the clients
// are driven as wrk drives them: every connection of a loop is a
// non-blocking socket on one epoll instance, served by one OS thread in
// raw system calls, with one read buffer for all. What a loop costs is
// measured too (Result.ClientCPU), from the thread's own CPU time: 75 µs
// per request on that load, wrk's 73–77 (results/lab-client.txt).

// loop drives a load's clients from one thread.
type loop struct {
	load    *Load
	ep      int
	to      unix.Sockaddr
	family  int
	source  func() *unix.SockaddrInet4 // a source address to bind to, or nil
	request []byte
	conns   []*clientConn
	retry   []*clientConn // to start their next request on the loop's next turn
	buf     []byte        // read buffer, shared by the loop's connections
	held    bool          // epoll_wait keeps the thread's P (see wait)

	// Given by Load.Run.
	take   func() bool // takes one request from the load's count; false: spent
	over   func(now time.Time) bool
	done   *atomic.Int64
	cancel <-chan struct{}

	// What this loop measured.
	ok      int
	dials   int
	kinds   map[string]int
	latency *hdrhistogram.Histogram
	cpu     time.Duration
}

// clientConn is one closed-loop client: the connection it has open, if
// any, and the request it waits for.
type clientConn struct {
	slot     int // its index in the loop's conns, carried by its epoll events
	fd       int // -1: none open
	busy     bool
	dialing  bool
	start    time.Time // of the request in flight
	deadline time.Time
	resp     response
}

func newLoop(l *Load, to unix.Sockaddr, family int, request []byte, clients int) (*loop, error) {
	ep, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("lab: epoll_create1: %w", err)
	}
	lp := &loop{load: l, ep: ep, to: to, family: family, request: request, buf: make([]byte, 64<<10),
		kinds: map[string]int{}, latency: hdrhistogram.New(1, int64(time.Minute/time.Microsecond), 3)}
	for i := range clients {
		lp.conns = append(lp.conns, &clientConn{slot: i, fd: -1})
	}
	return lp, nil
}

// run drives the loop's clients until none may send another request and
// every request in flight has been answered, has failed or has timed out;
// or, at once, until cancel is closed.
func (lp *loop) run() {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	cpu0 := threadCPU()
	defer func() {
		lp.cpu = threadCPU() - cpu0
		for _, c := range lp.conns {
			lp.hangUp(c)
		}
		unix.Close(lp.ep)
	}()
	now := time.Now()
	busy := 0
	for _, c := range lp.conns {
		if lp.next(c, now) {
			busy++
		}
	}
	events := make([]unix.EpollEvent, len(lp.conns))
	lastScan := now
	for busy > 0 {
		wait := 10 * time.Millisecond
		if len(lp.retry) > 0 {
			wait = 0
		}
		n, err := lp.wait(events, wait)
		select {
		case <-lp.cancel:
			return
		default:
		}
		now = time.Now()
		if err != nil && err != unix.EINTR {
			return
		}
		for _, ev := range events[:n] {
			c := lp.conns[ev.Pad]
			if !c.busy || int32(c.fd) != ev.Fd {
				continue
			}
			if !lp.progress(c, ev.Events, now) && !lp.next(c, now) {
				busy--
			}
		}
		// Requests that outlived the load's Timeout fail; looked for every
		// 10 ms, not after every event.
		if now.Sub(lastScan) >= 10*time.Millisecond {
			lastScan = now
			for _, c := range lp.conns {
				if c.busy && c.fd >= 0 && now.After(c.deadline) {
					lp.fail(c, os.ErrDeadlineExceeded)
					if !lp.next(c, now) {
						busy--
					}
				}
			}
		}
		// Clients whose last request failed before it was sent try again,
		// once each per turn of the loop, so the others' answers are read
		// meanwhile.
		retry := lp.retry
		lp.retry = nil
		for _, c := range retry {
			if !lp.next(c, now) {
				busy--
			}
		}
	}
}

// next starts c's next request if the load allows one: on the open
// connection if it is kept alive, else on a new one. false: c is done. A
// request that fails before it is sent (a refused or impossible connect)
// is counted, and c tries again on the loop's next turn (lp.retry).
func (lp *loop) next(c *clientConn, now time.Time) bool {
	c.busy = false
	if lp.over(now) || !lp.take() {
		lp.hangUp(c)
		return false
	}
	c.busy, c.start, c.deadline = true, now, now.Add(lp.load.Timeout)
	c.resp.reset()
	var err error
	if c.fd >= 0 {
		err = lp.send(c)
	} else {
		err = lp.dial(c)
	}
	if err != nil {
		lp.fail(c, err)
		lp.retry = append(lp.retry, c)
	}
	return true
}

// dial opens c's connection; the request goes once connect completes.
func (lp *loop) dial(c *clientConn) error {
	fd, err := unix.Socket(lp.family, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return err
	}
	if a := lp.source(); a != nil {
		// IP_BIND_ADDRESS_NO_PORT: the port is chosen at connect(2),
		// against the whole 4-tuple, instead of at bind(2), where the
		// kernel must find a port free for every destination and gives up
		// with EAGAIN under churn.
		if err := unix.SetsockoptInt(fd, unix.IPPROTO_IP, unix.IP_BIND_ADDRESS_NO_PORT, 1); err != nil {
			unix.Close(fd)
			return err
		}
		if err := unix.Bind(fd, a); err != nil {
			unix.Close(fd)
			return err
		}
	}
	c.fd, c.dialing = fd, true
	// Edge-triggered, both ways, registered once: the connect's completion
	// is the first EPOLLOUT, and an answer's arrival an EPOLLIN edge.
	ev := unix.EpollEvent{Events: unix.EPOLLIN | unix.EPOLLOUT | unix.EPOLLRDHUP | unix.EPOLLET, Fd: int32(fd), Pad: int32(c.slot)}
	if err := unix.EpollCtl(lp.ep, unix.EPOLL_CTL_ADD, fd, &ev); err != nil {
		return err
	}
	if err := unix.Connect(fd, lp.to); err != nil && err != unix.EINPROGRESS {
		return err
	}
	return nil
}

// send writes the request, which fits any socket's send buffer.
func (lp *loop) send(c *clientConn) error {
	n, err := unix.Write(c.fd, lp.request)
	if err != nil {
		return err
	}
	if n != len(lp.request) {
		return fmt.Errorf("lab: request cut at %d of %d bytes", n, len(lp.request))
	}
	return nil
}

// progress handles an event on c's connection. false: the request ended
// (answered or failed) and the next may start.
func (lp *loop) progress(c *clientConn, events uint32, now time.Time) bool {
	if c.dialing {
		if events&(unix.EPOLLOUT|unix.EPOLLERR|unix.EPOLLHUP) == 0 {
			return true
		}
		c.dialing = false
		if errno, err := unix.GetsockoptInt(c.fd, unix.SOL_SOCKET, unix.SO_ERROR); err != nil || errno != 0 {
			if err == nil {
				err = syscall.Errno(errno)
			}
			lp.fail(c, err)
			return false
		}
		lp.dials++ // connections opened, as the server accepted them
		if err := lp.send(c); err != nil {
			lp.fail(c, err)
			return false
		}
		return true
	}
	if events&(unix.EPOLLIN|unix.EPOLLRDHUP|unix.EPOLLERR|unix.EPOLLHUP) == 0 {
		return true
	}
	for {
		n, err := unix.Read(c.fd, lp.buf)
		switch {
		case err == unix.EAGAIN:
			return true
		case err == unix.EINTR:
			continue
		case err != nil:
			lp.fail(c, err)
			return false
		}
		done, perr := c.resp.feed(lp.buf[:n], n == 0)
		if perr != nil {
			lp.fail(c, perr)
			return false
		}
		if done {
			lp.answered(c, now)
			return false
		}
		if n == 0 {
			return true // unreachable: feed ends or fails at EOF
		}
	}
}

// answered records c's answer and closes the connection unless it is
// kept alive.
func (lp *loop) answered(c *clientConn, now time.Time) {
	l := lp.load
	c.busy = false
	lp.done.Add(1)
	r := &c.resp
	if r.status != l.WantStatus || (l.WantLength >= 0 && r.bodyLen != l.WantLength) {
		lp.hangUp(c)
		lp.kinds[errorKind(&badResponse{status: r.status, length: r.bodyLen})]++
		return
	}
	lp.ok++
	lp.latency.RecordValue(int64(now.Sub(c.start) / time.Microsecond))
	if !l.KeepAlive || r.close {
		lp.hangUp(c)
	}
}

// fail records c's request as failed, unless the load's time is up (then
// it was cut, not answered wrongly), and closes its connection.
func (lp *loop) fail(c *clientConn, err error) {
	c.busy = false
	lp.hangUp(c)
	if lp.over(time.Now()) {
		return
	}
	lp.done.Add(1)
	lp.kinds[errorKind(err)]++
}

func (lp *loop) hangUp(c *clientConn) {
	if c.fd >= 0 {
		unix.Close(c.fd) // also takes it out of the epoll set
		c.fd, c.dialing = -1, false
	}
}

// wait is epoll_wait for at most timeout. Where herd's own loop would hold
// its P (held.CanHold: a P to spare for the rest of the process, and
// preemption by signal) it is raw and keeps the thread's P: an ordinary
// wait that outlasts sysmon's tick has its P taken and handed to another
// thread, a context switch per wait that would be the client's noise in
// the server's count.
func (lp *loop) wait(events []unix.EpollEvent, timeout time.Duration) (int, error) {
	if !lp.held {
		return unix.EpollWait(lp.ep, events, int(timeout/time.Millisecond))
	}
	return held.EpollWait(lp.ep, events, int(timeout/time.Millisecond))
}

// threadCPU is the CPU time the calling thread has used.
func threadCPU() time.Duration {
	var ru unix.Rusage
	if unix.Getrusage(unix.RUSAGE_THREAD, &ru) != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
