package engine_test

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/maas-platform/maas/worker/internal/engine"
	"github.com/maas-platform/maas/worker/internal/engine/sglang"
	"github.com/maas-platform/maas/worker/internal/engine/tgi"
	"github.com/maas-platform/maas/worker/internal/engine/vllm"
	"github.com/maas-platform/maas/worker/internal/sim"
)

// fakeVLLM answers /v1/load_lora_adapter and /v1/unload_lora_adapter with vLLM's status
// codes and bodies (vllm/entrypoints/openai/models/serving.py); runtime false answers as
// vLLM without VLLM_ALLOW_RUNTIME_LORA_UPDATING (no such route).
func fakeVLLM(t *testing.T, runtime bool) (*httptest.Server, func() map[string]string) {
	var mu sync.Mutex
	loaded := map[string]string{}
	errBody := func(w http.ResponseWriter, status int, typ, msg string) {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(status)
		_ = json.NewEncoder(w).Encode(map[string]any{"error": map[string]any{"message": msg, "type": typ, "param": nil, "code": status}})
	}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !runtime {
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(404)
			_, _ = io.WriteString(w, `{"detail":"Not Found"}`)
			return
		}
		var req struct {
			Name string `json:"lora_name"`
			Path string `json:"lora_path"`
		}
		_ = json.NewDecoder(r.Body).Decode(&req)
		mu.Lock()
		defer mu.Unlock()
		switch r.URL.Path {
		case "/v1/load_lora_adapter":
			switch {
			case loaded[req.Name] != "":
				errBody(w, 400, "InvalidUserInput", "The lora adapter '"+req.Name+"' has already been loaded. If you want to load the adapter in place, set 'load_inplace' to True.")
			case req.Path == "/missing":
				errBody(w, 404, "NotFoundError", "Loading lora "+req.Name+" failed: No adapter found for /missing")
			case req.Path == "/bad-rank":
				errBody(w, 400, "BadRequestError", "LoRA rank 64 is greater than max_lora_rank 16.")
			default:
				loaded[req.Name] = req.Path
				_, _ = io.WriteString(w, "Success: LoRA adapter '"+req.Name+"' added successfully.")
			}
		case "/v1/unload_lora_adapter":
			if loaded[req.Name] == "" {
				errBody(w, 404, "NotFoundError", "The lora adapter '"+req.Name+"' cannot be found.")
				return
			}
			delete(loaded, req.Name)
			_, _ = io.WriteString(w, "Success: LoRA adapter '"+req.Name+"' removed successfully.")
		default:
			w.WriteHeader(404)
		}
	}))
	t.Cleanup(srv.Close)
	return srv, func() map[string]string {
		mu.Lock()
		defer mu.Unlock()
		out := map[string]string{}
		for k, v := range loaded {
			out[k] = v
		}
		return out
	}
}

func TestVLLMLoRA(t *testing.T) {
	ctx := context.Background()
	srv, loaded := fakeVLLM(t, true)
	c := engine.NewClient(vllm.Adapter, srv.URL)
	if err := c.LoadLoRA(ctx, "ft:a", "/cache/a"); err != nil {
		t.Fatal(err)
	}
	if got := loaded()["ft:a"]; got != "/cache/a" {
		t.Fatalf("engine holds %q", got)
	}
	if err := c.LoadLoRA(ctx, "ft:a", "/cache/a"); !errors.Is(err, engine.ErrLoRALoaded) {
		t.Errorf("second load: %v", err)
	}
	if err := c.LoadLoRA(ctx, "ft:b", "/missing"); !errors.Is(err, engine.ErrLoRAPathNotFound) {
		t.Errorf("missing path: %v", err)
	}
	err := c.LoadLoRA(ctx, "ft:c", "/bad-rank")
	if err == nil || errors.Is(err, engine.ErrLoRALoaded) || errors.Is(err, engine.ErrLoRAPathNotFound) {
		t.Errorf("bad rank: %v", err)
	}
	if err := c.UnloadLoRA(ctx, "ft:a"); err != nil {
		t.Fatal(err)
	}
	if err := c.UnloadLoRA(ctx, "ft:a"); !errors.Is(err, engine.ErrLoRANotLoaded) {
		t.Errorf("second unload: %v", err)
	}
	if len(loaded()) != 0 {
		t.Errorf("left loaded: %v", loaded())
	}
}

func TestVLLMWithoutRuntimeLoRA(t *testing.T) {
	srv, _ := fakeVLLM(t, false)
	c := engine.NewClient(vllm.Adapter, srv.URL)
	if err := c.LoadLoRA(context.Background(), "a", "/x"); !errors.Is(err, engine.ErrNoLoRA) {
		t.Errorf("load: %v", err)
	}
}

