//! Child processes in tests: a guard that kills a child when dropped,
//! waiting with a time limit, signals, and running the worker's `run`
//! command against a test database.

use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::worker::worker;
use crate::TestDb;

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

/// Runs `--once` and asserts success; returns stderr (the log).
pub fn run_once_ok(db: &TestDb) -> String {
    let out = run_once(db, &[], Duration::from_secs(120));
    let log = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "worker failed ({:?}):\n{log}", out.status);
    log
}

/// Runs a worker command to its end, within `SYNCBRIDGE_SYNC_LIMIT_S`
/// seconds (default 300), and asserts success; returns its log (stderr).
pub fn run_to_end(mut cmd: Command) -> String {
    let child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("start the worker");
    let limit = std::env::var("SYNCBRIDGE_SYNC_LIMIT_S").ok().and_then(|s| s.parse().ok()).unwrap_or(300);
    let out = wait_with_limit(child, Duration::from_secs(limit));
    let log = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "worker failed ({:?}):\n{log}", out.status);
    log
}

/// Starts `cmd` with its output discarded, guarded: killed when dropped.
pub fn spawn_quiet(mut cmd: Command) -> ChildGuard {
    ChildGuard::new(cmd.stdout(Stdio::null()).stderr(Stdio::null()).spawn().expect("start the worker"))
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

/// Sends a signal to a child process.
pub fn signal(child: &Child, sig: i32) {
    // SAFETY: kill(2) on a pid we own; no memory is involved.
    let rc = unsafe { libc::kill(child.id() as i32, sig) };
    assert_eq!(rc, 0, "kill({}, {sig}) failed", child.id());
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

/// For the demo servers (`tracker-emulator`, `webhook-receiver`): prints
/// `banner`, writes `port` to `port_file` when given (write then rename: a
/// script polling for it never reads it half-written), then waits for
/// SIGTERM or SIGINT (registered first: none is missed).
pub async fn announce_and_wait(banner: &str, port: u16, port_file: Option<&str>) -> Result<(), String> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).map_err(|e| e.to_string())?;
    let mut int = signal(SignalKind::interrupt()).map_err(|e| e.to_string())?;
    println!("{banner}");
    if let Some(path) = port_file {
        let tmp = format!("{path}.tmp");
        std::fs::write(&tmp, format!("{port}\n"))
            .and_then(|()| std::fs::rename(&tmp, path))
            .map_err(|e| format!("{path}: {e}"))?;
    }
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    Ok(())
}
