package trainer

import (
	"archive/tar"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/maas-platform/maas/pkg/training"
)

const testToken = "test-internal-token-0123456789"

// fakeControl is control's internal training API as the worker sees it: one job to hand
// out, its files, and a record of what the worker sent. Safe for concurrent use.
type fakeControl struct {
	t     *testing.T
	srv   *httptest.Server
	files map[string][]byte

	mu          sync.Mutex
	task        *training.Task    // handed out by the next claim, then nil
	queue       []*training.Task  // handed out after task
	leases      map[string]string // job id → its lease token
	claimedBy   []string          // worker ids of the claims that got a job
	completed   []string          // job ids completed
	claims      int
	heartbeats  int
	events      []training.Event
	metrics     []training.Metric
	checkpoints []training.CheckpointRequest
	adapter     []byte
	complete    *training.CompleteRequest
	fail        *training.FailRequest
	badCalls    []string
	// stop answers heartbeats with "stop" (cancelled) once stopWhen is true.
	stopWhen func(f *fakeControl) bool
	// lostEvents answers event posts with 409 lease_lost.
	lostEvents bool
	// refuseAdapter answers the adapter upload with 413.
	refuseAdapter bool
	// onPut, when set, runs (without the lock) when the adapter upload arrives.
	onPut   func()
	verdict chan struct{} // closed on complete or fail
	stopped chan struct{} // closed when a heartbeat answered stop
}

func newFakeControl(t *testing.T, train string, valid string) *fakeControl {
	f := &fakeControl{t: t, files: map[string][]byte{"file-train": []byte(train)}, verdict: make(chan struct{}), stopped: make(chan struct{})}
	task := &training.Task{JobID: "ftjob-1", LeaseToken: "lease-1", LeaseSeconds: 3, HeartbeatIntervalMS: 50, Attempt: 1,
		BaseModel: "sim-chat", FineTunedModel: "ft:sim-chat:demo:ftjob-1", Seed: 7, Method: "supervised",
		Hyperparameters:  training.Hyperparameters{NEpochs: 2, BatchSize: 2, LearningRateMultiplier: 1, LoRARank: 4, LoRAAlpha: 8},
		TrainingFile:     training.TaskFile{ID: "file-train", Bytes: int64(len(train)), Tokens: 99, URL: "/internal/v1/fine_tuning/jobs/ftjob-1/files/file-train"},
		AdapterUploadURL: "/internal/v1/fine_tuning/jobs/ftjob-1/adapter"}
	if valid != "" {
		f.files["file-valid"] = []byte(valid)
		task.ValidationFile = &training.TaskFile{ID: "file-valid", Bytes: int64(len(valid)), URL: "/internal/v1/fine_tuning/jobs/ftjob-1/files/file-valid"}
	}
	f.task = task
	f.leases = map[string]string{task.JobID: task.LeaseToken}
	f.srv = httptest.NewServer(http.HandlerFunc(f.serve))
	t.Cleanup(f.srv.Close)
	return f
}

func (f *fakeControl) leaseLost(w http.ResponseWriter) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusConflict)
	fmt.Fprintf(w, `{"error":{"message":"lease lost","type":"invalid_request_error","code":%q}}`, training.LeaseLostCode)
}

