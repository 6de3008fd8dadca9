// Package backend is the backend registry: workers register their inference engines,
// heartbeat with load figures and deregister on shutdown; a reaper marks backends whose
// heartbeats stopped as unhealthy and later removes them; operators list backends and change
// their weight, drain or disable them. It owns the backends table.
package backend

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/maas-platform/maas/pkg/registry"
)

// DB is what this package needs of PostgreSQL; *pgxpool.Pool satisfies it.
type DB interface {
	Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error)
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

// ErrNotFound reports an unknown backend id.
var ErrNotFound = errors.New("backend: not found")

// MissedHeartbeats is how many heartbeat intervals may pass before a backend is unhealthy.
const MissedHeartbeats = 3

// Options configures a Service.
type Options struct {
	Logger     *slog.Logger
	Registerer prometheus.Registerer
	// RemoveAfter is how long after its last heartbeat an unhealthy backend is removed.
	RemoveAfter time.Duration
	// ReapInterval is how often the reaper looks for silent backends (at most 1s in
	// production so that state follows within a second).
	ReapInterval time.Duration
	// Placer decides the LoRA adapters a backend's engine should hold, returned in the
	// answer to a heartbeat that reports adapter slots; nil = none are placed.
	Placer Placer
}

// Placer decides which LoRA adapters backend b should hold (b as just updated by its
// heartbeat: its models, slots and loaded adapters).
type Placer interface {
	Desired(ctx context.Context, b *registry.Backend) ([]registry.DesiredAdapter, error)
}

// Service is the backend registry. Safe for concurrent use.
type Service struct {
	db          DB
	log         *slog.Logger
	removeAfter time.Duration
	interval    time.Duration
	reaped      *prometheus.CounterVec
	byState     *prometheus.GaugeVec
	placer      Placer

	// since is the database's clock when this process's reaper began (nil before): a
	// backend's silence counts from its last heartbeat or from then, whichever is later.
	// Heartbeats reach PostgreSQL through control, so while control was away none could
	// arrive, and a restarted control must give every worker its 3 intervals again rather
	// than mark them all unhealthy at its first reap.
	since *time.Time
}

// New returns a Service on db.
func New(db DB, o Options) (*Service, error) {
	if o.Logger == nil || o.Registerer == nil {
		return nil, errors.New("backend: logger and registerer are required")
	}
	if o.RemoveAfter <= 0 || o.ReapInterval <= 0 {
		return nil, errors.New("backend: RemoveAfter and ReapInterval must be positive")
	}
	s := &Service{
		db: db, log: o.Logger, removeAfter: o.RemoveAfter, interval: o.ReapInterval, placer: o.Placer,
		reaped: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "maas_control_backend_reaper_actions_total",
			Help: "Backends the reaper changed: action=unhealthy (missed heartbeats) or removed.",
		}, []string{"action"}),
		byState: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "maas_control_backends",
			Help: "Registered backends by state (disabled backends are counted under state=disabled).",
		}, []string{"state"}),
	}
	s.reaped.WithLabelValues("unhealthy")
	s.reaped.WithLabelValues("removed")
	for _, st := range []string{registry.StateHealthy, registry.StateUnhealthy, registry.StateDraining, "disabled"} {
		s.byState.WithLabelValues(st)
	}
	if err := o.Registerer.Register(s.reaped); err != nil {
		return nil, fmt.Errorf("backend: register metrics: %w", err)
	}
	if err := o.Registerer.Register(s.byState); err != nil {
		return nil, fmt.Errorf("backend: register metrics: %w", err)
	}
	return s, nil
}

const columns = `id, url, engine_kind, models, capacity, weight, state, disabled, heartbeat_interval_ms,
	running_requests, waiting_requests, kv_cache_usage, in_flight, worker_version, registered_at, last_heartbeat_at,
	adapter_slots, adapters`

func scan(row pgx.Row) (*registry.Backend, error) {
	b := &registry.Backend{}
	var reg, hb time.Time
	err := row.Scan(&b.ID, &b.URL, &b.EngineKind, &b.Models, &b.Capacity, &b.Weight, &b.State, &b.Disabled,
		&b.HeartbeatIntervalMS, &b.Running, &b.Waiting, &b.KVCacheUsage, &b.InFlight, &b.WorkerVersion, &reg, &hb,
		&b.AdapterSlots, &b.Adapters)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, ErrNotFound
	}
	if err != nil {
		return nil, err
	}
	if b.Models == nil {
		b.Models = []string{}
	}
	if b.Adapters == nil {
		b.Adapters = []string{}
	}
	b.RegisteredAt = reg.UTC().Format(time.RFC3339Nano)
	b.LastHeartbeatAt = hb.UTC().Format(time.RFC3339Nano)
	return b, nil
}

