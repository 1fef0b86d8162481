//! SharePoint / Teams lists through Microsoft Graph.
//!
//! - Auth: OAuth2 client credentials against `{authority_url}/{tenant_id}/oauth2/v2.0/token`
//!   (scope `https://graph.microsoft.com/.default`); the token is refreshed five
//!   minutes before it expires, and at once when Graph answers 401.
//! - Writes go in JSON `$batch`es of at most 20 requests, every one fully
//!   parallel (Graph refuses a batch mixing `dependsOn` chains with
//!   independent requests); a move is a create in the new list, then, in a
//!   later batch once the create succeeded, the delete of the old item.
//! - Text columns get JSON strings only (numbers and booleans bound for one
//!   go out as their JSON text).
//! - A resource-unit rate limiter (GCRA, governor) spends at most the
//!   target's `budget_per_min` (default 1,250 RU/min: 2 RU per write, 1 per
//!   read), so a sustained run rarely meets a 429. `Retry-After` (429/503,
//!   also inside a `$batch`) pauses every request of this target.
//! - Envelope failures are retried here with capped exponential backoff and
//!   full jitter, but a `$batch` of writes whose outcome is unknown (5xx,
//!   timeout, connection lost after sending, a broken answer) is never sent
//!   again blindly: its creates are looked up by `SyncKey` first. A refused
//!   envelope (not 200) condemns no export it carried: it is split and each
//!   export sent alone. What still fails is classified per export
//!   (transient / throttled / auth / definite) for `sync.complete`.
//! - An export whose earlier attempt may have reached Graph (`verify`) looks
//!   its `SyncKey` up first and adopts the item instead of creating a twin.
//! - Hostile answers (issue 13): `base_url` / `authority_url` are checked
//!   against the worker's [`TargetPolicy`] before the secret is read;
//!   redirects are never followed; an error body is kept only as a JSON
//!   error envelope's code and message (Graph's `error.code` / `.message`,
//!   the token endpoint's `error` / `error_description`), bounded and passed
//!   through a [`Redactor`] that knows the secret and the tokens; a
//!   `Retry-After` that is not a finite, non-negative number is ignored and
//!   any pause is capped at [`MAX_PAUSE`] and cut short by shutdown; a
//!   token's lifetime is capped; bodies are read up to [`MAX_BODY`].

mod pull;

pub use pull::{check_link, MAX_PAGE_SIZE, RU_DELTA_FRESH, RU_DELTA_LINK};

use std::collections::HashMap;

use futures_util::StreamExt;
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use serde_json::{json, Map, Value};

use super::http::{
    backoff, retry_after_of, without_url, Budget, ClientCredentials, Cost, Failure, HttpClient, HttpSettings,
    ENVELOPE_ATTEMPTS, MAX_TIMEOUT_MS,
};
use super::policy::bounded;
use super::{
    ApplyContext, BoxFuture, ErrorClass, Export, Health, Op, OpResult, PullError, PullPage, PullRequest, Target,
    TargetPolicy, TargetSetupError,
};

/// Graph's `$batch` limit.
pub const BATCH_LIMIT: usize = 20;
/// Resource units of a write (create, update, delete).
pub const RU_WRITE: u32 = 2;
/// Resource units of a single read.
pub const RU_READ: u32 = 1;
/// Resource units of a filtered collection read.
pub const RU_QUERY: u32 = 2;
/// The default budget (a small tenant).
pub const DEFAULT_BUDGET_PER_MIN: u32 = 1250;
/// `$batch` requests in flight at once per target (config `max_concurrent_batches`, 1 to 16).
pub const DEFAULT_CONCURRENT_BATCHES: usize = 4;
/// Characters escaped in a URL path segment.
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'_').remove(b'.').remove(b'~');

/// A Graph target's checked configuration: what can be known before its
/// secret is read (URLs allowed by the worker's policy).
#[derive(Debug, Clone)]
pub struct GraphSettings {
    name: String,
    base_url: String,
    token_url: String,
    client_id: String,
    site: String,
    budget: u32,
    /// Config `writes_per_second`: a cap on write requests (none when unset).
    writes_per_second: Option<f64>,
    timeout_ms: u64,
    concurrency: usize,
    https_only: bool,
}

/// The Graph adapter for one target.
pub struct GraphTarget {
    /// Token, budget, retries, pauses, health (shared with every HTTP kind).
    client: HttpClient,
    site: String,
    /// `$batch` requests in flight at once.
    concurrency: usize,
}

impl std::fmt::Debug for GraphTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the secret or the token.
        f.debug_struct("GraphTarget").field("name", &self.client.name).field("base_url", &self.client.base_url).finish()
    }
}

/// Where an item export stands within one [`GraphTarget::apply_items`].
#[derive(Debug)]
enum Step {
    /// Its main request is due (a create, an adoption, an update, a delete;
    /// for a move, the create in the new list).
    Main,
    /// A move whose create succeeded (its result): the old item's delete is due.
    MoveDelete(Box<OpResult>),
}

impl Step {
    fn is_main(&self) -> bool {
        matches!(self, Step::Main)
    }
}

/// One item export on its way through the rounds of `$batch`es.
#[derive(Debug)]
struct Job<'a> {
    e: &'a Export,
    step: Step,
    /// The item found by SyncKey: adopted (fields written) instead of created.
    adopt: Option<String>,
    /// Look the SyncKey up before the next send (an earlier one may have created it).
    look: bool,
    /// A send of this job may have reached Graph without an answer.
    maybe_sent: bool,
    /// Its own `$batch` (a shared one was refused).
    alone: bool,
    /// Sends whose outcome stayed unknown, in this step.
    tries: u32,
}

/// After an answer: a result, or the job's next step.
enum Next<'a> {
    Done(Box<OpResult>),
    Again(Box<Job<'a>>),
}

/// Why a `$batch` gave no answers.
#[derive(Debug, Clone)]
enum BatchError {
    /// Graph answered the envelope with a status other than 200: none of
    /// its requests ran. `shape`: the refusal is about how the batch was
    /// put together (sequential and parallel requests mixed).
    Refused { shape: bool, message: String },
    /// Anything else (after the retries [`GraphTarget::call`] allows).
    Failed(Failure),
}

impl BatchError {
    /// As a plain failure: a refusal is transient (nothing ran, and it says
    /// nothing about any one request).
    fn into_failure(self) -> Failure {
        match self {
            BatchError::Failed(f) => f,
            BatchError::Refused { message, .. } => {
                Failure { class: ErrorClass::Transient, message, retry_after: None, sent: false }
            }
        }
    }
}

/// One response inside a `$batch` answer.
#[derive(Debug, Clone)]
struct Inner {
    status: u16,
    headers: Map<String, Value>,
    body: Value,
}

fn cfg_str<'a>(config: &'a Value, key: &str) -> Option<&'a str> {
    config.get(key).and_then(Value::as_str).filter(|s| !s.is_empty())
}

fn seg(s: &str) -> String {
    utf8_percent_encode(s, SEGMENT).to_string()
}

/// Graph's error envelope `{"error": {"code", "message"}}`: its code and
/// message, unbounded and unredacted (see [`GraphTarget::api_error`]). Any
/// other body, JSON or not, gives None: what a server that is not Graph
/// answers (a proxy's page, another service's reply) never goes further.
fn graph_envelope(body: &Value) -> Option<(String, String)> {
    let e = body.get("error")?.as_object()?;
    let code = e.get("code")?.as_str()?;
    let message = e.get("message").and_then(Value::as_str).unwrap_or("");
    Some((code.to_owned(), message.to_owned()))
}

/// The `$filter` query finding a list by display name: the name is an
/// OData string literal (an apostrophe doubled) and the whole filter is
/// percent-encoded, so no character of the name (`&`, `#`, `%27`, …) can
/// end the parameter or the literal.
fn list_filter_query(name: &str) -> String {
    let filter = format!("displayName eq '{}'", name.replace('\'', "''"));
    format!("?$filter={}", utf8_percent_encode(&filter, SEGMENT))
}

/// The write requests a request carries: those of a `$batch` that are not
/// GETs, else one unless it is a GET.
fn writes_in(method: &reqwest::Method, path: &str, body: Option<&Value>) -> u32 {
    if path.ends_with("$batch") {
        let reqs = body.and_then(|b| b.get("requests")).and_then(Value::as_array);
        reqs.map_or(0, |r| r.iter().filter(|q| q.get("method").and_then(Value::as_str) != Some("GET")).count() as u32)
    } else {
        u32::from(method != reqwest::Method::GET)
    }
}

