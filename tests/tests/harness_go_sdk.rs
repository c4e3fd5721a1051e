//! A proxy-wasm module from a garbage-collected runtime: the Go filter in `examples/go-filter`
//! (proxy-wasm Go SDK, standard Go's `wasip1` port as a reactor), built by
//! `scripts/go-filter-build` on first use. The harness drives it through enough requests for Go's
//! collector to run several times, with every request's headers still right and the VM's memory
//! bounded; a real Envoy serves the same module and shows the same headers and counters in
//! `/stats`.

// Test helpers outside #[test] functions: a failed expectation should fail the test, loudly.
#![allow(clippy::unwrap_used, clippy::panic)]

use e2e::envoy::{Envoy, bootstrap, wasm_filter};
use e2e::http1::{Client, Upstream};
use proxy_wasm_harness::abi::{AbiVersion, Action, LogLevel};
use proxy_wasm_harness::{Host, Module, Plugin};

/// The root id (the Go SDK answers to any; Envoy's `config.root_id`).
const ROOT_ID: &str = "go_filter";
/// Response headers and two copy rules, one from a pseudo-header.
const CONFIG: &str = r#"{"response_headers":{"x-go-filter":"served by Go"},
    "copy":[{"from":":path","to":"x-go-path"},{"from":"x-user","to":"x-go-user"}]}"#;
/// The counters the filter defines, as the harness names them (Envoy adds `wasmcustom.`).
const REQUESTS: &str = "go_filter.requests";
const GC_CYCLES: &str = "go_filter.gc_cycles";

fn module() -> Module {
    e2e::harness_module(&e2e::go_wasm())
}

/// Request `i` through the harness: its headers must come out right whatever the collector did
/// in between.
fn request(plugin: &Plugin, i: u64) {
    let path = format!("/items/{i}?q={}", "x".repeat((i % 64) as usize));
    let user = format!("user-{i}");
    let mut s = plugin.http_stream().unwrap();
    let action = s
        .send_request_headers(
            &[
                (":method", "GET"),
                (":path", &path),
                (":authority", "example"),
                ("x-user", &user),
            ],
            true,
        )
        .unwrap();
    assert_eq!(action, Action::Continue);
    s.send_response_headers(&[(":status", "200")], true)
        .unwrap();
    s.complete().unwrap();
    let (req, resp) = (s.request_headers(), s.response_headers());
    assert_eq!(req.get("x-go-path").as_deref(), Some(path.as_str()));
    assert_eq!(req.get("x-go-user").as_deref(), Some(user.as_str()));
    assert_eq!(resp.get("x-go-filter").as_deref(), Some("served by Go"));
    assert_eq!(resp.get("x-go-requests"), Some(i.to_string()));
}

fn counter(host: &Host, name: &str) -> u64 {
    host.metric(name)
        .unwrap_or_else(|| panic!("no metric {name}: {:?}", host.metrics()))
        .value as u64
}

