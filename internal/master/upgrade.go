package master

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"sort"
	"time"

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

// inheritEnv carries what a new master needs to adopt the sockets.
const inheritEnv = "HERD_INHERIT"

type inheritance struct {
	Listen  []string      `json:"listen"`          // addresses, in fd order from fd 3
	Reuse   map[int][]int `json:"reuse,omitempty"` // reuseport: slot → fd indexes
	ReadyFD int           `json:"ready_fd"`        // write "ready" here once serving
}

type upgradeState struct {
	cmd   *exec.Cmd
	ready *os.File // read end: "ready", or EOF if the new master died
	timer *time.Timer
}

// startUpgrade executes the new master.
func (m *Master) startUpgrade() {
	if m.stopping || m.upgrade != nil {
		m.log.Warn("USR2: ignored", "reason", map[bool]string{true: "stopping", false: "an upgrade is already under way"}[m.stopping])
		return
	}
	if m.reload != nil {
		m.log.Warn("USR2: ignored while a reload is under way")
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
	if m.reuse != nil {
		in.Reuse = map[int][]int{}
		for _, slot := range sortedSlots(m.reuse) {
			for _, s := range m.reuse[slot] {
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
	r, w, err := os.Pipe()
	if err != nil {
		m.log.Error("USR2: cannot upgrade", "err", err)
		return
	}
	in.ReadyFD = 3 + len(files)
	files = append(files, w)
	spec, _ := json.Marshal(in)

	cmd := exec.Command(m.cfg.Path, m.cfg.Args...)
	cmd.Env = append(withoutKey(withoutKey(os.Environ(), inheritEnv), "HERD_WORKER"), m.cfg.Env...)
	cmd.Env = append(cmd.Env, inheritEnv+"="+string(spec))
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
	u.timer = time.AfterFunc(m.cfg.ReadyTimeout+time.Second, func() { m.post(event{kind: evUpgradeFailed, err: errors.New("not ready in time")}) })
	m.upgrade = u
	m.log.Info("USR2: started a new master", "pid", cmd.Process.Pid)
	go func() {
		buf := make([]byte, 16)
		n, _ := r.Read(buf)
		if string(buf[:n]) == "ready" {
			m.post(event{kind: evUpgradeReady})
			return
		}
		m.post(event{kind: evUpgradeFailed, err: errors.New("the new master exited before it was ready")})
	}()
	go cmd.Wait() // reap it if it dies while we are still its parent
}

func sortedSlots(m map[int][]*Socket) []int {
	slots := make([]int, 0, len(m))
	for s := range m {
		slots = append(slots, s)
	}
	sort.Ints(slots)
	return slots
}

// upgradeDone hands over: the new master serves, this one stops gracefully.
func (m *Master) upgradeDone() {
	u := m.upgrade
	u.timer.Stop()
	u.ready.Close()
	m.upgrade = nil
	m.handedOver = true
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
	u.cmd.Process.Signal(unix.SIGTERM)
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
	v, ok := os.LookupEnv(inheritEnv)
	if !ok {
		return nil, nil
	}
	os.Unsetenv(inheritEnv)
	var in inheritance
	if err := json.Unmarshal([]byte(v), &in); err != nil {
		return nil, fmt.Errorf("bad %s: %w", inheritEnv, err)
	}
	return &in, nil
}

// adopt takes the inherited sockets instead of binding new ones.
func (m *Master) adopt(in *inheritance) error {
	if len(in.Listen) != len(m.cfg.Listen) {
		return fmt.Errorf("upgrade: inherited %d listeners, configured %d", len(in.Listen), len(m.cfg.Listen))
	}
	sock := func(i int, addr string) *Socket {
		s := &Socket{Addr: addr, fd: 3 + i} // a bare descriptor: see Socket
		unix.CloseOnExec(s.fd)              // passed to workers explicitly, as our own are
		if network, path, err := ParseAddr(addr); err == nil && network == "unix" {
			s.path = path
		}
		return s
	}
	if in.Reuse != nil {
		if m.cfg.Strategy != "reuseport" {
			return errors.New("upgrade: the old master used reuseport; this one does not")
		}
		m.reuse = map[int][]*Socket{}
		for slot, idx := range in.Reuse {
			for k, i := range idx {
				m.reuse[slot] = append(m.reuse[slot], sock(i, in.Listen[k]))
			}
		}
		m.sockets = m.reuse[0]
	} else {
		if m.cfg.Strategy == "reuseport" {
			return errors.New("upgrade: reuseport needs the old master to have used it too")
		}
		for i, a := range in.Listen {
			m.sockets = append(m.sockets, sock(i, a))
		}
	}
	m.readyFD = os.NewFile(uintptr(in.ReadyFD), "upgrade-ready")
	return nil
}
