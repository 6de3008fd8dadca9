package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/maas-platform/maas/bench/internal/load"
	"github.com/maas-platform/maas/bench/internal/procstat"
	"github.com/maas-platform/maas/bench/internal/report"
	"github.com/maas-platform/maas/bench/internal/stack"
)

// The prompt of every chat request: ~60 words, a typical short chat turn.
const prompt = "You are a helpful assistant. Summarise the following paragraph in one sentence: " +
	"The platform routes requests from many tenants to pooled inference engines, enforces per key " +
	"rate limits and token budgets, records usage for billing, and exports metrics for operators."

func chatBody(model string, maxTokens int, stream bool) []byte {
	return fmt.Appendf(nil, `{"model":%q,"messages":[{"role":"user","content":%q}],"max_tokens":%d,"stream":%t}`,
		model, prompt, maxTokens, stream)
}

// scenario is one named measurement.
type scenario struct {
	name     string
	idle     bool // held streams: reported in their own table
	settings string
	run      func(ctx context.Context, e *env, sc *report.Scenario) error
}

func scenarios() []scenario {
	var list []scenario
	for _, c := range []int{1, 16, 64, 256} {
		list = append(list, scenario{
			name:     fmt.Sprintf("chat c%d", c),
			settings: fmt.Sprintf("non-streaming chat, closed loop, concurrency %d, 16 output tokens, ledger and access log on", c),
			run: func(ctx context.Context, e *env, sc *report.Scenario) error {
				return e.closed(ctx, sc, e.fast, chatBody(modelFast, 16, false), false, c, "chat-nonstream")
			},
		})
	}
	for _, itl := range []struct {
		sim  func(*env) *sim
		name string
	}{{func(e *env) *sim { return e.fast }, "itl 0"}, {func(e *env) *sim { return e.itl5 }, "itl 5ms"}} {
		for _, c := range []int{16, 256} {
			list = append(list, scenario{
				name:     fmt.Sprintf("stream 64 tok %s c%d", itl.name, c),
				settings: fmt.Sprintf("streaming chat, 64 tokens, %s, closed loop, concurrency %d", itl.name, c),
				run: func(ctx context.Context, e *env, sc *report.Scenario) error {
					s := itl.sim(e)
					return e.closed(ctx, sc, s, chatBody(s.model, 64, true), true, c, "stream")
				},
			})
		}
	}
	for _, pct := range []int{50, 90} {
		list = append(list, scenario{
			name:     fmt.Sprintf("open loop %d%%", pct),
			settings: fmt.Sprintf("non-streaming chat at a fixed rate of %d%% of the direct capacity measured at concurrency 64", pct),
			run: func(ctx context.Context, e *env, sc *report.Scenario) error {
				return e.open(ctx, sc, float64(pct)/100)
			},
		})
	}
	for _, n := range []int{1000, 10000} {
		list = append(list, scenario{
			name:     fmt.Sprintf("idle streams %d", n),
			idle:     true,
			settings: fmt.Sprintf("%d concurrent long-lived streams held open (one token per 2 s)", n),
			run: func(ctx context.Context, e *env, sc *report.Scenario) error {
				return e.idle(ctx, sc, n)
			},
		})
	}
	list = append(list,
		scenario{
			name:     "auth+quota 10k keys local",
			settings: "non-streaming chat, concurrency 64, 10,000 distinct keys round-robin, each with RPM and TPM limits, local quota tier",
			run: func(ctx context.Context, e *env, sc *report.Scenario) error {
				return e.manyKeys(ctx, sc, e.gateway, "local")
			},
		},
		scenario{
			name:     "auth+quota 10k keys redis",
			settings: "as above, global quota tier in Redis (one gateway)",
			run: func(ctx context.Context, e *env, sc *report.Scenario) error {
				if e.gatewayRedis == nil {
					sc.Notes = append(sc.Notes, "skipped: no Redis (set MAAS_BENCH_REDIS_URL)")
					return nil
				}
				return e.manyKeys(ctx, sc, e.gatewayRedis, "redis")
			},
		},
	)
	return list
}

