package finetune

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/riverqueue/river"
	"github.com/riverqueue/river/rivertype"

	"github.com/maas-platform/maas/control/internal/model"
	"github.com/maas-platform/maas/pkg/apierr"
	"github.com/maas-platform/maas/pkg/textcheck"
)

// File is what this package needs to know of an uploaded file.
type File struct {
	ID       string
	UserID   int64
	Purpose  string
	Filename string
	Bytes    int64
	// Lines and Tokens are the dataset's examples and estimated tokens (0 when unknown).
	Lines  int64
	Tokens int64
	// Status is the file's state: processed when its content passed the upload checks.
	Status string
}

// ErrFileNotFound is Files.Get's answer for an unknown file.
var ErrFileNotFound = errors.New("finetune: file not found")

// Files is the Files API as this package consumes it.
type Files interface {
	// Get returns file id whoever owns it; ErrFileNotFound when there is none.
	Get(ctx context.Context, id string) (File, error)
	// Open opens file id's content.
	Open(ctx context.Context, id string) (io.ReadCloser, error)
	// Create stores content as a new file of userID with purpose and filename.
	Create(ctx context.Context, userID int64, purpose, filename string, content []byte) (File, error)
}

// Blobs stores adapter archives by key (the files' blob store: a local directory or S3).
type Blobs interface {
	Put(ctx context.Context, key string, r io.Reader) (int64, error)
	Get(ctx context.Context, key string) (io.ReadCloser, int64, error)
}

// Models is the model registry as this package consumes it.
type Models interface {
	Get(ctx context.Context, name string) (*model.Model, error)
	Create(ctx context.Context, m *model.Model) (*model.Model, error)
}

// Enqueuer inserts River jobs in a transaction (jobs.Queue).
type Enqueuer interface {
	InsertTx(ctx context.Context, tx pgx.Tx, args river.JobArgs, opts *river.InsertOpts) (*rivertype.JobInsertResult, error)
}

// Purposes of the files this package reads and writes.
const (
	PurposeFineTune = "fine-tune"
	PurposeResults  = "fine-tune-results"
)

// Options configures a Service.
type Options struct {
	Logger *slog.Logger
	// MaxActiveJobs bounds a user's jobs that are validating, queued or running
	// (MAAS_FINETUNE_MAX_ACTIVE_JOBS; 3 when zero).
	MaxActiveJobs int
	// MaxAttempts is how many times a job may be claimed by a worker before a lost lease
	// fails it (MAAS_FINETUNE_MAX_ATTEMPTS; 3 when zero).
	MaxAttempts int
	// Lease is the default lease a claim gets (MAAS_FINETUNE_LEASE; 60s when zero); a
	// worker may ask for one from MinLease to MaxLease.
	Lease    time.Duration
	MinLease time.Duration // 5s when zero (tests shorten it)
	MaxLease time.Duration // 10m when zero
	// RescueInterval is how often expired leases are looked for (10s when zero).
	RescueInterval time.Duration
	// MaxAdapterBytes bounds an uploaded adapter archive (MAAS_FINETUNE_MAX_ADAPTER_BYTES;
	// 4 GiB when zero).
	MaxAdapterBytes int64
	// Registerer receives maas_control_finetune_jobs{status} (none when nil).
	Registerer prometheus.Registerer
}

func (o *Options) defaults() {
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.MaxActiveJobs <= 0 {
		o.MaxActiveJobs = 3
	}
	if o.MaxAttempts <= 0 {
		o.MaxAttempts = 3
	}
	if o.MinLease <= 0 {
		o.MinLease = 5 * time.Second
	}
	if o.MaxLease <= 0 {
		o.MaxLease = 10 * time.Minute
	}
	if o.Lease <= 0 {
		o.Lease = time.Minute
	}
	o.Lease = min(max(o.Lease, o.MinLease), o.MaxLease)
	if o.RescueInterval <= 0 {
		o.RescueInterval = 10 * time.Second
	}
	if o.MaxAdapterBytes <= 0 {
		o.MaxAdapterBytes = 4 << 30
	}
}

// Service is the fine-tuning domain. Safe for concurrent use.
type Service struct {
	db     DB
	files  Files
	blobs  Blobs
	models Models
	queue  Enqueuer
	opts   Options
	log    *slog.Logger
}

// New returns a Service. files may be nil until the Files API is wired: creating a job then
// answers 503.
func New(db DB, files Files, blobs Blobs, models Models, queue Enqueuer, o Options) (*Service, error) {
	if db == nil || blobs == nil || models == nil || queue == nil {
		return nil, errors.New("finetune: db, blobs, models and queue are required")
	}
	o.defaults()
	if o.Registerer != nil {
		if err := o.Registerer.Register(newJobsCollector(db)); err != nil {
			return nil, fmt.Errorf("finetune: register metrics: %w", err)
		}
	}
	return &Service{db: db, files: files, blobs: blobs, models: models, queue: queue, opts: o, log: o.Logger}, nil
}

