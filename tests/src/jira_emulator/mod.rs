//! A local emulator of Jira Cloud's issue API (REST v3), for testing the
//! Jira target without a site: a plug-in of the emulator harness
//! (`crate::emulator`), which serves it and does the faults, latency,
//! outages, counters and `/_emulator` control routes.
//!
//! What it holds to, from Atlassian's description (checked by
//! [`openapi`]: every request's path, method, query parameters and body
//! schema) and the facts collected in `shared/facts/targets.md` §2:
//!
//! - Basic auth with an account's e-mail and API token (`401` with Jira's
//!   `ErrorCollection` otherwise); `GET /rest/api/3/myself`.
//! - Issues `PROJ-n` with numeric-string ids: create (`201 {id, key, self}`),
//!   bulk create of at most 50 (`201` when any succeeded, `400` when none,
//!   `{issues, errors: [{status, elementErrors, failedElementNumber}]}`),
//!   get, edit (`204`), delete (`204`; `404` afterwards), transitions by
//!   workflow (`To Do` → `In Progress` → `Done`, any to any, `Done` sets the
//!   resolution), issue properties (key ≤ 255, value ≤ 32,768 characters,
//!   not searchable).
//! - Field checks with Jira's messages (`400 {"errorMessages", "errors":
//!   {field: message}}`): project, issue type and summary required, a
//!   summary of at most 255 characters on one line, `description` an
//!   Atlassian Document (version 1, known node types, no empty text) of at
//!   most 32,767 characters of text, labels without spaces, priorities and
//!   users that exist, dates `yyyy-MM-dd`, and "cannot be set" for
//!   `status`, `resolution`, unknown fields.
//! - `search/jql` (GET and POST): a bounded JQL subset (`project`, `key`,
//!   `id`, `status`, `labels =`/`in`, `updated >=`/`>`/`<=`/`<` a date
//!   literal of minute precision read in the user's time zone
//!   (`utc_offset_minutes`) or a relative `-5m`, `AND`, `ORDER BY` up to 7
//!   of `updated`, `created`, `id`, `key` ASC/DESC), ids only unless
//!   `fields` asks, `properties` (≤ 5), `nextPageToken` / `isLast` paging
//!   (the token names the search's result set: issues changed while it is
//!   paged are shown as they are now, none skipped), at most 100 issues a
//!   page with fields (5,000 ids only), an optional index lag (issues
//!   written less than `index_lag_ms` ago are not found yet, unless named
//!   in `reconcileIssues`, ≤ 50).
//! - Edits take `returnIssue=true` (`200` with the issue) and `update`
//!   operations (`labels` add / remove / set; `set` for other fields).
//! - Date-times as Jira writes them (`2026-03-01T14:05:32.097+0000`, in the
//!   user's offset); `updated` moves on every change (a person's too:
//!   [`EmulatorState::person_edit`], `person_create`, `person_delete`).
//! - Rate limits: `requests_per_min` over a sliding minute (`429` with
//!   `Retry-After`, `RateLimit-Reason: jira-burst-based`) and
//!   `issue_writes_per_sec` per issue (`jira-per-issue-on-write`);
//!   `X-RateLimit-Limit`, `-Remaining`, `-Reset` and `-NearLimit` on every
//!   answer while a limit is set.

pub mod openapi;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hyper::header::{HeaderValue, RETRY_AFTER};
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use crate::emulator::{self, json_response, Api, HttpResponse, Meter, Request, Route};
pub use crate::emulator::{Fault, Stats};
use openapi::Refusal;

/// Most issues in one bulk create.
pub const BULK_LIMIT: usize = 50;
/// Most characters of a summary.
pub const MAX_SUMMARY: usize = 255;
/// Most characters of text in a rich-text field (Jira's
/// `jira.text.field.character.limit` default).
pub const MAX_TEXT: usize = 32_767;
/// Most characters of an issue property's JSON value.
pub const MAX_PROPERTY: usize = 32_768;

/// The workflow's statuses, in order, with their category keys.
pub const STATUSES: [(&str, &str, &str); 3] =
    [("To Do", "new", "11"), ("In Progress", "indeterminate", "21"), ("Done", "done", "31")];
/// The priorities that exist.
pub const PRIORITIES: [&str; 5] = ["Highest", "High", "Medium", "Low", "Lowest"];
/// The issue types that exist.
pub const ISSUE_TYPES: [&str; 3] = ["Task", "Bug", "Story"];

/// How an emulator behaves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EmulatorConfig {
    /// The account's e-mail (default `bot@example.com`).
    pub email: String,
    /// Its API token (default `jira-token`).
    pub api_token: String,
    /// The projects that exist (default `SB`).
    pub projects: Vec<String>,
    /// Account ids of the users that exist.
    pub users: Vec<String>,
    /// Requests per sliding minute; `None` = unlimited.
    pub requests_per_min: Option<u32>,
    /// Writes to one issue per second; `None` = unlimited.
    pub issue_writes_per_sec: Option<u32>,
    /// How long a written issue stays invisible to search, in ms.
    pub index_lag_ms: u64,
    /// The user's time zone, minutes east of UTC: date-times are answered
    /// in it (`…+1000`) and JQL date literals are read in it.
    pub utc_offset_minutes: i32,
}

impl Default for EmulatorConfig {
    fn default() -> Self {
        Self {
            email: "bot@example.com".into(),
            api_token: "jira-token".into(),
            projects: vec!["SB".into()],
            users: vec!["557058:alice".into(), "557058:bob".into()],
            requests_per_min: None,
            issue_writes_per_sec: None,
            index_lag_ms: 0,
            utc_offset_minutes: 0,
        }
    }
}

/// One issue as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Issue {
    /// Numeric id as a string (`"10000"`, …).
    pub id: String,
    /// `PROJ-n`.
    pub key: String,
    /// Its fields as Jira returns them (`summary`, `description` as ADF,
    /// `labels`, `status` {name}, `priority` {name}, …).
    pub fields: Map<String, Value>,
    /// Issue properties by key.
    pub properties: Map<String, Value>,
    /// Writes that changed nothing.
    #[serde(default)]
    pub unchanged_writes: u64,
}

/// A create that passed the checks: its project, fields and properties.
type Checked = (String, Map<String, Value>, Map<String, Value>);

/// The Jira API as an emulator plug-in.
#[derive(Debug)]
pub struct Jira {
    config: EmulatorConfig,
    meter: Meter,
    issues: BTreeMap<u64, Issue>,
    /// When each issue was last written (for the index lag).
    written: HashMap<u64, Instant>,
    /// Issues deleted (their ids answer 404).
    deleted: u64,
    next_id: u64,
    next_num: HashMap<String, u64>,
    requests: VecDeque<Instant>,
    issue_writes: HashMap<u64, VecDeque<Instant>>,
    /// Whether the credentials were revoked (`expire_tokens`).
    revoked: bool,
    /// Every request body received, faulted ones included (privacy checks).
    received: emulator::ReceivedLog,
    /// The result sets of searches whose pages are being read, by number.
    snapshots: HashMap<u64, Vec<u64>>,
    next_snapshot: u64,
}

