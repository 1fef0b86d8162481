//! A local emulator of GitHub's Issues REST API, for testing the `github`
//! target without github.com: a plug-in of the emulator harness
//! (`crate::emulator`), which serves it and does the faults, latency,
//! outages, counters and `/_emulator` control routes.
//!
//! It serves, over plain HTTP on loopback, at the API's root:
//!
//! - `GET /rate_limit` (free, as on GitHub);
//! - `GET|POST /repos/{owner}/{repo}/issues` (list with `state`, `labels`
//!   (all of them), `sort` (`created`, `updated`, `comments`), `direction`,
//!   `since` (issues updated at or after it: GitHub's times have whole
//!   seconds), `per_page` ≤ 100, `page`, the `link` header with `next`,
//!   `last`, `prev`, `first`; deleted issues gone; pull requests mixed in, as
//!   GitHub mixes them: what the twin lookups and the pulls read), `GET|PATCH
//!   /repos/{owner}/{repo}/issues/{issue_number}` (`state_reason` only with a
//!   change of `state`), `GET|POST /repos/{owner}/{repo}/labels`;
//! - every request is matched and validated against GitHub's own OpenAPI
//!   description (`openapi.rs`: paths, methods, parameters, body schemas):
//!   400 "Problems parsing JSON" / "Body should be a JSON object", 422
//!   "Invalid request." with the reason, 404 for unknown paths and methods;
//!   then GitHub's own rules: a title of at most 256 characters, a body of
//!   at most 65,536 (422 "Validation Failed" with `errors[]` of code
//!   `custom`), assignees who can be assigned, milestones that exist, labels
//!   auto-created (colour `ededed`);
//! - `Authorization: Bearer <token>` or `token <token>` (401 "Requires
//!   authentication" / "Bad credentials"), a `User-Agent` required (403),
//!   `X-GitHub-Api-Version` one of `2022-11-28` and `2026-03-10` (400 else);
//! - the primary rate limit (`x-ratelimit-limit`, `-remaining`, `-used`,
//!   `-reset` in epoch seconds, `-resource` on every answer; exceeded: 403 or
//!   429 with `x-ratelimit-remaining: 0`), and the secondary limit on content
//!   creation (creates and updates: 80 a minute and 500 an hour by default;
//!   exceeded: 403 or 429 with `retry-after` and GitHub's message);
//! - weak `etag`s and `If-None-Match` → 304, which costs nothing; a `date`
//!   header (GitHub's clock) on every answer;
//! - deleted issues (410 "This issue was deleted", `delete_issue` below),
//!   repositories with issues disabled (410).
//!
//! `/_emulator/...`: `GET issues` (every issue by repository, deleted ones
//! flagged), `POST repos {"name"}` (a repository now exists); what a person
//! does "on GitHub" (through the API's rules, `updated_at` moving as GitHub
//! moves it, never counted as the app's requests or writes): `POST edit
//! {"repo", "number", "fields"}`, `POST create {"repo", "fields"}` (an issue
//! opened), `POST comment {"repo", "number"}` (only `updated_at` moves),
//! `POST delete_issue {"repo", "number"}` (an admin's delete: gone from
//! listings, 410), `POST pull_request {"repo", "title", "body", "labels"}`;
//! `POST config` takes `content_per_min`,
//! `content_per_hour`, `primary_per_hour` (null: unlimited) and
//! `limit_status` (403 or 429).

mod openapi;

pub use openapi::{spec, Invalid, Spec};

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use hyper::header::{HeaderName, HeaderValue};
use serde::Serialize;
use serde_json::{json, Map, Value};

use crate::emulator::{self, json_response, Api, HttpResponse, Meter, Request, Route};
pub use crate::emulator::{Fault, Stats};

/// Where GitHub's documentation of the issues API lives (error bodies name it).
const DOCS: &str = "https://docs.github.com/rest/issues/issues";
/// The API versions GitHub accepts in `X-GitHub-Api-Version`.
pub const API_VERSIONS: [&str; 2] = ["2022-11-28", "2026-03-10"];
/// The longest issue body GitHub takes, in characters.
pub const BODY_LIMIT: usize = 65_536;
/// The longest title.
pub const TITLE_LIMIT: usize = 256;

/// How an emulator behaves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GithubConfig {
    /// The accepted token (a personal access token).
    pub token: String,
    /// The owner of the repositories.
    pub owner: String,
    /// Repositories that exist from the start.
    pub repos: Vec<String>,
    /// Logins that can be assigned.
    pub users: Vec<String>,
    /// Milestones each repository has (numbers 1 to this).
    pub milestones: u64,
    /// The primary limit in requests an hour (`None`: unlimited; GitHub: 5,000).
    pub primary_per_hour: Option<u32>,
    /// Content-creating requests a sliding minute (`None`: unlimited; GitHub: 80).
    pub content_per_min: Option<u32>,
    /// Content-creating requests a sliding hour (`None`: unlimited; GitHub: 500).
    pub content_per_hour: Option<u32>,
    /// The status of a refusal by a limit: 403 (GitHub's usual) or 429.
    pub limit_status: u16,
}

impl Default for GithubConfig {
    fn default() -> Self {
        Self {
            token: "ghp_emulatorTokenForTests0000000000000".into(),
            owner: "octo".into(),
            repos: vec!["tests".into()],
            users: vec!["octocat".into(), "hubot".into(), "mona".into()],
            milestones: 3,
            primary_per_hour: Some(5000),
            content_per_min: Some(80),
            content_per_hour: Some(500),
            limit_status: 403,
        }
    }
}

/// One issue (or pull request) as the emulator holds it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Issue {
    /// The global id.
    pub id: u64,
    /// The number in its repository.
    pub number: u64,
    /// Title.
    pub title: String,
    /// Body (Markdown).
    pub body: Option<String>,
    /// `open` or `closed`.
    pub state: String,
    /// `completed`, `not_planned`, `duplicate`, `reopened` or none.
    pub state_reason: Option<String>,
    /// Label names.
    pub labels: Vec<String>,
    /// Assignee logins.
    pub assignees: Vec<String>,
    /// Milestone number.
    pub milestone: Option<u64>,
    /// Epoch seconds.
    pub created_at: i64,
    /// Epoch seconds, bumped by every change.
    pub updated_at: i64,
    /// Epoch seconds.
    pub closed_at: Option<i64>,
    /// Comments (a person's comment moves `updated_at`, nothing else).
    pub comments: u64,
    /// A pull request (listed with the issues, as GitHub does).
    pub pull_request: bool,
    /// Deleted (by an admin): 410 from now on, gone from listings.
    pub deleted: bool,
}

#[derive(Debug, Clone)]
struct Label {
    id: u64,
    name: String,
    color: String,
    description: Option<String>,
}

#[derive(Debug, Default)]
struct Repo {
    issues: Vec<Issue>,
    /// By lower-case name.
    labels: BTreeMap<String, Label>,
    issues_disabled: bool,
}

/// The GitHub API as an emulator plug-in.
#[derive(Debug)]
pub struct Github {
    config: GithubConfig,
    /// By lower-case name.
    repos: HashMap<String, Repo>,
    next_id: u64,
    meter: Meter,
    /// The primary window: its reset (epoch seconds) and the requests counted in it.
    window_reset: i64,
    window_used: u32,
    /// When each content-creating request of the last hour was done.
    content: VecDeque<Instant>,
    /// Refusals by the secondary limit.
    pub secondary_refusals: u64,
    /// Refusals by the primary limit.
    pub primary_refusals: u64,
    /// Writes that changed nothing (echoes).
    pub unchanged_writes: u64,
    /// 304 answers.
    pub not_modified: u64,
    /// Issue-listing requests (twin lookups and pulls).
    pub list_requests: u64,
    /// Every request's path, query and body as received, faulted ones
    /// included (what reached "GitHub", for privacy checks).
    seen: Vec<String>,
}

/// A running GitHub emulator; dropping it stops the server.
pub type Emulator = emulator::Emulator<Github>;
/// Its shared state.
pub type EmulatorState = emulator::EmulatorState<Github>;

fn now_epoch() -> i64 {
    jiff::Timestamp::now().as_second()
}

/// `YYYY-MM-DDTHH:MM:SSZ`, as GitHub writes times.
pub fn iso(epoch: i64) -> String {
    jiff::Timestamp::from_second(epoch).map(|t| t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()).unwrap_or_default()
}

/// What an answer is made of before it becomes HTTP.
struct Resp {
    status: u16,
    body: Value,
    headers: Vec<(String, String)>,
    /// Counted against the primary limit.
    counted: bool,
}

