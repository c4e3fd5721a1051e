//! `wasmctl run` and local `wasmctl inspect` on real modules, as users call them.

// Helpers outside #[test] functions fail the test loudly.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

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

/// A module with the network callbacks only, as a hand-written network filter has.
const NETWORK_ONLY_WAT: &str = r#"(module
  (memory (export "memory") 1)
  (func (export "proxy_abi_version_0_2_1"))
  (func (export "malloc") (param i32) (result i32) (i32.const 1024))
  (func (export "proxy_on_context_create") (param i32 i32))
  (func (export "proxy_on_configure") (param i32 i32) (result i32) (i32.const 1))
  (func (export "proxy_on_new_connection") (param i32) (result i32) (i32.const 0))
  (func (export "proxy_on_downstream_data") (param i32 i32 i32) (result i32) (i32.const 0)))"#;

#[test]
fn run_tcp_shows_a_connection_both_ways_in_the_order_given() {
    let wasm = e2e::tcp_filter_wasm();
    let args = [
        "run",
        wasm.to_str().unwrap(),
        "--tcp",
        "--config",
        r#"{"prefix": "demo", "uppercase": "downstream"}"#,
        "--send",
        "hello ",
        "--reply",
        "hi",
        "--send",
        "world",
    ];
    let (code, out, err) = wasmctl(&args);
    assert_eq!(code, 0, "{err}");
    for want in [
        "connection: command line\n",
        "the client sends \"hello \" -> continue: passed on \"HELLO \"\n",
        "the upstream sends \"hi\" -> continue: passed on \"hi\"\n",
        "the client sends \"world\" -> continue: passed on \"WORLD\"\n",
        "the client closes (at the end) -> continue: end of stream passed on\n",
        "the proxy closes the connection (peer local): done, log, delete\n",
        "upstream received: \"HELLO WORLD\" (11 bytes)\n",
        "client received: \"hi\" (2 bytes)\n",
        "closed: upstream, then downstream (the client)\n",
        "[info] tcp-filter demo: downstream 11 bytes, upstream 2 bytes\n",
    ] {
        assert!(out.contains(want), "{want:?} not in:\n{out}");
    }
    // The steps come in the order the flags were given.
    let sends = out.find("sends \"hello \"").unwrap();
    assert!(
        sends < out.find("sends \"hi\"").unwrap()
            && out.find("sends \"hi\"") < out.find("sends \"world\"")
    );

    let mut json_args = args.to_vec();
    json_args.push("--json");
    let (code, out, err) = wasmctl(&json_args);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["outcome"]["upstream_received"], "HELLO WORLD");
    assert_eq!(v["outcome"]["downstream_received"], "hi");
    assert_eq!(
        v["outcome"]["closed"],
        serde_json::json!(["upstream", "downstream"])
    );
    assert_eq!(v["connection"]["new_connection"], "continue");
    let steps = v["connection"]["steps"].as_array().unwrap();
    assert_eq!(steps.len(), 5, "{out}");
    assert_eq!(
        steps[0]["step"],
        serde_json::json!({"downstream": "hello "})
    );
    assert_eq!(steps[1]["step"], serde_json::json!({"upstream": "hi"}));
    assert_eq!(steps[4]["step"], serde_json::json!({"close": "upstream"}));
    assert_eq!(steps[4]["implicit"], true);
    assert_eq!(steps[4]["connection_closed"], "local");
    assert!(
        v["logs"]
            .as_array()
            .unwrap()
            .iter()
            .any(|l| l[1] == "tcp-filter demo: downstream 11 bytes, upstream 2 bytes"),
        "{out}"
    );
}

