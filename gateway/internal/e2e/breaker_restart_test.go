package e2e

import (
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/maas-platform/maas/pkg/testenv"
)

// TestServiceResumesWhenEngineListensAgain: the only engine of a model is killed; the
// requests sent while nothing listens are refused and open its breaker. Once the engine
// listens again the model serves at once (13 ms measured), not after the breaker's 5 s
// open time (the breaker probes the port of a backend that refused connections).
func TestServiceResumesWhenEngineListensAgain(t *testing.T) {
	e := newEnv(t, false)
	addr := testenv.FreeAddr(t)
	proc := e.simAt("sim-b", addr)
	waitRegistered(t, e, "sim-b")
	_, url := e.gateway()
	key := e.key(url, nil)
	waitHealthy(t, url, "sim-chat", 1)
	client := &http.Client{Timeout: 10 * time.Second}
	defer client.CloseIdleConnections()
	send := func() (int, string) {
		req, _ := http.NewRequest("POST", url+"/v1/chat/completions",
			strings.NewReader(`{"model":"sim-chat","messages":[{"role":"user","content":"hello"}],"max_tokens":3}`))
		req.Header.Set("Authorization", "Bearer "+key)
		resp, err := client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		return resp.StatusCode, string(b)
	}
	if st, b := send(); st != 200 {
		t.Fatalf("before the restart: %d %s", st, b)
	}

	proc.Kill()
	// Requests while nothing listens: refused, until the breaker opens.
	deadline := time.Now().Add(10 * time.Second)
	for {
		send()
		if v, _ := metric(t, url, `maas_gateway_backend_breaker_state{backend="sim-b"}`); v == 2 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the breaker did not open while the engine was away")
		}
	}
	proc = e.simAt("sim-b", addr) // returns once the engine answers on addr
	back := time.Now()
	defer proc.Kill()

	// Full service: the first 200, and 20 in a row after it.
	var first time.Duration
	ok := 0
	for ok < 20 {
		st, b := send()
		switch {
		case st == 200:
			if ok == 0 {
				first = time.Since(back)
			}
			ok++
		case ok > 0:
			t.Fatalf("request failed after service resumed: %d %s", st, b)
		case time.Since(back) > 10*time.Second:
			t.Fatalf("no service 10 s after the engine listened again: %d %s", st, b)
		default:
			time.Sleep(5 * time.Millisecond)
		}
	}
	t.Logf("full service %v after the engine listened again", first.Round(time.Millisecond))
	// Measured: 13 ms (4.95 s before the probe: the breaker's open time). The bound leaves
	// room for a busy machine (the worker's registration reaching the gateway included).
	if first > 2*time.Second {
		t.Errorf("full service took %v after the engine listened again, want ≤ 2 s (the breaker's open time is 5 s)", first)
	}
}
