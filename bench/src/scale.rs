//! Scenario 10 (issue 21, item 5): scale.
//!
//! - (a) the initial backfill of a big table into pending exports (`run
//!   --once --no-export`) against `COPY (SELECT * FROM t) TO STDOUT` of the
//!   same table, and whether the progress and ETA the backfill records
//!   (`sync.status.backfill_progress`) were right at about 25% and 50%;
//! - (b) `sync.claim` with a big backlog against the same with a small one;
//! - (c) 50 definitions (50 tables) on one slot: decode + stage of a
//!   workload spread across them against the same workload on one.
//!
//! Every target is a Graph target no worker sends to (`--no-export`, or the
//! bench plays the target): nothing here waits on HTTP.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::Value;
use syncbridge_tests::cluster::pg_bindir;
use syncbridge_tests::ingest::prepare;
use syncbridge_tests::process::run_cmd;
use syncbridge_tests::{Cluster, TestDb};

use super::{median, timed, worker_decode, Figure, Sizes};

/// Claims per measurement of (b), and exports per claim (the Graph
/// adapter's `$batch` size).
const CLAIMS: usize = 50;
const CLAIM_SIZE: u64 = 20;
/// Definitions on the slot in (c).
const DEFINITIONS: u64 = 50;
/// Rows per transaction of (c)'s workload.
const ROWS_PER_TX: u64 = 100;

/// A new database with `rows` rows in table `name` (bigint key, a short text,
/// an int), analyzed, and an enabled definition of it on the fake target
/// `t` (nothing staged yet: its backfill is pending).
fn big_table(cluster: &'static Cluster, hint: &str, name: &str, rows: u64) -> TestDb {
    let db = cluster.new_db(hint);
    prepare(
        &db,
        &format!(
            "CREATE TABLE {name} (id bigint PRIMARY KEY, title text, qty int);
             INSERT INTO {name} SELECT g, 'row ' || g, g FROM generate_series(1, {rows}) g"
        ),
    );
    // A table in production has statistics (autovacuum): the backfill's
    // total comes from them.
    db.psql(&format!("VACUUM ANALYZE {name}"));
    db.psql(&format!("SELECT sync.define('{name}', source => '{name}', target => 't', list => '{name}')"));
    db.psql(&format!("SELECT sync.enable('{name}')"));
    db
}

/// Drops `db` and its slot (the big tables must not outlive their scenario).
fn drop_db(cluster: &'static Cluster, db: TestDb) {
    let name = db.name().to_owned();
    cluster.psql(
        "postgres",
        &format!(
            "SELECT count(pg_drop_replication_slot(slot_name)) FROM pg_replication_slots WHERE database = '{name}' AND NOT active"
        ),
    );
    drop(db);
    // (TestDb leaves its database behind for inspection; these are too big.)
    cluster.psql("postgres", &format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"));
}

/// One sample of the backfill's recorded progress: when the step that
/// recorded it ended (the server's clock: the ETA is as of then), and rows
/// done, rows total, ETA in seconds and the recent rate as recorded.
#[derive(Debug, Clone, Copy)]
struct Sample {
    at: f64,
    done: f64,
    total: f64,
    eta: f64,
    rate: f64,
}

/// The backfill's recorded progress (what `sync.status.backfill_progress`
/// shows), with the server's clock; None before the first chunk.
fn progress(db: &TestDb, name: &str) -> Result<Option<Sample>> {
    let row = db.psql(&format!(
        "SELECT extract(epoch FROM (position ->> 'step_at')::timestamptz) || '|' || coalesce(position::text, '')
           FROM sync.cursors c JOIN sync.definitions d ON d.id = c.definition_id
          WHERE c.kind = 'backfill' AND d.name = '{name}'"
    ));
    let Some((at, pos)) = row.split_once('|') else { return Ok(None) };
    let pos: Value = serde_json::from_str(pos).context("backfill position")?;
    let num = |k: &str| pos.get(k).and_then(Value::as_f64).unwrap_or(0.0);
    Ok(Some(Sample {
        at: at.parse()?,
        done: num("rows_done"),
        total: num("rows_total"),
        eta: num("eta_s"),
        rate: num("recent_rate_per_s"),
    }))
}

/// Disk the backfill of one row needs at most, in bytes: the table (~75),
/// its pending export with the queue's indexes (~330, measured) and the WAL
/// the slot holds until the backfill is streamed past (~400), rounded up.
const BACKFILL_BYTES_PER_ROW: u64 = 1_000;

/// Free bytes on the file system holding `path`.
fn free_bytes(path: &std::path::Path) -> Result<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())?;
    // SAFETY: a zeroed statvfs is a valid out-parameter.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: a NUL-terminated path and a valid pointer.
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        bail!("statvfs {}: {}", path.display(), std::io::Error::last_os_error());
    }
    Ok(st.f_bavail as u64 * st.f_frsize as u64)
}

