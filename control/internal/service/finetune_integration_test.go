package service

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/maas-platform/maas/control/internal/finetune"
	"github.com/maas-platform/maas/pkg/training"
)

// The fine-tuning tests play the training worker themselves, through the internal API
// (pkg/training), against a real control on a real PostgreSQL with River.

func fineTuneOptions(o *Options) {
	o.FineTune.MinLease = 100 * time.Millisecond
	o.FineTune.RescueInterval = 100 * time.Millisecond
	o.FineTune.JobPoll = 50 * time.Millisecond
}

// internal calls a worker endpoint with the internal token and, when set, a lease.
func (tc *testControl) internal(method, path, lease string, body any, want int) response {
	tc.t.Helper()
	h := map[string]string{"Authorization": "Bearer " + testInternalToken}
	if lease != "" {
		h[training.LeaseHeader] = lease
	}
	if _, raw := body.([]byte); raw {
		h["Content-Type"] = "application/x-tar"
	}
	r := tc.do(method, path, body, h)
	if want != 0 && r.Status != want {
		tc.t.Fatalf("%s %s: status %d, want %d: %s", method, path, r.Status, want, r.Body)
	}
	return r
}

func (tc *testControl) claim(worker string, leaseSeconds float64) *training.Task {
	tc.t.Helper()
	r := tc.internal("POST", "/internal/v1/fine_tuning/claim", "", training.ClaimRequest{WorkerID: worker, GPUs: 1, LeaseSeconds: leaseSeconds}, 0)
	switch r.Status {
	case 204:
		return nil
	case 200:
		var task training.Task
		r.decode(tc.t, &task)
		return &task
	}
	tc.t.Fatalf("claim: status %d: %s", r.Status, r.Body)
	return nil
}

func (tc *testControl) job(tok, id string) finetune.Job {
	tc.t.Helper()
	var j finetune.Job
	tc.call("GET", "/v1/fine_tuning/jobs/"+id, tok, nil, 200).decode(tc.t, &j)
	return j
}

func (tc *testControl) waitStatus(tok, id, status string) finetune.Job {
	tc.t.Helper()
	var j finetune.Job
	waitFor(tc.t, 20*time.Second, id+" "+status, func() bool {
		j = tc.job(tok, id)
		return j.Status == status
	})
	return j
}

func (tc *testControl) createJob(tok string, body map[string]any) finetune.Job {
	tc.t.Helper()
	var j finetune.Job
	tc.call("POST", "/v1/fine_tuning/jobs", tok, body, 200).decode(tc.t, &j)
	return j
}

func (tc *testControl) events(tok, id, query string) (list struct {
	Data    []finetune.Event `json:"data"`
	HasMore bool             `json:"has_more"`
	LastID  string           `json:"last_id"`
}) {
	tc.t.Helper()
	tc.call("GET", "/v1/fine_tuning/jobs/"+id+"/events"+query, tok, nil, 200).decode(tc.t, &list)
	return list
}

// fineTuneSetup creates a base model and a developer with a training file.
func fineTuneSetup(t *testing.T, tc *testControl) (admin string, dev testUser, fileID string) {
	t.Helper()
	admin = tc.adminToken()
	tc.call("POST", "/api/v1/models", admin, map[string]any{"name": "base-chat", "type": "chat",
		"input_price_per_million": 1.5, "output_price_per_million": 2}, 201)
	dev = tc.createUser(admin, "developer")
	f := tc.uploadFile(dev.Token, "train.jsonl", "fine-tune", strings.Repeat(chatLine+"\n", 4))
	return admin, dev, f.ID
}

func f64(v float64) *float64 { return &v }

