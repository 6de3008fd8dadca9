package finetune

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/maas-platform/maas/pkg/textcheck"
)

// DB is what this package needs of PostgreSQL; *pgxpool.Pool satisfies it.
type DB interface {
	Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error)
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
	Begin(ctx context.Context) (pgx.Tx, error)
}

// querier is a pool or a transaction.
type querier interface {
	Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error)
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

// ErrNotFound reports an unknown job (or one the caller may not see).
var ErrNotFound = errors.New("finetune: job not found")

const jobColumns = `id, user_id, model, training_file, validation_file, suffix, seed, method, metadata, status,
	fine_tuned_model, trained_tokens, error, result_files, attempts, COALESCE(worker_id, ''), COALESCE(lease_token, ''),
	lease_expires_at, COALESCE(lease_ms, 0), COALESCE(adapter_key, ''), COALESCE(adapter_bytes, 0), trained, estimated_finish, created_at, finished_at`

func scanJob(row pgx.Row) (*Job, error) {
	j := &Job{Object: "fine_tuning.job", Integrations: []any{}}
	var (
		method, meta, jerr []byte
		leaseExp, est, fin *time.Time
		created            time.Time
	)
	err := row.Scan(&j.ID, &j.UserID, &j.Model, &j.TrainingFile, &j.ValidationFile, &j.UserProvidedSuffix, &j.Seed,
		&method, &meta, &j.Status, &j.FineTunedModel, &j.TrainedTokens, &jerr, &j.ResultFiles, &j.Attempts,
		&j.WorkerID, &j.LeaseToken, &leaseExp, &j.LeaseMS, &j.AdapterKey, &j.AdapterBytes, &j.Trained, &est, &created, &fin)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, ErrNotFound
	}
	if err != nil {
		return nil, err
	}
	if err := json.Unmarshal(method, &j.Method); err != nil {
		return nil, fmt.Errorf("job %s: method: %w", j.ID, err)
	}
	j.Hyperparameters = j.Method.Supervised.Hyperparameters
	if len(meta) > 0 {
		if err := json.Unmarshal(meta, &j.Metadata); err != nil {
			return nil, fmt.Errorf("job %s: metadata: %w", j.ID, err)
		}
	}
	if len(jerr) > 0 {
		j.Error = &JobError{}
		if err := json.Unmarshal(jerr, j.Error); err != nil {
			return nil, fmt.Errorf("job %s: error: %w", j.ID, err)
		}
	}
	if j.ResultFiles == nil {
		j.ResultFiles = []string{}
	}
	j.OrganizationID = orgID(j.UserID)
	j.CreatedAt = created.Unix()
	if leaseExp != nil {
		j.LeaseExpiresAt = leaseExp.Unix()
	}
	if fin != nil {
		j.FinishedAt = ptr(fin.Unix())
	}
	if est != nil && j.Status == StatusRunning {
		j.EstimatedFinish = ptr(est.Unix())
	}
	return j, nil
}

func getJob(ctx context.Context, q querier, id string, forUpdate bool) (*Job, error) {
	if !textcheck.Valid(id) {
		return nil, ErrNotFound // names no job, and PostgreSQL would refuse it
	}
	sql := `SELECT ` + jobColumns + ` FROM fine_tuning_jobs WHERE id = $1`
	if forUpdate {
		sql += ` FOR UPDATE`
	}
	return scanJob(q.QueryRow(ctx, sql, id))
}

func insertJob(ctx context.Context, tx pgx.Tx, j *Job) error {
	method, err := json.Marshal(j.Method)
	if err != nil {
		return err
	}
	var meta []byte
	if j.Metadata != nil {
		if meta, err = json.Marshal(j.Metadata); err != nil {
			return err
		}
	}
	var created time.Time
	err = tx.QueryRow(ctx, `INSERT INTO fine_tuning_jobs (id, user_id, model, training_file, validation_file, suffix, seed, method, metadata, status)
		VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) RETURNING created_at`,
		j.ID, j.UserID, j.Model, j.TrainingFile, j.ValidationFile, j.UserProvidedSuffix, j.Seed, method, meta, j.Status).Scan(&created)
	if err != nil {
		return err
	}
	j.CreatedAt = created.Unix()
	return transition(ctx, tx, j.ID, j.Status, "created")
}

// transition records that job id entered status.
func transition(ctx context.Context, q querier, id, status, reason string) error {
	_, err := q.Exec(ctx, `INSERT INTO fine_tuning_job_transitions (job_id, status, reason) VALUES ($1, $2, $3)`, id, status, reason)
	return err
}

// setStatus moves job id to status and records the transition; finished sets finished_at,
// and a job leaving running loses its lease.
func setStatus(ctx context.Context, tx pgx.Tx, id, status, reason string, jerr *JobError) error {
	var errJSON []byte
	if jerr != nil {
		var err error
		if errJSON, err = json.Marshal(jerr); err != nil {
			return err
		}
	}
	terminal := status == StatusSucceeded || status == StatusFailed || status == StatusCancelled
	_, err := tx.Exec(ctx, `UPDATE fine_tuning_jobs SET status = $2, error = COALESCE($3, error),
		finished_at = CASE WHEN $4 THEN now() ELSE finished_at END,
		lease_token = CASE WHEN $2 = 'running' THEN lease_token END,
		lease_expires_at = CASE WHEN $2 = 'running' THEN lease_expires_at END,
		estimated_finish = CASE WHEN $2 = 'running' THEN estimated_finish END,
		updated_at = now() WHERE id = $1`, id, status, errJSON, terminal)
	if err != nil {
		return err
	}
	return transition(ctx, tx, id, status, reason)
}

