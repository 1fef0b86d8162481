//! The HTTP client every API adapter shares: one `reqwest` client (no
//! redirects followed, bounded bodies, a timeout), OAuth2 client-credentials
//! tokens (renewed before they expire and once on a 401), the request budget
//! (cost units a minute, writes a second), `Retry-After` pauses shared by
//! every request of the target, retries with capped exponential backoff and
//! full jitter (never re-sending blindly what may have run), messages kept
//! only from the API's own error envelope (bounded, redacted), and health.

mod budget;
mod oauth;
mod retry;

pub use budget::{Budget, BudgetSource};
pub use oauth::{Auth, ClientCredentials};
pub use retry::{backoff, parse_retry_after, retry_after_of, MAX_BODY, MAX_PAUSE};
pub(crate) use retry::{read_body, without_url};

use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::metrics;
use crate::target::policy::bounded;
use crate::target::{ErrorClass, Health, OpResult, Redactor, TargetSetupError};
pub(crate) use retry::stop_signalled;

/// Tries of one request (the first included).
pub(crate) const ENVELOPE_ATTEMPTS: u32 = 4;
/// The longest per-request timeout (`timeout_ms` is capped to it).
pub const MAX_TIMEOUT_MS: u64 = 300_000;
/// Longest error code and message kept from an error envelope.
pub(crate) const MAX_CODE_CHARS: usize = 100;
pub(crate) const MAX_MESSAGE_CHARS: usize = 500;

/// What a request costs: units of the API's budget, and write requests.
#[derive(Debug, Clone, Copy)]
pub struct Cost {
    /// In the API's unit (Graph: resource units).
    pub units: u32,
    /// Write requests it carries (for `writes_per_second`).
    pub writes: u32,
}

/// A failure of a whole request (before per-export classification).
#[derive(Debug, Clone)]
pub(crate) struct Failure {
    pub(crate) class: ErrorClass,
    pub(crate) message: String,
    pub(crate) retry_after: Option<f64>,
    pub(crate) sent: bool,
}

impl Failure {
    pub(crate) fn to_result(&self, id: i64) -> OpResult {
        OpResult { retry_after: self.retry_after, ..OpResult::failed(id, self.class, self.message.clone(), self.sent) }
    }
}

/// An API's error envelope: its code and message, when a body is one.
pub type Envelope = fn(&Value) -> Option<(String, String)>;

/// One target's HTTP side.
pub struct HttpClient {
    /// The target's name (logs).
    pub(crate) name: String,
    /// The service's name in messages (`Graph`).
    pub(crate) service: &'static str,
    pub(crate) base_url: String,
    pub(crate) http: reqwest::Client,
    pub(crate) auth: Auth,
    /// The secret and the tokens issued so far (their encodings too).
    redactor: Mutex<Redactor>,
    /// Turns true when the worker stops: pauses end at once.
    shutdown: Option<tokio::sync::watch::Receiver<bool>>,
    budget: Budget,
    /// The target's budget shared with every other exporter, once attached.
    shared: std::sync::OnceLock<budget::Shared>,
    pub(crate) pause_until: Mutex<Option<Instant>>,
    health: Mutex<(Health, String)>,
    envelope: Envelope,
}

/// How an [`HttpClient`] is set up.
pub struct HttpSettings {
    /// The target's name.
    pub name: String,
    /// The service's name in messages.
    pub service: &'static str,
    /// Requests go to `base_url` + path.
    pub base_url: String,
    /// Per request.
    pub timeout_ms: u64,
    /// Only https (when every URL of the target is https).
    pub https_only: bool,
    /// The API's error envelope.
    pub envelope: Envelope,
}

