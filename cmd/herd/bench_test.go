package main

import (
	"context"
	"fmt"
	"slices"
	"syscall"
	"testing"
	"time"

	"github.com/herd-run/herd/internal/lab"
	"github.com/herd-run/herd/internal/shm"
)

// Benchmarks measure; they never pass or fail on a number. Run with
//
//	go test ./cmd/herd -run '^$' -bench . -benchtime 1x
//
// Each reports, per strategy and side by side in one run, wakeups per
// accepted connection and how evenly the workers shared the connections
// (Jain's index J = (Σx)²/(n·Σx²): 1 is perfectly even, 1/n is one worker
// taking everything).

// measure runs n requests from c clients against a fresh 8-worker herd
// with args and returns the scoreboard.
func measure(b *testing.B, n, c int, args ...string) shm.Snapshot {
	root, _ := docroot(b)
	h := startHerd(b, append([]string{root, "--workers", "8"}, args...)...)
	res := load("http://"+h.addr+"/hello.txt", []byte("hello, herd\n"), c, n, 2*time.Minute, nil)
	if res.failed != 0 {
		b.Fatalf("%v: %d of %d failed (%s)", args, res.failed, res.sent, res.firstErr)
	}
	s := h.waitStatus("counted", 5*time.Second, func(s shm.Snapshot) bool { return s.Total.Requests >= uint64(n) })
	h.signal(syscall.SIGTERM)
	h.waitExit(10 * time.Second)
	return s
}

func report(b *testing.B, s shm.Snapshot) {
	b.ReportMetric(float64(s.Total.Wakeups)/float64(s.Total.Accepts), "wakeups/conn")
	b.ReportMetric(float64(s.Total.Spurious)/float64(s.Total.Accepts), "spurious/conn")
	b.ReportMetric(lab.Jain(perWorker(s)), "jain")
}

// BenchmarkStrategies is seed 002's experiment (8 workers, 4 clients, 1000
// requests without keep-alive) for every strategy.
func BenchmarkStrategies(b *testing.B) {
	for _, name := range []string{"go", "accept", "flock", "mutex", "epoll", "exclusive", "nginx", "reuseport", "fdpass"} {
		b.Run(name, func(b *testing.B) {
			for range b.N {
				report(b, measure(b, 1000, 4, "--strategy", name))
			}
		})
	}
}

// BenchmarkExclusiveReorder measures what nginx 1.21.6's re-adding of the
// listener buys under EPOLLEXCLUSIVE: the same load with the listener
// re-added every 16 accepts, and never. Rounds alternate so drift on this
// noisy machine hits both alike.
func BenchmarkExclusiveReorder(b *testing.B) {
	for _, every := range []int{16, -1} {
		b.Run(fmt.Sprintf("every=%d", every), func(b *testing.B) {
			for range b.N {
				report(b, measure(b, 1000, 1, "--strategy", "exclusive", "--exclusive-reorder", fmt.Sprint(every)))
			}
		})
	}
}

// BenchmarkEngines puts the native engine beside net/http: two herds (2
// workers, exclusive) run at once on the same files, and rounds of the
// lab's closed-loop load alternate between them, so drift on this noisy
// machine hits both alike. It reports each engine's requests per second
// and their ratio, for a new connection per request and for keep-alive.
func BenchmarkEngines(b *testing.B) {
	root, _ := docroot(b)
	addr := map[string]string{}
	for _, engine := range []string{"native", "nethttp"} {
		h := startHerd(b, root, "--workers", "2", "--strategy", "exclusive", "--engine", engine)
		addr[engine] = h.addr
	}
	for _, keepAlive := range []bool{false, true} {
		name := map[bool]string{false: "close", true: "keepalive"}[keepAlive]
		b.Run(name, func(b *testing.B) {
			const rounds = 3
			var rps = map[string][]float64{}
			for range b.N * rounds {
				for _, engine := range []string{"native", "nethttp"} {
					r, err := lab.Load{Addr: addr[engine], Path: "/hello.txt", Concurrency: 8, KeepAlive: keepAlive,
						Duration: time.Second, WantLength: int64(len("hello, herd\n"))}.Run(context.Background())
					if err != nil || r.Errors != 0 {
						b.Fatalf("%s: %v, %d errors %v", engine, err, r.Errors, r.ErrorKinds)
					}
					rps[engine] = append(rps[engine], r.RPS())
				}
			}
			native, nethttp := median(rps["native"]), median(rps["nethttp"])
			b.ReportMetric(native, "native-req/s")
			b.ReportMetric(nethttp, "nethttp-req/s")
			b.ReportMetric(native/nethttp, "native/nethttp")
		})
	}
}

func median(xs []float64) float64 {
	s := slices.Clone(xs)
	slices.Sort(s)
	if n := len(s); n%2 == 0 {
		return (s[n/2-1] + s[n/2]) / 2
	}
	return s[len(s)/2]
}
