package proxy

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/valyala/fasthttp"

	"github.com/maas-platform/maas/gateway/internal/snapshot"
	"github.com/maas-platform/maas/gateway/internal/upstream"
	"github.com/maas-platform/maas/pkg/apikey"
)

const adapterName = "ft:m:tuned:ftjob-1"

// fakeHook is control's demand hook: it counts calls, may hold them until release is
// closed, and answers p or err.
type fakeHook struct {
	calls   atomic.Int32
	release chan struct{} // nil: answer at once
	p       Placement
	err     error
}

func (f *fakeHook) Demand(ctx context.Context, model string) (Placement, error) {
	f.calls.Add(1)
	if f.release != nil {
		select {
		case <-f.release:
		case <-ctx.Done():
			return Placement{}, ctx.Err()
		}
	}
	if f.err != nil {
		return Placement{}, f.err
	}
	p := f.p
	p.Model = model
	return p, nil
}

func placeable() Placement {
	return Placement{BaseModel: "m", LoadedOn: []string{}, PlaceableOn: []string{"b0"}}
}

// adapterRig serves a Handler in front of one backend b0 serving the base model "m"; the
// registry also has the adapter adapterName of base "m", which no backend serves until
// load() swaps in a snapshot where b0 lists it.
type adapterRig struct {
	url     string
	pool    *upstream.Pool
	reg     *prometheus.Registry
	backend *fakeBackend
	load    func()
}

func newAdapterRig(t *testing.T, hook AdapterHook, tweak func(*upstream.Options, *Options)) *adapterRig {
	t.Helper()
	be := &fakeBackend{handle: func(w http.ResponseWriter, body []byte) {
		if string(member(body, "stream")) == "true" {
			streamer(2)(w, body)
			return
		}
		unary(w, body)
	}}
	srv := &http.Server{Handler: be}
	bl, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(bl)
	t.Cleanup(func() { srv.Close() })
	build := func(models ...string) *snapshot.Snapshot {
		now := time.Now()
		b := snapshot.NewBuilder(now)
		b.AddUser(&snapshot.User{ID: 1, Username: "u", Active: true, Roles: []string{"user"}})
		b.AddKey(apikey.Sum([]byte(testKey)), &snapshot.Key{ID: 10, UserID: 1})
		b.AddModel(&snapshot.Model{Name: adapterName, Enabled: true, MaxOutputTokens: 100, BaseModel: "m"})
		b.AddModel(&snapshot.Model{Name: "lonely", Enabled: true, MaxOutputTokens: 100}) // served by none, no adapter
		b.AddBackend(snapshot.Backend{ID: "b0", URL: "http://" + bl.Addr().String(), Models: models, Capacity: 100, Weight: 100,
			State: "healthy", HeartbeatInterval: time.Hour, Load: snapshot.Load{ID: "b0", State: "healthy", ReadAt: now}})
		return b.Build()
	}
	po := upstream.DefaultOptions()
	o := DefaultOptions()
	o.Adapters = hook
	reg := prometheus.NewRegistry()
	o.Registerer = reg
	if tweak != nil {
		tweak(&po, &o)
	}
	pool, err := upstream.New(po)
	if err != nil {
		t.Fatal(err)
	}
	snaps := &swapSnapshots{}
	swap := func(s *snapshot.Snapshot) {
		snaps.p.Store(s)
		pool.Sync(s)
	}
	swap(build("m"))
	o.Snapshots, o.Pool = snaps, pool
	h, err := New(o)
	if err != nil {
		t.Fatal(err)
	}
	fs := &fasthttp.Server{Handler: h.ChatCompletions}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go fs.Serve(ln)
	t.Cleanup(func() { fs.Shutdown() })
	return &adapterRig{url: "http://" + ln.Addr().String(), pool: pool, reg: reg, backend: be,
		load: func() { swap(build("m", adapterName)) }}
}

type swapSnapshots struct {
	p atomic.Pointer[snapshot.Snapshot]
}

func (s *swapSnapshots) Current() *snapshot.Snapshot { return s.p.Load() }

func (r *adapterRig) post(t *testing.T, model string) (*http.Response, map[string]any) {
	return r.postBody(t, `{"model":"`+model+`","messages":[{"role":"user","content":"hello"}]}`)
}

func (r *adapterRig) postBody(t *testing.T, body string) (*http.Response, map[string]any) {
	t.Helper()
	req, _ := http.NewRequest("POST", r.url+"/v1/chat/completions", strings.NewReader(body))
	req.Header.Set("Authorization", "Bearer "+testKey)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Error(err)
		return nil, nil
	}
	defer resp.Body.Close()
	var out map[string]any
	if resp.Header.Get("Content-Type") == "text/event-stream" {
		b, _ := io.ReadAll(resp.Body)
		return resp, map[string]any{"stream": string(b)}
	}
	_ = json.NewDecoder(resp.Body).Decode(&out)
	return resp, out
}

