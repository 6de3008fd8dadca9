package pgdb_test

import (
	"context"
	"testing"

	"github.com/maas-platform/maas/pkg/pgdb"
	"github.com/maas-platform/maas/pkg/pgdb/pgtest"
)

// TestMigrationRoundTrip applies every up, every down, and every up again on a real
// database, checking the schema is complete and then empty.
func TestMigrationRoundTrip(t *testing.T) {
	ctx := context.Background()
	pool, err := pgdb.Connect(ctx, pgtest.EmptyDatabase(t))
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	m, err := pgdb.NewMigrator(pool)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()

	tables := func() int {
		var n int
		if err := pool.QueryRow(ctx, `SELECT count(*) FROM information_schema.tables
			WHERE table_schema = 'public' AND table_name <> 'goose_db_version'`).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}
	for round := 1; round <= 2; round++ {
		n, err := m.Up(ctx)
		if err != nil {
			t.Fatalf("round %d up: %v", round, err)
		}
		if int64(n) != m.Latest() {
			t.Errorf("round %d: applied %d, want %d", round, n, m.Latest())
		}
		v, _ := m.Version(ctx)
		if v != m.Latest() {
			t.Errorf("version %d, want %d", v, m.Latest())
		}
		for _, table := range []string{"users", "roles", "user_roles", "api_keys", "user_quotas", "models", "model_aliases", "backends", "usage_records"} {
			var ok bool
			if err := pool.QueryRow(ctx, "SELECT to_regclass($1) IS NOT NULL", table).Scan(&ok); err != nil || !ok {
				t.Errorf("table %s missing after up (%v)", table, err)
			}
		}
		var roles int
		if err := pool.QueryRow(ctx, "SELECT count(*) FROM roles WHERE name IN ('admin','developer','user')").Scan(&roles); err != nil || roles != 3 {
			t.Errorf("seeded roles = %d (%v)", roles, err)
		}
		if round == 2 {
			break
		}
		down, err := m.Down(ctx, 0)
		if err != nil {
			t.Fatalf("down: %v", err)
		}
		if int64(down) != m.Latest() {
			t.Errorf("rolled back %d, want %d", down, m.Latest())
		}
		if n := tables(); n != 0 {
			t.Errorf("%d tables left after all downs", n)
		}
	}
	// One step down and up again.
	if n, err := m.Down(ctx, 1); err != nil || n != 1 {
		t.Fatalf("down 1: %d %v", n, err)
	}
	if n, err := m.Up(ctx); err != nil || n != 1 {
		t.Fatalf("up after down 1: %d %v", n, err)
	}
}

func TestNotifyOnChange(t *testing.T) {
	ctx := context.Background()
	pool, _ := pgtest.NewPool(t)
	conn, err := pool.Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Release()
	if _, err := conn.Exec(ctx, "LISTEN maas_changes"); err != nil {
		t.Fatal(err)
	}
	if _, err := pool.Exec(ctx, "INSERT INTO users (username, password_hash) VALUES ('notify_me', 'x')"); err != nil {
		t.Fatal(err)
	}
	n, err := conn.Conn().WaitForNotification(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if n.Channel != "maas_changes" || n.Payload == "" {
		t.Errorf("notification %+v", n)
	}
}
