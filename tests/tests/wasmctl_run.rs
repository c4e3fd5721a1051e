//! `wasmctl run` and local `wasmctl inspect` on real modules, as users call them.

// Helpers outside #[test] functions fail the test loudly.
#![allow(clippy::unwrap_used)]

use std::process::Command;

fn wasmctl(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(e2e::wasmctl_bin())
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn run_shows_the_seed_header_logs_and_metrics() {
    let wasm = e2e::filter_wasm();
    let (code, out, err) = wasmctl(&[
        "run",
        wasm.to_str().unwrap(),
        "--root-id",
        "my_root_id",
        "--config",
        r#"{"name":"resp-header-demo","value":"added by our filter"}"#,
        "--response-header",
        "x-up: 1",
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("+ resp-header-demo: added by our filter"),
        "{out}"
    );
    assert!(
        out.contains("[info] header-filter: configured 1 rule(s)"),
        "{out}"
    );
    assert!(
        out.contains("header_filter.default.rule_0.applied (counter) = 1"),
        "{out}"
    );
}

#[test]
fn run_reports_request_changes_and_json() {
    let wasm = e2e::filter_wasm();
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("config.json");
    std::fs::write(
        &cfg,
        r#"{"rules":[{"direction":"request","op":"set","name":"x-route","value":"${request.method} ${request.path}"},
                     {"direction":"request","op":"remove","name":"x-secret"}]}"#,
    )
    .unwrap();
    let at_cfg = format!("@{}", cfg.display());
    let args = [
        "run",
        wasm.to_str().unwrap(),
        "--root-id",
        "r",
        "--config",
        &at_cfg,
        "--method",
        "POST",
        "--path",
        "/orders",
        "-H",
        "x-secret: s3",
    ];
    let (code, out, err) = wasmctl(&args);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("+ x-route: POST /orders"), "{out}");
    assert!(out.contains("- x-secret"), "{out}");
    let mut json_args = args.to_vec();
    json_args.push("--json");
    let (code, out, _) = wasmctl(&json_args);
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["outcome"]["status"], 200);
    let changes = v["request_changes"].as_array().unwrap();
    assert!(
        changes.iter().any(|c| c["change"] == "added"
            && c["name"] == "x-route"
            && c["value"] == "POST /orders"),
        "{changes:?}"
    );
    assert!(
        changes
            .iter()
            .any(|c| c["change"] == "removed" && c["name"] == "x-secret"),
        "{changes:?}"
    );
}

#[test]
fn run_fails_clearly_on_a_rejected_configuration_and_on_unmet_expectations() {
    let wasm = e2e::filter_wasm();
    let (code, _, err) = wasmctl(&[
        "run",
        wasm.to_str().unwrap(),
        "--root-id",
        "r",
        "--config",
        r#"{"rules":[]}"#,
    ]);
    assert_eq!(code, 1);
    assert!(err.contains("proxy_on_configure returned false"), "{err}");
    assert!(err.contains("invalid configuration: rules: empty"), "{err}");

    let dir = tempfile::tempdir().unwrap();
    let scenario = dir.path().join("s.yaml");
    std::fs::write(
        &scenario,
        "name: wrong expectation\nroot_id: r\nconfiguration: '{\"name\":\"a\",\"value\":\"b\"}'\nexpect:\n  response_headers: {a: [c]}\n",
    )
    .unwrap();
    let (code, out, _) = wasmctl(&[
        "run",
        wasm.to_str().unwrap(),
        "--scenario",
        scenario.to_str().unwrap(),
    ]);
    assert_eq!(code, 3, "{out}");
    assert!(out.contains("expectations NOT met"), "{out}");

    std::fs::write(&scenario, "name: x\nrequest: {pth: /}\n").unwrap();
    let (code, _, err) = wasmctl(&[
        "run",
        wasm.to_str().unwrap(),
        "--scenario",
        scenario.to_str().unwrap(),
    ]);
    assert_eq!(code, 1);
    assert!(err.contains("unknown field `pth`"), "{err}");
}

