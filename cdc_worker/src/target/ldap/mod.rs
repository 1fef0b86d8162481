//! LDAP directories (OpenLDAP, 389-DS, Active Directory): rows become
//! entries, provisioned and kept by their `entryUUID`.
//!
//! - A definition's list (each shard's list) is a DN template relative to
//!   the target's `base_dn` ([`dn::Template`]): `uid={uid},ou=People`. The
//!   naming value is escaped per RFC 4514; the rest is the container (an OU
//!   that exists already).
//! - Fields are attributes: a field mapped as `objectClass` gives the object
//!   classes; arrays (a column's JSON text) are multi-valued attributes;
//!   NULL or empty values are left out of an add and delete the attribute
//!   on an update. References (`{"@ref"}`, `{"@refs"}`) become the DNs of the
//!   entries their `entryUUID`s name (groups' `member`); a `member` or
//!   `uniqueMember` left empty gets the configured placeholder.
//! - An add reads the new entry's `entryUUID` (the item's id) and `entryCSN`
//!   (its eTag) back with the Post-Read control (RFC 4527). An entry found
//!   at the DN (68 alreadyExists, or an add that may have run before) is
//!   adopted: `provisioned` when our bind DN created it, else `joined`.
//! - Every later operation finds the entry by its `entryUUID` first, so a
//!   rename or a move (an entry whose naming value or container changed)
//!   is a modify-DN, never a delete and an add; group `member` values still
//!   naming the old DN are rewritten (a no-op where refint did it).
//! - Disable (before a delete after the grace period): a lock per
//!   `disable_mechanism` and a move to `disabled_container`; an update
//!   marked `disabled` undoes both.
//! - One connection, kept open and made again after a drop; operations are
//!   paced by `budget_per_min` (one unit each, binds and searches
//!   included). Result codes map to error classes in [`classify`].
//! - Two-way: entries changed since the last read come back by
//!   `modifyTimestamp` ([`pull`]).

pub mod dn;
pub mod pull;

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ldap3::controls::{PostRead, PostReadResp};
use ldap3::{dn_escape, ldap_escape, Ldap, LdapConnAsync, LdapConnSettings, LdapError, LdapResult, Mod, Scope};
use serde_json::Value;

use super::http::{stop_signalled, Budget, Failure};
use super::registry::{Capabilities, Containers, DeleteMode, Moves, Pull};
use super::{
    ApplyContext, BoxFuture, ErrorClass, Export, Health, Op, OpResult, PullError, PullPage, PullRequest, Redactor,
    Target, TargetPolicy, TargetSetupError,
};
use crate::metrics;

/// Exports claimed at a time (carried out one after another on the
/// connection: LDAP has no batch operation).
pub const CLAIM_SIZE: usize = 50;
/// Operations a minute when the configuration sets none.
pub const DEFAULT_BUDGET_PER_MIN: u32 = 6000;
/// Per operation, when the configuration sets no `timeout_ms`.
pub const DEFAULT_TIMEOUT_MS: u64 = 30_000;
/// The longest `timeout_ms`.
const MAX_TIMEOUT_MS: u64 = 300_000;
/// How long a connection (TCP, TLS, StartTLS) may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// The DN, under the base, of the member an otherwise empty group gets.
pub const DEFAULT_PLACEHOLDER_RDN: &str = "cn=syncbridge-placeholder";
/// What OpenLDAP's ppolicy takes for "locked by an administrator".
pub const PPOLICY_LOCKED: &str = "000001010000Z";
/// Active Directory's ACCOUNTDISABLE bit of `userAccountControl`.
pub const AD_ACCOUNTDISABLE: u64 = 0x2;
/// entryUUIDs per search when references are resolved.
const REF_CHUNK: usize = 50;

/// What LDAP directories can do.
pub const LDAP_CAPABILITIES: Capabilities = Capabilities {
    containers: Containers::Existing,
    delete_mode: DeleteMode::Remove,
    moves: Moves::Native,
    key_lookup: true,
    // Entries by modifyTimestamp, with an overlap (see [`pull`]).
    pull: Pull::UpdatedSince,
    disable: true,
};

/// How an account is disabled (`disable_mechanism`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DisableMechanism {
    /// OpenLDAP's ppolicy: `pwdAccountLockedTime: 000001010000Z` (needs a
    /// policy with `pwdLockout: TRUE`).
    Ppolicy,
    /// Active Directory: the ACCOUNTDISABLE bit (0x2) of `userAccountControl`.
    Ad,
    /// 389-DS / Red Hat DS: `nsAccountLock: TRUE`.
    Ds389,
}

impl DisableMechanism {
    /// From the configuration's spelling.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "ppolicy" => Some(Self::Ppolicy),
            "ad" => Some(Self::Ad),
            "389" => Some(Self::Ds389),
            _ => None,
        }
    }

    /// The attribute it sets.
    pub fn attribute(self) -> &'static str {
        match self {
            Self::Ppolicy => "pwdAccountLockedTime",
            Self::Ad => "userAccountControl",
            Self::Ds389 => "nsAccountLock",
        }
    }
}

/// A target's checked configuration.
#[derive(Debug, Clone)]
pub struct LdapSettings {
    /// The target's name.
    pub name: String,
    /// `ldap://host:port` or `ldaps://host:port`.
    pub url: String,
    /// Every entry lives under it.
    pub base_dn: String,
    /// The DN to bind as (None: anonymous); the password is the secret.
    pub bind_dn: Option<String>,
    /// StartTLS on an `ldap://` connection.
    pub starttls: bool,
    /// A CA to trust (PEM), instead of the system's.
    pub ca_pem: Option<String>,
    /// How accounts are disabled.
    pub disable: DisableMechanism,
    /// Where disabled entries are moved (a DN relative to the base).
    pub disabled_container: Option<String>,
    /// The member of a group that would otherwise be empty (a full DN).
    pub placeholder_member: String,
    /// Operations a minute.
    pub budget: u32,
    /// Per operation.
    pub timeout_ms: u64,
}

