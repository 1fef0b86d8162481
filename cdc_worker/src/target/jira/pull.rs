//! Reading a definition's issues back (two-way sync): enhanced search
//! (`POST /rest/api/3/search/jql`), one page per call.
//!
//! - The JQL is bounded by the project and the list's label (every issue
//!   syncbridge writes carries it, see [`super::list_label`]; an issue a
//!   person creates joins the list by carrying it too):
//!   `project = "KEY" AND labels = "<list label>" [AND updated >= "<yyyy-MM-dd
//!   HH:mm>"] ORDER BY updated ASC, id ASC`, `fields` naming the mapped
//!   fields and `updated`, `properties=syncbridge`, at most [`MAX_PAGE`]
//!   issues a page, paged by `nextPageToken` (absent on the last page).
//! - A fresh read (no link) has no `updated` clause: it enumerates every
//!   issue of the list, closed ones too, so that the extension can take the
//!   issues its ledger knows and the read did not see for deleted (search
//!   never shows a deleted issue; a full read is the only way the API tells).
//! - The link is a [`Cursor`] as JSON: the newest `updated` handed over,
//!   and the read in progress (its lower bound and next page token). The
//!   next read starts a minute before the minute of that newest `updated`
//!   (JQL dates have minute precision, are read in the user's time zone —
//!   the offset Jira wrote the `updated` in — and search shows a change
//!   after a delay): the overlap reads again what was read, and the issues
//!   handed over in it (`id` and `updated`, kept in the cursor) are left
//!   out, so a change is handed over once, and one made in the same second
//!   or minute as the cursor is never missed.
//! - An item is the issue's id, its `updated` as the eTag (the writes
//!   report the same value, so syncbridge's own writes come back as
//!   echoes), `updated` as `modified`, and the mapped fields in the form the
//!   push sends them: `description` as text (from ADF), `labels` as the JSON
//!   text of an array without syncbridge's labels, `status` / `priority` /
//!   `issuetype` by name, `assignee` by account id, a summary equal to the
//!   row's key as null (a NULL summary is written as the key), and
//!   `SyncKey` from the `syncbridge` property. Issues whose property names
//!   another definition or list are not this read's.
//! - One request a page (a read, 1 of the budget). A refused page token
//!   (tokens expire) starts a full read again; any other refusal is
//!   definite with Jira's message.

use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use super::{adf, list_label, JiraTarget, LABEL_PREFIX, PROPERTY_KEY};
use crate::target::{ErrorClass, Health, PullError, PullPage, PullRequest};

/// Most issues a page is asked for (Jira gives at most 100 with fields).
pub const MAX_PAGE: u32 = 100;
/// How far before the minute of the newest `updated` a read starts.
pub const OVERLAP_MS: i64 = 60_000;
/// Most (id, updated) pairs the cursor keeps for de-duplication (a link
/// holds at most 8,000 characters); beyond, the oldest are read again.
const MAX_SEEN: usize = 500;

/// Where a list's pull stands: the link syncbridge stores and hands back.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Cursor {
    /// The newest `updated` handed over, as Jira wrote it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<String>,
    /// The read in progress: its JQL lower bound (None: a full read).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    /// The read in progress: the next page's token (None: the next call
    /// starts a read).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub page: Option<String>,
    /// Issues handed over within the overlap: `id.ms` (`updated` in epoch
    /// milliseconds minus `base`), comma-separated.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub seen: String,
    /// What the `seen` times count from (epoch milliseconds).
    #[serde(default)]
    pub base: i64,
}

impl Cursor {
    fn seen_pairs(&self) -> Vec<(String, i64)> {
        self.seen
            .split(',')
            .filter_map(|e| e.split_once('.'))
            .filter_map(|(id, ms)| Some((id.to_owned(), ms.parse::<i64>().ok()? + self.base)))
            .collect()
    }

    /// Keeps the pairs within the overlap of the next read (the newest
    /// [`MAX_SEEN`] at most).
    fn set_seen(&mut self, mut pairs: Vec<(String, i64)>, bound: i64) {
        pairs.retain(|(_, ms)| *ms >= bound);
        pairs.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        pairs.dedup();
        pairs.truncate(MAX_SEEN);
        self.base = bound;
        self.seen = pairs.iter().map(|(id, ms)| format!("{id}.{}", ms - bound)).collect::<Vec<_>>().join(",");
    }
}

