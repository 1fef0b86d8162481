//! The replication slot: one reader at a time (a session advisory lock).

use std::time::Duration;

use tokio::sync::watch;
use tokio_postgres::Client;

use super::SLOT_LOCK_NAMESPACE;
use crate::error::WorkerError;

/// Takes the slot's reader lock on `db`'s session, waiting while another
/// worker reads the slot; false when the worker stops meanwhile.
pub(super) async fn lock(db: &Client, slot: &str, shutdown: &mut watch::Receiver<bool>) -> Result<bool, WorkerError> {
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
            _ = shutdown.changed() => return Ok(false),
        }
    }
    if waited {
        tracing::info!(slot = %slot, "the other worker stopped; this one reads slot {slot} now");
    }
    Ok(true)
}
