//go:build linux

package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"time"

	"github.com/herd-run/herd"
	"github.com/herd-run/herd/internal/lab"
	"golang.org/x/sys/unix"
)

func runBench(args []string, stdout, stderr io.Writer) error {
	flags := newFlagSet("bench", "", stderr)
	var (
		strategies  = flags.String("strategies", strings.Join(herd.Strategies(), ","), "strategies to run, comma-separated")
		workers     = flags.String("workers", "8", "worker counts, comma-separated")
		modes       = flags.String("mode", "close", "close (a connection per request) and/or keepalive, comma-separated")
		concurrency = flags.String("concurrency", "4", "concurrent clients, comma-separated")
		requests    = flags.Int("requests", 1000, "requests per run (0: bounded by --duration)")
		duration    = flags.Duration("duration", 0, "time per run (0: bounded by --requests)")
		warmup      = flags.Int("warmup", 100, "requests before measuring (0: none)")
		rounds      = flags.Int("rounds", 1, "run the whole matrix this many times, one round after another, and print medians")
		listen      = flags.String("listen", "127.0.0.1:0", "the loopback address herd serves on in each run")
		kernel      = flags.Bool("kernel", false, "count accept4 calls and wakeups with the kernel's tracepoints (perf, else strace), for herd and --command alike")
		jsonOut     = flags.String("json", "", "write the report as JSON to this file")
		htmlOut     = flags.String("html", "", "write the report as an HTML page with charts to this file")
		preset      = flags.String("preset", "", "a ready experiment: seed002, or peers (herd's strategies beside Apache prefork, uWSGI, nginx and gunicorn)")
		command     = flags.String("command", "", "serve with this shell command instead of herd (needs --target)")
		target      = flags.String("target", "", "with --command: the loopback address it serves on")
		path        = flags.String("path", "/hello.txt", "with --command: the path to request")
		chaos       = flags.Bool("chaos", false, "soak: run the load for --duration while reloading, upgrading and killing workers")
		reloads     = flags.Int("reloads", 5, "with --chaos: HUP reloads")
		upgrades    = flags.Int("upgrades", 1, "with --chaos: USR2 binary upgrades")
		kills       = flags.Int("kills", 3, "with --chaos: SIGKILLs of workers that hold no connection")
		pidFile     = flags.String("pid-file", "", "with --chaos and --command: the server's pid file")
		serveArgs   listFlag
	)
	flags.Var(&serveArgs, "serve-arg", "an extra flag for herd serve (repeatable), e.g. --serve-arg=--multi-accept")
	if _, err := parse(flags, args, 0); err != nil {
		return err
	}
	m := lab.Matrix{
		Requests: *requests, Duration: *duration, Warmup: *warmup, Rounds: *rounds, ExtraArgs: serveArgs, Listen: *listen, Kernel: *kernel,
		Command: *command, Target: *target, Progress: stderr, Terminal: isTerminal(stderr),
	}
	if *command != "" {
		m.Path = *path
	}
	var err error
	if m.Strategies, err = splitNames(*strategies); err != nil {
		return err
	}
	if m.Workers, err = splitInts("workers", *workers); err != nil {
		return err
	}
	if m.Modes, err = splitNames(*modes); err != nil {
		return err
	}
	if m.Concurrency, err = splitInts("concurrency", *concurrency); err != nil {
		return err
	}
	if *command == "" {
		for _, s := range m.Strategies {
			if !contains(herd.Strategies(), s) {
				return fmt.Errorf("bench: unknown strategy %q (have: %s)", s, strings.Join(herd.Strategies(), ", "))
			}
		}
	}
	if *chaos && *htmlOut != "" {
		return errors.New("bench: --chaos writes no HTML page; leave out --html (--json has its report)")
	}
	// The reports are written last: a path that cannot take them is found
	// now, not after the run it would have cost.
	for _, path := range []string{*jsonOut, *htmlOut} {
		if err := writable(path); err != nil {
			return fmt.Errorf("bench: %w", err)
		}
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, unix.SIGTERM)
	defer stop()

	if *chaos {
		return runChaos(ctx, m, lab.Chaos{
			Load: lab.Load{Duration: *duration}, PIDFile: *pidFile, Nginx: *command != "",
			Reloads: *reloads, Upgrades: *upgrades, Kills: *kills, Log: stderr,
		}, *jsonOut, stdout)
	}

	var rep *lab.Report
	switch *preset {
	case "":
		rep, err = m.Run(ctx)
	case "seed002":
		rep, err = seed002(ctx, m)
	case "peers":
		if *command != "" {
			return errors.New("bench: --preset peers runs its own commands; leave out --command")
		}
		rep, err = runPeers(ctx, m, stderr)
	default:
		return fmt.Errorf("bench: unknown preset %q (have: seed002, peers)", *preset)
	}
	if rep != nil && len(rep.Runs) > 0 {
		rep.WriteTable(stdout)
		rep.WriteSummary(stdout)
		switch *preset {
		case "seed002":
			printSeed002(stdout, rep)
		case "peers":
			printPeers(stdout)
		}
		if werr := writeReports(rep, *jsonOut, *htmlOut); werr != nil && err == nil {
			err = werr
		}
	}
	return err
}

