//! End-to-end helpers for the webhook target: the test receiver
//! ([`crate::webhook_receiver`], which verifies every request with its own
//! implementation) running, a target pointing at it, the worker with the
//! `whsec_` secrets in its environment, the delivered events, and the
//! receiver's state: the events applied in the order they were first
//! accepted, each event id once, into container → key → fields (so that
//! [`TargetEnv::assert_target_equals_source`] compares it with the table).

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;
use std::sync::Arc;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use serde_json::{Map, Value};

use crate::emulator::{Emulator, EmulatorState, Fault, Stats};
use crate::target_env::{EnvOptions, TargetEnv};
use crate::webhook_receiver::{Receiver, HOOK_PATH};
use crate::TestDb;

/// The environment variable the tests' secrets travel in.
pub const SECRET_ENV: &str = "SYNCBRIDGE_SECRET_TEST_WEBHOOK";
/// Requests at once the targets of [`WebhookTargetEnv`] are given.
pub const CONCURRENCY: u64 = 8;

/// A test secret: `whsec_` and the base64 of 32 bytes of `seed`.
pub fn secret(seed: u8) -> String {
    format!("whsec_{}", STANDARD.encode([seed; 32]))
}

/// A running receiver with the runtime that serves it, and the secrets the
/// worker signs with.
pub struct WebhookEnv {
    /// The receiver.
    pub emu: Emulator<Receiver>,
    rt: tokio::runtime::Runtime,
    /// What the worker's secret holds (space-separated `whsec_` secrets).
    pub sender_secrets: Vec<String>,
    /// Requests a minute the receiver allows and the targets are told.
    pub requests_per_min: Option<u32>,
}

/// One event as delivered: its envelope (`id`, `type`, `timestamp`, `data`).
pub type Event = Value;

impl WebhookEnv {
    /// Starts a receiver that knows `receiver_secrets`; the worker will
    /// sign with `sender_secrets`.
    pub fn start_with(receiver_secrets: &[String], sender_secrets: &[String], requests_per_min: Option<u32>) -> Self {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
        let mut receiver = Receiver::new(receiver_secrets).expect("receiver secrets");
        receiver.set_requests_per_min(requests_per_min);
        let emu = rt
            .block_on(async { Emulator::launch(receiver, "127.0.0.1:0".parse().expect("addr")).await })
            .expect("start the webhook receiver");
        Self { emu, rt, sender_secrets: sender_secrets.to_vec(), requests_per_min }
    }

    /// The receiver's endpoint.
    pub fn url(&self) -> String {
        format!("{}{HOOK_PATH}", self.emu.authority_url())
    }

    /// Runs a future on the receiver's runtime.
    pub fn block_on<F: std::future::Future>(&self, f: F) -> F::Output {
        self.rt.block_on(f)
    }

    /// The receiver's shared state.
    pub fn state(&self) -> Arc<EmulatorState<Receiver>> {
        self.emu.state()
    }

    /// Runs `f` on the receiver (under its lock: no waiting in it).
    pub fn receiver<R>(&self, f: impl FnOnce(&mut Receiver) -> R) -> R {
        f(&mut self.emu.state().lock().api)
    }

    /// Creates target `name` in `db` pointing at the receiver, with more
    /// configuration keys in `extra` (budget: the receiver's limit, else
    /// as good as unlimited).
    pub fn create_target(&self, db: &TestDb, name: &str, extra: Value) {
        let mut config = serde_json::json!({
            "url": self.url(), "timeout_ms": 5000,
            "budget_per_min": self.requests_per_min.unwrap_or(1_000_000),
        });
        if let (Some(c), Some(x)) = (config.as_object_mut(), extra.as_object()) {
            c.extend(x.clone());
        }
        db.psql(&format!(
            "SELECT sync.create_target('{name}', kind => 'webhook', config => '{config}', secret => 'env:{SECRET_ENV}')"
        ));
    }

    /// Puts the sender's secrets into a worker command's environment.
    pub fn add_secret<'a>(&self, cmd: &'a mut Command) -> &'a mut Command {
        cmd.env(SECRET_ENV, self.sender_secrets.join(" "))
    }

    /// Every delivered event, each event id once, in the order the receiver
    /// first accepted it (a batch's events in their order).
    pub fn events(&self) -> Vec<Event> {
        let st = self.emu.state();
        let guard = st.lock();
        let r = &guard.api;
        let mut seen = BTreeSet::new();
        let mut out = Vec::new();
        for id in r.delivery_order() {
            for ev in events_of(&r.deliveries()[id].body) {
                let eid = ev.get("id").and_then(Value::as_str).unwrap_or_default().to_owned();
                if seen.insert(eid) {
                    out.push(ev);
                }
            }
        }
        out
    }

    /// The receiver's state: container → key → fields.
    pub fn materialised(&self) -> BTreeMap<String, BTreeMap<String, Map<String, Value>>> {
        materialise(&self.events())
    }

    /// Requests the receiver could not verify (each with why).
    pub fn rejected(&self) -> Vec<String> {
        self.receiver(|r| r.rejected().iter().map(|(p, e)| format!("{p}: {e}")).collect())
    }
}