/// Days since 1970-01-01 of a civil date (proleptic Gregorian).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The civil date of a day count since 1970-01-01.
fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (if m <= 2 { yoe + era * 400 + 1 } else { yoe + era * 400 }, m, d)
}

/// A Jira date-time (`2016-09-28T23:08:32.097+1000`; `Z`, `+10:00` and no
/// fraction accepted too): epoch milliseconds and the offset in minutes.
pub fn parse_time(s: &str) -> Option<(i64, i32)> {
    let b = s.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || b[10] != b'T' || b[13] != b':' || b[16] != b':' {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let t = s.get(r)?;
        t.bytes().all(|c| c.is_ascii_digit()).then(|| t.parse().ok())?
    };
    let (y, mo, d, h, mi, sec) = (num(0..4)?, num(5..7)?, num(8..10)?, num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || sec > 60 {
        return None;
    }
    let mut rest = &s[19..];
    let mut ms = 0;
    if let Some(frac) = rest.strip_prefix('.') {
        let digits = frac.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return None;
        }
        let f = &frac[..digits];
        ms = format!("{:0<3}", &f[..digits.min(3)]).parse::<i64>().ok()?;
        rest = &frac[digits..];
    }
    let offset = match rest {
        "Z" => 0,
        _ => {
            let sign = match rest.as_bytes().first()? {
                b'+' => 1,
                b'-' => -1,
                _ => return None,
            };
            let hm = rest[1..].replace(':', "");
            if hm.len() != 4 || !hm.bytes().all(|c| c.is_ascii_digit()) {
                return None;
            }
            let (oh, om): (i32, i32) = (hm[..2].parse().ok()?, hm[2..].parse().ok()?);
            sign * (oh * 60 + om)
        }
    };
    let local = (days_from_civil(y, mo, d) * 86_400 + h * 3600 + mi * 60 + sec) * 1000 + ms;
    Some((local - i64::from(offset) * 60_000, offset))
}

/// The JQL date literal (`yyyy-MM-dd HH:mm`, the user's wall clock at
/// `offset_min`) of the minute before the minute holding `ms`.
pub fn jql_bound(ms: i64, offset_min: i32) -> String {
    let local = ms + i64::from(offset_min) * 60_000;
    let minute = local.div_euclid(60_000) * 60_000 - OVERLAP_MS;
    let (days, rem) = (minute.div_euclid(86_400_000), minute.rem_euclid(86_400_000) / 60_000);
    let (y, m, d) = civil_from_days(days);
    format!("{y:04}-{m:02}-{d:02} {:02}:{:02}", rem / 60, rem % 60)
}

/// The epoch milliseconds the lower bound of the read after `max` stands
/// for (what pairs the cursor must keep).
fn bound_ms(max_ms: i64, offset_min: i32) -> i64 {
    let off = i64::from(offset_min) * 60_000;
    (max_ms + off).div_euclid(60_000) * 60_000 - OVERLAP_MS - off
}

/// A Jira date-time as RFC 3339 (`+1000` → `+10:00`), for `modified`.
fn rfc3339(s: &str) -> String {
    let n = s.len();
    let b = s.as_bytes();
    if n > 5 && (b[n - 5] == b'+' || b[n - 5] == b'-') && b[n - 4..].iter().all(u8::is_ascii_digit) {
        format!("{}:{}", &s[..n - 2], &s[n - 2..])
    } else {
        s.to_owned()
    }
}

/// Labels as the push receives an array column: the JSON text of the
/// array, as PostgreSQL writes it (`["a", "b"]`).
pub fn labels_text(labels: &[String]) -> String {
    let items: Vec<String> = labels.iter().map(|l| Value::String(l.clone()).to_string()).collect();
    format!("[{}]", items.join(", "))
}

/// Whether `label` is one syncbridge puts on issues (a row's marker, or
/// the list's label `list`).
fn ours(label: &str, list: &str) -> bool {
    label == list
        || (label.len() == LABEL_PREFIX.len() + 32
            && label.starts_with(LABEL_PREFIX)
            && label[LABEL_PREFIX.len()..].bytes().all(|c| c.is_ascii_hexdigit()))
}

