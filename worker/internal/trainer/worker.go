package trainer

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/maas-platform/maas/pkg/training"
)

// Worker claims fine-tuning jobs from control and runs them with the trainer, one at a
// time. Build it with New; Run it once.
type Worker struct {
	o Options
	c *client
	m *metrics
}

// New checks o and returns a Worker.
func New(o Options) (*Worker, error) {
	if err := o.validate(); err != nil {
		return nil, err
	}
	return &Worker{o: o, c: newClient(o.ControlURL, o.InternalToken), m: newMetrics(o.Registerer)}, nil
}

// slot is one share of the worker's GPUs that runs one job at a time.
type slot struct {
	id      string   // the worker id given to control
	gpus    int      // {gpus} and ClaimRequest.GPUs
	devices []string // CUDA_VISIBLE_DEVICES for its trainer; nil = inherit the worker's
	log     *slog.Logger
}

// slots splits the worker's GPUs: one slot with all of them, or GPUs / GPUsPerJob slots
// each with its own devices (from the worker's CUDA_VISIBLE_DEVICES when set, else
// 0…GPUs-1).
func (w *Worker) slots() []slot {
	per := w.o.GPUsPerJob
	if per <= 0 || per >= w.o.GPUs {
		return []slot{{id: w.o.WorkerID, gpus: w.o.GPUs, log: w.o.Logger}}
	}
	devices := visibleDevices(w.o.GPUs)
	var out []slot
	for i := 0; (i+1)*per <= len(devices); i++ {
		d := devices[i*per : (i+1)*per]
		out = append(out, slot{id: fmt.Sprintf("%s-gpu%s", w.o.WorkerID, strings.Join(d, "-")), gpus: per, devices: d,
			log: w.o.Logger.With("gpus", strings.Join(d, ","))})
	}
	return out
}

// visibleDevices is the worker's CUDA_VISIBLE_DEVICES list, or 0…n-1, cut to n entries.
func visibleDevices(n int) []string {
	var devices []string
	if v := strings.TrimSpace(os.Getenv("CUDA_VISIBLE_DEVICES")); v != "" {
		for _, d := range strings.Split(v, ",") {
			if d = strings.TrimSpace(d); d != "" {
				devices = append(devices, d)
			}
		}
	} else {
		for i := range n {
			devices = append(devices, strconv.Itoa(i))
		}
	}
	return devices[:min(n, len(devices))]
}

// Run claims and runs jobs until ctx ends: one at a time, or one per GPU slot when
// GPUsPerJob splits the GPUs. A job running then has its trainer stopped and is left to
// control, which gives it to another worker once its lease expires.
func (w *Worker) Run(ctx context.Context) error {
	slots := w.slots()
	w.m.slots.Set(float64(len(slots)))
	sweep(w.o.WorkDir, w.o.Logger)
	w.o.Logger.Info("training worker started", "worker_id", w.o.WorkerID, "gpus", w.o.GPUs, "slots", len(slots), "trainer", w.o.Command.Words()[0])
	var wg sync.WaitGroup
	for _, s := range slots {
		wg.Go(func() { w.loop(ctx, s) })
	}
	wg.Wait()
	return nil
}

// loop claims and runs jobs on slot s until ctx ends.
func (w *Worker) loop(ctx context.Context, s slot) {
	backoff := w.o.PollInterval
	for ctx.Err() == nil {
		t, err := w.c.claim(ctx, training.ClaimRequest{WorkerID: s.id, GPUs: s.gpus, LeaseSeconds: w.o.Lease.Seconds()})
		wait := w.o.PollInterval
		switch {
		case ctx.Err() != nil:
			return
		case err != nil:
			w.m.claimFailures.Inc()
			s.log.Warn("claim a fine-tuning job", "err", err, "retry_in", backoff)
			wait, backoff = backoff, min(2*backoff, 30*time.Second)
		case t != nil:
			backoff = w.o.PollInterval
			w.m.running.Inc()
			result, err := w.runTask(ctx, s, t)
			w.m.running.Dec()
			w.m.jobs.WithLabelValues(result).Inc()
			if err != nil {
				s.log.Error("fine-tuning job abandoned; control re-queues it when its lease expires", "job", t.JobID, "err", err)
			} else {
				continue // look for the next job at once
			}
		default:
			backoff = w.o.PollInterval
		}
		timer := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			timer.Stop()
			return
		case <-timer.C:
		}
	}
}

