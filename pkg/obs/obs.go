// Package obs sets up what every process shares for observability: the slog logger, the
// Prometheus registry with build information, and the /metrics handler for fasthttp.
package obs

import (
	"io"
	"log/slog"
	"os"
	"runtime"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/valyala/fasthttp"
	"github.com/valyala/fasthttp/fasthttpadaptor"
)

// Version is the build's version, set by the linker (-X …/pkg/obs.Version=…).
var Version = "dev"

// LogOptions configures NewLogger.
type LogOptions struct {
	Component string    // "gateway", "control", "worker"
	Debug     bool      // enable debug level
	JSON      bool      // JSON lines (production) instead of logfmt-like text
	Out       io.Writer // defaults to stderr
}

// NewLogger returns the process logger.
func NewLogger(o LogOptions) *slog.Logger {
	if o.Out == nil {
		o.Out = os.Stderr
	}
	lvl := slog.LevelInfo
	if o.Debug {
		lvl = slog.LevelDebug
	}
	hopts := &slog.HandlerOptions{Level: lvl}
	var h slog.Handler
	if o.JSON {
		h = slog.NewJSONHandler(o.Out, hopts)
	} else {
		h = slog.NewTextHandler(o.Out, hopts)
	}
	l := slog.New(h)
	if o.Component != "" {
		l = l.With("component", o.Component)
	}
	return l
}

// NewRegistry returns a registry with the Go runtime and process collectors and a
// maas_build_info gauge for component.
func NewRegistry(component string) *prometheus.Registry {
	reg := prometheus.NewRegistry()
	reg.MustRegister(
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
	)
	bi := prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "maas_build_info",
		Help: "Build information of the running process; always 1.",
	}, []string{"component", "version", "goversion"})
	bi.WithLabelValues(component, Version, runtime.Version()).Set(1)
	reg.MustRegister(bi)
	return reg
}

// MetricsHandler serves reg in the Prometheus exposition format.
func MetricsHandler(reg *prometheus.Registry) fasthttp.RequestHandler {
	return fasthttpadaptor.NewFastHTTPHandler(promhttp.HandlerFor(reg, promhttp.HandlerOpts{
		Registry: reg, EnableOpenMetrics: false,
	}))
}
