//! The workspace the Linear emulator holds (one team, its workflow states,
//! labels, users, issues) and the resolvers of the root fields it serves.
//! Every resolver returns everything it knows of the object (nested objects
//! and connections included); `schema::project` then keeps what the
//! document selected.

use std::collections::BTreeMap;

use serde_json::{json, Map, Value};

use super::schema::{is_uuid, is_uuid_v4};

/// Why a root field failed: a GraphQL error with Linear's `extensions`.
#[derive(Debug, Clone, PartialEq)]
pub struct FieldError {
    /// The message.
    pub message: String,
    /// `extensions.type` (Linear's error types: `invalid input`, `forbidden`, …).
    pub kind: &'static str,
    /// `extensions.code`.
    pub code: &'static str,
}

impl FieldError {
    /// A value Linear refuses (`invalid input`, a user error).
    pub fn invalid(message: impl Into<String>) -> Self {
        Self { message: message.into(), kind: "invalid input", code: "INVALID_INPUT" }
    }

    /// An entity that does not exist.
    pub fn not_found(what: &str) -> Self {
        Self { message: format!("Entity not found: {what}"), kind: "invalid input", code: "INVALID_INPUT" }
    }

    /// Something the emulator does not implement (a test should not rely on it).
    pub fn unimplemented(what: impl Into<String>) -> Self {
        Self {
            message: format!("the emulator does not implement {}", what.into()),
            kind: "other",
            code: "UNIMPLEMENTED",
        }
    }
}

/// A workflow state.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkflowState {
    /// Its id.
    pub id: String,
    /// Its name (`Todo`).
    pub name: String,
    /// `triage`, `backlog`, `unstarted`, `started`, `completed`, `canceled`.
    pub kind: String,
    /// Order.
    pub position: f64,
}

/// A label.
#[derive(Debug, Clone, PartialEq)]
pub struct Label {
    /// Its id.
    pub id: String,
    /// Its name.
    pub name: String,
    /// Its color.
    pub color: String,
}

/// A user of the workspace.
#[derive(Debug, Clone, PartialEq)]
pub struct User {
    /// Its id.
    pub id: String,
    /// Full name.
    pub name: String,
    /// Display name.
    pub display_name: String,
    /// E-mail.
    pub email: String,
}

/// An issue as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct Issue {
    /// Its UUID.
    pub id: String,
    /// Its number in the team (`ENG-<number>`).
    pub number: u64,
    /// Title.
    pub title: String,
    /// Markdown description.
    pub description: Option<String>,
    /// 0 none, 1 urgent, 2 high, 3 medium, 4 low.
    pub priority: i64,
    /// Its workflow state.
    pub state_id: String,
    /// Its labels.
    pub label_ids: Vec<String>,
    /// Its assignee.
    pub assignee_id: Option<String>,
    /// `YYYY-MM-DD`.
    pub due_date: Option<String>,
    /// Estimate points.
    pub estimate: Option<i64>,
    /// Creation time (ms since the epoch).
    pub created_ms: i64,
    /// Last meaningful change (ms since the epoch).
    pub updated_ms: i64,
    /// Archived (or trashed) at (ms since the epoch).
    pub archived_ms: Option<i64>,
    /// In the trash.
    pub trashed: bool,
    /// Moved into a completed state at.
    pub completed_ms: Option<i64>,
    /// Moved into a canceled state at.
    pub canceled_ms: Option<i64>,
}

/// The limits of values (Linear does not publish them: configurable).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Longest title, in characters.
    pub max_title_chars: usize,
    /// Longest description, in characters.
    pub max_description_chars: usize,
    /// Most ids in one `issueBatchUpdate` / issues in one `issueBatchCreate`.
    pub max_batch: usize,
}

/// The workspace.
#[derive(Debug, Clone)]
pub struct Workspace {
    /// The team's id.
    pub team_id: String,
    /// The team's key (`ENG`).
    pub team_key: String,
    /// The team's name.
    pub team_name: String,
    /// Its workflow states.
    pub states: Vec<WorkflowState>,
    /// Its labels.
    pub labels: Vec<Label>,
    /// The users.
    pub users: Vec<User>,
    /// Issues by id, in creation order of their numbers.
    pub issues: BTreeMap<String, Issue>,
    /// The next issue number.
    pub next_number: u64,
    /// Linear's `lastSyncId`: moves on with every change.
    pub last_sync_id: u64,
    /// The last time given out (strictly increasing).
    last_ms: i64,
    /// Value limits.
    pub limits: Limits,
    /// Counter for generated ids.
    next_id: u64,
    /// Issues permanently deleted (their ids stay taken).
    pub deleted_ids: Vec<String>,
}

