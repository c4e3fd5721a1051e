//! The request of `lifecycle/seed_request`, repeated without criterion around it: a program to
//! profile, and whose instruction count per request is deterministic (unlike times on a shared
//! machine).
//!
//! ```sh
//! cargo bench -p proxy-wasm-harness --bench requests --no-run   # prints the binary's path
//! valgrind --tool=callgrind --collect-atstart=no --toggle-collect='requests::run' \
//!     target/release/deps/requests-HASH 10000
//! callgrind_annotate callgrind.out.PID
//! ```
//!
//! With `--toggle-collect`, only the request loop counts: the total `Ir` / N is the cost of one
//! request. Without an argument (as `cargo bench` runs it) it does a few thousand requests and
//! prints the mean time of one.

// A benchmark program, not library code: a failed setup should stop it loudly.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use proxy_wasm_harness::abi::LogLevel;
use proxy_wasm_harness::{Host, Module, Plugin, Runtime};
use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::time::Instant;

const ROOT_ID: &str = "my_root_id";
const SEED: &str = r#"{"name":"resp-header-demo","value":"added by our filter"}"#;

const REQUEST: [(&str, &str); 10] = [
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

const RESPONSE: [(&str, &str); 10] = [
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

/// `header_filter.wasm` as `benches/lifecycle.rs` builds it (run that bench, or build the filter
/// for `wasm32-wasip1` in release, first).
fn filter_wasm() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("host-harness/ has a parent");
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    target.join("wasm32-wasip1/release/header_filter.wasm")
}

/// One request, as `lifecycle/seed_request` times it.
fn one(plugin: &Plugin) {
    let mut s = plugin.http_stream().unwrap();
    s.send_request_headers(black_box(&REQUEST), true).unwrap();
    s.send_response_headers(black_box(&RESPONSE), false)
        .unwrap();
    s.complete().unwrap();
    black_box(&s);
}

/// The measured loop (the name `--toggle-collect` refers to).
#[inline(never)]
fn run(plugin: &Plugin, n: u64) {
    for _ in 0..n {
        one(plugin);
    }
}

fn main() {
    // `cargo bench` passes `--bench`; a number is the count of requests.
    let n: Option<u64> = std::env::args().skip(1).find_map(|a| a.parse().ok());
    let wasm = filter_wasm();
    if !wasm.exists() {
        println!("requests: {} missing, skipped", wasm.display());
        return;
    }
    let module = Module::from_file(&Runtime::shared(), &wasm).unwrap();
    let host = Host::new();
    host.set_log_level(LogLevel::Info);
    let plugin = host.start_plugin(&module, ROOT_ID, SEED).unwrap();
    // Warm the pools as the criterion bench does before it times.
    for _ in 0..100 {
        one(&plugin);
    }
    let n = n.unwrap_or(20_000);
    let started = Instant::now();
    run(&plugin, n);
    let took = started.elapsed();
    if n > 0 {
        println!(
            "requests: {n} seed requests, {:.0} ns each",
            took.as_nanos() as f64 / n as f64
        );
    }
}
