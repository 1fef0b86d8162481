//! The Graph routes: sites, lists, columns, items, delta and `$batch`.
//!
//! Everything here is synchronous and runs with the state's lock held; the
//! emulator harness (`crate::emulator`) does the waiting (latency) and the
//! faults.

use std::collections::{HashMap, HashSet};

use percent_encoding::percent_decode_str;
use serde_json::{json, Map, Value};

use super::odata::{
    b64_decode, b64_encode, encode_query, guid, now_iso, parse_datetime, parse_filter, parse_query, query_get,
    stable_guid, CmpOp, Literal, Pred,
};
use super::state::{system_columns, GraphError, Item, Kind, List, State, APP_USER};

/// The most requests one `$batch` may carry.
pub(crate) const BATCH_LIMIT: usize = 20;
/// The page size when `$top` is not given.
pub(crate) const DEFAULT_PAGE: usize = 200;
const MAX_PAGE: usize = 5000;
const HOST: &str = "emulator.sharepoint.com";
const NON_INDEXED_PREFER: &str = "HonorNonIndexedQueriesWarningMayFailRandomly";
/// Graph's answer to a `$batch` mixing parallel and sequenced requests.
pub(crate) const SHAPE_REFUSED: &str = "Batch should be either fully sequential or fully parallel.";

/// One Graph request (top-level or inside a `$batch`).
#[derive(Debug, Clone)]
pub(crate) struct Req {
    /// Upper-case method.
    pub method: String,
    /// The path after `/v1.0`, starting with `/`.
    pub path: String,
    pub query: Vec<(String, String)>,
    /// Header names in lower case.
    pub headers: HashMap<String, String>,
    /// The JSON body, `None` if empty, `Err` if not JSON.
    pub body: Result<Option<Value>, String>,
    /// `http://host:port`, for absolute links.
    pub origin: String,
}

impl Req {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(String::as_str)
    }

    fn json_body(&self) -> Result<Value, GraphError> {
        match &self.body {
            Ok(Some(v)) => Ok(v.clone()),
            Ok(None) => Err(GraphError::new(400, "BadRequest", "Empty Payload. JSON content expected.")),
            Err(e) => Err(GraphError::new(400, "BadRequest", format!("Unable to read JSON request payload: {e}"))),
        }
    }
}

/// A response before it is written (top-level) or embedded (in `$batch`).
#[derive(Debug, Clone)]
pub(crate) struct Resp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Option<Value>,
}

impl Resp {
    pub(crate) fn json(status: u16, body: Value) -> Self {
        Self { status, headers: Vec::new(), body: Some(body) }
    }

    pub(crate) fn empty(status: u16) -> Self {
        Self { status, headers: Vec::new(), body: None }
    }

    pub(crate) fn with_header(mut self, name: &str, value: impl Into<String>) -> Self {
        self.headers.push((name.to_string(), value.into()));
        self
    }

    /// Graph's error shape: `{"error":{"code","message","innerError"}}`.
    pub(crate) fn error(e: GraphError) -> Self {
        let body = json!({"error": {"code": e.code, "message": e.message, "innerError": {
            "date": now_iso(), "request-id": guid(), "client-request-id": guid()}}});
        Self::json(e.status, body)
    }

    /// A 429 with `Retry-After`.
    pub(crate) fn throttled(retry_after: u64) -> Self {
        Self::error(GraphError::new(
            429,
            "TooManyRequests",
            "Too many requests. The request has been throttled; retry after the time in the Retry-After header.",
        ))
        .with_header("Retry-After", retry_after.to_string())
    }
}

/// Whether a method writes.
pub(crate) fn is_write(method: &str) -> bool {
    matches!(method, "POST" | "PATCH" | "PUT" | "DELETE")
}

fn segments(path: &str) -> Vec<String> {
    path.split('/').filter(|s| !s.is_empty()).map(|s| percent_decode_str(s).decode_utf8_lossy().into_owned()).collect()
}

/// Resource units a request costs.
pub(crate) fn cost(req: &Req) -> u32 {
    if is_write(&req.method) {
        return 2;
    }
    let segs = segments(&req.path);
    match segs.last().map(String::as_str) {
        // A delta with a token 1 RU, without (a full enumeration) 2 (the
        // SharePoint throttling page's table).
        Some("delta") | Some("delta()") => {
            if query_get(&req.query, "token").is_some() {
                1
            } else {
                2
            }
        }
        Some("lists") | Some("items") | Some("columns") => 2,
        _ => {
            if query_get(&req.query, "filter").is_some() {
                2
            } else {
                1
            }
        }
    }
}

/// Resolves `sites/{id}` or `sites/{host}:/{path}:` to a site id; returns the
/// id and the remaining segments.
fn resolve_site(segs: &[String]) -> Option<(String, &[String])> {
    let first = segs.first()?;
    if let Some(host) = first.strip_suffix(':') {
        let mut parts = Vec::new();
        let mut i = 1;
        while i < segs.len() {
            let s = &segs[i];
            i += 1;
            if let Some(last) = s.strip_suffix(':') {
                parts.push(last.to_string());
                break;
            }
            parts.push(s.clone());
        }
        let path = format!("/{}", parts.join("/"));
        let id = format!("{host},{},{}", stable_guid(&format!("{host}{path}")), stable_guid(&format!("{path}@{host}")));
        return Some((id, &segs[i..]));
    }
    if first == "root" {
        let id = format!("{HOST},{},{}", stable_guid(&format!("{HOST}/")), stable_guid(&format!("/@{HOST}")));
        return Some((id, &segs[1..]));
    }
    Some((first.clone(), &segs[1..]))
}

