package main

import (
	"context"
	"errors"
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
	"github.com/maas-platform/maas/bench/internal/trial"
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
	headline bool // a target's scenario: -headline-trials trials, not -trials
	settings string
	run      func(ctx context.Context, e *env, sc *report.Scenario, trials int) error
}

func scenarios() []scenario {
	var list []scenario
	for _, c := range []int{1, 16, 64, 256} {
		list = append(list, scenario{
			name:     fmt.Sprintf("chat c%d", c),
			headline: c == 64,
			settings: fmt.Sprintf("non-streaming chat, closed loop, concurrency %d, 16 output tokens, ledger and access log on", c),
			run: func(ctx context.Context, e *env, sc *report.Scenario, trials int) error {
				return e.closed(ctx, sc, e.fast, chatBody(modelFast, 16, false), false, c, trials, "chat-nonstream")
			},
		})
	}
	for _, itl := range []struct {
		sim      func(*env) *sim
		name     string
		settings string
	}{
		{func(e *env) *sim { return e.fast }, "itl 0", "no latency, one flushed write per token"},
		{func(e *env) *sim { return e.itl5 }, "itl 5ms", "5 ms between tokens"},
	} {
		for _, c := range []int{16, 256} {
			list = append(list, scenario{
				name:     fmt.Sprintf("stream 64 tok %s c%d", itl.name, c),
				headline: itl.name == "itl 0",
				settings: fmt.Sprintf("streaming chat, 64 tokens, %s, closed loop, concurrency %d", itl.settings, c),
				run: func(ctx context.Context, e *env, sc *report.Scenario, trials int) error {
					s := itl.sim(e)
					return e.closed(ctx, sc, s, chatBody(s.model, 64, true), true, c, trials, "stream")
				},
			})
		}
	}
	for _, pct := range []int{50, 90} {
		list = append(list, scenario{
			name:     fmt.Sprintf("open loop %d%%", pct),
			settings: fmt.Sprintf("non-streaming chat at a fixed rate of %d%% of the direct capacity measured at concurrency 64", pct),
			run: func(ctx context.Context, e *env, sc *report.Scenario, trials int) error {
				return e.open(ctx, sc, float64(pct)/100, trials)
			},
		})
	}
	for _, n := range []int{1000, 10000} {
		list = append(list, scenario{
			name:     fmt.Sprintf("idle streams %d", n),
			idle:     true,
			settings: fmt.Sprintf("%d concurrent long-lived streams held open (one token per 2 s)", n),
			run: func(ctx context.Context, e *env, sc *report.Scenario, _ int) error {
				return e.idle(ctx, sc, n)
			},
		})
	}
	list = append(list,
		scenario{
			name:     "auth+quota 10k keys local",
			settings: "non-streaming chat, concurrency 64, 10,000 distinct keys round-robin, each with RPM and TPM limits, local quota tier",
			run: func(ctx context.Context, e *env, sc *report.Scenario, trials int) error {
				return e.manyKeys(ctx, sc, e.gateway, "local", trials)
			},
		},
		scenario{
			name:     "auth+quota 10k keys redis",
			settings: "as above, global quota tier in Redis (one gateway)",
			run: func(ctx context.Context, e *env, sc *report.Scenario, trials int) error {
				if e.gatewayRedis == nil {
					sc.Notes = append(sc.Notes, "skipped: no Redis (set MAAS_BENCH_REDIS_URL)")
					return nil
				}
				return e.manyKeys(ctx, sc, e.gatewayRedis, "redis", trials)
			},
		},
	)
	return append(list, lifecycleScenarios()...)
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
		defer e.close()
	}
	if err != nil {
		return err
	}
	r := &report.Run{Machine: machine()}
	r.Machine.Command = command(os.Args[1:])
	for _, s := range all {
		if o.filter != nil && !o.filter.MatchString(s.name) {
			continue
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		trials := o.trials
		if s.headline {
			trials = o.headlineTrials
		}
		logger.Info("scenario", "name", s.name, "trials", trials)
		sc := &report.Scenario{Name: s.name, Settings: s.settings, HeldStreams: s.idle}
		if err := s.run(ctx, e, sc, trials); err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			// The scenario ends here; the run goes on, and exits with an error at the end.
			sc.Fail(err)
		}
		sc.Summarise()
		r.Scenarios = append(r.Scenarios, sc)
		if len(sc.Failures) > 0 {
			logger.Error("scenario failed", "name", s.name, "failures", sc.Failures)
		} else {
			logger.Info("scenario done", "name", s.name, "ratios", sc.Ratios)
		}
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
	if r.Failed() {
		return errors.New("some scenarios failed: see the failures at the top of the report")
	}
	return nil
}

