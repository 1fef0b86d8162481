//! Linear issues through Linear's GraphQL API.
//!
//! - Auth: a personal API key, sent in `Authorization` as it is (Linear
//!   takes no `Bearer` for API keys); never logged, redacted from every
//!   message.
//! - Identity: each row's issue has an id syncbridge chooses, a UUID
//!   (version 4 in form) derived from the team, the definition and the
//!   row's key ([`issue_id`]); `IssueCreateInput.id` takes it. A create
//!   whose answer was lost is found by that id (`issues(filter: {id: {in:
//!   …}}, includeArchived: true)`) and adopted, never made twice; a create
//!   Linear refuses because the id exists (a lost answer, or a row deleted
//!   and inserted again whose issue is in the trash) looks the issue up and
//!   updates it instead (restoring it from the trash).
//! - Writes: every export of a claim goes in ONE GraphQL document of
//!   aliased mutations (`issueCreate`, `issueUpdate`, `issueDelete` or
//!   `issueArchive`), run by Linear in order; an error names its alias (its
//!   `path`), every alias without one ran. Deletes that share an input go
//!   together as one `issueBatchUpdate` (`trashed: true`, at most 50 ids)
//!   when the target deletes to the trash. A document Linear refuses whole
//!   (a validation error: nothing ran) is split and each export sent alone;
//!   only an export refused alone is `definite`.
//! - Values: see [`fields`]; states, labels and assignees by name, resolved
//!   through the team's metadata (read once, again when a name is missing;
//!   labels that do not exist are created).
//! - Pacing: the shared budget (complexity points a minute, config
//!   `budget_per_min`) plus Linear's own headers: before each request the
//!   request and complexity buckets as last seen (`x-ratelimit-*-remaining`
//!   refilling towards `*-reset`) must hold it; a `RATELIMITED` answer (429
//!   or an error of type `ratelimited`) pauses every request of the target
//!   for its `retry-after`.

mod client;
pub mod fields;
mod pull;

use std::collections::HashMap;
use std::sync::Mutex;

use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};

use super::http::{Budget, Failure, HttpClient, HttpSettings, MAX_TIMEOUT_MS};
use super::{
    ApplyContext, BoxFuture, ErrorClass, Export, Health, Op, OpResult, PullError, PullPage, PullRequest, Target,
    TargetPolicy, TargetSetupError,
};
use client::{classify, error_message, error_type, Answer, Gql, Limits};
use fields::{Meta, Wanted};

/// Exports per claim: one document of at most this many mutations
/// (`issueBatchUpdate` takes at most 50 ids).
pub const BATCH_LIMIT: usize = 50;
/// Complexity points a write costs, as syncbridge prices it (a mutation
/// selecting `success` and the issue's `updatedAt` costs about 2.2;
/// lookups and metadata come on top).
pub const COST_PER_WRITE: u32 = 3;
/// Complexity points of a single read.
pub const COST_PER_READ: u32 = 1;
/// The default budget in complexity points a minute: 250,000 an hour
/// (the lower of the figures published for API keys).
pub const DEFAULT_BUDGET_PER_MIN: u32 = 4000;
/// Linear's endpoint.
pub const DEFAULT_BASE_URL: &str = "https://api.linear.app/graphql";
/// Rounds of sends for one claim (lost answers, refused documents split).
const ROUNDS: u32 = 4;

/// SHA-256 of length-prefixed parts.
fn digest(parts: &[&str]) -> [u8; 32] {
    let mut h = Sha256::new();
    for part in parts {
        h.update((part.len() as u64).to_be_bytes());
        h.update(part.as_bytes());
    }
    h.finalize().into()
}

/// The first 18 characters (`xxxxxxxx-xxxx-4xxx`) of every id syncbridge
/// makes for `definition` on `team_id`: 8 hex digits all of syncbridge's
/// ids share, then 7 of the team and definition.
fn id_prefix(team_id: &str, definition: &str) -> String {
    let magic = digest(&["syncbridge/linear/v2"]);
    let def = digest(&["syncbridge/linear/v2/definition", team_id, definition]);
    let b = [magic[0], magic[1], magic[2], magic[3], def[0], def[1], (def[2] & 0x0f) | 0x40, def[3]];
    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!("{}-{}-{}", &hex[..8], &hex[8..12], &hex[12..16])
}