/// `2026-12-06T22:33:52.123Z`.
pub fn iso(ms: i64) -> String {
    jiff::Timestamp::from_millisecond(ms).map(|t| t.strftime("%Y-%m-%dT%H:%M:%S%.3fZ").to_string()).unwrap_or_default()
}

fn parse_ms(s: &str) -> Option<i64> {
    s.parse::<jiff::Timestamp>().ok().map(|t| t.as_millisecond())
}

/// A generated UUID v4 from a counter and a salt (stable per emulator).
fn generated_uuid(n: u64, salt: u64) -> String {
    let a = n.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ salt;
    let b = salt.rotate_left(17) ^ n;
    format!(
        "{:08x}-{:04x}-4{:03x}-{:04x}-{:012x}",
        (a >> 32) as u32,
        (a >> 16) as u16,
        (a as u16) & 0x0fff,
        0x8000 | ((b >> 48) as u16 & 0x3fff),
        b & 0xffff_ffff_ffff
    )
}

impl Workspace {
    /// A team with Linear's default workflow states, a few labels and users.
    pub fn new(team_id: &str, team_key: &str, limits: Limits) -> Self {
        let mut w = Self {
            team_id: team_id.to_owned(),
            team_key: team_key.to_owned(),
            team_name: "Engineering".into(),
            states: Vec::new(),
            labels: Vec::new(),
            users: Vec::new(),
            issues: BTreeMap::new(),
            next_number: 1,
            last_sync_id: 1000,
            last_ms: 0,
            limits,
            next_id: 1,
            deleted_ids: Vec::new(),
        };
        for (i, (name, kind)) in [
            ("Backlog", "backlog"),
            ("Todo", "unstarted"),
            ("In Progress", "started"),
            ("In Review", "started"),
            ("Done", "completed"),
            ("Canceled", "canceled"),
            ("Duplicate", "canceled"),
        ]
        .iter()
        .enumerate()
        {
            let id = w.new_id();
            w.states.push(WorkflowState { id, name: (*name).into(), kind: (*kind).into(), position: i as f64 });
        }
        for (name, color) in [("Bug", "#eb5757"), ("Feature", "#bb87fc"), ("Improvement", "#4ea7fc")] {
            let id = w.new_id();
            w.labels.push(Label { id, name: name.into(), color: color.into() });
        }
        for (name, display, email) in
            [("Ada Lovelace", "ada", "ada@example.com"), ("Chloé Dubois", "chloe", "chloe@example.com")]
        {
            let id = w.new_id();
            w.users.push(User { id, name: name.into(), display_name: display.into(), email: email.into() });
        }
        w
    }

    /// A fresh UUID v4.
    pub fn new_id(&mut self) -> String {
        self.next_id += 1;
        generated_uuid(self.next_id, 0x5EED_11EA_0000_0001)
    }

    /// Now, in ms, strictly after the last time given out.
    pub fn now_ms(&mut self) -> i64 {
        let now = jiff::Timestamp::now().as_millisecond();
        self.last_ms = now.max(self.last_ms + 1);
        self.last_ms
    }

    fn state(&self, id: &str) -> Option<&WorkflowState> {
        self.states.iter().find(|s| s.id == id)
    }

    /// The team as Linear shows it.
    pub fn team_json(&self) -> Value {
        json!({
            "__typename": "Team", "id": self.team_id, "key": self.team_key, "name": self.team_name,
            "createdAt": iso(0), "updatedAt": iso(0), "private": false,
            "states": connection(self.states.iter().map(|s| self.state_json(s)).collect()),
            "labels": connection(self.labels.iter().map(|l| self.label_json(l)).collect()),
        })
    }

    fn team_ref(&self) -> Value {
        json!({"__typename": "Team", "id": self.team_id, "key": self.team_key, "name": self.team_name})
    }