func TestFineTuneLifecycle(t *testing.T) {
	tc := startControl(t, fineTuneOptions)
	admin, dev, trainID := fineTuneSetup(t, tc)
	other := tc.createUser(admin, "developer")

	j := tc.createJob(dev.Token, map[string]any{"model": "base-chat", "training_file": trainID, "suffix": "mine", "seed": 42,
		"method": map[string]any{"type": "supervised", "supervised": map[string]any{"hyperparameters": map[string]any{
			"n_epochs": 2, "batch_size": "auto", "learning_rate_multiplier": 0.5, "lora_rank": 8}}}})
	if !strings.HasPrefix(j.ID, "ftjob-") || j.Object != "fine_tuning.job" || j.Status != "validating_files" ||
		j.Model != "base-chat" || j.TrainingFile != trainID || j.Seed != 42 || j.FineTunedModel != nil || j.FinishedAt != nil ||
		j.Error != nil || j.TrainedTokens != nil || j.UserProvidedSuffix == nil || *j.UserProvidedSuffix != "mine" {
		t.Fatalf("created job %+v", j)
	}
	want := training.Hyperparameters{NEpochs: 2, BatchSize: finetune.DefaultBatchSize, LearningRateMultiplier: 0.5,
		LoRARank: 8, LoRAAlpha: finetune.DefaultLoRAAlpha}
	if j.Hyperparameters != want || j.Method.Type != "supervised" || j.Method.Supervised.Hyperparameters != want {
		t.Fatalf("hyperparameters %+v, method %+v; want %+v", j.Hyperparameters, j.Method, want)
	}

	// Another user sees nothing of it.
	for _, p := range []string{"", "/events", "/checkpoints"} {
		if r := tc.do("GET", "/v1/fine_tuning/jobs/"+j.ID+p, nil, bearer(other.Token)); r.Status != 404 {
			t.Errorf("another user GET %s: status %d, want 404", p, r.Status)
		}
	}
	tc.call("POST", "/v1/fine_tuning/jobs/"+j.ID+"/cancel", other.Token, nil, 404)
	var otherList struct {
		Data []finetune.Job `json:"data"`
	}
	tc.call("GET", "/v1/fine_tuning/jobs", other.Token, nil, 200).decode(t, &otherList)
	if len(otherList.Data) != 0 {
		t.Errorf("another user lists %d jobs", len(otherList.Data))
	}
	tc.call("GET", "/v1/fine_tuning/jobs/"+j.ID, admin, nil, 200) // admins see every job

	tc.waitStatus(dev.Token, j.ID, "queued")
	task := tc.claim("gpu-worker-1", 30)
	if task == nil {
		t.Fatal("claim: no task although a job is queued")
	}
	ftName := "ft:base-chat:mine:" + j.ID
	if task.JobID != j.ID || task.BaseModel != "base-chat" || task.FineTunedModel != ftName || task.Attempt != 1 ||
		task.Hyperparameters != want || task.Seed != 42 || task.LeaseToken == "" || task.HeartbeatIntervalMS != 10000 ||
		task.TrainingFile.ID != trainID || task.ValidationFile != nil {
		t.Fatalf("task %+v", task)
	}
	if tc.claim("gpu-worker-2", 0) != nil {
		t.Fatal("a second claim got the same job")
	}
	if got := tc.job(dev.Token, j.ID); got.Status != "running" {
		t.Fatalf("after claim: status %s", got.Status)
	}
	// The dataset comes through control, only with the lease.
	data := tc.internal("GET", task.TrainingFile.URL, task.LeaseToken, nil, 200)
	if string(data.Body) != strings.Repeat(chatLine+"\n", 4) {
		t.Fatalf("dataset download: %q", data.Body)
	}
	tc.internal("GET", task.TrainingFile.URL, "wrong-lease", nil, 409)

	var hb training.HeartbeatResponse
	tc.internal("POST", "/internal/v1/fine_tuning/jobs/"+j.ID+"/heartbeat", task.LeaseToken, training.HeartbeatRequest{WorkerID: "gpu-worker-1"}, 200).decode(t, &hb)
	if hb.Action != training.ActionContinue || hb.LeaseExpiresAt == 0 {
		t.Fatalf("heartbeat %+v", hb)
	}
	tc.internal("POST", "/internal/v1/fine_tuning/jobs/"+j.ID+"/events", task.LeaseToken, training.EventsRequest{
		Events: []training.Event{{Message: "loading base model"}},
		Metrics: []training.Metric{
			{Step: 1, TotalSteps: 4, TrainLoss: f64(2.5)},
			{Step: 2, TotalSteps: 4, TrainLoss: f64(1.75)},
			// A validation line for a step already reported adds to it, erasing nothing.
			{Step: 2, TotalSteps: 4, ValidLoss: f64(1.9)},
			{Step: 3, TotalSteps: 4, TrainLoss: f64(1.25)},
		}}, 204)
	if est := tc.job(dev.Token, j.ID).EstimatedFinish; est == nil {
		t.Error("a running job with progress has no estimated_finish")
	}
	var cp finetune.Checkpoint
	tc.internal("POST", "/internal/v1/fine_tuning/jobs/"+j.ID+"/checkpoints", task.LeaseToken,
		training.CheckpointRequest{Step: 2, Metrics: training.Metric{TrainLoss: f64(1.75), ValidLoss: f64(1.9)}}, 200).decode(t, &cp)
	// Completing before the adapter is uploaded is refused.
	tc.internal("POST", "/internal/v1/fine_tuning/jobs/"+j.ID+"/complete", task.LeaseToken, training.CompleteRequest{TrainedTokens: 1234}, 400)
	adapter := bytes.Repeat([]byte("adapter-bytes "), 1000)
	tc.internal("PUT", task.AdapterUploadURL, task.LeaseToken, adapter, 200)
	tc.internal("POST", "/internal/v1/fine_tuning/jobs/"+j.ID+"/complete", task.LeaseToken, training.CompleteRequest{TrainedTokens: 1234}, 204)

	done := tc.waitStatus(dev.Token, j.ID, "succeeded")
	if done.FineTunedModel == nil || *done.FineTunedModel != ftName || done.TrainedTokens == nil || *done.TrainedTokens != 1234 ||
		done.FinishedAt == nil || done.Error != nil || done.EstimatedFinish != nil {
		t.Fatalf("succeeded job %+v", done)
	}
	// The worker learns the job is over.
	tc.internal("POST", "/internal/v1/fine_tuning/jobs/"+j.ID+"/heartbeat", task.LeaseToken, nil, 200).decode(t, &hb)
	if hb.Action != training.ActionStop || hb.Reason != "succeeded" {
		t.Errorf("heartbeat after success %+v", hb)
	}

	// The model is registered as an adapter of its base, for its owner only, priced like it.
	var m struct {
		Name                 string  `json:"name"`
		Type                 string  `json:"type"`
		BaseModel            string  `json:"base_model"`
		Visibility           string  `json:"visibility"`
		InputPricePerMillion float64 `json:"input_price_per_million"`
	}
	tc.call("GET", "/api/v1/models/"+ftName, dev.Token, nil, 200).decode(t, &m)
	if m.Name != ftName || m.Type != "chat" || m.BaseModel != "base-chat" || m.Visibility != "restricted" || m.InputPricePerMillion != 1.5 {
		t.Errorf("registered model %+v", m)
	}
	tc.call("GET", "/api/v1/models/"+ftName, other.Token, nil, 404)
	got := tc.internal("GET", "/internal/v1/fine_tuning/jobs/"+j.ID+"/adapter", "", nil, 200)
	if !bytes.Equal(got.Body, adapter) {
		t.Errorf("adapter download: %d bytes, want %d", len(got.Body), len(adapter))
	}

	// The metrics CSV result file: a file of purpose fine-tune-results the owner can read
	// and list.
	if len(done.ResultFiles) != 1 {
		t.Fatalf("result_files %v", done.ResultFiles)
	}
	csv := tc.call("GET", "/v1/files/"+done.ResultFiles[0]+"/content", dev.Token, nil, 200)
	if want := "step,train_loss,train_accuracy,valid_loss,valid_mean_token_accuracy\n1,2.5,,,\n2,1.75,,1.9,\n3,1.25,,,\n"; string(csv.Body) != want {
		t.Errorf("metrics CSV:\n%s\nwant:\n%s", csv.Body, want)
	}
	if l := tc.call("GET", "/v1/files?purpose=fine-tune-results", dev.Token, nil, 200); !bytes.Contains(l.Body, []byte(done.ResultFiles[0])) {
		t.Errorf("the result file is not listed under its purpose: %s", l.Body)
	}

	// Events, newest first, paginated without overlap.
	all := tc.events(dev.Token, j.ID, "?limit=100")
	if len(all.Data) < 8 || all.HasMore {
		t.Fatalf("events: %d, has_more %v", len(all.Data), all.HasMore)
	}
	if all.Data[0].Message != "The job has successfully completed" || all.Data[len(all.Data)-1].Message != "Created fine-tuning job: "+j.ID {
		t.Errorf("events not newest first: first %q, last %q", all.Data[0].Message, all.Data[len(all.Data)-1].Message)
	}
	var metrics []finetune.Event
	for _, e := range all.Data {
		if e.Object != "fine_tuning.job.event" || e.ID == "" || e.CreatedAt == 0 {
			t.Errorf("event %+v", e)
		}
		if e.Type == "metrics" {
			metrics = append(metrics, e)
		}
	}
	if len(metrics) != 4 || metrics[0].Data["step"] != float64(3) || metrics[1].Data["valid_loss"] != 1.9 || metrics[3].Data["train_loss"] != 2.5 {
		t.Errorf("metrics events %+v", metrics)
	}
	var paged []string
	for after := ""; ; {
		q := "?limit=3"
		if after != "" {
			q += "&after=" + after
		}
		page := tc.events(dev.Token, j.ID, q)
		for _, e := range page.Data {
			paged = append(paged, e.ID)
		}
		if !page.HasMore {
			break
		}
		after = page.LastID
	}
	if len(paged) != len(all.Data) {
		t.Fatalf("paged %d events, listed %d", len(paged), len(all.Data))
	}
	for i := range paged {
		if paged[i] != all.Data[i].ID {
			t.Fatalf("page order differs at %d", i)
		}
	}

	var cps struct {
		Data    []finetune.Checkpoint `json:"data"`
		FirstID string                `json:"first_id"`
	}
	tc.call("GET", "/v1/fine_tuning/jobs/"+j.ID+"/checkpoints", dev.Token, nil, 200).decode(t, &cps)
	if len(cps.Data) != 1 || cps.Data[0].ID != cp.ID || cps.Data[0].StepNumber != 2 || cps.FirstID != cp.ID ||
		cps.Data[0].FineTunedModelCheckpoint != ftName+":ckpt-step-2" || cps.Data[0].Metrics["valid_loss"] != 1.9 ||
		cps.Data[0].FineTuningJobID != j.ID || cps.Data[0].Object != "fine_tuning.job.checkpoint" {
		t.Errorf("checkpoints %+v", cps)
	}

	// Each transition is stored with its time.
	rows, err := tc.Pool.Query(context.Background(), `SELECT status FROM fine_tuning_job_transitions WHERE job_id = $1 ORDER BY seq`, j.ID)
	if err != nil {
		t.Fatal(err)
	}
	var states []string
	for rows.Next() {
		var s string
		if err := rows.Scan(&s); err != nil {
			t.Fatal(err)
		}
		states = append(states, s)
	}
	rows.Close()
	if fmt.Sprint(states) != "[validating_files queued running succeeded]" {
		t.Errorf("transitions %v", states)
	}
	// Operators see the jobs by status.
	if m := tc.call("GET", "/metrics", "", nil, 200); !strings.Contains(string(m.Body), `maas_control_finetune_jobs{status="succeeded"} 1`) ||
		!strings.Contains(string(m.Body), `maas_control_finetune_jobs{status="queued"} 0`) {
		t.Errorf("metrics lack the jobs by status")
	}
	// Finished jobs cannot be cancelled.
	if e := tc.call("POST", "/v1/fine_tuning/jobs/"+j.ID+"/cancel", dev.Token, nil, 400).apiErr(t); !strings.Contains(e.Error.Message, "succeeded") {
		t.Errorf("cancel a finished job: %+v", e)
	}
}

