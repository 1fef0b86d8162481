//! Connection strings: parsing (libpq key/value or URL form, via
//! tokio-postgres, with the TLS options tokio-postgres does not know read
//! here first) and a redacted rendering that never shows a password.

use std::fmt;
use std::path::PathBuf;

use tokio_postgres::config::Host;

use crate::pg::tls::{RootCert, SslMode, TlsOptions};

/// A parsed connection string.
#[derive(Clone)]
pub struct Dsn {
    config: tokio_postgres::Config,
    tls: TlsOptions,
    /// The string itself held a password (not PGPASSWORD).
    inline_password: bool,
}

/// A connection string that could not be parsed.
#[derive(Debug, thiserror::Error)]
pub enum DsnError {
    /// tokio-postgres refused it.
    #[error("invalid connection string: {0}")]
    Parse(#[source] tokio_postgres::Error),
    /// A TLS option is wrong.
    #[error("invalid connection string: {0}")]
    Tls(String),
}

impl Dsn {
    /// Parses a libpq-style connection string (`host=… port=… dbname=…` or
    /// `postgres://user@host:port/db`), including `sslmode` (`disable`,
    /// `prefer`, `require`, `verify-ca`, `verify-full`) and `sslrootcert`.
    pub fn parse(s: &str) -> Result<Self, DsnError> {
        let (rest, tls) = split_tls_options(s).map_err(DsnError::Tls)?;
        let mut config = rest.parse::<tokio_postgres::Config>().map_err(DsnError::Parse)?;
        // tokio-postgres knows disable/prefer/require; the verification is ours.
        config.ssl_mode(match tls.mode {
            SslMode::Disable => tokio_postgres::config::SslMode::Disable,
            SslMode::Prefer => tokio_postgres::config::SslMode::Prefer,
            _ => tokio_postgres::config::SslMode::Require,
        });
        let inline_password = config.get_password().is_some();
        // As libpq: PGPASSWORD when the string carries no password.
        if !inline_password {
            if let Some(pw) = std::env::var_os("PGPASSWORD") {
                config.password(pw.as_encoded_bytes());
            }
        }
        Ok(Self { config, tls, inline_password })
    }

    /// Whether the connection string itself holds a password (one from
    /// `PGPASSWORD` does not count): on a command line, every local user
    /// reads it in `/proc/<pid>/cmdline`.
    pub fn has_inline_password(&self) -> bool {
        self.inline_password
    }

    /// The parsed configuration, for connecting.
    pub fn config(&self) -> &tokio_postgres::Config {
        &self.config
    }

    /// The TLS options.
    pub fn tls(&self) -> &TlsOptions {
        &self.tls
    }

    /// Opens a tokio-postgres connection (TLS as `sslmode` asks), its driver
    /// spawned on the runtime.
    pub async fn connect(&self) -> Result<tokio_postgres::Client, ConnectError> {
        self.connect_with(&self.config).await
    }

    /// As [`Dsn::connect`], naming the session `application_name` (what it
    /// does, as `pg_stat_activity` shows it: `syncbridge-stage`, …).
    pub async fn connect_as(&self, application_name: &str) -> Result<tokio_postgres::Client, ConnectError> {
        let mut config = self.config.clone();
        config.application_name(application_name);
        self.connect_with(&config).await
    }

    async fn connect_with(&self, config: &tokio_postgres::Config) -> Result<tokio_postgres::Client, ConnectError> {
        let tls = self.tls.make_connect()?;
        let (client, conn) = config.connect(tls).await?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "database connection ended");
            }
        });
        Ok(client)
    }

    /// The first host, as text (a Unix socket directory or a host name).
    pub fn host(&self) -> String {
        match self.config.get_hosts().first() {
            Some(Host::Tcp(h)) => h.clone(),
            Some(Host::Unix(p)) => p.display().to_string(),
            None => "localhost".to_owned(),
        }
    }

    /// The first port (5432 when none is given).
    pub fn port(&self) -> u16 {
        self.config.get_ports().first().copied().unwrap_or(5432)
    }

    /// The user name, when one is given.
    pub fn user(&self) -> Option<&str> {
        self.config.get_user()
    }

    /// The database name, when one is given.
    pub fn dbname(&self) -> Option<&str> {
        self.config.get_dbname()
    }
}

