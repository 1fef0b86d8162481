//! Jira Cloud issues through the REST API v3.
//!
//! - Auth: HTTP Basic with an Atlassian account's e-mail and an API token:
//!   the secret reference holds the token and the configuration the e-mail
//!   (`email`), or the secret holds `email:api_token` whole. Nothing to
//!   renew: a 401 is an `auth` failure at once.
//! - Creates go in bulk (`POST /rest/api/3/issue/bulk`, at most 50 issues);
//!   Jira answers per element (`issues` for those created, in order, and
//!   `errors[].failedElementNumber` for the others): a refused element is a
//!   definite error with Jira's message, the others are done. Updates are
//!   `PUT /rest/api/3/issue/{id}` (204), deletes `DELETE …/issue/{id}` (204;
//!   404: gone already). A `status` field is not written but reached by the
//!   workflow transition that leads to it (`GET …?expand=transitions`, then
//!   `POST …/transitions`).
//! - Identity: every issue carries the label `sb-<32 hex digits>` (a hash of
//!   the definition and the row's key) and the issue property `syncbridge`
//!   (`{definition, container, key}`). Jira cannot search properties
//!   without an app, so a create whose answer was lost is looked up by its
//!   label with JQL (`/rest/api/3/search/jql`, returning the property to
//!   verify the key), and the issue found is adopted. Search is eventually
//!   consistent: when nothing is found, the export is reported `transient`
//!   (sent) and its next attempt looks again before it creates. Every bulk
//!   create is preceded by one such search (one request per 50 creates).
//! - Fields (the definition's field names): `summary` (default: the row's
//!   key), `description` (text converted to Atlassian Document Format, see
//!   [`adf`]), `labels` (an array, or text split on commas and spaces),
//!   `priority` and `issuetype` (by name), `assignee` (an account id),
//!   `duedate` (a date), `status` (by name, through a transition); any other
//!   name (`customfield_10010`, …) goes as it is.
//! - The budget (requests a minute, default 100) paces every request;
//!   `Retry-After` of a 429 or 503 pauses the target (see `target/http`).

pub mod adf;
pub mod pull;

use std::collections::{BTreeSet, HashMap};

use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use serde_json::{json, Map, Value};

use super::http::{Budget, Cost, Failure, HttpClient, HttpSettings, MAX_TIMEOUT_MS};
use super::registry::Capabilities;
use super::{
    ApplyContext, BoxFuture, ErrorClass, Export, Health, Op, OpResult, PullError, PullPage, PullRequest, Target,
    TargetPolicy, TargetSetupError,
};

/// Most issues in one bulk create.
pub const BULK_LIMIT: usize = 50;
/// What a created issue costs in requests: a bulk create of [`BULK_LIMIT`],
/// the twin search before it and the search that reads the new issues'
/// `updated` after it, three requests per 50 issues
/// (`sync.target_kinds.item_costs`).
pub const BULK_CREATE_COST: f64 = 3.0 / BULK_LIMIT as f64;
/// Requests a minute when the configuration sets none.
pub const DEFAULT_BUDGET_PER_MIN: u32 = 100;
/// The issue type of created issues when the configuration names none.
pub const DEFAULT_ISSUE_TYPE: &str = "Task";
/// The issue property holding the row's identity.
pub const PROPERTY_KEY: &str = "syncbridge";
/// The labels syncbridge puts on its issues start with it.
pub const LABEL_PREFIX: &str = "sb-";
/// How long to wait before searching again for issues an earlier attempt
/// may have created (search is eventually consistent).
const SEARCH_WAITS: [std::time::Duration; 3] =
    [std::time::Duration::from_secs(1), std::time::Duration::from_secs(2), std::time::Duration::from_secs(4)];
/// Issues per search page.
const SEARCH_PAGE: u32 = 100;

/// Characters kept as they are in a path segment or query value.
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'_').remove(b'.').remove(b'~');

/// What Jira can do.
pub const JIRA_CAPABILITIES: Capabilities = Capabilities {
    containers: super::registry::Containers::Existing,
    delete_mode: super::registry::DeleteMode::Remove,
    moves: super::registry::Moves::Unsupported,
    key_lookup: true,
    // Search by `updated`, with an overlap (see [`pull`]).
    pull: super::registry::Pull::UpdatedSince,
    disable: false,
};

/// A target's checked configuration.
#[derive(Debug, Clone)]
pub struct JiraSettings {
    /// The target's name.
    pub name: String,
    /// `https://{site}` or `base_url`, without a trailing slash.
    pub base_url: String,
    /// The project issues are created in.
    pub project_key: String,
    /// The Atlassian account's e-mail (None: the secret is `email:token`).
    pub email: Option<String>,
    /// The issue type of created issues.
    pub issue_type: String,
    /// Requests a minute.
    pub budget: u32,
    /// Per request.
    pub timeout_ms: u64,
    /// Only https.
    pub https_only: bool,
}

fn cfg_str<'a>(config: &'a Value, key: &str) -> Option<&'a str> {
    config.get(key).and_then(Value::as_str).filter(|s| !s.is_empty())
}

