#!/usr/bin/env bash
# Idempotent set-up of everything syncbridge needs on a Debian 12 machine.
# Re-running it on a ready machine takes seconds and changes nothing.
set -euo pipefail

PG_MAJOR=${PG_MAJOR:-15}
PGRX_VERSION=0.18.1
PG_CONFIG=/usr/lib/postgresql/$PG_MAJOR/bin/pg_config

log() { printf '[setup] %s\n' "$*"; }

sudo_if_needed() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

# 1. Debian packages
pkgs=(postgresql-$PG_MAJOR postgresql-server-dev-$PG_MAJOR postgresql-contrib libclang-dev clang sudo pkg-config libssl-dev make)
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
  sudo_if_needed apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
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

# 3. pgrx init against the system pg_config
if [ -f "$HOME/.pgrx/config.toml" ] && grep -q "pg$PG_MAJOR" "$HOME/.pgrx/config.toml"; then
  log "pgrx initialised for pg$PG_MAJOR"
else
  log "cargo pgrx init --pg$PG_MAJOR $PG_CONFIG"
  cargo pgrx init --pg$PG_MAJOR "$PG_CONFIG"
fi
log "ready"
