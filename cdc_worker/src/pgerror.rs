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

/// Records the end of a run in `sync.runs` (`sync.start_run` began it). A
/// failure to record is logged, never raised: the run's work is done.
pub async fn finish_run(db: &tokio_postgres::Client, run_id: i64, status: &str, error: Option<String>) {
    if let Err(e) = db.execute("SELECT sync.finish_run($1, $2, $3)", &[&run_id, &status, &error]).await {
        tracing::warn!(run = run_id, error = %Described(&e), "could not record the end of the run");
    }
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

/// How often a run's session is asked whether it still answers (its
/// connection closing is noticed within a second).
pub const SESSION_CHECK_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

/// Resolves when `db`, the session holding a run (its `sync.runs` row and
/// advisory lock, and for the ingest the slot's lock), is lost: terminated,
/// timed out idle, or cut. The run must then end (and restart): its lock is
/// gone, so `sync.purge()` would mark it abandoned while its work went on.
pub async fn session_lost(db: &tokio_postgres::Client) -> crate::ingest::WorkerError {
    let mut since_check = std::time::Duration::ZERO;
    loop {
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        since_check += std::time::Duration::from_secs(1);
        if !db.is_closed() && since_check < SESSION_CHECK_EVERY {
            continue;
        }
        since_check = std::time::Duration::ZERO;
        match tokio::time::timeout(SESSION_CHECK_EVERY, db.simple_query("SELECT 1")).await {
            Ok(Ok(_)) => {}
            Ok(Err(source)) => {
                return crate::ingest::WorkerError::Database { what: "checking the run's session", source }
            }
            Err(_) => {
                return crate::ingest::WorkerError::Unresponsive(format!(
                    "the run's session did not answer within {SESSION_CHECK_EVERY:?}"
                ))
            }
        }
    }
}
