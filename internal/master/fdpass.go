//go:build linux

package master

import (
	"fmt"
	"os"
	"slices"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/herd-run/herd/internal/accept"
	"github.com/herd-run/herd/internal/proto"
	"github.com/herd-run/herd/internal/shm"
	"golang.org/x/sys/unix"
)

// dispatcher is the master's half of the fdpass strategy (seed 000, UNP
// §30.9): the master accepts every connection itself and sends the
// descriptor to the least-loaded worker over that worker's control socket
// (sendmsg, SCM_RIGHTS). It keeps its own copy until the worker's
// scoreboard record shows the descriptor taken (shm.Passed: the number of
// the last one the worker took; a SOCK_SEQPACKET socket keeps them in
// order), so a worker that dies with descriptors in flight loses none:
// they go to another worker. The record is read whenever the master
// dispatches, and every collectEvery while copies are held: the worker
// sends nothing back, so a connection wakes the master once, not twice.
// Load is the worker's open connections (from the scoreboard, bounded: it
// is untrusted) plus what is in flight to it; when every worker is at
// --worker-connections the master stops accepting and the listen backlog
// holds the rest.
type dispatcher struct {
	shared
	limit int

	mu         sync.Mutex
	workers    map[*proc]bool   // ready and not stopping: may receive
	inflight   map[*proc][]sent // sent, not yet seen taken, in the order sent
	orphans    []int            // accepted, no worker could take them yet
	idle       map[*proc]func() // retired workers waiting for their in-flight to be taken
	seq        uint64
	collecting bool // a collect is due (collectEvery)

	accepting accept.Strategy
	served    chan error
	closing   atomic.Bool // accepting is stopping
	stopOnce  sync.Once
	full      atomic.Bool // every worker at its limit: logged once per episode
}

// collectEvery is how often the master looks for descriptors taken while
// it holds copies and nothing new is dispatched.
const collectEvery = 50 * time.Millisecond

func newDispatcher(m *Master) *dispatcher {
	return &dispatcher{shared: shared{m}, limit: m.cfg.Accept.WithDefaults().WorkerConnections,
		workers: map[*proc]bool{}, inflight: map[*proc][]sent{}, idle: map[*proc]func(){}}
}

// run accepts with internal/accept's "accept" strategy — a thread blocked
// in accept4 per listener, with its rules for transient errors and
// descriptor exhaustion — and dispatches what it accepts. The master's
// accepts are counted in a record of its own, outside the scoreboard: the
// workers count the connections they receive.
func (d *dispatcher) run() error {
	listeners := make([]accept.Listener, len(d.m.sockets))
	for i, s := range d.m.sockets {
		listeners[i] = accept.Listener{FD: s.FD(), Addr: s.Addr}
	}
	// Non-blocking, as the workers' engines want them: the flag belongs to
	// the socket the master and the worker share, and saves the worker two
	// fcntl calls per connection.
	strat, err := accept.New("accept", accept.Config{Listeners: listeners, Stats: new(shm.Record), Log: d.m.log, Nonblock: true})
	if err != nil {
		return fmt.Errorf("fdpass: %w", err)
	}
	d.accepting, d.served = strat, make(chan error, 1)
	go func() { d.served <- strat.Serve(d.deliver) }()
	return nil
}

// deliver dispatches an accepted connection. While every worker is at
// --worker-connections the accepting thread waits here, so the master
// stops accepting and the listen backlog holds the rest.
func (d *dispatcher) deliver(fd int) {
	for !d.hasRoom() && !d.closing.Load() {
		if d.full.CompareAndSwap(false, true) {
			d.m.log.Warn("fdpass: every worker is at its connection limit; not accepting", "limit", d.limit)
		}
		time.Sleep(5 * time.Millisecond)
	}
	d.full.Store(false)
	d.dispatch(fd)
}

// sent is a descriptor sent to a worker: its number, and the master's copy.
type sent struct {
	seq uint64
	fd  int
}

// taken is the number of the last descriptor p took (shm.Passed).
func (d *dispatcher) taken(p *proc) uint64 {
	if r := d.m.board.Record(p.rec); r != nil {
		return r.Load(shm.Passed)
	}
	return 0
}

