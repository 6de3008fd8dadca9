// Package sidecar is the worker's core: it makes an engine known to control and keeps it
// known. It waits for the engine to be ready, decides the capacity it registers (the
// engine's stated concurrency limit, capped by MAAS_ENGINE_CAPACITY; see capacity.go),
// registers its models, heartbeats its load every interval (re-registering when control
// forgot it), marks it unhealthy while the engine is down — logging once when it goes down
// and once when it recovers, with how long it was down — and on shutdown drains (state
// draining, wait for in-flight requests to finish or the grace period to end), deregisters
// and stops the engine it owns. It loads and unloads LoRA adapters in the engine as control
// places them, and serves them among the engine's models (adapters.go).
package sidecar

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"slices"
	"time"

	"github.com/valyala/fasthttp"

	"github.com/maas-platform/maas/pkg/obs"
	"github.com/maas-platform/maas/pkg/registry"
	"github.com/maas-platform/maas/worker/internal/engine"
	"github.com/maas-platform/maas/worker/internal/engine/llamacpp"
	"github.com/maas-platform/maas/worker/internal/engine/ollama"
	"github.com/maas-platform/maas/worker/internal/engine/openai"
	"github.com/maas-platform/maas/worker/internal/engine/sglang"
	"github.com/maas-platform/maas/worker/internal/engine/tgi"
	"github.com/maas-platform/maas/worker/internal/engine/vllm"
	"github.com/maas-platform/maas/worker/internal/sim"
	"github.com/maas-platform/maas/worker/internal/supervise"
)

// Engine is what the sidecar needs from an engine.
type Engine interface {
	Ready(ctx context.Context) error
	Models(ctx context.Context) ([]string, error)
	Load(ctx context.Context) (registry.Load, error)
	// Limit is the concurrency limit the engine states (engine.Limit{} when none); an
	// error when it could not be asked.
	Limit(ctx context.Context) (engine.Limit, error)
}

var adapters = map[string]engine.Adapter{
	registry.KindVLLM:     vllm.Adapter,
	registry.KindSGLang:   sglang.Adapter,
	registry.KindTGI:      tgi.Adapter,
	registry.KindLlamaCPP: llamacpp.Adapter,
	registry.KindOllama:   ollama.Adapter,
	registry.KindOpenAI:   openai.Adapter,
}

// simEngine is the in-process simulator: its load is read directly; LoRA adapters are
// loaded through its vLLM API, as a real vLLM's would be.
type simEngine struct {
	s    *sim.Sim
	lora *engine.Client
}

func (e simEngine) LoadLoRA(ctx context.Context, name, path string) error {
	return e.lora.LoadLoRA(ctx, name, path)
}

func (e simEngine) UnloadLoRA(ctx context.Context, name string) error {
	return e.lora.UnloadLoRA(ctx, name)
}

func (e simEngine) LoRAs(ctx context.Context) (map[string]string, error) {
	return e.lora.LoRAs(ctx)
}

func (e simEngine) Ready(context.Context) error { return nil }
func (e simEngine) Models(context.Context) ([]string, error) {
	return e.s.Models(), nil
}
func (e simEngine) Load(context.Context) (registry.Load, error) {
	l := e.s.Load()
	return registry.Load{Running: l.Running, Waiting: l.Waiting, KVCacheUsage: l.KVCacheUsage, InFlight: l.Running + l.Waiting}, nil
}

// Limit is the simulator's MaxConcurrency (0 = no limit, none stated).
func (e simEngine) Limit(context.Context) (engine.Limit, error) {
	return engine.Limit{N: e.s.Capacity(), Source: "MAAS_SIM_MAX_CONCURRENCY"}, nil
}

// simAdapter names the simulator in capacity messages.
var simAdapter = engine.Adapter{Kind: registry.KindSim, LimitName: "MAAS_SIM_MAX_CONCURRENCY"}

