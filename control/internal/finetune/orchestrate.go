package finetune

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/riverqueue/river"

	"github.com/maas-platform/maas/control/internal/model"
	"github.com/maas-platform/maas/pkg/apierr"
)

// ValidateArgs is the River job that checks a new job's files.
type ValidateArgs struct {
	JobID string `json:"job_id"`
}

// Kind is River's name for the job.
func (ValidateArgs) Kind() string { return "finetune.validate" }

// InsertOpts bounds retries of a validation that cannot reach its stores.
func (ValidateArgs) InsertOpts() river.InsertOpts { return river.InsertOpts{MaxAttempts: 5} }

// RegisterArgs is the River job that turns a trained job into a served model.
type RegisterArgs struct {
	JobID string `json:"job_id"`
}

// Kind is River's name for the job.
func (RegisterArgs) Kind() string { return "finetune.register" }

// InsertOpts bounds retries; the last attempt fails the job rather than leave it running.
func (RegisterArgs) InsertOpts() river.InsertOpts { return river.InsertOpts{MaxAttempts: 10} }

// RescueArgs is the periodic River job that re-queues or fails jobs whose lease expired.
type RescueArgs struct{}

// Kind is River's name for the job.
func (RescueArgs) Kind() string { return "finetune.rescue" }

// InsertOpts: a failed rescue is not retried; the next period runs another.
func (RescueArgs) InsertOpts() river.InsertOpts { return river.InsertOpts{MaxAttempts: 1} }

// AddWorkers registers the domain's River workers on workers.
func (s *Service) AddWorkers(workers *river.Workers) {
	river.AddWorker(workers, &validateWorker{s: s})
	river.AddWorker(workers, &registerWorker{s: s})
	river.AddWorker(workers, &rescueWorker{s: s})
}

// PeriodicJobs are the domain's periodic River jobs.
func (s *Service) PeriodicJobs() []*river.PeriodicJob {
	return []*river.PeriodicJob{river.NewPeriodicJob(river.PeriodicInterval(s.opts.RescueInterval),
		func() (river.JobArgs, *river.InsertOpts) { return RescueArgs{}, nil },
		&river.PeriodicJobOpts{ID: "finetune.rescue", RunOnStart: true})}
}

type validateWorker struct {
	river.WorkerDefaults[ValidateArgs]
	s *Service
}

func (w *validateWorker) Work(ctx context.Context, job *river.Job[ValidateArgs]) error {
	err := w.s.validate(ctx, job.Args.JobID)
	if err != nil && job.Attempt >= job.MaxAttempts {
		// Out of retries: the job must not stay in validating_files.
		w.s.log.Error("fine-tuning validation failed for good", "job", job.Args.JobID, "err", err)
		return w.s.fail(ctx, job.Args.JobID, []string{StatusValidating}, &JobError{Code: "validation_error",
			Message: "the training files could not be validated: internal error; try again"})
	}
	return err
}

// validate moves job id from validating_files to queued, or fails it.
func (s *Service) validate(ctx context.Context, id string) error {
	j, err := getJob(ctx, s.db, id, false)
	if errors.Is(err, ErrNotFound) {
		return nil // deleted with its user
	}
	if err != nil {
		return err
	}
	if j.Status != StatusValidating {
		return nil // cancelled meanwhile
	}
	if s.files == nil {
		return errors.New("finetune: no Files API")
	}
	check := func(fileID, param string) (*JobError, error) {
		f, err := s.files.Get(ctx, fileID)
		switch {
		case errors.Is(err, ErrFileNotFound) || (err == nil && f.UserID != j.UserID):
			return &JobError{Code: "invalid_" + param, Param: ptr(param), Message: fmt.Sprintf("%s %s no longer exists", param, fileID)}, nil
		case err != nil:
			return nil, err
		case f.Purpose != PurposeFineTune:
			return &JobError{Code: "invalid_" + param, Param: ptr(param), Message: fmt.Sprintf("%s %s has purpose %q, not \"fine-tune\"", param, fileID, f.Purpose)}, nil
		case f.Status == "error":
			return &JobError{Code: "invalid_" + param, Param: ptr(param), Message: fmt.Sprintf("%s %s did not pass the dataset checks", param, fileID)}, nil
		case f.Bytes == 0 || (f.Status == "processed" && f.Lines == 0):
			return &JobError{Code: "invalid_" + param, Param: ptr(param), Message: fmt.Sprintf("%s %s has no training examples", param, fileID)}, nil
		}
		return nil, nil
	}
	jerr, err := check(j.TrainingFile, "training_file")
	if err == nil && jerr == nil && j.ValidationFile != nil {
		jerr, err = check(*j.ValidationFile, "validation_file")
	}
	if err != nil {
		return err
	}
	if jerr != nil {
		return s.fail(ctx, id, []string{StatusValidating}, jerr)
	}
	return s.inTx(ctx, func(tx pgx.Tx) error {
		j, err := getJob(ctx, tx, id, true)
		if err != nil || j.Status != StatusValidating {
			return err
		}
		if err := setStatus(ctx, tx, id, StatusQueued, "files validated", nil); err != nil {
			return err
		}
		if err := addEvent(ctx, tx, id, "info", "message", "Files validated, moving job to queued state", nil); err != nil {
			return err
		}
		return addEvent(ctx, tx, id, "info", "message", "Job enqueued; waiting for a training worker", nil)
	})
}

