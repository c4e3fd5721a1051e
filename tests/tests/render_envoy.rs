//! What `wasmctl render` prints works in a real Envoy 1.40 and a real registry:
//!
//! - the HTTP filter of each rendered EnvoyFilter, placed before the router of a listener (the
//!   code's file name pointed at the freshly built `header_filter.wasm`), passes
//!   `envoy --mode validate`, and a request through a running Envoy shows the filter's work;
//! - parameters the filter refuses fail `render --module`, naming the file, the field and the
//!   filter's own reason;
//! - with a registry, `render` pins tags to the digest `wasmctl push` printed, and checks the
//!   parameters against the module it pulled.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use e2e::envoy::{self, Envoy};
use e2e::http1;
use serde::Deserialize as _;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn examples_dir() -> PathBuf {
    e2e::workspace_root().join("manifests/examples")
}

fn render(args: &[&str], env: &[(&str, &Path)]) -> Output {
    let mut c = Command::new(e2e::wasmctl_bin());
    c.arg("render").args(args);
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().expect("run wasmctl")
}

fn render_ok(args: &[&str]) -> String {
    let o = render(args, &[]);
    assert!(
        o.status.success(),
        "wasmctl render {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout).expect("utf-8")
}

fn docs(yaml: &str) -> Vec<Value> {
    serde_norway::Deserializer::from_str(yaml)
        .map(|d| Value::deserialize(d).expect("yaml"))
        .filter(|v| !v.is_null())
        .collect()
}

/// The HTTP filter the EnvoyFilter inserts, with its code pointed at `wasm`.
fn http_filter(envoy_filter: &Value, wasm: &Path) -> Value {
    let mut f = envoy_filter["spec"]["configPatches"][0]["patch"]["value"].clone();
    let file = &mut f["typed_config"]["config"]["vm_config"]["code"]["local"]["filename"];
    assert!(
        file.as_str()
            .expect("filename")
            .starts_with("/var/local/lib/wasm-filters/")
    );
    *file = Value::String(wasm.display().to_string());
    f
}

fn validate(config: &Value) -> Output {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("envoy.json");
    std::fs::write(&path, serde_json::to_vec_pretty(config).expect("json")).expect("write");
    Command::new(envoy::envoy_bin())
        .args(["--mode", "validate", "-c"])
        .arg(&path)
        .output()
        .expect("run envoy (scripts/setup installs it)")
}

fn envoy_filters(example: &str, extra: &[&str]) -> Vec<Value> {
    let dir = examples_dir().join(example);
    let fd = dir.join("filterdeployment.yaml");
    let mut args = vec!["--no-resolve", fd.to_str().expect("path")];
    args.extend(extra);
    docs(&render_ok(&args))
        .into_iter()
        .filter(|d| d["kind"] == "EnvoyFilter")
        .collect()
}

#[test]
fn seed_example_runs_in_envoy() {
    let wasm = e2e::filter_wasm();
    let ef = envoy_filters("bookinfo-details", &[]).remove(0);
    let filter = http_filter(&ef, &wasm);
    let upstream = http1::Upstream::start(&[("server", "details")]);
    let config = envoy::bootstrap(upstream.addr(), vec![filter]);
    let v = validate(&config);
    assert!(
        v.status.success(),
        "envoy --mode validate refused the rendered filter:\n{}{}",
        String::from_utf8_lossy(&v.stdout),
        String::from_utf8_lossy(&v.stderr)
    );
    let proxy = Envoy::must_start(&config);
    let resp = http1::get(proxy.listener, "/details/0", &[]).expect("request");
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.header("hello"),
        Some("hello details"),
        "{}",
        proxy.log()
    );
}

#[test]
fn every_example_and_failure_policy_is_accepted_by_envoy() {
    let wasm = e2e::filter_wasm();
    let upstream = http1::Upstream::start(&[]);
    let cases = [
        ("bookinfo-details", "FAIL_CLOSED"),
        ("productpage-outbound", "FAIL_RELOAD"),
        // The WasmPlugin example through the agent path: failurePolicy open.
        ("bookinfo-details-wasmplugin", "FAIL_OPEN"),
    ];
    for (example, policy) in cases {
        let ef = envoy_filters(example, &["--mode", "envoy-filter"]).remove(0);
        let filter = http_filter(&ef, &wasm);
        assert_eq!(
            filter["typed_config"]["config"]["failure_policy"], policy,
            "{example}"
        );
        let config = envoy::bootstrap(upstream.addr(), vec![filter]);
        let v = validate(&config);
        assert!(
            v.status.success(),
            "{example}: envoy --mode validate:\n{}{}",
            String::from_utf8_lossy(&v.stdout),
            String::from_utf8_lossy(&v.stderr)
        );
    }
    // The outbound example's rule reaches the upstream.
    let ef = envoy_filters("productpage-outbound", &[]).remove(0);
    let proxy = Envoy::must_start(&envoy::bootstrap(
        upstream.addr(),
        vec![http_filter(&ef, &wasm)],
    ));
    http1::get(proxy.listener, "/reviews/0", &[]).expect("request");
    assert_eq!(
        upstream.last().header("x-caller"),
        Some("productpage-v1"),
        "{}",
        proxy.log()
    );
}

