//! Scenario 9 (issue 21, item 4): two-way sync through the Graph emulator.
//! A `direction => 'both'` definition with its items synced, then edits
//! made on the emulator's side as a person makes them:
//!
//! - (a) the rate at which the worker pulls and applies a batch of remote
//!   edits, against the same changes applied by a plain `UPDATE … FROM` of
//!   a staged table;
//! - (b) resource units per pulled change (the emulator's counters);
//! - (c) remote-edit-to-row latency at the default pull interval, a steady
//!   stream of edits while a worker runs;
//! - (d) echo writes: after remote-only phases the emulator must have
//!   received no item write, and while both sides change, no write that
//!   changes nothing on its item (an echo of a pulled change).

use std::collections::HashMap;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use serde_json::{json, Map, Value};
use syncbridge_tests::cluster::pg_bindir;
use syncbridge_tests::graph::{export_cmd, GraphEnv};
use syncbridge_tests::ingest::prepare;
use syncbridge_tests::{Cluster, TestDb};

use super::{background_psql, daemon, run_once, stop, Figure, Sizes};

/// The list's display name.
const LIST: &str = "TW";
/// The pull interval a Graph target has when its config names none, in
/// seconds (README, "Two-way sync": `pull_interval`, default 60).
const DEFAULT_PULL_INTERVAL_S: f64 = 60.0;
/// Remote edits per second in the steady phases.
const EDITS_PER_SEC: u64 = 5;
/// The site user id the person edits as (the app writes as 1073741822).
const PERSON: u64 = 7;

/// Milliseconds since the Unix epoch, now.
fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

/// A JSON object from a `json!` literal.
fn fields(v: Value) -> Map<String, Value> {
    v.as_object().cloned().unwrap_or_default()
}

/// Runs `sql` through psql with `\timing on` and returns the statement's
/// time as psql reports it (client round trip, psql's start-up excluded),
/// in seconds.
pub(crate) fn psql_timed(db: &TestDb, sql: &str) -> Result<f64> {
    let o = Command::new(pg_bindir().join("psql"))
        .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", &db.dsn(), "-c", "\\timing on", "-c", sql])
        .stderr(Stdio::piped())
        .output()
        .context("run psql")?;
    if !o.status.success() {
        bail!("psql: {}", String::from_utf8_lossy(&o.stderr));
    }
    let text = String::from_utf8_lossy(&o.stdout);
    let ms = text
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix("Time: ")?.split_whitespace().next()?.parse::<f64>().ok())
        .with_context(|| format!("no timing in psql's output: {text}"))?;
    Ok(ms / 1000.0)
}

/// `export --once` (pull every two-way list once, apply, drain what is left);
/// returns its wall time in seconds.
fn export_once(db: &TestDb) -> Result<f64> {
    let t = Instant::now();
    let o = export_cmd(db, &["--once"]).env("SYNCBRIDGE_LOG", "warn").output()?;
    if !o.status.success() {
        bail!("export --once: {}", String::from_utf8_lossy(&o.stderr));
    }
    Ok(t.elapsed().as_secs_f64())
}

