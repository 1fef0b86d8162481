//! The stream loop: decode pgoutput messages, collect changed keys into
//! batches, hand them to the stager in WAL order, confirm LSNs once staged.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio_postgres::Client;

use super::batch::{key_object, Batch, RelationInfo};
use super::stager::{StageJob, Staged, StagerHandle};
use super::{IngestConfig, IngestSummary, SYNCBRIDGE_ORIGIN};
use crate::error::WorkerError;
use crate::metrics;
use crate::source::lsn::Lsn;
use crate::source::pgoutput::{self, Message, TupleData};
use crate::source::replication::{ReplError, ReplicationEvent, ReplicationStream};

/// Messages taken from what one read brought before the loop looks at its
/// other events again (a read of 64 KiB holds some 1,000 small changes).
const BUFFERED_RUN: usize = 1_000;

pub(super) struct Ingest<'a> {
    pub(super) stream: ReplicationStream,
    pub(super) config: &'a IngestConfig,
    pub(super) slot: String,
    pub(super) relations: HashMap<u32, RelationInfo>,
    pub(super) batch: Batch,
    pub(super) in_tx: bool,
    pub(super) skip_tx: bool,
    /// Everything before this is received whole (end of the last commit, or a
    /// keepalive's position between transactions).
    pub(super) safe_lsn: Lsn,
    /// The LSN of the last batch handed to the stager (recorded in
    /// sync.cursors once the stager commits it).
    pub(super) queued_lsn: Lsn,
    /// Staging, on its own task: batches in, commits out.
    pub(super) stager: StagerHandle,
    /// Confirmed to the server.
    pub(super) confirmed: Lsn,
    /// The furthest WAL position received.
    pub(super) received: Lsn,
    pub(super) summary: IngestSummary,
    /// Jobs handed to the stager and not reported committed yet.
    pub(super) in_flight: usize,
    /// The open transaction added keys (or a truncate) to the batch.
    pub(super) tx_keys: bool,
    /// Counters of the hot path, looked up once.
    pub(super) meters: Meters,
}

/// The ingest's counters.
pub(super) struct Meters {
    transactions: metrics::Counter,
    skipped: metrics::Counter,
    inserts: metrics::Counter,
    updates: metrics::Counter,
    deletes: metrics::Counter,
    truncates: metrics::Counter,
}

impl Meters {
    /// The counters, created at zero (and the slot's lag at 0).
    pub(super) fn new(slot: &str) -> Self {
        metrics::INGEST_KEYS_STAGED.touch(&[]);
        metrics::SLOT_LAG_SECONDS.set(&[slot], 0.0);
        let change = |op: &str| metrics::INGEST_CHANGES.counter_of(&[op]);
        Meters {
            transactions: metrics::INGEST_TRANSACTIONS.counter_of(&[]),
            skipped: metrics::INGEST_SKIPPED.counter_of(&[]),
            inserts: change("insert"),
            updates: change("update"),
            deletes: change("delete"),
            truncates: change("truncate"),
        }
    }
}

pub(super) type BackfillTask = tokio::task::JoinHandle<Result<u64, WorkerError>>;

