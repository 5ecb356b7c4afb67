//go:build linux

package master

import (
	"crypto/rand"
	"encoding/base64"
	"time"

	"github.com/herd-run/herd/internal/proto"
)

// TLS session resumption across workers. A client that resumes a session
// presents a ticket encrypted with a key of the worker that issued it; the
// next connection may reach any worker, so every worker must hold the same
// keys. The master makes them — at start, and a new one every
// ticketRotation — and sends them to each worker over its control socket
// (never through the environment, which /proc shows): the newest encrypts
// new tickets, the older ones still decrypt tickets issued before, for
// ticketKeep rotations. Keys live in memory only, as nginx's do without
// ssl_session_ticket_key files; a new master (USR2) makes new ones.
const (
	ticketRotation = time.Hour
	ticketKeep     = 3
)

type ticketKeys [][32]byte

// rotate puts a fresh key in front and drops the oldest beyond ticketKeep.
func (k ticketKeys) rotate() ticketKeys {
	var key [32]byte
	rand.Read(key[:])
	return append(ticketKeys{key}, k[:min(len(k), ticketKeep-1)]...)
}

func (k ticketKeys) msg() proto.Msg {
	b := make([]byte, 0, 32*len(k))
	for _, key := range k {
		b = append(b, key[:]...)
	}
	return proto.Msg{Kind: proto.TicketKeys, Text: base64.StdEncoding.EncodeToString(b)}
}

// sendTickets gives p the current keys (TLS listeners only).
func (m *Master) sendTickets(p *proc) {
	if len(m.cfg.TLSListen) == 0 {
		return
	}
	p.ctrl.Write(m.tickets.msg().Encode())
}

// rotateTickets makes a new key and sends the set to every worker.
func (m *Master) rotateTickets() {
	if len(m.cfg.TLSListen) == 0 {
		return
	}
	m.tickets = m.tickets.rotate()
	for p := range m.procs {
		m.sendTickets(p)
	}
}
