//! Helpers for end-to-end tests through the Jira emulator, and Jira's
//! [`TargetEnv`] ([`JiraTargetEnv`]): a target pointing at the emulator, the
//! worker with the API token in its environment, and the emulator's issues
//! seen as rows (by the `syncbridge` property's key, fields mapped back:
//! the description as text, the labels without syncbridge's marker, the
//! status, priority and issue type by name, the assignee's account id).

use std::collections::BTreeMap;
use std::process::Command;

use serde_json::{Map, Value};
use syncbridge_worker::target::jira::{adf, LABEL_PREFIX, PROPERTY_KEY};

use crate::emulator::{Fault, Stats};
use crate::jira_emulator::{Emulator, EmulatorConfig, Issue, Jira};
use crate::target_env::{EnvOptions, TargetEnv};
use crate::TestDb;

/// The environment variable the tests' API token travels in.
pub const SECRET_ENV: &str = "SYNCBRIDGE_SECRET_TEST_JIRA";
/// The project the targets create issues in.
pub const PROJECT: &str = "SB";

/// A running Jira emulator with the runtime that serves it.
pub struct JiraEnv {
    /// The emulator.
    pub emu: Emulator,
    rt: tokio::runtime::Runtime,
    /// Requests a minute the emulator allows and the targets are told.
    pub requests_per_min: Option<u32>,
}

impl JiraEnv {
    /// Starts an emulator with `config` (keep the default credentials and project).
    pub fn start_with(config: EmulatorConfig) -> Self {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
        let requests_per_min = config.requests_per_min;
        let emu = rt.block_on(Jira::start(config)).expect("start the Jira emulator");
        Self { emu, rt, requests_per_min }
    }

    /// Runs a future on the emulator's runtime.
    pub fn block_on<F: std::future::Future>(&self, f: F) -> F::Output {
        self.rt.block_on(f)
    }

    /// Creates target `name` in `db` pointing at this emulator.
    pub fn create_target(&self, db: &TestDb, name: &str) {
        let c = EmulatorConfig::default();
        let config = serde_json::json!({
            "site": "acme.atlassian.net", "project_key": PROJECT, "base_url": self.emu.authority_url(),
            "email": c.email, "timeout_ms": 5000,
            // Without a limit the emulator does not throttle: nor should we.
            "budget_per_min": self.requests_per_min.unwrap_or(1_000_000),
        });
        db.psql(&format!(
            "SELECT sync.create_target('{name}', kind => 'jira', config => '{config}', secret => 'env:{SECRET_ENV}')"
        ));
    }

    /// Every issue, as stored.
    pub fn issues(&self) -> Vec<Issue> {
        self.emu.state().issues()
    }
}

/// An issue's fields as a row would hold them (see the module's doc), with
/// `@id`, `@key` and `@container`.
pub fn row_of(issue: &Issue) -> Map<String, Value> {
    let mut out = Map::new();
    for (k, v) in &issue.fields {
        let value = match k.as_str() {
            "description" | "environment" => {
                if v.is_null() {
                    Value::Null
                } else {
                    Value::String(adf::to_text(v))
                }
            }
            "labels" => Value::Array(
                v.as_array()
                    .into_iter()
                    .flatten()
                    .filter(|l| !l.as_str().is_some_and(|s| s.starts_with(LABEL_PREFIX)))
                    .cloned()
                    .collect(),
            ),
            "status" | "priority" | "issuetype" | "resolution" => v.get("name").cloned().unwrap_or(Value::Null),
            "assignee" | "reporter" => v.get("accountId").cloned().unwrap_or(Value::Null),
            _ => v.clone(),
        };
        out.insert(k.clone(), value);
    }
    out.insert("@id".into(), Value::String(issue.id.clone()));
    out.insert("@key".into(), Value::String(issue.key.clone()));
    let prop = issue.properties.get(PROPERTY_KEY);
    let container = prop.and_then(|p| p.get("container")).cloned().unwrap_or(Value::Null);
    out.insert("@container".into(), container);
    out
}

