//! syncbridge's CDC worker: the muscle next to the extension's brain.
//!
//! It streams the logical replication slot, hands changed keys to the
//! extension (`sync.stage`), confirms LSNs once they are durably staged, and
//! drains pending exports to the targets. Every decision about *what* must
//! change is the extension's; this crate only carries.

pub mod check;
pub mod dsn;
pub mod export;
pub mod ingest;
pub mod lsn;
pub mod pgerror;
pub mod pgoutput;
pub mod replication;
pub mod target;
pub mod tls;

/// The worker's version; the extension it talks to should report the same.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
