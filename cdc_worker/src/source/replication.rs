//! The replication transport: a connection in `replication=database` mode
//! that speaks the streaming replication protocol.
//!
//! tokio-postgres has no replication support (no CopyBoth, no `replication`
//! start-up parameter), so this is written here on postgres-protocol's
//! message builders and authentication (SCRAM-SHA-256, MD5, cleartext), with
//! our own framing of backend messages. It does what the worker needs:
//! `IDENTIFY_SYSTEM`, `CREATE_REPLICATION_SLOT … LOGICAL pgoutput` (with an
//! exported snapshot), simple queries, `START_REPLICATION`, and in the
//! CopyBoth stream: XLogData and primary keepalives in, standby status
//! updates out.

use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use postgres_protocol::authentication::{md5_hash, sasl};
use postgres_protocol::message::frontend;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpStream, UnixStream};
use tokio_postgres::config::Host;

use crate::pg::dsn::Dsn;
use crate::pg::tls::SslMode;
use crate::source::lsn::Lsn;

/// Microseconds between the Unix epoch and PostgreSQL's (2000-01-01).
const PG_EPOCH_OFFSET_MICROS: i64 = 946_684_800_000_000;

/// The largest backend message accepted (PostgreSQL's own limit is 1 GB).
const MAX_MESSAGE_LEN: usize = 1 << 30;

/// What can go wrong on a replication connection.
#[derive(Debug, thiserror::Error)]
pub enum ReplError {
    /// The server could not be reached or the connection broke.
    #[error("replication connection to {target}: {source}")]
    Io {
        /// Where we were connected (never with a password).
        target: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The server answered with an ErrorResponse.
    #[error("{0}")]
    Server(Box<ServerError>),
    /// Authentication could not be carried out (method, missing password).
    #[error("authentication to {target} failed: {reason}")]
    Auth {
        /// Where we were connecting.
        target: String,
        /// Why.
        reason: String,
    },
    /// The server sent something the protocol does not allow here.
    #[error("replication protocol error: {0}")]
    Protocol(String),
}

impl ReplError {
    /// The SQLSTATE when the server refused something.
    pub fn sqlstate(&self) -> Option<&str> {
        match self {
            ReplError::Server(e) => Some(&e.code),
            _ => None,
        }
    }

    /// Whether retrying later may help (the connection broke; the server is
    /// starting or shutting down; the slot is busy).
    pub fn is_transient(&self) -> bool {
        match self {
            ReplError::Io { .. } => true,
            // 55006: the slot is active for another process.
            ReplError::Server(e) => crate::pg::sqlstate::transient_sqlstate(&e.code) || e.code == "55006",
            _ => false,
        }
    }
}

/// An ErrorResponse, with a hint of our own where the server gives none.
#[derive(Debug, Clone, Default)]
pub struct ServerError {
    /// ERROR, FATAL, PANIC.
    pub severity: String,
    /// SQLSTATE.
    pub code: String,
    /// The primary message.
    pub message: String,
    /// The server's detail, if any.
    pub detail: Option<String>,
    /// The server's hint, or ours.
    pub hint: Option<String>,
}

impl std::fmt::Display for ServerError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}: {}", self.severity, self.code, self.message)?;
        if let Some(d) = &self.detail {
            write!(f, " (detail: {d})")?;
        }
        if let Some(h) = &self.hint {
            write!(f, " (hint: {h})")?;
        }
        Ok(())
    }
}

fn parse_error_fields(mut body: &[u8]) -> ServerError {
    let mut e = ServerError::default();
    while let Some((&kind, rest)) = body.split_first() {
        if kind == 0 {
            break;
        }
        let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
        let value = String::from_utf8_lossy(&rest[..end]).into_owned();
        body = rest.get(end + 1..).unwrap_or(&[]);
        match kind {
            b'V' => e.severity = value,
            b'S' if e.severity.is_empty() => e.severity = value,
            b'C' => e.code = value,
            b'M' => e.message = value,
            b'D' => e.detail = Some(value),
            b'H' => e.hint = Some(value),
            _ => {}
        }
    }
    if e.hint.is_none() {
        e.hint = our_hint(&e).map(str::to_owned);
    }
    e
}