/// A running Jira emulator; dropping it stops the server.
pub type Emulator = emulator::Emulator<Jira>;
/// The shared state of a running Jira emulator.
pub type EmulatorState = emulator::EmulatorState<Jira>;

impl EmulatorState {
    /// Every issue, in id order.
    pub fn issues(&self) -> Vec<Issue> {
        self.lock().api.issues.values().cloned().collect()
    }

    /// Whether any request received so far (whatever its fate: refused,
    /// faulted, answered) carried `needle` in its body, as UTF-8 or as
    /// JSON escapes.
    pub fn received_contains(&self, needle: &str) -> bool {
        self.lock().api.received.contains(needle)
    }
}

/// What "a person" does in Jira's web interface (the tests' way to change
/// issues behind syncbridge's back): checked as the API checks the same
/// change, and like any change it moves the issue's `updated` (and hides it
/// from search for the index lag). Not requests: the counters do not move.
impl EmulatorState {
    /// Edits issue `id_or_key`: `fields` as the API takes them (`summary`,
    /// `description` as ADF, `labels`, `priority` {name}, …); `status` (a
    /// name) moves it by the workflow, `Done` setting the resolution.
    pub fn person_edit(&self, id_or_key: &str, fields: &Map<String, Value>) -> Result<(), String> {
        let mut g = self.lock();
        let jira = &mut g.api;
        let id = jira.find(id_or_key).ok_or_else(|| format!("no issue {id_or_key}"))?;
        let before = jira.issues[&id].clone();
        let mut stored = before.fields.clone();
        let mut errors = Map::new();
        let mut plain = fields.clone();
        let status = plain.remove("status");
        jira.check_fields(&plain, &mut stored, &mut errors);
        if let Some(s) = status {
            let name = s.as_str().unwrap_or("");
            if !STATUSES.iter().any(|(n, _, _)| *n == name) {
                errors.insert("status".into(), format!("no status {name:?} in the workflow").into());
            }
            stored.insert("status".into(), status_value(name));
            let resolution = if name == "Done" { json!({"name": "Done"}) } else { Value::Null };
            stored.insert("resolution".into(), resolution);
        }
        if !errors.is_empty() {
            return Err(Value::Object(errors).to_string());
        }
        if let Some(issue) = jira.issues.get_mut(&id) {
            issue.fields = stored;
        }
        jira.stamp(id, &before);
        Ok(())
    }

    /// Creates an issue in the first project: `fields` as the API's create
    /// takes them (project and issue type default). Returns (id, key).
    pub fn person_create(&self, fields: &Map<String, Value>) -> Result<(String, String), String> {
        let mut g = self.lock();
        let jira = &mut g.api;
        let mut f = fields.clone();
        let project = jira.config.projects.first().cloned().unwrap_or_default();
        f.entry("project").or_insert_with(|| json!({"key": project}));
        f.entry("issuetype").or_insert_with(|| json!({"name": "Task"}));
        let (project, stored, props) = jira.check_create(&json!({"fields": f})).map_err(|e| e.to_string())?;
        let created = jira.create(&project, stored, props, "http://person");
        let text = |k: &str| created.get(k).and_then(Value::as_str).unwrap_or("").to_owned();
        Ok((text("id"), text("key")))
    }

    /// Deletes an issue (search no longer finds it; its id answers 404).
    pub fn person_delete(&self, id_or_key: &str) -> Result<(), String> {
        let mut g = self.lock();
        let jira = &mut g.api;
        let id = jira.find(id_or_key).ok_or_else(|| format!("no issue {id_or_key}"))?;
        jira.issues.remove(&id);
        jira.written.remove(&id);
        jira.deleted += 1;
        Ok(())
    }
}

impl Jira {
    /// An emulator with `config`.
    pub fn new(config: EmulatorConfig) -> Self {
        Self {
            config,
            meter: Meter::default(),
            issues: BTreeMap::new(),
            written: HashMap::new(),
            deleted: 0,
            next_id: 10_000,
            next_num: HashMap::new(),
            requests: VecDeque::new(),
            issue_writes: HashMap::new(),
            revoked: false,
            received: emulator::ReceivedLog::default(),
            snapshots: HashMap::new(),
            next_snapshot: 0,
        }
    }

    /// Starts an emulator on a free loopback port.
    pub async fn start(config: EmulatorConfig) -> std::io::Result<Emulator> {
        Self::start_on(config, SocketAddr::from((Ipv4Addr::LOCALHOST, 0))).await
    }

    /// Starts an emulator on `addr`.
    pub async fn start_on(config: EmulatorConfig, addr: SocketAddr) -> std::io::Result<Emulator> {
        Emulator::launch(Jira::new(config), addr).await
    }

    fn authorized(&self, req: &Request) -> bool {
        let want = format!("{}:{}", self.config.email, self.config.api_token);
        let Some(got) = req.header("authorization").and_then(|h| h.strip_prefix("Basic ")) else {
            return false;
        };
        !self.revoked && decode_base64(got.trim()).is_some_and(|d| d == want.as_bytes())
    }

    fn find(&self, id_or_key: &str) -> Option<u64> {
        if let Ok(id) = id_or_key.parse::<u64>() {
            return self.issues.contains_key(&id).then_some(id);
        }
        // Keys match case-insensitively (Jira looks the key up again).
        self.issues.iter().find(|(_, i)| i.key.eq_ignore_ascii_case(id_or_key)).map(|(id, _)| *id)
    }

    /// Counts the request against the per-minute limit: the 429 when over.
    fn throttle(&mut self) -> Option<HttpResponse> {
        let limit = self.config.requests_per_min?;
        let now = Instant::now();
        while self.requests.front().is_some_and(|t| now.duration_since(*t) >= Duration::from_secs(60)) {
            self.requests.pop_front();
        }
        if self.requests.len() as u32 >= limit {
            let oldest = *self.requests.front()?;
            let wait = Duration::from_secs(60).saturating_sub(now.duration_since(oldest));
            self.meter.stats.throttled += 1;
            return Some(too_many("jira-burst-based", wait.as_secs_f64().ceil().max(1.0) as u64));
        }
        self.requests.push_back(now);
        self.meter.stats.ru_used += 1;
        None
    }

    /// Counts a write to issue `id` against the per-issue limit: the 429 when over.
    fn issue_write(&mut self, id: u64) -> Option<HttpResponse> {
        let limit = self.config.issue_writes_per_sec?;
        let now = Instant::now();
        let q = self.issue_writes.entry(id).or_default();
        while q.front().is_some_and(|t| now.duration_since(*t) >= Duration::from_secs(1)) {
            q.pop_front();
        }
        if q.len() as u32 >= limit {
            self.meter.stats.throttled += 1;
            return Some(too_many("jira-per-issue-on-write", 1));
        }
        q.push_back(now);
        None
    }

    fn rate_headers(&self, r: &mut HttpResponse) {
        let Some(limit) = self.config.requests_per_min else { return };
        let used = self.requests.len() as u32;
        let remaining = limit.saturating_sub(used);
        let h = r.headers_mut();
        for (name, value) in [
            ("x-ratelimit-limit", limit.to_string()),
            ("x-ratelimit-remaining", remaining.to_string()),
            ("x-ratelimit-reset", reset_in(60)),
        ] {
            if let Ok(v) = HeaderValue::from_str(&value) {
                h.insert(name, v);
            }
        }
        if remaining * 5 < limit {
            h.insert("x-ratelimit-nearlimit", HeaderValue::from_static("true"));
        }
    }

