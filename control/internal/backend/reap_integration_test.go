package backend

import (
	"context"
	"log/slog"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/maas-platform/maas/pkg/pgdb/pgtest"
)

// A control process that starts (or restarts after an outage) gives every backend its 3
// heartbeat intervals again: while control was away no heartbeat could reach PostgreSQL,
// so an old last_heartbeat_at says nothing about the backend. Before, the first reap of a
// restarted control marked every backend unhealthy and gateways answered 503 until the
// next heartbeats.
func TestReapCountsSilenceFromItsOwnStart(t *testing.T) {
	pool, _ := pgtest.NewPool(t)
	ctx := context.Background()
	if _, err := pool.Exec(ctx, `
		INSERT INTO backends (id, url, engine_kind, models, capacity, heartbeat_interval_ms, last_heartbeat_at)
		VALUES ('quiet', 'http://127.0.0.1:9', 'sim', '{chat}', 8, 100, now() - interval '1 minute')`); err != nil {
		t.Fatal(err)
	}
	s, err := New(pool, Options{Logger: slog.New(slog.DiscardHandler), Registerer: prometheus.NewRegistry(),
		RemoveAfter: 10 * time.Second, ReapInterval: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	state := func() string {
		t.Helper()
		var st string
		if err := pool.QueryRow(ctx, `SELECT state FROM backends WHERE id = 'quiet'`).Scan(&st); err != nil {
			t.Fatal(err)
		}
		return st
	}
	if u, r, err := s.Reap(ctx); err != nil || u != 0 || r != 0 || state() != "healthy" {
		t.Fatalf("first reap after start: unhealthy %d removed %d err %v state %s; want the backend left healthy", u, r, err, state())
	}
	// Three intervals after the start with no heartbeat: now it is silent.
	*s.since = s.since.Add(-time.Second)
	if u, _, err := s.Reap(ctx); err != nil || u != 1 || state() != "unhealthy" {
		t.Fatalf("reap 1 s after start: unhealthy %d err %v state %s; want it marked unhealthy", u, err, state())
	}
	// Removal also counts from the start, not from the old heartbeat.
	if _, r, err := s.Reap(ctx); err != nil || r != 0 {
		t.Fatalf("removed %d (err %v) 1 s after start, want 0 before RemoveAfter", r, err)
	}
	*s.since = s.since.Add(-time.Minute)
	if _, r, err := s.Reap(ctx); err != nil || r != 1 {
		t.Fatalf("removed %d (err %v) after RemoveAfter, want 1", r, err)
	}
}