impl Resp {
    fn new(status: u16, body: Value) -> Self {
        Self { status, body, headers: Vec::new(), counted: true }
    }
    fn basic(status: u16, message: &str) -> Self {
        Self::new(status, json!({"message": message, "documentation_url": DOCS, "status": status.to_string()}))
    }
    fn validation(resource: &str, field: &str, code: &str, message: Option<String>, value: Option<Value>) -> Self {
        let mut e = json!({"resource": resource, "field": field, "code": code});
        if let Some(m) = message {
            e["message"] = m.into();
        }
        if let Some(v) = value {
            e["value"] = v;
        }
        Self::new(
            422,
            json!({"message": "Validation Failed", "errors": [e], "documentation_url": DOCS, "status": "422"}),
        )
    }
    fn header(mut self, k: &str, v: impl Into<String>) -> Self {
        self.headers.push((k.to_owned(), v.into()));
        self
    }
}

fn user(login: &str, origin: &str) -> Value {
    let id = login.bytes().fold(1u64, |h, b| h.wrapping_mul(31).wrapping_add(u64::from(b))) % 100_000_000;
    let u = format!("{origin}/users/{login}");
    json!({
        "login": login, "id": id, "node_id": format!("U_{id}"), "avatar_url": format!("https://avatars.githubusercontent.com/u/{id}"),
        "gravatar_id": "", "url": u, "html_url": format!("https://github.com/{login}"),
        "followers_url": format!("{u}/followers"), "following_url": format!("{u}/following{{/other_user}}"),
        "gists_url": format!("{u}/gists{{/gist_id}}"), "starred_url": format!("{u}/starred{{/owner}}{{/repo}}"),
        "subscriptions_url": format!("{u}/subscriptions"), "organizations_url": format!("{u}/orgs"),
        "repos_url": format!("{u}/repos"), "events_url": format!("{u}/events{{/privacy}}"),
        "received_events_url": format!("{u}/received_events"), "type": "User", "site_admin": false
    })
}

/// A weak ETag of a body.
fn etag_of(body: &[u8]) -> String {
    let h = body.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3));
    format!("W/\"{h:016x}\"")
}

fn parse_query(q: &str) -> Vec<(String, String)> {
    serde_urlencoded::from_str::<Vec<(String, String)>>(q).unwrap_or_default()
}

/// A request that creates content (the secondary limit counts them).
fn creates_content(method: &str, template: &str) -> bool {
    matches!(method, "POST" | "PATCH" | "PUT" | "DELETE") && template != "/rate_limit"
}

impl Github {
    /// A GitHub with `config`.
    pub fn new(config: GithubConfig) -> Self {
        let repos = config.repos.iter().map(|r| (r.to_lowercase(), Repo::default())).collect();
        Self {
            config,
            repos,
            next_id: 1_000_001,
            meter: Meter::default(),
            window_reset: now_epoch() + 3600,
            window_used: 0,
            content: VecDeque::new(),
            secondary_refusals: 0,
            primary_refusals: 0,
            unchanged_writes: 0,
            not_modified: 0,
            list_requests: 0,
            seen: Vec::new(),
        }
    }

    /// Makes repository `name` exist (empty).
    pub fn create_repo(&mut self, name: &str) {
        self.repos.entry(name.to_lowercase()).or_default();
    }

    /// Every issue of `repo` (deleted ones and pull requests included), by number.
    pub fn issues(&self, repo: &str) -> Vec<Issue> {
        self.repos.get(&repo.to_lowercase()).map(|r| r.issues.clone()).unwrap_or_default()
    }

    fn rate_headers(&mut self, resp: &mut Resp) {
        let now = now_epoch();
        if now >= self.window_reset {
            self.window_reset = now + 3600;
            self.window_used = 0;
        }
        if resp.counted {
            self.window_used = self.window_used.saturating_add(1);
        }
        let limit = self.config.primary_per_hour.unwrap_or(u32::MAX / 2);
        let remaining = limit.saturating_sub(self.window_used);
        self.meter.stats.ru_used = u64::from(self.window_used);
        for (k, v) in [
            ("x-ratelimit-limit", limit.to_string()),
            ("x-ratelimit-remaining", remaining.to_string()),
            ("x-ratelimit-used", self.window_used.to_string()),
            ("x-ratelimit-reset", self.window_reset.to_string()),
            ("x-ratelimit-resource", "core".to_string()),
        ] {
            resp.headers.push((k.to_owned(), v));
        }
    }

    /// The primary limit before a request: a refusal when it is spent.
    fn primary_refusal(&mut self) -> Option<Resp> {
        let limit = self.config.primary_per_hour?;
        if now_epoch() < self.window_reset && self.window_used >= limit {
            self.primary_refusals += 1;
            self.meter.stats.throttled += 1;
            let mut r = Resp::basic(self.config.limit_status, "API rate limit exceeded for user ID 1. If you reach out to GitHub Support for help, please include the request ID.");
            r.counted = false;
            return Some(r);
        }
        None
    }

    /// The secondary limit on content creation: a refusal with `retry-after`
    /// when a minute's or an hour's allowance is spent; else the request counts.
    fn content_refusal(&mut self) -> Option<Resp> {
        let now = Instant::now();
        while self.content.front().is_some_and(|t| now.duration_since(*t) >= Duration::from_secs(3600)) {
            self.content.pop_front();
        }
        let in_minute: Vec<&Instant> =
            self.content.iter().filter(|t| now.duration_since(**t) < Duration::from_secs(60)).collect();
        let wait = match (self.config.content_per_min, self.config.content_per_hour) {
            (Some(m), _) if in_minute.len() >= m as usize => {
                let oldest = in_minute[in_minute.len() - m as usize];
                Some(60.0 - now.duration_since(*oldest).as_secs_f64())
            }
            (_, Some(h)) if self.content.len() >= h as usize => {
                let oldest = self.content[self.content.len() - h as usize];
                Some(3600.0 - now.duration_since(oldest).as_secs_f64())
            }
            _ => None,
        };
        match wait {
            Some(w) => {
                self.secondary_refusals += 1;
                self.meter.stats.throttled += 1;
                let r = Resp::basic(
                    self.config.limit_status,
                    "You have exceeded a secondary rate limit and have been temporarily blocked from content creation. Please retry your request again later.",
                )
                .header("retry-after", (w.ceil().max(1.0) as u64).to_string());
                Some(r)
            }
            None => {
                self.content.push_back(now);
                None
            }
        }
    }

    fn issue_json(&self, repo_name: &str, repo: &Repo, i: &Issue, origin: &str) -> Value {
        let base = format!("{origin}/repos/{}/{repo_name}", self.config.owner);
        let labels: Vec<Value> = i
            .labels
            .iter()
            .filter_map(|n| repo.labels.get(&n.to_lowercase()))
            .map(|l| {
                json!({"id": l.id, "node_id": format!("LA_{}", l.id), "url": format!("{base}/labels/{}", l.name),
                       "name": l.name, "color": l.color, "default": false, "description": l.description})
            })
            .collect();
        let assignees: Vec<Value> = i.assignees.iter().map(|a| user(a, origin)).collect();
        let milestone = i.milestone.map(|m| {
            json!({"url": format!("{base}/milestones/{m}"), "html_url": format!("https://github.com/{}/{repo_name}/milestone/{m}", self.config.owner),
                   "labels_url": format!("{base}/milestones/{m}/labels"), "id": 9000 + m, "node_id": format!("MI_{m}"),
                   "number": m, "state": "open", "title": format!("Milestone {m}"), "description": null, "creator": null,
                   "open_issues": 0, "closed_issues": 0, "created_at": iso(0), "updated_at": iso(0), "closed_at": null, "due_on": null})
        });
        let url = format!("{base}/issues/{}", i.number);
        let mut v = json!({
            "id": i.id, "node_id": format!("I_kw{}", i.id), "url": url, "repository_url": base,
            "labels_url": format!("{url}/labels{{/name}}"), "comments_url": format!("{url}/comments"),
            "events_url": format!("{url}/events"),
            "html_url": format!("https://github.com/{}/{repo_name}/issues/{}", self.config.owner, i.number),
            "number": i.number, "state": i.state, "state_reason": i.state_reason, "title": i.title, "body": i.body,
            "user": user("syncbridge-bot", origin), "labels": labels,
            "assignee": assignees.first().cloned().unwrap_or(Value::Null), "assignees": assignees,
            "milestone": milestone, "locked": false, "active_lock_reason": null, "comments": i.comments,
            "closed_at": i.closed_at.map(iso), "created_at": iso(i.created_at), "updated_at": iso(i.updated_at),
            "closed_by": null, "author_association": "OWNER"
        });
        if i.pull_request {
            v["pull_request"] = json!({"url": format!("{base}/pulls/{}", i.number), "html_url": null, "diff_url": null, "patch_url": null});
        }
        v
    }

