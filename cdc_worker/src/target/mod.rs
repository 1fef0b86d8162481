//! Targets: the systems syncbridge writes to, behind one trait.
//!
//! The exporter claims exports from `sync.claim`, hands them to a [`Target`]
//! and reports one [`OpResult`] per export to `sync.complete`. An adapter
//! owns its authentication, request shaping (batching), rate limit and error
//! classification; it never decides *what* to send (the extension did).

pub mod graph;
pub mod policy;

pub use policy::{Redactor, SecretError, TargetPolicy};

use std::future::Future;
use std::pin::Pin;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// A boxed future, for object-safe async trait methods.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What a claimed export asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Op {
    /// Create the list and its columns.
    Provision,
    /// Create an item.
    Add,
    /// Change fields of an item.
    Update,
    /// Remove an item.
    Delete,
    /// Move an item to another list (shard): create there, delete here.
    Move,
}

/// One claimed export (a row of `sync.claim`).
#[derive(Debug, Clone, Deserialize)]
pub struct Export {
    /// `sync.pending_exports.id`.
    pub id: i64,
    /// The definition's name.
    pub definition: String,
    /// What to do.
    pub op: Op,
    /// The row's key (None for provision).
    pub sync_key: Option<String>,
    /// The list (display name) the item belongs in.
    pub list: String,
    /// For a move: the list it leaves.
    pub from_list: Option<String>,
    /// The item's id on the target, when it has one.
    pub target_id: Option<String>,
    /// The item's last known eTag.
    pub etag: Option<String>,
    /// Fields to write (target column names → values); references are
    /// objects `{"@ref": key, "@def": definition, "target_id": id}`; for a
    /// provision: `{"list": name, "columns": [...]}`.
    pub payload: Option<Value>,
    /// Attempts so far (this one included).
    pub attempts: i32,
    /// An earlier attempt may have reached the target: look before creating.
    pub verify: bool,
}

/// How a failure should be treated (`sync.complete`'s `class`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ErrorClass {
    /// Try again later with backoff (5xx, network, timeouts).
    Transient,
    /// The target asked us to slow down (429/503 with Retry-After): not the export's fault.
    Throttled,
    /// Credentials must be refreshed: not the export's fault.
    Auth,
    /// Retrying will not help until the data or the configuration changes.
    Definite,
}

/// The outcome of one export, as `sync.complete` takes it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct OpResult {
    /// The export's id.
    pub id: i64,
    /// Whether it was carried out.
    pub ok: bool,
    /// The item's id on the target (adds, moves, adoptions).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target_id: Option<String>,
    /// The item's eTag after the write.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub etag: Option<String>,
    /// `provisioned` (created) or `joined` (an existing item or list was adopted).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub join_type: Option<&'static str>,
    /// For a provision: the list's id.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub list_id: Option<String>,
    /// For a provision: the columns as created.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub columns: Option<Value>,
    /// The target's message, for a failure.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The failure's class.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub class: Option<ErrorClass>,
    /// Seconds the target asked us to wait.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_after: Option<f64>,
    /// Whether the request may have reached the target (false: certainly not sent).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sent: Option<bool>,
}

impl OpResult {
    /// A success.
    pub fn ok(id: i64) -> Self {
        Self {
            id,
            ok: true,
            target_id: None,
            etag: None,
            join_type: None,
            list_id: None,
            columns: None,
            error: None,
            class: None,
            retry_after: None,
            sent: None,
        }
    }

    /// A failure.
    pub fn failed(id: i64, class: ErrorClass, error: impl Into<String>, sent: bool) -> Self {
        Self {
            ok: false,
            error: Some(clean_message(&error.into())),
            class: Some(class),
            sent: Some(sent),
            ..Self::ok(id)
        }
    }
}

/// A target's message made fit for a PostgreSQL text column and a log line:
/// control characters (NUL above all, which text cannot hold) become `?`,
/// and it is cut at 2,000 characters.
pub fn clean_message(s: &str) -> String {
    s.chars().take(2000).map(|c| if c.is_control() && c != '\n' && c != '\t' { '?' } else { c }).collect()
}

