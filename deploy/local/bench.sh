#!/usr/bin/env bash
# `make bench`: start a throwaway PostgreSQL and Redis, run the benchmark suite against the
# binaries in bin/, and stop the services afterwards. Extra arguments go to `go run ./bench`.
set -euo pipefail
cd "$(dirname "$0")/../.."
. deploy/local/services.sh

throwaway_services bench
export MAAS_BENCH_DATABASE_URL=$PG_URL
export MAAS_BENCH_REDIS_URL=${REDIS_URL:-}
# Up to 10,000 idle streams through a proxy: two sockets each, plus the load generator's.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
go build -o "$SERVICES_DIR/bench" ./bench
"$SERVICES_DIR/bench" -out bench/results "$@"
