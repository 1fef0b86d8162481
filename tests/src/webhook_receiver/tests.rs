//! The receiver over HTTP, fed by the worker's signer (the receiver's own
//! verifier is what is being relied on; the signer is only the sender here).

use std::time::{SystemTime, UNIX_EPOCH};

use reqwest::Client;
use serde_json::{json, Value};
use syncbridge_worker::target::webhook::Signer;

use super::*;
use crate::emulator::Emulator;

const SECRET: &str = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD";

fn now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() as i64
}

struct Sender {
    client: Client,
    url: String,
    signer: Signer,
}

impl Sender {
    fn new(emulator: &Emulator<Receiver>, secrets: &[&str]) -> Self {
        let client = Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
        Self { client, url: format!("{}{HOOK_PATH}", emulator.authority_url()), signer: Signer::new(secrets).unwrap() }
    }

    async fn post(&self, id: &str, ts: i64, body: &[u8], tamper: bool) -> reqwest::Response {
        let signature = self.signer.sign(id, ts, body).unwrap();
        let mut sent = body.to_vec();
        if tamper {
            sent.push(b' ');
        }
        self.client
            .post(&self.url)
            .header("webhook-id", id)
            .header("webhook-timestamp", ts.to_string())
            .header("webhook-signature", signature)
            .header("content-type", "application/json")
            .body(sent)
            .send()
            .await
            .unwrap()
    }
}

async fn launch(secrets: &[&str]) -> Emulator<Receiver> {
    Emulator::launch(Receiver::new(secrets).unwrap(), "127.0.0.1:0".parse().unwrap()).await.unwrap()
}

#[tokio::test]
async fn verified_deliveries_are_recorded_by_id_and_duplicates_counted() {
    let emulator = launch(&[SECRET]).await;
    let sender = Sender::new(&emulator, &[SECRET]);
    let body = br#"{"type":"people.created","data":{"key":{"id":1}}}"#;
    assert_eq!(sender.post("msg_1", now(), body, false).await.status(), 204);
    assert_eq!(sender.post("msg_2", now(), b"{}", false).await.status(), 204);
    // A retry of msg_1 (a new timestamp, the same id) is a duplicate.
    assert_eq!(sender.post("msg_1", now() + 1, body, false).await.status(), 204);
    let state = emulator.state();
    let st = state.lock();
    let r = &st.api;
    assert_eq!(r.delivery_order(), ["msg_1", "msg_2"]);
    assert_eq!(r.deliveries()["msg_1"].accepted, 2);
    assert_eq!(&r.deliveries()["msg_1"].body[..], body);
    assert_eq!(r.duplicates(), 1);
    assert!(r.rejected().is_empty());
    assert_eq!(r.meter().stats.writes, 3);
}

#[tokio::test]
async fn bad_signatures_and_stale_timestamps_get_401() {
    let emulator = launch(&[SECRET]).await;
    let sender = Sender::new(&emulator, &[SECRET]);
    assert_eq!(sender.post("msg_1", now(), b"{}", true).await.status(), 401);
    assert_eq!(sender.post("msg_2", now() - 301, b"{}", false).await.status(), 401);
    assert_eq!(sender.post("msg_3", now() + 400, b"{}", false).await.status(), 401);
    let other = format!("whsec_{}", base64::Engine::encode(&base64::engine::general_purpose::STANDARD, [3u8; 32]));
    let stranger = Sender::new(&emulator, &[other.as_str()]);
    assert_eq!(stranger.post("msg_4", now(), b"{}", false).await.status(), 401);
    // Unsigned.
    let unsigned = sender.client.post(&sender.url).body("{}").send().await.unwrap();
    assert_eq!(unsigned.status(), 401);
    let state = emulator.state();
    let st = state.lock();
    let reasons: Vec<&VerifyError> = st.api.rejected().iter().map(|(_, e)| e).collect();
    assert_eq!(reasons.len(), 5);
    assert_eq!(reasons[0], &VerifyError::Mismatch);
    assert!(matches!(reasons[1], VerifyError::TooOld { .. }));
    assert!(matches!(reasons[2], VerifyError::TooNew { .. }));
    assert_eq!(reasons[3], &VerifyError::Mismatch);
    assert_eq!(reasons[4], &VerifyError::MissingHeader("webhook-id"));
    assert!(st.api.deliveries().is_empty() && st.api.attempts().is_empty());
}

