package trainer

import (
	"context"
	"net"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/valyala/fasthttp"

	"github.com/maas-platform/maas/pkg/obs"
)

// Job results counted by maas_worker_training_jobs_total.
const (
	resultSucceeded = "succeeded" // adapter uploaded, control accepted the completion
	resultFailed    = "failed"    // the job failed (trainer crash, timeout, no adapter, dataset gone)
	resultStopped   = "stopped"   // control stopped it (cancelled, lease lost) or the worker shut down
	resultAbandoned = "abandoned" // left without a verdict after a local error or control unreachable
)

// metrics are the training mode's series (maas_worker_training_*).
type metrics struct {
	jobs          *prometheus.CounterVec
	running       prometheus.Gauge
	claimFailures prometheus.Counter
	slots         prometheus.Gauge
}

func newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{
		jobs: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "maas_worker_training_jobs_total",
			Help: "Fine-tuning jobs this worker ran, by result: succeeded, failed, stopped (by control or shutdown), abandoned (no verdict sent)."}, []string{"result"}),
		running:       prometheus.NewGauge(prometheus.GaugeOpts{Name: "maas_worker_training_jobs_running", Help: "Fine-tuning jobs this worker is running."}),
		claimFailures: prometheus.NewCounter(prometheus.CounterOpts{Name: "maas_worker_training_claim_failures_total", Help: "Claims of a fine-tuning job that control did not answer."}),
		slots:         prometheus.NewGauge(prometheus.GaugeOpts{Name: "maas_worker_training_slots", Help: "Jobs this worker can run at once (MAAS_TRAINER_GPUS / MAAS_TRAINER_GPUS_PER_JOB)."}),
	}
	for _, r := range []string{resultSucceeded, resultFailed, resultStopped, resultAbandoned} {
		m.jobs.WithLabelValues(r)
	}
	if reg != nil {
		reg.MustRegister(m.jobs, m.running, m.claimFailures, m.slots)
	}
	return m
}

// Serve answers /health and /metrics (reg) on ln until ctx ends: the HTTP side of a
// worker that only trains.
func Serve(ctx context.Context, ln net.Listener, reg *prometheus.Registry) error {
	metricsHandler := obs.MetricsHandler(reg)
	srv := &fasthttp.Server{
		Handler: func(c *fasthttp.RequestCtx) {
			switch string(c.Path()) {
			case "/health":
				c.SetBodyString("ok")
			case "/metrics":
				metricsHandler(c)
			default:
				c.SetStatusCode(fasthttp.StatusNotFound)
			}
		},
		Name: "maas-worker", ReadTimeout: 10 * time.Second, IdleTimeout: time.Minute,
	}
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ln) }()
	select {
	case err := <-done:
		return err
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_ = srv.ShutdownWithContext(sctx)
	<-done
	return nil
}
