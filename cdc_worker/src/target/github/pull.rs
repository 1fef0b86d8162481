//! Reading a repository's issues back (two-way sync), and the twin index's
//! reads: one listing for both.
//!
//! - The listing: `GET /repos/{owner}/{repo}/issues?labels=<marker
//!   label>&state=all&sort=created&direction=asc&per_page=100[&since=…]`,
//!   following the `link` header's `rel="next"` only to the target's own
//!   base URL (the token goes with it). Issues without the marker label are
//!   not listed; pull requests (an object `pull_request`) are left out.
//!   `sort=created`, not `updated`: the order of a read of several pages
//!   does not move while people edit (by `updated`, an issue edited during
//!   the read jumps to the end and shifts the next one into a page already
//!   read, where nothing would find it again).
//! - The cursor ([`Cursor`], the pull's opaque link, at most 8,000
//!   characters): the next round lists the issues updated since the newest
//!   `updated_at` seen — but never later than the first page's `date` (an
//!   issue edited while a long read went on is read again) — less an
//!   overlap of [`OVERLAP_SECS`] (GitHub's times have whole seconds: an
//!   issue updated in the cursor's second after the read is not missed).
//!   What a round hands over is remembered by number, `updated_at` and a
//!   digest of its version, and skipped when the overlap lists it again
//!   unchanged. A round of one page keeps its answer's `etag`: the next
//!   round sends it as `If-None-Match`, and an unchanged listing is a 304
//!   that costs nothing of the primary limit.
//! - A full read (no link: the first pull, `sync.reset_pull`, a resync)
//!   lists every marked issue, closed ones too, and hands each over: at
//!   its end, the extension takes the issues it knows and did not see for
//!   deleted (an admin deleted them, or the marker label was taken off).
//! - Each issue of the request's definition (its marker's) is an item: id
//!   its number, eTag its version ([`super::fields::version`], what the
//!   writes report too), `modified` its `updated_at`, fields as
//!   [`super::fields`] reports them, `SyncKey` the row's key. An issue with
//!   the label but no marker (opened by a person) has no `SyncKey`: an
//!   inbound insert. Another definition's issues are not this one's.

use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use super::fields::{fnv64, version, IssueView};
use super::{marker_in, next_link, parse_marker, seg, sent_in, GithubTarget, Twins, ISSUE_FIELDS, SYNC_KEY};
use crate::target::http::{check_link, Failure};
use crate::target::policy::bounded;
use crate::target::{ErrorClass, Health, PullError, PullPage, PullRequest};

/// Seconds a round reads back before its cursor.
pub const OVERLAP_SECS: i64 = 1;
/// GitHub's largest page.
pub const MAX_PER_PAGE: u32 = 100;
/// The longest link handed over (the extension takes 8,000 characters).
const MAX_LINK_CHARS: usize = 7000;
/// The version of the cursor's format.
const CURSOR_VERSION: u32 = 1;

/// An issue handed over: number, `updated_at` (epoch seconds), digest of its version.
type Seen = (u64, i64, u32);

/// `YYYY-MM-DDTHH:MM:SSZ` of epoch seconds.
fn iso(epoch: i64) -> String {
    jiff::Timestamp::from_second(epoch).map(|t| t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()).unwrap_or_default()
}

/// Epoch seconds of an ISO 8601 time.
fn epoch_of(s: &str) -> Option<i64> {
    s.parse::<jiff::Timestamp>().ok().map(|t| t.as_second())
}

/// A round in progress (a read of several pages).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct Round {
    /// The next page (the `link` header's `rel="next"`).
    next: String,
    /// A full read: nothing skipped, no `since`.
    full: bool,
    /// The `since` it lists with (epoch seconds).
    since: Option<i64>,
    /// GitHub's clock when the first page was answered.
    date: Option<i64>,
    /// The newest `updated_at` listed so far.
    newest: Option<i64>,
    /// What it listed near its newest (for the next round's skipping).
    fresh: Vec<Seen>,
}

/// Where the reads of a repository stand: a pull's link, the twin index's
/// position (see the module's doc).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Cursor {
    /// The format's version.
    v: u32,
    /// The next round lists issues updated since this (less the overlap); None: all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    since: Option<String>,
    /// Issues handed over whose `updated_at` is within the overlap.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    seen: Vec<Seen>,
    /// The `etag` of the last round's answer, when that round was one page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    etag: Option<String>,
    /// A round in progress.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    round: Option<Round>,
}

impl Default for Cursor {
    /// A cursor from nothing: the first round lists everything.
    fn default() -> Self {
        Self { v: CURSOR_VERSION, since: None, seen: Vec::new(), etag: None, round: None }
    }
}

impl Cursor {
    /// A cursor from nothing: the first round lists everything.
    pub fn new() -> Self {
        Self::default()
    }

