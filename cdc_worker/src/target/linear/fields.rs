//! From a row's mapped fields to Linear's `IssueCreateInput` /
//! `IssueUpdateInput`: titles and Markdown descriptions as they are,
//! workflow states, labels and assignees by name (resolved to ids through
//! the team's metadata), priorities by number or name, due dates, estimates.

use std::collections::HashMap;

use serde_json::{Map, Value};

use crate::target::policy::bounded;

/// The fields syncbridge maps onto an issue (a definition's field names,
/// compared without case and underscores).
pub const FIELDS: &[&str] = &["title", "description", "state", "priority", "labels", "assignee", "dueDate", "estimate"];

/// The team's workflow states, labels and users, as the adapter knows them.
#[derive(Debug, Clone, Default)]
pub struct Meta {
    /// The team's id (the configuration may name it by its key).
    pub team_uuid: String,
    /// (id, name, type) in the team's order.
    pub states: Vec<(String, String, String)>,
    /// Label name (lower case) → id.
    pub labels: HashMap<String, String>,
    /// Label id → its name as the team spells it.
    pub label_names: HashMap<String, String>,
    /// E-mail, name and display name (lower case) → user id.
    pub users: HashMap<String, String>,
}

/// A field mapped onto the issue, its value not resolved yet.
#[derive(Debug, Clone, PartialEq)]
pub enum Wanted {
    /// Plain input fields.
    Plain(&'static str, Value),
    /// A workflow state by name (or type).
    State(String),
    /// Labels by name (replacing the issue's).
    Labels(Vec<String>),
    /// An assignee (e-mail, name, display name or id), None to unassign.
    Assignee(Option<String>),
}

/// Canonical field name of a definition's field, if Linear has it.
pub fn canonical(field: &str) -> Option<&'static str> {
    let f: String = field.chars().filter(|c| *c != '_').collect::<String>().to_lowercase();
    Some(match f.as_str() {
        "title" | "name" | "summary" => "title",
        "description" | "body" => "description",
        "state" | "status" => "state",
        "priority" => "priority",
        "labels" | "label" => "labels",
        "assignee" => "assignee",
        "duedate" | "due" => "dueDate",
        "estimate" => "estimate",
        _ => return None,
    })
}

/// A value as text (strings as they are, other scalars as their JSON text).
fn text(v: &Value) -> Option<String> {
    match v {
        Value::Null => None,
        Value::String(s) => Some(s.clone()),
        other => Some(other.to_string()),
    }
}

/// Parses a payload into what it asks of the issue. Err: a definite error
/// (a field Linear has not, a value it cannot hold), never sent.
pub fn wanted(payload: &Value, create: bool) -> Result<Vec<Wanted>, String> {
    let mut out = Vec::new();
    let Some(obj) = payload.as_object() else { return Ok(out) };
    for (k, v) in obj {
        if v.as_object().is_some_and(|o| o.contains_key("@ref")) {
            return Err(format!("field {k}: Linear issues take no references to other definitions' items"));
        }
        let Some(name) = canonical(k) else {
            return Err(format!(
                "field {k}: a Linear issue has no such field (map columns to {} with sync.map)",
                FIELDS.join(", ")
            ));
        };
        match name {
            "title" => match text(v) {
                Some(t) if !t.trim().is_empty() => out.push(Wanted::Plain("title", Value::String(t))),
                _ => return Err(format!("field {k} is empty: a Linear issue needs a title")),
            },
            "description" => out.push(Wanted::Plain("description", text(v).map_or(Value::Null, Value::String))),
            // No state (NULL): the team's default on a create, unchanged on an update.
            "state" => {
                if let Some(s) = text(v) {
                    out.push(Wanted::State(s));
                }
            }
            "priority" => {
                out.push(Wanted::Plain("priority", Value::from(priority(v).map_err(|e| format!("field {k}: {e}"))?)))
            }
            "labels" => out.push(Wanted::Labels(labels(v))),
            "assignee" => out.push(Wanted::Assignee(text(v).filter(|s| !s.trim().is_empty()))),
            "dueDate" => out.push(Wanted::Plain("dueDate", due_date(v).map_err(|e| format!("field {k}: {e}"))?)),
            "estimate" => match v {
                Value::Null => out.push(Wanted::Plain("estimate", Value::Null)),
                _ => match v.as_i64().or_else(|| v.as_str().and_then(|s| s.trim().parse().ok())) {
                    Some(n) if i32::try_from(n).is_ok() => out.push(Wanted::Plain("estimate", Value::from(n))),
                    _ => {
                        return Err(format!(
                            "field {k}: an estimate is a whole number, not {}",
                            bounded(&v.to_string(), 100)
                        ))
                    }
                },
            },
            _ => unreachable!("every canonical name is handled"),
        }
    }
    if create && !out.iter().any(|w| matches!(w, Wanted::Plain("title", _))) {
        return Err(
            "a Linear issue needs a title: map a column to title (sync.map(definition, column, 'title'))".into()
        );
    }
    Ok(out)
}

