//! Host-call statuses against Envoy 1.40: a module calls host functions with bad arguments (and
//! a few good ones) from `proxy_on_request_headers` and logs what each returned, as
//! `name=status`; Envoy and the harness must log the same lines in the same order. The cases are
//! the rows of the harness README's "Status codes that differ from Ok" table, plus the HTTP
//! call tokens a module gets.

// Helpers outside #[test] functions fail the test loudly.
#![allow(clippy::unwrap_used, clippy::panic)]

use e2e::envoy::{Envoy, bootstrap, wasm_filter};
use e2e::fidelity::abi_prelude;
use e2e::http1::{Client, Upstream};
use proxy_wasm_harness::abi::LogLevel;
use proxy_wasm_harness::{Host, Module, Runtime};
use std::fmt::Write as _;
use std::time::{Duration, Instant};

/// Far outside the module's two pages of memory.
const OOB: u32 = 1 << 20;

/// Where the constant strings and maps of the cases live, and where out-parameters land.
const DATA: u32 = 16 * 1024;
const OUT: u32 = 64;

/// The proxy-wasm map serialization: count, (key length, value length) pairs, then each key and
/// value NUL-terminated.
fn map(pairs: &[(&str, &str)]) -> Vec<u8> {
    let mut b = (pairs.len() as u32).to_le_bytes().to_vec();
    for (k, v) in pairs {
        b.extend((k.len() as u32).to_le_bytes());
        b.extend((v.len() as u32).to_le_bytes());
    }
    for (k, v) in pairs {
        b.extend(k.as_bytes());
        b.push(0);
        b.extend(v.as_bytes());
        b.push(0);
    }
    b
}

/// Constant byte strings placed in memory, addressed by `(ptr, len)` in the cases.
struct Consts {
    bytes: Vec<u8>,
}

impl Consts {
    fn put(&mut self, b: &[u8]) -> (u32, u32) {
        let at = DATA + self.bytes.len() as u32;
        self.bytes.extend(b);
        self.bytes.push(0);
        (at, b.len() as u32)
    }
    fn s(&mut self, s: &str) -> String {
        let (p, l) = self.put(s.as_bytes());
        format!("(i32.const {p}) (i32.const {l})")
    }
    fn m(&mut self, pairs: &[(&str, &str)]) -> String {
        let (p, l) = self.put(&map(pairs));
        format!("(i32.const {p}) (i32.const {l})")
    }
}

