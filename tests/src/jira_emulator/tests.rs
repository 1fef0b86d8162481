//! The Jira emulator over HTTP: what it accepts and refuses, as Jira does.

use super::*;
use reqwest::Client;

struct T {
    em: Emulator,
    http: Client,
}

const AUTH: &str = "Basic Ym90QGV4YW1wbGUuY29tOmppcmEtdG9rZW4="; // bot@example.com:jira-token

impl T {
    async fn new(config: EmulatorConfig) -> Self {
        Self { em: Jira::start(config).await.unwrap(), http: Client::new() }
    }

    async fn send(&self, method: &str, path: &str, body: Option<Value>) -> (u16, reqwest::header::HeaderMap, Value) {
        let url = format!("{}{path}", self.em.authority_url());
        let mut rb = self.http.request(method.parse().unwrap(), url).header("authorization", AUTH);
        if let Some(b) = body {
            rb = rb.json(&b);
        }
        let r = rb.send().await.unwrap();
        let status = r.status().as_u16();
        let headers = r.headers().clone();
        let text = r.text().await.unwrap();
        (status, headers, serde_json::from_str(&text).unwrap_or(Value::Null))
    }
}

fn issue(summary: &str) -> Value {
    json!({"fields": {"project": {"key": "SB"}, "issuetype": {"name": "Task"}, "summary": summary,
                      "labels": ["sb-x", summary.replace(' ', "_")]},
           "properties": [{"key": "syncbridge", "value": {"key": summary}}]})
}

#[test]
fn base64_decodes() {
    assert_eq!(decode_base64("Zm9vYg==").unwrap(), b"foob");
    assert_eq!(decode_base64("Zm9v").unwrap(), b"foo");
    assert!(decode_base64("Zm9").is_none());
    assert!(decode_base64("Zm9v!===").is_none());
}

#[test]
fn adf_is_checked_and_bounded() {
    let doc = |t: &str| json!({"version": 1, "type": "doc", "content": [{"type": "paragraph", "content": [{"type": "text", "text": t}]}]});
    assert!(check_adf(&doc("hi")).is_ok());
    assert!(check_adf(&doc(&"x".repeat(MAX_TEXT))).is_ok());
    assert!(check_adf(&doc(&"x".repeat(MAX_TEXT + 1))).unwrap_err().contains("exceeds the allowed limit of 32767"));
    assert!(check_adf(&doc("")).is_err(), "empty text nodes are refused");
    assert!(check_adf(&json!("plain text")).is_err());
    assert!(check_adf(&json!({"version": 2, "type": "doc", "content": []})).is_err());
    assert!(check_adf(&json!({"version": 1, "type": "doc", "content": [{"type": "marquee"}]})).is_err());
}