// Run runs the worker until ctx ends, then drains and returns.
func Run(ctx context.Context, o Options) error {
	log := o.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	reg := o.Registry
	if reg == nil {
		reg = obs.NewRegistry("worker")
	}
	m := newMetrics(reg)

	// The worker's own HTTP server: health and metrics.
	ln, err := net.Listen("tcp", o.Addr)
	if err != nil {
		return fmt.Errorf("listen %s: %w", o.Addr, err)
	}
	metricsHandler := obs.MetricsHandler(reg)
	srv := &fasthttp.Server{
		Handler: func(c *fasthttp.RequestCtx) {
			switch string(c.Path()) {
			case "/health":
				c.SetStatusCode(200)
				c.SetBodyString("ok")
			case "/metrics":
				metricsHandler(c)
			default:
				c.SetStatusCode(404)
			}
		},
		Name: "maas-worker", ReadTimeout: 10 * time.Second, IdleTimeout: time.Minute,
	}
	srvDone := make(chan error, 1)
	go func() { srvDone <- srv.Serve(ln) }()
	defer func() {
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.ShutdownWithContext(sctx)
		<-srvDone
	}()

	// The engine.
	var eng Engine
	adapter, cmdLimit := simAdapter, engine.Limit{}
	var simSrv *sim.Sim
	var sup *supervise.Supervisor
	supDone := make(chan struct{})
	engineCtx, stopEngine := context.WithCancel(context.Background())
	defer stopEngine()
	switch {
	case o.Sim:
		so := o.SimOptions
		so.Logger = log
		if simSrv, err = sim.New(so); err != nil {
			return err
		}
		if err := simSrv.Listen(); err != nil {
			return err
		}
		simDone := make(chan error, 1)
		go func() { simDone <- simSrv.Serve() }()
		defer func() { <-simDone }()
		defer func() {
			sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			_ = simSrv.Stop(sctx)
		}()
		eng = simEngine{s: simSrv, lora: engine.NewClient(vllm.Adapter, simSrv.URL())}
		o.fill(simSrv.URL())
		close(supDone)
	default:
		adapter = adapters[o.EngineKind]
		cmdLimit = adapter.LimitFromCommand(o.EngineCmd)
		eng = engine.NewClient(adapter, o.EngineURL)
		o.fill(o.EngineURL)
		if o.EngineCmd != "" {
			so := supervise.DefaultOptions()
			so.Command, so.Logger = o.EngineCmd, log.With("engine_kind", o.EngineKind)
			so.OnRestart = m.engineRestarts.Inc
			if sup, err = supervise.New(so); err != nil {
				return err
			}
			go func() {
				defer close(supDone)
				_ = sup.Run(engineCtx)
			}()
		} else {
			close(supDone)
		}
	}
	defer func() { stopEngine(); <-supDone }()
	log.Info("worker started", "backend_id", o.BackendID, "engine_kind", o.EngineKind, "engine_url", o.AdvertiseURL, "addr", ln.Addr().String(), "simulator", o.Sim)

	w := &worker{o: o, log: log, m: m, eng: eng, adapter: adapter, cmdLimit: cmdLimit, now: time.Now,
		cc: newControlClient(o.ControlURL, o.InternalToken)}
	w.ad = w.adapterSyncer(simSrv)
	if w.ad != nil {
		syncCtx, stopSync := context.WithCancel(context.Background())
		syncDone := make(chan struct{})
		go func() { defer close(syncDone); w.ad.run(syncCtx) }()
		defer func() { stopSync(); <-syncDone }()
	}
	if err := w.waitReady(ctx); err != nil {
		if ctx.Err() != nil {
			return nil // stopped before the engine came up: nothing registered
		}
		return err
	}
	w.loop(ctx)
	return w.drain()
}

