//go:build linux

package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"github.com/herd-run/herd/internal/lab"
)

// The peers preset: herd's strategies and the servers they come from, on
// the same load (seed 002's: 8 workers, 4 clients, a new connection per
// request), every row counted by the kernel the same way. The peers run
// through the lab's --command: Apache's prefork MPM (its accept mutex as
// flock and as a pthread mutex), uWSGI (its default, and --thunder-lock),
// nginx (accept_mutex off, which uses EPOLLEXCLUSIVE on Linux 4.5+;
// accept_mutex on; reuseport) and gunicorn's sync workers, each where it
// is installed. bench/lab-peers.sh installs them from Debian.

// peer is one other server: how to start it serving /hello.txt (13 bytes)
// from root on addr with n workers.
type peer struct {
	name    string
	program string // what must be installed
	command func(dir, root, addr string, n int) (string, error)
}

// helloApp is the WSGI application uWSGI and gunicorn serve: the lab's
// 13-byte hello, as the seeds' Python servers answered.
const helloApp = `def app(environ, start_response):
    body = b"Hello, world\n"
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
application = app
`

func writeApp(dir string) (string, error) {
	path := filepath.Join(dir, "hello_app.py")
	return path, os.WriteFile(path, []byte(helloApp), 0o644)
}

func uwsgiPeer(name string, extra ...string) peer {
	return peer{name: name, program: "uwsgi", command: func(dir, _, addr string, n int) (string, error) {
		app, err := writeApp(dir)
		if err != nil {
			return "", err
		}
		args := []string{"uwsgi", "--plugin", "python3", "--http-socket", addr, "--wsgi-file", app,
			"--master", "--processes", fmt.Sprint(n), "--disable-logging", "--die-on-term", "--need-app"}
		return shellJoin(append(args, extra...)), nil
	}}
}

func nginxPeer(name, events, listen string) peer {
	return peer{name: name, program: "nginx", command: func(dir, root, addr string, n int) (string, error) {
		conf := filepath.Join(dir, "nginx-"+strings.ReplaceAll(name, " ", "-")+".conf")
		text := fmt.Sprintf(`daemon off;
master_process on;
worker_processes %d;
pid %s/nginx.pid;
error_log %s/nginx.error.log;
events { worker_connections 1024; %s }
http {
	access_log off;
	sendfile on; tcp_nopush on;
	server { listen %s%s; root %s; }
}
`, n, dir, dir, events, addr, listen, root)
		if err := os.WriteFile(conf, []byte(text), 0o644); err != nil {
			return "", err
		}
		return shellJoin([]string{"nginx", "-c", conf}), nil
	}}
}

// apacheModules is where Debian's apache2-bin keeps the modules the
// prefork peer loads.
const apacheModules = "/usr/lib/apache2/modules"

// apachePeer is Apache's prefork MPM serialising accept with mutex (its
// Mutex directive's mechanism: flock, the origin of herd's flock strategy;
// pthread, a process-shared pthread mutex, the origin of herd's mutex).
// Two Listen lines, because with one prefork on Linux accepts without the
// mutex (SINGLE_LISTEN_UNSERIALIZED_ACCEPT); the second port stays idle.
func apachePeer(mutex string) peer {
	return peer{name: "apache prefork " + mutex, program: "apache2", command: func(dir, root, addr string, n int) (string, error) {
		if _, err := os.Stat(filepath.Join(apacheModules, "mod_mpm_prefork.so")); err != nil {
			return "", fmt.Errorf("apache2's prefork module: %w", err)
		}
		idle, err := freeLoopback()
		if err != nil {
			return "", err
		}
		lock := mutex
		if mutex == "flock" {
			lock = "flock:" + dir
		}
		conf := filepath.Join(dir, "apache-"+mutex+".conf")
		text := fmt.Sprintf(`ServerRoot %[1]s
ServerName 127.0.0.1
LoadModule mpm_prefork_module %[2]s/mod_mpm_prefork.so
LoadModule authz_core_module %[2]s/mod_authz_core.so
Listen %[3]s
Listen %[4]s
PidFile %[1]s/apache-%[5]s.pid
ErrorLog %[1]s/apache-%[5]s.error.log
User nobody
Group nogroup
Mutex %[6]s mpm-accept
StartServers %[7]d
MinSpareServers %[7]d
MaxSpareServers %[7]d
ServerLimit %[7]d
MaxRequestWorkers %[7]d
MaxConnectionsPerChild 0
KeepAlive Off
EnableSendfile On
DocumentRoot %[8]s
<Directory />
	AllowOverride None
</Directory>
<Directory %[8]s>
	Require all granted
</Directory>
`, dir, apacheModules, addr, idle, mutex, lock, n, root)
		if err := os.WriteFile(conf, []byte(text), 0o644); err != nil {
			return "", err
		}
		return shellJoin([]string{"apache2", "-f", conf, "-DFOREGROUND"}), nil
	}}
}

