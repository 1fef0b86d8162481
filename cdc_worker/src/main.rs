//! `syncbridge-worker`: the command-line edge of the worker.

use std::process::ExitCode;

use std::time::Duration;

use clap::parser::ValueSource;
use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use syncbridge_worker::error::WorkerError;
use syncbridge_worker::export::{self, ExportConfig};
use syncbridge_worker::ingest::{self, IngestConfig};
use syncbridge_worker::metrics;
use syncbridge_worker::observe::{self, SlotChoice};
use syncbridge_worker::target::policy::{DEFAULT_SECRETS_DIR, ENV_PREFIX};
use syncbridge_worker::target::TargetPolicy;
use syncbridge_worker::{check, pg::dsn::Dsn};

#[derive(Parser, Debug)]
#[command(name = "syncbridge-worker", version, about = "syncbridge CDC worker")]
struct Cli {
    /// Log format: `text` or `json`.
    #[arg(long, global = true, default_value = "text", env = "SYNCBRIDGE_LOG_FORMAT")]
    log_format: String,
    #[command(subcommand)]
    command: Command,
}

/// What targets may make the worker read and reach. The database cannot
/// change any of it: a target naming anything else is left `misconfigured`.
#[derive(clap::Args, Debug)]
struct PolicyArgs {
    /// `file:` secrets are read only from regular files below this directory.
    #[arg(long, env = "SYNCBRIDGE_SECRETS_DIR", default_value = DEFAULT_SECRETS_DIR)]
    secrets_dir: std::path::PathBuf,
    /// Allow base_url / authority_url on loopback (127.0.0.0/8, localhost,
    /// [::1]; http too), e.g. for the Graph emulator.
    #[arg(long, env = "SYNCBRIDGE_ALLOW_LOOPBACK_TARGETS", value_parser = clap::builder::BoolishValueParser::new(), num_args = 0..=1, default_missing_value = "true", default_value = "false")]
    allow_loopback_targets: bool,
    /// Also allow this host (HOST or HOST:PORT, https only) as base_url /
    /// authority_url, besides Microsoft's endpoints. Repeatable.
    #[arg(
        long = "allow-target-host",
        value_name = "HOST[:PORT]",
        env = "SYNCBRIDGE_ALLOW_TARGET_HOSTS",
        value_delimiter = ','
    )]
    allow_target_hosts: Vec<String>,
}

impl PolicyArgs {
    fn policy(self) -> Result<std::sync::Arc<TargetPolicy>, ExitCode> {
        if !self.secrets_dir.is_absolute() {
            eprintln!("error: --secrets-dir must be an absolute path, got {}", self.secrets_dir.display());
            return Err(ExitCode::from(EXIT_UNREACHABLE));
        }
        tracing::info!(
            secrets_dir = %self.secrets_dir.display(),
            env_prefix = ENV_PREFIX,
            allow_loopback = self.allow_loopback_targets,
            extra_hosts = ?self.allow_target_hosts,
            "target policy"
        );
        Ok(std::sync::Arc::new(TargetPolicy {
            secrets_dir: self.secrets_dir,
            allow_loopback: self.allow_loopback_targets,
            extra_hosts: self.allow_target_hosts.into_iter().filter(|h| !h.trim().is_empty()).collect(),
        }))
    }
}

/// Where to serve metrics and health.
#[derive(clap::Args, Debug)]
struct MetricsArgs {
    /// Serve Prometheus metrics (/metrics) and health (/healthz, /readyz) on
    /// this address (HOST:PORT, e.g. 127.0.0.1:9187); none by default.
    #[arg(long, value_name = "HOST:PORT", env = "SYNCBRIDGE_METRICS_ADDR")]
    metrics_addr: Option<String>,
}

