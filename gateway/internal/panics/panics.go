// Package panics records panics the gateway recovered from: logged with their stack at
// error level and counted in maas_gateway_panics_total{where}. Every goroutine that serves
// a request, writes a stream, writes the ledger or admits a request recovers through one
// Recorder, so a panic costs one request, never the process, and is never silent.
package panics

import (
	"fmt"
	"log/slog"
	"runtime/debug"

	"github.com/prometheus/client_golang/prometheus"
	clientmodel "github.com/prometheus/client_model/go"
)

// Places a panic is recovered in (the metric's bounded label values).
const (
	Handler = "handler" // the fasthttp handler of a request
	Stream  = "stream"  // a stream's writer, after the handler returned
	Ledger  = "ledger"  // the usage ledger's writer loop
	Admit   = "admit"   // quota admission or settlement
	Forward = "forward" // a request forwarded to control
)

// Recorder logs and counts recovered panics. Safe for concurrent use; a nil *Recorder
// logs nothing and counts nothing, so packages can take one optionally.
type Recorder struct {
	log   *slog.Logger
	count *prometheus.CounterVec
}

// New returns a Recorder registered on reg (nil: not registered).
func New(log *slog.Logger, reg prometheus.Registerer) (*Recorder, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	r := &Recorder{log: log, count: prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "maas_gateway_panics_total",
		Help: "Panics recovered, by where they happened. Each one cost at most one request; should stay 0.",
	}, []string{"where"})}
	for _, w := range []string{Handler, Stream, Ledger, Admit, Forward} {
		r.count.WithLabelValues(w)
	}
	if reg != nil {
		if err := reg.Register(r.count); err != nil {
			return nil, fmt.Errorf("panics: register metric: %w", err)
		}
	}
	return r, nil
}

// Record logs v (a recovered panic value) with the current goroutine's stack and counts
// it. Call it from the deferred function that recovered:
//
//	defer func() {
//		if v := recover(); v != nil {
//			rec.Record(panics.Ledger, v, "request_id", id)
//			// release what the request held
//		}
//	}()
func (r *Recorder) Record(where string, v any, attrs ...any) {
	if r == nil {
		return
	}
	r.count.WithLabelValues(where).Inc()
	args := append([]any{"where", where, "panic", fmt.Sprint(v), "stack", string(debug.Stack())}, attrs...)
	r.log.Error("recovered from a panic", args...)
}

// Count returns how many panics were recorded at where (for tests).
func (r *Recorder) Count(where string) float64 {
	if r == nil {
		return 0
	}
	var m clientmodel.Metric
	_ = r.count.WithLabelValues(where).Write(&m)
	return m.GetCounter().GetValue()
}
