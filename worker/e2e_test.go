package main

import (
	"bufio"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/maas-platform/maas/pkg/registry"
	"github.com/maas-platform/maas/pkg/testenv"
)

// backend reads one backend from control's admin API; ok is false on 404.
func backend(t *testing.T, p *testenv.Platform, token, id string) (registry.Backend, bool) {
	t.Helper()
	var b registry.Backend
	status, raw := testenv.DoJSON(t, "GET", p.ControlURL+"/api/v1/backends/"+id, token, nil, &b)
	switch status {
	case 200:
		return b, true
	case 404:
		return b, false
	}
	t.Fatalf("get backend %s: %d %s", id, status, raw)
	return b, false
}

func poll(t *testing.T, within time.Duration, what string, cond func() bool) time.Duration {
	t.Helper()
	began := time.Now()
	for !cond() {
		if time.Since(began) > within {
			t.Fatalf("%s: not within %v", what, within)
		}
		time.Sleep(50 * time.Millisecond)
	}
	return time.Since(began)
}

// startStream opens a streamed chat completion on the simulator and returns a reader of
// its events.
func startStream(t *testing.T, simURL string, tokens int) (*http.Response, *bufio.Reader) {
	t.Helper()
	body := `{"model":"sim-chat","messages":[{"role":"user","content":"hi"}],"stream":true,"max_tokens":` + strconv.Itoa(tokens) + `}`
	resp, err := http.Post(simURL+"/v1/chat/completions", "application/json", strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { resp.Body.Close() })
	return resp, bufio.NewReader(resp.Body)
}

