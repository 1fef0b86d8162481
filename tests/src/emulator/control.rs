//! The control plane, `/_emulator/...`: inspection and control without
//! authentication, served even during an outage.

use serde_json::{json, Value};

use super::fault::parse_fault;
use super::{json_response, Api, EmulatorState, HttpResponse};

/// The harness's own routes; an API adds its own (see [`Api::control`]).
const ROUTES: &str = "GET stats, POST config, POST fault, POST expire_tokens";

/// Serves `method /_emulator/{what}`.
pub(crate) fn control<A: Api>(state: &EmulatorState<A>, method: &str, what: &str, body: &[u8]) -> HttpResponse {
    let parsed = || -> Result<Value, String> {
        if body.is_empty() {
            return Ok(json!({}));
        }
        serde_json::from_slice(body).map_err(|e| format!("invalid JSON: {e}"))
    };
    let bad = |msg: String| json_response(400, &json!({"error": msg}));
    match (method, what.trim_end_matches('/')) {
        ("GET", "stats") => json_response(200, &serde_json::to_value(state.stats()).unwrap_or_default()),
        ("POST", "config") => {
            let v = match parsed() {
                Ok(v) => v,
                Err(e) => return bad(e),
            };
            // The API's settings first (`budget_per_min` for Graph), then the harness's.
            let mut settings = match state.lock().api.configure(&v) {
                Ok(s) => s,
                Err(e) => return bad(e),
            };
            if let Some(l) = v.get("latency_ms") {
                match l.as_u64() {
                    Some(ms) => state.set_latency(ms),
                    None => return bad("'latency_ms' must be a non-negative integer".into()),
                }
            }
            settings.insert("latency_ms".into(), json!(state.lock().latency_ms));
            json_response(200, &Value::Object(settings))
        }
        ("POST", "fault") => {
            match parsed().and_then(|v| Ok((parse_fault(&v)?, v.get("every").and_then(Value::as_u64)))) {
                // `"every": n`: every n-th request from now on (0 stops it).
                Ok(((fault, _), Some(every))) => {
                    state.inject_every(Some(fault), u32::try_from(every).unwrap_or(u32::MAX));
                    json_response(200, &json!({"ok": true, "every": every}))
                }
                Ok(((fault, count), None)) => {
                    state.inject(fault, count);
                    json_response(200, &json!({"ok": true, "pending": state.lock().faults.queue.len()}))
                }
                Err(e) => bad(e),
            }
        }
        ("POST", "expire_tokens") => {
            state.expire_tokens();
            json_response(200, &json!({"ok": true}))
        }
        (method, route) => {
            let mut st = state.lock();
            if let Some(answer) = st.api.control(method, route, body) {
                return answer;
            }
            let own = A::CONTROL_ROUTES.iter().map(|r| format!("{r}, ")).collect::<String>();
            json_response(
                404,
                &json!({"error": format!("unknown control route {method} /_emulator/{what}; try {own}{ROUTES}")}),
            )
        }
    }
}