fn site_host(site: &str) -> &str {
    match site.split_once(',') {
        Some((host, _)) if host.contains('.') => host,
        _ => HOST,
    }
}

fn method_not_allowed(method: &str) -> GraphError {
    GraphError::new(405, "methodNotAllowed", format!("The HTTP method '{method}' is not supported for this resource."))
}

fn no_segment(seg: &str) -> GraphError {
    GraphError::new(400, "BadRequest", format!("Resource not found for the segment '{seg}'."))
}

/// Handles one Graph request that has been authorized and charged.
pub(crate) fn handle(state: &mut State, req: &Req) -> Resp {
    match route(state, req) {
        Ok(r) => r,
        Err(e) => Resp::error(e),
    }
}

fn route(state: &mut State, req: &Req) -> Result<Resp, GraphError> {
    let segs = segments(&req.path);
    let m = req.method.as_str();
    let Some(first) = segs.first() else { return Err(no_segment("")) };
    if first != "sites" {
        return Err(no_segment(first));
    }
    if segs.len() == 1 {
        return Err(GraphError::bad("Listing all sites is not supported; address a site by id or path"));
    }
    let (site, rest) = resolve_site(&segs[1..]).ok_or_else(|| no_segment("sites"))?;
    let rest: Vec<&str> = rest.iter().map(String::as_str).collect();
    match rest.as_slice() {
        [] => match m {
            "GET" => Ok(Resp::json(200, site_json(&site))),
            _ => Err(method_not_allowed(m)),
        },
        ["lists"] => match m {
            "GET" => get_lists(state, req, &site),
            "POST" => {
                let id = state.create_list(&site, &req.json_body()?)?;
                let list = &state.lists[&id];
                Ok(Resp::json(201, list_json(list, true, &req.origin)))
            }
            _ => Err(method_not_allowed(m)),
        },
        ["lists", key, tail @ ..] => {
            let list_id = state.find_list(&site, key).ok_or_else(GraphError::not_found)?;
            list_route(state, req, &list_id, tail)
        }
        [other, ..] => Err(no_segment(other)),
    }
}

fn list_route(state: &mut State, req: &Req, list_id: &str, tail: &[&str]) -> Result<Resp, GraphError> {
    let m = req.method.as_str();
    match tail {
        [] => match m {
            "GET" => {
                let expand = query_get(&req.query, "expand").unwrap_or_default();
                let with_columns = expand.split(',').any(|e| e.trim().to_ascii_lowercase().starts_with("columns"));
                Ok(Resp::json(200, list_json(&state.lists[list_id], with_columns, &req.origin)))
            }
            "DELETE" => {
                state.lists.remove(list_id);
                Ok(Resp::empty(204))
            }
            _ => Err(method_not_allowed(m)),
        },
        ["columns"] => match m {
            "GET" => {
                let list = &state.lists[list_id];
                let mut value: Vec<Value> = list.columns.iter().map(|c| c.to_json()).collect();
                value.extend(system_columns());
                Ok(Resp::json(200, json!({"value": value})))
            }
            "POST" => {
                let body = req.json_body()?;
                let list = &state.lists[list_id];
                let col = state.parse_column(&list.site.clone(), &body, &list.columns)?;
                let out = col.to_json();
                state.lists.get_mut(list_id).expect("list exists").columns.push(col);
                Ok(Resp::json(201, out))
            }
            _ => Err(method_not_allowed(m)),
        },
        ["items"] => match m {
            "GET" => get_items(state, req, list_id),
            "POST" => create_item(state, req, list_id),
            _ => Err(method_not_allowed(m)),
        },
        ["items", "delta" | "delta()"] => match m {
            "GET" => {
                let r = delta(state, req, list_id);
                if r.as_ref().is_ok_and(|r| r.status == 200) {
                    state.delta_pages += 1;
                }
                r
            }
            _ => Err(method_not_allowed(m)),
        },
        ["items", id, rest @ ..] => {
            let id: u64 = id
                .parse()
                .map_err(|_| GraphError::bad(format!("Provided identifier is malformed - '{id}' is not a valid id")))?;
            if !state.lists[list_id].items.contains_key(&id) {
                return Err(GraphError::not_found());
            }
            match (rest, m) {
                ([], "GET") => {
                    let list = &state.lists[list_id];
                    let item = &list.items[&id];
                    let mode = fields_mode(&req.query);
                    Ok(Resp::json(200, item_json(list, item, &mode)).with_header("ETag", item.etag()))
                }
                ([], "DELETE") => delete_item(state, req, list_id, id),
                (["fields"], "GET") => {
                    let list = &state.lists[list_id];
                    let item = &list.items[&id];
                    Ok(Resp::json(200, Value::Object(fields_json(list, item, None))).with_header("ETag", item.etag()))
                }
                (["fields"], "PATCH") => update_item(state, req, list_id, id),
                ([] | ["fields"], _) => Err(method_not_allowed(m)),
                ([other, ..], _) => Err(no_segment(other)),
            }
        }
        [other, ..] => Err(no_segment(other)),
    }
}

fn site_json(site: &str) -> Value {
    let host = site_host(site);
    let name = if site.contains(',') { host.split('.').next().unwrap_or(host) } else { site };
    json!({"id": site, "name": name, "displayName": name, "description": "",
        "createdDateTime": "2024-01-01T00:00:00Z", "lastModifiedDateTime": now_iso(),
        "webUrl": format!("https://{host}/sites/{name}"), "siteCollection": {"hostname": host}})
}

