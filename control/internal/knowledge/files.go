package knowledge

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/maas-platform/maas/control/internal/vectorindex"
	"github.com/maas-platform/maas/pkg/apierr"
	"github.com/maas-platform/maas/pkg/textcheck"
)

const fileColumns = `f.seq, f.store_id, f.file_id, f.filename, f.status, f.last_error_code, f.last_error_message, f.attributes,
	f.max_chunk_tokens, f.overlap_tokens, f.usage_bytes, f.generation, f.created_at`

func scanFile(row pgx.Row) (*StoreFile, error) {
	var f StoreFile
	var code, msg *string
	var attrs []byte
	var maxTok, overlap int
	var created time.Time
	if err := row.Scan(&f.seq, &f.VectorStoreID, &f.ID, &f.filename, &f.Status, &code, &msg, &attrs,
		&maxTok, &overlap, &f.UsageBytes, &f.generation, &created); err != nil {
		return nil, err
	}
	f.Object = "vector_store.file"
	f.CreatedAt = unix(created)
	if code != nil {
		f.LastError = &LastError{Code: *code}
		if msg != nil {
			f.LastError.Message = *msg
		}
	}
	f.Attributes = map[string]any{}
	_ = json.Unmarshal(attrs, &f.Attributes)
	f.ChunkingStrategy = staticStrategy(StaticChunking{maxTok, overlap})
	return &f, nil
}

// attachTx attaches file f to store storeID (again, if it already was: its chunks are
// rebuilt) and enqueues its ingestion in tx.
func (s *Service) attachTx(ctx context.Context, tx pgx.Tx, storeID string, f File, attrs map[string]any, ch StaticChunking, batchID string) (*StoreFile, error) {
	a, _ := json.Marshal(attrs)
	var batch *string
	if batchID != "" {
		batch = &batchID
	}
	sf, err := scanFile(tx.QueryRow(ctx, `INSERT INTO vector_store_files AS f (store_id, file_id, filename, batch_id, attributes, max_chunk_tokens, overlap_tokens)
		VALUES ($1, $2, $3, $4, $5, $6, $7)
		ON CONFLICT (store_id, file_id) DO UPDATE SET status = 'in_progress', last_error_code = NULL, last_error_message = NULL,
			filename = EXCLUDED.filename, batch_id = EXCLUDED.batch_id, attributes = EXCLUDED.attributes,
			max_chunk_tokens = EXCLUDED.max_chunk_tokens, overlap_tokens = EXCLUDED.overlap_tokens,
			generation = f.generation + 1
		RETURNING `+fileColumns, storeID, f.ID, f.Filename, batch, a, ch.MaxChunkSizeTokens, ch.ChunkOverlapTokens))
	if err != nil {
		return nil, err
	}
	if _, err := s.queue.InsertTx(ctx, tx, IngestArgs{StoreID: storeID, FileID: f.ID, Generation: sf.generation}, nil); err != nil {
		return nil, err
	}
	return sf, nil
}

type attachRequest struct {
	FileID           string           `json:"file_id"`
	Attributes       json.RawMessage  `json:"attributes"`
	ChunkingStrategy *chunkingRequest `json:"chunking_strategy"`
}

// AttachFile attaches one of the store owner's files to a store.
func (s *Service) AttachFile(ctx context.Context, c Caller, storeID string, r *attachRequest) (*StoreFile, error) {
	if r.FileID == "" {
		return nil, apierr.Param("file_id", "file_id is required")
	}
	attrs, err := parseAttributes(r.Attributes, "attributes")
	if err != nil {
		return nil, err
	}
	ch, err := r.ChunkingStrategy.resolve("chunking_strategy")
	if err != nil {
		return nil, err
	}
	v, err := s.loadStore(ctx, s.db, c, storeID, false)
	if err != nil {
		return nil, err
	}
	files, err := s.ownFiles(ctx, v.UserID, []string{r.FileID}, "file_id")
	if err != nil {
		if ae := (*apierr.Error)(nil); errors.As(err, &ae) && ae.Param == "file_id[0]" {
			ae.Param = "file_id"
		}
		return nil, err
	}
	var sf *StoreFile
	err = s.inTx(ctx, func(tx pgx.Tx) error {
		if _, err := s.loadStore(ctx, tx, c, storeID, true); err != nil {
			return err
		}
		sf, err = s.attachTx(ctx, tx, storeID, files[0], attrs, ch, "")
		return err
	})
	if err != nil {
		return nil, asAPI(err, "attach file %s to %s", r.FileID, storeID)
	}
	return sf, nil
}

