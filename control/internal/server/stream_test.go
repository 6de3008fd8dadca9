package server

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net/http"
	"testing"
	"time"
)

// ctxReader reads data while its context lives, as an S3 object's reader does.
type ctxReader struct {
	ctx    context.Context
	r      io.Reader
	closed chan struct{}
}

func (c *ctxReader) Read(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	return c.r.Read(p[:min(len(p), 1024)])
}

func (c *ctxReader) Close() error { close(c.closed); return nil }

// TestStreamBody: the body is read after the handler returns, on a context that lives
// until fasthttp closes the body, and ends then.
func TestStreamBody(t *testing.T) {
	s := newTestServer(t)
	data := bytes.Repeat([]byte("blob "), 100_000)
	opened := make(chan *ctxReader, 1)
	s.HandleWith("GET", "/blob", Authenticated, RouteOptions{Timeout: time.Minute}, func(c *Call) error {
		return c.StreamBody("application/x-test", func(ctx context.Context) (io.ReadCloser, int64, error) {
			r := &ctxReader{ctx: ctx, r: bytes.NewReader(data), closed: make(chan struct{})}
			opened <- r
			return r, int64(len(data)), nil
		})
	})
	s.Handle("GET", "/missing", Authenticated, func(c *Call) error {
		return c.StreamBody("application/x-test", func(context.Context) (io.ReadCloser, int64, error) {
			return nil, 0, errors.New("no such blob")
		})
	})
	url := startTestServer(t, s)

	resp, err := http.Get(url + "/blob")
	if err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil || !bytes.Equal(got, data) || resp.Header.Get("Content-Type") != "application/x-test" {
		t.Fatalf("read %d of %d bytes (%v), content type %q", len(got), len(data), err, resp.Header.Get("Content-Type"))
	}
	r := <-opened
	select {
	case <-r.closed:
	case <-time.After(10 * time.Second):
		t.Fatal("the body was not closed")
	}
	if r.ctx.Err() == nil {
		t.Error("the body's context outlives its close")
	}

	resp, err = http.Get(url + "/missing")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 500 {
		t.Errorf("a failed open: status %d, want 500", resp.StatusCode)
	}
}
