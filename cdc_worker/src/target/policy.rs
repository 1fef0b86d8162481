//! What a target may make the worker read and reach, under a policy given to
//! the worker on its own command line (or environment): the database, and
//! so a `syncbridge_admin`, cannot widen it.
//!
//! - `file:/path` secrets: only a regular file below `--secrets-dir`
//!   (default `/etc/syncbridge/secrets`), reached without `..`, not through
//!   a symbolic link leading out of the directory, at most 64 KiB, opened
//!   with `O_NOFOLLOW | O_NONBLOCK` (a FIFO never blocks: it is refused).
//! - `env:NAME` secrets: only variables named `SYNCBRIDGE_SECRET_*`; any
//!   other variable (`PGPASSWORD`, `HOME`, …) is refused without being read.
//! - `base_url` / `authority_url`: `https` to Microsoft's endpoints (global
//!   and national clouds) or to a host given with `--allow-target-host`;
//!   loopback (127.0.0.0/8, `localhost`, `[::1]`, `http` too) only with
//!   `--allow-loopback-targets`. No user info, query or fragment.
//!
//! And a [`Redactor`]: every message bound for the database or a log
//! passes through it, so that a secret or a token an answer echoes (raw,
//! URL-, form- or JSON-encoded) comes out as `[redacted]`.

use std::io::Read;
use std::net::IpAddr;
use std::path::{Component, Path, PathBuf};

use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};

/// The prefix an environment variable must have to be read as a secret.
pub const ENV_PREFIX: &str = "SYNCBRIDGE_SECRET_";
/// Where `file:` secrets live unless `--secrets-dir` says otherwise.
pub const DEFAULT_SECRETS_DIR: &str = "/etc/syncbridge/secrets";
/// The largest secret file read.
pub const MAX_SECRET_BYTES: u64 = 64 * 1024;
/// What replaces a secret or a token in a message.
pub const REDACTED: &str = "[redacted]";

/// Microsoft Graph and Entra ID token endpoints, global and national clouds
/// (US Government L4 / L5 (DoD), China operated by 21Vianet): allowed by
/// default, over https on port 443.
pub const MICROSOFT_HOSTS: &[&str] = &[
    "graph.microsoft.com",
    "login.microsoftonline.com",
    "graph.microsoft.us",
    "dod-graph.microsoft.us",
    "login.microsoftonline.us",
    "microsoftgraph.chinacloudapi.cn",
    "login.chinacloudapi.cn",
    "login.partner.microsoftonline.cn",
];

/// The worker's policy for targets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetPolicy {
    /// `file:` secrets must be regular files below this (absolute) directory.
    pub secrets_dir: PathBuf,
    /// Whether `base_url` / `authority_url` may point at loopback (emulators).
    pub allow_loopback: bool,
    /// Hosts allowed besides Microsoft's: `host` (port 443) or `host:port`.
    pub extra_hosts: Vec<String>,
}

impl Default for TargetPolicy {
    fn default() -> Self {
        Self { secrets_dir: PathBuf::from(DEFAULT_SECRETS_DIR), allow_loopback: false, extra_hosts: Vec::new() }
    }
}

/// Why a secret reference gave no secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecretError {
    /// The reference is outside the worker's policy: nothing was read.
    #[error("{reason}")]
    Refused {
        /// Why.
        reason: String,
        /// What to do.
        hint: String,
    },
    /// Within the policy, but there is no usable secret there.
    #[error("{reason}")]
    Unreadable {
        /// Why.
        reason: String,
        /// What to do.
        hint: String,
    },
}

impl SecretError {
    fn refused(reason: impl Into<String>, hint: impl Into<String>) -> Self {
        SecretError::Refused { reason: reason.into(), hint: hint.into() }
    }

    fn unreadable(reason: impl Into<String>, hint: impl Into<String>) -> Self {
        SecretError::Unreadable { reason: reason.into(), hint: hint.into() }
    }

    /// What to do about it.
    pub fn hint(&self) -> &str {
        match self {
            SecretError::Refused { hint, .. } | SecretError::Unreadable { hint, .. } => hint,
        }
    }
}

