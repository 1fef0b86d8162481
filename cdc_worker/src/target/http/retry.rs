//! Retry timing and reading answers: full-jitter backoff, one
//! `Retry-After` parser, bounded bodies, errors without URLs.

use std::time::Duration;

use serde_json::{Map, Value};

pub(crate) const BACKOFF_BASE: Duration = Duration::from_millis(500);
pub(crate) const BACKOFF_CAP: Duration = Duration::from_secs(30);
/// The longest pause a `Retry-After` may impose (longer ones are cut to it).
pub const MAX_PAUSE: Duration = Duration::from_secs(300);
/// The largest answer body read (a `$batch` of 20 answers is far smaller).
pub const MAX_BODY: usize = 32 << 20;

/// A `Retry-After` in seconds: a finite, non-negative number, capped at
/// [`MAX_PAUSE`]; anything else (`NaN`, `inf`, `-1`, an HTTP date) is None.
pub fn parse_retry_after(s: &str) -> Option<f64> {
    let secs = s.trim().parse::<f64>().ok().filter(|v| v.is_finite() && *v >= 0.0)?;
    Some(secs.min(MAX_PAUSE.as_secs_f64()))
}

pub fn retry_after_of(headers: &Map<String, Value>) -> Option<f64> {
    headers.iter().find(|(k, _)| k.eq_ignore_ascii_case("retry-after")).and_then(|(_, v)| match v {
        Value::String(s) => parse_retry_after(s),
        Value::Number(n) => n.as_f64().and_then(|f| parse_retry_after(&f.to_string())),
        _ => None,
    })
}

/// Waits until the shutdown watch turns true (true), or its sender is gone (false).
pub(crate) async fn stop_signalled(rx: &mut tokio::sync::watch::Receiver<bool>) -> bool {
    rx.wait_for(|s| *s).await.is_ok()
}

/// A body read up to `limit` bytes (Err: it broke off or was larger).
pub(crate) async fn read_body(mut resp: reqwest::Response, limit: usize) -> Result<String, String> {
    let mut buf: Vec<u8> = Vec::new();
    loop {
        match resp.chunk().await {
            Ok(Some(c)) => {
                if buf.len() + c.len() > limit {
                    return Err(format!("the answer is larger than {} MiB", limit >> 20));
                }
                buf.extend_from_slice(&c);
            }
            Ok(None) => return Ok(String::from_utf8_lossy(&buf).into_owned()),
            Err(e) => return Err(format!("the answer broke off: {}", without_url(&e))),
        }
    }
}

/// Capped exponential backoff with full jitter: a random delay in
/// [0, min(cap, base·2^attempt)].
pub fn backoff(attempt: u32) -> Duration {
    let ceiling = BACKOFF_BASE.saturating_mul(1u32 << attempt.min(16)).min(BACKOFF_CAP);
    ceiling.mul_f64(rand::random::<f64>())
}

/// A reqwest error without the URL (it may carry query strings).
pub(crate) fn without_url(e: &reqwest::Error) -> String {
    let mut msg = e.to_string();
    if let Some(u) = e.url() {
        msg = msg.replace(u.as_str(), "<url>");
    }
    let mut src = std::error::Error::source(e);
    while let Some(s) = src {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        src = s.source();
    }
    msg
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn hostile_retry_after_values_are_ignored_or_capped() {
        assert_eq!(parse_retry_after("2.5"), Some(2.5));
        assert_eq!(parse_retry_after(" 0 "), Some(0.0));
        assert_eq!(parse_retry_after("1e300"), Some(MAX_PAUSE.as_secs_f64()));
        for bad in ["NaN", "nan", "inf", "-inf", "-1", "", "Wed, 21 Oct 2015 07:28:00 GMT"] {
            assert_eq!(parse_retry_after(bad), None, "{bad}");
        }
        let mut h = Map::new();
        h.insert("Retry-After".into(), json!("NaN"));
        assert_eq!(retry_after_of(&h), None);
        h.insert("Retry-After".into(), json!(1e300));
        assert_eq!(retry_after_of(&h), Some(MAX_PAUSE.as_secs_f64()));
        h.insert("Retry-After".into(), json!(3));
        assert_eq!(retry_after_of(&h), Some(3.0));
    }

    #[test]
    fn backoff_is_capped_and_jittered() {
        for a in 0..40 {
            assert!(backoff(a) <= BACKOFF_CAP);
        }
        let samples: std::collections::HashSet<u128> = (0..20).map(|_| backoff(5).as_micros()).collect();
        assert!(samples.len() > 1, "no jitter");
    }
}
