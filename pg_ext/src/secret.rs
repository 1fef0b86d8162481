//! Secrets are references, never values: `env:NAME` or `file:/path`.

use pgrx::prelude::*;
use pgrx::JsonB;

use crate::error::SyncError;

/// Checks a secret reference; returns it unchanged when valid.
pub fn check_secret_ref(s: &str) -> Result<&str, SyncError> {
    if let Some(name) = s.strip_prefix("env:") {
        let mut chars = name.chars();
        let first_ok = chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_');
        if first_ok && chars.all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Ok(s);
        }
        return Err(SyncError::BadSecretRef { given: s.to_owned() });
    }
    if let Some(path) = s.strip_prefix("file:") {
        if path.starts_with('/') && path.len() > 1 && !path.chars().any(char::is_control) {
            return Ok(s);
        }
        return Err(SyncError::BadSecretRef { given: s.to_owned() });
    }
    if looks_like_a_scheme(s) {
        Err(SyncError::BadSecretRef { given: s.to_owned() })
    } else {
        Err(SyncError::InlineSecret { what: "the secret argument takes env:NAME or file:/path".into() })
    }
}

/// `vault:…`, `aws:…`: a reference syntax we do not know (yet), not a secret.
fn looks_like_a_scheme(s: &str) -> bool {
    match s.split_once(':') {
        Some((scheme, rest)) => {
            !scheme.is_empty()
                && scheme.len() <= 10
                && scheme.chars().all(|c| c.is_ascii_lowercase())
                && !rest.is_empty()
                && !rest.contains(char::is_whitespace)
        }
        None => false,
    }
}

/// Key names that hold secrets in every API syncbridge talks to.
const SECRET_KEY_WORDS: &[&str] =
    &["secret", "password", "passwd", "token", "apikey", "api_key", "private_key", "privatekey", "credential"];

fn is_secret_key(key: &str) -> bool {
    let k = key.to_ascii_lowercase().replace('-', "_");
    SECRET_KEY_WORDS.iter().any(|w| k.contains(w))
}

/// Looks through a configuration object for secrets: a key named like a
/// secret, whatever its value (a reference goes to `secret =>`, not config).
pub fn check_config(config: &serde_json::Value) -> Result<(), SyncError> {
    match config {
        serde_json::Value::Object(map) => {
            for (k, v) in map {
                if is_secret_key(k) {
                    return Err(SyncError::SecretInConfig { key: k.clone() });
                }
                check_config(v)?;
            }
            Ok(())
        }
        serde_json::Value::Array(items) => items.iter().try_for_each(check_config),
        _ => Ok(()),
    }
}

/// `sync._check_secret_ref(ref)`: raises unless `ref` is a valid secret reference.
#[pg_extern(immutable, parallel_safe, name = "_check_secret_ref")]
pub fn check_secret_ref_sql(secret: &str) -> String {
    match check_secret_ref(secret) {
        Ok(s) => s.to_owned(),
        Err(e) => e.raise(),
    }
}

/// `sync._check_config(config)`: raises if the configuration holds a secret.
#[pg_extern(immutable, parallel_safe, name = "_check_config")]
pub fn check_config_sql(config: JsonB) -> bool {
    match check_config(&config.0) {
        Ok(()) => true,
        Err(e) => e.raise(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_pass() {
        assert!(check_secret_ref("env:SP_CLIENT_SECRET").is_ok());
        assert!(check_secret_ref("env:_x1").is_ok());
        assert!(check_secret_ref("file:/run/secrets/sp").is_ok());
    }

    #[test]
    fn inline_secrets_and_bad_references_fail() {
        assert!(matches!(check_secret_ref("Xy7~q8Q~abcdefghijklmnop"), Err(SyncError::InlineSecret { .. })));
        assert!(matches!(check_secret_ref("hunter2"), Err(SyncError::InlineSecret { .. })));
        assert!(matches!(check_secret_ref("env:"), Err(SyncError::BadSecretRef { .. })));
        assert!(matches!(check_secret_ref("env:1ABC"), Err(SyncError::BadSecretRef { .. })));
        assert!(matches!(check_secret_ref("env:A B"), Err(SyncError::BadSecretRef { .. })));
        assert!(matches!(check_secret_ref("file:relative"), Err(SyncError::BadSecretRef { .. })));
        assert!(matches!(check_secret_ref("vault:kv/sp"), Err(SyncError::BadSecretRef { .. })));
    }

    #[test]
    fn config_with_secret_keys_fails() {
        let ok = serde_json::json!({"tenant_id": "t", "client_id": "c", "nested": [{"site_id": "s"}]});
        assert!(check_config(&ok).is_ok());
        for key in ["client_secret", "Password", "api-key", "accessToken", "private_key"] {
            let bad = serde_json::json!({ "x": { key: "v" } });
            assert!(matches!(check_config(&bad), Err(SyncError::SecretInConfig { .. })), "{key}");
        }
    }
}
