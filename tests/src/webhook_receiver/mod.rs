//! A webhook receiver for the tests and the demo, on the emulator harness
//! ([`crate::emulator`]): every `POST` to [`HOOK_PATH`] is verified with an
//! implementation of its own ([`verify`]), never the worker's signer.
//!
//! - A request that does not verify (signature, timestamp out of the
//!   ±5 min tolerance, headers missing) is answered `401` and kept in
//!   [`Receiver::rejected`] with the reason; a test asserts there is none.
//! - A verified request takes the next scripted answer ([`Answer`]: any
//!   status, a `Retry-After`, a `Location` for a 3xx), else the default
//!   one (`204`). Every verified attempt is kept in order
//!   ([`Receiver::attempts`]); one answered 2xx is a delivery, recorded by
//!   its `webhook-id` with how many times it was accepted, so duplicates
//!   (a retry after a lost answer: `Fault::RunThenStatus`) are counted.
//! - The harness's faults (statuses, drops, outages) apply before the
//!   receiver sees a request, as for the other emulators.
//! - A rate limit ([`Receiver::set_requests_per_min`], config
//!   `requests_per_min`): verified requests beyond it in a sliding minute
//!   are answered `429` with the `Retry-After` that ends the excess.
//! - `/_emulator/`: `GET deliveries`, `POST answers` (`[{"status": 429,
//!   "retry_after": "2", "count": 3}, …]`), `POST config` with
//!   `default_status` and `requests_per_min`.

pub mod verify;

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{HeaderValue, LOCATION, RETRY_AFTER};
use hyper::{Response, StatusCode};
use serde_json::{json, Map, Value};

pub use verify::{Verifier, VerifyError, TOLERANCE_SECS};

use crate::emulator::{json_response, Api, Fault, HttpResponse, Meter, Request, Route};

/// Where the receiver takes deliveries.
pub const HOOK_PATH: &str = "/hooks";
/// The answer when none is scripted.
pub const DEFAULT_STATUS: u16 = 204;

/// A scripted answer to one verified request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// The status (any: 2xx delivered, 3xx, 410, 429, 5xx, …).
    pub status: u16,
    /// A `Retry-After` header value, verbatim.
    pub retry_after: Option<String>,
    /// A `Location` header (a redirect the sender must not follow).
    pub location: Option<String>,
}

impl Answer {
    /// Just a status.
    pub fn status(status: u16) -> Self {
        Self { status, retry_after: None, location: None }
    }

    /// A status with `Retry-After`.
    pub fn retry_after(status: u16, value: &str) -> Self {
        Self { status, retry_after: Some(value.into()), location: None }
    }
}

/// One verified request, as it came.
#[derive(Debug, Clone)]
pub struct Attempt {
    /// `webhook-id`.
    pub id: String,
    /// `webhook-timestamp`, as sent.
    pub timestamp: i64,
    /// The status it was answered with.
    pub status: u16,
    /// The body, exactly.
    pub body: Bytes,
    /// `webhook-signature`, as sent (one `v1,…` per secret).
    pub signature: String,
    /// When it arrived.
    pub at: Instant,
}

/// A `webhook-id` answered 2xx at least once.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// The body of its first accepted request.
    pub body: Bytes,
    /// How many requests with this id were accepted (1: no duplicate).
    pub accepted: u32,
    /// Its position among first acceptances (0-based).
    pub seq: usize,
}

/// The receiver's state (an [`Api`] for the harness).
#[derive(Debug)]
pub struct Receiver {
    verifier: Verifier,
    /// A fixed clock for verification (Unix seconds); `None`: the system's.
    pub clock: Option<i64>,
    answers: VecDeque<Answer>,
    default_status: u16,
    attempts: Vec<Attempt>,
    deliveries: BTreeMap<String, Delivery>,
    order: Vec<String>,
    rejected: Vec<(String, VerifyError)>,
    meter: Meter,
    requests_per_min: Option<u32>,
    recent: VecDeque<Instant>,
}

