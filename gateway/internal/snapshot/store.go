package snapshot

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/maas-platform/maas/pkg/apikey"
)

// Channel is the NOTIFY channel control's triggers send on.
const Channel = "maas_changes"

// Options configures a Store.
type Options struct {
	Pool *pgxpool.Pool
	// DatabaseURL opens the dedicated LISTEN connection.
	DatabaseURL string
	// ReloadInterval is the period of the full reload, the safety net for missed
	// notifications.
	ReloadInterval time.Duration
	// LoadRefreshInterval is the period at which backends' load figures are re-read.
	LoadRefreshInterval time.Duration
	// Debounce groups notifications arriving close together into one reload.
	Debounce time.Duration
	// OnSnapshot is called with each new snapshot after it is swapped in (from the Store's
	// goroutine).
	OnSnapshot func(*Snapshot)
	// OnLoad is called with fresh load figures of every backend.
	OnLoad func([]Load)

	// KeyLookupRate bounds FindKey's PostgreSQL look-ups of keys the snapshot does not know,
	// per second and per gateway; 0 turns look-ups off (an unknown key is refused at once).
	KeyLookupRate int
	// KeyLookupBurst is the rate limiter's burst (0: KeyLookupRate/5, at least 1).
	KeyLookupBurst int
	// KeyLookupMaxWait is how long a look-up may wait for the rate limiter before it is
	// refused.
	KeyLookupMaxWait time.Duration
	// KeyLookupTimeout bounds one look-up's queries (PostgreSQL down: refused after this).
	KeyLookupTimeout time.Duration
	// KeyNegativeTTL is how long a key that a look-up did not find is refused without
	// asking PostgreSQL again.
	KeyNegativeTTL time.Duration

	Logger     *slog.Logger
	Registerer prometheus.Registerer
	Now        func() time.Time
}

// DefaultOptions returns the defaults.
func DefaultOptions() Options {
	return Options{
		ReloadInterval:      30 * time.Second,
		LoadRefreshInterval: time.Second,
		Debounce:            20 * time.Millisecond,
		KeyLookupRate:       50,
		KeyLookupMaxWait:    250 * time.Millisecond,
		KeyLookupTimeout:    500 * time.Millisecond,
		KeyNegativeTTL:      2 * time.Second,
		Now:                 time.Now,
	}
}

// Store owns the current Snapshot and the loops that refresh it. Safe for concurrent use.
type Store struct {
	o       Options
	cur     atomic.Pointer[Snapshot]
	reload  chan struct{}
	mu      sync.Mutex
	lastErr error // of the latest database round trip; nil when it worked
	reloads *prometheus.CounterVec
	ready   chan struct{}
	once    sync.Once
	keys    *keyLookup // nil when look-ups are off
}

// New returns a Store; call Run to load and keep the snapshot fresh.
func New(o Options) (*Store, error) {
	if o.Pool == nil {
		return nil, errors.New("snapshot: Options.Pool is required")
	}
	if o.ReloadInterval <= 0 || o.LoadRefreshInterval <= 0 {
		return nil, errors.New("snapshot: intervals must be positive")
	}
	if o.KeyLookupRate < 0 {
		return nil, errors.New("snapshot: KeyLookupRate must not be negative")
	}
	if o.KeyLookupRate > 0 && (o.KeyLookupTimeout <= 0 || o.KeyNegativeTTL <= 0 || o.KeyLookupMaxWait < 0) {
		return nil, errors.New("snapshot: key look-up timeout and negative TTL must be positive")
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	s := &Store{o: o, reload: make(chan struct{}, 1), ready: make(chan struct{})}
	if o.KeyLookupRate > 0 {
		s.keys = newKeyLookup(o, o.Pool)
	}
	s.reloads = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "maas_gateway_snapshot_reloads_total",
		Help: "Snapshot reloads from PostgreSQL by result (ok, error).",
	}, []string{"result"})
	if o.Registerer != nil {
		age := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "maas_gateway_snapshot_age_seconds",
			Help: "Seconds since the in-memory snapshot was last loaded from PostgreSQL (-1 before the first load).",
		}, func() float64 {
			if cur := s.cur.Load(); cur != nil {
				return o.Now().Sub(cur.LoadedAt).Seconds()
			}
			return -1
		})
		if err := o.Registerer.Register(age); err != nil {
			return nil, fmt.Errorf("snapshot: register metrics: %w", err)
		}
		if err := o.Registerer.Register(s.reloads); err != nil {
			return nil, fmt.Errorf("snapshot: register metrics: %w", err)
		}
		if s.keys != nil {
			if err := o.Registerer.Register(s.keys.results); err != nil {
				return nil, fmt.Errorf("snapshot: register metrics: %w", err)
			}
		}
	}
	return s, nil
}

