//! `syncbridge-worker check`: is this database ready for syncbridge?
//!
//! Each finding says what was seen and, when it is wrong, what to do about it.

use std::fmt;

use serde::Serialize;

use crate::pg::dsn::Dsn;

/// The oldest server the worker supports (PG15: publication column lists).
pub const MIN_SERVER_VERSION_NUM: i32 = 150_000;

/// Outcome of one check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Ok,
    Warn,
    Fail,
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(match self {
            Verdict::Ok => "ok",
            Verdict::Warn => "warn",
            Verdict::Fail => "FAIL",
        })
    }
}

/// One line of the report.
#[derive(Debug, Clone, Serialize)]
pub struct Finding {
    /// What was checked (`server`, `wal_level`, `extension`, `replication`).
    pub check: &'static str,
    pub verdict: Verdict,
    /// What was seen.
    pub detail: String,
    /// What to do, when something is wrong.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
}

/// The whole report for one database.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// `user@host:port/db`, never with a password.
    pub target: String,
    pub server_version: String,
    pub server_version_num: i32,
    pub wal_level: String,
    /// The installed extension version, if any.
    pub extension_version: Option<String>,
    pub role: String,
    pub can_replicate: bool,
    pub findings: Vec<Finding>,
}

impl Report {
    /// True when nothing failed (warnings allowed).
    pub fn passed(&self) -> bool {
        self.findings.iter().all(|f| f.verdict != Verdict::Fail)
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "syncbridge-worker {} check of {}", crate::VERSION, self.target)?;
        for x in &self.findings {
            writeln!(f, "  {:<5} {:<12} {}", x.verdict, x.check, x.detail)?;
            if let Some(h) = &x.hint {
                writeln!(f, "        {:<12} hint: {h}", "")?;
            }
        }
        let fails = self.findings.iter().filter(|x| x.verdict == Verdict::Fail).count();
        if fails == 0 {
            write!(f, "all checks passed")
        } else {
            write!(f, "{fails} check(s) failed")
        }
    }
}

/// Why the checks could not run at all.
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    #[error("cannot connect to {target}: {source}")]
    Connect {
        target: String,
        #[source]
        source: crate::pg::dsn::ConnectError,
    },
    #[error("query against {target} failed: {}", crate::pg::sqlstate::Described(source))]
    Query {
        target: String,
        #[source]
        source: tokio_postgres::Error,
    },
}

