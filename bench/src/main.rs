//! `syncbridge-bench`: every figure measured against a reference in the same
//! run, written to `bench/results/latest.json` (and a Markdown table to
//! `bench/results/latest.md`). Timings are never asserted; `--quick` runs
//! small sizes only to prove the benchmark works (`make test` does that).
//!
//! Scenarios (issue 6): decode (worker `--decode-only` vs `pg_recvlogical`,
//! alternating runs on slots created before the workload), ingest + stage,
//! coalescing through the Graph emulator, and the worker's peak memory.

use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use serde::Serialize;
use serde_json::{json, Value};
use syncbridge_tests::cluster::pg_bindir;
use syncbridge_tests::graph::{worker_cmd, GraphEnv};
use syncbridge_tests::ingest::prepare;
use syncbridge_tests::{Cluster, ClusterOptions, TestDb};

#[derive(Debug, Serialize)]
struct Figure {
    scenario: &'static str,
    name: String,
    value: f64,
    unit: &'static str,
    goal: String,
    met: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    reference: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    ratio: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    note: Option<String>,
}

struct Sizes {
    e2e_rows: u64,
    steady_secs: u64,
    big_tx: u64,
    small_txs: u64,
    runs: usize,
    coalesce_rows: u64,
    coalesce_rounds: u64,
}

