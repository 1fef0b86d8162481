//! Linear's side of HTTP: one GraphQL endpoint, the personal API key in
//! `Authorization` as it is (no `Bearer`), answers that are GraphQL
//! documents whatever their status, and pacing by Linear's own headers
//! (`x-ratelimit-requests-*`, `x-ratelimit-complexity-*`, resets in epoch
//! milliseconds) on top of the shared budget, `Retry-After` and backoff of
//! [`HttpClient`].

use std::sync::Mutex;
use std::time::{Duration, Instant};

use reqwest::header::{HeaderMap, AUTHORIZATION};
use serde_json::{json, Value};

use crate::metrics;
use crate::target::http::{backoff, parse_retry_after, read_body, without_url, Failure, HttpClient, MAX_BODY};
use crate::target::policy::bounded;
use crate::target::{ErrorClass, Health};

/// Tries of one request (the first included).
const ATTEMPTS: u32 = 4;

/// One of Linear's leaky buckets as its headers last showed it.
#[derive(Debug, Clone, Copy)]
struct Seen {
    limit: f64,
    remaining: f64,
    /// Units refilled a second, as low as the headers allow: `remaining`
    /// is a whole number (the bucket may hold up to one unit more), so the
    /// refill to `limit` by the reset is at least `limit - remaining - 1`.
    rate: f64,
    /// When it was seen (or last taken from).
    at: Instant,
}

impl Seen {
    fn from_headers(h: &HeaderMap, what: &str) -> Option<Self> {
        let num = |k: String| h.get(k).and_then(|v| v.to_str().ok()).and_then(|v| v.trim().parse::<f64>().ok());
        let limit = num(format!("x-ratelimit-{what}-limit"))?;
        let remaining = num(format!("x-ratelimit-{what}-remaining"))?;
        let reset_ms = num(format!("x-ratelimit-{what}-reset")).unwrap_or(0.0);
        if !(limit.is_finite() && remaining.is_finite() && reset_ms.is_finite() && limit > 0.0) {
            return None;
        }
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as f64)
            .unwrap_or(0.0);
        // Epoch milliseconds (a value in seconds is read as such).
        let reset_in = if reset_ms > 1e12 { (reset_ms - now_ms) / 1000.0 } else { reset_ms - now_ms / 1000.0 };
        let reset_in = reset_in.clamp(0.0, crate::target::http::MAX_PAUSE.as_secs_f64());
        let remaining = remaining.clamp(0.0, limit);
        let rate = if reset_in > 0.0 { (limit - remaining - 1.0).max(0.0) / reset_in } else { 0.0 };
        Some(Self { limit, remaining, rate, at: Instant::now() })
    }

    fn have(&self) -> f64 {
        (self.remaining + self.rate * self.at.elapsed().as_secs_f64()).min(self.limit)
    }

    /// Takes `n` units (a request about to go).
    fn take(&mut self, n: f64) {
        self.remaining = (self.have() - n).max(0.0);
        self.at = Instant::now();
    }

    /// Seconds to wait before `need` units are there (0 when the refill
    /// cannot be told: the next answer's headers will say).
    fn wait_for(&self, need: f64) -> f64 {
        let need = need.min(self.limit);
        let have = self.have();
        if have >= need || self.rate <= 0.0 {
            return 0.0;
        }
        (need - have) / self.rate
    }
}

/// What the headers said last, and what is on its way meanwhile.
#[derive(Debug, Default)]
pub(crate) struct Limits {
    requests: Option<Seen>,
    complexity: Option<Seen>,
    /// Requests sent and not answered yet (the lanes of a target share
    /// its buckets): an answer's headers do not count the others.
    in_flight: u32,
    /// Their complexity.
    in_flight_cost: f64,
}

/// A request counted in flight until it is dropped (answered or not).
struct InFlight<'a> {
    limits: &'a Mutex<Limits>,
    cost: f64,
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        let mut l = self.limits.lock().unwrap_or_else(|p| p.into_inner());
        l.in_flight = l.in_flight.saturating_sub(1);
        l.in_flight_cost = (l.in_flight_cost - self.cost).max(0.0);
    }
}

/// A GraphQL answer: the HTTP status and the document.
#[derive(Debug, Clone)]
pub(crate) struct Answer {
    pub(crate) status: u16,
    pub(crate) body: Value,
}

impl Answer {
    /// The errors without a path (the document was refused: nothing ran).
    pub(crate) fn document_errors(&self) -> Vec<&Value> {
        self.errors().into_iter().filter(|e| e.get("path").is_none_or(Value::is_null)).collect()
    }

    /// Every error.
    pub(crate) fn errors(&self) -> Vec<&Value> {
        self.body.get("errors").and_then(Value::as_array).map(|a| a.iter().collect()).unwrap_or_default()
    }

