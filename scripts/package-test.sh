#!/usr/bin/env bash
# `make package-test`: checks the Debian package without installing it.
#   scripts/package-test.sh [DEB]            default: target/package/syncbridge_<version>_<arch>.deb
#   scripts/package-test.sh --profile dev    the one of `scripts/package.sh --profile dev`
#                                            (target/package-dev/; what `make test` checks)
# 1. its contents, modes and owners, control fields and conffiles;
# 2. the systemd units: their sandbox, `systemd-analyze verify` and
#    `security` (when systemd-analyze is there), the environment file's
#    variables against what the worker reads;
# 3. the postinst, run against the extracted tree (DPKG_ROOT) with the user
#    commands recorded: the user, the modes, nothing started or enabled;
# 4. the packaged files at work: the system's PostgreSQL 15 copied into a
#    fresh tree and the package extracted over it (the server finds its lib
#    and share folders next to its binary), a throwaway cluster of it,
#    CREATE EXTENSION (and ALTER EXTENSION UPDATE from each released
#    version), and the packaged worker, started as the unit starts it, syncing
#    the demo's table into the Graph emulator; the lists must equal the table.
# Nothing is written outside a temporary folder, which is removed.
set -euo pipefail
SCRIPT_NAME=package-test
source "$(dirname "$0")/lib.sh"
cd "$ROOT"
PG_MAJOR=15 PG_BIN=$(pg_bin_for 15)   # the package's server (see scripts/package.sh)
PG_CONFIG=$PG_BIN/pg_config

start=$(date +%s)
target=${CARGO_TARGET_DIR:-$ROOT/target}
version=$(cargo metadata --no-deps --format-version 1 |
  python3 -c 'import json,sys; print(next(p["version"] for p in json.load(sys.stdin)["packages"] if p["name"] == "syncbridge"))')
arch=$(dpkg --print-architecture)
pkgdir=$target/package
if [ "${1:-}" = --profile ]; then
  case ${2:-} in release) ;; dev) pkgdir=$target/package-dev ;; *) echo "--profile: release or dev" >&2; exit 2 ;; esac
  shift 2
fi
deb=${1:-$pkgdir/syncbridge_${version}_${arch}.deb}
[ -f "$deb" ] || { log "no package $deb: make package"; exit 1; }
log "checking $deb"

fail() { log "FAIL: $*"; exit 1; }
sys_pkglibdir=$("$PG_CONFIG" --pkglibdir)
sys_extdir=$("$PG_CONFIG" --sharedir)/extension

dir=$(mktemp -d "${TMPDIR:-/tmp}/syncbridge-pkgtest-XXXXXX")
chmod 0755 "$dir"
tree=$dir/tree
EMU_PID=
cleanup() {
  graph_emulator_stop
  pg_stop "$dir/pg"
  rm -rf "$dir"
}
trap cleanup EXIT

# --- 1. contents ---------------------------------------------------------------
log "1. contents, control, conffiles"
dpkg-deb --contents "$deb" | awk '{ sub("^\\./", "/", $6); print $1, $2, $6 }' > "$dir/contents"
entry() { awk -v p="$1" '$3 == p { print $1, $2 }' "$dir/contents"; }
expect_entry() { # PATH MODE: present, with this mode, root/root
  local got; got=$(entry "$1")
  [ "$got" = "$2 root/root" ] || fail "$1: expected '$2 root/root', the package has '${got:-nothing}'"
}
expect_entry /usr/bin/syncbridge-worker -rwxr-xr-x
expect_entry "$sys_pkglibdir/syncbridge.so" -rw-r--r--
expect_entry "$sys_extdir/syncbridge.control" -rw-r--r--
expect_entry "$sys_extdir/syncbridge--$version.sql" -rw-r--r--
for f in sql/upgrade/syncbridge--*.sql; do
  expect_entry "$sys_extdir/$(basename "$f")" -rw-r--r--