// worker holds the registration state; only Run's goroutine uses it.
type worker struct {
	o          Options
	log        *slog.Logger
	m          *metrics
	eng        Engine
	adapter    engine.Adapter // the engine kind, for capacity messages
	cmdLimit   engine.Limit   // the limit set in the supervised command line, if any
	cc         *controlClient
	now        func() time.Time
	models     []string
	capacity   int // registered capacity
	registered bool
	downSince  time.Time    // when the engine stopped answering; zero while it answers
	ad         *adapterSync // nil when the engine holds no adapters
}

// adapterSyncer returns the LoRA adapter syncer for the engine, or nil when it has no
// adapter slots: the simulator's MAAS_SIM_MAX_LORAS (with its runtime LoRA API on), else
// MAAS_ENGINE_ADAPTER_SLOTS, else the engine's command line (vLLM --enable-lora with
// --max-cpu-loras or --max-loras; SGLang only with MAAS_ENGINE_ADAPTER_SLOTS).
func (w *worker) adapterSyncer(simSrv *sim.Sim) *adapterSync {
	le, ok := w.eng.(loraEngine)
	slots, from := 0, ""
	switch {
	case !ok:
	case simSrv != nil:
		if w.o.SimOptions.RuntimeLoRAUpdating {
			slots, from = simSrv.MaxLoRAs(), "MAAS_SIM_MAX_LORAS"
		}
	case w.adapter.LoRA == nil:
		if w.o.AdapterSlots > 0 {
			w.log.Warn("MAAS_ENGINE_ADAPTER_SLOTS ignored: this engine kind cannot load LoRA adapters at run time", "engine_kind", w.o.EngineKind)
		}
	case w.o.AdapterSlots > 0:
		slots, from = w.o.AdapterSlots, "MAAS_ENGINE_ADAPTER_SLOTS"
	case w.o.EngineKind == registry.KindSGLang:
		// SGLang selects an adapter by "model": "<base>:<adapter>" (or a lora_path field),
		// not by the adapter's own name, which is what gateways send: placing adapters on it
		// is the operator's explicit choice (MAAS_ENGINE_ADAPTER_SLOTS) until a gateway
		// rewrites the model for it.
		if n, _ := w.adapter.SlotsFromCommand(w.o.EngineCmd); n > 0 {
			w.log.Warn("SGLang LoRA slots not offered to control: SGLang serves adapters as <base>:<adapter>, gateways request them by name; set MAAS_ENGINE_ADAPTER_SLOTS to offer them anyway")
		}
	default:
		slots, from = w.adapter.SlotsFromCommand(w.o.EngineCmd)
	}
	if slots <= 0 {
		w.log.Info("no LoRA adapter slots: control places no adapter on this backend")
		return nil
	}
	w.log.Info("LoRA adapters placed by control", "slots", slots, "slots_from", from, "cache_dir", w.o.AdapterCacheDir)
	a := newAdapterSync(le, w.cc.fetchArchive, w.o.AdapterCacheDir, int64(w.o.AdapterMaxBytes), slots,
		w.o.HeartbeatInterval/2, w.log)
	a.m = w.m
	return a
}

// served is the engine's model list with the adapters this worker placed replaced by those
// it serves (an adapter being retired is still in the engine, no longer served).
func (w *worker) served(models []string) []string {
	if w.ad == nil {
		return models
	}
	held := w.ad.Held()
	out := make([]string, 0, len(models))
	for _, m := range models {
		if !slices.Contains(held, m) {
			out = append(out, m)
		}
	}
	return append(out, w.ad.Serving()...)
}

