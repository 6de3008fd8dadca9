package deploytest

import (
	"context"

	"os"
	"regexp"
	"strings"
	"testing"
	"time"
)

func TestDashboards(t *testing.T) {
	dashboards := loadDashboards(t)
	raw, err := os.ReadFile(deployPath(t, "grafana", "provisioning", "datasources", "maas.yml"))
	if err != nil {
		t.Fatal(err)
	}
	var ds struct {
		APIVersion  int `json:"apiVersion"`
		Datasources []struct {
			Name           string         `json:"name"`
			UID            string         `json:"uid"`
			Type           string         `json:"type"`
			Access         string         `json:"access"`
			URL            string         `json:"url"`
			User           string         `json:"user"`
			IsDefault      bool           `json:"isDefault"`
			JSONData       map[string]any `json:"jsonData"`
			SecureJSONData map[string]any `json:"secureJsonData"`
		} `json:"datasources"`
	}
	if err := unmarshalStrict(raw, &ds); err != nil {
		t.Fatalf("provisioning/datasources/maas.yml: %v", err)
	}
	types := map[string]string{}
	for _, d := range ds.Datasources {
		types[d.UID] = d.Type
	}
	// Dashboards pick the Prometheus data source through a variable; SQL panels name the
	// provisioned PostgreSQL one.
	allowed := map[string]string{"${datasource}": "prometheus", "maas-postgres": types["maas-postgres"]}
	if types["prometheus"] != "prometheus" || types["maas-postgres"] == "" {
		t.Errorf("provisioned data sources %v: want a prometheus one (uid prometheus) and maas-postgres", types)
	}

	uids := map[string]string{}
	metricsOf := map[string]map[string]bool{}
	for file, d := range dashboards {
		if d.UID == "" || d.Title == "" {
			t.Errorf("%s: needs a uid and a title", file)
		}
		if prev, dup := uids[d.UID]; dup {
			t.Errorf("%s: uid %s already used by %s", file, d.UID, prev)
		}
		uids[d.UID] = file
		metricsOf[d.UID] = map[string]bool{}
		ids := map[int]bool{}
		for _, p := range allPanels(d.Panels) {
			where := file + " panel " + p.Title
			if ids[p.ID] {
				t.Errorf("%s: id %d used twice", where, p.ID)
			}
			ids[p.ID] = true
			if p.Type == "row" {
				continue
			}
			if len(p.Targets) == 0 {
				t.Errorf("%s: no query", where)
			}
			if p.Datasource == nil || allowed[p.Datasource.UID] == "" {
				t.Errorf("%s: data source %+v is not provisioned", where, p.Datasource)
				continue
			}
			for _, tg := range p.Targets {
				if tg.Datasource == nil || tg.Datasource.UID != p.Datasource.UID {
					t.Errorf("%s %s: target data source differs from the panel's", where, tg.RefID)
				}
				switch allowed[p.Datasource.UID] {
				case "prometheus":
					if tg.Expr == "" {
						t.Errorf("%s %s: empty PromQL", where, tg.RefID)
					}
					for m := range metricNames(tg.Expr) {
						metricsOf[d.UID][m] = true
					}
				default:
					if tg.RawSQL == "" {
						t.Errorf("%s %s: empty SQL", where, tg.RefID)
					}
				}
			}
		}
	}
	// What the issue asks each dashboard to show.
	for uid, want := range map[string][]string{
		"maas-gateway": {"maas_gateway_requests_total", "maas_gateway_request_duration_seconds_bucket",
			"maas_gateway_time_to_first_token_seconds_bucket", "maas_gateway_prompt_tokens_total", "maas_gateway_completion_tokens_total"},
		"maas-backends": {"maas_gateway_backend_healthy", "maas_gateway_backend_in_flight_requests", "vllm:num_requests_waiting",
			"vllm:kv_cache_usage_perc", "maas_gateway_backend_breaker_state", "maas_gateway_model_healthy_backends"},
		"maas-usage": {"maas_gateway_ratelimit_rejections_total", "maas_gateway_rejections_total"},
	} {
		for _, m := range want {
			if !metricsOf[uid][m] {
				t.Errorf("dashboard %s does not show %s", uid, m)
			}
		}
	}

	// The provider loads the folder the Compose stack mounts the dashboards into.
	prov, err := os.ReadFile(deployPath(t, "grafana", "provisioning", "dashboards", "maas.yml"))
	if err != nil {
		t.Fatal(err)
	}
	compose, err := os.ReadFile(deployPath(t, "compose", "docker-compose.yml"))
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`path:\s*(\S+)`).FindSubmatch(prov)
	if m == nil || !strings.Contains(string(compose), "../grafana/dashboards:"+string(m[1])) {
		t.Errorf("the dashboard provider's path is not where docker-compose.yml mounts deploy/grafana/dashboards")
	}
}

// grafanaSQL replaces the Grafana macros the SQL panels use with plain PostgreSQL.
func grafanaSQL(sql string) string {
	sql = regexp.MustCompile(`\$__timeFilter\(([^)]+)\)`).ReplaceAllString(sql, "($1 BETWEEN now() - interval '1 hour' AND now() + interval '1 minute')")
	sql = regexp.MustCompile(`\$__timeGroupAlias\(([^,]+),\s*\$__interval\)`).ReplaceAllString(sql, "date_trunc('minute', $1) AS time")
	return sql
}

// testGrafanaSQL runs every SQL panel against the platform's database after traffic: the
// queries are valid for the real schema, and the tokens-by-user table has rows.
func (pl *platform) testGrafanaSQL(t *testing.T) {
	n := 0
	for file, d := range loadDashboards(t) {
		for _, p := range allPanels(d.Panels) {
			for _, tg := range p.Targets {
				if tg.RawSQL == "" {
					continue
				}
				n++
				sql := grafanaSQL(tg.RawSQL)
				if strings.Contains(sql, "$") {
					t.Errorf("%s panel %s: unhandled Grafana macro in %q", file, p.Title, sql)
					continue
				}
				rows := pl.pollRows(t, sql)
				if rows == 0 {
					t.Errorf("%s panel %s: no rows after traffic", file, p.Title)
				}
			}
		}
	}
	if n == 0 {
		t.Error("no SQL panel found")
	}
}

// pollRows runs sql until it returns rows (the ledger writes in batches) or 10 s pass.
func (pl *platform) pollRows(t *testing.T, sql string) int {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		rows, err := pl.db.Query(ctx, sql)
		if err != nil {
			cancel()
			t.Fatalf("%s: %v", sql, err)
		}
		n := 0
		for rows.Next() {
			n++
		}
		err = rows.Err()
		rows.Close()
		cancel()
		if err != nil {
			t.Fatalf("%s: %v", sql, err)
		}
		if n > 0 || time.Now().After(deadline) {
			return n
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func TestGrafanaSQL(t *testing.T) {
	got := grafanaSQL("SELECT $__timeGroupAlias(r.created_at, $__interval), 1 FROM t r WHERE $__timeFilter(r.created_at)")
	want := "SELECT date_trunc('minute', r.created_at) AS time, 1 FROM t r WHERE (r.created_at BETWEEN now() - interval '1 hour' AND now() + interval '1 minute')"
	if got != want {
		t.Errorf("grafanaSQL:\n got %s\nwant %s", got, want)
	}

}
