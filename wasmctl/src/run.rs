//! `wasmctl run`: one request through a filter in the proxy-wasm harness, and a report of what
//! the filter did (headers added, changed, removed; local response; logs; metrics; HTTP calls);
//! or, for a network (TCP) filter (a scenario with `connection:`, `wasmctl run --tcp`), one TCP
//! connection, and what each end sent and received through it.
//!
//! A module of the other kind than the run drives (a network filter run over HTTP, an HTTP
//! filter run as a connection) is an [`Error::FilterKind`] naming the flag to use, found from
//! the module's exports, or, when it exports both kinds of callbacks (every SDK does), from a
//! run that traps in a stream callback while a run of the other kind passes cleanly.
//!
//! ```no_run
//! use proxy_wasm_harness::scenario::Scenario;
//! use wasmctl::run::{run, RunReport};
//!
//! let mut s = Scenario::from_yaml("name: seed\nrequest: {path: /}").unwrap();
//! s.root_id = "my_root_id".into();
//! s.configuration = r#"{"name":"resp-header-demo","value":"added by our filter"}"#.into();
//! let report: RunReport = run("header_filter.wasm".as_ref(), &s).unwrap();
//! print!("{report}");
//!
//! let tcp = Scenario::from_yaml("name: echo\nconnection: [{downstream: hello}, {upstream: hi}]").unwrap();
//! let report = run("tcp_filter.wasm".as_ref(), &tcp).unwrap();
//! assert!(report.failed_expectations().is_empty());
//! ```

use crate::error::{Error, Result};
use proxy_wasm_harness::abi::{HTTP_CALLBACKS, LogLevel, NETWORK_CALLBACKS};
use proxy_wasm_harness::scenario::{
    ConnectionOutcome, ConnectionTrace, End, Outcome, Scenario, Step,
};
use proxy_wasm_harness::{Host, Module, Runtime};
use serde::Serialize;
use std::fmt;
use std::path::Path;

/// One header change the filter made.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "change", rename_all = "lowercase")]
pub enum Change {
    /// A header (or value) that was not there.
    Added {
        /// Name.
        name: String,
        /// Value.
        value: String,
    },
    /// A header whose values differ.
    Changed {
        /// Name.
        name: String,
        /// Values before.
        before: Vec<String>,
        /// Values after.
        after: Vec<String>,
    },
    /// A header that is gone.
    Removed {
        /// Name.
        name: String,
    },
}

/// What `wasmctl run` found.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// The scenario's name.
    pub scenario: String,
    /// Outcome (status, headers, body, what the upstream got).
    pub outcome: Outcome,
    /// Changes to the request headers (what the upstream got against what the client sent).
    pub request_changes: Vec<Change>,
    /// Changes to the response headers (what the client got against what the upstream sent).
    pub response_changes: Vec<Change>,
    /// Log lines: (level, message).
    pub logs: Vec<(String, String)>,
    /// Metrics: (name, kind, value).
    pub metrics: Vec<(String, String, i64)>,
    /// HTTP calls the filter made: (cluster, method, path).
    pub http_calls: Vec<(String, String, String)>,
    /// gRPC calls and streams the filter opened, with what they sent and were answered.
    pub grpc_calls: Vec<GrpcCallMade>,
    /// Filter state objects the filter set with Envoy's foreign function
    /// `set_envoy_filter_state`, in order: (name, value).
    pub filter_state: Vec<(String, String)>,
    /// Expectations of the scenario that did not hold.
    pub failed_expectations: Vec<String>,
}

/// The filter state objects set (`set_envoy_filter_state`), as the reports show them:
/// (name, value), in order.
fn filter_state_set(host: &Host) -> Vec<(String, String)> {
    host.filter_states_set()
        .into_iter()
        .map(|f| (f.name, shown_bytes(&f.value)))
        .collect()
}

/// What the module did that a scenario's expectations check besides the outcome (logs,
/// metrics, HTTP calls, gRPC calls, filter state): the expectations that did not hold.
fn failed_observed(
    scenario: &Scenario,
    logs: &[(String, String)],
    metrics: &[(String, String, i64)],
    http_calls: &[(String, String, String)],
    grpc_calls: &[GrpcCallMade],
    filter_state: &[(String, String)],
) -> Vec<String> {
    let grpc_rows: Vec<(String, String, String)> = grpc_calls
        .iter()
        .map(|c| (c.cluster.clone(), c.service.clone(), c.method.clone()))
        .collect();
    let mut failed = scenario
        .check_observed(logs, metrics, http_calls)
        .err()
        .unwrap_or_default();
    failed.extend(
        scenario
            .check_observed_grpc(&grpc_rows)
            .err()
            .unwrap_or_default(),
    );
    failed.extend(
        scenario
            .check_observed_filter_state(filter_state)
            .err()
            .unwrap_or_default(),
    );
    failed
}

/// A gRPC call or stream the filter opened (messages as text when they are printable UTF-8,
/// else `base64:` and their base64).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GrpcCallMade {
    /// The cluster called.
    pub cluster: String,
    /// The gRPC service.
    pub service: String,
    /// The method.
    pub method: String,
    /// A stream (`proxy_grpc_stream`) rather than a unary call.
    pub stream: bool,
    /// The timeout the filter gave (unary calls; 0: none).
    pub timeout_ms: u32,
    /// The initial metadata the filter sent.
    pub metadata: Vec<(String, String)>,
    /// The messages the filter sent.
    pub sent: Vec<String>,
    /// What the filter was delivered.
    pub answer: GrpcAnswerSeen,
}