done
expect_entry /lib/systemd/system/syncbridge-worker.service -rw-r--r--
expect_entry /lib/systemd/system/syncbridge-worker@.service -rw-r--r--
expect_entry /etc/syncbridge/worker.env -rw-r-----
expect_entry /etc/syncbridge/secrets/ drwxr-x---
for f in copyright README.Debian changelog.gz; do expect_entry "/usr/share/doc/syncbridge/$f" -rw-r--r--; done
# Nothing else: every file of the package is one of the above.
n_upgrade=$(find sql/upgrade -maxdepth 1 -name 'syncbridge--*.sql' | wc -l)
n_files=$(grep -c '^-' "$dir/contents")
[ "$n_files" -eq $((10 + n_upgrade)) ] || { cat "$dir/contents" >&2; fail "$n_files files in the package, expected $((10 + n_upgrade))"; }
if awk '$2 != "root/root"' "$dir/contents" | grep -q .; then fail "entries not owned by root/root"; fi

field() { dpkg-deb --field "$deb" "$1"; }
[ "$(field Package)" = syncbridge ] || fail "Package: $(field Package)"
[ "$(field Version)" = "$version" ] || fail "Version: $(field Version), the workspace is $version"
[ "$(field Architecture)" = "$arch" ] || fail "Architecture: $(field Architecture)"
depends=$(field Depends)
for d in "postgresql-$PG_MAJOR" adduser 'libc6 (>= '; do
  case $depends in *"$d"*) ;; *) fail "Depends lacks $d: $depends" ;; esac
done
dpkg-deb --ctrl-tarfile "$deb" | tar -x -C "$dir" ./conffiles ./postinst ./prerm ./postrm
[ "$(cat "$dir/conffiles")" = /etc/syncbridge/worker.env ] || fail "conffiles: $(cat "$dir/conffiles")"
for s in postinst prerm postrm; do
  sh -n "$dir/$s" || fail "$s does not parse"
  if grep -q '@[A-Z_]*@' "$dir/$s"; then fail "$s keeps a placeholder: $(grep '@[A-Z_]*@' "$dir/$s")"; fi
done

mkdir -p "$tree"
dpkg-deb -x "$deb" "$tree"
"$tree/usr/bin/syncbridge-worker" --version | grep -qx "syncbridge-worker $version" ||
  fail "the packaged worker says $("$tree/usr/bin/syncbridge-worker" --version)"
default_version=$(sed -n "s/^default_version *= *'\(.*\)'/\1/p" "$tree$sys_extdir/syncbridge.control")
[ "$default_version" = "$version" ] || fail "the extension's default_version is '$default_version'"
for f in "$tree/usr/bin/syncbridge-worker" "$tree$sys_pkglibdir/syncbridge.so"; do
  if readelf -S --wide "$f" | grep -Eq ' \.(debug_info|debug_line|symtab) '; then fail "$f is not stripped"; fi
done

# --- 2. the units and the environment file ---------------------------------------
log "2. the systemd units, the environment file"
hardening=(User=syncbridge Group=syncbridge NoNewPrivileges=yes ProtectSystem=strict StateDirectory=syncbridge
  ProtectHome=yes PrivateTmp=yes PrivateDevices=yes ProtectKernelTunables=yes ProtectKernelModules=yes
  ProtectKernelLogs=yes ProtectControlGroups=yes 'RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX'
  RestrictNamespaces=yes LockPersonality=yes MemoryDenyWriteExecute=yes SystemCallFilter=@system-service
  CapabilityBoundingSet= UMask=0077 Restart=on-failure 'ExecStart=/usr/bin/syncbridge-worker $SYNCBRIDGE_COMMAND $SYNCBRIDGE_ARGS')
