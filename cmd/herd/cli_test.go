package main

import (
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/herd-run/herd/internal/accept"
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
		{"negative workers", []string{"serve", root, "--workers", "-1"}, 1, "herd: workers must be between 1 and 512, not -1"},
		{"too many workers", []string{"serve", root, "--workers", "9999"}, 1, "herd: workers must be between 1 and 512, not 9999"},
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
	for _, arg := range []string{"version", "--version", "-version", "-v"} {
		out, _, code := runHerd(t, arg)
		if code != 0 || !strings.HasPrefix(out, "herd ") {
			t.Errorf("%s: exit %d, %q", arg, code, out)
		}
	}
	out, _, code := runHerd(t, "help")
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
	for _, want := range []string{"EPOLLEXCLUSIVE", "SO_REUSEPORT", "reuseport BPF", "kTLS (TCP_ULP tls)", "tcp_migrate_req", "RLIMIT_NOFILE",
		"lower than --backlog 1000000", "recommended here, and the default: --strategy " + accept.Default()} {
		if !strings.Contains(out, want) {
			t.Errorf("doctor output lacks %q:\n%s", want, out)
		}
	}
}

// Configuration from a TOML file and HERD_* variables; the command line
// wins over the environment, which wins over the file; every mistake is
// one clear error before anything starts.
func TestConfigFileAndEnvironment(t *testing.T) {
	dir := t.TempDir()
	write := func(name, body string) string {
		p := filepath.Join(dir, name)
		must(t, os.WriteFile(p, []byte(body), 0o644))
		return p
	}
	good := write("good.toml", "workers = 3\nlisten = [\"127.0.0.1:0\"]\nstrategy = \"exclusive\"\ndrain-timeout = \"5s\"\n")
	if out, errOut, code := runHerd(t, "serve", dir, "--config", good, "--check"); code != 0 || !strings.Contains(out, "configuration ok") {
		t.Fatalf("good config: exit %d %s %s", code, out, errOut)
	}
	for _, tc := range []struct {
		name, file string
		env        []string
		args       []string
		want       string
	}{
		{"unknown key", "wrokers = 3\n", nil, nil, `unknown key "wrokers"`},
		{"bad value", "workers = \"many\"\n", nil, nil, `key "workers": invalid value "many"`},
		{"bad address", "listen = [\"nonsense\"]\n", nil, nil, `listen "nonsense"`},
		{"unknown strategy", "strategy = \"telepathy\"\n", nil, nil, `unknown accept strategy "telepathy"`},
		{"negative workers", "workers = -1\n", nil, nil, "workers must be between 1 and 512, not -1"},
		{"env beats file", "workers = 3\n", []string{"HERD_WORKERS=-3"}, nil, "workers must be between 1 and 512, not -3"},
		{"flag beats env", "", []string{"HERD_STRATEGY=telepathy"}, []string{"--strategy", "accept", "--workers", "-2"}, "workers must be between 1 and 512, not -2"},
		{"negative threads", "threads = -1\n", nil, nil, "threads must be between 1 and 1024, not -1"},
		{"bad env", "", []string{"HERD_BACKLOG=lots"}, nil, `HERD_BACKLOG="lots": invalid value`},
		{"public admin", "admin = \"0.0.0.0:9000\"\n", nil, nil, "must be a loopback address"},
		{"unknown user", "user = \"nosuchuser\"\n", nil, nil, `user "nosuchuser"`},
		{"group without user", "group = \"nogroup\"\n", nil, nil, "--group needs --user"},
		{"root the user cannot read", "user = \"nobody\"\n", nil, nil, "user nobody cannot read it"},
		{"access log that cannot be created", "access-log = \"/proc/no/such/dir/access.log\"\n", nil, nil, "access log /proc/no/such/dir/access.log: cannot create it"},
		{"bad socket mode", "", nil, []string{"--socket-mode", "999"}, "--socket-mode \"999\""},
		{"unknown socket owner", "socket-owner = \"nosuchuser:nogroup\"\n", nil, nil, `socket owner "nosuchuser:nogroup"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := write(strings.ReplaceAll(tc.name, " ", "_")+".toml", tc.file)
			cmd := exec.Command(os.Args[0], append([]string{"serve", dir, "--config", cfg, "--check"}, tc.args...)...)
			cmd.Env = append(append(os.Environ(), "HERD_TEST_MAIN=1"), tc.env...)
			out, _ := cmd.CombinedOutput()
			if cmd.ProcessState.ExitCode() == 0 || !strings.Contains(string(out), tc.want) {
				t.Errorf("exit %d, output %q; want an error with %q", cmd.ProcessState.ExitCode(), out, tc.want)
			}
		})
	}
}

// The access log has one Common Log Format line per request, in the same
// format from either engine.
func TestAccessLog(t *testing.T) {
	for _, engine := range []string{"native", "nethttp"} {
		t.Run(engine, func(t *testing.T) { testAccessLog(t, engine) })
	}
}

func testAccessLog(t *testing.T, engine string) {
	root, _ := docroot(t)
	logPath := filepath.Join(t.TempDir(), "access.log")
	h := startHerd(t, root, "--workers", "2", "--access-log", logPath, "--engine", engine)
	res := load("http://"+h.addr+"/hello.txt", []byte("hello, herd\n"), 2, 30, 10*time.Second, nil)
	if res.failed != 0 {
		t.Fatal(res.firstErr)
	}
	get(client(), "http://"+h.addr+"/missing")
	h.signal(syscall.SIGQUIT)
	h.waitExit(10 * time.Second)
	b, err := os.ReadFile(logPath)
	must(t, err)
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	if len(lines) != 31 {
		t.Fatalf("%d access log lines for 31 requests:\n%s", len(lines), b)
	}
	line := regexp.MustCompile(`^127\.0\.0\.1 - - \[\d\d/\w{3}/\d{4}:\d\d:\d\d:\d\d [+-]\d{4}\] "GET /hello\.txt HTTP/1\.1" 200 12$`)
	ok := 0
	for _, l := range lines {
		if line.MatchString(l) {
			ok++
		}
	}
	if ok != 30 || !strings.Contains(string(b), `"GET /missing HTTP/1.1" 404`) {
		t.Errorf("%d of 30 lines in Common Log Format; log:\n%s", ok, b)
	}
}