#[test]
fn envoy_rejects_a_misspelt_field_in_the_wasm_config() {
    // The same strictness the renderer's output is held to: Envoy refuses unknown fields.
    let wasm = e2e::filter_wasm();
    let ef = envoy_filters("bookinfo-details", &[]).remove(0);
    let mut filter = http_filter(&ef, &wasm);
    filter["typed_config"]["config"]["root_idd"] = Value::String("x".into());
    let upstream = http1::Upstream::start(&[]);
    let v = validate(&envoy::bootstrap(upstream.addr(), vec![filter]));
    assert!(!v.status.success());
    let out = format!(
        "{}{}",
        String::from_utf8_lossy(&v.stdout),
        String::from_utf8_lossy(&v.stderr)
    );
    assert!(out.contains("root_idd"), "{out}");
}

fn write_fd(dir: &Path, image: &str, parameters: &str) -> PathBuf {
    let path = dir.join("fd.yaml");
    let text = format!(
        "apiVersion: filters.envoy-wasm-toolkit.io/v1alpha1
kind: FilterDeployment
metadata: {{name: details-hello, namespace: default}}
spec:
  workload: {{name: details-v1, labels: {{app: details}}}}
  filter:
    image: {image}
    rootId: my_root_id
    parameters: '{parameters}'
"
    );
    std::fs::write(&path, text).expect("write");
    path
}

#[test]
fn parameters_the_filter_refuses_fail_with_its_reason() {
    let wasm = e2e::filter_wasm();
    let dir = tempfile::tempdir().expect("tempdir");
    let fd = write_fd(
        dir.path(),
        "registry.example.com/f/h:v1",
        r#"{"rules":[{"direction":"request","op":"sett","name":"x","value":"y"}]}"#,
    );
    let o = render(
        &[
            "--no-resolve",
            "--module",
            wasm.to_str().expect("path"),
            fd.to_str().expect("path"),
        ],
        &[],
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success(),
        "accepted:\n{}",
        String::from_utf8_lossy(&o.stdout)
    );
    assert!(err.contains(fd.to_str().expect("path")), "{err}");
    assert!(err.contains("spec.filter.parameters"), "{err}");
    assert!(
        err.contains("rules[0].op"),
        "the filter's own reason: {err}"
    );
    assert!(o.stdout.is_empty(), "nothing printed on failure");

    // Good parameters pass the same check.
    let fd = write_fd(
        dir.path(),
        "registry.example.com/f/h:v1",
        r#"{"name":"hello","value":"hello details"}"#,
    );
    render_ok(&[
        "--no-resolve",
        "--module",
        wasm.to_str().expect("path"),
        fd.to_str().expect("path"),
    ]);
}

/// `--no-resolve --module FILE` names the node's file by the module's sha256 (as the agent
/// names it): another module renders another EnvoyFilter, which reaches running sidecars.
#[test]
fn an_unresolved_render_with_a_module_names_its_content() {
    let wasm = e2e::filter_wasm();
    let dir = tempfile::tempdir().expect("tempdir");
    let fd = write_fd(
        dir.path(),
        "registry.example.com/f/h:v1",
        r#"{"name":"hello","value":"hello details"}"#,
    );
    let mut other = std::fs::read(&wasm).expect("read");
    // The same module with a custom section appended: another sha256.
    other.extend_from_slice(&[0, 4, 1, b'v', b'2', b'!']);
    let other_path = dir.path().join("other.wasm");
    std::fs::write(&other_path, &other).expect("write");
    let sha = |bytes: &[u8]| {
        let o = Command::new("sha256sum")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .and_then(|mut c| {
                use std::io::Write as _;
                c.stdin.take().expect("stdin").write_all(bytes)?;
                c.wait_with_output()
            })
            .expect("sha256sum");
        String::from_utf8_lossy(&o.stdout)[..64].to_string()
    };
    let rendered = |m: &Path| {
        render_ok(&[
            "--no-resolve",
            "--module",
            m.to_str().expect("path"),
            fd.to_str().expect("path"),
        ])
    };
    let one = rendered(&wasm);
    let two = rendered(&other_path);
    let first = sha(&std::fs::read(&wasm).expect("read"));
    assert!(
        one.contains(&format!("/var/local/lib/wasm-filters/{first}.wasm")),
        "{one}"
    );
    assert!(
        two.contains(&format!("/var/local/lib/wasm-filters/{}.wasm", sha(&other))),
        "{two}"
    );
    assert_ne!(one, two, "another module must render another EnvoyFilter");
}

