//! Running the `syncbridge-worker` binary from tests.

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

/// The workspace root (the tests crate lives in `<root>/tests`).
pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).parent().expect("tests/ has a parent").to_path_buf()
}

/// The path of a freshly built `syncbridge-worker` (built once per test binary,
/// with the same profile as the tests), or of `SYNCBRIDGE_WORKER_BIN` when set
/// (to run the tests against another build, e.g. an older one).
pub fn worker_bin() -> &'static PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(bin) = std::env::var_os("SYNCBRIDGE_WORKER_BIN") {
            return PathBuf::from(bin);
        }
        let root = workspace_root();
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let release = !cfg!(debug_assertions);
        let mut c = Command::new(cargo);
        c.current_dir(&root).args(["build", "--quiet", "-p", "syncbridge-worker", "--bin", "syncbridge-worker"]);
        if release {
            c.arg("--release");
        }
        let status = c.status().expect("run cargo build for the worker");
        assert!(status.success(), "building syncbridge-worker failed");
        let target = std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| root.join("target"));
        let bin = target.join(if release { "release" } else { "debug" }).join("syncbridge-worker");
        assert!(bin.exists(), "{} was not built", bin.display());
        bin
    })
}

/// A `Command` for the worker binary. Targets on loopback (the Graph
/// emulator) are allowed (`SYNCBRIDGE_ALLOW_LOOPBACK_TARGETS`, the
/// environment form of `--allow-loopback-targets`); remove the variable to
/// run the worker under its default policy.
pub fn worker() -> Command {
    let mut c = Command::new(worker_bin());
    c.env(LOOPBACK_ENV, "1");
    c
}

/// The environment variable that allows loopback targets.
pub const LOOPBACK_ENV: &str = "SYNCBRIDGE_ALLOW_LOOPBACK_TARGETS";
