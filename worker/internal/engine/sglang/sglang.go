// Package sglang is the engine adapter for SGLang's server (started with --enable-metrics).
package sglang

import (
	"github.com/maas-platform/maas/pkg/registry"
	"github.com/maas-platform/maas/worker/internal/engine"
)

// Adapter reads sglang:num_running_reqs, sglang:num_queue_reqs and sglang:token_usage
// (the used share of the KV token pool, 0..1).
var Adapter = engine.Adapter{
	Kind:         registry.KindSGLang,
	HealthPath:   "/health",
	MetricsPath:  "/metrics",
	Running:      []string{"sglang:num_running_reqs"},
	Waiting:      []string{"sglang:num_queue_reqs"},
	KVCacheUsage: []string{"sglang:token_usage"},
}
