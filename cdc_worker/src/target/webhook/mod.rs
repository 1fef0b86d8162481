//! Generic signed webhooks (Standard Webhooks 1.0.0): each export is an
//! event `POST`ed to one URL.
//!
//! # Request
//! - `POST {url}`, `content-type: application/json`, and the Standard
//!   Webhooks headers: `webhook-id`, `webhook-timestamp` (Unix seconds of
//!   *this attempt*), `webhook-signature` ([`sign::Signer`]: `v1,<base64>`
//!   per secret, space-separated).
//! - `webhook-id` is the event's id, `sb_<export id>_<digest>` ([`event`]):
//!   the same across every retry of the export, so the receiver can
//!   de-duplicate on it; the digest (12 hex digits of a SHA-256 of the
//!   event's type and data) changes only when a newer change of the row was
//!   merged into the export before it went out (the queue keeps one open
//!   export per key), so a receiver that saw the older content never drops
//!   the newer one as a duplicate. Never contains `.`.
//! - The secret is given by reference (`env:`/`file:`, [`super::TargetPolicy`]);
//!   its value is one or more `whsec_` secrets separated by spaces, commas
//!   or newlines (rotation: add the new one, let receivers switch, remove
//!   the old). Every secret signs every request; the signature is computed
//!   over the exact bytes sent, never over a re-serialisation.
//! - Redirects are not followed (the shared client of `target/http`
//!   follows none); the request timeout is `timeout_ms`, 15 s by default
//!   (the specification asks for 15 to 30).
//!
//! # Payload
//! ```json
//! {
//!   "id": "sb_1042_9f86d081884c",
//!   "type": "people.updated",
//!   "timestamp": "2025-05-01T12:00:00.000000Z",
//!   "data": {
//!     "definition": "people",
//!     "op": "updated",
//!     "key": {"id": "42"},
//!     "fields": {"name": "Ada", "team": "core"},
//!     "previous": {"team": "infra"},
//!     "container": "core",
//!     "from_container": null,
//!     "source": {"lsn": null, "run": 4}
//!   }
//! }
//! ```
//! - `type` is `<definition>.created|updated|deleted|moved` ([`super::Op`]
//!   `Add`, `Update`, `Delete`, `Move`; a `Provision` sends nothing and is
//!   done at once, the kind has no containers to make). `timestamp` is when
//!   the export was first staged (UTC), not the attempt.
//! - `key`: the row's key columns, each as its text (as the table's output
//!   function writes it); `fields`: the values the definition maps (all of
//!   them for `created` and `moved`, the changed ones for `updated`; absent
//!   for `deleted`); `previous`: what the extension staged as the old
//!   values (`updated`: of the changed fields; `deleted` and `moved`: of
//!   the whole item; `null` for `created`, or when it has none);
//!   `container`/`from_container`: the definition's list (its shard) and,
//!   for `moved`, the one the row left.
//! - `source`: the `run` that staged the event (`sync.runs.id`: a stream,
//!   the initial load, a reconcile, a rollback; `sync.runs.kind` says which),
//!   and the WAL position (`lsn`) of its last change when the staging call
//!   was given one (`sync.stage(..., lsn => ...)`; the worker's stream
//!   records its position per batch in `sync.cursors`, so `null` for its
//!   changes today). The data is the extension's (`sync.claim`); the worker
//!   adds only the envelope.
//! - Webhooks deliver *state changes*, not statements: changes of one row
//!   staged before its previous event went out are merged into one event
//!   (see the README, "Staging: reconcile by key").
//!
//! # Ordering and concurrency
//! Events of one key go in order: the claim hands out one export per key at
//! a time, and the next only once the previous one was answered. Events of
//! different keys go in parallel, at most `concurrency` requests at once
//! (default 4) over every lane of the target, within the requests-a-minute
//! budget (`budget_per_min`) of `target/http`.
//!
//! # Answers (the specification's rules)
//! - Any `2xx`: delivered; the body is ignored.
//! - `3xx`: a failure, not followed: [`super::ErrorClass::Definite`] with the
//!   `Location` in the message (a moved endpoint is a configuration
//!   change: `sync.alter_target`).
//! - `410 Gone`: the receiver asks to be disabled. The adapter sends
//!   nothing more and reports it once ([`super::Target::take_disable_request`]);
//!   the exporter records it (`sync.targets.status` `disabled`,
//!   `disabled_at`), and `sync.claim` hands out nothing for the target
//!   (the queue waits; nothing is dropped, no attempt is counted: the
//!   refused exports fail as `throttled`) until an operator runs
//!   `sync.enable_target(name)`; then everything queued goes out once, with
//!   its original `webhook-id`.
//! - `429`, `502`, `503`, `504`: throttled: the target pauses (`Retry-After`,
//!   capped by `target/http`'s `MAX_PAUSE`, else 1 s) and the attempt is not
//!   counted.
//! - `401`/`403`: the receiver does not take our signature: health
//!   `auth_failed`, retried as below (a configuration to fix, bounded by
//!   `max_attempts`).
//! - Everything else (any other 4xx and 5xx), timeouts and connection
//!   errors: `Transient`, retried with the extension's backoff (a
//!   `Retry-After`, when given, is the least wait) until `max_attempts`,
//!   then in `error`. One request is one attempt: the adapter never retries
//!   by itself.
//!
//! # Batching (optional)
//! `batch_max_events` (default 1: one event per request) and
//! `batch_max_bytes` (default 256 KiB): with `batch_max_events` above 1 the
//! body is a JSON array of events in claim order, closed at whichever limit
//! comes first (an event larger than the byte limit goes alone), and the
//! `webhook-id` is `sb_batch_<first export id>_<digest of the event ids>`:
//! receivers de-duplicate batched events by their own `id`. One answer
//! covers the batch: every export in it gets the same result. A batch never
//! holds two events of one key, so per-key order holds across batches.
//!
//! # Outages
//! While the receiver cannot be reached (every request of a batch failed
//! to connect, or answered 5xx) the exporter claims nothing and probes it
//! with an unsigned `HEAD {url}` (no body, no data); any answer but
//! 502/503/504 ends the outage.