/// The issue id of a row: a UUID in version-4 form whose first half tells
/// syncbridge's issues and their definition ([`owner`]) and whose second
/// half is SHA-256 of the team, the definition and the key, so the same
/// row always has the same issue and a retried create finds the first one
/// (the key cannot be read back from it: the ledger knows it).
pub fn issue_id(team_id: &str, definition: &str, key: &str) -> String {
    let d = digest(&["syncbridge/linear/v2/key", team_id, definition, key]);
    let mut b = [0u8; 8];
    b.copy_from_slice(&d[..8]);
    b[0] = (b[0] & 0x3f) | 0x80;
    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!("{}-{}-{}", id_prefix(team_id, definition), &hex[..4], &hex[4..])
}

/// Whose an issue is, by its id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Owner {
    /// syncbridge made it for this definition.
    This,
    /// syncbridge made it for another definition.
    Other,
    /// Made in Linear (by a person, or another tool).
    Person,
}

/// Whose issue `id` is, seen from `definition` on `team_id`. (A random
/// id has one chance in 2^32 to look like syncbridge's.)
pub fn owner(team_id: &str, definition: &str, id: &str) -> Owner {
    let id = id.to_ascii_lowercase();
    let prefix = id_prefix(team_id, definition);
    if id.starts_with(&prefix) {
        Owner::This
    } else if id.get(..9) == prefix.get(..9) {
        Owner::Other
    } else {
        Owner::Person
    }
}

/// What a delete does on Linear (config `on_delete`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnDelete {
    /// `issueDelete`: to the trash (30 days, then gone).
    Trash,
    /// `issueArchive`.
    Archive,
}

/// A Linear target's checked configuration.
#[derive(Debug, Clone)]
pub struct LinearSettings {
    name: String,
    base_url: String,
    team_id: String,
    budget: u32,
    timeout_ms: u64,
    on_delete: OnDelete,
    https_only: bool,
}

fn cfg_str<'a>(config: &'a Value, key: &str) -> Option<&'a str> {
    config.get(key).and_then(Value::as_str).filter(|s| !s.is_empty())
}

impl LinearSettings {
    /// Checks a target's configuration (the URL against the worker's
    /// policy: Linear's own endpoint is allowed) before any secret is read.
    pub fn from_config(name: &str, config: &Value, policy: &TargetPolicy) -> Result<Self, TargetSetupError> {
        let bad = |message: String| TargetSetupError::Config { target: name.to_owned(), message };
        let team_id = cfg_str(config, "team_id").ok_or_else(|| bad("config lacks team_id".into()))?.to_owned();
        let base_url = cfg_str(config, "base_url").unwrap_or(DEFAULT_BASE_URL).trim_end_matches('/').to_owned();
        let url = if base_url == DEFAULT_BASE_URL {
            reqwest::Url::parse(DEFAULT_BASE_URL).map_err(|e| bad(e.to_string()))?
        } else {
            policy.check_url("base_url", &base_url).map_err(bad)?
        };
        let budget = config
            .get("budget_per_min")
            .and_then(Value::as_f64)
            .filter(|b| b.is_finite())
            .map(|b| b.clamp(1.0, f64::from(u32::MAX)) as u32)
            .unwrap_or(DEFAULT_BUDGET_PER_MIN);
        let timeout_ms = config.get("timeout_ms").and_then(Value::as_u64).unwrap_or(30_000).clamp(1, MAX_TIMEOUT_MS);
        let on_delete = match cfg_str(config, "on_delete").unwrap_or("trash") {
            "trash" => OnDelete::Trash,
            "archive" => OnDelete::Archive,
            other => return Err(bad(format!("on_delete is trash or archive, not {other}"))),
        };
        Ok(Self {
            name: name.to_owned(),
            base_url,
            team_id,
            budget,
            timeout_ms,
            on_delete,
            https_only: url.scheme() == "https",
        })
    }
}

/// The Linear adapter for one target.
pub struct LinearTarget {
    client: HttpClient,
    team_id: String,
    on_delete: OnDelete,
    limits: Mutex<Limits>,
    meta: tokio::sync::Mutex<Option<Meta>>,
}

impl std::fmt::Debug for LinearTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LinearTarget").field("name", &self.client.name).field("team_id", &self.team_id).finish()
    }
}

/// An error body (Linear's `errors[0]`): its code and message.
fn linear_envelope(body: &Value) -> Option<(String, String)> {
    let e = body.get("errors")?.as_array()?.first()?;
    let code = e
        .pointer("/extensions/code")
        .and_then(Value::as_str)
        .or_else(|| e.pointer("/extensions/type").and_then(Value::as_str))?;
    Some((code.to_owned(), e.get("message").and_then(Value::as_str).unwrap_or("").to_owned()))
}

