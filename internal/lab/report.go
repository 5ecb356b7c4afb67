//go:build linux

package lab

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"slices"
	"sort"
	"strings"
	"text/tabwriter"

	"github.com/herd-run/herd/internal/shm"
)

// Report is a whole experiment: where it ran and one Run per cell.
type Report struct {
	Env    Env    `json:"env"`
	Preset string `json:"preset,omitempty"`
	Runs   []Run  `json:"runs"`
}

// Env describes the machine.
type Env struct {
	Kernel string `json:"kernel"`
	CPUs   int    `json:"cpus"`
	Go     string `json:"go"`
	Host   string `json:"host,omitempty"`
	Time   string `json:"time"`
}

// Latency is in milliseconds.
type Latency struct {
	P50  float64 `json:"p50"`
	P90  float64 `json:"p90"`
	P99  float64 `json:"p99"`
	P999 float64 `json:"p99_9"`
	Max  float64 `json:"max"`
}

// Run is one cell's figures. Counter fields are the growth during the
// measured load only (warm-up excluded).
type Run struct {
	Phase       string         `json:"phase,omitempty"` // a preset's part: "count" or "throughput"
	Round       int            `json:"round,omitempty"` // which of Matrix.Rounds, from 1; 0 when there was one
	Strategy    string         `json:"strategy"`
	Workers     int            `json:"workers"`
	Mode        string         `json:"mode"`
	Concurrency int            `json:"concurrency"`
	Requests    int            `json:"requests"` // answered as expected
	Errors      int            `json:"errors"`
	ErrorKinds  map[string]int `json:"error_kinds,omitempty"`
	Connections int            `json:"connections"` // opened by the clients
	Seconds     float64        `json:"seconds"`
	RPS         float64        `json:"rps"`
	LatencyMS   Latency        `json:"latency_ms"`

	Scoreboard      bool     `json:"scoreboard"` // false: no herd scoreboard (another server)
	Accepts         uint64   `json:"accepts"`
	Wakeups         uint64   `json:"wakeups"`
	SpuriousWakeups uint64   `json:"spurious_wakeups"`
	Timeouts        uint64   `json:"timeouts"`
	WakeupsPerConn  float64  `json:"wakeups_per_conn"`
	Accept4PerK     float64  `json:"accept4_calls_per_1000_conns"` // accepts + spurious, as strace would count them
	PerWorkerConns  []uint64 `json:"per_worker_conns"`
	Jain            float64  `json:"jain"`
	MaxOverMean     float64  `json:"max_over_mean"`

	CtxSwitches            uint64  `json:"ctx_switches"` // voluntary + involuntary, master and workers
	CtxSwitchesVoluntary   uint64  `json:"ctx_switches_voluntary"`
	CtxSwitchesInvoluntary uint64  `json:"ctx_switches_involuntary"`
	CtxSwitchesPerRequest  float64 `json:"ctx_switches_per_request"`
	CPUSeconds             float64 `json:"cpu_seconds"`
	CPUPerRequestUS        float64 `json:"cpu_us_per_request"`
	// The load generator's own CPU per request: on a machine it shares
	// with the server, what it takes the server does not get.
	ClientCPUPerRequestUS float64 `json:"client_cpu_us_per_request"`

	Warmup int           `json:"warmup"`           // requests sent before measuring
	Addr   string        `json:"addr"`             // where the server listened
	Peer   bool          `json:"peer,omitempty"`   // another server (Strategy names it), not herd
	Kernel *KernelCounts `json:"kernel,omitempty"` // counted by the kernel (Matrix.Kernel)
}

func newRun(c Cell, res *Result, before, after shm.Snapshot, board bool, procs ProcStats) *Run {
	ms := func(q float64) float64 { return float64(res.Latency.ValueAtQuantile(q)) / 1000 }
	r := &Run{
		Strategy: c.Strategy, Workers: c.Workers, Mode: c.Mode, Concurrency: c.Concurrency,
		Requests: res.Requests, Errors: res.Errors, ErrorKinds: res.ErrorKinds, Connections: res.Connections,
		Seconds: res.Elapsed.Seconds(), RPS: res.RPS(),
		LatencyMS:              Latency{P50: ms(50), P90: ms(90), P99: ms(99), P999: ms(99.9), Max: float64(res.Latency.Max()) / 1000},
		Scoreboard:             board,
		CtxSwitches:            procs.Voluntary + procs.Involuntary,
		CtxSwitchesVoluntary:   procs.Voluntary,
		CtxSwitchesInvoluntary: procs.Involuntary,
		CPUSeconds:             float64(procs.CPUTicks) / clockTick,
	}
	if len(r.ErrorKinds) == 0 {
		r.ErrorKinds = nil
	}
	if n := float64(res.Requests + res.Errors); n > 0 {
		r.CtxSwitchesPerRequest = float64(r.CtxSwitches) / n
		r.CPUPerRequestUS = r.CPUSeconds * 1e6 / n
		r.ClientCPUPerRequestUS = float64(res.ClientCPU.Microseconds()) / n
	}
	if board {
		r.Accepts = after.Total.Accepts - before.Total.Accepts
		r.Wakeups = after.Total.Wakeups - before.Total.Wakeups
		r.SpuriousWakeups = after.Total.Spurious - before.Total.Spurious
		r.Timeouts = after.Total.Timeouts - before.Total.Timeouts
		if r.Accepts > 0 {
			r.WakeupsPerConn = float64(r.Wakeups) / float64(r.Accepts)
			r.Accept4PerK = 1000 * float64(r.Accepts+r.SpuriousWakeups) / float64(r.Accepts)
		}
		r.PerWorkerConns = perWorkerGrowth(before, after)
		r.Jain = Jain(r.PerWorkerConns)
		r.MaxOverMean = maxOverMean(r.PerWorkerConns)
	}
	return r
}