// fileFilter narrows ListFiles.
type fileFilter struct {
	Status  string // "" for any
	BatchID string // "" for any
}

// ListFiles lists a store's files in order.
func (s *Service) ListFiles(ctx context.Context, c Caller, storeID string, ff fileFilter, after string, limit int, desc bool) ([]*StoreFile, error) {
	if _, err := s.loadStore(ctx, s.db, c, storeID, false); err != nil {
		return nil, err
	}
	return s.listFiles(ctx, storeID, ff, after, limit, desc)
}

func (s *Service) listFiles(ctx context.Context, storeID string, ff fileFilter, after string, limit int, desc bool) ([]*StoreFile, error) {
	switch ff.Status {
	case "", StatusInProgress, StatusCompleted, StatusFailed, StatusCancelled:
	default:
		return nil, apierr.Param("filter", "filter must be one of in_progress, completed, failed, cancelled")
	}
	cursor := int64(0)
	if after != "" {
		if !validCursor(after) {
			return nil, apierr.Param("after", "after must be the id of a listed file")
		}
		err := s.db.QueryRow(ctx, `SELECT seq FROM vector_store_files WHERE store_id = $1 AND file_id = $2`, storeID, after).Scan(&cursor)
		if errors.Is(err, pgx.ErrNoRows) {
			return nil, apierr.Param("after", "after must be the id of a listed file")
		}
		if err != nil {
			return nil, apierr.Wrap(err, "list files of %s", storeID)
		}
	}
	cmp, order := ">", "ASC"
	if desc {
		cmp, order = "<", "DESC"
		if cursor == 0 {
			cursor = 1 << 62
		}
	}
	rows, err := s.db.Query(ctx, `SELECT `+fileColumns+` FROM vector_store_files f
		WHERE f.store_id = $1 AND f.seq `+cmp+` $2 AND ($3 = '' OR f.status = $3) AND ($4 = '' OR f.batch_id = $4)
		ORDER BY f.seq `+order+` LIMIT $5`, storeID, cursor, ff.Status, ff.BatchID, limit+1)
	if err != nil {
		return nil, apierr.Wrap(err, "list files of %s", storeID)
	}
	defer rows.Close()
	var out []*StoreFile
	for rows.Next() {
		f, err := scanFile(rows)
		if err != nil {
			return nil, apierr.Wrap(err, "list files of %s", storeID)
		}
		out = append(out, f)
	}
	if err := rows.Err(); err != nil {
		return nil, apierr.Wrap(err, "list files of %s", storeID)
	}
	return out, nil
}

func (s *Service) loadFile(ctx context.Context, q querier, storeID, fileID string, lock bool) (*StoreFile, error) {
	if !textcheck.Valid(fileID) {
		return nil, notFound("file", fileID+" in vector store "+storeID, "file_id")
	}
	sql := `SELECT ` + fileColumns + ` FROM vector_store_files f WHERE f.store_id = $1 AND f.file_id = $2`
	if lock {
		sql += ` FOR UPDATE`
	}
	f, err := scanFile(q.QueryRow(ctx, sql, storeID, fileID))
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, notFound("file", fileID+" in vector store "+storeID, "file_id")
	}
	if err != nil {
		return nil, apierr.Wrap(err, "load file %s of %s", fileID, storeID)
	}
	return f, nil
}

