package upstream

import (
	"maps"
	"sync"

	"github.com/prometheus/client_golang/prometheus"
)

// healthGauge keeps maas_gateway_model_healthy_backends: per enabled model, the number of
// its backends that may take requests now. It is recomputed on each snapshot sync, load
// update and breaker state change, never per request. Safe for concurrent use.
type healthGauge struct {
	mu     sync.Mutex
	gauge  *prometheus.GaugeVec
	models map[string]int // exported label values and their values
}

func (h *healthGauge) register(r prometheus.Registerer) error {
	h.gauge = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "maas_gateway_model_healthy_backends",
		Help: "Backends that can take requests for the model (healthy, enabled, weight above 0, fresh heartbeat, breaker not open).",
	}, []string{"model"})
	h.models = map[string]int{}
	if r == nil {
		return nil
	}
	return r.Register(h.gauge)
}

// refreshHealth recomputes the per-model gauge from the current members. The members are
// read under the gauge's lock, so the last refresh always sees the latest Sync and a
// refresh racing with a Sync cannot bring back a deleted model.
func (p *Pool) refreshHealth() {
	h := &p.health
	h.mu.Lock()
	defer h.mu.Unlock()
	m := p.m.Load()
	seen := make(map[string]int, len(m.models))
	for _, name := range m.models {
		n := 0
		if g := m.byName[name]; g != nil {
			for _, u := range g.ups {
				if u.usable() {
					n++
				}
			}
		}
		h.gauge.WithLabelValues(name).Set(float64(n))
		seen[name] = n
	}
	for name := range h.models {
		if _, ok := seen[name]; !ok {
			h.gauge.DeleteLabelValues(name)
		}
	}
	h.models = seen
}

// HealthyBackends returns, per enabled model, the number of backends that could take its
// requests at the last refresh (the values of maas_gateway_model_healthy_backends).
func (p *Pool) HealthyBackends() map[string]int {
	h := &p.health
	h.mu.Lock()
	defer h.mu.Unlock()
	return maps.Clone(h.models)
}