// perWorkerGrowth is each live worker's accepts during the load, in slot order.
func perWorkerGrowth(before, after shm.Snapshot) []uint64 {
	prev := map[int]uint64{}
	for _, w := range before.Live {
		prev[w.PID] = w.Accepts
	}
	live := append([]shm.WorkerStat(nil), after.Live...)
	sort.Slice(live, func(i, j int) bool { return live[i].Slot < live[j].Slot })
	out := make([]uint64, 0, len(live))
	for _, w := range live {
		out = append(out, w.Accepts-prev[w.PID])
	}
	return out
}

// Jain is Jain's fairness index (Σx)²/(n·Σx²): 1 when every worker took the
// same share, 1/n when one took everything. 0 for no data.
func Jain(xs []uint64) float64 {
	var sum, sq float64
	for _, x := range xs {
		sum += float64(x)
		sq += float64(x) * float64(x)
	}
	if sq == 0 {
		return 0
	}
	return sum * sum / (float64(len(xs)) * sq)
}

func maxOverMean(xs []uint64) float64 {
	var sum, mx float64
	for _, x := range xs {
		sum += float64(x)
		mx = max(mx, float64(x))
	}
	if sum == 0 {
		return 0
	}
	return mx / (sum / float64(len(xs)))
}

// WriteTable prints the runs as an aligned table.
func (r *Report) WriteTable(w io.Writer) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	kernel, peers := r.hasKernel(), r.hasPeers()
	head := "phase\tstrategy\tworkers\tmode\tclients\trequests\terrors\treq/s\tp50 ms\tp99 ms\tmax ms\twakeups/conn\tspurious\tcs/req\tforced/req\tcpu µs/req\tclient µs/req\tjain\tmax/mean\tper-worker conns\t"
	if kernel {
		head += "k:accept4/conn\tk:failed/conn\tk:wakeups/conn\tcounted by\t"
	}
	rounds := slices.ContainsFunc(r.Runs, func(x Run) bool { return x.Round > 0 })
	if rounds {
		head = "round\t" + head
	}
	if peers {
		head = "server\t" + head
	}
	fmt.Fprintln(tw, head)
	for _, x := range r.Runs {
		phase := x.Phase
		if phase == "" {
			phase = "-"
		}
		if peers {
			fmt.Fprintf(tw, "%s\t", x.Server())
		}
		if rounds {
			fmt.Fprintf(tw, "%d\t", x.Round)
		}
		fmt.Fprintf(tw, "%s\t%s\t%d\t%s\t%d\t%d\t%d\t%.0f\t%.3f\t%.3f\t%.3f\t%s\t%s\t%.2f\t%.2f\t%.0f\t%.0f\t%s\t%s\t%s\t",
			phase, x.Strategy, x.Workers, x.Mode, x.Concurrency, x.Requests, x.Errors, x.RPS,
			x.LatencyMS.P50, x.LatencyMS.P99, x.LatencyMS.Max,
			board(x, "%.3f", x.WakeupsPerConn), board(x, "%d", x.SpuriousWakeups),
			x.CtxSwitchesPerRequest, x.ForcedPerRequest(), x.CPUPerRequestUS, x.ClientCPUPerRequestUS,
			board(x, "%.3f", x.Jain), board(x, "%.2f", x.MaxOverMean), perWorker(x))
		if kernel {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t", x.KernelCell("accept4"), x.KernelCell("failed"), x.KernelCell("wakeups"), x.KernelCell("method"))
		}
		fmt.Fprintln(tw)
	}
	tw.Flush()
	for _, n := range r.Notes() {
		fmt.Fprintln(w, "note: "+n)
	}
}