    fn state_json(&self, s: &WorkflowState) -> Value {
        json!({"__typename": "WorkflowState", "id": s.id, "name": s.name, "type": s.kind, "position": s.position,
               "color": "#bec2c8", "createdAt": iso(0), "updatedAt": iso(0), "team": self.team_ref()})
    }

    fn label_json(&self, l: &Label) -> Value {
        json!({"__typename": "IssueLabel", "id": l.id, "name": l.name, "color": l.color, "isGroup": false,
               "createdAt": iso(0), "updatedAt": iso(0), "team": self.team_ref()})
    }

    fn user_json(&self, u: &User) -> Value {
        json!({"__typename": "User", "id": u.id, "name": u.name, "displayName": u.display_name, "email": u.email,
               "active": true, "admin": false, "createdAt": iso(0), "updatedAt": iso(0)})
    }

    /// An issue as Linear shows it.
    pub fn issue_json(&self, i: &Issue) -> Value {
        let state = self.state(&i.state_id).map(|s| self.state_json(s)).unwrap_or(Value::Null);
        let labels: Vec<Value> = i
            .label_ids
            .iter()
            .filter_map(|id| self.labels.iter().find(|l| &l.id == id))
            .map(|l| self.label_json(l))
            .collect();
        let assignee = i
            .assignee_id
            .as_ref()
            .and_then(|a| self.users.iter().find(|u| &u.id == a))
            .map(|u| self.user_json(u))
            .unwrap_or(Value::Null);
        let priority_label = ["No priority", "Urgent", "High", "Medium", "Low"].get(i.priority as usize).copied();
        json!({
            "__typename": "Issue", "id": i.id, "identifier": format!("{}-{}", self.team_key, i.number),
            "number": i.number, "title": i.title, "description": i.description, "priority": i.priority,
            "priorityLabel": priority_label, "estimate": i.estimate, "dueDate": i.due_date,
            "state": state, "labelIds": i.label_ids, "labels": connection(labels), "assignee": assignee,
            "team": self.team_ref(), "createdAt": iso(i.created_ms), "updatedAt": iso(i.updated_ms),
            "archivedAt": i.archived_ms.map(iso), "trashed": i.trashed.then_some(true),
            "completedAt": i.completed_ms.map(iso), "canceledAt": i.canceled_ms.map(iso),
            "url": format!("https://linear.app/emulator/issue/{}-{}", self.team_key, i.number),
            "sortOrder": i.number as f64, "boardOrder": 0.0, "prioritySortOrder": 0.0,
            "previousIdentifiers": [], "customerTicketCount": 0,
            "branchName": format!("{}-{}", self.team_key.to_lowercase(), i.number),
        })
    }

    fn find(&self, id: &str) -> Option<&Issue> {
        if let Some(i) = self.issues.get(id) {
            return Some(i);
        }
        // `ENG-12` works too.
        let n = id.strip_prefix(&format!("{}-", self.team_key))?.parse::<u64>().ok()?;
        self.issues.values().find(|i| i.number == n)
    }

    fn payload(&mut self, issue: Option<Value>) -> Value {
        self.last_sync_id += 1;
        json!({"success": true, "issue": issue, "lastSyncId": self.last_sync_id as f64})
    }

