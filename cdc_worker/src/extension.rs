//! The worker's whole contract with the extension: one typed function per
//! `sync.*` call. No other module names a `sync` object in SQL, and the
//! worker reads or writes no `sync` table directly: what it needs to know, and
//! every change it reports, goes through a function the extension offers
//! (and grants to `syncbridge_worker`). The one exception are the metrics
//! sampler's read-only counts of the queues (`sync.pending_exports`,
//! `sync.pending_imports`: the worker's role may read every `sync` table),
//! at the end of this file.

use serde_json::Value;
use tokio_postgres::{Client, GenericClient};

use crate::error::WorkerError;
use crate::pg::sqlstate::Described;

// ---------------------------------------------------------------------------
// Runs
// ---------------------------------------------------------------------------

/// `sync.start_run(kind, definition, worker)`: records a run (its row and
/// advisory lock belong to this session) and returns its id.
pub async fn start_run(db: &Client, kind: &str, definition: Option<&str>, worker: &str) -> Result<i64, WorkerError> {
    let what = match kind {
        "stream" => "recording the run",
        "backfill" => "recording the backfill run",
        "pull" => "recording the pull run",
        _ => "recording the export run",
    };
    let id = db
        .query_one("SELECT sync.start_run($1, $2, $3)", &[&kind, &definition, &worker])
        .await
        .map_err(WorkerError::db(what))?
        .get(0);
    crate::metrics::run_started(id, kind);
    Ok(id)
}

/// Records the end of a run in `sync.runs` (`sync.start_run` began it),
/// with what it did (`detail`: its counts). A failure to record is logged,
/// never raised: the run's work is done.
pub async fn finish_run(db: &Client, run_id: i64, status: &str, error: Option<String>, detail: serde_json::Value) {
    crate::metrics::run_finished(run_id, status);
    let detail = detail.to_string();
    if let Err(e) =
        db.execute("SELECT sync.finish_run($1, $2, $3, $4::text::jsonb)", &[&run_id, &status, &error, &detail]).await
    {
        tracing::warn!(run = run_id, error = %Described(&e), "could not record the end of the run");
    }
}

/// `sync.purge()`: finished exports and runs past their retention, and runs
/// whose session ended without finishing them: (exports, runs, abandoned).
pub async fn purge(db: &Client) -> Result<(i64, i64, i32), tokio_postgres::Error> {
    let r = db.query_one("SELECT exports, runs, abandoned FROM sync.purge()", &[]).await?;
    Ok((r.get(0), r.get(1), r.get(2)))
}

// ---------------------------------------------------------------------------
// Ingest
// ---------------------------------------------------------------------------

/// The extension must be installed, at a version this worker speaks: the
/// same major and minor version (`0.2.x` with `0.2.y`). A worker meeting
/// another refuses to start, saying which to upgrade (a configuration error:
/// it is not restarted).
pub async fn require_compatible(db: &Client, dsn: &impl std::fmt::Display) -> Result<String, WorkerError> {
    let Some(v) = installed_version(db).await? else {
        return Err(WorkerError::Config {
            message: format!("the syncbridge extension is not installed in {dsn}"),
            hint: "CREATE EXTENSION syncbridge;".into(),
        });
    };
    if !compatible(&v, crate::VERSION) {
        return Err(WorkerError::Config {
            message: format!("the syncbridge extension is at version {v}; this worker ({}) works with {}.x only",
                crate::VERSION, major_minor(crate::VERSION)),
            hint: format!(
                "Upgrade the extension first (ALTER EXTENSION syncbridge UPDATE;) and then the worker, or run a worker of version {}.x",
                major_minor(&v)
            ),
        });
    }
    Ok(v)
}

fn major_minor(v: &str) -> String {
    v.split('.').take(2).collect::<Vec<_>>().join(".")
}

/// Whether a worker of version `worker` works with extension `extension`.
pub fn compatible(extension: &str, worker: &str) -> bool {
    major_minor(extension) == major_minor(worker)
}