fn list_json(list: &List, with_columns: bool, _origin: &str) -> Value {
    let host = site_host(&list.site);
    let mut v = json!({
        "@odata.etag": format!("\"{},{}\"", list.id, list.columns.len()),
        "createdDateTime": list.created,
        "description": list.description,
        "eTag": format!("\"{},{}\"", list.id, list.columns.len()),
        "id": list.id,
        "lastModifiedDateTime": list.modified,
        "name": list.name,
        "webUrl": format!("https://{host}/sites/{}/Lists/{}", list.site, list.name),
        "displayName": list.display_name,
        "createdBy": {"user": {"displayName": "SyncBridge"}},
        "parentReference": {"siteId": list.site},
        "list": {"contentTypesEnabled": false, "hidden": false, "template": list.template},
    });
    if with_columns {
        v["columns"] = Value::Array(list.columns.iter().map(|c| c.to_json()).collect());
    }
    v
}

fn get_lists(state: &State, req: &Req, site: &str) -> Result<Resp, GraphError> {
    let filter = match query_get(&req.query, "filter") {
        Some(f) => Some(parse_filter(f).map_err(|e| GraphError::bad(format!("Invalid filter clause: {e}")))?),
        None => None,
    };
    if let Some(f) = &filter {
        for p in f.preds() {
            if !["displayName", "name", "id"].iter().any(|n| n.eq_ignore_ascii_case(p.prop())) {
                return Err(GraphError::bad(format!("Invalid filter clause: unsupported property '{}'", p.prop())));
            }
        }
    }
    let mut lists: Vec<&List> = state.lists.values().filter(|l| l.site == site).collect();
    lists.sort_by_key(|l| l.order);
    let value: Vec<Value> = lists
        .into_iter()
        .filter(|l| {
            filter.as_ref().is_none_or(|f| {
                f.eval(&|p| {
                    let v = match p.prop().to_ascii_lowercase().as_str() {
                        "displayname" => &l.display_name,
                        "name" => &l.name,
                        _ => &l.id,
                    };
                    match p {
                        Pred::Cmp { op, lit: Literal::Str(s), .. } => op.holds(v.to_lowercase().cmp(&s.to_lowercase())),
                        Pred::Cmp { op, .. } => *op == CmpOp::Ne,
                        Pred::StartsWith { prefix, .. } => v.to_lowercase().starts_with(&prefix.to_lowercase()),
                    }
                })
            })
        })
        .map(|l| list_json(l, false, &req.origin))
        .collect();
    Ok(Resp::json(200, json!({"value": value})))
}

/// Which fields to include with items.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum FieldsMode {
    None,
    All,
    Select(Vec<String>),
}

fn fields_mode(query: &[(String, String)]) -> FieldsMode {
    let Some(expand) = query_get(query, "expand") else { return FieldsMode::None };
    let mut depth = 0;
    let mut parts = Vec::new();
    let mut cur = String::new();
    for c in expand.chars() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(std::mem::take(&mut cur));
                continue;
            }
            _ => {}
        }
        cur.push(c);
    }
    parts.push(cur);
    for p in parts {
        let p = p.trim();
        let Some(rest) = p.strip_prefix("fields") else { continue };
        let rest = rest.trim();
        if rest.is_empty() {
            return FieldsMode::All;
        }
        let inner = rest.trim_start_matches('(').trim_end_matches(')');
        for opt in inner.split(';') {
            if let Some((k, v)) = opt.split_once('=') {
                if k.trim().trim_start_matches('$').eq_ignore_ascii_case("select") {
                    return FieldsMode::Select(v.split(',').map(|s| s.trim().to_string()).collect());
                }
            }
        }
        return FieldsMode::All;
    }
    FieldsMode::None
}

/// The item's `fields` as Graph returns them.
pub(crate) fn fields_json(list: &List, item: &Item, select: Option<&[String]>) -> Map<String, Value> {
    let mut m = Map::new();
    let title = item.fields.get("Title").cloned().unwrap_or(Value::Null);
    m.insert("id".into(), json!(item.id.to_string()));
    m.insert("ContentType".into(), json!("Item"));
    m.insert("Modified".into(), json!(item.modified));
    m.insert("Created".into(), json!(item.created));
    m.insert("AuthorLookupId".into(), json!(item.author.to_string()));
    m.insert("EditorLookupId".into(), json!(item.editor.to_string()));
    m.insert("AppAuthorLookupId".into(), json!("5"));
    m.insert("AppEditorLookupId".into(), json!("5"));
    m.insert("_UIVersionString".into(), json!(format!("{}.0", item.version)));
    m.insert("Attachments".into(), json!(false));
    m.insert("Edit".into(), json!(""));
    if !title.is_null() {
        m.insert("LinkTitleNoMenu".into(), title.clone());
        m.insert("LinkTitle".into(), title);
    }
    m.insert("ItemChildCount".into(), json!("0"));
    m.insert("FolderChildCount".into(), json!("0"));
    m.insert("_ComplianceFlags".into(), json!(""));
    m.insert("_ComplianceTag".into(), json!(""));
    m.insert("_ComplianceTagWrittenTime".into(), json!(""));
    m.insert("_ComplianceTagUserId".into(), json!(""));
    for (k, v) in &item.fields {
        m.insert(k.clone(), v.clone());
    }
    if let Some(sel) = select {
        m.retain(|k, _| {
            sel.iter().any(|s| {
                s.eq_ignore_ascii_case(k) || list.column(s).is_some_and(|c| c.field_name().eq_ignore_ascii_case(k))
            })
        });
    }
    let mut out = Map::new();
    out.insert("@odata.etag".into(), json!(item.etag()));
    out.extend(m);
    out
}

