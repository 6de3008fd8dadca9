// Package model is the model registry: models, their aliases, prices, limits, visibility
// and routing policy. It owns the models and model_aliases tables and their API.
package model

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// DB is what this package needs of PostgreSQL; *pgxpool.Pool satisfies it.
type DB interface {
	Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error)
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
	Begin(ctx context.Context) (pgx.Tx, error)
}

// Sentinel errors.
var (
	ErrNotFound = errors.New("model: not found")
	// ErrNameTaken reports a name or alias already used by a model or alias.
	ErrNameTaken = errors.New("model: name or alias already in use")
)

// Model types, visibilities and routing policies.
var (
	Types            = []string{"chat", "completion", "embedding"}
	Visibilities     = []string{"public", "restricted"}
	RoutingPolicies  = []string{"least_outstanding", "prefix_affinity", "weighted_random"}
	defaultRouting   = "least_outstanding"
	defaultVisiblity = "public"
)

// Model is a registered model.
type Model struct {
	ID                    int64    `json:"id"`
	Object                string   `json:"object"`
	Name                  string   `json:"name"`
	Type                  string   `json:"type"`
	Description           string   `json:"description"`
	Aliases               []string `json:"aliases"`
	ContextWindow         int32    `json:"context_window"`
	MaxOutputTokens       int32    `json:"max_output_tokens"`
	InputPricePerMillion  float64  `json:"input_price_per_million"`
	OutputPricePerMillion float64  `json:"output_price_per_million"`
	Visibility            string   `json:"visibility"`
	AllowedRoles          []string `json:"allowed_roles"`
	AllowedUsers          []int64  `json:"allowed_users"`
	RoutingPolicy         string   `json:"routing_policy"`
	Enabled               bool     `json:"enabled"`
	// BaseModel is the model a LoRA adapter applies to (set when a fine-tuning job
	// registers its result); empty for a base model.
	BaseModel string    `json:"base_model,omitempty"`
	CreatedAt time.Time `json:"created_at"`
	UpdatedAt time.Time `json:"updated_at"`
}

// VisibleTo reports whether a caller with userID and roles may use m (admins see all).
func (m *Model) VisibleTo(userID int64, roles []string, admin bool) bool {
	if admin {
		return true
	}
	if !m.Enabled {
		return false
	}
	if m.Visibility == "public" || slices.Contains(m.AllowedUsers, userID) {
		return true
	}
	for _, r := range roles {
		if slices.Contains(m.AllowedRoles, r) {
			return true
		}
	}
	return false
}

// Service is the model registry: store and handlers. Safe for concurrent use.
type Service struct {
	db  DB
	log *slog.Logger
}

// New returns a Service on db.
func New(db DB, log *slog.Logger) *Service { return &Service{db: db, log: log} }

const columns = `m.id, m.name, m.type, m.description, m.context_window, m.max_output_tokens,
	m.input_price_per_million::float8, m.output_price_per_million::float8, m.visibility, m.allowed_roles,
	m.allowed_users, m.routing_policy, m.enabled, COALESCE(m.base_model, ''), m.created_at, m.updated_at,
	ARRAY(SELECT a.alias FROM model_aliases a WHERE a.model_id = m.id ORDER BY a.alias)`

func scan(row pgx.Row) (*Model, error) {
	m := &Model{Object: "model"}
	err := row.Scan(&m.ID, &m.Name, &m.Type, &m.Description, &m.ContextWindow, &m.MaxOutputTokens,
		&m.InputPricePerMillion, &m.OutputPricePerMillion, &m.Visibility, &m.AllowedRoles,
		&m.AllowedUsers, &m.RoutingPolicy, &m.Enabled, &m.BaseModel, &m.CreatedAt, &m.UpdatedAt, &m.Aliases)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, ErrNotFound
	}
	if err != nil {
		return nil, err
	}
	for _, p := range []*[]string{&m.Aliases, &m.AllowedRoles} {
		if *p == nil {
			*p = []string{}
		}
	}
	if m.AllowedUsers == nil {
		m.AllowedUsers = []int64{}
	}
	return m, nil
}

