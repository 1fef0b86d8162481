//! A harness for local API emulators, for testing target kinds without the
//! services: an API plugs in (its routes, its authentication and tokens,
//! its state) by implementing [`Api`]; the harness does everything that is
//! not the API:
//!
//! - the HTTP/1.1 server on loopback and its accept loop;
//! - injectable faults ([`Fault`]: error statuses, dropped connections,
//!   garbage or truncated bodies, batches missing responses, hostile
//!   `Retry-After`s, non-JSON bodies, and requests that run and then lose
//!   their answer), once, n times or on every n-th request;
//! - latency (fixed, plus a random jitter when set), and outages (`set_down`: every connection is dropped,
//!   requests the API answers directly such as token requests included);
//! - the counters ([`Stats`], kept by the API in its [`Meter`]);
//! - `/_emulator/...`: `GET stats`, `POST config` (`latency_ms`, and the
//!   API's keys), `POST fault`, `POST expire_tokens`, and the API's own
//!   routes; without authentication, and served during an outage too.
//!
//! The Microsoft Graph emulator (`crate::graph_emulator`) is the first API.

mod control;
mod fault;

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_TYPE, RETRY_AFTER};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use tokio::net::TcpListener;
use tokio::task::{JoinHandle, JoinSet};

pub use fault::Fault;
use fault::Faults;

/// An HTTP response as the emulator writes it.
pub type HttpResponse = Response<Full<Bytes>>;

/// One HTTP request, as the harness hands it to an [`Api`].
#[derive(Debug, Clone)]
pub struct Request {
    /// Upper-case method.
    pub method: String,
    /// The path, starting with `/`.
    pub path: String,
    /// The query string without `?` (empty when there is none).
    pub query: String,
    /// Header names in lower case.
    pub headers: HashMap<String, String>,
    /// The body as received.
    pub body: Bytes,
    /// `http://host:port` as the client addressed the server, for absolute links.
    pub origin: String,
}

impl Request {
    /// A header's value (`name` in lower case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(String::as_str)
    }
}

/// What the harness does with a request (see [`Api::route`]).
#[derive(Debug)]
pub enum Route {
    /// Answer it with this, now: no latency, no fault (a token endpoint,
    /// a path outside the API).
    Answer(HttpResponse),
    /// An API request: delayed by the latency, subject to faults, then
    /// served by [`Api::serve`]. `batch`: it carries several requests
    /// (the only kind [`Fault::BatchMissingResponses`] applies to).
    Serve {
        /// Whether the request is a batch.
        batch: bool,
    },
}

/// An API's emulator, plugged into the harness. Every method runs with the
/// emulator's lock held: no waiting in them.
pub trait Api: Send + 'static {
    /// The `Content-Type` the API answers JSON with; garbage and truncated
    /// answers claim it too.
    const CONTENT_TYPE: &'static str;
    /// The API's own control routes (`"GET lists"`), for the message about
    /// an unknown one.
    const CONTROL_ROUTES: &'static [&'static str];

    /// Routes a request (counting what only the API counts, such as
    /// batches): a token endpoint or an unknown path is answered here.
    /// The harness has counted the request in [`Stats::requests`].
    fn route(&mut self, req: &Request) -> Route;

    /// Serves an API request that no fault stopped: authentication, then
    /// the work. `fault` is the fault taken for it, for those only the API
    /// can apply ([`Fault::BatchMissingResponses`]); the harness applies
    /// the others, before or after this call.
    fn serve(&mut self, req: &Request, fault: Option<&Fault>) -> HttpResponse;

    /// The API's error answer with `status`, for an injected fault (the
    /// harness adds `Retry-After` where the fault has one).
    fn error(status: u16, req: &Request) -> HttpResponse;

    /// Invalidates every token issued so far (they get `401` from now on).
    fn expire_tokens(&mut self);

    /// Applies the API's keys of a `POST /_emulator/config` body (others
    /// are the harness's or unknown: ignored); returns the API's settings,
    /// shown in the answer.
    fn configure(&mut self, config: &Value) -> Result<Map<String, Value>, String>;

    /// Serves one of the API's own control routes (`route`: the path after
    /// `/_emulator/`); `None` when it has no such route.
    fn control(&mut self, method: &str, route: &str, body: &[u8]) -> Option<HttpResponse>;

    /// The API's counters.
    fn meter(&self) -> &Meter;

    /// The API's counters, to count.
    fn meter_mut(&mut self) -> &mut Meter;
}

