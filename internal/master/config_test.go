package master

import (
	"log/slog"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/herd-run/herd/internal/accept"
	"github.com/herd-run/herd/internal/proto"
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

// A default strategy that cannot serve gives way to its fallback; the
// operator's own choice is refused instead (Check) — for reuseport, which
// makes one socket per worker: not a unix socket, not systemd's sockets,
// not across an upgrade from a master whose sockets were shared.
func TestStrategyFallback(t *testing.T) {
	for _, tc := range []struct {
		listen   []string
		fallback string
		want     string
	}{
		{[]string{"127.0.0.1:0"}, "go", "reuseport"},
		{[]string{"127.0.0.1:0", "unix:/tmp/x.sock"}, "go", "go"},
		{[]string{"unix:/tmp/x.sock"}, "", "reuseport"}, // refused by Check, below
	} {
		cfg := Config{Listen: tc.listen, Path: "/bin/true", Strategy: "reuseport", StrategyFallback: tc.fallback}
		if err := fill(&cfg); err != nil || cfg.Strategy != tc.want {
			t.Errorf("%v, fallback %q: strategy %q (%v), want %q", tc.listen, tc.fallback, cfg.Strategy, err, tc.want)
		}
	}
	// Sockets from systemd: no address to make a socket per worker for.
	t.Setenv("LISTEN_FDS", "1")
	cfg := Config{Path: "/bin/true", Strategy: "reuseport", StrategyFallback: "go"}
	if err := fill(&cfg); err != nil || cfg.Strategy != "go" {
		t.Errorf("systemd's sockets: strategy %q (%v), want go", cfg.Strategy, err)
	}
	if err := Check(Config{Listen: []string{"unix:/tmp/x.sock"}, Path: "/bin/true", Strategy: "reuseport"}); err == nil {
		t.Error("reuseport on a unix socket, chosen by the operator: no error")
	}
	// Upgrades: the old master's sockets decide a default.
	shared, slots := &inheritance{}, &inheritance{Reuse: map[int][]int{0: {0}}}
	for _, tc := range []struct {
		strategy, fallback string
		in                 *inheritance
		want               string
	}{
		{"reuseport", "go", nil, "reuseport"},
		{"reuseport", "go", shared, "go"},
		{"reuseport", "go", slots, "reuseport"},
		{"go", "go", slots, "reuseport"},       // a unix address made the default give way; the old master had slots
		{"reuseport", "", shared, "reuseport"}, // the operator's: adopt refuses it with a reason
		{"exclusive", "", slots, "exclusive"},
	} {
		cfg := Config{Strategy: tc.strategy, StrategyFallback: tc.fallback}
		if got := upgradeStrategy(cfg, tc.in); got != tc.want {
			t.Errorf("%s (fallback %q), inherited %+v: %q, want %q", tc.strategy, tc.fallback, tc.in, got, tc.want)
		}
	}
}

// A reload swaps strategies that live in the workers only; a default
// stays what the master's sockets made it.
func TestReloadStrategy(t *testing.T) {
	def := func(s string) Config { return Config{Strategy: s, StrategyFallback: "go"} }
	set := func(s string) Config { return Config{Strategy: s} }
	for _, tc := range []struct {
		cur, next Config
		want      string
		swap      bool
	}{
		{set("exclusive"), set("accept"), "accept", true},
		{set("exclusive"), set("reuseport"), "exclusive", false}, // a master half: USR2
		{set("fdpass"), set("exclusive"), "fdpass", false},
		{def("go"), def("reuseport"), "go", false}, // upgraded from a master with shared sockets
		{def("reuseport"), set("exclusive"), "reuseport", false},
		{def("go"), set("exclusive"), "exclusive", true},
		{set("go"), set("go"), "go", false},
	} {
		got, swap := reloadStrategy(tc.cur, tc.next)
		if got != tc.want || swap != tc.swap {
			t.Errorf("%+v → %+v: %q, swap %v; want %q, %v", tc.cur, tc.next, got, swap, tc.want, tc.swap)
		}
	}
}

// A master that cannot read what an upgrading master handed it fails with
// the reason, before it has chosen its strategy's half (nothing to close).
func TestNewWithBadInheritance(t *testing.T) {
	t.Setenv(proto.UpgradeEnv, "{not json")
	_, err := New(Config{Listen: []string{"127.0.0.1:0"}, Path: "/bin/true", Log: slog.New(slog.DiscardHandler)})
	if err == nil || !strings.Contains(err.Error(), proto.UpgradeEnv) {
		t.Errorf("New with a bad %s: %v", proto.UpgradeEnv, err)
	}
}
