package ledger

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// DB is what the Writer needs of a pool (pgxpool.Pool implements it): each batch is one
// transaction.
type DB interface {
	Begin(ctx context.Context) (pgx.Tx, error)
}

// columns are usage_records' columns the ledger writes, in copy order.
var columns = []string{"request_id", "created_at", "user_id", "api_key_id", "model", "backend_id", "endpoint",
	"status", "prompt_tokens", "completion_tokens", "estimated", "streamed", "ttft_ms", "duration_ms", "error_type",
	"client_request_id"}

// createStage makes the session's staging table once per connection: rows are COPYed
// there, then inserted into usage_records with ON CONFLICT, and vanish at commit. Only a
// batch whose plain COPY met a request id already written takes this path.
const createStage = `CREATE TEMP TABLE IF NOT EXISTS usage_stage (
    request_id text, created_at timestamptz, user_id bigint, api_key_id bigint, model text, backend_id text,
    endpoint text, status integer, prompt_tokens integer, completion_tokens integer, estimated boolean,
    streamed boolean, ttft_ms double precision, duration_ms double precision, error_type text,
    client_request_id text) ON COMMIT DELETE ROWS`

// insertStaged moves the staged rows into the ledger; a record already written (a
// replayed or retried batch: same request id, same created_at, see migration 00010) is
// skipped, so a batch written twice counts once. The records it did insert are added to
// usage_monthly (in user, key, month order, like addMonthly) and counted.
const insertStaged = `WITH ins AS (
    INSERT INTO usage_records (request_id, created_at, user_id, api_key_id, model, backend_id,
        endpoint, status, prompt_tokens, completion_tokens, estimated, streamed, ttft_ms, duration_ms, error_type,
        client_request_id)
    SELECT request_id, created_at, user_id, api_key_id, model, backend_id, endpoint, status, prompt_tokens,
        completion_tokens, estimated, streamed, ttft_ms, duration_ms, error_type, client_request_id
    FROM usage_stage
    ON CONFLICT (request_id, created_at) DO NOTHING
    RETURNING created_at, user_id, api_key_id, prompt_tokens, completion_tokens
), sums AS (
    INSERT INTO usage_monthly AS m (user_id, api_key_id, month, tokens, requests)
    SELECT COALESCE(user_id, 0), COALESCE(api_key_id, 0), date_trunc('month', created_at AT TIME ZONE 'UTC')::date,
        sum(prompt_tokens::bigint + completion_tokens), count(*)
    FROM ins GROUP BY 1, 2, 3 ORDER BY 1, 2, 3
    ON CONFLICT (user_id, api_key_id, month) DO UPDATE
    SET tokens = m.tokens + EXCLUDED.tokens, requests = m.requests + EXCLUDED.requests
)
SELECT count(*) FROM ins`

// addMonthly adds a batch's tokens and requests to usage_monthly: $1 user ids, $2 key ids
// (0: none), $3 months (the first day of each UTC month), $4 tokens, $5 requests, sorted
// by user, key, month so that gateways adding to the same rows lock them in one order.
const addMonthly = `INSERT INTO usage_monthly AS m (user_id, api_key_id, month, tokens, requests)
SELECT * FROM unnest($1::bigint[], $2::bigint[], $3::date[], $4::bigint[], $5::bigint[])
ON CONFLICT (user_id, api_key_id, month) DO UPDATE
SET tokens = m.tokens + EXCLUDED.tokens, requests = m.requests + EXCLUDED.requests`

// touchKeys moves api_keys.last_used_at forward: $1 are key ids (sorted, distinct), $2
// the latest request time of each. Rows are locked in id order first, so that gateways
// flushing overlapping keys at the same time wait for each other instead of deadlocking;
// rows already as recent are neither locked nor written. Only last_used_at is set: the
// api_keys NOTIFY trigger ignores that column, so this causes no snapshot reload.
const touchKeys = `WITH used AS (
    SELECT k.id, t.at
    FROM unnest($1::bigint[], $2::timestamptz[]) AS t (id, at)
    JOIN api_keys AS k ON k.id = t.id
    WHERE k.last_used_at IS NULL OR k.last_used_at < t.at
    ORDER BY k.id
    FOR NO KEY UPDATE OF k
)
UPDATE api_keys AS k SET last_used_at = greatest(k.last_used_at, used.at)
FROM used WHERE k.id = used.id`

