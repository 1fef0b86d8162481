//! The kinds of target: what each can do and costs, stated once. The
//! extension holds the same facts in `sync.target_kinds` (configuration keys,
//! batch size, costs, capabilities, implemented); a test in
//! `tests/tests/foundation.rs` fails on any difference, so neither side can
//! drift. [`build`] makes the adapter of a kind the worker implements.

use serde::Serialize;
use serde_json::Value;

use super::github;
use super::graph;
use super::jira;
use super::ldap;
use super::linear;
use super::webhook;
use super::{resolve_secret, Target, TargetPolicy, TargetSetupError};

/// Whether a kind's items live in containers, and who makes them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Containers {
    /// No containers (a webhook receiver).
    None,
    /// Containers exist already and are named in the configuration or the
    /// definition (a repository, a project, a team, an OU).
    Existing,
    /// syncbridge creates them with their fields (`sync.provision`).
    Provisioned,
}

/// What a delete does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DeleteMode {
    /// The item is removed (or sent to the trash).
    Remove,
    /// The item is closed (GitHub has no REST delete).
    Close,
    /// Deletes are not sent.
    Unsupported,
}

/// What a move to another container costs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Moves {
    /// One request.
    Native,
    /// A create in the new container, then a delete of the old item: two.
    DeleteCreate,
    /// Not possible: a row whose container changes is an error.
    Unsupported,
}

/// How changes are read back (two-way sync).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Pull {
    /// A delta query with a cursor (Graph's delta links).
    Delta,
    /// Items updated since a time.
    UpdatedSince,
    /// Nothing is pulled.
    None,
}

/// What a kind can do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Capabilities {
    /// Its containers.
    pub containers: Containers,
    /// What a delete does.
    pub delete_mode: DeleteMode,
    /// What a move costs.
    pub moves: Moves,
    /// Whether an item can be found by the row's key (needed to adopt, not
    /// duplicate, after a create whose answer was lost).
    pub key_lookup: bool,
    /// How changes are read back.
    pub pull: Pull,
    /// Whether an item can be disabled before it is deleted ([`super::Op::Disable`]:
    /// a directory account locked, then deleted after the definition's
    /// `delete_grace`).
    pub disable: bool,
}

impl Capabilities {
    /// Requests a move costs (None: not possible).
    pub fn move_requests(&self) -> Option<u32> {
        match self.moves {
            Moves::Native => Some(1),
            Moves::DeleteCreate => Some(2),
            Moves::Unsupported => None,
        }
    }
}

/// One kind's facts, named as the columns of `sync.target_kinds`.
#[derive(Debug, Clone, Serialize)]
pub struct KindSpec {
    /// `sync.create_target(kind => ...)`.
    pub kind: &'static str,
    /// What it talks to.
    pub description: &'static str,
    /// Whether this worker has an adapter for it.
    pub implemented: bool,
    /// Keys a target's configuration must hold.
    pub required_config: &'static [&'static str],
    /// Keys it may hold besides.
    pub optional_config: &'static [&'static str],
    /// Most requests in one batch.
    pub batch_size: u32,
    /// Cost of a create, update or delete, in `cost_unit`.
    pub cost_per_write: u32,
    /// Cost of a single read.
    pub cost_per_read: u32,
    /// The unit of costs and budgets.
    pub cost_unit: &'static str,
    /// The budget per minute when the configuration sets none.
    pub default_budget_per_min: u32,
    /// The pattern a field name must match.
    pub field_name_pattern: &'static str,
    /// What it can do.
    #[serde(flatten)]
    pub capabilities: Capabilities,
    /// The operations whose items share a request, `batch_size` at a time.
    pub bulk_ops: &'static [&'static str],
    /// Per operation, an item's cost when it is not `cost_per_write`.
    #[serde(serialize_with = "costs_as_object")]
    pub item_costs: &'static [(&'static str, f64)],
}