/// The row key an issue's `syncbridge` property names.
fn row_key(issue: &Issue) -> Option<String> {
    issue.properties.get(PROPERTY_KEY).and_then(|p| p.get("key")).and_then(Value::as_str).map(str::to_owned)
}

/// Jira as a [`TargetEnv`]: containers are the definition's list names
/// (recorded in each issue's property), all in project [`PROJECT`]; the
/// rate limit is in requests a minute.
pub struct JiraTargetEnv {
    /// The emulator and its runtime.
    pub env: JiraEnv,
}

impl JiraTargetEnv {
    /// The issues of `container` by row key (panics on a twin).
    pub fn rows(&self, container: &str) -> BTreeMap<String, Map<String, Value>> {
        let mut out = BTreeMap::new();
        for i in self.env.issues() {
            let row = row_of(&i);
            if row["@container"] != container {
                continue;
            }
            let key = row_key(&i).unwrap_or_else(|| "<no key>".into());
            assert!(out.insert(key.clone(), row).is_none(), "two issues for row {key} in {container}");
        }
        out
    }
}

/// What the extension says each row maps to: list → key → fields.
pub fn expected(db: &TestDb, definition: &str) -> BTreeMap<String, BTreeMap<String, Map<String, Value>>> {
    let mut out: BTreeMap<String, BTreeMap<String, Map<String, Value>>> = BTreeMap::new();
    let rows = db.psql(&format!(
        "SELECT json_build_array(sync_key, list, fields)::text FROM sync.preview('{definition}', 1000000)"
    ));
    for line in rows.lines().filter(|l| !l.is_empty()) {
        let v: Value = serde_json::from_str(line).expect("preview row");
        let key = v[0].as_str().expect("key").to_owned();
        let list = v[1].as_str().expect("list").to_owned();
        out.entry(list).or_default().insert(key, v[2].as_object().cloned().unwrap_or_default());
    }
    out
}

/// A row's value as the issue holds it (see [`row_of`]).
pub fn as_issue_value(field: &str, v: &Value, key: &str) -> Value {
    let text = |v: &Value| match v {
        Value::String(s) => Value::String(s.clone()),
        Value::Null => Value::Null,
        other => Value::String(other.to_string()),
    };
    match field {
        "summary" => match v {
            Value::Null => Value::String(key.to_owned()),
            other => text(other),
        },
        "description" | "environment" => match text(v) {
            Value::String(s) if s.trim().is_empty() => Value::Null,
            Value::String(s) => {
                // What the conversion keeps: the text of its blocks.
                adf::to_adf(&s).map_or(Value::Null, |d| Value::String(adf::to_text(&d)))
            }
            other => other,
        },
        "labels" => match v {
            // An array column arrives as its JSON text.
            Value::String(s) if serde_json::from_str::<Vec<Value>>(s).is_ok() => {
                as_issue_value(field, &serde_json::from_str::<Value>(s).unwrap_or(Value::Null), key)
            }
            Value::Null => Value::Array(Vec::new()),
            Value::Array(a) => {
                let mut seen = std::collections::BTreeSet::new();
                Value::Array(a.iter().filter(|x| seen.insert(x.to_string())).cloned().collect())
            }
            other => Value::Array(
                text(other)
                    .as_str()
                    .unwrap_or("")
                    .split(|c: char| c == ',' || c.is_whitespace())
                    .filter(|s| !s.is_empty())
                    .map(|s| Value::String(s.to_owned()))
                    .collect(),
            ),
        },
        "duedate" => match v {
            Value::String(s) => Value::String(s.chars().take(10).collect()),
            other => other.clone(),
        },
        "status" | "priority" | "issuetype" | "assignee" => text(v),
        _ => v.clone(),
    }
}