    /// The cursor a link holds. Err: not one this worker made.
    pub fn parse(link: &str) -> Result<Self, String> {
        match serde_json::from_str::<Cursor>(link) {
            Ok(c)
                if link.trim_start().starts_with('{')
                    && c.v == CURSOR_VERSION
                    && c.since.as_deref().is_none_or(|s| epoch_of(s).is_some()) =>
            {
                Ok(c)
            }
            _ => {
                Err("the stored GitHub cursor is not one this worker reads: the repository is read again in full"
                    .into())
            }
        }
    }

    fn since_epoch(&self) -> Option<i64> {
        self.since.as_deref().and_then(epoch_of)
    }

    /// The link a pull hands over: the cursor's JSON, the issues it
    /// remembers cut (the oldest first) until it fits (one not remembered
    /// is handed over again, which changes nothing).
    pub fn to_link(&self) -> String {
        let mut c = self.clone();
        loop {
            let s = serde_json::to_string(&c).unwrap_or_default();
            if s.len() <= MAX_LINK_CHARS {
                return s;
            }
            let round_fresh = c.round.as_ref().map_or(0, |r| r.fresh.len());
            if c.seen.is_empty() && round_fresh == 0 {
                // (a next-page URL that long is refused by the extension)
                return s;
            }
            if c.seen.len() >= round_fresh {
                c.seen.sort_by_key(|s| std::cmp::Reverse(s.1));
                let keep = c.seen.len() * 3 / 4;
                c.seen.truncate(keep);
            } else if let Some(r) = c.round.as_mut() {
                r.fresh.sort_by_key(|s| std::cmp::Reverse(s.1));
                let keep = r.fresh.len() * 3 / 4;
                r.fresh.truncate(keep);
            }
        }
    }
}

/// What one page of the listing gave.
#[derive(Debug, Default)]
pub(super) struct Listed {
    /// The issues new to the cursor (no pull request), as GitHub lists them.
    pub issues: Vec<Value>,
    /// The round ended with this page.
    pub last: bool,
}

/// Why a page of the listing could not be read.
#[derive(Debug)]
pub(super) enum ListError {
    /// The request failed (classified as writes are).
    Failed(Failure),
    /// GitHub answered with another status.
    Refused(u16, String),
    /// The answer is not JSON (cut short, a proxy's page): may pass.
    NotJson(String),
    /// JSON that is not a listing of issues.
    Shape(String),
    /// A next link that leads elsewhere than the target's API.
    LinkRefused(String),
}

impl GithubTarget {
    /// The listing of `repo`'s marked issues (see the module's doc).
    fn listing_url(&self, repo: &str, since: Option<i64>, per_page: u32) -> String {
        let mut q = vec![
            ("labels", self.marker_label.clone()),
            ("state", "all".to_owned()),
            ("sort", "created".to_owned()),
            ("direction", "asc".to_owned()),
            ("per_page", per_page.clamp(1, MAX_PER_PAGE).to_string()),
        ];
        if let Some(s) = since {
            q.push(("since", iso(s)));
        }
        let query: Vec<String> = q.iter().map(|(k, v)| format!("{k}={}", seg(v))).collect();
        format!("{}{}?{}", self.client.base_url, self.issues_path(repo), query.join("&"))
    }

