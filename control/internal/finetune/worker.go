package finetune

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/maas-platform/maas/pkg/apierr"
	"github.com/maas-platform/maas/pkg/textcheck"
	"github.com/maas-platform/maas/pkg/training"
)

// The training workers' side: claim, heartbeat, events, checkpoints, files, adapter,
// complete and fail. pkg/training documents the protocol.

const internalPrefix = "/internal/v1/fine_tuning/jobs/"

func leaseLost(id string) error {
	return &apierr.Error{Kind: apierr.Conflict, Code: training.LeaseLostCode,
		Message: fmt.Sprintf("this worker no longer holds the lease of fine-tuning job %s; stop working on it", id)}
}

// Claim hands the oldest queued job to a worker with a new lease, or returns nil when none
// is queued. Expired leases are rescued first, so a claim never waits for the periodic job.
func (s *Service) Claim(ctx context.Context, r training.ClaimRequest) (*training.Task, error) {
	if _, err := s.Rescue(ctx); err != nil {
		return nil, apierr.Wrap(err, "rescue before claim")
	}
	lease := s.leaseFor(r.LeaseSeconds)
	token := newID("lease-")
	var j *Job
	err := s.inTx(ctx, func(tx pgx.Tx) error {
		var id string
		err := tx.QueryRow(ctx, `SELECT id FROM fine_tuning_jobs WHERE status = 'queued'
			ORDER BY seq FOR UPDATE SKIP LOCKED LIMIT 1`).Scan(&id)
		if errors.Is(err, pgx.ErrNoRows) {
			return nil
		}
		if err != nil {
			return err
		}
		if err := setStatus(ctx, tx, id, StatusRunning, "claimed by worker "+r.WorkerID, nil); err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, `UPDATE fine_tuning_jobs SET attempts = attempts + 1, worker_id = $2, lease_token = $3,
			lease_ms = $4::int, lease_expires_at = now() + $4::int * interval '1 millisecond', started_at = now(), trained = FALSE
			WHERE id = $1`, id, r.WorkerID, token, lease.Milliseconds()); err != nil {
			return err
		}
		if j, err = getJob(ctx, tx, id, false); err != nil {
			return err
		}
		return addEvent(ctx, tx, id, "info", "message", fmt.Sprintf("Fine-tuning job started on worker %s (attempt %d)", r.WorkerID, j.Attempts), nil)
	})
	if err != nil {
		return nil, apierr.Wrap(err, "claim a fine-tuning job")
	}
	if j == nil {
		return nil, nil
	}
	s.log.Info("fine-tuning job claimed", "job", j.ID, "worker", r.WorkerID, "attempt", j.Attempts)
	suffix := ""
	if j.UserProvidedSuffix != nil {
		suffix = *j.UserProvidedSuffix
	}
	t := &training.Task{
		JobID: j.ID, LeaseToken: token, LeaseExpiresAt: j.LeaseExpiresAt, LeaseSeconds: lease.Seconds(),
		HeartbeatIntervalMS: int(lease.Milliseconds() / 3), Attempt: j.Attempts,
		BaseModel: j.Model, FineTunedModel: FineTunedModelName(j.Model, suffix, j.ID), Seed: j.Seed,
		Method: j.Method.Type, Hyperparameters: j.Hyperparameters,
		AdapterUploadURL: internalPrefix + j.ID + "/adapter",
	}
	taskFile := func(id string) training.TaskFile {
		tf := training.TaskFile{ID: id, URL: internalPrefix + j.ID + "/files/" + id}
		if f, err := s.files.Get(ctx, id); err == nil {
			tf.Bytes, tf.Tokens = f.Bytes, f.Tokens
		}
		return tf
	}
	t.TrainingFile = taskFile(j.TrainingFile)
	if j.ValidationFile != nil {
		t.ValidationFile = ptr(taskFile(*j.ValidationFile))
	}
	return t, nil
}

// leased locks job id in tx and checks that token is its current lease; it renews the
// lease.
func (s *Service) leased(ctx context.Context, tx pgx.Tx, id, token string) (*Job, error) {
	j, err := getJob(ctx, tx, id, true)
	if errors.Is(err, ErrNotFound) {
		return nil, notFound(id)
	}
	if err != nil {
		return nil, apierr.Wrap(err, "job %s", id)
	}
	if token == "" || j.Status != StatusRunning || j.Trained || j.LeaseToken != token {
		return nil, leaseLost(id)
	}
	if _, err := tx.Exec(ctx, `UPDATE fine_tuning_jobs SET lease_expires_at = now() + lease_ms * interval '1 millisecond'
		WHERE id = $1`, id); err != nil {
		return nil, apierr.Wrap(err, "renew lease of %s", id)
	}
	return j, nil
}

