package usage

import (
	"context"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/maas-platform/maas/pkg/pgdb"
	"github.com/maas-platform/maas/pkg/pgdb/pgtest"
)

// partitionsVersion is the migration that partitions usage_records.
const partitionsVersion = 10

// ledgerRow is what the migration must keep of a usage record.
type ledgerRow struct {
	RequestID, ClientRequestID, Model string
	CreatedAt                         time.Time
	UserID, KeyID                     *int64
	Tokens                            int64
	TTFT                              *float64
}

func ledgerRows(t *testing.T, pool *pgxpool.Pool) []ledgerRow {
	t.Helper()
	rows, err := pool.Query(context.Background(), `SELECT request_id, client_request_id, model, created_at, user_id,
		api_key_id, prompt_tokens + completion_tokens, ttft_ms FROM usage_records ORDER BY request_id`,
		pgx.QueryExecModeSimpleProtocol) // no cached plan: the table changes between calls
	if err != nil {
		t.Fatal(err)
	}
	out, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (ledgerRow, error) {
		var l ledgerRow
		err := r.Scan(&l.RequestID, &l.ClientRequestID, &l.Model, &l.CreatedAt, &l.UserID, &l.KeyID, &l.Tokens, &l.TTFT)
		l.CreatedAt = l.CreatedAt.UTC()
		return l, err
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// TestMigrationKeepsTheLedger migrates a database whose ledger has rows (of several months,
// one a microsecond before a month boundary) to the partitioned table and back: every row
// survives both ways, each lands in its month's partition, and the key still refuses a
// duplicate.
func TestMigrationKeepsTheLedger(t *testing.T) {
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
	if _, err := m.Up(ctx); err != nil {
		t.Fatal(err)
	}
	for {
		v, err := m.Version(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if v < partitionsVersion {
			break
		}
		if _, err := m.Down(ctx, 1); err != nil {
			t.Fatal(err)
		}
	}
	var partitioned bool
	if err := pool.QueryRow(ctx, `SELECT relkind = 'p' FROM pg_class WHERE relname = 'usage_records'`).Scan(&partitioned); err != nil || partitioned {
		t.Fatalf("usage_records partitioned before migration %d (%v)", partitionsVersion, err)
	}

	boundary := time.Date(2026, 10, 1, 0, 0, 0, 0, time.UTC)
	if _, err := pool.Exec(ctx, `INSERT INTO usage_records (request_id, client_request_id, created_at, user_id, api_key_id, model,
		status, prompt_tokens, completion_tokens, ttft_ms) VALUES
		('r1', 'c1', $1, 1, 2, 'm1', 200, 3, 4, 12.5),
		('r2', '', $2, 1, 2, 'm1', 200, 5, 6, NULL),
		('r3', '', $3, NULL, NULL, 'm2', 401, 0, 0, NULL),
		('r4', 'c4', $4, 7, 8, 'm3', 200, 1, 1, 1)`,
		boundary.Add(-time.Microsecond), boundary, time.Date(2025, 2, 14, 9, 0, 0, 0, time.UTC), time.Now().UTC().Truncate(time.Microsecond)); err != nil {
		t.Fatal(err)
	}
	want := ledgerRows(t, pool)

	if _, err := m.Up(ctx); err != nil {
		t.Fatalf("up with rows: %v", err)
	}
	if diff := cmp.Diff(want, ledgerRows(t, pool)); diff != "" {
		t.Errorf("rows after up (-before +after):\n%s", diff)
	}
	for id, part := range map[string]string{"r1": "usage_records_y2026m09", "r2": "usage_records_y2026m10",
		"r3": "usage_records_y2025m02", "r4": "usage_records_" + time.Now().UTC().Format("y2006m01")} {
		if got := partitionOf(t, pool, id); got != part {
			t.Errorf("%s in %s, want %s", id, got, part)
		}
	}
	if _, err := pool.Exec(ctx, `INSERT INTO usage_records (request_id, created_at, model, status) VALUES ('r2', $1, 'm', 200)`,
		boundary); err == nil {
		t.Error("a duplicate of r2 was accepted after up")
	}
	// The monthly sums start from the rows there were.
	type sum struct {
		User, Key        int64
		Month            string
		Tokens, Requests int64
	}
	srows, err := pool.Query(ctx, `SELECT user_id, api_key_id, to_char(month, 'YYYY-MM'), tokens, requests FROM usage_monthly
		ORDER BY 1, 2, 3`)
	if err != nil {
		t.Fatal(err)
	}
	sums, err := pgx.CollectRows(srows, pgx.RowToStructByPos[sum])
	if err != nil {
		t.Fatal(err)
	}
	wantSums := []sum{{0, 0, "2025-02", 0, 1}, {1, 2, "2026-09", 7, 1}, {1, 2, "2026-10", 11, 1}, {7, 8, time.Now().UTC().Format("2006-01"), 2, 1}}
	if diff := cmp.Diff(wantSums, sums); diff != "" {
		t.Errorf("usage_monthly after up (-want +got):\n%s", diff)
	}

	if _, err := m.Down(ctx, int(m.Latest()-partitionsVersion+1)); err != nil {
		t.Fatalf("down with rows: %v", err)
	}
	if diff := cmp.Diff(want, ledgerRows(t, pool)); diff != "" {
		t.Errorf("rows after down (-before +after):\n%s", diff)
	}
	// Ids numbered anew, in time order, and the sequence goes on from them.
	var ids []int64
	rows, err := pool.Query(ctx, `SELECT id FROM usage_records ORDER BY created_at`)
	if err != nil {
		t.Fatal(err)
	}
	if ids, err = pgx.CollectRows(rows, pgx.RowTo[int64]); err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]int64{1, 2, 3, 4}, ids); diff != "" {
		t.Errorf("ids after down (-want +got):\n%s", diff)
	}
	var next int64
	if err := pool.QueryRow(ctx, `INSERT INTO usage_records (request_id, created_at, model, status) VALUES ('r5', now(), 'm', 200)
		RETURNING id`).Scan(&next); err != nil || next != 5 {
		t.Errorf("next id %d (%v), want 5", next, err)
	}
	if _, err := pool.Exec(ctx, `INSERT INTO usage_records (request_id, created_at, model, status) VALUES ('r1', now(), 'm', 200)`); err == nil {
		t.Error("a duplicate request id was accepted after down")
	}
	if _, err := m.Up(ctx); err != nil {
		t.Fatalf("up again: %v", err)
	}
}
