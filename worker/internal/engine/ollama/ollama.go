// Package ollama is the engine adapter for Ollama. Ollama has no Prometheus endpoint, so
// no load figures are scraped: the backend reports zero load and the gateway balances it
// on its own in-flight counts. Its root path answers 200 ("Ollama is running").
package ollama

import (
	"github.com/maas-platform/maas/pkg/registry"
	"github.com/maas-platform/maas/worker/internal/engine"
)

// Adapter checks / for health and lists models from Ollama's OpenAI-compatible /v1/models.
// Ollama's concurrency limit (OLLAMA_NUM_PARALLEL, parallel requests per loaded model) is
// exposed by no endpoint: it is read from an OLLAMA_NUM_PARALLEL=N assignment in the
// command the worker supervises, or must be configured.
var Adapter = engine.Adapter{
	Kind:       registry.KindOllama,
	LimitName:  "OLLAMA_NUM_PARALLEL",
	HealthPath: "/",
	LimitArgs: func(args []string) (int, string) {
		n, flag, _ := engine.IntArg(args, "OLLAMA_NUM_PARALLEL")
		return n, flag
	},
}
