// Package report turns benchmark trials into the JSON and Markdown files under
// bench/results/: per scenario the median of the trials for each mode (direct, pass-through,
// gateway), their spread, the gateway's ratios to the other two, and each target met or missed.
package report

import (
	"encoding/json"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strings"
)

// Modes in column order.
const (
	Direct      = "direct"
	Passthrough = "passthrough"
	Gateway     = "gateway"
)

// Figures are one trial's measurements in one mode.
type Figures struct {
	Requests     int64   `json:"requests"`
	Errors       int64   `json:"errors"`
	RPS          float64 `json:"rps"`
	P50ms        float64 `json:"p50_ms"`
	P90ms        float64 `json:"p90_ms"`
	P99ms        float64 `json:"p99_ms"`
	MaxMs        float64 `json:"max_ms"`
	TTFTp50ms    float64 `json:"ttft_p50_ms,omitempty"`
	TTFTp99ms    float64 `json:"ttft_p99_ms,omitempty"`
	CPUPerReqUS  float64 `json:"proxy_cpu_us_per_request,omitempty"` // CPU of the proxy process (pass-through or gateway)
	PeakRSSMiB   float64 `json:"proxy_peak_rss_mib,omitempty"`
	ProxyCPUSecs float64 `json:"proxy_cpu_seconds,omitempty"`
	// Platform figures, read in every trial of every mode: the CPU of the PostgreSQL
	// cluster (postmaster and backends) and of redis-server per request, and their sum with
	// the proxy's own (in direct trials: the services' background alone).
	PostgresCPUPerReqUS float64 `json:"postgres_cpu_us_per_request"`
	RedisCPUPerReqUS    float64 `json:"redis_cpu_us_per_request"`
	PlatformCPUPerReqUS float64 `json:"platform_cpu_us_per_request"`
	// Usage ledger (gateway trials): the rows written for the trial's requests, counted
	// once the ledger had flushed them; LedgerChecked says the count was made.
	LedgerRows    int64  `json:"ledger_rows,omitempty"`
	LedgerChecked bool   `json:"ledger_checked,omitempty"`
	FirstError    string `json:"first_error,omitempty"`
}

// Target is a goal checked against a scenario's medians.
type Target struct {
	Name  string  `json:"name"`
	Value float64 `json:"value"`
	Limit float64 `json:"limit"`
	Unit  string  `json:"unit"`
	Max   bool    `json:"is_upper_bound"` // Value must be <= Limit (else >=)
	Met   bool    `json:"met"`
}

// Check fills Met. A value that is not a number (a ratio to a missing figure) is not met.
func (t *Target) Check() {
	if math.IsNaN(t.Value) || math.IsInf(t.Value, 0) {
		t.Met = false
		return
	}
	if t.Max {
		t.Met = t.Value <= t.Limit
	} else {
		t.Met = t.Value >= t.Limit
	}
}

// Scenario is one scenario's trials and derived figures.
type Scenario struct {
	Name     string               `json:"name"`
	Settings string               `json:"settings"`
	Trials   map[string][]Figures `json:"trials"`
	Median   map[string]Figures   `json:"median"`
	Ratios   map[string]float64   `json:"ratios"`
	Targets  []Target             `json:"targets,omitempty"`
	Notes    []string             `json:"notes,omitempty"`
	// HeldStreams marks a scenario that holds streams open instead of completing requests:
	// its "requests" are streams opened and its rate is streams opened per second.
	HeldStreams bool `json:"held_streams,omitempty"`
	// Failures are what made the scenario fail: a figure that could not be measured (a
	// CPU read), or a check that did not hold (ledger rows against requests served). A
	// failed scenario's figures are not to be trusted; the run exits with an error.
	Failures []string `json:"failures,omitempty"`
}

// Fail records a failure of the scenario.
func (s *Scenario) Fail(err error) { s.Failures = append(s.Failures, err.Error()) }

// Failed reports whether any scenario of the run failed.
func (r *Run) Failed() bool {
	for _, s := range r.Scenarios {
		if len(s.Failures) > 0 {
			return true
		}
	}
	return false
}

