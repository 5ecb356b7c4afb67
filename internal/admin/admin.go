//go:build linux

// Package admin is the master's operator endpoint (--admin ADDR):
//
//	/metrics  Prometheus text format: the scoreboard as metrics, and the
//	          master's Go process metrics
//	/status   the scoreboard, as JSON (Accept: application/json or
//	          ?format=json) or as a small HTML page, like Apache's server-status
//	/healthz  200 while the master runs
//	/readyz   200 only when every slot has a ready worker of the current
//	          generation (503 during a reload until the new generation is up)
//
// It only reads: nothing here changes the server.
package admin

import (
	"encoding/json"
	"fmt"
	"html/template"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/herd-run/herd/internal/shm"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	dto "github.com/prometheus/client_model/go"
	"golang.org/x/net/netutil"
)

// The endpoint runs in the master, whose descriptors are the service's:
// a local client that opens connections and sends nothing must not pin
// them. So every connection has a deadline for its request head and
// between requests, an answer must be taken within WriteTimeout, and at
// most MaxConns are served at once; more wait in the listen backlog,
// costing the master nothing, until one of those is done.
const (
	ReadHeaderTimeout = 5 * time.Second
	ReadTimeout       = 10 * time.Second
	WriteTimeout      = 30 * time.Second
	IdleTimeout       = 30 * time.Second
	MaxConns          = 32
)

// An Endpoint serves the admin handler on a listener (Start) until Stop.
type Endpoint struct {
	srv    *http.Server
	l      net.Listener
	served chan struct{} // closed when Serve has returned
	open   atomic.Int64  // connections accepted and not yet closed
}

// Start serves h on l, with the timeouts above and at most MaxConns
// connections at once (more wait in the backlog).
func Start(l net.Listener, h http.Handler) *Endpoint {
	e := &Endpoint{l: l, served: make(chan struct{})}
	e.srv = &http.Server{Handler: h, ReadHeaderTimeout: ReadHeaderTimeout, ReadTimeout: ReadTimeout,
		WriteTimeout: WriteTimeout, IdleTimeout: IdleTimeout, MaxHeaderBytes: 16 << 10,
		ConnState: func(_ net.Conn, st http.ConnState) {
			switch st {
			case http.StateNew:
				e.open.Add(1)
			case http.StateClosed, http.StateHijacked:
				e.open.Add(-1)
			}
		}}
	go func() {
		defer close(e.served)
		e.srv.Serve(netutil.LimitListener(l, MaxConns))
	}()
	return e
}

// Stop stops accepting and answers what was accepted: each connection the
// endpoint took before Stop has its request read and answered, without
// keep-alive, for at most timeout in all; what is left then is closed.
//
// http.Server.Shutdown is not that: a connection whose request it has not
// read when Shutdown begins is closed unanswered (net/http's conn.serve
// returns once the server is shutting down), and the client reads EOF.
// Across an upgrade the old master closes its listener and stops a moment
// after taking a connection whose request was still on its way: a health
// check, failed for nothing, since the new master answers on the same
// socket. (A worker's net/http engine drains around the same trap:
// internal/worker/nethttp.go.) The listener may have been closed already
// (the master closes it when an upgrade hands over).
func (e *Endpoint) Stop(timeout time.Duration) {
	deadline := time.Now().Add(timeout)
	e.l.Close()
	select {
	case <-e.served: // no connection is accepted, or counted, after this
	case <-time.After(timeout):
	}
	e.srv.SetKeepAlivesEnabled(false) // and closes the idle ones
	for e.open.Load() > 0 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	e.srv.Close()
}

// Source is what the endpoint reads from the master.
type Source interface {
	Snapshot() shm.Snapshot
	Strategy() string // the accept strategy the workers use now (a reload may change it)
	Ready() bool      // every slot has a ready worker that is not stopping
	// Workers gathers the program's own metrics from every live worker,
	// each series labelled with its worker's slot (herd_slot).
	Workers() ([]*dto.MetricFamily, error)
}

// workers adapts Source.Workers to a prometheus.Gatherer.
type workers struct{ src Source }

func (w workers) Gather() ([]*dto.MetricFamily, error) { return w.src.Workers() }

