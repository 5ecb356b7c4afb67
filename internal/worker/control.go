//go:build linux

package worker

import (
	"fmt"
	"os"
	"sync"
	"time"
	"unsafe"

	"github.com/herd-run/herd/internal/accept"
	"github.com/herd-run/herd/internal/held"
	"github.com/herd-run/herd/internal/proto"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/common/expfmt"
	"golang.org/x/sys/unix"
)

// control is the worker's end of its SOCK_SEQPACKET socket to the master.
// The messages are internal/proto's: the worker sends Ready, Recycle and,
// Failed; the master sends FD messages carrying a descriptor (SCM_RIGHTS)
// under fdpass, ticket keys, and metrics requests. One goroutine reads it, and its EOF is how the worker learns that the master is gone, however
// it died: a socket's EOF survives SIGKILL, while PR_SET_PDEATHSIG would be
// tied to the master's spawning OS thread, which the Go runtime may retire.
type control struct {
	fd      int
	mu      sync.Mutex          // held while a passed descriptor is taken
	take    func(accept.Passed) // fdpass: the strategy's, while it accepts; or nil
	early   []accept.Passed     // passed before the strategy took over
	stopped bool                // the strategy stopped: refuse what comes
	tickets chan [][32]byte     // TLS session ticket keys from the master, the latest
	metrics prometheus.Gatherer // the program's own metrics, for the master's scrapes; or nil
}

func newControl(fd int) *control {
	return &control{fd: fd, tickets: make(chan [][32]byte, 1)}
}

// passes is accept.Config.Passes: take is called on the reading thread,
// so a passed connection is served where it was received.
func (c *control) passes(take func(accept.Passed)) (stop func()) {
	c.mu.Lock()
	c.take = take
	for _, p := range c.early {
		take(p)
	}
	c.early = nil
	c.mu.Unlock()
	return func() {
		c.mu.Lock()
		c.take, c.stopped = nil, true
		c.mu.Unlock()
	}
}

func (c *control) send(msg proto.Msg) error {
	b := msg.Encode()
	for {
		_, err := unix.Write(c.fd, b)
		if err != unix.EINTR {
			if err != nil {
				return fmt.Errorf("worker: control socket: %w", err)
			}
			return nil
		}
	}
}

// read runs until the master's end closes, then closes gone.
//
// Under fdpass this thread receives every connection, and while messages
// come it waits as the engine's loop does (httpd's waiter): in a raw
// recvmsg that keeps its P, so that sysmon does not take the P of a wait
// that outlasts its tick and then poll every 20µs — 2.39 context switches
// per connection against 2.49 made the ordinary way (medians of eight
// interleaved herd bench --strategies fdpass runs, results/loop-wait.txt).
// A held wait is bounded by SO_RCVTIMEO, which also makes the runtime's
// preemption signal end it with EINTR rather than restart it, so a
// stop-the-world never waits on it. After a second without messages the
// wait is the ordinary one, without a bound: an idle worker sleeps. The
// rule is held.Waits, the accepting threads' too; a held wait does
// not yield, which took fdpass from 2.52 to 2.38 switches per connection
// (medians of five interleaved runs, results/loop-wait.txt).
func (c *control) read(gone chan<- struct{}) {
	defer close(gone)
	buf := make([]byte, proto.MaxMsg)
	oob := make([]byte, unix.CmsgSpace(4*4))
	waits := held.NewWaits(held.IdleAfter)
	keep := false     // SO_RCVTIMEO is held.Bound
	now := time.Now() // when the last wait ended
	for {
		var n, oobn int
		var err error
		if hold := waits.Before(now); hold != keep {
			tv := unix.Timeval{} // no bound
			if hold {
				tv = unix.NsecToTimeval(held.Bound.Nanoseconds())
			}
			if unix.SetsockoptTimeval(c.fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv) == nil {
				keep = hold
			}
		}
		if keep {
			n, oobn, err = rawRecvmsg(c.fd, buf, oob)
		} else {
			n, oobn, _, _, err = unix.Recvmsg(c.fd, buf, oob, unix.MSG_CMSG_CLOEXEC)
		}
		now = time.Now()
		if err == unix.EINTR || err == unix.EAGAIN {
			continue
		}
		if err != nil || (n == 0 && oobn == 0) {
			return
		}
		waits.Came(now)
		fds := parseRights(oob[:oobn])
		msg, err := proto.Decode(buf[:n])
		if err == nil && msg.Kind == proto.Gather && len(fds) == 1 {
			go c.gather(fds[0])
			continue
		}
		if err == nil && msg.Kind == proto.TicketKeys {
			if keys, err := decodeTicketKeys(msg.Text); err == nil {
				select { // keep only the latest
				case <-c.tickets:
				default:
				}
				c.tickets <- keys
			}
		}
		if err == nil && msg.Kind == proto.FD && len(fds) == 1 && c.pass(accept.Passed{FD: fds[0], Seq: msg.Seq}) {
			continue
		}
		for _, fd := range fds {
			unix.Close(fd)
		}
	}
}

// pass gives a passed descriptor to the strategy, or keeps it for the
// strategy if it has not started yet (the master sends as soon as the
// worker is ready). false: it no longer accepts (the worker is stopping);
// the descriptor is closed without being taken, and the master, which kept
// a copy, sends it elsewhere once this worker has exited.
func (c *control) pass(p accept.Passed) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	switch {
	case c.take != nil:
		c.take(p)
	case !c.stopped:
		c.early = append(c.early, p)
	default:
		return false
	}
	return true
}

func parseRights(oob []byte) []int {
	msgs, err := unix.ParseSocketControlMessage(oob)
	if err != nil {
		return nil
	}
	var fds []int
	for _, m := range msgs {
		if r, err := unix.ParseUnixRights(&m); err == nil {
			fds = append(fds, r...)
		}
	}
	return fds
}

// gather writes the program's metrics, in the text format, to the pipe the
// master passed, and closes it: an empty answer if there are none.
func (c *control) gather(fd int) {
	f := os.NewFile(uintptr(fd), "metrics")
	defer f.Close()
	if c.metrics == nil {
		return
	}
	families, err := c.metrics.Gather()
	if err != nil && len(families) == 0 {
		return
	}
	enc := expfmt.NewEncoder(f, expfmt.NewFormat(expfmt.TypeTextPlain))
	for _, mf := range families {
		enc.Encode(mf)
	}
}

// rawRecvmsg is unix.Recvmsg made raw (the scheduler is not told), without
// the sender's address.
func rawRecvmsg(fd int, p, oob []byte) (n, oobn int, err error) {
	iov := unix.Iovec{Base: &p[0]}
	iov.SetLen(len(p))
	var msg unix.Msghdr
	msg.Iov = &iov
	msg.Iovlen = 1
	msg.Control = &oob[0]
	msg.SetControllen(len(oob))
	r, _, e := unix.RawSyscall(unix.SYS_RECVMSG, uintptr(fd), uintptr(unsafe.Pointer(&msg)), unix.MSG_CMSG_CLOEXEC)
	if e != 0 {
		return 0, 0, e
	}
	return int(r), int(msg.Controllen), nil
}
