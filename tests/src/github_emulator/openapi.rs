//! Requests held to GitHub's own description of its REST API: the subset of
//! `github/rest-api-description` (through `@octokit/openapi`) in
//! `tests/api/github-issues.openapi.json`, copied unchanged from
//! `shared/api/`. A request is matched to an operation by its path template
//! and method, its path and query parameters are checked against their
//! schemas, and its JSON body against the operation's `requestBody` schema
//! (OpenAPI 3.0: `type`, `nullable`, `enum`, `properties`, `required`,
//! `additionalProperties: false`, `items`, `oneOf` / `anyOf` / `allOf`,
//! `minLength` / `maxLength`, `$ref`). The answers' shapes are checked by the
//! same code in the tests (an issue against `#/components/schemas/issue`).

use std::collections::HashMap;
use std::sync::OnceLock;

use serde_json::Value;

/// The description, as shipped with the tests.
const SPEC_TEXT: &str = include_str!("../../api/github-issues.openapi.json");

/// The parsed description.
#[derive(Debug)]
pub struct Spec {
    doc: Value,
}

/// Why a request does not fit the description.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Invalid {
    /// No path template matches (GitHub: 404 Not Found).
    NotFound,
    /// The path exists, the method does not (GitHub: 404 for REST).
    NoMethod,
    /// The body is not JSON (400 "Problems parsing JSON") or not an object
    /// (400 "Body should be a JSON object").
    BadJson(String),
    /// A value of the wrong type, a missing required field, an unknown value
    /// of an enum (422 "Invalid request." and the reason).
    Schema(String),
}

/// The operation a request matched.
#[derive(Debug)]
pub struct Matched<'a> {
    /// The path template (`/repos/{owner}/{repo}/issues`).
    pub template: &'a str,
    /// The path parameters, percent-decoded.
    pub params: HashMap<String, String>,
    /// The operation object.
    pub op: &'a Value,
}

/// The description (parsed once).
pub fn spec() -> &'static Spec {
    static SPEC: OnceLock<Spec> = OnceLock::new();
    SPEC.get_or_init(|| Spec { doc: serde_json::from_str(SPEC_TEXT).expect("the GitHub description parses") })
}

fn decode(s: &str) -> String {
    percent_encoding::percent_decode_str(s).decode_utf8_lossy().into_owned()
}

/// A JSON value as GitHub's validation messages show it.
fn shown(v: &Value) -> String {
    let s = v.to_string();
    if s.chars().count() > 80 {
        format!("{}…", s.chars().take(80).collect::<String>())
    } else {
        s
    }
}

impl Spec {
    /// `v`, or what its `$ref` points at (followed to the end).
    pub fn resolve<'a>(&'a self, mut v: &'a Value) -> &'a Value {
        for _ in 0..16 {
            match v.get("$ref").and_then(Value::as_str).and_then(|r| r.strip_prefix('#')) {
                Some(pointer) => match self.doc.pointer(pointer) {
                    Some(target) => v = target,
                    None => return v,
                },
                None => return v,
            }
        }
        v
    }

    /// A schema of `#/components/schemas/{name}`.
    pub fn schema(&self, name: &str) -> Option<&Value> {
        self.doc.pointer(&format!("/components/schemas/{name}"))
    }