impl TargetPolicy {
    /// Resolves a secret reference (`env:NAME` or `file:/path`) under this
    /// policy. Blocking (a file read): call it off the async runtime. The
    /// value is never part of an error.
    pub fn resolve_secret(&self, reference: &str) -> Result<String, SecretError> {
        if let Some(name) = reference.strip_prefix("env:") {
            return read_env(name);
        }
        if let Some(path) = reference.strip_prefix("file:") {
            return self.read_file(path);
        }
        Err(SecretError::refused(
            "a secret reference is env:NAME or file:/path",
            format!("SELECT sync.alter_target(name, secret => 'env:{ENV_PREFIX}NAME')"),
        ))
    }

    fn read_file(&self, raw: &str) -> Result<String, SecretError> {
        let dir_hint = || {
            format!(
                "put the secret in a regular file below {} (the worker's --secrets-dir) and name that file",
                self.secrets_dir.display()
            )
        };
        let path = Path::new(raw);
        if !path.is_absolute() {
            return Err(SecretError::refused("the path is not absolute", dir_hint()));
        }
        if path.components().any(|c| matches!(c, Component::ParentDir | Component::CurDir)) {
            return Err(SecretError::refused("the path contains '..' or '.'", dir_hint()));
        }
        let dir_real = std::fs::canonicalize(&self.secrets_dir).ok();
        let below = |p: &Path| {
            p != self.secrets_dir && p.starts_with(&self.secrets_dir)
                || dir_real.as_deref().is_some_and(|d| p != d && p.starts_with(d))
        };
        if !below(path) {
            return Err(SecretError::refused(
                format!("only files below the secrets directory {} may be read", self.secrets_dir.display()),
                dir_hint(),
            ));
        }
        let Some(dir_real) = dir_real else {
            return Err(SecretError::unreadable(
                format!("the secrets directory {} does not exist or cannot be read", self.secrets_dir.display()),
                "create it, or start the worker with --secrets-dir naming the right one",
            ));
        };
        if ["/proc", "/sys", "/dev"].iter().any(|p| dir_real.starts_with(p)) {
            return Err(SecretError::refused(
                format!("{} is not a secrets directory (pseudo-files and devices are never read)", dir_real.display()),
                "start the worker with --secrets-dir naming a directory of regular files",
            ));
        }
        let real = std::fs::canonicalize(path)
            .map_err(|e| SecretError::unreadable(e.to_string(), "check the path and that the worker may read it"))?;
        if real == dir_real || !real.starts_with(&dir_real) {
            return Err(SecretError::refused(
                "it leads (through a symbolic link) out of the secrets directory",
                dir_hint(),
            ));
        }
        // O_NOFOLLOW: `real` has no link left, so one that appeared since is
        // refused; O_NONBLOCK: opening a FIFO never waits for a writer.
        let file = {
            use std::os::unix::fs::OpenOptionsExt;
            std::fs::OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_NOCTTY)
                .open(&real)
                .map_err(|e| SecretError::unreadable(e.to_string(), "check that the worker may read it"))?
        };
        let meta = file.metadata().map_err(|e| SecretError::unreadable(e.to_string(), "check the file"))?;
        if !meta.is_file() {
            return Err(SecretError::refused("not a regular file (a directory, FIFO, socket or device)", dir_hint()));
        }
        let too_big = || {
            SecretError::refused(
                format!("the file is larger than {} KiB", MAX_SECRET_BYTES / 1024),
                "a client secret is a short string: write only it into the file",
            )
        };
        if meta.len() > MAX_SECRET_BYTES {
            return Err(too_big());
        }
        if meta.len() == 0 {
            // Also what /proc pseudo-files report: never read one.
            return Err(SecretError::unreadable("the file is empty", "write the secret into it"));
        }
        let mut bytes = Vec::new();
        file.take(MAX_SECRET_BYTES + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| SecretError::unreadable(e.to_string(), "check the file"))?;
        if bytes.len() as u64 > MAX_SECRET_BYTES {
            return Err(too_big());
        }
        let text = String::from_utf8(bytes)
            .map_err(|_| SecretError::unreadable("the file is not UTF-8 text", "write the secret as text"))?;
        let v = text.trim_end_matches(['\n', '\r']);
        if v.is_empty() {
            return Err(SecretError::unreadable("the file is empty", "write the secret into it"));
        }
        Ok(v.to_owned())
    }

    /// Checks a `base_url` / `authority_url` against the policy; `key` names
    /// it in the message.
    pub fn check_url(&self, key: &str, raw: &str) -> Result<reqwest::Url, String> {
        let url = reqwest::Url::parse(raw).map_err(|e| format!("{key} is not a URL ({e})"))?;
        if !matches!(url.scheme(), "https" | "http") {
            return Err(format!("{key} must be an https URL, not {}", url.scheme()));
        }
        if !url.username().is_empty() || url.password().is_some() || url.query().is_some() || url.fragment().is_some() {
            return Err(format!("{key} must not carry user info, a query or a fragment"));
        }
        let host = url.host_str().unwrap_or("").to_ascii_lowercase();
        if is_loopback(&host) {
            return if self.allow_loopback {
                Ok(url)
            } else {
                Err(format!(
                    "{key} points at loopback ({host}); this worker allows that only with --allow-loopback-targets (emulators)"
                ))
            };
        }
        if url.scheme() != "https" {
            return Err(format!("{key} must use https (only loopback may use http)"));
        }
        let port = url.port_or_known_default().unwrap_or(443);
        let listed = |entry: &str| {
            let entry = entry.trim().to_ascii_lowercase();
            // `host`, `host:port`, `[v6]` or `[v6]:port`.
            let (h, p) = match entry.rsplit_once(':') {
                Some((h, p)) if !h.contains(':') || h.ends_with(']') => (h, p.parse::<u16>().ok()),
                _ => (entry.as_str(), None),
            };
            h == host && p.unwrap_or(443) == port
        };
        if MICROSOFT_HOSTS.iter().any(|h| listed(h)) || self.extra_hosts.iter().any(|h| listed(h)) {
            return Ok(url);
        }
        Err(format!(
            "{key} host {host}:{port} is not allowed by this worker (Microsoft's endpoints are; add others with --allow-target-host HOST[:PORT])"
        ))
    }
}