var peers = []peer{
	apachePeer("flock"),
	apachePeer("pthread"),
	uwsgiPeer("uwsgi"),
	uwsgiPeer("uwsgi --thunder-lock", "--thunder-lock"),
	nginxPeer("nginx", "accept_mutex off;", ""),
	nginxPeer("nginx accept_mutex", "accept_mutex on;", ""),
	nginxPeer("nginx reuseport", "accept_mutex off;", " reuseport"),
	{name: "gunicorn", program: "gunicorn", command: func(dir, _, addr string, n int) (string, error) {
		if _, err := writeApp(dir); err != nil {
			return "", err
		}
		return shellJoin([]string{"gunicorn", "--workers", fmt.Sprint(n), "--bind", addr, "--chdir", dir,
			"--worker-class", "sync", "hello_app:app"}), nil
	}},
}

// runPeers is the preset: base's strategies, then every installed peer.
func runPeers(ctx context.Context, base lab.Matrix, log io.Writer) (*lab.Report, error) {
	base.Workers, base.Modes, base.Concurrency = []int{8}, []string{"close"}, []int{4}
	if base.Requests == 0 && base.Duration == 0 {
		base.Requests = 3000
	}
	base.Kernel = true
	rep, err := base.Run(ctx)
	if err != nil {
		return rep, err
	}
	dir, err := os.MkdirTemp("", "herd-peers-")
	if err != nil {
		return rep, err
	}
	defer os.RemoveAll(dir)
	os.Chmod(dir, 0o755) // nginx's workers read the root as nobody
	root := filepath.Join(dir, "www")
	if err := os.Mkdir(root, 0o755); err != nil {
		return rep, err
	}
	if err := os.WriteFile(filepath.Join(root, "hello.txt"), []byte("Hello, world\n"), 0o644); err != nil {
		return rep, err
	}
	for _, p := range peers {
		if _, err := exec.LookPath(p.program); err != nil {
			fmt.Fprintf(log, "peers: %s is not installed; skipping %q (bench/lab-peers.sh installs it)\n", p.program, p.name)
			continue
		}
		addr, err := freeLoopback()
		if err != nil {
			return rep, err
		}
		cmd, err := p.command(dir, root, addr, base.Workers[0])
		if err != nil {
			return rep, err
		}
		m := base
		m.Strategies, m.Command, m.Target, m.Path, m.Peer = []string{p.name}, cmd, addr, "/hello.txt", true
		more, err := m.Run(ctx)
		if more != nil {
			rep.Runs = append(rep.Runs, more.Runs...)
		}
		if err != nil {
			return rep, fmt.Errorf("peer %s: %w", p.name, err)
		}
	}
	rep.Preset = "peers"
	return rep, nil
}

// printPeers sets seed 002's published figures beside the report.
func printPeers(w io.Writer) {
	fmt.Fprintln(w, "\nSeed 002 (4 cores, 8 workers, ab -c4 -n1000, hello world without keep-alive): accept4 calls per connection")
	fmt.Fprintln(w, "  epoll (the herd) 6.884 · EPOLLEXCLUSIVE 1.557; requests/s 15k and 20k+ (compare k:accept4/conn above)")
}

// freeLoopback is a loopback address with a port nothing listens on now.
func freeLoopback() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer l.Close()
	return l.Addr().String(), nil
}

// shellJoin quotes args for sh -c.
func shellJoin(args []string) string {
	q := make([]string, len(args))
	for i, a := range args {
		q[i] = "'" + strings.ReplaceAll(a, "'", `'\''`) + "'"
	}
	return strings.Join(q, " ")
}
