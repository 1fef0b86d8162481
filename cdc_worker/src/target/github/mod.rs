//! GitHub Issues through the REST API.
//!
//! - Auth: a token (fine-grained or classic personal access token, an
//!   installation or OAuth token) from the target's secret reference, sent
//!   as `Authorization: Bearer`; it never expires here, so a 401 is an
//!   `auth` failure (no renewal), as is a 403 that is not a rate limit.
//! - Items: a row is an issue in a repository of the target's `owner`: the
//!   definition's list (or shard) names the repository. `title`, `body`,
//!   `state`, `state_reason`, `labels`, `assignees` / `assignee` and
//!   `milestone` are the issue's own fields; every other mapped field is
//!   listed in the body under the text, in a table (`| field | value |`,
//!   each value its JSON). A create is `POST /repos/{owner}/{repo}/issues`,
//!   an update a `PATCH` of the whole issue (idempotent: sent again when its
//!   outcome is unknown), a delete a `PATCH` closing it with the target's
//!   `close_reason` (default `not_planned`; GitHub has no REST delete).
//! - Identity: the body ends in a hidden marker
//!   `<!-- syncbridge:key=<definition>/<key> -->` (both percent-encoded) and
//!   the issue carries the marker label (`syncbridge`). GitHub has no
//!   idempotency key, so a create whose outcome is unknown (a 5xx, a
//!   timeout, a connection lost after sending, an answer that is not the
//!   issue) is never sent again blindly: the repository's issues with the
//!   marker label are listed (the listing pulls read, [`pull`]: the core
//!   limit rather than search's 30 a minute; the index is kept and read on
//!   from its cursor) and the issue carrying the marker is adopted. Exports
//!   whose earlier attempt may have landed (`verify`) look first too. The
//!   marker also records what the issue alone cannot say of what a row
//!   sent (`sent={…}`, [`fields`]).
//! - Pacing: the budget (`budget_per_min` requests, default 80 — the
//!   primary limit of 5,000 an hour is 83 a minute) and, for content
//!   creation (creates and updates), GitHub's secondary limits: at most
//!   `content_per_min` (80) in any minute and `content_per_hour` (500) in any
//!   hour, spaced by GCRA limiters so the limits are not met when they could
//!   be known. Every answer's `x-ratelimit-remaining` / `x-ratelimit-reset`
//!   are read: at 0 everything waits for the reset; below 10 the requests
//!   left are spread until it. A 403 or 429 of a limit waits its
//!   `retry-after` (seconds), else the reset epoch when `remaining` is 0,
//!   else a minute, then retries (up to four tries; never counted against
//!   the export's attempts).
//! - Conditional reads: the twin index and the pulls send `If-None-Match`
//!   with the last `etag`; a 304 costs nothing of the primary limit.
//! - Two-way sync ([`pull`]): the marked issues are listed back by a
//!   `since` cursor, each reported in the form the push sent it
//!   ([`fields`]) with its version (`updated_at` and a digest) as eTag;
//!   every write reports the version of the issue it answers with, so
//!   syncbridge's own writes come back as echoes. GitHub has no `If-Match`:
//!   for a two-way definition an update or close reads the issue first and
//!   meets a conflict (the change is pulled and decided first) when its
//!   version is not the one syncbridge last saw.
//! - A value GitHub refuses (400, 422: a body over 65,536 characters, an
//!   unknown assignee or milestone) is `definite` with GitHub's message
//!   (`message` and each `errors[].message` / code / field); a 410 (issues
//!   disabled, or the issue deleted) too. Messages are redacted and bounded.

pub mod fields;
pub mod pull;

pub use fields::{pg_array_text, version, IssueView};
pub use pull::{Cursor, MAX_PER_PAGE, OVERLAP_SECS};

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::Mutex;
use std::time::Duration;

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use serde_json::{json, Map, Value};

use super::http::{
    backoff, parse_retry_after, read_body, without_url, Budget, ClientCredentials, Failure, HttpClient, HttpSettings,
    ENVELOPE_ATTEMPTS, MAX_BODY, MAX_PAUSE, MAX_TIMEOUT_MS,
};
use super::policy::bounded;
use super::{
    ApplyContext, BoxFuture, ErrorClass, Export, Health, Op, OpResult, PullError, PullPage, PullRequest, Target,
    TargetPolicy, TargetSetupError,
};

/// The API's root.
pub const DEFAULT_BASE_URL: &str = "https://api.github.com";
/// The REST API version asked for.
pub const API_VERSION: &str = "2022-11-28";
/// Requests a minute when the configuration sets none (5,000 an hour is 83 a minute).
pub const DEFAULT_BUDGET_PER_MIN: u32 = 80;
/// GitHub's secondary limit: content-creating requests in any minute.
pub const CONTENT_PER_MIN: u32 = 80;
/// GitHub's secondary limit: content-creating requests in any hour.
pub const CONTENT_PER_HOUR: u32 = 500;
/// Exports one `apply` gets (GitHub has no batch request: they go one by one).
pub const CLAIM_SIZE: usize = 20;
/// The label every issue of syncbridge carries (config `marker_label`).
pub const MARKER_LABEL: &str = "syncbridge";
/// The fields that are the issue's own (any other goes into the body's table).
pub const ISSUE_FIELDS: [&str; 8] =
    ["title", "body", "state", "state_reason", "labels", "assignees", "assignee", "milestone"];
/// Below this many requests left in the primary window, the rest are spread until the reset.
const LOW_REMAINING: u64 = 10;
/// Rounds of create → lookup when the outcome stays unknown.
const CREATE_ROUNDS: u32 = 3;
/// Characters escaped in a URL path segment, a query value and the marker.
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'_').remove(b'.').remove(b'~');

/// Now, in epoch seconds (GitHub's reset times are epochs).
fn epoch_now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64)
}

fn seg(s: &str) -> String {
    utf8_percent_encode(s, SEGMENT).to_string()
}

fn cfg_str<'a>(config: &'a Value, key: &str) -> Option<&'a str> {
    config.get(key).and_then(Value::as_str).filter(|s| !s.is_empty())
}

/// GitHub's error envelope: `message`, and the first of `errors[]` (its
/// message, else its code and field), as code and message.
fn github_envelope(body: &Value) -> Option<(String, String)> {
    let message = body.get("message")?.as_str()?;
    let detail: Vec<String> = body
        .get("errors")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(|e| match e.get("message").and_then(Value::as_str) {
            Some(m) => m.to_owned(),
            None => format!(
                "{} {}{}",
                e.get("field").and_then(Value::as_str).unwrap_or("?"),
                e.get("code").and_then(Value::as_str).unwrap_or("invalid"),
                e.get("value").map(|v| format!(" ({v})")).unwrap_or_default()
            ),
        })
        .collect();
    let text = if detail.is_empty() { message.to_owned() } else { format!("{message}: {}", detail.join("; ")) };
    let code = body.get("status").and_then(Value::as_str).unwrap_or("error");
    Some((code.to_owned(), text))
}