// stopError is control telling the worker to stop a job (cancelled, lease lost).
type stopError struct{ reason string }

func (e *stopError) Error() string { return "control stopped the job: " + e.reason }

// runTask runs one claimed job to its end and returns its result (for the metrics). It
// returns an error only when the job is abandoned without a verdict (a local failure, or
// control unreachable).
func (w *Worker) runTask(ctx context.Context, s slot, t *training.Task) (string, error) {
	log := s.log.With("job", t.JobID, "attempt", t.Attempt)
	log.Info("fine-tuning job claimed", "base_model", t.BaseModel, "epochs", t.Hyperparameters.NEpochs)
	began := time.Now()
	// jobCtx ends when control stops the job (a stopError); trainCtx also when the worker
	// shuts down. Once the trainer has exited 0, the adapter is uploaded and the job
	// completed (heartbeats going on) under jobCtx, bounded by uploadBound, even through a
	// shutdown: otherwise the finished work is lost and trained again once the lease expires.
	jobCtx, cancel := context.WithCancelCause(context.WithoutCancel(ctx))
	defer cancel(nil)
	trainCtx, cancelTrain := context.WithCancelCause(jobCtx)
	defer cancelTrain(nil)
	stopOnShutdown := context.AfterFunc(ctx, func() { cancelTrain(errShuttingDown) })
	defer stopOnShutdown()

	var wg sync.WaitGroup
	defer wg.Wait()
	hbCtx, stopHeartbeat := context.WithCancel(jobCtx)
	defer stopHeartbeat()
	wg.Go(func() { w.heartbeat(hbCtx, s.id, t, cancel, log) })
	rep := newReporter(w.c, t, log, w.o.FlushInterval, func() { cancel(&stopError{reason: training.LeaseLostCode}) })
	wg.Go(func() { rep.run(jobCtx) })
	reporterClosed := false
	defer func() {
		if !reporterClosed {
			cctx, ccancel := context.WithTimeout(context.Background(), 2*time.Second)
			defer ccancel()
			_ = rep.close(cctx)
		}
	}()

	dir, err := os.MkdirTemp(w.o.WorkDir, workDirPrefix+t.JobID+"-")
	if err != nil {
		return resultAbandoned, fmt.Errorf("work directory: %w", err)
	}
	defer os.RemoveAll(dir)
	if err := writeInt(filepath.Join(dir, ownerFile), os.Getpid()); err != nil {
		return resultAbandoned, fmt.Errorf("work directory: %w", err)
	}

	// The datasets.
	trainPath, validPath := filepath.Join(dir, "training.jsonl"), ""
	files := []struct {
		f    training.TaskFile
		path string
	}{{t.TrainingFile, trainPath}}
	if t.ValidationFile != nil {
		validPath = filepath.Join(dir, "validation.jsonl")
		files = append(files, struct {
			f    training.TaskFile
			path string
		}{*t.ValidationFile, validPath})
	}
	for _, f := range files {
		err := retry(trainCtx, 4, func() error { _, err := w.c.download(trainCtx, t, f.f, f.path); return err })
		switch {
		case err == nil:
		case w.stopped(trainCtx, t, log):
			return resultStopped, nil
		case permanent(err):
			return w.finish(ctx, t, log, stopHeartbeat, training.FailRequest{Code: "file_unavailable",
				Message: fmt.Sprintf("The dataset %s could not be read: %s", f.f.ID, CleanText(controlMessage(err), 500))})
		default:
			return resultAbandoned, err
		}
	}

	// The trainer.
	outDir := filepath.Join(dir, "adapter")
	if err := os.Mkdir(outDir, 0o755); err != nil {
		return resultAbandoned, fmt.Errorf("output directory: %w", err)
	}
	h := t.Hyperparameters
	values := map[string]string{
		"base_model": t.BaseModel, "fine_tuned_model": t.FineTunedModel, "job_id": t.JobID,
		"training_file": trainPath, "validation_file": validPath, "output_dir": outDir,
		"n_epochs": strconv.Itoa(h.NEpochs), "batch_size": strconv.Itoa(h.BatchSize),
		"learning_rate_multiplier": strconv.FormatFloat(h.LearningRateMultiplier, 'g', -1, 64),
		"lora_rank":                strconv.Itoa(h.LoRARank), "lora_alpha": strconv.Itoa(h.LoRAAlpha),
		"seed": strconv.FormatInt(t.Seed, 10), "gpus": strconv.Itoa(s.gpus),
	}
	var env []string
	if s.devices != nil {
		env = []string{"CUDA_VISIBLE_DEVICES=" + strings.Join(s.devices, ",")}
	}
	runErr := Run(trainCtx, Spec{Args: w.o.Command.Args(values), Dir: dir, Env: env, Timeout: w.o.Timeout, StopGrace: w.o.StopGrace,
		OnProgress: rep.add, Logger: log, Started: func(pgid int) {
			if err := writeInt(filepath.Join(dir, pgidFile), pgid); err != nil {
				log.Warn("trainer's process group not recorded: a worker started after this one dies cannot stop what the trainer leaves", "err", err)
			}
		}})
	stopOnShutdown()
	// A trainer that exited 0 has done its work, even when the worker began stopping meanwhile.
	if (runErr != nil || jobCtx.Err() != nil) && w.stopped(trainCtx, t, log) {
		return resultStopped, nil
	}
	if runErr == nil && ctx.Err() != nil {
		log.Info("worker stopping: the trained adapter is uploaded and the job completed first")
	}
	fin, cancelFin := context.WithTimeout(jobCtx, uploadBound(0))
	defer cancelFin()
	reporterClosed = true
	if err := rep.close(fin); err != nil {
		if errors.Is(err, errLeaseLost) {
			log.Info("fine-tuning job stopped: control gave its lease away")
			return resultStopped, nil
		}
		log.Warn("some training progress could not be sent to control", "err", err)
	}
	var crash *CrashError
	switch {
	case errors.Is(runErr, ErrTimeout):
		return w.finish(ctx, t, log, stopHeartbeat, training.FailRequest{Code: "training_timeout",
			Message: fmt.Sprintf("The trainer ran longer than this worker's limit (MAAS_TRAINER_TIMEOUT=%v) and was stopped.", w.o.Timeout)})
	case errors.As(runErr, &crash):
		return w.finish(ctx, t, log, stopHeartbeat, training.FailRequest{Code: "training_failed", Message: truncate(crash.Error(), maxTail)})
	case runErr != nil:
		log.Error("the trainer could not be started; check MAAS_TRAINER_COMMAND", "err", runErr)
		return w.finish(ctx, t, log, stopHeartbeat, training.FailRequest{Code: "trainer_unavailable",
			Message: "The worker could not start its trainer: " + CleanText(runErr.Error(), 500)})
	}

	// The adapter.
	archive := filepath.Join(dir, "adapter.tar")
	n, err := writeArchive(outDir, archive)
	if errors.Is(err, errNoAdapter) {
		return w.finish(ctx, t, log, stopHeartbeat, training.FailRequest{Code: "adapter_missing", Message: "The trainer finished but " + errNoAdapter.Error() + "."})
	}
	if err != nil {
		return resultAbandoned, fmt.Errorf("archive the adapter: %w", err)
	}
	if st, err := os.Stat(archive); err == nil {
		cancelFin()
		fin, cancelFin = context.WithTimeout(jobCtx, uploadBound(st.Size()))
		defer cancelFin()
	}
	if err := retry(fin, 4, func() error { return w.c.putAdapter(fin, t, archive) }); err != nil {
		if w.stopped(jobCtx, t, log) || errors.Is(err, errLeaseLost) {
			return resultStopped, nil
		}
		if permanent(err) {
			// Training again elsewhere would give the same adapter: fail the job.
			return w.finish(ctx, t, log, stopHeartbeat, training.FailRequest{Code: "adapter_rejected",
				Message: "Control refused the trained adapter: " + CleanText(controlMessage(err), 500)})
		}
		return resultAbandoned, err
	}
	tokens := rep.tokens()
	if tokens == 0 {
		tokens = t.TrainingFile.Tokens * int64(max(h.NEpochs, 1))
	}
	log.Info("fine-tuning job trained", "files", n, "trained_tokens", tokens, "took", time.Since(began).Round(time.Millisecond))
	return w.finish(ctx, t, log, stopHeartbeat, training.CompleteRequest{TrainedTokens: tokens})
}

