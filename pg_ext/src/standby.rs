//! A standby snapshot on PostgreSQL 15. A logical slot's restart position
//! moves only past a running-transactions record, which the server writes
//! every 15 seconds (the background writer) or at a checkpoint: while the
//! source is idle or busy with unpublished tables, the slot holds WAL it no
//! longer needs. PostgreSQL 16 and later offer `pg_log_standby_snapshot()`;
//! on 15 the server function it wraps, `LogStandbySnapshot()`, is as
//! callable from an extension. `sync._standby_snapshot()` uses the one
//! or the other; only the worker's role may call it.

use pgrx::prelude::*;

use crate::error::SyncError;

/// Writes a running-transactions record (what `pg_log_standby_snapshot()`
/// does on 16 and later) and returns its position as a number of bytes.
#[pg_extern(volatile, parallel_unsafe)]
fn _log_standby_snapshot() -> i64 {
    // SAFETY: plain reads of the server's state, and the function the
    // background writer calls; an ERROR unwinds through pgrx's guard.
    unsafe {
        if pg_sys::RecoveryInProgress() {
            SyncError::NoStandbySnapshot { reason: "recovery is in progress".into() }.raise();
        }
        if (pg_sys::wal_level as u32) < pg_sys::WalLevel::WAL_LEVEL_REPLICA {
            SyncError::NoStandbySnapshot { reason: "wal_level is minimal".into() }.raise();
        }
        i64::try_from(pg_sys::LogStandbySnapshot()).unwrap_or(i64::MAX)
    }
}

#[cfg(any(test, feature = "pg_test"))]
#[pg_schema]
mod tests {
    use pgrx::prelude::*;

    #[pg_test]
    fn a_standby_snapshot_is_written_at_the_current_position() {
        let before = Spi::get_one::<i64>("SELECT (pg_current_wal_insert_lsn() - '0/0')::bigint").unwrap().unwrap();
        let at = Spi::get_one::<i64>("SELECT sync._log_standby_snapshot()").unwrap().unwrap();
        let after = Spi::get_one::<i64>("SELECT (pg_current_wal_insert_lsn() - '0/0')::bigint").unwrap().unwrap();
        assert!(before <= at && at <= after, "{before} <= {at} <= {after}");
        let lsn = Spi::get_one::<String>("SELECT sync._standby_snapshot()::text").unwrap().unwrap();
        assert!(lsn.contains('/'), "{lsn}");
    }
}
