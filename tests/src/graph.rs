//! Helpers for end-to-end tests through the Graph emulator: a target
//! pointing at it, the worker with the secret in its environment, the
//! emulator's lists next to what the extension says the rows map to, and
//! Graph's [`TargetEnv`] ([`GraphTargetEnv`]).

use std::collections::BTreeMap;
use std::process::Command;

use serde_json::{Map, Value};

use crate::emulator::{Fault, Stats};
use crate::graph_emulator::{Emulator, EmulatorConfig};
use crate::process::{run_cmd, run_to_end};
use crate::target_env::{EnvOptions, TargetEnv};
use crate::TestDb;

/// The environment variable the tests' Graph secret travels in (the worker
/// reads secrets only from `SYNCBRIDGE_SECRET_*`).
pub const SECRET_ENV: &str = "SYNCBRIDGE_SECRET_TEST_GRAPH";

/// A running emulator with the runtime that serves it.
pub struct GraphEnv {
    /// The emulator.
    pub emu: Emulator,
    rt: tokio::runtime::Runtime,
}

impl GraphEnv {
    /// Starts an emulator (budget in RU per minute, None: unlimited).
    pub fn start(budget_per_min: Option<u32>) -> Self {
        Self::start_with(EmulatorConfig { budget_per_min, ..EmulatorConfig::default() })
    }

    /// Starts an emulator with `config` (keep the default credentials).
    pub fn start_with(config: EmulatorConfig) -> Self {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
        let emu = rt.block_on(Emulator::start(config)).expect("start the Graph emulator");
        Self { emu, rt }
    }

    /// Runs a future on the emulator's runtime.
    pub fn block_on<F: std::future::Future>(&self, f: F) -> F::Output {
        self.rt.block_on(f)
    }

    /// Creates target `name` in `db` pointing at this emulator (budget in RU/min;
    /// None: as good as unlimited).
    pub fn create_target(&self, db: &TestDb, name: &str, budget_per_min: Option<u32>) {
        let c = EmulatorConfig::default();
        let mut config = serde_json::json!({
            "tenant_id": c.tenant_id, "client_id": c.client_id, "site_id": "contoso.sharepoint.com,tests",
            "base_url": self.emu.base_url(), "authority_url": self.emu.authority_url(), "timeout_ms": 5000,
        });
        // Without a budget the emulator does not throttle: nor should we.
        config["budget_per_min"] = budget_per_min.unwrap_or(1_000_000).into();
        db.psql(&format!(
            "SELECT sync.create_target('{name}', kind => 'graph', config => '{config}', secret => 'env:{SECRET_ENV}')"
        ));
    }

    /// Items per list display name, keyed by SyncKey (panics on a twin).
    pub fn items(&self) -> BTreeMap<String, BTreeMap<String, Map<String, Value>>> {
        let mut out = BTreeMap::new();
        for l in self.emu.lists() {
            let mut items = BTreeMap::new();
            for i in l.items {
                let key = i.fields.get("SyncKey").and_then(Value::as_str).unwrap_or("<no SyncKey>").to_owned();
                let mut f = i.fields.clone();
                f.insert("@id".into(), Value::String(i.id.clone()));
                assert!(items.insert(key.clone(), f).is_none(), "two items with SyncKey {key} in {}", l.display_name);
            }
            out.insert(l.display_name, items);
        }
        out
    }
}

/// The worker command with the Graph secret in its environment.
pub fn worker_cmd(db: &TestDb, extra: &[&str]) -> Command {
    let mut c = run_cmd(db, extra);
    c.env(SECRET_ENV, EmulatorConfig::default().client_secret);
    c
}

/// `export` (the exporter alone, until stopped) with the Graph secret.
pub fn export_cmd(db: &TestDb, extra: &[&str]) -> Command {
    let mut c = crate::worker::worker();
    c.args(["export", "--dsn", &db.dsn()]).args(extra);
    c.env(SECRET_ENV, EmulatorConfig::default().client_secret);
    c
}

/// `run --once` (ingest, then export until nothing is left); returns the log.
pub fn sync_once(db: &TestDb) -> String {
    run_to_end(worker_cmd(db, &["--once"]))
}

