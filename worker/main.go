// Command worker is the sidecar that runs beside an inference engine: it registers the
// engine with control, heartbeats its load, drains on shutdown and can supervise the engine
// process. "worker sim" runs the built-in simulator engine alone (benchmarks).
//
//	worker --engine sim                      simulator in-process, registered with control
//	worker --engine-url URL --engine-kind K  attach to a running engine
//	worker --engine-cmd "…" --engine-url URL --engine-kind K   start and supervise it
//	worker sim                               the simulator alone, on MAAS_SIM_ADDR
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/maas-platform/maas/pkg/config"
	"github.com/maas-platform/maas/pkg/obs"
	"github.com/maas-platform/maas/worker/internal/sidecar"
	"github.com/maas-platform/maas/worker/internal/sim"
)

func main() {
	args := os.Args[1:]
	if len(args) > 0 && args[0] == "sim" {
		os.Exit(runSim(args[1:]))
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
	o.Logger.Info("starting worker", l.Redacted()...)
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
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