func errCode(out map[string]any) string {
	e, _ := out["error"].(map[string]any)
	c, _ := e["code"].(string)
	return c
}

// waitQueued waits until n requests wait in the pool (their adapter being loaded).
func waitQueued(t *testing.T, p *upstream.Pool, n int64) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for p.QueueDepth() != n {
		if time.Now().After(deadline) {
			t.Fatalf("queue depth %d, want %d", p.QueueDepth(), n)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

func waits(r *adapterRig, result string) float64 {
	mfs, _ := r.reg.Gather()
	for _, mf := range mfs {
		if mf.GetName() != "maas_gateway_adapter_waits_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			if m.GetLabel()[0].GetValue() == result {
				return m.GetCounter().GetValue()
			}
		}
	}
	return 0
}

func TestAdapterLoadedOnDemandWakesOnSwap(t *testing.T) {
	hook := &fakeHook{p: placeable()}
	r := newAdapterRig(t, hook, nil)
	done := make(chan *http.Response, 1)
	go func() {
		resp, _ := r.post(t, adapterName)
		done <- resp
	}()
	waitQueued(t, r.pool, 1) // the request waits for the adapter…
	select {
	case resp := <-done:
		t.Fatalf("answered %d before any backend served the adapter", resp.StatusCode)
	default:
	}
	r.load() // …until a snapshot shows a backend serving it
	resp := <-done
	if resp == nil || resp.StatusCode != 200 {
		t.Fatalf("answer %v, want 200", resp)
	}
	if got := string(member(r.backend.last(), "model")); got != `"`+adapterName+`"` {
		t.Errorf("backend got model %s", got)
	}
	if n := hook.calls.Load(); n != 1 {
		t.Errorf("%d hook calls, want 1", n)
	}
	if waits(r, "loaded") != 1 {
		t.Errorf("loaded waits %v, want 1", waits(r, "loaded"))
	}
	// Served now: the next request goes straight through, no hook call.
	if resp, _ := r.post(t, adapterName); resp == nil || resp.StatusCode != 200 {
		t.Fatalf("second request: %v", resp)
	}
	if n := hook.calls.Load(); n != 1 {
		t.Errorf("%d hook calls after the adapter loaded, want 1", n)
	}
	if r.pool.QueueDepth() != 0 {
		t.Errorf("queue depth %d after", r.pool.QueueDepth())
	}
}

func TestAdapterLoadedOnDemandStreamed(t *testing.T) {
	hook := &fakeHook{p: placeable()}
	r := newAdapterRig(t, hook, nil)
	type answer struct {
		resp *http.Response
		out  map[string]any
	}
	done := make(chan answer, 1)
	go func() {
		resp, out := r.postBody(t, `{"model":"`+adapterName+`","stream":true,"messages":[{"role":"user","content":"hello"}]}`)
		done <- answer{resp, out}
	}()
	waitQueued(t, r.pool, 1)
	r.load()
	a := <-done
	if a.resp == nil || a.resp.StatusCode != 200 {
		t.Fatalf("answer %v, want 200", a.resp)
	}
	if s, _ := a.out["stream"].(string); !strings.Contains(s, "data: [DONE]") {
		t.Errorf("stream %q", s)
	}
}

func TestAdapterDemandsCoalesce(t *testing.T) {
	hook := &fakeHook{p: placeable(), release: make(chan struct{})}
	r := newAdapterRig(t, hook, nil)
	const n = 50
	var wg sync.WaitGroup
	statuses := make(chan int, n)
	for range n {
		wg.Go(func() {
			if resp, _ := r.post(t, adapterName); resp != nil {
				statuses <- resp.StatusCode
			}
		})
	}
	// All 50 reach the hook's call in flight before it answers.
	deadline := time.Now().Add(5 * time.Second)
	for hook.calls.Load() == 0 && time.Now().Before(deadline) {
		time.Sleep(2 * time.Millisecond)
	}
	close(hook.release)
	waitQueued(t, r.pool, n)
	r.load()
	wg.Wait()
	close(statuses)
	for s := range statuses {
		if s != 200 {
			t.Errorf("status %d, want 200", s)
		}
	}
	if c := hook.calls.Load(); c != 1 {
		t.Errorf("%d hook calls for %d concurrent requests, want 1", c, n)
	}
}

func TestAdapterLoadTimeout(t *testing.T) {
	for _, tc := range []struct {
		name          string
		load, request time.Duration
		wantAtMost    time.Duration
	}{
		{"setting", 300 * time.Millisecond, time.Minute, 3 * time.Second},
		{"request deadline", time.Minute, 300 * time.Millisecond, 3 * time.Second},
	} {
		t.Run(tc.name, func(t *testing.T) {
			hook := &fakeHook{p: placeable()}
			r := newAdapterRig(t, hook, func(_ *upstream.Options, o *Options) {
				o.AdapterLoadTimeout, o.RequestTimeout = tc.load, tc.request
			})
			start := time.Now()
			resp, out := r.post(t, adapterName)
			took := time.Since(start)
			if resp == nil || resp.StatusCode != 503 || errCode(out) != "adapter_load_timeout" {
				t.Fatalf("answer %v %v, want 503 adapter_load_timeout", resp, out)
			}
			if resp.Header.Get("Retry-After") == "" {
				t.Error("no Retry-After")
			}
			if took < 300*time.Millisecond || took > tc.wantAtMost {
				t.Errorf("answered after %v", took)
			}
			if r.pool.QueueDepth() != 0 {
				t.Errorf("queue depth %d after", r.pool.QueueDepth())
			}
		})
	}
}