/// A new database in `cluster` with `ddl` run (a table `items` with columns
/// `name` and `qty`), target `sp` on a new emulator, and definition
/// `items_sp` into list `Items`, provisioned, enabled and synced once: the
/// list equals the table.
pub fn synced_items(cluster: &'static crate::Cluster, hint: &str, ddl: &str) -> (GraphEnv, TestDb) {
    let env = GraphEnv::start_with(EmulatorConfig::default());
    let db = cluster.new_db(hint);
    crate::ingest::prepare(&db, ddl);
    env.create_target(&db, "sp", None);
    db.psql("SELECT sync.define('items_sp', source => 'items', target => 'sp', list => 'Items')");
    db.psql("SELECT sync.map('items_sp', 'name', 'Name'), sync.map('items_sp', 'qty', 'Qty')");
    db.psql("SELECT sync.provision('items_sp')");
    db.psql("SELECT sync.enable('items_sp')");
    sync_once(&db);
    assert_target_equals_source(&env, &db, "items_sp", &["Items"]);
    (env, db)
}

/// What the extension says each row maps to: list → SyncKey → fields.
pub fn expected(db: &TestDb, definition: &str) -> BTreeMap<String, BTreeMap<String, Map<String, Value>>> {
    let mut out: BTreeMap<String, BTreeMap<String, Map<String, Value>>> = BTreeMap::new();
    let rows = db.psql(&format!(
        "SELECT json_build_array(sync_key, list, fields)::text FROM sync.preview('{definition}', 1000000)"
    ));
    for line in rows.lines().filter(|l| !l.is_empty()) {
        let v: Value = serde_json::from_str(line).expect("preview row");
        let key = v[0].as_str().expect("key").to_owned();
        let list = v[1].as_str().expect("list").to_owned();
        let fields = v[2].as_object().cloned().unwrap_or_default();
        out.entry(list).or_default().insert(key, fields);
    }
    out
}

/// Asserts that the emulator holds exactly the mapped rows of `definition`
/// (every mapped field equal; references resolved to the referenced item's
/// id; no item more, none less). `lists` names the definition's lists.
pub fn assert_target_equals_source(env: &GraphEnv, db: &TestDb, definition: &str, lists: &[&str]) {
    let want = expected(db, definition);
    let have = env.items();
    let snapshots = env.emu.lists();
    for list in lists {
        // Text columns take strings only: a JSON scalar bound for one
        // travels as its JSON text.
        let text_columns: Vec<String> = snapshots
            .iter()
            .filter(|l| l.display_name == *list)
            .flat_map(|l| l.columns.iter())
            .filter(|c| c.get("text").is_some())
            .filter_map(|c| c["name"].as_str().map(str::to_owned))
            .collect();
        let w = want.get(*list).cloned().unwrap_or_default();
        let h = have.get(*list).cloned().unwrap_or_default();
        let wk: Vec<&String> = w.keys().collect();
        let hk: Vec<&String> = h.keys().collect();
        assert_eq!(hk, wk, "the keys in list {list}");
        for (key, fields) in &w {
            let item = &h[key];
            for (f, v) in fields {
                if let Some(r) = v.as_object().filter(|o| o.contains_key("@ref")) {
                    // A reference: the referenced row's item id.
                    let rdef = r["@def"].as_str().expect("@def");
                    let rkey = r["@ref"].as_str().map(str::to_owned).unwrap_or_else(|| r["@ref"].to_string());
                    // Looked up in the referenced definition's own list (a
                    // key alone may exist in several lists).
                    let rlist = expected(db, rdef)
                        .into_iter()
                        .find_map(|(l, rows)| rows.contains_key(&rkey).then_some(l))
                        .unwrap_or_else(|| panic!("{rdef} has no row {rkey}"));
                    let rid = have.get(&rlist).and_then(|items| items.get(&rkey)).and_then(|i| i.get("@id").cloned());
                    assert!(rid.is_some(), "{list}/{key}: the referenced {rdef}/{rkey} is not in {rlist}");
                    assert_eq!(
                        item.get(&format!("{f}LookupId")),
                        rid.as_ref(),
                        "{list}/{key}: reference {f} to {rdef}/{rkey}"
                    );
                } else if v.is_array() || v.is_object() {
                    // JSON documents and arrays travel as JSON text.
                    let got = item.get(f).and_then(Value::as_str).map(serde_json::from_str::<Value>);
                    assert!(matches!(&got, Some(Ok(g)) if g == v), "{list}/{key}: field {f}: {got:?} vs {v}");
                } else if v.is_null() {
                    assert!(
                        item.get(f).is_none_or(Value::is_null),
                        "{list}/{key}: {f} should be empty, is {:?}",
                        item.get(f)
                    );
                } else if let (Some(a), Some(b)) =
                    (item.get(f).and_then(Value::as_str).and_then(instant), v.as_str().and_then(instant))
                {
                    // Graph returns dates and times in UTC, ISO 8601 with Z.
                    assert_eq!(a, b, "{list}/{key}: field {f} as a time");
                } else if (v.is_number() || v.is_boolean()) && text_columns.iter().any(|c| c == f) {
                    assert_eq!(item.get(f), Some(&Value::String(v.to_string())), "{list}/{key}: field {f} (text)");
                } else {
                    assert_eq!(item.get(f), Some(v), "{list}/{key}: field {f}");
                }
            }
        }
    }
}

