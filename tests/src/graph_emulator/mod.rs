//! A local emulator of the Microsoft Graph SharePoint-lists API, for testing
//! the Graph target without a tenant: the first API plugged into the
//! emulator harness (`crate::emulator`), which serves it and does the
//! faults, latency, outages, counters and `/_emulator` control routes.
//!
//! It serves, over plain HTTP on loopback:
//!
//! - the Microsoft identity platform's client-credentials token endpoint,
//!   `POST /{tenant}/oauth2/v2.0/token`;
//! - `/v1.0/sites/{site}/lists[...]`: lists, columns, items (create, read,
//!   `fields` update, delete, `If-Match`), `$filter` with Graph's
//!   non-indexed-column refusal, paging with `@odata.nextLink`, item delta
//!   with tokens;
//! - `POST /v1.0/$batch` (at most 20 requests, fully parallel or fully
//!   sequential `dependsOn` chains, anything else refused with Graph's 400;
//!   responses in a seeded shuffled order; per-request throttling);
//! - values held to their column's JSON type, single-line text to 255
//!   characters, read-only and unknown fields refused, dates and times kept
//!   to whole seconds;
//! - resource-unit throttling over a sliding 60 s window (`429` with
//!   `Retry-After`), and the harness's injectable faults (error statuses
//!   with Graph's error body, dropped connections, garbage or truncated
//!   bodies, `$batch` answers missing responses, latency, and requests that
//!   run and then lose their answer), once, n times or on every n-th
//!   request;
//! - `/_emulator/...`: inspection and control without authentication (the
//!   harness's routes, `GET lists`, and `budget_per_min` in `POST config`).
//!
//! Every site id is accepted; a site exists implicitly per id string (and
//! `sites/{hostname}:/{path}:` maps to a stable composite id).

mod graph;
mod odata;
mod state;

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Response, StatusCode};
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use crate::emulator::{self, json_response, Api, HttpResponse, Meter, Request, Route};
pub use crate::emulator::{Fault, Stats};
use graph::{Req, Resp};
use state::{GraphError, State};

/// The `Content-Type` Graph answers JSON with.
pub(crate) const GRAPH_CONTENT_TYPE: &str =
    "application/json;odata.metadata=minimal;odata.streaming=true;IEEE754Compatible=false;charset=utf-8";
const SCOPE: &str = "https://graph.microsoft.com/.default";

/// How an emulator behaves: the app registration it accepts and its budget.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EmulatorConfig {
    /// The tenant in the token endpoint's path (default `tenant`).
    pub tenant_id: String,
    /// The accepted client id (default `client`).
    pub client_id: String,
    /// The accepted client secret (default `secret`).
    pub client_secret: String,
    /// How long issued tokens stay valid, in seconds (default 3600).
    pub token_lifetime_secs: u64,
    /// Resource units allowed per sliding 60 s window; `None` = unlimited.
    pub budget_per_min: Option<u32>,
    /// Seeds the order `$batch` responses come back in (Graph answers them
    /// in any order): the same seed, the same order.
    pub seed: u64,
    /// The site's time zone, an IANA name (default `UTC`): date-only
    /// columns keep the instant of local midnight in it.
    pub time_zone: String,
}

impl Default for EmulatorConfig {
    fn default() -> Self {
        Self {
            tenant_id: "tenant".into(),
            client_id: "client".into(),
            client_secret: "secret".into(),
            token_lifetime_secs: 3600,
            budget_per_min: None,
            seed: 14,
            time_zone: "UTC".into(),
        }
    }
}

/// One list item as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ItemSnapshot {
    /// The item id (`"1"`, `"2"`, ...).
    pub id: String,
    /// The eTag, quotes included: `"guid,version"`.
    pub etag: String,
    /// The values of the list's own columns (`Title` included; lookups as
    /// `XLookupId`); system fields are left out.
    pub fields: serde_json::Map<String, Value>,
    /// When it was created, in milliseconds since the Unix epoch.
    #[serde(default)]
    pub created_ms: u64,
}

/// One list with its columns and items.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ListSnapshot {
    /// The list id (a GUID).
    pub id: String,
    /// The site the list belongs to.
    pub site_id: String,
    /// The list's display name.
    pub display_name: String,
    /// Column definitions as Graph shows them, `Title` first.
    pub columns: Vec<Value>,
    /// Items in id order.
    pub items: Vec<ItemSnapshot>,
}

/// The Graph API as an emulator plug-in: the app registration and its
/// tokens, the budget, and the SharePoint sites, lists and items.
#[derive(Debug)]
pub struct Graph(State);

/// A running Graph emulator; dropping it stops the server.
pub type Emulator = emulator::Emulator<Graph>;

/// The shared state of a running Graph emulator, for inspection and control
/// from sync or async code.
pub type EmulatorState = emulator::EmulatorState<Graph>;

impl EmulatorState {
    /// Every list with its columns and items, in creation order.
    pub fn lists(&self) -> Vec<ListSnapshot> {
        self.lock().api.0.snapshots()
    }

    /// Changes the resource-unit budget per sliding minute (`None` = unlimited).
    pub fn set_budget(&self, per_min: Option<u32>) {
        self.lock().api.0.budget = per_min;
    }

    /// A person (site user id `person`) edits the item with this `SyncKey`
    /// in the list with this display name, "in SharePoint": checked like any
    /// write; version, eTag, `Modified` and `EditorLookupId` move on.
    pub fn person_edit(
        &self,
        list: &str,
        sync_key: &str,
        fields: &Map<String, Value>,
        person: u64,
    ) -> Result<(), String> {
        graph::person_edit(&mut self.lock().api.0, list, sync_key, fields, person)
    }

    /// A person creates an item; returns its id.
    pub fn person_create(&self, list: &str, fields: &Map<String, Value>, person: u64) -> Result<u64, String> {
        graph::person_create(&mut self.lock().api.0, list, fields, person)
    }

    /// A person deletes the item with this `SyncKey`.
    pub fn person_delete(&self, list: &str, sync_key: &str) -> Result<(), String> {
        graph::person_delete(&mut self.lock().api.0, list, sync_key)
    }

    /// App writes that changed nothing on their item: echoes.
    pub fn unchanged_writes(&self) -> u64 {
        self.lock().api.0.unchanged_writes
    }

    /// Delta pages served.
    pub fn delta_pages(&self) -> u64 {
        self.lock().api.0.delta_pages
    }

    /// Every delta token of the list so far is answered `410 Gone` with
    /// `code` (`resyncRequired`, `resyncChangesApplyDifferences`,
    /// `resyncChangesUploadDifferences`, `syncStateNotFound`) and a
    /// `Location` starting a fresh enumeration.
    pub fn reset_delta(&self, list: &str, code: &str) -> Result<(), String> {
        graph::reset_delta(&mut self.lock().api.0, list, code)
    }
}

impl Emulator {
    /// Starts an emulator on a free loopback port.
    pub async fn start(config: EmulatorConfig) -> std::io::Result<Emulator> {
        Self::start_on(config, SocketAddr::from((Ipv4Addr::LOCALHOST, 0))).await
    }

    /// Starts an emulator on `addr`.
    pub async fn start_on(config: EmulatorConfig, addr: SocketAddr) -> std::io::Result<Emulator> {
        if jiff::tz::TimeZone::get(&config.time_zone).is_err() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("unknown time zone {:?} (an IANA name such as Europe/Berlin)", config.time_zone),
            ));
        }
        Self::launch(Graph(State::new(config)), addr).await
    }

    /// `http://127.0.0.1:PORT/v1.0`.
    pub fn base_url(&self) -> String {
        format!("{}/v1.0", self.authority_url())
    }

    /// Every list with its columns and items, in creation order.
    pub fn lists(&self) -> Vec<ListSnapshot> {
        self.state().lists()
    }

    /// Changes the resource-unit budget per sliding minute (`None` = unlimited).
    pub fn set_budget(&self, per_min: Option<u32>) {
        self.state().set_budget(per_min)
    }

    /// See [`EmulatorState::person_edit`].
    pub fn person_edit(
        &self,
        list: &str,
        sync_key: &str,
        fields: &Map<String, Value>,
        person: u64,
    ) -> Result<(), String> {
        self.state().person_edit(list, sync_key, fields, person)
    }

    /// See [`EmulatorState::person_create`].
    pub fn person_create(&self, list: &str, fields: &Map<String, Value>, person: u64) -> Result<u64, String> {
        self.state().person_create(list, fields, person)
    }

    /// See [`EmulatorState::person_delete`].
    pub fn person_delete(&self, list: &str, sync_key: &str) -> Result<(), String> {
        self.state().person_delete(list, sync_key)
    }

    /// App writes that changed nothing on their item: echoes.
    pub fn unchanged_writes(&self) -> u64 {
        self.state().unchanged_writes()
    }

    /// Delta pages served.
    pub fn delta_pages(&self) -> u64 {
        self.state().delta_pages()
    }

    /// See [`EmulatorState::reset_delta`].
    pub fn reset_delta(&self, list: &str, code: &str) -> Result<(), String> {
        self.state().reset_delta(list, code)
    }
}

/// The path after `/v1.0` (empty or starting with `/`), or None for a path
/// outside the API. The token endpoint's address is
/// `{authority}/{tenant}/oauth2/v2.0/token`.
fn graph_path(path: &str) -> Option<&str> {
    path.strip_prefix("/v1.0").filter(|p| p.is_empty() || p.starts_with('/'))
}

fn is_batch(path: &str) -> bool {
    let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    matches!(segs.as_slice(), ["v1.0", b] if *b == "$batch" || b.eq_ignore_ascii_case("%24batch"))
}

