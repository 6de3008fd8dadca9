package engine_test

import (
	"context"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"testing"

	"github.com/maas-platform/maas/worker/internal/engine"
	"github.com/maas-platform/maas/worker/internal/engine/llamacpp"
	"github.com/maas-platform/maas/worker/internal/engine/ollama"
	"github.com/maas-platform/maas/worker/internal/engine/openai"
	"github.com/maas-platform/maas/worker/internal/engine/sglang"
	"github.com/maas-platform/maas/worker/internal/engine/tgi"
	"github.com/maas-platform/maas/worker/internal/engine/vllm"
)

func testdata(t *testing.T, dir, name string) []byte {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join(dir, "testdata", name))
	if err != nil {
		t.Fatal(err)
	}
	return raw
}

// fakeEngine serves the given bodies by request URI (path and query); anything else is 404.
func fakeEngine(t *testing.T, routes map[string][]byte) *httptest.Server {
	t.Helper()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, ok := routes[r.URL.RequestURI()]
		if !ok {
			http.NotFound(w, r)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		w.Write(body)
	}))
	t.Cleanup(srv.Close)
	return srv
}

// TestLimitFromEngine reads each engine kind's concurrency limit from a fake engine that
// serves the body the real engine serves (see each adapter's testdata/README.md for where
// the body comes from and which are not captures).
func TestLimitFromEngine(t *testing.T) {
	tests := []struct {
		name   string
		a      engine.Adapter
		routes map[string][]byte
		want   engine.Limit
	}{
		{
			// vLLM with VLLM_SERVER_DEV_MODE=1: /server_info states max_num_seqs.
			name:   "vllm dev mode",
			a:      vllm.Adapter,
			routes: map[string][]byte{"/server_info?config_format=json": testdata(t, "vllm", "server_info.json")},
			want:   engine.Limit{N: 64, Source: "GET /server_info?config_format=json scheduler_config.max_num_seqs"},
		},
		{
			// vLLM as usually run: no /server_info, and /metrics' cache_config_info does not
			// carry max_num_seqs. Not stated, no error.
			name:   "vllm without dev mode",
			a:      vllm.Adapter,
			routes: map[string][]byte{"/metrics": testdata(t, "vllm", "metrics_cache_config.txt")},
		},
		{
			name: "vllm data parallel",
			a:    vllm.Adapter,
			routes: map[string][]byte{"/server_info?config_format=json": []byte(
				`{"vllm_config":{"parallel_config":{"data_parallel_size":2,"data_parallel_size_local":2},"scheduler_config":{"max_num_seqs":48}},"vllm_env":{},"system_env":{}}`)},
			want: engine.Limit{N: 96, Source: "GET /server_info?config_format=json scheduler_config.max_num_seqs"},
		},
		{
			// An older vLLM ignores config_format and answers the config as text.
			name:   "vllm text config",
			a:      vllm.Adapter,
			routes: map[string][]byte{"/server_info?config_format=json": []byte(`{"vllm_config":"model='m', max_num_seqs=64"}`)},
		},
		{
			name:   "sglang server_info",
			a:      sglang.Adapter,
			routes: map[string][]byte{"/server_info": testdata(t, "sglang", "server_info.json")},
			want:   engine.Limit{N: 128, Source: "GET /server_info internal_states[].effective_max_running_requests_per_dp × dp_size"},
		},
		{
			// An SGLang from before /server_info: the deprecated path answers.
			name:   "sglang get_server_info",
			a:      sglang.Adapter,
			routes: map[string][]byte{"/get_server_info": testdata(t, "sglang", "server_info.json")},
			want:   engine.Limit{N: 128, Source: "GET /get_server_info internal_states[].effective_max_running_requests_per_dp × dp_size"},
		},
		{
			name: "sglang two dp ranks",
			a:    sglang.Adapter,
			routes: map[string][]byte{"/server_info": []byte(
				`{"max_running_requests":null,"dp_size":2,"internal_states":[{"effective_max_running_requests_per_dp":52},{"effective_max_running_requests_per_dp":52}]}`)},
			want: engine.Limit{N: 104, Source: "GET /server_info internal_states[].effective_max_running_requests_per_dp × dp_size"},
		},
		{
			// Older SGLang: no effective figure, the argument when it was set.
			name:   "sglang argument only",
			a:      sglang.Adapter,
			routes: map[string][]byte{"/server_info": []byte(`{"max_running_requests":32,"dp_size":1,"internal_states":[{"last_gen_throughput":0.0}]}`)},
			want:   engine.Limit{N: 32, Source: "GET /server_info internal_states[].effective_max_running_requests_per_dp × dp_size"},
		},
		{
			name:   "tgi",
			a:      tgi.Adapter,
			routes: map[string][]byte{"/info": testdata(t, "tgi", "info.json")},
			want:   engine.Limit{N: 128, Source: "GET /info max_concurrent_requests"},
		},
		{
			name:   "llamacpp",
			a:      llamacpp.Adapter,
			routes: map[string][]byte{"/props": testdata(t, "llamacpp", "props.json")},
			want:   engine.Limit{N: 4, Source: "GET /props total_slots"},
		},
		{name: "ollama states none", a: ollama.Adapter, routes: map[string][]byte{}},
		{name: "openai states none", a: openai.Adapter, routes: map[string][]byte{}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := fakeEngine(t, tt.routes)
			got, err := engine.NewClient(tt.a, srv.URL).Limit(context.Background())
			if err != nil {
				t.Fatal(err)
			}
			if got != tt.want {
				t.Errorf("limit %+v, want %+v", got, tt.want)
			}
		})
	}
}

