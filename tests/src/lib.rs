//! Test support for syncbridge: a throwaway PostgreSQL cluster per test
//! binary (real server, `wal_level = logical`), a database per test, ways to
//! run the worker binary, the emulator harness with the target APIs plugged
//! into it, and a target-neutral environment for tests written once for
//! every target kind.

pub mod cluster;
pub mod emulator;
pub mod github;
pub mod github_emulator;
pub mod graph;
pub mod graph_emulator;
pub mod ingest;
pub mod jira;
pub mod jira_emulator;
pub mod ldap;
pub mod linear;
pub mod linear_emulator;
pub mod process;
pub mod prometheus;
pub mod random;
pub mod target_env;
pub mod webhook;
pub mod webhook_receiver;
pub mod worker;

pub use cluster::{cluster, Cluster, ClusterOptions, TestDb};
