package usage

import (
	"context"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/maas-platform/maas/pkg/pgdb/pgtest"
)

// insertAt writes one usage record per time, request ids prefixed with prefix.
func insertAt(t *testing.T, pool *pgxpool.Pool, prefix string, ats ...time.Time) {
	t.Helper()
	for i, at := range ats {
		// As the ledger writes: the record and its month's sums.
		if _, err := pool.Exec(context.Background(), `WITH r AS (INSERT INTO usage_records (request_id, created_at, user_id,
			api_key_id, model, status, prompt_tokens, completion_tokens) VALUES ($1, $2, 1, 2, 'm', 200, 3, 4) RETURNING created_at)
			INSERT INTO usage_monthly AS m (user_id, api_key_id, month, tokens, requests)
			SELECT 1, 2, date_trunc('month', created_at AT TIME ZONE 'UTC')::date, 7, 1 FROM r
			ON CONFLICT (user_id, api_key_id, month) DO UPDATE SET tokens = m.tokens + 7, requests = m.requests + 1`,
			prefix+"-"+string(rune('a'+i)), at); err != nil {
			t.Fatal(err)
		}
	}
}

// partitionOf returns the partition holding the record request id.
func partitionOf(t *testing.T, pool *pgxpool.Pool, id string) string {
	t.Helper()
	var name string
	if err := pool.QueryRow(context.Background(), `SELECT tableoid::regclass::text FROM usage_records WHERE request_id = $1`, id).
		Scan(&name); err != nil {
		t.Fatalf("record %s: %v", id, err)
	}
	return name
}

// monthPartitions lists usage_records' month partitions, in name order.
func monthPartitions(t *testing.T, pool *pgxpool.Pool) []string {
	t.Helper()
	rows, err := pool.Query(context.Background(), `SELECT c.relname FROM pg_inherits AS i JOIN pg_class AS c ON c.oid = i.inhrelid
		WHERE i.inhparent = 'usage_records'::regclass AND c.relname <> 'usage_records_default' ORDER BY c.relname`)
	if err != nil {
		t.Fatal(err)
	}
	names, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		t.Fatal(err)
	}
	return names
}

func TestMaintainCreatesMonthsAheadAndMovesTheirRows(t *testing.T) {
	pool, _ := pgtest.NewPool(t)
	ctx := context.Background()
	m, err := New(pool, Options{Ahead: 2})
	if err != nil {
		t.Fatal(err)
	}
	// A month far from the migration's: no partition yet, so its rows go to the default
	// partition, and no write is refused.
	now := time.Date(2031, 1, 31, 23, 59, 59, 999999000, time.UTC)
	feb := time.Date(2031, 2, 1, 0, 0, 0, 0, time.UTC)
	insertAt(t, pool, "early", now, feb, feb.Add(27*24*time.Hour))
	if got := partitionOf(t, pool, "early-b"); got != "usage_records_default" {
		t.Fatalf("a row of a month without partition is in %s", got)
	}

	p, err := m.Maintain(ctx, now)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"usage_records_y2031m01", "usage_records_y2031m02", "usage_records_y2031m03"}
	if diff := cmp.Diff(want, p.Ensured); diff != "" {
		t.Errorf("ensured (-want +got):\n%s", diff)
	}
	// The rows moved to their month's partition, across the boundary to the microsecond.
	for id, part := range map[string]string{"early-a": "usage_records_y2031m01", "early-b": "usage_records_y2031m02",
		"early-c": "usage_records_y2031m02"} {
		if got := partitionOf(t, pool, id); got != part {
			t.Errorf("%s in %s, want %s", id, got, part)
		}
	}
	var inDefault int
	if err := pool.QueryRow(ctx, `SELECT count(*) FROM usage_records_default`).Scan(&inDefault); err != nil || inDefault != 0 {
		t.Errorf("default partition: %d rows (%v), want 0", inDefault, err)
	}
	// The partitions carry the table's indexes: the key still refuses a duplicate.
	if _, err := pool.Exec(ctx, `INSERT INTO usage_records (request_id, created_at, model, status) VALUES ('early-b', $1, 'm', 200)`,
		feb); err == nil || !strings.Contains(err.Error(), "23505") {
		t.Errorf("duplicate record in a created partition: %v, want a unique violation", err)
	}

	// A second pass changes nothing.
	before := monthPartitions(t, pool)
	if _, err := m.Maintain(ctx, now); err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(before, monthPartitions(t, pool)); diff != "" {
		t.Errorf("second pass changed the partitions (-before +after):\n%s", diff)
	}
}

