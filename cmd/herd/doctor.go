//go:build linux

package main

import (
	"fmt"
	"io"
	"net"
	"os"
	"runtime"
	"strconv"
	"strings"
	"text/tabwriter"

	"github.com/herd-run/herd/internal/accept"
	"github.com/herd-run/herd/internal/master"
	"golang.org/x/sys/unix"
)

// runDoctor reports what this kernel offers the accept strategies, by
// trying each feature on a throwaway loopback socket rather than guessing
// from version numbers, and recommends a strategy.
func runDoctor(args []string, stdout, stderr io.Writer) error {
	flags := newFlagSet("doctor", "", stderr)
	backlog := flags.Int("backlog", 511, "the backlog you intend to use")
	workers := flags.Int("workers", runtime.GOMAXPROCS(0), "the worker count you intend to use (default: the CPUs this process may use)")
	if _, err := parse(flags, args, 0); err != nil {
		return err
	}
	var u unix.Utsname
	unix.Uname(&u)
	tw := tabwriter.NewWriter(stdout, 0, 0, 2, ' ', 0)
	row := func(what, result, note string) { fmt.Fprintf(tw, "%s\t%s\t%s\n", what, result, note) }
	row("kernel", unix.ByteSliceToString(u.Release[:]), fmt.Sprintf("%d CPUs", runtime.NumCPU()))

	exclusive := accept.ProbeExclusive()
	row("EPOLLEXCLUSIVE", yes(exclusive == nil), why(exclusive, "Linux 4.5+: strategy exclusive"))
	reuse := probeReuseport(false)
	row("SO_REUSEPORT", yes(reuse == nil), why(reuse, "Linux 3.9+: strategy reuseport"))
	cbpf := probeReuseport(true)
	row("reuseport BPF", yes(cbpf == nil), why(cbpf, "Linux 4.5+: reuseport can retire a slot without resets"))
	ktls := probeKTLS()
	row("kTLS (TCP_ULP tls)", yes(ktls == nil), why(ktls, "the kernel's TLS record layer; herd's TLS listeners use Go's crypto/tls either way"))
	migrate := readSysctl("net/ipv4/tcp_migrate_req")
	row("tcp_migrate_req", migrate, "1: the kernel moves a closed reuseport socket's queue (Linux 5.14+); herd steers and drains either way")

	var lim unix.Rlimit
	unix.Getrlimit(unix.RLIMIT_NOFILE, &lim)
	row("open files (RLIMIT_NOFILE)", fmt.Sprintf("%d soft, %d hard", lim.Cur, lim.Max),
		fmt.Sprintf("each worker needs one per connection plus ~20; %d workers x 1024 connections want >= 1100 each", *workers))
	somax := readSysctl("net/core/somaxconn")
	note := "caps --backlog"
	if n, err := strconv.Atoi(somax); err == nil && *backlog > n {
		note = fmt.Sprintf("lower than --backlog %d: the kernel will use %d", *backlog, n)
	}
	row("net.core.somaxconn", somax, note)
	tw.Flush()

	// The recommendation is the default, said with its reason.
	rec, because := accept.Default(), "blocking accept4 wakes one waiter on every Linux since 2.6, with no lock"
	if rec == "exclusive" {
		because = "EPOLLEXCLUSIVE with listener re-adding: fewest context switches and even sharing in herd's lab (docs/STRATEGIES.md)"
	}
	fmt.Fprintf(stdout, "\nrecommended here, and the default: --strategy %s (%s)\n", rec, because)
	return nil
}

func yes(ok bool) string {
	if ok {
		return "yes"
	}
	return "no"
}

func why(err error, note string) string {
	if err != nil {
		return err.Error()
	}
	return note
}

func readSysctl(name string) string {
	b, err := os.ReadFile("/proc/sys/" + name)
	if err != nil {
		return "unknown"
	}
	return strings.TrimSpace(string(b))
}

func loopbackListener(reusePort bool) (int, error) {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return -1, err
	}
	if reusePort {
		if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_REUSEPORT, 1); err != nil {
			unix.Close(fd)
			return -1, err
		}
	}
	if err := unix.Bind(fd, &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		unix.Close(fd)
		return -1, err
	}
	if err := unix.Listen(fd, 1); err != nil {
		unix.Close(fd)
		return -1, err
	}
	return fd, nil
}

func probeReuseport(withBPF bool) error {
	fd, err := loopbackListener(true)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	if !withBPF {
		return nil
	}
	return master.AttachSteering(fd, 1)
}

// probeKTLS asks the kernel for its TLS upper-layer protocol on a connected
// loopback socket, as a kTLS server would (setsockopt TCP_ULP "tls"): it
// needs the tls module (CONFIG_TLS).
func probeKTLS() error {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	defer l.Close()
	c, err := net.Dial("tcp", l.Addr().String())
	if err != nil {
		return err
	}
	defer c.Close()
	rc, err := c.(*net.TCPConn).SyscallConn()
	if err != nil {
		return err
	}
	var serr error
	rc.Control(func(fd uintptr) { serr = unix.SetsockoptString(int(fd), unix.SOL_TCP, unix.TCP_ULP, "tls") })
	return serr
}
