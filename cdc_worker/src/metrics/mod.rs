//! The worker's metrics, in Prometheus's text format, and its health.
//!
//! Every metric the worker exposes is declared here ([`ALL`]), with its
//! type, unit (base units: seconds, bytes; counters end in `_total`) and
//! label names. Label values come from small fixed sets (a target's,
//! definition's or slot's name, an operation, an outcome, a state, an HTTP
//! status code): never a key, a row's value, a URL or a secret.
//!
//! The other modules count into these families; the periodic sampler
//! ([`crate::observe`]) sets the gauges read from the database (queue depth,
//! slot lag in bytes); [`server`] serves `/metrics`, `/healthz` and
//! `/readyz` on the address given with `--metrics-addr`.
//!
//! This module uses nothing of the crate: anything may count into it.

pub mod health;
mod registry;
pub mod server;

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

pub use registry::{
    escape_help, escape_label, number, valid_label_name, valid_metric_name, Counter, Family, Gauge, Histogram, Kind,
    LATENCY_BUCKETS, RUN_BUCKETS,
};

/// The content type of `/metrics`.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

// ---------------------------------------------------------------------------
// The process
// ---------------------------------------------------------------------------

/// Always 1; its label says which worker version runs.
pub static BUILD_INFO: Family =
    Family::gauge("syncbridge_build_info", "The worker's version (the value is always 1).", &["version"]);

/// Restarts of the ingest or the exporter after a failure.
pub static RESTARTS: Family = Family::counter(
    "syncbridge_restarts_total",
    "Restarts of a part of the worker (ingest, export) after a transient or internal failure.",
    &["component"],
);

// ---------------------------------------------------------------------------
// The slot and the ingest
// ---------------------------------------------------------------------------

/// WAL the slot still holds for us (sampled).
pub static SLOT_LAG_BYTES: Family = Family::gauge(
    "syncbridge_slot_lag_bytes",
    "Bytes of WAL between the server's current position and the slot's confirmed_flush_lsn (sampled).",
    &["slot"],
);

/// WAL kept on disk for the slot (sampled).
pub static SLOT_WAL_HELD_BYTES: Family = Family::gauge(
    "syncbridge_slot_wal_held_bytes",
    "Bytes of WAL the server keeps for the slot: its current position minus the slot's restart_lsn (sampled).",
    &["slot"],
);

/// How far behind its source the ingest is.
pub static SLOT_LAG_SECONDS: Family = Family::gauge(
    "syncbridge_slot_lag_seconds",
    "Seconds from the source commit of the last transaction staged to its staging; 0 once everything received is staged.",
    &["slot"],
);

/// Committed transactions decoded.
pub static INGEST_TRANSACTIONS: Family = Family::counter(
    "syncbridge_ingest_transactions_total",
    "Committed transactions decoded from the slot (those skipped for their syncbridge origin included).",
    &[],
);

/// Transactions skipped for their origin (two-way sync's own writes).
pub static INGEST_SKIPPED: Family = Family::counter(
    "syncbridge_ingest_transactions_skipped_total",
    "Transactions skipped because syncbridge itself made them (replication origin syncbridge).",
    &[],
);

/// Row changes decoded.
pub static INGEST_CHANGES: Family = Family::counter(
    "syncbridge_ingest_changes_total",
    "Row changes decoded from the slot, by operation (insert, update, delete, truncate).",
    &["op"],
);

/// Keys handed to `sync.stage`.
pub static INGEST_KEYS_STAGED: Family = Family::counter(
    "syncbridge_ingest_keys_staged_total",
    "Distinct changed keys handed to sync.stage (deduplicated per batch), counted once their transaction committed.",
    &[],
);

/// What `sync.stage` put in the queue.
pub static INGEST_EXPORTS_STAGED: Family = Family::counter(
    "syncbridge_ingest_exports_staged_total",
    "Exports sync.stage added, changed, deleted or moved in the queue, by definition.",
    &["definition"],
);