/// A target's health, as the worker reports it in `sync.targets.status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    /// Requests go through.
    Ok,
    /// The target is throttling us.
    Throttled,
    /// The target cannot be reached or answers 5xx.
    Unreachable,
    /// Authentication fails.
    AuthFailed,
}

impl Health {
    /// The `sync.targets.status` spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Health::Ok => "ok",
            Health::Throttled => "throttled",
            Health::Unreachable => "unreachable",
            Health::AuthFailed => "auth_failed",
        }
    }
}

/// A system syncbridge writes to.
pub trait Target: Send + Sync {
    /// How many exports one call to [`Target::apply`] should get.
    fn batch_size(&self) -> usize;

    /// Carries out the exports, one result per export (same ids, any order).
    /// Never fails as a whole: a failure is reported per export.
    fn apply<'a>(&'a self, exports: &'a [Export], context: &'a ApplyContext) -> BoxFuture<'a, Vec<OpResult>>;

    /// The target's health as last seen, with a message.
    fn health(&self) -> (Health, String);

    /// One cheap request that succeeds when the target answers again after
    /// an outage (the exporter claims nothing meanwhile). Err: why not.
    fn probe(&self) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(async { Ok(()) })
    }
}

/// What the exporter knows that an adapter may need: list ids by name, and
/// the lists of referenced definitions.
#[derive(Debug, Default, Clone)]
pub struct ApplyContext {
    /// (definition, list name) → the list's id on the target.
    pub list_ids: std::collections::HashMap<(String, String), String>,
    /// definition → the id of (one of) its lists, for lookup columns.
    pub definition_lists: std::collections::HashMap<String, String>,
    /// (definition, list name) → the list's columns as provisioned (or
    /// adopted): field name → kind (`text`, `note`, `number`, `boolean`,
    /// `dateTime`, `date`, `lookup`), so that each value goes out in the
    /// JSON type its column takes.
    pub columns: std::collections::HashMap<(String, String), std::collections::HashMap<String, String>>,
}

/// The kind of one provisioned column, from either form `sync.target_lists.columns`
/// holds: syncbridge's (`{"name", "kind", "reference"}`) or the target's
/// column definition as created (`{"name", "text": {…}}`, `"number"`, …).
pub fn column_kind(c: &Value) -> Option<(String, String)> {
    let name = c.get("name")?.as_str()?.to_owned();
    if c.get("reference").is_some_and(|r| !r.is_null()) || c.get("lookup").is_some() {
        return Some((name, "lookup".into()));
    }
    if let Some(k) = c.get("kind").and_then(Value::as_str) {
        return Some((name, k.to_owned()));
    }
    let kind = if let Some(t) = c.get("text") {
        if t.get("allowMultipleLines").and_then(Value::as_bool) == Some(true) {
            "note"
        } else {
            "text"
        }
    } else if c.get("number").is_some() {
        "number"
    } else if c.get("boolean").is_some() {
        "boolean"
    } else if let Some(d) = c.get("dateTime") {
        if d.get("format").and_then(Value::as_str) == Some("dateOnly") {
            "date"
        } else {
            "dateTime"
        }
    } else {
        return None;
    };
    Some((name, kind.to_owned()))
}

/// Why a target could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TargetSetupError {
    /// A configuration key is missing or wrong, or a URL is not allowed by
    /// the worker's policy.
    #[error("target {target}: {message}")]
    Config {
        /// The target's name.
        target: String,
        /// What is wrong.
        message: String,
    },
    /// The secret reference is outside the worker's policy: nothing was read.
    #[error("target {target}: this worker does not read secrets from {reference}: {reason} (hint: {hint})")]
    SecretRefused {
        /// The target's name.
        target: String,
        /// The reference (never the secret).
        reference: String,
        /// Why.
        reason: String,
        /// What to do.
        hint: String,
    },
    /// The secret could not be read.
    #[error("target {target}: cannot read its secret from {reference}: {reason} (hint: {hint})")]
    Secret {
        /// The target's name.
        target: String,
        /// The reference (never the secret).
        reference: String,
        /// Why.
        reason: String,
        /// What to do.
        hint: String,
    },
    /// The kind has no adapter yet.
    #[error("target {target}: kind {kind} has no adapter in this worker yet")]
    Unsupported {
        /// The target's name.
        target: String,
        /// Its kind.
        kind: String,
    },
}