/// Counters since the emulator started. The harness counts requests and
/// the throttling faults; the API counts the rest of what applies to it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stats {
    /// Every HTTP request (token requests, batch requests and each of the
    /// requests they carry included; `/_emulator` requests excluded).
    pub requests: u64,
    /// Batch requests (for Graph, `$batch` envelopes).
    pub batch_requests: u64,
    /// `429` answers, inside batches included.
    pub throttled: u64,
    /// Rate-limit cost charged (for Graph, resource units; 1 per throttled request).
    pub ru_used: u64,
    /// Tokens issued.
    pub tokens_issued: u64,
    /// `401` answers (no, an unknown or an expired token).
    #[serde(default)]
    pub unauthorized: u64,
    /// Successful creates, updates and deletes.
    pub writes: u64,
}

/// What an API counts: the [`Stats`], and when each successful write was done.
#[derive(Debug, Clone, Default)]
pub struct Meter {
    /// The counters.
    pub stats: Stats,
    /// When each successful write was done, in order.
    write_times: Vec<Instant>,
}

impl Meter {
    /// Counts a successful write, done now.
    pub fn wrote(&mut self) {
        self.stats.writes += 1;
        self.write_times.push(Instant::now());
    }

    /// The successful writes done so far, and the time from the first to
    /// the last of them.
    pub fn write_span(&self) -> (usize, Duration) {
        let t = &self.write_times;
        let span = match (t.first(), t.last()) {
            (Some(a), Some(b)) => b.duration_since(*a),
            _ => Duration::ZERO,
        };
        (t.len(), span)
    }
}

/// What the emulator's lock guards: the API, and the harness's settings.
#[derive(Debug)]
pub struct Shared<A> {
    /// The API's state.
    pub api: A,
    pub(crate) faults: Faults,
    pub(crate) latency_ms: u64,
    /// Up to this many milliseconds more, at random, per request.
    pub(crate) jitter_ms: u64,
    /// An outage: every connection is dropped without an answer.
    pub(crate) down: bool,
}

/// The shared state of a running emulator, for inspection and control from
/// sync or async code.
#[derive(Debug)]
pub struct EmulatorState<A> {
    inner: Mutex<Shared<A>>,
}

impl<A: Api> EmulatorState<A> {
    /// The state, locked (an API's own inspection and control go through it).
    pub fn lock(&self) -> MutexGuard<'_, Shared<A>> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The counters.
    pub fn stats(&self) -> Stats {
        self.lock().api.meter().stats
    }

    /// The successful writes done so far, and the time from the first to
    /// the last of them.
    pub fn write_span(&self) -> (usize, Duration) {
        self.lock().api.meter().write_span()
    }

    /// Applies `fault` to the next `count` API requests (after any faults
    /// already pending).
    pub fn inject(&self, fault: Fault, count: u32) {
        if count > 0 {
            self.lock().faults.queue.push_back((fault, count));
        }
    }

    /// Applies `fault` to every `every`-th API request from now on (after
    /// any pending faults; token requests are not counted); `None` stops it.
    pub fn inject_every(&self, fault: Option<Fault>, every: u32) {
        self.lock().faults.periodic = fault.filter(|_| every > 0).map(|f| (f, every, 0));
    }

    /// Delays every API request by `ms` milliseconds.
    pub fn set_latency(&self, ms: u64) {
        self.lock().latency_ms = ms;
    }

    /// Delays every API request by up to `ms` more milliseconds, at random
    /// (so that requests sent together may arrive in any order).
    pub fn set_jitter(&self, ms: u64) {
        self.lock().jitter_ms = ms;
    }

    /// Invalidates every token issued so far (they get `401` from now on).
    pub fn expire_tokens(&self) {
        self.lock().api.expire_tokens();
    }

    /// Starts (`true`) or ends an outage: meanwhile every request, token
    /// requests included, has its connection dropped without an answer.
    pub fn set_down(&self, down: bool) {
        self.lock().down = down;
    }
}

/// A running emulator; dropping it stops the server.
#[derive(Debug)]
pub struct Emulator<A> {
    state: Arc<EmulatorState<A>>,
    addr: SocketAddr,
    task: JoinHandle<()>,
}

