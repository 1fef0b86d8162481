//! The Graph emulator's state: tokens, the throttling window, the counters,
//! and the SharePoint sites, lists, columns and items.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use serde_json::{json, Map, Value};

use super::odata::{format_unix, guid, now_iso, parse_datetime};
use super::{EmulatorConfig, ItemSnapshot, ListSnapshot};
use crate::emulator::Meter;

/// The sliding window the budget applies to.
pub(crate) const WINDOW: Duration = Duration::from_secs(60);

/// Field names SharePoint maintains itself; they cannot be written.
pub(crate) const READ_ONLY_FIELDS: &[&str] = &[
    "id",
    "ID",
    "ContentType",
    "Created",
    "Modified",
    "AuthorLookupId",
    "EditorLookupId",
    "Author",
    "Editor",
    "_UIVersionString",
    "Attachments",
    "Edit",
    "LinkTitle",
    "LinkTitleNoMenu",
    "ItemChildCount",
    "FolderChildCount",
    "AppAuthorLookupId",
    "AppEditorLookupId",
    "_ComplianceFlags",
    "_ComplianceTag",
    "_ComplianceTagWrittenTime",
    "_ComplianceTagUserId",
];

/// A Graph-level failure: HTTP status, error code, message.
#[derive(Debug, Clone)]
pub(crate) struct GraphError {
    pub status: u16,
    pub code: &'static str,
    pub message: String,
}

impl GraphError {
    pub(crate) fn new(status: u16, code: &'static str, message: impl Into<String>) -> Self {
        Self { status, code, message: message.into() }
    }

    pub(crate) fn bad(message: impl Into<String>) -> Self {
        Self::new(400, "invalidRequest", message)
    }

    pub(crate) fn not_found() -> Self {
        Self::new(404, "itemNotFound", "The resource could not be found.")
    }
}

/// The type of a column, with what validation needs.
#[derive(Debug, Clone)]
pub(crate) enum Kind {
    Text { multi: bool, max_len: usize },
    Number { min: Option<f64>, max: Option<f64> },
    Currency,
    Boolean,
    DateTime { date_only: bool },
    Choice { choices: Vec<String>, allow_text: bool },
    Lookup { multi: bool },
}

/// A column definition.
#[derive(Debug, Clone)]
pub(crate) struct Column {
    pub id: String,
    pub name: String,
    pub display_name: String,
    pub description: String,
    pub kind: Kind,
    /// The facet's name (`text`, `number`, ...) and its JSON as Graph shows it.
    pub facet: (&'static str, Value),
    pub indexed: bool,
    pub hidden: bool,
    pub required: bool,
    pub enforce_unique: bool,
}

impl Column {
    /// The column as Graph's `columnDefinition` JSON.
    pub(crate) fn to_json(&self) -> Value {
        let mut m = Map::new();
        m.insert("columnGroup".into(), json!("Custom Columns"));
        m.insert("description".into(), json!(self.description));
        m.insert("displayName".into(), json!(self.display_name));
        m.insert("enforceUniqueValues".into(), json!(self.enforce_unique));
        m.insert("hidden".into(), json!(self.hidden));
        m.insert("id".into(), json!(self.id));
        m.insert("indexed".into(), json!(self.indexed));
        m.insert("name".into(), json!(self.name));
        m.insert("readOnly".into(), json!(false));
        m.insert("required".into(), json!(self.required));
        m.insert(self.facet.0.into(), self.facet.1.clone());
        Value::Object(m)
    }

    /// The field name the column's value is stored and returned under.
    pub(crate) fn field_name(&self) -> String {
        match self.kind {
            Kind::Lookup { .. } => format!("{}LookupId", self.name),
            _ => self.name.clone(),
        }
    }

