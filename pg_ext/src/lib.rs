//! syncbridge: the extension. It holds every sync definition and all sync state
//! in schema `sync`, and decides what must change; the worker (`cdc_worker/`)
//! only carries changes between the replication slot, this extension and the
//! targets. See DESIGN in the README.

use pgrx::prelude::*;

mod error;
mod expr;
mod guc;
mod schedule;
mod secret;
mod standby;

#[cfg(any(test, feature = "pg_test"))]
mod tests_types;

::pgrx::pg_module_magic!(name, version);

#[pg_guard]
pub extern "C-unwind" fn _PG_init() {
    guc::init();
}

// Hand-written SQL, in dependency order (see sql/).
extension_sql_file!("../../sql/schema.sql", name = "schema", bootstrap);
extension_sql_file!(
    "../../sql/config.sql",
    name = "config",
    requires = [expr::check_expression_sql, secret::check_secret_ref_sql, secret::check_config_sql, guc::setting]
);
extension_sql_file!("../../sql/compile.sql", name = "compile", requires = ["config"]);
extension_sql_file!("../../sql/stage.sql", name = "stage", requires = ["compile"]);
extension_sql_file!("../../sql/plan.sql", name = "plan", requires = ["stage"]);
extension_sql_file!("../../sql/queue.sql", name = "queue", requires = ["stage"]);
extension_sql_file!("../../sql/pull.sql", name = "pull", requires = ["queue"]);
extension_sql_file!("../../sql/backfill.sql", name = "backfill", requires = ["pull"]);
extension_sql_file!("../../sql/ops.sql", name = "ops", requires = ["backfill", schedule::_cron_next_epoch]);
extension_sql_file!("../../sql/slot.sql", name = "slot", requires = ["ops", standby::_log_standby_snapshot]);
extension_sql_file!("../../sql/ddl.sql", name = "ddl", requires = ["slot"]);
extension_sql_file!("../../sql/status.sql", name = "status", requires = ["ddl"]);
extension_sql_file!("../../sql/roles.sql", name = "roles", finalize);

/// The extension's version, as built (the `default_version` of the control file).
#[pg_extern(immutable, parallel_safe)]
fn version() -> &'static str {
    env!("CARGO_PKG_VERSION")
}

#[cfg(any(test, feature = "pg_test"))]
#[pg_schema]
mod tests {
    use pgrx::prelude::*;

    #[pg_test]
    fn version_matches_crate() {
        let v = Spi::get_one::<String>("SELECT sync.version()").expect("spi").expect("not null");
        assert_eq!(v, env!("CARGO_PKG_VERSION"));
    }
}

/// Required by `cargo pgrx test`.
#[cfg(test)]
pub mod pg_test {
    pub fn setup(_options: Vec<&str>) {}

    pub fn postgresql_conf_options() -> Vec<&'static str> {
        vec!["wal_level = 'logical'"]
    }
}
