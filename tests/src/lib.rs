//! End-to-end test support: builds the filter to wasm, and runs it in a real Envoy in front of a
//! recording upstream.
//!
//! ```no_run
//! use e2e::{envoy, http1};
//!
//! let wasm = e2e::filter_wasm();
//! let upstream = http1::Upstream::start(&[("server", "upstream")]);
//! let config = r#"{"name":"resp-header-demo","value":"added by our filter"}"#;
//! let filter = envoy::wasm_filter("header_filter", "my_root_id", &wasm, config);
//! let proxy = envoy::Envoy::start(&envoy::bootstrap(upstream.addr(), vec![filter])).unwrap();
//! let resp = http1::get(proxy.listener, "/", &[]).unwrap();
//! assert_eq!(resp.header("resp-header-demo"), Some("added by our filter"));
//! ```

// Test support: a failed expectation here should fail the test, loudly.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

pub mod envoy;
pub mod http1;
pub mod registry;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// The workspace root.
pub fn workspace_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
}

/// The cargo target directory shared by the workspace.
pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"))
}

/// Build a workspace package to `wasm32-wasip1` (release) and return `artifact`'s path. Cargo's
/// own lock serialises concurrent builds from several test binaries; an up-to-date build costs a
/// fraction of a second.
fn build_wasm(package: &str, artifact: &str) -> PathBuf {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let status = Command::new(cargo)
        .current_dir(workspace_root())
        .args([
            "build",
            "--release",
            "--target",
            "wasm32-wasip1",
            "-p",
            package,
        ])
        .status()
        .expect("run cargo");
    assert!(status.success(), "building {artifact} failed: {status}");
    let path = target_dir().join("wasm32-wasip1/release").join(artifact);
    assert!(path.exists(), "{} missing after build", path.display());
    path
}

/// `header_filter.wasm`, built once per test process.
pub fn filter_wasm() -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT
        .get_or_init(|| build_wasm("header-filter", "header_filter.wasm"))
        .clone()
}

/// `callout_filter.wasm` (examples/callout-filter), built once per test process.
pub fn callout_wasm() -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT
        .get_or_init(|| build_wasm("callout-filter", "callout_filter.wasm"))
        .clone()
}

/// A compiled module in the process-wide harness runtime.
pub fn harness_module(path: &Path) -> proxy_wasm_harness::Module {
    proxy_wasm_harness::Module::from_file(&proxy_wasm_harness::Runtime::shared(), path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Build the `wasmctl` binary (`profile`: "dev" or "release") once per test process and return
/// its path; tests run it as a subprocess, as users do.
pub fn wasmctl_bin() -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
            let status = Command::new(cargo)
                .current_dir(workspace_root())
                .args(["build", "-p", "wasmctl", "--bin", "wasmctl"])
                .status()
                .expect("run cargo");
            assert!(status.success(), "building wasmctl failed: {status}");
            let path = target_dir().join("debug/wasmctl");
            assert!(path.exists(), "{} missing after build", path.display());
            path
        })
        .clone()
}

/// The oras-py driver script (`tests/oras_helper.py`).
pub fn oras_helper() -> PathBuf {
    workspace_root().join("tests/oras_helper.py")
}
