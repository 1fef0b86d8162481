//! A real OpenLDAP server for the `ldap` kind's tests, and its
//! [`TargetEnv`] ([`LdapTargetEnv`]).
//!
//! [`Slapd`] starts Debian's `slapd` (never the system service) with a
//! throwaway configuration in a temporary folder: a free loopback port for
//! `ldap://` (StartTLS too) and one for `ldaps://`, a CA and a server
//! certificate made for the run (rcgen), the mdb backend (`dbnosync`: a
//! test server), the ppolicy overlay with a default policy that locks
//! (`pwdLockout: TRUE`), memberof, refint (`refint_nothing` = the
//! placeholder member syncbridge puts in groups that would be empty), and
//! indexes on objectClass, uid, cn, entryUUID, member and modifyTimestamp.
//! When the tests run as root, slapd runs as `openldap` (or `nobody`), its
//! folder owned by that user. It loads the base entries: the suffix,
//! `ou=People`, `ou=Groups`, `ou=Disabled`, `ou=Policies` with the policy,
//! the account syncbridge binds as ([`SB_DN`], with `manage` rights) and
//! another writer ([`HR_DN`]) for entries syncbridge did not create. It is
//! stopped (SIGTERM, by its process id) when dropped; [`Slapd::stop`] and
//! [`Slapd::restart`] (same folder, port and data) serve the outage
//! scenarios.

pub mod proxy;

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use ldap3::{LdapConnAsync, LdapConnSettings, Mod, Scope};
use serde_json::{Map, Value};

use crate::emulator::{Fault, Stats};
use crate::target_env::{EnvOptions, TargetEnv};
use crate::TestDb;
use proxy::Proxy;

/// The suffix.
pub const BASE: &str = "dc=example,dc=com";
/// The root DN and its password (the fixture's own loading and checks).
pub const ADMIN_DN: &str = "cn=admin,dc=example,dc=com";
/// The root DN's password.
pub const ADMIN_PW: &str = "admin-secret";
/// The account syncbridge binds as.
pub const SB_DN: &str = "cn=syncbridge,dc=example,dc=com";
/// Its password (the tests' secret).
pub const SB_PW: &str = "sb-bind-secret-7";
/// Another account that writes (entries syncbridge did not create).
pub const HR_DN: &str = "cn=hr,dc=example,dc=com";
/// Its password.
pub const HR_PW: &str = "hr-secret";
/// The placeholder member of otherwise empty groups (syncbridge's default).
pub const PLACEHOLDER: &str = "cn=syncbridge-placeholder,dc=example,dc=com";
/// The environment variable the bind password travels in.
pub const SECRET_ENV: &str = "SYNCBRIDGE_SECRET_TEST_LDAP";

/// One entry as a search returned it (attribute names lower-cased).
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    /// Its DN.
    pub dn: String,
    /// Attribute (lower-case) → values.
    pub attrs: BTreeMap<String, Vec<String>>,
}

impl Entry {
    /// The first value of `attr`.
    pub fn get(&self, attr: &str) -> Option<&str> {
        self.attrs.get(&attr.to_ascii_lowercase()).and_then(|v| v.first()).map(String::as_str)
    }

    /// Every value of `attr`, sorted.
    pub fn all(&self, attr: &str) -> Vec<String> {
        let mut v = self.attrs.get(&attr.to_ascii_lowercase()).cloned().unwrap_or_default();
        v.sort();
        v
    }
}

fn running_as_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    l.local_addr().expect("local addr").port()
}

/// A CA and a server certificate for `localhost` and 127.0.0.1: (CA PEM,
/// server certificate PEM, server key PEM).
fn pki() -> (String, String, String) {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, SanType};
    let ca_key = KeyPair::generate().expect("CA key");
    let mut p = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.distinguished_name.push(DnType::CommonName, "syncbridge ldap test CA");
    let ca = p.self_signed(&ca_key).expect("CA certificate");
    let key = KeyPair::generate().expect("server key");
    let mut s = CertificateParams::new(vec!["localhost".to_owned()]).expect("server params");
    s.subject_alt_names.push(SanType::IpAddress(std::net::IpAddr::from([127, 0, 0, 1])));
    let cert = s.signed_by(&key, &ca, &ca_key).expect("server certificate");
    (ca.pem(), cert.pem(), key.serialize_pem())
}

