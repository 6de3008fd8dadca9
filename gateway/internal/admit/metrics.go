package admit

import "github.com/prometheus/client_golang/prometheus"

type reason uint8

const (
	reasonRPM reason = iota
	reasonTPM
	reasonConcurrency
	reasonBudget
)

var reasonNames = [...]string{reasonRPM: "rpm", reasonTPM: "tpm", reasonConcurrency: "concurrency", reasonBudget: "budget"}

type metrics struct {
	rejections    [len(scopeNames)][len(reasonNames)]prometheus.Counter
	fallback      prometheus.Counter
	settleDropped prometheus.Counter
	redisSeconds  prometheus.Observer
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	rej := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "maas_gateway_ratelimit_rejections_total",
		Help: "Requests refused by a rate limit or quota, by subject scope (key, user) and reason (rpm, tpm, concurrency, budget).",
	}, []string{"scope", "reason"})
	fallback := prometheus.NewCounter(prometheus.CounterOpts{
		Name: "maas_gateway_quota_redis_fallback_total",
		Help: "Requests decided by the local quota tier because Redis was configured but failed or was unreachable.",
	})
	dropped := prometheus.NewCounter(prometheus.CounterOpts{
		Name: "maas_gateway_quota_redis_settle_dropped_total",
		Help: "Quota settlements that could not be sent to Redis (the reservation stays charged; leases expire).",
	})
	hist := prometheus.NewHistogram(prometheus.HistogramOpts{
		Name:    "maas_gateway_quota_redis_duration_seconds",
		Help:    "Duration of the Redis round trip of an admission.",
		Buckets: []float64{.0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1},
	})
	m := &metrics{fallback: fallback, settleDropped: dropped, redisSeconds: hist}
	for s, sn := range scopeNames {
		for r, rn := range reasonNames {
			m.rejections[s][r] = rej.WithLabelValues(sn, rn)
		}
	}
	if reg != nil {
		for _, c := range []prometheus.Collector{rej, fallback, dropped, hist} {
			if err := reg.Register(c); err != nil {
				return nil, err
			}
		}
	}
	return m, nil
}

func (m *metrics) rejected(scope uint8, r reason) { m.rejections[scope][r].Inc() }
