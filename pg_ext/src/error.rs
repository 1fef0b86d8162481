//! Every error the extension raises from Rust: one enum, each variant with a
//! SQLSTATE, a message, a detail and a hint.

use pgrx::pg_sys::panic::ErrorReport;
use pgrx::{PgLogLevel, PgSqlErrorCode};

/// The errors raised by syncbridge's Rust functions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SyncError {
    /// A secret was given where only a reference to one is accepted.
    InlineSecret { what: String },
    /// A secret reference that is not `env:NAME` or `file:/path`.
    BadSecretRef { given: String },
    /// A configuration key holds what looks like a secret.
    SecretInConfig { key: String },
    /// A configuration that is not a flat object of plain keys.
    BadConfig { key: Option<String>, reason: String },
    /// An SQL expression (row filter, shard predicate, transform) that is not
    /// one plain expression.
    BadExpression { what: String, reason: String },
    /// An expression that calls or reads what expressions may not: a
    /// function outside pg_catalog, a volatile or stable one, a system
    /// column, a session value.
    ForbiddenInExpression { what: String, reason: String },
    /// An aggregate, window or set-returning function: one row maps to one value.
    UnsupportedInExpression { what: String, reason: String },
    /// An unknown setting name.
    UnknownSetting { name: String },
    /// A cron expression that does not parse (or never fires).
    BadCron { expr: String, reason: String },
    /// A time zone the schedule evaluator does not know.
    UnknownTimeZone { name: String },
    /// A standby snapshot asked for where none can be written.
    NoStandbySnapshot { reason: String },
}

impl SyncError {
    fn parts(&self) -> (PgSqlErrorCode, String, String, String) {
        use PgSqlErrorCode::*;
        match self {
            SyncError::NoStandbySnapshot { reason } => (
                ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
                format!("cannot log a standby snapshot: {reason}"),
                "A standby snapshot (a running-transactions record) is written on a primary with wal_level replica or logical."
                    .into(),
                "Call it on the primary the worker streams from.".into(),
            ),
            SyncError::InlineSecret { what } => (
                ERRCODE_INVALID_PARAMETER_VALUE,
                format!("inline secrets are refused ({what})"),
                "syncbridge stores only references to secrets, never secrets: tables end up in dumps, replicas and logs."
                    .into(),
                "Put the secret in the worker's environment or in a file on the worker's machine and pass \
                 secret => 'env:NAME' or secret => 'file:/path'."
                    .into(),
            ),
            SyncError::BadSecretRef { given } => (
                ERRCODE_INVALID_PARAMETER_VALUE,
                "invalid secret reference".into(),
                format!(
                    "A secret reference is env:NAME (NAME: letters, digits, underscores) or file:/absolute/path; got {}.",
                    redact(given)
                ),
                "Example: secret => 'env:SYNCBRIDGE_SECRET_SP' (the worker reads only variables named SYNCBRIDGE_SECRET_*).".into(),
            ),
            SyncError::SecretInConfig { key } => (
                ERRCODE_INVALID_PARAMETER_VALUE,
                format!("configuration key {} looks like a secret", serde_json::Value::String(key.clone())),
                "Target configuration is stored in sync.targets in plain text; secrets are refused there.".into(),
                "Remove the key from config and pass the secret as a reference: secret => 'env:NAME' or 'file:/path'."
                    .into(),
            ),
            SyncError::BadConfig { key, reason } => (
                ERRCODE_INVALID_PARAMETER_VALUE,
                match key {
                    Some(k) => format!("invalid configuration key {}", serde_json::Value::String(k.clone())),
                    None => "invalid target configuration".into(),
                },
                format!("In a target configuration, {reason}."),
                "Example: config => '{\"tenant_id\": \"...\", \"budget_per_min\": 1250}'.".into(),
            ),
            SyncError::BadExpression { what, reason } => (
                ERRCODE_SYNTAX_ERROR,
                format!("invalid {what}"),
                reason.clone(),
                format!("A {what} is one SQL expression over the source row's columns, e.g. region = 'EU' AND NOT secret."),
            ),
            SyncError::ForbiddenInExpression { what, reason } => (
                ERRCODE_INSUFFICIENT_PRIVILEGE,
                format!("{what} refused: {reason}"),
                "Row filters, shard predicates and transforms may use the source row's columns, constants, and \
                 immutable functions and operators of pg_catalog only (not pg_*, lo_*, *_to_xml, volatile or stable \
                 functions, nothing outside pg_catalog); they are evaluated by the role syncbridge_reader."
                    .into(),
                "Use built-in immutable functions (upper, coalesce, round, ...); compute anything else in a \
                 generated column of the table and map that column."
                    .into(),
            ),
            SyncError::UnsupportedInExpression { what, reason } => (
                ERRCODE_FEATURE_NOT_SUPPORTED,
                format!("{what} refused: {reason}"),
                "Each row maps to one value: aggregates, window functions and set-returning functions have no \
                 meaning there."
                    .into(),
                "Compute the value per row, or in a generated column of the table.".into(),
            ),
            SyncError::UnknownSetting { name } => (
                ERRCODE_UNDEFINED_OBJECT,
                format!("unknown syncbridge setting \"{name}\""),
                "syncbridge's settings are listed by SELECT * FROM sync.settings().".into(),
                "Use one of the names sync.settings() shows, without the sync. prefix.".into(),
            ),
            SyncError::BadCron { expr, reason } => (
                ERRCODE_INVALID_PARAMETER_VALUE,
                format!("invalid cron expression {}", serde_json::Value::String(expr.chars().take(100).collect())),
                format!("{reason}."),
                "Five fields as in crontab(5): minute hour day-of-month month day-of-week, e.g. '30 2 * * *' (02:30 \
                 every day) or '*/15 * * * 1-5'; or @hourly, @daily, @weekly, @monthly, @yearly."
                    .into(),
            ),
            SyncError::UnknownTimeZone { name } => (
                ERRCODE_INVALID_PARAMETER_VALUE,
                format!("unknown time zone {}", serde_json::Value::String(name.chars().take(100).collect())),
                "Schedules are read in an IANA time zone (tz database name).".into(),
                "SELECT name FROM pg_timezone_names; e.g. Europe/Paris, America/New_York, UTC.".into(),
            ),
        }
    }

    /// Raises the error (never returns).
    pub fn raise(self) -> ! {
        let (code, message, detail, hint) = self.parts();
        ErrorReport::new(code, message, "syncbridge").set_detail(detail).set_hint(hint).report(PgLogLevel::ERROR);
        unreachable!("ERROR-level reports do not return")
    }
}

/// Shows the shape of a rejected value without showing the value (it may be a secret).
pub fn redact(s: &str) -> String {
    let n = s.chars().count();
    let head: String = s.chars().take_while(|c| *c != ':').take(8).collect();
    if s.contains(':') && head.len() < 8 {
        format!("a value starting with \"{head}:\" ({n} characters)")
    } else {
        format!("a value of {n} characters")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redact_never_shows_the_value() {
        let r = redact("s3cr3t-Value-123");
        assert!(!r.contains("s3cr3t"));
        assert_eq!(r, "a value of 16 characters");
        assert_eq!(redact("vault:x/y"), "a value starting with \"vault:\" (9 characters)");
    }
}
