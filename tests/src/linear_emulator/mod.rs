//! A local emulator of Linear's GraphQL API, for testing the Linear target
//! without a workspace: a plug-in of the emulator harness (`crate::emulator`),
//! which serves it and does the faults, latency, outages, counters and
//! `/_emulator` control routes.
//!
//! It serves `POST /graphql` as Linear does:
//!
//! - auth: the personal API key in `Authorization` as it is (or after
//!   `Bearer `); anything else gets `401` with an `authentication error`;
//! - every document parsed and validated against Linear's published SDL
//!   (`tests/api/linear.graphql`, see [`schema`]): unknown fields,
//!   arguments and input fields, wrong scalars (`UUID`, `TimelessDate`,
//!   `Int`, …), missing required arguments and variables are refused with
//!   graphql-js's messages, `400` and `extensions.code
//!   GRAPHQL_VALIDATION_FAILED`, and nothing runs;
//! - one team with Linear's default workflow states, labels and users;
//!   `issue`, `issues` (filters on id, title, description, number,
//!   priority, updatedAt, createdAt, team, state; `orderBy`, cursors,
//!   `includeArchived`), `team`, `workflowStates`, `issueLabels`, `users`,
//!   `viewer`; `issueCreate` (a client-chosen `id` must be a UUID v4 and
//!   unused: a second create with it is refused and creates nothing),
//!   `issueUpdate`, `issueDelete` (to the trash; `permanentlyDelete` is for
//!   admins: `forbidden`), `issueArchive`, `issueUnarchive`,
//!   `issueBatchCreate` (one transaction), `issueBatchUpdate` (at most 50),
//!   `issueLabelCreate`; several root fields per document, mutations run in
//!   order; a field error nulls `data` (the payloads are non-null) and names
//!   its path;
//! - rate limits as leaky buckets over requests and complexity
//!   (`x-ratelimit-requests-*`, `x-ratelimit-complexity-*` with resets in
//!   epoch milliseconds, and `x-complexity`, on every answer); a request
//!   over either gets `429` (configurable: Linear has answered `400` too)
//!   with `RATELIMITED` and `retry-after`; a query above the single-query
//!   complexity limit is refused;
//! - values held to limits Linear does not publish (title and description
//!   lengths: configurable).

pub mod schema;
pub mod state;

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Instant;

use hyper::header::{HeaderName, HeaderValue, RETRY_AFTER};
use serde_json::{json, Map, Value};

use crate::emulator::{self, json_response, Api, HttpResponse, Meter, Request, Route};
pub use crate::emulator::{Fault, Stats};
use schema::GqlError;
use state::{FieldError, Limits, Workspace};
pub use state::{Issue, Label, User, WorkflowState};

/// The `Content-Type` Linear answers with.
pub const CONTENT_TYPE: &str = "application/json; charset=utf-8";

/// How an emulator behaves.
#[derive(Debug, Clone, PartialEq)]
pub struct EmulatorConfig {
    /// The accepted personal API key.
    pub api_key: String,
    /// The team's id (a UUID).
    pub team_id: String,
    /// The team's key (`ENG`).
    pub team_key: String,
    /// Requests allowed per period (leaky bucket); None: unlimited.
    pub requests_limit: Option<u32>,
    /// Complexity points allowed per period; None: unlimited.
    pub complexity_limit: Option<u32>,
    /// The period both buckets refill over, in seconds (Linear: an hour).
    pub period_secs: f64,
    /// The most complexity one query may have (Linear: 10,000).
    pub max_query_complexity: u32,
    /// The status of a rate-limited answer (429; Linear has answered 400).
    pub ratelimit_status: u16,
    /// Value limits.
    pub limits: Limits,
}

impl Default for EmulatorConfig {
    fn default() -> Self {
        Self {
            api_key: "lin_api_emulator0000000000000000000000000000".into(),
            team_id: "7f3e1c2a-5b4d-4e6f-8a9b-0c1d2e3f4a5b".into(),
            team_key: "ENG".into(),
            requests_limit: None,
            complexity_limit: None,
            period_secs: 3600.0,
            max_query_complexity: 10_000,
            ratelimit_status: 429,
            limits: Limits { max_title_chars: 255, max_description_chars: 100_000, max_batch: 50 },
        }
    }
}

/// A leaky bucket: `limit` units, refilled at `limit / period` a second.
#[derive(Debug, Clone)]
struct Bucket {
    limit: f64,
    level: f64,
    at: Instant,
}

