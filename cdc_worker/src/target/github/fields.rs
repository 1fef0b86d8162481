//! An issue's fields as a pull reports them: exactly what the push sent for
//! a row the issue still agrees with, so that syncbridge's own writes and
//! unchanged fields compare equal to the ledger.
//!
//! The push writes some fields in a form GitHub does not keep: a NULL title
//! becomes the row's key, a NULL state leaves the issue open, `Closed`
//! becomes `closed`, an array column travels as the text of a JSON array
//! (`"[\"bug\", \"ui\"]"`, PostgreSQL's spelling), a `jsonb` one as an
//! array, a text column as comma-separated names, and GitHub may order
//! labels its own way. Where the issue alone does not say what was sent,
//! the marker keeps it: `<!-- syncbridge:key=d/k sent={"labels": …} -->`
//! (hidden in the rendered issue, `<` and `>` escaped so the comment cannot
//! end early). A pull reports the recorded value while the issue still
//! agrees with it (the same labels in any order, the same state…); once a
//! person changed the field, the issue's value in the recorded value's
//! shape (an array stays an array, the text of an array stays such text).
//! Without a record: the title and the body text, `open` / `closed`, the
//! labels and assignees as the text of a JSON array, the milestone's
//! number. Fields that are not the issue's own come from the body's table,
//! as the push wrote them (each value its JSON).

use serde_json::{json, Map, Value};

use super::{names_of, split_body};

/// Fields whose order GitHub may not keep: recorded when they hold two or more names.
const LISTS: [&str; 2] = ["labels", "assignees"];

/// The text of a JSON array of names as PostgreSQL writes `to_jsonb(text[])::text`
/// (`["a", "b"]`): how an array column travels.
pub fn pg_array_text(names: &[String]) -> String {
    let items: Vec<String> = names.iter().map(|n| Value::String(n.clone()).to_string()).collect();
    format!("[{}]", items.join(", "))
}

/// A value as text, the way the push reads a scalar field.
fn text_of(v: &Value) -> Option<String> {
    match v {
        Value::Null => None,
        Value::String(s) => Some(s.clone()),
        other => Some(other.to_string()),
    }
}

/// The names of a list field as the push reads them (a value it cannot
/// read: none), lower-cased, without the marker label, sorted.
fn name_set(v: &Value, field: &str, marker_label: &str) -> Vec<String> {
    let mut n: Vec<String> = names_of(v, field)
        .unwrap_or_default()
        .into_iter()
        .map(|s| s.to_lowercase())
        .filter(|s| !(field == "labels" && s.eq_ignore_ascii_case(marker_label)))
        .collect();
    n.sort();
    n.dedup();
    n
}