func (f *fakeControl) serve(w http.ResponseWriter, r *http.Request) {
	if r.Method == http.MethodPut && f.onPut != nil {
		f.onPut()
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if r.Header.Get("Authorization") != "Bearer "+testToken {
		f.badCalls = append(f.badCalls, "no token: "+r.URL.Path)
		w.WriteHeader(http.StatusUnauthorized)
		return
	}
	jobID, _, _ := strings.Cut(strings.TrimPrefix(r.URL.Path, "/internal/v1/fine_tuning/jobs/"), "/")
	prefix := "/internal/v1/fine_tuning/jobs/" + jobID + "/"
	if r.URL.Path != "/internal/v1/fine_tuning/claim" && (f.leases[jobID] == "" || r.Header.Get(training.LeaseHeader) != f.leases[jobID]) {
		f.badCalls = append(f.badCalls, "no lease: "+r.URL.Path)
		f.leaseLost(w)
		return
	}
	decode := func(v any) {
		if err := json.NewDecoder(r.Body).Decode(v); err != nil {
			f.badCalls = append(f.badCalls, "bad body: "+r.URL.Path)
		}
	}
	switch p := r.URL.Path; {
	case p == "/internal/v1/fine_tuning/claim" && r.Method == http.MethodPost:
		var cr training.ClaimRequest
		decode(&cr)
		if !strings.HasPrefix(cr.WorkerID, "trainer-test") || cr.GPUs < 1 {
			f.badCalls = append(f.badCalls, fmt.Sprintf("claim %+v", cr))
		}
		f.claims++
		if f.task == nil && len(f.queue) > 0 {
			f.task, f.queue = f.queue[0], f.queue[1:]
		}
		if f.task == nil {
			w.WriteHeader(http.StatusNoContent)
			return
		}
		f.leases[f.task.JobID] = f.task.LeaseToken
		f.claimedBy = append(f.claimedBy, cr.WorkerID)
		_ = json.NewEncoder(w).Encode(f.task)
		f.task = nil
	case strings.HasPrefix(p, prefix+"files/") && r.Method == http.MethodGet:
		b, ok := f.files[strings.TrimPrefix(p, prefix+"files/")]
		if !ok {
			w.WriteHeader(http.StatusNotFound)
			return
		}
		_, _ = w.Write(b)
	case p == prefix+"heartbeat":
		f.heartbeats++
		if f.stopWhen != nil && f.stopWhen(f) {
			select {
			case <-f.stopped:
			default:
				close(f.stopped)
			}
			_ = json.NewEncoder(w).Encode(training.HeartbeatResponse{Action: training.ActionStop, Reason: "cancelled"})
			return
		}
		_ = json.NewEncoder(w).Encode(training.HeartbeatResponse{Action: training.ActionContinue})
	case p == prefix+"events":
		if f.lostEvents {
			f.leaseLost(w)
			return
		}
		var er training.EventsRequest
		decode(&er)
		if len(er.Events) > 1000 || len(er.Metrics) > 1000 {
			f.badCalls = append(f.badCalls, "more than 1000 events or metrics in one call")
		}
		f.events = append(f.events, er.Events...)
		f.metrics = append(f.metrics, er.Metrics...)
		w.WriteHeader(http.StatusNoContent)
	case p == prefix+"checkpoints":
		var cr training.CheckpointRequest
		decode(&cr)
		f.checkpoints = append(f.checkpoints, cr)
		_, _ = w.Write([]byte(`{}`))
	case p == prefix+"adapter" && r.Method == http.MethodPut && f.refuseAdapter:
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusRequestEntityTooLarge)
		fmt.Fprint(w, `{"error":{"message":"the adapter archive exceeds 10 bytes","type":"invalid_request_error","code":"request_too_large"}}`)
	case p == prefix+"adapter" && r.Method == http.MethodPut:
		if r.Header.Get("Content-Type") != "application/x-tar" || r.ContentLength <= 0 {
			f.badCalls = append(f.badCalls, "adapter upload without type or length")
		}
		f.adapter, _ = io.ReadAll(r.Body)
		_, _ = w.Write([]byte(`{"bytes":1}`))
	case p == prefix+"complete":
		var cr training.CompleteRequest
		decode(&cr)
		if f.adapter == nil {
			f.badCalls = append(f.badCalls, "complete before the adapter")
		}
		f.complete = &cr
		f.completed = append(f.completed, jobID)
		f.closeVerdict()
		w.WriteHeader(http.StatusNoContent)
	case p == prefix+"fail":
		var fr training.FailRequest
		decode(&fr)
		f.fail = &fr
		f.closeVerdict()
		w.WriteHeader(http.StatusNoContent)
	default:
		f.badCalls = append(f.badCalls, r.Method+" "+p)
		w.WriteHeader(http.StatusNotFound)
	}
}