fn cfg_str<'a>(config: &'a Value, key: &str) -> Option<&'a str> {
    config.get(key).and_then(Value::as_str).map(str::trim).filter(|s| !s.is_empty())
}

impl LdapSettings {
    /// Checks a target's configuration (before any secret is read).
    pub fn from_config(name: &str, config: &Value, policy: &TargetPolicy) -> Result<Self, TargetSetupError> {
        let bad = |message: String| TargetSetupError::Config { target: name.to_owned(), message };
        let url = cfg_str(config, "url").ok_or_else(|| bad("config lacks url".into()))?;
        let base_dn = cfg_str(config, "base_dn").ok_or_else(|| bad("config lacks base_dn".into()))?.to_owned();
        let starttls = config.get("starttls").and_then(Value::as_bool).unwrap_or(false);
        let url = policy.check_ldap_url("url", url, starttls).map_err(bad)?.to_string();
        let url = url.trim_end_matches('/').to_owned();
        let disable = match cfg_str(config, "disable_mechanism") {
            None => DisableMechanism::Ppolicy,
            Some(s) => DisableMechanism::parse(s)
                .ok_or_else(|| bad(format!("disable_mechanism {s:?} is none of ppolicy, ad, 389")))?,
        };
        let ca_pem = cfg_str(config, "ca_pem").map(str::to_owned);
        if let Some(pem) = &ca_pem {
            roots_of(pem).map_err(bad)?;
        }
        let placeholder_member = cfg_str(config, "placeholder_member")
            .map_or_else(|| dn::under(DEFAULT_PLACEHOLDER_RDN, &base_dn), str::to_owned);
        let budget = config
            .get("budget_per_min")
            .and_then(Value::as_f64)
            .filter(|b| b.is_finite())
            .map(|b| b.clamp(1.0, f64::from(u32::MAX)) as u32)
            .unwrap_or(DEFAULT_BUDGET_PER_MIN);
        let timeout_ms =
            config.get("timeout_ms").and_then(Value::as_u64).unwrap_or(DEFAULT_TIMEOUT_MS).clamp(1, MAX_TIMEOUT_MS);
        Ok(Self {
            name: name.to_owned(),
            url,
            bind_dn: cfg_str(config, "bind_dn").map(str::to_owned),
            starttls,
            ca_pem,
            disable,
            disabled_container: cfg_str(config, "disabled_container").map(|c| {
                // Relative to the base; `{base}` (or the base itself) at the end is dropped.
                let c = c.strip_suffix(",{base}").unwrap_or(c);
                let suffix = format!(",{base_dn}");
                c.strip_suffix(&suffix).unwrap_or(c).to_owned()
            }),
            placeholder_member,
            base_dn,
            budget,
            timeout_ms,
        })
    }
}

/// The certificates of a PEM text, as a root store.
fn roots_of(pem: &str) -> Result<rustls::RootCertStore, String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::CertificateDer;
    let mut store = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(pem.as_bytes()) {
        let cert = cert.map_err(|e| format!("ca_pem cannot be read: {e}"))?;
        store.add(cert).map_err(|e| format!("ca_pem holds a certificate rustls refuses: {e}"))?;
    }
    if store.is_empty() {
        return Err("ca_pem holds no PEM certificate".into());
    }
    Ok(store)
}

/// The rustls configuration: `ca_pem`'s CA, or the system's roots; the
/// server's name is always checked.
fn tls_config(ca_pem: Option<&str>) -> Result<Arc<rustls::ClientConfig>, String> {
    let roots = match ca_pem {
        Some(pem) => roots_of(pem)?,
        None => {
            let mut store = rustls::RootCertStore::empty();
            for cert in rustls_native_certs::load_native_certs().certs {
                // A malformed system certificate is skipped, as browsers do.
                let _ = store.add(cert);
            }
            store
        }
    };
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// A result code's name (RFC 4511 appendix A).
pub fn rc_name(rc: u32) -> &'static str {
    match rc {
        0 => "success",
        1 => "operationsError",
        2 => "protocolError",
        3 => "timeLimitExceeded",
        4 => "sizeLimitExceeded",
        7 => "authMethodNotSupported",
        8 => "strongerAuthRequired",
        11 => "adminLimitExceeded",
        12 => "unavailableCriticalExtension",
        13 => "confidentialityRequired",
        16 => "noSuchAttribute",
        17 => "undefinedAttributeType",
        18 => "inappropriateMatching",
        19 => "constraintViolation",
        20 => "attributeOrValueExists",
        21 => "invalidAttributeSyntax",
        32 => "noSuchObject",
        34 => "invalidDNSyntax",
        48 => "inappropriateAuthentication",
        49 => "invalidCredentials",
        50 => "insufficientAccessRights",
        51 => "busy",
        52 => "unavailable",
        53 => "unwillingToPerform",
        54 => "loopDetect",
        64 => "namingViolation",
        65 => "objectClassViolation",
        66 => "notAllowedOnNonLeaf",
        67 => "notAllowedOnRDN",
        68 => "entryAlreadyExists",
        69 => "objectClassModsProhibited",
        71 => "affectsMultipleDSAs",
        80 => "other",
        _ => "unknown",
    }
}

/// How a result code is treated: busy (51) is `throttled` (not the
/// export's fault), unavailable (52), other (80), timeLimitExceeded (3) and
/// adminLimitExceeded (11) are `transient`, refused credentials or rights
/// (8, 13, 48, 49, 50) `auth`, everything else `definite` (the data or the
/// configuration must change: 65 objectClassViolation, 21, 34, 64, 19, …).
pub fn classify(rc: u32) -> ErrorClass {
    match rc {
        51 => ErrorClass::Throttled,
        3 | 11 | 52 | 80 => ErrorClass::Transient,
        8 | 13 | 48 | 49 | 50 => ErrorClass::Auth,
        _ => ErrorClass::Definite,
    }
}

/// A field's value as attribute values.
#[derive(Debug, Clone, PartialEq)]
enum Values {
    /// Plain values (empty: none).
    Plain(Vec<String>),
    /// References: the referenced items' entryUUIDs (None: not created yet).
    Refs(Vec<Option<String>>),
}