/// Hints for the refusals a DBA meets first.
fn our_hint(e: &ServerError) -> Option<&'static str> {
    let m = e.message.as_str();
    if m.contains("wal_level") {
        Some(
            "Set wal_level = logical in postgresql.conf (ALTER SYSTEM SET wal_level = logical) and restart the server.",
        )
    } else if e.code == "42501"
        || m.contains("must be superuser or replication role")
        || m.contains("permission denied to start WAL sender")
    {
        Some("Give the worker's role the REPLICATION attribute: ALTER ROLE … REPLICATION;")
    } else if e.code == "55006" {
        Some("Another process streams this slot; syncbridge runs one reader per slot. Stop the other reader or use another sync.slot_name.")
    } else if m.contains("no pg_hba.conf entry for replication") {
        Some("Allow replication connections in pg_hba.conf: host replication <role> <address> scram-sha-256 (or use a 'host all' rule for replication=database).")
    } else if e.code == "42704" && m.contains("replication slot") {
        Some("The slot was dropped; the worker creates it again on start, and sync.reset_cursor() decides what is re-staged.")
    } else {
        None
    }
}

/// One backend message: its tag and body.
#[derive(Debug)]
struct Frame {
    tag: u8,
    body: Bytes,
}

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// What `IDENTIFY_SYSTEM` reports.
#[derive(Debug, Clone)]
pub struct SystemInfo {
    /// The cluster's system identifier.
    pub system_id: String,
    /// The current timeline.
    pub timeline: u32,
    /// The current WAL flush position.
    pub xlog_pos: Lsn,
    /// The database connected to.
    pub dbname: Option<String>,
}

/// What `CREATE_REPLICATION_SLOT` reports.
#[derive(Debug, Clone)]
pub struct CreatedSlot {
    /// The slot's name.
    pub slot_name: String,
    /// From here on, every committed change is decoded.
    pub consistent_point: Lsn,
    /// The exported snapshot (valid until the next command on this
    /// connection), for reading the tables exactly as of `consistent_point`.
    pub snapshot_name: Option<String>,
}

/// The result of a simple query: column names and text rows.
#[derive(Debug, Default, Clone)]
pub struct QueryResult {
    /// Column names.
    pub columns: Vec<String>,
    /// Rows of text values (None is NULL).
    pub rows: Vec<Vec<Option<String>>>,
}

/// A replication connection before streaming starts.
pub struct ReplicationConnection {
    io: Box<dyn Io>,
    rbuf: BytesMut,
    /// Bytes the last read from the socket brought.
    last_read: usize,
    wbuf: BytesMut,
    target: String,
    /// The server's `server_version` parameter.
    pub server_version: String,
    /// The backend's process id.
    pub backend_pid: i32,
}