func run(ctx context.Context, o options, logger *slog.Logger) error {
	all := scenarios()
	if o.list {
		for _, s := range all {
			fmt.Printf("%-28s %s\n", s.name, s.settings)
		}
		return nil
	}
	raiseFileLimit(logger)
	e, err := setup(ctx, o, logger)
	if e != nil {
		defer e.stack.Stop()
	}
	if err != nil {
		return err
	}
	r := &report.Run{Machine: machine()}
	r.Machine.Command = "make bench"
	for _, s := range all {
		if o.filter != nil && !o.filter.MatchString(s.name) {
			continue
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		logger.Info("scenario", "name", s.name)
		sc := &report.Scenario{Name: s.name, Settings: s.settings, HeldStreams: s.idle}
		if err := s.run(ctx, e, sc); err != nil {
			return fmt.Errorf("scenario %s: %w", s.name, err)
		}
		sc.Summarise()
		r.Scenarios = append(r.Scenarios, sc)
		logger.Info("scenario done", "name", s.name, "ratios", sc.Ratios)
	}
	if err := e.checkLedger(ctx, r); err != nil {
		return err
	}
	stamp := time.Now().UTC().Format("20060102-150405")
	if err := r.Write(o.out, stamp); err != nil {
		return err
	}
	r.Markdown(os.Stdout)
	logger.Info("results written", "dir", o.out, "stamp", stamp)
	return nil
}

func raiseFileLimit(logger *slog.Logger) {
	var l syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &l); err != nil {
		return
	}
	l.Cur = l.Max
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &l); err != nil {
		logger.Warn("cannot raise the open-file limit", "err", err)
	}
}

func machine() report.Machine {
	m := report.Machine{Cores: runtime.NumCPU(), GoVersion: runtime.Version(), Date: time.Now().UTC().Format(time.RFC3339)}
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "model name" {
				m.CPU = strings.TrimSpace(v)
				break
			}
		}
	}
	if out, err := exec.Command("git", "rev-parse", "--short", "HEAD").Output(); err == nil {
		m.Commit = strings.TrimSpace(string(out))
		if st, err := exec.Command("git", "status", "--porcelain", "--untracked-files=no").Output(); err == nil && len(st) > 0 {
			m.Commit += "-dirty"
		}
	}
	return m
}

// measure runs fn while sampling the proxy process's CPU and RSS (and, with plat, the CPU of
// PostgreSQL and Redis), and returns the figures. A CPU that cannot be read fails the trial:
// a zero would pass for a cheap proxy.
func measure(proxy *stack.Proc, plat *platform, fn func() load.Result) (report.Figures, error) {
	var cpu0 time.Duration
	var plat0 platformCPU
	var peak int64
	stop := make(chan struct{})
	var wg sync.WaitGroup
	if proxy != nil {
		var err error
		if cpu0, err = procstat.CPU(proxy.PID()); err != nil {
			return report.Figures{}, fmt.Errorf("%s cpu: %w", proxy.Name, err)
		}
		wg.Go(func() {
			t := time.NewTicker(100 * time.Millisecond)
			defer t.Stop()
			for {
				if rss, _, err := procstat.Memory(proxy.PID()); err == nil && rss > peak {
					peak = rss
				}
				select {
				case <-stop:
					return
				case <-t.C:
				}
			}
		})
	}
	if plat != nil {
		var err error
		if plat0, err = plat.cpu(); err != nil {
			close(stop)
			wg.Wait()
			return report.Figures{}, err
		}
	}
	res := fn()
	close(stop)
	wg.Wait()
	f := figures(res)
	if proxy != nil {
		cpu1, err := procstat.CPU(proxy.PID())
		if err != nil {
			return f, fmt.Errorf("%s cpu: %w", proxy.Name, err)
		}
		f.ProxyCPUSecs = (cpu1 - cpu0).Seconds()
		if res.Requests > 0 {
			f.CPUPerReqUS = float64((cpu1 - cpu0).Microseconds()) / float64(res.Requests)
		}
		f.PeakRSSMiB = float64(peak) / (1 << 20)
	}
	if plat != nil {
		plat1, err := plat.cpu()
		if err != nil {
			return f, err
		}
		if res.Requests > 0 {
			per := func(d time.Duration) float64 { return float64(d.Microseconds()) / float64(res.Requests) }
			f.PostgresCPUPerReqUS = per(plat1.pg - plat0.pg)
			f.RedisCPUPerReqUS = per(plat1.redis - plat0.redis)
			f.PlatformCPUPerReqUS = f.CPUPerReqUS + f.PostgresCPUPerReqUS + f.RedisCPUPerReqUS
		}
	}
	return f, nil
}