/// The item as a `listItem` resource.
pub(crate) fn item_json(list: &List, item: &Item, mode: &FieldsMode) -> Value {
    let host = site_host(&list.site);
    let user = json!({"user": {"displayName": "SyncBridge"}, "application": {"displayName": "SyncBridge"}});
    let mut v = json!({
        "@odata.etag": item.etag(),
        "createdDateTime": item.created,
        "eTag": item.etag(),
        "id": item.id.to_string(),
        "lastModifiedDateTime": item.modified,
        "webUrl": format!("https://{host}/sites/{}/Lists/{}/{}_.000", list.site, list.name, item.id),
        "createdBy": user,
        "lastModifiedBy": user,
        "parentReference": {"id": list.id, "siteId": list.site},
        "contentType": {"id": "0x0100C3E4E0A8A4E4E04D9A2D8B5B0A8E8E1A", "name": "Item"},
    });
    match mode {
        FieldsMode::None => {}
        FieldsMode::All => v["fields"] = Value::Object(fields_json(list, item, None)),
        FieldsMode::Select(s) => v["fields"] = Value::Object(fields_json(list, item, Some(s))),
    }
    v
}

fn parse_top(req: &Req) -> Result<usize, GraphError> {
    match query_get(&req.query, "top") {
        None => Ok(DEFAULT_PAGE),
        Some(t) => match t.trim().parse::<usize>() {
            Ok(n) if n > 0 => Ok(n.min(MAX_PAGE)),
            _ => Err(GraphError::bad(format!("Invalid $top value '{t}'"))),
        },
    }
}

/// A link to the same resource with `name` set to `value` in the query.
fn link_with(req: &Req, name: &str, value: &str) -> String {
    let mut q: Vec<(String, String)> =
        req.query.iter().filter(|(k, _)| !k.trim_start_matches('$').eq_ignore_ascii_case(name)).cloned().collect();
    let key = if name == "token" { name.to_string() } else { format!("${name}") };
    q.push((key, value.to_string()));
    format!("{}/v1.0{}?{}", req.origin, req.path, encode_query(&q))
}

#[derive(Debug, PartialEq, PartialOrd)]
enum Cmpable {
    S(String),
    N(f64),
    B(bool),
}

fn as_num(v: &Value) -> Option<f64> {
    match v {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse().ok(),
        Value::Bool(b) => Some(if *b { 1.0 } else { 0.0 }),
        _ => None,
    }
}

/// The kind of a filterable field: a list column, or a built-in.
enum FieldKind<'a> {
    Column(&'a Kind),
    Id,
    Stamp,
}

fn resolve_filter_field<'a>(list: &'a List, prop: &str) -> Result<(String, FieldKind<'a>, bool), GraphError> {
    let Some(field) = prop.strip_prefix("fields/") else {
        if prop.eq_ignore_ascii_case("id") {
            return Ok(("id".into(), FieldKind::Id, true));
        }
        return Err(GraphError::bad(format!("Invalid filter clause: unsupported property '{prop}'")));
    };
    if field.eq_ignore_ascii_case("id") {
        return Ok(("id".into(), FieldKind::Id, true));
    }
    if field.eq_ignore_ascii_case("Created") || field.eq_ignore_ascii_case("Modified") {
        let name = if field.eq_ignore_ascii_case("Created") { "Created" } else { "Modified" };
        return Ok((name.into(), FieldKind::Stamp, false));
    }
    let col =
        list.column_for_field(field).ok_or_else(|| GraphError::bad(format!("Field '{field}' is not recognized")))?;
    Ok((col.field_name(), FieldKind::Column(&col.kind), col.indexed))
}

fn to_cmpable(kind: &FieldKind, v: &Value) -> Option<Cmpable> {
    match kind {
        FieldKind::Id => as_num(v).map(Cmpable::N),
        FieldKind::Stamp | FieldKind::Column(Kind::DateTime { .. }) => {
            let s = v.as_str()?;
            Some(parse_datetime(s).map(|t| Cmpable::N(t as f64)).unwrap_or_else(|| Cmpable::S(s.to_lowercase())))
        }
        FieldKind::Column(Kind::Number { .. } | Kind::Currency | Kind::Lookup { .. }) => as_num(v).map(Cmpable::N),
        FieldKind::Column(Kind::Boolean) => match v {
            Value::Bool(b) => Some(Cmpable::B(*b)),
            _ => as_num(v).map(|n| Cmpable::B(n != 0.0)),
        },
        FieldKind::Column(Kind::Text { .. } | Kind::Choice { .. }) => match v {
            Value::String(s) => Some(Cmpable::S(s.to_lowercase())),
            Value::Number(n) => Some(Cmpable::S(n.to_string())),
            Value::Bool(b) => Some(Cmpable::S(b.to_string())),
            _ => None,
        },
    }
}

