//! Fidelity: every scenario under `tests/scenarios/` runs in the harness and in a real Envoy 1.40
//! with the same module, in front of upstreams and called clusters that answer as the scenario
//! says. Both must meet the scenario's expectations and agree on everything observable, in
//! order and with duplicates: the status, every response header and the body the client got;
//! the method, path, every header and the body the upstream received; each call the module made
//! as the called cluster received it; and every line the module logged (level and text, the
//! configuration canary's start-up lines included). The only values masked are the ones that
//! differ on every run (`e2e::fidelity::PER_RUN`).
//!
//! The connection scenarios under `tests/scenarios/connections/` run a network filter before
//! `tcp_proxy` in Envoy (the driver is `e2e::tcp`) and in the harness
//! (`Scenario::run_connection`): both must meet the scenario's expectations and agree on every
//! byte the upstream and the client received, the order in which the proxy closed the two ends,
//! every line the module logged (with `log_events`, the example TCP filter logs each callback
//! and its arguments: the order of the data and close callbacks, their end of stream flags and
//! peer types), each call it made and its metrics. A scenario with `tcp_clusters` gives
//! `tcp_proxy` a server per cluster: which one got the connection (the filter picks it with the
//! filter state object `envoy.tcp_proxy.cluster`) must agree too, and so must the filter state
//! the scenario expects (Envoy's from `tcp_proxy`'s access log).

//!
//! The stream scenarios under `tests/scenarios/streams/` run the stream filter
//! (`e2e::fidelity::stream_filter_wat`, which logs every callback: each body chunk's size, end of
//! stream and buffered bytes, each header and trailer map) behind a Lua filter and a
//! `set_filter_state` filter that set the scenario's metadata and filter state, with HTTP/1
//! trailers enabled and the scenario's buffer limit; the client and the upstream write each body
//! piece on its own. The same comparison holds, trailers each way included.
//!
//! The gRPC scenarios under `tests/scenarios/grpc/` run the example gRPC filter
//! (examples/grpc-filter) against a real gRPC server per `grpc:` cluster (grpcio,
//! `tests/grpc_server.py`, answering as the scenario says) behind an HTTP/2 cluster in Envoy;
//! besides the above, each gRPC call as the server received it (method, `x-` metadata,
//! messages) is compared, and the module's log shows the order of its gRPC callbacks.

// Helpers outside #[test] functions fail the test loudly.
#![allow(clippy::unwrap_used, clippy::panic)]

use e2e::envoy::{
    Envoy, bootstrap_with_clusters, network_wasm_filter, tcp_proxy_bootstrap, wasm_filter,
};
use e2e::fidelity::{
    StreamAnswer, StreamUpstream, connection_scenarios, envoy_wasm_logs, filters_before,
    grpc_scenarios, mask, mask_logged, read_streamed, scenarios, stream_bootstrap,
    stream_scenarios, wire, write_streamed,
};
use e2e::http1::{Client, Upstream};
use proxy_wasm_harness::Host;
use proxy_wasm_harness::abi::LogLevel;
use proxy_wasm_harness::scenario::{ConnectionOutcome, Outcome, Scenario, WireRequest};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Everything a scenario lets one observe, from either side.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Observed {
    outcome: Outcome,
    /// Each HTTP call as its cluster received it: (cluster, request).
    calls: Vec<(String, WireRequest)>,
    /// Each gRPC call as its server received it.
    grpc_calls: Vec<GrpcReceived>,
    /// The module's log lines: (level, message), in order.
    logs: Vec<(String, String)>,
    /// The module's metrics once its tick has flushed what it sums: (name, kind, value), by
    /// name; a histogram's value is not compared (Envoy shows quantiles, not samples).
    metrics: Vec<(String, String, i64)>,
}

/// A gRPC call as its server received it (or the harness recorded it).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct GrpcReceived {
    cluster: String,
    /// `/SERVICE/METHOD`.
    path: String,
    /// The initial metadata entries whose names start with `x-`, in order.
    metadata: Vec<(String, String)>,
    /// The messages, in order.
    messages: Vec<Vec<u8>>,
}

/// Longer than the slowest tick of the scenario modules (the header filter flushes its
/// counters every second), so both sides report what the request added.
const SETTLE: Duration = Duration::from_millis(1300);