/// What a gRPC call delivered to the filter, in the order of the callbacks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GrpcAnswerSeen {
    /// Initial metadata (streams).
    pub initial_metadata: Vec<(String, String)>,
    /// Messages.
    pub messages: Vec<String>,
    /// Trailing metadata (streams).
    pub trailing_metadata: Vec<(String, String)>,
    /// The close's status and message (`proxy_on_grpc_close`), if it came.
    pub close: Option<(u32, String)>,
}

/// Bytes as text when printable UTF-8, else `base64:` and their base64.
fn shown_bytes(b: &[u8]) -> String {
    use base64::Engine as _;
    match std::str::from_utf8(b) {
        Ok(t) if !t.chars().any(|c| c.is_control() && c != '\n' && c != '\t') => t.to_string(),
        _ => format!(
            "base64:{}",
            base64::engine::general_purpose::STANDARD.encode(b)
        ),
    }
}

/// The gRPC calls made, as [`Report::grpc_calls`] shows them.
fn grpc_made(host: &Host) -> Vec<GrpcCallMade> {
    host.grpc_calls_made()
        .into_iter()
        .map(|c| GrpcCallMade {
            metadata: c
                .initial_metadata
                .iter()
                .map(|(k, v)| (k.to_string(), shown_bytes(v)))
                .collect(),
            sent: c.sent.iter().map(|m| shown_bytes(m)).collect(),
            answer: GrpcAnswerSeen {
                initial_metadata: c.answered.initial_metadata.clone(),
                messages: c.answered.messages.iter().map(|m| shown_bytes(m)).collect(),
                trailing_metadata: c.answered.trailing_metadata.clone(),
                close: c.answered.close.clone(),
            },
            cluster: c.service,
            service: c.service_name,
            method: c.method,
            stream: c.stream,
            timeout_ms: c.timeout_ms,
        })
        .collect()
}

impl fmt::Display for GrpcCallMade {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = if self.stream {
            "stream".to_string()
        } else {
            format!("unary, timeout {} ms", self.timeout_ms)
        };
        let pairs = |p: &[(String, String)]| {
            p.iter()
                .map(|(k, v)| format!("{k}: {v}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        writeln!(
            f,
            "  {}: {}/{} ({kind})",
            self.cluster, self.service, self.method
        )?;
        if !self.metadata.is_empty() {
            writeln!(f, "    metadata: {}", pairs(&self.metadata))?;
        }
        for m in &self.sent {
            writeln!(f, "    sent: {m:?}")?;
        }
        let a = &self.answer;
        if !a.initial_metadata.is_empty() {
            writeln!(f, "    initial metadata: {}", pairs(&a.initial_metadata))?;
        }
        for m in &a.messages {
            writeln!(f, "    received: {m:?}")?;
        }
        if !a.trailing_metadata.is_empty() {
            writeln!(f, "    trailing metadata: {}", pairs(&a.trailing_metadata))?;
        }
        match &a.close {
            Some((status, message)) => writeln!(f, "    closed: status {status} {message:?}"),
            None if self.stream || a.messages.is_empty() => writeln!(f, "    (no answer)"),
            None => Ok(()),
        }
    }
}

fn values(pairs: &[(String, String)], name: &str) -> Vec<String> {
    pairs
        .iter()
        .filter(|(k, _)| k == name)
        .map(|(_, v)| v.clone())
        .collect()
}

/// The changes from `before` to `after`, by header name, in order of first appearance.
pub fn diff(before: &[(String, String)], after: &[(String, String)]) -> Vec<Change> {
    let mut names: Vec<&str> = Vec::new();
    for (k, _) in before.iter().chain(after) {
        if !names.contains(&k.as_str()) {
            names.push(k);
        }
    }
    let mut out = Vec::new();
    for name in names {
        let (b, a) = (values(before, name), values(after, name));
        if b == a {
            continue;
        }
        if a.is_empty() {
            out.push(Change::Removed { name: name.into() });
        } else if a.starts_with(&b) {
            for v in &a[b.len()..] {
                out.push(Change::Added {
                    name: name.into(),
                    value: v.clone(),
                });
            }
        } else {
            out.push(Change::Changed {
                name: name.into(),
                before: b,
                after: a,
            });
        }
    }
    out
}

/// A fresh host that knows `scenario`'s clusters (and `upstream`), with the `wasm` log level
/// `level`, and the scenario's plugin started in it (after Envoy's configuration canary when
/// `canary`, see [`proxy_wasm_harness::PluginBuilder::canary`]).
pub(crate) fn start(
    module: &Module,
    scenario: &Scenario,
    level: LogLevel,
    canary: bool,
) -> (Host, proxy_wasm_harness::Result<proxy_wasm_harness::Plugin>) {
    let host = Host::new();
    host.set_log_level(level);
    let mut known: Vec<&str> = vec!["upstream"];
    known.extend(scenario.clusters.keys().map(String::as_str));
    known.extend(scenario.grpc.keys().map(String::as_str));
    host.set_clusters(&known);
    let plugin = host
        .plugin(module)
        .root_id(&scenario.root_id)
        .configuration(&scenario.configuration)
        .vm_configuration(&scenario.vm_configuration)
        .canary(canary)
        .start();
    (host, plugin)
}

/// What `wasmctl run` found: for a request or for a connection.
#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
pub enum RunReport {
    /// An HTTP request (a scenario without `connection:`).
    Http(Report),
    /// A TCP connection (a scenario with `connection:`).
    Connection(ConnectionReport),
}

impl RunReport {
    /// Expectations of the scenario that did not hold.
    pub fn failed_expectations(&self) -> &[String] {
        match self {
            RunReport::Http(r) => &r.failed_expectations,
            RunReport::Connection(r) => &r.failed_expectations,
        }
    }
}

impl fmt::Display for RunReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RunReport::Http(r) => r.fmt(f),
            RunReport::Connection(r) => r.fmt(f),
        }
    }
}

