//! Standard Webhooks 1.0.0 verification, written apart from the worker's
//! signer on purpose: its own HMAC (RFC 2104 over `sha2`'s SHA-256, not the
//! `hmac` crate the signer uses), its own secret parsing and its own
//! constant-time comparison, so that a mistake in one is not repeated by the
//! other and a signature bug cannot pass its own test.
//!
//! A request verifies when its `webhook-timestamp` is within
//! [`TOLERANCE_SECS`] of now (either way) and ANY `v1,` entry of its
//! space-separated `webhook-signature` matches ANY configured secret.

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use sha2::{Digest, Sha256};

/// How far the timestamp may be from the receiver's clock (the
/// specification's suggestion, the reference library's constant).
pub const TOLERANCE_SECS: i64 = 5 * 60;

/// Why a request does not verify.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VerifyError {
    /// A required header is absent or empty.
    MissingHeader(&'static str),
    /// The id holds a `.` or a non-printable character.
    BadId,
    /// `webhook-timestamp` is not an integer of seconds.
    BadTimestamp,
    /// The timestamp is older than the tolerance.
    TooOld { age_secs: i64 },
    /// The timestamp is further in the future than the tolerance.
    TooNew { ahead_secs: i64 },
    /// No `v1,` entry in `webhook-signature`.
    NoV1Signature,
    /// `v1` entries, none matching.
    Mismatch,
}

impl std::fmt::Display for VerifyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::MissingHeader(h) => write!(f, "header {h} missing"),
            Self::BadId => f.write_str("webhook-id holds '.' or a non-printable character"),
            Self::BadTimestamp => f.write_str("webhook-timestamp is not integer seconds"),
            Self::TooOld { age_secs } => {
                write!(f, "webhook-timestamp is {age_secs} s old (tolerance {TOLERANCE_SECS} s)")
            }
            Self::TooNew { ahead_secs } => {
                write!(f, "webhook-timestamp is {ahead_secs} s ahead (tolerance {TOLERANCE_SECS} s)")
            }
            Self::NoV1Signature => f.write_str("webhook-signature has no v1 entry"),
            Self::Mismatch => f.write_str("no v1 signature matches"),
        }
    }
}

impl std::error::Error for VerifyError {}

/// HMAC-SHA256 (RFC 2104): `H((K ^ opad) || H((K ^ ipad) || message))`.
fn hmac_sha256(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    const BLOCK: usize = 64;
    let mut block = [0u8; BLOCK];
    if key.len() > BLOCK {
        block[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        block[..key.len()].copy_from_slice(key);
    }
    let mut inner = Sha256::new();
    inner.update(block.map(|b| b ^ 0x36));
    for part in parts {
        inner.update(part);
    }
    let inner = inner.finalize();
    let mut outer = Sha256::new();
    outer.update(block.map(|b| b ^ 0x5c));
    outer.update(inner);
    outer.finalize().into()
}

/// Equal lengths and equal bytes, in time independent of where they differ.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

/// Checks `webhook-*` headers against the secrets.
#[derive(Clone)]
pub struct Verifier {
    keys: Vec<Vec<u8>>,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Verifier({} keys)", self.keys.len())
    }
}

impl Verifier {
    /// A verifier for `whsec_<base64>` secrets. Err: which one is unusable.
    pub fn new<S: AsRef<str>>(secrets: &[S]) -> Result<Self, String> {
        let mut keys = Vec::new();
        for (i, secret) in secrets.iter().enumerate() {
            let encoded = secret
                .as_ref()
                .strip_prefix("whsec_")
                .ok_or_else(|| format!("secret #{} does not start with whsec_", i + 1))?;
            let key = STANDARD.decode(encoded).map_err(|_| format!("secret #{} is not base64", i + 1))?;
            if key.is_empty() {
                return Err(format!("secret #{} is empty", i + 1));
            }
            keys.push(key);
        }
        if keys.is_empty() {
            return Err("no secret".into());
        }
        Ok(Self { keys })
    }

