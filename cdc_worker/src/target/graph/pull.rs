//! Reading a list's changes back (two-way sync): the list-item delta query,
//! one page per call.
//!
//! - A fresh read (no link): `GET {base_url}/sites/{site}/lists/{list}/items/delta
//!   ?$expand=fields($select=…)&$top=N`, 2 RU (a delta without a token).
//! - Otherwise the whole `@odata.nextLink` / `@odata.deltaLink` Graph gave
//!   last time, replayed as it is (the query options are encoded in it),
//!   1 RU. A link is followed only when it leads to the target's own
//!   `base_url` (same scheme, host and port, no user info, a path under the
//!   base's): the bearer token goes with the request. The links received
//!   are checked the same way before they are handed on.
//! - `410 Gone` (any resync code) asks for a fresh, full read; 429/503,
//!   401 and 5xx are handled by the shared client like writes; an answer
//!   that is not a delta page is an error, never a panic.

use serde_json::{json, Value};

use super::{seg, GraphTarget};
use crate::target::http::Cost;
use crate::target::policy::bounded;
use crate::target::{ErrorClass, Health, PullError, PullPage, PullRequest};

/// Resource units of a delta read without a token (a fresh enumeration).
pub const RU_DELTA_FRESH: u32 = 2;
/// Resource units of a delta read replaying a link.
pub const RU_DELTA_LINK: u32 = 1;
/// The most items a page is asked for.
pub const MAX_PAGE_SIZE: u32 = 1000;

pub use crate::target::http::check_link;

/// The `$expand` of a fresh read: `fields`, or `fields($select=A,B)` (each
/// name percent-encoded, so that none can end the option).
fn expand_fields(fields: &[String]) -> String {
    if fields.is_empty() {
        return "fields".to_owned();
    }
    let names: Vec<String> = fields.iter().map(|f| seg(f)).collect();
    format!("fields($select={})", names.join(","))
}

/// One item of a delta page in the form `sync.pull_page` takes.
fn normalize_item(item: &Value) -> Result<Value, String> {
    let obj = item.as_object().ok_or("an item of the delta page is not an object")?;
    let id = match obj.get("id") {
        Some(Value::String(s)) if !s.is_empty() => s.clone(),
        Some(Value::Number(n)) if n.is_u64() => n.to_string(),
        _ => return Err("an item of the delta page has no id".to_owned()),
    };
    let text = |k: &str| obj.get(k).and_then(Value::as_str).map(str::to_owned);
    // The documented `deleted` facet; `@removed` as directory-style deltas spell it.
    let deleted = ["deleted", "@removed"].iter().any(|k| obj.get(*k).is_some_and(|v| !v.is_null()));
    let fields = match obj.get("fields") {
        Some(Value::Object(f)) => Value::Object(f.clone()),
        Some(Value::Null) | None => Value::Null,
        Some(_) => return Err(format!("item {}: its fields are not an object", bounded(&id, 40))),
    };
    Ok(json!({
        "id": id,
        "etag": text("eTag").or_else(|| text("@odata.etag")),
        "deleted": deleted,
        "modified": text("lastModifiedDateTime"),
        "fields": fields,
    }))
}

/// What an answer's body is when it is not a page.
#[derive(Debug, PartialEq)]
pub(crate) enum PageError {
    /// Not JSON at all (a proxy's page, an answer cut short): may pass.
    NotJson(String),
    /// JSON that is not a delta page: it will come again.
    Shape(String),
}

/// Parses a 200 answer of the delta query (links unchecked).
pub(crate) fn parse_page(text: &str) -> Result<PullPage, PageError> {
    // Never a piece of the answer in the message: only what was wrong with it.
    let v: Value =
        serde_json::from_str(text).map_err(|e| PageError::NotJson(format!("the delta answer is not JSON ({e})")))?;
    let shape = |m: &str| PageError::Shape(m.to_owned());
    let values =
        v.get("value").and_then(Value::as_array).ok_or_else(|| shape("the delta answer has no value array"))?;
    let link = |k: &str| v.get(k).and_then(Value::as_str).filter(|s| !s.is_empty()).map(str::to_owned);
    let (link, last) = match (link("@odata.nextLink"), link("@odata.deltaLink")) {
        (Some(next), None) => (next, false),
        (None, Some(delta)) => (delta, true),
        (None, None) => return Err(shape("the delta answer has neither @odata.nextLink nor @odata.deltaLink")),
        (Some(_), Some(_)) => return Err(shape("the delta answer has both @odata.nextLink and @odata.deltaLink")),
    };
    let items = values.iter().map(normalize_item).collect::<Result<Vec<_>, _>>().map_err(PageError::Shape)?;
    Ok(PullPage { items, link, last })
}