// CellSummary is one cell measured over several rounds: medians, with the
// lowest and highest value in parentheses, as text.
type CellSummary struct {
	Label       string // strategy (or peer), and what varies
	Rounds      int
	RPS         string
	VsExclusive string // req/s ÷ exclusive's in the same round and cell; "-" without one
	CtxSwitches string
	Forced      string // the involuntary part of CtxSwitches
	CPU         string
	ClientCPU   string // the load generator's CPU per request
}

// Summary is the report's cells over their rounds, in run order; nil when
// the matrix ran once. A ratio to exclusive's rate is taken within each
// round, so both sides of it ran minutes apart at most.
func (r *Report) Summary() []CellSummary {
	if !slices.ContainsFunc(r.Runs, func(x Run) bool { return x.Round > 0 }) {
		return nil
	}
	type key struct {
		phase, strategy  string
		workers, clients int
		mode             string
		peer             bool
	}
	keyOf := func(x Run) key { return key{x.Phase, x.Strategy, x.Workers, x.Concurrency, x.Mode, x.Peer} }
	type roundOf struct {
		cell  key // without its strategy
		round int
	}
	exclusive := map[roundOf]float64{} // req/s
	for _, x := range r.Runs {
		if x.Strategy == "exclusive" && !x.Peer {
			k := keyOf(x)
			k.strategy = ""
			exclusive[roundOf{k, x.Round}] = x.RPS
		}
	}
	var order []key
	runs := map[key][]Run{}
	for _, x := range r.Runs {
		k := keyOf(x)
		if _, ok := runs[k]; !ok {
			order = append(order, k)
		}
		runs[k] = append(runs[k], x)
	}
	label := func(x Run) string { x.Round = 0; return runLabel(x, r.Runs) }
	var out []CellSummary
	for _, k := range order {
		xs := runs[k]
		cell := k
		cell.strategy = ""
		var rps, cs, forced, cpu, client, vs []float64
		for _, x := range xs {
			rps = append(rps, x.RPS)
			cs = append(cs, x.CtxSwitchesPerRequest)
			forced = append(forced, x.ForcedPerRequest())
			cpu = append(cpu, x.CPUPerRequestUS)
			client = append(client, x.ClientCPUPerRequestUS)
			if e := exclusive[roundOf{cell, x.Round}]; e > 0 {
				vs = append(vs, x.RPS/e)
			}
		}
		s := CellSummary{Label: label(xs[0]), Rounds: len(xs), RPS: spread(rps, "%.0f"),
			CtxSwitches: spread(cs, "%.2f"), Forced: spread(forced, "%.2f"), CPU: spread(cpu, "%.0f"),
			ClientCPU: spread(client, "%.0f"), VsExclusive: "-"}
		if len(vs) == len(xs) {
			s.VsExclusive = spread(vs, "%.2f")
		}
		out = append(out, s)
	}
	return out
}

// spread is the median of xs, then the lowest and highest in parentheses.
func spread(xs []float64, format string) string {
	s := slices.Clone(xs)
	slices.Sort(s)
	n := len(s)
	med := s[n/2]
	if n%2 == 0 {
		med = (s[n/2-1] + s[n/2]) / 2
	}
	return fmt.Sprintf(format+" ("+format+"–"+format+")", med, s[0], s[n-1])
}

// WriteSummary prints Summary as a table, if there is one.
func (r *Report) WriteSummary(w io.Writer) {
	sum := r.Summary()
	if sum == nil {
		return
	}
	fmt.Fprintf(w, "\nmedians over the rounds (lowest–highest):\n")
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "run\trounds\treq/s\t÷ exclusive's, same round\tcs/req\tforced/req\tcpu µs/req\tclient µs/req\t")
	for _, s := range sum {
		fmt.Fprintf(tw, "%s\t%d\t%s\t%s\t%s\t%s\t%s\t%s\t\n", s.Label, s.Rounds, s.RPS, s.VsExclusive, s.CtxSwitches, s.Forced, s.CPU, s.ClientCPU)
	}
	tw.Flush()
}

// WakeupsPerRequest is the server's voluntary context switches per
// request: each a sleep that some wakeup ended, whatever the server.
func (x Run) WakeupsPerRequest() float64 {
	return x.perRequest(x.CtxSwitchesVoluntary)
}

// ForcedPerRequest is the server's involuntary context switches per
// request: preemptions, which the scheduler forced on a thread that could
// have run on. On a machine shared with the load generator they measure the
// machine as much as the strategy: a strategy with two processes on a
// connection's path (fdpass) is preempted more, where the load generator
// busies the CPUs more (herd bench's own client more than wrk).
func (x Run) ForcedPerRequest() float64 {
	return x.perRequest(x.CtxSwitchesInvoluntary)
}

