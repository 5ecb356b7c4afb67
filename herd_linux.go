//go:build linux && !herd_oneprocess

package herd

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"runtime"
	"testing"
	"time"

	"github.com/herd-run/herd/internal/accept"
	"github.com/herd-run/herd/internal/httpd"
	"github.com/herd-run/herd/internal/master"
	"github.com/herd-run/herd/internal/proto"
	"github.com/herd-run/herd/internal/shm"
	"github.com/herd-run/herd/internal/worker"
	"golang.org/x/sys/unix"
)

// running is a started server: its master, in this process.
type running struct {
	master *master.Master
	done   chan struct{}
	err    error
}

// Strategies lists the accept strategies this build has.
func Strategies() []string { return accept.Names() }

// Start makes the listening sockets and the workers, and returns once every
// worker has reported ready. It returns an error if a socket cannot be made
// (an address in use, say) or the workers are not ready within ReadyTimeout.
//
// In a worker process Start does not return: it serves until the master
// tells it to stop and then exits the process.
func (s *Server) Start() error {
	log := s.Logger
	if log == nil {
		log = slog.Default()
	}
	spec, err := worker.FromEnv()
	if err != nil {
		log.Error(err.Error())
		os.Exit(2)
	}
	if s.Handler == nil && s.Static == nil {
		err := errors.New("herd: Server.Handler is nil")
		if spec != nil { // the master reports it, once, and gives up
			worker.Fail(err, log)
			os.Exit(2)
		}
		return err
	}
	if spec != nil {
		if err := insideTest(); err != nil {
			worker.Fail(err, log)
			os.Exit(2)
		}
		current = WorkerInfo{Slot: spec.Slot, Generation: spec.Generation, Workers: spec.Workers}
		opts := worker.Options{Handler: s.Handler, Configure: s.ConfigureServer, TLSConfig: s.TLSConfig, Metrics: s.Metrics, Log: log}
		if f := s.OnWorkerStart; f != nil {
			opts.Start = func() error { return f(current) }
		}
		if f := s.OnWorkerStop; f != nil {
			opts.Stop = func() { f(current) }
		}
		os.Exit(worker.Run(spec, opts))
	}

	m, err := master.New(s.masterConfig(log))
	if err != nil {
		return fmt.Errorf("herd: %w", err)
	}
	s.run = &running{master: m, done: make(chan struct{})}
	go func() {
		s.run.err = m.Run()
		close(s.run.done)
	}()
	timeout := s.ReadyTimeout
	if timeout <= 0 {
		timeout = 30 * time.Second
	}
	select {
	case <-m.Ready():
		return nil
	case <-s.run.done:
		return fmt.Errorf("herd: stopped before the workers were ready: %w", s.run.err)
	case <-time.After(timeout):
		m.Signal(unix.SIGINT)
		<-s.run.done
		return fmt.Errorf("herd: workers not ready within %v", timeout)
	}
}

// Check validates the options without starting anything, as
// `herd serve --check` does.
func (s *Server) Check() error {
	if s.Handler == nil && s.Static == nil {
		return errors.New("herd: Server.Handler is nil")
	}
	if err := master.Check(s.masterConfig(slog.Default())); err != nil {
		return fmt.Errorf("herd: %w", err)
	}
	return nil
}

func (s *Server) masterConfig(log *slog.Logger) master.Config {
	listen := s.Listen
	if len(listen) == 0 && len(s.TLSListen) == 0 && os.Getenv("LISTEN_FDS") == "" && os.Getenv(proto.UpgradeEnv) == "" {
		// Unless systemd passes sockets, or an upgrading master passes
		// its own (which systemd may have given it): those are taken as
		// they are.
		listen = []string{":8080"}
	}
	tlsProgram := s.TLSConfig != nil && (len(s.TLSConfig.Certificates) > 0 || s.TLSConfig.GetCertificate != nil ||
		s.TLSConfig.GetConfigForClient != nil)
	cfg := master.Config{
		TLSListen: s.TLSListen, TLSCert: s.TLSCertFile, TLSKey: s.TLSKeyFile, TLSProgram: tlsProgram, RedirectHTTPS: s.RedirectHTTPS,
		Listen: listen, Backlog: s.Backlog, DeferAccept: s.DeferAccept, Workers: s.Workers, Strategy: s.Strategy,
		DrainTimeout: s.DrainTimeout, ReadyTimeout: s.ReadyTimeout, ShutdownDelay: s.ShutdownDelay, PIDFile: s.PIDFile, Admin: s.Admin,
		AccessLog: s.AccessLog, Log: log, WorkerTimeout: s.WorkerTimeout,
		User: s.User, Group: s.Group, SocketMode: s.SocketMode, SocketOwner: s.SocketOwner,
		MaxRequests: s.MaxRequests, MaxRequestsJitter: s.MaxRequestsJitter,
		Accept: accept.Options{Threads: s.Threads, MultiAccept: s.MultiAccept, WorkerConnections: s.WorkerConnections,
			MutexDelay: s.AcceptMutexDelay, ReorderEvery: s.ExclusiveReorder},
	}
	if s.Static == nil && cfg.Strategy == "" {
		// See Server.Strategy: reuseport where it can serve (TCP
		// addresses herd binds), else Go's netpoller.
		cfg.Strategy, cfg.StrategyFallback = "reuseport", "go"
	}
	cfg.WorkerProcs = s.WorkerProcs
	if st := s.Static; st != nil {
		cfg.StaticRoot = st.Root
		cfg.Static = httpd.Options{FollowSymlinks: st.FollowSymlinks, Autoindex: st.Autoindex,
			HeaderTimeout: st.HeaderTimeout, IdleTimeout: st.IdleTimeout}
	}
	if s.Reconfigure != nil {
		cfg.Reload = func() (master.Config, error) {
			next, err := s.Reconfigure()
			if err != nil {
				return master.Config{}, err
			}
			return next.masterConfig(log), nil
		}
	}
	return cfg
}