/// The values of one payload value: arrays (and an array column's JSON
/// text) are multi-valued, booleans `TRUE`/`FALSE`, null and empty
/// strings none.
fn values_of(v: &Value) -> Values {
    let scalar = |x: &Value| match x {
        Value::Null => None,
        Value::String(s) if s.is_empty() => None,
        Value::String(s) => Some(s.clone()),
        Value::Bool(b) => Some(if *b { "TRUE" } else { "FALSE" }.to_owned()),
        other => Some(other.to_string()),
    };
    match v {
        Value::Object(o) if o.contains_key("@refs") => Values::Refs(
            o.get("target_ids")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .map(|t| t.as_str().filter(|s| !s.is_empty()).map(str::to_owned))
                .collect(),
        ),
        Value::Object(o) if o.contains_key("@ref") => {
            let id = o.get("target_id").and_then(Value::as_str).filter(|s| !s.is_empty());
            Values::Refs(if o.get("@ref").is_some_and(|k| !k.is_null()) { vec![id.map(str::to_owned)] } else { vec![] })
        }
        Value::Array(a) => Values::Plain(a.iter().filter_map(scalar).collect()),
        Value::String(s) if s.trim_start().starts_with('[') => match serde_json::from_str::<Vec<Value>>(s) {
            Ok(a) => Values::Plain(a.iter().filter_map(scalar).collect()),
            Err(_) => Values::Plain(vec![s.clone()]),
        },
        other => Values::Plain(scalar(other).into_iter().collect()),
    }
}

/// The payload's attributes: name → values (references resolved through
/// `dns`; `SyncKey` is not an attribute). Group member attributes left
/// empty get `placeholder`.
fn attributes(e: &Export, dns: &HashMap<String, String>, placeholder: &str) -> BTreeMap<String, Vec<String>> {
    let mut out = BTreeMap::new();
    for (name, v) in e.payload.as_ref().and_then(Value::as_object).into_iter().flatten() {
        if name == "SyncKey" {
            continue;
        }
        let mut vals = match values_of(v) {
            Values::Plain(p) => p,
            Values::Refs(ids) => {
                ids.iter().flatten().filter_map(|id| dns.get(&id.to_ascii_lowercase()).cloned()).collect()
            }
        };
        let mut seen = HashSet::new();
        vals.retain(|x| seen.insert(x.clone()));
        if vals.is_empty() && (name.eq_ignore_ascii_case("member") || name.eq_ignore_ascii_case("uniqueMember")) {
            vals.push(placeholder.to_owned());
        }
        out.insert(name.clone(), vals);
    }
    out
}

/// The values of attribute `name` (any case) in `attrs`.
fn get_ci<'a, V>(attrs: &'a BTreeMap<String, V>, name: &str) -> Option<&'a V> {
    attrs.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v)
}

/// One entry as a search returned it (attribute names lower-cased).
#[derive(Debug, Clone)]
struct Entry {
    dn: String,
    attrs: HashMap<String, Vec<String>>,
}

impl Entry {
    fn first(&self, attr: &str) -> Option<&str> {
        self.attrs.get(&attr.to_ascii_lowercase()).and_then(|v| v.first()).map(String::as_str)
    }
}

/// The LDAP adapter.
pub struct LdapTarget {
    settings: LdapSettings,
    password: Option<String>,
    tls: Option<Arc<rustls::ClientConfig>>,
    conn: Mutex<Option<Ldap>>,
    budget: Budget,
    shutdown: Option<tokio::sync::watch::Receiver<bool>>,
    health: Mutex<(Health, String)>,
    redactor: Redactor,
}

impl std::fmt::Debug for LdapTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the password.
        f.debug_struct("LdapTarget").field("name", &self.settings.name).field("url", &self.settings.url).finish()
    }
}

/// The attributes a found entry is read with.
const ENTRY_ATTRS: [&str; 3] = ["entryUUID", "entryCSN", "creatorsName"];

impl LdapTarget {
    /// Builds the adapter (no connection yet: the first operation makes it).
    pub fn new(
        settings: LdapSettings,
        password: Option<String>,
        shutdown: Option<tokio::sync::watch::Receiver<bool>>,
    ) -> Result<Self, TargetSetupError> {
        let tls = if settings.starttls || settings.url.starts_with("ldaps:") {
            Some(
                tls_config(settings.ca_pem.as_deref())
                    .map_err(|message| TargetSetupError::Config { target: settings.name.clone(), message })?,
            )
        } else {
            None
        };
        // One operation at a time, a burst of a few.
        let budget = Budget::new(settings.budget, 10, None, 1);
        metrics::BUDGET_ALLOWED.set(&[&settings.name], f64::from(settings.budget) / 60.0);
        let redactor = Redactor::new(password.iter().map(String::as_str));
        Ok(Self {
            settings,
            password,
            tls,
            conn: Mutex::new(None),
            budget,
            shutdown,
            health: Mutex::new((Health::Ok, String::new())),
            redactor,
        })
    }

    fn set_health(&self, h: Health, msg: &str) {
        let msg = super::clean_message(&self.redactor.redact(msg));
        *self.health.lock().unwrap_or_else(|p| p.into_inner()) = (h, msg);
    }

    fn fail(&self, class: ErrorClass, message: String, sent: bool) -> Failure {
        Failure { class, message: self.redactor.redact(&message), retry_after: None, sent }
    }

    /// Waits for one operation's turn in the budget; Err when the worker stops.
    async fn turn(&self) -> Result<(), Failure> {
        let since = std::time::Instant::now();
        let ready = self.budget.limiter.until_n_ready(NonZeroU32::MIN);
        match self.shutdown.clone() {
            None => {
                // n = 1 never exceeds the burst.
                let _ = ready.await;
            }
            Some(mut rx) => {
                tokio::select! {
                    _ = ready => {}
                    true = stop_signalled(&mut rx) => {
                        return Err(Failure {
                            class: ErrorClass::Throttled,
                            message: "not sent: the worker is stopping".into(),
                            retry_after: None,
                            sent: false,
                        });
                    }
                }
            }
        }
        metrics::BUDGET_WAIT.add(&[&self.settings.name], since.elapsed().as_secs_f64());
        metrics::BUDGET_SPENT.add(&[&self.settings.name], 1.0);
        Ok(())
    }

