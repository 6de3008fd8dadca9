package gosdk

import (
	"context"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/openai/openai-go/v3"
	"github.com/openai/openai-go/v3/option"
	"github.com/openai/openai-go/v3/packages/param"

	"github.com/maas-platform/maas/pkg/testenv"
)

// ftBase is the base model the fine-tuning tests train on: served by a simulator with LoRA
// slots, so the fine-tuned adapter is loaded beside it.
const ftBase = "ft-base"

// TestFineTuningWithOpenAIGo follows a fine-tuning job with the official Go client through a
// real gateway: control on PostgreSQL, `worker train` with the SIMULATED trainer, a
// simulator worker serving the base model with LoRA slots. Upload, create, retrieve, list,
// events, checkpoints, success, chat with the new model (metered under its name), another
// user kept out, a running job cancelled, and a crashing trainer failing its job.
func TestFineTuningWithOpenAIGo(t *testing.T) {
	began := time.Now()
	p := testenv.NewPlatform(t, testenv.Options{})
	p.StartControl("MAAS_FILES_DIR=" + t.TempDir())
	admin := p.AdminToken()
	p.Do("POST", p.ControlURL+"/api/v1/models", admin, map[string]any{"name": ftBase, "type": "chat"}, 201, nil)
	keys := map[string]string{}
	for _, who := range []string{"owner", "other"} {
		p.Do("POST", p.ControlURL+"/api/v1/users", admin, map[string]any{"username": "ft_" + who, "password": "Password-123", "roles": []string{"developer"}}, 201, nil)
		keys[who] = p.CreateKey(p.Login("ft_"+who, "Password-123"), map[string]any{"name": "ft-" + who})
	}
	p.StartWorker([]string{"--engine", "sim"}, "MAAS_SIM_ADDR="+testenv.FreeAddr(t), "MAAS_SIM_MODELS="+ftBase,
		"MAAS_HEARTBEAT_INTERVAL=200ms", "MAAS_SIM_MAX_LORAS=2", "MAAS_ADAPTER_CACHE_DIR="+t.TempDir(),
		"MAAS_SIM_TTFT=5ms", "MAAS_SIM_ITL=1ms", "MAAS_SIM_ITL_JITTER=0s", "MAAS_SIM_OUTPUT_TOKENS=8")
	trainerEnv := []string{"MAAS_TRAINER_COMMAND=sim", "MAAS_TRAIN_SIM_STEP_INTERVAL=10ms", "MAAS_TRAINER_POLL_INTERVAL=100ms"}
	trainer := testenv.Start(t, "worker-train", p.Bin.Worker, []string{"train"},
		p.Env(append(trainerEnv, "MAAS_TRAINER_ID=gosdk-trainer", "MAAS_WORKER_ADDR="+testenv.FreeAddr(t))...)...)
	gwProc, gw := p.StartGateway("MAAS_ACCESS_LOG=false")
	testenv.WaitHTTP(t, gwProc, gw+"/ready", 30*time.Second)

	clients := map[string]openai.Client{}
	for who, key := range keys {
		clients[who] = openai.NewClient(option.WithBaseURL(gw+"/v1/"), option.WithAPIKey(key),
			option.WithMaxRetries(0), option.WithRequestTimeout(30*time.Second))
	}
	c, other := clients["owner"], clients["other"]
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	// The gateway learns new keys within a second: retry the first call of each until it does.
	example := `{"messages":[{"role":"system","content":"You are terse."},{"role":"user","content":"Hi"},{"role":"assistant","content":"Hello!"}]}` + "\n"
	upload := func(content, name string) *openai.FileObject {
		t.Helper()
		f, err := c.Files.New(ctx, openai.FileNewParams{File: openai.File(strings.NewReader(content), name, "application/jsonl"), Purpose: openai.FilePurposeFineTune})
		if err != nil {
			t.Fatalf("upload %s: %v", name, err)
		}
		return f
	}
	var train *openai.FileObject
	eventually(t, 10*time.Second, "the gateway accepts the owner's key", func() bool {
		f, err := c.Files.New(ctx, openai.FileNewParams{File: openai.File(strings.NewReader(example+example), "train.jsonl", "application/jsonl"), Purpose: openai.FilePurposeFineTune})
		train = f
		return err == nil
	})
	eventually(t, 10*time.Second, "the gateway accepts the other key", func() bool {
		_, err := other.Models.Get(ctx, ftBase)
		return apiStatus(err) != http.StatusUnauthorized
	})
	valid := upload(example, "valid.jsonl")
	long := upload(strings.Repeat(example, 100), "long.jsonl") // 100 examples × 50 epochs: 5,000 steps of 10 ms

	params := openai.FineTuningJobNewParams{
		Model: ftBase, TrainingFile: train.ID, ValidationFile: openai.String(valid.ID), Suffix: openai.String("gosdk"), Seed: openai.Int(42),
		Method: openai.FineTuningJobNewParamsMethod{Type: "supervised", Supervised: openai.SupervisedMethodParam{
			Hyperparameters: openai.SupervisedHyperparameters{
				NEpochs:                openai.SupervisedHyperparametersNEpochsUnion{OfInt: openai.Int(2)},
				BatchSize:              openai.SupervisedHyperparametersBatchSizeUnion{OfInt: openai.Int(1)},
				LearningRateMultiplier: openai.SupervisedHyperparametersLearningRateMultiplierUnion{OfFloat: openai.Float(2)},
			}}},
	}
	job, err := c.FineTuning.Jobs.New(ctx, params)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(job.ID, "ftjob-") || job.Model != ftBase || job.TrainingFile != train.ID || job.ValidationFile != valid.ID ||
		job.Seed != 42 || job.Status != openai.FineTuningJobStatusValidatingFiles || job.FineTunedModel != "" ||
		job.Method.Supervised.Hyperparameters.NEpochs.OfInt != 2 || job.Method.Supervised.Hyperparameters.LearningRateMultiplier.OfFloat != 2 {
		t.Fatalf("created %s", job.RawJSON())
	}
	// Queued behind the first job on the one training worker; cancelled once running.
	longParams := params
	longParams.TrainingFile, longParams.ValidationFile, longParams.Suffix = long.ID, param.Opt[string]{}, openai.String("long")
	longParams.Method.Supervised.Hyperparameters.NEpochs.OfInt = openai.Int(50)
	longJob, err := c.FineTuning.Jobs.New(ctx, longParams)
	if err != nil {
		t.Fatal(err)
	}

	t.Run("retrieve and list", func(t *testing.T) {
		got, err := c.FineTuning.Jobs.Get(ctx, job.ID)
		if err != nil || got.ID != job.ID || got.CreatedAt != job.CreatedAt || got.TrainingFile != train.ID {
			t.Fatalf("retrieve: %v %v", got, err)
		}
		var ids []string
		iter := c.FineTuning.Jobs.ListAutoPaging(ctx, openai.FineTuningJobListParams{Limit: openai.Int(1)}) // one per page
		for iter.Next() {
			ids = append(ids, iter.Current().ID)
		}
		if err := iter.Err(); err != nil {
			t.Fatal(err)
		}
		if strings.Join(ids, ",") != longJob.ID+","+job.ID {
			t.Errorf("listed %v, want newest first %s,%s", ids, longJob.ID, job.ID)
		}
		page, err := other.FineTuning.Jobs.List(ctx, openai.FineTuningJobListParams{})
		if err != nil || len(page.Data) != 0 {
			t.Errorf("another user lists %v %v", page, err)
		}
		if _, err := other.FineTuning.Jobs.Get(ctx, job.ID); apiStatus(err) != http.StatusNotFound {
			t.Errorf("another user's retrieve: %v, want 404", err)
		}
	})

	job = waitJob(t, ctx, c, job.ID, "succeeded", trainer)
	model := "ft:" + ftBase + ":gosdk:" + job.ID
	if job.FineTunedModel != model || job.TrainedTokens <= 0 || job.FinishedAt < job.CreatedAt || len(job.ResultFiles) != 1 || job.Error.Message != "" {
		t.Fatalf("succeeded job %s", job.RawJSON())
	}
	succeeded := time.Now()

	t.Run("events newest first", func(t *testing.T) {
		var events []openai.FineTuningJobEvent
		iter := c.FineTuning.Jobs.ListEventsAutoPaging(ctx, job.ID, openai.FineTuningJobListEventsParams{Limit: openai.Int(3)})
		for iter.Next() {
			events = append(events, iter.Current())
		}
		if err := iter.Err(); err != nil {
			t.Fatal(err)
		}
		if len(events) < 8 || events[0].Message != "The job has successfully completed" ||
			!strings.HasPrefix(events[len(events)-1].Message, "Created fine-tuning job: "+job.ID) {
			t.Fatalf("%d events, newest %q, oldest %q", len(events), events[0].Message, events[len(events)-1].Message)
		}
		seen, metrics := map[string]bool{}, 0
		for i, e := range events {
			if i > 0 && e.CreatedAt > events[i-1].CreatedAt {
				t.Errorf("event %d (%q) is newer than event %d (%q)", i, e.Message, i-1, events[i-1].Message)
			}
			if seen[e.ID] {
				t.Errorf("event %s listed twice across pages", e.ID)
			}
			seen[e.ID] = true
			if e.Type == openai.FineTuningJobEventTypeMetrics {
				metrics++
			}
		}
		if metrics < 4 { // 2 examples × 2 epochs
			t.Errorf("%d metrics events, want one per step (4)", metrics)
		}
	})

	t.Run("checkpoints and result file", func(t *testing.T) {
		page, err := c.FineTuning.Jobs.Checkpoints.List(ctx, job.ID, openai.FineTuningJobCheckpointListParams{})
		if err != nil {
			t.Fatal(err)
		}
		if len(page.Data) != 2 || page.Data[0].StepNumber != 4 || page.Data[1].StepNumber != 2 || page.Data[0].FineTuningJobID != job.ID {
			t.Errorf("checkpoints %s, want steps 4 and 2 (one per epoch, newest first)", page.RawJSON())
		}
		resp, err := c.Files.Content(ctx, job.ResultFiles[0])
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		rows := strings.Split(strings.TrimSpace(string(b)), "\n")
		if len(rows) != 5 || !strings.HasPrefix(rows[0], "step,train_loss,") || !strings.HasPrefix(rows[4], "4,") || strings.HasSuffix(rows[4], ",,") {
			t.Errorf("metrics CSV %q: want a header, 4 steps, and the last with a validation loss", b)
		}
	})

	messages := []openai.ChatCompletionMessageParamUnion{openai.UserMessage("Hi")}
	t.Run("chat with the fine-tuned model", func(t *testing.T) {
		var r *openai.ChatCompletion
		eventually(t, 20*time.Second, "a chat completion from "+model, func() bool {
			r, err = c.Chat.Completions.New(ctx, openai.ChatCompletionNewParams{Model: model, Messages: messages, MaxTokens: openai.Int(4)})
			return err == nil
		})
		t.Logf("job success to the first answer through the gateway: %v", time.Since(succeeded).Round(time.Millisecond))
		if r.Model != model || len(r.Choices) != 1 || r.Choices[0].Message.Content == "" || r.Usage.CompletionTokens <= 0 {
			t.Errorf("answer %s", r.RawJSON())
		}
		stream := c.Chat.Completions.NewStreaming(ctx, openai.ChatCompletionNewParams{Model: model, Messages: messages, MaxTokens: openai.Int(4),
			StreamOptions: openai.ChatCompletionStreamOptionsParam{IncludeUsage: openai.Bool(true)}})
		var acc openai.ChatCompletionAccumulator
		for stream.Next() {
			acc.AddChunk(stream.Current())
		}
		if err := stream.Err(); err != nil {
			t.Fatal(err)
		}
		if acc.Model != model || len(acc.Choices) != 1 || acc.Choices[0].Message.Content == "" || acc.Usage.CompletionTokens <= 0 {
			t.Errorf("streamed answer: model %q, %d choices, usage %+v", acc.Model, len(acc.Choices), acc.Usage)
		}
		// Another user: the model is not listed, and calling it is refused as any restricted
		// model the user may not use is (README: 403 model_not_allowed).
		_, err := other.Chat.Completions.New(ctx, openai.ChatCompletionNewParams{Model: model, Messages: messages, MaxTokens: openai.Int(4)})
		if apiStatus(err) != http.StatusForbidden || err.(*openai.Error).Code != "model_not_allowed" {
			t.Errorf("another user's chat with %s: %v, want 403 model_not_allowed", model, err)
		}
		if _, err := other.Models.Get(ctx, model); apiStatus(err) != http.StatusNotFound {
			t.Errorf("another user's model retrieve: %v, want 404", err)
		}
		if m, err := c.Models.Get(ctx, model); err != nil || m.ID != model {
			t.Errorf("the owner's model retrieve: %v %v", m, err)
		}

		// The ledger records both answers under the fine-tuned model's name, for the owner.
		conn, err := pgx.Connect(ctx, p.DBURL)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close(context.Background())
		var n int
		eventually(t, 15*time.Second, "two usage records under "+model, func() bool {
			err := conn.QueryRow(ctx, `SELECT count(*) FROM usage_records u JOIN users o ON o.id = u.user_id
				WHERE u.model = $1 AND u.status = 200 AND u.completion_tokens > 0 AND o.username = 'ft_owner'`, model).Scan(&n)
			if err != nil {
				t.Fatal(err)
			}
			return n >= 2
		})
	})

	t.Run("cancel a running job", func(t *testing.T) {
		eventually(t, 30*time.Second, "a step of the long job", func() bool {
			page, err := c.FineTuning.Jobs.ListEvents(ctx, longJob.ID, openai.FineTuningJobListEventsParams{Limit: openai.Int(1)})
			return err == nil && len(page.Data) == 1 && page.Data[0].Type == openai.FineTuningJobEventTypeMetrics
		})
		if _, err := other.FineTuning.Jobs.Cancel(ctx, longJob.ID); apiStatus(err) != http.StatusNotFound {
			t.Errorf("another user's cancel: %v, want 404", err)
		}
		got, err := c.FineTuning.Jobs.Cancel(ctx, longJob.ID)
		if err != nil || got.Status != openai.FineTuningJobStatusCancelled {
			t.Fatalf("cancel: %v %v", got, err)
		}
		got = waitJob(t, ctx, c, longJob.ID, "cancelled", trainer)
		if got.FineTunedModel != "" {
			t.Errorf("cancelled job %s", got.RawJSON())
		}
		if _, err := c.FineTuning.Jobs.Cancel(ctx, longJob.ID); apiStatus(err) != http.StatusBadRequest {
			t.Errorf("cancelling a cancelled job: %v, want 400", err)
		}
	})

	t.Run("a crashing trainer fails its job", func(t *testing.T) {
		trainer.Stop(10 * time.Second)
		crashing := testenv.Start(t, "worker-train-crash", p.Bin.Worker, []string{"train"},
			p.Env(append(trainerEnv, "MAAS_TRAIN_SIM_FAIL_AT_STEP=2", "MAAS_TRAINER_ID=gosdk-crash", "MAAS_WORKER_ADDR="+testenv.FreeAddr(t))...)...)
		params.Suffix, params.ValidationFile = openai.String("crash"), param.Opt[string]{}
		bad, err := c.FineTuning.Jobs.New(ctx, params)
		if err != nil {
			t.Fatal(err)
		}
		bad = waitJob(t, ctx, c, bad.ID, "failed", crashing)
		if bad.Error.Code != "training_failed" || !strings.Contains(bad.Error.Message, "simulated trainer failure at step 2") || bad.FineTunedModel != "" {
			t.Errorf("failed job %s", bad.RawJSON())
		}
	})
	t.Logf("whole lifecycle: %v", time.Since(began).Round(time.Millisecond))
}

// waitJob polls job id until it reaches status (any other final status fails the test).
func waitJob(t *testing.T, ctx context.Context, c openai.Client, id string, status openai.FineTuningJobStatus, worker *testenv.Proc) *openai.FineTuningJob {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for {
		j, err := c.FineTuning.Jobs.Get(ctx, id)
		if err != nil {
			t.Fatalf("retrieve %s: %v", id, err)
		}
		if j.Status == status {
			return j
		}
		final := j.Status == "succeeded" || j.Status == "failed" || j.Status == "cancelled"
		if final || time.Now().After(deadline) {
			t.Fatalf("job %s is %s, want %s: %s\nworker:\n%s", id, j.Status, status, j.RawJSON(), worker.Output())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// eventually polls cond until it holds, failing the test after d.
func eventually(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("not within %v: %s", d, what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
