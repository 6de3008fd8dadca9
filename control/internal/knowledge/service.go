package knowledge

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/riverqueue/river"
	"github.com/riverqueue/river/rivertype"

	"github.com/maas-platform/maas/control/internal/vectorindex"
	"github.com/maas-platform/maas/pkg/apierr"
	"github.com/maas-platform/maas/pkg/internalauth"
	"github.com/maas-platform/maas/pkg/textcheck"
)

// File is what this package needs to know of an uploaded file.
type File struct {
	ID       string
	UserID   int64
	Filename string
	Bytes    int64
}

// ErrFileNotFound is Files.Get's answer for an unknown file.
var ErrFileNotFound = errors.New("knowledge: file not found")

// Files is the Files API as this package consumes it.
type Files interface {
	// Get returns file id whoever owns it; ErrFileNotFound when there is none.
	Get(ctx context.Context, id string) (File, error)
	// Open opens file id's content.
	Open(ctx context.Context, id string) (io.ReadCloser, error)
}

// Identity is whom an embedding request is made for (the store's owner when ingesting, the
// caller when searching).
type Identity = internalauth.Identity

// Embedder turns texts into vectors with a model, charged to an identity. The production
// one is the gateway (GatewayEmbedder), so routing, quotas and the ledger apply.
type Embedder interface {
	Embed(ctx context.Context, as Identity, model string, inputs []string) ([][]float32, error)
}

// EmbedError is an embedding request the gateway refused or could not serve.
type EmbedError struct {
	Status  int    // the gateway's HTTP status (0: no answer)
	Code    string // the OpenAI error code, when given
	Message string
}

func (e *EmbedError) Error() string {
	return fmt.Sprintf("embeddings: status %d: %s", e.Status, e.Message)
}

// Permanent reports whether retrying cannot help (a 4xx other than 408, 409 and 429).
func (e *EmbedError) Permanent() bool {
	return e.Status >= 400 && e.Status < 500 && e.Status != 408 && e.Status != 409 && e.Status != 429
}

// Enqueuer inserts River jobs in a transaction (jobs.Queue).
type Enqueuer interface {
	InsertTx(ctx context.Context, tx pgx.Tx, args river.JobArgs, opts *river.InsertOpts) (*rivertype.JobInsertResult, error)
}

// DB is the database as this package uses it (a pgxpool.Pool).
type DB interface {
	Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error)
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
	Begin(ctx context.Context) (pgx.Tx, error)
}

type querier interface {
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
	Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error)
}

// Options configures a Service.
type Options struct {
	Logger *slog.Logger
	// EmbeddingModel is the model of stores created without one
	// (MAAS_KNOWLEDGE_EMBEDDING_MODEL).
	EmbeddingModel string
	// EmbedBatch is how many chunks one embeddings request carries (64 when zero).
	EmbedBatch int
	// MaxFileBytes bounds the file content read for extraction (64 MiB when zero).
	MaxFileBytes int64
	// MaxChunksPerFile bounds the chunks of one file (20,000 when zero).
	MaxChunksPerFile int
}

func (o *Options) defaults() {
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.EmbeddingModel == "" {
		o.EmbeddingModel = "sim-embedding"
	}
	if o.EmbedBatch <= 0 {
		o.EmbedBatch = 64
	}
	if o.MaxFileBytes <= 0 {
		o.MaxFileBytes = 64 << 20
	}
	if o.MaxChunksPerFile <= 0 {
		o.MaxChunksPerFile = 20000
	}
}

// Service is the knowledge domain. Safe for concurrent use.
type Service struct {
	db    DB
	files Files
	emb   Embedder
	index vectorindex.Index
	queue Enqueuer
	opts  Options
	log   *slog.Logger
	now   func() time.Time
}

// New returns a Service. Add its workers to the queue (AddWorkers) before the queue starts.
func New(db DB, files Files, emb Embedder, index vectorindex.Index, queue Enqueuer, o Options) (*Service, error) {
	if db == nil || files == nil || emb == nil || index == nil || queue == nil {
		return nil, errors.New("knowledge: db, files, embedder, index and queue are required")
	}
	o.defaults()
	return &Service{db: db, files: files, emb: emb, index: index, queue: queue, opts: o, log: o.Logger, now: time.Now}, nil
}

