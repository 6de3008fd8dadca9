package report

import (
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
