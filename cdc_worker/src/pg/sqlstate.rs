//! Readable PostgreSQL errors: tokio-postgres prints a server error as
//! "db error"; operators need the SQLSTATE, message, detail and hint.

use std::fmt;

/// Displays a tokio-postgres error with everything the server said.
pub struct Described<'a>(pub &'a tokio_postgres::Error);

impl fmt::Display for Described<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Some(db) = self.0.as_db_error() else {
            // Not a server error: the error and its causes ("error connecting
            // to server: Connection refused (os error 111)").
            write!(f, "{}", self.0)?;
            let mut cause = std::error::Error::source(self.0);
            while let Some(c) = cause {
                write!(f, ": {c}")?;
                cause = c.source();
            }
            return Ok(());
        };
        write!(f, "{} {}: {}", db.severity(), db.code().code(), db.message())?;
        if let Some(d) = db.detail() {
            write!(f, " (detail: {d})")?;
        }
        if let Some(h) = db.hint() {
            write!(f, " (hint: {h})")?;
        }
        if let Some(w) = db.where_() {
            write!(f, " (where: {})", w.lines().next().unwrap_or(w))?;
        }
        Ok(())
    }
}

/// Whether an error with this SQLSTATE may go away by itself: connection
/// failures (08), a server starting or shutting down (57P), serialization
/// failures and deadlocks (40001, 40P01), lock timeouts (55P03), too many
/// connections (53300).
pub fn transient_sqlstate(code: &str) -> bool {
    code.starts_with("08") || code.starts_with("57P") || matches!(code, "40001" | "40P01" | "55P03" | "53300")
}

/// Whether trying again later may help: a broken or refused connection, a
/// server starting or shutting down, a deadlock, a serialization failure, a
/// lock timeout. A wrong password, a certificate that does not verify or a
/// bad connection string will not mend themselves.
pub fn is_transient(e: &tokio_postgres::Error) -> bool {
    if let Some(code) = e.code() {
        return transient_sqlstate(code.code());
    }
    let mut io = false;
    let mut cause: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(e);
    while let Some(c) = cause {
        if c.is::<rustls::Error>() {
            return false;
        }
        if let Some(ioe) = c.downcast_ref::<std::io::Error>() {
            if ioe.get_ref().is_some_and(|inner| inner.is::<rustls::Error>()) {
                return false;
            }
            io = true;
        }
        cause = c.source();
    }
    // No cause: "connection closed" and timeouts are worth a retry; a
    // configuration or authentication error ("invalid configuration: password
    // missing") is not.
    io || e.is_closed() || {
        let s = e.to_string();
        s.starts_with("connection closed") || s.starts_with("timeout") || s.starts_with("unexpected EOF")
    }
}
