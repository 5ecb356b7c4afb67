//go:build linux

package worker

import (
	"fmt"
	"os"
	"sync/atomic"

	"github.com/herd-run/herd/internal/accept"
	"github.com/herd-run/herd/internal/proto"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/common/expfmt"
	"golang.org/x/sys/unix"
)

// control is the worker's end of its SOCK_SEQPACKET socket to the master.
// The messages are internal/proto's: the worker sends Ready, Recycle and,
// under fdpass, Ack; the master sends FD messages carrying a descriptor
// (SCM_RIGHTS). One goroutine reads
// it, and its EOF is how the worker learns that the master is gone, however
// it died: a socket's EOF survives SIGKILL, while PR_SET_PDEATHSIG would be
// tied to the master's spawning OS thread, which the Go runtime may retire.
type control struct {
	fd      int
	passed  chan accept.Passed
	passing atomic.Bool
	tickets chan [][32]byte     // TLS session ticket keys from the master, the latest
	metrics prometheus.Gatherer // the program's own metrics, for the master's scrapes; or nil
}

func newControl(fd int) *control {
	c := &control{fd: fd, passed: make(chan accept.Passed, 256), tickets: make(chan [][32]byte, 1)}
	c.passing.Store(true)
	return c
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

// stopPassing makes the reader refuse further descriptors: it closes them
// unacknowledged, and the master, which kept a copy, sends them elsewhere
// once this worker has exited.
func (c *control) stopPassing() { c.passing.Store(false) }

// read runs until the master's end closes, then closes gone.
func (c *control) read(gone chan<- struct{}) {
	defer close(gone)
	buf := make([]byte, proto.MaxMsg)
	oob := make([]byte, unix.CmsgSpace(4*4))
	for {
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
		if err != nil || msg.Kind != proto.FD || len(fds) != 1 || !c.passing.Load() {
			for _, fd := range fds {
				unix.Close(fd)
			}
			continue
		}
		p := accept.Passed{FD: fds[0], Ack: func() { c.send(proto.Msg{Kind: proto.Ack, Seq: msg.Seq}) }}
		select {
		case c.passed <- p:
		default:
			unix.Close(fds[0]) // the strategy is not keeping up; the master resends later
		}
	}
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
