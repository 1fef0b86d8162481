//! Generic signed webhooks (Standard Webhooks 1.0.0): each export is an
//! event `POST`ed to one URL. Design note; only the signer ([`sign`]) is
//! built so far, and the kind is not yet in the registry.
//!
//! # Request
//! - `POST {url}`, `content-type: application/json`, and the Standard
//!   Webhooks headers: `webhook-id`, `webhook-timestamp` (Unix seconds of
//!   *this attempt*), `webhook-signature` ([`sign::Signer`]: `v1,<base64>`
//!   per secret, space-separated).
//! - `webhook-id` is `sb_<export id>` (a batch: `sb_<first>-<last>`, see
//!   below): the same across every retry of the export, so the receiver can
//!   de-duplicate on it; never contains `.`.
//! - The secret is given by reference (`env:`/`file:`, [`super::TargetPolicy`]);
//!   its value is one or more `whsec_` secrets separated by spaces, commas
//!   or newlines (rotation: add the new one, let receivers switch, remove
//!   the old). Every secret signs every request; the signature is computed
//!   over the exact bytes sent, never over a re-serialisation.
//! - Redirects are not followed; the request timeout is 15 s (the
//!   specification asks for 15 to 30).
//!
//! # Payload
//! ```json
//! {
//!   "type": "people.updated",
//!   "timestamp": "2025-05-01T12:00:00Z",
//!   "data": {
//!     "definition": "people",
//!     "op": "updated",
//!     "key": {"id": 42},
//!     "fields": {"name": "Ada", "team": "core"},
//!     "previous": {"team": "infra"},
//!     "container": "core",
//!     "from_container": null,
//!     "source": {"lsn": "0/16B3748", "run": null}
//!   }
//! }
//! ```
//! - `type` is `<definition>.created|updated|deleted|moved` ([`super::Op`]
//!   `Add`, `Update`, `Delete`, `Move`; `Provision` sends nothing and is done
//!   at once). `timestamp` is when the change was staged, not the attempt.
//! - `key`: the row's key columns; `fields`: the new values the definition
//!   maps (absent for `deleted`); `previous`: the old values of the fields
//!   that changed, for `updated` only (what the extension staged; `null`
//!   when it has none, e.g. after a full resync); `container`/`from_container`
//!   for a shard move (`moved`).
//! - `source`: the WAL position (`lsn`) of the change, or the full sync /
//!   resync `run` it came from. The payload is built by the extension
//!   (the worker carries it; it adds only the envelope).
//!
//! # Ordering and concurrency
//! Events of one key go in order: an export is not sent while an earlier
//! export of the same `(definition, sync_key)` is unsent or failed and
//! waiting (the claim already hands out one export per key at a time).
//! Events of different keys go in parallel, at most `concurrency` requests
//! at once (default 4, a target setting), within the requests-a-minute
//! budget of `target/http`.
//!
//! # Answers (the specification's rules)
//! - Any `2xx`: delivered (`done`); the body is ignored.
//! - `3xx`: a failure, not followed: [`super::ErrorClass::Definite`] with the
//!   `Location` in the message (a moved endpoint is a configuration change).
//! - `410 Gone`: the receiver asks to be disabled. The target's health turns
//!   `failing` with a `status` message saying so, the exporter claims
//!   nothing more for it (the queue waits; nothing is dropped or counted as
//!   an attempt), and `probe` keeps failing until an operator re-enables
//!   it (`sync.alter_target(..., enabled => true)`); then everything queued
//!   goes out once, with its original `webhook-id`.
//! - `429`, `502`, `504`, and any status with `Retry-After`: throttled: the
//!   target pauses (`Retry-After`, capped by `target/http`'s `MAX_PAUSE`,
//!   else backoff) and the attempt is not the export's fault.
//! - `401`/`403`: `Auth` (the receiver does not accept our secret).
//! - Everything else, timeouts and connection errors: `Transient`, retried
//!   with the extension's backoff until `max_attempts`, then reported.
//!
//! # Batching (optional)
//! `batch_max_events` (default 1: one event per request) and
//! `batch_max_bytes` (default 256 KiB): the body is a JSON array of events
//! in claim order, closed at whichever limit comes first (an event larger
//! than the byte limit goes alone). One answer covers the batch: every
//! export in it gets the same result. A batch never holds two events of one
//! key, so per-key order holds across batches.

pub mod sign;

pub use sign::{SecretFormatError, SignError, Signer, SigningKey};
