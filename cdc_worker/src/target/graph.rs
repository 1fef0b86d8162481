//! SharePoint / Teams lists through Microsoft Graph.
//!
//! - Auth: OAuth2 client credentials against `{authority_url}/{tenant_id}/oauth2/v2.0/token`
//!   (scope `https://graph.microsoft.com/.default`); the token is refreshed five
//!   minutes before it expires, and at once when Graph answers 401.
//! - Writes go in JSON `$batch`es of at most 20 requests; a move is a create
//!   in the new list and a delete in the old one that depends on it.
//! - A resource-unit rate limiter (GCRA, governor) spends at most the
//!   target's `budget_per_min` (default 1,250 RU/min: 2 RU per write, 1 per
//!   read), so a sustained run rarely meets a 429. `Retry-After` (429/503,
//!   also inside a `$batch`) pauses every request of this target.
//! - Envelope failures (network, 5xx, garbage) are retried here with capped
//!   exponential backoff and full jitter; what still fails is classified per
//!   export (transient / throttled / auth / definite) for `sync.complete`.
//! - An export whose earlier attempt may have reached Graph (`verify`) looks
//!   its `SyncKey` up first and adopts the item instead of creating a twin.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use serde_json::{json, Map, Value};

use super::{ApplyContext, BoxFuture, ErrorClass, Export, Health, Op, OpResult, Target, TargetSetupError};

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
const ENVELOPE_ATTEMPTS: u32 = 4;
const BACKOFF_BASE: Duration = Duration::from_millis(500);
const BACKOFF_CAP: Duration = Duration::from_secs(30);
const TOKEN_MARGIN: Duration = Duration::from_secs(300);

/// Characters escaped in a URL path segment.
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'_').remove(b'.').remove(b'~');

struct Token {
    value: String,
    refresh_at: Instant,
}

/// The Graph adapter for one target.
pub struct GraphTarget {
    name: String,
    base_url: String,
    token_url: String,
    client_id: String,
    secret: String,
    site: String,
    http: reqwest::Client,
    token: tokio::sync::Mutex<Option<Token>>,
    limiter: DefaultDirectRateLimiter,
    burst: u32,
    /// `$batch` requests in flight at once.
    concurrency: usize,
    pause_until: Mutex<Option<Instant>>,
    health: Mutex<(Health, String)>,
}

impl std::fmt::Debug for GraphTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the secret or the token.
        f.debug_struct("GraphTarget").field("name", &self.name).field("base_url", &self.base_url).finish()
    }
}

/// A failure of a whole request (before per-export classification).
#[derive(Debug, Clone)]
struct Failure {
    class: ErrorClass,
    message: String,
    retry_after: Option<f64>,
    sent: bool,
}

impl Failure {
    fn to_result(&self, id: i64) -> OpResult {
        OpResult { retry_after: self.retry_after, ..OpResult::failed(id, self.class, self.message.clone(), self.sent) }
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

/// Graph's error message from a response body, or the body itself, shortened.
fn graph_message(body: &Value) -> String {
    if let Some(m) = body.pointer("/error/message").and_then(Value::as_str) {
        let code = body.pointer("/error/code").and_then(Value::as_str).unwrap_or("error");
        return format!("{code}: {m}");
    }
    if let Some(m) = body.get("error_description").and_then(Value::as_str) {
        return m.to_owned();
    }
    let s = body.to_string();
    s.chars().take(300).collect()
}

fn retry_after_of(headers: &Map<String, Value>) -> Option<f64> {
    headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("retry-after"))
        .and_then(|(_, v)| v.as_str().map(str::to_owned).or_else(|| v.as_u64().map(|n| n.to_string())))
        .and_then(|s| s.trim().parse::<f64>().ok())
}

/// Capped exponential backoff with full jitter: a random delay in
/// [0, min(cap, base·2^attempt)].
pub fn backoff(attempt: u32) -> Duration {
    let ceiling = BACKOFF_BASE.saturating_mul(1u32 << attempt.min(16)).min(BACKOFF_CAP);
    ceiling.mul_f64(rand::random::<f64>())
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

/// The fields Graph receives for a payload: references become
/// `<Name>LookupId`; on a create, NULLs are left out.
fn graph_fields(payload: &Value, create: bool) -> Result<Map<String, Value>, String> {
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
                    return Err(format!(
                        "field {k} refers to row {} of definition {}, which is not on the target yet",
                        r.get("@ref").map(Value::to_string).unwrap_or_default(),
                        r.get("@def").and_then(Value::as_str).unwrap_or("?")
                    ))
                }
            },
            Value::Null if create => {}
            // Arrays and JSON documents go into text (note) columns as JSON.
            Value::Array(_) | Value::Object(_) => {
                out.insert(k.clone(), Value::String(v.to_string()));
            }
            other => {
                out.insert(k.clone(), other.clone());
            }
        }
    }
    Ok(out)
}