impl ReplicationConnection {
    /// Connects in `replication=database` mode and authenticates.
    pub async fn connect(dsn: &Dsn, application_name: &str) -> Result<Self, ReplError> {
        let config = dsn.config();
        let target = dsn.to_string();
        let io_err = |source| ReplError::Io { target: target.clone(), source };
        let tls = dsn.tls();
        let port = dsn.port();
        let timeout = config.get_connect_timeout().copied().unwrap_or(Duration::from_secs(30));
        let timed_out = || std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out");
        let io: Box<dyn Io> = match config.get_hosts().first() {
            Some(Host::Unix(dir)) => {
                // As libpq: no TLS on a Unix socket, whatever sslmode says.
                let path: PathBuf = dir.join(format!(".s.PGSQL.{port}"));
                let s = tokio::time::timeout(timeout, UnixStream::connect(&path))
                    .await
                    .map_err(|_| io_err(timed_out()))?
                    .map_err(io_err)?;
                Box::new(s)
            }
            other => {
                let host = match other {
                    Some(Host::Tcp(h)) => h.clone(),
                    _ => "localhost".to_owned(),
                };
                let mut s = tokio::time::timeout(timeout, TcpStream::connect((host.as_str(), port)))
                    .await
                    .map_err(|_| io_err(timed_out()))?
                    .map_err(io_err)?;
                s.set_nodelay(true).map_err(io_err)?;
                if tls.mode == SslMode::Disable {
                    Box::new(s)
                } else {
                    // SSLRequest: length 8, code 80877103; the server answers
                    // one byte, 'S' (go ahead) or 'N' (no TLS here).
                    let mut req = BytesMut::with_capacity(8);
                    frontend::ssl_request(&mut req);
                    s.write_all(&req).await.map_err(io_err)?;
                    let mut answer = [0u8; 1];
                    s.read_exact(&mut answer).await.map_err(io_err)?;
                    match answer[0] {
                        b'S' => {
                            let config = tls
                                .client_config()
                                .map_err(|e| ReplError::Auth { target: target.clone(), reason: e.to_string() })?;
                            let name = rustls::pki_types::ServerName::try_from(host.clone()).map_err(|e| {
                                ReplError::Auth { target: target.clone(), reason: format!("host {host:?}: {e}") }
                            })?;
                            let stream =
                                tokio_rustls::TlsConnector::from(config).connect(name, s).await.map_err(|e| {
                                    ReplError::Auth {
                                        target: target.clone(),
                                        reason: format!("TLS handshake (sslmode={}): {e}", tls.mode.as_str()),
                                    }
                                })?;
                            Box::new(stream)
                        }
                        b'N' if tls.mode.requires_tls() => {
                            return Err(ReplError::Auth {
                                target,
                                reason: format!(
                                    "sslmode={} but the server does not accept TLS (is ssl = on in postgresql.conf?)",
                                    tls.mode.as_str()
                                ),
                            })
                        }
                        b'N' => Box::new(s),
                        other => {
                            return Err(ReplError::Protocol(format!(
                                "the server answered the TLS request with {other:#04x}, neither 'S' nor 'N'"
                            )))
                        }
                    }
                }
            }
        };
        let mut conn = ReplicationConnection {
            io,
            rbuf: BytesMut::with_capacity(64 * 1024),
            last_read: 0,
            wbuf: BytesMut::with_capacity(1024),
            target: target.clone(),
            server_version: String::new(),
            backend_pid: 0,
        };
        let user = config
            .get_user()
            .map(str::to_owned)
            .or_else(|| std::env::var("PGUSER").ok())
            .or_else(|| std::env::var("USER").ok())
            .unwrap_or_else(|| "postgres".to_owned());
        let dbname = config.get_dbname().unwrap_or(&user).to_owned();
        let mut params: Vec<(&str, &str)> = vec![
            ("user", &user),
            ("database", &dbname),
            ("replication", "database"),
            ("application_name", application_name),
            ("client_encoding", "UTF8"),
        ];
        if let Some(opts) = config.get_options() {
            params.push(("options", opts));
        }
        frontend::startup_message(params.iter().copied(), &mut conn.wbuf).map_err(io_err)?;
        conn.flush().await?;
        let password: Option<Vec<u8>> = config
            .get_password()
            .map(<[u8]>::to_vec)
            .or_else(|| std::env::var("PGPASSWORD").ok().map(String::into_bytes));
        conn.authenticate(&user, password.as_deref()).await?;
        // ParameterStatus, BackendKeyData, then ReadyForQuery.
        loop {
            let f = conn.read_frame().await?;
            match f.tag {
                b'S' => {
                    let mut parts = f.body.split(|&b| b == 0);
                    if parts.next() == Some(b"server_version") {
                        conn.server_version = String::from_utf8_lossy(parts.next().unwrap_or_default()).into_owned();
                    }
                }
                b'K' => {
                    let mut b = f.body.clone();
                    if b.len() >= 4 {
                        conn.backend_pid = b.get_i32();
                    }
                }
                b'Z' => break,
                b'N' => conn.log_notice(&f.body),
                b'E' => return Err(ReplError::Server(Box::new(parse_error_fields(&f.body)))),
                t => return Err(ReplError::Protocol(format!("unexpected message {:?} during start-up", t as char))),
            }
        }
        Ok(conn)
    }

    async fn authenticate(&mut self, user: &str, password: Option<&[u8]>) -> Result<(), ReplError> {
        let need_password = |this: &Self| ReplError::Auth {
            target: this.target.clone(),
            reason:
                "the server asks for a password and none is given (password= in the connection string, or PGPASSWORD)"
                    .to_owned(),
        };
        let mut scram: Option<sasl::ScramSha256> = None;
        loop {
            let f = self.read_frame().await?;
            match f.tag {
                b'R' => {}
                b'E' => return Err(ReplError::Server(Box::new(parse_error_fields(&f.body)))),
                t => {
                    return Err(ReplError::Protocol(format!(
                        "unexpected message {:?} during authentication",
                        t as char
                    )))
                }
            }
            let mut body = f.body.clone();
            if body.len() < 4 {
                return Err(ReplError::Protocol("short authentication message".into()));
            }
            let code = body.get_i32();
            let io_err = |source| ReplError::Io { target: self.target.clone(), source };
            match code {
                0 => return Ok(()),
                3 => {
                    let pw = password.ok_or_else(|| need_password(self))?;
                    // password_message adds the terminating NUL itself.
                    frontend::password_message(pw, &mut self.wbuf).map_err(io_err)?;
                }
                5 => {
                    let pw = password.ok_or_else(|| need_password(self))?;
                    if body.len() < 4 {
                        return Err(ReplError::Protocol("short MD5 salt".into()));
                    }
                    let mut salt = [0u8; 4];
                    body.copy_to_slice(&mut salt);
                    let hashed = md5_hash(user.as_bytes(), pw, salt);
                    frontend::password_message(hashed.as_bytes(), &mut self.wbuf).map_err(io_err)?;
                }
                10 => {
                    let pw = password.ok_or_else(|| need_password(self))?;
                    let mechanisms: Vec<&[u8]> = body.split(|&b| b == 0).filter(|m| !m.is_empty()).collect();
                    if !mechanisms.contains(&sasl::SCRAM_SHA_256.as_bytes()) {
                        return Err(ReplError::Auth {
                            target: self.target.clone(),
                            reason: format!(
                                "the server offers only SASL mechanisms {:?}",
                                mechanisms.iter().map(|m| String::from_utf8_lossy(m)).collect::<Vec<_>>()
                            ),
                        });
                    }
                    let s = sasl::ScramSha256::new(pw, sasl::ChannelBinding::unsupported());
                    frontend::sasl_initial_response(sasl::SCRAM_SHA_256, s.message(), &mut self.wbuf)
                        .map_err(io_err)?;
                    scram = Some(s);
                }
                11 => {
                    let s = scram.as_mut().ok_or_else(|| ReplError::Protocol("SASL continue without SASL".into()))?;
                    s.update(&body)
                        .map_err(|e| ReplError::Auth { target: self.target.clone(), reason: e.to_string() })?;
                    frontend::sasl_response(s.message(), &mut self.wbuf).map_err(io_err)?;
                }
                12 => {
                    let mut s = scram.take().ok_or_else(|| ReplError::Protocol("SASL final without SASL".into()))?;
                    s.finish(&body).map_err(|e| ReplError::Auth {
                        target: self.target.clone(),
                        reason: format!("the server's SCRAM signature does not verify: {e}"),
                    })?;
                    continue;
                }
                other => {
                    return Err(ReplError::Auth {
                        target: self.target.clone(),
                        reason: format!(
                            "unsupported authentication method {other} (use scram-sha-256, md5 or password)"
                        ),
                    })
                }
            }
            self.flush().await?;
        }
    }

