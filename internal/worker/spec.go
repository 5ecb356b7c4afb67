package worker

import (
	"encoding/json"
	"fmt"
	"os"
	"time"

	"github.com/herd-run/herd/internal/proto"
)

// Go cannot fork, so a worker is the same binary executed again by the
// master with the same arguments. What makes it a worker is the Spec in its
// environment (proto.WorkerEnv) and the descriptors internal/proto lays out.

// Spec is what the master tells a worker it spawns. The worker takes its
// serving options from here rather than from its own arguments, so the
// master stays the one authority on how its workers accept.
type Spec struct {
	Slot         int           `json:"slot"`
	Generation   int           `json:"gen"`
	Record       int           `json:"record"`
	Listeners    []string      `json:"listeners"`
	Strategy     string        `json:"strategy"`
	Threads      int           `json:"threads"`
	DrainTimeout time.Duration `json:"drain_timeout"`

	MultiAccept       bool          `json:"multi_accept,omitempty"`
	WorkerConnections int           `json:"worker_connections,omitempty"`
	LockFile          string        `json:"lock_file,omitempty"`
	MutexDelay        time.Duration `json:"accept_mutex_delay,omitempty"`
	ReorderEvery      int           `json:"exclusive_reorder,omitempty"`
	MaxRequests       int           `json:"max_requests,omitempty"` // ask to be replaced after this many (+ jitter)
	MaxRequestsJitter int           `json:"max_requests_jitter,omitempty"`
	AccessLog         string        `json:"access_log,omitempty"` // path, or "-" for standard output

	// Engine "native" serves StaticRoot with internal/httpd's event loop
	// instead of the program's http.Handler.
	Engine         string        `json:"engine,omitempty"`
	StaticRoot     string        `json:"static_root,omitempty"`
	FollowSymlinks bool          `json:"follow_symlinks,omitempty"`
	Autoindex      bool          `json:"autoindex,omitempty"`
	HeaderTimeout  time.Duration `json:"header_timeout,omitempty"`
	IdleTimeout    time.Duration `json:"keepalive_timeout,omitempty"`
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