/// The installed version of the extension, None when it is not installed.
pub async fn installed_version(db: &Client) -> Result<Option<String>, WorkerError> {
    Ok(db
        .query_opt("SELECT extversion FROM pg_extension WHERE extname = 'syncbridge'", &[])
        .await
        .map_err(WorkerError::db("looking for the extension"))?
        .map(|r| r.get(0)))
}

/// The setting `sync.slot_name`.
pub async fn slot_name(db: &Client) -> Result<String, WorkerError> {
    Ok(db
        .query_one("SELECT sync._setting('slot_name')", &[])
        .await
        .map_err(WorkerError::db("reading sync.slot_name"))?
        .get(0))
}

/// `sync.slot_cursor(slot)`: the LSN staged durably for the slot (text), if any.
pub async fn slot_cursor(db: &Client, slot: &str) -> Result<Option<String>, WorkerError> {
    Ok(db
        .query_one("SELECT sync.slot_cursor($1)::text", &[&slot])
        .await
        .map_err(WorkerError::db("reading the slot cursor"))?
        .get(0))
}

/// What `sync.stage` did for one definition.
#[derive(Debug, Clone, PartialEq)]
pub struct Staged {
    /// The definition.
    pub definition: String,
    /// Exports added, changed, deleted or moved in the queue.
    pub exports: i32,
    /// Keys kept in `sync.deferred_keys` (the target far behind).
    pub deferred: i32,
    /// The error that stopped the definition, if any.
    pub error: Option<String>,
}

/// `sync.stage(relation, keys)` for the relation with this oid: per
/// definition, what was staged or deferred and the error that stopped it.
pub async fn stage<C: GenericClient>(
    db: &C,
    rel_oid: i64,
    keys_json: &str,
    run_id: i64,
) -> Result<Vec<Staged>, WorkerError> {
    let rows = db
        .query(
            "SELECT definition, added + updated + deleted + moved, deferred, error
               FROM sync.stage(($1::bigint)::oid::regclass, $2::text::jsonb, NULL, NULL, $3)",
            &[&rel_oid, &keys_json, &run_id],
        )
        .await
        .map_err(WorkerError::db("staging keys"))?;
    Ok(rows
        .iter()
        .map(|r| Staged { definition: r.get(0), exports: r.get(1), deferred: r.get(2), error: r.get(3) })
        .collect())
}

/// `sync.stage_truncate(relation)` for the relation with this oid.
pub async fn stage_truncate<C: GenericClient>(db: &C, rel_oid: i64) -> Result<(), WorkerError> {
    db.query("SELECT * FROM sync.stage_truncate(($1::bigint)::oid::regclass, NULL)", &[&rel_oid])
        .await
        .map_err(WorkerError::db("staging a truncate"))?;
    Ok(())
}

/// `sync.checkpoint(lsn, slot)`: the LSN is durably staged for the slot.
pub async fn checkpoint<C: GenericClient>(db: &C, lsn: &str, slot: &str) -> Result<(), WorkerError> {
    db.execute("SELECT sync.checkpoint($1::text::pg_lsn, $2)", &[&lsn, &slot])
        .await
        .map_err(WorkerError::db("recording the LSN"))?;
    Ok(())
}

/// `sync.backfills_pending()`: the definitions waiting for their initial load.
pub async fn backfills_pending(db: &Client) -> Result<Vec<String>, WorkerError> {
    Ok(db
        .query("SELECT definition FROM sync.backfills_pending()", &[])
        .await
        .map_err(WorkerError::db("listing pending backfills"))?
        .iter()
        .map(|r| r.get(0))
        .collect())
}

/// One step of a backfill.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackfillProgress {
    /// The whole table is staged (or deferred).
    pub done: bool,
    /// Rows done so far.
    pub rows_done: i64,
    /// The table's rows as the planner knows them; -1 while unknown (never
    /// analyzed).
    pub rows_total: i64,
    /// The next step defers a range of keys (the target is far behind):
    /// the worker lets it read where the range ends instead of reading keys.
    pub deferring: bool,
}