/// The Graph column definition for a syncbridge field kind (see the README's
/// type mapping).
pub fn column_definition(col: &Value, lookup_list: Option<&str>) -> Result<Value, String> {
    let name = col.get("name").and_then(Value::as_str).ok_or("a column without a name")?;
    let kind = col.get("kind").and_then(Value::as_str).unwrap_or("text");
    let mut def = json!({ "name": name });
    if col.get("reference").and_then(Value::as_str).is_some() {
        let list = lookup_list.ok_or_else(|| format!("column {name}: the referenced list is not provisioned yet"))?;
        def["lookup"] = json!({ "listId": list, "columnName": "Title" });
    } else {
        match kind {
            "number" => def["number"] = json!({}),
            "boolean" => def["boolean"] = json!({}),
            "dateTime" => def["dateTime"] = json!({ "format": "dateTime" }),
            "date" => def["dateTime"] = json!({ "format": "dateOnly" }),
            "note" => def["text"] = json!({ "allowMultipleLines": true }),
            _ => def["text"] = json!({}),
        }
    }
    if col.get("indexed").and_then(Value::as_bool) == Some(true) {
        def["indexed"] = json!(true);
    }
    if col.get("hidden").and_then(Value::as_bool) == Some(true) {
        def["hidden"] = json!(true);
    }
    Ok(def)
}

/// The largest integer a number column (a double) holds exactly: 2^53 - 1.
pub const MAX_EXACT_INTEGER: u64 = (1 << 53) - 1;

/// Why a payload cannot be sent (yet).
#[derive(Debug, PartialEq)]
enum FieldError {
    /// A reference to a row not on the target yet: a later attempt.
    NotYet(String),
    /// A value its column cannot hold: never sent as it is (definite).
    Unfit(String),
}

/// The fields Graph receives for a payload: references become
/// `<Name>LookupId`; on a create, NULLs are left out; every value bound for
/// a text column (`Title`, text, note; `kinds`: the list's columns as
/// provisioned) is a JSON string: arrays and documents as their JSON text,
/// numbers and booleans too (a `jsonb` scalar such as `42`). A number
/// column gets numbers only, and none a double would round (sync.plan()
/// warns of the same values).
fn graph_fields(
    payload: &Value,
    create: bool,
    kinds: Option<&HashMap<String, String>>,
) -> Result<Map<String, Value>, FieldError> {
    let is_number = |k: &str| kinds.and_then(|m| m.get(k)).is_some_and(|kind| kind == "number");
    let is_text = |k: &str| {
        k.eq_ignore_ascii_case("Title")
            || kinds.and_then(|m| m.get(k)).is_some_and(|kind| kind == "text" || kind == "note")
    };
    let mut out = Map::new();
    let Some(obj) = payload.as_object() else {
        return Ok(out);
    };
    for (k, v) in obj {
        match v {
            Value::Object(r) if r.contains_key("@ref") => match r.get("target_id").and_then(Value::as_str) {
                Some(id) => {
                    out.insert(format!("{k}LookupId"), Value::String(id.to_owned()));
                }
                None => {
                    return Err(FieldError::NotYet(format!(
                        "field {k} refers to row {} of definition {}, which is not on the target yet",
                        r.get("@ref").map(Value::to_string).unwrap_or_default(),
                        r.get("@def").and_then(Value::as_str).unwrap_or("?")
                    )))
                }
            },
            Value::Null if create => {}
            Value::Number(n) if is_number(k) && !exact_in_double(n) => {
                return Err(FieldError::Unfit(format!(
                    "field {k} is {n}, which a SharePoint number column (a double) cannot hold exactly \
                     (integers up to 2^53 - 1): not sent, to not have it rounded; send it as text with a \
                     transform typed text (sync.map(..., transform => '<column>::text')) into a new field"
                )))
            }
            Value::String(v) if is_number(k) => {
                return Err(FieldError::Unfit(format!(
                    "field {k} is the text {}, which a SharePoint number column cannot hold: not sent",
                    bounded(v, 100)
                )))
            }
            // Arrays and JSON documents go into text (note) columns as JSON.
            Value::Array(_) | Value::Object(_) => {
                out.insert(k.clone(), Value::String(v.to_string()));
            }
            Value::Number(_) | Value::Bool(_) if is_text(k) => {
                out.insert(k.clone(), Value::String(v.to_string()));
            }
            other => {
                out.insert(k.clone(), other.clone());
            }
        }
    }
    Ok(out)
}

/// Whether a JSON number is held exactly by a double: integers within
/// ±(2^53 - 1), and every number that is already a double.
fn exact_in_double(n: &serde_json::Number) -> bool {
    match (n.as_u64(), n.as_i64()) {
        (Some(u), _) => u <= MAX_EXACT_INTEGER,
        (None, Some(i)) => i.unsigned_abs() <= MAX_EXACT_INTEGER,
        _ => true,
    }
}

impl GraphSettings {
    /// Checks a target's configuration: required keys, and `base_url` /
    /// `authority_url` against the worker's policy (before any secret is read).
    pub fn from_config(name: &str, config: &Value, policy: &TargetPolicy) -> Result<Self, TargetSetupError> {
        let bad = |message: String| TargetSetupError::Config { target: name.to_owned(), message };
        let need =
            |key: &str| cfg_str(config, key).map(str::to_owned).ok_or_else(|| bad(format!("config lacks {key}")));
        let tenant = need("tenant_id")?;
        let client_id = need("client_id")?;
        let site = need("site_id")?;
        let base_url = cfg_str(config, "base_url").unwrap_or("https://graph.microsoft.com/v1.0").trim_end_matches('/');
        let authority =
            cfg_str(config, "authority_url").unwrap_or("https://login.microsoftonline.com").trim_end_matches('/');
        let base = policy.check_url("base_url", base_url).map_err(bad)?;
        let auth = policy.check_url("authority_url", authority).map_err(bad)?;
        let budget = config
            .get("budget_per_min")
            .and_then(Value::as_f64)
            .filter(|b| b.is_finite())
            .map(|b| b.clamp(1.0, f64::from(u32::MAX)) as u32)
            .unwrap_or(DEFAULT_BUDGET_PER_MIN);
        let timeout_ms = config.get("timeout_ms").and_then(Value::as_u64).unwrap_or(30_000).clamp(1, MAX_TIMEOUT_MS);
        let writes_per_second =
            config.get("writes_per_second").and_then(Value::as_f64).filter(|w| w.is_finite() && *w > 0.0);
        let concurrency = config
            .get("max_concurrent_batches")
            .and_then(Value::as_u64)
            .map(|c| c.clamp(1, 16) as usize)
            .unwrap_or(DEFAULT_CONCURRENT_BATCHES);
        Ok(Self {
            name: name.to_owned(),
            base_url: base_url.to_owned(),
            token_url: format!("{authority}/{}/oauth2/v2.0/token", seg(&tenant)),
            client_id,
            site,
            budget,
            writes_per_second,
            timeout_ms,
            concurrency,
            https_only: base.scheme() == "https" && auth.scheme() == "https",
        })
    }
}

impl GraphTarget {
    /// Builds the adapter from the target's checked configuration and secret.
    pub fn new(
        settings: GraphSettings,
        secret: String,
        shutdown: Option<tokio::sync::watch::Receiver<bool>>,
    ) -> Result<Self, TargetSetupError> {
        let GraphSettings {
            name,
            base_url,
            token_url,
            client_id,
            site,
            budget,
            writes_per_second,
            timeout_ms,
            concurrency,
            https_only,
        } = settings;
        // A burst of one full batch of writes (at most half the budget; the
        // rate is what the burst leaves: pacing at the full budget drew 3.8%
        // 429s, Graph counting a sliding minute).
        let budget = Budget::new(budget, BATCH_LIMIT as u32 * RU_WRITE, writes_per_second, BATCH_LIMIT as u32);
        let auth = ClientCredentials::new(token_url, client_id, secret, "https://graph.microsoft.com/.default");
        let http = HttpSettings { name, service: "Graph", base_url, timeout_ms, https_only, envelope: graph_envelope };
        Ok(Self { client: HttpClient::new(http, auth, budget, shutdown)?, site, concurrency })
    }

