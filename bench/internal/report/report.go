// Package report turns benchmark trials into the JSON and Markdown files under
// bench/results/: per scenario the median of the trials for each mode (direct, pass-through,
// gateway), their spread, the gateway's ratios to the other two, and each target met or missed.
package report

import (
	"encoding/json"
	"fmt"
	"io"
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
	// Platform figures (quota scenarios, gateway mode): the CPU of the PostgreSQL cluster
	// (postmaster and backends) and of redis-server per request, and their sum with the
	// gateway's own.
	PostgresCPUPerReqUS float64 `json:"postgres_cpu_us_per_request,omitempty"`
	RedisCPUPerReqUS    float64 `json:"redis_cpu_us_per_request,omitempty"`
	PlatformCPUPerReqUS float64 `json:"platform_cpu_us_per_request,omitempty"`
	FirstError          string  `json:"first_error,omitempty"`
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

// Check fills Met.
func (t *Target) Check() {
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
	for _, t := range ts {
		m.Requests += t.Requests
		m.Errors += t.Errors
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
	fmt.Fprintf(w, "Every figure is the median of the interleaved trials of one run; the spread column gives min–max requests/s over the trials. CPU per request is the proxy process's own CPU (user+system from /proc) divided by requests served. Load generator, simulator, pass-through and gateway share the same cores.\n\n")
	r.Headline(w)
	r.HeldTable(w)
	r.PlatformTable(w)
	fmt.Fprintf(w, "\n## All scenarios\n\n")
	fmt.Fprintln(w, "| scenario | mode | req/s (spread) | p50 ms | p90 ms | p99 ms | max ms | TTFT p50/p99 ms | proxy CPU µs/req | proxy peak RSS MiB | errors |")
	fmt.Fprintln(w, "|---|---|---|---|---|---|---|---|---|---|---|")
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
			cpu, rss := "–", "–"
			if f.CPUPerReqUS > 0 {
				cpu = fmt.Sprintf("%.0f", f.CPUPerReqUS)
			}
			if f.PeakRSSMiB > 0 {
				rss = fmt.Sprintf("%.0f", f.PeakRSSMiB)
			}
			fmt.Fprintf(w, "| %s | %s | %.0f (%.0f–%.0f) | %.2f | %.2f | %.2f | %.2f | %s | %s | %s | %d |\n",
				s.Name, mode, f.RPS, lo, hi, f.P50ms, f.P90ms, f.P99ms, f.MaxMs, ttft, cpu, rss, f.Errors)
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

// Headline renders the short table for the README: gateway against direct and pass-through.
func (r *Run) Headline(w io.Writer) {
	fmt.Fprintln(w, "| scenario | direct req/s | pass-through req/s | gateway req/s | gateway/direct | gateway CPU µs/req | pass-through CPU µs/req | gateway/pass-through CPU | added p50 ms | added p99 ms | errors |")
	fmt.Fprintln(w, "|---|---|---|---|---|---|---|---|---|---|---|")
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
		fmt.Fprintf(w, "| %s | %.0f | %.0f | %.0f | %.2f | %.0f | %.0f | %.2f | %.3f | %.3f | %d |\n",
			s.Name, d.RPS, p.RPS, g.RPS, s.Ratios["gateway_over_direct_rps"], g.CPUPerReqUS, p.CPUPerReqUS,
			s.Ratios["gateway_over_passthrough_cpu"], s.Ratios["gateway_added_p50_ms"], s.Ratios["gateway_added_p99_ms"], d.Errors+p.Errors+g.Errors)
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
			s.Name, d.Requests, p.Requests, g.Requests, p.PeakRSSMiB, g.PeakRSSMiB, p.ProxyCPUSecs, g.ProxyCPUSecs, g.Errors))
	}
	if len(rows) == 0 {
		return
	}
	fmt.Fprintf(w, "\n| held streams | opened direct / pass-through / gateway | pass-through RSS MiB | gateway RSS MiB | pass-through CPU s while held | gateway CPU s while held | gateway errors |\n|---|---|---|---|---|---|---|\n")
	fmt.Fprintln(w, strings.Join(rows, "\n"))
}

// PlatformTable renders the scenarios measured with the platform's processes: the gateway's
// CPU per request beside PostgreSQL's and Redis's, and their sum.
func (r *Run) PlatformTable(w io.Writer) {
	var rows []string
	for _, s := range r.Scenarios {
		g, ok := s.Median[Gateway]
		if !ok || g.PlatformCPUPerReqUS <= 0 {
			continue
		}
		lo, hi := s.Spread(Gateway, func(f Figures) float64 { return f.PlatformCPUPerReqUS })
		rows = append(rows, fmt.Sprintf("| %s | %.0f | %.0f | %.1f | %.1f | %.0f (%.0f–%.0f) |",
			s.Name, g.RPS, g.CPUPerReqUS, g.PostgresCPUPerReqUS, g.RedisCPUPerReqUS, g.PlatformCPUPerReqUS, lo, hi))
	}
	if len(rows) == 0 {
		return
	}
	fmt.Fprintf(w, "\n| platform CPU | gateway req/s | gateway CPU µs/req | PostgreSQL CPU µs/req | Redis CPU µs/req | platform CPU µs/req (spread) |\n|---|---|---|---|---|---|\n")
	fmt.Fprintln(w, strings.Join(rows, "\n"))
}