/// One mapped field of an issue in the form the push sends it.
fn field_value(name: &str, fields: &Map<String, Value>, list: &str, key: Option<&str>) -> Value {
    let v = fields.get(name).cloned().unwrap_or(Value::Null);
    match name {
        "summary" => match (&v, key) {
            (Value::String(s), Some(k)) if s == k => Value::Null,
            _ => v,
        },
        "description" | "environment" => match &v {
            Value::Null => Value::Null,
            Value::String(_) => v,
            doc => Value::String(adf::to_text(doc)),
        },
        "labels" => {
            let user: Vec<String> = v
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .filter(|l| !ours(l, list))
                .map(str::to_owned)
                .collect();
            Value::String(labels_text(&user))
        }
        "status" | "priority" | "issuetype" | "resolution" => match &v {
            Value::Object(o) => o.get("name").cloned().unwrap_or(Value::Null),
            other => other.clone(),
        },
        "assignee" | "reporter" => match &v {
            Value::Object(o) => o.get("accountId").cloned().unwrap_or(Value::Null),
            other => other.clone(),
        },
        _ => v,
    }
}

/// What one issue of a search page is for this read.
#[derive(Debug, PartialEq)]
enum Seen {
    /// Another definition's or list's issue.
    Foreign,
    /// This read's, with its id and `updated` in epoch ms, and its item.
    Item { id: String, ms: i64, updated: String, item: Value },
}

/// One issue of a search page as an item of `req` (see the module's doc).
fn to_item(issue: &Value, req: &PullRequest, list: &str) -> Result<Seen, String> {
    let id = match issue.get("id") {
        Some(Value::String(s)) if !s.is_empty() => s.clone(),
        Some(Value::Number(n)) if n.is_u64() => n.to_string(),
        _ => return Err("an issue of the search page has no id".to_owned()),
    };
    let empty = Map::new();
    let fields = issue.get("fields").and_then(Value::as_object).unwrap_or(&empty);
    let updated = fields.get("updated").and_then(Value::as_str).unwrap_or("").to_owned();
    let ms = parse_time(&updated).ok_or_else(|| format!("issue {id}: its updated is not a date-time"))?.0;
    let prop = issue.pointer(&format!("/properties/{PROPERTY_KEY}")).filter(|p| p.is_object());
    let text = |k: &str| prop.and_then(|p| p.get(k)).and_then(Value::as_str);
    if prop.is_some() && (text("definition") != Some(&req.definition) || text("container") != Some(&req.container_id)) {
        return Ok(Seen::Foreign);
    }
    let key = text("key");
    let mut out = Map::new();
    for name in &req.fields {
        if name == "SyncKey" {
            if let Some(k) = key {
                out.insert(name.clone(), Value::String(k.to_owned()));
            }
            continue;
        }
        out.insert(name.clone(), field_value(name, fields, list, key));
    }
    let item = json!({"id": id, "etag": updated, "deleted": false, "modified": rfc3339(&updated), "fields": out});
    Ok(Seen::Item { id, ms, updated, item })
}