    fn ensure_labels(&mut self, repo: &str, names: &[String]) {
        let mut next = self.next_id;
        if let Some(r) = self.repos.get_mut(repo) {
            for n in names {
                r.labels.entry(n.to_lowercase()).or_insert_with(|| {
                    next += 1;
                    Label { id: next, name: n.clone(), color: "ededed".into(), description: None }
                });
            }
        }
        self.next_id = next;
    }

    /// The writable fields of a create or an update, checked by GitHub's rules.
    fn check_fields(&self, body: &Map<String, Value>) -> Result<(), Resp> {
        if let Some(t) = body.get("title") {
            let t = match t {
                Value::Number(n) => n.to_string(),
                other => other.as_str().unwrap_or("").to_owned(),
            };
            if t.trim().is_empty() {
                return Err(Resp::validation("Issue", "title", "missing_field", None, None));
            }
            if t.chars().count() > TITLE_LIMIT {
                return Err(Resp::validation(
                    "Issue",
                    "title",
                    "custom",
                    Some(format!("title is too long (maximum is {TITLE_LIMIT} characters)")),
                    None,
                ));
            }
        }
        if let Some(b) = body.get("body").and_then(Value::as_str) {
            if b.chars().count() > BODY_LIMIT {
                return Err(Resp::validation(
                    "Issue",
                    "body",
                    "custom",
                    Some(format!("body is too long (maximum is {BODY_LIMIT} characters)")),
                    None,
                ));
            }
        }
        let mut logins: Vec<String> = Vec::new();
        if let Some(a) = body.get("assignee").and_then(Value::as_str) {
            logins.push(a.to_owned());
        }
        for a in body.get("assignees").and_then(Value::as_array).into_iter().flatten() {
            let l = a.as_str().or_else(|| a.get("login").and_then(Value::as_str)).unwrap_or("");
            logins.push(l.to_owned());
        }
        for l in &logins {
            if !self.config.users.iter().any(|u| u.eq_ignore_ascii_case(l)) {
                return Err(Resp::validation("Issue", "assignees", "invalid", None, Some(Value::String(l.clone()))));
            }
        }
        if let Some(m) = body.get("milestone").filter(|m| !m.is_null()) {
            let n = m.as_u64().or_else(|| m.as_str().and_then(|s| s.parse().ok()));
            if n.is_none_or(|n| n == 0 || n > self.config.milestones) {
                return Err(Resp::validation("Issue", "milestone", "invalid", None, Some(m.clone())));
            }
        }
        Ok(())
    }

    fn handle(&mut self, req: &Request) -> Resp {
        let s = spec();
        let m = match s.find(&req.method, &req.path) {
            Ok(m) => m,
            Err(_) => return Resp::basic(404, "Not Found"),
        };
        let query = parse_query(&req.query);
        if let Err(Invalid::Schema(reason)) = s.check_query(&m, &query) {
            return Resp::new(
                422,
                json!({"message": format!("Invalid request.\n\n{reason}"), "documentation_url": DOCS, "status": "422"}),
            );
        }
        let body = match s.check_body(&m, &req.body) {
            Ok(b) => b,
            Err(Invalid::BadJson(msg)) => return Resp::basic(400, &msg),
            Err(Invalid::Schema(reason)) => {
                return Resp::new(
                    422,
                    json!({"message": format!("Invalid request.\n\n{reason}"), "documentation_url": DOCS, "status": "422"}),
                )
            }
            Err(_) => return Resp::basic(404, "Not Found"),
        };
        let template = m.template.to_owned();
        let params = m.params.clone();
        if template == "/rate_limit" {
            let limit = self.config.primary_per_hour.unwrap_or(u32::MAX / 2);
            let core = json!({"limit": limit, "remaining": limit.saturating_sub(self.window_used), "used": self.window_used, "reset": self.window_reset});
            let mut r = Resp::new(200, json!({"resources": {"core": core}, "rate": core}));
            r.counted = false;
            return r;
        }
        if let Some(r) = self.primary_refusal() {
            return r;
        }
        let owner = params.get("owner").cloned().unwrap_or_default();
        let repo_name = params.get("repo").cloned().unwrap_or_default();
        let repo_key = repo_name.to_lowercase();
        if !owner.eq_ignore_ascii_case(&self.config.owner) || !self.repos.contains_key(&repo_key) {
            return Resp::basic(404, "Not Found");
        }
        if creates_content(&req.method, &template) {
            if let Some(r) = self.content_refusal() {
                return r;
            }
        }
        let origin = req.origin.clone();
        match (req.method.as_str(), template.as_str()) {
            ("GET", "/repos/{owner}/{repo}/issues") => self.list(&repo_name, &query, req),
            ("POST", "/repos/{owner}/{repo}/issues") => {
                let body = body.and_then(|b| b.as_object().cloned()).unwrap_or_default();
                self.create(&repo_name, &body, &origin, false)
            }
            ("GET", "/repos/{owner}/{repo}/issues/{issue_number}")
            | ("PATCH", "/repos/{owner}/{repo}/issues/{issue_number}") => {
                let n: u64 = params.get("issue_number").and_then(|n| n.parse().ok()).unwrap_or(0);
                let body = body.and_then(|b| b.as_object().cloned());
                self.one(&repo_name, n, body.as_ref(), &origin, false)
            }
            ("GET", "/repos/{owner}/{repo}/labels") => {
                let r = &self.repos[&repo_key];
                let labels: Vec<Value> = r
                    .labels
                    .values()
                    .map(|l| json!({"id": l.id, "node_id": format!("LA_{}", l.id), "name": l.name, "color": l.color, "default": false, "description": l.description}))
                    .collect();
                Resp::new(200, Value::Array(labels))
            }
            ("POST", "/repos/{owner}/{repo}/labels") => {
                let b = body.unwrap_or_default();
                let name = b.get("name").and_then(Value::as_str).unwrap_or("").to_owned();
                if self.repos[&repo_key].labels.contains_key(&name.to_lowercase()) {
                    return Resp::validation("Label", "name", "already_exists", None, None);
                }
                self.ensure_labels(&repo_key, std::slice::from_ref(&name));
                self.meter.wrote();
                Resp::new(201, json!({"name": name}))
            }
            _ => Resp::basic(501, "Not emulated"),
        }
    }

    fn list(&mut self, repo_name: &str, query: &[(String, String)], req: &Request) -> Resp {
        self.list_requests += 1;
        let get = |k: &str| query.iter().rev().find(|(q, _)| q == k).map(|(_, v)| v.as_str());
        let state = get("state").unwrap_or("open");
        let sort = get("sort").unwrap_or("created");
        let asc = get("direction") == Some("asc");
        let per_page = get("per_page").and_then(|p| p.parse::<usize>().ok()).unwrap_or(30).clamp(1, 100);
        let page = get("page").and_then(|p| p.parse::<usize>().ok()).unwrap_or(1).max(1);
        let since = match get("since") {
            None => None,
            Some(s) => match s.parse::<jiff::Timestamp>() {
                Ok(t) => Some(t.as_second()),
                Err(_) => {
                    return Resp::new(
                        422,
                        json!({"message": format!("Invalid request.\n\nFor 'since', \"{s}\" is not a date-time."), "documentation_url": DOCS, "status": "422"}),
                    )
                }
            },
        };
        let want: Vec<String> = get("labels")
            .map(|l| l.split(',').map(|s| s.trim().to_lowercase()).filter(|s| !s.is_empty()).collect())
            .unwrap_or_default();
        let repo = &self.repos[&repo_name.to_lowercase()];
        let mut hits: Vec<&Issue> = repo
            .issues
            .iter()
            .filter(|i| !i.deleted)
            .filter(|i| state == "all" || i.state == state)
            .filter(|i| since.is_none_or(|s| i.updated_at >= s))
            .filter(|i| want.iter().all(|w| i.labels.iter().any(|l| l.to_lowercase() == *w)))
            .collect();
        hits.sort_by_key(|i| (if sort == "updated" { i.updated_at } else { i.created_at }, i.number));
        if !asc {
            hits.reverse();
        }
        let pages = hits.len().div_ceil(per_page).max(1);
        let items: Vec<Value> = hits
            .iter()
            .skip((page - 1) * per_page)
            .take(per_page)
            .map(|i| self.issue_json(repo_name, repo, i, &req.origin))
            .collect();
        let link_to = |p: usize| {
            let mut q: Vec<(String, String)> = query.iter().filter(|(k, _)| k != "page").cloned().collect();
            q.push(("page".into(), p.to_string()));
            format!("{}{}?{}", req.origin, req.path, serde_urlencoded::to_string(&q).unwrap_or_default())
        };
        let mut links = Vec::new();
        if page < pages {
            links.push(format!("<{}>; rel=\"next\"", link_to(page + 1)));
            links.push(format!("<{}>; rel=\"last\"", link_to(pages)));
        }
        if page > 1 {
            links.push(format!("<{}>; rel=\"prev\"", link_to(page - 1)));
            links.push(format!("<{}>; rel=\"first\"", link_to(1)));
        }
        let mut r = Resp::new(200, Value::Array(items));
        if !links.is_empty() {
            r = r.header("link", links.join(", "));
        }
        r
    }

