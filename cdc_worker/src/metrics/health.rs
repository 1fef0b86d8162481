//! Readiness: whether the worker's parts (the ingest, the exporter) have
//! connected to the database and started their loops, for `/readyz`.
//!
//! A part is `starting` until it says it is ready, `restarting` after a
//! failure (until it is ready again), `done` when it ended without failing
//! (an exporter with no target, a `--once` run). The worker is ready when
//! every part is ready or done and at least one is ready, and it is not
//! stopping.

use std::collections::BTreeMap;
use std::sync::Mutex;

/// Where a part of the worker stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Phase {
    /// Connecting, or not yet streaming / claiming.
    Starting,
    /// Connected, its loops running.
    Ready,
    /// Failed; waiting to start again.
    Restarting,
    /// Ended without failing.
    Done,
    /// Ended with a failure that is not retried.
    Failed,
}

struct State {
    parts: BTreeMap<&'static str, Phase>,
    stopping: bool,
}

static STATE: Mutex<State> = Mutex::new(State { parts: BTreeMap::new(), stopping: false });

fn set(part: &'static str, phase: Phase) {
    STATE.lock().unwrap_or_else(|p| p.into_inner()).parts.insert(part, phase);
}

/// `part` is starting (or starting again).
pub fn starting(part: &'static str) {
    set(part, Phase::Starting);
}

/// `part` is connected and its loops run.
pub fn ready(part: &'static str) {
    set(part, Phase::Ready);
}

/// `part` failed and will start again.
pub fn restarting(part: &'static str) {
    set(part, Phase::Restarting);
}

/// `part` ended without failing.
pub fn done(part: &'static str) {
    set(part, Phase::Done);
}

/// `part` ended with a failure that stops the worker.
pub fn failed(part: &'static str) {
    set(part, Phase::Failed);
}

/// The worker is stopping (SIGTERM, SIGINT): never ready again.
pub fn stopping() {
    STATE.lock().unwrap_or_else(|p| p.into_inner()).stopping = true;
}

/// Whether the worker is ready, and a short reason (one line per part).
pub fn readiness() -> (bool, String) {
    let state = STATE.lock().unwrap_or_else(|p| p.into_inner());
    if state.stopping {
        return (false, "not ready: the worker is stopping\n".into());
    }
    if state.parts.is_empty() {
        return (false, "not ready: starting\n".into());
    }
    let ready = state.parts.values().all(|p| matches!(p, Phase::Ready | Phase::Done))
        && state.parts.values().any(|p| *p == Phase::Ready);
    let mut out = String::from(if ready { "ready\n" } else { "not ready\n" });
    for (part, phase) in &state.parts {
        let what = match phase {
            Phase::Starting => "starting: not streaming or claiming yet",
            Phase::Ready => "ready",
            Phase::Restarting => "restarting after a failure (see the log)",
            Phase::Done => "done",
            Phase::Failed => "stopped by a failure (see the log)",
        };
        out.push_str(&format!("{part}: {what}\n"));
    }
    (ready, out)
}

#[cfg(test)]
pub(crate) fn reset() {
    let mut s = STATE.lock().unwrap_or_else(|p| p.into_inner());
    s.parts.clear();
    s.stopping = false;
}