fn pred_matches(list: &List, item: &Item, pred: &Pred) -> bool {
    let Ok((field, kind, _)) = resolve_filter_field(list, pred.prop()) else { return false };
    let value = match kind {
        FieldKind::Id => Some(json!(item.id)),
        FieldKind::Stamp => Some(json!(if field == "Created" { &item.created } else { &item.modified })),
        FieldKind::Column(_) => item.fields.get(&field).cloned(),
    };
    match pred {
        Pred::StartsWith { prefix, .. } => value
            .and_then(|v| v.as_str().map(|s| s.to_lowercase().starts_with(&prefix.to_lowercase())))
            .unwrap_or(false),
        Pred::Cmp { op, lit, .. } => {
            let lit_value = match lit {
                Literal::Null => return (value.is_none()) == (*op == CmpOp::Eq),
                Literal::Str(s) => json!(s),
                Literal::Num(n) => json!(n),
                Literal::Bool(b) => json!(b),
            };
            let Some(value) = value else { return *op == CmpOp::Ne };
            let (Some(a), Some(b)) = (to_cmpable(&kind, &value), to_cmpable(&kind, &lit_value)) else {
                return *op == CmpOp::Ne;
            };
            match a.partial_cmp(&b) {
                Some(ord) => op.holds(ord),
                None => *op == CmpOp::Ne,
            }
        }
    }
}

fn get_items(state: &State, req: &Req, list_id: &str) -> Result<Resp, GraphError> {
    let list = &state.lists[list_id];
    let top = parse_top(req)?;
    let filter = match query_get(&req.query, "filter") {
        Some(f) => Some(parse_filter(f).map_err(|e| GraphError::bad(format!("Invalid filter clause: {e}")))?),
        None => None,
    };
    if let Some(f) = &filter {
        let honor = req
            .header("prefer")
            .is_some_and(|p| p.to_ascii_lowercase().contains(&NON_INDEXED_PREFER.to_ascii_lowercase()));
        for p in f.preds() {
            let (field, _, indexed) = resolve_filter_field(list, p.prop())?;
            if !indexed && !honor {
                return Err(GraphError::bad(format!(
                    "Field '{field}' cannot be referenced in filter or orderby as it is not indexed. Provide the \
                     'Prefer: {NON_INDEXED_PREFER}' header to allow this, but be warned that such queries may fail \
                     on large lists."
                )));
            }
        }
    }
    let after = match query_get(&req.query, "skiptoken") {
        None => 0,
        Some(t) => b64_decode(t)
            .and_then(|b| String::from_utf8(b).ok())
            .and_then(|s| s.strip_prefix("Paged=TRUE&p_ID=").and_then(|n| n.parse::<u64>().ok()))
            .ok_or_else(|| GraphError::bad("Invalid $skiptoken"))?,
    };
    let mode = fields_mode(&req.query);
    let matching: Vec<&Item> = list
        .sorted_items()
        .into_iter()
        .filter(|i| i.id > after)
        .filter(|i| filter.as_ref().is_none_or(|f| f.eval(&|p| pred_matches(list, i, p))))
        .collect();
    let page = &matching[..matching.len().min(top)];
    let mut body = json!({"value": page.iter().map(|i| item_json(list, i, &mode)).collect::<Vec<_>>()});
    if matching.len() > top {
        let last = page.last().map_or(after, |i| i.id);
        let token = b64_encode(format!("Paged=TRUE&p_ID={last}").as_bytes());
        body["@odata.nextLink"] = json!(link_with(req, "skiptoken", &token));
    }
    Ok(Resp::json(200, body))
}

fn check_if_match(req: &Req, item: &Item) -> Result<(), GraphError> {
    let Some(want) = req.header("if-match") else { return Ok(()) };
    let want = want.trim();
    let current = item.etag();
    let strip = |s: &str| s.trim_start_matches("W/").trim_matches('"').to_string();
    if want == "*" || strip(want) == strip(&current) {
        return Ok(());
    }
    Err(GraphError::new(
        412,
        "preconditionFailed",
        format!("The request ETag value '{want}' does not match the object's ETag value '{current}'."),
    ))
}

fn create_item(state: &mut State, req: &Req, list_id: &str) -> Result<Resp, GraphError> {
    let body = req.json_body()?;
    let fields = match body.get("fields") {
        Some(Value::Object(m)) => m.clone(),
        None | Some(Value::Null) => Map::new(),
        Some(_) => return Err(GraphError::bad("The property 'fields' must be an object")),
    };
    if let Some(obj) = body.as_object() {
        if let Some(k) =
            obj.keys().find(|k| !k.starts_with('@') && k.as_str() != "fields" && k.as_str() != "contentType")
        {
            return Err(GraphError::bad(format!(
                "The property '{k}' does not exist on type 'microsoft.graph.listItem'. Make sure to only use \
                 property names that are defined by the type."
            )));
        }
    } else {
        return Err(GraphError::bad("The request body must be a JSON object"));
    }
    let list = state.lists.get_mut(list_id).expect("list exists");
    let changes = list.validate_fields(&fields, None, None)?;
    let id = insert_item(list, changes, APP_USER);
    let (list, item) = (&state.lists[list_id], &state.lists[list_id].items[&id]);
    Ok(Resp::json(201, item_json(list, item, &FieldsMode::All))
        .with_header("ETag", item.etag())
        .with_header("Location", format!("{}/v1.0{}/{id}", req.origin, req.path)))
}

