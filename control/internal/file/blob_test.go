package file

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net/http/httptest"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/johannesboyne/gofakes3"
	"github.com/johannesboyne/gofakes3/backend/s3mem"

	"github.com/maas-platform/maas/pkg/apierr"
)

// newFakeS3 is an S3 store on an in-process gofakes3 server with one bucket.
func newFakeS3(t *testing.T, partSize uint64) *S3 {
	t.Helper()
	backend := s3mem.New()
	if err := backend.CreateBucket("maas-files"); err != nil {
		t.Fatal(err)
	}
	// TLS, as S3 is used in production: over plain HTTP minio-go signs each chunk of a part
	// (aws-chunked), which gofakes3 stores without decoding.
	srv := httptest.NewTLSServer(gofakes3.New(backend).Server())
	t.Cleanup(srv.Close)
	s, err := NewS3(S3Options{Endpoint: strings.TrimPrefix(srv.URL, "https://"), Bucket: "maas-files", Prefix: "files/",
		AccessKey: "test", SecretKey: "test-secret", Region: "us-east-1", PartSize: partSize, UseTLS: true,
		Transport: srv.Client().Transport})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// stores are the Blobs implementations the same behaviour suite runs against.
func stores(t *testing.T) map[string]Blobs {
	return map[string]Blobs{
		"dir": Dir{Path: t.TempDir() + "/files"},
		"s3":  newFakeS3(t, 5<<20),
	}
}

// failingReader yields n bytes, then err.
type failingReader struct {
	n   int
	err error
}

func (f *failingReader) Read(p []byte) (int, error) {
	if f.n == 0 {
		return 0, f.err
	}
	k := min(len(p), f.n)
	for i := range p[:k] {
		p[i] = 'x'
	}
	f.n -= k
	return k, nil
}

func readBlob(t *testing.T, b Blobs, key string) ([]byte, error) {
	t.Helper()
	rc, n, err := b.Get(context.Background(), key)
	if err != nil {
		return nil, err
	}
	defer rc.Close()
	got, err := io.ReadAll(rc)
	if err != nil {
		t.Fatal(err)
	}
	if int64(len(got)) != n {
		t.Errorf("Get said %d bytes, read %d", n, len(got))
	}
	return got, nil
}

func TestBlobs(t *testing.T) {
	ctx := context.Background()
	for name, b := range stores(t) {
		t.Run(name, func(t *testing.T) {
			t.Run("round trip", func(t *testing.T) {
				for _, size := range []int{0, 1, 100 << 10, 11 << 20} { // 11 MiB: three S3 parts
					want := bytes.Repeat([]byte("abcdefg\n"), size/8+1)[:size]
					key := NewID()
					n, err := b.Put(ctx, key, bytes.NewReader(want))
					if err != nil || n != int64(size) {
						t.Fatalf("Put %d bytes: %d, %v", size, n, err)
					}
					got, err := readBlob(t, b, key)
					if err != nil || !bytes.Equal(got, want) {
						t.Fatalf("Get after Put of %d bytes: %d bytes, %v", size, len(got), err)
					}
				}
			})
			t.Run("missing", func(t *testing.T) {
				if _, _, err := b.Get(ctx, NewID()); !errors.Is(err, ErrBlobNotFound) {
					t.Errorf("Get of a missing key: %v, want ErrBlobNotFound", err)
				}
				if err := b.Delete(ctx, NewID()); err != nil {
					t.Errorf("Delete of a missing key: %v", err)
				}
			})
			t.Run("delete", func(t *testing.T) {
				key := NewID()
				if _, err := b.Put(ctx, key, strings.NewReader("hello")); err != nil {
					t.Fatal(err)
				}
				if err := b.Delete(ctx, key); err != nil {
					t.Fatal(err)
				}
				if _, err := readBlob(t, b, key); !errors.Is(err, ErrBlobNotFound) {
					t.Errorf("Get after Delete: %v, want ErrBlobNotFound", err)
				}
			})
			t.Run("failed reader leaves nothing", func(t *testing.T) {
				for _, size := range []int{10, 6 << 20} { // within the first part, and after it
					key := NewID()
					cause := apierr.New(apierr.TooLarge, "too large")
					_, err := b.Put(ctx, key, &failingReader{n: size, err: cause})
					var ae *apierr.Error
					if !errors.As(err, &ae) || ae.Kind != apierr.TooLarge {
						t.Errorf("Put with a reader failing after %d bytes: %v, want the reader's 413", size, err)
					}
					if _, err := readBlob(t, b, key); !errors.Is(err, ErrBlobNotFound) {
						t.Errorf("after a failed Put of %d bytes, Get: %v, want ErrBlobNotFound", size, err)
					}
				}
			})
			t.Run("list", func(t *testing.T) {
				gone, kept := NewID(), NewID()
				for _, key := range []string{gone, kept} {
					if _, err := b.Put(ctx, key, strings.NewReader(key)); err != nil {
						t.Fatal(err)
					}
				}
				if err := b.Delete(ctx, gone); err != nil {
					t.Fatal(err)
				}
				seen := map[string]time.Time{}
				if err := b.List(ctx, func(key string, written time.Time) error {
					seen[key] = written
					return nil
				}); err != nil {
					t.Fatal(err)
				}
				if _, ok := seen[gone]; ok {
					t.Errorf("deleted key %s is listed", gone)
				}
				if w, ok := seen[kept]; !ok || time.Since(w) > time.Minute || time.Until(w) > time.Minute {
					t.Errorf("key %s listed %v (written %v)", kept, ok, w)
				}
				stop := errors.New("stop")
				if err := b.List(ctx, func(string, time.Time) error { return stop }); !errors.Is(err, stop) {
					t.Errorf("List did not stop at fn's error: %v", err)
				}
			})
			t.Run("bad keys", func(t *testing.T) {
				for _, key := range []string{"", "../etc/passwd", "a/b", ".hidden"} {
					if _, err := b.Put(ctx, key, strings.NewReader("x")); err == nil {
						t.Errorf("Put accepted key %q", key)
					}
				}
			})
		})
	}
}

func TestDirLeavesNoTemporaryFiles(t *testing.T) {
	d := Dir{Path: t.TempDir()}
	if _, err := d.Put(context.Background(), NewID(), &failingReader{n: 100, err: io.ErrUnexpectedEOF}); err == nil {
		t.Fatal("Put of a failing reader succeeded")
	}
	if _, err := d.Put(context.Background(), NewID(), strings.NewReader("ok")); err != nil {
		t.Fatal(err)
	}
	entries, _ := osReadDir(d.Path)
	if len(entries) != 1 {
		t.Errorf("directory holds %v, want only the stored blob", entries)
	}
}

func osReadDir(dir string) ([]string, error) {
	entries, err := os.ReadDir(dir)
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	return names, err
}
