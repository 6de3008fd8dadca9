package ledger

import (
	"bytes"
	"context"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/maas-platform/maas/pkg/pgdb/pgtest"
)

func TestCopyIntoUsageRecords(t *testing.T) {
	pool, _ := pgtest.NewPool(t)
	w, err := New(Options{DB: pool, DataDir: t.TempDir(), Batch: 100, FlushInterval: 10 * time.Millisecond, Buffer: 10000})
	if err != nil {
		t.Fatal(err)
	}
	for i := range 250 {
		r := rec(i)
		if i == 0 {
			r.UserID, r.KeyID, r.TTFT, r.Streamed, r.Estimated, r.Backend = 0, 0, 12*time.Millisecond, true, true, "b1"
		}
		w.Add(r)
	}
	if err := w.Stop(context.Background()); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	var n, tokens int64
	if err := pool.QueryRow(ctx, `SELECT count(*), sum(prompt_tokens + completion_tokens) FROM usage_records`).Scan(&n, &tokens); err != nil {
		t.Fatal(err)
	}
	if n != 250 || tokens != 250*7 {
		t.Errorf("rows %d tokens %d", n, tokens)
	}
	var uid, kid *int64
	var ttft *float64
	var streamed, estimated bool
	var backend string
	if err := pool.QueryRow(ctx, `SELECT user_id, api_key_id, ttft_ms, streamed, estimated, backend_id FROM usage_records WHERE request_id = 'r0'`).
		Scan(&uid, &kid, &ttft, &streamed, &estimated, &backend); err != nil {
		t.Fatal(err)
	}
	if uid != nil || kid != nil || ttft == nil || *ttft != 12 || !streamed || !estimated || backend != "b1" {
		t.Errorf("row r0: user %v key %v ttft %v streamed %v estimated %v backend %q", uid, kid, ttft, streamed, estimated, backend)
	}
	if w.Dropped() != 0 {
		t.Errorf("dropped %v", w.Dropped())
	}
}

func TestLastUsedAtOnRealDatabase(t *testing.T) {
	pool, _ := pgtest.NewPool(t)
	ctx := context.Background()
	t0 := time.Date(2026, 11, 27, 12, 0, 0, 0, time.UTC)
	at := func(s int) time.Time { return t0.Add(time.Duration(s) * time.Second) }
	var uid int64
	if err := pool.QueryRow(ctx, `INSERT INTO users (username, password_hash) VALUES ('alice', 'x') RETURNING id`).Scan(&uid); err != nil {
		t.Fatal(err)
	}
	// never: not used yet; older: used before t0; newer: used after the batch (another
	// gateway flushed later records first); idle: not in the batch.
	keys := map[string]int64{}
	for i, k := range []struct {
		name     string
		lastUsed *time.Time
	}{{"never", nil}, {"older", new(at(-60))}, {"newer", new(at(3600))}, {"idle", new(at(-5))}} {
		var id int64
		if err := pool.QueryRow(ctx, `INSERT INTO api_keys (user_id, name, prefix, key_hash, last_used_at)
			VALUES ($1, $2, 'sk-x', $3, $4) RETURNING id`, uid, k.name, bytes.Repeat([]byte{byte(i + 1)}, 32), k.lastUsed).Scan(&id); err != nil {
			t.Fatal(err)
		}
		keys[k.name] = id
	}
	version := func() int64 {
		t.Helper()
		var v int64
		if err := pool.QueryRow(ctx, `SELECT last_value FROM maas_change_version`).Scan(&v); err != nil {
			t.Fatal(err)
		}
		return v
	}
	before := version()

	w, err := New(Options{DB: pool, DataDir: t.TempDir(), Batch: 4, FlushInterval: 10 * time.Millisecond, Buffer: 1000})
	if err != nil {
		t.Fatal(err)
	}
	for i, r := range []struct {
		key string
		sec int
	}{{"never", 5}, {"older", 1}, {"never", 7}, {"newer", 2}, {"never", 6}, {"older", 3}, {"", 9}} {
		rc := rec(i)
		rc.UserID, rc.KeyID, rc.CreatedAt = uid, keys[r.key], at(r.sec) // "" → key 0: none
		w.Add(rc)
	}
	if err := w.Stop(ctx); err != nil {
		t.Fatal(err)
	}

	got := map[string]*time.Time{}
	rows, err := pool.Query(ctx, `SELECT name, last_used_at FROM api_keys`)
	if err != nil {
		t.Fatal(err)
	}
	for rows.Next() {
		var name string
		var ts *time.Time
		if err := rows.Scan(&name, &ts); err != nil {
			t.Fatal(err)
		}
		if ts != nil {
			*ts = ts.UTC()
		}
		got[name] = ts
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	want := map[string]*time.Time{"never": new(at(7)), "older": new(at(3)), "newer": new(at(3600)), "idle": new(at(-5))}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("last_used_at (-want +got):\n%s", diff)
	}
	var n int
	if err := pool.QueryRow(ctx, `SELECT count(*) FROM usage_records`).Scan(&n); err != nil || n != 7 {
		t.Errorf("usage_records: %d rows (%v), want 7", n, err)
	}
	// Setting last_used_at must not notify the gateways (no snapshot reload): the trigger
	// would have taken a version number.
	if v := version(); v != before {
		t.Errorf("change version %d → %d: writing last_used_at sent a NOTIFY", before, v)
	}
	// The check can fail: a change the gateways must see takes a version.
	if _, err := pool.Exec(ctx, `UPDATE api_keys SET revoked_at = now() WHERE id = $1`, keys["idle"]); err != nil {
		t.Fatal(err)
	}
	if v := version(); v == before {
		t.Error("revoking a key took no change version; the NOTIFY check above proves nothing")
	}
}