    fn title() -> Column {
        Column {
            id: "fa564e0f-0c70-4ab9-b863-0177e6ddd247".into(),
            name: "Title".into(),
            display_name: "Title".into(),
            description: String::new(),
            kind: Kind::Text { multi: false, max_len: 255 },
            facet: (
                "text",
                json!({"allowMultipleLines": false, "appendChangesToExistingText": false,
                       "linesForEditing": 0, "maxLength": 255}),
            ),
            indexed: false,
            hidden: false,
            required: false,
            enforce_unique: false,
        }
    }
}

/// Read-only system columns shown by `GET .../columns` after the list's own.
pub(crate) fn system_columns() -> Vec<Value> {
    let sys = |name: &str, facet: &str, body: Value| {
        json!({"columnGroup": "_Hidden", "description": "", "displayName": name, "enforceUniqueValues": false,
               "hidden": false, "id": super::odata::stable_guid(name), "indexed": false, "name": name,
               "readOnly": true, "required": false, facet: body})
    };
    vec![
        sys("ID", "number", json!({})),
        sys("ContentType", "text", json!({})),
        sys("Modified", "dateTime", json!({"displayAs": "default", "format": "dateTime"})),
        sys("Created", "dateTime", json!({"displayAs": "default", "format": "dateTime"})),
        sys("Author", "personOrGroup", json!({"allowMultipleSelection": false, "chooseFromType": "peopleOnly"})),
        sys("Editor", "personOrGroup", json!({"allowMultipleSelection": false, "chooseFromType": "peopleOnly"})),
        sys("_UIVersionString", "text", json!({})),
        sys("Attachments", "boolean", json!({})),
    ]
}

/// A list item.
#[derive(Debug, Clone)]
pub(crate) struct Item {
    pub id: u64,
    pub guid: String,
    pub version: u64,
    /// The values of the list's own columns (lookups as `XLookupId`).
    pub fields: Map<String, Value>,
    pub created: String,
    pub modified: String,
    /// When it was created, in milliseconds since the Unix epoch (for latency figures).
    pub created_ms: u64,
    /// The list's change sequence number at this item's last change.
    pub seq: u64,
    /// Who created it and who changed it last (site user ids:
    /// [`APP_USER`] for the app, a person's id for an edit made "in
    /// SharePoint").
    pub author: u64,
    pub editor: u64,
}

/// The site user id SharePoint shows for writes of an app-only token
/// ("SharePoint App").
pub const APP_USER: u64 = 1_073_741_822;

impl Item {
    /// `"guid,version"`, quotes included, as Graph writes eTags.
    pub(crate) fn etag(&self) -> String {
        format!("\"{},{}\"", self.guid, self.version)
    }
}

/// A SharePoint list.
#[derive(Debug, Clone)]
pub(crate) struct List {
    pub id: String,
    pub site: String,
    pub display_name: String,
    pub name: String,
    pub description: String,
    pub template: String,
    pub order: u64,
    pub created: String,
    pub modified: String,
    /// `Title` first, then the list's own columns.
    pub columns: Vec<Column>,
    pub items: HashMap<u64, Item>,
    /// Deleted item id → the change sequence number of the deletion.
    pub tombstones: HashMap<u64, u64>,
    pub next_item_id: u64,
    /// Bumped by every item change; delta tokens name a value of it.
    pub seq: u64,
    /// Distinguishes this list's delta tokens from other lists' (and from
    /// its own before a reset).
    pub delta_tag: String,
    /// The code a delta answers a token of before the last reset with
    /// (`resyncRequired` unless a reset said otherwise).
    pub resync_code: &'static str,
    /// The site's time zone (its regional settings): a date-only column
    /// holds the instant of local midnight in it.
    pub time_zone: jiff::tz::TimeZone,
}

impl List {
    /// The column named `name` (case-insensitive, like SharePoint).
    pub(crate) fn column(&self, name: &str) -> Option<&Column> {
        self.columns.iter().find(|c| c.name.eq_ignore_ascii_case(name))
    }

    /// The column whose stored field is `field` (`X` or, for lookups, `XLookupId`).
    pub(crate) fn column_for_field(&self, field: &str) -> Option<&Column> {
        self.columns.iter().find(|c| c.field_name().eq_ignore_ascii_case(field)).or_else(|| {
            // A lookup can also be addressed by its own name.
            self.columns.iter().find(|c| matches!(c.kind, Kind::Lookup { .. }) && c.name.eq_ignore_ascii_case(field))
        })
    }