pub mod event;
pub mod sign;

pub use event::{Event, BATCH_ID_PREFIX, EVENT_ID_PREFIX};
pub use sign::{SecretFormatError, SignError, Signer, SigningKey};

use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::Value;

use super::http::{read_body, without_url, Budget, HttpClient, HttpSettings, MAX_TIMEOUT_MS};
use super::registry::{Capabilities, Containers, DeleteMode, Moves, Pull};
use super::{
    ApplyContext, BoxFuture, ErrorClass, Export, Health, Op, OpResult, Target, TargetPolicy, TargetSetupError,
};
use crate::metrics;

/// Requests a minute when the configuration sets none.
pub const DEFAULT_BUDGET_PER_MIN: u32 = 600;
/// Requests in flight at once when the configuration sets none.
pub const DEFAULT_CONCURRENCY: usize = 4;
/// The most requests in flight at once (`concurrency`).
pub const MAX_CONCURRENCY: usize = 64;
/// The most events in one request (`batch_max_events`; the kind's `batch_size`).
pub const MAX_BATCH_EVENTS: usize = 100;
/// A batch's size limit when the configuration sets none.
pub const DEFAULT_BATCH_MAX_BYTES: usize = 256 * 1024;
/// The smallest and largest `batch_max_bytes`.
pub const BATCH_BYTES_RANGE: (usize, usize) = (1024, 10 << 20);
/// The request timeout when the configuration sets none (the specification: 15 to 30 s).
pub const DEFAULT_TIMEOUT_MS: u64 = 15_000;
/// The most of an answer's body read (and ignored).
const MAX_ANSWER_BYTES: usize = 64 * 1024;
/// The pause after a throttling answer without `Retry-After`, in seconds.
const DEFAULT_THROTTLE_SECS: f64 = 1.0;

/// Webhooks: no containers, a delete and a move are events like the others
/// (one request each), nothing to look an item up by, nothing to pull.
pub const WEBHOOK_CAPABILITIES: Capabilities = Capabilities {
    containers: Containers::None,
    delete_mode: DeleteMode::Remove,
    moves: Moves::Native,
    key_lookup: false,
    pull: Pull::None,
    disable: false,
};

/// A webhook target's checked configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookSettings {
    /// The target's name.
    pub name: String,
    /// The receiver's URL (checked against the worker's policy).
    pub url: String,
    /// Requests a minute.
    pub budget: u32,
    /// Per request, in milliseconds.
    pub timeout_ms: u64,
    /// Requests in flight at once, over every lane.
    pub concurrency: usize,
    /// Events in one request (1: no batches).
    pub batch_max_events: usize,
    /// A batch's most bytes.
    pub batch_max_bytes: usize,
    /// Only https (the URL is https).
    pub https_only: bool,
}