impl Receiver {
    /// A receiver verifying with these `whsec_` secrets.
    pub fn new<S: AsRef<str>>(secrets: &[S]) -> Result<Self, String> {
        Ok(Self {
            verifier: Verifier::new(secrets)?,
            clock: None,
            answers: VecDeque::new(),
            default_status: DEFAULT_STATUS,
            attempts: Vec::new(),
            deliveries: BTreeMap::new(),
            order: Vec::new(),
            rejected: Vec::new(),
            meter: Meter::default(),
            requests_per_min: None,
            recent: VecDeque::new(),
        })
    }

    /// Answers `429` to verified requests beyond `limit` in any sliding
    /// minute (None: no limit).
    pub fn set_requests_per_min(&mut self, limit: Option<u32>) {
        self.requests_per_min = limit;
    }

    /// The `429` for a request over the rate limit (counted), if it is.
    fn over_limit(&mut self) -> Option<Answer> {
        let limit = self.requests_per_min?;
        let now = Instant::now();
        while self.recent.front().is_some_and(|t| now.duration_since(*t) >= Duration::from_secs(60)) {
            self.recent.pop_front();
        }
        if self.recent.len() as u32 >= limit {
            let oldest = *self.recent.front()?;
            let wait = Duration::from_secs(60).saturating_sub(now.duration_since(oldest));
            return Some(Answer::retry_after(429, &wait.as_secs_f64().ceil().max(1.0).to_string()));
        }
        self.recent.push_back(now);
        self.meter.stats.ru_used += 1;
        None
    }

    /// Answers the next `count` verified requests with `answer`.
    pub fn script(&mut self, answer: Answer, count: u32) {
        self.answers.extend(std::iter::repeat_n(answer, count as usize));
    }

    /// The answer when nothing is scripted (410: the endpoint is gone).
    pub fn set_default_status(&mut self, status: u16) {
        self.default_status = status;
    }

    /// Every verified request, in arrival order.
    pub fn attempts(&self) -> &[Attempt] {
        &self.attempts
    }

    /// Deliveries by `webhook-id`.
    pub fn deliveries(&self) -> &BTreeMap<String, Delivery> {
        &self.deliveries
    }

    /// `webhook-id`s in the order they were first accepted.
    pub fn delivery_order(&self) -> &[String] {
        &self.order
    }

    /// Accepted requests beyond the first of each id.
    pub fn duplicates(&self) -> u32 {
        self.deliveries.values().map(|d| d.accepted - 1).sum()
    }

    /// Requests that did not verify, with the path and why.
    pub fn rejected(&self) -> &[(String, VerifyError)] {
        &self.rejected
    }

    fn now(&self) -> i64 {
        self.clock.unwrap_or_else(|| {
            SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        })
    }

    fn answer(answer: &Answer) -> HttpResponse {
        let mut r = Response::new(Full::new(Bytes::new()));
        *r.status_mut() = StatusCode::from_u16(answer.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        for (name, value) in [(RETRY_AFTER, &answer.retry_after), (LOCATION, &answer.location)] {
            if let Some(v) = value.as_deref().and_then(|v| HeaderValue::from_str(v).ok()) {
                r.headers_mut().insert(name, v);
            }
        }
        r
    }

    fn summary(&self) -> Value {
        let deliveries: Vec<Value> = self
            .order
            .iter()
            .map(|id| {
                let d = &self.deliveries[id];
                let body = serde_json::from_slice::<Value>(&d.body)
                    .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&d.body).into_owned()));
                json!({"id": id, "accepted": d.accepted, "body": body})
            })
            .collect();
        let rejected: Vec<Value> =
            self.rejected.iter().map(|(path, e)| json!({"path": path, "reason": e.to_string()})).collect();
        json!({
            "attempts": self.attempts.len(),
            "duplicates": self.duplicates(),
            "deliveries": deliveries,
            "rejected": rejected,
        })
    }
}

fn parse_answers(body: &[u8]) -> Result<Vec<(Answer, u32)>, String> {
    let v: Value = serde_json::from_slice(body).map_err(|e| format!("invalid JSON: {e}"))?;
    let items = v.as_array().ok_or("expected an array of {status, retry_after?, location?, count?}")?;
    items
        .iter()
        .map(|item| {
            let status = item
                .get("status")
                .and_then(Value::as_u64)
                .and_then(|s| u16::try_from(s).ok())
                .filter(|s| (100..=599).contains(s))
                .ok_or("'status' must be an HTTP status")?;
            let text = |k: &str| item.get(k).and_then(Value::as_str).map(str::to_string);
            let count = item.get("count").and_then(Value::as_u64).unwrap_or(1);
            let count = u32::try_from(count).map_err(|_| "'count' is too large")?;
            Ok((Answer { status, retry_after: text("retry_after"), location: text("location") }, count))
        })
        .collect()
}

