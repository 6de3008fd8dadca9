// Package trainsim is the SIMULATED trainer: a stand-in for a LoRA trainer, for tests and
// `make run`, run as `worker train-sim`. It trains nothing.
//
// What it imitates: the contract of a real trainer run by a worker (see package trainer).
// It reads the chat JSONL dataset (and the validation one when given), counts its examples
// and tokens (with the simulator engine's tokenizer), runs epochs × ceil(examples / batch
// size) steps at a configurable pace, prints one JSON progress line per step with a
// plausible training loss — decreasing exponentially toward a floor with a little seeded
// noise, faster with a larger learning-rate multiplier — plus a validation loss and a
// checkpoint mark at the end of each epoch, and finally writes an adapter directory in the
// PEFT layout: adapter_config.json (base_model_name_or_path, r, lora_alpha,
// target_modules, peft_type "LORA") and adapter_model.safetensors, a small valid
// safetensors file whose tensors have the PEFT names of a two-layer model but random
// values, plus a README.md saying it is simulated.
//
// What it does not: no model is loaded, no gradient computed; the adapter's shapes fit no
// real model and loading it into a real engine fails. Same seed and dataset give the same
// curve and the same adapter.
//
// Failures for tests come from its own settings, never from a job's input:
// MAAS_TRAIN_SIM_FAIL_AT_STEP (or --fail-at-step) makes it write an error to standard
// error and exit 1 at that step.
package trainsim

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"os"
	"time"

	"github.com/maas-platform/maas/worker/internal/sim"
)

// Options is one simulated training run.
type Options struct {
	BaseModel              string
	TrainingFile           string
	ValidationFile         string // "" = none
	OutputDir              string
	NEpochs                int
	BatchSize              int
	LearningRateMultiplier float64
	LoRARank               int
	LoRAAlpha              int
	Seed                   int64
	// StepInterval is the simulated time one step takes (MAAS_TRAIN_SIM_STEP_INTERVAL).
	StepInterval time.Duration
	// FailAtStep > 0 fails the run at that step (MAAS_TRAIN_SIM_FAIL_AT_STEP).
	FailAtStep int
}

// DefaultOptions are the flag defaults.
func DefaultOptions() Options {
	return Options{NEpochs: 3, BatchSize: 1, LearningRateMultiplier: 1, LoRARank: 8, LoRAAlpha: 16, StepInterval: 100 * time.Millisecond}
}

func (o Options) validate() error {
	switch {
	case o.BaseModel == "":
		return errors.New("--base-model is required")
	case o.TrainingFile == "":
		return errors.New("--training-file is required")
	case o.OutputDir == "":
		return errors.New("--output-dir is required")
	case o.NEpochs < 1 || o.BatchSize < 1 || o.LoRARank < 1 || o.LoRAAlpha < 1:
		return errors.New("--n-epochs, --batch-size, --lora-rank and --lora-alpha must be at least 1")
	case !(o.LearningRateMultiplier > 0) || math.IsInf(o.LearningRateMultiplier, 0):
		return errors.New("--learning-rate-multiplier must be positive")
	case o.StepInterval < 0 || o.FailAtStep < 0:
		return errors.New("--step-interval and --fail-at-step must not be negative")
	}
	return nil
}

// FailureError is the failure asked for by FailAtStep.
type FailureError struct{ Step int }

func (e *FailureError) Error() string {
	return fmt.Sprintf("simulated trainer failure at step %d (MAAS_TRAIN_SIM_FAIL_AT_STEP)", e.Step)
}

// Dataset is what the simulated trainer learns of a JSONL file.
type Dataset struct {
	Examples int
	Tokens   int64
}

// ReadDataset counts the examples and tokens of a chat JSONL file. Blank lines are skipped;
// a line that is not a JSON object with a messages array is an error naming its line.
func ReadDataset(path string) (Dataset, error) {
	var d Dataset
	f, err := os.Open(path)
	if err != nil {
		return d, err
	}
	defer f.Close()
	br := bufio.NewReader(f)
	for n := 1; ; n++ {
		line, err := br.ReadBytes('\n')
		if len(line) > 0 && len(trimSpace(line)) > 0 {
			var ex struct {
				Messages []struct {
					Content json.RawMessage `json:"content"`
				} `json:"messages"`
			}
			if jerr := json.Unmarshal(line, &ex); jerr != nil || ex.Messages == nil {
				return d, fmt.Errorf("%s line %d: not a chat example (an object with a messages array)", path, n)
			}
			d.Examples++
			for _, m := range ex.Messages {
				d.Tokens += int64(contentTokens(m.Content))
			}
		}
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return d, fmt.Errorf("read %s: %w", path, err)
		}
	}
	if d.Examples == 0 {
		return d, fmt.Errorf("%s: no examples", path)
	}
	return d, nil
}