    /// Checks a create's fields and properties: the issue's fields as
    /// stored, or Jira's errors.
    fn check_create(&self, body: &Value) -> Result<Checked, Value> {
        let fields = body.get("fields").and_then(Value::as_object).cloned().unwrap_or_default();
        let mut errors = Map::new();
        let project = fields.get("project").and_then(|p| p.get("key").or_else(|| p.get("id"))).and_then(Value::as_str);
        let project = match project {
            Some(p) if self.config.projects.iter().any(|k| k == p) => Some(p.to_owned()),
            _ => {
                errors.insert("project".into(), "Specify a valid project ID or key".into());
                None
            }
        };
        if !fields.contains_key("issuetype") {
            errors.insert("issuetype".into(), "Specify an issue type".into());
        }
        if !fields.contains_key("summary") {
            errors.insert("summary".into(), "You must specify a summary of the issue.".into());
        }
        let mut stored = Map::new();
        stored.insert("issuetype".into(), json!({"name": "Task"}));
        stored.insert("labels".into(), json!([]));
        stored.insert("priority".into(), json!({"name": "Medium"}));
        stored.insert("assignee".into(), Value::Null);
        stored.insert("description".into(), Value::Null);
        stored.insert("duedate".into(), Value::Null);
        stored.insert("resolution".into(), Value::Null);
        stored.insert("status".into(), status_value(STATUSES[0].0));
        let f: Map<String, Value> = fields.into_iter().filter(|(k, _)| k != "project").collect();
        self.check_fields(&f, &mut stored, &mut errors);
        let properties = check_properties(body, &mut errors);
        match project {
            Some(p) if errors.is_empty() => {
                stored.insert("project".into(), json!({"key": p}));
                Ok((p, stored, properties))
            }
            _ => Err(json!({"errorMessages": [], "errors": errors})),
        }
    }

    /// Checks and applies `fields` onto `stored`, recording Jira's errors.
    fn check_fields(
        &self,
        fields: &Map<String, Value>,
        stored: &mut Map<String, Value>,
        errors: &mut Map<String, Value>,
    ) {
        for (k, v) in fields {
            let err = match k.as_str() {
                "summary" => match v.as_str() {
                    Some(s) if s.trim().is_empty() => Some("You must specify a summary of the issue.".to_owned()),
                    Some(s) if s.chars().count() > MAX_SUMMARY => {
                        Some(format!("Summary must be less than {MAX_SUMMARY} characters."))
                    }
                    Some(s) if s.contains(['\n', '\r']) => {
                        Some("The summary is invalid because it contains newline characters.".to_owned())
                    }
                    Some(_) => None,
                    None => Some("Operation value must be a string".to_owned()),
                },
                "description" | "environment" => match v {
                    Value::Null => None,
                    doc => check_adf(doc).err(),
                },
                "labels" => match v.as_array() {
                    None => Some("Operation value must be an array".to_owned()),
                    Some(a) => a.iter().find_map(|l| match l.as_str() {
                        None => Some("Operation value must be a string".to_owned()),
                        Some(s) if s.is_empty() || s.contains(char::is_whitespace) => {
                            Some(format!("The label '{s}' contains spaces which is invalid."))
                        }
                        Some(s) if s.chars().count() > 255 => {
                            Some("The label must not exceed 255 characters.".to_owned())
                        }
                        Some(_) => None,
                    }),
                },
                "priority" => match v.get("name").and_then(Value::as_str) {
                    Some(p) if PRIORITIES.contains(&p) => None,
                    Some(p) => Some(format!("Priority name '{p}' is not valid")),
                    None => Some("Specify the Priority (id or name) in the string format".to_owned()),
                },
                "issuetype" => match v.get("name").or_else(|| v.get("id")).and_then(Value::as_str) {
                    Some(t) if ISSUE_TYPES.contains(&t) => None,
                    _ => Some("The issue type selected is invalid.".to_owned()),
                },
                "assignee" | "reporter" => match v {
                    Value::Null => None,
                    u => match u.get("accountId").and_then(Value::as_str) {
                        Some(a) if self.config.users.iter().any(|x| x == a) => None,
                        Some(a) => Some(format!("User '{a}' cannot be assigned issues.")),
                        None => Some("Specify a valid value for assignee".to_owned()),
                    },
                },
                "duedate" => match v {
                    Value::Null => None,
                    Value::String(s) if is_date(s) => None,
                    other => {
                        Some(format!("Error parsing date string: {}", other.as_str().unwrap_or(&other.to_string())))
                    }
                },
                _ => Some(format!("Field '{k}' cannot be set. It is not on the appropriate screen, or unknown.")),
            };
            match err {
                Some(e) => {
                    errors.insert(k.clone(), Value::String(e));
                }
                None => {
                    let stored_value = match k.as_str() {
                        "priority" | "issuetype" => json!({"name": v.get("name").or_else(|| v.get("id")).cloned()}),
                        "assignee" | "reporter" if !v.is_null() => {
                            json!({"accountId": v["accountId"], "displayName": v["accountId"]})
                        }
                        _ => v.clone(),
                    };
                    stored.insert(k.clone(), stored_value);
                }
            }
        }
    }

    /// Applies an edit's `update` operations (`{field: [{add|remove|set: value}]}`)
    /// onto `stored`: `labels` takes `add`, `remove` and `set`, any other
    /// field `set` (checked as in `fields`); a field named in both is refused.
    fn apply_update(
        &self,
        update: &Map<String, Value>,
        fields: &Map<String, Value>,
        stored: &mut Map<String, Value>,
        errors: &mut Map<String, Value>,
    ) {
        for (f, ops) in update {
            if fields.contains_key(f) {
                errors.insert(f.clone(), format!("Field '{f}' cannot be set in both 'fields' and 'update'.").into());
                continue;
            }
            for op in ops.as_array().into_iter().flatten() {
                let Some((verb, value)) = op.as_object().and_then(|o| o.iter().next()) else { continue };
                match (f.as_str(), verb.as_str()) {
                    ("labels", "add" | "remove") => {
                        let mut labels = stored.get("labels").and_then(Value::as_array).cloned().unwrap_or_default();
                        if verb == "add" {
                            let one = Map::from_iter([("labels".to_owned(), json!([value]))]);
                            let mut scratch = stored.clone();
                            self.check_fields(&one, &mut scratch, errors);
                            if !labels.contains(value) {
                                labels.push(value.clone());
                            }
                        } else {
                            labels.retain(|l| l != value);
                        }
                        stored.insert("labels".into(), Value::Array(labels));
                    }
                    (_, "set") => {
                        let one = Map::from_iter([(f.clone(), value.clone())]);
                        self.check_fields(&one, stored, errors);
                    }
                    _ => {
                        errors
                            .insert(f.clone(), format!("Field '{f}' does not support the operation '{verb}'.").into());
                    }
                }
            }
        }
    }

