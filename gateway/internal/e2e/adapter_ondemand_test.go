package e2e

import (
	"bytes"
	"encoding/json"
	"mime/multipart"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/maas-platform/maas/pkg/testenv"
)

// TestAdapterLoadedOnDemand runs control, a simulated-trainer worker, a simulator with one
// LoRA slot and a gateway: two adapters of one base are trained, the second evicts the
// first, and a request for the first through the gateway loads it back (the gateway asks
// control's demand hook, control places it at the backend's next heartbeat, the worker
// loads it, the gateway's snapshot shows it) and is answered within the bound.
func TestAdapterLoadedOnDemand(t *testing.T) {
	e := newEnv(t, false)
	p := e.p
	p.Do("POST", p.ControlURL+"/api/v1/models", e.admin, map[string]any{"name": "od-base", "type": "chat"}, 201, nil)
	simAddr := testenv.FreeAddr(t)
	sim, _ := p.StartWorker([]string{"--engine", "sim"}, "MAAS_SIM_ADDR="+simAddr, "MAAS_SIM_MODELS=od-base",
		"MAAS_BACKEND_ID=od-sim", "MAAS_HEARTBEAT_INTERVAL=200ms", "MAAS_SIM_MAX_LORAS=1", "MAAS_ADAPTER_CACHE_DIR="+t.TempDir(),
		"MAAS_SIM_TTFT=5ms", "MAAS_SIM_ITL=1ms", "MAAS_SIM_ITL_JITTER=0s")
	testenv.Start(t, "worker-train", p.Bin.Worker, []string{"train"}, p.Env("MAAS_TRAINER_COMMAND=sim",
		"MAAS_TRAIN_SIM_STEP_INTERVAL=5ms", "MAAS_TRAINER_POLL_INTERVAL=100ms", "MAAS_TRAINER_ID=od-trainer")...)
	_, gw := e.gateway("MAAS_ADAPTER_LOAD_TIMEOUT=15s")
	key := e.key(gw, nil)
	simURL := "http://" + simAddr

	first := fineTune(t, p, e.admin, "first")
	waitLoaded(t, sim, simURL, first, true)
	second := fineTune(t, p, e.admin, "second")
	waitLoaded(t, sim, simURL, second, true)
	waitLoaded(t, sim, simURL, first, false) // one slot: the second evicted the first
	// The gateway's snapshot no longer routes the first adapter anywhere.
	gauge := `maas_gateway_model_healthy_backends{model="` + first + `"}`
	deadline := time.Now().Add(10 * time.Second)
	for {
		if v, ok := metric(t, gw, gauge); ok && v == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the gateway still routes %s", first)
		}
		time.Sleep(20 * time.Millisecond)
	}

	body := `{"model":"` + first + `","messages":[{"role":"user","content":"Hi"}],"max_tokens":3}`
	start := time.Now()
	status, _, raw := post(t, gw+"/v1/chat/completions", key, body)
	took := time.Since(start)
	if status != 200 {
		t.Fatalf("chat with the evicted adapter: %d %s\nworker:\n%s", status, raw, sim.Output())
	}
	var answer struct {
		Model string `json:"model"`
	}
	_ = json.Unmarshal(raw, &answer)
	if answer.Model != first {
		t.Errorf("answered as %q, want %q", answer.Model, first)
	}
	// Target: 2 s plus the engine's own load time (the simulator's is nil); the
	// heartbeat here is 200 ms.
	t.Logf("cold on-demand load of an evicted adapter, request to answer: %v", took.Round(time.Millisecond))
	if took > 2*time.Second {
		t.Errorf("cold on-demand load took %v, want ≤ 2 s", took)
	}
	if v, _ := metric(t, gw, `maas_gateway_adapter_waits_total{result="loaded"}`); v != 1 {
		t.Errorf("loaded waits %v, want 1", v)
	}
	waitLoaded(t, sim, simURL, second, false) // and the first evicted the second in turn

	// A model that is no adapter and has no backend is refused at once, the hook untouched.
	p.Do("POST", p.ControlURL+"/api/v1/models", e.admin, map[string]any{"name": "od-none", "type": "chat"}, 201, nil)
	deadline = time.Now().Add(5 * time.Second)
	for {
		status, _, raw = post(t, gw+"/v1/chat/completions", key, `{"model":"od-none","messages":[{"role":"user","content":"Hi"}]}`)
		if status == 503 && strings.Contains(string(raw), "no_backend") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("model without backend: %d %s", status, raw)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// fineTune uploads a small dataset, fine-tunes od-base with suffix and returns the model
// once the job succeeded.
func fineTune(t *testing.T, p *testenv.Platform, token, suffix string) string {
	t.Helper()
	var body bytes.Buffer
	mw := multipart.NewWriter(&body)
	_ = mw.WriteField("purpose", "fine-tune")
	fw, _ := mw.CreateFormFile("file", "train.jsonl")
	_, _ = fw.Write([]byte(strings.Repeat(`{"messages":[{"role":"user","content":"Hi"},{"role":"assistant","content":"Hello"}]}`+"\n", 2)))
	_ = mw.Close()
	req, _ := http.NewRequest("POST", p.ControlURL+"/v1/files", &body)
	req.Header.Set("Authorization", "Bearer "+token)
	req.Header.Set("Content-Type", mw.FormDataContentType())
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	var file struct {
		ID string `json:"id"`
	}
	_ = json.NewDecoder(resp.Body).Decode(&file)
	resp.Body.Close()
	var job struct {
		ID             string  `json:"id"`
		Status         string  `json:"status"`
		FineTunedModel *string `json:"fine_tuned_model"`
	}
	p.Do("POST", p.ControlURL+"/v1/fine_tuning/jobs", token, map[string]any{"model": "od-base", "training_file": file.ID, "suffix": suffix,
		"method": map[string]any{"type": "supervised", "supervised": map[string]any{"hyperparameters": map[string]any{"n_epochs": 1, "batch_size": 1}}}}, 200, &job)
	deadline := time.Now().Add(60 * time.Second)
	for job.Status != "succeeded" {
		if job.Status == "failed" || job.Status == "cancelled" || time.Now().After(deadline) {
			t.Fatalf("job %s: %s", job.ID, job.Status)
		}
		time.Sleep(50 * time.Millisecond)
		p.Do("GET", p.ControlURL+"/v1/fine_tuning/jobs/"+job.ID, token, nil, 200, &job)
	}
	return *job.FineTunedModel
}

// waitLoaded waits until the simulator lists model (loaded) or not.
func waitLoaded(t *testing.T, w *testenv.Proc, simURL, model string, loaded bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		var l struct {
			Data []struct {
				ID string `json:"id"`
			} `json:"data"`
		}
		status, raw := testenv.DoJSON(t, "GET", simURL+"/v1/models", "", nil, &l)
		if status != 200 {
			t.Fatalf("sim models: %d %s", status, raw)
		}
		has := slices.ContainsFunc(l.Data, func(m struct {
			ID string `json:"id"`
		}) bool {
			return m.ID == model
		})
		if has == loaded {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s loaded=%v, want %v\nworker:\n%s", model, has, loaded, w.Output())
		}
		time.Sleep(20 * time.Millisecond)
	}
}
