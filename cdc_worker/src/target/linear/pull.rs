//! Reading a team's issues back (two-way sync), one page per call.
//!
//! - The query: `issues(filter: {team: {id: {eq: T}}, updatedAt: {gte:
//!   S}}, orderBy: updatedAt, first: N, after: C, includeArchived: true)`
//!   with `pageInfo { hasNextPage endCursor }`, selecting only what the
//!   definition's fields need (`state { name }`, `assignee { email }` as
//!   objects; labels as `labelIds`, named through the team's metadata).
//!   A fresh read (no link) has no `updatedAt` filter: every issue of the
//!   team, archived and trashed ones too.
//! - The link ([`Cursor`], JSON, at most [`MAX_LINK`] characters): the
//!   round's lower bound, Linear's `endCursor` for the next page, the
//!   newest `updatedAt` seen and the `(id, updatedAt)` pairs read in the
//!   last [`OVERLAP_MS`] before it. The next round reads again from a
//!   little before the newest change seen (inclusive: Linear's clock is
//!   its own, and a change committed a moment late carries an earlier
//!   time), and drops what it read already (the same id with the same
//!   `updatedAt`); a change of an issue has a new `updatedAt` and is kept.
//! - What is the definition's: an issue whose id syncbridge made for this
//!   definition ([`super::owner`]), and an issue made in Linear by a
//!   person (an id syncbridge did not make) that carries the label named
//!   like the definition. Other definitions' issues and unlabelled issues
//!   of people are read (the query cannot tell them apart) and left out.
//! - Deleted: trashed (`trashed: true`), or archived when the target
//!   deletes by archiving (`on_delete = archive`).
//! - Values: in the form the push takes them (see [`report_fields`]), so
//!   that an issue nobody changed compares equal to the ledger; the eTag is
//!   the issue's `updatedAt`, which the writes report as well.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use super::client::{classify, error_message};
use super::fields::canonical;
use super::{owner, LinearTarget, OnDelete, Owner};
use crate::target::policy::bounded;
use crate::target::{ErrorClass, Health, PullError, PullPage, PullRequest};

/// Items a page of a delta round asks for: Linear prices a connection by
/// its `first`, whatever comes back, so an idle pull stays cheap.
pub const DELTA_PAGE: u32 = 50;
/// Items a page of a full read asks for at most.
pub const FULL_PAGE: u32 = 100;
/// The next round reads again from this long before the newest change seen.
pub const OVERLAP_MS: i64 = 1000;
/// `(id, updatedAt)` pairs the link keeps to drop what was read already.
pub const SEEN_CAP: usize = 100;
/// The longest link `sync.pull_page` takes.
pub const MAX_LINK: usize = 8000;

/// Where a team's read stands: the link handed to `sync.pull_page`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Cursor {
    /// Format version.
    pub v: u8,
    /// The round's lower bound (`updatedAt >= since`, epoch ms); None: the
    /// whole team (a full read).
    #[serde(default)]
    pub since: Option<i64>,
    /// Linear's `endCursor`: the next page of the round.
    #[serde(default)]
    pub after: Option<String>,
    /// The newest `updatedAt` seen (epoch ms).
    #[serde(default)]
    pub max: Option<i64>,
    /// `(id, updatedAt)` read from `since` on: not reported again.
    #[serde(default)]
    pub seen: Vec<(String, i64)>,
}

impl Cursor {
    /// A stored link, or why it is not one of ours.
    pub fn parse(link: &str) -> Result<Self, String> {
        let c: Cursor =
            serde_json::from_str(link).map_err(|e| format!("the stored link is not a Linear cursor ({e})"))?;
        if c.v != 1 {
            return Err(format!("the stored link is a Linear cursor of version {}, not 1", c.v));
        }
        if c.after.as_ref().is_some_and(|a| a.len() > 1000) {
            return Err("the stored link's page cursor is too long".into());
        }
        Ok(c)
    }

    /// Takes a page's `(id, updatedAt)` pairs in: the newest time, and the
    /// pairs within [`OVERLAP_MS`] of it, at most [`SEEN_CAP`] (the newest).
    fn saw(&mut self, pairs: &[(String, i64)]) {
        for p in pairs {
            if !self.seen.contains(p) {
                self.seen.push(p.clone());
            }
            self.max = Some(self.max.map_or(p.1, |m| m.max(p.1)));
        }
        if let Some(max) = self.max {
            self.seen.retain(|(_, t)| *t >= max - OVERLAP_MS);
        }
        self.seen.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        self.seen.truncate(SEEN_CAP);
    }

