//go:build linux

package shm

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// ScoreboardName is the name the master gives its scoreboard's memfd; the kernel
// shows it as the target of the descriptor's /proc link.
const ScoreboardName = "herd-scoreboard"

// OpenScoreboardOf maps, read-only, the scoreboard of the running master
// pid by opening its memfd through /proc/PID/fd. This needs the same rights
// as ptrace-attaching to the master (the same user, or root): the same
// people who could signal it.
func OpenScoreboardOf(pid int) (*Region, *Scoreboard, error) {
	dir := fmt.Sprintf("/proc/%d/fd", pid)
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, nil, fmt.Errorf("no process %d to read: %w", pid, err)
	}
	for _, e := range ents {
		p := filepath.Join(dir, e.Name())
		target, err := os.Readlink(p)
		if err != nil || !strings.HasPrefix(target, "/memfd:"+ScoreboardName) {
			continue
		}
		f, err := os.Open(p)
		if err != nil {
			return nil, nil, fmt.Errorf("open scoreboard of %d: %w", pid, err)
		}
		r, err := Open(f, false)
		if err != nil {
			return nil, nil, err
		}
		b, err := AttachScoreboard(r.Bytes())
		if err != nil {
			r.Close()
			return nil, nil, err
		}
		return r, b, nil
	}
	return nil, nil, fmt.Errorf("process %d is not a herd master (no scoreboard)", pid)
}
