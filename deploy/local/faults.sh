#!/usr/bin/env bash
# `make faults`: the fault suite (bench/faults) with its full durations — PostgreSQL down 60 s
# under 1,000 req/s, Redis and control outages, kills, SIGTERM with 200 streams and a 10-minute
# soak — against the binaries in bin/ (built by `make build`). Cases that stop PostgreSQL or
# Redis start private servers of their own; the others use the throwaway ones started here.
# Figures go to bench/results/faults.md. Bounded: about 20 minutes, 28 at most.
set -euo pipefail
cd "$(dirname "$0")/../.."
. deploy/local/services.sh

throwaway_services faults
if [ -z "$REDIS_URL" ]; then
	say "Redis is required by the fault suite"
	exit 1
fi
export MAAS_TEST_DATABASE_URL=$PG_URL
export MAAS_TEST_REDIS_URL=$REDIS_URL
export MAAS_TEST_BIN_DIR=$PWD/bin
export MAAS_FAULTS_FULL=1
export MAAS_FAULTS_VERSION=$(git describe --always --dirty 2>/dev/null || echo unknown)
export MAAS_FAULTS_OUT=$PWD/bench/results/faults.md
# 200 streams and 1,000 req/s through a proxy need a few thousand descriptors.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
say "fault suite (full durations; figures in bench/results/faults.md)"
go test -count=1 -timeout 28m -v -run . ./bench/faults/ "$@"