/// Keys `sync.stage` deferred (the definition's target far behind).
pub static INGEST_KEYS_DEFERRED: Family = Family::counter(
    "syncbridge_ingest_keys_deferred_total",
    "Keys sync.stage kept in sync.deferred_keys (their definition's queue held sync.defer_after exports), by definition; sync.claim stages them as the queue drains.",
    &["definition"],
);

/// Source commit to staged, per transaction.
pub static COMMIT_TO_STAGED: Family = Family::histogram(
    "syncbridge_ingest_commit_to_staged_seconds",
    "Seconds from a transaction's commit on the source to its keys being staged (committed by sync.stage).",
    &[],
    LATENCY_BUCKETS,
);

// ---------------------------------------------------------------------------
// Exports
// ---------------------------------------------------------------------------

/// Exports claimed.
pub static EXPORTS_CLAIMED: Family =
    Family::counter("syncbridge_exports_claimed_total", "Exports claimed with sync.claim, by target.", &["target"]);

/// Export results reported to `sync.complete`.
pub static EXPORTS: Family = Family::counter(
    "syncbridge_exports_total",
    "Export results reported to sync.complete, by target, operation (provision, add, update, delete, move) and \
     outcome (ok, or the failure's class: transient, throttled, auth, definite, conflict).",
    &["target", "op", "outcome"],
);

/// Claim to complete, per export.
pub static CLAIM_TO_COMPLETE: Family = Family::histogram(
    "syncbridge_export_claim_to_complete_seconds",
    "Seconds from an export's claim to its result being recorded by sync.complete (the target's part of the \
     latency; the time in the queue before is not included), by target.",
    &["target"],
    LATENCY_BUCKETS,
);

// ---------------------------------------------------------------------------
// Targets (the shared HTTP client)
// ---------------------------------------------------------------------------

/// HTTP answers from targets.
pub static TARGET_REQUESTS: Family = Family::counter(
    "syncbridge_target_requests_total",
    "Answers from a target, by target, kind (token: the token endpoint; api: a request to the API; batch_item: a \
     request carried in a $batch, with its own status) and HTTP status code.",
    &["target", "kind", "code"],
);

/// Requests that got no answer.
pub static TARGET_REQUEST_ERRORS: Family = Family::counter(
    "syncbridge_target_request_errors_total",
    "Requests to a target that got no answer (connection refused or lost, timeout), by target and kind.",
    &["target", "kind"],
);

/// 429 answers.
pub static TARGET_THROTTLED: Family = Family::counter(
    "syncbridge_target_throttled_total",
    "429 Too Many Requests answers from a target's API (inside $batch answers too).",
    &["target"],
);

/// Seconds targets asked us to wait.
pub static TARGET_RETRY_AFTER: Family = Family::counter(
    "syncbridge_target_retry_after_seconds_total",
    "Seconds a target asked the worker to wait (Retry-After of 429 and 503 answers, capped; 1 when absent).",
    &["target"],
);

/// Budget units spent.
pub static BUDGET_SPENT: Family = Family::counter(
    "syncbridge_target_budget_spent_units_total",
    "Cost units taken from a target's budget before sending (Graph: resource units), by target.",
    &["target"],
);

/// Budget units allowed.
pub static BUDGET_ALLOWED: Family = Family::gauge(
    "syncbridge_target_budget_allowed_units_per_second",
    "The target's budget in cost units per second (budget_per_min / 60).",
    &["target"],
);

/// Time spent waiting for the budget or a pause.
pub static BUDGET_WAIT: Family = Family::counter(
    "syncbridge_target_budget_wait_seconds_total",
    "Seconds requests waited for their turn (the budget, the writes-per-second cap, a Retry-After pause).",
    &["target"],
);

/// Failed reads of the shared budget.
pub static BUDGET_SHARED_ERRORS: Family = Family::counter(
    "syncbridge_target_budget_shared_errors_total",
    "Requests paced by the process's own budget only because the target's shared budget (sync.budget_take) could not be read, by target.",
    &["target"],
);

// ---------------------------------------------------------------------------
// Pulls (two-way), imports and conflicts
// ---------------------------------------------------------------------------

/// Pages read back.
pub static PULL_PAGES: Family = Family::counter(
    "syncbridge_pull_pages_total",
    "Pages of changes read back from a target and stored, by target and read (pull, or drift: a drift check's).",
    &["target", "read"],
);

