package file

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"time"

	"github.com/maas-platform/maas/pkg/apierr"
)

// Options configure a Service.
type Options struct {
	Blobs  Blobs
	Logger *slog.Logger
	// MaxBytes is the largest file (MAAS_FILES_MAX_BYTES): 413 beyond.
	MaxBytes int64
	// Limits bound each user's files (MAAS_FILES_MAX_COUNT, MAAS_FILES_MAX_TOTAL_BYTES).
	Limits Limits
	// Timeout bounds one upload or download, from its first header byte to its last body
	// byte (MAAS_FILES_TIMEOUT).
	Timeout time.Duration
}

// DefaultOptions are the defaults of the MAAS_FILES_* settings.
func DefaultOptions() Options {
	return Options{
		MaxBytes: 512 << 20,
		Limits:   Limits{MaxCount: 1000, MaxTotal: 10 << 30},
		Timeout:  30 * time.Minute,
	}
}

func (o *Options) validate() error {
	switch {
	case o.Blobs == nil:
		return errors.New("file: no blob store")
	case o.Logger == nil:
		return errors.New("file: no logger")
	case o.MaxBytes <= 0:
		return errors.New("file: MaxBytes must be positive")
	case o.Limits.MaxCount < 0 || o.Limits.MaxTotal < 0:
		return errors.New("file: limits must not be negative")
	case o.Timeout <= 0:
		return errors.New("file: Timeout must be positive")
	}
	return nil
}

// Service is the Files API: it owns the files table and the blob store. It is safe for
// concurrent use.
type Service struct {
	o     Options
	store store
	log   *slog.Logger
}

// New returns a Service on db.
func New(db DB, o Options) (*Service, error) {
	if err := o.validate(); err != nil {
		return nil, err
	}
	return &Service{o: o, store: store{db}, log: o.Logger}, nil
}

// Get returns file id if the caller (userID, admin) may see it; ErrNotFound otherwise,
// exactly as for a file that does not exist.
func (s *Service) Get(ctx context.Context, id string, userID int64, admin bool) (*File, error) {
	f, err := s.store.get(ctx, id)
	if err != nil {
		return nil, err
	}
	if !admin && f.UserID != userID {
		return nil, ErrNotFound
	}
	return f, nil
}

// Open returns f's content and size. The caller closes it.
func (s *Service) Open(ctx context.Context, f *File) (io.ReadCloser, int64, error) {
	rc, n, err := s.o.Blobs.Get(ctx, f.StorageKey)
	if errors.Is(err, ErrBlobNotFound) {
		return nil, 0, fmt.Errorf("file %s: content missing from the store: %w", f.ID, err)
	}
	return rc, n, err
}

// Delete removes file id if the caller may see it: its row, then its content.
func (s *Service) Delete(ctx context.Context, id string, userID int64, admin bool) error {
	if _, err := s.Get(ctx, id, userID, admin); err != nil {
		return err
	}
	f, err := s.store.delete(ctx, id)
	if err != nil {
		return err
	}
	if err := s.o.Blobs.Delete(ctx, f.StorageKey); err != nil {
		// The row is gone, so the file is deleted for every caller; the orphan blob is logged.
		s.log.Warn("file deleted but its content could not be removed", "file_id", f.ID, "storage_key", f.StorageKey, "err", err)
	}
	return nil
}

// Upload is one file to store.
type Upload struct {
	UserID   int64
	Filename string
	Purpose  string
	Content  io.Reader // read to its end; a read error (e.g. a 413 from the body) aborts
}

// checkUser refuses an upload up front when its owner is already at a limit (the insert
// checks again, atomically, once the size is known).
func (s *Service) checkUser(ctx context.Context, userID int64) error {
	u, err := s.store.usage(ctx, s.store.db, userID)
	if err != nil {
		return apierr.Wrap(err, "file usage")
	}
	return s.limitError(u, 0)
}

func (s *Service) limitError(u Usage, adding int64) error {
	lim := s.o.Limits
	if lim.MaxCount > 0 && u.Count >= lim.MaxCount {
		return &apierr.Error{Kind: apierr.InvalidRequest, Code: "files_limit_reached",
			Message: fmt.Sprintf("you have %d files, the most a user may keep (MAAS_FILES_MAX_COUNT); delete some before uploading more", u.Count)}
	}
	if lim.MaxTotal > 0 && u.Bytes+adding > lim.MaxTotal {
		return &apierr.Error{Kind: apierr.TooLarge, Code: "files_storage_limit_reached",
			Message: fmt.Sprintf("this upload would take your files to %d bytes, past the per-user limit of %d bytes (MAAS_FILES_MAX_TOTAL_BYTES); delete some files first", u.Bytes+adding, lim.MaxTotal)}
	}
	return nil
}

// Create stores up's content, checks a fine-tune dataset, and records the file. Nothing
// is left behind when it fails.
func (s *Service) Create(ctx context.Context, up Upload) (*File, error) {
	if err := checkPurpose(up.Purpose); err != nil {
		return nil, err
	}
	f, err := s.stage(ctx, up.UserID, up.Content)
	if err != nil {
		return nil, err
	}
	f.Filename, f.Purpose = up.Filename, up.Purpose
	if err := s.commit(ctx, f); err != nil {
		s.discard(ctx, f)
		return nil, err
	}
	return f, nil
}