    /// Verifies one request at `now` (Unix seconds). Ok: the index of the
    /// first secret that matched.
    pub fn verify(
        &self,
        id: Option<&str>,
        timestamp: Option<&str>,
        signature: Option<&str>,
        body: &[u8],
        now: i64,
    ) -> Result<usize, VerifyError> {
        let id = id.filter(|s| !s.is_empty()).ok_or(VerifyError::MissingHeader("webhook-id"))?;
        let timestamp = timestamp.filter(|s| !s.is_empty()).ok_or(VerifyError::MissingHeader("webhook-timestamp"))?;
        let signature = signature.filter(|s| !s.is_empty()).ok_or(VerifyError::MissingHeader("webhook-signature"))?;
        if !id.bytes().all(|b| b.is_ascii_graphic() && b != b'.') {
            return Err(VerifyError::BadId);
        }
        if !timestamp.bytes().all(|b| b.is_ascii_digit()) {
            return Err(VerifyError::BadTimestamp);
        }
        let ts: i64 = timestamp.parse().map_err(|_| VerifyError::BadTimestamp)?;
        if now - ts > TOLERANCE_SECS {
            return Err(VerifyError::TooOld { age_secs: now - ts });
        }
        if ts - now > TOLERANCE_SECS {
            return Err(VerifyError::TooNew { ahead_secs: ts - now });
        }
        let candidates: Vec<Vec<u8>> = signature
            .split(' ')
            .filter_map(|entry| entry.split_once(','))
            .filter(|(version, _)| *version == "v1")
            .filter_map(|(_, sig)| STANDARD.decode(sig).ok())
            .collect();
        if candidates.is_empty() {
            return Err(VerifyError::NoV1Signature);
        }
        // The timestamp as sent (its exact text is what was signed).
        let parts: [&[u8]; 5] = [id.as_bytes(), b".", timestamp.as_bytes(), b".", body];
        for (index, key) in self.keys.iter().enumerate() {
            let expected = hmac_sha256(key, &parts);
            let mut matched = false;
            for candidate in &candidates {
                matched |= constant_time_eq(&expected, candidate);
            }
            if matched {
                return Ok(index);
            }
        }
        Err(VerifyError::Mismatch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD";
    const ID: &str = "msg_27UH4WbU6Z5A5EzD8u03UvzRbpk";
    const TS: &str = "1649367553";
    const NOW: i64 = 1649367553;
    const BODY: &[u8] = br#"{"email":"test@example.com","username":"test_user"}"#;
    const SIG: &str = "v1,tZ1I4/hDygAJgO5TYxiSd6Sd0kDW6hPenDe+bTa3Kkw=";

    fn check(v: &Verifier, id: &str, ts: &str, sig: &str, body: &[u8], now: i64) -> Result<usize, VerifyError> {
        v.verify(Some(id), Some(ts), Some(sig), body, now)
    }

    #[test]
    fn hmac_matches_rfc_4231_cases_2_and_6() {
        let mac = hmac_sha256(b"Jefe", &[b"what do ya want ", b"for nothing?"]);
        let hex: String = mac.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(hex, "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843");
        // A key longer than a block is hashed first (RFC 4231 case 6).
        let mac = hmac_sha256(&[0xaa; 131], &[b"Test Using Larger Than Block-Size Key - Hash Key First"]);
        let hex: String = mac.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(hex, "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54");
    }

    #[test]
    fn published_test_vector_verifies() {
        let v = Verifier::new(&[SECRET]).unwrap();
        assert_eq!(check(&v, ID, TS, SIG, BODY, NOW), Ok(0));
        // Among other entries and versions, in any position.
        let list = format!("v1a,AAAA v1,dGFtcGVyZWQ= {SIG}");
        assert_eq!(check(&v, ID, TS, &list, BODY, NOW), Ok(0));
    }

    #[test]
    fn tampering_is_refused() {
        let v = Verifier::new(&[SECRET]).unwrap();
        let body2 = br#"{"email":"test@example.com","username":"test_user2"}"#;
        assert_eq!(check(&v, ID, TS, SIG, body2, NOW), Err(VerifyError::Mismatch));
        assert_eq!(check(&v, ID, TS, SIG, &BODY[..BODY.len() - 1], NOW), Err(VerifyError::Mismatch));
        assert_eq!(check(&v, "msg_27UH4WbU6Z5A5EzD8u03UvzRbpK", TS, SIG, BODY, NOW), Err(VerifyError::Mismatch));
        assert_eq!(check(&v, ID, "1649367554", SIG, BODY, NOW), Err(VerifyError::Mismatch));
        // The same value written differently was not what was signed.
        assert_eq!(check(&v, ID, "01649367553", SIG, BODY, NOW), Err(VerifyError::Mismatch));
        let flipped = SIG.replace("tZ1I", "tZ1J");
        assert_eq!(check(&v, ID, TS, &flipped, BODY, NOW), Err(VerifyError::Mismatch));
        let truncated = &SIG[..SIG.len() - 4];
        assert_eq!(check(&v, ID, TS, truncated, BODY, NOW), Err(VerifyError::Mismatch));
        let other = Verifier::new(&[format!("whsec_{}", STANDARD.encode([9u8; 24]))]).unwrap();
        assert_eq!(check(&other, ID, TS, SIG, BODY, NOW), Err(VerifyError::Mismatch));
        // Another version's tag on the right bytes is not a v1 signature.
        let v2 = SIG.replacen("v1,", "v2,", 1);
        assert_eq!(check(&v, ID, TS, &v2, BODY, NOW), Err(VerifyError::NoV1Signature));
    }

    #[test]
    fn timestamp_tolerance_is_five_minutes_each_way() {
        let v = Verifier::new(&[SECRET]).unwrap();
        assert_eq!(check(&v, ID, TS, SIG, BODY, NOW + 300), Ok(0));
        assert_eq!(check(&v, ID, TS, SIG, BODY, NOW - 300), Ok(0));
        assert_eq!(check(&v, ID, TS, SIG, BODY, NOW + 301), Err(VerifyError::TooOld { age_secs: 301 }));
        assert_eq!(check(&v, ID, TS, SIG, BODY, NOW - 301), Err(VerifyError::TooNew { ahead_secs: 301 }));
        for bad in ["-1649367553", "1649367553.0", "+1649367553", "x", "99999999999999999999"] {
            assert_eq!(check(&v, ID, bad, SIG, BODY, NOW), Err(VerifyError::BadTimestamp), "{bad}");
        }
    }

    #[test]
    fn several_secrets_and_signatures() {
        let second = format!("whsec_{}", STANDARD.encode([7u8; 32]));
        let only_second = Verifier::new(&[second.as_str()]).unwrap();
        let both = Verifier::new(&[second.as_str(), SECRET]).unwrap();
        assert_eq!(check(&both, ID, TS, SIG, BODY, NOW), Ok(1));
        assert_eq!(check(&only_second, ID, TS, SIG, BODY, NOW), Err(VerifyError::Mismatch));
        let mac =
            hmac_sha256(&STANDARD.decode(&second[6..]).unwrap(), &[ID.as_bytes(), b".", TS.as_bytes(), b".", BODY]);
        let rotated = format!("{SIG} v1,{}", STANDARD.encode(mac));
        assert_eq!(check(&only_second, ID, TS, &rotated, BODY, NOW), Ok(0));
    }

    #[test]
    fn missing_or_malformed_headers() {
        let v = Verifier::new(&[SECRET]).unwrap();
        assert_eq!(v.verify(None, Some(TS), Some(SIG), BODY, NOW), Err(VerifyError::MissingHeader("webhook-id")));
        assert_eq!(
            v.verify(Some(ID), Some(""), Some(SIG), BODY, NOW),
            Err(VerifyError::MissingHeader("webhook-timestamp"))
        );
        assert_eq!(v.verify(Some(ID), Some(TS), None, BODY, NOW), Err(VerifyError::MissingHeader("webhook-signature")));
        assert_eq!(check(&v, "msg.1", TS, SIG, BODY, NOW), Err(VerifyError::BadId));
        assert_eq!(
            check(&v, ID, TS, "tZ1I4/hDygAJgO5TYxiSd6Sd0kDW6hPenDe+bTa3Kkw=", BODY, NOW),
            Err(VerifyError::NoV1Signature)
        );
        assert!(Verifier::new(&["C2FVsBQIhrscChlQIMV+b5sSYspob7oD"]).is_err());
        assert!(Verifier::new(&["whsec_%%%"]).is_err());
        assert!(Verifier::new::<&str>(&[]).is_err());
    }
}