    fn count(&self, what: &str, rc: Option<u32>) {
        let code = rc.map_or_else(|| "error".to_owned(), |rc| rc.to_string());
        metrics::TARGET_REQUESTS.inc(&[&self.settings.name, what, &code]);
    }

    /// The connection, made (and bound) when there is none or it broke.
    async fn connection(&self) -> Result<Ldap, Failure> {
        let current = self.conn.lock().unwrap_or_else(|p| p.into_inner()).clone();
        if let Some(mut l) = current {
            if !l.is_closed() {
                return Ok(l);
            }
        }
        let s = &self.settings;
        let mut cs = LdapConnSettings::new().set_conn_timeout(CONNECT_TIMEOUT).set_starttls(s.starttls);
        if let Some(tls) = &self.tls {
            cs = cs.set_config(tls.clone());
        }
        self.turn().await?;
        let unreachable = |e: &dyn std::fmt::Display| {
            let msg = format!("the LDAP server {} is unreachable: {e}", s.url);
            self.set_health(Health::Unreachable, &msg);
            self.fail(ErrorClass::Transient, msg, false)
        };
        let (conn, mut ldap) = match LdapConnAsync::with_settings(cs, &s.url).await {
            Ok(c) => c,
            Err(e) => {
                self.count("connect", None);
                return Err(unreachable(&e));
            }
        };
        let name = s.name.clone();
        tokio::spawn(async move {
            if let Err(e) = conn.drive().await {
                tracing::debug!(target = %name, error = %e, "LDAP connection ended");
            }
        });
        if let (Some(dn), Some(pw)) = (&s.bind_dn, &self.password) {
            self.turn().await?;
            let bound = ldap.with_timeout(Duration::from_millis(s.timeout_ms)).simple_bind(dn, pw).await;
            match bound {
                Ok(r) if r.rc == 0 => self.count("bind", Some(0)),
                Ok(r) => {
                    self.count("bind", Some(r.rc));
                    let msg = format!(
                        "the LDAP server refused the bind as {dn}: {} ({}){}",
                        rc_name(r.rc),
                        r.rc,
                        text_of(&r)
                    );
                    let class = classify(r.rc);
                    let health = match class {
                        ErrorClass::Auth | ErrorClass::Definite => Health::AuthFailed,
                        ErrorClass::Throttled => Health::Throttled,
                        _ => Health::Unreachable,
                    };
                    self.set_health(health, &msg);
                    let class = if class == ErrorClass::Definite { ErrorClass::Auth } else { class };
                    return Err(self.fail(class, msg, false));
                }
                Err(e) => {
                    self.count("bind", None);
                    return Err(unreachable(&e));
                }
            }
        }
        *self.conn.lock().unwrap_or_else(|p| p.into_inner()) = Some(ldap.clone());
        Ok(ldap)
    }

    /// A connection for the next operation, its turn in the budget taken.
    async fn ldap(&self) -> Result<Ldap, Failure> {
        let mut l = self.connection().await?;
        self.turn().await?;
        l.with_timeout(Duration::from_millis(self.settings.timeout_ms));
        Ok(l)
    }

    /// The failure of an operation that got no result: the connection is
    /// dropped (the next operation makes a new one).
    fn broken(&self, what: &str, e: &LdapError, write: bool) -> Failure {
        *self.conn.lock().unwrap_or_else(|p| p.into_inner()) = None;
        self.count(what, None);
        let msg = match e {
            LdapError::Timeout { .. } => {
                format!("the LDAP server did not answer the {what} within {} ms", self.settings.timeout_ms)
            }
            other => format!("the LDAP server {} is unreachable: the {what} failed: {other}", self.settings.url),
        };
        self.set_health(Health::Unreachable, &msg);
        // A write may have run before the connection broke.
        self.fail(ErrorClass::Transient, msg, write)
    }

    /// The failure of an operation the server refused.
    fn refused(&self, what: &str, dn: &str, r: &LdapResult) -> Failure {
        let class = classify(r.rc);
        let msg = format!("LDAP {what} of {dn:?}: {} ({}){}", rc_name(r.rc), r.rc, text_of(r));
        match class {
            ErrorClass::Auth => self.set_health(Health::AuthFailed, &msg),
            ErrorClass::Throttled => self.set_health(Health::Throttled, &msg),
            ErrorClass::Transient => self.set_health(Health::Unreachable, &msg),
            _ => {}
        }
        // busy and unavailable: not carried out.
        let sent = !matches!(r.rc, 51 | 52);
        Failure { retry_after: (class == ErrorClass::Throttled).then_some(1.0), ..self.fail(class, msg, sent) }
    }

    fn answered(&self, what: &str, rc: u32) {
        self.count(what, Some(rc));
        if !matches!(classify(rc), ErrorClass::Transient | ErrorClass::Throttled | ErrorClass::Auth) {
            let unhealthy = self.health.lock().unwrap_or_else(|p| p.into_inner()).0 != Health::Ok;
            if unhealthy {
                self.set_health(Health::Ok, "");
            }
        }
    }

    /// Entries under `base` matching `filter`; a missing base is none.
    async fn search(&self, base: &str, scope: Scope, filter: &str, attrs: &[&str]) -> Result<Vec<Entry>, Failure> {
        let mut l = self.ldap().await?;
        let found = l.search(base, scope, filter, attrs.to_vec()).await;
        let ldap3::SearchResult(entries, r) = found.map_err(|e| self.broken("search", &e, false))?;
        self.answered("search", r.rc);
        match r.rc {
            0 => {}
            32 => return Ok(Vec::new()),
            _ => return Err(self.refused("search", base, &r)),
        }
        Ok(entries
            .into_iter()
            .map(|re| {
                let se = ldap3::SearchEntry::construct(re);
                let attrs = se.attrs.into_iter().map(|(k, v)| (k.to_ascii_lowercase(), v)).collect();
                Entry { dn: se.dn, attrs }
            })
            .collect())
    }

