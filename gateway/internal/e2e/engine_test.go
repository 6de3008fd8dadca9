package e2e

import (
	"testing"
	"time"
)

// TestEngineSeesAllowListedHeadersOnly: a client's X-Sim-Fail header (the simulator's
// failure injection, honoured here because the simulator is started with it enabled)
// never reaches the engine, unless an operator lists it in MAAS_FORWARD_HEADERS. The
// client's X-Request-Id is kept in the ledger beside the gateway's own id.
func TestEngineSeesAllowListedHeadersOnly(t *testing.T) {
	e := newEnv(t, false)
	e.sim("sim-a", "MAAS_SIM_FAIL_HEADER=true")
	_, url := e.gateway()
	_, fwd := e.gateway("MAAS_FORWARD_HEADERS=X-Sim-Fail")
	key := e.key(url, nil)
	waitStatus(t, fwd, key, 200, 5*time.Second)
	body := `{"model":"sim-chat","messages":[{"role":"user","content":"hi"}],"max_tokens":3}`

	st, hdr, b := post(t, url+"/v1/chat/completions", key, body, "X-Sim-Fail", "status=409", "X-Request-Id", "e2e-hdr-1")
	if st != 200 {
		t.Fatalf("status %d (the failure-injection header reached the engine?): %s", st, b)
	}
	if id := hdr.Get("X-Request-Id"); id == "" || id == "e2e-hdr-1" {
		t.Errorf("response X-Request-Id %q, want the gateway's own", id)
	}
	if r := e.waitRecord("e2e-hdr-1"); r.Status != 200 {
		t.Errorf("record %+v", r)
	}
	if st, _, b := post(t, fwd+"/v1/chat/completions", key, body, "X-Sim-Fail", "status=409"); st != 409 {
		t.Errorf("with MAAS_FORWARD_HEADERS=X-Sim-Fail: status %d, want the injected 409: %s", st, b)
	}
}

// TestHangingEngineFailsOver: an engine that reads non-streamed requests and never
// answers (MAAS_SIM_FAIL=hang: its HTTP server has accepted the request, so the first-byte
// bound is met) is given up after MAAS_RESPONSE_HEADER_TIMEOUT, and every request is
// served by the other engine.
func TestHangingEngineFailsOver(t *testing.T) {
	e := newEnv(t, false)
	e.sim("sim-hang", "MAAS_SIM_FAIL=hang")
	e.sim("sim-ok")
	_, url := e.gateway("MAAS_FIRST_BYTE_TIMEOUT=1s", "MAAS_RESPONSE_HEADER_TIMEOUT=1s")
	key := e.key(url, nil)
	body := `{"model":"sim-chat","messages":[{"role":"user","content":"hi"}],"max_tokens":3}`
	for i := range 8 {
		start := time.Now()
		if st, _, b := post(t, url+"/v1/chat/completions", key, body); st != 200 {
			t.Fatalf("request %d: status %d: %s", i, st, b)
		}
		if d := time.Since(start); d > 4*time.Second {
			t.Errorf("request %d took %v", i, d)
		}
	}
	if n, _ := metric(t, url, `maas_gateway_upstream_errors_total{backend="sim-hang",kind="timeout"}`); n == 0 {
		t.Log("the hanging engine was never picked first (possible, rarely); nothing more to check")
	}
}