// Register creates or refreshes backend r.ID. Operator settings (weight, disabled, a
// drain) survive re-registration.
func (s *Service) Register(ctx context.Context, r registry.RegisterRequest) (*registry.Backend, error) {
	b, err := scan(s.db.QueryRow(ctx, `INSERT INTO backends (id, url, engine_kind, models, capacity, heartbeat_interval_ms, worker_version)
		VALUES ($1, $2, $3, $4, $5, $6, $7)
		ON CONFLICT (id) DO UPDATE SET url = EXCLUDED.url, engine_kind = EXCLUDED.engine_kind, models = EXCLUDED.models,
			capacity = EXCLUDED.capacity, heartbeat_interval_ms = EXCLUDED.heartbeat_interval_ms,
			worker_version = EXCLUDED.worker_version,
			state = CASE WHEN backends.state = 'draining' THEN 'draining' ELSE 'healthy' END,
			running_requests = 0, waiting_requests = 0, kv_cache_usage = 0, in_flight = 0,
			registered_at = now(), last_heartbeat_at = now()
		RETURNING `+columns, r.ID, r.URL, r.EngineKind, r.Models, r.Capacity, r.HeartbeatIntervalMS, r.WorkerVersion))
	if err != nil {
		return nil, fmt.Errorf("register backend %s: %w", r.ID, err)
	}
	return b, nil
}

// Heartbeat records load and state of backend id. A draining backend stays draining
// until an operator undrains it or it deregisters.
//
// Load figures change on every heartbeat and must not wake every gateway, so they are
// written by a statement that touches no column the NOTIFY trigger watches; state and
// models are written by a second statement only when they change.
func (s *Service) Heartbeat(ctx context.Context, id string, h registry.HeartbeatRequest) (*registry.Backend, error) {
	b, err := scan(s.db.QueryRow(ctx, `UPDATE backends SET
			running_requests = $2, waiting_requests = $3, kv_cache_usage = $4, in_flight = $5,
			adapter_slots = $6, adapters = $7, last_heartbeat_at = now()
		WHERE id = $1 RETURNING `+columns, id, h.Running, h.Waiting, h.KVCacheUsage, h.InFlight,
		h.AdapterSlots, nonNil(h.Adapters)))
	if err != nil {
		return nil, fmt.Errorf("heartbeat backend %s: %w", id, err)
	}
	state := h.State
	if b.State == registry.StateDraining {
		state = registry.StateDraining
	}
	models := b.Models
	if h.Models != nil {
		models = h.Models
	}
	if state == b.State && slices.Equal(models, b.Models) {
		return b, nil
	}
	previous := b.State
	b, err = scan(s.db.QueryRow(ctx, `UPDATE backends SET state = $2, models = $3 WHERE id = $1 RETURNING `+columns, id, state, models))
	if err != nil {
		return nil, fmt.Errorf("heartbeat backend %s: %w", id, err)
	}
	if previous != b.State {
		s.log.Info("backend state changed by heartbeat", "backend", id, "from", previous, "to", b.State)
	}
	return b, nil
}

func nonNil(s []string) []string {
	if s == nil {
		return []string{}
	}
	return s
}

// Deregister removes backend id.
func (s *Service) Deregister(ctx context.Context, id string) error {
	tag, err := s.db.Exec(ctx, `DELETE FROM backends WHERE id = $1`, id)
	if err != nil {
		return fmt.Errorf("deregister backend %s: %w", id, err)
	}
	if tag.RowsAffected() == 0 {
		return fmt.Errorf("deregister backend %s: %w", id, ErrNotFound)
	}
	return nil
}

// Get returns backend id.
func (s *Service) Get(ctx context.Context, id string) (*registry.Backend, error) {
	b, err := scan(s.db.QueryRow(ctx, `SELECT `+columns+` FROM backends WHERE id = $1`, id))
	if err != nil {
		return nil, fmt.Errorf("get backend %s: %w", id, err)
	}
	return b, nil
}

// List returns up to limit+1 backends with id > after, by id.
func (s *Service) List(ctx context.Context, after string, limit int) ([]*registry.Backend, error) {
	rows, err := s.db.Query(ctx, `SELECT `+columns+` FROM backends WHERE id > $1 ORDER BY id LIMIT $2`, after, limit+1)
	if err != nil {
		return nil, fmt.Errorf("list backends: %w", err)
	}
	defer rows.Close()
	var out []*registry.Backend
	for rows.Next() {
		b, err := scan(rows)
		if err != nil {
			return nil, fmt.Errorf("list backends: %w", err)
		}
		out = append(out, b)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("list backends: %w", err)
	}
	return out, nil
}

// Change is an operator's change to a backend; nil fields stay.
type Change struct {
	Weight   *int
	Drain    *bool
	Disabled *bool
}

// Update applies an operator change to backend id.
func (s *Service) Update(ctx context.Context, id string, c Change) (*registry.Backend, error) {
	b, err := scan(s.db.QueryRow(ctx, `UPDATE backends SET
			weight = COALESCE($2, weight),
			disabled = COALESCE($3, disabled),
			state = CASE WHEN $4::boolean IS NULL THEN state
			             WHEN $4 THEN 'draining'
			             WHEN state = 'draining' THEN 'healthy'
			             ELSE state END
		WHERE id = $1 RETURNING `+columns, id, c.Weight, c.Disabled, c.Drain))
	if err != nil {
		return nil, fmt.Errorf("update backend %s: %w", id, err)
	}
	return b, nil
}