impl JiraSettings {
    /// Checks a target's configuration (before any secret is read).
    pub fn from_config(name: &str, config: &Value, policy: &TargetPolicy) -> Result<Self, TargetSetupError> {
        let bad = |message: String| TargetSetupError::Config { target: name.to_owned(), message };
        let site = cfg_str(config, "site").ok_or_else(|| bad("config lacks site".into()))?;
        let project_key = cfg_str(config, "project_key").ok_or_else(|| bad("config lacks project_key".into()))?;
        let default_base = if site.contains("://") { site.to_owned() } else { format!("https://{site}") };
        let base_url = cfg_str(config, "base_url").map_or(default_base, str::to_owned);
        let base_url = base_url.trim_end_matches('/').to_owned();
        let checked = policy.check_url("base_url", &base_url).map_err(bad)?;
        let budget = config
            .get("budget_per_min")
            .and_then(Value::as_f64)
            .filter(|b| b.is_finite())
            .map(|b| b.clamp(1.0, f64::from(u32::MAX)) as u32)
            .unwrap_or(DEFAULT_BUDGET_PER_MIN);
        let timeout_ms = config.get("timeout_ms").and_then(Value::as_u64).unwrap_or(30_000).clamp(1, MAX_TIMEOUT_MS);
        Ok(Self {
            name: name.to_owned(),
            base_url,
            project_key: project_key.to_owned(),
            email: cfg_str(config, "email").map(str::to_owned),
            issue_type: cfg_str(config, "issue_type").unwrap_or(DEFAULT_ISSUE_TYPE).to_owned(),
            budget,
            timeout_ms,
            https_only: checked.scheme() == "https",
        })
    }
}

/// The Jira adapter.
pub struct JiraTarget {
    client: HttpClient,
    project_key: String,
    issue_type: String,
}

impl std::fmt::Debug for JiraTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the credentials.
        f.debug_struct("JiraTarget").field("name", &self.client.name).field("base_url", &self.client.base_url).finish()
    }
}