    fn create(
        &mut self,
        project: &str,
        mut fields: Map<String, Value>,
        properties: Map<String, Value>,
        origin: &str,
    ) -> Value {
        let id = self.next_id;
        self.next_id += 1;
        let n = self.next_num.entry(project.to_owned()).or_insert(0);
        *n += 1;
        let key = format!("{project}-{n}");
        let now = jira_time(now_ms(), self.config.utc_offset_minutes);
        fields.insert("created".into(), Value::String(now.clone()));
        fields.insert("updated".into(), Value::String(now));
        self.issues.insert(id, Issue { id: id.to_string(), key: key.clone(), fields, properties, unchanged_writes: 0 });
        self.written.insert(id, Instant::now());
        json!({"id": id.to_string(), "key": key, "self": format!("{origin}/rest/api/3/issue/{id}")})
    }

    fn touch(&mut self, id: u64, before: &Issue) {
        self.stamp(id, before);
        self.meter.wrote();
    }

    /// After a change of issue `id` (syncbridge's or a person's): `updated`
    /// moves (always forward, by a millisecond at least) unless nothing
    /// changed, and search sees the issue after the index lag.
    fn stamp(&mut self, id: u64, before: &Issue) {
        let offset = self.config.utc_offset_minutes;
        let Some(issue) = self.issues.get_mut(&id) else { return };
        if issue.fields == before.fields && issue.properties == before.properties {
            issue.unchanged_writes += 1;
        } else {
            let was = issue_ms(before, "updated");
            issue.fields.insert("updated".into(), Value::String(jira_time(now_ms().max(was + 1), offset)));
        }
        self.written.insert(id, Instant::now());
    }

    fn issue_bean(&self, id: u64, fields: &FieldSel, properties: &[String], origin: &str, expand: &str) -> Value {
        let issue = &self.issues[&id];
        let mut out =
            json!({"id": issue.id, "key": issue.key, "self": format!("{origin}/rest/api/3/issue/{}", issue.id)});
        let chosen: Map<String, Value> =
            issue.fields.iter().filter(|(k, _)| fields.wants(k)).map(|(k, v)| (k.clone(), v.clone())).collect();
        if !chosen.is_empty() || fields.any() {
            out["fields"] = Value::Object(chosen);
        }
        if !properties.is_empty() {
            let props: Map<String, Value> = issue
                .properties
                .iter()
                .filter(|(k, _)| properties.iter().any(|p| p == *k))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            out["properties"] = Value::Object(props);
        }
        if expand.split(',').any(|e| e.trim() == "transitions") {
            out["transitions"] = transitions_of(issue);
        }
        out
    }