    /// The entry whose entryUUID is `uuid`, with `attrs`.
    async fn find(&self, uuid: &str, attrs: &[&str]) -> Result<Option<Entry>, Failure> {
        let filter = format!("(entryUUID={})", ldap_escape(uuid));
        let mut all: Vec<&str> = ENTRY_ATTRS.to_vec();
        all.extend_from_slice(attrs);
        Ok(self.search(&self.settings.base_dn, Scope::Subtree, &filter, &all).await?.into_iter().next())
    }

    /// The entry at `dn`, if any.
    async fn at(&self, dn: &str, attrs: &[&str]) -> Result<Option<Entry>, Failure> {
        let mut all: Vec<&str> = ENTRY_ATTRS.to_vec();
        all.extend_from_slice(attrs);
        Ok(self.search(dn, Scope::Base, "(objectClass=*)", &all).await?.into_iter().next())
    }

    /// entryUUID (lower-case) → DN of the entries `uuids` name.
    async fn resolve(&self, uuids: &[String]) -> Result<HashMap<String, String>, Failure> {
        let mut out = HashMap::new();
        for chunk in uuids.chunks(REF_CHUNK) {
            let filter: String = chunk.iter().map(|u| format!("(entryUUID={})", ldap_escape(u.as_str()))).collect();
            let filter = format!("(|{filter})");
            for e in self.search(&self.settings.base_dn, Scope::Subtree, &filter, &["entryUUID"]).await? {
                if let Some(u) = e.first("entryUUID") {
                    out.insert(u.to_ascii_lowercase(), e.dn.clone());
                }
            }
        }
        Ok(out)
    }

    /// A modify of `dn`; returns the entry's entryCSN after it (Post-Read).
    async fn modify(&self, dn: &str, mods: Vec<Mod<String>>) -> Result<Option<String>, Failure> {
        let mut l = self.ldap().await?;
        let done = l.with_controls(PostRead::new(vec!["entryCSN"])).modify(dn, mods).await;
        let r = done.map_err(|e| self.broken("modify", &e, true))?;
        self.answered("modify", r.rc);
        if r.rc != 0 {
            return Err(self.refused("modify", dn, &r));
        }
        Ok(post_read(&r).and_then(|a| first_of(&a, "entryCSN")))
    }

    /// Renames and/or moves `dn` to `rdn,parent`; rewrites group members
    /// that still name the old DN. Returns the new DN.
    async fn move_entry(&self, dn: &str, rdn: &str, parent: &str) -> Result<String, Failure> {
        let (cur_rdn, cur_parent) = dn::split_first(dn);
        let moving = !dn::same(cur_parent, parent);
        if !moving && dn::exact(cur_rdn, rdn) {
            return Ok(dn.to_owned());
        }
        let new_dn = format!("{rdn},{parent}");
        let mut l = self.ldap().await?;
        let done = l.modifydn(dn, rdn, true, moving.then_some(parent)).await;
        let r = done.map_err(|e| self.broken("modify DN", &e, true))?;
        self.answered("modifydn", r.rc);
        if r.rc != 0 {
            let mut f = self.refused("modify DN", dn, &r);
            if r.rc == 68 {
                f.message = format!("{}: another entry is named {new_dn:?} already", f.message);
            }
            return Err(f);
        }
        // Servers without referential integrity keep the old DN in groups.
        let filter = format!("(|(member={0})(uniqueMember={0}))", ldap_escape(dn));
        let groups = self.search(&self.settings.base_dn, Scope::Subtree, &filter, &["member", "uniqueMember"]).await?;
        for g in groups {
            let mut mods = Vec::new();
            for attr in ["member", "uniqueMember"] {
                let vals = g.attrs.get(&attr.to_ascii_lowercase()).cloned().unwrap_or_default();
                if vals.iter().any(|v| dn::same(v, dn)) {
                    let mut kept: Vec<String> = vals.into_iter().filter(|v| !dn::same(v, dn)).collect();
                    kept.push(new_dn.clone());
                    mods.push(Mod::Replace(attr.to_owned(), kept.into_iter().collect()));
                }
            }
            if !mods.is_empty() {
                self.modify(&g.dn, mods).await?;
            }
        }
        Ok(new_dn)
    }

    /// The entryCSN of `dn` (after a write without Post-Read).
    async fn csn(&self, dn: &str) -> Result<Option<String>, Failure> {
        Ok(self.at(dn, &[]).await?.and_then(|e| e.first("entryCSN").map(str::to_owned)))
    }

    /// The modifications that lock (`lock`) or unlock an account.
    fn lock_mods(&self, lock: bool, entry: &Entry) -> Vec<Mod<String>> {
        let m = self.settings.disable;
        let attr = m.attribute().to_owned();
        let set = |v: &str| HashSet::from([v.to_owned()]);
        match (m, lock) {
            (DisableMechanism::Ppolicy, true) => vec![Mod::Replace(attr, set(PPOLICY_LOCKED))],
            (DisableMechanism::Ds389, true) => vec![Mod::Replace(attr, set("TRUE"))],
            (DisableMechanism::Ppolicy | DisableMechanism::Ds389, false) => vec![Mod::Replace(attr, HashSet::new())],
            (DisableMechanism::Ad, lock) => {
                let cur = entry.first("userAccountControl").and_then(|v| v.parse::<u64>().ok()).unwrap_or(512);
                let new = if lock { cur | AD_ACCOUNTDISABLE } else { cur & !AD_ACCOUNTDISABLE };
                if new == cur {
                    Vec::new()
                } else {
                    vec![Mod::Replace(attr, set(&new.to_string()))]
                }
            }
        }
    }

