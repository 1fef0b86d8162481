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

/// Words that name secrets in every API syncbridge talks to, as they read
/// once a key is normalized (see `normalize_key`).
const SECRET_KEY_WORDS: &[&str] = &[
    "secret",
    "password",
    "passwd",
    "passphrase",
    "pwd",
    "token",
    "apikey",
    "privatekey",
    "accesskey",
    "signingkey",
    "credential",
    "bearer",
    "cookie",
    "sessionid",
    "assertion",
];

/// Latin letters that Cyrillic and Greek letters are made to look like.
fn unconfuse(c: char) -> char {
    match c {
        'а' | 'α' => 'a',
        'в' | 'β' => 'b',
        'с' | 'ϲ' => 'c',
        'ԁ' => 'd',
        'е' | 'ε' => 'e',
        'һ' => 'h',
        'і' | 'ι' | 'ӏ' => 'i',
        'ј' => 'j',
        'к' | 'κ' => 'k',
        'м' => 'm',
        'п' | 'η' => 'n',
        'о' | 'ο' | 'σ' => 'o',
        'р' | 'ρ' => 'p',
        'ԛ' => 'q',
        'ѕ' => 's',
        'т' | 'τ' => 't',
        'υ' | 'ս' => 'u',
        'ѵ' | 'ν' => 'v',
        'ԝ' | 'ω' => 'w',
        'х' | 'χ' => 'x',
        'у' | 'γ' => 'y',
        other => other,
    }
}

/// A key as a person reads it: compatibility-normalized (fullwidth letters
/// become ASCII), invisible characters dropped, look-alike letters mapped to
/// Latin, lower-cased, only letters and digits kept.
fn normalize_key(key: &str) -> String {
    use unicode_normalization::UnicodeNormalization;
    key.nfkc().flat_map(char::to_lowercase).map(unconfuse).filter(|c| c.is_alphanumeric()).collect()
}

fn is_secret_key(key: &str) -> bool {
    let k = normalize_key(key);
    SECRET_KEY_WORDS.iter().any(|w| k.contains(w))
}

/// A key named like a secret anywhere inside a nested value.
fn nested_secret_key(v: &serde_json::Value) -> Option<String> {
    match v {
        serde_json::Value::Object(map) => {
            map.iter().find_map(|(k, inner)| if is_secret_key(k) { Some(k.clone()) } else { nested_secret_key(inner) })
        }
        serde_json::Value::Array(items) => items.iter().find_map(nested_secret_key),
        _ => None,
    }
}

/// Looks through a configuration object for secrets: a key named like a
/// secret, whatever its value (a reference goes to `secret =>`, not config),
/// however it is spelled; values are scalars (nothing can hide in a nested
/// object).
pub fn check_config(config: &serde_json::Value) -> Result<(), SyncError> {
    let serde_json::Value::Object(map) = config else {
        return Err(SyncError::BadConfig { key: None, reason: "the configuration is not a JSON object".into() });
    };
    for (k, v) in map {
        if is_secret_key(k) {
            return Err(SyncError::SecretInConfig { key: k.clone() });
        }
        if normalize_key(k) != k.to_ascii_lowercase().replace(['_', '-'], "") || !k.is_ascii() {
            return Err(SyncError::BadConfig {
                key: Some(k.clone()),
                reason: "configuration keys are plain ASCII names (letters, digits, _)".into(),
            });
        }
        if v.is_object() || v.is_array() {
            if let Some(hidden) = nested_secret_key(v) {
                return Err(SyncError::SecretInConfig { key: hidden });
            }
            return Err(SyncError::BadConfig {
                key: Some(k.clone()),
                reason: "configuration values are strings, numbers or booleans, not objects or arrays".into(),
            });
        }
    }
    Ok(())
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
        let ok = serde_json::json!({"tenant_id": "t", "client_id": "c", "site_id": "s", "budget_per_min": 1250,
                                    "authority_url": "https://login.microsoftonline.com", "project_key": "HR"});
        assert!(check_config(&ok).is_ok());
        for key in [
            "client_secret",
            "Password",
            "api-key",
            "accessToken",
            "private_key",
            // Cyrillic с and е, fullwidth letters, a zero-width space, a Greek omicron
            "\u{0441}lient_s\u{0435}cret",
            "ｃｌｉｅｎｔ＿ｓｅｃｒｅｔ",
            "client_sec\u{200b}ret",
            "t\u{03bf}ken",
            "PASS-WORD",
        ] {
            let bad = serde_json::json!({ key: "v" });
            assert!(matches!(check_config(&bad), Err(SyncError::SecretInConfig { .. })), "{key}");
        }
    }

    #[test]
    fn config_values_are_flat_and_keys_plain() {
        for bad in [
            serde_json::json!({"tenant_id": {"client_secret": "x"}}),
            serde_json::json!({"tenant_id": ["a"]}),
            serde_json::json!({"tenant\u{200b}_id": "t"}),
            serde_json::json!("not an object"),
        ] {
            assert!(
                matches!(check_config(&bad), Err(SyncError::BadConfig { .. } | SyncError::SecretInConfig { .. })),
                "{bad}"
            );
        }
    }
}
