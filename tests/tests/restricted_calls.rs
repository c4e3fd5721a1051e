//! Envoy (proxy-wasm-cpp-host) lets a module call only a few host functions while the VM starts
//! (`_initialize`) and while its allocator runs (`malloc`, called when the host hands it data);
//! any other call traps with `restricted_callback` and the plugin fails to load. Each case below
//! is a module that makes one call in one of those places; `envoy --mode validate` (which starts
//! the VM and configures the plugin) and the harness must agree on whether it loads.

// Helpers outside #[test] functions fail the test loudly.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use proxy_wasm_harness::{Error, Host, Module, Plugin, Runtime};
use std::process::Command;

/// (import module, name, WAT signature, WAT arguments).
type Call = (&'static str, &'static str, &'static str, &'static str);

const PROXY_LOG: Call = (
    "env",
    "proxy_log",
    "(param i32 i32 i32) (result i32)",
    "(i32.const 2) (i32.const 0) (i32.const 0)",
);
const FD_WRITE: Call = (
    "wasi_snapshot_preview1",
    "fd_write",
    "(param i32 i32 i32 i32) (result i32)",
    "(i32.const 1) (i32.const 0) (i32.const 0) (i32.const 8)",
);
const CLOCK_TIME_GET: Call = (
    "wasi_snapshot_preview1",
    "clock_time_get",
    "(param i32 i64 i32) (result i32)",
    "(i32.const 0) (i64.const 0) (i32.const 16)",
);
const RANDOM_GET: Call = (
    "wasi_snapshot_preview1",
    "random_get",
    "(param i32 i32) (result i32)",
    "(i32.const 32) (i32.const 4)",
);
const ENVIRON_SIZES_GET: Call = (
    "wasi_snapshot_preview1",
    "environ_sizes_get",
    "(param i32 i32) (result i32)",
    "(i32.const 40) (i32.const 44)",
);
const FD_FDSTAT_GET: Call = (
    "wasi_snapshot_preview1",
    "fd_fdstat_get",
    "(param i32 i32) (result i32)",
    "(i32.const 1) (i32.const 64)",
);
const GET_PROPERTY: Call = (
    "env",
    "proxy_get_property",
    "(param i32 i32 i32 i32) (result i32)",
    "(i32.const 0) (i32.const 0) (i32.const 48) (i32.const 52)",
);
const SET_TICK: Call = (
    "env",
    "proxy_set_tick_period_milliseconds",
    "(param i32) (result i32)",
    "(i32.const 1000)",
);
const SCHED_YIELD: Call = ("wasi_snapshot_preview1", "sched_yield", "(result i32)", "");

#[derive(Clone, Copy, Debug, PartialEq)]
enum Place {
    Initialize,
    Malloc,
}