/// What `wasmctl run` found for a connection through a network filter.
#[derive(Debug, Clone, Serialize)]
pub struct ConnectionReport {
    /// The scenario's name.
    pub scenario: String,
    /// The connection as it ran: what `proxy_on_new_connection` returned, then each step
    /// (what the filter returned, what it passed on, when the proxy closed the connection).
    pub connection: ConnectionTrace,
    /// What each end received, and the order in which the proxy closed them.
    pub outcome: ConnectionOutcome,
    /// Log lines: (level, message).
    pub logs: Vec<(String, String)>,
    /// Metrics: (name, kind, value).
    pub metrics: Vec<(String, String, i64)>,
    /// HTTP calls the filter made: (cluster, method, path).
    pub http_calls: Vec<(String, String, String)>,
    /// gRPC calls and streams the filter opened, with what they sent and were answered (as
    /// [`Report::grpc_calls`]).
    pub grpc_calls: Vec<GrpcCallMade>,
    /// Filter state objects the filter set (`set_envoy_filter_state`): (name, value), in order.
    pub filter_state: Vec<(String, String)>,
    /// Expectations of the scenario that did not hold.
    pub failed_expectations: Vec<String>,
}

/// Load `module` and run `scenario` through it in a fresh harness host: a request, or a
/// connection for a scenario with `connection:`.
pub fn run(module: &Path, scenario: &Scenario) -> Result<RunReport> {
    run_loaded(&load(module)?, module, scenario)
}

/// The kind of filter a run drives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// An HTTP filter: a request.
    Http,
    /// A network filter: a connection.
    Network,
}

impl Kind {
    fn callbacks(self) -> &'static [&'static str] {
        match self {
            Kind::Http => HTTP_CALLBACKS,
            Kind::Network => NETWORK_CALLBACKS,
        }
    }

    fn other(self) -> Kind {
        match self {
            Kind::Http => Kind::Network,
            Kind::Network => Kind::Http,
        }
    }

    /// "this module is ..." and the way to run it.
    fn is_and_use(self) -> (&'static str, &'static str) {
        match self {
            Kind::Http => (
                "an HTTP filter",
                "run it without --tcp (in a scenario file: `request:` in place of `connection:`)",
            ),
            Kind::Network => (
                "a network (TCP) filter",
                "run it with --tcp (in a scenario file: a `connection:` block in place of `request:`)",
            ),
        }
    }
}

/// The callbacks of `kind` the module exports.
fn exported(m: &Module, kind: Kind) -> Vec<String> {
    m.exports()
        .into_iter()
        .filter(|e| kind.callbacks().contains(&e.as_str()))
        .collect()
}

/// Before a run: a module that exports callbacks of the other kind only is of the other kind.
fn kind_by_exports(m: &Module, asked: Kind) -> Option<String> {
    let other = exported(m, asked.other());
    if other.is_empty() || !exported(m, asked).is_empty() {
        return None;
    }
    let (is, how) = asked.other().is_and_use();
    let passes = match asked {
        Kind::Http => "an HTTP request would pass it untouched",
        Kind::Network => "a connection would pass it untouched",
    };
    Some(format!(
        "this module is {is}: it exports {} and none of {}, so {passes}; {how}",
        other.join(", "),
        asked.callbacks().join(", ")
    ))
}