#[test]
fn run_checks_a_connection_scenario_and_its_expectations() {
    let wasm = e2e::tcp_filter_wasm();
    let scenario = e2e::workspace_root()
        .join("tests/scenarios/connections/34-tcp-filter-uppercase-upstream-closes-first.yaml");
    let (code, out, err) = wasmctl(&[
        "run",
        wasm.to_str().unwrap(),
        "--scenario",
        scenario.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("the proxy closes the connection (peer remote)"),
        "{out}"
    );
    assert!(!out.contains("expectations NOT met"), "{out}");

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("c.yaml");
    std::fs::write(
        &file,
        "name: wrong\nconnection:\n  - downstream: a\nexpect:\n  upstream_received: b\n  closed: [downstream]\n",
    )
    .unwrap();
    let (code, out, _) = wasmctl(&[
        "run",
        wasm.to_str().unwrap(),
        "--scenario",
        file.to_str().unwrap(),
    ]);
    assert_eq!(code, 3, "{out}");
    assert!(
        out.contains(r#"upstream received: expected "b", got "a""#),
        "{out}"
    );
    assert!(
        out.contains("closed: expected [downstream], got [upstream, downstream]"),
        "{out}"
    );

    // --send and --reply add to the scenario's steps; a scenario of a request refuses --tcp.
    let (code, out, err) = wasmctl(&[
        "run",
        wasm.to_str().unwrap(),
        "--scenario",
        file.to_str().unwrap(),
        "--reply",
        "z",
    ]);
    assert_eq!(code, 3, "{err}");
    assert!(out.contains("client received: \"z\""), "{out}");
    std::fs::write(&file, "name: request\nrequest: {path: /x}\n").unwrap();
    let (code, _, err) = wasmctl(&[
        "run",
        wasm.to_str().unwrap(),
        "--scenario",
        file.to_str().unwrap(),
        "--tcp",
    ]);
    assert_eq!(code, 1);
    assert!(err.contains("describes an HTTP request (request)"), "{err}");
    // Both kinds in one file: the error names the field.
    std::fs::write(&file, "name: both\nrequest: {path: /x}\nconnection: []\n").unwrap();
    let (code, _, err) = wasmctl(&[
        "run",
        wasm.to_str().unwrap(),
        "--scenario",
        file.to_str().unwrap(),
    ]);
    assert_eq!(code, 1);
    assert!(
        err.contains("`request` and `connection` cannot both be given"),
        "{err}"
    );
    // HTTP flags do not go with a connection.
    let (code, _, err) = wasmctl(&["run", wasm.to_str().unwrap(), "--tcp", "--path", "/x"]);
    assert_eq!(code, 2);
    assert!(err.contains("--tcp") && err.contains("--path"), "{err}");
}

/// stderr of `wasmctl run ARGS`, which must exit 2 with the hint `want` before any trap output.
fn hinted(args: &[&str], want: &str) -> String {
    let (code, _, err) = wasmctl(args);
    assert_eq!(code, 2, "{err}");
    let hint = err
        .find(want)
        .unwrap_or_else(|| panic!("{want:?} not in:\n{err}"));
    for trap in ["trapped:", "wasm trap", "backtrace"] {
        if let Some(at) = err.find(trap) {
            assert!(hint < at, "the hint comes after {trap:?}:\n{err}");
        }
    }
    err
}

#[test]
fn a_filter_run_as_the_other_kind_gets_a_hint_and_exit_2() {
    // The Rust SDK's network filter over HTTP: its context is a connection's, and
    // proxy_on_request_headers panics ("invalid context_id").
    let tcp = e2e::tcp_filter_wasm();
    let err = hinted(
        &["run", tcp.to_str().unwrap()],
        "this module is a network (TCP) filter: proxy_on_request_headers trapped on the request's context, while a TCP connection through it runs cleanly; run it with --tcp",
    );
    assert!(
        err.contains("over HTTP: proxy_on_request_headers trapped"),
        "{err}"
    );
    // The Rust SDK's HTTP filter as a connection.
    let minimal = e2e::minimal_wasm();
    hinted(
        &["run", minimal.to_str().unwrap(), "--tcp", "--send", "x"],
        "this module is an HTTP filter: proxy_on_new_connection trapped on the connection's context, while an HTTP request through it runs cleanly; run it without --tcp",
    );
    // By the exports: the header filter has no network callback, a hand-written network
    // filter no HTTP one.
    let header = e2e::filter_wasm();
    hinted(
        &[
            "run",
            header.to_str().unwrap(),
            "--root-id",
            "r",
            "--config",
            r#"{"name":"a","value":"b"}"#,
            "--tcp",
        ],
        "this module is an HTTP filter: it exports proxy_on_request_headers, proxy_on_response_headers and none of proxy_on_new_connection",
    );
    let dir = tempfile::tempdir().unwrap();
    let network = dir.path().join("network.wasm");
    std::fs::write(&network, wat::parse_str(NETWORK_ONLY_WAT).unwrap()).unwrap();
    hinted(
        &["run", network.to_str().unwrap()],
        "this module is a network (TCP) filter: it exports proxy_on_new_connection, proxy_on_downstream_data and none of proxy_on_request_headers",
    );
    // Run as its kind, it passes.
    let (code, out, err) = wasmctl(&["run", network.to_str().unwrap(), "--tcp", "--send", "x"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("upstream received: \"x\""), "{out}");
    // A module with both kinds of callbacks whose HTTP ones trap: a network filter when a
    // connection runs cleanly, else its trap stands as it is (exit 1, no hint).
    let both = dir.path().join("both.wasm");
    std::fs::write(&both, wat::parse_str(both_wat("(i32.const 0)")).unwrap()).unwrap();
    hinted(
        &["run", both.to_str().unwrap()],
        "this module is a network (TCP) filter: proxy_on_request_headers trapped",
    );
    std::fs::write(&both, wat::parse_str(both_wat("unreachable")).unwrap()).unwrap();
    let (code, _, err) = wasmctl(&["run", both.to_str().unwrap()]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("proxy_on_request_headers trapped"), "{err}");
    assert!(!err.contains("this module is"), "{err}");
}

/// A module exporting both kinds of callbacks: its HTTP ones trap, its network ones run `body`.
fn both_wat(body: &str) -> String {
    format!(
        r#"(module
  (memory (export "memory") 1)
  (func (export "proxy_abi_version_0_2_1"))
  (func (export "malloc") (param i32) (result i32) (i32.const 1024))
  (func (export "proxy_on_context_create") (param i32 i32))
  (func (export "proxy_on_configure") (param i32 i32) (result i32) (i32.const 1))
  (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32) unreachable)
  (func (export "proxy_on_new_connection") (param i32) (result i32) {body})
  (func (export "proxy_on_downstream_data") (param i32 i32 i32) (result i32) {body}))"#
    )
}

#[test]
fn test_runs_connection_scenarios_and_names_the_kind_of_a_mismatch() {
    let tcp = e2e::tcp_filter_wasm();
    let dir = e2e::workspace_root().join("tests/scenarios/connections");
    let (code, out, err) = wasmctl(&["test", tcp.to_str().unwrap(), dir.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.ends_with("4 passed, 0 failed\n"), "{out}");
    // The HTTP header filter against a connection scenario: that scenario fails, saying why.
    let header = e2e::filter_wasm();
    let one = dir.join("33-tcp-filter-counts-bytes.yaml");
    let (code, out, _) = wasmctl(&["test", header.to_str().unwrap(), one.to_str().unwrap()]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("this module is an HTTP filter"), "{out}");
    assert!(out.ends_with("0 passed, 1 failed\n"), "{out}");
}

/// A network filter that opens a unary gRPC call from `proxy_on_new_connection`.
const TCP_GRPC_WAT: &str = r#"(module
  (import "env" "proxy_grpc_call" (func $grpc (param i32 i32 i32 i32 i32 i32 i32 i32 i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 16) "grpc_auth")
  (data (i32.const 32) "auth.Authorizer")
  (data (i32.const 48) "Check")
  (data (i32.const 64) "hi")
  (global $next (mut i32) (i32.const 1024))
  (func (export "malloc") (param $n i32) (result i32)
    (local $p i32)
    (local.set $p (global.get $next))
    (global.set $next (i32.add (global.get $next) (local.get $n)))
    (local.get $p))
  (func (export "proxy_abi_version_0_2_1"))
  (func (export "proxy_on_context_create") (param i32 i32))
  (func (export "proxy_on_configure") (param i32 i32) (result i32) (i32.const 1))
  (func (export "proxy_on_new_connection") (param i32) (result i32)
    (drop (call $grpc (i32.const 16) (i32.const 9) (i32.const 32) (i32.const 15) (i32.const 48) (i32.const 5)
                      (i32.const 0) (i32.const 0) (i32.const 64) (i32.const 2) (i32.const 1000) (i32.const 8)))
    (i32.const 0))
  (func (export "proxy_on_downstream_data") (param i32 i32 i32) (result i32) (i32.const 0))
  (func (export "proxy_on_upstream_data") (param i32 i32 i32) (result i32) (i32.const 0))
  (func (export "proxy_on_grpc_receive") (param i32 i32 i32)))"#;

#[test]
fn run_tcp_lists_the_grpc_calls_a_network_filter_made() {
    let dir = tempfile::tempdir().unwrap();
    let wasm = dir.path().join("tcp-grpc.wasm");
    std::fs::write(&wasm, wat::parse_str(TCP_GRPC_WAT).unwrap()).unwrap();
    let file = dir.path().join("c.yaml");
    let scenario = |expect: &str| {
        format!(
            "name: grpc from a connection\nconnection: [{{downstream: x}}]\ngrpc:\n  grpc_auth:\n    auth.Authorizer/Check: {{messages: [allow]}}\nexpect:\n  grpc_calls: [{expect}]\n"
        )
    };
    std::fs::write(
        &file,
        scenario("{cluster: grpc_auth, service: auth.Authorizer, method: Check}"),
    )
    .unwrap();
    let args = [
        "run",
        wasm.to_str().unwrap(),
        "--scenario",
        file.to_str().unwrap(),
    ];
    let (code, out, err) = wasmctl(&args);
    assert_eq!(code, 0, "{out}{err}");
    for want in [
        "connection: grpc from a connection\n",
        "grpc calls: 1\n",
        "  grpc_auth: auth.Authorizer/Check (unary, timeout 1000 ms)\n",
        "    sent: \"hi\"\n",
        "    received: \"allow\"\n",
    ] {
        assert!(out.contains(want), "{want:?} not in:\n{out}");
    }
    assert!(!out.contains("expectations NOT met"), "{out}");
    let mut json_args = args.to_vec();
    json_args.push("--json");
    let (code, out, err) = wasmctl(&json_args);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let calls = v["grpc_calls"].as_array().unwrap();
    assert_eq!(calls.len(), 1, "{out}");
    assert_eq!(calls[0]["cluster"], "grpc_auth");
    assert_eq!(calls[0]["service"], "auth.Authorizer");
    assert_eq!(calls[0]["method"], "Check");
    assert_eq!(calls[0]["sent"], serde_json::json!(["hi"]));
    assert_eq!(calls[0]["answer"]["messages"], serde_json::json!(["allow"]));
    // expect.grpc_calls holds for connections too.
    std::fs::write(&file, scenario("{cluster: grpc_auth, method: Other}")).unwrap();
    let (code, out, _) = wasmctl(&args);
    assert_eq!(code, 3, "{out}");
    assert!(
        out.contains(r#"grpc_calls[0] method: expected "Other", got "Check""#),
        "{out}"
    );
}

#[test]
fn run_tcp_shows_the_cluster_a_filter_routed_to_and_its_filter_state() {
    let wasm = e2e::tcp_filter_wasm();
    let scenario = e2e::workspace_root()
        .join("tests/scenarios/connections/36-tcp-filter-routes-to-a-cluster.yaml");
    let args = [
        "run",
        wasm.to_str().unwrap(),
        "--scenario",
        scenario.to_str().unwrap(),
    ];
    let (code, out, err) = wasmctl(&args);
    assert_eq!(code, 0, "{out}{err}");
    for want in [
        "upstream cluster: b_side\n",
        "filter state set:\n  envoy.tcp_proxy.cluster = \"b_side\"\n",
        "[info] tcp-filter route: routed to b_side (filter state b_side)\n",
    ] {
        assert!(out.contains(want), "{want:?} not in:\n{out}");
    }
    assert!(!out.contains("expectations NOT met"), "{out}");
    // The same filter without a cluster stays on tcp_proxy's own, and the expectations say so.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("c.yaml");
    let text = std::fs::read_to_string(&scenario)
        .unwrap()
        .replace(r#", "cluster": "b_side""#, "");
    std::fs::write(&file, text).unwrap();
    let (code, out, _) = wasmctl(&[
        "run",
        wasm.to_str().unwrap(),
        "--scenario",
        file.to_str().unwrap(),
    ]);
    assert_eq!(code, 3, "{out}");
    assert!(out.contains("upstream cluster: upstream\n"), "{out}");
    assert!(
        out.contains(r#"upstream cluster: expected "b_side", got "upstream""#),
        "{out}"
    );
    assert!(
        out.contains(r#"filter state envoy.tcp_proxy.cluster: expected "b_side", never set"#),
        "{out}"
    );
}
