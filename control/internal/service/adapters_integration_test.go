package service

import (
	"archive/tar"
	"bytes"
	"context"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/maas-platform/maas/pkg/registry"
)

// insertAdapter registers adapter model name of base as the fine-tuning domain does on a
// job's success: a model with base_model, and its job with the stored adapter archive
// (written into the local blob store where the fine-tuning domain keeps it). created is the
// model's registration time.
func (tc *testControl) insertAdapter(name, base, job string, created time.Time) []byte {
	tc.t.Helper()
	ctx := context.Background()
	var archive bytes.Buffer
	tw := tar.NewWriter(&archive)
	body := []byte(`{"peft_type":"LORA","r":8,"base_model_name_or_path":"` + base + `"}`)
	_ = tw.WriteHeader(&tar.Header{Name: "adapter_config.json", Mode: 0o644, Size: int64(len(body))})
	_, _ = tw.Write(body)
	_ = tw.Close()
	dir := filepath.Join(tc.Opts.Files.Dir, "adapters")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		tc.t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "adapter-"+job), archive.Bytes(), 0o644); err != nil {
		tc.t.Fatal(err)
	}
	var admin int64
	if err := tc.Pool.QueryRow(ctx, `SELECT id FROM users WHERE username = 'admin'`).Scan(&admin); err != nil {
		tc.t.Fatal(err)
	}
	if _, err := tc.Pool.Exec(ctx, `INSERT INTO models (name, type, base_model, visibility, allowed_users, created_at)
		VALUES ($1, 'chat', $2, 'restricted', ARRAY[$3::bigint], $4)`, name, base, admin, created); err != nil {
		tc.t.Fatal(err)
	}
	if _, err := tc.Pool.Exec(ctx, `INSERT INTO fine_tuning_jobs (id, user_id, model, training_file, seed, method, status,
			fine_tuned_model, adapter_key, adapter_bytes, trained)
		VALUES ($1, $2, $3, 'file-x', 1, '{"type":"supervised"}', 'succeeded', $4, $5, $6, true)`,
		job, admin, base, name, "adapter-"+job, archive.Len()); err != nil {
		tc.t.Fatal(err)
	}
	return archive.Bytes()
}

// heartbeat sends a heartbeat reporting slots and loaded adapters (models: the engine's
// list, replacing the served models when not nil) and returns control's answer.
func (tc *testControl) adapterBeat(id string, slots int, loaded, models []string) registry.Backend {
	tc.t.Helper()
	var b registry.Backend
	tc.call("POST", "/internal/v1/backends/"+id+"/heartbeat", testInternalToken, registry.HeartbeatRequest{
		State: registry.StateHealthy, AdapterSlots: slots, Adapters: loaded, Models: models,
	}, 200).decode(tc.t, &b)
	return b
}

func desiredNames(t *testing.T, b registry.Backend) []string {
	t.Helper()
	if b.DesiredAdapters == nil {
		t.Fatalf("backend %s: no desired_adapters in the heartbeat's answer", b.ID)
	}
	out := []string{}
	for _, d := range *b.DesiredAdapters {
		out = append(out, d.Name)
	}
	return out
}