/// What one export does in this round.
#[derive(Debug, Clone, PartialEq)]
enum Step {
    /// `issueCreate` with the row's id.
    Create,
    /// `issueUpdate` (`restore`: also out of the trash / archive).
    Update { restore: bool },
    /// `issueDelete` / `issueArchive`.
    Delete,
}

#[derive(Debug)]
struct Job<'a> {
    e: &'a Export,
    id: String,
    step: Step,
    wanted: Vec<Wanted>,
    /// Look the issue up before the next send.
    look: bool,
    /// Its own document (a shared one was refused).
    alone: bool,
    /// Sends whose outcome stayed unknown (in this apply: the same input).
    tries: u32,
    /// The issue's `updatedAt` as the ledger knows it (two-way
    /// definitions): checked before the first send.
    expect: Option<String>,
}

/// The outcome of looking ids up.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Found {
    Missing,
    Live,
    /// Trashed or archived.
    Gone,
}

impl LinearTarget {
    /// Builds the adapter from the checked configuration and the API key.
    pub fn new(
        settings: LinearSettings,
        api_key: String,
        shutdown: Option<tokio::sync::watch::Receiver<bool>>,
    ) -> Result<Self, TargetSetupError> {
        let LinearSettings { name, base_url, team_id, budget, timeout_ms, on_delete, https_only } = settings;
        // A burst of one full document of writes.
        let budget = Budget::new(budget, BATCH_LIMIT as u32 * COST_PER_WRITE, None, 1);
        // No token endpoint: the key is the credential (and redacted as the secret).
        let auth = super::http::Auth::Fixed { header: api_key.clone(), secret: api_key };
        let http =
            HttpSettings { name, service: "Linear", base_url, timeout_ms, https_only, envelope: linear_envelope };
        Ok(Self {
            client: HttpClient::new(http, auth, budget, shutdown)?,
            team_id,
            on_delete,
            limits: Mutex::new(Limits::default()),
            meta: tokio::sync::Mutex::new(None),
        })
    }