// withLease runs f in a transaction holding job id's lease.
func (s *Service) withLease(ctx context.Context, id, token string, f func(tx pgx.Tx, j *Job) error) error {
	tx, err := s.db.Begin(ctx)
	if err != nil {
		return apierr.Wrap(err, "job %s", id)
	}
	defer tx.Rollback(ctx) //nolint:errcheck
	j, err := s.leased(ctx, tx, id, token)
	if err != nil {
		return err
	}
	if err := f(tx, j); err != nil {
		var ae *apierr.Error
		if errors.As(err, &ae) {
			return err
		}
		return apierr.Wrap(err, "job %s", id)
	}
	if err := tx.Commit(ctx); err != nil {
		return apierr.Wrap(err, "job %s", id)
	}
	return nil
}

// Heartbeat renews the lease, or tells the worker to stop and why.
func (s *Service) Heartbeat(ctx context.Context, id, token string) (*training.HeartbeatResponse, error) {
	var out *training.HeartbeatResponse
	err := s.withLease(ctx, id, token, func(tx pgx.Tx, _ *Job) error {
		var exp time.Time
		if err := tx.QueryRow(ctx, `SELECT lease_expires_at FROM fine_tuning_jobs WHERE id = $1`, id).Scan(&exp); err != nil {
			return err
		}
		out = &training.HeartbeatResponse{Action: training.ActionContinue, LeaseExpiresAt: exp.Unix()}
		return nil
	})
	var ae *apierr.Error
	if errors.As(err, &ae) && ae.Code == training.LeaseLostCode {
		j, gerr := getJob(ctx, s.db, id, false)
		if gerr != nil {
			return nil, apierr.Wrap(gerr, "job %s", id)
		}
		reason := training.LeaseLostCode
		if j.Terminal() {
			reason = j.Status
		}
		return &training.HeartbeatResponse{Action: training.ActionStop, Reason: reason}, nil
	}
	return out, err
}

// maxMessage bounds an event's message.
const maxMessage = 2000

// cleanMessage makes a worker's message storable: without NUL, other control characters
// or invalid UTF-8, and cut to maxMessage bytes on a character boundary (a cut inside one
// was refused by PostgreSQL, failing the call on every resend).
func cleanMessage(m string) string { return textcheck.Cut(textcheck.Clean(m), maxMessage) }

// PostEvents stores a worker's progress lines and step metrics as job events.
func (s *Service) PostEvents(ctx context.Context, id, token string, r training.EventsRequest) error {
	if len(r.Events) > 1000 || len(r.Metrics) > 1000 {
		return apierr.Param("events", "at most 1000 events and 1000 metrics per call")
	}
	for i, e := range r.Events {
		switch e.Level {
		case "":
			r.Events[i].Level = "info"
		case "info", "warn", "error":
		default:
			return apierr.Param("events.level", "level must be info, warn or error")
		}
		r.Events[i].Message = cleanMessage(e.Message)
		if strings.TrimSpace(r.Events[i].Message) == "" {
			return apierr.Param("events.message", "message must not be empty")
		}
	}
	for _, m := range r.Metrics {
		if m.Step < 0 || m.TotalSteps < 0 {
			return apierr.Param("metrics.step", "step and total_steps must not be negative")
		}
	}
	return s.withLease(ctx, id, token, func(tx pgx.Tx, j *Job) error {
		for _, e := range r.Events {
			if err := addEvent(ctx, tx, id, e.Level, "message", e.Message, nil); err != nil {
				return err
			}
		}
		// A second line for a step (a validation loss after the training loss) adds its
		// figures to the step's, replacing only those it carries.
		for _, m := range r.Metrics {
			if _, err := tx.Exec(ctx, `INSERT INTO fine_tuning_metrics (job_id, step, total_steps, train_loss, valid_loss,
				train_mean_token_accuracy, valid_mean_token_accuracy) VALUES ($1, $2, $3, $4, $5, $6, $7)
				ON CONFLICT (job_id, step) DO UPDATE SET total_steps = EXCLUDED.total_steps,
				train_loss = COALESCE(EXCLUDED.train_loss, fine_tuning_metrics.train_loss),
				valid_loss = COALESCE(EXCLUDED.valid_loss, fine_tuning_metrics.valid_loss),
				train_mean_token_accuracy = COALESCE(EXCLUDED.train_mean_token_accuracy, fine_tuning_metrics.train_mean_token_accuracy),
				valid_mean_token_accuracy = COALESCE(EXCLUDED.valid_mean_token_accuracy, fine_tuning_metrics.valid_mean_token_accuracy),
				created_at = now()`,
				id, m.Step, m.TotalSteps, m.TrainLoss, m.ValidLoss, m.TrainMeanTokenAccuracy, m.ValidMeanTokenAccuracy); err != nil {
				return err
			}
			if err := addEvent(ctx, tx, id, "info", "metrics", metricMessage(m), metricData(m)); err != nil {
				return err
			}
		}
		if n := len(r.Metrics); n > 0 {
			last := r.Metrics[n-1]
			if last.Step > 0 && last.TotalSteps >= last.Step {
				// Extrapolate the attempt's pace to its last step.
				if _, err := tx.Exec(ctx, `UPDATE fine_tuning_jobs SET estimated_finish =
					started_at + (now() - started_at) * ($2::float8 / $3::float8) WHERE id = $1 AND started_at IS NOT NULL`,
					id, last.TotalSteps, last.Step); err != nil {
					return err
				}
			}
		}
		return nil
	})
}

