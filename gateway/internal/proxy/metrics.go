package proxy

import (
	"strconv"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// unknownModel is the metric label of requests whose model is not resolved, so that
// client-chosen strings never become label values.
const unknownModel = "unknown"

type metrics struct {
	requests    *prometheus.CounterVec
	duration    *prometheus.HistogramVec
	ttft        *prometheus.HistogramVec
	itl         *prometheus.HistogramVec
	prompt      *prometheus.CounterVec
	completion  *prometheus.CounterVec
	inFlight    prometheus.Gauge
	streams     prometheus.Gauge
	rejections  *prometheus.CounterVec
	retries     *prometheus.CounterVec
	upstreamErr *prometheus.CounterVec
	// LoRA adapters loaded on demand (ondemand.go)
	adapterLoads *prometheus.CounterVec
	adapterWait  prometheus.Histogram
	// forwarded requests (forward.go)
	fwdRequests *prometheus.CounterVec
	fwdDuration *prometheus.HistogramVec
	fwdBytes    *prometheus.CounterVec

	perModel sync.Map // model name → *modelMetrics
	perReq   sync.Map // reqLabels → prometheus.Counter
}

type modelMetrics struct {
	duration, ttft, itl prometheus.Observer
	prompt, completion  prometheus.Counter
}

type reqLabels struct {
	model, backend string
	status         int
}

func newMetrics(r prometheus.Registerer) (*metrics, error) {
	latency := []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 120}
	m := &metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "maas_gateway_requests_total",
			Help: "Inference requests by model, HTTP status and backend."}, []string{"model", "status", "backend"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "maas_gateway_request_duration_seconds",
			Help: "Time from receiving a request to its last byte, by model.", Buckets: latency}, []string{"model"}),
		ttft: prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "maas_gateway_time_to_first_token_seconds",
			Help: "Time from receiving a streamed request to its first token event, by model.", Buckets: latency}, []string{"model"}),
		itl: prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "maas_gateway_inter_token_latency_seconds",
			Help:    "Time between two token events of a stream, by model.",
			Buckets: []float64{.001, .0025, .005, .01, .02, .04, .08, .16, .32, .64, 1.28, 2.56}}, []string{"model"}),
		prompt: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "maas_gateway_prompt_tokens_total",
			Help: "Prompt tokens processed, by model."}, []string{"model"}),
		completion: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "maas_gateway_completion_tokens_total",
			Help: "Completion tokens produced, by model."}, []string{"model"}),
		inFlight: prometheus.NewGauge(prometheus.GaugeOpts{Name: "maas_gateway_in_flight_requests",
			Help: "Inference requests being served, streams included."}),
		streams: prometheus.NewGauge(prometheus.GaugeOpts{Name: "maas_gateway_active_streams",
			Help: "Streaming responses in progress."}),
		rejections: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "maas_gateway_rejections_total",
			Help: "Requests refused before reaching a backend, by reason (invalid_key, forbidden, not_found, bad_request, rate_limit, quota, no_backend, busy)."},
			[]string{"reason"}),
		retries: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "maas_gateway_retries_total",
			Help: "Requests retried on another backend before their first byte, by model."}, []string{"model"}),
		upstreamErr: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "maas_gateway_upstream_errors_total",
			Help: "Backend failures by backend and kind (connect, timeout, status, stream; stale: a pooled connection the backend had closed, the request sent again on a new one)."}, []string{"backend", "kind"}),
		fwdRequests: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "maas_gateway_forwarded_requests_total",
			Help: "Requests forwarded to control (files, fine-tuning, vector stores, apps, the platform API), by route and HTTP status."},
			[]string{"route", "status"}),
		fwdDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "maas_gateway_forwarded_request_duration_seconds",
			Help: "Time from receiving a forwarded request to the last byte of its answer, by route.", Buckets: latency}, []string{"route"}),
		fwdBytes: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "maas_gateway_forwarded_bytes_total",
			Help: "Body bytes of forwarded requests, by direction (in: from clients to control, out: from control to clients)."},
			[]string{"direction"}),
		adapterLoads: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "maas_gateway_adapter_waits_total",
			Help: "Requests for a LoRA adapter that no backend served, by how their wait for an on-demand load ended (loaded, timeout, client_gone, not_placeable, not_adapter, error, queue_full, shutdown)."},
			[]string{"result"}),
		adapterWait: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "maas_gateway_adapter_wait_seconds",
			Help:    "Time requests for a LoRA adapter that no backend served waited for it to be loaded on demand.",
			Buckets: []float64{.05, .1, .25, .5, 1, 2, 3, 5, 10, 20, 30, 60}}),
	}
	if r != nil {
		for _, c := range []prometheus.Collector{m.requests, m.duration, m.ttft, m.itl, m.prompt, m.completion,
			m.inFlight, m.streams, m.rejections, m.retries, m.upstreamErr, m.fwdRequests, m.fwdDuration, m.fwdBytes,
			m.adapterLoads, m.adapterWait} {
			if err := r.Register(c); err != nil {
				return nil, err
			}
		}
	}
	return m, nil
}

func (m *metrics) model(name string) *modelMetrics {
	if v, ok := m.perModel.Load(name); ok {
		return v.(*modelMetrics)
	}
	mm := &modelMetrics{
		duration:   m.duration.WithLabelValues(name),
		ttft:       m.ttft.WithLabelValues(name),
		itl:        m.itl.WithLabelValues(name),
		prompt:     m.prompt.WithLabelValues(name),
		completion: m.completion.WithLabelValues(name),
	}
	v, _ := m.perModel.LoadOrStore(name, mm)
	return v.(*modelMetrics)
}

func (m *metrics) request(model, backend string, status int) {
	k := reqLabels{model, backend, status}
	if v, ok := m.perReq.Load(k); ok {
		v.(prometheus.Counter).Inc()
		return
	}
	c := m.requests.WithLabelValues(model, strconv.Itoa(status), backend)
	v, _ := m.perReq.LoadOrStore(k, c)
	v.(prometheus.Counter).Inc()
}

// forwarded counts one forwarded request (off the inference path: labels resolved per call).
func (m *metrics) forwarded(route string, status int, d time.Duration, in, out int64) {
	m.fwdRequests.WithLabelValues(route, strconv.Itoa(status)).Inc()
	m.fwdDuration.WithLabelValues(route).Observe(d.Seconds())
	if in > 0 {
		m.fwdBytes.WithLabelValues("in").Add(float64(in))
	}
	if out > 0 {
		m.fwdBytes.WithLabelValues("out").Add(float64(out))
	}
}