/// A milestone number as the push reads it.
fn milestone_of(v: &Value) -> Option<u64> {
    match v {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

/// The title an issue gets for a row's value: the value, else `{definition} {key}`.
fn title_for(v: &Value, fallback: &str) -> String {
    text_of(v).filter(|t| !t.trim().is_empty()).unwrap_or_else(|| fallback.to_owned())
}

/// An issue as a pull sees it: its own fields, the body's text and table.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct IssueView {
    /// The title.
    pub title: String,
    /// The body's text above the table (the marker and the table left out).
    pub text: String,
    /// The body's table.
    pub table: Map<String, Value>,
    /// `open` or `closed`.
    pub state: String,
    /// GitHub's reason for the state.
    pub state_reason: Option<String>,
    /// Label names in GitHub's order, without the marker label.
    pub labels: Vec<String>,
    /// Assignee logins in GitHub's order.
    pub assignees: Vec<String>,
    /// The milestone's number.
    pub milestone: Option<u64>,
}

impl IssueView {
    /// The view of an issue as GitHub answers it.
    pub fn of(issue: &Value, marker_label: &str) -> Self {
        let names = |k: &str, name: &str| -> Vec<String> {
            issue
                .get(k)
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(|x| x.get(name).and_then(Value::as_str).map(str::to_owned))
                .collect()
        };
        let (text, table) = split_body(issue.get("body").and_then(Value::as_str).unwrap_or(""));
        Self {
            title: issue.get("title").and_then(Value::as_str).unwrap_or("").to_owned(),
            text,
            table,
            state: issue.get("state").and_then(Value::as_str).unwrap_or("open").to_owned(),
            state_reason: issue.get("state_reason").and_then(Value::as_str).map(str::to_owned),
            labels: names("labels", "name").into_iter().filter(|l| !l.eq_ignore_ascii_case(marker_label)).collect(),
            assignees: names("assignees", "login"),
            milestone: issue.get("milestone").and_then(|m| m.get("number")).and_then(Value::as_u64),
        }
    }

    fn set(list: &[String]) -> Vec<String> {
        let mut n: Vec<String> = list.iter().map(|s| s.to_lowercase()).collect();
        n.sort();
        n.dedup();
        n
    }

    /// Whether the issue still is what pushing `v` as `field` made it.
    fn agrees(&self, field: &str, v: &Value, fallback: Option<&str>, marker_label: &str) -> bool {
        match field {
            "title" => match fallback {
                Some(f) => title_for(v, f) == self.title,
                None => text_of(v).is_some_and(|t| t == self.title),
            },
            "body" => text_of(v).unwrap_or_default() == self.text,
            "state" => match v {
                // Not sent: the issue was left open.
                Value::Null => self.state == "open",
                Value::Bool(closed) => (self.state == "closed") == *closed,
                Value::String(s) => s.eq_ignore_ascii_case(&self.state),
                _ => false,
            },
            "state_reason" => match v {
                // Not sent: GitHub's own reason for the state.
                Value::Null => !matches!(self.state_reason.as_deref(), Some("not_planned" | "duplicate")),
                Value::String(s) => self.state_reason.as_deref() == Some(s.as_str()),
                _ => false,
            },
            "labels" => name_set(v, field, marker_label) == Self::set(&self.labels),
            "assignees" => name_set(v, field, marker_label) == Self::set(&self.assignees),
            "assignee" => {
                let want = name_set(v, field, marker_label);
                match want.first() {
                    None => self.assignees.is_empty(),
                    Some(w) => self.assignees.first().is_some_and(|a| a.eq_ignore_ascii_case(w)),
                }
            }
            "milestone" => milestone_of(v) == self.milestone,
            _ => false,
        }
    }

    /// The issue's own `field` in the shape of `like` (what was sent; None:
    /// no record, the default shapes).
    fn shaped(&self, field: &str, like: Option<&Value>, fallback: Option<&str>) -> Value {
        let list = |names: &[String]| match like {
            Some(Value::Array(_)) => json!(names),
            Some(Value::String(s)) if !s.trim_start().starts_with('[') => Value::String(names.join(", ")),
            _ => Value::String(pg_array_text(names)),
        };
        match field {
            "title" if fallback == Some(self.title.as_str()) => Value::Null,
            "title" => Value::String(self.title.clone()),
            "body" if self.text.is_empty() => Value::Null,
            "body" => Value::String(self.text.clone()),
            "state" => match like {
                Some(Value::Bool(_)) => Value::Bool(self.state == "closed"),
                _ => Value::String(self.state.clone()),
            },
            "state_reason" => json!(self.state_reason),
            "labels" => list(&self.labels),
            "assignees" => list(&self.assignees),
            "assignee" => json!(self.assignees.first()),
            "milestone" => match (self.milestone, like) {
                (Some(m), Some(Value::String(_))) => Value::String(m.to_string()),
                (m, _) => json!(m),
            },
            _ => Value::Null,
        }
    }

    /// The issue's own `field` as a pull reports it: the recorded value
    /// while the issue agrees with it, else the issue's value.
    pub fn own(&self, field: &str, sent: Option<&Value>, fallback: Option<&str>, marker_label: &str) -> Value {
        match sent {
            Some(v) if self.agrees(field, v, fallback, marker_label) => v.clone(),
            other => self.shaped(field, other, fallback),
        }
    }
}

/// The view of an issue written from a row's own field `v` alone (no record).
fn written(field: &str, v: &Value, fallback: &str, marker_label: &str) -> IssueView {
    let mut w = IssueView { state: "open".into(), ..IssueView::default() };
    let names = |f: &str| -> Vec<String> {
        names_of(v, f)
            .unwrap_or_default()
            .into_iter()
            .filter(|n| !(f == "labels" && n.eq_ignore_ascii_case(marker_label)))
            .collect()
    };
    match field {
        "title" => w.title = title_for(v, fallback),
        "body" => w.text = text_of(v).unwrap_or_default(),
        "state" => {
            w.state = match v {
                Value::Bool(true) => "closed".into(),
                Value::String(s) if s.eq_ignore_ascii_case("closed") => "closed".into(),
                _ => "open".into(),
            }
        }
        "state_reason" => w.state_reason = v.as_str().map(str::to_owned),
        "labels" => w.labels = names("labels"),
        "assignees" | "assignee" => w.assignees = names(field),
        "milestone" => w.milestone = milestone_of(v),
        _ => {}
    }
    w
}

/// What the marker records of a row's own fields in `payload`: each value a
/// pull could not report as it is from the issue alone (see the module's doc).
pub fn sent_record(payload: &Map<String, Value>, fallback: &str, marker_label: &str) -> Map<String, Value> {
    let mut out = Map::new();
    for (field, v) in payload {
        if !super::ISSUE_FIELDS.contains(&field.as_str()) {
            continue;
        }
        let w = written(field, v, fallback, marker_label);
        let plain = w.shaped(field, None, Some(fallback));
        let order_matters =
            LISTS.contains(&field.as_str()) && names_of(v, field).map(|n| n.len() >= 2).unwrap_or(false);
        // (a null a pull reports as null needs no record, except the reason:
        // GitHub gives one of its own)
        let needs = plain != *v || order_matters || (field == "state_reason" && v.is_null());
        if needs {
            out.insert(field.clone(), v.clone());
        }
    }
    out
}

/// FNV-1a, 64 bits: a stable digest (not a secret).
pub fn fnv64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3))
}

