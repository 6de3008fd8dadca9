package e2e

import (
	"encoding/json"
	"strconv"
	"strings"
	"testing"
)

// TestEngineErrorsReachClientsUnchanged: a real engine's refusal (the simulator's
// X-Sim-Fail, forwarded by this gateway's MAAS_FORWARD_HEADERS) reaches the client as the
// engine sends it to a direct client — status, body, Content-Type, Retry-After — streamed
// or not; a 502, 503 or 504 becomes the gateway's own error. A client's failing requests
// never open the breaker: after 100 of them a good request is served.
func TestEngineErrorsReachClientsUnchanged(t *testing.T) {
	e := newEnv(t, false)
	_, engine := e.sim("sim-err", "MAAS_SIM_FAIL_HEADER=true")
	_, url := e.gateway("MAAS_FORWARD_HEADERS=X-Sim-Fail")
	key := e.key(url, nil)
	waitHealthy(t, url, "sim-chat", 1)
	good := func() {
		t.Helper()
		if st, _, b := post(t, url+"/v1/chat/completions", key, `{"model":"sim-chat","messages":[{"role":"user","content":"hi"}],"max_tokens":3}`); st != 200 {
			t.Fatalf("good request: status %d: %s", st, b)
		}
	}
	for _, stream := range []bool{false, true} {
		for _, status := range []int{400, 401, 404, 422, 429, 500, 502, 503, 504} {
			name := strconv.Itoa(status) + map[bool]string{false: "/unary", true: "/stream"}[stream]
			t.Run(name, func(t *testing.T) {
				body := `{"model":"sim-chat","messages":[{"role":"user","content":"hi"}],"max_tokens":3,"stream":` + strconv.FormatBool(stream) + `}`
				fail := "status=" + strconv.Itoa(status)
				dst, dhdr, db := post(t, engine+"/v1/chat/completions", "", body, "X-Sim-Fail", fail)
				st, hdr, b := post(t, url+"/v1/chat/completions", key, body, "X-Sim-Fail", fail)
				if dst != status {
					t.Fatalf("the engine answered %d directly, want %d: %s", dst, status, db)
				}
				if st != status {
					t.Fatalf("status %d, want %d: %s", st, status, b)
				}
				switch status {
				case 502, 503, 504:
					var env struct {
						Error struct{ Type string } `json:"error"`
					}
					_ = json.Unmarshal(b, &env)
					if want := map[int]string{502: "bad_gateway", 503: "service_unavailable", 504: "timeout_error"}[status]; env.Error.Type != want {
						t.Errorf("error type %q, want the gateway's %q: %s", env.Error.Type, want, b)
					}
				default:
					if string(b) != string(db) {
						t.Errorf("body\n%s\nwant the engine's\n%s", b, db)
					}
					if got, want := hdr.Get("Content-Type"), dhdr.Get("Content-Type"); got != want {
						t.Errorf("Content-Type %q, want %q", got, want)
					}
					if got, want := hdr.Get("Retry-After"), dhdr.Get("Retry-After"); got != want {
						t.Errorf("Retry-After %q, want the engine's %q", got, want)
					}
				}
				good() // a backend failure (5xx) is followed by a success: the breaker stays closed
			})
		}
	}

	for i := range 100 {
		status := []int{400, 404, 422, 429}[i%4]
		body := `{"model":"sim-chat","messages":[{"role":"user","content":"hi"}],"max_tokens":3,"stream":` + strconv.FormatBool(i%2 == 1) + `}`
		if st, _, b := post(t, url+"/v1/chat/completions", key, body, "X-Sim-Fail", "status="+strconv.Itoa(status)); st != status {
			t.Fatalf("failing request %d: status %d, want %d: %s", i, st, status, b)
		}
	}
	good()
	if v, _ := metric(t, url, `maas_gateway_model_healthy_backends{model="sim-chat"}`); v != 1 {
		t.Errorf("healthy backends %v after 100 refused requests", v)
	}
}

// TestContinuousUsageStats: the simulator behaves like vLLM (usage in every chunk with
// stream_options.continuous_usage_stats once include_usage is set, which the gateway sets
// itself for its ledger). A client that did not ask for usage sees none; one that did
// sees it in every chunk; the ledger has the engine's counts either way.
func TestContinuousUsageStats(t *testing.T) {
	e := newEnv(t, false)
	e.sim("sim-cu")
	_, url := e.gateway()
	key := e.key(url, nil)
	for _, tc := range []struct {
		name, options string
		everyChunk    bool
	}{
		{"not asked", `{"continuous_usage_stats":true}`, false},
		{"asked", `{"include_usage":true,"continuous_usage_stats":true}`, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			id := "e2e-cu-" + strings.ReplaceAll(tc.name, " ", "-")
			st, _, b := post(t, url+"/v1/chat/completions", key,
				`{"model":"sim-chat","messages":[{"role":"user","content":"hello there"}],"max_tokens":6,"stream":true,"stream_options":`+tc.options+`}`,
				"X-Request-Id", id)
			if st != 200 {
				t.Fatalf("status %d: %s", st, b)
			}
			withUsage, chunks := 0, 0
			for _, data := range events(t, b) {
				if data == "[DONE]" {
					continue
				}
				chunks++
				var c map[string]json.RawMessage
				_ = json.Unmarshal([]byte(data), &c)
				if u, ok := c["usage"]; ok && string(u) != "null" {
					withUsage++
				}
			}
			if tc.everyChunk && withUsage != chunks || !tc.everyChunk && withUsage != 0 {
				t.Errorf("%d of %d chunks carry usage (every chunk: %v):\n%s", withUsage, chunks, tc.everyChunk, b)
			}
			if r := e.waitRecord(id); r.Status != 200 || r.Estimated || r.Completion != 6 || r.Prompt == 0 {
				t.Errorf("record %+v", r)
			}
		})
	}
}
