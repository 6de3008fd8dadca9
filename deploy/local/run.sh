#!/usr/bin/env bash
# `make run`: the whole platform on one machine with no configuration.
#
# PostgreSQL: MAAS_DATABASE_URL when set, else a project-local cluster in .data/pg (created
# once, reused). Redis: MAAS_REDIS_URL when set, else a local redis-server in .data/redis when
# it exists or can be installed, else none. Then control (migrations + first admin), a worker
# with the simulator engine (with LoRA adapter slots, so fine-tuned models are served), a
# training worker with the built-in SIMULATED trainer, and the gateway; finally a
# ready-to-paste curl with a fresh key.
# Ctrl-C stops everything this script started and keeps the data.
set -euo pipefail
cd "$(dirname "$0")/../.."
. deploy/local/services.sh

DATA=.data
mkdir -p "$DATA/logs" "$DATA/trainer"
chmod 700 "$DATA"

pids=()
started_pg=
started_redis=
stopping=
stop_all() {
	[ -n "$stopping" ] && return
	stopping=1
	trap '' INT TERM HUP # a second Ctrl-C (or a group-wide signal) must not cut the clean-up short
	say "stopping…" || true # the terminal may be gone (HUP)
	local i
	for ((i = ${#pids[@]} - 1; i >= 0; i--)); do # reverse start order: gateway, trainer, worker, control
		kill -TERM "${pids[i]}" 2>/dev/null || true
		wait "${pids[i]}" 2>/dev/null || true
	done
	[ -n "$started_redis" ] && redis_stop "$DATA/redis"
	[ -n "$started_pg" ] && pg_stop "$DATA/pg"
	say "stopped; data kept in $DATA/" || true
}
trap stop_all EXIT
trap 'exit 130' INT TERM
trap 'exit 129' HUP # the terminal closed: the processes run in their own sessions and would outlive it

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
# The training worker's health and metrics address (its MAAS_WORKER_ADDR).
MAAS_TRAINER_ADDR="${MAAS_TRAINER_ADDR:-127.0.0.1:8003}"
export MAAS_SIM_ADDR="${MAAS_SIM_ADDR:-127.0.0.1:8100}"
export MAAS_CONTROL_URL="http://$MAAS_CONTROL_ADDR"

# Fixed default ports may be taken on a shared machine: say which variable moves each one.
for pair in "MAAS_CONTROL_ADDR=$MAAS_CONTROL_ADDR" "MAAS_GATEWAY_ADDR=$MAAS_GATEWAY_ADDR" \
	"MAAS_WORKER_ADDR=$MAAS_WORKER_ADDR" "MAAS_SIM_ADDR=$MAAS_SIM_ADDR" "MAAS_TRAINER_ADDR=$MAAS_TRAINER_ADDR"; do
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

# control_api METHOD PATH TOKEN [JSON]: one call to control's API over bash's /dev/tcp (no
# curl needed); sets api_status and api_body.
control_api() {
	local body=${4:-} line
	exec 3<>"/dev/tcp/${MAAS_CONTROL_ADDR%:*}/${MAAS_CONTROL_ADDR##*:}"
	printf '%s %s HTTP/1.1\r\nHost: %s\r\nAuthorization: Bearer %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s' \
		"$1" "$2" "$MAAS_CONTROL_ADDR" "$3" "${#body}" "$body" >&3
	read -r _ api_status _ <&3
	while IFS= read -r line <&3 && [ "${line%$'\r'}" != "" ]; do :; done # headers
	api_body=$(cat <&3)
	exec 3<&-
}

# register_model NAME TYPE: fine-tuning needs its base model in control's registry (served
# models work without one). A management key is made for the admin for these calls and
# revoked after; nothing changes when the model is registered already.
register_model() {
	local setup id= after=
	setup=$(bin/control keys create --username admin --name "make-run-setup-$$" --scopes management)
	control_api GET "/api/v1/models/$1" "$setup"
	if [ "$api_status" = 404 ]; then
		control_api POST /api/v1/models "$setup" "{\"name\":\"$1\",\"type\":\"$2\",\"description\":\"served by the simulator engine (make run)\"}"
		if [ "$api_status" = 201 ]; then
			say "registered $1 in the model registry (a base model for fine-tuning)"
		else
			say "could not register $1 ($api_status): $api_body"
		fi
	fi
	# The setup key is the admin's newest: page through the admin's keys to find its id.
	while :; do
		control_api GET "/api/v1/api-keys?limit=100${after:+&after=$after}" "$setup"
		[ "$api_status" = 200 ] || break
		if [[ $api_body =~ \"id\":([0-9]+),\"object\":\"api_key\",\"user_id\":[0-9]+,\"name\":\"make-run-setup-$$\" ]]; then
			id=${BASH_REMATCH[1]}
			break
		fi
		[[ $api_body =~ \"has_more\":true ]] || break
		[[ $api_body =~ .*\"id\":([0-9]+),\"object\":\"api_key\" ]] || break
		after=${BASH_REMATCH[1]}
	done
	if [ -n "$id" ]; then
		control_api DELETE "/api/v1/api-keys/$id" "$setup"
	fi
	if [ "$api_status" != 204 ]; then
		say "could not revoke the setup key make-run-setup-$$ ($api_status): revoke it in the console"
	fi
}

start() { # start NAME ADDR BIN ARGS...: run in the background, output to the terminal and a log
	local name=$1 addr=$2
	shift 2
	# Each process runs in its own session, and tee ignores SIGINT: Ctrl-C reaches this
	# script alone, which stops them in reverse order (a worker deregisters while control
	# still runs; signalled all at once, control could stop first and leave the worker's
	# backend draining in the registry, unserved at the next start).
	setsid "$@" > >(tee -i -a "$DATA/logs/$name.log") 2>&1 &
	pids+=($!)
	wait_http "${addr/:/\/}" "$!" "$name"
	say "$name ready on http://$addr"
}

say "applying migrations and creating the first admin when there is none"
bin/control bootstrap

start control "$MAAS_CONTROL_ADDR" bin/control serve
register_model sim-chat chat
if [ -x bin/worker ]; then
	# The simulator answers vLLM's runtime LoRA API with MAAS_SIM_MAX_LORAS slots, which
	# the worker offers to control: fine-tuned models are loaded there as adapters.
	lora_slots="${MAAS_SIM_MAX_LORAS:-8}"
	MAAS_TRAINER_COMMAND= MAAS_SIM_MAX_LORAS="$lora_slots" MAAS_ADAPTER_CACHE_DIR="${MAAS_ADAPTER_CACHE_DIR:-$DATA/worker/adapters}" \
		start worker "$MAAS_WORKER_ADDR" bin/worker --engine sim
	say "worker: the simulator engine serves sim-chat and sim-embedding, with $lora_slots LoRA adapter slots"
	# Fine-tuning jobs run on a training worker; "sim" is the built-in SIMULATED trainer
	# (no model is trained: it reads the dataset, reports a loss curve, writes a PEFT-shaped
	# adapter). MAAS_TRAINER_COMMAND runs a real trainer instead (deploy/trainer).
	MAAS_WORKER_ADDR="$MAAS_TRAINER_ADDR" MAAS_TRAINER_COMMAND="${MAAS_TRAINER_COMMAND:-sim}" \
		MAAS_TRAINER_ID="${MAAS_TRAINER_ID:-make-run-trainer}" MAAS_TRAINER_WORK_DIR="${MAAS_TRAINER_WORK_DIR:-$PWD/$DATA/trainer}" \
		start trainer "$MAAS_TRAINER_ADDR" bin/worker train
	if [ "${MAAS_TRAINER_COMMAND:-sim}" = sim ]; then
		say "trainer: the SIMULATED trainer (no model is trained) runs fine-tuning jobs"
	fi
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

  Fine-tune sim-chat on the simulator (README, "Fine-tune a model on the simulator"):
    export OPENAI_BASE_URL=http://$MAAS_GATEWAY_ADDR/v1 OPENAI_API_KEY=$key
    (cd .data && bash ../deploy/sdktest/walkthrough/finetune.sh)

  Ctrl-C stops everything and keeps the data.

MSG
wait -n "${pids[@]}" || true
say "a process exited"
