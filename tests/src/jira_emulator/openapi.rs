//! Requests checked against Atlassian's own description of the API
//! (`jira-issues.openapi.json`, copied unchanged from
//! `shared/api/jira-issues.openapi.json`: the subset of the Jira Cloud
//! platform REST API v3 the adapter uses). A request's path and method must
//! be an operation of it; its query parameters must be declared and of
//! their type; its JSON body must match the operation's schema (types,
//! declared properties where `additionalProperties` is false, items,
//! `$ref`s, `allOf`).

use std::sync::OnceLock;

use serde_json::Value;

/// The description, parsed once.
pub fn spec() -> &'static Value {
    static SPEC: OnceLock<Value> = OnceLock::new();
    SPEC.get_or_init(|| {
        serde_json::from_str(include_str!("jira-issues.openapi.json")).expect("the Jira description parses")
    })
}

/// Why a request is not one of the description's operations.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// No such path (404).
    NoPath,
    /// The path exists, the method does not (405).
    NoMethod,
    /// The query or body does not match (400), with the reason.
    Invalid(String),
}

/// A matched operation: its path template and path parameters.
#[derive(Debug, Clone)]
pub struct Operation {
    /// The template, as the description spells it (`/rest/api/3/issue/{issueIdOrKey}`).
    pub template: String,
    /// Path parameters by name, percent-decoded.
    pub params: Vec<(String, String)>,
    op: &'static Value,
}

impl Operation {
    /// A path parameter's value.
    pub fn param(&self, name: &str) -> &str {
        self.params.iter().find(|(n, _)| n == name).map_or("", |(_, v)| v.as_str())
    }
}

fn decode(s: &str) -> String {
    percent_encoding::percent_decode_str(s).decode_utf8_lossy().into_owned()
}

/// Finds the operation of `method` and `path` (literal segments win over
/// parameters: `/issue/bulk` is not `/issue/{issueIdOrKey}`).
pub fn operation(method: &str, path: &str) -> Result<Operation, Refusal> {
    let paths = spec()["paths"].as_object().expect("paths");
    let segs: Vec<&str> = path.trim_end_matches('/').split('/').collect();
    // (literal segments matched, the template, the path parameters)
    type Candidate<'a> = (usize, &'a String, Vec<(String, String)>);
    let mut best: Option<Candidate> = None;
    for template in paths.keys() {
        let t: Vec<&str> = template.split('/').collect();
        if t.len() != segs.len() {
            continue;
        }
        let mut params = Vec::new();
        let mut literal = 0;
        let ok = t.iter().zip(&segs).all(|(a, b)| {
            if let Some(name) = a.strip_prefix('{').and_then(|x| x.strip_suffix('}')) {
                params.push((name.to_owned(), decode(b)));
                !b.is_empty()
            } else {
                literal += 1;
                a == b
            }
        });
        if ok && best.as_ref().is_none_or(|(l, _, _)| literal > *l) {
            best = Some((literal, template, params));
        }
    }
    let (_, template, params) = best.ok_or(Refusal::NoPath)?;
    let op = paths[template].get(method.to_ascii_lowercase()).ok_or(Refusal::NoMethod)?;
    Ok(Operation { template: template.clone(), params, op })
}

/// Checks the query string against the operation's query parameters.
pub fn check_query(o: &Operation, query: &str) -> Result<(), Refusal> {
    let declared: Vec<&Value> =
        o.op["parameters"].as_array().into_iter().flatten().filter(|p| p["in"] == "query").collect();
    for (name, value) in serde_urlencoded::from_str::<Vec<(String, String)>>(query).unwrap_or_default() {
        let Some(p) = declared.iter().find(|p| p["name"] == name.as_str()) else {
            return Err(Refusal::Invalid(format!("Unrecognized query parameter '{name}'.")));
        };
        let schema = &p["schema"];
        let ty = schema["type"].as_str().unwrap_or("string");
        let item_ty = schema.pointer("/items/type").and_then(Value::as_str).unwrap_or("string");
        let ty = if ty == "array" { item_ty } else { ty };
        let ok = value.split(',').all(|v| match ty {
            "integer" => v.trim().parse::<i64>().is_ok(),
            "boolean" => v == "true" || v == "false",
            _ => true,
        });
        if !ok {
            return Err(Refusal::Invalid(format!("The value '{value}' is invalid for the parameter '{name}'.")));
        }
    }
    Ok(())
}

/// Checks a request body against the operation's `application/json` schema.
pub fn check_body(o: &Operation, body: &[u8]) -> Result<Option<Value>, Refusal> {
    let Some(rb) = o.op.get("requestBody") else {
        return Ok(None);
    };
    let required = rb["required"].as_bool().unwrap_or(false);
    if body.is_empty() {
        return if required { Err(Refusal::Invalid("No content to map due to end-of-input".into())) } else { Ok(None) };
    }
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| Refusal::Invalid(format!("Unexpected character in the request body: {e}")))?;
    if let Some(schema) = rb.pointer("/content/application~1json/schema") {
        validate(schema, &v, "").map_err(Refusal::Invalid)?;
    }
    Ok(Some(v))
}

fn resolve(schema: &Value) -> &Value {
    match schema.get("$ref").and_then(Value::as_str) {
        Some(r) => {
            let ptr = r.trim_start_matches('#');
            resolve(spec().pointer(ptr).unwrap_or(&Value::Null))
        }
        None => schema,
    }
}