impl Api for Graph {
    const CONTENT_TYPE: &'static str = GRAPH_CONTENT_TYPE;
    const CONTROL_ROUTES: &'static [&'static str] =
        &["GET lists", "POST edit", "POST create", "POST delete", "POST reset_delta"];

    fn route(&mut self, req: &Request) -> Route {
        let segs: Vec<&str> = req.path.split('/').filter(|s| !s.is_empty()).collect();
        if let [tenant, "oauth2", "v2.0", "token"] = segs.as_slice() {
            return Route::Answer(token(&mut self.0, &req.method, tenant, &req.headers, &req.body));
        }
        if graph_path(&req.path).is_none() {
            let e = GraphError::new(400, "BadRequest", format!("Invalid version or resource: '{}'.", req.path));
            return Route::Answer(to_http(Resp::error(e), None));
        }
        let batch = is_batch(&req.path);
        if batch {
            self.0.meter.stats.batch_requests += 1;
        }
        Route::Serve { batch }
    }

    fn serve(&mut self, req: &Request, fault: Option<&Fault>) -> HttpResponse {
        let body = if req.body.is_empty() {
            Ok(None)
        } else {
            serde_json::from_slice::<Value>(&req.body).map(Some).map_err(|e| e.to_string())
        };
        let graph_req = Req {
            method: req.method.clone(),
            path: graph_path(&req.path).unwrap_or_default().to_string(),
            query: odata::parse_query(&req.query),
            headers: req.headers.clone(),
            body,
            origin: req.origin.clone(),
        };
        let is_batch = is_batch(&req.path);
        let st = &mut self.0;
        let resp = match st.check_auth(req.header("authorization")) {
            Err(e) => {
                st.meter.stats.unauthorized += 1;
                Resp::error(e)
                .with_header("WWW-Authenticate", "Bearer realm=\"\", authorization_uri=\"https://login.microsoftonline.com/common/oauth2/authorize\", client_id=\"00000003-0000-0000-c000-000000000000\"")
            }
            Ok(()) if is_batch && graph_req.method != "POST" => {
                Resp::error(GraphError::new(405, "methodNotAllowed", "The $batch endpoint only accepts POST."))
            }
            Ok(()) if is_batch => graph::serve_batch(st, &graph_req, fault == Some(&Fault::BatchMissingResponses)),
            Ok(()) => graph::serve(st, &graph_req),
        };
        to_http(resp, req.header("client-request-id"))
    }

    fn error(status: u16, req: &Request) -> HttpResponse {
        to_http(Resp::error(fault_error(status)), req.header("client-request-id"))
    }

    fn expire_tokens(&mut self) {
        self.0.tokens.clear();
    }

    fn configure(&mut self, config: &Value) -> Result<Map<String, Value>, String> {
        if let Some(b) = config.get("budget_per_min") {
            match b {
                Value::Null => self.0.budget = None,
                b => match b.as_u64().and_then(|b| u32::try_from(b).ok()) {
                    Some(b) => self.0.budget = Some(b),
                    None => return Err("'budget_per_min' must be a non-negative integer or null".into()),
                },
            }
        }
        let mut settings = Map::new();
        settings.insert("budget_per_min".into(), json!(self.0.budget));
        Ok(settings)
    }

    fn control(&mut self, method: &str, route: &str, body: &[u8]) -> Option<HttpResponse> {
        // A person's edits "in SharePoint": {"list", "sync_key", "fields", "editor"}.
        let person = |body: &[u8]| -> Result<(String, String, Map<String, Value>, u64), String> {
            let v: Value = serde_json::from_slice(body).map_err(|e| format!("the body is not JSON: {e}"))?;
            let list = v.get("list").and_then(Value::as_str).ok_or("list is required")?.to_owned();
            let key = v.get("sync_key").and_then(Value::as_str).unwrap_or_default().to_owned();
            let fields = v.get("fields").and_then(Value::as_object).cloned().unwrap_or_default();
            let editor = v.get("editor").and_then(Value::as_u64).unwrap_or(7);
            Ok((list, key, fields, editor))
        };
        let answer = |r: Result<Value, String>| match r {
            Ok(v) => json_response(200, &v),
            Err(e) => json_response(400, &json!({"error": e})),
        };
        match (method, route) {
            ("GET", "lists") => Some(json_response(200, &serde_json::to_value(self.0.snapshots()).unwrap_or_default())),
            ("POST", "edit") => Some(answer(person(body).and_then(|(l, k, f, e)| {
                graph::person_edit(&mut self.0, &l, &k, &f, e).map(|()| json!({"ok": true}))
            }))),
            ("POST", "create") => Some(answer(
                person(body)
                    .and_then(|(l, _, f, e)| graph::person_create(&mut self.0, &l, &f, e).map(|id| json!({"id": id}))),
            )),
            ("POST", "reset_delta") => Some(answer(person(body).and_then(|(l, _, f, _)| {
                let code = f.get("code").and_then(Value::as_str).unwrap_or("resyncRequired").to_owned();
                graph::reset_delta(&mut self.0, &l, &code).map(|()| json!({"ok": true}))
            }))),
            ("POST", "delete") => Some(answer(
                person(body)
                    .and_then(|(l, k, _, _)| graph::person_delete(&mut self.0, &l, &k).map(|()| json!({"ok": true}))),
            )),
            _ => None,
        }
    }

    fn meter(&self) -> &Meter {
        &self.0.meter
    }

    fn meter_mut(&mut self) -> &mut Meter {
        &mut self.0.meter
    }
}

