package sidecar

import (
	"fmt"
	"github.com/prometheus/client_golang/prometheus"
	"log/slog"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/maas-platform/maas/pkg/config"
	"github.com/maas-platform/maas/pkg/obs"
	"github.com/maas-platform/maas/pkg/registry"
	"github.com/maas-platform/maas/worker/internal/sim"
)

// Options configures the worker. Build it from Flags, or start from DefaultOptions.
type Options struct {
	Addr string // the worker's own HTTP (health, metrics): MAAS_WORKER_ADDR
	// Registry is what the worker's /metrics serves; nil: a registry of its own. Set it to
	// export series of other parts of the process (a trainer beside the engine).
	Registry          *prometheus.Registry
	ControlURL        string        // MAAS_CONTROL_URL
	InternalToken     string        // MAAS_INTERNAL_TOKEN
	HeartbeatInterval time.Duration // MAAS_HEARTBEAT_INTERVAL
	DrainGrace        time.Duration // MAAS_DRAIN_GRACE: longest wait for in-flight requests on shutdown
	BackendID         string        // MAAS_BACKEND_ID: stable id registered with control
	// Sim runs the built-in simulator in-process (--engine sim); SimOptions configure it.
	Sim        bool
	SimOptions sim.Options
	EngineURL  string // attach/supervise: the engine's base URL (MAAS_ENGINE_URL)
	EngineKind string // MAAS_ENGINE_KIND
	EngineCmd  string // supervise: command that starts the engine (MAAS_ENGINE_CMD)
	// AdvertiseURL is the engine URL registered with control (default: the engine URL).
	AdvertiseURL string
	// Capacity (MAAS_ENGINE_CAPACITY) caps the registered capacity, the gateway's in-flight
	// cap for this backend; 0 = not set. The engine's own limit is used where the engine
	// states one, the smaller of the two when both are known; with neither the worker
	// refuses to start (see capacity.go).
	Capacity int
	// AdapterCacheDir holds the LoRA adapters fetched from control, one directory each
	// (MAAS_ADAPTER_CACHE_DIR; the engine reads them from there, so it must see this path).
	AdapterCacheDir string
	// AdapterSlots is how many LoRA adapters the engine holds (MAAS_ENGINE_ADAPTER_SLOTS;
	// 0 = from the engine: the simulator's MAAS_SIM_MAX_LORAS, vLLM's flags in
	// MAAS_ENGINE_CMD; SGLang's only when set here). With none, control places no adapter
	// on this backend.
	AdapterSlots int
	// AdapterMaxBytes bounds an adapter archive and its extracted files (MAAS_ADAPTER_MAX_BYTES).
	AdapterMaxBytes int
	Logger          *slog.Logger
}

// DefaultOptions are the documented defaults.
func DefaultOptions() Options {
	return Options{
		Addr:              "127.0.0.1:8002",
		ControlURL:        "http://127.0.0.1:8001",
		HeartbeatInterval: 2 * time.Second,
		DrainGrace:        30 * time.Second,
		EngineKind:        registry.KindVLLM,
		SimOptions:        sim.DefaultOptions(),
		AdapterCacheDir:   filepath.Join(".data", "worker", "adapters"),
		AdapterMaxBytes:   4 << 30,
	}
}

// Flags binds the worker's settings.
type Flags struct {
	common   config.Common
	sim      sim.Flags
	o        Options
	engine   string
	jsonLogs bool
}

// Bind declares the settings on l.
func (f *Flags) Bind(l *config.Loader) {
	d := DefaultOptions()
	f.common.Bind(l)
	f.sim.Bind(l)
	l.String(&f.o.Addr, "MAAS_WORKER_ADDR", "addr", d.Addr, "worker HTTP address (health, metrics)")
	l.Duration(&f.o.HeartbeatInterval, "MAAS_HEARTBEAT_INTERVAL", "heartbeat-interval", d.HeartbeatInterval, "heartbeat period")
	l.Duration(&f.o.DrainGrace, "MAAS_DRAIN_GRACE", "drain-grace", d.DrainGrace, "longest wait for in-flight requests on shutdown")
	l.String(&f.o.BackendID, "MAAS_BACKEND_ID", "backend-id", "", "backend id registered with control (default: derived from host and engine address)")
	l.String(&f.engine, "MAAS_ENGINE", "engine", "", `"sim" runs the built-in simulator engine`)
	l.String(&f.o.EngineURL, "MAAS_ENGINE_URL", "engine-url", "", "base URL of the engine to attach to")
	l.String(&f.o.EngineKind, "MAAS_ENGINE_KIND", "engine-kind", d.EngineKind, "vllm, sglang, tgi, llamacpp, ollama or openai")
	l.String(&f.o.EngineCmd, "MAAS_ENGINE_CMD", "engine-cmd", "", "command that starts the engine (supervise mode)")
	l.String(&f.o.AdvertiseURL, "MAAS_ENGINE_ADVERTISE_URL", "engine-advertise-url", "", "engine URL given to control (default: the engine URL)")
	l.Int(&f.o.Capacity, "MAAS_ENGINE_CAPACITY", "engine-capacity", 0, "most requests the backend is given at once; caps the limit the engine states (required when the engine states none)")
	l.Bool(&f.jsonLogs, "MAAS_LOG_JSON", "log-json", false, "JSON log lines")
	l.String(&f.o.AdapterCacheDir, "MAAS_ADAPTER_CACHE_DIR", "adapter-cache-dir", d.AdapterCacheDir, "directory of the LoRA adapters fetched from control (the engine must read this path)")
	l.Int(&f.o.AdapterSlots, "MAAS_ENGINE_ADAPTER_SLOTS", "engine-adapter-slots", 0, "LoRA adapters the engine holds (0: from the engine's flags or the simulator)")
	l.Int(&f.o.AdapterMaxBytes, "MAAS_ADAPTER_MAX_BYTES", "adapter-max-bytes", d.AdapterMaxBytes, "largest LoRA adapter archive (and extracted size) fetched")
}

