package proxy

import (
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"

	"github.com/maas-platform/maas/gateway/internal/upstream"
)

// headerBackend answers like an engine and keeps the headers of the last request.
type headerBackend struct {
	mu   sync.Mutex
	last http.Header
}

func (b *headerBackend) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	_, _ = io.ReadAll(r.Body)
	b.mu.Lock()
	b.last = r.Header.Clone()
	b.mu.Unlock()
	unary(w, nil)
}

func (b *headerBackend) headers() http.Header {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.last
}

// postWith posts body with extra client headers and returns the status and response headers.
func (r *rig) postWith(t *testing.T, body string, hdr map[string]string) (int, http.Header) {
	t.Helper()
	req, _ := http.NewRequest("POST", r.url+"/v1/chat/completions", strings.NewReader(body))
	req.Header.Set("Authorization", "Bearer "+testKey)
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	_, _ = io.ReadAll(resp.Body)
	return resp.StatusCode, resp.Header
}

func TestHeadersToBackendsAreAllowListed(t *testing.T) {
	client := map[string]string{
		"X-Sim-Fail": "500", "X-Sim-Hang": "1", "X-Foo": "bar", "X-Maas-User-Id": "1", "X-Forwarded-For": "1.2.3.4",
		"Cookie": "c=1", "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01", "tracestate": "congo=t61rcWkgMzE",
	}
	t.Run("default", func(t *testing.T) {
		be := &headerBackend{}
		r := newRig(t, be)
		if st, _ := r.postWith(t, `{"model":"m","messages":[]}`, client); st != 200 {
			t.Fatalf("status %d", st)
		}
		got := be.headers()
		for _, name := range []string{"X-Sim-Fail", "X-Sim-Hang", "X-Foo", "X-Maas-User-Id", "X-Forwarded-For", "Cookie", "Authorization"} {
			if v := got.Get(name); v != "" {
				t.Errorf("backend received %s: %q", name, v)
			}
		}
		for _, name := range []string{"traceparent", "tracestate"} {
			if v := got.Get(name); v != client[name] {
				t.Errorf("backend received %s %q, want %q", name, v, client[name])
			}
		}
	})
	t.Run("configured extra", func(t *testing.T) {
		be := &headerBackend{}
		r := newRigWith(t, func(_ *upstream.Options, o *Options) { o.ForwardHeaders = []string{" x-foo "} }, be)
		if st, _ := r.postWith(t, `{"model":"m","messages":[]}`, client); st != 200 {
			t.Fatalf("status %d", st)
		}
		if v := be.headers().Get("X-Foo"); v != "bar" {
			t.Errorf("X-Foo %q, want bar", v)
		}
		if v := be.headers().Get("X-Sim-Fail"); v != "" {
			t.Errorf("X-Sim-Fail reached the backend: %q", v)
		}
	})
	t.Run("refused names", func(t *testing.T) {
		for _, name := range []string{"Authorization", "x-request-id", "X-Maas-Roles", "Host", "bad header", "Content-Length"} {
			o := DefaultOptions()
			o.Snapshots, o.Pool = fakeSnapshots{}, &upstream.Pool{}
			o.ForwardHeaders = []string{name}
			if _, err := New(o); err == nil {
				t.Errorf("%q accepted", name)
			}
		}
	})
}

func TestRequestIDsAreOursAndUnique(t *testing.T) {
	be := &headerBackend{}
	r := newRig(t, be)
	const n = 50
	seen := map[string]bool{}
	for i := range n {
		hdr := map[string]string{"X-Request-Id": "client-id-" + itoa(i%3)}
		if i == 0 {
			hdr["X-Request-Id"] = "bad id with spaces"
		}
		st, resp := r.postWith(t, `{"model":"m","messages":[]}`, hdr)
		if st != 200 {
			t.Fatalf("status %d", st)
		}
		id := resp.Get("X-Request-Id")
		if id == "" || strings.HasPrefix(id, "client-id") || seen[id] {
			t.Fatalf("response id %q (client sent %q; seen before: %v)", id, hdr["X-Request-Id"], seen[id])
		}
		seen[id] = true
		if got := be.headers().Get("X-Request-Id"); got != id {
			t.Errorf("backend got request id %q, want ours %q", got, id)
		}
	}
	recs := r.rec.wait(t, n)
	for i, rec := range recs {
		if !seen[rec.RequestID] {
			t.Errorf("record %d: request id %q was not sent to the client", i, rec.RequestID)
		}
		want := "client-id-" + itoa(i%3)
		if i == 0 {
			want = "" // not sane: not kept
		}
		if rec.ClientRequestID != want {
			t.Errorf("record %d: client request id %q, want %q", i, rec.ClientRequestID, want)
		}
	}
	// Another process (another Handler) never shares the prefix.
	be2 := &headerBackend{}
	r2 := newRig(t, be2)
	_, resp := r2.postWith(t, `{"model":"m","messages":[]}`, nil)
	other := resp.Get("X-Request-Id")
	prefix := func(id string) string { return id[:strings.LastIndexByte(id, '-')] }
	if prefix(other) == prefix(recs[0].RequestID) {
		t.Errorf("two handlers share the id prefix %q", prefix(other))
	}
}