func TestMaintainAppliesTheRetention(t *testing.T) {
	pool, _ := pgtest.NewPool(t)
	ctx := context.Background()
	// Months 2031-01 to 2031-06 with a row each, and a row of 2030-12 in the default
	// partition (its month never had a partition).
	insertAt(t, pool, "dec", time.Date(2030, 12, 31, 12, 0, 0, 0, time.UTC))
	for mo := time.January; mo <= time.June; mo++ {
		at := time.Date(2031, mo, 1, 0, 0, 0, 0, time.UTC)
		if _, err := pool.Exec(ctx, `SELECT usage_records_add_month($1)`, at); err != nil {
			t.Fatal(err)
		}
		insertAt(t, pool, at.Format("2006-01"), at, at.AddDate(0, 1, 0).Add(-time.Microsecond))
	}
	m, err := New(pool, Options{RetentionMonths: 2})
	if err != nil {
		t.Fatal(err)
	}
	p, err := m.Maintain(ctx, time.Date(2031, 6, 15, 0, 0, 0, 0, time.UTC))
	if err != nil {
		t.Fatal(err)
	}
	// Kept: June and the two months before it (and the months ahead).
	for _, gone := range []string{"usage_records_y2031m01", "usage_records_y2031m02", "usage_records_y2031m03"} {
		if !slices.Contains(p.Dropped, gone) {
			t.Errorf("%s not dropped (dropped %v)", gone, p.Dropped)
		}
	}
	if p.Purged != 1 {
		t.Errorf("purged %d rows of the default partition, want 1", p.Purged)
	}
	for _, name := range monthPartitions(t, pool) {
		if start, ok := partitionMonth(name); !ok || start.Before(time.Date(2031, 4, 1, 0, 0, 0, 0, time.UTC)) {
			t.Errorf("partition %s kept", name)
		}
	}
	var months []string
	rows, err := pool.Query(ctx, `SELECT DISTINCT to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM') FROM usage_records ORDER BY 1`)
	if err != nil {
		t.Fatal(err)
	}
	if months, err = pgx.CollectRows(rows, pgx.RowTo[string]); err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]string{"2031-04", "2031-05", "2031-06"}, months); diff != "" {
		t.Errorf("months left (-want +got):\n%s", diff)
	}
	var n int
	if err := pool.QueryRow(ctx, `SELECT count(*) FROM usage_records`).Scan(&n); err != nil || n != 6 {
		t.Errorf("%d rows left (%v), want 6", n, err)
	}
	if err := pool.QueryRow(ctx, `SELECT count(*) FROM usage_monthly WHERE month < '2031-04-01'`).Scan(&n); err != nil || n != 0 {
		t.Errorf("%d monthly sums of dropped months left (%v), want 0", n, err)
	}
	if err := pool.QueryRow(ctx, `SELECT count(*) FROM usage_monthly`).Scan(&n); err != nil || n != 3 {
		t.Errorf("%d monthly sums left (%v), want 3 (April to June)", n, err)
	}
}

func TestRetentionZeroKeepsEverything(t *testing.T) {
	pool, _ := pgtest.NewPool(t)
	ctx := context.Background()
	old := time.Date(2020, 3, 1, 0, 0, 0, 0, time.UTC)
	if _, err := pool.Exec(ctx, `SELECT usage_records_add_month($1)`, old); err != nil {
		t.Fatal(err)
	}
	insertAt(t, pool, "old", old)
	m, err := New(pool, Options{})
	if err != nil {
		t.Fatal(err)
	}
	p, err := m.Maintain(ctx, time.Date(2031, 6, 15, 0, 0, 0, 0, time.UTC))
	if err != nil || len(p.Dropped) != 0 {
		t.Fatalf("dropped %v (%v)", p.Dropped, err)
	}
	if got := partitionOf(t, pool, "old-a"); got != "usage_records_y2020m03" {
		t.Errorf("old row in %s", got)
	}
}

