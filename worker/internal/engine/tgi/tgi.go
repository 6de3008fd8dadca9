// Package tgi is the engine adapter for Hugging Face Text Generation Inference.
package tgi

import (
	"encoding/json"
	"fmt"

	"github.com/maas-platform/maas/pkg/registry"
	"github.com/maas-platform/maas/worker/internal/engine"
)

// Adapter reads tgi_batch_current_size (requests in the running batch) and tgi_queue_size
// (waiting). TGI exports no KV-cache usage fraction. Its concurrency limit is
// max_concurrent_requests in GET /info: TGI answers 429 beyond it.
var Adapter = engine.Adapter{
	Kind:        registry.KindTGI,
	LimitName:   "--max-concurrent-requests",
	HealthPath:  "/health",
	MetricsPath: "/metrics",
	Running:     []string{"tgi_batch_current_size"},
	Waiting:     []string{"tgi_queue_size"},
	LimitProbes: []engine.LimitProbe{{Path: "/info", Field: "max_concurrent_requests", Parse: ParseInfo}},
	LimitArgs: func(args []string) (int, string) {
		n, flag, _ := engine.IntArg(args, "--max-concurrent-requests", "MAX_CONCURRENT_REQUESTS")
		return n, flag
	},
}

// ParseInfo reads max_concurrent_requests from TGI's /info (the Info struct of the
// router, router/src/lib.rs).
func ParseInfo(body []byte) (int, error) {
	var v struct {
		MaxConcurrent int `json:"max_concurrent_requests"`
	}
	if err := json.Unmarshal(body, &v); err != nil {
		return 0, fmt.Errorf("decode info: %w", err)
	}
	return v.MaxConcurrent, nil
}
