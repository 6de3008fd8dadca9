// Package ollama is the engine adapter for Ollama. Ollama has no Prometheus endpoint, so
// no load figures are scraped: the backend reports zero load and the gateway balances it
// on its own in-flight counts. Its root path answers 200 ("Ollama is running").
package ollama

import (
	"github.com/maas-platform/maas/pkg/registry"
	"github.com/maas-platform/maas/worker/internal/engine"
)

// Adapter checks / for health and lists models from Ollama's OpenAI-compatible /v1/models.
var Adapter = engine.Adapter{
	Kind:       registry.KindOllama,
	HealthPath: "/",
}