/// `item_costs` as `sync.target_kinds` holds it: a JSON object.
fn costs_as_object<S: serde::Serializer>(costs: &&'static [(&'static str, f64)], s: S) -> Result<S::Ok, S::Error> {
    use serde::ser::SerializeMap;
    let mut map = s.serialize_map(Some(costs.len()))?;
    for (op, cost) in costs.iter() {
        map.serialize_entry(op, cost)?;
    }
    map.end()
}

/// Graph: lists provisioned with their columns, items deleted, a move is a
/// create and a delete, items found by their `SyncKey`, delta queries.
pub const GRAPH_CAPABILITIES: Capabilities = Capabilities {
    containers: Containers::Provisioned,
    delete_mode: DeleteMode::Remove,
    moves: Moves::DeleteCreate,
    key_lookup: true,
    pull: Pull::Delta,
    disable: false,
};

/// Linear: issues in an existing team, deleted to the trash (or archived),
/// a move is an update (the team is the target's), issues found by the id
/// syncbridge chose for the row; changes read back by `updatedAt`.
pub const LINEAR_CAPABILITIES: Capabilities = Capabilities {
    containers: Containers::Existing,
    delete_mode: DeleteMode::Remove,
    moves: Moves::Native,
    key_lookup: true,
    pull: Pull::UpdatedSince,
    disable: false,
};

/// Every kind syncbridge knows, implemented or not.
pub static KINDS: &[KindSpec] = &[
    KindSpec {
        kind: "graph",
        description: "SharePoint / Teams lists through Microsoft Graph",
        implemented: true,
        required_config: &["tenant_id", "client_id", "site_id"],
        optional_config: &[
            "base_url",
            "authority_url",
            "budget_per_min",
            "writes_per_second",
            "timeout_ms",
            "max_concurrent_batches",
            "time_zone",
            "pull_interval",
        ],
        batch_size: graph::BATCH_LIMIT as u32,
        cost_per_write: graph::RU_WRITE,
        cost_per_read: graph::RU_READ,
        cost_unit: "RU",
        default_budget_per_min: graph::DEFAULT_BUDGET_PER_MIN,
        field_name_pattern: "^[A-Za-z_][A-Za-z0-9_]{0,254}$",
        capabilities: GRAPH_CAPABILITIES,
        bulk_ops: &["add", "update", "delete", "move"],
        item_costs: &[],
    },
    KindSpec {
        kind: "github",
        description: "GitHub Issues (REST)",
        implemented: true,
        required_config: &["owner"],
        optional_config: &[
            "repo",
            "base_url",
            "budget_per_min",
            "content_per_min",
            "content_per_hour",
            "timeout_ms",
            "marker_label",
            "close_reason",
            "pull_interval",
        ],
        batch_size: 1,
        cost_per_write: 1,
        cost_per_read: 1,
        cost_unit: "requests",
        default_budget_per_min: github::DEFAULT_BUDGET_PER_MIN,
        field_name_pattern: "^[A-Za-z_][A-Za-z0-9_]{0,99}$",
        capabilities: github::GITHUB_CAPABILITIES,
        bulk_ops: &[],
        item_costs: &[],
    },
    KindSpec {
        kind: "jira",
        description: "Jira Cloud issues (REST v3)",
        implemented: true,
        required_config: &["site", "project_key"],
        optional_config: &["base_url", "budget_per_min", "email", "issue_type", "timeout_ms", "pull_interval"],
        batch_size: jira::BULK_LIMIT as u32,
        cost_per_write: 1,
        cost_per_read: 1,
        cost_unit: "requests",
        default_budget_per_min: jira::DEFAULT_BUDGET_PER_MIN,
        field_name_pattern: "^[A-Za-z_][A-Za-z0-9_]{0,99}$",
        capabilities: jira::JIRA_CAPABILITIES,
        bulk_ops: &["add"],
        item_costs: &[("add", jira::BULK_CREATE_COST)],
    },
    KindSpec {
        kind: "linear",
        description: "Linear issues (GraphQL)",
        implemented: true,
        required_config: &["team_id"],
        optional_config: &["base_url", "budget_per_min", "timeout_ms", "on_delete", "pull_interval"],
        batch_size: linear::BATCH_LIMIT as u32,
        cost_per_write: linear::COST_PER_WRITE,
        cost_per_read: linear::COST_PER_READ,
        cost_unit: "complexity",
        default_budget_per_min: linear::DEFAULT_BUDGET_PER_MIN,
        field_name_pattern: "^[A-Za-z_][A-Za-z0-9_]{0,99}$",
        capabilities: LINEAR_CAPABILITIES,
        bulk_ops: &["add", "update", "delete", "move"],
        item_costs: &[],
    },
    KindSpec {
        kind: "webhook",
        description: "Signed webhooks (Standard Webhooks, HMAC-SHA256)",
        implemented: true,
        required_config: &["url"],
        optional_config: &["budget_per_min", "timeout_ms", "concurrency", "batch_max_events", "batch_max_bytes"],
        batch_size: webhook::MAX_BATCH_EVENTS as u32,
        cost_per_write: 1,
        cost_per_read: 0,
        cost_unit: "requests",
        default_budget_per_min: webhook::DEFAULT_BUDGET_PER_MIN,
        field_name_pattern: "^[A-Za-z_][A-Za-z0-9_.-]{0,99}$",
        capabilities: webhook::WEBHOOK_CAPABILITIES,
        bulk_ops: &[],
        item_costs: &[],
    },
    KindSpec {
        kind: "ldap",
        description: "LDAP directory provisioning",
        implemented: true,
        required_config: &["url", "base_dn"],
        optional_config: &[
            "bind_dn",
            "starttls",
            "ca_pem",
            "disable_mechanism",
            "disabled_container",
            "placeholder_member",
            "budget_per_min",
            "timeout_ms",
            "pull_interval",
        ],
        batch_size: 1,
        cost_per_write: 1,
        cost_per_read: 1,
        cost_unit: "operations",
        default_budget_per_min: ldap::DEFAULT_BUDGET_PER_MIN,
        field_name_pattern: "^[A-Za-z][A-Za-z0-9-]{0,99}$",
        capabilities: ldap::LDAP_CAPABILITIES,
        bulk_ops: &[],
        item_costs: &[],
    },
];