func TestAdapterWaitEndsWhenClientLeaves(t *testing.T) {
	hook := &fakeHook{p: placeable()}
	r := newAdapterRig(t, hook, nil)
	conn, err := net.Dial("tcp", strings.TrimPrefix(r.url, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	body := `{"model":"` + adapterName + `","messages":[{"role":"user","content":"hello"}]}`
	w := bufio.NewWriter(conn)
	w.WriteString("POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + testKey +
		"\r\nContent-Type: application/json\r\nContent-Length: " + itoa(len(body)) + "\r\n\r\n" + body)
	w.Flush()
	waitQueued(t, r.pool, 1)
	conn.Close()
	waitQueued(t, r.pool, 0) // the wait ended: the 30 s bound is far
	deadline := time.Now().Add(5 * time.Second)
	for waits(r, "client_gone") != 1 {
		if time.Now().After(deadline) {
			t.Fatalf("client_gone waits %v, want 1", waits(r, "client_gone"))
		}
		time.Sleep(2 * time.Millisecond)
	}
}

func TestAdapterRefusedAtOnce(t *testing.T) {
	for _, tc := range []struct {
		name     string
		hook     *fakeHook
		model    string
		status   int
		code     string
		hookCall int32
	}{
		{"not placeable", &fakeHook{p: Placement{BaseModel: "m", LoadedOn: []string{}, PlaceableOn: []string{}}}, adapterName, 503, "adapter_not_placeable", 1},
		{"loaded only where unhealthy", &fakeHook{p: Placement{BaseModel: "m", LoadedOn: []string{"b9"}, PlaceableOn: []string{}}}, adapterName, 503, "adapter_not_placeable", 1},
		{"not an adapter for control", &fakeHook{err: errNotAdapter}, adapterName, 404, "model_not_found", 1},
		{"control fails", &fakeHook{err: context.DeadlineExceeded}, adapterName, 503, "adapter_not_loaded", 1},
		{"ordinary model: no hook", &fakeHook{p: placeable()}, "lonely", 503, "no_backend", 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := newAdapterRig(t, tc.hook, nil)
			for i := range 2 { // the second within demandEvery reuses the answer
				start := time.Now()
				resp, out := r.post(t, tc.model)
				if resp == nil || resp.StatusCode != tc.status || errCode(out) != tc.code {
					t.Fatalf("request %d: answer %v %v, want %d %s", i, resp, out, tc.status, tc.code)
				}
				if took := time.Since(start); took > 2*time.Second {
					t.Errorf("request %d answered after %v", i, took)
				}
			}
			if c := tc.hook.calls.Load(); c != tc.hookCall {
				t.Errorf("%d hook calls, want %d", c, tc.hookCall)
			}
		})
	}
}

// TestControlHook checks the demand hook's request (internal token, body) and how it
// reads control's answers.
func TestControlHook(t *testing.T) {
	var status atomic.Int32
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var body struct{ Model string }
		_ = json.NewDecoder(r.Body).Decode(&body)
		if r.Method != "POST" || r.URL.Path != "/internal/v1/adapters/demand" || r.Header.Get("Authorization") != "Bearer tok" || body.Model != adapterName {
			w.WriteHeader(400)
			return
		}
		w.WriteHeader(int(status.Load()))
		w.Write([]byte(`{"model":"` + adapterName + `","base_model":"m","loaded_on":[],"placeable_on":["b0","b1"]}`))
	})}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	cc, err := newControlClient("http://"+ln.Addr().String(), time.Second)
	if err != nil {
		t.Fatal(err)
	}
	hook := controlHook{c: cc, token: "tok"}
	ctx := context.Background()
	status.Store(200)
	p, err := hook.Demand(ctx, adapterName)
	if err != nil || p.BaseModel != "m" || len(p.PlaceableOn) != 2 {
		t.Errorf("200: %+v %v", p, err)
	}
	status.Store(404)
	if _, err := hook.Demand(ctx, adapterName); !errors.Is(err, errNotAdapter) {
		t.Errorf("404: %v, want errNotAdapter", err)
	}
	status.Store(500)
	if _, err := hook.Demand(ctx, adapterName); err == nil || errors.Is(err, errNotAdapter) {
		t.Errorf("500: %v", err)
	}
	if _, err := (controlHook{c: cc, token: "wrong"}).Demand(ctx, adapterName); err == nil {
		t.Error("a refused token gave no error")
	}
}
