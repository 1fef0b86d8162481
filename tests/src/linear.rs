//! End-to-end helpers for the Linear target: its emulator running, a target
//! pointing at it, the worker with the API key in its environment, the
//! team's issues by row key (each issue's id is the one syncbridge derives
//! from the definition and the key), and Linear's [`TargetEnv`].

use std::collections::BTreeMap;
use std::process::Command;
use std::sync::Mutex;

use serde_json::{Map, Value};

use crate::emulator::{Fault, Stats};
use crate::linear_emulator::{Emulator, EmulatorConfig};
use crate::target_env::{EnvOptions, TargetEnv};
use crate::TestDb;

/// The environment variable the tests' API key travels in.
pub const SECRET_ENV: &str = "SYNCBRIDGE_SECRET_TEST_LINEAR";

/// Complexity points the emulator and the target allow per item write
/// when a test asks for a write rate (a create selecting `success` and the
/// issue's `updatedAt` costs about 2.2; the rest pays for the lookups and
/// the team's metadata).
pub const POINTS_PER_WRITE: u32 = syncbridge_worker::target::linear::COST_PER_WRITE;

/// A running Linear emulator with its runtime, and the definitions whose
/// issues it holds (to name each issue by its row).
pub struct LinearEnv {
    /// The emulator.
    pub emu: Emulator,
    /// Its configuration.
    pub config: EmulatorConfig,
    rt: tokio::runtime::Runtime,
    /// (database, definition) of each `define`.
    defined: Mutex<Vec<(TestDb, String)>>,
}

impl LinearEnv {
    /// Starts an emulator with `config`.
    pub fn start_with(config: EmulatorConfig) -> Self {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
        let emu = rt.block_on(Emulator::start(config.clone())).expect("start the Linear emulator");
        Self { emu, config, rt, defined: Mutex::new(Vec::new()) }
    }

    /// Runs a future on the emulator's runtime.
    pub fn block_on<F: std::future::Future>(&self, f: F) -> F::Output {
        self.rt.block_on(f)
    }

    /// Creates target `name` in `db` pointing at the emulator (budget in
    /// complexity points a minute; None: as good as unlimited), with more
    /// configuration keys in `extra`.
    pub fn create_target(&self, db: &TestDb, name: &str, budget_per_min: Option<u32>, extra: Value) {
        let mut config = serde_json::json!({
            "team_id": self.config.team_id, "base_url": self.emu.base_url(), "timeout_ms": 5000,
            "budget_per_min": budget_per_min.unwrap_or(1_000_000),
        });
        if let (Some(c), Some(x)) = (config.as_object_mut(), extra.as_object()) {
            c.extend(x.clone());
        }
        db.psql(&format!(
            "SELECT sync.create_target('{name}', kind => 'linear', config => '{config}', secret => 'env:{SECRET_ENV}')"
        ));
    }

    /// Defines `definition` from `source` into target `target`, its column
    /// `title` (or `v`) mapped to the title when the table has no
    /// explicit mapping later.
    pub fn remember(&self, db: &TestDb, definition: &str) {
        self.defined.lock().unwrap().push((TestDb::existing(db.cluster(), db.name()), definition.to_owned()));
    }

    /// Every issue of the team (trashed and archived ones too) by row key
    /// (an issue made in Linear by its row's key once the ledger knows it);
    /// an issue whose id no row of a defined definition gives is keyed
    /// `<stray id>` (and fails any comparison).
    pub fn issues_by_key(&self) -> BTreeMap<String, Map<String, Value>> {
        let mut ids: BTreeMap<String, String> = BTreeMap::new();
        for (db, def) in self.defined.lock().unwrap().iter() {
            let keys = db.psql(&format!(
                "SELECT sync_key FROM sync.ledger l JOIN sync.definitions d ON d.id = l.definition_id WHERE d.name = '{def}'
                 UNION SELECT sync_key FROM sync.pending_exports e JOIN sync.definitions d ON d.id = e.definition_id
                  WHERE d.name = '{def}' AND sync_key IS NOT NULL"
            ));
            for k in keys.lines().filter(|l| !l.is_empty()) {
                ids.insert(syncbridge_worker::target::linear::issue_id(&self.config.team_id, def, k), k.to_owned());
            }
            let known = db.psql(&format!(
                "SELECT target_id || ' ' || sync_key FROM sync.ledger l JOIN sync.definitions d ON d.id = l.definition_id
                  WHERE d.name = '{def}' AND target_id IS NOT NULL"
            ));
            for l in known.lines() {
                if let Some((id, k)) = l.split_once(' ') {
                    ids.insert(id.to_owned(), k.to_owned());
                }
            }
        }
        let mut out = BTreeMap::new();
        for i in self.emu.issues() {
            let id = i["id"].as_str().unwrap_or_default().to_owned();
            let key = ids.get(&id).cloned().unwrap_or_else(|| format!("<stray {id}>"));
            let fields = i.as_object().cloned().unwrap_or_default();
            assert!(out.insert(key.clone(), fields).is_none(), "two issues for key {key}");
        }
        out
    }

