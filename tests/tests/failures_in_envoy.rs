//! Failure behaviour against Envoy 1.40: a module that traps in each HTTP callback, under each
//! failure policy Envoy offers (`FAIL_CLOSED`, `FAIL_OPEN`, `FAIL_RELOAD`), runs in a real Envoy
//! and in the harness. The request that hits the trap, the next one, and one after the reload
//! backoff must get the same answers in both.

// Helpers outside #[test] functions fail the test loudly.
#![allow(clippy::unwrap_used, clippy::panic)]

use e2e::envoy::{Envoy, bootstrap, wasm_filter};
use e2e::fidelity::abi_prelude;
use e2e::http1::{Client, Upstream};
use proxy_wasm_harness::{FailurePolicy, Host, Module, RELOAD_BACKOFF, Runtime};
use serde_json::json;
use std::path::Path;
use std::time::Duration;

/// The callbacks a stream goes through, each of which may be made to trap.
const CALLBACKS: &[&str] = &[
    "proxy_on_request_headers",
    "proxy_on_request_body",
    "proxy_on_response_headers",
    "proxy_on_response_body",
    "proxy_on_log",
];

/// A module that traps in `trapping` when the request carries `x-trap` (read at request headers:
/// later callbacks cannot read the request headers in Envoy), and otherwise adds
/// `x-filter: on` to every response (so a client sees whether the filter ran).
fn wat(trapping: &str) -> String {
    let trap = |cb: &str| {
        if cb == trapping {
            "(if (global.get $armed) (then unreachable))"
        } else {
            ""
        }
    };
    format!(
        r#"(module
  (import "env" "proxy_get_header_map_value" (func $get (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_add_header_map_value" (func $add (param i32 i32 i32 i32 i32) (result i32)))
{prelude}
  (data (i32.const 16) "x-trap")
  (data (i32.const 32) "x-filter")
  (data (i32.const 48) "on")
  (global $armed (mut i32) (i32.const 0))
  (func $trap_asked (result i32)
    (i32.eqz (call $get (i32.const 0) (i32.const 16) (i32.const 6) (i32.const 64) (i32.const 68))))
  (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
    (global.set $armed (call $trap_asked))
    {rqh} (i32.const 0))
  (func (export "proxy_on_request_body") (param i32 i32 i32) (result i32)
    {rqb} (i32.const 0))
  (func (export "proxy_on_response_headers") (param i32 i32 i32) (result i32)
    {rsh}
    (drop (call $add (i32.const 2) (i32.const 32) (i32.const 8) (i32.const 48) (i32.const 2)))
    (i32.const 0))
  (func (export "proxy_on_response_body") (param i32 i32 i32) (result i32)
    {rsb} (i32.const 0))
  (func (export "proxy_on_log") (param i32)
    {log})
)"#,
        prelude = abi_prelude(2, 1024),
        rqh = trap("proxy_on_request_headers"),
        rqb = trap("proxy_on_request_body"),
        rsh = trap("proxy_on_response_headers"),
        rsb = trap("proxy_on_response_body"),
        log = trap("proxy_on_log"),
    )
}

/// What a client saw of one request.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Seen {
    /// A response: status, whether `x-filter: on` was on it, the body.
    Response(u16, bool, String),
    /// The stream was reset: no complete response.
    Reset,
}

const POLICIES: &[(&str, FailurePolicy)] = &[
    ("FAIL_CLOSED", FailurePolicy::FailClosed),
    ("FAIL_OPEN", FailurePolicy::FailOpen),
    ("FAIL_RELOAD", FailurePolicy::Reload),
];

/// The three requests, through Envoy: one with `x-trap`, one right after, one after the reload
/// backoff. Each on its own connection (a reset one is not reused).
fn in_envoy(wasm: &Path, policy: &str) -> (Vec<Seen>, Duration) {
    let upstream = Upstream::answering(200, &[], Some("pong"));
    let mut filter = wasm_filter("failing", "", wasm, "");
    filter["typed_config"]["config"]["failure_policy"] = json!(policy);
    let mut config = bootstrap(upstream.addr(), vec![filter]);
    // A reset stream's connection closes at once, not after Envoy's default 1 s delayed close,
    // so the next request comes right after the failure, as in the harness.
    config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
        ["delayed_close_timeout"] = json!("0s");
    let envoy = Envoy::must_start(&config);
    let send = |trap: bool| {
        let mut c = Client::connect(envoy.listener).unwrap();
        let headers: &[(&str, &str)] = if trap { &[("x-trap", "1")] } else { &[] };
        match c.send("POST", "/", headers, b"ping") {
            Ok(m) => Seen::Response(m.status(), m.header("x-filter") == Some("on"), m.text()),
            Err(_) => Seen::Reset,
        }
    };
    let started = std::time::Instant::now();
    let first = send(true);
    // A reset can take Envoy a while on a busy machine: the harness lets the same time pass
    // before its second request, so both judge the reload backoff alike.
    let before_second = started.elapsed();
    let second = send(false);
    std::thread::sleep(RELOAD_BACKOFF + Duration::from_millis(500));
    let third = send(false);
    (vec![first, second, third], before_second)
}

/// One request through the harness's plugin, as Envoy would run it; what the client sees.
fn harness_request(plugin: &proxy_wasm_harness::Plugin, trap: bool) -> Seen {
    let mut s = plugin.http_stream().unwrap();
    let mut headers = vec![(":method", "POST"), (":path", "/"), (":authority", "x")];
    if trap {
        headers.push(("x-trap", "1"));
    }
    let sent_headers = |s: &proxy_wasm_harness::HttpStream| {
        s.local_response().map(|l| {
            let body = String::from_utf8_lossy(&s.response_body()).into_owned();
            Seen::Response(l.status as u16, false, body)
        })
    };
    if s.send_request_headers(&headers, false).is_err() || s.local_response().is_some() {
        return sent_headers(&s).unwrap_or(Seen::Reset);
    }
    if s.send_request_body(b"ping", true).is_err() || s.local_response().is_some() {
        return sent_headers(&s).unwrap_or(Seen::Reset);
    }
    let up = [(":status", "200"), ("content-length", "4")];
    if s.send_response_headers(&up, false).is_err() || s.local_response().is_some() {
        return sent_headers(&s).unwrap_or(Seen::Reset);
    }
    let filter_on = s.response_headers().get("x-filter").as_deref() == Some("on");
    if s.send_response_body(b"pong", true).is_err() {
        return match sent_headers(&s) {
            Some(reply) => reply,
            None if s.was_reset() => Seen::Reset,
            None => panic!("the stream failed with neither a reply nor a reset"),
        };
    }
    let body = String::from_utf8_lossy(&s.response_body()).into_owned();
    let _ = s.complete();
    Seen::Response(200, filter_on, body)
}

fn in_harness(wasm: &Path, policy: FailurePolicy, before_second: Duration) -> Vec<Seen> {
    let module = Module::from_file(&Runtime::shared(), wasm).unwrap();
    let host = Host::new();
    let plugin = host
        .plugin(&module)
        .name("failing")
        .vm_id("failing")
        .failure_policy(policy)
        .start()
        .unwrap();
    let first = harness_request(&plugin, true);
    host.advance(before_second).unwrap();
    let second = harness_request(&plugin, false);
    host.advance(RELOAD_BACKOFF + Duration::from_millis(500))
        .unwrap();
    let third = harness_request(&plugin, false);
    vec![first, second, third]
}

#[test]
fn a_trap_in_each_callback_under_each_failure_policy_agrees_with_envoy() {
    let dir = tempfile::tempdir().unwrap();
    let mut failures = Vec::new();
    let mut compared = 0;
    for cb in CALLBACKS {
        let wasm = dir.path().join(format!("{cb}.wasm"));
        std::fs::write(&wasm, wat::parse_str(wat(cb)).unwrap()).unwrap();
        for (name, policy) in POLICIES {
            let (envoy, before_second) = in_envoy(&wasm, name);
            let harness = in_harness(&wasm, *policy, before_second);
            compared += 1;
            if envoy == harness {
                println!("ok   {cb} {name}: {envoy:?}");
            } else {
                println!("FAIL {cb} {name}:\n  envoy   {envoy:?}\n  harness {harness:?}");
                failures.push(format!("{cb} {name}"));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {compared} cases differ: {failures:?}",
        failures.len()
    );
}
