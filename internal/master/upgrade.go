//go:build linux

package master

import (
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"net"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"time"

	"github.com/herd-run/herd/internal/proto"
	"golang.org/x/sys/unix"
)

// Binary upgrade (USR2), as nginx does it: the running master executes its
// binary again — by then perhaps a new build — as a new master, passing it
// the listening sockets. The new master starts its own workers on those same
// sockets; once every one of them is ready it tells the old master, which
// then stops gracefully: its workers stop accepting and finish what they
// have while the new ones already accept from the same queues, so nothing
// queued is dropped. If the new master dies or is not ready within
// --ready-timeout, the old one stops it and goes on serving.
//
// The pid file moves as nginx users expect: during the upgrade the old
// master's pid is in FILE.oldbin and the new master's in FILE; if the
// upgrade fails, FILE names the old master again.

// inheritance is what a new master needs to adopt the sockets, carried in
// proto.UpgradeEnv.
type inheritance struct {
	Listen  []string      `json:"listen"`             // addresses, in fd order from proto.FirstInheritedFD
	TLS     int           `json:"tls,omitempty"`      // how many of them, at the end, are TLS listeners
	Reuse   map[int][]int `json:"reuse,omitempty"`    // reuseport: slot → fd indexes
	AdminFD int           `json:"admin_fd,omitempty"` // the admin endpoint's socket, if any
	ReadyFD int           `json:"ready_fd"`           // write "ready" here once serving
}

type upgradeState struct {
	cmd   *exec.Cmd
	ready *os.File // read end: "ready", or EOF if the new master died
	timer stopper
}

// startUpgrade executes the new master.
func (m *Master) startUpgrade() {
	if m.stopping || m.upgrade != nil {
		m.log.Warn("USR2: ignored", "reason", map[bool]string{true: "stopping", false: "an upgrade is already under way"}[m.stopping])
		return
	}
	if m.reload != nil {
		// Not ignored, as a HUP is not: a deploy that installs a binary and
		// sends USR2 gets its upgrade once the reload has ended.
		if !m.upgradeAfter {
			m.log.Info("USR2: a reload is under way; the upgrade follows it")
		}
		m.upgradeAfter = true
		return
	}
	in := inheritance{}
	var sockets []*Socket
	add := func(s *Socket) int {
		sockets = append(sockets, s)
		return len(sockets) - 1
	}
	for _, s := range m.sockets {
		in.Listen = append(in.Listen, s.Addr)
	}
	in.TLS = len(m.cfg.TLSListen) // the last ones (Config.addresses)
	if slots := m.half.slots(); slots != nil {
		in.Reuse = map[int][]int{}
		for _, slot := range slices.Sorted(maps.Keys(slots)) {
			for _, s := range slots[slot] {
				in.Reuse[slot] = append(in.Reuse[slot], add(s))
			}
		}
	} else {
		for _, s := range m.sockets {
			add(s)
		}
	}
	files, err := socketFiles(sockets)
	if err != nil {
		m.log.Error("USR2: cannot upgrade", "err", err)
		return
	}
	defer closeFiles(files) // the new master has its own copies once started
	if m.admin != nil {
		// The admin socket is handed on too: binding it again would fail
		// while this master holds it.
		f, err := m.admin.(interface{ File() (*os.File, error) }).File()
		if err != nil {
			closeFiles(files)
			m.log.Error("USR2: cannot upgrade", "err", fmt.Errorf("admin socket: %w", err))
			return
		}
		defer f.Close() // the new master has its own copy once started
		in.AdminFD = proto.InheritedFD(len(files))
		files = append(files, f)
	}
	r, w, err := os.Pipe()
	if err != nil {
		m.log.Error("USR2: cannot upgrade", "err", err)
		return
	}
	in.ReadyFD = proto.InheritedFD(len(files))
	files = append(files, w)
	spec, _ := json.Marshal(in)

	cmd := exec.Command(m.cfg.Path, m.cfg.Args...)
	cmd.Env = append(withoutKey(withoutKey(os.Environ(), proto.UpgradeEnv), proto.WorkerEnv), m.cfg.Env...)
	cmd.Env = append(cmd.Env, proto.UpgradeEnv+"="+string(spec))
	cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
	cmd.ExtraFiles = files
	if m.cfg.PIDFile != "" {
		if err := os.Rename(m.cfg.PIDFile, m.cfg.PIDFile+".oldbin"); err != nil && !errors.Is(err, os.ErrNotExist) {
			m.log.Warn("USR2: cannot move the pid file aside", "err", err)
		}
	}
	if err := cmd.Start(); err != nil {
		w.Close()
		r.Close()
		m.restorePIDFile()
		m.log.Error("USR2: cannot start the new master", "err", err)
		return
	}
	w.Close()
	u := &upgradeState{cmd: cmd, ready: r}
	u.timer = m.clock.AfterFunc(m.cfg.ReadyTimeout+time.Second, func() { m.post(event{kind: evUpgradeFailed, err: errors.New("not ready in time")}) })
	m.upgrade = u
	m.log.Info("USR2: started a new master", "pid", cmd.Process.Pid)
	go func() {
		buf := make([]byte, proto.MaxMsg)
		n, _ := r.Read(buf)
		if msg, err := proto.Decode(buf[:n]); err == nil && msg.Kind == proto.Ready {
			m.post(event{kind: evUpgradeReady})
			return
		}
		m.post(event{kind: evUpgradeFailed, err: errors.New("the new master exited before it was ready")})
	}()
	go cmd.Wait() // reap it if it dies while we are still its parent
}