/// The events of one request body: an event, or an array of them.
pub fn events_of(body: &[u8]) -> Vec<Event> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Array(a)) => a,
        Ok(v) => vec![v],
        Err(e) => panic!("a delivered body is not JSON: {e}"),
    }
}

/// The row key an event's `data.key` names: the value of a one-column key,
/// else the object as JSON.
pub fn key_of(event: &Event) -> String {
    let key = &event["data"]["key"];
    match key.as_object() {
        Some(o) if o.len() == 1 => match o.values().next() {
            Some(Value::String(s)) => s.clone(),
            Some(v) => v.to_string(),
            None => String::new(),
        },
        _ => key.to_string(),
    }
}

/// Applies events in order: created and moved set the item's fields (a
/// move out of `from_container`), updated merges the changed ones,
/// deleted removes it.
pub fn materialise(events: &[Event]) -> BTreeMap<String, BTreeMap<String, Map<String, Value>>> {
    let mut state: BTreeMap<String, BTreeMap<String, Map<String, Value>>> = BTreeMap::new();
    for ev in events {
        let data = &ev["data"];
        let key = key_of(ev);
        let container = data["container"].as_str().unwrap_or_default().to_owned();
        let fields = data["fields"].as_object().cloned().unwrap_or_default();
        match data["op"].as_str() {
            Some("created") => {
                state.entry(container).or_default().insert(key, fields);
            }
            Some("updated") => {
                state.entry(container).or_default().entry(key).or_default().extend(fields);
            }
            Some("deleted") => {
                state.entry(container).or_default().remove(&key);
            }
            Some("moved") => {
                if let Some(from) = data["from_container"].as_str() {
                    state.entry(from.to_owned()).or_default().remove(&key);
                }
                state.entry(container).or_default().insert(key, fields);
            }
            other => panic!("an event of an unknown op {other:?}: {ev}"),
        }
    }
    state
}

/// What the extension says each row maps to: list → key → fields.
pub fn expected(db: &TestDb, definition: &str) -> BTreeMap<String, BTreeMap<String, Map<String, Value>>> {
    crate::jira::expected(db, definition)
}

/// Webhooks as a [`TargetEnv`]: containers are the definition's lists (each
/// event names its own); the rate limit is in requests a minute; the
/// targets send [`CONCURRENCY`] requests at once, one event each.
pub struct WebhookTargetEnv {
    /// The receiver and its runtime.
    pub env: WebhookEnv,
}

impl TargetEnv for WebhookTargetEnv {
    const KIND: &'static str = "webhook";
    // whsec_ secrets: nothing expires.
    const EXPIRING_TOKENS: bool = false;
    // One event a request (batches are the e2e tests' business).
    const BATCHES: bool = false;
    // No containers.
    const PROVISION_WRITES: u64 = 0;
    // concurrency x one event.
    const CLAIM_SIZE: u64 = CONCURRENCY;
    // A receiver's 2xx is a delivery whatever its body (the specification).
    const ANSWER_BODIES: bool = false;
    // Every 4xx is retried (the specification); a redirect is not followed
    // and is final until the URL changes.
    const REFUSAL_STATUS: u16 = 308;

    fn start(options: EnvOptions) -> Self {
        let s = [secret(1)];
        Self { env: WebhookEnv::start_with(&s, &s, options.writes_per_min) }
    }

    fn create_target(&self, db: &TestDb, name: &str) {
        self.env.create_target(db, name, serde_json::json!({"concurrency": CONCURRENCY}));
    }

    /// Defines `definition` into `container`: every column under its name.
    fn define(&self, db: &TestDb, definition: &str, source: &str, target: &str, container: &str) {
        db.psql(&format!(
            "SELECT sync.define('{definition}', source => '{source}', target => '{target}', list => '{container}')"
        ));
    }

    fn add_secret<'a>(&self, cmd: &'a mut Command) -> &'a mut Command {
        self.env.add_secret(cmd)
    }

    fn items(&self, container: &str) -> BTreeMap<String, Map<String, Value>> {
        self.env.materialised().remove(container).unwrap_or_default()
    }

    fn count(&self, container: &str) -> usize {
        self.items(container).len()
    }

    fn assert_target_equals_source(&self, db: &TestDb, definition: &str, containers: &[&str]) {
        let rejected = self.env.rejected();
        assert!(rejected.is_empty(), "requests the receiver could not verify: {rejected:?}");
        let want = expected(db, definition);
        let have = self.env.materialised();
        for c in containers {
            let w = want.get(*c).cloned().unwrap_or_default();
            let h = have.get(*c).cloned().unwrap_or_default();
            assert_eq!(h.keys().collect::<Vec<_>>(), w.keys().collect::<Vec<_>>(), "the rows in {c}");
            for (key, fields) in &w {
                assert_eq!(&h[key], fields, "{c}/{key}");
            }
        }
    }

    fn inject(&self, fault: Fault, count: u32) {
        self.env.emu.inject(fault, count);
    }

    fn set_latency(&self, ms: u64) {
        self.env.emu.set_latency(ms);
    }

    fn set_down(&self, down: bool) {
        self.env.emu.set_down(down);
    }

    fn expire_tokens(&self) {}

    fn stats(&self) -> Stats {
        self.env.emu.stats()
    }
}
