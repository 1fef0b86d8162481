//! Issue 13, the worker's side: each attack of the audit, performed against
//! a real cluster and worker process. A `syncbridge_admin` controls a
//! target's secret reference and its URLs; none of that may make the worker
//! read or send anything its own policy (flags, environment) does not allow,
//! and nothing a hostile server answers may land in the database or the log,
//! stall the worker or crash it.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use syncbridge_tests::graph::{assert_target_equals_source, sync_once, worker_cmd, GraphEnv, SECRET_ENV};
use syncbridge_tests::graph_emulator::{EmulatorConfig, Fault};
use syncbridge_tests::ingest::prepare;
use syncbridge_tests::process::{run_cmd, signal, wait_with_limit, ChildGuard};
use syncbridge_tests::worker::{worker, LOOPBACK_ENV};
use syncbridge_tests::{cluster, TestDb};

/// A canary in the worker's environment: it must never leave the worker.
const CANARY: &str = "canary-7f3a9e1c-never-leaves";

/// How a [`Listener`] answers: status, content type, body (`{posted}` is
/// replaced by the request's body).
type Answer = (u16, &'static str, &'static str);

/// A tiny HTTP server on loopback that records every request it gets.
struct Listener {
    url: String,
    requests: Arc<Mutex<Vec<String>>>,
}

impl Listener {
    fn start(answer: Answer) -> Self {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        let url = format!("http://{}", l.local_addr().expect("addr"));
        let requests = Arc::new(Mutex::new(Vec::new()));
        let seen = requests.clone();
        std::thread::spawn(move || {
            for stream in l.incoming().flatten() {
                let seen = seen.clone();
                std::thread::spawn(move || serve(stream, answer, &seen));
            }
        });
        Self { url, requests }
    }

