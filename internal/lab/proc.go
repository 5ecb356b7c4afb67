//go:build linux

package lab

import (
	"bufio"
	"fmt"
	"os"
	"strconv"
	"strings"
)

// ProcStats are a process's scheduler counters from /proc.
type ProcStats struct {
	Voluntary   uint64 // context switches the process asked for (it blocked)
	Involuntary uint64 // context switches the scheduler forced
	CPUTicks    uint64 // utime + stime, in clock ticks
}

// clockTick is USER_HZ: the unit of /proc/PID/stat times. It is 100 on
// every Linux architecture Go runs on.
const clockTick = 100

// Sub is s minus earlier, field by field.
func (s ProcStats) Sub(earlier ProcStats) ProcStats {
	return ProcStats{s.Voluntary - earlier.Voluntary, s.Involuntary - earlier.Involuntary, s.CPUTicks - earlier.CPUTicks}
}

// ReadProcStats sums the counters of every thread of pid: a process's
// /proc/PID/status counts only its main thread's context switches.
func ReadProcStats(pid int) (ProcStats, error) {
	var st ProcStats
	tasks, err := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
	if err != nil {
		return st, err
	}
	for _, t := range tasks {
		f, err := os.Open(fmt.Sprintf("/proc/%d/task/%s/status", pid, t.Name()))
		if err != nil {
			continue // the thread exited
		}
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			k, v, ok := strings.Cut(sc.Text(), ":")
			if !ok {
				continue
			}
			n, _ := strconv.ParseUint(strings.TrimSpace(v), 10, 64)
			switch k {
			case "voluntary_ctxt_switches":
				st.Voluntary += n
			case "nonvoluntary_ctxt_switches":
				st.Involuntary += n
			}
		}
		f.Close()
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return st, err
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return st, fmt.Errorf("/proc/%d/stat: unexpected format", pid)
	}
	f := strings.Fields(s[i+1:])
	// After the command: state(0) ppid(1) ... utime(11) stime(12).
	if len(f) > 12 {
		ut, _ := strconv.ParseUint(f[11], 10, 64)
		stt, _ := strconv.ParseUint(f[12], 10, 64)
		st.CPUTicks = ut + stt
	}
	return st, nil
}

// children lists pid's child processes.
func children(pid int) []int {
	var out []int
	tasks, _ := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
	for _, t := range tasks {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%s/children", pid, t.Name()))
		if err != nil {
			continue
		}
		for _, f := range strings.Fields(string(b)) {
			if n, err := strconv.Atoi(f); err == nil {
				out = append(out, n)
			}
		}
	}
	return out
}

// treeStats sums ProcStats over pid and all its descendants, keyed by pid.
func treeStats(pid int) map[int]ProcStats {
	out := map[int]ProcStats{}
	var walk func(int)
	walk = func(p int) {
		if st, err := ReadProcStats(p); err == nil {
			out[p] = st
		}
		for _, c := range children(p) {
			walk(c)
		}
	}
	walk(pid)
	return out
}

// sumSince adds, over the processes alive in both snapshots, the counters'
// growth.
func sumSince(before, after map[int]ProcStats) ProcStats {
	var total ProcStats
	for pid, a := range after {
		if b, ok := before[pid]; ok {
			d := a.Sub(b)
			total.Voluntary += d.Voluntary
			total.Involuntary += d.Involuntary
			total.CPUTicks += d.CPUTicks
		}
	}
	return total
}