impl MetricsArgs {
    /// Listens on the address, serving the endpoints, and starts the
    /// sampler; Err: the exit code when the address cannot be used.
    async fn start(
        self,
        dsn: &Dsn,
        slot: SlotChoice,
        rx: tokio::sync::watch::Receiver<bool>,
    ) -> Result<Vec<tokio::task::JoinHandle<()>>, ExitCode> {
        let Some(addr) = self.metrics_addr.filter(|a| !a.trim().is_empty()) else {
            return Ok(Vec::new());
        };
        let listener = match metrics::server::bind(&addr).await {
            Ok(l) => l,
            Err(e) => {
                eprintln!("error: cannot serve metrics on {addr}: {e}");
                return Err(ExitCode::from(EXIT_UNREACHABLE));
            }
        };
        let local = listener.local_addr().map(|a| a.to_string()).unwrap_or(addr);
        if listener.local_addr().is_ok_and(|a| !a.ip().is_loopback()) {
            tracing::warn!(addr = %local, "the metrics endpoint is not on loopback: whoever reaches it sees target and definition names and queue depths");
        }
        tracing::info!(addr = %local, "serving /metrics, /healthz and /readyz");
        let server = tokio::spawn(metrics::server::serve(listener));
        let sampler = tokio::spawn(observe::sample_loop(dsn.clone(), slot, observe::SAMPLE_INTERVAL, rx));
        Ok(vec![server, sampler])
    }
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Check that a database is ready for syncbridge: server version,
    /// wal_level, the extension, the role's right to replicate.
    Check {
        /// Connection string (libpq key=value or postgres:// URL).
        #[arg(long, env = "SYNCBRIDGE_DSN")]
        dsn: String,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Stream the replication slot and stage changed keys (runs until
    /// SIGTERM; with --once, until everything committed before the start is
    /// staged).
    Run {
        /// Connection string (libpq key=value or postgres:// URL).
        #[arg(long, env = "SYNCBRIDGE_DSN")]
        dsn: String,
        /// Replication slot (default: the database's sync.slot_name).
        #[arg(long)]
        slot: Option<String>,
        /// Publication the slot streams.
        #[arg(long, default_value = IngestConfig::PUBLICATION)]
        publication: String,
        /// Stop once caught up with the WAL position at start and every backfill is done.
        #[arg(long)]
        once: bool,
        /// Most keys held before staging.
        #[arg(long, default_value_t = IngestConfig::BATCH_MAX_KEYS)]
        batch_keys: usize,
        /// Longest a changed key waits before staging, in milliseconds.
        #[arg(long, default_value_t = IngestConfig::BATCH_MAX_WAIT.as_millis() as u64)]
        batch_ms: u64,
        /// How often the server hears the confirmed position, in milliseconds.
        #[arg(long, default_value_t = IngestConfig::STATUS_INTERVAL.as_millis() as u64)]
        status_ms: u64,
        /// Keys per backfill transaction.
        #[arg(long, default_value_t = IngestConfig::BACKFILL_CHUNK)]
        backfill_chunk: i32,
        /// Decode only: stage nothing, confirm nothing (for benchmarks).
        #[arg(long)]
        decode_only: bool,
        /// Only ingest: leave exporting to other workers (`export`).
        #[arg(long)]
        no_export: bool,
        /// Claim loops per target, each with its own connection (1 to 16).
        #[arg(long, default_value_t = export::DEFAULT_LANES as u64, value_parser = clap::value_parser!(u64).range(1..=16))]
        lanes: u64,
        #[command(flatten)]
        policy: PolicyArgs,
        #[command(flatten)]
        metrics: MetricsArgs,
    },
    /// Send staged exports to their targets (claim → target → complete),
    /// and pull two-way lists back (pull_claim → target → pull_page →
    /// apply_imports). Any number may run at once, on any number of machines.
    Export {
        /// Connection string (libpq key=value or postgres:// URL).
        #[arg(long, env = "SYNCBRIDGE_DSN")]
        dsn: String,
        /// Pull every two-way list once and apply, then stop when nothing is left to send.
        #[arg(long)]
        once: bool,
        /// Only this target (repeatable; default: every target with an active definition).
        #[arg(long = "target")]
        targets: Vec<String>,
        /// Lease length in seconds (default: the lease_seconds setting).
        #[arg(long)]
        lease_seconds: Option<i32>,
        /// Claim loops per target, each with its own connection (1 to 16).
        #[arg(long, default_value_t = export::DEFAULT_LANES as u64, value_parser = clap::value_parser!(u64).range(1..=16))]
        lanes: u64,
        #[command(flatten)]
        policy: PolicyArgs,
        #[command(flatten)]
        metrics: MetricsArgs,
    },
}

/// Exit codes: 0 all good, 1 a check failed, 2 could not check at all.
const EXIT_FAILED: u8 = 1;
const EXIT_UNREACHABLE: u8 = 2;

fn init_logging(format: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("SYNCBRIDGE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi);
    if format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let matches = Cli::command().get_matches();
    // A password in --dsn is visible to every local user in /proc/<pid>/cmdline.
    let dsn_on_command_line =
        matches.subcommand().and_then(|(_, m)| m.value_source("dsn")) == Some(ValueSource::CommandLine);
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(c) => c,
        Err(e) => e.exit(),
    };
    init_logging(&cli.log_format);
    let parse_dsn = |s: &str| parse_dsn(s, dsn_on_command_line);
    match cli.command {
        Command::Export { dsn, once, targets, lease_seconds, lanes, policy, metrics } => {
            let dsn = match parse_dsn(&dsn) {
                Ok(d) => d,
                Err(code) => return code,
            };
            let policy = match policy.policy() {
                Ok(p) => p,
                Err(code) => return code,
            };
            let config =
                ExportConfig { targets, once, lease_seconds, lanes: lanes as usize, policy, ..ExportConfig::default() };
            let rx = shutdown_signal();
            let served = match metrics.start(&dsn, SlotChoice::None, rx.clone()).await {
                Ok(s) => s,
                Err(code) => return code,
            };
            let purger = tokio::spawn(export::housekeeping(dsn.clone(), once, rx.clone()));
            let code = supervise("export", rx.clone(), || export::run(&dsn, &config, rx.clone()), report_export).await;
            end_purger(purger, once).await;
            served.iter().for_each(|t| t.abort());
            code
        }
        Command::Run {
            dsn,
            slot,
            publication,
            once,
            batch_keys,
            batch_ms,
            status_ms,
            backfill_chunk,
            decode_only,
            no_export,
            lanes,
            policy,
            metrics,
        } => {
            let dsn = match parse_dsn(&dsn) {
                Ok(d) => d,
                Err(code) => return code,
            };
            let policy = match policy.policy() {
                Ok(p) => p,
                Err(code) => return code,
            };
            let config = IngestConfig {
                slot,
                publication,
                once,
                batch_max_keys: batch_keys,
                batch_max_wait: Duration::from_millis(batch_ms),
                status_interval: Duration::from_millis(status_ms),
                backfill_chunk,
                decode_only,
                ..IngestConfig::default()
            };
            if let Err(e) = config.validate() {
                eprintln!("error: {e}");
                return ExitCode::from(EXIT_UNREACHABLE);
            }
            // The exporter wakes as soon as the ingest stages something.
            let staged = std::sync::Arc::new(tokio::sync::Notify::new());
            let config = IngestConfig { staged: Some(staged.clone()), ..config };
            let rx = shutdown_signal();
            let slot = config.slot.clone().map_or(SlotChoice::Configured, SlotChoice::Named);
            let served = match metrics.start(&dsn, slot, rx.clone()).await {
                Ok(s) => s,
                Err(code) => return code,
            };
            // History past its retention: one purge loop per process (none
            // for a decode-only or a staging-only --once run).
            let purger = (!(decode_only || once && no_export))
                .then(|| tokio::spawn(export::housekeeping(dsn.clone(), once, rx.clone())));
            let ingest = supervise("ingest", rx.clone(), || ingest::run(&dsn, &config, rx.clone()), report_ingest);
            if no_export || decode_only {
                let code = ingest.await;
                if let Some(p) = purger {
                    end_purger(p, once).await;
                }
                served.iter().for_each(|t| t.abort());
                return code;
            }
            let export_config =
                ExportConfig { once, wake: Some(staged), lanes: lanes as usize, policy, ..ExportConfig::default() };
            let exporter =
                supervise("export", rx.clone(), || export::run(&dsn, &export_config, rx.clone()), report_export);
            let code = if once {
                // Everything committed is staged first, then sent.
                let code = ingest.await;
                if code != ExitCode::SUCCESS {
                    code
                } else {
                    exporter.await
                }
            } else {
                let (a, b) = tokio::join!(ingest, exporter);
                if a != ExitCode::SUCCESS {
                    a
                } else {
                    b
                }
            };
            if let Some(p) = purger {
                end_purger(p, once).await;
            }
            served.iter().for_each(|t| t.abort());
            code
        }
        Command::Check { dsn, json } => {
            let dsn = match parse_dsn(&dsn) {
                Ok(d) => d,
                Err(code) => return code,
            };
            match check::run(&dsn).await {
                Ok(report) => {
                    if json {
                        match serde_json::to_string_pretty(&report) {
                            Ok(s) => println!("{s}"),
                            Err(e) => {
                                eprintln!("error: cannot render the report: {e}");
                                return ExitCode::from(EXIT_UNREACHABLE);
                            }
                        }
                    } else {
                        println!("{report}");
                    }
                    if report.passed() {
                        ExitCode::SUCCESS
                    } else {
                        ExitCode::from(EXIT_FAILED)
                    }
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::from(EXIT_UNREACHABLE)
                }
            }
        }
    }
}

/// With `once` the purge finishes (it ran once, at the start); otherwise it
/// loops until shutdown, and everything else has stopped: it stops too.
async fn end_purger(purger: tokio::task::JoinHandle<()>, once: bool) {
    if once {
        let _ = purger.await;
    } else {
        purger.abort();
    }
}

fn report_ingest(summary: &ingest::IngestSummary) {
    tracing::info!(
        transactions = summary.transactions,
        changes = summary.changes,
        keys_staged = summary.keys_staged,
        batches = summary.batches,
        skipped_own = summary.skipped_own,
        backfill_steps = summary.backfill_steps,
        confirmed = %summary.confirmed,
        "ingest stopped"
    );
}

fn report_export(summary: &export::ExportSummary) {
    tracing::info!(
        claimed = summary.claimed,
        exported = summary.exported,
        failed = summary.failed,
        conflicts = summary.conflicts,
        pulled = summary.pulled,
        imported = summary.imported,
        "export stopped"
    );
}

/// A watch that turns true on SIGTERM or SIGINT.
fn shutdown_signal() -> tokio::sync::watch::Receiver<bool> {
    let (tx, rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
                return;
            }
        };
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM received"),
            _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received"),
        }
        metrics::health::stopping();
        if tx.send(true).is_err() {
            tracing::debug!("everything had already stopped");
        }
    });
    rx
}