// Get returns the model named name, or whose alias is name.
func (s *Service) Get(ctx context.Context, name string) (*Model, error) {
	m, err := scan(s.db.QueryRow(ctx, `SELECT `+columns+` FROM models m
		WHERE m.name = $1 OR m.id = (SELECT model_id FROM model_aliases WHERE alias = $1)`, name))
	if err != nil {
		return nil, fmt.Errorf("get model %q: %w", name, err)
	}
	return m, nil
}

// Viewer is who lists models; Admin sees every model.
type Viewer struct {
	UserID int64
	Roles  []string
	Admin  bool
}

// List returns up to limit+1 models with id > after that v may see.
func (s *Service) List(ctx context.Context, v Viewer, after int64, limit int) ([]*Model, error) {
	rows, err := s.db.Query(ctx, `SELECT `+columns+` FROM models m
		WHERE m.id > $1 AND ($2 OR (m.enabled AND (m.visibility = 'public' OR m.allowed_roles && $3 OR $4 = ANY (m.allowed_users))))
		ORDER BY m.id LIMIT $5`, after, v.Admin, v.Roles, v.UserID, limit+1)
	if err != nil {
		return nil, fmt.Errorf("list models: %w", err)
	}
	defer rows.Close()
	var out []*Model
	for rows.Next() {
		m, err := scan(rows)
		if err != nil {
			return nil, fmt.Errorf("list models: %w", err)
		}
		out = append(out, m)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("list models: %w", err)
	}
	return out, nil
}

// checkNames fails with ErrNameTaken when any of names is a model name or alias other than
// those of model self (0 for a new model).
func checkNames(ctx context.Context, tx pgx.Tx, self int64, names []string) error {
	var taken string
	err := tx.QueryRow(ctx, `SELECT n FROM unnest($1::text[]) AS n
		WHERE EXISTS (SELECT 1 FROM models WHERE name = n AND id <> $2)
		   OR EXISTS (SELECT 1 FROM model_aliases WHERE alias = n AND model_id <> $2)
		LIMIT 1`, names, self).Scan(&taken)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil
	}
	if err != nil {
		return err
	}
	return fmt.Errorf("%w: %s", ErrNameTaken, taken)
}

func setAliases(ctx context.Context, tx pgx.Tx, id int64, aliases []string) error {
	if _, err := tx.Exec(ctx, `DELETE FROM model_aliases WHERE model_id = $1`, id); err != nil {
		return err
	}
	if len(aliases) == 0 {
		return nil
	}
	_, err := tx.Exec(ctx, `INSERT INTO model_aliases (alias, model_id) SELECT a, $2 FROM unnest($1::text[]) AS a`, aliases, id)
	return err
}