impl WebhookSettings {
    /// Checks a target's configuration (the URL against the worker's policy)
    /// before any secret is read.
    pub fn from_config(name: &str, config: &Value, policy: &TargetPolicy) -> Result<Self, TargetSetupError> {
        let bad = |message: String| TargetSetupError::Config { target: name.to_owned(), message };
        let url = config
            .get("url")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .ok_or_else(|| bad("config lacks url (the receiver's endpoint)".into()))?;
        let checked = policy.check_url("url", url).map_err(bad)?;
        let int = |key: &str, default: u64, min: u64, max: u64| -> Result<u64, TargetSetupError> {
            match config.get(key) {
                None | Some(Value::Null) => Ok(default),
                Some(v) => v
                    .as_u64()
                    .filter(|n| (min..=max).contains(n))
                    .ok_or_else(|| bad(format!("{key} must be a whole number from {min} to {max}"))),
            }
        };
        let budget = match config.get("budget_per_min") {
            None | Some(Value::Null) => DEFAULT_BUDGET_PER_MIN,
            Some(v) => v
                .as_f64()
                .filter(|b| b.is_finite() && *b >= 1.0)
                .map(|b| b.min(f64::from(u32::MAX)) as u32)
                .ok_or_else(|| bad("budget_per_min must be a number of at least 1".into()))?,
        };
        Ok(Self {
            name: name.to_owned(),
            url: url.to_owned(),
            budget,
            timeout_ms: int("timeout_ms", DEFAULT_TIMEOUT_MS, 100, MAX_TIMEOUT_MS)?,
            concurrency: int("concurrency", DEFAULT_CONCURRENCY as u64, 1, MAX_CONCURRENCY as u64)? as usize,
            batch_max_events: int("batch_max_events", 1, 1, MAX_BATCH_EVENTS as u64)? as usize,
            batch_max_bytes: int(
                "batch_max_bytes",
                DEFAULT_BATCH_MAX_BYTES as u64,
                BATCH_BYTES_RANGE.0 as u64,
                BATCH_BYTES_RANGE.1 as u64,
            )? as usize,
            https_only: checked.scheme() == "https",
        })
    }
}

/// What an answer (or its absence) means for the events of a request.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// 2xx.
    Delivered,
    /// 3xx, with its `Location` when it gave one: not followed.
    Redirected(Option<String>),
    /// 410: the receiver asks to be disabled.
    Gone,
    /// 429, 502, 503, 504: slow down for this many seconds.
    Throttled(f64),
    /// 401, 403: our signature is not accepted.
    Refused,
    /// Anything else: retried with backoff (at least `Retry-After`).
    Failed(Option<f64>),
}

/// The specification's reading of a status (and its `Retry-After`, `Location`).
pub fn verdict(status: u16, retry_after: Option<f64>, location: Option<&str>) -> Verdict {
    match status {
        200..=299 => Verdict::Delivered,
        300..=399 => Verdict::Redirected(location.map(str::to_owned)),
        410 => Verdict::Gone,
        429 | 502 | 503 | 504 => Verdict::Throttled(retry_after.unwrap_or(DEFAULT_THROTTLE_SECS)),
        401 | 403 => Verdict::Refused,
        _ => Verdict::Failed(retry_after),
    }
}

/// The webhook adapter.
pub struct WebhookTarget {
    client: HttpClient,
    signer: Signer,
    permits: tokio::sync::Semaphore,
    concurrency: usize,
    batch_max_events: usize,
    batch_max_bytes: usize,
    /// A 410 was answered: nothing is sent until the exporter took the
    /// request to be disabled (and the extension claims nothing more).
    gone: Mutex<Option<String>>,
}

impl std::fmt::Debug for WebhookTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the secrets (the signer hides them too).
        f.debug_struct("WebhookTarget")
            .field("name", &self.client.name)
            .field("keys", &self.signer.key_count())
            .finish()
    }
}

/// Unix seconds now.
fn unix_now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// A redirect's `Location` as a message may show it: bounded.
fn shown_location(location: &str) -> String {
    super::policy::bounded(location, 200)
}

