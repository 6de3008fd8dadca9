package server

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/maas-platform/maas/gateway/internal/admit"
	"github.com/maas-platform/maas/gateway/internal/proxy"
	"github.com/maas-platform/maas/gateway/internal/snapshot"
)

// quota adapts admit.Limiter to proxy.Quota: every request is charged to its key and to
// the key's user (to the user alone for a request a platform service made for the user:
// its key has ID 0).
type quota struct{ l *admit.Limiter }

func (q quota) Admit(ctx context.Context, k *snapshot.Key, tokens int64) (proxy.Ticket, error) {
	uq := k.User.Quota
	subjects := [2]admit.Subject{
		{Scope: admit.ScopeKey, ID: k.ID, Limits: admit.Limits{RequestsPerMinute: k.RequestsPerMinute, TokensPerMinute: k.TokensPerMinute}},
		{Scope: admit.ScopeUser, ID: k.UserID, Limits: admit.Limits{RequestsPerMinute: uq.RequestsPerMinute,
			TokensPerMinute: uq.TokensPerMinute, MaxConcurrent: uq.MaxConcurrent, MonthlyTokenBudget: uq.MonthlyTokenBudget}},
	}
	subs := subjects[:]
	if k.ID == 0 {
		subs = subjects[1:] // a platform service acting for the user: no key, the user's limits
	}
	t, err := q.l.Admit(ctx, admit.Request{Subjects: subs, Tokens: tokens})
	if err != nil {
		return nil, err
	}
	return t, nil
}

// budgetUsed sums a subject's usage since monthStart (the first instant of a UTC month),
// to seed its budget counter, from usage_monthly (migration 00010), which the ledger's
// writer keeps in step with usage_records: one row per user, key and month. A key's rows
// all carry the key's user, so a key is found under its user.
func budgetUsed(pool *pgxpool.Pool) func(ctx context.Context, scope string, id int64, monthStart time.Time) (int64, error) {
	return func(ctx context.Context, scope string, id int64, monthStart time.Time) (int64, error) {
		where := `user_id = $1`
		if scope == admit.ScopeKey {
			where = `user_id = (SELECT user_id FROM api_keys WHERE id = $1) AND api_key_id = $1`
		}
		var n int64
		err := pool.QueryRow(ctx, `SELECT COALESCE(SUM(tokens), 0)::bigint FROM usage_monthly
			WHERE `+where+` AND month >= ($2::timestamptz AT TIME ZONE 'UTC')::date`, id, monthStart).Scan(&n)
		if err != nil {
			return 0, fmt.Errorf("sum usage of %s %d: %w", scope, id, err)
		}
		return n, nil
	}
}
