//! The issue-tracker emulators as a program, for `make demo TARGET=github|jira|linear`.
//!
//! ```text
//! tracker-emulator KIND [--listen 127.0.0.1:0] [--secret S] [--port-file PATH]
//! ```
//!
//! KIND is `github` (owner `acme`, repository `tickets`), `jira` (site
//! user `bot@example.com`, project `SB`) or `linear` (team `ENG`); `--secret`
//! is the credential it accepts (the token, the API token, the API key).
//! No limits beyond the API's own defaults are set. Serves until SIGTERM or
//! SIGINT; `GET /_emulator/issues` shows the issues, `POST /_emulator/edit`
//! is a person editing one (see each emulator's module).

use std::net::SocketAddr;
use std::process::ExitCode;

use syncbridge_tests::{github_emulator, jira_emulator, linear_emulator};

const USAGE: &str = "usage: tracker-emulator github|jira|linear [--listen ADDR] [--secret S] [--port-file PATH]";

struct Args {
    kind: String,
    listen: SocketAddr,
    secret: Option<String>,
    port_file: Option<String>,
}

fn parse(args: &[String]) -> Result<Args, String> {
    let mut it = args.iter();
    let kind = it.next().cloned().ok_or_else(String::new)?;
    if !["github", "jira", "linear"].contains(&kind.as_str()) {
        return Err(if kind == "-h" || kind == "--help" { String::new() } else { format!("unknown kind {kind}") });
    }
    let mut out = Args { kind, listen: SocketAddr::from(([127, 0, 0, 1], 0)), secret: None, port_file: None };
    while let Some(flag) = it.next() {
        let mut value = || it.next().cloned().ok_or(format!("{flag} needs a value"));
        match flag.as_str() {
            "--listen" => {
                let v = value()?;
                out.listen = v.parse().map_err(|e| format!("--listen {v}: {e}"))?;
            }
            "--secret" => out.secret = Some(value()?),
            "--port-file" => out.port_file = Some(value()?),
            other => return Err(format!("unknown argument {other}")),
        }
    }
    Ok(out)
}

/// Starts the kind's emulator; its address (the emulator stops when the
/// returned guard is dropped).
async fn start(a: &Args) -> std::io::Result<(SocketAddr, String, Box<dyn std::any::Any>)> {
    match a.kind.as_str() {
        "github" => {
            let mut config = github_emulator::GithubConfig {
                owner: "acme".into(),
                repos: vec!["tickets".into()],
                ..Default::default()
            };
            if let Some(s) = &a.secret {
                config.token = s.clone();
            }
            let e = github_emulator::Emulator::start_on(config, a.listen).await?;
            Ok((e.addr(), e.base_url(), Box::new(e)))
        }
        "jira" => {
            let mut config = jira_emulator::EmulatorConfig::default();
            if let Some(s) = &a.secret {
                config.api_token = s.clone();
            }
            let e = jira_emulator::Jira::start_on(config, a.listen).await?;
            Ok((e.addr(), e.authority_url(), Box::new(e)))
        }
        _ => {
            let mut config = linear_emulator::EmulatorConfig::default();
            if let Some(s) = &a.secret {
                config.api_key = s.clone();
            }
            let e = linear_emulator::Emulator::start_on(config, a.listen).await?;
            Ok((e.addr(), e.base_url(), Box::new(e)))
        }
    }
}

async fn serve(a: Args) -> Result<(), String> {
    let (addr, url, _guard) = start(&a).await.map_err(|e| format!("listen: {e}"))?;
    syncbridge_tests::process::announce_and_wait(
        &format!("{} emulator listening on {url}", a.kind),
        addr.port(),
        a.port_file.as_deref(),
    )
    .await
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let a = match parse(&args) {
        Ok(a) => a,
        Err(e) => {
            if !e.is_empty() {
                eprintln!("tracker-emulator: {e}");
            }
            eprintln!("{USAGE}");
            return if e.is_empty() && !args.is_empty() { ExitCode::SUCCESS } else { ExitCode::from(2) };
        }
    };
    let rt = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("tracker-emulator: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(serve(a)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tracker-emulator: {e}");
            ExitCode::FAILURE
        }
    }
}
