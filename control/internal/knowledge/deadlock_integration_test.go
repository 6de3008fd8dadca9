package knowledge

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/riverqueue/river"
	"github.com/riverqueue/river/rivertype"

	"github.com/maas-platform/maas/control/internal/vectorindex"
	"github.com/maas-platform/maas/pkg/apierr"
	"github.com/maas-platform/maas/pkg/pgdb/pgtest"
)

// nopIndex is an index that keeps nothing.
type nopIndex struct{}

func (nopIndex) Upsert(context.Context, []vectorindex.Chunk) error { return nil }
func (nopIndex) SetAttributes(context.Context, string, string, map[string]any) error {
	return nil
}
func (nopIndex) DeleteFile(context.Context, string, string) error { return nil }
func (nopIndex) DeleteStore(context.Context, string) error        { return nil }
func (nopIndex) Search(context.Context, vectorindex.Query) ([]vectorindex.Hit, error) {
	return nil, nil
}

// okQueue accepts every job and runs none.
type okQueue struct{}

func (okQueue) InsertTx(context.Context, pgx.Tx, river.JobArgs, *river.InsertOpts) (*rivertype.JobInsertResult, error) {
	return &rivertype.JobInsertResult{}, nil
}

// TestDeleteStoreDuringFinish: a store deleted while an ingestion finishes. finish holds
// the file's row and DeleteStore the store's, waiting for the file's; finish touching the
// store in its transaction closed the cycle (40P01, a 500 to the caller or a re-embedding).
// The test holds finish just after it locked the file row (a table lock on the chunks
// it writes next), lets DeleteStore queue behind it, then lets finish go.
func TestDeleteStoreDuringFinish(t *testing.T) {
	pool, _ := pgtest.NewPool(t)
	ctx := context.Background()
	s, err := New(pool, oneFile{}, constEmbedder{}, nopIndex{}, okQueue{}, Options{})
	if err != nil {
		t.Fatal(err)
	}
	var uid int64
	if err := pool.QueryRow(ctx, `INSERT INTO users (username, password_hash) VALUES ('deadlock', 'x') RETURNING id`).Scan(&uid); err != nil {
		t.Fatal(err)
	}
	const store, file = "vs_deadlock00000", "file-deadlock"
	if _, err := pool.Exec(ctx, `INSERT INTO vector_stores (id, user_id, embedding_model) VALUES ($1, $2, 'sim-embedding')`, store, uid); err != nil {
		t.Fatal(err)
	}
	if _, err := pool.Exec(ctx, `INSERT INTO vector_store_files (store_id, file_id, filename, max_chunk_tokens, overlap_tokens)
		VALUES ($1, $2, 'notes.txt', 800, 400)`, store, file); err != nil {
		t.Fatal(err)
	}

	hold, err := pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer hold.Rollback(ctx)
	if _, err := hold.Exec(ctx, `LOCK TABLE vector_store_chunks IN EXCLUSIVE MODE`); err != nil {
		t.Fatal(err)
	}
	waiting := func(prefix string) func() bool {
		return func() bool {
			var n int
			if err := pool.QueryRow(ctx, `SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND query LIKE $1`,
				prefix+"%").Scan(&n); err != nil {
				t.Fatal(err)
			}
			return n > 0
		}
	}

	finished := make(chan error, 1)
	go func() {
		finished <- s.finish(ctx, IngestArgs{StoreID: store, FileID: file, Generation: 1}, []string{"hello world"}, [][]float32{{1, 0, 0}})
	}()
	waitUntil(t, "finish waits for the chunks", waiting("DELETE FROM vector_store_chunks"))
	deleted := make(chan error, 1)
	go func() {
		_, err := s.DeleteStore(ctx, Caller{UserID: uid}, store)
		deleted <- err
	}()
	waitUntil(t, "DeleteStore waits for the file's row", waiting("DELETE FROM vector_stores"))
	if err := hold.Rollback(ctx); err != nil {
		t.Fatal(err)
	}
	for name, ch := range map[string]chan error{"finish": finished, "DeleteStore": deleted} {
		select {
		case err := <-ch:
			if err != nil {
				t.Errorf("%s: %v", name, err)
			}
		case <-time.After(20 * time.Second):
			t.Fatalf("%s did not return", name)
		}
	}
	var n int
	if err := pool.QueryRow(ctx, `SELECT count(*) FROM vector_stores WHERE id = $1`, store).Scan(&n); err != nil || n != 0 {
		t.Errorf("store rows after delete: %d (%v)", n, err)
	}
}

