//! The metrics sampler: with `--metrics-addr`, a session of its own
//! (`syncbridge-metrics`) reads what only the database knows every
//! [`SAMPLE_INTERVAL`]: the open exports and inbound changes per definition
//! and state, and (for `run`) the WAL the slot still holds, into the gauges
//! of [`crate::metrics`]. Its reads are read-only, bounded by a statement
//! timeout, and never stop the worker: a failure is logged, counted and
//! tried again at the next interval.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::watch;
use tokio_postgres::Client;

use crate::error::WorkerError;
use crate::extension;
use crate::metrics;
use crate::pg::dsn::Dsn;

/// How often the sampler reads the database.
pub const SAMPLE_INTERVAL: Duration = Duration::from_secs(10);
/// The longest one sampling query may take.
const STATEMENT_TIMEOUT_MS: u32 = 5_000;

/// Which slot's lag to sample.
#[derive(Debug, Clone)]
pub enum SlotChoice {
    /// None (`export`: no slot of its own).
    None,
    /// This one.
    Named(String),
    /// The database's `sync.slot_name` (`run` without `--slot`).
    Configured,
}

/// Samples until `shutdown` turns true, every `interval`.
pub async fn sample_loop(dsn: Dsn, slot: SlotChoice, interval: Duration, mut shutdown: watch::Receiver<bool>) {
    let mut session: Option<(Client, Option<String>)> = None;
    let mut failing = false;
    loop {
        if *shutdown.borrow() {
            return;
        }
        let outcome = async {
            if session.as_ref().is_none_or(|(db, _)| db.is_closed()) {
                session = Some(open(&dsn, &slot).await?);
            }
            let (db, slot) = session.as_ref().expect("a session");
            sample(db, slot.as_deref()).await
        }
        .await;
        match outcome {
            Ok(()) => {
                if failing {
                    tracing::info!("the metrics sampler reads the database again");
                }
                failing = false;
                let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64());
                metrics::SAMPLER_LAST_SUCCESS.set(&[], now);
            }
            Err(e) => {
                metrics::SAMPLER_FAILURES.inc(&[]);
                if !failing {
                    tracing::warn!(error = %e, "the metrics sampler cannot read the queues or the slot; trying again");
                }
                failing = true;
                session = None;
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = shutdown.changed() => return,
        }
    }
}

/// The sampler's session, and the slot to sample.
async fn open(dsn: &Dsn, slot: &SlotChoice) -> Result<(Client, Option<String>), WorkerError> {
    let db = crate::pg::connect(dsn, "syncbridge-metrics").await?;
    db.batch_execute(&format!("SET statement_timeout = {STATEMENT_TIMEOUT_MS}; SET lock_timeout = 1000"))
        .await
        .map_err(WorkerError::db("setting the sampler's timeouts"))?;
    let slot = match slot {
        SlotChoice::None => None,
        SlotChoice::Named(s) => Some(s.clone()),
        SlotChoice::Configured => Some(extension::slot_name(&db).await?),
    };
    Ok((db, slot))
}

/// One sample of the queues and the slot.
async fn sample(db: &Client, slot: Option<&str>) -> Result<(), WorkerError> {
    let queues = extension::queue_depths(db).await?;
    let (exports, imports): (Vec<_>, Vec<_>) = queues.iter().partition(|q| q.queue == "export");
    let labels = |q: &extension::QueueDepth| vec![q.target.clone(), q.definition.clone(), q.state.clone()];
    metrics::QUEUE_EXPORTS.replace(exports.iter().map(|q| (labels(q), q.count as f64)).collect());
    metrics::QUEUE_EXPORTS_OLDEST.replace(exports.iter().map(|q| (labels(q), q.oldest_age)).collect());
    metrics::QUEUE_IMPORTS.replace(imports.iter().map(|q| (labels(q), q.count as f64)).collect());
    if let Some(slot) = slot {
        match extension::slot_lag_bytes(db, slot).await? {
            Some((lag, held)) => {
                metrics::SLOT_LAG_BYTES.set(&[slot], lag.max(0.0));
                metrics::SLOT_WAL_HELD_BYTES.set(&[slot], held.max(0.0));
            }
            None => {
                metrics::SLOT_LAG_BYTES.replace(Vec::new());
                metrics::SLOT_WAL_HELD_BYTES.replace(Vec::new());
            }
        }
    }
    Ok(())
}
