//! OAuth2 client credentials: the token cache every adapter that signs in
//! with a client id and secret shares (Microsoft Entra for Graph).

use std::time::{Duration, Instant};

use serde_json::Value;

use super::retry::{read_body, without_url};
use super::{Failure, HttpClient, MAX_CODE_CHARS, MAX_MESSAGE_CHARS};
use crate::target::policy::bounded;
use crate::target::{ErrorClass, Health, Redactor};

const TOKEN_MARGIN: Duration = Duration::from_secs(300);
/// The longest a token is kept, whatever `expires_in` says (Entra issues
/// tokens for about an hour; a 401 renews one early anyway).
pub(crate) const MAX_TOKEN_LIFE: Duration = Duration::from_secs(24 * 3600);

pub(crate) struct Token {
    value: String,
    refresh_at: Instant,
}

/// Where and how to get tokens, and the one cached.
pub struct ClientCredentials {
    /// The token endpoint.
    pub(crate) token_url: String,
    pub(crate) client_id: String,
    pub(crate) secret: String,
    /// The scope asked for (`https://graph.microsoft.com/.default`).
    pub(crate) scope: String,
    pub(crate) token: tokio::sync::Mutex<Option<Token>>,
}

/// How an API's requests are signed.
pub enum Auth {
    /// OAuth2 client credentials: a bearer token, renewed before it expires
    /// and once on a 401.
    ClientCredentials(ClientCredentials),
    /// A fixed `Authorization` header (Jira's `Basic base64(email:api_token)`,
    /// an API key): nothing to renew, so a 401 is final.
    Fixed {
        /// The header's whole value.
        header: String,
        /// The secret it carries (redacted from every message, as is the header).
        secret: String,
    },
    /// No `Authorization` header: the adapter signs each request itself
    /// (webhooks: an HMAC of the body); the secrets are only redacted.
    Signed {
        /// The signing secrets (redacted from every message).
        secrets: Vec<String>,
    },
}

impl From<ClientCredentials> for Auth {
    fn from(c: ClientCredentials) -> Self {
        Auth::ClientCredentials(c)
    }
}

impl Auth {
    /// What messages must never show.
    pub(crate) fn secrets(&self) -> Vec<&str> {
        match self {
            Auth::ClientCredentials(c) => vec![c.secret.as_str()],
            Auth::Fixed { header, secret } => {
                let encoded = header.split_once(' ').map_or(header.as_str(), |(_, v)| v);
                vec![secret.as_str(), header.as_str(), encoded]
            }
            Auth::Signed { secrets } => secrets.iter().map(String::as_str).collect(),
        }
    }

    /// Whether a 401 can be mended by asking for a new token.
    pub(crate) fn renewable(&self) -> bool {
        matches!(self, Auth::ClientCredentials(_))
    }
}

impl ClientCredentials {
    /// Credentials for `token_url`; no token yet.
    pub fn new(token_url: String, client_id: String, secret: String, scope: &str) -> Self {
        Self { token_url, client_id, secret, scope: scope.to_owned(), token: tokio::sync::Mutex::new(None) }
    }
}

/// The token endpoint's refusal `{"error", "error_description"}`: those two
/// only (never the rest of the body: an echoing endpoint returns what it was
/// sent, the secret included).
fn token_envelope(text: &str) -> Option<(String, String)> {
    let v: Value = serde_json::from_str(text).ok()?;
    let code = v.get("error")?.as_str()?;
    let description = v.get("error_description").and_then(Value::as_str).unwrap_or("");
    Some((code.to_owned(), description.to_owned()))
}

/// When a token with `expires_in` seconds of life should be renewed:
/// five minutes early (at half its life for short ones), never later than
/// [`MAX_TOKEN_LIFE`], without overflowing.
pub(crate) fn refresh_at(now: Instant, expires_in: u64) -> Instant {
    let life = Duration::from_secs(expires_in).min(MAX_TOKEN_LIFE);
    let after = life.saturating_sub(TOKEN_MARGIN).max(life / 2);
    now.checked_add(after).unwrap_or(now)
}

impl HttpClient {
    /// The `Authorization` header of the next request: the fixed one, or
    /// `Bearer` and a token (see [`Self::token`]).
    pub(crate) async fn authorization(&self, force: bool) -> Result<String, Failure> {
        match &self.auth {
            Auth::Fixed { header, .. } => Ok(header.clone()),
            Auth::ClientCredentials(_) => Ok(format!("Bearer {}", self.token(force).await?)),
            Auth::Signed { .. } => Err(Failure {
                class: ErrorClass::Definite,
                message: format!("{} requests are signed one by one, not authorized by a header", self.service),
                retry_after: None,
                sent: false,
            }),
        }
    }