    /// The lower bound of the next round: a little before the newest change
    /// seen, but not before the oldest pair kept (what lies between would
    /// come back unrecognized: as echoes, never lost).
    fn next_since(&self) -> Option<i64> {
        let max = self.max?;
        let window = max - OVERLAP_MS;
        if self.seen.len() >= SEEN_CAP {
            let oldest = self.seen.iter().map(|s| s.1).min().unwrap_or(max);
            Some(window.max(oldest))
        } else {
            Some(window)
        }
    }

    /// The link that starts the next round.
    fn next_round(&self) -> Cursor {
        Cursor { v: 1, since: self.next_since(), after: None, max: self.max, seen: self.seen.clone() }
    }

    /// As text, within [`MAX_LINK`] (the oldest pairs go first).
    fn to_link(&self) -> String {
        let mut c = self.clone();
        loop {
            let s = serde_json::to_string(&c).unwrap_or_default();
            if s.len() <= MAX_LINK || c.seen.is_empty() {
                return s;
            }
            c.seen.pop();
            if c.after.is_none() {
                // (a next round's bound moves up with what it still knows)
                let oldest = c.seen.iter().map(|s| s.1).min();
                c.since = match (c.since, oldest) {
                    (Some(s), Some(o)) => Some(s.max(o)),
                    (s, _) => s,
                };
            }
        }
    }
}

/// Epoch milliseconds of an ISO 8601 date and time.
pub fn parse_ms(s: &str) -> Option<i64> {
    s.parse::<jiff::Timestamp>().ok().map(|t| t.as_millisecond())
}

/// `2026-12-06T22:33:52.123Z`.
pub fn iso_ms(ms: i64) -> String {
    jiff::Timestamp::from_millisecond(ms).map(|t| t.strftime("%Y-%m-%dT%H:%M:%S%.3fZ").to_string()).unwrap_or_default()
}

/// The canonical fields a read reports, in the definition's names.
fn wanted_fields(fields: &[String]) -> Vec<(String, &'static str)> {
    fields.iter().filter(|f| *f != "SyncKey").filter_map(|f| canonical(f).map(|c| (f.clone(), c))).collect()
}

