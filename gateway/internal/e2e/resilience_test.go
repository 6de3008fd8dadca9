package e2e

import (
	"bufio"
	"context"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

func TestFailoverWhenBackendKilled(t *testing.T) {
	e := newEnv(t, false)
	simA, _ := e.sim("sim-a")
	e.sim("sim-b")
	_, url := e.gateway()
	key := e.key(url, nil)

	var ok, failed atomic.Int64
	var firstErr atomic.Value
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for w := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				body := fmt.Sprintf(`{"model":"sim-chat","messages":[{"role":"user","content":"w%d r%d"}],"max_tokens":4}`, w, i)
				st, _, b := post(t, url+"/v1/chat/completions", key, body)
				if st == 200 {
					ok.Add(1)
				} else {
					failed.Add(1)
					firstErr.CompareAndSwap(nil, fmt.Sprintf("%d %s", st, b))
				}
			}
		}()
	}
	time.Sleep(300 * time.Millisecond) // load on both backends
	simA.Kill()
	time.Sleep(700 * time.Millisecond) // keep the load on while the breaker trips
	close(stop)
	wg.Wait()
	t.Logf("%d requests succeeded, %d failed", ok.Load(), failed.Load())
	if failed.Load() != 0 {
		t.Errorf("%d requests failed after a backend died; first: %v", failed.Load(), firstErr.Load())
	}
	if ok.Load() < 50 {
		t.Errorf("only %d requests ran", ok.Load())
	}
	if v, _ := metric(t, url, `maas_gateway_backend_breaker_state{backend="sim-a"}`); v != 2 {
		t.Errorf("breaker state of sim-a = %v, want 2 (open)", v)
	}
	if v, _ := metric(t, url, `maas_gateway_backend_healthy{backend="sim-a"}`); v != 0 {
		t.Errorf("sim-a still in the pool (healthy = %v)", v)
	}
	if v, _ := metric(t, url, `maas_gateway_backend_healthy{backend="sim-b"}`); v != 1 {
		t.Errorf("sim-b healthy = %v", v)
	}
}

// simRunning sums vllm:num_requests_running on a simulator.
func simRunning(t testing.TB, simURL string) float64 {
	t.Helper()
	resp, err := http.Get(simURL + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	var sum float64
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, "vllm:num_requests_running") {
			var v float64
			f := strings.Fields(line)
			fmtSscan(f[len(f)-1], &v)
			sum += v
		}
	}
	return sum
}

// openStream starts a streamed chat request and returns a reader positioned after the
// first event.
func openStream(t testing.TB, ctx context.Context, url, key, id, body string) (*http.Response, *bufio.Reader) {
	t.Helper()
	req, _ := http.NewRequestWithContext(ctx, "POST", url+"/v1/chat/completions", strings.NewReader(body))
	req.Header.Set("Authorization", "Bearer "+key)
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("X-Request-Id", id)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != 200 {
		t.Fatalf("status %d", resp.StatusCode)
	}
	br := bufio.NewReader(resp.Body)
	for {
		line, err := br.ReadString('\n')
		if err != nil {
			t.Fatal(err)
		}
		if line == "\n" {
			return resp, br
		}
	}
}

func TestClientDisconnectCancelsUpstream(t *testing.T) {
	e := newEnv(t, false)
	_, simURL := e.sim("sim-a", "MAAS_SIM_ITL=10ms", "MAAS_SIM_OUTPUT_TOKENS=300")
	_, url := e.gateway()
	key := e.key(url, nil)

	ctx, cancel := context.WithCancel(context.Background())
	resp, br := openStream(t, ctx, url, key, "e2e-disconnect",
		`{"model":"sim-chat","messages":[{"role":"user","content":"tell me a long story"}],"max_tokens":300,"stream":true}`)
	for range 3 { // a few more events
		for {
			line, err := br.ReadString('\n')
			if err != nil {
				t.Fatal(err)
			}
			if line == "\n" {
				break
			}
		}
	}
	if simRunning(t, simURL) != 1 {
		t.Fatal("the simulator is not running the request")
	}
	start := time.Now()
	cancel()
	resp.Body.Close()
	for simRunning(t, simURL) != 0 {
		if time.Since(start) > 2*time.Second {
			t.Fatal("upstream request still running 2 s after the client left")
		}
		time.Sleep(2 * time.Millisecond)
	}
	took := time.Since(start)
	t.Logf("upstream cancelled %v after the client disconnected", took)
	if took > 100*time.Millisecond {
		t.Errorf("upstream cancelled after %v, want <= 100ms", took)
	}
	// Billing policy: prompt plus the tokens produced until the cancel, never 0, never max_tokens.
	r := e.waitRecord("e2e-disconnect")
	if r.Status != 499 || !r.Estimated || !r.Streamed || r.Prompt == 0 || r.Completion < 4 || r.Completion >= 300 {
		t.Errorf("ledger record %+v", r)
	}
}

func TestSIGTERMLetsStreamsFinish(t *testing.T) {
	e := newEnv(t, false)
	e.sim("sim-a", "MAAS_SIM_ITL=10ms", "MAAS_SIM_OUTPUT_TOKENS=80")
	gw, url := e.gateway()
	key := e.key(url, nil)

	const n = 5
	type result struct {
		events int
		done   bool
		err    error
	}
	results := make([]result, n)
	var opened, wg sync.WaitGroup
	for i := range n {
		opened.Add(1)
		wg.Add(1)
		go func() {
			defer wg.Done()
			resp, br := openStream(t, context.Background(), url, key, fmt.Sprintf("e2e-term-%d", i),
				fmt.Sprintf(`{"model":"sim-chat","messages":[{"role":"user","content":"story %d"}],"max_tokens":80,"stream":true}`, i))
			defer resp.Body.Close()
			opened.Done()
			r := &results[i]
			for {
				line, err := br.ReadString('\n')
				if err != nil {
					r.err = err
					return
				}
				if line == "data: [DONE]\n" {
					r.done = true
				}
				if line == "\n" {
					r.events++
				}
			}
		}()
	}
	opened.Wait()
	gw.Signal(syscall.SIGTERM)
	wg.Wait()
	code, exited := gw.Wait(10 * time.Second)
	if !exited || code != 0 {
		t.Fatalf("gateway exit code %d (exited %v)", code, exited)
	}
	for i, r := range results {
		if !r.done {
			t.Errorf("stream %d ended without [DONE] after %d events (%v)", i, r.events, r.err)
		}
		rec := e.waitRecord(fmt.Sprintf("e2e-term-%d", i))
		if rec.Status != 200 || rec.Completion != 80 || rec.Estimated {
			t.Errorf("stream %d ledger %+v", i, rec)
		}
	}
	if !strings.Contains(gw.Output(), "usage_records_dropped=0") {
		t.Errorf("gateway did not report zero dropped usage records:\n%s", gw.Output())
	}
}