/// Runs a child to the end, returning (seconds, peak RSS in KiB).
fn timed(mut cmd: Command) -> Result<(f64, u64)> {
    let started = Instant::now();
    let child = cmd.stdout(Stdio::null()).stderr(Stdio::piped()).spawn().context("start")?;
    let pid = child.id() as libc::pid_t;
    let mut status = 0;
    // SAFETY: a zeroed rusage is a valid out-parameter for wait4.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: wait4 on our own child with valid pointers.
    let rc = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    let secs = started.elapsed().as_secs_f64();
    if rc != pid {
        bail!("wait4 failed");
    }
    let mut stderr = String::new();
    if let Some(mut e) = child.stderr {
        use std::io::Read;
        let _ = e.read_to_string(&mut stderr);
    }
    if !(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0) {
        bail!("the command failed (status {status}):\n{stderr}");
    }
    Ok((secs, usage.ru_maxrss as u64))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn recvlogical(db: &TestDb, slot: &str, endpos: &str) -> Command {
    let mut c = Command::new(pg_bindir().join("pg_recvlogical"));
    c.args(["-d", &db.dsn(), "--slot", slot, "--start", "--no-loop", "-E", endpos, "-f", "/dev/null"]).args([
        "-o",
        "proto_version=1",
        "-o",
        "publication_names=syncbridge_pub",
    ]);
    c
}

fn worker_decode(db: &TestDb, slot: &str, decode_only: bool) -> Command {
    let mut args = vec!["--once", "--no-export", "--slot", slot];
    if decode_only {
        args.push("--decode-only");
    }
    let mut c = syncbridge_tests::ingest::run_cmd(db, &args);
    c.env("SYNCBRIDGE_LOG", "warn");
    c
}

/// Scenarios 1, 2 and 6 for one workload.
fn decode_and_stage(
    db: &TestDb,
    sizes: &Sizes,
    workload: &str,
    rows: u64,
    sql: &str,
    out: &mut Vec<Figure>,
) -> Result<()> {
    let tag = if workload.starts_with("one") { "big" } else { "small" };
    for i in 0..sizes.runs {
        db.psql(&format!("SELECT pg_create_logical_replication_slot('r_{tag}_{i}', 'pgoutput')"));
        db.psql(&format!("SELECT pg_create_logical_replication_slot('w_{tag}_{i}', 'pgoutput')"));
    }
    db.psql(&format!("SELECT pg_create_logical_replication_slot('s_{tag}', 'pgoutput')"));
    let t = Instant::now();
    db.psql(sql);
    eprintln!("  {workload}: written in {:.1} s", t.elapsed().as_secs_f64());
    let endpos = db.psql("SELECT pg_current_wal_insert_lsn()");
    let (mut reference, mut ours, mut rss) = (Vec::new(), Vec::new(), 0u64);
    for i in 0..sizes.runs {
        let (r, _) = timed(recvlogical(db, &format!("r_{tag}_{i}"), &endpos))?;
        let (w, m) = timed(worker_decode(db, &format!("w_{tag}_{i}"), true))?;
        eprintln!("  run {i}: pg_recvlogical {r:.2} s, worker --decode-only {w:.2} s");
        reference.push(rows as f64 / r);
        ours.push(rows as f64 / w);
        rss = rss.max(m);
    }
    let (r, w) = (median(reference), median(ours));
    out.push(Figure {
        scenario: "1 decode",
        name: format!("decode rate, {workload}"),
        value: w.round(),
        unit: "rows/s",
        goal: ">= 90% of pg_recvlogical".into(),
        met: w >= 0.9 * r,
        reference: Some(r.round()),
        ratio: Some((w / r * 1000.0).round() / 1000.0),
        note: Some(format!("median of {} alternating runs", sizes.runs)),
    });
    // Ingest + stage, once (staging is not repeatable on the same queue).
    let (s, m) = timed(worker_decode(db, &format!("s_{tag}"), false))?;
    rss = rss.max(m);
    let staged: u64 = db.psql("SELECT count(*) FROM sync.pending_exports").parse()?;
    let rate = rows as f64 / s;
    let decode_secs = rows as f64 / w;
    out.push(Figure {
        scenario: "2 ingest+stage",
        name: format!("ingest + stage rate, {workload}"),
        value: rate.round(),
        unit: "rows/s",
        goal: ">= 50% of pg_recvlogical".into(),
        met: rate >= 0.5 * r,
        reference: Some(r.round()),
        ratio: Some((rate / r * 1000.0).round() / 1000.0),
        note: Some(format!(
            "{staged} exports pending; decoding is {:.0}% of the time, sync.stage the rest",
            (decode_secs / s * 100.0).min(100.0)
        )),
    });
    db.psql("DELETE FROM sync.pending_exports");
    out.push(Figure {
        scenario: "6 memory",
        name: format!("worker peak RSS, {workload}"),
        value: (rss as f64 / 1024.0 * 10.0).round() / 10.0,
        unit: "MiB",
        goal: "< 100 MiB".into(),
        met: rss < 100 * 1024,
        reference: None,
        ratio: None,
        note: Some("max over the decode-only and staging runs (getrusage ru_maxrss)".into()),
    });
    Ok(())
}

/// Scenario 5: 100 updates to each of 1,000 rows before the exporter runs.
fn coalescing(cluster: &'static Cluster, sizes: &Sizes, out: &mut Vec<Figure>) -> Result<()> {
    let env = GraphEnv::start(None);
    let db = cluster.new_db("bench coalesce");
    prepare(
        &db,
        &format!(
            "CREATE TABLE c (id int PRIMARY KEY, v int); INSERT INTO c SELECT g, 0 FROM generate_series(1, {}) g",
            sizes.coalesce_rows
        ),
    );
    env.create_target(&db, "sp", None);
    db.psql("SELECT sync.define('c', source => 'c', target => 'sp', list => 'C')");
    db.psql("SELECT sync.provision('c'), sync.enable('c')");
    let run = || -> Result<()> {
        let out = worker_cmd(&db, &["--once"]).env("SYNCBRIDGE_LOG", "warn").output()?;
        if !out.status.success() {
            bail!("worker: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(())
    };
    run()?;
    let before = env.emu.stats();
    db.psql(&format!(
        "DO $$ BEGIN FOR i IN 1..{} LOOP UPDATE c SET v = v + 1; COMMIT; END LOOP; END $$",
        sizes.coalesce_rounds
    ));
    run()?;
    let after = env.emu.stats();
    let writes = after.writes - before.writes;
    let envelopes = after.batch_requests - before.batch_requests;
    let changes = sizes.coalesce_rows * sizes.coalesce_rounds;
    out.push(Figure {
        scenario: "5 coalescing",
        name: format!("writes for {changes} row updates ({} rows × {})", sizes.coalesce_rows, sizes.coalesce_rounds),
        value: writes as f64,
        unit: "writes",
        goal: format!("one write per row: {}", sizes.coalesce_rows),
        met: writes == sizes.coalesce_rows,
        reference: Some(changes as f64),
        ratio: Some(writes as f64 / changes as f64),
        note: Some(format!("{envelopes} HTTP requests ($batch envelopes of up to 20)")),
    });
    Ok(())
}

/// Scenario 3: end to end through the unthrottled emulator, against a naive
/// one-request-per-row sequential push; then latency at a steady 500 rows/s.
fn end_to_end(cluster: &'static Cluster, sizes: &Sizes, out: &mut Vec<Figure>) -> Result<()> {
    let env = GraphEnv::start(None);
    let db = cluster.new_db("bench e2e");
    prepare(&db, "CREATE TABLE e (id int PRIMARY KEY, title text, qty int, t_ms bigint)");
    env.create_target(&db, "sp", None);
    db.psql("SELECT sync.define('e', source => 'e', target => 'sp', list => 'E')");
    db.psql("SELECT sync.provision('e'), sync.enable('e')");
    let once = || -> Result<()> {
        let o = worker_cmd(&db, &["--once"]).env("SYNCBRIDGE_LOG", "warn").output()?;
        if !o.status.success() {
            bail!("worker: {}", String::from_utf8_lossy(&o.stderr));
        }
        Ok(())
    };
    once()?; // slot and list
    let n = sizes.e2e_rows;
    db.psql(&format!("INSERT INTO e SELECT g, 'row ' || g, g, 0 FROM generate_series(1, {n}) g"));
    let before = env.emu.stats();
    let t = Instant::now();
    once()?;
    let secs = t.elapsed().as_secs_f64();
    let after = env.emu.stats();
    let http = (after.batch_requests - before.batch_requests) + (after.tokens_issued - before.tokens_issued);
    // The naive baseline: one POST per row, one after the other.
    let naive = env.block_on(async {
        let http = reqwest::Client::new();
        let c = syncbridge_tests::graph_emulator::EmulatorConfig::default();
        let tok: Value = http
            .post(format!("{}/{}/oauth2/v2.0/token", env.emu.authority_url(), c.tenant_id))
            .form(&[
                ("grant_type", "client_credentials"),
                ("client_id", c.client_id.as_str()),
                ("client_secret", c.client_secret.as_str()),
                ("scope", "https://graph.microsoft.com/.default"),
            ])
            .send()
            .await?
            .json()
            .await?;
        let token = tok["access_token"].as_str().unwrap_or_default().to_owned();
        let lists = format!("{}/sites/naive/lists", env.emu.base_url());
        let list: Value = http
            .post(&lists)
            .bearer_auth(&token)
            .json(&json!({"displayName": "Naive", "columns": [{"name": "qty", "number": {}}, {"name": "SyncKey", "text": {}, "indexed": true}]}))
            .send()
            .await?
            .json()
            .await?;
        let items = format!("{lists}/{}/items", list["id"].as_str().unwrap_or_default());
        let t = Instant::now();
        for i in 1..=n {
            let r = http
                .post(&items)
                .bearer_auth(&token)
                .json(&json!({"fields": {"Title": format!("row {i}"), "qty": i, "SyncKey": i.to_string()}}))
                .send()
                .await?;
            if !r.status().is_success() {
                anyhow::bail!("naive push: {}", r.status());
            }
        }
        Ok::<f64, anyhow::Error>(t.elapsed().as_secs_f64())
    })?;
    let (rate, naive_rate) = (n as f64 / secs, n as f64 / naive);
    out.push(Figure {
        scenario: "3 end to end",
        name: format!("rows/s to the emulator, {n} rows"),
        value: rate.round(),
        unit: "rows/s",
        goal: "faster than one request per row".into(),
        met: rate > naive_rate,
        reference: Some(naive_rate.round()),
        ratio: Some((rate / naive_rate * 100.0).round() / 100.0),
        note: Some("reference: a naive sequential push, one POST per row, same emulator".into()),
    });
    let per_row = http as f64 / n as f64;
    out.push(Figure {
        scenario: "3 end to end",
        name: "HTTP requests per changed row".into(),
        value: (per_row * 10000.0).round() / 10000.0,
        unit: "requests/row",
        goal: "<= 0.06".into(),
        met: per_row <= 0.06,
        reference: Some(1.0),
        ratio: Some((per_row * 10000.0).round() / 10000.0),
        note: Some("$batch envelopes and token requests; the naive push needs 1".into()),
    });

    // Latency at a steady 500 rows/s: a running worker, rows stamped at insert.
    let mut worker =
        worker_cmd(&db, &[]).env("SYNCBRIDGE_LOG", "warn").stdout(Stdio::null()).stderr(Stdio::null()).spawn()?;
    std::thread::sleep(std::time::Duration::from_secs(2));
    let total = 500 * sizes.steady_secs;
    let base = n + 1;
    db.psql(&format!(
        "DO $$ BEGIN FOR i IN {base}..{} LOOP
           INSERT INTO e VALUES (i, 'steady', i, (extract(epoch FROM clock_timestamp()) * 1000)::bigint);
           IF i % 10 = 0 THEN COMMIT; PERFORM pg_sleep(0.02); END IF;
         END LOOP; END $$",
        base + total - 1
    ));
    let deadline = Instant::now() + std::time::Duration::from_secs(120);
    let arrived = loop {
        let lists = env.emu.lists();
        let items: Vec<_> = lists.into_iter().filter(|l| l.display_name == "E").flat_map(|l| l.items).collect();
        if items.len() as u64 >= n + total || Instant::now() > deadline {
            break items;
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    };
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(worker.id() as i32, libc::SIGTERM) };
    let _ = worker.wait();
    let stamps: std::collections::HashMap<String, i64> = db
        .psql(&format!("SELECT id || '|' || t_ms FROM e WHERE id >= {base}"))
        .lines()
        .filter_map(|l| l.split_once('|').map(|(k, v)| (k.to_owned(), v.parse().unwrap_or(0))))
        .collect();
    let mut lat: Vec<f64> = arrived
        .iter()
        .filter_map(|i| {
            let key = i.fields.get("SyncKey")?.as_str()?;
            let t = stamps.get(key)?;
            Some(i.created_ms as f64 - *t as f64)
        })
        .collect();
    if lat.len() as u64 != total {
        bail!("only {} of {total} steady rows arrived", lat.len());
    }
    lat.sort_by(f64::total_cmp);
    let pct = |p: f64| lat[((lat.len() as f64 - 1.0) * p).round() as usize];
    for (label, p) in [("p50", 0.5), ("p99", 0.99)] {
        let v = pct(p);
        out.push(Figure {
            scenario: "3 end to end",
            name: format!("commit-to-target latency {label} at 500 rows/s"),
            value: v.round(),
            unit: "ms",
            goal: if label == "p99" { "p99 < 500 ms".into() } else { "(reported)".into() },
            met: label != "p99" || v < 500.0,
            reference: None,
            ratio: None,
            note: Some(format!("{total} rows over {} s, 10-row transactions every 20 ms", sizes.steady_secs)),
        });
    }
    Ok(())
}

fn machine() -> Value {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines().find(|l| l.starts_with("model name")).map(|l| l.split(':').nth(1).unwrap_or("").trim().to_owned())
        })
        .unwrap_or_default();
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .next()
                .map(|l| l.split_whitespace().nth(1).unwrap_or("0").parse::<u64>().unwrap_or(0) / 1024 / 1024)
        })
        .unwrap_or(0);
    json!({ "cpu": cpu, "cores": cores, "memory_gib": mem })
}