/// A module making `call` in `place`; its `on_configure` reads the plugin configuration, so
/// the host calls `malloc`.
fn module(place: Place, call: Call) -> Vec<u8> {
    let (m, name, sig, args) = call;
    let the_call = format!("(drop (call $f {args}))");
    let (init, malloc) = match place {
        Place::Initialize => (the_call.as_str(), ""),
        Place::Malloc => ("", the_call.as_str()),
    };
    let wat = format!(
        r#"(module
  (import "{m}" "{name}" (func $f {sig}))
  (import "env" "proxy_get_buffer_bytes" (func $gbb (param i32 i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (func (export "proxy_abi_version_0_2_1"))
  (func (export "_initialize") {init})
  (func (export "malloc") (param i32) (result i32) {malloc} (i32.const 1024))
  (func (export "proxy_on_context_create") (param i32 i32))
  (func (export "proxy_on_vm_start") (param i32 i32) (result i32) (i32.const 1))
  (func (export "proxy_on_configure") (param i32 i32) (result i32)
    (drop (call $gbb (i32.const 7) (i32.const 0) (local.get 1) (i32.const 0) (i32.const 4)))
    (i32.const 1)))"#
    );
    wat::parse_str(wat).unwrap()
}

/// Whether Envoy 1.40 accepts a listener with the module as an HTTP wasm filter.
fn loads_in_envoy(wasm: &[u8], dir: &std::path::Path) -> (bool, String) {
    let file = dir.join("m.wasm");
    std::fs::write(&file, wasm).unwrap();
    let filter = e2e::envoy::wasm_filter("probe", "probe", &file, "configuration");
    let upstream: std::net::SocketAddr = "127.0.0.1:9".parse().unwrap();
    let config = e2e::envoy::bootstrap(upstream, vec![filter]);
    let cfg = dir.join("envoy.json");
    std::fs::write(&cfg, serde_json::to_vec(&config).unwrap()).unwrap();
    let out = Command::new(e2e::envoy::envoy_bin())
        .args(["--mode", "validate", "--disable-hot-restart", "-c"])
        .arg(&cfg)
        .output()
        .unwrap();
    let log = String::from_utf8_lossy(&out.stderr).into_owned();
    (out.status.success(), log)
}

/// Whether the harness starts the plugin and its VM is sound; the error when not.
fn loads_in_harness(wasm: &[u8]) -> Result<Plugin, Error> {
    let module = Module::from_bytes(&Runtime::shared(), wasm).unwrap();
    let plugin = Host::new()
        .plugin(&module)
        .root_id("probe")
        .configuration("configuration")
        .start()?;
    match plugin.failure() {
        Some(e) => Err(e),
        None => Ok(plugin),
    }
}

#[test]
fn envoy_and_the_harness_agree_on_calls_restricted_at_start_and_in_malloc() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (Place::Initialize, PROXY_LOG, true),
        (Place::Initialize, FD_WRITE, true),
        (Place::Initialize, CLOCK_TIME_GET, true),
        (Place::Initialize, RANDOM_GET, true),
        (Place::Initialize, ENVIRON_SIZES_GET, true),
        (Place::Initialize, FD_FDSTAT_GET, true),
        (Place::Initialize, GET_PROPERTY, false),
        (Place::Initialize, SET_TICK, false),
        (Place::Initialize, SCHED_YIELD, false),
        (Place::Malloc, PROXY_LOG, true),
        (Place::Malloc, FD_WRITE, true),
        (Place::Malloc, CLOCK_TIME_GET, true),
        (Place::Malloc, RANDOM_GET, false),
        (Place::Malloc, GET_PROPERTY, false),
    ];
    let mut wrong = Vec::new();
    for (place, call, allowed) in cases {
        let wasm = module(place, call);
        let (validates, log) = loads_in_envoy(&wasm, dir.path());
        let what = format!("{} in {place:?}", call.1);
        // A restricted call traps (restricted_callback). At start it fails the plugin; in
        // malloc the configuration still goes through, but the VM is failed.
        let envoy_ok = match (place, allowed) {
            (_, true) => validates && !log.contains("restricted_callback"),
            (Place::Initialize, false) => !validates && log.contains("restricted_callback"),
            (Place::Malloc, false) => validates && log.contains("restricted_callback"),
        };
        if !envoy_ok {
            wrong.push(format!(
                "{what}: Envoy validates={validates}, allowed={allowed}\n{log}"
            ));
        }
        match (loads_in_harness(&wasm), allowed) {
            (Ok(_), true) => {}
            (Err(Error::RestrictedCall { function, .. }), false) if function == call.1 => {}
            (h, _) => wrong.push(format!(
                "{what}: harness {:?}, expected allowed={allowed}",
                h.map(|_| ())
            )),
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    // The harness's error says where, what, and what Envoy allows there.
    let text = loads_in_harness(&module(Place::Malloc, RANDOM_GET))
        .err()
        .unwrap()
        .to_string();
    assert!(
        text.contains("malloc (in proxy_on_configure)")
            && text.contains("random_get")
            && text.contains("allowed: proxy_log, fd_write, clock_time_get"),
        "{text}"
    );
}

#[test]
fn a_vm_failed_in_malloc_fails_requests_closed_in_envoy_and_the_harness() {
    let dir = tempfile::tempdir().unwrap();
    let wasm = module(Place::Malloc, RANDOM_GET);
    let file = dir.path().join("m.wasm");
    std::fs::write(&file, &wasm).unwrap();
    let upstream = e2e::http1::Upstream::start(&[]);
    let filter = e2e::envoy::wasm_filter("probe", "probe", &file, "configuration");
    let mut proxy =
        e2e::envoy::Envoy::must_start(&e2e::envoy::bootstrap(upstream.addr(), vec![filter]));
    let resp = e2e::http1::get(proxy.listener, "/", &[]).unwrap();
    proxy.stop();
    assert_eq!(resp.status(), 503, "Envoy");
    assert!(upstream.received().is_empty());

    let module = Module::from_bytes(&Runtime::shared(), &wasm).unwrap();
    let plugin = Host::new()
        .plugin(&module)
        .root_id("probe")
        .configuration("configuration")
        .start()
        .unwrap();
    let mut s = plugin.http_stream().unwrap();
    s.send_request_headers(
        &[(":method", "GET"), (":path", "/"), (":authority", "x")],
        true,
    )
    .unwrap();
    assert_eq!(s.local_response().map(|l| l.status), Some(503), "harness");
}
