package user

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/maas-platform/maas/pkg/apikey"
)

// DB is what this package needs of PostgreSQL; *pgxpool.Pool satisfies it.
type DB interface {
	Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error)
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
	Begin(ctx context.Context) (pgx.Tx, error)
}

var _ DB = (*pgxpool.Pool)(nil)

// Sentinel errors of the store.
var (
	ErrNotFound  = errors.New("user: not found")
	ErrDuplicate = errors.New("user: duplicate")
)

// User is a platform account.
type User struct {
	ID        int64     `json:"id"`
	Object    string    `json:"object"`
	Username  string    `json:"username"`
	Email     *string   `json:"email"`
	FullName  string    `json:"full_name"`
	IsActive  bool      `json:"is_active"`
	Roles     []string  `json:"roles"`
	CreatedAt time.Time `json:"created_at"`
	UpdatedAt time.Time `json:"updated_at"`

	// SessionVersion is bumped to end every console session issued before; not shown.
	SessionVersion int64 `json:"-"`
}

// Key is an API key as listed: never its secret.
type Key struct {
	ID         int64      `json:"id"`
	Object     string     `json:"object"`
	UserID     int64      `json:"user_id"`
	Name       string     `json:"name"`
	Prefix     string     `json:"prefix"`
	Models     []string   `json:"models"` // null = every model the user may use
	Scopes     []string   `json:"scopes"` // inference, management (apikey.Scopes)
	RPM        *int32     `json:"rpm"`
	TPM        *int32     `json:"tpm"`
	ExpiresAt  *time.Time `json:"expires_at"`
	RevokedAt  *time.Time `json:"revoked_at"`
	LastUsedAt *time.Time `json:"last_used_at"`
	CreatedAt  time.Time  `json:"created_at"`
}

// Quota is a user's limits; nil fields are unlimited.
type Quota struct {
	UserID             int64      `json:"user_id"`
	Object             string     `json:"object"`
	RequestsPerMinute  *int32     `json:"requests_per_minute"`
	TokensPerMinute    *int32     `json:"tokens_per_minute"`
	MaxConcurrent      *int32     `json:"max_concurrent"`
	MonthlyTokenBudget *int64     `json:"monthly_token_budget"`
	UpdatedAt          *time.Time `json:"updated_at"`
}

// Store is the SQL of users, roles, API keys and quotas. Safe for concurrent use.
type Store struct{ db DB }

// NewStore returns a Store on db.
func NewStore(db DB) *Store { return &Store{db: db} }

const userColumns = `u.id, u.username, u.email, u.full_name, u.is_active, u.created_at, u.updated_at, u.session_version,
	ARRAY(SELECT r.name FROM user_roles ur JOIN roles r ON r.id = ur.role_id WHERE ur.user_id = u.id ORDER BY r.name)`

func scanUser(row pgx.Row) (*User, error) {
	u := &User{Object: "user"}
	err := row.Scan(&u.ID, &u.Username, &u.Email, &u.FullName, &u.IsActive, &u.CreatedAt, &u.UpdatedAt, &u.SessionVersion, &u.Roles)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, ErrNotFound
	}
	if err != nil {
		return nil, err
	}
	if u.Roles == nil {
		u.Roles = []string{}
	}
	return u, nil
}

// Get returns the user with id.
func (s *Store) Get(ctx context.Context, id int64) (*User, error) {
	u, err := scanUser(s.db.QueryRow(ctx, `SELECT `+userColumns+` FROM users u WHERE u.id = $1`, id))
	if err != nil {
		return nil, fmt.Errorf("get user %d: %w", id, err)
	}
	return u, nil
}

// Credentials is what a login checks.
type Credentials struct {
	ID             int64
	PasswordHash   string
	IsActive       bool
	SessionVersion int64
}

