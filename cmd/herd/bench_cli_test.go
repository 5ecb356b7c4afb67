package main

import (
	"encoding/json"
	pngpkg "image/png"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/herd-run/herd/internal/lab"
)

// herd bench runs a small matrix end to end and its report holds together:
// every accepted connection is a counted request or error, the herd shows,
// and the page is self-contained.
func TestBenchReport(t *testing.T) {
	dir := t.TempDir()
	jsonPath, htmlPath := filepath.Join(dir, "r.json"), filepath.Join(dir, "r.html")
	out, errOut, code := runHerd(t, "bench", "--strategies", "epoll,exclusive", "--workers", "8",
		"--concurrency", "1", "--requests", "1000", "--warmup", "20", "--json", jsonPath, "--html", htmlPath)
	if code != 0 {
		t.Fatalf("bench: exit %d\n%s", code, errOut)
	}
	if !strings.Contains(out, "wakeups/conn") || !strings.Contains(errOut, "[2/2] exclusive") {
		t.Errorf("table or progress missing:\n%s\n%s", out, errOut)
	}

	// The JSON has the documented shape.
	var raw map[string]any
	b, err := os.ReadFile(jsonPath)
	must(t, err)
	must(t, json.Unmarshal(b, &raw))
	env := raw["env"].(map[string]any)
	for _, k := range []string{"kernel", "cpus", "go"} {
		if _, ok := env[k]; !ok {
			t.Errorf("env lacks %q", k)
		}
	}
	first := raw["runs"].([]any)[0].(map[string]any)
	for _, k := range []string{"strategy", "workers", "mode", "concurrency", "requests", "errors", "rps", "latency_ms",
		"accepts", "wakeups", "spurious_wakeups", "per_worker_conns", "jain", "ctx_switches"} {
		if _, ok := first[k]; !ok {
			t.Errorf("run lacks %q", k)
		}
	}
	for _, k := range []string{"p50", "p99", "max"} {
		if _, ok := first["latency_ms"].(map[string]any)[k]; !ok {
			t.Errorf("latency_ms lacks %q", k)
		}
	}

	rep, err := lab.ReadReport(jsonPath)
	must(t, err)
	if len(rep.Runs) != 2 {
		t.Fatalf("%d runs, want 2", len(rep.Runs))
	}
	per := map[string]lab.Run{}
	for _, r := range rep.Runs {
		per[r.Strategy] = r
		var sum uint64
		for _, n := range r.PerWorkerConns {
			sum += n
		}
		if len(r.PerWorkerConns) != 8 || sum != r.Accepts || r.Accepts != uint64(r.Requests+r.Errors) {
			t.Errorf("%s: per-worker %v (sum %d), accepts %d, requests %d + errors %d: do not add up",
				r.Strategy, r.PerWorkerConns, sum, r.Accepts, r.Requests, r.Errors)
		}
		if r.Jain <= 0 || r.Jain > 1 {
			t.Errorf("%s: Jain's index %v outside (0,1]", r.Strategy, r.Jain)
		}
		if r.CtxSwitches == 0 || r.LatencyMS.P50 <= 0 || r.LatencyMS.P50 > r.LatencyMS.Max {
			t.Errorf("%s: implausible ctx switches %d or latencies %+v", r.Strategy, r.CtxSwitches, r.LatencyMS)
		}
	}
	if per["epoll"].WakeupsPerConn <= per["exclusive"].WakeupsPerConn {
		t.Errorf("epoll %.3f wakeups/conn, not more than exclusive's %.3f", per["epoll"].WakeupsPerConn, per["exclusive"].WakeupsPerConn)
	}

	page, err := os.ReadFile(htmlPath)
	must(t, err)
	if n := strings.Count(string(page), "<svg"); n < 4 {
		t.Errorf("%d charts in the page, want at least 4", n)
	}
	if regexp.MustCompile(`(?i)(src|href)\s*=|<script|@import|url\(`).Match(page) {
		t.Errorf("the page fetches something; it must be self-contained")
	}
}

// The seed 002 preset runs both phases and sets the seed's figures beside ours.
func TestBenchPresetSeed002(t *testing.T) {
	out, errOut, code := runHerd(t, "bench", "--preset", "seed002", "--strategies", "epoll,exclusive", "--duration", "300ms", "--warmup", "20")
	if code != 0 {
		t.Fatalf("bench --preset seed002: exit %d\n%s", code, errOut)
	}
	for _, want := range []string{"Seed 002", "6884", "1557", "accept4 calls per 1000, here", "requests/s, here"} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
}

