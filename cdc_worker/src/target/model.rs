//! The model every adapter speaks, in target-neutral words: a *container*
//! (Graph: a list) holds *items* (list items, issues, entries) made of
//! *fields* (columns); an [`Export`] asks for one change, an [`OpResult`]
//! says how it went.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// What a claimed export asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Op {
    /// Create a container and its fields (Graph: a list and its columns).
    Provision,
    /// Create an item.
    Add,
    /// Change fields of an item.
    Update,
    /// Remove an item.
    Delete,
    /// Move an item to another container (shard): natively, or create there
    /// and delete here, as the kind's capabilities say.
    Move,
    /// Disable an item before its deletion (a directory account: locked,
    /// perhaps moved aside); the delete follows after the definition's
    /// grace period. Only kinds whose capabilities say `disable` get it.
    Disable,
}

impl Op {
    /// As `sync.pending_exports.op` spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Op::Provision => "provision",
            Op::Add => "add",
            Op::Update => "update",
            Op::Delete => "delete",
            Op::Move => "move",
            Op::Disable => "disable",
        }
    }
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
    /// The container the item belongs in (Graph: the list's display name).
    #[serde(rename = "list")]
    pub container: String,
    /// For a move: the container it leaves.
    #[serde(rename = "from_list")]
    pub from_container: Option<String>,
    /// The item's id on the target, when it has one.
    pub target_id: Option<String>,
    /// The item's last known eTag: set for two-way definitions only, and
    /// then sent as `If-Match` with updates and deletes.
    pub etag: Option<String>,
    /// Fields to write (target column names → values); references are
    /// objects `{"@ref": key, "@def": definition, "target_id": id}`; for a
    /// provision: `{"list": name, "columns": [...]}`.
    pub payload: Option<Value>,
    /// Attempts so far (this one included).
    pub attempts: i32,
    /// An earlier attempt may have reached the target: look before creating.
    pub verify: bool,
    /// The ledger says the item is disabled (an [`Op::Disable`] went out and
    /// the row came back within the grace period): an update re-enables it.
    #[serde(default)]
    pub disabled: bool,
    /// Fields whose values the write's answer should report back
    /// ([`OpResult::fields`]): pull-only system fields mapped to columns.
    #[serde(default, deserialize_with = "null_as_empty")]
    pub read_back: Vec<String>,
    /// What the target held before, as staged: the old values of the
    /// changed fields (update), or of the whole item (delete, move); None
    /// for an add, or when the extension has none.
    #[serde(default)]
    pub previous: Option<Value>,
    /// The row's key as an object of its key columns (their texts, as the
    /// table holds them); None for a provision.
    #[serde(default)]
    pub key_values: Option<Value>,
    /// The WAL position of the last change staged into the export (None:
    /// a full sync, a resync or a reconcile staged it).
    #[serde(default)]
    pub staged_lsn: Option<String>,
    /// The run that staged it (`sync.runs.id`), when known.
    #[serde(default)]
    pub staged_run: Option<i64>,
    /// When it was first staged: UTC, RFC 3339 (`2025-05-01T12:00:00.000000Z`).
    #[serde(default)]
    pub staged_at: Option<String>,
}

/// A JSON array of strings, with NULL (absent) read as empty.
fn null_as_empty<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    Ok(Option::<Vec<String>>::deserialize(d)?.unwrap_or_default())
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
    /// The item changed on the target since its last known eTag (412 to an
    /// `If-Match`): not a failure but a remote change, to pull and decide.
    Conflict,
}

impl ErrorClass {
    /// Every class, as `sync.pending_exports.error_class` spells them.
    pub const ALL: [ErrorClass; 5] =
        [ErrorClass::Transient, ErrorClass::Throttled, ErrorClass::Auth, ErrorClass::Definite, ErrorClass::Conflict];

