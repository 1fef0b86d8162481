//! Test support for syncbridge: a throwaway PostgreSQL cluster per test
//! binary (real server, `wal_level = logical`), a database per test, and a
//! way to run the worker binary.

pub mod cluster;
pub mod graph;
pub mod graph_emulator;
pub mod ingest;
pub mod worker;

pub use cluster::{cluster, Cluster, ClusterOptions, TestDb};