// --warmup 0 sends none; --listen puts herd where asked; --kernel counts
// with the kernel; the page shows what every run shares.
func TestBenchDetails(t *testing.T) {
	htmlPath := filepath.Join(t.TempDir(), "r.html")
	rep := benchJSON(t, "--strategies", "exclusive", "--workers", "2", "--concurrency", "1", "--requests", "200",
		"--warmup", "0", "--listen", "127.0.0.2:0", "--kernel", "--html", htmlPath)
	r := rep.Runs[0]
	if r.Warmup != 0 {
		t.Errorf("--warmup 0: %d warm-up requests sent", r.Warmup)
	}
	if !strings.HasPrefix(r.Addr, "127.0.0.2:") {
		t.Errorf("--listen 127.0.0.2:0: served on %q", r.Addr)
	}
	// Counted in a second run of the cell: 200 connections again, each
	// accepted once, and a few woken in vain at most (EPOLLEXCLUSIVE).
	if k := r.Kernel; k == nil || (k.Method != "perf" && k.Method != "strace") || k.Connections != 200 ||
		k.Accept4 < 200 || k.Accept4 > 300 {
		t.Errorf("--kernel: %+v", r.Kernel)
	}
	page := readFile(t, htmlPath)
	for _, want := range []string{"every run: workers 2 · mode close · clients 1 · warm-up requests 0", "k:accept4/conn"} {
		if !strings.Contains(page, want) {
			t.Errorf("the page lacks %q", want)
		}
	}
	if rep := benchJSON(t, "--strategies", "exclusive", "--workers", "2", "--concurrency", "1", "--requests", "50", "--warmup", "30"); rep.Runs[0].Warmup != 30 {
		t.Errorf("--warmup 30: %d warm-up requests sent", rep.Runs[0].Warmup)
	}
}

// The peers preset runs herd's rows and every installed peer's, each
// counted by the kernel, and says which rows are which.
func TestBenchPresetPeers(t *testing.T) {
	dir := t.TempDir()
	jsonPath, htmlPath := filepath.Join(dir, "r.json"), filepath.Join(dir, "r.html")
	out, errOut, code := runHerd(t, "bench", "--preset", "peers", "--strategies", "exclusive", "--requests", "300",
		"--warmup", "20", "--json", jsonPath, "--html", htmlPath)
	if code != 0 {
		t.Fatalf("bench --preset peers: exit %d\n%s", code, errOut)
	}
	rep, err := lab.ReadReport(jsonPath)
	must(t, err)
	installed := map[string]bool{} // by peer name
	want := 0
	for _, p := range peers {
		_, err := exec.LookPath(p.program)
		installed[p.name] = err == nil
		if err == nil {
			want++
		} else if !strings.Contains(errOut, p.program+" is not installed") {
			t.Errorf("no word that %s is skipped:\n%s", p.program, errOut)
		}
	}
	peersSeen := 0
	for _, r := range rep.Runs {
		if r.Kernel == nil || r.Errors != 0 || r.Requests != 300 {
			t.Errorf("%s: %d requests, %d errors, kernel counts %+v", r.Strategy, r.Requests, r.Errors, r.Kernel)
		}
		if r.Peer {
			peersSeen++
			if !installed[r.Strategy] {
				t.Errorf("a row for %s, which is not installed", r.Strategy)
			}
		}
	}
	if peersSeen != want || rep.Runs[0].Peer || rep.Runs[0].Strategy != "exclusive" {
		t.Errorf("%d peer rows, want %d, after herd's", peersSeen, want)
	}
	for _, s := range []string{"Seed 002", "k:accept4/conn", "peer rows are other servers"} {
		if !strings.Contains(out, s) {
			t.Errorf("output lacks %q:\n%s", s, out)
		}
	}
	if want > 0 && !strings.Contains(readFile(t, htmlPath), "(peer)") {
		t.Error("the page does not mark the peers' rows")
	}
	if _, err := exec.LookPath("chromium"); err == nil {
		renders(t, htmlPath, filepath.Join(dir, "r.png"))
	}
}

