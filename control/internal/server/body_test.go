package server

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/valyala/fasthttp"

	"github.com/maas-platform/maas/pkg/apikey"
)

type allowAll struct{}

func (allowAll) Authenticate(context.Context, *fasthttp.Request) (*Principal, error) {
	return &Principal{UserID: 1, Scopes: apikey.AllScopes}, nil
}

// startTestServer serves s on a loopback port until the test ends.
func startTestServer(t *testing.T, s *Server) string {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	addrc := make(chan string, 1)
	done := make(chan error, 1)
	go func() { done <- s.Serve(ctx, time.Second, func(a string) { addrc <- a }) }()
	t.Cleanup(func() { cancel(); <-done })
	select {
	case a := <-addrc:
		return "http://" + a
	case err := <-done:
		t.Fatalf("serve: %v", err)
	}
	return ""
}

func newTestServer(t *testing.T) *Server {
	t.Helper()
	o := DefaultOptions()
	o.Addr = "127.0.0.1:0"
	o.InternalToken = "t"
	o.Logger = slog.New(slog.DiscardHandler)
	o.Registry = prometheus.NewRegistry()
	o.Auth = allowAll{}
	s, err := New(o)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// TestRouteBodyLimits: an ordinary route reads at most MaxBodySize whatever the framing
// (chunked bodies included); a streaming route reads past it up to its own limit, without
// the body being read before its handler.
func TestRouteBodyLimits(t *testing.T) {
	s := newTestServer(t)
	s.Handle("POST", "/small", Authenticated, func(c *Call) error {
		return c.JSON(200, map[string]int{"n": len(c.RC.PostBody())})
	})
	s.HandleWith("POST", "/big", Authenticated, RouteOptions{MaxBody: 3 << 20, Stream: true, Timeout: time.Minute},
		func(c *Call) error {
			if c.BodyStream() == nil {
				t.Errorf("the streaming route has no body stream")
			}
			n, err := io.Copy(io.Discard, c.BodyStream())
			if err != nil {
				return err
			}
			return c.JSON(200, map[string]int64{"n": n})
		})
	url := startTestServer(t, s)

	tests := []struct {
		name    string
		path    string
		size    int
		chunked bool
		status  int
	}{
		{"small fits", "/small", 1 << 20, false, 200},
		{"small too large", "/small", 1<<20 + 1, false, 413},
		{"small chunked too large", "/small", 2 << 20, true, 413},
		{"small chunked fits", "/small", 100 << 10, true, 200},
		{"big fits", "/big", 3 << 20, false, 200},
		{"big chunked fits", "/big", 3 << 20, true, 200},
		{"big too large", "/big", 3<<20 + 1, false, 413},
		{"big chunked too large", "/big", 4 << 20, true, 413},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var body io.Reader = bytes.NewReader(bytes.Repeat([]byte("x"), tt.size))
			if tt.chunked {
				body = io.MultiReader(body) // hides the length: chunked encoding
			}
			req, _ := http.NewRequest("POST", url+tt.path, body)
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			b, _ := io.ReadAll(resp.Body)
			if resp.StatusCode != tt.status {
				t.Fatalf("status %d %s, want %d", resp.StatusCode, b, tt.status)
			}
			if tt.status == 200 {
				var got struct{ N int }
				if json.Unmarshal(b, &got) != nil || got.N != tt.size {
					t.Errorf("handler read %s, want n=%d", b, tt.size)
				}
			} else if !strings.Contains(string(b), "request_too_large") {
				t.Errorf("body %s", b)
			}
		})
	}
}

func TestWideRouteMatch(t *testing.T) {
	w := wideRoute{method: "GET", segs: strings.Split("/v1/files/{id}/content", "/")}
	for path, want := range map[string]bool{
		"/v1/files/file-1/content":     true,
		"/v1/files/file-1/content?a=b": true,
		"/v1/files//content":           false,
		"/v1/files/file-1":             false,
		"/v1/files/file-1/content/x":   false,
		"/v1/files/a/b/content":        false,
		"/v1/file/file-1/content":      false,
	} {
		if got := w.match([]byte("GET"), []byte(path)); got != want {
			t.Errorf("match(%q) = %v, want %v", path, got, want)
		}
	}
	if w.match([]byte("POST"), []byte("/v1/files/x/content")) {
		t.Error("matched another method")
	}
}