for unit in syncbridge-worker.service syncbridge-worker@.service; do
  u=$tree/lib/systemd/system/$unit
  for line in "${hardening[@]}"; do grep -qxF -- "$line" "$u" || fail "$unit lacks '$line'"; done
  # Nothing else may be writable, nor anything loosened later in the file.
  if grep -Eq '^(ReadWritePaths|ReadWriteDirectories|AmbientCapabilities=.|CapabilityBoundingSet=.|NoNewPrivileges=no|ProtectSystem=(no|yes|full|false)|User=root)' "$u"; then
    fail "$unit loosens its sandbox: $(grep -E '^(ReadWrite|AmbientCapabilities=.|CapabilityBoundingSet=.|NoNewPrivileges=no|ProtectSystem=|User=root)' "$u")"
  fi
done
grep -qxF 'EnvironmentFile=/etc/syncbridge/worker.env' "$tree/lib/systemd/system/syncbridge-worker.service" ||
  fail "syncbridge-worker.service does not read /etc/syncbridge/worker.env"
grep -qxF 'EnvironmentFile=/etc/syncbridge/%i.env' "$tree/lib/systemd/system/syncbridge-worker@.service" ||
  fail "syncbridge-worker@.service does not read /etc/syncbridge/%i.env"
# The template is the unit with another environment file: same sandbox.
diff <(grep -v -e '^#' -e '^Description=' -e '^EnvironmentFile=' "$tree/lib/systemd/system/syncbridge-worker.service") \
     <(grep -v -e '^#' -e '^Description=' -e '^EnvironmentFile=' "$tree/lib/systemd/system/syncbridge-worker@.service") >&2 ||
  fail "syncbridge-worker@.service differs from syncbridge-worker.service beyond its environment file"

if command -v systemd-analyze >/dev/null; then
  # verify: the units with their paths moved into the tree (systemd-analyze
  # checks that ExecStart's program exists); any remark is a failure.
  mkdir -p "$dir/units"
  for unit in syncbridge-worker.service syncbridge-worker@.service; do
    sed -e "s|/usr/bin/|$tree/usr/bin/|" -e "s|/etc/syncbridge/|$tree/etc/syncbridge/|" \
      "$tree/lib/systemd/system/$unit" > "$dir/units/$unit"
  done
  (cd "$dir/units" && systemd-analyze verify --man=no "$dir/units/syncbridge-worker.service" \
    "$dir/units/syncbridge-worker@pkgtest.service") >"$dir/verify.out" 2>&1 || true
  if [ -s "$dir/verify.out" ]; then cat "$dir/verify.out" >&2; fail "systemd-analyze verify has remarks"; fi
  exposure=$(systemd-analyze security --offline=yes --root="$tree" --threshold=20 syncbridge-worker.service 2>&1) ||
    { echo "$exposure" >&2; fail "the unit's exposure is above 2.0 (systemd-analyze security)"; }
  log "   systemd-analyze verify: clean; $(echo "$exposure" | grep -o 'Overall exposure level.*')"
else
  log "   systemd-analyze is not installed: the units were checked line by line only"
fi

# Every variable the environment file names is one the worker or the unit reads.
helps=$("$tree/usr/bin/syncbridge-worker" run --help; "$tree/usr/bin/syncbridge-worker" export --help)
known=" PGPASSWORD SYNCBRIDGE_LOG SYNCBRIDGE_COMMAND SYNCBRIDGE_ARGS $(grep -o 'env: [A-Z_]*' <<<"$helps" | cut -c6- | sort -u | tr '\n' ' ')"
vars=$(sed -n 's/^#\{0,1\}\([A-Z][A-Z0-9_]*\)=.*/\1/p' "$tree/etc/syncbridge/worker.env" | sort -u)
[ -n "$vars" ] || fail "worker.env names no variable"
for v in $vars; do
  case $v in SYNCBRIDGE_SECRET_?*) continue ;; esac
  case $known in *" $v "*) ;; *) fail "worker.env names $v, which neither the worker nor the unit reads" ;; esac