impl GraphTarget {
    /// Builds the adapter from the target's configuration and secret.
    pub fn new(name: &str, config: &Value, secret: String) -> Result<Self, TargetSetupError> {
        let need = |key: &str| {
            cfg_str(config, key).map(str::to_owned).ok_or_else(|| TargetSetupError::Config {
                target: name.to_owned(),
                message: format!("config lacks {key}"),
            })
        };
        let tenant = need("tenant_id")?;
        let client_id = need("client_id")?;
        let site = need("site_id")?;
        let base_url = cfg_str(config, "base_url").unwrap_or("https://graph.microsoft.com/v1.0").trim_end_matches('/');
        let authority =
            cfg_str(config, "authority_url").unwrap_or("https://login.microsoftonline.com").trim_end_matches('/');
        let budget = config
            .get("budget_per_min")
            .and_then(Value::as_f64)
            .map(|b| b.max(1.0).min(f64::from(u32::MAX)) as u32)
            .unwrap_or(DEFAULT_BUDGET_PER_MIN);
        let timeout = config.get("timeout_ms").and_then(Value::as_u64).unwrap_or(30_000);
        let concurrency = config
            .get("max_concurrent_batches")
            .and_then(Value::as_u64)
            .map(|c| c.clamp(1, 16) as usize)
            .unwrap_or(DEFAULT_CONCURRENT_BATCHES);
        // A burst of one full batch of writes (at most half the budget). GCRA
        // admits up to burst + rate x 60 s in any minute, and Graph counts a
        // sliding minute: the rate is what the burst leaves, so that no minute
        // ever exceeds the budget (pacing at the full budget drew 3.8% 429s).
        let burst = (BATCH_LIMIT as u32 * RU_WRITE).min(budget / 2).max(1);
        let rate = budget.saturating_sub(burst).max(1);
        let quota = Quota::per_minute(NonZeroU32::new(rate).expect("non-zero"))
            .allow_burst(NonZeroU32::new(burst).expect("non-zero"));
        let http = reqwest::Client::builder()
            .timeout(Duration::from_millis(timeout))
            .connect_timeout(Duration::from_secs(10))
            .user_agent(concat!("syncbridge/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| TargetSetupError::Config { target: name.to_owned(), message: e.to_string() })?;
        Ok(Self {
            name: name.to_owned(),
            base_url: base_url.to_owned(),
            token_url: format!("{authority}/{}/oauth2/v2.0/token", seg(&tenant)),
            client_id,
            secret,
            site,
            http,
            token: tokio::sync::Mutex::new(None),
            limiter: RateLimiter::direct(quota),
            burst,
            concurrency,
            pause_until: Mutex::new(None),
            health: Mutex::new((Health::Ok, String::new())),
        })
    }

    fn set_health(&self, h: Health, msg: impl Into<String>) {
        *self.health.lock().unwrap_or_else(|p| p.into_inner()) = (h, super::clean_message(&msg.into()));
    }

    fn pause(&self, secs: f64) {
        let until = Instant::now() + Duration::from_secs_f64(secs.clamp(0.0, 600.0));
        let mut p = self.pause_until.lock().unwrap_or_else(|p| p.into_inner());
        if p.is_none_or(|cur| cur < until) {
            *p = Some(until);
        }
    }

    async fn wait_turn(&self, ru: u32) {
        let until = *self.pause_until.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(until) = until {
            tokio::time::sleep_until(until.into()).await;
        }
        let mut left = ru;
        while left > 0 {
            let n = left.min(self.burst);
            // n <= burst: never InsufficientCapacity.
            let _ = self.limiter.until_n_ready(NonZeroU32::new(n).expect("non-zero")).await;
            left -= n;
        }
    }

    async fn token(&self, force: bool) -> Result<String, Failure> {
        let mut guard = self.token.lock().await;
        if !force {
            if let Some(t) = guard.as_ref().filter(|t| Instant::now() < t.refresh_at) {
                return Ok(t.value.clone());
            }
        }
        let form = [
            ("grant_type", "client_credentials"),
            ("client_id", self.client_id.as_str()),
            ("client_secret", self.secret.as_str()),
            ("scope", "https://graph.microsoft.com/.default"),
        ];
        let resp = self.http.post(&self.token_url).form(&form).send().await.map_err(|e| {
            let message = format!("token endpoint unreachable: {}", without_url(&e));
            self.set_health(Health::Unreachable, message.clone());
            Failure { class: ErrorClass::Transient, message, retry_after: None, sent: false }
        })?;
        let status = resp.status();
        let body: Value = resp.json().await.unwrap_or(Value::Null);
        if !status.is_success() {
            let msg = format!("token request refused ({status}): {}", graph_message(&body));
            let health = if status.is_server_error() { Health::Unreachable } else { Health::AuthFailed };
            self.set_health(health, msg.clone());
            // Wrong credentials do not mend themselves; a 5xx may.
            let class = if status.is_server_error() { ErrorClass::Transient } else { ErrorClass::Definite };
            return Err(Failure { class, message: msg, retry_after: None, sent: false });
        }
        let (Some(value), Some(expires)) =
            (body.get("access_token").and_then(Value::as_str), body.get("expires_in").and_then(Value::as_u64))
        else {
            return Err(Failure {
                class: ErrorClass::Transient,
                message: "the token endpoint answered without access_token/expires_in".into(),
                retry_after: None,
                sent: false,
            });
        };
        let life = Duration::from_secs(expires);
        let refresh_at = Instant::now() + life.saturating_sub(TOKEN_MARGIN).max(life / 2);
        *guard = Some(Token { value: value.to_owned(), refresh_at });
        tracing::debug!(target = %self.name, expires_in = expires, "acquired a Graph token");
        Ok(value.to_owned())
    }

    /// One HTTP request with the retry policy: network errors, 5xx and
    /// 429/503 (after their `Retry-After`) are retried with capped
    /// exponential backoff and full jitter, a 401 once after renewing the
    /// token. Returns the status and body of the first answer that is none of
    /// those; a second 401 or a 403 is an `auth` failure.
    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
        ru: u32,
    ) -> Result<(u16, String), Failure> {
        let url = format!("{}{path}", self.base_url);
        let mut last: Option<Failure> = None;
        let mut refreshed = false;
        let mut attempt = 0;
        while attempt < ENVELOPE_ATTEMPTS {
            if attempt > 0 {
                let d = backoff(attempt);
                tracing::debug!(target = %self.name, attempt, delay_ms = d.as_millis() as u64, "retrying a Graph request");
                tokio::time::sleep(d).await;
            }
            attempt += 1;
            self.wait_turn(ru).await;
            let token = self.token(false).await?;
            let mut rb = self.http.request(method.clone(), &url).bearer_auth(&token);
            if let Some(b) = body {
                rb = rb.json(b);
            }
            let resp = match rb.send().await {
                Ok(r) => r,
                Err(e) => {
                    self.set_health(Health::Unreachable, without_url(&e));
                    last = Some(Failure {
                        class: ErrorClass::Transient,
                        message: format!("Graph unreachable: {}", without_url(&e)),
                        retry_after: None,
                        // Once a request may have gone out, the outcome stays unknown.
                        sent: !e.is_connect() || last.as_ref().is_some_and(|l| l.sent),
                    });
                    continue;
                }
            };
            let status = resp.status().as_u16();
            let retry_after = resp
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .and_then(|s| s.trim().parse::<f64>().ok());
            let text = match resp.text().await {
                Ok(t) => t,
                Err(e) => {
                    last = Some(Failure {
                        class: ErrorClass::Transient,
                        message: format!("the answer broke off: {}", without_url(&e)),
                        retry_after: None,
                        sent: true,
                    });
                    continue;
                }
            };
            match status {
                401 if !refreshed => {
                    refreshed = true;
                    attempt -= 1;
                    self.token(true).await?;
                }
                401 | 403 => {
                    let msg = format!("Graph refused the credentials ({status}): {}", short(&text));
                    self.set_health(Health::AuthFailed, msg.clone());
                    return Err(Failure { class: ErrorClass::Auth, message: msg, retry_after: None, sent: false });
                }
                429 | 503 => {
                    let secs = retry_after.unwrap_or(1.0);
                    self.pause(secs);
                    self.set_health(Health::Throttled, format!("{status} with Retry-After {secs}s"));
                    last = Some(Failure {
                        class: ErrorClass::Throttled,
                        message: format!("Graph throttled the request ({status}, Retry-After {secs}s)"),
                        retry_after: Some(secs),
                        sent: status == 503,
                    });
                }
                s if s >= 500 => {
                    self.set_health(Health::Unreachable, format!("HTTP {s}"));
                    last = Some(Failure {
                        class: ErrorClass::Transient,
                        message: format!("Graph answered {s}: {}", short(&text)),
                        retry_after: None,
                        sent: true,
                    });
                }
                _ => return Ok((status, text)),
            }
        }
        Err(last.unwrap_or(Failure {
            class: ErrorClass::Transient,
            message: "no attempt was made".into(),
            retry_after: None,
            sent: false,
        }))
    }

    /// Sends one `$batch` (at most 20 requests). Returns the inner responses
    /// by request id.
    async fn send_batch(&self, requests: &[Value], ru: u32) -> Result<HashMap<String, Inner>, Failure> {
        let envelope = json!({ "requests": requests });
        let (status, text) = self.call(reqwest::Method::POST, "/$batch", Some(&envelope), ru).await?;
        if status != 200 {
            // The batch itself was refused: nothing in it ran.
            return Err(Failure {
                class: ErrorClass::Definite,
                message: format!("Graph refused the $batch ({status}): {}", short(&text)),
                retry_after: None,
                sent: false,
            });
        }
        match parse_batch_answer(&text) {
            Ok(map) => {
                self.set_health(Health::Ok, "");
                Ok(map)
            }
            Err(e) => {
                // The requests may have run: nothing is marked done, and
                // adds are verified by SyncKey on the next attempt.
                self.set_health(Health::Unreachable, e.clone());
                Err(Failure { class: ErrorClass::Transient, message: e, retry_after: None, sent: true })
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
        let (status, text) = self.call(method, path, body, ru).await?;
        if text.is_empty() {
            return Ok((status, Value::Null));
        }
        let body = serde_json::from_str(&text).map_err(|e| Failure {
            class: ErrorClass::Transient,
            message: format!("Graph answered {status} with a body that is not JSON ({e}): {}", short(&text)),
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
        let list = payload.get("list").and_then(Value::as_str).unwrap_or(&e.list).to_owned();
        let mut columns = Vec::new();
        for c in payload.get("columns").and_then(Value::as_array).cloned().unwrap_or_default() {
            // Every list has Title already (a field mapped to it fills it).
            if c.get("name").and_then(Value::as_str).is_some_and(|n| n.eq_ignore_ascii_case("Title")) {
                continue;
            }
            let lookup = c.get("reference").and_then(Value::as_str).and_then(|d| ctx.definition_lists.get(d));
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
                let q = format!("{lists}?$filter=displayName eq '{}'", list.replace('\'', "''"));
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
                    Ok((s, v)) => {
                        OpResult::failed(e.id, ErrorClass::Definite, format!("{s}: {}", graph_message(&v)), false)
                    }
                    Err(f) => f.to_result(e.id),
                }
            }
            Ok((s, v)) => OpResult::failed(
                e.id,
                ErrorClass::Definite,
                format!("creating list {list}: {s}: {}", graph_message(&v)),
                false,
            ),
        }
    }

    fn list_ref(&self, ctx: &ApplyContext, definition: &str, list: &str) -> String {
        ctx.list_ids.get(&(definition.to_owned(), list.to_owned())).cloned().unwrap_or_else(|| list.to_owned())
    }

    /// Looks the SyncKeys of `exports` up in their lists: export id → item id.
    async fn lookup(&self, exports: &[&Export], ctx: &ApplyContext) -> Result<HashMap<i64, Option<String>>, Failure> {
        let mut found = HashMap::new();
        for chunk in exports.chunks(BATCH_LIMIT) {
            let reqs: Vec<Value> = chunk
                .iter()
                .map(|e| {
                    let key = e.sync_key.clone().unwrap_or_default().replace('\'', "''");
                    let path = self.items_path(&self.list_ref(ctx, &e.definition, &e.list));
                    json!({
                        "id": e.id.to_string(), "method": "GET",
                        "url": format!("{path}?$expand=fields&$filter=fields/SyncKey eq '{}'", utf8_percent_encode(&key, SEGMENT)),
                    })
                })
                .collect();
            let answers = self.send_batch(&reqs, RU_QUERY * chunk.len() as u32).await?;
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
                        message: format!("looking up SyncKey: {}: {}", a.status, graph_message(&a.body)),
                        retry_after: retry_after_of(&a.headers),
                        sent: false,
                    });
                }
                let id = a.body.pointer("/value/0/id").and_then(Value::as_str).map(str::to_owned);
                found.insert(e.id, id);
            }
        }
        Ok(found)
    }

    async fn apply_items(&self, exports: &[&Export], ctx: &ApplyContext) -> Vec<OpResult> {
        let mut results = Vec::with_capacity(exports.len());
        // Exports whose earlier attempt may have created the item: look first.
        let verify: Vec<&Export> =
            exports.iter().copied().filter(|e| e.verify && matches!(e.op, Op::Add | Op::Move)).collect();
        let adopted = if verify.is_empty() {
            HashMap::new()
        } else {
            match self.lookup(&verify, ctx).await {
                Ok(m) => m,
                Err(f) => {
                    // Without the lookup nothing may be created: the verified
                    // exports wait; the others go on.
                    results.extend(verify.iter().map(|e| Failure { sent: false, ..f.clone() }.to_result(e.id)));
                    HashMap::new()
                }
            }
        };
        // Build each export's requests (1, or 2 for a move).
        let mut groups: Vec<(&Export, Vec<Value>, u32)> = Vec::new();
        for e in exports {
            if e.verify && matches!(e.op, Op::Add | Op::Move) && !adopted.contains_key(&e.id) {
                continue; // already reported above
            }
            match self.requests_for(e, ctx, adopted.get(&e.id).cloned().flatten()) {
                Ok((reqs, ru)) => groups.push((e, reqs, ru)),
                Err(r) => results.push(*r),
            }
        }
        // Pack into $batches of at most 20 requests, a move's pair together.
        let mut batch: Vec<(&Export, Vec<Value>, u32)> = Vec::new();
        let mut size = 0;
        let mut pending_batches = Vec::new();
        for g in groups {
            if size + g.1.len() > BATCH_LIMIT {
                pending_batches.push(std::mem::take(&mut batch));
                size = 0;
            }
            size += g.1.len();
            batch.push(g);
        }
        if !batch.is_empty() {
            pending_batches.push(batch);
        }
        // Up to `concurrency` $batches in flight: the exports of one claim
        // touch distinct keys, so their order does not matter. The RU limiter
        // still paces the sum.
        let sends: Vec<_> = pending_batches.into_iter().map(|b| self.send_group(b, &adopted)).collect();
        let sent =
            futures_util::stream::iter(sends).buffer_unordered(self.concurrency).collect::<Vec<Vec<OpResult>>>().await;
        results.extend(sent.into_iter().flatten());
        results
    }

    /// Sends one `$batch` of export groups: one result per export.
    async fn send_group(
        &self,
        b: Vec<(&Export, Vec<Value>, u32)>,
        adopted: &HashMap<i64, Option<String>>,
    ) -> Vec<OpResult> {
        let reqs: Vec<Value> = b.iter().flat_map(|g| g.1.iter().cloned()).collect();
        let ru: u32 = b.iter().map(|g| g.2).sum();
        match self.send_batch(&reqs, ru).await {
            Err(f) => b.iter().map(|g| f.to_result(g.0.id)).collect(),
            Ok(answers) => {
                b.iter().map(|(e, _, _)| self.result_for(e, &answers, adopted.get(&e.id).cloned().flatten())).collect()
            }
        }
    }

    /// The `$batch` requests carrying out one export, and their cost.
    fn requests_for(
        &self,
        e: &Export,
        ctx: &ApplyContext,
        adopt: Option<String>,
    ) -> Result<(Vec<Value>, u32), Box<OpResult>> {
        let id = e.id.to_string();
        let payload = e.payload.clone().unwrap_or(Value::Null);
        let list = self.items_path(&self.list_ref(ctx, &e.definition, &e.list));
        let definite = |m: String| Box::new(OpResult::failed(e.id, ErrorClass::Definite, m, false));
        let not_yet = |m: String| Box::new(OpResult::failed(e.id, ErrorClass::Transient, m, false));
        let json_headers = json!({ "Content-Type": "application/json" });
        let create_or_adopt = |rid: String| -> Result<Value, Box<OpResult>> {
            match &adopt {
                Some(item) => {
                    let fields = graph_fields(&payload, false).map_err(not_yet)?;
                    Ok(json!({ "id": rid, "method": "PATCH", "url": format!("{list}/{}/fields", seg(item)),
                               "headers": json_headers, "body": fields }))
                }
                None => {
                    let mut fields = graph_fields(&payload, true).map_err(not_yet)?;
                    fields.insert("SyncKey".into(), Value::String(e.sync_key.clone().unwrap_or_default()));
                    Ok(
                        json!({ "id": rid, "method": "POST", "url": list, "headers": json_headers, "body": { "fields": fields } }),
                    )
                }
            }
        };
        match e.op {
            Op::Provision => Err(definite("a provision in an item batch".into())),
            Op::Add => Ok((vec![create_or_adopt(id)?], RU_WRITE)),
            Op::Update => {
                let item = e.target_id.as_deref().ok_or_else(|| definite("an update without the item's id".into()))?;
                let fields = graph_fields(&payload, false).map_err(not_yet)?;
                Ok((
                    vec![json!({ "id": id, "method": "PATCH", "url": format!("{list}/{}/fields", seg(item)),
                                 "headers": json_headers, "body": fields })],
                    RU_WRITE,
                ))
            }
            Op::Delete => {
                let item = e.target_id.as_deref().ok_or_else(|| definite("a delete without the item's id".into()))?;
                Ok((vec![json!({ "id": id, "method": "DELETE", "url": format!("{list}/{}", seg(item)) })], RU_WRITE))
            }
            Op::Move => {
                let create = create_or_adopt(format!("{id}c"))?;
                match (&e.target_id, &e.from_list) {
                    (Some(item), Some(from)) => {
                        let old = self.items_path(&self.list_ref(ctx, &e.definition, from));
                        Ok((
                            vec![
                                create,
                                json!({ "id": format!("{id}d"), "method": "DELETE", "url": format!("{old}/{}", seg(item)),
                                        "dependsOn": [format!("{id}c")] }),
                            ],
                            2 * RU_WRITE,
                        ))
                    }
                    _ => Ok((vec![create], RU_WRITE)),
                }
            }
        }
    }

    fn result_for(&self, e: &Export, answers: &HashMap<String, Inner>, adopted: Option<String>) -> OpResult {
        let id = e.id.to_string();
        let (main_id, delete_id) = match e.op {
            Op::Move => (format!("{id}c"), e.target_id.as_ref().and(e.from_list.as_ref()).map(|_| format!("{id}d"))),
            _ => (id, None),
        };
        let Some(a) = answers.get(&main_id) else {
            return OpResult::failed(
                e.id,
                ErrorClass::Transient,
                "the $batch answer lacks this request's response",
                true,
            );
        };
        let mut r = self.classify(e, a);
        if r.ok {
            match e.op {
                Op::Add | Op::Move => {
                    r.target_id =
                        adopted.clone().or_else(|| a.body.get("id").and_then(Value::as_str).map(str::to_owned));
                    if r.target_id.is_none() {
                        return OpResult::failed(e.id, ErrorClass::Transient, "the created item has no id", true);
                    }
                    r.etag = a
                        .body
                        .get("eTag")
                        .and_then(Value::as_str)
                        .map(str::to_owned)
                        .or_else(|| etag_header(&a.headers));
                }
                Op::Update => {
                    r.etag = etag_header(&a.headers)
                        .or_else(|| a.body.get("@odata.etag").and_then(Value::as_str).map(str::to_owned));
                }
                _ => {}
            }
        }
        if let (true, Some(did)) = (r.ok, delete_id) {
            // The old item of a move: gone or already gone is fine; otherwise
            // the move is retried (the new item is found by SyncKey).
            match answers.get(&did) {
                Some(d) if d.status == 204 || d.status == 200 || d.status == 404 => {}
                Some(d) => {
                    let mut f = self.classify(e, d);
                    f.sent = Some(true);
                    return f;
                }
                None => {
                    return OpResult::failed(
                        e.id,
                        ErrorClass::Transient,
                        "the $batch answer lacks the move's delete",
                        true,
                    )
                }
            }
        }
        r
    }

    fn classify(&self, e: &Export, a: &Inner) -> OpResult {
        let msg = || graph_message(&a.body);
        match a.status {
            200..=299 => OpResult::ok(e.id),
            404 if e.op == Op::Delete => OpResult::ok(e.id), // already gone
            404 => OpResult::failed(
                e.id,
                ErrorClass::Definite,
                format!("404 item not found on the target: {}", msg()),
                true,
            ),
            412 => OpResult::failed(
                e.id,
                ErrorClass::Definite,
                format!("412 the item changed on the target: {}", msg()),
                true,
            ),
            424 => OpResult::failed(e.id, ErrorClass::Transient, "424 a request it depended on failed", false),
            429 | 503 => {
                let ra = retry_after_of(&a.headers).unwrap_or(1.0);
                self.pause(ra);
                self.set_health(Health::Throttled, format!("{} inside $batch", a.status));
                OpResult {
                    retry_after: Some(ra),
                    ..OpResult::failed(
                        e.id,
                        ErrorClass::Throttled,
                        format!("{} throttled: {}", a.status, msg()),
                        a.status == 503,
                    )
                }
            }
            401 => OpResult::failed(e.id, ErrorClass::Auth, format!("401: {}", msg()), false),
            s if s >= 500 => OpResult::failed(e.id, ErrorClass::Transient, format!("{s}: {}", msg()), true),
            s => OpResult::failed(e.id, ErrorClass::Definite, format!("{s}: {}", msg()), true),
        }
    }
}