// Create inserts m (its Name, Type and fields) with its aliases.
func (s *Service) Create(ctx context.Context, m *Model) (*Model, error) {
	tx, err := s.db.Begin(ctx)
	if err != nil {
		return nil, fmt.Errorf("create model: %w", err)
	}
	defer tx.Rollback(ctx) //nolint:errcheck
	// One namespace for names and aliases: serialize writers so that two concurrent
	// creations cannot both pass the check.
	if _, err := tx.Exec(ctx, `LOCK TABLE model_aliases IN SHARE ROW EXCLUSIVE MODE`); err != nil {
		return nil, fmt.Errorf("create model: %w", err)
	}
	if err := checkNames(ctx, tx, 0, append([]string{m.Name}, m.Aliases...)); err != nil {
		return nil, fmt.Errorf("create model %q: %w", m.Name, err)
	}
	var id int64
	err = tx.QueryRow(ctx, `INSERT INTO models (name, type, description, context_window, max_output_tokens,
		input_price_per_million, output_price_per_million, visibility, allowed_roles, allowed_users, routing_policy, enabled, base_model)
		VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, NULLIF($13, '')) RETURNING id`,
		m.Name, m.Type, m.Description, m.ContextWindow, m.MaxOutputTokens, m.InputPricePerMillion, m.OutputPricePerMillion,
		m.Visibility, m.AllowedRoles, m.AllowedUsers, m.RoutingPolicy, m.Enabled, m.BaseModel).Scan(&id)
	if err != nil {
		return nil, fmt.Errorf("create model %q: %w", m.Name, mapErr(err))
	}
	if err := setAliases(ctx, tx, id, m.Aliases); err != nil {
		return nil, fmt.Errorf("create model %q: %w", m.Name, mapErr(err))
	}
	out, err := scan(tx.QueryRow(ctx, `SELECT `+columns+` FROM models m WHERE m.id = $1`, id))
	if err != nil {
		return nil, fmt.Errorf("create model %q: %w", m.Name, err)
	}
	return out, tx.Commit(ctx)
}

// Replace stores every field of m (found by m.ID), aliases included.
func (s *Service) Replace(ctx context.Context, m *Model) (*Model, error) {
	tx, err := s.db.Begin(ctx)
	if err != nil {
		return nil, fmt.Errorf("update model: %w", err)
	}
	defer tx.Rollback(ctx) //nolint:errcheck
	if _, err := tx.Exec(ctx, `LOCK TABLE model_aliases IN SHARE ROW EXCLUSIVE MODE`); err != nil {
		return nil, fmt.Errorf("update model: %w", err)
	}
	if err := checkNames(ctx, tx, m.ID, m.Aliases); err != nil {
		return nil, fmt.Errorf("update model %q: %w", m.Name, err)
	}
	tag, err := tx.Exec(ctx, `UPDATE models SET type = $2, description = $3, context_window = $4, max_output_tokens = $5,
		input_price_per_million = $6, output_price_per_million = $7, visibility = $8, allowed_roles = $9,
		allowed_users = $10, routing_policy = $11, enabled = $12, updated_at = now() WHERE id = $1`,
		m.ID, m.Type, m.Description, m.ContextWindow, m.MaxOutputTokens, m.InputPricePerMillion, m.OutputPricePerMillion,
		m.Visibility, m.AllowedRoles, m.AllowedUsers, m.RoutingPolicy, m.Enabled)
	if err != nil {
		return nil, fmt.Errorf("update model %q: %w", m.Name, mapErr(err))
	}
	if tag.RowsAffected() == 0 {
		return nil, fmt.Errorf("update model %q: %w", m.Name, ErrNotFound)
	}
	if err := setAliases(ctx, tx, m.ID, m.Aliases); err != nil {
		return nil, fmt.Errorf("update model %q: %w", m.Name, mapErr(err))
	}
	out, err := scan(tx.QueryRow(ctx, `SELECT `+columns+` FROM models m WHERE m.id = $1`, m.ID))
	if err != nil {
		return nil, fmt.Errorf("update model %q: %w", m.Name, err)
	}
	return out, tx.Commit(ctx)
}

// Delete removes model id and its aliases.
func (s *Service) Delete(ctx context.Context, id int64) error {
	tag, err := s.db.Exec(ctx, `DELETE FROM models WHERE id = $1`, id)
	if err != nil {
		return fmt.Errorf("delete model %d: %w", id, err)
	}
	if tag.RowsAffected() == 0 {
		return fmt.Errorf("delete model %d: %w", id, ErrNotFound)
	}
	return nil
}

func mapErr(err error) error {
	var pg *pgconn.PgError
	if errors.As(err, &pg) && pg.Code == "23505" {
		return fmt.Errorf("%w: %s", ErrNameTaken, pg.ConstraintName)
	}
	return err
}
