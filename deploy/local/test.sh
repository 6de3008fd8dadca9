#!/usr/bin/env bash
# `make test`: start a throwaway PostgreSQL and Redis on free loopback ports, run vet and the
# whole test suite (race detector on) against them, and stop them afterwards, also on failure.
set -euo pipefail
cd "$(dirname "$0")/../.."
. deploy/local/services.sh

throwaway_services test
# promtool (Debian's prometheus package) checks deploy/prometheus; deploy/deploytest needs it.
command -v promtool >/dev/null 2>&1 || apt_install prometheus || say "promtool is missing (Debian: 'sudo apt-get install prometheus')"
# Node.js and npm run the official `openai` npm client against a live gateway (deploy/sdktest/node).
command -v npm >/dev/null 2>&1 || apt_install nodejs npm || say "npm is missing (Debian: 'sudo apt-get install nodejs npm')"
if [ -z "$REDIS_URL" ] && [ -n "${CI:-}" ]; then
	say "Redis is required under CI"
	exit 1
fi
export MAAS_TEST_DATABASE_URL=$PG_URL
export MAAS_TEST_REDIS_URL=${REDIS_URL:-}

say "go vet ./..."
go vet ./...
say "go test -race ./..."
go test -race -count=1 -timeout 12m "$@" ./...
