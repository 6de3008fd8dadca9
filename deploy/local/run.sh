#!/usr/bin/env bash
# `make run`: the whole platform on one machine with no configuration.
#
# PostgreSQL: MAAS_DATABASE_URL when set, else a project-local cluster in .data/pg (created
# once, reused). Redis: MAAS_REDIS_URL when set, else a local redis-server in .data/redis when
# it exists or can be installed, else none. Then control (migrations + first admin), a worker
# with the simulator engine, and the gateway; finally a ready-to-paste curl with a fresh key.
# Ctrl-C stops everything this script started and keeps the data.
set -euo pipefail
cd "$(dirname "$0")/../.."
. deploy/local/services.sh

DATA=.data
mkdir -p "$DATA/logs"
chmod 700 "$DATA"

pids=()
started_pg=
started_redis=
stopping=
stop_all() {
	[ -n "$stopping" ] && return
	stopping=1
	trap '' INT TERM # a second Ctrl-C (or a group-wide signal) must not cut the clean-up short
	say "stopping…"
	local i
	for ((i = ${#pids[@]} - 1; i >= 0; i--)); do # reverse start order: gateway, worker, control
		kill -TERM "${pids[i]}" 2>/dev/null || true
		wait "${pids[i]}" 2>/dev/null || true
	done
	[ -n "$started_redis" ] && redis_stop "$DATA/redis"
	[ -n "$started_pg" ] && pg_stop "$DATA/pg"
	say "stopped; data kept in $DATA/"
}
trap stop_all EXIT
trap 'exit 130' INT TERM

# Secrets generated once per checkout, kept in .data/secrets.env (mode 600).
if [ ! -f "$DATA/secrets.env" ]; then
	rand() { od -An -N32 -tx1 /dev/urandom | tr -d ' \n'; }
	umask 077
	{
		echo "MAAS_SECRET_KEY=$(rand)"
		echo "MAAS_INTERNAL_TOKEN=$(rand)"
	} >"$DATA/secrets.env"
fi
set -a
. "$DATA/secrets.env"
set +a
export MAAS_SECRET_KEY="${MAAS_SECRET_KEY}" MAAS_INTERNAL_TOKEN="${MAAS_INTERNAL_TOKEN}"

if [ -z "${MAAS_DATABASE_URL:-}" ]; then
	pg_start "$DATA/pg" durable
	started_pg=1
	MAAS_DATABASE_URL=$(pg_createdb maas)
fi
export MAAS_DATABASE_URL

if [ -z "${MAAS_REDIS_URL:-}" ]; then
	if redis_start "$DATA/redis" persist; then
		started_redis=1
		MAAS_REDIS_URL=$REDIS_URL
	else
		say "no Redis: rate limits are enforced per gateway instance"
	fi
fi
export MAAS_REDIS_URL="${MAAS_REDIS_URL:-}"

export MAAS_CONTROL_ADDR="${MAAS_CONTROL_ADDR:-127.0.0.1:8001}"
export MAAS_GATEWAY_ADDR="${MAAS_GATEWAY_ADDR:-127.0.0.1:8000}"
export MAAS_WORKER_ADDR="${MAAS_WORKER_ADDR:-127.0.0.1:8002}"
export MAAS_SIM_ADDR="${MAAS_SIM_ADDR:-127.0.0.1:8100}"
export MAAS_CONTROL_URL="http://$MAAS_CONTROL_ADDR"

# Fixed default ports may be taken on a shared machine: say which variable moves each one.
for pair in "MAAS_CONTROL_ADDR=$MAAS_CONTROL_ADDR" "MAAS_GATEWAY_ADDR=$MAAS_GATEWAY_ADDR" \
	"MAAS_WORKER_ADDR=$MAAS_WORKER_ADDR" "MAAS_SIM_ADDR=$MAAS_SIM_ADDR"; do
	addr=${pair#*=}
	if (exec 3<>"/dev/tcp/${addr%:*}/${addr##*:}") 2>/dev/null; then
		say "${addr} is already in use: set ${pair%%=*} to another address"
		exit 1
	fi
done

wait_http() { # wait_http HOST/PORT PID NAME
	for _ in $(seq 1 300); do
		if ! kill -0 "$2" 2>/dev/null; then
			say "$3 exited; last lines of $DATA/logs/$3.log:"
			tail -n 20 "$DATA/logs/$3.log" >&2
			exit 1
		fi
		if (exec 3<>"/dev/tcp/$1") 2>/dev/null; then
			return 0
		fi
		sleep 0.1
	done
	say "$3 did not start listening on $1"
	exit 1
}

start() { # start NAME ADDR BIN ARGS...: run in the background, output to the terminal and a log
	local name=$1 addr=$2
	shift 2
	"$@" > >(tee -a "$DATA/logs/$name.log") 2>&1 &
	pids+=($!)
	wait_http "${addr/:/\/}" "$!" "$name"
	say "$name ready on http://$addr"
}

say "applying migrations and creating the first admin when there is none"
bin/control bootstrap

start control "$MAAS_CONTROL_ADDR" bin/control serve
if [ -x bin/worker ]; then
	start worker "$MAAS_WORKER_ADDR" bin/worker --engine sim
fi
if [ -x bin/gateway ]; then
	start gateway "$MAAS_GATEWAY_ADDR" bin/gateway
fi

key=$(bin/control keys create --username admin --name "make-run-$(date +%Y%m%d-%H%M%S)")
cat <<MSG

  MaaS platform is up.
    gateway (OpenAI API):   http://$MAAS_GATEWAY_ADDR/v1
    control (platform API): http://$MAAS_CONTROL_ADDR/api/v1
    data and logs:          $DATA/

  A fresh API key for the admin user (shown once): $key

  Try it:
    curl -s http://$MAAS_GATEWAY_ADDR/v1/chat/completions \\
      -H "Authorization: Bearer $key" -H "Content-Type: application/json" \\
      -d '{"model":"sim-chat","messages":[{"role":"user","content":"Hello!"}]}'

  Ctrl-C stops everything and keeps the data.

MSG
wait -n "${pids[@]}" || true
say "a process exited"
