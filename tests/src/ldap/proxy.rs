//! A fault-injecting proxy in front of slapd that understands LDAP's framing
//! (BER: one `LDAPMessage` at a time, its message ID and operation), so the
//! robustness scenarios written for the HTTP emulators have LDAP
//! equivalents:
//!
//! | fault | here |
//! |---|---|
//! | `Status(s)` | the operation is not forwarded; its response carries the result code of `s` ([`rc_for_status`]) and the text `fault injected by the test proxy (HTTP s equivalent)` |
//! | `Throttle(_)` | busy (51), not forwarded |
//! | `Drop` | both connections closed, the operation not forwarded |
//! | `Garbage`, `Raw(..)` | bytes that are not BER answered, the connection closed |
//! | `Truncated` | forwarded and carried out, half of its response sent, the connection closed |
//! | `RunThenStatus(s)` | carried out, its response replaced by one with `s`'s code |
//! | `RunThenDrop`, `RunThenStall(ms)` | carried out, then the connection closed (after `ms`) |
//!
//! Faults apply to operations other than binds, unbinds, abandons and
//! extended operations (the emulators' "API requests"). A write limit
//! (writes a sliding minute) answers busy beyond it. Latency delays every
//! operation. The counters are the emulators' [`Stats`]: `requests` (every
//! operation), `writes` (adds, modifies, deletes and modify-DNs answered
//! success), `throttled` (busy answers of the limit), `unauthorized`
//! (binds answered 49).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::emulator::{Fault, Stats};

/// The LDAP result code a fault's HTTP status stands for.
pub fn rc_for_status(status: u16) -> u8 {
    match status {
        400 | 422 => 21, // invalidAttributeSyntax: the data is refused
        401 => 49,
        403 => 50,
        404 => 32,
        409 => 68,
        429 => 51,
        502..=504 => 52,
        _ => 80,
    }
}

const BIND: u8 = 0x60;
const UNBIND: u8 = 0x42;
const ABANDON: u8 = 0x50;
const EXTENDED: u8 = 0x77;
const SEARCH_ENTRY: u8 = 0x64;
const SEARCH_REF: u8 = 0x73;
const INTERMEDIATE: u8 = 0x79;

/// The response tag of a request tag.
fn response_tag(op: u8) -> u8 {
    match op {
        0x60 => 0x61,
        0x63 => 0x65,
        0x66 => 0x67,
        0x68 => 0x69,
        0x4a => 0x6b,
        0x6c => 0x6d,
        0x6e => 0x6f,
        0x77 => 0x78,
        other => other | 0x01,
    }
}

fn is_write(op: u8) -> bool {
    matches!(op, 0x66 | 0x68 | 0x4a | 0x6c)
}

/// What the proxy holds for the tests.
#[derive(Default)]
struct State {
    faults: VecDeque<(Fault, u32)>,
    latency_ms: u64,
    writes_per_min: Option<u32>,
    write_times: VecDeque<Instant>,
    stats: Stats,
}

/// What happens to the response of a forwarded operation.
#[derive(Debug, Clone)]
enum After {
    Pass,
    Truncate,
    Replace(u16),
    Drop,
    Stall(u64),
}

/// The proxy, serving on its own runtime.
pub struct Proxy {
    /// Its loopback port.
    pub port: u16,
    state: Arc<Mutex<State>>,
    _rt: tokio::runtime::Runtime,
}

impl Proxy {
    /// Starts a proxy to `127.0.0.1:upstream`, at most `writes_per_min` writes a minute.
    pub fn start(upstream: u16, writes_per_min: Option<u32>) -> Self {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
        let state = Arc::new(Mutex::new(State { writes_per_min, ..State::default() }));
        let listener = rt.block_on(TcpListener::bind("127.0.0.1:0")).expect("bind the proxy");
        let port = listener.local_addr().expect("address").port();
        let st = state.clone();
        rt.spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let st = st.clone();
                tokio::spawn(async move {
                    let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)).await else {
                        // slapd is down: the client sees its connection closed.
                        return;
                    };
                    serve(client, server, st).await;
                });
            }
        });
        Self { port, state, _rt: rt }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Applies `fault` to the next `count` operations.
    pub fn inject(&self, fault: Fault, count: u32) {
        self.state().faults.push_back((fault, count));
    }

    /// Delays every operation by `ms`.
    pub fn set_latency(&self, ms: u64) {
        self.state().latency_ms = ms;
    }

    /// The counters.
    pub fn stats(&self) -> Stats {
        self.state().stats
    }
}

