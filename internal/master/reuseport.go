package master

import (
	"os"
	"strconv"
	"strings"

	"golang.org/x/net/bpf"
	"golang.org/x/sys/unix"
)

// The master's half of the reuseport strategy: one SO_REUSEPORT socket per
// worker slot and listen address, made and held by the master. A worker
// gets only its slot's sockets; a reloaded or respawned worker inherits the
// same ones, so the connections queued on them wait for it instead of
// being reset (what happens when each worker opens its own socket and
// exits). nginx does the same (ngx_clone_listening keeps one socket per
// worker in the master across reloads).
//
// The kernel numbers a group's sockets in the order they started
// listening, and slots are created in order, so slot i is socket i. When
// the worker count shrinks, the sockets of the removed slot (always the
// highest) would be closed with their queues — the kernel resets those
// connections unless net.ipv4.tcp_migrate_req is 1. herd does not change
// that system-wide setting; it uses it if it is on, and in any case first
// steers new connections away from the removed slot with a reuseport BPF
// program (random % remaining slots), then lets the slot's worker accept
// what is queued before it exits (the strategy drains on stop), and closes
// the sockets only after that.

// slotSockets returns the sockets of a slot, creating them if needed.
func (m *Master) slotSockets(slot int) ([]*Socket, error) {
	if s, ok := m.reuse[slot]; ok {
		return s, nil
	}
	var socks []*Socket
	for i, a := range m.cfg.Listen {
		if len(m.sockets) > i {
			a = m.sockets[i].Addr // the port chosen for slot 0, if it was 0
		}
		s, err := m.listenConfig(true).Listen(a)
		if err != nil {
			for _, s := range socks {
				s.Close()
			}
			return nil, err
		}
		socks = append(socks, s)
	}
	m.reuse[slot] = socks
	return socks, nil
}

// steerReuseport keeps new connections off the sockets of slots at or above
// the wanted worker count: with a BPF program while such slots exist, with
// the kernel's own hash otherwise.
func (m *Master) steerReuseport() {
	extra := false
	for slot := range m.reuse {
		extra = extra || slot >= m.workers
	}
	for i := range m.cfg.Listen {
		first := m.reuse[0][i]
		var err error
		if extra {
			err = AttachSteering(first.FD(), m.workers)
		} else {
			err = detachSteering(first.FD())
		}
		if err != nil {
			m.log.Warn("reuseport: cannot steer connections", "listen", first.Addr, "err", err)
		}
	}
	if extra {
		how := "steered away, then drained by its worker"
		if migrateReq() {
			how += "; tcp_migrate_req is on, so the kernel also migrates what is left at close"
		}
		m.log.Info("reuseport: retiring slot sockets", "slots", m.workers, "queued_connections", how)
	}
}

// closeRetiredSlot closes a removed slot's sockets once its worker is gone.
func (m *Master) closeRetiredSlot(slot int) {
	if slot < m.workers || slot == 0 {
		return
	}
	for p := range m.procs {
		if p.slot == slot {
			return // still draining
		}
	}
	for _, s := range m.reuse[slot] {
		s.Close()
	}
	delete(m.reuse, slot)
	m.steerReuseport()
}

// attachSteering puts a program on the group that picks a socket among the
// first n: A = random() % n; return A.
// AttachSteering attaches the steering program to the reuseport group of
// socket fd (herd doctor uses it to probe the kernel).
func AttachSteering(fd, n int) error {
	prog, err := bpf.Assemble([]bpf.Instruction{
		bpf.LoadExtension{Num: bpf.ExtRand},
		bpf.ALUOpConstant{Op: bpf.ALUOpMod, Val: uint32(n)},
		bpf.RetA{},
	})
	if err != nil {
		return err
	}
	filter := make([]unix.SockFilter, len(prog))
	for i, ins := range prog {
		filter[i] = unix.SockFilter{Code: ins.Op, Jt: ins.Jt, Jf: ins.Jf, K: ins.K}
	}
	fprog := unix.SockFprog{Len: uint16(len(filter)), Filter: &filter[0]}
	return unix.SetsockoptSockFprog(fd, unix.SOL_SOCKET, unix.SO_ATTACH_REUSEPORT_CBPF, &fprog)
}

func detachSteering(fd int) error {
	err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_DETACH_REUSEPORT_BPF, 0)
	if err == unix.ENOENT {
		return nil // nothing attached
	}
	return err
}

// migrateReq reports whether net.ipv4.tcp_migrate_req is on in this network
// namespace (Linux 5.14+).
func migrateReq() bool {
	b, err := os.ReadFile("/proc/sys/net/ipv4/tcp_migrate_req")
	if err != nil {
		return false
	}
	n, _ := strconv.Atoi(strings.TrimSpace(string(b)))
	return n == 1
}
