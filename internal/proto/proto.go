// Package proto is the protocol between a herd master and the processes it
// starts, in one place for both sides: which descriptors a child inherits
// and where, the environment variables that tell a process what it is,
// and the messages on a worker's control socket.
//
// Go cannot fork, so every child is the same binary executed again;
// exec.Cmd.ExtraFiles numbers inherited descriptors from 3.
package proto

import (
	"errors"
	"os"
	"os/signal"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// A worker inherits, in this order:
const (
	CtrlFD          = 3 // SOCK_SEQPACKET to the master: the messages below, and EOF when the master dies
	ShmFD           = 4 // the scoreboard memfd
	FirstListenerFD = 5 // the listening sockets, in the order of the worker's spec
)

// Standard output and error are the master's own, shared by its workers.
// SurviveBrokenPipes keeps a process alive when they are a pipe whose
// reader has gone (`herd serve 2>&1 | logger`, a log collector restarted):
// Go ends a program that writes there with SIGPIPE unless it asks for the
// signal, and the master's next log line would take the whole service
// down, a worker's would kill it. Asked for, the write fails with EPIPE and
// the line is lost, as in nginx, which ignores SIGPIPE. The signal is
// caught rather than ignored because an ignored signal stays ignored
// across exec, into every program a handler starts. It returns the undo.
func SurviveBrokenPipes() (undo func()) {
	c := make(chan os.Signal, 1) // never read: a full channel drops the signal
	signal.Notify(c, unix.SIGPIPE)
	return func() { signal.Stop(c) }
}

// WorkerEnv carries a worker's spec (JSON); its presence makes the process
// a worker.
const WorkerEnv = "HERD_WORKER"

// WorkerFiles lays out a worker's inherited descriptors for
// exec.Cmd.ExtraFiles: ctrl at CtrlFD, the scoreboard at ShmFD, the
// listeners from FirstListenerFD, then the extra files (TLSFiles's) in
// order, whose descriptors the worker's spec names.
func WorkerFiles(ctrl, scoreboard *os.File, listeners []*os.File, extra ...*os.File) []*os.File {
	return append(append([]*os.File{ctrl, scoreboard}, listeners...), extra...)
}

// A new master started by a binary upgrade (USR2) inherits the old one's
// sockets from FirstInheritedFD on, in the order its UpgradeEnv lists
// them, and a pipe to say it is ready on.
const (
	UpgradeEnv       = "HERD_INHERIT"
	FirstInheritedFD = 3
)

// InheritedFD is the descriptor of the i-th inherited file of an upgrade.
func InheritedFD(i int) int { return FirstInheritedFD + i }

// Kind is what a control message says.
type Kind int

const (
	Ready      Kind = iota + 1 // worker → master: accepting; the reload or start may go on
	Recycle                    // worker → master: --max-requests reached; start my successor
	FD                         // master → worker (fdpass): a connection, as SCM_RIGHTS, numbered Seq
	Failed                     // worker → master: I cannot serve, because of Text; I exit now
	TicketKeys                 // master → worker: TLS session ticket keys, Text in base64, newest first
	Gather                     // master → worker: write the program\'s metrics (text format) to the pipe passed as SCM_RIGHTS, then close it
)

var names = map[Kind]string{Ready: "ready", Recycle: "recycle", FD: "fd", Failed: "failed", TicketKeys: "tickets", Gather: "gather"}

// Msg is one control message: one SOCK_SEQPACKET datagram of text, "ready",
// "recycle", "fd SEQ" or "failed TEXT".
type Msg struct {
	Kind Kind
	Seq  uint64 // FD and Gather
	Text string // Failed: the worker's error, at most MaxText bytes
}

// MaxMsg is the largest encoded message; MaxText bounds a Failed text.
const (
	MaxMsg  = 512
	MaxText = MaxMsg - len("failed ")
)

// Encode renders m as its datagram.
func (m Msg) Encode() []byte {
	b := []byte(names[m.Kind])
	switch m.Kind {
	case FD, Gather:
		b = strconv.AppendUint(append(b, ' '), m.Seq, 10)
	case Failed, TicketKeys:
		text := m.Text
		if len(text) > MaxText {
			text = text[:MaxText]
		}
		b = append(append(b, ' '), text...)
	}
	return b
}

var errBadMsg = errors.New("proto: bad control message")

// Decode reads a datagram. Anything that is not one of the messages above
// is an error: the reader ignores it (and closes any descriptor with it).
func Decode(b []byte) (Msg, error) {
	word, arg, hasArg := strings.Cut(string(b), " ")
	for k, name := range names {
		if word != name {
			continue
		}
		if k == Failed || k == TicketKeys {
			return Msg{Kind: k, Text: arg}, nil
		}
		if k != FD && k != Gather {
			if hasArg {
				return Msg{}, errBadMsg
			}
			return Msg{Kind: k}, nil
		}
		seq, err := strconv.ParseUint(arg, 10, 64)
		if !hasArg || err != nil {
			return Msg{}, errBadMsg
		}
		return Msg{Kind: k, Seq: seq}, nil
	}
	return Msg{}, errBadMsg
}