/// Reads one BER element (an `LDAPMessage`), whole.
async fn read_message(r: &mut (impl AsyncReadExt + Unpin)) -> Option<Vec<u8>> {
    let mut head = [0u8; 2];
    r.read_exact(&mut head).await.ok()?;
    let mut msg = head.to_vec();
    let len = if head[1] < 0x80 {
        usize::from(head[1])
    } else {
        let n = usize::from(head[1] & 0x7f);
        if n == 0 || n > 4 {
            return None;
        }
        let mut b = vec![0u8; n];
        r.read_exact(&mut b).await.ok()?;
        msg.extend_from_slice(&b);
        b.iter().fold(0usize, |acc, x| (acc << 8) | usize::from(*x))
    };
    let mut body = vec![0u8; len];
    r.read_exact(&mut body).await.ok()?;
    msg.extend_from_slice(&body);
    Some(msg)
}

/// The header length of the element at `b` and its content length.
fn header(b: &[u8]) -> Option<(usize, usize)> {
    let first = *b.get(1)?;
    if first < 0x80 {
        return Some((2, usize::from(first)));
    }
    let n = usize::from(first & 0x7f);
    let len = b.get(2..2 + n)?.iter().fold(0usize, |acc, x| (acc << 8) | usize::from(*x));
    Some((2 + n, len))
}

/// A message's ID (its bytes) and operation tag, and for a response its result code.
fn parse(msg: &[u8]) -> Option<(Vec<u8>, u8, Option<u8>)> {
    let (h, _) = header(msg)?;
    let id_el = msg.get(h..)?;
    if id_el.first() != Some(&0x02) {
        return None;
    }
    let (ih, il) = header(id_el)?;
    let id = id_el.get(ih..ih + il)?.to_vec();
    let op_el = id_el.get(ih + il..)?;
    let op = *op_el.first()?;
    // A response's first component: resultCode ENUMERATED (0x0a, 1 byte).
    let rc = header(op_el).and_then(|(oh, _)| {
        let c = op_el.get(oh..)?;
        (c.first() == Some(&0x0a) && c.get(1) == Some(&1)).then(|| c[2])
    });
    Some((id, op, rc))
}

fn ber_len(n: usize) -> Vec<u8> {
    if n < 0x80 {
        vec![n as u8]
    } else {
        let bytes: Vec<u8> = n.to_be_bytes().iter().copied().skip_while(|b| *b == 0).collect();
        let mut out = vec![0x80 | bytes.len() as u8];
        out.extend(bytes);
        out
    }
}

fn element(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    out.extend(ber_len(content.len()));
    out.extend_from_slice(content);
    out
}

/// A response to the operation `op` of message `id` with result code `rc`.
fn response(id: &[u8], op: u8, rc: u8, text: &str) -> Vec<u8> {
    let mut result = element(0x0a, &[rc]);
    result.extend(element(0x04, b""));
    result.extend(element(0x04, text.as_bytes()));
    let mut msg = element(0x02, id);
    msg.extend(element(response_tag(op), &result));
    element(0x30, &msg)
}

/// Forwarded operations by message ID: their request tag and what happens to their response.
type Pending = HashMap<Vec<u8>, (u8, After)>;