impl<A> Drop for Emulator<A> {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl<A: Api> Emulator<A> {
    /// Serves `api` on `addr` (port 0: a free one).
    pub async fn launch(api: A, addr: SocketAddr) -> std::io::Result<Self> {
        let listener = TcpListener::bind(addr).await?;
        let mut addr = listener.local_addr()?;
        if addr.ip().is_unspecified() {
            let ip = if addr.is_ipv4() { IpAddr::V4(Ipv4Addr::LOCALHOST) } else { IpAddr::V6(Ipv6Addr::LOCALHOST) };
            addr.set_ip(ip);
        }
        let shared = Shared { api, faults: Faults::default(), latency_ms: 0, jitter_ms: 0, down: false };
        let state = Arc::new(EmulatorState { inner: Mutex::new(shared) });
        let task = tokio::spawn(accept_loop(listener, state.clone()));
        Ok(Self { state, addr, task })
    }

    /// The address the server listens on (loopback if bound to all addresses).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`.
    pub fn authority_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The shared state, usable after the `Emulator` is moved elsewhere.
    pub fn state(&self) -> Arc<EmulatorState<A>> {
        self.state.clone()
    }

    /// The counters.
    pub fn stats(&self) -> Stats {
        self.state.stats()
    }

    /// The successful writes done so far, and the time from the first to
    /// the last of them.
    pub fn write_span(&self) -> (usize, Duration) {
        self.state.write_span()
    }

    /// Applies `fault` to the next `count` API requests.
    pub fn inject(&self, fault: Fault, count: u32) {
        self.state.inject(fault, count)
    }

    /// See [`EmulatorState::inject_every`].
    pub fn inject_every(&self, fault: Option<Fault>, every: u32) {
        self.state.inject_every(fault, every)
    }

    /// Delays every API request by `ms` milliseconds.
    pub fn set_latency(&self, ms: u64) {
        self.state.set_latency(ms)
    }

    /// See [`EmulatorState::set_jitter`].
    pub fn set_jitter(&self, ms: u64) {
        self.state.set_jitter(ms)
    }

    /// See [`EmulatorState::set_down`].
    pub fn set_down(&self, down: bool) {
        self.state.set_down(down)
    }