#[test]
fn run_answers_http_calls_from_a_scenario() {
    let wasm = e2e::callout_wasm();
    let scenario = e2e::workspace_root().join("tests/scenarios/22-callout-allowed.yaml");
    let (code, out, err) = wasmctl(&[
        "run",
        wasm.to_str().unwrap(),
        "--scenario",
        scenario.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("auth: GET /check"), "{out}");
    assert!(out.contains("+ x-auth: alice"), "{out}");
}

#[test]
fn inspect_lists_abi_memory_and_imports_envoy_lacks() {
    let wasm = e2e::filter_wasm();
    let (code, out, err) = wasmctl(&["inspect", wasm.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("proxy-wasm ABI: proxy_abi_version_0_2_1") || out.contains("0_2_1"),
        "{out}"
    );
    assert!(out.contains("memory:"), "{out}");
    assert!(!out.contains("not provided by Envoy"), "{out}");

    let dir = tempfile::tempdir().unwrap();
    let odd = dir.path().join("odd.wasm");
    let wat = r#"(module (import "env" "proxy_not_a_host_call" (func (result i32)))
                 (memory (export "memory") 1)
                 (func (export "malloc") (param i32) (result i32) i32.const 0)
                 (func (export "proxy_abi_version_0_2_1")))"#;
    std::fs::write(&odd, wat::parse_str(wat).unwrap()).unwrap();
    let (code, out, _) = wasmctl(&["inspect", odd.to_str().unwrap()]);
    assert_eq!(code, 0);
    assert!(
        out.contains("env.proxy_not_a_host_call   <- not provided by Envoy"),
        "{out}"
    );
}

/// A module that grows its memory by a page on every request: what a leak looks like.
const LEAKY_WAT: &str = r#"(module
  (memory (export "memory") 1)
  (func (export "proxy_abi_version_0_2_1"))
  (func (export "malloc") (param i32) (result i32) (i32.const 1024))
  (func (export "proxy_on_context_create") (param i32 i32))
  (func (export "proxy_on_vm_start") (param i32 i32) (result i32) (i32.const 1))
  (func (export "proxy_on_configure") (param i32 i32) (result i32) (i32.const 1))
  (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
    (drop (memory.grow (i32.const 1)))
    (i32.const 0)))"#;

/// A module whose heap grows a page on each of its first five requests, then holds: what a
/// garbage-collected runtime's heap looks like until its first collections.
const SETTLING_WAT: &str = r#"(module
  (memory (export "memory") 1)
  (global $grown (mut i32) (i32.const 0))
  (func (export "proxy_abi_version_0_2_1"))
  (func (export "malloc") (param i32) (result i32) (i32.const 1024))
  (func (export "proxy_on_context_create") (param i32 i32))
  (func (export "proxy_on_vm_start") (param i32 i32) (result i32) (i32.const 1))
  (func (export "proxy_on_configure") (param i32 i32) (result i32) (i32.const 1))
  (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
    (if (i32.lt_u (global.get $grown) (i32.const 5))
      (then
        (drop (memory.grow (i32.const 1)))
        (global.set $grown (i32.add (global.get $grown) (i32.const 1)))))
    (i32.const 0)))"#;

#[test]
fn bench_measures_a_filter_and_flags_memory_growth() {
    let wasm = e2e::filter_wasm();
    let (code, out, err) = wasmctl(&[
        "bench",
        wasm.to_str().unwrap(),
        "--root-id",
        "my_root_id",
        "--config",
        r#"{"name":"resp-header-demo","value":"added by our filter"}"#,
        "--requests",
        "300",
        "--json",
    ]);
    assert_eq!(code, 0, "{err}");
    let r: serde_json::Value = serde_json::from_str(&out).unwrap();
    let size = std::fs::metadata(&wasm).unwrap().len();
    assert_eq!(r["size"], size);
    assert_eq!(r["requests"], 300);
    for k in ["compile_ms", "plugin_start_us", "request_us"] {
        assert!(r[k].as_f64().unwrap() > 0.0, "{k}: {out}");
    }
    assert_eq!(r["memory_before"], r["memory_after"], "{out}");
    assert_eq!(r["memory_mid"], r["memory_after"], "{out}");

    let dir = tempfile::tempdir().unwrap();
    let leaky = dir.path().join("leaky.wasm");
    std::fs::write(&leaky, wat::parse_str(LEAKY_WAT).unwrap()).unwrap();
    let (code, out, err) = wasmctl(&["bench", leaky.to_str().unwrap(), "--requests", "50"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("GREW"), "{out}");
    // Growth that stops in the first half of the run is a heap settling, not a leak.
    let settling = dir.path().join("settling.wasm");
    std::fs::write(&settling, wat::parse_str(SETTLING_WAT).unwrap()).unwrap();
    let (code, out, err) = wasmctl(&["bench", settling.to_str().unwrap(), "--requests", "50"]);
    assert_eq!(code, 0, "{err}");
    assert!(!out.contains("GREW"), "{out}");
    assert!(out.contains("grew in the first half, then held"), "{out}");
    // A filter whose configuration is refused is an error naming the file, not a figure.
    let (code, _, err) = wasmctl(&["bench", wasm.to_str().unwrap(), "--config", "{"]);
    assert_ne!(code, 0);
    assert!(err.contains("header_filter.wasm"), "{err}");
}
