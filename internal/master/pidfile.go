//go:build linux

package master

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// writePIDFile writes this process's pid to path atomically (a temporary
// file renamed into place), so a reader never sees a half-written number.
func writePIDFile(path string) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), ".herd-pid-*")
	if err != nil {
		return fmt.Errorf("pid file: %w", err)
	}
	_, err = fmt.Fprintf(tmp, "%d\n", os.Getpid())
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Chmod(tmp.Name(), 0o644)
	}
	if err == nil {
		err = os.Rename(tmp.Name(), path)
	}
	if err != nil {
		os.Remove(tmp.Name())
		return fmt.Errorf("pid file %s: %w", path, err)
	}
	return nil
}

// removePIDFile removes path if it still names this process: a newer master
// may have taken it over.
func removePIDFile(path string) {
	if pid, err := ReadPIDFile(path); err == nil && pid == os.Getpid() {
		os.Remove(path)
	}
}

// ReadPIDFile reads the pid a master wrote.
func ReadPIDFile(path string) (int, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, err
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || pid <= 0 {
		return 0, fmt.Errorf("pid file %s: not a pid: %q", path, strings.TrimSpace(string(b)))
	}
	return pid, nil
}
