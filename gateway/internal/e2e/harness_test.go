// Package e2e tests the gateway end to end: real control, simulator and gateway
// processes, real PostgreSQL and Redis.
package e2e

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/maas-platform/maas/pkg/pgdb"
	"github.com/maas-platform/maas/pkg/testenv"
)

type env struct {
	t     *testing.T
	p     *testenv.Platform
	db    *pgxpool.Pool
	admin string
}

func newEnv(t *testing.T, redis bool) *env {
	t.Helper()
	p := testenv.NewPlatform(t, testenv.Options{Redis: redis})
	p.StartControl()
	db, err := pgdb.Connect(context.Background(), p.DBURL)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(db.Close)
	return &env{t: t, p: p, db: db, admin: p.AdminToken()}
}

// sim starts a worker running the simulator engine in-process, registered with control
// as backend id, and returns the worker and the simulator's URL once control lists it.
func (e *env) sim(id string, extraEnv ...string) (*testenv.Proc, string) {
	e.t.Helper()
	addr := testenv.FreeAddr(e.t)
	env := append([]string{"MAAS_SIM_ADDR=" + addr, "MAAS_BACKEND_ID=" + id, "MAAS_HEARTBEAT_INTERVAL=200ms",
		"MAAS_SIM_TTFT=5ms", "MAAS_SIM_ITL=1ms", "MAAS_SIM_ITL_JITTER=0s"}, extraEnv...)
	proc, _ := e.p.StartWorker([]string{"--engine", "sim"}, env...)
	deadline := time.Now().Add(15 * time.Second)
	for {
		var state string
		err := e.db.QueryRow(context.Background(), `SELECT state FROM backends WHERE id = $1`, id).Scan(&state)
		if err == nil && state == "healthy" {
			break
		}
		if time.Now().After(deadline) {
			e.t.Fatalf("backend %s not registered: %v %s\n%s", id, err, state, proc.Output())
		}
		time.Sleep(20 * time.Millisecond)
	}
	return proc, "http://" + addr
}

func (e *env) gateway(extraEnv ...string) (*testenv.Proc, string) {
	e.t.Helper()
	proc, url := e.p.StartGateway(append([]string{"MAAS_ACCESS_LOG=false"}, extraEnv...)...)
	testenv.WaitHTTP(e.t, proc, url+"/ready", 30*time.Second)
	return proc, url
}

// key creates an API key and waits until gateway gw knows it (at most 1 s: the
// propagation bound).
func (e *env) key(gw string, fields map[string]any) string {
	e.t.Helper()
	if fields == nil {
		fields = map[string]any{}
	}
	if _, ok := fields["name"]; !ok {
		fields["name"] = "test"
	}
	k := e.p.CreateKey(e.admin, fields)
	waitStatus(e.t, gw, k, 200, time.Second)
	return k
}

// waitStatus polls GET gw/v1/models with key until it answers want, failing after limit.
func waitStatus(t testing.TB, gw, key string, want int, limit time.Duration) time.Duration {
	t.Helper()
	start := time.Now()
	for {
		req, _ := http.NewRequest("GET", gw+"/v1/models", nil)
		req.Header.Set("Authorization", "Bearer "+key)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode == want {
			return time.Since(start)
		}
		if time.Since(start) > limit {
			t.Fatalf("GET /v1/models: status %d after %v, want %d", resp.StatusCode, limit, want)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// post sends body to url with key and returns status, headers and body.
func post(t testing.TB, url, key, body string, hdr ...string) (int, http.Header, []byte) {
	t.Helper()
	req, err := http.NewRequest("POST", url, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	if key != "" {
		req.Header.Set("Authorization", "Bearer "+key)
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("POST %s: %v", url, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, resp.Header, b
}

type usageJSON struct {
	PromptTokens     int64 `json:"prompt_tokens"`
	CompletionTokens int64 `json:"completion_tokens"`
}

// record is a usage_records row.
type record struct {
	Status              int
	Prompt, Completion  int64
	Estimated, Streamed bool
	Model, Backend      string
	HasTTFT             bool
}

// waitRecord polls the ledger for request id: the gateway's id, or the client's
// X-Request-Id (kept as client_request_id).
func (e *env) waitRecord(id string) record {
	e.t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		var r record
		err := e.db.QueryRow(context.Background(), `SELECT status, prompt_tokens, completion_tokens, estimated, streamed,
			model, backend_id, ttft_ms IS NOT NULL FROM usage_records WHERE request_id = $1 OR client_request_id = $1
			ORDER BY created_at DESC LIMIT 1`, id).
			Scan(&r.Status, &r.Prompt, &r.Completion, &r.Estimated, &r.Streamed, &r.Model, &r.Backend, &r.HasTTFT)
		if err == nil {
			return r
		}
		if time.Now().After(deadline) {
			e.t.Fatalf("no usage record for %s: %v", id, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// events splits an SSE body, checking that every event is exactly "data: …\n\n".
func events(t testing.TB, body []byte) []string {
	t.Helper()
	var out []string
	for len(body) > 0 {
		i := bytes.Index(body, []byte("\n\n"))
		if i < 0 {
			t.Fatalf("unterminated event %q", body)
		}
		ev := string(body[:i])
		body = body[i+2:]
		if !strings.HasPrefix(ev, "data: ") || strings.Contains(ev, "\n") {
			t.Fatalf("event is not `data: …`: %q", ev)
		}
		data := strings.TrimPrefix(ev, "data: ")
		if data != "[DONE]" && !json.Valid([]byte(data)) {
			t.Fatalf("event data is not JSON: %q", data)
		}
		out = append(out, data)
	}
	return out
}

// metric reads one sample value from a /metrics page (line prefix match).
func metric(t testing.TB, base, prefix string) (float64, bool) {
	t.Helper()
	resp, err := http.Get(base + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, prefix+" ") {
			var v float64
			if _, err := fmtSscan(strings.TrimSpace(strings.TrimPrefix(line, prefix)), &v); err == nil {
				return v, true
			}
		}
	}
	return 0, false
}
