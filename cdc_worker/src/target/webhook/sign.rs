//! The Standard Webhooks 1.0.0 symmetric signature (`v1`).
//!
//! - A secret is `whsec_` followed by the standard base64 (with padding) of
//!   24 to 64 random bytes; the HMAC key is the decoded bytes. The prefix is
//!   required (the reference library also takes the bare base64): a value
//!   without it is far more often a pasted token of some other kind than a
//!   webhook secret, and refusing it early gives a clearer error.
//! - The signed content is `"{webhook-id}.{webhook-timestamp}.{body}"`, the
//!   body being the exact bytes sent (never re-serialised); the id and the
//!   timestamp may not contain `.`.
//! - `webhook-signature` is `v1,<base64(HMAC-SHA256(key, content))>`; with
//!   several secrets (rotation) every one signs and the header is the
//!   space-separated list, in the order the secrets were given.
//!
//! A secret never appears in an error, a `Debug` output or a log.

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

/// What every secret starts with.
pub const SECRET_PREFIX: &str = "whsec_";
/// The version tag of the symmetric scheme.
pub const VERSION: &str = "v1";
/// The shortest key accepted, in bytes (the specification: 24 to 64).
pub const MIN_KEY_BYTES: usize = 24;
/// The longest key accepted, in bytes.
pub const MAX_KEY_BYTES: usize = 64;
/// The most secrets signing at once (rotation needs two; a few more are
/// tolerated, each adds a signature to every request).
pub const MAX_SECRETS: usize = 4;

/// Why a secret is not a usable `whsec_` secret. Never holds the secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecretFormatError {
    /// Nothing was given.
    #[error("the webhook secret is empty")]
    Empty,
    /// The value does not start with `whsec_`.
    #[error("a webhook secret starts with \"whsec_\" (Standard Webhooks); this one does not")]
    MissingPrefix,
    /// The part after the prefix is not standard base64.
    #[error(
        "the part of webhook secret #{index} after \"whsec_\" is not standard base64 (A-Z a-z 0-9 + / with = padding)"
    )]
    NotBase64 {
        /// Which secret of the list (1-based).
        index: usize,
    },
    /// The decoded key is too short or too long.
    #[error("webhook secret #{index} decodes to {len} bytes; Standard Webhooks keys are {MIN_KEY_BYTES} to {MAX_KEY_BYTES} random bytes")]
    BadLength {
        /// Which secret of the list (1-based).
        index: usize,
        /// The decoded length.
        len: usize,
    },
    /// More secrets than [`MAX_SECRETS`].
    #[error("{count} webhook secrets given; at most {MAX_SECRETS} may sign at once")]
    TooMany {
        /// How many were given.
        count: usize,
    },
}

/// Why a request could not be signed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignError {
    /// The message id is empty, holds a `.` or is not printable ASCII.
    #[error("a webhook id must be non-empty printable ASCII without '.' or spaces")]
    BadId,
}

/// One HMAC key, decoded from a `whsec_` secret. Its `Debug` hides the key.
#[derive(Clone)]
pub struct SigningKey {
    key: Vec<u8>,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SigningKey({} bytes, redacted)", self.key.len())
    }
}

impl SigningKey {
    /// Decodes one `whsec_<base64>` secret (surrounding whitespace ignored).
    pub fn parse(secret: &str) -> Result<Self, SecretFormatError> {
        Self::parse_nth(secret, 1)
    }

    fn parse_nth(secret: &str, index: usize) -> Result<Self, SecretFormatError> {
        let secret = secret.trim();
        if secret.is_empty() {
            return Err(SecretFormatError::Empty);
        }
        let encoded = secret.strip_prefix(SECRET_PREFIX).ok_or(SecretFormatError::MissingPrefix)?;
        // The decoder's own error names the offending byte: not passed on.
        let key = STANDARD.decode(encoded).map_err(|_| SecretFormatError::NotBase64 { index })?;
        if !(MIN_KEY_BYTES..=MAX_KEY_BYTES).contains(&key.len()) {
            return Err(SecretFormatError::BadLength { index, len: key.len() });
        }
        Ok(Self { key })
    }

