//! The stager: its own session and task, staging batches with `sync.stage`
//! and recording each batch's LSN in the same transaction.

use std::time::Duration;

use tokio::sync::mpsc;
use tokio_postgres::Client;

use crate::error::WorkerError;
use crate::extension;
use crate::source::lsn::Lsn;

/// A batch for the stager; jobs are staged one at a time, in WAL order.
pub(super) struct StageJob {
    /// Per relation (oid), the keys as a JSON array.
    pub(super) rels: Vec<(i64, String)>,
    /// Relations truncated.
    pub(super) truncates: Vec<i64>,
    /// Recorded with the keys; None inside a transaction still streaming.
    pub(super) lsn: Option<Lsn>,
    /// Distinct keys in `rels`.
    pub(super) keys: usize,
    /// Record `lsn` in `sync.cursors` (else, with nothing to stage, it is
    /// only confirmed).
    pub(super) record: bool,
}

/// The stager committed a job.
pub(super) struct Staged {
    pub(super) lsn: Option<Lsn>,
    pub(super) keys: usize,
    /// Keys or truncates were staged (not only an LSN recorded).
    pub(super) batch: bool,
}

/// The ingest's end of the stager: a queue of one job (so at most one batch
/// waits while another is staged and a third is collected: memory stays
/// bounded) and the commits coming back.
pub(super) struct StagerHandle {
    pub(super) jobs: Option<mpsc::Sender<StageJob>>,
    pub(super) done: mpsc::UnboundedReceiver<Staged>,
    pub(super) task: Option<tokio::task::JoinHandle<Result<(), WorkerError>>>,
}

impl StagerHandle {
    /// Stages on `db` (its own connection, so that staging overlaps decoding).
    pub(super) fn start(
        db: Client,
        slot: String,
        run_id: i64,
        notify: Option<std::sync::Arc<tokio::sync::Notify>>,
    ) -> Self {
        let (jobs_tx, jobs) = mpsc::channel(1);
        let (done_tx, done) = mpsc::unbounded_channel();
        let stager = Stager { db, slot, run_id, notify, recorded: Lsn::ZERO };
        let task = tokio::spawn(stager.run(jobs, done_tx));
        StagerHandle { jobs: Some(jobs_tx), done, task: Some(task) }
    }

    /// For decode-only runs: takes no job and never reports.
    pub(super) fn idle() -> Self {
        let (jobs_tx, mut jobs) = mpsc::channel::<StageJob>(1);
        let (done_tx, done) = mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            let _done = done_tx;
            while jobs.recv().await.is_some() {}
            Ok(())
        });
        StagerHandle { jobs: Some(jobs_tx), done, task: Some(task) }
    }

    pub(super) async fn send(&mut self, job: StageJob) -> Result<(), WorkerError> {
        let sent = match &self.jobs {
            Some(jobs) => jobs.send(job).await.is_ok(),
            None => false,
        };
        if sent {
            Ok(())
        } else {
            Err(self.failure().await)
        }
    }

    /// Why the stager stopped while the ingest still ran (it stops early only
    /// when it fails).
    pub(super) async fn failure(&mut self) -> WorkerError {
        self.result().await.err().unwrap_or_else(|| WorkerError::internal("the stager stopped before the ingest"))
    }

    /// How the stager ended (waits for it).
    pub(super) async fn result(&mut self) -> Result<(), WorkerError> {
        match self.task.take() {
            Some(task) => task.await.map_err(|e| WorkerError::internal(format!("the staging task failed: {e}")))?,
            None => Ok(()),
        }
    }
}

impl Drop for StagerHandle {
    fn drop(&mut self) {
        // The ingest failed: a staging transaction in flight rolls back, or
        // commits unconfirmed; either way it is replayed from the last
        // confirmed LSN, and staging is idempotent.
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

pub(super) struct Stager {
    pub(super) db: Client,
    pub(super) slot: String,
    pub(super) run_id: i64,
    pub(super) notify: Option<std::sync::Arc<tokio::sync::Notify>>,
    /// The last position recorded (a staging's cursor or `sync.slot_progress`).
    pub(super) recorded: Lsn,
}

/// Bytes a position must move before a confirmation without staging is
/// recorded (`sync.slot_progress`): more than the record's own commit
/// moves it (the extension allows the slot the same margin).
const RECORD_MIN_BYTES: u64 = 128;

impl Stager {
    pub(super) async fn run(
        mut self,
        mut jobs: mpsc::Receiver<StageJob>,
        done: mpsc::UnboundedSender<Staged>,
    ) -> Result<(), WorkerError> {
        while let Some(job) = jobs.recv().await {
            let batch = !(job.rels.is_empty() && job.truncates.is_empty());
            if !batch && !job.record {
                // Recorded (unlogged) before it is confirmed, so that a slot
                // moved behind our back can be told from ours; not for the
                // few bytes this record's own commit moves the position.
                if let Some(lsn) = job.lsn {
                    if lsn.bytes_since(self.recorded) > RECORD_MIN_BYTES {
                        extension::slot_progress(&self.db, &self.slot, &lsn.to_string()).await?;
                        self.recorded = lsn;
                    }
                }
                if done.send(Staged { lsn: job.lsn, keys: 0, batch }).is_err() {
                    break;
                }
                continue;
            }
            // A deadlock or serialization failure against a backfill or an
            // exporter rolls the whole transaction back: try it again.
            let mut attempt = 0u32;
            loop {
                match self.stage_tx(&job.rels, &job.truncates, job.lsn).await {
                    Ok(()) => break,
                    Err(WorkerError::Database { source, .. })
                        if attempt < 5 && matches!(source.code().map(|c| c.code()), Some("40001" | "40P01")) =>
                    {
                        attempt += 1;
                        tracing::warn!(error = %crate::pg::sqlstate::Described(&source), attempt, "staging conflicted; trying again");
                        tokio::time::sleep(Duration::from_millis(50 * u64::from(attempt))).await;
                    }
                    Err(e) => return Err(e),
                }
            }
            if let Some(n) = &self.notify {
                if batch {
                    // Every waiting exporter (one per target), and a permit
                    // for one that is busy right now.
                    n.notify_waiters();
                    n.notify_one();
                }
            }
            tracing::debug!(keys = job.keys, lsn = ?job.lsn.map(|l| l.to_string()), "staged");
            if done.send(Staged { lsn: job.lsn, keys: job.keys, batch }).is_err() {
                break;
            }
        }
        Ok(())
    }

    /// One staging transaction: every relation's keys, the truncates, and the
    /// LSN (when given) in `sync.cursors`.
    pub(super) async fn stage_tx(
        &mut self,
        rels: &[(i64, String)],
        truncates: &[i64],
        lsn: Option<Lsn>,
    ) -> Result<(), WorkerError> {
        let tx = self.db.transaction().await.map_err(WorkerError::db("starting a staging transaction"))?;
        for (oid, json) in rels {
            for (def, _, err) in extension::stage(&tx, *oid, json, self.run_id).await? {
                if let Some(err) = err {
                    tracing::error!(definition = %def, error = %err, "staging failed; the definition is now in state error");
                }
            }
        }
        for oid in truncates {
            extension::stage_truncate(&tx, *oid).await?;
        }
        if let Some(lsn) = lsn {
            extension::checkpoint(&tx, &lsn.to_string(), &self.slot).await?;
        }
        tx.commit().await.map_err(WorkerError::db("committing the staged keys"))?;
        if let Some(lsn) = lsn {
            self.recorded = self.recorded.max(lsn);
        }
        Ok(())
    }
}
