//go:build linux

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
// what is queued before it exits (the strategy accepts what is queued on stop), and closes
// the sockets only after that.

// reuseportHalf holds every slot's sockets; m.sockets are slot 0's.
type reuseportHalf struct {
	shared
	socks map[int][]*Socket
}

// listen makes every slot's sockets, in slot order: the kernel numbers a
// group's sockets in the order they started listening, which the steering
// program relies on. m.sockets are slot 0's.
func (h *reuseportHalf) listen() error {
	for _, a := range h.m.cfg.addresses() {
		if _, addr, err := parseAddr(a); err == nil {
			if err := checkFree(addr); err != nil {
				return err
			}
		}
	}
	for slot := 0; slot < h.m.cfg.Workers; slot++ {
		socks, err := h.workerSockets(slot)
		if err != nil {
			return err
		}
		if slot == 0 {
			h.m.sockets = socks
		}
	}
	return nil
}

// workerSockets returns the sockets of a slot, creating them if needed.
func (h *reuseportHalf) workerSockets(slot int) ([]*Socket, error) {
	if s, ok := h.socks[slot]; ok {
		return s, nil
	}
	var socks []*Socket
	for i, a := range h.m.cfg.addresses() {
		if len(h.m.sockets) > i {
			a = h.m.sockets[i].Addr // the port chosen for slot 0, if it was 0
		}
		s, err := h.m.listenConfig(true).Listen(a)
		if err != nil {
			for _, s := range socks {
				s.Close()
			}
			return nil, err
		}
		socks = append(socks, s)
	}
	h.socks[slot] = socks
	return socks, nil
}

func (h *reuseportHalf) slots() map[int][]*Socket    { return h.socks }
func (h *reuseportHalf) adopted(s map[int][]*Socket) { h.socks = s }

// resized steers connections: a retired slot still draining may be wanted
// again (TTIN), or a slot is about to be retired (TTOU), before its worker
// stops and drains.
func (h *reuseportHalf) resized() { h.steer() }

// exited closes a removed slot's sockets once its worker is gone.
func (h *reuseportHalf) exited(p *proc) {
	m := h.m
	if p.slot < m.workers || p.slot == 0 {
		return
	}
	for q := range m.procs {
		if q.slot == p.slot {
			return // still draining
		}
	}
	for _, s := range h.socks[p.slot] {
		s.Close()
	}
	delete(h.socks, p.slot)
	h.steer()
}

// close closes every slot's sockets but slot 0's, which are m.sockets.
func (h *reuseportHalf) close() {
	for slot, socks := range h.socks {
		if slot == 0 {
			continue
		}
		for _, s := range socks {
			s.Close()
		}
	}
}

// steer keeps new connections off the sockets of slots at or above the
// wanted worker count: with a BPF program while such slots exist, with the
// kernel's own hash otherwise.
func (h *reuseportHalf) steer() {
	m := h.m
	extra := false
	for slot := range h.socks {
		extra = extra || slot >= m.workers
	}
	for i := range m.cfg.addresses() {
		first := h.socks[0][i]
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
		how := "steered away, then accepted by its worker before it exits"
		if migrateReq() {
			how += "; tcp_migrate_req is on, so the kernel also migrates what is left at close"
		}
		m.log.Info("reuseport: retiring slot sockets", "slots", m.workers, "queued_connections", how)
	}
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