// perRequest is n per request answered or failed.
func (x Run) perRequest(n uint64) float64 {
	return float64(n) / float64(max(1, x.Requests+x.Errors))
}

// Server says whose run it is: "herd", or "peer" for another server.
func (x Run) Server() string {
	if x.Peer {
		return "peer"
	}
	return "herd"
}

// kernelCell formats one of the kernel's counts per connection, or "-".
func (x Run) KernelCell(what string) string {
	k := x.Kernel
	if k == nil {
		return "-"
	}
	switch what {
	case "accept4":
		return fmt.Sprintf("%.3f", k.PerConn(k.Accept4))
	case "failed":
		return fmt.Sprintf("%.3f", k.PerConn(k.Accept4Failed))
	case "wakeups":
		if x.Requests+x.Errors == 0 {
			return "-"
		}
		return fmt.Sprintf("%.2f", x.WakeupsPerRequest())
	}
	return k.Method
}

func (r *Report) hasKernel() bool {
	return slices.ContainsFunc(r.Runs, func(x Run) bool { return x.Kernel != nil })
}

func (r *Report) hasPeers() bool {
	return slices.ContainsFunc(r.Runs, func(x Run) bool { return x.Peer })
}

// Notes explain what the report's figures mean where that is not obvious.
func (r *Report) Notes() []string {
	var notes []string
	if slices.ContainsFunc(r.Runs, func(x Run) bool { return !x.Peer && x.Strategy == "go" }) {
		notes = append(notes, "go: a wakeup is a return from parking on Go's netpoller. A worker that comes back "+
			"to accept4 after serving finds the next connection already queued without parking, so under load "+
			"wakeups per connection fall below 1.0; the herd shows in its spurious wakeups (woken, nothing to accept).")
	}
	notes = append(notes, "cs/req: the context switches of the master's and workers' threads per request (/proc), "+
		"voluntary (a sleep some wakeup ended) and involuntary; forced/req is the involuntary part, preemption, "+
		"which on a machine shared with the load generator is the machine's as much as the strategy's. "+
		"cpu µs/req is the server's CPU time per request, client µs/req the load generator's own (one thread, "+
		"taken from the same CPUs).")
	if r.hasKernel() {
		notes = append(notes, "k: columns are counted by the kernel for every server alike, per connection: "+
			"accept4 (and accept) calls, those that failed (EAGAIN: woken for a connection another process took; "+
			"EINTR: a signal ended the wait, as the Go runtime's preemption does to a wait that keeps its thread's P), "+
			"and wakeups: the voluntary context switches of all the server's threads (each one a sleep that a wakeup "+
			"ended, whatever woke it; from /proc). The accept4 counts come from a second run of each cell, counted "+
			"with perf (syscall tracepoints per process) or strace -f -c, so that tracing costs the other columns nothing.")
	}
	if r.hasPeers() {
		notes = append(notes, "peer rows are other servers run by --command; herd's own columns (wakeups/conn, "+
			"spurious, jain, per-worker) come from herd's scoreboard and are \"-\" for them.")
	}
	return notes
}

// Constants are the parameters every run of the report shares, as
// "name value" pairs, for a reader of the charts (whose labels show only
// what varies).
func (r *Report) Constants() []string {
	if len(r.Runs) == 0 {
		return nil
	}
	same := func(f func(Run) string) (string, bool) {
		v := f(r.Runs[0])
		for _, x := range r.Runs[1:] {
			if f(x) != v {
				return "", false
			}
		}
		return v, true
	}
	var out []string
	for _, c := range []struct {
		name string
		f    func(Run) string
	}{
		{"workers", func(x Run) string { return fmt.Sprint(x.Workers) }},
		{"mode", func(x Run) string { return x.Mode }},
		{"clients", func(x Run) string { return fmt.Sprint(x.Concurrency) }},
		{"warm-up requests", func(x Run) string { return fmt.Sprint(x.Warmup) }},
	} {
		if v, ok := same(c.f); ok {
			out = append(out, c.name+" "+v)
		}
	}
	return out
}

func board(x Run, format string, v any) string {
	if !x.Scoreboard {
		return "-"
	}
	return fmt.Sprintf(format, v)
}

func perWorker(x Run) string {
	if !x.Scoreboard {
		return "-"
	}
	s := make([]string, len(x.PerWorkerConns))
	for i, n := range x.PerWorkerConns {
		s[i] = fmt.Sprint(n)
	}
	return strings.Join(s, " ")
}

// WriteJSON writes the report as indented JSON.
func (r *Report) WriteJSON(w io.Writer) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(r)
}

// ReadReport reads a report written by WriteJSON.
func ReadReport(path string) (*Report, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var r Report
	if err := json.Unmarshal(b, &r); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return &r, nil
}