impl BackfillProgress {
    fn of(row: &tokio_postgres::Row) -> Self {
        Self { done: row.get(0), rows_done: row.get(1), rows_total: row.get(2), deferring: row.get(3) }
    }
}

/// `sync.backfill_step(definition, chunk, run)`: reads and stages the next
/// chunk of keys itself.
pub async fn backfill_step(db: &Client, def: &str, chunk: i32, run_id: i64) -> Result<BackfillProgress, WorkerError> {
    let row = db
        .query_one(
            "SELECT done, rows_done, coalesce(rows_total, -1), deferring FROM sync.backfill_step($1, $2, $3)",
            &[&def, &chunk, &run_id],
        )
        .await
        .map_err(WorkerError::db("backfill step"))?;
    Ok(BackfillProgress::of(&row))
}

/// `sync.backfill_step` with the chunk's keys read beforehand (in the slot's
/// snapshot): keys, the key it started after and its last key, JSON text.
pub async fn backfill_step_keys(
    db: &Client,
    def: &str,
    chunk: i32,
    run_id: i64,
    keys: &str,
    after: Option<&str>,
    last: Option<&str>,
) -> Result<BackfillProgress, WorkerError> {
    let row = db
        .query_one(
            "SELECT done, rows_done, coalesce(rows_total, -1), deferring FROM sync.backfill_step($1, $2, $3,
               chunk_keys => $4::text::jsonb, chunk_after => $5::text::jsonb, chunk_last => $6::text::jsonb)",
            &[&def, &chunk, &run_id, &keys, &after, &last],
        )
        .await
        .map_err(WorkerError::db("backfill step"))?;
    Ok(BackfillProgress::of(&row))
}

/// `sync.backfill_keys(definition, after, chunk)`: the keys of the next
/// chunk, read in the caller's transaction (the slot's snapshot): (keys,
/// last key), JSON text.
pub async fn backfill_keys(
    db: &Client,
    def: &str,
    after: Option<&str>,
    chunk: i32,
) -> Result<(String, Option<String>), tokio_postgres::Error> {
    let row = db
        .query_one(
            "SELECT keys::text, last_key::text FROM sync.backfill_keys($1, $2::text::jsonb, $3)",
            &[&def, &after, &chunk],
        )
        .await?;
    Ok((row.get(0), row.get(1)))
}

// ---------------------------------------------------------------------------
// Export
// ---------------------------------------------------------------------------

/// A target the exporter serves, as `sync.worker_targets` gives it.
#[derive(Debug, Clone)]
pub struct TargetConfig {
    /// Its name.
    pub name: String,
    /// Its kind (`graph`, ...).
    pub kind: String,
    /// Its configuration (no secret in it).
    pub config: Value,
    /// The reference to its secret, read by the worker under its own policy.
    pub secret_ref: Option<String>,
}

/// `sync.worker_targets(only)`: the targets with an active or paused
/// definition (only those named, when `only` is not empty).
pub async fn worker_targets(db: &Client, only: &[String]) -> Result<Vec<TargetConfig>, WorkerError> {
    let rows = db
        .query("SELECT name, kind, config::text, secret_ref FROM sync.worker_targets($1)", &[&only])
        .await
        .map_err(WorkerError::db("listing targets"))?;
    Ok(rows
        .iter()
        .map(|r| TargetConfig {
            name: r.get(0),
            kind: r.get(1),
            config: serde_json::from_str(&r.get::<_, String>(2)).unwrap_or(Value::Null),
            secret_ref: r.get(3),
        })
        .collect())
}

/// `sync.report_target_status(target, status, detail)`: the target's health
/// as `sync.targets` shows it. A failure is logged, never raised.
pub async fn report_target_status(db: &Client, target: &str, status: &str, detail: &str) {
    let r = db.execute("SELECT sync.report_target_status($1, $2, $3)", &[&target, &status, &detail]).await;
    if let Err(e) = r {
        tracing::debug!(error = %Described(&e), "could not record the target's status");
    }
}

