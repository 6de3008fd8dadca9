package trainer

import (
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/maas-platform/maas/pkg/config"
)

// Options configures a training Worker. Build it from Flags, or start from DefaultOptions.
type Options struct {
	ControlURL    string // MAAS_CONTROL_URL
	InternalToken string // MAAS_INTERNAL_TOKEN
	// WorkerID names this worker to control (MAAS_TRAINER_ID; default host-pid).
	WorkerID string
	// Command is the trainer's command template (MAAS_TRAINER_COMMAND).
	Command Template
	// GPUs is the GPU count this worker offers (MAAS_TRAINER_GPUS): sent with each claim and
	// given to the trainer as {gpus}. The worker runs one job at a time on all of them,
	// unless GPUsPerJob splits them.
	GPUs int
	// GPUsPerJob (MAAS_TRAINER_GPUS_PER_JOB; 0 = all) splits the GPUs into GPUs/GPUsPerJob
	// slots that each run a job, the trainer seeing its own devices in
	// CUDA_VISIBLE_DEVICES (taken from the worker's CUDA_VISIBLE_DEVICES when set).
	GPUsPerJob int
	// Timeout ends a trainer that runs longer, failing its job (MAAS_TRAINER_TIMEOUT).
	Timeout time.Duration
	// StopGrace is how long a stopped trainer has between SIGTERM and SIGKILL
	// (MAAS_TRAINER_STOP_GRACE).
	StopGrace time.Duration
	// PollInterval is the wait between claims when no job is queued (MAAS_TRAINER_POLL_INTERVAL).
	PollInterval time.Duration
	// Lease is the lease length asked of control (MAAS_TRAINER_LEASE; 0 = control's default).
	Lease time.Duration
	// WorkDir holds each job's datasets and output while it runs, deleted after
	// (MAAS_TRAINER_WORK_DIR; default the system's temporary directory).
	WorkDir string
	// FlushInterval is how often progress is sent to control (default 1 s).
	FlushInterval time.Duration
	// Registerer receives the maas_worker_training_* series (nil = not exported).
	Registerer prometheus.Registerer
	Logger     *slog.Logger
}

// DefaultOptions are the documented defaults.
func DefaultOptions() Options {
	return Options{GPUs: 1, Timeout: 24 * time.Hour, StopGrace: 15 * time.Second, PollInterval: 2 * time.Second, FlushInterval: time.Second}
}

