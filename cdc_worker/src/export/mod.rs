//! The exporter: `sync.claim` → target adapter → `sync.complete`, per target,
//! as DESIGN.md's lifecycle says. Any number of exporters (processes,
//! machines) may run at once: claims use `FOR UPDATE SKIP LOCKED` and leases,
//! so an export is sent by one of them only; an export whose lease expired
//! (its worker died mid-request) is claimed again with `verify`, and the
//! adapter looks its SyncKey up before creating anything.
//!
//! Each target's exporter also runs its puller ([`crate::pull`]) over the
//! same adapter; with `--once` it pulls and applies first, then exports
//! until the backlog is empty (what applying staged included).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tokio::sync::watch;
use tokio_postgres::Client;

mod budget;
mod jobs;
mod purge;

pub use purge::{housekeeping, purge_loop};

use crate::error::WorkerError;
use crate::extension;
use crate::metrics;
use crate::pg::dsn::Dsn;
use crate::pull::{PullConfig, PullSummary};
use crate::target::{self, ApplyContext, ErrorClass, Export, Health, Op, OpResult, Target, TargetPolicy};

/// Claim loops per target unless told otherwise.
pub const DEFAULT_LANES: usize = 2;

/// How the exporter runs.
#[derive(Debug, Clone)]
pub struct ExportConfig {
    /// Only these targets (all with an active definition when empty).
    pub targets: Vec<String>,
    /// Pull every two-way list once and apply what came, then stop when
    /// nothing is left to send (exports in `error` or awaiting approval do
    /// not count).
    pub once: bool,
    /// The name recorded in leases and runs.
    pub worker_name: String,
    /// How long to sleep when there is nothing to claim.
    pub idle_poll: Duration,
    /// Lease length in seconds (default: the `lease_seconds` setting).
    pub lease_seconds: Option<i32>,
    /// Wakes an idle exporter before `idle_poll` (the ingest of the same
    /// process tells it when it staged something).
    pub wake: Option<std::sync::Arc<tokio::sync::Notify>>,
    /// Claim loops per target (each with its own connection).
    pub lanes: usize,
    /// What targets may make this worker read (secrets) and reach (URLs):
    /// the worker's own configuration, never the database's.
    pub policy: Arc<TargetPolicy>,
}

impl Default for ExportConfig {
    fn default() -> Self {
        Self {
            targets: Vec::new(),
            once: false,
            worker_name: crate::runtime::default_worker_name(),
            idle_poll: Duration::from_millis(500),
            lease_seconds: None,
            wake: None,
            lanes: DEFAULT_LANES,
            policy: Arc::new(TargetPolicy::default()),
        }
    }
}

/// What one exporter session did.
#[derive(Debug, Default, Clone)]
pub struct ExportSummary {
    /// Exports claimed.
    pub claimed: u64,
    /// Exports the target confirmed.
    pub exported: u64,
    /// Exports that failed (to be retried, or in error).
    pub failed: u64,
    /// Of those, exports that met a remote change (a 412 to their `If-Match`).
    pub conflicts: u64,
    /// Items read back from the targets (two-way definitions).
    pub pulled: u64,
    /// Inbound changes applied to the source tables.
    pub imported: u64,
}