/// 0 none, 1 urgent, 2 high, 3 medium, 4 low; by number or name.
fn priority(v: &Value) -> Result<i64, String> {
    if v.is_null() {
        return Ok(0);
    }
    if let Some(n) = v.as_i64().or_else(|| v.as_str().and_then(|s| s.trim().parse().ok())) {
        return if (0..=4).contains(&n) { Ok(n) } else { Err(format!("a priority is 0 to 4, not {n}")) };
    }
    match v.as_str().map(|s| s.trim().to_lowercase()).as_deref() {
        Some("none" | "no priority" | "") => Ok(0),
        Some("urgent") => Ok(1),
        Some("high") => Ok(2),
        Some("medium") => Ok(3),
        Some("low") => Ok(4),
        _ => Err(format!(
            "a priority is 0 to 4 or none, urgent, high, medium, low; not {}",
            bounded(&v.to_string(), 100)
        )),
    }
}

/// Label names: a JSON array, an array's JSON text (how a `text[]` column
/// travels), or a comma-separated list.
fn labels(v: &Value) -> Vec<String> {
    let items: Vec<Value> = match v {
        Value::Null => Vec::new(),
        Value::Array(a) => a.clone(),
        Value::String(s) => match serde_json::from_str::<Value>(s) {
            Ok(Value::Array(a)) => a,
            _ => s.split(',').map(|x| Value::String(x.to_owned())).collect(),
        },
        other => vec![other.clone()],
    };
    let mut out: Vec<String> = Vec::new();
    for i in items {
        if let Some(t) = text(&i).map(|t| t.trim().to_owned()).filter(|t| !t.is_empty()) {
            if !out.iter().any(|o| o.eq_ignore_ascii_case(&t)) {
                out.push(t);
            }
        }
    }
    out
}

/// A `TimelessDate` from a date or a date and time (its date part).
fn due_date(v: &Value) -> Result<Value, String> {
    let Some(s) = v.as_str() else {
        return if v.is_null() { Ok(Value::Null) } else { Err(format!("a due date is a date, not {v}")) };
    };
    let d = s.get(..10).unwrap_or(s);
    let b = d.as_bytes();
    let ok = b.len() == 10
        && b[4] == b'-'
        && b[7] == b'-'
        && b.iter().enumerate().all(|(i, c)| i == 4 || i == 7 || c.is_ascii_digit());
    if ok {
        Ok(Value::String(d.to_owned()))
    } else {
        Err(format!("a due date is YYYY-MM-DD, not {}", bounded(s, 100)))
    }
}

/// Label names no label of the team has yet.
pub fn missing_labels<'a>(wanted: impl Iterator<Item = &'a Wanted>, meta: &Meta) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for w in wanted {
        if let Wanted::Labels(names) = w {
            for n in names {
                if !meta.labels.contains_key(&n.to_lowercase()) && !out.iter().any(|o| o.eq_ignore_ascii_case(n)) {
                    out.push(n.clone());
                }
            }
        }
    }
    out
}