    /// The DN an export's entry should have: its template's naming value
    /// (from the payload, then `current`'s attributes) under its container.
    fn wanted(
        &self,
        e: &Export,
        attrs: &BTreeMap<String, Vec<String>>,
        current: Option<&Entry>,
    ) -> Result<(dn::Template, String, String, String), String> {
        let t = dn::Template::parse(&e.container)?;
        let named_in_payload = t.fields().any(|f| get_ci(attrs, f).is_some());
        let value = match current {
            Some(cur) if !named_in_payload => {
                // The naming value did not change: keep the RDN as it is.
                let (rdn, _) = dn::split_first(&cur.dn);
                let v = rdn.split_once('=').map_or("", |(_, v)| v);
                return Ok((t.clone(), rdn.to_owned(), t.parent(&self.settings.base_dn), dn::unescape(v)));
            }
            _ => t.value(|f| {
                get_ci(attrs, f)
                    .and_then(|v| v.first())
                    .map(|s| Cow::Owned(s.clone()))
                    .or_else(|| current.and_then(|c| c.first(f)).map(|s| Cow::Owned(s.to_owned())))
            })?,
        };
        let rdn = t.rdn(&value);
        let parent = t.parent(&self.settings.base_dn);
        Ok((t, rdn, parent, value))
    }

    async fn add(&self, e: &Export, dns: &HashMap<String, String>) -> Result<OpResult, Failure> {
        let mut attrs = attributes(e, dns, &self.settings.placeholder_member);
        let (t, rdn, parent, value) =
            self.wanted(e, &attrs, None).map_err(|m| self.fail(ErrorClass::Definite, m, false))?;
        let dn = format!("{rdn},{parent}");
        // The naming value must be among the entry's values.
        match attrs.iter_mut().find(|(k, _)| k.eq_ignore_ascii_case(&t.attr)) {
            Some((_, v)) if !v.iter().any(|x| x.eq_ignore_ascii_case(&value)) => v.push(value.clone()),
            Some(_) => {}
            None => {
                attrs.insert(t.attr.clone(), vec![value.clone()]);
            }
        }
        if e.verify {
            if let Some(found) = self.at(&dn, &["*"]).await? {
                return self.adopt(e, &found, &attrs).await;
            }
        }
        let add: Vec<(String, HashSet<String>)> = attrs
            .iter()
            .filter(|(_, v)| !v.is_empty())
            .map(|(k, v)| (k.clone(), v.iter().cloned().collect()))
            .collect();
        let mut l = self.ldap().await?;
        let done = l.with_controls(PostRead::new(vec!["entryUUID", "entryCSN"])).add(&dn, add).await;
        let r = done.map_err(|err| self.broken("add", &err, true))?;
        self.answered("add", r.rc);
        match r.rc {
            0 => {}
            68 => {
                let Some(found) = self.at(&dn, &["*"]).await? else {
                    return Err(self.fail(ErrorClass::Transient, format!("{dn:?} exists and then did not"), true));
                };
                return self.adopt(e, &found, &attrs).await;
            }
            _ => return Err(self.refused("add", &dn, &r)),
        }
        let read = post_read(&r);
        let (uuid, csn) = match read.as_ref().and_then(|a| first_of(a, "entryUUID")) {
            Some(u) => (Some(u), read.as_ref().and_then(|a| first_of(a, "entryCSN"))),
            None => {
                let found = self.at(&dn, &[]).await?;
                let f = |a: &str| found.as_ref().and_then(|x| x.first(a)).map(str::to_owned);
                (f("entryUUID"), f("entryCSN"))
            }
        };
        let Some(uuid) = uuid else {
            return Err(self.fail(ErrorClass::Definite, format!("{dn:?} was added but has no entryUUID"), true));
        };
        Ok(OpResult { target_id: Some(uuid), etag: csn, join_type: Some("provisioned"), ..OpResult::ok(e.id) })
    }

    /// Takes an entry found at an add's DN: `provisioned` when our bind DN
    /// created it (our own add whose answer was lost), else `joined`; its
    /// mapped attributes are brought in line (object classes added).
    async fn adopt(
        &self,
        e: &Export,
        found: &Entry,
        attrs: &BTreeMap<String, Vec<String>>,
    ) -> Result<OpResult, Failure> {
        let Some(uuid) = found.first("entryUUID").map(str::to_owned) else {
            return Err(self.fail(ErrorClass::Definite, format!("{:?} has no entryUUID", found.dn), false));
        };
        let ours = match (found.first("creatorsName"), &self.settings.bind_dn) {
            (Some(c), Some(me)) => dn::same(c, me),
            _ => false,
        };
        let have: Vec<String> = found.attrs.get("objectclass").cloned().unwrap_or_default();
        let mut mods = Vec::new();
        for (k, v) in attrs {
            if k.eq_ignore_ascii_case("objectClass") {
                let missing: HashSet<String> =
                    v.iter().filter(|c| !have.iter().any(|h| h.eq_ignore_ascii_case(c))).cloned().collect();
                if !missing.is_empty() {
                    mods.push(Mod::Add(k.clone(), missing));
                }
            } else {
                // Only what differs is written (our own lost add: nothing).
                let mut cur = found.attrs.get(&k.to_ascii_lowercase()).cloned().unwrap_or_default();
                let mut want = v.clone();
                cur.sort();
                want.sort();
                if cur != want {
                    mods.push(Mod::Replace(k.clone(), v.iter().cloned().collect()));
                }
            }
        }
        let written = if mods.is_empty() { None } else { self.modify(&found.dn, mods).await? };
        let csn = match written {
            Some(c) => Some(c),
            None => self.csn(&found.dn).await?,
        };
        let join = if ours { "provisioned" } else { "joined" };
        Ok(OpResult { target_id: Some(uuid), etag: csn, join_type: Some(join), ..OpResult::ok(e.id) })
    }

