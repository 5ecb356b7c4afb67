//go:build linux

package held

import (
	"runtime"
	"testing"
	"time"
)

// A thread keeps its P in a wait only where the runtime can take it back
// by signal.
func TestCanHold(t *testing.T) {
	for _, tc := range []struct {
		procs   int
		godebug string
		want    bool
	}{
		{2, "", true},
		{1, "", false},
		{4, "asyncpreemptoff=1", false},
		{4, "gctrace=1, asyncpreemptoff=1", false},
		{4, "asyncpreemptoff=1,asyncpreemptoff=0", true},
		{4, "asyncpreemptoff=0", true},
	} {
		t.Setenv("GODEBUG", tc.godebug)
		if got := CanHold(tc.procs); got != tc.want {
			t.Errorf("CanHold(%d) with GODEBUG=%q = %v", tc.procs, tc.godebug, got)
		}
	}
}

// Waits follows CanHold: the accepting threads' rule and the loop's are
// one. (It once checked GOMAXPROCS only, and a thread of a process run with
// GODEBUG=asyncpreemptoff=1 would have held its P in accept4 where no
// signal takes it back, had its caller not checked for it.)
func TestWaitsFollowCanHold(t *testing.T) {
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(2))
	now := time.Now()
	for _, tc := range []struct {
		godebug string
		procs   int
		want    bool
	}{
		{"", 2, true},
		{"", 1, false},
		{"asyncpreemptoff=1", 2, false},
	} {
		t.Setenv("GODEBUG", tc.godebug)
		runtime.GOMAXPROCS(tc.procs)
		w := NewWaits(time.Minute)
		w.Came(now)
		if got := w.Before(now.Add(time.Second)); got != tc.want {
			t.Errorf("GODEBUG=%q GOMAXPROCS=%d: a wait a second after work held = %v, want %v", tc.godebug, tc.procs, got, tc.want)
		}
		if w.Before(now.Add(2 * time.Minute)) {
			t.Errorf("GODEBUG=%q GOMAXPROCS=%d: a wait after the hold held", tc.godebug, tc.procs)
		}
	}
}