/// A date or UTC timestamp in one spelling (`YYYY-MM-DDTHH:MM:SS[.f]`), or
/// None when `s` is neither.
fn instant(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let is_date = b.len() >= 10 && b[4] == b'-' && b[7] == b'-' && s[..4].bytes().all(|c| c.is_ascii_digit());
    if !is_date {
        return None;
    }
    if s.len() == 10 {
        return Some(format!("{s}T00:00:00"));
    }
    let t = s.replacen(' ', "T", 1);
    let t = t.strip_suffix('Z').or_else(|| t.strip_suffix("+00:00")).or_else(|| t.strip_suffix("+00"))?;
    Some(t.to_owned())
}

/// Graph as a [`TargetEnv`]: a [`GraphEnv`], its containers lists, its
/// rate limit a resource-unit budget.
pub struct GraphTargetEnv {
    /// The emulator and its runtime.
    pub env: GraphEnv,
    /// The budget in RU per minute the emulator and the targets get.
    budget: Option<u32>,
}

/// Resource units an item write costs.
const RU_PER_WRITE: u32 = 2;

impl TargetEnv for GraphTargetEnv {
    const KIND: &'static str = "graph";
    // Client-credentials tokens with a lifetime, revocable.
    const EXPIRING_TOKENS: bool = true;
    // Writes go in `$batch`es.
    const BATCHES: bool = true;
    // A list is created with its columns in one request.
    const PROVISION_WRITES: u64 = 1;
    // The Graph adapter claims five `$batch`es of 20 at a time.
    const CLAIM_SIZE: u64 = 5 * syncbridge_worker::target::graph::BATCH_LIMIT as u64;

    fn start(options: EnvOptions) -> Self {
        let budget = options.writes_per_min.map(|w| w * RU_PER_WRITE);
        let mut config = EmulatorConfig { budget_per_min: budget, ..EmulatorConfig::default() };
        if let Some(secs) = options.token_lifetime_secs {
            config.token_lifetime_secs = secs;
        }
        Self { env: GraphEnv::start_with(config), budget }
    }

    fn create_target(&self, db: &TestDb, name: &str) {
        self.env.create_target(db, name, self.budget);
    }

    fn define(&self, db: &TestDb, definition: &str, source: &str, target: &str, container: &str) {
        db.psql(&format!(
            "SELECT sync.define('{definition}', source => '{source}', target => '{target}', list => '{container}')"
        ));
    }

    fn add_secret<'a>(&self, cmd: &'a mut Command) -> &'a mut Command {
        cmd.env(SECRET_ENV, EmulatorConfig::default().client_secret)
    }

    fn items(&self, container: &str) -> BTreeMap<String, Map<String, Value>> {
        self.env.items().remove(container).unwrap_or_else(|| panic!("there is no list {container}"))
    }

    fn count(&self, container: &str) -> usize {
        self.env.emu.lists().iter().find(|l| l.display_name == container).map_or(0, |l| l.items.len())
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