func (f *fakeControl) closeVerdict() {
	select {
	case <-f.verdict:
	default:
		close(f.verdict)
	}
}

func (f *fakeControl) lock() func() { f.mu.Lock(); return f.mu.Unlock }

const dataset = `{"messages":[{"role":"user","content":"hi"},{"role":"assistant","content":"hello there"}]}
{"messages":[{"role":"user","content":"2+2?"},{"role":"assistant","content":"4"}]}
{"messages":[{"role":"user","content":"bye"},{"role":"assistant","content":"goodbye"}]}
`

// startWorker runs a training Worker against f until the test ends; it returns the
// work directory and a channel closed when Run returns.
func startWorker(t *testing.T, f *fakeControl, cmd Template, mod func(*Options)) (string, <-chan struct{}) {
	dir, done, _ := startWorkerCancel(t, f, cmd, mod)
	return dir, done
}

// startWorkerCancel is startWorker that also returns the function stopping the worker.
func startWorkerCancel(t *testing.T, f *fakeControl, cmd Template, mod func(*Options)) (string, <-chan struct{}, context.CancelFunc) {
	t.Helper()
	workDir := t.TempDir()
	o := DefaultOptions()
	o.ControlURL, o.InternalToken, o.WorkerID, o.GPUs = f.srv.URL, testToken, "trainer-test", 2
	o.Command, o.PollInterval, o.FlushInterval, o.StopGrace, o.WorkDir = cmd, 20*time.Millisecond, 20*time.Millisecond, 2*time.Second, workDir
	o.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	if mod != nil {
		mod(&o)
	}
	w, err := New(o)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = w.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			t.Error("worker did not stop")
		}
	})
	return workDir, done, cancel
}

func waitClosed(t *testing.T, c <-chan struct{}, what string) {
	t.Helper()
	select {
	case <-c:
	case <-time.After(20 * time.Second):
		t.Fatalf("%s: not within 20s", what)
	}
}

// waitFor polls cond (under f's lock) until it holds.
func waitFor(t *testing.T, f *fakeControl, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		unlock := f.lock()
		ok := cond()
		unlock()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within 20s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func emptyDir(t *testing.T, dir string) {
	t.Helper()
	waitFor(t, &fakeControl{}, "work directory emptied", func() bool {
		entries, err := os.ReadDir(dir)
		return err == nil && len(entries) == 0
	})
}

func TestWorkerRunsJobWithSimulatedTrainer(t *testing.T) {
	t.Setenv("MAAS_TRAIN_SIM_STEP_INTERVAL", "5ms")
	f := newFakeControl(t, dataset, dataset)
	workDir, _ := startWorker(t, f, SimTemplate(os.Args[0]), nil)
	waitClosed(t, f.verdict, "job completed")
	defer f.lock()()
	if f.fail != nil {
		t.Fatalf("job failed: %+v", f.fail)
	}
	if len(f.badCalls) > 0 {
		t.Errorf("bad calls: %q", f.badCalls)
	}
	// 3 examples, batch 2 → 2 steps per epoch, 2 epochs.
	if len(f.metrics) != 4 || f.metrics[3].Step != 4 || f.metrics[3].TotalSteps != 4 || f.metrics[0].TrainLoss == nil || f.metrics[1].ValidLoss == nil {
		t.Errorf("metrics %+v", f.metrics)
	}
	if len(f.checkpoints) != 2 || f.checkpoints[0].Step != 2 || f.checkpoints[1].Step != 4 {
		t.Errorf("checkpoints %+v", f.checkpoints)
	}
	if len(f.events) == 0 || !strings.Contains(f.events[0].Message, "Simulated trainer") {
		t.Errorf("events %+v", f.events)
	}
	// Tokens: "hi"+"hello there" (3) + "2+2?"+"4" (5) + "bye"+"goodbye" (2) = 10 per epoch.
	if f.complete == nil || f.complete.TrainedTokens != 20 {
		t.Errorf("complete %+v", f.complete)
	}
	names := tarNames(t, f.adapter)
	if strings.Join(names, ",") != "README.md,adapter_config.json,adapter_model.safetensors" {
		t.Errorf("adapter archive holds %q", names)
	}
	var cfg map[string]any
	if err := json.Unmarshal(tarFile(t, f.adapter, "adapter_config.json"), &cfg); err != nil || cfg["base_model_name_or_path"] != "sim-chat" || cfg["r"] != 4.0 || cfg["lora_alpha"] != 8.0 {
		t.Errorf("adapter_config.json %v (%v)", cfg, err)
	}
	f.mu.Unlock()
	emptyDir(t, workDir)
	f.mu.Lock()
}

func tarNames(t *testing.T, b []byte) []string {
	t.Helper()
	tr := tar.NewReader(bytes.NewReader(b))
	var names []string
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("adapter archive: %v", err)
		}
		names = append(names, h.Name)
	}
	sort.Strings(names)
	return names
}