// Caller is who acts on stores.
type Caller struct {
	UserID int64
	Roles  []string
	Admin  bool
}

func (c Caller) identity() Identity { return Identity{UserID: c.UserID, Roles: c.Roles} }

func (s *Service) inTx(ctx context.Context, fn func(pgx.Tx) error) error {
	tx, err := s.db.Begin(ctx)
	if err != nil {
		return err
	}
	defer tx.Rollback(ctx)
	if err := fn(tx); err != nil {
		return err
	}
	return tx.Commit(ctx)
}

// ---- stores ----

type createStoreRequest struct {
	Name             *string           `json:"name"`
	FileIDs          []string          `json:"file_ids"`
	ChunkingStrategy *chunkingRequest  `json:"chunking_strategy"`
	ExpiresAfter     *expiresRequest   `json:"expires_after"`
	Metadata         map[string]string `json:"metadata"`
	Description      *string           `json:"description"`
	EmbeddingModel   *string           `json:"embedding_model"` // an extension: the default is MAAS_KNOWLEDGE_EMBEDDING_MODEL
}

type expiresRequest struct {
	Anchor string `json:"anchor"`
	Days   int    `json:"days"`
}

func (e *expiresRequest) validate() error {
	if e.Anchor != "last_active_at" {
		return apierr.Param("expires_after.anchor", "expires_after.anchor must be \"last_active_at\"")
	}
	if e.Days < 1 || e.Days > 365 {
		return apierr.Param("expires_after.days", "expires_after.days must be from 1 to 365")
	}
	return nil
}

const storeColumns = `s.seq, s.id, s.user_id, s.name, s.embedding_model, s.metadata, s.expires_after_days, s.last_active_at, s.created_at`

func scanStore(row pgx.Row) (*VectorStore, error) {
	var v VectorStore
	var meta []byte
	var days *int
	var last, created time.Time
	if err := row.Scan(&v.seq, &v.ID, &v.UserID, &v.Name, &v.EmbeddingModel, &meta, &days, &last, &created); err != nil {
		return nil, err
	}
	v.Object = "vector_store"
	v.CreatedAt, v.LastActiveAt = unix(created), unix(last)
	v.Metadata = map[string]string{}
	_ = json.Unmarshal(meta, &v.Metadata)
	if days != nil {
		v.ExpiresAfter = &ExpiresAfter{Anchor: "last_active_at", Days: *days}
		at := last.Add(time.Duration(*days) * 24 * time.Hour).Unix()
		v.ExpiresAt = &at
	}
	return &v, nil
}

// fill sets the derived fields: file counts, usage and status.
func (s *Service) fill(ctx context.Context, q querier, v *VectorStore) error {
	rows, err := q.Query(ctx, `SELECT status, count(*), coalesce(sum(usage_bytes), 0) FROM vector_store_files WHERE store_id = $1 GROUP BY status`, v.ID)
	if err != nil {
		return err
	}
	defer rows.Close()
	v.FileCounts, v.UsageBytes = FileCounts{}, 0
	for rows.Next() {
		var st string
		var n, bytes int64
		if err := rows.Scan(&st, &n, &bytes); err != nil {
			return err
		}
		v.FileCounts.add(st, n)
		v.UsageBytes += bytes
	}
	if err := rows.Err(); err != nil {
		return err
	}
	switch {
	case v.ExpiresAt != nil && *v.ExpiresAt < s.now().Unix():
		v.Status = "expired"
	case v.FileCounts.InProgress > 0:
		v.Status = StatusInProgress
	default:
		v.Status = StatusCompleted
	}
	return nil
}

