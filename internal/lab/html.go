//go:build linux

package lab

import (
	"fmt"
	"html"
	"html/template"
	"io"
	"math"
	"strings"
)

// WriteHTML writes the report as one self-contained page: inline SVG charts
// and the table, no script, no fetch of anything.
func (r *Report) WriteHTML(w io.Writer) error {
	labels := make([]string, len(r.Runs))
	for i, x := range r.Runs {
		labels[i] = runLabel(x, r.Runs)
	}
	pick := func(f func(Run) float64) []float64 {
		v := make([]float64, len(r.Runs))
		for i, x := range r.Runs {
			v[i] = f(x)
		}
		return v
	}
	data := struct {
		R      *Report
		Charts []template.HTML
		Labels []string
		Kernel bool
		Peers  bool
	}{R: r, Labels: labels, Kernel: r.hasKernel(), Peers: r.hasPeers()}
	data.Charts = []template.HTML{
		barChart("Wakeups per accepted connection", "lower is better: 1.0 means no one was woken for nothing", labels,
			pick(func(x Run) float64 {
				if !x.Scoreboard {
					return math.NaN()
				}
				return x.WakeupsPerConn
			}), "%.3f", "#c0392b"),
		shareChart("Share of connections per worker", "each bar is one run; each segment one worker; J = Jain's index (1 = even)", labels, r.Runs),
		barChart("Requests per second", "higher is better", labels, pick(func(x Run) float64 { return x.RPS }), "%.0f", "#2471a3"),
		barChart("p99 latency (ms)", "lower is better", labels, pick(func(x Run) float64 { return x.LatencyMS.P99 }), "%.3f", "#7d3c98"),
		barChart("Context switches per request", "master and workers, voluntary + involuntary, from /proc", labels,
			pick(func(x Run) float64 { return x.CtxSwitchesPerRequest }), "%.2f", "#b9770e"),
	}
	if r.hasKernel() {
		kernel := func(f func(*KernelCounts) uint64) []float64 {
			return pick(func(x Run) float64 {
				if x.Kernel == nil {
					return 0
				}
				return x.Kernel.PerConn(f(x.Kernel))
			})
		}
		data.Charts = append(data.Charts,
			barChart("accept4 calls per connection, counted by the kernel", "every server alike; above 1.0: processes woken for a connection another took",
				labels, kernel(func(k *KernelCounts) uint64 { return k.Accept4 }), "%.3f", "#1e8449"),
			barChart("Wakeups per connection", "voluntary context switches of all the server's threads (/proc): sleeps a wakeup ended, any reason",
				labels, pick(Run.WakeupsPerRequest), "%.2f", "#a93226"))
	}
	return page.Execute(w, data)
}

// runLabel names a run by what differs between the runs of the report.
func runLabel(x Run, all []Run) string {
	vary := func(f func(Run) string) bool {
		for _, y := range all {
			if f(y) != f(all[0]) {
				return true
			}
		}
		return false
	}
	parts := []string{x.Strategy}
	if x.Peer {
		parts = append(parts, "(peer)")
	}
	if vary(func(y Run) string { return y.Phase }) {
		parts = append(parts, x.Phase)
	}
	if vary(func(y Run) string { return fmt.Sprint(y.Workers) }) {
		parts = append(parts, fmt.Sprintf("w%d", x.Workers))
	}
	if vary(func(y Run) string { return y.Mode }) {
		parts = append(parts, x.Mode)
	}
	if vary(func(y Run) string { return fmt.Sprint(y.Concurrency) }) {
		parts = append(parts, fmt.Sprintf("c%d", x.Concurrency))
	}
	if x.Round > 0 {
		parts = append(parts, fmt.Sprintf("#%d", x.Round))
	}
	return strings.Join(parts, " ")
}

const (
	chartWidth = 760
	labelWidth = 190
	rowHeight  = 22
	valueWidth = 80
)

