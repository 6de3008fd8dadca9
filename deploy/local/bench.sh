#!/usr/bin/env bash
# `make bench`: start a throwaway PostgreSQL and Redis, run the benchmark suite against the
# binaries in bin/, and stop the services afterwards. Extra arguments go to `go run ./bench`.
set -euo pipefail
cd "$(dirname "$0")/../.."
. deploy/local/services.sh

tmp=$(mktemp -d "${TMPDIR:-/tmp}/maas-bench.XXXXXX")
chmod 755 "$tmp"
cleanup() {
	pg_stop "$tmp/pg"
	redis_stop "$tmp/redis"
	rm -rf "$tmp"
}
trap cleanup EXIT

pg_start "$tmp/pg"
redis_start "$tmp/redis" || true
export MAAS_BENCH_DATABASE_URL=$PG_URL
export MAAS_BENCH_REDIS_URL=${REDIS_URL:-}
# Up to 10,000 idle streams through a proxy: two sockets each, plus the load generator's.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
go build -o "$tmp/bench" ./bench
"$tmp/bench" -out bench/results "$@"