/// Renders `user@host:port/db`: never the password.
impl fmt::Display for Dsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(u) = self.user() {
            write!(f, "{u}@")?;
        }
        write!(f, "{}:{}", self.host(), self.port())?;
        if let Some(db) = self.dbname() {
            write!(f, "/{db}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Dsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Dsn({self})")
    }
}

/// Why a connection could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// TLS could not be set up (a missing root certificate file, …).
    #[error(transparent)]
    Tls(#[from] crate::pg::tls::TlsSetupError),
    /// The server or the network refused.
    #[error("{}", crate::pg::sqlstate::Described(.0))]
    Db(#[from] tokio_postgres::Error),
}

impl ConnectError {
    /// The server's SQLSTATE, when the server answered with an error.
    pub fn code(&self) -> Option<&str> {
        match self {
            ConnectError::Db(e) => e.code().map(|c| c.code()),
            ConnectError::Tls(_) => None,
        }
    }
}

const TLS_KEYS: [&str; 5] = ["sslmode", "sslrootcert", "sslcert", "sslkey", "sslpassword"];

/// Takes the TLS options out of a connection string: returns the rest (for
/// tokio-postgres) and the options.
fn split_tls_options(s: &str) -> Result<(String, TlsOptions), String> {
    let trimmed = s.trim_start();
    let mut found: Vec<(String, String)> = Vec::new();
    let rest = if trimmed.starts_with("postgres://") || trimmed.starts_with("postgresql://") {
        match trimmed.split_once('?') {
            None => trimmed.to_owned(),
            Some((base, query)) => {
                let mut kept = Vec::new();
                for pair in query.split('&').filter(|p| !p.is_empty()) {
                    let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
                    if TLS_KEYS.contains(&k) {
                        found.push((k.to_owned(), percent_decode(v)?));
                    } else {
                        kept.push(pair);
                    }
                }
                if kept.is_empty() {
                    base.to_owned()
                } else {
                    format!("{base}?{}", kept.join("&"))
                }
            }
        }
    } else {
        let mut kept = String::new();
        for (k, v) in conninfo_pairs(s)? {
            if TLS_KEYS.contains(&k.as_str()) {
                found.push((k, v));
            } else {
                kept.push_str(&k);
                kept.push_str("='");
                for c in v.chars() {
                    if c == '\\' || c == '\'' {
                        kept.push('\\');
                    }
                    kept.push(c);
                }
                kept.push_str("' ");
            }
        }
        kept
    };
    let mut tls = TlsOptions::default();
    for (k, v) in found {
        match k.as_str() {
            "sslmode" => tls.mode = SslMode::parse(&v)?,
            "sslrootcert" => {
                tls.root_cert = Some(if v == "system" { RootCert::System } else { RootCert::File(PathBuf::from(v)) })
            }
            _ => {
                return Err(format!(
                    "{k}: client certificates are not supported yet; authenticate with a password (SCRAM) over sslmode=verify-full"
                ))
            }
        }
    }
    Ok((rest, tls))
}

/// The `key=value` pairs of a libpq key/value connection string (values may
/// be single-quoted; a backslash escapes the next character).
fn conninfo_pairs(s: &str) -> Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    let mut it = s.chars().peekable();
    loop {
        while it.peek().is_some_and(|c| c.is_whitespace()) {
            it.next();
        }
        if it.peek().is_none() {
            return Ok(out);
        }
        let mut key = String::new();
        while let Some(&c) = it.peek() {
            if c == '=' || c.is_whitespace() {
                break;
            }
            key.push(c);
            it.next();
        }
        while it.peek().is_some_and(|c| c.is_whitespace()) {
            it.next();
        }
        if it.next() != Some('=') {
            return Err(format!("missing \"=\" after {key:?}"));
        }
        while it.peek().is_some_and(|c| c.is_whitespace()) {
            it.next();
        }
        let mut value = String::new();
        if it.peek() == Some(&'\'') {
            it.next();
            loop {
                match it.next() {
                    None => return Err(format!("unterminated quoted value of {key:?}")),
                    Some('\'') => break,
                    Some('\\') => value.extend(it.next()),
                    Some(c) => value.push(c),
                }
            }
        } else {
            while let Some(&c) = it.peek() {
                if c.is_whitespace() {
                    break;
                }
                it.next();
                if c == '\\' {
                    value.extend(it.next());
                } else {
                    value.push(c);
                }
            }
        }
        out.push((key, value));
    }
}

