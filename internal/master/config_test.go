package master

import (
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/herd-run/herd/internal/accept"
)

// One rule for every number and duration: zero is the default, negative
// turns the option off where that means anything, and is refused where it
// does not.
func TestConfigZeroIsDefaultNegativeIsOff(t *testing.T) {
	base := func() Config { return Config{Listen: []string{"127.0.0.1:0"}, Path: "/bin/true"} }
	cfg := base()
	if err := fill(&cfg); err != nil {
		t.Fatal(err)
	}
	if cfg.DeferAccept != time.Second || cfg.WorkerTimeout != 30*time.Second || cfg.Backlog != 511 ||
		cfg.DrainTimeout != 30*time.Second || cfg.ReadyTimeout != 30*time.Second || cfg.StopTimeout != 5*time.Second {
		t.Errorf("defaults: %+v", cfg)
	}
	cfg = base()
	cfg.DeferAccept, cfg.WorkerTimeout = -1, -time.Second
	if err := fill(&cfg); err != nil || cfg.DeferAccept != 0 || cfg.WorkerTimeout != 0 {
		t.Errorf("negative: defer %v, worker timeout %v, %v; want both off", cfg.DeferAccept, cfg.WorkerTimeout, err)
	}
	for _, tc := range []struct {
		tune func(*Config)
		want string
	}{
		{func(c *Config) { c.Workers = -1 }, "workers must be between"},
		{func(c *Config) { c.Backlog = -1 }, "backlog must be positive"},
		{func(c *Config) { c.DrainTimeout = -1 }, "timeouts must not be negative"},
		{func(c *Config) { c.Accept.Threads = -1 }, "threads must be between"},
		{func(c *Config) { c.Accept.WorkerConnections = -1 }, "worker connections must be positive"},
		{func(c *Config) { c.MaxRequests = -1 }, "max requests must not be negative"},
	} {
		cfg := base()
		tc.tune(&cfg)
		if err := fill(&cfg); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%+v: %v, want %q", cfg, err, tc.want)
		}
	}
	// The accept strategies' options, applied by their owner.
	o := accept.Options{}.WithDefaults()
	if o.Threads != 1 || o.WorkerConnections != 1024 || o.MutexDelay != 500*time.Millisecond || o.ReorderEvery != 16 {
		t.Errorf("accept defaults: %+v", o)
	}
	if o := (accept.Options{ReorderEvery: -1}).WithDefaults(); o.ReorderEvery >= 0 {
		t.Errorf("ReorderEvery -1 must stay never, got %d", o.ReorderEvery)
	}
}

// The default worker count follows the CPUs the process may use, which
// GOMAXPROCS reports, cgroup quota included (Go 1.25), not NumCPU.
func TestWorkersFollowUsableCPUs(t *testing.T) {
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(1))
	cfg := Config{Listen: []string{"127.0.0.1:0"}, Path: "/bin/true"}
	if err := fill(&cfg); err != nil || cfg.Workers != 1 {
		t.Errorf("workers %d with GOMAXPROCS 1 (%v)", cfg.Workers, err)
	}
}
