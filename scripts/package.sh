#!/usr/bin/env bash
# `make package`: the Debian package target/package/syncbridge_<version>_<arch>.deb,
# with plain dpkg-deb (no debhelper): the extension for PostgreSQL 15 (with the
# released install and upgrade scripts of sql/upgrade), the worker, its systemd
# units, /etc/syncbridge (deploy/debian, deploy/systemd).
#   scripts/package.sh                  release build, to target/package/
#   scripts/package.sh --profile dev    the same files from a debug build, to
#                                       target/package-dev/ (what `make test`
#                                       checks: built in seconds from what the
#                                       tests built; never ship it)
set -euo pipefail
SCRIPT_NAME=package
source "$(dirname "$0")/lib.sh"
cd "$ROOT"
# The package is for Debian's own server (postgresql-15), whatever PG_MAJOR
# or SYNCBRIDGE_PG_BIN the environment gives the other scripts.
PG_MAJOR=15 PG_BIN=$(pg_bin_for 15)
PG_CONFIG=$PG_BIN/pg_config

profile=release
while [ $# -gt 0 ]; do
  case $1 in
    --profile) profile=${2:?--profile needs release or dev}; shift 2 ;;
    --profile=*) profile=${1#--profile=}; shift ;;
    *) echo "usage: scripts/package.sh [--profile release|dev]" >&2; exit 2 ;;
  esac
done
target=${CARGO_TARGET_DIR:-$ROOT/target}
case $profile in
  release) out=$target/package; compress=(-Zxz) ;;
  dev) out=$target/package-dev; compress=(-Zgzip -z1) ;;
  *) echo "--profile: release or dev, not $profile" >&2; exit 2 ;;
esac
for tool in dpkg-deb dpkg-shlibdeps strip; do
  command -v "$tool" >/dev/null || { log "$tool is missing: make setup"; exit 1; }
done
start=$(date +%s)

