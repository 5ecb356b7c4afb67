//go:build linux

package worker

import (
	"log/slog"
	"runtime"
	"testing"

	"github.com/herd-run/herd/internal/accept"
	"github.com/herd-run/herd/internal/held"
)

type idleStrategy struct{}

func (idleStrategy) Serve(func(int)) error { return nil }
func (idleStrategy) Stop()                 {}

// The Ps a worker gets (go doc herd.Server.WorkerProcs): net/http with the
// go strategy one for its goroutines and one for the anchor; a strategy's
// waiting threads one each and one idle; the native engine one per loop;
// a spec's own number as it is, without the anchor.
func TestSetProcs(t *testing.T) {
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(0))
	if !held.CanHold(2) {
		t.Skip("GODEBUG=asyncpreemptoff=1: no P may be held")
	}
	var s idleStrategy
	for _, tc := range []struct {
		name     string
		spec     Spec
		lanes    []lane
		want     int
		anchored bool
	}{
		{"nethttp go", Spec{Engine: "nethttp", Strategy: "go"}, []lane{{strat: s, listeners: 1}}, 2, true},
		{"nethttp accept", Spec{Engine: "nethttp", Strategy: "accept"}, []lane{{strat: s, listeners: 1}}, 4, true},
		{"nethttp go, Procs 3", Spec{Engine: "nethttp", Strategy: "go", Procs: 3}, []lane{{strat: s, listeners: 1}}, 3, false},
		{"native exclusive", Spec{Engine: "native", Strategy: "exclusive"}, []lane{{strat: s, inline: true, listeners: 1}}, 2, false},
		{"native exclusive, TLS lane", Spec{Engine: "native", Strategy: "exclusive"},
			[]lane{{strat: s, inline: true, listeners: 1}, {strat: s, inline: true, listeners: 1}}, 3, false},
		{"native accept", Spec{Engine: "native", Strategy: "accept"}, []lane{{strat: s, listeners: 1}}, 3, false},
	} {
		tc.spec.Accept = accept.Options{}
		w := &proc{spec: &tc.spec, log: slog.Default()}
		anchored := w.setProcs(tc.lanes)
		if got := runtime.GOMAXPROCS(0); got != tc.want || anchored != tc.anchored {
			t.Errorf("%s: GOMAXPROCS %d, anchored %v; want %d, %v", tc.name, got, anchored, tc.want, tc.anchored)
		}
	}
}
