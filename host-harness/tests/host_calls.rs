//! Host-call groups the SDK examples do not reach, through a WAT module that asserts each status
//! itself (a wrong status traps, which fails the test): buffers, metrics rules, foreign
//! functions, properties, gRPC calls and status, continue on an upstream, network data.

// Test helpers outside #[test] functions fail loudly too.
#![allow(clippy::unwrap_used)]

use proxy_wasm_harness::abi::{Action, LogLevel};
use proxy_wasm_harness::{GrpcStreamEvent, Host, Module, Runtime};

const WAT: &str = r#"(module
  (import "env" "proxy_log" (func $log (param i32 i32 i32) (result i32)))
  (import "env" "proxy_get_buffer_bytes" (func $get_buf (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_set_buffer_bytes" (func $set_buf (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_define_metric" (func $define (param i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_increment_metric" (func $inc (param i32 i64) (result i32)))
  (import "env" "proxy_record_metric" (func $record (param i32 i64) (result i32)))
  (import "env" "proxy_get_metric" (func $get_metric (param i32 i32) (result i32)))
  (import "env" "proxy_call_foreign_function" (func $foreign (param i32 i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_set_property" (func $set_prop (param i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_get_property" (func $get_prop (param i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_grpc_call" (func $grpc (param i32 i32 i32 i32 i32 i32 i32 i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_get_status" (func $status (param i32 i32 i32) (result i32)))
  (import "env" "proxy_continue_stream" (func $continue (param i32) (result i32)))
  (import "env" "proxy_grpc_stream" (func $grpc_stream (param i32 i32 i32 i32 i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_grpc_send" (func $grpc_send (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 16) "c")
  (data (i32.const 20) "h")
  (data (i32.const 32) "echo")
  (data (i32.const 40) "hi")
  (data (i32.const 44) "nope")
  (data (i32.const 48) "k")
  (data (i32.const 52) "v1")
  (data (i32.const 64) "upstream")
  (data (i32.const 80) "svc.S")
  (data (i32.const 88) "M")
  (data (i32.const 96) "req")
  (data (i32.const 104) "patched")
  (data (i32.const 112) "!")
  (global $next (mut i32) (i32.const 4096))
  (func (export "malloc") (param $n i32) (result i32)
    (local $p i32)
    (local.set $p (global.get $next))
    (global.set $next (i32.add (global.get $next) (local.get $n)))
    (local.get $p))
  (func $check (param $want i32) (param $got i32)
    (if (i32.ne (local.get $want) (local.get $got)) (then unreachable)))
  (func $log_out (param $pp i32) (param $sp i32)
    (call $check (i32.const 0) (call $log (i32.const 2) (i32.load (local.get $pp)) (i32.load (local.get $sp)))))
  (func (export "proxy_abi_version_0_2_1"))
  (func (export "proxy_on_context_create") (param i32 i32))
  (func (export "proxy_on_configure") (param $root i32) (param $size i32) (result i32)
    ;; the plugin configuration is readable while configuring
    (call $check (i32.const 0) (call $get_buf (i32.const 7) (i32.const 0) (local.get $size) (i32.const 200) (i32.const 204)))
    (call $log_out (i32.const 200) (i32.const 204))
    ;; counters: positive increments only
    (call $check (i32.const 0) (call $define (i32.const 0) (i32.const 16) (i32.const 1) (i32.const 208)))
    (call $check (i32.const 2) (call $inc (i32.load (i32.const 208)) (i64.const -1)))
    (call $check (i32.const 2) (call $inc (i32.load (i32.const 208)) (i64.const 0)))
    (call $check (i32.const 0) (call $inc (i32.load (i32.const 208)) (i64.const 5)))
    ;; histograms: record only
    (call $check (i32.const 0) (call $define (i32.const 2) (i32.const 20) (i32.const 1) (i32.const 212)))
    (call $check (i32.const 2) (call $inc (i32.load (i32.const 212)) (i64.const 1)))
    (call $check (i32.const 0) (call $record (i32.load (i32.const 212)) (i64.const 7)))
    (call $check (i32.const 2) (call $get_metric (i32.load (i32.const 212)) (i32.const 248)))
    (call $check (i32.const 1) (call $get_metric (i32.const 4000) (i32.const 248)))
    (call $check (i32.const 2) (call $define (i32.const 3) (i32.const 16) (i32.const 1) (i32.const 208)))
    ;; a gRPC stream from the root: open it, send one message and half-close
    (call $check (i32.const 0) (call $grpc_stream (i32.const 64) (i32.const 8) (i32.const 80) (i32.const 5) (i32.const 88) (i32.const 1)
                                                   (i32.const 0) (i32.const 0) (i32.const 252)))
    (call $check (i32.const 0) (call $grpc_send (i32.load (i32.const 252)) (i32.const 96) (i32.const 3) (i32.const 1)))
    i32.const 1)
  (func (export "proxy_on_request_headers") (param $ctx i32) (param $n i32) (param $eos i32) (result i32)
    ;; foreign function registered by the test, and one that is not
    (call $check (i32.const 0) (call $foreign (i32.const 32) (i32.const 4) (i32.const 40) (i32.const 2) (i32.const 216) (i32.const 220)))
    (call $log_out (i32.const 216) (i32.const 220))
    (call $check (i32.const 1) (call $foreign (i32.const 44) (i32.const 4) (i32.const 40) (i32.const 2) (i32.const 216) (i32.const 220)))
    ;; a property set on the stream reads back
    (call $check (i32.const 0) (call $set_prop (i32.const 48) (i32.const 1) (i32.const 52) (i32.const 2)))
    (call $check (i32.const 0) (call $get_prop (i32.const 48) (i32.const 1) (i32.const 216) (i32.const 220)))
    (call $log_out (i32.const 216) (i32.const 220))
    ;; the plugin configuration is gone outside configure
    (call $check (i32.const 1) (call $get_buf (i32.const 7) (i32.const 0) (i32.const 10) (i32.const 216) (i32.const 220)))
    ;; a unary gRPC call to the upstream cluster
    (call $check (i32.const 0) (call $grpc (i32.const 64) (i32.const 8) (i32.const 80) (i32.const 5) (i32.const 88) (i32.const 1)
                                            (i32.const 0) (i32.const 0) (i32.const 96) (i32.const 3) (i32.const 1000) (i32.const 224)))
    ;; Envoy cannot continue an upstream connection
    (call $check (i32.const 12) (call $continue (i32.const 3)))
    i32.const 0)
  (func (export "proxy_on_request_body") (param $ctx i32) (param $size i32) (param $eos i32) (result i32)
    ;; replace the whole buffered body
    (call $check (i32.const 0) (call $set_buf (i32.const 0) (i32.const 0) (local.get $size) (i32.const 104) (i32.const 7)))
    ;; a splice in the middle is refused
    (call $check (i32.const 2) (call $set_buf (i32.const 0) (i32.const 1) (i32.const 1) (i32.const 112) (i32.const 1)))
    i32.const 0)
  (func (export "proxy_on_grpc_receive") (param $ctx i32) (param $token i32) (param $size i32)
    (call $check (i32.const 0) (call $get_buf (i32.const 5) (i32.const 0) (local.get $size) (i32.const 228) (i32.const 232)))
    (call $log_out (i32.const 228) (i32.const 232)))
  (func (export "proxy_on_grpc_receive_initial_metadata") (param $ctx i32) (param $token i32) (param $n i32)
    (call $check (i32.const 1) (local.get $n)))
  (func (export "proxy_on_grpc_close") (param $ctx i32) (param $token i32) (param $code i32)
    (call $check (i32.const 0) (call $status (i32.const 236) (i32.const 240) (i32.const 244)))
    (call $check (local.get $code) (i32.load (i32.const 236)))
    (call $log_out (i32.const 240) (i32.const 244)))
  (func (export "proxy_on_new_connection") (param i32) (result i32) i32.const 0)
  (func (export "proxy_on_downstream_data") (param $ctx i32) (param $size i32) (param $eos i32) (result i32)
    ;; append at the end of the chunk
    (call $check (i32.const 0) (call $set_buf (i32.const 2) (local.get $size) (i32.const 0) (i32.const 112) (i32.const 1)))
    i32.const 0)
)"#;

fn start(host: &Host) -> proxy_wasm_harness::Plugin {
    host.register_foreign_function("echo", |args| Ok(args.to_ascii_uppercase()));
    let m = Module::from_bytes(&Runtime::shared(), WAT.as_bytes()).unwrap();
    host.start_plugin(&m, "r", "the-config").unwrap()
}

fn info(host: &Host) -> Vec<String> {
    host.logs_at(LogLevel::Info)
}

#[test]
fn configuration_buffer_and_metric_rules_hold_while_configuring() {
    let host = Host::new();
    start(&host);
    assert_eq!(info(&host), ["the-config"]);
    assert_eq!(host.metric("c").unwrap().value, 5);
    assert_eq!(host.metric("h").unwrap().recorded, [7]);
}

#[test]
fn grpc_stream_events_reach_the_root() {
    let host = Host::new();
    let _plugin = start(&host); // the VM lives as long as its plugin

    let calls = host.pending_grpc_calls();
    let st = calls.iter().find(|c| c.stream).unwrap();
    assert_eq!(
        st.token % 4,
        2,
        "gRPC stream tokens are 6, 10, ... as in Envoy"
    );
    assert_eq!(st.sent, [b"req".to_vec()]);
    assert!(st.local_closed, "sent with end of stream");
    let t = st.token;
    host.grpc_stream_event(t, GrpcStreamEvent::InitialMetadata(&[("x-md", "1")]))
        .unwrap();
    host.grpc_stream_event(t, GrpcStreamEvent::Message(b"update"))
        .unwrap();
    assert_eq!(info(&host).last().unwrap(), "update");
    host.grpc_stream_event(t, GrpcStreamEvent::Close(0, "done"))
        .unwrap();
    assert_eq!(info(&host).last().unwrap(), "done");
    assert!(
        host.pending_grpc_calls().is_empty(),
        "a closed stream is forgotten"
    );
}

#[test]
fn foreign_functions_properties_and_grpc_calls() {
    let host = Host::new();
    let p = start(&host);
    let mut s = p.http_stream().unwrap();
    let a = s.send_request_headers(&[(":path", "/")], false).unwrap();
    assert_eq!(a, Action::Continue);
    assert_eq!(info(&host)[1..], ["HI", "v1"]);
    let calls: Vec<_> = host
        .pending_grpc_calls()
        .into_iter()
        .filter(|c| !c.stream)
        .collect();
    assert_eq!(calls.len(), 1);
    let c = &calls[0];
    assert_eq!(
        (
            c.service.as_str(),
            c.service_name.as_str(),
            c.method.as_str()
        ),
        ("upstream", "svc.S", "M")
    );
    assert_eq!(c.sent, [b"req".to_vec()]);
    assert_eq!(c.token % 4, 1, "gRPC call tokens are 5, 9, ... as in Envoy");
    host.respond_grpc_call(c.token, Ok(b"resp")).unwrap();
    assert_eq!(info(&host).last().unwrap(), "resp");

    // A second call fails: on_grpc_close with the status, readable through proxy_get_status.
    let mut s2 = p.http_stream().unwrap();
    s2.send_request_headers(&[(":path", "/")], true).unwrap();
    let t = host
        .pending_grpc_calls()
        .iter()
        .find(|c| !c.stream)
        .unwrap()
        .token;
    host.respond_grpc_call(t, Err((14, "backend down")))
        .unwrap();
    assert_eq!(info(&host).last().unwrap(), "backend down");
}

#[test]
fn a_body_callback_replaces_the_buffered_body() {
    let host = Host::new();
    let p = start(&host);
    let mut s = p.http_stream().unwrap();
    s.send_request_headers(&[(":path", "/")], false).unwrap();
    assert_eq!(
        s.send_request_body(b"original", true).unwrap(),
        Action::Continue
    );
    assert_eq!(s.request_body(), b"patched");
}

#[test]
fn network_data_passes_through_the_filter() {
    let host = Host::new();
    let p = start(&host);
    let (mut n, a) = p.network_stream().unwrap();
    assert_eq!(a, Action::Continue);
    assert_eq!(
        n.send_downstream_data(b"data", false).unwrap(),
        Action::Continue
    );
    assert_eq!(n.downstream_forwarded(), b"data!");
    n.close(proxy_wasm_harness::abi::PeerType::Remote).unwrap();
}

/// WASI's monotonic clock reads as Envoy's steady clock does: never zero (Go's runtime refuses to
/// start on one that reads zero, "nanotime returning zero"), also while the VM starts, and moving
/// with the host clock.
const CLOCKS: &str = r#"(module
  (import "wasi_snapshot_preview1" "clock_time_get" (func $clock (param i32 i64 i32) (result i32)))
  (import "env" "proxy_set_tick_period_milliseconds" (func $tick (param i32) (result i32)))
  (import "env" "proxy_log" (func $log (param i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 16) "tick")
  (global $t0 (mut i64) (i64.const 0))
  (func $check (param $ok i32) (if (i32.eqz (local.get $ok)) (then unreachable)))
  (func $monotonic (result i64)
    (call $check (i32.eqz (call $clock (i32.const 1) (i64.const 1) (i32.const 0))))
    (i64.load (i32.const 0)))
  (func (export "malloc") (param i32) (result i32) i32.const 1024)
  (func (export "_initialize")
    (global.set $t0 (call $monotonic))
    (call $check (i64.ne (global.get $t0) (i64.const 0))))
  (func (export "proxy_abi_version_0_2_1"))
  (func (export "proxy_on_context_create") (param i32 i32))
  (func (export "proxy_on_configure") (param i32 i32) (result i32)
    (call $check (i32.eqz (call $tick (i32.const 1000))))
    i32.const 1)
  (func (export "proxy_on_tick") (param i32)
    (call $check (i64.eq (i64.sub (call $monotonic) (global.get $t0)) (i64.const 1000000000)))
    (drop (call $log (i32.const 2) (i32.const 16) (i32.const 4))))
)"#;

#[test]
fn the_monotonic_clock_never_reads_zero_and_follows_the_host_clock() {
    let host = Host::new();
    let m = Module::from_bytes(&Runtime::shared(), CLOCKS.as_bytes()).unwrap();
    let _plugin = host.start_plugin(&m, "r", "").unwrap();
    host.advance(std::time::Duration::from_secs(1)).unwrap();
    assert_eq!(info(&host), ["tick"]);
}

/// `fd_write` to stderr: a line, a lone newline, no bytes, a piece without a newline.
const STDERR: &str = r#"(module
  (import "wasi_snapshot_preview1" "fd_write" (func $write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 100) "first\n")
  (data (i32.const 110) "\n")
  (data (i32.const 120) "last")
  (func $stderr (param $p i32) (param $n i32)
    (i32.store (i32.const 0) (local.get $p))
    (i32.store (i32.const 4) (local.get $n))
    (drop (call $write (i32.const 2) (i32.const 0) (i32.const 1) (i32.const 8))))
  (func (export "malloc") (param i32) (result i32) i32.const 1024)
  (func (export "proxy_abi_version_0_2_1"))
  (func (export "proxy_on_context_create") (param i32 i32))
  (func (export "proxy_on_configure") (param i32 i32) (result i32)
    (call $stderr (i32.const 100) (i32.const 6))
    (call $stderr (i32.const 110) (i32.const 1))
    (call $stderr (i32.const 110) (i32.const 0))
    (call $stderr (i32.const 120) (i32.const 4))
    i32.const 1)
)"#;

#[test]
fn a_lone_newline_on_stderr_logs_an_empty_line_and_no_bytes_log_nothing() {
    let host = Host::new();
    let m = Module::from_bytes(&Runtime::shared(), STDERR.as_bytes()).unwrap();
    let _plugin = host.start_plugin(&m, "r", "").unwrap();
    assert_eq!(host.logs_at(LogLevel::Error), ["first", "", "last"]);
}