impl Ingest<'_> {
    /// Streams until shutdown (or, with `once`, until caught up). `db` is the
    /// session holding the run and the slot's lock: losing it ends the loop.
    pub(super) async fn stream_loop(
        &mut self,
        db: &Client,
        shutdown: &mut watch::Receiver<bool>,
        target_lsn: Lsn,
        backfill: &mut Option<BackfillTask>,
    ) -> Result<(), WorkerError> {
        let session_lost = crate::pg::session::session_lost(db);
        tokio::pin!(session_lost);
        let mut status_tick = tokio::time::interval(self.config.status_interval);
        status_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut poke = tokio::time::interval(Duration::from_millis(100));
        poke.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let deadline = self.batch.since.map(|s| s + self.config.batch_max_wait);
            // Not on a timer while a batch already waits for the stager (one
            // staging, one queued): the keys go on collecting into one
            // larger batch (until full) instead of stalling the stream.
            let can_flush = !self.in_tx && !self.batch.is_empty() && self.in_flight < 2;
            tokio::select! {
                biased;
                _ = shutdown.changed() => {
                    tracing::info!(slot = %self.slot, "shutting down: staging the batch in flight");
                    self.flush().await?;
                    self.finish_staging().await?;
                    self.report(false).await?;
                    return Ok(());
                }
                e = &mut session_lost => return Err(e.into()),
                done = self.stager.done.recv() => match done {
                    Some(done) => self.staged(done).await?,
                    None => return Err(self.stager.failure().await),
                },
                ev = self.stream.next() => {
                    self.event(ev?).await?;
                    // What the same read brought, without a wake-up (and a
                    // pass through every branch above) per message; a bounded
                    // run, so that the other branches still get their turn.
                    for _ in 0..BUFFERED_RUN {
                        let Some(ev) = self.stream.next_buffered()? else { break };
                        self.event(ev).await?;
                    }
                }
                _ = async { tokio::time::sleep_until(deadline.unwrap_or_else(Instant::now).into()).await }, if can_flush && deadline.is_some() => {
                    self.flush().await?;
                }
                _ = status_tick.tick() => {
                    if !self.in_tx && self.batch.is_empty() && self.in_flight == 0 {
                        // Everything received is staged: no lag.
                        metrics::SLOT_LAG_SECONDS.set(&[&self.slot], 0.0);
                    }
                    if !self.in_tx && self.batch.is_empty() && self.safe_lsn > self.queued_lsn && !self.config.decode_only {
                        self.checkpoint_only().await?;
                    }
                    self.report(false).await?;
                }
                _ = poke.tick(), if self.config.once => {
                    if backfill.as_ref().is_some_and(|t| t.is_finished()) {
                        if let Some(t) = backfill.take() {
                            self.summary.backfill_steps += t.await.map_err(|e| WorkerError::internal(format!("the backfill task failed: {e}")))??;
                        }
                    }
                    if !self.in_tx {
                        // Caught up whatever the stager has in hand (a source
                        // writing faster than staging keeps two batches there);
                        // otherwise the batch goes only if none waits.
                        let caught_up = backfill.is_none() && self.confirmed >= target_lsn;
                        if caught_up || self.in_flight < 2 {
                            self.flush().await?;
                        }
                        if caught_up {
                            tracing::info!(slot = %self.slot, confirmed = %self.confirmed, "caught up");
                            self.finish_staging().await?;
                            return Ok(());
                        }
                        // Ask the server where it stands (it answers with a keepalive).
                        self.report(true).await?;
                    }
                }
            }
        }
    }

    /// One event of the stream.
    async fn event(&mut self, ev: ReplicationEvent) -> Result<(), WorkerError> {
        match ev {
            ReplicationEvent::XLogData { wal_start, wal_end, data, .. } => {
                self.received = self.received.max(wal_end).max(wal_start);
                self.handle(wal_start, &data).await?;
            }
            ReplicationEvent::Keepalive { wal_end, reply_requested } => {
                self.received = self.received.max(wal_end);
                if !self.in_tx && wal_end > self.safe_lsn {
                    self.safe_lsn = wal_end;
                }
                if reply_requested {
                    self.report(false).await?;
                }
            }
            ReplicationEvent::End => {
                self.flush().await?;
                self.finish_staging().await?;
                return Err(WorkerError::Replication(ReplError::Protocol("the server ended the stream".into())));
            }
        }
        Ok(())
    }

    pub(super) async fn handle(&mut self, wal_start: Lsn, data: &[u8]) -> Result<(), WorkerError> {
        let msg = pgoutput::decode(data).map_err(|source| WorkerError::Decode { lsn: wal_start, source })?;
        match msg {
            Message::Begin(_) => {
                self.in_tx = true;
                self.skip_tx = false;
                self.tx_keys = false;
            }
            Message::Commit(c) => {
                self.in_tx = false;
                self.summary.transactions += 1;
                self.meters.transactions.inc();
                if self.skip_tx {
                    self.summary.skipped_own += 1;
                    self.meters.skipped.inc();
                }
                if self.tx_keys {
                    self.batch.commits.push(c.timestamp);
                }
                self.tx_keys = false;
                self.skip_tx = false;
                self.safe_lsn = self.safe_lsn.max(c.end_lsn);
                if self.batch.full(self.config.batch_max_keys) {
                    self.flush().await?;
                }
            }
            Message::Origin(o) => {
                if o.name == SYNCBRIDGE_ORIGIN {
                    self.skip_tx = true;
                }
            }
            Message::Relation(r) => {
                let columns: Vec<String> = r.columns.iter().map(|c| c.name.to_string()).collect();
                let mut key_positions: Vec<usize> =
                    r.columns.iter().enumerate().filter(|(_, c)| c.flags & 1 == 1).map(|(i, _)| i).collect();
                if key_positions.is_empty() {
                    key_positions = (0..columns.len()).collect();
                }
                let schema = if r.namespace.is_empty() { "pg_catalog" } else { r.namespace };
                self.relations
                    .insert(r.id, RelationInfo { name: format!("{schema}.{}", r.name), columns, key_positions });
            }
            Message::Insert(i) => {
                self.meters.inserts.inc();
                self.keys_of(i.relation_id, [Some(&i.new)])?
            }
            Message::Update(u) => {
                self.meters.updates.inc();
                self.keys_of(u.relation_id, [u.old.as_ref(), Some(&u.new)])?
            }
            Message::Delete(d) => {
                self.meters.deletes.inc();
                self.keys_of(d.relation_id, [Some(&d.old)])?
            }
            Message::Truncate(t) => {
                self.meters.truncates.inc();
                if !self.skip_tx && !self.config.decode_only {
                    for rel in &t.relation_ids {
                        self.batch.truncate(*rel);
                        self.tx_keys = true;
                    }
                }
            }
            Message::Type(_) | Message::Message(_) => {}
        }
        if self.in_tx && self.batch.full(self.config.batch_max_keys) {
            // A large transaction: stage what we have (no LSN yet) and go on.
            self.flush().await?;
        }
        Ok(())
    }

    pub(super) fn keys_of<'t, const N: usize>(
        &mut self,
        rel: u32,
        tuples: [Option<&TupleData<'t>>; N],
    ) -> Result<(), WorkerError> {
        self.summary.changes += 1;
        if self.skip_tx || self.config.decode_only {
            return Ok(());
        }
        let Some(info) = self.relations.get(&rel) else {
            return Err(WorkerError::internal(format!(
                "a change refers to relation {rel}, which the stream has not described (a protocol violation)"
            )));
        };
        let mut found = false;
        let mut keys: [Option<String>; N] = std::array::from_fn(|_| None);
        for (slot, t) in keys.iter_mut().zip(tuples) {
            if let Some(t) = t {
                *slot = key_object(info, t);
                found |= slot.is_some();
            }
        }
        if !found {
            tracing::warn!(relation = %info.name, "a change carries no key value; it is skipped (is the key column TOASTed or NULL?)");
        }
        for k in keys.into_iter().flatten() {
            self.batch.add(rel, k);
            self.tx_keys = true;
        }
        Ok(())
    }

    /// Hands the batch to the stager, with the LSN of the last whole
    /// transaction when no transaction is open (inside one, the keys go
    /// without an LSN). Waits only while the stager still has a batch queued.
    pub(super) async fn flush(&mut self) -> Result<(), WorkerError> {
        if self.config.decode_only {
            self.batch = Batch::default();
            if !self.in_tx {
                self.confirmed = self.safe_lsn;
            }
            return Ok(());
        }
        let lsn = (self.safe_lsn > self.queued_lsn).then_some(self.safe_lsn);
        if self.batch.is_empty() && (self.in_tx || lsn.is_none()) {
            return Ok(());
        }
        let mut batch = std::mem::take(&mut self.batch);
        let keys = batch.count;
        let mut rels: Vec<(i64, String)> = batch
            .keys
            .iter()
            .map(|(rel, set)| {
                let mut json = String::with_capacity(set.iter().map(|k| k.len() + 1).sum::<usize>() + 2);
                json.push('[');
                for (n, k) in set.iter().enumerate() {
                    if n > 0 {
                        json.push(',');
                    }
                    json.push_str(k);
                }
                json.push(']');
                (i64::from(*rel), json)
            })
            .collect();
        rels.sort_by_key(|(r, _)| *r);
        let truncates: Vec<i64> = batch.truncates.iter().map(|r| i64::from(*r)).collect();
        let commits = std::mem::take(&mut batch.commits);
        drop(batch);
        // The LSN goes with the keys, unless a transaction is still open.
        let lsn = if self.in_tx { None } else { lsn };
        self.stager.send(StageJob { rels, truncates, lsn, keys, record: true, commits }).await?;
        self.in_flight += 1;
        if let Some(lsn) = lsn {
            self.queued_lsn = lsn;
        }
        Ok(())
    }

    /// Confirms a position past which nothing was staged (WAL that touches
    /// no watched table), so that an idle slot retains no WAL. Through the
    /// stager, in order (a batch still staging is confirmed first), but not
    /// recorded in `sync.cursors`: that write would itself be WAL that moves
    /// the position again, a write per status interval forever.
    pub(super) async fn checkpoint_only(&mut self) -> Result<(), WorkerError> {
        let lsn = self.safe_lsn;
        let job = StageJob {
            rels: Vec::new(),
            truncates: Vec::new(),
            lsn: Some(lsn),
            keys: 0,
            record: false,
            commits: Vec::new(),
        };
        self.stager.send(job).await?;
        self.in_flight += 1;
        self.queued_lsn = lsn;
        Ok(())
    }

    /// The stager committed a batch: count it, and confirm its LSN.
    pub(super) async fn staged(&mut self, done: Staged) -> Result<(), WorkerError> {
        self.in_flight = self.in_flight.saturating_sub(1);
        if done.batch {
            self.summary.batches += 1;
            self.summary.keys_staged += done.keys as u64;
        }
        match done.lsn {
            Some(lsn) => self.confirm(lsn).await,
            None => Ok(()),
        }
    }

    /// Waits for the stager to commit everything handed to it, confirming as
    /// it goes; the stager is stopped afterwards.
    pub(super) async fn finish_staging(&mut self) -> Result<(), WorkerError> {
        self.stager.jobs = None;
        while let Some(done) = self.stager.done.recv().await {
            self.staged(done).await?;
        }
        self.stager.result().await
    }

    pub(super) async fn confirm(&mut self, lsn: Lsn) -> Result<(), WorkerError> {
        if lsn > self.confirmed {
            self.confirmed = lsn;
            self.summary.confirmed = lsn;
            self.report(false).await?;
        }
        Ok(())
    }

    pub(super) async fn report(&mut self, reply: bool) -> Result<(), WorkerError> {
        let written = self.received.max(self.confirmed);
        self.stream.send_status(written, self.confirmed, self.confirmed, reply).await?;
        Ok(())
    }
}