    /// Invalidates every token issued so far.
    pub fn expire_tokens(&self) {
        self.state.expire_tokens()
    }
}

async fn accept_loop<A: Api>(listener: TcpListener, state: Arc<EmulatorState<A>>) {
    // Connections live in the set, so aborting this task closes them all.
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let stream = match accepted {
                    Ok((stream, _)) => stream,
                    Err(_) => {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let state = state.clone();
                let local = stream.local_addr().ok();
                conns.spawn(async move {
                    let svc = service_fn(move |req| serve_http(state.clone(), local, req));
                    let _ = http1::Builder::new().serve_connection(TokioIo::new(stream), svc).await;
                });
            }
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
}

/// Every request an API received (bodies and decoded queries), whatever its
/// fate (refused, faulted, answered): the privacy tests' proof that a value
/// never left. An API records in its `route`, which runs before any fault.
#[derive(Debug, Default)]
pub struct ReceivedLog(Vec<bytes::Bytes>);

impl ReceivedLog {
    /// Records a request's query (percent-decoded) and body.
    pub fn record(&mut self, req: &Request) {
        if !req.query.is_empty() {
            let query = percent_encoding::percent_decode_str(&req.query).decode_utf8_lossy().into_owned();
            self.0.push(bytes::Bytes::from(query));
        }
        if !req.body.is_empty() {
            self.0.push(req.body.clone());
        }
    }

    /// Whether any request carried `needle`, as UTF-8 or as JSON escapes.
    pub fn contains(&self, needle: &str) -> bool {
        let escaped = serde_json::to_string(needle).unwrap_or_default();
        let escaped = escaped.trim_matches('"').to_owned();
        self.0.iter().any(|b| {
            let text = String::from_utf8_lossy(b);
            text.contains(needle) || text.contains(&escaped)
        })
    }
}

/// A JSON answer with a plain `application/json` content type.
pub fn json_response(status: u16, body: &Value) -> HttpResponse {
    let mut r = Response::new(Full::new(Bytes::from(serde_json::to_vec(body).unwrap_or_default())));
    *r.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    r.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/json; charset=utf-8"));
    r
}

/// The API's error answer for an injected `status`; 503 and 429 carry
/// `Retry-After: 1`.
fn injected<A: Api>(status: u16, req: &Request) -> HttpResponse {
    let mut r = A::error(status, req);
    if status == 503 || status == 429 {
        r.headers_mut().insert(RETRY_AFTER, HeaderValue::from_static("1"));
    }
    r
}

async fn serve_http<A: Api>(
    state: Arc<EmulatorState<A>>,
    local: Option<SocketAddr>,
    req: hyper::Request<Incoming>,
) -> Result<HttpResponse, std::io::Error> {
    let (parts, body) = req.into_parts();
    let bytes = body.collect().await.map_err(std::io::Error::other)?.to_bytes();
    let mut headers = HashMap::new();
    for (k, v) in &parts.headers {
        headers.insert(k.as_str().to_ascii_lowercase(), String::from_utf8_lossy(v.as_bytes()).into_owned());
    }
    let path = parts.uri.path().to_string();
    let method = parts.method.as_str().to_ascii_uppercase();
    if let Some(rest) = path.strip_prefix("/_emulator/") {
        return Ok(control::control(&state, &method, rest, &bytes));
    }
    let origin = match headers.get("host") {
        Some(h) => format!("http://{h}"),
        None => format!("http://{}", local.map_or_else(|| "127.0.0.1".to_string(), |a| a.to_string())),
    };
    let query = parts.uri.query().unwrap_or("").to_string();
    let req = Request { method, path, query, headers, body: bytes, origin };
    let (latency, fault) = {
        let mut st = state.lock();
        if st.down {
            return Err(std::io::Error::other("outage: drop the connection"));
        }
        st.api.meter_mut().stats.requests += 1;
        match st.api.route(&req) {
            Route::Answer(answer) => return Ok(answer),
            Route::Serve { batch } => {
                let jitter = if st.jitter_ms > 0 { rand::random_range(0..=st.jitter_ms) } else { 0 };
                (st.latency_ms + jitter, st.faults.take(batch))
            }
        }
    };
    if latency > 0 {
        tokio::time::sleep(Duration::from_millis(latency)).await;
    }
    // Faults that stop the request before it runs.
    match &fault {
        Some(Fault::Drop) => return Err(std::io::Error::other("injected fault: drop the connection")),
        Some(Fault::Status(status)) => {
            if *status == 429 {
                state.lock().api.meter_mut().stats.throttled += 1;
            }
            return Ok(injected::<A>(*status, &req));
        }
        Some(Fault::Throttle(retry_after)) => {
            state.lock().api.meter_mut().stats.throttled += 1;
            let mut r = A::error(429, &req);
            if let Ok(v) = HeaderValue::from_str(retry_after) {
                r.headers_mut().insert(RETRY_AFTER, v);
            }
            return Ok(r);
        }
        Some(Fault::Raw(status, body)) => {
            let mut r = Response::new(Full::new(Bytes::from(body.clone())));
            *r.status_mut() = StatusCode::from_u16(*status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            r.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8"));
            return Ok(r);
        }
        Some(Fault::Garbage) => {
            let mut r = Response::new(Full::new(Bytes::from_static(
                b"<!DOCTYPE html><html><body><h1>Bad gateway</h1><p>upstream said: \x00\xff</p></body></html>",
            )));
            r.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static(A::CONTENT_TYPE));
            return Ok(r);
        }
        _ => {}
    }
    let mut http = state.lock().api.serve(&req, fault.as_ref());
    // The work is done; the answer may still be lost.
    match fault {
        Some(Fault::RunThenDrop) => return Err(std::io::Error::other("injected fault: ran it, then dropped")),
        Some(Fault::RunThenStall(ms)) => {
            tokio::time::sleep(Duration::from_millis(ms)).await;
            return Err(std::io::Error::other("injected fault: ran it, then stalled"));
        }
        Some(Fault::RunThenStatus(status)) => return Ok(injected::<A>(status, &req)),
        Some(Fault::Truncated) => {
            let full = http.body_mut().collect().await.map(|b| b.to_bytes()).unwrap_or_else(|e: Infallible| match e {});
            let full = if full.len() < 2 { Bytes::from_static(b"{\"value\":[{\"id\":\"1\"}]}") } else { full };
            *http.status_mut() = StatusCode::OK;
            http.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static(A::CONTENT_TYPE));
            *http.body_mut() = Full::new(full.slice(..full.len() / 2));
        }
        _ => {}
    }
    Ok(http)
}

#[cfg(test)]
mod tests {
    //! The harness with a toy API plugged in: what it does is the harness's
    //! whatever the API (Graph's own tests are in `crate::graph_emulator`).