done
for v in SYNCBRIDGE_DSN SYNCBRIDGE_SECRETS_DIR PGPASSWORD; do
  grep -q "^#\{0,1\}$v=" "$tree/etc/syncbridge/worker.env" || fail "worker.env does not explain $v"
done
grep -q 'SYNCBRIDGE_SECRET_' "$tree/etc/syncbridge/worker.env" || fail "worker.env does not explain SYNCBRIDGE_SECRET_…"

# --- 3. the postinst ----------------------------------------------------------------
log "3. the postinst against the tree (user commands recorded, not run)"
mkdir -p "$dir/stubs"
stub() { # NAME EXIT-CODE-COMMAND: records its arguments in $dir/calls
  printf '#!/bin/sh\necho "%s $*" >> "%s/calls"\n%s\n' "$1" "$dir" "$2" > "$dir/stubs/$1"; chmod 0755 "$dir/stubs/$1"
}
for cmd in addgroup adduser useradd groupadd chown systemctl deb-systemd-invoke deb-systemd-helper; do stub "$cmd" 'exit 0'; done
stub getent "[ -e '$dir/user-exists' ] && exit 0; exit 2"
stub dpkg-statoverride 'exit 1'   # no override
# (The stubs must be what it calls: no command by its full path.)
if grep -Eq '/(usr/)?s?bin/(adduser|addgroup|useradd|groupadd|chown|chmod|systemctl|deb-systemd-[a-z]*)\b' "$dir/postinst"; then
  fail "postinst calls a command by its full path; the test cannot run it without touching this machine"
fi
run_postinst() { DPKG_ROOT=$tree PATH="$dir/stubs:$PATH" sh "$dir/postinst" configure "$@" 2>"$dir/postinst.err"; }
chmod 0644 "$tree/etc/syncbridge/worker.env"; chmod 0755 "$tree/etc/syncbridge/secrets"   # as a careless copy would
: > "$dir/calls"
run_postinst ''
grep -qx 'addgroup --system --quiet syncbridge' "$dir/calls" || { cat "$dir/calls" >&2; fail "postinst did not create the group"; }
grep -x 'adduser .*' "$dir/calls" | grep -- --system | grep -- --no-create-home | grep -- '--shell /usr/sbin/nologin' |
  grep -q -- '--ingroup syncbridge' || { cat "$dir/calls" >&2; fail "postinst did not create a system user without login nor home"; }
for p in /etc/syncbridge/worker.env /etc/syncbridge/secrets; do
  grep -qx "chown root:syncbridge $tree$p" "$dir/calls" || { cat "$dir/calls" >&2; fail "postinst did not give $p to group syncbridge"; }
done
[ "$(stat -c %a "$tree/etc/syncbridge/worker.env")" = 640 ] || fail "postinst left worker.env $(stat -c %a "$tree/etc/syncbridge/worker.env")"
[ "$(stat -c %a "$tree/etc/syncbridge/secrets")" = 750 ] || fail "postinst left secrets/ $(stat -c %a "$tree/etc/syncbridge/secrets")"
if grep -E '^(systemctl|deb-systemd-invoke|deb-systemd-helper) .*(start|enable|restart)' "$dir/calls"; then
  fail "postinst starts or enables the worker"
fi
# Again, the user existing (an upgrade): nobody created twice.
touch "$dir/user-exists"; : > "$dir/calls"
run_postinst 0.1.0
if grep -Eq '^(addgroup|adduser|useradd|groupadd) ' "$dir/calls"; then cat "$dir/calls" >&2; fail "postinst creates the user again"; fi
grep -q 'the workers were stopped.*ALTER EXTENSION syncbridge UPDATE' "$dir/postinst.err" ||
  fail "an upgrade from another minor version does not say to update the extension before starting the workers"
run_postinst "$version"
grep -q 'running workers restarted' "$dir/postinst.err" || fail "an upgrade within the minor version does not restart the workers"