// Caller is who acts on jobs.
type Caller struct {
	UserID int64
	Roles  []string
	Admin  bool
}

// notFound is the answer for a job the caller may not see, or that does not exist.
func notFound(id string) error {
	return &apierr.Error{Kind: apierr.NotFound, Message: fmt.Sprintf("fine-tuning job %s not found", id), Param: "fine_tuning_job_id"}
}

// Get returns job id if the caller may see it.
func (s *Service) Get(ctx context.Context, c Caller, id string) (*Job, error) {
	j, err := getJob(ctx, s.db, id, false)
	if errors.Is(err, ErrNotFound) || (err == nil && !c.Admin && j.UserID != c.UserID) {
		return nil, notFound(id)
	}
	if err != nil {
		return nil, apierr.Wrap(err, "get fine-tuning job %s", id)
	}
	return j, nil
}

// userFile looks up a dataset of userID for param, answering 400 when it is not usable.
func (s *Service) userFile(ctx context.Context, userID int64, id, param string) (File, error) {
	f, err := s.files.Get(ctx, id)
	if errors.Is(err, ErrFileNotFound) || (err == nil && f.UserID != userID) {
		return f, &apierr.Error{Kind: apierr.InvalidRequest, Param: param, Code: "invalid_" + param,
			Message: fmt.Sprintf("%s %s does not exist or is not yours", param, id)}
	}
	if err != nil {
		return f, apierr.Wrap(err, "look up %s %s", param, id)
	}
	if f.Purpose != PurposeFineTune {
		return f, &apierr.Error{Kind: apierr.InvalidRequest, Param: param, Code: "invalid_" + param,
			Message: fmt.Sprintf("%s %s has purpose %q; upload it with purpose \"fine-tune\"", param, id, f.Purpose)}
	}
	return f, nil
}

// Create validates r for caller and stores a job in validating_files with its validation
// River job, in one transaction.
func (s *Service) Create(ctx context.Context, c Caller, r *createRequest) (*Job, error) {
	method, err := r.resolve()
	if err != nil {
		return nil, err
	}
	base, err := s.models.Get(ctx, r.Model)
	if errors.Is(err, model.ErrNotFound) || (err == nil && !base.VisibleTo(c.UserID, c.Roles, c.Admin)) {
		return nil, &apierr.Error{Kind: apierr.InvalidRequest, Param: "model", Code: "model_not_found",
			Message: fmt.Sprintf("model %q does not exist or you do not have access to it", r.Model)}
	}
	if err != nil {
		return nil, apierr.Wrap(err, "look up model %s", r.Model)
	}
	if base.BaseModel != "" {
		return nil, apierr.Param("model", "model %q is itself a fine-tuned adapter; fine-tune its base model %q", base.Name, base.BaseModel)
	}
	if base.Type != "chat" && base.Type != "completion" {
		return nil, apierr.Param("model", "model %q is a %s model; only chat and completion models can be fine-tuned", base.Name, base.Type)
	}
	if s.files == nil {
		return nil, apierr.New(apierr.Unavailable, "fine-tuning needs the Files API, which is not configured")
	}
	if _, err := s.userFile(ctx, c.UserID, r.TrainingFile, "training_file"); err != nil {
		return nil, err
	}
	if r.ValidationFile != nil {
		if _, err := s.userFile(ctx, c.UserID, *r.ValidationFile, "validation_file"); err != nil {
			return nil, err
		}
	}
	j := &Job{
		Object: "fine_tuning.job", ID: newID("ftjob-"), UserID: c.UserID, Model: base.Name,
		TrainingFile: r.TrainingFile, ValidationFile: r.ValidationFile, UserProvidedSuffix: r.Suffix,
		Method: method, Hyperparameters: method.Supervised.Hyperparameters, Metadata: r.Metadata,
		Status: StatusValidating, ResultFiles: []string{}, Integrations: []any{}, OrganizationID: orgID(c.UserID),
	}
	if r.Seed != nil {
		j.Seed = *r.Seed
	} else {
		j.Seed = rand.Int64N(1 << 31)
	}

	tx, err := s.db.Begin(ctx)
	if err != nil {
		return nil, apierr.Wrap(err, "create fine-tuning job")
	}
	defer tx.Rollback(ctx) //nolint:errcheck
	n, err := countActive(ctx, tx, c.UserID)
	if err != nil {
		return nil, apierr.Wrap(err, "create fine-tuning job")
	}
	if n >= s.opts.MaxActiveJobs {
		return nil, &apierr.Error{Kind: apierr.RateLimited, Code: "too_many_active_jobs",
			Message: fmt.Sprintf("you have %d active fine-tuning jobs, the limit; wait for one to finish or cancel one", n)}
	}
	if err := insertJob(ctx, tx, j); err != nil {
		return nil, apierr.Wrap(err, "create fine-tuning job")
	}
	if err := addEvent(ctx, tx, j.ID, "info", "message", "Created fine-tuning job: "+j.ID, nil); err != nil {
		return nil, apierr.Wrap(err, "create fine-tuning job")
	}
	if err := addEvent(ctx, tx, j.ID, "info", "message", "Validating training file: "+j.TrainingFile, nil); err != nil {
		return nil, apierr.Wrap(err, "create fine-tuning job")
	}
	if _, err := s.queue.InsertTx(ctx, tx, ValidateArgs{JobID: j.ID}, nil); err != nil {
		return nil, apierr.Wrap(err, "enqueue validation of %s", j.ID)
	}
	if err := tx.Commit(ctx); err != nil {
		return nil, apierr.Wrap(err, "create fine-tuning job")
	}
	s.log.Info("fine-tuning job created", "job", j.ID, "user_id", c.UserID, "model", j.Model)
	return j, nil
}

