package sidecar

import (
	"errors"
	"os"
	"strings"
	"testing"

	"github.com/maas-platform/maas/pkg/config"
)

// TestOptionsRefuseUnknownCapacity: an engine that states its limit nowhere needs
// MAAS_ENGINE_CAPACITY, and the worker says so before it starts (exit 2); today's worker
// registered such an engine with 256.
func TestOptionsRefuseUnknownCapacity(t *testing.T) {
	t.Setenv("MAAS_INTERNAL_TOKEN", "tok-0123456789abcdef")
	for _, name := range []string{"MAAS_ENGINE_CAPACITY", "MAAS_ENGINE", "MAAS_ENGINE_CMD", "MAAS_SIM_MAX_CONCURRENCY"} {
		t.Setenv(name, "") // restored after the test
		os.Unsetenv(name)
	}
	attach := func(kind string, more ...string) []string {
		return append([]string{"--engine-url", "http://127.0.0.1:1", "--engine-kind", kind}, more...)
	}
	tests := []struct {
		name    string
		args    []string
		wantErr string // "" = valid; else a text the error must contain
	}{
		{"ollama", attach("ollama"), "OLLAMA_NUM_PARALLEL"},
		{"ollama configured", attach("ollama", "--engine-capacity", "4"), ""},
		{"ollama supervised with OLLAMA_NUM_PARALLEL", attach("ollama", "--engine-cmd", "OLLAMA_NUM_PARALLEL=2 exec ollama serve"), ""},
		{"openai", attach("openai"), "states no concurrency limit"},
		// vLLM may state it (/server_info in dev mode): decided once the engine is up.
		{"vllm", attach("vllm"), ""},
		{"sim without a limit", []string{"--engine", "sim", "--sim-max-concurrency", "0"}, "MAAS_SIM_MAX_CONCURRENCY=0"},
		{"sim without a limit, configured", []string{"--engine", "sim", "--sim-max-concurrency", "0", "--engine-capacity", "9"}, ""},
		{"sim", []string{"--engine", "sim"}, ""},
		{"negative", attach("vllm", "--engine-capacity", "-1"), "negative"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			l, err := config.NewLoader("worker", t.TempDir())
			if err != nil {
				t.Fatal(err)
			}
			var f Flags
			f.Bind(l)
			if err := l.Parse(tt.args); err != nil {
				t.Fatal(err)
			}
			_, err = f.Options()
			if tt.wantErr == "" {
				if err != nil {
					t.Fatalf("unexpected error: %v", err)
				}
				return
			}
			var ce *config.Error
			if !errors.As(err, &ce) || ce.Name != "MAAS_ENGINE_CAPACITY" || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("want a MAAS_ENGINE_CAPACITY error containing %q, got %v", tt.wantErr, err)
			}
		})
	}
}