/// Items read back.
pub static PULL_ITEMS: Family = Family::counter(
    "syncbridge_pull_items_total",
    "Items read back from a target and stored, by target and read (pull, drift).",
    &["target", "read"],
);

/// Failed list reads.
pub static PULL_FAILURES: Family = Family::counter(
    "syncbridge_pull_failures_total",
    "List reads that failed (recorded with sync.pull_failed or sync.drift_failed), by target and error class.",
    &["target", "class"],
);

/// Inbound changes decided by `sync.apply_imports`.
pub static IMPORTS: Family = Family::counter(
    "syncbridge_imports_total",
    "Inbound changes sync.apply_imports decided, by target and outcome (applied, echo, conflict, awaiting, failed).",
    &["target", "outcome"],
);

/// Conflicts met.
pub static CONFLICTS: Family = Family::counter(
    "syncbridge_conflicts_total",
    "Changes made on both sides, by target and where they were met (export: a 412 to If-Match; import: \
     sync.apply_imports).",
    &["target", "side"],
);

// ---------------------------------------------------------------------------
// Queues (sampled from the database)
// ---------------------------------------------------------------------------

/// Open exports.
pub static QUEUE_EXPORTS: Family = Family::gauge(
    "syncbridge_queue_exports",
    "Open exports in sync.pending_exports, by target, definition and state (pending, awaiting_approval, executing, \
     failed, error; sampled).",
    &["target", "definition", "state"],
);

/// Age of the oldest open export.
pub static QUEUE_EXPORTS_OLDEST: Family = Family::gauge(
    "syncbridge_queue_exports_oldest_age_seconds",
    "Seconds since the oldest open export of each target, definition and state was staged (0: none; sampled).",
    &["target", "definition", "state"],
);

/// Open imports.
pub static QUEUE_IMPORTS: Family = Family::gauge(
    "syncbridge_queue_imports",
    "Inbound changes in sync.pending_imports still to decide or settle, by target, definition and state (pending, \
     conflict, awaiting_approval, failed; sampled).",
    &["target", "definition", "state"],
);

/// When the sampler last read the database.
pub static SAMPLER_LAST_SUCCESS: Family = Family::gauge(
    "syncbridge_sampler_last_success_timestamp_seconds",
    "Unix time of the sampler's last successful read of the queues and the slot (0: never).",
    &[],
);

/// Sampler failures.
pub static SAMPLER_FAILURES: Family = Family::counter(
    "syncbridge_sampler_failures_total",
    "Samples of the queues and the slot that failed (the gauges keep their last values).",
    &[],
);

// ---------------------------------------------------------------------------
// Durations
// ---------------------------------------------------------------------------

/// Run lengths (`sync.runs`).
pub static RUN_DURATION: Family = Family::histogram(
    "syncbridge_run_duration_seconds",
    "Length of the worker's runs as recorded in sync.runs, by kind (stream, export, backfill, pull) and status \
     (succeeded, failed, cancelled).",
    &["kind", "status"],
    RUN_BUCKETS,
);

/// Batch lengths.
pub static BATCH_DURATION: Family = Family::histogram(
    "syncbridge_batch_duration_seconds",
    "Length of one unit of work, by kind (stage: a staging transaction; export: claim to complete of a batch; \
     pull_page: reading and storing a page; backfill_chunk: a backfill step).",
    &["kind"],
    LATENCY_BUCKETS,
);