/// Runs the exporter for every target (or `config.targets`) until shutdown,
/// or with `once` until nothing is left to send.
pub async fn run(
    dsn: &Dsn,
    config: &ExportConfig,
    shutdown: watch::Receiver<bool>,
) -> Result<ExportSummary, WorkerError> {
    let db = crate::pg::connect(dsn, "syncbridge-export").await?;
    extension::require_compatible(&db, dsn).await?;
    let targets = extension::worker_targets(&db, &config.targets).await?;
    if targets.is_empty() {
        tracing::info!("no target has an active definition: nothing to export");
        return Ok(ExportSummary::default());
    }
    let mut tasks = Vec::new();
    for t in targets {
        let extension::TargetConfig { name, kind, config: cfg, secret_ref: secret } = t;
        let built = target::build(&name, &kind, &cfg, secret.as_deref(), &config.policy, Some(shutdown.clone())).await;
        let adapter = match built {
            Ok(a) => a,
            Err(e) => {
                tracing::error!(target = %name, error = %e, "cannot export to this target");
                set_status(&db, &name, e.status(), &e.to_string()).await;
                continue;
            }
        };
        metrics::target_started(&name);
        let (dsn, config, shutdown) = (dsn.clone(), config.clone(), shutdown.clone());
        tasks.push(tokio::spawn(async move { export_target(&dsn, &config, &name, adapter, shutdown).await }));
    }
    // Connected, and every target's loops started.
    metrics::health::ready("export");
    let mut summary = ExportSummary::default();
    let mut first_err = None;
    for t in tasks {
        match t.await {
            Ok(Ok(s)) => {
                summary = merge(Ok(summary), Ok(s))?;
            }
            Ok(Err(e)) => {
                first_err.get_or_insert(e);
            }
            Err(e) => {
                first_err.get_or_insert(WorkerError::internal(format!("an exporter task failed: {e}")));
            }
        }
    }
    match first_err {
        Some(e) => Err(e),
        None => Ok(summary),
    }
}

async fn set_status(db: &Client, target: &str, status: &str, detail: &str) {
    extension::report_target_status(db, target, status, detail).await;
}

async fn context(db: &Client, target: &str) -> Result<ApplyContext, WorkerError> {
    let mut ctx = ApplyContext::default();
    for c in extension::target_containers(db, target).await? {
        ctx.definition_containers.entry(c.definition.clone()).or_insert_with(|| c.remote_id.clone());
        // The columns as provisioned: each value goes out in its column's JSON type.
        if let Some(fields) = &c.fields {
            let kinds = fields.as_array().into_iter().flatten().filter_map(crate::target::column_kind).collect();
            ctx.fields.insert((c.definition.clone(), c.name.clone()), kinds);
        }
        ctx.container_ids.insert((c.definition, c.name), c.remote_id);
    }
    Ok(ctx)
}

/// With `--once`: pull → apply → export cycles at most, repeated while the
/// exports met conflicts (a 412: the remote change is pulled and decided,
/// and what that staged is sent).
const ONCE_CYCLES: u32 = 3;

type Tasks = tokio::task::JoinSet<Result<ExportSummary, WorkerError>>;