fn update_item(state: &mut State, req: &Req, list_id: &str, id: u64) -> Result<Resp, GraphError> {
    let body = req.json_body()?;
    let Some(fields) = body.as_object() else {
        return Err(GraphError::bad("The request body must be a JSON object"));
    };
    let list = state.lists.get_mut(list_id).expect("list exists");
    check_if_match(req, &list.items[&id])?;
    let changes = list.validate_fields(fields, Some(id), Some(&list.items[&id].fields))?;
    let current = &list.items[&id].fields;
    let unchanged = changes.iter().all(|(k, v)| current.get(k) == v.as_ref());
    apply_edit(list, id, changes, APP_USER);
    if unchanged {
        state.unchanged_writes += 1;
    }
    let (list, item) = (&state.lists[list_id], &state.lists[list_id].items[&id]);
    Ok(Resp::json(200, Value::Object(fields_json(list, item, None))).with_header("ETag", item.etag()))
}

/// Adds an item made of validated changes, created by `author`: version 1,
/// a place in the list's delta. Returns its id.
fn insert_item(list: &mut List, changes: Vec<(String, Option<Value>)>, author: u64) -> u64 {
    let id = list.next_item_id;
    list.next_item_id += 1;
    list.seq += 1;
    let now = now_iso();
    let mut item = Item {
        id,
        guid: guid(),
        version: 1,
        fields: Map::new(),
        created: now.clone(),
        modified: now,
        created_ms: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0),
        seq: list.seq,
        author,
        editor: author,
    };
    for (k, v) in changes.into_iter().filter_map(|(k, v)| v.map(|v| (k, v))) {
        item.fields.insert(k, v);
    }
    list.items.insert(id, item);
    id
}

/// Removes an item, leaving a tombstone for the delta.
fn remove_item(list: &mut List, id: u64) {
    list.items.remove(&id);
    list.seq += 1;
    list.tombstones.insert(id, list.seq);
}

/// Writes validated changes to an item as `editor`: a new version, eTag and
/// `Modified`, and a place in the list's delta.
fn apply_edit(list: &mut List, id: u64, changes: Vec<(String, Option<Value>)>, editor: u64) {
    list.seq += 1;
    let seq = list.seq;
    let item = list.items.get_mut(&id).expect("item exists");
    for (k, v) in changes {
        match v {
            Some(v) => item.fields.insert(k, v),
            None => item.fields.remove(&k),
        };
    }
    item.version += 1;
    item.modified = now_iso();
    item.seq = seq;
    item.editor = editor;
    list.modified = item.modified.clone();
}

/// The list with this display name and the item with this `SyncKey`.
fn person_target<'a>(state: &'a mut State, list: &str, sync_key: &str) -> Result<(&'a mut List, u64), String> {
    let l = state.lists.values_mut().find(|l| l.display_name == list).ok_or(format!("no list {list}"))?;
    let id = l
        .items
        .values()
        .find(|i| i.fields.get("SyncKey").and_then(Value::as_str) == Some(sync_key))
        .map(|i| i.id)
        .ok_or(format!("no item with SyncKey {sync_key} in {list}"))?;
    Ok((l, id))
}

/// A person edits an item "in SharePoint" (not through the app): the fields
/// are checked as for any write, the version, eTag and `Modified` move on,
/// and `EditorLookupId` becomes the person's.
pub(crate) fn person_edit(
    state: &mut State,
    list: &str,
    sync_key: &str,
    fields: &Map<String, Value>,
    person: u64,
) -> Result<(), String> {
    let (l, id) = person_target(state, list, sync_key)?;
    let changes = l.validate_fields(fields, Some(id), Some(&l.items[&id].fields)).map_err(|e| e.message)?;
    apply_edit(l, id, changes, person);
    Ok(())
}

/// A person creates an item in the list (it has no `SyncKey` unless given).
pub(crate) fn person_create(
    state: &mut State,
    list: &str,
    fields: &Map<String, Value>,
    person: u64,
) -> Result<u64, String> {
    let l = state.lists.values_mut().find(|l| l.display_name == list).ok_or(format!("no list {list}"))?;
    let changes = l.validate_fields(fields, None, None).map_err(|e| e.message)?;
    Ok(insert_item(l, changes, person))
}

/// The service resets the list's delta state: every token issued so far is
/// answered `410 Gone` with `code` (one of the resync codes of the
/// listitem-delta page and the Graph errors page).
pub(crate) fn reset_delta(state: &mut State, list: &str, code: &str) -> Result<(), String> {
    const CODES: [&str; 4] =
        ["resyncRequired", "resyncChangesApplyDifferences", "resyncChangesUploadDifferences", "syncStateNotFound"];
    let code = CODES.into_iter().find(|c| *c == code).ok_or(format!("unknown resync code {code}: one of {CODES:?}"))?;
    let l = state.lists.values_mut().find(|l| l.display_name == list).ok_or(format!("no list {list}"))?;
    let tag: [u8; 4] = rand::random();
    l.delta_tag = tag.iter().map(|b| format!("{b:02x}")).collect();
    l.resync_code = code;
    Ok(())
}

/// A person deletes an item from the list.
pub(crate) fn person_delete(state: &mut State, list: &str, sync_key: &str) -> Result<(), String> {
    let (l, id) = person_target(state, list, sync_key)?;
    remove_item(l, id);
    Ok(())
}

fn delete_item(state: &mut State, req: &Req, list_id: &str, id: u64) -> Result<Resp, GraphError> {
    let list = state.lists.get_mut(list_id).expect("list exists");
    check_if_match(req, &list.items[&id])?;
    remove_item(list, id);
    Ok(Resp::empty(204))
}

fn delta_token(list: &List, seq: u64) -> String {
    b64_encode(format!("{}:{seq}", list.delta_tag).as_bytes())
}