    /// Serves a checked request; `lose_half`: a bulk answer loses the
    /// second half of the issues it created (they are created all the same).
    fn serve_op(
        &mut self,
        req: &Request,
        o: &openapi::Operation,
        body: Option<Value>,
        lose_half: bool,
    ) -> HttpResponse {
        let q: Vec<(String, String)> = serde_urlencoded::from_str(&req.query).unwrap_or_default();
        let qv = |name: &str| -> Vec<String> {
            q.iter().filter(|(k, _)| k == name).flat_map(|(_, v)| v.split(',').map(str::to_owned)).collect()
        };
        let origin = req.origin.clone();
        let id_param = o.param("issueIdOrKey").to_owned();
        let issue_id = if id_param.is_empty() { None } else { self.find(&id_param) };
        if !id_param.is_empty() && issue_id.is_none() {
            return jira_error(404, &["Issue does not exist or you do not have permission to see it."], Map::new());
        }
        let body = body.unwrap_or(Value::Null);
        match (req.method.as_str(), o.template.as_str()) {
            ("GET", "/rest/api/3/myself") => json_response(
                200,
                &json!({"accountId": "557058:bot", "accountType": "atlassian", "active": true,
                        "displayName": "syncbridge", "emailAddress": self.config.email, "timeZone": time_zone_name(self.config.utc_offset_minutes),
                        "self": format!("{origin}/rest/api/3/user?accountId=557058:bot")}),
            ),
            ("POST", "/rest/api/3/issue") => match self.check_create(&body) {
                Ok((project, fields, props)) => {
                    let created = self.create(&project, fields, props, &origin);
                    self.meter.wrote();
                    json_response(201, &created)
                }
                Err(e) => json_response(400, &e),
            },
            ("POST", "/rest/api/3/issue/bulk") => {
                let updates = body.get("issueUpdates").and_then(Value::as_array).cloned().unwrap_or_default();
                if updates.len() > BULK_LIMIT {
                    return jira_error(
                        400,
                        &[&format!("The number of issues to create exceeds the limit of {BULK_LIMIT}.")],
                        Map::new(),
                    );
                }
                let mut issues = Vec::new();
                let mut errors = Vec::new();
                for (n, u) in updates.iter().enumerate() {
                    match self.check_create(u) {
                        Ok((project, fields, props)) => {
                            issues.push(self.create(&project, fields, props, &origin));
                            self.meter.wrote();
                        }
                        Err(e) => errors.push(json!({"status": 400, "elementErrors": e, "failedElementNumber": n})),
                    }
                }
                let status = if issues.is_empty() && !updates.is_empty() { 400 } else { 201 };
                if lose_half {
                    let keep = issues.len() / 2;
                    issues.truncate(keep);
                }
                json_response(status, &json!({"issues": issues, "errors": errors}))
            }
            ("GET", "/rest/api/3/issue/{issueIdOrKey}") => {
                let id = issue_id.unwrap_or_default();
                let fields = FieldSel::new(&qv("fields"), true);
                let expand = qv("expand").join(",");
                json_response(200, &self.issue_bean(id, &fields, &qv("properties"), &origin, &expand))
            }
            ("PUT", "/rest/api/3/issue/{issueIdOrKey}") => {
                let id = issue_id.unwrap_or_default();
                if let Some(r) = self.issue_write(id) {
                    return r;
                }
                let before = self.issues[&id].clone();
                let fields = body.get("fields").and_then(Value::as_object).cloned().unwrap_or_default();
                let mut stored = before.fields.clone();
                let mut errors = Map::new();
                self.check_fields(&fields, &mut stored, &mut errors);
                if let Some(update) = body.get("update").and_then(Value::as_object) {
                    self.apply_update(update, &fields, &mut stored, &mut errors);
                }
                let mut props = before.properties.clone();
                props.extend(check_properties(&body, &mut errors));
                if !errors.is_empty() {
                    return jira_error(400, &[], errors);
                }
                if let Some(issue) = self.issues.get_mut(&id) {
                    issue.fields = stored;
                    issue.properties = props;
                }
                self.touch(id, &before);
                if qv("returnIssue").first().is_some_and(|v| v == "true") {
                    // The issue as it is after the edit (all its fields).
                    let all = FieldSel::new(&[], true);
                    return json_response(200, &self.issue_bean(id, &all, &[], &origin, &qv("expand").join(",")));
                }
                no_content()
            }
            ("DELETE", "/rest/api/3/issue/{issueIdOrKey}") => {
                let id = issue_id.unwrap_or_default();
                self.issues.remove(&id);
                self.written.remove(&id);
                self.deleted += 1;
                self.meter.wrote();
                no_content()
            }
            ("GET", "/rest/api/3/issue/{issueIdOrKey}/transitions") => {
                json_response(200, &json!({"transitions": transitions_of(&self.issues[&issue_id.unwrap_or_default()])}))
            }
            ("POST", "/rest/api/3/issue/{issueIdOrKey}/transitions") => {
                let id = issue_id.unwrap_or_default();
                let tid = body.pointer("/transition/id").and_then(Value::as_str).unwrap_or("");
                let current = self.issues[&id]
                    .fields
                    .get("status")
                    .and_then(|s| s.get("name"))
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_owned();
                let Some((to, _, _)) = STATUSES.iter().find(|(name, _, t)| *t == tid && *name != current) else {
                    return jira_error(
                        400,
                        &[&format!("Transition id '{tid}' is not valid for this issue.")],
                        Map::new(),
                    );
                };
                if let Some(r) = self.issue_write(id) {
                    return r;
                }
                let before = self.issues[&id].clone();
                if let Some(issue) = self.issues.get_mut(&id) {
                    issue.fields.insert("status".into(), status_value(to));
                    let resolution = if *to == "Done" { json!({"name": "Done"}) } else { Value::Null };
                    issue.fields.insert("resolution".into(), resolution);
                }
                self.touch(id, &before);
                no_content()
            }
            ("GET", "/rest/api/3/issue/{issueIdOrKey}/properties") => {
                let issue = &self.issues[&issue_id.unwrap_or_default()];
                let keys: Vec<Value> = issue
                    .properties
                    .keys()
                    .map(
                        |k| json!({"key": k, "self": format!("{origin}/rest/api/3/issue/{}/properties/{k}", issue.id)}),
                    )
                    .collect();
                json_response(200, &json!({"keys": keys}))
            }
            (m, "/rest/api/3/issue/{issueIdOrKey}/properties/{propertyKey}") => {
                let id = issue_id.unwrap_or_default();
                let key = o.param("propertyKey").to_owned();
                match m {
                    "GET" => match self.issues[&id].properties.get(&key) {
                        Some(v) => json_response(200, &json!({"key": key, "value": v})),
                        None => {
                            jira_error(404, &[&format!("The property with key '{key}' does not exist.")], Map::new())
                        }
                    },
                    "DELETE" => {
                        let before = self.issues[&id].clone();
                        if self.issues.get_mut(&id).and_then(|i| i.properties.remove(&key)).is_none() {
                            return jira_error(
                                404,
                                &[&format!("The property with key '{key}' does not exist.")],
                                Map::new(),
                            );
                        }
                        self.touch(id, &before);
                        no_content()
                    }
                    _ => {
                        let mut errors = Map::new();
                        let props =
                            check_properties(&json!({"properties": [{"key": key, "value": body}]}), &mut errors);
                        if !errors.is_empty() {
                            return jira_error(400, &[], errors);
                        }
                        let before = self.issues[&id].clone();
                        let existed = before.properties.contains_key(&key);
                        if let Some(issue) = self.issues.get_mut(&id) {
                            issue.properties.extend(props);
                        }
                        self.touch(id, &before);
                        json_response(if existed { 200 } else { 201 }, &json!({}))
                    }
                }
            }
            (_, "/rest/api/3/search/jql") => {
                let (jql, token, max, fields, props, reconcile) = if req.method == "GET" {
                    let first = |n: &str| q.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone());
                    (
                        first("jql").unwrap_or_default(),
                        first("nextPageToken"),
                        first("maxResults").and_then(|m| m.parse::<u64>().ok()),
                        qv("fields"),
                        qv("properties"),
                        qv("reconcileIssues"),
                    )
                } else {
                    let strings = |k: &str| -> Vec<String> {
                        body.get(k)
                            .and_then(Value::as_array)
                            .into_iter()
                            .flatten()
                            .filter_map(|v| match v {
                                Value::String(s) => Some(s.clone()),
                                Value::Number(n) => Some(n.to_string()),
                                _ => None,
                            })
                            .collect()
                    };
                    (
                        body.get("jql").and_then(Value::as_str).unwrap_or("").to_owned(),
                        body.get("nextPageToken").and_then(Value::as_str).map(str::to_owned),
                        body.get("maxResults").and_then(Value::as_u64),
                        strings("fields"),
                        strings("properties"),
                        strings("reconcileIssues"),
                    )
                };
                self.search(&jql, token, max, &fields, &props, &reconcile, &origin)
            }
            _ => jira_error(405, &["Method not allowed"], Map::new()),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn search(
        &mut self,
        jql: &str,
        token: Option<String>,
        max: Option<u64>,
        fields: &[String],
        props: &[String],
        reconcile: &[String],
        origin: &str,
    ) -> HttpResponse {
        let query = match Jql::parse_at(jql, self.config.utc_offset_minutes, now_ms()) {
            Ok(q) => q,
            Err(e) => return jira_error(400, &[&e], Map::new()),
        };
        if props.len() > 5 {
            return jira_error(400, &["You can request at most 5 properties."], Map::new());
        }
        if reconcile.len() > 50 {
            return jira_error(400, &["You can reconcile at most 50 issues."], Map::new());
        }
        let sel = FieldSel::new(fields, false);
        let cap = if sel.only_ids() { 5000 } else { 100 };
        let max = max.unwrap_or(50).clamp(1, cap) as usize;
        // A token names the result set of the search that gave it (taken
        // when its first page was served) and where the next page starts:
        // issues changed meanwhile are shown as they are now, in the
        // order the search found them; none is skipped or shown twice.
        let (snapshot, start) = match token.as_deref() {
            None => {
                let lag = Duration::from_millis(self.config.index_lag_ms);
                let now = Instant::now();
                let mut hits: Vec<u64> = self
                    .issues
                    .iter()
                    .filter(|(id, i)| {
                        let indexed = self.written.get(id).is_none_or(|t| now.duration_since(*t) >= lag)
                            || reconcile.iter().any(|r| r == &i.id);
                        indexed && query.matches(i)
                    })
                    .map(|(id, _)| *id)
                    .collect();
                query.sort(&mut hits, &self.issues);
                self.next_snapshot += 1;
                self.snapshots.insert(self.next_snapshot, hits);
                (self.next_snapshot, 0)
            }
            Some(t) => match parse_token(t).filter(|(n, _)| self.snapshots.contains_key(n)) {
                Some(at) => at,
                None => return jira_error(400, &["The provided next page token is invalid or expired."], Map::new()),
            },
        };
        let hits = self.snapshots.get(&snapshot).cloned().unwrap_or_default();
        // Issues deleted since the search ran are not shown.
        let page: Vec<Value> = hits
            .iter()
            .skip(start)
            .take(max)
            .filter(|id| self.issues.contains_key(id))
            .map(|id| self.issue_bean(*id, &sel, props, origin, ""))
            .collect();
        let next = start + max;
        let last = next >= hits.len();
        let mut out = json!({"issues": page, "isLast": last});
        if last {
            self.snapshots.remove(&snapshot);
        } else {
            out["nextPageToken"] = Value::String(format!("{snapshot}-{next}"));
        }
        json_response(200, &out)
    }
}

/// A page token: `{snapshot}-{start}`.
fn parse_token(t: &str) -> Option<(u64, usize)> {
    let (a, b) = t.split_once('-')?;
    Some((a.parse().ok()?, b.parse().ok()?))
}

/// Now in epoch milliseconds.
fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

/// The fields a read asks for.
struct FieldSel {
    all: bool,
    names: Vec<String>,
    minus: Vec<String>,
}

impl FieldSel {
    fn new(asked: &[String], default_all: bool) -> Self {
        let mut s = Self { all: asked.is_empty() && default_all, names: Vec::new(), minus: Vec::new() };
        for a in asked.iter().map(|a| a.trim()) {
            match a {
                "*all" | "*navigable" => s.all = true,
                "id" | "key" | "" => {}
                n => match n.strip_prefix('-') {
                    Some(minus) => {
                        s.all = true;
                        s.minus.push(minus.to_owned());
                    }
                    None => s.names.push(n.to_owned()),
                },
            }
        }
        s
    }

