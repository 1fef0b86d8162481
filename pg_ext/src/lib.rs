//! syncbridge: the extension. It holds every sync definition and all sync state
//! in schema `sync`, and decides what must change; the worker (`cdc_worker/`)
//! only carries changes between the replication slot, this extension and the
//! targets. See DESIGN in the README.

use pgrx::prelude::*;

::pgrx::pg_module_magic!(name, version);

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