#[test]
fn tags_are_pinned_from_the_registry_and_pulled_modules_check_parameters() {
    let wasm = e2e::filter_wasm();
    let reg = e2e::registry::Registry::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let docker = dir.path().join("docker");
    let reference = reg.reference("filters/header:v1");
    let push = Command::new(e2e::wasmctl_bin())
        .args(["push", &reference])
        .arg(&wasm)
        .args(["--root-id", "my_root_id", "--plain-http", "-q"])
        .env("DOCKER_CONFIG", &docker)
        .output()
        .expect("push");
    let out = String::from_utf8_lossy(&push.stdout).into_owned();
    assert!(
        push.status.success(),
        "{}",
        String::from_utf8_lossy(&push.stderr)
    );
    let pinned = out
        .lines()
        .find_map(|l| l.strip_prefix("pinned: "))
        .expect("pinned line")
        .trim()
        .to_string();

    let fd = write_fd(
        dir.path(),
        &reference,
        r#"{"name":"hello","value":"hello details"}"#,
    );
    let env = [("DOCKER_CONFIG", docker.as_path())];
    for mode in ["wasm-plugin", "envoy-filter"] {
        let o = render(
            &["--plain-http", "--mode", mode, fd.to_str().expect("path")],
            &env,
        );
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let d = docs(&String::from_utf8_lossy(&o.stdout));
        if mode == "wasm-plugin" {
            assert_eq!(d[0]["spec"]["url"], format!("oci://{pinned}"));
        } else {
            let cm = d
                .iter()
                .find(|d| d["kind"] == "ConfigMap")
                .expect("image list");
            let list: Value =
                serde_norway::from_str(cm["data"]["images.yaml"].as_str().expect("text"))
                    .expect("yaml");
            assert_eq!(list["images"][0]["image"], pinned.as_str());
        }
    }

    // The module pulled for the digest also checks the parameters.
    let fd = write_fd(
        dir.path(),
        &reference,
        r#"{"name":"x-a","value":"a\u0001b"}"#,
    );
    let o = render(&["--plain-http", fd.to_str().expect("path")], &env);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(
        err.contains("spec.filter.parameters") && err.contains("control"),
        "{err}"
    );

    // An unknown tag names the registry's answer.
    let fd = write_fd(
        dir.path(),
        &reg.reference("filters/header:nope"),
        r#"{"name":"a","value":"b"}"#,
    );
    let o = render(&["--plain-http", fd.to_str().expect("path")], &env);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(err.contains("nope") && err.contains("not found"), "{err}");
}

/// `spec.filter.type: NETWORK` (manifests/examples/tcp-bytes-count): the rendered network filter
/// runs in Envoy 1.40 before `tcp_proxy`, and the example TCP filter (examples/tcp-filter) logs
/// the bytes of a connection through it, both ways, when the connection closes.
#[test]
fn the_network_filter_example_counts_a_connections_bytes_in_envoy() {
    let wasm = e2e::tcp_filter_wasm();
    let ef = envoy_filters("tcp-bytes-count", &[]).remove(0);
    assert_eq!(ef["spec"]["configPatches"][1]["applyTo"], "NETWORK_FILTER");
    let filter = http_filter(&ef, &wasm);
    assert_eq!(
        filter["typed_config"]["@type"],
        "type.googleapis.com/envoy.extensions.filters.network.wasm.v3.Wasm"
    );
    let app = e2e::longlived::App::start();
    let config = serde_json::json!({
        "node": {"id": "test-node", "cluster": "test-cluster"},
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}},
        "static_resources": {
            "listeners": [{
                "name": "main",
                "address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}},
                "filter_chains": [{"filters": [filter, {
                    "name": "envoy.filters.network.tcp_proxy",
                    "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
                        "stat_prefix": "tcp",
                        "cluster": "app",
                    },
                }]}],
            }],
            "clusters": [{
                "name": "app",
                "connect_timeout": "2s",
                "type": "STATIC",
                "load_assignment": {
                    "cluster_name": "app",
                    "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {"socket_address": {
                        "address": "127.0.0.1",
                        "port_value": app.addr.port(),
                    }}}}]}],
                },
            }],
        },
    });
    let v = validate(&config);
    assert!(
        v.status.success(),
        "envoy --mode validate:\n{}{}",
        String::from_utf8_lossy(&v.stdout),
        String::from_utf8_lossy(&v.stderr)
    );
    let proxy = Envoy::must_start(&config);
    let r = http1::get(proxy.listener, "/through-tcp", &[]).expect("request through tcp_proxy");
    assert_eq!(r.status(), 200);
    let line = e2e::poll_until(
        std::time::Instant::now() + std::time::Duration::from_secs(10),
        || {
            proxy
                .log()
                .lines()
                .find(|l| l.contains("tcp-filter mongodb: downstream"))
                .map(str::to_string)
        },
    )
    .unwrap_or_else(|| panic!("no byte count logged\n{}", proxy.log()));
    let count = |side: &str| -> u64 {
        line.split(&format!("{side} "))
            .nth(1)
            .and_then(|t| t.split(' ').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    };
    assert!(count("downstream") > 0 && count("upstream") > 0, "{line}");
}