// Current returns the latest snapshot, or nil before the first load.
func (s *Store) Current() *Snapshot { return s.cur.Load() }

// Loaded is closed once the first snapshot is in.
func (s *Store) Loaded() <-chan struct{} { return s.ready }

// Status reports whether the gateway is ready, and why not.
func (s *Store) Status() (ok bool, reason string) {
	cur := s.cur.Load()
	if cur == nil {
		return false, "snapshot not loaded yet"
	}
	s.mu.Lock()
	err := s.lastErr
	s.mu.Unlock()
	if err != nil {
		return false, "database unreachable; serving from a snapshot " +
			s.o.Now().Sub(cur.LoadedAt).Truncate(time.Second).String() + " old"
	}
	return true, ""
}

// Trigger asks for a reload soon.
func (s *Store) Trigger() {
	select {
	case s.reload <- struct{}{}:
	default:
	}
}

func (s *Store) setErr(err error) {
	s.mu.Lock()
	prev := s.lastErr
	s.lastErr = err
	s.mu.Unlock()
	switch {
	case err != nil && prev == nil:
		s.o.Logger.Warn("snapshot: database unreachable, keeping the last snapshot", "err", err)
	case err == nil && prev != nil:
		s.o.Logger.Info("snapshot: database reachable again")
	}
}

// ReloadNow loads a full snapshot and swaps it in.
func (s *Store) ReloadNow(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	snap, err := Read(ctx, s.o.Pool, s.o.Now())
	s.setErr(err)
	if err != nil {
		s.reloads.WithLabelValues("error").Inc()
		return err
	}
	s.reloads.WithLabelValues("ok").Inc()
	s.cur.Store(snap)
	if s.keys != nil {
		s.keys.replaced(snap)
	}
	s.once.Do(func() { close(s.ready) })
	if s.o.OnSnapshot != nil {
		s.o.OnSnapshot(snap)
	}
	if s.o.OnLoad != nil {
		loads := make([]Load, len(snap.Backends))
		for i, b := range snap.Backends {
			loads[i] = b.Load
		}
		s.o.OnLoad(loads)
	}
	if s.o.Logger.Enabled(ctx, slog.LevelDebug) {
		k, u, m, b := snap.Counts()
		s.o.Logger.Debug("snapshot loaded", "keys", k, "users", u, "models", m, "backends", b)
	}
	return nil
}

// Run loads the snapshot and keeps it fresh until ctx ends. It retries the first load
// every second until it works.
func (s *Store) Run(ctx context.Context) {
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); s.listen(ctx) }()
	go func() { defer wg.Done(); s.refreshLoad(ctx) }()
	defer wg.Wait()

	for s.cur.Load() == nil {
		if err := s.ReloadNow(ctx); err != nil {
			s.o.Logger.Warn("snapshot: first load failed, retrying", "err", err)
			select {
			case <-ctx.Done():
				return
			case <-time.After(time.Second):
			}
		}
	}
	full := time.NewTicker(s.o.ReloadInterval)
	defer full.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-full.C:
		case <-s.reload:
			// Debounce: a burst of changes (a transaction touching several tables) becomes one reload.
			t := time.NewTimer(s.o.Debounce)
			select {
			case <-ctx.Done():
				t.Stop()
				return
			case <-t.C:
			}
			select {
			case <-s.reload:
			default:
			}
		}
		if err := s.ReloadNow(ctx); err != nil && ctx.Err() == nil {
			s.o.Logger.Debug("snapshot: reload failed", "err", err)
		}
	}
}

// listen holds a LISTEN connection and triggers reloads; it reconnects with backoff and
// reloads after every reconnect (notifications sent meanwhile were missed).
func (s *Store) listen(ctx context.Context) {
	backoff := 100 * time.Millisecond
	for ctx.Err() == nil {
		err := s.listenOnce(ctx)
		if ctx.Err() != nil {
			return
		}
		s.o.Logger.Debug("snapshot: listen connection lost", "err", err)
		select {
		case <-ctx.Done():
			return
		case <-time.After(backoff):
		}
		backoff = min(backoff*2, 5*time.Second)
	}
}

