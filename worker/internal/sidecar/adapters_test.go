package sidecar

import (
	"archive/tar"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/maas-platform/maas/pkg/registry"
	"github.com/maas-platform/maas/worker/internal/engine"
)

type tarEntry struct {
	name string
	typ  byte
	body string
	link string
}

func makeTar(t *testing.T, entries ...tarEntry) []byte {
	t.Helper()
	var b bytes.Buffer
	tw := tar.NewWriter(&b)
	for _, e := range entries {
		h := &tar.Header{Name: e.name, Typeflag: e.typ, Mode: 0o644, Size: int64(len(e.body)), Linkname: e.link}
		if e.typ != tar.TypeReg {
			h.Size = 0
		}
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		if e.typ == tar.TypeReg {
			_, _ = tw.Write([]byte(e.body))
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

func peftTar(t *testing.T) []byte {
	return makeTar(t,
		tarEntry{name: "adapter_config.json", typ: tar.TypeReg, body: `{"peft_type":"LORA","r":8}`},
		tarEntry{name: "adapter_model.safetensors", typ: tar.TypeReg, body: "weights"},
		tarEntry{name: "checkpoint/", typ: tar.TypeDir},
		tarEntry{name: "checkpoint/state.json", typ: tar.TypeReg, body: "{}"},
	)
}

func TestExtractTarRefusesEscapes(t *testing.T) {
	tests := []struct {
		name    string
		entries []tarEntry
		max     int64
		want    string
	}{
		{"parent", []tarEntry{{name: "../evil", typ: tar.TypeReg, body: "x"}}, 1 << 20, "leaves the adapter directory"},
		{"nested parent", []tarEntry{{name: "a/../../evil", typ: tar.TypeReg, body: "x"}}, 1 << 20, "leaves the adapter directory"},
		{"absolute", []tarEntry{{name: "/tmp/evil", typ: tar.TypeReg, body: "x"}}, 1 << 20, "absolute"},
		{"symlink", []tarEntry{{name: "link", typ: tar.TypeSymlink, link: "/etc/passwd"}}, 1 << 20, "links and special files"},
		{"hard link", []tarEntry{{name: "link", typ: tar.TypeLink, link: "adapter_config.json"}}, 1 << 20, "links and special files"},
		{"too big", []tarEntry{{name: "a", typ: tar.TypeReg, body: "0123456789"}, {name: "b", typ: tar.TypeReg, body: "0123456789"}}, 15, "exceeds MAAS_ADAPTER_MAX_BYTES"},
		{"duplicate", []tarEntry{{name: "a", typ: tar.TypeReg, body: "x"}, {name: "./a", typ: tar.TypeReg, body: "y"}}, 1 << 20, "exists"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			root := t.TempDir()
			dir := filepath.Join(root, "adapter")
			if err := os.Mkdir(dir, 0o755); err != nil {
				t.Fatal(err)
			}
			err := extractTar(bytes.NewReader(makeTar(t, tt.entries...)), dir, tt.max)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("err %v, want %q", err, tt.want)
			}
			if _, err := os.Stat(filepath.Join(root, "evil")); err == nil {
				t.Fatal("a file was written outside the adapter directory")
			}
		})
	}
	dir := t.TempDir()
	if err := extractTar(bytes.NewReader(peftTar(t)), dir, 1<<20); err != nil {
		t.Fatal(err)
	}
	if b, err := os.ReadFile(filepath.Join(dir, "checkpoint", "state.json")); err != nil || string(b) != "{}" {
		t.Fatalf("extracted: %q %v", b, err)
	}
}

// adapterControl is a fake control that answers heartbeats with a desired set and serves
// adapter archives; at each heartbeat it notes which adapters the simulator holds.
type adapterControl struct {
	t        *testing.T
	mu       sync.Mutex
	url      string // the engine's, from the registration
	desired  []registry.DesiredAdapter
	archives map[string][]byte // by archive URL
	beats    []adapterBeat
	fetches  int
}

type adapterBeat struct {
	hb        registry.HeartbeatRequest
	models    []string // the served models reported so far
	simLoaded []string // adapters in the simulator when the heartbeat arrived
}

func (f *adapterControl) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Header.Get("Authorization") != "Bearer tok-0123456789abcdef" {
		w.WriteHeader(401)
		return
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	switch {
	case r.URL.Path == "/internal/v1/backends/register":
		var reg registry.RegisterRequest
		_ = json.NewDecoder(r.Body).Decode(&reg)
		f.url = reg.URL
		f.beats = append(f.beats, adapterBeat{models: reg.Models})
		_, _ = w.Write([]byte(`{"id":"b1"}`))
	case strings.HasSuffix(r.URL.Path, "/heartbeat"):
		var hb registry.HeartbeatRequest
		_ = json.NewDecoder(r.Body).Decode(&hb)
		models := f.beats[len(f.beats)-1].models
		if hb.Models != nil {
			models = hb.Models
		}
		f.beats = append(f.beats, adapterBeat{hb: hb, models: models, simLoaded: simLoRAs(f.t, f.url)})
		d := f.desired
		_ = json.NewEncoder(w).Encode(registry.Backend{ID: "b1", DesiredAdapters: &d})
	case r.Method == "GET" && f.archives[r.URL.Path] != nil:
		f.fetches++
		_, _ = w.Write(f.archives[r.URL.Path])
	case strings.HasSuffix(r.URL.Path, "/deregister"):
		w.WriteHeader(204)
	default:
		w.WriteHeader(404)
	}
}

// simLoRAs lists the adapters the simulator at url serves (its /v1/models entries with a
// parent).
func simLoRAs(t *testing.T, url string) []string {
	resp, err := http.Get(url + "/v1/models")
	if err != nil {
		t.Errorf("sim models: %v", err)
		return nil
	}
	defer resp.Body.Close()
	var l struct {
		Data []struct {
			ID     string  `json:"id"`
			Parent *string `json:"parent"`
		} `json:"data"`
	}
	_ = json.NewDecoder(resp.Body).Decode(&l)
	out := []string{}
	for _, m := range l.Data {
		if m.Parent != nil {
			out = append(out, m.ID)
		}
	}
	slices.Sort(out)
	return out
}

func (f *adapterControl) set(d ...registry.DesiredAdapter) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.desired = d
}