    fn requests(&self) -> Vec<String> {
        self.requests.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

fn serve(mut s: TcpStream, (status, ctype, body): Answer, seen: &Mutex<Vec<String>>) {
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let head_end = loop {
        match s.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
    let len: usize =
        head.lines().find_map(|l| l.strip_prefix("content-length:")).and_then(|v| v.trim().parse().ok()).unwrap_or(0);
    while buf.len() < head_end + len {
        match s.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    let request = String::from_utf8_lossy(&buf).into_owned();
    let posted = String::from_utf8_lossy(&buf[head_end..]).into_owned();
    seen.lock().unwrap_or_else(|p| p.into_inner()).push(request);
    let body = body.replace("{posted}", &posted);
    let _ = write!(
        s,
        "HTTP/1.1 {status} X\r\ncontent-type: {ctype}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
}

/// A database with table `t` (3 rows) and a graph target `sp` with this
/// secret reference and URLs; definition `t` provisioned and enabled.
fn setup(secret_ref: &str, authority_url: &str, base_url: &str) -> TestDb {
    let db = cluster().new_db("security");
    prepare(&db, "CREATE TABLE t (id int PRIMARY KEY, v text); INSERT INTO t VALUES (1, 'a'), (2, 'b'), (3, 'c');");
    let c = EmulatorConfig::default();
    let config = serde_json::json!({
        "tenant_id": c.tenant_id, "client_id": c.client_id, "site_id": "contoso.sharepoint.com,tests",
        "base_url": base_url, "authority_url": authority_url, "timeout_ms": 5000, "budget_per_min": 1_000_000,
    });
    db.psql(&format!(
        "SELECT sync.create_target('sp', kind => 'graph', config => '{config}', secret => '{secret_ref}')"
    ));
    db.psql("SELECT sync.define('t', source => 't', target => 'sp', list => 'T')");
    db.psql("SELECT sync.provision('t'), sync.enable('t')");
    db
}

/// `sync.targets.status` and `status_detail` of `sp`.
fn target_status(db: &TestDb) -> (String, String) {
    let s = db.psql("SELECT status || '|' || coalesce(status_detail, '') FROM sync.targets WHERE name = 'sp'");
    let (a, b) = s.split_once('|').expect("status|detail");
    (a.to_owned(), b.to_owned())
}

/// Everything the database holds that a worker wrote as text: target
/// status, export errors, run errors.
fn db_texts(db: &TestDb) -> String {
    db.psql(
        "SELECT concat_ws(E'\\n',
            (SELECT string_agg(coalesce(status_detail, ''), E'\\n') FROM sync.targets),
            (SELECT string_agg(coalesce(last_error, ''), E'\\n') FROM sync.pending_exports),
            (SELECT string_agg(coalesce(error, ''), E'\\n') FROM sync.runs))",
    )
}

/// `run --once` with `env`, loopback allowed or not; returns (success, log).
fn run_once_with(db: &TestDb, env: &[(&str, &str)], loopback: bool, extra: &[&str]) -> (bool, String) {
    let mut args = vec!["--once"];
    args.extend_from_slice(extra);
    let mut c = run_cmd(db, &args);
    c.env("SYNCBRIDGE_LOG", "debug").env(CANARY_ENV, CANARY);
    if !loopback {
        c.env_remove(LOOPBACK_ENV);
    }
    for (k, v) in env {
        c.env(k, v);
    }
    let child = c.stdout(Stdio::null()).stderr(Stdio::piped()).spawn().expect("start the worker");
    let out = wait_with_limit(child, Duration::from_secs(120));
    (out.status.success(), String::from_utf8_lossy(&out.stderr).into_owned())
}

const CANARY_ENV: &str = "SYNCBRIDGE_TEST_CANARY";

/// A running worker with `env` (loopback allowed or not) until its exporter
/// has refused the target or `l` has heard from it (at most 60 s), then
/// SIGTERM; returns its log (debug level).
fn run_until_refused_or_contacted(db: &TestDb, env: &[(&str, &str)], loopback: bool, l: &Listener) -> String {
    let mut c = run_cmd(db, &[]);
    c.env("SYNCBRIDGE_LOG", "debug").env(CANARY_ENV, CANARY);
    if !loopback {
        c.env_remove(LOOPBACK_ENV);
    }
    for (k, v) in env {
        c.env(k, v);
    }
    let (worker, log) = spawn_logged(c);
    let refused = || log.lock().unwrap_or_else(|p| p.into_inner()).contains("cannot export to this target");
    wait_until("the target refused or the listener contacted", Duration::from_secs(60), || {
        refused() || !l.requests().is_empty()
    });
    std::thread::sleep(Duration::from_millis(500));
    let (took, _) = sigterm_and_time(worker, Duration::from_secs(20));
    assert!(took < Duration::from_secs(10), "SIGTERM took {took:?}");
    std::thread::sleep(Duration::from_millis(200));
    let out = log.lock().unwrap_or_else(|p| p.into_inner()).clone();
    out
}

/// A folder removed when dropped.
struct TempDir(std::path::PathBuf);

impl TempDir {
    fn new(tag: &str) -> Self {
        let d = std::env::temp_dir().join(format!("sb-sec-{tag}-{}-{}", std::process::id(), rand::random::<u32>()));
        std::fs::create_dir_all(d.join("secrets")).expect("mkdir");
        Self(d)
    }

    fn secrets(&self) -> std::path::PathBuf {
        self.0.join("secrets")
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Starts `c` with its stderr collected by a thread (a full pipe would
/// stall a worker logging at debug level).
fn spawn_logged(mut c: Command) -> (ChildGuard, Arc<Mutex<String>>) {
    let mut child = c.stdout(Stdio::null()).stderr(Stdio::piped()).spawn().expect("start the worker");
    let log = Arc::new(Mutex::new(String::new()));
    let (mut err, sink) = (child.stderr.take().expect("stderr"), log.clone());
    std::thread::spawn(move || {
        let mut buf = [0u8; 8192];
        while let Ok(n) = err.read(&mut buf) {
            if n == 0 {
                break;
            }
            sink.lock().unwrap_or_else(|p| p.into_inner()).push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    });
    (ChildGuard::new(child), log)
}

fn wait_until(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// SIGTERM, then the time the worker takes to exit (killed after `limit`).
fn sigterm_and_time(mut child: ChildGuard, limit: Duration) -> (Duration, String) {
    signal(&child, libc::SIGTERM);
    let t = Instant::now();
    loop {
        if child.try_wait().expect("poll").is_some() {
            let took = t.elapsed();
            let mut log = String::new();
            if let Some(mut e) = child.stderr.take() {
                let _ = e.read_to_string(&mut log);
            }
            return (took, log);
        }
        if t.elapsed() > limit {
            return (t.elapsed(), String::from("(still running: killed)"));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

// ---------------------------------------------------------------------------
// Finding 2: secret references and URLs under the worker's policy.

#[test]
fn a_file_secret_outside_the_secrets_dir_is_never_read_nor_sent() {
    // The audit's attack: the worker's whole environment posted to a listener.
    let l = Listener::start((400, "text/plain", "no"));
    let db = setup("file:/proc/self/environ", &l.url, &format!("{}/v1.0", l.url));
    let log = run_until_refused_or_contacted(&db, &[], true, &l);
    assert!(l.requests().is_empty(), "the listener was contacted: {:?}", l.requests());
    let (status, detail) = target_status(&db);
    assert_eq!(status, "misconfigured", "{detail}");
    assert!(detail.contains("secrets directory"), "{detail}");
    assert!(!log.contains(CANARY) && !db_texts(&db).contains(CANARY));
}

#[test]
fn an_env_secret_without_the_prefix_is_never_read_nor_sent() {
    let l = Listener::start((400, "text/plain", "no"));
    let db = setup("env:PGPASSWORD", &l.url, &format!("{}/v1.0", l.url));
    let log = run_until_refused_or_contacted(&db, &[("PGPASSWORD", CANARY)], true, &l);
    assert!(l.requests().is_empty(), "the listener was contacted: {:?}", l.requests());
    let (status, detail) = target_status(&db);
    assert_eq!(status, "misconfigured", "{detail}");
    assert!(detail.contains("SYNCBRIDGE_SECRET_"), "{detail}");
    assert!(!log.contains(CANARY) && !db_texts(&db).contains(CANARY));
}

#[test]
fn a_url_the_policy_does_not_allow_never_gets_the_secret() {
    // An allowed secret, but URLs on loopback without --allow-loopback-targets.
    let l = Listener::start((400, "text/plain", "no"));
    let db = setup(&format!("env:{SECRET_ENV}"), &l.url, &format!("{}/v1.0", l.url));
    let log = run_until_refused_or_contacted(&db, &[(SECRET_ENV, CANARY)], false, &l);
    assert!(l.requests().is_empty(), "the listener was contacted: {:?}", l.requests());
    let (status, detail) = target_status(&db);
    assert_eq!(status, "misconfigured", "{detail}");
    assert!(detail.contains("--allow-loopback-targets"), "{detail}");
    assert!(!log.contains(CANARY));
    // And http to any other host is refused even with loopback allowed.
    db.psql(
        r#"UPDATE sync.targets SET config = config || '{"authority_url": "http://login.microsoftonline.com"}' WHERE name = 'sp'"#,
    );
    let log = run_until_refused_or_contacted(&db, &[(SECRET_ENV, CANARY)], true, &l);
    assert!(l.requests().is_empty(), "the listener was contacted: {:?}", l.requests());
    let (status, detail) = target_status(&db);
    assert_eq!(status, "misconfigured", "{detail}");
    assert!(detail.contains("https"), "{detail}");
    assert!(!log.contains(CANARY) && !db_texts(&db).contains(CANARY));
}

#[test]
fn a_fifo_secret_neither_hangs_the_worker_nor_holds_off_sigterm() {
    let dir = TempDir::new("fifo");
    let fifo = dir.secrets().join("graph");
    let c = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).expect("path");
    // SAFETY: mkfifo(3) on a NUL-terminated path we own.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0, "mkfifo");
    let l = Listener::start((400, "text/plain", "no"));
    let db = setup(&format!("file:{}", fifo.display()), &l.url, &format!("{}/v1.0", l.url));
    let mut cmd = run_cmd(&db, &[]);
    cmd.env("SYNCBRIDGE_SECRETS_DIR", dir.secrets());
    let worker = ChildGuard::new(cmd.stdout(Stdio::null()).stderr(Stdio::piped()).spawn().expect("worker"));
    wait_until("the target marked misconfigured", Duration::from_secs(60), || target_status(&db).0 == "misconfigured");
    assert!(target_status(&db).1.contains("not a regular file"), "{:?}", target_status(&db));
    let (took, log) = sigterm_and_time(worker, Duration::from_secs(15));
    assert!(took < Duration::from_secs(10), "SIGTERM took {took:?}:\n{log}");
    assert!(l.requests().is_empty());
}

#[test]
fn dev_zero_and_links_out_of_the_secrets_dir_are_refused() {
    let dir = TempDir::new("links");
    std::fs::write(dir.0.join("outside"), CANARY).expect("write");
    std::os::unix::fs::symlink(dir.0.join("outside"), dir.secrets().join("escape")).expect("link");
    std::os::unix::fs::symlink("/proc/self/environ", dir.secrets().join("environ")).expect("link");
    std::os::unix::fs::symlink("/dev/zero", dir.secrets().join("zero")).expect("link");
    let l = Listener::start((400, "text/plain", "no"));
    let secrets = dir.secrets().display().to_string();
    for reference in [
        "file:/dev/zero".to_owned(),
        format!("file:{secrets}/zero"),
        format!("file:{secrets}/escape"),
        format!("file:{secrets}/environ"),
        format!("file:{secrets}/../outside"),
    ] {
        let db = setup(&reference, &l.url, &format!("{}/v1.0", l.url));
        // /dev/zero read whole would take every byte of memory: bound the
        // worker's address space so today's code fails instead of the machine.
        let mut c = run_cmd(&db, &["--once"]);
        c.env(CANARY_ENV, CANARY).env("SYNCBRIDGE_SECRETS_DIR", &secrets);
        limit_memory(&mut c, 4 << 30);
        let out = wait_with_limit(
            c.stdout(Stdio::null()).stderr(Stdio::piped()).spawn().expect("worker"),
            Duration::from_secs(120),
        );
        let log = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{reference}: {:?}\n{log}", out.status);
        let (status, detail) = target_status(&db);
        assert_eq!(status, "misconfigured", "{reference}: {detail}");
        assert!(!log.contains(CANARY) && !db_texts(&db).contains(CANARY), "{reference}");
        // Five databases: free their slots (the cluster has 16 for all the tests).
        db.psql(
            "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE database = current_database()",
        );
    }
    assert!(l.requests().is_empty(), "the listener was contacted: {:?}", l.requests());
}

fn limit_memory(c: &mut Command, bytes: u64) {
    use std::os::unix::process::CommandExt;
    // SAFETY: setrlimit(2) between fork and exec touches no shared state.
    unsafe {
        c.pre_exec(move || {
            let lim = libc::rlimit { rlim_cur: bytes, rlim_max: bytes };
            if libc::setrlimit(libc::RLIMIT_AS, &lim) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

#[test]
fn a_file_secret_below_the_secrets_dir_is_used() {
    let env = GraphEnv::start(None);
    let dir = TempDir::new("ok");
    std::fs::write(dir.secrets().join("graph"), format!("{}\n", EmulatorConfig::default().client_secret))
        .expect("write");
    let db = setup(&format!("file:{}/graph", dir.secrets().display()), &env.emu.authority_url(), &env.emu.base_url());
    let (ok, log) = run_once_with(&db, &[], true, &["--secrets-dir", &dir.secrets().display().to_string()]);
    // (the flag; the other tests give the directory in SYNCBRIDGE_SECRETS_DIR)
    assert!(ok, "{log}");
    assert_eq!(target_status(&db).0, "ok");
    assert_target_equals_source(&env, &db, "t", &["T"]);
}

// ---------------------------------------------------------------------------
// Findings 3 and 6: nothing a server echoes reaches the database or the log.

/// A secret whose URL, form and JSON encodings all differ from it.
const SECRET: &str = "Sup3r+Secret/=&x y\"z";

fn assert_no_secret(what: &str, text: &str) {
    for needle in ["Sup3r+Secret", "Sup3r%2BSecret", "Sup3r%2bSecret", "Secret%2F%3D", "x+y%22z", "x%20y"] {
        assert!(!text.contains(needle), "{what} holds the secret ({needle}):\n{text}");
    }
}

#[test]
fn an_echoing_token_endpoint_leaves_no_secret_in_the_database_or_the_log() {
    // The posted form back as text, then inside a JSON refusal.
    for answer in [
        (400, "text/plain", "{posted}"),
        (401, "application/json", r#"{"error": "invalid_client", "error_description": "you sent {posted}"}"#),
    ] {
        let l = Listener::start(answer);
        let db = setup("env:SYNCBRIDGE_SECRET_ECHO", &l.url, &format!("{}/v1.0", l.url));
        // A running worker (with --once, the items behind the failed
        // provision would keep it waiting), its whole log at debug level.
        let mut c = run_cmd(&db, &[]);
        c.env("SYNCBRIDGE_LOG", "debug").env("SYNCBRIDGE_SECRET_ECHO", SECRET);
        let (worker, log) = spawn_logged(c);
        wait_until("the refused token request recorded", Duration::from_secs(60), || {
            db.psql("SELECT count(*) FROM sync.pending_exports WHERE last_error IS NOT NULL") != "0"
        });
        std::thread::sleep(Duration::from_millis(500));
        let (status, detail) = target_status(&db);
        let (took, _) = sigterm_and_time(worker, Duration::from_secs(20));
        assert!(took < Duration::from_secs(10), "SIGTERM took {took:?}");
        std::thread::sleep(Duration::from_millis(200));
        let log = log.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let req = l.requests();
        assert!(!req.is_empty() && req[0].contains("client_secret=Sup3r%2BSecret"), "the echo got the secret: {req:?}");
        assert_eq!(status, "auth_failed", "{detail}");
        assert!(detail.contains("token request refused"), "{detail}");
        if answer.0 == 401 {
            assert!(detail.contains("invalid_client: you sent") && detail.contains("[redacted]"), "{detail}");
        }
        let errors = db.psql("SELECT string_agg(last_error, E'\\n') FROM sync.pending_exports");
        assert!(errors.contains("token request refused"), "{errors}");
        assert_no_secret("the database", &db_texts(&db));
        assert_no_secret("the log", &log);
    }
}

#[test]
fn a_non_json_error_body_never_reaches_the_database_or_the_log() {
    const MARKER: &str = "internal-admin.corp.example 10.0.0.7 aws-metadata";
    let env = GraphEnv::start(None);
    let db = setup(&format!("env:{SECRET_ENV}"), &env.emu.authority_url(), &env.emu.base_url());
    db.psql(&format!("ALTER DATABASE \"{}\" SET sync.backoff_base_seconds = 1", db.name()));
    sync_once(&db); // the list and the three items
    db.psql("INSERT INTO t VALUES (4, 'd')");
    let page = format!("<html><body>{MARKER}</body></html>");
    env.emu.inject(Fault::Raw(400, page.clone()), 1);
    let (ok, log) = run_once_with(&db, &[(SECRET_ENV, "secret")], true, &[]);
    assert!(ok, "{log}");
    let err = db.psql("SELECT status || '|' || last_error FROM sync.pending_exports WHERE sync_key = '4'");
    assert!(err.starts_with("error|") && err.contains("HTTP 400"), "{err}");
    // A 502 page on every try of an envelope: retried, then delivered.
    db.psql("INSERT INTO t VALUES (5, 'e')");
    env.emu.inject(Fault::Raw(502, page), 4);
    let (ok, log2) = run_once_with(&db, &[(SECRET_ENV, "secret")], true, &[]);
    assert!(ok, "{log2}");
    let texts = db_texts(&db);
    assert!(log2.contains("HTTP 502"), "the 502s were met:\n{log2}");
    for (what, text) in [("the database", texts.as_str()), ("the log", &log), ("the log", &log2)] {
        assert!(!text.contains("internal-admin") && !text.contains("<html>"), "{what}:\n{text}");
    }
}

// ---------------------------------------------------------------------------
// Finding 9: hostile answers neither crash nor stall the worker.

#[test]
fn retry_after_nan_does_not_crash_the_exporter() {
    let env = GraphEnv::start(None);
    let db = setup(&format!("env:{SECRET_ENV}"), &env.emu.authority_url(), &env.emu.base_url());
    env.emu.inject(Fault::Throttle("NaN".into()), 2);
    let log = sync_once(&db);
    assert!(!log.contains("panicked"), "{log}");
    assert!(env.emu.stats().throttled >= 2);
    assert_target_equals_source(&env, &db, "t", &["T"]);
}

#[test]
fn retry_after_1e300_does_not_hold_off_sigterm() {
    let env = GraphEnv::start(None);
    let db = setup(&format!("env:{SECRET_ENV}"), &env.emu.authority_url(), &env.emu.base_url());
    env.emu.inject(Fault::Throttle("1e300".into()), 1);
    let worker =
        ChildGuard::new(worker_cmd(&db, &[]).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().expect("worker"));
    wait_until("the throttled request", Duration::from_secs(60), || env.emu.stats().throttled >= 1);
    std::thread::sleep(Duration::from_millis(500));
    let (took, log) = sigterm_and_time(worker, Duration::from_secs(20));
    assert!(took < Duration::from_secs(5), "SIGTERM took {took:?}:\n{log}");
    assert!(!log.contains("panicked"), "{log}");
}

#[test]
fn an_expires_in_of_2_pow_64_minus_1_does_not_overflow() {
    let env = GraphEnv::start_with(EmulatorConfig { token_lifetime_secs: u64::MAX, ..EmulatorConfig::default() });
    let db = setup(&format!("env:{SECRET_ENV}"), &env.emu.authority_url(), &env.emu.base_url());
    let log = sync_once(&db);
    assert!(!log.contains("panicked"), "{log}");
    assert_target_equals_source(&env, &db, "t", &["T"]);
}

// ---------------------------------------------------------------------------
// Finding 12: list names cannot break or steer the adoption `$filter`.

#[test]
fn list_names_with_ampersand_or_percent_27_are_adopted_exactly() {
    let env = GraphEnv::start(None);
    // Lists that exist already (provisioning meets 409 and adopts): "R&D",
    // a list the attack aims at, and the attacker's name for it.
    const STEER: &str = "x%27 or displayName eq %27Payroll";
    let site_lists = format!("{}/sites/contoso.sharepoint.com,tests/lists", env.emu.base_url());
    let token_url = format!("{}/tenant/oauth2/v2.0/token", env.emu.authority_url());
    let mut ids = std::collections::HashMap::new();
    env.block_on(async {
        let http = reqwest::Client::new();
        let c = EmulatorConfig::default();
        let form = [
            ("grant_type", "client_credentials"),
            ("client_id", c.client_id.as_str()),
            ("client_secret", c.client_secret.as_str()),
            ("scope", "https://graph.microsoft.com/.default"),
        ];
        let tok: serde_json::Value =
            http.post(&token_url).form(&form).send().await.expect("token").json().await.expect("json");
        let tok = tok["access_token"].as_str().expect("access_token").to_owned();
        for name in ["R&D", "Payroll", STEER] {
            let body = serde_json::json!({"displayName": name, "list": {"template": "genericList"},
                "columns": [{"name": "SyncKey", "text": {}, "indexed": true}]});
            let r = http.post(&site_lists).bearer_auth(&tok).json(&body).send().await.expect("create list");
            assert_eq!(r.status().as_u16(), 201, "creating {name}");
            let v: serde_json::Value = r.json().await.expect("json");
            ids.insert(name, v["id"].as_str().expect("id").to_owned());
        }
    });
    let db = setup(&format!("env:{SECRET_ENV}"), &env.emu.authority_url(), &env.emu.base_url());
    db.psql("CREATE TABLE u (id int PRIMARY KEY, v text); INSERT INTO u VALUES (1, 'x')");
    db.psql("SELECT sync.define('rd', source => 't', target => 'sp', list => 'R&D')");
    db.psql(&format!("SELECT sync.define('steer', source => 'u', target => 'sp', list => '{STEER}')"));
    // Only Title (every list has it): the adopted lists need no other column.
    db.psql("SELECT sync.map('rd', 'v', 'Title'), sync.map('steer', 'v', 'Title')");
    db.psql("SELECT sync.provision('rd'), sync.enable('rd'), sync.provision('steer'), sync.enable('steer')");
    let worker =
        ChildGuard::new(worker_cmd(&db, &[]).stdout(Stdio::null()).stderr(Stdio::null()).spawn().expect("worker"));
    let count =
        |list: &str| env.emu.lists().iter().filter(|l| l.display_name == list).map(|l| l.items.len()).sum::<usize>();
    wait_until("the items in R&D and in the steering list", Duration::from_secs(60), || {
        count("R&D") == 3 && count(STEER) == 1
    });
    let (took, _) = sigterm_and_time(worker, Duration::from_secs(20));
    assert!(took < Duration::from_secs(10), "SIGTERM took {took:?}");
    let adopted = db.psql(
        "SELECT string_agg(definition || '=' || remote_id, ' ' ORDER BY definition) FROM sync.target_list_ids('sp')
          WHERE definition IN ('rd', 'steer')",
    );
    assert_eq!(adopted, format!("rd={} steer={}", ids["R&D"], ids[STEER]), "the lists adopted");
    let items = env.items();
    assert_eq!(items.get("Payroll").map_or(0, |i| i.len()), 0, "nothing was written into Payroll");
    assert_eq!(items[STEER].len(), 1);
    assert_target_equals_source(&env, &db, "rd", &["R&D"]);
}

// ---------------------------------------------------------------------------
// Finding 14: a password on the command line is visible in /proc.

#[test]
fn a_password_in_dsn_on_the_command_line_is_warned_about() {
    let dsn = "host=127.0.0.1 port=1 user=u password=hunter2-pw dbname=d connect_timeout=2";
    let out = worker().args(["check", "--dsn", dsn]).env_remove("PGPASSWORD").output().expect("check");
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(log.contains("/proc/<pid>/cmdline") && log.contains("SYNCBRIDGE_DSN"), "{log}");
    assert!(!log.contains("hunter2-pw"), "{log}");
    // The same string from the environment, or no password in it: no warning.
    let out = worker().args(["check"]).env("SYNCBRIDGE_DSN", dsn).output().expect("check");
    assert!(!String::from_utf8_lossy(&out.stderr).contains("cmdline"));
    let out = worker()
        .args(["check", "--dsn", "host=127.0.0.1 port=1 user=u dbname=d connect_timeout=2"])
        .env("PGPASSWORD", "x")
        .output()
        .expect("check");
    assert!(!String::from_utf8_lossy(&out.stderr).contains("cmdline"));
}
