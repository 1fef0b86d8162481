#!/usr/bin/env bash
# `make demo TARGET=ldap`: the main job against a real OpenLDAP server. A
# throwaway cluster with the extension, a throwaway slapd (its own folder and
# loopback port, never the system service: mdb, ppolicy, memberof, refint)
# and the worker provisioning a table of people into ou=People and ou=Eng:
# the plan, the first sync, a rename, a move between OUs, an attribute
# removed, a new person, a delete, and the directory (ldapsearch) next to
# the table, entryUUIDs kept. Everything it starts is stopped on exit.
set -euo pipefail
SCRIPT_NAME=demo
source "$(dirname "$0")/lib.sh"
cd "$ROOT"

"$ROOT/scripts/setup.sh" >/dev/null
log "building the worker and the extension"
cargo build --quiet -p syncbridge-worker --bin syncbridge-worker
install_ext

dir=$(mktemp -d "${TMPDIR:-/tmp}/syncbridge-demo-XXXXXX")
chmod 0755 "$dir"
SLAPD_PID=
cleanup() {
  if [ -n "$SLAPD_PID" ]; then kill "$SLAPD_PID" 2>/dev/null || true; wait "$SLAPD_PID" 2>/dev/null || true; fi
  pg_stop "$dir/pg"; rm -rf "$dir"
}
trap cleanup EXIT

base="dc=example,dc=com"
sb_pw="demo-ldap-bind-secret"
ldap_port=$(free_port)
mkdir -p "$dir/ldap/db"
cat >"$dir/ldap/slapd.conf" <<CONF
include /etc/ldap/schema/core.schema
include /etc/ldap/schema/cosine.schema
include /etc/ldap/schema/nis.schema
include /etc/ldap/schema/inetorgperson.schema
pidfile $dir/ldap/slapd.pid
modulepath /usr/lib/ldap
moduleload back_mdb
moduleload ppolicy
moduleload memberof
moduleload refint
database mdb
maxsize 104857600
suffix "$base"
rootdn "cn=admin,$base"
rootpw admin-secret
directory $dir/ldap/db
index objectClass eq
index uid eq
index entryUUID eq
index member eq
index modifyTimestamp eq
access to attrs=userPassword by dn.exact="cn=syncbridge,$base" manage by self write by anonymous auth by * none
access to * by dn.exact="cn=syncbridge,$base" manage by * read
overlay memberof
overlay refint
refint_attributes member
refint_nothing "cn=syncbridge-placeholder,$base"
overlay ppolicy
ppolicy_default "cn=default,ou=Policies,$base"
ppolicy_use_lockout
CONF
run_as=()
if [ "$(id -u)" -eq 0 ]; then
  user=openldap; id openldap >/dev/null 2>&1 || user=nobody
  group=$(id -gn "$user")
  chown -R "$user:$group" "$dir/ldap"
  run_as=(-u "$user" -g "$group")
fi
log "starting a throwaway slapd on 127.0.0.1:$ldap_port"
/usr/sbin/slapd -h "ldap://127.0.0.1:$ldap_port/" -f "$dir/ldap/slapd.conf" "${run_as[@]}" -d 0 >"$dir/ldap/slapd.log" 2>&1 &
SLAPD_PID=$!
url="ldap://127.0.0.1:$ldap_port"
for _ in $(seq 100); do
  ldapsearch -x -H "$url" -b "" -s base >/dev/null 2>&1 && break
  sleep 0.1
done
ldapadd -x -H "$url" -D "cn=admin,$base" -w admin-secret >/dev/null <<LDIF
dn: $base
objectClass: dcObject
objectClass: organization
o: Example
dc: example

dn: ou=People,$base
objectClass: organizationalUnit
ou: People

dn: ou=Eng,$base
objectClass: organizationalUnit
ou: Eng

dn: ou=Policies,$base
objectClass: organizationalUnit
ou: Policies

dn: cn=default,ou=Policies,$base
objectClass: device
objectClass: pwdPolicy
cn: default
pwdAttribute: userPassword
pwdLockout: TRUE

dn: cn=syncbridge,$base
objectClass: applicationProcess
objectClass: simpleSecurityObject
cn: syncbridge
userPassword: $sb_pw
LDIF

demo_cluster "$dir"
# The bind password reaches the worker through its environment only.
export SYNCBRIDGE_SECRET_LDAP=$sb_pw