impl WebhookTarget {
    /// Builds the adapter from the target's checked configuration and its
    /// resolved secret value (one or more `whsec_` secrets).
    pub fn new(
        settings: WebhookSettings,
        secrets: &str,
        shutdown: Option<tokio::sync::watch::Receiver<bool>>,
    ) -> Result<Self, TargetSetupError> {
        let WebhookSettings {
            name,
            url,
            budget,
            timeout_ms,
            concurrency,
            batch_max_events,
            batch_max_bytes,
            https_only,
        } = settings;
        let signer = Signer::from_secret_list(secrets).map_err(|e| TargetSetupError::Config {
            target: name.clone(),
            message: format!(
                "{e}: the secret is one or more whsec_<base64> secrets separated by spaces (Standard Webhooks)"
            ),
        })?;
        // Every secret of the list (and the list itself) is redacted.
        let mut redacted: Vec<String> = secrets
            .split(|c: char| c == ',' || c.is_whitespace())
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect();
        redacted.push(secrets.trim().to_owned());
        let auth = super::http::Auth::Signed { secrets: redacted };
        // A burst of one request per permit: the requests a lane starts together.
        let budget = Budget::new(budget, concurrency as u32, None, 1);
        let http = HttpSettings {
            name,
            service: "Webhook receiver",
            base_url: url,
            timeout_ms,
            https_only,
            envelope: |_| None,
        };
        Ok(Self {
            client: HttpClient::new(http, auth, budget, shutdown)?,
            signer,
            permits: tokio::sync::Semaphore::new(concurrency),
            concurrency,
            batch_max_events,
            batch_max_bytes,
            gone: Mutex::new(None),
        })
    }

    fn gone(&self) -> Option<String> {
        self.gone.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Sends one request with `events` and says how each went.
    async fn deliver(&self, events: &[&Event]) -> Vec<OpResult> {
        let all = |class: ErrorClass, message: String, retry_after: Option<f64>, sent: bool| -> Vec<OpResult> {
            events
                .iter()
                .map(|e| OpResult { retry_after, ..OpResult::failed(e.export_id, class, message.clone(), sent) })
                .collect()
        };
        let not_sent = |reason: String| all(ErrorClass::Throttled, format!("not sent: {reason}"), None, false);
        // The semaphore is never closed.
        let Ok(_permit) = self.permits.acquire().await else {
            return not_sent("the worker is stopping".into());
        };
        if let Some(reason) = self.gone() {
            return not_sent(reason);
        }
        if let Err(f) = self.client.wait_turn(1, 1).await {
            return events.iter().map(|e| f.to_result(e.export_id)).collect();
        }
        // A 410 may have come while this request waited its turn.
        if let Some(reason) = self.gone() {
            return not_sent(reason);
        }
        let (id, body) = event::request(events, self.batch_max_events > 1);
        let timestamp = unix_now();
        let signature = match self.signer.sign(&id, timestamp, &body) {
            Ok(s) => s,
            Err(e) => return all(ErrorClass::Definite, format!("cannot sign event {id}: {e}"), None, false),
        };
        let sent = self
            .client
            .http
            .post(&self.client.base_url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header("webhook-id", &id)
            .header("webhook-timestamp", timestamp.to_string())
            .header("webhook-signature", signature)
            .body(body)
            .send()
            .await;
        let resp = match sent {
            Ok(r) => r,
            Err(e) => {
                metrics::TARGET_REQUEST_ERRORS.inc(&[&self.client.name, "api"]);
                let message = format!("{} unreachable: {}", self.client.service, without_url(&e));
                self.client.set_health(Health::Unreachable, message.clone());
                return all(ErrorClass::Transient, message, None, !e.is_connect());
            }
        };
        let status = resp.status().as_u16();
        let header = |name: reqwest::header::HeaderName| {
            resp.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_owned)
        };
        let retry_after = header(reqwest::header::RETRY_AFTER).as_deref().and_then(super::http::parse_retry_after);
        let location = header(reqwest::header::LOCATION);
        self.client.count_answer("api", status, retry_after);
        // The body is ignored (whatever a 2xx says, the event is delivered);
        // read a little of it so that the connection can be used again.
        if let Err(e) = read_body(resp, MAX_ANSWER_BYTES).await {
            tracing::debug!(target = %self.client.name, status, error = %e, "the receiver's answer body was not read whole");
        }
        let service = self.client.service;
        match verdict(status, retry_after, location.as_deref()) {
            Verdict::Delivered => {
                self.client.set_health(Health::Ok, "");
                events
                    .iter()
                    .map(|e| OpResult {
                        // The event that created the item (here) names it in the ledger.
                        target_id: matches!(e.op, Op::Add | Op::Move).then(|| e.id.clone()),
                        ..OpResult::ok(e.export_id)
                    })
                    .collect()
            }
            Verdict::Redirected(to) => {
                let to = to.map_or_else(|| " without a Location".to_owned(), |l| format!(" to {}", shown_location(&l)));
                all(
                    ErrorClass::Definite,
                    format!(
                        "{service} answered HTTP {status} (a redirect{to}): redirects are not followed; if the endpoint \
                         moved, SELECT sync.alter_target('{}', config => '{{\"url\": \"...\"}}') and sync.retry the exports",
                        self.client.name
                    ),
                    None,
                    true,
                )
            }
            Verdict::Gone => {
                let reason = format!(
                    "{service} answered 410 Gone: it asks to be disabled; nothing is sent to it until \
                     SELECT sync.enable_target('{}')",
                    self.client.name
                );
                *self.gone.lock().unwrap_or_else(|p| p.into_inner()) = Some(reason.clone());
                all(ErrorClass::Throttled, reason, None, false)
            }
            Verdict::Throttled(secs) => {
                self.client.pause(secs);
                self.client.set_health(Health::Throttled, format!("{status} with Retry-After {secs}s"));
                all(
                    ErrorClass::Throttled,
                    format!("{service} asked to slow down (HTTP {status}, Retry-After {secs}s)"),
                    Some(secs),
                    status != 429,
                )
            }
            Verdict::Refused => {
                let message = format!(
                    "{service} refused the signature (HTTP {status}): it must know one of the target's whsec_ secrets"
                );
                self.client.set_health(Health::AuthFailed, message.clone());
                all(ErrorClass::Transient, message, retry_after, false)
            }
            Verdict::Failed(retry_after) => {
                if status >= 500 {
                    self.client.set_health(Health::Unreachable, format!("{service} answered HTTP {status}"));
                } else {
                    self.client.set_health(Health::Ok, "");
                }
                all(ErrorClass::Transient, format!("{service} answered HTTP {status}"), retry_after, true)
            }
        }
    }
}

impl Target for WebhookTarget {
    fn batch_size(&self) -> usize {
        (self.concurrency * self.batch_max_events).clamp(1, 1000)
    }

