//go:build linux

package master

// Workers' lives as the master sees them: starting one for every empty
// slot (with a backoff for a slot whose workers keep dying), the
// descriptors and spec it inherits, the messages it sends, and reaping it.

import (
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/herd-run/herd/internal/proto"
	"github.com/herd-run/herd/internal/shm"
	"github.com/herd-run/herd/internal/worker"
	"golang.org/x/sys/unix"
)

// fillSlots starts a worker for every slot of the current generation that
// has none, unless the slot is backing off after early exits.
func (m *Master) fillSlots() {
	covered := map[int]bool{}
	for p := range m.procs {
		if p.gen == m.gen && !p.stopping && !p.retiring {
			covered[p.slot] = true
		}
	}
	now := m.clock.Now()
	for slot := 0; slot < m.workers; slot++ {
		if covered[slot] {
			continue
		}
		ss := m.slot(slot)
		if wait := ss.notAfter.Sub(now); wait > 0 {
			if ss.timer == nil {
				ss.timer = m.clock.AfterFunc(wait, func() { m.post(event{kind: evTick}) })
			}
			continue
		}
		ss.timer = nil
		p, err := m.spawn(slot, m.gen)
		if err != nil {
			if m.isReady {
				m.log.Error("cannot start worker", "slot", slot, "err", err)
			}
			m.backoff(slot)
			m.checkStartup(slot, err.Error())
			if ss.notAfter.Before(now) && ss.timer == nil {
				// No exit event will come to try again: a tick will.
				ss.timer = m.clock.AfterFunc(10*time.Millisecond, func() { m.post(event{kind: evTick}) })
			}
			continue
		}
		if m.reload != nil && p.gen == m.reload.gen {
			m.reload.waiting[p] = struct{}{}
		}
	}
}

func (m *Master) slot(i int) *slotState {
	ss := m.slots[i]
	if ss == nil {
		ss = &slotState{}
		m.slots[i] = ss
	}
	return ss
}

// backoff delays the next start of a slot whose worker exited early: none
// for the first exit, then 100ms doubling to 10s. A crash loop is reported,
// not spun.
func (m *Master) backoff(slot int) {
	ss := m.slot(slot)
	ss.failures++
	if ss.failures < 2 {
		return
	}
	d := 100 * time.Millisecond << min(ss.failures-2, 7)
	d = min(d, 10*time.Second)
	ss.notAfter = m.clock.Now().Add(d)
	if ss.failures >= 3 && m.isReady {
		m.log.Warn("worker crash loop", "slot", slot, "exits_in_a_row", ss.failures, "next_start_in", d)
	}
}

// healthyAfter is how long a worker must live for its exit not to count
// towards a crash loop.
const healthyAfter = 5 * time.Second

