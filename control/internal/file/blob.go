package file

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"time"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"
)

// Blobs stores file contents by key. Implementations are safe for concurrent use.
type Blobs interface {
	// Put stores what r yields under key and returns its size. When r or the store fails,
	// nothing is left under key and the error is returned as it came (an *apierr.Error from
	// r stays one).
	Put(ctx context.Context, key string, r io.Reader) (int64, error)
	// Get opens key for reading and returns its size; ErrBlobNotFound when there is none.
	Get(ctx context.Context, key string) (io.ReadCloser, int64, error)
	// Delete removes key; a key that is not there is no error.
	Delete(ctx context.Context, key string) error
	// List calls fn with every stored key and the time it was written, in no set order,
	// and stops at fn's first error.
	List(ctx context.Context, fn func(key string, written time.Time) error) error
}

// ErrBlobNotFound is Get's answer for a key that is not stored.
var ErrBlobNotFound = errors.New("file: blob not found")

// keyRE is what a blob key may look like: a file id, no path separators.
var keyRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_-]{0,127}$`)

func checkKey(key string) error {
	if !keyRE.MatchString(key) {
		return fmt.Errorf("file: invalid blob key %q", key)
	}
	return nil
}

// Dir keeps blobs as files in one local directory, created on first write. Several
// control replicas do not share it: they need the S3 store.
type Dir struct {
	Path string
}

// Put writes to a temporary file, syncs it and renames it into place.
func (d Dir) Put(_ context.Context, key string, r io.Reader) (int64, error) {
	if err := checkKey(key); err != nil {
		return 0, err
	}
	if err := os.MkdirAll(d.Path, 0o700); err != nil {
		return 0, fmt.Errorf("file: create store directory: %w", err)
	}
	tmp, err := os.CreateTemp(d.Path, ".upload-*")
	if err != nil {
		return 0, fmt.Errorf("file: create blob: %w", err)
	}
	n, err := io.Copy(tmp, r)
	if err == nil {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil && cerr != nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp.Name(), filepath.Join(d.Path, key))
	}
	if err != nil {
		os.Remove(tmp.Name())
		return 0, err
	}
	return n, nil
}

// Get opens the blob's file.
func (d Dir) Get(_ context.Context, key string) (io.ReadCloser, int64, error) {
	if err := checkKey(key); err != nil {
		return nil, 0, err
	}
	f, err := os.Open(filepath.Join(d.Path, key))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, 0, ErrBlobNotFound
	}
	if err != nil {
		return nil, 0, fmt.Errorf("file: open blob: %w", err)
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, 0, fmt.Errorf("file: stat blob: %w", err)
	}
	return f, st.Size(), nil
}

// Delete removes the blob's file.
func (d Dir) Delete(_ context.Context, key string) error {
	if err := checkKey(key); err != nil {
		return err
	}
	if err := os.Remove(filepath.Join(d.Path, key)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("file: delete blob: %w", err)
	}
	return nil
}

// List reads the directory; temporary files of uploads in progress are not keys.
func (d Dir) List(_ context.Context, fn func(string, time.Time) error) error {
	entries, err := os.ReadDir(d.Path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("file: list store directory: %w", err)
	}
	for _, e := range entries {
		if !e.Type().IsRegular() || checkKey(e.Name()) != nil {
			continue
		}
		info, err := e.Info()
		if errors.Is(err, fs.ErrNotExist) {
			continue // deleted meanwhile
		}
		if err != nil {
			return fmt.Errorf("file: list store directory: %w", err)
		}
		if err := fn(e.Name(), info.ModTime()); err != nil {
			return err
		}
	}
	return nil
}

// sweepTemp removes temporary files of uploads written before cutoff (a crash mid-upload
// leaves them behind).
func (d Dir) sweepTemp(cutoff time.Time) (int, error) {
	entries, err := os.ReadDir(d.Path)
	if errors.Is(err, fs.ErrNotExist) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("file: list store directory: %w", err)
	}
	n := 0
	for _, e := range entries {
		if !strings.HasPrefix(e.Name(), ".upload-") {
			continue
		}
		if info, err := e.Info(); err == nil && info.ModTime().Before(cutoff) {
			if err := os.Remove(filepath.Join(d.Path, e.Name())); err == nil {
				n++
			}
		}
	}
	return n, nil
}

// S3Options configure an S3-compatible store (AWS S3, MinIO, Ceph RGW, R2, …).
type S3Options struct {
	Endpoint  string // host[:port], no scheme (MAAS_FILES_S3_ENDPOINT)
	Bucket    string // must exist (MAAS_FILES_S3_BUCKET)
	Prefix    string // prepended to every key, e.g. "files/" (MAAS_FILES_S3_PREFIX)
	AccessKey string
	SecretKey string
	Region    string
	UseTLS    bool
	// PartSize is the size of each part of a multipart upload, which is also what one
	// upload holds in memory at a time (16 MiB when zero; S3's minimum is 5 MiB).
	PartSize uint64
	// Transport replaces the HTTP transport (tests: a TLS server's own client).
	Transport http.RoundTripper
}

// S3 keeps blobs as objects in a bucket of an S3-compatible store.
type S3 struct {
	c        *minio.Client
	bucket   string
	prefix   string
	partSize uint64
}

// NewS3 returns a store on o.Bucket. It does not dial: the first request does.
func NewS3(o S3Options) (*S3, error) {
	if o.Endpoint == "" || o.Bucket == "" {
		return nil, errors.New("file: S3 store needs an endpoint and a bucket")
	}
	c, err := minio.New(o.Endpoint, &minio.Options{
		Creds:     credentials.NewStaticV4(o.AccessKey, o.SecretKey, ""),
		Secure:    o.UseTLS,
		Region:    o.Region,
		Transport: o.Transport,
	})
	if err != nil {
		return nil, fmt.Errorf("file: S3 client: %w", err)
	}
	part := o.PartSize
	if part == 0 {
		part = 16 << 20
	}
	return &S3{c: c, bucket: o.Bucket, prefix: o.Prefix, partSize: part}, nil
}

// Put uploads r as one object, in parts of PartSize (its size is not known beforehand).
func (s *S3) Put(ctx context.Context, key string, r io.Reader) (int64, error) {
	if err := checkKey(key); err != nil {
		return 0, err
	}
	cr := &errKeeper{r: r}
	br := bufio.NewReader(cr)
	size := int64(-1)
	if _, err := br.Peek(1); errors.Is(err, io.EOF) {
		size = 0 // an empty file: a plain PUT (a multipart upload needs a first part)
	} else if err != nil {
		return 0, err
	}
	opts := minio.PutObjectOptions{ContentType: "application/octet-stream", PartSize: s.partSize}
	var body io.Reader = br
	if size == 0 {
		// An empty body with a streaming signature goes out chunked, without the
		// Content-Length S3 requires: sign nothing (an empty payload needs no checksum).
		body, opts.DisableContentSha256 = bytes.NewReader(nil), true
	}
	info, err := s.c.PutObject(ctx, s.bucket, s.prefix+key, body, size, opts)
	if err != nil {
		if cr.err != nil {
			return 0, cr.err // the reader's own error (a 413, a cut connection), not the client's wrapping
		}
		return 0, fmt.Errorf("file: S3 put: %w", err)
	}
	return info.Size, nil
}

// Get opens the object; its size comes from a HEAD-like stat.
func (s *S3) Get(ctx context.Context, key string) (io.ReadCloser, int64, error) {
	if err := checkKey(key); err != nil {
		return nil, 0, err
	}
	obj, err := s.c.GetObject(ctx, s.bucket, s.prefix+key, minio.GetObjectOptions{})
	if err != nil {
		return nil, 0, s3Err("get", err)
	}
	st, err := obj.Stat()
	if err != nil {
		obj.Close()
		return nil, 0, s3Err("stat", err)
	}
	return obj, st.Size, nil
}

// Delete removes the object (S3 answers success for a missing key).
func (s *S3) Delete(ctx context.Context, key string) error {
	if err := checkKey(key); err != nil {
		return err
	}
	if err := s.c.RemoveObject(ctx, s.bucket, s.prefix+key, minio.RemoveObjectOptions{}); err != nil {
		return s3Err("delete", err)
	}
	return nil
}

// List lists the objects under the store's prefix.
func (s *S3) List(ctx context.Context, fn func(string, time.Time) error) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel() // ends the listing goroutine when fn stops early
	for obj := range s.c.ListObjects(ctx, s.bucket, minio.ListObjectsOptions{Prefix: s.prefix, Recursive: true}) {
		if obj.Err != nil {
			return s3Err("list", obj.Err)
		}
		key, ok := strings.CutPrefix(obj.Key, s.prefix)
		if !ok || checkKey(key) != nil {
			continue
		}
		if err := fn(key, obj.LastModified); err != nil {
			return err
		}
	}
	return nil
}

func s3Err(op string, err error) error {
	if minio.ToErrorResponse(err).Code == minio.NoSuchKey {
		return ErrBlobNotFound
	}
	return fmt.Errorf("file: S3 %s: %w", op, err)
}

// errKeeper remembers the first error of the reader it wraps.
type errKeeper struct {
	r   io.Reader
	err error
}

func (e *errKeeper) Read(p []byte) (int, error) {
	n, err := e.r.Read(p)
	if err != nil && err != io.EOF && e.err == nil {
		e.err = err
	}
	return n, err
}

// Interface guards.
var (
	_ Blobs = Dir{}
	_ Blobs = (*S3)(nil)
)