impl TargetSetupError {
    /// The `sync.targets.status` it leaves the target in: `auth_failed` when
    /// an allowed secret reference gave no secret, `misconfigured` for
    /// everything the configuration must change (a reference or a URL the
    /// worker's policy refuses included).
    pub fn status(&self) -> &'static str {
        match self {
            TargetSetupError::Secret { .. } => "auth_failed",
            TargetSetupError::Config { .. }
            | TargetSetupError::SecretRefused { .. }
            | TargetSetupError::Unsupported { .. } => "misconfigured",
        }
    }
}

/// How long reading a secret may take before the target is given up.
const SECRET_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Reads a secret reference (`env:NAME` or `file:/path`) under `policy`, off
/// the async runtime. The value is never logged; errors name the reference
/// only.
pub async fn resolve_secret(policy: &TargetPolicy, target: &str, reference: &str) -> Result<String, TargetSetupError> {
    let (p, r) = (policy.clone(), reference.to_owned());
    let read = tokio::task::spawn_blocking(move || p.resolve_secret(&r));
    let outcome = match tokio::time::timeout(SECRET_READ_TIMEOUT, read).await {
        Ok(Ok(outcome)) => outcome,
        Ok(Err(e)) => {
            Err(SecretError::Unreadable { reason: format!("reading failed: {e}"), hint: "see the log".into() })
        }
        Err(_) => Err(SecretError::Unreadable {
            reason: format!("reading took more than {}s", SECRET_READ_TIMEOUT.as_secs()),
            hint: "check the file system".into(),
        }),
    };
    outcome.map_err(|e| {
        let hint = e.hint().to_owned();
        let (target, reference) = (target.to_owned(), reference.to_owned());
        match e {
            SecretError::Refused { reason, .. } => TargetSetupError::SecretRefused { target, reference, reason, hint },
            SecretError::Unreadable { reason, .. } => TargetSetupError::Secret { target, reference, reason, hint },
        }
    })
}