    /// Runs one root field; `writes` counts the issues it changed.
    pub fn resolve(&mut self, name: &str, args: &Map<String, Value>, writes: &mut u64) -> Result<Value, FieldError> {
        let s = |k: &str| args.get(k).and_then(Value::as_str).map(str::to_owned);
        let all = Value::Object(args.clone());
        match name {
            "viewer" => Ok(self.user_json(&self.users[0].clone())),
            "team" => {
                let id = s("id").unwrap_or_default();
                if id == self.team_id || id == self.team_key {
                    Ok(self.team_json())
                } else {
                    Err(FieldError::not_found("Team"))
                }
            }
            "teams" => Ok(connection(vec![self.team_json()])),
            "workflowStates" => Ok(connection(self.states.iter().map(|x| self.state_json(x)).collect())),
            "issueLabels" => {
                let want = all.pointer("/filter/name/eq").and_then(Value::as_str);
                let nodes = self
                    .labels
                    .iter()
                    .filter(|l| want.is_none_or(|w| w == l.name))
                    .map(|l| self.label_json(l))
                    .collect();
                Ok(connection(nodes))
            }
            "users" => {
                let email = all.pointer("/filter/email/eq").and_then(Value::as_str);
                let nodes = self
                    .users
                    .iter()
                    .filter(|u| email.is_none_or(|e| e == u.email))
                    .map(|u| self.user_json(u))
                    .collect();
                Ok(connection(nodes))
            }
            "issue" => {
                let id = s("id").unwrap_or_default();
                self.find(&id).map(|i| self.issue_json(i)).ok_or_else(|| FieldError::not_found("Issue"))
            }
            "issues" => self.issues_query(args),
            "issueCreate" => {
                let input = args.get("input").and_then(Value::as_object).cloned().unwrap_or_default();
                let issue = self.check_create(&input, &[])?;
                let v = self.insert(issue);
                *writes += 1;
                Ok(self.payload(Some(v)))
            }
            "issueBatchCreate" => {
                let inputs = all.pointer("/input/issues").and_then(Value::as_array).cloned().unwrap_or_default();
                if inputs.len() > self.limits.max_batch {
                    return Err(FieldError::invalid(format!(
                        "Can't create more than {} issues at a time",
                        self.limits.max_batch
                    )));
                }
                // One transaction: every input checked before any is created.
                let mut issues = Vec::new();
                let mut ids = Vec::new();
                for input in &inputs {
                    let issue = self.check_create(input.as_object().unwrap_or(&Map::new()), &ids)?;
                    ids.push(issue.id.clone());
                    issues.push(issue);
                }
                let created: Vec<Value> = issues.into_iter().map(|i| self.insert(i)).collect();
                *writes += created.len() as u64;
                self.last_sync_id += 1;
                Ok(json!({"success": true, "issues": created, "lastSyncId": self.last_sync_id as f64}))
            }
            "issueUpdate" => {
                let id = s("id").unwrap_or_default();
                let input = args.get("input").and_then(Value::as_object).cloned().unwrap_or_default();
                let id = self.find(&id).map(|i| i.id.clone()).ok_or_else(|| FieldError::not_found("Issue"))?;
                let updated = self.check_update(&id, &input)?;
                let v = self.store(updated);
                *writes += 1;
                Ok(self.payload(Some(v)))
            }
            "issueBatchUpdate" => {
                let ids: Vec<String> = args
                    .get("ids")
                    .and_then(Value::as_array)
                    .map(|a| a.iter().filter_map(|x| x.as_str().map(str::to_owned)).collect())
                    .unwrap_or_default();
                if ids.len() > self.limits.max_batch {
                    return Err(FieldError::invalid(format!("Can't be more than {} at a time", self.limits.max_batch)));
                }
                let input = args.get("input").and_then(Value::as_object).cloned().unwrap_or_default();
                let mut updated = Vec::new();
                for id in &ids {
                    if !self.issues.contains_key(id) {
                        return Err(FieldError::not_found("Issue"));
                    }
                    updated.push(self.check_update(id, &input)?);
                }
                let out: Vec<Value> = updated.into_iter().map(|u| self.store(u)).collect();
                *writes += out.len() as u64;
                self.last_sync_id += 1;
                Ok(json!({"success": true, "issues": out, "lastSyncId": self.last_sync_id as f64}))
            }
            "issueDelete" | "issueArchive" | "issueUnarchive" => {
                let id = s("id").unwrap_or_default();
                let id = self.find(&id).map(|i| i.id.clone()).ok_or_else(|| FieldError::not_found("Issue"))?;
                if name == "issueDelete" && args.get("permanentlyDelete").and_then(Value::as_bool) == Some(true) {
                    return Err(FieldError {
                        message: "Only admins can permanently delete issues".into(),
                        kind: "forbidden",
                        code: "FORBIDDEN",
                    });
                }
                let now = self.now_ms();
                let mut issue = self.issues[&id].clone();
                match name {
                    "issueDelete" => {
                        issue.trashed = true;
                        issue.archived_ms.get_or_insert(now);
                    }
                    "issueArchive" => {
                        issue.archived_ms.get_or_insert(now);
                        if args.get("trash").and_then(Value::as_bool) == Some(true) {
                            issue.trashed = true;
                        }
                    }
                    _ => {
                        issue.archived_ms = None;
                        issue.trashed = false;
                    }
                }
                issue.updated_ms = now;
                let v = self.store(issue);
                *writes += 1;
                self.last_sync_id += 1;
                Ok(json!({"success": true, "entity": v, "lastSyncId": self.last_sync_id as f64}))
            }
            "issueLabelCreate" => {
                let input = args.get("input").and_then(Value::as_object).cloned().unwrap_or_default();
                let name = input.get("name").and_then(Value::as_str).unwrap_or_default().trim().to_owned();
                if name.is_empty() {
                    return Err(FieldError::invalid("name should not be empty"));
                }
                if let Some(t) = input.get("teamId").and_then(Value::as_str) {
                    if t != self.team_id {
                        return Err(FieldError::not_found("Team"));
                    }
                }
                if self.labels.iter().any(|l| l.name.eq_ignore_ascii_case(&name)) {
                    return Err(FieldError::invalid(format!(
                        "Duplicate label name: a label named {name} exists already"
                    )));
                }
                let id = match input.get("id").and_then(Value::as_str) {
                    Some(id) if is_uuid(id) => id.to_owned(),
                    Some(_) => return Err(FieldError::invalid("id must be a UUID")),
                    None => self.new_id(),
                };
                let color = input.get("color").and_then(Value::as_str).unwrap_or("#bec2c8").to_owned();
                let label = Label { id, name, color };
                let v = self.label_json(&label);
                self.labels.push(label);
                self.last_sync_id += 1;
                Ok(json!({"success": true, "issueLabel": v, "lastSyncId": self.last_sync_id as f64}))
            }
            other => Err(FieldError::unimplemented(format!("the root field {other}"))),
        }
    }

