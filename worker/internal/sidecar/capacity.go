package sidecar

import (
	"fmt"

	"github.com/maas-platform/maas/pkg/config"
	"github.com/maas-platform/maas/worker/internal/engine"
)

// The registered capacity is the gateway's in-flight cap for the backend. It comes from
// the engine wherever the engine states its concurrency limit (an info endpoint, or a flag
// in the command line the worker supervises), else from MAAS_ENGINE_CAPACITY. Both given:
// the smaller wins — the setting caps the engine's limit (an operator may keep a backend
// below what it could run) but cannot raise it, since requests beyond the engine's limit
// only wait in its queue where the gateway cannot balance them (TGI refuses them with 429).
// Neither: the worker refuses to start, naming the setting; there is no default, because
// any number would be a guess that either starves or overloads the engine.

// decideCapacity returns the capacity to register and a note for the log.
func decideCapacity(stated engine.Limit, configured int) (int, string, error) {
	switch {
	case stated.N > 0 && configured > 0 && configured < stated.N:
		return configured, fmt.Sprintf("MAAS_ENGINE_CAPACITY=%d caps the engine's limit %d (%s)", configured, stated.N, stated.Source), nil
	case stated.N > 0 && configured > stated.N:
		return stated.N, fmt.Sprintf("the engine's limit %d (%s) caps MAAS_ENGINE_CAPACITY=%d", stated.N, stated.Source, configured), nil
	case stated.N > 0:
		return stated.N, "the engine's limit (" + stated.Source + ")", nil
	case configured > 0:
		return configured, "MAAS_ENGINE_CAPACITY", nil
	}
	return 0, "", errNoCapacity
}

var errNoCapacity = &config.Error{Name: "MAAS_ENGINE_CAPACITY", Msg: "not set, and the engine states no concurrency limit"}

// noCapacityError explains, for an engine kind, why no capacity is known and what to set.
func noCapacityError(a engine.Adapter) error {
	how := "it exposes none"
	if len(a.LimitProbes) > 0 {
		how = "none at"
		for i, p := range a.LimitProbes {
			if i > 0 {
				how += ","
			}
			how += " GET " + p.Path
		}
	}
	if a.LimitArgs != nil {
		how += fmt.Sprintf(", and MAAS_ENGINE_CMD does not set %s", a.LimitName)
	}
	return &config.Error{Name: "MAAS_ENGINE_CAPACITY", Msg: fmt.Sprintf(
		"not set, and the %s engine states no concurrency limit (%s): set MAAS_ENGINE_CAPACITY to the engine's %s",
		a.Kind, how, a.LimitName)}
}
