//! Injectable faults: what they do, the queue of pending ones, the
//! periodic one, and their JSON form (`POST /_emulator/fault`).

use std::collections::VecDeque;

use serde_json::Value;

/// A fault to inject into the next API requests (requests an API answers
/// directly, such as token requests, are never affected; a batch request
/// counts as one request).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// Answer with this status and the API's error body (503 and 429 carry
    /// `Retry-After: 1`); the request is not executed.
    Status(u16),
    /// Close the connection without any response; the request is not executed.
    Drop,
    /// `200` with a body that is not JSON; the request is not executed.
    Garbage,
    /// Execute the request, then answer `200` with its JSON body cut in half.
    Truncated,
    /// For the next batch request (other requests pass it by; for Graph a
    /// `$batch` envelope): the last half of its requests (at least one) is
    /// neither executed nor answered; the rest is processed normally.
    BatchMissingResponses,
    /// `429` with this `Retry-After` header value, verbatim (`NaN`,
    /// `1e300`, …: hostile answers); the request is not executed.
    Throttle(String),
    /// Answer with this status and this body, verbatim (`text/html`: not
    /// the API's JSON error envelope); the request is not executed.
    Raw(u16, String),
    /// Execute the request (a whole batch: every request in it), then
    /// lose the answer: answer this status with the API's error body
    /// instead (503 and 429 carry `Retry-After: 1`).
    RunThenStatus(u16),
    /// Execute the request (or the whole batch), then close the
    /// connection without an answer.
    RunThenDrop,
    /// Execute the request (or the whole batch), then hold the
    /// connection this many milliseconds (past the client's timeout) and
    /// close it without an answer.
    RunThenStall(u64),
}

/// The faults waiting for requests.
#[derive(Debug, Default)]
pub(crate) struct Faults {
    /// Pending faults, each with how many more requests it applies to.
    pub queue: VecDeque<(Fault, u32)>,
    /// A fault applied to every n-th API request (after the pending ones),
    /// with how many API requests were counted so far.
    pub periodic: Option<(Fault, u32, u64)>,
}

impl Faults {
    /// The next fault for an API request: a pending one first (a
    /// `BatchMissingResponses` waits for a batch), else the periodic one
    /// when this request is its n-th.
    pub(crate) fn take(&mut self, is_batch: bool) -> Option<Fault> {
        let periodic = match &mut self.periodic {
            Some((fault, every, seen)) => {
                *seen += 1;
                (*seen % u64::from((*every).max(1)) == 0).then(|| fault.clone())
            }
            None => None,
        };
        let Some((fault, left)) = self.queue.front_mut() else { return periodic };
        if matches!(fault, Fault::BatchMissingResponses) && !is_batch {
            return periodic;
        }
        let f = fault.clone();
        *left -= 1;
        if *left == 0 {
            self.queue.pop_front();
        }
        Some(f)
    }
}

/// A fault and its count from the JSON of `POST /_emulator/fault`.
pub(crate) fn parse_fault(v: &Value) -> Result<(Fault, u32), String> {
    let count = match v.get("count") {
        None | Some(Value::Null) => 1,
        Some(c) => c.as_u64().and_then(|c| u32::try_from(c).ok()).ok_or("'count' must be a non-negative integer")?,
    };
    let fault = match v.get("fault").and_then(Value::as_str) {
        Some("status") => {
            let s = v.get("status").and_then(Value::as_u64).ok_or("'status' is required for fault 'status'")?;
            if !(100..=599).contains(&s) {
                return Err(format!("invalid status {s}"));
            }
            Fault::Status(s as u16)
        }
        Some("drop") => Fault::Drop,
        Some("garbage") => Fault::Garbage,
        Some("truncated") => Fault::Truncated,
        Some("batch_missing") | Some("batch_missing_responses") => Fault::BatchMissingResponses,
        Some("throttle") => Fault::Throttle(
            v.get("retry_after")
                .and_then(Value::as_str)
                .ok_or("'retry_after' (a string) is required for fault 'throttle'")?
                .to_owned(),
        ),
        Some("run_then_status") => {
            let s =
                v.get("status").and_then(Value::as_u64).ok_or("'status' is required for fault 'run_then_status'")?;
            if !(100..=599).contains(&s) {
                return Err(format!("invalid status {s}"));
            }
            Fault::RunThenStatus(s as u16)
        }
        Some("run_then_drop") => Fault::RunThenDrop,
        Some("run_then_stall") => Fault::RunThenStall(
            v.get("ms").and_then(Value::as_u64).ok_or("'ms' is required for fault 'run_then_stall'")?,
        ),
        Some("raw") => {
            let s = v.get("status").and_then(Value::as_u64).ok_or("'status' is required for fault 'raw'")?;
            if !(100..=599).contains(&s) {
                return Err(format!("invalid status {s}"));
            }
            Fault::Raw(s as u16, v.get("body").and_then(Value::as_str).unwrap_or("").to_owned())
        }
        other => {
            return Err(format!(
                "unknown fault {other:?} (status, drop, garbage, truncated, batch_missing, throttle, raw, \
                 run_then_status, run_then_drop, run_then_stall)"
            ))
        }
    };
    Ok((fault, count))
}