    /// Sends one `$batch` (at most 20 requests). Returns the inner responses
    /// by request id. `resend_sent`: see [`Self::call`] (true only for
    /// batches of reads).
    async fn send_batch(
        &self,
        requests: &[Value],
        ru: u32,
        resend_sent: bool,
    ) -> Result<HashMap<String, Inner>, BatchError> {
        let envelope = json!({ "requests": requests });
        let cost = Cost { units: ru, writes: writes_in(&reqwest::Method::POST, "/$batch", Some(&envelope)) };
        let (status, text) = self
            .client
            .call(reqwest::Method::POST, "/$batch", Some(&envelope), cost, resend_sent)
            .await
            .map_err(BatchError::Failed)?;
        if status != 200 {
            // The envelope was refused: nothing in it ran, and no request in
            // it was looked at on its own.
            let detail = self.client.api_error_text(&text);
            let shape = graph_envelope(&serde_json::from_str(&text).unwrap_or(Value::Null))
                .is_some_and(|(_, m)| m.contains("fully sequential") || m.contains("fully parallel"));
            tracing::warn!(target = %self.client.name, status, requests = requests.len(), shape, "Graph refused a $batch");
            return Err(BatchError::Refused {
                shape,
                message: format!("Graph refused the $batch (HTTP {status}){detail}"),
            });
        }
        match parse_batch_answer(&text) {
            Ok(map) => {
                // Each request it carried was answered on its own (Graph
                // counts, and throttles, each).
                for a in map.values() {
                    self.client.count_answer("batch_item", a.status, retry_after_of(&a.headers));
                }
                self.client.set_health(Health::Ok, "");
                Ok(map)
            }
            Err(e) => {
                // The requests may have run: nothing is marked done, and
                // creates are looked up by SyncKey before they are sent again.
                self.client.set_health(Health::Unreachable, e.clone());
                Err(BatchError::Failed(Failure {
                    class: ErrorClass::Transient,
                    message: e,
                    retry_after: None,
                    sent: true,
                }))
            }
        }
    }

    /// A single (non-batch) request, used for provisioning: status and JSON body.
    async fn request(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
        ru: u32,
    ) -> Result<(u16, Value), Failure> {
        // Provisioning may be sent again: a list created by a lost attempt
        // answers 409 and is adopted.
        let cost = Cost { units: ru, writes: writes_in(&method, path, body) };
        let (status, text) = self.client.call(method, path, body, cost, true).await?;
        if text.is_empty() {
            return Ok((status, Value::Null));
        }
        let body = serde_json::from_str(&text).map_err(|e| Failure {
            class: ErrorClass::Transient,
            message: format!("Graph answered HTTP {status} with a body that is not JSON ({e})"),
            retry_after: None,
            sent: true,
        })?;
        Ok((status, body))
    }

    fn items_path(&self, list: &str) -> String {
        format!("/sites/{}/lists/{}/items", seg(&self.site), seg(list))
    }

    async fn provision(&self, e: &Export, ctx: &ApplyContext) -> OpResult {
        let payload = e.payload.clone().unwrap_or(Value::Null);
        let list = payload.get("list").and_then(Value::as_str).unwrap_or(&e.container).to_owned();
        let mut columns = Vec::new();
        for c in payload.get("columns").and_then(Value::as_array).cloned().unwrap_or_default() {
            // Every list has Title already (a field mapped to it fills it).
            if c.get("name").and_then(Value::as_str).is_some_and(|n| n.eq_ignore_ascii_case("Title")) {
                continue;
            }
            let lookup = c.get("reference").and_then(Value::as_str).and_then(|d| ctx.definition_containers.get(d));
            match column_definition(&c, lookup.map(String::as_str)) {
                Ok(def) => columns.push(def),
                Err(msg) => return OpResult::failed(e.id, ErrorClass::Transient, msg, false),
            }
        }
        let body = json!({ "displayName": list, "columns": columns, "list": { "template": "genericList" } });
        let lists = format!("/sites/{}/lists", seg(&self.site));
        match self.request(reqwest::Method::POST, &lists, Some(&body), RU_WRITE).await {
            Err(f) => f.to_result(e.id),
            Ok((201 | 200, v)) => match v.get("id").and_then(Value::as_str) {
                Some(id) => OpResult {
                    list_id: Some(id.to_owned()),
                    columns: Some(Value::Array(columns)),
                    join_type: Some("provisioned"),
                    ..OpResult::ok(e.id)
                },
                None => OpResult::failed(e.id, ErrorClass::Transient, "the created list has no id", true),
            },
            Ok((409, _)) => {
                // It exists already: adopt it.
                let q = format!("{lists}{}", list_filter_query(&list));
                match self.request(reqwest::Method::GET, &q, None, RU_QUERY).await {
                    Ok((200, v)) => match v.pointer("/value/0/id").and_then(Value::as_str) {
                        Some(id) => {
                            OpResult { list_id: Some(id.to_owned()), join_type: Some("joined"), ..OpResult::ok(e.id) }
                        }
                        None => OpResult::failed(
                            e.id,
                            ErrorClass::Definite,
                            format!("list {list} exists but cannot be found"),
                            false,
                        ),
                    },
                    Ok((s, v)) => OpResult::failed(
                        e.id,
                        ErrorClass::Definite,
                        format!("HTTP {s}{}", self.client.api_error(&v)),
                        false,
                    ),
                    Err(f) => f.to_result(e.id),
                }
            }
            Ok((s, v)) => OpResult::failed(
                e.id,
                ErrorClass::Definite,
                format!("creating list {list}: HTTP {s}{}", self.client.api_error(&v)),
                false,
            ),
        }
    }

    fn list_ref(&self, ctx: &ApplyContext, definition: &str, list: &str) -> String {
        ctx.container_ids.get(&(definition.to_owned(), list.to_owned())).cloned().unwrap_or_else(|| list.to_owned())
    }

    /// Whether a looked-up item already holds every field of the export's
    /// payload (numbers compared as the doubles SharePoint keeps; an empty
    /// field and a missing one are the same).
    fn holds_payload(&self, e: &Export, item: &Value, ctx: &ApplyContext) -> bool {
        let kinds = ctx.fields.get(&(e.definition.clone(), e.container.clone()));
        let Ok(want) = graph_fields(e.payload.as_ref().unwrap_or(&Value::Null), false, kinds) else {
            return false;
        };
        let have = item.get("fields").and_then(Value::as_object);
        want.iter().all(|(k, v)| {
            let h = have.and_then(|f| f.get(k)).unwrap_or(&Value::Null);
            match (v, h) {
                (Value::Number(a), Value::Number(b)) => a.as_f64() == b.as_f64(),
                _ => v == h,
            }
        })
    }

    /// Looks the SyncKeys of `exports` up in their lists: export id → the
    /// item found (its id, and the item with its fields).
    async fn lookup(
        &self,
        exports: &[&Export],
        ctx: &ApplyContext,
    ) -> Result<HashMap<i64, Option<(String, Value)>>, Failure> {
        let mut found = HashMap::new();
        for chunk in exports.chunks(BATCH_LIMIT) {
            let reqs: Vec<Value> = chunk
                .iter()
                .map(|e| {
                    let key = e.sync_key.clone().unwrap_or_default().replace('\'', "''");
                    let path = self.items_path(&self.list_ref(ctx, &e.definition, &e.container));
                    json!({
                        "id": e.id.to_string(), "method": "GET",
                        "url": format!("{path}?$expand=fields&$filter=fields/SyncKey eq '{}'", utf8_percent_encode(&key, SEGMENT)),
                    })
                })
                .collect();
            // Reads: sent again as often as the retry policy allows.
            let answers =
                self.send_batch(&reqs, RU_QUERY * chunk.len() as u32, true).await.map_err(BatchError::into_failure)?;
            for e in chunk {
                let a = answers.get(&e.id.to_string()).ok_or_else(|| Failure {
                    class: ErrorClass::Transient,
                    message: "the $batch answer lacks a lookup response".into(),
                    retry_after: None,
                    sent: false,
                })?;
                if a.status != 200 {
                    return Err(Failure {
                        class: if a.status == 429 { ErrorClass::Throttled } else { ErrorClass::Transient },
                        message: format!("looking up SyncKey: HTTP {}{}", a.status, self.client.api_error(&a.body)),
                        retry_after: retry_after_of(&a.headers),
                        sent: false,
                    });
                }
                let item = a.body.pointer("/value/0").cloned();
                let id = item.as_ref().and_then(|i| i.get("id")).and_then(Value::as_str).map(str::to_owned);
                found.insert(e.id, id.zip(item));
            }
        }
        Ok(found)
    }

