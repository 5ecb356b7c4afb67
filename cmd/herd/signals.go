//go:build linux

package main

import (
	"fmt"
	"io"
	"regexp"
	"strings"
)

// signals is what the master does with each signal: the one table that
// `herd help signals`, README.md and docs/OPERATING.md show (a test keeps
// the documents equal to it).
var signals = [][2]string{
	{"TERM", "graceful stop: workers stop accepting, finish what they have within --drain-timeout, and exit (what Kubernetes, Docker and systemd send); a second TERM is a fast stop"},
	{"QUIT", "graceful stop, as TERM"},
	{"INT", "fast stop: workers exit at once (Ctrl-C)"},
	{"HUP", "reload: the configuration is read again and a new generation of workers starts; the old one drains once every new worker is ready"},
	{"USR1", "reopen logs: workers reopen --access-log (after logrotate has moved it)"},
	{"USR2", "binary upgrade: a new master from the binary on disk takes over every socket; the old one drains and exits"},
	{"TTIN, TTOU", "one worker more, one fewer"},
}

func printSignals(w io.Writer) {
	fmt.Fprintln(w, "Signals to the master (its pid is in --pid FILE):")
	fmt.Fprintln(w)
	for _, s := range signals {
		fmt.Fprintf(w, "  %-11s %s\n", s[0], s[1])
	}
	fmt.Fprintln(w, "\nWorkers take TERM and QUIT as a graceful stop and INT as a fast one, so a TERM sent to every")
	fmt.Fprintln(w, "process of the service at once (systemd's KillMode=control-group) drains them too.")
}

var flagName = regexp.MustCompile(`--[a-z-]+`)

// signalsMarkdown is the table as README.md and docs/OPERATING.md show it.
func signalsMarkdown() string {
	var b strings.Builder
	b.WriteString("| signal | what the master does |\n|---|---|\n")
	for _, s := range signals {
		fmt.Fprintf(&b, "| %s | %s |\n", s[0], flagName.ReplaceAllString(s[1], "`$0`"))
	}
	return b.String()
}