    /// The operation for `method` (upper case) and `path`.
    pub fn find(&self, method: &str, path: &str) -> Result<Matched<'_>, Invalid> {
        let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
        let paths = self.doc.get("paths").and_then(Value::as_object).ok_or(Invalid::NotFound)?;
        for (template, item) in paths {
            let tsegs: Vec<&str> = template.split('/').filter(|s| !s.is_empty()).collect();
            if tsegs.len() != segs.len() {
                continue;
            }
            let mut params = HashMap::new();
            let fits =
                tsegs.iter().zip(&segs).all(|(t, s)| match t.strip_prefix('{').and_then(|t| t.strip_suffix('}')) {
                    Some(name) => {
                        params.insert(name.to_owned(), decode(s));
                        true
                    }
                    None => t == s,
                });
            if !fits {
                continue;
            }
            let op = item.get(method.to_ascii_lowercase()).ok_or(Invalid::NoMethod)?;
            // Path parameters of the wrong type find nothing (GitHub: 404).
            for p in self.parameters(item, op) {
                if p.get("in").and_then(Value::as_str) != Some("path") {
                    continue;
                }
                let name = p.get("name").and_then(Value::as_str).unwrap_or("");
                let schema = p.get("schema").map(|s| self.resolve(s)).unwrap_or(&Value::Null);
                if let Some(v) = params.get(name) {
                    if self.check(schema, &typed(schema, v), name).is_err() {
                        return Err(Invalid::NotFound);
                    }
                }
            }
            return Ok(Matched { template: template.as_str(), params, op });
        }
        Err(Invalid::NotFound)
    }

    /// The parameters of an operation (its path item's, then its own).
    fn parameters<'a>(&'a self, item: &'a Value, op: &'a Value) -> Vec<&'a Value> {
        let of = |v: &'a Value| v.get("parameters").and_then(Value::as_array).into_iter().flatten();
        of(item).chain(of(op)).map(|p| self.resolve(p)).collect()
    }

    /// Checks the query parameters the operation declares (others are
    /// ignored, as GitHub ignores them).
    pub fn check_query(&self, m: &Matched<'_>, query: &[(String, String)]) -> Result<(), Invalid> {
        for p in self.parameters(&Value::Null, m.op) {
            if p.get("in").and_then(Value::as_str) != Some("query") {
                continue;
            }
            let name = p.get("name").and_then(Value::as_str).unwrap_or("");
            let schema = p.get("schema").map(|s| self.resolve(s)).unwrap_or(&Value::Null);
            for (_, v) in query.iter().filter(|(k, _)| k == name) {
                self.check(schema, &typed(schema, v), name).map_err(Invalid::Schema)?;
            }
        }
        Ok(())
    }

    /// Checks a request body against the operation's `requestBody`: the
    /// parsed body (None when there is none and none is required).
    pub fn check_body(&self, m: &Matched<'_>, body: &[u8]) -> Result<Option<Value>, Invalid> {
        let Some(rb) = m.op.get("requestBody").map(|b| self.resolve(b)) else {
            return Ok(None);
        };
        let required = rb.get("required").and_then(Value::as_bool).unwrap_or(false);
        if body.iter().all(u8::is_ascii_whitespace) {
            return if required { Err(Invalid::BadJson("Body should be a JSON object".into())) } else { Ok(None) };
        }
        let v: Value = serde_json::from_slice(body).map_err(|_| Invalid::BadJson("Problems parsing JSON".into()))?;
        let schema = rb.pointer("/content/application~1json/schema").map(|s| self.resolve(s)).unwrap_or(&Value::Null);
        if schema.get("type").and_then(Value::as_str) == Some("object") && !v.is_object() {
            return Err(Invalid::BadJson("Body should be a JSON object".into()));
        }
        self.check(schema, &v, "").map_err(Invalid::Schema)?;
        Ok(Some(v))
    }

    /// Checks `v` against `schema`; Err: GitHub's reason (`For 'properties/title', 1.5 is not a string.`).
    pub fn check(&self, schema: &Value, v: &Value, at: &str) -> Result<(), String> {
        let schema = self.resolve(schema);
        let place = |at: &str| if at.is_empty() { "the body".to_owned() } else { format!("'{at}'") };
        if v.is_null() {
            let nullable = schema.get("nullable").and_then(Value::as_bool) == Some(true)
                || ["oneOf", "anyOf"].iter().any(|k| {
                    schema.get(*k).and_then(Value::as_array).is_some_and(|alts| {
                        alts.iter().any(|a| self.resolve(a).get("nullable").and_then(Value::as_bool) == Some(true))
                    })
                });
            return if nullable || schema.as_object().is_none_or(|o| o.is_empty()) {
                Ok(())
            } else {
                Err(format!("For {}, nil is not allowed.", place(at)))
            };
        }
        for key in ["oneOf", "anyOf"] {
            if let Some(alts) = schema.get(key).and_then(Value::as_array) {
                if !alts.iter().any(|a| self.check(a, v, at).is_ok()) {
                    return Err(format!("For {}, {} is not {}.", place(at), shown(v), self.kinds(alts)));
                }
            }
        }
        if let Some(all) = schema.get("allOf").and_then(Value::as_array) {
            for a in all {
                self.check(a, v, at)?;
            }
        }
        let ty = schema.get("type").and_then(Value::as_str).or_else(|| schema.get("properties").map(|_| "object"));
        let fits = match ty {
            None => true,
            Some("object") => v.is_object(),
            Some("array") => v.is_array(),
            Some("string") => v.is_string(),
            Some("integer") => v.is_i64() || v.is_u64(),
            Some("number") => v.is_number(),
            Some("boolean") => v.is_boolean(),
            Some(_) => true,
        };
        if !fits {
            return Err(format!("For {}, {} is not {}.", place(at), shown(v), article(ty.unwrap_or("value"))));
        }
        if let Some(values) = schema.get("enum").and_then(Value::as_array) {
            if !values.contains(v) {
                let list: Vec<String> = values.iter().map(|e| e.to_string()).collect();
                return Err(format!("For {}, {} is not one of {}.", place(at), shown(v), list.join(", ")));
            }
        }
        if let Some(s) = v.as_str() {
            let n = s.chars().count() as u64;
            if schema.get("maxLength").and_then(Value::as_u64).is_some_and(|max| n > max) {
                return Err(format!("For {}, the value is too long.", place(at)));
            }
            if schema.get("minLength").and_then(Value::as_u64).is_some_and(|min| n < min) {
                return Err(format!("For {}, the value is too short.", place(at)));
            }
        }
        if let (Some(obj), Some(props)) = (v.as_object(), schema.get("properties").and_then(Value::as_object)) {
            for r in schema.get("required").and_then(Value::as_array).into_iter().flatten().filter_map(Value::as_str) {
                if !obj.contains_key(r) {
                    return Err(format!("\"{r}\" wasn't supplied."));
                }
            }
            let closed = schema.get("additionalProperties") == Some(&Value::Bool(false));
            for (k, val) in obj {
                let inner = if at.is_empty() { format!("properties/{k}") } else { format!("{at}/{k}") };
                match props.get(k) {
                    Some(s) => self.check(s, val, &inner)?,
                    None if closed => return Err(format!("For {}, \"{k}\" is not a permitted key.", place(at))),
                    None => {}
                }
            }
        }
        if let (Some(items), Some(schema)) = (v.as_array(), schema.get("items")) {
            for (i, item) in items.iter().enumerate() {
                let inner = if at.is_empty() { format!("items/{i}") } else { format!("{at}/{i}") };
                self.check(schema, item, &inner)?;
            }
        }
        Ok(())
    }

    fn kinds(&self, alts: &[Value]) -> String {
        let names: Vec<String> = alts
            .iter()
            .map(|a| article(self.resolve(a).get("type").and_then(Value::as_str).unwrap_or("value")))
            .collect();
        names.join(" or ")
    }
}