    /// Carries out item exports in rounds of `$batch`es, every one of them
    /// fully parallel (no `dependsOn`: Graph refuses a batch that mixes
    /// sequenced and parallel requests):
    ///
    /// - a move is a create in the new list, then, once that create is
    ///   known to have succeeded, the old item's delete (in a later round);
    /// - a `$batch` whose outcome is unknown (a 5xx, a timeout, a connection
    ///   lost after sending, an answer that broke off or lacks a response)
    ///   is never sent again blindly: its creates are looked up by SyncKey
    ///   first and adopted when found; updates and deletes are sent again
    ///   as they are (a repeated update writes the same values, a repeated
    ///   delete finds nothing: 404, fine);
    /// - a refused envelope (not 200) is split into single-export batches,
    ///   so that each export gets a verdict of its own; only an export
    ///   refused alone (and not for the batch's shape) is definite.
    async fn apply_items(&self, exports: &[&Export], ctx: &ApplyContext) -> Vec<OpResult> {
        let mut results = Vec::with_capacity(exports.len());
        let mut jobs: Vec<Job> = exports
            .iter()
            .map(|e| Job {
                e,
                step: Step::Main,
                adopt: None,
                // An earlier attempt may have created the item: look first.
                look: e.verify && matches!(e.op, Op::Add | Op::Move),
                maybe_sent: false,
                alone: false,
                tries: 0,
            })
            .collect();
        let mut round: u32 = 0;
        while !jobs.is_empty() {
            if round > 0 && jobs.iter().any(|j| j.tries > 0) {
                // Something is to be sent again: back off first.
                let d = backoff(round);
                if !self.client.sleep_or_stop(tokio::time::Instant::now() + d).await {
                    let stop = self.client.stopping();
                    results.extend(jobs.iter().map(|j| self.give_up(j, &stop)));
                    return results;
                }
            }
            round += 1;
            // 1. Creates that may have happened already are looked up.
            let to_look: Vec<&Export> = jobs.iter().filter(|j| j.look && j.step.is_main()).map(|j| j.e).collect();
            if !to_look.is_empty() {
                match self.lookup(&to_look, ctx).await {
                    Ok(found) => {
                        let mut adopted = 0;
                        let mut kept = Vec::with_capacity(jobs.len());
                        for mut j in std::mem::take(&mut jobs) {
                            if !(j.look && j.step.is_main()) {
                                kept.push(j);
                                continue;
                            }
                            j.look = false;
                            let Some((id, item)) = found.get(&j.e.id).cloned().flatten() else {
                                kept.push(j);
                                continue;
                            };
                            adopted += 1;
                            // The lost create did happen and the item holds
                            // every value already: adopted without a write
                            // (which would change nothing on the item).
                            if j.e.op == Op::Add && self.holds_payload(j.e, &item, ctx) {
                                let mut r = OpResult::ok(j.e.id);
                                r.target_id = Some(id);
                                r.etag = item
                                    .get("eTag")
                                    .or_else(|| item.get("@odata.etag"))
                                    .and_then(Value::as_str)
                                    .map(str::to_owned);
                                r.fields = read_back(&j.e.read_back, item.get("fields").unwrap_or(&Value::Null));
                                results.push(r);
                                continue;
                            }
                            j.adopt = Some(id);
                            kept.push(j);
                        }
                        jobs = kept;
                        tracing::info!(target = %self.client.name, looked_up = to_look.len(), adopted,
                            "looked creates up by SyncKey: the items found are adopted, not created again");
                    }
                    Err(f) => {
                        // Without the look-up nothing may be created: these
                        // wait for their next attempt (which looks first).
                        let (waiting, rest): (Vec<Job>, Vec<Job>) =
                            jobs.into_iter().partition(|j| j.look && j.step.is_main());
                        results.extend(waiting.iter().map(|j| self.give_up(j, &f)));
                        jobs = rest;
                        if jobs.is_empty() {
                            break;
                        }
                    }
                }
            }
            // 2. One request per job.
            let mut units: Vec<(Job, Value, u32)> = Vec::with_capacity(jobs.len());
            for j in std::mem::take(&mut jobs) {
                match self.request_for(&j, ctx) {
                    Ok((req, ru)) => units.push((j, req, ru)),
                    Err(r) => results.push(*r),
                }
            }
            // 3. Fully parallel $batches of at most 20; a job whose shared
            // batch was refused goes alone.
            let mut batches: Vec<Vec<(Job, Value, u32)>> = Vec::new();
            let mut shared: Vec<(Job, Value, u32)> = Vec::new();
            for u in units {
                if u.0.alone {
                    batches.push(vec![u]);
                    continue;
                }
                shared.push(u);
                if shared.len() == BATCH_LIMIT {
                    batches.push(std::mem::take(&mut shared));
                }
            }
            if !shared.is_empty() {
                batches.push(shared);
            }
            // 4. Up to `concurrency` in flight: the exports of one claim
            // touch distinct keys, so their order does not matter. The RU
            // limiter still paces the sum.
            tracing::debug!(target = %self.client.name, round, batches = batches.len(),
                requests = batches.iter().map(Vec::len).sum::<usize>(), "sending a round of $batches");
            let sends: Vec<_> = batches.into_iter().map(|b| self.send_jobs(b)).collect();
            let sent = futures_util::stream::iter(sends).buffer_unordered(self.concurrency).collect::<Vec<_>>().await;
            // 5. Verdicts, or another round.
            for (b, outcome) in sent {
                let n = b.len();
                match outcome {
                    Ok(answers) => {
                        for (j, _, _) in b {
                            match answers.get(&j.e.id.to_string()) {
                                Some(a) => match self.verdict(j, a) {
                                    Next::Done(r) => results.push(*r),
                                    Next::Again(j) => jobs.push(*j),
                                },
                                None => {
                                    let f = Failure {
                                        class: ErrorClass::Transient,
                                        message: "the $batch answer lacks this request's response".into(),
                                        retry_after: None,
                                        sent: true,
                                    };
                                    self.again_or_give_up(j, &f, &mut jobs, &mut results);
                                }
                            }
                        }
                    }
                    Err(BatchError::Refused { shape, message }) => {
                        for (mut j, _, _) in b {
                            if n > 1 && !j.alone {
                                // Each export on its own, at once.
                                j.alone = true;
                                jobs.push(j);
                            } else if shape || !j.step.is_main() || j.maybe_sent {
                                // Not this export's fault, or an earlier send of it may
                                // have run: transient (and looked up on its next attempt).
                                let f = Failure {
                                    class: ErrorClass::Transient,
                                    message: message.clone(),
                                    retry_after: None,
                                    sent: false,
                                };
                                results.push(self.give_up(&j, &f));
                            } else {
                                // Refused with nothing else in the batch: the refusal is this export's.
                                results.push(OpResult::failed(j.e.id, ErrorClass::Definite, message.clone(), false));
                            }
                        }
                    }
                    Err(BatchError::Failed(f)) if f.sent => {
                        tracing::warn!(target = %self.client.name, exports = n, error = %f.message,
                            "the outcome of a $batch is unknown: its creates are looked up before anything is sent again");
                        for (j, _, _) in b {
                            self.again_or_give_up(j, &f, &mut jobs, &mut results);
                        }
                    }
                    // Certainly not sent (the retry policy is spent, or the worker stops).
                    Err(BatchError::Failed(f)) => results.extend(b.iter().map(|(j, _, _)| self.give_up(j, &f))),
                }
            }
        }
        results
    }

