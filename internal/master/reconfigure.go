//go:build linux

package master

import (
	"fmt"
	"os"
	"slices"
	"strings"

	"golang.org/x/sys/unix"
)

// settings is what a reload may change and a failed reload puts back.
type settings struct {
	cfg     Config
	workers int
	half    half
	creds   *Credentials
}

func (m *Master) settings() settings {
	return settings{cfg: m.cfg, workers: m.workers, half: m.half, creds: m.creds}
}

func (m *Master) restore(s settings) {
	m.cfg, m.workers, m.half, m.creds = s.cfg, s.workers, s.half, s.creds
	m.strategy.Store(m.cfg.Strategy)
}

// ownsSockets: strategies whose master half holds state of its own (a lock
// file, per-slot sockets, a dispatcher) cannot be swapped by a reload.
func ownsSockets(strategy string) bool {
	return strategy == "flock" || strategy == "reuseport" || strategy == "fdpass"
}

// reloadStrategy is the strategy a reload's workers use, and whether it
// is another than the running one's. A strategy with a master half cannot
// be swapped in or out by a reload (the running one is kept). A default
// (Config.StrategyFallback) follows what the master serves with: the
// sockets, which a reload keeps, decided it (see upgradeStrategy).
func reloadStrategy(cur, next Config) (strategy string, swap bool) {
	switch {
	case next.Strategy == cur.Strategy:
		return cur.Strategy, false
	case next.StrategyFallback != "" && cur.StrategyFallback != "":
		return cur.Strategy, false
	case ownsSockets(next.Strategy) || ownsSockets(cur.Strategy):
		return cur.Strategy, false
	}
	return next.Strategy, true
}

// reconfigure reads the configuration again for a HUP (Config.Reload) and
// applies to the new generation what a new generation can take: the worker
// count, the strategy and its options, the document root and the engine's
// options, the access log, the workers' user, the timeouts and limits.
// What needs sockets the master already holds — listen addresses, backlog,
// deferred accept, the admin endpoint, socket ownership, a strategy with a
// master half — is kept, and said to need USR2 (a new master). An invalid
// configuration is reported, and false keeps the running generation.
func (m *Master) reconfigure() bool {
	m.checkBinary()
	if m.cfg.Reload == nil {
		return true
	}
	cur := m.cfg
	next, err := m.cfg.Reload()
	var creds *Credentials
	if err == nil {
		err = fill(&next)
	}
	if err == nil {
		creds, _, err = resolveIdentities(next)
	}
	if err == nil {
		// Judged with the sockets that serve on (they are kept, below):
		// systemd's, say, of which some are TLS with no --tls-listen.
		check := next
		check.Listen, check.TLSListen = cur.Listen, cur.TLSListen
		err = checkFiles(check, creds)
	}
	if err == nil {
		err = prepareAccessLog(next.AccessLog, creds)
	}
	if err != nil {
		m.log.Error("HUP: the configuration is invalid; the running workers keep serving", "err", err)
		return false
	}
	var kept []string
	keep := func(name string, same bool) {
		if !same {
			kept = append(kept, name)
		}
	}
	keep("listen", len(next.Listen) == 0 || slices.Equal(next.Listen, cur.Listen))
	keep("tls-listen", slices.Equal(next.TLSListen, cur.TLSListen))
	keep("backlog", next.Backlog == cur.Backlog)
	keep("defer-accept", next.DeferAccept == cur.DeferAccept)
	keep("admin", next.Admin == cur.Admin)
	keep("socket-mode", next.SocketMode == cur.SocketMode)
	keep("socket-owner", next.SocketOwner == cur.SocketOwner)
	keep("pid", next.PIDFile == cur.PIDFile)
	next.Listen, next.TLSListen, next.Backlog, next.DeferAccept, next.Admin = cur.Listen, cur.TLSListen, cur.Backlog, cur.DeferAccept, cur.Admin
	next.SocketMode, next.SocketOwner, next.PIDFile = cur.SocketMode, cur.SocketOwner, cur.PIDFile
	strategy, swap := reloadStrategy(cur, next)
	if strategy != next.Strategy && next.StrategyFallback == "" {
		kept = append(kept, "strategy") // asked for, not a default
	}
	next.Strategy = strategy
	if swap {
		m.half = newHalf(m, next.Strategy)
		m.log.Info("HUP: new workers use another strategy", "from", cur.Strategy, "to", next.Strategy)
	}
	next.Path, next.Args, next.Env, next.Log, next.Reload, next.self = cur.Path, cur.Args, cur.Env, cur.Log, cur.Reload, cur.self
	if len(kept) > 0 {
		m.log.Warn("HUP: these settings need new sockets and keep their running values; USR2 starts a new master with them",
			"settings", strings.Join(kept, ","))
	}
	if next.Workers != m.workers {
		m.log.Info("HUP: worker count", "from", m.workers, "to", next.Workers)
	}
	m.cfg, m.creds, m.workers = next, creds, next.Workers
	m.strategy.Store(m.cfg.Strategy)
	m.half.resized()
	return true
}

// checkBinary says when the executable on disk is not the one this master
// runs: workers run the master's own binary (/proc/self/exe), so the new
// code reaches them only through USR2.
func (m *Master) checkBinary() {
	if !m.cfg.self {
		return
	}
	var running, onDisk unix.Stat_t
	if unix.Stat("/proc/self/exe", &running) != nil {
		return
	}
	err := unix.Stat(m.cfg.Path, &onDisk)
	if err == nil && running.Dev == onDisk.Dev && running.Ino == onDisk.Ino {
		return
	}
	why := "it was replaced"
	if err != nil {
		why = fmt.Sprint(err)
	}
	m.log.Warn("HUP: the binary on disk is not the one running ("+why+"); new workers run this master's code; USR2 runs the new one",
		"path", m.cfg.Path, "pid", os.Getpid())
}
