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

	// Registered only with Redis (redisCollectors).
	switches   *prometheus.CounterVec
	batch      prometheus.Histogram
	reconciled prometheus.Counter
}

// Tiers, as the switches metric names them.
const (
	tierLocal = "local"
	tierRedis = "redis"
)

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
		Help:    "Duration of one Redis round trip of admissions (one or more, pipelined).",
		Buckets: []float64{.0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1},
	})
	m := &metrics{fallback: fallback, settleDropped: dropped, redisSeconds: hist}
	m.switches = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "maas_gateway_quota_tier_switches_total",
		Help: "Switches of the quota tier deciding admissions, by the tier switched to (local: Redis outage, redis: recovery).",
	}, []string{"tier"})
	m.switches.WithLabelValues(tierLocal)
	m.switches.WithLabelValues(tierRedis)
	m.batch = prometheus.NewHistogram(prometheus.HistogramOpts{
		Name:    "maas_gateway_quota_redis_batch_admissions",
		Help:    "Admissions sent together in one Redis round trip.",
		Buckets: []float64{1, 2, 4, 8, 16, 32, 64, 128},
	})
	m.reconciled = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "maas_gateway_quota_redis_reconciled_total",
		Help: "Admissions undone in Redis because their reply came too late or never (the request was decided by the local tier).",
	})
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

func (m *metrics) redisCollectors() []prometheus.Collector {
	return []prometheus.Collector{m.switches, m.batch, m.reconciled}
}