impl Observed {
    fn masked(mut self) -> Observed {
        // The local response's details are the harness's own account: a client sees only the
        // status, headers and body, compared above.
        self.outcome.local_response = None;
        mask(&mut self.outcome.response_headers);
        if let Some(u) = &mut self.outcome.upstream {
            mask(&mut u.headers);
        }
        for (_, c) in &mut self.calls {
            mask(&mut c.headers);
        }
        for (_, line) in &mut self.logs {
            *line = mask_logged(line);
        }
        self
    }
}

/// The module a scenario names.
fn module_file(name: &str) -> PathBuf {
    match name {
        "" | "header_filter" => e2e::filter_wasm(),
        "callout_filter" => e2e::callout_wasm(),
        "go_filter" => e2e::go_wasm(),
        "tcp_filter" => e2e::tcp_filter_wasm(),
        "stream_filter" => e2e::fidelity::stream_filter_wasm(),
        "grpc_filter" => grpc_wasm(),
        other => panic!("unknown module {other:?} in a scenario"),
    }
}

/// `grpc_filter.wasm` (examples/grpc-filter), built once per test process as
/// `e2e::callout_wasm` builds its module.
fn grpc_wasm() -> PathBuf {
    static BUILT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BUILT
        .get_or_init(|| {
            let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
            let status = std::process::Command::new(cargo)
                .current_dir(e2e::workspace_root())
                .args(["build", "--profile", "wasm", "--target", "wasm32-wasip1"])
                .args(["-p", "grpc-filter"])
                .status()
                .unwrap();
            assert!(
                status.success(),
                "building grpc_filter.wasm failed: {status}"
            );
            let path = e2e::target_dir().join("wasm32-wasip1/wasm/grpc_filter.wasm");
            assert!(path.exists(), "{} missing after build", path.display());
            path
        })
        .clone()
}

fn in_harness(s: &Scenario) -> Result<Observed, String> {
    let module = e2e::harness_module(&module_file(&s.module));
    let host = Host::new();
    // As Envoy runs it: `--component-log-level wasm:debug`, the configuration canary and the
    // main thread's copy besides the worker's, the upstream cluster and the scenario's
    // clusters, no others.
    host.set_log_level(LogLevel::Debug);
    let mut known: Vec<&str> = vec!["upstream"];
    known.extend(s.clusters.keys().map(String::as_str));
    known.extend(s.grpc.keys().map(String::as_str));
    host.set_clusters(&known);
    let plugin = host
        .plugin(&module)
        .name("scenario")
        .vm_id("scenario")
        .root_id(&s.root_id)
        .configuration(&s.configuration)
        .canary(true)
        .main_thread(true)
        .start()
        .map_err(|e| format!("plugin did not start: {e}; logs: {:?}", host.logs()))?;
    let outcome = s.run(&plugin).map_err(|e| e.to_string())?;
    let calls = host
        .http_calls_made()
        .iter()
        .map(|c| (c.upstream.clone(), WireRequest::of_call(c)))
        .collect();
    let grpc_calls = host
        .grpc_calls_made()
        .iter()
        .map(|c| GrpcReceived {
            cluster: c.service.clone(),
            path: format!("/{}/{}", c.service_name, c.method),
            metadata: proxy_wasm_harness::scenario::grpc_request_metadata(c)
                .into_iter()
                .filter(|(k, _)| k.starts_with("x-"))
                .collect(),
            messages: c.sent.clone(),
        })
        .collect();
    host.advance(SETTLE).map_err(|e| e.to_string())?;
    let logs = host
        .logs()
        .into_iter()
        .filter(|l| l.level >= LogLevel::Debug)
        .map(|l| (l.level.to_string(), l.message))
        .collect();
    let metrics = harness_metrics(&host);
    Ok(Observed {
        outcome,
        calls,
        grpc_calls,
        logs,
        metrics,
    })
}