impl Bucket {
    fn new(limit: u32) -> Self {
        Self { limit: f64::from(limit), level: f64::from(limit), at: Instant::now() }
    }

    fn refill(&mut self, period: f64) {
        let now = Instant::now();
        let rate = self.limit / period.max(0.001);
        self.level = (self.level + rate * now.duration_since(self.at).as_secs_f64()).min(self.limit);
        self.at = now;
    }

    /// Seconds until `n` units are there (0 when they are).
    fn wait_for(&self, n: f64, period: f64) -> f64 {
        if self.level >= n {
            0.0
        } else {
            (n - self.level) / (self.limit / period.max(0.001))
        }
    }

    /// Epoch ms when the bucket is full again.
    fn reset_ms(&self, period: f64) -> i64 {
        let secs = (self.limit - self.level) / (self.limit / period.max(0.001));
        jiff::Timestamp::now().as_millisecond() + (secs * 1000.0).ceil() as i64
    }
}

/// The Linear API as an emulator plug-in.
#[derive(Debug)]
pub struct Linear {
    config: EmulatorConfig,
    /// The workspace.
    pub workspace: Workspace,
    meter: Meter,
    key_revoked: bool,
    requests: Option<Bucket>,
    complexity: Option<Bucket>,
    /// Documents refused by validation.
    pub validation_errors: u64,
    /// Field errors answered.
    pub field_errors: u64,
    /// Writes that changed nothing on their issue (echoes).
    pub unchanged_writes: u64,
    /// Every request received, faulted ones included (privacy checks).
    received: emulator::ReceivedLog,
}

/// A running Linear emulator; dropping it stops the server.
pub type Emulator = emulator::Emulator<Linear>;

/// The shared state of a running Linear emulator.
pub type EmulatorState = emulator::EmulatorState<Linear>;

impl EmulatorState {
    /// Every issue (trashed and archived ones included), by number.
    pub fn issues(&self) -> Vec<Value> {
        let st = self.lock();
        let ws = &st.api.workspace;
        let mut v: Vec<&state::Issue> = ws.issues.values().collect();
        v.sort_by_key(|i| i.number);
        v.into_iter().map(|i| ws.issue_json(i)).collect()
    }

    /// Whether any request received so far (whatever its fate: refused,
    /// faulted, answered) carried `needle`, as UTF-8 or as JSON escapes.
    pub fn received_contains(&self, needle: &str) -> bool {
        self.lock().api.received.contains(needle)
    }

    /// The stored issue `id`.
    pub fn issue(&self, id: &str) -> Option<state::Issue> {
        self.lock().api.workspace.issues.get(id).cloned()
    }

    /// Changes the rate limits (per period).
    pub fn set_limits(&self, requests: Option<u32>, complexity: Option<u32>, period_secs: f64) {
        let mut st = self.lock();
        st.api.config.requests_limit = requests;
        st.api.config.complexity_limit = complexity;
        st.api.config.period_secs = period_secs;
        st.api.requests = requests.map(Bucket::new);
        st.api.complexity = complexity.map(Bucket::new);
    }

    /// A person edits issue `id` "in Linear" (`input`: an
    /// `IssueUpdateInput`; `updatedAt` moves on a change). Not counted as
    /// an API write.
    pub fn person_edit(&self, id: &str, input: Value) -> Result<Value, String> {
        self.lock().api.person("issueUpdate", json!({"id": id, "input": input}))
    }

    /// A person creates an issue in the team (`input`: an
    /// `IssueCreateInput` without `teamId`; Linear chooses the id).
    /// Returns the new issue's id.
    pub fn person_create(&self, input: Value) -> Result<String, String> {
        let mut st = self.lock();
        let mut input = input;
        input["teamId"] = Value::String(st.api.workspace.team_id.clone());
        let v = st.api.person("issueCreate", json!({"input": input}))?;
        Ok(v.pointer("/issue/id").and_then(Value::as_str).unwrap_or_default().to_owned())
    }

    /// A person deletes issue `id` (to the trash).
    pub fn person_trash(&self, id: &str) -> Result<Value, String> {
        self.lock().api.person("issueDelete", json!({"id": id}))
    }

    /// A person archives issue `id`.
    pub fn person_archive(&self, id: &str) -> Result<Value, String> {
        self.lock().api.person("issueArchive", json!({"id": id}))
    }