// waitUntil polls cond until it holds, failing the test after 10s.
func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting until %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestConcurrencyFailureIsRetryable: a deadlock or a serialization failure answers 503 with
// Retry-After, not 500.
func TestConcurrencyFailureIsRetryable(t *testing.T) {
	for _, code := range []string{"40P01", "40001"} {
		err := asAPI(fmt.Errorf("wrapped: %w", &pgconn.PgError{Code: code}), "delete vector store %s", "vs_x")
		var ae *apierr.Error
		if !errors.As(err, &ae) || ae.Kind.Status() != 503 || ae.RetryAfter <= 0 {
			t.Errorf("%s: %v, want a 503 with Retry-After", code, err)
		}
	}
	var ae *apierr.Error
	if err := asAPI(&pgconn.PgError{Code: "23505"}, "x"); !errors.As(err, &ae) || ae.Kind.Status() != 500 {
		t.Errorf("23505: %v, want a 500", err)
	}
}

// badTextIndex refuses every chunk as PostgreSQL refuses text with NUL.
type badTextIndex struct{ nopIndex }

func (badTextIndex) Upsert(context.Context, []vectorindex.Chunk) error {
	return fmt.Errorf("upsert: %w", &pgconn.PgError{Code: "22021", Message: "invalid byte sequence for encoding \"UTF8\": 0x00"})
}

// TestUnstorableTextFailsFile: text the database refuses (22021, 22P05) fails the file at
// the first attempt, instead of re-embedding it on every retry.
func TestUnstorableTextFailsFile(t *testing.T) {
	pool, _ := pgtest.NewPool(t)
	ctx := context.Background()
	s, err := New(pool, oneFile{}, constEmbedder{}, badTextIndex{}, okQueue{}, Options{})
	if err != nil {
		t.Fatal(err)
	}
	var uid int64
	if err := pool.QueryRow(ctx, `INSERT INTO users (username, password_hash) VALUES ('badtext', 'x') RETURNING id`).Scan(&uid); err != nil {
		t.Fatal(err)
	}
	const store, file = "vs_badtext000000", "file-badtext"
	if _, err := pool.Exec(ctx, `INSERT INTO vector_stores (id, user_id, embedding_model) VALUES ($1, $2, 'sim-embedding')`, store, uid); err != nil {
		t.Fatal(err)
	}
	if _, err := pool.Exec(ctx, `INSERT INTO vector_store_files (store_id, file_id, filename, max_chunk_tokens, overlap_tokens)
		VALUES ($1, $2, 'notes.txt', 800, 400)`, store, file); err != nil {
		t.Fatal(err)
	}
	w := &ingestWorker{s: s}
	job := &river.Job[IngestArgs]{JobRow: &rivertype.JobRow{Attempt: 1, MaxAttempts: IngestArgs{}.InsertOpts().MaxAttempts},
		Args: IngestArgs{StoreID: store, FileID: file, Generation: 1}}
	if err := w.Work(ctx, job); err != nil {
		t.Fatalf("first attempt: %v, want the file failed for good", err)
	}
	var st, code string
	if err := pool.QueryRow(ctx, `SELECT status, coalesce(last_error_code, '') FROM vector_store_files WHERE store_id = $1 AND file_id = $2`,
		store, file).Scan(&st, &code); err != nil {
		t.Fatal(err)
	}
	if st != StatusFailed || code != CodeInvalidFile {
		t.Errorf("status %s, code %s; want failed, %s", st, code, CodeInvalidFile)
	}
}