// upgradeDone hands over: the new master serves, this one stops gracefully.
func (m *Master) upgradeDone() {
	u := m.upgrade
	u.timer.Stop()
	u.ready.Close()
	m.upgrade = nil
	m.handedOver = true
	if m.admin != nil {
		// The new master answers from now on: stop accepting, but let the
		// requests this one has accepted finish (http.Server.Close would
		// cut them).
		m.admin.Close()
	}
	m.log.Info("upgrade: the new master is ready; this one stops gracefully", "new_pid", u.cmd.Process.Pid)
	// Under systemd the service's main process is now the new master.
	notify(fmt.Sprintf("MAINPID=%d", u.cmd.Process.Pid))
	m.stop(true, unix.SIGQUIT)
}

// upgradeFailed stops the new master and keeps serving.
func (m *Master) upgradeFailed(why error) {
	u := m.upgrade
	if u == nil {
		return
	}
	u.timer.Stop()
	u.ready.Close()
	m.upgrade = nil
	u.cmd.Process.Signal(unix.SIGINT) // a fast stop: it serves nothing yet
	m.restorePIDFile()
	m.log.Error("upgrade failed; this master keeps serving", "reason", why.Error())
}

func (m *Master) restorePIDFile() {
	if m.cfg.PIDFile == "" {
		return
	}
	if err := writePIDFile(m.cfg.PIDFile); err != nil {
		m.log.Warn("cannot restore the pid file", "err", err)
	}
	os.Remove(m.cfg.PIDFile + ".oldbin")
}

// inherited returns the sockets passed by an upgrading master, or nil.
func inherited() (*inheritance, error) {
	v, ok := os.LookupEnv(proto.UpgradeEnv)
	if !ok {
		return nil, nil
	}
	os.Unsetenv(proto.UpgradeEnv)
	var in inheritance
	if err := json.Unmarshal([]byte(v), &in); err != nil {
		return nil, fmt.Errorf("bad %s: %w", proto.UpgradeEnv, err)
	}
	return &in, nil
}