impl TargetPolicy {
    /// Checks an LDAP server's URL (`ldap://` or `ldaps://`, no DN, filter
    /// or user info): loopback only with `--allow-loopback-targets`; any
    /// other host must be listed with `--allow-target-host` (default ports
    /// 389 and 636), and a plain `ldap://` one needs StartTLS (`starttls`):
    /// the bind password never travels in the clear off this machine.
    pub fn check_ldap_url(&self, key: &str, raw: &str, starttls: bool) -> Result<reqwest::Url, String> {
        let url = reqwest::Url::parse(raw).map_err(|e| format!("{key} is not a URL ({e})"))?;
        if !matches!(url.scheme(), "ldap" | "ldaps") {
            return Err(format!("{key} must be an ldap:// or ldaps:// URL, not {}", url.scheme()));
        }
        let path_empty = matches!(url.path(), "" | "/");
        if !url.username().is_empty()
            || url.password().is_some()
            || url.query().is_some()
            || url.fragment().is_some()
            || !path_empty
        {
            return Err(format!("{key} must be ldap[s]://host[:port] only (no user info, DN or query)"));
        }
        let host = url.host_str().unwrap_or("").to_ascii_lowercase();
        if host.is_empty() {
            return Err(format!("{key} names no host"));
        }
        if is_loopback(&host) {
            return if self.allow_loopback {
                Ok(url)
            } else {
                Err(format!(
                    "{key} points at loopback ({host}); this worker allows that only with --allow-loopback-targets (test servers)"
                ))
            };
        }
        if url.scheme() == "ldap" && !starttls {
            return Err(format!(
                "{key} is a plain ldap:// URL to {host}: use ldaps:// or StartTLS (\"starttls\": true), the bind password must not travel in the clear"
            ));
        }
        let default_port = if url.scheme() == "ldaps" { 636 } else { 389 };
        let port = url.port().unwrap_or(default_port);
        let listed = |entry: &str| {
            let entry = entry.trim().to_ascii_lowercase();
            let (h, p) = match entry.rsplit_once(':') {
                Some((h, p)) if !h.contains(':') || h.ends_with(']') => (h, p.parse::<u16>().ok()),
                _ => (entry.as_str(), None),
            };
            h == host && p.is_none_or(|p| p == port)
        };
        if self.extra_hosts.iter().any(|h| listed(h)) {
            return Ok(url);
        }
        Err(format!(
            "{key} host {host}:{port} is not allowed by this worker: add it with --allow-target-host {host}:{port}"
        ))
    }
}