/// The codes of a 410's error envelope, top level and nested
/// `innerError`s, for the message (any 410 asks for a resync: the codes
/// only say why).
fn resync_code(body: &Value) -> Option<String> {
    let mut e = body.get("error")?;
    let mut codes = Vec::new();
    for _ in 0..8 {
        if let Some(c) = e.get("code").and_then(Value::as_str) {
            codes.push(bounded(c, 60));
        }
        match e.get("innerError").or_else(|| e.get("innererror")) {
            Some(inner) => e = inner,
            None => break,
        }
    }
    (!codes.is_empty()).then(|| codes.join("/"))
}

impl GraphTarget {
    /// One page of a list's delta (see the module's doc).
    pub(super) async fn pull_page(&self, req: &PullRequest) -> Result<PullPage, PullError> {
        let base = &self.client.base_url;
        let (url, units) = match &req.link {
            Some(link) => (check_link(base, link).map_err(PullError::LinkRefused)?.to_string(), RU_DELTA_LINK),
            None => {
                let url = format!(
                    "{base}/sites/{}/lists/{}/items/delta?$expand={}&$top={}",
                    seg(&self.site),
                    seg(&req.container_id),
                    expand_fields(&req.fields),
                    req.page_size.clamp(1, MAX_PAGE_SIZE)
                );
                (url, RU_DELTA_FRESH)
            }
        };
        // A read: sent again as often as the retry policy allows.
        let (status, text) = self
            .client
            .call_url(reqwest::Method::GET, &url, None, Cost { units, writes: 0 }, true)
            .await
            .map_err(|f| PullError::Failed { class: f.class, message: f.message, retry_after: f.retry_after })?;
        let failed = |class: ErrorClass, message: String| PullError::Failed { class, message, retry_after: None };
        match status {
            200 => {}
            410 => {
                let body: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
                let code = resync_code(&body).unwrap_or_else(|| "no code".into());
                return Err(PullError::Resync(self.client.redact(&format!(
                    "Graph answered 410 Gone ({code}): the delta state is gone, the list is read again in full"
                ))));
            }
            404 => {
                return Err(failed(
                    ErrorClass::Definite,
                    format!("the list is not on the target (HTTP 404{})", self.client.api_error_text(&text)),
                ))
            }
            s => {
                return Err(failed(
                    ErrorClass::Definite,
                    format!("Graph refused the delta read (HTTP {s}){}", self.client.api_error_text(&text)),
                ))
            }
        }
        let page = parse_page(&text).map_err(|e| match e {
            PageError::NotJson(m) => failed(ErrorClass::Transient, m),
            PageError::Shape(m) => failed(ErrorClass::Definite, m),
        })?;
        // The link handed on must lead where a token may go, too.
        check_link(base, &page.link).map_err(PullError::LinkRefused)?;
        self.client.set_health(Health::Ok, "");
        Ok(page)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_are_followed_only_under_the_base_url() {
        let base = "https://graph.microsoft.com/v1.0";
        let ok = "https://graph.microsoft.com/v1.0/sites/s/lists/l/items/delta?token=abc&$expand=fields";
        assert_eq!(check_link(base, ok).unwrap().as_str(), ok);
        assert!(check_link(base, "https://GRAPH.microsoft.com:443/v1.0/sites/s/lists/l/items/delta?token=a").is_ok());
        for (bad, why) in [
            ("https://evil.example/v1.0/sites/s/lists/l/items/delta?token=a", "another host"),
            ("https://graph.microsoft.com.evil.example/v1.0/sites/x", "another host"),
            ("https://graph.microsoft.com:8443/v1.0/sites/x", "another host"),
            ("http://graph.microsoft.com/v1.0/sites/s/lists/l/items/delta", "another scheme"),
            ("https://graph.microsoft.com/beta/sites/s/lists/l/items/delta", "a path outside"),
            ("https://graph.microsoft.com/v1.0/../beta/sites/x", "a path outside"),
            ("https://graph.microsoft.com/v1.0", "a path outside"),
            ("https://graph.microsoft.com/v1.00/sites/x", "a path outside"),
            ("https://user:pw@graph.microsoft.com/v1.0/sites/x", "user info"),
        ] {
            let e = check_link(base, bad).unwrap_err();
            assert!(e.contains(why), "{bad}: {e}");
            assert!(!e.contains("token="), "{e}");
        }
        assert!(check_link(base, "not a url").unwrap_err().contains("not a URL"));
        assert!(check_link(base, "/v1.0/sites/x").is_err(), "a relative link");
        // A local (emulator) base on http: its own links only.
        let local = "http://127.0.0.1:8080/v1.0";
        assert!(check_link(local, "http://127.0.0.1:8080/v1.0/sites/s/lists/l/items/delta?token=x").is_ok());
        assert!(check_link(local, "http://127.0.0.1:8081/v1.0/sites/x").is_err());
        assert!(check_link(local, "http://localhost:8080/v1.0/sites/x").is_err());
    }

    #[test]
    fn delta_pages_parse_into_items_and_a_link() {
        let next = r#"{"value": [
            {"id": "1", "eTag": "\"{A},2\"", "lastModifiedDateTime": "2021-10-14T23:27:27Z",
             "fields": {"@odata.etag": "\"a,2\"", "Title": "one", "SyncKey": "k1"}},
            {"id": "2", "@odata.etag": "\"b,1\"", "fields": {"Title": "two"}},
            {"id": "3", "parentReference": {"siteId": "s"}, "deleted": {"state": "deleted"}},
            {"id": "4", "@removed": {"reason": "deleted"}}
          ], "@odata.nextLink": "https://g/v1.0/x?token=2"}"#;
        let p = parse_page(next).unwrap();
        assert!(!p.last);
        assert_eq!(p.link, "https://g/v1.0/x?token=2");
        assert_eq!(
            p.items,
            vec![
                json!({"id": "1", "etag": "\"{A},2\"", "deleted": false, "modified": "2021-10-14T23:27:27Z",
                       "fields": {"@odata.etag": "\"a,2\"", "Title": "one", "SyncKey": "k1"}}),
                json!({"id": "2", "etag": "\"b,1\"", "deleted": false, "modified": null, "fields": {"Title": "two"}}),
                json!({"id": "3", "etag": null, "deleted": true, "modified": null, "fields": null}),
                json!({"id": "4", "etag": null, "deleted": true, "modified": null, "fields": null}),
            ]
        );
        let last = parse_page(r#"{"value": [], "@odata.deltaLink": "https://g/v1.0/x?token=9"}"#).unwrap();
        assert_eq!(last, PullPage { items: vec![], link: "https://g/v1.0/x?token=9".into(), last: true });
    }