    /// `base64(HMAC-SHA256(key, "{id}.{timestamp}.{body}"))`, unchecked id.
    fn signature(&self, id: &str, timestamp: i64, body: &[u8]) -> String {
        let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(&self.key).expect("HMAC takes a key of any length");
        mac.update(id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        STANDARD.encode(mac.finalize().into_bytes())
    }
}

/// Signs requests with one or more keys (several during a rotation).
#[derive(Debug, Clone)]
pub struct Signer {
    keys: Vec<SigningKey>,
}

impl Signer {
    /// A signer from a resolved secret value: one or more `whsec_` secrets
    /// separated by spaces, commas or newlines (base64 has none of these).
    pub fn from_secret_list(value: &str) -> Result<Self, SecretFormatError> {
        let parts: Vec<&str> = value.split(|c: char| c == ',' || c.is_whitespace()).filter(|s| !s.is_empty()).collect();
        Self::new(&parts)
    }

    /// A signer from separate secrets, in the order their signatures go out.
    pub fn new(secrets: &[&str]) -> Result<Self, SecretFormatError> {
        if secrets.is_empty() {
            return Err(SecretFormatError::Empty);
        }
        if secrets.len() > MAX_SECRETS {
            return Err(SecretFormatError::TooMany { count: secrets.len() });
        }
        let keys =
            secrets.iter().enumerate().map(|(i, s)| SigningKey::parse_nth(s, i + 1)).collect::<Result<Vec<_>, _>>()?;
        Ok(Self { keys })
    }

    /// How many keys sign.
    pub fn key_count(&self) -> usize {
        self.keys.len()
    }

