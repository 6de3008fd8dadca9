package deploytest

import (
	"encoding/json"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// dashboard is the part of a Grafana dashboard JSON the tests read.
type dashboard struct {
	UID    string  `json:"uid"`
	Title  string  `json:"title"`
	Panels []panel `json:"panels"`
}

type panel struct {
	ID         int               `json:"id"`
	Type       string            `json:"type"`
	Title      string            `json:"title"`
	Datasource *datasourceRef    `json:"datasource"`
	Targets    []dashboardTarget `json:"targets"`
	Panels     []panel           `json:"panels"` // collapsed rows
}

type datasourceRef struct {
	Type string `json:"type"`
	UID  string `json:"uid"`
}

type dashboardTarget struct {
	RefID      string         `json:"refId"`
	Datasource *datasourceRef `json:"datasource"`
	Expr       string         `json:"expr"`
	RawSQL     string         `json:"rawSql"`
}

func loadDashboards(t *testing.T) map[string]dashboard {
	t.Helper()
	files, err := filepath.Glob(deployPath(t, "grafana", "dashboards", "*.json"))
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]dashboard{}
	for _, f := range files {
		raw, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		var d dashboard
		if err := json.Unmarshal(raw, &d); err != nil {
			t.Fatalf("%s: %v", filepath.Base(f), err)
		}
		out[filepath.Base(f)] = d
	}
	if len(out) == 0 {
		t.Fatal("no dashboards in deploy/grafana/dashboards")
	}
	return out
}

// allPanels flattens rows.
func allPanels(ps []panel) []panel {
	var out []panel
	for _, p := range ps {
		out = append(out, p)
		out = append(out, allPanels(p.Panels)...)
	}
	return out
}

// promQueries is every PromQL expression of the alert rules and dashboards, by where it is.
func promQueries(t *testing.T) map[string]string {
	t.Helper()
	out := map[string]string{}
	for _, g := range loadRules(t).Groups {
		for _, r := range g.Rules {
			out["alerts.yml "+r.Alert+r.Record] = r.Expr
		}
	}
	for file, d := range loadDashboards(t) {
		for _, p := range allPanels(d.Panels) {
			for _, tg := range p.Targets {
				if tg.Expr != "" {
					out[file+" panel "+p.Title+" "+tg.RefID] = tg.Expr
				}
			}
		}
	}
	return out
}

// usedMetrics maps every metric name the alert rules and dashboards read to where.
func usedMetrics(t *testing.T) map[string][]string {
	t.Helper()
	out := map[string][]string{}
	for where, expr := range promQueries(t) {
		for name := range metricNames(expr) {
			out[name] = append(out[name], where)
		}
	}
	return out
}

// scrape reads a /metrics page.
func scrape(t *testing.T, hostport string) map[string]*dto.MetricFamily {
	t.Helper()
	client := &http.Client{Timeout: 10 * time.Second}
	resp, err := client.Get("http://" + hostport + "/metrics")
	if err != nil {
		t.Fatalf("scrape %s: %v", hostport, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("scrape %s: status %d", hostport, resp.StatusCode)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(resp.Body)
	if err != nil {
		t.Fatalf("scrape %s: %v", hostport, err)
	}
	return fams
}

// exported reports whether name is exported: as a family, or as the _bucket, _sum or
// _count series of a histogram (or _sum, _count of a summary).
func exported(fams map[string]*dto.MetricFamily, name string) bool {
	if f, ok := fams[name]; ok && len(f.GetMetric()) > 0 {
		return true
	}
	for _, suffix := range []string{"_bucket", "_sum", "_count"} {
		base, ok := strings.CutSuffix(name, suffix)
		if !ok {
			continue
		}
		f, ok := fams[base]
		if !ok || len(f.GetMetric()) == 0 {
			continue
		}
		switch f.GetType() {
		case dto.MetricType_HISTOGRAM, dto.MetricType_GAUGE_HISTOGRAM:
			return true
		case dto.MetricType_SUMMARY:
			return suffix != "_bucket"
		}
	}
	return false
}

func TestExported(t *testing.T) {
	h, c := dto.MetricType_HISTOGRAM, dto.MetricType_COUNTER
	one := []*dto.Metric{{}}
	fams := map[string]*dto.MetricFamily{
		"a_seconds":   {Type: &h, Metric: one},
		"b_total":     {Type: &c, Metric: one},
		"empty_total": {Type: &c},
	}
	for name, want := range map[string]bool{
		"a_seconds": true, "a_seconds_bucket": true, "a_seconds_count": true, "a_seconds_sum": true,
		"b_total": true, "b_total_count": false, "missing": false, "empty_total": false,
	} {
		if got := exported(fams, name); got != want {
			t.Errorf("exported(%s) = %v, want %v", name, got, want)
		}
	}
}

// testMetricsExported scrapes every process of the running platform and checks that each
// metric the alert rules and dashboards read is exported by one of them.
func (pl *platform) testMetricsExported(t *testing.T) {
	all := map[string]*dto.MetricFamily{}
	for job, addrs := range pl.targets {
		for _, addr := range addrs {
			fams := scrape(t, addr)
			if len(fams) == 0 {
				t.Errorf("%s %s exports nothing", job, addr)
			}
			for name, f := range fams {
				if prev, ok := all[name]; ok {
					prev.Metric = append(prev.Metric, f.Metric...)
				} else {
					all[name] = f
				}
			}
		}
	}
	used := usedMetrics(t)
	if len(used) < 15 {
		t.Fatalf("the alert rules and dashboards read only %d metrics; the extraction is broken", len(used))
	}
	var names []string
	for name := range used {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		if !exported(all, name) {
			t.Errorf("%s is exported by no process, but read by: %s", name, strings.Join(used[name], "; "))
		}
	}
	t.Logf("%d metric names checked against %d exported families", len(names), len(all))
}
