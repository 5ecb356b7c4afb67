//go:build linux

package lab

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/herd-run/herd/internal/shm"
	"golang.org/x/sys/unix"
)

// Matrix is an experiment: every combination of its lists is one cell, one
// run of a freshly started server under one load.
type Matrix struct {
	Strategies  []string
	Workers     []int
	Modes       []string // "close" (a connection per request) or "keepalive"
	Concurrency []int
	Requests    int           // per cell (0: bounded by Duration only)
	Duration    time.Duration // per cell (0: bounded by Requests only)
	Warmup      int           // requests sent before measuring; 0: none
	// Rounds runs the whole matrix this many times, one round after the
	// other, so that every cell is measured beside the others several
	// times on a noisy machine; the report gives medians (Summary). 0 is 1.
	Rounds int
	Listen string // herd's listen address; default 127.0.0.1:0 (loopback only)
	// Kernel counts accept4 calls, failed ones and wakeups with the
	// kernel's tracepoints (perf; strace if perf cannot), for herd and for
	// a Command alike: see KernelCounts.
	Kernel bool
	// Peer marks the runs of a Command as another server's (the peers
	// preset), so a report tells herd's rows from the others.
	Peer bool

	Herd      string   // the herd binary; default this executable
	ExtraArgs []string // more flags for `herd serve`
	// Command, if set, is run with sh -c instead of herd for every cell
	// (nginx, say); it must serve Path on Target. No scoreboard then.
	Command string
	Target  string
	Path    string // default /hello.txt in the lab's document root

	// Progress receives a line per cell, or a live bar when Terminal.
	Progress io.Writer
	Terminal bool
}

// helloBody is what the lab's document root serves at /hello.txt: 13 bytes,
// like the seeds' "Hello, World" apps.
const helloBody = "Hello, world\n"

// Cells lists the matrix's cells in run order.
func (m *Matrix) Cells() []Cell {
	var cells []Cell
	for _, s := range m.Strategies {
		for _, w := range m.Workers {
			for _, mode := range m.Modes {
				for _, c := range m.Concurrency {
					cells = append(cells, Cell{Strategy: s, Workers: w, Mode: mode, Concurrency: c})
				}
			}
		}
	}
	return cells
}

// Cell is one combination.
type Cell struct {
	Strategy    string
	Workers     int
	Mode        string
	Concurrency int
}

func (c Cell) String() string {
	return fmt.Sprintf("%s w=%d %s c=%d", c.Strategy, c.Workers, c.Mode, c.Concurrency)
}

func (m *Matrix) check() error {
	if len(m.Strategies) == 0 || len(m.Workers) == 0 || len(m.Modes) == 0 || len(m.Concurrency) == 0 {
		return errors.New("lab: the matrix is empty")
	}
	for _, mode := range m.Modes {
		if mode != "close" && mode != "keepalive" {
			return fmt.Errorf("lab: mode %q: want close or keepalive", mode)
		}
	}
	for _, w := range m.Workers {
		if w < 1 {
			return fmt.Errorf("lab: %d workers", w)
		}
	}
	for _, c := range m.Concurrency {
		if c < 1 {
			return fmt.Errorf("lab: concurrency %d", c)
		}
	}
	if m.Requests < 0 {
		return fmt.Errorf("lab: %d requests", m.Requests)
	}
	if m.Duration < 0 {
		return fmt.Errorf("lab: a duration of %v", m.Duration)
	}
	if m.Requests <= 0 && m.Duration <= 0 {
		return errors.New("lab: give a request count or a duration per cell")
	}
	if m.Command != "" {
		if err := checkAddr(m.Target); err != nil {
			return err
		}
	}
	if m.Listen != "" {
		if err := checkAddr(m.Listen); err != nil {
			return err
		}
	}
	if m.Warmup < 0 {
		return fmt.Errorf("lab: warm-up of %d requests", m.Warmup)
	}
	if m.Rounds < 0 {
		return fmt.Errorf("lab: %d rounds", m.Rounds)
	}
	return nil
}