func tarFile(t *testing.T, b []byte, name string) []byte {
	tr := tar.NewReader(bytes.NewReader(b))
	for {
		h, err := tr.Next()
		if err != nil {
			t.Fatalf("%s not in the archive: %v", name, err)
		}
		if h.Name == name {
			data, _ := io.ReadAll(tr)
			return data
		}
	}
}

func mustTemplate(t *testing.T, words ...string) Template {
	t.Helper()
	tpl, err := NewTemplate(words)
	if err != nil {
		t.Fatal(err)
	}
	return tpl
}

// Control cancels the job mid-run: the trainer and its child are killed, no verdict is sent.
func TestWorkerStopsTrainerWhenControlSaysStop(t *testing.T) {
	f := newFakeControl(t, dataset, "")
	f.stopWhen = func(f *fakeControl) bool { return len(f.metrics) > 0 }
	pidFile := filepath.Join(t.TempDir(), "grandchild")
	// The trainer reports a step, then runs a child and waits, as a training loop would.
	cmd := mustTemplate(t, "/bin/sh", "-c", `echo '{"step":1,"total_steps":100,"loss":2}'; sleep 300 & echo $! > "$1"; wait`, "trainer", pidFile)
	workDir, _ := startWorker(t, f, cmd, nil)
	waitClosed(t, f.stopped, "heartbeat answered stop")
	pid, _ := strconv.Atoi(waitFile(t, pidFile))
	waitGone(t, pid)
	emptyDir(t, workDir)
	// The worker goes back to claiming; no verdict was sent for the stopped job.
	waitFor(t, f, "next claim", func() bool { return f.claims >= 2 })
	defer f.lock()()
	if f.complete != nil || f.fail != nil {
		t.Errorf("verdict sent for a cancelled job: complete %+v, fail %+v", f.complete, f.fail)
	}
}

// Control refuses the lease on an events post: the trainer is stopped, no verdict.
func TestWorkerStopsWhenLeaseLost(t *testing.T) {
	f := newFakeControl(t, dataset, "")
	f.lostEvents = true
	pidFile := filepath.Join(t.TempDir(), "trainer")
	cmd := mustTemplate(t, "/bin/sh", "-c", `echo $$ > "$1"; echo '{"step":1,"total_steps":100}'; exec sleep 300`, "trainer", pidFile)
	startWorker(t, f, cmd, nil)
	pid, _ := strconv.Atoi(waitFile(t, pidFile))
	waitGone(t, pid)
	waitFor(t, f, "next claim", func() bool { return f.claims >= 2 })
	defer f.lock()()
	if f.complete != nil || f.fail != nil {
		t.Errorf("verdict sent after the lease was lost")
	}
}