// batchTimeout bounds one transaction.
const batchTimeout = 10 * time.Second

// rowSource feeds recs to COPY.
func rowSource(recs []Record) pgx.CopyFromSource {
	i := 0
	return pgx.CopyFromFunc(func() ([]any, error) {
		if i >= len(recs) {
			return nil, nil
		}
		r := &recs[i]
		i++
		var user, key, ttft any
		if r.UserID != 0 {
			user = r.UserID
		}
		if r.KeyID != 0 {
			key = r.KeyID
		}
		if r.TTFT >= 0 {
			ttft = float64(r.TTFT) / float64(time.Millisecond)
		}
		return []any{r.RequestID, r.CreatedAt, user, key, r.Model, r.Backend, r.Endpoint, int32(r.Status),
			int32(r.PromptTokens), int32(r.CompletionTokens), r.Estimated, r.Streamed, ttft,
			float64(r.Duration) / float64(time.Millisecond), r.ErrorType, r.ClientRequestID}, nil
	})
}

// commit writes recs and their keys' last_used_at in one transaction and returns how many
// rows were new. before runs just before COMMIT is sent, after just after it succeeded
// (the crash accounting of the Writer).
//
// A batch is first COPYed straight into usage_records: the common case, a batch none of
// whose request ids is written yet, costs PostgreSQL a plain COPY. When that COPY meets a
// request id already written (unique_violation: a batch retried after a lost COMMIT
// acknowledgement, or replayed from the spool), the transaction is rolled back and the
// batch written again through the staging table with ON CONFLICT DO NOTHING, which skips
// what is already there. Either way the batch is written whole or not at all.
func (w *Writer) commit(ctx context.Context, recs []Record, before func(), after func(int64)) (int64, error) {
	start := time.Now()
	ctx, cancel := context.WithTimeout(ctx, batchTimeout)
	defer cancel()
	n, err := w.commitTx(ctx, recs, false, before, after)
	if isUniqueViolation(err) {
		w.staged.Inc()
		n, err = w.commitTx(ctx, recs, true, before, after)
	}
	if err != nil {
		return 0, err
	}
	w.flushes.Observe(time.Since(start).Seconds())
	return n, nil
}

// commitTx is one attempt of commit: a plain COPY, or with staged the COPY into the
// staging table and the INSERT ... ON CONFLICT DO NOTHING.
func (w *Writer) commitTx(ctx context.Context, recs []Record, staged bool, before func(), after func(int64)) (int64, error) {
	tx, err := w.o.DB.Begin(ctx)
	if err != nil {
		return 0, fmt.Errorf("begin usage batch: %w", err)
	}
	defer func() { _ = tx.Rollback(ctx) }() // no-op once committed
	var n int64
	if staged {
		if _, err := tx.Exec(ctx, createStage); err != nil {
			return 0, fmt.Errorf("create usage staging table: %w", err)
		}
		if _, err := tx.CopyFrom(ctx, pgx.Identifier{"usage_stage"}, columns, rowSource(recs)); err != nil {
			return 0, fmt.Errorf("copy usage records to the staging table: %w", err)
		}
		if err := tx.QueryRow(ctx, insertStaged).Scan(&n); err != nil {
			return 0, fmt.Errorf("insert usage records: %w", err)
		}
	} else {
		if n, err = tx.CopyFrom(ctx, pgx.Identifier{"usage_records"}, columns, rowSource(recs)); err != nil {
			return 0, fmt.Errorf("copy usage records: %w", err)
		}
		m := w.monthly(recs)
		if _, err := tx.Exec(ctx, addMonthly, m.users, m.keys, m.months, m.tokens, m.requests); err != nil {
			return 0, fmt.Errorf("add %d monthly usage sums: %w", len(m.months), err)
		}
	}
	if ids, ats := w.keysUsed(recs); len(ids) > 0 {
		if _, err := tx.Exec(ctx, touchKeys, ids, ats); err != nil {
			return 0, fmt.Errorf("set last_used_at of %d keys: %w", len(ids), err)
		}
	}
	if before != nil {
		before()
	}
	if err := tx.Commit(ctx); err != nil {
		return 0, fmt.Errorf("commit usage batch: %w", err)
	}
	if after != nil {
		after(n)
	}
	return n, nil
}

