package proxy

import (
	"bytes"
	"crypto/sha256"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/valyala/fasthttp"

	"github.com/maas-platform/maas/gateway/internal/snapshot"
	"github.com/maas-platform/maas/gateway/internal/upstream"
	"github.com/maas-platform/maas/pkg/apikey"
	"github.com/maas-platform/maas/pkg/linger"
)

type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// A forwarded upload reaches control whole, chunked or not, with its bytes counted; the
// answer comes back streamed; each forwarded request gets its metrics and one access log
// line with the caller's identity, written once its answer has been sent.
func TestForwardStreamsAndAccounts(t *testing.T) {
	var got [32]byte
	var gotN int64
	ctl := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := sha256.New()
		gotN, _ = io.Copy(h, r.Body)
		copy(got[:], h.Sum(nil))
		w.Header().Set("Content-Type", "application/octet-stream")
		w.WriteHeader(201)
		for range 64 { // 4 MiB answer, written in pieces
			w.Write(bytes.Repeat([]byte("z"), 64<<10))
		}
	}))
	t.Cleanup(ctl.Close)

	b := snapshot.NewBuilder(time.Now())
	b.AddUser(&snapshot.User{ID: 7, Username: "u", Active: true})
	b.AddKey(apikey.Sum([]byte(testKey)), &snapshot.Key{ID: 70, UserID: 7, Scopes: apikey.Inference})
	pool, err := upstream.New(upstream.DefaultOptions())
	if err != nil {
		t.Fatal(err)
	}
	var logs lockedBuffer
	reg := prometheus.NewRegistry()
	o := DefaultOptions()
	o.Snapshots, o.Pool, o.Registerer = fakeSnapshots{b.Build()}, pool, reg
	o.AccessLog, o.AccessLogOut = true, &logs
	o.ControlURL, o.InternalToken = ctl.URL, "internal-token-0123456789"
	o.MaxBodyBytes, o.FilesMaxBytes = 1<<20, 8<<20
	h, err := New(o)
	if err != nil {
		t.Fatal(err)
	}
	srv := &fasthttp.Server{Handler: h.Forward, StreamRequestBody: true, DisablePreParseMultipartForm: true, MaxRequestBodySize: 1 << 20}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(linger.Listen(ln)) // as the gateway's server: a refused upload's answer is read
	t.Cleanup(func() { srv.Shutdown() })
	base := "http://" + ln.Addr().String()

	body := bytes.Repeat([]byte("0123456789abcdef"), 3<<16) // 3 MiB: over MaxBodyBytes, within the file limit
	want := sha256.Sum256(body)
	for _, chunked := range []bool{false, true} {
		var rd io.Reader = bytes.NewReader(body)
		if chunked {
			rd = io.MultiReader(rd) // no length: sent chunked
		}
		req, _ := http.NewRequest("POST", base+"/v1/files", rd)
		req.Header.Set("Authorization", "Bearer "+testKey)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		n, _ := io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 201 || n != 4<<20 || gotN != int64(len(body)) || got != want {
			t.Errorf("chunked=%v: status %d, answer %d bytes; control got %d bytes, same content %v",
				chunked, resp.StatusCode, n, gotN, got == want)
		}
	}
	// Past the file limit, and another route past MaxBodyBytes: 413 before control.
	for _, tc := range []struct {
		path string
		size int
	}{{"/v1/files", 10 << 20}, {"/v1/fine_tuning/jobs", 2 << 20}} { // the file limit + 1 MiB of multipart framing; MaxBodyBytes
		gotN = -1
		req, _ := http.NewRequest("POST", base+tc.path, bytes.NewReader(make([]byte, tc.size)))
		req.Header.Set("Authorization", "Bearer "+testKey)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 300))
		resp.Body.Close()
		if resp.StatusCode != 413 || gotN != -1 {
			t.Errorf("%s with %d bytes: %d %s (control reached: %v)", tc.path, tc.size, resp.StatusCode, b, gotN != -1)
		}
	}

	deadline := time.Now().Add(2 * time.Second)
	for strings.Count(logs.String(), "\n") < 4 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	lines := strings.Split(strings.TrimSpace(logs.String()), "\n")
	if len(lines) != 4 || !strings.Contains(lines[0], "endpoint=/v1/files") || !strings.Contains(lines[0], "status=201") ||
		!strings.Contains(lines[0], "user_id=7") || !strings.Contains(lines[0], "key_id=70") ||
		!strings.Contains(lines[3], "endpoint=/v1/fine_tuning/jobs") || !strings.Contains(lines[3], "status=413") {
		t.Errorf("access log:\n%s", logs.String())
	}
	if v := testutil.ToFloat64(h.m.fwdRequests.WithLabelValues("/v1/files", "201")); v != 2 {
		t.Errorf("forwarded /v1/files 201 = %v, want 2", v)
	}
	if v := testutil.ToFloat64(h.m.fwdBytes.WithLabelValues("in")); v != float64(2*len(body)) {
		t.Errorf("forwarded bytes in = %v, want %d", v, 2*len(body))
	}
	if v := testutil.ToFloat64(h.m.fwdBytes.WithLabelValues("out")); v < 8<<20 {
		t.Errorf("forwarded bytes out = %v, want ≥ %d", v, 8<<20)
	}
}