/// The value at quantile `p` of sorted `v`.
fn quantile(v: &[f64], p: f64) -> f64 {
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

/// Scenario 9: see the module documentation.
pub(crate) fn twoway(cluster: &'static Cluster, sizes: &Sizes, out: &mut Vec<Figure>) -> Result<()> {
    let (n, m) = (sizes.twoway_items, sizes.twoway_edits);
    let env = GraphEnv::start(None);
    let db = cluster.new_db("bench twoway");
    prepare(
        &db,
        &format!(
            "CREATE TABLE tw (id int PRIMARY KEY, title text, qty int, stamp bigint);
             INSERT INTO tw SELECT g, 'row ' || g, g, 0 FROM generate_series(1, {n}) g"
        ),
    );
    env.create_target(&db, "sp", None);
    db.psql(&format!(
        "SELECT sync.define('tw', source => 'tw', target => 'sp', list => '{LIST}', direction => 'both')"
    ));
    for (col, field) in [("title", "Title"), ("qty", "Qty"), ("stamp", "Stamp")] {
        db.psql(&format!("SELECT sync.map('tw', '{col}', '{field}')"));
    }
    db.psql("SELECT sync.provision('tw'), sync.enable('tw')");
    // The items go out; the list's first pull (a full read) finds them as
    // syncbridge's own writes; a second round settles.
    run_once(&db)?;
    run_once(&db)?;
    let items = env.emu.lists().into_iter().filter(|l| l.display_name == LIST).map(|l| l.items.len()).sum::<usize>();
    if items as u64 != n {
        bail!("{items} of {n} items in the list after the first sync");
    }
    let open = db.psql("SELECT imports_pending + imports_failed + pending FROM sync.status WHERE definition = 'tw'");
    if open != "0" {
        bail!("the first sync left {open} imports or exports open");
    }
    let writes_synced = env.emu.stats().writes;
    eprintln!("  {n} items synced; {m} edited remotely");

    // (a) M items edited "in SharePoint" at once, then one worker pass.
    for id in 1..=m {
        env.emu
            .person_edit(LIST, &id.to_string(), &fields(json!({"Qty": id + 1_000_000, "Stamp": 1})), PERSON)
            .map_err(anyhow::Error::msg)?;
    }
    let (before, pages_before) = (env.emu.stats(), env.emu.delta_pages());
    let secs = export_once(&db)?;
    let (after, pages) = (env.emu.stats(), env.emu.delta_pages() - pages_before);
    let applied: u64 = db.psql("SELECT count(*) FROM tw WHERE qty = id + 1000000 AND stamp = 1").parse()?;
    if applied != m {
        bail!("{applied} of {m} remote edits in the table after export --once");
    }
    // The reference: the same changes staged in a table, applied with one
    // UPDATE … FROM to a logged copy of the table (not published, so that
    // nothing is staged).
    db.psql(&format!(
        "CREATE TABLE tw_copy AS SELECT * FROM tw; ALTER TABLE tw_copy ADD PRIMARY KEY (id);
         CREATE UNLOGGED TABLE tw_staged AS SELECT g AS id, g + 2000000 AS qty, 2::bigint AS stamp FROM generate_series(1, {m}) g;
         ALTER TABLE tw_staged ADD PRIMARY KEY (id)"
    ));
    db.psql("VACUUM ANALYZE tw_copy, tw_staged");
    let ref_secs =
        psql_timed(&db, "UPDATE tw_copy t SET qty = s.qty, stamp = s.stamp FROM tw_staged s WHERE t.id = s.id")?;
    let (rate, ref_rate) = (m as f64 / secs, m as f64 / ref_secs);
    out.push(Figure {
        scenario: "9 two-way",
        name: format!("remote edits pulled and applied, {m} of {n} items"),
        value: rate.round(),
        unit: "changes/s",
        goal: "(reported)".into(),
        met: true,
        reference: Some(ref_rate.round()),
        ratio: Some((rate / ref_rate * 10000.0).round() / 10000.0),
        note: Some(format!(
            "{m} items edited on the emulator (Qty, Stamp), then `export --once` (start to exit: pull with delta queries, \
             sync.pull_page, sync.apply_imports; {secs:.2} s, {} delta pages of up to 200); reference: the same {m} \
             values staged in an unlogged table and applied by one UPDATE … FROM to a logged copy of the table \
             ({:.0} ms, psql \\timing)",
            pages,
            ref_secs * 1000.0
        )),
    });
    let ru = (after.ru_used - before.ru_used) as f64;
    let per_change = ru / m as f64;
    out.push(Figure {
        scenario: "9 two-way",
        name: "resource units per pulled change".into(),
        value: (per_change * 10000.0).round() / 10000.0,
        unit: "RU/change",
        // A delta page carries up to 200 items for 1 RU: 0.005 is the
        // floor; twice that leaves room for the last, short page.
        goal: "<= 0.01 (a 200-item delta page costs 1 RU)".into(),
        met: per_change <= 0.01,
        reference: Some(ru),
        ratio: None,
        note: Some(format!(
            "{ru} RU charged by the emulator for the pass that pulled {m} changes (reference column: the RU); {} item writes",
            after.writes - before.writes
        )),
    });

    // (c) A steady stream of edits while a worker runs at the default pull
    // interval; per edit, the time until its row shows it (the table polled).
    eprintln!("  a steady stream of remote edits for {} s", sizes.twoway_stream_secs);
    let worker = daemon(&db)?;
    std::thread::sleep(Duration::from_secs(2));
    let writes_before_stream = env.emu.stats().writes;
    let count = EDITS_PER_SEC * sizes.twoway_stream_secs;
    let first = m + 1;
    let start = Instant::now();
    let since = now_ms();
    let mut made: HashMap<u64, i64> = HashMap::new();
    let mut seen: HashMap<u64, i64> = HashMap::new();
    let deadline = start + Duration::from_secs(sizes.twoway_stream_secs + 2 * DEFAULT_PULL_INTERVAL_S as u64 + 30);
    let mut polls = 0u64;
    while (seen.len() as u64) < count && Instant::now() < deadline {
        let due = (start.elapsed().as_millis() as u64 * EDITS_PER_SEC / 1000 + 1).min(count);
        while (made.len() as u64) < due {
            let id = first + made.len() as u64;
            let stamp = now_ms();
            env.emu
                .person_edit(LIST, &id.to_string(), &fields(json!({"Qty": id + 3_000_000, "Stamp": stamp})), PERSON)
                .map_err(anyhow::Error::msg)?;
            made.insert(id, stamp);
        }
        let rows = db.psql(&format!("SELECT id || '|' || stamp FROM tw WHERE stamp >= {since}"));
        let at = now_ms();
        polls += 1;
        for (id, stamp) in rows.lines().filter_map(|l| l.split_once('|')) {
            let (Ok(id), Ok(stamp)) = (id.parse::<u64>(), stamp.parse::<i64>()) else { continue };
            if made.get(&id) == Some(&stamp) {
                seen.entry(id).or_insert(at);
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    if (seen.len() as u64) < count {
        stop(worker);
        bail!("only {} of {count} streamed remote edits reached the table", seen.len());
    }
    // Anything the applied edits would echo has had time to go out.
    std::thread::sleep(Duration::from_secs(3));
    let writes_after_stream = env.emu.stats().writes;
    let poll_ms = start.elapsed().as_millis() as f64 / polls as f64;
    let mut lat: Vec<f64> = made.iter().map(|(id, t)| (seen[id] - t) as f64).collect();
    lat.sort_by(f64::total_cmp);
    for (label, p) in [("p50", 0.5), ("p99", 0.99)] {
        let v = quantile(&lat, p);
        let limit = (DEFAULT_PULL_INTERVAL_S + 5.0) * 1000.0;
        out.push(Figure {
            scenario: "9 two-way",
            name: format!("remote-edit-to-row latency {label}, {EDITS_PER_SEC} edits/s, default pull interval"),
            value: (v / 100.0).round() / 10.0,
            unit: "s",
            // An edit waits at most one interval for the next pull; the pull
            // and the apply take a few seconds more at most.
            goal: if label == "p99" {
                format!("<= pull interval + 5 s ({} s)", DEFAULT_PULL_INTERVAL_S + 5.0)
            } else {
                "(reported; about half the interval)".into()
            },
            met: label != "p99" || v <= limit,
            reference: Some(DEFAULT_PULL_INTERVAL_S),
            ratio: None,
            note: Some(format!(
                "{count} edits over {} s, each on its own item with the edit's time in Stamp; a running worker \
                 (pull_interval {DEFAULT_PULL_INTERVAL_S} s, the default); the table polled every {poll_ms:.0} ms \
                 (resolution); reference column: the interval in s",
                sizes.twoway_stream_secs
            )),
        });
    }

    // (d) Both sides at once: a writer changes Title of rows locally while
    // the person changes Qty of the same items remotely, each at 5/s.
    let mixed = EDITS_PER_SEC * sizes.twoway_mixed_secs;
    eprintln!("  both sides change for {} s", sizes.twoway_mixed_secs);
    let base = first + count; // items neither phase touched yet
    let (stats_mixed, echoes_mixed) = (env.emu.stats(), env.emu.unchanged_writes());
    let writer = background_psql(
        &db,
        &format!(
            "DO $$ BEGIN FOR i IN {base}..{} LOOP UPDATE tw SET title = 'local ' || i WHERE id = i; COMMIT;
               PERFORM pg_sleep({}); END LOOP; END $$",
            base + mixed - 1,
            1.0 / EDITS_PER_SEC as f64
        ),
    )?;
    let start = Instant::now();
    for k in 0..mixed {
        let at = Duration::from_millis(k * 1000 / EDITS_PER_SEC + 100);
        if let Some(wait) = at.checked_sub(start.elapsed()) {
            std::thread::sleep(wait);
        }
        let id = base + k;
        env.emu
            .person_edit(LIST, &id.to_string(), &fields(json!({"Qty": id + 5_000_000})), PERSON)
            .map_err(anyhow::Error::msg)?;
    }
    let mut writer = writer;
    if !writer.wait()?.success() {
        stop(worker);
        bail!("the local writer failed");
    }
    stop(worker);
    // Settle: pull, apply and send whatever is left, twice (applying can
    // stage what a second pass sends).
    export_once(&db)?;
    run_once(&db)?;
    export_once(&db)?;
    let after_mixed = env.emu.stats();
    let echoes = env.emu.unchanged_writes() - echoes_mixed;
    let mixed_writes = after_mixed.writes - stats_mixed.writes;
    // Both sides' changes must have survived: the row has the remote Qty,
    // the item has the local Title.
    let list = env.items().remove(LIST).unwrap_or_default();
    let rows: HashMap<u64, (String, i64)> = db
        .psql(&format!(
            "SELECT id || '|' || title || '|' || qty FROM tw WHERE id BETWEEN {base} AND {}",
            base + mixed - 1
        ))
        .lines()
        .filter_map(|l| {
            let mut p = l.splitn(3, '|');
            Some((p.next()?.parse().ok()?, (p.next()?.to_owned(), p.next()?.parse().ok()?)))
        })
        .collect();
    let lost = (base..base + mixed)
        .filter(|id| {
            let item = list.get(&id.to_string());
            let row = rows.get(id);
            let want_title = format!("local {id}");
            let want_qty = (id + 5_000_000) as i64;
            !(row.is_some_and(|(t, q)| *t == want_title && *q == want_qty)
                && item.is_some_and(|i| {
                    i.get("Title").and_then(Value::as_str) == Some(want_title.as_str())
                        && i.get("Qty").and_then(Value::as_f64) == Some(want_qty as f64)
                }))
        })
        .count();
    let remote_only_writes = (after.writes - writes_synced) + (writes_after_stream - writes_before_stream);
    out.push(Figure {
        scenario: "9 two-way",
        name: format!("item writes after remote-only edits ({m} at once, {count} streamed)"),
        value: remote_only_writes as f64,
        unit: "writes",
        goal: "0".into(),
        met: remote_only_writes == 0,
        reference: Some((m + count) as f64),
        ratio: None,
        note: Some(
            "the emulator's successful app writes while only the person edited, counted once every edit was in the \
             table (3 s later for the running worker); reference column: the remote edits"
                .into(),
        ),
    });
    out.push(Figure {
        scenario: "9 two-way",
        name: format!("echo writes while both sides change ({mixed} local + {mixed} remote changes)"),
        value: echoes as f64,
        unit: "writes",
        goal: "0, and no change lost".into(),
        met: echoes == 0 && lost == 0,
        reference: Some(mixed_writes as f64),
        ratio: None,
        note: Some(format!(
            "a running worker while a local writer changes Title and the person Qty of the same {mixed} items, each \
             at {EDITS_PER_SEC}/s over {} s, then export --once / run --once to settle: app writes that changed \
             nothing on their item (the emulator's unchanged_writes); reference column: every app write meanwhile; \
             items or rows missing one side's change: {lost}",
            sizes.twoway_mixed_secs
        )),
    });
    Ok(())
}
