//go:build linux && !herd_oneprocess

package herd_test

import (
	"encoding/json"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/herd-run/herd"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// startAdmin starts the admin test server, closed at the end of the test.
func startAdmin(t *testing.T) *herd.Server {
	t.Helper()
	t.Setenv("HERD_TEST_SERVER", "admin")
	srv := adminServer()
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Close() })
	return srv
}

// appMetricsServer counts its requests in a registry of its own, per
// worker, as a service author's code would.
func appMetricsServer() *herd.Server {
	reg := prometheus.NewRegistry()
	hits := prometheus.NewCounter(prometheus.CounterOpts{Name: "app_hits_total", Help: "Requests the app saw."})
	reg.MustRegister(hits)
	s := adminServer()
	s.Metrics = reg
	s.Handler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hits.Inc()
		io.WriteString(w, "hit")
	})
	return s
}

// The program's own counters, one per worker process, are all in the
// master's /metrics, each labelled with its worker's slot.
func TestAppMetricsAcrossWorkers(t *testing.T) {
	t.Setenv("HERD_TEST_SERVER", "appmetrics")
	srv := appMetricsServer()
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	families := hitAndScrape(t, srv, 30, "/")
	var sum float64
	slots := map[string]bool{}
	for _, m := range families["app_hits_total"].GetMetric() {
		sum += m.Counter.GetValue()
		for _, l := range m.Label {
			if l.GetName() == "herd_slot" {
				slots[l.GetValue()] = true
			}
		}
	}
	if sum != 30 || len(slots) != 2 {
		t.Errorf("app_hits_total adds up to %v over slots %v; want 30 over 2", sum, slots)
	}
}

func adminServer() *herd.Server {
	s := slowServer()
	s.Admin = "127.0.0.1:0"
	return s
}

func scrape(t *testing.T, base string) map[string]float64 {
	t.Helper()
	families := metricFamilies(t, base)
	out := map[string]float64{}
	for name, f := range families {
		for _, m := range f.Metric {
			switch {
			case m.Counter != nil:
				out[name] += m.Counter.GetValue()
			case m.Gauge != nil:
				out[name] += m.Gauge.GetValue()
			}
		}
	}
	return out
}

func get(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func TestAdminEndpoint(t *testing.T) {
	srv := startAdmin(t)
	base := "http://" + srv.AdminAddr()
	before := scrape(t, base)
	oneShot := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}
	for range 25 {
		resp, err := oneShot.Get("http://" + srv.Addrs()[0] + "/x")
		if err != nil || resp.StatusCode != 200 {
			t.Fatal("request failed")
		}
		resp.Body.Close()
	}
	deadline := time.Now().Add(5 * time.Second)
	after := scrape(t, base)
	for after["herd_requests_total"]-before["herd_requests_total"] < 25 && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
		after = scrape(t, base)
	}
	for _, name := range []string{"herd_requests_total", "herd_accepts_total", "herd_worker_requests_total"} {
		if d := after[name] - before[name]; d != 25 {
			t.Errorf("%s moved by %v for 25 requests", name, d)
		}
	}
	if after["herd_workers_wanted"] != 2 || after["herd_workers"] != 2 || after["go_goroutines"] == 0 {
		t.Errorf("workers wanted %v, live %v, go_goroutines %v", after["herd_workers_wanted"], after["herd_workers"], after["go_goroutines"])
	}

	// /status as JSON is the scoreboard; as HTML a page.
	_, body := get(t, base+"/status?format=json")
	var st herd.Stats
	if err := json.Unmarshal([]byte(body), &st); err != nil {
		t.Fatal(err)
	}
	if want := srv.Stats(); st.MasterPID != want.MasterPID || len(st.Live) != 2 || st.Total.Requests != want.Total.Requests {
		t.Errorf("/status JSON %+v does not match the scoreboard %+v", st, want)
	}
	req, _ := http.NewRequest("GET", base+"/status", nil)
	req.Header.Set("Accept", "application/json")
	if resp, err := http.DefaultClient.Do(req); err != nil || resp.Header.Get("Content-Type") != "application/json" {
		t.Errorf("Accept: application/json did not give JSON")
	}
	if code, body := get(t, base+"/status"); code != 200 || !strings.Contains(body, "<table>") {
		t.Errorf("/status HTML: %d %q", code, body)
	}
	if code, _ := get(t, base+"/healthz"); code != 200 {
		t.Errorf("/healthz %d", code)
	}
	if code, _ := get(t, base+"/readyz"); code != 200 {
		t.Errorf("/readyz %d while ready", code)
	}
}