// Handler serves the endpoint.
func Handler(src Source) http.Handler {
	reg := prometheus.NewRegistry()
	reg.MustRegister(
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		&collector{src: src},
	)
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(prometheus.Gatherers{reg, workers{src}}, promhttp.HandlerOpts{}))
	mux.HandleFunc("GET /status", func(w http.ResponseWriter, r *http.Request) {
		snap := src.Snapshot()
		if r.URL.Query().Get("format") == "json" || strings.Contains(r.Header.Get("Accept"), "application/json") {
			w.Header().Set("Content-Type", "application/json")
			enc := json.NewEncoder(w)
			enc.SetIndent("", "  ")
			enc.Encode(snap)
			return
		}
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		statusPage.Execute(w, struct {
			S        shm.Snapshot
			Strategy string
			Now      time.Time
		}{snap, src.Strategy(), time.Now()})
	})
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintln(w, "ok")
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		if !src.Ready() {
			http.Error(w, "not ready", http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ready")
	})
	return mux
}

// collector turns a scoreboard snapshot into metrics at scrape time.
type collector struct{ src Source }

// The metrics follow Prometheus's conventions: base units last (seconds,
// bytes), counters end in _total, and no label takes a value that changes
// with every reload or recycle — workers are labelled by slot, which stays,
// never by pid or generation. A slot's counters restart from zero when its
// worker is replaced (rate() takes that as a counter reset); the herd_*
// totals include workers that have exited and never go back.
var (
	slotLabel = []string{"slot"}
	perSlot   = map[string]*prometheus.Desc{
		"accepts":  prometheus.NewDesc("herd_worker_accepts_total", "Connections accepted by the slot's worker.", slotLabel, nil),
		"wakeups":  prometheus.NewDesc("herd_worker_wakeups_total", "Returns from the call the slot's worker waits for connections in.", slotLabel, nil),
		"spurious": prometheus.NewDesc("herd_worker_spurious_wakeups_total", "Wakeups of the slot's worker that found nothing to accept.", slotLabel, nil),
		"requests": prometheus.NewDesc("herd_worker_requests_total", "HTTP requests answered by the slot's worker.", slotLabel, nil),
		"bytes":    prometheus.NewDesc("herd_worker_sent_bytes_total", "Bytes written to clients by the slot's worker.", slotLabel, nil),
		"active":   prometheus.NewDesc("herd_worker_connections", "Connections the slot's worker holds now.", slotLabel, nil),
	}
	totals = map[string]*prometheus.Desc{
		"accepts":   prometheus.NewDesc("herd_accepts_total", "Connections accepted, by all workers past and present.", nil, nil),
		"wakeups":   prometheus.NewDesc("herd_wakeups_total", "Wakeups, by all workers past and present.", nil, nil),
		"spurious":  prometheus.NewDesc("herd_spurious_wakeups_total", "Spurious wakeups, by all workers past and present.", nil, nil),
		"timeouts":  prometheus.NewDesc("herd_accept_timeouts_total", "Returns of the accept wait because a bound expired.", nil, nil),
		"requests":  prometheus.NewDesc("herd_requests_total", "HTTP requests answered, by all workers past and present.", nil, nil),
		"bytes":     prometheus.NewDesc("herd_sent_bytes_total", "Bytes written to clients, by all workers past and present.", nil, nil),
		"responses": prometheus.NewDesc("herd_responses_total", "Answers by status class, by all workers past and present.", []string{"class"}, nil),
		"duration":  prometheus.NewDesc("herd_request_duration_seconds", "Time from a request read to its answer's last byte sent.", nil, nil),
		"active":    prometheus.NewDesc("herd_connections", "Connections held by workers now.", nil, nil),
		"restarts":  prometheus.NewDesc("herd_worker_restarts_total", "Workers started again after an unplanned exit.", nil, nil),
		"reloads":   prometheus.NewDesc("herd_reloads_total", "Completed reloads (HUP).", nil, nil),
		"gen":       prometheus.NewDesc("herd_generation", "The current worker generation.", nil, nil),
		"workers":   prometheus.NewDesc("herd_workers_wanted", "Worker slots wanted.", nil, nil),
		"live":      prometheus.NewDesc("herd_workers", "Worker processes by state.", []string{"state"}, nil),
		"info":      prometheus.NewDesc("herd_info", "The accept strategy in use.", []string{"strategy"}, nil),
	}
)

func (c *collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range perSlot {
		ch <- d
	}
	for _, d := range totals {
		ch <- d
	}
}