fn to_http(resp: Resp, client_request_id: Option<&str>) -> HttpResponse {
    let body = match &resp.body {
        Some(b) => Bytes::from(serde_json::to_vec(b).unwrap_or_default()),
        None => Bytes::new(),
    };
    let mut r = Response::new(Full::new(body));
    *r.status_mut() = StatusCode::from_u16(resp.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let h = r.headers_mut();
    if resp.body.is_some() {
        h.insert("content-type", GRAPH_CONTENT_TYPE.parse().expect("valid header"));
    }
    let request_id = odata::guid();
    let mut extra = vec![("request-id".to_string(), request_id.clone())];
    extra.push(("client-request-id".to_string(), client_request_id.map_or(request_id, str::to_string)));
    for (k, v) in resp.headers.iter().chain(extra.iter()) {
        if let (Ok(name), Ok(value)) =
            (hyper::header::HeaderName::from_bytes(k.as_bytes()), hyper::header::HeaderValue::from_str(v))
        {
            h.insert(name, value);
        }
    }
    r
}

fn fault_error(status: u16) -> GraphError {
    let code = match status {
        400 => "invalidRequest",
        401 => "InvalidAuthenticationToken",
        403 => "accessDenied",
        404 => "itemNotFound",
        409 => "conflict",
        412 => "preconditionFailed",
        429 => "TooManyRequests",
        500 => "generalException",
        501 => "notSupported",
        502 => "badGateway",
        503 => "serviceNotAvailable",
        504 => "gatewayTimeout",
        _ => "UnknownError",
    };
    GraphError::new(status, code, format!("Injected fault: the service answered {status}."))
}

fn token_error(status: u16, error: &str, description: &str) -> HttpResponse {
    let body = json!({"error": error, "error_description": description, "error_codes": [],
        "timestamp": odata::now_iso().replace('T', " "), "trace_id": odata::guid(),
        "correlation_id": odata::guid()});
    json_response(status, &body)
}

/// The token endpoint (the harness counted the request).
fn token(st: &mut State, method: &str, tenant: &str, headers: &HashMap<String, String>, body: &[u8]) -> HttpResponse {
    if method != "POST" {
        return token_error(405, "invalid_request", "AADSTS900561: The endpoint only accepts POST requests.");
    }
    let form: HashMap<String, String> = serde_urlencoded::from_bytes(body).unwrap_or_default();
    let mut client_id = form.get("client_id").cloned();
    let mut secret = form.get("client_secret").cloned();
    if let Some(basic) = headers.get("authorization").and_then(|h| h.strip_prefix("Basic ")) {
        let decoded = odata::b64_decode(basic.trim()).and_then(|b| String::from_utf8(b).ok()).unwrap_or_default();
        if let Some((id, s)) = decoded.split_once(':') {
            let dec = |x: &str| percent_encoding::percent_decode_str(x).decode_utf8_lossy().into_owned();
            client_id = Some(dec(id));
            secret = Some(dec(s));
        }
    }
    match form.get("grant_type").map(String::as_str) {
        Some("client_credentials") => {}
        Some(other) => {
            return token_error(
                400,
                "invalid_request",
                &format!("AADSTS70003: The app requested an unsupported grant type '{other}'."),
            );
        }
        None => {
            return token_error(
                400,
                "invalid_request",
                "AADSTS900144: The request body must contain the following parameter: 'grant_type'.",
            );
        }
    }
    let Some(client_id) = client_id else {
        return token_error(
            400,
            "invalid_request",
            "AADSTS900144: The request body must contain the following parameter: 'client_id'.",
        );
    };
    match form.get("scope") {
        None => {
            return token_error(
                400,
                "invalid_request",
                "AADSTS900144: The request body must contain the following parameter: 'scope'.",
            );
        }
        Some(scope) if scope.split_whitespace().collect::<Vec<_>>() != [SCOPE] => {
            return token_error(
                400,
                "invalid_scope",
                &format!(
                    "AADSTS1002012: The provided value for scope {scope} is not valid. Client credential flows must \
                     have a scope value with /.default suffixed to the resource identifier (application ID URI)."
                ),
            );
        }
        Some(_) => {}
    }
    if tenant != st.config.tenant_id {
        return token_error(
            401,
            "invalid_client",
            &format!("AADSTS90002: Tenant '{tenant}' not found. Check to make sure you have the correct tenant ID."),
        );
    }
    if client_id != st.config.client_id {
        return token_error(
            401,
            "invalid_client",
            &format!("AADSTS700016: Application with identifier '{client_id}' was not found in the directory."),
        );
    }
    if secret.as_deref() != Some(st.config.client_secret.as_str()) {
        return token_error(
            401,
            "invalid_client",
            &format!(
                "AADSTS7000215: Invalid client secret provided. Ensure the secret being sent in the request is \
                      the client secret value, not the client secret ID, for a secret added to app '{client_id}'."
            ),
        );
    }
    let lifetime = st.config.token_lifetime_secs;
    let access_token = st.issue_token();
    json_response(
        200,
        &json!({"token_type": "Bearer", "expires_in": lifetime, "ext_expires_in": lifetime,
                "access_token": access_token}),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderMap;
    use reqwest::{Client, Method};
    use std::time::{Duration, Instant};

    const SITE: &str = "/sites/site1";

    /// A response as the tests look at it.
    struct Got {
        status: u16,
        headers: HeaderMap,
        body: Value,
    }

    impl Got {
        fn header(&self, name: &str) -> Option<&str> {
            self.headers.get(name).and_then(|v| v.to_str().ok())
        }

        fn code(&self) -> &str {
            self.body["error"]["code"].as_str().unwrap_or("")
        }

        fn message(&self) -> &str {
            self.body["error"]["message"].as_str().unwrap_or("")
        }
    }

    struct T {
        em: Emulator,
        http: Client,
        token: String,
    }

    async fn fetch_token(em: &Emulator, http: &Client) -> String {
        let r = http
            .post(format!("{}/tenant/oauth2/v2.0/token", em.authority_url()))
            .form(&[
                ("grant_type", "client_credentials"),
                ("client_id", "client"),
                ("client_secret", "secret"),
                ("scope", SCOPE),
            ])
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let v: Value = r.json().await.unwrap();
        v["access_token"].as_str().unwrap().to_string()
    }

    impl T {
        async fn new() -> T {
            T::with(EmulatorConfig::default()).await
        }

        async fn with(config: EmulatorConfig) -> T {
            let em = Emulator::start(config).await.unwrap();
            let http = Client::new();
            let token = fetch_token(&em, &http).await;
            T { em, http, token }
        }

        fn url(&self, path: &str) -> String {
            if path.starts_with("http") {
                path.to_string()
            } else {
                format!("{}{path}", self.em.base_url())
            }
        }

        async fn call(&self, method: &str, path: &str, body: Option<Value>, headers: &[(&str, &str)]) -> Got {
            let mut rb = self
                .http
                .request(Method::from_bytes(method.as_bytes()).unwrap(), self.url(path))
                .bearer_auth(&self.token);
            for (k, v) in headers {
                rb = rb.header(*k, *v);
            }
            if let Some(b) = body {
                rb = rb.json(&b);
            }
            let r = rb.send().await.unwrap();
            let status = r.status().as_u16();
            let headers = r.headers().clone();
            let text = r.text().await.unwrap();
            let body = if text.is_empty() { Value::Null } else { serde_json::from_str(&text).unwrap() };
            Got { status, headers, body }
        }

        async fn get(&self, path: &str) -> Got {
            self.call("GET", path, None, &[]).await
        }

        async fn post(&self, path: &str, body: Value) -> Got {
            self.call("POST", path, Some(body), &[]).await
        }

        async fn patch(&self, path: &str, body: Value, headers: &[(&str, &str)]) -> Got {
            self.call("PATCH", path, Some(body), headers).await
        }

        /// Creates the `Employees` list; returns its id.
        async fn employees(&self) -> String {
            let r = self
                .post(
                    &format!("{SITE}/lists"),
                    json!({"displayName": "Employees", "columns": [
                        {"name": "Notes", "text": {"allowMultipleLines": true}},
                        {"name": "Age", "number": {}},
                        {"name": "Active", "boolean": {}},
                        {"name": "Born", "dateTime": {"format": "dateOnly"}},
                        {"name": "SyncKey", "text": {}, "indexed": true, "hidden": true},
                    ], "list": {"template": "genericList"}}),
                )
                .await;
            assert_eq!(r.status, 201, "{}", r.body);
            r.body["id"].as_str().unwrap().to_string()
        }

        async fn create(&self, list: &str, fields: Value) -> Got {
            self.post(&format!("{SITE}/lists/{list}/items"), json!({ "fields": fields })).await
        }

        async fn batch(&self, requests: Vec<Value>) -> Got {
            self.post("/$batch", json!({ "requests": requests })).await
        }
    }

    fn create_req(id: &str, title: &str) -> Value {
        json!({"id": id, "method": "POST", "url": "/sites/site1/lists/Employees/items",
               "headers": {"Content-Type": "application/json"}, "body": {"fields": {"Title": title}}})
    }

    fn etag_version(etag: &str) -> u64 {
        etag.trim_matches('"').rsplit(',').next().unwrap().parse().unwrap()
    }

    #[tokio::test]
    async fn token_endpoint_accepts_only_the_registered_app() {
        let em = Emulator::start(EmulatorConfig { budget_per_min: Some(1), ..Default::default() }).await.unwrap();
        let http = Client::new();
        let ask = |tenant: &str, form: Vec<(&str, &str)>| {
            let req = http.post(format!("{}/{tenant}/oauth2/v2.0/token", em.authority_url())).form(&form).send();
            async move {
                let r = req.await.unwrap();
                (r.status().as_u16(), r.json::<Value>().await.unwrap())
            }
        };
        let good = vec![
            ("grant_type", "client_credentials"),
            ("client_id", "client"),
            ("client_secret", "secret"),
            ("scope", SCOPE),
        ];
        // Token requests are never throttled, even with a budget of 1 RU.
        for _ in 0..3 {
            let (status, v) = ask("tenant", good.clone()).await;
            assert_eq!(status, 200, "{v}");
            assert_eq!(v["token_type"], "Bearer");
            assert_eq!(v["expires_in"], 3600);
            assert!(v["access_token"].as_str().is_some_and(|t| t.len() > 20));
        }
        let with = |k: &str, val: &'static str| {
            good.iter().map(|(a, b)| if *a == k { (*a, val) } else { (*a, *b) }).collect::<Vec<_>>()
        };
        let (status, v) = ask("tenant", with("client_secret", "wrong")).await;
        assert_eq!((status, v["error"].as_str()), (401, Some("invalid_client")));
        assert!(v["error_description"].as_str().unwrap().contains("AADSTS7000215"));
        let (status, v) = ask("tenant", with("client_id", "other")).await;
        assert_eq!((status, v["error"].as_str()), (401, Some("invalid_client")));
        let (status, v) = ask("other-tenant", good.clone()).await;
        assert_eq!((status, v["error"].as_str()), (401, Some("invalid_client")));
        let (status, v) = ask("tenant", with("grant_type", "password")).await;
        assert_eq!((status, v["error"].as_str()), (400, Some("invalid_request")));
        let (status, v) = ask("tenant", with("scope", "https://graph.microsoft.com/User.Read")).await;
        assert_eq!((status, v["error"].as_str()), (400, Some("invalid_scope")));
        let s = em.stats();
        assert_eq!((s.tokens_issued, s.requests, s.throttled, s.ru_used), (3, 8, 0, 0));
    }

    #[tokio::test]
    async fn graph_requests_need_a_valid_unexpired_token() {
        let t = T::with(EmulatorConfig { token_lifetime_secs: 1, ..Default::default() }).await;
        let lists = t.url(&format!("{SITE}/lists"));
        let r = t.http.get(&lists).send().await.unwrap();
        assert_eq!(r.status(), 401);
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["error"]["code"], "InvalidAuthenticationToken");
        let r = t.http.get(&lists).bearer_auth("not-a-token").send().await.unwrap();
        assert_eq!(r.status(), 401);
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["error"]["message"], "Access token has expired or is not yet valid.");
        assert_eq!(t.get(&format!("{SITE}/lists")).await.status, 200);
        // Tokens expire with their lifetime...
        tokio::time::sleep(Duration::from_millis(1100)).await;
        let r = t.get(&format!("{SITE}/lists")).await;
        assert_eq!((r.status, r.code()), (401, "InvalidAuthenticationToken"));
        // ...and all at once on request.
        let fresh = fetch_token(&t.em, &t.http).await;
        assert_eq!(t.http.get(&lists).bearer_auth(&fresh).send().await.unwrap().status(), 200);
        t.em.expire_tokens();
        let r = t.http.get(&lists).bearer_auth(&fresh).send().await.unwrap();
        assert_eq!(r.status(), 401);
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["error"]["code"], "InvalidAuthenticationToken");
        // Unauthorized requests cost nothing.
        assert_eq!(t.em.stats().ru_used, 4);
    }

    #[tokio::test]
    async fn lists_with_columns_and_duplicate_names() {
        let t = T::new().await;
        let r = t.post(&format!("{SITE}/lists"), json!({"displayName": "Managers"})).await;
        assert_eq!(r.status, 201);
        let managers = r.body["id"].as_str().unwrap().to_string();
        let r = t
            .post(
                &format!("{SITE}/lists"),
                json!({"displayName": "Employees", "columns": [
                    {"name": "Title2", "text": {}},
                    {"name": "Notes", "text": {"allowMultipleLines": true}},
                    {"name": "Age", "number": {}},
                    {"name": "Active", "boolean": {}},
                    {"name": "Born", "dateTime": {"format": "dateOnly"}},
                    {"name": "SyncKey", "text": {}, "indexed": true, "hidden": true},
                    {"name": "Manager", "lookup": {"listId": managers, "columnName": "Title"}},
                ], "list": {"template": "genericList"}}),
            )
            .await;
        assert_eq!(r.status, 201, "{}", r.body);
        let id = r.body["id"].as_str().unwrap().to_string();
        assert_eq!(id.len(), 36);
        assert_eq!(r.body["displayName"], "Employees");
        assert_eq!(r.body["list"]["template"], "genericList");
        let names: Vec<&str> =
            r.body["columns"].as_array().unwrap().iter().map(|c| c["name"].as_str().unwrap()).collect();
        assert_eq!(names, ["Title", "Title2", "Notes", "Age", "Active", "Born", "SyncKey", "Manager"]);
        let sync_key = &r.body["columns"][6];
        assert_eq!((sync_key["indexed"].as_bool(), sync_key["hidden"].as_bool()), (Some(true), Some(true)));
        assert_eq!(r.body["columns"][7]["lookup"]["listId"], managers.as_str());

        let dup = t.post(&format!("{SITE}/lists"), json!({"displayName": "employees"})).await;
        assert_eq!((dup.status, dup.code()), (409, "nameAlreadyExists"));
        // The same name on another site is fine.
        assert_eq!(t.post("/sites/other/lists", json!({"displayName": "Employees"})).await.status, 201);

        for key in [id.as_str(), "Employees"] {
            let r = t.get(&format!("{SITE}/lists/{key}")).await;
            assert_eq!(r.status, 200);
            assert_eq!(r.body["id"], id.as_str());
            assert!(r.body.get("items").is_none());
        }
        let r = t.get(&format!("{SITE}/lists/Nope")).await;
        assert_eq!((r.status, r.code()), (404, "itemNotFound"));
        let r = t.call("GET", &format!("{SITE}/lists?$filter=displayName eq 'Employees'"), None, &[]).await;
        assert_eq!(r.status, 200);
        assert_eq!(r.body["value"].as_array().unwrap().len(), 1);
        assert_eq!(r.body["value"][0]["id"], id.as_str());
        let r = t.get(&format!("{SITE}/lists/{id}/columns")).await;
        let cols = r.body["value"].as_array().unwrap();
        assert!(cols.iter().any(|c| c["name"] == "SyncKey" && c["indexed"] == true));
        assert!(cols.iter().any(|c| c["name"] == "Title"));

        // Invalid column definitions.
        for (n, cols) in [
            json!([{"name": "NoType"}]),
            json!([{"name": "Bad Name", "text": {}}]),
            json!([{"name": "Two", "text": {}, "number": {}}]),
            json!([{"name": "Dangling", "lookup": {"listId": "no-such-list"}}]),
            json!([{"name": "Created", "text": {}}]),
            json!([{"name": "When", "dateTime": {"format": "sometimes"}}]),
        ]
        .into_iter()
        .enumerate()
        {
            let r = t.post(&format!("{SITE}/lists"), json!({"displayName": format!("Bad{n}"), "columns": cols})).await;
            assert_eq!((r.status, r.code()), (400, "invalidRequest"), "{cols}");
        }
        let r = t.post(&format!("{SITE}/lists"), json!({"columns": []})).await;
        assert_eq!(r.status, 400);

        // Adding a column later.
        let r = t.post(&format!("{SITE}/lists/Employees/columns"), json!({"name": "Extra", "number": {}})).await;
        assert_eq!(r.status, 201);
        assert_eq!(t.create("Employees", json!({"Extra": 5})).await.status, 201);

        // Path-addressed sites map to a stable id.
        let r = t.get("/sites/contoso.sharepoint.com:/sites/Team").await;
        assert_eq!(r.status, 200);
        let site_id = r.body["id"].as_str().unwrap().to_string();
        assert!(site_id.starts_with("contoso.sharepoint.com,"));
        let r = t.post("/sites/contoso.sharepoint.com:/sites/Team:/lists", json!({"displayName": "Path"})).await;
        assert_eq!(r.status, 201);
        assert_eq!(t.get(&format!("/sites/{site_id}/lists/Path")).await.status, 200);

        let snap = t.em.lists();
        assert_eq!(snap.len(), 4);
        assert_eq!(snap[1].display_name, "Employees");
        assert_eq!(snap[1].columns.len(), 9);
        assert_eq!(snap[1].items.len(), 1);
    }

    #[tokio::test]
    async fn a_person_edits_creates_and_deletes_in_sharepoint_and_echoes_are_counted() {
        let t = T::new().await;
        t.employees().await;
        let items = format!("{SITE}/lists/Employees/items");
        let r = t.create("Employees", json!({"Title": "Alice", "Age": 30, "SyncKey": "k1"})).await;
        assert_eq!(r.body["fields"]["EditorLookupId"], "1073741822", "the app");
        let etag1 = r.body["eTag"].as_str().unwrap().to_string();
        // The token of now, then a person's edit: version, eTag, Modified, editor.
        let latest = t.get(&format!("{items}/delta?token=latest")).await;
        let link = latest.body["@odata.deltaLink"].as_str().unwrap().to_string();
        let f = json!({"Title": "Alicia"});
        t.em.person_edit("Employees", "k1", f.as_object().unwrap(), 7).unwrap();
        let r = t.get(&format!("{items}/1?expand=fields")).await;
        assert_eq!(r.body["fields"]["Title"], "Alicia");
        assert_eq!(r.body["fields"]["EditorLookupId"], "7");
        assert_eq!(r.body["fields"]["AuthorLookupId"], "1073741822");
        assert_eq!(etag_version(r.header("etag").unwrap()), 2);
        assert_ne!(r.header("etag"), Some(etag1.as_str()));
        // The edit is in the delta since the token.
        let path = link.split("/v1.0").nth(1).unwrap().to_string();
        let d = t.get(&format!("{path}&$expand=fields")).await;
        assert_eq!(d.body["value"].as_array().map(Vec::len), Some(1), "{}", d.body);
        assert_eq!(d.body["value"][0]["fields"]["Title"], "Alicia");
        // A person's write is checked like any write.
        let bad = json!({"Age": "thirty"});
        assert!(t.em.person_edit("Employees", "k1", bad.as_object().unwrap(), 7).unwrap_err().contains("Edm.Double"));
        assert!(t.em.person_edit("Employees", "nope", f.as_object().unwrap(), 7).is_err());
        // The app writing back what the item holds changes nothing: an echo.
        assert_eq!(t.em.unchanged_writes(), 0);
        let r = t.patch(&format!("{items}/1/fields"), json!({"Title": "Alicia", "Age": 30}), &[]).await;
        assert_eq!(r.status, 200);
        assert_eq!(t.em.unchanged_writes(), 1);
        let r = t.patch(&format!("{items}/1/fields"), json!({"Age": 31}), &[]).await;
        assert_eq!(r.status, 200);
        assert_eq!(t.em.unchanged_writes(), 1, "a real change is no echo");
        // Created and deleted by a person, also over the control plane.
        let new = json!({"Title": "From SharePoint"});
        let id = t.em.person_create("Employees", new.as_object().unwrap(), 9).unwrap();
        let r = t.get(&format!("{items}/{id}?expand=fields")).await;
        assert_eq!((r.body["fields"]["AuthorLookupId"].clone(), r.body["fields"].get("SyncKey")), (json!("9"), None));
        let ctl = format!("{}/_emulator/delete", t.em.authority_url());
        let r = t.http.post(&ctl).json(&json!({"list": "Employees", "sync_key": "k1"})).send().await.unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(t.get(&format!("{items}/1")).await.status, 404);
        let ctl = format!("{}/_emulator/edit", t.em.authority_url());
        let r = t.http.post(&ctl).json(&json!({"list": "Nope", "sync_key": "k1", "fields": {}})).send().await.unwrap();
        assert_eq!(r.status(), 400);
        // The service resets the delta state: the old token is answered 410
        // with the code and a Location starting afresh (fields kept).
        t.em.reset_delta("Employees", "resyncChangesApplyDifferences").unwrap();
        assert!(t.em.reset_delta("Employees", "pleaseResync").is_err());
        let gone = t.get(&format!("{path}&$expand=fields")).await;
        assert_eq!((gone.status, gone.code()), (410, "resyncChangesApplyDifferences"));
        let location = gone.header("location").unwrap().to_string();
        assert!(
            location.ends_with("/items/delta?%24expand=fields") || location.ends_with("/items/delta?$expand=fields"),
            "{location}"
        );
        let fresh = t.get(location.split("/v1.0").nth(1).unwrap()).await;
        assert_eq!(fresh.status, 200);
        assert_eq!(fresh.body["value"].as_array().map(Vec::len), Some(1), "the one item left: {}", fresh.body);
        assert!(fresh.body["@odata.deltaLink"].is_string());
    }

    #[tokio::test]
    async fn items_crud_with_etags_and_if_match() {
        let t = T::new().await;
        t.employees().await;
        let items = format!("{SITE}/lists/Employees/items");
        let r = t.create("Employees", json!({"Title": "Alice", "Age": 30})).await;
        assert_eq!(r.status, 201);
        assert_eq!(r.body["id"], "1");
        assert_eq!(r.body["fields"]["Title"], "Alice");
        assert_eq!(r.body["fields"]["Age"], 30);
        let etag1 = r.body["eTag"].as_str().unwrap().to_string();
        assert!(etag1.starts_with('"') && etag1.ends_with(",1\""));
        assert_eq!(r.header("etag"), Some(etag1.as_str()));

        for q in ["expand=fields", "$expand=fields"] {
            let r = t.get(&format!("{items}/1?{q}")).await;
            assert_eq!(r.status, 200);
            assert_eq!(r.body["fields"]["Title"], "Alice");
            assert_eq!(r.body["fields"]["id"], "1");
            assert_eq!(r.header("etag"), Some(etag1.as_str()));
        }
        assert!(t.get(&format!("{items}/1")).await.body.get("fields").is_none());

        let r = t.patch(&format!("{items}/1/fields"), json!({"Title": "Alicia"}), &[]).await;
        assert_eq!(r.status, 200);
        assert_eq!(r.body["Title"], "Alicia");
        assert_eq!(r.body["Age"], 30);
        let etag2 = r.header("etag").unwrap().to_string();
        assert_eq!(etag_version(&etag2), 2);
        assert_eq!(r.body["@odata.etag"], etag2.as_str());

        let r = t.patch(&format!("{items}/1/fields"), json!({"Title": "Stale"}), &[("If-Match", &etag1)]).await;
        assert_eq!((r.status, r.code()), (412, "preconditionFailed"));
        assert_eq!(t.em.lists()[0].items[0].fields["Title"], "Alicia");
        let r = t.patch(&format!("{items}/1/fields"), json!({"Age": 31}), &[("If-Match", &etag2)]).await;
        assert_eq!(r.status, 200);
        let etag3 = r.header("etag").unwrap().to_string();
        assert_eq!(etag_version(&etag3), 3);
        let r = t.patch(&format!("{items}/1/fields"), json!({"Age": null}), &[("If-Match", "*")]).await;
        assert_eq!(r.status, 200);
        assert!(r.body.get("Age").is_none());
        assert_eq!(etag_version(r.header("etag").unwrap()), 4);

        let r = t.call("DELETE", &format!("{items}/1"), None, &[("If-Match", &etag3)]).await;
        assert_eq!((r.status, r.code()), (412, "preconditionFailed"));
        let r = t.call("DELETE", &format!("{items}/1"), None, &[]).await;
        assert_eq!(r.status, 204);
        assert_eq!(r.body, Value::Null);
        let r = t.get(&format!("{items}/1")).await;
        assert_eq!((r.status, r.code()), (404, "itemNotFound"));
        assert_eq!(t.patch(&format!("{items}/1/fields"), json!({"Title": "x"}), &[]).await.status, 404);
        assert_eq!(t.call("DELETE", &format!("{items}/1"), None, &[]).await.status, 404);

        // Ids are never reused.
        assert_eq!(t.create("Employees", json!({"Title": "Bob"})).await.body["id"], "2");
        // 1 list + 2 creates + 3 updates + 1 delete.
        assert_eq!(t.em.stats().writes, 7);
    }

    #[tokio::test]
    async fn writes_are_validated_against_the_columns() {
        let t = T::new().await;
        t.post(&format!("{SITE}/lists"), json!({"displayName": "Managers"})).await;
        t.post(
            &format!("{SITE}/lists"),
            json!({"displayName": "Employees", "columns": [
                {"name": "Age", "number": {}}, {"name": "Active", "boolean": {}},
                {"name": "Born", "dateTime": {"format": "dateOnly"}},
                {"name": "Manager", "lookup": {"listId": "Managers"}}]}),
        )
        .await;
        let r = t.create("Employees", json!({"Title": "A", "Nope": 1})).await;
        assert_eq!((r.status, r.code()), (400, "invalidRequest"));
        assert!(r.message().contains("Nope"), "{}", r.message());
        for bad in [
            json!({"Age": "abc"}),
            json!({"Age": "42"}),
            json!({"Title": 42}),
            json!({"Active": "yes"}),
            json!({"Active": 1}),
            json!({"Born": "not a date"}),
            json!({"Title": "x".repeat(256)}),
            json!({"ManagerLookupId": "boss"}),
            json!({"Created": "2020-01-01"}),
        ] {
            let r = t.create("Employees", bad.clone()).await;
            assert_eq!((r.status, r.code()), (400, "invalidRequest"), "{bad}");
        }
        let r = t
            .create(
                "Employees",
                json!({"Title": "B", "Age": 42, "Active": false, "Born": "1990-05-01",
                                        "ManagerLookupId": 1}),
            )
            .await;
        assert_eq!(r.status, 201, "{}", r.body);
        assert_eq!(r.body["fields"]["Age"], 42);
        assert_eq!(r.body["fields"]["Active"], false);
        assert_eq!(r.body["fields"]["Born"], "1990-05-01T00:00:00Z");
        assert_eq!(r.body["fields"]["ManagerLookupId"], "1");
        let r = t.patch(&format!("{SITE}/lists/Employees/items/1/fields"), json!({"Age": true}), &[]).await;
        assert_eq!(r.status, 400);
        let snap = &t.em.lists()[1];
        assert_eq!(snap.items.len(), 1);
        assert_eq!(snap.items[0].fields["Age"], 42);
    }

    #[tokio::test]
    async fn filters_need_indexed_columns_unless_preferred() {
        let t = T::new().await;
        t.employees().await;
        for (i, key) in ["a", "b", "c"].iter().enumerate() {
            let r = t.create("Employees", json!({"Title": format!("T{i}"), "SyncKey": key, "Notes": "n"})).await;
            assert_eq!(r.status, 201);
        }
        let items = t.url(&format!("{SITE}/lists/Employees/items"));
        let query = |filter: &str, prefer: bool| {
            let mut rb = t.http.get(&items).bearer_auth(&t.token).query(&[("expand", "fields"), ("$filter", filter)]);
            if prefer {
                rb = rb.header("Prefer", "HonorNonIndexedQueriesWarningMayFailRandomly");
            }
            async move {
                let r = rb.send().await.unwrap();
                (r.status().as_u16(), r.json::<Value>().await.unwrap())
            }
        };
        let (status, v) = query("fields/SyncKey eq 'b'", false).await;
        assert_eq!(status, 200, "{v}");
        let value = v["value"].as_array().unwrap();
        assert_eq!(value.len(), 1);
        assert_eq!(value[0]["fields"]["Title"], "T1");
        let (_, v) = query("fields/SyncKey eq 'zz'", false).await;
        assert_eq!(v["value"].as_array().unwrap().len(), 0);

        let (status, v) = query("fields/Notes eq 'n'", false).await;
        assert_eq!(status, 400);
        assert_eq!(v["error"]["code"], "invalidRequest");
        assert!(v["error"]["message"].as_str().unwrap().contains("HonorNonIndexedQueriesWarningMayFailRandomly"));
        let (status, v) = query("fields/SyncKey eq 'a' and fields/Title eq 'T0'", false).await;
        assert_eq!(status, 400, "{v}");
        let (status, v) = query("fields/Notes eq 'n' and fields/SyncKey ne 'a'", true).await;
        assert_eq!(status, 200);
        assert_eq!(v["value"].as_array().unwrap().len(), 2);
        let (status, _) = query("fields/Missing eq 'x'", true).await;
        assert_eq!(status, 400);
        let (status, _) = query("fields/SyncKey eq", false).await;
        assert_eq!(status, 400);
    }

    #[tokio::test]
    async fn batch_limits_and_dependencies() {
        let t = T::new().await;
        t.employees().await;
        let before = t.em.stats();
        let r = t.batch((1..=20).map(|i| create_req(&i.to_string(), &format!("B{i}"))).collect()).await;
        assert_eq!(r.status, 200, "{}", r.body);
        let responses = r.body["responses"].as_array().unwrap();
        assert_eq!(responses.len(), 20);
        assert!(responses.iter().all(|x| x["status"] == 201 && x["body"]["fields"]["Title"].is_string()));
        let mut ids: Vec<&str> = responses.iter().map(|x| x["body"]["id"].as_str().unwrap()).collect();
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), 20);
        assert_eq!(t.em.lists()[0].items.len(), 20);
        let after = t.em.stats();
        assert_eq!(after.batch_requests - before.batch_requests, 1);
        assert_eq!(after.requests - before.requests, 21);
        assert_eq!(after.writes - before.writes, 20);

        let r = t.batch((1..=21).map(|i| create_req(&i.to_string(), "x")).collect()).await;
        assert_eq!(r.status, 400);
        assert_eq!(t.em.lists()[0].items.len(), 20);

        // A sequential batch: a failed request fails every later one (424).
        let mut bad = create_req("1", "bad");
        bad["body"]["fields"]["Nope"] = json!(1);
        let mut dep_on_bad = create_req("2", "never");
        dep_on_bad["dependsOn"] = json!(["1"]);
        let r = t.batch(vec![bad, dep_on_bad]).await;
        assert_eq!(r.status, 200);
        let by_id: HashMap<&str, &Value> =
            r.body["responses"].as_array().unwrap().iter().map(|x| (x["id"].as_str().unwrap(), x)).collect();
        assert_eq!(by_id["1"]["status"], 400);
        assert_eq!(by_id["2"]["status"], 424);
        assert_eq!(by_id["2"]["body"]["error"]["code"], "failedDependency");
        // A sequential batch that succeeds, in order.
        let mut dep_on_good = create_req("4", "after-3");
        dep_on_good["dependsOn"] = json!(["3"]);
        let mut read = json!({"id": "5", "method": "GET", "url": "sites/site1/lists/Employees/items/1?expand=fields"});
        read["dependsOn"] = json!(["4"]);
        let r = t.batch(vec![create_req("3", "ok"), dep_on_good, read]).await;
        assert_eq!(r.status, 200);
        let by_id: HashMap<&str, &Value> =
            r.body["responses"].as_array().unwrap().iter().map(|x| (x["id"].as_str().unwrap(), x)).collect();
        assert_eq!(by_id.len(), 3);
        assert_eq!(by_id["3"]["status"], 201);
        assert_eq!(by_id["4"]["status"], 201);
        assert_eq!(by_id["5"]["status"], 200);
        assert_eq!(by_id["5"]["body"]["fields"]["Title"], "B1");
        let titles: Vec<Value> = t.em.lists()[0].items.iter().map(|i| i.fields["Title"].clone()).collect();
        assert!(!titles.contains(&json!("never")) && titles.contains(&json!("after-3")));

        // Malformed envelopes are refused as a whole.
        let raw = t
            .http
            .post(t.url("/$batch"))
            .bearer_auth(&t.token)
            .header("Content-Type", "application/json")
            .body("{\"requests\": [")
            .send()
            .await
            .unwrap();
        assert_eq!(raw.status(), 400);
        let mut no_ct = create_req("1", "x");
        no_ct["headers"] = json!({});
        assert_eq!(t.batch(vec![no_ct]).await.status, 400);
        let mut cyc1 = create_req("1", "x");
        cyc1["dependsOn"] = json!(["2"]);
        let mut cyc2 = create_req("2", "x");
        cyc2["dependsOn"] = json!(["1"]);
        assert_eq!(t.batch(vec![cyc1, cyc2]).await.status, 400);
        let unauth = t.http.post(t.url("/$batch")).json(&json!({"requests": []})).send().await.unwrap();
        assert_eq!(unauth.status(), 401);
    }

    #[tokio::test]
    async fn throttling_by_resource_units() {
        let t = T::with(EmulatorConfig { budget_per_min: Some(10), ..Default::default() }).await;
        t.employees().await; // 2 RU
        for i in 0..4 {
            assert_eq!(t.create("Employees", json!({"Title": format!("t{i}")})).await.status, 201);
            // 8 RU
        }
        let r = t.create("Employees", json!({"Title": "over"})).await;
        assert_eq!((r.status, r.code()), (429, "TooManyRequests"));
        let retry: u64 = r.header("retry-after").unwrap().parse().unwrap();
        assert!((1..=60).contains(&retry), "{retry}");
        let s = t.em.stats();
        assert_eq!((s.throttled, s.ru_used, s.writes), (1, 11, 5));
        assert_eq!(t.em.lists()[0].items.len(), 4);
        // Tokens are still issued.
        fetch_token(&t.em, &t.http).await;
        t.em.set_budget(None);
        assert_eq!(t.create("Employees", json!({"Title": "free"})).await.status, 201);

        // Inside $batch each request is charged and throttled on its own.
        let t = T::new().await;
        t.employees().await; // 2 RU in the window
        t.em.set_budget(Some(12));
        let r = t.batch((1..=7).map(|i| create_req(&i.to_string(), "b")).collect()).await;
        assert_eq!(r.status, 200);
        let responses = r.body["responses"].as_array().unwrap();
        assert_eq!(responses.iter().filter(|x| x["status"] == 201).count(), 5);
        let throttled: Vec<&Value> = responses.iter().filter(|x| x["status"] == 429).collect();
        assert_eq!(throttled.len(), 2);
        for x in throttled {
            let secs: u64 = x["headers"]["Retry-After"].as_str().unwrap().parse().unwrap();
            assert!((1..=60).contains(&secs));
            assert_eq!(x["body"]["error"]["code"], "TooManyRequests");
        }
        let s = t.em.stats();
        assert_eq!((s.throttled, s.ru_used, s.batch_requests), (2, 14, 1));
        assert_eq!(t.em.lists()[0].items.len(), 5);
    }

    #[tokio::test]
    async fn injected_faults() {
        let t = T::new().await;
        t.employees().await;
        let items = format!("{SITE}/lists/Employees/items");

        t.em.inject(Fault::Status(503), 2);
        // Token requests are not affected by faults.
        fetch_token(&t.em, &t.http).await;
        for _ in 0..2 {
            let r = t.get(&items).await;
            assert_eq!((r.status, r.code()), (503, "serviceNotAvailable"));
            assert_eq!(r.header("retry-after"), Some("1"));
        }
        assert_eq!(t.get(&items).await.status, 200);
        t.em.inject(Fault::Status(400), 1);
        let r = t.create("Employees", json!({"Title": "x"})).await;
        assert_eq!((r.status, r.code()), (400, "invalidRequest"));

        t.em.inject(Fault::Drop, 1);
        let err = t
            .http
            .post(t.url(&items))
            .bearer_auth(&t.token)
            .json(&json!({"fields": {"Title": "dropped"}}))
            .send()
            .await;
        assert!(err.is_err(), "expected a connection error, got {err:?}");
        assert_eq!(t.get(&items).await.status, 200);

        t.em.inject(Fault::Garbage, 1);
        let r = t.http.get(t.url(&items)).bearer_auth(&t.token).send().await.unwrap();
        assert_eq!(r.status(), 200);
        assert!(serde_json::from_slice::<Value>(&r.bytes().await.unwrap()).is_err());

        t.em.inject(Fault::Truncated, 1);
        let r = t
            .http
            .post(t.url(&items))
            .bearer_auth(&t.token)
            .json(&json!({"fields": {"Title": "truncated"}}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let text = r.text().await.unwrap();
        assert!(text.starts_with('{') && serde_json::from_str::<Value>(&text).is_err(), "{text}");
        // The request itself was processed.
        let titles: Vec<Value> = t.em.lists()[0].items.iter().map(|i| i.fields["Title"].clone()).collect();
        assert_eq!(titles, [json!("truncated")]);

        t.em.inject(Fault::BatchMissingResponses, 1);
        // A plain request passes a pending batch fault by.
        assert_eq!(t.get(&items).await.status, 200);
        let r = t.batch((1..=4).map(|i| create_req(&i.to_string(), &format!("m{i}"))).collect()).await;
        assert_eq!(r.status, 200);
        let mut ids: Vec<&str> =
            r.body["responses"].as_array().unwrap().iter().map(|x| x["id"].as_str().unwrap()).collect();
        ids.sort();
        assert_eq!(ids, ["1", "2"]);
        assert_eq!(t.em.lists()[0].items.len(), 3);
        assert_eq!(t.batch(vec![create_req("1", "whole")]).await.body["responses"].as_array().unwrap().len(), 1);

        // The HTTP control route injects too.
        let r = t
            .http
            .post(format!("{}/_emulator/fault", t.em.authority_url()))
            .json(&json!({"fault": "status", "status": 500, "count": 1}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let r = t.get(&items).await;
        assert_eq!((r.status, r.code()), (500, "generalException"));
        let r = t
            .http
            .post(format!("{}/_emulator/fault", t.em.authority_url()))
            .json(&json!({"fault": "explode"}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400);

        t.em.set_latency(150);
        let start = Instant::now();
        assert_eq!(t.get(&items).await.status, 200);
        assert!(start.elapsed() >= Duration::from_millis(150));
        t.em.set_latency(0);

        // An outage: Graph and the token endpoint drop every connection
        // until it ends; nothing is counted or changed meanwhile.
        let before = (t.em.stats(), t.em.lists()[0].items.len());
        t.em.set_down(true);
        let r =
            t.http.post(t.url(&items)).bearer_auth(&t.token).json(&json!({"fields": {"Title": "lost"}})).send().await;
        assert!(r.is_err(), "expected a connection error during the outage, got {r:?}");
        let r = t
            .http
            .post(format!("{}/tenant/oauth2/v2.0/token", t.em.authority_url()))
            .form(&[("grant_type", "client_credentials"), ("client_id", "client"), ("client_secret", "secret")])
            .send()
            .await;
        assert!(r.is_err(), "the token endpoint is down too, got {r:?}");
        assert_eq!((t.em.stats().requests, t.em.lists()[0].items.len()), (before.0.requests, before.1));
        t.em.set_down(false);
        assert_eq!(t.get(&items).await.status, 200);
    }

    #[tokio::test]
    async fn delta_tokens_track_changes_and_deletions() {
        let t = T::new().await;
        t.employees().await;
        let other = t.post(&format!("{SITE}/lists"), json!({"displayName": "Other"})).await;
        assert_eq!(other.status, 201);
        let delta = format!("{SITE}/lists/Employees/items/delta");
        t.create("Employees", json!({"Title": "one"})).await;
        t.create("Employees", json!({"Title": "two"})).await;

        // A full enumeration, one item per page.
        let r = t.get(&format!("{delta}?$expand=fields&$top=1")).await;
        assert_eq!(r.body["value"].as_array().unwrap().len(), 1);
        assert_eq!(r.body["value"][0]["fields"]["Title"], "one");
        let next = r.body["@odata.nextLink"].as_str().unwrap().to_string();
        assert!(r.body.get("@odata.deltaLink").is_none());
        let r = t.get(&next).await;
        assert_eq!(r.body["value"][0]["fields"]["Title"], "two");
        assert!(r.body.get("@odata.nextLink").is_none());
        assert!(r.body["@odata.deltaLink"].as_str().is_some());

        let r = t.get(&format!("{delta}?$expand=fields&token=latest")).await;
        assert_eq!(r.status, 200);
        assert_eq!(r.body["value"], json!([]));
        let link = r.body["@odata.deltaLink"].as_str().unwrap().to_string();
        assert!(link.starts_with(&t.em.base_url()) && link.contains("token="));
        let r = t.get(&link).await;
        assert_eq!(r.body["value"], json!([]));

        t.create("Employees", json!({"Title": "three"})).await;
        t.patch(&format!("{SITE}/lists/Employees/items/1/fields"), json!({"Title": "uno"}), &[]).await;
        assert_eq!(t.call("DELETE", &format!("{SITE}/lists/Employees/items/2"), None, &[]).await.status, 204);
        let r = t.get(&link).await;
        assert_eq!(r.status, 200);
        let value = r.body["value"].as_array().unwrap();
        assert_eq!(value.len(), 3, "{value:?}");
        let find = |id: &str| value.iter().find(|v| v["id"] == id).unwrap();
        assert_eq!(find("1")["fields"]["Title"], "uno");
        assert_eq!(find("3")["fields"]["Title"], "three");
        assert_eq!(find("2")["deleted"]["state"], "deleted");
        assert!(find("2").get("fields").is_none());
        let link2 = r.body["@odata.deltaLink"].as_str().unwrap().to_string();
        assert_ne!(link, link2);
        assert_eq!(t.get(&link2).await.body["value"], json!([]));

        for bad in ["garbage", "bm90LWEtdG9rZW4"] {
            let r = t.get(&format!("{delta}?token={bad}")).await;
            assert_eq!((r.status, r.code()), (410, "resyncRequired"));
        }
        // Another list's token is not valid here.
        let other_link = t.get(&format!("{SITE}/lists/Other/items/delta?token=latest")).await;
        let token = other_link.body["@odata.deltaLink"].as_str().unwrap().split("token=").nth(1).unwrap().to_string();
        assert_eq!(t.get(&format!("{delta}?token={token}")).await.status, 410);
    }

    #[tokio::test]
    async fn delta_honors_expand_and_select_and_its_links_keep_them() {
        let t = T::new().await;
        t.employees().await;
        let delta = format!("{SITE}/lists/Employees/items/delta");
        for i in 1..=3 {
            t.create("Employees", json!({"Title": format!("n{i}"), "Age": i, "SyncKey": format!("k{i}")})).await;
        }
        // Without $expand: no fields, as Graph.
        let r = t.get(&format!("{delta}?$top=5")).await;
        assert!(r.body["value"][0].get("fields").is_none(), "{}", r.body);
        assert!(r.body["value"][0]["eTag"].is_string());
        // $select: the fields named (and the eTag annotation), nothing else;
        // every page of the read keeps the options.
        let before = t.em.stats().ru_used;
        let r = t.get(&format!("{delta}?$expand=fields($select=Title,SyncKey,Modified)&$top=2")).await;
        assert_eq!(t.em.stats().ru_used - before, 2, "a delta without a token costs 2 RU");
        let keys = |v: &Value| {
            let mut k: Vec<String> = v["fields"].as_object().unwrap().keys().cloned().collect();
            k.sort();
            k
        };
        assert_eq!(keys(&r.body["value"][0]), ["@odata.etag", "Modified", "SyncKey", "Title"]);
        let next = r.body["@odata.nextLink"].as_str().unwrap().to_string();
        let before = t.em.stats().ru_used;
        let r = t.get(&next).await;
        assert_eq!(t.em.stats().ru_used - before, 1, "a delta with a token costs 1 RU");
        assert_eq!(r.body["value"].as_array().unwrap().len(), 1);
        assert_eq!(keys(&r.body["value"][0]), ["@odata.etag", "Modified", "SyncKey", "Title"]);
        let link = r.body["@odata.deltaLink"].as_str().unwrap().to_string();
        t.patch(&format!("{SITE}/lists/Employees/items/2/fields"), json!({"Age": 20}), &[]).await;
        let r = t.get(&link).await;
        assert_eq!(r.body["value"].as_array().unwrap().len(), 1);
        assert_eq!(r.body["value"][0]["fields"]["SyncKey"], "k2");
        assert!(r.body["value"][0]["fields"].get("Age").is_none(), "not selected: {}", r.body);
    }

    /// The worker's Graph adapter, pointed at `em`.
    fn worker_target(em: &Emulator) -> syncbridge_worker::target::graph::GraphTarget {
        use syncbridge_worker::target::graph::{GraphSettings, GraphTarget};
        use syncbridge_worker::target::TargetPolicy;
        let policy = TargetPolicy { allow_loopback: true, ..TargetPolicy::default() };
        let cfg = json!({"tenant_id": "tenant", "client_id": "client", "site_id": "site1",
                         "base_url": em.base_url(), "authority_url": em.authority_url(), "timeout_ms": 5000});
        GraphTarget::new(GraphSettings::from_config("t", &cfg, &policy).unwrap(), "secret".into(), None).unwrap()
    }

    #[tokio::test]
    async fn the_workers_adapter_pulls_delta_pages_and_refuses_foreign_links() {
        use syncbridge_worker::target::{ErrorClass, PullError, PullRequest, Target};
        let t = T::new().await;
        let list_id = t.employees().await;
        for i in 1..=3 {
            t.create("Employees", json!({"Title": format!("n{i}"), "Age": i, "SyncKey": format!("k{i}")})).await;
        }
        let g = worker_target(&t.em);
        let fields = vec!["Title".to_string(), "SyncKey".to_string()];
        let mut req =
            PullRequest { definition: "d".into(), container_id: list_id.clone(), link: None, fields, page_size: 2 };
        // A fresh read: 2 RU, the selected fields only, a next page.
        let ru = t.em.stats().ru_used;
        let p1 = g.pull(&req).await.unwrap();
        assert_eq!(t.em.stats().ru_used - ru, 2);
        assert!(!p1.last);
        assert_eq!(p1.items.len(), 2);
        let i1 = &p1.items[0];
        assert_eq!((i1["id"].as_str(), i1["deleted"].as_bool()), (Some("1"), Some(false)));
        assert!(i1["etag"].is_string() && i1["modified"].is_string(), "{i1}");
        let mut keys: Vec<&String> = i1["fields"].as_object().unwrap().keys().collect();
        keys.sort();
        assert_eq!(keys, ["@odata.etag", "SyncKey", "Title"]);
        // The next page by its link: 1 RU, the options kept, the final link.
        req.link = Some(p1.link.clone());
        let ru = t.em.stats().ru_used;
        let p2 = g.pull(&req).await.unwrap();
        assert_eq!(t.em.stats().ru_used - ru, 1);
        assert!(p2.last);
        assert_eq!(p2.items[0]["fields"], json!({"@odata.etag": p2.items[0]["etag"], "Title": "n3", "SyncKey": "k3"}));
        // Changes since: an edit and a delete (the deleted facet, no fields).
        let edit = json!({"Title": "edited"});
        t.em.person_edit("Employees", "k1", edit.as_object().unwrap(), 7).unwrap();
        t.em.person_delete("Employees", "k2").unwrap();
        req.link = Some(p2.link.clone());
        let p3 = g.pull(&req).await.unwrap();
        assert!(p3.last);
        let by_id = |id: &str| p3.items.iter().find(|i| i["id"] == id).unwrap().clone();
        assert_eq!(by_id("1")["fields"]["Title"], "edited");
        assert_eq!(by_id("2"), json!({"id": "2", "etag": null, "deleted": true, "modified": null, "fields": null}));
        // A link elsewhere is never followed (no request reaches anyone).
        let requests = t.em.stats().requests;
        for foreign in [
            p3.link.replace("127.0.0.1", "localhost"),
            p3.link.replace("/v1.0/", "/beta/"),
            "https://graph.microsoft.com/v1.0/sites/site1/lists/x/items/delta?token=a".to_string(),
        ] {
            req.link = Some(foreign.clone());
            let e = g.pull(&req).await.unwrap_err();
            assert!(matches!(&e, PullError::LinkRefused(m) if m.contains("refused")), "{foreign}: {e:?}");
            assert!(e.resync() && e.class() == ErrorClass::Definite);
        }
        assert_eq!(t.em.stats().requests, requests);
        // The service forgets the delta state: 410, a resync.
        t.em.reset_delta("Employees", "resyncChangesApplyDifferences").unwrap();
        req.link = Some(p3.link.clone());
        let e = g.pull(&req).await.unwrap_err();
        assert!(matches!(&e, PullError::Resync(m) if m.contains("resyncChangesApplyDifferences")), "{e:?}");
        // An unknown list: definite.
        let e = g
            .pull(&PullRequest {
                definition: "d".into(),
                container_id: "nope".into(),
                link: None,
                fields: vec![],
                page_size: 10,
            })
            .await;
        assert!(matches!(e, Err(PullError::Failed { class: ErrorClass::Definite, .. })), "{e:?}");
    }

    #[tokio::test]
    async fn the_workers_adapter_sends_if_match_and_meets_412_as_a_conflict() {
        use syncbridge_worker::target::{ApplyContext, ErrorClass, Export, Target};
        let t = T::new().await;
        t.employees().await;
        let r = t.create("Employees", json!({"Title": "a", "SyncKey": "k1"})).await;
        let etag1 = r.body["eTag"].as_str().unwrap().to_string();
        t.create("Employees", json!({"Title": "b", "SyncKey": "k2"})).await;
        let g = worker_target(&t.em);
        let ctx = ApplyContext::default();
        let export = |id: i64, op: &str, item: &str, etag: &str, payload: Value| -> Export {
            serde_json::from_value(json!({"id": id, "definition": "d", "op": op, "sync_key": "k", "list": "Employees",
                "from_list": null, "target_id": item, "etag": etag, "payload": payload, "attempts": 1,
                "verify": false, "read_back": ["Modified", "_UIVersionString", "EditorLookupId", "Nope"]}))
            .unwrap()
        };
        // The eTag last seen: written, the new eTag and the fields read back.
        let r = g.apply(&[export(1, "update", "1", &etag1, json!({"Title": "a2"}))], &ctx).await;
        assert!(r[0].ok, "{r:?}");
        let etag2 = r[0].etag.clone().unwrap();
        assert_ne!(etag2, etag1);
        let f = r[0].fields.clone().unwrap();
        assert_eq!(f["_UIVersionString"], "2.0");
        assert_eq!(f["EditorLookupId"], "1073741822");
        assert!(f["Modified"].is_string());
        assert_eq!(f["Nope"], Value::Null);
        // A person edits it meanwhile: the stale eTag meets a 412, a conflict.
        t.em.person_edit("Employees", "k1", json!({"Title": "theirs"}).as_object().unwrap(), 7).unwrap();
        let r = g.apply(&[export(2, "update", "1", &etag2, json!({"Title": "ours"}))], &ctx).await;
        assert_eq!((r[0].ok, r[0].class), (false, Some(ErrorClass::Conflict)), "{r:?}");
        let r = g.apply(&[export(3, "delete", "1", &etag2, Value::Null)], &ctx).await;
        assert_eq!(r[0].class, Some(ErrorClass::Conflict), "{r:?}");
        assert_eq!(
            t.get(&format!("{SITE}/lists/Employees/items/1?expand=fields")).await.body["fields"]["Title"],
            "theirs"
        );
        // Without an eTag (a push-only definition): no If-Match, written.
        let mut e = export(4, "delete", "2", "", Value::Null);
        e.etag = None;
        let r = g.apply(&[e], &ctx).await;
        assert!(r[0].ok, "{r:?}");
        assert_eq!(r[0].fields, None, "a delete reads nothing back");
    }

    #[tokio::test]
    async fn item_collections_page_with_next_links() {
        let t = T::new().await;
        t.employees().await;
        for i in 1..=5 {
            assert_eq!(t.create("Employees", json!({"Title": format!("p{i}")})).await.status, 201);
        }
        let mut url = format!("{SITE}/lists/Employees/items?expand=fields&$top=2");
        let mut pages = Vec::new();
        loop {
            let r = t.get(&url).await;
            assert_eq!(r.status, 200);
            let titles: Vec<String> = r.body["value"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v["fields"]["Title"].as_str().unwrap().to_string())
                .collect();
            pages.push(titles);
            match r.body["@odata.nextLink"].as_str() {
                Some(next) => {
                    assert!(next.starts_with(&t.em.base_url()), "{next}");
                    url = next.to_string();
                }
                None => break,
            }
        }
        assert_eq!(pages, [vec!["p1", "p2"], vec!["p3", "p4"], vec!["p5"]]);

        // The default page is 200 items.
        for chunk in 0..10 {
            let reqs = (0..20).map(|i| create_req(&i.to_string(), &format!("c{chunk}-{i}"))).collect();
            assert_eq!(t.batch(reqs).await.status, 200);
        }
        let r = t.get(&format!("{SITE}/lists/Employees/items")).await;
        assert_eq!(r.body["value"].as_array().unwrap().len(), 200);
        let r = t.get(r.body["@odata.nextLink"].as_str().unwrap()).await;
        assert_eq!(r.body["value"].as_array().unwrap().len(), 5);
        assert!(r.body.get("@odata.nextLink").is_none());
    }

    #[tokio::test]
    async fn control_routes_over_http() {
        let t = T::new().await;
        t.employees().await;
        t.create("Employees", json!({"Title": "x", "SyncKey": "k"})).await;
        let ctl = |p: &str| format!("{}/_emulator/{p}", t.em.authority_url());
        let lists: Vec<ListSnapshot> = t.http.get(ctl("lists")).send().await.unwrap().json().await.unwrap();
        assert_eq!(lists, t.em.lists());
        assert_eq!(lists[0].items[0].fields["SyncKey"], "k");
        let stats: Stats = t.http.get(ctl("stats")).send().await.unwrap().json().await.unwrap();
        assert_eq!(stats, t.em.stats());
        assert_eq!(stats.writes, 2);

        let r = t.http.post(ctl("config")).json(&json!({"budget_per_min": 0, "latency_ms": 0})).send().await.unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(t.get(&format!("{SITE}/lists")).await.status, 429);
        let r = t.http.post(ctl("config")).json(&json!({"budget_per_min": null})).send().await.unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(t.get(&format!("{SITE}/lists")).await.status, 200);
        assert_eq!(t.http.post(ctl("expire_tokens")).send().await.unwrap().status(), 200);
        assert_eq!(t.get(&format!("{SITE}/lists")).await.status, 401);
    }

    fn batch_ids(r: &Got) -> Vec<String> {
        r.body["responses"].as_array().unwrap().iter().map(|x| x["id"].as_str().unwrap().to_string()).collect()
    }

    #[tokio::test]
    async fn a_batch_is_fully_sequential_or_fully_parallel() {
        let t = T::new().await;
        t.employees().await;
        let items = |t: &T| t.em.lists()[0].items.len();
        // A move packed with unrelated requests (issue 14): refused whole.
        let mut delete = json!({"id": "2d", "method": "DELETE", "url": "/sites/site1/lists/Employees/items/1"});
        delete["dependsOn"] = json!(["2c"]);
        let r = t.batch(vec![create_req("1", "other"), create_req("2c", "moved"), delete.clone()]).await;
        assert_eq!((r.status, r.code()), (400, "BadRequest"), "{}", r.body);
        assert_eq!(r.message(), "Batch should be either fully sequential or fully parallel.");
        assert_eq!(items(&t), 0, "nothing in a refused batch runs");
        // Depending on a request other than the one just before: refused too.
        let mut third = create_req("3", "c");
        third["dependsOn"] = json!(["1"]);
        let mut second = create_req("2", "b");
        second["dependsOn"] = json!(["1"]);
        let r = t.batch(vec![create_req("1", "a"), second, third]).await;
        assert_eq!(r.status, 400, "{}", r.body);
        // Fully sequential (the move alone) and fully parallel are fine.
        let r = t.batch(vec![create_req("2c", "moved"), delete]).await;
        assert_eq!(r.status, 200, "{}", r.body);
        let r = t.batch(vec![create_req("1", "x"), create_req("2", "y")]).await;
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(items(&t), 2);
    }

    #[tokio::test]
    async fn values_must_have_their_columns_json_type_and_fit() {
        let t = T::new().await;
        let r = t
            .post(
                &format!("{SITE}/lists"),
                json!({"displayName": "Types", "columns": [
                    {"name": "Code", "text": {}}, {"name": "Notes", "text": {"allowMultipleLines": true}},
                    {"name": "Qty", "number": {}}, {"name": "Ok", "boolean": {}},
                    {"name": "At", "dateTime": {"format": "dateTime"}}]}),
            )
            .await;
        assert_eq!(r.status, 201, "{}", r.body);
        for bad in [
            json!({"Code": 42}),
            json!({"Code": true}),
            json!({"Notes": 42}),
            json!({"Notes": ["a"]}),
            json!({"Qty": "42"}),
            json!({"Qty": true}),
            json!({"Ok": "true"}),
            json!({"Ok": 1}),
            json!({"At": 1_700_000_000}),
            json!({"At": "yesterday"}),
            json!({"Code": "x".repeat(256)}),
            json!({"Title": "x".repeat(256)}),
            json!({"Unknown": "x"}),
        ] {
            let r = t.create("Types", bad.clone()).await;
            assert_eq!((r.status, r.code()), (400, "invalidRequest"), "{bad}: {}", r.body);
        }
        for read_only in ["ID", "id", "Created", "Modified", "Author", "Editor", "_UIVersionString", "AuthorLookupId"] {
            let r = t.create("Types", json!({ read_only: "1" })).await;
            assert_eq!((r.status, r.code()), (400, "invalidRequest"), "{read_only}");
            assert!(r.message().contains("read-only"), "{read_only}: {}", r.message());
        }
        assert!(t.em.lists()[0].items.is_empty(), "nothing refused was stored");
        let r = t
            .create(
                "Types",
                json!({"Title": "t".repeat(255), "Code": "x".repeat(255), "Notes": "n".repeat(300), "Qty": 1.5,
                       "Ok": true, "At": "2024-05-01T10:00:00.789Z"}),
            )
            .await;
        assert_eq!(r.status, 201, "{}", r.body);
        // SharePoint keeps whole seconds.
        assert_eq!(r.body["fields"]["At"], "2024-05-01T10:00:00Z");
        assert_eq!(t.em.lists()[0].items[0].fields["At"], "2024-05-01T10:00:00Z");
        // Updates are held to the same rules.
        let r = t.patch(&format!("{SITE}/lists/Types/items/1/fields"), json!({"Code": 7}), &[]).await;
        assert_eq!(r.status, 400);
        let r = t
            .patch(&format!("{SITE}/lists/Types/items/1/fields"), json!({"Modified": "2024-01-01T00:00:00Z"}), &[])
            .await;
        assert_eq!(r.status, 400);
    }

    #[tokio::test]
    async fn batch_responses_come_back_in_an_order_the_seed_decides() {
        let order = |seed: u64| async move {
            let t = T::with(EmulatorConfig { seed, ..Default::default() }).await;
            t.employees().await;
            let r = t.batch((1..=20).map(|i| create_req(&i.to_string(), "s")).collect()).await;
            assert_eq!(r.status, 200);
            batch_ids(&r)
        };
        let a = order(7).await;
        let in_order: Vec<String> = (1..=20).map(|i| i.to_string()).collect();
        assert_ne!(a, in_order, "shuffled");
        let mut sorted = a.clone();
        sorted.sort_by_key(|x| x.parse::<u32>().unwrap());
        assert_eq!(sorted, in_order, "every response once");
        assert_eq!(order(7).await, a, "the same seed, the same order");
        assert_ne!(order(8).await, a, "another seed, another order");
    }

    #[tokio::test]
    async fn lost_answers_after_the_work_is_done() {
        let t = T::new().await;
        t.employees().await;
        let items = format!("{SITE}/lists/Employees/items");
        let count = |t: &T| t.em.lists()[0].items.len();
        // A 5xx instead of the answer: the item was created all the same.
        t.em.inject(Fault::RunThenStatus(500), 1);
        let r = t.create("Employees", json!({"Title": "ran"})).await;
        assert_eq!((r.status, r.code()), (500, "generalException"));
        assert_eq!(count(&t), 1);
        t.em.inject(Fault::RunThenStatus(503), 1);
        let r = t.create("Employees", json!({"Title": "ran too"})).await;
        assert_eq!((r.status, r.header("retry-after")), (503, Some("1")));
        assert_eq!(count(&t), 2);
        // A whole $batch runs, then its connection drops.
        t.em.inject(Fault::RunThenDrop, 1);
        let reqs: Vec<Value> = (1..=3).map(|i| create_req(&i.to_string(), "b")).collect();
        let r = t.http.post(t.url("/$batch")).bearer_auth(&t.token).json(&json!({"requests": reqs})).send().await;
        assert!(r.is_err(), "expected a dropped connection, got {r:?}");
        assert_eq!(count(&t), 5);
        // Runs, then answers too late for the client.
        t.em.inject(Fault::RunThenStall(1500), 1);
        let r = t
            .http
            .post(t.url(&items))
            .bearer_auth(&t.token)
            .timeout(Duration::from_millis(300))
            .json(&json!({"fields": {"Title": "late"}}))
            .send()
            .await;
        assert!(r.is_err_and(|e| e.is_timeout()), "expected a timeout");
        assert_eq!(count(&t), 6);
        // At a steady rate: every third Graph request.
        t.em.inject_every(Some(Fault::RunThenStatus(502)), 3);
        let mut statuses = Vec::new();
        for _ in 0..9 {
            statuses.push(t.get(&items).await.status);
        }
        assert_eq!(statuses, [200, 200, 502, 200, 200, 502, 200, 200, 502]);
        t.em.inject_every(None, 0);
        assert_eq!(t.get(&items).await.status, 200);
        // Over HTTP too.
        let r = t
            .http
            .post(format!("{}/_emulator/fault", t.em.authority_url()))
            .json(&json!({"fault": "run_then_status", "status": 504, "every": 2}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let s: Vec<u16> = [t.get(&items).await.status, t.get(&items).await.status].to_vec();
        assert_eq!(s, [200, 504]);
    }
}