    /// The error of root field `key`, if any.
    pub(crate) fn error_of(&self, key: &str) -> Option<&Value> {
        self.errors().into_iter().find(|e| e.pointer("/path/0").and_then(Value::as_str) == Some(key))
    }
}

/// `extensions.type` of an error.
pub(crate) fn error_type(e: &Value) -> &str {
    e.pointer("/extensions/type").and_then(Value::as_str).unwrap_or("")
}

/// An error's message, bounded.
pub(crate) fn error_message(e: &Value) -> String {
    let m = e.get("message").and_then(Value::as_str).unwrap_or("an error without a message");
    let code = e.pointer("/extensions/code").and_then(Value::as_str);
    match code {
        Some(c) => format!("{}: {}", bounded(c, 100), bounded(m, 500)),
        None => bounded(m, 500),
    }
}

/// How a field's (or a document's) error is treated.
pub(crate) fn classify(e: &Value) -> ErrorClass {
    match error_type(e) {
        "ratelimited" => ErrorClass::Throttled,
        "authentication error" | "forbidden" => ErrorClass::Auth,
        "internal error" | "network error" | "lock timeout" | "unknown" | "bootstrap error" => ErrorClass::Transient,
        // invalid input, user error, graphql error, feature not accessible,
        // usage limit exceeded, other: the same request fails again.
        _ => ErrorClass::Definite,
    }
}

/// Sends GraphQL documents for one target.
pub(crate) struct Gql<'a> {
    pub(crate) client: &'a HttpClient,
    pub(crate) limits: &'a Mutex<Limits>,
}