    use super::*;
    use reqwest::Client;
    use serde_json::json;

    /// Items posted to `/items` (or several at once to `/batch`), behind a
    /// token from `/token`.
    #[derive(Debug, Default)]
    struct Echo {
        meter: Meter,
        token_valid: bool,
        items: Vec<Value>,
    }

    impl Api for Echo {
        const CONTENT_TYPE: &'static str = "application/json";
        const CONTROL_ROUTES: &'static [&'static str] = &["GET items"];

        fn route(&mut self, req: &Request) -> Route {
            match req.path.as_str() {
                "/token" => {
                    self.token_valid = true;
                    self.meter.stats.tokens_issued += 1;
                    Route::Answer(json_response(200, &json!({"token": "t"})))
                }
                "/items" => Route::Serve { batch: false },
                "/batch" => {
                    self.meter.stats.batch_requests += 1;
                    Route::Serve { batch: true }
                }
                other => Route::Answer(json_response(404, &json!({"error": format!("no {other}")}))),
            }
        }

        fn serve(&mut self, req: &Request, fault: Option<&Fault>) -> HttpResponse {
            if !self.token_valid || req.header("authorization") != Some("Bearer t") {
                self.meter.stats.unauthorized += 1;
                return json_response(401, &json!({"error": "token"}));
            }
            if req.method == "GET" {
                return json_response(200, &json!({"items": self.items}));
            }
            let body: Value = serde_json::from_slice(&req.body).unwrap_or_default();
            let mut new = if req.path == "/batch" { body.as_array().cloned().unwrap_or_default() } else { vec![body] };
            if fault == Some(&Fault::BatchMissingResponses) {
                new.truncate(new.len() / 2);
            }
            for item in &new {
                self.items.push(item.clone());
                self.meter.wrote();
            }
            json_response(201, &json!({"created": new}))
        }

        fn error(status: u16, _req: &Request) -> HttpResponse {
            json_response(status, &json!({"error": status}))
        }

        fn expire_tokens(&mut self) {
            self.token_valid = false;
        }

        fn configure(&mut self, _config: &Value) -> Result<Map<String, Value>, String> {
            Ok(Map::new())
        }

        fn control(&mut self, method: &str, route: &str, _body: &[u8]) -> Option<HttpResponse> {
            (method, route).eq(&("GET", "items")).then(|| json_response(200, &json!(self.items)))
        }

        fn meter(&self) -> &Meter {
            &self.meter
        }

        fn meter_mut(&mut self) -> &mut Meter {
            &mut self.meter
        }
    }

    async fn post(http: &Client, url: &str, body: Value) -> reqwest::Result<reqwest::Response> {
        http.post(url).bearer_auth("t").json(&body).send().await
    }