// loadStore returns store id if c may see it (404 otherwise), locking its row in a
// transaction when lock is set.
func (s *Service) loadStore(ctx context.Context, q querier, c Caller, id string, lock bool) (*VectorStore, error) {
	if !textcheck.Valid(id) {
		return nil, notFound("vector store", id, "vector_store_id")
	}
	sql := `SELECT ` + storeColumns + ` FROM vector_stores s WHERE s.id = $1`
	if lock {
		sql += ` FOR UPDATE`
	}
	v, err := scanStore(q.QueryRow(ctx, sql, id))
	if errors.Is(err, pgx.ErrNoRows) || (err == nil && !c.Admin && v.UserID != c.UserID) {
		return nil, notFound("vector store", id, "vector_store_id")
	}
	if err != nil {
		return nil, apierr.Wrap(err, "load vector store %s", id)
	}
	return v, nil
}

// CreateStore creates a store for c and attaches r.FileIDs to it, their ingestion jobs
// enqueued in the same transaction.
func (s *Service) CreateStore(ctx context.Context, c Caller, r *createStoreRequest) (*VectorStore, error) {
	name := ""
	if r.Name != nil {
		name = *r.Name
	}
	if !validName(name) {
		return nil, apierr.Param("name", "name must be valid UTF-8 without NUL characters, of at most %d bytes", maxNameLen)
	}
	if err := validateMetadata(r.Metadata); err != nil {
		return nil, err
	}
	var days *int
	if r.ExpiresAfter != nil {
		if err := r.ExpiresAfter.validate(); err != nil {
			return nil, err
		}
		days = &r.ExpiresAfter.Days
	}
	chunking, err := r.ChunkingStrategy.resolve("chunking_strategy")
	if err != nil {
		return nil, err
	}
	if r.ChunkingStrategy != nil && len(r.FileIDs) == 0 {
		return nil, apierr.Param("chunking_strategy", "chunking_strategy is only applicable if file_ids is non-empty")
	}
	if len(r.FileIDs) > maxFileIDs {
		return nil, apierr.Param("file_ids", "file_ids may name at most %d files", maxFileIDs)
	}
	attrs := map[string]any{}
	model := s.opts.EmbeddingModel
	if r.EmbeddingModel != nil {
		if *r.EmbeddingModel == "" || len(*r.EmbeddingModel) > 256 || !textcheck.Valid(*r.EmbeddingModel) {
			return nil, apierr.Param("embedding_model", "embedding_model must be a model name")
		}
		model = *r.EmbeddingModel
	}
	files, err := s.ownFiles(ctx, c.UserID, r.FileIDs, "file_ids")
	if err != nil {
		return nil, err
	}
	meta, _ := json.Marshal(nonNil(r.Metadata))
	id := newID("vs_")
	var v *VectorStore
	err = s.inTx(ctx, func(tx pgx.Tx) error {
		v, err = scanStore(tx.QueryRow(ctx, `INSERT INTO vector_stores AS s (id, user_id, name, embedding_model, metadata, expires_after_days)
			VALUES ($1, $2, $3, $4, $5, $6) RETURNING `+storeColumns, id, c.UserID, name, model, meta, days))
		if err != nil {
			return err
		}
		for _, f := range files {
			if _, err := s.attachTx(ctx, tx, id, f, attrs, chunking, ""); err != nil {
				return err
			}
		}
		return s.fill(ctx, tx, v)
	})
	if err != nil {
		return nil, apierr.Wrap(err, "create vector store")
	}
	s.log.Info("vector store created", "vector_store", id, "user_id", c.UserID, "files", len(files), "embedding_model", model)
	return v, nil
}

func nonNil(m map[string]string) map[string]string {
	if m == nil {
		return map[string]string{}
	}
	return m
}

// ownFiles looks up file ids owned by userID, answering 400 for any other.
func (s *Service) ownFiles(ctx context.Context, userID int64, ids []string, param string) ([]File, error) {
	seen := map[string]bool{}
	var out []File
	for i, id := range ids {
		p := fmt.Sprintf("%s[%d]", param, i)
		if id == "" {
			return nil, apierr.Param(p, "file id must not be empty")
		}
		if seen[id] {
			continue
		}
		seen[id] = true
		f, err := s.files.Get(ctx, id)
		if errors.Is(err, ErrFileNotFound) || (err == nil && f.UserID != userID) {
			return nil, &apierr.Error{Kind: apierr.InvalidRequest, Param: p, Code: "invalid_file_id",
				Message: fmt.Sprintf("file %s does not exist or does not belong to the vector store's owner", id)}
		}
		if err != nil {
			return nil, apierr.Wrap(err, "look up file %s", id)
		}
		out = append(out, f)
	}
	return out, nil
}

