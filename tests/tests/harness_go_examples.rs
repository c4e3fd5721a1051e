#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! The Go counterparts of the Rust examples, on the proxy-wasm Go SDK (standard Go's `wasip1`
//! port as a reactor, built by `scripts/go-example-build` on first use):
//!
//! - `examples/go-tcp-filter`, a network filter: counts each connection's bytes both ways and
//!   logs them on close, upper-cases one side or both, logs every callback, routes a connection
//!   to a `tcp_proxy` cluster. It meets the Rust filter's connection scenarios where it behaves
//!   the same (`tests/scenarios/connections/33-*`, `36-*`) and its own (under
//!   `examples/go-tcp-filter/scenarios/`: the events without `done`, which the Go SDK has no hook
//!   for), in the harness and in Envoy 1.40, which must agree on every byte, the closes, the
//!   cluster and every log line.
//! - `examples/go-grpc-filter`, an HTTP filter that authorizes each request with a gRPC call
//!   (or stream) through the ABI's gRPC functions, which the Go SDK does not wrap. It meets every
//!   scenario of the Rust gRPC filter (`tests/scenarios/grpc/`) in the harness, and in Envoy 1.40
//!   against a gRPC server (grpcio) per cluster: the same status, body and upstream headers, the
//!   same log, and the server receives the call the harness recorded (method, metadata,
//!   messages).

use e2e::envoy::{
    Envoy, bootstrap_with_clusters, network_wasm_filter, tcp_proxy_bootstrap, wasm_filter,
};
use e2e::fidelity::{envoy_wasm_logs, wire};
use e2e::http1::{Client, Upstream};
use proxy_wasm_harness::abi::LogLevel;
use proxy_wasm_harness::scenario::{ConnectionOutcome, Outcome, Scenario};
use proxy_wasm_harness::{Host, Module, Plugin};
use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The connection scenarios the Go network filter meets: the Rust filter's where the behaviour is
/// the same, then its own.
const TCP_SCENARIOS: &[&str] = &[
    "tests/scenarios/connections/33-tcp-filter-counts-bytes.yaml",
    "tests/scenarios/connections/36-tcp-filter-routes-to-a-cluster.yaml",
    "examples/go-tcp-filter/scenarios/01-events-upstream-closes-first.yaml",
    "examples/go-tcp-filter/scenarios/02-events-ends-left-open.yaml",
    "examples/go-tcp-filter/scenarios/03-counts-many-chunks.yaml",
];

/// The gRPC scenarios: every one of the Rust gRPC filter's.
const GRPC_SCENARIOS: &str = "tests/scenarios/grpc";

/// How long Envoy may take to write a log line the harness wrote.
const LOG_DEADLINE: Duration = Duration::from_secs(10);

/// The Go network filter compiled for the harness, once per test process (compiling a 3.4 MB
/// module takes seconds in a test build).
fn tcp_module() -> Module {
    static COMPILED: OnceLock<Module> = OnceLock::new();
    COMPILED
        .get_or_init(|| e2e::harness_module(&e2e::go_tcp_filter_wasm()))
        .clone()
}

/// The Go gRPC filter compiled for the harness, once per test process.
fn grpc_module() -> Module {
    static COMPILED: OnceLock<Module> = OnceLock::new();
    COMPILED
        .get_or_init(|| e2e::harness_module(&e2e::go_grpc_filter_wasm()))
        .clone()
}