/// A scenario in Envoy as a client and an upstream that write each body piece on its own
/// (`e2e::fidelity::write_streamed`), with trailers, behind the filters that set the scenario's
/// metadata and filter state, with its buffer limit.
fn streamed_in_envoy(s: &Scenario) -> Result<Observed, String> {
    let pieces = s.upstream.pieces_of("upstream")?;
    let upstream = StreamUpstream::start(StreamAnswer {
        status: s.upstream.status,
        headers: s.upstream.headers.clone(),
        pieces,
        trailers: (!s.upstream.trailers.is_empty()).then(|| s.upstream.trailers.clone()),
    })
    .map_err(|e| e.to_string())?;
    if !s.clusters.is_empty() {
        return Err("stream scenarios call no cluster".into());
    }
    let mut filters = filters_before(s);
    filters.push(wasm_filter(
        "scenario",
        &s.root_id,
        &module_file(&s.module),
        &s.configuration,
    ));
    let envoy = Envoy::start(&stream_bootstrap(
        upstream.addr(),
        filters,
        &[],
        s.buffer_limit,
    ))
    .map_err(|f| format!("{}\n{}", f.reason, f.log))?;
    let sent: Vec<(String, String)> = s
        .client_headers()
        .into_iter()
        .filter(|(k, _)| k != "content-length")
        .collect();
    let conn = std::net::TcpStream::connect(envoy.listener).map_err(|e| e.to_string())?;
    conn.set_read_timeout(Some(Duration::from_secs(30)))
        .map_err(|e| e.to_string())?;
    let mut w = conn.try_clone().map_err(|e| e.to_string())?;
    let trailers = (!s.request.trailers.is_empty()).then(|| s.request.trailers.clone());
    // The client may stop writing when Envoy answers early (a 413): what it reads counts.
    let written = write_streamed(
        &mut w,
        &format!("{} {} HTTP/1.1", s.request.method, s.request.path),
        &sent,
        &s.request.pieces()?,
        trailers.as_deref(),
    );
    let mut r = std::io::BufReader::new(conn);
    let (resp, response_trailers) = read_streamed(&mut r)
        .map_err(|e| {
            format!(
                "response: {e} (request written: {written:?})\n{}",
                envoy.log()
            )
        })?
        .ok_or_else(|| format!("no response (request written: {written:?})"))?;
    let upstream_request = upstream.received().last().map(|(m, t)| WireRequest {
        trailers: t.clone(),
        ..wire(m)
    });
    std::thread::sleep(SETTLE);
    Ok(Observed {
        outcome: Outcome {
            status: resp.status(),
            response_headers: resp.headers.clone(),
            body: resp.text(),
            response_trailers,
            upstream: upstream_request,
            local_response: None,
        },
        calls: Vec::new(),
        grpc_calls: Vec::new(),
        logs: envoy_wasm_logs(&envoy.log()),
        metrics: envoy_metrics(&envoy)?,
    })
}

fn in_envoy(s: &Scenario) -> Result<Observed, String> {
    let answer = |a: &proxy_wasm_harness::scenario::Answer| {
        let h: Vec<(&str, &str)> = a
            .headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        Upstream::answering(a.status, &h, Some(&a.body))
    };
    let upstream = answer(&s.upstream);
    let clusters: Vec<(String, Upstream)> = s
        .clusters
        .iter()
        .map(|(n, a)| (n.clone(), answer(a)))
        .collect();
    let extra: Vec<(&str, SocketAddr)> = clusters
        .iter()
        .map(|(n, u)| (n.as_str(), u.addr()))
        .collect();
    let filter = wasm_filter(
        "scenario",
        &s.root_id,
        &module_file(&s.module),
        &s.configuration,
    );
    let envoy = Envoy::start(&bootstrap_with_clusters(
        upstream.addr(),
        vec![filter],
        &extra,
    ))
    .map_err(|f| format!("{}\n{}", f.reason, f.log))?;
    // What the client sends, as the harness models it (Client adds content-length itself).
    let sent: Vec<(String, String)> = s
        .client_headers()
        .into_iter()
        .filter(|(k, _)| k != "content-length")
        .collect();
    let headers: Vec<(&str, &str)> = sent.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let mut c = Client::connect(envoy.listener).map_err(|e| e.to_string())?;
    let resp = c
        .send(
            &s.request.method,
            &s.request.path,
            &headers,
            s.request.body.as_bytes(),
        )
        .map_err(|e| format!("request failed: {e}\n{}", envoy.log()))?;
    let outcome = Outcome {
        status: resp.status(),
        response_headers: resp.headers.clone(),
        body: resp.text(),
        response_trailers: Vec::new(),
        upstream: upstream.received().last().map(wire),
        local_response: None,
    };
    // Every cluster's requests, in the order they arrived.
    let mut arrived = Vec::new();
    for (name, u) in &clusters {
        arrived.extend(
            u.received()
                .into_iter()
                .map(|m| (m.received_at, name.clone(), m)),
        );
    }
    arrived.sort_by_key(|(at, _, _)| *at);
    let calls = arrived
        .iter()
        .map(|(_, name, m)| (name.clone(), wire(m)))
        .collect();
    std::thread::sleep(SETTLE);
    Ok(Observed {
        outcome,
        calls,
        grpc_calls: Vec::new(),
        logs: envoy_wasm_logs(&envoy.log()),
        metrics: envoy_metrics(&envoy)?,
    })
}