func TestFineTuneCancelLeasesAndFailures(t *testing.T) {
	tc := startControl(t, func(o *Options) {
		fineTuneOptions(o)
		o.FineTune.MaxAttempts = 2
		o.FineTune.MaxActiveJobs = 2
	})
	_, dev, trainID := fineTuneSetup(t, tc)
	body := map[string]any{"model": "base-chat", "training_file": trainID}
	path := func(id, what string) string { return "/internal/v1/fine_tuning/jobs/" + id + "/" + what }

	t.Run("cancel queued", func(t *testing.T) {
		j := tc.createJob(dev.Token, body)
		tc.waitStatus(dev.Token, j.ID, "queued")
		var c finetune.Job
		tc.call("POST", "/v1/fine_tuning/jobs/"+j.ID+"/cancel", dev.Token, nil, 200).decode(t, &c)
		if c.Status != "cancelled" || c.FinishedAt == nil {
			t.Fatalf("cancelled job %+v", c)
		}
		if task := tc.claim("w1", 0); task != nil {
			t.Fatalf("claimed a cancelled job: %+v", task)
		}
	})

	t.Run("cancel running", func(t *testing.T) {
		j := tc.createJob(dev.Token, body)
		tc.waitStatus(dev.Token, j.ID, "queued")
		task := tc.claim("w1", 0)
		if task == nil || task.JobID != j.ID {
			t.Fatalf("claim %+v", task)
		}
		tc.call("POST", "/v1/fine_tuning/jobs/"+j.ID+"/cancel", dev.Token, nil, 200)
		var hb training.HeartbeatResponse
		tc.internal("POST", path(j.ID, "heartbeat"), task.LeaseToken, nil, 200).decode(t, &hb)
		if hb.Action != training.ActionStop || hb.Reason != "cancelled" {
			t.Fatalf("heartbeat of a cancelled job: %+v", hb)
		}
		e := tc.internal("POST", path(j.ID, "events"), task.LeaseToken, training.EventsRequest{Events: []training.Event{{Message: "late"}}}, 409).apiErr(t)
		if e.Error.Code == nil || *e.Error.Code != training.LeaseLostCode {
			t.Errorf("events after cancel: %+v", e)
		}
		tc.internal("PUT", path(j.ID, "adapter"), task.LeaseToken, []byte("x"), 409)
		if got := tc.job(dev.Token, j.ID); got.Status != "cancelled" {
			t.Errorf("status %s", got.Status)
		}
	})

	t.Run("lease expiry re-queues, then the job completes on another worker", func(t *testing.T) {
		j := tc.createJob(dev.Token, body)
		tc.waitStatus(dev.Token, j.ID, "queued")
		first := tc.claim("dies", 0.3)
		if first == nil || first.JobID != j.ID {
			t.Fatalf("claim %+v", first)
		}
		tc.internal("POST", path(j.ID, "events"), first.LeaseToken, training.EventsRequest{Metrics: []training.Metric{{Step: 1, TotalSteps: 9, TrainLoss: f64(3)}}}, 204)
		// No heartbeat: River's periodic rescue re-queues it.
		tc.waitStatus(dev.Token, j.ID, "queued")
		second := tc.claim("survives", 30)
		if second == nil || second.JobID != j.ID || second.Attempt != 2 || second.LeaseToken == first.LeaseToken {
			t.Fatalf("second claim %+v", second)
		}
		var hb training.HeartbeatResponse
		tc.internal("POST", path(j.ID, "heartbeat"), first.LeaseToken, nil, 200).decode(t, &hb)
		if hb.Action != training.ActionStop || hb.Reason != training.LeaseLostCode {
			t.Fatalf("heartbeat with the lost lease: %+v", hb)
		}
		tc.internal("POST", path(j.ID, "events"), second.LeaseToken, training.EventsRequest{Metrics: []training.Metric{{Step: 1, TotalSteps: 1, TrainLoss: f64(0.5)}}}, 204)
		tc.internal("PUT", second.AdapterUploadURL, second.LeaseToken, []byte("adapter"), 200)
		tc.internal("POST", path(j.ID, "complete"), second.LeaseToken, training.CompleteRequest{TrainedTokens: 10}, 204)
		done := tc.waitStatus(dev.Token, j.ID, "succeeded")
		if done.FineTunedModel == nil || *done.FineTunedModel != "ft:base-chat::"+j.ID {
			t.Errorf("fine_tuned_model %v", done.FineTunedModel)
		}
		ev := tc.events(dev.Token, j.ID, "?limit=100")
		requeued := false
		for _, e := range ev.Data {
			requeued = requeued || (e.Level == "warn" && strings.Contains(e.Message, "re-queued"))
		}
		if !requeued {
			t.Error("no event says the job was re-queued")
		}
		// The lost attempt's metrics are not in the result.
		var steps []int
		rows, _ := tc.Pool.Query(context.Background(), `SELECT step FROM fine_tuning_metrics WHERE job_id = $1 ORDER BY step`, j.ID)
		for rows.Next() {
			var s int
			rows.Scan(&s) //nolint:errcheck
			steps = append(steps, s)
		}
		rows.Close()
		if fmt.Sprint(steps) != "[1]" {
			t.Errorf("metrics steps %v", steps)
		}
	})

	t.Run("lease lost on every attempt fails the job", func(t *testing.T) {
		j := tc.createJob(dev.Token, body)
		tc.waitStatus(dev.Token, j.ID, "queued")
		for attempt := 1; attempt <= 2; attempt++ {
			task := tc.claim("flaky", 0.2)
			if task == nil || task.Attempt != attempt {
				t.Fatalf("claim %d: %+v", attempt, task)
			}
			if attempt == 1 {
				tc.waitStatus(dev.Token, j.ID, "queued")
			}
		}
		failed := tc.waitStatus(dev.Token, j.ID, "failed")
		if failed.Error == nil || failed.Error.Code != "worker_lost" || !strings.Contains(failed.Error.Message, "2 attempts") {
			t.Fatalf("error %+v", failed.Error)
		}
	})

	t.Run("trainer failure", func(t *testing.T) {
		j := tc.createJob(dev.Token, body)
		tc.waitStatus(dev.Token, j.ID, "queued")
		task := tc.claim("w1", 0)
		tc.internal("POST", path(j.ID, "fail"), task.LeaseToken, training.FailRequest{Message: "CUDA out of memory at step 3"}, 204)
		failed := tc.job(dev.Token, j.ID)
		if failed.Status != "failed" || failed.Error == nil || failed.Error.Code != "training_failed" ||
			failed.Error.Message != "CUDA out of memory at step 3" || failed.FinishedAt == nil {
			t.Fatalf("failed job %+v error %+v", failed, failed.Error)
		}
		ev := tc.events(dev.Token, j.ID, "?limit=1")
		if len(ev.Data) != 1 || ev.Data[0].Level != "error" || !strings.Contains(ev.Data[0].Message, "CUDA out of memory") || !ev.HasMore {
			t.Errorf("newest event %+v", ev)
		}
	})

	t.Run("active job limit", func(t *testing.T) {
		a := tc.createJob(dev.Token, body)
		tc.createJob(dev.Token, body)
		e := tc.call("POST", "/v1/fine_tuning/jobs", dev.Token, body, 429).apiErr(t)
		if e.Error.Code == nil || *e.Error.Code != "too_many_active_jobs" {
			t.Errorf("limit error %+v", e)
		}
		tc.call("POST", "/v1/fine_tuning/jobs/"+a.ID+"/cancel", dev.Token, nil, 200)
		tc.createJob(dev.Token, body)
	})
}