// GetFile returns one of a store's files.
func (s *Service) GetFile(ctx context.Context, c Caller, storeID, fileID string) (*StoreFile, error) {
	if _, err := s.loadStore(ctx, s.db, c, storeID, false); err != nil {
		return nil, err
	}
	return s.loadFile(ctx, s.db, storeID, fileID, false)
}

type updateFileRequest struct {
	Attributes json.RawMessage `json:"attributes"`
}

// UpdateFile replaces a file's attributes (in PostgreSQL and in the index).
func (s *Service) UpdateFile(ctx context.Context, c Caller, storeID, fileID string, r *updateFileRequest) (*StoreFile, error) {
	if len(r.Attributes) == 0 {
		return nil, apierr.Param("attributes", "attributes is required")
	}
	attrs, err := parseAttributes(r.Attributes, "attributes")
	if err != nil {
		return nil, err
	}
	a, _ := json.Marshal(attrs)
	var f *StoreFile
	err = s.inTx(ctx, func(tx pgx.Tx) error {
		if _, err := s.loadStore(ctx, tx, c, storeID, false); err != nil {
			return err
		}
		if _, err := s.loadFile(ctx, tx, storeID, fileID, true); err != nil {
			return err
		}
		// The index is written under the row lock, so an ingestion finishing meanwhile
		// (which takes the same lock) cannot interleave its upsert with this change.
		if err := s.index.SetAttributes(vectorindex.WithTx(ctx, tx), storeID, fileID, attrs); err != nil {
			return err
		}
		f, err = scanFile(tx.QueryRow(ctx, `UPDATE vector_store_files f SET attributes = $3 WHERE store_id = $1 AND file_id = $2 RETURNING `+fileColumns,
			storeID, fileID, a))
		return err
	})
	if err != nil {
		return nil, asAPI(err, "update file %s of %s", fileID, storeID)
	}
	return f, nil
}

// DetachFile removes a file from a store with its chunks and vectors.
func (s *Service) DetachFile(ctx context.Context, c Caller, storeID, fileID string) (*Deleted, error) {
	err := s.inTx(ctx, func(tx pgx.Tx) error {
		if _, err := s.loadStore(ctx, tx, c, storeID, false); err != nil {
			return err
		}
		if _, err := s.loadFile(ctx, tx, storeID, fileID, true); err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, `DELETE FROM vector_store_files WHERE store_id = $1 AND file_id = $2`, storeID, fileID); err != nil {
			return err
		}
		// The embedded index deletes in this transaction; an external one deletes now, and
		// the purge job again in case the transaction commits and this deletion failed.
		if err := s.index.DeleteFile(vectorindex.WithTx(ctx, tx), storeID, fileID); err != nil {
			s.log.Warn("file's vectors not removed yet; the purge job will", "vector_store", storeID, "file", fileID, "err", err)
		}
		_, err := s.queue.InsertTx(ctx, tx, PurgeArgs{StoreID: storeID, FileID: fileID}, nil)
		return err
	})
	if err != nil {
		return nil, asAPI(err, "detach file %s from %s", fileID, storeID)
	}
	return &Deleted{ID: fileID, Object: "vector_store.file.deleted", Deleted: true}, nil
}

// ContentPart is one piece of text of a file or a search result.
type ContentPart struct {
	Type string `json:"type"`
	Text string `json:"text"`
}

