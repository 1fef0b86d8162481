//! syncbridge's settings (GUCs), all named `sync.*` and declared here.

use pgrx::prelude::*;
use pgrx::{GucContext, GucFlags, GucRegistry, GucSetting};

use crate::error::SyncError;

/// Replication slot the worker streams from.
pub static SLOT_NAME: GucSetting<Option<std::ffi::CString>> =
    GucSetting::<Option<std::ffi::CString>>::new(Some(c"syncbridge"));
/// Attempts before an export goes to `error`, for new definitions.
pub static MAX_ATTEMPTS: GucSetting<i32> = GucSetting::<i32>::new(10);
/// First retry delay after a failure, in seconds (doubles per attempt).
pub static BACKOFF_BASE_SECONDS: GucSetting<i32> = GucSetting::<i32>::new(5);
/// Longest retry delay, in seconds.
pub static BACKOFF_MAX_SECONDS: GucSetting<i32> = GucSetting::<i32>::new(3600);
/// How long a claim lasts before another worker may take the export over, in seconds.
pub static LEASE_SECONDS: GucSetting<i32> = GucSetting::<i32>::new(120);
/// Days finished exports and runs are kept (`sync.purge`); 0 keeps them.
pub static HISTORY_RETENTION_DAYS: GucSetting<i32> = GucSetting::<i32>::new(30);
/// Seconds the slot's confirmed position may stand still while WAL is
/// written before `sync.slot_health` calls it stalled.
pub static STALL_SECONDS: GucSetting<i32> = GucSetting::<i32>::new(300);
/// Open exports of a definition from which large batches of changed keys
/// are deferred (kept unmapped until the queue drains); 0 never defers.
pub static DEFER_AFTER: GucSetting<i32> = GucSetting::<i32>::new(50_000);
/// Whether the worker's slot is a failover slot (PostgreSQL 17 and later).
pub static FAILOVER_SLOT: GucSetting<bool> = GucSetting::<bool>::new(true);

struct Setting {
    name: &'static str,
    description: &'static str,
}

const SETTINGS: &[Setting] = &[
    Setting { name: "slot_name", description: "Replication slot the worker streams from." },
    Setting {
        name: "max_attempts",
        description: "Attempts before an export goes to error (default for new definitions).",
    },
    Setting {
        name: "backoff_base_seconds",
        description: "First retry delay after a failure; doubles per attempt, with jitter.",
    },
    Setting { name: "backoff_max_seconds", description: "Longest retry delay." },
    Setting { name: "lease_seconds", description: "How long a claim lasts before the export may be taken over." },
    Setting {
        name: "history_retention_days",
        description: "Days finished exports and runs are kept before sync.purge() deletes them; 0 keeps them.",
    },
    Setting {
        name: "stall_seconds",
        description: "Seconds the slot's confirmed position may stand still while WAL is written before sync.slot_health says stalled.",
    },
    Setting {
        name: "defer_after",
        description: "Open exports of a definition from which batches of 500 changed keys or more are kept in sync.deferred_keys and staged once the claimable queue (pending, failed) is below half of it (or 2,000); 0 never defers.",
    },
    Setting {
        name: "failover_slot",
        description: "On PostgreSQL 17 and later, make the worker's slot a failover slot (kept on standbys with sync_replication_slots).",
    },
];

