package deploytest

import (
	"os"
	"os/exec"
	"regexp"
	"sort"
	"strings"
	"testing"

	"sigs.k8s.io/yaml"
)

// requireTool returns the path of an external tool. Under CI=true a missing tool fails the
// test (make test installs it); run by hand without it, the test is skipped.
func requireTool(t *testing.T, name, install string) string {
	t.Helper()
	path, err := exec.LookPath(name)
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("%s is required under CI (%s)", name, install)
		}
		t.Skipf("%s is not installed (%s)", name, install)
	}
	return path
}

func requirePromtool(t *testing.T) string {
	return requireTool(t, "promtool", "apt-get install -y --no-install-recommends prometheus")
}

func TestPromtool(t *testing.T) {
	promtool := requirePromtool(t)
	dir := deployPath(t, "prometheus")
	for _, args := range [][]string{
		{"check", "config", "prometheus.yml"},
		{"check", "rules", "alerts.yml"},
		{"test", "rules", "alerts_test.yml"},
	} {
		t.Run(strings.Join(args, "_"), func(t *testing.T) {
			cmd := exec.Command(promtool, args...)
			cmd.Dir = dir
			out, err := cmd.CombinedOutput()
			if err != nil {
				t.Fatalf("promtool %s: %v\n%s", strings.Join(args, " "), err, out)
			}
		})
	}
}

type ruleFile struct {
	Groups []struct {
		Name  string `json:"name"`
		Rules []struct {
			Alert       string            `json:"alert"`
			Record      string            `json:"record"`
			Expr        string            `json:"expr"`
			For         string            `json:"for"`
			Labels      map[string]string `json:"labels"`
			Annotations map[string]string `json:"annotations"`
		} `json:"rules"`
	} `json:"groups"`
}

func loadRules(t *testing.T) ruleFile {
	t.Helper()
	raw, err := os.ReadFile(deployPath(t, "prometheus", "alerts.yml"))
	if err != nil {
		t.Fatal(err)
	}
	var rf ruleFile
	if err := unmarshalStrict(raw, &rf); err != nil {
		t.Fatalf("alerts.yml: %v", err)
	}
	return rf
}

// TestEveryAlertIsUnitTested checks that alerts_test.yml has, for every alert, a case where
// it fires and one where it must stay silent; and that the alerts are all there.
func TestEveryAlertIsUnitTested(t *testing.T) {
	rf := loadRules(t)
	raw, err := os.ReadFile(deployPath(t, "prometheus", "alerts_test.yml"))
	if err != nil {
		t.Fatal(err)
	}
	var tf struct {
		Tests []struct {
			AlertRuleTest []struct {
				Alertname string           `json:"alertname"`
				ExpAlerts []map[string]any `json:"exp_alerts"`
			} `json:"alert_rule_test"`
		} `json:"tests"`
	}
	if err := yaml.Unmarshal(raw, &tf); err != nil {
		t.Fatalf("alerts_test.yml: %v", err)
	}
	fires, silent := map[string]bool{}, map[string]bool{}
	for _, tc := range tf.Tests {
		for _, a := range tc.AlertRuleTest {
			if len(a.ExpAlerts) > 0 {
				fires[a.Alertname] = true
			} else {
				silent[a.Alertname] = true
			}
		}
	}
	var alerts []string
	for _, g := range rf.Groups {
		for _, r := range g.Rules {
			if r.Alert == "" {
				continue
			}
			alerts = append(alerts, r.Alert)
			if !fires[r.Alert] || !silent[r.Alert] {
				t.Errorf("alert %s: alerts_test.yml needs a case where it fires (%v) and one where it does not (%v)", r.Alert, fires[r.Alert], silent[r.Alert])
			}
			if r.Labels["severity"] != "warning" && r.Labels["severity"] != "critical" {
				t.Errorf("alert %s: severity %q, want warning or critical", r.Alert, r.Labels["severity"])
			}
			if r.Annotations["summary"] == "" || r.Annotations["description"] == "" {
				t.Errorf("alert %s: needs a summary and a description", r.Alert)
			}
		}
	}
	// What the issue asks for, by the metric each alert must read.
	for _, want := range []struct{ what, metric string }{
		{"high error ratio per model", "maas_gateway_requests_total"},
		{"p99 time to first token", "maas_gateway_time_to_first_token_seconds_bucket"},
		{"usage-ledger drops", "maas_usage_records_dropped_total"},
		{"breaker open", "maas_gateway_backend_breaker_state"},
		{"snapshot stale", "maas_gateway_snapshot_age_seconds"},
		{"no healthy backend", "maas_control_backends"},
		{"no healthy backend for a model", "maas_gateway_model_healthy_backends"},
		{"worker heartbeat failing", "maas_worker_heartbeat_failures_total"},
		{"backends missed heartbeats (control)", "maas_control_backend_reaper_actions_total"},
		{"engine down", "maas_worker_engine_up"},
	} {
		found := false
		for _, g := range rf.Groups {
			for _, r := range g.Rules {
				if r.Alert != "" && metricNames(r.Expr)[want.metric] {
					found = true
				}
			}
		}
		if !found {
			t.Errorf("no alert for %s (on %s)", want.what, want.metric)
		}
	}
	sort.Strings(alerts)
	t.Logf("alerts: %s", strings.Join(alerts, ", "))
}

// metricRef matches the platform's and the engines' metric names in PromQL. Label names
// never start with these prefixes, so a plain token scan is exact enough here.
var metricRef = regexp.MustCompile(`\b(maas_[a-z0-9_]+|vllm:[a-z0-9_:]+)`)

func metricNames(expr string) map[string]bool {
	out := map[string]bool{}
	for _, m := range metricRef.FindAllStringSubmatch(expr, -1) {
		out[m[1]] = true
	}
	return out
}

func TestMetricNames(t *testing.T) {
	got := metricNames(`sum by (model, le) (rate(maas_gateway_time_to_first_token_seconds_bucket{model=~"$model"}[5m])) / vllm:num_requests_running{model_name="x"} + up`)
	want := map[string]bool{"maas_gateway_time_to_first_token_seconds_bucket": true, "vllm:num_requests_running": true}
	if len(got) != len(want) {
		t.Fatalf("metricNames = %v, want %v", got, want)
	}
	for k := range want {
		if !got[k] {
			t.Errorf("metricNames missed %s", k)
		}
	}
}