/// After a run of kind `asked` failed with `e`: when the module trapped (or exited) in a stream
/// callback, exports callbacks of the other kind, and a run of the other kind through a fresh
/// plugin passes without an error, the module is of the other kind. Returns the message.
fn kind_by_probe(
    m: &Module,
    scenario: &Scenario,
    asked: Kind,
    e: &proxy_wasm_harness::Error,
) -> Option<String> {
    use proxy_wasm_harness::Error as H;
    let callback = match e {
        H::Trap { callback, .. } | H::Exit { callback, .. } => callback,
        _ => return None,
    };
    if exported(m, asked.other()).is_empty() {
        return None;
    }
    let mut probe = Scenario {
        name: "probe".into(),
        root_id: scenario.root_id.clone(),
        configuration: scenario.configuration.clone(),
        vm_configuration: scenario.vm_configuration.clone(),
        clusters: scenario.clusters.clone(),
        ..Scenario::default()
    };
    let (_host, plugin) = start(m, &probe, LogLevel::Trace, false);
    let plugin = plugin.ok()?;
    let passed = match asked.other() {
        Kind::Http => probe.run(&plugin).is_ok(),
        Kind::Network => {
            probe.connection = Some(vec![
                Step::Downstream("probe".into()),
                Step::Upstream("probe".into()),
            ]);
            probe.run_connection(&plugin).is_ok()
        }
    };
    if !passed || plugin.failure().is_some() {
        return None;
    }
    let (is, how) = asked.other().is_and_use();
    let (on, through) = match asked {
        Kind::Http => ("the request's context", "a TCP connection through it runs"),
        Kind::Network => (
            "the connection's context",
            "an HTTP request through it runs",
        ),
    };
    Some(format!(
        "this module is {is}: {callback} trapped on {on}, while {through} cleanly; {how}"
    ))
}

/// Compile `module` in the process-wide harness runtime, for [`run_loaded`].
pub fn load(module: &Path) -> Result<Module> {
    Module::from_file(&Runtime::shared(), module).map_err(|e| Error::Harness {
        file: module.to_path_buf(),
        message: e.to_string(),
    })
}

/// Run `scenario` through a module compiled once ([`load`]) in a fresh harness host, as
/// [`run`] does; `module` is its file, named in errors. A suite compiles once and runs each
/// scenario this way.
pub fn run_loaded(m: &Module, module: &Path, scenario: &Scenario) -> Result<RunReport> {
    let kind = if scenario.is_connection() {
        Kind::Network
    } else {
        Kind::Http
    };
    if let Some(message) = kind_by_exports(m, kind) {
        return Err(Error::FilterKind {
            file: module.to_path_buf(),
            message,
        });
    }
    match kind {
        Kind::Http => run_http(m, module, scenario).map(RunReport::Http),
        Kind::Network => run_connection(m, module, scenario).map(RunReport::Connection),
    }
}

/// A plugin that did not start: the error and the module's log.
fn not_started(module: &Path, host: &Host, e: &proxy_wasm_harness::Error) -> Error {
    let lines: Vec<String> = log_lines(host)
        .into_iter()
        .map(|(l, m)| format!("  [{l}] {m}"))
        .collect();
    Error::Harness {
        file: module.to_path_buf(),
        message: format!("{e}\nmodule log:\n{}", lines.join("\n")),
    }
}

/// A stream of kind `kind` failed with `e`: the hint first when the module is of the other
/// kind ([`Error::FilterKind`]), else the error as is.
fn stream_failed(
    m: &Module,
    module: &Path,
    host: &Host,
    scenario: &Scenario,
    kind: Kind,
    e: proxy_wasm_harness::Error,
) -> Error {
    if let Some(hint) = kind_by_probe(m, scenario, kind, &e) {
        let over = match kind {
            Kind::Http => "over HTTP",
            Kind::Network => "as a connection",
        };
        let lines: Vec<String> = log_lines(host)
            .into_iter()
            .map(|(l, m)| format!("  [{l}] {m}"))
            .collect();
        return Error::FilterKind {
            file: module.to_path_buf(),
            message: format!("{hint}\n{over}: {e}\nmodule log:\n{}", lines.join("\n")),
        };
    }
    Error::Harness {
        file: module.to_path_buf(),
        message: e.to_string(),
    }
}

fn run_connection(m: &Module, module: &Path, scenario: &Scenario) -> Result<ConnectionReport> {
    let (host, plugin) = start(m, scenario, LogLevel::Trace, false);
    let plugin = plugin.map_err(|e| not_started(module, &host, &e))?;
    let (outcome, connection) = scenario
        .run_connection_traced(&plugin)
        .map_err(|e| stream_failed(m, module, &host, scenario, Kind::Network, e))?;
    plugin.shutdown().map_err(|e| Error::Harness {
        file: module.to_path_buf(),
        message: format!("stopping the plugin after the connection: {e}"),
    })?;
    let logs = log_lines(&host);
    let metrics = metric_rows(&host);
    let http_calls = calls_made(&host);
    let grpc_calls = grpc_made(&host);
    let filter_state = filter_state_set(&host);
    let mut failed_expectations = scenario
        .check_connection(&outcome)
        .err()
        .unwrap_or_default();
    failed_expectations.extend(failed_observed(
        scenario,
        &logs,
        &metrics,
        &http_calls,
        &grpc_calls,
        &filter_state,
    ));
    Ok(ConnectionReport {
        scenario: scenario.name.clone(),
        connection,
        outcome,
        logs,
        metrics,
        http_calls,
        grpc_calls,
        filter_state,
        failed_expectations,
    })
}

/// The HTTP calls made: (cluster, method, path).
fn calls_made(host: &Host) -> Vec<(String, String, String)> {
    host.http_calls_made()
        .into_iter()
        .map(|c| {
            (
                c.upstream,
                c.headers.get(":method").unwrap_or_default(),
                c.headers.get(":path").unwrap_or_default(),
            )
        })
        .collect()
}