    fn wants(&self, f: &str) -> bool {
        (self.all || self.names.iter().any(|n| n == f)) && !self.minus.iter().any(|m| m == f)
    }

    fn any(&self) -> bool {
        self.all || !self.names.is_empty()
    }

    fn only_ids(&self) -> bool {
        !self.any()
    }
}

/// The JQL subset: clauses joined by AND, then ORDER BY.
#[derive(Debug)]
struct Jql {
    /// `field = value` and `field in (values)`.
    clauses: Vec<(String, Vec<String>)>,
    /// `updated >= "yyyy-MM-dd HH:mm"` (and `>`, `<=`, `<`): the operator
    /// and the instant in epoch milliseconds.
    updated: Vec<(String, i64)>,
    /// ORDER BY: fields and whether descending.
    order: Vec<(String, bool)>,
}

/// The fields ORDER BY takes here.
const ORDER_FIELDS: [&str; 5] = ["key", "id", "updated", "created", "issuekey"];

impl Jql {
    /// Parses `jql`; date literals are in the user's time zone, `offset_min`
    /// minutes east of UTC, and relative dates (`-5m`) count from `now_ms`.
    fn parse_at(jql: &str, offset_min: i32, now_ms: i64) -> Result<Self, String> {
        let lower = jql.to_ascii_lowercase();
        let lead = lower.len() - lower.trim_start().len();
        let at = if lower.trim_start().starts_with("order by") {
            Some(lead)
        } else {
            lower.find(" order by ").map(|i| i + 1)
        };
        let (cond, order) = match at {
            Some(i) => (&jql[..i], &lower[i + 8..]),
            None => (jql, ""),
        };
        let mut order_by = Vec::new();
        for o in order.split(',').map(str::trim).filter(|o| !o.is_empty()) {
            let mut words = o.split_whitespace();
            let field = words.next().unwrap_or("").to_owned();
            let desc = match words.next() {
                None | Some("asc") => false,
                Some("desc") => true,
                Some(w) => return Err(format!("Error in the JQL Query: expecting ASC or DESC but got '{w}'.")),
            };
            if !ORDER_FIELDS.contains(&field.as_str()) {
                return Err(format!("Field '{field}' does not exist or you do not have permission to view it."));
            }
            order_by.push((field, desc));
        }
        if order_by.len() > 7 {
            return Err("Error in the JQL Query: at most 7 fields can be ordered by.".into());
        }
        let mut clauses = Vec::new();
        let mut updated = Vec::new();
        for part in split_and(cond) {
            let part = part.trim();
            if part.is_empty() {
                continue;
            }
            if let Some((f, op, v)) = split_cmp(part) {
                let field = f.trim().to_ascii_lowercase();
                if field != "updated" && field != "updateddate" {
                    return Err(format!("Error in the JQL Query: the operator '{op}' is not supported by '{field}'."));
                }
                let at = jql_instant(&unquote(v.trim())?, offset_min, now_ms)?;
                updated.push((op.to_owned(), at));
                continue;
            }
            let (field, values) = if let Some((f, rest)) = split_kw(part, " in ") {
                let inner = rest.trim().strip_prefix('(').and_then(|r| r.strip_suffix(')'));
                let inner = inner.ok_or_else(|| format!("Error in the JQL Query: expecting '(' in '{part}'."))?;
                (f, split_list(inner)?)
            } else if let Some((f, v)) = part.split_once('=') {
                (f, vec![unquote(v.trim())?])
            } else {
                return Err(format!("Error in the JQL Query: the clause '{part}' is not understood here."));
            };
            let field = field.trim().to_ascii_lowercase();
            if !matches!(field.as_str(), "project" | "labels" | "key" | "issuekey" | "status" | "id") {
                return Err(format!("Field '{field}' does not exist or you do not have permission to view it."));
            }
            clauses.push((field, values));
        }
        // Search must be bounded: at least one restriction.
        if clauses.is_empty() && updated.is_empty() {
            return Err(
                "Unbounded JQL queries are not allowed here. Please add a search restriction to your query.".into()
            );
        }
        Ok(Self { clauses, updated, order: order_by })
    }

    #[cfg(test)]
    fn parse(jql: &str) -> Result<Self, String> {
        Self::parse_at(jql, 0, 0)
    }

    fn matches(&self, i: &Issue) -> bool {
        let updated = issue_ms(i, "updated");
        self.updated.iter().all(|(op, at)| match op.as_str() {
            ">=" => updated >= *at,
            ">" => updated > *at,
            "<=" => updated <= *at,
            _ => updated < *at,
        }) && self.clauses.iter().all(|(f, values)| match f.as_str() {
            "project" => {
                let p = i.fields.get("project").and_then(|p| p.get("key")).and_then(Value::as_str).unwrap_or("");
                values.iter().any(|v| v.eq_ignore_ascii_case(p))
            }
            "labels" => {
                let labels = i.fields.get("labels").and_then(Value::as_array).cloned().unwrap_or_default();
                values.iter().any(|v| labels.iter().any(|l| l.as_str() == Some(v)))
            }
            "status" => {
                let s = i.fields.get("status").and_then(|s| s.get("name")).and_then(Value::as_str).unwrap_or("");
                values.iter().any(|v| v.eq_ignore_ascii_case(s))
            }
            "id" => values.contains(&i.id),
            _ => values.iter().any(|v| v.eq_ignore_ascii_case(&i.key) || *v == i.id),
        })
    }

