package sidecar

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"mime/multipart"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/maas-platform/maas/pkg/testenv"
)

// TestE2EFineTunedAdapterServed runs the real processes — control on PostgreSQL, a training
// worker with the simulated trainer, a serving worker with the simulator, a gateway — and
// follows a fine-tuned model from the job's success to a chat completion through the
// gateway (with no gateway change: the serving worker lists the adapter among its models),
// metered under the adapter's name; deleting the model unloads it from the engine.
func TestE2EFineTunedAdapterServed(t *testing.T) {
	p := testenv.NewPlatform(t, testenv.Options{})
	p.StartControl()
	admin := p.AdminToken()
	p.Do("POST", p.ControlURL+"/api/v1/models", admin, map[string]any{"name": "base-chat", "type": "chat"}, 201, nil)
	p.Do("POST", p.ControlURL+"/api/v1/users", admin, map[string]any{"username": "tuner", "password": "Password-123", "roles": []string{"developer"}}, 201, nil)
	dev := p.Login("tuner", "Password-123")
	key := p.CreateKey(dev, map[string]any{"name": "tuner key"})

	simAddr := testenv.FreeAddr(t)
	serving, _ := p.StartWorker([]string{"--engine", "sim"}, "MAAS_SIM_ADDR="+simAddr, "MAAS_SIM_MODELS=base-chat",
		"MAAS_HEARTBEAT_INTERVAL=200ms", "MAAS_SIM_MAX_LORAS=2", "MAAS_ADAPTER_CACHE_DIR="+t.TempDir())
	testenv.Start(t, "worker-train", p.Bin.Worker, []string{"train"}, p.Env("MAAS_TRAINER_COMMAND=sim",
		"MAAS_TRAIN_SIM_STEP_INTERVAL=10ms", "MAAS_TRAINER_POLL_INTERVAL=100ms", "MAAS_TRAINER_ID=e2e-trainer")...)
	gwProc, gw := p.StartGateway("MAAS_ACCESS_LOG=false")
	gw2Proc, gw2 := p.StartGateway("MAAS_ACCESS_LOG=false")
	testenv.WaitHTTP(t, gwProc, gw+"/ready", 30*time.Second)
	testenv.WaitHTTP(t, gw2Proc, gw2+"/ready", 30*time.Second)

	// Upload a dataset and fine-tune base-chat.
	var body bytes.Buffer
	mw := multipart.NewWriter(&body)
	_ = mw.WriteField("purpose", "fine-tune")
	fw, _ := mw.CreateFormFile("file", "train.jsonl")
	_, _ = fw.Write([]byte(strings.Repeat(`{"messages":[{"role":"user","content":"Hi"},{"role":"assistant","content":"Hello"}]}`+"\n", 2)))
	_ = mw.Close()
	req, _ := http.NewRequest("POST", p.ControlURL+"/v1/files", &body)
	req.Header.Set("Authorization", "Bearer "+dev)
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
	p.Do("POST", p.ControlURL+"/v1/fine_tuning/jobs", dev, map[string]any{"model": "base-chat", "training_file": file.ID, "suffix": "e2e",
		"method": map[string]any{"type": "supervised", "supervised": map[string]any{"hyperparameters": map[string]any{"n_epochs": 1, "batch_size": 1}}}}, 200, &job)
	deadline := time.Now().Add(60 * time.Second)
	for job.Status != "succeeded" {
		if job.Status == "failed" || job.Status == "cancelled" || time.Now().After(deadline) {
			t.Fatalf("job %s: %s", job.ID, job.Status)
		}
		time.Sleep(50 * time.Millisecond)
		p.Do("GET", p.ControlURL+"/v1/fine_tuning/jobs/"+job.ID, dev, nil, 200, &job)
	}
	succeeded := time.Now()
	model := *job.FineTunedModel

	// The adapter is placed on the serving worker, loaded in the simulator, and answers a
	// chat completion through the gateway with the owner's key.
	chatBody := map[string]any{"model": model, "messages": []map[string]string{{"role": "user", "content": "Hi"}}, "max_tokens": 3}
	var answer struct {
		Model string `json:"model"`
	}
	var status int
	var raw []byte
	deadline = time.Now().Add(30 * time.Second)
	for {
		status, raw = testenv.DoJSON(t, "POST", gw+"/v1/chat/completions", key, chatBody, &answer)
		if status == 200 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("chat with %s: %d %s\nworker:\n%s", model, status, raw, serving.Output())
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Logf("job success to first answer through the gateway: %v", time.Since(succeeded).Round(time.Millisecond))
	if answer.Model != model {
		t.Errorf("answered as %q, want %q", answer.Model, model)
	}
	if !slices.Contains(simModels(t, "http://"+simAddr), model) {
		t.Errorf("the simulator does not list %s", model)
	}

	// Both gateways answer it, streamed and not: four more requests.
	gateways := []string{gw, gw2}
	for _, g := range gateways {
		for _, stream := range []bool{false, true} {
			chatOnce(t, g, key, model, stream, serving)
		}
	}
	requests := 1 + 2*len(gateways)

	// Metered under the adapter's name: a row per request answered, whichever gateway
	// answered it.
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, p.DBURL)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	deadline = time.Now().Add(15 * time.Second)
	for {
		var n int
		if err := conn.QueryRow(ctx, `SELECT count(*) FROM usage_records WHERE model = $1 AND status = 200`, model).Scan(&n); err != nil {
			t.Fatal(err)
		}
		if n == requests {
			break
		}
		if n > requests || time.Now().After(deadline) {
			t.Fatalf("%d ledger records under the adapter's name, want %d (one per request)", n, requests)
		}
		time.Sleep(50 * time.Millisecond)
	}

	// Deleting the model unloads it from the engine.
	p.Do("DELETE", p.ControlURL+"/api/v1/models/"+model, admin, nil, 204, nil)
	deadline = time.Now().Add(15 * time.Second)
	for slices.Contains(simModels(t, "http://"+simAddr), model) {
		if time.Now().After(deadline) {
			t.Fatalf("%s still loaded after its deletion\nworker:\n%s", model, serving.Output())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// chatOnce asks gateway gw for a chat completion of model, streamed or not, and checks
// the answer is the model's: the JSON's model, or every stream chunk's and a [DONE].
func chatOnce(t *testing.T, gw, key, model string, stream bool, serving *testenv.Proc) {
	t.Helper()
	b, _ := json.Marshal(map[string]any{"model": model, "messages": []map[string]string{{"role": "user", "content": "Hi"}},
		"max_tokens": 3, "stream": stream})
	req, _ := http.NewRequest("POST", gw+"/v1/chat/completions", bytes.NewReader(b))
	req.Header.Set("Authorization", "Bearer "+key)
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("%s stream=%v: %d %s (%v)\nworker:\n%s", gw, stream, resp.StatusCode, raw, err, serving.Output())
	}
	if !stream {
		var a struct {
			Model   string `json:"model"`
			Choices []any  `json:"choices"`
		}
		if err := json.Unmarshal(raw, &a); err != nil || a.Model != model || len(a.Choices) == 0 {
			t.Errorf("%s: answer %s, want one from %s", gw, raw, model)
		}
		return
	}
	chunks, done := 0, false
	for _, line := range strings.Split(string(raw), "\n") {
		data, ok := strings.CutPrefix(strings.TrimSpace(line), "data: ")
		if !ok {
			continue
		}
		if data == "[DONE]" {
			done = true
			continue
		}
		var c struct {
			Model string `json:"model"`
		}
		if err := json.Unmarshal([]byte(data), &c); err != nil || c.Model != model {
			t.Errorf("%s: stream chunk %s, want one from %s", gw, data, model)
		}
		chunks++
	}
	if chunks == 0 || !done {
		t.Errorf("%s: stream of %d chunks, [DONE] %v:\n%s", gw, chunks, done, raw)
	}
}

func simModels(t *testing.T, url string) []string {
	t.Helper()
	var l struct {
		Data []struct {
			ID string `json:"id"`
		} `json:"data"`
	}
	if status, raw := testenv.DoJSON(t, "GET", url+"/v1/models", "", nil, &l); status != 200 {
		t.Fatalf("sim models: %d %s", status, raw)
	}
	var out []string
	for _, m := range l.Data {
		out = append(out, m.ID)
	}
	return out
}
