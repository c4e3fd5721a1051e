//! Runaway modules against Envoy 1.40: one that never returns from a callback, one that grows
//! its memory until the runtime refuses. Envoy and the harness differ on purpose here (a test
//! must end; a harness has a memory budget); this test shows what each does, so the harness
//! README's account of the difference stays true.

// Helpers outside #[test] functions fail the test loudly.
#![allow(clippy::unwrap_used, clippy::panic)]

use e2e::envoy::{Envoy, bootstrap};
use e2e::fidelity::abi_prelude;
use e2e::http1::{Client, Upstream};
use proxy_wasm_harness::abi::{Action, LogLevel};
use proxy_wasm_harness::{Error, Host, Module, Runtime};
use serde_json::json;
use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::Duration;

/// The imports and the shared part of both modules.
fn head() -> String {
    format!(
        r#"(import "env" "proxy_log" (func $log (param i32 i32 i32) (result i32))){}"#,
        abi_prelude(1, 1024)
    )
}

/// Grows by 16 MiB at a time until `memory.grow` fails, then logs the size reached in MiB (five
/// digits) and continues.
fn grow_wat() -> String {
    let head = head();
    format!(
        r#"(module {head}
  (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
    (local $mib i32) (local $i i32) (local $at i32)
    (block $done (loop $more
      (br_if $done (i32.eq (memory.grow (i32.const 256)) (i32.const -1)))
      (br $more)))
    (local.set $mib (i32.div_u (memory.size) (i32.const 16)))
    (local.set $at (i32.const 104))
    (loop $digit
      (local.set $at (i32.sub (local.get $at) (i32.const 1)))
      (i32.store8 (local.get $at) (i32.add (i32.const 48) (i32.rem_u (local.get $mib) (i32.const 10))))
      (local.set $mib (i32.div_u (local.get $mib) (i32.const 10)))
      (br_if $digit (i32.gt_u (local.get $at) (i32.const 99))))
    (drop (call $log (i32.const 2) (i32.const 99) (i32.const 5)))
    (i32.const 0)))"#
    )
}

fn loop_wat() -> String {
    let head = head();
    format!(
        r#"(module {head}
  (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
    (loop $forever (br $forever))
    (i32.const 0)))"#
    )
}

fn envoy_with(wasm: &Path, upstream: &Upstream) -> Envoy {
    let filter = json!({
        "name": "envoy.filters.http.wasm",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
            "config": {
                "name": "runaway",
                "root_id": "",
                "vm_config": {
                    "vm_id": "runaway",
                    "runtime": "envoy.wasm.runtime.v8",
                    "code": {"local": {"filename": wasm.to_str().unwrap()}},
                },
            },
        },
    });
    Envoy::must_start(&bootstrap(upstream.addr(), vec![filter]))
}

/// The module's log lines in Envoy's log.
fn envoy_messages(log: &str) -> Vec<String> {
    log.lines()
        .filter_map(|l| {
            l.split_once(" wasm log ")?
                .1
                .split_once(": ")
                .map(|x| x.1.to_string())
        })
        .collect()
}

#[test]
fn memory_grows_to_one_gib_in_both() {
    let dir = tempfile::tempdir().unwrap();
    let wasm = dir.path().join("grow.wasm");
    std::fs::write(&wasm, wat::parse_str(grow_wat()).unwrap()).unwrap();
    let upstream = Upstream::answering(200, &[], Some("up"));
    let envoy = envoy_with(&wasm, &upstream);
    let resp = Client::connect(envoy.listener)
        .unwrap()
        .get("/", &[])
        .unwrap();
    // 1 page plus 63 steps of 16 MiB: the 64th step would pass 1 GiB.
    assert_eq!(envoy_messages(&envoy.log()), ["01008"]);
    assert_eq!((resp.status(), resp.text().as_str()), (200, "up"));

    let host = Host::new();
    let module = Module::from_bytes(&Runtime::shared(), grow_wat().as_bytes()).unwrap();
    let plugin = host.plugin(&module).start().unwrap();
    let mut s = plugin.http_stream().unwrap();
    let action = s
        .send_request_headers(&[(":method", "GET"), (":path", "/")], true)
        .unwrap();
    assert_eq!(action, Action::Continue);
    assert_eq!(host.logs_at(LogLevel::Info), ["01008"]);
    assert!(plugin.failure().is_none());
}

#[test]
fn a_callback_that_never_returns_holds_envoy_and_is_stopped_by_the_harness() {
    let dir = tempfile::tempdir().unwrap();
    let wasm = dir.path().join("loop.wasm");
    std::fs::write(&wasm, wat::parse_str(loop_wat()).unwrap()).unwrap();
    let upstream = Upstream::answering(200, &[], Some("up"));
    let envoy = envoy_with(&wasm, &upstream);
    // Envoy: no deadline. The request gets no answer at all (3 s here; it would wait for good),
    // while the main thread still serves the admin interface.
    let mut conn = TcpStream::connect(envoy.listener).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    conn.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
        .unwrap();
    let mut buf = [0u8; 64];
    let read = conn.read(&mut buf);
    assert!(
        matches!(&read, Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut)),
        "Envoy answered a request whose filter never returns: {read:?}"
    );
    assert_eq!(
        e2e::http1::get(envoy.admin, "/ready", &[])
            .unwrap()
            .status(),
        200
    );
    assert!(upstream.received().is_empty());

    // The harness: interrupted at the deadline, a typed error, Envoy's failure reply.
    let host = Host::new();
    let module = Module::from_bytes(&Runtime::shared(), loop_wat().as_bytes()).unwrap();
    let plugin = host.plugin(&module).start().unwrap();
    let mut s = plugin.http_stream().unwrap();
    let err = s
        .send_request_headers(&[(":method", "GET"), (":path", "/")], true)
        .unwrap_err();
    assert!(matches!(err, Error::Timeout { .. }), "{err:?}");
    assert_eq!(s.local_response().map(|l| l.status), Some(503));
}