func (c *collector) Collect(ch chan<- prometheus.Metric) {
	s := c.src.Snapshot()
	counter := func(d *prometheus.Desc, v uint64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), labels...)
	}
	gauge := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
	}
	states := map[string]int{"starting": 0, "ready": 0, "stopping": 0}
	slots := map[int]*shm.WorkerStat{} // the live workers of a slot, added up
	for _, w := range s.Live {
		states[w.State]++
		t := slots[w.Slot]
		if t == nil {
			t = &shm.WorkerStat{}
			slots[w.Slot] = t
		}
		t.Add(w)
	}
	for slot, w := range slots {
		l := strconv.Itoa(slot)
		counter(perSlot["accepts"], w.Accepts, l)
		counter(perSlot["wakeups"], w.Wakeups, l)
		counter(perSlot["spurious"], w.Spurious, l)
		counter(perSlot["requests"], w.Requests, l)
		counter(perSlot["bytes"], w.BytesOut, l)
		gauge(perSlot["active"], float64(w.Active), l)
	}
	t := s.Total
	counter(totals["accepts"], t.Accepts)
	counter(totals["wakeups"], t.Wakeups)
	counter(totals["spurious"], t.Spurious)
	counter(totals["timeouts"], t.Timeouts)
	counter(totals["requests"], t.Requests)
	counter(totals["bytes"], t.BytesOut)
	for i, n := range t.Statuses {
		counter(totals["responses"], n, strconv.Itoa(i+1)+"xx")
	}
	buckets := make(map[float64]uint64, len(shm.DurationBuckets))
	var cum, count uint64
	for i, le := range shm.DurationBuckets {
		cum += t.DurationBuckets[i]
		buckets[le] = cum
	}
	for _, n := range t.Statuses {
		count += n
	}
	count = max(count, cum) // +Inf: every answer counted
	ch <- prometheus.MustNewConstHistogram(totals["duration"], count, float64(t.DurationSum)/1e9, buckets)
	gauge(totals["active"], float64(t.Active))
	counter(totals["restarts"], s.Restarts)
	counter(totals["reloads"], s.Reloads)
	gauge(totals["gen"], float64(s.Generation))
	gauge(totals["workers"], float64(s.Workers))
	for state, n := range states {
		gauge(totals["live"], float64(n), state)
	}
	gauge(totals["info"], 1, c.src.Strategy())
}

var statusPage = template.Must(template.New("status").Funcs(template.FuncMap{
	"ago": func(now time.Time, ns int64) string {
		if ns <= 0 {
			return "-"
		}
		return now.Sub(time.Unix(0, ns)).Truncate(time.Second).String()
	},
}).Parse(`<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>herd status</title>
<style>body{font-family:system-ui,sans-serif;margin:24px}table{border-collapse:collapse;font-size:13px}
th,td{border:1px solid #ccc;padding:3px 8px;text-align:right}th{background:#f3f3f3}</style></head><body>
<h1>herd status</h1>
<p>master {{.S.MasterPID}} · strategy {{.Strategy}} · generation {{.S.Generation}} · {{.S.Workers}} workers wanted ·
{{.S.Reloads}} reloads · {{.S.Restarts}} restarts{{if .S.MutexHolder}} · accept mutex held by {{.S.MutexHolder}}{{end}}</p>
<table><tr><th>slot</th><th>gen</th><th>pid</th><th>state</th><th>age</th><th>heartbeat</th><th>accepts</th><th>wakeups</th>
<th>spurious</th><th>timeouts</th><th>active</th><th>requests</th><th>bytes out</th></tr>
{{range .S.Live}}<tr><td>{{.Slot}}</td><td>{{.Generation}}</td><td>{{.PID}}</td><td>{{.State}}</td><td>{{ago $.Now .Started}}</td>
<td>{{ago $.Now .Heartbeat}}</td><td>{{.Accepts}}</td><td>{{.Wakeups}}</td><td>{{.Spurious}}</td><td>{{.Timeouts}}</td>
<td>{{.Active}}</td><td>{{.Requests}}</td><td>{{.BytesOut}}</td></tr>
{{end}}<tr><th>total</th><td></td><td></td><td></td><td></td><td></td><td>{{.S.Total.Accepts}}</td><td>{{.S.Total.Wakeups}}</td>
<td>{{.S.Total.Spurious}}</td><td>{{.S.Total.Timeouts}}</td><td>{{.S.Total.Active}}</td><td>{{.S.Total.Requests}}</td><td>{{.S.Total.BytesOut}}</td></tr>
</table></body></html>
`))