async fn export_target(
    dsn: &Dsn,
    config: &ExportConfig,
    name: &str,
    adapter: Box<dyn Target>,
    shutdown: watch::Receiver<bool>,
) -> Result<ExportSummary, WorkerError> {
    let db = crate::pg::connect(dsn, "syncbridge-export").await?;
    let run_id = extension::start_run(&db, "export", None, &config.worker_name).await?;
    // Lanes: independent claim -> apply -> complete loops over one adapter
    // (one token, one rate limiter), so that one lane's database round trips
    // overlap another's HTTP. The puller reads changes back through the
    // same adapter: pulls are paid from the same budget as writes.
    // Every task stops when the worker shuts down, or when another task
    // fails (each lane finishes its batch in flight first).
    let (stop_tx, stop_rx, forward) = crate::runtime::stop_channel(&shutdown);
    let adapter: Arc<dyn Target> = Arc::from(adapter);
    // One budget for the target, whatever the number of exporters and workers.
    adapter.share_budget(Arc::new(budget::PgBudget::new(dsn.clone())));
    // An export that meets a conflict wakes the puller: the remote change is read now.
    let conflicts = Arc::new(tokio::sync::Notify::new());
    let mut tasks = Tasks::new();
    // `db` holds the run (its row and advisory lock) while the tasks work on
    // their own sessions: losing it stops them, and the run restarts.
    let session_lost = crate::pg::session::session_lost(&db);
    tokio::pin!(session_lost);
    let mut lost = None;
    let spawn_lanes = |tasks: &mut Tasks| {
        for lane in 0..config.lanes.max(1) {
            let (dsn, config, name, adapter, mut stop, wake) =
                (dsn.clone(), config.clone(), name.to_owned(), adapter.clone(), stop_rx.clone(), conflicts.clone());
            tasks.spawn(async move {
                let db = crate::pg::connect(&dsn, "syncbridge-export").await?;
                tracing::debug!(target = %name, lane, "export lane started");
                // Lane 0 is the primary: with --once it alone waits for what is
                // in flight or due for a retry.
                let lane = Lane { primary: lane == 0, run_id, conflicts: &wake };
                export_loop(&db, &config, &name, adapter.as_ref(), lane, &mut stop).await
            });
        }
    };
    let spawn_puller = |tasks: &mut Tasks| {
        let (dsn, name, adapter, mut stop) = (dsn.clone(), name.to_owned(), adapter.clone(), stop_rx.clone());
        let pull_config = PullConfig {
            worker_name: config.worker_name.clone(),
            once: config.once,
            lease_seconds: config.lease_seconds,
            page_size: PullConfig::PAGE_SIZE,
            wake: Some(conflicts.clone()),
        };
        tasks.spawn(async move {
            let db = crate::pg::connect(&dsn, "syncbridge-pull").await?;
            let s = crate::pull::run(&db, &pull_config, &name, adapter.as_ref(), &mut stop).await?;
            if s != PullSummary::default() {
                tracing::info!(target = %name, lists = s.lists, pages = s.pages, items = s.items, failed = s.failed,
                    applied = s.applied, conflicts = s.conflicts, "puller stopped");
            }
            Ok(ExportSummary { pulled: s.items, imported: s.applied, ..ExportSummary::default() })
        });
    };
    let mut result = Ok(ExportSummary::default());
    if config.once {
        // Pull once and apply, then export until the backlog is empty (what
        // applying staged included); again while exports met conflicts.
        for cycle in 1..=ONCE_CYCLES {
            spawn_puller(&mut tasks);
            result = merge(result, drive(&mut tasks, &stop_tx, session_lost.as_mut(), &mut lost).await);
            if result.is_err() || lost.is_some() || *stop_rx.borrow() {
                break;
            }
            spawn_lanes(&mut tasks);
            let exported = drive(&mut tasks, &stop_tx, session_lost.as_mut(), &mut lost).await;
            let conflicted = exported.as_ref().map_or(0, |s| s.conflicts);
            result = merge(result, exported);
            if result.is_err() || lost.is_some() || *stop_rx.borrow() {
                break;
            }
            // Changes pulled but not applied yet (an export of their key was
            // in flight) hold their key's exports back: another cycle.
            let waiting = extension::pull_due(&db, name).await? == Some(0.0);
            if conflicted == 0 && !waiting {
                break;
            }
            if cycle < ONCE_CYCLES {
                tracing::info!(target = %name, conflicts = conflicted, lists_or_imports_due = waiting,
                    "pulling again (--once): exports met remote changes, or lists or pulled changes are due");
            }
        }
    } else {
        spawn_puller(&mut tasks);
        spawn_lanes(&mut tasks);
        result = drive(&mut tasks, &stop_tx, session_lost.as_mut(), &mut lost).await;
    }
    forward.abort();
    if let Some(e) = lost {
        result = Err(e);
    }
    let (status, error) = match &result {
        Ok(_) => ("succeeded", None),
        Err(e) => ("failed", Some(e.to_string())),
    };
    let detail = match &result {
        Ok(s) => serde_json::json!({"claimed": s.claimed, "exported": s.exported, "failed": s.failed,
                                    "conflicts": s.conflicts, "pulled": s.pulled, "imported": s.imported}),
        Err(_) => serde_json::Value::Null,
    };
    extension::finish_run(&db, run_id, status, error, detail).await;
    result
}