    /// The `webhook-signature` header value for this attempt: `v1,<sig>`
    /// per key, space-separated. `timestamp` is the attempt's Unix seconds
    /// (the `webhook-timestamp` header), `body` the exact bytes sent.
    pub fn sign(&self, id: &str, timestamp: i64, body: &[u8]) -> Result<String, SignError> {
        if id.is_empty() || !id.bytes().all(|b| b.is_ascii_graphic() && b != b'.') {
            return Err(SignError::BadId);
        }
        let mut header = String::new();
        for key in &self.keys {
            if !header.is_empty() {
                header.push(' ');
            }
            header.push_str(VERSION);
            header.push(',');
            header.push_str(&key.signature(id, timestamp, body));
        }
        Ok(header)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // The specification's published vector (standard-webhooks reference
    // tests; see shared/facts/targets.md section 4).
    const SECRET: &str = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD";
    const ID: &str = "msg_27UH4WbU6Z5A5EzD8u03UvzRbpk";
    const TS: i64 = 1649367553;
    const BODY: &[u8] = br#"{"email":"test@example.com","username":"test_user"}"#;
    const EXPECTED: &str = "v1,tZ1I4/hDygAJgO5TYxiSd6Sd0kDW6hPenDe+bTa3Kkw=";

    /// A check written apart from `sign`: recomputes one MAC with `hmac`'s
    /// own verification (constant time) over the decoded signature.
    fn verifies(secret: &str, id: &str, ts: i64, body: &[u8], entry: &str) -> bool {
        let key = STANDARD.decode(secret.strip_prefix("whsec_").unwrap()).unwrap();
        let Some(sig) = entry.strip_prefix("v1,") else { return false };
        let Ok(sig) = STANDARD.decode(sig) else { return false };
        let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(&key).unwrap();
        mac.update(format!("{id}.{ts}.").as_bytes());
        mac.update(body);
        mac.verify_slice(&sig).is_ok()
    }

    #[test]
    fn published_test_vector() {
        let signer = Signer::new(&[SECRET]).unwrap();
        assert_eq!(signer.sign(ID, TS, BODY).unwrap(), EXPECTED);
        assert_eq!(SigningKey::parse(SECRET).unwrap().key.len(), 24);
    }

    #[test]
    fn any_change_changes_the_signature() {
        let signer = Signer::new(&[SECRET]).unwrap();
        assert_ne!(signer.sign(ID, TS + 1, BODY).unwrap(), EXPECTED);
        assert_ne!(signer.sign("msg_other", TS, BODY).unwrap(), EXPECTED);
        assert_ne!(signer.sign(ID, TS, br#"{"email":"test@example.com","username":"test_user2"}"#).unwrap(), EXPECTED);
    }

    #[test]
    fn rotation_signs_with_every_secret() {
        let second = format!("whsec_{}", STANDARD.encode([7u8; 32]));
        let signer = Signer::from_secret_list(&format!("{SECRET}, {second}\n")).unwrap();
        assert_eq!(signer.key_count(), 2);
        let header = signer.sign(ID, TS, BODY).unwrap();
        let entries: Vec<&str> = header.split(' ').collect();
        assert_eq!(entries.len(), 2, "{header}");
        assert_eq!(entries[0], EXPECTED);
        assert_ne!(entries[0], entries[1]);
        assert!(verifies(SECRET, ID, TS, BODY, entries[0]));
        assert!(verifies(&second, ID, TS, BODY, entries[1]));
        assert!(!verifies(SECRET, ID, TS, BODY, entries[1]));
        assert!(!verifies(&second, ID, TS, BODY, entries[0]));
    }

    #[test]
    fn malformed_secrets_are_refused_without_showing_them() {
        let cases: &[(&str, SecretFormatError)] = &[
            ("", SecretFormatError::Empty),
            ("   ", SecretFormatError::Empty),
            ("C2FVsBQIhrscChlQIMV+b5sSYspob7oD", SecretFormatError::MissingPrefix),
            ("whsk_C2FVsBQIhrscChlQIMV+b5sSYspob7oD", SecretFormatError::MissingPrefix),
            ("whsec_C2FVsBQIhrsc!hlQIMV+b5sSYspob7oD", SecretFormatError::NotBase64 { index: 1 }),
            ("whsec_C2FVsBQIhrscChlQIMV-b5sSYspob7oD", SecretFormatError::NotBase64 { index: 1 }),
            ("whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7o", SecretFormatError::NotBase64 { index: 1 }),
            ("whsec_", SecretFormatError::BadLength { index: 1, len: 0 }),
            ("whsec_c2VjcmV0", SecretFormatError::BadLength { index: 1, len: 6 }),
        ];
        for (secret, expected) in cases {
            let err = SigningKey::parse(secret).unwrap_err();
            assert_eq!(&err, expected, "{secret:?}");
            let shown = err.to_string();
            let body = secret.trim().trim_start_matches("whsec_");
            assert!(body.len() < 4 || !shown.contains(body), "{shown}");
        }
        let long = format!("whsec_{}", STANDARD.encode([1u8; 65]));
        assert_eq!(SigningKey::parse(&long).unwrap_err(), SecretFormatError::BadLength { index: 1, len: 65 });
        // The second of a list is named by its position.
        let err = Signer::new(&[SECRET, "whsec_%%%%"]).unwrap_err();
        assert_eq!(err, SecretFormatError::NotBase64 { index: 2 });
        assert_eq!(Signer::new(&[]).unwrap_err(), SecretFormatError::Empty);
        assert_eq!(Signer::new(&[SECRET; 5]).unwrap_err(), SecretFormatError::TooMany { count: 5 });
        // Debug hides the key.
        let shown = format!("{:?}", Signer::new(&[SECRET]).unwrap());
        assert!(!shown.contains("C2FV") && shown.contains("redacted"), "{shown}");
    }

    #[test]
    fn bad_ids_are_refused() {
        let signer = Signer::new(&[SECRET]).unwrap();
        for id in ["", "msg.1", "msg 1", "msg\n1", "msg_é"] {
            assert_eq!(signer.sign(id, TS, BODY), Err(SignError::BadId), "{id:?}");
        }
    }
}