func TestBenchErrors(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--strategies", "telepathy"}, `unknown strategy "telepathy"`},
		{[]string{"--workers", "0"}, "not a positive number"},
		{[]string{"--mode", "udp"}, `mode "udp"`},
		{[]string{"--preset", "nope"}, `unknown preset "nope"`},
		{[]string{"--command", "true", "--target", "10.1.2.3:80"}, "not a loopback address"},
		{[]string{"--listen", "0.0.0.0:8080"}, "not a loopback address"},
		{[]string{"--warmup", "-1"}, "warm-up of -1"},
		{[]string{"--rounds", "-1"}, "-1 rounds"},
		{[]string{"--requests", "-5", "--duration", "1s"}, "-5 requests"},
		{[]string{"--duration", "-1s"}, "a duration of -1s"},
		// Found before the run, not after it.
		{[]string{"--json", "/nonexistent/dir/r.json"}, "/nonexistent/dir/r.json: no such file or directory"},
		{[]string{"--html", "/nonexistent/dir/r.html"}, "/nonexistent/dir/r.html: no such file or directory"},
		{[]string{"--chaos", "--html", "r.html"}, "leave out --html"},
		{[]string{"--preset", "peers", "--command", "true", "--target", "127.0.0.1:9"}, "leave out --command"},
	} {
		out, errOut, code := runHerd(t, append([]string{"bench", "--requests", "10"}, tc.args...)...)
		if code == 0 || !strings.Contains(errOut, tc.want) {
			t.Errorf("bench %v: exit %d, stderr %q; want an error with %q", tc.args, code, errOut, tc.want)
		}
		if out != "" {
			t.Errorf("bench %v ran before it refused (its table):\n%s", tc.args, out)
		}
	}
}

// The report page renders in a real browser: headless Chromium (when
// installed) draws it, and the picture is not blank.
func TestBenchPageRendersInChromium(t *testing.T) {
	if _, err := exec.LookPath("chromium"); err != nil {
		t.Skip("chromium not installed; bench/screenshot.sh does the same by hand")
	}
	dir := t.TempDir()
	htmlPath, png := filepath.Join(dir, "r.html"), filepath.Join(dir, "r.png")
	if _, errOut, code := runHerd(t, "bench", "--strategies", "epoll,accept", "--workers", "2", "--requests", "50", "--kernel", "--html", htmlPath); code != 0 {
		t.Fatalf("bench: %s", errOut)
	}
	renders(t, htmlPath, png)
}

// renders draws the page with headless Chromium and requires a picture
// with charts in it.
func renders(t *testing.T, htmlPath, png string) {
	t.Helper()
	cmd := exec.Command("bash", "../../bench/screenshot.sh", htmlPath, png)
	cmd.Env = append(os.Environ(), "HEIGHT=900")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("screenshot: %v\n%s", err, out)
	}
	f, err := os.Open(png)
	must(t, err)
	defer f.Close()
	img, err := pngpkg.Decode(f)
	must(t, err)
	colors := map[[3]uint32]bool{}
	b := img.Bounds()
	for y := b.Min.Y; y < b.Max.Y; y += 7 {
		for x := b.Min.X; x < b.Max.X; x += 7 {
			r, g, bl, _ := img.At(x, y).RGBA()
			colors[[3]uint32{r >> 12, g >> 12, bl >> 12}] = true
		}
	}
	if len(colors) < 6 {
		t.Errorf("the rendered page has %d colours: the charts did not draw", len(colors))
	}
}

// --rounds runs the matrix again, round after round, numbers every run, and
// prints the medians per cell, with rates divided by exclusive's.
func TestBenchRounds(t *testing.T) {
	dir := t.TempDir()
	jsonPath, htmlPath := filepath.Join(dir, "r.json"), filepath.Join(dir, "r.html")
	out, errOut, code := runHerd(t, "bench", "--strategies", "accept,exclusive", "--workers", "2", "--concurrency", "1",
		"--requests", "100", "--warmup", "10", "--rounds", "2", "--json", jsonPath, "--html", htmlPath)
	if code != 0 {
		t.Fatalf("bench --rounds 2: exit %d\n%s", code, errOut)
	}
	rep, err := lab.ReadReport(jsonPath)
	must(t, err)
	var rounds []int
	for _, r := range rep.Runs {
		rounds = append(rounds, r.Round)
	}
	if !slices.Equal(rounds, []int{1, 1, 2, 2}) {
		t.Errorf("runs' rounds %v, want [1 1 2 2]: each round runs every cell", rounds)
	}
	for _, s := range []string{"[4/4]", "medians over the rounds", "÷ exclusive's"} {
		if !strings.Contains(out+errOut, s) {
			t.Errorf("output lacks %q:\n%s%s", s, errOut, out)
		}
	}
	if page := readFile(t, htmlPath); !strings.Contains(page, "Medians over the rounds") || !strings.Contains(page, "accept #2") {
		t.Error("the page lacks the rounds' medians or the runs' round numbers")
	}
}