// Run runs every cell in turn and returns the report.
func (m *Matrix) Run(ctx context.Context) (*Report, error) {
	if err := m.check(); err != nil {
		return nil, err
	}
	if m.Listen == "" {
		m.Listen = "127.0.0.1:0"
	}
	if m.Path == "" {
		m.Path = "/hello.txt"
	}
	if m.Herd == "" && m.Command == "" {
		exe, err := os.Executable()
		if err != nil {
			return nil, err
		}
		m.Herd = exe
	}
	root, err := os.MkdirTemp("", "herd-lab-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(root)
	if err := os.WriteFile(filepath.Join(root, "hello.txt"), []byte(helloBody), 0o644); err != nil {
		return nil, err
	}
	rep := &Report{Env: currentEnv()}
	cells := m.Cells()
	rounds := max(m.Rounds, 1)
	for round := range rounds {
		for j, cell := range cells {
			if err := ctx.Err(); err != nil {
				return rep, err
			}
			i := round*len(cells) + j
			bar := func(done int, elapsed time.Duration) { m.bar(i, rounds*len(cells), cell, done, elapsed) }
			run, err := m.runCell(ctx, root, cell, false, bar)
			if err == nil && m.Kernel {
				// Counted in a second run of the same cell: tracing costs the
				// server CPU and context switches, which must not show in the
				// figures of the first.
				var counted *Run
				if counted, err = m.runCell(ctx, root, cell, true, bar); err == nil {
					run.Kernel = counted.Kernel
					run.Kernel.Connections = counted.Connections
					if run.Kernel.Connections == 0 {
						run.Kernel.Connections = counted.Requests + counted.Errors
					}
				}
			}
			if err != nil {
				return rep, fmt.Errorf("%s: %w", cell, err)
			}
			if rounds > 1 {
				run.Round = round + 1
			}
			m.line(i, rounds*len(cells), run)
			rep.Runs = append(rep.Runs, *run)
		}
	}
	return rep, nil
}

func (m *Matrix) bar(i, n int, cell Cell, done int, elapsed time.Duration) {
	if m.Progress == nil || !m.Terminal {
		return
	}
	frac := progress(m.Requests, m.Duration, done, elapsed)
	const width = 30
	fill := int(frac * width)
	fmt.Fprintf(m.Progress, "\r[%d/%d] %-34s [%s%s] %d", i+1, n, cell, strings.Repeat("#", fill), strings.Repeat(".", width-fill), done)
}

// progress is how far a cell's load is, from 0 to 1: by requests, by
// time, or by whichever bound is nearer its end when both are set.
func progress(requests int, duration time.Duration, done int, elapsed time.Duration) float64 {
	frac := 0.0
	if requests > 0 {
		frac = float64(done) / float64(requests)
	}
	if duration > 0 {
		frac = max(frac, elapsed.Seconds()/duration.Seconds())
	}
	return min(frac, 1)
}

func (m *Matrix) line(i, n int, r *Run) {
	if m.Progress == nil {
		return
	}
	if m.Terminal {
		fmt.Fprint(m.Progress, "\r\033[K")
	}
	fmt.Fprintf(m.Progress, "[%d/%d] %s w=%d %s c=%d: %d requests, %d errors, %.0f req/s, %s wakeups/conn\n",
		i+1, n, r.Strategy, r.Workers, r.Mode, r.Concurrency, r.Requests, r.Errors, r.RPS, board(*r, "%.2f", r.WakeupsPerConn))
}

// server is one started server under test.
type server struct {
	cmd    *exec.Cmd
	addr   string
	pid    int // the process whose tree is measured
	herd   bool
	stderr *tailBuffer
}

var readyLine = regexp.MustCompile(`msg="herd ready" listen=([^,\s]+)`)

func (m *Matrix) start(ctx context.Context, root string, cell Cell) (*server, error) {
	s := &server{stderr: &tailBuffer{max: 8 << 10}}
	if m.Command != "" {
		s.cmd = exec.Command("sh", "-c", m.Command)
		s.addr = m.Target
	} else {
		args := append([]string{"serve", root, "--listen", m.Listen, "--workers", fmt.Sprint(cell.Workers),
			"--strategy", cell.Strategy}, m.ExtraArgs...)
		s.cmd = exec.Command(m.Herd, args...)
		s.herd = true
	}
	s.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	pr, pw := io.Pipe()
	s.cmd.Stderr = pw
	if err := s.cmd.Start(); err != nil {
		return nil, err
	}
	s.pid = s.cmd.Process.Pid
	ready := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(pr)
		for sc.Scan() {
			s.stderr.Write([]byte(sc.Text() + "\n"))
			if mm := readyLine.FindStringSubmatch(sc.Text()); mm != nil {
				select {
				case ready <- mm[1]:
				default:
				}
			}
		}
	}()
	exited := make(chan struct{})
	go func() { s.cmd.Wait(); pw.Close(); close(exited) }()
	deadline := time.After(30 * time.Second)
	if s.herd {
		select {
		case s.addr = <-ready:
			return s, nil
		case <-exited:
			return nil, fmt.Errorf("herd exited before it was ready: %s", s.stderr)
		case <-deadline:
			s.stop()
			return nil, fmt.Errorf("herd not ready in 30s: %s", s.stderr)
		case <-ctx.Done():
			s.stop()
			return nil, ctx.Err()
		}
	}
	for {
		if c, err := net.DialTimeout("tcp", s.addr, 200*time.Millisecond); err == nil {
			c.Close()
			settle(s.pid, 10*time.Second)
			return s, nil
		}
		select {
		case <-exited:
			// A daemonizing command exits 0 once it has forked; keep waiting
			// for it to serve.
			if s.cmd.ProcessState.ExitCode() == 0 {
				exited = nil
				continue
			}
			return nil, fmt.Errorf("%q exited before it served %s: %s", m.Command, s.addr, s.stderr)
		case <-deadline:
			s.stop()
			return nil, fmt.Errorf("nothing served %s within 30s of %q", s.addr, m.Command)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// settle waits until the process tree under pid has kept its size for
// half a second (at most max): a server may listen before its workers are
// up (gunicorn forks them one by one after binding), and processes that
// appear during the measured load would go uncounted.
func settle(pid int, max time.Duration) {
	const still = 500 * time.Millisecond
	n, since, end := len(treeStats(pid)), time.Now(), time.Now().Add(max)
	for time.Since(since) < still && time.Now().Before(end) {
		time.Sleep(50 * time.Millisecond)
		if m := len(treeStats(pid)); m != n {
			n, since = m, time.Now()
		}
	}
}

// stop ends the server and everything it started.
func (s *server) stop() {
	syscall.Kill(-s.pid, syscall.SIGTERM)
	done := make(chan struct{})
	go func() { s.cmd.Process.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		syscall.Kill(-s.pid, syscall.SIGKILL)
	}
	// The rest of the group too (uWSGI's workers outlive their master by a
	// moment): a server still holding the port would answer the next
	// cell's dials in place of the server that cell starts.
	for end := time.Now().Add(10 * time.Second); syscall.Kill(-s.pid, 0) == nil; {
		if time.Now().After(end) {
			syscall.Kill(-s.pid, syscall.SIGKILL)
			end = time.Now().Add(10 * time.Second)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func (s *server) scoreboard() (shm.Snapshot, bool) {
	if !s.herd {
		return shm.Snapshot{}, false
	}
	region, board, err := shm.OpenScoreboardOf(s.pid)
	if err != nil {
		return shm.Snapshot{}, false
	}
	defer region.Close()
	return board.Snapshot(), true
}

func (m *Matrix) runCell(ctx context.Context, root string, cell Cell, kernel bool, progress func(int, time.Duration)) (*Run, error) {
	srv, err := m.start(ctx, root, cell)
	if err != nil {
		return nil, err
	}
	defer srv.stop()
	load := Load{
		Addr: srv.addr, Path: m.Path, Concurrency: cell.Concurrency, KeepAlive: cell.Mode == "keepalive",
		Requests: m.Warmup, WantLength: int64(len(helloBody)),
	}
	if m.Command != "" {
		load.WantLength = -1
	}
	warm := 0
	if m.Warmup > 0 {
		res, err := load.Run(ctx)
		if err != nil {
			return nil, err
		}
		warm = res.Requests + res.Errors
	}
	before, _ := srv.scoreboard()
	procBefore := treeStats(srv.pid)
	var count *kernelCount
	if kernel {
		if count, err = startKernelCount(slices.Collect(maps.Keys(procBefore))); err != nil {
			return nil, err
		}
	}

	start := time.Now()
	load.Requests, load.Duration = m.Requests, m.Duration
	load.Progress = func(done int) { progress(done, time.Since(start)) }
	res, err := load.Run(ctx)
	var counts *KernelCounts
	if count != nil {
		var cerr error
		if counts, cerr = count.stop(); cerr != nil && err == nil {
			err = cerr
		}
	}
	if err != nil {
		return nil, err
	}
	// A worker counts a request just after its answer is on the wire.
	after, ok := srv.scoreboard()
	for deadline := time.Now().Add(2 * time.Second); ok && time.Now().Before(deadline) &&
		after.Total.Requests-before.Total.Requests < uint64(res.Requests); {
		time.Sleep(20 * time.Millisecond)
		after, ok = srv.scoreboard()
	}
	procs := sumSince(procBefore, treeStats(srv.pid))
	run := newRun(cell, res, before, after, ok, procs)
	run.Warmup, run.Addr, run.Kernel, run.Peer = warm, srv.addr, counts, m.Peer
	return run, nil
}

// tailBuffer keeps the last max bytes written, for error messages.
type tailBuffer struct {
	mu  sync.Mutex
	b   []byte
	max int
}

func (t *tailBuffer) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.b = append(t.b, p...)
	if len(t.b) > t.max {
		t.b = t.b[len(t.b)-t.max:]
	}
	return len(p), nil
}

func (t *tailBuffer) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return strings.TrimSpace(string(t.b))
}

func currentEnv() Env {
	var u unix.Utsname
	unix.Uname(&u)
	host, _ := os.Hostname()
	return Env{
		Kernel: unix.ByteSliceToString(u.Release[:]),
		CPUs:   runtime.NumCPU(),
		Go:     runtime.Version(),
		Host:   host,
		Time:   time.Now().UTC().Format(time.RFC3339),
	}
}
