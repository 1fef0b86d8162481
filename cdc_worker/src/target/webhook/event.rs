//! The events a webhook target sends: one per export, made of what the
//! extension staged (the worker adds only the envelope and the id), and
//! their grouping into requests when batches are on.

use std::collections::HashSet;

use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};

use crate::target::{Export, Op};

/// What every event id starts with.
pub const EVENT_ID_PREFIX: &str = "sb_";
/// What a batch request's `webhook-id` starts with.
pub const BATCH_ID_PREFIX: &str = "sb_batch_";

/// The event type's suffix for an operation (`<definition>.<suffix>`);
/// None for operations that send no event.
pub fn type_suffix(op: Op) -> Option<&'static str> {
    match op {
        Op::Add => Some("created"),
        Op::Update => Some("updated"),
        Op::Delete => Some("deleted"),
        Op::Move => Some("moved"),
        Op::Provision | Op::Disable => None,
    }
}

/// One event, serialized once: the bytes signed are the bytes sent.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// The export it carries.
    pub export_id: i64,
    /// Its id (`sb_<export id>_<content digest>`): the same across retries
    /// of the same content, another one once a newer change of the row was
    /// merged into the export.
    pub id: String,
    /// The row's key (`sync_key`), to keep two events of one key out of a batch.
    pub key: Option<String>,
    /// The export's operation.
    pub op: Op,
    /// The event object as JSON.
    pub json: Vec<u8>,
}

/// The first `n` bytes of a SHA-256 in lower-case hex.
fn digest_hex(bytes: &[u8], n: usize) -> String {
    Sha256::digest(bytes).iter().take(n).map(|b| format!("{b:02x}")).collect()
}

/// The event of an export; Err (a definite failure) for an operation that
/// sends none.
pub fn build(e: &Export) -> Result<Event, String> {
    let Some(suffix) = type_suffix(e.op) else {
        return Err(format!("a webhook sends no event for a {} export", e.op.as_str()));
    };
    let mut data = Map::new();
    data.insert("definition".into(), Value::String(e.definition.clone()));
    data.insert("op".into(), Value::String(suffix.into()));
    data.insert("key".into(), e.key_values.clone().unwrap_or(Value::Null));
    if e.op != Op::Delete {
        data.insert("fields".into(), e.payload.clone().unwrap_or_else(|| json!({})));
    }
    data.insert("previous".into(), e.previous.clone().unwrap_or(Value::Null));
    data.insert("container".into(), Value::String(e.container.clone()));
    data.insert("from_container".into(), e.from_container.clone().map_or(Value::Null, Value::String));
    data.insert("source".into(), json!({"lsn": e.staged_lsn, "run": e.staged_run}));
    let event_type = format!("{}.{suffix}", e.definition);
    let content = serde_json::to_vec(&json!({"type": event_type, "data": data})).map_err(|x| x.to_string())?;
    let id = format!("{EVENT_ID_PREFIX}{}_{}", e.id, digest_hex(&content, 6));
    let timestamp = e.staged_at.clone().map_or(Value::Null, Value::String);
    let event = json!({"id": id, "type": event_type, "timestamp": timestamp, "data": data});
    let json = serde_json::to_vec(&event).map_err(|x| x.to_string())?;
    Ok(Event { export_id: e.id, id, key: e.sync_key.clone(), op: e.op, json })
}

