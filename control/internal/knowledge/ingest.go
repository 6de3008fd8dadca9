package knowledge

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/riverqueue/river"

	"github.com/maas-platform/maas/control/internal/vectorindex"
)

// IngestArgs is the River job that ingests one attached file.
type IngestArgs struct {
	StoreID    string `json:"store_id"`
	FileID     string `json:"file_id"`
	Generation int    `json:"generation"`
}

// Kind is River's name for the job.
func (IngestArgs) Kind() string { return "knowledge.ingest" }

// InsertOpts: transient failures (the gateway, an index that is unavailable:
// vectorindex.ErrUnavailable) are retried with River's backoff; the last attempt fails the
// file, saying why.
func (IngestArgs) InsertOpts() river.InsertOpts { return river.InsertOpts{MaxAttempts: 6} }

// PurgeArgs is the River job that removes a detached file's or a deleted store's vectors
// from the index (FileID empty: the whole store).
type PurgeArgs struct {
	StoreID string `json:"store_id"`
	FileID  string `json:"file_id,omitempty"`
}

// Kind is River's name for the job.
func (PurgeArgs) Kind() string { return "knowledge.purge" }

// InsertOpts bounds retries of a purge whose index is away.
func (PurgeArgs) InsertOpts() river.InsertOpts { return river.InsertOpts{MaxAttempts: 20} }

// AddWorkers registers the domain's River workers on workers.
func (s *Service) AddWorkers(workers *river.Workers) {
	river.AddWorker(workers, &ingestWorker{s: s})
	river.AddWorker(workers, &purgeWorker{s: s})
}

type purgeWorker struct {
	river.WorkerDefaults[PurgeArgs]
	s *Service
}

func (w *purgeWorker) Work(ctx context.Context, job *river.Job[PurgeArgs]) error {
	a := job.Args
	if a.FileID == "" {
		var n int
		if err := w.s.db.QueryRow(ctx, `SELECT count(*) FROM vector_stores WHERE id = $1`, a.StoreID).Scan(&n); err != nil || n > 0 {
			return err // a store is never re-created under the same id; n > 0 cannot happen
		}
		return w.s.index.DeleteStore(ctx, a.StoreID)
	}
	return w.s.inTx(ctx, func(tx pgx.Tx) error {
		// Attached again meanwhile: the new attachment's ingestion owns the vectors. The
		// attachment's row is locked (if any), so no ingestion finishes meanwhile.
		var n int
		if err := tx.QueryRow(ctx, `SELECT count(*) FROM vector_store_files WHERE store_id = $1 AND file_id = $2 FOR UPDATE`,
			a.StoreID, a.FileID).Scan(&n); err != nil || n > 0 {
			return err
		}
		return w.s.index.DeleteFile(vectorindex.WithTx(ctx, tx), a.StoreID, a.FileID)
	})
}

type ingestWorker struct {
	river.WorkerDefaults[IngestArgs]
	s *Service
}

// Timeout bounds one attempt (extraction and embedding of a large file take a while).
func (w *ingestWorker) Timeout(*river.Job[IngestArgs]) time.Duration { return 30 * time.Minute }

func (w *ingestWorker) Work(ctx context.Context, job *river.Job[IngestArgs]) error {
	a := job.Args
	err := w.s.ingest(ctx, a)
	var xe *extractError
	if errors.As(err, &xe) {
		return w.s.failFile(ctx, a, xe.Code, xe.Message)
	}
	if c := pgCode(err); c == pgInvalidByteSeq || c == pgUntranslatable {
		// The same text would be refused on every attempt, each embedding it again.
		w.s.log.Warn("file text refused by the database", "vector_store", a.StoreID, "file", a.FileID, "err", err)
		return w.s.failFile(ctx, a, CodeInvalidFile, "the file's text could not be stored")
	}
	var ee *EmbedError
	if errors.As(err, &ee) && ee.Permanent() {
		return w.s.failFile(ctx, a, CodeServerError, "embedding failed: "+ee.Message)
	}
	if err != nil && job.Attempt >= job.MaxAttempts {
		w.s.log.Error("ingestion failed for good", "vector_store", a.StoreID, "file", a.FileID, "err", err)
		msg := "the file could not be processed: internal error"
		switch {
		case ee != nil:
			msg = "embedding failed: " + ee.Message
		case errors.Is(err, vectorindex.ErrUnavailable):
			msg = "the vector index was unavailable; attach the file again later"
		}
		return w.s.failFile(ctx, a, CodeServerError, msg)
	}
	if err != nil {
		w.s.log.Warn("ingestion attempt failed; retrying", "vector_store", a.StoreID, "file", a.FileID, "attempt", job.Attempt, "err", err)
	}
	return err
}

