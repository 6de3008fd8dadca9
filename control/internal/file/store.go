package file

import (
	"context"
	"errors"
	"fmt"
	"regexp"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
)

// DB is what this package needs of PostgreSQL; *pgxpool.Pool satisfies it.
type DB interface {
	Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error)
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
	Begin(ctx context.Context) (pgx.Tx, error)
}

var _ DB = (*pgxpool.Pool)(nil)

// Sentinel errors.
var (
	ErrNotFound = errors.New("file: not found")
	// ErrLimit reports an upload that would take its owner past a per-user limit.
	ErrLimit = errors.New("file: per-user limit reached")
)

// Purposes a file may be uploaded for.
var Purposes = []string{"fine-tune", "batch", "assistants", "user_data"}

// OutputPurposes are the purposes of files the platform writes for a user (a fine-tuning
// job's metrics, a batch's results), as OpenAI names them. They cannot be uploaded; they
// are listed, read and deleted like any file.
var OutputPurposes = []string{"fine-tune-results", "batch_output"}

// File is a stored file as OpenAI's Files API shows it.
type File struct {
	ID        string `json:"id"`
	Object    string `json:"object"`
	Bytes     int64  `json:"bytes"`
	CreatedAt int64  `json:"created_at"`
	Filename  string `json:"filename"`
	Purpose   string `json:"purpose"`
	Status    string `json:"status"`
	// ExpiresAt is null: files are kept until deleted.
	ExpiresAt *int64 `json:"expires_at"`
	// StatusDetails is null (kept for OpenAI's shape; problems are refused at upload).
	StatusDetails *string `json:"status_details"`

	// Fine-tune datasets only: training examples and estimated tokens (not in OpenAI's
	// shape; the fine-tuning service reads them).
	Examples *int32 `json:"examples,omitempty"`
	Tokens   *int64 `json:"tokens,omitempty"`

	UserID     int64  `json:"-"`
	StorageKey string `json:"-"`
	seq        int64
}

const fileColumns = `seq, id, user_id, filename, purpose, bytes, storage_key, status, lines, tokens, created_at`

func scanFile(row pgx.Row) (*File, error) {
	f := &File{Object: "file"}
	var created time.Time
	err := row.Scan(&f.seq, &f.ID, &f.UserID, &f.Filename, &f.Purpose, &f.Bytes, &f.StorageKey, &f.Status,
		&f.Examples, &f.Tokens, &created)
	if err != nil {
		return nil, err
	}
	f.CreatedAt = created.Unix()
	return f, nil
}

// Limits bound what one user may store.
type Limits struct {
	MaxCount int   // files (0: no limit)
	MaxTotal int64 // bytes over all their files (0: no limit)
}

// Usage is what a user stores now.
type Usage struct {
	Count int
	Bytes int64
}

type store struct{ db DB }

// usage counts userID's files and bytes.
func (s store) usage(ctx context.Context, q interface {
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}, userID int64) (Usage, error) {
	var u Usage
	err := q.QueryRow(ctx, `SELECT count(*), coalesce(sum(bytes), 0) FROM files WHERE user_id = $1`, userID).Scan(&u.Count, &u.Bytes)
	return u, err
}

