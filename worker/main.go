// Command worker is the sidecar that runs beside an inference engine: it registers the
// engine with control, heartbeats its load, drains on shutdown and can supervise the engine
// process. "worker sim" runs the built-in simulator engine alone (benchmarks). With
// MAAS_TRAINER_COMMAND set it also offers training capacity: it claims fine-tuning jobs from
// control and runs them with that trainer ("worker train" does only that, with no engine).
//
//	worker --engine sim                      simulator in-process, registered with control
//	worker --engine-url URL --engine-kind K  attach to a running engine
//	worker --engine-cmd "…" --engine-url URL --engine-kind K   start and supervise it
//	worker sim                               the simulator alone, on MAAS_SIM_ADDR
//	worker train                             training only: MAAS_TRAINER_COMMAND runs the jobs
//	worker train-sim --base-model … --training-file … --output-dir …   the SIMULATED trainer
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/maas-platform/maas/pkg/config"
	"github.com/maas-platform/maas/pkg/obs"
	"github.com/maas-platform/maas/worker/internal/sidecar"
	"github.com/maas-platform/maas/worker/internal/sim"
	"github.com/maas-platform/maas/worker/internal/trainer"
	"github.com/maas-platform/maas/worker/internal/trainer/trainsim"
)

func main() {
	args := os.Args[1:]
	if len(args) > 0 && args[0] == "sim" {
		os.Exit(runSim(args[1:]))
	}
	if len(args) > 0 && args[0] == "train-sim" {
		os.Exit(trainsim.Main(args[1:], os.Stdout, os.Stderr))
	}
	if len(args) > 0 && args[0] == "train" {
		os.Exit(runTrain(args[1:]))
	}
	if len(args) > 0 && args[0] == "serve" {
		args = args[1:]
	}
	os.Exit(runWorker(args))
}

func runSim(args []string) int {
	l, err := config.NewLoader("worker sim", "")
	if err != nil {
		config.Fatal("worker", err)
	}
	var common config.Common
	common.Bind(l)
	var sf sim.Flags
	sf.Bind(l)
	var jsonLogs bool
	l.Bool(&jsonLogs, "MAAS_LOG_JSON", "log-json", false, "JSON log lines")
	if err := l.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		config.Fatal("worker", err)
	}
	if err := common.Validate(false, false); err != nil {
		config.Fatal("worker", err)
	}
	o, err := sf.Options()
	if err != nil {
		config.Fatal("worker", err)
	}
	log := obs.NewLogger(obs.LogOptions{Component: "worker-sim", Debug: common.Debug, JSON: jsonLogs})
	log.Info("starting simulator engine", l.Redacted()...)
	o.Logger = log
	s, err := sim.New(o)
	if err != nil {
		config.Fatal("worker", err)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if err := s.Run(ctx, sidecar.DefaultOptions().DrainGrace); err != nil {
		log.Error("simulator failed", "err", err)
		return 1
	}
	log.Info("simulator stopped")
	return 0
}

func runWorker(args []string) int {
	l, err := config.NewLoader("worker", "")
	if err != nil {
		config.Fatal("worker", err)
	}
	var f sidecar.Flags
	f.Bind(l)
	var tf trainer.Flags
	tf.Bind(l)
	if err := l.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		config.Fatal("worker", err)
	}
	o, err := f.Options()
	if err != nil {
		config.Fatal("worker", err)
	}
	var tw *trainer.Worker
	if tf.Enabled() {
		to, err := tf.Options(o.ControlURL, o.InternalToken, o.Logger.With("mode", "training"))
		if err != nil {
			config.Fatal("worker", err)
		}
		// One /metrics for the engine's worker and its trainer.
		o.Registry = obs.NewRegistry("worker")
		to.Registerer = o.Registry
		if tw, err = trainer.New(to); err != nil {
			config.Fatal("worker", err)
		}
	}
	o.Logger.Info("starting worker", l.Redacted()...)
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if tw != nil {
		trained := make(chan struct{})
		go func() { defer close(trained); _ = tw.Run(ctx) }()
		defer func() { stop(); <-trained }()
	}
	if err := sidecar.Run(ctx, o); err != nil {
		o.Logger.Error("worker failed", "err", err)
		fmt.Fprintln(os.Stderr, "worker:", err)
		// A setting found missing once the engine is up (MAAS_ENGINE_CAPACITY for an
		// engine that states no limit) exits like one found missing at start.
		var ce *config.Error
		if errors.As(err, &ce) {
			return config.ExitCode
		}
		return 1
	}
	return 0
}

// runTrain is a worker that only trains: no engine, no registration as a backend.
func runTrain(args []string) int {
	l, err := config.NewLoader("worker train", "")
	if err != nil {
		config.Fatal("worker", err)
	}
	var common config.Common
	common.Bind(l)
	var tf trainer.Flags
	tf.Bind(l)
	var jsonLogs bool
	l.Bool(&jsonLogs, "MAAS_LOG_JSON", "log-json", false, "JSON log lines")
	var addr string
	l.String(&addr, "MAAS_WORKER_ADDR", "addr", "127.0.0.1:8003", "the training worker's HTTP address (health, metrics)")
	if err := l.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		config.Fatal("worker", err)
	}
	if err := common.Validate(false, false); err != nil {
		config.Fatal("worker", err)
	}
	if err := common.RequireInternalToken(); err != nil {
		config.Fatal("worker", err)
	}
	if !tf.Enabled() {
		config.Fatal("worker", &config.Error{Name: "MAAS_TRAINER_COMMAND", Msg: `is required by "worker train" (a command template, or "sim" for the simulated trainer)`})
	}
	log := obs.NewLogger(obs.LogOptions{Component: "worker-train", Debug: common.Debug, JSON: jsonLogs})
	to, err := tf.Options(strings.TrimRight(common.ControlURL, "/"), common.InternalToken, log)
	if err != nil {
		config.Fatal("worker", err)
	}
	reg := obs.NewRegistry("worker")
	to.Registerer = reg
	w, err := trainer.New(to)
	if err != nil {
		config.Fatal("worker", err)
	}
	log.Info("starting training worker", l.Redacted()...)
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		log.Error("training worker failed", "err", err)
		return 1
	}
	served := make(chan error, 1)
	go func() { served <- trainer.Serve(ctx, ln, reg) }()
	defer func() { stop(); <-served }()
	if err := w.Run(ctx); err != nil {
		log.Error("training worker failed", "err", err)
		return 1
	}
	log.Info("training worker stopped")
	return 0
}