func metricMessage(m training.Metric) string {
	msg := fmt.Sprintf("Step %d/%d", m.Step, m.TotalSteps)
	if m.TrainLoss != nil {
		msg += fmt.Sprintf(": training loss=%.4f", *m.TrainLoss)
	}
	if m.ValidLoss != nil {
		msg += fmt.Sprintf(", validation loss=%.4f", *m.ValidLoss)
	}
	return msg
}

func metricData(m training.Metric) map[string]any {
	d := map[string]any{"step": m.Step, "total_steps": m.TotalSteps}
	for k, v := range map[string]*float64{"train_loss": m.TrainLoss, "valid_loss": m.ValidLoss,
		"train_mean_token_accuracy": m.TrainMeanTokenAccuracy, "valid_mean_token_accuracy": m.ValidMeanTokenAccuracy} {
		if v != nil {
			d[k] = *v
		}
	}
	return d
}

// PostCheckpoint records a checkpoint the trainer saved.
func (s *Service) PostCheckpoint(ctx context.Context, id, token string, r training.CheckpointRequest) (*Checkpoint, error) {
	if r.Step < 0 {
		return nil, apierr.Param("step", "step must not be negative")
	}
	var cp *Checkpoint
	err := s.withLease(ctx, id, token, func(tx pgx.Tx, j *Job) error {
		suffix := ""
		if j.UserProvidedSuffix != nil {
			suffix = *j.UserProvidedSuffix
		}
		r.Metrics.Step = r.Step
		metrics := metricData(r.Metrics)
		delete(metrics, "total_steps")
		cp = &Checkpoint{Object: "fine_tuning.job.checkpoint", ID: newID("ftckpt-"), FineTuningJobID: id, StepNumber: r.Step,
			FineTunedModelCheckpoint: fmt.Sprintf("%s:ckpt-step-%d", FineTunedModelName(j.Model, suffix, j.ID), r.Step), Metrics: metrics}
		var at time.Time
		if err := tx.QueryRow(ctx, `INSERT INTO fine_tuning_checkpoints (id, job_id, step, name, metrics)
			VALUES ($1, $2, $3, $4, $5) RETURNING created_at`, cp.ID, id, r.Step, cp.FineTunedModelCheckpoint, metrics).Scan(&at); err != nil {
			return err
		}
		cp.CreatedAt = at.Unix()
		return addEvent(ctx, tx, id, "info", "message", fmt.Sprintf("Checkpoint created at step %d", r.Step), nil)
	})
	return cp, err
}

// OpenFile opens one of the job's datasets for the worker holding its lease.
func (s *Service) OpenFile(ctx context.Context, id, token, fileID string) (io.ReadCloser, int64, error) {
	var j *Job
	if err := s.withLease(ctx, id, token, func(_ pgx.Tx, jj *Job) error { j = jj; return nil }); err != nil {
		return nil, 0, err
	}
	if fileID != j.TrainingFile && (j.ValidationFile == nil || fileID != *j.ValidationFile) {
		return nil, 0, apierr.New(apierr.NotFound, "file %s is not a dataset of fine-tuning job %s", fileID, id)
	}
	f, err := s.files.Get(ctx, fileID)
	if err != nil {
		return nil, 0, apierr.New(apierr.NotFound, "file %s no longer exists", fileID)
	}
	rc, err := s.files.Open(ctx, fileID)
	if err != nil {
		return nil, 0, apierr.Wrap(err, "open %s", fileID)
	}
	return rc, f.Bytes, nil
}

// adapterKey is where an attempt's adapter is stored: an upload of a worker that lost its
// lease meanwhile cannot overwrite the next attempt's.
func adapterKey(jobID string, attempt int) string {
	return fmt.Sprintf("adapter-%s-%d", jobID, attempt)
}