// Credentials returns the credentials of username.
func (s *Store) Credentials(ctx context.Context, username string) (*Credentials, error) {
	var c Credentials
	err := s.db.QueryRow(ctx, `SELECT id, password_hash, is_active, session_version FROM users WHERE username = $1`, username).
		Scan(&c.ID, &c.PasswordHash, &c.IsActive, &c.SessionVersion)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, ErrNotFound
	}
	if err != nil {
		return nil, fmt.Errorf("get credentials: %w", err)
	}
	return &c, nil
}

// PasswordHash returns the stored hash of user id.
func (s *Store) PasswordHash(ctx context.Context, id int64) (string, error) {
	var h string
	err := s.db.QueryRow(ctx, `SELECT password_hash FROM users WHERE id = $1`, id).Scan(&h)
	if errors.Is(err, pgx.ErrNoRows) {
		return "", ErrNotFound
	}
	if err != nil {
		return "", fmt.Errorf("get password hash %d: %w", id, err)
	}
	return h, nil
}

// List returns up to limit+1 users with id > after, by id.
func (s *Store) List(ctx context.Context, after int64, limit int) ([]*User, error) {
	rows, err := s.db.Query(ctx, `SELECT `+userColumns+` FROM users u WHERE u.id > $1 ORDER BY u.id LIMIT $2`, after, limit+1)
	if err != nil {
		return nil, fmt.Errorf("list users: %w", err)
	}
	defer rows.Close()
	var out []*User
	for rows.Next() {
		u, err := scanUser(rows)
		if err != nil {
			return nil, fmt.Errorf("list users: %w", err)
		}
		out = append(out, u)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("list users: %w", err)
	}
	return out, nil
}

// NewUser is what Create stores.
type NewUser struct {
	Username     string
	Email        *string
	FullName     string
	PasswordHash string
	IsActive     bool
	Roles        []string
}

// Create inserts a user with its roles and returns it.
func (s *Store) Create(ctx context.Context, n NewUser) (*User, error) {
	tx, err := s.db.Begin(ctx)
	if err != nil {
		return nil, fmt.Errorf("create user: %w", err)
	}
	defer tx.Rollback(ctx) //nolint:errcheck
	var id int64
	err = tx.QueryRow(ctx, `INSERT INTO users (username, email, full_name, password_hash, is_active)
		VALUES ($1, $2, $3, $4, $5) RETURNING id`, n.Username, n.Email, n.FullName, n.PasswordHash, n.IsActive).Scan(&id)
	if err != nil {
		return nil, fmt.Errorf("create user: %w", mapErr(err))
	}
	if err := setRoles(ctx, tx, id, n.Roles); err != nil {
		return nil, err
	}
	u, err := scanUser(tx.QueryRow(ctx, `SELECT `+userColumns+` FROM users u WHERE u.id = $1`, id))
	if err != nil {
		return nil, fmt.Errorf("create user: %w", err)
	}
	if err := tx.Commit(ctx); err != nil {
		return nil, fmt.Errorf("create user: %w", err)
	}
	return u, nil
}

func setRoles(ctx context.Context, tx pgx.Tx, id int64, roles []string) error {
	if _, err := tx.Exec(ctx, `DELETE FROM user_roles WHERE user_id = $1 AND role_id NOT IN (SELECT id FROM roles WHERE name = ANY($2))`, id, roles); err != nil {
		return fmt.Errorf("set roles of user %d: %w", id, err)
	}
	if _, err := tx.Exec(ctx, `INSERT INTO user_roles (user_id, role_id) SELECT $1, id FROM roles WHERE name = ANY($2)
		ON CONFLICT DO NOTHING`, id, roles); err != nil {
		return fmt.Errorf("set roles of user %d: %w", id, err)
	}
	return nil
}

