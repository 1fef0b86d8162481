//! The Microsoft Graph emulator as a program (the demo starts it).
//!
//! ```text
//! graph-emulator [--listen 127.0.0.1:0] [--tenant T] [--client-id C] [--client-secret S]
//!                [--budget-per-min N] [--token-lifetime-secs N] [--time-zone TZ] [--port-file PATH]
//! graph-emulator dump --url http://127.0.0.1:PORT
//! graph-emulator edit --url http://127.0.0.1:PORT --list L --key K --fields '{"Title": "…"}' [--editor N]
//! ```
//!
//! The first form serves until SIGTERM or SIGINT and prints
//! `graph emulator listening on http://127.0.0.1:PORT`; the second prints
//! the emulator's lists and items as text tables; the third is a person
//! editing the item with SyncKey K "in SharePoint" (as site user N, 7 by
//! default): its version, eTag, Modified and editor move on.

use std::net::SocketAddr;
use std::process::ExitCode;

use serde_json::Value;
use syncbridge_tests::graph_emulator::{Emulator, EmulatorConfig, ListSnapshot};

const USAGE: &str = "usage: graph-emulator [--listen ADDR] [--tenant T] [--client-id C] [--client-secret S] \
                     [--budget-per-min N] [--token-lifetime-secs N] [--time-zone TZ] [--port-file PATH]\n       \
                     graph-emulator dump --url http://127.0.0.1:PORT\n       \
                     graph-emulator edit --url http://127.0.0.1:PORT --list L --key K --fields JSON [--editor N]";

struct ServeArgs {
    listen: SocketAddr,
    config: EmulatorConfig,
    port_file: Option<String>,
}

fn parse_serve(args: &[String]) -> Result<ServeArgs, String> {
    let mut out =
        ServeArgs { listen: SocketAddr::from(([127, 0, 0, 1], 0)), config: EmulatorConfig::default(), port_file: None };
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let (flag, inline) = match flag.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f, Some(v.to_string())),
            _ => (flag.as_str(), None),
        };
        if flag == "-h" || flag == "--help" {
            return Err(String::new());
        }
        let mut value = || inline.clone().or_else(|| it.next().cloned()).ok_or(format!("{flag} needs a value"));
        match flag {
            "--listen" => {
                let v = value()?;
                out.listen = v.parse().map_err(|e| format!("--listen {v}: {e}"))?;
            }
            "--tenant" => out.config.tenant_id = value()?,
            "--client-id" => out.config.client_id = value()?,
            "--client-secret" => out.config.client_secret = value()?,
            "--budget-per-min" => {
                let v = value()?;
                out.config.budget_per_min = Some(v.parse().map_err(|e| format!("--budget-per-min {v}: {e}"))?);
            }
            "--token-lifetime-secs" => {
                let v = value()?;
                out.config.token_lifetime_secs = v.parse().map_err(|e| format!("--token-lifetime-secs {v}: {e}"))?;
            }
            "--time-zone" => out.config.time_zone = value()?,
            "--port-file" => out.port_file = Some(value()?),
            other => return Err(format!("unknown argument {other}")),
        }
    }
    Ok(out)
}

async fn serve(args: ServeArgs) -> Result<(), String> {
    use tokio::signal::unix::{signal, SignalKind};
    let emulator = Emulator::start_on(args.config, args.listen).await.map_err(|e| format!("listen: {e}"))?;
    let mut term = signal(SignalKind::terminate()).map_err(|e| e.to_string())?;
    let mut int = signal(SignalKind::interrupt()).map_err(|e| e.to_string())?;
    println!("graph emulator listening on {}", emulator.authority_url());
    if let Some(path) = &args.port_file {
        // Write then rename, so a script polling for the file never reads it half-written.
        let tmp = format!("{path}.tmp");
        std::fs::write(&tmp, format!("{}\n", emulator.addr().port()))
            .and_then(|()| std::fs::rename(&tmp, path))
            .map_err(|e| format!("--port-file {path}: {e}"))?;
    }
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    drop(emulator);
    Ok(())
}

fn cell(v: Option<&Value>) -> String {
    let s = match v {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
    };
    let s = s.replace(['\n', '\r', '\t'], " ");
    if s.chars().count() > 48 {
        format!("{}…", s.chars().take(47).collect::<String>())
    } else {
        s
    }
}