fn read_env(name: &str) -> Result<String, SecretError> {
    if !name.starts_with(ENV_PREFIX) || name.len() == ENV_PREFIX.len() {
        return Err(SecretError::refused(
            format!("only environment variables named {ENV_PREFIX}* may hold secrets; {name} is not read"),
            format!("put the secret in {ENV_PREFIX}<NAME> in the worker's environment and SELECT sync.alter_target(name, secret => 'env:{ENV_PREFIX}<NAME>')"),
        ));
    }
    match std::env::var(name) {
        Ok(v) if !v.is_empty() => Ok(v),
        Ok(_) => Err(SecretError::unreadable("the variable is empty", "set it in the worker's environment")),
        Err(_) => Err(SecretError::unreadable("the variable is not set", "set it in the worker's environment")),
    }
}

/// Whether a URL host (as `Url::host_str` spells it) is a loopback address.
fn is_loopback(host: &str) -> bool {
    if host == "localhost" || host == "localhost." {
        return true;
    }
    let bare = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
    match bare.parse::<IpAddr>() {
        Ok(IpAddr::V4(a)) => a.is_loopback(),
        Ok(IpAddr::V6(a)) => a.is_loopback() || a.to_ipv4_mapped().is_some_and(|m| m.is_loopback()),
        Err(_) => false,
    }
}

/// URL path / query encoding (RFC 3986 unreserved characters kept).
const URL_SET: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'_').remove(b'.').remove(b'~');
/// `application/x-www-form-urlencoded` (as serde_urlencoded writes it; space becomes `+`).
const FORM_SET: &AsciiSet = &NON_ALPHANUMERIC.remove(b'*').remove(b'-').remove(b'_').remove(b'.');

/// Replaces known secrets (and their encodings) in messages.
#[derive(Debug, Default, Clone)]
pub struct Redactor {
    needles: Vec<String>,
}

impl Redactor {
    /// A redactor for these secrets (empty ones are ignored).
    pub fn new<'a>(secrets: impl IntoIterator<Item = &'a str>) -> Self {
        let mut r = Self::default();
        for s in secrets {
            r.add(s);
        }
        r
    }

    /// Also redacts `secret` from now on.
    pub fn add(&mut self, secret: &str) {
        if secret.is_empty() {
            return;
        }
        let url = utf8_percent_encode(secret, URL_SET).to_string();
        let all = utf8_percent_encode(secret, NON_ALPHANUMERIC).to_string();
        let form = utf8_percent_encode(secret, FORM_SET).to_string().replace("%20", "+");
        let json = serde_json::to_string(secret).unwrap_or_default();
        let json = json.get(1..json.len().saturating_sub(1)).unwrap_or("").to_owned();
        for v in [secret.to_owned(), url.to_ascii_lowercase(), url, all.to_ascii_lowercase(), all, form, json] {
            if !v.is_empty() && !self.needles.contains(&v) {
                self.needles.push(v);
            }
        }
        // Longest first: a longer encoding is never half-replaced by a shorter one.
        self.needles.sort_by_key(|n| std::cmp::Reverse(n.len()));
    }

    /// `s` with every known secret replaced by `[redacted]`.
    pub fn redact(&self, s: &str) -> String {
        let mut out = s.to_owned();
        for n in &self.needles {
            if out.contains(n.as_str()) {
                out = out.replace(n.as_str(), REDACTED);
            }
        }
        out
    }
}