impl TargetEnv for JiraTargetEnv {
    const KIND: &'static str = "jira";
    // An e-mail and an API token: nothing expires.
    const EXPIRING_TOKENS: bool = false;
    // Creates go in bulk.
    const BATCHES: bool = true;
    // Projects exist already: nothing is provisioned.
    const PROVISION_WRITES: u64 = 0;
    // One bulk create's worth.
    const CLAIM_SIZE: u64 = syncbridge_worker::target::jira::BULK_LIMIT as u64;

    fn start(options: EnvOptions) -> Self {
        let config = EmulatorConfig { requests_per_min: options.writes_per_min, ..EmulatorConfig::default() };
        Self { env: JiraEnv::start_with(config) }
    }

    fn create_target(&self, db: &TestDb, name: &str) {
        self.env.create_target(db, name);
    }

    /// Defines `definition` into `container`; the first column that is not
    /// the key and not a Jira field becomes the summary.
    fn define(&self, db: &TestDb, definition: &str, source: &str, target: &str, container: &str) {
        db.psql(&format!(
            "SELECT sync.define('{definition}', source => '{source}', target => '{target}', list => '{container}')"
        ));
        let cols = db.psql(&format!(
            "SELECT string_agg(attname, ',' ORDER BY attnum) FROM pg_attribute
              WHERE attrelid = '{source}'::regclass AND attnum > 0 AND NOT attisdropped
                AND attname NOT IN ('id') AND attname <> ALL (
                    SELECT unnest(key_columns) FROM sync.definitions WHERE name = '{definition}')"
        ));
        let known = ["summary", "description", "labels", "status", "priority", "assignee", "duedate", "issuetype"];
        let mut summary = cols.split(',').any(|c| c == "summary");
        for c in cols.split(',').filter(|c| !c.is_empty()) {
            let field = if known.contains(&c) {
                c
            } else if !summary {
                summary = true;
                "summary"
            } else {
                continue;
            };
            db.psql(&format!("SELECT sync.map('{definition}', '{c}', '{field}')"));
        }
    }

    fn add_secret<'a>(&self, cmd: &'a mut Command) -> &'a mut Command {
        cmd.env(SECRET_ENV, EmulatorConfig::default().api_token)
    }

    fn items(&self, container: &str) -> BTreeMap<String, Map<String, Value>> {
        self.rows(container)
    }

    fn count(&self, container: &str) -> usize {
        self.env.issues().iter().filter(|i| row_of(i)["@container"] == container).count()
    }

    fn assert_target_equals_source(&self, db: &TestDb, definition: &str, containers: &[&str]) {
        let want = expected(db, definition);
        for c in containers {
            let w = want.get(*c).cloned().unwrap_or_default();
            let h = self.rows(c);
            let wk: Vec<&String> = w.keys().collect();
            let hk: Vec<&String> = h.keys().collect();
            assert_eq!(hk, wk, "the rows in {c}");
            for (key, fields) in &w {
                let issue = &h[key];
                for (f, v) in fields {
                    let want = as_issue_value(f, v, key);
                    if want.is_null() && matches!(f.as_str(), "status" | "priority" | "issuetype") {
                        // NULL leaves Jira's value (the workflow's, the default priority) alone.
                        continue;
                    }
                    let have = issue.get(f).cloned().unwrap_or(Value::Null);
                    assert_eq!(have, want, "{c}/{key} ({}): field {f}", issue["@key"]);
                }
            }
        }
    }

    fn inject(&self, fault: Fault, count: u32) {
        self.env.emu.inject(fault, count);
    }

    fn set_latency(&self, ms: u64) {
        self.env.emu.set_latency(ms);
    }

    fn set_down(&self, down: bool) {
        self.env.emu.set_down(down);
    }

    fn expire_tokens(&self) {
        self.env.emu.expire_tokens();
    }

    fn stats(&self) -> Stats {
        self.env.emu.stats()
    }
}
