//! Whether a session still answers.

/// How a session was lost.
#[derive(Debug)]
pub enum SessionLost {
    /// The server or the connection answered with an error.
    Database(tokio_postgres::Error),
    /// It did not answer in time.
    Unresponsive(String),
}

/// How often a run's session is asked whether it still answers (its
/// connection closing is noticed within a second).
pub const SESSION_CHECK_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

/// Resolves when `db`, the session holding a run (its `sync.runs` row and
/// advisory lock, and for the ingest the slot's lock), is lost: terminated,
/// timed out idle, or cut. The run must then end (and restart): its lock is
/// gone, so `sync.purge()` would mark it abandoned while its work went on.
pub async fn session_lost(db: &tokio_postgres::Client) -> SessionLost {
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
            Ok(Err(source)) => return SessionLost::Database(source),
            Err(_) => {
                return SessionLost::Unresponsive(format!(
                    "the run's session did not answer within {SESSION_CHECK_EVERY:?}"
                ))
            }
        }
    }
}