    #[tokio::test]
    async fn faults_latency_outages_and_control_for_any_api() {
        let em = Emulator::launch(Echo::default(), SocketAddr::from((Ipv4Addr::LOCALHOST, 0))).await.unwrap();
        let http = Client::new();
        let url = |p: &str| format!("{}{p}", em.authority_url());
        let count = || em.state().lock().api.items.len();
        // Answered by the API itself: never faulted.
        em.inject(Fault::Status(500), 1);
        assert_eq!(http.post(url("/token")).send().await.unwrap().status(), 200);
        assert_eq!(post(&http, &url("/items"), json!(1)).await.unwrap().status(), 500);
        assert_eq!(count(), 0, "a status fault stops the request");

        // Before the request runs: the API's error body, Retry-After.
        em.inject(Fault::Status(503), 1);
        let r = post(&http, &url("/items"), json!(1)).await.unwrap();
        assert_eq!((r.status().as_u16(), r.headers()["retry-after"].to_str().unwrap()), (503, "1"));
        assert_eq!(r.json::<Value>().await.unwrap(), json!({"error": 503}));
        em.inject(Fault::Throttle("NaN".into()), 1);
        let r = post(&http, &url("/items"), json!(1)).await.unwrap();
        assert_eq!((r.status().as_u16(), r.headers()["retry-after"].to_str().unwrap()), (429, "NaN"));
        em.inject(Fault::Drop, 1);
        assert!(post(&http, &url("/items"), json!(1)).await.is_err());
        em.inject(Fault::Garbage, 1);
        let r = post(&http, &url("/items"), json!(1)).await.unwrap();
        assert_eq!((r.status().as_u16(), r.headers()["content-type"].to_str().unwrap()), (200, "application/json"));
        assert!(serde_json::from_slice::<Value>(&r.bytes().await.unwrap()).is_err());
        em.inject(Fault::Raw(502, "<html>".into()), 1);
        let r = post(&http, &url("/items"), json!(1)).await.unwrap();
        assert_eq!((r.status().as_u16(), r.text().await.unwrap()), (502, "<html>".to_string()));
        assert_eq!(count(), 0, "none of them ran");

        // After it ran: the answer cut or lost.
        em.inject(Fault::Truncated, 1);
        let r = post(&http, &url("/items"), json!("cut")).await.unwrap();
        assert_eq!(r.status(), 200);
        assert!(serde_json::from_str::<Value>(&r.text().await.unwrap()).is_err());
        em.inject(Fault::RunThenStatus(502), 1);
        assert_eq!(post(&http, &url("/items"), json!("lost")).await.unwrap().status(), 502);
        em.inject(Fault::RunThenDrop, 1);
        assert!(post(&http, &url("/items"), json!("dropped")).await.is_err());
        assert_eq!(count(), 3, "all of them ran");

        // A batch fault waits for a batch; the API applies it.
        em.inject(Fault::BatchMissingResponses, 1);
        assert_eq!(post(&http, &url("/items"), json!("single")).await.unwrap().status(), 201);
        let r = post(&http, &url("/batch"), json!([1, 2, 3, 4])).await.unwrap();
        assert_eq!(r.json::<Value>().await.unwrap(), json!({"created": [1, 2]}));
        assert_eq!(count(), 6);

        // Every n-th request.
        em.inject_every(Some(Fault::Status(504)), 2);
        let mut statuses = Vec::new();
        for _ in 0..4 {
            statuses.push(http.get(url("/items")).bearer_auth("t").send().await.unwrap().status().as_u16());
        }
        assert_eq!(statuses, [200, 504, 200, 504]);
        em.inject_every(None, 0);

        em.set_latency(120);
        let start = Instant::now();
        assert_eq!(http.get(url("/items")).bearer_auth("t").send().await.unwrap().status(), 200);
        assert!(start.elapsed() >= Duration::from_millis(120));
        em.set_latency(0);

        // An outage drops everything, the API's own answers included; the
        // control plane still answers.
        let before = em.stats();
        em.set_down(true);
        assert!(http.post(url("/token")).send().await.is_err());
        assert!(post(&http, &url("/items"), json!("x")).await.is_err());
        let stats: Stats = http.get(url("/_emulator/stats")).send().await.unwrap().json().await.unwrap();
        assert_eq!(stats, before, "nothing counted during the outage");
        em.set_down(false);

        // The control plane: the harness's routes and the API's.
        let ctl = |p: &str| url(&format!("/_emulator/{p}"));
        let items: Value = http.get(ctl("items")).send().await.unwrap().json().await.unwrap();
        assert_eq!(items, json!(["cut", "lost", "dropped", "single", 1, 2]));
        let r = http.get(ctl("nope")).send().await.unwrap();
        assert_eq!(r.status(), 404);
        assert!(r.text().await.unwrap().contains("try GET items, GET stats"));
        let r = http.post(ctl("config")).json(&json!({"latency_ms": 0})).send().await.unwrap();
        assert_eq!(r.json::<Value>().await.unwrap(), json!({"latency_ms": 0}));
        let r = http.post(ctl("fault")).json(&json!({"fault": "status", "status": 418})).send().await.unwrap();
        assert_eq!(r.json::<Value>().await.unwrap(), json!({"ok": true, "pending": 1}));
        assert_eq!(post(&http, &url("/items"), json!("x")).await.unwrap().status(), 418);
        assert_eq!(http.post(ctl("expire_tokens")).send().await.unwrap().status(), 200);
        assert_eq!(post(&http, &url("/items"), json!("x")).await.unwrap().status(), 401);

        let s = em.stats();
        assert_eq!((s.tokens_issued, s.batch_requests, s.throttled, s.unauthorized, s.writes), (1, 1, 1, 1, 6));
        // Every request but the two during the outage and the control plane's.
        assert_eq!(s.requests, 19);
        let (writes, span) = em.write_span();
        assert_eq!(writes, 6);
        assert!(span < Duration::from_secs(60), "{span:?}");
    }
}