impl Gql<'_> {
    /// Waits until Linear's buckets (as last seen) hold one more request
    /// and `cost` points; false when the worker stops meanwhile.
    ///
    /// What a request takes is reserved at once (taken from the buckets as
    /// last seen), so that the lanes sharing this target do not all go on
    /// the same remaining request; the next answer's headers correct it.
    /// The request counts as in flight until the guard returned is dropped.
    async fn wait_for_linear(&self, cost: f64) -> Option<InFlight<'_>> {
        loop {
            let wait = {
                let mut l = self.limits.lock().unwrap_or_else(|p| p.into_inner());
                let r = l.requests.map_or(0.0, |s| s.wait_for(1.0));
                let c = l.complexity.map_or(0.0, |s| s.wait_for(cost));
                if r.max(c) <= 0.0 {
                    if let Some(s) = l.requests.as_mut() {
                        s.take(1.0);
                    }
                    if let Some(s) = l.complexity.as_mut() {
                        s.take(cost);
                    }
                    l.in_flight += 1;
                    l.in_flight_cost += cost;
                    return Some(InFlight { limits: self.limits, cost });
                }
                r.max(c)
            };
            tracing::debug!(target = %self.client.name, wait_s = wait, "waiting for Linear's rate-limit buckets to refill");
            // A little over, so the bucket surely holds it.
            let d = Duration::from_secs_f64((wait + 0.05).min(crate::target::http::MAX_PAUSE.as_secs_f64()));
            if !self.client.sleep_or_stop(tokio::time::Instant::now() + d).await {
                return None;
            }
        }
    }

    /// Takes an answer's headers in; the other requests still in flight
    /// (sent by other lanes, perhaps after this one was counted) are taken
    /// from what they show.
    fn saw(&self, h: &HeaderMap, cost: f64) {
        let mut l = self.limits.lock().unwrap_or_else(|p| p.into_inner());
        let others = f64::from(l.in_flight.saturating_sub(1));
        let others_cost = (l.in_flight_cost - cost).max(0.0);
        if let Some(mut s) = Seen::from_headers(h, "requests") {
            s.remaining = (s.remaining - others).max(0.0);
            l.requests = Some(s);
        }
        if let Some(mut s) = Seen::from_headers(h, "complexity") {
            s.remaining = (s.remaining - others_cost).max(0.0);
            l.complexity = Some(s);
        }
    }

    /// Posts a document. Retries what certainly did not run (a refused
    /// connection, a rate-limited answer) and, with `resend_sent`, what
    /// may have (5xx, timeouts, broken answers: reads and idempotent
    /// writes only). Returns the first GraphQL answer that is none of those
    /// (field errors included: the caller reads them per field).
    pub(crate) async fn post(
        &self,
        query: &str,
        variables: Value,
        cost: u32,
        writes: u32,
        resend_sent: bool,
    ) -> Result<Answer, Failure> {
        let body = json!({"query": query, "variables": variables});
        let c = self.client;
        let mut last: Option<Failure> = None;
        let mut attempt = 0;
        while attempt < ATTEMPTS {
            if let Some(l) = last.as_ref().filter(|l| l.sent && !resend_sent) {
                return Err(l.clone());
            }
            if attempt > 0 && !last.as_ref().is_some_and(|l| l.class == ErrorClass::Throttled) {
                let d = backoff(attempt);
                if !c.sleep_or_stop(tokio::time::Instant::now() + d).await {
                    break;
                }
            }
            attempt += 1;
            c.wait_turn(cost, writes).await?;
            let Some(_in_flight) = self.wait_for_linear(f64::from(cost)).await else {
                break;
            };
            let authorization = c.authorization(false).await?;
            let resp = match c.http.post(&c.base_url).header(AUTHORIZATION, authorization).json(&body).send().await {
                Ok(r) => r,
                Err(e) => {
                    metrics::TARGET_REQUEST_ERRORS.inc(&[&c.name, "api"]);
                    let message = format!("Linear unreachable: {}", without_url(&e));
                    c.set_health(Health::Unreachable, message.clone());
                    last = Some(Failure {
                        class: ErrorClass::Transient,
                        message,
                        retry_after: None,
                        sent: !e.is_connect() || last.as_ref().is_some_and(|l| l.sent),
                    });
                    continue;
                }
            };
            let status = resp.status().as_u16();
            let headers = resp.headers().clone();
            self.saw(&headers, f64::from(cost));
            let retry_after = headers.get("retry-after").and_then(|v| v.to_str().ok()).and_then(parse_retry_after);
            let text = match read_body(resp, MAX_BODY).await {
                Ok(t) => t,
                Err(message) => {
                    c.count_answer("api", status, retry_after);
                    last = Some(Failure { class: ErrorClass::Transient, message, retry_after: None, sent: true });
                    continue;
                }
            };
            let doc: Option<Value> = serde_json::from_str(&text).ok().filter(|v: &Value| v.is_object());
            let errors: Vec<Value> =
                doc.as_ref().and_then(|d| d.get("errors")).and_then(Value::as_array).cloned().unwrap_or_default();
            let limited = status == 429 || errors.iter().any(|e| error_type(e) == "ratelimited");
            // A rate-limited answer counts as a 429 whatever its status.
            c.count_answer("api", if limited { 429 } else { status }, retry_after);
            let first_error = errors.first().map(|e| format!(": {}", c.redact(&error_message(e)))).unwrap_or_default();
            if limited {
                let secs = retry_after.unwrap_or_else(|| {
                    let l = self.limits.lock().unwrap_or_else(|p| p.into_inner());
                    l.requests
                        .map_or(0.0, |s| s.wait_for(1.0))
                        .max(l.complexity.map_or(0.0, |s| s.wait_for(f64::from(cost))))
                });
                let secs = if secs > 0.0 { secs } else { 1.0 };
                c.pause(secs);
                c.set_health(Health::Throttled, format!("RATELIMITED (HTTP {status}), waiting {secs:.1}s"));
                last = Some(Failure {
                    class: ErrorClass::Throttled,
                    message: format!(
                        "Linear rate-limited the request (HTTP {status}, retry after {secs:.1}s){first_error}"
                    ),
                    retry_after: Some(secs),
                    sent: false,
                });
                continue;
            }
            let auth = matches!(status, 401 | 403)
                || (doc.as_ref().is_some_and(|d| d.get("data").is_none_or(Value::is_null))
                    && errors.iter().any(|e| e.get("path").is_none() && classify(e) == ErrorClass::Auth));
            if auth {
                let msg = format!("Linear refused the API key (HTTP {status}){first_error}");
                c.set_health(Health::AuthFailed, msg.clone());
                return Err(Failure { class: ErrorClass::Auth, message: msg, retry_after: None, sent: false });
            }
            if status >= 500 || (status == 200 && doc.is_none()) {
                let what = if status >= 500 { format!("HTTP {status}") } else { "an answer that is not JSON".into() };
                c.set_health(Health::Unreachable, format!("Linear answered {what}"));
                last = Some(Failure {
                    class: ErrorClass::Transient,
                    message: format!("Linear answered {what}{first_error}"),
                    retry_after: None,
                    sent: true,
                });
                continue;
            }
            let Some(doc) = doc else {
                // Any other status without a GraphQL document: nothing to go by.
                return Err(Failure {
                    class: ErrorClass::Definite,
                    message: format!("Linear answered HTTP {status} without a GraphQL document"),
                    retry_after: None,
                    sent: false,
                });
            };
            c.set_health(Health::Ok, "");
            return Ok(Answer { status, body: doc });
        }
        Err(last.unwrap_or_else(|| c.stopping()))
    }
}
