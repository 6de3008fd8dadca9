package adapter

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/maas-platform/maas/pkg/registry"
)

// DB is what this package needs of PostgreSQL; *pgxpool.Pool satisfies it.
type DB interface {
	Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error)
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

// ErrNotFound reports a name that is no enabled, placeable adapter.
var ErrNotFound = errors.New("adapter: not found")

// FoldInterval is how often the ledger's latest records of adapters are folded into their
// last use (at most; the fold runs in the heartbeat that finds it due).
const FoldInterval = 15 * time.Second

// foldMargin is how far before the previous fold the next one looks again: the ledger's
// records arrive in batches, a few seconds after their created_at.
const foldMargin = 30 * time.Second

// firstFold is how far back the first fold of a process looks.
const firstFold = 24 * time.Hour

// Options configures a Service.
type Options struct {
	Logger *slog.Logger // nil: discard
	// FoldInterval is how often, at most, the ledger is folded into last uses (zero:
	// FoldInterval).
	FoldInterval time.Duration
}

// Service places adapters. Safe for concurrent use; its zero value is not.
type Service struct {
	db        DB
	log       *slog.Logger
	foldEvery time.Duration

	foldMu   sync.Mutex // held by the fold running; others skip it
	foldedAt time.Time  // the database's clock at the start of the last fold (zero before)
	lastTry  time.Time  // this process's clock at the last fold attempt
}

// New returns a Service on db.
func New(db DB, o Options) *Service {
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.FoldInterval <= 0 {
		o.FoldInterval = FoldInterval
	}
	return &Service{db: db, log: o.Logger, foldEvery: o.FoldInterval}
}

// Fold records in adapter_uses the latest ledger record of each adapter since the last
// fold (less a margin for late batches). The ledger has no index by model: the fold reads
// a time range of it (its created_at BRIN within the month's partition), not every
// adapter's history at every heartbeat.
func (s *Service) Fold(ctx context.Context) error {
	if !s.foldMu.TryLock() {
		return nil
	}
	defer s.foldMu.Unlock()
	s.lastTry = time.Now()
	var now time.Time
	if err := s.db.QueryRow(ctx, `SELECT now()`).Scan(&now); err != nil {
		return fmt.Errorf("fold adapter uses: %w", err)
	}
	since := now.Add(-firstFold)
	if !s.foldedAt.IsZero() {
		since = s.foldedAt.Add(-foldMargin)
	}
	if _, err := s.db.Exec(ctx, `INSERT INTO adapter_uses (model_id, used_at)
		SELECT m.id, u.at FROM (
			SELECT r.model, max(r.created_at) AS at FROM usage_records r
			WHERE r.created_at > $1 AND r.model IN (SELECT name FROM models WHERE base_model IS NOT NULL)
			GROUP BY r.model) u
		JOIN models m ON m.name = u.model
		ON CONFLICT (model_id) DO UPDATE SET used_at = GREATEST(adapter_uses.used_at, EXCLUDED.used_at)`, since); err != nil {
		return fmt.Errorf("fold adapter uses: %w", err)
	}
	s.foldedAt = now
	return nil
}

// foldIfDue folds when FoldInterval passed since the last attempt.
func (s *Service) foldIfDue(ctx context.Context) {
	s.foldMu.Lock()
	due := time.Since(s.lastTry) >= s.foldEvery
	s.foldMu.Unlock()
	if !due {
		return
	}
	if err := s.Fold(ctx); err != nil {
		s.log.Warn("adapter placement: ledger not read; last uses may be stale", "err", err)
	}
}

// ArchiveURL is the path on control of a fine-tuning job's adapter archive (the fine-tuning
// domain serves it to workers with the internal token).
func ArchiveURL(jobID string) string { return "/internal/v1/fine_tuning/jobs/" + jobID + "/adapter" }

// placeable is the adapters that can be placed, with their last use.
const placeable = `SELECT m.name, m.base_model, j.id, COALESCE(j.adapter_bytes, 0)
	FROM models m
	JOIN fine_tuning_jobs j ON j.fine_tuned_model = m.name AND j.adapter_key IS NOT NULL AND j.trained
	LEFT JOIN adapter_uses u ON u.model_id = m.id
	WHERE m.enabled AND m.base_model IS NOT NULL`

// Bases returns the models b serves that are not adapters it loaded.
func Bases(b *registry.Backend) []string {
	var out []string
	for _, m := range b.Models {
		if !slices.Contains(b.Adapters, m) {
			out = append(out, m)
		}
	}
	return out
}

// Desired returns the adapters backend b should hold: those of the bases it serves, the
// AdapterSlots most recently used.
func (s *Service) Desired(ctx context.Context, b *registry.Backend) ([]registry.DesiredAdapter, error) {
	if b.AdapterSlots <= 0 {
		return nil, nil
	}
	bases := Bases(b)
	if len(bases) == 0 {
		return []registry.DesiredAdapter{}, nil
	}
	s.foldIfDue(ctx)
	rows, err := s.db.Query(ctx, placeable+` AND m.base_model = ANY($1)
		ORDER BY GREATEST(m.created_at, u.used_at) DESC, m.name
		LIMIT $2`, bases, b.AdapterSlots)
	if err != nil {
		return nil, fmt.Errorf("place adapters on %s: %w", b.ID, err)
	}
	out := []registry.DesiredAdapter{}
	for rows.Next() {
		var d registry.DesiredAdapter
		var job string
		if err := rows.Scan(&d.Name, &d.BaseModel, &job, &d.Bytes); err != nil {
			rows.Close()
			return nil, fmt.Errorf("place adapters on %s: %w", b.ID, err)
		}
		d.ArchiveURL, d.Version = ArchiveURL(job), job
		out = append(out, d)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("place adapters on %s: %w", b.ID, err)
	}
	return out, nil
}