// load is a worker's open connections plus those sent to it and not yet
// taken (d.mu held).
func (d *dispatcher) load(p *proc) int {
	q, taken := d.inflight[p], d.taken(p)
	n := len(q) - sort.Search(len(q), func(i int) bool { return q[i].seq > taken })
	if r := d.m.board.Record(p.rec); r != nil {
		if a := r.Load(shm.Active); a < 1<<20 {
			n += int(a)
		}
	}
	return n
}

// collect closes the master's copies of what p has taken (d.mu held), and
// starts p's stop once it has taken all that was sent to it, if it waits
// for that.
func (d *dispatcher) collect(p *proc) {
	q, taken := d.inflight[p], d.taken(p)
	i := 0
	for ; i < len(q) && q[i].seq <= taken; i++ {
		unix.Close(q[i].fd)
	}
	if i > 0 {
		d.inflight[p] = append(q[:0], q[i:]...)
	}
	if fn, ok := d.idle[p]; ok && len(d.inflight[p]) == 0 {
		delete(d.idle, p)
		go fn()
	}
}

// collectAll collects from every worker that holds copies (d.mu held),
// and keeps doing so every collectEvery while any are held.
func (d *dispatcher) collectAll() {
	held := false
	for p := range d.inflight {
		d.collect(p)
		held = held || len(d.inflight[p]) > 0
	}
	if held && !d.collecting {
		d.collecting = true
		time.AfterFunc(collectEvery, func() {
			d.mu.Lock()
			defer d.mu.Unlock()
			d.collecting = false
			d.collectAll()
		})
	}
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
	// The copies of what was taken are closed after the send: the client
	// waits for that, not for them.
	defer d.collectAll()
	var tried []*proc
	for {
		var best *proc
		bestLoad := 0
		for p := range d.workers {
			if slices.Contains(tried, p) {
				continue
			}
			if n := d.load(p); best == nil || n < bestLoad {
				best, bestLoad = p, n
			}
		}
		if best == nil {
			d.orphans = append(d.orphans, fd)
			return
		}
		tried = append(tried, best)
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
	d.inflight[p] = append(d.inflight[p], sent{seq, fd})
	return true
}

// whenIdle calls fn (in a new goroutine) once nothing sent to the retired
// worker p is still to be taken by it — at once if nothing is. The
// master stops a worker only then, so a stopping worker never has to drop
// a descriptor that reached it too late to be served.
func (d *dispatcher) whenIdle(p *proc, fn func()) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.idle[p] = fn
	d.collect(p)
	d.collectAll() // and again every collectEvery while p holds any
}

// stopAccepting ends the accepting threads and waits for them, so a
// stopping master accepts nothing it could no longer hand to a worker.
func (d *dispatcher) stopAccepting() {
	d.stopOnce.Do(func() {
		d.closing.Store(true)
		if d.accepting == nil {
			return
		}
		d.accepting.Stop()
		if err := <-d.served; err != nil {
			d.m.log.Warn("fdpass: accepting stopped with error", "err", err)
		}
	})
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

// exited re-sends what p never took: it died, or stopped, before it
// took those connections.
func (d *dispatcher) exited(p *proc) {
	d.mu.Lock()
	d.collect(p) // what it took before it went
	delete(d.workers, p)
	delete(d.idle, p)
	lost := d.inflight[p]
	delete(d.inflight, p)
	d.mu.Unlock()
	if len(lost) > 0 {
		d.m.log.Info("fdpass: re-sending connections a worker did not take", "pid", p.pid(), "connections", len(lost))
	}
	for _, l := range lost {
		d.dispatch(l.fd)
	}
}

// stopWorker stops sending to p; a graceful stop waits until p has taken
// what was already sent (a second at most: a worker that never takes
// it).
func (d *dispatcher) stopWorker(p *proc, sig unix.Signal) {
	d.retire(p)
	if sig != unix.SIGQUIT {
		p.process.Signal(sig)
		return
	}
	var once sync.Once
	quit := func() { once.Do(func() { p.process.Signal(unix.SIGQUIT) }) }
	d.whenIdle(p, quit)
	time.AfterFunc(time.Second, quit)
}

// stopping: a graceful stop stops accepting at once; the backlog keeps what
// arrives now (for a new master, if any).
func (d *dispatcher) stopping(graceful bool) {
	if graceful {
		d.stopAccepting()
	}
}

// close ends accepting and closes what was never handed over.
func (d *dispatcher) close() {
	d.stopAccepting()
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, fd := range d.orphans {
		unix.Close(fd)
	}
	d.orphans = nil
}
