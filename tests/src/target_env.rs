//! A target-neutral test environment: a target kind's emulator, seen the same
//! way for every kind, so that tests written once (`tests/tests/robustness.rs`)
//! run against each kind. A kind implements [`TargetEnv`]; what only some
//! kinds can do is a capability (an associated constant) a test checks.

use std::collections::BTreeMap;
use std::process::Command;

use serde_json::{Map, Value};

use crate::emulator::{Fault, Stats};
use crate::process::{run_cmd, run_to_end};
use crate::TestDb;

/// How to start an environment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EnvOptions {
    /// The emulator's rate limit in item writes per minute, the target
    /// told the same (`None`: unlimited, and the target told so).
    pub writes_per_min: Option<u32>,
    /// How long the tokens the emulator issues live, in seconds (`None`:
    /// its default); only for kinds with [`TargetEnv::EXPIRING_TOKENS`].
    pub token_lifetime_secs: Option<u64>,
}

/// A target kind's emulator, running, and what tests do with it.
pub trait TargetEnv: Sized {
    /// The kind, as `sync.create_target(kind => ...)` takes it.
    const KIND: &'static str;
    /// Capability: the kind authenticates with tokens that expire and can
    /// be revoked ([`EnvOptions::token_lifetime_secs`], [`Self::expire_tokens`]).
    const EXPIRING_TOKENS: bool;
    /// Capability: the kind's adapter sends several writes in one request,
    /// so [`Fault::BatchMissingResponses`] applies (without batches it would
    /// stay pending, holding up the faults queued after it).
    const BATCHES: bool;
    /// Writes the emulator counts for provisioning one container.
    const PROVISION_WRITES: u64;
    /// How many exports the worker claims at a time for this kind (its
    /// adapter's batch size), per lane.
    const CLAIM_SIZE: u64;
    /// Capability: the adapter reads what an answer says (an API). A kind
    /// whose receiver's `2xx` is a delivery whatever its body (a webhook,
    /// by its specification) lacks it: for such a kind an unexecuted `200`
    /// ([`Fault::Garbage`]) is a receiver losing what it acknowledged, and
    /// tests send garbage with an error status instead.
    const ANSWER_BODIES: bool = true;
    /// An answer the kind's adapter takes as a definite refusal (retrying
    /// will not help): an API's `400`; a webhook retries every `4xx` (its
    /// specification) but not a redirect.
    const REFUSAL_STATUS: u16 = 400;

    /// Starts the kind's emulator.
    fn start(options: EnvOptions) -> Self;

    /// Creates target `name` in `db` pointing at the emulator, with the
    /// rate limit of the options it was started with.
    fn create_target(&self, db: &TestDb, name: &str);

    /// Defines `definition` from table `source` to target `target`, into
    /// `container` (a list, a repository, ...); not provisioned, not enabled.
    fn define(&self, db: &TestDb, definition: &str, source: &str, target: &str, container: &str);

    /// Puts the kind's secret into a worker command's environment.
    fn add_secret<'a>(&self, cmd: &'a mut Command) -> &'a mut Command;

    /// The worker's `run` command for `db` (see [`run_cmd`]), with the secret.
    fn worker_cmd(&self, db: &TestDb, extra: &[&str]) -> Command {
        let mut c = run_cmd(db, extra);
        self.add_secret(&mut c);
        c
    }

    /// `run --once` (ingest, then export until nothing is left); returns the log.
    fn sync_once(&self, db: &TestDb) -> String {
        run_to_end(self.worker_cmd(db, &["--once"]))
    }

    /// The items in `container` by row key (panics on two items with one key).
    fn items(&self, container: &str) -> BTreeMap<String, Map<String, Value>>;

    /// How many items `container` holds (0 when it does not exist yet).
    fn count(&self, container: &str) -> usize;

    /// Asserts that the emulator holds exactly the mapped rows of
    /// `definition`, in its `containers`.
    fn assert_target_equals_source(&self, db: &TestDb, definition: &str, containers: &[&str]);

    /// Applies `fault` to the next `count` requests.
    fn inject(&self, fault: Fault, count: u32);

    /// Delays every request by `ms` milliseconds.
    fn set_latency(&self, ms: u64);

    /// Starts (`true`) or ends an outage: every connection dropped.
    fn set_down(&self, down: bool);

    /// Revokes every token issued so far (kinds with [`Self::EXPIRING_TOKENS`]).
    fn expire_tokens(&self);

    /// The emulator's counters.
    fn stats(&self) -> Stats;
}