func TestOptions(t *testing.T) {
	for _, tc := range []struct {
		o    Options
		want string
	}{
		{Options{RetentionMonths: -1}, "MAAS_USAGE_RETENTION_MONTHS"},
		{Options{Interval: -time.Second}, "MAAS_USAGE_MAINTENANCE_INTERVAL"},
		{Options{Ahead: -1}, "Ahead"},
		{DefaultOptions(), ""},
	} {
		err := tc.o.Validate()
		if (err == nil) != (tc.want == "") || (err != nil && !strings.Contains(err.Error(), tc.want)) {
			t.Errorf("%+v: %v, want %q", tc.o, err, tc.want)
		}
	}
	for name, want := range map[string]bool{"usage_records_y2031m04": true, "usage_records_y2031m13": false,
		"usage_records_default": false, "usage_records_y2031m4": false} {
		if _, ok := partitionMonth(name); ok != want {
			t.Errorf("partitionMonth(%q) ok = %v", name, ok)
		}
	}
}

func TestRunMaintainsAtOnceAndStops(t *testing.T) {
	pool, _ := pgtest.NewPool(t)
	ctx := context.Background()
	// The migration made this month's partition and the next two; a fourth month ahead
	// is made by the first pass, which runs at once.
	far := monthStart(time.Now()).AddDate(0, 3, 0)
	name := "usage_records_" + far.Format("y2006m01")
	stop, err := Start(pool, Options{Ahead: 3, Interval: time.Hour}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer stop()
	deadline := time.Now().Add(10 * time.Second)
	for {
		var ok bool
		if err := pool.QueryRow(ctx, `SELECT to_regclass($1) IS NOT NULL`, name).Scan(&ok); err != nil {
			t.Fatal(err)
		}
		if ok {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s not created by the first pass", name)
		}
		time.Sleep(10 * time.Millisecond)
	}
	if _, err := Start(pool, Options{RetentionMonths: -1}, nil); err == nil {
		t.Error("Start accepted a negative retention")
	}
}

// TestRetentionGivesUpBehindALongReader holds a reader's lock on usage_records (a report
// running): the pass that would drop a partition gives up after LockTimeout instead of
// queueing the ledger's writes behind it, and succeeds once the reader is done.
func TestRetentionGivesUpBehindALongReader(t *testing.T) {
	pool, _ := pgtest.NewPool(t)
	ctx := context.Background()
	old := time.Date(2020, 3, 1, 0, 0, 0, 0, time.UTC)
	if _, err := pool.Exec(ctx, `SELECT usage_records_add_month($1)`, old); err != nil {
		t.Fatal(err)
	}
	reader, err := pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer reader.Rollback(ctx)
	if _, err := reader.Exec(ctx, `SELECT count(*) FROM usage_records`); err != nil {
		t.Fatal(err)
	}
	m, err := New(pool, Options{RetentionMonths: 12, LockTimeout: 200 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	wctx, cancel := context.WithTimeout(ctx, 10*time.Second) // without the lock timeout, the pass would wait for ever
	defer cancel()
	if _, err := m.Maintain(wctx, time.Now()); err == nil || !strings.Contains(err.Error(), "55P03") {
		t.Fatalf("pass behind a reader: %v, want a lock timeout (55P03)", err)
	}
	if waited := time.Since(start); waited > 5*time.Second {
		t.Errorf("the pass waited %v behind the reader", waited)
	}
	// Writes go on meanwhile (nothing is left queued behind the pass).
	insertAt(t, pool, "during", time.Now())
	if err := reader.Rollback(ctx); err != nil {
		t.Fatal(err)
	}
	p, err := m.Maintain(ctx, time.Now())
	if err != nil || !slices.Contains(p.Dropped, "usage_records_y2020m03") {
		t.Errorf("pass after the reader: dropped %v (%v), want usage_records_y2020m03", p.Dropped, err)
	}
}