    /// The items in id order.
    pub(crate) fn sorted_items(&self) -> Vec<&Item> {
        let mut v: Vec<&Item> = self.items.values().collect();
        v.sort_by_key(|i| i.id);
        v
    }

    /// Validates and normalizes a `fields` object for a create or update,
    /// returning the changes (`None` = clear the field).
    pub(crate) fn validate_fields(
        &self,
        body: &Map<String, Value>,
        exclude_item: Option<u64>,
        current: Option<&Map<String, Value>>,
    ) -> Result<Vec<(String, Option<Value>)>, GraphError> {
        let mut out = Vec::new();
        for (key, value) in body {
            if key.contains('@') {
                continue; // OData annotations such as "X@odata.type"
            }
            if READ_ONLY_FIELDS.contains(&key.as_str()) {
                return Err(GraphError::bad(format!("Field '{key}' is read-only")));
            }
            let Some(col) = self.column_for_field(key) else {
                return Err(GraphError::bad(format!("Field '{key}' is not recognized")));
            };
            out.push((col.field_name(), normalize(col, value, &self.time_zone)?));
        }
        for col in self.columns.iter().filter(|c| c.enforce_unique) {
            let field = col.field_name();
            let new = out.iter().find(|(f, _)| *f == field).map(|(_, v)| v.clone());
            let value = match new {
                Some(v) => v,
                None => current.and_then(|c| c.get(&field).cloned()),
            };
            let Some(value) = value else { continue };
            let clash = self
                .items
                .values()
                .any(|i| Some(i.id) != exclude_item && i.fields.get(&field).is_some_and(|v| values_equal(v, &value)));
            if clash {
                return Err(GraphError::new(
                    409,
                    "nameAlreadyExists",
                    format!(
                        "The list item could not be added or updated because duplicate values were found in the \
                         following field(s) in the list: {}.",
                        col.name
                    ),
                ));
            }
        }
        Ok(out)
    }

    /// The list as a snapshot for inspection.
    pub(crate) fn snapshot(&self) -> ListSnapshot {
        ListSnapshot {
            id: self.id.clone(),
            site_id: self.site.clone(),
            display_name: self.display_name.clone(),
            columns: self.columns.iter().map(Column::to_json).collect(),
            items: self
                .sorted_items()
                .into_iter()
                .map(|i| ItemSnapshot {
                    id: i.id.to_string(),
                    etag: i.etag(),
                    fields: i.fields.clone(),
                    created_ms: i.created_ms,
                })
                .collect(),
        }
    }
}

fn values_equal(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::String(x), Value::String(y)) => x.to_lowercase() == y.to_lowercase(),
        (Value::Number(x), Value::Number(y)) => x.as_f64() == y.as_f64(),
        _ => a == b,
    }
}

fn lookup_id(col: &Column, v: &Value) -> Result<Value, GraphError> {
    let id = match v {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => s.trim().parse::<u64>().ok(),
        _ => None,
    };
    match id {
        Some(id) if id > 0 => Ok(Value::String(id.to_string())),
        _ => Err(GraphError::bad(format!("Invalid lookup id {v} for field '{}LookupId'", col.name))),
    }
}

/// The time zone of a site by its IANA name (the emulator's configuration
/// was checked when it started).
pub(crate) fn site_time_zone(name: &str) -> jiff::tz::TimeZone {
    jiff::tz::TimeZone::get(name).unwrap_or(jiff::tz::TimeZone::UTC)
}

/// The instant of local midnight, in `tz`, of the day `secs` (seconds since
/// the Unix epoch) falls on there: what a date-only column keeps.
pub(crate) fn local_midnight(secs: i64, tz: &jiff::tz::TimeZone) -> Option<i64> {
    let ts = jiff::Timestamp::from_second(secs).ok()?;
    let day = ts.to_zoned(tz.clone()).date();
    Some(day.to_zoned(tz.clone()).ok()?.timestamp().as_second())
}

