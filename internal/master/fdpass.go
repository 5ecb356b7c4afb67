package master

import (
	"fmt"
	"log/slog"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/herd-run/herd/internal/proto"
	"github.com/herd-run/herd/internal/shm"
	"golang.org/x/sys/unix"
)

// dispatcher is the master's half of the fdpass strategy (seed 000, UNP
// §30.9): the master accepts every connection itself and sends the
// descriptor to the least-loaded worker over that worker's control socket
// (sendmsg, SCM_RIGHTS). It keeps its own copy until the worker answers
// "ack SEQ", so a worker that dies with descriptors in flight loses none:
// they go to another worker. Load is the worker's open connections (from
// the scoreboard, bounded: it is untrusted) plus what is in flight to it;
// when every worker is at --worker-connections the master stops accepting
// and the listen backlog holds the rest.
type dispatcher struct {
	log   *slog.Logger
	board *shm.Scoreboard
	limit int

	mu       sync.Mutex
	workers  map[*proc]bool           // ready and not stopping: may receive
	inflight map[*proc]map[uint64]int // sent, not yet acknowledged: seq → master's copy
	orphans  []int                    // accepted, no worker could take them yet
	idle     map[*proc]func()         // retired workers waiting for their in-flight to be acknowledged
	seq      uint64
	stopping atomic.Bool
	wg       sync.WaitGroup
}

func newDispatcher(log *slog.Logger, board *shm.Scoreboard, limit int) *dispatcher {
	return &dispatcher{log: log, board: board, limit: limit,
		workers: map[*proc]bool{}, inflight: map[*proc]map[uint64]int{}, idle: map[*proc]func(){}}
}

// run starts one accepting thread per listener. The sockets are blocking
// with SO_RCVTIMEO, as for the accept strategy, so the threads notice stop.
func (d *dispatcher) run(sockets []*Socket) error {
	tv := unix.NsecToTimeval((250 * time.Millisecond).Nanoseconds())
	for _, s := range sockets {
		err := unix.SetNonblock(s.FD(), false)
		if err == nil {
			err = unix.SetsockoptTimeval(s.FD(), unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv)
		}
		if err != nil {
			return fmt.Errorf("fdpass: %s: %w", s.Addr, err)
		}
		d.wg.Add(1)
		go d.acceptLoop(s.FD(), s.Addr)
	}
	return nil
}

func (d *dispatcher) acceptLoop(lfd int, addr string) {
	defer d.wg.Done()
	full := false
	for !d.stopping.Load() {
		if !d.hasRoom() {
			if !full {
				d.log.Warn("fdpass: every worker is at its connection limit; not accepting", "limit", d.limit)
				full = true
			}
			time.Sleep(5 * time.Millisecond)
			continue
		}
		full = false
		fd, _, err := unix.Accept4(lfd, unix.SOCK_CLOEXEC)
		switch {
		case err == nil:
			d.dispatch(fd)
		case err == unix.EAGAIN, transientAccept(err):
		case err == unix.EMFILE || err == unix.ENFILE:
			time.Sleep(100 * time.Millisecond)
		default:
			d.log.Error("fdpass: accept4", "listen", addr, "err", err)
			time.Sleep(100 * time.Millisecond)
		}
	}
}

func transientAccept(err error) bool {
	return err == unix.EINTR || err == unix.ECONNABORTED || err == unix.EPROTO || err == unix.EPERM
}

// load is a worker's open plus in-flight connections.
func (d *dispatcher) load(p *proc) int {
	n := len(d.inflight[p])
	if r := d.board.Record(p.rec); r != nil {
		if a := r.Load(shm.Active); a < 1<<20 {
			n += int(a)
		}
	}
	return n
}

func (d *dispatcher) hasRoom() bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	for p := range d.workers {
		if d.load(p) < d.limit {
			return true
		}
	}
	return false
}