    /// Sorts hits (issue ids, in id order) by the ORDER BY (none: as they are).
    fn sort(&self, hits: &mut [u64], issues: &BTreeMap<u64, Issue>) {
        if self.order.is_empty() {
            return;
        }
        hits.sort_by(|a, b| {
            let (ia, ib) = (&issues[a], &issues[b]);
            for (f, desc) in &self.order {
                let o = match f.as_str() {
                    "updated" | "created" => issue_ms(ia, f).cmp(&issue_ms(ib, f)),
                    // ids and keys of one project grow together
                    _ => a.cmp(b),
                };
                let o = if *desc { o.reverse() } else { o };
                if o != std::cmp::Ordering::Equal {
                    return o;
                }
            }
            std::cmp::Ordering::Equal
        });
    }
}

/// An issue's date-time field (`updated`, `created`) in epoch milliseconds.
fn issue_ms(i: &Issue, field: &str) -> i64 {
    i.fields.get(field).and_then(Value::as_str).and_then(parse_jira_time).unwrap_or(0)
}

/// `2016-09-28T23:08:32.097+1000` in epoch milliseconds.
pub fn parse_jira_time(s: &str) -> Option<i64> {
    let t = jiff::fmt::strtime::parse("%Y-%m-%dT%H:%M:%S%.f%z", s).ok()?.to_timestamp().ok()?;
    Some(t.as_millisecond())
}

/// A JQL date literal (`"yyyy-MM-dd HH:mm"`, `"yyyy/MM/dd HH:mm"`, a date
/// alone, or a relative `-5m` / `-1h` / `-2d` / `-1w`) as epoch ms, in the
/// user's time zone (`offset_min` east of UTC).
fn jql_instant(v: &str, offset_min: i32, now_ms: i64) -> Result<i64, String> {
    let bad = || {
        format!(
            "Date value '{v}' for field 'updated' is invalid. Valid formats include: 'yyyy/MM/dd HH:mm', \
             'yyyy-MM-dd HH:mm', 'yyyy/MM/dd', 'yyyy-MM-dd', or a period format e.g. '-5d', '4w 2d'."
        )
    };
    if let Some(rel) = v.strip_prefix('-') {
        let (n, unit) = rel.split_at(rel.len().saturating_sub(1));
        let n: i64 = n.parse().map_err(|_| bad())?;
        let unit_ms = match unit {
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            "w" => 7 * 86_400_000,
            _ => return Err(bad()),
        };
        return Ok(now_ms - n * unit_ms);
    }
    let norm = v.replace('/', "-");
    let with_time = if norm.len() == 10 { format!("{norm} 00:00") } else { norm };
    let dt = jiff::civil::DateTime::strptime("%Y-%m-%d %H:%M", &with_time).map_err(|_| bad())?;
    let offset = jiff::tz::Offset::from_seconds(offset_min * 60).map_err(|_| bad())?;
    let ts = offset.to_timestamp(dt).map_err(|_| bad())?;
    Ok(ts.as_millisecond())
}

/// `field OP value` for the comparison operators (not `=`).
fn split_cmp(part: &str) -> Option<(&str, &str, &str)> {
    for op in [">=", "<=", ">", "<"] {
        if let Some(i) = part.find(op) {
            // Not inside a quoted value.
            if part[..i].contains('"') {
                continue;
            }
            return Some((&part[..i], op, &part[i + op.len()..]));
        }
    }
    None
}

fn split_kw<'a>(s: &'a str, kw: &str) -> Option<(&'a str, &'a str)> {
    let i = s.to_ascii_lowercase().find(kw)?;
    Some((&s[..i], &s[i + kw.len()..]))
}

/// Splits on ` AND ` outside quotes.
fn split_and(s: &str) -> Vec<String> {
    let mut out = vec![String::new()];
    let mut quoted = false;
    let mut i = 0;
    let b = s.as_bytes();
    while i < b.len() {
        let c = s[i..].chars().next().unwrap_or(' ');
        if c == '"' {
            quoted = !quoted;
        }
        if !quoted && b.len() >= i + 5 && b[i..i + 5].eq_ignore_ascii_case(b" and ") {
            out.push(String::new());
            i += 5;
            continue;
        }
        if let Some(l) = out.last_mut() {
            l.push(c);
        }
        i += c.len_utf8();
    }
    out
}

fn split_list(s: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    for c in s.chars() {
        match c {
            '"' => {
                quoted = !quoted;
                cur.push(c);
            }
            ',' if !quoted => out.push(unquote(std::mem::take(&mut cur).trim())?),
            _ => cur.push(c),
        }
    }
    out.push(unquote(cur.trim())?);
    Ok(out)
}

fn unquote(s: &str) -> Result<String, String> {
    if let Some(inner) = s.strip_prefix('"').and_then(|r| r.strip_suffix('"')) {
        return Ok(inner.replace("\\\"", "\"").replace("\\\\", "\\"));
    }
    if s.is_empty() || s.contains(char::is_whitespace) {
        return Err(format!("Error in the JQL Query: '{s}' is not a value."));
    }
    Ok(s.to_owned())
}

fn check_properties(body: &Value, errors: &mut Map<String, Value>) -> Map<String, Value> {
    let mut out = Map::new();
    for p in body.get("properties").and_then(Value::as_array).into_iter().flatten() {
        let key = p.get("key").and_then(Value::as_str).unwrap_or("");
        let value = p.get("value").cloned().unwrap_or(Value::Null);
        if key.is_empty() || key.chars().count() > 255 {
            errors.insert("properties".into(), "The property key must be 1 to 255 characters.".into());
        } else if value.is_null() || value.to_string().chars().count() > MAX_PROPERTY {
            errors.insert(
                "properties".into(),
                format!("The property value must be valid JSON of at most {MAX_PROPERTY} characters.").into(),
            );
        } else {
            out.insert(key.to_owned(), value);
        }
    }
    out
}

/// Node types of ADF (block and inline) accepted.
const ADF_NODES: [&str; 22] = [
    "doc",
    "paragraph",
    "text",
    "hardBreak",
    "heading",
    "bulletList",
    "orderedList",
    "listItem",
    "codeBlock",
    "blockquote",
    "rule",
    "panel",
    "table",
    "tableRow",
    "tableHeader",
    "tableCell",
    "mention",
    "emoji",
    "date",
    "inlineCard",
    "mediaSingle",
    "media",
];

/// An Atlassian Document: version 1, known nodes, no empty text, at most
/// [`MAX_TEXT`] characters of text.
pub fn check_adf(doc: &Value) -> Result<(), String> {
    const NOT_ADF: &str = "Operation value must be an Atlassian Document (see the Atlassian Document Format)";
    if doc.get("type").and_then(Value::as_str) != Some("doc")
        || doc.get("version").and_then(Value::as_u64) != Some(1)
        || !doc.get("content").is_some_and(Value::is_array)
    {
        return Err(NOT_ADF.into());
    }
    fn walk(n: &Value, chars: &mut usize) -> bool {
        let Some(t) = n.get("type").and_then(Value::as_str) else { return false };
        if !ADF_NODES.contains(&t) {
            return false;
        }
        if t == "text" {
            let Some(s) = n.get("text").and_then(Value::as_str).filter(|s| !s.is_empty()) else { return false };
            *chars += s.chars().count();
        }
        match n.get("content") {
            None => true,
            Some(Value::Array(c)) => c.iter().all(|x| walk(x, chars)),
            Some(_) => false,
        }
    }
    let mut chars = 0;
    if !walk(doc, &mut chars) {
        return Err(NOT_ADF.into());
    }
    if chars > MAX_TEXT {
        return Err(format!("The entered text is too long. It exceeds the allowed limit of {MAX_TEXT} characters."));
    }
    Ok(())
}

fn status_value(name: &str) -> Value {
    let cat = STATUSES.iter().find(|(n, _, _)| *n == name).map_or("new", |(_, c, _)| c);
    json!({"name": name, "statusCategory": {"key": cat}})
}