func TestConcurrentWritersShareKeys(t *testing.T) {
	// Two gateways flushing batches over the same keys at the same time: no batch fails,
	// every record is written once, and each key ends with its latest use. (A smoke test:
	// overlapping flushes here are too short to reliably provoke a lock-order deadlock.)
	pool, _ := pgtest.NewPool(t)
	ctx := context.Background()
	var uid int64
	if err := pool.QueryRow(ctx, `INSERT INTO users (username, password_hash) VALUES ('bob', 'x') RETURNING id`).Scan(&uid); err != nil {
		t.Fatal(err)
	}
	const nKeys = 20
	var ids []int64
	for i := range nKeys {
		var id int64
		if err := pool.QueryRow(ctx, `INSERT INTO api_keys (user_id, name, prefix, key_hash) VALUES ($1, 'k', 'sk-x', $2) RETURNING id`,
			uid, bytes.Repeat([]byte{byte(i + 1)}, 32)).Scan(&id); err != nil {
			t.Fatal(err)
		}
		ids = append(ids, id)
	}
	const each = 2000
	latest := time.Date(2026, 11, 27, 12, 0, 0, 0, time.UTC).Add(each * time.Millisecond)
	var writers []*Writer
	for range 2 {
		w, err := New(Options{DB: pool, DataDir: t.TempDir(), Batch: 50, FlushInterval: time.Millisecond, Buffer: 10 * each})
		if err != nil {
			t.Fatal(err)
		}
		writers = append(writers, w)
	}
	start := time.Now()
	var wg sync.WaitGroup
	for g, w := range writers {
		wg.Go(func() {
			for i := range each {
				r := rec(g*each + i)
				k := i % nKeys
				if g == 1 {
					k = nKeys - 1 - k // the other order
				}
				r.UserID, r.KeyID, r.CreatedAt = uid, ids[k], latest.Add(-time.Duration(each-i)*time.Millisecond)
				w.Add(r)
			}
		})
	}
	wg.Wait()
	for _, w := range writers {
		if err := w.Stop(ctx); err != nil {
			t.Fatal(err)
		}
		if n := (dtoCounter{}).read(w.errors); n != 0 {
			t.Errorf("%v failed batches", n)
		}
	}
	t.Logf("%d records over %d keys by 2 writers in %v", 2*each, nKeys, time.Since(start).Round(time.Millisecond))
	var rows, stale int
	if err := pool.QueryRow(ctx, `SELECT count(*) FROM usage_records`).Scan(&rows); err != nil {
		t.Fatal(err)
	}
	if err := pool.QueryRow(ctx, `SELECT count(*) FROM api_keys WHERE last_used_at IS NULL OR last_used_at < $1`,
		latest.Add(-time.Duration(nKeys+1)*time.Millisecond)).Scan(&stale); err != nil {
		t.Fatal(err)
	}
	if rows != 2*each || stale != 0 {
		t.Errorf("%d usage rows (want %d), %d keys without their latest use", rows, 2*each, stale)
	}
}

