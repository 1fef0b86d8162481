//! The puller (two-way sync): a target's changes read back, list by list,
//! page by page, and handed to the extension, which decides.
//!
//! One puller runs per target inside the exporter, with the exporter's
//! adapter (one token, one budget: a pull is paid from the same resource
//! units as the writes). A round:
//!
//! 1. `sync.pull_claim` leases the lists whose pull is due (`FOR UPDATE SKIP
//!    LOCKED`: any number of workers pull each list once);
//! 2. per list, [`Target::pull`] one page at a time from the stored link
//!    (none: a fresh, full read), each page handed over with
//!    `sync.pull_page`, which stores its items and its link in one
//!    transaction (a crash resumes at the page after the last stored one);
//!    the page with the final link ends the list. A failure goes to
//!    `sync.pull_failed` (a 410 or a refused link with `resync`: the next
//!    read is full); a lease that is gone (SQLSTATE 55000) drops the list
//!    silently: another worker has it;
//! 3. `sync.apply_imports` while it makes progress: the extension decides
//!    and applies what was stored;
//! 4. sleep until `sync.pull_due` (at most [`MAX_IDLE`]), woken early by a
//!    conflict an export met (a 412: the remote change is pulled now) or
//!    the stop.
//!
//! With `once` the puller reads every pullable list once (`force`), applies,
//! and returns; the exporter then drains what applying staged.
//!
//! The puller also carries out drift checks (`sync.check_drift`): before
//! each round it leases the lists a check still has to read
//! (`sync.drift_claim`) and reads them whole the same way, page by page,
//! handing the pages to `sync.drift_page` (the extension compares once the
//! last list is read). The same adapter, so the same budget.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{watch, Notify};
use tokio_postgres::Client;

use crate::error::WorkerError;
use crate::extension::{self, Lease, PullClaim, PullFailure};
use crate::metrics;
use crate::target::{PullError, PullRequest, Target};

/// The most lists one round reads (and one forced claim leases).
pub const MAX_LISTS_PER_ROUND: i32 = 1000;
/// Items asked for per page.
pub const DEFAULT_PAGE_SIZE: u32 = 200;
/// Inbound changes decided per `sync.apply_imports`.
pub const IMPORTS_PER_CALL: i32 = 500;
/// The longest sleep between two looks at `sync.pull_due`.
pub const MAX_IDLE: Duration = Duration::from_secs(30);
/// The shortest sleep after a round that found nothing to claim (another
/// worker holds the due lists): no busy loop on `pull_due` = 0.
pub const MIN_IDLE: Duration = Duration::from_secs(1);
/// Lists read whole for drift checks between two pull rounds (not `once`).
pub const DRIFT_LISTS_PER_ROUND: i32 = 2;
/// With `once`: extra rounds for lists whose read must start over (a 410).
pub const ONCE_RESYNC_ROUNDS: u32 = 2;

/// How the puller runs.
#[derive(Debug, Clone)]
pub struct PullConfig {
    /// The name recorded in leases and runs.
    pub worker_name: String,
    /// Pull every pullable list once, apply, and return.
    pub once: bool,
    /// Lease length in seconds (default: the extension's).
    pub lease_seconds: Option<i32>,
    /// Items asked for per page.
    pub page_size: u32,
    /// Wakes the puller before its time (an export met a conflict).
    pub wake: Option<Arc<Notify>>,
}

impl PullConfig {
    /// The default page size.
    pub const PAGE_SIZE: u32 = DEFAULT_PAGE_SIZE;

    /// Checks the settings.
    pub fn validate(&self) -> Result<(), String> {
        if self.page_size == 0 {
            return Err("the pull page size must be at least 1".into());
        }
        Ok(())
    }
}

/// What a puller did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct PullSummary {
    /// Lists read to their final page.
    pub lists: u64,
    /// Pages handed over.
    pub pages: u64,
    /// Items handed over.
    pub items: u64,
    /// Lists whose pull failed (recorded with `sync.pull_failed`).
    pub failed: u64,
    /// Inbound changes applied to the source tables.
    pub applied: u64,
    /// Inbound changes that met a local change.
    pub conflicts: u64,
    /// Lists read whole for a drift check.
    pub drift_lists: u64,
}

