package deploytest

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/maas-platform/maas/pkg/testenv"
)

// promResult is the part of a Prometheus API answer the tests read.
type promResult struct {
	Status    string `json:"status"`
	ErrorType string `json:"errorType"`
	Error     string `json:"error"`
	Data      struct {
		ResultType string `json:"resultType"`
		Result     []struct {
			Metric map[string]string `json:"metric"`
			Value  [2]any            `json:"value"`
		} `json:"result"`
		Groups []struct {
			Name  string `json:"name"`
			Rules []struct {
				Name   string `json:"name"`
				Health string `json:"health"`
				Type   string `json:"type"`
			} `json:"rules"`
		} `json:"groups"`
	} `json:"data"`
}

func promGet(t *testing.T, base, path string, params url.Values) promResult {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, "GET", base+path+"?"+params.Encode(), nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("prometheus %s: %v", path, err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	var r promResult
	if err := json.Unmarshal(raw, &r); err != nil {
		t.Fatalf("prometheus %s: %v: %s", path, err, raw)
	}
	return r
}

// scalar runs an instant query and returns the first sample's value (false when empty).
func scalar(t *testing.T, base, query string) (float64, bool) {
	t.Helper()
	r := promGet(t, base, "/api/v1/query", url.Values{"query": {query}})
	if r.Status != "success" {
		t.Fatalf("query %s: %s %s", query, r.ErrorType, r.Error)
	}
	if len(r.Data.Result) == 0 {
		return 0, false
	}
	s, _ := r.Data.Result[0].Value[1].(string)
	v, err := strconv.ParseFloat(s, 64)
	return v, err == nil
}

// testPrometheus starts a real Prometheus on loopback that scrapes the running platform
// every second with the project's alert rules loaded, sends traffic, and waits for the
// request counter and the time-to-first-token histogram to arrive through its HTTP API. It
// then runs every dashboard and alert expression against it (they must be valid PromQL).
func (pl *platform) testPrometheus(t *testing.T) {
	prometheus := requireTool(t, "prometheus", "apt-get install -y --no-install-recommends prometheus")
	dir := t.TempDir()
	rules, err := filepath.Abs(deployPath(t, "prometheus", "alerts.yml"))
	if err != nil {
		t.Fatal(err)
	}
	var cfg strings.Builder
	fmt.Fprintf(&cfg, "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - %q\nscrape_configs:\n", rules)
	for job, addrs := range pl.targets {
		fmt.Fprintf(&cfg, "  - job_name: %s\n    static_configs:\n      - targets: [", job)
		for i, a := range addrs {
			if i > 0 {
				cfg.WriteString(", ")
			}
			fmt.Fprintf(&cfg, "%q", a)
		}
		cfg.WriteString("]\n")
	}
	cfgPath := filepath.Join(dir, "prometheus.yml")
	if err := os.WriteFile(cfgPath, []byte(cfg.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	addr := testenv.FreeAddr(t)
	proc := testenv.Start(t, "prometheus", prometheus, []string{
		"--config.file=" + cfgPath,
		"--storage.tsdb.path=" + filepath.Join(dir, "data"),
		"--web.listen-address=" + addr,
		"--log.level=warn",
	})
	base := "http://" + addr
	testenv.WaitHTTP(t, proc, base+"/-/ready", 30*time.Second)

	// Traffic after Prometheus is up, and poll until its samples arrive.
	pl.traffic()
	start := time.Now()
	wait := func(what, query string) {
		t.Helper()
		deadline := time.Now().Add(20 * time.Second)
		for {
			if v, ok := scalar(t, base, query); ok && v > 0 {
				t.Logf("%s arrived after %v (%s = %g)", what, time.Since(start).Round(100*time.Millisecond), query, v)
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s did not arrive in Prometheus within 20 s (%s)", what, query)
			}
			pl.traffic()
			time.Sleep(500 * time.Millisecond)
		}
	}
	wait("request counter", `sum(maas_gateway_requests_total{model="`+chatModel+`",status="200"})`)
	wait("TTFT histogram", `sum(maas_gateway_time_to_first_token_seconds_count{model="`+chatModel+`"})`)
	wait("TTFT buckets", `count(maas_gateway_time_to_first_token_seconds_bucket{model="`+chatModel+`"})`)
	wait("TTFT quantile", `histogram_quantile(0.5, sum by (le) (rate(maas_gateway_time_to_first_token_seconds_bucket{model="`+chatModel+`"}[1m])))`)
	wait("healthy backends of the model", `min(maas_gateway_model_healthy_backends{model="`+chatModel+`"})`)

	// The alert rules loaded and evaluate without error.
	r := promGet(t, base, "/api/v1/rules", nil)
	nRules := 0
	for _, g := range r.Data.Groups {
		for _, rule := range g.Rules {
			nRules++
			if rule.Health == "err" {
				t.Errorf("rule %s: health %s", rule.Name, rule.Health)
			}
		}
	}
	if nRules == 0 {
		t.Error("Prometheus loaded no rule from alerts.yml")
	}

	// Every dashboard and alert expression is valid PromQL for this Prometheus.
	dash := strings.NewReplacer(`$model`, `.*`, `$__rate_interval`, `1m`, `$__range`, `5m`, `$__interval`, `15s`)
	for where, expr := range promQueries(t) {
		res := promGet(t, base, "/api/v1/query", url.Values{"query": {dash.Replace(expr)}})
		if res.Status != "success" {
			t.Errorf("%s: %s: %s", where, res.ErrorType, res.Error)
		}
	}
}