// SetRoles replaces the roles of user id.
func (s *Store) SetRoles(ctx context.Context, id int64, roles []string) (*User, error) {
	tx, err := s.db.Begin(ctx)
	if err != nil {
		return nil, fmt.Errorf("set roles: %w", err)
	}
	defer tx.Rollback(ctx) //nolint:errcheck
	var locked int64
	err = tx.QueryRow(ctx, `SELECT id FROM users WHERE id = $1 FOR UPDATE`, id).Scan(&locked)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, fmt.Errorf("set roles of user %d: %w", id, ErrNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("set roles of user %d: %w", id, err)
	}
	if err := setRoles(ctx, tx, id, roles); err != nil {
		return nil, err
	}
	if _, err := tx.Exec(ctx, `UPDATE users SET updated_at = now() WHERE id = $1`, id); err != nil {
		return nil, fmt.Errorf("set roles of user %d: %w", id, err)
	}
	u, err := scanUser(tx.QueryRow(ctx, `SELECT `+userColumns+` FROM users u WHERE u.id = $1`, id))
	if err != nil {
		return nil, fmt.Errorf("set roles of user %d: %w", id, err)
	}
	return u, tx.Commit(ctx)
}

// KnownRoles returns which of names exist in the roles table.
func (s *Store) KnownRoles(ctx context.Context, names []string) (map[string]bool, error) {
	rows, err := s.db.Query(ctx, `SELECT name FROM roles WHERE name = ANY($1)`, names)
	if err != nil {
		return nil, fmt.Errorf("look up roles: %w", err)
	}
	known, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return nil, fmt.Errorf("look up roles: %w", err)
	}
	out := map[string]bool{}
	for _, n := range known {
		out[n] = true
	}
	return out, nil
}

// Update is a partial change of a user; nil fields stay as they are.
type Update struct {
	Email        *string
	ClearEmail   bool
	FullName     *string
	IsActive     *bool
	PasswordHash *string
}

// Update applies u to user id. Setting a password or disabling the user bumps
// session_version, which ends every console session issued before.
func (s *Store) Update(ctx context.Context, id int64, u Update) (*User, error) {
	endSessions := u.PasswordHash != nil || (u.IsActive != nil && !*u.IsActive)
	tag, err := s.db.Exec(ctx, `UPDATE users SET
		email = CASE WHEN $2 THEN NULL ELSE COALESCE($3, email) END,
		full_name = COALESCE($4, full_name),
		is_active = COALESCE($5, is_active),
		password_hash = COALESCE($6, password_hash),
		session_version = session_version + CASE WHEN $7 THEN 1 ELSE 0 END,
		updated_at = now()
		WHERE id = $1`, id, u.ClearEmail, u.Email, u.FullName, u.IsActive, u.PasswordHash, endSessions)
	if err != nil {
		return nil, fmt.Errorf("update user %d: %w", id, mapErr(err))
	}
	if tag.RowsAffected() == 0 {
		return nil, fmt.Errorf("update user %d: %w", id, ErrNotFound)
	}
	return s.Get(ctx, id)
}

// Delete removes user id (and by cascade their keys, roles and quota).
func (s *Store) Delete(ctx context.Context, id int64) error {
	tag, err := s.db.Exec(ctx, `DELETE FROM users WHERE id = $1`, id)
	if err != nil {
		return fmt.Errorf("delete user %d: %w", id, err)
	}
	if tag.RowsAffected() == 0 {
		return fmt.Errorf("delete user %d: %w", id, ErrNotFound)
	}
	return nil
}