// current reports whether attachment a is still the one to ingest.
func (s *Service) current(ctx context.Context, q querier, a IngestArgs, lock bool) (*StoreFile, bool, error) {
	sql := `SELECT ` + fileColumns + ` FROM vector_store_files f WHERE f.store_id = $1 AND f.file_id = $2`
	if lock {
		sql += ` FOR UPDATE`
	}
	f, err := scanFile(q.QueryRow(ctx, sql, a.StoreID, a.FileID))
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, false, nil
	}
	if err != nil {
		return nil, false, err
	}
	return f, f.generation == a.Generation && f.Status == StatusInProgress, nil
}

// ingest runs one attempt; see the package doc.
func (s *Service) ingest(ctx context.Context, a IngestArgs) error {
	f, ok, err := s.current(ctx, s.db, a, false)
	if err != nil {
		return err
	}
	if !ok {
		return s.abandon(ctx, a)
	}
	var model string
	var owner Identity
	err = s.db.QueryRow(ctx, `SELECT s.embedding_model, s.user_id, coalesce(array_agg(r.name) FILTER (WHERE r.name IS NOT NULL), '{}')
		FROM vector_stores s LEFT JOIN user_roles ur ON ur.user_id = s.user_id LEFT JOIN roles r ON r.id = ur.role_id
		WHERE s.id = $1 GROUP BY s.seq`, a.StoreID).Scan(&model, &owner.UserID, &owner.Roles)
	if errors.Is(err, pgx.ErrNoRows) {
		return s.abandon(ctx, a)
	}
	if err != nil {
		return err
	}
	data, err := s.read(ctx, a.FileID)
	if err != nil {
		return err
	}
	text, err := extract(f.filename, data)
	if err != nil {
		return err
	}
	st := f.ChunkingStrategy.Static
	chunks := chunkText(text, st.MaxChunkSizeTokens, st.ChunkOverlapTokens)
	if len(chunks) > s.opts.MaxChunksPerFile {
		return &extractError{CodeInvalidFile, fmt.Sprintf("the file makes %d chunks, more than the %d allowed", len(chunks), s.opts.MaxChunksPerFile)}
	}
	vecs := make([][]float32, 0, len(chunks))
	for i := 0; i < len(chunks); i += s.opts.EmbedBatch {
		batch := chunks[i:min(len(chunks), i+s.opts.EmbedBatch)]
		out, err := s.emb.Embed(ctx, owner, model, batch)
		if err != nil {
			return err
		}
		if len(out) != len(batch) {
			return fmt.Errorf("embeddings: %d vectors for %d inputs", len(out), len(batch))
		}
		vecs = append(vecs, out...)
		// Stop early when the file was detached or cancelled meanwhile.
		if _, ok, err := s.current(ctx, s.db, a, false); err != nil || !ok {
			if err != nil {
				return err
			}
			return s.abandon(ctx, a)
		}
	}
	return s.finish(ctx, a, chunks, vecs)
}

// read returns the file's content, bounded by MaxFileBytes.
func (s *Service) read(ctx context.Context, fileID string) ([]byte, error) {
	rc, err := s.files.Open(ctx, fileID)
	if errors.Is(err, ErrFileNotFound) {
		return nil, &extractError{CodeServerError, fmt.Sprintf("file %s was deleted before it could be processed", fileID)}
	}
	if err != nil {
		return nil, err
	}
	defer rc.Close()
	data, err := io.ReadAll(io.LimitReader(rc, s.opts.MaxFileBytes+1))
	if err != nil {
		return nil, err
	}
	if int64(len(data)) > s.opts.MaxFileBytes {
		return nil, &extractError{CodeInvalidFile, fmt.Sprintf("the file is larger than the %d bytes a vector store reads", s.opts.MaxFileBytes)}
	}
	return data, nil
}

func chunkID(fileID string, n int) string { return fmt.Sprintf("%s-%d", fileID, n) }