/// `sync.extend_leases(ids, worker, lease_seconds)`: renews the leases of
/// exports this worker still works on; how many it still holds.
pub async fn extend_leases(
    db: &Client,
    ids: &[i64],
    worker: &str,
    lease_seconds: Option<i32>,
) -> Result<i32, WorkerError> {
    let row = db
        .query_one("SELECT sync.extend_leases($1, $2, $3)", &[&ids, &worker, &lease_seconds])
        .await
        .map_err(WorkerError::db("renewing leases"))?;
    Ok(row.get(0))
}

/// The lease of a claim, in seconds (`lease_seconds`, else the setting).
pub async fn lease_seconds(db: &Client, configured: Option<i32>) -> Result<i32, WorkerError> {
    if let Some(s) = configured {
        return Ok(s);
    }
    let row = db
        .query_one("SELECT sync._setting('lease_seconds')::int", &[])
        .await
        .map_err(WorkerError::db("reading sync.lease_seconds"))?;
    Ok(row.get(0))
}

/// `sync.budget_take(target, need, extra)`: `(granted, wait_seconds)` from
/// the target's budget shared by every exporter.
pub async fn budget_take(db: &Client, target: &str, need: f64, extra: f64) -> Result<(f64, f64), WorkerError> {
    let row = db
        .query_one("SELECT granted, wait_seconds FROM sync.budget_take($1, $2, $3)", &[&target, &need, &extra])
        .await
        .map_err(WorkerError::db("taking from the target's budget"))?;
    Ok((row.get(0), row.get(1)))
}

/// A container (list) of a target as provisioned: its definition, its name,
/// its remote id, and its fields as created (JSON), when known.
#[derive(Debug, Clone)]
pub struct TargetContainer {
    /// The definition it belongs to.
    pub definition: String,
    /// Its name (the list's display name).
    pub name: String,
    /// The target's id for it.
    pub remote_id: String,
    /// The fields provisioned in it (`[{name, kind, ...}]`), if recorded.
    pub fields: Option<Value>,
}

/// `sync.target_list_ids(target)`: the target's containers created so far.
pub async fn target_containers(db: &Client, target: &str) -> Result<Vec<TargetContainer>, WorkerError> {
    let rows = db
        .query("SELECT definition, list, remote_id, columns::text FROM sync.target_list_ids($1)", &[&target])
        .await
        .map_err(WorkerError::db("reading the target's lists"))?;
    Ok(rows
        .iter()
        .map(|r| TargetContainer {
            definition: r.get(0),
            name: r.get(1),
            remote_id: r.get(2),
            fields: r.get::<_, Option<String>>(3).and_then(|c| serde_json::from_str(&c).ok()),
        })
        .collect())
}