func (o *Options) validate() error {
	switch {
	case o.Command.IsZero():
		return &config.Error{Name: "MAAS_TRAINER_COMMAND", Msg: "is empty"}
	case o.GPUs < 0:
		return &config.Error{Name: "MAAS_TRAINER_GPUS", Msg: "must not be negative"}
	case o.GPUsPerJob < 0 || (o.GPUsPerJob > 0 && o.GPUsPerJob < o.GPUs && o.GPUs%o.GPUsPerJob != 0):
		return &config.Error{Name: "MAAS_TRAINER_GPUS_PER_JOB", Msg: fmt.Sprintf("must divide MAAS_TRAINER_GPUS (%d), or be 0 for one job on all of them", o.GPUs)}
	case o.GPUsPerJob > 0 && o.GPUsPerJob < o.GPUs && len(visibleDevices(o.GPUs)) < o.GPUs:
		return &config.Error{Name: "MAAS_TRAINER_GPUS", Msg: fmt.Sprintf("%d GPUs declared but CUDA_VISIBLE_DEVICES lists %d", o.GPUs, len(visibleDevices(o.GPUs)))}
	case o.Timeout < 0:
		return &config.Error{Name: "MAAS_TRAINER_TIMEOUT", Msg: "must not be negative (0 = no limit)"}
	case o.StopGrace <= 0:
		return &config.Error{Name: "MAAS_TRAINER_STOP_GRACE", Msg: "must be positive"}
	case o.PollInterval < 10*time.Millisecond:
		return &config.Error{Name: "MAAS_TRAINER_POLL_INTERVAL", Msg: "must be at least 10ms"}
	case o.Lease < 0:
		return &config.Error{Name: "MAAS_TRAINER_LEASE", Msg: "must not be negative"}
	case o.ControlURL == "":
		return &config.Error{Name: "MAAS_CONTROL_URL", Msg: "is required"}
	}
	if o.FlushInterval <= 0 {
		o.FlushInterval = time.Second
	}
	if o.WorkerID == "" {
		host, _ := os.Hostname()
		o.WorkerID = fmt.Sprintf("%s-%d", host, os.Getpid())
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	return nil
}

// SimCommand is the MAAS_TRAINER_COMMAND value that runs the built-in SIMULATED trainer
// (`worker train-sim`, this very binary) with every placeholder.
const SimCommand = "sim"

// SimTemplate is the template SimCommand stands for, with exe the worker binary.
func SimTemplate(exe string) Template {
	t, err := NewTemplate([]string{exe, "train-sim",
		"--base-model", "{base_model}", "--training-file", "{training_file}", "--validation-file", "{validation_file}",
		"--output-dir", "{output_dir}", "--n-epochs", "{n_epochs}", "--batch-size", "{batch_size}",
		"--learning-rate-multiplier", "{learning_rate_multiplier}", "--lora-rank", "{lora_rank}",
		"--lora-alpha", "{lora_alpha}", "--seed", "{seed}"})
	if err != nil {
		panic(err) // the words above are fixed
	}
	return t
}

// Flags binds the MAAS_TRAINER_* settings.
type Flags struct {
	o       Options
	command string
}

// Bind declares the settings on l.
func (f *Flags) Bind(l *config.Loader) {
	d := DefaultOptions()
	l.String(&f.command, "MAAS_TRAINER_COMMAND", "trainer-command", "",
		`trainer command template; "sim" = the built-in simulated trainer; empty = no training (placeholders: {`+strings.Join(Placeholders, "} {")+"})")
	l.Int(&f.o.GPUs, "MAAS_TRAINER_GPUS", "trainer-gpus", d.GPUs, "GPUs this worker offers to training (one job at a time on all of them unless MAAS_TRAINER_GPUS_PER_JOB)")
	l.Int(&f.o.GPUsPerJob, "MAAS_TRAINER_GPUS_PER_JOB", "trainer-gpus-per-job", 0, "GPUs per job: runs MAAS_TRAINER_GPUS / this many jobs at once, each with its own CUDA_VISIBLE_DEVICES; 0 = one job on all GPUs")
	l.Duration(&f.o.Timeout, "MAAS_TRAINER_TIMEOUT", "trainer-timeout", d.Timeout, "longest training run; 0 = no limit")
	l.Duration(&f.o.StopGrace, "MAAS_TRAINER_STOP_GRACE", "trainer-stop-grace", d.StopGrace, "SIGTERM → SIGKILL delay when a trainer is stopped")
	l.Duration(&f.o.PollInterval, "MAAS_TRAINER_POLL_INTERVAL", "trainer-poll-interval", d.PollInterval, "wait between claims when no job is queued")
	l.Duration(&f.o.Lease, "MAAS_TRAINER_LEASE", "trainer-lease", 0, "lease length asked of control; 0 = control's default")
	l.String(&f.o.WorkDir, "MAAS_TRAINER_WORK_DIR", "trainer-work-dir", "", "directory for each job's datasets and output (default: the system's temporary directory)")
	l.String(&f.o.WorkerID, "MAAS_TRAINER_ID", "trainer-id", "", "worker id given to control with each claim (default: host-pid)")
}

// Enabled reports whether a trainer command was set.
func (f *Flags) Enabled() bool { return strings.TrimSpace(f.command) != "" }

// Options returns the validated options for a worker that reaches control at controlURL.
func (f *Flags) Options(controlURL, internalToken string, log *slog.Logger) (Options, error) {
	o := f.o
	o.ControlURL, o.InternalToken, o.Logger = controlURL, internalToken, log
	o.FlushInterval = DefaultOptions().FlushInterval
	if strings.TrimSpace(f.command) == SimCommand {
		exe, err := os.Executable()
		if err != nil {
			return o, &config.Error{Name: "MAAS_TRAINER_COMMAND", Msg: "sim: cannot find the worker binary: " + err.Error()}
		}
		o.Command = SimTemplate(exe)
	} else {
		t, err := ParseTemplate(f.command)
		if err != nil {
			return o, &config.Error{Name: "MAAS_TRAINER_COMMAND", Msg: err.Error()}
		}
		o.Command = t
	}
	if o.WorkDir != "" {
		// The trainer runs in its job's directory: a relative work directory would make
		// the dataset paths it is given relative to the wrong place.
		abs, err := filepath.Abs(o.WorkDir)
		if err != nil {
			return o, &config.Error{Name: "MAAS_TRAINER_WORK_DIR", Msg: err.Error()}
		}
		o.WorkDir = abs
	}
	if err := o.validate(); err != nil {
		return o, err
	}
	return o, nil
}