directory() {
  echo; echo "== the directory (ldapsearch under $base: what a person sees)"
  ldapsearch -LLL -o ldif-wrap=no -x -H "$url" -D "cn=admin,$base" -w admin-secret -b "$base" \
    '(objectClass=inetOrgPerson)' uid cn sn mail entryUUID |
    # LDIF writes non-ASCII values in base64 (attr:: …): shown decoded.
    python3 -c 'import base64, sys
for line in sys.stdin:
    k, sep, v = line.rstrip("\n").partition(":: ")
    print("    " + (k + ": " + base64.b64decode(v).decode() if sep else line.rstrip("\n")))'
}

demo_show "a table of people; engineers go to ou=Eng, the others to ou=People" <<'SQL'
CREATE EXTENSION syncbridge;
CREATE TABLE people (id int PRIMARY KEY, login text NOT NULL, given text, family text NOT NULL, email text, dept text);
INSERT INTO people VALUES
  (1, 'ada', 'Ada', 'Lovelace', 'ada@example.com', 'eng'),
  (2, 'grace', 'Grace', 'Hopper', 'grace@example.com', 'ops'),
  (3, 'smith, j', 'J', 'Smith', NULL, 'ops'),
  (4, 'émilie', 'Émilie', 'du Châtelet', 'emilie@example.com', 'eng');
SELECT * FROM people ORDER BY id;
SQL

demo_show "an ldap target (the bind password by reference), a DN template per OU" <<SQL
\set ECHO queries
\o /dev/null
SELECT sync.create_target('dir', kind => 'ldap',
  config => '{"url": "$url", "base_dn": "$base", "bind_dn": "cn=syncbridge,$base"}',
  secret => 'env:SYNCBRIDGE_SECRET_LDAP');
SELECT sync.define('people', source => 'people', target => 'dir', list => 'uid={uid},ou=People');
SELECT sync.shard('people', \$\$dept = 'eng'\$\$, 'uid={uid},ou=Eng');
SELECT sync.map('people', 'login', 'uid');
SELECT sync.map('people', 'given', 'givenName');
SELECT sync.map('people', 'family', 'sn');
SELECT sync.map('people', NULL, 'cn', transform => \$\$coalesce(given || ' ', '') || family\$\$);
SELECT sync.map('people', 'email', 'mail');
SELECT sync.map('people', NULL, 'objectClass', transform => \$\$ARRAY['inetOrgPerson']\$\$);
SELECT sync.enable('people');
SQL

demo_show "SELECT * FROM sync.plan_summary();  -- priced in operations" <<'SQL'
SELECT definition, adds, requests, cost, cost_unit, budget_per_min, est_drain FROM sync.plan_summary();
SQL

echo; echo "== syncbridge-worker run --once  (slot, backfill, entries added)"
demo_worker run --once
directory
"${psql[@]}" -q -At -c "SELECT sync_key || ' ' || target_id FROM sync.ledger ORDER BY sync_key" >"$dir/before"

demo_show "changes: ada is renamed, grace moves to Eng, émilie's mail is removed, a new person, J Smith leaves" <<'SQL'
UPDATE people SET login = 'ada.lovelace' WHERE id = 1;
UPDATE people SET dept = 'eng' WHERE id = 2;
UPDATE people SET email = NULL WHERE id = 4;
INSERT INTO people VALUES (5, 'alan', 'Alan', 'Turing', 'alan@example.com', 'ops');
DELETE FROM people WHERE id = 3;
SELECT definition, op, sync_key, list FROM sync.plan() ORDER BY sync_key;
SQL

echo; echo "== syncbridge-worker run --once"
demo_worker run --once
directory
"${psql[@]}" -q -At -c "SELECT sync_key || ' ' || target_id FROM sync.ledger ORDER BY sync_key" >"$dir/after"
demo_show "the table, with each row's entry (its entryUUID, from sync.ledger)" <<'SQL'
SELECT p.id, p.login, p.dept, p.email, l.target_id AS entry_uuid, l.join_type
  FROM people p LEFT JOIN sync.ledger l ON l.sync_key = p.id::text ORDER BY p.id;
SELECT definition, state, items, exported, pending, failed, error FROM sync.status;
SQL
echo
for key in 1 2 4; do
  b=$(grep "^$key " "$dir/before" | cut -d' ' -f2); a=$(grep "^$key " "$dir/after" | cut -d' ' -f2)
  if [ "$a" != "$b" ]; then log "row $key's entry changed its entryUUID ($b → $a): this is a bug"; exit 1; fi
done
log "renamed and moved entries kept their entryUUID; done, stopping slapd and the cluster"
