package sim

import (
	"github.com/prometheus/client_golang/prometheus"
)

// Finish reasons as vLLM labels them on vllm:request_success_total.
const (
	finishStop   = "stop"
	finishLength = "length"
)

// metrics are the vLLM-named series a scraper (the worker, Prometheus) reads.
type metrics struct {
	promptTokens *prometheus.CounterVec
	genTokens    *prometheus.CounterVec
	success      *prometheus.CounterVec
	ttft         *prometheus.HistogramVec
	e2e          *prometheus.HistogramVec
	failures     *prometheus.CounterVec
}

// modelMetrics are one model's series, resolved once so the hot path does no label lookup.
type modelMetrics struct {
	promptTokens, genTokens prometheus.Counter
	stop, length            prometheus.Counter
	ttft, e2e               prometheus.Observer
}

var latencyBuckets = []float64{0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1, 2.5, 5, 7.5, 10, 20, 40, 80}

func newMetrics(reg prometheus.Registerer, s *Sim, primary string) *metrics {
	m := &metrics{
		promptTokens: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "vllm:prompt_tokens_total", Help: "Number of prefill tokens processed.",
		}, []string{"model_name"}),
		genTokens: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "vllm:generation_tokens_total", Help: "Number of generation tokens processed.",
		}, []string{"model_name"}),
		success: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "vllm:request_success_total", Help: "Count of successfully processed requests.",
		}, []string{"model_name", "finished_reason"}),
		ttft: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "vllm:time_to_first_token_seconds", Help: "Histogram of time to first token in seconds.",
			Buckets: latencyBuckets,
		}, []string{"model_name"}),
		e2e: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "vllm:e2e_request_latency_seconds", Help: "Histogram of end to end request latency in seconds.",
			Buckets: latencyBuckets,
		}, []string{"model_name"}),
		failures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "maas_sim_injected_failures_total", Help: "Requests that got an injected failure, by mode.",
		}, []string{"mode"}),
	}
	labels := prometheus.Labels{"model_name": primary}
	gauge := func(name, help string, f func() float64) prometheus.Collector {
		return prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: name, Help: help, ConstLabels: labels}, f)
	}
	reg.MustRegister(
		m.promptTokens, m.genTokens, m.success, m.ttft, m.e2e, m.failures,
		gauge("vllm:num_requests_running", "Number of requests currently running on GPU.", func() float64 { return float64(s.running.Load()) }),
		gauge("vllm:num_requests_waiting", "Number of requests waiting to be processed.", func() float64 { return float64(s.waiting.Load()) }),
		gauge("vllm:gpu_cache_usage_perc", "GPU KV-cache usage. 1 means 100 percent usage.", s.kvUsage),
		gauge("vllm:kv_cache_usage_perc", "KV-cache usage. 1 means 100 percent usage.", s.kvUsage),
	)
	return m
}

func (m *metrics) forModel(name string) *modelMetrics {
	return &modelMetrics{
		promptTokens: m.promptTokens.WithLabelValues(name),
		genTokens:    m.genTokens.WithLabelValues(name),
		stop:         m.success.WithLabelValues(name, finishStop),
		length:       m.success.WithLabelValues(name, finishLength),
		ttft:         m.ttft.WithLabelValues(name),
		e2e:          m.e2e.WithLabelValues(name),
	}
}
