package ledger

import (
	"context"
	"testing"
	"time"

	"github.com/maas-platform/maas/pkg/pgdb/pgtest"
)

func TestCopyIntoUsageRecords(t *testing.T) {
	pool, _ := pgtest.NewPool(t)
	w, err := New(Options{DB: pool, Batch: 100, FlushInterval: 10 * time.Millisecond, Buffer: 10000})
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