fn article(ty: &str) -> String {
    match ty {
        "integer" | "object" | "array" => format!("an {ty}"),
        other => format!("a {other}"),
    }
}

/// A path or query value in the JSON type its schema declares (a value
/// that does not parse stays a string, and fails the check).
fn typed(schema: &Value, v: &str) -> Value {
    match schema.get("type").and_then(Value::as_str) {
        Some("integer") => v.parse::<i64>().map(Value::from).unwrap_or_else(|_| Value::String(v.to_owned())),
        Some("number") => v
            .parse::<f64>()
            .ok()
            .and_then(serde_json::Number::from_f64)
            .map(Value::Number)
            .unwrap_or_else(|| Value::String(v.to_owned())),
        Some("boolean") => match v {
            "true" => Value::Bool(true),
            "false" => Value::Bool(false),
            _ => Value::String(v.to_owned()),
        },
        _ => Value::String(v.to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn body(method: &str, path: &str, b: Value) -> Result<Option<Value>, Invalid> {
        let s = spec();
        let m = s.find(method, path)?;
        s.check_body(&m, b.to_string().as_bytes())
    }

    #[test]
    fn operations_are_found_by_template_and_method() {
        let s = spec();
        let m = s.find("POST", "/repos/octo/hello%20world/issues").unwrap();
        assert_eq!(m.template, "/repos/{owner}/{repo}/issues");
        assert_eq!(m.params["repo"], "hello world");
        assert_eq!(s.find("PATCH", "/repos/o/r/issues/12").unwrap().params["issue_number"], "12");
        assert_eq!(s.find("PATCH", "/repos/o/r/issues/twelve").unwrap_err(), Invalid::NotFound);
        assert_eq!(s.find("DELETE", "/repos/o/r/issues/12").unwrap_err(), Invalid::NoMethod);
        assert_eq!(s.find("GET", "/repos/o/r/pulls").unwrap_err(), Invalid::NotFound);
        assert!(s.find("GET", "/rate_limit").is_ok());
    }

    #[test]
    fn bodies_are_held_to_the_request_schema() {
        let create = "/repos/o/r/issues";
        assert!(body("POST", create, json!({"title": "t", "body": "b", "labels": ["x", {"name": "y"}]})).is_ok());
        assert!(body("POST", create, json!({"title": 7})).is_ok(), "title: string or integer");
        assert_eq!(
            body("POST", create, json!({"body": "b"})).unwrap_err(),
            Invalid::Schema("\"title\" wasn't supplied.".into())
        );
        let e = body("POST", create, json!({"title": 1.5})).unwrap_err();
        assert_eq!(e, Invalid::Schema("For 'properties/title', 1.5 is not a string or an integer.".into()));
        let e = body("POST", create, json!({"title": "t", "labels": "bug"})).unwrap_err();
        assert_eq!(e, Invalid::Schema("For 'properties/labels', \"bug\" is not an array.".into()));
        let e = body("POST", create, json!({"title": "t", "assignees": [1]})).unwrap_err();
        assert!(matches!(e, Invalid::Schema(m) if m.contains("properties/assignees/0")));
        assert!(body("POST", create, json!({"title": "t", "body": null})).is_err(), "a create's body is not nullable");
        let patch = "/repos/o/r/issues/3";
        assert!(body("PATCH", patch, json!({"body": null, "state": "closed", "state_reason": "not_planned"})).is_ok());
        let e = body("PATCH", patch, json!({"state": "done"})).unwrap_err();
        assert_eq!(e, Invalid::Schema("For 'properties/state', \"done\" is not one of \"open\", \"closed\".".into()));
        let e = body("PATCH", patch, json!({"state_reason": "wontfix"})).unwrap_err();
        assert!(matches!(e, Invalid::Schema(_)));
        let s = spec();
        let m = s.find("POST", create).unwrap();
        assert_eq!(s.check_body(&m, b"{nope").unwrap_err(), Invalid::BadJson("Problems parsing JSON".into()));
        assert_eq!(s.check_body(&m, b"[1]").unwrap_err(), Invalid::BadJson("Body should be a JSON object".into()));
        assert_eq!(s.check_body(&m, b"").unwrap_err(), Invalid::BadJson("Body should be a JSON object".into()));
    }

    #[test]
    fn query_parameters_are_held_to_their_schemas() {
        let s = spec();
        let m = s.find("GET", "/repos/o/r/issues").unwrap();
        let q = |k: &str, v: &str| vec![(k.to_owned(), v.to_owned())];
        assert!(s.check_query(&m, &q("state", "all")).is_ok());
        assert!(s.check_query(&m, &q("per_page", "100")).is_ok());
        assert!(s.check_query(&m, &q("state", "any")).is_err());
        assert!(s.check_query(&m, &q("per_page", "many")).is_err());
        assert!(s.check_query(&m, &q("direction", "up")).is_err());
        assert!(s.check_query(&m, &q("unknown", "x")).is_ok(), "undeclared parameters are ignored");
    }
}
