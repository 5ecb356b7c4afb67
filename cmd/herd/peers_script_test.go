package main

import (
	"fmt"
	"os"
	"os/exec"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
)

// needBench skips a test of a bench script under -short (why says what the
// script does) and where one of tools is not installed.
func needBench(t *testing.T, why string, tools ...string) {
	t.Helper()
	if testing.Short() {
		t.Skip(why)
	}
	for _, c := range tools {
		if _, err := exec.LookPath(c); err != nil {
			t.Skipf("%s not installed (.ci/run installs it)", c)
		}
	}
}

// runBenchScript runs bench/script with args, and env added to the test's,
// and returns what it printed. The script runs in a process group of its own:
// a server that stops by signalling its group (lighttpd with workers did,
// before peers.sh gave it a session) reaches the script, never this test.
func runBenchScript(t *testing.T, env []string, script string, args ...string) string {
	t.Helper()
	cmd := exec.Command("bash", append([]string{"../../bench/" + script}, args...)...)
	cmd.Env = append(os.Environ(), env...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("%s: %v\n%s", script, err, out)
	}
	return string(out)
}

// bench/peers.sh, two short rounds of one row: every server gets a line in
// the where-the-time-went table, with its rounds' lowest and highest rate,
// the server's and wrk's CPU per request, the machine's idle share, TCP
// segments per request and how wrk's connections fell to its processes.
// The figures are a benchmark's, so only their sense is checked here.
func TestPeersScriptWhereTheTimeWent(t *testing.T) {
	needBench(t, "builds herd and runs five servers", "nginx", "h2o", "lighttpd", "wrk", "curl")
	text := runBenchScript(t, []string{"ONLY=4k", "ROUNDS=2", "DURATION=1s", "THREADS=2"}, "peers.sh")
	// herd against the best peer of each round, round by round.
	m := regexp.MustCompile(`herd / the best peer of its round[^\n]*\nkeep-alive, 4 KiB +([\d.]+) \(([\d.]+)-([\d.]+)\), (\d) of 2\n`).FindStringSubmatch(text)
	if m == nil {
		t.Errorf("no round-by-round line for the row:\n%s", text)
	} else {
		med, _ := strconv.ParseFloat(m[1], 64)
		lo, _ := strconv.ParseFloat(m[2], 64)
		hi, _ := strconv.ParseFloat(m[3], 64)
		if lo <= 0 || med < lo || med > hi {
			t.Errorf("round by round: median %v outside the rounds' %v-%v", med, lo, hi)
		}
		if led, _ := strconv.Atoi(m[4]); (led == 0) != (hi <= 1) || (led == 2) != (lo > 1) {
			t.Errorf("round by round: herd led %d of 2 rounds with ratios %v-%v", led, lo, hi)
		}
	}
	i := strings.Index(text, "where the time went")
	if i < 0 {
		t.Fatalf("no where-the-time-went table:\n%s", text)
	}
	if !strings.Contains(text, "wrk -t2 ") {
		t.Errorf("THREADS=2 did not reach wrk:\n%s", text)
	}
	rows := map[string][]float64{}
	splits := map[string][]string{}
	for _, line := range strings.Split(text[i:], "\n") {
		// server, req/s, the rounds' low-high, server CPU, wrk CPU, idle %,
		// segments, and each round's connections per process
		f := strings.Fields(strings.TrimPrefix(line, "keep-alive, 4 KiB"))
		if len(f) != 7+2 {
			continue
		}
		splits[f[0]] = f[7:]
		lo, hi, _ := strings.Cut(f[2], "-")
		var v []float64
		for _, s := range []string{f[1], f[3], f[4], f[5], f[6], lo, hi} {
			x, err := strconv.ParseFloat(s, 64)
			if err != nil {
				break
			}
			v = append(v, x)
		}
		if len(v) == 7 {
			rows[f[0]] = v
		}
	}
	for _, server := range []string{"nginx", "nginx+d", "h2o", "lighttpd", "herd"} {
		v, ok := rows[server]
		switch {
		case !ok:
			t.Errorf("%s has no row:\n%s", server, text[i:])
		case v[0] <= 0 || v[1] <= 0 || v[2] <= 0 || v[4] <= 0:
			t.Errorf("%s: requests/s, server CPU, wrk CPU and segments per request must be positive: %v", server, v)
		case v[3] < 0 || v[3] > 100:
			t.Errorf("%s: idle %v%% is not a share", server, v[3])
		case v[5] > v[0]+1 || v[6] < v[0]-1:
			t.Errorf("%s: the median %v is outside the rounds' %v-%v", server, v[0], v[5], v[6])
		}
		// wrk's 64 connections, spread over at most WORKERS (2) processes
		for _, round := range splits[server] {
			split, rate, _ := strings.Cut(round, ":")
			if r, err := strconv.Atoi(rate); err != nil || r <= 0 {
				t.Errorf("%s: round %q has no rate", server, round)
			}
			parts, sum := strings.Split(split, "/"), 0
			for _, p := range parts {
				n, err := strconv.Atoi(p)
				if err != nil {
					sum = -1
					break
				}
				sum += n
			}
			if len(parts) > 2 || sum < 1 || sum > 64 {
				t.Errorf("%s: connections per process %q: want one or two counts of wrk's 64", server, split)
			}
		}
	}
}

