package master

// The operator endpoint's socket, and what the endpoint reads.

import (
	"fmt"
	"net"

	"github.com/herd-run/herd/internal/shm"
)

// adminSource is what the admin endpoint reads.
type adminSource struct{ m *Master }

func (a adminSource) Snapshot() shm.Snapshot { return a.m.board.Snapshot() }

func (a adminSource) Ready() bool { return a.m.readyNow.Load() }

// listenAdmin opens the admin endpoint's socket: a loopback TCP address or
// a unix socket, never a public address.
func listenAdmin(addr string) (net.Listener, error) {
	network, a, err := parseAddr(addr)
	if err != nil {
		return nil, fmt.Errorf("admin: %w", err)
	}
	if network == "tcp" {
		host, _, _ := net.SplitHostPort(a)
		if ip := net.ParseIP(host); host != "localhost" && (ip == nil || !ip.IsLoopback()) {
			return nil, fmt.Errorf("admin %s: must be a loopback address or a unix socket", addr)
		}
	} else if err := removeStaleSocket(a); err != nil {
		return nil, fmt.Errorf("admin: %w", err)
	}
	l, err := net.Listen(network, a)
	if err != nil {
		return nil, fmt.Errorf("admin: %w", err)
	}
	return l, nil
}