/// Where the marker starts.
const MARKER_START: &str = "<!-- syncbridge:key=";

/// The marker of a row in an issue's body.
pub fn marker(definition: &str, key: &str) -> String {
    marker_with(definition, key, &Map::new())
}

/// The marker of a row with the values it sent that the issue alone does
/// not say ([`fields::sent_record`]): `<!-- syncbridge:key=d/k sent={…} -->`
/// (`<` and `>` escaped in the JSON, so that nothing in it ends the comment).
pub fn marker_with(definition: &str, key: &str, sent: &Map<String, Value>) -> String {
    let record = if sent.is_empty() {
        String::new()
    } else {
        format!(" sent={}", Value::Object(sent.clone()).to_string().replace('<', "\\u003c").replace('>', "\\u003e"))
    };
    format!("{MARKER_START}{}/{}{record} -->", seg(definition), seg(key))
}

/// The `definition/key` (still encoded) of the marker in a body, if any.
pub fn marker_in(body: &str) -> Option<&str> {
    let start = body.rfind(MARKER_START)? + MARKER_START.len();
    let rest = &body[start..];
    let end = rest.find(" -->")?;
    let key = &rest[..end];
    Some(key.split(' ').next().unwrap_or(key))
}

/// The values the marker records as sent (empty: none, or no marker).
pub fn sent_in(body: &str) -> Map<String, Value> {
    let Some(start) = body.rfind(MARKER_START) else { return Map::new() };
    let rest = &body[start..];
    let Some(end) = rest.find(" -->") else { return Map::new() };
    match rest[..end].split_once(" sent=") {
        Some((_, json)) => match serde_json::from_str::<Value>(json) {
            Ok(Value::Object(m)) => m,
            _ => Map::new(),
        },
        None => Map::new(),
    }
}

/// The (definition, key) of a marker's text, decoded.
pub fn parse_marker(m: &str) -> Option<(String, String)> {
    let (d, k) = m.split_once('/')?;
    let dec = |s: &str| percent_encoding::percent_decode_str(s).decode_utf8().ok().map(|c| c.into_owned());
    Some((dec(d)?, dec(k)?))
}

/// A cell of the body's field table: the value's JSON, `|` escaped.
fn cell(v: &Value) -> String {
    v.to_string().replace('|', "\\|")
}

/// The fields of the body's table (`| field | value |` rows, each value its
/// JSON), as the adapter wrote them.
pub fn table_fields(body: &str) -> Map<String, Value> {
    let mut out = Map::new();
    for line in body.lines() {
        let Some(inner) = line.strip_prefix("| ").and_then(|l| l.strip_suffix(" |")) else { continue };
        // Split at the first unescaped " | ".
        let b = inner.as_bytes();
        let split = b.windows(3).enumerate().position(|(i, w)| w == b" | " && (i == 0 || b[i - 1] != b'\\'));
        let Some(i) = split else { continue };
        let (name, value) = (&inner[..i], &inner[i + 3..]);
        if name == "field" || name.starts_with("---") {
            continue;
        }
        if let Ok(v) = serde_json::from_str::<Value>(&value.replace("\\|", "|")) {
            out.insert(name.to_owned(), v);
        }
    }
    out
}

/// The whole body of an issue: the text, a blank line, the table of the
/// fields that are not the issue's own (if any), a blank line, the marker
/// (with what it records as `sent`).
pub fn compose_body(
    definition: &str,
    key: &str,
    text: &str,
    extra: &Map<String, Value>,
    sent: &Map<String, Value>,
) -> String {
    let mut body = text.to_owned();
    if !extra.is_empty() {
        if !body.is_empty() {
            body.push_str("\n\n");
        }
        body.push_str(TABLE_HEAD);
        for (k, v) in extra {
            body.push_str(&format!("| {k} | {} |\n", cell(v)));
        }
    }
    if !body.is_empty() {
        body.push_str("\n\n");
    }
    body.push_str(&marker_with(definition, key, sent));
    body
}

/// The head of the body's field table.
const TABLE_HEAD: &str = "| field | value |\n|---|---|\n";

/// An issue's body taken apart as [`compose_body`] put it together: the
/// text above the table, and the table's fields (a body edited by a person
/// keeps what it has).
pub fn split_body(body: &str) -> (String, Map<String, Value>) {
    let before = match body.rfind(MARKER_START) {
        Some(i) => &body[..i],
        None => body,
    };
    let (text, table) = if let Some(rest) = before.strip_prefix(TABLE_HEAD) {
        ("", rest)
    } else if let Some(i) = before.find(&format!("\n\n{TABLE_HEAD}")) {
        (&before[..i], &before[i + 2..])
    } else {
        (before.strip_suffix("\n\n").unwrap_or(before), "")
    };
    (text.to_owned(), table_fields(table))
}