// waitBeat waits for a heartbeat from index from on that satisfies cond and returns its
// index.
func (f *adapterControl) waitBeat(t *testing.T, from int, what string, cond func(adapterBeat) bool) int {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for seen := from; ; {
		f.mu.Lock()
		for ; seen < len(f.beats); seen++ {
			if f.beats[seen].hb.State != "" && cond(f.beats[seen]) {
				f.mu.Unlock()
				return seen
			}
		}
		f.mu.Unlock()
		if time.Now().After(deadline) {
			t.Fatalf("no heartbeat with %s in 10s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func desired(name, job string) registry.DesiredAdapter {
	return registry.DesiredAdapter{Name: name, BaseModel: "sim-chat", Version: job, ArchiveURL: "/internal/v1/fine_tuning/jobs/" + job + "/adapter"}
}

func chat(t *testing.T, url, model string) int {
	t.Helper()
	resp, err := http.Post(url+"/v1/chat/completions", "application/json",
		strings.NewReader(`{"model":"`+model+`","messages":[{"role":"user","content":"hi"}],"max_tokens":2}`))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode == 200 && !strings.Contains(string(b), `"model":"`+model+`"`) {
		t.Errorf("answer for %s: %s", model, b)
	}
	return resp.StatusCode
}

// TestAdaptersFollowControl runs the worker with the simulator against a fake control:
// adapters are fetched, loaded, served and reported as control places them, unloaded only
// after a heartbeat stopped listing them, bounded by the engine's slots; a malicious
// archive is refused.
func TestAdaptersFollowControl(t *testing.T) {
	const a, b, c, evil = "ft:sim-chat:a:ftjob-aaaaaaaa", "ft:sim-chat:b:ftjob-bbbbbbbb", "ft:sim-chat:c:ftjob-cccccccc", "ft:sim-chat:e:ftjob-eeeeeeee"
	fc := &adapterControl{t: t, archives: map[string][]byte{
		desired(a, "ftjob-aaaaaaaa").ArchiveURL: peftTar(t),
		desired(b, "ftjob-bbbbbbbb").ArchiveURL: peftTar(t),
		desired(c, "ftjob-cccccccc").ArchiveURL: peftTar(t),
		desired(evil, "ftjob-eeeeeeee").ArchiveURL: makeTar(t, tarEntry{name: "adapter_config.json", typ: tar.TypeReg, body: "{}"},
			tarEntry{name: "../../escaped", typ: tar.TypeReg, body: "x"}),
	}}
	fc.set(desired(a, "ftjob-aaaaaaaa"))
	srv := httptest.NewServer(fc)
	defer srv.Close()

	root := t.TempDir()
	o := DefaultOptions()
	o.Addr, o.ControlURL, o.InternalToken, o.BackendID = "127.0.0.1:0", srv.URL, "tok-0123456789abcdef", "b1"
	o.HeartbeatInterval, o.DrainGrace = 50*time.Millisecond, time.Second
	o.Sim, o.EngineKind = true, registry.KindSim
	o.SimOptions.Addr, o.SimOptions.MaxLoRAs = "127.0.0.1:0", 2
	o.AdapterCacheDir = filepath.Join(root, "cache")
	o.Logger = slog.New(slog.NewTextHandler(t.Output(), nil))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- Run(ctx, o) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	}()

	// Placed: fetched, loaded, reported as loaded and served.
	i := fc.waitBeat(t, 0, a+" loaded", func(x adapterBeat) bool {
		return slices.Equal(x.hb.Adapters, []string{a}) && slices.Contains(x.models, a) && x.hb.AdapterSlots == 2
	})
	fc.mu.Lock()
	url := fc.url
	fc.mu.Unlock()
	if st := chat(t, url, a); st != 200 {
		t.Fatalf("chat with %s: %d", a, st)
	}

	// Moved: a is replaced by b and c. a leaves the served models while the engine still
	// holds it (gateways stop first), then it is unloaded; the slots (2) are never exceeded.
	fc.set(desired(b, "ftjob-bbbbbbbb"), desired(c, "ftjob-cccccccc"))
	i = fc.waitBeat(t, i, a+" no longer served", func(x adapterBeat) bool { return !slices.Contains(x.models, a) })
	fc.mu.Lock()
	if got := fc.beats[i].simLoaded; !slices.Contains(got, a) {
		t.Errorf("%s unloaded before a heartbeat stopped listing it (engine holds %v)", a, got)
	}
	fc.mu.Unlock()
	i = fc.waitBeat(t, i, b+" and "+c+" loaded", func(x adapterBeat) bool {
		return slices.Equal(x.hb.Adapters, []string{b, c}) && slices.Contains(x.models, b) && slices.Contains(x.models, c)
	})
	if st := chat(t, url, a); st != 404 {
		t.Errorf("chat with the unloaded %s: %d", a, st)
	}
	if st := chat(t, url, c); st != 200 {
		t.Errorf("chat with %s: %d", c, st)
	}

	// A malicious archive is refused: nothing escapes the cache, the adapter is not served.
	fc.set(desired(evil, "ftjob-eeeeeeee"))
	i = fc.waitBeat(t, i, "all unloaded", func(x adapterBeat) bool { return len(x.hb.Adapters) == 0 && len(x.simLoaded) == 0 })
	waitUntil(t, "the refused archive fetched", func() bool {
		fc.mu.Lock()
		defer fc.mu.Unlock()
		return fc.fetches >= 4
	})
	fc.waitBeat(t, i+1, "a heartbeat after the refusal", func(x adapterBeat) bool { return true })
	if _, err := os.Stat(filepath.Join(root, "escaped")); err == nil {
		t.Fatal("the archive wrote outside the cache")
	}
	fc.mu.Lock()
	if x := fc.beats[len(fc.beats)-1]; len(x.hb.Adapters) != 0 || slices.Contains(x.models, evil) {
		t.Errorf("the refused adapter is reported: %+v", x)
	}
	fc.mu.Unlock()
	for _, x := range fc.beats {
		if len(x.simLoaded) > 2 {
			t.Errorf("engine held %v, more than its 2 slots", x.simLoaded)
		}
	}

	// Nothing placed: the cache holds no adapter.
	fc.set()
	waitUntil(t, "an empty cache", func() bool {
		entries, _ := os.ReadDir(o.AdapterCacheDir)
		return len(entries) == 0
	})
}

func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// fakeLoRA is a hand fake of loraEngine.
type fakeLoRA struct {
	mu     sync.Mutex
	loaded map[string]string
	loads  int
	fail   error
	// onUnload, when set, runs inside UnloadLoRA (the engine lock not held) and gives its error.
	onUnload func() error
}

func (e *fakeLoRA) LoadLoRA(_ context.Context, name, path string) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.loads++
	if e.fail != nil {
		return e.fail
	}
	if _, err := os.Stat(filepath.Join(path, adapterConfig)); err != nil {
		return err
	}
	e.loaded[name] = path
	return nil
}

func (e *fakeLoRA) LoRAs(context.Context) (map[string]string, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	out := map[string]string{}
	for k, v := range e.loaded {
		out[k] = v
	}
	return out, nil
}

func (e *fakeLoRA) UnloadLoRA(_ context.Context, name string) error {
	if e.onUnload != nil {
		if err := e.onUnload(); err != nil {
			return err
		}
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	delete(e.loaded, name)
	return nil
}

// TestAdapterSyncUnloadRacesForget: the heartbeat forgets every adapter (the engine
// restarted) while an unload is under way, and the new engine answers that it does not
// hold the adapter. The syncer must neither crash on the forgotten entry nor lose track.
func TestAdapterSyncUnloadRacesForget(t *testing.T) {
	eng := &fakeLoRA{loaded: map[string]string{}}
	archive := peftTar(t)
	fetch := func(context.Context, string) (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(archive)), nil
	}
	a := newAdapterSync(eng, fetch, t.TempDir(), 1<<20, 2, 0, slog.New(slog.DiscardHandler))
	ctx := context.Background()
	d := desired("ft:x", "ftjob-xxxxxxxx")
	if !a.apply(ctx, []registry.DesiredAdapter{d}) {
		t.Fatal("not loaded")
	}
	dir := a.cacheDir(d)
	eng.onUnload = func() error {
		a.Forget()
		return fmt.Errorf("unload LoRA adapter ft:x: %w", engine.ErrLoRANotLoaded)
	}
	a.apply(ctx, nil) // panicked on the nil entry
	if got := a.Held(); len(got) != 0 {
		t.Errorf("held %v", got)
	}
	if _, err := os.Stat(dir); err == nil {
		t.Error("the unloaded adapter's cache is kept")
	}
}

func TestAdapterSyncRestartAndBackoff(t *testing.T) {
	eng := &fakeLoRA{loaded: map[string]string{}}
	fetches := 0
	archive := peftTar(t)
	fetch := func(_ context.Context, url string) (io.ReadCloser, error) {
		fetches++
		return io.NopCloser(bytes.NewReader(archive)), nil
	}
	a := newAdapterSync(eng, fetch, t.TempDir(), 1<<20, 2, 0, slog.New(slog.DiscardHandler))
	now := time.Unix(1000, 0)
	a.now = func() time.Time { return now }
	ctx := context.Background()
	d := desired("ft:x", "ftjob-xxxxxxxx")

	if !a.apply(ctx, []registry.DesiredAdapter{d}) || eng.loaded["ft:x"] == "" || fetches != 1 {
		t.Fatalf("first apply: engine %v, fetches %d", eng.loaded, fetches)
	}
	if a.apply(ctx, []registry.DesiredAdapter{d}) || eng.loads != 1 {
		t.Fatalf("a second apply changed something: loads %d", eng.loads)
	}
	// The engine restarts empty: after Forget the adapter is loaded again, from the cache.
	eng.loaded = map[string]string{}
	a.Forget()
	if got := a.Serving(); len(got) != 0 {
		t.Fatalf("serving after Forget: %v", got)
	}
	if !a.apply(ctx, []registry.DesiredAdapter{d}) || eng.loaded["ft:x"] == "" || fetches != 1 {
		t.Fatalf("after the restart: engine %v, fetches %d", eng.loaded, fetches)
	}

	// A load the engine refuses is retried after a backoff, not at every heartbeat.
	e := desired("ft:y", "ftjob-yyyyyyyy")
	eng.fail = io.ErrUnexpectedEOF
	a.apply(ctx, []registry.DesiredAdapter{d, e})
	a.apply(ctx, []registry.DesiredAdapter{d, e})
	if eng.loads != 3 {
		t.Fatalf("loads %d, want 3 (x twice, y once before its backoff)", eng.loads)
	}
	now = now.Add(6 * time.Second)
	eng.fail = nil
	if !a.apply(ctx, []registry.DesiredAdapter{d, e}) || eng.loaded["ft:y"] == "" {
		t.Fatalf("after the backoff: engine %v", eng.loaded)
	}
	if got := a.Serving(); !slices.Equal(got, []string{"ft:x", "ft:y"}) {
		t.Errorf("serving %v", got)
	}
}

// TestAdapterSyncTakesOverLeftovers: a worker restarted beside a running engine finds the
// adapters its earlier life loaded: one still placed is kept (not loaded again), one no
// longer placed is unloaded, one the engine loaded from elsewhere is left alone.
func TestAdapterSyncTakesOverLeftovers(t *testing.T) {
	cache := t.TempDir()
	keep, drop := desired("ft:keep", "ftjob-kkkkkkkk"), desired("ft:drop", "ftjob-dddddddd")
	probe := newAdapterSync(nil, nil, cache, 1<<20, 4, 0, slog.New(slog.DiscardHandler))
	keepDir, dropDir := probe.cacheDir(keep), probe.cacheDir(drop)
	for _, d := range []string{keepDir, dropDir} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
		_ = os.WriteFile(filepath.Join(d, adapterConfig), []byte("{}"), 0o644)
	}
	eng := &fakeLoRA{loaded: map[string]string{"ft:keep": keepDir, "ft:drop": dropDir, "static": "/models/static-lora"}}
	fetch := func(context.Context, string) (io.ReadCloser, error) {
		t.Error("an adapter was fetched")
		return nil, io.EOF
	}
	a := newAdapterSync(eng, fetch, cache, 1<<20, 4, 0, slog.New(slog.DiscardHandler))
	a.apply(context.Background(), []registry.DesiredAdapter{keep})
	if eng.loads != 0 {
		t.Errorf("loads %d, want 0 (kept as it was)", eng.loads)
	}
	if _, ok := eng.loaded["ft:drop"]; ok {
		t.Error("the adapter no longer placed is still loaded")
	}
	if eng.loaded["static"] == "" || eng.loaded["ft:keep"] == "" {
		t.Errorf("engine holds %v", eng.loaded)
	}
	if got := a.Serving(); !slices.Equal(got, []string{"ft:keep"}) {
		t.Errorf("serving %v", got)
	}
	if _, err := os.Stat(dropDir); err == nil {
		t.Error("the dropped adapter's cache is kept")
	}
}