// fail moves job id to failed with jerr when its status is one of from.
func (s *Service) fail(ctx context.Context, id string, from []string, jerr *JobError) error {
	return s.inTx(ctx, func(tx pgx.Tx) error {
		j, err := getJob(ctx, tx, id, true)
		if errors.Is(err, ErrNotFound) {
			return nil
		}
		if err != nil {
			return err
		}
		ok := false
		for _, st := range from {
			ok = ok || j.Status == st
		}
		if !ok {
			return nil
		}
		if err := setStatus(ctx, tx, id, StatusFailed, jerr.Code, jerr); err != nil {
			return err
		}
		s.log.Info("fine-tuning job failed", "job", id, "code", jerr.Code)
		return addEvent(ctx, tx, id, "error", "message", "Fine-tuning job failed: "+jerr.Message, map[string]any{"code": jerr.Code})
	})
}

func (s *Service) inTx(ctx context.Context, f func(pgx.Tx) error) error {
	tx, err := s.db.Begin(ctx)
	if err != nil {
		return err
	}
	defer tx.Rollback(ctx) //nolint:errcheck
	if err := f(tx); err != nil {
		return err
	}
	return tx.Commit(ctx)
}

type rescueWorker struct {
	river.WorkerDefaults[RescueArgs]
	s *Service
}

func (w *rescueWorker) Work(ctx context.Context, _ *river.Job[RescueArgs]) error {
	_, err := w.s.Rescue(ctx)
	return err
}

// Rescue re-queues every running job whose lease expired, or fails it once it was claimed
// MaxAttempts times, and returns how many it changed.
func (s *Service) Rescue(ctx context.Context) (int, error) {
	n := 0
	err := s.inTx(ctx, func(tx pgx.Tx) error {
		rows, err := tx.Query(ctx, `SELECT id, attempts, COALESCE(worker_id, '') FROM fine_tuning_jobs
			WHERE status = 'running' AND NOT trained AND lease_expires_at < now()
			ORDER BY seq FOR UPDATE SKIP LOCKED LIMIT 100`)
		if err != nil {
			return err
		}
		type lost struct {
			id, worker string
			attempts   int
		}
		var list []lost
		for rows.Next() {
			var l lost
			if err := rows.Scan(&l.id, &l.attempts, &l.worker); err != nil {
				rows.Close()
				return err
			}
			list = append(list, l)
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return err
		}
		for _, l := range list {
			if l.attempts >= s.opts.MaxAttempts {
				jerr := &JobError{Code: "worker_lost", Message: fmt.Sprintf(
					"the training worker stopped renewing its lease on each of %d attempts (last: worker %q); the job was not retried again", l.attempts, l.worker)}
				if err := setStatus(ctx, tx, l.id, StatusFailed, "lease expired; attempts exhausted", jerr); err != nil {
					return err
				}
				if err := addEvent(ctx, tx, l.id, "error", "message", "Fine-tuning job failed: "+jerr.Message, map[string]any{"code": jerr.Code}); err != nil {
					return err
				}
				s.log.Warn("fine-tuning job failed: lease lost too often", "job", l.id, "attempts", l.attempts, "worker", l.worker)
			} else {
				if err := setStatus(ctx, tx, l.id, StatusQueued, "lease expired (worker "+l.worker+")", nil); err != nil {
					return err
				}
				// The next attempt starts from step 0: drop the lost attempt's progress.
				if _, err := tx.Exec(ctx, `UPDATE fine_tuning_jobs SET worker_id = NULL, started_at = NULL, adapter_key = NULL, adapter_bytes = NULL WHERE id = $1`, l.id); err != nil {
					return err
				}
				if _, err := tx.Exec(ctx, `DELETE FROM fine_tuning_metrics WHERE job_id = $1`, l.id); err != nil {
					return err
				}
				if _, err := tx.Exec(ctx, `DELETE FROM fine_tuning_checkpoints WHERE job_id = $1`, l.id); err != nil {
					return err
				}
				msg := fmt.Sprintf("Worker %s stopped renewing its lease; job re-queued (attempt %d of %d failed)", l.worker, l.attempts, s.opts.MaxAttempts)
				if err := addEvent(ctx, tx, l.id, "warn", "message", msg, nil); err != nil {
					return err
				}
				s.log.Warn("fine-tuning job re-queued: lease expired", "job", l.id, "attempts", l.attempts, "worker", l.worker)
			}
			n++
		}
		return nil
	})
	return n, err
}

