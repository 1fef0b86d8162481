//! End-to-end helpers for the `github` kind: a target pointing at the GitHub
//! emulator, the worker with the token in its environment, the issues of a
//! repository by row key next to what the extension says the rows map to,
//! and GitHub's [`TargetEnv`] ([`GithubTargetEnv`]).

use std::collections::BTreeMap;
use std::process::Command;

use serde_json::{Map, Value};

use crate::emulator::{Fault, Stats};
use crate::github_emulator::{iso, Emulator, GithubConfig, Issue};
use crate::graph::expected;
use crate::target_env::{EnvOptions, TargetEnv};
use crate::TestDb;
use syncbridge_worker::target::github::{marker_in, parse_marker, split_body, MARKER_LABEL};

/// The environment variable the tests' GitHub token travels in.
pub const SECRET_ENV: &str = "SYNCBRIDGE_SECRET_TEST_GITHUB";

/// A running GitHub emulator with the runtime that serves it.
pub struct GithubEnv {
    /// The emulator.
    pub emu: Emulator,
    /// Its configuration (the token, the owner).
    pub config: GithubConfig,
    rt: tokio::runtime::Runtime,
}

impl GithubEnv {
    /// Starts an emulator with `config`.
    pub fn start_with(config: GithubConfig) -> Self {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
        let emu = rt.block_on(Emulator::start(config.clone())).expect("start the GitHub emulator");
        Self { emu, config, rt }
    }

    /// Runs a future on the emulator's runtime.
    pub fn block_on<F: std::future::Future>(&self, f: F) -> F::Output {
        self.rt.block_on(f)
    }

    /// Creates target `name` in `db` pointing at the emulator; `extra`
    /// config keys are merged in.
    pub fn create_target(&self, db: &TestDb, name: &str, extra: Value) {
        let mut config =
            serde_json::json!({"owner": self.config.owner, "base_url": self.emu.base_url(), "timeout_ms": 5000});
        if let (Some(c), Some(e)) = (config.as_object_mut(), extra.as_object()) {
            for (k, v) in e {
                c.insert(k.clone(), v.clone());
            }
        }
        db.psql(&format!(
            "SELECT sync.create_target('{name}', kind => 'github', config => '{config}', secret => 'env:{SECRET_ENV}')"
        ));
    }

    /// The worker command with the token in its environment.
    pub fn worker_cmd(&self, db: &TestDb, extra: &[&str]) -> Command {
        let mut c = crate::process::run_cmd(db, extra);
        c.env(SECRET_ENV, &self.config.token);
        c
    }

    /// `run --once`; returns the log.
    pub fn sync_once(&self, db: &TestDb) -> String {
        crate::process::run_to_end(self.worker_cmd(db, &["--once"]))
    }

    /// The marked issues of `repo` that are not tombstones (closed
    /// `not_planned`: a deleted row), by row key: the table's fields, and
    /// `@title`, `@body` (the text above the table), `@state`,
    /// `@state_reason`, `@labels`, `@assignees`, `@number`. Panics on two
    /// live issues with one key (a twin).
    pub fn items(&self, repo: &str) -> BTreeMap<String, Map<String, Value>> {
        let mut out = BTreeMap::new();
        for i in self.emu.issues(repo).into_iter().filter(|i| !i.deleted && !i.pull_request) {
            let Some((_, key)) = i.body.as_deref().and_then(marker_in).and_then(parse_marker) else { continue };
            if i.state == "closed" && i.state_reason.as_deref() == Some("not_planned") {
                continue;
            }
            assert!(i.labels.iter().any(|l| l == MARKER_LABEL), "issue #{} lacks the marker label", i.number);
            let fields = issue_fields(&i);
            assert!(out.insert(key.clone(), fields).is_none(), "two issues with key {key} in {repo}");
        }
        out
    }
}

/// An issue as a field map (see [`GithubEnv::items`]).
pub fn issue_fields(i: &Issue) -> Map<String, Value> {
    let (text, mut f) = split_body(i.body.as_deref().unwrap_or(""));
    f.insert("@title".into(), Value::String(i.title.clone()));
    f.insert("@body".into(), Value::String(text));
    f.insert("@state".into(), Value::String(i.state.clone()));
    f.insert("@state_reason".into(), serde_json::json!(i.state_reason));
    f.insert("@labels".into(), serde_json::json!(i.labels));
    f.insert("@assignees".into(), serde_json::json!(i.assignees));
    f.insert("@milestone".into(), serde_json::json!(i.milestone));
    f.insert("@number".into(), serde_json::json!(i.number));
    f.insert("@updated_at".into(), Value::String(iso(i.updated_at)));
    f
}