/// The fields of a payload that go into the body's table: every one but
/// the issue's own and `SyncKey` (the marker carries the key).
fn table_of(obj: &Map<String, Value>) -> Map<String, Value> {
    obj.iter()
        .filter(|(k, _)| !ISSUE_FIELDS.contains(&k.as_str()) && k.as_str() != SYNC_KEY)
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// The field a row's key is written in (an item created on GitHub gets its
/// marker through it).
pub const SYNC_KEY: &str = "SyncKey";

/// A list field: a JSON array, a string holding one (how arrays travel),
/// or comma-separated names; NULL is empty.
fn names_of(v: &Value, field: &str) -> Result<Vec<String>, String> {
    let items: Vec<Value> = match v {
        Value::Null => Vec::new(),
        Value::Array(a) => a.clone(),
        Value::String(s) if s.trim_start().starts_with('[') => {
            serde_json::from_str::<Vec<Value>>(s).map_err(|e| format!("field {field} is not a JSON array ({e})"))?
        }
        Value::String(s) => s.split(',').map(|p| Value::String(p.trim().to_owned())).collect(),
        other => return Err(format!("field {field} must be a list of names, not {other}")),
    };
    let mut out: Vec<String> = Vec::new();
    for i in items {
        let n = match i {
            Value::String(s) => s,
            Value::Null => continue,
            other => other.to_string(),
        };
        let n = n.trim().to_owned();
        if !n.is_empty() && !out.iter().any(|o| o.eq_ignore_ascii_case(&n)) {
            out.push(n);
        }
    }
    Ok(out)
}

/// What a row asks of its issue.
#[derive(Debug, Clone, PartialEq)]
pub struct IssueWrite {
    /// The title (the row's key when no field gives one).
    pub title: String,
    /// The whole body: text, field table, marker.
    pub body: String,
    /// Labels, the marker label included.
    pub labels: Vec<String>,
    /// Assignees (None: not mapped, left alone).
    pub assignees: Option<Vec<String>>,
    /// Milestone number (None: not mapped).
    pub milestone: Option<Value>,
    /// `open` / `closed` (None: not mapped).
    pub state: Option<String>,
    /// With a closed state.
    pub state_reason: Option<String>,
}

impl IssueWrite {
    /// The issue for an export's payload. Err: a value GitHub cannot take (definite).
    pub fn from_payload(definition: &str, key: &str, payload: &Value, marker_label: &str) -> Result<Self, String> {
        let empty = Map::new();
        let obj = payload.as_object().unwrap_or(&empty);
        let text = |k: &str| -> Option<String> {
            match obj.get(k)? {
                Value::Null => None,
                Value::String(s) => Some(s.clone()),
                other => Some(other.to_string()),
            }
        };
        let title = text("title").filter(|t| !t.trim().is_empty()).unwrap_or_else(|| format!("{definition} {key}"));
        let sent = fields::sent_record(obj, &format!("{definition} {key}"), marker_label);
        let body = compose_body(definition, key, &text("body").unwrap_or_default(), &table_of(obj), &sent);
        let mut labels = match obj.get("labels") {
            Some(v) => names_of(v, "labels")?,
            None => Vec::new(),
        };
        if !labels.iter().any(|l| l.eq_ignore_ascii_case(marker_label)) {
            labels.push(marker_label.to_owned());
        }
        let assignees = match (obj.get("assignees"), obj.get("assignee")) {
            (None, None) => None,
            (a, b) => {
                let mut all = names_of(a.unwrap_or(&Value::Null), "assignees")?;
                for n in names_of(b.unwrap_or(&Value::Null), "assignee")? {
                    if !all.iter().any(|o| o.eq_ignore_ascii_case(&n)) {
                        all.push(n);
                    }
                }
                Some(all)
            }
        };
        let milestone = match obj.get("milestone") {
            None => None,
            Some(Value::Null) => Some(Value::Null),
            Some(Value::Number(n)) if n.as_u64().is_some() => Some(Value::Number(n.clone())),
            Some(Value::String(s)) if s.trim().parse::<u64>().is_ok() => {
                Some(json!(s.trim().parse::<u64>().unwrap_or(0)))
            }
            Some(other) => return Err(format!("field milestone must be a milestone number, not {other}")),
        };
        let state = match obj.get("state") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) if s.eq_ignore_ascii_case("open") || s.eq_ignore_ascii_case("closed") => {
                Some(s.to_ascii_lowercase())
            }
            Some(Value::Bool(closed)) => Some(if *closed { "closed" } else { "open" }.to_owned()),
            Some(other) => return Err(format!("field state must be open or closed, not {other}")),
        };
        let state_reason = match obj.get("state_reason") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) if ["completed", "not_planned", "duplicate", "reopened"].contains(&s.as_str()) => {
                Some(s.clone())
            }
            Some(other) => {
                return Err(format!(
                    "field state_reason must be completed, not_planned, duplicate or reopened, not {other}"
                ))
            }
        };
        Ok(Self { title, body, labels, assignees, milestone, state, state_reason })
    }

    /// The request body of a create (`state` goes in a PATCH after it).
    fn create_body(&self) -> Value {
        let mut b = json!({"title": self.title, "body": self.body, "labels": self.labels});
        if let Some(a) = &self.assignees {
            b["assignees"] = json!(a);
        }
        if let Some(m) = self.milestone.as_ref().filter(|m| !m.is_null()) {
            b["milestone"] = m.clone();
        }
        b
    }

    /// The request body of an update: the whole issue; `open` when `state`
    /// is not mapped and `reopen` (an adopted or re-created row).
    fn patch_body(&self, reopen: bool) -> Value {
        let mut b = json!({"title": self.title, "body": self.body, "labels": self.labels});
        if let Some(a) = &self.assignees {
            b["assignees"] = json!(a);
        }
        if let Some(m) = &self.milestone {
            b["milestone"] = m.clone();
        }
        match (&self.state, reopen) {
            (Some(s), _) => {
                b["state"] = json!(s);
                if s == "closed" {
                    b["state_reason"] = json!(self.state_reason.as_deref().unwrap_or("completed"));
                } else {
                    b["state_reason"] = json!("reopened");
                }
            }
            (None, true) => {
                b["state"] = json!("open");
                b["state_reason"] = json!("reopened");
            }
            (None, false) => {}
        }
        b
    }

    /// Whether an issue (as GitHub answered it) already is what this asks.
    fn matches(&self, issue: &Value) -> bool {
        let labels: Vec<String> = issue
            .get("labels")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|l| l.get("name").and_then(Value::as_str).map(str::to_lowercase))
            .collect();
        let mut want: Vec<String> = self.labels.iter().map(|l| l.to_lowercase()).collect();
        let mut have = labels;
        want.sort();
        have.sort();
        let state = issue.get("state").and_then(Value::as_str).unwrap_or("");
        issue.get("title").and_then(Value::as_str) == Some(self.title.as_str())
            && issue.get("body").and_then(Value::as_str) == Some(self.body.as_str())
            && want == have
            && state == self.state.as_deref().unwrap_or("open")
            && self.assignees.as_ref().is_none_or(|a| {
                let mut want: Vec<String> = a.iter().map(|s| s.to_lowercase()).collect();
                let mut have: Vec<String> = issue
                    .get("assignees")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .filter_map(|u| u.get("login").and_then(Value::as_str).map(str::to_lowercase))
                    .collect();
                want.sort();
                have.sort();
                want == have
            })
    }
}

/// A GitHub target's checked configuration.
#[derive(Debug, Clone)]
pub struct GithubSettings {
    name: String,
    base_url: String,
    owner: String,
    repo: Option<String>,
    budget: u32,
    content_per_min: u32,
    content_per_hour: u32,
    timeout_ms: u64,
    marker_label: String,
    close_reason: String,
    https_only: bool,
}