    /// One page of `repo`'s marked issues from where `cur` stands, `cur`
    /// moved on. `full`: a round that starts here lists every issue and
    /// skips none.
    pub(super) async fn list_page(
        &self,
        repo: &str,
        cur: &mut Cursor,
        full: bool,
        per_page: u32,
    ) -> Result<Listed, ListError> {
        let full = cur.round.as_ref().map_or(full, |r| r.full);
        let (url, etag, since) = match &cur.round {
            Some(r) => {
                let url = check_link(&self.client.base_url, &r.next).map_err(ListError::LinkRefused)?;
                (url.to_string(), None, r.since)
            }
            None => {
                let since = if full { None } else { cur.since_epoch().map(|s| s - OVERLAP_SECS) };
                let etag = if full { None } else { cur.etag.clone() };
                (self.listing_url(repo, since, per_page), etag, since)
            }
        };
        let a = self
            .send(reqwest::Method::GET, &url, None, false, true, etag.as_deref())
            .await
            .map_err(ListError::Failed)?;
        if a.status == 304 {
            // Nothing changed since the last round (its only page): free.
            return Ok(Listed { issues: Vec::new(), last: true });
        }
        if a.status != 200 {
            return Err(ListError::Refused(a.status, a.body));
        }
        let page: Value = serde_json::from_str(&a.body)
            .map_err(|e| ListError::NotJson(format!("GitHub's issue listing is not JSON ({e})")))?;
        let page = page.as_array().ok_or_else(|| ListError::Shape("GitHub's issue listing is not an array".into()))?;
        let first = cur.round.is_none();
        let mut round = cur.round.take().unwrap_or(Round {
            full,
            since,
            date: a
                .date
                .as_deref()
                .and_then(|d| jiff::fmt::rfc2822::DateTimeParser::new().parse_timestamp(d).ok())
                .map(|t| t.as_second()),
            ..Round::default()
        });
        let mut issues = Vec::new();
        for issue in page {
            let (Some(number), Some(updated)) = (
                issue.get("number").and_then(Value::as_u64),
                issue.get("updated_at").and_then(Value::as_str).and_then(epoch_of),
            ) else {
                return Err(ListError::Shape("an issue of GitHub's listing has no number or updated_at".into()));
            };
            round.newest = Some(round.newest.map_or(updated, |n| n.max(updated)));
            let key: Seen = (number, updated, fnv64(version(issue).unwrap_or_default().as_bytes()) as u32);
            let again = round.fresh.contains(&key) || (!full && cur.seen.contains(&key));
            if !round.fresh.contains(&key) {
                round.fresh.push(key);
            }
            if again || issue.get("pull_request").is_some_and(|p| !p.is_null()) {
                continue;
            }
            issues.push(issue.clone());
        }
        // Only what the overlap of the next round can list again is kept.
        let horizon = |r: &Round, old: Option<i64>| -> Option<i64> {
            let seen_to = match (r.date, r.newest) {
                (Some(d), Some(n)) => Some(d.min(n)),
                (None, n) => n,
                (Some(_), None) => None,
            };
            match (old, seen_to) {
                (Some(o), Some(s)) => Some(o.max(s)),
                (o, s) => s.or(o),
            }
        };
        let old = if full { None } else { cur.since_epoch() };
        match a.link.as_deref().and_then(next_link) {
            Some(next) => {
                check_link(&self.client.base_url, &next).map_err(ListError::LinkRefused)?;
                round.next = next;
                if let Some(h) = horizon(&round, old) {
                    round.fresh.retain(|s| s.1 >= h - OVERLAP_SECS);
                }
                cur.round = Some(round);
                Ok(Listed { issues, last: false })
            }
            None => {
                let new_since = horizon(&round, old);
                let mut seen = round.fresh;
                if !full {
                    seen.extend(cur.seen.iter().filter(|s| !seen.contains(s)).copied().collect::<Vec<_>>());
                }
                if let Some(h) = new_since {
                    seen.retain(|s| s.1 >= h - OVERLAP_SECS);
                }
                cur.v = CURSOR_VERSION;
                cur.since = new_since.map(iso);
                cur.seen = seen;
                // A round of one page: its answer is the whole listing.
                cur.etag = if first { a.etag } else { None };
                cur.round = None;
                Ok(Listed { issues, last: true })
            }
        }
    }

    /// What the twin index learns from issues listed (by a pull too).
    pub(super) fn learn(&self, repo: &str, issues: &[Value]) {
        let mut twins = self.twins.lock().unwrap_or_else(|p| p.into_inner());
        learn(twins.entry(repo.to_owned()).or_default(), issues);
    }

    /// An issue as an item of `req`'s definition, None when it is another's.
    fn pull_item(&self, issue: &Value, req: &PullRequest) -> Option<Value> {
        let body = issue.get("body").and_then(Value::as_str).unwrap_or("");
        let key = match marker_in(body) {
            None => None,
            Some(m) => match parse_marker(m) {
                Some((d, k)) if d == req.definition => Some(k),
                // Another definition's issue, or a marker that does not decode.
                _ => return None,
            },
        };
        let view = IssueView::of(issue, &self.marker_label);
        let sent = sent_in(body);
        let fallback = key.as_ref().map(|k| format!("{} {k}", req.definition));
        let wanted: Vec<String> = if req.fields.is_empty() {
            std::iter::once(SYNC_KEY.to_owned())
                .chain(ISSUE_FIELDS.iter().map(|f| (*f).to_owned()))
                .chain(view.table.keys().cloned())
                .collect()
        } else {
            req.fields.clone()
        };
        let mut fields = Map::new();
        for f in wanted {
            let v = if f == SYNC_KEY {
                key.clone().map(Value::String)
            } else if ISSUE_FIELDS.contains(&f.as_str()) {
                Some(view.own(&f, sent.get(&f), fallback.as_deref(), &self.marker_label))
            } else {
                // (a field the table lacks is empty)
                view.table.get(&f).cloned()
            };
            if let Some(v) = v {
                fields.insert(f, v);
            }
        }
        Some(json!({
            "id": issue.get("number")?.as_u64()?.to_string(),
            "etag": version(issue),
            "deleted": false,
            "modified": issue.get("updated_at"),
            "fields": fields,
        }))
    }

