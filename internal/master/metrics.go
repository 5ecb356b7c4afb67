//go:build linux

package master

import (
	"bytes"
	"io"
	"maps"
	"os"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/herd-run/herd/internal/proto"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"golang.org/x/sys/unix"
)

// The program's own metrics live in each worker's registry (a counter of
// a handler is N counters in N processes). On every scrape of /metrics
// the master asks each live worker for them over its control socket —
// passing a pipe for the answer, whatever its size — and labels each
// series with the worker's slot (herd_slot). Labelled, not merged: the
// master cannot add two workers' counters correctly, since a worker
// replaced by a reload starts from zero, while PromQL's sum by (...) of
// rate() over the slots does it right, resets included. gunicorn needs
// statsd for this, and Python's client its multiprocess mode.

// live is the workers that may be asked, kept for the admin endpoint's
// goroutines (the loop owns m.procs).
type live struct {
	mu    sync.Mutex
	procs map[*proc]int // → slot
	seq   uint64
}

func (l *live) add(p *proc) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.procs == nil {
		l.procs = map[*proc]int{}
	}
	l.procs[p] = p.slot
}

func (l *live) remove(p *proc) {
	l.mu.Lock()
	defer l.mu.Unlock()
	delete(l.procs, p)
}

// gatherTimeout bounds how long a scrape waits for a worker.
const gatherTimeout = time.Second

// gatherWorkers asks every live worker for its metrics, all at once, and
// merges the families, each series labelled with its worker's slot.
func (m *Master) gatherWorkers() ([]*dto.MetricFamily, error) {
	type ask struct {
		p    *proc
		slot int
		seq  uint64
	}
	m.live.mu.Lock()
	var asks []ask
	for p, slot := range m.live.procs {
		m.live.seq++
		asks = append(asks, ask{p, slot, m.live.seq})
	}
	m.live.mu.Unlock()
	results := make([]map[string]*dto.MetricFamily, len(asks))
	var wg sync.WaitGroup
	for i, a := range asks {
		wg.Add(1)
		go func() {
			defer wg.Done()
			results[i] = gatherOne(a.p, a.seq, strconv.Itoa(a.slot))
		}()
	}
	wg.Wait()
	merged := map[string]*dto.MetricFamily{}
	for _, r := range results {
		for name, f := range r {
			switch have, ok := merged[name]; {
			case !ok:
				merged[name] = f
			case have.GetType() == f.GetType():
				have.Metric = append(have.Metric, f.Metric...)
			}
		}
	}
	out := make([]*dto.MetricFamily, 0, len(merged))
	for _, name := range slices.Sorted(maps.Keys(merged)) {
		out = append(out, merged[name])
	}
	return out, nil
}

// gatherOne asks one worker, and labels what it answers with its slot;
// nil if it does not answer in time or has no metrics.
func gatherOne(p *proc, seq uint64, slot string) map[string]*dto.MetricFamily {
	var fds [2]int
	if err := unix.Pipe2(fds[:], unix.O_CLOEXEC|unix.O_NONBLOCK); err != nil {
		return nil
	}
	r := os.NewFile(uintptr(fds[0]), "metrics")
	defer r.Close()
	err := control(p.ctrl, func(cfd int) error {
		return unix.Sendmsg(cfd, proto.Msg{Kind: proto.Gather, Seq: seq}.Encode(), unix.UnixRights(fds[1]), nil, unix.MSG_NOSIGNAL)
	})
	unix.Close(fds[1])
	if err != nil {
		return nil
	}
	r.SetReadDeadline(time.Now().Add(gatherTimeout))
	b, err := io.ReadAll(io.LimitReader(r, 16<<20))
	if err != nil || len(b) == 0 {
		return nil
	}
	parser := expfmt.NewTextParser(model.UTF8Validation)
	families, err := parser.TextToMetricFamilies(bytes.NewReader(b))
	if err != nil {
		return nil
	}
	name, value := "herd_slot", slot
	for _, f := range families {
		for _, m := range f.Metric {
			m.Label = append(m.Label, &dto.LabelPair{Name: &name, Value: &value})
		}
	}
	return families
}