fn parse_delta_token(list: &List, token: &str) -> Option<u64> {
    let text = String::from_utf8(b64_decode(token)?).ok()?;
    let (tag, seq) = text.split_once(':')?;
    let seq: u64 = seq.parse().ok()?;
    (tag == list.delta_tag && seq <= list.seq).then_some(seq)
}

fn delta(state: &State, req: &Req, list_id: &str) -> Result<Resp, GraphError> {
    let list = &state.lists[list_id];
    let top = parse_top(req)?;
    let since = match query_get(&req.query, "token") {
        None => None,
        Some("latest") => {
            return Ok(Resp::json(
                200,
                json!({"value": [], "@odata.deltaLink": link_with(req, "token", &delta_token(list, list.seq))}),
            ));
        }
        Some(t) => match parse_delta_token(list, t) {
            Some(seq) => Some(seq),
            None => {
                // 410 Gone, with the resync code and a Location that starts a
                // fresh enumeration (the listitem-delta page).
                let e = GraphError::new(
                    410,
                    list.resync_code,
                    "Resync required. Replace any local items with the server's version (including deletes) if you're \
                     sure that the service was up to date with your local changes when you last sync'd. Upload any \
                     local changes that the server doesn't know about.",
                );
                let fresh: Vec<(String, String)> =
                    req.query.iter().filter(|(k, _)| !k.eq_ignore_ascii_case("token")).cloned().collect();
                let location = if fresh.is_empty() {
                    format!("{}/v1.0{}", req.origin, req.path)
                } else {
                    format!("{}/v1.0{}?{}", req.origin, req.path, encode_query(&fresh))
                };
                return Ok(Resp::error(e).with_header("Location", location));
            }
        },
    };
    // Each entry: (change seq, item id, the item if it still exists).
    let mut entries: Vec<(u64, u64, Option<&Item>)> =
        list.items.values().filter(|i| since.is_none_or(|s| i.seq > s)).map(|i| (i.seq, i.id, Some(i))).collect();
    if let Some(s) = since {
        entries.extend(list.tombstones.iter().filter(|(_, seq)| **seq > s).map(|(id, seq)| (*seq, *id, None)));
    }
    entries.sort_by_key(|e| e.0);
    let page = &entries[..entries.len().min(top)];
    // `fields` only when expanded, and then only those selected (the query
    // options live on in the links).
    let mode = fields_mode(&req.query);
    let value: Vec<Value> = page
        .iter()
        .map(|(_, id, item)| match item {
            Some(item) => item_json(list, item, &mode),
            None => json!({"id": id.to_string(), "deleted": {"state": "deleted"}}),
        })
        .collect();
    let mut body = json!({"value": value});
    if entries.len() > top {
        let last = page.last().map_or(since.unwrap_or(0), |e| e.0);
        body["@odata.nextLink"] = json!(link_with(req, "token", &delta_token(list, last)));
    } else {
        body["@odata.deltaLink"] = json!(link_with(req, "token", &delta_token(list, list.seq)));
    }
    Ok(Resp::json(200, body))
}

/// Charges, throttles, handles and counts one authorized request.
pub(crate) fn serve(state: &mut State, req: &Req) -> Resp {
    if let Err(secs) = state.charge(cost(req)) {
        return Resp::throttled(secs);
    }
    let resp = handle(state, req);
    if resp.status < 400 && is_write(&req.method) {
        state.meter.wrote();
    }
    resp
}

struct Inner {
    id: String,
    method: String,
    url: String,
    headers: HashMap<String, String>,
    body: Option<Value>,
    depends_on: Vec<String>,
}

fn batch_error(message: impl Into<String>) -> Resp {
    Resp::error(GraphError::new(400, "BadRequest", message))
}

fn parse_inner(v: &Value) -> Result<Inner, String> {
    let o = v.as_object().ok_or("Each request in a batch must be an object")?;
    let id = match o.get("id") {
        Some(Value::String(s)) if !s.is_empty() => s.clone(),
        Some(Value::Number(n)) => n.to_string(),
        _ => return Err("Each request in a batch requires an 'id'".into()),
    };
    let method = o
        .get("method")
        .and_then(Value::as_str)
        .ok_or_else(|| format!("Request id '{id}' has no 'method'"))?
        .to_ascii_uppercase();
    let url = o.get("url").and_then(Value::as_str).ok_or_else(|| format!("Request id '{id}' has no 'url'"))?;
    let mut headers = HashMap::new();
    match o.get("headers") {
        None | Some(Value::Null) => {}
        Some(Value::Object(h)) => {
            for (k, v) in h {
                let v = match v {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                headers.insert(k.to_ascii_lowercase(), v);
            }
        }
        Some(_) => return Err(format!("The headers of request id '{id}' must be an object")),
    }
    let depends_on = match o.get("dependsOn") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(a)) => a
            .iter()
            .map(|d| d.as_str().map(str::to_string))
            .collect::<Option<_>>()
            .ok_or_else(|| format!("The dependsOn of request id '{id}' must be an array of strings"))?,
        Some(_) => return Err(format!("The dependsOn of request id '{id}' must be an array")),
    };
    let body = o.get("body").filter(|b| !b.is_null()).cloned();
    if matches!(method.as_str(), "POST" | "PATCH" | "PUT") && (body.is_none() || !headers.contains_key("content-type"))
    {
        return Err(format!("Write request id : {id} does not contain Content-Type header or body."));
    }
    Ok(Inner { id, method, url: url.to_string(), headers, body, depends_on })
}

