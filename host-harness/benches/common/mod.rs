//! What both benches share: the seed request, the filter, and a host as Envoy starts by default.

use proxy_wasm_harness::Host;
use proxy_wasm_harness::abi::LogLevel;
use std::path::{Path, PathBuf};

pub const ROOT_ID: &str = "my_root_id";
pub const SEED: &str = r#"{"name":"resp-header-demo","value":"added by our filter"}"#;

pub const REQUEST: [(&str, &str); 10] = [
    (":method", "GET"),
    (":path", "/details/0"),
    (":authority", "details.default.svc:9080"),
    (":scheme", "http"),
    ("user-agent", "curl/8.5.0"),
    ("accept", "*/*"),
    ("accept-encoding", "gzip, deflate"),
    ("x-request-id", "5a1c6f3e-8f0b-4d1e-9b7a-2f4c1d0e9a88"),
    ("x-forwarded-proto", "http"),
    ("x-b3-traceid", "80f198ee56343ba864fe8b2a57d3eff7"),
];

pub const RESPONSE: [(&str, &str); 10] = [
    (":status", "200"),
    ("content-type", "application/json"),
    ("content-length", "82"),
    ("date", "Wed, 25 Nov 2026 18:42:23 GMT"),
    ("server", "envoy"),
    ("x-envoy-upstream-service-time", "0"),
    ("cache-control", "no-cache"),
    ("vary", "accept-encoding"),
    ("etag", "\"5a1c6f3e\""),
    ("x-request-id", "5a1c6f3e-8f0b-4d1e-9b7a-2f4c1d0e9a88"),
];

pub fn workspace_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("host-harness/ has a parent")
}

pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"))
}

/// Where `cargo build --profile wasm --target wasm32-wasip1 -p header-filter` writes the filter.
pub fn filter_path() -> PathBuf {
    target_dir().join("wasm32-wasip1/wasm/header_filter.wasm")
}

/// A host as Envoy starts by default: the `wasm` log level is `info`, so the filter's
/// per-rule debug line is not formatted (the harness's own default, `trace`, is for tests).
pub fn host() -> Host {
    let host = Host::new();
    host.set_log_level(LogLevel::Info);
    host
}
