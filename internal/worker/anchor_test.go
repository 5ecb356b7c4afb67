//go:build linux

package worker

import (
	"runtime"
	"testing"
	"time"
)

// The anchor holds its P in a raw wait, and must still let the runtime
// stop the world: a collection preempts it by signal. Each wait here is
// 10 s long, so an anchor the runtime could not preempt would hold every
// collection up for seconds.
func TestAnchorLetsTheWorldStop(t *testing.T) {
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(2))
	stop, done := make(chan struct{}), make(chan struct{})
	go func() { anchor(stop, 10_000); close(done) }()
	time.Sleep(50 * time.Millisecond) // in its wait
	start := time.Now()
	for range 5 {
		runtime.GC()
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("5 collections took %v with the anchor waiting", d)
	}
	close(stop)
	runtime.GC() // the preemption ends the current wait too
	select {
	case <-done:
	case <-time.After(15 * time.Second):
		t.Error("the anchor did not stop")
	}
}