    /// The id of the team's workflow state `name`.
    pub fn state_id(&self, name: &str) -> Option<String> {
        self.lock().api.workspace.states.iter().find(|s| s.name.eq_ignore_ascii_case(name)).map(|s| s.id.clone())
    }

    /// The id of the team's label `name`, created (as a person would) when
    /// the team lacks it.
    pub fn label_id(&self, name: &str) -> String {
        let mut st = self.lock();
        if let Some(l) = st.api.workspace.labels.iter().find(|l| l.name.eq_ignore_ascii_case(name)) {
            return l.id.clone();
        }
        let v = st.api.person("issueLabelCreate", json!({"input": {"name": name}})).expect("create a label");
        v.pointer("/issueLabel/id").and_then(Value::as_str).unwrap_or_default().to_owned()
    }

    /// (validation errors, field errors, unchanged writes) so far.
    pub fn error_counts(&self) -> (u64, u64, u64) {
        let st = self.lock();
        (st.api.validation_errors, st.api.field_errors, st.api.unchanged_writes)
    }
}

impl Emulator {
    /// Starts an emulator on a free loopback port.
    pub async fn start(config: EmulatorConfig) -> std::io::Result<Self> {
        Self::start_on(config, SocketAddr::from((Ipv4Addr::LOCALHOST, 0))).await
    }

    /// Starts an emulator on `addr`.
    pub async fn start_on(config: EmulatorConfig, addr: SocketAddr) -> std::io::Result<Self> {
        emulator::Emulator::launch(Linear::new(config), addr).await
    }

    /// The GraphQL endpoint, `http://127.0.0.1:PORT/graphql`.
    pub fn base_url(&self) -> String {
        format!("{}/graphql", self.authority_url())
    }

    /// Every issue (see [`EmulatorState::issues`]).
    pub fn issues(&self) -> Vec<Value> {
        self.state().issues()
    }
}

/// A GraphQL error object with Linear's extensions.
fn error_json(message: &str, kind: &str, code: &str, path: Option<&str>, location: Option<(usize, usize)>) -> Value {
    let mut e = json!({
        "message": message,
        "extensions": {"type": kind, "code": code, "userError": kind != "internal error" && kind != "other",
                       "userPresentableMessage": message},
    });
    if let Some(p) = path {
        e["path"] = json!([p]);
    }
    if let Some((line, column)) = location {
        e["locations"] = json!([{"line": line, "column": column}]);
    }
    e
}

impl Linear {
    /// The API with a fresh workspace.
    pub fn new(config: EmulatorConfig) -> Self {
        let workspace = Workspace::new(&config.team_id, &config.team_key, config.limits);
        Self {
            requests: config.requests_limit.map(Bucket::new),
            complexity: config.complexity_limit.map(Bucket::new),
            config,
            workspace,
            meter: Meter::default(),
            key_revoked: false,
            validation_errors: 0,
            field_errors: 0,
            unchanged_writes: 0,
            received: emulator::ReceivedLog::default(),
        }
    }