/// Every family, in the order `/metrics` shows them.
pub static ALL: &[&Family] = &[
    &BUILD_INFO,
    &RESTARTS,
    &SLOT_LAG_BYTES,
    &SLOT_WAL_HELD_BYTES,
    &SLOT_LAG_SECONDS,
    &INGEST_TRANSACTIONS,
    &INGEST_SKIPPED,
    &INGEST_CHANGES,
    &INGEST_KEYS_STAGED,
    &INGEST_EXPORTS_STAGED,
    &INGEST_KEYS_DEFERRED,
    &COMMIT_TO_STAGED,
    &EXPORTS_CLAIMED,
    &EXPORTS,
    &CLAIM_TO_COMPLETE,
    &TARGET_REQUESTS,
    &TARGET_REQUEST_ERRORS,
    &TARGET_THROTTLED,
    &TARGET_RETRY_AFTER,
    &BUDGET_SPENT,
    &BUDGET_ALLOWED,
    &BUDGET_WAIT,
    &BUDGET_SHARED_ERRORS,
    &PULL_PAGES,
    &PULL_ITEMS,
    &PULL_FAILURES,
    &IMPORTS,
    &CONFLICTS,
    &QUEUE_EXPORTS,
    &QUEUE_EXPORTS_OLDEST,
    &QUEUE_IMPORTS,
    &SAMPLER_LAST_SUCCESS,
    &SAMPLER_FAILURES,
    &RUN_DURATION,
    &BATCH_DURATION,
];

/// The family named `name`, if any.
pub fn family(name: &str) -> Option<&'static Family> {
    ALL.iter().copied().find(|f| f.name == name)
}

/// Every family in the text exposition format (version 0.0.4).
pub fn render() -> String {
    BUILD_INFO.set(&[crate::VERSION], 1.0);
    let mut out = String::with_capacity(16 * 1024);
    for f in ALL {
        f.render(&mut out);
    }
    out
}

// ---------------------------------------------------------------------------
// Label values from fixed sets
// ---------------------------------------------------------------------------

/// Operations of exports, as `sync.pending_exports.op` spells them.
pub const EXPORT_OPS: [&str; 5] = ["provision", "add", "update", "delete", "move"];
/// Outcomes of exports: ok, or the class of the failure.
pub const EXPORT_OUTCOMES: [&str; 6] = ["ok", "transient", "throttled", "auth", "definite", "conflict"];
/// Outcomes of inbound changes.
pub const IMPORT_OUTCOMES: [&str; 5] = ["applied", "echo", "conflict", "awaiting", "failed"];
/// Operations of decoded changes.
pub const CHANGE_OPS: [&str; 4] = ["insert", "update", "delete", "truncate"];

/// An HTTP status code as a label value: three digits, or `other` (the
/// set stays bounded whatever a server answers).
pub fn code_label(status: u16) -> String {
    if (100..=599).contains(&status) {
        status.to_string()
    } else {
        "other".into()
    }
}

/// Creates a target's series at zero, so that they show before anything
/// happened (a rate over a counter that appears late misses its first
/// increments).
pub fn target_started(target: &str) {
    for f in
        [&EXPORTS_CLAIMED, &TARGET_THROTTLED, &TARGET_RETRY_AFTER, &BUDGET_SPENT, &BUDGET_WAIT, &BUDGET_SHARED_ERRORS]
    {
        f.touch(&[target]);
    }
    for op in EXPORT_OPS {
        for outcome in EXPORT_OUTCOMES {
            EXPORTS.touch(&[target, op, outcome]);
        }
    }
    for outcome in IMPORT_OUTCOMES {
        IMPORTS.touch(&[target, outcome]);
    }
    for side in ["export", "import"] {
        CONFLICTS.touch(&[target, side]);
    }
}

// ---------------------------------------------------------------------------
// Runs
// ---------------------------------------------------------------------------

/// Runs started and not finished yet: their kind and start.
static RUNS: Mutex<Option<HashMap<i64, (String, Instant)>>> = Mutex::new(None);

/// A run (a row of `sync.runs`) started.
pub fn run_started(run_id: i64, kind: &str) {
    let mut runs = RUNS.lock().unwrap_or_else(|p| p.into_inner());
    runs.get_or_insert_with(HashMap::new).insert(run_id, (kind.to_owned(), Instant::now()));
}

/// A run finished with `status`: its length is observed.
pub fn run_finished(run_id: i64, status: &str) {
    let started = RUNS.lock().unwrap_or_else(|p| p.into_inner()).as_mut().and_then(|r| r.remove(&run_id));
    if let Some((kind, at)) = started {
        RUN_DURATION.observe(&[&kind, status], at.elapsed().as_secs_f64());
    }
}

#[cfg(test)]
mod tests;
