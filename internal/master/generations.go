//go:build linux

package master

// Generations and stops: a reload starts a new generation and retires the
// old one once every new worker is ready (or gives up and keeps the old);
// stops are graceful (QUIT) or fast (TERM), bounded by a deadline; a
// worker whose heartbeat is too old is killed and replaced.

import (
	"errors"
	"os"
	"strings"
	"time"

	"github.com/coreos/go-systemd/v22/daemon"
	"github.com/herd-run/herd/internal/proto"
	"github.com/herd-run/herd/internal/shm"
	"golang.org/x/sys/unix"
)

// retireReplaced stops, gracefully, the retiring workers of the slot whose
// successor q has just become ready.
func (m *Master) retireReplaced(q *proc) {
	for p := range m.procs {
		if p != q && p.retiring && p.slot == q.slot && p.gen == q.gen {
			m.stopProc(p, unix.SIGQUIT)
		}
	}
}

// checkHeartbeats kills workers whose heartbeat is older than
// --worker-timeout: a frozen process (stopped, deadlocked runtime, swapped
// out) that still holds its share of connections. gunicorn and unicorn do
// the same with their worker timeouts. The slot is then refilled as after
// any death. A worker's goroutines beat independently of its handlers, so
// one slow request does not count as stuck; a whole process that does not
// run does.
func (m *Master) checkHeartbeats() {
	if m.cfg.WorkerTimeout <= 0 {
		return // never
	}
	now := m.clock.Now().UnixNano()
	limit := m.cfg.WorkerTimeout.Nanoseconds()
	for p := range m.procs {
		r := m.board.Record(p.rec)
		if !p.ready || r == nil {
			continue
		}
		beat := int64(r.Load(shm.Heartbeat))
		if beat > 0 && now-beat > limit {
			m.log.Error("worker stopped responding; killing it", "slot", p.slot, "pid", p.pid(),
				"silent_for", time.Duration(now-beat).Truncate(time.Millisecond))
			p.process.Signal(unix.SIGKILL)
		}
	}
}

// allSlotsReady: every slot has a ready worker that is not stopping, of
// whichever generation — /readyz. During a reload the old generation
// serves until the new one is up, so the server stays ready throughout (a
// load balancer must not pull it for a reload); a stopping master is not.
func (m *Master) allSlotsReady() bool {
	if m.stopping {
		return false
	}
	ready := map[int]bool{}
	for p := range m.procs {
		if p.ready && !p.stopping {
			ready[p.slot] = true
		}
	}
	for slot := 0; slot < m.workers; slot++ {
		if !ready[slot] {
			return false
		}
	}
	return true
}

// checkReady closes Ready once the current generation fills every slot.
func (m *Master) checkReady() {
	if m.isReady {
		return
	}
	n := 0
	for p := range m.procs {
		if p.ready && p.gen == m.gen {
			n++
		}
	}
	if n >= m.workers {
		m.isReady = true
		m.readyNow.Store(m.allSlotsReady()) // /readyz agrees before Start returns
		close(m.ready)
		m.log.Info("herd ready", "listen", strings.Join(m.Addrs(), ","), "workers", n)
		notify(daemon.SdNotifyReady)
		if m.readyFD != nil {
			// We are the new master of a binary upgrade: the old one may go.
			m.readyFD.Write(proto.Msg{Kind: proto.Ready}.Encode())
			m.readyFD.Close()
			m.readyFD = nil
		}
	}
}

// startReload begins a new generation. fillSlots starts its workers; the old
// generation keeps accepting until every new worker has reported ready.
func (m *Master) startReload() {
	if m.stopping {
		return
	}
	if m.reload != nil {
		// Not ignored: a deploy that writes its configuration and sends
		// HUP while the last one's reload is under way must get its own
		// (nginx's master reloads at every HUP). Any number of HUPs meanwhile
		// make one more reload, which reads the configuration as it is then.
		if !m.reloadAgain {
			m.log.Info("HUP: a reload is under way; another follows it")
		}
		m.reloadAgain = true
		return
	}
	prev := m.settings()
	if !m.reconfigure() {
		return
	}
	r := &reloadState{gen: m.gen + 1, prevGen: m.gen, prev: prev, waiting: map[*proc]struct{}{}}
	r.timer = m.clock.AfterFunc(m.cfg.ReadyTimeout, func() { m.post(event{kind: evReloadTimer}) })
	m.reload = r
	m.gen = r.gen
	m.board.SetMaster(os.Getpid(), m.gen, m.workers)
	m.log.Info("HUP: reloading", "gen", m.gen)
	notify(daemon.SdNotifyReloading)
	// A new generation starts with no crash history.
	for _, ss := range m.slots {
		ss.failures, ss.notAfter = 0, time.Time{}
	}
	m.fillSlots()
}