    /// The spelling `sync.complete` and `sync.pull_failed` take.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorClass::Transient => "transient",
            ErrorClass::Throttled => "throttled",
            ErrorClass::Auth => "auth",
            ErrorClass::Definite => "definite",
            ErrorClass::Conflict => "conflict",
        }
    }
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
    /// The export's `read_back` fields as the write's answer gave them (a
    /// field the answer lacks: null); None when none were asked for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fields: Option<serde_json::Map<String, Value>>,
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
            fields: None,
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
    /// Every health (`sync.targets.status` also holds `unknown`, before any
    /// report, and `misconfigured`, a target the worker cannot set up).
    pub const ALL: [Health; 4] = [Health::Ok, Health::Throttled, Health::Unreachable, Health::AuthFailed];

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

/// What the exporter knows that an adapter may need: container ids by name,
/// and the containers of referenced definitions.
#[derive(Debug, Default, Clone)]
pub struct ApplyContext {
    /// (definition, container name) → the container's id on the target.
    pub container_ids: std::collections::HashMap<(String, String), String>,
    /// definition → the id of (one of) its containers, for references.
    pub definition_containers: std::collections::HashMap<String, String>,
    /// (definition, container name) → its fields as provisioned (or
    /// adopted): field name → kind (`text`, `note`, `number`, `boolean`,
    /// `dateTime`, `date`, `lookup`), so that each value goes out in the
    /// JSON type its field takes.
    pub fields: std::collections::HashMap<(String, String), std::collections::HashMap<String, String>>,
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

/// What one pull request asks for: the next page of a container's changes.
#[derive(Debug, Clone)]
pub struct PullRequest {
    /// The definition the read is for: a container several definitions
    /// write to (a repository, a Jira project, a Linear team) holds items of
    /// each, and an adapter returns only this one's (by its marker).
    pub definition: String,
    /// The container's id on the target (Graph: the list's id; kinds whose
    /// containers exist already: the list's name, e.g. the repository).
    pub container_id: String,
    /// The link the target gave last time (a next page, or the changes since
    /// the last complete read), replayed as it is; None: a fresh, full read.
    pub link: Option<String>,
    /// The fields to read (None or empty: all of them).
    pub fields: Vec<String>,
    /// Items per page asked for (the target may give fewer).
    pub page_size: u32,
}

/// One page of a container's changes.
#[derive(Debug, Clone, PartialEq)]
pub struct PullPage {
    /// The items, in the target-neutral form `sync.pull_page` takes:
    /// `{"id", "etag", "deleted", "modified", "fields"}`.
    pub items: Vec<Value>,
    /// The link to replay next: the next page's (`last` false), or the one
    /// that reads the changes after this read (`last` true).
    pub link: String,
    /// This page ends the read.
    pub last: bool,
}

/// Why a pull request gave no page.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PullError {
    /// The target no longer knows the link's state (Graph: 410 Gone): the
    /// next read is a fresh, full one.
    #[error("{0}")]
    Resync(String),
    /// A link that leads elsewhere than the target's own API: never
    /// followed (the token would go with it), and thrown away.
    #[error("{0}")]
    LinkRefused(String),
    /// Anything else, classified as export failures are.
    #[error("{message}")]
    Failed {
        /// How to treat it.
        class: ErrorClass,
        /// What happened (no secret, no token).
        message: String,
        /// Seconds the target asked us to wait.
        retry_after: Option<f64>,
    },
}

impl PullError {
    /// The class `sync.pull_failed` records: a resync is transient (the
    /// fresh read follows at once), a refused link definite.
    pub fn class(&self) -> ErrorClass {
        match self {
            PullError::Resync(_) => ErrorClass::Transient,
            PullError::LinkRefused(_) => ErrorClass::Definite,
            PullError::Failed { class, .. } => *class,
        }
    }

    /// Whether the stored link must be thrown away (the next read is full).
    pub fn resync(&self) -> bool {
        matches!(self, PullError::Resync(_) | PullError::LinkRefused(_))
    }

    /// Seconds the target asked us to wait.
    pub fn retry_after(&self) -> Option<f64> {
        match self {
            PullError::Failed { retry_after, .. } => *retry_after,
            _ => None,
        }
    }
}