/// How one list's pull ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ListEnd {
    /// Read to its final link.
    Done,
    /// Failed and recorded; `resync`: its next read is full.
    Failed { resync: bool },
    /// Dropped: the lease is gone, or the worker stops.
    Dropped,
}

/// Runs the puller of one target until `stop` (with `once`: one pass).
pub async fn run(
    db: &Client,
    config: &PullConfig,
    target: &str,
    adapter: &dyn Target,
    stop: &mut watch::Receiver<bool>,
) -> Result<PullSummary, WorkerError> {
    let mut summary = PullSummary::default();
    if config.once {
        drift_reads(db, config, target, adapter, stop, &mut summary).await?;
        if extension::pull_due(db, target).await?.is_none() {
            return Ok(summary);
        }
        for pass in 0..=ONCE_RESYNC_ROUNDS {
            let resyncs = round(db, config, target, adapter, true, stop, &mut summary).await?.resyncs;
            apply_all(db, config, target, &mut summary).await?;
            if resyncs == 0 || *stop.borrow() {
                break;
            }
            tracing::info!(target = %target, lists = resyncs, pass, "lists to read again in full (--once)");
        }
        return Ok(summary);
    }
    loop {
        if *stop.borrow() {
            return Ok(summary);
        }
        drift_reads(db, config, target, adapter, stop, &mut summary).await?;
        // A drift check waiting for a list (a backoff, another worker's
        // lease) shortens the sleep.
        let drift_wait = extension::drift_due(db, target)
            .await?
            .map(|s| Duration::try_from_secs_f64(s).unwrap_or(MAX_IDLE).clamp(MIN_IDLE, MAX_IDLE));
        let wait = match extension::pull_due(db, target).await? {
            // Nothing to pull on this target (yet): look again later.
            None => drift_wait.unwrap_or(MAX_IDLE),
            Some(s) if s > 0.0 => {
                Duration::try_from_secs_f64(s).unwrap_or(MAX_IDLE).min(MAX_IDLE).min(drift_wait.unwrap_or(MAX_IDLE))
            }
            Some(_) => {
                let r = round(db, config, target, adapter, false, stop, &mut summary).await?;
                apply_all(db, config, target, &mut summary).await?;
                if r.claimed > r.failed {
                    continue;
                }
                // Nothing claimed (another worker holds the due lists) or
                // every read failed (the extension schedules the retries):
                // no busy loop.
                MIN_IDLE
            }
        };
        if !sleep_or_wake(wait, config.wake.as_deref(), stop).await {
            return Ok(summary);
        }
    }
}

/// Reads the lists drift checks of the target still have to read, one
/// lease at a time: every one claimable with `once`, else at most
/// [`DRIFT_LISTS_PER_ROUND`] (the pulls go on in between). A drift check's
/// failure is the check's, never the puller's: the extension ends a check
/// that cannot go on, and an error here is logged (a lost connection shows
/// at the puller's next call).
async fn drift_reads(
    db: &Client,
    config: &PullConfig,
    target: &str,
    adapter: &dyn Target,
    stop: &mut watch::Receiver<bool>,
    summary: &mut PullSummary,
) -> Result<(), WorkerError> {
    let (lease, worker) = (config.lease_seconds, config.worker_name.as_str());
    let most = if config.once { MAX_LISTS_PER_ROUND } else { DRIFT_LISTS_PER_ROUND };
    for _ in 0..most {
        if *stop.borrow() {
            return Ok(());
        }
        let claim = match extension::drift_claim(db, target, 1, lease, worker).await {
            Ok(c) => c.into_iter().next(),
            Err(e) => {
                tracing::warn!(target = %target, error = %e, "could not claim a list for a drift check");
                return Ok(());
            }
        };
        let Some(c) = claim else { return Ok(()) };
        tracing::info!(definition = %c.definition, list = %c.list, report = c.report, "reading a list for a drift check");
        match pull_list(db, config, target, adapter, &c, stop, summary).await {
            Ok(ListEnd::Done) => summary.drift_lists += 1,
            Ok(ListEnd::Failed { .. }) => summary.failed += 1,
            Ok(ListEnd::Dropped) => {}
            Err(e) => {
                tracing::warn!(definition = %c.definition, list = %c.list, report = c.report, error = %e,
                    "a drift check's read failed; its lease passes and the list is read again");
                return Ok(());
            }
        }
    }
    Ok(())
}