fn run_http(m: &Module, module: &Path, scenario: &Scenario) -> Result<Report> {
    let (host, plugin) = start(m, scenario, LogLevel::Trace, false);
    let plugin = plugin.map_err(|e| not_started(module, &host, &e))?;
    let outcome = scenario.run(&plugin).map_err(|e| {
        let context_failed = e.to_string().starts_with("proxy_on_context_create");
        let mut err = stream_failed(m, module, &host, scenario, Kind::Http, e);
        if let Error::Harness { message, .. } = &mut err
            && context_failed
        {
            // The plugin started; only the stream's context failed: what a bootstrap service
            // (a root context and no HTTP context, such as the Rust SDK's hello_world) does.
            message.push_str(
                "\nhint: the module started but could not create an HTTP stream's context; \
                 if it is a bootstrap service (Envoy's WasmService), run it with --service \
                 [--advance DURATION]",
            );
        }
        err
    })?;
    // Stop the plugin as Envoy does when its filter is removed (`proxy_on_done`, then
    // `proxy_on_delete` of the root context), so that what a filter keeps in the VM and reports
    // on stop (counters it sums before adding them to the host's, say) is in the report.
    plugin.shutdown().map_err(|e| Error::Harness {
        file: module.to_path_buf(),
        message: format!("stopping the plugin after the request: {e}"),
    })?;
    let client_sent = proxy_wasm_harness::scenario::filtered(
        scenario
            .request_headers()
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str())),
    );
    let upstream_sent: Vec<(String, String)> = scenario
        .upstream
        .headers
        .iter()
        .map(|(k, v)| (k.to_ascii_lowercase(), v.clone()))
        .collect();
    // What the filter changed: the proxy's own headers (host, framing, ids, timing) aside.
    let own = |pairs: &[(String, String)]| {
        proxy_wasm_harness::scenario::filtered(pairs.iter().map(|(k, v)| (k.as_str(), v.as_str())))
    };
    let request_changes = outcome
        .upstream
        .as_ref()
        .map(|up| diff(&client_sent, &own(&up.headers)))
        .unwrap_or_default();
    let response_base = if outcome.local_response.is_some() {
        Vec::new()
    } else {
        upstream_sent
    };
    let response_changes = diff(&response_base, &own(&outcome.response_headers));
    let logs = log_lines(&host);
    let metrics = metric_rows(&host);
    let http_calls = calls_made(&host);
    let grpc_calls = grpc_made(&host);
    let filter_state = filter_state_set(&host);
    let mut failed_expectations = scenario.check(&outcome).err().unwrap_or_default();
    failed_expectations.extend(failed_observed(
        scenario,
        &logs,
        &metrics,
        &http_calls,
        &grpc_calls,
        &filter_state,
    ));
    Ok(Report {
        scenario: scenario.name.clone(),
        request_changes,
        response_changes,
        logs,
        metrics,
        http_calls,
        grpc_calls,
        filter_state,
        outcome,
        failed_expectations,
    })
}

/// One shared-data entry a service left.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SharedEntry {
    /// The VM id it is scoped by.
    pub vm_id: String,
    /// Key.
    pub key: String,
    /// Value (lossy UTF-8).
    pub value: String,
    /// Its CAS.
    pub cas: u32,
}

/// One shared queue and what is still in it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct QueueState {
    /// The VM id it is scoped by.
    pub vm_id: String,
    /// Its name.
    pub name: String,
    /// Items not dequeued (lossy UTF-8), oldest first.
    pub pending: Vec<String>,
}

/// One HTTP call a service made.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CallMade {
    /// When, from the start of the run (milliseconds of host time).
    pub at_ms: u64,
    /// The cluster.
    pub cluster: String,
    /// `:method`.
    pub method: String,
    /// `:path`.
    pub path: String,
    /// The body sent (lossy UTF-8).
    pub body: String,
}

/// What `wasmctl run --service` found.
#[derive(Debug, Clone, Serialize)]
pub struct ServiceReport {
    /// The scenario's name.
    pub scenario: String,
    /// Host time advanced after the start, milliseconds.
    pub advanced_ms: u64,
    /// `proxy_on_tick` calls.
    pub ticks: u64,
    /// The tick period the service has at the end, milliseconds (`None`: not ticking).
    pub tick_period_ms: Option<u64>,
    /// Log lines: (level, message), in order.
    pub logs: Vec<(String, String)>,
    /// Metrics: (name, kind, value).
    pub metrics: Vec<(String, String, i64)>,
    /// HTTP calls the service made, in order.
    pub http_calls: Vec<CallMade>,
    /// Shared data at the end.
    pub shared_data: Vec<SharedEntry>,
    /// Shared queues at the end.
    pub queues: Vec<QueueState>,
}

fn log_lines(host: &Host) -> Vec<(String, String)> {
    host.logs()
        .into_iter()
        .map(|l| (l.level.to_string(), l.message))
        .collect()
}

/// The host's metrics as report rows: (name, kind, value).
fn metric_rows(host: &Host) -> Vec<(String, String, i64)> {
    host.metrics()
        .into_iter()
        .map(|m| (m.name, format!("{:?}", m.kind).to_lowercase(), m.value))
        .collect()
}

fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Load `module` and run it as Envoy runs a bootstrap service (`envoy.bootstrap.wasm`,
/// `WasmService` with `singleton: true`): the configuration canary VM runs
/// `proxy_on_vm_start` and `proxy_on_configure` and is dropped, the service's own VM runs them
/// again, and no stream is ever opened. Then the host clock advances by `advance`: ticks,
/// queued work and answers to HTTP calls (from `scenario`'s clusters) come in time order.
pub fn run_service(
    module: &Path,
    scenario: &Scenario,
    advance: std::time::Duration,
) -> Result<ServiceReport> {
    let harness = |message: String| Error::Harness {
        file: module.to_path_buf(),
        message,
    };
    let m = Module::from_file(&Runtime::shared(), module).map_err(|e| harness(e.to_string()))?;
    let (host, plugin) = start(&m, scenario, LogLevel::Trace, true);
    let with_log = |host: &Host, what: String| {
        let lines: Vec<String> = log_lines(host)
            .into_iter()
            .map(|(l, m)| format!("  [{l}] {m}"))
            .collect();
        harness(format!("{what}\nmodule log:\n{}", lines.join("\n")))
    };
    let plugin = plugin.map_err(|e| with_log(&host, e.to_string()))?;
    let started = host.now_nanos();
    scenario
        .run_service(&plugin, advance)
        .map_err(|e| with_log(&host, e.to_string()))?;
    let tick_period_ms = host
        .next_tick_nanos()
        .and(plugin.tick_period())
        .map(|p| p.as_millis() as u64);
    Ok(ServiceReport {
        scenario: scenario.name.clone(),
        advanced_ms: advance.as_millis() as u64,
        ticks: host.ticks(),
        tick_period_ms,
        logs: log_lines(&host),
        metrics: metric_rows(&host),
        http_calls: host
            .http_calls_made()
            .into_iter()
            .map(|c| CallMade {
                at_ms: c.made_at_nanos.saturating_sub(started) / 1_000_000,
                method: c.headers.get(":method").unwrap_or_default(),
                path: c.headers.get(":path").unwrap_or_default(),
                body: lossy(&c.body),
                cluster: c.upstream,
            })
            .collect(),
        shared_data: host
            .shared_data_entries()
            .into_iter()
            .map(|(vm_id, key, value, cas)| SharedEntry {
                vm_id,
                key,
                value: lossy(&value),
                cas,
            })
            .collect(),
        queues: host
            .queues()
            .into_iter()
            .map(|(vm_id, name, items)| QueueState {
                vm_id,
                name,
                pending: items.iter().map(|i| lossy(i)).collect(),
            })
            .collect(),
    })
}

impl fmt::Display for ServiceReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "service: {}", self.scenario)?;
        writeln!(
            f,
            "started: the configuration canary VM, then the service VM (vm start, configure)"
        )?;
        let period = match self.tick_period_ms {
            Some(ms) => format!("tick period now {ms} ms"),
            None => "not ticking now".to_string(),
        };
        writeln!(
            f,
            "advanced: {} ms, {} ticks, {period}",
            self.advanced_ms, self.ticks
        )?;
        writeln!(f, "http calls: {}", self.http_calls.len())?;
        for c in &self.http_calls {
            let body = if c.body.is_empty() {
                String::new()
            } else {
                format!(" {:?}", c.body)
            };
            writeln!(
                f,
                "  at {} ms {}: {} {}{body}",
                c.at_ms, c.cluster, c.method, c.path
            )?;
        }
        writeln!(f, "logs:")?;
        for (level, msg) in &self.logs {
            writeln!(f, "  [{level}] {msg}")?;
        }
        writeln!(f, "metrics:")?;
        for (name, kind, value) in &self.metrics {
            writeln!(f, "  {name} ({kind}) = {value}")?;
        }
        writeln!(f, "shared data:")?;
        for e in &self.shared_data {
            writeln!(
                f,
                "  {:?} {:?} = {:?} (cas {})",
                e.vm_id, e.key, e.value, e.cas
            )?;
        }
        writeln!(f, "queues:")?;
        for q in &self.queues {
            writeln!(
                f,
                "  {:?} {:?}: {} pending",
                q.vm_id,
                q.name,
                q.pending.len()
            )?;
        }
        Ok(())
    }
}

impl fmt::Display for Change {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Change::Added { name, value } => write!(f, "+ {name}: {value}"),
            Change::Changed {
                name,
                before,
                after,
            } => write!(f, "~ {name}: {} -> {}", before.join(", "), after.join(", ")),
            Change::Removed { name } => write!(f, "- {name}"),
        }
    }
}