func TestE2ESimWorkerLifecycle(t *testing.T) {
	p := testenv.NewPlatform(t, testenv.Options{})
	p.StartControl()
	token := p.AdminToken()
	simAddr := testenv.FreeAddr(t)
	const id = "e2e-sim-1"
	// The simulator runs 8 requests at once; a setting above that does not raise the
	// registered capacity (it was registered as given: 100).
	w, wURL := p.StartWorker([]string{"--engine", "sim"},
		"MAAS_SIM_ADDR="+simAddr, "MAAS_BACKEND_ID="+id, "MAAS_HEARTBEAT_INTERVAL=200ms",
		"MAAS_SIM_ITL=50ms", "MAAS_DRAIN_GRACE=20s", "MAAS_SIM_MAX_CONCURRENCY=8", "MAAS_ENGINE_CAPACITY=100")
	var b registry.Backend
	poll(t, 15*time.Second, "backend registered healthy", func() bool {
		var ok bool
		b, ok = backend(t, p, token, id)
		return ok && b.State == registry.StateHealthy
	})
	if b.URL != "http://"+simAddr || b.EngineKind != registry.KindSim || strings.Join(b.Models, ",") != "sim-chat,sim-embedding" || b.HeartbeatIntervalMS != 200 || b.Capacity != 8 {
		t.Errorf("registered backend %+v", b)
	}
	// Load reaches control through heartbeats: a long stream is running.
	_, r := startStream(t, "http://"+simAddr, 100)
	if _, err := r.ReadString('\n'); err != nil {
		t.Fatal(err)
	}
	poll(t, 5*time.Second, "running load visible", func() bool {
		b, _ = backend(t, p, token, id)
		return b.Running >= 1 && b.KVCacheUsage > 0
	})
	resp, err := http.Get(wURL + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	mb := new(strings.Builder)
	_, _ = bufio.NewReader(resp.Body).WriteTo(mb)
	resp.Body.Close()
	for _, want := range []string{"maas_worker_registered 1", "maas_worker_engine_up 1", "maas_worker_heartbeat_failures_total 0", "maas_worker_engine_running_requests 1", "maas_worker_engine_capacity 8"} {
		if !strings.Contains(mb.String(), want) {
			t.Errorf("worker /metrics lacks %q", want)
		}
	}

	// SIGTERM with a stream in flight: draining, the stream finishes, then deregistered.
	_, r2 := startStream(t, "http://"+simAddr, 30) // ~1.5 s of tokens
	if _, err := r2.ReadString('\n'); err != nil {
		t.Fatal(err)
	}
	w.Signal(syscall.SIGTERM)
	poll(t, 5*time.Second, "draining", func() bool {
		b, _ = backend(t, p, token, id)
		return b.State == registry.StateDraining
	})
	rest := new(strings.Builder)
	if _, err := r2.WriteTo(rest); err != nil {
		t.Fatalf("in-flight stream cut during drain: %v", err)
	}
	if !strings.Contains(rest.String(), "data: [DONE]") {
		t.Errorf("in-flight stream did not finish: %q", rest.String())
	}
	if code, ok := w.Wait(30 * time.Second); !ok || code != 0 {
		t.Fatalf("worker exit %d (exited %v)\n%s", code, ok, w.Output())
	}
	if _, ok := backend(t, p, token, id); ok {
		t.Error("backend still registered after the worker exited")
	}
}

func TestE2EKilledWorkerBecomesUnhealthy(t *testing.T) {
	p := testenv.NewPlatform(t, testenv.Options{})
	p.StartControl()
	token := p.AdminToken()
	const id = "e2e-sim-kill"
	w, _ := p.StartWorker([]string{"--engine", "sim"}, "MAAS_SIM_ADDR="+testenv.FreeAddr(t), "MAAS_BACKEND_ID="+id, "MAAS_HEARTBEAT_INTERVAL=300ms")
	poll(t, 15*time.Second, "registered", func() bool {
		b, ok := backend(t, p, token, id)
		return ok && b.State == registry.StateHealthy
	})
	w.Kill()
	// 3 missed intervals (900ms) plus control's check period (at most 1s).
	took := poll(t, 3*300*time.Millisecond+1500*time.Millisecond, "unhealthy after kill -9", func() bool {
		b, ok := backend(t, p, token, id)
		return !ok || b.State == registry.StateUnhealthy
	})
	t.Logf("unhealthy %v after kill -9", took)
}

func TestE2ESuperviseRestartsEngine(t *testing.T) {
	p := testenv.NewPlatform(t, testenv.Options{})
	p.StartControl()
	token := p.AdminToken()
	simAddr := testenv.FreeAddr(t)
	pidFile := filepath.Join(t.TempDir(), "engine.pid")
	const id = "e2e-supervised"
	// The child is the worker binary's standalone simulator; it writes its pid first. As a
	// "vllm" engine it states no limit (no /server_info), so the capacity is configured.
	cmd := "echo $$ > " + pidFile + "; MAAS_SIM_ADDR=" + simAddr + " exec " + p.Bin.Worker + " sim"
	w, wURL := p.StartWorker([]string{"--engine-cmd", cmd, "--engine-url", "http://" + simAddr, "--engine-kind", "vllm"},
		"MAAS_BACKEND_ID="+id, "MAAS_HEARTBEAT_INTERVAL=200ms", "MAAS_ENGINE_CAPACITY=16")
	poll(t, 15*time.Second, "registered", func() bool {
		b, ok := backend(t, p, token, id)
		return ok && b.State == registry.StateHealthy && b.EngineKind == registry.KindVLLM && b.Capacity == 16
	})
	raw, err := os.ReadFile(pidFile)
	if err != nil {
		t.Fatal(err)
	}
	pid, _ := strconv.Atoi(strings.TrimSpace(string(raw)))
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	poll(t, 15*time.Second, "engine restarted", func() bool {
		resp, err := http.Get(wURL + "/metrics")
		if err != nil {
			return false
		}
		defer resp.Body.Close()
		sb := new(strings.Builder)
		_, _ = bufio.NewReader(resp.Body).WriteTo(sb)
		return strings.Contains(sb.String(), "maas_worker_engine_restarts_total 1")
	})
	poll(t, 15*time.Second, "healthy again", func() bool {
		b, ok := backend(t, p, token, id)
		return ok && b.State == registry.StateHealthy
	})
	// One line when the engine went down, one when it came back with how long it was down.
	poll(t, 5*time.Second, "recovery logged", func() bool {
		return strings.Contains(w.Output(), "engine recovered")
	})
	if n := strings.Count(w.Output(), `msg="engine down`); n != 1 {
		t.Errorf("want one 'engine down' line, got %d:\n%s", n, w.Output())
	}
	if !regexp.MustCompile(`msg="engine recovered[^"]*".* down_for=[0-9.]+m?s`).MatchString(w.Output()) {
		t.Errorf("recovery line without down_for:\n%s", w.Output())
	}
	w.Stop(20 * time.Second)
	if code, ok := w.Wait(time.Second); !ok || code != 0 {
		t.Errorf("worker exit %d\n%s", code, w.Output())
	}
	// The supervised engine is gone with the worker.
	poll(t, 5*time.Second, "engine stopped", func() bool {
		_, err := http.Get("http://" + simAddr + "/health")
		return err != nil
	})
}

func TestE2EInvalidConfigExits2(t *testing.T) {
	bin := testenv.Build(t).Worker
	tests := []struct {
		name string
		args []string
		env  []string
		want string
	}{
		{"no internal token", []string{"--engine", "sim"}, nil, "MAAS_INTERNAL_TOKEN"},
		{"no engine", nil, []string{"MAAS_INTERNAL_TOKEN=tok-0123456789abcdef"}, "MAAS_ENGINE_URL"},
		{"bad kind", []string{"--engine-url", "http://127.0.0.1:1", "--engine-kind", "gpt"}, []string{"MAAS_INTERNAL_TOKEN=tok-0123456789abcdef"}, "MAAS_ENGINE_KIND"},
		{"sim bad output tokens", []string{"sim"}, []string{"MAAS_SIM_OUTPUT_TOKENS=9-3"}, "MAAS_SIM_OUTPUT_TOKENS"},
		// Engines that state their concurrency limit nowhere need MAAS_ENGINE_CAPACITY (the
		// worker used to register 256 for them).
		{"ollama without capacity", []string{"--engine-url", "http://127.0.0.1:1", "--engine-kind", "ollama"}, []string{"MAAS_INTERNAL_TOKEN=tok-0123456789abcdef"}, "MAAS_ENGINE_CAPACITY"},
		{"sim without a limit or capacity", []string{"--engine", "sim"}, []string{"MAAS_INTERNAL_TOKEN=tok-0123456789abcdef", "MAAS_SIM_MAX_CONCURRENCY=0"}, "MAAS_ENGINE_CAPACITY"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := testenv.Start(t, "worker", bin, tt.args, tt.env...)
			code, ok := p.Wait(10 * time.Second)
			if !ok || code != 2 || !strings.Contains(p.Output(), tt.want) {
				t.Errorf("exit %d (exited %v), output:\n%s", code, ok, p.Output())
			}
		})
	}
}