/// The facts of `kind`, if syncbridge knows it.
pub fn spec(kind: &str) -> Option<&'static KindSpec> {
    KINDS.iter().find(|k| k.kind == kind)
}

/// The registry as JSON objects named like the rows of `sync.target_kinds`
/// (`to_jsonb` of each row), for the contract test.
pub fn as_json() -> Vec<Value> {
    KINDS.iter().map(|k| serde_json::to_value(k).expect("kind facts serialize")).collect()
}

/// Builds the adapter for a row of `sync.targets`: the configuration
/// (URLs against `policy`) is checked before the secret is read, so a
/// target pointing anywhere the policy does not allow never gets it.
/// `shutdown` (true: the worker is stopping) cuts waits short.
pub async fn build(
    name: &str,
    kind: &str,
    config: &Value,
    secret_ref: Option<&str>,
    policy: &TargetPolicy,
    shutdown: Option<tokio::sync::watch::Receiver<bool>>,
) -> Result<Box<dyn Target>, TargetSetupError> {
    let Some(spec) = spec(kind) else {
        return Err(TargetSetupError::Unsupported { target: name.to_owned(), kind: kind.to_owned() });
    };
    // The same keys the extension accepts (sync.target_kinds): one list.
    if let Some(obj) = config.as_object() {
        let unknown: Vec<&str> = obj
            .keys()
            .map(String::as_str)
            .filter(|k| !spec.required_config.contains(k) && !spec.optional_config.contains(k))
            .collect();
        if !unknown.is_empty() {
            return Err(TargetSetupError::Config {
                target: name.to_owned(),
                message: format!("unknown configuration key {} for kind {kind}", unknown.join(", ")),
            });
        }
    }
    match kind {
        "graph" => {
            let settings = super::graph::GraphSettings::from_config(name, config, policy)?;
            let secret = required_secret(policy, name, secret_ref, "graph", "a client secret").await?;
            Ok(Box::new(super::graph::GraphTarget::new(settings, secret, shutdown)?))
        }
        "github" => {
            let settings = super::github::GithubSettings::from_config(name, config, policy)?;
            let token = required_secret(policy, name, secret_ref, "github", "a token").await?;
            Ok(Box::new(super::github::GithubTarget::new(settings, token, shutdown)?))
        }
        "jira" => {
            let settings = jira::JiraSettings::from_config(name, config, policy)?;
            let token = required_secret(policy, name, secret_ref, "jira", "an API token").await?;
            Ok(Box::new(jira::JiraTarget::new(settings, token, shutdown)?))
        }
        "linear" => {
            let settings = linear::LinearSettings::from_config(name, config, policy)?;
            let key = required_secret(policy, name, secret_ref, "linear", "an API key").await?;
            Ok(Box::new(linear::LinearTarget::new(settings, key, shutdown)?))
        }
        "webhook" => {
            let settings = webhook::WebhookSettings::from_config(name, config, policy)?;
            let secrets = required_secret(policy, name, secret_ref, "webhook", "one or more whsec_ secrets").await?;
            Ok(Box::new(webhook::WebhookTarget::new(settings, &secrets, shutdown)?))
        }
        "ldap" => {
            let settings = ldap::LdapSettings::from_config(name, config, policy)?;
            let password = match (&settings.bind_dn, secret_ref) {
                (Some(_), _) => {
                    Some(required_secret(policy, name, secret_ref, "ldap", "the bind DN's password").await?)
                }
                (None, None) => None,
                (None, Some(_)) => {
                    return Err(TargetSetupError::Config {
                        target: name.to_owned(),
                        message: "the secret is the bind DN's password, but config names no bind_dn".into(),
                    })
                }
            };
            Ok(Box::new(ldap::LdapTarget::new(settings, password, shutdown)?))
        }
        other => Err(TargetSetupError::Unsupported { target: name.to_owned(), kind: other.to_owned() }),
    }
}

