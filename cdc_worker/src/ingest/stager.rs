//! The stager: its own session and task, staging batches with `sync.stage`
//! and recording each batch's LSN in the same transaction.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::mpsc;
use tokio_postgres::Client;

use crate::error::WorkerError;
use crate::extension;
use crate::metrics;
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
    /// Commit timestamps of the transactions completed in this job
    /// (microseconds since 2000-01-01), for the metrics.
    pub(super) commits: Vec<i64>,
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
        records: Records,
    ) -> Self {
        let (jobs_tx, jobs) = mpsc::channel(1);
        let (done_tx, done) = mpsc::unbounded_channel();
        let stager = Stager { db, slot, run_id, notify, recorded: Lsn::ZERO, records, nudged: None };
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
    pub(super) records: Records,
    /// When `sync._nudge_slot` was last called.
    pub(super) nudged: Option<std::time::Instant>,
}

/// How often the stager asks for a standby snapshot while the slot's
/// restart position lags (`sync._nudge_slot`): the slot holds about this
/// long of WAL (plus the confirmation's lag). Every 5 s held 17 MiB of a
/// source writing 3 MiB/s to tables no definition publishes (bench
/// scenario 7); a running-xacts record a second costs some 100 bytes of
/// WAL, written only while the restart position lags.
const NUDGE_EVERY: Duration = Duration::from_secs(1);

