//! PostgreSQL plumbing that knows nothing of syncbridge: connection strings,
//! TLS, connecting, SQLSTATE classes, a session's liveness.

pub mod dsn;
pub mod session;
pub mod sqlstate;
pub mod tls;

/// A session named `application_name` (`syncbridge-ingest`, `-stage`,
/// `-backfill`, `-export`: a DBA tells them apart in `pg_stat_activity`).
pub async fn connect(dsn: &dsn::Dsn, application_name: &str) -> Result<tokio_postgres::Client, dsn::ConnectError> {
    dsn.connect_as(application_name).await
}