    fn insert(&mut self, issue: Issue) -> Value {
        self.next_number = self.next_number.max(issue.number + 1);
        self.store(issue)
    }

    fn store(&mut self, issue: Issue) -> Value {
        let v = self.issue_json(&issue);
        self.issues.insert(issue.id.clone(), issue);
        v
    }

    /// An issue from an `IssueCreateInput`, checked (nothing stored);
    /// `pending`: ids taken by the same transaction.
    fn check_create(&mut self, input: &Map<String, Value>, pending: &[String]) -> Result<Issue, FieldError> {
        let team = input.get("teamId").and_then(Value::as_str).unwrap_or_default();
        if team != self.team_id && team != self.team_key {
            return Err(FieldError::not_found("Team"));
        }
        for k in input.keys() {
            if !CREATE_FIELDS.contains(&k.as_str()) {
                return Err(FieldError::unimplemented(format!("IssueCreateInput.{k}")));
            }
        }
        let id = match input.get("id").and_then(Value::as_str) {
            Some(id) => {
                if !is_uuid_v4(id) {
                    return Err(FieldError::invalid("Argument Validation Error: id must be a UUID (version 4)"));
                }
                if self.issues.contains_key(id)
                    || self.deleted_ids.iter().any(|d| d == id)
                    || pending.iter().any(|p| p == id)
                {
                    return Err(FieldError::invalid(format!("Issue with id {id} already exists")));
                }
                id.to_owned()
            }
            None => self.new_id(),
        };
        let now = self.now_ms();
        let default_state =
            self.states.iter().find(|s| s.kind == "unstarted").map(|s| s.id.clone()).unwrap_or_default();
        let mut issue = Issue {
            id,
            number: self.next_number + pending.len() as u64,
            title: String::new(),
            description: None,
            priority: 0,
            state_id: default_state,
            label_ids: Vec::new(),
            assignee_id: None,
            due_date: None,
            estimate: None,
            created_ms: now,
            updated_ms: now,
            archived_ms: None,
            trashed: false,
            completed_ms: None,
            canceled_ms: None,
        };
        self.apply_fields(&mut issue, input, now)?;
        if issue.title.trim().is_empty() {
            return Err(FieldError::invalid("Argument Validation Error: title should not be empty"));
        }
        Ok(issue)
    }