    /// A create; `person`: made "on GitHub" by a person (not counted as a
    /// request of the app's).
    fn create(&mut self, repo_name: &str, body: &Map<String, Value>, origin: &str, person: bool) -> Resp {
        let key = repo_name.to_lowercase();
        if self.repos[&key].issues_disabled {
            return Resp::basic(410, "Issues are disabled for this repo");
        }
        if let Err(r) = self.check_fields(body) {
            return r;
        }
        let labels = label_names(body.get("labels"));
        self.ensure_labels(&key, &labels);
        let now = now_epoch();
        self.next_id += 1;
        let id = self.next_id;
        let repo = self.repos.get_mut(&key).expect("checked");
        let number = repo.issues.len() as u64 + 1;
        let issue = Issue {
            id,
            number,
            title: title_of(body.get("title")).unwrap_or_default(),
            body: body.get("body").and_then(Value::as_str).map(str::to_owned),
            state: "open".into(),
            state_reason: None,
            labels,
            assignees: assignees_of(body),
            milestone: body.get("milestone").and_then(|m| m.as_u64().or_else(|| m.as_str()?.parse().ok())),
            created_at: now,
            updated_at: now,
            closed_at: None,
            comments: 0,
            pull_request: false,
            deleted: false,
        };
        repo.issues.push(issue);
        if !person {
            self.meter.wrote();
        }
        let repo = &self.repos[&key];
        let v = self.issue_json(repo_name, repo, &repo.issues[number as usize - 1], origin);
        let location = v["url"].as_str().unwrap_or_default().to_owned();
        Resp::new(201, v).header("location", location)
    }

    /// GET or PATCH of one issue; `person`: an edit made "on GitHub" by a
    /// person (not counted as a write of the app's).
    fn one(&mut self, repo_name: &str, n: u64, patch: Option<&Map<String, Value>>, origin: &str, person: bool) -> Resp {
        let key = repo_name.to_lowercase();
        let Some(existing) = n.checked_sub(1).and_then(|i| self.repos[&key].issues.get(i as usize)).cloned() else {
            return Resp::basic(404, "Not Found");
        };
        if existing.deleted {
            return Resp::basic(410, "This issue was deleted");
        }
        if self.repos[&key].issues_disabled {
            return Resp::basic(410, "Issues are disabled for this repo");
        }
        if let Some(body) = patch {
            if let Err(r) = self.check_fields(body) {
                return r;
            }
            if let Some(l) = body.get("labels") {
                self.ensure_labels(&key, &label_names(Some(l)));
            }
            let mut i = existing.clone();
            if let Some(t) = title_of(body.get("title")) {
                i.title = t;
            }
            if let Some(b) = body.get("body") {
                i.body = b.as_str().map(str::to_owned);
            }
            if body.contains_key("labels") {
                i.labels = label_names(body.get("labels"));
            }
            if body.contains_key("assignees") || body.contains_key("assignee") {
                i.assignees = assignees_of(body);
            }
            if let Some(m) = body.get("milestone") {
                i.milestone = m.as_u64().or_else(|| m.as_str()?.parse().ok());
            }
            let now = now_epoch();
            if let Some(s) = body.get("state").and_then(Value::as_str) {
                // state_reason counts only with a change of state.
                let reason = body.get("state_reason").and_then(Value::as_str).map(str::to_owned);
                if s != i.state {
                    i.state = s.to_owned();
                    if s == "closed" {
                        i.state_reason = Some(reason.unwrap_or_else(|| "completed".into()));
                        i.closed_at = Some(now);
                    } else {
                        i.state_reason = Some(reason.unwrap_or_else(|| "reopened".into()));
                        i.closed_at = None;
                    }
                }
            }
            if i != existing {
                i.updated_at = now;
            } else if !person {
                self.unchanged_writes += 1;
            }
            if !person {
                self.meter.wrote();
            }
            self.repos.get_mut(&key).expect("checked").issues[n as usize - 1] = i;
        }
        let repo = &self.repos[&key];
        Resp::new(200, self.issue_json(repo_name, repo, &repo.issues[n as usize - 1], origin))
    }

    fn auth(&mut self, req: &Request) -> Result<(), Resp> {
        if req.header("user-agent").is_none_or(str::is_empty) {
            return Err(Resp::basic(
                403,
                "Request forbidden by administrative rules. Please make sure your request has a User-Agent header (https://docs.github.com/en/rest/overview/resources-in-the-rest-api#user-agent-required). Check https://developer.github.com for other possible causes.",
            ));
        }
        if let Some(v) = req.header("x-github-api-version") {
            if !API_VERSIONS.contains(&v) {
                return Err(Resp::basic(400, &format!("API version {v} is not supported.")));
            }
        }
        let given =
            req.header("authorization").and_then(|a| a.strip_prefix("Bearer ").or_else(|| a.strip_prefix("token ")));
        match given {
            None => {
                self.meter.stats.unauthorized += 1;
                Err(Resp::basic(401, "Requires authentication"))
            }
            Some(t) if t.trim() != self.config.token => {
                self.meter.stats.unauthorized += 1;
                Err(Resp::basic(401, "Bad credentials"))
            }
            Some(_) => Ok(()),
        }
    }

    fn answer(&mut self, mut resp: Resp, if_none_match: Option<&str>, method: &str) -> HttpResponse {
        // A GET whose answer did not change: 304, free.
        let bytes = serde_json::to_vec(&resp.body).unwrap_or_default();
        let etag = etag_of(&bytes);
        let not_modified = method == "GET" && resp.status == 200 && if_none_match.is_some_and(|e| e == etag);
        if not_modified {
            resp.counted = false;
            self.not_modified += 1;
        }
        self.rate_headers(&mut resp);
        if let Some(h) = resp.headers.iter().position(|(k, _)| k == "x-ratelimit-remaining") {
            if resp.status == self.config.limit_status
                && resp.body["message"].as_str().is_some_and(|m| m.starts_with("API rate limit exceeded"))
            {
                resp.headers[h].1 = "0".into();
            }
        }
        let mut http = if not_modified {
            let mut r = json_response(304, &Value::Null);
            *r.body_mut() = http_body_util::Full::new(bytes::Bytes::new());
            r
        } else {
            json_response(resp.status, &resp.body)
        };
        if method == "GET" && resp.status == 200 {
            resp.headers.push(("etag".into(), etag));
        }
        resp.headers.push(("x-github-api-version-selected".into(), "2022-11-28".into()));
        // GitHub's clock, as every answer carries it (RFC 9110).
        if let Ok(date) =
            jiff::fmt::rfc2822::DateTimePrinter::new().timestamp_to_rfc9110_string(&jiff::Timestamp::now())
        {
            resp.headers.push(("date".into(), date));
        }
        for (k, v) in resp.headers {
            if let (Ok(k), Ok(v)) = (HeaderName::try_from(k), HeaderValue::try_from(v)) {
                http.headers_mut().insert(k, v);
            }
        }
        http
    }

    /// A person's edit "on GitHub": the same rules as the API's PATCH.
    fn person_edit(&mut self, repo: &str, number: u64, fields: &Map<String, Value>) -> Result<(), String> {
        if !self.repos.contains_key(&repo.to_lowercase()) {
            return Err(format!("no repository {repo}"));
        }
        self.person_check("PATCH", &format!("/repos/{}/{repo}/issues/{number}", self.config.owner), fields)?;
        let r = self.one(repo, number, Some(fields), "http://127.0.0.1", true);
        if r.status == 200 {
            Ok(())
        } else {
            Err(r.body.to_string())
        }
    }

    /// A person's change held to the description, as the API's request would be.
    fn person_check(&self, method: &str, path: &str, fields: &Map<String, Value>) -> Result<(), String> {
        let s = spec();
        let m = s.find(method, path).map_err(|e| format!("{e:?}"))?;
        let body = serde_json::to_vec(fields).unwrap_or_default();
        s.check_body(&m, &body).map(|_| ()).map_err(|e| format!("{e:?}"))
    }