/// Standard base64 (RFC 4648, with padding).
pub fn base64(bytes: &[u8]) -> String {
    const ABC: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ABC[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Jira's error envelope `{"errorMessages": [...], "errors": {field: message}}`
/// as a code (the fields) and a message.
fn jira_envelope(body: &Value) -> Option<(String, String)> {
    let obj = body.as_object()?;
    let messages = obj.get("errorMessages").and_then(Value::as_array);
    let errors = obj.get("errors").and_then(Value::as_object);
    if messages.is_none() && errors.is_none() {
        return None;
    }
    let mut parts: Vec<String> = messages.into_iter().flatten().filter_map(Value::as_str).map(str::to_owned).collect();
    let mut fields = Vec::new();
    for (k, v) in errors.into_iter().flatten() {
        fields.push(k.clone());
        parts.push(format!("{k}: {}", v.as_str().unwrap_or(&v.to_string())));
    }
    let code = if fields.is_empty() { "error".to_owned() } else { fields.join(",") };
    Some((code, parts.join("; ")))
}

/// FNV-1a, 64 bits, from `seed`: stable across versions and machines.
fn fnv1a(seed: u64, bytes: &[u8]) -> u64 {
    let mut h = seed;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// The label that marks the issue of `definition`'s row `key`:
/// `sb-` and 32 hex digits (two FNV-1a hashes of the pair).
pub fn marker_label(definition: &str, key: &str) -> String {
    // The definition's length first: no two pairs give the same bytes.
    let mut bytes = Vec::with_capacity(definition.len() + key.len() + 8);
    bytes.extend_from_slice(&(definition.len() as u64).to_be_bytes());
    bytes.extend_from_slice(definition.as_bytes());
    bytes.extend_from_slice(key.as_bytes());
    format!("{LABEL_PREFIX}{:016x}{:016x}", fnv1a(0xcbf2_9ce4_8422_2325, &bytes), fnv1a(0x6c62_272e_07bb_0142, &bytes))
}

/// The label every issue of `definition`'s list `container` carries (what
/// a pull searches by; an issue made in Jira joins the list with it):
/// `sb-list:<definition>/<container>`, white space as `_`, at most 255
/// characters.
pub fn list_label(definition: &str, container: &str) -> String {
    let label: String = format!("{LABEL_PREFIX}list:{definition}/{container}")
        .chars()
        .map(|c| if c.is_whitespace() { '_' } else { c })
        .collect();
    label.chars().take(255).collect()
}

/// A value as the text a Jira text field takes (numbers and booleans as
/// their JSON text; None for null).
fn as_text(v: &Value) -> Option<String> {
    match v {
        Value::Null => None,
        Value::String(s) => Some(s.clone()),
        Value::Array(_) | Value::Object(_) => Some(v.to_string()),
        other => Some(other.to_string()),
    }
}

/// The labels of a value: an array's strings, or text split on commas and
/// white space. Jira labels hold no spaces.
fn labels_of(v: &Value) -> Result<Vec<String>, String> {
    // An array column arrives as its JSON text.
    let parsed = v.as_str().filter(|s| s.trim_start().starts_with('[')).and_then(|s| serde_json::from_str(s).ok());
    let v = parsed.as_ref().unwrap_or(v);
    let raw: Vec<String> = match v {
        Value::Null => Vec::new(),
        Value::Array(a) => a.iter().filter_map(as_text).collect(),
        other => as_text(other)
            .unwrap_or_default()
            .split(|c: char| c == ',' || c.is_whitespace())
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect(),
    };
    for l in &raw {
        if l.chars().any(char::is_whitespace) {
            return Err(format!("the label {l:?} holds white space, which Jira labels cannot"));
        }
        if l.starts_with(LABEL_PREFIX) && l.len() == LABEL_PREFIX.len() + 32 {
            return Err(format!("the label {l:?} looks like syncbridge's own marker"));
        }
    }
    let mut seen = BTreeSet::new();
    Ok(raw.into_iter().filter(|l| seen.insert(l.clone())).collect())
}

/// The issue fields of an export's payload (without project and issue
/// type), and the status to reach by a transition.
#[derive(Debug, Clone, PartialEq)]
pub struct Mapped {
    /// Fields for a create or an edit (`labels` with syncbridge's two
    /// labels, when the payload has labels or for a create).
    pub fields: Map<String, Value>,
    /// The status wanted, by name.
    pub status: Option<String>,
    /// The payload writes the row's key (`SyncKey`: an issue made in Jira
    /// gets syncbridge's labels and property).
    pub identity: bool,
}

/// Maps an export's payload to Jira fields. `create`: nulls are left out
/// (an edit clears the field instead). An update's payload holds the
/// fields that changed only: the labels are written when they changed.
pub fn map_fields(e: &Export, create: bool) -> Result<Mapped, String> {
    let key = e.sync_key.clone().unwrap_or_default();
    let marker = marker_label(&e.definition, &key);
    let payload = e.payload.as_ref().and_then(Value::as_object).cloned().unwrap_or_default();
    let mut fields = Map::new();
    let mut status = None;
    let mut labels: Option<Vec<String>> = None;
    let mut identity = false;
    for (name, v) in &payload {
        if v.as_object().is_some_and(|o| o.contains_key("@ref")) {
            return Err(format!("field {name}: references are not supported by Jira targets"));
        }
        match name.as_str() {
            "summary" => {
                let s = as_text(v).unwrap_or_else(|| key.clone());
                fields.insert(name.clone(), Value::String(s));
            }
            "description" | "environment" => match as_text(v).as_deref().and_then(adf::to_adf) {
                Some(doc) => {
                    fields.insert(name.clone(), doc);
                }
                None if !create => {
                    fields.insert(name.clone(), Value::Null);
                }
                None => {}
            },
            "labels" => labels = Some(labels_of(v)?),
            "SyncKey" => identity = true,
            "status" => status = as_text(v).filter(|s| !s.trim().is_empty()),
            "priority" | "issuetype" => {
                if let Some(s) = as_text(v) {
                    fields.insert(name.clone(), json!({"name": s}));
                }
            }
            "assignee" | "reporter" => match as_text(v) {
                Some(s) => {
                    fields.insert(name.clone(), json!({"accountId": s}));
                }
                None if !create => {
                    fields.insert(name.clone(), Value::Null);
                }
                None => {}
            },
            "duedate" => match as_text(v) {
                Some(s) => {
                    let date: String = s.chars().take(10).collect();
                    fields.insert(name.clone(), Value::String(date));
                }
                None if !create => {
                    fields.insert(name.clone(), Value::Null);
                }
                None => {}
            },
            "project" | "key" | "id" => return Err(format!("field {name} is Jira's own and cannot be written")),
            _ => {
                if !(create && v.is_null()) {
                    fields.insert(name.clone(), v.clone());
                }
            }
        }
    }
    if create && !fields.contains_key("summary") {
        fields.insert("summary".into(), Value::String(key.clone()));
    }
    if create && labels.is_none() {
        labels = Some(Vec::new());
    }
    if let Some(mut labels) = labels {
        labels.push(marker);
        labels.push(list_label(&e.definition, &e.container));
        fields.insert("labels".into(), json!(labels));
    }
    Ok(Mapped { fields, status, identity })
}

/// Whether a write's answer says it was done: Jira answers edits,
/// transitions and deletes `204` without a body (a `2xx` with a body must
/// be JSON: anything else is a proxy's page or a broken answer, and the
/// write is sent again, being idempotent).
fn written(status: u16, text: &str) -> bool {
    status == 204
        || ((200..300).contains(&status) && (text.trim().is_empty() || serde_json::from_str::<Value>(text).is_ok()))
}

/// A write whose answer was 2xx but not Jira's.
fn unreadable(e: &Export, what: &str) -> OpResult {
    OpResult::failed(e.id, ErrorClass::Transient, format!("Jira's answer to the {what} cannot be read"), true)
}

/// One issue found by its marker label.
#[derive(Debug, Clone)]
struct Found {
    id: String,
    key: String,
}

/// How an export's main request ended.
enum Outcome {
    /// Done: the issue's id and key.
    Done { id: String, key: String },
    /// Failed.
    Failed(OpResult),
}

impl JiraTarget {
    /// Builds the adapter from the target's checked configuration and secret.
    pub fn new(
        settings: JiraSettings,
        secret: String,
        shutdown: Option<tokio::sync::watch::Receiver<bool>>,
    ) -> Result<Self, TargetSetupError> {
        let JiraSettings { name, base_url, project_key, email, issue_type, budget, timeout_ms, https_only } = settings;
        let credentials = match email {
            Some(email) => format!("{email}:{secret}"),
            None if secret.contains(':') => secret.clone(),
            None => {
                return Err(TargetSetupError::Config {
                    target: name,
                    message: "a jira target needs the account's e-mail: set config email, or make the secret \
                              email:api_token"
                        .into(),
                })
            }
        };
        let header = format!("Basic {}", base64(credentials.as_bytes()));
        // The token (what follows the e-mail) is what must never show.
        let token = credentials.split_once(':').map_or(credentials.as_str(), |(_, t)| t).to_owned();
        let auth = super::http::Auth::Fixed { header, secret: token };
        // A burst of a few requests: Jira's limits are per second and unpublished.
        let budget = Budget::new(budget, 10, None, 1);
        let http = HttpSettings { name, service: "Jira", base_url, timeout_ms, https_only, envelope: jira_envelope };
        Ok(Self { client: HttpClient::new(http, auth, budget, shutdown)?, project_key, issue_type })
    }

    const ONE: Cost = Cost { units: 1, writes: 0 };
    const WRITE: Cost = Cost { units: 1, writes: 1 };

    fn failed(&self, e: &Export, class: ErrorClass, message: String, sent: bool) -> OpResult {
        OpResult::failed(e.id, class, self.client.redact(&message), sent)
    }

    /// The verdict of a non-2xx answer to a single-issue request.
    fn refused(&self, e: &Export, what: &str, status: u16, text: &str) -> OpResult {
        let class = match status {
            409 => ErrorClass::Transient,
            s if s >= 500 => ErrorClass::Transient,
            _ => ErrorClass::Definite,
        };
        let msg = format!("Jira refused the {what} (HTTP {status}){}", self.client.api_error_text(text));
        self.failed(e, class, msg, status >= 500 || status == 409)
    }

    /// Issues carrying any of `labels` in the project, with their
    /// `syncbridge` property: marker label → the issues found for it, keyed
    /// by the row key their property names.
    async fn search_labels(&self, labels: &[String]) -> Result<HashMap<String, Vec<(Found, Value)>>, Failure> {
        let mut out: HashMap<String, Vec<(Found, Value)>> = HashMap::new();
        for chunk in labels.chunks(BULK_LIMIT) {
            let list: Vec<String> = chunk.iter().map(|l| format!("\"{l}\"")).collect();
            let jql = format!(
                "project = \"{}\" AND labels in ({}) ORDER BY key ASC",
                self.project_key.replace('\\', "\\\\").replace('"', "\\\""),
                list.join(", ")
            );
            let mut token: Option<String> = None;
            loop {
                let mut body = json!({
                    "jql": jql, "maxResults": SEARCH_PAGE, "fields": ["labels"], "properties": [PROPERTY_KEY],
                });
                if let Some(t) = &token {
                    body["nextPageToken"] = Value::String(t.clone());
                }
                let page = self.read_json(reqwest::Method::POST, "/rest/api/3/search/jql", Some(&body)).await?;
                for issue in page.get("issues").and_then(Value::as_array).into_iter().flatten() {
                    let (Some(id), Some(key)) =
                        (issue.get("id").and_then(Value::as_str), issue.get("key").and_then(Value::as_str))
                    else {
                        continue;
                    };
                    let prop = issue.pointer(&format!("/properties/{PROPERTY_KEY}")).cloned().unwrap_or(Value::Null);
                    for l in issue.pointer("/fields/labels").and_then(Value::as_array).into_iter().flatten() {
                        if let Some(l) = l.as_str().filter(|l| chunk.iter().any(|c| c == l)) {
                            let found = Found { id: id.to_owned(), key: key.to_owned() };
                            out.entry(l.to_owned()).or_default().push((found, prop.clone()));
                        }
                    }
                }
                let last = page.get("isLast").and_then(Value::as_bool).unwrap_or(true);
                token = page.get("nextPageToken").and_then(Value::as_str).map(str::to_owned);
                if last || token.is_none() {
                    break;
                }
            }
        }
        Ok(out)
    }

    /// A read whose answer must be JSON: retried (a read may be sent again)
    /// until it is, a few times.
    async fn read_json(&self, method: reqwest::Method, path: &str, body: Option<&Value>) -> Result<Value, Failure> {
        let mut last = None;
        for attempt in 0..3u32 {
            if attempt > 0 {
                tokio::time::sleep(super::http::backoff(attempt)).await;
            }
            let (status, text) = self.client.call(method.clone(), path, body, Self::ONE, true).await?;
            if status != 200 {
                return Err(Failure {
                    class: if status == 404 || status == 400 { ErrorClass::Definite } else { ErrorClass::Transient },
                    message: format!("Jira answered HTTP {status}{}", self.client.api_error_text(&text)),
                    retry_after: None,
                    sent: false,
                });
            }
            match serde_json::from_str::<Value>(&text) {
                Ok(v) if v.is_object() => return Ok(v),
                _ => last = Some("Jira's answer is not a JSON object".to_owned()),
            }
        }
        Err(Failure { class: ErrorClass::Transient, message: last.unwrap_or_default(), retry_after: None, sent: false })
    }

    /// Looks the creates up by their marker labels: export id → the issue
    /// whose `syncbridge` property names its definition and key.
    async fn lookup(&self, exports: &[&Export]) -> Result<HashMap<i64, Found>, Failure> {
        let labels: Vec<String> =
            exports.iter().map(|e| marker_label(&e.definition, e.sync_key.as_deref().unwrap_or(""))).collect();
        let found = self.search_labels(&labels).await?;
        let mut out = HashMap::new();
        for (e, label) in exports.iter().zip(&labels) {
            let key = e.sync_key.as_deref().unwrap_or("");
            let hit = found.get(label).into_iter().flatten().find(|(_, prop)| {
                // An issue carrying the label but another row's property is
                // not ours (a label copied by hand); without a property, the
                // label alone decides.
                prop.is_null()
                    || (prop.get("key").and_then(Value::as_str) == Some(key)
                        && prop.get("definition").and_then(Value::as_str) == Some(e.definition.as_str()))
            });
            if let Some((f, _)) = hit {
                out.insert(e.id, f.clone());
            }
        }
        Ok(out)
    }

    /// [`Self::lookup`], and for exports an earlier attempt may have created
    /// (`verify`) and that were not found, again after [`SEARCH_WAITS`]:
    /// search shows new issues with a delay, and creating too early makes a
    /// twin.
    async fn lookup_settled(&self, exports: &[&Export]) -> Result<HashMap<i64, Found>, Failure> {
        let mut found = self.lookup(exports).await?;
        for wait in SEARCH_WAITS {
            let missing: Vec<&Export> =
                exports.iter().filter(|e| e.verify && !found.contains_key(&e.id)).copied().collect();
            if missing.is_empty() {
                break;
            }
            tracing::debug!(target = %self.client.name, missing = missing.len(), "issues not found yet; searching again");
            if !self.client.sleep_or_stop(tokio::time::Instant::now() + wait).await {
                break;
            }
            found.extend(self.lookup(&missing).await?);
        }
        Ok(found)
    }

    /// The `syncbridge` property of an export's issue.
    fn identity(e: &Export) -> Value {
        json!([{"key": PROPERTY_KEY, "value": {"definition": e.definition, "container": e.container, "key": e.sync_key}}])
    }

    /// The create body of one export.
    fn create_body(&self, e: &Export, mapped: &Mapped) -> Value {
        let mut fields = mapped.fields.clone();
        fields.insert("project".into(), json!({"key": self.project_key}));
        fields.entry("issuetype").or_insert_with(|| json!({"name": self.issue_type}));
        json!({"fields": fields, "properties": Self::identity(e)})
    }

    /// The `updated` of the issues `ids` (just written): one search per 50,
    /// naming them in `reconcileIssues` (search is eventually consistent;
    /// these are read after the write). What cannot be read is left out:
    /// the write then reports no eTag, and its echo is recognised by its
    /// fields instead.
    async fn updated_of(&self, ids: &[String]) -> HashMap<String, String> {
        let mut out = HashMap::new();
        for chunk in ids.chunks(BULK_LIMIT) {
            let numbers: Vec<u64> = chunk.iter().filter_map(|i| i.parse().ok()).collect();
            if numbers.is_empty() {
                continue;
            }
            let list: Vec<String> = numbers.iter().map(u64::to_string).collect();
            let body = json!({
                "jql": format!("id in ({})", list.join(", ")), "maxResults": BULK_LIMIT, "fields": ["updated"],
                "reconcileIssues": numbers,
            });
            match self.read_json(reqwest::Method::POST, "/rest/api/3/search/jql", Some(&body)).await {
                Ok(page) => {
                    for issue in page.get("issues").and_then(Value::as_array).into_iter().flatten() {
                        if let (Some(id), Some(u)) = (
                            issue.get("id").and_then(Value::as_str),
                            issue.pointer("/fields/updated").and_then(Value::as_str),
                        ) {
                            out.insert(id.to_owned(), u.to_owned());
                        }
                    }
                }
                Err(f) => tracing::debug!(target = %self.client.name, error = %f.message,
                    "the updated of new issues could not be read; their echoes are recognised by their fields"),
            }
        }
        out
    }

    /// Creates in one bulk request: a verdict per export (None: the
    /// outcome is unknown, look it up).
    async fn bulk_create(&self, batch: &[(&Export, Mapped)]) -> Vec<Option<Outcome>> {
        let body = json!({"issueUpdates": batch.iter().map(|(e, m)| self.create_body(e, m)).collect::<Vec<_>>()});
        let cost = Cost { units: 1, writes: batch.len() as u32 };
        let answer = self.client.call(reqwest::Method::POST, "/rest/api/3/issue/bulk", Some(&body), cost, false).await;
        let (status, text) = match answer {
            Err(f) if f.sent => return batch.iter().map(|_| None).collect(),
            Err(f) => return batch.iter().map(|(e, _)| Some(Outcome::Failed(f.to_result(e.id)))).collect(),
            Ok(a) => a,
        };
        let parsed: Option<Value> = serde_json::from_str(&text).ok();
        let shaped = parsed.as_ref().filter(|v| v.get("issues").is_some_and(Value::is_array));
        let Some(v) = shaped else {
            if (400..500).contains(&status) {
                // Refused whole, without per-element errors: nothing was created.
                let msg = format!("Jira refused the create (HTTP {status}){}", self.client.api_error_text(&text));
                let class = if batch.len() == 1 { ErrorClass::Definite } else { ErrorClass::Transient };
                return batch
                    .iter()
                    .map(|(e, _)| Some(Outcome::Failed(self.failed(e, class, msg.clone(), false))))
                    .collect();
            }
            // A success we cannot read: what was created is unknown.
            return batch.iter().map(|_| None).collect();
        };
        let mut failed: HashMap<usize, OpResult> = HashMap::new();
        for err in v.get("errors").and_then(Value::as_array).into_iter().flatten() {
            let Some(n) = err.get("failedElementNumber").and_then(Value::as_u64).map(|n| n as usize) else { continue };
            let Some((e, _)) = batch.get(n) else { continue };
            let st = err.get("status").and_then(Value::as_u64).unwrap_or(400) as u16;
            let detail = err.get("elementErrors").and_then(jira_envelope).map(|(c, m)| format!(": {c}: {m}"));
            let msg = format!("Jira refused the create (HTTP {st}){}", detail.unwrap_or_default());
            let class = match st {
                429 => ErrorClass::Throttled,
                s if s >= 500 => ErrorClass::Transient,
                401 | 403 => ErrorClass::Auth,
                _ => ErrorClass::Definite,
            };
            failed.insert(n, self.failed(e, class, msg, false));
        }
        let issues = v.get("issues").and_then(Value::as_array).cloned().unwrap_or_default();
        let expected = batch.len() - failed.len();
        if issues.len() != expected {
            // Answers missing: those refused are known, the rest unknown.
            return (0..batch.len()).map(|n| failed.remove(&n).map(Outcome::Failed)).collect();
        }
        let mut created = issues.into_iter();
        (0..batch.len())
            .map(|n| {
                if let Some(r) = failed.remove(&n) {
                    return Some(Outcome::Failed(r));
                }
                let issue = created.next().unwrap_or(Value::Null);
                match (issue.get("id").and_then(Value::as_str), issue.get("key").and_then(Value::as_str)) {
                    (Some(id), Some(key)) => Some(Outcome::Done { id: id.to_owned(), key: key.to_owned() }),
                    _ => None,
                }
            })
            .collect()
    }

    /// Writes the fields of an existing issue (an update or an adoption);
    /// `identity`: its labels and property too (an issue made in Jira gets
    /// its row's key). The issue comes back with the answer
    /// (`returnIssue`): its `updated` after the edit, the write's eTag.
    async fn edit(
        &self,
        e: &Export,
        id: &str,
        fields: &Map<String, Value>,
        identity: bool,
    ) -> Result<Option<String>, OpResult> {
        let path = format!("/rest/api/3/issue/{}?returnIssue=true", utf8_percent_encode(id, SEGMENT));
        let mut body = json!({"fields": fields});
        if identity {
            if !fields.contains_key("labels") {
                // Added to the labels a person gave it, which stay.
                let key = e.sync_key.as_deref().unwrap_or("");
                body["update"] = json!({"labels": [{"add": marker_label(&e.definition, key)},
                                                   {"add": list_label(&e.definition, &e.container)}]});
            }
            body["properties"] = Self::identity(e);
        }
        match self.client.call(reqwest::Method::PUT, &path, Some(&body), Self::WRITE, true).await {
            Err(f) => Err(f.to_result(e.id)),
            Ok((s, text)) if written(s, &text) => Ok(serde_json::from_str::<Value>(&text)
                .ok()
                .and_then(|v| v.pointer("/fields/updated").and_then(Value::as_str).map(str::to_owned))),
            Ok((s, _)) if (200..300).contains(&s) => Err(unreadable(e, "edit")),
            Ok((404, text)) => Err(self.failed(
                e,
                ErrorClass::Definite,
                format!("the issue {id} no longer exists in Jira{}", self.client.api_error_text(&text)),
                false,
            )),
            Ok((s, text)) => Err(self.refused(e, "edit", s, &text)),
        }
    }

    /// Brings an issue to the status named `want` by the transition leading
    /// there (nothing when it is there already): its `updated` afterwards,
    /// when known.
    async fn transition(&self, e: &Export, id: &str, key: &str, want: &str) -> Result<Option<String>, OpResult> {
        let path = format!("/rest/api/3/issue/{}", utf8_percent_encode(id, SEGMENT));
        let sent = |mut r: OpResult| {
            r.sent = Some(true);
            r
        };
        let issue = self
            .read_json(reqwest::Method::GET, &format!("{path}?fields=status,updated&expand=transitions"), None)
            .await
            .map_err(|f| sent(f.to_result(e.id)))?;
        let current = issue.pointer("/fields/status/name").and_then(Value::as_str).unwrap_or("");
        if current.eq_ignore_ascii_case(want) {
            return Ok(issue.pointer("/fields/updated").and_then(Value::as_str).map(str::to_owned));
        }
        let transitions = issue.get("transitions").and_then(Value::as_array).cloned().unwrap_or_default();
        let to = |t: &Value| t.pointer("/to/name").and_then(Value::as_str).unwrap_or("").to_owned();
        let Some(t) = transitions.iter().find(|t| to(t).eq_ignore_ascii_case(want)) else {
            let names: Vec<String> = transitions.iter().map(to).collect();
            return Err(sent(self.failed(
                e,
                ErrorClass::Definite,
                format!(
                    "issue {key} is {current:?} in Jira and no transition leads to status {want:?} (available: {})",
                    names.join(", ")
                ),
                true,
            )));
        };
        let body = json!({"transition": {"id": t.get("id").cloned().unwrap_or(Value::Null)}});
        match self
            .client
            .call(reqwest::Method::POST, &format!("{path}/transitions"), Some(&body), Self::WRITE, true)
            .await
        {
            Err(f) => Err(sent(f.to_result(e.id))),
            Ok((s, text)) if written(s, &text) => {
                // Transitions answer without the issue: its `updated` is read.
                let after = self.read_json(reqwest::Method::GET, &format!("{path}?fields=updated"), None).await;
                Ok(after.ok().and_then(|v| v.pointer("/fields/updated").and_then(Value::as_str).map(str::to_owned)))
            }
            Ok((s, _)) if (200..300).contains(&s) => Err(unreadable(e, "transition")),
            Ok((s, text)) => {
                // A transition sent again after a lost answer is refused
                // (the issue moved already): what counts is where it is.
                let again = self.read_json(reqwest::Method::GET, &format!("{path}?fields=status,updated"), None).await;
                let now = again.ok();
                let name = now.as_ref().and_then(|v| v.pointer("/fields/status/name").and_then(Value::as_str));
                if name.is_some_and(|n| n.eq_ignore_ascii_case(want)) {
                    let updated = now.as_ref().and_then(|v| v.pointer("/fields/updated").and_then(Value::as_str));
                    return Ok(updated.map(str::to_owned));
                }
                Err(sent(self.refused(e, "transition", s, &text)))
            }
        }
    }

    /// After the main request: the status, and the result (`etag`: the
    /// issue's `updated` after the main request, when known).
    async fn finish(
        &self,
        e: &Export,
        done: (String, String),
        status: Option<&str>,
        joined: bool,
        etag: Option<String>,
    ) -> OpResult {
        let (id, key) = done;
        let mut etag = etag;
        if let Some(want) = status {
            match self.transition(e, &id, &key, want).await {
                Ok(after) => etag = after,
                Err(mut r) => {
                    if let Some(m) = r.error.take() {
                        r.error = Some(format!("{m} (issue {key} holds the other fields)"));
                    }
                    return r;
                }
            }
        }
        OpResult {
            target_id: Some(id),
            etag,
            join_type: Some(if joined { "joined" } else { "provisioned" }),
            ..OpResult::ok(e.id)
        }
    }

    async fn delete(&self, e: &Export) -> OpResult {
        let Some(id) = e.target_id.as_deref() else {
            // Never created: nothing to remove.
            return OpResult::ok(e.id);
        };
        let path = format!("/rest/api/3/issue/{}", utf8_percent_encode(id, SEGMENT));
        match self.client.call(reqwest::Method::DELETE, &path, None, Self::WRITE, true).await {
            Err(f) => f.to_result(e.id),
            Ok((s, text)) if written(s, &text) || s == 404 => OpResult::ok(e.id),
            Ok((s, _)) if (200..300).contains(&s) => unreadable(e, "delete"),
            Ok((s, text)) => self.refused(e, "delete", s, &text),
        }
    }

    async fn update(&self, e: &Export) -> OpResult {
        let mapped = match map_fields(e, false) {
            Ok(m) => m,
            Err(m) => return self.failed(e, ErrorClass::Definite, m, false),
        };
        let id = e.target_id.clone().unwrap_or_default();
        // A change of the status alone needs no edit.
        let mut etag = None;
        if !mapped.fields.is_empty() || mapped.identity || mapped.status.is_none() {
            match self.edit(e, &id, &mapped.fields, mapped.identity).await {
                Ok(u) => etag = u,
                Err(r) => return r,
            }
        }
        self.finish(e, (id.clone(), id), mapped.status.as_deref(), false, etag).await
    }

    /// Creates (and adoptions after a lookup), in bulk.
    async fn create_all(&self, exports: &[&Export]) -> Vec<OpResult> {
        let mut results = Vec::new();
        let mut todo: Vec<(&Export, Mapped)> = Vec::new();
        for e in exports {
            match map_fields(e, true) {
                Ok(m) => {
                    todo.push((e, m));
                }
                Err(m) => results.push(self.failed(e, ErrorClass::Definite, m, false)),
            }
        }
        // Look first, for every create: one search per 50 creates finds what
        // an earlier attempt may have created (its answer lost, the worker
        // killed, or an error after the create that was retried by hand:
        // such an export is not marked verify).
        let verify: Vec<&Export> = todo.iter().map(|(e, _)| *e).collect();
        let mut adopted: HashMap<i64, Found> = HashMap::new();
        if !verify.is_empty() {
            match self.lookup_settled(&verify).await {
                Ok(found) => adopted = found,
                Err(f) => {
                    // Nothing was created: only the search failed.
                    for e in &verify {
                        results.push(OpResult { sent: Some(false), ..f.to_result(e.id) });
                    }
                    todo.clear();
                }
            }
        }
        let (adopt, create): (Vec<_>, Vec<_>) = todo.into_iter().partition(|(e, _)| adopted.contains_key(&e.id));
        for (e, m) in adopt {
            let found = adopted[&e.id].clone();
            let mut fields = m.fields.clone();
            fields.remove("issuetype");
            let r = match self.edit(e, &found.id, &fields, false).await {
                Err(r) => r,
                Ok(u) => self.finish(e, (found.id, found.key), m.status.as_deref(), true, u).await,
            };
            results.push(r);
        }
        for chunk in create.chunks(BULK_LIMIT) {
            let outcomes = self.bulk_create(chunk).await;
            let unknown: Vec<&Export> =
                chunk.iter().zip(&outcomes).filter(|(_, o)| o.is_none()).map(|((e, _), _)| *e).collect();
            let found = if unknown.is_empty() { Ok(HashMap::new()) } else { self.lookup(&unknown).await };
            for ((e, m), outcome) in chunk.iter().zip(outcomes) {
                let r = match outcome {
                    Some(Outcome::Failed(r)) => r,
                    Some(Outcome::Done { id, key }) => {
                        self.finish(e, (id, key), m.status.as_deref(), false, None).await
                    }
                    None => match &found {
                        Ok(f) => match f.get(&e.id) {
                            Some(hit) => {
                                let done = (hit.id.clone(), hit.key.clone());
                                self.finish(e, done, m.status.as_deref(), true, None).await
                            }
                            // Not (yet) visible in search: the next attempt
                            // (claimed with verify) looks again first.
                            None => self.failed(
                                e,
                                ErrorClass::Transient,
                                "the create's answer was lost and search does not show the issue yet".into(),
                                true,
                            ),
                        },
                        Err(f) => OpResult { sent: Some(true), ..f.to_result(e.id) },
                    },
                };
                results.push(r);
            }
        }
        // The new issues' eTags (their `updated`), one search per 50.
        let ids: Vec<String> =
            results.iter().filter(|r| r.ok && r.etag.is_none()).filter_map(|r| r.target_id.clone()).collect();
        if !ids.is_empty() {
            let updated = self.updated_of(&ids).await;
            for r in results.iter_mut().filter(|r| r.ok && r.etag.is_none()) {
                r.etag = r.target_id.as_ref().and_then(|id| updated.get(id)).cloned();
            }
        }
        results
    }
}

impl Target for JiraTarget {
    fn batch_size(&self) -> usize {
        BULK_LIMIT
    }

    fn share_budget(&self, source: std::sync::Arc<dyn super::http::BudgetSource>) {
        self.client.share_budget(source);
    }

    fn capabilities(&self) -> &'static Capabilities {
        &JIRA_CAPABILITIES
    }

    fn probe(&self) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(async move {
            // One attempt, no retry loop: the caller paces the probes.
            let header = self.client.authorization(false).await.map_err(|f| self.client.redact(&f.message))?;
            let url = format!("{}/rest/api/3/myself", self.client.base_url);
            match self.client.http.get(&url).header(reqwest::header::AUTHORIZATION, header).send().await {
                Err(e) => Err(self.client.redact(&format!("Jira unreachable: {}", super::http::without_url(&e)))),
                Ok(r) if r.status().is_server_error() => Err(format!("Jira answered {}", r.status().as_u16())),
                Ok(_) => {
                    self.client.set_health(Health::Ok, "");
                    Ok(())
                }
            }
        })
    }

    fn apply<'a>(&'a self, exports: &'a [Export], _context: &'a ApplyContext) -> BoxFuture<'a, Vec<OpResult>> {
        Box::pin(async move {
            let mut results = Vec::with_capacity(exports.len());
            let mut creates: Vec<&Export> = Vec::new();
            for e in exports {
                match e.op {
                    Op::Add => creates.push(e),
                    Op::Update if e.target_id.is_none() => creates.push(e),
                    Op::Update => results.push(self.update(e).await),
                    Op::Delete => results.push(self.delete(e).await),
                    Op::Provision | Op::Move | Op::Disable => results.push(self.failed(
                        e,
                        ErrorClass::Definite,
                        format!("a jira target cannot {} (its project exists; issues do not move)", e.op.as_str()),
                        false,
                    )),
                }
            }
            if !creates.is_empty() {
                results.extend(self.create_all(&creates).await);
            }
            self.client.settle(&mut results);
            results
        })
    }

    fn pull<'a>(&'a self, request: &'a PullRequest) -> BoxFuture<'a, Result<PullPage, PullError>> {
        Box::pin(async move {
            self.pull_page(request).await.map_err(|e| match e {
                PullError::Failed { class, message, retry_after } => {
                    PullError::Failed { class, message: self.client.redact(&message), retry_after }
                }
                other => other,
            })
        })
    }

    fn health(&self) -> (Health, String) {
        self.client.health()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn export(op: Op, payload: Value) -> Export {
        serde_json::from_value(json!({
            "id": 1, "definition": "tickets", "op": op.as_str(), "sync_key": "42", "list": "T",
            "target_id": null, "etag": null, "payload": payload, "attempts": 1, "verify": false,
        }))
        .unwrap()
    }

    #[test]
    fn base64_is_rfc_4648() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(base64(b"me@example.com:tok"), "bWVAZXhhbXBsZS5jb206dG9r");
    }

    #[test]
    fn the_marker_is_stable_and_a_valid_label() {
        let a = marker_label("tickets", "42");
        assert_eq!(a, marker_label("tickets", "42"));
        assert_ne!(a, marker_label("tickets", "43"));
        assert_ne!(marker_label("a\0b", "c"), marker_label("a", "b\0c"));
        assert_eq!(a.len(), 35);
        assert!(a.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'));
    }

    #[test]
    fn payloads_map_to_jira_fields() {
        let e = export(
            Op::Add,
            json!({"summary": "Fix it", "description": "Line\n\n- a\n- b", "labels": ["x", "y", "x"],
                   "priority": "High", "assignee": null, "duedate": "2026-03-01", "status": "Done",
                   "customfield_10010": 3}),
        );
        let m = map_fields(&e, true).unwrap();
        let ours = [marker_label("tickets", "42"), list_label("tickets", "T")];
        assert_eq!(ours[1], "sb-list:tickets/T");
        assert_eq!(m.status.as_deref(), Some("Done"));
        assert!(!m.identity);
        assert_eq!(m.fields["summary"], "Fix it");
        assert_eq!(m.fields["description"]["type"], "doc");
        assert_eq!(m.fields["labels"], json!(["x", "y", ours[0], ours[1]]));
        assert_eq!(m.fields["priority"], json!({"name": "High"}));
        assert!(!m.fields.contains_key("assignee"), "a create leaves nulls out");
        assert_eq!(m.fields["duedate"], "2026-03-01");
        assert_eq!(m.fields["customfield_10010"], 3);
        let arr = map_fields(&export(Op::Add, json!({"labels": "[\"p\", \"q\"]"})), true).unwrap();
        assert_eq!(arr.fields["labels"], json!(["p", "q", ours[0], ours[1]]), "a text[] as JSON text");
        // An edit clears what is null; a summary defaults to the key on create only.
        let u =
            map_fields(&export(Op::Update, json!({"assignee": null, "description": null, "labels": "a, b c"})), false)
                .unwrap();
        assert_eq!(u.fields["assignee"], Value::Null);
        assert_eq!(u.fields["description"], Value::Null);
        assert_eq!(u.fields["labels"], json!(["a", "b", "c", ours[0], ours[1]]));
        assert!(!u.fields.contains_key("summary"));
        let created = map_fields(&export(Op::Add, json!({})), true).unwrap();
        assert_eq!((&created.fields["summary"], &created.fields["labels"]), (&json!("42"), &json!(ours)));
        // An update's payload holds what changed: labels that did not are
        // not written (a person's stay); SyncKey is the identity, no field.
        let title = map_fields(&export(Op::Update, json!({"summary": "t"})), false).unwrap();
        assert!(!title.fields.contains_key("labels"));
        let key = map_fields(&export(Op::Update, json!({"SyncKey": "42"})), false).unwrap();
        assert!(key.identity && key.fields.is_empty());
        assert_eq!(list_label("a b", "My\tList"), "sb-list:a_b/My_List");
        assert!(map_fields(&export(Op::Add, json!({"project": "X"})), true).is_err());
        assert!(map_fields(&export(Op::Add, json!({"labels": [marker_label("a", "b")]})), true).is_err());
    }

    #[test]
    fn jira_errors_become_messages() {
        let body = json!({"errorMessages": ["Issue does not exist"], "errors": {"summary": "Summary is required."}});
        let (code, msg) = jira_envelope(&body).unwrap();
        assert_eq!(code, "summary");
        assert_eq!(msg, "Issue does not exist; summary: Summary is required.");
        assert_eq!(jira_envelope(&json!({"error": "x"})), None);
    }

    #[tokio::test]
    async fn the_credentials_never_show_and_need_an_email() {
        let cfg = json!({"site": "acme.atlassian.net", "project_key": "T", "base_url": "https://acme.atlassian.net"});
        // A Jira site is not one of the hosts a worker allows by default.
        assert!(JiraSettings::from_config("j", &cfg, &TargetPolicy::default()).is_err());
        let policy = TargetPolicy { extra_hosts: vec!["acme.atlassian.net".into()], ..TargetPolicy::default() };
        let settings = JiraSettings::from_config("j", &cfg, &policy).unwrap();
        assert!(JiraTarget::new(settings.clone(), "token-only".into(), None).is_err());
        let t = JiraTarget::new(settings, "me@example.com:s3cr3t-token".into(), None).unwrap();
        let encoded = base64(b"me@example.com:s3cr3t-token");
        let shown = t.client.redact(&format!("Basic {encoded} and s3cr3t-token"));
        assert!(!shown.contains("s3cr3t") && !shown.contains(&encoded), "{shown}");
        assert!(!format!("{t:?}").contains("s3cr3t"));
    }
}