// addEvent appends an event to job id.
func addEvent(ctx context.Context, q querier, jobID, level, typ, message string, data map[string]any) error {
	var raw []byte
	if data != nil {
		var err error
		if raw, err = json.Marshal(data); err != nil {
			return err
		}
	}
	_, err := q.Exec(ctx, `INSERT INTO fine_tuning_events (id, job_id, level, type, message, data) VALUES ($1, $2, $3, $4, $5, $6)`,
		newID("ftevent-"), jobID, level, typ, message, raw)
	return err
}

// listJobs returns up to limit+1 jobs newest first, older than the job after (all users'
// when userID is 0).
func listJobs(ctx context.Context, q querier, userID int64, after string, limit int) ([]*Job, error) {
	rows, err := q.Query(ctx, `SELECT `+jobColumns+` FROM fine_tuning_jobs
		WHERE ($1 = 0 OR user_id = $1)
		  AND ($2 = '' OR seq < (SELECT seq FROM fine_tuning_jobs WHERE id = $2))
		ORDER BY seq DESC LIMIT $3`, userID, after, limit+1)
	if err != nil {
		return nil, err
	}
	return collect(rows, scanJob)
}

func listEvents(ctx context.Context, q querier, jobID, after string, limit int) ([]*Event, error) {
	rows, err := q.Query(ctx, `SELECT id, created_at, level, type, message, data FROM fine_tuning_events
		WHERE job_id = $1 AND ($2 = '' OR seq < (SELECT seq FROM fine_tuning_events WHERE id = $2 AND job_id = $1))
		ORDER BY seq DESC LIMIT $3`, jobID, after, limit+1)
	if err != nil {
		return nil, err
	}
	return collect(rows, func(row pgx.Row) (*Event, error) {
		e := &Event{Object: "fine_tuning.job.event"}
		var at time.Time
		var data []byte
		if err := row.Scan(&e.ID, &at, &e.Level, &e.Type, &e.Message, &data); err != nil {
			return nil, err
		}
		e.CreatedAt = at.Unix()
		if len(data) > 0 {
			if err := json.Unmarshal(data, &e.Data); err != nil {
				return nil, err
			}
		}
		if e.Data == nil {
			e.Data = map[string]any{}
		}
		return e, nil
	})
}

func listCheckpoints(ctx context.Context, q querier, jobID, after string, limit int) ([]*Checkpoint, error) {
	rows, err := q.Query(ctx, `SELECT id, created_at, name, step, metrics FROM fine_tuning_checkpoints
		WHERE job_id = $1 AND ($2 = '' OR seq < (SELECT seq FROM fine_tuning_checkpoints WHERE id = $2 AND job_id = $1))
		ORDER BY seq DESC LIMIT $3`, jobID, after, limit+1)
	if err != nil {
		return nil, err
	}
	return collect(rows, func(row pgx.Row) (*Checkpoint, error) {
		c := &Checkpoint{Object: "fine_tuning.job.checkpoint", FineTuningJobID: jobID}
		var at time.Time
		var m []byte
		if err := row.Scan(&c.ID, &at, &c.FineTunedModelCheckpoint, &c.StepNumber, &m); err != nil {
			return nil, err
		}
		c.CreatedAt = at.Unix()
		if err := json.Unmarshal(m, &c.Metrics); err != nil {
			return nil, err
		}
		return c, nil
	})
}

func collect[T any](rows pgx.Rows, scan func(pgx.Row) (T, error)) ([]T, error) {
	defer rows.Close()
	var out []T
	for rows.Next() {
		v, err := scan(rows)
		if err != nil {
			return nil, err
		}
		out = append(out, v)
	}
	return out, rows.Err()
}

// countActive counts userID's jobs that are not finished, after locking the user's row so
// that two concurrent creations cannot both pass the limit.
func countActive(ctx context.Context, tx pgx.Tx, userID int64) (int, error) {
	if _, err := tx.Exec(ctx, `SELECT 1 FROM users WHERE id = $1 FOR NO KEY UPDATE`, userID); err != nil {
		return 0, err
	}
	var n int
	err := tx.QueryRow(ctx, `SELECT count(*) FROM fine_tuning_jobs WHERE user_id = $1
		AND status IN ('validating_files', 'queued', 'running')`, userID).Scan(&n)
	return n, err
}

// metricsCSV renders the job's step metrics as the result file OpenAI writes
// (step,train_loss,train_accuracy,valid_loss,valid_mean_token_accuracy).
func metricsCSV(ctx context.Context, q querier, jobID string) ([]byte, error) {
	rows, err := q.Query(ctx, `SELECT step, train_loss, train_mean_token_accuracy, valid_loss, valid_mean_token_accuracy
		FROM fine_tuning_metrics WHERE job_id = $1 ORDER BY step`, jobID)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	out := []byte("step,train_loss,train_accuracy,valid_loss,valid_mean_token_accuracy\n")
	for rows.Next() {
		var step int
		var tl, ta, vl, va *float64
		if err := rows.Scan(&step, &tl, &ta, &vl, &va); err != nil {
			return nil, err
		}
		out = fmt.Appendf(out, "%d,%s,%s,%s,%s\n", step, num(tl), num(ta), num(vl), num(va))
	}
	return out, rows.Err()
}

func num(f *float64) string {
	if f == nil {
		return ""
	}
	return fmt.Sprintf("%.6g", *f)
}