    /// A person opens an issue "on GitHub": the same rules as the API's
    /// create (labels created as needed); returns its number.
    fn person_create(&mut self, repo: &str, fields: &Map<String, Value>) -> Result<u64, String> {
        if !self.repos.contains_key(&repo.to_lowercase()) {
            return Err(format!("no repository {repo}"));
        }
        self.person_check("POST", &format!("/repos/{}/{repo}/issues", self.config.owner), fields)?;
        let r = self.create(repo, fields, "http://127.0.0.1", true);
        match r.body.get("number").and_then(Value::as_u64) {
            Some(n) if r.status == 201 => Ok(n),
            _ => Err(r.body.to_string()),
        }
    }

    /// A person comments on an issue: its `updated_at` moves, nothing else.
    fn person_comment(&mut self, repo: &str, number: u64) -> Result<(), String> {
        let i = self
            .repos
            .get_mut(&repo.to_lowercase())
            .and_then(|r| r.issues.get_mut(number.saturating_sub(1) as usize))
            .filter(|i| !i.deleted)
            .ok_or_else(|| format!("no issue {repo}#{number}"))?;
        i.comments += 1;
        i.updated_at = now_epoch();
        Ok(())
    }

    /// A person opens a pull request (listed with the issues, as GitHub
    /// lists them); returns its number.
    fn pull_request(&mut self, repo: &str, title: &str, body: Option<&str>, labels: &[String]) -> Result<u64, String> {
        let key = repo.to_lowercase();
        if !self.repos.contains_key(&key) {
            return Err(format!("no repository {repo}"));
        }
        self.ensure_labels(&key, labels);
        self.next_id += 1;
        let id = self.next_id;
        let r = self.repos.get_mut(&key).expect("checked");
        let now = now_epoch();
        let number = r.issues.len() as u64 + 1;
        r.issues.push(Issue {
            id,
            number,
            title: title.to_owned(),
            body: body.map(str::to_owned),
            state: "open".into(),
            state_reason: None,
            labels: labels.to_vec(),
            assignees: Vec::new(),
            milestone: None,
            created_at: now,
            updated_at: now,
            closed_at: None,
            comments: 0,
            pull_request: true,
            deleted: false,
        });
        Ok(number)
    }
}

fn title_of(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

fn label_names(v: Option<&Value>) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for l in v.and_then(Value::as_array).into_iter().flatten() {
        let n = l.as_str().or_else(|| l.get("name").and_then(Value::as_str)).unwrap_or("").trim();
        if !n.is_empty() && !out.iter().any(|o| o.eq_ignore_ascii_case(n)) {
            out.push(n.to_owned());
        }
    }
    out
}

fn assignees_of(body: &Map<String, Value>) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    if let Some(a) = body.get("assignee").and_then(Value::as_str) {
        out.push(a.to_owned());
    }
    for a in body.get("assignees").and_then(Value::as_array).into_iter().flatten() {
        if let Some(l) = a.as_str().or_else(|| a.get("login").and_then(Value::as_str)) {
            if !out.iter().any(|o| o.eq_ignore_ascii_case(l)) {
                out.push(l.to_owned());
            }
        }
    }
    out
}

impl Api for Github {
    const CONTENT_TYPE: &'static str = "application/json; charset=utf-8";
    const CONTROL_ROUTES: &'static [&'static str] = &[
        "GET issues",
        "POST repos",
        "POST edit",
        "POST create",
        "POST comment",
        "POST delete_issue",
        "POST pull_request",
    ];

    fn route(&mut self, req: &Request) -> Route {
        // Before any fault: a request that fails still reached the service.
        self.seen.push(format!("{} {}?{} {}", req.method, req.path, req.query, String::from_utf8_lossy(&req.body)));
        // No token endpoint: every request is the API's.
        Route::Serve { batch: false }
    }

    fn serve(&mut self, req: &Request, _fault: Option<&Fault>) -> HttpResponse {
        let resp = match self.auth(req) {
            Err(r) => r,
            Ok(()) => self.handle(req),
        };
        self.answer(resp, req.header("if-none-match"), &req.method)
    }

    fn error(status: u16, _req: &Request) -> HttpResponse {
        let message = match status {
            400 => "Problems parsing JSON",
            401 => "Bad credentials",
            403 => "Forbidden",
            404 => "Not Found",
            422 => "Validation Failed",
            429 => "Too Many Requests",
            502 => "Server Error",
            503 => "Service Unavailable",
            _ => "Server Error",
        };
        json_response(status, &json!({"message": message, "documentation_url": DOCS, "status": status.to_string()}))
    }

    fn expire_tokens(&mut self) {
        // A revoked personal access token: a new one is needed.
        self.config.token = format!("{}-revoked", self.config.token);
    }

    fn configure(&mut self, config: &Value) -> Result<Map<String, Value>, String> {
        let limit = |k: &str| -> Result<Option<Option<u32>>, String> {
            match config.get(k) {
                None => Ok(None),
                Some(Value::Null) => Ok(Some(None)),
                Some(v) => v
                    .as_u64()
                    .and_then(|v| u32::try_from(v).ok())
                    .map(|v| Some(Some(v)))
                    .ok_or_else(|| format!("'{k}' must be a non-negative integer or null")),
            }
        };
        if let Some(v) = limit("content_per_min")? {
            self.config.content_per_min = v;
        }
        if let Some(v) = limit("content_per_hour")? {
            self.config.content_per_hour = v;
        }
        if let Some(v) = limit("primary_per_hour")? {
            self.config.primary_per_hour = v;
        }
        if let Some(s) = config.get("limit_status") {
            match s.as_u64() {
                Some(403) => self.config.limit_status = 403,
                Some(429) => self.config.limit_status = 429,
                _ => return Err("'limit_status' is 403 or 429".into()),
            }
        }
        let mut out = Map::new();
        out.insert("content_per_min".into(), json!(self.config.content_per_min));
        out.insert("content_per_hour".into(), json!(self.config.content_per_hour));
        out.insert("primary_per_hour".into(), json!(self.config.primary_per_hour));
        out.insert("limit_status".into(), json!(self.config.limit_status));
        Ok(out)
    }

    fn control(&mut self, method: &str, route: &str, body: &[u8]) -> Option<HttpResponse> {
        let path = route;
        let v: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
        let repo = v.get("repo").and_then(Value::as_str).unwrap_or("").to_owned();
        let number = v.get("number").and_then(Value::as_u64).unwrap_or(0);
        let bad = |m: String| json_response(400, &json!({"error": m}));
        Some(match (method, path) {
            ("GET", "issues") => {
                let all: BTreeMap<&String, &Vec<Issue>> = self.repos.iter().map(|(k, r)| (k, &r.issues)).collect();
                json_response(200, &json!(all))
            }
            ("POST", "repos") => match v.get("name").and_then(Value::as_str) {
                Some(n) => {
                    self.create_repo(n);
                    json_response(200, &json!({"ok": true}))
                }
                None => bad("name is required".into()),
            },
            ("POST", "edit") => {
                let fields = v.get("fields").and_then(Value::as_object).cloned().unwrap_or_default();
                match self.person_edit(&repo, number, &fields) {
                    Ok(()) => json_response(200, &json!({"ok": true})),
                    Err(e) => bad(e),
                }
            }
            ("POST", "delete_issue") => match self
                .repos
                .get_mut(&repo.to_lowercase())
                .and_then(|r| r.issues.get_mut(number.saturating_sub(1) as usize))
            {
                Some(i) => {
                    i.deleted = true;
                    json_response(200, &json!({"ok": true}))
                }
                None => bad(format!("no issue {repo}#{number}")),
            },
            ("POST", "pull_request") => {
                let title = v.get("title").and_then(Value::as_str).unwrap_or("a pull request").to_owned();
                let labels = label_names(v.get("labels"));
                match self.pull_request(&repo, &title, v.get("body").and_then(Value::as_str), &labels) {
                    Ok(number) => json_response(200, &json!({"number": number})),
                    Err(e) => bad(e),
                }
            }
            ("POST", "create") => {
                let fields = v.get("fields").and_then(Value::as_object).cloned().unwrap_or_default();
                match self.person_create(&repo, &fields) {
                    Ok(number) => json_response(200, &json!({"number": number})),
                    Err(e) => bad(e),
                }
            }
            ("POST", "comment") => match self.person_comment(&repo, number) {
                Ok(()) => json_response(200, &json!({"ok": true})),
                Err(e) => bad(e),
            },
            _ => return None,
        })
    }

    fn meter(&self) -> &Meter {
        &self.meter
    }

    fn meter_mut(&mut self) -> &mut Meter {
        &mut self.meter
    }
}

