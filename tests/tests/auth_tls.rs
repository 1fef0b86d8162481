//! Issue 4: the worker's two connections (tokio-postgres and the replication
//! transport) authenticate with SCRAM-SHA-256 and MD5, and speak TLS with
//! libpq's sslmode semantics, against a cluster whose pg_hba.conf demands
//! each (so a connection that fell back to something weaker is refused).

use std::process::Stdio;
use std::sync::OnceLock;
use std::time::Duration;

use syncbridge_tests::ingest::prepare;
use syncbridge_tests::process::wait_with_limit;
use syncbridge_tests::{worker::worker, Cluster, ClusterOptions, TestDb};

struct Pki {
    ca: String,
    other_ca: String,
}

fn pki_and_cluster() -> &'static (Pki, Cluster) {
    static C: OnceLock<(Pki, Cluster)> = OnceLock::new();
    C.get_or_init(|| {
        use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
        let ca = |cn: &str| {
            let key = KeyPair::generate().expect("CA key");
            let mut p = CertificateParams::new(Vec::<String>::new()).expect("CA params");
            p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            p.distinguished_name.push(DnType::CommonName, cn);
            let cert = p.self_signed(&key).expect("CA certificate");
            (cert, key)
        };
        let (ca_cert, ca_key) = ca("syncbridge test CA");
        let (other_cert, _) = ca("some other CA");
        // The server's certificate names only "localhost", not 127.0.0.1.
        let srv_key = KeyPair::generate().expect("server key");
        let srv = CertificateParams::new(vec!["localhost".to_owned()])
            .expect("server params")
            .signed_by(&srv_key, &ca_cert, &ca_key)
            .expect("server certificate");
        let cluster = Cluster::start(ClusterOptions {
            conf: vec![
                "wal_level = logical".into(),
                "ssl = on".into(),
                "ssl_cert_file = 'server.crt'".into(),
                "ssl_key_file = 'server.key'".into(),
            ],
            hba: vec![
                "hostssl   all sb_tls   127.0.0.1/32 trust".into(),
                "hostnossl all sb_tls   127.0.0.1/32 reject".into(),
                "host      all sb_scram 127.0.0.1/32 scram-sha-256".into(),
                "host      all sb_md5   127.0.0.1/32 md5".into(),
            ],
            files: vec![("server.crt".into(), srv.pem()), ("server.key".into(), srv_key.serialize_pem())],
        });
        // Removed with the cluster's folder when the test binary exits.
        let dir = cluster.dir().join("pki");
        std::fs::create_dir_all(&dir).expect("pki folder");
        let write = |name: &str, pem: String| {
            let p = dir.join(name);
            std::fs::write(&p, pem).expect("write a certificate");
            p.display().to_string()
        };
        let pki = Pki { ca: write("ca.crt", ca_cert.pem()), other_ca: write("other-ca.crt", other_cert.pem()) };
        cluster.psql(
            "postgres",
            "SET password_encryption = 'scram-sha-256'; CREATE ROLE sb_scram LOGIN REPLICATION PASSWORD 'scram pw';
             SET password_encryption = 'md5'; CREATE ROLE sb_md5 LOGIN REPLICATION PASSWORD 'md5-pw';
             CREATE ROLE sb_tls LOGIN REPLICATION;",
        );
        (pki, cluster)
    })
}

fn db(hint: &str) -> TestDb {
    let (_, c) = pki_and_cluster();
    // SAFETY of 'static: the cluster lives in a static OnceLock.
    let c: &'static Cluster = c;
    let db = c.new_db(hint);
    prepare(
        &db,
        "CREATE TABLE items (id int PRIMARY KEY, title text); INSERT INTO items VALUES (1, 'one'), (2, 'two');",
    );
    db.psql("SELECT sync.define('items', source => 'items', target => 't', list => 'Items')");
    db.psql("SELECT sync.enable('items')");
    // Role grants are cluster-wide: two at once collide.
    static GRANT: std::sync::Mutex<()> = std::sync::Mutex::new(());
    {
        let _one = GRANT.lock().unwrap_or_else(|p| p.into_inner());
        db.psql("GRANT syncbridge_worker TO sb_scram, sb_md5, sb_tls");
    }
    db.psql("GRANT SELECT ON items TO sb_scram, sb_md5, sb_tls");
    db
}