// AdminExists reports whether any user has the admin role.
func (s *Store) AdminExists(ctx context.Context) (bool, error) {
	var ok bool
	err := s.db.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM user_roles ur JOIN roles r ON r.id = ur.role_id WHERE r.name = 'admin')`).Scan(&ok)
	if err != nil {
		return false, fmt.Errorf("look for an admin: %w", err)
	}
	return ok, nil
}

// IDByUsername returns the id of username.
func (s *Store) IDByUsername(ctx context.Context, username string) (int64, error) {
	var id int64
	err := s.db.QueryRow(ctx, `SELECT id FROM users WHERE username = $1`, username).Scan(&id)
	if errors.Is(err, pgx.ErrNoRows) {
		return 0, fmt.Errorf("user %q: %w", username, ErrNotFound)
	}
	if err != nil {
		return 0, fmt.Errorf("user %q: %w", username, err)
	}
	return id, nil
}

// --- API keys ---

const keyColumns = `id, user_id, name, prefix, models, scopes, rpm, tpm, expires_at, revoked_at, last_used_at, created_at`

func scanKey(row pgx.Row) (*Key, error) {
	k := &Key{Object: "api_key"}
	err := row.Scan(&k.ID, &k.UserID, &k.Name, &k.Prefix, &k.Models, &k.Scopes, &k.RPM, &k.TPM, &k.ExpiresAt, &k.RevokedAt, &k.LastUsedAt, &k.CreatedAt)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, ErrNotFound
	}
	return k, err
}

// NewKey is what CreateKey stores.
type NewKey struct {
	UserID    int64
	Name      string
	Prefix    string
	Hash      []byte
	Models    []string
	Scopes    apikey.Scopes // zero: apikey.DefaultScopes
	RPM, TPM  *int32
	ExpiresAt *time.Time
}

// CreateKey inserts a key.
func (s *Store) CreateKey(ctx context.Context, n NewKey) (*Key, error) {
	if n.Scopes == 0 {
		n.Scopes = apikey.DefaultScopes
	}
	k, err := scanKey(s.db.QueryRow(ctx, `INSERT INTO api_keys (user_id, name, prefix, key_hash, models, scopes, rpm, tpm, expires_at)
		VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) RETURNING `+keyColumns,
		n.UserID, n.Name, n.Prefix, n.Hash, n.Models, n.Scopes.Names(), n.RPM, n.TPM, n.ExpiresAt))
	if err != nil {
		return nil, fmt.Errorf("create key: %w", mapErr(err))
	}
	return k, nil
}

// GetKey returns key id.
func (s *Store) GetKey(ctx context.Context, id int64) (*Key, error) {
	k, err := scanKey(s.db.QueryRow(ctx, `SELECT `+keyColumns+` FROM api_keys WHERE id = $1`, id))
	if err != nil {
		return nil, fmt.Errorf("get key %d: %w", id, err)
	}
	return k, nil
}

// ListKeys returns up to limit+1 keys with id > after, of userID (0 = every user).
func (s *Store) ListKeys(ctx context.Context, userID, after int64, limit int) ([]*Key, error) {
	rows, err := s.db.Query(ctx, `SELECT `+keyColumns+` FROM api_keys
		WHERE ($1 = 0 OR user_id = $1) AND id > $2 ORDER BY id LIMIT $3`, userID, after, limit+1)
	if err != nil {
		return nil, fmt.Errorf("list keys: %w", err)
	}
	defer rows.Close()
	var out []*Key
	for rows.Next() {
		k, err := scanKey(rows)
		if err != nil {
			return nil, fmt.Errorf("list keys: %w", err)
		}
		out = append(out, k)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("list keys: %w", err)
	}
	return out, nil
}

// RevokeKey sets revoked_at on key id (kept when already revoked).
func (s *Store) RevokeKey(ctx context.Context, id int64) error {
	tag, err := s.db.Exec(ctx, `UPDATE api_keys SET revoked_at = COALESCE(revoked_at, now()) WHERE id = $1`, id)
	if err != nil {
		return fmt.Errorf("revoke key %d: %w", id, err)
	}
	if tag.RowsAffected() == 0 {
		return fmt.Errorf("revoke key %d: %w", id, ErrNotFound)
	}
	return nil
}

// KeyOwner is what authentication needs of a key.
type KeyOwner struct {
	KeyID     int64
	UserID    int64
	Scopes    apikey.Scopes
	ExpiresAt *time.Time
	RevokedAt *time.Time
}

const keyOwnerColumns = `id, user_id, scopes, expires_at, revoked_at`

func scanKeyOwner(row pgx.Row) (*KeyOwner, error) {
	var k KeyOwner
	var scopes []string
	err := row.Scan(&k.KeyID, &k.UserID, &scopes, &k.ExpiresAt, &k.RevokedAt)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, ErrNotFound
	}
	if err != nil {
		return nil, err
	}
	k.Scopes = apikey.ScopesOf(scopes)
	return &k, nil
}

// KeyByHash finds a key by its digest.
func (s *Store) KeyByHash(ctx context.Context, hash []byte) (*KeyOwner, error) {
	k, err := scanKeyOwner(s.db.QueryRow(ctx, `SELECT `+keyOwnerColumns+` FROM api_keys WHERE key_hash = $1`, hash))
	if err != nil && !errors.Is(err, ErrNotFound) {
		return nil, fmt.Errorf("look up key: %w", err)
	}
	return k, err
}

// KeyByID is KeyByHash by id (for identities forwarded by the gateway).
func (s *Store) KeyByID(ctx context.Context, id int64) (*KeyOwner, error) {
	k, err := scanKeyOwner(s.db.QueryRow(ctx, `SELECT `+keyOwnerColumns+` FROM api_keys WHERE id = $1`, id))
	if err != nil && !errors.Is(err, ErrNotFound) {
		return nil, fmt.Errorf("look up key %d: %w", id, err)
	}
	return k, err
}

// --- quotas ---

// GetQuota returns the quota of user id (all unlimited when none is set).
func (s *Store) GetQuota(ctx context.Context, id int64) (*Quota, error) {
	q := &Quota{UserID: id, Object: "user_quota"}
	var found bool
	err := s.db.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM users WHERE id = $1)`, id).Scan(&found)
	if err != nil {
		return nil, fmt.Errorf("get quota of user %d: %w", id, err)
	}
	if !found {
		return nil, fmt.Errorf("get quota of user %d: %w", id, ErrNotFound)
	}
	err = s.db.QueryRow(ctx, `SELECT requests_per_minute, tokens_per_minute, max_concurrent, monthly_token_budget, updated_at
		FROM user_quotas WHERE user_id = $1`, id).Scan(&q.RequestsPerMinute, &q.TokensPerMinute, &q.MaxConcurrent, &q.MonthlyTokenBudget, &q.UpdatedAt)
	if err != nil && !errors.Is(err, pgx.ErrNoRows) {
		return nil, fmt.Errorf("get quota of user %d: %w", id, err)
	}
	return q, nil
}

