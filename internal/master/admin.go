//go:build linux

package master

// The operator endpoint's socket, and what the endpoint reads.

import (
	"fmt"
	"net"
	"os"

	"github.com/herd-run/herd/internal/shm"
	dto "github.com/prometheus/client_model/go"
	"golang.org/x/sys/unix"
)

// adminSource is what the admin endpoint reads.
type adminSource struct{ m *Master }

func (a adminSource) Snapshot() shm.Snapshot { return a.m.board.Snapshot() }

func (a adminSource) Ready() bool { return a.m.readyNow.Load() }

func (a adminSource) Strategy() string { return a.m.Strategy() }

func (a adminSource) Workers() ([]*dto.MetricFamily, error) { return a.m.gatherWorkers() }

// openAdmin gives the master its admin endpoint's socket: the one an
// upgrading master handed on, if it is bound to the configured address,
// else a new one. The socket is the master's, like the listening sockets:
// a unix socket's file is removed by whichever master is the last to hold
// it (close), never by a Close of the listener.
func (m *Master) openAdmin(in *inheritance) error {
	if in != nil && in.AdminFD > 0 {
		fd := in.AdminFD
		if m.cfg.Admin != "" && boundTo(m.cfg.Admin, fd) && checkListening(fd) == nil {
			f := os.NewFile(uintptr(fd), "admin")
			l, err := net.FileListener(f) // a duplicate
			f.Close()
			if err != nil {
				return fmt.Errorf("admin: inherited socket: %w", err)
			}
			m.admin = l
		} else {
			unix.Close(fd)
		}
	}
	if m.admin == nil && m.cfg.Admin != "" {
		l, err := listenAdmin(m.cfg.Admin)
		if err != nil {
			return err
		}
		m.admin = l
	}
	if u, ok := m.admin.(*net.UnixListener); ok {
		u.SetUnlinkOnClose(false)
		m.adminPath = u.Addr().String()
	}
	return nil
}

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