    fn log_notice(&self, body: &[u8]) {
        let n = parse_error_fields(body);
        tracing::info!(target: "syncbridge::replication", code = %n.code, "server notice: {}", n.message);
    }

    async fn flush(&mut self) -> Result<(), ReplError> {
        let buf = self.wbuf.split();
        self.io.write_all(&buf).await.map_err(|source| ReplError::Io { target: self.target.clone(), source })?;
        self.io.flush().await.map_err(|source| ReplError::Io { target: self.target.clone(), source })
    }

    async fn read_frame(&mut self) -> Result<Frame, ReplError> {
        read_frame(&mut self.io, &mut self.rbuf, &mut self.last_read, &self.target).await
    }

    /// Runs one replication command or simple query and returns its rows.
    pub async fn simple_query(&mut self, sql: &str) -> Result<QueryResult, ReplError> {
        frontend::query(sql, &mut self.wbuf).map_err(|source| ReplError::Io { target: self.target.clone(), source })?;
        self.flush().await?;
        let mut result = QueryResult::default();
        let mut error = None;
        loop {
            let f = self.read_frame().await?;
            match f.tag {
                b'T' => result.columns = parse_row_description(&f.body)?,
                b'D' => result.rows.push(parse_data_row(&f.body)?),
                b'C' | b'I' | b'S' => {}
                b'N' => self.log_notice(&f.body),
                b'E' => error = Some(parse_error_fields(&f.body)),
                b'Z' => break,
                t => return Err(ReplError::Protocol(format!("unexpected message {:?} answering a query", t as char))),
            }
        }
        match error {
            Some(e) => Err(ReplError::Server(Box::new(e))),
            None => Ok(result),
        }
    }

    /// `IDENTIFY_SYSTEM`.
    pub async fn identify_system(&mut self) -> Result<SystemInfo, ReplError> {
        let r = self.simple_query("IDENTIFY_SYSTEM").await?;
        let row = r.rows.first().ok_or_else(|| ReplError::Protocol("IDENTIFY_SYSTEM returned no row".into()))?;
        let col = |i: usize| row.get(i).cloned().flatten();
        Ok(SystemInfo {
            system_id: col(0).unwrap_or_default(),
            timeline: col(1).and_then(|t| t.parse().ok()).unwrap_or(0),
            xlog_pos: col(2)
                .and_then(|l| l.parse().ok())
                .ok_or_else(|| ReplError::Protocol("IDENTIFY_SYSTEM: no xlogpos".into()))?,
            dbname: col(3),
        })
    }