/// Connects to `dsn` and runs every check.
pub async fn run(dsn: &Dsn) -> Result<Report, CheckError> {
    let target = dsn.to_string();
    let client = dsn.connect().await.map_err(|source| CheckError::Connect { target: target.clone(), source })?;
    let q = |source| CheckError::Query { target: target.clone(), source };

    let row = client
        .query_one(
            "SELECT current_setting('server_version'),
                    current_setting('server_version_num')::int,
                    current_setting('wal_level'),
                    current_user::text,
                    r.rolsuper, r.rolreplication,
                    (SELECT extversion FROM pg_extension WHERE extname = 'syncbridge'),
                    (SELECT default_version FROM pg_available_extensions WHERE name = 'syncbridge'),
                    current_setting('max_replication_slots')::int,
                    current_setting('max_wal_senders')::int
               FROM pg_roles r WHERE r.rolname = current_user",
            &[],
        )
        .await
        .map_err(q)?;
    let server_version: String = row.get(0);
    let server_version_num: i32 = row.get(1);
    let wal_level: String = row.get(2);
    let role: String = row.get(3);
    let rolsuper: bool = row.get(4);
    let rolreplication: bool = row.get(5);
    let extension_version: Option<String> = row.get(6);
    let available_version: Option<String> = row.get(7);
    let max_slots: i32 = row.get(8);
    let max_senders: i32 = row.get(9);
    // Failover slots (17 and later): which standbys the primary waits for,
    // and how many physical slots (standbys) there are.
    let failover = if server_version_num >= 170000 {
        let r = client
            .query_one(
                "SELECT current_setting('synchronized_standby_slots'),
                        (SELECT count(*) FROM pg_replication_slots WHERE slot_type = 'physical')",
                &[],
            )
            .await
            .map_err(q)?;
        Some((r.get::<_, String>(0), r.get::<_, i64>(1)))
    } else {
        None
    };
    drop(client);

    let mut findings = Vec::new();
    findings.push(if server_version_num >= MIN_SERVER_VERSION_NUM {
        ok("server", format!("PostgreSQL {server_version} ({server_version_num})"))
    } else {
        fail(
            "server",
            format!("PostgreSQL {server_version} is too old"),
            "syncbridge needs PostgreSQL 15 or newer (publication column lists)",
        )
    });
    findings.push(if wal_level == "logical" {
        ok("wal_level", "logical".to_owned())
    } else {
        fail(
            "wal_level",
            format!("wal_level is '{wal_level}', not 'logical'"),
            "set wal_level = logical in postgresql.conf (ALTER SYSTEM SET wal_level = logical) and restart the server",
        )
    });
    if max_slots < 1 || max_senders < 1 {
        findings.push(fail(
            "slots",
            format!("max_replication_slots = {max_slots}, max_wal_senders = {max_senders}"),
            "both must be at least 1 (syncbridge uses one slot and one WAL sender); restart after changing them",
        ));
    }
    findings.push(match (&extension_version, &available_version) {
        (Some(v), _) if v == crate::VERSION => ok("extension", format!("syncbridge {v} installed")),
        (Some(v), _) => Finding {
            check: "extension",
            verdict: Verdict::Warn,
            detail: format!("syncbridge {v} installed, this worker is {}", crate::VERSION),
            hint: Some("run ALTER EXTENSION syncbridge UPDATE, or use the worker that matches".to_owned()),
        },
        (None, Some(a)) => fail(
            "extension",
            format!("syncbridge is available ({a}) but not installed in this database"),
            "run CREATE EXTENSION syncbridge; in this database",
        ),
        (None, None) => fail(
            "extension",
            "syncbridge is not available on this server".to_owned(),
            "install it with `cargo pgrx install` (or `make install-ext`), then CREATE EXTENSION syncbridge",
        ),
    });
    findings.push(match failover {
        None => ok(
            "failover",
            "no failover slots before PostgreSQL 17: after a promotion the definitions go to error with the way back"
                .to_owned(),
        ),
        Some((waits_for, _)) if !waits_for.trim().is_empty() => ok(
            "failover",
            format!("failover slot; the primary and the worker wait for the standbys in synchronized_standby_slots ({waits_for})"),
        ),
        Some((_, 0)) => ok("failover", "failover slot; no physical standby slot on this server".to_owned()),
        Some((_, standbys)) => Finding {
            check: "failover",
            verdict: Verdict::Warn,
            detail: format!("{standbys} physical slot(s) but synchronized_standby_slots is empty"),
            hint: Some(
                "set synchronized_standby_slots to the standbys' physical slots, so that a promoted standby's copy of \
                 the slot is never ahead of its data (README: Failover)"
                    .to_owned(),
            ),
        },
    });
    let can_replicate = rolsuper || rolreplication;
    findings.push(if can_replicate {
        let why = if rolsuper { "superuser" } else { "REPLICATION attribute" };
        ok("replication", format!("role {role} may replicate ({why})"))
    } else {
        fail(
            "replication",
            format!("role {role} has neither REPLICATION nor superuser"),
            &format!("ALTER ROLE {role} REPLICATION; or run the worker as a role granted syncbridge_worker"),
        )
    });

    Ok(Report {
        target: dsn.to_string(),
        server_version,
        server_version_num,
        wal_level,
        extension_version,
        role,
        can_replicate,
        findings,
    })
}

fn ok(check: &'static str, detail: String) -> Finding {
    Finding { check, verdict: Verdict::Ok, detail, hint: None }
}

fn fail(check: &'static str, detail: String, hint: &str) -> Finding {
    Finding { check, verdict: Verdict::Fail, detail, hint: Some(hint.to_owned()) }
}