/// How the stager keeps the records a confirmation relies on (from
/// `sync.slot_check`: the extension decides).
#[derive(Debug, Clone, Copy)]
pub(super) struct Records {
    /// Bytes a position must move before a confirmation without staging is
    /// recorded (`sync.slot_progress`): more than the record itself writes
    /// (the extension allows the slot the same margin).
    pub(super) margin: u64,
    /// After each record, wait until the standbys the primary waits for have
    /// it (`sync.standbys_have`) before the position it covers is confirmed:
    /// a failover copy of the slot is then never ahead of the records.
    pub(super) wait_for_standbys: bool,
}

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
                    if lsn.bytes_since(self.recorded) > self.records.margin {
                        extension::slot_progress(&self.db, &self.slot, &lsn.to_string()).await?;
                        self.recorded = lsn;
                        self.wait_for_standbys().await?;
                    }
                }
                self.nudge().await;
                if done.send(Staged { lsn: job.lsn, keys: 0, batch }).is_err() {
                    break;
                }
                continue;
            }
            // A deadlock or serialization failure against a backfill or an
            // exporter rolls the whole transaction back: try it again.
            let mut attempt = 0u32;
            let started = std::time::Instant::now();
            let staged = loop {
                match self.stage_tx(&job.rels, &job.truncates, job.lsn).await {
                    Ok(staged) => break staged,
                    Err(WorkerError::Database { source, .. })
                        if attempt < 5 && matches!(source.code().map(|c| c.code()), Some("40001" | "40P01")) =>
                    {
                        attempt += 1;
                        tracing::warn!(error = %crate::pg::sqlstate::Described(&source), attempt, "staging conflicted; trying again");
                        tokio::time::sleep(Duration::from_millis(50 * u64::from(attempt))).await;
                    }
                    Err(e) => return Err(e),
                }
            };
            self.wait_for_standbys().await?;
            self.nudge().await;
            if batch {
                self.count(&job, &staged, started.elapsed().as_secs_f64());
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

    /// Every few seconds, a standby snapshot when the slot's restart
    /// position lags (so that it does not hold WAL it no longer needs).
    /// A failure is logged and changes nothing else.
    async fn nudge(&mut self) {
        if self.nudged.is_some_and(|t| t.elapsed() < NUDGE_EVERY) {
            return;
        }
        self.nudged = Some(std::time::Instant::now());
        match extension::nudge_slot(&self.db, &self.slot).await {
            Ok(wrote) => tracing::debug!(slot = %self.slot, wrote, "standby snapshot check"),
            Err(e) => {
                tracing::warn!(slot = %self.slot, error = %e, "cannot write a standby snapshot; the slot may hold WAL longer")
            }
        }
    }

    /// Waits, when asked to, until the physical standbys the primary waits
    /// for have every record committed so far (a standby that is down holds
    /// the confirmations back, as the server holds the stream back).
    async fn wait_for_standbys(&self) -> Result<(), WorkerError> {
        if !self.records.wait_for_standbys {
            return Ok(());
        }
        let started = std::time::Instant::now();
        let mut warned = started;
        let mut pause = Duration::from_millis(2);
        while !extension::standbys_have(&self.db).await? {
            if warned.elapsed() >= Duration::from_secs(10) {
                tracing::warn!(
                    waited_secs = started.elapsed().as_secs(),
                    "the standbys in synchronized_standby_slots do not have our records yet: confirmations wait"
                );
                warned = std::time::Instant::now();
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(200));
        }
        Ok(())
    }

    /// Counts a committed job in the metrics: its keys, what `sync.stage`
    /// queued per definition, how long it took, and for each transaction
    /// it completed the time from its commit on the source until now.
    fn count(&self, job: &StageJob, staged: &[extension::Staged], secs: f64) {
        metrics::INGEST_KEYS_STAGED.add(&[], job.keys as f64);
        for s in staged {
            metrics::INGEST_EXPORTS_STAGED.add(&[&s.definition], f64::from(s.exports));
            if s.deferred > 0 {
                metrics::INGEST_KEYS_DEFERRED.add(&[&s.definition], f64::from(s.deferred));
            }
        }
        metrics::BATCH_DURATION.observe(&["stage"], secs);
        if let Some(last) = job.commits.iter().max() {
            let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64());
            let latency = metrics::COMMIT_TO_STAGED.histogram_of(&[]);
            for ts in &job.commits {
                latency.observe(now - unix_seconds(*ts));
            }
            metrics::SLOT_LAG_SECONDS.set(&[&self.slot], (now - unix_seconds(*last)).max(0.0));
        }
    }

    /// One staging transaction: every relation's keys, the truncates, and the
    /// LSN (when given) in `sync.cursors`. Returns what `sync.stage` queued
    /// and deferred per definition.
    pub(super) async fn stage_tx(
        &mut self,
        rels: &[(i64, String)],
        truncates: &[i64],
        lsn: Option<Lsn>,
    ) -> Result<Vec<extension::Staged>, WorkerError> {
        let tx = self.db.transaction().await.map_err(WorkerError::db("starting a staging transaction"))?;
        // Per definition, summed over the relations (errors were logged).
        let mut staged: Vec<extension::Staged> = Vec::new();
        for (oid, json) in rels {
            for s in extension::stage(&tx, *oid, json, self.run_id).await? {
                if let Some(err) = &s.error {
                    tracing::error!(definition = %s.definition, error = %err, "staging failed; the definition is now in state error");
                }
                match staged.iter_mut().find(|t| t.definition == s.definition) {
                    Some(t) => {
                        t.exports += s.exports;
                        t.deferred += s.deferred;
                    }
                    None => staged.push(extension::Staged { error: None, ..s }),
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
        Ok(staged)
    }
}

/// A pgoutput timestamp (microseconds since 2000-01-01 UTC) in Unix seconds.
pub(super) fn unix_seconds(pg_micros: i64) -> f64 {
    const PG_EPOCH_UNIX: f64 = 946_684_800.0;
    pg_micros as f64 / 1e6 + PG_EPOCH_UNIX
}

#[cfg(test)]
mod tests {
    #[test]
    fn pgoutput_timestamps_become_unix_seconds() {
        assert_eq!(super::unix_seconds(0), 946_684_800.0);
        // 2024-01-01 00:00:00 UTC
        assert_eq!(super::unix_seconds(757_382_400_000_000), 1_704_067_200.0);
    }
}
