package engine_test

import (
	"context"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/maas-platform/maas/pkg/registry"
	"github.com/maas-platform/maas/worker/internal/engine"
	"github.com/maas-platform/maas/worker/internal/engine/llamacpp"
	"github.com/maas-platform/maas/worker/internal/engine/ollama"
	"github.com/maas-platform/maas/worker/internal/engine/openai"
	"github.com/maas-platform/maas/worker/internal/engine/sglang"
	"github.com/maas-platform/maas/worker/internal/engine/tgi"
	"github.com/maas-platform/maas/worker/internal/engine/vllm"
)

// TestRealSamples parses each engine kind's real /metrics sample (see testdata/README.md
// beside each adapter for its source).
func TestRealSamples(t *testing.T) {
	tests := []struct {
		a    engine.Adapter
		dir  string
		want registry.Load
	}{
		{vllm.Adapter, "vllm", registry.Load{}},
		{sglang.Adapter, "sglang", registry.Load{KVCacheUsage: 0.25}},
		{tgi.Adapter, "tgi", registry.Load{}},
		{llamacpp.Adapter, "llamacpp", registry.Load{}},
	}
	for _, tt := range tests {
		t.Run(tt.dir, func(t *testing.T) {
			f, err := os.Open(filepath.Join(tt.dir, "testdata", "metrics.txt"))
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			got, err := tt.a.ParseMetrics(f)
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("load (-want +got):\n%s", diff)
			}
		})
	}
}

// TestMapping checks each adapter's metric names with non-zero values. These inputs are
// written for the test (not captures); they use the names of the real samples.
func TestMapping(t *testing.T) {
	tests := []struct {
		name string
		a    engine.Adapter
		in   string
		want registry.Load
	}{
		{"vllm v1 two models", vllm.Adapter, `
vllm:num_requests_running{model_name="a"} 3
vllm:num_requests_running{model_name="b"} 2
vllm:num_requests_waiting{model_name="a"} 4
vllm:kv_cache_usage_perc{model_name="a"} 0.5
vllm:gpu_cache_usage_perc{model_name="a"} 0.9
`, registry.Load{Running: 5, Waiting: 4, KVCacheUsage: 0.5, InFlight: 9}},
		{"vllm v0", vllm.Adapter, `
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{model_name="a"} 1.0
vllm:gpu_cache_usage_perc{model_name="a"} 0.75
`, registry.Load{Running: 1, KVCacheUsage: 0.75, InFlight: 1}},
		{"sglang two ranks", sglang.Adapter, `
sglang:num_running_reqs{model_name="m",tp_rank="0"} 7
sglang:num_running_reqs{model_name="m",tp_rank="1"} 1
sglang:num_queue_reqs{model_name="m",tp_rank="0"} 2
sglang:token_usage{model_name="m",tp_rank="0"} 0.3
sglang:token_usage{model_name="m",tp_rank="1"} 0.6
`, registry.Load{Running: 8, Waiting: 2, KVCacheUsage: 0.6, InFlight: 10}},
		{"tgi", tgi.Adapter, "tgi_batch_current_size 6\ntgi_queue_size 11\n", registry.Load{Running: 6, Waiting: 11, InFlight: 17}},
		{"llamacpp", llamacpp.Adapter, "llamacpp:requests_processing 2\nllamacpp:requests_deferred 1\nllamacpp:kv_cache_usage_ratio 0.125\n", registry.Load{Running: 2, Waiting: 1, KVCacheUsage: 0.125, InFlight: 3}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := tt.a.ParseMetrics(strings.NewReader(strings.TrimLeft(tt.in, "\n")))
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("load (-want +got):\n%s", diff)
			}
		})
	}
	if _, err := vllm.Adapter.ParseMetrics(strings.NewReader("not metrics {{{\n")); err == nil {
		t.Error("garbage must not parse")
	}
}

func TestClient(t *testing.T) {
	ready := false
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/health":
			if !ready {
				w.WriteHeader(503)
			}
		case "/v1/models":
			w.Write([]byte(`{"object":"list","data":[{"id":"base","object":"model","owned_by":"vllm"},{"id":"lora-a","object":"model","owned_by":"vllm","parent":"base"}]}`))
		case "/metrics":
			w.Write([]byte("vllm:num_requests_running{model_name=\"base\"} 2\nvllm:num_requests_waiting{model_name=\"base\"} 1\n"))
		default:
			w.WriteHeader(404)
		}
	}))
	defer srv.Close()
	ctx := context.Background()
	c := engine.NewClient(vllm.Adapter, srv.URL+"/")
	if err := c.Ready(ctx); err == nil {
		t.Error("503 health must not be ready")
	}
	ready = true
	if err := c.Ready(ctx); err != nil {
		t.Error(err)
	}
	models, err := c.Models(ctx)
	if err != nil || !cmp.Equal(models, []string{"base", "lora-a"}) {
		t.Errorf("models %v %v", models, err)
	}
	l, err := c.Load(ctx)
	if err != nil || l.Running != 2 || l.Waiting != 1 {
		t.Errorf("load %+v %v", l, err)
	}
	for _, a := range []engine.Adapter{ollama.Adapter, openai.Adapter} {
		l, err := engine.NewClient(a, srv.URL).Load(ctx)
		if err != nil || l != (registry.Load{}) {
			t.Errorf("%s: load %+v %v", a.Kind, l, err)
		}
	}
}