// FileContent returns a file's chunks, in order (OpenAI's file content page).
func (s *Service) FileContent(ctx context.Context, c Caller, storeID, fileID string) ([]ContentPart, error) {
	if _, err := s.GetFile(ctx, c, storeID, fileID); err != nil {
		return nil, err
	}
	rows, err := s.db.Query(ctx, `SELECT text FROM vector_store_chunks WHERE store_id = $1 AND file_id = $2 ORDER BY n`, storeID, fileID)
	if err != nil {
		return nil, apierr.Wrap(err, "content of %s in %s", fileID, storeID)
	}
	defer rows.Close()
	out := []ContentPart{}
	for rows.Next() {
		var t string
		if err := rows.Scan(&t); err != nil {
			return nil, apierr.Wrap(err, "content of %s in %s", fileID, storeID)
		}
		out = append(out, ContentPart{Type: "text", Text: t})
	}
	return out, rows.Err()
}

// ---- batches ----

type batchRequest struct {
	FileIDs          []string         `json:"file_ids"`
	Files            []attachRequest  `json:"files"`
	Attributes       json.RawMessage  `json:"attributes"`
	ChunkingStrategy *chunkingRequest `json:"chunking_strategy"`
}

// CreateBatch attaches several files at once.
func (s *Service) CreateBatch(ctx context.Context, c Caller, storeID string, r *batchRequest) (*Batch, error) {
	if (len(r.FileIDs) == 0) == (len(r.Files) == 0) {
		return nil, apierr.Param("file_ids", "give either file_ids or files, not both and not neither")
	}
	if len(r.FileIDs)+len(r.Files) > maxFileIDs {
		return nil, apierr.Param("file_ids", "a batch may name at most %d files", maxFileIDs)
	}
	type item struct {
		id    string
		attrs map[string]any
		ch    StaticChunking
	}
	var items []item
	attrs, err := parseAttributes(r.Attributes, "attributes")
	if err != nil {
		return nil, err
	}
	ch, err := r.ChunkingStrategy.resolve("chunking_strategy")
	if err != nil {
		return nil, err
	}
	for _, id := range r.FileIDs {
		items = append(items, item{id, attrs, ch})
	}
	for i, f := range r.Files {
		p := fmt.Sprintf("files[%d]", i)
		if f.FileID == "" {
			return nil, apierr.Param(p+".file_id", "file_id is required")
		}
		a := attrs
		if len(f.Attributes) > 0 {
			if a, err = parseAttributes(f.Attributes, p+".attributes"); err != nil {
				return nil, err
			}
		}
		fc := ch
		if f.ChunkingStrategy != nil {
			if fc, err = f.ChunkingStrategy.resolve(p + ".chunking_strategy"); err != nil {
				return nil, err
			}
		}
		items = append(items, item{f.FileID, a, fc})
	}
	v, err := s.loadStore(ctx, s.db, c, storeID, false)
	if err != nil {
		return nil, err
	}
	ids := make([]string, len(items))
	for i, it := range items {
		ids[i] = it.id
	}
	param := "file_ids"
	if len(r.Files) > 0 {
		param = "files"
	}
	files, err := s.ownFiles(ctx, v.UserID, ids, param)
	if err != nil {
		return nil, err
	}
	byID := map[string]File{}
	for _, f := range files {
		byID[f.ID] = f
	}
	bid := newID("vsfb_")
	err = s.inTx(ctx, func(tx pgx.Tx) error {
		if _, err := s.loadStore(ctx, tx, c, storeID, true); err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, `INSERT INTO vector_store_file_batches (id, store_id) VALUES ($1, $2)`, bid, storeID); err != nil {
			return err
		}
		done := map[string]bool{}
		for _, it := range items {
			if done[it.id] {
				continue
			}
			done[it.id] = true
			if _, err := s.attachTx(ctx, tx, storeID, byID[it.id], it.attrs, it.ch, bid); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return nil, asAPI(err, "create file batch in %s", storeID)
	}
	return s.batch(ctx, storeID, bid)
}

func (s *Service) batch(ctx context.Context, storeID, id string) (*Batch, error) {
	b := &Batch{ID: id, Object: "vector_store.files_batch", VectorStoreID: storeID}
	var created time.Time
	var cancelled bool
	if !textcheck.Valid(id) {
		return nil, notFound("file batch", id, "batch_id")
	}
	err := s.db.QueryRow(ctx, `SELECT created_at, cancelled FROM vector_store_file_batches WHERE id = $1 AND store_id = $2`, id, storeID).Scan(&created, &cancelled)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, notFound("file batch", id, "batch_id")
	}
	if err != nil {
		return nil, apierr.Wrap(err, "load batch %s", id)
	}
	b.CreatedAt = unix(created)
	rows, err := s.db.Query(ctx, `SELECT status, count(*) FROM vector_store_files WHERE batch_id = $1 GROUP BY status`, id)
	if err != nil {
		return nil, apierr.Wrap(err, "load batch %s", id)
	}
	defer rows.Close()
	for rows.Next() {
		var st string
		var n int64
		if err := rows.Scan(&st, &n); err != nil {
			return nil, apierr.Wrap(err, "load batch %s", id)
		}
		b.FileCounts.add(st, n)
	}
	if err := rows.Err(); err != nil {
		return nil, apierr.Wrap(err, "load batch %s", id)
	}
	switch {
	case cancelled && b.FileCounts.InProgress > 0:
		b.Status = "cancelling"
	case cancelled:
		b.Status = StatusCancelled
	case b.FileCounts.InProgress > 0:
		b.Status = StatusInProgress
	case b.FileCounts.Total > 0 && b.FileCounts.Failed == b.FileCounts.Total:
		b.Status = StatusFailed
	default:
		b.Status = StatusCompleted
	}
	return b, nil
}