/// A number as SharePoint keeps it: a double (an integer beyond 2^53 comes
/// back rounded), written without a fraction when it has none.
fn as_double(n: &serde_json::Number) -> Option<Value> {
    let f = n.as_f64()?;
    if f.fract() == 0.0 && f.abs() < 9.2e18 {
        Some(Value::from(f as i64))
    } else {
        serde_json::Number::from_f64(f).map(Value::Number)
    }
}

/// Checks a value against a column's type and returns it as stored.
pub(crate) fn normalize(col: &Column, value: &Value, tz: &jiff::tz::TimeZone) -> Result<Option<Value>, GraphError> {
    if value.is_null() {
        return Ok(None);
    }
    let mismatch = || {
        let want = match col.kind {
            Kind::Text { .. } | Kind::Choice { .. } => "Edm.String",
            Kind::Number { .. } | Kind::Currency => "Edm.Double",
            Kind::Boolean => "Edm.Boolean",
            Kind::DateTime { .. } => "Edm.DateTimeOffset",
            Kind::Lookup { .. } => "Edm.Int32",
        };
        GraphError::bad(format!("Invalid value {value} for field '{}': a value of type {want} was expected", col.name))
    };
    let v = match &col.kind {
        // Graph (OData JSON, IEEE754Compatible=false) takes each type in its
        // own JSON form only: text a string, a number a number, a boolean a
        // boolean, a date and time an ISO 8601 string.
        Kind::Text { multi, max_len } => {
            let Value::String(s) = value else { return Err(mismatch()) };
            let s = s.clone();
            if !multi && s.chars().count() > *max_len {
                return Err(GraphError::bad(format!(
                    "The value of field '{}' exceeds the maximum length of {max_len} characters",
                    col.name
                )));
            }
            Value::String(s)
        }
        Kind::Number { .. } | Kind::Currency => {
            let Value::Number(n) = value else { return Err(mismatch()) };
            let stored = as_double(n).ok_or_else(mismatch)?;
            if let Kind::Number { min, max } = col.kind {
                let f = n.as_f64().unwrap_or(0.0);
                if min.is_some_and(|m| f < m) || max.is_some_and(|m| f > m) {
                    return Err(GraphError::bad(format!("The value of field '{}' is out of range", col.name)));
                }
            }
            stored
        }
        Kind::Boolean => match value {
            Value::Bool(b) => Value::Bool(*b),
            _ => return Err(mismatch()),
        },
        Kind::DateTime { date_only } => {
            // Whole seconds; a value without a zone is read as UTC.
            let Some(secs) = value.as_str().and_then(parse_datetime) else { return Err(mismatch()) };
            let secs = if *date_only { local_midnight(secs, tz).ok_or_else(mismatch)? } else { secs };
            Value::String(format_unix(secs))
        }
        Kind::Choice { choices, allow_text } => {
            let Some(s) = value.as_str() else { return Err(mismatch()) };
            if !allow_text && !choices.iter().any(|c| c == s) {
                return Err(GraphError::bad(format!("Value '{s}' is not a valid choice for field '{}'", col.name)));
            }
            Value::String(s.to_string())
        }
        Kind::Lookup { multi } => {
            if *multi {
                let Some(arr) = value.as_array() else { return Err(mismatch()) };
                Value::Array(arr.iter().map(|v| lookup_id(col, v)).collect::<Result<_, _>>()?)
            } else {
                lookup_id(col, value)?
            }
        }
    };
    Ok(Some(v))
}

fn is_valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && name.len() <= 255
}

fn opt_bool(def: &Map<String, Value>, key: &str) -> Result<bool, GraphError> {
    match def.get(key) {
        None | Some(Value::Null) => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(v) => Err(GraphError::bad(format!("Invalid value {v} for column property '{key}'"))),
    }
}

const FACETS: &[&str] = &[
    "text",
    "number",
    "boolean",
    "dateTime",
    "choice",
    "currency",
    "lookup",
    "personOrGroup",
    "hyperlinkOrPicture",
    "calculated",
    "geolocation",
    "term",
    "thumbnail",
    "contentApprovalStatus",
];