/// Asserts that `repo` holds exactly the mapped rows of `definition`: the
/// issue's own fields as mapped, every other field in the body's table.
pub fn assert_target_equals_source(env: &GithubEnv, db: &TestDb, definition: &str, repos: &[&str]) {
    let want = expected(db, definition);
    for repo in repos {
        let have = env.items(repo);
        let w = want.get(*repo).cloned().unwrap_or_default();
        let wk: Vec<&String> = w.keys().collect();
        let hk: Vec<&String> = have.keys().collect();
        assert_eq!(hk, wk, "the keys in repository {repo}");
        for (key, fields) in &w {
            let issue = &have[key];
            for (f, v) in fields {
                let text = |v: &Value| match v {
                    Value::String(s) => s.clone(),
                    Value::Null => String::new(),
                    other => other.to_string(),
                };
                match f.as_str() {
                    "title" => {
                        let t = if v.is_null() || text(v).trim().is_empty() {
                            format!("{definition} {key}")
                        } else {
                            text(v)
                        };
                        assert_eq!(issue["@title"], Value::String(t), "{repo}/{key}: title");
                    }
                    "body" => assert_eq!(issue["@body"], Value::String(text(v)), "{repo}/{key}: body"),
                    "state" => assert_eq!(
                        issue["@state"].as_str(),
                        Some(text(v).to_lowercase().as_str()).filter(|s| !s.is_empty()).or(Some("open")),
                        "{repo}/{key}: state"
                    ),
                    "labels" => {
                        let mut want: Vec<String> = match v {
                            Value::Array(a) => a.iter().filter_map(Value::as_str).map(str::to_owned).collect(),
                            Value::String(s) => serde_json::from_str(s).unwrap_or_default(),
                            _ => Vec::new(),
                        };
                        want.push(MARKER_LABEL.into());
                        assert_eq!(issue["@labels"], serde_json::json!(want), "{repo}/{key}: labels");
                    }
                    "assignees" | "assignee" | "milestone" | "state_reason" => {}
                    _ => assert_eq!(issue.get(f), Some(v), "{repo}/{key}: field {f} (the body's table)"),
                }
            }
        }
    }
}

/// GitHub as a [`TargetEnv`]: containers are repositories; the rate limit
/// is the secondary limit on content creation (creates and updates).
pub struct GithubTargetEnv {
    /// The emulator and its runtime.
    pub env: GithubEnv,
    writes_per_min: Option<u32>,
}

impl TargetEnv for GithubTargetEnv {
    const KIND: &'static str = "github";
    // A personal access token: it does not expire and is not renewed.
    const EXPIRING_TOKENS: bool = false;
    // One request per write: GitHub has no batch request.
    const BATCHES: bool = false;
    // Repositories exist already.
    const PROVISION_WRITES: u64 = 0;
    const CLAIM_SIZE: u64 = syncbridge_worker::target::github::CLAIM_SIZE as u64;

    fn start(options: EnvOptions) -> Self {
        // Without a rate limit in the options, none on either side (the
        // tests send thousands of issues); with one, it is GitHub's
        // content-creation limit, a minute's, and the hour's 60 times it.
        let config = GithubConfig {
            content_per_min: options.writes_per_min,
            content_per_hour: options.writes_per_min.map(|w| w * 60),
            primary_per_hour: None,
            ..GithubConfig::default()
        };
        Self { env: GithubEnv::start_with(config), writes_per_min: options.writes_per_min }
    }

    fn create_target(&self, db: &TestDb, name: &str) {
        let per_min = self.writes_per_min.unwrap_or(100_000);
        let extra =
            serde_json::json!({"budget_per_min": 1_000_000, "content_per_min": per_min, "content_per_hour": 100_000});
        self.env.create_target(db, name, extra);
    }

    fn define(&self, db: &TestDb, definition: &str, source: &str, target: &str, container: &str) {
        self.env.emu.create_repo(container);
        db.psql(&format!(
            "SELECT sync.define('{definition}', source => '{source}', target => '{target}', list => '{container}')"
        ));
    }

    fn add_secret<'a>(&self, cmd: &'a mut Command) -> &'a mut Command {
        cmd.env(SECRET_ENV, &self.env.config.token)
    }

    fn items(&self, container: &str) -> BTreeMap<String, Map<String, Value>> {
        self.env.items(container)
    }

    fn count(&self, container: &str) -> usize {
        self.env.items(container).len()
    }

    fn assert_target_equals_source(&self, db: &TestDb, definition: &str, containers: &[&str]) {
        assert_target_equals_source(&self.env, db, definition, containers);
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