#[test]
fn jql_is_bounded_and_understood() {
    assert!(Jql::parse("ORDER BY key").unwrap_err().contains("Unbounded"));
    assert!(Jql::parse("").is_err());
    let q = Jql::parse(r#"project = "SB" AND labels in ("a b", c) ORDER BY key DESC"#).unwrap();
    assert_eq!(
        q.clauses,
        vec![("project".into(), vec!["SB".to_owned()]), ("labels".into(), vec!["a b".into(), "c".into()])]
    );
    assert_eq!(q.order, vec![("key".to_owned(), true)]);
    let q = Jql::parse_at(r#"project = SB AND updated >= "2026-03-01 14:05" ORDER BY updated ASC, id ASC"#, 600, 0)
        .unwrap();
    // 14:05 at UTC+10 is 04:05 UTC.
    assert_eq!(q.updated, vec![(">=".to_owned(), 1_772_337_900_000)]);
    assert_eq!(q.order, vec![("updated".to_owned(), false), ("id".to_owned(), false)]);
    assert_eq!(Jql::parse_at("updated > -5m", 0, 600_000).unwrap().updated, vec![(">".to_owned(), 300_000)]);
    assert!(Jql::parse(r#"updated >= "yesterday""#).unwrap_err().contains("is invalid"));
    assert!(Jql::parse("project = SB ORDER BY summary").is_err());
    assert!(Jql::parse("summary ~ x").is_err());
    assert!(Jql::parse("reporter = me").unwrap_err().contains("does not exist"));
}

#[tokio::test]
async fn issues_are_created_edited_transitioned_and_deleted_as_jira_does() {
    let t = T::new(EmulatorConfig::default()).await;
    // Credentials.
    let url = format!("{}/rest/api/3/myself", t.em.authority_url());
    let r = t.http.get(&url).basic_auth("bot@example.com", Some("wrong")).send().await.unwrap();
    assert_eq!(r.status(), 401);
    assert!(r.text().await.unwrap().contains("Client must be authenticated"));
    assert_eq!(t.send("GET", "/rest/api/3/myself", None).await.0, 200);
    // Unknown paths and methods.
    assert_eq!(t.send("GET", "/rest/api/2/issue/SB-1", None).await.0, 404);
    assert_eq!(t.send("PATCH", "/rest/api/3/issue/SB-1", None).await.0, 405);

    // Bulk: partial failure, per element.
    let mut bad = issue("two");
    bad["fields"]["summary"] = json!("x".repeat(MAX_SUMMARY + 1));
    let mut spaced = issue("three");
    spaced["fields"]["labels"] = json!(["has space"]);
    let (s, _, v) = t
        .send(
            "POST",
            "/rest/api/3/issue/bulk",
            Some(json!({"issueUpdates": [issue("one"), bad, spaced, issue("four")]})),
        )
        .await;
    assert_eq!(s, 201);
    assert_eq!(v["issues"].as_array().unwrap().len(), 2);
    assert_eq!(v["issues"][0]["key"], "SB-1");
    assert_eq!(v["issues"][1]["key"], "SB-2");
    assert_eq!(v["errors"][0]["failedElementNumber"], 1);
    assert_eq!(v["errors"][0]["elementErrors"]["errors"]["summary"], "Summary must be less than 255 characters.");
    assert_eq!(v["errors"][1]["failedElementNumber"], 2);
    assert!(v["errors"][1]["elementErrors"]["errors"]["labels"].as_str().unwrap().contains("contains spaces"));
    // All refused: 400.
    let mut unknown = issue("five");
    unknown["fields"]["status"] = json!({"name": "Done"});
    unknown["fields"]["colour"] = json!("red");
    let (s, _, v) = t.send("POST", "/rest/api/3/issue/bulk", Some(json!({"issueUpdates": [unknown]}))).await;
    assert_eq!(s, 400);
    assert!(v["errors"][0]["elementErrors"]["errors"]["colour"].as_str().unwrap().contains("cannot be set"));
    assert!(v["errors"][0]["elementErrors"]["errors"]["status"].as_str().unwrap().contains("cannot be set"));
    // More than 50, and a body the description refuses.
    let many: Vec<Value> = (0..51).map(|n| issue(&format!("n{n}"))).collect();
    let (s, _, v) = t.send("POST", "/rest/api/3/issue/bulk", Some(json!({"issueUpdates": many}))).await;
    assert_eq!(s, 400);
    assert!(v["errorMessages"][0].as_str().unwrap().contains("limit of 50"));
    let (s, _, v) = t.send("POST", "/rest/api/3/issue/bulk", Some(json!({"issueUpdates": [{"fields": []}]}))).await;
    assert_eq!(s, 400);
    assert!(v["errorMessages"][0].as_str().unwrap().contains("issueUpdates[0].fields"), "{v}");
    // Required fields and Jira's messages.
    let (s, _, v) = t.send("POST", "/rest/api/3/issue", Some(json!({"fields": {"summary": "s"}}))).await;
    assert_eq!(s, 400);
    assert_eq!(v["errors"]["project"], "Specify a valid project ID or key");
    assert_eq!(v["errors"]["issuetype"], "Specify an issue type");

    // Edit: 204, checked like a create.
    let desc = json!({"version": 1, "type": "doc", "content": [{"type": "paragraph", "content": [{"type": "text", "text": "ünï ✓"}]}]});
    let (s, _, _) = t.send("PUT", "/rest/api/3/issue/SB-1", Some(json!({"fields": {"description": desc, "priority": {"name": "High"}, "assignee": {"accountId": "557058:alice"}, "duedate": "2026-02-28"}}))).await;
    assert_eq!(s, 204);
    let (s, _, v) = t
        .send(
            "PUT",
            "/rest/api/3/issue/SB-1",
            Some(json!({"fields": {"description": "plain", "duedate": "28/02/2026", "priority": {"name": "Urgent"}}})),
        )
        .await;
    assert_eq!(s, 400);
    assert!(v["errors"]["description"].as_str().unwrap().contains("Atlassian Document"));
    assert!(v["errors"]["duedate"].as_str().unwrap().contains("Error parsing date"));
    assert_eq!(v["errors"]["priority"], "Priority name 'Urgent' is not valid");
    let (s, _, v) = t.send("GET", "/rest/api/3/issue/sb-1?fields=description,priority&expand=transitions", None).await;
    assert_eq!(s, 200, "keys are case-insensitive");
    assert_eq!(v["fields"]["description"], desc);
    assert_eq!(v["fields"]["priority"]["name"], "High");
    assert!(v["fields"].get("summary").is_none(), "only the fields asked for");
    assert_eq!(v["transitions"].as_array().unwrap().len(), 2, "to the two other statuses");

    // Transitions.
    let (s, _, v) =
        t.send("POST", "/rest/api/3/issue/SB-1/transitions", Some(json!({"transition": {"id": "11"}}))).await;
    assert_eq!(s, 400, "already To Do: {v}");
    let (s, _, _) =
        t.send("POST", "/rest/api/3/issue/SB-1/transitions", Some(json!({"transition": {"id": "31"}}))).await;
    assert_eq!(s, 204);
    let (_, _, v) = t.send("GET", "/rest/api/3/issue/10000", None).await;
    assert_eq!(v["fields"]["status"]["name"], "Done");
    assert_eq!(v["fields"]["resolution"]["name"], "Done");

    // Properties.
    let (s, _, v) = t.send("GET", "/rest/api/3/issue/SB-1/properties/syncbridge", None).await;
    assert_eq!((s, &v["value"]["key"]), (200, &json!("one")));
    let (s, _, _) = t.send("PUT", "/rest/api/3/issue/SB-1/properties/big", Some(json!("x".repeat(MAX_PROPERTY)))).await;
    assert_eq!(s, 400, "over 32,768 characters with the quotes");

    // Delete, then 404.
    assert_eq!(t.send("DELETE", "/rest/api/3/issue/SB-2", None).await.0, 204);
    let (s, _, v) = t.send("GET", "/rest/api/3/issue/SB-2", None).await;
    assert_eq!(s, 404);
    assert!(v["errorMessages"][0].as_str().unwrap().contains("does not exist"));
    assert_eq!(t.send("PUT", "/rest/api/3/issue/SB-2", Some(json!({"fields": {}}))).await.0, 404);
    assert_eq!(t.em.state().issues().len(), 1);
}

#[tokio::test]
async fn search_pages_lags_and_reconciles() {
    let t = T::new(EmulatorConfig { index_lag_ms: 60_000, ..EmulatorConfig::default() }).await;
    let all: Vec<Value> = (0..5).map(|n| issue(&format!("s{n}"))).collect();
    let (s, _, v) = t.send("POST", "/rest/api/3/issue/bulk", Some(json!({"issueUpdates": all}))).await;
    assert_eq!(s, 201);
    let first = v["issues"][0]["id"].as_str().unwrap().to_owned();
    let body = |extra: Value| {
        let mut b = json!({"jql": "project = SB AND labels = \"sb-x\" ORDER BY key ASC", "maxResults": 2, "fields": ["labels"], "properties": ["syncbridge"]});
        b.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        b
    };
    // Written a moment ago: not indexed yet, unless reconciled.
    let (_, _, v) = t.send("POST", "/rest/api/3/search/jql", Some(body(json!({})))).await;
    assert_eq!(v["issues"], json!([]));
    let (_, _, v) = t
        .send("POST", "/rest/api/3/search/jql", Some(body(json!({"reconcileIssues": [first.parse::<u64>().unwrap()]}))))
        .await;
    assert_eq!(v["issues"].as_array().unwrap().len(), 1);
    assert_eq!(v["issues"][0]["properties"]["syncbridge"]["key"], "s0");

    t.em.state().lock().api.config.index_lag_ms = 0;
    let mut keys = Vec::new();
    let mut token: Option<String> = None;
    loop {
        let extra = token.as_ref().map_or(json!({}), |t| json!({"nextPageToken": t}));
        let (s, _, v) = t.send("POST", "/rest/api/3/search/jql", Some(body(extra))).await;
        assert_eq!(s, 200);
        for i in v["issues"].as_array().unwrap() {
            keys.push(i["key"].as_str().unwrap().to_owned());
            assert!(i["fields"]["labels"].is_array());
        }
        if v["isLast"] == true {
            assert!(v.get("nextPageToken").is_none());
            break;
        }
        token = v["nextPageToken"].as_str().map(str::to_owned);
    }
    assert_eq!(keys, ["SB-1", "SB-2", "SB-3", "SB-4", "SB-5"]);
    // Ids only by default; unbounded queries refused; GET works too.
    let (_, _, v) = t.send("GET", "/rest/api/3/search/jql?jql=project%20%3D%20SB&maxResults=1", None).await;
    assert_eq!(
        v["issues"][0],
        json!({"id": "10000", "key": "SB-1", "self": format!("{}/rest/api/3/issue/10000", t.em.authority_url())})
    );
    let (s, _, v) = t.send("GET", "/rest/api/3/search/jql?jql=order%20by%20key", None).await;
    assert_eq!(s, 400);
    assert!(v["errorMessages"][0].as_str().unwrap().contains("Unbounded"));
    let (s, _, _) = t.send("GET", "/rest/api/3/search/jql?jql=project%3DSB&startAt=0", None).await;
    assert_eq!(s, 400, "startAt belongs to the old search");
}

#[tokio::test]
async fn rate_limits_answer_429_with_jiras_headers() {
    let t = T::new(EmulatorConfig {
        requests_per_min: Some(3),
        issue_writes_per_sec: Some(1),
        ..EmulatorConfig::default()
    })
    .await;
    let (s, h, _) = t.send("POST", "/rest/api/3/issue", Some(issue("a"))).await;
    assert_eq!(s, 201);
    assert_eq!(h["x-ratelimit-limit"], "3");
    assert_eq!(h["x-ratelimit-remaining"], "2");
    assert!(h["x-ratelimit-reset"].to_str().unwrap().ends_with('Z'));
    assert_eq!(t.send("PUT", "/rest/api/3/issue/SB-1", Some(json!({"fields": {"summary": "b"}}))).await.0, 204);
    let (s, h, _) = t.send("PUT", "/rest/api/3/issue/SB-1", Some(json!({"fields": {"summary": "c"}}))).await;
    assert_eq!(s, 429, "the second write to one issue within a second");
    assert_eq!(h["ratelimit-reason"], "jira-per-issue-on-write");
    let (s, h, v) = t.send("GET", "/rest/api/3/myself", None).await;
    assert_eq!(s, 429, "the fourth request in a minute");
    assert_eq!(h["ratelimit-reason"], "jira-burst-based");
    assert!(h["retry-after"].to_str().unwrap().parse::<u64>().unwrap() >= 1);
    assert_eq!(v["errorMessages"][0], "Rate limit exceeded.");
    assert_eq!(t.em.stats().throttled, 2);
}

#[tokio::test]
async fn a_bulk_answer_can_lose_issues_it_created() {
    let t = T::new(EmulatorConfig::default()).await;
    t.em.inject(Fault::BatchMissingResponses, 1);
    let (s, _, v) = t
        .send(
            "POST",
            "/rest/api/3/issue/bulk",
            Some(json!({"issueUpdates": [issue("a"), issue("b"), issue("c"), issue("d")]})),
        )
        .await;
    assert_eq!(s, 201);
    assert_eq!(v["issues"].as_array().unwrap().len(), 2);
    assert_eq!(t.em.state().issues().len(), 4, "all four exist");
    assert_eq!(t.em.stats().writes, 4);
}

#[tokio::test]
async fn updated_since_search_edits_returning_the_issue_and_a_persons_changes() {
    let t = T::new(EmulatorConfig { utc_offset_minutes: 600, ..EmulatorConfig::default() }).await;
    let all: Vec<Value> = (0..4).map(|n| issue(&format!("u{n}"))).collect();
    let (s, _, v) = t.send("POST", "/rest/api/3/issue/bulk", Some(json!({"issueUpdates": all}))).await;
    assert_eq!(s, 201);
    let ids: Vec<String> =
        v["issues"].as_array().unwrap().iter().map(|i| i["id"].as_str().unwrap().to_owned()).collect();
    let writes = t.em.stats().writes;
    // Date-times in the user's offset.
    let (_, _, one) = t.send("GET", &format!("/rest/api/3/issue/{}?fields=updated", ids[0]), None).await;
    let updated = one["fields"]["updated"].as_str().unwrap().to_owned();
    assert!(updated.ends_with("+1000") && updated.len() == 28, "{updated}");
    // A person edits issue 2 and then 0: `updated` moves, in that order.
    std::thread::sleep(Duration::from_millis(5));
    let edit = |f: Value| f.as_object().unwrap().clone();
    t.em.state().person_edit(&ids[2], &edit(json!({"summary": "by hand", "status": "Done"}))).unwrap();
    std::thread::sleep(Duration::from_millis(5));
    t.em.state().person_edit(&ids[0], &edit(json!({"labels": ["sb-x", "mine"]}))).unwrap();
    assert!(t.em.state().person_edit(&ids[1], &edit(json!({"labels": ["has space"]}))).is_err());
    assert_eq!(t.em.stats().writes, writes, "a person's edits are not requests");
    // The minute before the first write, in the user's zone: every issue;
    // ordered by updated then id, paged by a token over the search's result.
    let ms = parse_jira_time(&updated).unwrap() - 60_000;
    let local = jiff::Timestamp::from_millisecond(ms + 600 * 60_000).unwrap();
    let literal = local.strftime("%Y-%m-%d %H:%M").to_string();
    let jql = format!("project = SB AND updated >= \"{literal}\" ORDER BY updated ASC, id ASC");
    let body = json!({"jql": jql, "maxResults": 2, "fields": ["summary", "updated", "status"]});
    let (s, _, p1) = t.send("POST", "/rest/api/3/search/jql", Some(body.clone())).await;
    assert_eq!(s, 200, "{p1}");
    assert_eq!(p1["isLast"], false);
    // Changed between two pages: shown as it is now, nothing skipped.
    t.em.state().person_edit(&ids[2], &edit(json!({"summary": "while paging"}))).unwrap();
    let mut b2 = body.clone();
    b2["nextPageToken"] = p1["nextPageToken"].clone();
    let (_, _, p2) = t.send("POST", "/rest/api/3/search/jql", Some(b2)).await;
    assert_eq!(p2["isLast"], true);
    assert!(p2.get("nextPageToken").is_none());
    let order: Vec<&str> = p1["issues"]
        .as_array()
        .unwrap()
        .iter()
        .chain(p2["issues"].as_array().unwrap())
        .map(|i| i["id"].as_str().unwrap())
        .collect();
    assert_eq!(order, [&ids[1], &ids[3], &ids[2], &ids[0]].map(String::as_str));
    assert_eq!(p2["issues"][0]["fields"]["summary"], "while paging");
    assert_eq!(p2["issues"][0]["fields"]["status"]["name"], "Done");
    // A used-up token is refused; after the last write, nothing is newer.
    let mut b3 = body.clone();
    b3["nextPageToken"] = p1["nextPageToken"].clone();
    assert_eq!(t.send("POST", "/rest/api/3/search/jql", Some(b3)).await.0, 400);
    let (_, _, none) =
        t.send("POST", "/rest/api/3/search/jql", Some(json!({"jql": "project = SB AND updated > -0m"}))).await;
    assert_eq!(none["issues"], json!([]));
    // An edit may return the issue; `update` adds labels without replacing them.
    let (s, _, v) = t
        .send(
            "PUT",
            &format!("/rest/api/3/issue/{}?returnIssue=true", ids[0]),
            Some(json!({"update": {"labels": [{"add": "extra"}]}, "properties": [{"key": "syncbridge", "value": {"key": "k"}}]})),
        )
        .await;
    assert_eq!(s, 200);
    assert_eq!(v["fields"]["labels"], json!(["sb-x", "mine", "extra"]));
    assert!(parse_jira_time(v["fields"]["updated"].as_str().unwrap()) > parse_jira_time(&updated));
    let (s, _, v) = t
        .send(
            "PUT",
            &format!("/rest/api/3/issue/{}", ids[0]),
            Some(json!({"fields": {"labels": []}, "update": {"labels": [{"add": "x"}]}})),
        )
        .await;
    assert_eq!(s, 400, "{v}");
    // A person creates and deletes.
    let (id, key) = t.em.state().person_create(&edit(json!({"summary": "made by hand", "labels": ["l"]}))).unwrap();
    assert_eq!(key, "SB-5");
    t.em.state().person_delete(&id).unwrap();
    assert_eq!(t.send("GET", &format!("/rest/api/3/issue/{id}"), None).await.0, 404);
}
