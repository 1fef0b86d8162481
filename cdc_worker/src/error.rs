//! The crate's error type, and the restart policy of each kind of failure.

use crate::pg::dsn::ConnectError;
use crate::pg::session::SessionLost;
use crate::pg::sqlstate::Described;
use crate::source::lsn::Lsn;
use crate::source::pgoutput::DecodeError;
use crate::source::replication::ReplError;

/// What can stop the ingest or an exporter. The supervisor restarts after
/// a transient failure and an internal one ([`WorkerError::should_restart`]);
/// a configuration error stops the worker until an operator fixes it.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// The replication connection failed (transient or not, as it says).
    #[error(transparent)]
    Replication(#[from] ReplError),
    /// A database call failed (transient by its SQLSTATE or connection state).
    #[error("{what}: {}", Described(source))]
    Database {
        /// What we were doing.
        what: &'static str,
        /// The error.
        #[source]
        source: tokio_postgres::Error,
    },
    /// Something an operator must fix: no extension, no publication, a slot
    /// of another plugin, a TLS setup that cannot work. Never restarted.
    #[error("{message} (hint: {hint})")]
    Config {
        /// What is wrong.
        message: String,
        /// What to do.
        hint: String,
    },
    /// A task panicked, the server broke the protocol, or a bug: restarted
    /// (a fresh session replays from the last confirmed LSN).
    #[error("{message} (the worker restarts; if it recurs, please report it)")]
    Internal {
        /// What happened.
        message: String,
    },
    /// A session stopped answering (a network cut without a reset).
    #[error("{0} (hint: check the network between the worker and the database)")]
    Unresponsive(String),
    /// The stream carried something we cannot decode: the same message
    /// would come again after a restart, so it stops the worker.
    #[error("cannot decode the message at {lsn}: {source}")]
    Decode {
        /// Where.
        lsn: Lsn,
        /// Why.
        #[source]
        source: DecodeError,
    },
}

impl WorkerError {
    pub(crate) fn db(what: &'static str) -> impl FnOnce(tokio_postgres::Error) -> WorkerError {
        move |source| WorkerError::Database { what, source }
    }

    pub(crate) fn internal(message: impl Into<String>) -> WorkerError {
        WorkerError::Internal { message: message.into() }
    }

    /// Whether running again later may succeed by itself (a broken
    /// connection, a restart, a deadlock or serialization failure, a busy
    /// slot).
    pub fn is_transient(&self) -> bool {
        match self {
            WorkerError::Replication(e) => e.is_transient(),
            WorkerError::Database { source, .. } => crate::pg::sqlstate::is_transient(source),
            WorkerError::Unresponsive(_) => true,
            WorkerError::Config { .. } | WorkerError::Internal { .. } | WorkerError::Decode { .. } => false,
        }
    }

    /// Whether the supervisor starts the task again (after a backoff):
    /// transient failures and internal ones.
    pub fn should_restart(&self) -> bool {
        self.is_transient() || matches!(self, WorkerError::Internal { .. })
    }
}

impl From<ConnectError> for WorkerError {
    fn from(e: ConnectError) -> Self {
        match e {
            ConnectError::Db(source) => WorkerError::Database { what: "connecting", source },
            ConnectError::Tls(e) => WorkerError::Config {
                message: e.to_string(),
                hint: "fix sslmode / sslrootcert in the connection string".into(),
            },
        }
    }
}

impl From<SessionLost> for WorkerError {
    fn from(e: SessionLost) -> Self {
        match e {
            SessionLost::Database(source) => WorkerError::Database { what: "checking the run's session", source },
            SessionLost::Unresponsive(m) => WorkerError::Unresponsive(m),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn internal_failures_restart_configuration_errors_do_not() {
        assert!(WorkerError::internal("the staging task failed: panicked").should_restart());
        assert!(!WorkerError::internal("x").is_transient(), "not transient: a backfill does not retry it in place");
        assert!(WorkerError::Unresponsive("silent".into()).should_restart());
        let config =
            WorkerError::Config { message: "no extension".into(), hint: "CREATE EXTENSION syncbridge;".into() };
        assert!(!config.should_restart());
        assert!(config.to_string().contains("(hint: CREATE EXTENSION syncbridge;)"));
        let decode = WorkerError::Decode { lsn: Lsn::ZERO, source: DecodeError::Empty };
        assert!(!decode.should_restart(), "the same message would come again");
    }
}
