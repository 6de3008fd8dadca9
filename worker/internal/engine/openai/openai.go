// Package openai is the engine adapter for any other OpenAI-compatible server: health is
// /v1/models answering 200, no load figures are scraped, and no concurrency limit is known
// (it must be configured).
package openai

import (
	"github.com/maas-platform/maas/pkg/registry"
	"github.com/maas-platform/maas/worker/internal/engine"
)

// Adapter is the generic OpenAI-compatible engine.
var Adapter = engine.Adapter{
	Kind:       registry.KindOpenAI,
	LimitName:  "its concurrency limit",
	HealthPath: "/v1/models",
}
