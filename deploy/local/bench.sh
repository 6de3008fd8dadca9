#!/usr/bin/env bash
# `make bench`: start a throwaway PostgreSQL and Redis, run the benchmark suite against the
# binaries in bin/, and stop the services afterwards. Extra arguments go to the bench command
# and override the defaults, e.g. a reduced run that leaves bench/results alone:
#   bash deploy/local/bench.sh -out /tmp/bench -scenarios '^chat c64$' -headline-trials 3 -duration 1s
# (-list shows the scenarios; -bin DIR takes the binaries from elsewhere). The command exits
# non-zero when a scenario failed (a CPU read, or ledger rows that differ from requests).
set -euo pipefail
cd "$(dirname "$0")/../.."
. deploy/local/services.sh

throwaway_services bench
export MAAS_BENCH_DATABASE_URL=$PG_URL
export MAAS_BENCH_REDIS_URL=${REDIS_URL:-}
# Up to 10,000 idle streams through a proxy: two sockets each in the proxy, plus the load
# generator's. Root may raise the hard limit too (not inside every sandbox); otherwise take
# the hard limit as it is — below ~20,100 the 10,000-stream scenario loses a few streams.
ulimit -n 1048576 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
go build -o "$SERVICES_DIR/bench" ./bench
"$SERVICES_DIR/bench" -out bench/results "$@"