// bench/ab.sh, two short rounds: a build given as a git revision and one
// given as a binary each get a row with their rate, the rounds' spread,
// the server's CPU and context switches per request, and wrk's CPU.
func TestABScript(t *testing.T) {
	needBench(t, "builds herd twice and loads both", "wrk", "curl", "git")
	if err := exec.Command("git", "rev-parse", "HEAD").Run(); err != nil {
		t.Skip("not in a git checkout")
	}
	bin := t.TempDir() + "/herd"
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	out := runBenchScript(t, []string{"ROUNDS=2", "DURATION=1s", "WORKERS=1", "CONNS=4", "FILE=13"}, "ab.sh", "HEAD", bin)
	rows := 0
	for _, line := range strings.Split(out, "\n") {
		f := strings.Fields(line)
		if len(f) != 6 || (f[0] != "HEAD" && f[0] != bin) {
			continue
		}
		rows++
		rps, _ := strconv.ParseFloat(f[1], 64)
		cpu, _ := strconv.ParseFloat(f[3], 64)
		cs, err := strconv.ParseFloat(f[4], 64)
		wrk, _ := strconv.ParseFloat(f[5], 64)
		if rps <= 0 || cpu <= 0 || err != nil || cs < 0 || wrk <= 0 || !strings.Contains(f[2], "-") {
			t.Errorf("row %q: want a rate, a low-high spread, CPU and switches per request, and wrk's CPU", line)
		}
	}
	if rows != 2 {
		t.Errorf("%d rows, want one per build:\n%s", rows, out)
	}
}

// bench/idle.sh for four strategies: each gets a row with the master's and
// each worker's context switches a second, and the idle workers sleep:
// exclusive's loop (TestIdleWorkersSleep is the same bound on herd serve
// itself), accept's threads in accept4 and mutex's in poll and FUTEX_WAIT,
// which a stop interrupts with a signal instead of their waking every
// 250ms to look (230–570 a second before), and flock's holder in poll,
// which no longer lets go every 250ms for a stopping worker's waiter (a
// stop leaves that waiter behind).
func TestIdleScript(t *testing.T) {
	needBench(t, "builds herd and leaves it idle", "curl")
	strategies := []string{"exclusive", "accept", "mutex", "flock"}
	out := runBenchScript(t, []string{"STRATEGIES=" + strings.Join(strategies, " "), "SECONDS_IDLE=2"}, "idle.sh")
	rows := map[string][]float64{}
	for _, line := range strings.Split(out, "\n") {
		f := strings.Fields(line)
		if len(f) != 4 || !slices.Contains(strategies, f[0]) {
			continue
		}
		for _, s := range f[1:] {
			v, err := strconv.ParseFloat(s, 64)
			if err != nil || v < 0 {
				t.Errorf("row %q: want the master's and two workers' switches a second", line)
			}
			rows[f[0]] = append(rows[f[0]], v)
		}
	}
	if len(rows) != len(strategies) {
		t.Fatalf("want a row for each of %v:\n%s", strategies, out)
	}
	for _, strategy := range strategies {
		for _, v := range rows[strategy][1:] {
			if v > 100 {
				t.Errorf("an idle %s worker made %v context switches a second; want under 100:\n%s", strategy, v, out)
			}
		}
	}
}

// bench/flock-steals.sh, one short run: for herd and for Apache on the same
// flock lock, who took the lock, the lock's wakeups per connection, and the
// lab's figures for the run, read from its JSON by name (the table's
// columns moved when the lab added one, and the script printed forced/req
// as the CPU per request).
func TestFlockStealsScript(t *testing.T) {
	needBench(t, "builds herd, runs it and Apache under perf", "apache2", "perf")
	out := runBenchScript(t, []string{"DURATION=3s", "OUT=" + t.TempDir() + "/steals.txt"}, "flock-steals.sh")
	for _, server := range []string{"herd", "apache"} {
		for _, want := range []string{server + ": acquisitions ", server + ": flock wakeups per connection: re-queueing "} {
			if !strings.Contains(out, want) {
				t.Errorf("no %q line:\n%s", want, out)
			}
		}
	}
	runs := 0
	for _, line := range strings.Split(out, "\n") {
		var name string
		var rps, cs, cpu float64
		if n, _ := fmt.Sscanf(strings.TrimSpace(line), "%s %f req/s, %f context switches per connection, %f µs CPU per request", &name, &rps, &cs, &cpu); n != 4 {
			continue
		}
		runs++
		// A connection costs its server at least one sleep and some
		// microseconds of CPU; forced/req, the column read before, is
		// well under one.
		if rps <= 0 || cs < 1 || cpu < 5 {
			t.Errorf("%s: %v req/s, %v switches and %v µs of CPU per connection:\n%s", name, rps, cs, cpu, out)
		}
	}
	if runs != 2 {
		t.Errorf("want the lab's line for herd and for Apache:\n%s", out)
	}
}