    /// The rate-limit headers of an answer (`cost`: this query's complexity).
    fn limit_headers(&mut self, r: &mut HttpResponse, cost: Option<f64>) {
        let period = self.config.period_secs;
        let mut set = |name: &'static str, value: String| {
            if let Ok(v) = HeaderValue::from_str(&value) {
                r.headers_mut().insert(HeaderName::from_static(name), v);
            }
        };
        if let Some(b) = self.requests.as_mut() {
            b.refill(period);
            set("x-ratelimit-requests-limit", format!("{}", b.limit as u64));
            set("x-ratelimit-requests-remaining", format!("{}", b.level.floor() as u64));
            set("x-ratelimit-requests-reset", format!("{}", b.reset_ms(period)));
        }
        if let Some(b) = self.complexity.as_mut() {
            b.refill(period);
            set("x-ratelimit-complexity-limit", format!("{}", b.limit as u64));
            set("x-ratelimit-complexity-remaining", format!("{}", b.level.floor() as u64));
            set("x-ratelimit-complexity-reset", format!("{}", b.reset_ms(period)));
        }
        if let Some(c) = cost {
            set("x-complexity", format!("{}", c.ceil() as u64));
        }
    }

    fn answer(&mut self, status: u16, body: &Value, cost: Option<f64>) -> HttpResponse {
        let mut r = json_response(status, body);
        self.limit_headers(&mut r, cost);
        r
    }

    /// Takes one request and `cost` points from the buckets, or answers
    /// RATELIMITED (nothing taken, nothing run).
    fn charge(&mut self, cost: f64) -> Result<(), Box<HttpResponse>> {
        let period = self.config.period_secs;
        let mut wait: f64 = 0.0;
        let mut which = Vec::new();
        if let Some(b) = self.requests.as_mut() {
            b.refill(period);
            let w = b.wait_for(1.0, period);
            if w > 0.0 {
                which.push("request");
                wait = wait.max(w);
            }
        }
        if let Some(b) = self.complexity.as_mut() {
            b.refill(period);
            let w = b.wait_for(cost, period);
            if w > 0.0 {
                which.push("complexity");
                wait = wait.max(w);
            }
        }
        if which.is_empty() {
            if let Some(b) = self.requests.as_mut() {
                b.level -= 1.0;
            }
            if let Some(b) = self.complexity.as_mut() {
                b.level -= cost;
            }
            self.meter.stats.ru_used += cost.ceil() as u64;
            return Ok(());
        }
        self.meter.stats.throttled += 1;
        let msg = format!("Rate limit exceeded ({} limit): try again in {:.1}s", which.join(" and "), wait);
        let body = json!({"errors": [error_json(&msg, "ratelimited", "RATELIMITED", None, None)]});
        let mut r = self.answer(self.config.ratelimit_status, &body, Some(cost));
        if let Ok(v) = HeaderValue::from_str(&format!("{}", wait.ceil().max(1.0) as u64)) {
            r.headers_mut().insert(RETRY_AFTER, v);
        }
        Err(Box::new(r))
    }

    /// A person's action "in Linear": a root field run on the workspace
    /// outside the API (no rate limit, not counted as a write).
    fn person(&mut self, field: &str, args: Value) -> Result<Value, String> {
        let args = args.as_object().cloned().unwrap_or_default();
        let mut writes = 0;
        self.workspace.resolve(field, &args, &mut writes).map_err(|e| e.message)
    }

    fn refused(&mut self, errors: Vec<GqlError>) -> HttpResponse {
        self.validation_errors += 1;
        let errors: Vec<Value> = errors
            .iter()
            .map(|e| error_json(&e.message, "graphql error", "GRAPHQL_VALIDATION_FAILED", None, e.location))
            .collect();
        self.answer(400, &json!({"errors": errors}), None)
    }

    fn graphql(&mut self, req: &Request, fault: Option<&Fault>) -> HttpResponse {
        let body: Value = match serde_json::from_slice(&req.body) {
            Ok(v) => v,
            Err(e) => {
                return self.refused(vec![GqlError { message: format!("Body is not JSON: {e}"), location: None }])
            }
        };
        let Some(query) = body.get("query").and_then(Value::as_str) else {
            return self.refused(vec![GqlError { message: "Must provide query string.".into(), location: None }]);
        };
        let variables = match body.get("variables") {
            None | Some(Value::Null) => Map::new(),
            Some(Value::Object(m)) => m.clone(),
            Some(_) => {
                return self.refused(vec![GqlError { message: "Variables must be an object.".into(), location: None }])
            }
        };
        let op_name = body.get("operationName").and_then(Value::as_str);
        let op = match schema::prepare(schema::schema(), query, &variables, op_name) {
            Ok(op) => op,
            Err(errors) => return self.refused(errors),
        };
        if op.complexity > f64::from(self.config.max_query_complexity) {
            let msg = format!(
                "Query too complex: its complexity is {}, the maximum is {}",
                op.complexity.ceil(),
                self.config.max_query_complexity
            );
            self.validation_errors += 1;
            let body = json!({"errors": [error_json(&msg, "invalid input", "QUERY_TOO_COMPLEX", None, None)]});
            return self.answer(400, &body, Some(op.complexity));
        }
        if let Err(r) = self.charge(op.complexity) {
            return *r;
        }
        // A batch that loses its last half: those fields neither run nor answer.
        let mut run = op.fields.len();
        if fault == Some(&Fault::BatchMissingResponses) {
            run -= (run / 2).max(1);
        }
        let mut data = Map::new();
        let mut errors = Vec::new();
        let mut null_data = false;
        for f in op.fields.iter().take(run) {
            let mut writes = 0;
            let before = self.workspace.issues.clone();
            let outcome = self.workspace.resolve(&f.name, &f.args, &mut writes).and_then(|v| {
                schema::project(schema::schema(), &f.ty, &v, &f.selection).map_err(FieldError::unimplemented)
            });
            match outcome {
                Ok(v) => {
                    if writes > 0 && before == self.workspace.issues {
                        self.unchanged_writes += 1;
                    }
                    for _ in 0..writes {
                        self.meter.wrote();
                    }
                    data.insert(f.key.clone(), v);
                }
                Err(e) => {
                    self.field_errors += 1;
                    errors.push(error_json(&e.message, e.kind, e.code, Some(&f.key), None));
                    // The root fields are non-null: the error nulls `data`.
                    null_data |= matches!(f.ty, schema::Ty::NonNull(_));
                    data.insert(f.key.clone(), Value::Null);
                }
            }
        }
        // Linear answers field errors with 200 (a GraphQL answer), except
        // when the only field failed on its input: 400.
        let status = if !errors.is_empty() && null_data && run == 1 { 400 } else { 200 };
        let mut out = Map::new();
        out.insert("data".into(), if null_data { Value::Null } else { Value::Object(data) });
        if !errors.is_empty() {
            out.insert("errors".into(), Value::Array(errors));
        }
        self.answer(status, &Value::Object(out), Some(op.complexity))
    }
}