func figures(r load.Result) report.Figures {
	ms := func(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
	f := report.Figures{
		Requests: r.Requests, Errors: r.Errors, RPS: r.RPS(), FirstError: r.FirstError,
		P50ms: ms(load.Percentile(r.Latencies, 50)), P90ms: ms(load.Percentile(r.Latencies, 90)),
		P99ms: ms(load.Percentile(r.Latencies, 99)),
	}
	if n := len(r.Latencies); n > 0 {
		f.MaxMs = ms(r.Latencies[n-1])
	}
	if len(r.TTFTs) > 0 {
		f.TTFTp50ms = ms(load.Percentile(r.TTFTs, 50))
		f.TTFTp99ms = ms(load.Percentile(r.TTFTs, 99))
	}
	return f
}

// closed runs a closed-loop scenario in the three modes, interleaved.
func (e *env) closed(ctx context.Context, sc *report.Scenario, s *sim, body []byte, stream bool, conc int, profileKind string) error {
	targets := e.targets(s, body, stream)
	// Warm every path's connections once.
	for _, t := range targets {
		load.ClosedLoop(ctx, t.target, min(conc, 16), 300*time.Millisecond)
	}
	for trial := range e.o.trials {
		for _, t := range targets {
			var stopProfile func()
			if t.mode == report.Gateway && trial == 0 && e.wantProfile(sc.Name, profileKind, conc) {
				stopProfile = e.profile(ctx, sc.Name)
			}
			f, err := measure(t.proxy, nil, func() load.Result { return load.ClosedLoop(ctx, t.target, conc, e.o.duration) })
			if stopProfile != nil {
				stopProfile()
			}
			if err != nil {
				return err
			}
			sc.Add(t.mode, f)
		}
	}
	if conc == 64 && !stream && e.directCapacity == 0 {
		// Capacity figure for the open-loop scenarios: direct median at concurrency 64.
		var rps []float64
		for _, f := range sc.Trials[report.Direct] {
			rps = append(rps, f.RPS)
		}
		e.directCapacity = medianOf(rps)
	}
	e.addTargets(sc, conc, stream)
	return nil
}

func medianOf(v []float64) float64 {
	if len(v) == 0 {
		return 0
	}
	s := append([]float64(nil), v...)
	for i := range s {
		for j := i + 1; j < len(s); j++ {
			if s[j] < s[i] {
				s[i], s[j] = s[j], s[i]
			}
		}
	}
	return s[len(s)/2]
}

type modeTarget struct {
	mode   string
	proxy  *stack.Proc
	target load.Target
}

func (e *env) targets(s *sim, body []byte, stream bool) []modeTarget {
	path := "/v1/chat/completions"
	return []modeTarget{
		{report.Direct, nil, load.Target{Addr: s.proc.Addr, Path: path, Body: body, Stream: stream}},
		{report.Passthrough, s.pass, load.Target{Addr: s.pass.Addr, Path: path, Body: body, Stream: stream}},
		{report.Gateway, e.gateway, load.Target{Addr: e.gateway.Addr, Path: path, Body: body, Stream: stream, Tokens: []string{e.key}}},
	}
}

// addTargets attaches the targets to the scenarios they concern.
func (e *env) addTargets(sc *report.Scenario, conc int, stream bool) {
	// Targets are checked after Summarise; compute from the trials now via a temporary summary.
	tmp := *sc
	tmp.Summarise()
	g, p, d := tmp.Median[report.Gateway], tmp.Median[report.Passthrough], tmp.Median[report.Direct]
	errs := float64(g.Errors + p.Errors + d.Errors)
	sc.Targets = append(sc.Targets, report.Target{Name: "errors", Value: errs, Limit: 0, Max: true})
	switch {
	case !stream && conc == 64:
		sc.Targets = append(sc.Targets,
			report.Target{Name: "gateway CPU per request ≤ 1.6× pass-through", Value: g.CPUPerReqUS / p.CPUPerReqUS, Limit: 1.6, Unit: "×", Max: true},
			report.Target{Name: "throughput ≥ 55% of direct", Value: g.RPS / d.RPS, Limit: 0.55, Unit: "×"},
			report.Target{Name: "added p99 ≤ 1 ms", Value: g.P99ms - d.P99ms, Limit: 1, Unit: "ms", Max: true},
		)
	case !stream && conc == 1:
		sc.Targets = append(sc.Targets, report.Target{Name: "added p50 ≤ 150 µs", Value: (g.P50ms - d.P50ms) * 1000, Limit: 150, Unit: "µs", Max: true})
	case stream:
		sc.Targets = append(sc.Targets, report.Target{Name: "gateway CPU per 64-chunk stream ≤ 700 µs", Value: g.CPUPerReqUS, Limit: 700, Unit: "µs", Max: true})
	}
}

// open runs the open-loop scenario at frac of the direct capacity.
func (e *env) open(ctx context.Context, sc *report.Scenario, frac float64) error {
	capacity := e.directCapacity
	if capacity == 0 {
		r := load.ClosedLoop(ctx, load.Target{Addr: e.fast.proc.Addr, Path: "/v1/chat/completions", Body: chatBody(modelFast, 16, false)}, 64, e.o.duration)
		capacity = r.RPS()
		e.directCapacity = capacity
	}
	rate := capacity * frac
	sc.Settings += fmt.Sprintf(" (%.0f req/s)", rate)
	for range e.o.trials {
		for _, t := range e.targets(e.fast, chatBody(modelFast, 16, false), false) {
			f, err := measure(t.proxy, nil, func() load.Result { return load.OpenLoop(ctx, t.target, rate, e.o.duration, 1024) })
			if err != nil {
				return err
			}
			sc.Add(t.mode, f)
		}
	}
	tmp := *sc
	tmp.Summarise()
	sc.Targets = append(sc.Targets, report.Target{Name: "errors", Value: float64(tmp.Median[report.Gateway].Errors + tmp.Median[report.Direct].Errors), Max: true})
	return nil
}

// idle holds n streams through each mode and reports the proxy's RSS and CPU while held.
// The pass-through and the gateway are fresh processes, so that their memory is what the
// held streams cost and not what earlier scenarios left behind.
func (e *env) idle(ctx context.Context, sc *report.Scenario, n int) error {
	hold := 5 * time.Second
	gw, err := e.startGateway(ctx, fmt.Sprintf("gateway-idle-%d", n))
	if err != nil {
		return err
	}
	defer gw.Stop(30 * time.Second)
	paddr, _ := stack.FreeAddr()
	pass, err := e.stack.Start(ctx, fmt.Sprintf("passthrough-idle-%d", n), paddr, e.self,
		[]string{"passthrough", "-listen", paddr, "-upstream", e.idleSim.proc.Addr}, nil, "")
	if err != nil {
		return err
	}
	defer pass.Stop(10 * time.Second)
	if err := waitServes(ctx, gw.Addr, e.key, e.idleSim.model); err != nil {
		return err
	}
	body := chatBody(e.idleSim.model, 30, true)
	targets := e.targets(e.idleSim, body, true)
	targets[1].proxy, targets[1].target.Addr = pass, pass.Addr
	targets[2].proxy, targets[2].target.Addr = gw, gw.Addr
	for _, t := range targets {
		var cpu0, cpu1 time.Duration
		var rss int64
		start := time.Now()
		s := load.OpenStreams(ctx, t.target, n)
		opened := time.Since(start)
		var cpuErr error
		if t.proxy != nil {
			cpu0, cpuErr = procstat.CPU(t.proxy.PID())
		}
		time.Sleep(hold)
		if t.proxy != nil && cpuErr == nil {
			if cpu1, cpuErr = procstat.CPU(t.proxy.PID()); cpuErr == nil {
				rss, _, cpuErr = procstat.Memory(t.proxy.PID())
			}
		}
		if cpuErr != nil {
			s.Close()
			return fmt.Errorf("%s cpu: %w", t.proxy.Name, cpuErr)
		}
		s.Close()
		f := report.Figures{Requests: int64(s.Opened), Errors: int64(s.Failed), FirstError: s.FirstEr,
			RPS: float64(s.Opened) / opened.Seconds(), PeakRSSMiB: float64(rss) / (1 << 20)}
		if t.proxy != nil {
			f.ProxyCPUSecs = (cpu1 - cpu0).Seconds()
		}
		sc.Add(t.mode, f)
		note := fmt.Sprintf("%s: %d/%d streams open in %.1fs", t.mode, s.Opened, n, opened.Seconds())
		if t.proxy != nil {
			note += fmt.Sprintf("; proxy RSS %.0f MiB and CPU %.2fs over %v while held", f.PeakRSSMiB, f.ProxyCPUSecs, hold)
		}
		if s.FirstEr != "" {
			note += "; first error: " + s.FirstEr
		}
		sc.Notes = append(sc.Notes, note)
		// Let the proxy and simulator tear the streams down before the next mode.
		time.Sleep(2 * time.Second)
	}
	tmp := *sc
	tmp.Summarise()
	g := tmp.Median[report.Gateway]
	sc.Targets = append(sc.Targets, report.Target{Name: "errors", Value: float64(g.Errors), Max: true})
	if n == 10000 {
		sc.Targets = append(sc.Targets, report.Target{Name: "gateway RSS with 10,000 idle streams ≤ 500 MiB", Value: g.PeakRSSMiB, Limit: 500, Unit: "MiB", Max: true})
	}
	return nil
}

// manyKeys runs non-streaming chat at concurrency 64 with 10,000 keys round-robin. The
// gateway's trials also measure PostgreSQL and Redis: the quota tiers are compared on the
// platform's CPU per request (gateway + PostgreSQL + Redis), not the gateway's alone.
func (e *env) manyKeys(ctx context.Context, sc *report.Scenario, gw *stack.Proc, tier string) error {
	if e.platformErr != nil {
		return fmt.Errorf("platform processes: %w", e.platformErr)
	}
	body := chatBody(modelFast, 16, false)
	targets := e.targets(e.fast, body, false)
	targets[2].proxy = gw
	targets[2].target.Addr = gw.Addr
	targets[2].target.Tokens = e.manyKeyList
	for range e.o.trials {
		for _, t := range targets {
			var plat *platform
			if t.mode == report.Gateway {
				plat = e.platform
			}
			f, err := measure(t.proxy, plat, func() load.Result { return load.ClosedLoop(ctx, t.target, 64, e.o.duration) })
			if err != nil {
				return err
			}
			sc.Add(t.mode, f)
		}
	}
	tmp := *sc
	tmp.Summarise()
	g := tmp.Median[report.Gateway]
	sc.Targets = append(sc.Targets, report.Target{Name: "errors", Value: float64(g.Errors), Max: true})
	switch tier {
	case "local":
		e.localPlatformCPU = g.PlatformCPUPerReqUS
	case "redis":
		if e.localPlatformCPU <= 0 {
			sc.Notes = append(sc.Notes, "no local-tier figure in this run: run both quota scenarios together for the ratio")
			break
		}
		sc.Targets = append(sc.Targets, report.Target{Name: "platform CPU per request (gateway + PostgreSQL + Redis) ≤ 1.3× the local tier",
			Value: g.PlatformCPUPerReqUS / e.localPlatformCPU, Limit: 1.3, Unit: "×", Max: true})
	}
	return nil
}

func (e *env) wantProfile(name, kind string, conc int) bool {
	if e.o.cpuprofile == "" {
		return false
	}
	return (kind == "chat-nonstream" && conc == 64) || (kind == "stream" && conc == 256 && strings.Contains(name, "itl 0"))
}

// profile collects a gateway CPU profile over the next trial through its pprof endpoint.
func (e *env) profile(ctx context.Context, name string) func() {
	if e.pprofAddr == "" {
		return nil
	}
	secs := int(e.o.duration.Seconds())
	if secs < 1 {
		secs = 1
	}
	file := filepath.Join(e.o.cpuprofile, strings.NewReplacer(" ", "_", "%", "pct").Replace(name)+".pprof")
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := fetch(ctx, fmt.Sprintf("http://%s/debug/pprof/profile?seconds=%d", e.pprofAddr, secs), file); err != nil {
			e.logger.Warn("cpu profile failed", "err", err)
			return
		}
		e.logger.Info("cpu profile written", "file", file)
	}()
	return func() { <-done }
}