/// Sleeps `d`, or less when woken; false when the worker stops.
async fn sleep_or_wake(d: Duration, wake: Option<&Notify>, stop: &mut watch::Receiver<bool>) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(d) => true,
        _ = async { match wake { Some(w) => w.notified().await, None => std::future::pending().await } } => true,
        changed = stop.changed() => changed.is_ok() && !*stop.borrow(),
    }
}

/// What one round did.
#[derive(Debug, Default, Clone, Copy)]
struct Round {
    /// Lists claimed.
    claimed: usize,
    /// Of those, lists whose pull failed.
    failed: usize,
    /// Of those, lists whose read must start over (a 410, a refused link).
    resyncs: u32,
}

/// One round: claims lists and reads each. Due lists are claimed one at a
/// time, so that each lease starts when its read does (a long read does not
/// eat the lease of the lists after it), at most [`MAX_LISTS_PER_ROUND`];
/// with `force`, every pullable list in one claim.
async fn round(
    db: &Client,
    config: &PullConfig,
    target: &str,
    adapter: &dyn Target,
    force: bool,
    stop: &mut watch::Receiver<bool>,
    summary: &mut PullSummary,
) -> Result<Round, WorkerError> {
    let (lease, worker) = (config.lease_seconds, config.worker_name.as_str());
    let n = if force { MAX_LISTS_PER_ROUND } else { 1 };
    let mut claims = extension::pull_claim(db, target, n, lease, worker, force).await?;
    if claims.is_empty() {
        return Ok(Round::default());
    }
    let run_id = extension::start_run(db, "pull", None, worker).await?;
    let mut done = Round::default();
    let outcome: Result<(), WorkerError> = async {
        while !claims.is_empty() {
            for c in &claims {
                if *stop.borrow() {
                    return Ok(());
                }
                done.claimed += 1;
                match pull_list(db, config, target, adapter, c, stop, summary).await? {
                    ListEnd::Done => summary.lists += 1,
                    ListEnd::Failed { resync } => {
                        summary.failed += 1;
                        done.failed += 1;
                        done.resyncs += u32::from(resync);
                    }
                    ListEnd::Dropped => {}
                }
            }
            if force || done.claimed >= MAX_LISTS_PER_ROUND as usize {
                return Ok(());
            }
            claims = extension::pull_claim(db, target, 1, lease, worker, false).await?;
        }
        Ok(())
    }
    .await;
    let (status, error) = match &outcome {
        Ok(()) => ("succeeded", None),
        Err(e) => ("failed", Some(e.to_string())),
    };
    let detail = serde_json::json!({"lists": done.claimed, "failed": done.failed, "resyncs": done.resyncs});
    extension::finish_run(db, run_id, status, error, detail).await;
    outcome.map(|()| done)
}

