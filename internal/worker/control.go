//go:build linux

package worker

import (
	"fmt"
	"os"
	"sync"
	"time"

	"github.com/herd-run/herd/internal/accept"
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
func (c *control) read(gone chan<- struct{}) {
	defer close(gone)
	buf := make([]byte, proto.MaxMsg)
	oob := make([]byte, unix.CmsgSpace(4*4))
	var y accept.Yielder
	for {
		y.Yield(time.Now())
		n, oobn, _, _, err := unix.Recvmsg(c.fd, buf, oob, unix.MSG_CMSG_CLOEXEC)
		if err == unix.EINTR {
			continue
		}
		if err != nil || (n == 0 && oobn == 0) {
			return
		}
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