// Add records a trial.
func (s *Scenario) Add(mode string, f Figures) {
	if s.Trials == nil {
		s.Trials = map[string][]Figures{}
	}
	s.Trials[mode] = append(s.Trials[mode], f)
}

// Summarise computes medians and the gateway's ratios.
func (s *Scenario) Summarise() {
	s.Median = map[string]Figures{}
	for mode, ts := range s.Trials {
		s.Median[mode] = median(ts)
	}
	s.Ratios = map[string]float64{}
	gw, okG := s.Median[Gateway]
	if d, ok := s.Median[Direct]; ok && okG && d.RPS > 0 {
		s.Ratios["gateway_over_direct_rps"] = gw.RPS / d.RPS
		s.Ratios["gateway_added_p50_ms"] = gw.P50ms - d.P50ms
		s.Ratios["gateway_added_p99_ms"] = gw.P99ms - d.P99ms
	}
	if p, ok := s.Median[Passthrough]; ok && okG && p.RPS > 0 {
		s.Ratios["gateway_over_passthrough_rps"] = gw.RPS / p.RPS
		s.Ratios["gateway_added_p99_over_passthrough_ms"] = gw.P99ms - p.P99ms
		if p.CPUPerReqUS > 0 {
			s.Ratios["gateway_over_passthrough_cpu"] = gw.CPUPerReqUS / p.CPUPerReqUS
		}
	}
	for i := range s.Targets {
		s.Targets[i].Check()
	}
}

// Spread is the min–max of a figure over the trials of one mode.
func (s *Scenario) Spread(mode string, f func(Figures) float64) (lo, hi float64) {
	ts := s.Trials[mode]
	if len(ts) == 0 {
		return 0, 0
	}
	lo, hi = f(ts[0]), f(ts[0])
	for _, t := range ts[1:] {
		lo, hi = min(lo, f(t)), max(hi, f(t))
	}
	return lo, hi
}

// RatioSpread is the min–max over the trials of num's figure divided by den's, trial by
// trial (trial i of every mode ran in the same round, one after the other). ok is false
// without trials in both modes or with a zero divisor.
func (s *Scenario) RatioSpread(num, den string, f func(Figures) float64) (lo, hi float64, ok bool) {
	a, b := s.Trials[num], s.Trials[den]
	n := min(len(a), len(b))
	for i := range n {
		if f(b[i]) == 0 {
			return 0, 0, false
		}
		r := f(a[i]) / f(b[i])
		if i == 0 {
			lo, hi = r, r
		}
		lo, hi = min(lo, r), max(hi, r)
	}
	return lo, hi, n > 0
}

// median is the per-figure median of the trials; Requests, Errors and LedgerRows are
// totals over the trials.
func median(ts []Figures) Figures {
	pick := func(f func(Figures) float64) float64 {
		v := make([]float64, len(ts))
		for i, t := range ts {
			v[i] = f(t)
		}
		slices.Sort(v)
		return v[len(v)/2]
	}
	var m Figures
	m.LedgerChecked = len(ts) > 0
	for _, t := range ts {
		m.Requests += t.Requests
		m.Errors += t.Errors
		m.LedgerRows += t.LedgerRows
		m.LedgerChecked = m.LedgerChecked && t.LedgerChecked
		if m.FirstError == "" {
			m.FirstError = t.FirstError
		}
	}
	m.RPS = pick(func(f Figures) float64 { return f.RPS })
	m.P50ms = pick(func(f Figures) float64 { return f.P50ms })
	m.P90ms = pick(func(f Figures) float64 { return f.P90ms })
	m.P99ms = pick(func(f Figures) float64 { return f.P99ms })
	m.MaxMs = pick(func(f Figures) float64 { return f.MaxMs })
	m.TTFTp50ms = pick(func(f Figures) float64 { return f.TTFTp50ms })
	m.TTFTp99ms = pick(func(f Figures) float64 { return f.TTFTp99ms })
	m.CPUPerReqUS = pick(func(f Figures) float64 { return f.CPUPerReqUS })
	m.PeakRSSMiB = pick(func(f Figures) float64 { return f.PeakRSSMiB })
	m.ProxyCPUSecs = pick(func(f Figures) float64 { return f.ProxyCPUSecs })
	m.PostgresCPUPerReqUS = pick(func(f Figures) float64 { return f.PostgresCPUPerReqUS })
	m.RedisCPUPerReqUS = pick(func(f Figures) float64 { return f.RedisCPUPerReqUS })
	m.PlatformCPUPerReqUS = pick(func(f Figures) float64 { return f.PlatformCPUPerReqUS })
	return m
}

