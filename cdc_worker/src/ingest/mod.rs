//! Ingest: stream the slot, hand changed keys to the extension, confirm LSNs.
//!
//! The loop decodes pgoutput messages, collects the keys of changed rows per
//! relation (deduplicated, bounded in count and in time), and stages them
//! with `sync.stage` in one transaction that also records the LSN
//! (`sync.checkpoint`). Only after that transaction commits is the LSN
//! confirmed to the server. A crash anywhere replays from the last confirmed
//! LSN, and re-staging is idempotent, so nothing is lost and nothing doubles.
//!
//! Staging runs on its own connection and task, so decoding the next batch
//! overlaps staging the previous one: batches go to the stager in WAL order
//! through a queue of one, and an LSN is confirmed when the stager reports
//! its transaction committed.
//!
//! A transaction larger than one batch is staged in chunks as it streams (its
//! LSN is confirmed only at its commit), so memory stays bounded whatever its
//! size. Transactions whose replication origin is `syncbridge` (remote
//! changes applied by two-way sync) are skipped.

use std::collections::HashMap;
use std::time::Duration;

use tokio::sync::watch;

mod backfill;
mod batch;
mod slot;
mod stager;
mod stream;

use backfill::{backfill_all, backfill_loop};
use batch::Batch;
use stager::StagerHandle;
use stream::Ingest;

use crate::error::WorkerError;
use crate::extension;
use crate::pg::dsn::Dsn;
use crate::source::lsn::Lsn;
use crate::source::replication::ReplicationConnection;

/// The replication origin under which syncbridge applies remote changes; the
/// ingest skips transactions carrying it.
pub const SYNCBRIDGE_ORIGIN: &str = "syncbridge";

/// Namespace of the slot readers' session locks (with `hashtext(slot)`): its
/// own, one above the extension's (1937337955, 'sync' as an int4, with a
/// definition id for staging and -1 for sync.purge: the worker never takes
/// those), so that a slot's hash can never equal a definition id, whose
/// staging lock (on the stager's session) would then wait for the ingest
/// forever.
pub const SLOT_LOCK_NAMESPACE: i32 = 1_937_337_956;

/// How the ingest runs.
#[derive(Debug, Clone)]
pub struct IngestConfig {
    /// Replication slot to stream; default: the database's `sync.slot_name`.
    pub slot: Option<String>,
    /// Publication the slot streams.
    pub publication: String,
    /// Most distinct keys held before they are staged.
    pub batch_max_keys: usize,
    /// Longest a changed key waits before it is staged.
    pub batch_max_wait: Duration,
    /// How often the server hears where we stand (and idle slots advance).
    pub status_interval: Duration,
    /// Keys per backfill step (one transaction each).
    pub backfill_chunk: i32,
    /// Stop once everything committed before the start is staged and every
    /// backfill is done.
    pub once: bool,
    /// Decode only: no staging, no confirmation (for measuring the decoder).
    pub decode_only: bool,
    /// Name recorded in `sync.runs` and logs.
    pub worker_name: String,
    /// Told after each staging transaction commits (the exporter in the same
    /// process wakes at once instead of at its next poll).
    pub staged: Option<std::sync::Arc<tokio::sync::Notify>>,
}

impl IngestConfig {
    /// Default publication.
    pub const PUBLICATION: &'static str = "syncbridge_pub";
    /// Default batch size in keys.
    pub const BATCH_MAX_KEYS: usize = 10_000;
    /// Default batch age.
    pub const BATCH_MAX_WAIT: Duration = Duration::from_millis(200);
    /// Default status interval.
    pub const STATUS_INTERVAL: Duration = Duration::from_secs(10);
    /// Default backfill chunk.
    pub const BACKFILL_CHUNK: i32 = 5_000;

    /// Checks the bounds.
    pub fn validate(&self) -> Result<(), String> {
        if !(1..=1_000_000).contains(&self.batch_max_keys) {
            return Err(format!("batch size {} must be between 1 and 1000000 keys", self.batch_max_keys));
        }
        if self.batch_max_wait > Duration::from_secs(60) {
            return Err("batch wait must be at most 60 s".into());
        }
        if self.status_interval < Duration::from_millis(100) || self.status_interval > Duration::from_secs(300) {
            return Err("status interval must be between 0.1 s and 300 s".into());
        }
        if !(1..=1_000_000).contains(&self.backfill_chunk) {
            return Err(format!("backfill chunk {} must be between 1 and 1000000", self.backfill_chunk));
        }
        Ok(())
    }
}

impl Default for IngestConfig {
    fn default() -> Self {
        IngestConfig {
            slot: None,
            publication: Self::PUBLICATION.to_owned(),
            batch_max_keys: Self::BATCH_MAX_KEYS,
            batch_max_wait: Self::BATCH_MAX_WAIT,
            status_interval: Self::STATUS_INTERVAL,
            backfill_chunk: Self::BACKFILL_CHUNK,
            once: false,
            decode_only: false,
            worker_name: crate::runtime::default_worker_name(),
            staged: None,
        }
    }
}

