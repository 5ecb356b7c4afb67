//go:build linux && !herd_oneprocess

package herd

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"time"

	"github.com/herd-run/herd/internal/accept"
	"github.com/herd-run/herd/internal/httpd"
	"github.com/herd-run/herd/internal/master"
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
		os.Exit(worker.Run(spec, worker.Options{Handler: s.Handler, Configure: s.ConfigureServer, TLSConfig: s.TLSConfig, Log: log}))
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
	if len(listen) == 0 && len(s.TLSListen) == 0 && os.Getenv("LISTEN_FDS") == "" {
		listen = []string{":8080"} // unless systemd passes sockets
	}
	tlsProgram := s.TLSConfig != nil && (len(s.TLSConfig.Certificates) > 0 || s.TLSConfig.GetCertificate != nil ||
		s.TLSConfig.GetConfigForClient != nil)
	cfg := master.Config{
		TLSListen: s.TLSListen, TLSCert: s.TLSCertFile, TLSKey: s.TLSKeyFile, TLSProgram: tlsProgram,
		Listen: listen, Backlog: s.Backlog, DeferAccept: s.DeferAccept, Workers: s.Workers, Strategy: s.Strategy,
		DrainTimeout: s.DrainTimeout, ReadyTimeout: s.ReadyTimeout, ShutdownDelay: s.ShutdownDelay, PIDFile: s.PIDFile, Admin: s.Admin,
		AccessLog: s.AccessLog, Log: log, WorkerTimeout: s.WorkerTimeout,
		User: s.User, Group: s.Group, SocketMode: s.SocketMode, SocketOwner: s.SocketOwner,
		MaxRequests: s.MaxRequests, MaxRequestsJitter: s.MaxRequestsJitter,
		Accept: accept.Options{Threads: s.Threads, MultiAccept: s.MultiAccept, WorkerConnections: s.WorkerConnections,
			MutexDelay: s.AcceptMutexDelay, ReorderEvery: s.ExclusiveReorder},
	}
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
	if s.run.done == nil {
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
	return statsOf(s.run.master.Snapshot())
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