/// Waits for every task, summing what they did; the first failure stops
/// the others (they finish what is in flight), and so does the loss of the
/// run's session (recorded in `lost`).
async fn drive<F: std::future::Future<Output = crate::pg::session::SessionLost>>(
    tasks: &mut Tasks,
    stop_tx: &watch::Sender<bool>,
    mut session_lost: std::pin::Pin<&mut F>,
    lost: &mut Option<WorkerError>,
) -> Result<ExportSummary, WorkerError> {
    let mut result = Ok(ExportSummary::default());
    loop {
        let joined = tokio::select! {
            joined = tasks.join_next() => match joined {
                Some(joined) => joined,
                None => break,
            },
            e = &mut session_lost, if lost.is_none() => {
                stop_all(stop_tx);
                *lost = Some(WorkerError::from(e));
                continue;
            }
        };
        let task = joined.unwrap_or_else(|e| Err(WorkerError::internal(format!("an export task failed: {e}"))));
        if task.is_err() {
            stop_all(stop_tx);
        }
        result = merge(result, task);
    }
    result
}

fn stop_all(stop_tx: &watch::Sender<bool>) {
    if stop_tx.send(true).is_err() {
        tracing::debug!("every export task had stopped already");
    }
}

/// Two outcomes as one: the sum, or the first error.
fn merge(
    a: Result<ExportSummary, WorkerError>,
    b: Result<ExportSummary, WorkerError>,
) -> Result<ExportSummary, WorkerError> {
    match (a, b) {
        (Ok(a), Ok(b)) => Ok(ExportSummary {
            claimed: a.claimed + b.claimed,
            exported: a.exported + b.exported,
            failed: a.failed + b.failed,
            conflicts: a.conflicts + b.conflicts,
            pulled: a.pulled + b.pulled,
            imported: a.imported + b.imported,
        }),
        (Err(e), _) | (_, Err(e)) => Err(e),
    }
}

/// What a lane is within its target's run.
struct Lane<'a> {
    /// With --once, the primary alone waits for what is in flight or retried.
    primary: bool,
    /// The export run the claims are recorded under.
    run_id: i64,
    /// Notified when an export meets a conflict (the puller wakes).
    conflicts: &'a tokio::sync::Notify,
}

