//! `syncbridge-worker`: the command-line edge of the worker.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use syncbridge_worker::{check, dsn::Dsn};

#[derive(Parser, Debug)]
#[command(name = "syncbridge-worker", version, about = "syncbridge CDC worker")]
struct Cli {
    /// Log format: `text` or `json`.
    #[arg(long, global = true, default_value = "text", env = "SYNCBRIDGE_LOG_FORMAT")]
    log_format: String,
    #[command(subcommand)]
    command: Command,
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
}

/// Exit codes: 0 all good, 1 a check failed, 2 could not check at all.
const EXIT_FAILED: u8 = 1;
const EXIT_UNREACHABLE: u8 = 2;

fn init_logging(format: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("SYNCBRIDGE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    if format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(&cli.log_format);
    match cli.command {
        Command::Check { dsn, json } => {
            let dsn = match Dsn::parse(&dsn) {
                Ok(d) => d,
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::from(EXIT_UNREACHABLE);
                }
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