// command is how the run was asked for, for the report: make bench and the arguments
// that change what is measured (not where the results go).
func command(args []string) string {
	c := "make bench"
	for i := 0; i < len(args); i++ {
		a := args[i]
		name, _, hasValue := strings.Cut(strings.TrimLeft(a, "-"), "=")
		if name == "out" || name == "bin" || name == "database-url" || name == "redis-url" || name == "cpuprofile" {
			if !hasValue {
				i++
			}
			continue
		}
		if strings.ContainsAny(a, " '*|()") {
			a = "'" + a + "'"
		}
		c += " " + a
	}
	return c
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

// measure runs one mode's trial (fn) and returns its figures: the proxy's CPU and peak RSS,
// and the CPU of PostgreSQL and Redis over the same span. A gateway trial's span ends once
// the usage ledger holds a row for each request served (the flush of the trial's records
// is part of its cost); rows that differ from requests fail with trial.ErrLedgerMismatch,
// returned with the figures. A CPU that cannot be read, a proxy that served requests
// without using CPU, or a trial without a single request fail the trial: a zero would pass
// for a cheap proxy.
func (e *env) measure(ctx context.Context, t modeTarget, fn func() load.Result) (report.Figures, error) {
	if e.platform == nil {
		return report.Figures{}, fmt.Errorf("platform processes: %w", e.platformErr)
	}
	var src []trial.Source
	if t.proxy != nil {
		pid := t.proxy.PID()
		src = append(src, trial.Source{Name: t.proxy.Name, Busy: true, Read: func() (time.Duration, error) { return procstat.CPU(pid) }})
	}
	src = append(src, e.platform.sources()...)
	meter, err := trial.Start(src...)
	if err != nil {
		return report.Figures{}, err
	}
	var peak int64
	stop := make(chan struct{})
	var wg sync.WaitGroup
	if t.proxy != nil {
		wg.Go(func() {
			tick := time.NewTicker(100 * time.Millisecond)
			defer tick.Stop()
			for {
				if rss, _, err := procstat.Memory(t.proxy.PID()); err == nil && rss > peak {
					peak = rss
				}
				select {
				case <-stop:
					return
				case <-tick.C:
				}
			}
		})
	}
	from := time.Now()
	res := fn()
	to := time.Now()
	close(stop)
	wg.Wait()
	f := figures(res)
	if res.Requests == 0 {
		return f, fmt.Errorf("%s trial: no request completed", t.mode)
	}
	var ledgerErr error
	var checkCPU time.Duration // PostgreSQL's CPU for the ledger counts: the bench's, not the trial's
	if t.mode == report.Gateway {
		f.LedgerRows, checkCPU, ledgerErr = e.waitLedger(ctx, from, to, res.Requests)
		f.LedgerChecked = ledgerErr == nil || errors.Is(ledgerErr, trial.ErrLedgerMismatch)
		if ledgerErr != nil && !f.LedgerChecked {
			return f, ledgerErr
		}
	}
	used, err := meter.Stop(res.Requests)
	if err != nil {
		return f, err
	}
	if t.proxy != nil {
		f.ProxyCPUSecs = used[0].Seconds()
		f.CPUPerReqUS = trial.PerRequest(used[0], res.Requests)
		f.PeakRSSMiB = float64(peak) / (1 << 20)
		used = used[1:]
	}
	f.PostgresCPUPerReqUS = trial.PerRequest(max(used[0]-checkCPU, 0), res.Requests)
	if len(used) > 1 {
		f.RedisCPUPerReqUS = trial.PerRequest(used[1], res.Requests)
	}
	f.PlatformCPUPerReqUS = f.CPUPerReqUS + f.PostgresCPUPerReqUS + f.RedisCPUPerReqUS
	if ledgerErr != nil {
		return f, fmt.Errorf("%s trial: %w", t.mode, ledgerErr)
	}
	return f, nil
}

// waitLedger waits until the usage ledger holds one row per request sent to a gateway
// between from and to (its created_at is the gateway's arrival time of the request, on
// this machine's clock), and returns the rows counted. Nothing else sends the gateways
// requests while a bench runs, so the window holds exactly the trial's requests (widened by
// a millisecond each way against timestamp rounding: the gateway is idle that close to a
// trial, whose neighbours are at least a ledger wait away). It also
// returns the CPU PostgreSQL spent while counting (read around each count), which the
// trial's figure must not carry.
func (e *env) waitLedger(ctx context.Context, from, to time.Time, requests int64) (rows int64, countCPU time.Duration, err error) {
	c := trial.LedgerCheck{Count: func(ctx context.Context) (int64, error) {
		before, err := e.platform.pgCPU()
		if err != nil {
			return 0, err
		}
		var n int64
		err = e.db.QueryRow(ctx, `SELECT count(*) FROM usage_records WHERE created_at >= $1 AND created_at <= $2`,
			from.Add(-time.Millisecond), to.Add(time.Millisecond)).Scan(&n)
		if err != nil {
			return 0, err
		}
		after, err := e.platform.pgCPU()
		if err != nil {
			return 0, err
		}
		countCPU += after - before
		return n, nil
	}, Poll: 100 * time.Millisecond, Timeout: 20 * time.Second}
	start := time.Now()
	rows, err = c.Wait(ctx, requests)
	if waited := time.Since(start); waited > 2*time.Second {
		e.logger.Warn("slow ledger flush", "rows", rows, "requests", requests, "waited", waited)
	}
	return rows, countCPU, err
}

// runTrial records one mode's trial in sc: a ledger mismatch fails the scenario but keeps
// its figures (they were measured); any other error is returned, ending the scenario.
func (e *env) runTrial(ctx context.Context, sc *report.Scenario, t modeTarget, fn func() load.Result) error {
	f, err := e.measure(ctx, t, fn)
	if err != nil && !errors.Is(err, trial.ErrLedgerMismatch) {
		return err
	}
	if err != nil {
		sc.Fail(err)
	}
	sc.Add(t.mode, f)
	return nil
}

// warm sends each target's load once, unmeasured, so that every path's connections exist
// before the first trial; the gateway's warm-up records are waited for (and checked) so
// that their flush does not land in a trial.
func (e *env) warm(ctx context.Context, sc *report.Scenario, targets []modeTarget, conc int) {
	for _, t := range targets {
		from := time.Now()
		r := load.ClosedLoop(ctx, t.target, conc, 300*time.Millisecond)
		if t.mode == report.Gateway && r.Requests > 0 {
			if _, _, err := e.waitLedger(ctx, from, time.Now(), r.Requests); err != nil {
				sc.Fail(fmt.Errorf("warm-up: %w", err))
			}
		}
	}
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
func (e *env) closed(ctx context.Context, sc *report.Scenario, s *sim, body []byte, stream bool, conc, trials int, profileKind string) error {
	targets := e.targets(s, body, stream)
	e.warm(ctx, sc, targets, min(conc, 16))
	for i := range trials {
		for _, t := range trial.Order(targets, i) {
			var stopProfile func()
			if t.mode == report.Gateway && i == 0 && e.wantProfile(sc.Name, profileKind, conc) {
				stopProfile = e.profile(ctx, sc.Name)
			}
			err := e.runTrial(ctx, sc, t, func() load.Result { return load.ClosedLoop(ctx, t.target, conc, e.o.duration) })
			if stopProfile != nil {
				stopProfile()
			}
			if err != nil {
				return err
			}
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
	if stream && s == e.fast {
		sc.Notes = append(sc.Notes, e.chunkNote)
	}
	e.addTargets(sc, conc, stream, s == e.fast)
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

// addTargets attaches the performance issue's targets to the scenarios they concern
// (perFlush: streams from the simulator that flushes every token at zero latency).
func (e *env) addTargets(sc *report.Scenario, conc int, stream, perFlush bool) {
	// Targets are checked after Summarise; compute from the trials now via a temporary summary.
	tmp := *sc
	tmp.Summarise()
	g, p, d := tmp.Median[report.Gateway], tmp.Median[report.Passthrough], tmp.Median[report.Direct]
	errs := float64(g.Errors + p.Errors + d.Errors)
	sc.Targets = append(sc.Targets, report.Target{Name: "errors", Value: errs, Limit: 0, Max: true})
	switch {
	case !stream && conc == 64:
		sc.Targets = append(sc.Targets,
			report.Target{Name: "gateway CPU per request ≤ 1.25× pass-through", Value: g.CPUPerReqUS / p.CPUPerReqUS, Limit: 1.25, Unit: "×", Max: true},
			report.Target{Name: "throughput ≥ 85% of the pass-through's", Value: g.RPS / p.RPS, Limit: 0.85, Unit: "×"},
			report.Target{Name: "added p99 over the pass-through ≤ 1 ms", Value: g.P99ms - p.P99ms, Limit: 1, Unit: "ms", Max: true},
			report.Target{Name: "PostgreSQL CPU per ledger record ≤ 5 µs", Value: g.PostgresCPUPerReqUS, Limit: 5, Unit: "µs", Max: true},
		)
	case !stream && conc == 1:
		sc.Targets = append(sc.Targets, report.Target{Name: "added p50 ≤ 150 µs", Value: (g.P50ms - d.P50ms) * 1000, Limit: 150, Unit: "µs", Max: true})
	case stream && perFlush:
		sc.Targets = append(sc.Targets, report.Target{Name: "gateway CPU per 64-token stream ≤ 1.3× pass-through", Value: g.CPUPerReqUS / p.CPUPerReqUS, Limit: 1.3, Unit: "×", Max: true})
	}
}

// open runs the open-loop scenario at frac of the direct capacity.
func (e *env) open(ctx context.Context, sc *report.Scenario, frac float64, trials int) error {
	capacity := e.directCapacity
	if capacity == 0 {
		r := load.ClosedLoop(ctx, load.Target{Addr: e.fast.proc.Addr, Path: "/v1/chat/completions", Body: chatBody(modelFast, 16, false)}, 64, e.o.duration)
		capacity = r.RPS()
		e.directCapacity = capacity
	}
	rate := capacity * frac
	sc.Settings += fmt.Sprintf(" (%.0f req/s)", rate)
	targets := e.targets(e.fast, chatBody(modelFast, 16, false), false)
	for i := range trials {
		for _, t := range trial.Order(targets, i) {
			if err := e.runTrial(ctx, sc, t, func() load.Result { return load.OpenLoop(ctx, t.target, rate, e.o.duration, 1024) }); err != nil {
				return err
			}
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
		var rss int64
		start := time.Now()
		s := load.OpenStreams(ctx, t.target, n)
		opened := time.Since(start)
		var src []trial.Source
		if t.proxy != nil {
			pid := t.proxy.PID()
			src = append(src, trial.Source{Name: t.proxy.Name, Busy: true, Read: func() (time.Duration, error) { return procstat.CPU(pid) }})
		}
		meter, err := trial.Start(src...)
		if err != nil {
			s.Close()
			return err
		}
		time.Sleep(hold)
		used, err := meter.Stop(int64(s.Opened))
		if err == nil && t.proxy != nil {
			rss, _, err = procstat.Memory(t.proxy.PID())
		}
		s.Close()
		if err != nil {
			return err
		}
		f := report.Figures{Requests: int64(s.Opened), Errors: int64(s.Failed), FirstError: s.FirstEr,
			RPS: float64(s.Opened) / opened.Seconds(), PeakRSSMiB: float64(rss) / (1 << 20)}
		if t.proxy != nil {
			f.ProxyCPUSecs = used[0].Seconds()
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
// quota tiers are compared on the platform's CPU per request (gateway + PostgreSQL +
// Redis), not the gateway's alone.
func (e *env) manyKeys(ctx context.Context, sc *report.Scenario, gw *stack.Proc, tier string, trials int) error {
	body := chatBody(modelFast, 16, false)
	targets := e.targets(e.fast, body, false)
	targets[2].proxy = gw
	targets[2].target.Addr = gw.Addr
	targets[2].target.Tokens = e.manyKeyList
	for i := range trials {
		for _, t := range trial.Order(targets, i) {
			if err := e.runTrial(ctx, sc, t, func() load.Result { return load.ClosedLoop(ctx, t.target, 64, e.o.duration) }); err != nil {
				return err
			}
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