impl HttpClient {
    /// A client for one target.
    pub fn new(
        settings: HttpSettings,
        auth: impl Into<Auth>,
        budget: Budget,
        shutdown: Option<tokio::sync::watch::Receiver<bool>>,
    ) -> Result<Self, TargetSetupError> {
        let HttpSettings { name, service, base_url, timeout_ms, https_only, envelope } = settings;
        let http = reqwest::Client::builder()
            .timeout(Duration::from_millis(timeout_ms.clamp(1, MAX_TIMEOUT_MS)))
            .connect_timeout(Duration::from_secs(10))
            .user_agent(concat!("syncbridge/", env!("CARGO_PKG_VERSION")))
            // A redirect would carry the secret or the token to a URL the
            // policy never saw: none is followed (a 3xx is an answer).
            .redirect(reqwest::redirect::Policy::none())
            .https_only(https_only)
            .build()
            .map_err(|e| TargetSetupError::Config { target: name.clone(), message: e.to_string() })?;
        let auth = auth.into();
        let redactor = Redactor::new(auth.secrets());
        metrics::BUDGET_ALLOWED.set(&[&name], f64::from(budget.per_min) / 60.0);
        Ok(Self {
            name,
            service,
            base_url,
            http,
            auth,
            redactor: Mutex::new(redactor),
            shutdown,
            budget,
            shared: std::sync::OnceLock::new(),
            pause_until: Mutex::new(None),
            health: Mutex::new((Health::Ok, String::new())),
            envelope,
        })
    }

    /// What the target last looked like.
    pub fn health(&self) -> (Health, String) {
        self.health.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// `message` without the secret or any token (nor their encodings).
    pub(crate) fn redact(&self, message: &str) -> String {
        self.redactor.lock().unwrap_or_else(|p| p.into_inner()).redact(message)
    }

    /// Results as they leave the adapter for `sync.complete` and the log:
    /// every message redacted, every `retry_after` a finite, non-negative
    /// number of seconds of at most [`MAX_PAUSE`].
    pub(crate) fn settle(&self, results: &mut [OpResult]) {
        for r in results {
            if let Some(m) = r.error.take() {
                r.error = Some(self.redact(&m));
            }
            r.retry_after =
                r.retry_after.filter(|s| s.is_finite() && *s >= 0.0).map(|s| s.min(MAX_PAUSE.as_secs_f64()));
        }
    }

    /// `: code: message` from the API's error envelope in `body` (redacted,
    /// then bounded), or nothing when the body is not one.
    pub(crate) fn api_error(&self, body: &Value) -> String {
        match (self.envelope)(body) {
            Some((code, message)) => format!(
                ": {}: {}",
                bounded(&self.redact(&code), MAX_CODE_CHARS),
                bounded(&self.redact(&message), MAX_MESSAGE_CHARS)
            ),
            None => String::new(),
        }
    }

    /// [`Self::api_error`] of a body as text.
    pub(crate) fn api_error_text(&self, text: &str) -> String {
        serde_json::from_str::<Value>(text).map(|v| self.api_error(&v)).unwrap_or_default()
    }

    /// Sleeps until `until`; false (at once) when the worker is stopping.
    pub(crate) async fn sleep_or_stop(&self, until: tokio::time::Instant) -> bool {
        let Some(mut rx) = self.shutdown.clone() else {
            tokio::time::sleep_until(until).await;
            return true;
        };
        if *rx.borrow() {
            return false;
        }
        tokio::select! {
            _ = tokio::time::sleep_until(until) => true,
            stopped = stop_signalled(&mut rx) => {
                if stopped {
                    return false;
                }
                // Nobody can tell us to stop any more: sleep it out.
                tokio::time::sleep_until(until).await;
                true
            }
        }
    }

    /// The failure of a request not sent because the worker is stopping:
    /// throttled (it spends no attempt), retried by the next worker.
    pub(crate) fn stopping(&self) -> Failure {
        Failure {
            class: ErrorClass::Throttled,
            message: "not sent: the worker is stopping".into(),
            retry_after: None,
            sent: false,
        }
    }

    /// Counts an answer of `kind` (`api`, `token`, `batch_item`) in the
    /// metrics: its status, and for a 429 or 503 the seconds it asked us to
    /// wait (the worker waits 1 s when it does not say).
    pub(crate) fn count_answer(&self, kind: &str, status: u16, retry_after: Option<f64>) {
        metrics::TARGET_REQUESTS.inc(&[&self.name, kind, &metrics::code_label(status)]);
        if status == 429 {
            metrics::TARGET_THROTTLED.inc(&[&self.name]);
        }
        if matches!(status, 429 | 503) {
            metrics::TARGET_RETRY_AFTER.add(&[&self.name], retry_after.unwrap_or(1.0));
        }
    }

    pub(crate) fn set_health(&self, h: Health, msg: impl Into<String>) {
        let msg = crate::target::clean_message(&self.redact(&msg.into()));
        *self.health.lock().unwrap_or_else(|p| p.into_inner()) = (h, msg);
    }

    /// Pauses every request of this target for `secs` (a finite,
    /// non-negative number of seconds; capped at [`MAX_PAUSE`]).
    pub(crate) fn pause(&self, secs: f64) {
        if !secs.is_finite() || secs <= 0.0 {
            return;
        }
        let d = Duration::from_secs_f64(secs.min(MAX_PAUSE.as_secs_f64()));
        let Some(until) = Instant::now().checked_add(d) else { return };
        let mut p = self.pause_until.lock().unwrap_or_else(|p| p.into_inner());
        if p.is_none_or(|cur| cur < until) {
            *p = Some(until);
        }
    }

    /// One HTTP request with the retry policy: network errors, 5xx and
    /// 429/503 (after their `Retry-After`) are retried with capped
    /// exponential backoff and full jitter, a 401 once after renewing the
    /// token. Returns the status and body of the first answer that is none of
    /// those; a second 401 or a 403 is an `auth` failure.
    ///
    /// With `resend_sent` false (writes that are not idempotent, such as a
    /// `$batch` of creates) a failure after which the request may have run
    /// (a 5xx or 503, a timeout, a connection lost after sending, an answer
    /// that broke off) is returned at once instead of being sent again: the
    /// caller must find out what happened first.
    pub(crate) async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
        cost: Cost,
        resend_sent: bool,
    ) -> Result<(u16, String), Failure> {
        let url = format!("{}{path}", self.base_url);
        self.call_url(method, &url, body, cost, resend_sent).await
    }