/// An issue's version, the eTag syncbridge keeps for it: its `updated_at`
/// (whole seconds) and a digest of what syncbridge reads of it (title,
/// body, state and reason, labels, assignees, milestone), so that a
/// person's edit in the same second as syncbridge's own write is not taken
/// for that write coming back. The write's answer and the listing give the
/// same version for the same issue.
pub fn version(issue: &Value) -> Option<String> {
    let updated = issue.get("updated_at")?.as_str()?;
    let names = |k: &str, name: &str| -> Vec<String> {
        let mut n: Vec<String> = issue
            .get(k)
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|x| x.get(name).and_then(Value::as_str).map(str::to_lowercase))
            .collect();
        n.sort();
        n
    };
    let digest = json!([
        issue.get("title"),
        issue.get("body"),
        issue.get("state"),
        issue.get("state_reason"),
        names("labels", "name"),
        names("assignees", "login"),
        issue.get("milestone").and_then(|m| m.get("number")),
    ]);
    Some(format!("{updated}#{:016x}", fnv64(digest.to_string().as_bytes())))
}

#[cfg(test)]
mod tests {
    use super::super::{compose_body, marker_in, sent_in, IssueWrite, MARKER_LABEL};
    use super::*;

    /// The issue GitHub holds after a create from `payload` (labels in
    /// `order`: GitHub's, when it sorts them).
    fn issue_of(w: &IssueWrite, sort_labels: bool) -> Value {
        let mut labels = w.labels.clone();
        if sort_labels {
            labels.sort();
        }
        json!({
            "title": w.title, "body": w.body, "state": w.state.clone().unwrap_or_else(|| "open".into()),
            "state_reason": if w.state.as_deref() == Some("closed") { json!(w.state_reason.clone().unwrap_or_else(|| "completed".into())) } else { Value::Null },
            "labels": labels.iter().map(|l| json!({"name": l})).collect::<Vec<_>>(),
            "assignees": w.assignees.clone().unwrap_or_default().iter().map(|a| json!({"login": a})).collect::<Vec<_>>(),
            "milestone": w.milestone.as_ref().filter(|m| !m.is_null()).map(|m| json!({"number": m})),
            "updated_at": "2026-01-02T03:04:05Z"
        })
    }