/// `sync.claim(target, n, lease_seconds, worker, run)`: up to `n` due exports,
/// leased to `worker`, each as its JSON text.
pub async fn claim(
    db: &Client,
    target: &str,
    n: i32,
    lease_seconds: Option<i32>,
    worker: &str,
    run_id: i64,
) -> Result<Vec<String>, WorkerError> {
    let rows = db
        .query(
            "SELECT to_jsonb(c)::text FROM sync.claim($1, $2, $3, $4, $5) c",
            &[&target, &n, &lease_seconds, &worker, &run_id],
        )
        .await
        .map_err(WorkerError::db("claiming exports"))?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// `sync.complete(results, worker)`: the outcome of claimed exports (a JSON
/// array of results).
pub async fn complete(db: &Client, results_json: &str, worker: &str) -> Result<(), WorkerError> {
    db.query("SELECT * FROM sync.complete($1::text::jsonb, $2)", &[&results_json, &worker])
        .await
        .map_err(WorkerError::db("recording export results"))?;
    Ok(())
}

/// `sync.export_backlog(target, within)`: whether the target still has open
/// exports, and how many of them will not be retried within `within_secs`.
pub async fn export_backlog(db: &Client, target: &str, within_secs: f64) -> Result<(bool, i64), WorkerError> {
    let row = db
        .query_one("SELECT open > 0, due_later FROM sync.export_backlog($1, $2)", &[&target, &within_secs])
        .await
        .map_err(WorkerError::db("looking for open exports"))?;
    Ok((row.get(0), row.get(1)))
}

// ---------------------------------------------------------------------------
// Pull (two-way sync)
// ---------------------------------------------------------------------------

/// A list leased for pulling (a row of `sync.pull_claim`).
#[derive(Debug, Clone, PartialEq)]
pub struct PullClaim {
    /// The definition it belongs to.
    pub definition: String,
    /// The list's name.
    pub list: String,
    /// The list's id on the target.
    pub list_id: String,
    /// The link to replay (None: a fresh, full read).
    pub link: Option<String>,
    /// The fields to read.
    pub fields: Vec<String>,
    /// The round the pages belong to.
    pub round: i64,
    /// Some: a drift check's read of the list (its report id): its pages go
    /// to `sync.drift_page`, not to the pull path.
    pub report: Option<i64>,
}

/// `sync.pull_claim(target, n, lease_seconds, worker, force)`: up to `n`
/// lists whose pull is due (with `force`: every pullable list), leased.
pub async fn pull_claim(
    db: &Client,
    target: &str,
    n: i32,
    lease_seconds: Option<i32>,
    worker: &str,
    force: bool,
) -> Result<Vec<PullClaim>, WorkerError> {
    let rows = db
        .query(
            "SELECT definition, list, list_id, link, fields, round FROM sync.pull_claim($1, $2, $3, $4, $5)",
            &[&target, &n, &lease_seconds, &worker, &force],
        )
        .await
        .map_err(WorkerError::db("claiming lists to pull"))?;
    Ok(rows
        .iter()
        .map(|r| PullClaim {
            definition: r.get(0),
            list: r.get(1),
            list_id: r.get(2),
            link: r.get(3),
            fields: r.get::<_, Option<Vec<String>>>(4).unwrap_or_default(),
            round: r.get(5),
            report: None,
        })
        .collect())
}

/// Whether a list's lease is still the caller's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lease {
    /// The call went through.
    Held,
    /// Another worker holds the list now (SQLSTATE 55000): drop it.
    Lost,
}

/// A call refused because the caller's lease is gone: [`Lease::Lost`].
fn lease_of(r: Result<(), tokio_postgres::Error>, what: &'static str) -> Result<Lease, WorkerError> {
    match r {
        Ok(()) => Ok(Lease::Held),
        Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::OBJECT_NOT_IN_PREREQUISITE_STATE) => {
            tracing::debug!(error = %Described(&e), "the list's lease is gone");
            Ok(Lease::Lost)
        }
        Err(e) => Err(WorkerError::db(what)(e)),
    }
}

/// `sync.pull_page(definition, list, round, items, link, final, worker)`:
/// one page of a list's changes (items: a JSON array as text), stored with
/// its link in one transaction. A drift check's page (`claim.report`) goes
/// to `sync.drift_page(report, list, round, items, link, final, worker)`.
pub async fn pull_page(
    db: &Client,
    claim: &PullClaim,
    items_json: &str,
    link: &str,
    last: bool,
    worker: &str,
) -> Result<Lease, WorkerError> {
    let (list, round) = (&claim.list, &claim.round);
    let r = match claim.report {
        None => {
            db.query_one(
                "SELECT sync.pull_page($1, $2, $3, $4::text::jsonb, $5, $6, $7)",
                &[&claim.definition, list, round, &items_json, &link, &last, &worker],
            )
            .await
        }
        Some(report) => {
            db.query_one(
                "SELECT sync.drift_page($1, $2, $3, $4::text::jsonb, $5, $6, $7)",
                &[&report, list, round, &items_json, &link, &last, &worker],
            )
            .await
        }
    }
    .map(drop);
    lease_of(r, "storing a page read from the target")
}

/// Why a list's pull failed, as `sync.pull_failed` takes it.
#[derive(Debug, Clone)]
pub struct PullFailure<'a> {
    /// What happened.
    pub error: &'a str,
    /// `transient`, `throttled`, `auth` or `definite`.
    pub class: &'a str,
    /// The next read is a fresh, full one (the link is thrown away).
    pub resync: bool,
    /// Seconds the target asked us to wait.
    pub retry_after: Option<f64>,
}