/// Reads one leased list page by page to its final link.
async fn pull_list(
    db: &Client,
    config: &PullConfig,
    target: &str,
    adapter: &dyn Target,
    c: &PullClaim,
    stop: &mut watch::Receiver<bool>,
    summary: &mut PullSummary,
) -> Result<ListEnd, WorkerError> {
    let worker = config.worker_name.as_str();
    let mut request = PullRequest {
        definition: c.definition.clone(),
        container_id: c.list_id.clone(),
        link: c.link.clone(),
        fields: c.fields.clone(),
        page_size: config.page_size,
    };
    tracing::debug!(definition = %c.definition, list = %c.list, round = c.round, fresh = c.link.is_none(), "pulling a list");
    let read = if c.report.is_some() { "drift" } else { "pull" };
    loop {
        if *stop.borrow() {
            // The pages stored so far are durable with their link; the
            // lease expires and the next worker goes on from there.
            return Ok(ListEnd::Dropped);
        }
        let started = std::time::Instant::now();
        let page = match adapter.pull(&request).await {
            Ok(page) => page,
            Err(e) => {
                let end = failed(db, c, &e, worker, stop).await;
                if matches!(end, Ok(ListEnd::Failed { .. })) {
                    metrics::PULL_FAILURES.inc(&[target, e.class().as_str()]);
                }
                return end;
            }
        };
        let items = serde_json::to_string(&page.items)
            .map_err(|e| WorkerError::internal(format!("a pulled page does not serialize: {e}")))?;
        let lease = extension::pull_page(db, c, &items, &page.link, page.last, worker).await?;
        if lease == Lease::Lost {
            tracing::info!(definition = %c.definition, list = %c.list, "another worker holds the list now: dropped");
            return Ok(ListEnd::Dropped);
        }
        summary.pages += 1;
        summary.items += page.items.len() as u64;
        metrics::PULL_PAGES.inc(&[target, read]);
        metrics::PULL_ITEMS.add(&[target, read], page.items.len() as f64);
        metrics::BATCH_DURATION.observe(&["pull_page"], started.elapsed().as_secs_f64());
        if page.last {
            tracing::debug!(definition = %c.definition, list = %c.list, round = c.round, "list read");
            return Ok(ListEnd::Done);
        }
        request.link = Some(page.link);
    }
}

/// Records a list's failed pull (unless the worker is stopping: the
/// request was not sent, and the lease will pass).
async fn failed(
    db: &Client,
    c: &PullClaim,
    e: &PullError,
    worker: &str,
    stop: &watch::Receiver<bool>,
) -> Result<ListEnd, WorkerError> {
    if *stop.borrow() {
        return Ok(ListEnd::Dropped);
    }
    let message = e.to_string();
    tracing::warn!(definition = %c.definition, list = %c.list, class = e.class().as_str(), resync = e.resync(),
        error = %message, "pulling a list failed");
    let failure =
        PullFailure { error: &message, class: e.class().as_str(), resync: e.resync(), retry_after: e.retry_after() };
    match extension::pull_failed(db, c, &failure, worker).await? {
        Lease::Held => Ok(ListEnd::Failed { resync: e.resync() }),
        Lease::Lost => Ok(ListEnd::Dropped),
    }
}

/// `sync.apply_imports` while it settles something and something remains.
async fn apply_all(
    db: &Client,
    config: &PullConfig,
    target: &str,
    summary: &mut PullSummary,
) -> Result<(), WorkerError> {
    loop {
        let t = extension::apply_imports(db, target, IMPORTS_PER_CALL, &config.worker_name).await?;
        count_imports(target, &t);
        summary.applied += u64::try_from(t.applied).unwrap_or(0);
        summary.conflicts += u64::try_from(t.conflicts).unwrap_or(0);
        if t.progress() > 0 {
            tracing::debug!(target = %target, applied = t.applied, echoes = t.echoes, conflicts = t.conflicts,
                awaiting = t.awaiting, failed = t.failed, remaining = t.remaining, "applied pulled changes");
        }
        if t.progress() == 0 || t.remaining <= 0 {
            return Ok(());
        }
    }
}

/// Counts what one `sync.apply_imports` call decided in the metrics.
pub fn count_imports(target: &str, t: &extension::ImportTally) {
    for (outcome, n) in [
        ("applied", t.applied),
        ("echo", t.echoes),
        ("conflict", t.conflicts),
        ("awaiting", t.awaiting),
        ("failed", t.failed),
    ] {
        metrics::IMPORTS.add(&[target, outcome], f64::from(n));
    }
    metrics::CONFLICTS.add(&[target, "import"], f64::from(t.conflicts));
}
