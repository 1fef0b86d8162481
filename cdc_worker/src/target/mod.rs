//! Targets: the systems syncbridge writes to, behind one trait.
//!
//! The exporter claims exports from `sync.claim`, hands them to a [`Target`]
//! and reports one [`OpResult`] per export to `sync.complete`. An adapter
//! owns its authentication, request shaping (batching), rate limit and error
//! classification; it never decides *what* to send (the extension did).

pub mod github;
pub mod graph;
pub mod http;
pub mod jira;
pub mod ldap;
pub mod linear;
pub mod model;
pub mod policy;
pub mod registry;
pub mod webhook;

pub use model::{
    clean_message, column_kind, ApplyContext, ErrorClass, Export, Health, Op, OpResult, PullError, PullPage,
    PullRequest,
};
pub use policy::{Redactor, SecretError, TargetPolicy};
pub use registry::build;

use std::future::Future;
use std::pin::Pin;

/// The `sync.targets.status` of a target that asked to be disabled
/// ([`Target::take_disable_request`]): it holds until `sync.enable_target`.
pub const DISABLED_STATUS: &str = "disabled";

/// A boxed future, for object-safe async trait methods.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A system syncbridge writes to.
pub trait Target: Send + Sync {
    /// How many exports one call to [`Target::apply`] should get.
    fn batch_size(&self) -> usize;

    /// Carries out the exports, one result per export (same ids, any order).
    /// Never fails as a whole: a failure is reported per export.
    fn apply<'a>(&'a self, exports: &'a [Export], context: &'a ApplyContext) -> BoxFuture<'a, Vec<OpResult>>;

    /// What the kind can do (see [`registry`]).
    fn capabilities(&self) -> &'static registry::Capabilities;

    /// The target's health as last seen, with a message.
    fn health(&self) -> (Health, String);

    /// Pays every request from now on from `source` too: the target's budget
    /// shared by every exporter of every worker. Kinds without a request
    /// budget ignore it.
    fn share_budget(&self, _source: std::sync::Arc<dyn http::BudgetSource>) {}
    /// Whether the target asked to be disabled since this was last asked
    /// (a webhook receiver's `410 Gone`): the reason, once. The exporter
    /// records it (`sync.report_target_status(..., 'disabled', reason)`)
    /// before the results of the batch, so that nothing more is claimed
    /// for the target until an operator runs `sync.enable_target`.
    fn take_disable_request(&self) -> Option<String> {
        None
    }

    /// One cheap request that succeeds when the target answers again after
    /// an outage (the exporter claims nothing meanwhile). Err: why not.
    fn probe(&self) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(async { Ok(()) })
    }

    /// Reads ONE page of a container's changes (two-way sync), paid from
    /// the same budget as the writes. Kinds that cannot pull refuse.
    fn pull<'a>(&'a self, _request: &'a PullRequest) -> BoxFuture<'a, Result<PullPage, PullError>> {
        Box::pin(async {
            Err(PullError::Failed {
                class: ErrorClass::Definite,
                message: "this kind of target cannot read changes back".into(),
                retry_after: None,
            })
        })
    }
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

#[cfg(test)]
mod tests {
    use serde_json::Value;

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
    fn error_classes_are_spelled_as_serialized() {
        for c in ErrorClass::ALL {
            assert_eq!(serde_json::to_value(c).unwrap(), c.as_str());
        }
        for op in [Op::Provision, Op::Add, Op::Update, Op::Delete, Op::Move] {
            assert_eq!(serde_json::to_value(op).unwrap(), op.as_str());
            assert!(crate::metrics::EXPORT_OPS.contains(&op.as_str()));
        }
        for c in ErrorClass::ALL {
            assert!(crate::metrics::EXPORT_OUTCOMES.contains(&c.as_str()));
        }
        assert!(ErrorClass::ALL.contains(&ErrorClass::Conflict));
        let r = OpResult {
            fields: Some(serde_json::Map::from_iter([("ID".to_owned(), serde_json::json!(5))])),
            ..OpResult::ok(1)
        };
        assert_eq!(serde_json::to_value(&r).unwrap(), serde_json::json!({"id": 1, "ok": true, "fields": {"ID": 5}}));
    }

    #[test]
    fn pull_errors_say_whether_the_next_read_is_full() {
        let resync = PullError::Resync("410".into());
        assert_eq!((resync.class(), resync.resync()), (ErrorClass::Transient, true));
        let refused = PullError::LinkRefused("elsewhere".into());
        assert_eq!((refused.class(), refused.resync()), (ErrorClass::Definite, true));
        let slow = PullError::Failed { class: ErrorClass::Throttled, message: "429".into(), retry_after: Some(3.0) };
        assert_eq!((slow.class(), slow.resync(), slow.retry_after()), (ErrorClass::Throttled, false, Some(3.0)));
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