// CreateOutput records content the platform produced for a user, under one of
// OutputPurposes. Such files do not count against the user's upload limits (a finished job
// must not fail because its owner's storage is full), but still obey MAAS_FILES_MAX_BYTES.
func (s *Service) CreateOutput(ctx context.Context, up Upload) (*File, error) {
	if !slices.Contains(OutputPurposes, up.Purpose) {
		return nil, fmt.Errorf("file: %q is not an output purpose", up.Purpose)
	}
	f, err := s.stage(ctx, up.UserID, up.Content)
	if err != nil {
		return nil, err
	}
	f.Filename, f.Purpose = up.Filename, up.Purpose
	if err := s.store.insert(ctx, f, Limits{}); err != nil {
		s.discard(ctx, f)
		return nil, apierr.Wrap(err, "record file")
	}
	return f, nil
}

func checkPurpose(p string) error {
	if !slices.Contains(Purposes, p) {
		return apierr.Param("purpose", "purpose must be one of fine-tune, batch, assistants, user_data (got %q)", p)
	}
	return nil
}

// stage stores content under a new file id; the file exists only once commit records it.
// A staged file that is not committed must be discarded.
func (s *Service) stage(ctx context.Context, userID int64, content io.Reader) (*File, error) {
	id := NewID()
	f := &File{ID: id, Object: "file", UserID: userID, StorageKey: id, Status: "processed"}
	body := &capped{r: content, limit: s.o.MaxBytes}
	n, err := s.o.Blobs.Put(ctx, f.StorageKey, body)
	if err != nil {
		var ae *apierr.Error
		switch {
		case errors.As(err, &ae):
			return nil, ae
		case body.err != nil:
			// The client's side failed (cut connection, timeout): not the store's fault.
			return nil, &apierr.Error{Kind: apierr.InvalidRequest, Param: "file", Message: "the upload could not be read to its end", Err: body.err}
		}
		return nil, apierr.Wrap(err, "store file")
	}
	f.Bytes = n
	return f, nil
}

// discard removes a staged file's content.
func (s *Service) discard(ctx context.Context, f *File) {
	if err := s.o.Blobs.Delete(context.WithoutCancel(ctx), f.StorageKey); err != nil {
		s.log.Warn("could not remove the content of a refused upload", "storage_key", f.StorageKey, "err", err)
	}
}

// commit checks a staged file (a fine-tune dataset's format, its owner's limits) and
// records it.
func (s *Service) commit(ctx context.Context, f *File) error {
	if f.Purpose == "fine-tune" {
		if err := s.checkDataset(ctx, f); err != nil {
			return err
		}
	}
	err := s.store.insert(ctx, f, s.o.Limits)
	if errors.Is(err, ErrLimit) {
		u, uerr := s.store.usage(ctx, s.store.db, f.UserID)
		if uerr != nil {
			return apierr.Wrap(uerr, "file usage")
		}
		if lerr := s.limitError(u, f.Bytes); lerr != nil {
			return lerr
		}
		return apierr.New(apierr.Conflict, "a concurrent upload reached your file limit; try again")
	}
	if err != nil {
		return apierr.Wrap(err, "record file")
	}
	return nil
}

// checkDataset reads a fine-tune file back from the store and checks it; the examples and
// token estimate are recorded on f.
func (s *Service) checkDataset(ctx context.Context, f *File) error {
	rc, _, err := s.o.Blobs.Get(ctx, f.StorageKey)
	if err != nil {
		return apierr.Wrap(err, "read back file %s", f.ID)
	}
	defer rc.Close()
	d, err := CheckDataset(rc)
	var le *LineError
	if errors.As(err, &le) {
		return &apierr.Error{Kind: apierr.InvalidRequest, Param: "file", Code: "invalid_file_format",
			Message: "invalid fine-tune dataset " + f.Filename + ": " + le.Error()}
	}
	if err != nil {
		return apierr.Wrap(err, "check file %s", f.ID)
	}
	ex := int32(min(d.Examples, 1<<31-1))
	f.Examples, f.Tokens = &ex, &d.Tokens
	return nil
}

// capped fails with a 413 once more than limit bytes are read, and keeps the first error
// of the reader it wraps.
type capped struct {
	r     io.Reader
	n     int64
	limit int64
	err   error
}

func (c *capped) Read(p []byte) (int, error) {
	if rest := c.limit + 1 - c.n; int64(len(p)) > rest {
		p = p[:rest]
	}
	n, err := c.r.Read(p)
	if err != nil && err != io.EOF && c.err == nil {
		c.err = err
	}
	c.n += int64(n)
	if c.n > c.limit {
		return n - int(c.n-c.limit), &apierr.Error{Kind: apierr.TooLarge, Code: "file_too_large", Param: "file",
			Message: fmt.Sprintf("file is larger than %d bytes, the most one file may have (MAAS_FILES_MAX_BYTES)", c.limit)}
	}
	return n, err
}

// NewID returns a fresh file id: "file-" and 26 random characters.
func NewID() string { return "file-" + rand.Text() }