// TestLimitErrors: an engine that cannot be asked is an error (the worker asks again), not
// "no limit" (which refuses to start without MAAS_ENGINE_CAPACITY).
func TestLimitErrors(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/props":
			w.WriteHeader(503)
		case "/info":
			w.Write([]byte("not json"))
		}
	}))
	defer srv.Close()
	ctx := context.Background()
	if _, err := engine.NewClient(llamacpp.Adapter, srv.URL).Limit(ctx); err == nil {
		t.Error("503 from /props must be an error")
	}
	if _, err := engine.NewClient(tgi.Adapter, srv.URL).Limit(ctx); err == nil {
		t.Error("an /info that is not JSON must be an error")
	}
	srv.Close()
	if _, err := engine.NewClient(sglang.Adapter, srv.URL).Limit(ctx); err == nil {
		t.Error("a closed engine must be an error")
	}
}

// TestLimitFromCommand reads the limit from the command line the worker supervises.
func TestLimitFromCommand(t *testing.T) {
	tests := []struct {
		name string
		a    engine.Adapter
		cmd  string
		want engine.Limit
	}{
		{"vllm flag", vllm.Adapter, "vllm serve Qwen/Qwen2.5-7B-Instruct --port 8000 --max-num-seqs 32", engine.Limit{N: 32, Source: "--max-num-seqs in MAAS_ENGINE_CMD"}},
		{"vllm equals, last wins", vllm.Adapter, "vllm serve m --max-num-seqs=8 --max_num_seqs='24'", engine.Limit{N: 24, Source: "--max_num_seqs in MAAS_ENGINE_CMD"}},
		{"vllm data parallel", vllm.Adapter, "vllm serve m --max-num-seqs 16 -dp 4", engine.Limit{N: 64, Source: "--max-num-seqs × -dp in MAAS_ENGINE_CMD"}},
		{"vllm one rank of external dp", vllm.Adapter, "vllm serve m --max-num-seqs 16 --data-parallel-size 4 --data-parallel-rank 0", engine.Limit{N: 16, Source: "--max-num-seqs in MAAS_ENGINE_CMD"}},
		{"vllm default unknown", vllm.Adapter, "vllm serve m --port 8000", engine.Limit{}},
		{"vllm bad value", vllm.Adapter, "vllm serve m --max-num-seqs lots", engine.Limit{}},
		{"sglang", sglang.Adapter, "python -m sglang.launch_server --model-path m --max-running-requests 48", engine.Limit{N: 48, Source: "--max-running-requests in MAAS_ENGINE_CMD"}},
		{"tgi", tgi.Adapter, "text-generation-launcher --model-id m --max-concurrent-requests=20", engine.Limit{N: 20, Source: "--max-concurrent-requests in MAAS_ENGINE_CMD"}},
		{"llamacpp", llamacpp.Adapter, "llama-server -m model.gguf -np 6 --metrics", engine.Limit{N: 6, Source: "-np in MAAS_ENGINE_CMD"}},
		{"ollama env", ollama.Adapter, "OLLAMA_NUM_PARALLEL=3 exec ollama serve", engine.Limit{N: 3, Source: "OLLAMA_NUM_PARALLEL in MAAS_ENGINE_CMD"}},
		{"openai", openai.Adapter, "some-server --max-num-seqs 8", engine.Limit{}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := tt.a.LimitFromCommand(tt.cmd); got != tt.want {
				t.Errorf("%+v, want %+v", got, tt.want)
			}
		})
	}
}