/// Scenario 10 (a): the backfill rate against COPY, and its progress and ETA.
fn backfill(cluster: &'static Cluster, sizes: &Sizes, out: &mut Vec<Figure>) -> Result<()> {
    let n = sizes.scale_rows;
    let (free, need) = (free_bytes(cluster.dir())?, n * BACKFILL_BYTES_PER_ROW);
    if free < need {
        bail!(
            "scenario 10 needs about {} GiB free next to the cluster ({}), {} GiB are",
            need >> 30,
            cluster.dir().display(),
            free >> 30
        );
    }
    let t = Instant::now();
    let db = big_table(cluster, "bench scale", "big", n);
    let bytes = db.psql("SELECT pg_size_pretty(pg_total_relation_size('big'))");
    eprintln!("  {n} rows ({bytes}) written in {:.1} s", t.elapsed().as_secs_f64());
    // The reference: the whole table through COPY to a client that drops it.
    let mut copy = Command::new(pg_bindir().join("psql"));
    copy.args(["-X", "-q", "-d", &db.dsn(), "-c", "COPY (SELECT * FROM big) TO STDOUT"]);
    let (copy_secs, _) = timed(copy)?;
    // The backfill, its recorded progress sampled every 0.1 s.
    let mut worker = run_cmd(&db, &["--once", "--no-export"]);
    worker.env("SYNCBRIDGE_LOG", "warn").stdout(Stdio::null()).stderr(Stdio::null());
    let started = Instant::now();
    let mut child = worker.spawn()?;
    let (mut at25, mut at50): (Option<Sample>, Option<Sample>) = (None, None);
    let mut trail: Vec<Sample> = Vec::new();
    let status = loop {
        if let Some(s) = child.try_wait()? {
            break s;
        }
        if let Some(s) = progress(&db, "big")? {
            if trail.last().is_none_or(|l| l.at != s.at) {
                trail.push(s);
            }
            let true_share = s.done / n as f64;
            if at25.is_none() && true_share >= 0.25 {
                at25 = Some(s);
            }
            if at50.is_none() && true_share >= 0.5 {
                at50 = Some(s);
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let secs = started.elapsed().as_secs_f64();
    if !status.success() {
        bail!("the backfill (run --once --no-export) failed: {status}");
    }
    let end: Vec<f64> = db
        .psql(
            "SELECT concat_ws('|', extract(epoch FROM (position->>'finished_at')::timestamptz),
                              extract(epoch FROM (position->>'started_at')::timestamptz), position->>'rows_done')
               FROM sync.cursors WHERE kind = 'backfill'",
        )
        .split('|')
        .filter_map(|x| x.parse().ok())
        .collect();
    let staged: u64 = db.psql("SELECT count(*) FROM sync.pending_exports").parse()?;
    let deferred: u64 = db.psql("SELECT coalesce(sum(n), 0) FROM sync.deferred_keys").parse()?;
    if staged + deferred != n || end.len() != 3 {
        bail!("the backfill staged {staged} exports and deferred {deferred} keys of {n} rows (end: {end:?})");
    }
    let (finished, begun) = (end[0], end[1]);
    // What a DBA watching sync.status would have seen.
    for s in &trail {
        eprintln!(
            "  at {:5.2} s: {:4.1}% done, recent rate {:9.0} rows/s, ETA {:5.1} s, actually {:5.1} s",
            s.at - begun,
            s.done / n as f64 * 100.0,
            s.rate,
            s.eta,
            finished - s.at
        );
    }
    let queue = db.psql("SELECT pg_size_pretty(pg_total_relation_size('sync.pending_exports'))");
    let (rate, copy_rate) = (n as f64 / secs, n as f64 / copy_secs);
    out.push(Figure {
        scenario: "10 scale",
        name: format!("initial backfill rate, {n} rows"),
        value: rate.round(),
        unit: "rows/s",
        goal: ">= 0.25 of COPY".into(),
        met: rate >= 0.25 * copy_rate,
        reference: Some(copy_rate.round()),
        ratio: Some((rate / copy_rate * 1000.0).round() / 1000.0),
        note: Some(format!(
            "run --once --no-export from start to exit ({secs:.1} s; the backfill's own record: {:.1} s): \
             {staged} exports pending ({queue} with indexes) and {deferred} keys deferred (sync.defer_after, \
             default: staged as the queue drains), a {bytes} table (bigint key, text, int; analyzed); reference: psql COPY (SELECT * \
             FROM big) TO STDOUT, output dropped ({copy_secs:.2} s)",
            finished - begun
        )),
    });
    // Progress and ETA at about 25% and 50%, against the table's rows and
    // the backfill's actual end.
    let mut worst: f64 = 0.0;
    let mut seen = Vec::new();
    for (label, s) in [("25%", at25), ("50%", at50)] {
        let Some(s) = s else {
            seen.push(format!("{label}: not sampled (the backfill passed it between two samples)"));
            worst = f64::INFINITY;
            continue;
        };
        let remaining = finished - s.at;
        let eta_err = (s.eta - remaining).abs() / remaining.max(0.001);
        let shown = if s.total > 0.0 { s.done / s.total } else { f64::NAN };
        let progress_err = (shown - s.done / n as f64).abs() / (s.done / n as f64);
        worst = worst.max(eta_err).max(if progress_err.is_nan() { f64::INFINITY } else { progress_err });
        seen.push(format!(
            "at {label}: shown {:.1}% ({} of {} rows; truly {:.1}%), ETA {:.1} s, actual {:.1} s",
            shown * 100.0,
            s.done,
            s.total,
            s.done / n as f64 * 100.0,
            s.eta,
            remaining
        ));
    }
    out.push(Figure {
        scenario: "10 scale",
        name: "backfill progress and ETA error at 25% and 50%".into(),
        value: if worst.is_finite() { (worst * 1000.0).round() / 10.0 } else { -1.0 },
        unit: "%",
        goal: "<= 10%".into(),
        met: worst <= 0.1,
        reference: None,
        ratio: None,
        note: Some(format!(
            "the larger relative error of the shown share (rows_done / rows_total) against rows_done / the table's \
             rows, and of eta_s against the time to finished_at; sync.cursors' backfill position (what \
             sync.status.backfill_progress shows) polled every 0.1 s, each ETA against the time from its step's end (step_at); -1: a point was not sampled. {}",
            seen.join("; ")
        )),
    });
    drop_db(cluster, db);
    Ok(())
}

/// A backlog of `rows` rows on target `t`, staged by a backfill with
/// `--no-export` (all of it pending, or with `defer`, as `sync.defer_after`
/// has it by default: the rest deferred); then `CLAIMS` claims of
/// `CLAIM_SIZE`, each completed as a target that takes everything would.
/// Returns the median and the largest claim time in ms (measured in the
/// server around `sync.claim`), and the exports pending before the claims.
fn claim_times(cluster: &'static Cluster, rows: u64, defer: bool) -> Result<(f64, f64, u64)> {
    let db = big_table(cluster, &format!("bench claim {rows}"), "cl", rows);
    if !defer {
        db.psql("DO $$ BEGIN EXECUTE format('ALTER DATABASE %I SET sync.defer_after = 0', current_database()); END $$");
    }
    let o = run_cmd(&db, &["--once", "--no-export"]).env("SYNCBRIDGE_LOG", "warn").output()?;
    if !o.status.success() {
        bail!("staging the backlog: {}", String::from_utf8_lossy(&o.stderr));
    }
    let pending: u64 = db.psql("SELECT count(*) FROM sync.pending_exports WHERE status = 'pending'").parse()?;
    let deferred: u64 = db.psql("SELECT coalesce(sum(n), 0) FROM sync.deferred_keys").parse()?;
    if pending + deferred != rows || (defer && deferred == 0) {
        bail!("{pending} of {rows} exports pending and {deferred} keys deferred");
    }
    db.psql("CREATE UNLOGGED TABLE bench_claims (n int, ms float8)");
    db.psql(&format!(
        "DO $$ DECLARE t0 timestamptz; ms float8; res jsonb; BEGIN
           FOR i IN 1..{CLAIMS} LOOP
             t0 := clock_timestamp();
             SELECT coalesce(jsonb_agg(jsonb_build_object('id', c.id, 'ok', true, 'target_id', 'i' || c.sync_key)), '[]')
               INTO res FROM sync.claim('t', {CLAIM_SIZE}, worker => 'bench') c;
             ms := extract(epoch FROM clock_timestamp() - t0) * 1000;
             INSERT INTO bench_claims VALUES (jsonb_array_length(res), ms);
             PERFORM sync.complete(res, worker => 'bench');
             COMMIT;
           END LOOP; END $$"
    ));
    let rows_out = db.psql("SELECT n || '|' || ms FROM bench_claims");
    let mut times = Vec::new();
    for l in rows_out.lines() {
        let (k, ms) = l.split_once('|').context("n|ms")?;
        if k.parse::<u64>()? != CLAIM_SIZE {
            bail!("a claim took {k} exports instead of {CLAIM_SIZE}");
        }
        times.push(ms.parse::<f64>()?);
    }
    let max = times.iter().copied().fold(0.0, f64::max);
    drop_db(cluster, db);
    Ok((median(times), max, pending))
}

/// Scenario 10 (b): claim time with a big backlog against a small one.
fn claim_cost(cluster: &'static Cluster, sizes: &Sizes, out: &mut Vec<Figure>) -> Result<()> {
    // The reference keeps at least 1,000 pending while its 1,000 are claimed.
    let small = 1_000 + CLAIMS as u64 * CLAIM_SIZE;
    let (small_ms, small_max, _) = claim_times(cluster, small, false)?;
    // Claim walks pending_exports_claim_idx to the first n claimable rows:
    // its work should not depend on the backlog. A deeper B-tree and colder
    // pages may cost some; 1.5x allows that and still catches any work that
    // grows with the backlog (1,000x here).
    let figure = |name: String, ms: f64, note: String| {
        let ratio = ms / small_ms;
        Figure {
            scenario: "10 scale",
            name,
            value: (ms * 100.0).round() / 100.0,
            unit: "ms",
            goal: "<= 1.5x the claim with 1,000 pending".into(),
            met: ratio <= 1.5,
            reference: Some((small_ms * 100.0).round() / 100.0),
            ratio: Some((ratio * 100.0).round() / 100.0),
            note: Some(note),
        }
    };
    let (big_ms, big_max, _) = claim_times(cluster, sizes.claim_backlog, false)?;
    out.push(figure(
        format!("sync.claim of {CLAIM_SIZE} with {} exports pending", sizes.claim_backlog),
        big_ms,
        format!(
            "median of {CLAIMS} claims of {CLAIM_SIZE} (each completed, one transaction each), timed in the server \
             around sync.claim (largest {big_max:.1} ms); the backlog staged by a backfill with --no-export (sync.defer_after = 0: all of it pending); \
             reference: the same with {small} staged, so 1,000 to {small} pending throughout (largest {small_max:.1} ms)"
        ),
    ));
    // The same backlog as sync.defer_after keeps it by default: every claim
    // also checks whether its definition's deferred keys are due.
    let (def_ms, def_max, def_pending) = claim_times(cluster, sizes.claim_backlog, true)?;
    out.push(figure(
        format!("sync.claim of {CLAIM_SIZE} with {} rows backlogged, deferred by default", sizes.claim_backlog),
        def_ms,
        format!(
            "as above (largest {def_max:.1} ms), the backfill with sync.defer_after at its default: {def_pending} exports pending, \
             the other keys deferred in ranges; each claim counts its definition's open exports (up to 2,000) to tell \
             whether deferred keys are due; reference: the same as above"
        ),
    ));
    Ok(())
}

/// Scenario 10 (c), one side: `defs` tables each with a definition on one
/// slot, `rows` rows inserted round-robin across them in transactions of
/// `ROWS_PER_TX`; the worker then decodes and stages them (`run --once
/// --no-export` on a slot made before the workload). Returns rows/s.
fn many_definitions(cluster: &'static Cluster, defs: u64, rows: u64) -> Result<f64> {
    let db = cluster.new_db(&format!("bench defs {defs}"));
    let ddl: String =
        (1..=defs).map(|k| format!("CREATE TABLE m{k} (id bigint PRIMARY KEY, title text, qty int);")).collect();
    prepare(&db, &ddl);
    // Both sides stage every key: one definition's 200,000 would otherwise
    // pass sync.defer_after and be deferred, 50 definitions' 4,000 not.
    db.psql("DO $$ BEGIN EXECUTE format('ALTER DATABASE %I SET sync.defer_after = 0', current_database()); END $$");
    for k in 1..=defs {
        db.psql(&format!("SELECT sync.define('m{k}', source => 'm{k}', target => 't', list => 'M{k}')"));
        db.psql(&format!("SELECT sync.enable('m{k}')"));
    }
    // The tables are empty: no backfill.
    db.psql("UPDATE sync.definitions SET backfill = 'done'");
    let slot = format!("defs_{defs}");
    db.psql(&format!("SELECT pg_create_logical_replication_slot('{slot}', 'pgoutput')"));
    db.psql(&format!(
        "DO $$ BEGIN FOR t IN 0..{} LOOP
           FOR k IN 1..{defs} LOOP
             EXECUTE format('INSERT INTO %I SELECT g, ''row '' || g, g FROM generate_series($1, $2) g WHERE mod(g, $3) = $4', 'm' || k)
               USING t * {ROWS_PER_TX} + 1, (t + 1) * {ROWS_PER_TX}, {defs}, k - 1;
           END LOOP;
           COMMIT;
         END LOOP; END $$",
        rows / ROWS_PER_TX - 1
    ));
    let (secs, _) = timed(worker_decode(&db, &slot, false))?;
    let staged: u64 = db.psql("SELECT count(*) FROM sync.pending_exports").parse()?;
    let touched: u64 = db.psql("SELECT count(DISTINCT definition_id) FROM sync.pending_exports").parse()?;
    if staged != rows || touched != defs {
        bail!("{staged} exports of {rows} rows staged, for {touched} of {defs} definitions");
    }
    drop_db(cluster, db);
    Ok(rows as f64 / secs)
}

/// Scenario 10 (c): 50 definitions on one slot against one.
fn definitions(cluster: &'static Cluster, sizes: &Sizes, out: &mut Vec<Figure>) -> Result<()> {
    let rows = sizes.multi_rows;
    let one = many_definitions(cluster, 1, rows)?;
    let many = many_definitions(cluster, DEFINITIONS, rows)?;
    let ratio = many / one;
    out.push(Figure {
        scenario: "10 scale",
        name: format!("decode + stage rate, {rows} rows over {DEFINITIONS} definitions on one slot"),
        value: many.round(),
        unit: "rows/s",
        // The stager calls sync.stage once per definition per batch: with 50
        // definitions a 10,000-key batch is 50 calls of 200 keys. A fixed
        // cost per call of a few percent of a 200-key call keeps the rate
        // within a fifth of one definition's.
        goal: ">= 0.8 of one definition".into(),
        met: ratio >= 0.8,
        reference: Some(one.round()),
        ratio: Some((ratio * 1000.0).round() / 1000.0),
        note: Some(format!(
            "run --once --no-export on a slot made before the workload ({} transactions of {ROWS_PER_TX} rows, \
             row g into table g mod {DEFINITIONS}), start to exit; reference: the same rows into one table with \
             one definition",
            rows / ROWS_PER_TX
        )),
    });
    Ok(())
}

/// Scenario 10: see the module documentation.
/// Scenario 10's parts, each on its own: a part that fails is reported in
/// `failed` and the others still run.
/// `part('a')`: whether part (a) is wanted (`--only 10` or `--only 10a`).
pub(crate) fn scale(
    cluster: &'static Cluster,
    sizes: &Sizes,
    part: &dyn Fn(char) -> bool,
    out: &mut Vec<Figure>,
    failed: &mut Vec<String>,
) {
    if part('a') {
        eprintln!("scenario 10 (a): backfill of {} rows", sizes.scale_rows);
        crate::record("10 (a) backfill", backfill(cluster, sizes, out), failed);
    }
    if part('b') {
        eprintln!("scenario 10 (b): claim with {} exports pending", sizes.claim_backlog);
        crate::record("10 (b) claim", claim_cost(cluster, sizes, out), failed);
    }
    if part('c') {
        eprintln!("scenario 10 (c): {DEFINITIONS} definitions on one slot");
        crate::record("10 (c) definitions", definitions(cluster, sizes, out), failed);
    }
}