// List returns up to limit+1 of the caller's jobs (every job for an admin), newest first.
func (s *Service) List(ctx context.Context, c Caller, after string, limit int) ([]*Job, error) {
	if err := checkCursor(after, "fine-tuning job"); err != nil {
		return nil, err
	}
	uid := c.UserID
	if c.Admin {
		uid = 0
	}
	jobs, err := listJobs(ctx, s.db, uid, after, limit)
	if err != nil {
		return nil, apierr.Wrap(err, "list fine-tuning jobs")
	}
	return jobs, nil
}

// Cancel cancels job id: at once when it has not started, and a running job's worker
// learns it at its next heartbeat.
func (s *Service) Cancel(ctx context.Context, c Caller, id string) (*Job, error) {
	tx, err := s.db.Begin(ctx)
	if err != nil {
		return nil, apierr.Wrap(err, "cancel %s", id)
	}
	defer tx.Rollback(ctx) //nolint:errcheck
	j, err := getJob(ctx, tx, id, true)
	if errors.Is(err, ErrNotFound) || (err == nil && !c.Admin && j.UserID != c.UserID) {
		return nil, notFound(id)
	}
	if err != nil {
		return nil, apierr.Wrap(err, "cancel %s", id)
	}
	if j.Terminal() {
		return nil, &apierr.Error{Kind: apierr.InvalidRequest, Code: "job_not_cancellable",
			Message: fmt.Sprintf("fine-tuning job %s is already %s", id, j.Status)}
	}
	if j.Trained {
		return nil, &apierr.Error{Kind: apierr.InvalidRequest, Code: "job_not_cancellable",
			Message: fmt.Sprintf("fine-tuning job %s has finished training and its model is being registered", id)}
	}
	was := j.Status
	if err := setStatus(ctx, tx, id, StatusCancelled, "cancelled by user "+fmt.Sprint(c.UserID)+" while "+was, nil); err != nil {
		return nil, apierr.Wrap(err, "cancel %s", id)
	}
	if err := addEvent(ctx, tx, id, "info", "message", "Fine-tuning job cancelled", nil); err != nil {
		return nil, apierr.Wrap(err, "cancel %s", id)
	}
	if j, err = getJob(ctx, tx, id, false); err != nil {
		return nil, apierr.Wrap(err, "cancel %s", id)
	}
	if err := tx.Commit(ctx); err != nil {
		return nil, apierr.Wrap(err, "cancel %s", id)
	}
	s.log.Info("fine-tuning job cancelled", "job", id, "was", was, "by", c.UserID)
	return j, nil
}

// Events returns up to limit+1 of job id's events older than after, newest first.
func (s *Service) Events(ctx context.Context, c Caller, id, after string, limit int) ([]*Event, error) {
	if _, err := s.Get(ctx, c, id); err != nil {
		return nil, err
	}
	if err := checkCursor(after, "event"); err != nil {
		return nil, err
	}
	ev, err := listEvents(ctx, s.db, id, after, limit)
	if err != nil {
		return nil, apierr.Wrap(err, "list events of %s", id)
	}
	return ev, nil
}

// Checkpoints returns up to limit+1 of job id's checkpoints, newest first.
func (s *Service) Checkpoints(ctx context.Context, c Caller, id, after string, limit int) ([]*Checkpoint, error) {
	if _, err := s.Get(ctx, c, id); err != nil {
		return nil, err
	}
	if err := checkCursor(after, "checkpoint"); err != nil {
		return nil, err
	}
	cp, err := listCheckpoints(ctx, s.db, id, after, limit)
	if err != nil {
		return nil, apierr.Wrap(err, "list checkpoints of %s", id)
	}
	return cp, nil
}

// checkCursor refuses a pagination cursor that names nothing: text PostgreSQL would refuse
// (NUL, invalid UTF-8) fails the list otherwise.
func checkCursor(after, what string) error {
	if len(after) > 256 || !textcheck.Valid(after) {
		return apierr.Param("after", "after must be the id of a listed %s", what)
	}
	return nil
}