    async fn update(&self, e: &Export, uuid: &str, dns: &HashMap<String, String>) -> Result<OpResult, Failure> {
        let attrs = attributes(e, dns, &self.settings.placeholder_member);
        let t = dn::Template::parse(&e.container).map_err(|m| self.fail(ErrorClass::Definite, m, false))?;
        let mut read: Vec<&str> = t.fields().collect();
        if self.settings.disable == DisableMechanism::Ad {
            read.push("userAccountControl");
        }
        let Some(entry) = self.find(uuid, &read).await? else {
            let msg =
                format!("the entry with entryUUID {uuid} is not in the directory under {}", self.settings.base_dn);
            return Err(self.fail(ErrorClass::Definite, msg, false));
        };
        let (_, rdn, parent, _) =
            self.wanted(e, &attrs, Some(&entry)).map_err(|m| self.fail(ErrorClass::Definite, m, false))?;
        let dn = self.move_entry(&entry.dn, &rdn, &parent).await?;
        let mut mods: Vec<Mod<String>> =
            attrs.iter().map(|(k, v)| Mod::Replace(k.clone(), v.iter().cloned().collect())).collect();
        if e.disabled {
            mods.extend(self.lock_mods(false, &entry));
        }
        let csn = if mods.is_empty() { None } else { self.modify(&dn, mods).await? };
        let csn = match csn {
            Some(c) => Some(c),
            None if dn == entry.dn => entry.first("entryCSN").map(str::to_owned),
            None => self.csn(&dn).await?,
        };
        Ok(OpResult { target_id: Some(uuid.to_owned()), etag: csn, ..OpResult::ok(e.id) })
    }

    async fn disable(&self, e: &Export, uuid: &str) -> Result<OpResult, Failure> {
        let Some(entry) = self.find(uuid, &["userAccountControl"]).await? else {
            // Gone already: nothing to disable (the delete follows).
            return Ok(OpResult::ok(e.id));
        };
        let mods = self.lock_mods(true, &entry);
        let mut csn = if mods.is_empty() { None } else { self.modify(&entry.dn, mods).await? };
        if let Some(c) = &self.settings.disabled_container {
            let (rdn, _) = dn::split_first(&entry.dn);
            let parent = dn::under(c, &self.settings.base_dn);
            let moved = self.move_entry(&entry.dn, rdn, &parent).await?;
            if moved != entry.dn {
                csn = self.csn(&moved).await?;
            }
        }
        Ok(OpResult { target_id: Some(uuid.to_owned()), etag: csn, ..OpResult::ok(e.id) })
    }

    async fn delete(&self, e: &Export, uuid: &str) -> Result<OpResult, Failure> {
        let Some(entry) = self.find(uuid, &[]).await? else {
            return Ok(OpResult::ok(e.id));
        };
        let mut l = self.ldap().await?;
        let r = l.delete(&entry.dn).await.map_err(|err| self.broken("delete", &err, true))?;
        self.answered("delete", r.rc);
        match r.rc {
            0 | 32 => Ok(OpResult::ok(e.id)),
            _ => Err(self.refused("delete", &entry.dn, &r)),
        }
    }

    async fn one(&self, e: &Export, dns: &HashMap<String, String>) -> Result<OpResult, Failure> {
        match (e.op, e.target_id.as_deref()) {
            (Op::Add, _) | (Op::Update | Op::Move, None) => self.add(e, dns).await,
            (Op::Update | Op::Move, Some(id)) => self.update(e, id, dns).await,
            (Op::Disable, Some(id)) => self.disable(e, id).await,
            (Op::Delete, Some(id)) => self.delete(e, id).await,
            // Never created: nothing to disable or delete.
            (Op::Disable | Op::Delete, None) => Ok(OpResult::ok(e.id)),
            (Op::Provision, _) => Err(self.fail(
                ErrorClass::Definite,
                "an ldap target provisions nothing: its containers (OUs) exist already".into(),
                false,
            )),
        }
    }
}

/// The Post-Read control's entry in a result, if the server sent one.
fn post_read(r: &LdapResult) -> Option<HashMap<String, Vec<String>>> {
    let c = r.ctrls.iter().find(|c| matches!(c.0, Some(ldap3::controls::ControlType::PostReadResp)))?;
    c.1.val.as_ref()?;
    // ldap3 panics on a malformed control value: that is no answer.
    let raw = c.1.clone();
    std::panic::catch_unwind(move || raw.parse::<PostReadResp>()).ok().map(|p| p.attrs)
}

fn first_of(attrs: &HashMap<String, Vec<String>>, name: &str) -> Option<String> {
    attrs.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).and_then(|(_, v)| v.first()).cloned()
}

/// `: <the server's diagnostic text>` when it sent one.
fn text_of(r: &LdapResult) -> String {
    let t = r.text.trim();
    if t.is_empty() {
        String::new()
    } else {
        format!(": {}", super::policy::bounded(t, 500))
    }
}

/// The entryUUIDs an export's references name.
fn referenced(e: &Export) -> impl Iterator<Item = String> + '_ {
    e.payload.as_ref().and_then(Value::as_object).into_iter().flat_map(|o| o.values()).flat_map(|v| {
        match values_of(v) {
            Values::Refs(ids) => ids.into_iter().flatten().collect::<Vec<_>>(),
            Values::Plain(_) => Vec::new(),
        }
    })
}

impl Target for LdapTarget {
    fn batch_size(&self) -> usize {
        CLAIM_SIZE
    }

