//! Helpers for tests that run the worker's ingest against a test database.

use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::worker::worker;
use crate::TestDb;

/// Makes `db` ready for streaming: its own slot name (slots are cluster-wide),
/// a Graph target `t`, and the given definitions' tables created by `ddl`.
pub fn prepare(db: &TestDb, ddl: &str) {
    db.psql(&format!("ALTER DATABASE \"{0}\" SET sync.slot_name = '{0}'", db.name()));
    db.psql(ddl);
    db.psql(
        "SELECT sync.create_target('t', kind => 'graph', config => '{\"tenant_id\": \"x\", \"client_id\": \"y\", \"site_id\": \"z\"}')",
    );
}

/// The worker's `run` command for `db`, with short batch and status intervals.
pub fn run_cmd(db: &TestDb, extra: &[&str]) -> Command {
    let mut c = worker();
    c.args(["run", "--dsn", &db.dsn(), "--batch-ms", "50", "--status-ms", "200"]).args(extra);
    c.env("SYNCBRIDGE_LOG", std::env::var("SYNCBRIDGE_LOG").unwrap_or_else(|_| "info".into()));
    c
}

/// Runs `run --once` to completion (at most `limit`), returning its output.
pub fn run_once(db: &TestDb, extra: &[&str], limit: Duration) -> Output {
    let mut args = vec!["--once"];
    args.extend_from_slice(extra);
    let child = run_cmd(db, &args).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("start the worker");
    wait_with_limit(child, limit)
}

/// Waits for a child, killing it (and failing) after `limit`. Its stdout
/// and stderr are read meanwhile: a child writing more than a pipe holds
/// would otherwise block on its next log line.
pub fn wait_with_limit(child: impl Into<ChildGuard>, limit: Duration) -> Output {
    use std::io::Read;
    let mut child = child.into().into_inner();
    let drain = |pipe: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut p) = pipe {
                let _ = p.read_to_end(&mut buf);
            }
            buf
        })
    };
    let out = drain(child.stdout.take().map(|p| Box::new(p) as Box<dyn Read + Send>));
    let err = drain(child.stderr.take().map(|p| Box::new(p) as Box<dyn Read + Send>));
    let deadline = Instant::now() + limit;
    let (status, timed_out) = loop {
        match child.try_wait().expect("poll the worker") {
            Some(status) => break (status, false),
            None if Instant::now() > deadline => {
                let _ = child.kill();
                break (child.wait().expect("reap the worker"), true);
            }
            None => std::thread::sleep(Duration::from_millis(50)),
        }
    };
    let stdout = out.join().unwrap_or_default();
    let stderr = err.join().unwrap_or_default();
    if timed_out {
        panic!("the worker did not finish within {limit:?}\nstderr:\n{}", String::from_utf8_lossy(&stderr));
    }
    Output { status, stdout, stderr }
}

/// Runs `--once` and asserts success; returns stderr (the log).
pub fn run_once_ok(db: &TestDb) -> String {
    let out = run_once(db, &[], Duration::from_secs(120));
    let log = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "worker failed ({:?}):\n{log}", out.status);
    log
}

/// Sends a signal to a child process.
pub fn signal(child: &Child, sig: i32) {
    // SAFETY: kill(2) on a pid we own; no memory is involved.
    let rc = unsafe { libc::kill(child.id() as i32, sig) };
    assert_eq!(rc, 0, "kill({}, {sig}) failed", child.id());
}

/// The open pending exports of a definition as `(sync_key, op)` sorted by key.
pub fn open_exports(db: &TestDb, definition: &str) -> Vec<(String, String)> {
    let out = db.psql(&format!(
        "SELECT e.sync_key || '|' || e.op FROM sync.pending_exports e JOIN sync.definitions d ON d.id = e.definition_id
          WHERE d.name = '{definition}' AND e.status IN ('pending', 'awaiting_approval', 'failed', 'error')
          ORDER BY e.sync_key COLLATE \"C\""
    ));
    out.lines()
        .filter(|l| !l.is_empty())
        .map(|l| {
            let (k, op) = l.split_once('|').expect("key|op");
            (k.to_owned(), op.to_owned())
        })
        .collect()
}

/// Plays a target that takes everything: claims and completes every open
/// export of `target` (1,000 at a time), returning how many were completed.
pub fn complete_all(db: &TestDb, target: &str) -> u64 {
    let mut total = 0;
    loop {
        let n: u64 = db
            .psql(&format!(
                "WITH c AS (SELECT * FROM sync.claim('{target}', 1000, worker => 'test'))
                 SELECT exported FROM sync.complete((SELECT coalesce(jsonb_agg(jsonb_build_object(
                   'id', id, 'ok', true, 'target_id', 'i' || sync_key)), '[]') FROM c))"
            ))
            .parse()
            .expect("a count");
        if n == 0 {
            return total;
        }
        total += n;
    }
}

/// A child process killed (SIGKILL) when dropped, so that a failing test never
/// leaves a worker behind retrying against a stopped cluster.
pub struct ChildGuard(Option<Child>);

impl ChildGuard {
    /// Guards `child`.
    pub fn new(child: Child) -> Self {
        Self(Some(child))
    }

    /// The child, no longer guarded.
    pub fn into_inner(mut self) -> Child {
        self.0.take().expect("guarded child")
    }
}

impl std::ops::Deref for ChildGuard {
    type Target = Child;
    fn deref(&self) -> &Child {
        self.0.as_ref().expect("guarded child")
    }
}

impl std::ops::DerefMut for ChildGuard {
    fn deref_mut(&mut self) -> &mut Child {
        self.0.as_mut().expect("guarded child")
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl From<Child> for ChildGuard {
    fn from(child: Child) -> Self {
        Self::new(child)
    }
}