#[tokio::test]
async fn rotation_either_secret_verifies() {
    let second = format!("whsec_{}", base64::Engine::encode(&base64::engine::general_purpose::STANDARD, [5u8; 32]));
    // The receiver knows only the new secret; the sender signs with both.
    let emulator = launch(&[second.as_str()]).await;
    let sender = Sender::new(&emulator, &[SECRET, second.as_str()]);
    assert_eq!(sender.post("msg_1", now(), b"{}", false).await.status(), 204);
    assert_eq!(emulator.state().lock().api.deliveries().len(), 1);
}

#[tokio::test]
async fn scripted_statuses_then_the_default() {
    let emulator = launch(&[SECRET]).await;
    let sender = Sender::new(&emulator, &[SECRET]);
    {
        let state = emulator.state();
        let mut st = state.lock();
        st.api.script(Answer::retry_after(429, "2"), 1);
        st.api.script(Answer { status: 301, retry_after: None, location: Some("/elsewhere".into()) }, 1);
        st.api.script(Answer::status(503), 1);
        st.api.script(Answer::status(200), 1);
    }
    let r = sender.post("msg_1", now(), b"{}", false).await;
    assert_eq!((r.status().as_u16(), r.headers()["retry-after"].to_str().unwrap()), (429, "2"));
    let r = sender.post("msg_1", now(), b"{}", false).await;
    assert_eq!((r.status().as_u16(), r.headers()["location"].to_str().unwrap()), (301, "/elsewhere"));
    assert_eq!(sender.post("msg_1", now(), b"{}", false).await.status(), 503);
    assert_eq!(sender.post("msg_1", now(), b"{}", false).await.status(), 200);
    assert_eq!(sender.post("msg_2", now(), b"{}", false).await.status(), 204);
    // 410 from now on, set over the control plane; then scripted in bulk.
    let client = Client::new();
    let base = emulator.authority_url();
    let cfg: Value = client
        .post(format!("{base}/_emulator/config"))
        .json(&json!({"default_status": 410}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(cfg["default_status"], 410);
    assert_eq!(sender.post("msg_3", now(), b"{}", false).await.status(), 410);
    let answered = client
        .post(format!("{base}/_emulator/answers"))
        .json(&json!([{"status": 502, "count": 2}, {"status": 202}]))
        .send()
        .await
        .unwrap();
    assert_eq!(answered.status(), 200);
    assert_eq!(sender.post("msg_3", now(), b"{}", false).await.status(), 502);
    assert_eq!(sender.post("msg_3", now(), b"{}", false).await.status(), 502);
    assert_eq!(sender.post("msg_3", now(), b"{}", false).await.status(), 202);
    let summary: Value = client.get(format!("{base}/_emulator/deliveries")).send().await.unwrap().json().await.unwrap();
    assert_eq!(summary["attempts"], 9);
    assert_eq!(summary["duplicates"], 0);
    let ids: Vec<&str> = summary["deliveries"].as_array().unwrap().iter().map(|d| d["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["msg_1", "msg_2", "msg_3"]);
    let statuses: Vec<u16> = emulator.state().lock().api.attempts().iter().map(|a| a.status).collect();
    assert_eq!(statuses, [429, 301, 503, 200, 204, 410, 502, 502, 202]);
    let bad = client.post(format!("{base}/_emulator/answers")).json(&json!([{"status": 42}])).send().await.unwrap();
    assert_eq!(bad.status(), 400);
}

#[tokio::test]
async fn a_lost_answer_makes_a_counted_duplicate() {
    let emulator = launch(&[SECRET]).await;
    let sender = Sender::new(&emulator, &[SECRET]);
    emulator.inject(Fault::RunThenStatus(502), 1);
    assert_eq!(sender.post("msg_1", now(), b"{}", false).await.status(), 502);
    assert_eq!(sender.post("msg_1", now(), b"{}", false).await.status(), 204);
    assert_eq!(emulator.state().lock().api.duplicates(), 1);
}