    /// Sends one `$batch` of jobs' requests (never sent again in place when
    /// its outcome is unknown): the jobs back, with the outcome.
    #[allow(clippy::type_complexity)]
    async fn send_jobs<'a>(
        &self,
        b: Vec<(Job<'a>, Value, u32)>,
    ) -> (Vec<(Job<'a>, Value, u32)>, Result<HashMap<String, Inner>, BatchError>) {
        let reqs: Vec<Value> = b.iter().map(|u| u.1.clone()).collect();
        let ru: u32 = b.iter().map(|u| u.2).sum();
        let outcome = self.send_batch(&reqs, ru, false).await;
        (b, outcome)
    }

    /// A job whose send may have reached Graph: another round (its create
    /// looked up first), or, its tries spent, a failure that makes the
    /// export's next attempt look first.
    fn again_or_give_up<'a>(&self, mut j: Job<'a>, f: &Failure, jobs: &mut Vec<Job<'a>>, results: &mut Vec<OpResult>) {
        j.tries += 1;
        j.maybe_sent = true;
        if j.step.is_main() && j.adopt.is_none() && matches!(j.e.op, Op::Add | Op::Move) {
            j.look = true;
        }
        if j.tries >= ENVELOPE_ATTEMPTS {
            results.push(self.give_up(&j, f));
        } else {
            jobs.push(j);
        }
    }

    /// The result of a job that stops here with `f`. When its create may
    /// have happened (or a move's create did), the failure is `transient`
    /// and `sent`, so that `sync.complete` marks the export verify and its
    /// next attempt looks the item up before creating it.
    fn give_up(&self, j: &Job<'_>, f: &Failure) -> OpResult {
        let created = !j.step.is_main();
        let create = j.step.is_main() && matches!(j.e.op, Op::Add | Op::Move);
        if created || (create && (j.maybe_sent || f.sent)) {
            let message = match &j.step {
                Step::MoveDelete(_) => {
                    format!("moved: created in the new list, the old item not deleted yet: {}", f.message)
                }
                Step::Main => f.message.clone(),
            };
            OpResult { retry_after: f.retry_after, ..OpResult::failed(j.e.id, ErrorClass::Transient, message, true) }
        } else if j.e.verify && create {
            // Its look-up failed: nothing was sent; it stays marked verify.
            Failure { sent: false, ..f.clone() }.to_result(j.e.id)
        } else {
            let mut r = f.to_result(j.e.id);
            r.sent = Some(f.sent || j.maybe_sent);
            r
        }
    }

    /// The one `$batch` request a job sends in this round, and its cost.
    fn request_for(&self, j: &Job<'_>, ctx: &ApplyContext) -> Result<(Value, u32), Box<OpResult>> {
        let e = j.e;
        let id = e.id.to_string();
        if let Step::MoveDelete(_) = j.step {
            let (Some(item), Some(from)) = (&e.target_id, &e.from_container) else {
                return Err(Box::new(OpResult::failed(
                    e.id,
                    ErrorClass::Definite,
                    "a move without its old item",
                    false,
                )));
            };
            let old = self.items_path(&self.list_ref(ctx, &e.definition, from));
            return Ok((json!({ "id": id, "method": "DELETE", "url": format!("{old}/{}", seg(item)) }), RU_WRITE));
        }
        let payload = e.payload.clone().unwrap_or(Value::Null);
        let list = self.items_path(&self.list_ref(ctx, &e.definition, &e.container));
        let kinds = ctx.fields.get(&(e.definition.clone(), e.container.clone()));
        let definite = |m: String| Box::new(OpResult::failed(e.id, ErrorClass::Definite, m, false));
        let not_yet = |f: FieldError| {
            Box::new(match f {
                FieldError::NotYet(m) => OpResult::failed(e.id, ErrorClass::Transient, m, false),
                FieldError::Unfit(m) => OpResult::failed(e.id, ErrorClass::Definite, m, false),
            })
        };
        let json_headers = json!({ "Content-Type": "application/json" });
        match e.op {
            Op::Provision => Err(definite("a provision in an item batch".into())),
            Op::Disable => Err(definite("SharePoint list items cannot be disabled (sync.target_kinds.disable)".into())),
            Op::Add | Op::Move => match &j.adopt {
                Some(item) => {
                    let fields = graph_fields(&payload, false, kinds).map_err(not_yet)?;
                    Ok((
                        json!({ "id": id, "method": "PATCH", "url": format!("{list}/{}/fields", seg(item)),
                                "headers": json_headers, "body": fields }),
                        RU_WRITE,
                    ))
                }
                None => {
                    let mut fields = graph_fields(&payload, true, kinds).map_err(not_yet)?;
                    fields.insert("SyncKey".into(), Value::String(e.sync_key.clone().unwrap_or_default()));
                    Ok((
                        json!({ "id": id, "method": "POST", "url": list, "headers": json_headers, "body": { "fields": fields } }),
                        RU_WRITE,
                    ))
                }
            },
            Op::Update => {
                let item = e.target_id.as_deref().ok_or_else(|| definite("an update without the item's id".into()))?;
                let fields = graph_fields(&payload, false, kinds).map_err(not_yet)?;
                let mut headers = json_headers;
                if let Some(etag) = &e.etag {
                    // Two-way: the write only lands on the version last seen (412 otherwise).
                    headers["If-Match"] = Value::String(etag.clone());
                }
                Ok((
                    json!({ "id": id, "method": "PATCH", "url": format!("{list}/{}/fields", seg(item)),
                            "headers": headers, "body": fields }),
                    RU_WRITE,
                ))
            }
            Op::Delete => {
                let item = e.target_id.as_deref().ok_or_else(|| definite("a delete without the item's id".into()))?;
                let mut req = json!({ "id": id, "method": "DELETE", "url": format!("{list}/{}", seg(item)) });
                if let Some(etag) = &e.etag {
                    req["headers"] = json!({ "If-Match": etag });
                }
                Ok((req, RU_WRITE))
            }
        }
    }

    /// What a job's answer means: a result, or (a move whose create
    /// succeeded) its next step.
    fn verdict<'a>(&self, j: Job<'a>, a: &Inner) -> Next<'a> {
        let e = j.e;
        if let Step::MoveDelete(created) = j.step {
            // The old item: gone, or already gone, is what we want.
            return match a.status {
                200..=299 | 404 => Next::Done(created),
                _ => {
                    let mut f = self.classify(e, a);
                    let message = f.error.take().unwrap_or_default();
                    let failure =
                        Failure { class: ErrorClass::Transient, message, retry_after: f.retry_after, sent: true };
                    Next::Done(Box::new(self.give_up(&Job { step: Step::MoveDelete(created), ..j }, &failure)))
                }
            };
        }
        let mut r = self.classify(e, a);
        if !r.ok {
            if j.maybe_sent && matches!(e.op, Op::Add | Op::Move) {
                // An earlier send may have created it: the next attempt looks first.
                r.sent = Some(true);
                if r.class == Some(ErrorClass::Throttled) {
                    r.class = Some(ErrorClass::Transient);
                }
            }
            return Next::Done(Box::new(r));
        }
        match e.op {
            Op::Add | Op::Move => {
                r.target_id = j.adopt.clone().or_else(|| a.body.get("id").and_then(Value::as_str).map(str::to_owned));
                if r.target_id.is_none() {
                    return Next::Done(Box::new(OpResult::failed(
                        e.id,
                        ErrorClass::Transient,
                        "the created item has no id",
                        true,
                    )));
                }
                r.etag = a
                    .body
                    .get("eTag")
                    .or_else(|| a.body.get("@odata.etag"))
                    .and_then(Value::as_str)
                    .map(str::to_owned)
                    .or_else(|| etag_header(&a.headers));
                // A create answers the listItem (its fields inside), an
                // adoption's PATCH …/fields the field set itself.
                r.fields = match &j.adopt {
                    Some(_) => read_back(&e.read_back, &a.body),
                    None => read_back(&e.read_back, a.body.get("fields").unwrap_or(&Value::Null)),
                };
                if e.op == Op::Move && e.target_id.is_some() && e.from_container.is_some() {
                    // Created in the new list: now (and only now) the old item goes.
                    return Next::Again(Box::new(Job { step: Step::MoveDelete(Box::new(r)), tries: 0, ..j }));
                }
            }
            Op::Update => {
                r.etag = etag_header(&a.headers)
                    .or_else(|| a.body.get("@odata.etag").and_then(Value::as_str).map(str::to_owned));
                r.fields = read_back(&e.read_back, &a.body);
            }
            _ => {}
        }
        Next::Done(Box::new(r))
    }

    fn classify(&self, e: &Export, a: &Inner) -> OpResult {
        let msg = || self.client.api_error(&a.body);
        match a.status {
            200..=299 => OpResult::ok(e.id),
            404 if e.op == Op::Delete => OpResult::ok(e.id), // already gone
            404 => {
                OpResult::failed(e.id, ErrorClass::Definite, format!("404 item not found on the target{}", msg()), true)
            }
            // An If-Match that no longer matches: a remote change, not an error.
            412 => OpResult::failed(
                e.id,
                ErrorClass::Conflict,
                format!("412 the item changed on the target{}", msg()),
                true,
            ),
            424 => OpResult::failed(e.id, ErrorClass::Transient, "424 a request it depended on failed", false),
            429 | 503 => {
                let ra = retry_after_of(&a.headers).unwrap_or(1.0);
                self.client.pause(ra);
                self.client.set_health(Health::Throttled, format!("{} inside $batch", a.status));
                OpResult {
                    retry_after: Some(ra),
                    ..OpResult::failed(
                        e.id,
                        ErrorClass::Throttled,
                        format!("{} throttled{}", a.status, msg()),
                        a.status == 503,
                    )
                }
            }
            401 => OpResult::failed(e.id, ErrorClass::Auth, format!("HTTP 401{}", msg()), false),
            s if s >= 500 => OpResult::failed(e.id, ErrorClass::Transient, format!("HTTP {s}{}", msg()), true),
            s => OpResult::failed(e.id, ErrorClass::Definite, format!("HTTP {s}{}", msg()), true),
        }
    }
}

