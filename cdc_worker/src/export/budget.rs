//! The target's budget shared by every exporter of every worker: each
//! request is paid from `sync.budget_take` (a token bucket per target in
//! PostgreSQL), a slice at a time, on a session of its own.

use std::time::{Duration, Instant};

use tokio_postgres::Client;

use crate::extension;
use crate::pg::dsn::Dsn;
use crate::target::http::BudgetSource;
use crate::target::BoxFuture;

/// After a failed connection, how long the budget is not asked again (the
/// process paces by its own budget meanwhile).
const RECONNECT_AFTER: Duration = Duration::from_secs(10);

/// `sync.budget_take` over a session of its own (opened on first use, and
/// again after it was lost).
pub(crate) struct PgBudget {
    dsn: Dsn,
    db: tokio::sync::Mutex<(Option<Client>, Option<Instant>)>,
}

impl PgBudget {
    /// A source for the exporters of this process.
    pub(crate) fn new(dsn: Dsn) -> Self {
        Self { dsn, db: tokio::sync::Mutex::new((None, None)) }
    }
}

impl BudgetSource for PgBudget {
    fn take<'a>(&'a self, target: &'a str, need: f64, extra: f64) -> BoxFuture<'a, Result<(f64, f64), String>> {
        Box::pin(async move {
            let mut guard = self.db.lock().await;
            let (db, failed_at) = &mut *guard;
            if db.as_ref().is_none_or(Client::is_closed) {
                if failed_at.is_some_and(|t| t.elapsed() < RECONNECT_AFTER) {
                    return Err("no session to the database (retrying shortly)".into());
                }
                match crate::pg::connect(&self.dsn, "syncbridge-budget").await {
                    Ok(c) => {
                        *db = Some(c);
                        *failed_at = None;
                    }
                    Err(e) => {
                        *failed_at = Some(Instant::now());
                        return Err(e.to_string());
                    }
                }
            }
            let Some(c) = db.as_ref() else { return Err("no session to the database".into()) };
            extension::budget_take(c, target, need, extra).await.map_err(|e| e.to_string())
        })
    }
}