// TestWrittenOnceAcrossMonthsAndReplays writes a batch whose records fall in two monthly
// partitions (a nanosecond-precise time a hair before the boundary, the boundary itself)
// and in a month with no partition (the default one), then writes it again as a retry
// would and as the spool gives it back: the first write is a plain COPY, the others fall
// back to the staged insert and add nothing.
func TestWrittenOnceAcrossMonthsAndReplays(t *testing.T) {
	pool, _ := pgtest.NewPool(t)
	ctx := context.Background()
	if _, err := pool.Exec(ctx, `SELECT usage_records_add_month('2030-01-01Z'), usage_records_add_month('2030-02-01Z')`); err != nil {
		t.Fatal(err)
	}
	w := newWriter(t, Options{DB: pool, Batch: 100, FlushInterval: time.Hour, Buffer: 1000})
	defer w.Stop(ctx)
	boundary := time.Date(2030, 2, 1, 0, 0, 0, 0, time.UTC)
	recs := []Record{rec(1), rec(2), rec(3), rec(4)}
	recs[0].CreatedAt = boundary.Add(-500 * time.Nanosecond) // stored as 23:59:59.999999
	recs[1].CreatedAt = boundary
	recs[2].CreatedAt = time.Date(2041, 7, 1, 0, 0, 0, 0, time.FixedZone("x", 3600)) // no partition: default
	recs[3].CreatedAt = boundary.Add(time.Minute)
	recs[3].ClientRequestID = "client-4"

	if n, err := w.commit(ctx, recs, nil, nil); err != nil || n != 4 {
		t.Fatalf("first write: %d rows (%v), want 4", n, err)
	}
	if got := counter(w.staged); got != 0 {
		t.Errorf("first write staged %v times, want a plain COPY", got)
	}
	// A retry of the same batch, and the batch as the spool stores and replays it.
	var replay []Record
	for i := range recs {
		r, err := decodeRecord(encodeRecord(nil, &recs[i]))
		if err != nil {
			t.Fatal(err)
		}
		replay = append(replay, r)
	}
	for _, tc := range []struct {
		name  string
		batch []Record
		want  int64
	}{
		{"retry", recs, 0},
		{"spool replay", replay, 0},
		{"one old, one new", []Record{replay[2], rec(5)}, 1},
	} {
		if n, err := w.commit(ctx, tc.batch, nil, nil); err != nil || n != tc.want {
			t.Errorf("%s: %d rows (%v), want %d", tc.name, n, err, tc.want)
		}
	}
	if got := counter(w.staged); got != 3 {
		t.Errorf("staged %v batches, want 3", got)
	}
	if n, distinct := rows(t, pool); n != 5 || distinct != 5 {
		t.Errorf("%d rows (%d distinct), want 5", n, distinct)
	}
	checkMonthly(t, pool)
	for id, part := range map[string]string{"r1": "usage_records_y2030m01", "r2": "usage_records_y2030m02",
		"r3": "usage_records_default", "r4": "usage_records_y2030m02"} {
		var got string
		if err := pool.QueryRow(ctx, `SELECT tableoid::regclass::text FROM usage_records WHERE request_id = $1`, id).Scan(&got); err != nil || got != part {
			t.Errorf("%s in %q (%v), want %s", id, got, err, part)
		}
	}
}