func (m *Master) spawn(slot, gen int) (*proc, error) {
	rec := m.board.Claim(slot, gen, m.clock.Now().UnixNano())
	if rec < 0 {
		return nil, errors.New("scoreboard full")
	}
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		m.board.Release(rec)
		return nil, fmt.Errorf("control socket: %w", err)
	}
	if m.cfg.Strategy != "fdpass" {
		// The master's end goes to the netpoller: no thread per worker.
		// Not under fdpass, where the master sends a message per
		// connection: a socket in the netpoller is watched for EPOLLOUT
		// too, and every message the worker reads would wake the master
		// once more (measured: one epoll_pwait return per connection).
		// There a thread per worker blocks in read instead.
		unix.SetNonblock(fds[0], true)
	}
	ctrl := os.NewFile(uintptr(fds[0]), "worker-ctrl")
	child := os.NewFile(uintptr(fds[1]), "master-ctrl")
	defer child.Close()

	sockets, err := m.half.workerSockets(slot)
	if err != nil {
		ctrl.Close()
		m.board.Release(rec)
		return nil, err
	}
	names := make([]string, len(sockets))
	for i, s := range sockets {
		names[i] = s.Addr
	}
	socks, err := socketFiles(sockets)
	if err != nil {
		ctrl.Close()
		m.board.Release(rec)
		return nil, err
	}
	defer closeFiles(socks) // the worker has its own copies once started
	var extra []*os.File
	tlsPEM := 0
	if m.cfg.TLSCert != "" {
		pem, err := proto.TLSFiles(m.cfg.TLSCert, m.cfg.TLSKey)
		if err != nil {
			ctrl.Close()
			m.board.Release(rec)
			return nil, err
		}
		defer pem.Close()
		extra, tlsPEM = append(extra, pem), proto.FirstListenerFD+len(socks)
	}
	files := proto.WorkerFiles(child, m.region.File(), socks, extra...)
	engine := ""
	if m.cfg.StaticRoot != "" {
		engine = "native"
	}
	spec := worker.Spec{
		Engine: engine,
		Slot:   slot, Workers: m.workers, Generation: gen, Record: rec, Listeners: names, TLSFrom: len(names) - len(m.cfg.TLSListen),
		TLSPEM: tlsPEM, RedirectHTTPS: m.httpsPort(),
		Strategy: m.cfg.Strategy, Accept: m.cfg.Accept, DrainTimeout: m.cfg.DrainTimeout,
		MaxRequests: m.cfg.MaxRequests, MaxRequestsJitter: m.cfg.MaxRequestsJitter, AccessLog: m.cfg.AccessLog,
		StaticRoot: m.cfg.StaticRoot, Static: m.cfg.Static, Procs: m.cfg.WorkerProcs,
	}
	m.half.spec(&spec)
	started, err := m.start(&spec, files)
	if err != nil {
		ctrl.Close()
		m.board.Release(rec)
		return nil, err
	}
	p := &proc{slot: slot, gen: gen, rec: rec, process: started, ctrl: ctrl, started: m.clock.Now(), ctrlDone: make(chan struct{})}
	m.board.Record(rec).Store(shm.PID, uint64(p.pid()))
	m.procs[p] = struct{}{}
	m.live.add(p)
	m.sendTickets(p)
	go m.readControl(p)
	go func() {
		err := started.Wait()
		// What it said before it exited (why it failed) is read first.
		select {
		case <-p.ctrlDone:
		case <-time.After(100 * time.Millisecond): // a child of the worker holds the socket
		}
		m.post(event{kind: evExited, p: p, err: err})
	}()
	return p, nil
}

// A process is a started worker as the supervisor handles it: os/exec's in
// a running master, a fake in the supervisor's own tests.
type process interface {
	Pid() int
	Signal(sig os.Signal) error
	Wait() error // returns when it has exited, with os/exec's error
}

// startFunc starts a worker with its spec and its inherited files, in
// proto's layout. Master.start is execStart but in tests.
type startFunc func(spec *worker.Spec, files []*os.File) (process, error)

// execStart runs the worker: this binary again (Config.Path and Args),
// with the spec in its environment.
func (m *Master) execStart(spec *worker.Spec, files []*os.File) (process, error) {
	cmd := exec.Command(m.cfg.Path, m.cfg.Args...)
	if m.cfg.self {
		// The master's own binary, whatever is on disk now (and even if
		// the file is gone); ps shows the path it was started as.
		cmd = &exec.Cmd{Path: "/proc/self/exe", Args: append([]string{m.cfg.Path}, m.cfg.Args...)}
	}
	// Workers never talk to systemd: only the master is the service.
	cmd.Env = append(withoutKey(withoutKey(os.Environ(), proto.WorkerEnv), "NOTIFY_SOCKET"), m.cfg.Env...)
	cmd.Env = append(cmd.Env, spec.Env())
	cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
	cmd.ExtraFiles = files
	cmd.SysProcAttr = m.creds.sysProcAttr()
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	return execProcess{cmd}, nil
}

type execProcess struct{ cmd *exec.Cmd }

func (e execProcess) Pid() int                   { return e.cmd.Process.Pid }
func (e execProcess) Signal(sig os.Signal) error { return e.cmd.Process.Signal(sig) }
func (e execProcess) Wait() error                { return e.cmd.Wait() }

// A clock is the supervisor's time: the real one, or a test's.
type clock interface {
	Now() time.Time
	AfterFunc(d time.Duration, f func()) stopper
}

// stopper is a timer from AfterFunc.
type stopper interface{ Stop() bool }

type realClock struct{}

func (realClock) Now() time.Time                              { return time.Now() }
func (realClock) AfterFunc(d time.Duration, f func()) stopper { return time.AfterFunc(d, f) }

// socketFiles wraps duplicates of sockets for a child's ExtraFiles (see
// Socket); closeFiles closes them once the child has started.
func socketFiles(sockets []*Socket) ([]*os.File, error) {
	files := make([]*os.File, 0, len(sockets))
	for _, s := range sockets {
		f, err := s.File()
		if err != nil {
			closeFiles(files)
			return nil, err
		}
		files = append(files, f)
	}
	return files, nil
}

func closeFiles(files []*os.File) {
	for _, f := range files {
		f.Close()
	}
}

