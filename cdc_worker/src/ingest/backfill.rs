//! The initial load: every pending definition's keys, chunk by chunk,
//! staged through `sync.backfill_step`; in the slot's exported snapshot
//! when the slot was just created.

use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio_postgres::Client;

use super::IngestConfig;
use crate::error::WorkerError;
use crate::extension;
use crate::pg::dsn::Dsn;

/// Runs every pending backfill to the end, chunk by chunk; in `snapshot` when
/// given (the slot's exported snapshot, before streaming starts).
pub(super) async fn backfill_all(
    db: &Client,
    config: &IngestConfig,
    snapshot: Option<&str>,
    shutdown: &mut watch::Receiver<bool>,
) -> Result<u64, WorkerError> {
    let defs = extension::backfills_pending(db).await?;
    let mut steps = 0u64;
    for def in defs {
        let run_id = extension::start_run(db, "backfill", Some(&def), &config.worker_name).await?;
        let steps_before = steps;
        let result = backfill_one(db, config, snapshot, &def, run_id, shutdown, &mut steps).await;
        let (status, error) = match &result {
            Ok(true) => ("succeeded", None),
            Ok(false) => ("cancelled", None),
            Err(e) => ("failed", Some(e.to_string())),
        };
        extension::finish_run(db, run_id, status, error, serde_json::json!({"steps": steps - steps_before})).await;
        if !result? {
            break;
        }
    }
    Ok(steps)
}

/// Backfills one definition to the end (true) or until shutdown (false); each
/// step counts in `steps`. Its run (kind `backfill`) is its own, so that its
/// staging never waits on the stream's run row.
async fn backfill_one(
    db: &Client,
    config: &IngestConfig,
    snapshot: Option<&str>,
    def: &str,
    run_id: i64,
    shutdown: &mut watch::Receiver<bool>,
    steps: &mut u64,
) -> Result<bool, WorkerError> {
    let started = Instant::now();
    // With the slot's exported snapshot, the keys of each chunk are read
    // as of the slot's start (the snapshot stays importable while the
    // replication connection waits), and staged in a transaction of their
    // own that reads the current rows, as all staging does. The scan
    // starts over: a new slot is a new starting point.
    let mut after: Option<String> = None;
    // Once the extension defers the backfill's keys (the target far behind),
    // each step reads only where its range ends, in its own snapshot: the
    // keys are read when they are staged, as the table holds them then.
    let mut deferring = false;
    loop {
        if *shutdown.borrow() {
            return Ok(false);
        }
        let step_started = Instant::now();
        let progress = if let (Some(snap), false) = (snapshot, deferring) {
            let chunk = read_chunk_in_snapshot(db, snap, def, after.as_deref(), config.backfill_chunk).await?;
            let progress = extension::backfill_step_keys(
                db,
                def,
                config.backfill_chunk,
                run_id,
                &chunk.0,
                after.as_deref(),
                chunk.1.as_deref(),
            )
            .await?;
            after = chunk.1.or(after);
            progress
        } else {
            extension::backfill_step(db, def, config.backfill_chunk, run_id).await?
        };
        *steps += 1;
        crate::metrics::BATCH_DURATION.observe(&["backfill_chunk"], step_started.elapsed().as_secs_f64());
        if progress.done {
            tracing::info!(definition = %def, rows = progress.rows_done, secs = started.elapsed().as_secs_f64(), "backfill done");
            return Ok(true);
        }
        if progress.deferring && !deferring {
            tracing::info!(definition = %def, rows_done = progress.rows_done, "the target is far behind: the rest of the backfill is deferred as key ranges (sync.defer_after)");
        }
        // (for good: the snapshot's scan stands where the ranges began; a
        // later step that stages keys again reads them in its own snapshot)
        deferring |= progress.deferring;
        tracing::debug!(definition = %def, rows_done = progress.rows_done, rows_total = progress.rows_total, "backfill progress");
    }
}

/// Reads the keys of the chunk after `after` in the exported snapshot `snap`:
/// (keys, last key), both JSON text.
async fn read_chunk_in_snapshot(
    db: &Client,
    snap: &str,
    def: &str,
    after: Option<&str>,
    chunk: i32,
) -> Result<(String, Option<String>), WorkerError> {
    db.batch_execute(&format!(
        "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; SET TRANSACTION SNAPSHOT {}",
        crate::source::replication::quote_literal(snap)
    ))
    .await
    .map_err(WorkerError::db("importing the slot's snapshot"))?;
    let read = extension::backfill_keys(db, def, after, chunk).await;
    let end = db.batch_execute(if read.is_ok() { "COMMIT" } else { "ROLLBACK" }).await;
    let chunk = read.map_err(WorkerError::db("reading a backfill chunk in the slot's snapshot"))?;
    end.map_err(WorkerError::db("ending the snapshot transaction"))?;
    Ok(chunk)
}

/// Backfills definitions enabled while the worker runs (fresh snapshots:
/// see `sql/backfill.sql` for why that is exact), polling every second.
pub(super) async fn backfill_loop(
    dsn: &Dsn,
    config: &IngestConfig,
    mut shutdown: watch::Receiver<bool>,
) -> Result<u64, WorkerError> {
    let db = crate::pg::connect(dsn, "syncbridge-backfill").await?;
    let mut steps = 0;
    loop {
        let mut attempt = 0u32;
        let n = loop {
            match backfill_all(&db, config, None, &mut shutdown).await {
                Ok(n) => break n,
                Err(e) if e.is_transient() && attempt < 5 => {
                    attempt += 1;
                    tracing::warn!(error = %e, attempt, "backfill step failed; retrying");
                    tokio::time::sleep(Duration::from_millis(200 * u64::from(attempt))).await;
                }
                Err(e) => return Err(e),
            }
        };
        steps += n;
        if config.once && extension::backfills_pending(&db).await?.is_empty() {
            return Ok(steps);
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = shutdown.changed() => return Ok(steps),
        }
    }
}
