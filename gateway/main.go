// Command gateway is the platform's data plane: an OpenAI-compatible HTTP server that
// authenticates API keys, enforces quotas, routes each request to a pooled inference
// backend, proxies the answer (streaming included) and records usage.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/maas-platform/maas/gateway/internal/server"
	"github.com/maas-platform/maas/pkg/config"
	"github.com/maas-platform/maas/pkg/obs"
)

func main() {
	l, err := config.NewLoader("gateway", "")
	if err != nil {
		config.Fatal("gateway", err)
	}
	opts := server.DefaultOptions()
	opts.Bind(l)
	if err := l.Parse(os.Args[1:]); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			os.Exit(0)
		}
		config.Fatal("gateway", err)
	}
	if err := opts.Validate(); err != nil {
		config.Fatal("gateway", err)
	}
	opts.Logger = obs.NewLogger(obs.LogOptions{
		Component: "gateway",
		Debug:     opts.Common.Debug,
		JSON:      opts.Common.Environment == config.Production || opts.LogJSON,
	})
	opts.Logger.Info("starting gateway", append([]any{"version", obs.Version}, l.Redacted()...)...)

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if err := server.Run(ctx, opts); err != nil {
		opts.Logger.Error("gateway stopped", "err", err)
		fmt.Fprintln(os.Stderr, "gateway:", err)
		os.Exit(1)
	}
}