fn markdown(figures: &[Figure], machine: &Value, quick: bool) -> String {
    let mut s = format!(
        "Machine: {} ({} cores, {} GiB){}\n\n| scenario | figure | value | reference | ratio | goal | met |\n|---|---|---|---|---|---|---|\n",
        machine["cpu"].as_str().unwrap_or("?"),
        machine["cores"],
        machine["memory_gib"],
        if quick { ", quick mode (small sizes: not the figures of record)" } else { "" }
    );
    for f in figures {
        s.push_str(&format!(
            "| {} | {} | {} {} | {} | {} | {} | {} |\n",
            f.scenario,
            f.name,
            f.value,
            f.unit,
            f.reference.map(|r| r.to_string()).unwrap_or_else(|| "–".into()),
            f.ratio.map(|r| r.to_string()).unwrap_or_else(|| "–".into()),
            f.goal,
            if f.met { "yes" } else { "**no**" }
        ));
    }
    s
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let quick = args.iter().any(|a| a == "--quick");
    let out_path = args.iter().position(|a| a == "--out").and_then(|i| args.get(i + 1).cloned()).unwrap_or_else(|| {
        if quick {
            "target/bench-quick.json".into()
        } else {
            "bench/results/latest.json".into()
        }
    });
    let sizes = if quick {
        Sizes {
            e2e_rows: 500,
            steady_secs: 3,
            big_tx: 20_000,
            small_txs: 2_000,
            runs: 1,
            coalesce_rows: 100,
            coalesce_rounds: 5,
        }
    } else {
        Sizes {
            e2e_rows: 20_000,
            steady_secs: 30,
            big_tx: 1_000_000,
            small_txs: 200_000,
            runs: 3,
            coalesce_rows: 1_000,
            coalesce_rounds: 100,
        }
    };
    let cluster: &'static Cluster = Box::leak(Box::new(Cluster::start(ClusterOptions {
        conf: vec!["wal_level = logical".into(), "max_wal_size = '8GB'".into(), "checkpoint_timeout = '30min'".into()],
        hba: Vec::new(),
        files: Vec::new(),
    })));
    let mut figures = Vec::new();

    eprintln!("scenarios 1, 2, 6: decode, ingest + stage, memory");
    let db = cluster.new_db("bench decode");
    prepare(&db, "CREATE TABLE b (id bigint PRIMARY KEY, title text, qty int)");
    db.psql("SELECT sync.define('b', source => 'b', target => 't', list => 'B')");
    db.psql("SELECT sync.enable('b')");
    // The definition is enabled: the slots must not start a backfill.
    db.psql("UPDATE sync.definitions SET backfill = 'done'");
    decode_and_stage(
        &db,
        &sizes,
        &format!("one {}-row transaction", sizes.big_tx),
        sizes.big_tx,
        &format!("INSERT INTO b SELECT g, 'row ' || g, g FROM generate_series(1, {}) g", sizes.big_tx),
        &mut figures,
    )?;
    let base = sizes.big_tx + 1;
    decode_and_stage(
        &db,
        &sizes,
        &format!("{} one-row transactions", sizes.small_txs),
        sizes.small_txs,
        &format!(
            "DO $$ BEGIN FOR i IN {base}..{} LOOP INSERT INTO b VALUES (i, 'row ' || i, i); COMMIT; END LOOP; END $$",
            base + sizes.small_txs - 1
        ),
        &mut figures,
    )?;

    eprintln!("scenario 3: end to end");
    end_to_end(cluster, &sizes, &mut figures)?;

    eprintln!("scenario 5: coalescing");
    coalescing(cluster, &sizes, &mut figures)?;

    let machine = machine();
    let doc = json!({
        "quick": quick,
        "machine": machine,
        "postgres": cluster.psql("postgres", "SELECT version()"),
        "figures": figures,
        "not_yet_measured": ["4 throttled budget use", "7 outage WAL retention"],
    });
    if let Some(dir) = std::path::Path::new(&out_path).parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&out_path, serde_json::to_string_pretty(&doc)?)?;
    let md = markdown(&figures, &machine, quick);
    std::fs::write(std::path::Path::new(&out_path).with_extension("md"), &md)?;
    println!("{md}");
    println!("figures written to {out_path}");
    Ok(())
}
