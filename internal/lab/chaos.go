//go:build linux

package lab

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"strings"
	"syscall"
	"time"

	"github.com/herd-run/herd/internal/master"
	"github.com/herd-run/herd/internal/shm"
)

// Chaos is a soak test: a load runs for Load.Duration while the server's
// master is made to reload Reloads times and to upgrade its binary Upgrades
// times, and Kills workers are SIGKILLed at moments they hold no connection.
// Events are spread evenly over the run, in a shuffled order. It reports
// what the clients saw.
//
// It drives herd or nginx the same way, through the master's pid file:
// reload is HUP; upgrade is USR2, then for nginx (which waits to be told)
// QUIT to the old master once the new one has written its pid; a kill
// picks a child of the master — for herd one whose scoreboard record shows
// no open connection, for nginx (which has no such record) any.
type Chaos struct {
	Load     Load
	PIDFile  string
	Nginx    bool // nginx's upgrade protocol and no scoreboard
	Reloads  int
	Upgrades int
	Kills    int
	Log      io.Writer
}

// ChaosResult is what happened.
type ChaosResult struct {
	Server     string         `json:"server"`
	Requests   int            `json:"requests"`
	Failed     int            `json:"failed"`
	ErrorKinds map[string]int `json:"error_kinds,omitempty"`
	Reloads    int            `json:"reloads"`
	Upgrades   int            `json:"upgrades"`
	Kills      int            `json:"kills"`
	Seconds    float64        `json:"seconds"`
}

// Run soaks the server and returns the result.
func (c *Chaos) Run(ctx context.Context) (*ChaosResult, error) {
	if c.Load.Duration <= 0 {
		return nil, errors.New("chaos: needs a duration")
	}
	events := make([]string, 0, c.Reloads+c.Upgrades+c.Kills)
	for range c.Reloads {
		events = append(events, "reload")
	}
	for range c.Upgrades {
		events = append(events, "upgrade")
	}
	for range c.Kills {
		events = append(events, "kill")
	}
	rand.Shuffle(len(events), func(i, j int) { events[i], events[j] = events[j], events[i] })

	type loadOut struct {
		res *Result
		err error
	}
	loaded := make(chan loadOut, 1)
	go func() {
		r, err := c.Load.Run(ctx)
		loaded <- loadOut{r, err}
	}()
	out := &ChaosResult{}
	gap := c.Load.Duration / time.Duration(len(events)+1)
	for _, ev := range events {
		select {
		case <-time.After(gap):
		case <-ctx.Done():
		}
		if ctx.Err() != nil {
			break
		}
		if err := c.do(ev); err != nil {
			c.logf("%s: %v", ev, err)
			continue
		}
		switch ev {
		case "reload":
			out.Reloads++
		case "upgrade":
			out.Upgrades++
		case "kill":
			out.Kills++
		}
		c.logf("%s done", ev)
	}
	lo := <-loaded
	if lo.err != nil {
		return nil, lo.err
	}
	out.Requests = lo.res.Requests + lo.res.Errors
	out.Failed = lo.res.Errors
	out.ErrorKinds = lo.res.ErrorKinds
	if len(out.ErrorKinds) == 0 {
		out.ErrorKinds = nil
	}
	out.Seconds = lo.res.Elapsed.Seconds()
	return out, nil
}

func (c *Chaos) logf(format string, args ...any) {
	if c.Log != nil {
		fmt.Fprintf(c.Log, "chaos: "+format+"\n", args...)
	}
}

func (c *Chaos) do(ev string) error {
	master, err := master.ReadPIDFile(c.PIDFile)
	if err != nil {
		return err
	}
	switch ev {
	case "reload":
		return syscall.Kill(master, syscall.SIGHUP)
	case "upgrade":
		return c.upgrade(master)
	default:
		return c.kill(master)
	}
}