/// The module's metrics in Envoy: (name without `wasmcustom.`, kind, value), by name; a
/// histogram's value is 0.
fn envoy_metrics(envoy: &Envoy) -> Result<Vec<(String, String, i64)>, String> {
    let mut metrics = Vec::new();
    for (kind, query) in [
        ("counter", "Counters"),
        ("gauge", "Gauges"),
        ("histogram", "Histograms"),
    ] {
        let r = e2e::http1::get(
            envoy.admin,
            &format!("/stats?type={query}&filter=^wasmcustom\\."),
            &[],
        )
        .map_err(|e| e.to_string())?;
        for line in r.text().lines() {
            let Some((name, value)) = line.split_once(": ") else {
                continue;
            };
            let Some(name) = name.strip_prefix("wasmcustom.") else {
                continue;
            };
            let value = if kind == "histogram" {
                0
            } else {
                value.trim().parse().map_err(|_| format!("stat {line:?}"))?
            };
            metrics.push((name.to_string(), kind.to_string(), value));
        }
    }
    metrics.sort();
    Ok(metrics)
}

/// The harness's metrics, as [`envoy_metrics`] shows Envoy's.
fn harness_metrics(host: &Host) -> Vec<(String, String, i64)> {
    let mut metrics: Vec<(String, String, i64)> = host
        .metrics()
        .into_iter()
        .map(|m| {
            let kind = format!("{:?}", m.kind).to_lowercase();
            let value = if kind == "histogram" { 0 } else { m.value };
            (m.name, kind, value)
        })
        .collect();
    metrics.sort();
    metrics
}

/// What differs, part by part, each side's part on one line.
fn differences(h: &Observed, e: &Observed) -> Vec<String> {
    let mut out = Vec::new();
    let mut part = |name: &str, h: String, e: String| {
        if h != e {
            out.push(format!("{name}:\n  harness {h}\n  envoy   {e}"));
        }
    };
    let (ho, eo) = (&h.outcome, &e.outcome);
    part("status", format!("{}", ho.status), format!("{}", eo.status));
    part(
        "response headers",
        format!("{:?}", ho.response_headers),
        format!("{:?}", eo.response_headers),
    );
    part("body", format!("{:?}", ho.body), format!("{:?}", eo.body));
    part(
        "response trailers",
        format!("{:?}", ho.response_trailers),
        format!("{:?}", eo.response_trailers),
    );
    part(
        "upstream request",
        format!("{:?}", ho.upstream),
        format!("{:?}", eo.upstream),
    );
    part("calls", format!("{:?}", h.calls), format!("{:?}", e.calls));
    part(
        "grpc calls",
        format!("{:?}", h.grpc_calls),
        format!("{:?}", e.grpc_calls),
    );
    part("logs", format!("{:?}", h.logs), format!("{:?}", e.logs));
    part(
        "metrics",
        format!("{:?}", h.metrics),
        format!("{:?}", e.metrics),
    );
    out
}

#[test]
fn every_scenario_agrees_between_the_harness_and_envoy() {
    let all = scenarios();
    assert!(all.len() >= 20, "only {} scenarios", all.len());
    let metrics_seen = compare_all(&all, in_envoy);
    assert!(metrics_seen > 0, "no scenario module reported a metric");
}

/// The stream scenarios (`tests/scenarios/streams/`): bodies in pieces, each one body callback
/// in Envoy (the module logs each callback's size, end of stream and buffered bytes), trailers
/// both ways, a filter that buffers a 1 MiB body until the end of stream, one that rewrites
/// every chunk, the buffer limit's 413, and metadata and filter state other filters set.
#[test]
fn every_stream_scenario_agrees_between_the_harness_and_envoy() {
    let all = stream_scenarios();
    assert!(all.len() >= 5, "only {} stream scenarios", all.len());
    compare_all(&all, streamed_in_envoy);
}

/// The gRPC scenarios (`tests/scenarios/grpc/`): a unary callout allowed and denied (by
/// status and by message), an unknown cluster, a timeout, a stream of two messages each way.
#[test]
fn every_grpc_scenario_agrees_between_the_harness_and_envoy() {
    let all = grpc_scenarios();
    assert!(all.len() >= 4, "only {} gRPC scenarios", all.len());
    compare_all(&all, grpc_in_envoy);
    // And the harness-only expectations (`expect.grpc_calls`) hold in the harness.
    for (file, s) in &all {
        let module = e2e::harness_module(&module_file(&s.module));
        let host = Host::new();
        let mut known: Vec<&str> = vec!["upstream"];
        known.extend(s.grpc.keys().map(String::as_str));
        host.set_clusters(&known);
        let plugin = host
            .plugin(&module)
            .root_id(&s.root_id)
            .configuration(&s.configuration)
            .start()
            .unwrap();
        s.run(&plugin).unwrap();
        let rows: Vec<(String, String, String)> = host
            .grpc_calls_made()
            .into_iter()
            .map(|c| (c.service, c.service_name, c.method))
            .collect();
        if let Err(bad) = s.check_observed_grpc(&rows) {
            panic!("{file}: {bad:?}");
        }
    }
}

