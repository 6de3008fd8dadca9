// Package tgi is the engine adapter for Hugging Face Text Generation Inference.
package tgi

import (
	"github.com/maas-platform/maas/pkg/registry"
	"github.com/maas-platform/maas/worker/internal/engine"
)

// Adapter reads tgi_batch_current_size (requests in the running batch) and tgi_queue_size
// (waiting). TGI exports no KV-cache usage fraction.
var Adapter = engine.Adapter{
	Kind:        registry.KindTGI,
	HealthPath:  "/health",
	MetricsPath: "/metrics",
	Running:     []string{"tgi_batch_current_size"},
	Waiting:     []string{"tgi_queue_size"},
}