# --- 4. the packaged files at work ------------------------------------------------------
log "4. a PostgreSQL $PG_MAJOR of its own with the packaged extension, the packaged worker"
# The server's programs and folders, copied: PostgreSQL finds its lib and
# share folders relative to its binary. The system's syncbridge files (the
# developer build other tiers install) are left out; then the package over it.
work=$dir/pgtree; mkdir -p "$work"
tar -C / --exclude="${sys_pkglibdir#/}/bitcode" --exclude='syncbridge*' \
  -cf - "${PG_BIN#/}" "${sys_pkglibdir#/}" "$("$PG_CONFIG" --sharedir | cut -c2-)" | tar -C "$work" -xf -
dpkg-deb -x "$deb" "$work"
PG_BIN=$work$PG_BIN PG_CONFIG=$work$PG_CONFIG
[ "$("$PG_CONFIG" --pkglibdir)" = "$work$sys_pkglibdir" ] || fail "the copied pg_config says pkglibdir $("$PG_CONFIG" --pkglibdir)"
[ "$("$PG_CONFIG" --sharedir)/extension" = "$work$sys_extdir" ] || fail "the copied pg_config says sharedir $("$PG_CONFIG" --sharedir)"
chmod -R a+rX "$work/usr"

port=$(free_port)
pg_start "$dir/pg" "$port"
psql() { "$PG_BIN/psql" -X -q -At -h 127.0.0.1 -p "$port" -U postgres -v ON_ERROR_STOP=1 "$@"; }
psql -d postgres -c 'CREATE DATABASE pkg'
# The extension and its library, from the tree (the backend's own memory map says where it loaded it).
loaded=$(psql -d pkg <<'SQL'
CREATE EXTENSION syncbridge;
SELECT extversion FROM pg_extension WHERE extname = 'syncbridge';
SELECT sync.version();
SELECT string_agg(DISTINCT m[1], ' ') FROM regexp_matches(pg_read_file('/proc/self/maps'), '(/\S*syncbridge\.so)', 'g') AS m;
SQL
) || fail "CREATE EXTENSION syncbridge failed with the packaged files"
[ "$(sed -n 1p <<<"$loaded")" = "$version" ] || fail "CREATE EXTENSION made version $(sed -n 1p <<<"$loaded"), expected $version"
[ "$(sed -n 2p <<<"$loaded")" = "$version" ] || fail "sync.version() (the library) says $(sed -n 2p <<<"$loaded")"
[ "$(sed -n 3p <<<"$loaded")" = "$work$sys_pkglibdir/syncbridge.so" ] ||
  fail "the server loaded '$(sed -n 3p <<<"$loaded")', not the packaged $work$sys_pkglibdir/syncbridge.so"
# ALTER EXTENSION UPDATE from every released version the package carries.
for f in "$work$sys_extdir"/syncbridge--*.sql; do
  from=$(basename "$f" .sql); from=${from#syncbridge--}
  case $from in *--*|"$version") continue ;; esac
  psql -d postgres -c "CREATE DATABASE pkg_from_${from//./_}"
  got=$(psql -d "pkg_from_${from//./_}" -c "SET client_min_messages = error" \
    -c "CREATE EXTENSION syncbridge VERSION '$from'" -c 'ALTER EXTENSION syncbridge UPDATE' \
    -c "SELECT extversion FROM pg_extension WHERE extname = 'syncbridge'")
  [ "$got" = "$version" ] || fail "ALTER EXTENSION syncbridge UPDATE from $from ended at $got"
  log "   ALTER EXTENSION syncbridge UPDATE: $from -> $got"
done