/// The secret a kind cannot work without, read through the policy; its
/// absence is a configuration error that says how to give one (by reference:
/// the value itself is never in the database).
async fn required_secret(
    policy: &TargetPolicy,
    name: &str,
    secret_ref: Option<&str>,
    kind: &str,
    what: &str,
) -> Result<String, TargetSetupError> {
    let Some(reference) = secret_ref else {
        return Err(TargetSetupError::Config {
            target: name.to_owned(),
            message: format!(
                "a {kind} target needs {what}: SELECT sync.alter_target(name, secret => 'env:{}{}')",
                super::policy::ENV_PREFIX,
                kind.to_uppercase()
            ),
        });
    };
    resolve_secret(policy, name, reference).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_once_and_moves_cost_what_the_capability_says() {
        let mut kinds: Vec<&str> = KINDS.iter().map(|k| k.kind).collect();
        kinds.sort_unstable();
        kinds.dedup();
        assert_eq!(kinds.len(), KINDS.len(), "a kind listed twice");
        assert_eq!(spec("graph").and_then(|k| k.capabilities.move_requests()), Some(2));
        assert_eq!(spec("github").and_then(|k| k.capabilities.move_requests()), None);
        let j = &as_json()[0];
        assert_eq!(j["moves"], "delete_create");
        assert_eq!(j["containers"], "provisioned");
        assert_eq!(j["key_lookup"], true);
    }

    #[tokio::test]
    async fn an_unknown_configuration_key_is_refused_before_the_secret_is_read() {
        let cfg = serde_json::json!({"tenant_id": "t", "client_id": "c", "site_id": "s", "colour": "red"});
        let e = build("x", "graph", &cfg, Some("env:SYNCBRIDGE_SECRET_NONE"), &TargetPolicy::default(), None)
            .await
            .err()
            .expect("refused");
        assert!(e.to_string().contains("unknown configuration key colour"), "{e}");
        assert_eq!(e.status(), "misconfigured");
    }
}
