//! History purge: every worker process runs one loop (`main`), whatever it
//! runs; `sync.purge` lets one at a time work.

use std::time::Duration;

use tokio::sync::watch;

use crate::extension;
use crate::pg::dsn::Dsn;

/// How often a running worker purges history past its retention.
const PURGE_EVERY: Duration = Duration::from_secs(600);

/// What every worker process runs beside its work, until shutdown (with
/// `once`: once): the history purge and the scheduled jobs.
pub async fn housekeeping(dsn: Dsn, once: bool, shutdown: watch::Receiver<bool>) {
    let worker = crate::runtime::default_worker_name();
    tokio::join!(purge_loop(dsn.clone(), once, shutdown.clone()), super::jobs::jobs_loop(dsn, once, worker, shutdown));
}

/// Purges now and, unless `once`, every PURGE_EVERY until shutdown. Each
/// worker process runs one (`main`), whatever it runs; `sync.purge` lets one
/// at a time work.
pub async fn purge_loop(dsn: Dsn, once: bool, mut shutdown: watch::Receiver<bool>) {
    loop {
        purge(&dsn).await;
        if once {
            return;
        }
        tokio::select! {
            _ = tokio::time::sleep(PURGE_EVERY) => {}
            _ = shutdown.changed() => return,
        }
    }
}

/// `sync.purge()`: finished exports and runs older than
/// `sync.history_retention_days`, on a session of its own (every few minutes:
/// a lost connection is only a missed purge). A failure is logged, never fatal.
async fn purge(dsn: &Dsn) {
    let db = match crate::pg::connect(dsn, "syncbridge-purge").await {
        Ok(db) => db,
        Err(e) => {
            tracing::warn!(error = %e, "could not purge history (sync.purge): cannot connect");
            return;
        }
    };
    match extension::purge(&db).await {
        Ok((exports, runs, abandoned)) => {
            if abandoned > 0 {
                tracing::info!(
                    runs = abandoned,
                    "marked failed the runs of sessions that ended without finishing them"
                );
            }
            if exports + runs > 0 {
                tracing::info!(exports, runs, "purged finished exports and runs past sync.history_retention_days");
            }
        }
        Err(e) => tracing::warn!(error = %crate::pg::sqlstate::Described(&e), "could not purge history (sync.purge)"),
    }
}