// Options validates the settings and returns the options.
func (f *Flags) Options() (Options, error) {
	o := f.o
	if err := f.common.Validate(false, false); err != nil {
		return o, err
	}
	if err := f.common.RequireInternalToken(); err != nil {
		return o, err
	}
	o.ControlURL = strings.TrimRight(f.common.ControlURL, "/")
	o.InternalToken = f.common.InternalToken
	o.Logger = obs.NewLogger(obs.LogOptions{Component: "worker", Debug: f.common.Debug, JSON: f.jsonLogs})
	switch f.engine {
	case "sim":
		so, err := f.sim.Options()
		if err != nil {
			return o, err
		}
		o.Sim, o.SimOptions, o.EngineKind = true, so, registry.KindSim
		if o.EngineURL != "" || o.EngineCmd != "" {
			return o, &config.Error{Name: "MAAS_ENGINE", Msg: "sim cannot be combined with --engine-url or --engine-cmd"}
		}
	case "":
		if o.EngineURL == "" {
			return o, &config.Error{Name: "MAAS_ENGINE_URL", Msg: "is required unless --engine sim (e.g. --engine-url http://127.0.0.1:8000 --engine-kind vllm)"}
		}
	default:
		return o, &config.Error{Name: "MAAS_ENGINE", Msg: fmt.Sprintf("%q is not an engine (only \"sim\"; attach with --engine-url)", f.engine)}
	}
	if !o.Sim {
		u, err := url.Parse(o.EngineURL)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return o, &config.Error{Name: "MAAS_ENGINE_URL", Msg: fmt.Sprintf("%q is not an http(s) URL", o.EngineURL)}
		}
		if _, ok := adapters[o.EngineKind]; !ok {
			return o, &config.Error{Name: "MAAS_ENGINE_KIND", Msg: fmt.Sprintf("%q is not one of vllm, sglang, tgi, llamacpp, ollama, openai", o.EngineKind)}
		}
	}
	if o.HeartbeatInterval < 100*time.Millisecond {
		return o, &config.Error{Name: "MAAS_HEARTBEAT_INTERVAL", Msg: "must be at least 100ms"}
	}
	if o.AdapterSlots < 0 {
		return o, &config.Error{Name: "MAAS_ENGINE_ADAPTER_SLOTS", Msg: "must not be negative"}
	}
	if o.AdapterMaxBytes <= 0 {
		return o, &config.Error{Name: "MAAS_ADAPTER_MAX_BYTES", Msg: "must be positive"}
	}
	if o.AdapterCacheDir == "" {
		return o, &config.Error{Name: "MAAS_ADAPTER_CACHE_DIR", Msg: "is empty"}
	}
	if o.Capacity < 0 {
		return o, &config.Error{Name: "MAAS_ENGINE_CAPACITY", Msg: "must not be negative"}
	}
	// Refuse now what can be known now: an engine that states its limit nowhere.
	if o.Capacity == 0 {
		switch a := adapters[o.EngineKind]; {
		case o.Sim && o.SimOptions.MaxConcurrency == 0:
			return o, &config.Error{Name: "MAAS_ENGINE_CAPACITY", Msg: "not set, and the simulator runs with no concurrency limit (MAAS_SIM_MAX_CONCURRENCY=0): set one of them"}
		case !o.Sim && len(a.LimitProbes) == 0 && a.LimitFromCommand(o.EngineCmd).N == 0:
			return o, noCapacityError(a)
		}
	}
	return o, nil
}

func (o *Options) fill(engineURL string) {
	if o.AdvertiseURL == "" {
		o.AdvertiseURL = engineURL
	}
	if o.BackendID == "" {
		host, _ := os.Hostname()
		u, _ := url.Parse(o.AdvertiseURL)
		id := host + "-" + strings.NewReplacer(":", "-", ".", "-", "[", "", "]", "").Replace(u.Host)
		o.BackendID = strings.Trim(id, "-")
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
}