# One version for the worker and the extension (the workspace's); Debian's
# Version is it, as is the extension's default_version.
version=$(cargo metadata --no-deps --format-version 1 | python3 -c '
import json, sys
v = {p["name"]: p["version"] for p in json.load(sys.stdin)["packages"]}
if v["syncbridge"] != v["syncbridge-worker"]:
    sys.exit("the extension is %s but the worker %s" % (v["syncbridge"], v["syncbridge-worker"]))
print(v["syncbridge"])')
arch=$(dpkg --print-architecture)
deb=$out/syncbridge_${version}_${arch}.deb
log "syncbridge $version ($arch, $profile build) -> $deb"

work=$out/build
rm -rf "$work"; mkdir -p "$work"
root=$work/root
pkglibdir=$("$PG_CONFIG" --pkglibdir)
extdir=$("$PG_CONFIG" --sharedir)/extension

log "building the worker"
cargo build --quiet --profile "$profile" -p syncbridge-worker --bin syncbridge-worker
bindir=$target/$([ "$profile" = dev ] && echo debug || echo release)

log "building the extension (cargo pgrx package --pg-config $PG_CONFIG)"
pgrx_out=$(mktemp)
if ! (cd pg_ext && cargo pgrx package --pg-config "$PG_CONFIG" --no-default-features --features "pg$PG_MAJOR" \
      --profile "$profile" --out-dir "$work/ext") >"$pgrx_out" 2>&1; then
  cat "$pgrx_out" >&2; rm -f "$pgrx_out"; exit 1
fi
rm -f "$pgrx_out"
default_version=$(sed -n "s/^default_version *= *'\(.*\)'/\1/p" "$work/ext$extdir/syncbridge.control")
if [ "$default_version" != "$version" ]; then
  log "the extension's default_version is '$default_version', the package's $version"; exit 1
fi

log "assembling the tree"
install -d -m 0755 "$root$pkglibdir" "$root$extdir" "$root/usr/bin" "$root/lib/systemd/system" \
  "$root/usr/share/doc/syncbridge" "$root/etc/syncbridge" "$root/DEBIAN"
install -m 0644 "$work/ext$pkglibdir/syncbridge.so" "$root$pkglibdir/syncbridge.so"
install -m 0644 "$work/ext$extdir/syncbridge.control" "$work/ext$extdir/syncbridge--$version.sql" "$root$extdir/"
# The released versions' install scripts and the upgrade scripts between
# them, as install_ext installs them (ALTER EXTENSION syncbridge UPDATE).
install -m 0644 "$ROOT"/sql/upgrade/syncbridge--*.sql "$root$extdir/"
install -m 0755 "$bindir/syncbridge-worker" "$root/usr/bin/syncbridge-worker"
strip --strip-unneeded --remove-section=.comment "$root/usr/bin/syncbridge-worker" "$root$pkglibdir/syncbridge.so"
install -m 0644 deploy/systemd/syncbridge-worker.service deploy/systemd/syncbridge-worker@.service \
  "$root/lib/systemd/system/"
# Secrets live here: 0640 / 0750 from the start, the group syncbridge is
# given by the postinst (the user does not exist before it runs).
install -m 0640 deploy/debian/worker.env "$root/etc/syncbridge/worker.env"
install -d -m 0750 "$root/etc/syncbridge/secrets"
install -m 0644 deploy/debian/README.Debian deploy/debian/copyright "$root/usr/share/doc/syncbridge/"
# A native package's changelog: this version, dated by the commit it is built from.
date_rfc2822=$(git log -1 --format=%cD 2>/dev/null || date -R)
printf 'syncbridge (%s) unstable; urgency=medium\n\n  * syncbridge %s: see /usr/share/doc/syncbridge/README.Debian.\n\n -- syncbridge maintainers <syncbridge@example.invalid>  %s\n' \
  "$version" "$version" "$date_rfc2822" | gzip -9n > "$root/usr/share/doc/syncbridge/changelog.gz"
chmod 0644 "$root/usr/share/doc/syncbridge/changelog.gz"

# Depends: the server the extension is built for, adduser (postinst), the
# system's CA roots (the worker checks TLS against them), and the shared
# libraries the two binaries link, with their versions (dpkg-shlibdeps; the
# extension's references to the server's own symbols are resolved by it).
mkdir -p "$work/shlibs/debian"
printf 'Source: syncbridge\n\nPackage: syncbridge\nArchitecture: any\n' > "$work/shlibs/debian/control"
shlibs_err=$work/shlibs/stderr
if ! shlibs=$(cd "$work/shlibs" && dpkg-shlibdeps -O --warnings=0 \
      -e"$root/usr/bin/syncbridge-worker" -e"$root$pkglibdir/syncbridge.so" 2>"$shlibs_err"); then
  cat "$shlibs_err" >&2; exit 1
fi
shlibs=${shlibs#shlibs:Depends=}
[ -n "$shlibs" ] || { log "dpkg-shlibdeps found no library at all"; exit 1; }
depends="postgresql-$PG_MAJOR, adduser, ca-certificates, $shlibs"

installed_size=$(du -sk --apparent-size --exclude=DEBIAN "$root" | cut -f1)
sed -e "s/@VERSION@/$version/" -e "s/@ARCH@/$arch/" -e "s/@INSTALLED_SIZE@/$installed_size/" \
    -e "s/@DEPENDS@/$depends/" -e "s/@PG_MAJOR@/$PG_MAJOR/" deploy/debian/control.in > "$root/DEBIAN/control"
install -m 0644 deploy/debian/conffiles "$root/DEBIAN/conffiles"
for s in postinst prerm postrm; do   # the scripts compare versions with their own
  sed "s/@VERSION@/$version/g" "deploy/debian/$s" > "$root/DEBIAN/$s"; chmod 0755 "$root/DEBIAN/$s"
done
(cd "$root" && find . -path ./DEBIAN -prune -o -type f -printf '%P\0' | sort -z | xargs -0 md5sum) > "$root/DEBIAN/md5sums"
chmod 0644 "$root/DEBIAN/md5sums"

rm -f "$deb"
SOURCE_DATE_EPOCH=$(git log -1 --format=%ct 2>/dev/null || date +%s) \
  dpkg-deb --root-owner-group "${compress[@]}" --build "$root" "$deb" >/dev/null
rm -rf "$work"
log "built $deb ($(du -h "$deb" | cut -f1), $installed_size KiB installed) in $(( $(date +%s) - start ))s"
log "Depends: $depends"