async fn export_loop(
    db: &Client,
    config: &ExportConfig,
    name: &str,
    adapter: &dyn Target,
    lane: Lane<'_>,
    shutdown: &mut watch::Receiver<bool>,
) -> Result<ExportSummary, WorkerError> {
    let Lane { primary, run_id, conflicts } = lane;
    let mut summary = ExportSummary::default();
    let n = i32::try_from(adapter.batch_size().clamp(1, 1000)).unwrap_or(100);
    // Leases are renewed every third of their length while a batch is in
    // flight (it may wait for the budget longer than a lease).
    let lease = extension::lease_seconds(db, config.lease_seconds).await?;
    let renew_every = Duration::from_secs_f64((f64::from(lease) / 3.0).max(0.5));
    loop {
        if *shutdown.borrow() {
            return Ok(summary);
        }
        let started = std::time::Instant::now();
        let rows = extension::claim(db, name, n, config.lease_seconds, &config.worker_name, run_id).await?;
        let mut exports = Vec::with_capacity(rows.len());
        let mut unreadable = Vec::new();
        for text in &rows {
            match serde_json::from_str::<Export>(text) {
                Ok(e) => exports.push(e),
                Err(e) => {
                    // Should not happen; never lose it: report it failed.
                    let id = serde_json::from_str::<Value>(text).ok().and_then(|v| v.get("id").and_then(Value::as_i64));
                    tracing::error!(error = %e, "a claimed export does not parse");
                    if let Some(id) = id {
                        unreadable.push(OpResult::failed(
                            id,
                            ErrorClass::Definite,
                            format!("the worker cannot read this export: {e}"),
                            false,
                        ));
                    }
                }
            }
        }
        if exports.is_empty() && unreadable.is_empty() {
            if config.once && !primary {
                // The primary lane waits for what is in flight or retried.
                return Ok(summary);
            }
            if config.once {
                let (open, waiting_long) = open_work(db, name, ONCE_MAX_WAIT).await?;
                if !open {
                    return Ok(summary);
                }
                if waiting_long > 0 {
                    tracing::warn!(target = %name, exports = waiting_long, "exports wait for a retry more than a minute away; see sync.status (stopping, --once)");
                    return Ok(summary);
                }
            }
            let (h, msg) = adapter.health();
            set_status(db, name, h.as_str(), &msg).await;
            let wake = config.wake.clone();
            tokio::select! {
                _ = tokio::time::sleep(config.idle_poll) => {}
                _ = async { if let Some(w) = wake { w.notified().await } else { std::future::pending().await } } => {}
                _ = shutdown.changed() => return Ok(summary),
            }
            continue;
        }
        summary.claimed += exports.len() as u64;
        metrics::EXPORTS_CLAIMED.add(&[name], (exports.len() + unreadable.len()) as f64);
        let claimed_at = started.elapsed();
        let ctx = context(db, name).await?;
        // Finish the batch in flight even on shutdown: its results are recorded.
        let applying = std::time::Instant::now();
        let ids: Vec<i64> = exports.iter().map(|e| e.id).collect();
        let mut results = {
            let apply = adapter.apply(&exports, &ctx);
            tokio::pin!(apply);
            let mut renew = tokio::time::interval_at(tokio::time::Instant::now() + renew_every, renew_every);
            loop {
                tokio::select! {
                    r = &mut apply => break r,
                    _ = renew.tick() => {
                        // (a failure is the lease's problem: it expires, and
                        // the exports are taken over with a lookup first)
                        if let Err(e) = extension::extend_leases(db, &ids, &config.worker_name, config.lease_seconds).await {
                            tracing::warn!(target = %name, error = %e, "could not renew the leases of the batch in flight");
                        }
                    }
                }
            }
        };
        let applied_in = applying.elapsed();
        results.extend(unreadable);
        // Every claimed export gets exactly one result.
        let mut by_id: HashMap<i64, OpResult> = HashMap::new();
        for r in results {
            by_id.entry(r.id).or_insert(r);
        }
        for e in &exports {
            by_id.entry(e.id).or_insert_with(|| {
                OpResult::failed(e.id, ErrorClass::Transient, "the adapter returned no result for it", true)
            });
        }
        let results: Vec<OpResult> = by_id.into_values().collect();
        if let Some(reason) = adapter.take_disable_request() {
            // Before the results: the exports it refused become due again,
            // and no lane may claim them until the target is enabled.
            tracing::warn!(target = %name, reason = %reason, "the target asked to be disabled: claiming nothing until sync.enable_target");
            set_status(db, name, target::DISABLED_STATUS, &reason).await;
        }
        let ok = results.iter().filter(|r| r.ok).count() as u64;
        summary.exported += ok;
        summary.failed += results.len() as u64 - ok;
        for r in results.iter().filter(|r| !r.ok) {
            tracing::debug!(export = r.id, class = ?r.class, error = r.error.as_deref().unwrap_or(""), "export failed");
        }
        let conflicted = results.iter().filter(|r| r.class == Some(ErrorClass::Conflict)).count() as u64;
        summary.conflicts += conflicted;
        let json = serde_json::to_string(&results).expect("results serialize");
        let completing = std::time::Instant::now();
        extension::complete(db, &json, &config.worker_name).await?;
        count_results(name, &exports, &results, started.elapsed().as_secs_f64());
        if results.iter().any(|r| r.fields.is_some()) {
            // The answers' read-only fields (pull-only mappings) go into
            // their rows now, under the origin syncbridge, not a pull later.
            let tally = extension::apply_imports(db, name, 1000, &config.worker_name).await?;
            crate::pull::count_imports(name, &tally);
        }
        if conflicted > 0 {
            // Recorded: the puller reads the remote changes now.
            conflicts.notify_one();
        }
        let (h, msg) = adapter.health();
        set_status(db, name, h.as_str(), &msg).await;
        if ok == 0 && h == Health::Unreachable && !wait_for_target(db, config, name, adapter, shutdown).await {
            return Ok(summary);
        }
        tracing::debug!(target = %name, claimed = exports.len(), exported = ok,
            claim_ms = claimed_at.as_millis() as u64, apply_ms = applied_in.as_millis() as u64,
            complete_ms = completing.elapsed().as_millis() as u64, "batch done");
    }
}