/// A gRPC server (`tests/grpc_server.py`, grpcio) on 127.0.0.1 answering one cluster's
/// methods as a scenario's `grpc:` says. Stopped (stdin closed, then killed) when dropped.
struct GrpcServer {
    child: std::process::Child,
    port: u16,
    stdout: std::io::BufReader<std::process::ChildStdout>,
}

impl GrpcServer {
    fn start(
        methods: &std::collections::BTreeMap<String, proxy_wasm_harness::scenario::GrpcAnswer>,
        field: &str,
    ) -> Result<GrpcServer, String> {
        use base64::Engine as _;
        use std::io::BufRead as _;
        let b64 = base64::engine::general_purpose::STANDARD;
        let mut answers = serde_json::Map::new();
        for (method, a) in methods {
            let messages: Vec<String> = a
                .message_bytes(&format!("{field}.{method}"))?
                .iter()
                .map(|m| b64.encode(m))
                .collect();
            answers.insert(
                format!("/{method}"),
                serde_json::json!({
                    "status": a.status,
                    "message": a.message,
                    "messages": messages,
                    "initial_metadata": a.initial_metadata,
                    "trailing_metadata": a.trailing_metadata,
                    "delay_ms": a.delay_ms.unwrap_or(0),
                }),
            );
        }
        let script = e2e::workspace_root().join("tests/grpc_server.py");
        let mut child = std::process::Command::new(e2e::python())
            .arg(&script)
            .arg(serde_json::Value::Object(answers).to_string())
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .map_err(|e| format!("{}: {e}", script.display()))?;
        let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        stdout.read_line(&mut line).map_err(|e| e.to_string())?;
        let port = line
            .trim()
            .strip_prefix("port ")
            .and_then(|p| p.parse().ok())
            .ok_or_else(|| format!("gRPC server did not start: {line:?}"))?;
        Ok(GrpcServer {
            child,
            port,
            stdout,
        })
    }

    /// Stop the server; what it received, in order.
    fn received(mut self, cluster: &str) -> Result<Vec<GrpcReceived>, String> {
        use base64::Engine as _;
        use std::io::BufRead as _;
        drop(self.child.stdin.take());
        let mut got = Vec::new();
        for line in (&mut self.stdout).lines() {
            let line = line.map_err(|e| e.to_string())?;
            let v: serde_json::Value = serde_json::from_str(&line).map_err(|e| e.to_string())?;
            let pairs = |v: &serde_json::Value| -> Vec<(String, String)> {
                v.as_array()
                    .into_iter()
                    .flatten()
                    .map(|p| {
                        (
                            p[0].as_str().unwrap_or_default().to_string(),
                            p[1].as_str().unwrap_or_default().to_string(),
                        )
                    })
                    .collect()
            };
            got.push(GrpcReceived {
                cluster: cluster.to_string(),
                path: v["method"].as_str().unwrap_or_default().to_string(),
                metadata: pairs(&v["metadata"]),
                messages: v["messages"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|m| {
                        base64::engine::general_purpose::STANDARD
                            .decode(m.as_str().unwrap_or_default())
                            .unwrap_or_default()
                    })
                    .collect(),
            });
        }
        Ok(got)
    }
}