fn table(list: &ListSnapshot) -> String {
    let mut names: Vec<String> = list
        .columns
        .iter()
        .filter_map(|c| {
            let name = c.get("name")?.as_str()?;
            Some(if c.get("lookup").is_some() { format!("{name}LookupId") } else { name.to_string() })
        })
        .collect();
    for item in &list.items {
        for k in item.fields.keys() {
            if !names.contains(k) {
                names.push(k.clone());
            }
        }
    }
    let mut header = vec!["id".to_string()];
    header.extend(names.iter().cloned());
    header.push("eTag".into());
    let rows: Vec<Vec<String>> = list
        .items
        .iter()
        .map(|item| {
            let mut row = vec![item.id.clone()];
            row.extend(names.iter().map(|n| cell(item.fields.get(n))));
            row.push(item.etag.trim_matches('"').rsplit(',').next().map(|v| format!("v{v}")).unwrap_or_default());
            row
        })
        .collect();
    let widths: Vec<usize> = (0..header.len())
        .map(|i| rows.iter().map(|r| r[i].chars().count()).chain([header[i].chars().count()]).max().unwrap_or(0))
        .collect();
    let line = |cells: &[String]| {
        let padded: Vec<String> =
            cells.iter().zip(&widths).map(|(c, w)| format!("{c}{}", " ".repeat(w - c.chars().count()))).collect();
        format!("  {}\n", padded.join("  ").trim_end())
    };
    let mut out = format!(
        "{} ({} item{}; list {}, site {})\n",
        list.display_name,
        list.items.len(),
        if list.items.len() == 1 { "" } else { "s" },
        list.id,
        list.site_id
    );
    out.push_str(&line(&header));
    out.push_str(&line(&widths.iter().map(|w| "-".repeat(*w)).collect::<Vec<_>>()));
    for r in &rows {
        out.push_str(&line(r));
    }
    out
}

async fn dump(args: &[String]) -> Result<(), String> {
    let mut url = None;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--url" => url = it.next().cloned(),
            s if s.starts_with("--url=") => url = Some(s["--url=".len()..].to_string()),
            other => return Err(format!("unknown argument {other}")),
        }
    }
    let url = url.ok_or("dump needs --url")?;
    let base = url.trim_end_matches('/').trim_end_matches("/v1.0").trim_end_matches('/');
    let resp = reqwest::get(format!("{base}/_emulator/lists")).await.map_err(|e| format!("{base}: {e}"))?;
    if !resp.status().is_success() {
        return Err(format!("{base}/_emulator/lists: HTTP {}", resp.status()));
    }
    let lists: Vec<ListSnapshot> = resp.json().await.map_err(|e| format!("{base}/_emulator/lists: {e}"))?;
    if lists.is_empty() {
        println!("(no lists)");
    }
    for (i, list) in lists.iter().enumerate() {
        if i > 0 {
            println!();
        }
        print!("{}", table(list));
    }
    Ok(())
}

async fn edit(args: &[String]) -> Result<(), String> {
    let (mut url, mut list, mut key, mut fields, mut editor) = (None, None, None, None, 7u64);
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut value = || it.next().cloned().ok_or(format!("{a} needs a value"));
        match a.as_str() {
            "--url" => url = Some(value()?),
            "--list" => list = Some(value()?),
            "--key" => key = Some(value()?),
            "--fields" => fields = Some(value()?),
            "--editor" => editor = value()?.parse().map_err(|e| format!("--editor: {e}"))?,
            other => return Err(format!("unknown argument {other}")),
        }
    }
    let url = url.ok_or("edit needs --url")?;
    let fields: Value = serde_json::from_str(&fields.ok_or("edit needs --fields")?)
        .map_err(|e| format!("--fields is not JSON: {e}"))?;
    let base = url.trim_end_matches('/').trim_end_matches("/v1.0").trim_end_matches('/');
    let body = serde_json::json!({"list": list.ok_or("edit needs --list")?, "sync_key": key.ok_or("edit needs --key")?,
                                  "fields": fields, "editor": editor});
    let resp = reqwest::Client::new()
        .post(format!("{base}/_emulator/edit"))
        .json(&body)
        .send()
        .await
        .map_err(|e| format!("{base}: {e}"))?;
    let status = resp.status();
    let text = resp.text().await.unwrap_or_default();
    if !status.is_success() {
        return Err(format!("{base}/_emulator/edit: HTTP {status}: {text}"));
    }
    Ok(())
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("dump") => dump(&args[1..]).await,
        Some("edit") => edit(&args[1..]).await,
        _ => match parse_serve(&args) {
            Ok(a) => serve(a).await,
            Err(e) if e.is_empty() => {
                println!("{USAGE}");
                return ExitCode::SUCCESS;
            }
            Err(e) => Err(format!("{e}\n{USAGE}")),
        },
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("graph-emulator: {e}");
            ExitCode::FAILURE
        }
    }
}