/// Runs `task` (the ingest or the exporter), restarting it after transient
/// failures with capped exponential backoff; SIGTERM / SIGINT stop it after
/// the batch in flight.
async fn supervise<F, Fut, S>(
    what: &'static str,
    rx: tokio::sync::watch::Receiver<bool>,
    task: F,
    report: impl Fn(&S),
) -> ExitCode
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<S, WorkerError>>,
{
    let mut delay = Duration::from_millis(500);
    metrics::health::starting(what);
    loop {
        match task().await {
            Ok(summary) => {
                report(&summary);
                metrics::health::done(what);
                return ExitCode::SUCCESS;
            }
            Err(e) if e.should_restart() && !*rx.borrow() => {
                tracing::warn!(error = %e, retry_in_ms = delay.as_millis() as u64, "{what} failed; restarting");
                metrics::health::restarting(what);
                metrics::RESTARTS.inc(&[what]);
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(30));
            }
            Err(e) => {
                metrics::health::failed(what);
                tracing::error!(error = %e, "{what} stopped");
                eprintln!("error: {e}");
                return ExitCode::from(EXIT_FAILED);
            }
        }
    }
}

/// Parses a connection string, or says why not (exit code 2); warns when
/// one given on the command line holds a password.
fn parse_dsn(s: &str, on_command_line: bool) -> Result<Dsn, ExitCode> {
    let dsn = Dsn::parse(s).map_err(|e| {
        eprintln!("error: {e}");
        ExitCode::from(EXIT_UNREACHABLE)
    })?;
    if on_command_line && dsn.has_inline_password() {
        tracing::warn!(
            "the --dsn on the command line holds a password, which every local user can read in /proc/<pid>/cmdline; \
             pass it in PGPASSWORD (or ~/.pgpass), or the whole connection string in SYNCBRIDGE_DSN"
        );
    }
    Ok(dsn)
}