func TestWorkerReportsFailures(t *testing.T) {
	for _, tc := range []struct {
		name    string
		cmd     func(t *testing.T) Template
		env     string
		mod     func(*Options)
		code    string
		message string
	}{
		{name: "simulated crash", cmd: func(*testing.T) Template { return SimTemplate(os.Args[0]) }, env: "2",
			code: "training_failed", message: "trainer exited with status 1: worker train-sim: simulated trainer failure at step 2 (MAAS_TRAIN_SIM_FAIL_AT_STEP)"},
		{name: "timeout", cmd: func(t *testing.T) Template { return mustTemplate(t, "/bin/sh", "-c", "exec sleep 300") },
			mod: func(o *Options) { o.Timeout = 300 * time.Millisecond }, code: "training_timeout", message: "MAAS_TRAINER_TIMEOUT=300ms"},
		{name: "no adapter written", cmd: func(t *testing.T) Template { return mustTemplate(t, "/bin/sh", "-c", "exit 0") },
			code: "adapter_missing", message: "wrote no adapter_config.json into {output_dir}"},
		{name: "trainer missing", cmd: func(t *testing.T) Template { return mustTemplate(t, "/nonexistent/trainer") },
			code: "trainer_unavailable", message: "could not start its trainer"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Setenv("MAAS_TRAIN_SIM_STEP_INTERVAL", "1ms")
			t.Setenv("MAAS_TRAIN_SIM_FAIL_AT_STEP", tc.env)
			f := newFakeControl(t, dataset, "")
			reg := prometheus.NewRegistry()
			startWorker(t, f, tc.cmd(t), func(o *Options) {
				o.Registerer = reg
				if tc.mod != nil {
					tc.mod(o)
				}
			})
			waitClosed(t, f.verdict, "verdict")
			waitFor(t, f, "failed job counted", func() bool {
				n, _ := testutil.GatherAndCount(reg, "maas_worker_training_jobs_total")
				failed := 0.0
				mfs, _ := reg.Gather()
				for _, mf := range mfs {
					for _, m := range mf.GetMetric() {
						if mf.GetName() == "maas_worker_training_jobs_total" && m.GetLabel()[0].GetValue() == resultFailed {
							failed = m.GetCounter().GetValue()
						}
					}
				}
				return n == 4 && failed == 1
			})
			defer f.lock()()
			if f.complete != nil || f.fail == nil || f.fail.Code != tc.code || !strings.Contains(f.fail.Message, tc.message) {
				t.Errorf("complete %+v, fail %+v; want code %s with %q", f.complete, f.fail, tc.code, tc.message)
			}
		})
	}
}

// A dataset control no longer has: the job fails with a clear reason.
func TestWorkerFailsOnMissingDataset(t *testing.T) {
	f := newFakeControl(t, dataset, "")
	delete(f.files, "file-train")
	startWorker(t, f, SimTemplate(os.Args[0]), nil)
	waitClosed(t, f.verdict, "verdict")
	defer f.lock()()
	if f.fail == nil || f.fail.Code != "file_unavailable" || !strings.Contains(f.fail.Message, "file-train") {
		t.Errorf("fail %+v", f.fail)
	}
}

// The worker shutting down mid-job stops its trainer and sends no verdict: control
// re-queues the job when its lease expires.
func TestWorkerShutdownStopsTrainer(t *testing.T) {
	f := newFakeControl(t, dataset, "")
	pidFile := filepath.Join(t.TempDir(), "trainer")
	cmd := mustTemplate(t, "/bin/sh", "-c", `echo $$ > "$1"; exec sleep 300`, "trainer", pidFile)
	workDir, done, stop := startWorkerCancel(t, f, cmd, nil)
	pid, _ := strconv.Atoi(waitFile(t, pidFile))
	stop()
	waitClosed(t, done, "worker stopped")
	waitGone(t, pid)
	emptyDir(t, workDir)
	defer f.lock()()
	if f.complete != nil || f.fail != nil {
		t.Errorf("verdict sent on shutdown: complete %+v, fail %+v", f.complete, f.fail)
	}
}

