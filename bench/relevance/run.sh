#!/usr/bin/env bash
# Knowledge-base figures: retrieval quality on this directory's relevance set, and search
# latency of the embedded vector index over 100,000 chunks of 384 dimensions. Starts a
# throwaway PostgreSQL (deploy/local/services.sh), writes results.md and latency.txt here.
#   bash bench/relevance/run.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
. deploy/local/services.sh
throwaway_services relevance
export MAAS_TEST_DATABASE_URL=$PG_URL
go test -count=1 -run '^TestRelevance$' ./control/internal/knowledge/ -args -relevance.out="$PWD/bench/relevance/results.md"
go test -count=1 -run '^$' -bench '^BenchmarkSearch100k$' -benchtime 200x ./control/internal/vectorindex/embedded/ | tee bench/relevance/latency.txt
