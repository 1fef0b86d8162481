//! Connection strings: parsing (libpq key/value or URL form, via
//! tokio-postgres) and a redacted rendering that never shows a password.

use std::fmt;

use tokio_postgres::config::Host;

/// A parsed connection string.
#[derive(Clone)]
pub struct Dsn {
    config: tokio_postgres::Config,
}

/// A connection string that could not be parsed.
#[derive(Debug, thiserror::Error)]
#[error("invalid connection string: {0}")]
pub struct DsnError(#[source] tokio_postgres::Error);

impl Dsn {
    /// Parses a libpq-style connection string (`host=… port=… dbname=…` or
    /// `postgres://user@host:port/db`).
    pub fn parse(s: &str) -> Result<Self, DsnError> {
        let config = s.parse::<tokio_postgres::Config>().map_err(DsnError)?;
        Ok(Self { config })
    }

    /// The parsed configuration, for connecting.
    pub fn config(&self) -> &tokio_postgres::Config {
        &self.config
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

#[cfg(test)]
mod tests {
    use super::*;

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
    }
}