impl Api for Receiver {
    const CONTENT_TYPE: &'static str = "application/json";
    const CONTROL_ROUTES: &'static [&'static str] = &["GET deliveries", "POST answers"];

    fn route(&mut self, req: &Request) -> Route {
        match (req.method.as_str(), req.path.as_str()) {
            ("POST", HOOK_PATH) => Route::Serve { batch: false },
            (_, HOOK_PATH) => Route::Answer(json_response(405, &json!({"error": "POST only"}))),
            _ => Route::Answer(json_response(404, &json!({"error": "not found"}))),
        }
    }

    fn serve(&mut self, req: &Request, _fault: Option<&Fault>) -> HttpResponse {
        let now = self.now();
        let verified = self.verifier.verify(
            req.header("webhook-id"),
            req.header("webhook-timestamp"),
            req.header("webhook-signature"),
            &req.body,
            now,
        );
        if let Err(e) = verified {
            self.meter.stats.unauthorized += 1;
            let answer = json_response(401, &json!({"error": e.to_string()}));
            self.rejected.push((req.path.clone(), e));
            return answer;
        }
        let id = req.header("webhook-id").unwrap_or_default().to_string();
        let timestamp = req.header("webhook-timestamp").and_then(|t| t.parse().ok()).unwrap_or_default();
        let answer = match self.over_limit() {
            Some(throttled) => throttled,
            None => self.answers.pop_front().unwrap_or_else(|| Answer::status(self.default_status)),
        };
        if answer.status == 429 {
            self.meter.stats.throttled += 1;
        }
        let signature = req.header("webhook-signature").unwrap_or_default().to_string();
        self.attempts.push(Attempt {
            id: id.clone(),
            timestamp,
            status: answer.status,
            body: req.body.clone(),
            signature,
            at: Instant::now(),
        });
        if (200..300).contains(&answer.status) {
            self.meter.wrote();
            let seq = self.order.len();
            let delivery = self.deliveries.entry(id.clone()).or_insert_with(|| Delivery {
                body: req.body.clone(),
                accepted: 0,
                seq,
            });
            delivery.accepted += 1;
            if delivery.accepted == 1 {
                self.order.push(id);
            }
        }
        Self::answer(&answer)
    }

    fn error(status: u16, _req: &Request) -> HttpResponse {
        json_response(status, &json!({"error": format!("injected {status}")}))
    }

    fn expire_tokens(&mut self) {}

    fn configure(&mut self, config: &Value) -> Result<Map<String, Value>, String> {
        if let Some(s) = config.get("default_status") {
            let s = s
                .as_u64()
                .and_then(|s| u16::try_from(s).ok())
                .filter(|s| (100..=599).contains(s))
                .ok_or("'default_status' must be an HTTP status")?;
            self.default_status = s;
        }
        if let Some(v) = config.get("requests_per_min") {
            self.requests_per_min = match v {
                Value::Null => None,
                v => Some(
                    v.as_u64()
                        .and_then(|n| u32::try_from(n).ok())
                        .filter(|n| *n > 0)
                        .ok_or("'requests_per_min' must be a positive integer or null")?,
                ),
            };
        }
        let mut settings = Map::new();
        settings.insert("default_status".into(), json!(self.default_status));
        settings.insert("requests_per_min".into(), json!(self.requests_per_min));
        Ok(settings)
    }

    fn control(&mut self, method: &str, route: &str, body: &[u8]) -> Option<HttpResponse> {
        match (method, route) {
            ("GET", "deliveries") => Some(json_response(200, &self.summary())),
            ("POST", "answers") => Some(match parse_answers(body) {
                Ok(list) => {
                    for (answer, count) in list {
                        self.script(answer, count);
                    }
                    json_response(200, &json!({"ok": true, "pending": self.answers.len()}))
                }
                Err(e) => json_response(400, &json!({"error": e})),
            }),
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