// upgrade sends USR2 and waits until a new master serves.
func (c *Chaos) upgrade(old int) error {
	if err := syscall.Kill(old, syscall.SIGUSR2); err != nil {
		return err
	}
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
		pid, err := master.ReadPIDFile(c.PIDFile)
		if err != nil || pid == old {
			continue
		}
		if c.Nginx {
			// nginx leaves both masters running until told; retire the old
			// one gracefully once the new one has had a moment to start
			// its workers, as an operator would.
			time.Sleep(500 * time.Millisecond)
			return syscall.Kill(old, syscall.SIGQUIT)
		}
		// herd retires the old master itself once the new one is ready.
		if syscall.Kill(old, 0) != nil || isZombie(old) {
			return nil
		}
	}
	return errors.New("no new master within 30s")
}

// kill SIGKILLs one worker at a moment it holds no connection (herd), or
// any worker (nginx).
func (c *Chaos) kill(master int) error {
	kids := children(master)
	if len(kids) == 0 {
		return errors.New("no workers")
	}
	if c.Nginx {
		return syscall.Kill(kids[rand.IntN(len(kids))], syscall.SIGKILL)
	}
	region, board, err := shm.OpenScoreboardOf(master)
	if err != nil {
		return err
	}
	defer region.Close()
	// Idle: no connection held, and none accepted, across 2ms, read from
	// the worker's own record just before the kill so that nothing else
	// happens in between. A worker can still be handed a connection by the
	// kernel in the instant before it dies; the load reports that.
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		snap := board.Snapshot()
		kids := map[int]bool{}
		for _, k := range children(master) {
			kids[k] = true
		}
		for _, i := range rand.Perm(len(snap.Live)) {
			w := snap.Live[i]
			r := board.Record(w.Record)
			if w.State != "ready" || !kids[w.PID] || r == nil || r.Load(shm.Active) != 0 {
				continue
			}
			accepts := r.Load(shm.Accepts)
			time.Sleep(2 * time.Millisecond)
			if r.Load(shm.Active) == 0 && r.Load(shm.Accepts) == accepts && int(r.Load(shm.PID)) == w.PID {
				return syscall.Kill(w.PID, syscall.SIGKILL)
			}
		}
	}
	return errors.New("no idle worker within 5s")
}

func stopByPIDFile(path string) {
	pid, err := master.ReadPIDFile(path)
	if err != nil {
		return
	}
	syscall.Kill(pid, syscall.SIGTERM)
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		if syscall.Kill(pid, 0) != nil {
			return
		}
	}
	syscall.Kill(pid, syscall.SIGKILL)
}

func isZombie(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return true
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	return i > 0 && i+2 < len(s) && s[i+2] == 'Z'
}

// Soak starts one server as a cell of m would be started (herd with a pid
// file, or m.Command, whose pid file must be given), runs the chaos
// against it and stops it.
func (m *Matrix) Soak(ctx context.Context, cell Cell, c Chaos) (*ChaosResult, error) {
	root, err := os.MkdirTemp("", "herd-soak-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(root)
	if err := os.WriteFile(root+"/hello.txt", []byte(helloBody), 0o644); err != nil {
		return nil, err
	}
	if m.Path == "" {
		m.Path = "/hello.txt"
	}
	if m.Command == "" {
		if m.Herd == "" {
			if m.Herd, err = os.Executable(); err != nil {
				return nil, err
			}
		}
		c.PIDFile = root + "/herd.pid"
		m.ExtraArgs = append(m.ExtraArgs, "--pid", c.PIDFile)
	} else if c.PIDFile == "" {
		return nil, errors.New("chaos: --command needs the server's pid file")
	}
	srv, err := m.start(ctx, root, cell)
	if err != nil {
		return nil, err
	}
	defer srv.stop()
	if m.Command != "" {
		// A server that daemonized is not in our process group: stop it
		// through its pid file, waiting for it to go.
		defer stopByPIDFile(c.PIDFile)
	}
	c.Load.Addr, c.Load.Path = srv.addr, m.Path
	c.Load.Concurrency, c.Load.KeepAlive = cell.Concurrency, cell.Mode == "keepalive"
	c.Load.WantLength = int64(len(helloBody))
	if m.Command != "" {
		c.Load.WantLength = -1
	}
	res, err := c.Run(ctx)
	if res != nil {
		res.Server = cell.Strategy
	}
	return res, err
}