    /// A token: the cached one, or (when `force`, or near its expiry) a new
    /// one from the token endpoint.
    pub(crate) async fn token(&self, force: bool) -> Result<String, Failure> {
        let Auth::ClientCredentials(auth) = &self.auth else {
            return Err(Failure {
                class: ErrorClass::Definite,
                message: format!("{} takes no OAuth2 token", self.service),
                retry_after: None,
                sent: false,
            });
        };
        let mut guard = auth.token.lock().await;
        if !force {
            if let Some(t) = guard.as_ref().filter(|t| Instant::now() < t.refresh_at) {
                return Ok(t.value.clone());
            }
        }
        let form = [
            ("grant_type", "client_credentials"),
            ("client_id", auth.client_id.as_str()),
            ("client_secret", auth.secret.as_str()),
            ("scope", auth.scope.as_str()),
        ];
        let resp = self.http.post(&auth.token_url).form(&form).send().await.map_err(|e| {
            crate::metrics::TARGET_REQUEST_ERRORS.inc(&[&self.name, "token"]);
            let message = format!("token endpoint unreachable: {}", without_url(&e));
            self.set_health(Health::Unreachable, message.clone());
            Failure { class: ErrorClass::Transient, message, retry_after: None, sent: false }
        })?;
        let status = resp.status();
        // (A token endpoint's 429 is not the API's: it pauses nothing.)
        crate::metrics::TARGET_REQUESTS.inc(&[&self.name, "token", &crate::metrics::code_label(status.as_u16())]);
        let text = read_body(resp, 1 << 20).await.map_err(|reason| {
            let message = format!("token endpoint: {reason}");
            self.set_health(Health::Unreachable, message.clone());
            Failure { class: ErrorClass::Transient, message, retry_after: None, sent: false }
        })?;
        if !status.is_success() {
            // Only `error` and `error_description` of a JSON refusal, redacted
            // and bounded: never the rest of the body.
            let detail = match token_envelope(&text) {
                Some((code, description)) => format!(
                    ": {}: {}",
                    bounded(&self.redact(&code), MAX_CODE_CHARS),
                    bounded(&self.redact(&description), MAX_MESSAGE_CHARS)
                ),
                None => String::new(),
            };
            let msg = format!("token request refused (HTTP {}){detail}", status.as_u16());
            let health = if status.is_server_error() { Health::Unreachable } else { Health::AuthFailed };
            self.set_health(health, msg.clone());
            // Wrong credentials do not mend themselves; a 5xx may.
            let class = if status.is_server_error() { ErrorClass::Transient } else { ErrorClass::Definite };
            return Err(Failure { class, message: self.redact(&msg), retry_after: None, sent: false });
        }
        let body: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        let expires = body.get("expires_in").and_then(|v| v.as_u64().or_else(|| v.as_str()?.trim().parse().ok()));
        let (Some(value), Some(expires)) = (body.get("access_token").and_then(Value::as_str), expires) else {
            return Err(Failure {
                class: ErrorClass::Transient,
                message: "the token endpoint answered without access_token/expires_in".into(),
                retry_after: None,
                sent: false,
            });
        };
        // The secret, this token and the one before it (a message about a
        // request sent with it may still come).
        let mut redactor = Redactor::new([auth.secret.as_str(), value]);
        if let Some(old) = guard.as_ref() {
            redactor.add(&old.value);
        }
        *self.redactor.lock().unwrap_or_else(|p| p.into_inner()) = redactor;
        *guard = Some(Token { value: value.to_owned(), refresh_at: refresh_at(Instant::now(), expires) });
        tracing::debug!(target = %self.name, expires_in = expires, "acquired a {} token", self.service);
        Ok(value.to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_huge_expires_in_does_not_overflow() {
        let now = Instant::now();
        let at = refresh_at(now, u64::MAX);
        assert!(at > now && at <= now + MAX_TOKEN_LIFE);
        assert_eq!(refresh_at(now, 3600), now + Duration::from_secs(3300));
        assert_eq!(refresh_at(now, 60), now + Duration::from_secs(30));
        assert_eq!(refresh_at(now, 0), now);
    }
}