/// What one ingest session did.
#[derive(Debug, Default, Clone)]
pub struct IngestSummary {
    /// Transactions decoded (committed ones, including skipped).
    pub transactions: u64,
    /// Row changes decoded.
    pub changes: u64,
    /// Keys handed to `sync.stage` (after deduplication per batch).
    pub keys_staged: u64,
    /// Staging transactions.
    pub batches: u64,
    /// Transactions skipped for their `syncbridge` origin.
    pub skipped_own: u64,
    /// Backfill chunks run.
    pub backfill_steps: u64,
    /// The last LSN confirmed to the server.
    pub confirmed: Lsn,
}

/// Runs the ingest until shutdown (or, with `once`, until caught up).
pub async fn run(
    dsn: &Dsn,
    config: &IngestConfig,
    mut shutdown: watch::Receiver<bool>,
) -> Result<IngestSummary, WorkerError> {
    let db = crate::pg::connect(dsn, "syncbridge-ingest").await?;
    extension::require_compatible(&db, dsn).await?;
    let slot: String = match &config.slot {
        Some(s) => s.clone(),
        None => extension::slot_name(&db).await?,
    };

    // One reader per slot: an advisory lock held by this session.
    if !slot::lock(&db, &slot, &mut shutdown).await? {
        return Ok(IngestSummary::default());
    }

    let pub_exists: bool = db
        .query_one("SELECT EXISTS (SELECT 1 FROM pg_publication WHERE pubname = $1)", &[&config.publication])
        .await
        .map_err(WorkerError::db("looking for the publication"))?
        .get(0);
    if !pub_exists {
        return Err(WorkerError::Config {
            message: format!("publication {} does not exist: no definition was enabled yet", config.publication),
            hint: "SELECT sync.enable('<definition>'); creates it".into(),
        });
    }

    let existing = db
        .query_opt(
            "SELECT plugin, database, confirmed_flush_lsn::text, active_pid FROM pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .await
        .map_err(WorkerError::db("looking for the slot"))?;
    // The extension decides whether the slot may be resumed: one that was
    // dropped, invalidated or moved behind our back puts the definitions in
    // error (nothing is staged from the gap) and is started anew.
    let check = extension::slot_check(&db, &slot).await?;
    let why = check.detail.clone();
    let existing = match (check.action.clone(), existing) {
        (extension::SlotAction::Use, existing) => existing,
        (extension::SlotAction::Create, None) => None,
        (extension::SlotAction::Create | extension::SlotAction::Recreate, Some(row)) => {
            let active: Option<i32> = row.get(3);
            tracing::error!(slot = %slot, reason = %why, active_pid = ?active, "the replication slot is lost: dropping it and creating it anew");
            db.execute("SELECT pg_drop_replication_slot($1)", &[&slot])
                .await
                .map_err(WorkerError::db("dropping the lost replication slot"))?;
            None
        }
        (extension::SlotAction::Recreate, None) => None,
    };
    if why != "resuming" {
        tracing::warn!(slot = %slot, "{why}");
    }
    let cursor = extension::slot_cursor(&db, &slot).await?;
    let cursor: Lsn = cursor.and_then(|c| c.parse().ok()).unwrap_or(Lsn::ZERO);
    let current_db: String =
        db.query_one("SELECT current_database()::text", &[]).await.map_err(WorkerError::db("current database"))?.get(0);

    let run_id = extension::start_run(&db, "stream", None, &config.worker_name).await?;

    // From here on the run is recorded: a failure before streaming starts
    // finishes it as failed (else it would stay 'running').
    let prepared = async {
        let mut repl = ReplicationConnection::connect(dsn, "syncbridge-worker").await?;
        let system = repl.identify_system().await?;
        // Where `--once` may stop. The server's flush position is not enough: with
        // `synchronous_commit = off` a transaction is committed (and visible) before
        // its commit record is flushed, and the server streams only flushed WAL.
        // A non-transactional logical message is placed after every commit made so
        // far; the stream passes it only once they are all decoded. pgoutput
        // forwards no message unless asked to, so it costs one small WAL record.
        let target_lsn = if config.once {
            let marker: String = db
                .query_one("SELECT pg_logical_emit_message(false, 'syncbridge', 'caught-up marker')::text", &[])
                .await
                .map_err(WorkerError::db("marking the WAL position to catch up to"))?
                .get(0);
            marker
                .parse::<Lsn>()
                .map_err(|e| WorkerError::internal(format!("the server returned an unreadable LSN {marker:?}: {e}")))?
        } else {
            system.xlog_pos
        };
        let mut summary = IngestSummary::default();
        let start = match existing {
            Some(row) => {
                let plugin: Option<String> = row.get(0);
                let database: Option<String> = row.get(1);
                if plugin.as_deref() != Some("pgoutput") || database.as_deref() != Some(current_db.as_str()) {
                    return Err(WorkerError::Config {
                        message: format!(
                            "slot {slot} exists but is not a pgoutput slot of database {current_db} (plugin {plugin:?}, database {database:?})"
                        ),
                        hint: "Drop it (SELECT pg_drop_replication_slot(...)) or set sync.slot_name to another name".into(),
                    });
                }
                if check.enable_failover {
                    repl.enable_failover(&slot).await?;
                    tracing::info!(slot = %slot, "turned failover on for the slot (standbys with sync_replication_slots keep a copy)");
                }
                let confirmed: Lsn = row.get::<_, Option<String>>(2).and_then(|l| l.parse().ok()).unwrap_or(Lsn::ZERO);
                tracing::info!(slot = %slot, confirmed = %confirmed, staged = %cursor, "resuming the slot");
                confirmed.max(cursor)
            }
            None => {
                let created = repl.create_slot(&slot, true, check.failover).await?;
                tracing::info!(slot = %slot, consistent_point = %created.consistent_point, failover = check.failover, "created the slot");
                // Where the slot starts is known from now on: a slot created
                // again behind our back starts later, and is told apart.
                extension::slot_progress(&db, &slot, &created.consistent_point.to_string()).await?;
                // The initial load reads the tables exactly as of the slot's start:
                // everything after it comes through the stream.
                if let Some(snapshot) = &created.snapshot_name {
                    if !config.decode_only {
                        summary.backfill_steps += backfill_all(&db, config, Some(snapshot), &mut shutdown).await?;
                    }
                }
                created.consistent_point
            }
        };

        let stager = if config.decode_only {
            StagerHandle::idle()
        } else {
            StagerHandle::start(
                crate::pg::connect(dsn, "syncbridge-stage").await?,
                slot.clone(),
                run_id,
                config.staged.clone(),
                stager::Records { margin: check.record_margin, wait_for_standbys: check.failover },
            )
        };
        let stream = repl.start_replication(&slot, start, &config.publication).await?;
        Ok::<_, WorkerError>((stream, start, target_lsn, summary, stager))
    }
    .await;
    let (stream, start, target_lsn, summary, stager) = match prepared {
        Ok(p) => p,
        Err(e) => {
            extension::finish_run(&db, run_id, "failed", Some(e.to_string()), serde_json::Value::Null).await;
            return Err(e);
        }
    };
    let mut ingest = Ingest {
        stream,
        config,
        slot: slot.clone(),
        relations: HashMap::new(),
        batch: Batch::default(),
        in_tx: false,
        skip_tx: false,
        safe_lsn: start,
        queued_lsn: start.max(cursor),
        stager,
        confirmed: start,
        received: start,
        summary,
        in_flight: 0,
        tx_keys: false,
        meters: stream::Meters::new(&slot),
    };
    // Connected, the slot streaming, the stager and the backfill started.
    crate::metrics::health::ready("ingest");
    let backfill_dsn = dsn.clone();
    let backfill_config = config.clone();
    // The backfill stops at shutdown, or when the stream fails (the ingest
    // restarts as a whole): between two chunks, recording its run.
    let (backfill_stop, backfill_shutdown, forward_shutdown) = crate::runtime::stop_channel(&shutdown);
    let mut backfill = (!config.decode_only)
        .then(|| tokio::spawn(async move { backfill_loop(&backfill_dsn, &backfill_config, backfill_shutdown).await }));
    let mut result = ingest.stream_loop(&db, &mut shutdown, target_lsn, &mut backfill).await;
    if result.is_ok() {
        result = ingest.stream.finish().await.map_err(WorkerError::from);
    }
    let mut summary = ingest.summary.clone();
    let (status, error) = match &result {
        Ok(()) => ("succeeded", None),
        Err(e) => ("failed", Some(e.to_string())),
    };
    forward_shutdown.abort();
    // The backfill stops too: at shutdown, or when the stream failed (it
    // would run until shutdown, holding the restart back), after its chunk in
    // flight. (With --once it has ended already.)
    let _ = backfill_stop.send(true);
    if let Some(mut task) = backfill.take() {
        let joined = if result.is_err() {
            match tokio::time::timeout(Duration::from_secs(60), &mut task).await {
                Ok(joined) => joined,
                Err(_) => {
                    tracing::warn!("the backfill did not stop within a minute; leaving it (its chunk is staged again after the restart)");
                    task.abort();
                    task.await
                }
            }
        } else {
            task.await
        };
        match joined {
            Err(e) if e.is_cancelled() => {}
            Ok(Ok(steps)) => summary.backfill_steps += steps,
            Ok(Err(e)) => tracing::warn!(error = %e, "backfill stopped"),
            Err(e) => tracing::warn!(error = %e, "backfill task failed"),
        }
    }
    drop(ingest);
    let detail = serde_json::json!({"transactions": summary.transactions, "changes": summary.changes,
        "keys_staged": summary.keys_staged, "batches": summary.batches, "skipped_own": summary.skipped_own,
        "backfill_steps": summary.backfill_steps, "confirmed": summary.confirmed.to_string()});
    extension::finish_run(&db, run_id, status, error, detail).await;
    result.map(|()| summary)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_bounds() {
        assert!(IngestConfig::default().validate().is_ok());
        let c = IngestConfig { batch_max_keys: 0, ..IngestConfig::default() };
        assert!(c.validate().is_err());
        let c = IngestConfig { status_interval: Duration::from_secs(0), ..IngestConfig::default() };
        assert!(c.validate().is_err());
    }
}
