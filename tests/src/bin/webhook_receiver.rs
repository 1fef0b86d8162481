//! The test webhook receiver as a program, for `make demo TARGET=webhook`.
//!
//! ```text
//! webhook-receiver --secret whsec_... [--secret ...] [--listen 127.0.0.1:0] [--port-file PATH]
//! ```
//!
//! Takes `POST /hooks`, verifying every request's Standard Webhooks
//! signature and timestamp with its own implementation
//! (`syncbridge_tests::webhook_receiver::verify`), against any of the
//! secrets given. `GET /_emulator/deliveries` shows what arrived (verified
//! deliveries by webhook-id, duplicates, refused requests); `POST
//! /_emulator/config {"default_status": 410}` makes it answer otherwise.
//! Serves until SIGTERM or SIGINT.

use std::net::SocketAddr;
use std::process::ExitCode;

use syncbridge_tests::emulator::Emulator;
use syncbridge_tests::webhook_receiver::{Receiver, HOOK_PATH};

const USAGE: &str = "usage: webhook-receiver --secret whsec_... [--secret ...] [--listen ADDR] [--port-file PATH]";

struct Args {
    listen: SocketAddr,
    secrets: Vec<String>,
    port_file: Option<String>,
}

fn parse(args: &[String]) -> Result<Args, String> {
    let mut out = Args { listen: SocketAddr::from(([127, 0, 0, 1], 0)), secrets: Vec::new(), port_file: None };
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let mut value = || it.next().cloned().ok_or(format!("{flag} needs a value"));
        match flag.as_str() {
            "--listen" => {
                let v = value()?;
                out.listen = v.parse().map_err(|e| format!("--listen {v}: {e}"))?;
            }
            "--secret" => out.secrets.push(value()?),
            "--port-file" => out.port_file = Some(value()?),
            "-h" | "--help" => return Err(String::new()),
            other => return Err(format!("unknown argument {other}")),
        }
    }
    if out.secrets.is_empty() {
        return Err("at least one --secret is needed".into());
    }
    Ok(out)
}

async fn serve(a: Args) -> Result<(), String> {
    let receiver = Receiver::new(&a.secrets)?;
    let emu = Emulator::launch(receiver, a.listen).await.map_err(|e| format!("listen: {e}"))?;
    syncbridge_tests::process::announce_and_wait(
        &format!("webhook receiver listening on {}{HOOK_PATH}", emu.authority_url()),
        emu.addr().port(),
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
                eprintln!("webhook-receiver: {e}");
            }
            eprintln!("{USAGE}");
            return if e.is_empty() { ExitCode::SUCCESS } else { ExitCode::from(2) };
        }
    };
    let rt = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("webhook-receiver: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(serve(a)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("webhook-receiver: {e}");
            ExitCode::FAILURE
        }
    }
}