// dispatch sends fd to the least-loaded worker that takes it, or keeps it
// until one can.
func (d *dispatcher) dispatch(fd int) {
	d.mu.Lock()
	defer d.mu.Unlock()
	tried := map[*proc]bool{}
	for {
		var best *proc
		for p := range d.workers {
			if !tried[p] && (best == nil || d.load(p) < d.load(best)) {
				best = p
			}
		}
		if best == nil {
			d.orphans = append(d.orphans, fd)
			return
		}
		tried[best] = true
		if d.send(best, fd) {
			return
		}
	}
}

// control runs fn on f's descriptor without (*os.File).Fd, which would put
// it into blocking mode as a side effect.
func control(f *os.File, fn func(fd int) error) error {
	rc, err := f.SyscallConn()
	if err != nil {
		return err
	}
	var ferr error
	if err := rc.Control(func(fd uintptr) { ferr = fn(int(fd)) }); err != nil {
		return err
	}
	return ferr
}

func (d *dispatcher) send(p *proc, fd int) bool {
	d.seq++
	seq := d.seq
	var err error
	werr := control(p.ctrl, func(cfd int) error {
		err = unix.Sendmsg(cfd, proto.Msg{Kind: proto.FD, Seq: seq}.Encode(), unix.UnixRights(fd), nil, unix.MSG_DONTWAIT|unix.MSG_NOSIGNAL)
		return nil
	})
	if werr != nil || err != nil {
		return false // full or gone: another worker, or later
	}
	if d.inflight[p] == nil {
		d.inflight[p] = map[uint64]int{}
	}
	d.inflight[p][seq] = fd
	return true
}

// ack closes the master's copy of a descriptor the worker now holds.
func (d *dispatcher) ack(p *proc, seq uint64) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if fd, ok := d.inflight[p][seq]; ok {
		unix.Close(fd)
		delete(d.inflight[p], seq)
	}
	if fn, ok := d.idle[p]; ok && len(d.inflight[p]) == 0 {
		delete(d.idle, p)
		go fn()
	}
}

// whenIdle calls fn (in a new goroutine) once nothing sent to the retired
// worker p is waiting for its acknowledgement — at once if nothing is. The
// master stops a worker only then, so a stopping worker never has to drop
// a descriptor that reached it too late to be served.
func (d *dispatcher) whenIdle(p *proc, fn func()) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if len(d.inflight[p]) == 0 {
		go fn()
		return
	}
	d.idle[p] = fn
}

// stopAccepting ends the accepting threads and waits for them, so a
// stopping master accepts nothing it could no longer hand to a worker.
func (d *dispatcher) stopAccepting() {
	d.stopping.Store(true)
	d.wg.Wait()
}

// ready lets p receive, and hands it what no worker could take.
func (d *dispatcher) ready(p *proc) {
	d.mu.Lock()
	d.workers[p] = true
	orphans := d.orphans
	d.orphans = nil
	d.mu.Unlock()
	for _, fd := range orphans {
		d.dispatch(fd)
	}
}

// retire stops sending to p (it is stopping).
func (d *dispatcher) retire(p *proc) {
	d.mu.Lock()
	delete(d.workers, p)
	d.mu.Unlock()
}

// gone re-sends what p never acknowledged: it died, or stopped, before it
// took those connections.
func (d *dispatcher) gone(p *proc) {
	d.mu.Lock()
	delete(d.workers, p)
	delete(d.idle, p)
	lost := d.inflight[p]
	delete(d.inflight, p)
	d.mu.Unlock()
	if len(lost) > 0 {
		d.log.Info("fdpass: re-sending connections a worker did not take", "pid", p.pid(), "connections", len(lost))
	}
	for _, fd := range lost {
		d.dispatch(fd)
	}
}

// stop ends accepting and closes what was never handed over.
func (d *dispatcher) stop() {
	d.stopAccepting()
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, fd := range d.orphans {
		unix.Close(fd)
	}
	d.orphans = nil
}