impl Drop for GrpcServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A gRPC scenario in Envoy: a gRPC server per `grpc:` cluster behind an HTTP/2 cluster of
/// that name, the module in front of the scenario's upstream.
fn grpc_in_envoy(s: &Scenario) -> Result<Observed, String> {
    let h: Vec<(&str, &str)> = s
        .upstream
        .headers
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let upstream = Upstream::answering(s.upstream.status, &h, Some(&s.upstream.body));
    if !s.clusters.is_empty() {
        return Err("gRPC scenarios call no HTTP cluster".into());
    }
    let mut servers = Vec::new();
    for (cluster, methods) in &s.grpc {
        servers.push((
            cluster.clone(),
            GrpcServer::start(methods, &format!("grpc.{cluster}"))?,
        ));
    }
    let addrs: Vec<(&str, SocketAddr)> = servers
        .iter()
        .map(|(n, g)| (n.as_str(), SocketAddr::from(([127, 0, 0, 1], g.port))))
        .collect();
    let filter = wasm_filter(
        "scenario",
        &s.root_id,
        &module_file(&s.module),
        &s.configuration,
    );
    let mut config = bootstrap_with_clusters(upstream.addr(), vec![filter], &addrs);
    // gRPC needs HTTP/2 to the server (and no grpc-timeout: see grpc_cluster_options).
    for c in config["static_resources"]["clusters"]
        .as_array_mut()
        .unwrap()
    {
        if s.grpc.contains_key(c["name"].as_str().unwrap_or_default()) {
            c["typed_extension_protocol_options"] = e2e::fidelity::grpc_cluster_options();
        }
    }
    let envoy = Envoy::start(&config).map_err(|f| format!("{}\n{}", f.reason, f.log))?;
    let sent: Vec<(String, String)> = s
        .client_headers()
        .into_iter()
        .filter(|(k, _)| k != "content-length")
        .collect();
    let headers: Vec<(&str, &str)> = sent.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let mut c = Client::connect(envoy.listener).map_err(|e| e.to_string())?;
    let resp = c
        .send(
            &s.request.method,
            &s.request.path,
            &headers,
            s.request.body.as_bytes(),
        )
        .map_err(|e| format!("request failed: {e}\n{}", envoy.log()))?;
    let outcome = Outcome {
        status: resp.status(),
        response_headers: resp.headers.clone(),
        body: resp.text(),
        response_trailers: Vec::new(),
        upstream: upstream.received().last().map(wire),
        local_response: None,
    };
    std::thread::sleep(SETTLE);
    let mut grpc_calls = Vec::new();
    for (cluster, server) in servers {
        grpc_calls.extend(server.received(&cluster)?);
    }
    Ok(Observed {
        outcome,
        calls: Vec::new(),
        grpc_calls,
        logs: envoy_wasm_logs(&envoy.log()),
        metrics: envoy_metrics(&envoy)?,
    })
}

/// Run every scenario in the harness and in Envoy (`envoy`), check both against its
/// expectations and each against the other; panic listing every failure. The number of metric
/// values Envoy reported.
fn compare_all(
    all: &[(String, Scenario)],
    envoy: fn(&Scenario) -> Result<Observed, String>,
) -> usize {
    let mut failures = Vec::new();
    let mut compared = 0;
    let mut metrics_seen = 0;
    for (file, s) in all {
        let harness = in_harness(s);
        let envoy = envoy(s);
        let mut problems = Vec::new();
        match (harness, envoy) {
            (Ok(h), Ok(e)) => {
                if let Err(bad) = s.check(&h.outcome) {
                    problems.push(format!("harness: {bad:?}"));
                }
                if let Err(bad) = s.check(&e.outcome) {
                    problems.push(format!("envoy: {bad:?}"));
                }
                let (h, e) = (h.masked(), e.masked());
                metrics_seen += e.metrics.len();
                compared += 1;
                problems.extend(differences(&h, &e));
            }
            (h, e) => problems.push(format!("harness: {h:?}\nenvoy: {e:?}")),
        }
        if problems.is_empty() {
            println!("ok   {file} ({})", s.name);
        } else {
            println!("FAIL {file} ({})", s.name);
            failures.push(format!("{file}: {}", problems.join("\n")));
        }
    }
    println!("{compared} scenarios compared in full ({metrics_seen} metric values)");
    assert!(
        failures.is_empty(),
        "{} of {} scenarios failed:\n{}",
        failures.len(),
        all.len(),
        failures.join("\n\n")
    );
    metrics_seen
}

/// Everything a connection scenario lets one observe, from either side.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ObservedConnection {
    outcome: ConnectionOutcome,
    /// Each HTTP call as its cluster received it: (cluster, request).
    calls: Vec<(String, WireRequest)>,
    /// The module's log lines: (level, message), in order.
    logs: Vec<(String, String)>,
    /// The module's metrics: (name, kind, value), by name.
    metrics: Vec<(String, String, i64)>,
    /// The filter state objects the scenario expects (`expect.filter_state`), as the
    /// connection ended with them: (name, value; `-` when not set). Envoy's from `tcp_proxy`'s
    /// access log (`%FILTER_STATE(NAME:PLAIN)%`), the harness's from what the module set.
    filter_state: Vec<(String, String)>,
}

