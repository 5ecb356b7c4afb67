//go:build linux

package main

import (
	"encoding/json"
	"fmt"
	"io"
	"strconv"
	"text/tabwriter"
	"time"

	"github.com/herd-run/herd/internal/master"
	"github.com/herd-run/herd/internal/shm"
)

func runStatus(args []string, stdout, stderr io.Writer) error {
	flags := newFlagSet("status", "[MASTER_PID]", stderr)
	pidFile := flags.String("pid", "", "read the master's pid from this file")
	asJSON := flags.Bool("json", false, "print JSON instead of a table")
	pos, err := parse(flags, args, 1)
	if err != nil {
		return err
	}
	var pid int
	switch {
	case len(pos) == 1:
		if pid, err = strconv.Atoi(pos[0]); err != nil || pid <= 0 {
			return fmt.Errorf("status: %q is not a pid", pos[0])
		}
	case *pidFile != "":
		if pid, err = master.ReadPIDFile(*pidFile); err != nil {
			return fmt.Errorf("status: %w", err)
		}
	default:
		fmt.Fprintln(stderr, "herd status: name the master: --pid FILE or its pid")
		flags.Usage()
		return errUsage
	}
	region, board, err := shm.OpenScoreboardOf(pid)
	if err != nil {
		return fmt.Errorf("status: %w", err)
	}
	defer region.Close()
	snap := board.Snapshot()
	if *asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(snap)
	}
	printStatus(stdout, snap, time.Now())
	return nil
}

func printStatus(w io.Writer, s shm.Snapshot, now time.Time) {
	fmt.Fprintf(w, "master %d  generation %d  workers %d  reloads %d  restarts %d\n\n",
		s.MasterPID, s.Generation, s.Workers, s.Reloads, s.Restarts)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "slot\tgen\tpid\tstate\tage\tbeat\taccepts\twakeups\tspurious\ttimeouts\tactive\trequests\tbytes out\t")
	ago := func(ns int64) string {
		if ns <= 0 {
			return "-"
		}
		return now.Sub(time.Unix(0, ns)).Truncate(time.Second).String()
	}
	for _, r := range s.Live {
		fmt.Fprintf(tw, "%d\t%d\t%d\t%s\t%s\t%s\t%d\t%d\t%d\t%d\t%d\t%d\t%d\t\n",
			r.Slot, r.Generation, r.PID, r.State, ago(r.Started), ago(r.Heartbeat),
			r.Accepts, r.Wakeups, r.Spurious, r.Timeouts, r.Active, r.Requests, r.BytesOut)
	}
	t := s.Total
	fmt.Fprintf(tw, "total\t\t\t\t\t\t%d\t%d\t%d\t%d\t%d\t%d\t%d\t\n",
		t.Accepts, t.Wakeups, t.Spurious, t.Timeouts, t.Active, t.Requests, t.BytesOut)
	tw.Flush()
}
