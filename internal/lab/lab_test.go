package lab

import (
	"context"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/HdrHistogram/hdrhistogram-go"
	"github.com/herd-run/herd/internal/shm"
)

func testServer(t *testing.T, body string) string {
	t.Helper()
	ts := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, body)
	}))
	t.Cleanup(ts.Close)
	return strings.TrimPrefix(ts.URL, "http://")
}

func TestLoadCountsAndValidates(t *testing.T) {
	addr := testServer(t, helloBody)
	for _, keep := range []bool{false, true} {
		res, err := Load{Addr: addr, Concurrency: 3, KeepAlive: keep, Requests: 90, WantLength: int64(len(helloBody))}.Run(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		if res.Requests != 90 || res.Errors != 0 || res.Latency.TotalCount() != 90 {
			t.Errorf("keepalive=%v: %d ok, %d errors %v, %d latencies", keep, res.Requests, res.Errors, res.ErrorKinds, res.Latency.TotalCount())
		}
		// One connection per request, or with keep-alive one per client that
		// got to send (a client that starts late may find the budget spent).
		if (!keep && res.Connections != 90) || (keep && (res.Connections < 1 || res.Connections > 3)) {
			t.Errorf("keepalive=%v: %d connections for 90 requests from 3 clients", keep, res.Connections)
		}
	}
	res, err := Load{Addr: addr, Requests: 5, WantLength: 99}.Run(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if res.ErrorKinds["bad_response"] != 5 || res.Requests != 0 {
		t.Errorf("wrong length not caught: %+v", res.ErrorKinds)
	}
}

func TestLoadRefused(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	res, err := Load{Addr: addr, Requests: 4, WantLength: -1}.Run(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if res.ErrorKinds["refused"] != 4 || res.Connections != 0 {
		t.Errorf("closed port: %+v, %d connections", res.ErrorKinds, res.Connections)
	}
}

// A load stops by itself at its duration, however fast the server is.
func TestLoadDurationBound(t *testing.T) {
	addr := testServer(t, helloBody)
	start := time.Now()
	res, err := Load{Addr: addr, Concurrency: 2, KeepAlive: true, Duration: 200 * time.Millisecond, WantLength: -1}.Run(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if time.Since(start) > 5*time.Second || res.Requests == 0 {
		t.Errorf("duration-bound load: %d requests in %v", res.Requests, time.Since(start))
	}
}

// The lab sends nothing anywhere but loopback.
func TestOnlyLoopback(t *testing.T) {
	for _, a := range []string{"10.0.0.1:80", "192.168.1.1:80", "8.8.8.8:53", "example.com:80", "[2001:db8::1]:80"} {
		if _, err := (Load{Addr: a, Requests: 1}).Run(context.Background()); err == nil {
			t.Errorf("load to %s was allowed", a)
		}
	}
	for _, a := range []string{"127.0.0.1:80", "127.3.2.1:80", "[::1]:80", "localhost:80"} {
		if err := checkAddr(a); err != nil {
			t.Errorf("%s refused: %v", a, err)
		}
	}
}

func TestJain(t *testing.T) {
	if j := Jain([]uint64{5, 5, 5, 5}); j != 1 {
		t.Errorf("even: %v", j)
	}
	if j := Jain([]uint64{8, 0, 0, 0}); j != 0.25 {
		t.Errorf("one takes all: %v", j)
	}
	if j := Jain(nil); j != 0 {
		t.Errorf("empty: %v", j)
	}
}

// The progress bar fills by requests, by time, or by the nearer of both.
func TestProgress(t *testing.T) {
	for _, tc := range []struct {
		requests int
		duration time.Duration
		done     int
		elapsed  time.Duration
		want     float64
	}{
		{1000, 0, 250, time.Hour, 0.25},
		{0, 4 * time.Second, 999, time.Second, 0.25},
		{1000, 4 * time.Second, 100, 2 * time.Second, 0.5},
		{1000, 4 * time.Second, 900, 2 * time.Second, 0.9},
		{0, time.Second, 0, 3 * time.Second, 1},
	} {
		if got := progress(tc.requests, tc.duration, tc.done, tc.elapsed); got != tc.want {
			t.Errorf("progress(%d, %v, %d, %v) = %v, want %v", tc.requests, tc.duration, tc.done, tc.elapsed, got, tc.want)
		}
	}
}

// The kernel's counts are read from perf stat's CSV and strace -c's table.
func TestParseKernelCounts(t *testing.T) {
	var p KernelCounts
	perf := "# started on Mon Nov 23 17:25:08 2026\n\n28781,,sched:sched_wakeup,4002569097,100.00,,\n" +
		"23464,,syscalls:sys_enter_accept4,4002570187,100.00,,\n3,,syscalls:sys_enter_accept,1,100.00,,\n" +
		"278,,syscalls:sys_exit_accept4,4002570178,100.00,,\n1,,syscalls:sys_exit_accept,1,100.00,,\n"
	if err := parsePerfStat(perf, &p); err != nil || p != (KernelCounts{Accept4: 23467, Accept4Failed: 279}) {
		t.Errorf("perf: %+v, %v", p, err)
	}
	if err := parsePerfStat("<not counted>,,syscalls:sys_enter_accept4,0,0.00,,\n", &p); err == nil {
		t.Error("perf: an event not counted was taken for a count")
	}
	var s KernelCounts
	strace := `% time     seconds  usecs/call     calls    errors syscall
------ ----------- ----------- --------- --------- ----------------
 98.10    0.001934           6       300        12 accept4
  1.90    0.000037          37         1           accept
------ ----------- ----------- --------- --------- ----------------
100.00    0.001971           6       301        12 total
`
	if err := parseStraceSummary(strace, &s); err != nil || s != (KernelCounts{Accept4: 301, Accept4Failed: 12}) {
		t.Errorf("strace: %+v, %v", s, err)
	}
}

// Rounds of a matrix are summarised per cell: medians with their range,
// and each run's rate divided by exclusive's in the same round and cell.
func TestSummaryOverRounds(t *testing.T) {
	run := func(strategy string, round int, rps, cs float64) Run {
		// a tenth of the switches forced, over 1,000 requests
		return Run{Strategy: strategy, Workers: 8, Mode: "close", Concurrency: 4, Round: round, RPS: rps, CtxSwitchesPerRequest: cs, CPUPerRequestUS: 10,
			ClientCPUPerRequestUS: 70 + float64(round), Requests: 1000, CtxSwitchesInvoluntary: uint64(cs * 100)}
	}
	rep := &Report{Runs: []Run{
		run("mutex", 1, 800, 2), run("exclusive", 1, 1000, 1),
		run("mutex", 2, 450, 3), run("exclusive", 2, 500, 1),
		run("mutex", 3, 700, 2.5), run("exclusive", 3, 1000, 1),
	}}
	sum := rep.Summary()
	if len(sum) != 2 || sum[0].Label != "mutex" || sum[1].Label != "exclusive" {
		t.Fatalf("summary %+v", sum)
	}
	m := sum[0]
	if m.Rounds != 3 || m.RPS != "700 (450–800)" || m.VsExclusive != "0.80 (0.70–0.90)" || m.CtxSwitches != "2.50 (2.00–3.00)" ||
		m.Forced != "0.25 (0.20–0.30)" || m.ClientCPU != "72 (71–73)" {
		t.Errorf("mutex: %+v", m)
	}
	var b strings.Builder
	rep.WriteSummary(&b)
	if !strings.Contains(b.String(), "0.80 (0.70–0.90)") || !strings.Contains(b.String(), "forced/req") {
		t.Errorf("printed summary:\n%s", b.String())
	}
	// Each run's forced switches per request, in the table and the page.
	wantColumn(t, rep, "forced/req", "0.30")
	if (&Report{Runs: []Run{run("mutex", 0, 1, 1)}}).Summary() != nil {
		t.Error("a summary for a matrix that ran once")
	}
}

// What the load generator cost itself shows per request beside the
// server's, in the run, the table and the page.
func TestClientCPUInReport(t *testing.T) {
	res := &Result{Requests: 990, Errors: 10, Elapsed: time.Second, ClientCPU: 75 * time.Millisecond,
		Latency: hdrhistogram.New(1, 1000, 3)}
	r := newRun(Cell{Strategy: "accept", Workers: 8, Mode: "close", Concurrency: 4}, res, shm.Snapshot{}, shm.Snapshot{}, false, ProcStats{})
	if r.ClientCPUPerRequestUS != 75 {
		t.Fatalf("client CPU per request %v, want 75 µs", r.ClientCPUPerRequestUS)
	}
	rep := &Report{Runs: []Run{*r}}
	wantColumn(t, rep, "client µs/req", "75")
	if !slices.ContainsFunc(rep.Notes(), func(n string) bool { return strings.Contains(n, "client µs/req the load generator's own") }) {
		t.Errorf("no note says what client µs/req is: %q", rep.Notes())
	}
}

// wantColumn checks that rep's table and page have the column head and,
// in some row, the cell value.
func wantColumn(t *testing.T, rep *Report, head, value string) {
	t.Helper()
	var b strings.Builder
	rep.WriteTable(&b)
	if !strings.Contains(b.String(), head) || !strings.Contains(b.String(), "  "+value+"  ") {
		t.Errorf("table without %s %s:\n%s", head, value, b.String())
	}
	b.Reset()
	if err := rep.WriteHTML(&b); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(b.String(), "<th>"+head+"</th>") || !strings.Contains(b.String(), "<td>"+value+"</td>") {
		t.Errorf("the page has no %s %s", head, value)
	}
}