    /// [`Self::call`] to a whole URL: one the API gave (a next page's link),
    /// which the caller has checked leads to `base_url` (the token goes with
    /// the request).
    pub(crate) async fn call_url(
        &self,
        method: reqwest::Method,
        url: &str,
        body: Option<&Value>,
        cost: Cost,
        resend_sent: bool,
    ) -> Result<(u16, String), Failure> {
        let mut last: Option<Failure> = None;
        let mut refreshed = false;
        let mut attempt = 0;
        while attempt < ENVELOPE_ATTEMPTS {
            if let Some(l) = last.as_ref().filter(|l| l.sent && !resend_sent) {
                return Err(l.clone());
            }
            if attempt > 0 {
                let d = backoff(attempt);
                tracing::debug!(target = %self.name, attempt, delay_ms = d.as_millis() as u64, "retrying a request");
                if !self.sleep_or_stop(tokio::time::Instant::now() + d).await {
                    break;
                }
            }
            attempt += 1;
            self.wait_turn(cost.units, cost.writes).await?;
            let authorization = self.authorization(false).await?;
            let mut rb = self.http.request(method.clone(), url).header(reqwest::header::AUTHORIZATION, authorization);
            if let Some(b) = body {
                rb = rb.json(b);
            }
            let resp = match rb.send().await {
                Ok(r) => r,
                Err(e) => {
                    metrics::TARGET_REQUEST_ERRORS.inc(&[&self.name, "api"]);
                    let message = format!("{} unreachable: {}", self.service, without_url(&e));
                    // The same words as the probe's: the lanes and the
                    // probe all report to one `status_detail`.
                    self.set_health(Health::Unreachable, message.clone());
                    last = Some(Failure {
                        class: ErrorClass::Transient,
                        message,
                        retry_after: None,
                        // Once a request may have gone out, the outcome stays unknown.
                        sent: !e.is_connect() || last.as_ref().is_some_and(|l| l.sent),
                    });
                    continue;
                }
            };
            let status = resp.status().as_u16();
            let retry_after =
                resp.headers().get("retry-after").and_then(|v| v.to_str().ok()).and_then(parse_retry_after);
            self.count_answer("api", status, retry_after);
            let text = match read_body(resp, MAX_BODY).await {
                Ok(t) => t,
                Err(message) => {
                    last = Some(Failure { class: ErrorClass::Transient, message, retry_after: None, sent: true });
                    continue;
                }
            };
            match status {
                401 if !refreshed && self.auth.renewable() => {
                    refreshed = true;
                    attempt -= 1;
                    self.authorization(true).await?;
                }
                401 | 403 => {
                    let msg = format!(
                        "{} refused the credentials (HTTP {status}){}",
                        self.service,
                        self.api_error_text(&text)
                    );
                    self.set_health(Health::AuthFailed, msg.clone());
                    return Err(Failure { class: ErrorClass::Auth, message: msg, retry_after: None, sent: false });
                }
                429 | 503 => {
                    let secs = retry_after.unwrap_or(1.0);
                    self.pause(secs);
                    self.set_health(Health::Throttled, format!("{status} with Retry-After {secs}s"));
                    last = Some(Failure {
                        class: ErrorClass::Throttled,
                        message: format!("{} throttled the request ({status}, Retry-After {secs}s)", self.service),
                        retry_after: Some(secs),
                        sent: status == 503,
                    });
                }
                s if s >= 500 => {
                    self.set_health(Health::Unreachable, format!("{} answered HTTP {s}", self.service));
                    last = Some(Failure {
                        class: ErrorClass::Transient,
                        message: format!("{} answered HTTP {s}{}", self.service, self.api_error_text(&text)),
                        retry_after: None,
                        sent: true,
                    });
                }
                _ => return Ok((status, text)),
            }
        }
        Err(last.unwrap_or_else(|| self.stopping()))
    }
}