/// The mutable state behind one emulator, under one mutex.
#[derive(Debug)]
pub(crate) struct State {
    pub config: EmulatorConfig,
    /// Token → expiry.
    pub tokens: HashMap<String, Instant>,
    pub budget: Option<u32>,
    /// Resource units spent, with when.
    pub window: VecDeque<(Instant, u32)>,
    /// Shuffles `$batch` responses (seeded by the configuration: reproducible).
    pub rng: rand::rngs::StdRng,
    /// The counters, and when each successful write was done.
    pub meter: Meter,
    /// App writes that changed nothing on their item (every field already
    /// held the value written): what an echo of a change pulled from the
    /// list looks like.
    pub unchanged_writes: u64,
    /// Delta pages served (each page a worker read).
    pub delta_pages: u64,
    /// Lists by id.
    pub lists: HashMap<String, List>,
    pub list_counter: u64,
}

impl State {
    pub(crate) fn new(config: EmulatorConfig) -> Self {
        Self {
            budget: config.budget_per_min,
            rng: rand::SeedableRng::seed_from_u64(config.seed),
            config,
            tokens: HashMap::new(),
            window: VecDeque::new(),
            meter: Meter::default(),
            unchanged_writes: 0,
            delta_pages: 0,
            lists: HashMap::new(),
            list_counter: 0,
        }
    }

    /// Issues a token valid for the configured lifetime.
    pub(crate) fn issue_token(&mut self) -> String {
        let bytes: [u8; 48] = rand::random();
        let token = format!("eyJ0eXAiOiJKV1QiLCJhbGciOiJub25lIn0.{}", super::odata::b64_encode(&bytes));
        // A lifetime beyond what an Instant holds (u64::MAX, to test the
        // worker with it): as good as forever.
        let now = Instant::now();
        let expiry = now
            .checked_add(Duration::from_secs(self.config.token_lifetime_secs))
            .unwrap_or_else(|| now + Duration::from_secs(100 * 365 * 86_400));
        self.tokens.insert(token.clone(), expiry);
        self.meter.stats.tokens_issued += 1;
        token
    }

    /// Checks an `Authorization` header value.
    pub(crate) fn check_auth(&self, header: Option<&str>) -> Result<(), GraphError> {
        let Some(h) = header.map(str::trim).filter(|h| !h.is_empty()) else {
            return Err(GraphError::new(401, "InvalidAuthenticationToken", "Access token is empty."));
        };
        let token = h.strip_prefix("Bearer ").or_else(|| h.strip_prefix("bearer ")).map(str::trim);
        match token.and_then(|t| self.tokens.get(t)) {
            Some(expiry) if *expiry > Instant::now() => Ok(()),
            _ => {
                Err(GraphError::new(401, "InvalidAuthenticationToken", "Access token has expired or is not yet valid."))
            }
        }
    }

    /// Charges `cost` resource units, or refuses (charging 1) and returns the
    /// `Retry-After` seconds.
    pub(crate) fn charge(&mut self, cost: u32) -> Result<(), u64> {
        let now = Instant::now();
        while self.window.front().is_some_and(|(t, _)| now.duration_since(*t) >= WINDOW) {
            self.window.pop_front();
        }
        let Some(budget) = self.budget else {
            self.window.push_back((now, cost));
            self.meter.stats.ru_used += u64::from(cost);
            return Ok(());
        };
        let used: u32 = self.window.iter().map(|(_, c)| c).sum();
        if used + cost <= budget {
            self.window.push_back((now, cost));
            self.meter.stats.ru_used += u64::from(cost);
            return Ok(());
        }
        // Refused: the attempt itself costs 1 RU, as in Graph.
        self.window.push_back((now, 1));
        self.meter.stats.ru_used += 1;
        self.meter.stats.throttled += 1;
        let mut used = used + 1;
        let mut wait = WINDOW;
        for (t, c) in &self.window {
            used -= c;
            if used + cost <= budget {
                wait = (*t + WINDOW).saturating_duration_since(now);
                break;
            }
        }
        Err(wait.as_millis().div_ceil(1000).max(1) as u64)
    }