impl ObservedConnection {
    fn masked(mut self) -> ObservedConnection {
        for (_, c) in &mut self.calls {
            mask(&mut c.headers);
        }
        self
    }

    /// The calls as `Scenario::check_observed` takes them: (cluster, method, path).
    fn call_rows(&self) -> Vec<(String, String, String)> {
        self.calls
            .iter()
            .map(|(c, r)| (c.clone(), r.method.clone(), r.path.clone()))
            .collect()
    }
}

fn connection_in_harness(s: &Scenario) -> Result<ObservedConnection, String> {
    let module = e2e::harness_module(&module_file(&s.module));
    let host = Host::new();
    // As Envoy runs a network filter: the same plugin set-up as an HTTP filter's.
    host.set_log_level(LogLevel::Debug);
    let mut known: Vec<&str> = vec!["upstream"];
    known.extend(s.clusters.keys().map(String::as_str));
    host.set_clusters(&known);
    let plugin = host
        .plugin(&module)
        .name("scenario")
        .vm_id("scenario")
        .root_id(&s.root_id)
        .configuration(&s.configuration)
        .canary(true)
        .main_thread(true)
        .start()
        .map_err(|e| format!("plugin did not start: {e}; logs: {:?}", host.logs()))?;
    let outcome = s.run_connection(&plugin).map_err(|e| e.to_string())?;
    let set: Vec<(String, String)> = host
        .filter_states_set()
        .into_iter()
        .map(|f| (f.name, String::from_utf8_lossy(&f.value).into_owned()))
        .collect();
    let filter_state = s
        .expect
        .filter_state
        .keys()
        .map(|name| {
            let last = set.iter().rev().find(|(n, _)| n == name);
            (name.clone(), last.map_or("-".into(), |(_, v)| v.clone()))
        })
        .collect();
    let calls = host
        .http_calls_made()
        .iter()
        .map(|c| (c.upstream.clone(), WireRequest::of_call(c)))
        .collect();
    let logs = host
        .logs()
        .into_iter()
        .filter(|l| l.level >= LogLevel::Debug)
        .map(|l| (l.level.to_string(), l.message))
        .collect();
    Ok(ObservedConnection {
        outcome,
        calls,
        logs,
        metrics: harness_metrics(&host),
        filter_state,
    })
}

/// The marker of the access log lines [`connection_in_envoy`] has `tcp_proxy` write.
const FILTER_STATE_LOG: &str = "scenario filter state ";

fn connection_in_envoy(s: &Scenario) -> Result<ObservedConnection, String> {
    let bind = || std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string());
    let upstream = bind()?;
    // tcp_proxy's other clusters, each a server of its own.
    let tcp_clusters: Vec<(String, std::net::TcpListener)> = s
        .tcp_clusters
        .iter()
        .map(|n| Ok((n.clone(), bind()?)))
        .collect::<Result<_, String>>()?;
    let clusters: Vec<(String, Upstream)> = s
        .clusters
        .iter()
        .map(|(n, a)| {
            let h: Vec<(&str, &str)> = a
                .headers
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
            (n.clone(), Upstream::answering(a.status, &h, Some(&a.body)))
        })
        .collect();
    let mut extra: Vec<(&str, SocketAddr)> = clusters
        .iter()
        .map(|(n, u)| (n.as_str(), u.addr()))
        .collect();
    for (n, l) in &tcp_clusters {
        extra.push((n.as_str(), l.local_addr().map_err(|e| e.to_string())?));
    }
    let filter = network_wasm_filter(
        "scenario",
        &s.root_id,
        &module_file(&s.module),
        &s.configuration,
    );
    let addr = upstream.local_addr().map_err(|e| e.to_string())?;
    let mut config = tcp_proxy_bootstrap(addr, vec![filter], &extra);
    let names: Vec<&String> = s.expect.filter_state.keys().collect();
    if !names.is_empty() {
        // tcp_proxy's access log shows the filter state the connection ended with.
        let format: String = names
            .iter()
            .map(|n| format!("{FILTER_STATE_LOG}{n}=%FILTER_STATE({n}:PLAIN)%\n"))
            .collect();
        let filters =
            &mut config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"];
        let last = filters.as_array().map_or(0, Vec::len).saturating_sub(1);
        filters[last]["typed_config"]["access_log"] = serde_json::json!([{
            "name": "envoy.access_loggers.stdout",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.access_loggers.stream.v3.StdoutAccessLog",
                "log_format": {"text_format_source": {"inline_string": format}},
            },
        }]);
    }
    // The access log is a file Envoy flushes every 10 s by default: every 100 ms here.
    let envoy = Envoy::start_with(
        &config,
        &[
            "--component-log-level",
            "wasm:debug",
            "--file-flush-interval-msec",
            "100",
        ],
    )
    .map_err(|f| format!("{}\n{}", f.reason, f.log))?;
    let mut upstreams: Vec<(&str, &std::net::TcpListener)> = vec![("upstream", &upstream)];
    upstreams.extend(tcp_clusters.iter().map(|(n, l)| (n.as_str(), l)));
    let outcome = e2e::tcp::drive(&envoy, &upstreams, s)
        .map_err(|e| format!("{e}\n---- envoy log ----\n{}", envoy.log()))?;
    let logged = |log: &str| -> Vec<(String, String)> {
        log.lines()
            .filter_map(|l| l.strip_prefix(FILTER_STATE_LOG)?.split_once('='))
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect()
    };
    let filter_state = if names.is_empty() {
        Vec::new()
    } else {
        e2e::poll_until(std::time::Instant::now() + Duration::from_secs(10), || {
            let got = logged(&envoy.log());
            (got.len() >= names.len()).then_some(got)
        })
        .ok_or_else(|| format!("no access log line from tcp_proxy:\n{}", envoy.log()))?
    };
    let mut arrived = Vec::new();
    for (name, u) in &clusters {
        arrived.extend(
            u.received()
                .into_iter()
                .map(|m| (m.received_at, name.clone(), m)),
        );
    }
    arrived.sort_by_key(|(at, _, _)| *at);
    Ok(ObservedConnection {
        outcome,
        calls: arrived
            .iter()
            .map(|(_, name, m)| (name.clone(), wire(m)))
            .collect(),
        logs: envoy_wasm_logs(&envoy.log()),
        metrics: envoy_metrics(&envoy)?,
        filter_state,
    })
}