impl fmt::Display for ConnectionReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let o = &self.outcome;
        writeln!(f, "connection: {}", self.scenario)?;
        writeln!(
            f,
            "opened: proxy_on_new_connection -> {}",
            self.connection.new_connection
        )?;
        writeln!(f, "upstream cluster: {}", o.upstream_cluster)?;
        writeln!(f, "steps:")?;
        for r in &self.connection.steps {
            let end = if r.implicit { " (at the end)" } else { "" };
            let did = match &r.step {
                Step::Close(_) if r.action == "continue" => {
                    if r.passed.is_empty() {
                        "end of stream passed on".to_string()
                    } else {
                        format!("passed on {:?} and the end of stream", r.passed)
                    }
                }
                Step::Close(_) => "end of stream held".to_string(),
                _ if r.passed.is_empty() => "nothing passed on".to_string(),
                _ => format!("passed on {:?}", r.passed),
            };
            writeln!(f, "  {}{end} -> {}: {did}", r.step, r.action)?;
            if let Some(peer) = &r.connection_closed {
                writeln!(
                    f,
                    "  the proxy closes the connection (peer {peer}): done, log, delete"
                )?;
            }
        }
        writeln!(
            f,
            "upstream received: {:?} ({} bytes)",
            o.upstream_received,
            o.upstream_received.len()
        )?;
        writeln!(
            f,
            "client received: {:?} ({} bytes)",
            o.downstream_received,
            o.downstream_received.len()
        )?;
        let closed: Vec<&str> = o
            .closed
            .iter()
            .map(|e| match e {
                End::Upstream => "upstream",
                End::Downstream => "downstream (the client)",
            })
            .collect();
        writeln!(f, "closed: {}", closed.join(", then "))?;
        writeln!(f, "http calls: {}", self.http_calls.len())?;
        for (cluster, method, path) in &self.http_calls {
            writeln!(f, "  {cluster}: {method} {path}")?;
        }
        observed_tail(
            f,
            &self.grpc_calls,
            &self.filter_state,
            &self.logs,
            &self.metrics,
            &self.failed_expectations,
        )
    }
}

