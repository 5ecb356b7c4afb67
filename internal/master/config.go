package master

// The master's configuration: its options, their defaults, and the checks
// made before anything is bound or started.

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"runtime"
	"time"

	"github.com/herd-run/herd/internal/accept"
	"github.com/herd-run/herd/internal/proto"
)

// Config is how the master runs.
type Config struct {
	Listen       []string      // addresses; see parseAddr
	Backlog      int           // listen(2) backlog; default 511, as nginx
	DeferAccept  time.Duration // TCP_DEFER_ACCEPT on the TCP sockets the master creates; 0: off
	Workers      int           // default: number of CPUs
	Strategy     string        // accept strategy; default accept.Default()
	Threads      int           // accepting threads per worker and listener; default 1
	DrainTimeout time.Duration // how long a stopping worker may finish requests; default 30s
	ReadyTimeout time.Duration // how long a new worker may take to report ready; default 30s
	StopTimeout  time.Duration // after a fast stop, how long before SIGKILL; default 5s
	PIDFile      string

	MultiAccept       bool          // epoll strategies: accept until EAGAIN per wakeup
	WorkerConnections int           // per worker; nginx's accept_disabled, fdpass's limit; default 1024
	MutexDelay        time.Duration // nginx: accept_mutex_delay; default 500ms
	ReorderEvery      int           // exclusive: re-add every N accepts; default 16, negative: never

	Admin     string // operator endpoint address (loopback or unix socket); "" for none
	AccessLog string // workers log requests here ("-": standard output); "" for none

	// StaticRoot, if set, is served by the native engine (internal/httpd)
	// instead of the program's handler.
	StaticRoot     string
	FollowSymlinks bool
	Autoindex      bool          // native engine: list directories without index.html
	HeaderTimeout  time.Duration // native engine: a request head must arrive within this; default 10s
	IdleTimeout    time.Duration // native engine: keep-alive idle limit; default 75s

	WorkerTimeout     time.Duration // kill a worker whose heartbeat is older; 0: never
	MaxRequests       int           // replace a worker after this many requests; 0: never
	MaxRequestsJitter int           // plus up to this many more, at random per worker

	// Path and Args are the command a worker runs: by default this very
	// executable with this process's arguments. Env is added to the
	// environment the master has.
	Path string
	Args []string
	Env  []string

	Log *slog.Logger
}

// maxWorkers bounds --workers and TTIN. The scoreboard has twice as many
// records, since during a reload two generations are alive.
const maxWorkers = 512

// Check validates a configuration without starting or binding anything
// (herd serve --check): every mistake New would find before it listens.
func Check(cfg Config) error {
	if err := fill(&cfg); err != nil {
		return err
	}
	for _, a := range cfg.Listen {
		network, _, err := parseAddr(a)
		if err != nil {
			return err
		}
		if network == "unix" && cfg.Strategy == "reuseport" {
			return fmt.Errorf("listen %s: the reuseport strategy needs TCP addresses", a)
		}
	}
	if cfg.Admin != "" {
		network, a, err := parseAddr(cfg.Admin)
		if err != nil {
			return fmt.Errorf("admin: %w", err)
		}
		if host, _, _ := net.SplitHostPort(a); network == "tcp" && host != "localhost" {
			if ip := net.ParseIP(host); ip == nil || !ip.IsLoopback() {
				return fmt.Errorf("admin %s: must be a loopback address or a unix socket", cfg.Admin)
			}
		}
	}
	return nil
}

func fill(cfg *Config) error {
	if len(cfg.Listen) == 0 && os.Getenv("LISTEN_FDS") == "" && os.Getenv(proto.UpgradeEnv) == "" {
		return errors.New("no listen address (and no sockets from systemd)")
	}
	if cfg.Workers == 0 {
		cfg.Workers = runtime.NumCPU()
	}
	if cfg.Workers < 1 || cfg.Workers > maxWorkers {
		return fmt.Errorf("workers must be between 1 and %d, not %d", maxWorkers, cfg.Workers)
	}
	if cfg.Backlog == 0 {
		cfg.Backlog = 511
	}
	if cfg.Backlog < 1 {
		return fmt.Errorf("backlog must be positive, not %d", cfg.Backlog)
	}
	if cfg.Strategy == "" {
		cfg.Strategy = accept.Default()
	}
	if err := accept.Check(cfg.Strategy); err != nil {
		return err
	}
	if cfg.Threads == 0 {
		cfg.Threads = 1
	}
	if cfg.Threads < 1 || cfg.Threads > 1024 {
		return fmt.Errorf("threads must be between 1 and 1024, not %d", cfg.Threads)
	}
	for _, d := range []*time.Duration{&cfg.DrainTimeout, &cfg.ReadyTimeout} {
		if *d == 0 {
			*d = 30 * time.Second
		}
	}
	if cfg.StopTimeout == 0 {
		cfg.StopTimeout = 5 * time.Second
	}
	if cfg.WorkerConnections == 0 {
		cfg.WorkerConnections = 1024
	}
	if cfg.WorkerConnections < 1 {
		return fmt.Errorf("worker connections must be positive, not %d", cfg.WorkerConnections)
	}
	if cfg.MutexDelay == 0 {
		cfg.MutexDelay = 500 * time.Millisecond
	}
	switch {
	case cfg.ReorderEvery == 0:
		cfg.ReorderEvery = 16 // nginx 1.21.6
	case cfg.ReorderEvery < 0:
		cfg.ReorderEvery = 0
	}
	if cfg.DrainTimeout < 0 || cfg.ReadyTimeout < 0 || cfg.StopTimeout < 0 {
		return errors.New("timeouts must not be negative")
	}
	if cfg.Path == "" {
		exe, err := os.Executable()
		if err != nil {
			return fmt.Errorf("find own executable: %w", err)
		}
		cfg.Path = exe
		if cfg.Args == nil {
			cfg.Args = os.Args[1:]
		}
	}
	if cfg.Log == nil {
		cfg.Log = slog.Default()
	}
	return nil
}
