// Package pgtest gives each integration test a fresh, migrated PostgreSQL database and a
// Redis URL, from the servers that `make test` starts.
//
// The server is found through MAAS_TEST_DATABASE_URL (a superuser URL; its database is
// used only to create others). Without it the test is skipped when run by hand, and fails
// under CI=true: CI must never pass by skipping.
package pgtest

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io/fs"
	"net/url"
	"os"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/maas-platform/maas/migrations"
	"github.com/maas-platform/maas/pkg/pgdb"
)

var seq atomic.Int64

// ServerURL returns MAAS_TEST_DATABASE_URL, or skips (fails under CI) when unset.
func ServerURL(t testing.TB) string {
	t.Helper()
	u := os.Getenv("MAAS_TEST_DATABASE_URL")
	if u == "" {
		missing(t, "MAAS_TEST_DATABASE_URL (PostgreSQL)")
	}
	return u
}

// RedisURL returns MAAS_TEST_REDIS_URL, or skips (fails under CI) when unset.
func RedisURL(t testing.TB) string {
	t.Helper()
	u := os.Getenv("MAAS_TEST_REDIS_URL")
	if u == "" {
		missing(t, "MAAS_TEST_REDIS_URL (Redis)")
	}
	return u
}

func missing(t testing.TB, what string) {
	t.Helper()
	if os.Getenv("CI") != "" {
		t.Fatalf("%s is not set: integration tests need it under CI (run them with `make test`)", what)
	}
	t.Skipf("%s is not set; run `make test` to start the services", what)
}

// NewDatabase creates an empty database, migrated to the latest version, dropped when the
// test ends, and returns its URL.
func NewDatabase(t testing.TB) string {
	t.Helper()
	server := ServerURL(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	tmpl, err := template(ctx, server)
	if err != nil {
		t.Fatalf("pgtest: template database: %v", err)
	}
	name := fmt.Sprintf("t_%d_%d_%d", os.Getpid(), time.Now().UnixNano()%1e9, seq.Add(1))
	admin, err := pgx.Connect(ctx, server)
	if err != nil {
		t.Fatalf("pgtest: connect: %v", err)
	}
	defer admin.Close(ctx)
	// CREATE DATABASE … TEMPLATE fails while another session is connected to the template;
	// retry briefly since other test binaries may be cloning it at the same time.
	for attempt := 0; ; attempt++ {
		_, err = admin.Exec(ctx, "CREATE DATABASE "+name+" TEMPLATE "+tmpl)
		if err == nil || attempt > 50 || !strings.Contains(err.Error(), "being accessed by other users") {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if err != nil {
		t.Fatalf("pgtest: create database: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		c, err := pgx.Connect(ctx, server)
		if err != nil {
			t.Logf("pgtest: drop %s: %v", name, err)
			return
		}
		defer c.Close(ctx)
		if _, err := c.Exec(ctx, "DROP DATABASE IF EXISTS "+name+" WITH (FORCE)"); err != nil {
			t.Logf("pgtest: drop %s: %v", name, err)
		}
	})
	return withDatabase(server, name)
}

// NewPool is NewDatabase plus a pool closed when the test ends.
func NewPool(t testing.TB) (*pgxpool.Pool, string) {
	t.Helper()
	u := NewDatabase(t)
	pool, err := pgdb.Connect(context.Background(), u)
	if err != nil {
		t.Fatalf("pgtest: %v", err)
	}
	t.Cleanup(pool.Close)
	return pool, u
}

// EmptyDatabase creates a database with no migrations applied (for migration tests).
func EmptyDatabase(t testing.TB) string {
	t.Helper()
	server := ServerURL(t)
	ctx := context.Background()
	name := fmt.Sprintf("e_%d_%d", os.Getpid(), seq.Add(1))
	admin, err := pgx.Connect(ctx, server)
	if err != nil {
		t.Fatalf("pgtest: connect: %v", err)
	}
	defer admin.Close(ctx)
	if _, err := admin.Exec(ctx, "CREATE DATABASE "+name); err != nil {
		t.Fatalf("pgtest: create database: %v", err)
	}
	t.Cleanup(func() {
		c, err := pgx.Connect(context.Background(), server)
		if err == nil {
			defer c.Close(context.Background())
			_, _ = c.Exec(context.Background(), "DROP DATABASE IF EXISTS "+name+" WITH (FORCE)")
		}
	})
	return withDatabase(server, name)
}

// template returns the name of a migrated template database for the current migration
// set, creating it once per server under an advisory lock.
func template(ctx context.Context, server string) (string, error) {
	h := sha256.New()
	err := fs.WalkDir(migrations.FS, ".", func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := fs.ReadFile(migrations.FS, p)
		h.Write([]byte(p))
		h.Write(b)
		return err
	})
	if err != nil {
		return "", err
	}
	name := "tmpl_" + hex.EncodeToString(h.Sum(nil))[:16]
	admin, err := pgx.Connect(ctx, server)
	if err != nil {
		return "", err
	}
	defer admin.Close(ctx)
	if _, err := admin.Exec(ctx, "SELECT pg_advisory_lock(727274)"); err != nil {
		return "", err
	}
	defer admin.Exec(context.Background(), "SELECT pg_advisory_unlock(727274)") //nolint:errcheck
	var exists bool
	if err := admin.QueryRow(ctx, "SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)", name).Scan(&exists); err != nil {
		return "", err
	}
	if exists {
		return name, nil
	}
	building := name + "_build"
	_, _ = admin.Exec(ctx, "DROP DATABASE IF EXISTS "+building+" WITH (FORCE)")
	if _, err := admin.Exec(ctx, "CREATE DATABASE "+building); err != nil {
		return "", err
	}
	pool, err := pgdb.Connect(ctx, withDatabase(server, building))
	if err != nil {
		return "", err
	}
	m, err := pgdb.NewMigrator(pool)
	if err != nil {
		pool.Close()
		return "", err
	}
	_, err = m.Up(ctx)
	m.Close()
	pool.Close()
	if err != nil {
		return "", err
	}
	if _, err := admin.Exec(ctx, "ALTER DATABASE "+building+" RENAME TO "+name); err != nil {
		return "", err
	}
	return name, nil
}

func withDatabase(server, name string) string {
	u, err := url.Parse(server)
	if err != nil {
		return server
	}
	u.Path = "/" + name
	return u.String()
}
