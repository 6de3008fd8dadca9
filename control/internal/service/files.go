package service

import (
	"context"
	"log/slog"
	"path/filepath"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/maas-platform/maas/control/internal/file"
	"github.com/maas-platform/maas/pkg/config"
)

// FilesOptions configure the Files API (/v1/files) and its blob store.
type FilesOptions struct {
	// Dir is the local store's directory (MAAS_FILES_DIR), used unless S3 is configured.
	Dir string
	// MaxBytes is the largest file (MAAS_FILES_MAX_BYTES).
	MaxBytes int
	// MaxCount is how many files one user may keep (MAAS_FILES_MAX_COUNT, 0: no limit).
	MaxCount int
	// MaxTotalBytes is how many bytes one user's files may hold together
	// (MAAS_FILES_MAX_TOTAL_BYTES, 0: no limit).
	MaxTotalBytes int
	// Timeout bounds one upload or download (MAAS_FILES_TIMEOUT).
	Timeout time.Duration
	// SweepInterval is how often stored content that no file names is removed
	// (MAAS_FILES_SWEEP_INTERVAL, 0: never).
	SweepInterval time.Duration
	// S3 selects the S3-compatible store when S3.Endpoint is set (MAAS_FILES_S3_*).
	S3 file.S3Options
}

func bindFiles(l *config.Loader, o *FilesOptions) {
	d := file.DefaultOptions()
	l.String(&o.Dir, "MAAS_FILES_DIR", "files-dir", filepath.Join(".data", "control", "files"), "directory of uploaded files (the local store; several control replicas need the S3 store)")
	l.Int(&o.MaxBytes, "MAAS_FILES_MAX_BYTES", "files-max-bytes", int(d.MaxBytes), "largest file /v1/files accepts, in bytes (413 beyond)")
	l.Int(&o.MaxCount, "MAAS_FILES_MAX_COUNT", "files-max-count", d.Limits.MaxCount, "files one user may keep (0: no limit)")
	l.Int(&o.MaxTotalBytes, "MAAS_FILES_MAX_TOTAL_BYTES", "files-max-total-bytes", int(d.Limits.MaxTotal), "bytes one user's files may hold together (0: no limit)")
	l.Duration(&o.Timeout, "MAAS_FILES_TIMEOUT", "files-timeout", d.Timeout, "time allowed for one file upload or download")
	l.Duration(&o.SweepInterval, "MAAS_FILES_SWEEP_INTERVAL", "files-sweep-interval", time.Hour, "how often stored content that no file names (owner deleted, upload cut by a crash) is removed; 0: never")
	l.String(&o.S3.Endpoint, "MAAS_FILES_S3_ENDPOINT", "files-s3-endpoint", "", "host[:port] of an S3-compatible store for files (empty: the local directory)")
	l.String(&o.S3.Bucket, "MAAS_FILES_S3_BUCKET", "files-s3-bucket", "", "bucket of the S3 store (must exist)")
	l.String(&o.S3.Prefix, "MAAS_FILES_S3_PREFIX", "files-s3-prefix", "files/", "prefix of every object key in the S3 store")
	l.String(&o.S3.Region, "MAAS_FILES_S3_REGION", "files-s3-region", "", "region of the S3 store (empty: the store's default)")
	l.String(&o.S3.AccessKey, "MAAS_FILES_S3_ACCESS_KEY", "files-s3-access-key", "", "access key of the S3 store")
	l.Secret(&o.S3.SecretKey, "MAAS_FILES_S3_SECRET_KEY", "files-s3-secret-key", "", "secret key of the S3 store")
	l.Bool(&o.S3.UseTLS, "MAAS_FILES_S3_USE_TLS", "files-s3-use-tls", true, "HTTPS to the S3 store")
}

func (o FilesOptions) validate() error {
	switch {
	case o.MaxBytes <= 0:
		return &config.Error{Name: "MAAS_FILES_MAX_BYTES", Msg: "must be a positive number of bytes"}
	case o.MaxCount < 0:
		return &config.Error{Name: "MAAS_FILES_MAX_COUNT", Msg: "must not be negative"}
	case o.MaxTotalBytes < 0:
		return &config.Error{Name: "MAAS_FILES_MAX_TOTAL_BYTES", Msg: "must not be negative"}
	case o.Timeout <= 0:
		return &config.Error{Name: "MAAS_FILES_TIMEOUT", Msg: "must be a positive duration"}
	case o.SweepInterval < 0:
		return &config.Error{Name: "MAAS_FILES_SWEEP_INTERVAL", Msg: "must not be negative"}
	case o.S3.Endpoint != "" && o.S3.Bucket == "":
		return &config.Error{Name: "MAAS_FILES_S3_BUCKET", Msg: "is required with MAAS_FILES_S3_ENDPOINT"}
	case o.S3.Endpoint == "" && o.Dir == "":
		return &config.Error{Name: "MAAS_FILES_DIR", Msg: "is empty (and no S3 store is configured)"}
	}
	return nil
}

// newFiles builds the Files API on its configured store.
func newFiles(pool *pgxpool.Pool, o FilesOptions, log *slog.Logger) (*file.Service, error) {
	fo := file.DefaultOptions()
	fo.Logger = log
	if o.MaxBytes > 0 {
		fo.MaxBytes = int64(o.MaxBytes)
	}
	if o.Timeout > 0 {
		fo.Timeout = o.Timeout
	}
	fo.Limits = file.Limits{MaxCount: o.MaxCount, MaxTotal: int64(o.MaxTotalBytes)}
	if o.S3.Endpoint != "" {
		s3, err := file.NewS3(o.S3)
		if err != nil {
			return nil, err
		}
		fo.Blobs = s3
	} else {
		dir := o.Dir
		if dir == "" {
			dir = filepath.Join(".data", "control", "files")
		}
		fo.Blobs = file.Dir{Path: dir}
	}
	return file.New(pool, fo)
}

// startFileSweeper runs the files sweep every MAAS_FILES_SWEEP_INTERVAL on its own handle
// of the store (the routes have theirs) until the returned stop is called.
func startFileSweeper(pool *pgxpool.Pool, o FilesOptions, log *slog.Logger) (stop func(), err error) {
	if o.SweepInterval <= 0 {
		return func() {}, nil
	}
	files, err := newFiles(pool, o, log)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		files.RunSweeper(ctx, o.SweepInterval)
	}()
	return func() { cancel(); <-done }, nil
}