/// The end of both reports: gRPC calls (when any), filter state set (when any), logs, metrics,
/// the expectations not met.
fn observed_tail(
    f: &mut fmt::Formatter<'_>,
    grpc_calls: &[GrpcCallMade],
    filter_state: &[(String, String)],
    logs: &[(String, String)],
    metrics: &[(String, String, i64)],
    failed_expectations: &[String],
) -> fmt::Result {
    if !grpc_calls.is_empty() {
        writeln!(f, "grpc calls: {}", grpc_calls.len())?;
        for c in grpc_calls {
            write!(f, "{c}")?;
        }
    }
    if !filter_state.is_empty() {
        writeln!(f, "filter state set:")?;
        for (name, value) in filter_state {
            writeln!(f, "  {name} = {value:?}")?;
        }
    }
    writeln!(f, "logs:")?;
    for (level, msg) in logs {
        writeln!(f, "  [{level}] {msg}")?;
    }
    writeln!(f, "metrics:")?;
    for (name, kind, value) in metrics {
        writeln!(f, "  {name} ({kind}) = {value}")?;
    }
    if !failed_expectations.is_empty() {
        writeln!(f, "expectations NOT met:")?;
        for e in failed_expectations {
            writeln!(f, "  {e}")?;
        }
    }
    Ok(())
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let o = &self.outcome;
        writeln!(f, "scenario: {}", self.scenario)?;
        match &o.local_response {
            Some((status, details)) if details.is_empty() => {
                writeln!(f, "local response: {status}, the upstream was not called")?
            }
            Some((status, details)) => writeln!(
                f,
                "local response: {status} ({details}), the upstream was not called"
            )?,
            None => writeln!(f, "status: {}", o.status)?,
        }
        writeln!(f, "request headers (client -> upstream):")?;
        if o.upstream.is_none() {
            writeln!(f, "  (not sent upstream)")?;
        } else if self.request_changes.is_empty() {
            writeln!(f, "  (unchanged)")?;
        }
        for c in &self.request_changes {
            writeln!(f, "  {c}")?;
        }
        writeln!(f, "response headers (-> client):")?;
        if self.response_changes.is_empty() {
            writeln!(f, "  (unchanged)")?;
        }
        for c in &self.response_changes {
            writeln!(f, "  {c}")?;
        }
        if !o.body.is_empty() {
            writeln!(f, "body: {:?}", o.body)?;
        }
        // Trailers as each end got them (the filter may add and remove them).
        let upstream_trailers = o.upstream.as_ref().map(|u| &u.trailers[..]).unwrap_or(&[]);
        for (title, trailers) in [
            ("request trailers (-> upstream)", upstream_trailers),
            ("response trailers (-> client)", &o.response_trailers[..]),
        ] {
            if !trailers.is_empty() {
                writeln!(f, "{title}:")?;
                for (k, v) in trailers {
                    writeln!(f, "  {k}: {v}")?;
                }
            }
        }
        writeln!(f, "http calls: {}", self.http_calls.len())?;
        for (cluster, method, path) in &self.http_calls {
            writeln!(f, "  {cluster}: {method} {path}")?;
        }
        observed_tail(
            f,
            &self.grpc_calls,
            &self.filter_state,
            &self.logs,
            &self.metrics,
            &self.failed_expectations,
        )
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::panic)]
    use super::*;

    fn p(v: &[(&str, &str)]) -> Vec<(String, String)> {
        v.iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    #[test]
    fn diff_names_added_changed_and_removed_headers() {
        let before = p(&[("a", "1"), ("b", "2"), ("c", "3")]);
        let after = p(&[("a", "1"), ("a", "x"), ("b", "9"), ("d", "4")]);
        let d = diff(&before, &after);
        let shown: Vec<String> = d.iter().map(ToString::to_string).collect();
        assert_eq!(shown, ["+ a: x", "~ b: 2 -> 9", "- c", "+ d: 4"]);
    }

    /// A module exporting `callbacks` (each returning `body`, or nothing for the closes).
    fn module(callbacks: &[&str], body: &str) -> Module {
        let mut wat = String::from(
            r#"(module
  (memory (export "memory") 1)
  (func (export "proxy_abi_version_0_2_1"))
  (func (export "malloc") (param i32) (result i32) (i32.const 1024))
  (func (export "proxy_on_context_create") (param i32 i32))
  (func (export "proxy_on_configure") (param i32 i32) (result i32) (i32.const 1))"#,
        );
        for c in callbacks {
            let sig = match *c {
                "proxy_on_new_connection" => "(param i32) (result i32)",
                "proxy_on_downstream_connection_close" | "proxy_on_upstream_connection_close" => {
                    "(param i32 i32)"
                }
                _ => "(param i32 i32 i32) (result i32)",
            };
            let body = if sig.contains("result") { body } else { "" };
            wat.push_str(&format!("\n  (func (export \"{c}\") {sig} {body})"));
        }
        wat.push(')');
        Module::from_bytes(&Runtime::shared(), wat.as_bytes()).unwrap_or_else(|e| panic!("{e}"))
    }

    fn connection(steps: Vec<Step>) -> Scenario {
        Scenario {
            name: "c".into(),
            connection: Some(steps),
            ..Scenario::default()
        }
    }

    #[test]
    fn the_exports_name_a_module_of_the_other_kind() {
        let network = module(
            &["proxy_on_new_connection", "proxy_on_downstream_data"],
            "(i32.const 0)",
        );
        let m = kind_by_exports(&network, Kind::Http).unwrap_or_default();
        assert!(
            m.starts_with(
                "this module is a network (TCP) filter: it exports proxy_on_new_connection, \
                 proxy_on_downstream_data and none of proxy_on_request_headers"
            ) && m.ends_with("run it with --tcp (in a scenario file: a `connection:` block in place of `request:`)"),
            "{m}"
        );
        assert_eq!(kind_by_exports(&network, Kind::Network), None);
        let http = module(&["proxy_on_request_headers"], "(i32.const 0)");
        let m = kind_by_exports(&http, Kind::Network).unwrap_or_default();
        assert!(
            m.starts_with("this module is an HTTP filter: it exports proxy_on_request_headers and none of proxy_on_new_connection")
                && m.contains("run it without --tcp"),
            "{m}"
        );
        // Both kinds (every SDK), or neither: the exports do not tell.
        let both = module(
            &["proxy_on_request_headers", "proxy_on_new_connection"],
            "(i32.const 0)",
        );
        assert_eq!(kind_by_exports(&both, Kind::Http), None);
        assert_eq!(kind_by_exports(&both, Kind::Network), None);
        let neither = module(&[], "");
        assert_eq!(kind_by_exports(&neither, Kind::Http), None);
    }

    #[test]
    fn a_trap_of_one_kind_where_the_other_runs_names_the_flag_first() {
        let file = Path::new("m.wasm");
        // HTTP callbacks trap, network ones run: a network filter.
        let trapping_http = Module::from_bytes(
            &Runtime::shared(),
            br#"(module
  (memory (export "memory") 1)
  (func (export "proxy_abi_version_0_2_1"))
  (func (export "malloc") (param i32) (result i32) (i32.const 1024))
  (func (export "proxy_on_context_create") (param i32 i32))
  (func (export "proxy_on_configure") (param i32 i32) (result i32) (i32.const 1))
  (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32) unreachable)
  (func (export "proxy_on_new_connection") (param i32) (result i32) (i32.const 0)))"#,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let http = Scenario::default();
        match run_loaded(&trapping_http, file, &http) {
            Err(Error::FilterKind { message, .. }) => {
                assert!(
                    message.starts_with(
                        "this module is a network (TCP) filter: proxy_on_request_headers trapped \
                         on the request's context, while a TCP connection through it runs cleanly; \
                         run it with --tcp"
                    ),
                    "{message}"
                );
                let over = message.find("\nover HTTP: proxy_on_request_headers trapped");
                assert!(over.is_some(), "{message}");
            }
            other => panic!("{other:?}"),
        }
        // As a connection it runs.
        let c = connection(vec![Step::Downstream("x".into())]);
        match run_loaded(&trapping_http, file, &c) {
            Ok(RunReport::Connection(r)) => {
                assert_eq!(r.outcome.upstream_received, "x");
                assert_eq!(r.connection.steps.len(), 3);
            }
            other => panic!("{other:?}"),
        }
        // Both kinds trap: no hint, the trap as it is.
        let trapping_both = module(
            &["proxy_on_request_headers", "proxy_on_new_connection"],
            "unreachable",
        );
        match run_loaded(&trapping_both, file, &http) {
            Err(Error::Harness { message, .. }) => {
                assert!(
                    message.starts_with("proxy_on_request_headers trapped"),
                    "{message}"
                );
            }
            other => panic!("{other:?}"),
        }
        match run_loaded(&trapping_both, file, &c) {
            Err(Error::Harness { message, .. }) => {
                assert!(
                    message.starts_with("proxy_on_new_connection trapped"),
                    "{message}"
                );
            }
            other => panic!("{other:?}"),
        }
    }
}