// readControl handles the worker's messages: Ready, sent once the worker
// accepts connections, and Recycle become events for the loop; Failed
// is kept for the exit's report.
func (m *Master) readControl(p *proc) {
	defer close(p.ctrlDone)
	buf := make([]byte, proto.MaxMsg)
	for {
		n, err := p.ctrl.Read(buf)
		if err != nil || n == 0 {
			return
		}
		msg, err := proto.Decode(buf[:n])
		switch {
		case err != nil:
			m.log.Warn("bad control message from a worker", "pid", p.pid(), "msg", string(buf[:n]))
		case msg.Kind == proto.Ready:
			m.post(event{kind: evReady, p: p})
		case msg.Kind == proto.Recycle:
			m.post(event{kind: evRecycle, p: p})
		case msg.Kind == proto.Failed:
			p.failure.Store(msg.Text)
		}
	}
}

func withoutKey(env []string, key string) []string {
	return slices.DeleteFunc(slices.Clone(env), func(kv string) bool {
		return strings.HasPrefix(kv, key+"=")
	})
}

// reap accounts for an exited worker.
func (m *Master) reap(p *proc, err error) {
	delete(m.procs, p)
	m.live.remove(p)
	// The control socket stays open until the strategy's half is done
	// with the worker (fdpass takes back what it did not take).
	m.half.exited(p)
	p.ctrl.Close()
	m.board.Release(p.rec)
	attrs := []any{"slot", p.slot, "gen", p.gen, "pid", p.pid(), "status", exitStatus(err)}
	if why := p.why(); why != "" {
		attrs = append(attrs, "err", why)
	}
	switch {
	case p.stopping || m.stopping:
		m.log.Info("worker exited", attrs...)
	case !m.isReady:
		m.log.Debug("worker died", attrs...) // start-up failures are reported once (checkStartup)
	default:
		m.log.Warn("worker died", attrs...)
	}
	if r := m.reload; r != nil {
		if _, ok := r.waiting[p]; ok {
			m.failReload(fmt.Sprintf("new worker exited before it was ready (%s)", exitStatus(err)))
			return
		}
	}
	if p.stopping || m.stopping || p.gen != m.gen || p.slot >= m.workers {
		return
	}
	m.board.CountRestart()
	if !p.ready || m.clock.Now().Sub(p.started) < healthyAfter {
		m.backoff(p.slot)
	} else {
		m.slot(p.slot).failures = 0
	}
	if !p.ready {
		why := p.why()
		if why == "" {
			why = exitStatus(err)
		}
		m.checkStartup(p.slot, why)
	}
}

// startupTries is how many times in a row a slot's worker may fail before
// the master, which has never been ready, gives up.
const startupTries = 3

// checkStartup handles a worker that failed before it was ready. Once the
// master has been ready, that is a crash loop like any other (backoff,
// warnings). Before, nothing was ever served: the first failure is
// reported once, with the worker's own error, and after startupTries in a
// row on one slot the master stops and Run returns that error, so that
// `herd serve` exits non-zero with one line instead of retrying for ever.
func (m *Master) checkStartup(slot int, why string) {
	if m.isReady || m.stopping {
		return
	}
	ss := m.slot(slot)
	if !m.startReported {
		m.startReported = true
		m.log.Error("a worker failed to start", "slot", slot, "err", why)
	}
	if ss.failures >= startupTries {
		m.failed = fmt.Errorf("workers cannot start: %s", why)
		m.log.Error("giving up: workers cannot start", "tries", ss.failures, "err", why)
		m.stop(false, unix.SIGINT)
	}
}

func exitStatus(err error) string {
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		// os/exec reports a syscall.WaitStatus, a type of its own: asking
		// for unix.WaitStatus never matched, and a killed worker was
		// logged as "exit -1".
		if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			return "killed by " + unix.SignalName(ws.Signal())
		}
		return fmt.Sprintf("exit %d", ee.ExitCode())
	}
	if err != nil {
		return err.Error()
	}
	return "exit 0"
}

// httpsPort is where RedirectHTTPS sends plain requests: ":PORT" of the
// first TLS listener, as it is bound; "" without RedirectHTTPS.
func (m *Master) httpsPort() string {
	i := len(m.cfg.Listen)
	if !m.cfg.RedirectHTTPS || i >= len(m.sockets) {
		return ""
	}
	_, port, err := net.SplitHostPort(m.sockets[i].Addr)
	if err != nil {
		return ""
	}
	return ":" + port
}