/// `sync.pull_failed(definition, list, round, error, class, resync, retry_after, worker)`;
/// for a drift check's read `sync.drift_failed(report, list, round, error,
/// class, restart, retry_after, worker)`.
pub async fn pull_failed(
    db: &Client,
    claim: &PullClaim,
    failure: &PullFailure<'_>,
    worker: &str,
) -> Result<Lease, WorkerError> {
    let (list, round) = (&claim.list, &claim.round);
    let (error, class, resync, retry_after) = (&failure.error, &failure.class, &failure.resync, &failure.retry_after);
    let r = match claim.report {
        None => {
            db.query_one(
                "SELECT sync.pull_failed($1, $2, $3, $4, $5, $6, $7, $8)",
                &[&claim.definition, list, round, error, class, resync, retry_after, &worker],
            )
            .await
        }
        Some(report) => {
            db.query_one(
                "SELECT sync.drift_failed($1, $2, $3, $4, $5, $6, $7, $8)",
                &[&report, list, round, error, class, resync, retry_after, &worker],
            )
            .await
        }
    }
    .map(drop);
    lease_of(r, "recording a failed read")
}

/// `sync.drift_claim(target, n, lease_seconds, worker)`: up to `n` lists
/// that drift checks still have to read, leased.
pub async fn drift_claim(
    db: &Client,
    target: &str,
    n: i32,
    lease_seconds: Option<i32>,
    worker: &str,
) -> Result<Vec<PullClaim>, WorkerError> {
    let rows = db
        .query(
            "SELECT definition, list, list_id, link, fields, round, report FROM sync.drift_claim($1, $2, $3, $4)",
            &[&target, &n, &lease_seconds, &worker],
        )
        .await
        .map_err(WorkerError::db("claiming lists for a drift check"))?;
    Ok(rows
        .iter()
        .map(|r| PullClaim {
            definition: r.get(0),
            list: r.get(1),
            list_id: r.get(2),
            link: r.get(3),
            fields: r.get::<_, Option<Vec<String>>>(4).unwrap_or_default(),
            round: r.get(5),
            report: Some(r.get(6)),
        })
        .collect())
}

/// `sync.drift_due(target)`: seconds until a drift check's list of the
/// target may be read (0: now), None when no check is reading.
pub async fn drift_due(db: &Client, target: &str) -> Result<Option<f64>, WorkerError> {
    Ok(db
        .query_one("SELECT sync.drift_due($1)", &[&target])
        .await
        .map_err(WorkerError::db("asking whether a drift check waits"))?
        .get(0))
}

/// What `sync.slot_check` tells the worker to do with its slot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SlotAction {
    /// Stream from it.
    Use,
    /// There is none: create it.
    Create,
    /// It was lost (invalidated): drop what is left and create it anew.
    Recreate,
}

/// What `sync.slot_check` decided.
#[derive(Debug, Clone, PartialEq)]
pub struct SlotCheck {
    /// Use, create or recreate the slot.
    pub action: SlotAction,
    /// Why (for the log).
    pub detail: String,
    /// Create the slot as a failover slot (PostgreSQL 17 and later), and
    /// confirm only what the standbys named in synchronized_standby_slots
    /// have (`sync.standbys_have`).
    pub failover: bool,
    /// The existing slot is not a failover slot yet: turn failover on.
    pub enable_failover: bool,
    /// Bytes a position must move before a confirmation without staging is
    /// recorded first (`sync.slot_progress`).
    pub record_margin: u64,
}