// ListStores returns c's stores (every store for an admin with all set) in order.
func (s *Service) ListStores(ctx context.Context, c Caller, after string, limit int, desc bool) ([]*VectorStore, error) {
	cursor := int64(0)
	if after != "" {
		if !validCursor(after) {
			return nil, apierr.Param("after", "after must be the id of a listed vector store")
		}
		err := s.db.QueryRow(ctx, `SELECT seq FROM vector_stores WHERE id = $1 AND user_id = $2`, after, c.UserID).Scan(&cursor)
		if errors.Is(err, pgx.ErrNoRows) {
			return nil, apierr.Param("after", "after must be the id of a listed vector store")
		}
		if err != nil {
			return nil, apierr.Wrap(err, "list vector stores")
		}
	}
	cmp, order := ">", "ASC"
	if desc {
		cmp, order = "<", "DESC"
		if cursor == 0 {
			cursor = 1 << 62
		}
	}
	rows, err := s.db.Query(ctx, `SELECT `+storeColumns+` FROM vector_stores s WHERE s.user_id = $1 AND s.seq `+cmp+` $2
		ORDER BY s.seq `+order+` LIMIT $3`, c.UserID, cursor, limit+1)
	if err != nil {
		return nil, apierr.Wrap(err, "list vector stores")
	}
	var out []*VectorStore
	for rows.Next() {
		v, err := scanStore(rows)
		if err != nil {
			rows.Close()
			return nil, apierr.Wrap(err, "list vector stores")
		}
		out = append(out, v)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return nil, apierr.Wrap(err, "list vector stores")
	}
	for _, v := range out {
		if err := s.fill(ctx, s.db, v); err != nil {
			return nil, apierr.Wrap(err, "list vector stores")
		}
	}
	return out, nil
}

// GetStore returns store id if c may see it.
func (s *Service) GetStore(ctx context.Context, c Caller, id string) (*VectorStore, error) {
	v, err := s.loadStore(ctx, s.db, c, id, false)
	if err != nil {
		return nil, err
	}
	if err := s.fill(ctx, s.db, v); err != nil {
		return nil, apierr.Wrap(err, "get vector store %s", id)
	}
	return v, nil
}

type modifyStoreRequest struct {
	Name         *string           `json:"name"`
	ExpiresAfter json.RawMessage   `json:"expires_after"` // null removes the policy
	Metadata     map[string]string `json:"metadata"`
}

// ModifyStore changes a store's name, expiration policy and metadata.
func (s *Service) ModifyStore(ctx context.Context, c Caller, id string, r *modifyStoreRequest) (*VectorStore, error) {
	if r.Name != nil && !validName(*r.Name) {
		return nil, apierr.Param("name", "name must be valid UTF-8 without NUL characters, of at most %d bytes", maxNameLen)
	}
	if r.Metadata != nil {
		if err := validateMetadata(r.Metadata); err != nil {
			return nil, err
		}
	}
	setExp, clearExp := false, false
	var days int
	if raw := string(r.ExpiresAfter); raw != "" {
		if raw == "null" {
			clearExp = true
		} else {
			var e expiresRequest
			if err := json.Unmarshal(r.ExpiresAfter, &e); err != nil {
				return nil, apierr.Param("expires_after", "expires_after must be an object {anchor, days} or null")
			}
			if err := e.validate(); err != nil {
				return nil, err
			}
			setExp, days = true, e.Days
		}
	}
	var v *VectorStore
	err := s.inTx(ctx, func(tx pgx.Tx) error {
		var err error
		if v, err = s.loadStore(ctx, tx, c, id, true); err != nil {
			return err
		}
		if r.Name != nil {
			if _, err := tx.Exec(ctx, `UPDATE vector_stores SET name = $2 WHERE id = $1`, id, *r.Name); err != nil {
				return err
			}
		}
		if r.Metadata != nil {
			meta, _ := json.Marshal(r.Metadata)
			if _, err := tx.Exec(ctx, `UPDATE vector_stores SET metadata = $2 WHERE id = $1`, id, meta); err != nil {
				return err
			}
		}
		if setExp || clearExp {
			var d *int
			if setExp {
				d = &days
			}
			if _, err := tx.Exec(ctx, `UPDATE vector_stores SET expires_after_days = $2, last_active_at = now() WHERE id = $1`, id, d); err != nil {
				return err
			}
		}
		if v, err = scanStore(tx.QueryRow(ctx, `SELECT `+storeColumns+` FROM vector_stores s WHERE s.id = $1`, id)); err != nil {
			return err
		}
		return s.fill(ctx, tx, v)
	})
	if err != nil {
		return nil, asAPI(err, "modify vector store %s", id)
	}
	return v, nil
}

