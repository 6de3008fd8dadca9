// Command bench produces the project's performance figures. It starts the simulator
// engine, control, workers, a bare pass-through proxy and the gateway, then runs each
// scenario three ways (direct to the simulator, through the pass-through, through the
// gateway) in trials whose mode order rotates, and writes bench/results/<stamp>.{json,md}
// and latest.md. Every trial also measures PostgreSQL and Redis; every gateway trial ends
// with a check that the usage ledger holds one row per request served. A scenario whose
// CPU cannot be read or whose ledger check fails is marked failed, and the command exits
// with an error once the results are written.
//
//	go run ./bench -out bench/results                 # the standard suite (make bench)
//	go run ./bench -scenarios 'chat c64' -trials 1    # one scenario
//	go run ./bench passthrough -listen ADDR -upstream ADDR
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"regexp"
	"syscall"
	"time"

	"github.com/maas-platform/maas/bench/internal/passthrough"
)

func main() {
	if len(os.Args) > 1 && os.Args[1] == "passthrough" {
		fs := flag.NewFlagSet("passthrough", flag.ExitOnError)
		listen := fs.String("listen", "127.0.0.1:8200", "address to listen on")
		upstream := fs.String("upstream", "127.0.0.1:8100", "upstream host:port")
		fs.Parse(os.Args[2:])
		if err := passthrough.Serve(*listen, *upstream); err != nil {
			fmt.Fprintln(os.Stderr, "passthrough:", err)
			os.Exit(1)
		}
		return
	}
	var o options
	flag.StringVar(&o.out, "out", "bench/results", "directory for the result files")
	flag.StringVar(&o.bin, "bin", "bin", "directory holding the gateway, control and worker binaries")
	flag.StringVar(&o.dbURL, "database-url", os.Getenv("MAAS_BENCH_DATABASE_URL"), "PostgreSQL server URL (a superuser; a fresh database is created) ($MAAS_BENCH_DATABASE_URL)")
	flag.StringVar(&o.redisURL, "redis-url", os.Getenv("MAAS_BENCH_REDIS_URL"), "Redis URL for the global-quota scenario ($MAAS_BENCH_REDIS_URL)")
	flag.DurationVar(&o.duration, "duration", 2*time.Second, "length of one trial")
	flag.IntVar(&o.trials, "trials", 3, "interleaved trials per scenario and mode")
	flag.IntVar(&o.headlineTrials, "headline-trials", 5, "interleaved trials per mode of the scenarios the targets are judged on (chat c64, stream 64 tok itl 0)")
	scen := flag.String("scenarios", "", "regular expression selecting scenarios by name (default: all)")
	flag.StringVar(&o.cpuprofile, "cpuprofile", "", "directory for gateway CPU profiles of the main non-streaming and streaming scenarios")
	flag.BoolVar(&o.list, "list", false, "list the scenarios and exit")
	flag.Parse()
	if *scen != "" {
		re, err := regexp.Compile(*scen)
		if err != nil {
			fmt.Fprintln(os.Stderr, "bench: -scenarios:", err)
			os.Exit(2)
		}
		o.filter = re
	}
	logger := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, o, logger); err != nil {
		logger.Error("bench failed", "err", err)
		os.Exit(1)
	}
}

type options struct {
	out, bin, dbURL, redisURL string
	duration                  time.Duration
	trials, headlineTrials    int
	filter                    *regexp.Regexp
	cpuprofile                string
	list                      bool
}