// stallLoRA is an engine whose LoRA calls hang until their context ends.
type stallLoRA struct{ fakeLoRA }

func (e *stallLoRA) LoadLoRA(ctx context.Context, _, _ string) error {
	<-ctx.Done()
	return ctx.Err()
}

func (e *stallLoRA) UnloadLoRA(ctx context.Context, _ string) error {
	<-ctx.Done()
	return ctx.Err()
}

// TestAdapterSyncBoundsStalls: a control that stops sending an archive, or an engine that
// never answers a load or an unload, holds the syncer only until the operation's deadline.
func TestAdapterSyncBoundsStalls(t *testing.T) {
	// Ends the stalls should the syncer wait on them (the old code): the test fails, not hangs.
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	applied := func(a *adapterSync, d []registry.DesiredAdapter, what string) {
		t.Helper()
		done := make(chan struct{})
		go func() { defer close(done); a.apply(ctx, d) }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			t.Fatalf("%s: the syncer is still waiting", what)
		}
	}
	d := desired("ft:x", "ftjob-xxxxxxxx")

	stalled := func(ctx context.Context, _ string) (io.ReadCloser, error) {
		pr, pw := io.Pipe()
		go func() { <-ctx.Done(); pw.CloseWithError(ctx.Err()) }()
		return pr, nil // the archive never comes
	}
	a := newAdapterSync(&fakeLoRA{loaded: map[string]string{}}, stalled, t.TempDir(), 1<<20, 2, 0, slog.New(slog.DiscardHandler))
	a.fetchBound = func(int64) time.Duration { return 50 * time.Millisecond }
	applied(a, []registry.DesiredAdapter{d}, "stalled download")
	if f := a.failures[d.Name+"\x00"+d.Version]; f == nil || !strings.Contains(f.msg, "deadline") {
		t.Errorf("failure %+v", f)
	}

	archive := peftTar(t)
	fetch := func(context.Context, string) (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(archive)), nil
	}
	eng := &stallLoRA{fakeLoRA{loaded: map[string]string{}}}
	a = newAdapterSync(eng, fetch, t.TempDir(), 1<<20, 2, 0, slog.New(slog.DiscardHandler))
	a.engineTimeout = 50 * time.Millisecond
	applied(a, []registry.DesiredAdapter{d}, "stalled load")
	if len(a.Held()) != 0 {
		t.Errorf("held %v after a load that never answered", a.Held())
	}
	a.held["ft:x"] = &heldAdapter{version: d.Version, dir: a.cacheDir(d)}
	applied(a, nil, "stalled unload")
	if len(a.Held()) != 1 {
		t.Errorf("held %v: an unload that never answered dropped the adapter", a.Held())
	}
}

// TestFetchArchiveRefusesOtherHosts: control's archive URL is a path on control; anything
// else (a URL, "@host…" that would become the host) is refused before the token is sent.
func TestFetchArchiveRefusesOtherHosts(t *testing.T) {
	var hits []string
	var mu sync.Mutex
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		hits = append(hits, r.Host+" "+r.URL.Path)
		mu.Unlock()
		_, _ = w.Write([]byte("ok"))
	}))
	t.Cleanup(srv.Close)
	c := newControlClient("http://127.0.0.1:1", "tok-0123456789abcdef")
	for _, u := range []string{"@" + strings.TrimPrefix(srv.URL, "http://") + "/x", srv.URL + "/x", "x"} {
		rc, err := c.fetchArchive(context.Background(), u)
		if err == nil {
			rc.Close()
		}
		if err == nil || !strings.Contains(err.Error(), "not a path on control") {
			t.Errorf("%q: err %v", u, err)
		}
	}
	mu.Lock()
	defer mu.Unlock()
	if len(hits) > 0 {
		t.Errorf("requests sent elsewhere than control: %q", hits)
	}
}