// PutAdapter stores the adapter archive the worker uploads (replacing an earlier upload
// of the same attempt).
func (s *Service) PutAdapter(ctx context.Context, id, token string, body io.Reader) (int64, error) {
	attempt := 0
	if err := s.withLease(ctx, id, token, func(_ pgx.Tx, j *Job) error { attempt = j.Attempts; return nil }); err != nil {
		return 0, err
	}
	if body == nil {
		return 0, apierr.New(apierr.InvalidRequest, "the adapter archive is empty")
	}
	key := adapterKey(id, attempt)
	n, err := s.blobs.Put(ctx, key, body)
	if err != nil {
		var ae *apierr.Error
		if errors.As(err, &ae) {
			return 0, err
		}
		return 0, apierr.Wrap(err, "store adapter of %s", id)
	}
	if n == 0 {
		return 0, apierr.New(apierr.InvalidRequest, "the adapter archive is empty")
	}
	err = s.withLease(ctx, id, token, func(tx pgx.Tx, _ *Job) error {
		_, err := tx.Exec(ctx, `UPDATE fine_tuning_jobs SET adapter_key = $2, adapter_bytes = $3 WHERE id = $1`, id, key, n)
		if err != nil {
			return err
		}
		return addEvent(ctx, tx, id, "info", "message", fmt.Sprintf("Adapter uploaded (%d bytes)", n), nil)
	})
	return n, err
}

// OpenAdapter opens job id's adapter archive (for the workers that serve it).
func (s *Service) OpenAdapter(ctx context.Context, id string) (io.ReadCloser, int64, error) {
	j, err := getJob(ctx, s.db, id, false)
	if errors.Is(err, ErrNotFound) {
		return nil, 0, notFound(id)
	}
	if err != nil {
		return nil, 0, apierr.Wrap(err, "job %s", id)
	}
	if j.AdapterKey == "" || !j.Trained {
		return nil, 0, apierr.New(apierr.NotFound, "fine-tuning job %s has no adapter", id)
	}
	rc, n, err := s.blobs.Get(ctx, j.AdapterKey)
	if err != nil {
		return nil, 0, apierr.Wrap(err, "open adapter of %s", id)
	}
	return rc, n, nil
}

// Complete records that training finished and enqueues the model's registration in the
// same transaction.
func (s *Service) Complete(ctx context.Context, id, token string, r training.CompleteRequest) error {
	if r.TrainedTokens < 0 {
		return apierr.Param("trained_tokens", "trained_tokens must not be negative")
	}
	return s.withLease(ctx, id, token, func(tx pgx.Tx, j *Job) error {
		if j.AdapterKey == "" {
			return apierr.New(apierr.InvalidRequest, "upload the adapter (PUT %s%s/adapter) before completing", internalPrefix, id)
		}
		if _, err := tx.Exec(ctx, `UPDATE fine_tuning_jobs SET trained = TRUE, trained_tokens = $2, lease_token = NULL,
			lease_expires_at = NULL, estimated_finish = NULL, updated_at = now() WHERE id = $1`, id, r.TrainedTokens); err != nil {
			return err
		}
		if err := addEvent(ctx, tx, id, "info", "message", fmt.Sprintf("Training finished (%d tokens); registering the model", r.TrainedTokens), nil); err != nil {
			return err
		}
		_, err := s.queue.InsertTx(ctx, tx, RegisterArgs{JobID: id}, nil)
		return err
	})
}

// Fail records the trainer's failure: the job fails with its message.
func (s *Service) Fail(ctx context.Context, id, token string, r training.FailRequest) error {
	if r.Code == "" {
		r.Code = "training_failed"
	}
	if len(r.Code) > 64 || !textcheck.Valid(r.Code) {
		return apierr.Param("code", "code must have at most 64 characters, valid UTF-8 without NUL")
	}
	r.Message = cleanMessage(r.Message)
	if strings.TrimSpace(r.Message) == "" {
		return apierr.Param("message", "message is required")
	}
	return s.withLease(ctx, id, token, func(tx pgx.Tx, _ *Job) error {
		jerr := &JobError{Code: r.Code, Message: r.Message}
		if err := setStatus(ctx, tx, id, StatusFailed, "trainer failed", jerr); err != nil {
			return err
		}
		s.log.Info("fine-tuning job failed: trainer error", "job", id, "code", r.Code)
		return addEvent(ctx, tx, id, "error", "message", "Fine-tuning job failed: "+r.Message, map[string]any{"code": r.Code})
	})
}