fn percent_decode(s: &str) -> Result<String, String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s.get(i + 1..i + 3).ok_or_else(|| format!("bad percent escape in {s:?}"))?;
            out.push(u8::from_str_radix(hex, 16).map_err(|_| format!("bad percent escape in {s:?}"))?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| format!("{s:?} is not UTF-8 once decoded"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_password_in_the_string_is_told_apart_from_pgpassword() {
        assert!(Dsn::parse("host=h user=u password=p dbname=d").unwrap().has_inline_password());
        assert!(Dsn::parse("postgres://u:p@h/d").unwrap().has_inline_password());
        assert!(!Dsn::parse("host=h user=u dbname=d").unwrap().has_inline_password());
        assert!(!Dsn::parse("postgres://u@h/d").unwrap().has_inline_password());
    }

    #[test]
    fn display_never_shows_the_password() {
        let d = Dsn::parse("host=127.0.0.1 port=5544 user=alice password=s3cr3t dbname=hr").unwrap();
        let shown = format!("{d} {d:?}");
        assert!(!shown.contains("s3cr3t"), "{shown}");
        assert_eq!(d.to_string(), "alice@127.0.0.1:5544/hr");
        let u = Dsn::parse("postgres://bob:pw@db.example:6000/x").unwrap();
        assert_eq!(u.to_string(), "bob@db.example:6000/x");
    }

    #[test]
    fn garbage_is_an_error() {
        assert!(Dsn::parse("host=a port=notaport").is_err());
        assert!(Dsn::parse("host='unterminated").is_err());
        assert!(Dsn::parse("host=a sslmode=allow").unwrap_err().to_string().contains("not supported"));
        assert!(Dsn::parse("host=a sslcert=/x.crt").unwrap_err().to_string().contains("client certificates"));
    }

    #[test]
    fn tls_options_are_read_in_both_forms_and_the_rest_still_parses() {
        let d = Dsn::parse(
            "host=db.example user=u password='p w\\'q' sslmode=verify-full sslrootcert=/etc/ca.pem dbname=x",
        )
        .unwrap();
        assert_eq!(d.tls().mode, SslMode::VerifyFull);
        assert_eq!(d.tls().root_cert, Some(RootCert::File("/etc/ca.pem".into())));
        assert_eq!(d.config().get_password(), Some(&b"p w'q"[..]));
        assert_eq!(d.config().get_ssl_mode(), tokio_postgres::config::SslMode::Require);
        assert_eq!(d.to_string(), "u@db.example:5432/x");

        let u = Dsn::parse("postgresql://u@h:6000/db?sslmode=verify-ca&sslrootcert=%2Ftmp%2Fca.pem&connect_timeout=5")
            .unwrap();
        assert_eq!(u.tls().mode, SslMode::VerifyCa);
        assert_eq!(u.tls().root_cert, Some(RootCert::File("/tmp/ca.pem".into())));
        assert_eq!(u.config().get_connect_timeout(), Some(&std::time::Duration::from_secs(5)));
        assert_eq!(u.to_string(), "u@h:6000/db");

        let p = Dsn::parse("host=h sslrootcert=system sslmode=require").unwrap();
        assert_eq!((p.tls().mode, p.tls().root_cert.clone()), (SslMode::Require, Some(RootCert::System)));
        // The default is libpq's: prefer.
        assert_eq!(Dsn::parse("host=h").unwrap().tls().mode, SslMode::Prefer);
        assert_eq!(Dsn::parse("host=h sslmode=disable").unwrap().tls().mode, SslMode::Disable);
    }
}
