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

use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch};
use tokio_postgres::Client;

use crate::dsn::Dsn;
use crate::lsn::Lsn;
use crate::pgoutput::{self, Column, Message, TupleData};
use crate::replication::{ReplError, ReplicationConnection, ReplicationEvent, ReplicationStream};

/// The replication origin under which syncbridge applies remote changes; the
/// ingest skips transactions carrying it.
pub const SYNCBRIDGE_ORIGIN: &str = "syncbridge";

/// Namespace of syncbridge's advisory locks ('sync' as an int4): with a
/// definition id, staging's; with -1, sync.purge's.
pub const LOCK_NAMESPACE: i32 = 1_937_337_955;
/// Namespace of the slot readers' session locks (with `hashtext(slot)`): its
/// own, so that a slot's hash can never equal a definition id, whose staging
/// lock (on the stager's session) would then wait for the ingest forever.
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
            worker_name: default_worker_name(),
            staged: None,
        }
    }
}

/// `host:pid`, naming this worker in `sync.runs` and claims.
pub fn default_worker_name() -> String {
    let host = std::fs::read_to_string("/etc/hostname").map(|h| h.trim().to_owned()).unwrap_or_default();
    format!("{}:{}", if host.is_empty() { "worker" } else { &host }, std::process::id())
}

/// What can stop the ingest or an exporter.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// The replication connection failed.
    #[error(transparent)]
    Replication(#[from] ReplError),
    /// A database call failed.
    #[error("{what}: {}", crate::pgerror::Described(source))]
    Database {
        /// What we were doing.
        what: &'static str,
        /// The error.
        #[source]
        source: tokio_postgres::Error,
    },
    /// The database is not ready (no extension, wrong slot, …).
    #[error("{message} (hint: {hint})")]
    NotReady {
        /// What is wrong.
        message: String,
        /// What to do.
        hint: String,
    },
    /// A session stopped answering (a network cut without a reset).
    #[error("{0} (hint: check the network between the worker and the database)")]
    Unresponsive(String),
    /// The stream carried something we cannot decode.
    #[error("cannot decode the message at {lsn}: {source}")]
    Decode {
        /// Where.
        lsn: Lsn,
        /// Why.
        #[source]
        source: pgoutput::DecodeError,
    },
}

impl WorkerError {
    pub(crate) fn db(what: &'static str) -> impl FnOnce(tokio_postgres::Error) -> WorkerError {
        move |source| WorkerError::Database { what, source }
    }

