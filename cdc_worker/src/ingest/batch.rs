//! Changed keys collected from the stream, deduplicated per relation.

use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;
use std::time::Instant;

use crate::source::pgoutput::{Column, TupleData};

/// A relation as the stream described it.
#[derive(Debug, Clone)]
pub(super) struct RelationInfo {
    pub(super) name: String,
    pub(super) columns: Vec<String>,
    /// Positions of the key (replica identity) columns; all when none is flagged.
    pub(super) key_positions: Vec<usize>,
}

/// How many times `--batch-keys` a batch over several relations may hold,
/// up to `TOTAL_CAP` keys (memory: some 60 bytes a key, three batches at
/// most: 9 MB at the cap); a `--batch-keys` above the cap is the limit in all.
pub(super) const TOTAL_BATCHES: usize = 5;
pub(super) const TOTAL_CAP: usize = 50_000;

/// Changed keys waiting to be staged.
#[derive(Default)]
pub(super) struct Batch {
    pub(super) keys: HashMap<u32, HashSet<String>>,
    pub(super) truncates: Vec<u32>,
    pub(super) count: usize,
    /// The most keys any one relation holds.
    pub(super) largest: usize,
    pub(super) since: Option<Instant>,
    /// Commit timestamps (microseconds since 2000-01-01) of the
    /// transactions whose last keys are in this batch (the metrics' commit
    /// to staged latency).
    pub(super) commits: Vec<i64>,
}

impl Batch {
    pub(super) fn is_empty(&self) -> bool {
        self.count == 0 && self.truncates.is_empty()
    }

    pub(super) fn touch(&mut self) {
        if self.since.is_none() {
            self.since = Some(Instant::now());
        }
    }

    pub(super) fn add(&mut self, rel: u32, key: String) {
        self.touch();
        let keys = self.keys.entry(rel).or_default();
        if keys.insert(key) {
            self.count += 1;
            self.largest = self.largest.max(keys.len());
        }
    }

    /// Whether the batch is to be staged now: a relation holds `max_keys`
    /// keys, or the batch `TOTAL_BATCHES` times that over all relations.
    /// Staging a relation's keys costs a fixed part per call (planning its
    /// mapping, the definition's lock: some 2 ms) besides the keys: a batch
    /// spread over many relations is allowed to grow, so that each call
    /// still carries many keys (50 definitions: 1,000 keys each, not 200).
    pub(super) fn full(&self, max_keys: usize) -> bool {
        self.largest >= max_keys || self.count >= max_keys.saturating_mul(TOTAL_BATCHES).min(TOTAL_CAP.max(max_keys))
    }

    pub(super) fn truncate(&mut self, rel: u32) {
        self.touch();
        if !self.truncates.contains(&rel) {
            self.truncates.push(rel);
        }
    }
}

/// The key object `{"col": "text", …}` of a tuple, or None when a key column
/// carries no text value (NULL, unchanged TOAST).
pub(super) fn key_object(rel: &RelationInfo, tuple: &TupleData<'_>) -> Option<String> {
    let mut out = String::with_capacity(32);
    out.push('{');
    for (n, &i) in rel.key_positions.iter().enumerate() {
        let value = match tuple.columns.get(i)? {
            Column::Text(b) => std::str::from_utf8(b).ok()?,
            _ => return None,
        };
        if n > 0 {
            out.push(',');
        }
        json_string(&mut out, rel.columns.get(i)?);
        out.push(':');
        json_string(&mut out, value);
    }
    out.push('}');
    Some(out)
}

pub(super) fn json_string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_strings_escape_what_json_requires() {
        let mut s = String::new();
        json_string(&mut s, "a\"b\\c\nd\u{1}é東");
        assert_eq!(s, r#""a\"b\\c\nd\u0001é東""#);
        let v: serde_json::Value = serde_json::from_str(&s).unwrap();
        assert_eq!(v, serde_json::json!("a\"b\\c\nd\u{1}é東"));
    }

    #[test]
    fn a_batch_is_full_at_the_limit_per_relation_or_five_times_it_in_all() {
        let mut b = Batch::default();
        for k in 0..9 {
            b.add(1, format!("{k}"));
        }
        assert!(!b.full(10));
        b.add(1, "9".into());
        assert!(b.full(10), "one relation at the limit");
        let mut b = Batch::default();
        for rel in 0..49u32 {
            b.add(rel, "1".into());
        }
        assert!(!b.full(10), "49 keys over 49 relations: each far from the limit");
        b.add(49, "1".into());
        assert!(b.full(10), "50 keys in all: five times the limit");
        // Five times a large limit is capped.
        let mut b = Batch::default();
        for rel in 0..TOTAL_CAP as u32 {
            b.add(rel % 1_000, format!("{rel}"));
        }
        assert_eq!((b.count, b.largest), (TOTAL_CAP, TOTAL_CAP / 1_000));
        assert!(b.full(20_000), "the cap, not five times 20,000");
        assert!(!b.full(TOTAL_CAP + 1), "a limit above the cap is the limit in all");
    }

    #[test]
    fn batches_deduplicate_keys() {
        let mut b = Batch::default();
        b.add(1, "{\"id\":\"1\"}".into());
        b.add(1, "{\"id\":\"1\"}".into());
        b.add(2, "{\"id\":\"1\"}".into());
        assert_eq!(b.count, 2);
        assert!(!b.is_empty());
    }
}
