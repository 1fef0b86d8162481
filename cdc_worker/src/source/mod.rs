//! The replication source: our own streaming-replication transport, the
//! pgoutput decoder and LSNs.

pub mod lsn;
pub mod pgoutput;
pub mod replication;