impl JiraTarget {
    /// One page of a list's issues changed since the cursor (see the
    /// module's doc).
    pub(super) async fn pull_page(&self, req: &PullRequest) -> Result<PullPage, PullError> {
        let mut cursor: Cursor = match &req.link {
            None => Cursor::default(),
            Some(l) => serde_json::from_str(l)
                .map_err(|_| PullError::LinkRefused("the stored link is not a Jira pull cursor".into()))?,
        };
        if cursor.page.is_none() {
            // A read begins: from the overlap before the newest change.
            cursor.from = if req.link.is_none() {
                None
            } else {
                cursor.max.as_deref().and_then(parse_time).map(|(ms, off)| jql_bound(ms, off))
            };
        }
        let list = list_label(&req.definition, &req.container_id);
        let quote = |s: &str| format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""));
        let mut jql = format!("project = {} AND labels = {}", quote(&self.project_key), quote(&list));
        if let Some(from) = &cursor.from {
            jql.push_str(&format!(" AND updated >= \"{from}\""));
        }
        jql.push_str(" ORDER BY updated ASC, id ASC");
        let mut fields: Vec<String> = req.fields.iter().filter(|f| *f != "SyncKey").cloned().collect();
        fields.push("updated".into());
        fields.sort();
        fields.dedup();
        let mut body = json!({
            "jql": jql, "maxResults": req.page_size.clamp(1, MAX_PAGE), "fields": fields, "properties": [PROPERTY_KEY],
        });
        if let Some(t) = &cursor.page {
            body["nextPageToken"] = Value::String(t.clone());
        }
        let (status, text) = self
            .client
            .call(reqwest::Method::POST, "/rest/api/3/search/jql", Some(&body), Self::ONE, true)
            .await
            .map_err(|f| PullError::Failed { class: f.class, message: f.message, retry_after: f.retry_after })?;
        let failed = |class: ErrorClass, message: String| PullError::Failed { class, message, retry_after: None };
        match status {
            200 => {}
            400 if cursor.page.is_some() && text.contains("token") => {
                return Err(PullError::Resync(format!(
                    "Jira refused the page token{}: the list is read again in full",
                    self.client.api_error_text(&text)
                )))
            }
            s if s >= 500 => {
                return Err(failed(
                    ErrorClass::Transient,
                    format!("Jira answered HTTP {s} to the search{}", self.client.api_error_text(&text)),
                ))
            }
            s => {
                return Err(failed(
                    ErrorClass::Definite,
                    format!("Jira refused the search (HTTP {s}){}", self.client.api_error_text(&text)),
                ))
            }
        }
        let page: Value = serde_json::from_str(&text)
            .map_err(|e| failed(ErrorClass::Transient, format!("the search answer is not JSON ({e})")))?;
        let issues = page
            .get("issues")
            .and_then(Value::as_array)
            .ok_or_else(|| failed(ErrorClass::Definite, "the search answer has no issues array".into()))?;
        let mut seen = cursor.seen_pairs();
        let mut max = cursor.max.as_deref().and_then(parse_time).map(|(ms, _)| ms);
        let mut items = Vec::new();
        for issue in issues {
            match to_item(issue, req, &list).map_err(|m| failed(ErrorClass::Definite, m))? {
                Seen::Foreign => {}
                Seen::Item { id, ms, updated, item } => {
                    if max.is_none_or(|m| ms > m) {
                        max = Some(ms);
                        cursor.max = Some(updated);
                    }
                    if seen.iter().any(|(i, t)| *i == id && *t == ms) {
                        continue;
                    }
                    seen.push((id, ms));
                    items.push(item);
                }
            }
        }
        let token = page.get("nextPageToken").and_then(Value::as_str).filter(|t| !t.is_empty()).map(str::to_owned);
        let last = token.is_none() || page.get("isLast").and_then(Value::as_bool) == Some(true);
        let offset = cursor.max.as_deref().and_then(parse_time).map_or(0, |(_, o)| o);
        let bound = max.map_or(0, |m| bound_ms(m, offset));
        cursor.set_seen(seen, bound);
        cursor.page = if last { None } else { token };
        if last {
            cursor.from = None;
        }
        let link = serde_json::to_string(&cursor).unwrap_or_default();
        self.client.set_health(Health::Ok, "");
        Ok(PullPage { items, link, last })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jira_times_parse_and_bound_the_next_read() {
        assert_eq!(parse_time("1970-01-01T00:00:00.000+0000"), Some((0, 0)));
        assert_eq!(parse_time("2026-03-01T14:05:32.097+1000"), Some((1_772_337_932_097, 600)));
        assert_eq!(parse_time("2026-03-01T04:05:32.097Z"), Some((1_772_337_932_097, 0)));
        assert_eq!(parse_time("2026-03-01T04:05:32+00:00"), Some((1_772_337_932_000, 0)));
        assert_eq!(parse_time("2026-02-28T23:05:32.5-0500"), Some((1_772_337_932_500, -300)));
        for bad in ["", "2026-03-01", "2026-13-01T00:00:00Z", "2026-03-01T00:00:00", "2026-03-01T00:00:00+10"] {
            assert_eq!(parse_time(bad), None, "{bad}");
        }
        // The minute before the minute of the change, on the user's clock.
        assert_eq!(jql_bound(1_772_337_932_097, 600), "2026-03-01 14:04");
        assert_eq!(jql_bound(1_772_337_932_097, 0), "2026-03-01 04:04");
        assert_eq!(jql_bound(1_772_323_200_000, 0), "2026-02-28 23:59", "across midnight and a month");
        assert_eq!(bound_ms(1_772_337_932_097, 600), 1_772_337_840_000);
        assert_eq!(rfc3339("2026-03-01T14:05:32.097+1000"), "2026-03-01T14:05:32.097+10:00");
        assert_eq!(rfc3339("2026-03-01T14:05:32Z"), "2026-03-01T14:05:32Z");
        for d in [-800_000, -1, 0, 1, 59, 20_000, 2_000_000] {
            let (y, m, dd) = civil_from_days(d);
            assert_eq!(days_from_civil(y, m, dd), d);
        }
    }

    #[test]
    fn the_cursor_keeps_the_overlap_only_and_stays_short() {
        let mut c = Cursor::default();
        let pairs: Vec<(String, i64)> = (0..2000).map(|n| (format!("{}", 10_000 + n), 1_000_000 + n * 100)).collect();
        c.set_seen(pairs, 1_100_000);
        let kept = c.seen_pairs();
        assert_eq!(kept.len(), MAX_SEEN, "the newest");
        assert!(kept.iter().all(|(_, ms)| *ms >= 1_100_000));
        assert_eq!(kept[0], ("11999".to_owned(), 1_199_900));
        c.max = Some("2026-03-01T14:05:32.097+1000".into());
        c.page = Some("x".repeat(500));
        c.from = Some("2026-03-01 14:04".into());
        assert!(serde_json::to_string(&c).unwrap().len() < 8000);
        let back: Cursor = serde_json::from_str(&serde_json::to_string(&c).unwrap()).unwrap();
        assert_eq!(back, c);
    }

    fn request(fields: &[&str]) -> PullRequest {
        PullRequest {
            definition: "tk".into(),
            container_id: "Tickets".into(),
            link: None,
            fields: fields.iter().map(|s| (*s).to_owned()).collect(),
            page_size: 200,
        }
    }

    #[test]
    fn issues_become_items_as_the_push_sends_them() {
        let list = list_label("tk", "Tickets");
        let marker = super::super::marker_label("tk", "7");
        let issue = json!({"id": "10007", "key": "SB-7", "fields": {
            "updated": "2026-03-01T14:05:32.097+1000", "summary": "Fix it",
            "description": adf::to_adf("Para\n\n- a\n- b").unwrap(),
            "labels": ["bug", marker, list, "ui"], "status": {"name": "Done", "statusCategory": {"key": "done"}},
            "priority": {"name": "High"}, "assignee": {"accountId": "557058:alice"}, "duedate": "2026-03-01",
            "customfield_10010": 3},
            "properties": {"syncbridge": {"definition": "tk", "container": "Tickets", "key": "7"}}});
        let req = request(&[
            "SyncKey",
            "summary",
            "description",
            "labels",
            "status",
            "priority",
            "assignee",
            "duedate",
            "customfield_10010",
            "environment",
        ]);
        let Seen::Item { id, ms, item, .. } = to_item(&issue, &req, &list).unwrap() else { panic!("foreign") };
        assert_eq!((id.as_str(), ms), ("10007", 1_772_337_932_097));
        assert_eq!(
            item,
            json!({"id": "10007", "etag": "2026-03-01T14:05:32.097+1000", "deleted": false,
                   "modified": "2026-03-01T14:05:32.097+10:00",
                   "fields": {"SyncKey": "7", "summary": "Fix it", "description": "Para\n\n- a\n- b",
                              "labels": "[\"bug\", \"ui\"]", "status": "Done", "priority": "High",
                              "assignee": "557058:alice", "duedate": "2026-03-01", "customfield_10010": 3,
                              "environment": null}})
        );
        // The key as summary (a NULL summary is written so) reads as null;
        // no labels of one's own read as an empty array.
        let mut bare = issue.clone();
        bare["fields"]["summary"] = json!("7");
        bare["fields"]["labels"] = json!([marker, list]);
        let Seen::Item { item, .. } = to_item(&bare, &req, &list).unwrap() else { panic!() };
        assert_eq!((&item["fields"]["summary"], &item["fields"]["labels"]), (&Value::Null, &json!("[]")));
        // Another definition's or list's issue is not this read's; one
        // without the property is a remote create (no SyncKey).
        let mut other = issue.clone();
        other["properties"]["syncbridge"]["definition"] = json!("other");
        assert_eq!(to_item(&other, &req, &list).unwrap(), Seen::Foreign);
        other["properties"]["syncbridge"] = json!({"definition": "tk", "container": "Elsewhere", "key": "7"});
        assert_eq!(to_item(&other, &req, &list).unwrap(), Seen::Foreign);
        let mut made = issue.clone();
        made["properties"] = json!({});
        let Seen::Item { item, .. } = to_item(&made, &req, &list).unwrap() else { panic!() };
        assert!(item["fields"].get("SyncKey").is_none());
        assert!(to_item(&json!({"fields": {}}), &req, &list).unwrap_err().contains("no id"));
        assert!(to_item(&json!({"id": "1", "fields": {"updated": "x"}}), &req, &list).unwrap_err().contains("updated"));
    }
}