impl GithubSettings {
    /// Checks a target's configuration (before any secret is read).
    pub fn from_config(name: &str, config: &Value, policy: &TargetPolicy) -> Result<Self, TargetSetupError> {
        let bad = |message: String| TargetSetupError::Config { target: name.to_owned(), message };
        let owner = cfg_str(config, "owner").ok_or_else(|| bad("config lacks owner".into()))?.to_owned();
        let base_url = cfg_str(config, "base_url").unwrap_or(DEFAULT_BASE_URL).trim_end_matches('/').to_owned();
        // GitHub's own API is allowed as Microsoft's endpoints are; anything
        // else by the worker's policy.
        let url = if base_url == DEFAULT_BASE_URL {
            reqwest::Url::parse(&base_url).map_err(|e| bad(e.to_string()))?
        } else {
            policy.check_url("base_url", &base_url).map_err(bad)?
        };
        let num = |k: &str, default: u32| {
            config
                .get(k)
                .and_then(Value::as_f64)
                .filter(|b| b.is_finite())
                .map(|b| b.clamp(1.0, f64::from(u32::MAX)) as u32)
                .unwrap_or(default)
        };
        let close_reason = cfg_str(config, "close_reason").unwrap_or("not_planned").to_owned();
        if !["not_planned", "completed"].contains(&close_reason.as_str()) {
            return Err(bad(format!("close_reason is not_planned or completed, not {close_reason}")));
        }
        Ok(Self {
            name: name.to_owned(),
            base_url,
            owner,
            repo: cfg_str(config, "repo").map(str::to_owned),
            budget: num("budget_per_min", DEFAULT_BUDGET_PER_MIN),
            content_per_min: num("content_per_min", CONTENT_PER_MIN),
            content_per_hour: num("content_per_hour", CONTENT_PER_HOUR),
            timeout_ms: config.get("timeout_ms").and_then(Value::as_u64).unwrap_or(30_000).clamp(1, MAX_TIMEOUT_MS),
            marker_label: cfg_str(config, "marker_label").unwrap_or(MARKER_LABEL).to_owned(),
            close_reason,
            https_only: url.scheme() == "https",
        })
    }
}

/// An answer: status, the headers the adapter reads, body.
#[derive(Debug)]
struct Answer {
    status: u16,
    link: Option<String>,
    etag: Option<String>,
    /// GitHub's clock (`date`).
    date: Option<String>,
    body: String,
}

/// What the twin index knows of one repository.
#[derive(Debug, Default, Clone)]
struct Twins {
    /// marker → (number, open, the issue as listed).
    by_marker: HashMap<String, (u64, bool, Value)>,
    /// Where its reads stand (the listing a pull reads, see [`pull`]).
    cursor: Cursor,
}

/// The GitHub adapter for one target.
pub struct GithubTarget {
    client: HttpClient,
    token: String,
    owner: String,
    repo: Option<String>,
    marker_label: String,
    close_reason: String,
    content_min: DefaultDirectRateLimiter,
    content_hour: DefaultDirectRateLimiter,
    twins: Mutex<HashMap<String, Twins>>,
}

impl std::fmt::Debug for GithubTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GithubTarget").field("name", &self.client.name).field("owner", &self.owner).finish()
    }
}

/// A limiter admitting at most `n` in any `window` (GCRA: burst `b`, the
/// rest spread, so burst + rate × window ≤ n).
fn window_limiter(n: u32, window: Duration, burst: u32) -> DefaultDirectRateLimiter {
    let burst = burst.clamp(1, (n / 2).max(1));
    let rate = n.saturating_sub(burst).max(1);
    let period = window / rate;
    let quota = Quota::with_period(period.max(Duration::from_micros(1)))
        .unwrap_or_else(|| Quota::per_second(NonZeroU32::MIN))
        .allow_burst(NonZeroU32::new(burst).unwrap_or(NonZeroU32::MIN));
    RateLimiter::direct(quota)
}

/// A write done: the issue's number and its version as the answer gives it
/// (the eTag the ledger keeps: the same issue listed by a pull has the
/// same, so syncbridge's own write coming back is an echo).
fn written(id: i64, number: u64, issue: &Value) -> OpResult {
    OpResult { target_id: Some(number.to_string()), etag: fields::version(issue), ..OpResult::ok(id) }
}

enum Created {
    Done(OpResult),
    Unknown(Failure),
}

impl GithubTarget {
    /// The adapter from the checked configuration and the token.
    pub fn new(
        settings: GithubSettings,
        token: String,
        shutdown: Option<tokio::sync::watch::Receiver<bool>>,
    ) -> Result<Self, TargetSetupError> {
        let GithubSettings {
            name,
            base_url,
            owner,
            repo,
            budget,
            content_per_min,
            content_per_hour,
            timeout_ms,
            marker_label,
            close_reason,
            https_only,
        } = settings;
        let budget = Budget::new(budget, 1, None, 1);
        // A static token: the credentials hold it so that the redactor knows it.
        let auth = ClientCredentials::new(String::new(), String::new(), token.clone(), "");
        let http =
            HttpSettings { name, service: "GitHub", base_url, timeout_ms, https_only, envelope: github_envelope };
        Ok(Self {
            client: HttpClient::new(http, auth, budget, shutdown)?,
            token,
            owner,
            repo,
            marker_label,
            close_reason,
            content_min: window_limiter(content_per_min, Duration::from_secs(60), 1),
            content_hour: window_limiter(
                content_per_hour,
                Duration::from_secs(3600),
                content_per_min.min(content_per_hour / 2),
            ),
            twins: Mutex::new(HashMap::new()),
        })
    }

    fn repo_of<'a>(&'a self, container: &'a str) -> &'a str {
        if container.is_empty() {
            self.repo.as_deref().unwrap_or("")
        } else {
            container
        }
    }

    fn issues_path(&self, repo: &str) -> String {
        format!("/repos/{}/{}/issues", seg(&self.owner), seg(repo))
    }