    /// `CREATE_REPLICATION_SLOT name LOGICAL pgoutput`, exporting a snapshot
    /// when asked (the option list of PostgreSQL 15 and later), as a
    /// failover slot when asked (PostgreSQL 17 and later).
    pub async fn create_slot(
        &mut self,
        name: &str,
        export_snapshot: bool,
        failover: bool,
    ) -> Result<CreatedSlot, ReplError> {
        let snapshot = if export_snapshot { "export" } else { "nothing" };
        let failover = if failover { ", FAILOVER true" } else { "" };
        let sql =
            format!("CREATE_REPLICATION_SLOT {} LOGICAL pgoutput (SNAPSHOT '{snapshot}'{failover})", quote_ident(name));
        let r = self.simple_query(&sql).await?;
        let row =
            r.rows.first().ok_or_else(|| ReplError::Protocol("CREATE_REPLICATION_SLOT returned no row".into()))?;
        let col = |i: usize| row.get(i).cloned().flatten();
        Ok(CreatedSlot {
            slot_name: col(0).unwrap_or_else(|| name.to_owned()),
            consistent_point: col(1)
                .and_then(|l| l.parse().ok())
                .ok_or_else(|| ReplError::Protocol("CREATE_REPLICATION_SLOT: no consistent_point".into()))?,
            snapshot_name: col(2),
        })
    }

    /// `ALTER_REPLICATION_SLOT name (FAILOVER true)` (PostgreSQL 17 and later).
    pub async fn enable_failover(&mut self, name: &str) -> Result<(), ReplError> {
        self.simple_query(&format!("ALTER_REPLICATION_SLOT {} (FAILOVER true)", quote_ident(name))).await?;
        Ok(())
    }

    /// `START_REPLICATION SLOT … LOGICAL start (proto_version '1',
    /// publication_names '…', messages 'true')`: from here on the connection
    /// is a CopyBoth stream.
    pub async fn start_replication(
        mut self,
        slot: &str,
        start: Lsn,
        publication: &str,
    ) -> Result<ReplicationStream, ReplError> {
        let sql = format!(
            "START_REPLICATION SLOT {} LOGICAL {start} (proto_version '1', publication_names {}, messages 'true')",
            quote_ident(slot),
            quote_literal(&quote_ident(publication)),
        );
        frontend::query(&sql, &mut self.wbuf)
            .map_err(|source| ReplError::Io { target: self.target.clone(), source })?;
        self.flush().await?;
        loop {
            let f = self.read_frame().await?;
            match f.tag {
                b'W' => break,
                b'N' => self.log_notice(&f.body),
                b'E' => return Err(ReplError::Server(Box::new(parse_error_fields(&f.body)))),
                t => {
                    return Err(ReplError::Protocol(format!("unexpected message {:?} starting replication", t as char)))
                }
            }
        }
        Ok(ReplicationStream { conn: self, done: false })
    }
}

/// What the stream delivers.
#[derive(Debug)]
pub enum ReplicationEvent {
    /// A chunk of decoded WAL: one pgoutput message.
    XLogData {
        /// Where this message's WAL starts.
        wal_start: Lsn,
        /// The server's current end of WAL.
        wal_end: Lsn,
        /// The server's clock, microseconds since 2000-01-01.
        server_time: i64,
        /// The pgoutput message.
        data: Bytes,
    },
    /// The server's heartbeat.
    Keepalive {
        /// The server's current end of WAL.
        wal_end: Lsn,
        /// Whether the server wants a status update now.
        reply_requested: bool,
    },
    /// The server ended the stream (CopyDone).
    End,
}

/// A replication connection in CopyBoth mode.
pub struct ReplicationStream {
    conn: ReplicationConnection,
    done: bool,
}

impl ReplicationStream {
    /// The next message from the server.
    pub async fn next(&mut self) -> Result<ReplicationEvent, ReplError> {
        loop {
            if self.done {
                return Ok(ReplicationEvent::End);
            }
            let f = match buffered_frame(&mut self.conn.rbuf)? {
                Some(f) => f,
                None => {
                    // Everything received is handled; when the last read
                    // brought little, let more arrive first.
                    if self.conn.last_read < PAUSE_BELOW {
                        tokio::time::sleep(READ_PAUSE).await;
                    }
                    self.conn.read_frame().await?
                }
            };
            if let Some(ev) = self.event(f)? {
                return Ok(ev);
            }
        }
    }

    /// The next message when it was already received whole (no waiting, no
    /// I/O): the caller takes what one read brought in a tight loop, not
    /// one wake-up per message. None when a read is needed first.
    pub fn next_buffered(&mut self) -> Result<Option<ReplicationEvent>, ReplError> {
        loop {
            if self.done {
                return Ok(None);
            }
            let Some(f) = buffered_frame(&mut self.conn.rbuf)? else { return Ok(None) };
            if let Some(ev) = self.event(f)? {
                return Ok(Some(ev));
            }
        }
    }

