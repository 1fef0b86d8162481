//! The Jira Cloud emulator as a program (for a demo against Jira).
//!
//! ```text
//! jira-emulator [--listen 127.0.0.1:0] [--email E] [--api-token T] [--project KEY]…
//!               [--requests-per-min N] [--index-lag-ms N] [--port-file PATH]
//! ```
//!
//! Serves until SIGTERM or SIGINT and prints `jira emulator listening on
//! http://127.0.0.1:PORT`; `GET /_emulator/issues` shows the issues.

use std::net::SocketAddr;
use std::process::ExitCode;

use syncbridge_tests::jira_emulator::{EmulatorConfig, Jira};

const USAGE: &str = "usage: jira-emulator [--listen ADDR] [--email E] [--api-token T] [--project KEY]... \
                     [--requests-per-min N] [--index-lag-ms N] [--port-file PATH]";

fn parse(args: &[String]) -> Result<(SocketAddr, EmulatorConfig, Option<String>), String> {
    let mut listen = SocketAddr::from(([127, 0, 0, 1], 0));
    let mut config = EmulatorConfig::default();
    let mut projects = Vec::new();
    let mut port_file = None;
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        if flag == "-h" || flag == "--help" {
            return Err(String::new());
        }
        let mut value = || it.next().cloned().ok_or(format!("{flag} needs a value"));
        match flag.as_str() {
            "--listen" => {
                let v = value()?;
                listen = v.parse().map_err(|e| format!("--listen {v}: {e}"))?;
            }
            "--email" => config.email = value()?,
            "--api-token" => config.api_token = value()?,
            "--project" => projects.push(value()?),
            "--requests-per-min" => {
                let v = value()?;
                config.requests_per_min = Some(v.parse().map_err(|e| format!("--requests-per-min {v}: {e}"))?);
            }
            "--index-lag-ms" => {
                let v = value()?;
                config.index_lag_ms = v.parse().map_err(|e| format!("--index-lag-ms {v}: {e}"))?;
            }
            "--port-file" => port_file = Some(value()?),
            other => return Err(format!("unknown argument {other}")),
        }
    }
    if !projects.is_empty() {
        config.projects = projects;
    }
    Ok((listen, config, port_file))
}

async fn serve(listen: SocketAddr, config: EmulatorConfig, port_file: Option<String>) -> Result<(), String> {
    use tokio::signal::unix::{signal, SignalKind};
    let emulator = Jira::start_on(config, listen).await.map_err(|e| format!("listen: {e}"))?;
    let mut term = signal(SignalKind::terminate()).map_err(|e| e.to_string())?;
    let mut int = signal(SignalKind::interrupt()).map_err(|e| e.to_string())?;
    println!("jira emulator listening on {}", emulator.authority_url());
    if let Some(path) = &port_file {
        // Write then rename, so a script polling for the file never reads it half-written.
        let tmp = format!("{path}.tmp");
        std::fs::write(&tmp, format!("{}\n", emulator.addr().port()))
            .and_then(|()| std::fs::rename(&tmp, path))
            .map_err(|e| format!("{path}: {e}"))?;
    }
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    Ok(())
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (listen, config, port_file) = match parse(&args) {
        Ok(p) => p,
        Err(e) => {
            if !e.is_empty() {
                eprintln!("jira-emulator: {e}");
            }
            eprintln!("{USAGE}");
            return if e.is_empty() { ExitCode::SUCCESS } else { ExitCode::from(2) };
        }
    };
    let rt = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("jira-emulator: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(serve(listen, config, port_file)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("jira-emulator: {e}");
            ExitCode::FAILURE
        }
    }
}