// runChaos soaks one server: the first of --strategies (or the --command),
// the first worker count and concurrency.
func runChaos(ctx context.Context, m lab.Matrix, c lab.Chaos, jsonPath string, stdout io.Writer) error {
	if c.Load.Duration <= 0 {
		c.Load.Duration = 20 * time.Second
	}
	if c.Reloads < 0 || c.Upgrades < 0 || c.Kills < 0 {
		return errors.New("bench: --reloads, --upgrades and --kills cannot be negative")
	}
	cell := lab.Cell{Strategy: m.Strategies[0], Workers: m.Workers[0], Mode: m.Modes[0], Concurrency: m.Concurrency[0]}
	res, err := m.Soak(ctx, cell, c)
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "server %s: %d requests in %.1fs, %d failed %v; %d reloads, %d upgrades, %d kills\n",
		res.Server, res.Requests, res.Seconds, res.Failed, res.ErrorKinds, res.Reloads, res.Upgrades, res.Kills)
	if jsonPath != "" {
		b, _ := json.MarshalIndent(res, "", "  ")
		if err := os.WriteFile(jsonPath, append(b, '\n'), 0o644); err != nil {
			return fmt.Errorf("bench: %w", err)
		}
	}
	return nil
}

// seed002 is the experiment of seed 002: 8 workers, ab -c4, 1000
// hello-world requests without keep-alive, for every strategy; then a
// longer run of each for throughput.
func seed002(ctx context.Context, base lab.Matrix) (*lab.Report, error) {
	count := base
	count.Workers, count.Modes, count.Concurrency = []int{8}, []string{"close"}, []int{4}
	count.Requests, count.Duration = 1000, 0
	rep, err := count.Run(ctx)
	if err != nil {
		return rep, err
	}
	for i := range rep.Runs {
		rep.Runs[i].Phase = "count"
	}
	tput := count
	tput.Requests, tput.Duration = 0, 5*time.Second
	if base.Duration > 0 {
		tput.Duration = base.Duration
	}
	more, err := tput.Run(ctx)
	if more != nil {
		for _, r := range more.Runs {
			r.Phase = "throughput"
			rep.Runs = append(rep.Runs, r)
		}
	}
	rep.Preset = "seed002"
	return rep, err
}

// printSeed002 sets the seed's published figures beside ours.
func printSeed002(w io.Writer, rep *lab.Report) {
	find := func(phase, strategy string) *lab.Run {
		for i, r := range rep.Runs {
			if r.Phase == phase && r.Strategy == strategy {
				return &rep.Runs[i]
			}
		}
		return nil
	}
	fmt.Fprintf(w, "\nSeed 002 (4 cores, 8 workers, ab -c4 -n1000, hello world without keep-alive) beside this machine (%d CPUs, kernel %s):\n", rep.Env.CPUs, rep.Env.Kernel)
	fmt.Fprintf(w, "  %-34s %12s %12s\n", "", "epoll (herd)", "exclusive")
	ep, ex := find("count", "epoll"), find("count", "exclusive")
	fmt.Fprintf(w, "  %-34s %12s %12s\n", "accept4 calls per 1000, seed", "6884", "1557")
	if ep != nil && ex != nil {
		fmt.Fprintf(w, "  %-34s %12.0f %12.0f\n", "accept4 calls per 1000, here", ep.Accept4PerK, ex.Accept4PerK)
		fmt.Fprintf(w, "  %-34s %12.2f %12.2f\n", "context switches per request, here", ep.CtxSwitchesPerRequest, ex.CtxSwitchesPerRequest)
	}
	fmt.Fprintf(w, "  %-34s %12s %12s\n", "requests/s, seed", "15k", "20k+")
	if tp, tx := find("throughput", "epoll"), find("throughput", "exclusive"); tp != nil && tx != nil {
		fmt.Fprintf(w, "  %-34s %12.0f %12.0f\n", "requests/s, here", tp.RPS, tx.RPS)
	}
}

// writable reports why a file could not be written at path ("" is fine),
// leaving an existing file as it is and creating none.
func writable(path string) error {
	if path == "" {
		return nil
	}
	_, statErr := os.Stat(path)
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE, 0o644)
	if err != nil {
		return err
	}
	f.Close()
	if errors.Is(statErr, fs.ErrNotExist) {
		os.Remove(path)
	}
	return nil
}

func writeReports(rep *lab.Report, jsonPath, htmlPath string) error {
	write := func(path string, f func(io.Writer) error) error {
		if path == "" {
			return nil
		}
		out, err := os.Create(path)
		if err != nil {
			return err
		}
		if err := f(out); err != nil {
			out.Close()
			return err
		}
		return out.Close()
	}
	if err := write(jsonPath, rep.WriteJSON); err != nil {
		return fmt.Errorf("bench: %w", err)
	}
	if err := write(htmlPath, rep.WriteHTML); err != nil {
		return fmt.Errorf("bench: %w", err)
	}
	return nil
}

func splitNames(s string) ([]string, error) {
	var out []string
	for _, f := range strings.Split(s, ",") {
		if f = strings.TrimSpace(f); f != "" {
			out = append(out, f)
		}
	}
	if len(out) == 0 {
		return nil, errors.New("bench: empty list")
	}
	return out, nil
}

func splitInts(name, s string) ([]int, error) {
	names, err := splitNames(s)
	if err != nil {
		return nil, fmt.Errorf("bench: --%s is empty", name)
	}
	out := make([]int, len(names))
	for i, f := range names {
		n, err := strconv.Atoi(f)
		if err != nil || n < 1 {
			return nil, fmt.Errorf("bench: --%s: %q is not a positive number", name, f)
		}
		out[i] = n
	}
	return out, nil
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	_, err := unix.IoctlGetTermios(int(f.Fd()), unix.TCGETS)
	return err == nil
}
