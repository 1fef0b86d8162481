//! Scheduled jobs: every worker process runs one loop (`main`), whatever it
//! runs. `sync.run_jobs` decides what is due and runs each occurrence once,
//! whichever worker calls first (the others skip the locked job); this loop
//! only calls it when something is due.

use std::time::Duration;

use tokio::sync::watch;

use crate::extension;
use crate::pg::dsn::Dsn;

/// The longest wait between two looks at the schedules (a job scheduled
/// meanwhile is run at most this late).
const MAX_WAIT: Duration = Duration::from_secs(10);
/// The shortest wait (a job that failed is not retried in a busy loop: its
/// next occurrence is computed from now).
const MIN_WAIT: Duration = Duration::from_millis(200);
/// After a lost connection or an error.
const RETRY: Duration = Duration::from_secs(5);

/// Runs due jobs until shutdown (with `once`: the jobs due now, then returns).
pub async fn jobs_loop(dsn: Dsn, once: bool, worker: String, mut shutdown: watch::Receiver<bool>) {
    let mut db = None;
    loop {
        let wait = match step(&dsn, &mut db, &worker).await {
            Ok(w) => w,
            Err(e) => {
                tracing::warn!(error = %crate::pg::sqlstate::Described(&e), "could not run scheduled jobs (sync.run_jobs)");
                db = None;
                RETRY
            }
        };
        if once {
            return;
        }
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = shutdown.changed() => return,
        }
    }
}

/// One look: runs what is due; returns how long to wait for the next.
async fn step(
    dsn: &Dsn,
    db: &mut Option<tokio_postgres::Client>,
    worker: &str,
) -> Result<Duration, tokio_postgres::Error> {
    if db.as_ref().is_none_or(|c| c.is_closed()) {
        match crate::pg::connect(dsn, "syncbridge-jobs").await {
            Ok(c) => *db = Some(c),
            Err(e) => {
                tracing::warn!(error = %e, "could not run scheduled jobs: cannot connect");
                return Ok(RETRY);
            }
        }
    }
    let Some(c) = db.as_ref() else { return Ok(RETRY) };
    let ran = extension::run_jobs(c, worker).await?;
    if ran > 0 {
        tracing::info!(jobs = ran, "ran scheduled jobs");
    }
    let due = extension::jobs_due(c).await?;
    Ok(due.map_or(MAX_WAIT, |s| Duration::try_from_secs_f64(s).unwrap_or(MAX_WAIT).clamp(MIN_WAIT, MAX_WAIT)))
}