/// Registers the settings; called from `_PG_init`.
pub fn init() {
    GucRegistry::define_string_guc(
        c"sync.slot_name",
        c"Replication slot the syncbridge worker streams from.",
        c"Status views compute the slot lag from it.",
        &SLOT_NAME,
        GucContext::Userset,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"sync.max_attempts",
        c"Attempts before an export goes to state error, for new definitions.",
        c"Each definition keeps its own max_attempts once defined.",
        &MAX_ATTEMPTS,
        1,
        1000,
        GucContext::Userset,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"sync.backoff_base_seconds",
        c"First retry delay after a failed export, in seconds.",
        c"The delay doubles per attempt, with jitter, up to sync.backoff_max_seconds.",
        &BACKOFF_BASE_SECONDS,
        0,
        86400,
        GucContext::Userset,
        GucFlags::UNIT_S,
    );
    GucRegistry::define_int_guc(
        c"sync.backoff_max_seconds",
        c"Longest retry delay after a failed export, in seconds.",
        c"",
        &BACKOFF_MAX_SECONDS,
        0,
        604800,
        GucContext::Userset,
        GucFlags::UNIT_S,
    );
    GucRegistry::define_int_guc(
        c"sync.lease_seconds",
        c"How long a claimed export stays leased to a worker, in seconds.",
        c"An export whose lease expired is recovered by the next claim.",
        &LEASE_SECONDS,
        1,
        86400,
        GucContext::Userset,
        GucFlags::UNIT_S,
    );
    GucRegistry::define_int_guc(
        c"sync.history_retention_days",
        c"Days finished exports and runs are kept, in days; 0 keeps them forever.",
        c"sync.purge(), which every worker calls every few minutes, deletes exported, confirmed and cancelled exports and finished runs older than this. Open exports of existing definitions are never purged.",
        &HISTORY_RETENTION_DAYS,
        0,
        36500,
        GucContext::Userset,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"sync.stall_seconds",
        c"Seconds the slot's confirmed position may stand still while WAL is written before it counts as stalled.",
        c"sync.slot_health and sync.status show a stall as an alert state with its reason.",
        &STALL_SECONDS,
        10,
        86400,
        GucContext::Userset,
        GucFlags::UNIT_S,
    );
    GucRegistry::define_int_guc(
        c"sync.defer_after",
        c"Open exports of a definition from which large batches of changed keys are deferred.",
        c"A target far behind gains nothing from keys mapped long before they can be sent: from this many open exports, batches of 500 keys or more (or this many, if fewer) are kept in sync.deferred_keys as they came, and sync.claim stages them, oldest first, once its claimable queue (pending, failed) is below half of this or 2,000 exports. 0 never defers (and stages what is deferred as fast as the exporters claim).",
        &DEFER_AFTER,
        0,
        1_000_000_000,
        GucContext::Userset,
        GucFlags::default(),
    );
    GucRegistry::define_bool_guc(
        c"sync.failover_slot",
        c"On PostgreSQL 17 and later, the worker creates its slot as a failover slot (and turns failover on for an existing one).",
        c"A physical standby with sync_replication_slots = on keeps a copy of a failover slot; after a promotion the worker resumes from it. Set synchronized_standby_slots on the primary so that nothing the standbys lack is sent or confirmed.",
        &FAILOVER_SLOT,
        GucContext::Userset,
        GucFlags::default(),
    );
}

fn value(name: &str) -> Result<String, SyncError> {
    Ok(match name {
        "slot_name" => {
            SLOT_NAME.get().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "syncbridge".to_owned())
        }
        "max_attempts" => MAX_ATTEMPTS.get().to_string(),
        "backoff_base_seconds" => BACKOFF_BASE_SECONDS.get().to_string(),
        "backoff_max_seconds" => BACKOFF_MAX_SECONDS.get().to_string(),
        "lease_seconds" => LEASE_SECONDS.get().to_string(),
        "history_retention_days" => HISTORY_RETENTION_DAYS.get().to_string(),
        "stall_seconds" => STALL_SECONDS.get().to_string(),
        "defer_after" => DEFER_AFTER.get().to_string(),
        "failover_slot" => FAILOVER_SLOT.get().to_string(),
        other => return Err(SyncError::UnknownSetting { name: other.to_owned() }),
    })
}

/// `sync._setting(name)`: the current value of setting `sync.<name>`.
#[pg_extern(stable, parallel_safe, name = "_setting")]
pub fn setting(name: &str) -> String {
    value(name).unwrap_or_else(|e| e.raise())
}

/// `sync.settings()`: every syncbridge setting with its value.
#[pg_extern(stable, parallel_safe)]
pub fn settings() -> TableIterator<'static, (name!(name, String), name!(value, String), name!(description, String))> {
    let rows: Vec<_> = SETTINGS
        .iter()
        .map(|s| {
            let v = value(s.name).unwrap_or_else(|e| e.raise());
            (format!("sync.{}", s.name), v, s.description.to_owned())
        })
        .collect();
    TableIterator::new(rows)
}