// isUniqueViolation reports whether err is PostgreSQL's unique_violation (23505): the only
// unique index of usage_records is its key, so the batch holds a record already written.
func isUniqueViolation(err error) bool {
	var pe *pgconn.PgError
	return errors.As(err, &pe) && pe.Code == "23505"
}

// permanent reports whether err is about the data of the batch, so that retrying the same
// records can never succeed: PostgreSQL's data exceptions (SQLSTATE class 22), integrity
// violations (23) and program limits (54). Everything else (connection errors, timeouts,
// a missing table, a server shutting down) is transient: the batch is kept and retried,
// since dead-lettering records for a fault of the database would lose them all.
func permanent(err error) bool {
	var pe *pgconn.PgError
	if !errors.As(err, &pe) || len(pe.Code) < 2 {
		return false
	}
	switch pe.Code[:2] {
	case "22", "23", "54":
		return true
	}
	return false
}

// keysUsed returns the keys of recs, sorted by id, with the latest CreatedAt of each.
// The slices are the Writer's scratch, valid until the next call (one batch is written
// at a time).
func (w *Writer) keysUsed(recs []Record) ([]int64, []time.Time) {
	if w.lastUsed == nil {
		w.lastUsed = map[int64]time.Time{}
	}
	clear(w.lastUsed)
	for i := range recs {
		r := &recs[i]
		if r.KeyID == 0 {
			continue
		}
		if at, ok := w.lastUsed[r.KeyID]; !ok || r.CreatedAt.After(at) {
			w.lastUsed[r.KeyID] = r.CreatedAt
		}
	}
	w.keyIDs, w.keyTimes = w.keyIDs[:0], w.keyTimes[:0]
	for id := range w.lastUsed {
		w.keyIDs = append(w.keyIDs, id)
	}
	slices.Sort(w.keyIDs)
	for _, id := range w.keyIDs {
		w.keyTimes = append(w.keyTimes, w.lastUsed[id])
	}
	return w.keyIDs, w.keyTimes
}

// monthlySums is a batch's usage_monthly rows, as parallel columns for addMonthly.
type monthlySums struct {
	months                        []time.Time
	users, keys, tokens, requests []int64
}

// monthKey is a usage_monthly row's key.
type monthKey struct {
	month     time.Time
	user, key int64
}

// monthly sums recs by user, key and UTC month, sorted in that order. The slices are the
// Writer's scratch, valid until the next call (one batch is written at a time).
func (w *Writer) monthly(recs []Record) monthlySums {
	if w.sums == nil {
		w.sums = map[monthKey][2]int64{}
	}
	clear(w.sums)
	for i := range recs {
		r := &recs[i]
		t := r.CreatedAt.UTC()
		k := monthKey{time.Date(t.Year(), t.Month(), 1, 0, 0, 0, 0, time.UTC), r.UserID, r.KeyID}
		v := w.sums[k]
		w.sums[k] = [2]int64{v[0] + r.PromptTokens + r.CompletionTokens, v[1] + 1}
	}
	keys := w.sumKeys[:0]
	for k := range w.sums {
		keys = append(keys, k)
	}
	slices.SortFunc(keys, func(a, b monthKey) int {
		if c := cmp.Compare(a.user, b.user); c != 0 {
			return c
		}
		if c := cmp.Compare(a.key, b.key); c != 0 {
			return c
		}
		return a.month.Compare(b.month)
	})
	w.sumKeys = keys
	m := &w.sumCols
	m.months, m.users, m.keys, m.tokens, m.requests = m.months[:0], m.users[:0], m.keys[:0], m.tokens[:0], m.requests[:0]
	for _, k := range keys {
		v := w.sums[k]
		m.months, m.users, m.keys = append(m.months, k.month), append(m.users, k.user), append(m.keys, k.key)
		m.tokens, m.requests = append(m.tokens, v[0]), append(m.requests, v[1])
	}
	return *m
}