    /// The event a message of the stream is; None for a notice (logged).
    fn event(&mut self, f: Frame) -> Result<Option<ReplicationEvent>, ReplError> {
        match f.tag {
            b'd' => {
                let mut b = f.body;
                let Some(&kind) = b.first() else {
                    return Err(ReplError::Protocol("empty CopyData".into()));
                };
                match kind {
                    b'w' if b.len() >= 25 => {
                        b.advance(1);
                        let wal_start = Lsn(b.get_u64());
                        let wal_end = Lsn(b.get_u64());
                        let server_time = b.get_i64();
                        Ok(Some(ReplicationEvent::XLogData { wal_start, wal_end, server_time, data: b }))
                    }
                    b'k' if b.len() >= 18 => {
                        b.advance(1);
                        let wal_end = Lsn(b.get_u64());
                        let _server_time = b.get_i64();
                        let reply_requested = b.get_u8() == 1;
                        Ok(Some(ReplicationEvent::Keepalive { wal_end, reply_requested }))
                    }
                    k => Err(ReplError::Protocol(format!(
                        "CopyData of kind {:?} and {} bytes is not XLogData or a keepalive",
                        k as char,
                        b.len()
                    ))),
                }
            }
            b'c' => {
                self.done = true;
                Ok(Some(ReplicationEvent::End))
            }
            b'N' => {
                self.conn.log_notice(&f.body);
                Ok(None)
            }
            b'E' => Err(ReplError::Server(Box::new(parse_error_fields(&f.body)))),
            t => Err(ReplError::Protocol(format!("unexpected message {:?} in the stream", t as char))),
        }
    }

    /// Sends a standby status update: everything up to `flush` is durably
    /// processed (the server may recycle WAL before it and the slot's
    /// `confirmed_flush_lsn` moves there).
    pub async fn send_status(
        &mut self,
        written: Lsn,
        flushed: Lsn,
        applied: Lsn,
        reply: bool,
    ) -> Result<(), ReplError> {
        let mut msg = BytesMut::with_capacity(34);
        msg.put_u8(b'r');
        msg.put_u64(written.0);
        msg.put_u64(flushed.0);
        msg.put_u64(applied.0);
        msg.put_i64(pg_now_micros());
        msg.put_u8(u8::from(reply));
        let target = self.conn.target.clone();
        frontend::CopyData::new(msg.freeze())
            .map_err(|source| ReplError::Io { target, source })?
            .write(&mut self.conn.wbuf);
        self.conn.flush().await
    }

    /// Ends the stream politely: CopyDone, waits for the server to end its
    /// side and become ready (so the walsender has processed every status
    /// update sent before), then Terminate.
    pub async fn finish(&mut self) -> Result<(), ReplError> {
        frontend::copy_done(&mut self.conn.wbuf);
        self.conn.flush().await?;
        let drain = async {
            loop {
                let f = self.conn.read_frame().await?;
                match f.tag {
                    b'Z' => return Ok(()),
                    b'E' => return Err(ReplError::Server(Box::new(parse_error_fields(&f.body)))),
                    _ => {}
                }
            }
        };
        match tokio::time::timeout(Duration::from_secs(10), drain).await {
            Ok(r) => r?,
            Err(_) => tracing::warn!("the server did not end the stream within 10 s; closing anyway"),
        }
        self.done = true;
        frontend::terminate(&mut self.conn.wbuf);
        self.conn.flush().await
    }
}

/// The current time as the protocol counts it.
pub fn pg_now_micros() -> i64 {
    let unix = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_micros() as i64).unwrap_or(0);
    unix - PG_EPOCH_OFFSET_MICROS
}

/// How long the stream waits, once it has handled everything received,
/// before it reads again. The walsender writes each change as it decodes
/// it; a reader that takes them as they trickle in wakes up for a few each
/// (and each wake-up costs the walsender too): one 1,000,000-row
/// transaction took 3.1 to 4.2 s to stream that way (sys time 1 to 2 s),
/// 2.5 to 2.6 s with this pause after short reads and the ingest's tight
/// loop over `next_buffered` (0.45 s), where pg_recvlogical takes 3.4 s.
/// A millisecond is nothing to a change's latency, and the socket's buffer
/// holds far more than a millisecond of the stream.
const READ_PAUSE: Duration = Duration::from_millis(1);
/// A read that brought this much or more means the stream flows faster
/// than it trickles: no pause (a pause before every read would cap the
/// stream at a read a millisecond: over TLS, a 16 KiB record each).
const PAUSE_BELOW: usize = 8 * 1024;

