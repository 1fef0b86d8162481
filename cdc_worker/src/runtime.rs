//! What every long-running part of the worker shares: its name, and stop
//! signals.

use tokio::sync::watch;

/// `host:pid`, naming this worker in `sync.runs` and claims.
pub fn default_worker_name() -> String {
    let host = std::fs::read_to_string("/etc/hostname").map(|h| h.trim().to_owned()).unwrap_or_default();
    format!("{}:{}", if host.is_empty() { "worker" } else { &host }, std::process::id())
}

/// A stop of one's own that also turns true at `shutdown`: for tasks that
/// must stop together when one of them fails, not only at shutdown. Abort
/// the returned forwarder when done.
pub fn stop_channel(
    shutdown: &watch::Receiver<bool>,
) -> (watch::Sender<bool>, watch::Receiver<bool>, tokio::task::JoinHandle<()>) {
    let (stop, stopped) = watch::channel(false);
    let forward = {
        let (mut shutdown, stop) = (shutdown.clone(), stop.clone());
        tokio::spawn(async move {
            while !*shutdown.borrow() {
                if shutdown.changed().await.is_err() {
                    return;
                }
            }
            let _ = stop.send(true);
        })
    };
    (stop, stopped, forward)
}