/// The `read_back` fields from a write's answer (`fields`: the item's field
/// set): each name's value, null when the answer lacks it. None when none
/// is asked for, or when the answer carries no field set at all (nothing is
/// known: better no value than nulls).
fn read_back(names: &[String], fields: &Value) -> Option<Map<String, Value>> {
    let set = fields.as_object().filter(|_| !names.is_empty())?;
    // Field names are matched as SharePoint matches them, without case: a
    // mapping of `ID` reads the `id` every field set carries.
    let get = |n: &str| set.get(n).or_else(|| set.iter().find(|(k, _)| k.eq_ignore_ascii_case(n)).map(|(_, v)| v));
    Some(names.iter().map(|n| (n.clone(), get(n).cloned().unwrap_or(Value::Null))).collect())
}

fn etag_header(h: &Map<String, Value>) -> Option<String> {
    h.iter().find(|(k, _)| k.eq_ignore_ascii_case("etag")).and_then(|(_, v)| v.as_str()).map(str::to_owned)
}

/// Parses a `$batch` answer: id → response. Anything else than
/// `{"responses": [{"id", "status", ...}]}` is an error.
fn parse_batch_answer(text: &str) -> Result<HashMap<String, Inner>, String> {
    // Never a piece of the answer in the message: only what was wrong with it.
    let v: Value = serde_json::from_str(text).map_err(|e| format!("the $batch answer is not JSON ({e})"))?;
    let responses = v.get("responses").and_then(Value::as_array).ok_or("the $batch answer has no responses array")?;
    let mut out = HashMap::new();
    for r in responses {
        let id = r.get("id").and_then(|i| i.as_str().map(str::to_owned).or_else(|| i.as_u64().map(|n| n.to_string())));
        let status = r.get("status").and_then(Value::as_u64).and_then(|s| u16::try_from(s).ok());
        let (Some(id), Some(status)) = (id, status) else {
            return Err("a $batch response lacks id or status".to_owned());
        };
        let headers = r.get("headers").and_then(Value::as_object).cloned().unwrap_or_default();
        out.insert(id, Inner { status, headers, body: r.get("body").cloned().unwrap_or(Value::Null) });
    }
    Ok(out)
}

impl Target for GraphTarget {
    fn batch_size(&self) -> usize {
        BATCH_LIMIT * 5
    }

    fn share_budget(&self, source: std::sync::Arc<dyn super::http::BudgetSource>) {
        self.client.share_budget(source);
    }