/// Serves an authorized `$batch` envelope. With `drop_half`, the last half of
/// the requests (at least one) is neither executed nor answered.
pub(crate) fn serve_batch(state: &mut State, req: &Req, drop_half: bool) -> Resp {
    let body = match req.json_body() {
        Ok(b) => b,
        Err(e) => return Resp::error(e),
    };
    let Some(requests) = body.get("requests").and_then(Value::as_array) else {
        return batch_error("Invalid batch payload: a 'requests' array is required.");
    };
    if requests.is_empty() {
        return batch_error("Invalid batch payload: the 'requests' array is empty.");
    }
    if requests.len() > BATCH_LIMIT {
        return batch_error(format!("The number of requests in the batch exceeds the limit of {BATCH_LIMIT}."));
    }
    let inners = match requests.iter().map(parse_inner).collect::<Result<Vec<_>, _>>() {
        Ok(v) => v,
        Err(e) => return batch_error(e),
    };
    let mut ids = HashSet::new();
    for r in &inners {
        if !ids.insert(r.id.as_str()) {
            return batch_error(format!("Request id '{}' is used more than once in the batch.", r.id));
        }
    }
    for r in &inners {
        if let Some(d) = r.depends_on.iter().find(|d| !ids.contains(d.as_str()) || **d == r.id) {
            return batch_error(format!("Request id '{}' depends on an unknown request id '{d}'.", r.id));
        }
    }
    // Graph runs a batch either fully in parallel (no dependsOn) or fully in
    // sequence (each request after the one before it), and refuses anything
    // else as a whole.
    if inners.iter().any(|r| !r.depends_on.is_empty()) {
        let sequential = inners.iter().enumerate().all(|(i, r)| match i {
            0 => r.depends_on.is_empty(),
            _ => r.depends_on.len() == 1 && r.depends_on[0] == inners[i - 1].id,
        });
        if !sequential {
            return batch_error(SHAPE_REFUSED);
        }
    }
    let omit_from = if drop_half { inners.len() - (inners.len() / 2).max(1) } else { inners.len() };
    let mut results: HashMap<String, Option<Resp>> = HashMap::new();
    while results.len() < inners.len() {
        let ready: Vec<usize> = (0..inners.len())
            .filter(|&i| {
                !results.contains_key(&inners[i].id) && inners[i].depends_on.iter().all(|d| results.contains_key(d))
            })
            .collect();
        if ready.is_empty() {
            return batch_error("The dependsOn relations of the batch form a cycle.");
        }
        for i in ready {
            let r = &inners[i];
            if i >= omit_from {
                results.insert(r.id.clone(), None);
                continue;
            }
            let failed = r
                .depends_on
                .iter()
                .any(|d| results.get(d).is_none_or(|res| res.as_ref().is_none_or(|res| res.status >= 400)));
            state.meter.stats.requests += 1;
            let resp = if failed {
                Resp::error(GraphError::new(424, "failedDependency", "The request depends on a request that failed."))
            } else {
                let url = r.url.trim();
                if url.starts_with("http://") || url.starts_with("https://") {
                    batch_error("Batch request urls must be relative to the Graph version (e.g. /sites/...).")
                } else {
                    let url = if url.starts_with('/') { url.to_string() } else { format!("/{url}") };
                    let (path, query) = url.split_once('?').unwrap_or((&url, ""));
                    let inner = Req {
                        method: r.method.clone(),
                        path: path.to_string(),
                        query: parse_query(query),
                        headers: r.headers.clone(),
                        body: Ok(r.body.clone()),
                        origin: req.origin.clone(),
                    };
                    serve(state, &inner)
                }
            };
            results.insert(r.id.clone(), Some(resp));
        }
    }
    let mut responses: Vec<Value> = inners
        .iter()
        .filter_map(|r| {
            let resp = results.get(&r.id)?.as_ref()?;
            let mut headers = Map::new();
            for (k, v) in &resp.headers {
                headers.insert(k.clone(), json!(v));
            }
            let mut out = json!({"id": r.id, "status": resp.status});
            if let Some(b) = &resp.body {
                headers.insert("Content-Type".into(), json!(super::GRAPH_CONTENT_TYPE));
                out["body"] = b.clone();
            }
            out["headers"] = Value::Object(headers);
            Some(out)
        })
        .collect();
    // "Individual responses might appear in a different order than the requests."
    rand::seq::SliceRandom::shuffle(responses.as_mut_slice(), &mut state.rng);
    Resp::json(200, json!({"responses": responses}))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expand_forms() {
        let q = |s: &str| parse_query(s);
        assert_eq!(fields_mode(&q("expand=fields")), FieldsMode::All);
        assert_eq!(fields_mode(&q("$expand=fields")), FieldsMode::All);
        assert_eq!(fields_mode(&q("")), FieldsMode::None);
        assert_eq!(
            fields_mode(&q("$expand=fields($select=Title,SyncKey)")),
            FieldsMode::Select(vec!["Title".into(), "SyncKey".into()])
        );
    }

    #[test]
    fn site_paths() {
        let segs: Vec<String> = ["contoso.sharepoint.com:", "sites", "Team:", "lists"].map(String::from).to_vec();
        let (id, rest) = resolve_site(&segs).unwrap();
        assert!(id.starts_with("contoso.sharepoint.com,"));
        assert_eq!(rest, ["lists".to_string()]);
        let segs2: Vec<String> = ["contoso.sharepoint.com:", "sites", "Team"].map(String::from).to_vec();
        assert_eq!(resolve_site(&segs2).unwrap().0, id);
    }
}