// waitReady polls the engine's health, then its models and its limit, until they answer.
// It returns ctx's error when ctx ends first, and an error naming MAAS_ENGINE_CAPACITY
// when the engine is up but no capacity can be decided.
func (w *worker) waitReady(ctx context.Context) error {
	t := time.NewTicker(250 * time.Millisecond)
	defer t.Stop()
	logged := false
	for {
		err := w.eng.Ready(ctx)
		if err == nil {
			var models []string
			if models, err = w.eng.Models(ctx); err == nil && len(models) > 0 {
				var c int
				var from string
				c, from, err = w.readCapacity(ctx)
				if errors.Is(err, errNoCapacity) {
					return noCapacityError(w.adapter)
				}
				if err == nil {
					w.models = models
					w.setCapacity(c)
					w.m.engineUp.Set(1)
					w.log.Info("engine ready", "models", models, "capacity", c, "capacity_from", from)
					return nil
				}
			}
			if err == nil {
				err = errors.New("engine lists no model")
			}
		}
		if !logged {
			w.log.Info("waiting for the engine", "err", err)
			logged = true
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
		}
	}
}

// readCapacity asks the engine for its limit (falling back on the command line's) and
// decides the capacity with the configured one.
func (w *worker) readCapacity(ctx context.Context) (int, string, error) {
	l, err := w.eng.Limit(ctx)
	if err != nil {
		return 0, "", err
	}
	if l.N == 0 {
		l = w.cmdLimit
	}
	return decideCapacity(l, w.o.Capacity)
}

func (w *worker) setCapacity(c int) {
	w.capacity = c
	w.m.capacity.Set(float64(c))
}

// engineDown records that the engine stopped answering; only the first failure is logged.
func (w *worker) engineDown(err error) {
	if !w.downSince.IsZero() {
		w.log.Debug("engine still down", "err", err)
		return
	}
	w.downSince = w.now()
	w.log.Warn("engine down; reporting the backend unhealthy", "err", err)
}

// engineUp records that the engine answers again: one line with how long it was down, and
// its limit read again (a restarted engine may have been started with another); a changed
// capacity is registered again.
func (w *worker) engineUp(ctx context.Context) {
	if w.downSince.IsZero() {
		return
	}
	down := w.now().Sub(w.downSince)
	w.downSince = time.Time{}
	if w.ad != nil {
		w.ad.Forget() // a restarted engine holds none of them
	}
	w.log.Info("engine recovered; reporting the backend healthy", "down_for", down.Round(time.Millisecond).String())
	c, from, err := w.readCapacity(ctx)
	switch {
	case err != nil:
		w.log.Warn("engine limit not read again; keeping the registered capacity", "capacity", w.capacity, "err", err)
	case c != w.capacity:
		w.log.Info("engine capacity changed; registering again", "from", w.capacity, "to", c, "capacity_from", from)
		w.setCapacity(c)
		w.registered = false
	}
}

func (w *worker) register(ctx context.Context) error {
	req := registry.RegisterRequest{
		ID: w.o.BackendID, URL: w.o.AdvertiseURL, EngineKind: w.o.EngineKind, Models: w.models,
		Capacity: w.capacity, HeartbeatIntervalMS: int(w.o.HeartbeatInterval / time.Millisecond), WorkerVersion: obs.Version,
	}
	if _, err := w.cc.register(ctx, req); err != nil {
		w.registered = false
		w.m.registered.Set(0)
		return err
	}
	w.registered = true
	w.m.registered.Set(1)
	w.log.Info("registered with control", "backend_id", w.o.BackendID, "models", w.models, "capacity", w.capacity)
	return nil
}

// loop registers and heartbeats until ctx ends.
func (w *worker) loop(ctx context.Context) {
	t := time.NewTicker(w.o.HeartbeatInterval)
	defer t.Stop()
	var changed chan struct{} // nil without adapters: never ready
	if w.ad != nil {
		changed = w.ad.changed
	}
	for {
		w.beat(ctx, registry.StateHealthy)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-changed: // adapters loaded or retired: report at once
		}
	}
}

