//! Bootstrap services (Envoy's `envoy.bootstrap.wasm` `WasmService`, `singleton: true`): a
//! module with a root context and no stream, run by `wasmctl run --service --advance` and by a
//! real Envoy 1.40. Both must log the same lines in the same order (the configuration canary's
//! start-up lines included), tick as often, report the same metrics and send the same calls.

// Helpers outside #[test] functions fail the test loudly.
#![allow(clippy::unwrap_used, clippy::panic)]

use e2e::envoy::{Envoy, bootstrap_with_clusters};
use e2e::fidelity::envoy_wasm_logs;
use e2e::http1::Upstream;
use serde_json::{Value, json};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

/// The WasmService bootstrap extension running `wasm`.
fn wasm_service(wasm: &Path, root_id: &str, configuration: &str, vm_configuration: &str) -> Value {
    json!({
        "name": "envoy.bootstrap.wasm",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.wasm.v3.WasmService",
            "singleton": true,
            "config": {
                "name": "svc",
                "root_id": root_id,
                "configuration": {"@type": "type.googleapis.com/google.protobuf.StringValue", "value": configuration},
                "vm_config": {
                    "vm_id": "svc",
                    "runtime": "envoy.wasm.runtime.v8",
                    "configuration": {"@type": "type.googleapis.com/google.protobuf.StringValue", "value": vm_configuration},
                    "code": {"local": {"filename": wasm.to_str().unwrap()}},
                },
            },
        },
    })
}