fn load(path: &Path) -> Scenario {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    Scenario::from_yaml(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn tcp_scenarios() -> Vec<(String, Scenario)> {
    TCP_SCENARIOS
        .iter()
        .map(|f| (f.to_string(), load(&e2e::workspace_root().join(f))))
        .collect()
}

fn grpc_scenarios() -> Vec<(String, Scenario)> {
    let dir = e2e::workspace_root().join(GRPC_SCENARIOS);
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    assert!(files.len() >= 6, "only {} gRPC scenarios", files.len());
    files
        .iter()
        .map(|p| (p.display().to_string(), load(p)))
        .collect()
}

/// The module's log lines at debug and above, as (level, message).
fn harness_logs(host: &Host) -> Vec<(String, String)> {
    host.logs()
        .into_iter()
        .filter(|l| l.level >= LogLevel::Debug)
        .map(|l| (l.level.to_string(), l.message))
        .collect()
}

/// A plugin of `wasm` started as Envoy 1.40 starts one (a configuration canary, the main
/// thread's copy besides the worker's), `wasm` logs at debug, knowing `clusters`.
fn start(host: &Host, module: &Module, s: &Scenario, clusters: &[&str]) -> Plugin {
    host.set_log_level(LogLevel::Debug);
    host.set_clusters(clusters);
    host.plugin(module)
        .name("scenario")
        .vm_id("scenario")
        .root_id(&s.root_id)
        .configuration(&s.configuration)
        .canary(true)
        .main_thread(true)
        .start()
        .unwrap_or_else(|e| panic!("plugin did not start: {e}; logs: {:?}", host.logs()))
}

/// Every failure of `checks`, each prefixed with `side`.
fn failures(side: &str, checks: Vec<Result<(), Vec<String>>>) -> Vec<String> {
    checks
        .into_iter()
        .filter_map(Result::err)
        .flatten()
        .map(|b| format!("{side}: {b}"))
        .collect()
}

/// A connection scenario through the Go filter in the harness: the outcome and the log; the
/// scenario's expectations checked (bytes, closes, cluster, log lines, filter state).
fn tcp_in_harness(file: &str, s: &Scenario) -> (ConnectionOutcome, Vec<(String, String)>) {
    let host = Host::new();
    let plugin = start(&host, &tcp_module(), s, &["upstream"]);
    let outcome = s
        .run_connection(&plugin)
        .unwrap_or_else(|e| panic!("{file}: {e}"));
    let logs = harness_logs(&host);
    let set: Vec<(String, String)> = host
        .filter_states_set()
        .into_iter()
        .map(|f| (f.name, String::from_utf8_lossy(&f.value).into_owned()))
        .collect();
    let bad = failures(
        "harness",
        vec![
            s.check_connection(&outcome),
            s.check_observed(&logs, &[], &[]),
            s.check_observed_filter_state(&set),
        ],
    );
    assert!(bad.is_empty(), "{file}: {bad:#?}");
    (outcome, logs)
}

#[test]
fn the_go_tcp_filter_meets_the_connection_scenarios_in_the_harness() {
    for (file, s) in tcp_scenarios() {
        let (_, logs) = tcp_in_harness(&file, &s);
        // The counts line comes from the Go module (the Rust one says `tcp-filter PREFIX:`).
        assert!(
            logs.iter().any(|(l, m)| l == "info"
                && m.starts_with("go-tcp-filter ")
                && m.contains(" bytes, upstream ")),
            "{file}: no counts line from the Go filter: {logs:?}"
        );
    }
}

#[test]
fn the_go_tcp_filter_refuses_a_bad_configuration() {
    for (config, why) in [
        (r#"{"prefix": 1}"#, "prefix"),
        (r#"{"uppercase": "sideways"}"#, "uppercase"),
        (r#"{"upper": "both"}"#, "upper"),
        (r#"{"cluster": ""}"#, "cluster"),
        ("mongodb", "invalid"),
    ] {
        let host = Host::new();
        let started = host
            .plugin(&tcp_module())
            .root_id("go_tcp_filter")
            .configuration(config)
            .start();
        assert!(started.is_err(), "{config} was accepted");
        let warned = host.logs_at(LogLevel::Warn);
        assert!(
            warned
                .iter()
                .any(|m| m.contains("go-tcp-filter: invalid configuration") && m.contains(why)),
            "{config}: {warned:?}"
        );
    }
}

#[test]
fn envoy_runs_the_go_tcp_filter_as_the_harness_does() {
    let mut problems = Vec::new();
    for (file, s) in tcp_scenarios() {
        let (h, h_logs) = tcp_in_harness(&file, &s);
        let (e, e_logs) = tcp_in_envoy(&s, &h_logs);
        problems.extend(
            failures(
                "envoy",
                vec![s.check_connection(&e), s.check_observed(&e_logs, &[], &[])],
            )
            .into_iter()
            .map(|b| format!("{file}: {b}")),
        );
        if h != e {
            problems.push(format!("{file}: outcome\n  harness {h:?}\n  envoy   {e:?}"));
        }
        if h_logs != e_logs {
            problems.push(format!(
                "{file}: logs\n  harness {h_logs:?}\n  envoy   {e_logs:?}"
            ));
        }
    }
    assert!(problems.is_empty(), "{problems:#?}");
}

/// A connection scenario through the Go filter before `tcp_proxy` in Envoy, an upstream server
/// per cluster (`e2e::tcp::drive` plays the steps); the outcome and the module's log, read once it
/// has as many lines as the harness's (`want`) or the deadline passed.
fn tcp_in_envoy(
    s: &Scenario,
    want: &[(String, String)],
) -> (ConnectionOutcome, Vec<(String, String)>) {
    let bind = || TcpListener::bind("127.0.0.1:0").unwrap();
    let upstream = bind();
    let others: Vec<(String, TcpListener)> =
        s.tcp_clusters.iter().map(|n| (n.clone(), bind())).collect();
    let extra: Vec<(&str, SocketAddr)> = others
        .iter()
        .map(|(n, l)| (n.as_str(), l.local_addr().unwrap()))
        .collect();
    let filter = network_wasm_filter(
        "scenario",
        &s.root_id,
        &e2e::go_tcp_filter_wasm(),
        &s.configuration,
    );
    let config = tcp_proxy_bootstrap(upstream.local_addr().unwrap(), vec![filter], &extra);
    let envoy = Envoy::must_start(&config);
    let mut upstreams: Vec<(&str, &TcpListener)> = vec![("upstream", &upstream)];
    upstreams.extend(others.iter().map(|(n, l)| (n.as_str(), l)));
    let outcome = e2e::tcp::drive(&envoy, &upstreams, s)
        .unwrap_or_else(|e| panic!("{e}\n---- envoy log ----\n{}", envoy.log()));
    (outcome, envoy_logs(&envoy, want.len()))
}

/// The module's lines in Envoy's log once there are at least `n` (or the deadline passed).
fn envoy_logs(envoy: &Envoy, n: usize) -> Vec<(String, String)> {
    let deadline = Instant::now() + LOG_DEADLINE;
    e2e::poll_until(deadline, || {
        let got = envoy_wasm_logs(&envoy.log());
        (got.len() >= n).then_some(())
    });
    envoy_wasm_logs(&envoy.log())
}

/// What a gRPC server received of one call: (`/SERVICE/METHOD`, the `x-` metadata, the
/// messages).
type Received = (String, Vec<(String, String)>, Vec<Vec<u8>>);

/// What a gRPC scenario showed: the outcome, the module's log as (level, message), and each call
/// as its server received it, by cluster.
type GrpcObserved = (Outcome, Vec<(String, String)>, Vec<(String, Received)>);

/// A gRPC scenario through the Go filter in the harness: the outcome, the log and the calls as
/// their servers would receive them; the scenario's expectations checked.
fn grpc_in_harness(file: &str, s: &Scenario) -> GrpcObserved {
    let host = Host::new();
    let mut known = vec!["upstream"];
    known.extend(s.grpc.keys().map(String::as_str));
    let plugin = start(&host, &grpc_module(), s, &known);
    let outcome = s.run(&plugin).unwrap_or_else(|e| panic!("{file}: {e}"));
    let logs = harness_logs(&host);
    let made = host.grpc_calls_made();
    let rows: Vec<(String, String, String)> = made
        .iter()
        .map(|c| (c.service.clone(), c.service_name.clone(), c.method.clone()))
        .collect();
    let bad = failures(
        "harness",
        vec![
            s.check(&outcome),
            s.check_observed(&logs, &[], &[]),
            s.check_observed_grpc(&rows),
        ],
    );
    assert!(bad.is_empty(), "{file}: {bad:#?}");
    let calls = made
        .iter()
        .map(|c| {
            let metadata = proxy_wasm_harness::scenario::grpc_request_metadata(c)
                .into_iter()
                .filter(|(k, _)| k.starts_with("x-"))
                .collect();
            (
                c.service.clone(),
                (
                    format!("/{}/{}", c.service_name, c.method),
                    metadata,
                    c.sent.clone(),
                ),
            )
        })
        .collect();
    (outcome, logs, calls)
}

#[test]
fn the_go_grpc_filter_meets_the_grpc_scenarios_in_the_harness() {
    for (file, s) in grpc_scenarios() {
        let (_, logs, calls) = grpc_in_harness(&file, &s);
        // What the filter sends: the request's path as the message and in its metadata.
        let path = &s.request.path;
        for (cluster, (method, metadata, messages)) in &calls {
            assert_eq!(cluster, "grpc_auth", "{file}");
            let x_path: Vec<&String> = metadata
                .iter()
                .filter(|(k, _)| k == "x-request-path")
                .map(|(_, v)| v)
                .collect();
            assert_eq!(x_path, [path], "{file}: {metadata:?}");
            let want: Vec<Vec<u8>> = if method.ends_with("/Watch") {
                vec![format!("one:{path}").into_bytes(), b"two".to_vec()]
            } else {
                vec![path.clone().into_bytes()]
            };
            assert_eq!(messages, &want, "{file}");
        }
        assert!(
            logs.iter().any(|(_, m)| m.starts_with("go-grpc-filter: ")),
            "{file}: the Go filter's start-up line is missing: {logs:?}"
        );
    }
    // The unary call's timeout is the configuration's (scenario 05: 200 ms).
    let s = load(
        &e2e::workspace_root()
            .join(GRPC_SCENARIOS)
            .join("05-unary-timeout.yaml"),
    );
    let host = Host::new();
    host.set_clusters(&["upstream", "grpc_auth"]);
    let plugin = host
        .plugin(&grpc_module())
        .configuration(&s.configuration)
        .start()
        .unwrap();
    s.run(&plugin).unwrap();
    let made = host.grpc_calls_made();
    assert_eq!(made.len(), 1);
    assert_eq!((made[0].timeout_ms, made[0].stream), (200, false));
}

#[test]
fn the_go_grpc_filter_refuses_a_bad_configuration() {
    for (config, why) in [
        ("sideways", "unknown mode"),
        ("unary,grpc_auth,soon", "timeout"),
    ] {
        let host = Host::new();
        let started = host.plugin(&grpc_module()).configuration(config).start();
        assert!(started.is_err(), "{config} was accepted");
        let errors = host.logs_at(LogLevel::Error);
        assert!(
            errors.iter().any(|m| m.contains(why)),
            "{config}: {errors:?}"
        );
    }
}

#[test]
fn envoy_runs_the_go_grpc_filter_as_the_harness_does() {
    let mut problems = Vec::new();
    for (file, s) in grpc_scenarios() {
        let (h, h_logs, h_calls) = grpc_in_harness(&file, &s);
        let (e, e_logs, e_calls) = grpc_in_envoy(&s, h_logs.len());
        problems.extend(
            failures(
                "envoy",
                vec![s.check(&e), s.check_observed(&e_logs, &[], &[])],
            )
            .into_iter()
            .map(|b| format!("{file}: {b}")),
        );
        let seen = |o: &Outcome| {
            (
                o.status,
                o.body.clone(),
                o.upstream.as_ref().map(|u| {
                    u.headers
                        .iter()
                        .filter(|(k, _)| k.starts_with("x-grpc"))
                        .cloned()
                        .collect::<Vec<_>>()
                }),
            )
        };
        if seen(&h) != seen(&e) {
            problems.push(format!(
                "{file}: outcome\n  harness {:?}\n  envoy   {:?}",
                seen(&h),
                seen(&e)
            ));
        }
        if h_logs != e_logs {
            problems.push(format!(
                "{file}: logs\n  harness {h_logs:?}\n  envoy   {e_logs:?}"
            ));
        }
        if h_calls != e_calls {
            problems.push(format!(
                "{file}: gRPC calls\n  harness {h_calls:?}\n  server  {e_calls:?}"
            ));
        }
    }
    assert!(problems.is_empty(), "{problems:#?}");
}

/// `tests/grpc_server.py` (grpcio) on 127.0.0.1, answering one cluster's methods as the scenario
/// says; killed when dropped.
struct GrpcServer {
    child: std::process::Child,
    stdout: std::io::BufReader<std::process::ChildStdout>,
    port: u16,
}

impl GrpcServer {
    fn start(
        field: &str,
        methods: &BTreeMap<String, proxy_wasm_harness::scenario::GrpcAnswer>,
    ) -> GrpcServer {
        use base64::Engine as _;
        use std::io::BufRead as _;
        let b64 = base64::engine::general_purpose::STANDARD;
        let answers: serde_json::Map<String, serde_json::Value> = methods
            .iter()
            .map(|(method, a)| {
                let messages: Vec<String> = a
                    .message_bytes(&format!("{field}.{method}"))
                    .unwrap()
                    .iter()
                    .map(|m| b64.encode(m))
                    .collect();
                let answer = serde_json::json!({
                    "status": a.status,
                    "message": a.message,
                    "messages": messages,
                    "initial_metadata": a.initial_metadata,
                    "trailing_metadata": a.trailing_metadata,
                    "delay_ms": a.delay_ms.unwrap_or(0),
                });
                (format!("/{method}"), answer)
            })
            .collect();
        let mut child = std::process::Command::new(e2e::python())
            .arg(e2e::workspace_root().join("tests/grpc_server.py"))
            .arg(serde_json::Value::Object(answers).to_string())
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        let port = line
            .trim()
            .strip_prefix("port ")
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("the gRPC server did not start: {line:?}"));
        GrpcServer {
            child,
            stdout,
            port,
        }
    }

    /// Stop the server (its stdin closed) and return what it received, in order.
    fn received(mut self) -> Vec<Received> {
        use base64::Engine as _;
        use std::io::BufRead as _;
        drop(self.child.stdin.take());
        let b64 = base64::engine::general_purpose::STANDARD;
        let mut got = Vec::new();
        for line in (&mut self.stdout).lines() {
            let v: serde_json::Value = serde_json::from_str(&line.unwrap()).unwrap();
            let metadata = v["metadata"]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| {
                    (
                        p[0].as_str().unwrap().to_string(),
                        p[1].as_str().unwrap().to_string(),
                    )
                })
                .collect();
            let messages = v["messages"]
                .as_array()
                .unwrap()
                .iter()
                .map(|m| b64.decode(m.as_str().unwrap()).unwrap())
                .collect();
            got.push((
                v["method"].as_str().unwrap().to_string(),
                metadata,
                messages,
            ));
        }
        got
    }
}

impl Drop for GrpcServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A gRPC scenario through the Go filter in Envoy: a gRPC server per `grpc:` cluster behind an
/// HTTP/2 cluster of that name, the scenario's upstream behind the filter. The outcome, the
/// module's log (once it has `n` lines, or the deadline passed) and each call as its server
/// received it.
fn grpc_in_envoy(s: &Scenario, n: usize) -> GrpcObserved {
    let h: Vec<(&str, &str)> = s
        .upstream
        .headers
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let upstream = Upstream::answering(s.upstream.status, &h, Some(&s.upstream.body));
    let servers: Vec<(String, GrpcServer)> = s
        .grpc
        .iter()
        .map(|(cluster, methods)| {
            (
                cluster.clone(),
                GrpcServer::start(&format!("grpc.{cluster}"), methods),
            )
        })
        .collect();
    let addrs: Vec<(&str, SocketAddr)> = servers
        .iter()
        .map(|(n, g)| (n.as_str(), SocketAddr::from(([127, 0, 0, 1], g.port))))
        .collect();
    let filter = wasm_filter(
        "scenario",
        &s.root_id,
        &e2e::go_grpc_filter_wasm(),
        &s.configuration,
    );
    let mut config = bootstrap_with_clusters(upstream.addr(), vec![filter], &addrs);
    for c in config["static_resources"]["clusters"]
        .as_array_mut()
        .unwrap()
    {
        if s.grpc.contains_key(c["name"].as_str().unwrap_or_default()) {
            // gRPC needs HTTP/2 to the server (and no grpc-timeout: see grpc_cluster_options).
            c["typed_extension_protocol_options"] = e2e::fidelity::grpc_cluster_options();
        }
    }
    let envoy = Envoy::must_start(&config);
    let sent: Vec<(String, String)> = s
        .client_headers()
        .into_iter()
        .filter(|(k, _)| k != "content-length")
        .collect();
    let headers: Vec<(&str, &str)> = sent.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let resp = Client::connect(envoy.listener)
        .unwrap()
        .send(
            &s.request.method,
            &s.request.path,
            &headers,
            s.request.body.as_bytes(),
        )
        .unwrap_or_else(|e| panic!("request failed: {e}\n{}", envoy.log()));
    let outcome = Outcome {
        status: resp.status(),
        response_headers: resp.headers.clone(),
        body: resp.text(),
        response_trailers: Vec::new(),
        upstream: upstream.received().last().map(wire),
        local_response: None,
    };
    let logs = envoy_logs(&envoy, n);
    let calls = servers
        .into_iter()
        .flat_map(|(cluster, server)| {
            server
                .received()
                .into_iter()
                .map(move |r| (cluster.clone(), r))
        })
        .collect();
    (outcome, logs, calls)
}