#[test]
fn every_connection_scenario_agrees_between_the_harness_and_envoy() {
    let all = connection_scenarios();
    assert!(all.len() >= 4, "only {} connection scenarios", all.len());
    let mut failures = Vec::new();
    for (file, s) in &all {
        let mut problems = Vec::new();
        match (connection_in_harness(s), connection_in_envoy(s)) {
            (Ok(h), Ok(e)) => {
                for (side, o) in [("harness", &h), ("envoy", &e)] {
                    if let Err(bad) = s.check_connection(&o.outcome) {
                        problems.push(format!("{side}: {bad:?}"));
                    }
                    if let Err(bad) = s.check_observed(&o.logs, &o.metrics, &o.call_rows()) {
                        problems.push(format!("{side}: {bad:?}"));
                    }
                    if let Err(bad) = s.check_observed_filter_state(&o.filter_state) {
                        problems.push(format!("{side}: {bad:?}"));
                    }
                }
                let (h, e) = (h.masked(), e.masked());
                let mut part = |name: &str, h: String, e: String| {
                    if h != e {
                        problems.push(format!("{name}:\n  harness {h}\n  envoy   {e}"));
                    }
                };
                part(
                    "upstream cluster",
                    format!("{:?}", h.outcome.upstream_cluster),
                    format!("{:?}", e.outcome.upstream_cluster),
                );
                part(
                    "filter state",
                    format!("{:?}", h.filter_state),
                    format!("{:?}", e.filter_state),
                );
                part(
                    "upstream received",
                    format!("{:?}", h.outcome.upstream_received),
                    format!("{:?}", e.outcome.upstream_received),
                );
                part(
                    "client received",
                    format!("{:?}", h.outcome.downstream_received),
                    format!("{:?}", e.outcome.downstream_received),
                );
                part(
                    "closed",
                    format!("{:?}", h.outcome.closed),
                    format!("{:?}", e.outcome.closed),
                );
                part("calls", format!("{:?}", h.calls), format!("{:?}", e.calls));
                part("logs", format!("{:?}", h.logs), format!("{:?}", e.logs));
                part(
                    "metrics",
                    format!("{:?}", h.metrics),
                    format!("{:?}", e.metrics),
                );
            }
            (h, e) => problems.push(format!("harness: {h:?}\nenvoy: {e:?}")),
        }
        if problems.is_empty() {
            println!("ok   {file} ({})", s.name);
        } else {
            println!("FAIL {file} ({})", s.name);
            failures.push(format!("{file}: {}", problems.join("\n")));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} connection scenarios failed:\n{}",
        failures.len(),
        all.len(),
        failures.join("\n\n")
    );
}
