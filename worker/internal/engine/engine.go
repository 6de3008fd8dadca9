// Package engine talks to an inference engine over HTTP for the sidecar: it probes the
// engine's health endpoint, lists its models from /v1/models, scrapes its Prometheus
// endpoint into load figures, and reads its concurrency limit where the engine states one
// (an info endpoint, or a flag in the command line the worker starts it with), and loads
// and unloads LoRA adapters where the engine can (lora.go). What
// differs between engine kinds (paths, metric names, limit fields) is an Adapter; each kind
// has its own subpackage (engine/vllm, engine/sglang, …).
package engine

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"net/http"
	"strings"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/maas-platform/maas/pkg/openai"
	"github.com/maas-platform/maas/pkg/registry"
)

// Adapter describes one engine kind. The zero value of a metric list means the engine
// does not report that figure.
type Adapter struct {
	Kind        string
	HealthPath  string // 200 when ready
	MetricsPath string // Prometheus text endpoint; empty when the engine has none
	Running     []string
	Waiting     []string
	// KVCacheUsage lists gauges of KV-cache usage as a fraction 0..1; the first present wins.
	KVCacheUsage []string
	// LimitProbes are endpoints that may state the engine's concurrency limit, tried in
	// order; none when the engine exposes it nowhere.
	LimitProbes []LimitProbe
	// LimitArgs reads the limit from the engine's command line (split on white space):
	// the limit and the flag it came from, or 0. Nil when no flag sets it.
	LimitArgs func(args []string) (int, string)
	// LimitName is the engine's own name for its limit, for messages ("--max-num-seqs").
	LimitName string
	// LoRA is the engine's runtime LoRA API; nil when it has none (lora.go).
	LoRA *LoRAAPI
}

// ParseMetrics reads a Prometheus text exposition and returns the load figures: running
// and waiting are summed over every series of their metrics (several models or ranks),
// KV-cache usage is the largest series of the first metric present.
func (a Adapter) ParseMetrics(r io.Reader) (registry.Load, error) {
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(r)
	if err != nil {
		return registry.Load{}, fmt.Errorf("parse %s metrics: %w", a.Kind, err)
	}
	var l registry.Load
	l.Running = int(math.Round(sumOf(fams, a.Running)))
	l.Waiting = int(math.Round(sumOf(fams, a.Waiting)))
	for _, name := range a.KVCacheUsage {
		if f, ok := fams[name]; ok {
			l.KVCacheUsage = maxOf(f)
			break
		}
	}
	l.InFlight = l.Running + l.Waiting
	return l, nil
}

func value(m *dto.Metric) float64 {
	switch {
	case m.Gauge != nil:
		return m.Gauge.GetValue()
	case m.Counter != nil:
		return m.Counter.GetValue()
	case m.Untyped != nil:
		return m.Untyped.GetValue()
	}
	return 0
}

func sumOf(fams map[string]*dto.MetricFamily, names []string) float64 {
	var s float64
	for _, n := range names {
		if f, ok := fams[n]; ok {
			for _, m := range f.Metric {
				s += value(m)
			}
		}
	}
	return s
}

func maxOf(f *dto.MetricFamily) float64 {
	var mx float64
	for _, m := range f.Metric {
		mx = max(mx, value(m))
	}
	return mx
}

// Client is an engine reached over HTTP. It is safe for concurrent use.
type Client struct {
	Adapter Adapter
	BaseURL string // without /v1
	HTTP    *http.Client
}

// NewClient returns a client for the engine at baseURL.
func NewClient(a Adapter, baseURL string) *Client {
	return &Client{Adapter: a, BaseURL: strings.TrimRight(baseURL, "/"), HTTP: &http.Client{Timeout: 5 * time.Second}}
}

// ErrNotReady is returned while the engine does not answer its health check.
var ErrNotReady = errors.New("engine not ready")

func (c *Client) get(ctx context.Context, path string) (*http.Response, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, c.BaseURL+path, nil)
	if err != nil {
		return nil, err
	}
	return c.HTTP.Do(req)
}

// Ready checks the engine's health endpoint.
func (c *Client) Ready(ctx context.Context) error {
	resp, err := c.get(ctx, c.Adapter.HealthPath)
	if err != nil {
		return fmt.Errorf("%w: %v", ErrNotReady, err)
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%w: %s answered %d", ErrNotReady, c.Adapter.HealthPath, resp.StatusCode)
	}
	return nil
}

// Models lists the served models (LoRA adapters included) from /v1/models.
func (c *Client) Models(ctx context.Context) ([]string, error) {
	resp, err := c.get(ctx, "/v1/models")
	if err != nil {
		return nil, fmt.Errorf("list models: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("list models: status %d", resp.StatusCode)
	}
	var l openai.ModelList
	if err := json.NewDecoder(io.LimitReader(resp.Body, 8<<20)).Decode(&l); err != nil {
		return nil, fmt.Errorf("list models: decode: %w", err)
	}
	out := make([]string, 0, len(l.Data))
	for _, m := range l.Data {
		out = append(out, m.ID)
	}
	return out, nil
}

// Load scrapes the engine's metrics. Without a metrics endpoint it returns a zero Load.
func (c *Client) Load(ctx context.Context) (registry.Load, error) {
	if c.Adapter.MetricsPath == "" {
		return registry.Load{}, nil
	}
	resp, err := c.get(ctx, c.Adapter.MetricsPath)
	if err != nil {
		return registry.Load{}, fmt.Errorf("scrape metrics: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return registry.Load{}, fmt.Errorf("scrape metrics: status %d", resp.StatusCode)
	}
	return c.Adapter.ParseMetrics(io.LimitReader(resp.Body, 32<<20))
}