const IMPORTS: &str = r#"
  (import "env" "proxy_log" (func $proxy_log (param i32 i32 i32) (result i32)))
  (import "env" "proxy_get_header_map_value" (func $proxy_get_header_map_value (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_add_header_map_value" (func $proxy_add_header_map_value (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_replace_header_map_value" (func $proxy_replace_header_map_value (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_remove_header_map_value" (func $proxy_remove_header_map_value (param i32 i32 i32) (result i32)))
  (import "env" "proxy_get_header_map_pairs" (func $proxy_get_header_map_pairs (param i32 i32 i32) (result i32)))
  (import "env" "proxy_set_header_map_pairs" (func $proxy_set_header_map_pairs (param i32 i32 i32) (result i32)))
  (import "env" "proxy_get_header_map_size" (func $proxy_get_header_map_size (param i32 i32) (result i32)))
  (import "env" "proxy_get_buffer_bytes" (func $proxy_get_buffer_bytes (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_get_buffer_status" (func $proxy_get_buffer_status (param i32 i32 i32) (result i32)))
  (import "env" "proxy_set_buffer_bytes" (func $proxy_set_buffer_bytes (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_get_property" (func $proxy_get_property (param i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_set_property" (func $proxy_set_property (param i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_get_shared_data" (func $proxy_get_shared_data (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_set_shared_data" (func $proxy_set_shared_data (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_register_shared_queue" (func $proxy_register_shared_queue (param i32 i32 i32) (result i32)))
  (import "env" "proxy_resolve_shared_queue" (func $proxy_resolve_shared_queue (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_enqueue_shared_queue" (func $proxy_enqueue_shared_queue (param i32 i32 i32) (result i32)))
  (import "env" "proxy_dequeue_shared_queue" (func $proxy_dequeue_shared_queue (param i32 i32 i32) (result i32)))
  (import "env" "proxy_http_call" (func $proxy_http_call (param i32 i32 i32 i32 i32 i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_grpc_call" (func $proxy_grpc_call (param i32 i32 i32 i32 i32 i32 i32 i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_grpc_send" (func $proxy_grpc_send (param i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_grpc_cancel" (func $proxy_grpc_cancel (param i32) (result i32)))
  (import "env" "proxy_grpc_close" (func $proxy_grpc_close (param i32) (result i32)))
  (import "env" "proxy_define_metric" (func $proxy_define_metric (param i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_increment_metric" (func $proxy_increment_metric (param i32 i64) (result i32)))
  (import "env" "proxy_record_metric" (func $proxy_record_metric (param i32 i64) (result i32)))
  (import "env" "proxy_get_metric" (func $proxy_get_metric (param i32 i32) (result i32)))
  (import "env" "proxy_continue_stream" (func $proxy_continue_stream (param i32) (result i32)))
  (import "env" "proxy_close_stream" (func $proxy_close_stream (param i32) (result i32)))
  (import "env" "proxy_set_effective_context" (func $proxy_set_effective_context (param i32) (result i32)))
  (import "env" "proxy_done" (func $proxy_done (result i32)))
  (import "env" "proxy_call_foreign_function" (func $proxy_call_foreign_function (param i32 i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_set_tick_period_milliseconds" (func $proxy_set_tick_period_milliseconds (param i32) (result i32)))
  (import "env" "proxy_get_current_time_nanoseconds" (func $proxy_get_current_time_nanoseconds (param i32) (result i32)))
  (import "env" "proxy_get_log_level" (func $proxy_get_log_level (param i32) (result i32)))
"#;

/// The cases: (name, a WAT expression that leaves the i32 to log). `k` places constants.
fn cases(k: &mut Consts) -> Vec<(&'static str, String)> {
    let path = k.s(":path");
    let none = k.s("x-none");
    let hv = k.s("v");
    let prop_unknown = k.s("nope\0nothing");
    let prop_path = k.s("request\0path");
    let key = k.s("shared-key");
    let missing_key = k.s("missing-key");
    let val = k.s("value");
    let vm = k.s("calls");
    let qname = k.s("calls-queue");
    let noq = k.s("no-such-queue");
    let unknown = k.s("no-such-cluster");
    let upstream = k.s("upstream");
    let good = k.m(&[
        (":method", "GET"),
        (":path", "/call"),
        (":authority", "upstream"),
    ]);
    let no_path = k.m(&[(":method", "GET"), (":authority", "upstream")]);
    let empty = k.m(&[]);
    let svc = k.s("svc");
    let method = k.s("M");
    let counter = k.s("calls.counter");
    let histogram = k.s("calls.histogram");
    let foreign = k.s("no_such_function");
    let o = |n: u32| format!("(i32.const {})", OUT + n);
    let oob = format!("(i32.const {OOB})");
    vec![
        (
            "log_level_99",
            "(call $proxy_log (i32.const 99) (i32.const 0) (i32.const 0))".into(),
        ),
        (
            "get_header_value_map_99",
            format!(
                "(call $proxy_get_header_map_value (i32.const 99) {path} {} {})",
                o(0),
                o(4)
            ),
        ),
        (
            "get_header_value_missing",
            format!(
                "(call $proxy_get_header_map_value (i32.const 0) {none} {} {})",
                o(0),
                o(4)
            ),
        ),
        (
            "get_header_value_key_out_of_memory",
            format!(
                "(call $proxy_get_header_map_value (i32.const 0) {oob} (i32.const 4) {} {})",
                o(0),
                o(4)
            ),
        ),
        (
            "get_header_value_result_out_of_memory",
            format!(
                "(call $proxy_get_header_map_value (i32.const 0) {path} {oob} {})",
                o(4)
            ),
        ),
        (
            "get_response_header_during_request",
            format!(
                "(call $proxy_get_header_map_value (i32.const 2) {path} {} {})",
                o(0),
                o(4)
            ),
        ),
        (
            "add_header_map_99",
            format!("(call $proxy_add_header_map_value (i32.const 99) {none} {hv})"),
        ),
        (
            "replace_header_map_99",
            format!("(call $proxy_replace_header_map_value (i32.const 99) {none} {hv})"),
        ),
        (
            "remove_header_map_99",
            format!("(call $proxy_remove_header_map_value (i32.const 99) {none})"),
        ),
        (
            "remove_header_missing",
            format!("(call $proxy_remove_header_map_value (i32.const 0) {none})"),
        ),
        (
            "get_pairs_map_99",
            format!(
                "(call $proxy_get_header_map_pairs (i32.const 99) {} {})",
                o(0),
                o(4)
            ),
        ),
        (
            "set_pairs_out_of_memory",
            format!("(call $proxy_set_header_map_pairs (i32.const 0) {oob} (i32.const 64))"),
        ),
        (
            "get_map_size_map_99",
            format!("(call $proxy_get_header_map_size (i32.const 99) {})", o(0)),
        ),
        (
            "get_buffer_type_99",
            format!(
                "(call $proxy_get_buffer_bytes (i32.const 99) (i32.const 0) (i32.const 10) {} {})",
                o(0),
                o(4)
            ),
        ),
        (
            "get_buffer_plugin_config_in_stream",
            format!(
                "(call $proxy_get_buffer_bytes (i32.const 7) (i32.const 0) (i32.const 10) {} {})",
                o(0),
                o(4)
            ),
        ),
        (
            "get_buffer_call_response_in_stream",
            format!(
                "(call $proxy_get_buffer_bytes (i32.const 4) (i32.const 0) (i32.const 10) {} {})",
                o(0),
                o(4)
            ),
        ),
        (
            "get_buffer_status_type_99",
            format!(
                "(call $proxy_get_buffer_status (i32.const 99) {} {})",
                o(0),
                o(4)
            ),
        ),
        (
            "set_buffer_type_99",
            format!(
                "(call $proxy_set_buffer_bytes (i32.const 99) (i32.const 0) (i32.const 0) {hv})"
            ),
        ),
        (
            "set_buffer_plugin_config",
            format!(
                "(call $proxy_set_buffer_bytes (i32.const 7) (i32.const 0) (i32.const 0) {hv})"
            ),
        ),
        (
            "set_buffer_vm_config",
            format!(
                "(call $proxy_set_buffer_bytes (i32.const 6) (i32.const 0) (i32.const 0) {hv})"
            ),
        ),
        (
            "set_buffer_call_response_in_stream",
            format!(
                "(call $proxy_set_buffer_bytes (i32.const 4) (i32.const 0) (i32.const 0) {hv})"
            ),
        ),
        (
            "set_buffer_request_body_at_headers",
            format!(
                "(call $proxy_set_buffer_bytes (i32.const 0) (i32.const 0) (i32.const 0) {hv})"
            ),
        ),
        (
            "set_buffer_response_body_at_request",
            format!(
                "(call $proxy_set_buffer_bytes (i32.const 1) (i32.const 0) (i32.const 0) {hv})"
            ),
        ),
        (
            "get_buffer_request_body_at_headers",
            format!(
                "(call $proxy_get_buffer_bytes (i32.const 0) (i32.const 0) (i32.const 10) {} {})",
                o(0),
                o(4)
            ),
        ),
        (
            "get_buffer_vm_config_in_stream",
            format!(
                "(call $proxy_get_buffer_bytes (i32.const 6) (i32.const 0) (i32.const 10) {} {})",
                o(0),
                o(4)
            ),
        ),
        (
            "get_buffer_status_request_body_at_headers",
            format!(
                "(call $proxy_get_buffer_status (i32.const 0) {} {})",
                o(0),
                o(4)
            ),
        ),
        (
            "get_property_unknown",
            format!(
                "(call $proxy_get_property {prop_unknown} {} {})",
                o(0),
                o(4)
            ),
        ),
        (
            "get_property_path_out_of_memory",
            format!(
                "(call $proxy_get_property {oob} (i32.const 8) {} {})",
                o(0),
                o(4)
            ),
        ),
        (
            "get_property_result_out_of_memory",
            format!("(call $proxy_get_property {prop_path} {oob} {})", o(4)),
        ),
        (
            "set_property_out_of_memory",
            format!("(call $proxy_set_property {oob} (i32.const 8) {hv})"),
        ),
        (
            "get_shared_data_missing",
            format!(
                "(call $proxy_get_shared_data {missing_key} {} {} {})",
                o(0),
                o(4),
                o(8)
            ),
        ),
        (
            "set_shared_data_new_key_any_cas",
            format!("(call $proxy_set_shared_data {key} {val} (i32.const 12345))"),
        ),
        (
            "set_shared_data_wrong_cas",
            format!("(call $proxy_set_shared_data {key} {val} (i32.const 12345))"),
        ),
        (
            "set_shared_data_cas_0",
            format!("(call $proxy_set_shared_data {key} {val} (i32.const 0))"),
        ),
        (
            "resolve_queue_missing",
            format!("(call $proxy_resolve_shared_queue {vm} {noq} {})", o(0)),
        ),
        (
            "enqueue_unknown_token",
            format!("(call $proxy_enqueue_shared_queue (i32.const 999) {hv})"),
        ),
        (
            "dequeue_unknown_token",
            format!(
                "(call $proxy_dequeue_shared_queue (i32.const 999) {} {})",
                o(0),
                o(4)
            ),
        ),
        (
            "register_queue",
            format!("(call $proxy_register_shared_queue {qname} {})", o(12)),
        ),
        (
            "dequeue_empty",
            format!(
                "(call $proxy_dequeue_shared_queue (i32.load {}) {} {})",
                o(12),
                o(0),
                o(4)
            ),
        ),
        (
            "http_call_unknown_cluster",
            format!(
                "(call $proxy_http_call {unknown} {good} (i32.const 0) (i32.const 0) {empty} (i32.const 1000) {})",
                o(0)
            ),
        ),
        (
            "http_call_negative_timeout",
            format!(
                "(call $proxy_http_call {upstream} {good} (i32.const 0) (i32.const 0) {empty} (i32.const -1) {})",
                o(0)
            ),
        ),
        (
            "http_call_without_path",
            format!(
                "(call $proxy_http_call {upstream} {no_path} (i32.const 0) (i32.const 0) {empty} (i32.const 1000) {})",
                o(0)
            ),
        ),
        (
            "http_call_ok",
            format!(
                "(call $proxy_http_call {upstream} {good} (i32.const 0) (i32.const 0) {empty} (i32.const 1000) {})",
                o(16)
            ),
        ),
        ("http_call_token_1", format!("(i32.load {})", o(16))),
        (
            "http_call_ok_again",
            format!(
                "(call $proxy_http_call {upstream} {good} (i32.const 0) (i32.const 0) {empty} (i32.const 1000) {})",
                o(16)
            ),
        ),
        ("http_call_token_2", format!("(i32.load {})", o(16))),
        (
            "grpc_call_unknown_cluster",
            format!(
                "(call $proxy_grpc_call {unknown} {svc} {method} {empty} (i32.const 0) (i32.const 0) (i32.const 1000) {})",
                o(0)
            ),
        ),
        (
            "grpc_send_unknown_token",
            format!("(call $proxy_grpc_send (i32.const 999) {hv} (i32.const 0))"),
        ),
        (
            "grpc_cancel_unknown_token",
            "(call $proxy_grpc_cancel (i32.const 999))".into(),
        ),
        (
            "grpc_close_unknown_token",
            "(call $proxy_grpc_close (i32.const 999))".into(),
        ),
        (
            "define_metric_type_9",
            format!(
                "(call $proxy_define_metric (i32.const 9) {counter} {})",
                o(0)
            ),
        ),
        (
            "increment_metric_unknown",
            "(call $proxy_increment_metric (i32.const 12345) (i64.const 1))".into(),
        ),
        (
            "record_metric_unknown",
            "(call $proxy_record_metric (i32.const 12345) (i64.const 1))".into(),
        ),
        (
            "get_metric_unknown",
            format!("(call $proxy_get_metric (i32.const 12345) {})", o(0)),
        ),
        (
            "define_counter",
            format!(
                "(call $proxy_define_metric (i32.const 0) {counter} {})",
                o(20)
            ),
        ),
        (
            "increment_counter_by_minus_1",
            format!(
                "(call $proxy_increment_metric (i32.load {}) (i64.const -1))",
                o(20)
            ),
        ),
        (
            "increment_counter_by_0",
            format!(
                "(call $proxy_increment_metric (i32.load {}) (i64.const 0))",
                o(20)
            ),
        ),
        (
            "record_counter",
            format!(
                "(call $proxy_record_metric (i32.load {}) (i64.const 5))",
                o(20)
            ),
        ),
        (
            "define_histogram",
            format!(
                "(call $proxy_define_metric (i32.const 2) {histogram} {})",
                o(24)
            ),
        ),
        (
            "get_histogram",
            format!("(call $proxy_get_metric (i32.load {}) {})", o(24), o(0)),
        ),
        (
            "increment_histogram",
            format!(
                "(call $proxy_increment_metric (i32.load {}) (i64.const 1))",
                o(24)
            ),
        ),
        (
            "continue_stream_upstream",
            "(call $proxy_continue_stream (i32.const 3))".into(),
        ),
        (
            "close_stream_type_9",
            "(call $proxy_close_stream (i32.const 9))".into(),
        ),
        (
            "set_effective_context_unknown",
            "(call $proxy_set_effective_context (i32.const 9999))".into(),
        ),
        ("done_in_a_stream", "(call $proxy_done)".into()),
        (
            "call_foreign_unknown",
            format!(
                "(call $proxy_call_foreign_function {foreign} {hv} {} {})",
                o(0),
                o(4)
            ),
        ),
        (
            "time_out_of_memory",
            format!("(call $proxy_get_current_time_nanoseconds {oob})"),
        ),
        (
            "log_level_out_of_memory",
            format!("(call $proxy_get_log_level {oob})"),
        ),
    ]
}

/// The module: each case's result logged as `name=N` (N in decimal) from
/// `proxy_on_request_headers`, which then continues.
fn module_wat() -> (String, usize) {
    let mut k = Consts { bytes: Vec::new() };
    let cases = cases(&mut k);
    let mut body = String::new();
    for (name, expr) in &cases {
        let (p, l) = k.put(name.as_bytes());
        writeln!(
            body,
            "    (call $report (i32.const {p}) (i32.const {l}) {expr})"
        )
        .unwrap();
    }
    let data: String = k.bytes.iter().map(|b| format!("\\{b:02x}")).collect();
    let prelude = abi_prelude(2, 65536);
    let wat = format!(
        r#"(module
{IMPORTS}{prelude}
  (data (i32.const {DATA}) "{data}")
  (func (export "proxy_on_http_call_response") (param i32 i32 i32 i32 i32))
  ;; Log "NAME=VALUE", VALUE in decimal (signed).
  (func $report (param $name i32) (param $len i32) (param $v i32)
    (local $at i32) (local $end i32) (local $n i32) (local $digits i32)
    (memory.copy (i32.const 4096) (local.get $name) (local.get $len))
    (local.set $at (i32.add (i32.const 4096) (local.get $len)))
    (i32.store8 (local.get $at) (i32.const 61))
    (local.set $at (i32.add (local.get $at) (i32.const 1)))
    (if (i32.lt_s (local.get $v) (i32.const 0))
      (then
        (i32.store8 (local.get $at) (i32.const 45))
        (local.set $at (i32.add (local.get $at) (i32.const 1)))
        (local.set $v (i32.sub (i32.const 0) (local.get $v)))))
    ;; Count the digits, then write them from the right.
    (local.set $n (local.get $v))
    (local.set $digits (i32.const 1))
    (block $done (loop $more
      (br_if $done (i32.lt_u (local.get $n) (i32.const 10)))
      (local.set $n (i32.div_u (local.get $n) (i32.const 10)))
      (local.set $digits (i32.add (local.get $digits) (i32.const 1)))
      (br $more)))
    (local.set $end (i32.add (local.get $at) (local.get $digits)))
    (local.set $at (local.get $end))
    (loop $write
      (local.set $at (i32.sub (local.get $at) (i32.const 1)))
      (i32.store8 (local.get $at) (i32.add (i32.const 48) (i32.rem_u (local.get $v) (i32.const 10))))
      (local.set $v (i32.div_u (local.get $v) (i32.const 10)))
      (br_if $write (i32.ne (local.get $v) (i32.const 0))))
    (drop (call $proxy_log (i32.const 2) (i32.const 4096) (i32.sub (local.get $end) (i32.const 4096)))))
  (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
{body}    (i32.const 0))
)"#
    );
    (wat, cases.len())
}

fn envoy_lines(log: &str) -> Vec<String> {
    log.lines()
        .filter_map(|l| {
            l.split_once(" wasm log ")?
                .1
                .split_once(": ")
                .map(|(_, m)| m.to_string())
        })
        .filter(|m| m.contains('='))
        .collect()
}

#[test]
fn bad_arguments_get_the_same_statuses_in_envoy_and_the_harness() {
    let (wat, count) = module_wat();
    let dir = tempfile::tempdir().unwrap();
    let wasm = dir.path().join("calls.wasm");
    std::fs::write(&wasm, wat::parse_str(&wat).unwrap()).unwrap();

    let upstream = Upstream::answering(200, &[], Some("up"));
    let filter = wasm_filter("calls", "", &wasm, "");
    let envoy = Envoy::must_start(&bootstrap(upstream.addr(), vec![filter]));
    let resp = Client::connect(envoy.listener)
        .unwrap()
        .get("/", &[])
        .unwrap();
    let in_envoy = e2e::poll_until(Instant::now() + Duration::from_secs(10), || {
        let lines = envoy_lines(&envoy.log());
        (lines.len() >= count).then_some(lines)
    })
    .unwrap_or_else(|| panic!("Envoy logged fewer than {count} results:\n{}", envoy.log()));

    let host = Host::new();
    host.set_clusters(&["upstream"]);
    let module = Module::from_bytes(&Runtime::shared(), wat.as_bytes()).unwrap();
    let plugin = host
        .plugin(&module)
        .name("calls")
        .vm_id("calls")
        .start()
        .unwrap();
    let mut s = plugin.http_stream().unwrap();
    s.send_request_headers(
        &[(":method", "GET"), (":path", "/"), (":authority", "x")],
        true,
    )
    .unwrap();
    let in_harness: Vec<String> = host
        .logs()
        .into_iter()
        .filter(|l| l.level == LogLevel::Info && l.message.contains('='))
        .map(|l| l.message)
        .collect();

    assert_eq!(resp.status(), 200, "{}", envoy.log());
    let mut differ = Vec::new();
    for (e, h) in in_envoy.iter().zip(&in_harness) {
        let mark = if e == h { "  " } else { "!=" };
        println!("{mark} envoy {e:<45} harness {h}");
        if e != h {
            differ.push(format!("envoy {e}, harness {h}"));
        }
    }
    assert_eq!(in_envoy.len(), in_harness.len());
    assert!(
        differ.is_empty(),
        "{} of {count} statuses differ:\n{}",
        differ.len(),
        differ.join("\n")
    );
}
