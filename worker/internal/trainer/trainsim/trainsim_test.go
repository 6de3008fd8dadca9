package trainsim

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
)

// writeDataset writes n chat examples and returns the path.
func writeDataset(t *testing.T, n int) string {
	t.Helper()
	var b strings.Builder
	for i := range n {
		fmt.Fprintf(&b, `{"messages":[{"role":"user","content":"question %d"},{"role":"assistant","content":"answer number %d"}]}`+"\n", i, i)
	}
	b.WriteString("\n") // a blank line is not an example
	p := filepath.Join(t.TempDir(), "train.jsonl")
	if err := os.WriteFile(p, []byte(b.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func options(t *testing.T, train string) Options {
	o := DefaultOptions()
	o.BaseModel, o.TrainingFile, o.OutputDir, o.StepInterval, o.Seed = "sim-chat", train, filepath.Join(t.TempDir(), "out"), 0, 42
	return o
}

type progress struct {
	Step          int      `json:"step"`
	TotalSteps    int      `json:"total_steps"`
	Loss          *float64 `json:"loss"`
	ValLoss       *float64 `json:"val_loss"`
	Checkpoint    bool     `json:"checkpoint"`
	Message       string   `json:"message"`
	TrainedTokens *int64   `json:"trained_tokens"`
}

func parse(t *testing.T, out []byte) []progress {
	t.Helper()
	var ps []progress
	for _, l := range bytes.Split(bytes.TrimSpace(out), []byte("\n")) {
		var p progress
		if err := json.Unmarshal(l, &p); err != nil {
			t.Fatalf("line %q is not JSON: %v", l, err)
		}
		ps = append(ps, p)
	}
	return ps
}

func TestRunStepsLossAndAdapter(t *testing.T) {
	// 10 examples, batch 3 → 4 steps per epoch, 3 epochs → 12 steps.
	o := options(t, writeDataset(t, 10))
	o.BatchSize, o.NEpochs = 3, 3
	o.ValidationFile = writeDataset(t, 2)
	var out bytes.Buffer
	if err := Run(context.Background(), o, &out); err != nil {
		t.Fatal(err)
	}
	var steps []progress
	var tokens int64 = -1
	for _, p := range parse(t, out.Bytes()) {
		switch {
		case p.Loss != nil:
			steps = append(steps, p)
		case p.TrainedTokens != nil:
			tokens = *p.TrainedTokens
		}
	}
	if len(steps) != 12 {
		t.Fatalf("%d steps, want 12 (3 epochs × ceil(10/3))", len(steps))
	}
	// Each example: "question N" (2 tokens) + "answer number N" (3 tokens).
	if tokens != 3*10*5 {
		t.Errorf("trained_tokens %d, want %d", tokens, 3*10*5)
	}
	var epochMeans []float64
	sum := 0.0
	for i, p := range steps {
		if p.Step != i+1 || p.TotalSteps != 12 {
			t.Errorf("line %d: step %d/%d", i, p.Step, p.TotalSteps)
		}
		sum += *p.Loss
		endOfEpoch := p.Step%4 == 0
		if p.Checkpoint != endOfEpoch || (p.ValLoss != nil) != endOfEpoch {
			t.Errorf("step %d: checkpoint %v, val_loss %v; want both only at the end of an epoch", p.Step, p.Checkpoint, p.ValLoss)
		}
		if endOfEpoch {
			epochMeans = append(epochMeans, sum/4)
			sum = 0
		}
	}
	for i := 1; i < len(epochMeans); i++ {
		if epochMeans[i] >= epochMeans[i-1] {
			t.Errorf("mean loss of epoch %d (%.4f) not below epoch %d's (%.4f)", i+1, epochMeans[i], i, epochMeans[i-1])
		}
	}
	if first, last := *steps[0].Loss, *steps[11].Loss; !(last < first*0.6) {
		t.Errorf("loss went from %.4f to %.4f; want a clear decrease", first, last)
	}

	// The adapter: PEFT's layout.
	raw, err := os.ReadFile(filepath.Join(o.OutputDir, "adapter_config.json"))
	if err != nil {
		t.Fatal(err)
	}
	var cfg map[string]any
	if err := json.Unmarshal(raw, &cfg); err != nil {
		t.Fatal(err)
	}
	if cfg["base_model_name_or_path"] != "sim-chat" || cfg["peft_type"] != "LORA" || cfg["r"] != 8.0 || cfg["lora_alpha"] != 16.0 ||
		fmt.Sprint(cfg["target_modules"]) != "[q_proj v_proj]" {
		t.Errorf("adapter_config.json %s", raw)
	}
	st, err := os.ReadFile(filepath.Join(o.OutputDir, "adapter_model.safetensors"))
	if err != nil {
		t.Fatal(err)
	}
	names := checkSafetensors(t, st)
	if len(names) != 8 || names[0] != "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight" {
		t.Errorf("tensors %v", names)
	}
	if _, err := os.Stat(filepath.Join(o.OutputDir, "README.md")); err != nil {
		t.Errorf("no README saying the adapter is simulated: %v", err)
	}
}

// checkSafetensors validates the file as the safetensors library does (header length,
// JSON header, 8-byte alignment, offsets that cover the data without holes or overlap,
// sizes that match dtype and shape) and returns the tensor names in offset order.
func checkSafetensors(t *testing.T, b []byte) []string {
	t.Helper()
	if len(b) < 8 {
		t.Fatal("file shorter than its header length")
	}
	n := binary.LittleEndian.Uint64(b)
	if n%8 != 0 || 8+n > uint64(len(b)) {
		t.Fatalf("header length %d", n)
	}
	var header map[string]json.RawMessage
	if err := json.Unmarshal(b[8:8+n], &header); err != nil {
		t.Fatalf("header: %v", err)
	}
	type info struct {
		DType       string `json:"dtype"`
		Shape       []int  `json:"shape"`
		DataOffsets [2]int `json:"data_offsets"`
		name        string
	}
	var infos []info
	for k, v := range header {
		if k == "__metadata__" {
			var md map[string]string
			if err := json.Unmarshal(v, &md); err != nil || md["maas_simulated"] != "true" {
				t.Errorf("metadata %s", v)
			}
			continue
		}
		var i info
		if err := json.Unmarshal(v, &i); err != nil {
			t.Fatal(err)
		}
		i.name = k
		infos = append(infos, i)
	}
	sort.Slice(infos, func(a, c int) bool { return infos[a].DataOffsets[0] < infos[c].DataOffsets[0] })
	at := 0
	var names []string
	for _, i := range infos {
		size := 4
		for _, d := range i.Shape {
			size *= d
		}
		if i.DType != "F32" || i.DataOffsets[0] != at || i.DataOffsets[1]-i.DataOffsets[0] != size {
			t.Fatalf("tensor %s: %+v (expected to start at %d, %d bytes)", i.name, i, at, size)
		}
		at = i.DataOffsets[1]
		names = append(names, i.name)
	}
	if uint64(at) != uint64(len(b))-8-n {
		t.Fatalf("tensors cover %d bytes of %d", at, uint64(len(b))-8-n)
	}
	return names
}

func TestRunFailsAtStep(t *testing.T) {
	o := options(t, writeDataset(t, 5))
	o.FailAtStep = 3
	var out bytes.Buffer
	err := Run(context.Background(), o, &out)
	var fe *FailureError
	if !errors.As(err, &fe) || fe.Step != 3 {
		t.Fatalf("err %v, want a failure at step 3", err)
	}
	if _, err := os.Stat(o.OutputDir); !os.IsNotExist(err) {
		t.Errorf("a failed run wrote its adapter (%v)", err)
	}
}

func TestMainExitStatus(t *testing.T) {
	train := writeDataset(t, 2)
	out := filepath.Join(t.TempDir(), "out")
	base := []string{"--base-model", "m", "--training-file", train, "--output-dir", out, "--step-interval", "0"}
	for _, tc := range []struct {
		name   string
		args   []string
		status int
		stderr string
	}{
		{"ok", base, 0, ""},
		{"fail at step", append(base, "--fail-at-step", "1"), 1, "simulated trainer failure at step 1"},
		{"bad dataset", []string{"--base-model", "m", "--training-file", writeBad(t), "--output-dir", out}, 1, "line 2"},
		{"missing flag", []string{"--training-file", train}, 2, "--base-model is required"},
		{"stray argument", append(base, "extra"), 2, "unexpected argument"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			if got := Main(tc.args, &stdout, &stderr); got != tc.status || !strings.Contains(stderr.String(), tc.stderr) {
				t.Errorf("status %d, stderr %q; want %d with %q", got, stderr.String(), tc.status, tc.stderr)
			}
		})
	}
}

func writeBad(t *testing.T) string {
	p := filepath.Join(t.TempDir(), "bad.jsonl")
	if err := os.WriteFile(p, []byte(`{"messages":[]}`+"\n"+"not json\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestSteps(t *testing.T) {
	for _, tc := range []struct{ examples, batch, epochs, want int }{
		{10, 3, 3, 12}, {9, 3, 2, 6}, {1, 8, 1, 1}, {16, 4, 1, 4},
	} {
		if got := Steps(tc.examples, tc.batch, tc.epochs); got != tc.want {
			t.Errorf("Steps(%d, %d, %d) = %d, want %d", tc.examples, tc.batch, tc.epochs, got, tc.want)
		}
	}
}