/// Counts a batch's results, recorded by `sync.complete` `secs` after its
/// claim, in the metrics: by operation and outcome, the latency of each.
fn count_results(target: &str, exports: &[Export], results: &[OpResult], secs: f64) {
    let ops: HashMap<i64, Op> = exports.iter().map(|e| (e.id, e.op)).collect();
    let latency = metrics::CLAIM_TO_COMPLETE.histogram_of(&[target]);
    for r in results {
        // An export that did not parse has no operation we know of.
        let op = ops.get(&r.id).map_or("unknown", |op| op.as_str());
        let outcome = match (r.ok, r.class) {
            (true, _) => "ok",
            (false, Some(c)) => c.as_str(),
            (false, None) => "transient",
        };
        metrics::EXPORTS.inc(&[target, op, outcome]);
        if outcome == "conflict" {
            metrics::CONFLICTS.inc(&[target, "export"]);
        }
        latency.observe(secs);
    }
    metrics::BATCH_DURATION.observe(&["export"], secs);
}

/// The longest pause between two probes of a target that is down.
const OUTAGE_PROBE_MAX: Duration = Duration::from_secs(2);

/// A whole batch failed and the target cannot be reached: claim nothing
/// (every claim would spend an attempt of each export for nothing) until a
/// probe gets through. Returns false on shutdown, or when `--once` has
/// waited [`ONCE_MAX_WAIT`].
async fn wait_for_target(
    db: &Client,
    config: &ExportConfig,
    name: &str,
    adapter: &dyn Target,
    shutdown: &mut watch::Receiver<bool>,
) -> bool {
    let since = std::time::Instant::now();
    let mut delay = Duration::from_millis(250);
    tracing::warn!(target = %name, "the target is unreachable: claiming nothing until it answers");
    loop {
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = shutdown.changed() => return false,
        }
        match adapter.probe().await {
            Ok(()) => {
                tracing::info!(target = %name, down_ms = since.elapsed().as_millis() as u64, "the target answers again");
                set_status(db, name, Health::Ok.as_str(), "").await;
                return true;
            }
            Err(msg) => {
                set_status(db, name, Health::Unreachable.as_str(), &msg).await;
                if config.once && since.elapsed() > ONCE_MAX_WAIT {
                    tracing::warn!(target = %name, error = %msg, "the target is still unreachable (stopping, --once)");
                    return false;
                }
            }
        }
        delay = (delay * 2).min(OUTAGE_PROBE_MAX);
    }
}

/// How long `--once` waits for an export's next retry.
const ONCE_MAX_WAIT: Duration = Duration::from_secs(60);

/// Whether the target still has open exports (pending, failed awaiting a
/// retry, or executing under someone's lease), and how many of them will not
/// be retried within `wait`.
async fn open_work(db: &Client, target: &str, wait: Duration) -> Result<(bool, i64), WorkerError> {
    extension::export_backlog(db, target, wait.as_secs_f64()).await
}