    /// One page of a repository's changes for a pull (see the module's doc).
    pub(super) async fn pull_page(&self, req: &PullRequest) -> Result<PullPage, PullError> {
        let repo = self.repo_of(&req.container_id).to_owned();
        if repo.is_empty() {
            return Err(PullError::Failed {
                class: ErrorClass::Definite,
                message: "no repository: give the definition a list (the repository's name) or the target a repo"
                    .into(),
                retry_after: None,
            });
        }
        let mut cur = match &req.link {
            None => Cursor::new(),
            Some(l) => Cursor::parse(l).map_err(PullError::Resync)?,
        };
        let listed = self
            .list_page(&repo, &mut cur, req.link.is_none(), req.page_size.clamp(1, MAX_PER_PAGE))
            .await
            .map_err(|e| self.pull_error(&repo, e))?;
        self.learn(&repo, &listed.issues);
        let items = listed.issues.iter().filter_map(|i| self.pull_item(i, req)).collect();
        self.client.set_health(Health::Ok, "");
        Ok(PullPage { items, link: cur.to_link(), last: listed.last })
    }

    fn pull_error(&self, repo: &str, e: ListError) -> PullError {
        let failed = |class: ErrorClass, message: String| PullError::Failed { class, message, retry_after: None };
        match e {
            ListError::Failed(f) => {
                PullError::Failed { class: f.class, message: f.message, retry_after: f.retry_after }
            }
            ListError::LinkRefused(m) => PullError::LinkRefused(m),
            ListError::NotJson(m) => failed(ErrorClass::Transient, m),
            ListError::Shape(m) => failed(ErrorClass::Definite, m),
            ListError::Refused(status, body) => {
                let what = match status {
                    404 => format!(
                        "the repository {}/{} is not there, or the token cannot see it",
                        self.owner,
                        bounded(repo, 100)
                    ),
                    410 => "the repository's issues are disabled".to_owned(),
                    _ => "GitHub refused the issue listing".to_owned(),
                };
                let class = if status == 429 || status >= 500 { ErrorClass::Transient } else { ErrorClass::Definite };
                failed(class, format!("{what} (HTTP {status}){}", self.client.api_error_text(&body)))
            }
        }
    }
}

/// The twin index learns issues as listed: by marker, the open one of two
/// with one marker, else the lower number.
pub(super) fn learn(t: &mut Twins, issues: &[Value]) {
    for issue in issues {
        let (Some(number), Some(body)) =
            (issue.get("number").and_then(Value::as_u64), issue.get("body").and_then(Value::as_str))
        else {
            continue;
        };
        let Some(m) = marker_in(body) else { continue };
        let open = issue.get("state").and_then(Value::as_str) == Some("open");
        let keep = match t.by_marker.get(m) {
            None => true,
            Some((n, was_open, _)) => *n == number || (open && !*was_open) || (open == *was_open && number < *n),
        };
        if keep {
            t.by_marker.insert(m.to_owned(), (number, open, issue.clone()));
        }
    }
}

impl ListError {
    /// As a failure of a write's lookup.
    pub(super) fn into_failure(self, target: &GithubTarget) -> Failure {
        let (class, message) = match self {
            ListError::Failed(f) => return f,
            ListError::Refused(status, body) => (
                if status == 404 || status == 410 { ErrorClass::Definite } else { ErrorClass::Transient },
                format!("GitHub refused the issue listing (HTTP {status}){}", target.client.api_error_text(&body)),
            ),
            ListError::NotJson(m) | ListError::Shape(m) => (ErrorClass::Transient, m),
            ListError::LinkRefused(m) => (ErrorClass::Definite, m),
        };
        Failure { class, message, retry_after: None, sent: false }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_stay_within_the_link_limit() {
        let mut c = Cursor::new();
        c.since = Some(iso(1_767_225_600));
        c.seen = (0..2000).map(|n| (n, 1_767_225_600 + (n as i64 % 7), n as u32)).collect();
        c.etag = Some("W/\"abc\"".into());
        let link = c.to_link();
        assert!(link.len() <= MAX_LINK_CHARS, "{}", link.len());
        let back = Cursor::parse(&link).unwrap();
        assert_eq!((back.since.as_deref(), back.etag.as_deref()), (Some("2026-01-01T00:00:00Z"), Some("W/\"abc\"")));
        assert!(!back.seen.is_empty() && back.seen.iter().all(|s| c.seen.contains(s)));
        // The newest are kept.
        assert!(back.seen.iter().all(|s| s.1 >= 1_767_225_600 + 3), "{:?}", &back.seen[..3]);
        assert_eq!(Cursor::parse(&Cursor::new().to_link()).unwrap(), Cursor::new());
        for bad in ["", "https://api.github.com/x", "{\"v\": 2}", "{\"v\": 1, \"since\": \"yesterday\"}", "[1]"] {
            assert!(Cursor::parse(bad).unwrap_err().contains("read again in full"), "{bad}");
        }
    }
}