/// The selection of an issue for `fields`, and its complexity as Linear's
/// rule of thumb prices it (1 an object, 0.1 a scalar).
fn selection(fields: &[(String, &'static str)]) -> (String, f64) {
    let mut scalars = vec!["id", "updatedAt", "trashed", "archivedAt", "labelIds"];
    let mut objects: Vec<&str> = Vec::new();
    for (_, c) in fields {
        match *c {
            "title" | "description" | "priority" | "dueDate" | "estimate" if !scalars.contains(c) => scalars.push(c),
            "state" => objects.push("state { name }"),
            "assignee" => objects.push("assignee { email }"),
            _ => {}
        }
    }
    objects.dedup();
    let cost = 1.0 + 0.1 * scalars.len() as f64 + 1.1 * objects.len() as f64;
    let mut sel = scalars.join(" ");
    for o in objects {
        sel.push(' ');
        sel.push_str(o);
    }
    (sel, cost)
}

/// An issue's fields as the push sends them: title and description as
/// text; the state by its name; labels as the JSON text of an array of
/// names in the issue's order, as a `text[]` column travels (`null`
/// without any, as a NULL array maps); the
/// assignee by e-mail; priority and estimate as numbers; the due date as
/// `YYYY-MM-DD`.
pub fn report_fields(node: &Value, fields: &[(String, &'static str)], labels: &HashMap<String, String>) -> Value {
    let mut out = Map::new();
    for (name, c) in fields {
        let v = match *c {
            "title" | "description" | "dueDate" => node.get(*c).cloned().unwrap_or(Value::Null),
            "priority" | "estimate" => match node.get(*c) {
                Some(Value::Number(n)) => match n.as_f64() {
                    Some(f) if f.fract() == 0.0 && f.abs() < 1e15 => Value::from(f as i64),
                    _ => Value::Number(n.clone()),
                },
                _ => Value::Null,
            },
            "state" => node.pointer("/state/name").cloned().unwrap_or(Value::Null),
            "assignee" => node.pointer("/assignee/email").cloned().unwrap_or(Value::Null),
            "labels" => {
                let names: Vec<String> = label_ids(node)
                    .iter()
                    .filter_map(|id| labels.get(id))
                    .map(|n| Value::from(n.as_str()).to_string())
                    .collect();
                if names.is_empty() {
                    Value::Null
                } else {
                    // As a `text[]` column travels: its JSON text, spelled
                    // as jsonb spells it.
                    Value::String(format!("[{}]", names.join(", ")))
                }
            }
            _ => continue,
        };
        out.insert(name.clone(), v);
    }
    Value::Object(out)
}

fn label_ids(node: &Value) -> Vec<String> {
    node.get("labelIds")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(|x| x.as_str().map(str::to_owned)).collect())
        .unwrap_or_default()
}

/// Whether an issue of a person joins `definition`: it carries the label
/// named like it.
fn has_intake_label(node: &Value, definition: &str, labels: &HashMap<String, String>) -> bool {
    label_ids(node).iter().any(|id| labels.get(id).is_some_and(|n| n.eq_ignore_ascii_case(definition)))
}

impl LinearTarget {
    /// One page of the team's changes for `req.definition` (see the module).
    pub(super) async fn pull_page(&self, req: &PullRequest) -> Result<PullPage, PullError> {
        let mut cur = match &req.link {
            None => Cursor { v: 1, ..Cursor::default() },
            Some(link) => Cursor::parse(link).map_err(PullError::LinkRefused)?,
        };
        let failed = |f: crate::target::http::Failure| PullError::Failed {
            class: f.class,
            message: f.message,
            retry_after: f.retry_after,
        };
        let mut meta = self.meta(false).await.map_err(failed)?;
        let fields = wanted_fields(&req.fields);
        let (node_sel, node_cost) = selection(&fields);
        let full = cur.since.is_none();
        let first = if full { req.page_size.clamp(1, FULL_PAGE) } else { req.page_size.clamp(1, DELTA_PAGE) };
        let team = self.team_of(&meta);
        let mut filter = json!({"team": {"id": {"eq": team}}});
        if let Some(since) = cur.since {
            filter["updatedAt"] = json!({"gte": iso_ms(since)});
        }
        let query = format!(
            "query SyncbridgePull($filter: IssueFilter, $n: Int, $after: String) {{ issues(filter: $filter, orderBy: updatedAt, first: $n, after: $after, includeArchived: true) {{ nodes {{ {node_sel} }} pageInfo {{ hasNextPage endCursor }} }} }}"
        );
        // A connection costs its page: (itself + a node + pageInfo) × first.
        let cost = ((1.0 + node_cost + 1.2) * f64::from(first)).ceil() as u32;
        let vars = json!({"filter": filter, "n": first, "after": cur.after});
        let a = self.gql().post(&query, vars, cost, 0, true).await.map_err(failed)?;
        if let Some(e) = a.errors().first() {
            let msg = self.client.redact(&error_message(e));
            // A page cursor Linear no longer takes: the round starts over.
            if cur.after.is_some() && msg.to_lowercase().contains("cursor") {
                return Err(PullError::Resync(format!(
                    "Linear refused the page cursor ({msg}): the team is read again"
                )));
            }
            return Err(PullError::Failed {
                class: classify(e),
                message: format!("Linear refused the issues query: {msg}"),
                retry_after: None,
            });
        }
        let conn = a.body.pointer("/data/issues").cloned().unwrap_or(Value::Null);
        let shape = |m: &str| PullError::Failed {
            class: ErrorClass::Definite,
            message: format!("Linear's answer to the issues query {m}"),
            retry_after: None,
        };
        let nodes = conn.get("nodes").and_then(Value::as_array).ok_or_else(|| shape("has no nodes"))?;
        let has_next = conn.pointer("/pageInfo/hasNextPage").and_then(Value::as_bool).unwrap_or(false);
        let end = conn.pointer("/pageInfo/endCursor").and_then(Value::as_str).map(str::to_owned);
        // Labels are named through the team's metadata (read again once
        // for a label it does not know yet).
        let unknown = nodes.iter().flat_map(label_ids).any(|id| !meta.label_names.contains_key(&id));
        if unknown {
            meta = self.meta(true).await.map_err(failed)?;
        }
        let mut items = Vec::new();
        let mut pairs = Vec::new();
        for node in nodes {
            let id = node
                .get("id")
                .and_then(Value::as_str)
                .filter(|s| !s.is_empty())
                .ok_or_else(|| shape("has an issue without an id"))?;
            let updated = node.get("updatedAt").and_then(Value::as_str).unwrap_or("");
            let ms = parse_ms(updated)
                .ok_or_else(|| shape(&format!("has issue {} without a valid updatedAt", bounded(id, 40))))?;
            let pair = (id.to_owned(), ms);
            let dup = cur.seen.contains(&pair);
            pairs.push(pair);
            if dup {
                continue;
            }
            let mine = match owner(&self.team_id, &req.definition, id) {
                Owner::This => true,
                Owner::Other => false,
                Owner::Person => has_intake_label(node, &req.definition, &meta.label_names),
            };
            if !mine {
                continue;
            }
            let trashed = node.get("trashed").and_then(Value::as_bool) == Some(true);
            let archived = node.get("archivedAt").is_some_and(|v| !v.is_null());
            let deleted = trashed || (archived && self.on_delete == OnDelete::Archive);
            let fields = if deleted { Value::Null } else { report_fields(node, &fields, &meta.label_names) };
            items.push(json!({"id": id, "etag": updated, "deleted": deleted, "modified": updated, "fields": fields}));
        }
        cur.saw(&pairs);
        let (link, last) = match (has_next, end) {
            (true, Some(end)) => {
                cur.after = Some(end);
                (cur.to_link(), false)
            }
            _ => (cur.next_round().to_link(), true),
        };
        self.client.set_health(Health::Ok, "");
        Ok(PullPage { items, link, last })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cursor_keeps_the_newest_pairs_and_starts_the_next_round_a_little_before_the_newest() {
        let mut c = Cursor { v: 1, ..Cursor::default() };
        assert_eq!(c.next_since(), None, "nothing seen: the next read is whole");
        c.saw(&[("a".into(), 10_000), ("b".into(), 10_500), ("c".into(), 12_000)]);
        assert_eq!(c.max, Some(12_000));
        assert_eq!(c.seen, vec![("c".to_owned(), 12_000)], "only the overlap's pairs");
        assert_eq!(c.next_since(), Some(11_000));
        let link = c.next_round().to_link();
        let back = Cursor::parse(&link).unwrap();
        assert_eq!((back.since, back.after, back.max), (Some(11_000), None, Some(12_000)));
        // Many changes within the overlap: the bound moves up to what is kept.
        let mut c = Cursor { v: 1, ..Cursor::default() };
        let pairs: Vec<(String, i64)> =
            (0..300).map(|i| (format!("{i:08}-0000-4000-8000-000000000000"), 50_000 + i)).collect();
        c.saw(&pairs);
        assert_eq!(c.seen.len(), SEEN_CAP);
        assert_eq!(c.next_since(), Some(50_200), "the oldest pair kept");
        assert!(c.next_round().to_link().len() <= MAX_LINK);
        // Not ours, or of another version: refused.
        assert!(Cursor::parse("https://x/?token=1").is_err());
        assert!(Cursor::parse(r#"{"v": 2}"#).unwrap_err().contains("version 2"));
    }

    #[test]
    fn fields_are_reported_as_the_push_takes_them() {
        let node = json!({"id": "i", "title": "T", "description": null, "priority": 2.0, "estimate": null,
                          "dueDate": "2026-03-11", "state": {"name": "In Progress"}, "assignee": {"email": "ada@example.com"},
                          "labelIds": ["l2", "l1", "lx"]});
        let labels = HashMap::from([("l1".to_owned(), "Bug".to_owned()), ("l2".to_owned(), "UI".to_owned())]);
        let f = wanted_fields(&[
            "SyncKey".into(),
            "title".into(),
            "Body".into(),
            "status".into(),
            "labels".into(),
            "prio".into(),
            "priority".into(),
            "due_date".into(),
            "assignee".into(),
            "estimate".into(),
        ]);
        assert_eq!(
            report_fields(&node, &f, &labels),
            json!({"title": "T", "Body": null, "status": "In Progress", "labels": "[\"UI\", \"Bug\"]", "priority": 2,
                   "due_date": "2026-03-11", "assignee": "ada@example.com", "estimate": null})
        );
        let bare = json!({"id": "i", "title": "T", "labelIds": [], "state": {"name": "Todo"}, "assignee": null});
        assert_eq!(report_fields(&bare, &f[..1], &labels), json!({"title": "T"}));
        let f = wanted_fields(&["labels".into(), "assignee".into()]);
        assert_eq!(report_fields(&bare, &f, &labels), json!({"labels": null, "assignee": null}));
        let (sel, cost) = selection(&wanted_fields(&["title".into(), "state".into(), "labels".into()]));
        assert_eq!(sel, "id updatedAt trashed archivedAt labelIds title state { name }");
        assert!((cost - 2.7).abs() < 1e-9, "{cost}");
        assert_eq!(parse_ms("2026-12-06T22:33:52.123Z"), Some(1_796_596_432_123));
        assert_eq!(iso_ms(1_796_596_432_123), "2026-12-06T22:33:52.123Z");
        assert!(has_intake_label(&node, "ui", &labels) && !has_intake_label(&node, "tix", &labels));
    }
}