    /// Whether running again later may succeed (a broken connection, a
    /// restart, a deadlock or serialization failure, a busy slot).
    pub fn is_transient(&self) -> bool {
        match self {
            WorkerError::Replication(e) => e.is_transient(),
            WorkerError::Database { source, .. } => crate::pgerror::is_transient(source),
            WorkerError::Unresponsive(_) => true,
            WorkerError::NotReady { .. } | WorkerError::Decode { .. } => false,
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

/// A relation as the stream described it.
#[derive(Debug, Clone)]
struct RelationInfo {
    name: String,
    columns: Vec<String>,
    /// Positions of the key (replica identity) columns; all when none is flagged.
    key_positions: Vec<usize>,
}

/// Changed keys waiting to be staged.
#[derive(Default)]
struct Batch {
    keys: HashMap<u32, HashSet<String>>,
    truncates: Vec<u32>,
    count: usize,
    since: Option<Instant>,
}

impl Batch {
    fn is_empty(&self) -> bool {
        self.count == 0 && self.truncates.is_empty()
    }

    fn touch(&mut self) {
        if self.since.is_none() {
            self.since = Some(Instant::now());
        }
    }

    fn add(&mut self, rel: u32, key: String) {
        self.touch();
        if self.keys.entry(rel).or_default().insert(key) {
            self.count += 1;
        }
    }

    fn truncate(&mut self, rel: u32) {
        self.touch();
        if !self.truncates.contains(&rel) {
            self.truncates.push(rel);
        }
    }
}

/// The key object `{"col": "text", …}` of a tuple, or None when a key column
/// carries no text value (NULL, unchanged TOAST).
fn key_object(rel: &RelationInfo, tuple: &TupleData<'_>) -> Option<String> {
    let mut out = String::with_capacity(32);
    out.push('{');
    for (n, &i) in rel.key_positions.iter().enumerate() {
        let value = match tuple.columns.get(i)? {
            Column::Text(b) => std::str::from_utf8(b).ok()?,
            _ => return None,
        };
        if n > 0 {
            out.push(',');
        }
        json_string(&mut out, rel.columns.get(i)?);
        out.push(':');
        json_string(&mut out, value);
    }
    out.push('}');
    Some(out)
}

fn json_string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// A session named `application_name` (`syncbridge-ingest`, `-stage`,
/// `-backfill`, `-export`: a DBA tells them apart in `pg_stat_activity`).
pub(crate) async fn connect(dsn: &Dsn, application_name: &str) -> Result<Client, WorkerError> {
    dsn.connect_as(application_name).await.map_err(|e| match e {
        crate::dsn::ConnectError::Db(source) => WorkerError::Database { what: "connecting", source },
        crate::dsn::ConnectError::Tls(e) => WorkerError::NotReady {
            message: e.to_string(),
            hint: "fix sslmode / sslrootcert in the connection string".into(),
        },
    })
}

/// A stop of one's own that also turns true at `shutdown`: for tasks that
/// must stop together when one of them fails, not only at shutdown. Abort
/// the returned forwarder when done.
pub(crate) fn stop_channel(
    shutdown: &watch::Receiver<bool>,
) -> (watch::Sender<bool>, watch::Receiver<bool>, tokio::task::JoinHandle<()>) {
    let (stop, stopped) = watch::channel(false);
    let forward = {
        let (mut shutdown, stop) = (shutdown.clone(), stop.clone());
        tokio::spawn(async move {
            while !*shutdown.borrow() {
                if shutdown.changed().await.is_err() {
                    return;
                }
            }
            let _ = stop.send(true);
        })
    };
    (stop, stopped, forward)
}

/// Runs the ingest until shutdown (or, with `once`, until caught up).
pub async fn run(
    dsn: &Dsn,
    config: &IngestConfig,
    mut shutdown: watch::Receiver<bool>,
) -> Result<IngestSummary, WorkerError> {
    let db = connect(dsn, "syncbridge-ingest").await?;
    let ext: Option<String> = db
        .query_opt("SELECT extversion FROM pg_extension WHERE extname = 'syncbridge'", &[])
        .await
        .map_err(WorkerError::db("looking for the extension"))?
        .map(|r| r.get(0));
    if ext.is_none() {
        return Err(WorkerError::NotReady {
            message: format!("the syncbridge extension is not installed in {dsn}"),
            hint: "CREATE EXTENSION syncbridge;".into(),
        });
    }
    let slot: String = match &config.slot {
        Some(s) => s.clone(),
        None => db
            .query_one("SELECT sync._setting('slot_name')", &[])
            .await
            .map_err(WorkerError::db("reading sync.slot_name"))?
            .get(0),
    };

    // One reader per slot: an advisory lock held by this session.
    let mut waited = false;
    loop {
        let got: bool = db
            .query_one("SELECT pg_try_advisory_lock($1, hashtext($2))", &[&SLOT_LOCK_NAMESPACE, &slot])
            .await
            .map_err(WorkerError::db("taking the slot lock"))?
            .get(0);
        if got {
            break;
        }
        if !waited {
            let holder: Option<i32> = db
                .query_opt(
                    "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND classid = $1::int::oid
                       AND objid = hashtext($2)::oid AND granted LIMIT 1",
                    &[&SLOT_LOCK_NAMESPACE, &slot],
                )
                .await
                .map_err(WorkerError::db("looking for the slot's reader"))?
                .map(|r| r.get(0));
            tracing::warn!(slot = %slot, holder_pid = ?holder,
                "another worker reads slot {slot} (backend pid {holder:?}); waiting for it to stop");
            waited = true;
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = shutdown.changed() => return Ok(IngestSummary::default()),
        }
    }
    if waited {
        tracing::info!(slot = %slot, "the other worker stopped; this one reads slot {slot} now");
    }

    let pub_exists: bool = db
        .query_one("SELECT EXISTS (SELECT 1 FROM pg_publication WHERE pubname = $1)", &[&config.publication])
        .await
        .map_err(WorkerError::db("looking for the publication"))?
        .get(0);
    if !pub_exists {
        return Err(WorkerError::NotReady {
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
    let cursor: Option<String> = db
        .query_opt("SELECT lsn::text FROM sync.cursors WHERE kind = 'slot' AND scope = $1", &[&slot])
        .await
        .map_err(WorkerError::db("reading the slot cursor"))?
        .and_then(|r| r.get(0));
    let cursor: Lsn = cursor.and_then(|c| c.parse().ok()).unwrap_or(Lsn::ZERO);
    let current_db: String =
        db.query_one("SELECT current_database()::text", &[]).await.map_err(WorkerError::db("current database"))?.get(0);

    let run_id: i64 = db
        .query_one("SELECT sync.start_run('stream', NULL, $1)", &[&config.worker_name])
        .await
        .map_err(WorkerError::db("recording the run"))?
        .get(0);

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
            marker.parse::<Lsn>().map_err(|e| WorkerError::NotReady {
                message: format!("the server returned an unreadable LSN {marker:?}: {e}"),
                hint: "this is a bug; please report it".into(),
            })?
        } else {
            system.xlog_pos
        };
        let mut summary = IngestSummary::default();
        let start = match existing {
            Some(row) => {
                let plugin: Option<String> = row.get(0);
                let database: Option<String> = row.get(1);
                if plugin.as_deref() != Some("pgoutput") || database.as_deref() != Some(current_db.as_str()) {
                    return Err(WorkerError::NotReady {
                        message: format!(
                            "slot {slot} exists but is not a pgoutput slot of database {current_db} (plugin {plugin:?}, database {database:?})"
                        ),
                        hint: "Drop it (SELECT pg_drop_replication_slot(...)) or set sync.slot_name to another name".into(),
                    });
                }
                let confirmed: Lsn = row.get::<_, Option<String>>(2).and_then(|l| l.parse().ok()).unwrap_or(Lsn::ZERO);
                tracing::info!(slot = %slot, confirmed = %confirmed, staged = %cursor, "resuming the slot");
                confirmed.max(cursor)
            }
            None => {
                let created = repl.create_slot(&slot, true).await?;
                tracing::info!(slot = %slot, consistent_point = %created.consistent_point, "created the slot");
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
            StagerHandle::start(connect(dsn, "syncbridge-stage").await?, slot.clone(), run_id, config.staged.clone())
        };
        let stream = repl.start_replication(&slot, start, &config.publication).await?;
        Ok::<_, WorkerError>((stream, start, target_lsn, summary, stager))
    }
    .await;
    let (stream, start, target_lsn, summary, stager) = match prepared {
        Ok(p) => p,
        Err(e) => {
            crate::pgerror::finish_run(&db, run_id, "failed", Some(e.to_string())).await;
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
    };
    let backfill_dsn = dsn.clone();
    let backfill_config = config.clone();
    // The backfill stops at shutdown, or when the stream fails (the ingest
    // restarts as a whole): between two chunks, recording its run.
    let (backfill_stop, backfill_shutdown, forward_shutdown) = stop_channel(&shutdown);
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
    crate::pgerror::finish_run(&db, run_id, status, error).await;
    result.map(|()| summary)
}

struct Ingest<'a> {
    stream: ReplicationStream,
    config: &'a IngestConfig,
    slot: String,
    relations: HashMap<u32, RelationInfo>,
    batch: Batch,
    in_tx: bool,
    skip_tx: bool,
    /// Everything before this is received whole (end of the last commit, or a
    /// keepalive's position between transactions).
    safe_lsn: Lsn,
    /// The LSN of the last batch handed to the stager (recorded in
    /// sync.cursors once the stager commits it).
    queued_lsn: Lsn,
    /// Staging, on its own task: batches in, commits out.
    stager: StagerHandle,
    /// Confirmed to the server.
    confirmed: Lsn,
    /// The furthest WAL position received.
    received: Lsn,
    summary: IngestSummary,
}

type BackfillTask = tokio::task::JoinHandle<Result<u64, WorkerError>>;

impl Ingest<'_> {
    /// Streams until shutdown (or, with `once`, until caught up). `db` is the
    /// session holding the run and the slot's lock: losing it ends the loop.
    async fn stream_loop(
        &mut self,
        db: &Client,
        shutdown: &mut watch::Receiver<bool>,
        target_lsn: Lsn,
        backfill: &mut Option<BackfillTask>,
    ) -> Result<(), WorkerError> {
        let session_lost = crate::pgerror::session_lost(db);
        tokio::pin!(session_lost);
        let mut status_tick = tokio::time::interval(self.config.status_interval);
        status_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut poke = tokio::time::interval(Duration::from_millis(100));
        poke.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let deadline = self.batch.since.map(|s| s + self.config.batch_max_wait);
            let can_flush = !self.in_tx && !self.batch.is_empty();
            tokio::select! {
                biased;
                _ = shutdown.changed() => {
                    tracing::info!(slot = %self.slot, "shutting down: staging the batch in flight");
                    self.flush().await?;
                    self.finish_staging().await?;
                    self.report(false).await?;
                    return Ok(());
                }
                e = &mut session_lost => return Err(e),
                done = self.stager.done.recv() => match done {
                    Some(done) => self.staged(done).await?,
                    None => return Err(self.stager.failure().await),
                },
                ev = self.stream.next() => {
                    match ev? {
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
                }
                _ = async { tokio::time::sleep_until(deadline.unwrap_or_else(Instant::now).into()).await }, if can_flush && deadline.is_some() => {
                    self.flush().await?;
                }
                _ = status_tick.tick() => {
                    if !self.in_tx && self.batch.is_empty() && self.safe_lsn > self.queued_lsn && !self.config.decode_only {
                        self.checkpoint_only().await?;
                    }
                    self.report(false).await?;
                }
                _ = poke.tick(), if self.config.once => {
                    if backfill.as_ref().is_some_and(|t| t.is_finished()) {
                        if let Some(t) = backfill.take() {
                            self.summary.backfill_steps += t.await.map_err(|e| WorkerError::NotReady {
                                message: format!("the backfill task failed: {e}"),
                                hint: "see the log".into(),
                            })??;
                        }
                    }
                    if !self.in_tx {
                        self.flush().await?;
                        if backfill.is_none() && self.confirmed >= target_lsn {
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

    async fn handle(&mut self, wal_start: Lsn, data: &[u8]) -> Result<(), WorkerError> {
        let msg = pgoutput::decode(data).map_err(|source| WorkerError::Decode { lsn: wal_start, source })?;
        match msg {
            Message::Begin(_) => {
                self.in_tx = true;
                self.skip_tx = false;
            }
            Message::Commit(c) => {
                self.in_tx = false;
                self.summary.transactions += 1;
                if self.skip_tx {
                    self.summary.skipped_own += 1;
                }
                self.skip_tx = false;
                self.safe_lsn = self.safe_lsn.max(c.end_lsn);
                if self.batch.count >= self.config.batch_max_keys {
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
            Message::Insert(i) => self.keys_of(i.relation_id, [Some(&i.new)])?,
            Message::Update(u) => self.keys_of(u.relation_id, [u.old.as_ref(), Some(&u.new)])?,
            Message::Delete(d) => self.keys_of(d.relation_id, [Some(&d.old)])?,
            Message::Truncate(t) => {
                if !self.skip_tx && !self.config.decode_only {
                    for rel in &t.relation_ids {
                        self.batch.truncate(*rel);
                    }
                }
            }
            Message::Type(_) | Message::Message(_) => {}
        }
        if self.in_tx && self.batch.count >= self.config.batch_max_keys {
            // A large transaction: stage what we have (no LSN yet) and go on.
            self.flush().await?;
        }
        Ok(())
    }

    fn keys_of<'t, const N: usize>(
        &mut self,
        rel: u32,
        tuples: [Option<&TupleData<'t>>; N],
    ) -> Result<(), WorkerError> {
        self.summary.changes += 1;
        if self.skip_tx || self.config.decode_only {
            return Ok(());
        }
        let Some(info) = self.relations.get(&rel) else {
            return Err(WorkerError::NotReady {
                message: format!("a change refers to relation {rel}, which the stream has not described"),
                hint: "this is a protocol violation; restart the worker".into(),
            });
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
        }
        Ok(())
    }

    /// Hands the batch to the stager, with the LSN of the last whole
    /// transaction when no transaction is open (inside one, the keys go
    /// without an LSN). Waits only while the stager still has a batch queued.
    async fn flush(&mut self) -> Result<(), WorkerError> {
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
        let batch = std::mem::take(&mut self.batch);
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
        drop(batch);
        // The LSN goes with the keys, unless a transaction is still open.
        let lsn = if self.in_tx { None } else { lsn };
        self.stager.send(StageJob { rels, truncates, lsn, keys, record: true }).await?;
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
    async fn checkpoint_only(&mut self) -> Result<(), WorkerError> {
        let lsn = self.safe_lsn;
        let job = StageJob { rels: Vec::new(), truncates: Vec::new(), lsn: Some(lsn), keys: 0, record: false };
        self.stager.send(job).await?;
        self.queued_lsn = lsn;
        Ok(())
    }

    /// The stager committed a batch: count it, and confirm its LSN.
    async fn staged(&mut self, done: Staged) -> Result<(), WorkerError> {
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
    async fn finish_staging(&mut self) -> Result<(), WorkerError> {
        self.stager.jobs = None;
        while let Some(done) = self.stager.done.recv().await {
            self.staged(done).await?;
        }
        self.stager.result().await
    }

    async fn confirm(&mut self, lsn: Lsn) -> Result<(), WorkerError> {
        if lsn > self.confirmed {
            self.confirmed = lsn;
            self.summary.confirmed = lsn;
            self.report(false).await?;
        }
        Ok(())
    }

    async fn report(&mut self, reply: bool) -> Result<(), WorkerError> {
        let written = self.received.max(self.confirmed);
        self.stream.send_status(written, self.confirmed, self.confirmed, reply).await?;
        Ok(())
    }
}

/// A batch for the stager; jobs are staged one at a time, in WAL order.
struct StageJob {
    /// Per relation (oid), the keys as a JSON array.
    rels: Vec<(i64, String)>,
    /// Relations truncated.
    truncates: Vec<i64>,
    /// Recorded with the keys; None inside a transaction still streaming.
    lsn: Option<Lsn>,
    /// Distinct keys in `rels`.
    keys: usize,
    /// Record `lsn` in `sync.cursors` (else, with nothing to stage, it is
    /// only confirmed).
    record: bool,
}

/// The stager committed a job.
struct Staged {
    lsn: Option<Lsn>,
    keys: usize,
    /// Keys or truncates were staged (not only an LSN recorded).
    batch: bool,
}

/// The ingest's end of the stager: a queue of one job (so at most one batch
/// waits while another is staged and a third is collected: memory stays
/// bounded) and the commits coming back.
struct StagerHandle {
    jobs: Option<mpsc::Sender<StageJob>>,
    done: mpsc::UnboundedReceiver<Staged>,
    task: Option<tokio::task::JoinHandle<Result<(), WorkerError>>>,
}

impl StagerHandle {
    /// Stages on `db` (its own connection, so that staging overlaps decoding).
    fn start(db: Client, slot: String, run_id: i64, notify: Option<std::sync::Arc<tokio::sync::Notify>>) -> Self {
        let (jobs_tx, jobs) = mpsc::channel(1);
        let (done_tx, done) = mpsc::unbounded_channel();
        let stager = Stager { db, slot, run_id, notify };
        let task = tokio::spawn(stager.run(jobs, done_tx));
        StagerHandle { jobs: Some(jobs_tx), done, task: Some(task) }
    }

    /// For decode-only runs: takes no job and never reports.
    fn idle() -> Self {
        let (jobs_tx, mut jobs) = mpsc::channel::<StageJob>(1);
        let (done_tx, done) = mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            let _done = done_tx;
            while jobs.recv().await.is_some() {}
            Ok(())
        });
        StagerHandle { jobs: Some(jobs_tx), done, task: Some(task) }
    }

    async fn send(&mut self, job: StageJob) -> Result<(), WorkerError> {
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
    async fn failure(&mut self) -> WorkerError {
        self.result().await.err().unwrap_or_else(|| WorkerError::NotReady {
            message: "the stager stopped before the ingest".into(),
            hint: "this is a bug; please report it".into(),
        })
    }

    /// How the stager ended (waits for it).
    async fn result(&mut self) -> Result<(), WorkerError> {
        match self.task.take() {
            Some(task) => task.await.map_err(|e| WorkerError::NotReady {
                message: format!("the staging task failed: {e}"),
                hint: "see the log".into(),
            })?,
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

struct Stager {
    db: Client,
    slot: String,
    run_id: i64,
    notify: Option<std::sync::Arc<tokio::sync::Notify>>,
}

impl Stager {
    async fn run(
        mut self,
        mut jobs: mpsc::Receiver<StageJob>,
        done: mpsc::UnboundedSender<Staged>,
    ) -> Result<(), WorkerError> {
        while let Some(job) = jobs.recv().await {
            let batch = !(job.rels.is_empty() && job.truncates.is_empty());
            if !batch && !job.record {
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
                        tracing::warn!(error = %crate::pgerror::Described(&source), attempt, "staging conflicted; trying again");
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
    async fn stage_tx(
        &mut self,
        rels: &[(i64, String)],
        truncates: &[i64],
        lsn: Option<Lsn>,
    ) -> Result<(), WorkerError> {
        let tx = self.db.transaction().await.map_err(WorkerError::db("starting a staging transaction"))?;
        for (oid, json) in rels {
            let rows = tx
                .query(
                    "SELECT definition, added + updated + deleted + moved, error
                       FROM sync.stage(($1::bigint)::oid::regclass, $2::text::jsonb, NULL, NULL, $3)",
                    &[oid, json, &self.run_id],
                )
                .await
                .map_err(WorkerError::db("staging keys"))?;
            for r in rows {
                let err: Option<String> = r.get(2);
                if let Some(err) = err {
                    let def: String = r.get(0);
                    tracing::error!(definition = %def, error = %err, "staging failed; the definition is now in state error");
                }
            }
        }
        for oid in truncates {
            tx.query("SELECT * FROM sync.stage_truncate(($1::bigint)::oid::regclass, NULL)", &[oid])
                .await
                .map_err(WorkerError::db("staging a truncate"))?;
        }
        if let Some(lsn) = lsn {
            tx.execute("SELECT sync.checkpoint($1::text::pg_lsn, $2)", &[&lsn.to_string(), &self.slot])
                .await
                .map_err(WorkerError::db("recording the LSN"))?;
        }
        tx.commit().await.map_err(WorkerError::db("committing the staged keys"))
    }
}

/// Runs every pending backfill to the end, chunk by chunk; in `snapshot` when
/// given (the slot's exported snapshot, before streaming starts).
async fn backfill_all(
    db: &Client,
    config: &IngestConfig,
    snapshot: Option<&str>,
    shutdown: &mut watch::Receiver<bool>,
) -> Result<u64, WorkerError> {
    let defs: Vec<String> = db
        .query("SELECT definition FROM sync.backfills_pending()", &[])
        .await
        .map_err(WorkerError::db("listing pending backfills"))?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let mut steps = 0u64;
    for def in defs {
        let run_id: i64 = db
            .query_one("SELECT sync.start_run('backfill', $1, $2)", &[&def, &config.worker_name])
            .await
            .map_err(WorkerError::db("recording the backfill run"))?
            .get(0);
        let result = backfill_one(db, config, snapshot, &def, run_id, shutdown, &mut steps).await;
        let (status, error) = match &result {
            Ok(true) => ("succeeded", None),
            Ok(false) => ("cancelled", None),
            Err(e) => ("failed", Some(e.to_string())),
        };
        crate::pgerror::finish_run(db, run_id, status, error).await;
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
    loop {
        if *shutdown.borrow() {
            return Ok(false);
        }
        let row = if let Some(snap) = snapshot {
            let chunk = read_chunk_in_snapshot(db, snap, def, after.as_deref(), config.backfill_chunk).await?;
            let row = db
                .query_one(
                    "SELECT done, rows_done, rows_total FROM sync.backfill_step($1, $2, $3,
                       chunk_keys => $4::text::jsonb, chunk_after => $5::text::jsonb, chunk_last => $6::text::jsonb)",
                    &[&def, &config.backfill_chunk, &run_id, &chunk.0, &after, &chunk.1],
                )
                .await
                .map_err(WorkerError::db("backfill step"))?;
            after = chunk.1.or(after);
            row
        } else {
            db.query_one(
                "SELECT done, rows_done, rows_total FROM sync.backfill_step($1, $2, $3)",
                &[&def, &config.backfill_chunk, &run_id],
            )
            .await
            .map_err(WorkerError::db("backfill step"))?
        };
        *steps += 1;
        let done: bool = row.get(0);
        let rows_done: i64 = row.get(1);
        let rows_total: i64 = row.get(2);
        if done {
            tracing::info!(definition = %def, rows = rows_done, secs = started.elapsed().as_secs_f64(), "backfill done");
            return Ok(true);
        }
        tracing::debug!(definition = %def, rows_done, rows_total, "backfill progress");
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
        crate::replication::quote_literal(snap)
    ))
    .await
    .map_err(WorkerError::db("importing the slot's snapshot"))?;
    let read = db
        .query_one(
            "SELECT keys::text, last_key::text FROM sync.backfill_keys($1, $2::text::jsonb, $3)",
            &[&def, &after, &chunk],
        )
        .await;
    let end = db.batch_execute(if read.is_ok() { "COMMIT" } else { "ROLLBACK" }).await;
    let row = read.map_err(WorkerError::db("reading a backfill chunk in the slot's snapshot"))?;
    end.map_err(WorkerError::db("ending the snapshot transaction"))?;
    Ok((row.get(0), row.get(1)))
}

/// Backfills definitions enabled while the worker runs (fresh snapshots:
/// see `sql/backfill.sql` for why that is exact), polling every second.
async fn backfill_loop(
    dsn: &Dsn,
    config: &IngestConfig,
    mut shutdown: watch::Receiver<bool>,
) -> Result<u64, WorkerError> {
    let db = connect(dsn, "syncbridge-backfill").await?;
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
        if config.once {
            let left: i64 = db
                .query_one("SELECT count(*) FROM sync.backfills_pending()", &[])
                .await
                .map_err(WorkerError::db("listing pending backfills"))?
                .get(0);
            if left == 0 {
                return Ok(steps);
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = shutdown.changed() => return Ok(steps),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_strings_escape_what_json_requires() {
        let mut s = String::new();
        json_string(&mut s, "a\"b\\c\nd\u{1}é東");
        assert_eq!(s, r#""a\"b\\c\nd\u0001é東""#);
        let v: serde_json::Value = serde_json::from_str(&s).unwrap();
        assert_eq!(v, serde_json::json!("a\"b\\c\nd\u{1}é東"));
    }

    #[test]
    fn config_bounds() {
        assert!(IngestConfig::default().validate().is_ok());
        let c = IngestConfig { batch_max_keys: 0, ..IngestConfig::default() };
        assert!(c.validate().is_err());
        let c = IngestConfig { status_interval: Duration::from_secs(0), ..IngestConfig::default() };
        assert!(c.validate().is_err());
    }

    #[test]
    fn batches_deduplicate_keys() {
        let mut b = Batch::default();
        b.add(1, "{\"id\":\"1\"}".into());
        b.add(1, "{\"id\":\"1\"}".into());
        b.add(2, "{\"id\":\"1\"}".into());
        assert_eq!(b.count, 2);
        assert!(!b.is_empty());
    }
}
