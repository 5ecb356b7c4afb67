package httpd

import "testing"

// The loop keeps its P in epoll_wait only where the runtime can take it
// back by signal.
func TestCanHoldP(t *testing.T) {
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
		if got := CanHoldP(tc.procs); got != tc.want {
			t.Errorf("CanHoldP(%d) with GODEBUG=%q = %v", tc.procs, tc.godebug, got)
		}
	}
}