// asAPI passes *apierr.Error through and wraps anything else as internal.
func asAPI(err error, format string, args ...any) error {
	var ae *apierr.Error
	if errors.As(err, &ae) {
		return ae
	}
	if errors.Is(err, vectorindex.ErrUnavailable) {
		return &apierr.Error{Kind: apierr.Unavailable, Message: "the vector index is unavailable; try again later",
			RetryAfter: indexRetryAfter, Err: fmt.Errorf(format+": %w", append(args, err)...)}
	}
	if code := pgCode(err); code == pgDeadlock || code == pgSerialization {
		// Lost to a concurrent change of the same store: the request may simply be sent again.
		return &apierr.Error{Kind: apierr.Unavailable, Message: "the vector store is being changed concurrently; try again",
			RetryAfter: time.Second, Err: fmt.Errorf(format+": %w", append(args, err)...)}
	}
	return apierr.Wrap(err, format, args...)
}

// PostgreSQL error codes the service tells apart.
const (
	pgSerialization  = "40001"
	pgDeadlock       = "40P01"
	pgUntranslatable = "22P05" // a character with no equivalent in the server's encoding
	pgInvalidByteSeq = "22021" // NUL or invalid UTF-8 in text
)

// pgCode is err's PostgreSQL error code ("" when it has none).
func pgCode(err error) string {
	var pg *pgconn.PgError
	if errors.As(err, &pg) {
		return pg.Code
	}
	return ""
}

// indexRetryAfter is the Retry-After of an answer refused because the vector index is
// unavailable (a remote index not connected yet).
const indexRetryAfter = 5 * time.Second

// Deleted is OpenAI's deletion answer.
type Deleted struct {
	ID      string `json:"id"`
	Object  string `json:"object"`
	Deleted bool   `json:"deleted"`
}

// DeleteStore removes a store with its files and chunks, and its vectors (now, and in a
// River job enqueued with the deletion, in case this process stops in between).
func (s *Service) DeleteStore(ctx context.Context, c Caller, id string) (*Deleted, error) {
	err := s.inTx(ctx, func(tx pgx.Tx) error {
		if _, err := s.loadStore(ctx, tx, c, id, true); err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, `DELETE FROM vector_stores WHERE id = $1`, id); err != nil {
			return err
		}
		// As for a detached file: in this transaction for the embedded index, now for an
		// external one, and again by the purge job.
		if err := s.index.DeleteStore(vectorindex.WithTx(ctx, tx), id); err != nil {
			s.log.Warn("vector store's vectors not removed yet; the purge job will", "vector_store", id, "err", err)
		}
		_, err := s.queue.InsertTx(ctx, tx, PurgeArgs{StoreID: id}, nil)
		return err
	})
	if err != nil {
		return nil, asAPI(err, "delete vector store %s", id)
	}
	s.log.Info("vector store deleted", "vector_store", id, "user_id", c.UserID)
	return &Deleted{ID: id, Object: "vector_store.deleted", Deleted: true}, nil
}