impl Api for Linear {
    const CONTENT_TYPE: &'static str = CONTENT_TYPE;
    const CONTROL_ROUTES: &'static [&'static str] =
        &["GET issues", "POST edit", "POST create", "POST delete", "POST limits"];

    fn route(&mut self, req: &Request) -> Route {
        self.received.record(req);
        match (req.method.as_str(), req.path.as_str()) {
            ("POST", "/graphql") => Route::Serve { batch: true },
            (_, "/graphql") => Route::Answer(json_response(
                405,
                &json!({"errors": [{"message": "GraphQL only supports POST requests."}]}),
            )),
            _ => Route::Answer(json_response(404, &json!({"errors": [{"message": "Not found"}]}))),
        }
    }

    fn serve(&mut self, req: &Request, fault: Option<&Fault>) -> HttpResponse {
        let key = req.header("authorization").map(|a| a.strip_prefix("Bearer ").unwrap_or(a).trim());
        if self.key_revoked || key != Some(self.config.api_key.as_str()) {
            self.meter.stats.unauthorized += 1;
            let msg = "Authentication required, not authenticated";
            let body = json!({"errors": [error_json(msg, "authentication error", "AUTHENTICATION_ERROR", None, None)]});
            return self.answer(401, &body, None);
        }
        self.graphql(req, fault)
    }

    fn error(status: u16, _req: &Request) -> HttpResponse {
        let (kind, code) = match status {
            429 => ("ratelimited", "RATELIMITED"),
            400 => ("invalid input", "INVALID_INPUT"),
            401 => ("authentication error", "AUTHENTICATION_ERROR"),
            403 => ("forbidden", "FORBIDDEN"),
            s if s >= 500 => ("internal error", "INTERNAL_SERVER_ERROR"),
            _ => ("unknown", "UNKNOWN"),
        };
        let msg = format!("injected: HTTP {status}");
        json_response(status, &json!({"errors": [error_json(&msg, kind, code, None, None)]}))
    }

    fn expire_tokens(&mut self) {
        // A personal API key does not expire; revoking it is the nearest thing.
        self.key_revoked = true;
    }

    fn configure(&mut self, config: &Value) -> Result<Map<String, Value>, String> {
        let num = |k: &str| config.get(k).and_then(Value::as_u64).map(|n| n as u32);
        if config.get("requests_limit").is_some() || config.get("complexity_limit").is_some() {
            self.config.requests_limit = num("requests_limit");
            self.config.complexity_limit = num("complexity_limit");
            self.requests = self.config.requests_limit.map(Bucket::new);
            self.complexity = self.config.complexity_limit.map(Bucket::new);
        }
        if let Some(p) = config.get("period_secs").and_then(Value::as_f64) {
            if !(p.is_finite() && p > 0.0) {
                return Err("period_secs must be a positive number".into());
            }
            self.config.period_secs = p;
        }
        if let Some(s) = config.get("ratelimit_status").and_then(Value::as_u64) {
            self.config.ratelimit_status = u16::try_from(s).map_err(|_| "ratelimit_status is a status")?;
        }
        if let Some(n) = config.get("max_description_chars").and_then(Value::as_u64) {
            self.config.limits.max_description_chars = n as usize;
            self.workspace.limits.max_description_chars = n as usize;
        }
        let mut out = Map::new();
        out.insert("requests_limit".into(), json!(self.config.requests_limit));
        out.insert("complexity_limit".into(), json!(self.config.complexity_limit));
        out.insert("period_secs".into(), json!(self.config.period_secs));
        out.insert("ratelimit_status".into(), json!(self.config.ratelimit_status));
        out.insert("max_description_chars".into(), json!(self.config.limits.max_description_chars));
        Ok(out)
    }

    fn control(&mut self, method: &str, route: &str, body: &[u8]) -> Option<HttpResponse> {
        match (method, route) {
            ("GET", "issues") => {
                let ws = &self.workspace;
                let mut v: Vec<&state::Issue> = ws.issues.values().collect();
                v.sort_by_key(|i| i.number);
                Some(json_response(200, &Value::Array(v.into_iter().map(|i| ws.issue_json(i)).collect())))
            }
            ("POST", "edit" | "create" | "delete") => {
                // A person "in Linear": edits an issue (`{"id", "input":
                // IssueUpdateInput}`), creates one (`{"input":
                // IssueCreateInput}`, the team's by default; Linear chooses
                // the id) or deletes one to the trash (`{"id"}`).
                let b: Value = serde_json::from_slice(body).unwrap_or_default();
                let (field, args) = match route {
                    "edit" => ("issueUpdate", json!({"id": b.get("id"), "input": b.get("input")})),
                    "create" => {
                        let mut input = b.get("input").cloned().unwrap_or_else(|| json!({}));
                        if input.get("teamId").is_none() {
                            input["teamId"] = Value::String(self.workspace.team_id.clone());
                        }
                        ("issueCreate", json!({"input": input}))
                    }
                    _ => ("issueDelete", json!({"id": b.get("id")})),
                };
                Some(match self.person(field, args) {
                    Ok(v) => json_response(200, &v),
                    Err(e) => json_response(400, &json!({"error": e})),
                })
            }
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
mod tests {
    use super::*;
    use reqwest::Client;

    struct T {
        em: Emulator,
        http: Client,
        key: String,
    }

    impl T {
        async fn new(config: EmulatorConfig) -> Self {
            let key = config.api_key.clone();
            Self { em: Emulator::start(config).await.unwrap(), http: Client::new(), key }
        }

        async fn gql(&self, query: &str, variables: Value) -> (u16, reqwest::header::HeaderMap, Value) {
            let r = self
                .http
                .post(self.em.base_url())
                .header("authorization", &self.key)
                .json(&json!({"query": query, "variables": variables}))
                .send()
                .await
                .unwrap();
            let (s, h) = (r.status().as_u16(), r.headers().clone());
            (s, h, r.json().await.unwrap())
        }
    }

    const ID: &str = "0f6b6c1e-9a41-4c2b-8d55-3a0e7a9b1c20";

    #[tokio::test]
    async fn creates_with_a_client_chosen_id_once_and_validates_against_the_schema() {
        let t = T::new(EmulatorConfig::default()).await;
        let team = EmulatorConfig::default().team_id;
        let create = "mutation($i: IssueCreateInput!) { issueCreate(input: $i) { success issue { id identifier title state { name type } } } }";
        let input = json!({"i": {"id": ID, "teamId": team, "title": "Chloé 東京 🚀", "description": "**bold**", "priority": 2}});
        let (s, h, v) = t.gql(create, input.clone()).await;
        assert_eq!(s, 200, "{v}");
        assert_eq!(v["data"]["issueCreate"]["issue"]["id"], ID);
        assert_eq!(v["data"]["issueCreate"]["issue"]["identifier"], "ENG-1");
        assert_eq!(v["data"]["issueCreate"]["issue"]["state"]["type"], "unstarted");
        assert!(h.contains_key("x-complexity"));
        // The same id again: refused, nothing created.
        let (s, _, v) = t.gql(create, input).await;
        assert_eq!(s, 400, "{v}");
        assert!(v["data"].is_null());
        assert_eq!(v["errors"][0]["path"], json!(["issueCreate"]));
        assert_eq!(v["errors"][0]["extensions"]["type"], "invalid input");
        assert!(v["errors"][0]["message"].as_str().unwrap().contains("already exists"));
        assert_eq!(t.em.issues().len(), 1);
        // Unknown input field and a v1 UUID.
        let (s, _, v) = t.gql(create, json!({"i": {"teamId": team, "title": "x", "colour": 1}})).await;
        assert_eq!((s, v["errors"][0]["extensions"]["code"].as_str()), (400, Some("GRAPHQL_VALIDATION_FAILED")));
        let (s, _, v) = t
            .gql(create, json!({"i": {"id": "0f6b6c1e-9a41-1c2b-8d55-3a0e7a9b1c20", "teamId": team, "title": "x"}}))
            .await;
        assert_eq!(s, 400, "{v}");
        // Too long a description: the field's error, with the limit in words.
        let long = "x".repeat(100_001);
        let (s, _, v) = t.gql(create, json!({"i": {"teamId": team, "title": "x", "description": long}})).await;
        assert_eq!(s, 400);
        assert!(v["errors"][0]["message"].as_str().unwrap().contains("100000 characters"), "{v}");
        assert_eq!(t.em.stats().writes, 1);
        // Wrong key.
        let r =
            t.http.post(t.em.base_url()).header("authorization", "nope").json(&json!({"query": "{ viewer { id } }"}));
        let r = r.send().await.unwrap();
        assert_eq!(r.status(), 401);
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["errors"][0]["extensions"]["type"], "authentication error");
    }

    #[tokio::test]
    async fn aliased_mutations_run_in_order_and_an_error_names_its_path() {
        let t = T::new(EmulatorConfig::default()).await;
        let team = EmulatorConfig::default().team_id;
        let q = "mutation($a: IssueCreateInput!, $b: IssueCreateInput!) { a: issueCreate(input: $a) { success } b: issueCreate(input: $b) { success } }";
        let (s, _, v) =
            t.gql(q, json!({"a": {"teamId": team, "title": "A", "id": ID}, "b": {"teamId": team, "title": ""}})).await;
        assert_eq!(s, 200, "{v}");
        assert!(v["data"].is_null(), "a non-null field's error nulls data: {v}");
        assert_eq!(v["errors"].as_array().unwrap().len(), 1);
        assert_eq!(v["errors"][0]["path"], json!(["b"]));
        assert_eq!(t.em.issues().len(), 1, "a ran");
        // Delete to the trash, then find it only with includeArchived.
        let (s, _, v) = t
            .gql(&format!("mutation {{ issueDelete(id: \"{ID}\") {{ success entity {{ id trashed }} }} }}"), json!({}))
            .await;
        assert_eq!((s, &v["data"]["issueDelete"]["entity"]["trashed"]), (200, &json!(true)), "{v}");
        let list = "query($f: IssueFilter, $a: Boolean) { issues(filter: $f, includeArchived: $a, first: 10) { nodes { id trashed } pageInfo { hasNextPage } } }";
        let (_, _, v) = t.gql(list, json!({"f": {"id": {"in": [ID]}}})).await;
        assert_eq!(v["data"]["issues"]["nodes"], json!([]));
        let (_, _, v) = t.gql(list, json!({"f": {"id": {"in": [ID]}}, "a": true})).await;
        assert_eq!(v["data"]["issues"]["nodes"], json!([{"id": ID, "trashed": true}]));
        // Restore it by update.
        let (s, _, v) = t
            .gql(&format!("mutation {{ issueUpdate(id: \"{ID}\", input: {{trashed: false, title: \"A2\"}}) {{ success issue {{ title trashed }} }} }}"), json!({}))
            .await;
        assert_eq!(s, 200, "{v}");
        assert_eq!(v["data"]["issueUpdate"]["issue"], json!({"title": "A2", "trashed": null}));
    }

    #[tokio::test]
    async fn issues_page_by_updated_at_with_cursors_and_a_persons_edits_move_updated_at() {
        let t = T::new(EmulatorConfig::default()).await;
        let team = EmulatorConfig::default().team_id;
        let st = t.em.state();
        let ids: Vec<String> =
            (0..5).map(|i| st.person_create(json!({"title": format!("issue {i}")})).unwrap()).collect();
        let list = "query($f: IssueFilter, $n: Int, $a: String) { issues(filter: $f, orderBy: updatedAt, first: $n, after: $a, includeArchived: true) { nodes { id updatedAt trashed title } pageInfo { hasNextPage endCursor } } }";
        let page = |v: &Value| -> Vec<String> {
            v["data"]["issues"]["nodes"]
                .as_array()
                .unwrap()
                .iter()
                .map(|n| n["title"].as_str().unwrap().to_owned())
                .collect()
        };
        let f = json!({"team": {"id": {"eq": team}}});
        let (s, h, v) = t.gql(list, json!({"f": f, "n": 2})).await;
        assert_eq!(s, 200, "{v}");
        assert_eq!(page(&v), ["issue 0", "issue 1"]);
        assert_eq!(v["data"]["issues"]["pageInfo"]["hasNextPage"], true);
        assert!(h["x-complexity"].to_str().unwrap().parse::<u32>().unwrap() >= 2, "priced by first");
        let cursor = v["data"]["issues"]["pageInfo"]["endCursor"].clone();
        // A person edits issue 1 (before the cursor) and trashes issue 3:
        // both move to the end; the next page goes on after the cursor.
        let before = st.issue(&ids[1]).unwrap().updated_ms;
        st.person_edit(&ids[1], json!({"title": "issue 1 edited"})).unwrap();
        assert!(st.issue(&ids[1]).unwrap().updated_ms > before, "updatedAt moved");
        st.person_trash(&ids[3]).unwrap();
        let (_, _, v) = t.gql(list, json!({"f": f, "n": 10, "a": cursor})).await;
        assert_eq!(page(&v), ["issue 2", "issue 4", "issue 1 edited", "issue 3"]);
        assert_eq!(v["data"]["issues"]["nodes"][3]["trashed"], true);
        assert_eq!(v["data"]["issues"]["pageInfo"]["hasNextPage"], false);
        // updatedAt >= the edit's time: the edit and the trash only.
        let since = v["data"]["issues"]["nodes"][2]["updatedAt"].clone();
        let f2 = json!({"team": {"id": {"eq": team}}, "updatedAt": {"gte": since}});
        let (_, _, v) = t.gql(list, json!({"f": f2, "n": 10})).await;
        assert_eq!(page(&v), ["issue 1 edited", "issue 3"]);
        // An edit that changes nothing leaves updatedAt; a cursor not Linear's is refused.
        let at = st.issue(&ids[4]).unwrap().updated_ms;
        st.person_edit(&ids[4], json!({"title": "issue 4"})).unwrap();
        assert_eq!(st.issue(&ids[4]).unwrap().updated_ms, at);
        let (_, _, v) = t.gql(list, json!({"f": f, "n": 1, "a": "nonsense"})).await;
        assert!(v["errors"][0]["message"].as_str().unwrap().contains("Invalid cursor"), "{v}");
        assert_eq!(t.em.stats().writes, 0, "a person's changes are not the API's writes");
    }

    #[tokio::test]
    async fn rate_limits_show_in_headers_and_refuse_with_ratelimited() {
        let config = EmulatorConfig {
            requests_limit: Some(3),
            complexity_limit: Some(1000),
            period_secs: 60.0,
            ..Default::default()
        };
        let t = T::new(config).await;
        for i in 0..3 {
            let (s, h, _) = t.gql("{ viewer { id } }", json!({})).await;
            assert_eq!(s, 200);
            assert_eq!(h["x-ratelimit-requests-limit"], "3");
            assert_eq!(h["x-ratelimit-requests-remaining"].to_str().unwrap(), (2 - i).to_string());
            let reset: i64 = h["x-ratelimit-requests-reset"].to_str().unwrap().parse().unwrap();
            assert!(reset > jiff::Timestamp::now().as_millisecond() - 1000, "epoch ms");
            assert!(h.contains_key("x-ratelimit-complexity-remaining"));
        }
        let (s, h, v) = t.gql("{ viewer { id } }", json!({})).await;
        assert_eq!(s, 429);
        assert_eq!(v["errors"][0]["extensions"]["code"], "RATELIMITED");
        assert_eq!(v["errors"][0]["extensions"]["type"], "ratelimited");
        assert!(h["retry-after"].to_str().unwrap().parse::<u64>().unwrap() >= 1);
        assert_eq!(t.em.stats().throttled, 1);
        // A query above the single-query limit.
        let t = T::new(EmulatorConfig { max_query_complexity: 100, ..Default::default() }).await;
        let (s, _, v) = t.gql("{ issues(first: 250) { nodes { id title } } }", json!({})).await;
        assert_eq!(s, 400);
        assert_eq!(v["errors"][0]["extensions"]["code"], "QUERY_TOO_COMPLEX");
    }
}
