//go:build linux

// Command herd is a prefork server runtime: `herd serve DIR` serves static
// files from a master and N worker processes, `herd status` shows which
// worker accepted what.
package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"runtime/debug"
	"strings"
)

// version is set at build time with -ldflags "-X main.version=v1.2.3";
// otherwise the module or VCS version is used.
var version = ""

type command struct {
	name    string
	summary string
	run     func(args []string, stdout, stderr io.Writer) error
}

func commands() []command {
	return []command{
		{"serve", "serve a directory over HTTP with prefork workers", runServe},
		{"status", "print a running master's scoreboard", runStatus},
		{"bench", "run the lab: strategies under load, as a table, JSON and charts", runBench},
		{"doctor", "report what this kernel offers the strategies, and recommend one", runDoctor},
		{"probe", "ask a running master's admin endpoint (/readyz): exit 0 on 200, for health probes", runProbe},
		{"version", "print herd's version", runVersion},
		{"help", "explain a command", runHelp},
	}
}

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

// errUsage marks a mistake in the command line; its message has been
// printed with the usage already.
var errUsage = errors.New("usage")

func run(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		usage(stderr)
		return 2
	}
	name := args[0]
	if name == "-h" || name == "--help" || name == "-help" {
		usage(stdout)
		return 0
	}
	if name == "--version" || name == "-version" || name == "-v" {
		name = "version" // as nginx -v, gunicorn --version
	}
	for _, c := range commands() {
		if c.name == name {
			err := c.run(args[1:], stdout, stderr)
			switch {
			case err == nil, errors.Is(err, flag.ErrHelp):
				return 0
			case errors.Is(err, errUsage):
				return 2
			default:
				fmt.Fprintf(stderr, "herd: %s\n", strings.TrimPrefix(err.Error(), "herd: "))
				return 1
			}
		}
	}
	fmt.Fprintf(stderr, "herd: unknown command %q\n", name)
	usage(stderr)
	return 2
}

func usage(w io.Writer) {
	fmt.Fprintln(w, "herd: a prefork server runtime")
	fmt.Fprintln(w, "\nUsage: herd COMMAND [flags] [args]\n\nCommands:")
	for _, c := range commands() {
		fmt.Fprintf(w, "  %-8s %s\n", c.name, c.summary)
	}
	fmt.Fprintln(w, "\nRun 'herd COMMAND -h' for a command's flags, 'herd help signals' for what the master does with each signal.")
}

func runHelp(args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		usage(stdout)
		return nil
	}
	if args[0] == "signals" {
		printSignals(stdout)
		return nil
	}
	for _, c := range commands() {
		if c.name == args[0] && c.name != "help" {
			return c.run([]string{"-h"}, stdout, stderr)
		}
	}
	fmt.Fprintf(stderr, "herd: no help for %q\n", args[0])
	return errUsage
}

func runVersion(args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("version", "", stderr)
	if _, err := parse(fs, args, 0); err != nil {
		return err
	}
	fmt.Fprintln(stdout, "herd", buildVersion())
	return nil
}

func buildVersion() string {
	if version != "" {
		return version
	}
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return "(unknown)"
	}
	v := bi.Main.Version
	for _, s := range bi.Settings {
		if s.Key == "vcs.revision" && len(s.Value) >= 12 && (v == "" || v == "(devel)") {
			v = "devel-" + s.Value[:12]
		}
	}
	if v == "" {
		v = "(devel)"
	}
	return v + " " + bi.GoVersion
}

// newFlagSet makes a flag set that prints its usage and errors to stderr,
// with a usage line for the command.
func newFlagSet(name, argsUsage string, stderr io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "Usage: herd %s [flags] %s\n\nFlags:\n", name, argsUsage)
		fs.PrintDefaults()
	}
	return fs
}

// parse parses flags and positional arguments in any order (`herd serve
// ./www --workers 4` works as users expect; the standard flag package stops
// at the first positional). It allows at most maxArgs positionals.
func parse(fs *flag.FlagSet, args []string, maxArgs int) ([]string, error) {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				return nil, flag.ErrHelp // the flag package printed the usage
			}
			return nil, errUsage
		}
		args = fs.Args()
		if len(args) == 0 {
			break
		}
		if args[0] == "--" {
			pos = append(pos, args[1:]...)
			break
		}
		pos = append(pos, args[0])
		args = args[1:]
	}
	if len(pos) > maxArgs {
		fmt.Fprintf(fs.Output(), "herd %s: unexpected argument %q\n", fs.Name(), strings.Join(pos[maxArgs:], " "))
		fs.Usage()
		return nil, errUsage
	}
	return pos, nil
}