func (s *Store) listenOnce(ctx context.Context) error {
	cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	conn, err := pgx.Connect(cctx, s.o.DatabaseURL)
	cancel()
	if err != nil {
		return fmt.Errorf("connect: %w", err)
	}
	defer conn.Close(context.Background())
	if _, err := conn.Exec(ctx, "LISTEN "+Channel); err != nil {
		return fmt.Errorf("listen: %w", err)
	}
	s.Trigger() // anything changed while we were not listening
	for {
		n, err := conn.WaitForNotification(ctx)
		if err != nil {
			return fmt.Errorf("wait for notification: %w", err)
		}
		if s.o.Logger.Enabled(ctx, slog.LevelDebug) {
			var p struct {
				Version int64  `json:"version"`
				Table   string `json:"table"`
			}
			_ = json.Unmarshal([]byte(n.Payload), &p)
			s.o.Logger.Debug("snapshot: change notified", "table", p.Table, "version", p.Version)
		}
		s.Trigger()
	}
}

func (s *Store) refreshLoad(ctx context.Context) {
	t := time.NewTicker(s.o.LoadRefreshInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if s.cur.Load() == nil {
			continue
		}
		qctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		loads, err := ReadLoads(qctx, s.o.Pool, s.o.Now())
		cancel()
		if ctx.Err() != nil {
			return
		}
		s.setErr(err)
		if err == nil && s.o.OnLoad != nil {
			s.o.OnLoad(loads)
		}
	}
}

// Querier is what Read needs of a pool.
type Querier interface {
	BeginTx(ctx context.Context, opts pgx.TxOptions) (pgx.Tx, error)
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
}

const loadSQL = `SELECT id, state, disabled, running_requests, waiting_requests, kv_cache_usage,
	GREATEST(EXTRACT(EPOCH FROM (now() - last_heartbeat_at)) * 1000, 0)::bigint
	FROM backends`

// ReadLoads reads every backend's load figures.
func ReadLoads(ctx context.Context, q Querier, now time.Time) ([]Load, error) {
	rows, err := q.Query(ctx, loadSQL)
	if err != nil {
		return nil, fmt.Errorf("load backends: %w", err)
	}
	var out []Load
	for rows.Next() {
		var l Load
		var ageMS int64
		if err := rows.Scan(&l.ID, &l.State, &l.Disabled, &l.Running, &l.Waiting, &l.KVCache, &ageMS); err != nil {
			rows.Close()
			return nil, fmt.Errorf("load backends: %w", err)
		}
		l.HeartbeatAge = time.Duration(ageMS) * time.Millisecond
		l.ReadAt = now
		out = append(out, l)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("load backends: %w", err)
	}
	return out, nil
}

// Read reads one consistent snapshot (a repeatable-read, read-only transaction).
func Read(ctx context.Context, q Querier, now time.Time) (*Snapshot, error) {
	tx, err := q.BeginTx(ctx, pgx.TxOptions{IsoLevel: pgx.RepeatableRead, AccessMode: pgx.ReadOnly})
	if err != nil {
		return nil, fmt.Errorf("load snapshot: begin: %w", err)
	}
	defer tx.Rollback(ctx) //nolint:errcheck
	b := NewBuilder(now)

	if err := readUsers(ctx, tx, b, usersSQL); err != nil {
		return nil, err
	}
	if err := readKeys(ctx, tx, b, keysSQL); err != nil {
		return nil, err
	}

	rows, err := tx.Query(ctx, `SELECT id, name, type, context_window, max_output_tokens, visibility,
		allowed_roles, allowed_users, routing_policy, enabled, EXTRACT(EPOCH FROM created_at)::bigint,
		COALESCE(base_model, '')
		FROM models`)
	if err != nil {
		return nil, fmt.Errorf("load models: %w", err)
	}
	for rows.Next() {
		m := &Model{}
		var vis string
		if err := rows.Scan(&m.ID, &m.Name, &m.Type, &m.ContextWindow, &m.MaxOutputTokens, &vis,
			&m.AllowedRoles, &m.AllowedUsers, &m.Policy, &m.Enabled, &m.Created, &m.BaseModel); err != nil {
			rows.Close()
			return nil, fmt.Errorf("load models: %w", err)
		}
		m.Restricted = vis == "restricted"
		b.AddModel(m)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("load models: %w", err)
	}

	rows, err = tx.Query(ctx, `SELECT a.alias, m.name FROM model_aliases a JOIN models m ON m.id = a.model_id`)
	if err != nil {
		return nil, fmt.Errorf("load aliases: %w", err)
	}
	for rows.Next() {
		var alias, target string
		if err := rows.Scan(&alias, &target); err != nil {
			rows.Close()
			return nil, fmt.Errorf("load aliases: %w", err)
		}
		b.AddAlias(alias, target)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("load aliases: %w", err)
	}

	rows, err = tx.Query(ctx, `SELECT id, url, engine_kind, models, capacity, weight, state, disabled,
		heartbeat_interval_ms, running_requests, waiting_requests, kv_cache_usage,
		GREATEST(EXTRACT(EPOCH FROM (now() - last_heartbeat_at)) * 1000, 0)::bigint
		FROM backends ORDER BY id`)
	if err != nil {
		return nil, fmt.Errorf("load backends: %w", err)
	}
	for rows.Next() {
		var be Backend
		var hbMS int32
		var ageMS int64
		if err := rows.Scan(&be.ID, &be.URL, &be.EngineKind, &be.Models, &be.Capacity, &be.Weight, &be.State,
			&be.Disabled, &hbMS, &be.Load.Running, &be.Load.Waiting, &be.Load.KVCache, &ageMS); err != nil {
			rows.Close()
			return nil, fmt.Errorf("load backends: %w", err)
		}
		be.HeartbeatInterval = time.Duration(hbMS) * time.Millisecond
		be.Load.ID, be.Load.State, be.Load.Disabled = be.ID, be.State, be.Disabled
		be.Load.HeartbeatAge = time.Duration(ageMS) * time.Millisecond
		be.Load.ReadAt = now
		b.AddBackend(be)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("load backends: %w", err)
	}
	return b.Build(), nil
}