#[test]
fn the_harness_runs_a_go_module_through_many_garbage_collections() {
    let module = module();
    assert_eq!(module.abi_version(), AbiVersion::V0_2_0);
    assert_eq!(module.unsupported_imports(), Vec::<String>::new());

    let host = Host::new();
    // The filter logs every request at debug; the host need not keep thousands of lines.
    host.set_log_level(LogLevel::Info);
    let plugin = host.start_plugin(&module, ROOT_ID, CONFIG).unwrap();
    let configured = host.logs_at(LogLevel::Info);
    assert!(
        configured
            .iter()
            .any(|l| l.starts_with("go-filter: configured 1 response header(s), 2 copy rule(s)")),
        "{configured:?}"
    );

    // Until the collector has run once: from then on the heap is at its steady size.
    let mut i = 0;
    while counter(&host, GC_CYCLES) == 0 {
        i += 1;
        assert!(i <= 50_000, "no GC cycle in {i} requests");
        request(&plugin, i);
    }
    let (first_gc_at, memory_then) = (i, plugin.memory_size());
    // Five more cycles' worth of requests.
    let total = first_gc_at * 6;
    while i < total {
        i += 1;
        request(&plugin, i);
    }
    let cycles = counter(&host, GC_CYCLES);
    println!(
        "first GC after {first_gc_at} requests; {total} requests, {cycles} GC cycles; memory {} -> {} bytes",
        memory_then,
        plugin.memory_size()
    );
    assert_eq!(counter(&host, REQUESTS), total, "every request counted");
    assert!(cycles >= 4, "{cycles} GC cycles in {total} requests");
    // Linear memory never shrinks, so a leak shows as growth: even 100 bytes kept per request
    // would add more than 3 MB over the requests after the first cycle. The collector reuses
    // what it frees; the heap may still settle a little higher than at its first cycle.
    assert!(
        plugin.memory_size() <= memory_then + (2 << 20),
        "memory grew from {memory_then} to {} bytes over {} GC cycles",
        plugin.memory_size(),
        cycles
    );
    assert!(plugin.failure().is_none(), "{:?}", plugin.failure());
    assert!(
        host.logs_at(LogLevel::Warn).is_empty(),
        "{:?}",
        host.logs_at(LogLevel::Warn)
    );
}

#[test]
fn the_go_filter_takes_plain_text_and_refuses_a_bad_configuration() {
    let module = module();
    let host = Host::new();
    let plugin = host
        .start_plugin(&module, ROOT_ID, "hello from Go")
        .unwrap();
    let mut s = plugin.http_stream().unwrap();
    s.send_request_headers(
        &[(":method", "GET"), (":path", "/"), (":authority", "x")],
        true,
    )
    .unwrap();
    s.send_response_headers(&[(":status", "200")], true)
        .unwrap();
    s.complete().unwrap();
    assert_eq!(
        s.response_headers().get("x-go-filter").as_deref(),
        Some("hello from Go")
    );
    assert_eq!(s.request_headers().get("x-go-path"), None);

    let host = Host::new();
    let err = host
        .start_plugin(&module, ROOT_ID, r#"{"copy":[{"from":"x-a","too":"x-b"}]}"#)
        .map(|_| ())
        .unwrap_err();
    let errors = host.logs_at(LogLevel::Error);
    assert!(
        errors
            .iter()
            .any(|l| l.contains("go-filter: invalid configuration") && l.contains("\"too\"")),
        "{err}: {errors:?}"
    );
}

#[test]
fn envoy_runs_the_go_module_through_garbage_collections_and_counts_in_its_stats() {
    let upstream = Upstream::start(&[("x-upstream", "kept")]);
    let filter = wasm_filter(ROOT_ID, ROOT_ID, &e2e::go_wasm(), CONFIG);
    let envoy = Envoy::must_start(&bootstrap(upstream.addr(), vec![filter]));
    let (requests, gc_cycles) = (
        format!("wasmcustom.{REQUESTS}"),
        format!("wasmcustom.{GC_CYCLES}"),
    );
    // Defined at configure by every VM (Envoy's main thread and the worker), before any request.
    assert_eq!(envoy.stat(&gc_cycles), Some(0), "{}", envoy.log());

    // Requests on one connection until the worker's collector has run twice, each response's
    // headers checked, and what the upstream got for one request in a hundred. The gc_cycles
    // counter is read every 500 requests.
    let mut client = Client::connect(envoy.listener).unwrap();
    let mut i: u64 = 0;
    loop {
        i += 1;
        assert!(i <= 50_000, "fewer than two GC cycles in {i} requests");
        let path = format!("/items/{i}");
        let user = format!("user-{i}");
        let resp = client
            .send("GET", &path, &[("x-user", &user)], b"")
            .unwrap_or_else(|e| panic!("request {i}: {e}\n{}", envoy.log()));
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.header("x-upstream"), Some("kept"));
        assert_eq!(resp.values("x-go-filter"), ["served by Go"]);
        assert_eq!(resp.values("x-go-requests"), [i.to_string()]);
        // (The upstream hands out copies of everything it received: a sample keeps it cheap.)
        if i % 100 == 1 {
            let sent = upstream.last();
            assert_eq!(sent.values("x-go-path"), [path.as_str()]);
            assert_eq!(sent.values("x-go-user"), [user.as_str()]);
        }
        if i.is_multiple_of(500) && envoy.stat(&gc_cycles).unwrap_or(0) >= 2 {
            break;
        }
    }
    println!(
        "envoy: {i} requests, {:?} GC cycles",
        envoy.stat(&gc_cycles)
    );
    assert_eq!(envoy.stat_reaches(&requests, i), Some(i));
    let log = envoy.log();
    assert!(
        log.contains("go-filter: configured 1 response header(s), 2 copy rule(s) on go1."),
        "{log}"
    );
    assert!(
        log.contains(&format!("go-filter: request {i} (/items/{i}) done")),
        "{log}"
    );
}

