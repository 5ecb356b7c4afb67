//go:build linux

package accept

import (
	"fmt"

	"github.com/herd-run/herd/internal/shm"
	"golang.org/x/sys/unix"
)

// Strategy "exclusive": epoll.go's loop with the listeners added as
// EPOLLEXCLUSIVE (Linux 4.5; seed 002). The socket's wait queue entries of
// the epoll instances become exclusive, so a connection wakes one or a few
// waiters instead of all of them ("one or more": the seed counted 1557
// accept4 calls for 1000 connections, against 6884 without).
//
// Known flaw: the kernel wakes exclusive waiters in wait-queue order, and an
// epoll instance joins the queue when the listener is added to it, so the
// worker that added it first gets most connections. nginx 1.21.6 fixes this
// in ngx_reorder_accept_events: every 16 accepts, or whenever the worker is
// loaded (accept_disabled > 0), it deletes the listener from its epoll and
// adds it again, which moves it to the back of the queue. herd does the
// same; ReorderEvery (--exclusive-reorder, negative to turn it off) sets the period
// so the lab can measure what it buys.
func newExclusive(cfg Config) (Strategy, error) { return newEpollStrategy(cfg, "exclusive", true) }

// reorderDue reports whether the listener should go to the back of the wait
// queue after k more accepts bringing the total to total.
func (e *epollStrategy) reorderDue(total, k int) bool {
	if loaded(e.cfg) {
		return true
	}
	every := e.cfg.ReorderEvery
	if every <= 0 {
		return false
	}
	return total/every != (total-k)/every
}

// loaded is nginx's accept_disabled > 0: fewer than an eighth of the
// worker's connection budget left.
func loaded(cfg Config) bool {
	return acceptDisabled(cfg) > 0
}

// acceptDisabled is nginx's ngx_accept_disabled = connection_n/8 − free_connection_n.
func acceptDisabled(cfg Config) int {
	active := int(cfg.Stats.Load(shm.Active))
	return cfg.WorkerConnections/8 - (cfg.WorkerConnections - active)
}

// reAdd deletes a listener from an epoll instance and adds it again
// (EPOLL_CTL_MOD is not allowed with EPOLLEXCLUSIVE).
func reAdd(ep int, l Listener, token int32) error {
	if err := unix.EpollCtl(ep, unix.EPOLL_CTL_DEL, l.FD, nil); err != nil {
		return fmt.Errorf("re-add %s: del: %w", l.Addr, err)
	}
	ev := unix.EpollEvent{Events: unix.EPOLLIN | unix.EPOLLEXCLUSIVE, Fd: token}
	if err := unix.EpollCtl(ep, unix.EPOLL_CTL_ADD, l.FD, &ev); err != nil {
		return fmt.Errorf("re-add %s: add: %w", l.Addr, err)
	}
	return nil
}
