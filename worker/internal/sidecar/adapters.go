package sidecar

import (
	"archive/tar"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/maas-platform/maas/pkg/registry"
	"github.com/maas-platform/maas/worker/internal/engine"
)

// LoRA adapters, as control places them. Each heartbeat's answer carries the set of
// adapters control wants in this engine (registry.Backend.DesiredAdapters); the adapter
// syncer, in its own goroutine so that a long download never delays a heartbeat, makes the
// engine hold exactly that set:
//
//   - an adapter it lacks is fetched from control (its archive URL, internal token) into the
//     cache directory (MAAS_ADAPTER_CACHE_DIR), extracted with every path checked (no
//     absolute path, no "..", no link or special file; MAAS_ADAPTER_MAX_BYTES bounds the
//     archive and its extracted size), checked for adapter_config.json, and loaded through
//     the engine's API under the adapter's model name;
//   - an adapter no longer wanted is first left out of the served models the worker
//     reports (so gateways stop sending it requests), and unloaded from the engine half a
//     heartbeat interval later at the earliest;
//   - loads wait for free slots: never more than the engine's slots are held at once.
//
// The worker reports the adapters it holds (HeartbeatRequest.Adapters) and lists them
// among its served models, which is what gateways route on. A load that fails is retried
// after a backoff (5 s doubling to 5 min per adapter version), logged once per distinct error.
// No step holds the syncer for ever: a download is given up after 2 minutes plus a second
// per MiB of archive, an engine load or unload after 5 minutes. An archive URL must be a
// path on control (the internal token goes nowhere else).

// loraEngine is an engine that loads LoRA adapters at run time.
type loraEngine interface {
	LoadLoRA(ctx context.Context, name, path string) error
	UnloadLoRA(ctx context.Context, name string) error
	// LoRAs lists the adapters loaded in the engine, by name with their path.
	LoRAs(ctx context.Context) (map[string]string, error)
}

// heldAdapter is an adapter loaded in the engine.
type heldAdapter struct {
	version  string
	dir      string
	retiring time.Time // when it left the desired set; zero while wanted
}

type loadFailure struct {
	at   time.Time
	wait time.Duration
	msg  string
}

// adapterSync keeps the engine's adapters equal to control's desired set. Desire and
// Serving are safe for concurrent use; run is called by one goroutine.
type adapterSync struct {
	eng      loraEngine
	fetch    func(ctx context.Context, url string) (io.ReadCloser, error)
	dir      string
	maxBytes int64
	slots    int
	grace    time.Duration
	log      *slog.Logger
	now      func() time.Time
	m        *metrics // nil in tests that need none
	// fetchBound bounds an archive's download and extraction, given its declared bytes;
	// engineTimeout bounds a load or unload in the engine.
	fetchBound    func(bytes int64) time.Duration
	engineTimeout time.Duration

	want    chan []registry.DesiredAdapter // the latest desired set (capacity 1)
	changed chan struct{}                  // the served set changed: heartbeat early (capacity 1)

	mu       sync.Mutex
	held     map[string]*heldAdapter
	failures map[string]*loadFailure // by name + version
	adopted  bool                    // the engine's leftovers were looked for
}

func newAdapterSync(eng loraEngine, fetch func(context.Context, string) (io.ReadCloser, error), dir string,
	maxBytes int64, slots int, grace time.Duration, log *slog.Logger) *adapterSync {
	return &adapterSync{
		eng: eng, fetch: fetch, dir: dir, maxBytes: maxBytes, slots: slots, grace: grace, log: log, now: time.Now,
		fetchBound: fetchBound, engineTimeout: engineTimeout,
		want: make(chan []registry.DesiredAdapter, 1), changed: make(chan struct{}, 1),
		held: map[string]*heldAdapter{}, failures: map[string]*loadFailure{},
	}
}

// engineTimeout bounds a LoRA load or unload: an engine that does not answer in that time
// is asked again later (load: after the backoff; unload: at the next heartbeat).
const engineTimeout = 5 * time.Minute

// fetchBound bounds an archive's download and extraction: 2 minutes plus a second per MiB
// it declares (a download slower than 1 MiB/s is given up and retried after the backoff).
func fetchBound(bytes int64) time.Duration {
	return 2*time.Minute + time.Duration(max(bytes, 0)>>20)*time.Second
}

