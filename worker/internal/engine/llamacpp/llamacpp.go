// Package llamacpp is the engine adapter for llama.cpp's llama-server (started with
// --metrics for the Prometheus endpoint).
package llamacpp

import (
	"encoding/json"
	"fmt"

	"github.com/maas-platform/maas/pkg/registry"
	"github.com/maas-platform/maas/worker/internal/engine"
)

// Adapter reads llamacpp:requests_processing (running) and llamacpp:requests_deferred
// (waiting), and llamacpp:kv_cache_usage_ratio where the server version exports it. Its
// concurrency limit is the number of slots (--parallel), total_slots in GET /props.
var Adapter = engine.Adapter{
	Kind:         registry.KindLlamaCPP,
	LimitName:    "--parallel",
	HealthPath:   "/health",
	MetricsPath:  "/metrics",
	Running:      []string{"llamacpp:requests_processing"},
	Waiting:      []string{"llamacpp:requests_deferred"},
	KVCacheUsage: []string{"llamacpp:kv_cache_usage_ratio"},
	LimitProbes:  []engine.LimitProbe{{Path: "/props", Field: "total_slots", Parse: ParseProps}},
	LimitArgs: func(args []string) (int, string) {
		n, flag, _ := engine.IntArg(args, "--parallel", "-np", "LLAMA_ARG_N_PARALLEL")
		return n, flag
	},
}

// ParseProps reads total_slots (params.n_parallel) from llama-server's GET /props
// (get_props in tools/server/server-context.cpp; handle_props in older
// examples/server/server.cpp). A value below 1 (an "auto" not yet resolved) states nothing.
func ParseProps(body []byte) (int, error) {
	var v struct {
		TotalSlots int `json:"total_slots"`
	}
	if err := json.Unmarshal(body, &v); err != nil {
		return 0, fmt.Errorf("decode props: %w", err)
	}
	return max(v.TotalSlots, 0), nil
}