/// Runs `run --once` with the given connection string: (exit code, log).
fn run(dsn: &str, env_password: Option<&str>) -> (Option<i32>, String) {
    let mut c = worker();
    c.args(["run", "--once", "--status-ms", "200", "--dsn", dsn]).env_remove("PGPASSWORD");
    if let Some(pw) = env_password {
        c.env("PGPASSWORD", pw);
    }
    let out = wait_with_limit(
        c.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("start the worker"),
        Duration::from_secs(60),
    );
    (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
}

fn dsn(db: &TestDb, host: &str, rest: &str) -> String {
    format!("host={host} port={} dbname={} {rest}", db.cluster().port(), db.name())
}

#[test]
fn scram_and_md5_passwords_authenticate_both_connections() {
    if !syncbridge_tests::cluster::server_has_ssl() {
        eprintln!("skipped: this PostgreSQL build has no SSL (the TLS tests run on the Debian 15 build)");
        return;
    }
    let db = db("auth");
    // The roles really hold SCRAM and MD5 verifiers.
    let kinds = db.psql(
        "SELECT string_agg(rolname || '=' || split_part(rolpassword, '$', 1), ' ' ORDER BY rolname)
           FROM pg_authid WHERE rolname IN ('sb_scram', 'sb_md5')",
    );
    assert!(kinds.starts_with("sb_md5=md5") && kinds.ends_with("sb_scram=SCRAM-SHA-256"), "{kinds}");

    let (code, log) = run(&dsn(&db, "127.0.0.1", "user=sb_scram password='scram pw' sslmode=disable"), None);
    assert_eq!(code, Some(0), "SCRAM in clear text:\n{log}");
    assert!(log.contains("created the slot"), "{log}");
    let (code, log) = run(&dsn(&db, "127.0.0.1", "user=sb_md5 password=md5-pw sslmode=disable"), None);
    assert_eq!(code, Some(0), "MD5:\n{log}");
    assert!(log.contains("resuming the slot"), "{log}");
    // PGPASSWORD, as libpq, for both connections.
    let (code, log) = run(&dsn(&db, "127.0.0.1", "user=sb_scram sslmode=disable"), Some("scram pw"));
    assert_eq!(code, Some(0), "PGPASSWORD:\n{log}");

    // A wrong or missing password is a clear, permanent error (exit 1).
    let (code, log) = run(&dsn(&db, "127.0.0.1", "user=sb_scram password=wrong sslmode=disable"), None);
    assert_eq!(code, Some(1), "{log}");
    assert!(log.contains("password authentication failed for user \"sb_scram\""), "{log}");
    assert!(!log.contains("wrong"), "the password leaked into the log:\n{log}");
    let (code, log) = run(&dsn(&db, "127.0.0.1", "user=sb_md5 sslmode=disable"), None);
    assert_eq!(code, Some(1), "{log}");
    assert!(log.contains("password"), "{log}");
    // The work was done: the two rows were staged.
    assert_eq!(db.psql("SELECT count(*) FROM sync.pending_exports"), "2");
}

#[test]
fn tls_follows_sslmode_as_libpq_does() {
    if !syncbridge_tests::cluster::server_has_ssl() {
        eprintln!("skipped: this PostgreSQL build has no SSL (the TLS tests run on the Debian 15 build)");
        return;
    }
    let (pki, _) = pki_and_cluster();
    let db = db("tls");
    let ca = &pki.ca;
    // sb_tls may only connect over TLS (hostnossl … reject).
    let (code, log) = run(&dsn(&db, "127.0.0.1", "user=sb_tls sslmode=disable"), None);
    assert_eq!(code, Some(1), "{log}");
    assert!(log.contains("no encryption"), "{log}");

    for (what, host, rest) in [
        ("prefer (the default)", "127.0.0.1", String::new()),
        ("require, no verification", "127.0.0.1", "sslmode=require".to_owned()),
        ("verify-ca ignores the name", "127.0.0.1", format!("sslmode=verify-ca sslrootcert={ca}")),
        ("verify-full with the right name", "localhost", format!("sslmode=verify-full sslrootcert={ca}")),
    ] {
        let (code, log) = run(&dsn(&db, host, &format!("user=sb_tls {rest}")), None);
        assert_eq!(code, Some(0), "{what}:\n{log}");
    }
    // SCRAM over TLS too.
    let (code, log) = run(
        &dsn(&db, "localhost", &format!("user=sb_scram password='scram pw' sslmode=verify-full sslrootcert={ca}")),
        None,
    );
    assert_eq!(code, Some(0), "SCRAM over TLS:\n{log}");

    // Verification failures are refused, naming the cause.
    let (code, log) = run(&dsn(&db, "127.0.0.1", &format!("user=sb_tls sslmode=verify-full sslrootcert={ca}")), None);
    assert_eq!(code, Some(1), "{log}");
    assert!(log.contains("certificate not valid for name \"127.0.0.1\""), "{log}");
    let other = &pki.other_ca;
    let (code, log) = run(&dsn(&db, "localhost", &format!("user=sb_tls sslmode=verify-ca sslrootcert={other}")), None);
    assert_eq!(code, Some(1), "{log}");
    assert!(log.contains("UnknownIssuer"), "{log}");
    let (code, log) =
        run(&dsn(&db, "localhost", "user=sb_tls sslmode=verify-full sslrootcert=/nonexistent/ca.pem"), None);
    assert_eq!(code, Some(1), "{log}");
    assert!(log.contains("/nonexistent/ca.pem") && log.contains("sslrootcert"), "{log}");
}