// PutQuota replaces the quota of user q.UserID.
func (s *Store) PutQuota(ctx context.Context, q Quota) (*Quota, error) {
	_, err := s.db.Exec(ctx, `INSERT INTO user_quotas (user_id, requests_per_minute, tokens_per_minute, max_concurrent, monthly_token_budget)
		VALUES ($1, $2, $3, $4, $5)
		ON CONFLICT (user_id) DO UPDATE SET requests_per_minute = EXCLUDED.requests_per_minute,
			tokens_per_minute = EXCLUDED.tokens_per_minute, max_concurrent = EXCLUDED.max_concurrent,
			monthly_token_budget = EXCLUDED.monthly_token_budget, updated_at = now()`,
		q.UserID, q.RequestsPerMinute, q.TokensPerMinute, q.MaxConcurrent, q.MonthlyTokenBudget)
	if err != nil {
		return nil, fmt.Errorf("put quota of user %d: %w", q.UserID, mapErr(err))
	}
	return s.GetQuota(ctx, q.UserID)
}

// DuplicateError names the column whose unique constraint failed.
type DuplicateError struct{ Constraint string }

func (e *DuplicateError) Error() string { return "duplicate value violates " + e.Constraint }
func (e *DuplicateError) Unwrap() error { return ErrDuplicate }

// ErrForeignKey reports a reference to a row that does not exist.
var ErrForeignKey = errors.New("user: referenced row does not exist")

func mapErr(err error) error {
	var pg *pgconn.PgError
	if errors.As(err, &pg) {
		switch pg.Code {
		case "23505":
			return &DuplicateError{Constraint: pg.ConstraintName}
		case "23503":
			return fmt.Errorf("%w: %s", ErrForeignKey, pg.ConstraintName)
		}
	}
	return err
}