// The users and keys of a snapshot. FindKey runs the same statements narrowed to one key and
// its user (lookup.go), so both paths apply the same rules.
const (
	usersSQL = `SELECT u.id, u.username, u.is_active,
		COALESCE(array_agg(r.name) FILTER (WHERE r.name IS NOT NULL), '{}'),
		q.requests_per_minute, q.tokens_per_minute, q.max_concurrent, q.monthly_token_budget
		FROM users u
		LEFT JOIN user_roles ur ON ur.user_id = u.id
		LEFT JOIN roles r ON r.id = ur.role_id
		LEFT JOIN user_quotas q ON q.user_id = u.id`
	usersGroup = ` GROUP BY u.id, q.user_id`
	keysSQL    = `SELECT id, user_id, key_hash, models, rpm, tpm, expires_at, scopes
		FROM api_keys WHERE revoked_at IS NULL AND (expires_at IS NULL OR expires_at > now())`
)

type rowQuerier interface {
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
}

// readUsers adds to b the users selected by sql (usersSQL, optionally with a WHERE clause).
func readUsers(ctx context.Context, q rowQuerier, b *Builder, sql string, args ...any) error {
	rows, err := q.Query(ctx, sql+usersGroup, args...)
	if err != nil {
		return fmt.Errorf("load users: %w", err)
	}
	for rows.Next() {
		u := &User{}
		var rpm, tpm, conc *int32
		var budget *int64
		if err := rows.Scan(&u.ID, &u.Username, &u.Active, &u.Roles, &rpm, &tpm, &conc, &budget); err != nil {
			rows.Close()
			return fmt.Errorf("load users: %w", err)
		}
		u.Quota = Quota{RequestsPerMinute: deref32(rpm), TokensPerMinute: deref32(tpm), MaxConcurrent: deref32(conc)}
		if budget != nil {
			u.Quota.MonthlyTokenBudget = *budget
		}
		b.AddUser(u)
	}
	if err := rows.Err(); err != nil {
		return fmt.Errorf("load users: %w", err)
	}
	return nil
}

// readKeys adds to b the usable keys selected by sql (keysSQL, optionally narrowed); b must
// already hold their users.
func readKeys(ctx context.Context, q rowQuerier, b *Builder, sql string, args ...any) error {
	rows, err := q.Query(ctx, sql, args...)
	if err != nil {
		return fmt.Errorf("load keys: %w", err)
	}
	for rows.Next() {
		k := &Key{}
		var hash []byte
		var rpm, tpm *int32
		var exp *time.Time
		var scopes []string
		if err := rows.Scan(&k.ID, &k.UserID, &hash, &k.Models, &rpm, &tpm, &exp, &scopes); err != nil {
			rows.Close()
			return fmt.Errorf("load keys: %w", err)
		}
		if len(hash) != len(apikey.Hash{}) {
			continue
		}
		k.RequestsPerMinute, k.TokensPerMinute = deref32(rpm), deref32(tpm)
		k.Scopes = apikey.ScopesOf(scopes)
		if exp != nil {
			k.ExpiresAt = *exp
		}
		b.AddKey(apikey.Hash(hash), k)
	}
	if err := rows.Err(); err != nil {
		return fmt.Errorf("load keys: %w", err)
	}
	return nil
}

func deref32(p *int32) int {
	if p == nil {
		return 0
	}
	return int(*p)
}