func barChart(title, note string, labels []string, values []float64, format, color string) template.HTML {
	top := 46
	h := top + rowHeight*len(values) + 10
	var b strings.Builder
	fmt.Fprintf(&b, `<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" role="img" aria-label="%s">`, chartWidth, h, html.EscapeString(title))
	fmt.Fprintf(&b, `<text x="0" y="18" class="t">%s</text><text x="0" y="36" class="n">%s</text>`, html.EscapeString(title), html.EscapeString(note))
	mx := 0.0
	for _, v := range values {
		if !math.IsNaN(v) {
			mx = max(mx, v)
		}
	}
	span := float64(chartWidth - labelWidth - valueWidth)
	for i, v := range values {
		y := top + i*rowHeight
		wd := 0.0
		if mx > 0 && !math.IsNaN(v) {
			wd = v / mx * span
		}
		fmt.Fprintf(&b, `<text x="%d" y="%d" class="l" text-anchor="end">%s</text>`, labelWidth-8, y+15, html.EscapeString(labels[i]))
		fmt.Fprintf(&b, `<rect x="%d" y="%d" width="%.1f" height="%d" fill="%s"/>`, labelWidth, y+3, wd, rowHeight-6, color)
		text := fmt.Sprintf(format, v)
		if math.IsNaN(v) {
			text = "no scoreboard" // another server: herd's own counters do not exist for it
		}
		fmt.Fprintf(&b, `<text x="%.1f" y="%d" class="v">%s</text>`, float64(labelWidth)+wd+6, y+15, text)
	}
	b.WriteString(`</svg>`)
	return template.HTML(b.String())
}

var palette = []string{"#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"}

func shareChart(title, note string, labels []string, runs []Run) template.HTML {
	top := 46
	h := top + rowHeight*len(runs) + 10
	var b strings.Builder
	fmt.Fprintf(&b, `<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" role="img" aria-label="%s">`, chartWidth, h, html.EscapeString(title))
	fmt.Fprintf(&b, `<text x="0" y="18" class="t">%s</text><text x="0" y="36" class="n">%s</text>`, html.EscapeString(title), html.EscapeString(note))
	span := float64(chartWidth - labelWidth - valueWidth)
	for i, x := range runs {
		y := top + i*rowHeight
		fmt.Fprintf(&b, `<text x="%d" y="%d" class="l" text-anchor="end">%s</text>`, labelWidth-8, y+15, html.EscapeString(labels[i]))
		var total uint64
		for _, n := range x.PerWorkerConns {
			total += n
		}
		if total == 0 {
			fmt.Fprintf(&b, `<text x="%d" y="%d" class="v">no scoreboard</text>`, labelWidth, y+15)
			continue
		}
		at := float64(labelWidth)
		for k, n := range x.PerWorkerConns {
			wd := float64(n) / float64(total) * span
			fmt.Fprintf(&b, `<rect x="%.1f" y="%d" width="%.1f" height="%d" fill="%s" stroke="#fff" stroke-width="0.5"><title>worker %d: %d connections</title></rect>`,
				at, y+3, wd, rowHeight-6, palette[k%len(palette)], k, n)
			at += wd
		}
		fmt.Fprintf(&b, `<text x="%.1f" y="%d" class="v">J=%.3f</text>`, float64(labelWidth)+span+6, y+15, x.Jain)
	}
	b.WriteString(`</svg>`)
	return template.HTML(b.String())
}