/// The first whole message in `rbuf`, taken out of it; None when it holds
/// only part of one (its length checked as soon as it is there).
fn buffered_frame(rbuf: &mut BytesMut) -> Result<Option<Frame>, ReplError> {
    if rbuf.len() < 5 {
        return Ok(None);
    }
    let tag = rbuf[0];
    let len = u32::from_be_bytes([rbuf[1], rbuf[2], rbuf[3], rbuf[4]]) as usize;
    if !(4..=MAX_MESSAGE_LEN).contains(&len) {
        return Err(ReplError::Protocol(format!("message {:?} with invalid length {len}", tag as char)));
    }
    if rbuf.len() <= len {
        return Ok(None);
    }
    let mut frame = rbuf.split_to(len + 1);
    frame.advance(5);
    Ok(Some(Frame { tag, body: frame.freeze() }))
}

async fn read_frame(
    io: &mut Box<dyn Io>,
    rbuf: &mut BytesMut,
    last_read: &mut usize,
    target: &str,
) -> Result<Frame, ReplError> {
    let io_err = |source| ReplError::Io { target: target.to_owned(), source };
    loop {
        if let Some(f) = buffered_frame(rbuf)? {
            return Ok(f);
        }
        if rbuf.len() >= 5 {
            let len = u32::from_be_bytes([rbuf[1], rbuf[2], rbuf[3], rbuf[4]]) as usize;
            rbuf.reserve(len + 1 - rbuf.len());
        } else {
            rbuf.reserve(64 * 1024);
        }
        let n = io.read_buf(rbuf).await.map_err(io_err)?;
        *last_read = n;
        if n == 0 {
            return Err(io_err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "the server closed the connection",
            )));
        }
    }
}

fn parse_row_description(body: &[u8]) -> Result<Vec<String>, ReplError> {
    let bad = || ReplError::Protocol("malformed RowDescription".into());
    let mut b = body;
    if b.len() < 2 {
        return Err(bad());
    }
    let n = b.get_i16();
    let mut names = Vec::with_capacity(n.max(0) as usize);
    for _ in 0..n {
        let end = b.iter().position(|&c| c == 0).ok_or_else(bad)?;
        names.push(String::from_utf8_lossy(&b[..end]).into_owned());
        b = b.get(end + 1 + 18..).ok_or_else(bad)?;
    }
    Ok(names)
}

fn parse_data_row(body: &[u8]) -> Result<Vec<Option<String>>, ReplError> {
    let bad = || ReplError::Protocol("malformed DataRow".into());
    let mut b = body;
    if b.len() < 2 {
        return Err(bad());
    }
    let n = b.get_i16();
    let mut row = Vec::with_capacity(n.max(0) as usize);
    for _ in 0..n {
        if b.len() < 4 {
            return Err(bad());
        }
        let len = b.get_i32();
        if len < 0 {
            row.push(None);
            continue;
        }
        let v = b.get(..len as usize).ok_or_else(bad)?;
        row.push(Some(String::from_utf8_lossy(v).into_owned()));
        b = &b[len as usize..];
    }
    Ok(row)
}

/// `"name"`, with embedded quotes doubled.
pub fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