    /// The live issues (not trashed, not archived) by row key.
    pub fn live(&self) -> BTreeMap<String, Map<String, Value>> {
        self.issues_by_key().into_iter().filter(|(_, i)| i.get("archivedAt").is_none_or(Value::is_null)).collect()
    }
}

/// The worker's environment with the Linear API key.
pub fn add_key<'a>(cmd: &'a mut Command, config: &EmulatorConfig) -> &'a mut Command {
    cmd.env(SECRET_ENV, &config.api_key)
}

/// What the extension says each row maps to: key → fields.
pub fn expected(db: &TestDb, definition: &str) -> BTreeMap<String, Map<String, Value>> {
    let rows =
        db.psql(&format!("SELECT json_build_array(sync_key, fields)::text FROM sync.preview('{definition}', 1000000)"));
    rows.lines()
        .filter(|l| !l.is_empty())
        .map(|l| {
            let v: Value = serde_json::from_str(l).expect("preview row");
            (v[0].as_str().expect("key").to_owned(), v[1].as_object().cloned().unwrap_or_default())
        })
        .collect()
}

/// Asserts that the team's live issues are exactly the mapped rows of
/// `definition`: the same keys, each title and description equal.
pub fn assert_issues_equal_rows(env: &LinearEnv, db: &TestDb, definition: &str) {
    let want = expected(db, definition);
    let have = env.live();
    assert_eq!(have.keys().collect::<Vec<_>>(), want.keys().collect::<Vec<_>>(), "the issues' keys");
    for (key, fields) in &want {
        let issue = &have[key];
        for (f, v) in fields {
            let Some(name) = syncbridge_worker::target::linear::fields::canonical(f) else { continue };
            let text = |v: &Value| match v {
                Value::String(s) => Value::String(s.clone()),
                Value::Null => Value::Null,
                other => Value::String(other.to_string()),
            };
            match name {
                "title" | "description" => assert_eq!(issue.get(name).map(text), Some(text(v)), "{key}: {name}"),
                // NULL: the team's default state on a create, unchanged after.
                "state" if !v.is_null() => assert_eq!(issue["state"]["name"].as_str(), v.as_str(), "{key}: state"),
                _ => {}
            }
        }
    }
}

/// Linear as a [`TargetEnv`]: containers are ignored (every issue goes to
/// the target's team), the rate limit is complexity points.
pub struct LinearTargetEnv {
    /// The emulator and its runtime.
    pub env: LinearEnv,
    budget: Option<u32>,
}

impl LinearTargetEnv {
    /// An environment whose emulator runs with `config` (no rate limit on
    /// the target's side).
    pub fn with_config(config: EmulatorConfig) -> Self {
        Self { env: LinearEnv::start_with(config), budget: None }
    }
}

impl TargetEnv for LinearTargetEnv {
    const KIND: &'static str = "linear";
    // A personal API key: no token to renew.
    const EXPIRING_TOKENS: bool = false;
    // Writes go together in one GraphQL document of aliased mutations.
    const BATCHES: bool = true;
    // Teams exist already.
    const PROVISION_WRITES: u64 = 0;
    const CLAIM_SIZE: u64 = syncbridge_worker::target::linear::BATCH_LIMIT as u64;

    fn start(options: EnvOptions) -> Self {
        let budget = options.writes_per_min.map(|w| w * POINTS_PER_WRITE);
        let config = EmulatorConfig { complexity_limit: budget, period_secs: 60.0, ..EmulatorConfig::default() };
        Self { env: LinearEnv::start_with(config), budget }
    }

    fn create_target(&self, db: &TestDb, name: &str) {
        self.env.create_target(db, name, self.budget, Value::Null);
    }

    fn define(&self, db: &TestDb, definition: &str, source: &str, target: &str, container: &str) {
        db.psql(&format!(
            "SELECT sync.define('{definition}', source => '{source}', target => '{target}', list => '{container}')"
        ));
        // The robustness tables are (id, v): v is the title.
        db.psql(&format!("SELECT sync.map('{definition}', 'v', 'title')"));
        self.env.remember(db, definition);
    }

    fn add_secret<'a>(&self, cmd: &'a mut Command) -> &'a mut Command {
        add_key(cmd, &self.env.config)
    }

    fn items(&self, _container: &str) -> BTreeMap<String, Map<String, Value>> {
        self.env.live()
    }

    fn count(&self, _container: &str) -> usize {
        self.env.emu.issues().iter().filter(|i| i["archivedAt"].is_null()).count()
    }

    fn assert_target_equals_source(&self, db: &TestDb, definition: &str, _containers: &[&str]) {
        assert_issues_equal_rows(&self.env, db, definition);
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