// Four GPUs in slots of two: two jobs run at once, each trainer seeing its own devices
// and {gpus} = 2.
func TestWorkerRunsOneJobPerGPUSlot(t *testing.T) {
	t.Setenv("CUDA_VISIBLE_DEVICES", "4,5,6,7")
	f := newFakeControl(t, dataset, "")
	second := *f.task
	second.JobID, second.LeaseToken = "ftjob-2", "lease-2"
	second.TrainingFile.URL = "/internal/v1/fine_tuning/jobs/ftjob-2/files/file-train"
	second.AdapterUploadURL = "/internal/v1/fine_tuning/jobs/ftjob-2/adapter"
	f.queue = []*training.Task{&second}
	seen := t.TempDir()
	// Each trainer records what it sees, then waits until both have started: the test
	// ends only if the two run at the same time.
	script := `echo "$CUDA_VISIBLE_DEVICES gpus=$1" > "$2/$3"; while [ $(ls "$2" | wc -l) -lt 2 ]; do sleep 0.01; done
echo '{"base_model_name_or_path":"x","peft_type":"LORA"}' > "$4/adapter_config.json"`
	cmd := mustTemplate(t, "/bin/sh", "-c", script, "trainer", "{gpus}", seen, "{job_id}", "{output_dir}")
	startWorker(t, f, cmd, func(o *Options) { o.GPUs, o.GPUsPerJob = 4, 2 })
	waitFor(t, f, "both jobs completed", func() bool { return len(f.completed) == 2 })
	var got []string
	for _, id := range []string{"ftjob-1", "ftjob-2"} {
		b, err := os.ReadFile(filepath.Join(seen, id))
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, strings.TrimSpace(string(b)))
	}
	sort.Strings(got)
	if strings.Join(got, "|") != "4,5 gpus=2|6,7 gpus=2" {
		t.Errorf("trainers saw %q", got)
	}
	defer f.lock()()
	sort.Strings(f.claimedBy)
	if strings.Join(f.claimedBy, ",") != "trainer-test-gpu4-5,trainer-test-gpu6-7" {
		t.Errorf("claims by %q", f.claimedBy)
	}
}

// An adapter control refuses (too large): the job fails; training it again elsewhere
// would give the same adapter.
func TestWorkerFailsOnRefusedAdapter(t *testing.T) {
	t.Setenv("MAAS_TRAIN_SIM_STEP_INTERVAL", "1ms")
	f := newFakeControl(t, dataset, "")
	f.refuseAdapter = true
	startWorker(t, f, SimTemplate(os.Args[0]), nil)
	waitClosed(t, f.verdict, "verdict")
	defer f.lock()()
	if f.fail == nil || f.fail.Code != "adapter_rejected" || f.fail.Message != "Control refused the trained adapter: the adapter archive exceeds 10 bytes" {
		t.Errorf("fail %+v", f.fail)
	}
}

// The verdict goes out even when the worker is stopping (its context already ended).
func TestFinishSendsVerdictWhileStopping(t *testing.T) {
	f := newFakeControl(t, dataset, "")
	o := DefaultOptions()
	o.ControlURL, o.InternalToken, o.Command = f.srv.URL, testToken, mustTemplate(t, "true")
	w, err := New(o)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	result, err := w.finish(ctx, &training.Task{JobID: "ftjob-1", LeaseToken: "lease-1"}, w.o.Logger, func() {},
		training.FailRequest{Code: "training_failed", Message: "boom"})
	if err != nil || result != resultFailed {
		t.Fatalf("result %s, err %v", result, err)
	}
	defer f.lock()()
	if f.fail == nil || f.fail.Message != "boom" {
		t.Errorf("fail %+v", f.fail)
	}
}