/// Builds the adapter for a row of `sync.targets`: the configuration
/// (URLs against `policy`) is checked before the secret is read, so a
/// target pointing anywhere the policy does not allow never gets it.
/// `shutdown` (true: the worker is stopping) cuts waits short.
pub async fn build(
    name: &str,
    kind: &str,
    config: &Value,
    secret_ref: Option<&str>,
    policy: &TargetPolicy,
    shutdown: Option<tokio::sync::watch::Receiver<bool>>,
) -> Result<Box<dyn Target>, TargetSetupError> {
    match kind {
        "graph" => {
            let settings = graph::GraphSettings::from_config(name, config, policy)?;
            let Some(reference) = secret_ref else {
                let example = format!("env:{}GRAPH", policy::ENV_PREFIX);
                return Err(TargetSetupError::Config {
                    target: name.to_owned(),
                    message: format!(
                        "a graph target needs a client secret: SELECT sync.alter_target(name, secret => '{example}')"
                    ),
                });
            };
            let secret = resolve_secret(policy, name, reference).await?;
            Ok(Box::new(graph::GraphTarget::new(settings, secret, shutdown)?))
        }
        other => Err(TargetSetupError::Unsupported { target: name.to_owned(), kind: other.to_owned() }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn setup_failures_say_whether_the_secret_or_the_configuration_is_wrong() {
        let cfg = serde_json::json!({"tenant_id": "t", "client_id": "c", "site_id": "s"});
        let policy = TargetPolicy::default();
        let status = |kind: &'static str, secret: Option<&'static str>, cfg: Value| {
            let policy = policy.clone();
            async move {
                match build("x", kind, &cfg, secret, &policy, None).await {
                    Ok(_) => "built",
                    Err(e) => e.status(),
                }
            }
        };
        assert_eq!(status("github", None, cfg.clone()).await, "misconfigured");
        assert_eq!(status("graph", None, cfg.clone()).await, "misconfigured");
        // An allowed reference with nothing behind it: the credentials are missing.
        assert_eq!(
            status("graph", Some("env:SYNCBRIDGE_SECRET_TEST_NO_SUCH_VARIABLE"), cfg.clone()).await,
            "auth_failed"
        );
        assert_eq!(status("graph", Some("file:/etc/syncbridge/secrets/nonexistent"), cfg.clone()).await, "auth_failed");
        // References and URLs the worker's policy refuses: the configuration must change.
        assert_eq!(status("graph", Some("env:SYNCBRIDGE_TEST_NO_SUCH_VARIABLE"), cfg.clone()).await, "misconfigured");
        assert_eq!(status("graph", Some("env:PGPASSWORD"), cfg.clone()).await, "misconfigured");
        assert_eq!(status("graph", Some("file:/nonexistent/syncbridge/secret"), cfg.clone()).await, "misconfigured");
        assert_eq!(status("graph", Some("file:/proc/self/environ"), cfg.clone()).await, "misconfigured");
        std::env::set_var("SYNCBRIDGE_SECRET_TEST_SETUP", "s");
        let mut local = cfg.clone();
        local["authority_url"] = "http://127.0.0.1:9".into();
        assert_eq!(status("graph", Some("env:SYNCBRIDGE_SECRET_TEST_SETUP"), local).await, "misconfigured");
        assert_eq!(status("graph", Some("env:SYNCBRIDGE_SECRET_TEST_SETUP"), cfg.clone()).await, "built");
    }

    #[test]
    fn results_serialize_as_sync_complete_reads_them() {
        let ok = OpResult { target_id: Some("7".into()), etag: Some("\"e,1\"".into()), ..OpResult::ok(3) };
        assert_eq!(
            serde_json::to_value(&ok).unwrap(),
            serde_json::json!({"id": 3, "ok": true, "target_id": "7", "etag": "\"e,1\""})
        );
        let f = OpResult { retry_after: Some(2.0), ..OpResult::failed(4, ErrorClass::Throttled, "slow down", false) };
        assert_eq!(
            serde_json::to_value(&f).unwrap(),
            serde_json::json!({"id": 4, "ok": false, "error": "slow down", "class": "throttled", "retry_after": 2.0, "sent": false})
        );
    }

    #[test]
    fn messages_lose_nul_and_control_characters() {
        assert_eq!(clean_message("bad\u{0}gate\u{7}way\nnext"), "bad?gate?way\nnext");
        assert_eq!(clean_message(&"x".repeat(5000)).len(), 2000);
        let r = OpResult::failed(1, ErrorClass::Transient, "a\u{0}b", true);
        assert_eq!(r.error.as_deref(), Some("a?b"));
    }

    #[tokio::test]
    async fn secrets_come_from_env_or_file_and_errors_never_show_them() {
        std::env::set_var("SYNCBRIDGE_SECRET_TEST_X", "hunter2");
        let dir = std::env::temp_dir().join(format!("sb-secret-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let policy = TargetPolicy { secrets_dir: dir.clone(), ..TargetPolicy::default() };
        assert_eq!(resolve_secret(&policy, "t", "env:SYNCBRIDGE_SECRET_TEST_X").await.unwrap(), "hunter2");
        let e = resolve_secret(&policy, "t", "env:SYNCBRIDGE_SECRET_TEST_MISSING").await.unwrap_err().to_string();
        assert!(e.contains("env:SYNCBRIDGE_SECRET_TEST_MISSING") && e.contains("not set"), "{e}");
        std::fs::write(dir.join("s"), "s3cr3t\n").unwrap();
        assert_eq!(resolve_secret(&policy, "t", &format!("file:{}", dir.join("s").display())).await.unwrap(), "s3cr3t");
        std::fs::remove_dir_all(&dir).unwrap();
        let e = resolve_secret(&policy, "t", "plain").await.unwrap_err().to_string();
        assert!(!e.contains("hunter2"));
    }
}
