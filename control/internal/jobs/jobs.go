// Package jobs runs control's background jobs on PostgreSQL with River: a job is a row in
// River's tables, inserted in the same transaction as the domain row that asks for it (so
// no job is lost and none is orphaned), worked by this process's River client, retried with
// backoff when it fails, and rescued when the process that worked it died. Domains add
// their workers and periodic jobs before Start; River's own schema is applied by Migrate
// from control's migration step.
package jobs

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/riverqueue/river"
	"github.com/riverqueue/river/riverdriver/riverpgxv5"
	"github.com/riverqueue/river/rivertype"
)

// ErrNotStarted reports an insert before Start.
var ErrNotStarted = errors.New("jobs: queue not started")

// Options configures a Queue.
type Options struct {
	Logger *slog.Logger
	// MaxWorkers bounds the jobs worked at once by this process (10 when zero).
	MaxWorkers int
	// PollInterval is how often River looks for available jobs besides its notifications
	// (River's default when zero; tests shorten it).
	PollInterval time.Duration
}

// Queue is control's River client and the workers registered on it. Add workers and
// periodic jobs before Start; InsertTx is safe for concurrent use once started.
type Queue struct {
	pool     *pgxpool.Pool
	opts     Options
	workers  *river.Workers
	periodic []*river.PeriodicJob

	mu      sync.Mutex
	client  *river.Client[pgx.Tx]
	stopped bool
}

// New returns a Queue on pool; nothing runs before Start.
func New(pool *pgxpool.Pool, o Options) *Queue {
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.MaxWorkers <= 0 {
		o.MaxWorkers = 10
	}
	return &Queue{pool: pool, opts: o, workers: river.NewWorkers()}
}

// Workers is the bundle domains add their workers to (river.AddWorker) before Start.
func (q *Queue) Workers() *river.Workers { return q.workers }

// AddPeriodic schedules j on this process while it is River's leader (one control replica
// runs each periodic job). Call before Start.
func (q *Queue) AddPeriodic(j *river.PeriodicJob) { q.periodic = append(q.periodic, j) }

// Start builds the River client and starts working jobs until Stop. River's schema must be
// in place (Migrate).
func (q *Queue) Start(ctx context.Context) error {
	cfg := &river.Config{
		Logger:       slog.New(warnOnly{q.opts.Logger.Handler()}).With("subsystem", "river"),
		Queues:       map[string]river.QueueConfig{river.QueueDefault: {MaxWorkers: q.opts.MaxWorkers}},
		Workers:      q.workers,
		PeriodicJobs: q.periodic,
	}
	if q.opts.PollInterval > 0 {
		cfg.FetchPollInterval = q.opts.PollInterval
		cfg.FetchCooldown = min(q.opts.PollInterval, 100*time.Millisecond)
	}
	c, err := river.NewClient(riverpgxv5.New(q.pool), cfg)
	if err != nil {
		return fmt.Errorf("jobs: new client: %w", err)
	}
	// Cancelling Start's context is River's hard stop (running jobs cancelled); shutdown
	// goes through Stop instead, which lets running jobs finish within its deadline.
	if err := c.Start(context.WithoutCancel(ctx)); err != nil {
		return fmt.Errorf("jobs: start: %w", err)
	}
	q.mu.Lock()
	q.client = c
	q.mu.Unlock()
	return nil
}

// Stop stops fetching new jobs and waits for the running ones until ctx ends, then cancels
// them (River works them again later). Idempotent; a Queue never started stops at once.
func (q *Queue) Stop(ctx context.Context) error {
	q.mu.Lock()
	c := q.client
	already := q.stopped
	q.stopped = true
	q.mu.Unlock()
	if c == nil || already {
		return nil
	}
	err := c.Stop(ctx)
	if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled) {
		hard, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		err = c.StopAndCancel(hard)
	}
	if err != nil {
		return fmt.Errorf("jobs: stop: %w", err)
	}
	return nil
}

// InsertTx enqueues args in tx: the job exists exactly when tx commits.
func (q *Queue) InsertTx(ctx context.Context, tx pgx.Tx, args river.JobArgs, opts *river.InsertOpts) (*rivertype.JobInsertResult, error) {
	q.mu.Lock()
	c := q.client
	q.mu.Unlock()
	if c == nil {
		return nil, ErrNotStarted
	}
	return c.InsertTx(ctx, tx, args, opts)
}

// warnOnly passes River's warnings and errors; its info lines (job counts every few
// seconds, each retry) would drown control's own.
type warnOnly struct{ slog.Handler }

func (w warnOnly) Enabled(ctx context.Context, l slog.Level) bool {
	return l >= slog.LevelWarn && w.Handler.Enabled(ctx, l)
}

func (w warnOnly) WithAttrs(a []slog.Attr) slog.Handler { return warnOnly{w.Handler.WithAttrs(a)} }

func (w warnOnly) WithGroup(n string) slog.Handler { return warnOnly{w.Handler.WithGroup(n)} }