    fn gql(&self) -> Gql<'_> {
        Gql { client: &self.client, limits: &self.limits }
    }

    /// The team's states, labels and users (cached; `refresh` reads them again).
    async fn meta(&self, refresh: bool) -> Result<Meta, Failure> {
        let mut guard = self.meta.lock().await;
        if let Some(m) = guard.as_ref().filter(|_| !refresh) {
            return Ok(m.clone());
        }
        const Q: &str = "query SyncbridgeTeam($team: String!) { team(id: $team) { id states(first: 100) { nodes { id name type } } labels(first: 100) { nodes { id name } } } users(first: 50) { nodes { id name displayName email } } }";
        let a = self.gql().post(Q, json!({"team": self.team_id}), 600, 0, true).await?;
        if let Some(e) = a.errors().first() {
            return Err(Failure {
                class: classify(e),
                message: format!("reading team {}: {}", self.team_id, error_message(e)),
                retry_after: None,
                sent: false,
            });
        }
        let nodes = |p: &str| a.body.pointer(p).and_then(Value::as_array).cloned().unwrap_or_default();
        let s = |v: &Value, k: &str| v.get(k).and_then(Value::as_str).unwrap_or("").to_owned();
        let mut m = Meta { team_uuid: s(&a.body["data"]["team"], "id"), ..Meta::default() };
        for st in nodes("/data/team/states/nodes") {
            m.states.push((s(&st, "id"), s(&st, "name"), s(&st, "type")));
        }
        for l in nodes("/data/team/labels/nodes") {
            m.labels.insert(s(&l, "name").to_lowercase(), s(&l, "id"));
            m.label_names.insert(s(&l, "id"), s(&l, "name"));
        }
        for u in nodes("/data/users/nodes") {
            let id = s(&u, "id");
            for k in ["email", "name", "displayName", "id"] {
                let v = s(&u, k).to_lowercase();
                if !v.is_empty() {
                    m.users.entry(v).or_insert_with(|| id.clone());
                }
            }
        }
        *guard = Some(m.clone());
        Ok(m)
    }

    /// The team's id as inputs (`teamId`) take it: the one Linear gave
    /// for the configured id or key, else the configured value.
    fn team_of(&self, meta: &Meta) -> String {
        if meta.team_uuid.is_empty() {
            self.team_id.clone()
        } else {
            meta.team_uuid.clone()
        }
    }

    /// Creates the labels the exports name that the team lacks (one
    /// document), then reads the metadata again.
    async fn ensure_labels(&self, names: &[String], team: &str) -> Result<Meta, Failure> {
        let mut q = String::from("mutation SyncbridgeLabels(");
        let mut sel = String::new();
        let mut vars = Map::new();
        for (i, n) in names.iter().enumerate() {
            q.push_str(&format!("$l{i}: IssueLabelCreateInput!, "));
            sel.push_str(&format!(" l{i}: issueLabelCreate(input: $l{i}) {{ success }}"));
            vars.insert(format!("l{i}"), json!({"name": n, "teamId": team}));
        }
        q.push_str(") {");
        q.push_str(&sel);
        q.push_str(" }");
        let cost = (names.len() as u32) * COST_PER_WRITE;
        // A label created by a lost answer, or by someone else meanwhile,
        // is refused as a duplicate: reading the metadata again finds it.
        let a = self.gql().post(&q, Value::Object(vars), cost, 0, true).await;
        let meta = self.meta(true).await?;
        let still_missing = names.iter().any(|n| !meta.labels.contains_key(&n.to_lowercase()));
        match a {
            Err(f) if f.class != ErrorClass::Transient => Err(f),
            // Linear refused a label the team still lacks: its message.
            Ok(answer) if still_missing && !answer.errors().is_empty() => {
                let e = &answer.errors()[0];
                Err(Failure {
                    class: classify(e),
                    message: format!("creating the team's labels: {}", error_message(e)),
                    retry_after: None,
                    sent: true,
                })
            }
            _ => Ok(meta),
        }
    }

    /// Which of `ids` exist, whether in the trash or archived, and their
    /// `updatedAt` (the eTag).
    async fn look_up(&self, ids: &[String]) -> Result<HashMap<String, (Found, Option<String>)>, Failure> {
        const Q: &str = "query SyncbridgeLookUp($ids: [ID!], $n: Int) { issues(first: $n, includeArchived: true, filter: {id: {in: $ids}}) { nodes { id trashed archivedAt updatedAt } } }";
        let n = ids.len().max(1);
        let cost = (n as f64 * 2.4 + 1.0).ceil() as u32;
        let a = self.gql().post(Q, json!({"ids": ids, "n": n}), cost, 0, true).await?;
        if let Some(e) = a.errors().first() {
            return Err(Failure { class: classify(e), message: error_message(e), retry_after: None, sent: false });
        }
        let mut out: HashMap<String, (Found, Option<String>)> =
            ids.iter().map(|i| (i.clone(), (Found::Missing, None))).collect();
        for node in a.body.pointer("/data/issues/nodes").and_then(Value::as_array).into_iter().flatten() {
            let Some(id) = node.get("id").and_then(Value::as_str) else { continue };
            let gone = node.get("trashed").and_then(Value::as_bool) == Some(true)
                || node.get("archivedAt").is_some_and(|v| !v.is_null());
            let updated = node.get("updatedAt").and_then(Value::as_str).map(str::to_owned);
            out.insert(id.to_owned(), (if gone { Found::Gone } else { Found::Live }, updated));
        }
        Ok(out)
    }

    /// Carries out item exports: rounds of one document each.
    async fn apply_items(&self, exports: &[&Export]) -> Vec<OpResult> {
        let mut results = Vec::new();
        let mut jobs: Vec<Job<'_>> = Vec::new();
        for e in exports {
            let key = e.sync_key.clone().unwrap_or_default();
            let id = e.target_id.clone().unwrap_or_else(|| issue_id(&self.team_id, &e.definition, &key));
            let (step, create) = match e.op {
                Op::Add => (Step::Create, true),
                Op::Update | Op::Move => (Step::Update { restore: false }, false),
                Op::Delete => (Step::Delete, false),
                Op::Provision | Op::Disable => {
                    results.push(OpResult::failed(
                        e.id,
                        ErrorClass::Definite,
                        format!(
                            "a linear target cannot {} (teams exist already; issues are not disabled)",
                            e.op.as_str()
                        ),
                        false,
                    ));
                    continue;
                }
            };
            // SyncKey (written back to an issue made in Linear once its row
            // exists): the ledger knows the issue by its id; nothing to write.
            let mut payload = e.payload.clone().unwrap_or(Value::Null);
            if let Some(o) = payload.as_object_mut() {
                o.remove("SyncKey");
            }
            if step == (Step::Update { restore: false }) && payload.as_object().is_none_or(Map::is_empty) {
                results.push(OpResult { target_id: Some(id), etag: e.etag.clone(), ..OpResult::ok(e.id) });
                continue;
            }
            let wanted = if step == Step::Delete {
                Vec::new()
            } else {
                match fields::wanted(&payload, create) {
                    Ok(w) => w,
                    Err(msg) => {
                        results.push(OpResult::failed(e.id, ErrorClass::Definite, msg, false));
                        continue;
                    }
                }
            };
            // An earlier attempt may have created it.
            let look = e.verify && step == Step::Create;
            // Two-way definitions: Linear has no If-Match; the issue's
            // updatedAt is compared with the ledger's before it is written.
            let expect = e.etag.clone().filter(|_| step != Step::Create);
            jobs.push(Job { e, id, step, wanted, look, alone: false, tries: 0, expect });
        }
        if jobs.is_empty() {
            return results;
        }
        let mut meta = match self.meta(false).await {
            Ok(m) => m,
            Err(f) => {
                results.extend(jobs.iter().map(|j| f.to_result(j.e.id)));
                return results;
            }
        };
        let missing = fields::missing_labels(jobs.iter().flat_map(|j| j.wanted.iter()), &meta);
        if !missing.is_empty() {
            match self.ensure_labels(&missing, &self.team_of(&meta)).await {
                Ok(m) => meta = m,
                Err(f) => {
                    results.extend(jobs.iter().map(|j| f.to_result(j.e.id)));
                    return results;
                }
            }
        }
        // Inputs: every name resolved (a value Linear cannot take is definite).
        let mut inputs: HashMap<i64, Map<String, Value>> = HashMap::new();
        jobs.retain(|j| match fields::input(&j.wanted, &meta) {
            Ok(mut m) => {
                if j.step == Step::Create {
                    m.insert("teamId".into(), Value::String(self.team_of(&meta)));
                }
                inputs.insert(j.e.id, m);
                true
            }
            Err(msg) => {
                results.push(OpResult::failed(j.e.id, ErrorClass::Definite, msg, false));
                false
            }
        });
        self.check_unchanged(&mut jobs, &mut results).await;
        for round in 0..ROUNDS {
            if jobs.is_empty() {
                break;
            }
            // Look up what may exist already.
            let looking: Vec<String> = jobs.iter().filter(|j| j.look).map(|j| j.id.clone()).collect();
            if !looking.is_empty() {
                match self.look_up(&looking).await {
                    Ok(found) => {
                        let mut keep = Vec::new();
                        for mut j in jobs.drain(..) {
                            if !j.look {
                                keep.push(j);
                                continue;
                            }
                            j.look = false;
                            let (state, updated) = found.get(&j.id).cloned().unwrap_or((Found::Missing, None));
                            match (state, &j.step) {
                                (Found::Missing, Step::Delete) => results.push(self.done(&j, None)),
                                (Found::Missing, _) => {
                                    j.step = Step::Create;
                                    keep.push(j);
                                }
                                (Found::Gone, Step::Delete) => results.push(self.done(&j, None)),
                                (Found::Gone, _) => {
                                    j.step = Step::Update { restore: true };
                                    keep.push(j);
                                }
                                // Our own send of this input ran: done.
                                (Found::Live, Step::Create) if j.tries > 0 => results.push(self.done(&j, updated)),
                                (Found::Live, Step::Create) => {
                                    tracing::info!(target = %self.client.name, definition = %j.e.definition, "adopting the issue an earlier create made");
                                    j.step = Step::Update { restore: false };
                                    keep.push(j);
                                }
                                (Found::Live, _) => keep.push(j),
                            }
                        }
                        jobs = keep;
                    }
                    Err(f) => {
                        let (l, rest): (Vec<_>, Vec<_>) = jobs.drain(..).partition(|j| j.look);
                        results.extend(l.iter().map(|j| OpResult { ..f.to_result(j.e.id) }));
                        jobs = rest;
                        if jobs.is_empty() {
                            break;
                        }
                    }
                }
            }
            if jobs.is_empty() {
                break;
            }
            // Jobs that must go alone go one per document; the others together.
            let (alone, shared): (Vec<_>, Vec<_>) = jobs.drain(..).partition(|j| j.alone);
            let mut groups: Vec<Vec<Job<'_>>> = alone.into_iter().map(|j| vec![j]).collect();
            if !shared.is_empty() {
                groups.push(shared);
            }
            for group in groups {
                let (done, again) = self.send(group, &inputs, round + 1 == ROUNDS).await;
                results.extend(done);
                jobs.extend(again);
            }
        }
        for j in jobs {
            results.push(OpResult::failed(
                j.e.id,
                ErrorClass::Transient,
                "Linear's answers were lost too often; the outcome is looked up on the next attempt",
                true,
            ));
        }
        results
    }

    /// A success; `etag`: the issue's `updatedAt` after the write.
    fn done(&self, j: &Job<'_>, etag: Option<String>) -> OpResult {
        let target_id = (j.step != Step::Delete).then(|| j.id.clone());
        OpResult { target_id, etag: etag.filter(|_| j.step != Step::Delete), ..OpResult::ok(j.e.id) }
    }

    /// Two-way definitions: an issue whose `updatedAt` is not the one the
    /// ledger holds changed in Linear since syncbridge last wrote or read
    /// it; its write waits (class `conflict`, as a 412 to `If-Match`) and
    /// the change is pulled and decided first. One look-up for the claim.
    async fn check_unchanged(&self, jobs: &mut Vec<Job<'_>>, results: &mut Vec<OpResult>) {
        let ids: Vec<String> = jobs.iter().filter(|j| j.expect.is_some()).map(|j| j.id.clone()).collect();
        if ids.is_empty() {
            return;
        }
        let found = match self.look_up(&ids).await {
            Ok(f) => f,
            Err(f) => {
                let (checked, rest): (Vec<_>, Vec<_>) = jobs.drain(..).partition(|j| j.expect.is_some());
                results.extend(checked.iter().map(|j| f.to_result(j.e.id)));
                *jobs = rest;
                return;
            }
        };
        let norm = |s: &str| s.trim().trim_matches('"').to_ascii_lowercase();
        jobs.retain(|j| {
            let Some(expect) = j.expect.as_deref() else { return true };
            match found.get(&j.id) {
                // Gone already: what a delete wants; an update creates it again.
                Some((Found::Missing, _)) | None => true,
                Some((_, Some(now))) if norm(now) == norm(expect) => true,
                Some((_, now)) => {
                    tracing::info!(target = %self.client.name, definition = %j.e.definition,
                        "the issue changed in Linear since it was last synced: its change is pulled first");
                    results.push(OpResult::failed(
                        j.e.id,
                        ErrorClass::Conflict,
                        format!(
                            "the issue changed in Linear (updatedAt {}, the ledger has {}): its change is pulled and decided first",
                            now.as_deref().unwrap_or("unknown"),
                            expect
                        ),
                        false,
                    ));
                    false
                }
            }
        });
    }

    /// Sends one document for `group`; returns the results and the jobs to
    /// send again (looked up first when the outcome is unknown).
    async fn send<'a>(
        &self,
        group: Vec<Job<'a>>,
        inputs: &HashMap<i64, Map<String, Value>>,
        last_round: bool,
    ) -> (Vec<OpResult>, Vec<Job<'a>>) {
        let mut defs = Vec::new();
        let mut sel = Vec::new();
        let mut vars = Map::new();
        // Deletes to the trash share one input: one issueBatchUpdate.
        let batch_deletes: Vec<usize> = if self.on_delete == OnDelete::Trash {
            group.iter().enumerate().filter(|(_, j)| j.step == Step::Delete).map(|(i, _)| i).collect()
        } else {
            Vec::new()
        };
        let batched = batch_deletes.len() > 1;
        for (i, j) in group.iter().enumerate() {
            let mut input = inputs.get(&j.e.id).cloned().unwrap_or_default();
            match &j.step {
                Step::Create => {
                    input.insert("id".into(), Value::String(j.id.clone()));
                    defs.push(format!("$v{i}: IssueCreateInput!"));
                    sel.push(format!("j{i}: issueCreate(input: $v{i}) {{ success issue {{ updatedAt }} }}"));
                    vars.insert(format!("v{i}"), Value::Object(input));
                }
                Step::Update { restore } => {
                    if *restore {
                        input.insert("trashed".into(), Value::Bool(false));
                    }
                    defs.push(format!("$i{i}: String!, $v{i}: IssueUpdateInput!"));
                    sel.push(format!("j{i}: issueUpdate(id: $i{i}, input: $v{i}) {{ success issue {{ updatedAt }} }}"));
                    vars.insert(format!("i{i}"), Value::String(j.id.clone()));
                    vars.insert(format!("v{i}"), Value::Object(input));
                    if *restore {
                        // An archived issue comes back too.
                        defs.push(format!("$u{i}: String!"));
                        sel.insert(sel.len() - 1, format!("u{i}: issueUnarchive(id: $u{i}) {{ success }}"));
                        vars.insert(format!("u{i}"), Value::String(j.id.clone()));
                    }
                }
                Step::Delete if batched => {}
                Step::Delete => {
                    defs.push(format!("$i{i}: String!"));
                    let m = if self.on_delete == OnDelete::Trash { "issueDelete" } else { "issueArchive" };
                    sel.push(format!("j{i}: {m}(id: $i{i}) {{ success }}"));
                    vars.insert(format!("i{i}"), Value::String(j.id.clone()));
                }
            }
        }
        if batched {
            defs.push("$dIds: [UUID!]!".into());
            sel.push("d: issueBatchUpdate(ids: $dIds, input: {trashed: true}) { success }".into());
            vars.insert("dIds".into(), json!(batch_deletes.iter().map(|i| group[*i].id.clone()).collect::<Vec<_>>()));
        }
        let query = format!("mutation SyncbridgeWrite({}) {{ {} }}", defs.join(", "), sel.join(" "));
        // 1.1 a payload selecting `success`; 1.1 more with the issue's updatedAt.
        let cost = sel.iter().map(|s| if s.contains("issue {") { 2.2 } else { 1.1 }).sum::<f64>().ceil() as u32;
        let writes = group.len() as u32;
        let answer = self.gql().post(&query, Value::Object(vars), cost, writes, false).await;
        let mut done = Vec::new();
        let mut again = Vec::new();
        let answer: Answer = match answer {
            Ok(a) => a,
            Err(f) if f.sent => {
                // It may have run: creates are looked up, the rest sent again.
                for mut j in group {
                    j.tries += 1;
                    if last_round {
                        done.push(f.to_result(j.e.id));
                    } else {
                        j.look = matches!(j.step, Step::Create | Step::Update { restore: true });
                        again.push(j);
                    }
                }
                return (done, again);
            }
            Err(f) => {
                done.extend(group.iter().map(|j| f.to_result(j.e.id)));
                return (done, again);
            }
        };
        let refused = answer.document_errors();
        if !refused.is_empty() || (answer.body.get("data").is_none() && answer.errors().is_empty()) {
            // Nothing ran. Alone: the export's own fault; together: split.
            let msg = refused.first().map(|e| self.client.redact(&error_message(e))).unwrap_or_default();
            let class = refused.first().map(|e| classify(e)).unwrap_or(ErrorClass::Transient);
            if group.len() == 1 || class != ErrorClass::Definite {
                for j in &group {
                    let m = format!("Linear refused the request (HTTP {}): {msg}", answer.status);
                    done.push(OpResult::failed(j.e.id, class, m, false));
                }
            } else {
                tracing::warn!(target = %self.client.name, exports = group.len(), "Linear refused a document: sending each export alone");
                for mut j in group {
                    j.alone = true;
                    again.push(j);
                }
            }
            return (done, again);
        }
        let data = answer.body.get("data").cloned().unwrap_or(Value::Null);
        let batch_error = if batched { answer.error_of("d").cloned() } else { None };
        for (i, mut j) in group.into_iter().enumerate() {
            let key = if batched && j.step == Step::Delete { "d".to_owned() } else { format!("j{i}") };
            let err = if key == "d" { batch_error.clone() } else { answer.error_of(&key).cloned() };
            let restore_err =
                answer.error_of(&format!("u{i}")).filter(|e| !error_message(e).contains("not archived")).cloned();
            if let Some(e) = err.or(restore_err.filter(|e| error_type(e) != "invalid input")) {
                let msg = self.client.redact(&error_message(&e));
                let not_found = msg.contains("Entity not found") || msg.contains("not found");
                match (&j.step, classify(&e)) {
                    // Already gone: what a delete wants.
                    (Step::Delete, ErrorClass::Definite) if not_found => done.push(self.done(&j, None)),
                    // The batch of deletes failed on one of them: each alone.
                    (Step::Delete, _) if key == "d" && !j.alone => {
                        j.alone = true;
                        again.push(j);
                    }
                    // The id exists (a lost answer, or a row back after a delete).
                    (Step::Create, ErrorClass::Definite) if msg.contains("already exists") && !last_round => {
                        j.look = true;
                        again.push(j);
                    }
                    (_, class) => done.push(OpResult::failed(j.e.id, class, msg, false)),
                }
                continue;
            }
            let answered = data.is_null() || data.get(&key).is_some();
            if answered {
                // No error for it: it ran (a null `data` is another field's
                // error); its eTag is the updatedAt the answer gives.
                let etag = data.pointer(&format!("/{key}/issue/updatedAt")).and_then(Value::as_str).map(str::to_owned);
                done.push(self.done(&j, etag));
            } else if last_round {
                done.push(OpResult::failed(j.e.id, ErrorClass::Transient, "Linear's answer lacks this export", true));
            } else {
                // Not answered: unknown whether it ran.
                j.tries += 1;
                j.look = matches!(j.step, Step::Create | Step::Update { restore: true });
                again.push(j);
            }
        }
        (done, again)
    }
}