// adopt takes the inherited sockets instead of binding new ones, matched
// to the configured addresses by what they are bound to, as tableflip and
// nginx match them — not by position, so that an edited --listen is obeyed
// across USR2: a configured address an inherited socket is bound to takes
// that socket (its queue and all); one that none is bound to is opened now;
// an inherited socket no longer configured is closed (its unix socket file
// removed). A configured port 0 takes an inherited socket of the same host
// whatever its port, as the port was chosen when it was first bound.
// Without configured addresses (systemd's sockets, handed on) every
// inherited socket is kept.
func (m *Master) adopt(in *inheritance) error {
	fds := func(k int) []int { // the descriptors of inherited address k: one, or one per reuseport slot
		if in.Reuse == nil {
			return []int{proto.InheritedFD(k)}
		}
		var out []int
		for _, slot := range slices.Sorted(maps.Keys(in.Reuse)) {
			if idx := in.Reuse[slot]; k < len(idx) {
				out = append(out, proto.InheritedFD(idx[k]))
			}
		}
		return out
	}
	for k, a := range in.Listen {
		for _, fd := range fds(k) {
			unix.CloseOnExec(fd) // passed to workers explicitly, as our own are
			if err := checkListening(fd); err != nil {
				return fmt.Errorf("upgrade: inherited %s: %w", a, err)
			}
		}
	}
	if (in.Reuse != nil) != (m.cfg.Strategy == "reuseport") {
		return errors.New("upgrade: between reuseport and another strategy the sockets differ; restart instead")
	}
	if len(m.cfg.addresses()) == 0 {
		// Sockets systemd gave the old master: the new one has no
		// addresses of its own, and learns which are TLS from the old.
		n := len(in.Listen) - min(max(in.TLS, 0), len(in.Listen))
		m.cfg.Listen, m.cfg.TLSListen = in.Listen[:n], in.Listen[n:]
		if err := checkTLS(m.cfg); err != nil {
			return fmt.Errorf("upgrade: %w", err)
		}
	}
	addrs := m.cfg.addresses()
	match := make([]int, len(addrs)) // configured j → inherited k, or -1
	used := make([]bool, len(in.Listen))
	for j, a := range addrs {
		match[j] = -1
		for k := range in.Listen {
			if !used[k] && boundTo(a, fds(k)[0]) {
				match[j], used[k] = k, true
				break
			}
		}
	}
	sock := func(fd int, addr string) *Socket {
		s := &Socket{Addr: addr, fd: fd} // a bare descriptor: see Socket
		if network, path, err := parseAddr(addr); err == nil && network == "unix" {
			s.path = path
		}
		return s
	}
	if in.Reuse != nil {
		reuse := map[int][]*Socket{}
		for _, slot := range slices.Sorted(maps.Keys(in.Reuse)) {
			for j, a := range addrs {
				if k := match[j]; k >= 0 {
					reuse[slot] = append(reuse[slot], sock(proto.InheritedFD(in.Reuse[slot][k]), in.Listen[k]))
					continue
				}
				if slot > 0 && len(reuse[0]) > j {
					a = reuse[0][j].Addr // the port slot 0 got, if it was 0
				}
				s, err := m.listenConfig(true).Listen(a)
				if err != nil {
					return fmt.Errorf("upgrade: %w", err)
				}
				reuse[slot] = append(reuse[slot], s)
			}
		}
		m.sockets = reuse[0]
		m.half.adopted(reuse)
	} else {
		for j, a := range addrs {
			if k := match[j]; k >= 0 {
				m.sockets = append(m.sockets, sock(proto.InheritedFD(k), in.Listen[k]))
				continue
			}
			s, err := m.listenConfig(false).Listen(a)
			if err != nil {
				return fmt.Errorf("upgrade: %w", err)
			}
			m.log.Info("upgrade: listening on an address the old master did not", "listen", s.Addr)
			m.sockets = append(m.sockets, s)
		}
	}
	for k, a := range in.Listen {
		if used[k] {
			continue
		}
		m.log.Info("upgrade: closing an inherited socket no longer configured", "listen", a)
		for _, fd := range fds(k) {
			sock(fd, a).Close()
		}
	}
	m.readyFD = os.NewFile(uintptr(in.ReadyFD), "upgrade-ready")
	return nil
}

// checkListening verifies that fd is a listening stream socket.
func checkListening(fd int) error {
	if typ, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_TYPE); err != nil || typ != unix.SOCK_STREAM {
		return fmt.Errorf("descriptor %d is not a stream socket", fd)
	}
	if on, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_ACCEPTCONN); err != nil || on != 1 {
		return fmt.Errorf("descriptor %d is not listening", fd)
	}
	return nil
}

// boundTo reports whether the socket fd is bound to the configured address
// s: the same unix path, or the same IP (an empty host: 0.0.0.0) and port
// (a configured port 0: any).
func boundTo(s string, fd int) bool {
	network, addr, err := parseAddr(s)
	if err != nil {
		return false
	}
	sa, err := unix.Getsockname(fd)
	if err != nil {
		return false
	}
	if network == "unix" {
		u, ok := sa.(*unix.SockaddrUnix)
		return ok && u.Name == addr
	}
	host, portText, _ := net.SplitHostPort(addr)
	port, _ := strconv.Atoi(portText)
	var ip net.IP
	var gotPort int
	switch a := sa.(type) {
	case *unix.SockaddrInet4:
		ip, gotPort = net.IP(a.Addr[:]), a.Port
	case *unix.SockaddrInet6:
		ip, gotPort = net.IP(a.Addr[:]), a.Port
	default:
		return false
	}
	if port != 0 && port != gotPort {
		return false
	}
	if host == "" {
		return ip.Equal(net.IPv4zero)
	}
	ips, err := net.LookupIP(host)
	if err != nil {
		return false
	}
	for _, want := range ips {
		if want.Equal(ip) {
			return true
		}
	}
	return false
}