    /// Finds a list on `site` by id or display name (case-insensitive).
    pub(crate) fn find_list(&self, site: &str, key: &str) -> Option<String> {
        if let Some(l) = self.lists.get(key).filter(|l| l.site == site) {
            return Some(l.id.clone());
        }
        let key = key.trim_start_matches('{').trim_end_matches('}');
        self.lists
            .values()
            .find(|l| {
                l.site == site
                    && (l.id.eq_ignore_ascii_case(key)
                        || l.display_name.eq_ignore_ascii_case(key)
                        || l.name.eq_ignore_ascii_case(key))
            })
            .map(|l| l.id.clone())
    }

    /// Parses a column definition from a create request.
    pub(crate) fn parse_column(&self, site: &str, def: &Value, existing: &[Column]) -> Result<Column, GraphError> {
        let Some(def) = def.as_object() else {
            return Err(GraphError::bad("A column definition must be an object"));
        };
        let name = match def.get("name") {
            Some(Value::String(s)) => s.clone(),
            Some(_) => return Err(GraphError::bad("The column property 'name' must be a string")),
            None => match def.get("displayName").and_then(Value::as_str) {
                Some(d) => d.chars().filter(|c| c.is_ascii_alphanumeric() || *c == '_').collect(),
                None => return Err(GraphError::bad("A column requires a 'name'")),
            },
        };
        if !is_valid_name(&name) {
            return Err(GraphError::bad(format!("Invalid column name '{name}'")));
        }
        let reserved = READ_ONLY_FIELDS.iter().any(|r| r.eq_ignore_ascii_case(&name));
        if reserved || existing.iter().any(|c| c.name.eq_ignore_ascii_case(&name)) {
            return Err(GraphError::bad(format!("A duplicate field name \"{name}\" was found.")));
        }
        let facets: Vec<&str> = FACETS.iter().copied().filter(|f| def.contains_key(*f)).collect();
        let facet_name = match facets.as_slice() {
            [one] => *one,
            [] => return Err(GraphError::bad(format!("Column '{name}' has no type facet (e.g. \"text\": {{}})"))),
            _ => return Err(GraphError::bad(format!("Column '{name}' has more than one type facet"))),
        };
        let empty = Map::new();
        let facet = match def.get(facet_name) {
            Some(Value::Object(m)) => m,
            Some(Value::Null) => &empty,
            _ => return Err(GraphError::bad(format!("The '{facet_name}' facet of column '{name}' must be an object"))),
        };
        let fbool = |k: &str| opt_bool(facet, k);
        let (kind, facet_json) = match facet_name {
            "text" => {
                let multi = fbool("allowMultipleLines")?;
                let max_len = match facet.get("maxLength") {
                    None | Some(Value::Null) => 255,
                    Some(v) => match v.as_u64() {
                        Some(n) if (1..=255).contains(&n) => n as usize,
                        _ => return Err(GraphError::bad(format!("Invalid maxLength {v} for column '{name}'"))),
                    },
                };
                let mut j = json!({"allowMultipleLines": multi, "appendChangesToExistingText":
                    fbool("appendChangesToExistingText")?, "linesForEditing": if multi { 6 } else { 0 }});
                if !multi {
                    j["maxLength"] = json!(max_len);
                }
                (Kind::Text { multi, max_len: if multi { usize::MAX } else { max_len } }, j)
            }
            "number" => {
                let bound = |k: &str| match facet.get(k) {
                    None | Some(Value::Null) => Ok(None),
                    Some(v) => v
                        .as_f64()
                        .map(Some)
                        .ok_or_else(|| GraphError::bad(format!("Invalid {k} {v} for column '{name}'"))),
                };
                let (min, max) = (bound("minimum")?, bound("maximum")?);
                let j = json!({"decimalPlaces": facet.get("decimalPlaces").cloned().unwrap_or(json!("automatic")),
                    "displayAs": facet.get("displayAs").cloned().unwrap_or(json!("number")),
                    "maximum": max.unwrap_or(f64::MAX), "minimum": min.unwrap_or(f64::MIN)});
                (Kind::Number { min, max }, j)
            }
            "currency" => (Kind::Currency, json!({"locale": facet.get("locale").cloned().unwrap_or(json!("en-us"))})),
            "boolean" => (Kind::Boolean, json!({})),
            "dateTime" => {
                let format = match facet.get("format") {
                    None | Some(Value::Null) => "dateTime",
                    Some(Value::String(s)) if s == "dateOnly" || s == "dateTime" => s.as_str(),
                    Some(v) => return Err(GraphError::bad(format!("Invalid dateTime format {v} for column '{name}'"))),
                };
                let j = json!({"displayAs": facet.get("displayAs").cloned().unwrap_or(json!("default")),
                    "format": format});
                (Kind::DateTime { date_only: format == "dateOnly" }, j)
            }
            "choice" => {
                let choices: Vec<String> = match facet.get("choices") {
                    Some(Value::Array(a)) => a
                        .iter()
                        .map(|c| c.as_str().map(str::to_string))
                        .collect::<Option<_>>()
                        .ok_or_else(|| GraphError::bad(format!("Invalid choices for column '{name}'")))?,
                    None => Vec::new(),
                    Some(_) => return Err(GraphError::bad(format!("Invalid choices for column '{name}'"))),
                };
                let allow_text = fbool("allowTextEntry")?;
                let j = json!({"allowTextEntry": allow_text, "choices": choices,
                    "displayAs": facet.get("displayAs").cloned().unwrap_or(json!("dropDownMenu"))});
                (Kind::Choice { choices, allow_text }, j)
            }
            "lookup" => {
                let Some(list_id) = facet.get("listId").and_then(Value::as_str) else {
                    return Err(GraphError::bad(format!("Lookup column '{name}' requires a listId")));
                };
                let target = self
                    .find_list(site, list_id)
                    .and_then(|id| self.lists.get(&id))
                    .ok_or_else(|| GraphError::bad(format!("Lookup column '{name}': list '{list_id}' not found")))?;
                let column_name = facet.get("columnName").and_then(Value::as_str).unwrap_or("Title");
                if target.column(column_name).is_none() {
                    return Err(GraphError::bad(format!(
                        "Lookup column '{name}': column '{column_name}' not found in list '{}'",
                        target.display_name
                    )));
                }
                let multi = fbool("allowMultipleValues")?;
                let j = json!({"allowMultipleValues": multi, "allowUnlimitedLength": false,
                    "columnName": column_name, "listId": target.id, "primaryLookupColumnId": null});
                (Kind::Lookup { multi }, j)
            }
            other => {
                return Err(GraphError::bad(format!("Column type '{other}' is not supported by the emulator")));
            }
        };
        let facet_name: &'static str = FACETS.iter().copied().find(|f| *f == facet_name).unwrap_or("text");
        let indexed = opt_bool(def, "indexed")?;
        let enforce_unique = opt_bool(def, "enforceUniqueValues")?;
        if enforce_unique && !indexed {
            return Err(GraphError::bad(format!(
                "Column '{name}': the column must be indexed to enforce unique values"
            )));
        }
        let text = |k: &str| def.get(k).and_then(Value::as_str).map(str::to_string);
        Ok(Column {
            id: guid(),
            display_name: text("displayName").unwrap_or_else(|| name.clone()),
            description: text("description").unwrap_or_default(),
            name,
            kind,
            facet: (facet_name, facet_json),
            indexed,
            hidden: opt_bool(def, "hidden")?,
            required: opt_bool(def, "required")?,
            enforce_unique,
        })
    }