    fn share_budget(&self, source: std::sync::Arc<dyn super::http::BudgetSource>) {
        self.client.share_budget(source);
    }

    fn capabilities(&self) -> &'static Capabilities {
        &WEBHOOK_CAPABILITIES
    }

    fn health(&self) -> (Health, String) {
        self.client.health()
    }

    fn take_disable_request(&self) -> Option<String> {
        self.gone.lock().unwrap_or_else(|p| p.into_inner()).take()
    }

    fn probe(&self) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(async move {
            // One unsigned HEAD, no body: the caller paces the probes.
            let service = self.client.service;
            match self.client.http.head(&self.client.base_url).send().await {
                Err(e) => Err(self.client.redact(&format!("{service} unreachable: {}", without_url(&e)))),
                Ok(r) if matches!(r.status().as_u16(), 502..=504) => {
                    Err(format!("{service} unreachable: its gateway answered {}", r.status().as_u16()))
                }
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
            let mut events = Vec::with_capacity(exports.len());
            for e in exports {
                match e.op {
                    // No containers: nothing to make.
                    Op::Provision => results.push(OpResult::ok(e.id)),
                    Op::Disable => results.push(OpResult::failed(
                        e.id,
                        ErrorClass::Definite,
                        "a webhook receiver's items cannot be disabled (sync.target_kinds)",
                        false,
                    )),
                    Op::Add | Op::Update | Op::Delete | Op::Move => match event::build(e) {
                        Ok(ev) => events.push(ev),
                        Err(m) => results.push(OpResult::failed(e.id, ErrorClass::Definite, m, false)),
                    },
                }
            }
            let groups = event::group(&events, self.batch_max_events, self.batch_max_bytes);
            let sends = groups.iter().map(|g| {
                let batch: Vec<&Event> = g.iter().map(|&i| &events[i]).collect();
                async move { self.deliver(&batch).await }
            });
            for r in futures_util::future::join_all(sends).await {
                results.extend(r);
            }
            self.client.settle(&mut results);
            results
        })
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn answers_are_read_as_the_specification_says() {
        assert_eq!(verdict(200, None, None), Verdict::Delivered);
        assert_eq!(verdict(204, Some(3.0), None), Verdict::Delivered);
        assert_eq!(verdict(299, None, None), Verdict::Delivered);
        assert_eq!(verdict(301, None, Some("https://x/y")), Verdict::Redirected(Some("https://x/y".into())));
        assert_eq!(verdict(308, None, None), Verdict::Redirected(None));
        assert_eq!(verdict(410, Some(5.0), None), Verdict::Gone);
        for s in [429, 502, 503, 504] {
            assert_eq!(verdict(s, Some(2.5), None), Verdict::Throttled(2.5), "{s}");
            assert_eq!(verdict(s, None, None), Verdict::Throttled(DEFAULT_THROTTLE_SECS), "{s}");
        }
        assert_eq!(verdict(401, None, None), Verdict::Refused);
        assert_eq!(verdict(403, None, None), Verdict::Refused);
        // Everything else is retried with backoff, a client error included.
        for s in [400, 404, 405, 409, 413, 422, 500, 501, 505] {
            assert_eq!(verdict(s, None, None), Verdict::Failed(None), "{s}");
        }
        assert_eq!(verdict(500, Some(7.0), None), Verdict::Failed(Some(7.0)));
    }

    #[test]
    fn the_configuration_is_checked_against_the_policy_and_its_bounds() {
        let lo = TargetPolicy { allow_loopback: true, ..TargetPolicy::default() };
        let s = WebhookSettings::from_config("w", &json!({"url": "http://127.0.0.1:9/hooks"}), &lo).unwrap();
        assert_eq!(
            (s.budget, s.timeout_ms, s.concurrency, s.batch_max_events, s.batch_max_bytes, s.https_only),
            (DEFAULT_BUDGET_PER_MIN, DEFAULT_TIMEOUT_MS, DEFAULT_CONCURRENCY, 1, DEFAULT_BATCH_MAX_BYTES, false)
        );
        let err = |cfg: Value, policy: &TargetPolicy| match WebhookSettings::from_config("w", &cfg, policy) {
            Err(e) => e.to_string(),
            Ok(s) => panic!("accepted {s:?}"),
        };
        assert!(err(json!({"url": "http://127.0.0.1:9/hooks"}), &TargetPolicy::default()).contains("loopback"));
        assert!(err(json!({"url": "ftp://127.0.0.1/hooks"}), &lo).contains("https"));
        assert!(err(json!({"url": "https://hooks.example.com/x"}), &lo).contains("not allowed"));
        assert!(err(json!({}), &lo).contains("lacks url"));
        for (k, v) in [("concurrency", 0), ("concurrency", 65), ("batch_max_events", 101), ("batch_max_bytes", 10)] {
            let mut cfg = json!({"url": "http://127.0.0.1:9/hooks"});
            cfg[k] = json!(v);
            let e = err(cfg, &lo);
            assert!(e.contains(k), "{e}");
        }
        let extra = TargetPolicy { extra_hosts: vec!["hooks.example.com".into()], ..TargetPolicy::default() };
        let s = WebhookSettings::from_config(
            "w",
            &json!({"url": "https://hooks.example.com/x", "concurrency": 8, "batch_max_events": 50}),
            &extra,
        )
        .unwrap();
        assert_eq!((s.concurrency, s.batch_max_events, s.https_only), (8, 50, true));
    }

    #[tokio::test]
    async fn a_malformed_secret_is_a_configuration_error_that_never_shows_it() {
        let lo = TargetPolicy { allow_loopback: true, ..TargetPolicy::default() };
        let settings = WebhookSettings::from_config("w", &json!({"url": "http://127.0.0.1:9/hooks"}), &lo).unwrap();
        let e = WebhookTarget::new(settings.clone(), "ghp_notawebhooksecret", None).expect_err("refused");
        assert_eq!(e.status(), "misconfigured");
        assert!(e.to_string().contains("whsec_") && !e.to_string().contains("notawebhooksecret"), "{e}");
        let good = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD";
        let t = WebhookTarget::new(settings, good, None).unwrap();
        assert_eq!(t.batch_size(), DEFAULT_CONCURRENCY);
        assert!(!format!("{t:?}").contains("C2FV"));
        assert_eq!(t.client.redact(&format!("echo {good}")), "echo [redacted]");
    }
}
