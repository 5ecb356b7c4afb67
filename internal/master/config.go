//go:build linux

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
	"slices"
	"time"

	"github.com/herd-run/herd/internal/accept"
	"github.com/herd-run/herd/internal/httpd"
	"github.com/herd-run/herd/internal/proto"
)

// Config is how the master runs. Every option follows herd's one rule for
// numbers and durations, set at the public edge (flags, TOML, herd.Server)
// and kept all the way down: zero means the default, and a negative value
// turns the option off where that means anything (DeferAccept,
// WorkerTimeout, Accept.ReorderEvery) and is refused where it does not.
// fill applies the rule to the master's own options; the options of the
// accept strategies and of the native engine travel to the workers as they
// are, in their owners' structs, and their owners apply it.
type Config struct {
	Listen     []string // addresses; see parseAddr
	TLSListen  []string // addresses served over TLS (certificate in TLSCert and TLSKey, or the program's own)
	TLSCert    string   // PEM files of the certificate chain and its key, checked to match
	TLSKey     string
	TLSProgram bool // the program's own tls.Config has certificates (library)
	// RedirectHTTPS: the plain listeners answer every request with a
	// redirect to HTTPS on the first TLS listener's port.
	RedirectHTTPS bool
	Backlog       int           // listen(2) backlog; default 511, as nginx
	DeferAccept   time.Duration // TCP_DEFER_ACCEPT on the TCP sockets the master creates; default 1s, negative: off
	Workers       int           // default: the CPUs this process may use
	Strategy      string        // accept strategy; default accept.Default()
	// StrategyFallback, if set, says Strategy is a default rather than the
	// operator's word: where Strategy cannot serve — it is reuseport, and
	// an address is a unix socket, the sockets come from systemd, or a
	// binary upgrade inherits sockets made for another strategy — this one
	// is used instead of an error (fill, Master.open).
	StrategyFallback string
	WorkerProcs      int           // each worker's GOMAXPROCS: 0 herd's choice (worker's setProcs), negative the runtime's
	DrainTimeout     time.Duration // how long a stopping worker may finish requests; default 30s
	ReadyTimeout     time.Duration // how long a new worker may take to report ready; default 30s
	StopTimeout      time.Duration // after a fast stop, how long before SIGKILL; default 5s
	// ShutdownDelay: a graceful stop first turns readiness off and serves
	// on this long (a lame duck), for load balancers to stop sending; 0:
	// drain at once.
	ShutdownDelay time.Duration
	PIDFile       string

	// Accept is how workers accept (internal/accept owns it).
	Accept accept.Options

	Admin     string // operator endpoint address (loopback or unix socket); "" for none
	AccessLog string // workers log requests here ("-": standard output); "" for none

	// User and Group, if set, are who workers run as (a name or a number;
	// Group defaults to User's groups); the master keeps its own identity
	// to bind and to signal. SocketMode and SocketOwner ("user[:group]")
	// apply to the unix sockets the master creates.
	User, Group string
	SocketMode  os.FileMode
	SocketOwner string

	// StaticRoot, if set, is served by the native engine (internal/httpd)
	// instead of the program's handler, as Static says (httpd owns it).
	StaticRoot string
	Static     httpd.Options

	WorkerTimeout     time.Duration // kill a worker whose heartbeat is older; default 30s, negative: never
	MaxRequests       int           // replace a worker after this many requests; 0: never
	MaxRequestsJitter int           // plus up to this many more, at random per worker

	// Path and Args are the command a worker runs: by default this very
	// executable with this process's arguments. Env is added to the
	// environment the master has.
	Path string
	Args []string
	Env  []string

	// Reload, if set, is called on HUP for the configuration of the new
	// generation (herd serve reads its flags, environment and file again).
	// An error keeps the running generation as it is.
	Reload func() (Config, error)

	// self: Path is this process's own executable, so workers run it as
	// /proc/self/exe — the very binary the master runs, even once the file
	// on disk has been replaced — and only USR2 brings new code.
	self bool

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
	creds, _, err := resolveIdentities(cfg)
	if err != nil {
		return err
	}
	if err := checkFiles(cfg, creds); err != nil {
		return err
	}
	for _, a := range cfg.addresses() {
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

// reuseportServes reports whether the reuseport strategy can serve addrs:
// it makes one socket per worker and address, which systemd's sockets
// (no addresses) and unix sockets cannot be.
func reuseportServes(addrs []string) bool {
	for _, a := range addrs {
		if network, _, err := parseAddr(a); err != nil || network == "unix" {
			return false
		}
	}
	return len(addrs) > 0
}

func fill(cfg *Config) error {
	if len(cfg.addresses()) == 0 && os.Getenv("LISTEN_FDS") == "" && os.Getenv(proto.UpgradeEnv) == "" {
		return errors.New("no listen address (and no sockets from systemd)")
	}
	if cfg.Workers == 0 {
		// The CPUs this process may use: its affinity and, since Go 1.25,
		// its cgroup CPU quota (a container limited to 2 CPUs on a
		// 64-CPU host gets 2 workers, not 64).
		cfg.Workers = runtime.GOMAXPROCS(0)
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
	if cfg.Strategy == "reuseport" && cfg.StrategyFallback != "" && !reuseportServes(cfg.addresses()) {
		cfg.Strategy = cfg.StrategyFallback
	}
	if err := accept.Check(cfg.Strategy); err != nil {
		return err
	}
	if err := cfg.Accept.Check(); err != nil {
		return err
	}
	switch {
	case cfg.DeferAccept == 0:
		cfg.DeferAccept = time.Second // nginx's "deferred"
	case cfg.DeferAccept < 0:
		cfg.DeferAccept = 0 // off, to the socket
	}
	switch {
	case cfg.WorkerTimeout == 0:
		cfg.WorkerTimeout = 30 * time.Second // gunicorn's timeout
	case cfg.WorkerTimeout < 0:
		cfg.WorkerTimeout = 0 // never
	}
	if cfg.MaxRequests < 0 || cfg.MaxRequestsJitter < 0 {
		return errors.New("max requests must not be negative")
	}
	for _, d := range []*time.Duration{&cfg.DrainTimeout, &cfg.ReadyTimeout} {
		if *d == 0 {
			*d = 30 * time.Second
		}
	}
	if cfg.StopTimeout == 0 {
		cfg.StopTimeout = 5 * time.Second
	}
	if cfg.DrainTimeout < 0 || cfg.ReadyTimeout < 0 || cfg.StopTimeout < 0 || cfg.ShutdownDelay < 0 {
		return errors.New("timeouts must not be negative")
	}
	if cfg.Path == "" {
		exe, err := os.Executable()
		if err != nil {
			return fmt.Errorf("find own executable: %w", err)
		}
		cfg.Path, cfg.self = exe, true
		if cfg.Args == nil {
			cfg.Args = os.Args[1:]
		}
	}
	if cfg.Log == nil {
		cfg.Log = slog.Default()
	}
	return nil
}

// resolveIdentities looks up who workers run as and who owns the unix
// sockets.
func resolveIdentities(cfg Config) (*Credentials, socketOwnership, error) {
	creds, err := lookupCredentials(cfg.User, cfg.Group)
	if err != nil {
		return nil, socketOwnership{}, err
	}
	own, err := parseSocketOwnership(cfg.SocketMode, cfg.SocketOwner)
	return creds, own, err
}

// addresses are every address to listen on: Listen, then TLSListen. The
// sockets, a worker's listeners and an upgrade's inheritance keep this
// order, so a worker knows its TLS listeners by position (Spec.TLSFrom).
func (c *Config) addresses() []string { return append(slices.Clone(c.Listen), c.TLSListen...) }
