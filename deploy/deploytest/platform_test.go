package deploytest

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/maas-platform/maas/pkg/pgdb"
	"github.com/maas-platform/maas/pkg/testenv"
)

// platform is a running control + gateway + workers with the simulator engine, on one
// fresh database.
type platform struct {
	t       *testing.T
	p       *testenv.Platform
	db      *pgxpool.Pool
	admin   string // admin access token
	gateway string // base URL
	gwAddr  string
	key     string // an API key for every model
	// scrape targets by job: the processes' /metrics endpoints (host:port)
	targets map[string][]string
}

// Models served by the platform under test. sim-broken is served by a simulator that
// answers every request with 502 (retryable), so that error metrics exist.
const (
	chatModel      = "sim-chat"
	embeddingModel = "sim-embedding"
	brokenModel    = "sim-broken"
)

func startPlatform(t *testing.T) *platform {
	t.Helper()
	p := testenv.NewPlatform(t, testenv.Options{})
	p.StartControl()
	db, err := pgdb.Connect(context.Background(), p.DBURL)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(db.Close)
	pl := &platform{t: t, p: p, db: db, admin: p.AdminToken(), targets: map[string][]string{}}
	pl.targets["maas-control"] = []string{strings.TrimPrefix(p.ControlURL, "http://")}

	pl.engine("sim-ok", "MAAS_SIM_MODELS="+chatModel, "MAAS_SIM_EMBEDDING_MODELS="+embeddingModel)
	// Two failing backends for one model: the gateway retries on the second.
	for _, id := range []string{"sim-broken-1", "sim-broken-2"} {
		pl.engine(id, "MAAS_SIM_MODELS="+brokenModel, "MAAS_SIM_EMBEDDING_MODELS=sim-broken-embedding", "MAAS_SIM_FAIL=status=502")
	}

	proc, url := p.StartGateway("MAAS_ACCESS_LOG=false")
	testenv.WaitHTTP(t, proc, url+"/ready", 30*time.Second)
	// Vector stores embed through the gateway, whose address is known only now: control
	// starts again on the same address with MAAS_GATEWAY_URL (and files in a temporary folder).
	p.Control.Stop(10 * time.Second)
	p.StartControl("MAAS_GATEWAY_URL="+url, "MAAS_FILES_DIR="+t.TempDir())
	pl.gateway, pl.gwAddr = url, strings.TrimPrefix(url, "http://")
	pl.targets["maas-gateway"] = []string{pl.gwAddr}
	pl.key = p.CreateKey(pl.admin, map[string]any{"name": "deploytest"})
	pl.waitModels(chatModel, embeddingModel, brokenModel)
	return pl
}

// engine starts a worker with the built-in simulator engine (`worker --engine sim`), which
// registers the simulator with control and heartbeats.
func (pl *platform) engine(id string, env ...string) {
	pl.t.Helper()
	simAddr := testenv.FreeAddr(pl.t)
	env = append([]string{"MAAS_SIM_ADDR=" + simAddr, "MAAS_BACKEND_ID=" + id, "MAAS_HEARTBEAT_INTERVAL=500ms",
		"MAAS_SIM_TTFT=5ms", "MAAS_SIM_ITL=1ms", "MAAS_SIM_ITL_JITTER=0s", "MAAS_SIM_OUTPUT_TOKENS=8"}, env...)
	_, url := pl.p.StartWorker([]string{"--engine", "sim"}, env...)
	pl.targets["maas-worker"] = append(pl.targets["maas-worker"], strings.TrimPrefix(url, "http://"))
	pl.targets["maas-engine"] = append(pl.targets["maas-engine"], simAddr)
}

// waitModels polls GET /v1/models until every model is listed.
func (pl *platform) waitModels(models ...string) {
	pl.t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for {
		status, body := pl.do("GET", "/v1/models", pl.key, "")
		if status == 200 {
			var list struct {
				Data []struct {
					ID string `json:"id"`
				} `json:"data"`
			}
			_ = json.Unmarshal(body, &list)
			have := map[string]bool{}
			for _, m := range list.Data {
				have[m.ID] = true
			}
			all := true
			for _, m := range models {
				all = all && have[m]
			}
			if all {
				return
			}
		}
		if time.Now().After(deadline) {
			pl.t.Fatalf("gateway does not list %v: %d %s", models, status, body)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// do sends a request to the gateway and returns the status and body.
func (pl *platform) do(method, path, key, body string) (int, []byte) {
	pl.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, pl.gateway+path, rd)
	if err != nil {
		pl.t.Fatal(err)
	}
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	if key != "" {
		req.Header.Set("Authorization", "Bearer "+key)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		pl.t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		pl.t.Fatalf("%s %s: read: %v", method, path, err)
	}
	return resp.StatusCode, b
}

// traffic sends one of each kind of request, failures included, and checks the statuses.
func (pl *platform) traffic() {
	pl.t.Helper()
	chat := func(model string, stream bool) string {
		return fmt.Sprintf(`{"model":%q,"stream":%v,"max_tokens":8,"messages":[{"role":"user","content":"hello there"}]}`, model, stream)
	}
	for _, tc := range []struct {
		path, key, body string
		want            int
	}{
		{"/v1/chat/completions", pl.key, chat(chatModel, false), 200},
		{"/v1/chat/completions", pl.key, chat(chatModel, true), 200},
		{"/v1/completions", pl.key, fmt.Sprintf(`{"model":%q,"prompt":"once upon","max_tokens":8,"stream":true}`, chatModel), 200},
		{"/v1/embeddings", pl.key, fmt.Sprintf(`{"model":%q,"input":["a","b"]}`, embeddingModel), 200},
		{"/v1/chat/completions", "sk-invalid", chat(chatModel, false), 401},
		{"/v1/chat/completions", pl.key, chat("no-such-model", false), 404},
		{"/v1/chat/completions", pl.key, chat(brokenModel, false), 0}, // 5xx, whichever the gateway maps it to
	} {
		status, body := pl.do("POST", tc.path, tc.key, tc.body)
		if (tc.want != 0 && status != tc.want) || (tc.want == 0 && status < 500) {
			pl.t.Fatalf("POST %s: status %d (want %d): %s", tc.path, status, tc.want, body)
		}
	}
}

func TestPlatform(t *testing.T) {
	if testing.Short() {
		t.Skip("starts the platform")
	}
	pl := startPlatform(t)
	pl.traffic()
	t.Run("metrics_exported", pl.testMetricsExported)
	t.Run("documented_routes_exist", pl.testDocumentedRoutes)
	t.Run("grafana_sql", pl.testGrafanaSQL)
	t.Run("prometheus", pl.testPrometheus)
	t.Run("node_sdk", pl.testNodeSDK)
}