/// The input object, every name resolved to its id. Err: definite.
pub fn input(wanted: &[Wanted], meta: &Meta) -> Result<Map<String, Value>, String> {
    let mut m = Map::new();
    for w in wanted {
        match w {
            Wanted::Plain(k, v) => {
                m.insert((*k).to_owned(), v.clone());
            }
            Wanted::State(name) => {
                let lower = name.trim().to_lowercase();
                let found = meta
                    .states
                    .iter()
                    .find(|(_, n, _)| n.to_lowercase() == lower)
                    .or_else(|| meta.states.iter().find(|(_, _, t)| *t == lower));
                match found {
                    Some((id, _, _)) => {
                        m.insert("stateId".into(), Value::String(id.clone()));
                    }
                    None => {
                        let names: Vec<&str> = meta.states.iter().map(|(_, n, _)| n.as_str()).collect();
                        return Err(format!(
                            "the team has no workflow state {} (it has {})",
                            bounded(name, 100),
                            names.join(", ")
                        ));
                    }
                }
            }
            Wanted::Labels(names) => {
                let mut ids = Vec::new();
                for n in names {
                    match meta.labels.get(&n.to_lowercase()) {
                        Some(id) => ids.push(Value::String(id.clone())),
                        None => return Err(format!("the team has no label {} yet", bounded(n, 100))),
                    }
                }
                m.insert("labelIds".into(), Value::Array(ids));
            }
            Wanted::Assignee(None) => {
                m.insert("assigneeId".into(), Value::Null);
            }
            Wanted::Assignee(Some(who)) => match meta.users.get(&who.trim().to_lowercase()) {
                Some(id) => {
                    m.insert("assigneeId".into(), Value::String(id.clone()));
                }
                None => return Err(format!("the workspace has no user {} (by e-mail, name or id)", bounded(who, 100))),
            },
        }
    }
    Ok(m)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn meta() -> Meta {
        Meta {
            team_uuid: "t1".into(),
            states: vec![
                ("s1".into(), "Todo".into(), "unstarted".into()),
                ("s2".into(), "Done".into(), "completed".into()),
            ],
            labels: HashMap::from([("bug".into(), "l1".into())]),
            users: HashMap::from([("ada@example.com".into(), "u1".into()), ("ada".into(), "u1".into())]),
            ..Meta::default()
        }
    }

    #[test]
    fn fields_map_to_linear_inputs() {
        let p = json!({"title": 42, "body": "**hi**", "Status": "done", "priority": "High", "labels": "[\"Bug\", \"bug\"]",
                       "assignee": "ADA@example.com", "due_date": "2026-03-11T00:00:00Z", "estimate": 3});
        let w = wanted(&p, true).unwrap();
        let m = input(&w, &meta()).unwrap();
        assert_eq!(
            Value::Object(m),
            json!({"title": "42", "description": "**hi**", "stateId": "s2", "priority": 2, "labelIds": ["l1"],
                   "assigneeId": "u1", "dueDate": "2026-03-11", "estimate": 3})
        );
        // NULLs clear, a state by type, comma lists.
        let w = wanted(&json!({"description": null, "assignee": null, "state": "completed", "labels": "a, b"}), false)
            .unwrap();
        assert_eq!(missing_labels(w.iter(), &meta()), ["a", "b"]);
        let mut m = meta();
        m.labels.insert("a".into(), "la".into());
        m.labels.insert("b".into(), "lb".into());
        assert_eq!(
            Value::Object(input(&w, &m).unwrap()),
            json!({"description": null, "assigneeId": null, "stateId": "s2", "labelIds": ["la", "lb"]})
        );
    }

    #[test]
    fn what_linear_cannot_hold_is_refused_with_a_reason() {
        assert!(wanted(&json!({"colour": "red", "title": "x"}), true).unwrap_err().contains("no such field"));
        assert!(wanted(&json!({"description": "x"}), true).unwrap_err().contains("needs a title"));
        assert!(wanted(&json!({"title": null}), false).unwrap_err().contains("needs a title"));
        assert!(wanted(&json!({"title": "x", "priority": 7}), true).unwrap_err().contains("0 to 4"));
        assert!(wanted(&json!({"title": "x", "dueDate": "soon"}), true).unwrap_err().contains("YYYY-MM-DD"));
        let w = wanted(&json!({"title": "x", "state": "Limbo"}), true).unwrap();
        assert!(input(&w, &meta()).unwrap_err().contains("no workflow state Limbo (it has Todo, Done)"));
        let w = wanted(&json!({"title": "x", "assignee": "bob"}), true).unwrap();
        assert!(input(&w, &meta()).unwrap_err().contains("no user bob"));
    }
}