    /// The issue `id` with an `IssueUpdateInput` applied, checked (nothing stored).
    fn check_update(&mut self, id: &str, input: &Map<String, Value>) -> Result<Issue, FieldError> {
        for k in input.keys() {
            if !UPDATE_FIELDS.contains(&k.as_str()) {
                return Err(FieldError::unimplemented(format!("IssueUpdateInput.{k}")));
            }
        }
        if let Some(t) = input.get("teamId").and_then(Value::as_str) {
            if t != self.team_id {
                return Err(FieldError::unimplemented("moving issues to another team"));
            }
        }
        let now = self.now_ms();
        let mut issue = self.issues[id].clone();
        let before = issue.clone();
        self.apply_fields(&mut issue, input, now)?;
        if let Some(t) = input.get("trashed").and_then(Value::as_bool) {
            issue.trashed = t;
            if t {
                issue.archived_ms.get_or_insert(now);
            } else {
                issue.archived_ms = None;
            }
        }
        if issue.title.trim().is_empty() {
            return Err(FieldError::invalid("Argument Validation Error: title should not be empty"));
        }
        // `updatedAt` moves on meaningful changes only.
        issue.updated_ms = if (Issue { updated_ms: 0, ..issue.clone() }) == (Issue { updated_ms: 0, ..before.clone() })
        {
            before.updated_ms
        } else {
            now
        };
        Ok(issue)
    }

    fn apply_fields(&mut self, issue: &mut Issue, input: &Map<String, Value>, now: i64) -> Result<(), FieldError> {
        if let Some(t) = input.get("title") {
            let t = t.as_str().unwrap_or_default();
            if t.chars().count() > self.limits.max_title_chars {
                return Err(FieldError::invalid(format!(
                    "Argument Validation Error: title must be shorter than or equal to {} characters",
                    self.limits.max_title_chars
                )));
            }
            issue.title = t.to_owned();
        }
        if let Some(d) = input.get("description") {
            let d = d.as_str();
            if d.is_some_and(|d| d.chars().count() > self.limits.max_description_chars) {
                return Err(FieldError::invalid(format!(
                    "Argument Validation Error: description must be shorter than or equal to {} characters",
                    self.limits.max_description_chars
                )));
            }
            issue.description = d.map(str::to_owned);
        }
        if let Some(p) = input.get("priority") {
            match p.as_i64() {
                Some(p @ 0..=4) => issue.priority = p,
                None if p.is_null() => issue.priority = 0,
                _ => return Err(FieldError::invalid("Argument Validation Error: priority must be between 0 and 4")),
            }
        }
        if let Some(s) = input.get("stateId") {
            let s = s.as_str().unwrap_or_default();
            let Some(state) = self.state(s).cloned() else {
                return Err(FieldError::not_found("WorkflowState"));
            };
            if state.id != issue.state_id {
                issue.completed_ms = (state.kind == "completed").then_some(now);
                issue.canceled_ms = (state.kind == "canceled").then_some(now);
            }
            issue.state_id = state.id;
        }
        let label = |ws: &Self, id: &str| {
            if ws.labels.iter().any(|l| l.id == id) {
                Ok(id.to_owned())
            } else {
                Err(FieldError::not_found("IssueLabel"))
            }
        };
        let ids = |v: &Value| -> Vec<String> {
            v.as_array().map(|a| a.iter().filter_map(|x| x.as_str().map(str::to_owned)).collect()).unwrap_or_default()
        };
        if let Some(l) = input.get("labelIds") {
            let mut out = Vec::new();
            for id in ids(l) {
                let id = label(self, &id)?;
                if !out.contains(&id) {
                    out.push(id);
                }
            }
            issue.label_ids = out;
        }
        if let Some(l) = input.get("addedLabelIds") {
            for id in ids(l) {
                let id = label(self, &id)?;
                if !issue.label_ids.contains(&id) {
                    issue.label_ids.push(id);
                }
            }
        }
        if let Some(l) = input.get("removedLabelIds") {
            let gone = ids(l);
            issue.label_ids.retain(|x| !gone.contains(x));
        }
        if let Some(a) = input.get("assigneeId") {
            issue.assignee_id = match a.as_str() {
                None => None,
                Some(a) => match self.users.iter().find(|u| u.id == a) {
                    Some(u) => Some(u.id.clone()),
                    None => return Err(FieldError::not_found("User")),
                },
            };
        }
        if let Some(d) = input.get("dueDate") {
            issue.due_date = d.as_str().map(str::to_owned);
        }
        if let Some(e) = input.get("estimate") {
            issue.estimate = e.as_i64();
        }
        Ok(())
    }