/// A running slapd (see the module's doc).
pub struct Slapd {
    dir: PathBuf,
    /// `ldap://` (and StartTLS).
    pub port: u16,
    /// `ldaps://`.
    pub tls_port: u16,
    /// The CA that signed the server's certificate (PEM).
    pub ca_pem: String,
    child: Mutex<Option<Child>>,
    rt: tokio::runtime::Runtime,
}

impl Slapd {
    /// Starts a server with the base entries loaded.
    pub fn start() -> Self {
        Self::start_with(true)
    }

    /// Starts a server without the refint overlay (like servers that do not
    /// rewrite group members after a rename).
    pub fn start_without_refint() -> Self {
        Self::start_with(false)
    }

    fn start_with(refint: bool) -> Self {
        static N: AtomicU32 = AtomicU32::new(0);
        let dir =
            std::env::temp_dir().join(format!("sb-slapd-{}-{}", std::process::id(), N.fetch_add(1, Ordering::SeqCst)));
        if dir.exists() {
            std::fs::remove_dir_all(&dir).expect("remove an old slapd folder");
        }
        std::fs::create_dir_all(dir.join("db")).expect("slapd folder");
        let (ca_pem, cert, key) = pki();
        std::fs::write(dir.join("ca.pem"), &ca_pem).expect("ca");
        std::fs::write(dir.join("server.pem"), cert).expect("cert");
        std::fs::write(dir.join("server.key"), key).expect("key");
        let d = dir.display();
        let conf = format!(
            "include /etc/ldap/schema/core.schema
include /etc/ldap/schema/cosine.schema
include /etc/ldap/schema/nis.schema
include /etc/ldap/schema/inetorgperson.schema
pidfile {d}/slapd.pid
modulepath /usr/lib/ldap
moduleload back_mdb
moduleload ppolicy
moduleload memberof
moduleload refint
TLSCACertificateFile {d}/ca.pem
TLSCertificateFile {d}/server.pem
TLSCertificateKeyFile {d}/server.key
database mdb
maxsize 104857600
suffix \"{BASE}\"
rootdn \"{ADMIN_DN}\"
rootpw {ADMIN_PW}
directory {d}/db
dbnosync
index objectClass eq
index uid eq
index cn eq
index entryUUID eq
index member eq
index modifyTimestamp eq
access to attrs=userPassword
  by dn.exact=\"{SB_DN}\" manage
  by dn.exact=\"{HR_DN}\" write
  by self write
  by anonymous auth
  by * none
access to *
  by dn.exact=\"{SB_DN}\" manage
  by dn.exact=\"{HR_DN}\" write
  by * read
overlay memberof
{{refint}}overlay ppolicy
ppolicy_default \"cn=default,ou=Policies,{BASE}\"
ppolicy_use_lockout
"
        );
        let conf = conf.replace(
            "{refint}",
            &if refint {
                format!("overlay refint\nrefint_attributes member\nrefint_nothing \"{PLACEHOLDER}\"\n")
            } else {
                String::new()
            },
        );
        std::fs::write(dir.join("slapd.conf"), conf).expect("slapd.conf");
        if running_as_root() {
            let user = if Command::new("id").arg("openldap").output().is_ok_and(|o| o.status.success()) {
                "openldap:openldap"
            } else {
                "nobody:nogroup"
            };
            let ok = Command::new("chown").args(["-R", user]).arg(&dir).status().expect("chown");
            assert!(ok.success(), "chown {user} {}", dir.display());
        }
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().expect("runtime");
        let s = Self { dir, port: free_port(), tls_port: free_port(), ca_pem, child: Mutex::new(None), rt };
        s.spawn();
        s.load_base();
        s
    }

