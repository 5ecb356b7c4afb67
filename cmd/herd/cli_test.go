package main

import (
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// A mistake a user makes gets one line on stderr and a non-zero exit, and
// leaves no process behind.
func TestServeErrors(t *testing.T) {
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	root := t.TempDir()
	file := filepath.Join(root, "file.txt")
	must(t, os.WriteFile(file, []byte("x"), 0o644))
	pidFile := filepath.Join(t.TempDir(), "pid")

	for _, tc := range []struct {
		name string
		args []string
		code int
		want string
	}{
		{"missing root", []string{"serve", "/no/such/dir"}, 1, "herd: root /no/such/dir: no such file or directory"},
		{"root is a file", []string{"serve", file}, 1, "herd: root " + file + ": not a directory"},
		{"busy port", []string{"serve", root, "--pid", pidFile, "--listen", busy.Addr().String()}, 1,
			"herd: listen " + busy.Addr().String() + ": bind: address already in use"},
		{"bad address", []string{"serve", root, "--listen", "nonsense"}, 1, `herd: listen "nonsense": want host:port, unix:PATH or a path`},
		{"unknown strategy", []string{"serve", root, "--strategy", "telepathy"}, 1, `herd: unknown accept strategy "telepathy"`},
		{"zero workers", []string{"serve", root, "--workers", "-1"}, 1, "herd: workers must be between 1 and 512, not -1"},
		{"two roots", []string{"serve", root, root}, 2, "unexpected argument"},
		{"unknown flag", []string{"serve", "--bogus"}, 2, "flag provided but not defined: -bogus"},
		{"unknown command", []string{"frobnicate"}, 2, `unknown command "frobnicate"`},
		{"status without pid", []string{"status"}, 2, "name the master"},
		{"status of a non-master", []string{"status", "1"}, 1, "herd: status: process 1 is not a herd master"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, stderr, code := runHerd(t, tc.args...)
			if code != tc.code {
				t.Errorf("exit %d, want %d; stderr:\n%s", code, tc.code, stderr)
			}
			first := strings.SplitN(stderr, "\n", 2)[0]
			if !strings.Contains(first, tc.want) {
				t.Errorf("first line of stderr %q, want it to contain %q", first, tc.want)
			}
			if tc.code == 1 && strings.Count(strings.TrimSpace(stderr), "\n") != 0 {
				t.Errorf("want one line on stderr, got:\n%s", stderr)
			}
			if strings.Contains(stderr, "goroutine ") {
				t.Errorf("stack trace on stderr:\n%s", stderr)
			}
		})
	}
	if _, err := os.Stat(pidFile); !os.IsNotExist(err) {
		t.Errorf("a failed start left a pid file: %v", err)
	}
}

func TestHelpAndVersion(t *testing.T) {
	out, _, code := runHerd(t, "version")
	if code != 0 || !strings.HasPrefix(out, "herd ") {
		t.Errorf("version: exit %d, %q", code, out)
	}
	out, _, code = runHerd(t, "help")
	if code != 0 || !strings.Contains(out, "serve") || !strings.Contains(out, "status") {
		t.Errorf("help: exit %d, %q", code, out)
	}
	for _, cmd := range []string{"serve", "status", "version"} {
		_, stderr, code := runHerd(t, cmd, "-h")
		if code != 0 || !strings.Contains(stderr, "Usage: herd "+cmd) {
			t.Errorf("%s -h: exit %d, %q", cmd, code, stderr)
		}
	}
	_, stderr, code := runHerd(t, "help", "serve")
	if code != 0 || !strings.Contains(stderr, "-strategy") || !strings.Contains(stderr, "go") {
		t.Errorf("help serve: exit %d, %q", code, stderr)
	}
}

func TestDoctor(t *testing.T) {
	out, errOut, code := runHerd(t, "doctor", "--backlog", "1000000")
	if code != 0 {
		t.Fatalf("doctor: exit %d: %s", code, errOut)
	}
	for _, want := range []string{"EPOLLEXCLUSIVE", "SO_REUSEPORT", "reuseport BPF", "tcp_migrate_req", "RLIMIT_NOFILE",
		"lower than --backlog 1000000", "recommended here: --strategy "} {
		if !strings.Contains(out, want) {
			t.Errorf("doctor output lacks %q:\n%s", want, out)
		}
	}
}