func TestAdapterPlacementLifecycle(t *testing.T) {
	tc := startControl(t, func(o *Options) { o.AdapterFoldInterval = time.Millisecond })
	ctx := context.Background()
	register := func(id string, models ...string) {
		tc.call("POST", "/internal/v1/backends/register", testInternalToken, map[string]any{"id": id, "url": "http://127.0.0.1:9",
			"engine_kind": "vllm", "models": models, "capacity": 8, "heartbeat_interval_ms": 60000}, 200)
	}
	register("a1", "base-a")
	register("a2", "base-a")
	register("b1", "base-b")

	// No adapter yet: an empty desired set; a worker without slots gets none at all.
	if got := desiredNames(t, tc.adapterBeat("a1", 2, nil, nil)); len(got) != 0 {
		t.Fatalf("desired before any adapter: %v", got)
	}
	if b := tc.adapterBeat("a2", 0, nil, nil); b.DesiredAdapters != nil {
		t.Fatalf("a backend without slots was given %v", *b.DesiredAdapters)
	}

	now := time.Now()
	archive := tc.insertAdapter("ft:base-a:old:ftjob-old00000", "base-a", "ftjob-old00000", now.Add(-2*time.Hour))
	tc.insertAdapter("ft:base-a:new:ftjob-new00000", "base-a", "ftjob-new00000", now.Add(-time.Hour))
	tc.insertAdapter("ft:base-b:x:ftjob-bbb00000", "base-b", "ftjob-bbb00000", now.Add(-time.Hour))
	const oldA, newA, adB = "ft:base-a:old:ftjob-old00000", "ft:base-a:new:ftjob-new00000", "ft:base-b:x:ftjob-bbb00000"

	// Every backend of the base, bounded by its slots: 2 slots hold both, 1 slot the most
	// recently registered; the other base's backend only its own.
	b := tc.adapterBeat("a1", 2, nil, nil)
	if got := desiredNames(t, b); !slices.Equal(got, []string{newA, oldA}) {
		t.Fatalf("a1 desired %v", got)
	}
	d := (*b.DesiredAdapters)[1]
	if d.BaseModel != "base-a" || d.Version != "ftjob-old00000" || d.Bytes != int64(len(archive)) || d.ArchiveURL != "/internal/v1/fine_tuning/jobs/ftjob-old00000/adapter" {
		t.Errorf("desired entry %+v", d)
	}
	if got := desiredNames(t, tc.adapterBeat("a2", 1, nil, nil)); !slices.Equal(got, []string{newA}) {
		t.Fatalf("a2 desired %v", got)
	}
	if got := desiredNames(t, tc.adapterBeat("b1", 4, nil, nil)); !slices.Equal(got, []string{adB}) {
		t.Fatalf("b1 desired %v", got)
	}

	// The archive the worker fetches is the one the job stored.
	r := tc.call("GET", d.ArchiveURL, testInternalToken, nil, 200)
	if !bytes.Equal(r.Body, archive) {
		t.Fatalf("archive: %d bytes, want %d", len(r.Body), len(archive))
	}

	// Least recently used evicted: a request for the old adapter in the ledger makes it the
	// most recent, so the 1-slot backend swaps.
	if _, err := tc.Pool.Exec(ctx, `INSERT INTO usage_records (request_id, created_at, model, status) VALUES ('r1', now(), $1, 200)`, oldA); err != nil {
		t.Fatal(err)
	}
	if got := desiredNames(t, tc.adapterBeat("a2", 1, nil, nil)); !slices.Equal(got, []string{oldA}) {
		t.Fatalf("a2 desired after a use of %s: %v", oldA, got)
	}
	// The on-demand hook counts as a use now.
	var p struct {
		Model       string   `json:"model"`
		BaseModel   string   `json:"base_model"`
		LoadedOn    []string `json:"loaded_on"`
		PlaceableOn []string `json:"placeable_on"`
	}
	tc.call("POST", "/internal/v1/adapters/demand", testInternalToken, map[string]string{"model": newA}, 200).decode(t, &p)
	if p.BaseModel != "base-a" || len(p.LoadedOn) != 0 || !slices.Equal(p.PlaceableOn, []string{"a1", "a2"}) {
		t.Errorf("demand answer %+v", p)
	}
	if got := desiredNames(t, tc.adapterBeat("a2", 1, nil, nil)); !slices.Equal(got, []string{newA}) {
		t.Fatalf("a2 desired after a demand of %s: %v", newA, got)
	}
	if r := tc.do("POST", "/internal/v1/adapters/demand", map[string]string{"model": "base-a"}, bearer(testInternalToken)); r.Status != 404 {
		t.Errorf("demand of a base model: %d %s", r.Status, r.Body)
	}
	if r := tc.do("POST", "/internal/v1/adapters/demand", map[string]string{"model": newA}, nil); r.Status != 401 {
		t.Errorf("demand without the internal token: %d", r.Status)
	}

	// The worker loads both and reports them, listing them among its served models: the
	// backend serves them (backends.models is what gateways route on).
	tc.adapterBeat("a1", 2, []string{newA, oldA}, []string{"base-a", newA, oldA})
	var models, loaded []string
	if err := tc.Pool.QueryRow(ctx, `SELECT models, adapters FROM backends WHERE id = 'a1'`).Scan(&models, &loaded); err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(models, []string{"base-a", newA, oldA}) || !slices.Equal(loaded, []string{newA, oldA}) {
		t.Fatalf("backend a1: models %v, adapters %v", models, loaded)
	}
	tc.call("POST", "/internal/v1/adapters/demand", testInternalToken, map[string]string{"model": oldA}, 200).decode(t, &p)
	if !slices.Equal(p.LoadedOn, []string{"a1"}) {
		t.Errorf("loaded_on %v", p.LoadedOn)
	}
	var list struct {
		Data []struct {
			Model      string   `json:"model"`
			BaseModel  string   `json:"base_model"`
			Placeable  bool     `json:"placeable"`
			LastUsedAt int64    `json:"last_used_at"`
			LoadedOn   []string `json:"loaded_on"`
		} `json:"data"`
	}
	tc.call("GET", "/api/v1/adapters?limit=10", tc.adminTokenCached(), nil, 200).decode(t, &list)
	if len(list.Data) != 3 || list.Data[1].Model != oldA || !slices.Equal(list.Data[1].LoadedOn, []string{"a1"}) ||
		!list.Data[1].Placeable || list.Data[1].LastUsedAt < now.Add(-time.Minute).Unix() {
		t.Errorf("adapters list %+v", list.Data)
	}

	// Its loaded adapters are not bases: the placement still sees base-a only.
	if got := desiredNames(t, tc.adapterBeat("a1", 2, []string{newA, oldA}, nil)); !slices.Equal(got, []string{oldA, newA}) {
		t.Fatalf("a1 desired with both loaded %v", got)
	}

	// Disabling one and deleting the other empties the desired set; the worker unloads them
	// and reports so; the backend no longer serves them.
	tok := tc.adminTokenCached()
	tc.call("PATCH", "/api/v1/models/"+oldA, tok, map[string]any{"enabled": false}, 200)
	if got := desiredNames(t, tc.adapterBeat("a1", 2, []string{newA, oldA}, nil)); !slices.Equal(got, []string{newA}) {
		t.Fatalf("a1 desired after disabling %s: %v", oldA, got)
	}
	tc.call("DELETE", "/api/v1/models/"+newA, tok, nil, 204)
	if got := desiredNames(t, tc.adapterBeat("a1", 2, []string{newA, oldA}, nil)); len(got) != 0 {
		t.Fatalf("a1 desired after deleting %s: %v", newA, got)
	}
	tc.adapterBeat("a1", 2, nil, []string{"base-a"})
	if err := tc.Pool.QueryRow(ctx, `SELECT models, adapters FROM backends WHERE id = 'a1'`).Scan(&models, &loaded); err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(models, []string{"base-a"}) || len(loaded) != 0 {
		t.Fatalf("backend a1 after unloading: models %v, adapters %v", models, loaded)
	}

	// A heartbeat claiming more adapters than slots is refused.
	if r := tc.do("POST", "/internal/v1/backends/a1/heartbeat", registry.HeartbeatRequest{State: "healthy", AdapterSlots: 1,
		Adapters: []string{"x", "y"}}, bearer(testInternalToken)); r.Status != 400 {
		t.Errorf("heartbeat with adapters beyond slots: %d %s", r.Status, r.Body)
	}
}
