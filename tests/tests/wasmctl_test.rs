//! `wasmctl test`: scenario suites against real modules, as users and CI run them: the lines, the
//! closing count, the exit code, the project file, and a JUnit report read by an independent
//! reader (junitparser, from the project's Python venv).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::process::Command;

/// Run wasmctl in `cwd`: (exit code, stdout, stderr).
fn wasmctl_in(cwd: &Path, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(e2e::wasmctl_bin())
        .current_dir(cwd)
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(&p, text).unwrap();
    p
}

/// The seed configuration: one response rule.
const SEED: &str = r#"root_id: my_root_id
configuration: '{"name":"resp-header-demo","value":"added by our filter"}'
"#;

/// Three passing scenarios over the header filter, in `dir/scenarios`.
fn three_scenarios(dir: &Path) -> PathBuf {
    let s = dir.join("scenarios");
    write(
        &s,
        "01-seed.yaml",
        &format!(
            "name: the seed header is added\n{SEED}\
             upstream: {{status: 200, headers: [[x-up, \"1\"]]}}\n\
             expect:\n  status: 200\n  response_headers: {{resp-header-demo: [added by our filter], x-up: [\"1\"]}}\n"
        ),
    );
    write(
        &s,
        "02-remove.yaml",
        "name: an internal header is removed\nroot_id: r\n\
         configuration: '{\"rules\":[{\"direction\":\"request\",\"op\":\"remove\",\"name\":\"x-secret\"}]}'\n\
         request: {path: /a, headers: [[x-secret, s3], [x-kept, k]]}\n\
         expect:\n  upstream_absent: [x-secret]\n  upstream_headers: {x-kept: [k]}\n",
    );
    write(
        &s,
        "03-body.yml",
        &format!(
            "name: the upstream's body and status pass\n{SEED}\
             upstream: {{status: 404, body: nope}}\n\
             expect:\n  status: 404\n  body: nope\n"
        ),
    );
    s
}

fn last_line(out: &str) -> &str {
    out.lines().last().unwrap_or_default()
}

