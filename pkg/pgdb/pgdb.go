// Package pgdb opens the PostgreSQL pool and applies the embedded migrations with goose.
package pgdb

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"io/fs"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/jackc/pgx/v5/stdlib"
	"github.com/pressly/goose/v3"

	"github.com/maas-platform/maas/migrations"
)

// Connect opens a pool and waits until the database answers or ctx ends.
func Connect(ctx context.Context, url string) (*pgxpool.Pool, error) {
	cfg, err := pgxpool.ParseConfig(url)
	if err != nil {
		return nil, fmt.Errorf("parse database url: %w", err)
	}
	cfg.ConnConfig.ConnectTimeout = 5 * time.Second
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("open database: %w", err)
	}
	pctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := pool.Ping(pctx); err != nil {
		pool.Close()
		return nil, fmt.Errorf("ping database: %w", err)
	}
	return pool, nil
}

// Migrator applies the embedded migrations. It owns a database/sql handle on the pool; Close it.
type Migrator struct {
	db *sql.DB
	p  *goose.Provider
}

// NewMigrator returns a Migrator over pool using the platform's migrations.
func NewMigrator(pool *pgxpool.Pool) (*Migrator, error) {
	return newMigrator(pool, migrations.FS)
}

func newMigrator(pool *pgxpool.Pool, fsys fs.FS) (*Migrator, error) {
	db := stdlib.OpenDBFromPool(pool)
	p, err := goose.NewProvider(goose.DialectPostgres, db, fsys)
	if err != nil {
		db.Close()
		return nil, fmt.Errorf("load migrations: %w", err)
	}
	return &Migrator{db: db, p: p}, nil
}

// Close releases the database/sql handle (not the pool).
func (m *Migrator) Close() error { return m.db.Close() }

// Up applies every pending migration and returns how many ran.
func (m *Migrator) Up(ctx context.Context) (int, error) {
	res, err := m.p.Up(ctx)
	if err != nil {
		return len(res), fmt.Errorf("migrate up: %w", err)
	}
	return len(res), nil
}

// Down rolls back the n most recent migrations (n <= 0 means all).
func (m *Migrator) Down(ctx context.Context, n int) (int, error) {
	if n <= 0 {
		res, err := m.p.DownTo(ctx, 0)
		if err != nil {
			return len(res), fmt.Errorf("migrate down: %w", err)
		}
		return len(res), nil
	}
	done := 0
	for range n {
		_, err := m.p.Down(ctx)
		if errors.Is(err, goose.ErrNoNextVersion) {
			break
		}
		if err != nil {
			return done, fmt.Errorf("migrate down: %w", err)
		}
		done++
	}
	return done, nil
}

// Version is the current schema version (0 when none is applied).
func (m *Migrator) Version(ctx context.Context) (int64, error) {
	v, err := m.p.GetDBVersion(ctx)
	if err != nil {
		return 0, fmt.Errorf("schema version: %w", err)
	}
	return v, nil
}

// Latest is the newest migration the binary carries.
func (m *Migrator) Latest() int64 {
	srcs := m.p.ListSources()
	if len(srcs) == 0 {
		return 0
	}
	return srcs[len(srcs)-1].Version
}

// MigrationStatus is one migration and whether it is applied.
type MigrationStatus struct {
	Version   int64
	Name      string
	Applied   bool
	AppliedAt time.Time
}

// Status lists every migration with its state.
func (m *Migrator) Status(ctx context.Context) ([]MigrationStatus, error) {
	st, err := m.p.Status(ctx)
	if err != nil {
		return nil, fmt.Errorf("migration status: %w", err)
	}
	out := make([]MigrationStatus, 0, len(st))
	for _, s := range st {
		out = append(out, MigrationStatus{
			Version: s.Source.Version, Name: s.Source.Path,
			Applied: s.State == goose.StateApplied, AppliedAt: s.AppliedAt,
		})
	}
	return out, nil
}
