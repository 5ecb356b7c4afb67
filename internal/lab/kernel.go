//go:build linux

package lab

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// KernelCounts are what the kernel saw a server's processes do during the
// measured load, counted the same way for herd and for any other server,
// so that rows of different servers can stand side by side: herd's own
// scoreboard counts only what herd does.
type KernelCounts struct {
	// Method is how they were counted: "perf" (the kernel's syscall
	// tracepoints, counted per process and inherited by every thread:
	// cheap enough that the other figures of the run stay meaningful) or
	// "strace" (strace -f -c attached to every process: the server runs
	// several times slower while traced).
	Method        string `json:"method"`
	Accept4       uint64 `json:"accept4"`        // accept4 and accept calls
	Accept4Failed uint64 `json:"accept4_failed"` // those that returned an error: EAGAIN, woken for a connection another took
	// Connections is the counted run's: the counts come from a second run
	// of the cell, so that tracing costs the first nothing.
	Connections int `json:"connections"`
}

// PerConn divides a count by the counted run's connections.
func (k *KernelCounts) PerConn(n uint64) float64 {
	if k == nil || k.Connections == 0 {
		return 0
	}
	return float64(n) / float64(k.Connections)
}

// kernelCount is a counter running while the load runs.
type kernelCount struct {
	method string
	cmd    *exec.Cmd
	out    string
	stderr *tailBuffer
}

// perfProbe remembers whether perf can count syscall tracepoints here: a
// property of the machine, asked once per process.
var perfProbe = sync.OnceValue(func() bool {
	return exec.Command("perf", "stat", "-a", "-e", "syscalls:sys_enter_accept4", "--", "true").Run() == nil
})

// startKernelCount starts counting for the processes pids and every
// thread they have or start, with perf if it can, else with strace, else
// returns an error saying neither is there.
func startKernelCount(pids []int) (*kernelCount, error) {
	if len(pids) == 0 {
		return nil, errors.New("lab: no server processes to count")
	}
	out, err := os.CreateTemp("", "herd-lab-count-")
	if err != nil {
		return nil, err
	}
	out.Close()
	k := &kernelCount{out: out.Name(), stderr: &tailBuffer{max: 4 << 10}}
	switch {
	case perfProbe():
		// Counted per process, inherited by every thread the processes
		// start later (Go starts threads as it needs them).
		k.method = "perf"
		list := make([]string, len(pids))
		for i, p := range pids {
			list[i] = strconv.Itoa(p)
		}
		k.cmd = exec.Command("perf", "stat", "-x,", "-o", k.out, "-p", strings.Join(list, ","),
			"-e", "syscalls:sys_enter_accept4", "-e", "syscalls:sys_enter_accept",
			"-e", "syscalls:sys_exit_accept4", "--filter", "ret < 0",
			"-e", "syscalls:sys_exit_accept", "--filter", "ret < 0")
	default:
		if _, err := exec.LookPath("strace"); err != nil {
			os.Remove(k.out)
			return nil, errors.New("lab: counting with the kernel needs perf (linux-perf) or strace")
		}
		k.method = "strace"
		args := []string{"-f", "-c", "-q", "-o", k.out, "-e", "trace=accept,accept4"}
		for _, p := range pids {
			args = append(args, "-p", strconv.Itoa(p))
		}
		k.cmd = exec.Command("strace", args...)
	}
	k.cmd.Stderr = k.stderr
	if err := k.cmd.Start(); err != nil {
		os.Remove(k.out)
		return nil, fmt.Errorf("lab: %s: %w", k.method, err)
	}
	time.Sleep(300 * time.Millisecond) // attached before the load starts
	return k, nil
}

// stop ends the count and reads it.
func (k *kernelCount) stop() (*KernelCounts, error) {
	defer os.Remove(k.out)
	k.cmd.Process.Signal(syscall.SIGINT)
	done := make(chan error, 1)
	go func() { done <- k.cmd.Wait() }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		k.cmd.Process.Kill()
		<-done
		return nil, fmt.Errorf("lab: %s did not stop", k.method)
	}
	b, err := os.ReadFile(k.out)
	if err != nil {
		return nil, err
	}
	c := &KernelCounts{Method: k.method}
	if k.method == "perf" {
		err = parsePerfStat(string(b), c)
	} else {
		err = parseStraceSummary(string(b), c)
	}
	if err != nil {
		return nil, fmt.Errorf("lab: %s: %w (%s)", k.method, err, k.stderr)
	}
	return c, nil
}

// parsePerfStat reads perf stat -x, output: "count,unit,event,...".
func parsePerfStat(out string, c *KernelCounts) error {
	seen := 0
	sc := bufio.NewScanner(strings.NewReader(out))
	for sc.Scan() {
		f := strings.Split(sc.Text(), ",")
		if len(f) < 3 || strings.HasPrefix(f[0], "#") {
			continue
		}
		n, err := strconv.ParseUint(f[0], 10, 64)
		if err != nil {
			return fmt.Errorf("event %s not counted (%q)", f[2], f[0])
		}
		seen++
		switch f[2] {
		case "syscalls:sys_enter_accept4", "syscalls:sys_enter_accept":
			c.Accept4 += n
		case "syscalls:sys_exit_accept4", "syscalls:sys_exit_accept":
			c.Accept4Failed += n
		}
	}
	if seen == 0 {
		return errors.New("no counts in its output")
	}
	return nil
}

// straceRow is a row of strace -c's table: % time, seconds, usecs/call,
// calls, [errors,] syscall.
var straceRow = regexp.MustCompile(`^\s*[\d.]+\s+[\d.]+\s+\d+\s+(\d+)\s+(\d*)\s*(accept4?)\s*$`)

// parseStraceSummary reads strace -c's table.
func parseStraceSummary(out string, c *KernelCounts) error {
	for _, line := range strings.Split(out, "\n") {
		m := straceRow.FindStringSubmatch(line)
		if m == nil {
			continue
		}
		calls, _ := strconv.ParseUint(m[1], 10, 64)
		errs, _ := strconv.ParseUint(m[2], 10, 64)
		c.Accept4 += calls
		c.Accept4Failed += errs
	}
	return nil
}