func TestSGLangLoRA(t *testing.T) {
	// SGLang answers a LoRAUpdateOutput, 200 on success and 400 on failure.
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var req struct {
			Name string `json:"lora_name"`
		}
		_ = json.NewDecoder(r.Body).Decode(&req)
		w.Header().Set("Content-Type", "application/json")
		switch {
		case r.URL.Path == "/load_lora_adapter" && req.Name == "new":
			_, _ = io.WriteString(w, `{"success":true,"error_message":null,"loaded_adapters":{"new":"/p"}}`)
		case r.URL.Path == "/load_lora_adapter":
			w.WriteHeader(400)
			_, _ = io.WriteString(w, `{"success":false,"error_message":"The LoRA adapter with name `+req.Name+` is already loaded.","loaded_adapters":{}}`)
		case r.URL.Path == "/unload_lora_adapter":
			w.WriteHeader(400)
			_, _ = io.WriteString(w, `{"success":false,"error_message":"LoRA adapter `+req.Name+` is not loaded.","loaded_adapters":{}}`)
		}
	}))
	defer srv.Close()
	c := engine.NewClient(sglang.Adapter, srv.URL)
	ctx := context.Background()
	if err := c.LoadLoRA(ctx, "new", "/p"); err != nil {
		t.Fatal(err)
	}
	if err := c.LoadLoRA(ctx, "old", "/p"); !errors.Is(err, engine.ErrLoRALoaded) {
		t.Errorf("load: %v", err)
	}
	if err := c.UnloadLoRA(ctx, "gone"); !errors.Is(err, engine.ErrLoRANotLoaded) {
		t.Errorf("unload: %v", err)
	}
}

func TestNoLoRAAPI(t *testing.T) {
	c := engine.NewClient(tgi.Adapter, "http://127.0.0.1:1")
	if err := c.LoadLoRA(context.Background(), "a", "/p"); !errors.Is(err, engine.ErrNoLoRA) {
		t.Errorf("tgi: %v", err)
	}
	if n, _ := tgi.Adapter.SlotsFromCommand("text-generation-launcher --lora-adapters x"); n != 0 {
		t.Errorf("tgi slots %d", n)
	}
}

func TestSlotsFromCommand(t *testing.T) {
	tests := []struct {
		a    engine.Adapter
		cmd  string
		want int
	}{
		{vllm.Adapter, "vllm serve m", 0},
		{vllm.Adapter, "vllm serve m --enable-lora", 1},
		{vllm.Adapter, "vllm serve m --enable-lora --max-loras 4", 4},
		{vllm.Adapter, "vllm serve m --enable-lora --max-loras 4 --max-cpu-loras=16", 16},
		{sglang.Adapter, "python -m sglang.launch_server --model m", 0},
		{sglang.Adapter, "python -m sglang.launch_server --model m --enable-lora", 8},
		{sglang.Adapter, "python -m sglang.launch_server --model m --enable-lora --max-loras-per-batch 4 --max-loaded-loras 12", 12},
	}
	for _, tt := range tests {
		if n, _ := tt.a.SlotsFromCommand(tt.cmd); n != tt.want {
			t.Errorf("%s: %d, want %d", tt.cmd, n, tt.want)
		}
	}
}

// TestLoRAsAgainstSimulator loads and lists adapters through the vLLM API of the simulator,
// whose /v1/models lists adapters as vLLM does (root = path, parent = base).
func TestLoRAsAgainstSimulator(t *testing.T) {
	o := sim.DefaultOptions()
	o.Addr = "127.0.0.1:0"
	s, err := sim.New(o)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Listen(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- s.Serve() }()
	defer func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = s.Stop(ctx)
		<-done
	}()
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "adapter_config.json"), []byte("{}"), 0o644); err != nil {
		t.Fatal(err)
	}
	c := engine.NewClient(vllm.Adapter, s.URL())
	ctx := context.Background()
	if err := c.LoadLoRA(ctx, "ft:x", dir); err != nil {
		t.Fatal(err)
	}
	if err := c.LoadLoRA(ctx, "ft:y", t.TempDir()); !errors.Is(err, engine.ErrLoRAPathNotFound) {
		t.Errorf("load of a directory without adapter_config.json: %v", err)
	}
	got, err := c.LoRAs(ctx)
	if err != nil || len(got) != 1 || got["ft:x"] != dir {
		t.Fatalf("LoRAs %v, %v", got, err)
	}
	if err := c.UnloadLoRA(ctx, "ft:x"); err != nil {
		t.Fatal(err)
	}
	if got, _ := c.LoRAs(ctx); len(got) != 0 {
		t.Errorf("after unload %v", got)
	}
}
