//! Generic signed webhooks (Standard Webhooks 1.0.0). Not yet wired into the
//! registry: for now only the signer ([`sign`]).

pub mod sign;

pub use sign::{SecretFormatError, SignError, Signer, SigningKey};
