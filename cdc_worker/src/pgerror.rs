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
