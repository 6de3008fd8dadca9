package knowledge

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"testing"

	"github.com/riverqueue/river"
	"github.com/riverqueue/river/rivertype"

	"github.com/maas-platform/maas/control/internal/vectorindex"
	"github.com/maas-platform/maas/pkg/apierr"
	"github.com/maas-platform/maas/pkg/pgdb/pgtest"
)

// awayIndex is a remote index that is not connected: every call fails with
// vectorindex.ErrUnavailable, wrapped as the Milvus adapter wraps it.
type awayIndex struct{}

var errAway = fmt.Errorf("fake: not connected: %w", vectorindex.ErrUnavailable)

func (awayIndex) Upsert(context.Context, []vectorindex.Chunk) error { return errAway }
func (awayIndex) SetAttributes(context.Context, string, string, map[string]any) error {
	return errAway
}
func (awayIndex) DeleteFile(context.Context, string, string) error { return errAway }
func (awayIndex) DeleteStore(context.Context, string) error        { return errAway }
func (awayIndex) Search(context.Context, vectorindex.Query) ([]vectorindex.Hit, error) {
	return nil, errAway
}

// constEmbedder answers one small vector per input.
type constEmbedder struct{}

func (constEmbedder) Embed(_ context.Context, _ Identity, _ string, in []string) ([][]float32, error) {
	out := make([][]float32, len(in))
	for i := range out {
		out[i] = []float32{1, 0, 0}
	}
	return out, nil
}

// oneFile serves the same text for any file id.
type oneFile struct{}

func (oneFile) Get(_ context.Context, id string) (File, error) {
	return File{ID: id, Filename: "notes.txt", Bytes: 11}, nil
}
func (oneFile) Open(context.Context, string) (io.ReadCloser, error) {
	return io.NopCloser(bytes.NewReader([]byte("hello world"))), nil
}

// TestIndexUnavailable: with the index away (Milvus not connected), a search answers 503
// with Retry-After in OpenAI's shape, and an ingestion attempt fails retryably (River tries
// again, the file stays in_progress) until the last attempt fails the file saying why.
func TestIndexUnavailable(t *testing.T) {
	pool, _ := pgtest.NewPool(t)
	ctx := context.Background()
	s, err := New(pool, oneFile{}, constEmbedder{}, awayIndex{}, noQueue{}, Options{})
	if err != nil {
		t.Fatal(err)
	}
	var uid int64
	if err := pool.QueryRow(ctx, `INSERT INTO users (username, password_hash) VALUES ('away', 'x') RETURNING id`).Scan(&uid); err != nil {
		t.Fatal(err)
	}
	const store, file = "vs_away000000000", "file-away"
	if _, err := pool.Exec(ctx, `INSERT INTO vector_stores (id, user_id, embedding_model) VALUES ($1, $2, 'sim-embedding')`, store, uid); err != nil {
		t.Fatal(err)
	}
	if _, err := pool.Exec(ctx, `INSERT INTO vector_store_files (store_id, file_id, filename, max_chunk_tokens, overlap_tokens)
		VALUES ($1, $2, 'notes.txt', 800, 400)`, store, file); err != nil {
		t.Fatal(err)
	}

	t.Run("search", func(t *testing.T) {
		for _, weights := range [][2]float64{{1, 0}, {1, 1}} {
			req := &searchRequest{Query: []byte(`"hello"`), RankingOptions: &rankingOptions{
				HybridSearch: &hybridSearch{EmbeddingWeight: &weights[0], TextWeight: &weights[1]}}}
			_, err := s.Search(ctx, Caller{UserID: uid}, store, req)
			var ae *apierr.Error
			if !errors.As(err, &ae) {
				t.Fatalf("weights %v: %v, want an apierr.Error", weights, err)
			}
			if ae.Kind.Status() != 503 || ae.Kind.Type() == "" || !errors.Is(ae, vectorindex.ErrUnavailable) {
				t.Errorf("weights %v: %d %s (%v), want 503 wrapping ErrUnavailable", weights, ae.Kind.Status(), ae.Kind.Type(), ae.Err)
			}
			if h := ae.Headers(); len(h) != 1 || h[0][0] != "Retry-After" || h[0][1] != "5" {
				t.Errorf("weights %v: headers %v, want Retry-After: 5", weights, h)
			}
		}
	})

	status := func() (st, msg string) {
		t.Helper()
		if err := pool.QueryRow(ctx, `SELECT status, coalesce(last_error_message, '') FROM vector_store_files WHERE store_id = $1 AND file_id = $2`,
			store, file).Scan(&st, &msg); err != nil {
			t.Fatal(err)
		}
		return st, msg
	}
	w := &ingestWorker{s: s}
	job := func(attempt int) *river.Job[IngestArgs] {
		return &river.Job[IngestArgs]{JobRow: &rivertype.JobRow{Attempt: attempt, MaxAttempts: IngestArgs{}.InsertOpts().MaxAttempts},
			Args: IngestArgs{StoreID: store, FileID: file, Generation: 1}}
	}

	t.Run("ingest retries", func(t *testing.T) {
		err := w.Work(ctx, job(1))
		var cancel *rivertype.JobCancelError
		if !errors.Is(err, vectorindex.ErrUnavailable) || errors.As(err, &cancel) {
			t.Fatalf("first attempt: %v, want a retryable error wrapping ErrUnavailable", err)
		}
		if st, _ := status(); st != StatusInProgress {
			t.Errorf("status %s after a retryable failure, want in_progress", st)
		}
	})

	t.Run("last attempt fails the file", func(t *testing.T) {
		// failFile deletes the file's vectors from the index, also away: the job fails
		// again (retried by River) and the file is not marked; a connected index lets it.
		s.index = failOnlyUpsert{}
		defer func() { s.index = awayIndex{} }()
		if err := w.Work(ctx, job(IngestArgs{}.InsertOpts().MaxAttempts)); err != nil {
			t.Fatalf("last attempt: %v", err)
		}
		st, msg := status()
		if st != StatusFailed || msg != "the vector index was unavailable; attach the file again later" {
			t.Errorf("file %s %q, want failed saying the index was unavailable", st, msg)
		}
	})
}

// failOnlyUpsert is an index whose writes are unavailable but whose deletions succeed.
type failOnlyUpsert struct{ awayIndex }

func (failOnlyUpsert) DeleteFile(context.Context, string, string) error { return nil }