    #[test]
    fn garbage_delta_answers_are_errors() {
        let not_json = |t: &str| matches!(parse_page(t), Err(PageError::NotJson(_)));
        let shape = |t: &str| match parse_page(t) {
            Err(PageError::Shape(m)) => m,
            other => panic!("{t}: {other:?}"),
        };
        assert!(not_json("<html>proxy</html>"));
        assert!(not_json(r#"{"value": [{"id": "1""#));
        assert!(not_json(""));
        assert!(shape(r#"{"items": []}"#).contains("no value array"));
        assert!(shape(r#"{"value": {}, "@odata.deltaLink": "x"}"#).contains("no value array"));
        assert!(shape(r#"{"value": []}"#).contains("neither"));
        assert!(shape(r#"{"value": [], "@odata.nextLink": ""}"#).contains("neither"));
        assert!(shape(r#"{"value": [], "@odata.nextLink": "a", "@odata.deltaLink": "b"}"#).contains("both"));
        assert!(shape(r#"{"value": [{"eTag": "x"}], "@odata.deltaLink": "b"}"#).contains("no id"));
        assert!(shape(r#"{"value": [{"id": ""}], "@odata.deltaLink": "b"}"#).contains("no id"));
        assert!(shape(r#"{"value": [7], "@odata.deltaLink": "b"}"#).contains("not an object"));
        assert!(shape(r#"{"value": [{"id": "1", "fields": "x"}], "@odata.deltaLink": "b"}"#).contains("not an object"));
        // Not a piece of the answer in the message.
        assert!(
            !shape(r#"{"value": [{"id": "s3cr3t-ish", "fields": 1}], "@odata.deltaLink": "b"}"#).contains("fields\":")
        );
        // A numeric id is taken as Graph's text.
        assert_eq!(parse_page(r#"{"value": [{"id": 5}], "@odata.deltaLink": "b"}"#).unwrap().items[0]["id"], "5");
    }

    #[test]
    fn resync_codes_are_found_at_any_depth() {
        let b = json!({"error": {"code": "resyncRequired", "message": "m",
                                 "innerError": {"code": "resyncApplyDifferences"}}});
        assert_eq!(resync_code(&b).as_deref(), Some("resyncRequired/resyncApplyDifferences"));
        assert_eq!(resync_code(&json!({"x": 1})), None);
        assert_eq!(expand_fields(&[]), "fields");
        assert_eq!(
            expand_fields(&["Title".into(), "SyncKey".into(), "a,b)".into()]),
            "fields($select=Title,SyncKey,a%2Cb%29)"
        );
    }
}