/// Splits events (in claim order) into requests: at most `max_events` and,
/// as a JSON array, `max_bytes` each (an event larger than that goes
/// alone), never two events of one key in one request. Indexes into `events`.
pub fn group(events: &[Event], max_events: usize, max_bytes: usize) -> Vec<Vec<usize>> {
    let max_events = max_events.max(1);
    let mut out: Vec<Vec<usize>> = Vec::new();
    let mut cur: Vec<usize> = Vec::new();
    let mut bytes = 2usize; // "[" and "]"
    let mut keys: HashSet<&str> = HashSet::new();
    for (i, ev) in events.iter().enumerate() {
        let extra = ev.json.len() + usize::from(!cur.is_empty());
        let twin = ev.key.as_deref().is_some_and(|k| keys.contains(k));
        if !cur.is_empty() && (cur.len() >= max_events || bytes + extra > max_bytes || twin) {
            out.push(std::mem::take(&mut cur));
            keys.clear();
            bytes = 2;
        }
        bytes += ev.json.len() + usize::from(!cur.is_empty());
        if let Some(k) = ev.key.as_deref() {
            keys.insert(k);
        }
        cur.push(i);
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

/// A request's `webhook-id` and body: one event as itself, or (`batched`)
/// a JSON array of events whose id names its events.
pub fn request(events: &[&Event], batched: bool) -> (String, Vec<u8>) {
    if !batched {
        if let [one] = events {
            return (one.id.clone(), one.json.clone());
        }
    }
    let mut body = Vec::with_capacity(2 + events.iter().map(|e| e.json.len() + 1).sum::<usize>());
    body.push(b'[');
    for (i, e) in events.iter().enumerate() {
        if i > 0 {
            body.push(b',');
        }
        body.extend_from_slice(&e.json);
    }
    body.push(b']');
    let ids: Vec<&str> = events.iter().map(|e| e.id.as_str()).collect();
    let id = format!(
        "{BATCH_ID_PREFIX}{}_{}",
        events.first().map_or(0, |e| e.export_id),
        digest_hex(ids.join(",").as_bytes(), 6)
    );
    (id, body)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn export(id: i64, op: Op, key: &str, payload: Value) -> Export {
        serde_json::from_value(json!({
            "id": id, "definition": "people", "op": op.as_str(), "sync_key": key, "list": "staff",
            "from_list": if op == Op::Move { Some("old") } else { None },
            "target_id": null, "etag": null, "payload": payload, "attempts": 1, "verify": false,
            "previous": if op == Op::Update { json!({"team": "infra"}) } else { Value::Null },
            "key_values": {"id": key}, "staged_lsn": "0/16B3748", "staged_run": null,
            "staged_at": "2025-05-01T12:00:00.000000Z",
        }))
        .unwrap()
    }

    #[test]
    fn the_payload_is_as_documented() {
        let e = export(42, Op::Update, "7", json!({"name": "Ada", "team": "core"}));
        let ev = build(&e).unwrap();
        let v: Value = serde_json::from_slice(&ev.json).unwrap();
        assert_eq!(v["type"], "people.updated");
        assert_eq!(v["timestamp"], "2025-05-01T12:00:00.000000Z");
        assert_eq!(v["id"], ev.id.as_str());
        assert!(ev.id.starts_with("sb_42_") && ev.id.len() == "sb_42_".len() + 12, "{}", ev.id);
        assert_eq!(
            v["data"],
            json!({"definition": "people", "op": "updated", "key": {"id": "7"},
                   "fields": {"name": "Ada", "team": "core"}, "previous": {"team": "infra"},
                   "container": "staff", "from_container": null,
                   "source": {"lsn": "0/16B3748", "run": null}})
        );
        let del = build(&export(43, Op::Delete, "7", json!({}))).unwrap();
        let v: Value = serde_json::from_slice(&del.json).unwrap();
        assert_eq!(v["type"], "people.deleted");
        assert!(v["data"].get("fields").is_none(), "a delete carries no fields");
        let mv = build(&export(44, Op::Move, "7", json!({"name": "Ada"}))).unwrap();
        let v: Value = serde_json::from_slice(&mv.json).unwrap();
        assert_eq!((v["type"].as_str(), v["data"]["from_container"].as_str()), (Some("people.moved"), Some("old")));
        assert!(build(&export(45, Op::Provision, "7", json!({}))).is_err());
    }

    #[test]
    fn ids_are_stable_for_the_same_content_and_change_with_it() {
        let a = build(&export(42, Op::Update, "7", json!({"name": "Ada"}))).unwrap();
        let mut again = export(42, Op::Update, "7", json!({"name": "Ada"}));
        again.attempts = 5;
        again.verify = true;
        assert_eq!(build(&again).unwrap(), a, "a retry is the same event");
        let merged = build(&export(42, Op::Update, "7", json!({"name": "Ada L."}))).unwrap();
        assert_ne!(merged.id, a.id, "a newer change merged into the export is another event");
        assert!(merged.id.starts_with("sb_42_"));
        assert!(!a.id.contains('.'), "ids never hold a dot (the signed content's separator)");
    }

    #[test]
    fn batches_respect_both_limits_and_hold_one_event_per_key() {
        let evs: Vec<Event> =
            (1..=7).map(|i| build(&export(i, Op::Add, &format!("k{}", i % 6), json!({"v": i}))).unwrap()).collect();
        let len = evs[0].json.len();
        assert!(evs.iter().all(|e| e.json.len() == len));
        // By count: 3 a request (k1 comes again in the last).
        assert_eq!(group(&evs, 3, 1 << 20), vec![vec![0, 1, 2], vec![3, 4, 5], vec![6]]);
        // By bytes: two events and the brackets and the comma fit, three do not.
        assert_eq!(group(&evs, 100, 2 * len + 3), vec![vec![0, 1], vec![2, 3], vec![4, 5], vec![6]]);
        // An event larger than the limit goes alone.
        assert_eq!(group(&evs[..2], 100, 10), vec![vec![0], vec![1]]);
        // Two events of one key never share a request (k1: events 0 and 6).
        assert_eq!(group(&evs, 100, 1 << 20), vec![vec![0, 1, 2, 3, 4, 5], vec![6]]);
        let (id, body) = request(&evs[..3].iter().collect::<Vec<_>>(), true);
        assert!(id.starts_with("sb_batch_1_"), "{id}");
        let arr: Vec<Value> = serde_json::from_slice(&body).unwrap();
        assert_eq!(arr.len(), 3);
        assert_eq!(arr[2]["id"], evs[2].id.as_str());
        assert_eq!(body.len(), 3 * len + 4);
        let (single, body) = request(&[&evs[0]], false);
        assert_eq!((single, body), (evs[0].id.clone(), evs[0].json.clone()));
        let (one_in_batch, body) = request(&[&evs[0]], true);
        assert!(one_in_batch.starts_with(BATCH_ID_PREFIX) && body.starts_with(b"["));
    }
}
