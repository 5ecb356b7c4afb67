//go:build linux

package worker

import (
	"encoding/json"
	"fmt"
	"os"
	"time"

	"github.com/herd-run/herd/internal/accept"
	"github.com/herd-run/herd/internal/httpd"
	"github.com/herd-run/herd/internal/proto"
)

// Go cannot fork, so a worker is the same binary executed again by the
// master with the same arguments. What makes it a worker is the Spec in its
// environment (proto.WorkerEnv) and the descriptors internal/proto lays out.

// Spec is what the master tells a worker it spawns. The worker takes its
// serving options from here rather than from its own arguments, so the
// master stays the one authority on how its workers accept.
type Spec struct {
	Slot       int      `json:"slot"`
	Workers    int      `json:"workers"`
	Generation int      `json:"gen"`
	Record     int      `json:"record"`
	Listeners  []string `json:"listeners"`
	TLSFrom    int      `json:"tls_from"` // listeners from this index on are TLS
	// TLSPEM is the descriptor of the certificate chain and its key, PEM,
	// read from their files by the master (proto.TLSFiles), or 0: none
	// (the program's tls.Config).
	TLSPEM int `json:"tls_pem,omitempty"`
	// RedirectHTTPS (":443"): plain listeners redirect everything to HTTPS
	// on this port.
	RedirectHTTPS string         `json:"redirect_https,omitempty"`
	Strategy      string         `json:"strategy"`
	Accept        accept.Options `json:"accept"`
	LockFile      string         `json:"lock_file,omitempty"` // flock: the lock the master made
	DrainTimeout  time.Duration  `json:"drain_timeout"`

	MaxRequests       int    `json:"max_requests,omitempty"` // ask to be replaced after this many (+ jitter)
	MaxRequestsJitter int    `json:"max_requests_jitter,omitempty"`
	AccessLog         string `json:"access_log,omitempty"` // path, or "-" for standard output

	// Engine "native" serves StaticRoot with internal/httpd's event loop
	// instead of the program's http.Handler.
	Engine string `json:"engine,omitempty"`
	// Procs is the worker's GOMAXPROCS: 0 for herd's choice (setProcs),
	// negative for the runtime's default.
	Procs      int           `json:"procs,omitempty"`
	StaticRoot string        `json:"static_root,omitempty"`
	Static     httpd.Options `json:"static,omitempty"`
}

// Env renders the spec as an environment entry.
func (s *Spec) Env() string {
	b, err := json.Marshal(s)
	if err != nil {
		panic(err) // a Spec always marshals
	}
	return proto.WorkerEnv + "=" + string(b)
}

// FromEnv returns the spec of this process, or nil if it is not a worker.
func FromEnv() (*Spec, error) {
	v, ok := os.LookupEnv(proto.WorkerEnv)
	if !ok {
		return nil, nil
	}
	var s Spec
	if err := json.Unmarshal([]byte(v), &s); err != nil {
		return nil, fmt.Errorf("worker: bad %s: %w", proto.WorkerEnv, err)
	}
	if len(s.Listeners) == 0 || s.Record < 0 {
		return nil, fmt.Errorf("worker: incomplete %s: %s", proto.WorkerEnv, v)
	}
	return &s, nil
}