// Addrs returns the addresses the server listens on, with chosen ports
// filled in. It is empty before Start.
func (s *Server) Addrs() []string {
	if s.run == nil {
		return nil
	}
	return s.run.master.Addrs()
}

// AdminAddr is the address of the admin endpoint, or "" if there is none.
func (s *Server) AdminAddr() string {
	if s.run == nil {
		return ""
	}
	return s.run.master.AdminAddr()
}

// Wait blocks until the server has stopped — by a signal, Shutdown or Close.
func (s *Server) Wait() error {
	if s.run == nil {
		return errors.New("herd: server not started")
	}
	<-s.run.done
	return s.run.err
}

// Shutdown stops the server gracefully, as SIGQUIT does: workers stop
// accepting and finish their requests. If ctx ends first, the workers are
// stopped at once and ctx's error is returned.
func (s *Server) Shutdown(ctx context.Context) error {
	if s.run == nil {
		return errors.New("herd: server not started")
	}
	s.run.master.Signal(unix.SIGQUIT)
	select {
	case <-s.run.done:
		return s.run.err
	case <-ctx.Done():
		s.run.master.Signal(unix.SIGINT)
		<-s.run.done
		return ctx.Err()
	}
}

// Close stops the server at once, as SIGINT does.
func (s *Server) Close() error {
	if s.run == nil {
		return errors.New("herd: server not started")
	}
	s.run.master.Signal(unix.SIGINT)
	return s.Wait()
}

// Reload replaces every worker with a new one, as SIGHUP does.
func (s *Server) Reload() {
	if s.run != nil {
		s.run.master.Signal(unix.SIGHUP)
	}
}

// Stats reads the scoreboard.
func (s *Server) Stats() Stats {
	if s.run == nil {
		return Stats{}
	}
	st := statsOf(s.run.master.Snapshot())
	st.Strategy = s.run.master.Strategy()
	return st
}

func statsOf(snap shm.Snapshot) Stats {
	st := Stats{MasterPID: snap.MasterPID, Generation: snap.Generation, Workers: snap.Workers,
		Reloads: snap.Reloads, Restarts: snap.Restarts, MutexHolder: snap.MutexHolder,
		Total: WorkerStats(snap.Total)}
	for _, w := range snap.Live {
		st.Live = append(st.Live, WorkerStats(w))
	}
	return st
}

// current is this process's identity, once it is a worker.
var current WorkerInfo

// CurrentWorker tells a worker which one it is: its slot, its generation
// and how many slots there are (for a per-worker port, a shard of a
// cache, a log name). ok is false in the master and in a program that is
// not herd's.
func CurrentWorker() (w WorkerInfo, ok bool) { return current, current.Workers > 0 }

// insideTest reports the trap of a test binary without a TestMain: its
// workers, which are the test binary run again, would run the tests from
// the first, and the first test's Start would serve that test's Server —
// the wrong handler. A worker must reach Start from TestMain, before
// m.Run, never from inside a test.
func insideTest() error {
	if !testing.Testing() {
		return nil
	}
	pcs := make([]uintptr, 64)
	frames := runtime.CallersFrames(pcs[:runtime.Callers(2, pcs)])
	for {
		f, more := frames.Next()
		if f.Function == "testing.tRunner" {
			return errors.New("herd: a worker of this test binary reached Server.Start inside a test, not from TestMain, " +
				"so it would serve another test's Server: in TestMain, when herd.IsWorker(), build the Server the test starts " +
				"and call its Start (see herd.IsWorker)")
		}
		if !more {
			return nil
		}
	}
}
