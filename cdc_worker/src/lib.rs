//! syncbridge's CDC worker: the muscle next to the extension's brain.
//!
//! It streams the logical replication slot, hands changed keys to the
//! extension (`sync.stage`), confirms LSNs once they are durably staged, and
//! drains pending exports to the targets. Every decision about *what* must
//! change is the extension's; this crate only carries.
//!
//! The modules follow the data flow, each using only those above it:
//! - [`error`]: the crate's error type and its restart policy;
//! - [`pg`]: PostgreSQL plumbing that knows nothing of syncbridge;
//! - [`source`]: the replication transport, the pgoutput decoder, LSNs;
//! - [`extension`]: the whole contract with the extension (every `sync.*` call);
//! - [`target`]: the adapters (the trait, the kind registry, the shared HTTP
//!   client, Graph);
//! - [`ingest`]: slot → batches → `sync.stage`, and the initial load;
//! - [`export`]: `sync.claim` → adapter → `sync.complete` (and each target's
//!   puller beside), and the purge;
//! - [`pull`]: changes read back from targets (two-way): `sync.pull_claim` →
//!   adapter → `sync.pull_page`, then `sync.apply_imports`;
//! - [`runtime`]: the worker's name and stop signals;
//! - [`check`]: `syncbridge-worker check`;
//! - [`metrics`]: the metrics registry and the `/metrics`, `/healthz`,
//!   `/readyz` endpoint (uses nothing of the crate: every module counts
//!   into it);
//! - [`observe`]: the sampler that reads queue depth and slot lag from the
//!   database into the metrics.

pub mod check;
pub mod error;
pub mod export;
pub mod extension;
pub mod ingest;
pub mod metrics;
pub mod observe;
pub mod pg;
pub mod pull;
pub mod runtime;
pub mod source;
pub mod target;

#[cfg(test)]
mod layout_tests;

/// The worker's version; the extension it talks to should report the same.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