// The worker stopping after the trainer exited 0 still uploads the adapter and completes
// the job, its lease renewed meanwhile: finished work is not trained again.
func TestWorkerShutdownAfterTrainingCompletes(t *testing.T) {
	f := newFakeControl(t, dataset, "")
	putStarted, release := make(chan struct{}), make(chan struct{})
	var once sync.Once
	t.Cleanup(func() { once.Do(func() { close(release) }) }) // before the server closes
	f.onPut = func() { close(putStarted); <-release }
	cmd := mustTemplate(t, "/bin/sh", "-c", `echo '{"peft_type":"LORA"}' > "$1/adapter_config.json"`, "trainer", "{output_dir}")
	workDir, done, stop := startWorkerCancel(t, f, cmd, nil)
	waitClosed(t, putStarted, "adapter upload")
	// The job's directory names its worker and its trainer's group (for sweep).
	jobs, _ := filepath.Glob(filepath.Join(workDir, "maas-ftjob-1-*"))
	if len(jobs) != 1 {
		t.Fatalf("job directories %q", jobs)
	}
	if owner, err := readInt(filepath.Join(jobs[0], ownerFile)); err != nil || owner != os.Getpid() {
		t.Errorf("owner %d, %v", owner, err)
	}
	if pgid, err := readInt(filepath.Join(jobs[0], pgidFile)); err != nil || pgid <= 1 {
		t.Errorf("trainer group %d, %v", pgid, err)
	}
	stop()
	var beats int
	waitFor(t, f, "heartbeat", func() bool { beats = f.heartbeats; return true })
	waitFor(t, f, "heartbeats during the upload", func() bool { return f.heartbeats >= beats+2 })
	once.Do(func() { close(release) })
	waitClosed(t, done, "worker stopped")
	emptyDir(t, workDir)
	defer f.lock()()
	if f.complete == nil || len(f.adapter) == 0 || f.fail != nil {
		t.Errorf("complete %+v, adapter %d bytes, fail %+v", f.complete, len(f.adapter), f.fail)
	}
	if len(f.badCalls) > 0 {
		t.Errorf("bad calls: %q", f.badCalls)
	}
}

// A worker that died (SIGKILL: no clean-up) left a job directory and, in its trainer's
// process group, a grandchild holding the GPU. The next worker kills the group and removes
// the directory; directories of running workers, or without an owner, are left alone.
func TestWorkerSweepsWhatADeadWorkerLeft(t *testing.T) {
	workDir := t.TempDir()
	mkJob := func(name string, owner int) string {
		dir := filepath.Join(workDir, name)
		if err := os.Mkdir(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		if owner > 0 {
			if err := writeInt(filepath.Join(dir, ownerFile), owner); err != nil {
				t.Fatal(err)
			}
		}
		return dir
	}
	gone := exec.Command("true")
	if err := gone.Run(); err != nil {
		t.Fatal(err)
	}
	stale := mkJob("maas-ftjob-dead-1", gone.Process.Pid)
	live := mkJob("maas-ftjob-live-1", os.Getppid())
	unowned := mkJob("maas-ftjob-unowned-1", 0)
	// The dead worker's trainer: its child survives the trainer's SIGKILL (Pdeathsig).
	pidFile := filepath.Join(t.TempDir(), "grandchild")
	trainer := exec.Command("/bin/sh", "-c", `sleep 300 & echo $! > "$1"; wait`, "trainer", pidFile)
	trainer.Dir, trainer.SysProcAttr = stale, &syscall.SysProcAttr{Setpgid: true}
	if err := trainer.Start(); err != nil {
		t.Fatal(err)
	}
	pid, _ := strconv.Atoi(waitFile(t, pidFile))
	t.Cleanup(func() { _ = syscall.Kill(pid, syscall.SIGKILL) })
	_ = trainer.Process.Kill()
	_ = trainer.Wait()
	if err := writeInt(filepath.Join(stale, pgidFile), trainer.Process.Pid); err != nil {
		t.Fatal(err)
	}

	f := newFakeControl(t, dataset, "")
	f.task = nil
	startWorker(t, f, mustTemplate(t, "true"), func(o *Options) { o.WorkDir = workDir })
	waitGone(t, pid)
	waitFor(t, f, "stale directory removed", func() bool { _, err := os.Stat(stale); return os.IsNotExist(err) })
	for _, d := range []string{live, unowned} {
		if _, err := os.Stat(d); err != nil {
			t.Errorf("%s: %v", d, err)
		}
	}
}
