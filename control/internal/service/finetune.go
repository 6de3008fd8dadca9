package service

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"path/filepath"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/maas-platform/maas/control/internal/file"
	"github.com/maas-platform/maas/control/internal/finetune"
	"github.com/maas-platform/maas/control/internal/jobs"
	"github.com/maas-platform/maas/control/internal/model"
	"github.com/maas-platform/maas/pkg/config"
)

// FineTuneOptions configure fine-tuning (/v1/fine_tuning) and its job queue.
type FineTuneOptions struct {
	// MaxActiveJobs bounds a user's unfinished jobs (MAAS_FINETUNE_MAX_ACTIVE_JOBS).
	MaxActiveJobs int
	// MaxAttempts is how often a job is handed to a worker before a lost lease fails it
	// (MAAS_FINETUNE_MAX_ATTEMPTS).
	MaxAttempts int
	// Lease is a training worker's default lease, renewed by each of its calls
	// (MAAS_FINETUNE_LEASE).
	Lease time.Duration
	// MaxAdapterBytes bounds an uploaded adapter archive (MAAS_FINETUNE_MAX_ADAPTER_BYTES).
	MaxAdapterBytes int
	// JobWorkers bounds the background jobs this process works at once (MAAS_JOBS_WORKERS).
	JobWorkers int

	// Tests only: shorter leases, rescue period and job polling.
	MinLease       time.Duration
	RescueInterval time.Duration
	JobPoll        time.Duration
}

func bindFineTune(l *config.Loader, o *FineTuneOptions) {
	l.Int(&o.MaxActiveJobs, "MAAS_FINETUNE_MAX_ACTIVE_JOBS", "finetune-max-active-jobs", 3, "fine-tuning jobs one user may have validating, queued or running at once")
	l.Int(&o.MaxAttempts, "MAAS_FINETUNE_MAX_ATTEMPTS", "finetune-max-attempts", 3, "times a fine-tuning job is handed to a training worker before a lost lease fails it")
	l.Duration(&o.Lease, "MAAS_FINETUNE_LEASE", "finetune-lease", time.Minute, "lease of a training worker on its job, renewed by its heartbeats (5s to 10m)")
	l.Int(&o.MaxAdapterBytes, "MAAS_FINETUNE_MAX_ADAPTER_BYTES", "finetune-max-adapter-bytes", 4<<30, "largest adapter archive a training worker may upload, in bytes")
	l.Int(&o.JobWorkers, "MAAS_JOBS_WORKERS", "jobs-workers", 10, "background jobs (River) this control works at once")
}

func (o FineTuneOptions) validate() error {
	switch {
	case o.MaxActiveJobs < 1:
		return &config.Error{Name: "MAAS_FINETUNE_MAX_ACTIVE_JOBS", Msg: "must be at least 1"}
	case o.MaxAttempts < 1:
		return &config.Error{Name: "MAAS_FINETUNE_MAX_ATTEMPTS", Msg: "must be at least 1"}
	case o.Lease < 5*time.Second || o.Lease > 10*time.Minute:
		return &config.Error{Name: "MAAS_FINETUNE_LEASE", Msg: "must be from 5s to 10m"}
	case o.MaxAdapterBytes < 1:
		return &config.Error{Name: "MAAS_FINETUNE_MAX_ADAPTER_BYTES", Msg: "must be a positive number of bytes"}
	case o.JobWorkers < 1:
		return &config.Error{Name: "MAAS_JOBS_WORKERS", Msg: "must be at least 1"}
	}
	return nil
}

// newQueue is control's River client; domains add their workers before it starts.
func newQueue(pool *pgxpool.Pool, o Options, log *slog.Logger) *jobs.Queue {
	return jobs.New(pool, jobs.Options{Logger: log, MaxWorkers: o.FineTune.JobWorkers, PollInterval: o.FineTune.JobPoll})
}

// newFineTune builds the fine-tuning domain on the Files API, the model registry and the
// queue, with its workers added to the queue. Adapters are kept in the files' store (the
// local directory's adapters/ subfolder, or the S3 store under the prefix adapters/).
func newFineTune(pool *pgxpool.Pool, o Options, log *slog.Logger, reg prometheus.Registerer, files *file.Service, models *model.Service, q *jobs.Queue) (*finetune.Service, error) {
	var blobs finetune.Blobs
	if o.Files.S3.Endpoint != "" {
		s3o := o.Files.S3
		s3o.Prefix += "adapters/"
		s3, err := file.NewS3(s3o)
		if err != nil {
			return nil, err
		}
		blobs = s3
	} else {
		dir := o.Files.Dir
		if dir == "" {
			dir = filepath.Join(".data", "control", "files")
		}
		blobs = file.Dir{Path: filepath.Join(dir, "adapters")}
	}
	var ff finetune.Files
	if files != nil {
		ff = fileAdapter{files}
	}
	ft, err := finetune.New(pool, ff, blobs, models, q, finetune.Options{
		Logger: log, MaxActiveJobs: o.FineTune.MaxActiveJobs, MaxAttempts: o.FineTune.MaxAttempts,
		Lease: o.FineTune.Lease, MinLease: o.FineTune.MinLease, RescueInterval: o.FineTune.RescueInterval,
		MaxAdapterBytes: int64(o.FineTune.MaxAdapterBytes), Registerer: reg,
	})
	if err != nil {
		return nil, err
	}
	ft.AddWorkers(q.Workers())
	for _, p := range ft.PeriodicJobs() {
		q.AddPeriodic(p)
	}
	return ft, nil
}

// fileAdapter is the Files API as the fine-tuning domain consumes it.
type fileAdapter struct{ s *file.Service }

func (a fileAdapter) Get(ctx context.Context, id string) (finetune.File, error) {
	f, err := a.s.Get(ctx, id, 0, true)
	if errors.Is(err, file.ErrNotFound) {
		return finetune.File{}, finetune.ErrFileNotFound
	}
	if err != nil {
		return finetune.File{}, err
	}
	return toFineTuneFile(f), nil
}

func (a fileAdapter) Open(ctx context.Context, id string) (io.ReadCloser, error) {
	f, err := a.s.Get(ctx, id, 0, true)
	if errors.Is(err, file.ErrNotFound) {
		return nil, finetune.ErrFileNotFound
	}
	if err != nil {
		return nil, err
	}
	rc, _, err := a.s.Open(ctx, f)
	return rc, err
}

func (a fileAdapter) Create(ctx context.Context, userID int64, purpose, filename string, content []byte) (finetune.File, error) {
	// finetune creates only its result files (purpose fine-tune-results).
	f, err := a.s.CreateOutput(ctx, file.Upload{UserID: userID, Filename: filename, Purpose: purpose, Content: bytes.NewReader(content)})
	if err != nil {
		return finetune.File{}, err
	}
	return toFineTuneFile(f), nil
}

func toFineTuneFile(f *file.File) finetune.File {
	out := finetune.File{ID: f.ID, UserID: f.UserID, Purpose: f.Purpose, Filename: f.Filename, Bytes: f.Bytes, Status: f.Status}
	if f.Examples != nil {
		out.Lines = int64(*f.Examples)
	}
	if f.Tokens != nil {
		out.Tokens = *f.Tokens
	}
	return out
}