/// `'text'`, with embedded quotes doubled.
pub fn quote_literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_fields_and_our_hints() {
        let body = b"SERROR\0VERROR\0C55000\0Mlogical decoding requires wal_level >= logical\0\0";
        let e = parse_error_fields(body);
        assert_eq!(e.code, "55000");
        assert_eq!(e.severity, "ERROR");
        assert!(e.hint.as_deref().unwrap().contains("wal_level = logical"));
        let busy = parse_error_fields(b"SERROR\0C55006\0Mreplication slot \"s\" is active for PID 42\0\0");
        assert!(busy.hint.as_deref().unwrap().contains("one reader per slot"));
        // Garbage does not panic.
        let g = parse_error_fields(b"Mno terminator");
        assert_eq!(g.message, "no terminator");
    }

    #[test]
    fn data_rows_and_descriptions() {
        let mut b = BytesMut::new();
        b.put_i16(2);
        b.put_i32(3);
        b.put_slice(b"abc");
        b.put_i32(-1);
        assert_eq!(parse_data_row(&b).unwrap(), vec![Some("abc".into()), None]);
        assert!(parse_data_row(&b[..6]).is_err());
        let mut d = BytesMut::new();
        d.put_i16(1);
        d.put_slice(b"slot_name\0");
        d.put_slice(&[0u8; 18]);
        assert_eq!(parse_row_description(&d).unwrap(), vec!["slot_name".to_owned()]);
        assert!(parse_row_description(&d[..8]).is_err());
    }

    /// A CopyData XLogData message carrying `payload`, as the server frames it.
    fn xlog(start: u64, payload: &[u8]) -> Vec<u8> {
        let mut body = BytesMut::new();
        body.put_u8(b'w');
        body.put_u64(start);
        body.put_u64(start + 100);
        body.put_i64(0);
        body.put_slice(payload);
        let mut m = vec![b'd'];
        m.extend_from_slice(&(body.len() as u32 + 4).to_be_bytes());
        m.extend_from_slice(&body);
        m
    }

    /// A stream whose server end is the returned pipe.
    fn stream_over_pipe() -> (ReplicationStream, tokio::io::DuplexStream) {
        let (client, server) = tokio::io::duplex(1 << 16);
        let conn = ReplicationConnection {
            io: Box::new(client),
            rbuf: BytesMut::new(),
            last_read: 0,
            wbuf: BytesMut::new(),
            target: "test".into(),
            server_version: "15".into(),
            backend_pid: 1,
        };
        (ReplicationStream { conn, done: false }, server)
    }

    #[tokio::test]
    async fn the_stream_takes_what_one_read_brought_without_waiting_and_splits_nothing() {
        let (mut stream, mut server) = stream_over_pipe();
        assert!(stream.next_buffered().unwrap().is_none(), "nothing received: nothing without a read");
        // Three messages, the second split across two writes; a keepalive.
        let (a, b, c) = (xlog(1, b"first"), xlog(2, b"second"), xlog(3, b"third"));
        let mut k = vec![b'd', 0, 0, 0, 22, b'k'];
        k.extend_from_slice(&500u64.to_be_bytes());
        k.extend_from_slice(&0i64.to_be_bytes());
        k.push(1);
        let mut first = a.clone();
        first.extend_from_slice(&b[..7]);
        tokio::io::AsyncWriteExt::write_all(&mut server, &first).await.unwrap();
        let payload = |ev: ReplicationEvent| match ev {
            ReplicationEvent::XLogData { wal_start, data, .. } => (wal_start.0, data.to_vec()),
            other => panic!("not XLogData: {other:?}"),
        };
        assert_eq!(payload(stream.next().await.unwrap()), (1, b"first".to_vec()));
        assert!(stream.next_buffered().unwrap().is_none(), "half a message is not one");
        let mut rest = b[7..].to_vec();
        rest.extend_from_slice(&c);
        rest.extend_from_slice(&k);
        tokio::io::AsyncWriteExt::write_all(&mut server, &rest).await.unwrap();
        assert_eq!(payload(stream.next().await.unwrap()), (2, b"second".to_vec()));
        // The same read brought the third and the keepalive: no I/O needed.
        assert_eq!(payload(stream.next_buffered().unwrap().unwrap()), (3, b"third".to_vec()));
        match stream.next_buffered().unwrap() {
            Some(ReplicationEvent::Keepalive { wal_end, reply_requested }) => {
                assert_eq!((wal_end.0, reply_requested), (500, true));
            }
            other => panic!("not the keepalive: {other:?}"),
        }
        assert!(stream.next_buffered().unwrap().is_none());
        // A notice is skipped, and CopyDone ends the stream, buffered too.
        let mut tail = vec![b'N', 0, 0, 0, 4 + 9];
        tail.extend_from_slice(b"SNOTICE\0\0");
        tail.extend_from_slice(&xlog(4, b"fourth"));
        tail.extend_from_slice(&[b'c', 0, 0, 0, 4]);
        tokio::io::AsyncWriteExt::write_all(&mut server, &tail).await.unwrap();
        assert_eq!(payload(stream.next().await.unwrap()), (4, b"fourth".to_vec()));
        assert!(matches!(stream.next_buffered(), Ok(Some(ReplicationEvent::End))));
        assert!(stream.next_buffered().unwrap().is_none(), "nothing after the end");
        assert!(matches!(stream.next().await, Ok(ReplicationEvent::End)));
    }

    #[tokio::test]
    async fn a_length_no_message_has_is_refused_buffered_or_not() {
        let (mut stream, mut server) = stream_over_pipe();
        let mut bytes = xlog(1, b"first");
        bytes.extend_from_slice(&[b'd', 0, 0, 0, 2]);
        tokio::io::AsyncWriteExt::write_all(&mut server, &bytes).await.unwrap();
        assert!(matches!(stream.next().await, Ok(ReplicationEvent::XLogData { .. })));
        assert!(matches!(stream.next_buffered(), Err(ReplError::Protocol(m)) if m.contains("invalid length")));
        assert!(matches!(stream.next().await, Err(ReplError::Protocol(m)) if m.contains("invalid length")));
    }

    #[test]
    fn quoting() {
        assert_eq!(quote_ident(r#"a"b"#), r#""a""b""#);
        assert_eq!(quote_literal("it's"), "'it''s'");
        assert_eq!(quote_literal(&quote_ident("pub")), "'\"pub\"'");
    }
}
