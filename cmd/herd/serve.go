//go:build linux

package main

import (
	"embed"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net/http"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/herd-run/herd"
	"github.com/herd-run/herd/internal/accept"
	"github.com/herd-run/herd/internal/httpd"
)

//go:embed www
var defaultRoot embed.FS

// listFlag collects a repeatable flag.
type listFlag []string

func (l *listFlag) String() string     { return strings.Join(*l, ",") }
func (l *listFlag) Set(v string) error { *l = append(*l, v); return nil }

func runServe(args []string, stdout, stderr io.Writer) error {
	srv, check, builtin, err := buildServer(args, stderr)
	if err != nil {
		return err
	}
	if check {
		if err := srv.Check(); err != nil {
			return err
		}
		fmt.Fprintln(stdout, "herd: configuration ok")
		return nil
	}
	// HUP reads the command line, the environment and the file again.
	srv.Reconfigure = func() (*herd.Server, error) {
		next, _, _, err := buildServer(args, io.Discard)
		return next, err
	}
	if !herd.IsWorker() && builtin {
		srv.Logger.Info("no ROOT given: serving the built-in page")
	}
	return srv.ListenAndServe()
}

// buildServer makes herd serve's command line, HERD_* variables and
// --config file into a Server: at start, and again on HUP.
func buildServer(args []string, stderr io.Writer) (srv *herd.Server, check, builtin bool, err error) {
	srv = new(herd.Server)
	flags := newFlagSet("serve", "[ROOT]", stderr)
	var (
		listen    listFlag
		tlsListen listFlag
		static    httpd.Options
		logLevel  = flags.String("log-level", "info", "log level: debug, info, warn or error")
		logFormat = flags.String("log-format", "text", "log format: text or json")
		config    = flags.String("config", "", "read flags from this TOML file (keys are flag names); HERD_<FLAG> environment variables too")
		checkOnly = flags.Bool("check", false, "check the configuration and exit")
		engine    = flags.String("engine", "native", "native (herd's own epoll loop, sendfile) or nethttp (net/http)")
		headerTO  = flags.Duration("header-timeout", 10*time.Second, "a request head must arrive whole within this (408)")
		sockMode  = flags.String("socket-mode", "", "permissions of the unix sockets herd creates, in octal (0660)")
		idleTO    = flags.Duration("keepalive-timeout", 75*time.Second, "how long a keep-alive connection may wait for its next request")
	)
	flags.Var(&listen, "listen", "address to listen on: host:port, unix:PATH (repeatable; default :8080)")
	flags.Var(&tlsListen, "tls-listen", "address to serve HTTPS on, beside --listen (repeatable): host:port")
	flags.StringVar(&srv.TLSCertFile, "tls-cert", "", "TLS certificate chain (PEM), re-read on HUP")
	flags.StringVar(&srv.TLSKeyFile, "tls-key", "", "TLS private key (PEM) of --tls-cert")
	flags.BoolVar(&srv.RedirectHTTPS, "redirect-https", false, "plain listeners redirect every request to HTTPS on the first --tls-listen port")
	flags.IntVar(&srv.Workers, "workers", 0, "worker processes (0: one per CPU this process may use, its cgroup quota included)")
	flags.StringVar(&srv.Strategy, "strategy", "", "accept strategy: "+strings.Join(herd.Strategies(), ", ")+" (default: exclusive, or accept before Linux 4.5)")
	flags.IntVar(&srv.Threads, "threads", 1, "accepting threads per worker")
	flags.IntVar(&srv.Backlog, "backlog", 511, "listen backlog (capped by net.core.somaxconn)")
	flags.DurationVar(&srv.DeferAccept, "defer-accept", time.Second, "TCP_DEFER_ACCEPT: queue a connection once its request arrives, or after this long (-1s: off)")
	flags.DurationVar(&srv.DrainTimeout, "drain-timeout", 30*time.Second, "how long stopping workers may finish requests")
	flags.DurationVar(&srv.ReadyTimeout, "ready-timeout", 30*time.Second, "how long new workers may take to be ready")
	flags.DurationVar(&srv.ShutdownDelay, "shutdown-delay", 0, "on a graceful stop, answer /readyz 503 and serve on this long before draining (load balancers, Kubernetes)")
	flags.StringVar(&srv.PIDFile, "pid", "", "write the master's pid to this file")
	flags.StringVar(&srv.AccessLog, "access-log", "", "log each request to this file in Common Log Format (- for stdout)")
	flags.StringVar(&srv.User, "user", "", "run workers as this user (name or uid); the master binds as whoever starts it")
	flags.StringVar(&srv.Group, "group", "", "run workers with this group (default: the user's groups)")
	flags.StringVar(&srv.SocketOwner, "socket-owner", "", "owner of the unix sockets herd creates: user, user:group or :group")
	flags.StringVar(&srv.Admin, "admin", "", "serve /metrics, /status, /healthz, /readyz here (loopback or unix:PATH)")
	flags.BoolVar(&srv.MultiAccept, "multi-accept", false, "epoll, exclusive, nginx: accept until EAGAIN on each wakeup")
	flags.IntVar(&srv.WorkerConnections, "worker-connections", 1024, "connections per worker (nginx's accept_disabled, fdpass's limit)")
	flags.DurationVar(&srv.AcceptMutexDelay, "accept-mutex-delay", 500*time.Millisecond, "nginx: how long a worker that lost the accept mutex waits")
	flags.DurationVar(&srv.WorkerTimeout, "worker-timeout", 30*time.Second, "kill and replace a worker silent this long (-1s: never)")
	flags.IntVar(&srv.MaxRequests, "max-requests", 0, "replace a worker after this many requests (0: never)")
	flags.IntVar(&srv.MaxRequestsJitter, "max-requests-jitter", 0, "plus up to this many more, at random per worker")
	flags.IntVar(&srv.ExclusiveReorder, "exclusive-reorder", 16, "exclusive: re-add the listener every N accepts (-1: never)")
	flags.BoolVar(&static.FollowSymlinks, "follow-symlinks", false, "serve symlinks that point outside ROOT")
	flags.BoolVar(&static.Autoindex, "autoindex", false, "list directories that have no index.html")
	pos, err := parse(flags, args, 1)
	if err != nil {
		return nil, false, false, err
	}
	if err := applyDefaults(flags, *config); err != nil {
		return nil, false, false, err
	}
	var level slog.Level
	if err := level.UnmarshalText([]byte(*logLevel)); err != nil {
		return nil, false, false, fmt.Errorf("--log-level %q: want debug, info, warn or error", *logLevel)
	}
	hopts := &slog.HandlerOptions{Level: level}
	switch *logFormat {
	case "text":
		srv.Logger = slog.New(slog.NewTextHandler(stderr, hopts))
	case "json":
		srv.Logger = slog.New(slog.NewJSONHandler(stderr, hopts))
	default:
		return nil, false, false, fmt.Errorf("--log-format %q: want text or json", *logFormat)
	}
	srv.Listen, srv.TLSListen = listen, tlsListen
	if *sockMode != "" {
		mode, err := strconv.ParseUint(*sockMode, 8, 32)
		if err != nil {
			return nil, false, false, fmt.Errorf("--socket-mode %q: want an octal mode such as 0660", *sockMode)
		}
		srv.SocketMode = os.FileMode(mode)
	}

	switch *engine {
	case "native", "nethttp":
	default:
		return nil, false, false, fmt.Errorf("--engine %q: want native or nethttp", *engine)
	}
	if len(pos) == 0 {
		*engine = "nethttp" // the built-in page is embedded in the binary: net/http serves it
	}
	if len(pos) == 1 {
		srv.Handler, err = httpd.Static(pos[0], static) // checks the root either way
		if err != nil {
			return nil, false, false, err
		}
		if *engine == "native" {
			srv.Static = &herd.StaticFiles{Root: pos[0], FollowSymlinks: static.FollowSymlinks, Autoindex: static.Autoindex,
				HeaderTimeout: *headerTO, IdleTimeout: *idleTO}
		}
	} else {
		sub, _ := fs.Sub(defaultRoot, "www")
		srv.Handler = httpd.StaticFS(http.FS(sub), static)
	}
	if srv.Strategy == "" && srv.Static == nil {
		// herd serve's default is the same for both engines (the library
		// picks reuseport for a Handler: see herd.Server.Strategy).
		srv.Strategy = accept.Default()
	}
	srv.ConfigureServer = func(s *http.Server) {
		s.ReadHeaderTimeout = *headerTO
		s.IdleTimeout = *idleTO // nginx's keepalive_timeout is 75s too
	}
	return srv, *checkOnly, len(pos) == 0, nil
}