    /// Waits for a content-creation turn (both windows); Err when stopping.
    async fn content_turn(&self) -> Result<(), Failure> {
        for limiter in [&self.content_min, &self.content_hour] {
            loop {
                match limiter.check() {
                    Ok(()) => break,
                    Err(not_until) => {
                        let wait = not_until
                            .wait_time_from(governor::clock::Clock::now(&governor::clock::DefaultClock::default()));
                        if !self.client.sleep_or_stop(tokio::time::Instant::now() + wait).await {
                            return Err(self.client.stopping());
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// Reads the primary limit's headers: waits for the reset at 0, spreads
    /// what is left below [`LOW_REMAINING`].
    fn observe_rate(&self, headers: &reqwest::header::HeaderMap) {
        let num = |k: &str| headers.get(k).and_then(|v| v.to_str().ok()).and_then(|v| v.trim().parse::<i64>().ok());
        let (Some(remaining), Some(reset)) = (num("x-ratelimit-remaining"), num("x-ratelimit-reset")) else { return };
        let now = epoch_now();
        let until = (reset - now).max(0) as f64;
        if remaining <= 0 {
            self.client.pause(until + 1.0);
        } else if (remaining as u64) < LOW_REMAINING {
            self.client.pause(until / remaining as f64);
        }
    }

    /// One request with GitHub's retry rules. `write`: content creation
    /// (paced by the secondary limits). `resend_sent` false: a request that
    /// may have run is not sent again (the caller finds out first).
    async fn send(
        &self,
        method: reqwest::Method,
        url: &str,
        body: Option<&Value>,
        write: bool,
        resend_sent: bool,
        etag: Option<&str>,
    ) -> Result<Answer, Failure> {
        let mut last: Option<Failure> = None;
        let mut attempt = 0;
        while attempt < ENVELOPE_ATTEMPTS {
            if let Some(l) = last.as_ref().filter(|l| l.sent && !resend_sent) {
                return Err(l.clone());
            }
            if attempt > 0 && last.as_ref().is_none_or(|l| l.class != ErrorClass::Throttled) {
                let d = backoff(attempt);
                if !self.client.sleep_or_stop(tokio::time::Instant::now() + d).await {
                    break;
                }
            }
            attempt += 1;
            self.client.wait_turn(1, u32::from(write)).await?;
            if write {
                self.content_turn().await?;
            }
            let mut rb = self
                .client
                .http
                .request(method.clone(), url)
                .bearer_auth(&self.token)
                .header("accept", "application/vnd.github+json")
                .header("x-github-api-version", API_VERSION);
            if let Some(e) = etag {
                rb = rb.header("if-none-match", e);
            }
            if let Some(b) = body {
                rb = rb.json(b);
            }
            let resp = match rb.send().await {
                Ok(r) => r,
                Err(e) => {
                    crate::metrics::TARGET_REQUEST_ERRORS.inc(&[&self.client.name, "api"]);
                    self.client.set_health(Health::Unreachable, format!("GitHub unreachable: {}", without_url(&e)));
                    last = Some(Failure {
                        class: ErrorClass::Transient,
                        message: format!("GitHub unreachable: {}", without_url(&e)),
                        retry_after: None,
                        sent: !e.is_connect() || last.as_ref().is_some_and(|l| l.sent),
                    });
                    continue;
                }
            };
            let status = resp.status().as_u16();
            let headers = resp.headers().clone();
            let retry_after = headers.get("retry-after").and_then(|v| v.to_str().ok()).and_then(parse_retry_after);
            self.observe_rate(&headers);
            self.client.count_answer("api", status, retry_after);
            let text = match read_body(resp, MAX_BODY).await {
                Ok(t) => t,
                Err(message) => {
                    last = Some(Failure { class: ErrorClass::Transient, message, retry_after: None, sent: true });
                    continue;
                }
            };
            let header = |k: &str| headers.get(k).and_then(|v| v.to_str().ok()).map(str::to_owned);
            let remaining0 = header("x-ratelimit-remaining").is_some_and(|r| r.trim() == "0");
            let limited_message = text.contains("rate limit");
            match status {
                401 => {
                    let msg = format!("GitHub refused the token (HTTP 401){}", self.client.api_error_text(&text));
                    self.client.set_health(Health::AuthFailed, msg.clone());
                    return Err(Failure { class: ErrorClass::Auth, message: msg, retry_after: None, sent: false });
                }
                403 | 429 if retry_after.is_some() || remaining0 || limited_message || status == 429 => {
                    let reset_wait = header("x-ratelimit-reset")
                        .and_then(|r| r.trim().parse::<i64>().ok())
                        .map(|r| (r - epoch_now()).max(0) as f64 + 1.0);
                    let secs = match (retry_after, remaining0) {
                        (Some(s), _) => s,
                        (None, true) => reset_wait.unwrap_or(60.0),
                        (None, false) => 60.0,
                    }
                    .min(MAX_PAUSE.as_secs_f64());
                    self.client.pause(secs);
                    let what = if remaining0 { "the primary rate limit" } else { "a secondary rate limit" };
                    self.client.set_health(Health::Throttled, format!("{status}: {what}, waiting {secs}s"));
                    tracing::warn!(target = %self.client.name, status, secs, what, "GitHub rate limit");
                    last = Some(Failure {
                        class: ErrorClass::Throttled,
                        message: format!("GitHub refused the request by {what} (HTTP {status}, retry in {secs}s)"),
                        retry_after: Some(secs),
                        sent: false,
                    });
                }
                403 => {
                    let msg = format!("GitHub refused the request (HTTP 403){}", self.client.api_error_text(&text));
                    self.client.set_health(Health::AuthFailed, msg.clone());
                    return Err(Failure { class: ErrorClass::Auth, message: msg, retry_after: None, sent: false });
                }
                s if s >= 500 => {
                    self.client.set_health(Health::Unreachable, format!("GitHub answered HTTP {s}"));
                    last = Some(Failure {
                        class: ErrorClass::Transient,
                        message: format!("GitHub answered HTTP {s}{}", self.client.api_error_text(&text)),
                        retry_after,
                        sent: true,
                    });
                }
                _ => {
                    self.client.set_health(Health::Ok, "");
                    return Ok(Answer {
                        status,
                        link: header("link"),
                        etag: header("etag"),
                        date: header("date"),
                        body: text,
                    });
                }
            }
        }
        Err(last.unwrap_or_else(|| self.client.stopping()))
    }

    fn definite(&self, e: &Export, status: u16, text: &str, what: &str) -> OpResult {
        OpResult::failed(
            e.id,
            ErrorClass::Definite,
            format!("GitHub refused the {what} (HTTP {status}){}", self.client.api_error_text(text)),
            true,
        )
    }

    /// Reads the repository's marked issues changed since the index's
    /// cursor into the index; returns the issue carrying `mark`.
    async fn lookup(&self, repo: &str, mark: &str) -> Result<Option<(u64, Value)>, Failure> {
        self.refresh(repo).await?;
        Ok(self.known(repo, mark))
    }

    /// The issue carrying `mark` as the index last read it.
    fn known(&self, repo: &str, mark: &str) -> Option<(u64, Value)> {
        let twins = self.twins.lock().unwrap_or_else(|p| p.into_inner());
        twins.get(repo).and_then(|t| t.by_marker.get(mark)).map(|(n, _, v)| (*n, v.clone()))
    }

    /// Reads the repository's marked issues changed since the index's
    /// cursor into the index (the listing a pull reads: [`pull`]).
    async fn refresh(&self, repo: &str) -> Result<(), Failure> {
        let mut t = self.twins.lock().unwrap_or_else(|p| p.into_inner()).get(repo).cloned().unwrap_or_default();
        loop {
            let listed =
                self.list_page(repo, &mut t.cursor, false, MAX_PER_PAGE).await.map_err(|e| e.into_failure(self))?;
            pull::learn(&mut t, &listed.issues);
            if listed.last {
                break;
            }
        }
        self.twins.lock().unwrap_or_else(|p| p.into_inner()).insert(repo.to_owned(), t);
        Ok(())
    }

    /// One POST of a create, classified.
    async fn create_once(&self, e: &Export, repo: &str, w: &IssueWrite) -> Created {
        let url = format!("{}{}", self.client.base_url, self.issues_path(repo));
        match self.send(reqwest::Method::POST, &url, Some(&w.create_body()), true, false, None).await {
            Err(f) if f.sent => Created::Unknown(f),
            Err(f) => Created::Done(f.to_result(e.id)),
            Ok(a) if a.status == 201 || a.status == 200 => {
                let issue = serde_json::from_str::<Value>(&a.body).unwrap_or(Value::Null);
                match issue.get("number").and_then(Value::as_u64) {
                    Some(n) => {
                        // A state asked for (closed) goes in an update after the create.
                        if w.state.as_deref() == Some("closed") {
                            return Created::Done(self.patch(e, repo, n, &w.patch_body(false), "update").await);
                        }
                        Created::Done(written(e.id, n, &issue))
                    }
                    None => Created::Unknown(Failure {
                        class: ErrorClass::Transient,
                        message: format!("GitHub answered HTTP {} without the issue", a.status),
                        retry_after: None,
                        sent: true,
                    }),
                }
            }
            Ok(a) => Created::Done(self.definite(e, a.status, &a.body, "create")),
        }
    }

    async fn patch(&self, e: &Export, repo: &str, number: u64, body: &Value, what: &str) -> OpResult {
        let url = format!("{}{}/{number}", self.client.base_url, self.issues_path(repo));
        match self.send(reqwest::Method::PATCH, &url, Some(body), true, true, None).await {
            Err(f) => f.to_result(e.id),
            Ok(a) if a.status == 200 => match serde_json::from_str::<Value>(&a.body) {
                Ok(issue) => written(e.id, number, &issue),
                // The answer is cut: a PATCH is idempotent, the next attempt sends it again.
                Err(_) => {
                    OpResult::failed(e.id, ErrorClass::Transient, "GitHub's answer to an update is not JSON", true)
                }
            },
            Ok(a) if e.op == Op::Delete && (a.status == 404 || a.status == 410) => {
                // Gone already: nothing left to close.
                OpResult::ok(e.id)
            }
            Ok(a) => self.definite(e, a.status, &a.body, what),
        }
    }

    /// Adopts issue `n` found by the marker: written only where it differs.
    async fn adopt(&self, e: &Export, repo: &str, n: u64, issue: &Value, w: &IssueWrite) -> OpResult {
        tracing::info!(target = %self.client.name, definition = %e.definition, issue = n, "adopting the issue found by its marker");
        if w.matches(issue) {
            return written(e.id, n, issue);
        }
        self.patch(e, repo, n, &w.patch_body(true), "update").await
    }

    /// A create, adopting the issue carrying the row's marker when an
    /// earlier attempt may have made it. `fresh`: the index was read after
    /// the claim (once for all its exports, in [`Target::apply`]).
    async fn add(&self, e: &Export, repo: &str, w: &IssueWrite, fresh: bool) -> OpResult {
        let key = e.sync_key.clone().unwrap_or_default();
        let mark = marker(&e.definition, &key);
        let mark = marker_in(&mark).unwrap_or_default().to_owned();
        if e.verify && fresh {
            if let Some((n, issue)) = self.known(repo, &mark) {
                return self.adopt(e, repo, n, &issue, w).await;
            }
        }
        let mut look = e.verify && !fresh;
        let mut last: Option<Failure> = None;
        for _ in 0..CREATE_ROUNDS {
            if look {
                match self.lookup(repo, &mark).await {
                    Ok(Some((n, issue))) => return self.adopt(e, repo, n, &issue, w).await,
                    Ok(None) => {}
                    Err(f) => {
                        // Still unknown whether it landed: the next attempt looks again.
                        return OpResult {
                            retry_after: f.retry_after,
                            ..OpResult::failed(e.id, f.class, f.message, true)
                        };
                    }
                }
            }
            match self.create_once(e, repo, w).await {
                Created::Done(r) => return r,
                Created::Unknown(f) => {
                    tracing::warn!(target = %self.client.name, definition = %e.definition, error = %f.message, "a create's outcome is unknown: looking for its marker");
                    look = true;
                    last = Some(f);
                }
            }
        }
        let f = last.unwrap_or_else(|| self.client.stopping());
        OpResult { retry_after: f.retry_after, ..OpResult::failed(e.id, ErrorClass::Transient, f.message, true) }
    }

    /// An update: the changed fields only (the payload of an update holds
    /// those). When the body's text or a field of its table changed, the
    /// issue is read first (its body as it is, a person's edits kept) and
    /// the body composed again.
    async fn update(&self, e: &Export, repo: &str, n: u64, key: &str, payload: &Value, w: &IssueWrite) -> OpResult {
        let empty = Map::new();
        let obj = payload.as_object().unwrap_or(&empty);
        let mut patch = Map::new();
        if obj.contains_key("title") {
            patch.insert("title".into(), json!(w.title));
        }
        if obj.contains_key("labels") {
            patch.insert("labels".into(), json!(w.labels));
        }
        if let Some(a) = &w.assignees {
            patch.insert("assignees".into(), json!(a));
        }
        if let Some(m) = &w.milestone {
            patch.insert("milestone".into(), m.clone());
        }
        if let Some(s) = &w.state {
            patch.insert("state".into(), json!(s));
            let reason = if s == "closed" { w.state_reason.as_deref().unwrap_or("completed") } else { "reopened" };
            patch.insert("state_reason".into(), json!(reason));
        }
        let extra = table_of(obj);
        // The body is written again when its text, a field of its table or
        // the key (an item created on GitHub gets its marker) changes.
        let rewrite = obj.contains_key("body") || !extra.is_empty() || obj.contains_key(SYNC_KEY);
        // The issue as it is: its body, and (two-way) whether it is still
        // the version syncbridge last saw.
        let issue = if rewrite || e.etag.is_some() {
            match self.current(e, repo, n, "update").await {
                Ok(Some(issue)) => issue,
                Ok(None) => return self.definite(e, 410, "", "update"),
                Err(r) => return *r,
            }
        } else {
            Value::Null
        };
        if rewrite {
            let current = issue.get("body").and_then(Value::as_str).unwrap_or("").to_owned();
            let (mut text, mut table) = split_body(&current);
            if let Some(b) = obj.get("body") {
                text = match b {
                    Value::Null => String::new(),
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
            }
            for (k, v) in extra {
                table.insert(k, v);
            }
            // What the marker recorded, for the fields this update sends anew.
            let mut sent = sent_in(&current);
            for f in ISSUE_FIELDS.iter().filter(|f| obj.contains_key(**f)) {
                sent.remove(*f);
            }
            sent.extend(fields::sent_record(obj, &format!("{} {key}", e.definition), &self.marker_label));
            patch.insert("body".into(), json!(compose_body(&e.definition, key, &text, &table, &sent)));
        }
        if patch.is_empty() {
            return match issue {
                Value::Null => OpResult { target_id: Some(n.to_string()), ..OpResult::ok(e.id) },
                issue => written(e.id, n, &issue),
            };
        }
        self.patch(e, repo, n, &Value::Object(patch), "update").await
    }

    /// The issue as GitHub holds it now (None: gone, 404 or 410). For a
    /// two-way definition (the export carries the version syncbridge last
    /// saw): a conflict when a person changed it since — GitHub has no
    /// `If-Match`, so the write waits while the change is pulled and
    /// decided first, as a 412 makes Graph's.
    async fn current(&self, e: &Export, repo: &str, n: u64, what: &str) -> Result<Option<Value>, Box<OpResult>> {
        let url = format!("{}{}/{n}", self.client.base_url, self.issues_path(repo));
        let issue = match self.send(reqwest::Method::GET, &url, None, false, true, None).await {
            Err(f) => return Err(Box::new(f.to_result(e.id))),
            Ok(a) if a.status == 200 => match serde_json::from_str::<Value>(&a.body) {
                Ok(v) => v,
                Err(_) => {
                    return Err(Box::new(OpResult::failed(
                        e.id,
                        ErrorClass::Transient,
                        "GitHub's issue is not JSON",
                        false,
                    )))
                }
            },
            Ok(a) if a.status == 404 || a.status == 410 => {
                if e.op == Op::Delete {
                    return Ok(None);
                }
                return Err(Box::new(self.definite(e, a.status, &a.body, what)));
            }
            Ok(a) => return Err(Box::new(self.definite(e, a.status, &a.body, what))),
        };
        if let Some(seen) = e.etag.as_deref() {
            if fields::version(&issue).as_deref() != Some(seen) {
                return Err(Box::new(OpResult::failed(
                    e.id,
                    ErrorClass::Conflict,
                    format!("issue #{n} changed on GitHub since syncbridge last saw it: its change is pulled and decided first"),
                    false,
                )));
            }
        }
        Ok(Some(issue))
    }

    async fn apply_one(&self, e: &Export, fresh: bool) -> OpResult {
        let repo = self.repo_of(&e.container).to_owned();
        if repo.is_empty() {
            return OpResult::failed(
                e.id,
                ErrorClass::Definite,
                "no repository: give the definition a list (the repository's name) or the target a repo",
                false,
            );
        }
        let key = e.sync_key.clone().unwrap_or_default();
        let payload = e.payload.clone().unwrap_or(Value::Null);
        match e.op {
            Op::Provision => OpResult::failed(
                e.id,
                ErrorClass::Definite,
                "GitHub repositories are not provisioned: they exist already",
                false,
            ),
            Op::Move => OpResult::failed(
                e.id,
                ErrorClass::Definite,
                "GitHub issues do not move between repositories (sync.target_kinds.moves = unsupported)",
                false,
            ),
            Op::Disable => OpResult::failed(
                e.id,
                ErrorClass::Definite,
                "GitHub issues cannot be disabled (sync.target_kinds.disable)",
                false,
            ),
            Op::Add | Op::Update => {
                let w = match IssueWrite::from_payload(&e.definition, &key, &payload, &self.marker_label) {
                    Ok(w) => w,
                    Err(m) => return OpResult::failed(e.id, ErrorClass::Definite, m, false),
                };
                match (e.op, e.target_id.as_deref().and_then(|t| t.parse::<u64>().ok())) {
                    (Op::Update, Some(n)) => self.update(e, &repo, n, &key, &payload, &w).await,
                    _ => self.add(e, &repo, &w, fresh).await,
                }
            }
            Op::Delete => match e.target_id.as_deref().and_then(|t| t.parse::<u64>().ok()) {
                Some(n) => {
                    if e.etag.is_some() {
                        match self.current(e, &repo, n, "close").await {
                            Ok(Some(_)) => {}
                            // Gone already: nothing left to close.
                            Ok(None) => return OpResult::ok(e.id),
                            Err(r) => return *r,
                        }
                    }
                    let body = json!({"state": "closed", "state_reason": self.close_reason});
                    self.patch(e, &repo, n, &body, "close").await
                }
                None => OpResult::ok(e.id),
            },
        }
    }
}

/// The `rel="next"` URL of a `link` header.
pub fn next_link(link: &str) -> Option<String> {
    link.split(',').find_map(|part| {
        let (url, rest) = part.trim().split_once(';')?;
        rest.split(';')
            .any(|p| p.trim() == "rel=\"next\"")
            .then(|| url.trim().trim_start_matches('<').trim_end_matches('>').to_owned())
    })
}

/// GitHub: existing repositories, issues closed (no REST delete), no moves,
/// twins found by their marker, changes read by `updated_at`.
pub const GITHUB_CAPABILITIES: super::registry::Capabilities = super::registry::Capabilities {
    containers: super::registry::Containers::Existing,
    delete_mode: super::registry::DeleteMode::Close,
    moves: super::registry::Moves::Unsupported,
    key_lookup: true,
    pull: super::registry::Pull::UpdatedSince,
    disable: false,
};

impl Target for GithubTarget {
    fn batch_size(&self) -> usize {
        CLAIM_SIZE
    }

    fn share_budget(&self, source: std::sync::Arc<dyn super::http::BudgetSource>) {
        self.client.share_budget(source);
    }

    fn capabilities(&self) -> &'static super::registry::Capabilities {
        &GITHUB_CAPABILITIES
    }

    fn pull<'a>(&'a self, request: &'a PullRequest) -> BoxFuture<'a, Result<PullPage, PullError>> {
        Box::pin(self.pull_page(request))
    }

    fn probe(&self) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(async move {
            // `GET /rate_limit` costs nothing of the primary limit.
            let url = format!("{}/rate_limit", self.client.base_url);
            let req = self
                .client
                .http
                .get(&url)
                .bearer_auth(&self.token)
                .header("accept", "application/vnd.github+json")
                .header("x-github-api-version", API_VERSION);
            match req.send().await {
                Err(e) => Err(self.client.redact(&format!("GitHub unreachable: {}", without_url(&e)))),
                Ok(r) if r.status().is_server_error() => Err(format!("GitHub answered {}", r.status().as_u16())),
                Ok(r) => {
                    self.observe_rate(r.headers());
                    self.client.set_health(Health::Ok, "");
                    Ok(())
                }
            }
        })
    }

    fn health(&self) -> (Health, String) {
        self.client.health()
    }

    fn apply<'a>(&'a self, exports: &'a [Export], _context: &'a ApplyContext) -> BoxFuture<'a, Vec<OpResult>> {
        Box::pin(async move {
            let mut results = Vec::with_capacity(exports.len());
            let mut down: Option<OpResult> = None;
            // Creates an earlier attempt may have made (a worker killed, a
            // lease expired): the repository's index is read once, after the
            // claim, for all of them (not once per export).
            let mut unread: HashMap<String, Failure> = HashMap::new();
            let mut repos: Vec<String> = exports
                .iter()
                .filter(|e| e.verify && matches!(e.op, Op::Add | Op::Update))
                .map(|e| self.repo_of(&e.container).to_owned())
                .collect();
            repos.sort();
            repos.dedup();
            for repo in repos.into_iter().filter(|r| !r.is_empty()) {
                if let Err(f) = self.refresh(&repo).await {
                    unread.insert(repo, f);
                }
            }
            for e in exports {
                if let Some(f) = unread.get(self.repo_of(&e.container)).filter(|_| e.verify) {
                    // Whether its issue exists stays unknown: not created blindly.
                    results.push(OpResult {
                        retry_after: f.retry_after,
                        ..OpResult::failed(e.id, f.class, f.message.clone(), true)
                    });
                    continue;
                }
                // Once GitHub is unreachable, the rest of the claim is not
                // sent (certainly not: it spends no lookup on the way back).
                if let Some(d) = &down {
                    results.push(OpResult { id: e.id, sent: Some(false), ..d.clone() });
                    continue;
                }
                let r = self.apply_one(e, true).await;
                if !r.ok && self.client.health().0 == Health::Unreachable && r.class == Some(ErrorClass::Transient) {
                    down =
                        Some(OpResult::failed(e.id, ErrorClass::Transient, r.error.clone().unwrap_or_default(), false));
                }
                results.push(r);
            }
            self.client.settle(&mut results);
            for m in results.iter_mut().filter_map(|r| r.error.as_mut()) {
                *m = bounded(m, 2000);
            }
            results
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_become_issues_with_a_marker_and_their_other_fields_in_a_table() {
        let p = json!({"title": "Fix it", "body": "Steps:\n1. a", "labels": "[\"bug\", \"ui\"]", "state": "Closed",
                       "id": 7, "note": "a | b", "tags": ["x"]});
        let w = IssueWrite::from_payload("tickets", "7", &p, MARKER_LABEL).unwrap();
        assert_eq!(w.title, "Fix it");
        assert_eq!(w.labels, ["bug", "ui", "syncbridge"]);
        assert_eq!(w.state.as_deref(), Some("closed"));
        assert!(w.body.starts_with("Steps:\n1. a\n\n| field | value |"));
        assert!(w.body.ends_with(" -->") && w.body.contains("\n\n<!-- syncbridge:key=tickets/7 sent="), "{}", w.body);
        assert_eq!(Value::Object(sent_in(&w.body)), json!({"labels": "[\"bug\", \"ui\"]", "state": "Closed"}));
        let t = table_fields(&w.body);
        assert_eq!(Value::Object(t), json!({"id": 7, "note": "a | b", "tags": ["x"]}));
        assert_eq!(parse_marker(marker_in(&w.body).unwrap()), Some(("tickets".into(), "7".into())));
        let (text, table) = split_body(&w.body);
        assert_eq!(
            (text.as_str(), Value::Object(table.clone())),
            ("Steps:\n1. a", json!({"id": 7, "note": "a | b", "tags": ["x"]}))
        );
        assert_eq!(
            compose_body("tickets", "7", &text, &table, &sent_in(&w.body)),
            w.body,
            "taken apart and put together again"
        );
        for b in ["<!-- syncbridge:key=d/1 -->", "text\n\n<!-- syncbridge:key=d/1 -->", "edited by a person"] {
            let (text, table) = split_body(b);
            assert!(table.is_empty());
            assert_eq!(text, b.split("\n\n<!--").next().unwrap().replace("<!-- syncbridge:key=d/1 -->", ""));
        }
        // A key that could end the comment is encoded.
        let m = marker("d -->", "[\"a\", \"b\"] -->");
        assert_eq!(m.matches("-->").count(), 1, "{m}");
        assert_eq!(parse_marker(marker_in(&m).unwrap()), Some(("d -->".into(), "[\"a\", \"b\"] -->".into())));
        // No title: the key; NULLs: nothing.
        let w =
            IssueWrite::from_payload("d", "9", &json!({"title": null, "body": null, "labels": null}), "sb").unwrap();
        assert_eq!(
            (w.title.as_str(), w.body.as_str(), w.labels.clone()),
            ("d 9", "<!-- syncbridge:key=d/9 sent={\"labels\":null} -->", vec!["sb".to_owned()])
        );
        assert_eq!(w.assignees, None);
        // Refused before sending.
        assert!(IssueWrite::from_payload("d", "1", &json!({"state": "done"}), "sb").is_err());
        assert!(IssueWrite::from_payload("d", "1", &json!({"milestone": "soon"}), "sb").is_err());
        assert!(IssueWrite::from_payload("d", "1", &json!({"state_reason": "wontfix"}), "sb").is_err());
    }

    #[test]
    fn errors_keep_githubs_message_and_each_reason() {
        let v = json!({"message": "Validation Failed", "status": "422", "errors": [
            {"resource": "Issue", "code": "custom", "field": "body", "message": "body is too long (maximum is 65536 characters)"},
            {"resource": "Issue", "code": "invalid", "field": "assignees", "value": "nobody"}]});
        let (code, msg) = github_envelope(&v).unwrap();
        assert_eq!(code, "422");
        assert_eq!(
            msg,
            "Validation Failed: body is too long (maximum is 65536 characters); assignees invalid (\"nobody\")"
        );
        assert_eq!(github_envelope(&json!({"error": "x"})), None);
    }

    #[test]
    fn the_next_page_comes_from_the_link_header() {
        let l = "<https://api.github.com/repos/o/r/issues?page=2>; rel=\"next\", <https://api.github.com/repos/o/r/issues?page=5>; rel=\"last\"";
        assert_eq!(next_link(l).as_deref(), Some("https://api.github.com/repos/o/r/issues?page=2"));
        assert_eq!(next_link("<https://x/?page=1>; rel=\"prev\""), None);
    }

    #[test]
    fn a_window_limiter_admits_no_more_than_its_window_allows() {
        let l = window_limiter(80, Duration::from_secs(60), 1);
        let admitted = (0..200).filter(|_| l.check().is_ok()).count();
        assert_eq!(admitted, 1, "a burst of one, the rest spread");
        let h = window_limiter(500, Duration::from_secs(3600), 80);
        assert_eq!((0..200).filter(|_| h.check().is_ok()).count(), 80);
    }
}