/// `link` as a URL when it leads to `base_url` (the target's configured
/// API base: Graph's `…/v1.0`, GitHub's root): same scheme, host and port, no user info, and a
/// path under the base's path (after `..` and `.` are resolved). Err: why
/// not, naming the scheme and host only (a link may carry a token). A
/// link is followed with the bearer token: never anywhere else.
pub fn check_link(base_url: &str, link: &str) -> Result<reqwest::Url, String> {
    let base = reqwest::Url::parse(base_url).map_err(|e| format!("the target's base_url is not a URL ({e})"))?;
    let url = reqwest::Url::parse(link).map_err(|e| format!("the link the target gave is not a URL ({e})"))?;
    let at = |u: &reqwest::Url| {
        format!(
            "{}://{}{}",
            u.scheme(),
            bounded(u.host_str().unwrap_or(""), 100),
            u.port().map(|p| format!(":{p}")).unwrap_or_default()
        )
    };
    let refused = |why: &str| {
        Err(format!(
            "a link to {} was refused ({why}): only links under the target's base_url {} are followed",
            at(&url),
            at(&base)
        ))
    };
    if url.scheme() != base.scheme() {
        return refused("another scheme");
    }
    if url.host_str().map(str::to_ascii_lowercase) != base.host_str().map(str::to_ascii_lowercase)
        || url.port_or_known_default() != base.port_or_known_default()
    {
        return refused("another host");
    }
    if !url.username().is_empty() || url.password().is_some() {
        return refused("it carries user info");
    }
    let prefix = format!("{}/", base.path().trim_end_matches('/'));
    if !url.path().starts_with(&prefix) {
        return refused("a path outside the base's");
    }
    Ok(url)
}