impl EmulatorState {
    /// Every issue of `repo`, by number.
    pub fn issues(&self, repo: &str) -> Vec<Issue> {
        self.lock().api.issues(repo)
    }
}

impl Emulator {
    /// Starts an emulator on a free loopback port.
    pub async fn start(config: GithubConfig) -> std::io::Result<Emulator> {
        Self::start_on(config, SocketAddr::from((Ipv4Addr::LOCALHOST, 0))).await
    }

    /// Starts an emulator on `addr`.
    pub async fn start_on(config: GithubConfig, addr: SocketAddr) -> std::io::Result<Emulator> {
        Self::launch(Github::new(config), addr).await
    }

    /// The API's root (`http://127.0.0.1:PORT`), as `base_url` takes it.
    pub fn base_url(&self) -> String {
        self.authority_url()
    }

    /// Every issue of `repo`, by number.
    pub fn issues(&self, repo: &str) -> Vec<Issue> {
        self.state().issues(repo)
    }

    /// Makes repository `name` exist.
    pub fn create_repo(&self, name: &str) {
        self.state().lock().api.create_repo(name);
    }

    /// Deletes an issue (as an admin would): 410 from now on.
    pub fn delete_issue(&self, repo: &str, number: u64) {
        if let Some(i) = self
            .state()
            .lock()
            .api
            .repos
            .get_mut(&repo.to_lowercase())
            .and_then(|r| r.issues.get_mut(number as usize - 1))
        {
            i.deleted = true;
        }
    }

    /// A person's edit of an issue "on GitHub", through the API's rules
    /// (`updated_at` moves when anything changed); not a request of the app's.
    pub fn person_edit(&self, repo: &str, number: u64, fields: &Map<String, Value>) -> Result<(), String> {
        self.state().lock().api.person_edit(repo, number, fields)
    }

    /// A person opens an issue "on GitHub" (`title`, `body`, `labels`,
    /// `assignees`, `milestone`, through the API's rules); returns its number.
    pub fn person_create(&self, repo: &str, fields: &Map<String, Value>) -> Result<u64, String> {
        self.state().lock().api.person_create(repo, fields)
    }

    /// A person comments on an issue: its `updated_at` moves, nothing else.
    pub fn person_comment(&self, repo: &str, number: u64) -> Result<(), String> {
        self.state().lock().api.person_comment(repo, number)
    }

    /// A person opens a pull request (listed with the issues); returns its number.
    pub fn create_pull_request(
        &self,
        repo: &str,
        title: &str,
        body: Option<&str>,
        labels: &[&str],
    ) -> Result<u64, String> {
        let labels: Vec<String> = labels.iter().map(|l| (*l).to_owned()).collect();
        self.state().lock().api.pull_request(repo, title, body, &labels)
    }

    /// Whether any request received so far (faulted ones included) held `needle`.
    pub fn saw(&self, needle: &str) -> bool {
        self.state().lock().api.seen.iter().any(|r| r.contains(needle))
    }

    /// Refusals by the secondary (content creation) and the primary limit.
    pub fn refusals(&self) -> (u64, u64) {
        let st = self.state();
        let g = st.lock();
        (g.api.secondary_refusals, g.api.primary_refusals)
    }

    /// Writes that changed nothing, 304 answers, listing requests.
    pub fn counters(&self) -> (u64, u64, u64) {
        let st = self.state();
        let g = st.lock();
        (g.api.unchanged_writes, g.api.not_modified, g.api.list_requests)
    }

    /// Changes the limits (`None`: unlimited).
    pub fn set_limits(
        &self,
        content_per_min: Option<u32>,
        content_per_hour: Option<u32>,
        primary_per_hour: Option<u32>,
    ) {
        let st = self.state();
        let mut g = st.lock();
        g.api.config.content_per_min = content_per_min;
        g.api.config.content_per_hour = content_per_hour;
        g.api.config.primary_per_hour = primary_per_hour;
    }

    /// Makes a repository's issues disabled (410) or enabled.
    pub fn set_issues_disabled(&self, repo: &str, disabled: bool) {
        if let Some(r) = self.state().lock().api.repos.get_mut(&repo.to_lowercase()) {
            r.issues_disabled = disabled;
        }
    }
}

#[cfg(test)]
mod tests {
    use reqwest::Client;

    use super::*;

    struct T {
        em: Emulator,
        http: Client,
        token: String,
    }

    impl T {
        async fn new(config: GithubConfig) -> Self {
            let token = config.token.clone();
            Self { em: Emulator::start(config).await.unwrap(), http: Client::new(), token }
        }
        fn req(&self, m: reqwest::Method, p: &str) -> reqwest::RequestBuilder {
            self.http
                .request(m, format!("{}{p}", self.em.base_url()))
                .bearer_auth(&self.token)
                .header("user-agent", "t")
                .header("x-github-api-version", "2022-11-28")
        }
        async fn send(
            &self,
            m: reqwest::Method,
            p: &str,
            b: Option<Value>,
        ) -> (u16, reqwest::header::HeaderMap, Value) {
            let mut r = self.req(m, p);
            if let Some(b) = b {
                r = r.json(&b);
            }
            let resp = r.send().await.unwrap();
            let (s, h) = (resp.status().as_u16(), resp.headers().clone());
            let t = resp.text().await.unwrap();
            (s, h, serde_json::from_str(&t).unwrap_or(Value::Null))
        }
    }

    use reqwest::Method;