fn transitions_of(issue: &Issue) -> Value {
    let current = issue.fields.get("status").and_then(|s| s.get("name")).and_then(Value::as_str).unwrap_or("");
    let list: Vec<Value> = STATUSES
        .iter()
        .filter(|(name, _, _)| *name != current)
        .map(|(name, _, id)| json!({"id": id, "name": name, "to": status_value(name), "hasScreen": false, "isAvailable": true}))
        .collect();
    Value::Array(list)
}

fn is_date(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 10
        && b[4] == b'-'
        && b[7] == b'-'
        && s.bytes().enumerate().all(|(i, c)| i == 4 || i == 7 || c.is_ascii_digit())
        && (1..=12).contains(&s[5..7].parse::<u32>().unwrap_or(0))
        && (1..=31).contains(&s[8..10].parse::<u32>().unwrap_or(0))
}

/// `2016-09-28T23:08:32.097+0000`.
fn jira_time(ms: i64, offset_min: i32) -> String {
    let ts = jiff::Timestamp::from_millisecond(ms).unwrap_or(jiff::Timestamp::UNIX_EPOCH);
    let offset = jiff::tz::Offset::from_seconds(offset_min * 60).unwrap_or(jiff::tz::Offset::UTC);
    ts.to_zoned(jiff::tz::TimeZone::fixed(offset)).strftime("%Y-%m-%dT%H:%M:%S%.3f%z").to_string()
}

/// An IANA name of a fixed offset (`Etc/GMT-10` is ten hours east).
fn time_zone_name(offset_min: i32) -> String {
    match offset_min {
        0 => "UTC".into(),
        m if m % 60 == 0 => format!("Etc/GMT{:+}", -m / 60),
        _ => "UTC".into(),
    }
}

/// `yyyy-MM-ddTHH:mmZ`, `secs` from now.
fn reset_in(secs: u64) -> String {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default() + Duration::from_secs(secs);
    let ts = jiff::Timestamp::from_second(now.as_secs() as i64).unwrap_or(jiff::Timestamp::UNIX_EPOCH);
    ts.strftime("%Y-%m-%dT%H:%MZ").to_string()
}

fn too_many(reason: &'static str, retry_after: u64) -> HttpResponse {
    let mut r = jira_error(429, &["Rate limit exceeded."], Map::new());
    let h = r.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&retry_after.to_string()) {
        h.insert(RETRY_AFTER, v);
    }
    h.insert("ratelimit-reason", HeaderValue::from_static(reason));
    r
}

fn no_content() -> HttpResponse {
    let mut r = json_response(204, &Value::Null);
    *r.body_mut() = http_body_util::Full::new(bytes::Bytes::new());
    r
}

/// Jira's `ErrorCollection`.
pub fn jira_error(status: u16, messages: &[&str], errors: Map<String, Value>) -> HttpResponse {
    json_response(status, &json!({"errorMessages": messages, "errors": errors}))
}

/// Standard base64 with padding.
pub fn decode_base64(s: &str) -> Option<Vec<u8>> {
    let val = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    };
    let b = s.as_bytes();
    if !b.len().is_multiple_of(4) {
        return None;
    }
    let mut out = Vec::new();
    for chunk in b.chunks(4) {
        let pad = chunk.iter().rev().take_while(|c| **c == b'=').count();
        if pad > 2 {
            return None;
        }
        let mut n = 0u32;
        for (i, c) in chunk.iter().enumerate() {
            let v = if i >= 4 - pad { 0 } else { val(*c)? };
            n = (n << 6) | v;
        }
        let bytes = [(n >> 16) as u8, (n >> 8) as u8, n as u8];
        out.extend_from_slice(&bytes[..3 - pad]);
    }
    Some(out)
}

impl Api for Jira {
    const CONTENT_TYPE: &'static str = "application/json;charset=UTF-8";
    const CONTROL_ROUTES: &'static [&'static str] = &["GET issues"];

    fn route(&mut self, req: &Request) -> Route {
        self.received.record(req);
        match openapi::operation(&req.method, &req.path) {
            Ok(o) => Route::Serve { batch: o.template == "/rest/api/3/issue/bulk" },
            Err(Refusal::NoMethod) => Route::Answer(jira_error(405, &["Method Not Allowed"], Map::new())),
            Err(_) => Route::Answer(jira_error(404, &["Not Found"], Map::new())),
        }
    }

    fn serve(&mut self, req: &Request, fault: Option<&Fault>) -> HttpResponse {
        if !self.authorized(req) {
            self.meter.stats.unauthorized += 1;
            return jira_error(401, &["Client must be authenticated to access this resource."], Map::new());
        }
        if let Some(r) = self.throttle() {
            return r;
        }
        let r = match openapi::operation(&req.method, &req.path) {
            Err(_) => jira_error(404, &["Not Found"], Map::new()),
            Ok(o) => match openapi::check_query(&o, &req.query).and_then(|()| openapi::check_body(&o, &req.body)) {
                Err(Refusal::Invalid(m)) => jira_error(400, &[&m], Map::new()),
                Err(_) => jira_error(404, &["Not Found"], Map::new()),
                Ok(body) => self.serve_op(req, &o, body, fault == Some(&Fault::BatchMissingResponses)),
            },
        };
        let mut r = r;
        self.rate_headers(&mut r);
        r
    }

    fn error(status: u16, _req: &Request) -> HttpResponse {
        let msg = match status {
            429 => "Rate limit exceeded.",
            503 => "Service Unavailable",
            s if s >= 500 => "Internal server error",
            _ => "The request could not be processed.",
        };
        let mut r = jira_error(status, &[msg], Map::new());
        if status == 429 {
            r.headers_mut().insert("ratelimit-reason", HeaderValue::from_static("jira-burst-based"));
        }
        r
    }

    fn expire_tokens(&mut self) {
        self.revoked = true;
    }

    fn configure(&mut self, config: &Value) -> Result<Map<String, Value>, String> {
        let num = |k: &str| -> Result<Option<Option<u64>>, String> {
            match config.get(k) {
                None => Ok(None),
                Some(Value::Null) => Ok(Some(None)),
                Some(v) => v.as_u64().map(|n| Some(Some(n))).ok_or_else(|| format!("{k} is a whole number or null")),
            }
        };
        if let Some(v) = num("requests_per_min")? {
            self.config.requests_per_min = v.map(|n| n as u32);
        }
        if let Some(v) = num("issue_writes_per_sec")? {
            self.config.issue_writes_per_sec = v.map(|n| n as u32);
        }
        if let Some(v) = num("index_lag_ms")? {
            self.config.index_lag_ms = v.unwrap_or(0);
        }
        let mut out = Map::new();
        out.insert("requests_per_min".into(), json!(self.config.requests_per_min));
        out.insert("issue_writes_per_sec".into(), json!(self.config.issue_writes_per_sec));
        out.insert("index_lag_ms".into(), json!(self.config.index_lag_ms));
        Ok(out)
    }

    fn control(&mut self, method: &str, route: &str, _body: &[u8]) -> Option<HttpResponse> {
        match (method, route) {
            ("GET", "issues") => Some(json_response(200, &json!(self.issues.values().collect::<Vec<_>>()))),
            _ => None,
        }
    }

    fn meter(&self) -> &Meter {
        &self.meter
    }

    fn meter_mut(&mut self) -> &mut Meter {
        &mut self.meter
    }
}

#[cfg(test)]
mod tests;