// Machine describes where the run happened.
type Machine struct {
	CPU       string `json:"cpu"`
	Cores     int    `json:"cores"`
	GoVersion string `json:"go_version"`
	Commit    string `json:"commit"`
	Date      string `json:"date"`
	Command   string `json:"command"`
}

// Run is a whole benchmark run.
type Run struct {
	Machine   Machine     `json:"machine"`
	Scenarios []*Scenario `json:"scenarios"`
}

// Write stores run as JSON and Markdown in dir: <stamp>.json and <stamp>.md, and the same
// as latest.json and latest.md (the pair the repository keeps).
func (r *Run) Write(dir, stamp string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	js, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return err
	}
	for _, name := range []string{stamp + ".json", "latest.json"} {
		if err := os.WriteFile(filepath.Join(dir, name), js, 0o644); err != nil {
			return err
		}
	}
	var b strings.Builder
	r.Markdown(&b)
	if err := os.WriteFile(filepath.Join(dir, stamp+".md"), []byte(b.String()), 0o644); err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(dir, "latest.md"), []byte(b.String()), 0o644)
}

// Markdown renders the run.
func (r *Run) Markdown(w io.Writer) {
	m := r.Machine
	fmt.Fprintf(w, "# Benchmark results\n\n")
	fmt.Fprintf(w, "- date: %s\n- commit: `%s`\n- machine: %s, %d cores\n- Go: %s\n- command: `%s`\n\n", m.Date, m.Commit, m.CPU, m.Cores, m.GoVersion, m.Command)
	fmt.Fprintf(w, "Every figure is the median of the trials of one run; the modes run one after the other in each trial, "+
		"in an order that rotates from trial to trial (direct, pass-through, gateway; then pass-through, gateway, direct; …), "+
		"and spreads are min–max over the trials (ratios: trial by trial). "+
		"CPU per request is a process's own CPU (user+system from /proc) divided by requests served; "+
		"PostgreSQL is the whole cluster (postmaster and every backend), Redis is redis-server, both read around every trial; "+
		"platform CPU is the proxy's plus PostgreSQL's plus Redis's. "+
		"A gateway trial's CPU is read once the usage ledger holds a row for each of its requests (its flush included), "+
		"and a trial whose rows differ from the requests served, or whose CPU cannot be read, fails its scenario. "+
		"Load generator, simulators, pass-through, gateway, PostgreSQL and Redis share the same cores.\n\n")
	r.FailureList(w)
	r.Headline(w)
	r.HeldTable(w)
	r.PlatformTable(w)
	fmt.Fprintf(w, "\n## All scenarios\n\n")
	fmt.Fprintln(w, "| scenario | mode | req/s (spread) | p50 ms | p90 ms | p99 ms | max ms | TTFT p50/p99 ms | proxy CPU µs/req | PostgreSQL µs/req | Redis µs/req | platform µs/req | proxy peak RSS MiB | errors |")
	fmt.Fprintln(w, "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
	for _, s := range r.Scenarios {
		if s.HeldStreams {
			continue
		}
		for _, mode := range []string{Direct, Passthrough, Gateway} {
			f, ok := s.Median[mode]
			if !ok {
				continue
			}
			lo, hi := s.Spread(mode, func(f Figures) float64 { return f.RPS })
			ttft := "–"
			if f.TTFTp50ms > 0 {
				ttft = fmt.Sprintf("%.2f / %.2f", f.TTFTp50ms, f.TTFTp99ms)
			}
			fmt.Fprintf(w, "| %s | %s | %.0f (%.0f–%.0f) | %.2f | %.2f | %.2f | %.2f | %s | %s | %.1f | %.1f | %.0f | %s | %d |\n",
				s.name(), mode, f.RPS, lo, hi, f.P50ms, f.P90ms, f.P99ms, f.MaxMs, ttft,
				orDash("%.0f", f.CPUPerReqUS), f.PostgresCPUPerReqUS, f.RedisCPUPerReqUS,
				f.PlatformCPUPerReqUS, orDash("%.0f", f.PeakRSSMiB), f.Errors)
		}
	}
	fmt.Fprintf(w, "\n## Targets\n\n| scenario | target | measured | limit | met |\n|---|---|---|---|---|\n")
	for _, s := range r.Scenarios {
		for _, t := range s.Targets {
			op := "≥"
			if t.Max {
				op = "≤"
			}
			met := "yes"
			if !t.Met {
				met = "**no**"
			}
			fmt.Fprintf(w, "| %s | %s | %.3g %s | %s %.3g %s | %s |\n", s.Name, t.Name, t.Value, t.Unit, op, t.Limit, t.Unit, met)
		}
	}
	var notes []string
	for _, s := range r.Scenarios {
		for _, n := range s.Notes {
			notes = append(notes, fmt.Sprintf("- %s: %s", s.Name, n))
		}
	}
	if len(notes) > 0 {
		fmt.Fprintf(w, "\n## Notes\n\n%s\n", strings.Join(notes, "\n"))
	}
}

// orDash formats v, or "–" when it is zero (not measured in this mode).
func orDash(format string, v float64) string {
	if v == 0 {
		return "–"
	}
	return fmt.Sprintf(format, v)
}

// name is a scenario's name in the tables, marked when the scenario failed.
func (s *Scenario) name() string {
	if len(s.Failures) > 0 {
		return s.Name + " **FAILED**"
	}
	return s.Name
}

// FailureList renders the failed scenarios and why, first thing after the preamble.
func (r *Run) FailureList(w io.Writer) {
	var lines []string
	for _, s := range r.Scenarios {
		for _, f := range s.Failures {
			lines = append(lines, fmt.Sprintf("- **%s**: %s", s.Name, f))
		}
	}
	if len(lines) == 0 {
		return
	}
	fmt.Fprintf(w, "**Failed scenarios** (their figures are not to be trusted):\n\n%s\n\n", strings.Join(lines, "\n"))
}

// Headline renders the short table for the README: the gateway against the pass-through
// (the floor any fasthttp proxy pays) and direct, with the spreads of the CPU figures.
func (r *Run) Headline(w io.Writer) {
	fmt.Fprintln(w, "| scenario | trials | direct req/s | pass-through req/s | gateway req/s | gateway/pass-through req/s | pass-through CPU µs/req | gateway CPU µs/req (spread) | gateway/pass-through CPU (spread) | gateway platform CPU µs/req | added p99 vs pass-through ms | errors |")
	fmt.Fprintln(w, "|---|---|---|---|---|---|---|---|---|---|---|---|")
	cpu := func(f Figures) float64 { return f.CPUPerReqUS }
	for _, s := range r.Scenarios {
		if s.HeldStreams {
			continue
		}
		d, okD := s.Median[Direct]
		p := s.Median[Passthrough]
		g, okG := s.Median[Gateway]
		if !okD || !okG {
			continue
		}
		glo, ghi := s.Spread(Gateway, cpu)
		ratio := "–"
		if lo, hi, ok := s.RatioSpread(Gateway, Passthrough, cpu); ok {
			ratio = fmt.Sprintf("%.2f (trials %.2f–%.2f)", s.Ratios["gateway_over_passthrough_cpu"], lo, hi)
		}
		fmt.Fprintf(w, "| %s | %d | %.0f | %.0f | %.0f | %.2f | %.0f | %.0f (%.0f–%.0f) | %s | %s | %.3f | %d |\n",
			s.name(), len(s.Trials[Gateway]), d.RPS, p.RPS, g.RPS, s.Ratios["gateway_over_passthrough_rps"], p.CPUPerReqUS,
			g.CPUPerReqUS, glo, ghi, ratio, orDash("%.0f", g.PlatformCPUPerReqUS), s.Ratios["gateway_added_p99_over_passthrough_ms"],
			d.Errors+p.Errors+g.Errors)
	}
}

// HeldTable renders the held-streams scenarios: streams opened, errors, and the proxies'
// resident memory and CPU while the streams are held.
func (r *Run) HeldTable(w io.Writer) {
	var rows []string
	for _, s := range r.Scenarios {
		if !s.HeldStreams {
			continue
		}
		p, g, d := s.Median[Passthrough], s.Median[Gateway], s.Median[Direct]
		rows = append(rows, fmt.Sprintf("| %s | %d / %d / %d | %.0f | %.0f | %.2f | %.2f | %d |",
			s.name(), d.Requests, p.Requests, g.Requests, p.PeakRSSMiB, g.PeakRSSMiB, p.ProxyCPUSecs, g.ProxyCPUSecs, g.Errors))
	}
	if len(rows) == 0 {
		return
	}
	fmt.Fprintf(w, "\n| held streams | opened direct / pass-through / gateway | pass-through RSS MiB | gateway RSS MiB | pass-through CPU s while held | gateway CPU s while held | gateway errors |\n|---|---|---|---|---|---|---|\n")
	fmt.Fprintln(w, strings.Join(rows, "\n"))
}

// procTick is the unit of the CPU times in /proc (USER_HZ = 100 on Linux).
const procTick = 10_000 // µs

// tickPerRequest is one /proc tick in µs per request of mode's smallest trial: the
// resolution of every CPU figure per request of that mode (a process's CPU moves by ticks).
func (s *Scenario) tickPerRequest(mode string) float64 {
	var least int64
	for i, f := range s.Trials[mode] {
		if i == 0 || f.Requests < least {
			least = f.Requests
		}
	}
	if least <= 0 {
		return 0
	}
	return procTick / float64(least)
}

// PlatformTable renders, for every scenario whose gateway trials measured the platform,
// the gateway's CPU per request beside PostgreSQL's and Redis's, their sum, the resolution
// of those figures (one /proc tick per request of the smallest trial), what PostgreSQL and
// Redis used during the pass-through's trials (the background: heartbeats,
// autovacuum), and the ledger rows written against the requests served.
func (r *Run) PlatformTable(w io.Writer) {
	var rows []string
	for _, s := range r.Scenarios {
		g, ok := s.Median[Gateway]
		if !ok || g.PlatformCPUPerReqUS <= 0 {
			continue
		}
		lo, hi := s.Spread(Gateway, func(f Figures) float64 { return f.PlatformCPUPerReqUS })
		bg := "–"
		if p, ok := s.Median[Passthrough]; ok && p.PlatformCPUPerReqUS > 0 {
			bg = fmt.Sprintf("%.1f", p.PostgresCPUPerReqUS+p.RedisCPUPerReqUS)
		}
		ledger := "–"
		if g.LedgerChecked {
			ledger = fmt.Sprintf("%d / %d", g.LedgerRows, g.Requests)
			if g.LedgerRows != g.Requests {
				ledger += " **✘**"
			}
		}
		rows = append(rows, fmt.Sprintf("| %s | %.0f | %.1f | %.1f | %.0f (%.0f–%.0f) | %.2g | %s | %s |",
			s.name(), g.CPUPerReqUS, g.PostgresCPUPerReqUS, g.RedisCPUPerReqUS, g.PlatformCPUPerReqUS, lo, hi, s.tickPerRequest(Gateway), bg, ledger))
	}
	if len(rows) == 0 {
		return
	}
	fmt.Fprintf(w, "\n| platform CPU (gateway trials) | gateway CPU µs/req | PostgreSQL CPU µs/req | Redis CPU µs/req | platform CPU µs/req (spread) | resolution µs/req | PostgreSQL + Redis µs/req in pass-through trials | ledger rows / requests served |\n|---|---|---|---|---|---|---|---|\n")
	fmt.Fprintln(w, strings.Join(rows, "\n"))
}