// errShuttingDown ends a job's trainer when the worker stops.
var errShuttingDown = errors.New("worker shutting down")

// uploadBound bounds the end of a job once its trainer exited 0 (progress flushed, adapter
// of size bytes uploaded): 2 minutes plus a second per MiB, i.e. an upload slower than
// 1 MiB/s is given up. It keeps a worker told to stop from waiting on a stalled control
// for ever.
func uploadBound(size int64) time.Duration {
	return 2*time.Minute + time.Duration(size>>20)*time.Second
}

// controlMessage is control's own message in an error answer, else err's text.
func controlMessage(err error) string {
	var se *statusError
	if errors.As(err, &se) && se.Message != "" {
		return se.Message
	}
	return err.Error()
}

// finish stops the heartbeats and sends the verdict: a CompleteRequest or a FailRequest.
func (w *Worker) finish(ctx context.Context, t *training.Task, log *slog.Logger, stopHeartbeat func(), verdict any) (string, error) {
	stopHeartbeat()
	// The verdict is sent even when the worker is stopping: the work is done, and without
	// it the job would wait for its lease to expire and run again elsewhere.
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
	defer cancel()
	var err error
	switch v := verdict.(type) {
	case training.CompleteRequest:
		err = retry(ctx, 5, func() error { return w.c.complete(ctx, t, v) })
	case training.FailRequest:
		log.Warn("fine-tuning job failed", "code", v.Code, "message", v.Message)
		err = retry(ctx, 5, func() error { return w.c.fail(ctx, t, v) })
	}
	if errors.Is(err, errLeaseLost) {
		log.Info("fine-tuning job's verdict refused: the lease was lost meanwhile")
		return resultStopped, nil
	}
	if err != nil {
		return resultAbandoned, fmt.Errorf("report the job's end: %w", err)
	}
	if _, ok := verdict.(training.CompleteRequest); ok {
		log.Info("fine-tuning job completed")
		return resultSucceeded, nil
	}
	return resultFailed, nil
}