fn etag_header(h: &Map<String, Value>) -> Option<String> {
    h.iter().find(|(k, _)| k.eq_ignore_ascii_case("etag")).and_then(|(_, v)| v.as_str()).map(str::to_owned)
}

fn short(s: &str) -> String {
    s.chars().take(300).collect()
}

/// A reqwest error without the URL (it may carry query strings).
fn without_url(e: &reqwest::Error) -> String {
    let mut msg = e.to_string();
    if let Some(u) = e.url() {
        msg = msg.replace(u.as_str(), "<url>");
    }
    let mut src = std::error::Error::source(e);
    while let Some(s) = src {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        src = s.source();
    }
    msg
}

/// Parses a `$batch` answer: id → response. Anything else than
/// `{"responses": [{"id", "status", ...}]}` is an error.
fn parse_batch_answer(text: &str) -> Result<HashMap<String, Inner>, String> {
    let v: Value =
        serde_json::from_str(text).map_err(|e| format!("the $batch answer is not JSON ({e}): {}", short(text)))?;
    let responses = v
        .get("responses")
        .and_then(Value::as_array)
        .ok_or_else(|| format!("the $batch answer has no responses array: {}", short(text)))?;
    let mut out = HashMap::new();
    for r in responses {
        let id = r.get("id").and_then(|i| i.as_str().map(str::to_owned).or_else(|| i.as_u64().map(|n| n.to_string())));
        let status = r.get("status").and_then(Value::as_u64).and_then(|s| u16::try_from(s).ok());
        let (Some(id), Some(status)) = (id, status) else {
            return Err(format!("a $batch response lacks id or status: {}", short(&r.to_string())));
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

    fn probe(&self) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(async move {
            // One attempt, no retry loop: the caller paces the probes.
            let token = self.token(false).await.map_err(|f| f.message)?;
            let url = format!("{}/sites/{}", self.base_url, seg(&self.site));
            match self.http.get(&url).bearer_auth(&token).send().await {
                Err(e) => Err(format!("Graph unreachable: {}", without_url(&e))),
                Ok(r) if r.status().is_server_error() => Err(format!("Graph answered {}", r.status().as_u16())),
                Ok(_) => {
                    self.set_health(Health::Ok, "");
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
            results
        })
    }

    fn health(&self) -> (Health, String) {
        self.health.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let f = graph_fields(&p, true).unwrap();
        assert_eq!(
            Value::Object(f),
            json!({"Title": "x", "BossLookupId": "42", "Tags": "[\"a\",\"b\"]", "Meta": "{\"k\":1}"})
        );
        let f = graph_fields(&p, false).unwrap();
        assert_eq!(f.get("Gone"), Some(&Value::Null));
        let unresolved = json!({"Boss": {"@ref": "7", "@def": "people", "target_id": null}});
        assert!(graph_fields(&unresolved, true).unwrap_err().contains("not on the target yet"));
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
    fn backoff_is_capped_and_jittered() {
        for a in 0..40 {
            assert!(backoff(a) <= BACKOFF_CAP);
        }
        let samples: std::collections::HashSet<u128> = (0..20).map(|_| backoff(5).as_micros()).collect();
        assert!(samples.len() > 1, "no jitter");
    }
}
