//go:build !linux || herd_oneprocess

package herd

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"sync"
)

// Prefork needs Linux (its accept strategies, memfd scoreboard and epoll
// engine). Elsewhere — a developer's laptop — a Server runs its Handler in
// this one process with net/http, on the same addresses, after a one-line
// warning, so a program built on herd develops and tests anywhere.

// running is a started server: its net/http servers, in this process.
type running struct {
	servers []*http.Server
	addrs   []string
	done    chan struct{}
	once    sync.Once
	err     error
}

// Strategies lists the accept strategies this build has: none off Linux.
func Strategies() []string { return nil }

// Start listens and serves the Handler in this process.
func (s *Server) Start() error {
	if err := s.Check(); err != nil {
		return err
	}
	log := s.Logger
	if log == nil {
		log = slog.Default()
	}
	log.Warn("herd: prefork needs Linux; serving the handler in this one process")
	handler := s.Handler
	if handler == nil {
		handler = http.FileServer(http.Dir(s.Static.Root))
	}
	r := &running{done: make(chan struct{})}
	listen := func(addr string, tlsConfig *tls.Config) error {
		l, err := net.Listen("tcp", addr)
		if err != nil {
			return fmt.Errorf("herd: %w", err)
		}
		if tlsConfig != nil {
			l = tls.NewListener(l, tlsConfig)
		}
		srv := &http.Server{Handler: handler}
		if s.ConfigureServer != nil {
			s.ConfigureServer(srv)
		}
		r.servers = append(r.servers, srv)
		r.addrs = append(r.addrs, l.Addr().String())
		go func() {
			if err := srv.Serve(l); err != nil && !errors.Is(err, http.ErrServerClosed) {
				r.stop(err)
			}
		}()
		return nil
	}
	addrs := s.Listen
	if len(addrs) == 0 && len(s.TLSListen) == 0 {
		addrs = []string{":8080"}
	}
	for _, a := range addrs {
		if err := listen(a, nil); err != nil {
			r.stop(err)
			return err
		}
	}
	if len(s.TLSListen) > 0 {
		cfg := &tls.Config{}
		if s.TLSConfig != nil {
			cfg = s.TLSConfig.Clone()
		}
		if s.TLSCertFile != "" {
			cert, err := tls.LoadX509KeyPair(s.TLSCertFile, s.TLSKeyFile)
			if err != nil {
				return fmt.Errorf("herd: tls: %w", err)
			}
			cfg.Certificates = append(cfg.Certificates, cert)
		}
		for _, a := range s.TLSListen {
			if err := listen(a, cfg); err != nil {
				r.stop(err)
				return err
			}
		}
	}
	s.run = r
	return nil
}

func (r *running) stop(err error) {
	r.once.Do(func() {
		r.err = err
		for _, srv := range r.servers {
			srv.Close()
		}
		close(r.done)
	})
}

// Check validates what this platform can check.
func (s *Server) Check() error {
	if s.Handler == nil && s.Static == nil {
		return errors.New("herd: Server.Handler is nil")
	}
	if s.RedirectHTTPS {
		return errors.New("herd: RedirectHTTPS needs Linux")
	}
	if (s.TLSConfig != nil || s.TLSCertFile != "") && len(s.TLSListen) == 0 {
		return errors.New("herd: tls: a certificate is given but no TLS listener (TLSListen)")
	}
	return nil
}

// Addrs returns the addresses the server listens on.
func (s *Server) Addrs() []string {
	if s.run == nil {
		return nil
	}
	return s.run.addrs
}

// AdminAddr is "": there is no admin endpoint off Linux.
func (s *Server) AdminAddr() string { return "" }

// Wait blocks until the server has stopped.
func (s *Server) Wait() error {
	if s.run == nil {
		return errors.New("herd: server not started")
	}
	<-s.run.done
	return s.run.err
}

// Shutdown stops the server gracefully, as http.Server.Shutdown does.
func (s *Server) Shutdown(ctx context.Context) error {
	if s.run == nil {
		return errors.New("herd: server not started")
	}
	var err error
	for _, srv := range s.run.servers {
		if e := srv.Shutdown(ctx); e != nil && err == nil {
			err = e
		}
	}
	s.run.stop(nil)
	return err
}

// Close stops the server at once.
func (s *Server) Close() error {
	if s.run == nil {
		return errors.New("herd: server not started")
	}
	s.run.stop(nil)
	return nil
}

// Reload does nothing: there are no workers to replace.
func (s *Server) Reload() {}

// Stats is empty: there is no scoreboard off Linux.
func (s *Server) Stats() Stats { return Stats{} }

// CurrentWorker reports no worker: off Linux there is only this process.
func CurrentWorker() (WorkerInfo, bool) { return WorkerInfo{}, false }