    /// Every field of `payload` as a pull reports it from the issue.
    fn reported(payload: &Value, issue: &Value) -> Map<String, Value> {
        let body = issue["body"].as_str().unwrap();
        let sent = sent_in(body);
        let view = IssueView::of(issue, MARKER_LABEL);
        payload
            .as_object()
            .unwrap()
            .keys()
            .map(|f| {
                let v = if super::super::ISSUE_FIELDS.contains(&f.as_str()) {
                    view.own(f, sent.get(f), Some("t 1"), MARKER_LABEL)
                } else {
                    view.table.get(f).cloned().unwrap_or(Value::Null)
                };
                (f.clone(), v)
            })
            .collect()
    }

    #[test]
    fn what_the_push_sent_comes_back_as_it_was_sent() {
        for payload in [
            json!({"title": "Fix", "body": "Steps", "state": "open", "labels": "[\"bug\", \"auth\"]", "assignee": "octocat", "milestone": 1, "severity": 3}),
            json!({"title": null, "body": null, "state": null, "labels": null, "assignee": null, "milestone": null, "note": null}),
            json!({"title": "", "body": "", "state": "Closed", "labels": "[]", "state_reason": null}),
            json!({"title": 7, "state": true, "labels": ["b", "a"], "assignees": "[\"hubot\", \"mona\"]", "milestone": "2"}),
            json!({"title": "x", "state": "CLOSED", "state_reason": "not_planned", "labels": "ui, bug", "tags": ["x"]}),
            json!({"title": "Émilie ✓ 東京", "body": "a\n\n\nb | c", "labels": "[\"a\\\"q\", \"new\\nline\"]"}),
        ] {
            let w = IssueWrite::from_payload("t", "1", &payload, MARKER_LABEL).unwrap();
            for sorted in [false, true] {
                let issue = issue_of(&w, sorted);
                assert_eq!(Value::Object(reported(&payload, &issue)), payload, "sorted labels: {sorted}; {}", w.body);
            }
        }
    }

    #[test]
    fn plain_values_need_no_record_and_the_marker_stays_short() {
        let p = json!({"title": "Fix", "body": "Steps", "state": "open", "labels": "[\"bug\"]", "milestone": 1});
        let w = IssueWrite::from_payload("t", "1", &p, MARKER_LABEL).unwrap();
        assert!(w.body.ends_with("<!-- syncbridge:key=t/1 -->"), "{}", w.body);
        // Two labels: their order is recorded; `<` and `>` cannot end the comment.
        let p = json!({"labels": "[\"a-->b\", \"<c>\"]"});
        let w = IssueWrite::from_payload("t", "1", &p, MARKER_LABEL).unwrap();
        assert_eq!(w.body.matches("-->").count(), 1, "{}", w.body);
        assert_eq!(marker_in(&w.body), Some("t/1"));
        assert_eq!(sent_in(&w.body).get("labels"), Some(&p["labels"]));
        assert_eq!(compose_body("t", "1", "", &Map::new(), &Map::new()), "<!-- syncbridge:key=t/1 -->");
    }