# The demo's table and definition, the secret in the packaged secrets folder.
cargo build --quiet -p syncbridge-tests --bin graph-emulator
graph_emulator_start "$dir"
secrets=$work/etc/syncbridge/secrets
printf '%s' "$SYNCBRIDGE_SECRET_GRAPH" > "$secrets/graph"; chmod 0640 "$secrets/graph"
{ demo_employees_sql; demo_definition_sql "$EMU_URL" "file:$secrets/graph"
  echo "SELECT sync.provision('employees_sp'), sync.enable('employees_sp');"; } | psql -d pkg >/dev/null

# The worker as the unit starts it: its ExecStart, $VARIABLES split at spaces
# as systemd does, the unit's Environment= and variables of worker.env, nothing else.
read -ra exec_start <<<"$(sed -n 's/^ExecStart=//p' "$work/lib/systemd/system/syncbridge-worker.service")"
declare -A unit_env=()
while IFS='=' read -r k v; do unit_env[$k]=$v; done < <(sed -n 's/^Environment=//p' "$work/lib/systemd/system/syncbridge-worker.service")
unit_env[SYNCBRIDGE_ARGS]=--once
cmd=("$work${exec_start[0]}")
for w in "${exec_start[@]:1}"; do
  if [[ $w =~ ^\$([A-Z_]+)$ ]]; then read -ra split <<<"${unit_env[${BASH_REMATCH[1]}]:-}"; cmd+=("${split[@]}"); else cmd+=("$w"); fi
done
log "   ${cmd[*]#$work}"
if ! env -i PATH=/usr/bin:/bin SYNCBRIDGE_DSN="host=127.0.0.1 port=$port user=postgres dbname=pkg" \
     SYNCBRIDGE_SECRETS_DIR="$secrets" SYNCBRIDGE_ALLOW_LOOPBACK_TARGETS=true \
     timeout "${SYNCBRIDGE_SYNC_LIMIT_S:-300}" "${cmd[@]}" >"$dir/worker.log" 2>&1; then
  cat "$dir/worker.log" >&2; fail "the packaged worker failed"
fi

# The emulator's lists must hold exactly the table: each row in its shard's
# list by SyncKey, with its title, region and salary; nothing else.
rows=$(psql -d pkg -c "SELECT coalesce(json_agg(e ORDER BY id), '[]') FROM employees e")
python3 - "$EMU_URL" "$rows" <<'PY' || { sed 's/^/    worker: /' "$dir/worker.log" >&2; fail "the lists do not equal the table after the packaged worker's run"; }
import json, sys, urllib.request
emu, rows = sys.argv[1], json.loads(sys.argv[2])
lists = {l["display_name"]: l["items"] for l in json.load(urllib.request.urlopen(emu + "/_emulator/lists"))}
want = {"Employees EU": {}, "Employees Elsewhere": {}}
for r in rows:
    want["Employees EU" if r["region"] == "EU" else "Employees Elsewhere"][str(r["id"])] = r
problems = []
for name, by_key in want.items():
    items = {str(i["fields"].get("SyncKey")): i["fields"] for i in lists.get(name, [])}
    if sorted(items) != sorted(by_key):
        problems.append(f"{name}: keys {sorted(items)}, the table's {sorted(by_key)}")
        continue
    for k, r in by_key.items():
        f = items[k]
        salary = None if f.get("Salary") is None else float(f["Salary"])
        want_salary = None if r["salary"] is None else float(r["salary"])
        if (f.get("Title"), f.get("Region"), salary) != (r["full_name"], r["region"], want_salary):
            problems.append(f"{name} key {k}: {f} is not {r}")
if not rows or problems:
    print("\n".join(problems or ["the table is empty"]), file=sys.stderr)
    sys.exit(1)
print(f"{len(rows)} rows, {sum(len(v) for v in want.values())} items in {len(want)} lists: equal")
PY
if grep -qF "$SYNCBRIDGE_SECRET_GRAPH" "$dir/worker.log"; then fail "the worker logged the secret"; fi
log "the package passed in $(( $(date +%s) - start ))s"