type registerWorker struct {
	river.WorkerDefaults[RegisterArgs]
	s *Service
}

func (w *registerWorker) Work(ctx context.Context, job *river.Job[RegisterArgs]) error {
	err := w.s.register(ctx, job.Args.JobID)
	if err != nil && job.Attempt >= job.MaxAttempts {
		w.s.log.Error("fine-tuning model registration failed for good", "job", job.Args.JobID, "err", err)
		return w.s.fail(ctx, job.Args.JobID, []string{StatusRunning}, &JobError{Code: "registration_failed",
			Message: "training finished but the model could not be registered: internal error"})
	}
	return err
}

// register serves a trained job's adapter as its fine-tuned model, writes the metrics
// result file and marks the job succeeded. Each step is idempotent: River retries it.
func (s *Service) register(ctx context.Context, id string) error {
	j, err := getJob(ctx, s.db, id, false)
	if errors.Is(err, ErrNotFound) {
		return nil
	}
	if err != nil {
		return err
	}
	if j.Status != StatusRunning || !j.Trained {
		return nil // cancelled after training finished, or already done
	}
	base, err := s.models.Get(ctx, j.Model)
	if errors.Is(err, model.ErrNotFound) {
		return s.fail(ctx, id, []string{StatusRunning}, &JobError{Code: "base_model_removed",
			Message: fmt.Sprintf("the base model %s was removed before the fine-tuned model could be registered", j.Model)})
	}
	if err != nil {
		return err
	}
	suffix := ""
	if j.UserProvidedSuffix != nil {
		suffix = *j.UserProvidedSuffix
	}
	name := FineTunedModelName(j.Model, suffix, j.ID)
	_, err = s.models.Create(ctx, &model.Model{
		Name: name, Type: base.Type, BaseModel: base.Name,
		Description:          fmt.Sprintf("LoRA adapter of %s trained by fine-tuning job %s", base.Name, j.ID),
		ContextWindow:        base.ContextWindow,
		MaxOutputTokens:      base.MaxOutputTokens,
		InputPricePerMillion: base.InputPricePerMillion, OutputPricePerMillion: base.OutputPricePerMillion,
		Visibility: "restricted", AllowedRoles: []string{}, AllowedUsers: []int64{j.UserID},
		RoutingPolicy: base.RoutingPolicy, Enabled: true, Aliases: []string{},
	})
	if err != nil && !errors.Is(err, model.ErrNameTaken) {
		return fmt.Errorf("register %s: %w", name, err)
	}
	results := j.ResultFiles
	if len(results) == 0 && s.files != nil {
		csv, err := metricsCSV(ctx, s.db, id)
		if err != nil {
			return fmt.Errorf("metrics of %s: %w", id, err)
		}
		f, err := s.files.Create(ctx, j.UserID, PurposeResults, "step_metrics.csv", csv)
		var refused *apierr.Error
		switch {
		case errors.As(err, &refused) && refused.Kind != apierr.Internal:
			// The Files API refuses the file for good (e.g. the purpose, or the user's file
			// limits): the model is served anyway; the metrics stay in the job's events.
			s.log.Warn("fine-tuning result file refused by the Files API", "job", id, "err", err)
			if err := addEvent(ctx, s.db, id, "warn", "message", "The metrics result file could not be stored: "+refused.Message+
				"; the step metrics remain in this job's events", nil); err != nil {
				return err
			}
		case err != nil:
			return fmt.Errorf("result file of %s: %w", id, err)
		default:
			results = []string{f.ID}
			if _, err := s.db.Exec(ctx, `UPDATE fine_tuning_jobs SET result_files = $2 WHERE id = $1`, id, results); err != nil {
				return err
			}
		}
	}
	return s.inTx(ctx, func(tx pgx.Tx) error {
		j, err := getJob(ctx, tx, id, true)
		if err != nil || j.Status != StatusRunning {
			return err
		}
		if _, err := tx.Exec(ctx, `UPDATE fine_tuning_jobs SET fine_tuned_model = $2 WHERE id = $1`, id, name); err != nil {
			return err
		}
		if err := setStatus(ctx, tx, id, StatusSucceeded, "model registered", nil); err != nil {
			return err
		}
		if err := addEvent(ctx, tx, id, "info", "message", "New fine-tuned model created: "+name, nil); err != nil {
			return err
		}
		s.log.Info("fine-tuning job succeeded", "job", id, "model", name)
		return addEvent(ctx, tx, id, "info", "message", "The job has successfully completed", nil)
	})
}

// leaseFor clamps a requested lease length to the bounds.
func (s *Service) leaseFor(seconds float64) time.Duration {
	if seconds <= 0 {
		return s.opts.Lease
	}
	d := time.Duration(seconds * float64(time.Second))
	return min(max(d, s.opts.MinLease), s.opts.MaxLease)
}