// /readyz stays 200 while a reload waits for its new workers: the old
// generation still serves, and a load balancer must not pull the server.
func TestReadinessHoldsDuringReload(t *testing.T) {
	srv := startAdmin(t)
	base := "http://" + srv.AdminAddr()
	t.Setenv("HERD_TEST_SLOW_START", "1") // the next generation takes a second to start
	srv.Reload()
	polls := 0
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if code, _ := get(t, base+"/readyz"); code != 200 {
			t.Fatalf("/readyz %d during a reload", code)
		}
		polls++
		if st := srv.Stats(); st.Generation == 2 && len(st.Live) == 2 && st.Reloads == 1 {
			break
		}
	}
	if polls < 10 {
		t.Errorf("only %d polls during the reload: the slow generation was not slow", polls)
	}
}

func init() {
	// Workers of the slow generation wait before they start serving.
	if herd.IsWorker() && os.Getenv("HERD_TEST_SLOW_START") != "" {
		time.Sleep(time.Second)
	}
}

// A local client that opens many connections to the admin endpoint and
// sends nothing pins no more than its cap of the master's descriptors, and
// each one it holds is closed after the header timeout.
func TestAdminIdleClientsAreBounded(t *testing.T) {
	srv := startAdmin(t)
	fds := func() int { // the master is this process
		ents, _ := os.ReadDir("/proc/self/fd")
		return len(ents)
	}
	before := fds()
	const idle = 100
	var conns []net.Conn
	for range idle {
		c, err := net.Dial("tcp", srv.AdminAddr())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		conns = append(conns, c)
	}
	time.Sleep(200 * time.Millisecond) // let the master accept what it will
	// The clients' own descriptors are in this process too.
	if grown := fds() - before - idle; grown > 40 {
		t.Errorf("the master took %d descriptors for %d idle admin connections; the cap is 32", grown, idle)
	}
	var closed atomic.Int32
	var wg sync.WaitGroup
	for _, c := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c.SetReadDeadline(time.Now().Add(8 * time.Second))
			if _, err := c.Read(make([]byte, 1)); err == io.EOF {
				closed.Add(1)
			}
		}()
	}
	for end := time.Now().Add(8 * time.Second); closed.Load() < 32 && time.Now().Before(end); {
		time.Sleep(50 * time.Millisecond)
	}
	for _, c := range conns {
		c.Close()
	}
	wg.Wait()
	if n := closed.Load(); n < 32 {
		t.Errorf("%d idle admin connections closed within 8s; the header timeout is 5s", n)
	}
}

// /metrics follows Prometheus's conventions: counters end in _total, no
// label names a pid or a generation (values that change on every reload),
// and answers are counted by status class and in a duration histogram,
// gathered from every worker through the scoreboard.
func TestMetricsConventions(t *testing.T) {
	srv := startAdmin(t)
	families := hitAndScrape(t, srv, 20, "/x")
	for name, f := range families {
		if f.GetType() == dto.MetricType_COUNTER && !strings.HasSuffix(name, "_total") {
			t.Errorf("counter %s does not end in _total", name)
		}
		if !strings.HasPrefix(name, "herd_") {
			continue
		}
		for _, m := range f.Metric {
			for _, l := range m.Label {
				if l.GetName() == "pid" || l.GetName() == "generation" {
					t.Errorf("%s has a %s label", name, l.GetName())
				}
			}
		}
	}
	var ok2xx float64
	for _, m := range families["herd_responses_total"].GetMetric() {
		for _, l := range m.Label {
			if l.GetName() == "class" && l.GetValue() == "2xx" {
				ok2xx = m.Counter.GetValue()
			}
		}
	}
	if ok2xx != 20 {
		t.Errorf("herd_responses_total{class=\"2xx\"} = %v after 20 answers", ok2xx)
	}
	h := families["herd_request_duration_seconds"].GetMetric()
	if len(h) != 1 || h[0].Histogram.GetSampleCount() != 20 || len(h[0].Histogram.GetBucket()) == 0 {
		t.Fatalf("herd_request_duration_seconds: %v", h)
	}
	if b := h[0].Histogram.GetBucket(); b[len(b)-1].GetCumulativeCount() != 20 {
		t.Errorf("the histogram's last bucket has %d of 20 answers", b[len(b)-1].GetCumulativeCount())
	}
}

// hitAndScrape sends n requests for path, each on a new connection, then
// scrapes the master's /metrics.
func hitAndScrape(t *testing.T, srv *herd.Server, n int, path string) map[string]*dto.MetricFamily {
	t.Helper()
	c := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}
	for range n {
		resp, err := c.Get("http://" + srv.Addrs()[0] + path)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
	}
	return metricFamilies(t, "http://"+srv.AdminAddr())
}

// metricFamilies scrapes base's /metrics, which must parse as Prometheus
// text.
func metricFamilies(t *testing.T, base string) map[string]*dto.MetricFamily {
	t.Helper()
	resp, err := http.Get(base + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	parser := expfmt.NewTextParser(model.UTF8Validation)
	families, err := parser.TextToMetricFamilies(resp.Body)
	if err != nil {
		t.Fatalf("/metrics does not parse as Prometheus text: %v", err)
	}
	return families
}