    /// `issues(first, after, filter, orderBy, includeArchived)`.
    fn issues_query(&self, args: &Map<String, Value>) -> Result<Value, FieldError> {
        let include_archived = args.get("includeArchived").and_then(Value::as_bool) == Some(true);
        let filter = args.get("filter").cloned().unwrap_or(Value::Null);
        let mut list: Vec<&Issue> = Vec::new();
        for i in self.issues.values() {
            if i.archived_ms.is_some() && !include_archived {
                continue;
            }
            if filter.is_null() || self.matches(i, &filter)? {
                list.push(i);
            }
        }
        let by_updated = args.get("orderBy").and_then(Value::as_str) == Some("updatedAt");
        let key = |i: &Issue| (if by_updated { i.updated_ms } else { i.created_ms }, i.number);
        list.sort_by_key(|i| key(i));
        if args.contains_key("last") || args.contains_key("before") {
            return Err(FieldError::unimplemented("backward pagination (last, before)"));
        }
        let first = args.get("first").and_then(Value::as_i64).unwrap_or(50);
        if !(1..=250).contains(&first) {
            return Err(FieldError::invalid("first must be between 1 and 250"));
        }
        // A cursor holds the sort key of its node (the node may have moved
        // since: the next page starts after the key, not after the node).
        let start = match args.get("after").and_then(Value::as_str) {
            Some(c) => match parse_cursor(c) {
                Some(k) => list.iter().position(|i| key(i) > k).unwrap_or(list.len()),
                None => return Err(FieldError::invalid("Invalid cursor")),
            },
            None => 0,
        };
        let page: Vec<&Issue> = list.iter().skip(start).take(first as usize).copied().collect();
        let has_next = start + page.len() < list.len();
        let nodes: Vec<Value> = page.iter().map(|i| self.issue_json(i)).collect();
        let edges: Vec<Value> = page
            .iter()
            .zip(&nodes)
            .map(|(i, n)| json!({"__typename": "IssueEdge", "node": n, "cursor": cursor(key(i))}))
            .collect();
        Ok(json!({
            "__typename": "IssueConnection", "nodes": nodes, "edges": edges,
            "pageInfo": {"__typename": "PageInfo", "hasNextPage": has_next, "hasPreviousPage": start > 0,
                         "startCursor": page.first().map(|i| cursor(key(i))), "endCursor": page.last().map(|i| cursor(key(i)))},
        }))
    }

    /// Whether issue `i` passes an `IssueFilter` (the comparators the
    /// emulator implements; any other is refused, never ignored).
    fn matches(&self, i: &Issue, filter: &Value) -> Result<bool, FieldError> {
        let Some(f) = filter.as_object() else { return Ok(true) };
        for (k, cmp) in f {
            let ok = match k.as_str() {
                "and" => {
                    let mut all = true;
                    for x in cmp.as_array().into_iter().flatten() {
                        all &= self.matches(i, x)?;
                    }
                    all
                }
                "or" => {
                    let mut any = false;
                    for x in cmp.as_array().into_iter().flatten() {
                        any |= self.matches(i, x)?;
                    }
                    any
                }
                "id" => compare(&Value::String(i.id.clone()), cmp, "id")?,
                "title" => compare(&Value::String(i.title.clone()), cmp, "title")?,
                "description" => compare(&json!(i.description), cmp, "description")?,
                "number" => compare(&json!(i.number), cmp, "number")?,
                "priority" => compare(&json!(i.priority), cmp, "priority")?,
                "updatedAt" => compare(&json!(i.updated_ms), cmp, "updatedAt")?,
                "createdAt" => compare(&json!(i.created_ms), cmp, "createdAt")?,
                "team" => {
                    let team = json!({"id": self.team_id, "key": self.team_key, "name": self.team_name});
                    sub(&team, cmp, "team")?
                }
                "state" => {
                    let s = self.state(&i.state_id).map(|s| json!({"id": s.id, "name": s.name, "type": s.kind}));
                    sub(&s.unwrap_or(Value::Null), cmp, "state")?
                }
                other => return Err(FieldError::unimplemented(format!("IssueFilter.{other}"))),
            };
            if !ok {
                return Ok(false);
            }
        }
        Ok(true)
    }
}