// TestE2EUnknownCapacityRefused: attached to an engine of kind vllm that states no limit
// (the simulator serves no /server_info, as vLLM without VLLM_SERVER_DEV_MODE) and with no
// MAAS_ENGINE_CAPACITY, the worker waits for the engine, then exits naming the setting and
// the engine's flag, without registering (control is never reached: none runs here). It
// exits 2, as for any invalid configuration.
func TestE2EUnknownCapacityRefused(t *testing.T) {
	bin := testenv.Build(t).Worker
	simAddr := testenv.FreeAddr(t)
	sim := testenv.Start(t, "sim", bin, []string{"sim"}, "MAAS_SIM_ADDR="+simAddr)
	testenv.WaitHTTP(t, sim, "http://"+simAddr+"/health", 15*time.Second)
	w := testenv.Start(t, "worker", bin, []string{"--engine-url", "http://" + simAddr, "--engine-kind", "vllm"},
		"MAAS_INTERNAL_TOKEN=tok-0123456789abcdef", "MAAS_CONTROL_URL=http://127.0.0.1:1", "MAAS_WORKER_ADDR="+testenv.FreeAddr(t))
	code, ok := w.Wait(15 * time.Second)
	if !ok || code != 2 || !strings.Contains(w.Output(), "MAAS_ENGINE_CAPACITY") || !strings.Contains(w.Output(), "--max-num-seqs") {
		t.Fatalf("exit %d (exited %v), output:\n%s", code, ok, w.Output())
	}
	if strings.Contains(w.Output(), "registered with control") {
		t.Errorf("registered despite the refusal:\n%s", w.Output())
	}
}