// insert adds f unless its owner would pass lim; the check and the insert hold the owner's
// advisory lock, so concurrent uploads of one user cannot both slip under a limit.
func (s store) insert(ctx context.Context, f *File, lim Limits) error {
	tx, err := s.db.Begin(ctx)
	if err != nil {
		return fmt.Errorf("insert file: %w", err)
	}
	defer tx.Rollback(ctx)
	if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock(hashtextextended('maas.files', $1))`, f.UserID); err != nil {
		return fmt.Errorf("insert file: lock: %w", err)
	}
	u, err := s.usage(ctx, tx, f.UserID)
	if err != nil {
		return fmt.Errorf("insert file: usage: %w", err)
	}
	if lim.MaxCount > 0 && u.Count+1 > lim.MaxCount || lim.MaxTotal > 0 && u.Bytes+f.Bytes > lim.MaxTotal {
		return ErrLimit
	}
	row := tx.QueryRow(ctx, `INSERT INTO files (id, user_id, filename, purpose, bytes, storage_key, status, lines, tokens)
		VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) RETURNING `+fileColumns,
		f.ID, f.UserID, f.Filename, f.Purpose, f.Bytes, f.StorageKey, f.Status, f.Examples, f.Tokens)
	got, err := scanFile(row)
	if err != nil {
		return fmt.Errorf("insert file: %w", err)
	}
	*f = *got
	return tx.Commit(ctx)
}

// idRE is what a file id looks like (the table's CHECK): anything else names no file, and
// is not sent to PostgreSQL (which refuses invalid UTF-8 and NUL bytes).
var idRE = regexp.MustCompile(`^file-[A-Za-z0-9]{8,64}$`)

// get returns file id.
func (s store) get(ctx context.Context, id string) (*File, error) {
	if !idRE.MatchString(id) {
		return nil, ErrNotFound
	}
	f, err := scanFile(s.db.QueryRow(ctx, `SELECT `+fileColumns+` FROM files WHERE id = $1`, id))
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, ErrNotFound
	}
	if err != nil {
		return nil, fmt.Errorf("get file %s: %w", id, err)
	}
	return f, nil
}

// ListQuery selects a page of one user's files.
type ListQuery struct {
	UserID  int64
	Purpose string // "" = every purpose
	After   string // file id of the cursor ("" = from the start)
	Limit   int
	Asc     bool // oldest first (default newest first)
}

// list returns up to q.Limit+1 files (the extra one says there are more).
func (s store) list(ctx context.Context, q ListQuery) ([]*File, error) {
	var afterSeq *int64
	if q.After != "" {
		if !idRE.MatchString(q.After) {
			return nil, ErrNotFound
		}
		var seq int64
		err := s.db.QueryRow(ctx, `SELECT seq FROM files WHERE id = $1 AND user_id = $2`, q.After, q.UserID).Scan(&seq)
		if errors.Is(err, pgx.ErrNoRows) {
			return nil, ErrNotFound
		}
		if err != nil {
			return nil, fmt.Errorf("list files: cursor: %w", err)
		}
		afterSeq = &seq
	}
	cmp, order := "<", "DESC"
	if q.Asc {
		cmp, order = ">", "ASC"
	}
	rows, err := s.db.Query(ctx, `SELECT `+fileColumns+` FROM files
		WHERE user_id = $1 AND ($2 = '' OR purpose = $2) AND ($3::BIGINT IS NULL OR seq `+cmp+` $3)
		ORDER BY seq `+order+` LIMIT $4`, q.UserID, q.Purpose, afterSeq, q.Limit+1)
	if err != nil {
		return nil, fmt.Errorf("list files: %w", err)
	}
	out, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (*File, error) { return scanFile(r) })
	if err != nil {
		return nil, fmt.Errorf("list files: %w", err)
	}
	return out, nil
}

// delete removes file id's row and returns it (ErrNotFound when it is not there).
func (s store) delete(ctx context.Context, id string) (*File, error) {
	if !idRE.MatchString(id) {
		return nil, ErrNotFound
	}
	f, err := scanFile(s.db.QueryRow(ctx, `DELETE FROM files WHERE id = $1 RETURNING `+fileColumns, id))
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, ErrNotFound
	}
	if err != nil {
		return nil, fmt.Errorf("delete file %s: %w", id, err)
	}
	return f, nil
}

// knownKeys reports which of keys a file row names.
func (s store) knownKeys(ctx context.Context, keys []string) (map[string]bool, error) {
	rows, err := s.db.Query(ctx, `SELECT storage_key FROM files WHERE storage_key = ANY($1)`, keys)
	if err != nil {
		return nil, fmt.Errorf("known keys: %w", err)
	}
	found, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return nil, fmt.Errorf("known keys: %w", err)
	}
	out := make(map[string]bool, len(found))
	for _, k := range found {
		out[k] = true
	}
	return out, nil
}