// Placement is where an adapter is and can be.
type Placement struct {
	Model     string `json:"model"`
	BaseModel string `json:"base_model"`
	// LoadedOn lists the backends whose workers report it loaded (and serve it).
	LoadedOn []string `json:"loaded_on"`
	// PlaceableOn lists the healthy, enabled backends serving its base with adapter slots:
	// where the next heartbeats will load it after a demand.
	PlaceableOn []string `json:"placeable_on"`
}

// Demand records a use of adapter name now (so that it is placed at the next heartbeat of
// every backend of its base, evicting the least recently used adapter where slots are
// full) and returns its placement.
func (s *Service) Demand(ctx context.Context, name string) (*Placement, error) {
	var id int64
	p := &Placement{Model: name, LoadedOn: []string{}, PlaceableOn: []string{}}
	err := s.db.QueryRow(ctx, `SELECT m.id, m.base_model FROM models m
		WHERE m.name = $1 AND m.enabled AND m.base_model IS NOT NULL
		  AND EXISTS (SELECT 1 FROM fine_tuning_jobs j WHERE j.fine_tuned_model = m.name AND j.adapter_key IS NOT NULL AND j.trained)`,
		name).Scan(&id, &p.BaseModel)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, fmt.Errorf("demand adapter %s: %w", name, ErrNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("demand adapter %s: %w", name, err)
	}
	if _, err := s.db.Exec(ctx, `INSERT INTO adapter_uses (model_id, used_at) VALUES ($1, now())
		ON CONFLICT (model_id) DO UPDATE SET used_at = GREATEST(adapter_uses.used_at, now())`, id); err != nil {
		return nil, fmt.Errorf("demand adapter %s: %w", name, err)
	}
	rows, err := s.db.Query(ctx, `SELECT id, $1 = ANY(adapters), state = 'healthy' AND NOT disabled AND adapter_slots > 0
		FROM backends WHERE $1 = ANY(adapters) OR ($2 = ANY(models) AND NOT $2 = ANY(adapters))
		ORDER BY id`, name, p.BaseModel)
	if err != nil {
		return nil, fmt.Errorf("demand adapter %s: %w", name, err)
	}
	defer rows.Close()
	for rows.Next() {
		var bid string
		var loaded, placeable bool
		if err := rows.Scan(&bid, &loaded, &placeable); err != nil {
			return nil, fmt.Errorf("demand adapter %s: %w", name, err)
		}
		if loaded {
			p.LoadedOn = append(p.LoadedOn, bid)
		}
		if placeable {
			p.PlaceableOn = append(p.PlaceableOn, bid)
		}
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("demand adapter %s: %w", name, err)
	}
	s.log.Info("adapter demanded", "model", name, "loaded_on", len(p.LoadedOn), "placeable_on", len(p.PlaceableOn))
	return p, nil
}

// Adapter is an adapter model as operators see its placement.
type Adapter struct {
	Model     string `json:"model"`
	BaseModel string `json:"base_model"`
	Enabled   bool   `json:"enabled"`
	// Placeable: a fine-tuning job stored its archive (else control places it nowhere).
	Placeable bool `json:"placeable"`
	// LastUsedAt is its last use as placement counts it (Unix seconds): registration, the
	// ledger as last folded, or an on-demand request.
	LastUsedAt int64    `json:"last_used_at"`
	LoadedOn   []string `json:"loaded_on"`
}

// List returns up to limit+1 adapter models named after after, by name.
func (s *Service) List(ctx context.Context, after string, limit int) ([]*Adapter, error) {
	rows, err := s.db.Query(ctx, `SELECT m.name, m.base_model, m.enabled,
			EXISTS (SELECT 1 FROM fine_tuning_jobs j WHERE j.fine_tuned_model = m.name AND j.adapter_key IS NOT NULL AND j.trained),
			EXTRACT(EPOCH FROM GREATEST(m.created_at, u.used_at))::bigint,
			COALESCE((SELECT array_agg(b.id ORDER BY b.id) FROM backends b WHERE m.name = ANY(b.adapters)), '{}')
		FROM models m LEFT JOIN adapter_uses u ON u.model_id = m.id
		WHERE m.base_model IS NOT NULL AND m.name > $1
		ORDER BY m.name LIMIT $2`, after, limit+1)
	if err != nil {
		return nil, fmt.Errorf("list adapters: %w", err)
	}
	defer rows.Close()
	var out []*Adapter
	for rows.Next() {
		a := &Adapter{}
		if err := rows.Scan(&a.Model, &a.BaseModel, &a.Enabled, &a.Placeable, &a.LastUsedAt, &a.LoadedOn); err != nil {
			return nil, fmt.Errorf("list adapters: %w", err)
		}
		out = append(out, a)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("list adapters: %w", err)
	}
	return out, nil
}