// Reap marks backends silent for MissedHeartbeats intervals unhealthy and removes those
// unhealthy and silent for RemoveAfter, silence counted from the later of the last
// heartbeat and the first Reap of this Service. It returns how many it changed of each.
// Reap is called by one goroutine (RunReaper).
//
// The NOTIFY triggers fire per statement, even for statements that change no row, so the
// reaper looks first and writes only when there is something to change: an idle registry
// must not wake every gateway each second.
func (s *Service) Reap(ctx context.Context) (unhealthy, removed int, err error) {
	if s.since == nil {
		var t time.Time
		if err := s.db.QueryRow(ctx, `SELECT now()`).Scan(&t); err != nil {
			return 0, 0, fmt.Errorf("reap backends: read the clock: %w", err)
		}
		s.since = &t
	}
	const silent = `state <> 'unhealthy'
		  AND GREATEST(last_heartbeat_at, $2) < now() - make_interval(secs => ($1 * heartbeat_interval_ms / 1000.0)::float8)`
	const expired = `state = 'unhealthy' AND GREATEST(last_heartbeat_at, $2) < now() - make_interval(secs => $1::float8)`
	var due, gone bool
	if err := s.db.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM backends WHERE `+silent+`)`, MissedHeartbeats, *s.since).Scan(&due); err != nil {
		return 0, 0, fmt.Errorf("reap backends: %w", err)
	}
	var ids []string
	if due {
		rows, err := s.db.Query(ctx, `UPDATE backends SET state = 'unhealthy' WHERE `+silent+` RETURNING id`, MissedHeartbeats, *s.since)
		if err != nil {
			return 0, 0, fmt.Errorf("reap backends: %w", err)
		}
		if ids, err = pgx.CollectRows(rows, pgx.RowTo[string]); err != nil {
			return 0, 0, fmt.Errorf("reap backends: %w", err)
		}
		for _, id := range ids {
			s.log.Warn("backend missed heartbeats; marked unhealthy", "backend", id, "missed", MissedHeartbeats)
		}
		s.reaped.WithLabelValues("unhealthy").Add(float64(len(ids)))
	}
	if err := s.db.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM backends WHERE `+expired+`)`, s.removeAfter.Seconds(), *s.since).Scan(&gone); err != nil {
		return len(ids), 0, fmt.Errorf("remove backends: %w", err)
	}
	var removedIDs []string
	if gone {
		rows, err := s.db.Query(ctx, `DELETE FROM backends WHERE `+expired+` RETURNING id`, s.removeAfter.Seconds(), *s.since)
		if err != nil {
			return len(ids), 0, fmt.Errorf("remove backends: %w", err)
		}
		if removedIDs, err = pgx.CollectRows(rows, pgx.RowTo[string]); err != nil {
			return len(ids), 0, fmt.Errorf("remove backends: %w", err)
		}
		for _, id := range removedIDs {
			s.log.Warn("backend silent too long; removed", "backend", id, "remove_after", s.removeAfter.String())
		}
		s.reaped.WithLabelValues("removed").Add(float64(len(removedIDs)))
	}
	return len(ids), len(removedIDs), nil
}

// countStates refreshes the maas_control_backends gauge.
func (s *Service) countStates(ctx context.Context) error {
	rows, err := s.db.Query(ctx, `SELECT CASE WHEN disabled THEN 'disabled' ELSE state END, count(*) FROM backends GROUP BY 1`)
	if err != nil {
		return fmt.Errorf("count backends: %w", err)
	}
	defer rows.Close()
	counts := map[string]float64{registry.StateHealthy: 0, registry.StateUnhealthy: 0, registry.StateDraining: 0, "disabled": 0}
	for rows.Next() {
		var st string
		var n int64
		if err := rows.Scan(&st, &n); err != nil {
			return fmt.Errorf("count backends: %w", err)
		}
		counts[st] = float64(n)
	}
	if err := rows.Err(); err != nil {
		return fmt.Errorf("count backends: %w", err)
	}
	for st, n := range counts {
		s.byState.WithLabelValues(st).Set(n)
	}
	return nil
}

// RunReaper reaps every ReapInterval until ctx ends.
func (s *Service) RunReaper(ctx context.Context) {
	t := time.NewTicker(s.interval)
	defer t.Stop()
	for {
		if _, _, err := s.Reap(ctx); err != nil && ctx.Err() == nil {
			s.log.Error("backend reaper", "err", err)
			// The database is away: no heartbeat can land meanwhile, so silence is counted
			// afresh from the next reap that reaches it, as after a restart. (A failure of
			// one statement on a reachable database keeps the count.)
			var one int
			if s.db.QueryRow(ctx, `SELECT 1`).Scan(&one) != nil {
				s.since = nil
			}
		}
		if err := s.countStates(ctx); err != nil && ctx.Err() == nil {
			s.log.Error("backend reaper", "err", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}