// GetBatch returns a batch of a store c may see.
func (s *Service) GetBatch(ctx context.Context, c Caller, storeID, id string) (*Batch, error) {
	if _, err := s.loadStore(ctx, s.db, c, storeID, false); err != nil {
		return nil, err
	}
	return s.batch(ctx, storeID, id)
}

// CancelBatch cancels a batch's files that are still in progress (their ingestion jobs
// notice and stop, removing what they wrote).
func (s *Service) CancelBatch(ctx context.Context, c Caller, storeID, id string) (*Batch, error) {
	var cancelled []string
	err := s.inTx(ctx, func(tx pgx.Tx) error {
		if _, err := s.loadStore(ctx, tx, c, storeID, false); err != nil {
			return err
		}
		if !textcheck.Valid(id) {
			return notFound("file batch", id, "batch_id")
		}
		tag, err := tx.Exec(ctx, `UPDATE vector_store_file_batches SET cancelled = TRUE WHERE id = $1 AND store_id = $2`, id, storeID)
		if err != nil {
			return err
		}
		if tag.RowsAffected() == 0 {
			return notFound("file batch", id, "batch_id")
		}
		rows, err := tx.Query(ctx, `UPDATE vector_store_files SET status = 'cancelled', generation = generation + 1
			WHERE batch_id = $1 AND status = 'in_progress' RETURNING file_id`, id)
		if err != nil {
			return err
		}
		defer rows.Close()
		for rows.Next() {
			var f string
			if err := rows.Scan(&f); err != nil {
				return err
			}
			cancelled = append(cancelled, f)
		}
		if err := rows.Err(); err != nil {
			return err
		}
		rows.Close()
		for _, f := range cancelled {
			if err := s.index.DeleteFile(vectorindex.WithTx(ctx, tx), storeID, f); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return nil, asAPI(err, "cancel batch %s", id)
	}
	return s.batch(ctx, storeID, id)
}

// ListBatchFiles lists a batch's files.
func (s *Service) ListBatchFiles(ctx context.Context, c Caller, storeID, id string, status, after string, limit int, desc bool) ([]*StoreFile, error) {
	if _, err := s.GetBatch(ctx, c, storeID, id); err != nil {
		return nil, err
	}
	return s.listFiles(ctx, storeID, fileFilter{Status: status, BatchID: id}, after, limit, desc)
}
