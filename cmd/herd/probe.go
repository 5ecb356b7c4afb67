//go:build linux

package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"time"
)

// runProbe is `herd probe`: a health check for places that can run a
// command but cannot reach the admin endpoint, which listens only on
// loopback or a unix socket — a Kubernetes exec probe in the same
// container, a Docker HEALTHCHECK. It exits 0 when the path answers 200.
func runProbe(args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("probe", "[PATH]", stderr)
	admin := fs.String("admin", "127.0.0.1:9090", "the admin endpoint: host:port or unix:PATH")
	timeout := fs.Duration("timeout", 2*time.Second, "give up after this long")
	pos, err := parse(fs, args, 1)
	if err != nil {
		return err
	}
	path := "/readyz"
	if len(pos) == 1 {
		path = pos[0]
	}
	tr := &http.Transport{DisableKeepAlives: true}
	addr := *admin
	if p, ok := strings.CutPrefix(addr, "unix:"); ok || strings.HasPrefix(addr, "/") {
		if !ok {
			p = addr
		}
		tr.DialContext = func(ctx context.Context, _, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "unix", p)
		}
		addr = "admin"
	}
	c := &http.Client{Transport: tr, Timeout: *timeout}
	resp, err := c.Get("http://" + addr + path)
	if err != nil {
		return fmt.Errorf("probe %s%s: %w", *admin, path, err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	fmt.Fprint(stdout, string(body))
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("probe %s%s: %s", *admin, path, resp.Status)
	}
	return nil
}
