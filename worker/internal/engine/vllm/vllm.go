// Package vllm is the engine adapter for vLLM's OpenAI-compatible server (and the
// built-in simulator, which uses vLLM's metric names).
package vllm

import (
	"github.com/maas-platform/maas/pkg/registry"
	"github.com/maas-platform/maas/worker/internal/engine"
)

// Adapter reads vllm:num_requests_running / _waiting and the KV-cache usage gauge
// (vllm:kv_cache_usage_perc in the V1 engine, vllm:gpu_cache_usage_perc in V0; both are
// fractions 0..1 despite the name).
var Adapter = engine.Adapter{
	Kind:         registry.KindVLLM,
	HealthPath:   "/health",
	MetricsPath:  "/metrics",
	Running:      []string{"vllm:num_requests_running"},
	Waiting:      []string{"vllm:num_requests_waiting"},
	KVCacheUsage: []string{"vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc"},
}
