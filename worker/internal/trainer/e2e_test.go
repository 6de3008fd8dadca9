package trainer

import (
	"bytes"
	"encoding/json"
	"mime/multipart"
	"net/http"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/maas-platform/maas/pkg/testenv"
)

// The real processes: control on PostgreSQL, and `worker train` with the simulated
// trainer, through control's real internal API.

type e2eJob struct {
	ID             string  `json:"id"`
	Status         string  `json:"status"`
	FineTunedModel *string `json:"fine_tuned_model"`
	TrainedTokens  *int64  `json:"trained_tokens"`
	ResultFiles    []string
	Error          *struct {
		Code    string `json:"code"`
		Message string `json:"message"`
	} `json:"error"`
}

func uploadDataset(t *testing.T, p *testenv.Platform, token, content string) string {
	t.Helper()
	var body bytes.Buffer
	w := multipart.NewWriter(&body)
	_ = w.WriteField("purpose", "fine-tune")
	fw, _ := w.CreateFormFile("file", "train.jsonl")
	_, _ = fw.Write([]byte(content))
	_ = w.Close()
	req, _ := http.NewRequest("POST", p.ControlURL+"/v1/files", &body)
	req.Header.Set("Authorization", "Bearer "+token)
	req.Header.Set("Content-Type", w.FormDataContentType())
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var f struct {
		ID string `json:"id"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&f); err != nil || resp.StatusCode != 200 || f.ID == "" {
		t.Fatalf("upload: status %d, %v", resp.StatusCode, err)
	}
	return f.ID
}

func createJob(t *testing.T, p *testenv.Platform, token, fileID string, epochs int) e2eJob {
	t.Helper()
	var j e2eJob
	p.Do("POST", p.ControlURL+"/v1/fine_tuning/jobs", token, map[string]any{"model": "base-chat", "training_file": fileID,
		"suffix": "e2e", "method": map[string]any{"type": "supervised", "supervised": map[string]any{
			"hyperparameters": map[string]any{"n_epochs": epochs, "batch_size": 1}}}}, 200, &j)
	return j
}

func waitJob(t *testing.T, p *testenv.Platform, token, id string, done func(e2eJob) bool) e2eJob {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for {
		var j e2eJob
		p.Do("GET", p.ControlURL+"/v1/fine_tuning/jobs/"+id, token, nil, 200, &j)
		if done(j) {
			return j
		}
		if time.Now().After(deadline) {
			t.Fatalf("job %s: still %s", id, j.Status)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func jobEvents(t *testing.T, p *testenv.Platform, token, id string) []string {
	t.Helper()
	var list struct {
		Data []struct {
			Message string `json:"message"`
		} `json:"data"`
	}
	p.Do("GET", p.ControlURL+"/v1/fine_tuning/jobs/"+id+"/events?limit=100", token, nil, 200, &list)
	var out []string
	for _, e := range list.Data {
		out = append(out, e.Message)
	}
	return out
}

func TestE2ETrainingWorkerWithControl(t *testing.T) {
	p := testenv.NewPlatform(t, testenv.Options{})
	p.StartControl("MAAS_FINETUNE_LEASE=5s")
	admin := p.AdminToken()
	p.Do("POST", p.ControlURL+"/api/v1/models", admin, map[string]any{"name": "base-chat", "type": "chat"}, 201, nil)
	p.Do("POST", p.ControlURL+"/api/v1/users", admin, map[string]any{"username": "trainee", "password": "Password-123", "roles": []string{"developer"}}, 201, nil)
	dev := p.Login("trainee", "Password-123")
	data := strings.Repeat(`{"messages":[{"role":"user","content":"Hi"},{"role":"assistant","content":"Hello there"}]}`+"\n", 4)
	fileID := uploadDataset(t, p, dev, data)

	workerAddr := testenv.FreeAddr(t)
	worker := testenv.Start(t, "worker-train", p.Bin.Worker, []string{"train"}, p.Env("MAAS_TRAINER_COMMAND=sim",
		"MAAS_TRAIN_SIM_STEP_INTERVAL=50ms", "MAAS_TRAINER_POLL_INTERVAL=100ms", "MAAS_TRAINER_ID=e2e-trainer", "MAAS_WORKER_ADDR="+workerAddr)...)
	testenv.WaitHTTP(t, worker, "http://"+workerAddr+"/health", 10*time.Second)

	// A job runs to success: 4 examples × 2 epochs = 8 steps.
	j := createJob(t, p, dev, fileID, 2)
	j = waitJob(t, p, dev, j.ID, func(j e2eJob) bool { return j.Status == "succeeded" || j.Status == "failed" || j.Status == "cancelled" })
	if j.Status != "succeeded" || j.FineTunedModel == nil || !strings.HasPrefix(*j.FineTunedModel, "ft:base-chat:e2e:") ||
		j.TrainedTokens == nil || *j.TrainedTokens != 2*4*3 {
		t.Fatalf("job %+v (error %+v)\nworker:\n%s", j, j.Error, worker.Output())
	}
	events := strings.Join(jobEvents(t, p, dev, j.ID), "\n")
	for _, want := range []string{"Simulated trainer (no model is trained)", "Step 8/8", "started on worker e2e-trainer", "Adapter uploaded"} {
		if !strings.Contains(events, want) {
			t.Errorf("events lack %q:\n%s", want, events)
		}
	}
	var cps struct {
		Data []struct {
			StepNumber int `json:"step_number"`
		} `json:"data"`
	}
	p.Do("GET", p.ControlURL+"/v1/fine_tuning/jobs/"+j.ID+"/checkpoints", dev, nil, 200, &cps)
	if len(cps.Data) != 2 {
		t.Errorf("checkpoints %+v, want one per epoch", cps.Data)
	}

	// A long job cancelled by its owner mid-run: the worker stops its trainer and takes the
	// next job.
	long := createJob(t, p, dev, fileID, 50)
	waitJob(t, p, dev, long.ID, func(j e2eJob) bool { return j.Status == "running" })
	deadline := time.Now().Add(30 * time.Second)
	for !strings.Contains(strings.Join(jobEvents(t, p, dev, long.ID), "\n"), "/200: training loss") {
		if time.Now().After(deadline) {
			t.Fatal("no progress from the long job")
		}
		time.Sleep(50 * time.Millisecond)
	}
	p.Do("POST", p.ControlURL+"/v1/fine_tuning/jobs/"+long.ID+"/cancel", dev, nil, 200, nil)
	next := createJob(t, p, dev, fileID, 1)
	next = waitJob(t, p, dev, next.ID, func(j e2eJob) bool { return j.Status == "succeeded" || j.Status == "failed" })
	if next.Status != "succeeded" {
		t.Errorf("job after the cancelled one: %+v", next)
	}
	if got := waitJob(t, p, dev, long.ID, func(e2eJob) bool { return true }); got.Status != "cancelled" {
		t.Errorf("cancelled job is %s", got.Status)
	}
	if !regexp.MustCompile(`stopped by control.*reason=cancelled`).MatchString(worker.Output()) {
		t.Errorf("the worker did not log the stop:\n%s", worker.Output())
	}
	metrics := getMetrics(t, "http://"+workerAddr+"/metrics")
	for _, want := range []string{`maas_worker_training_jobs_total{result="succeeded"} 2`, `maas_worker_training_jobs_total{result="stopped"} 1`,
		`maas_worker_training_jobs_running 0`, `maas_worker_training_slots 1`} {
		if !strings.Contains(metrics, want) {
			t.Errorf("the worker's /metrics lack %q", want)
		}
	}
	worker.Stop(10 * time.Second)

	// A trainer that crashes: the job fails with its message.
	crashing := testenv.Start(t, "worker-train-crash", p.Bin.Worker, []string{"train"}, p.Env("MAAS_TRAINER_COMMAND=sim",
		"MAAS_TRAIN_SIM_STEP_INTERVAL=10ms", "MAAS_TRAIN_SIM_FAIL_AT_STEP=2", "MAAS_TRAINER_POLL_INTERVAL=100ms")...)
	bad := createJob(t, p, dev, fileID, 1)
	bad = waitJob(t, p, dev, bad.ID, func(j e2eJob) bool { return j.Status == "succeeded" || j.Status == "failed" })
	if bad.Status != "failed" || bad.Error == nil || bad.Error.Code != "training_failed" ||
		!strings.Contains(bad.Error.Message, "simulated trainer failure at step 2") {
		t.Errorf("crashed job %+v (error %+v)\nworker:\n%s", bad, bad.Error, crashing.Output())
	}
	crashing.Stop(10 * time.Second)

	// A worker killed mid-job: its trainer dies with it, the lease expires, and the job
	// completes on another worker — here one that also serves the simulator engine.
	doomed := testenv.Start(t, "worker-train-doomed", p.Bin.Worker, []string{"train"}, p.Env("MAAS_TRAINER_COMMAND=sim",
		"MAAS_TRAIN_SIM_STEP_INTERVAL=100ms", "MAAS_TRAINER_POLL_INTERVAL=100ms", "MAAS_TRAINER_ID=doomed")...)
	orphaned := createJob(t, p, dev, fileID, 20)
	deadline = time.Now().Add(30 * time.Second)
	for !strings.Contains(strings.Join(jobEvents(t, p, dev, orphaned.ID), "\n"), "/80: training loss") {
		if time.Now().After(deadline) {
			t.Fatalf("no progress from the job:\n%s", doomed.Output())
		}
		time.Sleep(50 * time.Millisecond)
	}
	m := regexp.MustCompile(`msg="trainer started".* pid=(\d+)`).FindStringSubmatch(doomed.Output())
	if m == nil {
		t.Fatalf("no trainer pid in the worker's log:\n%s", doomed.Output())
	}
	trainerPID, _ := strconv.Atoi(m[1])
	doomed.Kill()
	waitGone(t, trainerPID)
	_, rescuerURL := p.StartWorker([]string{"--engine", "sim"}, "MAAS_SIM_ADDR="+testenv.FreeAddr(t), "MAAS_TRAINER_COMMAND=sim",
		"MAAS_TRAIN_SIM_STEP_INTERVAL=5ms", "MAAS_TRAINER_POLL_INTERVAL=100ms", "MAAS_TRAINER_ID=rescuer")
	orphaned = waitJob(t, p, dev, orphaned.ID, func(j e2eJob) bool { return j.Status == "succeeded" || j.Status == "failed" })
	claimed := "job=" + orphaned.ID + " worker=rescuer attempt=2"
	if orphaned.Status != "succeeded" || !strings.Contains(p.Control.Output(), claimed) {
		t.Errorf("job of the killed worker: %+v; control's log lacks %q", orphaned, claimed)
	}
	// A worker that serves an engine and trains exports both on its one /metrics.
	served := getMetrics(t, rescuerURL+"/metrics")
	for _, want := range []string{`maas_worker_training_jobs_total{result="succeeded"} 1`, `maas_worker_engine_capacity `} {
		if !strings.Contains(served, want) {
			t.Errorf("the serving and training worker's /metrics lack %q", want)
		}
	}
}

func getMetrics(t *testing.T, url string) string {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var b bytes.Buffer
	if _, err := b.ReadFrom(resp.Body); err != nil {
		t.Fatal(err)
	}
	return b.String()
}

// A training worker with an invalid setting exits 2 and names it.
func TestE2ETrainInvalidConfigExits2(t *testing.T) {
	bin := testenv.Build(t)
	for _, tc := range []struct{ env, want string }{
		{"MAAS_TRAINER_COMMAND=train.py {base_modle}", "MAAS_TRAINER_COMMAND: unknown placeholder {base_modle}"},
		{"MAAS_TRAINER_COMMAND=", "MAAS_TRAINER_COMMAND: is required"},
		{"MAAS_TRAINER_GPUS=-1", "MAAS_TRAINER_GPUS: must not be negative"},
	} {
		p := testenv.Start(t, "worker-train", bin.Worker, []string{"train"},
			"MAAS_INTERNAL_TOKEN=test-internal-token-0123456789", "MAAS_TRAINER_COMMAND=sim", tc.env)
		code, ok := p.Wait(10 * time.Second)
		if !ok || code != 2 || !strings.Contains(p.Output(), tc.want) {
			t.Errorf("%s: exit %d (exited %v), output %q; want 2 with %q", tc.env, code, ok, p.Output(), tc.want)
		}
	}
}