/// `sync.slot_check(slot)`: before streaming, what to do with the slot, and
/// why. A slot that was lost, dropped, or moved behind the worker's back puts
/// the definitions in error first (the extension decides).
pub async fn slot_check(db: &Client, slot: &str) -> Result<SlotCheck, WorkerError> {
    let r = db
        .query_one("SELECT action, detail, failover, enable_failover, record_margin FROM sync.slot_check($1)", &[&slot])
        .await
        .map_err(WorkerError::db("checking the replication slot"))?;
    let action: String = r.get(0);
    let action = match action.as_str() {
        "use" => SlotAction::Use,
        "create" => SlotAction::Create,
        "recreate" => SlotAction::Recreate,
        other => return Err(WorkerError::internal(format!("sync.slot_check answered an unknown action {other:?}"))),
    };
    let margin: i32 = r.get(4);
    Ok(SlotCheck {
        action,
        detail: r.get(1),
        failover: r.get(2),
        enable_failover: r.get(3),
        record_margin: u64::try_from(margin).unwrap_or(0),
    })
}

/// `sync._nudge_slot(slot)`: a standby snapshot when the slot's restart
/// position lags its confirmed position (true when one was written).
pub async fn nudge_slot(db: &Client, slot: &str) -> Result<bool, WorkerError> {
    Ok(db
        .query_one("SELECT sync._nudge_slot($1)", &[&slot])
        .await
        .map_err(WorkerError::db("asking for a standby snapshot"))?
        .get(0))
}

/// `sync.standbys_have()`: whether the physical standbys the primary waits
/// for (synchronized_standby_slots) have all WAL written so far.
pub async fn standbys_have(db: &Client) -> Result<bool, WorkerError> {
    Ok(db
        .query_one("SELECT sync.standbys_have()", &[])
        .await
        .map_err(WorkerError::db("asking whether the standbys have our records"))?
        .get(0))
}

/// `sync.slot_progress(slot, lsn)`: records a position before the worker
/// confirms it without staging anything (an unlogged row: no WAL of its own
/// but a commit record).
pub async fn slot_progress(db: &Client, slot: &str, lsn: &str) -> Result<(), WorkerError> {
    db.execute("SELECT sync.slot_progress($1, $2::text::pg_lsn)", &[&slot, &lsn])
        .await
        .map_err(WorkerError::db("recording the slot's progress on the staging session"))?;
    Ok(())
}

/// `sync.run_jobs(worker)`: runs the scheduled jobs that are due (each by
/// exactly one worker); how many ran.
pub async fn run_jobs(db: &Client, worker: &str) -> Result<i32, tokio_postgres::Error> {
    Ok(db.query_one("SELECT sync.run_jobs($1)", &[&worker]).await?.get(0))
}

/// `sync.jobs_due()`: seconds until the next scheduled job is due (None: none).
pub async fn jobs_due(db: &Client) -> Result<Option<f64>, tokio_postgres::Error> {
    Ok(db.query_one("SELECT sync.jobs_due()", &[]).await?.get(0))
}

/// What one `sync.apply_imports` call did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ImportTally {
    /// Remote changes written to the source tables.
    pub applied: i32,
    /// Our own writes coming back: nothing to do.
    pub echoes: i32,
    /// Changed on both sides: settled by policy or left for a person.
    pub conflicts: i32,
    /// Waiting for an approval (deletes) or a resolution.
    pub awaiting: i32,
    /// Could not be applied (the reason is recorded).
    pub failed: i32,
    /// Still to decide after this call.
    pub remaining: i64,
}

impl ImportTally {
    /// Inbound changes this call settled one way or another.
    pub fn progress(&self) -> i64 {
        [self.applied, self.echoes, self.conflicts, self.awaiting, self.failed].iter().map(|n| i64::from(*n)).sum()
    }
}

