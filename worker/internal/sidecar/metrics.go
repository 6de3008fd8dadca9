package sidecar

import "github.com/prometheus/client_golang/prometheus"

// metrics are the worker's own series (maas_worker_*).
type metrics struct {
	registered, draining, engineUp prometheus.Gauge
	heartbeatFailures              prometheus.Counter
	scrapeFailures                 prometheus.Counter
	engineRestarts                 prometheus.Counter
	running, waiting, kvCache      prometheus.Gauge
	capacity                       prometheus.Gauge
	adapters                       prometheus.Gauge
	adapterLoads                   *prometheus.CounterVec
	adapterUnloads                 prometheus.Counter
}

func newMetrics(reg prometheus.Registerer) *metrics {
	g := func(name, help string) prometheus.Gauge {
		return prometheus.NewGauge(prometheus.GaugeOpts{Name: name, Help: help})
	}
	c := func(name, help string) prometheus.Counter {
		return prometheus.NewCounter(prometheus.CounterOpts{Name: name, Help: help})
	}
	m := &metrics{
		registered:        g("maas_worker_registered", "1 while the backend is registered with control."),
		draining:          g("maas_worker_draining", "1 while the worker drains before shutdown."),
		engineUp:          g("maas_worker_engine_up", "1 when the engine answers its health check."),
		heartbeatFailures: c("maas_worker_heartbeat_failures_total", "Heartbeats or registrations that control did not accept."),
		scrapeFailures:    c("maas_worker_engine_scrape_failures_total", "Failed scrapes of the engine's metrics."),
		engineRestarts:    c("maas_worker_engine_restarts_total", "Restarts of the supervised engine process."),
		running:           g("maas_worker_engine_running_requests", "Requests the engine is running (last scrape)."),
		waiting:           g("maas_worker_engine_waiting_requests", "Requests waiting in the engine's queue (last scrape)."),
		kvCache:           g("maas_worker_engine_kv_cache_usage_ratio", "Engine KV-cache usage, 0..1 (last scrape)."),
		capacity:          g("maas_worker_engine_capacity", "Capacity registered for the backend: the engine's concurrency limit, capped by MAAS_ENGINE_CAPACITY."),
		adapters:          g("maas_worker_adapters_loaded", "LoRA adapters loaded in the engine as control placed them (retiring ones included)."),
		adapterLoads: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "maas_worker_adapter_loads_total",
			Help: "LoRA adapter loads: result=loaded, or failed (fetch, archive or engine refused; retried with backoff)."}, []string{"result"}),
		adapterUnloads: c("maas_worker_adapter_unloads_total", "LoRA adapters unloaded because control no longer placed them here."),
	}
	m.adapterLoads.WithLabelValues("loaded")
	m.adapterLoads.WithLabelValues("failed")
	reg.MustRegister(m.adapters, m.adapterLoads, m.adapterUnloads)
	reg.MustRegister(m.registered, m.draining, m.engineUp, m.heartbeatFailures, m.scrapeFailures, m.engineRestarts, m.running, m.waiting, m.kvCache, m.capacity)
	return m
}
