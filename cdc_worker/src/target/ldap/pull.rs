//! Reading a container's entries back (two-way sync), one page per call.
//!
//! - The search: one level under the container of the list's DN template,
//!   `(modifyTimestamp>=T)` (a fresh read: `(objectClass=*)`, every entry,
//!   so that the extension finds remote deletes), asking for the mapped
//!   attributes, `entryUUID` (the item's id), `entryCSN` (its eTag, which
//!   the writes report too: syncbridge's own writes are echoes) and
//!   `modifyTimestamp` (`modified`).
//! - The link ([`Cursor`], JSON): the newest `modifyTimestamp` seen and the
//!   `(entryUUID, entryCSN)` pairs read at that second. modifyTimestamp has
//!   second precision, so the next read starts at that second (inclusive)
//!   and drops what it read already; a change made in the same second has a
//!   new entryCSN and is kept.
//! - Values: one value as text, several as the JSON text of an array (as an
//!   array column travels), none as null.
//! - A read is one page (the server's size limit bounds it: a search that
//!   exceeds it is an error naming the limit).

use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use super::{dn, LdapTarget};
use crate::target::{ErrorClass, PullError, PullPage, PullRequest};

/// `(entryUUID, entryCSN)` pairs the link keeps at most.
pub const SEEN_CAP: usize = 500;

/// Where a container's read stands: the link handed to `sync.pull_page`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cursor {
    /// Format version.
    pub v: u8,
    /// The newest modifyTimestamp seen (`YYYYMMDDhhmmssZ`); None: a full read next.
    #[serde(default)]
    pub max: Option<String>,
    /// The `(entryUUID, entryCSN)` pairs read at `max`.
    #[serde(default)]
    pub seen: Vec<(String, String)>,
}

/// Whether `t` is a GeneralizedTime as slapd writes modifyTimestamp.
fn is_time(t: &str) -> bool {
    t.len() == 15 && t.ends_with('Z') && t[..14].bytes().all(|b| b.is_ascii_digit())
}

/// `YYYYMMDDhhmmssZ` → `YYYY-MM-DDThh:mm:ssZ`.
pub fn iso(t: &str) -> Option<String> {
    is_time(t).then(|| format!("{}-{}-{}T{}:{}:{}Z", &t[0..4], &t[4..6], &t[6..8], &t[8..10], &t[10..12], &t[12..14]))
}

impl Cursor {
    /// A stored link, or why it is not one of ours.
    pub fn parse(link: &str) -> Result<Self, String> {
        let c: Cursor =
            serde_json::from_str(link).map_err(|e| format!("the stored link is not an LDAP cursor ({e})"))?;
        if c.v != 1 || c.max.as_deref().is_some_and(|m| !is_time(m)) {
            return Err("the stored link is not an LDAP cursor of version 1".into());
        }
        Ok(c)
    }

    /// Takes an entry's (entryUUID, entryCSN, modifyTimestamp) in.
    fn saw(&mut self, uuid: &str, csn: &str, ts: &str) {
        match self.max.as_deref() {
            Some(m) if ts < m => {}
            Some(m) if ts == m => {
                if self.seen.len() < SEEN_CAP {
                    self.seen.push((uuid.to_owned(), csn.to_owned()));
                }
            }
            _ => {
                self.max = Some(ts.to_owned());
                self.seen = vec![(uuid.to_owned(), csn.to_owned())];
            }
        }
    }
}

/// An attribute's values as a pulled field: null, the value, or the JSON
/// text of an array (`["a", "b"]`, as PostgreSQL writes an array's JSON).
pub fn field_value(values: &[String]) -> Value {
    match values {
        [] => Value::Null,
        [one] => Value::String(one.clone()),
        many => {
            let parts: Vec<String> = many.iter().map(|v| Value::String(v.clone()).to_string()).collect();
            Value::String(format!("[{}]", parts.join(", ")))
        }
    }
}

impl LdapTarget {
    pub(super) async fn pull_page(&self, req: &PullRequest) -> Result<PullPage, PullError> {
        let cursor = match &req.link {
            None => Cursor { v: 1, ..Cursor::default() },
            Some(l) => Cursor::parse(l).map_err(PullError::LinkRefused)?,
        };
        let failed = |class: ErrorClass, message: String| PullError::Failed { class, message, retry_after: None };
        let t = dn::Template::parse(&req.container_id).map_err(|m| failed(ErrorClass::Definite, m))?;
        let base = t.parent(&self.settings.base_dn);
        let filter = match &cursor.max {
            None => "(objectClass=*)".to_owned(),
            Some(m) => format!("(modifyTimestamp>={m})"),
        };
        let fields: Vec<&str> = req.fields.iter().map(String::as_str).filter(|f| *f != "SyncKey").collect();
        let mut attrs = fields.clone();
        attrs.extend(["entryUUID", "entryCSN", "modifyTimestamp"]);
        let entries = self
            .search(&base, ldap3::Scope::OneLevel, &filter, &attrs)
            .await
            .map_err(|f| PullError::Failed { class: f.class, message: f.message, retry_after: f.retry_after })?;
        let mut next = cursor.clone();
        let mut items = Vec::new();
        for e in entries {
            let (Some(uuid), Some(csn), Some(ts)) =
                (e.first("entryUUID"), e.first("entryCSN"), e.first("modifyTimestamp"))
            else {
                continue;
            };
            let (uuid, csn, ts) = (uuid.to_owned(), csn.to_owned(), ts.to_owned());
            next.saw(&uuid, &csn, &ts);
            if cursor.seen.iter().any(|(u, c)| *u == uuid && *c == csn) {
                continue;
            }
            let mut f = Map::new();
            for name in &fields {
                let vals = e.attrs.get(&name.to_ascii_lowercase()).cloned().unwrap_or_default();
                f.insert((*name).to_owned(), field_value(&vals));
            }
            items.push(json!({"id": uuid, "etag": csn, "deleted": false, "modified": iso(&ts), "fields": f}));
        }
        Ok(PullPage { items, link: serde_json::to_string(&next).unwrap_or_default(), last: true })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cursor_keeps_the_newest_second_and_what_was_read_in_it() {
        let mut c = Cursor { v: 1, ..Cursor::default() };
        c.saw("a", "csn1", "20260101000001Z");
        c.saw("b", "csn2", "20260101000002Z");
        c.saw("c", "csn3", "20260101000002Z");
        c.saw("d", "csn0", "20260101000000Z");
        assert_eq!(c.max.as_deref(), Some("20260101000002Z"));
        assert_eq!(c.seen, [("b".to_owned(), "csn2".to_owned()), ("c".to_owned(), "csn3".to_owned())]);
        let link = serde_json::to_string(&c).unwrap();
        assert_eq!(Cursor::parse(&link).unwrap(), c);
        assert!(Cursor::parse("{\"v\": 1, \"max\": \"yesterday\"}").is_err());
        assert!(Cursor::parse("https://elsewhere").is_err());
        assert_eq!(iso("20260307120509Z").as_deref(), Some("2026-03-07T12:05:09Z"));
    }

    #[test]
    fn values_read_back_as_the_push_sends_them() {
        assert_eq!(field_value(&[]), Value::Null);
        assert_eq!(field_value(&["a".into()]), json!("a"));
        assert_eq!(field_value(&["a".into(), "b\"".into()]), json!("[\"a\", \"b\\\"\"]"));
    }
}