/// Writes to stderr in `proxy_on_configure`: a line, a lone newline, nothing, a piece without
/// one. Go's runtime writes a panic's message this way, piece by piece.
const STDERR_WAT: &str = r#"(module
  (import "wasi_snapshot_preview1" "fd_write" (func $write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 100) "first\n")
  (data (i32.const 110) "\n")
  (data (i32.const 120) "last")
  (func $stderr (param $p i32) (param $n i32)
    (i32.store (i32.const 0) (local.get $p))
    (i32.store (i32.const 4) (local.get $n))
    (if (i32.ne (call $write (i32.const 2) (i32.const 0) (i32.const 1) (i32.const 8)) (i32.const 0))
      (then unreachable))
    (if (i32.ne (i32.load (i32.const 8)) (local.get $n)) (then unreachable)))
  (func (export "malloc") (param i32) (result i32) (i32.const 1024))
  (func (export "proxy_abi_version_0_2_1"))
  (func (export "proxy_on_context_create") (param i32 i32))
  (func (export "proxy_on_vm_start") (param i32 i32) (result i32) (i32.const 1))
  (func (export "proxy_on_configure") (param i32 i32) (result i32)
    (call $stderr (i32.const 100) (i32.const 6))
    (call $stderr (i32.const 110) (i32.const 1))
    (call $stderr (i32.const 110) (i32.const 0))
    (call $stderr (i32.const 120) (i32.const 4))
    (i32.const 1))
  (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32) (i32.const 0)))"#;

#[test]
fn stderr_pieces_log_as_in_envoy_a_lone_newline_as_an_empty_line() {
    let wasm = wat::parse_str(STDERR_WAT).unwrap();
    let host = Host::new();
    let module = Module::from_bytes(&proxy_wasm_harness::Runtime::shared(), &wasm).unwrap();
    host.start_plugin(&module, "stdio", "").unwrap();
    let harness = host.logs_at(LogLevel::Error);
    assert_eq!(harness, ["first", "", "last"]);

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("stdio.wasm");
    std::fs::write(&file, &wasm).unwrap();
    let upstream = Upstream::start(&[]);
    let envoy = Envoy::must_start(&bootstrap(
        upstream.addr(),
        vec![wasm_filter("stdio", "stdio", &file, "")],
    ));
    // Envoy configures the plugin on its main thread and on the worker: the same lines each
    // time, as `wasm log <name> <root id>: <message>` at error.
    let log = envoy.log();
    let logged: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("[error][wasm]"))
        .filter_map(|l| l.split_once("wasm log stdio stdio:"))
        .map(|(_, m)| m.strip_prefix(' ').unwrap_or(m))
        .collect();
    assert!(!logged.is_empty(), "{log}");
    assert!(
        logged.chunks(harness.len()).all(|c| c == harness),
        "envoy {logged:?}, harness {harness:?}\n{log}"
    );
}