func trimSpace(b []byte) []byte {
	for len(b) > 0 && (b[0] == ' ' || b[0] == '\n' || b[0] == '\r' || b[0] == '\t') {
		b = b[1:]
	}
	return b
}

// contentTokens counts a message content: a string, or an array of {"type":"text","text":…}.
func contentTokens(raw json.RawMessage) int {
	var s string
	if json.Unmarshal(raw, &s) == nil {
		return sim.Tokens(s)
	}
	var parts []struct {
		Text string `json:"text"`
	}
	if json.Unmarshal(raw, &parts) == nil {
		n := 0
		for _, p := range parts {
			n += sim.Tokens(p.Text)
		}
		return n
	}
	return 0
}

// Steps is the run's step count: epochs × ceil(examples / batch size).
func Steps(examples, batchSize, epochs int) int {
	return epochs * ((examples + batchSize - 1) / batchSize)
}

// curve is the simulated loss as a function of progress through the run.
type curve struct {
	start, floor, rate float64
	rng                *rand.Rand
}

func newCurve(o Options) *curve {
	rng := rand.New(rand.NewPCG(uint64(o.Seed), 0x5eed))
	return &curve{
		start: 2.2 + 0.6*rng.Float64(),
		floor: 0.25 + 0.25*rng.Float64(),
		// A larger multiplier learns faster; square root keeps it plausible.
		rate: 3 * math.Sqrt(min(max(o.LearningRateMultiplier, 0.1), 10)),
		rng:  rng,
	}
}

// mean is the noiseless loss at progress p in [0, 1].
func (c *curve) mean(p float64) float64 {
	return c.floor + (c.start-c.floor)*math.Exp(-c.rate*p)
}

// train is the loss reported at progress p: the mean with ±3% noise.
func (c *curve) train(p float64) float64 {
	return round4(c.mean(p) * (1 + 0.06*(c.rng.Float64()-0.5)))
}

func round4(v float64) float64 { return math.Round(v*1e4) / 1e4 }

type line struct {
	Step       int      `json:"step"`
	TotalSteps int      `json:"total_steps"`
	Loss       float64  `json:"loss"`
	ValLoss    *float64 `json:"val_loss,omitempty"`
	Accuracy   float64  `json:"train_mean_token_accuracy"`
	Checkpoint bool     `json:"checkpoint,omitempty"`
}

// Run simulates the training run, writing progress lines to out, and writes the adapter.
func Run(ctx context.Context, o Options, out io.Writer) error {
	if err := o.validate(); err != nil {
		return err
	}
	train, err := ReadDataset(o.TrainingFile)
	if err != nil {
		return fmt.Errorf("training file: %w", err)
	}
	var valid *Dataset
	if o.ValidationFile != "" {
		v, err := ReadDataset(o.ValidationFile)
		if err != nil {
			return fmt.Errorf("validation file: %w", err)
		}
		valid = &v
	}
	enc := json.NewEncoder(out)
	perEpoch := Steps(train.Examples, o.BatchSize, 1)
	total := perEpoch * o.NEpochs
	msg := fmt.Sprintf("Simulated trainer (no model is trained): %d examples, %d tokens, %d epochs of %d steps (batch size %d)",
		train.Examples, train.Tokens, o.NEpochs, perEpoch, o.BatchSize)
	if err := enc.Encode(map[string]string{"message": msg}); err != nil {
		return err
	}
	c := newCurve(o)
	var tick *time.Ticker
	if o.StepInterval > 0 {
		tick = time.NewTicker(o.StepInterval)
		defer tick.Stop()
	}
	for step := 1; step <= total; step++ {
		if tick != nil {
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-tick.C:
			}
		} else if err := ctx.Err(); err != nil {
			return err
		}
		if step == o.FailAtStep {
			return &FailureError{Step: step}
		}
		p := float64(step) / float64(total)
		l := line{Step: step, TotalSteps: total, Loss: c.train(p)}
		l.Accuracy = round4(min(1, max(0, 1-l.Loss/(c.start+0.5))))
		if step%perEpoch == 0 {
			l.Checkpoint = true
			if valid != nil {
				v := round4(c.mean(p)*1.08 + 0.05)
				l.ValLoss = &v
			}
		}
		if err := enc.Encode(l); err != nil {
			return err
		}
	}
	if err := enc.Encode(map[string]int64{"trained_tokens": train.Tokens * int64(o.NEpochs)}); err != nil {
		return err
	}
	if err := WriteAdapter(o); err != nil {
		return fmt.Errorf("write adapter: %w", err)
	}
	return enc.Encode(map[string]string{"message": fmt.Sprintf("Simulated LoRA adapter written (PEFT layout, r=%d, alpha=%d)", o.LoRARank, o.LoRAAlpha)})
}
