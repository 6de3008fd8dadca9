package e2e

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/maas-platform/maas/pkg/testenv"
)

// simAt starts a worker running the simulator on addr as backend id (as e.sim does, on a
// given address: a restarted engine comes back where it was) and waits for the
// simulator to answer.
func (e *env) simAt(id, addr string, extraEnv ...string) *testenv.Proc {
	e.t.Helper()
	env := append([]string{"MAAS_SIM_ADDR=" + addr, "MAAS_BACKEND_ID=" + id, "MAAS_HEARTBEAT_INTERVAL=200ms",
		"MAAS_SIM_TTFT=5ms", "MAAS_SIM_ITL=1ms", "MAAS_SIM_ITL_JITTER=0s"}, extraEnv...)
	proc, _ := e.p.StartWorker([]string{"--engine", "sim"}, env...)
	testenv.WaitHTTP(e.t, proc, "http://"+addr+"/health", 15*time.Second)
	return proc
}

// waitHealthy waits until gateway gw counts n usable backends for model (its
// maas_gateway_model_healthy_backends gauge).
func waitHealthy(t *testing.T, gw, model string, n float64) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for {
		v, _ := metric(t, gw, `maas_gateway_model_healthy_backends{model="`+model+`"}`)
		if v == n {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("gateway counts %v healthy backends for %s, want %v", v, model, n)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestEngineRestartUnderLoad: the only engine of a model restarts (its process killed and
// started again on the same address) while clients send streamed and non-streamed
// requests in closed loops. Requests are held back only while no engine listens (a model
// with one backend has nowhere else to go); every connection in the gateway's pool is
// then closed by the engine's end. No request fails: each that takes a closed pooled
// connection is sent again on a new one, and no breaker opens.
func TestEngineRestartUnderLoad(t *testing.T) {
	e := newEnv(t, false)
	addr := testenv.FreeAddr(t)
	proc := e.simAt("sim-r", addr)
	waitRegistered(t, e, "sim-r")
	_, url := e.gateway()
	key := e.key(url, nil)
	waitHealthy(t, url, "sim-chat", 1)

	// gate: clients hold it (read) for each request; the restart takes it (write), which
	// waits for the requests in flight and holds back new ones.
	var gate sync.RWMutex
	var stop atomic.Bool
	var mu sync.Mutex
	var results []loadResult
	client := &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: 16}}
	defer client.CloseIdleConnections() // the gateway's shutdown would wait for them
	send := func(stream bool) loadResult {
		body := `{"model":"sim-chat","messages":[{"role":"user","content":"hello there"}],"max_tokens":5}`
		if stream {
			body = strings.Replace(body, `"max_tokens":5`, `"max_tokens":5,"stream":true`, 1)
		}
		req, _ := http.NewRequest("POST", url+"/v1/chat/completions", strings.NewReader(body))
		req.Header.Set("Authorization", "Bearer "+key)
		req.Header.Set("Content-Type", "application/json")
		r := loadResult{at: time.Now()}
		resp, err := client.Do(req)
		if err != nil {
			r.detail = err.Error()
			return r
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		r.ok = resp.StatusCode == 200 && (!stream || bytes.HasSuffix(b, []byte("data: [DONE]\n\n")))
		if !r.ok {
			r.detail = resp.Status + " " + string(b)
		}
		return r
	}
	var wg sync.WaitGroup
	for i := range 8 {
		wg.Go(func() {
			for !stop.Load() {
				gate.RLock()
				r := send(i%2 == 1)
				gate.RUnlock()
				mu.Lock()
				results = append(results, r)
				mu.Unlock()
			}
		})
	}
	count := func() int {
		mu.Lock()
		defer mu.Unlock()
		return len(results)
	}
	waitFor := func(n int) {
		deadline := time.Now().Add(20 * time.Second)
		for count() < n {
			if time.Now().After(deadline) {
				t.Fatalf("%d requests done, want %d", count(), n)
			}
			time.Sleep(5 * time.Millisecond)
		}
	}

	var restarts []time.Time // when each new engine answered
	const rounds = 2
	waitFor(200)
	for range rounds {
		t0 := time.Now()
		gate.Lock()
		t1 := time.Now()
		proc.Kill()
		proc = e.simAt("sim-r", addr)
		t2 := time.Now()
		waitHealthy(t, url, "sim-chat", 1)
		restarts = append(restarts, time.Now())
		gate.Unlock()
		t.Logf("restart: requests in flight done in %v, engine back in %v, gateway saw it %v later",
			t1.Sub(t0).Round(time.Millisecond), t2.Sub(t1).Round(time.Millisecond), time.Since(t2).Round(time.Millisecond))
		waitFor(count() + 100)
		time.Sleep(time.Until(restarts[len(restarts)-1].Add(time.Second))) // a second of load after each restart
	}
	stop.Store(true)
	wg.Wait()

	mu.Lock()
	defer mu.Unlock()
	failed, after := 0, 0
	for _, r := range results {
		if r.at.After(restarts[0]) {
			after++
		}
		if !r.ok {
			failed++
			if failed <= 5 {
				t.Errorf("failed request: %s", r.detail)
			}
		}
	}
	// Time to full service after each restart: from the engine answering again to the
	// last failed request sent before the next restart (or the end), provided a later one
	// succeeded; "not reached" otherwise.
	var full []string
	for k, at := range restarts {
		end := time.Now()
		if k+1 < len(restarts) {
			end = restarts[k+1]
		}
		full = append(full, fullService(results, at, end))
	}
	t.Logf("engine restarted %d times under load (4 streamed + 4 non-streamed clients): %d requests sent (%d after the first restart), %d failed; full service after each restart: %v",
		rounds, len(results), after, failed, full)
	if n, _ := metric(t, url, `maas_gateway_upstream_errors_total{backend="sim-r",kind="stale"}`); n == 0 {
		t.Error("no request met a closed pooled connection: the restart did not exercise the retry")
	} else {
		t.Logf("%v requests met a pooled connection the engine's end had closed and were sent again", n)
	}
}

// loadResult is one request of a load loop.
type loadResult struct {
	at     time.Time // when the request was sent
	ok     bool
	detail string
}

// fullService is the time from start to the last failed request sent before end, when a
// later one succeeded: how long full service took to come back.
func fullService(results []loadResult, start, end time.Time) string {
	var last time.Time
	for _, r := range results {
		if !r.ok && r.at.After(start) && r.at.Before(end) && r.at.After(last) {
			last = r.at
		}
	}
	if last.IsZero() {
		return "0s"
	}
	for _, r := range results {
		if r.ok && r.at.After(last) && r.at.Before(end) {
			return last.Sub(start).Round(time.Millisecond).String()
		}
	}
	return "not reached in " + end.Sub(start).Round(time.Millisecond).String()
}

// waitRegistered waits until control lists backend id as healthy.
func waitRegistered(t *testing.T, e *env, id string) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for {
		var state string
		err := e.db.QueryRow(context.Background(), `SELECT state FROM backends WHERE id = $1`, id).Scan(&state)
		if err == nil && state == "healthy" {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("backend %s not registered: %v %s", id, err, state)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