// beat sends one heartbeat (registering first when needed). wanted is healthy or
// draining; an engine that does not answer makes it unhealthy.
func (w *worker) beat(ctx context.Context, wanted string) {
	state := wanted
	load, err := w.probe(ctx)
	if err != nil {
		if wanted == registry.StateHealthy {
			state = registry.StateUnhealthy
		}
	}
	if !w.registered {
		if err := w.register(ctx); err != nil {
			w.m.heartbeatFailures.Inc()
			w.log.Warn("register failed", "err", err)
			return
		}
	}
	hb := registry.HeartbeatRequest{Load: load, State: state}
	if w.ad != nil {
		hb.AdapterSlots, hb.Adapters = w.ad.slots, w.ad.Serving()
	}
	if models, err := w.eng.Models(ctx); err == nil && len(models) > 0 {
		if models = w.served(models); !slices.Equal(models, w.models) {
			w.log.Info("served models changed", "models", models)
			w.models, hb.Models = models, models
		}
	}
	var b registry.Backend
	b, err = w.cc.heartbeat(ctx, w.o.BackendID, hb)
	if err == nil && w.ad != nil && b.DesiredAdapters != nil {
		w.ad.Desire(*b.DesiredAdapters)
	}
	switch {
	case errors.Is(err, errBackendNotFound):
		w.log.Warn("control forgot this backend; registering again", "backend_id", w.o.BackendID)
		w.registered = false
		w.m.registered.Set(0)
		if err := w.register(ctx); err == nil {
			if _, err := w.cc.heartbeat(ctx, w.o.BackendID, hb); err != nil {
				w.m.heartbeatFailures.Inc()
			}
		} else {
			w.m.heartbeatFailures.Inc()
		}
	case err != nil:
		w.m.heartbeatFailures.Inc()
		if ctx.Err() == nil {
			w.log.Warn("heartbeat failed", "err", err)
		}
	}
}

// probe checks the engine and reads its load, updating the metrics.
func (w *worker) probe(ctx context.Context) (registry.Load, error) {
	if err := w.eng.Ready(ctx); err != nil {
		w.m.engineUp.Set(0)
		w.engineDown(err)
		return registry.Load{}, err
	}
	w.m.engineUp.Set(1)
	w.engineUp(ctx)
	l, err := w.eng.Load(ctx)
	if err != nil {
		w.m.scrapeFailures.Inc()
		w.log.Warn("engine metrics scrape failed", "err", err)
		return registry.Load{}, nil // the engine answers: still healthy, load unknown
	}
	w.m.running.Set(float64(l.Running))
	w.m.waiting.Set(float64(l.Waiting))
	w.m.kvCache.Set(l.KVCacheUsage)
	return l, nil
}

// drain marks the backend draining, waits for in-flight requests to reach zero or the
// grace period to end, and deregisters.
func (w *worker) drain() error {
	ctx, cancel := context.WithTimeout(context.Background(), w.o.DrainGrace+10*time.Second)
	defer cancel()
	if !w.registered {
		return nil
	}
	w.m.draining.Set(1)
	w.log.Info("draining", "grace", w.o.DrainGrace)
	w.beat(ctx, registry.StateDraining)
	deadline := time.Now().Add(w.o.DrainGrace)
	poll := min(100*time.Millisecond, w.o.HeartbeatInterval)
	lastBeat := time.Now()
	for {
		l, err := w.eng.Load(ctx)
		if err != nil || l.InFlight == 0 && l.Running+l.Waiting == 0 {
			break
		}
		if time.Now().After(deadline) {
			w.log.Warn("drain grace ended with requests in flight", "in_flight", l.Running+l.Waiting)
			break
		}
		if time.Since(lastBeat) >= w.o.HeartbeatInterval {
			w.beat(ctx, registry.StateDraining) // stay known while draining
			lastBeat = time.Now()
		}
		time.Sleep(poll)
	}
	if err := w.cc.deregister(ctx, w.o.BackendID); err != nil {
		w.log.Warn("deregister failed", "err", err)
		return nil // control expires the backend by TTL
	}
	w.m.registered.Set(0)
	w.log.Info("deregistered", "backend_id", w.o.BackendID)
	return nil
}