/// `sync.apply_imports(target, n, worker)`: decides and applies up to `n`
/// stored inbound changes of the target.
///
/// It runs under the replication origin `syncbridge` (the stream skips what
/// such a session commits): set up for this one statement, which commits
/// before the origin is reset. PostgreSQL 15 lets one session at a time use
/// an origin: another worker's apply is waited for (briefly, and only for
/// as long as one apply transaction lasts).
pub async fn apply_imports(db: &Client, target: &str, n: i32, worker: &str) -> Result<ImportTally, WorkerError> {
    let mut waited = std::time::Duration::ZERO;
    loop {
        match db.execute("SELECT sync._origin_setup()", &[]).await {
            Ok(_) => break,
            Err(e)
                if e.code() == Some(&tokio_postgres::error::SqlState::OBJECT_IN_USE)
                    && waited < std::time::Duration::from_secs(60) =>
            {
                let pause = std::time::Duration::from_millis(20);
                tokio::time::sleep(pause).await;
                waited += pause;
            }
            Err(e) => return Err(WorkerError::db("setting up the replication origin syncbridge")(e)),
        }
    }
    let r = db
        .query_one(
            "SELECT applied, echoes, conflicts, awaiting, failed, remaining FROM sync.apply_imports($1, $2, $3)",
            &[&target, &n, &worker],
        )
        .await
        .map_err(WorkerError::db("applying pulled changes"));
    let reset = db
        .execute("SELECT sync._origin_reset()", &[])
        .await
        .map_err(WorkerError::db("resetting the replication origin"));
    let r = r?;
    reset?;
    Ok(ImportTally {
        applied: r.get(0),
        echoes: r.get(1),
        conflicts: r.get(2),
        awaiting: r.get(3),
        failed: r.get(4),
        remaining: r.get(5),
    })
}

/// `sync.pull_due(target)`: seconds until a list of the target is due for
/// a pull (0: now), None when the target has no list to pull.
pub async fn pull_due(db: &Client, target: &str) -> Result<Option<f64>, WorkerError> {
    Ok(db
        .query_one("SELECT sync.pull_due($1)", &[&target])
        .await
        .map_err(WorkerError::db("asking when the next pull is due"))?
        .get(0))
}

// ---------------------------------------------------------------------------
// Metrics (read-only samples)
// ---------------------------------------------------------------------------

/// One definition's open exports (or inbound changes) in one state.
#[derive(Debug, Clone, PartialEq)]
pub struct QueueDepth {
    /// `export` or `import`.
    pub queue: String,
    /// The definition's target.
    pub target: String,
    /// The definition.
    pub definition: String,
    /// The state.
    pub state: String,
    /// How many.
    pub count: i64,
    /// Seconds since the oldest of them was staged (0: none).
    pub oldest_age: f64,
}

/// Open exports and inbound changes per definition and state, 0 included
/// (`sync.queue_depths`: the extension says which states are open).
pub async fn queue_depths(db: &Client) -> Result<Vec<QueueDepth>, WorkerError> {
    let rows = db
        .query("SELECT queue, target, definition, state, items, oldest_age FROM sync.queue_depths()", &[])
        .await
        .map_err(WorkerError::db("counting the open exports and inbound changes"))?;
    Ok(rows
        .iter()
        .map(|r| QueueDepth {
            queue: r.get(0),
            target: r.get(1),
            definition: r.get(2),
            state: r.get(3),
            count: r.get(4),
            oldest_age: r.get::<_, f64>(5).max(0.0),
        })
        .collect())
}

/// WAL behind the slot: (current position - confirmed position, current
/// position - restart position) in bytes; None when the slot does not exist.
pub async fn slot_lag_bytes(db: &Client, slot: &str) -> Result<Option<(f64, f64)>, WorkerError> {
    let row = db
        .query_opt(
            "SELECT confirmed_lag_bytes::float8, wal_held_bytes::float8 FROM sync._slot_state($1) WHERE slot_exists",
            &[&slot],
        )
        .await
        .map_err(WorkerError::db("reading the slot's position"))?;
    Ok(row.map(|r| (r.get::<_, Option<f64>>(0).unwrap_or(0.0), r.get::<_, Option<f64>>(1).unwrap_or(0.0))))
}

#[cfg(test)]
mod tests {
    use super::compatible;

    #[test]
    fn a_worker_speaks_to_extensions_of_its_major_and_minor_version() {
        assert!(compatible("0.2.0", "0.2.0"));
        assert!(compatible("0.2.3", "0.2.0"));
        assert!(!compatible("0.1.0", "0.2.0"));
        assert!(!compatible("0.3.0", "0.2.1"));
        assert!(!compatible("1.2.0", "0.2.0"));
    }
}