// stopped reports whether the job ended because control stopped it or the worker is
// shutting down, and logs which.
func (w *Worker) stopped(jobCtx context.Context, t *training.Task, log *slog.Logger) bool {
	if jobCtx.Err() == nil {
		return false
	}
	var se *stopError
	if errors.As(context.Cause(jobCtx), &se) {
		reason := se.reason
		if reason == training.LeaseLostCode {
			// A refused events call says only that the lease is gone; a heartbeat says why
			// (cancelled, failed…) when the job has ended.
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			if r, err := w.c.heartbeat(ctx, t, w.o.WorkerID); err == nil && r.Action == training.ActionStop && r.Reason != "" {
				reason = r.Reason
			}
			cancel()
		}
		log.Info("fine-tuning job stopped by control; trainer stopped", "reason", reason)
	} else {
		log.Warn("worker stopping: trainer stopped; control re-queues the job when its lease expires")
	}
	return true
}

// heartbeat renews the lease every interval until ctx ends, and stops the job (cancel with
// a stopError) when control answers "stop" or refuses the lease.
func (w *Worker) heartbeat(ctx context.Context, workerID string, t *training.Task, cancel context.CancelCauseFunc, log *slog.Logger) {
	every := time.Duration(t.HeartbeatIntervalMS) * time.Millisecond
	if every <= 0 {
		every = 10 * time.Second
	}
	every = max(every, 50*time.Millisecond)
	tick := time.NewTicker(every)
	defer tick.Stop()
	failing := false
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		r, err := w.c.heartbeat(ctx, t, workerID)
		switch {
		case ctx.Err() != nil:
			return
		case errors.Is(err, errLeaseLost):
			cancel(&stopError{reason: training.LeaseLostCode})
			return
		case err != nil:
			if !failing {
				log.Warn("training heartbeat failed; the trainer goes on", "err", err)
			}
			failing = true
		case r.Action == training.ActionStop:
			reason := r.Reason
			if reason == "" {
				reason = "stop"
			}
			cancel(&stopError{reason: reason})
			return
		default:
			if failing {
				log.Info("training heartbeat answered again")
			}
			failing = false
		}
	}
}