/// The first `max` characters of `s`, with `…` when cut.
pub fn bounded(s: &str, max: usize) -> String {
    let mut out: String = s.chars().take(max).collect();
    if s.chars().nth(max).is_some() {
        out.push('…');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    struct Dir(PathBuf);
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn tempdir(tag: &str) -> Dir {
        let d = std::env::temp_dir().join(format!("sb-policy-{tag}-{}-{}", std::process::id(), rand::random::<u32>()));
        std::fs::create_dir_all(d.join("secrets")).unwrap();
        Dir(d)
    }

    fn policy(d: &Dir) -> TargetPolicy {
        TargetPolicy { secrets_dir: d.0.join("secrets"), ..TargetPolicy::default() }
    }

    fn refused(r: Result<String, SecretError>) -> String {
        match r {
            Err(SecretError::Refused { reason, .. }) => reason,
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn env_secrets_only_with_the_prefix_and_others_are_never_read() {
        std::env::set_var("SYNCBRIDGE_SECRET_POLICY_TEST", "hunter2");
        std::env::set_var("SYNCBRIDGE_POLICY_TEST_OTHER", "not-for-you");
        let p = TargetPolicy::default();
        assert_eq!(p.resolve_secret("env:SYNCBRIDGE_SECRET_POLICY_TEST").unwrap(), "hunter2");
        for name in ["PGPASSWORD", "HOME", "SYNCBRIDGE_POLICY_TEST_OTHER", "SYNCBRIDGE_SECRET_", "syncbridge_secret_x"]
        {
            let reason = refused(p.resolve_secret(&format!("env:{name}")));
            assert!(reason.contains("SYNCBRIDGE_SECRET_*") && !reason.contains("not-for-you"), "{reason}");
        }
        assert!(matches!(
            p.resolve_secret("env:SYNCBRIDGE_SECRET_POLICY_TEST_MISSING"),
            Err(SecretError::Unreadable { .. })
        ));
        refused(p.resolve_secret("hunter2"));
    }

    #[test]
    fn file_secrets_only_below_the_secrets_dir() {
        let d = tempdir("file");
        let p = policy(&d);
        let dir = d.0.join("secrets");
        std::fs::write(dir.join("graph"), "s3cr3t\n").unwrap();
        std::fs::create_dir(dir.join("sub")).unwrap();
        std::fs::write(dir.join("sub/key"), "k").unwrap();
        std::fs::write(d.0.join("outside"), "leak").unwrap();
        assert_eq!(p.resolve_secret(&format!("file:{}", dir.join("graph").display())).unwrap(), "s3cr3t");
        assert_eq!(p.resolve_secret(&format!("file:{}", dir.join("sub/key").display())).unwrap(), "k");
        // Outside, by name, by '..', relative, the directory itself.
        for bad in [
            "/proc/self/environ".to_owned(),
            "/etc/passwd".to_owned(),
            format!("{}/outside", d.0.display()),
            format!("{}/../outside", dir.display()),
            format!("{}/sub/../graph", dir.display()),
            "relative/graph".to_owned(),
            dir.display().to_string(),
            format!("{}2/graph", dir.display()),
        ] {
            let r = p.resolve_secret(&format!("file:{bad}"));
            assert!(matches!(r, Err(SecretError::Refused { .. })), "{bad}: {r:?}");
        }
        // A missing file in the directory: nothing to read (auth_failed).
        let r = p.resolve_secret(&format!("file:{}", dir.join("missing").display()));
        assert!(matches!(r, Err(SecretError::Unreadable { .. })), "{r:?}");
    }

    #[test]
    fn symlinks_out_of_the_secrets_dir_are_refused_and_within_it_followed() {
        let d = tempdir("link");
        let p = policy(&d);
        let dir = d.0.join("secrets");
        std::fs::write(d.0.join("outside"), "leak").unwrap();
        symlink(d.0.join("outside"), dir.join("escape")).unwrap();
        symlink("/proc/self/environ", dir.join("environ")).unwrap();
        symlink(&d.0, dir.join("up")).unwrap();
        for name in ["escape", "environ", "up/outside"] {
            let reason = refused(p.resolve_secret(&format!("file:{}", dir.join(name).display())));
            assert!(!reason.contains("leak"), "{reason}");
        }
        // Kubernetes-style mounts: links that stay inside are fine.
        std::fs::create_dir(dir.join("..data")).unwrap();
        std::fs::write(dir.join("..data/graph"), "inside").unwrap();
        symlink("..data/graph", dir.join("graph")).unwrap();
        assert_eq!(p.resolve_secret(&format!("file:{}", dir.join("graph").display())).unwrap(), "inside");
        // The secrets dir itself may be a link.
        let via = d.0.join("via");
        symlink(&dir, &via).unwrap();
        let p2 = TargetPolicy { secrets_dir: via.clone(), ..TargetPolicy::default() };
        assert_eq!(p2.resolve_secret(&format!("file:{}", via.join("graph").display())).unwrap(), "inside");
    }

    #[test]
    fn fifos_devices_and_big_files_are_refused_without_blocking() {
        let d = tempdir("fifo");
        let p = policy(&d);
        let dir = d.0.join("secrets");
        let fifo = dir.join("fifo");
        let c = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: mkfifo(3) on a NUL-terminated path we own.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let started = std::time::Instant::now();
        let reason = refused(p.resolve_secret(&format!("file:{}", fifo.display())));
        assert!(reason.contains("not a regular file"), "{reason}");
        assert!(started.elapsed() < std::time::Duration::from_secs(2), "a FIFO blocked");
        symlink("/dev/zero", dir.join("zero")).unwrap();
        refused(p.resolve_secret(&format!("file:{}", dir.join("zero").display())));
        // /dev/zero itself with /dev as the secrets dir: a device, refused.
        let dev = TargetPolicy { secrets_dir: "/dev".into(), ..TargetPolicy::default() };
        refused(dev.resolve_secret("file:/dev/zero"));
        let proc_dir = TargetPolicy { secrets_dir: "/proc".into(), ..TargetPolicy::default() };
        assert!(proc_dir.resolve_secret("file:/proc/self/environ").is_err());
        std::fs::write(dir.join("big"), vec![b'x'; MAX_SECRET_BYTES as usize + 1]).unwrap();
        assert!(refused(p.resolve_secret(&format!("file:{}", dir.join("big").display()))).contains("larger"));
        std::fs::create_dir(dir.join("adir")).unwrap();
        refused(p.resolve_secret(&format!("file:{}", dir.join("adir").display())));
    }

    #[test]
    fn urls_only_from_the_allow_list() {
        let p = TargetPolicy::default();
        for ok in [
            "https://graph.microsoft.com/v1.0",
            "https://login.microsoftonline.com",
            "https://GRAPH.microsoft.com:443/v1.0/",
            "https://graph.microsoft.us/v1.0",
            "https://login.chinacloudapi.cn",
        ] {
            assert!(p.check_url("base_url", ok).is_ok(), "{ok}");
        }
        for bad in [
            "http://graph.microsoft.com/v1.0",
            "https://graph.microsoft.com:8443/v1.0",
            "https://graph.microsoft.com.evil.example/v1.0",
            "https://evil.example/graph.microsoft.com",
            "https://user:pw@graph.microsoft.com/v1.0",
            "https://graph.microsoft.com/v1.0?x=1",
            "https://graph.microsoft.com/v1.0#f",
            "http://127.0.0.1:8080",
            "http://localhost:8080",
            "http://[::1]:8080",
            "http://2130706433/",
            "http://169.254.169.254/latest",
            "http://0.0.0.0:80",
            "file:///etc/passwd",
            "not a url",
        ] {
            assert!(p.check_url("base_url", bad).is_err(), "{bad}");
        }
        let lo = TargetPolicy { allow_loopback: true, ..TargetPolicy::default() };
        for ok in ["http://127.0.0.1:8080/v1.0", "http://127.3.4.5", "http://localhost:1", "http://[::1]:9/x"] {
            assert!(lo.check_url("base_url", ok).is_ok(), "{ok}");
        }
        assert!(lo.check_url("base_url", "http://10.0.0.1").is_err());
        assert!(lo.check_url("base_url", "http://0.0.0.0:80").is_err());
        let extra = TargetPolicy {
            extra_hosts: vec!["graph.proxy.example".into(), "login.proxy.example:8443".into()],
            ..TargetPolicy::default()
        };
        assert!(extra.check_url("base_url", "https://graph.proxy.example/v1.0").is_ok());
        assert!(extra.check_url("base_url", "https://login.proxy.example:8443").is_ok());
        assert!(extra.check_url("base_url", "https://login.proxy.example").is_err());
        assert!(extra.check_url("base_url", "http://graph.proxy.example/v1.0").is_err());
        let msg = p.check_url("authority_url", "http://127.0.0.1:1").unwrap_err();
        assert!(msg.contains("--allow-loopback-targets"), "{msg}");
    }

    #[test]
    fn the_redactor_knows_encodings() {
        let secret = "p@ss w+rd/=&\"x";
        let r = Redactor::new([secret, "tok.en-1"]);
        let form = "client_id=c&client_secret=p%40ss+w%2Brd%2F%3D%26%22x&scope=s";
        let url = "q=p%40ss%20w%2Brd%2F%3D%26%22x";
        let lower = "q=p%40ss%20w%2brd%2f%3d%26%22x";
        let json = r#"{"echo":"p@ss w+rd/=&\"x"}"#;
        for s in [secret, form, url, lower, json, "Bearer tok.en-1"] {
            let out = r.redact(s);
            assert!(out.contains(REDACTED), "{s} -> {out}");
            assert!(!out.contains("w+rd") && !out.contains("w%2Brd") && !out.contains("tok.en-1"), "{s} -> {out}");
        }
        assert_eq!(r.redact("nothing here"), "nothing here");
        assert_eq!(Redactor::new([""]).redact("x"), "x");
        assert_eq!(bounded("abcdef", 3), "abc…");
        assert_eq!(bounded("abc", 3), "abc");
    }
}