/// `wasmctl run --service` with these arguments, its JSON report.
fn harness_service(args: &[&str]) -> Value {
    let out = Command::new(e2e::wasmctl_bin())
        .args(["run", "--service", "--json"])
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "wasmctl run --service {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn pairs(v: &Value) -> Vec<(String, String)> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p[0].as_str().unwrap().to_string(),
                p[1].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// Start Envoy with `service` (and a `collector` cluster) and wait until its log holds
/// `last` `count` times; its module log lines then.
fn envoy_until(
    service: Value,
    collector: &Upstream,
    last: &str,
    count: usize,
) -> (Envoy, Vec<(String, String)>) {
    // Envoy needs a listener to report ready; it carries no traffic here.
    let unused = Upstream::answering(200, &[], None);
    let mut config =
        bootstrap_with_clusters(unused.addr(), vec![], &[("collector", collector.addr())]);
    config["bootstrap_extensions"] = json!([service]);
    let envoy = Envoy::must_start(&config);
    let logs = e2e::poll_until(Instant::now() + Duration::from_secs(20), || {
        let logs = envoy_wasm_logs(&envoy.log());
        (logs.iter().filter(|(_, m)| m == last).count() >= count).then_some(logs)
    })
    .unwrap_or_else(|| {
        panic!(
            "Envoy never logged {last:?} {count} times:\n{}",
            envoy.log()
        )
    });
    (envoy, logs)
}

#[test]
fn the_ticker_service_agrees_with_envoy() {
    let wasm = e2e::ticker_wasm();
    let config = "period=100 ticks=4 cluster=collector";
    let collector = Upstream::answering(200, &[], Some("ok"));
    let (envoy, envoy_logs) = envoy_until(
        wasm_service(&wasm, "ticker", config, "vm-config-text"),
        &collector,
        "report answered: 200 ok",
        2,
    );
    let ours = harness_service(&[
        wasm.to_str().unwrap(),
        "--root-id",
        "ticker",
        "--config",
        config,
        "--vm-config",
        "vm-config-text",
        "--scenario",
        e2e::workspace_root()
            .join("tests/scenarios/services/ticker.yaml")
            .to_str()
            .unwrap(),
        "--advance",
        "10s",
    ]);
    // Every line, in order: the canary's vm start and configure, then the service's, then each
    // tick with its queued work and the calls' answers.
    assert_eq!(pairs(&ours["logs"]), envoy_logs);
    assert_eq!(
        envoy_logs
            .iter()
            .filter(|(_, m)| m.starts_with("vm start"))
            .count(),
        2
    );
    assert_eq!(ours["ticks"], 4);
    assert_eq!(ours["tick_period_ms"], Value::Null);
    for (name, kind) in [("ticker.ticks", "counter"), ("ticker.last_tick", "gauge")] {
        let in_envoy = envoy.stat(&format!("wasmcustom.{name}"));
        let in_harness = ours["metrics"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m[0] == name)
            .unwrap_or_else(|| panic!("no metric {name} in {ours}"));
        assert_eq!(in_harness[1], kind);
        assert_eq!(Some(in_harness[2].as_u64().unwrap()), in_envoy, "{name}");
    }
    // The calls: what the collector received against what the harness recorded.
    let received: Vec<(String, String, String)> = collector
        .received()
        .iter()
        .map(|m| {
            let method = m.start.split(' ').next().unwrap().to_string();
            (method, m.path().to_string(), m.text())
        })
        .collect();
    let made: Vec<(String, String, String)> = ours["http_calls"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            assert_eq!(c["cluster"], "collector");
            (
                c["method"].as_str().unwrap().to_string(),
                c["path"].as_str().unwrap().to_string(),
                c["body"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(made, received);
    assert_eq!(made.len(), 2);
    assert_eq!(ours["shared_data"][0]["value"], "4");
}

/// A service written straight against the ABI in WAT, with no SDK: ticks every 50 ms, counts in
/// a metric, logs each tick, and stops after three.
const WAT_SERVICE: &str = r#"
(module
  (import "env" "proxy_log" (func $log (param i32 i32 i32) (result i32)))
  (import "env" "proxy_set_tick_period_milliseconds" (func $tick (param i32) (result i32)))
  (import "env" "proxy_define_metric" (func $define (param i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_increment_metric" (func $inc (param i32 i64) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 16) "service up")
  (data (i32.const 32) "tick #")
  (data (i32.const 48) "stopped")
  (data (i32.const 64) "wat.ticks")
  (global $ticks (mut i32) (i32.const 0))
  (global $heap (mut i32) (i32.const 1024))
  (func (export "proxy_abi_version_0_2_1"))
  (func (export "proxy_on_memory_allocate") (param $n i32) (result i32)
    (local $p i32)
    (local.set $p (global.get $heap))
    (global.set $heap (i32.add (global.get $heap) (local.get $n)))
    (local.get $p))
  (func (export "proxy_on_context_create") (param i32 i32))
  (func (export "proxy_on_vm_start") (param i32 i32) (result i32)
    (drop (call $log (i32.const 2) (i32.const 16) (i32.const 10)))
    (drop (call $define (i32.const 0) (i32.const 64) (i32.const 9) (i32.const 200)))
    (drop (call $tick (i32.const 50)))
    (i32.const 1))
  (func (export "proxy_on_configure") (param i32 i32) (result i32) (i32.const 1))
  (func (export "proxy_on_tick") (param i32)
    (global.set $ticks (i32.add (global.get $ticks) (i32.const 1)))
    (i32.store8 (i32.const 38) (i32.add (i32.const 48) (global.get $ticks)))
    (drop (call $log (i32.const 2) (i32.const 32) (i32.const 7)))
    (drop (call $inc (i32.load (i32.const 200)) (i64.const 1)))
    (if (i32.eq (global.get $ticks) (i32.const 3))
      (then
        (drop (call $tick (i32.const 0)))
        (drop (call $log (i32.const 2) (i32.const 48) (i32.const 7))))))
)
"#;

#[test]
fn a_service_without_an_sdk_agrees_with_envoy() {
    let dir = tempfile::tempdir().unwrap();
    let wasm = dir.path().join("wat_service.wasm");
    std::fs::write(&wasm, wat::parse_str(WAT_SERVICE).unwrap()).unwrap();
    let collector = Upstream::answering(200, &[], None);
    let (envoy, envoy_logs) =
        envoy_until(wasm_service(&wasm, "", "", ""), &collector, "stopped", 1);
    let ours = harness_service(&[wasm.to_str().unwrap(), "--advance", "1s"]);
    assert_eq!(pairs(&ours["logs"]), envoy_logs);
    let expected: Vec<(String, String)> = [
        "service up",
        "service up",
        "tick #1",
        "tick #2",
        "tick #3",
        "stopped",
    ]
    .iter()
    .map(|m| ("info".to_string(), m.to_string()))
    .collect();
    assert_eq!(envoy_logs, expected);
    assert_eq!(ours["ticks"], 3);
    assert_eq!(envoy.stat("wasmcustom.wat.ticks"), Some(3));
    assert_eq!(ours["metrics"][0][2], 3);
}

#[test]
fn a_service_run_as_a_filter_points_at_service_mode_and_bad_durations_are_named() {
    let wasm = e2e::ticker_wasm();
    let out = Command::new(e2e::wasmctl_bin())
        .args(["run", wasm.to_str().unwrap(), "--root-id", "ticker"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("proxy_on_context_create"), "{stderr}");
    assert!(stderr.contains("run it with --service"), "{stderr}");

    let out = Command::new(e2e::wasmctl_bin())
        .args([
            "run",
            wasm.to_str().unwrap(),
            "--service",
            "--advance",
            "3 days",
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("--advance") && stderr.contains("unknown unit"),
        "{stderr}"
    );

    // --advance without --service is refused, not ignored.
    let out = Command::new(e2e::wasmctl_bin())
        .args(["run", wasm.to_str().unwrap(), "--advance", "1s"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("--service"), "{stderr}");

    // A rejected configuration stops the service at the canary, with the module's own words.
    let out = Command::new(e2e::wasmctl_bin())
        .args([
            "run",
            wasm.to_str().unwrap(),
            "--service",
            "--root-id",
            "ticker",
        ])
        .args(["--config", "period=soon"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("configuration rejected: period: \"soon\" is not a number"),
        "{stderr}"
    );
}