// Desire hands the syncer control's latest desired set (replacing one not yet taken).
func (a *adapterSync) Desire(d []registry.DesiredAdapter) {
	for {
		select {
		case a.want <- d:
			return
		default:
		}
		select {
		case <-a.want:
		default:
		}
	}
}

// Serving returns the adapters loaded and still wanted, sorted: those the worker reports
// and serves.
func (a *adapterSync) Serving() []string {
	a.mu.Lock()
	defer a.mu.Unlock()
	out := []string{}
	for name, h := range a.held {
		if h.retiring.IsZero() {
			out = append(out, name)
		}
	}
	slices.Sort(out)
	return out
}

// Held returns every adapter loaded in the engine through the syncer, retiring ones
// included.
func (a *adapterSync) Held() []string {
	a.mu.Lock()
	defer a.mu.Unlock()
	out := make([]string, 0, len(a.held))
	for name := range a.held {
		out = append(out, name)
	}
	return out
}

// run applies each desired set until ctx ends.
func (a *adapterSync) run(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case d := <-a.want:
			if a.apply(ctx, d) {
				select {
				case a.changed <- struct{}{}:
				default:
				}
			}
		}
	}
}

// adopt takes over the adapters an earlier life of this worker left loaded in the engine
// (those whose path lies in the cache directory; an engine outlives a worker restarted
// beside it): kept when still desired at the same version (same cache directory),
// otherwise retired and unloaded like any other. Adapters loaded from elsewhere (e.g.
// vLLM's --lora-modules) are not touched.
func (a *adapterSync) adopt(ctx context.Context, desired []registry.DesiredAdapter) {
	loaded, err := a.eng.LoRAs(ctx)
	if err != nil {
		a.log.Warn("adapters left in the engine not listed; looking again at the next heartbeat", "err", err)
		return
	}
	a.adopted = true
	cache, err := filepath.Abs(a.dir)
	if err != nil {
		return
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	for name, root := range loaded {
		rel, err := filepath.Rel(cache, root)
		if err != nil || rel == "." || strings.HasPrefix(rel, "..") || a.held[name] != nil {
			continue
		}
		h := &heldAdapter{dir: root}
		for _, d := range desired {
			if d.Name == name && filepath.Base(a.cacheDir(d)) == rel {
				h.version = d.Version
			}
		}
		if h.version == "" {
			h.retiring = a.now() // never served: reported adapters stay within the slots
		}
		a.held[name] = h
		a.log.Info("adapter left loaded in the engine by an earlier worker: taken over", "model", name, "still_placed", h.version != "")
	}
}

// apply moves the engine one step towards desired; it reports whether the served set
// changed.
func (a *adapterSync) apply(ctx context.Context, desired []registry.DesiredAdapter) (changed bool) {
	if !a.adopted {
		a.adopt(ctx, desired)
	}
	now := a.now()
	want := make(map[string]registry.DesiredAdapter, len(desired))
	for _, d := range desired {
		want[d.Name] = d
	}
	a.mu.Lock()
	unload := map[string]*heldAdapter{}
	for name, h := range a.held {
		d, ok := want[name]
		switch {
		case (!ok || d.Version != h.version) && h.retiring.IsZero():
			h.retiring, changed = now, true
			a.log.Info("adapter no longer placed here; unloading it once gateways stopped routing to it", "model", name)
		case ok && d.Version == h.version && !h.retiring.IsZero():
			h.retiring, changed = time.Time{}, true
		}
		if !h.retiring.IsZero() && now.Sub(h.retiring) >= a.grace {
			unload[name] = h
		}
	}
	a.mu.Unlock()

	for name, h := range unload {
		uctx, cancel := context.WithTimeout(ctx, a.engineTimeout)
		err := a.eng.UnloadLoRA(uctx, name)
		cancel()
		if err != nil && !errors.Is(err, engine.ErrLoRANotLoaded) {
			a.log.Warn("adapter unload failed; retrying at the next heartbeat", "model", name, "err", err)
			continue
		}
		// Forget (the engine restarted) may have dropped the entry meanwhile: only the
		// entry listed above is deleted. Its files go either way: the adapter is unwanted.
		a.mu.Lock()
		if a.held[name] == h {
			delete(a.held, name)
		}
		a.mu.Unlock()
		if err := os.RemoveAll(h.dir); err != nil {
			a.log.Warn("adapter cache not removed", "dir", h.dir, "err", err)
		}
		a.count(func(m *metrics) { m.adapterUnloads.Inc() })
		a.log.Info("adapter unloaded", "model", name)
	}

	for _, d := range desired {
		a.mu.Lock()
		_, have := a.held[d.Name]
		full := len(a.held) >= a.slots
		a.mu.Unlock()
		if have {
			continue
		}
		if full {
			break // slots free up as retiring adapters are unloaded
		}
		key := d.Name + "\x00" + d.Version
		if f := a.failures[key]; f != nil && now.Sub(f.at) < f.wait {
			continue
		}
		start := a.now()
		dir, err := a.load(ctx, d)
		if err != nil {
			if ctx.Err() != nil {
				return changed
			}
			f := a.failures[key]
			if f == nil {
				f = &loadFailure{wait: 5 * time.Second / 2}
				a.failures[key] = f
			}
			f.at, f.wait = a.now(), min(2*f.wait, 5*time.Minute)
			a.count(func(m *metrics) { m.adapterLoads.WithLabelValues("failed").Inc() })
			if msg := err.Error(); msg != f.msg {
				f.msg = msg
				a.log.Warn("adapter load failed", "model", d.Name, "err", err, "retry_in", f.wait.String())
			}
			continue
		}
		delete(a.failures, key)
		a.mu.Lock()
		a.held[d.Name] = &heldAdapter{version: d.Version, dir: dir}
		a.mu.Unlock()
		a.count(func(m *metrics) { m.adapterLoads.WithLabelValues("loaded").Inc() })
		changed = true
		a.log.Info("adapter loaded", "model", d.Name, "base_model", d.BaseModel, "bytes", d.Bytes,
			"took", a.now().Sub(start).Round(time.Millisecond).String())
	}
	return changed
}

// count updates the metrics, when there are any, and the loaded gauge.
func (a *adapterSync) count(f func(*metrics)) {
	if a.m == nil {
		return
	}
	f(a.m)
	a.mu.Lock()
	n := len(a.held)
	a.mu.Unlock()
	a.m.adapters.Set(float64(n))
}

// Forget drops every adapter the syncer holds, their cached files kept: the engine
// restarted and lost them. The next desired set loads them again (from the cache).
func (a *adapterSync) Forget() {
	a.mu.Lock()
	n := len(a.held)
	a.held = map[string]*heldAdapter{}
	a.mu.Unlock()
	if n > 0 {
		a.log.Info("engine restarted: its LoRA adapters are loaded again", "adapters", n)
	}
	a.count(func(*metrics) {})
}

// cacheDir is where adapter d's files are kept: one directory per name and version.
func (a *adapterSync) cacheDir(d registry.DesiredAdapter) string {
	sum := sha256.Sum256([]byte(d.Name + "\x00" + d.Version))
	return filepath.Join(a.dir, hex.EncodeToString(sum[:12]))
}

// load fetches adapter d into the cache (unless there already) and loads it in the engine.
func (a *adapterSync) load(ctx context.Context, d registry.DesiredAdapter) (string, error) {
	dir, err := filepath.Abs(a.cacheDir(d))
	if err != nil {
		return "", err
	}
	if _, err := os.Stat(filepath.Join(dir, adapterConfig)); err != nil {
		if err := a.download(ctx, d, dir); err != nil {
			return "", err
		}
	}
	lctx, cancel := context.WithTimeout(ctx, a.engineTimeout)
	defer cancel()
	err = a.eng.LoadLoRA(lctx, d.Name, dir)
	if errors.Is(err, engine.ErrLoRALoaded) {
		// Loaded by an earlier life of this worker: the engine keeps it.
		a.log.Info("adapter already loaded in the engine; keeping it", "model", d.Name)
		return dir, nil
	}
	return dir, err
}

const adapterConfig = "adapter_config.json"

// download fetches d's archive and extracts it into dir (replaced whole, or left as it was).
func (a *adapterSync) download(ctx context.Context, d registry.DesiredAdapter, dir string) error {
	if d.Bytes > a.maxBytes {
		return fmt.Errorf("adapter archive of %d bytes exceeds MAAS_ADAPTER_MAX_BYTES (%d)", d.Bytes, a.maxBytes)
	}
	if err := os.MkdirAll(a.dir, 0o755); err != nil {
		return fmt.Errorf("adapter cache: %w", err)
	}
	ctx, cancel := context.WithTimeout(ctx, a.fetchBound(d.Bytes))
	defer cancel()
	rc, err := a.fetch(ctx, d.ArchiveURL)
	if err != nil {
		return fmt.Errorf("fetch adapter archive: %w", err)
	}
	defer rc.Close()
	tmp, err := os.MkdirTemp(a.dir, ".partial-")
	if err != nil {
		return fmt.Errorf("adapter cache: %w", err)
	}
	defer os.RemoveAll(tmp)
	if err := extractTar(io.LimitReader(rc, a.maxBytes+1), tmp, a.maxBytes); err != nil {
		return fmt.Errorf("extract adapter archive: %w", err)
	}
	if _, err := os.Stat(filepath.Join(tmp, adapterConfig)); err != nil {
		return fmt.Errorf("the adapter archive holds no %s at its root: not a PEFT adapter", adapterConfig)
	}
	_ = os.RemoveAll(dir)
	if err := os.Rename(tmp, dir); err != nil {
		return fmt.Errorf("adapter cache: %w", err)
	}
	return nil
}

// maxArchiveEntries bounds the entries of an adapter archive (a PEFT adapter has a few).
const maxArchiveEntries = 10000

// extractTar writes the regular files and directories of the tar stream r under dir. It
// refuses absolute paths, paths that leave dir, links and special files, more than
// maxArchiveEntries entries, and more than maxBytes of content.
func extractTar(r io.Reader, dir string, maxBytes int64) error {
	tr := tar.NewReader(r)
	var total int64
	for n := 0; ; n++ {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
		if n >= maxArchiveEntries {
			return fmt.Errorf("more than %d entries", maxArchiveEntries)
		}
		name := h.Name
		if strings.Contains(name, "\\") || path.IsAbs(name) || filepath.IsAbs(name) {
			return fmt.Errorf("entry %q: absolute or ambiguous path", name)
		}
		clean := path.Clean(name)
		if clean == ".." || strings.HasPrefix(clean, "../") {
			return fmt.Errorf("entry %q leaves the adapter directory", name)
		}
		if clean == "." {
			continue
		}
		target := filepath.Join(dir, filepath.FromSlash(clean))
		switch h.Typeflag {
		case tar.TypeDir:
			if err := os.MkdirAll(target, 0o755); err != nil {
				return err
			}
		case tar.TypeReg:
			if total += h.Size; h.Size < 0 || total > maxBytes {
				return fmt.Errorf("content exceeds MAAS_ADAPTER_MAX_BYTES (%d)", maxBytes)
			}
			if err := os.MkdirAll(filepath.Dir(target), 0o755); err != nil {
				return err
			}
			f, err := os.OpenFile(target, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
			if err != nil {
				return err
			}
			_, err = io.CopyN(f, tr, h.Size)
			if cerr := f.Close(); err == nil {
				err = cerr
			}
			if err != nil {
				return fmt.Errorf("entry %q: %w", name, err)
			}
		default:
			return fmt.Errorf("entry %q: links and special files are refused", name)
		}
	}
}

// fetchArchive GETs a path on control with the internal token. Only a path is taken: the
// token goes to control and nowhere else (an absolute URL, or "@host/…" appended to the
// base, would name another host).
func (c *controlClient) fetchArchive(ctx context.Context, url string) (io.ReadCloser, error) {
	if !strings.HasPrefix(url, "/") || strings.HasPrefix(url, "//") {
		return nil, fmt.Errorf("archive URL %.200q is not a path on control: refused", url)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, c.base+url, nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Authorization", "Bearer "+c.token)
	hc := *c.http
	hc.Timeout = 0 // an archive may be large; ctx bounds it
	resp, err := hc.Do(req)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 4<<10))
		resp.Body.Close()
		return nil, fmt.Errorf("GET %s: status %d: %.200s", url, resp.StatusCode, b)
	}
	return resp.Body, nil
}