/// `v` against `schema` (a subset of JSON Schema as OpenAPI 3.0 uses it).
pub fn validate(schema: &Value, v: &Value, at: &str) -> Result<(), String> {
    let s = resolve(schema);
    for sub in s.get("allOf").and_then(Value::as_array).into_iter().flatten() {
        validate(sub, v, at)?;
    }
    let name = if at.is_empty() { "the request body" } else { at };
    if v.is_null() && s.get("nullable").and_then(Value::as_bool) == Some(true) {
        return Ok(());
    }
    if let Some(ty) = s.get("type").and_then(Value::as_str) {
        let ok = match ty {
            "object" => v.is_object(),
            "array" => v.is_array(),
            "string" => v.is_string(),
            "integer" => v.as_i64().is_some() || v.as_u64().is_some(),
            "number" => v.is_number(),
            "boolean" => v.is_boolean(),
            _ => true,
        };
        if !ok {
            return Err(format!("Cannot deserialize {name}: expected {ty}, got {}", kind(v)));
        }
    }
    if let Some(options) = s.get("enum").and_then(Value::as_array) {
        if !options.contains(v) {
            return Err(format!("Cannot deserialize {name}: {v} is not one of the allowed values"));
        }
    }
    if let Value::Object(obj) = v {
        let props = s.get("properties").and_then(Value::as_object);
        for req in s.get("required").and_then(Value::as_array).into_iter().flatten().filter_map(Value::as_str) {
            if !obj.contains_key(req) {
                return Err(format!("{name}: the property '{req}' is required"));
            }
        }
        for (k, val) in obj {
            let path = if at.is_empty() { k.clone() } else { format!("{at}.{k}") };
            match props.and_then(|p| p.get(k)) {
                Some(ps) => validate(ps, val, &path)?,
                None => match s.get("additionalProperties") {
                    Some(Value::Bool(false)) => {
                        return Err(format!("Unrecognized field \"{k}\" in {name}: not marked as ignorable"))
                    }
                    Some(extra @ Value::Object(_)) => validate(extra, val, &path)?,
                    _ => {}
                },
            }
        }
    }
    if let (Value::Array(items), Some(is)) = (v, s.get("items")) {
        for (n, item) in items.iter().enumerate() {
            validate(is, item, &format!("{name}[{n}]"))?;
        }
    }
    Ok(())
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn operations_come_from_the_description() {
        let o = operation("POST", "/rest/api/3/issue/bulk").unwrap();
        assert_eq!(o.template, "/rest/api/3/issue/bulk", "a literal segment beats a parameter");
        let o = operation("PUT", "/rest/api/3/issue/SB-1").unwrap();
        assert_eq!(o.param("issueIdOrKey"), "SB-1");
        assert_eq!(operation("PATCH", "/rest/api/3/issue/SB-1").unwrap_err(), Refusal::NoMethod);
        assert_eq!(operation("GET", "/rest/api/2/issue/SB-1").unwrap_err(), Refusal::NoPath);
        let o = operation("GET", "/rest/api/3/issue/1/properties/syncbridge").unwrap();
        assert_eq!(o.param("propertyKey"), "syncbridge");
        // Every operation the adapter sends.
        for (m, p) in [
            ("POST", "/rest/api/3/search/jql"),
            ("GET", "/rest/api/3/issue/1/transitions"),
            ("POST", "/rest/api/3/issue/1/transitions"),
            ("DELETE", "/rest/api/3/issue/1"),
            ("GET", "/rest/api/3/myself"),
        ] {
            assert!(operation(m, p).is_ok(), "{m} {p}");
        }
    }

    #[test]
    fn queries_and_bodies_are_checked() {
        let search = operation("GET", "/rest/api/3/search/jql").unwrap();
        assert!(check_query(&search, "jql=project%3DSB&maxResults=10&fields=id,key").is_ok());
        assert!(matches!(check_query(&search, "maxResults=ten"), Err(Refusal::Invalid(_))));
        assert!(matches!(check_query(&search, "startAt=0"), Err(Refusal::Invalid(m)) if m.contains("startAt")));
        let post = operation("POST", "/rest/api/3/search/jql").unwrap();
        assert!(check_body(&post, br#"{"jql": "project = SB", "maxResults": 5, "fields": ["labels"]}"#).is_ok());
        let e = check_body(&post, br#"{"jql": "project = SB", "startAt": 0}"#).unwrap_err();
        assert!(matches!(&e, Refusal::Invalid(m) if m.contains("startAt")), "{e:?}");
        assert!(matches!(check_body(&post, br#"{"maxResults": "5"}"#), Err(Refusal::Invalid(_))));
        assert!(matches!(check_body(&post, b""), Err(Refusal::Invalid(_))));
        assert!(matches!(check_body(&post, b"{"), Err(Refusal::Invalid(_))));
        let bulk = operation("POST", "/rest/api/3/issue/bulk").unwrap();
        assert!(check_body(&bulk, br#"{"issueUpdates": [{"fields": {"summary": "x"}}]}"#).is_ok());
        let e = check_body(&bulk, br#"{"issueUpdates": [{"fields": [], "properties": [{"key": "k", "value": 1}]}]}"#);
        assert!(matches!(e, Err(Refusal::Invalid(m)) if m.contains("fields")));
        let e = check_body(&bulk, br#"{"issueUpdates": [{"properties": [{"key": "k", "valu": 1}]}]}"#);
        assert!(matches!(e, Err(Refusal::Invalid(m)) if m.contains("valu")));
        let tr = operation("POST", "/rest/api/3/issue/1/transitions").unwrap();
        assert!(check_body(&tr, &serde_json::to_vec(&json!({"transition": {"id": "31"}})).unwrap()).is_ok());
        assert!(check_body(&tr, &serde_json::to_vec(&json!({"transition": {"id": 31}})).unwrap()).is_err());
    }
}