var page = template.Must(template.New("page").Funcs(template.FuncMap{
	"f": func(format string, v any) string { return fmt.Sprintf(format, v) },
}).Parse(`<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>herd lab report</title>
<style>
body{font-family:system-ui,sans-serif;margin:24px;color:#222;max-width:1100px}
h1{font-size:22px;margin:0 0 4px} .env{color:#555;margin-bottom:18px}
svg{display:block;margin:18px 0 8px} .t{font-size:15px;font-weight:600} .n{font-size:12px;fill:#666}
.l{font-size:12px} .v{font-size:11px;fill:#333}
table{border-collapse:collapse;font-size:12px;margin-top:18px} th,td{border:1px solid #ccc;padding:3px 6px;text-align:right}
th{background:#f3f3f3} td:first-child,th:first-child{text-align:left} .note{font-size:13px;color:#444;max-width:900px}
</style></head><body>
<h1>herd lab report{{if .R.Preset}}: {{.R.Preset}}{{end}}</h1>
<div class="env">kernel {{.R.Env.Kernel}} · {{.R.Env.CPUs}} CPUs · {{.R.Env.Go}} · {{.R.Env.Time}}</div>
{{with .R.Constants}}<div class="env">every run: {{range $i, $c := .}}{{if $i}} · {{end}}{{$c}}{{end}}</div>{{end}}
{{range .Charts}}{{.}}{{end}}
<table><tr>{{if .Peers}}<th>server</th>{{end}}<th>run</th><th>requests</th><th>errors</th><th>req/s</th><th>p50 ms</th><th>p99 ms</th><th>max ms</th>
<th>accepts</th><th>wakeups</th><th>spurious</th><th>wakeups/conn</th><th>cs/req</th><th>forced/req</th><th>cpu µs/req</th><th>client µs/req</th><th>jain</th><th>max/mean</th><th>per-worker conns</th>{{if .Kernel}}<th>k:accept4/conn</th><th>k:failed/conn</th><th>k:wakeups/conn</th><th>counted by</th>{{end}}</tr>
{{range $i, $x := .R.Runs}}<tr>{{if $.Peers}}<td>{{$x.Server}}</td>{{end}}<td>{{index $.Labels $i}}</td><td>{{$x.Requests}}</td><td>{{$x.Errors}}</td><td>{{f "%.0f" $x.RPS}}</td>
<td>{{f "%.3f" $x.LatencyMS.P50}}</td><td>{{f "%.3f" $x.LatencyMS.P99}}</td><td>{{f "%.3f" $x.LatencyMS.Max}}</td>
<td>{{$x.Accepts}}</td><td>{{$x.Wakeups}}</td><td>{{$x.SpuriousWakeups}}</td><td>{{f "%.3f" $x.WakeupsPerConn}}</td>
<td>{{f "%.2f" $x.CtxSwitchesPerRequest}}</td><td>{{f "%.2f" $x.ForcedPerRequest}}</td><td>{{f "%.0f" $x.CPUPerRequestUS}}</td><td>{{f "%.0f" $x.ClientCPUPerRequestUS}}</td><td>{{f "%.3f" $x.Jain}}</td><td>{{f "%.2f" $x.MaxOverMean}}</td>
<td>{{range $x.PerWorkerConns}}{{.}} {{end}}</td>{{if $.Kernel}}<td>{{$x.KernelCell "accept4"}}</td><td>{{$x.KernelCell "failed"}}</td><td>{{$x.KernelCell "wakeups"}}</td><td>{{$x.KernelCell "method"}}</td>{{end}}</tr>
{{end}}</table>
{{with .R.Summary}}<h2>Medians over the rounds</h2>
<table><tr><th>run</th><th>rounds</th><th>req/s</th><th>÷ exclusive's, same round</th><th>cs/req</th><th>forced/req</th><th>cpu µs/req</th><th>client µs/req</th></tr>
{{range .}}<tr><td>{{.Label}}</td><td>{{.Rounds}}</td><td>{{.RPS}}</td><td>{{.VsExclusive}}</td><td>{{.CtxSwitches}}</td><td>{{.Forced}}</td><td>{{.CPU}}</td><td>{{.ClientCPU}}</td></tr>
{{end}}</table>{{end}}
{{range .R.Notes}}<p class="note">{{.}}</p>{{end}}
</body></html>
`))