#[test]
fn a_passing_suite_prints_a_line_per_scenario_and_exits_0() {
    let d = tempfile::tempdir().unwrap();
    let s = three_scenarios(d.path());
    let wasm = e2e::filter_wasm();
    let (code, out, err) = wasmctl_in(d.path(), &["test", wasm.to_str().unwrap(), "scenarios"]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(
        out.contains("PASS scenarios/01-seed.yaml (the seed header is added)\n"),
        "{out}"
    );
    assert!(
        out.contains("PASS scenarios/02-remove.yaml (an internal header is removed)\n"),
        "{out}"
    );
    assert!(
        out.contains("PASS scenarios/03-body.yml (the upstream's body and status pass)\n"),
        "{out}"
    );
    // In name order.
    let first = out.find("01-seed").unwrap();
    assert!(first < out.find("02-remove").unwrap() && out.find("02-remove") < out.find("03-body"));
    assert_eq!(last_line(&out), "3 passed, 0 failed", "{out}");
    // Files given one by one, module last: the same suite.
    let files: Vec<String> = ["03-body.yml", "01-seed.yaml"]
        .iter()
        .map(|f| s.join(f).display().to_string())
        .collect();
    let (code, out, err) = wasmctl_in(
        d.path(),
        &["test", &files[0], &files[1], wasm.to_str().unwrap()],
    );
    assert_eq!(code, 0, "{out}\n{err}");
    assert_eq!(last_line(&out), "2 passed, 0 failed", "{out}");
}

#[test]
fn a_failing_scenario_names_the_field_the_expected_and_the_actual_value() {
    let d = tempfile::tempdir().unwrap();
    three_scenarios(d.path());
    write(
        &d.path().join("scenarios"),
        "02-remove.yaml",
        "name: an internal header is removed\nroot_id: r\n\
         configuration: '{\"rules\":[{\"direction\":\"request\",\"op\":\"remove\",\"name\":\"x-secret\"}]}'\n\
         request: {path: /a, headers: [[x-secret, s3], [x-kept, k]]}\n\
         expect:\n  status: 201\n  upstream_headers: {x-kept: [other]}\n",
    );
    let wasm = e2e::filter_wasm();
    let (code, out, err) = wasmctl_in(d.path(), &["test", wasm.to_str().unwrap(), "scenarios"]);
    assert_eq!(code, 1, "{out}\n{err}");
    assert!(
        out.contains(
            "FAIL scenarios/02-remove.yaml (an internal header is removed)\n    \
             status: expected 201, got 200\n    \
             upstream header x-kept: expected [\"other\"], got [\"k\"]\n"
        ),
        "{out}"
    );
    assert!(out.contains("PASS scenarios/01-seed.yaml"), "{out}");
    assert!(out.contains("PASS scenarios/03-body.yml"), "{out}");
    assert_eq!(last_line(&out), "2 passed, 1 failed", "{out}");
    // A failed scenario is not an error of the command.
    assert!(!err.contains("error:"), "{err}");
}

/// The header filter with a request rule and a response rule, every new expectation holding.
const HEADER_FILTER_EVERY_FIELD: &str = r#"name: every new expectation over the header filter
root_id: r
configuration: '{"rules":[{"direction":"request","op":"set","name":"x-route","value":"${request.method} ${request.path}"},{"direction":"response","op":"append","name":"x-served","value":"yes"}]}'
request: {method: POST, path: /orders, headers: [[x-first, "1"], [x-second, "2"]], body: hello}
upstream: {status: 201, headers: [[x-up, u]], body: created}
expect:
  response_header_order: [x-up, x-served, server]
  upstream_header_order: [host, x-first, x-second, x-route]
  upstream: {method: POST, path: /orders, body: hello}
  http_calls: []
  logs:
  - {level: info, contains: "header-filter: configured 2 rule(s)"}
  - {level: debug, contains: "rule 0 (request set x-route): applied"}
  - {contains: "rule 1 (response append x-served): applied"}
  metrics:
    header_filter.default.rule_0.applied: 1
    header_filter.default.rule_1.applied: 1
    header_filter.default.rule_1.skipped: 0
"#;

/// The callout filter refusing a request: a local reply, and the call it made.
const CALLOUT_EVERY_FIELD: &str = r#"name: every new expectation over the callout filter
module: callout_filter
root_id: callout
configuration: auth
request: {path: /orders}
clusters:
  auth: {status: 403, body: no}
expect:
  upstream_reached: false
  local_response: {status: 403, details: ""}
  response_header_order: [x-denied-by, content-type]
  http_calls: [{cluster: auth, method: GET, path: /check}]
  logs:
  - {level: info, contains: "callout: calling cluster auth"}
  - {level: info, contains: "callout: denied"}
  metrics: {callout.requests: 1, callout.denied: 1, callout.allowed: 0, callout.last_path_len: 7}
"#;

#[test]
fn every_new_expect_field_passes_against_real_modules() {
    let d = tempfile::tempdir().unwrap();
    let h = write(d.path(), "h/every.yaml", HEADER_FILTER_EVERY_FIELD);
    let wasm = e2e::filter_wasm();
    let (code, out, err) = wasmctl_in(
        d.path(),
        &["test", wasm.to_str().unwrap(), h.to_str().unwrap()],
    );
    assert_eq!(code, 0, "{out}\n{err}");
    assert_eq!(last_line(&out), "1 passed, 0 failed", "{out}");
    let c = write(d.path(), "c/every.yaml", CALLOUT_EVERY_FIELD);
    let callout = e2e::callout_wasm();
    let (code, out, err) = wasmctl_in(
        d.path(),
        &["test", callout.to_str().unwrap(), c.to_str().unwrap()],
    );
    assert_eq!(code, 0, "{out}\n{err}");
    assert_eq!(last_line(&out), "1 passed, 0 failed", "{out}");

    // The same fields, each made false, each reported with expected and actual values.
    let wrong = CALLOUT_EVERY_FIELD
        .replace("details: \"\"", "details: forbidden")
        .replace("[x-denied-by, content-type]", "[content-type, x-denied-by]")
        .replace("path: /check}", "path: /verify}")
        .replace("callout: denied", "callout: allowed")
        .replace("callout.denied: 1", "callout.denied: 2");
    let c = write(d.path(), "c/wrong.yaml", &wrong);
    let (code, out, _) = wasmctl_in(
        d.path(),
        &["test", callout.to_str().unwrap(), c.to_str().unwrap()],
    );
    assert_eq!(code, 1, "{out}");
    for line in [
        r#"    local response details: expected "forbidden", got """#,
        r#"    response header order: expected ["content-type", "x-denied-by"], got ["x-denied-by", "content-type"]"#,
        r#"    http_calls[0] path: expected "/verify", got "/check""#,
        r#"    logs[1]: expected a line [info] containing "callout: allowed" after the line of logs[0], got none"#,
        "    metric callout.denied: expected 2, got 1 (counter)",
    ] {
        assert!(out.contains(line), "{line}\nnot in\n{out}");
    }
    assert_eq!(last_line(&out), "0 passed, 1 failed", "{out}");
    // `wasmctl run --scenario` checks the same expectations (exit 3: not met).
    let (code, out, _) = wasmctl_in(
        d.path(),
        &[
            "run",
            callout.to_str().unwrap(),
            "--scenario",
            c.to_str().unwrap(),
        ],
    );
    assert_eq!(code, 3, "{out}");
    assert!(
        out.contains("metric callout.denied: expected 2, got 1"),
        "{out}"
    );
}

#[test]
fn a_scenario_that_does_not_parse_or_cannot_start_fails_and_the_others_run() {
    let d = tempfile::tempdir().unwrap();
    three_scenarios(d.path());
    let s = d.path().join("scenarios");
    write(
        &s,
        "04-typo.yaml",
        "name: a typo in an expectation\nexpect:\n  status: 200\n  respons_headers: {x-a: [\"1\"]}\n",
    );
    write(
        &s,
        "05-bad-config.yaml",
        "name: a configuration the filter refuses\nroot_id: r\n\
         configuration: '{\"rules\":[{\"direction\":\"request\",\"op\":\"sett\",\"name\":\"x\"}]}'\n",
    );
    let wasm = e2e::filter_wasm();
    let (code, out, err) = wasmctl_in(d.path(), &["test", wasm.to_str().unwrap(), "scenarios"]);
    assert_eq!(code, 1, "{out}\n{err}");
    let typo = out
        .split_once("FAIL scenarios/04-typo.yaml (a typo in an expectation)\n")
        .unwrap_or_else(|| panic!("{out}"))
        .1
        .lines()
        .next()
        .unwrap();
    assert!(
        typo.starts_with("    scenario scenarios/04-typo.yaml does not parse:")
            && typo.contains("respons_headers")
            && typo.contains("line 4"),
        "{typo}"
    );
    assert!(
        out.contains("FAIL scenarios/05-bad-config.yaml (a configuration the filter refuses)\n"),
        "{out}"
    );
    assert!(
        out.contains("sett"),
        "the module's complaint is shown:\n{out}"
    );
    assert_eq!(last_line(&out), "3 passed, 2 failed", "{out}");
}

#[test]
fn junit_report_is_read_by_junitparser() {
    let d = tempfile::tempdir().unwrap();
    three_scenarios(d.path());
    write(
        &d.path().join("scenarios"),
        "04-fails.yaml",
        &format!(
            "name: a <failing> & \"quoted\" scenario\n{SEED}\
             expect:\n  response_headers: {{resp-header-demo: [\"<other> & 'more'\"]}}\n"
        ),
    );
    write(
        &d.path().join("scenarios"),
        "05-broken.yaml",
        "name: [broken\n",
    );
    let wasm = e2e::filter_wasm();
    let report = d.path().join("reports/junit.xml");
    let (code, out, err) = wasmctl_in(
        d.path(),
        &[
            "test",
            wasm.to_str().unwrap(),
            "scenarios",
            "--junit",
            report.to_str().unwrap(),
        ],
    );
    assert_eq!(code, 1, "{out}\n{err}");
    assert_eq!(last_line(&out), "3 passed, 2 failed", "{out}");
    // No temporary file is left beside it.
    let left: Vec<_> = std::fs::read_dir(d.path().join("reports"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(left, ["junit.xml"], "{left:?}");
    // junitparser's view of it, as JSON.
    let script = r#"
import json, sys
from junitparser import JUnitXml
xml = JUnitXml.fromfile(sys.argv[1])
print(json.dumps({
    "tests": xml.tests, "failures": xml.failures, "errors": xml.errors, "time": xml.time,
    "suites": [{
        "name": s.name, "tests": s.tests, "failures": s.failures, "errors": s.errors,
        "time": s.time,
        "cases": [{
            "classname": c.classname, "name": c.name, "time": c.time,
            "results": [[type(r).__name__, r.message, r.text] for r in c.result],
        } for c in s],
    } for s in xml],
}))
"#;
    let py = Command::new(e2e::python())
        .args(["-c", script, report.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        py.status.success(),
        "junitparser (scripts/setup installs it in .venv): {}",
        String::from_utf8_lossy(&py.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&py.stdout).unwrap();
    let shown = serde_json::to_string_pretty(&v).unwrap();
    assert_eq!(
        (&v["tests"], &v["failures"], &v["errors"]),
        (&5.into(), &1.into(), &1.into()),
        "{shown}"
    );
    let suites = v["suites"].as_array().unwrap();
    assert_eq!(suites.len(), 1, "{shown}");
    let suite = &suites[0];
    assert_eq!(suite["name"], "header_filter.wasm", "{shown}");
    assert_eq!(
        (&suite["tests"], &suite["failures"], &suite["errors"]),
        (&5.into(), &1.into(), &1.into()),
        "{shown}"
    );
    assert!(suite["time"].as_f64().unwrap() >= 0.0, "{shown}");
    let cases = suite["cases"].as_array().unwrap();
    let names: Vec<&str> = cases.iter().map(|c| c["name"].as_str().unwrap()).collect();
    assert_eq!(
        names,
        [
            "scenarios/01-seed.yaml",
            "scenarios/02-remove.yaml",
            "scenarios/03-body.yml",
            "scenarios/04-fails.yaml",
            "scenarios/05-broken.yaml"
        ]
    );
    for c in cases {
        assert_eq!(c["classname"], "header_filter.wasm", "{shown}");
        assert!(c["time"].as_f64().unwrap() >= 0.0, "{shown}");
    }
    for c in &cases[..3] {
        assert_eq!(c["results"], serde_json::json!([]), "{shown}");
    }
    let detail = r#"response header resp-header-demo: expected ["<other> & 'more'"], got ["added by our filter"]"#;
    assert_eq!(
        cases[3]["results"],
        serde_json::json!([[
            "Failure",
            format!("1 expectation(s) not met: {detail}"),
            detail
        ]]),
        "{shown}"
    );
    let broken = &cases[4]["results"][0];
    assert_eq!(broken[0], "Error", "{shown}");
    assert!(
        broken[1]
            .as_str()
            .unwrap()
            .starts_with("scenario scenarios/05-broken.yaml does not parse"),
        "{shown}"
    );
}

#[test]
fn the_project_file_gives_the_module_and_the_scenarios() {
    let d = tempfile::tempdir().unwrap();
    three_scenarios(d.path());
    let wasm = e2e::filter_wasm();
    write(
        d.path(),
        "wasmctl.yaml",
        &format!(
            "module: {}\nbuild: cargo build --target wasm32-wasip1 --release\nrootId: ignored\n",
            wasm.display()
        ),
    );
    let (code, out, err) = wasmctl_in(d.path(), &["test"]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.contains("PASS scenarios/01-seed.yaml"), "{out}");
    assert_eq!(last_line(&out), "3 passed, 0 failed", "{out}");
    // From a folder below the project, with one scenario named: the module still comes from it.
    std::fs::create_dir(d.path().join("src")).unwrap();
    let (code, out, err) = wasmctl_in(&d.path().join("src"), &["test", "../scenarios/03-body.yml"]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert_eq!(last_line(&out), "1 passed, 0 failed", "{out}");

    // The module is not built yet: the error names it and the build command.
    write(
        d.path(),
        "wasmctl.yaml",
        "module: target/wasm32-wasip1/release/my_filter.wasm\nbuild: cargo build --target wasm32-wasip1 --release\n",
    );
    let (code, out, err) = wasmctl_in(d.path(), &["test"]);
    assert_eq!(code, 1, "{out}\n{err}");
    assert!(
        err.starts_with("error: module ")
            && err.contains("target/wasm32-wasip1/release/my_filter.wasm")
            && err.contains("`cargo build --target wasm32-wasip1 --release`"),
        "{err}"
    );
    assert!(!out.contains("passed"), "{out}");
}

#[test]
fn nothing_to_run_is_an_error_that_says_where_it_looked() {
    let d = tempfile::tempdir().unwrap();
    let (code, _, err) = wasmctl_in(d.path(), &["test"]);
    assert_eq!(code, 1);
    assert!(
        err.contains("pass MODULE") && err.contains("wasmctl new"),
        "{err}"
    );
    std::fs::create_dir(d.path().join("empty")).unwrap();
    let wasm = e2e::filter_wasm();
    let (code, _, err) = wasmctl_in(d.path(), &["test", wasm.to_str().unwrap(), "empty"]);
    assert_eq!(code, 1);
    assert!(
        err.contains("no scenario files (.yaml, .yml) found in empty"),
        "{err}"
    );
    let (code, _, err) = wasmctl_in(d.path(), &["test", "missing.wasm", "empty"]);
    assert_eq!(code, 1);
    assert!(err.contains("module missing.wasm: no such file"), "{err}");
}