    /// Creates a list from a `POST .../lists` body.
    pub(crate) fn create_list(&mut self, site: &str, body: &Value) -> Result<String, GraphError> {
        let Some(body) = body.as_object() else {
            return Err(GraphError::bad("The request body must be a JSON object"));
        };
        let display_name = match body.get("displayName") {
            Some(Value::String(s)) if !s.trim().is_empty() => s.clone(),
            _ => return Err(GraphError::bad("The property 'displayName' is required")),
        };
        if self.lists.values().any(|l| l.site == site && l.display_name.eq_ignore_ascii_case(&display_name)) {
            return Err(GraphError::new(
                409,
                "nameAlreadyExists",
                "A list, survey, discussion board, or document library with the specified title already exists \
                 in this Web site.  Please choose another title.",
            ));
        }
        let mut columns = vec![Column::title()];
        match body.get("columns") {
            None | Some(Value::Null) => {}
            Some(Value::Array(defs)) => {
                for def in defs {
                    let c = self.parse_column(site, def, &columns)?;
                    columns.push(c);
                }
            }
            Some(_) => return Err(GraphError::bad("The property 'columns' must be an array")),
        }
        let template = body
            .get("list")
            .and_then(|l| l.get("template"))
            .and_then(Value::as_str)
            .unwrap_or("genericList")
            .to_string();
        let mut name: String = display_name.chars().filter(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
        if name.is_empty() {
            name = "List".into();
        }
        let id = guid();
        self.list_counter += 1;
        let now = now_iso();
        let tag: [u8; 4] = rand::random();
        self.lists.insert(
            id.clone(),
            List {
                id: id.clone(),
                site: site.to_string(),
                display_name,
                name,
                description: body.get("description").and_then(Value::as_str).unwrap_or_default().to_string(),
                template,
                order: self.list_counter,
                created: now.clone(),
                modified: now,
                columns,
                items: HashMap::new(),
                tombstones: HashMap::new(),
                next_item_id: 1,
                seq: 0,
                delta_tag: tag.iter().map(|b| format!("{b:02x}")).collect(),
                resync_code: "resyncRequired",
                time_zone: site_time_zone(&self.config.time_zone),
            },
        );
        Ok(id)
    }

    /// Snapshots of every list, in creation order.
    pub(crate) fn snapshots(&self) -> Vec<ListSnapshot> {
        let mut lists: Vec<&List> = self.lists.values().collect();
        lists.sort_by_key(|l| l.order);
        lists.into_iter().map(List::snapshot).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn column(kind: Kind) -> Column {
        Column { kind, name: "V".into(), ..Column::title() }
    }

    #[test]
    fn a_date_only_column_keeps_local_midnight_in_the_site_time_zone() {
        let date = column(Kind::DateTime { date_only: true });
        let ny = site_time_zone("America/New_York");
        let keep = |v: &str, tz: &jiff::tz::TimeZone| normalize(&date, &json!(v), tz).unwrap().unwrap();
        // Across the start of daylight saving time (2026-03-08).
        assert_eq!(keep("2026-03-07T05:00:00Z", &ny), json!("2026-03-07T05:00:00Z"));
        assert_eq!(keep("2026-03-09T04:00:00Z", &ny), json!("2026-03-09T04:00:00Z"));
        // A zone-less date is read as UTC midnight: the day before in New York.
        assert_eq!(keep("2026-03-09", &ny), json!("2026-03-08T05:00:00Z"));
        assert_eq!(keep("2026-03-09", &jiff::tz::TimeZone::UTC), json!("2026-03-09T00:00:00Z"));
        // Date and time columns keep whole seconds.
        let at = column(Kind::DateTime { date_only: false });
        assert_eq!(
            normalize(&at, &json!("2026-03-09T04:00:01.999Z"), &ny).unwrap(),
            Some(json!("2026-03-09T04:00:01Z"))
        );
    }

    #[test]
    fn a_number_column_keeps_a_double() {
        let n = column(Kind::Number { min: None, max: None });
        let utc = jiff::tz::TimeZone::UTC;
        let keep = |v: Value| normalize(&n, &v, &utc).unwrap().unwrap();
        assert_eq!(keep(json!(42)), json!(42));
        assert_eq!(keep(json!(1.5)), json!(1.5));
        assert_eq!(keep(json!(9007199254740993_u64)), json!(9007199254740992_i64), "rounded as a double");
        assert!(normalize(&n, &json!("42"), &utc).is_err(), "a string is refused");
    }
}