    #[test]
    fn a_persons_change_comes_back_in_the_shape_the_push_sent() {
        let fields = |payload: Value, edit: &dyn Fn(&mut Value)| {
            let w = IssueWrite::from_payload("t", "1", &payload, MARKER_LABEL).unwrap();
            let mut issue = issue_of(&w, false);
            edit(&mut issue);
            reported(&payload, &issue)
        };
        let labels = |i: &mut Value| i["labels"] = json!([{"name": "ui"}, {"name": "syncbridge"}, {"name": "new"}]);
        assert_eq!(fields(json!({"labels": "[\"bug\", \"auth\"]"}), &labels)["labels"], "[\"ui\", \"new\"]");
        assert_eq!(fields(json!({"labels": ["bug", "auth"]}), &labels)["labels"], json!(["ui", "new"]));
        assert_eq!(fields(json!({"labels": "bug, auth"}), &labels)["labels"], "ui, new");
        assert_eq!(fields(json!({"labels": null}), &labels)["labels"], "[\"ui\", \"new\"]");
        let close = |i: &mut Value| {
            i["state"] = json!("closed");
            i["state_reason"] = json!("not_planned");
        };
        let f = fields(json!({"state": "Open", "state_reason": null}), &close);
        assert_eq!((f["state"].clone(), f["state_reason"].clone()), (json!("closed"), json!("not_planned")));
        assert_eq!(fields(json!({"state": false}), &close)["state"], true);
        assert_eq!(fields(json!({"state": null}), &close)["state"], "closed");
        let retitle = |i: &mut Value| i["title"] = json!("t 1 (edited)");
        assert_eq!(fields(json!({"title": null}), &retitle)["title"], "t 1 (edited)");
        let untitle = |i: &mut Value| i["title"] = json!("t 1");
        assert_eq!(fields(json!({"title": "x"}), &untitle)["title"], Value::Null, "the key's title is no title");
        let body = |i: &mut Value| {
            let b = i["body"].as_str().unwrap().replace("old", "new");
            i["body"] = json!(b);
        };
        assert_eq!(fields(json!({"body": "old text", "n": 1}), &body)["body"], "new text");
        let table = |i: &mut Value| {
            let b = i["body"].as_str().unwrap().replace("| n | 1 |", "| n | 2 |");
            i["body"] = json!(b);
        };
        assert_eq!(fields(json!({"body": "x", "n": 1}), &table)["n"], 2, "a cell of the table edited");
        let milestone = |i: &mut Value| i["milestone"] = json!({"number": 3});
        assert_eq!(fields(json!({"milestone": "1"}), &milestone)["milestone"], "3");
        assert_eq!(fields(json!({"milestone": 1}), &milestone)["milestone"], 3);
    }

    #[test]
    fn versions_move_with_what_syncbridge_reads_and_with_updated_at() {
        let i = json!({"updated_at": "2026-01-02T03:04:05Z", "title": "a", "body": "b", "state": "open",
                       "labels": [{"name": "x"}, {"name": "Y"}], "assignees": [], "milestone": null, "comments": 1});
        let v = version(&i).unwrap();
        assert!(v.starts_with("2026-01-02T03:04:05Z#"), "{v}");
        let mut same = i.clone();
        same["comments"] = json!(2);
        same["labels"] = json!([{"name": "y"}, {"name": "x", "color": "ededed"}]);
        assert_eq!(version(&same).unwrap(), v, "what syncbridge does not read, and the labels' order");
        let mut edited = i.clone();
        edited["title"] = json!("a2");
        assert_ne!(version(&edited).unwrap(), v, "an edit in the same second");
        let mut later = i.clone();
        later["updated_at"] = json!("2026-01-02T03:04:06Z");
        assert_ne!(version(&later).unwrap(), v);
        assert_eq!(version(&json!({"title": "a"})), None);
        assert_eq!(pg_array_text(&["a\"b".into(), "é".into()]), "[\"a\\\"b\", \"é\"]");
        assert_eq!(pg_array_text(&[]), "[]");
    }
}