async fn serve(client: TcpStream, server: TcpStream, st: Arc<Mutex<State>>) {
    let (mut cr, cw) = client.into_split();
    let (mut sr, mut sw) = server.into_split();
    let cw = Arc::new(tokio::sync::Mutex::new(cw));
    let pending: Arc<Mutex<Pending>> = Arc::default();
    let lock = |st: &Arc<Mutex<State>>| st.lock().unwrap_or_else(|p| p.into_inner()).latency_ms;
    let up = {
        let (st, cw, pending) = (st.clone(), cw.clone(), pending.clone());
        async move {
            while let Some(msg) = read_message(&mut cr).await {
                let Some((id, op, _)) = parse(&msg) else { return };
                let latency = lock(&st);
                if latency > 0 {
                    tokio::time::sleep(Duration::from_millis(latency)).await;
                }
                let fault = {
                    let mut s = st.lock().unwrap_or_else(|p| p.into_inner());
                    s.stats.requests += 1;
                    let api = !matches!(op, BIND | UNBIND | ABANDON | EXTENDED);
                    let mut fault = None;
                    if api {
                        if let Some((f, n)) = s.faults.front_mut() {
                            fault = Some(f.clone());
                            *n -= 1;
                            if *n == 0 {
                                s.faults.pop_front();
                            }
                        }
                    }
                    if fault.is_none() && is_write(op) {
                        if let Some(limit) = s.writes_per_min {
                            let now = Instant::now();
                            while s
                                .write_times
                                .front()
                                .is_some_and(|t| now.duration_since(*t) >= Duration::from_secs(60))
                            {
                                s.write_times.pop_front();
                            }
                            if s.write_times.len() >= limit as usize {
                                s.stats.throttled += 1;
                                fault = Some(Fault::Throttle("limit".into()));
                            }
                        }
                    }
                    fault
                };
                let mut after = After::Pass;
                match fault {
                    None | Some(Fault::BatchMissingResponses) => {}
                    Some(Fault::Status(s)) => {
                        let text = format!("fault injected by the test proxy (HTTP {s} equivalent)");
                        let r = response(&id, op, rc_for_status(s), &text);
                        if cw.lock().await.write_all(&r).await.is_err() {
                            return;
                        }
                        continue;
                    }
                    Some(Fault::Throttle(_)) => {
                        let r = response(&id, op, 51, "too many writes a minute (test proxy)");
                        if cw.lock().await.write_all(&r).await.is_err() {
                            return;
                        }
                        continue;
                    }
                    Some(Fault::Drop) => return,
                    Some(Fault::Garbage | Fault::Raw(..)) => {
                        // Best effort: the connection is closed next anyway.
                        let _ = cw.lock().await.write_all(b"HTTP/1.1 200 OK\r\n\r\nthis is not LDAP").await;
                        return;
                    }
                    Some(Fault::Truncated) => after = After::Truncate,
                    Some(Fault::RunThenStatus(s)) => after = After::Replace(s),
                    Some(Fault::RunThenDrop) => after = After::Drop,
                    Some(Fault::RunThenStall(ms)) => after = After::Stall(ms),
                }
                pending.lock().unwrap_or_else(|p| p.into_inner()).insert(id, (op, after));
                if sw.write_all(&msg).await.is_err() {
                    return;
                }
            }
        }
    };
    let down = {
        let (st, cw, pending) = (st.clone(), cw.clone(), pending.clone());
        async move {
            while let Some(msg) = read_message(&mut sr).await {
                let Some((id, op, rc)) = parse(&msg) else { return };
                let last = !matches!(op, SEARCH_ENTRY | SEARCH_REF | INTERMEDIATE);
                let entry = if last { pending.lock().unwrap_or_else(|p| p.into_inner()).remove(&id) } else { None };
                let (req, after) = entry.unwrap_or((0, After::Pass));
                if last {
                    let mut s = st.lock().unwrap_or_else(|p| p.into_inner());
                    if is_write(req) && rc == Some(0) {
                        s.stats.writes += 1;
                        s.write_times.push_back(Instant::now());
                    }
                    if req == BIND && rc == Some(49) {
                        s.stats.unauthorized += 1;
                    }
                }
                let mut w = cw.lock().await;
                match after {
                    After::Pass => {
                        if w.write_all(&msg).await.is_err() {
                            return;
                        }
                    }
                    After::Truncate => {
                        let _ = w.write_all(&msg[..msg.len() / 2]).await;
                        return;
                    }
                    After::Replace(s) => {
                        let text =
                            format!("fault injected by the test proxy after the operation ran (HTTP {s} equivalent)");
                        if w.write_all(&response(&id, req, rc_for_status(s), &text)).await.is_err() {
                            return;
                        }
                    }
                    After::Drop => return,
                    After::Stall(ms) => {
                        drop(w);
                        tokio::time::sleep(Duration::from_millis(ms)).await;
                        return;
                    }
                }
            }
        }
    };
    // Either side ending ends both (the sockets close when dropped).
    tokio::select! {
        _ = up => {}
        _ = down => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn responses_are_ber_ldap_messages() {
        let r = response(&[5], 0x68, 21, "x");
        // SEQUENCE (13) { INTEGER 5, [APPLICATION 9] (8) { ENUMERATED 21, OCTET STRING "", OCTET STRING "x" } }
        assert_eq!(r, vec![0x30, 0x0d, 0x02, 0x01, 0x05, 0x69, 0x08, 0x0a, 0x01, 21, 0x04, 0x00, 0x04, 0x01, b'x']);
        assert_eq!(parse(&r), Some((vec![5], 0x69, Some(21))));
        let long = response(&[1], 0x66, 0, &"y".repeat(300));
        assert_eq!(header(&long), Some((4, long.len() - 4)));
        assert_eq!(parse(&long).map(|p| p.2), Some(Some(0)));
    }
}
