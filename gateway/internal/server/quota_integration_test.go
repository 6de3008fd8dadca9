package server

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/maas-platform/maas/gateway/internal/admit"
	"github.com/maas-platform/maas/gateway/internal/ledger"
	"github.com/maas-platform/maas/pkg/pgdb/pgtest"
)

// TestBudgetUsedSumsTheMonth checks the sums that seed monthly budgets, by user and by key,
// of records written by the ledger (usage_monthly, kept with usage_records): a record a
// microsecond before the month is not counted, one at its first instant is, other users'
// and keys' are not, and a month whose records sit in the default partition sums the same.
func TestBudgetUsedSumsTheMonth(t *testing.T) {
	pool, _ := pgtest.NewPool(t)
	ctx := context.Background()
	var u1, u2 int64
	if err := pool.QueryRow(ctx, `INSERT INTO users (username, password_hash) VALUES ('budget1', 'x'), ('budget2', 'x') RETURNING id`).Scan(&u1); err != nil {
		t.Fatal(err)
	}
	if err := pool.QueryRow(ctx, `SELECT id FROM users WHERE username = 'budget2'`).Scan(&u2); err != nil {
		t.Fatal(err)
	}
	key := func(user int64, n int) int64 {
		var id int64
		if err := pool.QueryRow(ctx, `INSERT INTO api_keys (user_id, name, prefix, key_hash) VALUES ($1, 'k', 'sk-x', $2) RETURNING id`,
			user, []byte(fmt.Sprintf("%032d", n))).Scan(&id); err != nil {
			t.Fatal(err)
		}
		return id
	}
	k1, k2, k3 := key(u1, 1), key(u1, 2), key(u2, 3)
	seq := 0
	for _, month := range []time.Time{
		time.Date(2030, 3, 1, 0, 0, 0, 0, time.UTC), // with its partitions
		time.Date(2042, 3, 1, 0, 0, 0, 0, time.UTC), // without: the default partition
	} {
		t.Run(month.Format("2006-01"), func(t *testing.T) {
			if month.Year() == 2030 {
				if _, err := pool.Exec(ctx, `SELECT usage_records_add_month($1), usage_records_add_month($2)`, month.AddDate(0, -1, 0), month); err != nil {
					t.Fatal(err)
				}
			}
			// Written by the ledger, as the gateway writes them (the sums are kept with
			// the records).
			w, err := ledger.New(ledger.Options{DB: pool, DataDir: t.TempDir(), Batch: 100, FlushInterval: time.Millisecond, Buffer: 1000})
			if err != nil {
				t.Fatal(err)
			}
			add := func(user, key int64, at time.Time, tokens int64) {
				seq++
				w.Add(ledger.Record{RequestID: fmt.Sprint("r", seq), CreatedAt: at, UserID: user, KeyID: key, Model: "m", Status: 200,
					PromptTokens: tokens - 1, CompletionTokens: 1, TTFT: -1})
			}
			add(u1, k1, month.Add(-time.Microsecond), 100)
			add(u1, k1, month, 10)
			add(u1, k2, month.AddDate(0, 1, 0).Add(-time.Microsecond), 20)
			add(u2, k3, month.Add(time.Hour), 40)
			if err := w.Stop(ctx); err != nil {
				t.Fatal(err)
			}
			var n int
			if err := pool.QueryRow(ctx, `SELECT count(*) FROM usage_records WHERE created_at >= $1::timestamptz - interval '1 month'`, month).Scan(&n); err != nil || n != 4 {
				t.Fatalf("%d records written (%v), want 4", n, err)
			}
			sum := budgetUsed(pool)
			for _, tc := range []struct {
				scope string
				id    int64
				want  int64
			}{
				{admit.ScopeUser, u1, 30}, {admit.ScopeUser, u2, 40},
				{admit.ScopeKey, k1, 10}, {admit.ScopeKey, k2, 20}, {admit.ScopeKey, k3, 40},
				{admit.ScopeKey, 1 << 40, 0}, // no such key
			} {
				got, err := sum(ctx, tc.scope, tc.id, month)
				if err != nil || got != tc.want {
					t.Errorf("%s %d: %d (%v), want %d", tc.scope, tc.id, got, err, tc.want)
				}
			}
			// The month after sees none of it.
			if got, err := sum(ctx, admit.ScopeUser, u1, month.AddDate(0, 1, 0)); err != nil || got != 0 {
				t.Errorf("next month: %d (%v), want 0", got, err)
			}
		})
	}
}
