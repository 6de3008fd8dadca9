package report

import (
	"errors"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestSummariseAndWrite(t *testing.T) {
	s := &Scenario{Name: "chat c64", Targets: []Target{{Name: "throughput vs direct", Limit: 0.55}}}
	for _, rps := range []float64{100, 300, 200} {
		s.Add(Direct, Figures{RPS: rps, P50ms: 1, CPUPerReqUS: 0})
		s.Add(Passthrough, Figures{RPS: rps * 0.7, P50ms: 1.1, CPUPerReqUS: 40})
		s.Add(Gateway, Figures{RPS: rps * 0.6, P50ms: 1.2, CPUPerReqUS: 60})
	}
	s.Summarise()
	if got := s.Median[Direct].RPS; got != 200 {
		t.Fatalf("median rps %v", got)
	}
	if r := s.Ratios["gateway_over_direct_rps"]; r < 0.59 || r > 0.61 {
		t.Errorf("ratio %v", r)
	}
	if r := s.Ratios["gateway_over_passthrough_cpu"]; r != 1.5 {
		t.Errorf("cpu ratio %v", r)
	}
	s.Targets[0].Value = s.Ratios["gateway_over_direct_rps"]
	s.Targets[0].Check()
	if !s.Targets[0].Met {
		t.Error("target should be met")
	}
	run := &Run{Scenarios: []*Scenario{s}}
	dir := t.TempDir()
	if err := run.Write(dir, "x"); err != nil {
		t.Fatal(err)
	}
	md, _ := os.ReadFile(filepath.Join(dir, "latest.md"))
	if !strings.Contains(string(md), "| chat c64 | gateway | 120 (60–180)") {
		t.Errorf("markdown:\n%s", md)
	}
}

func TestTargetNotANumberIsMissed(t *testing.T) {
	for _, v := range []float64{math.NaN(), math.Inf(1), math.Inf(-1)} {
		for _, max := range []bool{true, false} {
			tg := Target{Name: "gateway CPU ≤ 1.25× pass-through", Value: v, Limit: 1.25, Max: max}
			tg.Check()
			if tg.Met {
				t.Errorf("value %v (max %v) met the target", v, max)
			}
		}
	}
}

func TestRatioSpreadPairsTrials(t *testing.T) {
	s := &Scenario{Name: "chat c64"}
	for i, c := range [][2]float64{{60, 30}, {50, 40}, {90, 45}} {
		s.Add(Gateway, Figures{CPUPerReqUS: c[0], RPS: float64(i)})
		s.Add(Passthrough, Figures{CPUPerReqUS: c[1]})
	}
	lo, hi, ok := s.RatioSpread(Gateway, Passthrough, func(f Figures) float64 { return f.CPUPerReqUS })
	if !ok || lo != 1.25 || hi != 2 {
		t.Fatalf("%v–%v %v, want 1.25–2", lo, hi, ok)
	}
	s.Add(Passthrough, Figures{}) // unpaired: ignored
	s.Trials[Passthrough][0].CPUPerReqUS = 0
	if _, _, ok := s.RatioSpread(Gateway, Passthrough, func(f Figures) float64 { return f.CPUPerReqUS }); ok {
		t.Error("a zero divisor gave a spread")
	}
}

func TestFailuresAndLedgerRendered(t *testing.T) {
	ok := &Scenario{Name: "chat c64"}
	bad := &Scenario{Name: "stream 64 tok itl 0 c16"}
	for _, s := range []*Scenario{ok, bad} {
		s.Add(Direct, Figures{RPS: 100, Requests: 200})
		s.Add(Passthrough, Figures{RPS: 90, Requests: 180, CPUPerReqUS: 30, PostgresCPUPerReqUS: 0.5, PlatformCPUPerReqUS: 30.5})
	}
	ok.Add(Gateway, Figures{RPS: 80, Requests: 160, CPUPerReqUS: 40, PostgresCPUPerReqUS: 20, PlatformCPUPerReqUS: 60, LedgerRows: 160, LedgerChecked: true})
	bad.Add(Gateway, Figures{RPS: 80, Requests: 160, CPUPerReqUS: 40, PostgresCPUPerReqUS: 20, PlatformCPUPerReqUS: 60, LedgerRows: 150, LedgerChecked: true})
	bad.Fail(errors.New("gateway trial: ledger rows written differ from requests served: 150 rows for 160 requests"))
	run := &Run{Scenarios: []*Scenario{ok, bad}}
	for _, s := range run.Scenarios {
		s.Summarise()
	}
	if !run.Failed() {
		t.Fatal("run with a failed scenario not failed")
	}
	var b strings.Builder
	run.Markdown(&b)
	md := b.String()
	for _, want := range []string{
		"- **stream 64 tok itl 0 c16**: gateway trial: ledger rows written differ",
		"| stream 64 tok itl 0 c16 **FAILED** | 1 |",
		"| chat c64 | 40 | 20.0 | 0.0 | 60 (60–60) | 62 | 0.5 | 160 / 160 |",
		"| stream 64 tok itl 0 c16 **FAILED** | 40 | 20.0 | 0.0 | 60 (60–60) | 62 | 0.5 | 150 / 160 **✘** |",
	} {
		if !strings.Contains(md, want) {
			t.Errorf("markdown lacks %q:\n%s", want, md)
		}
	}
	if (&Run{Scenarios: []*Scenario{ok}}).Failed() {
		t.Error("run without failures failed")
	}
}