    fn capabilities(&self) -> &'static Capabilities {
        &LDAP_CAPABILITIES
    }

    fn probe(&self) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(async move {
            // Connects (and binds) when the connection is gone, then reads the base.
            let base = self.settings.base_dn.clone();
            match self.search(&base, Scope::Base, "(objectClass=*)", &["1.1"]).await {
                Ok(_) => {
                    self.set_health(Health::Ok, "");
                    Ok(())
                }
                Err(f) => Err(f.message),
            }
        })
    }

    fn apply<'a>(&'a self, exports: &'a [Export], _context: &'a ApplyContext) -> BoxFuture<'a, Vec<OpResult>> {
        Box::pin(async move {
            let mut results = Vec::with_capacity(exports.len());
            let mut uuids: Vec<String> = exports.iter().flat_map(referenced).collect();
            uuids.sort();
            uuids.dedup();
            let mut down: Option<Failure> = None;
            let dns = if uuids.is_empty() {
                HashMap::new()
            } else {
                match self.resolve(&uuids).await {
                    Ok(d) => d,
                    Err(f) => {
                        down = Some(f);
                        HashMap::new()
                    }
                }
            };
            for e in exports {
                if let Some(f) = &down {
                    // The server cannot be reached (or refused our bind): the
                    // rest of the batch is not sent.
                    results.push(Failure { sent: false, ..f.clone() }.to_result(e.id));
                    continue;
                }
                match self.one(e, &dns).await {
                    Ok(r) => results.push(r),
                    Err(f) => {
                        let whole = !f.sent && matches!(f.class, ErrorClass::Transient | ErrorClass::Auth);
                        if whole {
                            down = Some(f.clone());
                        }
                        results.push(f.to_result(e.id));
                    }
                }
            }
            results
        })
    }

    fn pull<'a>(&'a self, request: &'a PullRequest) -> BoxFuture<'a, Result<PullPage, PullError>> {
        Box::pin(self.pull_page(request))
    }

    fn health(&self) -> (Health, String) {
        self.health.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// `dn_escape` for callers outside (tests, tools).
pub fn escape_value(v: &str) -> String {
    dn_escape(v).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn export(op: Op, payload: Value) -> Export {
        serde_json::from_value(serde_json::json!({
            "id": 1, "definition": "people", "op": op.as_str(), "sync_key": "1", "list": "uid={uid},ou=People",
            "from_list": null, "target_id": null, "etag": null, "payload": payload, "attempts": 1, "verify": false,
        }))
        .unwrap()
    }

    #[test]
    fn payload_values_become_attribute_values() {
        let e = export(
            Op::Add,
            serde_json::json!({
                "objectClass": "[\"inetOrgPerson\", \"posixAccount\"]", "cn": "Zoë", "mail": null, "title": "",
                "employeeNumber": 42, "SyncKey": "1", "flag": true,
                "member": {"@refs": ["a", "b", "c"], "@def": "people", "target_ids": ["U-1", null, "u-3"]},
                "manager": {"@ref": "9", "@def": "people", "target_id": null},
                "seeAlso": {"@refs": [], "@def": "people", "target_ids": []},
            }),
        );
        let dns =
            HashMap::from([("u-1".to_owned(), "uid=a,dc=x".to_owned()), ("u-3".to_owned(), "uid=c,dc=x".to_owned())]);
        let a = attributes(&e, &dns, "cn=ph,dc=x");
        assert_eq!(a["objectClass"], ["inetOrgPerson", "posixAccount"]);
        assert_eq!(a["cn"], ["Zoë"]);
        assert!(a["mail"].is_empty() && a["title"].is_empty() && a["manager"].is_empty() && a["seeAlso"].is_empty());
        assert_eq!(a["employeeNumber"], ["42"]);
        assert_eq!(a["flag"], ["TRUE"]);
        assert_eq!(a["member"], ["uid=a,dc=x", "uid=c,dc=x"]);
        assert!(!a.contains_key("SyncKey"));
        let empty =
            export(Op::Update, serde_json::json!({"member": {"@refs": ["a"], "@def": "p", "target_ids": [null]}}));
        assert_eq!(attributes(&empty, &HashMap::new(), "cn=ph,dc=x")["member"], ["cn=ph,dc=x"]);
        assert_eq!(referenced(&e).collect::<Vec<_>>(), ["U-1", "u-3"]);
    }

    #[test]
    fn result_codes_map_to_error_classes() {
        for rc in [16, 17, 19, 21, 32, 34, 53, 64, 65, 66, 67, 68, 69] {
            assert_eq!(classify(rc), ErrorClass::Definite, "{rc}");
        }
        for rc in [49, 50, 48] {
            assert_eq!(classify(rc), ErrorClass::Auth, "{rc}");
        }
        for rc in [52, 80, 3] {
            assert_eq!(classify(rc), ErrorClass::Transient, "{rc}");
        }
        assert_eq!(classify(51), ErrorClass::Throttled);
        assert_eq!(rc_name(65), "objectClassViolation");
    }

    #[test]
    fn settings_check_the_url_the_mechanism_and_the_ca() {
        let policy = TargetPolicy { allow_loopback: true, ..TargetPolicy::default() };
        let cfg = serde_json::json!({"url": "ldap://127.0.0.1:3890", "base_dn": "dc=example,dc=com",
                                      "disabled_container": "ou=Disabled,dc=example,dc=com"});
        let s = LdapSettings::from_config("t", &cfg, &policy).unwrap();
        assert_eq!(s.url, "ldap://127.0.0.1:3890");
        assert_eq!(s.disable, DisableMechanism::Ppolicy);
        assert_eq!(s.disabled_container.as_deref(), Some("ou=Disabled"));
        assert_eq!(s.placeholder_member, "cn=syncbridge-placeholder,dc=example,dc=com");
        let with = |k: &str, v: Value| {
            let mut c = cfg.clone();
            c[k] = v;
            LdapSettings::from_config("t", &c, &policy).err().map(|e| e.to_string()).unwrap_or_default()
        };
        assert!(with("disable_mechanism", "novell".into()).contains("none of ppolicy, ad, 389"));
        assert!(with("ca_pem", "not a pem".into()).contains("no PEM certificate"));
        assert!(with("url", "https://127.0.0.1".into()).contains("ldap:// or ldaps://"));
        let remote = serde_json::json!({"url": "ldap://dir.example.com", "base_dn": "dc=x"});
        let e = LdapSettings::from_config("t", &remote, &policy).unwrap_err().to_string();
        assert!(e.contains("ldaps:// or StartTLS"), "{e}");
        let mut tls = remote.clone();
        tls["starttls"] = true.into();
        let e = LdapSettings::from_config("t", &tls, &policy).unwrap_err().to_string();
        assert!(e.contains("--allow-target-host"), "{e}");
        let allowed = TargetPolicy { extra_hosts: vec!["dir.example.com".into()], ..TargetPolicy::default() };
        assert!(LdapSettings::from_config("t", &tls, &allowed).is_ok());
        let mut ldaps = remote;
        ldaps["url"] = "ldaps://dir.example.com".into();
        assert!(LdapSettings::from_config("t", &ldaps, &allowed).is_ok());
    }
}