// unwait takes p off the list a reload is waiting for, and finishes the
// reload when the list is empty.
func (m *Master) unwait(p *proc) {
	r := m.reload
	if r == nil {
		return
	}
	if _, ok := r.waiting[p]; ok {
		delete(r.waiting, p)
		if len(r.waiting) == 0 {
			m.finishReload()
		}
	}
}

func (m *Master) finishReload() {
	r := m.reload
	r.timer.Stop()
	m.reload = nil
	for p := range m.procs {
		if p.gen < r.gen {
			m.stopProc(p, unix.SIGQUIT)
		}
	}
	m.board.CountReload()
	m.log.Info("reload done: old workers are draining", "gen", r.gen)
	notify(daemon.SdNotifyReady)
	m.reloadFollows()
}

// reloadFollows starts what was asked for while the last reload was under
// way: another reload (HUP), then the upgrade (USR2), in that order — an
// upgrade waits for a reload to end.
func (m *Master) reloadFollows() {
	switch {
	case m.reloadAgain:
		m.reloadAgain = false
		m.startReload()
	case m.upgradeAfter:
		m.upgradeAfter = false
		m.startUpgrade()
	}
}

// failReload stops the new generation and keeps the old one serving.
func (m *Master) failReload(why string) {
	r := m.reload
	r.timer.Stop()
	m.reload = nil
	m.gen = r.prevGen
	m.restore(r.prev)
	m.half.resized()
	m.board.SetMaster(os.Getpid(), m.gen, m.workers)
	for p := range m.procs {
		if p.gen == r.gen {
			m.stopProc(p, unix.SIGINT)
		}
	}
	m.log.Error("reload failed; the old workers keep serving", "reason", why)
	notify(daemon.SdNotifyReady)
	m.reloadFollows()
}

func (m *Master) stopProc(p *proc, sig unix.Signal) {
	if p.stopping && sig == unix.SIGQUIT {
		return
	}
	p.stopping = true
	if r := m.board.Record(p.rec); r != nil && sig == unix.SIGQUIT {
		r.Store(shm.State, shm.StateStopping)
	}
	m.half.stopWorker(p, sig)
}

// stop makes every worker stop: gracefully (QUIT to them: bounded by the
// drain timeout) or fast (INT). Whatever is left when the bound passes is
// killed. A graceful stop may turn fast; a fast one stays as it is.
func (m *Master) stop(graceful bool, sig os.Signal) {
	if m.stopping && (graceful || m.fast) {
		return // a fast stop is never downgraded; a second QUIT changes nothing
	}
	if graceful && m.cfg.ShutdownDelay > 0 && !m.handedOver {
		// Lame duck: /readyz says 503 at once (stopping), and the workers
		// serve on for ShutdownDelay, while load balancers and Kubernetes
		// endpoints take the server out of rotation; then they drain.
		m.stopping = true
		m.log.Info("stopping: readiness is off; serving on before draining", "signal", sig.String(), "for", m.cfg.ShutdownDelay)
		notify(daemon.SdNotifyStopping)
		m.lameDuck = m.clock.AfterFunc(m.cfg.ShutdownDelay, func() { m.post(event{kind: evLameDuckOver, sig: sig}) })
		return
	}
	m.stopWorkers(graceful, sig)
}

// stopWorkers tells every worker to stop, gracefully or not, and sets the
// deadline after which what is left is killed.
func (m *Master) stopWorkers(graceful bool, sig os.Signal) {
	if m.lameDuck != nil {
		m.lameDuck.Stop()
		m.lameDuck = nil
	}
	m.stopping, m.fast = true, !graceful
	if m.upgrade != nil {
		m.upgradeFailed(errors.New("this master was told to stop"))
	}
	if m.reload != nil {
		m.reload.timer.Stop()
		m.reload = nil
	}
	m.reloadAgain, m.upgradeAfter = false, false
	m.half.stopping(graceful)
	wsig, bound := unix.SIGINT, m.cfg.StopTimeout
	if graceful {
		wsig, bound = unix.SIGQUIT, m.cfg.DrainTimeout+m.cfg.StopTimeout
	}
	m.log.Info("stopping", "signal", sig.String(), "graceful", graceful, "workers", len(m.procs))
	if !m.handedOver {
		notify(daemon.SdNotifyStopping)
	}
	for p := range m.procs {
		m.stopProc(p, wsig)
	}
	if m.deadline != nil {
		m.deadline.Stop()
	}
	m.deadline = m.clock.AfterFunc(bound, func() { m.post(event{kind: evDeadline}) })
}