/// Input fields of `IssueCreateInput` the emulator keeps.
const CREATE_FIELDS: &[&str] =
    &["id", "teamId", "title", "description", "priority", "stateId", "labelIds", "assigneeId", "dueDate", "estimate"];
/// Input fields of `IssueUpdateInput` the emulator keeps.
const UPDATE_FIELDS: &[&str] = &[
    "title",
    "description",
    "priority",
    "stateId",
    "labelIds",
    "addedLabelIds",
    "removedLabelIds",
    "assigneeId",
    "dueDate",
    "estimate",
    "trashed",
    "teamId",
];

/// A nested filter (`team: {id: {eq}}`) over a JSON object's fields.
fn sub(obj: &Value, filter: &Value, name: &str) -> Result<bool, FieldError> {
    let Some(f) = filter.as_object() else { return Ok(true) };
    for (k, cmp) in f {
        let Some(v) = obj.get(k) else {
            return Err(FieldError::unimplemented(format!("the filter {name}.{k}")));
        };
        if !compare(v, cmp, &format!("{name}.{k}"))? {
            return Ok(false);
        }
    }
    Ok(true)
}

/// A comparator (`{eq, neq, in, nin, gt, gte, lt, lte, contains, …}`) on a
/// value; dates compare as instants (the value in ms, the operand ISO 8601).
fn compare(v: &Value, cmp: &Value, name: &str) -> Result<bool, FieldError> {
    let Some(c) = cmp.as_object() else { return Ok(true) };
    let as_num = |x: &Value| -> Option<f64> { x.as_f64().or_else(|| x.as_str().and_then(parse_ms).map(|m| m as f64)) };
    for (op, operand) in c {
        let ok = match op.as_str() {
            "eq" => v == operand || (as_num(v).is_some() && as_num(v) == as_num(operand)),
            "neq" => v != operand,
            "in" => operand.as_array().is_some_and(|a| a.iter().any(|x| x == v)),
            "nin" => operand.as_array().is_none_or(|a| !a.iter().any(|x| x == v)),
            "null" => v.is_null() == operand.as_bool().unwrap_or(false),
            "gt" | "gte" | "lt" | "lte" => {
                let (Some(a), Some(b)) = (as_num(v), as_num(operand)) else {
                    return Err(FieldError::invalid(format!("{name}: {op} needs a date or a number")));
                };
                match op.as_str() {
                    "gt" => a > b,
                    "gte" => a >= b,
                    "lt" => a < b,
                    _ => a <= b,
                }
            }
            "contains" | "containsIgnoreCase" | "startsWith" | "endsWith" | "eqIgnoreCase" => {
                let (Some(a), Some(b)) = (v.as_str(), operand.as_str()) else { return Ok(false) };
                match op.as_str() {
                    "contains" => a.contains(b),
                    "containsIgnoreCase" => a.to_lowercase().contains(&b.to_lowercase()),
                    "startsWith" => a.starts_with(b),
                    "endsWith" => a.ends_with(b),
                    _ => a.eq_ignore_ascii_case(b),
                }
            }
            other => return Err(FieldError::unimplemented(format!("the comparator {name}.{other}"))),
        };
        if !ok {
            return Ok(false);
        }
    }
    Ok(true)
}

/// An opaque page cursor for a node's sort key.
fn cursor((ms, number): (i64, u64)) -> String {
    format!("c{ms:x}.{number:x}")
}

fn parse_cursor(c: &str) -> Option<(i64, u64)> {
    let (ms, n) = c.strip_prefix('c')?.split_once('.')?;
    Some((i64::from_str_radix(ms, 16).ok()?, u64::from_str_radix(n, 16).ok()?))
}

/// A connection of `nodes` on one page.
fn connection(nodes: Vec<Value>) -> Value {
    let edges: Vec<Value> = nodes.iter().map(|n| json!({"node": n, "cursor": n.get("id").cloned()})).collect();
    json!({
        "nodes": nodes, "edges": edges,
        "pageInfo": {"__typename": "PageInfo", "hasNextPage": false, "hasPreviousPage": false,
                     "startCursor": null, "endCursor": null},
    })
}
