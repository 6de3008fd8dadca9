#!/usr/bin/env bash
# Local PostgreSQL and Redis for `make run` and `make test`, as project-owned processes on
# loopback. Source this file; it defines functions and changes nothing by itself.
#
#   pg_start DIR [durable]   start (creating when needed) a cluster in DIR; sets PG_URL, PG_PORT
#   pg_stop DIR              stop it (fast shutdown)
#   redis_start DIR          start Redis with its data in DIR; sets REDIS_URL (empty when unavailable)
#   redis_stop DIR

say() { printf '[maas] %s\n' "$*" >&2; }

is_root() { [ "$(id -u)" = 0 ]; }

apt_install() {
	if ! is_root || ! command -v apt-get >/dev/null 2>&1; then
		return 1
	fi
	if [ -z "${MAAS_APT_UPDATED:-}" ]; then
		say "apt-get update"
		DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null 2>&1 || true
		export MAAS_APT_UPDATED=1
	fi
	say "installing $*"
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

# free_port prints a TCP port on 127.0.0.1 that nothing listens on, below the kernel's
# ephemeral range (outgoing connections take ports there, which a server then cannot bind).
free_port() {
	local p lo=32768
	read -r lo _ </proc/sys/net/ipv4/ip_local_port_range 2>/dev/null || true
	[ "$lo" -gt 12000 ] || lo=32768
	for _ in $(seq 1 200); do
		p=$((10000 + RANDOM % (lo - 10000)))
		if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
			echo "$p"
			return 0
		fi
	done
	return 1
}

pg_bindir() {
	local d
	d=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
	if [ -n "$d" ] && [ -x "$d/initdb" ]; then
		echo "$d"
		return 0
	fi
	if command -v initdb >/dev/null 2>&1; then
		dirname "$(command -v initdb)"
		return 0
	fi
	return 1
}

ensure_pg() {
	if pg_bindir >/dev/null; then return 0; fi
	if apt_install postgresql && pg_bindir >/dev/null; then return 0; fi
	say "PostgreSQL server binaries are missing. Install them (Debian: 'sudo apt-get install postgresql')"
	say "or point MAAS_DATABASE_URL at an existing server."
	return 1
}

# as_pg runs a command as the postgres user when we are root (initdb refuses root).
as_pg() {
	if is_root; then
		runuser -u postgres -- "$@"
	else
		"$@"
	fi
}

pg_start() {
	local dir=$1 durable=${2:-}
	ensure_pg || return 1
	local bin
	bin=$(pg_bindir)
	mkdir -p "$dir"
	dir=$(cd "$dir" && pwd)
	if is_root; then
		chown postgres "$dir"
		# postgres must be able to traverse every parent directory.
		local p=$dir
		while [ "$p" != / ]; do
			p=$(dirname "$p")
			chmod o+x "$p" 2>/dev/null || true
		done
	fi
	if [ ! -f "$dir/data/PG_VERSION" ]; then
		say "creating PostgreSQL cluster in $dir/data"
		local sync=--no-sync
		[ -n "$durable" ] && sync=
		as_pg "$bin/initdb" -D "$dir/data" -U postgres -A trust -E UTF8 --no-locale $sync >"$dir/initdb.log" 2>&1 || {
			cat "$dir/initdb.log" >&2
			return 1
		}
	fi
	if [ -f "$dir/data/postmaster.pid" ] && as_pg "$bin/pg_ctl" -D "$dir/data" status >/dev/null 2>&1; then
		PG_PORT=$(sed -n 4p "$dir/data/postmaster.pid")
		say "PostgreSQL already running in $dir on port $PG_PORT"
	else
		local attempt started=
		for attempt in 1 2 3; do
			PG_PORT=$(free_port)
			local opts="-c listen_addresses=127.0.0.1 -p $PG_PORT -k $dir -c max_connections=300"
			[ -z "$durable" ] && opts="$opts -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
			if as_pg "$bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 start -o "$opts" >/dev/null; then
				started=1
				break
			fi
			say "PostgreSQL did not start on port $PG_PORT (attempt $attempt)"
		done
		if [ -z "$started" ]; then
			tail -n 20 "$dir/server.log" >&2
			return 1
		fi
		say "PostgreSQL listening on 127.0.0.1:$PG_PORT (data in $dir/data)"
	fi
	PG_URL="postgresql://postgres@127.0.0.1:$PG_PORT/postgres?sslmode=disable"
	export PG_URL PG_PORT
}

pg_createdb() { # pg_createdb NAME: create the database when missing, print its URL
	local name=$1
	local bin
	bin=$(pg_bindir)
	if ! "$bin/psql" -Atq "$PG_URL" -c "SELECT 1 FROM pg_database WHERE datname='$name'" | grep -q 1; then
		"$bin/psql" -q "$PG_URL" -c "CREATE DATABASE $name" >/dev/null || return 1
	fi
	echo "postgresql://postgres@127.0.0.1:$PG_PORT/$name?sslmode=disable"
}

pg_stop() {
	local dir=$1
	local bin
	bin=$(pg_bindir) || return 0
	[ -f "$dir/data/postmaster.pid" ] || return 0
	as_pg "$bin/pg_ctl" -D "$dir/data" -m fast -w stop >/dev/null 2>&1 || true
}

ensure_redis() {
	command -v redis-server >/dev/null 2>&1 && return 0
	apt_install redis-server && command -v redis-server >/dev/null 2>&1 && return 0
	return 1
}

redis_start() {
	local dir=$1 persist=${2:-}
	REDIS_URL=
	if ! ensure_redis; then
		say "redis-server is not installed (Debian: 'sudo apt-get install redis-server'): running without Redis"
		export REDIS_URL
		return 1
	fi
	mkdir -p "$dir"
	dir=$(cd "$dir" && pwd)
	if [ -f "$dir/redis.pid" ] && kill -0 "$(cat "$dir/redis.pid")" 2>/dev/null && [ -f "$dir/redis.port" ]; then
		REDIS_PORT=$(cat "$dir/redis.port")
	else
		REDIS_PORT=$(free_port)
		local save=(--save '' --appendonly no)
		[ -n "$persist" ] && save=(--appendonly yes)
		redis-server --bind 127.0.0.1 --port "$REDIS_PORT" "${save[@]}" --dir "$dir" \
			--daemonize yes --pidfile "$dir/redis.pid" --logfile "$dir/redis.log" || return 1
		echo "$REDIS_PORT" >"$dir/redis.port"
		for _ in $(seq 1 100); do
			(exec 3<>"/dev/tcp/127.0.0.1/$REDIS_PORT") 2>/dev/null && break
			sleep 0.05
		done
		say "Redis listening on 127.0.0.1:$REDIS_PORT"
	fi
	REDIS_URL="redis://127.0.0.1:$REDIS_PORT/0"
	export REDIS_URL REDIS_PORT
}

redis_stop() {
	local dir=$1
	[ -f "$dir/redis.pid" ] || return 0
	local pid
	pid=$(cat "$dir/redis.pid")
	kill "$pid" 2>/dev/null || return 0
	for _ in $(seq 1 100); do
		kill -0 "$pid" 2>/dev/null || break
		sleep 0.05
	done
	rm -f "$dir/redis.pid"
}

# throwaway_services NAME: PostgreSQL and Redis in a new temporary directory (SERVICES_DIR),
# both stopped and the directory removed when the calling script exits, also on failure.
# Sets PG_URL and REDIS_URL (empty when Redis is unavailable).
throwaway_services() {
	SERVICES_DIR=$(mktemp -d "${TMPDIR:-/tmp}/maas-$1.XXXXXX")
	chmod 755 "$SERVICES_DIR"
	trap 'pg_stop "$SERVICES_DIR/pg"; redis_stop "$SERVICES_DIR/redis"; rm -rf "$SERVICES_DIR"' EXIT
	pg_start "$SERVICES_DIR/pg"
	redis_start "$SERVICES_DIR/redis" || true
}
