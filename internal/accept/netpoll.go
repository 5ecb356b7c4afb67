//go:build linux

package accept

import (
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"syscall"

	"github.com/herd-run/herd/internal/shm"
	"golang.org/x/sys/unix"
)

// Strategy "go": what a naive Go prefork server does. Each worker turns the
// inherited listener into a net.Listener (net.FileListener), which registers
// it with the Go runtime's netpoller: EPOLLIN|EPOLLOUT|EPOLLRDHUP|EPOLLET,
// never EPOLLEXCLUSIVE. Every worker's epoll instance is on the socket's wait
// queue, so one incoming connection wakes every idle worker; one wins
// accept4 and the rest find EAGAIN and go back to sleep — the thundering
// herd of seed 004, scene 2.
//
// To count the herd, the accept loop is the one net.TCPListener.Accept runs,
// written out: try accept4; on EAGAIN park on the netpoller until the socket
// is readable; try again. Each return from the park is a wakeup, and a
// wakeup whose accept4 found EAGAIN is spurious. A net.Listener's RawConn
// refuses Read, so the loop parks through an *os.File made from a
// non-blocking duplicate of the socket, which the runtime registers with the
// same netpoller and the same flags as net.FileListener would: the syscalls
// and the epoll registration are exactly those of Accept.
type netpoll struct {
	cfg       Config
	listeners []*os.File
	stopOnce  sync.Once
	stopped   atomic.Bool
	out       exhaustion
	// acceptQueuedOnStop: once stopped, accept what is already queued
	// (reuseport: the socket is this slot's alone).
	acceptQueuedOnStop bool
}

func newNetpoll(cfg Config) (Strategy, error) {
	s := &netpoll{cfg: cfg}
	for _, l := range cfg.Listeners {
		fd, err := unix.FcntlInt(uintptr(l.FD), unix.F_DUPFD_CLOEXEC, 0)
		if err == nil {
			// O_NONBLOCK lands on the open file description all workers
			// share, as net.FileListener's does.
			err = unix.SetNonblock(fd, true)
		}
		if err != nil {
			s.Stop()
			return nil, fmt.Errorf("accept: listener %s: %w", l.Addr, err)
		}
		s.listeners = append(s.listeners, os.NewFile(uintptr(fd), l.Addr)) // non-blocking: goes to the netpoller
	}
	return s, nil
}

// Stop closes this worker's duplicates of the listeners, which wakes the
// parked accept loops. The sockets themselves, and their queues, stay open
// in the master and the other workers.
func (s *netpoll) Stop() {
	s.stopOnce.Do(func() {
		s.stopped.Store(true)
		for _, ln := range s.listeners {
			ln.Close()
		}
	})
}

func (s *netpoll) Serve(deliver func(fd int)) error {
	var wg sync.WaitGroup
	errs := make(chan error, len(s.listeners)*s.cfg.Threads)
	for i, ln := range s.listeners {
		rc, err := ln.SyscallConn()
		if err != nil {
			s.Stop()
			wg.Wait()
			return fmt.Errorf("accept: %s: %w", s.cfg.Listeners[i].Addr, err)
		}
		for range s.cfg.Threads {
			wg.Add(1)
			go func() {
				defer wg.Done()
				if err := s.loop(rc, s.cfg.Listeners[i].Addr, deliver); err != nil {
					s.Stop()
					errs <- err
				}
			}()
		}
	}
	wg.Wait()
	close(errs)
	if s.acceptQueuedOnStop {
		acceptQueued(&s.cfg, &s.out, deliver)
	}
	return <-errs
}

func (s *netpoll) loop(rc syscall.RawConn, addr string, deliver func(fd int)) error {
	st := s.cfg.Stats
	for {
		var fd int
		var aerr error
		parked := false
		err := rc.Read(func(lfd uintptr) bool {
			if parked {
				st.Inc(shm.Wakeups)
			}
			fd, aerr = accept4(int(lfd), s.cfg.acceptFlags(), false)
			if aerr == unix.EAGAIN {
				if parked {
					st.Inc(shm.Spurious)
				}
				parked = true
				return false // park on the netpoller
			}
			return true
		})
		if err != nil {
			if s.stopped.Load() {
				return nil // Stop closed the listener ("use of closed file")
			}
			return fmt.Errorf("accept on %s: %w", addr, err)
		}
		switch {
		case aerr == nil:
			accepted(st, fd, deliver)
			s.out.recovered(s.cfg.Log)
		case transient(aerr):
		case s.out.hit(aerr, s.cfg.Log):
		default:
			return fmt.Errorf("accept4 on %s: %w", addr, aerr)
		}
	}
}