impl Target for LinearTarget {
    fn batch_size(&self) -> usize {
        BATCH_LIMIT
    }

    fn capabilities(&self) -> &'static super::registry::Capabilities {
        &super::registry::LINEAR_CAPABILITIES
    }

    fn probe(&self) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(async move {
            let authorization = self.client.authorization(false).await.map_err(|f| f.message)?;
            let r = self
                .client
                .http
                .post(&self.client.base_url)
                .header(reqwest::header::AUTHORIZATION, authorization)
                .json(&json!({"query": "query SyncbridgeProbe { viewer { id } }"}))
                .send()
                .await;
            match r {
                Err(e) => Err(self.client.redact(&format!("Linear unreachable: {}", super::http::without_url(&e)))),
                Ok(r) if r.status().is_server_error() => Err(format!("Linear answered {}", r.status().as_u16())),
                Ok(_) => {
                    self.client.set_health(Health::Ok, "");
                    Ok(())
                }
            }
        })
    }

    fn apply<'a>(&'a self, exports: &'a [Export], _context: &'a ApplyContext) -> BoxFuture<'a, Vec<OpResult>> {
        Box::pin(async move {
            let items: Vec<&Export> = exports.iter().collect();
            let mut results = self.apply_items(&items).await;
            self.client.settle(&mut results);
            results
        })
    }

    fn health(&self) -> (Health, String) {
        self.client.health()
    }

    fn pull<'a>(&'a self, request: &'a PullRequest) -> BoxFuture<'a, Result<PullPage, PullError>> {
        Box::pin(self.pull_page(request))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issue_ids_are_stable_v4_uuids_per_team_definition_and_key() {
        let a = issue_id("team", "def", "42");
        assert_eq!(a, issue_id("team", "def", "42"));
        assert_ne!(a, issue_id("team", "def", "43"));
        assert_ne!(a, issue_id("team", "def2", "42"));
        assert_ne!(issue_id("team", "de", "f42"), issue_id("team", "def", "42"), "parts are length-prefixed");
        let b = a.as_bytes();
        assert_eq!((b.len(), b[8], b[13], b[14], b[18], b[23]), (36, b'-', b'-', b'4', b'-', b'-'));
        assert!(matches!(b[19], b'8' | b'9' | b'a' | b'b'), "{a}");
        // The id tells syncbridge's issues and their definition, not the key.
        assert_eq!(owner("team", "def", &a), Owner::This);
        assert_eq!(owner("team", "def", &a.to_uppercase()), Owner::This);
        assert_eq!(owner("team", "def2", &a), Owner::Other);
        assert_eq!(owner("team2", "def", &a), Owner::Other);
        assert_eq!(owner("team", "def", "0f6b6c1e-9a41-4c2b-8d55-3a0e7a9b1c20"), Owner::Person);
        assert_eq!(owner("team", "def", "x"), Owner::Person);
        assert_eq!(issue_id("team", "def", "1")[..18], a[..18]);
    }

    #[test]
    fn configuration_is_checked_before_the_key_is_read() {
        let policy = TargetPolicy::default();
        let s = LinearSettings::from_config("x", &json!({"team_id": "t"}), &policy).unwrap();
        assert_eq!((s.base_url.as_str(), s.on_delete, s.https_only), (DEFAULT_BASE_URL, OnDelete::Trash, true));
        let e = LinearSettings::from_config(
            "x",
            &json!({"team_id": "t", "base_url": "http://127.0.0.1:9/graphql"}),
            &policy,
        )
        .unwrap_err();
        assert!(e.to_string().contains("--allow-loopback-targets"), "{e}");
        let e = LinearSettings::from_config("x", &json!({"team_id": "t", "on_delete": "burn"}), &policy).unwrap_err();
        assert!(e.to_string().contains("trash or archive"), "{e}");
        assert!(LinearSettings::from_config("x", &json!({}), &policy).is_err());
    }
}