// finish writes the file's vectors and chunks and completes it, under the attachment's row
// lock so that a detach, a cancel or a newer attachment cannot interleave. The index writes
// carry the transaction (vectorindex.WithTx): the embedded index commits them with the
// chunks, and none takes a second connection while this one is held.
//
// The store's last_active_at is touched after the commit, best effort (as by a search):
// the store's row is not locked while the file's is, the order DeleteStore, AttachFile and
// CreateBatch take them in reverse (store, then file), which deadlocked.
func (s *Service) finish(ctx context.Context, a IngestArgs, chunks []string, vecs [][]float32) error {
	done := false
	err := s.inTx(ctx, func(tx pgx.Tx) error {
		ictx := vectorindex.WithTx(ctx, tx)
		f, ok, err := s.current(ctx, tx, a, true)
		if err != nil {
			return err
		}
		if !ok {
			return s.abandonLocked(ictx, a, f)
		}
		if err := s.index.DeleteFile(ictx, a.StoreID, a.FileID); err != nil {
			return err
		}
		items := make([]vectorindex.Chunk, len(chunks))
		ids := make([]string, len(chunks))
		ns := make([]int32, len(chunks))
		var usage int64
		for i := range chunks {
			ids[i], ns[i] = chunkID(a.FileID, i), int32(i)
			items[i] = vectorindex.Chunk{StoreID: a.StoreID, FileID: a.FileID, ChunkID: ids[i], Vector: vecs[i], Attributes: f.Attributes}
			usage += int64(len(chunks[i]))
		}
		for i := 0; i < len(items); i += 500 {
			if err := s.index.Upsert(ictx, items[i:min(len(items), i+500)]); err != nil {
				return err
			}
		}
		if _, err := tx.Exec(ctx, `DELETE FROM vector_store_chunks WHERE store_id = $1 AND file_id = $2`, a.StoreID, a.FileID); err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, `INSERT INTO vector_store_chunks (store_id, chunk_id, file_id, n, text)
			SELECT $1, c, $2, n, t FROM unnest($3::text[], $4::int[], $5::text[]) AS x(c, n, t)`,
			a.StoreID, a.FileID, ids, ns, chunks); err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, `UPDATE vector_store_files SET status = 'completed', usage_bytes = $3 WHERE store_id = $1 AND file_id = $2`,
			a.StoreID, a.FileID, usage); err != nil {
			return err
		}
		done = true
		s.log.Info("file ingested", "vector_store", a.StoreID, "file", a.FileID, "chunks", len(chunks), "bytes", usage)
		return nil
	})
	if err != nil || !done {
		return err
	}
	if _, err := s.db.Exec(ctx, `UPDATE vector_stores SET last_active_at = now() WHERE id = $1`, a.StoreID); err != nil {
		s.log.Warn("vector store's last_active_at not updated", "vector_store", a.StoreID, "err", err)
	}
	return nil
}

// abandon stops an ingestion whose attachment is gone, cancelled or newer.
func (s *Service) abandon(ctx context.Context, a IngestArgs) error {
	return s.inTx(ctx, func(tx pgx.Tx) error {
		f, _, err := s.current(ctx, tx, a, true)
		if err != nil {
			return err
		}
		return s.abandonLocked(vectorindex.WithTx(ctx, tx), a, f)
	})
}

// abandonLocked removes the file's vectors when no attachment owns them (detached or
// cancelled); a newer attachment's ingestion owns them otherwise.
func (s *Service) abandonLocked(ctx context.Context, a IngestArgs, f *StoreFile) error {
	if f == nil || f.Status == StatusCancelled {
		return s.index.DeleteFile(ctx, a.StoreID, a.FileID)
	}
	return nil
}

// failFile marks attachment a failed with a reason (if it is still the current one) and
// removes whatever it wrote.
func (s *Service) failFile(ctx context.Context, a IngestArgs, code, msg string) error {
	return s.inTx(ctx, func(tx pgx.Tx) error {
		ictx := vectorindex.WithTx(ctx, tx)
		f, ok, err := s.current(ctx, tx, a, true)
		if err != nil {
			return err
		}
		if !ok {
			return s.abandonLocked(ictx, a, f)
		}
		if err := s.index.DeleteFile(ictx, a.StoreID, a.FileID); err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, `DELETE FROM vector_store_chunks WHERE store_id = $1 AND file_id = $2`, a.StoreID, a.FileID); err != nil {
			return err
		}
		_, err = tx.Exec(ctx, `UPDATE vector_store_files SET status = 'failed', last_error_code = $3, last_error_message = $4, usage_bytes = 0
			WHERE store_id = $1 AND file_id = $2`, a.StoreID, a.FileID, code, msg)
		s.log.Info("file ingestion failed", "vector_store", a.StoreID, "file", a.FileID, "code", code, "reason", msg)
		return err
	})
}