    #[tokio::test]
    async fn issues_are_created_validated_listed_and_closed_as_github_does() {
        let t = T::new(GithubConfig::default()).await;
        let (s, h, v) = t
            .send(
                Method::POST,
                "/repos/octo/tests/issues",
                Some(json!({"title": "one", "body": "b", "labels": ["bug"]})),
            )
            .await;
        assert_eq!(s, 201, "{v}");
        assert_eq!(v["number"], 1);
        assert!(h.contains_key("x-ratelimit-remaining") && h.contains_key("x-ratelimit-reset"));
        // The answer has the shape the description documents.
        let sp = spec();
        sp.check(sp.schema("issue").unwrap(), &v, "").unwrap();
        assert_eq!(v["labels"][0]["color"], "ededed", "an unknown label is created");
        // Refusals with GitHub's shapes.
        let (s, _, v) = t.send(Method::POST, "/repos/octo/tests/issues", Some(json!({"body": "no title"}))).await;
        assert_eq!((s, v["message"].as_str().unwrap()), (422, "Invalid request.\n\n\"title\" wasn't supplied."));
        let long = "x".repeat(BODY_LIMIT + 1);
        let (s, _, v) =
            t.send(Method::POST, "/repos/octo/tests/issues", Some(json!({"title": "t", "body": long}))).await;
        assert_eq!(s, 422);
        assert_eq!(v["errors"][0]["message"], "body is too long (maximum is 65536 characters)");
        let (s, _, _) = t
            .send(Method::POST, "/repos/octo/tests/issues", Some(json!({"title": "t", "body": "x".repeat(BODY_LIMIT)})))
            .await;
        assert_eq!(s, 201, "a body at the limit is taken");
        let (s, _, v) = t
            .send(Method::POST, "/repos/octo/tests/issues", Some(json!({"title": "t", "assignees": ["nobody"]})))
            .await;
        assert_eq!((s, v["errors"][0]["code"].as_str()), (422, Some("invalid")));
        let (s, _, _) = t.send(Method::POST, "/repos/octo/nope/issues", Some(json!({"title": "t"}))).await;
        assert_eq!(s, 404);
        // state_reason counts only with a change of state.
        let (s, _, v) =
            t.send(Method::PATCH, "/repos/octo/tests/issues/1", Some(json!({"state_reason": "not_planned"}))).await;
        assert_eq!((s, v["state"].as_str(), v["state_reason"].clone()), (200, Some("open"), Value::Null));
        let (_, _, v) = t
            .send(
                Method::PATCH,
                "/repos/octo/tests/issues/1",
                Some(json!({"state": "closed", "state_reason": "not_planned"})),
            )
            .await;
        assert_eq!((v["state"].as_str(), v["state_reason"].as_str()), (Some("closed"), Some("not_planned")));
        assert!(v["closed_at"].is_string());
        let (_, _, v) = t.send(Method::PATCH, "/repos/octo/tests/issues/1", Some(json!({"state": "open"}))).await;
        assert_eq!(v["state_reason"], "reopened");
        // Listing: filters, pages and the link header; pull requests mixed in.
        for n in 0..4 {
            t.send(Method::POST, "/repos/octo/tests/issues", Some(json!({"title": format!("p{n}"), "labels": ["sb"]})))
                .await;
        }
        t.em.state().lock().api.control("POST", "pull_request", br#"{"repo": "tests"}"#);
        let (s, h, v) = t
            .send(
                Method::GET,
                "/repos/octo/tests/issues?labels=SB&state=all&per_page=3&sort=created&direction=asc",
                None,
            )
            .await;
        assert_eq!((s, v.as_array().unwrap().len()), (200, 3));
        let link = h["link"].to_str().unwrap().to_owned();
        assert!(link.contains("rel=\"next\"") && link.contains("page=2"), "{link}");
        let next = link.split(['<', '>']).nth(1).unwrap().to_owned();
        let r = t.http.get(&next).bearer_auth(&t.token).header("user-agent", "t").send().await.unwrap();
        let v: Value = r.json().await.unwrap();
        assert_eq!(v.as_array().unwrap().len(), 1);
        let (_, _, v) = t.send(Method::GET, "/repos/octo/tests/issues?state=all&per_page=100", None).await;
        assert!(v.as_array().unwrap().iter().any(|i| i.get("pull_request").is_some()));
        let (s, _, _) = t.send(Method::GET, "/repos/octo/tests/issues?state=some", None).await;
        assert_eq!(s, 422);
        // ETag: a 304 costs nothing.
        let (_, h, _) = t.send(Method::GET, "/repos/octo/tests/issues/2", None).await;
        let etag = h["etag"].to_str().unwrap().to_owned();
        let used: u64 = h["x-ratelimit-used"].to_str().unwrap().parse().unwrap();
        let r = t.req(Method::GET, "/repos/octo/tests/issues/2").header("if-none-match", &etag).send().await.unwrap();
        assert_eq!(r.status(), 304);
        assert_eq!(r.headers()["x-ratelimit-used"].to_str().unwrap().parse::<u64>().unwrap(), used, "a 304 is free");
        // Deleted: 410.
        t.em.delete_issue("tests", 2);
        let (s, _, v) = t.send(Method::GET, "/repos/octo/tests/issues/2", None).await;
        assert_eq!((s, v["message"].as_str()), (410, Some("This issue was deleted")));
    }

    #[tokio::test]
    async fn auth_headers_and_limits_are_enforced() {
        let t = T::new(GithubConfig { content_per_min: Some(2), ..GithubConfig::default() }).await;
        let url = format!("{}/repos/octo/tests/issues", t.em.base_url());
        let r = t.http.get(&url).header("user-agent", "t").send().await.unwrap();
        assert_eq!(r.status(), 401);
        let r = t.http.get(&url).bearer_auth("wrong").header("user-agent", "t").send().await.unwrap();
        assert_eq!(r.status(), 401);
        let r = t.http.get(&url).bearer_auth(&t.token).send().await.unwrap();
        assert_eq!(r.status(), 403, "no User-Agent");
        let r = t
            .req(Method::GET, "/repos/octo/tests/issues")
            .header("x-github-api-version", "1999-01-01")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400);
        let r = t
            .http
            .get(&url)
            .header("authorization", format!("token {}", t.token))
            .header("user-agent", "t")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "token scheme");
        for _ in 0..2 {
            assert_eq!(t.send(Method::POST, "/repos/octo/tests/issues", Some(json!({"title": "x"}))).await.0, 201);
        }
        let (s, h, v) = t.send(Method::POST, "/repos/octo/tests/issues", Some(json!({"title": "x"}))).await;
        assert_eq!(s, 403);
        assert!(v["message"].as_str().unwrap().contains("secondary rate limit"));
        let wait: u64 = h["retry-after"].to_str().unwrap().parse().unwrap();
        assert!((1..=60).contains(&wait), "{wait}");
        assert_eq!(t.em.issues("tests").len(), 2, "the refused create did not run");
        assert_eq!(t.send(Method::GET, "/repos/octo/tests/issues", None).await.0, 200, "reads are not content");
        // The primary limit: remaining 0, the reset epoch.
        t.em.set_limits(None, None, Some(t.em.stats().ru_used as u32 + 1));
        assert_eq!(t.send(Method::GET, "/repos/octo/tests/issues", None).await.0, 200);
        let (s, h, _) = t.send(Method::GET, "/repos/octo/tests/issues", None).await;
        assert_eq!((s, h["x-ratelimit-remaining"].to_str().unwrap()), (403, "0"));
        let reset: i64 = h["x-ratelimit-reset"].to_str().unwrap().parse().unwrap();
        assert!(reset > now_epoch());
    }

    #[tokio::test]
    async fn the_listing_a_pull_reads_moves_with_a_persons_edits_and_costs_nothing_when_unchanged() {
        let t = T::new(GithubConfig::default()).await;
        let fields = |v: Value| v.as_object().cloned().unwrap();
        for n in 0..3 {
            t.send(Method::POST, "/repos/octo/tests/issues", Some(json!({"title": format!("i{n}"), "labels": ["sb"]})))
                .await;
        }
        let writes = t.em.stats().writes;
        // What a person does is not the app's: no request, no write counted.
        let n = t.em.person_create("tests", &fields(json!({"title": "by hand", "labels": ["sb", "ui"]}))).unwrap();
        assert_eq!(n, 4);
        let pr = t.em.create_pull_request("tests", "a PR", Some("text"), &["sb"]).unwrap();
        assert_eq!(pr, 5);
        assert!(t.em.person_create("tests", &fields(json!({"body": "no title"}))).is_err());
        assert!(t.em.person_edit("tests", 1, &fields(json!({"state": "sideways"}))).is_err(), "the API's rules");
        assert_eq!(t.em.stats().writes, writes);
        let url = "/repos/octo/tests/issues?labels=sb&state=all&sort=created&direction=asc&per_page=100";
        let (s, h, v) = t.send(Method::GET, url, None).await;
        assert_eq!(s, 200);
        let date = h["date"].to_str().unwrap();
        assert!(jiff::fmt::rfc2822::DateTimeParser::new().parse_timestamp(date).is_ok(), "{date}");
        let numbers: Vec<u64> = v.as_array().unwrap().iter().map(|i| i["number"].as_u64().unwrap()).collect();
        assert_eq!(numbers, [1, 2, 3, 4, 5], "the pull request is listed with the issues");
        assert!(v[4].get("pull_request").is_some() && v[0].get("pull_request").is_none());
        let etag = h["etag"].to_str().unwrap().to_owned();
        // A person's edit moves updated_at (whole seconds) and the issue to
        // the end of the updated order; `since` takes its second inclusively.
        let before = t.em.issues("tests")[1].updated_at;
        std::thread::sleep(std::time::Duration::from_millis(1100));
        t.em.person_edit("tests", 2, &fields(json!({"title": "edited"}))).unwrap();
        let after = t.em.issues("tests")[1].updated_at;
        assert!(after > before, "{before} -> {after}");
        let since = iso(after);
        let (_, _, v) = t
            .send(
                Method::GET,
                &format!("/repos/octo/tests/issues?labels=sb&state=all&sort=updated&direction=asc&since={since}"),
                None,
            )
            .await;
        let numbers: Vec<u64> = v.as_array().unwrap().iter().map(|i| i["number"].as_u64().unwrap()).collect();
        assert_eq!(numbers, [2], "updated at or after {since}");
        let (_, _, v) =
            t.send(Method::GET, "/repos/octo/tests/issues?labels=sb&state=all&sort=updated&direction=asc", None).await;
        assert_eq!(v.as_array().unwrap().last().unwrap()["number"], 2, "the edited issue sorts last by updated");
        // A comment moves updated_at only; an unchanged edit moves nothing.
        std::thread::sleep(std::time::Duration::from_millis(1100));
        t.em.person_comment("tests", 3).unwrap();
        let i3 = &t.em.issues("tests")[2];
        assert_eq!((i3.comments, i3.updated_at > after), (1, true));
        let at3 = i3.updated_at;
        t.em.person_edit("tests", 3, &fields(json!({"title": "i2"}))).unwrap();
        assert_eq!(t.em.issues("tests")[2].updated_at, at3, "an edit that changes nothing does not move it");
        // The listing changed: 200; asked again unchanged: 304, free.
        let r = t.req(Method::GET, url).header("if-none-match", &etag).send().await.unwrap();
        assert_eq!(r.status(), 200);
        let etag = r.headers()["etag"].to_str().unwrap().to_owned();
        let used = r.headers()["x-ratelimit-used"].to_str().unwrap().to_owned();
        let r = t.req(Method::GET, url).header("if-none-match", &etag).send().await.unwrap();
        assert_eq!(r.status(), 304);
        assert_eq!(r.headers()["x-ratelimit-used"].to_str().unwrap(), used, "a 304 costs nothing");
        // An admin's delete: gone from the listing.
        t.em.delete_issue("tests", 1);
        let (_, _, v) = t.send(Method::GET, url, None).await;
        let numbers: Vec<u64> = v.as_array().unwrap().iter().map(|i| i["number"].as_u64().unwrap()).collect();
        assert_eq!(numbers, [2, 3, 4, 5]);
        // Validated like every parameter.
        let (s, _, v) = t.send(Method::GET, "/repos/octo/tests/issues?since=yesterday", None).await;
        assert_eq!(s, 422, "{v}");
        let (s, _, _) = t.send(Method::GET, "/repos/octo/tests/issues?sort=newest", None).await;
        assert_eq!(s, 422);
    }

    /// The worker's GitHub adapter, pointed at `em`.
    fn worker_target(em: &Emulator, token: &str) -> syncbridge_worker::target::github::GithubTarget {
        use syncbridge_worker::target::github::{GithubSettings, GithubTarget};
        use syncbridge_worker::target::TargetPolicy;
        let policy = TargetPolicy { allow_loopback: true, ..TargetPolicy::default() };
        let cfg = json!({"owner": "octo", "base_url": em.base_url(), "timeout_ms": 5000, "budget_per_min": 100000});
        GithubTarget::new(GithubSettings::from_config("t", &cfg, &policy).unwrap(), token.into(), None).unwrap()
    }

    #[tokio::test]
    async fn the_workers_adapter_pulls_by_a_cursor_skips_what_is_not_the_definitions_and_refuses_foreign_links() {
        use syncbridge_worker::target::github::{marker, version};
        use syncbridge_worker::target::{ErrorClass, PullError, PullPage, PullRequest, Target};
        let t = T::new(GithubConfig { content_per_min: None, content_per_hour: None, ..GithubConfig::default() }).await;
        let new = |title: String, body: String, labels: Value| {
            let t = &t;
            async move {
                let (s, _, v) = t
                    .send(
                        Method::POST,
                        "/repos/octo/tests/issues",
                        Some(json!({"title": title, "body": body, "labels": labels})),
                    )
                    .await;
                assert_eq!(s, 201, "{v}");
                v["number"].as_u64().unwrap()
            }
        };
        for i in 1..=5 {
            new(format!("i{i}"), format!("text {i}\n\n{}", marker("d", &format!("k{i}"))), json!(["syncbridge"])).await;
        }
        let by_hand = new("by hand".into(), "no marker".into(), json!(["syncbridge", "ui"])).await;
        let other = new("other".into(), format!("x\n\n{}", marker("e", "k1")), json!(["syncbridge"])).await;
        let unlabelled = new("unlabelled".into(), format!("x\n\n{}", marker("d", "k9")), json!([])).await;
        let pr = t.em.create_pull_request("tests", "a PR", Some(&marker("d", "k8")), &["syncbridge"]).unwrap();
        let g = worker_target(&t.em, &t.token);
        let mut req = PullRequest {
            definition: "d".into(),
            container_id: "tests".into(),
            link: None,
            fields: vec!["SyncKey".into(), "title".into(), "body".into()],
            page_size: 2,
        };
        async fn read(g: &syncbridge_worker::target::github::GithubTarget, req: &mut PullRequest) -> Vec<PullPage> {
            let mut pages = Vec::new();
            loop {
                let p = g.pull(req).await.unwrap();
                assert!(p.link.len() <= 8000);
                req.link = Some(p.link.clone());
                let last = p.last;
                pages.push(p);
                if last {
                    return pages;
                }
            }
        }
        let ids = |pages: &[PullPage]| -> Vec<String> {
            pages.iter().flat_map(|p| p.items.iter().map(|i| i["id"].as_str().unwrap().to_owned())).collect()
        };
        // A full read: every labelled issue listed (the pull request too,
        // eight in pages of two), the definition's handed over.
        let requests = t.em.stats().requests;
        let pages = read(&g, &mut req).await;
        assert_eq!((pages.len() as u64, t.em.stats().requests - requests), (4, 4));
        assert_eq!(ids(&pages), ["1", "2", "3", "4", "5", by_hand.to_string().as_str()]);
        let all: Vec<&Value> = pages.iter().flat_map(|p| p.items.iter()).collect();
        assert_eq!(all[0]["fields"], json!({"SyncKey": "k1", "title": "i1", "body": "text 1"}));
        assert_eq!(all[5]["fields"], json!({"title": "by hand", "body": "no marker"}), "no marker: no SyncKey");
        let issue1 = t.send(Method::GET, "/repos/octo/tests/issues/1", None).await.2;
        assert_eq!(all[0]["etag"].as_str(), version(&issue1).as_deref(), "the eTag is the version a write reports");
        assert_eq!(all[0]["modified"], issue1["updated_at"]);
        assert!(!ids(&pages).iter().any(|i| [other, unlabelled, pr].contains(&i.parse().unwrap())));
        // Nothing changed: the overlap lists them again, nothing handed over;
        // then the same listing again is a 304, free.
        req.page_size = 100;
        let pages = read(&g, &mut req).await;
        assert!(ids(&pages).is_empty(), "{:?}", ids(&pages));
        let (used, not_modified) = (t.em.stats().ru_used, t.em.counters().1);
        let pages = read(&g, &mut req).await;
        assert!(ids(&pages).is_empty());
        assert_eq!(
            (t.em.counters().1, t.em.stats().ru_used),
            (not_modified + 1, used),
            "an unchanged listing is a free 304"
        );
        // An edit, and a second one in the same second or the next: both
        // come (what is skipped is an issue's version, not its updated_at).
        let edit =
            |n: u64, title: &str| t.em.person_edit("tests", n, json!({"title": title}).as_object().unwrap()).unwrap();
        edit(2, "i2 edited");
        let pages = read(&g, &mut req).await;
        assert_eq!(ids(&pages), ["2"]);
        edit(2, "i2 edited again");
        let pages = read(&g, &mut req).await;
        assert_eq!(pages[0].items[0]["fields"]["title"], "i2 edited again");
        // An issue edited while a read of several pages goes on is read
        // again by the next round.
        std::thread::sleep(std::time::Duration::from_millis(1100));
        edit(4, "i4 edited");
        edit(5, "i5 edited");
        req.page_size = 1;
        let first = loop {
            // (the overlap lists issue 2 first again: skipped)
            let p = g.pull(&req).await.unwrap();
            req.link = Some(p.link.clone());
            if !p.items.is_empty() {
                break p;
            }
            assert!(!p.last, "issue 4 was not listed");
        };
        assert!(!first.last);
        assert_eq!(first.items[0]["fields"]["title"], "i4 edited");
        edit(4, "i4 edited during the read");
        let rest = read(&g, &mut req).await;
        assert_eq!(ids(&rest), ["5"]);
        let next = read(&g, &mut req).await;
        assert_eq!(
            next.iter().flat_map(|p| &p.items).map(|i| i["fields"]["title"].clone()).collect::<Vec<_>>(),
            [json!("i4 edited during the read")]
        );
        // A next page elsewhere is never followed (the token would go along);
        // a link this worker did not make starts a full read.
        let mut tampered: Value = serde_json::from_str(&first.link).unwrap();
        let requests = t.em.stats().requests;
        for foreign in
            ["https://evil.example/repos/octo/tests/issues?page=2", "http://localhost:1/repos/octo/tests/issues"]
        {
            tampered["round"]["next"] = json!(foreign);
            req.link = Some(tampered.to_string());
            let e = g.pull(&req).await.unwrap_err();
            assert!(matches!(&e, PullError::LinkRefused(m) if m.contains("refused")), "{foreign}: {e:?}");
        }
        req.link = Some("https://api.github.com/repos/octo/tests/issues?page=2".into());
        assert!(matches!(g.pull(&req).await, Err(PullError::Resync(_))));
        assert_eq!(t.em.stats().requests, requests, "nothing was sent");
        // An admin's delete: a full read no longer lists it.
        t.em.delete_issue("tests", 3);
        req.link = None;
        req.page_size = 100;
        assert_eq!(ids(&read(&g, &mut req).await), ["1", "2", "4", "5", by_hand.to_string().as_str()]);
        // A repository that is not there: definite.
        req.container_id = "nope".into();
        req.link = None;
        let e = g.pull(&req).await.unwrap_err();
        assert!(
            matches!(&e, PullError::Failed { class: ErrorClass::Definite, message, .. } if message.contains("HTTP 404")),
            "{e:?}"
        );
    }
}