    fn capabilities(&self) -> &'static super::registry::Capabilities {
        &super::registry::GRAPH_CAPABILITIES
    }

    fn probe(&self) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(async move {
            // One attempt, no retry loop: the caller paces the probes.
            let token = self.client.token(false).await.map_err(|f| self.client.redact(&f.message))?;
            let url = format!("{}/sites/{}", self.client.base_url, seg(&self.site));
            match self.client.http.get(&url).bearer_auth(&token).send().await {
                Err(e) => Err(self.client.redact(&format!("Graph unreachable: {}", without_url(&e)))),
                Ok(r) if r.status().is_server_error() => Err(format!("Graph answered {}", r.status().as_u16())),
                Ok(_) => {
                    self.client.set_health(Health::Ok, "");
                    Ok(())
                }
            }
        })
    }

    fn apply<'a>(&'a self, exports: &'a [Export], context: &'a ApplyContext) -> BoxFuture<'a, Vec<OpResult>> {
        Box::pin(async move {
            let mut results = Vec::with_capacity(exports.len());
            for e in exports.iter().filter(|e| e.op == Op::Provision) {
                results.push(self.provision(e, context).await);
            }
            let items: Vec<&Export> = exports.iter().filter(|e| e.op != Op::Provision).collect();
            if !items.is_empty() {
                results.extend(self.apply_items(&items, context).await);
            }
            // Everything bound for sync.complete (last_error) and the log.
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
    use std::time::{Duration, Instant};

    use super::*;
    use crate::target::http::{MAX_CODE_CHARS, MAX_MESSAGE_CHARS};

    #[test]
    fn columns_map_to_graph_facets() {
        let c = |v: Value| column_definition(&v, Some("L1")).unwrap();
        assert_eq!(c(json!({"name": "Age", "kind": "number"})), json!({"name": "Age", "number": {}}));
        assert_eq!(c(json!({"name": "Ok", "kind": "boolean"})), json!({"name": "Ok", "boolean": {}}));
        assert_eq!(
            c(json!({"name": "At", "kind": "dateTime"})),
            json!({"name": "At", "dateTime": {"format": "dateTime"}})
        );
        assert_eq!(c(json!({"name": "On", "kind": "date"})), json!({"name": "On", "dateTime": {"format": "dateOnly"}}));
        assert_eq!(c(json!({"name": "N", "kind": "note"})), json!({"name": "N", "text": {"allowMultipleLines": true}}));
        assert_eq!(
            c(json!({"name": "SyncKey", "kind": "text", "indexed": true, "hidden": true})),
            json!({"name": "SyncKey", "text": {}, "indexed": true, "hidden": true})
        );
        assert_eq!(
            c(json!({"name": "Boss", "kind": "number", "reference": "people"})),
            json!({"name": "Boss", "lookup": {"listId": "L1", "columnName": "Title"}})
        );
        assert!(column_definition(&json!({"name": "Boss", "reference": "people"}), None).is_err());
    }

    #[test]
    fn references_become_lookup_ids_and_creates_leave_nulls_out() {
        let p = json!({"Title": "x", "Gone": null, "Boss": {"@ref": "7", "@def": "people", "target_id": "42"},
                       "Tags": ["a", "b"], "Meta": {"k": 1}});
        let f = graph_fields(&p, true, None).unwrap();
        assert_eq!(
            Value::Object(f),
            json!({"Title": "x", "BossLookupId": "42", "Tags": "[\"a\",\"b\"]", "Meta": "{\"k\":1}"})
        );
        let f = graph_fields(&p, false, None).unwrap();
        assert_eq!(f.get("Gone"), Some(&Value::Null));
        let unresolved = json!({"Boss": {"@ref": "7", "@def": "people", "target_id": null}});
        assert!(
            matches!(graph_fields(&unresolved, true, None), Err(FieldError::NotYet(m)) if m.contains("not on the target yet"))
        );
    }

    #[test]
    fn values_bound_for_text_columns_are_strings() {
        let kinds: HashMap<String, String> = [("Meta", "note"), ("Code", "text"), ("Qty", "number"), ("Ok", "boolean")]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        let p = json!({"Title": 7, "Meta": 42, "Code": true, "Qty": 42, "Ok": true, "Other": 1.5, "Doc": [1]});
        let f = graph_fields(&p, true, Some(&kinds)).unwrap();
        assert_eq!(
            Value::Object(f),
            json!({"Title": "7", "Meta": "42", "Code": "true", "Qty": 42, "Ok": true, "Other": 1.5, "Doc": "[1]"})
        );
        // A number column: numbers a double holds exactly, nothing else.
        let ok = json!({"Qty": 9007199254740991_i64, "Ok": true});
        assert_eq!(graph_fields(&ok, true, Some(&kinds)).map(Value::Object), Ok(ok.clone()));
        assert_eq!(graph_fields(&json!({"Qty": -9007199254740991_i64}), true, Some(&kinds)).map(|f| f.len()), Ok(1));
        assert_eq!(graph_fields(&json!({"Qty": 0.1}), true, Some(&kinds)).map(|f| f.len()), Ok(1));
        for bad in [json!({"Qty": 9007199254740993_u64}), json!({"Qty": -9007199254740992_i64}), json!({"Qty": "NaN"})]
        {
            let e = graph_fields(&bad, false, Some(&kinds));
            assert!(matches!(&e, Err(FieldError::Unfit(m)) if m.contains("field Qty")), "{bad}: {e:?}");
        }
        // Both forms of sync.target_lists.columns give the kinds.
        let k = |v: Value| crate::target::column_kind(&v).map(|(_, k)| k);
        assert_eq!(k(json!({"name": "N", "text": {"allowMultipleLines": true}})).as_deref(), Some("note"));
        assert_eq!(k(json!({"name": "N", "text": {}})).as_deref(), Some("text"));
        assert_eq!(k(json!({"name": "N", "dateTime": {"format": "dateOnly"}})).as_deref(), Some("date"));
        assert_eq!(k(json!({"name": "N", "kind": "number"})).as_deref(), Some("number"));
        assert_eq!(k(json!({"name": "N", "kind": "number", "reference": "people"})).as_deref(), Some("lookup"));
    }

    #[test]
    fn garbage_batch_answers_are_errors() {
        assert!(parse_batch_answer("<html>").unwrap_err().contains("not JSON"));
        assert!(parse_batch_answer(r#"{"responses": [{"id": "1", "sta"#).unwrap_err().contains("not JSON"));
        assert!(parse_batch_answer(r#"{"value": []}"#).unwrap_err().contains("no responses"));
        assert!(parse_batch_answer(r#"{"responses": [{"status": 200}]}"#).unwrap_err().contains("lacks id"));
        let ok = parse_batch_answer(r#"{"responses": [{"id": "1", "status": 201, "body": {"id": "5"}}]}"#).unwrap();
        assert_eq!(ok["1"].status, 201);
    }

    #[test]
    fn the_adapters_pause_is_capped() {
        // The adapter's own pause: no panic, capped.
        let t = target_for("http://127.0.0.1:9", "s");
        for secs in [f64::NAN, f64::INFINITY, -5.0, 1e300] {
            t.client.pause(secs);
        }
        let until = t.client.pause_until.lock().unwrap().expect("paused");
        assert!(until <= Instant::now() + crate::target::http::MAX_PAUSE, "capped");
    }

    #[test]
    fn list_names_cannot_change_the_adoption_filter() {
        let decode = |name: &str| {
            let url = reqwest::Url::parse(&format!(
                "https://graph.microsoft.com/v1.0/sites/s/lists{}",
                list_filter_query(name)
            ))
            .unwrap();
            let pairs: Vec<(String, String)> = url.query_pairs().into_owned().collect();
            assert_eq!(pairs.len(), 1, "{name}: {pairs:?}");
            assert_eq!(pairs[0].0, "$filter");
            pairs[0].1.clone()
        };
        assert_eq!(decode("R&D"), "displayName eq 'R&D'");
        assert_eq!(decode("x%27 or 1 eq 1"), "displayName eq 'x%27 or 1 eq 1'");
        assert_eq!(decode("O'Brien's #1 = ok?"), "displayName eq 'O''Brien''s #1 = ok?'");
        assert_eq!(decode("Ünïcödé list"), "displayName eq 'Ünïcödé list'");
    }

    fn export(v: Value) -> Export {
        let mut base = json!({"id": 1, "definition": "d", "op": "update", "sync_key": "k1", "list": "L",
                              "from_list": null, "target_id": "7", "etag": null, "payload": {"Title": "x"},
                              "attempts": 1, "verify": false});
        for (k, x) in v.as_object().unwrap() {
            base[k] = x.clone();
        }
        serde_json::from_value(base).unwrap()
    }

    fn job(e: &Export) -> Job<'_> {
        Job { e, step: Step::Main, adopt: None, look: false, maybe_sent: false, alone: false, tries: 0 }
    }

    #[test]
    fn updates_and_deletes_carry_if_match_only_with_an_etag() {
        let t = target_for("http://127.0.0.1:9", "s");
        let ctx = ApplyContext::default();
        let if_match = |e: &Export| {
            let (req, _) = t.request_for(&job(e), &ctx).unwrap();
            req.pointer("/headers/If-Match").and_then(Value::as_str).map(str::to_owned)
        };
        let etag = json!("\"{A},3\"");
        for op in ["update", "delete"] {
            assert_eq!(if_match(&export(json!({"op": op, "etag": etag}))).as_deref(), Some("\"{A},3\""), "{op}");
            assert_eq!(if_match(&export(json!({"op": op}))), None, "{op} without an etag");
        }
        // A create, and an adoption's PATCH, never: there is no version to match.
        let add = export(json!({"op": "add", "target_id": null, "etag": etag}));
        assert_eq!(if_match(&add), None);
        let adopt = Job { adopt: Some("9".into()), ..job(&add) };
        assert_eq!(t.request_for(&adopt, &ctx).unwrap().0.pointer("/headers/If-Match"), None);
        // The update keeps its content type beside If-Match.
        let (req, _) = t.request_for(&job(&export(json!({"etag": etag}))), &ctx).unwrap();
        assert_eq!(req["headers"]["Content-Type"], "application/json");
        // A claimed export's read_back: NULL or absent is empty.
        assert!(export(json!({"read_back": null})).read_back.is_empty());
        assert_eq!(export(json!({"read_back": ["ID", "Modified"]})).read_back, ["ID", "Modified"]);
    }

    #[test]
    fn a_412_is_a_conflict() {
        let t = target_for("http://127.0.0.1:9", "s");
        let e = export(json!({"etag": "\"e,1\""}));
        let body = json!({"error": {"code": "preconditionFailed", "message": "ETag mismatch"}});
        let a = Inner { status: 412, headers: Map::new(), body };
        let Next::Done(r) = t.verdict(job(&e), &a) else { panic!("a result") };
        assert_eq!((r.ok, r.class), (false, Some(ErrorClass::Conflict)));
        assert!(r.error.as_deref().unwrap().contains("preconditionFailed"), "{r:?}");
        assert_eq!(serde_json::to_value(&r).unwrap()["class"], "conflict");
        let d = export(json!({"op": "delete", "etag": "\"e,1\""}));
        let Next::Done(r) = t.verdict(job(&d), &a) else { panic!("a result") };
        assert_eq!(r.class, Some(ErrorClass::Conflict));
    }

    #[test]
    fn read_back_fields_come_from_the_writes_answer() {
        let t = target_for("http://127.0.0.1:9", "s");
        let names = json!(["ID", "Modified", "_UIVersionString"]);
        // A create: the listItem, its fields inside.
        let add = export(json!({"op": "add", "target_id": null, "read_back": names}));
        let created = json!({"id": "12", "eTag": "\"{A},1\"",
                             "fields": {"id": "12", "Modified": "2024-01-02T03:04:05Z", "Title": "x"}});
        let a = Inner { status: 201, headers: Map::new(), body: created.clone() };
        let Next::Done(r) = t.verdict(job(&add), &a) else { panic!("a result") };
        assert_eq!(r.target_id.as_deref(), Some("12"));
        assert_eq!(
            Value::Object(r.fields.clone().unwrap()),
            json!({"ID": "12", "Modified": "2024-01-02T03:04:05Z", "_UIVersionString": null})
        );
        let out = serde_json::to_value(&*r).unwrap();
        assert_eq!(out["fields"]["ID"], "12", "ID read from the field set's id, whatever its case");
        // An update: PATCH …/fields answers the field set itself.
        let upd = export(json!({"read_back": ["Modified", "EditorLookupId"]}));
        let answer = json!({"@odata.etag": "\"a,2\"", "Modified": "2024-01-03T00:00:00Z", "EditorLookupId": "6"});
        let a = Inner { status: 200, headers: Map::new(), body: answer.clone() };
        let Next::Done(r) = t.verdict(job(&upd), &a) else { panic!("a result") };
        assert_eq!(
            Value::Object(r.fields.unwrap()),
            json!({"Modified": "2024-01-03T00:00:00Z", "EditorLookupId": "6"})
        );
        // An adoption: the PATCH's field set too.
        let adopt = Job { adopt: Some("9".into()), ..job(&add) };
        let Next::Done(r) = t.verdict(adopt, &Inner { status: 200, headers: Map::new(), body: answer }) else {
            panic!("a result")
        };
        assert_eq!(r.target_id.as_deref(), Some("9"));
        assert_eq!(r.fields.unwrap()["Modified"], "2024-01-03T00:00:00Z");
        // A move: the create's answer, kept through the old item's delete.
        let mv = export(json!({"op": "move", "list": "New", "from_list": "Old", "read_back": ["ID"]}));
        let a = Inner { status: 201, headers: Map::new(), body: created };
        let Next::Again(j) = t.verdict(job(&mv), &a) else { panic!("the delete next") };
        let gone = Inner { status: 204, headers: Map::new(), body: Value::Null };
        let Next::Done(r) = t.verdict(*j, &gone) else { panic!("a result") };
        assert_eq!(Value::Object(r.fields.unwrap()), json!({"ID": "12"}));
        // Nothing asked: no fields key; a delete: none.
        let Next::Done(r) =
            t.verdict(job(&export(json!({}))), &Inner { status: 200, headers: Map::new(), body: json!({"ID": 1}) })
        else {
            panic!("a result")
        };
        assert_eq!(r.fields, None);
        assert!(serde_json::to_value(&*r).unwrap().get("fields").is_none());
        let del = export(json!({"op": "delete", "read_back": ["ID"]}));
        let Next::Done(r) = t.verdict(job(&del), &gone) else { panic!("a result") };
        assert_eq!(r.fields, None);
        // An answer without a field set: nothing is known, no nulls.
        let Next::Done(r) = t.verdict(job(&upd), &gone) else { panic!("a result") };
        assert_eq!(r.fields, None);
    }

    fn target_for(url: &str, secret: &str) -> GraphTarget {
        let policy = TargetPolicy { allow_loopback: true, ..TargetPolicy::default() };
        let cfg = json!({"tenant_id": "t", "client_id": "c", "site_id": "s", "base_url": format!("{url}/v1.0"),
                         "authority_url": url, "timeout_ms": 5000});
        GraphTarget::new(GraphSettings::from_config("x", &cfg, &policy).unwrap(), secret.to_owned(), None).unwrap()
    }

    #[test]
    fn only_json_error_envelopes_reach_messages_and_they_are_bounded_and_redacted() {
        let t = target_for("http://127.0.0.1:9", "hunter2 +/");
        assert_eq!(t.client.api_error_text("<html>internal.example: 10.0.0.5 metadata</html>"), "");
        assert_eq!(t.client.api_error_text(r#"{"value": "not an envelope", "detail": "x"}"#), "");
        assert_eq!(t.client.api_error_text(r#"{"error": "a string, not Graph's object"}"#), "");
        assert_eq!(
            t.client
                .api_error_text(r#"{"error": {"code": "itemNotFound", "message": "gone", "innerError": {"x": "y"}}}"#),
            ": itemNotFound: gone"
        );
        let long = json!({"error": {"code": "c".repeat(1000), "message": "m".repeat(5000)}}).to_string();
        assert!(t.client.api_error_text(&long).chars().count() < MAX_CODE_CHARS + MAX_MESSAGE_CHARS + 10);
        let echo = json!({"error": {"code": "bad", "message": "you sent hunter2%20%2B%2F and hunter2 +/"}}).to_string();
        let m = t.client.api_error_text(&echo);
        assert!(!m.contains("hunter2") && m.contains("[redacted]"), "{m}");
    }

    /// A one-route HTTP server: answers every request with `status`,
    /// `headers` and `body` (`{posted}` replaced by the request's body).
    async fn server(status: u16, headers: &'static str, body: &'static str) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut sock, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 4096];
                    let body_start = loop {
                        let n = sock.read(&mut chunk).await.unwrap_or(0);
                        if n == 0 {
                            return;
                        }
                        buf.extend_from_slice(&chunk[..n]);
                        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            break i + 4;
                        }
                    };
                    let head = String::from_utf8_lossy(&buf[..body_start]).to_ascii_lowercase();
                    let len: usize = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .and_then(|v| v.trim().parse().ok())
                        .unwrap_or(0);
                    while buf.len() < body_start + len {
                        let n = sock.read(&mut chunk).await.unwrap_or(0);
                        if n == 0 {
                            break;
                        }
                        buf.extend_from_slice(&chunk[..n]);
                    }
                    let posted = String::from_utf8_lossy(&buf[body_start..]).into_owned();
                    let body = body.replace("{posted}", &posted);
                    let resp = format!(
                        "HTTP/1.1 {status} X\r\ncontent-length: {}\r\nconnection: close\r\n{headers}\r\n{body}",
                        body.len()
                    );
                    let _ = sock.write_all(resp.as_bytes()).await;
                });
            }
        });
        format!("http://{addr}")
    }

    #[tokio::test]
    async fn an_echoing_token_endpoint_never_gets_the_secret_into_a_message() {
        let secret = "s3cr3t+/= &x";
        // The raw form body back, as text.
        let url = server(400, "content-type: text/plain\r\n", "{posted}").await;
        let t = target_for(&url, secret);
        let f = t.client.token(false).await.unwrap_err();
        assert_eq!(f.message, "token request refused (HTTP 400)");
        assert!(!t.health().1.contains("s3cr3t"), "{:?}", t.health());
        // A JSON refusal whose description echoes the body: kept, redacted.
        let url = server(
            401,
            "content-type: application/json\r\n",
            r#"{"error": "invalid_client", "error_description": "got {posted}", "trace": "{posted}"}"#,
        )
        .await;
        let t = target_for(&url, secret);
        let f = t.client.token(false).await.unwrap_err();
        assert!(f.message.starts_with("token request refused (HTTP 401): invalid_client: got "), "{}", f.message);
        assert!(!f.message.contains("s3cr3t") && f.message.contains("[redacted]"), "{}", f.message);
        assert!(!f.message.contains("trace"), "{}", f.message);
        let (h, detail) = t.health();
        assert_eq!(h, Health::AuthFailed);
        assert!(!detail.contains("s3cr3t"), "{detail}");
    }

    #[tokio::test]
    async fn redirects_are_not_followed() {
        // A token endpoint that redirects (307 keeps the POST body) elsewhere.
        let elsewhere = server(200, "", "{posted}").await;
        let loc: &'static str = Box::leak(format!("location: {elsewhere}/steal\r\n").into_boxed_str());
        let url = server(307, loc, "").await;
        let t = target_for(&url, "s3cr3t");
        let f = t.client.token(false).await.unwrap_err();
        assert_eq!(f.message, "token request refused (HTTP 307)");
    }

    #[tokio::test]
    async fn a_huge_expires_in_gives_a_usable_token() {
        let url = server(
            200,
            "content-type: application/json\r\n",
            r#"{"access_token": "tok", "expires_in": 18446744073709551615}"#,
        )
        .await;
        let t = target_for(&url, "s");
        assert_eq!(t.client.token(false).await.unwrap(), "tok");
        assert_eq!(t.client.redact("Bearer tok"), "Bearer [redacted]");
    }

    #[tokio::test]
    async fn a_pause_ends_when_the_worker_stops() {
        let (tx, rx) = tokio::sync::watch::channel(false);
        let policy = TargetPolicy { allow_loopback: true, ..TargetPolicy::default() };
        let cfg = json!({"tenant_id": "t", "client_id": "c", "site_id": "s", "base_url": "http://127.0.0.1:9",
                         "authority_url": "http://127.0.0.1:9"});
        let t =
            GraphTarget::new(GraphSettings::from_config("x", &cfg, &policy).unwrap(), "s".into(), Some(rx)).unwrap();
        t.client.pause(1e300);
        let started = Instant::now();
        let stop = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(200)).await;
            tx.send(true).unwrap();
            tx
        });
        let f = t.client.wait_turn(RU_WRITE, 1).await.unwrap_err();
        assert_eq!(f.class, ErrorClass::Throttled);
        assert!(!f.sent);
        assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());
        drop(stop.await);
    }
}
