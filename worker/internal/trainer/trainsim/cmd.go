package trainsim

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strconv"
	"syscall"

	"github.com/maas-platform/maas/pkg/config"
)

// Usage is the first line of `worker train-sim -h`.
const Usage = "worker train-sim: the SIMULATED trainer (no model is trained; for tests and make run)"

// Main runs `worker train-sim ARGS` and returns its exit status: 0 when the adapter was
// written, 1 when the run failed (its error on stderr), 2 on invalid arguments. SIGTERM and
// SIGINT stop it with status 1.
func Main(args []string, stdout, stderr io.Writer) int {
	o, err := parseArgs(args, stderr)
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	if err != nil {
		fmt.Fprintln(stderr, "worker train-sim:", err)
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if err := Run(ctx, o, stdout); err != nil {
		if ctx.Err() != nil {
			fmt.Fprintln(stderr, "worker train-sim: stopped by a signal")
			return 1
		}
		fmt.Fprintln(stderr, "worker train-sim:", err)
		return 1
	}
	return 0
}

func parseArgs(args []string, stderr io.Writer) (Options, error) {
	o := DefaultOptions()
	if v, ok := os.LookupEnv("MAAS_TRAIN_SIM_STEP_INTERVAL"); ok {
		d, err := config.ParseDuration(v)
		if err != nil {
			return o, fmt.Errorf("MAAS_TRAIN_SIM_STEP_INTERVAL: %w", err)
		}
		o.StepInterval = d
	}
	if v, ok := os.LookupEnv("MAAS_TRAIN_SIM_FAIL_AT_STEP"); ok && v != "" {
		n, err := strconv.Atoi(v)
		if err != nil {
			return o, fmt.Errorf("MAAS_TRAIN_SIM_FAIL_AT_STEP: %q is not a number", v)
		}
		o.FailAtStep = n
	}
	fs := flag.NewFlagSet("worker train-sim", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprintln(stderr, Usage)
		fs.PrintDefaults()
	}
	fs.StringVar(&o.BaseModel, "base-model", "", "base model name (written into adapter_config.json)")
	fs.StringVar(&o.TrainingFile, "training-file", "", "training JSONL (chat format)")
	fs.StringVar(&o.ValidationFile, "validation-file", "", "validation JSONL (empty: none)")
	fs.StringVar(&o.OutputDir, "output-dir", "", "directory the adapter is written to")
	fs.IntVar(&o.NEpochs, "n-epochs", o.NEpochs, "epochs")
	fs.IntVar(&o.BatchSize, "batch-size", o.BatchSize, "examples per step")
	fs.Float64Var(&o.LearningRateMultiplier, "learning-rate-multiplier", o.LearningRateMultiplier, "speeds the simulated loss decrease")
	fs.IntVar(&o.LoRARank, "lora-rank", o.LoRARank, "LoRA rank r")
	fs.IntVar(&o.LoRAAlpha, "lora-alpha", o.LoRAAlpha, "LoRA alpha")
	fs.Int64Var(&o.Seed, "seed", 0, "seed of the simulated curve and weights")
	fs.DurationVar(&o.StepInterval, "step-interval", o.StepInterval, "time per step (env MAAS_TRAIN_SIM_STEP_INTERVAL)")
	fs.IntVar(&o.FailAtStep, "fail-at-step", o.FailAtStep, "fail at this step, for tests (env MAAS_TRAIN_SIM_FAIL_AT_STEP; 0 = never)")
	if err := fs.Parse(args); err != nil {
		return o, err
	}
	if fs.NArg() > 0 {
		return o, fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	return o, o.validate()
}