    fn spawn(&self) {
        let mut c = Command::new("/usr/sbin/slapd");
        c.arg("-h")
            .arg(format!("ldap://127.0.0.1:{}/ ldaps://127.0.0.1:{}/", self.port, self.tls_port))
            .arg("-f")
            .arg(self.dir.join("slapd.conf"))
            // -d keeps it in the foreground (no fork): it is stopped by its id.
            .args(["-d", "0"]);
        if running_as_root() {
            let (u, g) = if Command::new("id").arg("openldap").output().is_ok_and(|o| o.status.success()) {
                ("openldap", "openldap")
            } else {
                ("nobody", "nogroup")
            };
            c.args(["-u", u, "-g", g]);
        }
        let log = std::fs::File::create(self.dir.join("slapd.log")).expect("slapd log");
        let child = c
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start /usr/sbin/slapd (scripts/setup.sh installs slapd and ldap-utils)");
        *self.child.lock().unwrap_or_else(|p| p.into_inner()) = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if self.rt.block_on(self.try_search("", Scope::Base, "(objectClass=*)", &["1.1"])).is_ok() {
                return;
            }
            if let Some(status) =
                self.child.lock().unwrap_or_else(|p| p.into_inner()).as_mut().and_then(|c| c.try_wait().ok().flatten())
            {
                let log = std::fs::read_to_string(self.dir.join("slapd.log")).unwrap_or_default();
                panic!("slapd exited ({status}):\n{log}");
            }
            assert!(Instant::now() < deadline, "slapd did not answer within 20 s");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stops the server (SIGTERM, then waits for it to exit).
    pub fn stop(&self) {
        let Some(mut child) = self.child.lock().unwrap_or_else(|p| p.into_inner()).take() else { return };
        // SAFETY: kill(2) with the id of our own child process.
        unsafe {
            libc::kill(child.id() as libc::pid_t, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        while child.try_wait().ok().flatten().is_none() {
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Starts it again (same folder, ports and data).
    pub fn restart(&self) {
        self.stop();
        self.spawn();
    }

    /// `ldap://127.0.0.1:port`.
    pub fn url(&self) -> String {
        format!("ldap://127.0.0.1:{}", self.port)
    }

    /// `ldaps://127.0.0.1:tls_port`.
    pub fn ldaps_url(&self) -> String {
        format!("ldaps://127.0.0.1:{}", self.tls_port)
    }

    async fn connect(&self, dn: &str, pw: &str) -> Result<ldap3::Ldap, String> {
        let settings = LdapConnSettings::new().set_conn_timeout(Duration::from_secs(5));
        let (conn, mut ldap) = LdapConnAsync::with_settings(settings, &self.url()).await.map_err(|e| e.to_string())?;
        ldap3::drive!(conn);
        let r = ldap.simple_bind(dn, pw).await.map_err(|e| e.to_string())?;
        if r.rc != 0 {
            return Err(format!("bind {dn}: {}", r.rc));
        }
        Ok(ldap)
    }

    async fn try_search(&self, base: &str, scope: Scope, filter: &str, attrs: &[&str]) -> Result<Vec<Entry>, String> {
        let mut l = self.connect(ADMIN_DN, ADMIN_PW).await?;
        let res = l.search(base, scope, filter, attrs.to_vec()).await.map_err(|e| e.to_string())?;
        let ldap3::SearchResult(entries, r) = res;
        if r.rc == 32 {
            return Ok(Vec::new());
        }
        if r.rc != 0 {
            return Err(format!("search: {} {}", r.rc, r.text));
        }
        let _ = l.unbind().await;
        Ok(entries
            .into_iter()
            .map(|e| {
                let e = ldap3::SearchEntry::construct(e);
                let attrs = e.attrs.into_iter().map(|(k, v)| (k.to_ascii_lowercase(), v)).collect();
                Entry { dn: e.dn, attrs }
            })
            .collect())
    }

    /// Entries under `base` (subtree) matching `filter`, with `attrs`
    /// (`*` and `+` for all, operational included), read as the root DN.
    pub fn search(&self, base: &str, filter: &str, attrs: &[&str]) -> Vec<Entry> {
        let mut v = self.rt.block_on(self.try_search(base, Scope::Subtree, filter, attrs)).expect("search");
        v.sort_by(|a, b| a.dn.cmp(&b.dn));
        v
    }

    /// The entry whose entryUUID is `uuid`, with every attribute.
    pub fn by_uuid(&self, uuid: &str) -> Option<Entry> {
        self.search(BASE, &format!("(entryUUID={uuid})"), &["*", "+"]).into_iter().next()
    }

    /// The entryUUID of the entry at `dn`.
    pub fn uuid_at(&self, dn: &str) -> String {
        let found =
            self.rt.block_on(self.try_search(dn, Scope::Base, "(objectClass=*)", &["entryUUID"])).expect("search");
        found.first().and_then(|e| e.get("entryUUID")).unwrap_or_else(|| panic!("no entry at {dn}")).to_owned()
    }

    /// Adds an entry as `(dn, pw)`: Err(result code, text).
    pub fn add_as(&self, who: (&str, &str), dn: &str, attrs: &[(&str, &[&str])]) -> Result<(), (u32, String)> {
        self.rt.block_on(async {
            let mut l = self.connect(who.0, who.1).await.map_err(|e| (0, e))?;
            let a: Vec<(String, HashSet<String>)> =
                attrs.iter().map(|(k, v)| ((*k).to_owned(), v.iter().map(|s| (*s).to_owned()).collect())).collect();
            let r = l.add(dn, a).await.map_err(|e| (0, e.to_string()))?;
            if r.rc == 0 {
                Ok(())
            } else {
                Err((r.rc, r.text))
            }
        })
    }

    /// Modifies an entry as the root DN: Err(result code, text).
    pub fn modify(&self, dn: &str, mods: Vec<Mod<String>>) -> Result<(), (u32, String)> {
        self.rt.block_on(async {
            let mut l = self.connect(ADMIN_DN, ADMIN_PW).await.map_err(|e| (0, e))?;
            let r = l.modify(dn, mods).await.map_err(|e| (0, e.to_string()))?;
            if r.rc == 0 {
                Ok(())
            } else {
                Err((r.rc, r.text))
            }
        })
    }

    /// The result code of a simple bind as `dn` with `pw` (0: bound, 49: refused).
    pub fn bind_rc(&self, dn: &str, pw: &str) -> u32 {
        self.rt.block_on(async {
            let (conn, mut ldap) = LdapConnAsync::new(&self.url()).await.expect("connect");
            ldap3::drive!(conn);
            ldap.simple_bind(dn, pw).await.expect("bind answered").rc
        })
    }

    /// Adds `ou=<name>` under the base unless it exists.
    pub fn ensure_ou(&self, name: &str) {
        let dn = format!("ou={name},{BASE}");
        match self.add_as((ADMIN_DN, ADMIN_PW), &dn, &[("objectClass", &["organizationalUnit"]), ("ou", &[name])]) {
            Ok(()) | Err((68, _)) => {}
            Err(e) => panic!("add {dn}: {e:?}"),
        }
    }

    fn load_base(&self) {
        let admin = (ADMIN_DN, ADMIN_PW);
        let add = |dn: &str, attrs: &[(&str, &[&str])]| {
            self.add_as(admin, dn, attrs).unwrap_or_else(|e| panic!("load {dn}: {e:?}"));
        };
        add(BASE, &[("objectClass", &["dcObject", "organization"]), ("o", &["Example"]), ("dc", &["example"])]);
        for ou in ["People", "Groups", "Disabled", "Policies"] {
            self.ensure_ou(ou);
        }
        add(
            &format!("cn=default,ou=Policies,{BASE}"),
            &[
                ("objectClass", &["device", "pwdPolicy"]),
                ("cn", &["default"]),
                ("pwdAttribute", &["userPassword"]),
                ("pwdLockout", &["TRUE"]),
            ],
        );
        for (dn, cn, pw) in [(SB_DN, "syncbridge", SB_PW), (HR_DN, "hr", HR_PW)] {
            add(
                dn,
                &[
                    ("objectClass", &["applicationProcess", "simpleSecurityObject"]),
                    ("cn", &[cn]),
                    ("userPassword", &[pw]),
                ],
            );
        }
        add(PLACEHOLDER, &[("objectClass", &["applicationProcess"]), ("cn", &["syncbridge-placeholder"])]);
    }

    /// The server's log so far (for failure messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("slapd.log")).unwrap_or_default()
    }
}

impl Drop for Slapd {
    fn drop(&mut self) {
        self.stop();
        // Best effort: a temporary folder.
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The values a row's field is written as (independent of the adapter):
/// an array column's JSON text is multi-valued, numbers and booleans their
/// text (booleans upper-case), null and empty text none.
pub fn expected_values(v: &Value) -> Vec<String> {
    let one = |x: &Value| match x {
        Value::Null => None,
        Value::String(s) if s.is_empty() => None,
        Value::String(s) => Some(s.clone()),
        Value::Bool(b) => Some(if *b { "TRUE".into() } else { "FALSE".into() }),
        other => Some(other.to_string()),
    };
    let mut out: Vec<String> = match v {
        Value::String(s) if s.starts_with('[') => match serde_json::from_str::<Vec<Value>>(s) {
            Ok(a) => a.iter().filter_map(one).collect(),
            Err(_) => vec![s.clone()],
        },
        other => one(other).into_iter().collect(),
    };
    out.sort();
    out.dedup();
    out
}

/// LDAP as a [`TargetEnv`]: a container `T` is `ou=T` under the base (made
/// by `define`), a definition's list `uid={uid},ou=T`; the key column is
/// `uid`, the first other column `cn` and `sn`, the object class
/// inetOrgPerson. Faults, latency and the write limit come from a
/// [`Proxy`] in front of slapd; an outage stops slapd and ends with a
/// restart.
pub struct LdapTargetEnv {
    /// The server.
    pub slapd: Slapd,
    /// The proxy the targets point at.
    pub proxy: Proxy,
    writes_per_min: Option<u32>,
}

impl LdapTargetEnv {
    /// Creates target `name` with `extra` configuration keys (over the defaults).
    pub fn create_target_with(&self, db: &TestDb, name: &str, extra: Value) {
        let mut config = serde_json::json!({
            "url": format!("ldap://127.0.0.1:{}", self.proxy.port), "base_dn": BASE, "bind_dn": SB_DN,
            "timeout_ms": 5000, "budget_per_min": self.writes_per_min.unwrap_or(1_000_000),
        });
        for (k, v) in extra.as_object().into_iter().flatten() {
            config[k] = v.clone();
        }
        let config = config.to_string().replace('\'', "''");
        db.psql(&format!(
            "SELECT sync.create_target('{name}', kind => 'ldap', config => '{config}', secret => 'env:{SECRET_ENV}')"
        ));
    }

    /// The entries under `ou=<container>` by uid, with every attribute.
    pub fn entries(&self, container: &str) -> BTreeMap<String, Entry> {
        let mut out = BTreeMap::new();
        for e in self.slapd.search(&format!("ou={container},{BASE}"), "(objectClass=inetOrgPerson)", &["*", "+"]) {
            let uid = e.get("uid").unwrap_or("<no uid>").to_owned();
            assert!(out.insert(uid.clone(), e).is_none(), "two entries with uid {uid} in {container}");
        }
        out
    }
}

/// What the extension says each row maps to: list → key → fields.
pub fn expected(db: &TestDb, definition: &str) -> BTreeMap<String, BTreeMap<String, Map<String, Value>>> {
    let mut out: BTreeMap<String, BTreeMap<String, Map<String, Value>>> = BTreeMap::new();
    let rows = db.psql(&format!(
        "SELECT json_build_array(sync_key, list, fields)::text FROM sync.preview('{definition}', 1000000)"
    ));
    for line in rows.lines().filter(|l| !l.is_empty()) {
        let v: Value = serde_json::from_str(line).expect("preview row");
        let key = v[0].as_str().expect("key").to_owned();
        let list = v[1].as_str().expect("list").to_owned();
        out.entry(list).or_default().insert(key, v[2].as_object().cloned().unwrap_or_default());
    }
    out
}

impl TargetEnv for LdapTargetEnv {
    const KIND: &'static str = "ldap";
    // A bind password: nothing expires.
    const EXPIRING_TOKENS: bool = false;
    // LDAP has no batch operation.
    const BATCHES: bool = false;
    // OUs exist already.
    const PROVISION_WRITES: u64 = 0;
    const CLAIM_SIZE: u64 = syncbridge_worker::target::ldap::CLAIM_SIZE as u64;

    fn start(options: EnvOptions) -> Self {
        let slapd = Slapd::start();
        let proxy = Proxy::start(slapd.port, options.writes_per_min);
        Self { slapd, proxy, writes_per_min: options.writes_per_min }
    }

    fn create_target(&self, db: &TestDb, name: &str) {
        self.create_target_with(db, name, serde_json::json!({}));
    }

    fn define(&self, db: &TestDb, definition: &str, source: &str, target: &str, container: &str) {
        self.slapd.ensure_ou(container);
        db.psql(&format!(
            "SELECT sync.define('{definition}', source => '{source}', target => '{target}', list => 'uid={{uid}},ou={container}')"
        ));
        let key = db.psql(&format!("SELECT key_columns[1] FROM sync.definitions WHERE name = '{definition}'"));
        let other = db.psql(&format!(
            "SELECT attname FROM pg_attribute WHERE attrelid = '{source}'::regclass AND attnum > 0 AND NOT attisdropped
                AND attname <> '{key}' ORDER BY attnum LIMIT 1"
        ));
        db.psql(&format!("SELECT sync.map('{definition}', '{key}', 'uid')"));
        let name = if other.is_empty() { key.as_str() } else { other.as_str() };
        db.psql(&format!("SELECT sync.map('{definition}', '{name}', 'cn')"));
        db.psql(&format!("SELECT sync.map('{definition}', '{name}', 'sn')"));
        db.psql(&format!(
            "SELECT sync.map('{definition}', NULL, 'objectClass', transform => $$ARRAY['inetOrgPerson']$$)"
        ));
    }

    fn add_secret<'a>(&self, cmd: &'a mut Command) -> &'a mut Command {
        cmd.env(SECRET_ENV, SB_PW)
    }

    fn items(&self, container: &str) -> BTreeMap<String, Map<String, Value>> {
        self.entries(container)
            .into_iter()
            .map(|(k, e)| {
                let m: Map<String, Value> = e.attrs.iter().map(|(a, v)| (a.clone(), serde_json::json!(v))).collect();
                (k, m)
            })
            .collect()
    }

    fn count(&self, container: &str) -> usize {
        self.slapd.search(&format!("ou={container},{BASE}"), "(objectClass=inetOrgPerson)", &["1.1"]).len()
    }

    fn assert_target_equals_source(&self, db: &TestDb, definition: &str, containers: &[&str]) {
        let want = expected(db, definition);
        // The ledger says which entry (entryUUID) is which row.
        let ledger = db.psql(&format!(
            "SELECT string_agg(l.target_id || ' ' || l.sync_key, E'\\n') FROM sync.ledger l
               JOIN sync.definitions d ON d.id = l.definition_id WHERE d.name = '{definition}' AND l.target_id IS NOT NULL"
        ));
        let key_of: BTreeMap<String, String> = ledger
            .lines()
            .filter_map(|l| l.split_once(' '))
            .map(|(u, k)| (u.to_ascii_lowercase(), k.to_owned()))
            .collect();
        for c in containers {
            let w = want.get(&format!("uid={{uid}},ou={c}")).cloned().unwrap_or_default();
            let mut have = BTreeMap::new();
            for e in self.entries(c).into_values() {
                let uuid = e.get("entryUUID").unwrap_or("").to_ascii_lowercase();
                let key = key_of.get(&uuid).cloned().unwrap_or_else(|| format!("<not in the ledger: {}>", e.dn));
                assert!(have.insert(key.clone(), e).is_none(), "two entries for row {key} in ou={c}");
            }
            assert_eq!(have.keys().collect::<Vec<_>>(), w.keys().collect::<Vec<_>>(), "the entries in ou={c}");
            for (key, fields) in &w {
                let e = &have[key];
                for (f, v) in fields {
                    let want = expected_values(v);
                    let got = e.all(f);
                    if f.eq_ignore_ascii_case("objectClass") {
                        assert!(want.iter().all(|c| got.contains(c)), "{}: objectClass {got:?} lacks {want:?}", e.dn);
                    } else {
                        assert_eq!(got, want, "{}: attribute {f}", e.dn);
                    }
                }
            }
        }
    }

    fn inject(&self, fault: Fault, count: u32) {
        self.proxy.inject(fault, count);
    }

    fn set_latency(&self, ms: u64) {
        self.proxy.set_latency(ms);
    }

    /// The server itself stops (and restarts when the outage ends).
    fn set_down(&self, down: bool) {
        if down {
            self.slapd.stop();
        } else {
            self.slapd.restart();
        }
    }

    fn expire_tokens(&self) {}

    fn stats(&self) -> Stats {
        self.proxy.stats()
    }
}
