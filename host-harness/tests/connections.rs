//! Connection scenarios (`connection:`) through a WAT network filter that logs every callback it
//! gets (and appends `!` to each chunk the client sends): the order of the callbacks, their end
//! of stream flags and peer types, what each end received and the order of the closes, as
//! Envoy 1.40 delivers them (the same sequence is compared against Envoy with the Rust example in
//! `tests/tests/scenarios.rs`).

// Test helpers outside #[test] functions fail loudly too.
#![allow(clippy::unwrap_used)]

use proxy_wasm_harness::scenario::{ConnectionOutcome, End, Scenario};
use proxy_wasm_harness::{Host, Module, Runtime};

const WAT: &str = r#"(module
  (import "env" "proxy_log" (func $log (param i32 i32 i32) (result i32)))
  (import "env" "proxy_set_buffer_bytes" (func $set_buf (param i32 i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 16) "new")
  (data (i32.const 24) "down")
  (data (i32.const 32) "down-end")
  (data (i32.const 48) "up")
  (data (i32.const 56) "up-end")
  (data (i32.const 64) "upstream-close")
  (data (i32.const 80) "downstream-close-local")
  (data (i32.const 112) "downstream-close-remote")
  (data (i32.const 144) "done")
  (data (i32.const 152) "log")
  (data (i32.const 160) "delete")
  (data (i32.const 168) "!")
  (global $next (mut i32) (i32.const 4096))
  (func (export "malloc") (param $n i32) (result i32)
    (local $p i32)
    (local.set $p (global.get $next))
    (global.set $next (i32.add (global.get $next) (local.get $n)))
    (local.get $p))
  (func $say (param $p i32) (param $n i32)
    (drop (call $log (i32.const 2) (local.get $p) (local.get $n))))
  (func (export "proxy_abi_version_0_2_1"))
  (func (export "proxy_on_context_create") (param i32 i32))
  (func (export "proxy_on_configure") (param i32 i32) (result i32) (i32.const 1))
  (func (export "proxy_on_new_connection") (param i32) (result i32)
    (call $say (i32.const 16) (i32.const 3))
    (i32.const 0))
  (func (export "proxy_on_downstream_data") (param $c i32) (param $size i32) (param $end i32) (result i32)
    (if (local.get $end)
      (then (call $say (i32.const 32) (i32.const 8)))
      (else (call $say (i32.const 24) (i32.const 4))))
    (if (local.get $size)
      (then (drop (call $set_buf (i32.const 2) (local.get $size) (i32.const 0) (i32.const 168) (i32.const 1)))))
    (i32.const 0))
  (func (export "proxy_on_upstream_data") (param $c i32) (param $size i32) (param $end i32) (result i32)
    (if (local.get $end)
      (then (call $say (i32.const 56) (i32.const 6)))
      (else (call $say (i32.const 48) (i32.const 2))))
    (i32.const 0))
  (func (export "proxy_on_upstream_connection_close") (param i32 i32)
    (call $say (i32.const 64) (i32.const 14)))
  (func (export "proxy_on_downstream_connection_close") (param $c i32) (param $peer i32)
    (if (i32.eq (local.get $peer) (i32.const 1))
      (then (call $say (i32.const 80) (i32.const 22)))
      (else (call $say (i32.const 112) (i32.const 23)))))
  (func (export "proxy_on_done") (param i32) (result i32)
    (call $say (i32.const 144) (i32.const 4))
    (i32.const 1))
  (func (export "proxy_on_log") (param i32)
    (call $say (i32.const 152) (i32.const 3)))
  (func (export "proxy_on_delete") (param i32)
    (call $say (i32.const 160) (i32.const 6)))
)"#;

/// Run `yaml` (a connection scenario) through the WAT filter: its outcome and log lines.
fn run(yaml: &str) -> (ConnectionOutcome, Vec<String>, Scenario) {
    let module = Module::from_bytes(&Runtime::shared(), WAT.as_bytes()).unwrap();
    let host = Host::new();
    let plugin = host.plugin(&module).start().unwrap();
    let s = Scenario::from_yaml(yaml).unwrap();
    let o = s.run_connection(&plugin).unwrap();
    let logs = host.logs().into_iter().map(|l| l.message).collect();
    (o, logs, s)
}

#[test]
fn the_client_closing_first_ends_with_a_local_close() {
    let (o, logs, s) = run(r#"
name: client first
connection:
  - downstream: "hello "
  - upstream: "HI"
  - downstream: "world"
  - close: downstream
  - close: upstream
expect:
  upstream_received: "hello !world!"
  downstream_received: "HI"
  closed: [upstream, downstream]
"#);
    assert_eq!(s.check_connection(&o), Ok(()));
    assert_eq!(
        logs,
        [
            "new",
            "down",
            "up",
            "down",
            "down-end",
            "up-end",
            "upstream-close",
            "downstream-close-local",
            "done",
            "log",
            "delete"
        ]
    );
}

#[test]
fn the_upstream_closing_first_ends_with_a_remote_close() {
    let (o, logs, _) = run(r#"
name: upstream first
connection:
  - downstream: "a"
  - close: upstream
  - downstream: "b"
  - close: downstream
"#);
    assert_eq!(o.upstream_received, "a!b!");
    assert_eq!(o.downstream_received, "");
    assert_eq!(o.closed, [End::Downstream, End::Upstream]);
    assert_eq!(
        logs,
        [
            "new",
            "down",
            "up-end",
            "upstream-close",
            "down",
            "down-end",
            "downstream-close-remote",
            "done",
            "log",
            "delete"
        ]
    );
}

#[test]
fn ends_left_open_close_at_the_end_the_client_first() {
    let module = Module::from_bytes(&Runtime::shared(), WAT.as_bytes()).unwrap();
    let host = Host::new();
    let plugin = host.plugin(&module).start().unwrap();
    let s = Scenario::from_yaml("name: open\nconnection:\n  - upstream: x\n").unwrap();
    let (o, trace) = s.run_connection_traced(&plugin).unwrap();
    assert_eq!(o.downstream_received, "x");
    assert_eq!(o.closed, [End::Upstream, End::Downstream]);
    assert_eq!(trace.new_connection, "continue");
    let shown: Vec<(String, bool, Option<String>)> = trace
        .steps
        .iter()
        .map(|r| (r.step.to_string(), r.implicit, r.connection_closed.clone()))
        .collect();
    assert_eq!(
        shown,
        [
            ("the upstream sends \"x\"".to_string(), false, None),
            ("the client closes".to_string(), true, None),
            (
                "the upstream closes".to_string(),
                true,
                Some("local".to_string())
            ),
        ]
    );
    assert_eq!(trace.steps[0].passed, "x");
    // No connection at all: it opens, both ends close.
    let s = Scenario::from_yaml("name: empty\nconnection: []\n").unwrap();
    let o = s.run_connection(&plugin).unwrap();
    assert_eq!(
        o,
        ConnectionOutcome {
            upstream_cluster: "upstream".into(),
            closed: vec![End::Upstream, End::Downstream],
            ..ConnectionOutcome::default()
        }
    );
}

#[test]
fn a_connection_scenario_is_not_run_as_http() {
    let module = Module::from_bytes(&Runtime::shared(), WAT.as_bytes()).unwrap();
    let host = Host::new();
    let plugin = host.plugin(&module).start().unwrap();
    let s = Scenario::from_yaml("name: c\nconnection: []\n").unwrap();
    let e = s.run(&plugin).unwrap_err().to_string();
    assert!(e.contains("describes a TCP connection"), "{e}");
}