func TestFineTuneCreateValidation(t *testing.T) {
	tc := startControl(t, fineTuneOptions)
	admin, dev, trainID := fineTuneSetup(t, tc)
	other := tc.createUser(admin, "developer")
	othersFile := tc.uploadFile(other.Token, "theirs.jsonl", "fine-tune", chatLine+"\n")
	notTuning := tc.uploadFile(dev.Token, "notes.jsonl", "user_data", "{}\n")
	tc.call("POST", "/api/v1/models", admin, map[string]any{"name": "secret-chat", "type": "chat", "visibility": "restricted"}, 201)
	tc.call("POST", "/api/v1/models", admin, map[string]any{"name": "embedder", "type": "embedding"}, 201)

	hyper := func(h map[string]any) map[string]any {
		return map[string]any{"model": "base-chat", "training_file": trainID,
			"method": map[string]any{"type": "supervised", "supervised": map[string]any{"hyperparameters": h}}}
	}
	const hp = "method.supervised.hyperparameters."
	for _, c := range []struct {
		name  string
		body  any
		param string
	}{
		{"n_epochs zero", hyper(map[string]any{"n_epochs": 0}), hp + "n_epochs"},
		{"n_epochs fractional", hyper(map[string]any{"n_epochs": 1.5}), hp + "n_epochs"},
		{"batch_size too large", hyper(map[string]any{"batch_size": 100000}), hp + "batch_size"},
		{"learning rate negative", hyper(map[string]any{"learning_rate_multiplier": -1}), hp + "learning_rate_multiplier"},
		{"lora_rank not a number", hyper(map[string]any{"lora_rank": "big"}), hp + "lora_rank"},
		{"lora_alpha too large", hyper(map[string]any{"lora_alpha": 5000}), hp + "lora_alpha"},
		{"top-level hyperparameters", map[string]any{"model": "base-chat", "training_file": trainID,
			"hyperparameters": map[string]any{"n_epochs": -3}}, "hyperparameters.n_epochs"},
		{"unknown hyperparameter", hyper(map[string]any{"warmup": 3}), "warmup"},
		{"dpo", map[string]any{"model": "base-chat", "training_file": trainID, "method": map[string]any{"type": "dpo"}}, "method.type"},
		{"no model", map[string]any{"training_file": trainID}, "model"},
		{"unknown model", map[string]any{"model": "nope", "training_file": trainID}, "model"},
		{"invisible model", map[string]any{"model": "secret-chat", "training_file": trainID}, "model"},
		{"embedding model", map[string]any{"model": "embedder", "training_file": trainID}, "model"},
		{"no training file", map[string]any{"model": "base-chat"}, "training_file"},
		{"someone else's file", map[string]any{"model": "base-chat", "training_file": othersFile.ID}, "training_file"},
		{"wrong purpose", map[string]any{"model": "base-chat", "training_file": notTuning.ID}, "training_file"},
		{"missing validation file", map[string]any{"model": "base-chat", "training_file": trainID, "validation_file": "file-missing"}, "validation_file"},
		{"bad suffix", map[string]any{"model": "base-chat", "training_file": trainID, "suffix": "no spaces"}, "suffix"},
	} {
		t.Run(c.name, func(t *testing.T) {
			e := tc.call("POST", "/v1/fine_tuning/jobs", dev.Token, c.body, 400).apiErr(t)
			if e.Error.Param == nil || *e.Error.Param != c.param {
				t.Errorf("param %v, want %s: %s", e.Error.Param, c.param, e.Error.Message)
			}
		})
	}
	// Nothing was created.
	var n int
	if err := tc.Pool.QueryRow(context.Background(), `SELECT count(*) FROM fine_tuning_jobs`).Scan(&n); err != nil || n != 0 {
		t.Fatalf("jobs after refused creations: %d (%v)", n, err)
	}

	// Lists are paginated newest first.
	var ids []string
	for range 3 {
		ids = append(ids, tc.createJob(dev.Token, map[string]any{"model": "base-chat", "training_file": trainID}).ID)
	}
	var page struct {
		Data    []finetune.Job `json:"data"`
		HasMore bool           `json:"has_more"`
	}
	tc.call("GET", "/v1/fine_tuning/jobs?limit=2", dev.Token, nil, 200).decode(t, &page)
	if len(page.Data) != 2 || !page.HasMore || page.Data[0].ID != ids[2] || page.Data[1].ID != ids[1] {
		t.Fatalf("first page %+v", page)
	}
	tc.call("GET", "/v1/fine_tuning/jobs?limit=2&after="+ids[1], dev.Token, nil, 200).decode(t, &page)
	if len(page.Data) != 1 || page.HasMore || page.Data[0].ID != ids[0] {
		t.Fatalf("second page %+v", page)
	}
	raw := tc.call("GET", "/v1/fine_tuning/jobs/"+ids[0], dev.Token, nil, 200).Body
	var shape map[string]json.RawMessage
	if err := json.Unmarshal(raw, &shape); err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"object", "id", "model", "created_at", "finished_at", "fine_tuned_model", "organization_id",
		"result_files", "status", "validation_file", "training_file", "hyperparameters", "trained_tokens", "error", "seed",
		"estimated_finish", "method", "integrations", "metadata"} {
		if _, ok := shape[k]; !ok {
			t.Errorf("job object lacks %q: %s", k, raw)
		}
	}
}
