// Package llamacpp is the engine adapter for llama.cpp's llama-server (started with
// --metrics for the Prometheus endpoint).
package llamacpp

import (
	"github.com/maas-platform/maas/pkg/registry"
	"github.com/maas-platform/maas/worker/internal/engine"
)

// Adapter reads llamacpp:requests_processing (running) and llamacpp:requests_deferred
// (waiting), and llamacpp:kv_cache_usage_ratio where the server version exports it.
var Adapter = engine.Adapter{
	Kind:         registry.KindLlamaCPP,
	HealthPath:   "/health",
	MetricsPath:  "/metrics",
	Running:      []string{"llamacpp:requests_processing"},
	Waiting:      []string{"llamacpp:requests_deferred"},
	KVCacheUsage: []string{"llamacpp:kv_cache_usage_ratio"},
}
