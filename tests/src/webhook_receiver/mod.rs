//! A webhook receiver for the tests and the demo: verifies every request
//! with an implementation of its own ([`verify`]), never the worker's signer.

pub mod verify;

pub use verify::{Verifier, VerifyError, TOLERANCE_SECS};
