//! Scenarios: one request through a filter, described in YAML (configuration, the request, what
//! the upstream and any called cluster answer, what must come out), and run in the harness the
//! way Envoy would run it. The same files drive the harness-vs-Envoy fidelity tests and
//! `wasmctl run --scenario`.
//!
//! ```
//! use proxy_wasm_harness::scenario::Scenario;
//!
//! let s = Scenario::from_yaml(r#"
//! name: seed
//! root_id: my_root_id
//! configuration: '{"name":"resp-header-demo","value":"added by our filter"}'
//! request: {method: GET, path: /productpage}
//! upstream: {status: 200, headers: [[x-up, "1"]]}
//! expect:
//!   response_headers: {resp-header-demo: [added by our filter]}
//! "#).unwrap();
//! assert_eq!(s.request.path, "/productpage");
//! ```

use crate::abi::Action;
use crate::error::{Error, Result};
use crate::headers::HeaderMap;
use crate::host::{GrpcStreamEvent, Host};
use crate::plugin::Plugin;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;

/// One scenario.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    /// A short name.
    pub name: String,
    /// Which module the scenario is for (a name the test runner maps to a file).
    #[serde(default)]
    pub module: String,
    /// The plugin's root id.
    #[serde(default)]
    pub root_id: String,
    /// The plugin configuration.
    #[serde(default)]
    pub configuration: String,
    /// The VM configuration (`vm_config.configuration`), read in `proxy_on_vm_start`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub vm_configuration: String,
    /// What the client sends.
    #[serde(default)]
    pub request: Request,
    /// What the upstream answers.
    #[serde(default)]
    pub upstream: Answer,
    /// Clusters the filter may call (`proxy_http_call`) and what each answers.
    #[serde(default)]
    pub clusters: BTreeMap<String, Answer>,
    /// gRPC services the filter may call (`proxy_grpc_call`, `proxy_grpc_stream`): by cluster,
    /// then by `SERVICE/METHOD` (e.g. `auth.Authorizer/Check`), what the server answers. A
    /// method not listed on a listed cluster answers UNIMPLEMENTED, as a gRPC server does.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub grpc: BTreeMap<String, BTreeMap<String, GrpcAnswer>>,
    /// A TCP connection through a network filter, step by step (what the client and the
    /// upstream send, and when each closes). Given, the scenario is a connection scenario:
    /// [`Scenario::run_connection`] runs it, and the HTTP fields (`request`, `upstream`, the
    /// HTTP expectations) must not be given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connection: Option<Vec<Step>>,
    /// Connection: more upstream clusters `tcp_proxy` may connect to, besides its default
    /// `upstream`; a filter picks one per connection by setting the filter state object
    /// `envoy.tcp_proxy.cluster` (foreign function `set_envoy_filter_state`) in
    /// `proxy_on_new_connection`. Each is a scripted upstream, as `upstream` is.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tcp_clusters: Vec<String>,
    /// The stream's buffer limit in bytes (Envoy's listener `per_connection_buffer_limit_bytes`,
    /// default [`DEFAULT_BUFFER_LIMIT`]): a body a filter buffers (`Pause` on a body callback)
    /// beyond it ends the request with Envoy's `413 Payload Too Large`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub buffer_limit: Option<u32>,
    /// Dynamic metadata filters before this one set (`filter_metadata: {NAMESPACE: {KEY:
    /// VALUE}}`), which the module reads with `proxy_get_property` at
    /// `metadata.filter_metadata.NAMESPACE.KEY...`. In Envoy a Lua filter sets it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<Metadata>,
    /// Filter state objects filters before this one set (name: string value), which the
    /// module reads at `filter_state.NAME`. In Envoy the `set_filter_state` filter sets them
    /// (factory `envoy.string`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub filter_state: BTreeMap<String, String>,
    /// What must come out.
    #[serde(default)]
    pub expect: Expect,
}

/// Envoy's default buffer limit of a stream: the listener's `per_connection_buffer_limit_bytes`
/// default, 1 MiB.
pub const DEFAULT_BUFFER_LIMIT: u32 = 1024 * 1024;

/// Dynamic metadata (`metadata:`), as other filters set it.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Metadata {
    /// By namespace (a filter's name, e.g. `envoy.lua`), a struct of values.
    #[serde(default)]
    pub filter_metadata: BTreeMap<String, BTreeMap<String, MetaValue>>,
}

/// A value of dynamic metadata (a `google.protobuf.Value`): a bool, a number, a string or a
/// struct of values.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(untagged)]
pub enum MetaValue {
    /// `bool_value`: read as one byte, 0 or 1.
    Bool(bool),
    /// `number_value`: read as the 8 bytes of a little-endian f64.
    Number(f64),
    /// `string_value`: read as its bytes.
    Text(String),
    /// `struct_value`: read as a proxy-wasm map of its fields, each value serialized as these
    /// rules say.
    Struct(BTreeMap<String, MetaValue>),
}

// Numbers in scenarios are finite: equality is reflexive.
impl Eq for MetaValue {}

impl MetaValue {
    /// The bytes `proxy_get_property` returns for this value, as Envoy 1.40 serializes a CEL
    /// value (measured: `tests/scenarios/streams/`).
    pub fn serialize(&self) -> Vec<u8> {
        match self {
            MetaValue::Bool(b) => vec![u8::from(*b)],
            MetaValue::Number(n) => n.to_le_bytes().to_vec(),
            MetaValue::Text(t) => t.as_bytes().to_vec(),
            MetaValue::Struct(fields) => serialize_pairs(
                fields
                    .iter()
                    .map(|(k, v)| (k.as_bytes().to_vec(), v.serialize())),
            ),
        }
    }

    /// The value as a Lua expression (for a Lua filter that sets it in Envoy).
    pub fn to_lua(&self) -> String {
        match self {
            MetaValue::Bool(b) => b.to_string(),
            MetaValue::Number(n) => format!("{n:?}"),
            MetaValue::Text(t) => lua_string(t),
            MetaValue::Struct(fields) => {
                let parts: Vec<String> = fields
                    .iter()
                    .map(|(k, v)| format!("[{}] = {}", lua_string(k), v.to_lua()))
                    .collect();
                format!("{{{}}}", parts.join(", "))
            }
        }
    }
}

/// A Lua string literal.
fn lua_string(s: &str) -> String {
    let mut out = String::from("\"");
    for b in s.bytes() {
        match b {
            b'"' | b'\\' => {
                out.push('\\');
                out.push(b as char);
            }
            0x20..=0x7e => out.push(b as char),
            _ => out.push_str(&format!("\\{b:03}")),
        }
    }
    out.push('"');
    out
}

/// The proxy-wasm map serialization: the count, each key's and value's length, then each key
/// and value followed by a NUL.
fn serialize_pairs(pairs: impl Iterator<Item = (Vec<u8>, Vec<u8>)>) -> Vec<u8> {
    let pairs: Vec<(Vec<u8>, Vec<u8>)> = pairs.collect();
    let mut out = (pairs.len() as u32).to_le_bytes().to_vec();
    for (k, v) in &pairs {
        out.extend((k.len() as u32).to_le_bytes());
        out.extend((v.len() as u32).to_le_bytes());
    }
    for (k, v) in &pairs {
        out.extend(k);
        out.push(0);
        out.extend(v);
        out.push(0);
    }
    out
}

impl Metadata {
    /// Every property path Envoy answers for this metadata below `metadata.filter_metadata`
    /// and the bytes it answers: each namespace, each value, each struct's fields, at any depth.
    pub fn properties(&self) -> Vec<(Vec<String>, Vec<u8>)> {
        fn walk(path: &mut Vec<String>, v: &MetaValue, out: &mut Vec<(Vec<String>, Vec<u8>)>) {
            out.push((path.clone(), v.serialize()));
            if let MetaValue::Struct(fields) = v {
                for (k, f) in fields {
                    path.push(k.clone());
                    walk(path, f, out);
                    path.pop();
                }
            }
        }
        let mut out = Vec::new();
        let base = ["metadata".to_string(), "filter_metadata".to_string()];
        let namespaces = self.filter_metadata.iter().map(|(ns, fields)| {
            (
                ns.as_bytes().to_vec(),
                MetaValue::Struct(fields.clone()).serialize(),
            )
        });
        out.push((base.to_vec(), serialize_pairs(namespaces)));
        for (ns, fields) in &self.filter_metadata {
            let mut path = base.to_vec();
            path.push(ns.clone());
            walk(&mut path, &MetaValue::Struct(fields.clone()), &mut out);
        }
        out
    }
}

/// One step of a connection (an entry of `connection:`), written as a map of one key.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(try_from = "RawStep", into = "RawStep")]
pub enum Step {
    /// The client sends these bytes (`- downstream: "hello"`): one read of the proxy, one
    /// `proxy_on_downstream_data`.
    Downstream(String),
    /// The upstream sends these bytes (`- upstream: "HELLO"`): one `proxy_on_upstream_data`.
    Upstream(String),
    /// That end half-closes its connection to the proxy, sending its end of stream (a TCP FIN;
    /// `- close: downstream`, `- close: upstream`). It sends nothing after.
    Close(End),
}

/// A step as written: exactly one of its fields.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct RawStep {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    downstream: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    upstream: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    close: Option<End>,
}

impl TryFrom<RawStep> for Step {
    type Error = String;

    fn try_from(r: RawStep) -> std::result::Result<Step, String> {
        match (r.downstream, r.upstream, r.close) {
            (Some(t), None, None) => Ok(Step::Downstream(t)),
            (None, Some(t), None) => Ok(Step::Upstream(t)),
            (None, None, Some(e)) => Ok(Step::Close(e)),
            _ => Err("a step is one of `downstream: TEXT`, `upstream: TEXT`, \
                      `close: downstream` and `close: upstream`"
                .into()),
        }
    }
}

impl From<Step> for RawStep {
    fn from(s: Step) -> RawStep {
        match s {
            Step::Downstream(t) => RawStep {
                downstream: Some(t),
                ..RawStep::default()
            },
            Step::Upstream(t) => RawStep {
                upstream: Some(t),
                ..RawStep::default()
            },
            Step::Close(e) => RawStep {
                close: Some(e),
                ..RawStep::default()
            },
        }
    }
}

/// One end of a proxied TCP connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum End {
    /// The client (the proxy's downstream connection).
    Downstream,
    /// The upstream server (the proxy's upstream connection).
    Upstream,
}

impl fmt::Display for End {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            End::Downstream => "downstream",
            End::Upstream => "upstream",
        })
    }
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Step::Downstream(t) => write!(f, "the client sends {t:?}"),
            Step::Upstream(t) => write!(f, "the upstream sends {t:?}"),
            Step::Close(End::Downstream) => f.write_str("the client closes"),
            Step::Close(End::Upstream) => f.write_str("the upstream closes"),
        }
    }
}

/// Check a connection's steps: no end sends or closes after it closed.
pub fn check_steps(steps: &[Step]) -> std::result::Result<(), String> {
    let mut closed_at: [Option<usize>; 2] = [None, None];
    let who = |e: End| match e {
        End::Downstream => ("the client", 0),
        End::Upstream => ("the upstream", 1),
    };
    for (i, step) in steps.iter().enumerate() {
        let (end, closing) = match step {
            Step::Downstream(_) => (End::Downstream, false),
            Step::Upstream(_) => (End::Upstream, false),
            Step::Close(e) => (*e, true),
        };
        let (name, slot) = who(end);
        if let Some(at) = closed_at[slot] {
            let what = if closing { "closes again" } else { "sends" };
            return Err(format!(
                "connection[{i}]: {name} {what} after it closed (connection[{at}])"
            ));
        }
        if closing {
            closed_at[slot] = Some(i);
        }
    }
    Ok(())
}

/// The top-level fields of an HTTP scenario, which a connection scenario must not have.
pub const HTTP_FIELDS: &[&str] = &[
    "request",
    "upstream",
    "buffer_limit",
    "metadata",
    "filter_state",
];

/// The expectations about an HTTP exchange (`expect.*`), which a connection scenario must not
/// have.
pub const HTTP_EXPECTATIONS: &[&str] = &[
    "status",
    "response_headers",
    "response_absent",
    "response_header_order",
    "upstream_headers",
    "upstream_absent",
    "upstream_header_order",
    "upstream_reached",
    "upstream",
    "local_response",
    "body",
    "body_size",
    "response_trailers",
    "upstream_trailers",
];

/// The expectations about a connection (`expect.*`), which only a connection scenario may have.
pub const CONNECTION_EXPECTATIONS: &[&str] = &[
    "upstream_received",
    "downstream_received",
    "closed",
    "upstream_cluster",
];

/// The filter state object that picks `tcp_proxy`'s upstream cluster for a connection.
pub const TCP_PROXY_CLUSTER: &str = "envoy.tcp_proxy.cluster";

/// The cluster `tcp_proxy` connects to when no filter picked one (and an HTTP scenario's
/// upstream).
pub const DEFAULT_CLUSTER: &str = "upstream";

/// A client request.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Request {
    /// Method.
    pub method: String,
    /// Path with query.
    pub path: String,
    /// Headers besides the pseudo-headers, in order.
    pub headers: Vec<(String, String)>,
    /// Body, sent in one piece (or in pieces of `chunk_size`).
    pub body: String,
    /// Body in pieces, each sent on its own: Envoy's codec reads each as one chunk, and the
    /// filter gets a body callback for each.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub body_chunks: Vec<String>,
    /// A body made of `text` repeated `times` times (a long body without writing it out).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub body_repeat: Option<Repeat>,
    /// Send `body` or `body_repeat` in pieces of this many bytes (the last may be shorter).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub chunk_size: Option<usize>,
    /// Trailers, in order. Given, the body goes chunked (`transfer-encoding: chunked`), the
    /// only HTTP/1.1 framing that carries trailers, and they end the stream.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub trailers: Vec<(String, String)>,
}

impl Default for Request {
    fn default() -> Request {
        Request {
            method: "GET".into(),
            path: "/".into(),
            headers: Vec::new(),
            body: String::new(),
            body_chunks: Vec::new(),
            body_repeat: None,
            chunk_size: None,
            trailers: Vec::new(),
        }
    }
}

/// A generated body (`body_repeat`): `text` repeated `times` times.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Repeat {
    /// The text repeated.
    pub text: String,
    /// How many times.
    pub times: usize,
}

/// The largest body a scenario may generate (`body_repeat`): 64 MiB.
pub const MAX_BODY: usize = 64 * 1024 * 1024;

/// The body pieces of a request or an answer, as written: `field` names it in errors.
fn body_pieces(
    field: &str,
    body: &str,
    chunks: &[String],
    repeat: Option<&Repeat>,
    chunk_size: Option<usize>,
) -> std::result::Result<Vec<Vec<u8>>, String> {
    let given: Vec<&str> = [
        ("body", !body.is_empty()),
        ("body_chunks", !chunks.is_empty()),
        ("body_repeat", repeat.is_some()),
    ]
    .into_iter()
    .filter(|(_, g)| *g)
    .map(|(n, _)| n)
    .collect();
    if given.len() > 1 {
        return Err(format!(
            "{field}: `{}` and `{}` cannot both be given (one body per message)",
            given[0], given[1]
        ));
    }
    if chunk_size == Some(0) {
        return Err(format!("{field}.chunk_size: must be at least 1"));
    }
    if chunk_size.is_some() && !chunks.is_empty() {
        return Err(format!(
            "{field}.chunk_size: splits `body` or `body_repeat`; `body_chunks` are pieces already"
        ));
    }
    if !chunks.is_empty() {
        return Ok(chunks.iter().map(|c| c.as_bytes().to_vec()).collect());
    }
    let whole: Vec<u8> = match repeat {
        Some(r) => {
            if r.text.len().saturating_mul(r.times) > MAX_BODY {
                return Err(format!(
                    "{field}.body_repeat: {} bytes, more than the {MAX_BODY} a scenario may generate",
                    r.text.len().saturating_mul(r.times)
                ));
            }
            r.text.repeat(r.times).into_bytes()
        }
        None => body.as_bytes().to_vec(),
    };
    if whole.is_empty() {
        return Ok(Vec::new());
    }
    Ok(match chunk_size {
        Some(n) => whole.chunks(n).map(<[u8]>::to_vec).collect(),
        None => vec![whole],
    })
}

impl Request {
    /// The body in the pieces the client sends (none for no body); an error names the field.
    pub fn pieces(&self) -> std::result::Result<Vec<Vec<u8>>, String> {
        body_pieces(
            "request",
            &self.body,
            &self.body_chunks,
            self.body_repeat.as_ref(),
            self.chunk_size,
        )
    }
}

impl Answer {
    /// The body in the pieces the upstream sends; `field` names it in errors.
    pub fn pieces_of(&self, field: &str) -> std::result::Result<Vec<Vec<u8>>, String> {
        body_pieces(
            field,
            &self.body,
            &self.body_chunks,
            self.body_repeat.as_ref(),
            self.chunk_size,
        )
    }
}

/// What an upstream or called cluster answers.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Answer {
    /// Status.
    pub status: u16,
    /// Headers besides `:status`, in order.
    pub headers: Vec<(String, String)>,
    /// Body, sent in one piece (or in pieces of `chunk_size`).
    pub body: String,
    /// Body in pieces, each sent on its own (the upstream only; as [`Request::body_chunks`]).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub body_chunks: Vec<String>,
    /// A generated body (the upstream only; as [`Request::body_repeat`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub body_repeat: Option<Repeat>,
    /// Send the body in pieces of this many bytes (the upstream only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub chunk_size: Option<usize>,
    /// Trailers (the upstream only): given, the answer goes chunked and they end it.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub trailers: Vec<(String, String)>,
}

impl Default for Answer {
    fn default() -> Answer {
        Answer {
            status: 200,
            headers: Vec::new(),
            body: String::new(),
            body_chunks: Vec::new(),
            body_repeat: None,
            chunk_size: None,
            trailers: Vec::new(),
        }
    }
}

/// How the messages of a [`GrpcAnswer`] are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Encoding {
    /// UTF-8 text, sent as is.
    #[default]
    Text,
    /// Standard base64 (protobuf bytes, for instance).
    Base64,
    /// Hexadecimal digits, two per byte.
    Hex,
}

impl Encoding {
    /// Decode one written value.
    pub fn decode(self, v: &str) -> std::result::Result<Vec<u8>, String> {
        use base64::Engine as _;
        match self {
            Encoding::Text => Ok(v.as_bytes().to_vec()),
            Encoding::Base64 => base64::engine::general_purpose::STANDARD
                .decode(v)
                .map_err(|e| format!("not base64: {e}")),
            Encoding::Hex => {
                let v: Vec<u8> = v.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
                if !v.len().is_multiple_of(2) {
                    return Err("an odd number of hex digits".into());
                }
                v.chunks(2)
                    .map(|p| {
                        std::str::from_utf8(p)
                            .ok()
                            .and_then(|d| u8::from_str_radix(d, 16).ok())
                            .ok_or_else(|| format!("not hex: {:?}", String::from_utf8_lossy(p)))
                    })
                    .collect()
            }
        }
    }
}

/// The status and message a unary call is closed with when its timeout passes first, as Envoy
/// 1.40 closes it (measured: its router's local reply, 504 "upstream request timeout", mapped to
/// UNAVAILABLE, not DEADLINE_EXCEEDED; the message carries the response code details).
pub const GRPC_TIMEOUT: (u32, &str) = (14, "upstream request timeout{response_timeout}");
/// What a gRPC server (grpcio's, as the fidelity tests run) sends before the scenario's initial
/// metadata.
pub const GRPC_SERVER_HEADERS: &[(&str, &str)] = &[
    (":status", "200"),
    ("content-type", "application/grpc"),
    ("grpc-accept-encoding", "identity, deflate, gzip"),
];

/// The status message a module reads (`proxy_get_status`) when a server closed a call with
/// `message`: Envoy 1.40 appends the response code details, `via_upstream` (measured).
pub fn grpc_close_message(message: &str) -> String {
    if message.is_empty() {
        "via_upstream".into()
    } else {
        format!("{message}{{via_upstream}}")
    }
}

/// The metadata a gRPC server receives of a call, as Envoy sends it: the module's, then
/// `x-envoy-internal: true` and, for a unary call with a timeout,
/// `x-envoy-expected-rq-timeout-ms` (measured; the transport's own headers left out).
pub fn grpc_request_metadata(call: &crate::host::GrpcCall) -> Vec<(String, String)> {
    let mut md: Vec<(String, String)> = pair_iter(&call.initial_metadata)
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    md.push(("x-envoy-internal".into(), "true".into()));
    if !call.stream && call.timeout_ms > 0 {
        md.push((
            "x-envoy-expected-rq-timeout-ms".into(),
            call.timeout_ms.to_string(),
        ));
    }
    md
}
/// The close of a unary call answered OK without a message.
pub const GRPC_NO_MESSAGE: (u32, &str) = (13, "");
/// gRPC status UNIMPLEMENTED, and the message grpcio's server sends with it for a method it
/// does not serve.
pub const GRPC_UNIMPLEMENTED: (u32, &str) = (12, "Method not found!");

/// What a gRPC server answers to one method (an entry of [`Scenario::grpc`]). On the wire, and
/// to the module, in this order: the initial metadata, each message, the trailing metadata, the
/// status. A unary call is delivered its first message when the status is OK, else only the
/// status and message (as Envoy does: `proxy_on_grpc_receive` or `proxy_on_grpc_close`).
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct GrpcAnswer {
    /// gRPC status code, 0 (OK) to 16.
    pub status: u32,
    /// Status message (`grpc-message`).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub message: String,
    /// Response messages, in `encoding` (a unary call: one).
    pub messages: Vec<String>,
    /// How `messages` are written: `text` (default), `base64` or `hex`.
    pub encoding: Encoding,
    /// Initial metadata (lower-case names), in order.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub initial_metadata: Vec<(String, String)>,
    /// Trailing metadata (lower-case names), in order.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub trailing_metadata: Vec<(String, String)>,
    /// The server answers after this many milliseconds: a unary call whose timeout is shorter
    /// is closed as Envoy closes it at the timeout instead ([`GRPC_TIMEOUT`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delay_ms: Option<u64>,
}

impl GrpcAnswer {
    /// The messages as bytes; `field` names the answer in errors.
    pub fn message_bytes(&self, field: &str) -> std::result::Result<Vec<Vec<u8>>, String> {
        self.messages
            .iter()
            .enumerate()
            .map(|(i, m)| {
                self.encoding
                    .decode(m)
                    .map_err(|e| format!("{field}.messages[{i}]: {e}"))
            })
            .collect()
    }

    fn check(&self, field: &str) -> std::result::Result<(), String> {
        if self.status > 16 {
            return Err(format!(
                "{field}.status: {} is not a gRPC status (0 OK to 16 UNAUTHENTICATED)",
                self.status
            ));
        }
        self.message_bytes(field)?;
        for (which, pairs) in [
            ("initial_metadata", &self.initial_metadata),
            ("trailing_metadata", &self.trailing_metadata),
        ] {
            for (i, (k, _)) in pairs.iter().enumerate() {
                if k.is_empty() || k.starts_with(':') || k.bytes().any(|b| b.is_ascii_uppercase()) {
                    return Err(format!(
                        "{field}.{which}[{i}]: {k:?} is not a metadata name (lower case, no `:`)"
                    ));
                }
            }
        }
        Ok(())
    }
}

/// One gRPC call the module made (an entry of `expect.grpc_calls`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ExpectGrpcCall {
    /// The cluster called.
    pub cluster: String,
    /// The gRPC service, when given.
    #[serde(default)]
    pub service: Option<String>,
    /// The method, when given.
    #[serde(default)]
    pub method: Option<String>,
}

impl fmt::Display for ExpectGrpcCall {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let or_any = |v: &Option<String>| v.clone().unwrap_or_else(|| "*".into());
        write!(
            f,
            "{}: {}/{}",
            self.cluster,
            or_any(&self.service),
            or_any(&self.method)
        )
    }
}

/// Expectations; every given field must hold.
///
/// Most are about the [`Outcome`] (what a client and the upstream observe) and are checked by
/// [`Scenario::check`], in the harness and against a real Envoy alike. `logs`, `metrics` and
/// `http_calls` are what the module did inside the proxy: [`Scenario::check_observed`] checks
/// them against what the harness recorded (`wasmctl run --scenario`, `wasmctl test`).
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Expect {
    /// Status the client gets.
    pub status: Option<u16>,
    /// Response headers with all their values, in order.
    pub response_headers: BTreeMap<String, Vec<String>>,
    /// Response headers that must be absent.
    pub response_absent: Vec<String>,
    /// Response header names whose first occurrences must come in this relative order (other
    /// headers may stand between them; every name must be present).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub response_header_order: Vec<String>,
    /// Headers the upstream receives, with all their values.
    pub upstream_headers: BTreeMap<String, Vec<String>>,
    /// Headers the upstream must not receive.
    pub upstream_absent: Vec<String>,
    /// Header names of the upstream's request whose first occurrences must come in this
    /// relative order (as [`Expect::response_header_order`]).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub upstream_header_order: Vec<String>,
    /// Whether the upstream is reached at all.
    pub upstream_reached: Option<bool>,
    /// The request the upstream receives: method, path, body (each optional); given, the
    /// upstream must be reached.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upstream: Option<ExpectRequest>,
    /// The filter's local reply (`proxy_send_local_response`): status, details (each optional);
    /// given, the filter must have sent one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub local_response: Option<ExpectLocalResponse>,
    /// Body the client gets.
    pub body: Option<String>,
    /// Length in bytes of the body the client gets (for bodies too long to write out).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub body_size: Option<usize>,
    /// Trailers the client gets, all of them, in order (`[]`: none).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub response_trailers: Option<Vec<(String, String)>>,
    /// Trailers the upstream receives, all of them, in order (`[]`: none); given, the upstream
    /// must be reached.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upstream_trailers: Option<Vec<(String, String)>>,
    /// Every HTTP call the module made (`proxy_http_call`), in order: as many as listed, each
    /// matching (`[]`: none at all). Checked in the harness only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub http_calls: Option<Vec<ExpectCall>>,
    /// Every gRPC call and stream the module opened (`proxy_grpc_call`, `proxy_grpc_stream`),
    /// in order: as many as listed, each matching (`[]`: none at all). Checked in the harness
    /// only ([`Scenario::check_observed_grpc`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub grpc_calls: Option<Vec<ExpectGrpcCall>>,
    /// Log lines the module must write, in this order, other lines between them allowed.
    /// Checked in the harness only (which records every level, trace included).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub logs: Vec<ExpectLog>,
    /// Metrics by name (as the module defined it, without Envoy's `wasmcustom.` prefix) and
    /// their final value (a counter's or gauge's, after the plugin stopped). Checked in the
    /// harness only.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub metrics: BTreeMap<String, i64>,
    /// Filter state objects the module set with the foreign function `set_envoy_filter_state`:
    /// by name, the value it set last. Checked in the harness
    /// ([`Scenario::check_observed_filter_state`]).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub filter_state: BTreeMap<String, String>,
    /// Connection: every byte the upstream must have received, in order (what the filter let
    /// through of the client's bytes, as it left them).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upstream_received: Option<String>,
    /// Connection: every byte the client must have received, in order.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub downstream_received: Option<String>,
    /// Connection: the ends the proxy closed (passed an end of stream to), in the order it
    /// closed them: `upstream` when the upstream got the client's close, `downstream` when the
    /// client got the upstream's (or the proxy closed the connection).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub closed: Option<Vec<End>>,
    /// Connection: the cluster `tcp_proxy` connected to (`upstream`, or one of `tcp_clusters`
    /// that the filter picked).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upstream_cluster: Option<String>,
}

/// The request the upstream receives (`expect.upstream`); every given part must match.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ExpectRequest {
    /// Method, as on the request line.
    pub method: Option<String>,
    /// Path with query, as on the request line.
    pub path: Option<String>,
    /// Body.
    pub body: Option<String>,
    /// Length of the body in bytes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub body_size: Option<usize>,
}

/// The filter's local reply (`expect.local_response`); every given part must match.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ExpectLocalResponse {
    /// Status.
    pub status: Option<u16>,
    /// Details (Envoy's response code details).
    pub details: Option<String>,
}

/// One HTTP call the module made (an entry of `expect.http_calls`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ExpectCall {
    /// The cluster called.
    pub cluster: String,
    /// `:method`, when given.
    #[serde(default)]
    pub method: Option<String>,
    /// `:path`, when given.
    #[serde(default)]
    pub path: Option<String>,
}

/// A log line the module must write (an entry of `expect.logs`).
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ExpectLog {
    /// Level, when given: trace, debug, info, warn, error or critical.
    #[serde(deserialize_with = "log_level")]
    pub level: Option<String>,
    /// Text the message contains (empty: any message).
    pub contains: String,
}

/// The log levels a module logs at, as Envoy names them.
const LOG_LEVELS: [&str; 6] = ["trace", "debug", "info", "warn", "error", "critical"];

fn log_level<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> std::result::Result<Option<String>, D::Error> {
    let level = Option::<String>::deserialize(d)?;
    match level {
        Some(l) if !LOG_LEVELS.contains(&l.as_str()) => Err(serde::de::Error::invalid_value(
            serde::de::Unexpected::Str(&l),
            &"one of trace, debug, info, warn, error, critical",
        )),
        l => Ok(l),
    }
}

impl fmt::Display for ExpectCall {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let or_any = |v: &Option<String>| v.clone().unwrap_or_else(|| "*".into());
        write!(
            f,
            "{}: {} {}",
            self.cluster,
            or_any(&self.method),
            or_any(&self.path)
        )
    }
}

impl fmt::Display for ExpectLog {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.level {
            Some(l) => write!(f, "[{l}] containing {:?}", self.contains),
            None => write!(f, "[any level] containing {:?}", self.contains),
        }
    }
}

/// What came out of a scenario, comparable between the harness and Envoy: everything a client,
/// the upstream and a called cluster observe, in order, duplicates kept.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
pub struct Outcome {
    /// Status the client got.
    pub status: u16,
    /// Every response header the client got, in order (as HTTP/1 writes them, after the status
    /// line), the proxy's own (`date`, `server`, ...) included.
    pub response_headers: Vec<(String, String)>,
    /// Body the client got.
    pub body: String,
    /// Trailers the client got, in order.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub response_trailers: Vec<(String, String)>,
    /// What the upstream received, or `None` when it was not reached.
    pub upstream: Option<WireRequest>,
    /// Local response the filter sent: (status, details).
    pub local_response: Option<(u16, String)>,
}

/// What came out of a connection scenario, comparable between the harness and Envoy: what each
/// end received, and the order in which the proxy closed the ends.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
pub struct ConnectionOutcome {
    /// The cluster `tcp_proxy` connected to: [`DEFAULT_CLUSTER`], or the one a filter picked.
    pub upstream_cluster: String,
    /// Every byte the upstream received, in order (lossy UTF-8).
    pub upstream_received: String,
    /// Every byte the client received, in order (lossy UTF-8).
    pub downstream_received: String,
    /// The ends the proxy closed (passed an end of stream to), in order.
    pub closed: Vec<End>,
}

/// What one step of a connection did in the harness ([`Scenario::run_connection_traced`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StepRecord {
    /// The step.
    pub step: Step,
    /// Added by the runner: a close the scenario left out, made at its end.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub implicit: bool,
    /// What the filter's data callback returned (`continue`, `pause`).
    pub action: String,
    /// The bytes the filter passed on to the other end during this step (lossy UTF-8).
    pub passed: String,
    /// The proxy closed the connection after this step, with this peer type given to
    /// `proxy_on_downstream_connection_close` (`local`, `remote`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub connection_closed: Option<String>,
}

/// A connection as the harness ran it: what `proxy_on_new_connection` returned, then each step.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
pub struct ConnectionTrace {
    /// What `proxy_on_new_connection` returned.
    pub new_connection: String,
    /// Every step, the implicit closes at the end included.
    pub steps: Vec<StepRecord>,
}

/// A request as it crossed the wire to an upstream or a called cluster (HTTP/1): method and
/// path from the request line, every header in order (`:authority` written as `host`), body.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
pub struct WireRequest {
    /// Method.
    pub method: String,
    /// Path with query.
    pub path: String,
    /// Headers in order, names lower-cased.
    pub headers: Vec<(String, String)>,
    /// Body.
    pub body: String,
    /// Trailers in order.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub trailers: Vec<(String, String)>,
}

impl WireRequest {
    /// How Envoy's HTTP/1 codec writes a header map: `:method` and `:path` go to the request
    /// line, `:authority` becomes `host` where it stands, other pseudo-headers are dropped.
    pub fn from_map(map: &HeaderMap, body: &[u8]) -> WireRequest {
        let mut w = WireRequest {
            body: String::from_utf8_lossy(body).into_owned(),
            ..WireRequest::default()
        };
        for (k, v) in pair_iter(map) {
            match k {
                ":method" => w.method = v.to_string(),
                ":path" => w.path = v.to_string(),
                ":authority" => w.headers.push(("host".into(), v.to_string())),
                k if k.starts_with(':') => {}
                k => w.headers.push((k.to_string(), v.to_string())),
            }
        }
        w
    }

    /// What Envoy's HTTP/1 codec adds while writing a request: `content-length: 0`, at the
    /// end, for a request with no body and none given whose method usually carries one (all
    /// but GET, HEAD, DELETE, TRACE and CONNECT).
    pub fn framed(mut self) -> WireRequest {
        let bodiless_method = matches!(
            self.method.as_str(),
            "GET" | "HEAD" | "DELETE" | "TRACE" | "CONNECT"
        );
        if self.body.is_empty()
            && !bodiless_method
            && !self.headers.iter().any(|(k, _)| k == "content-length")
        {
            self.headers.push(("content-length".into(), "0".into()));
        }
        self
    }

    /// How Envoy's HTTP/1 codec writes a request with trailers: chunked, its
    /// `transfer-encoding: chunked` at the end of the headers, then the trailers.
    pub fn chunked(mut self, trailers: &HeaderMap) -> WireRequest {
        self.headers.retain(|(k, _)| k != "transfer-encoding");
        self.headers
            .push(("transfer-encoding".into(), "chunked".into()));
        self.trailers = pair_iter(trailers)
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        self
    }

    /// How Envoy's async client sends an HTTP call (`proxy_http_call`): the module's map in wire
    /// form, then `x-envoy-internal: true` and `x-envoy-expected-rq-timeout-ms` (the call's
    /// timeout), which it adds.
    pub fn of_call(call: &crate::host::HttpCall) -> WireRequest {
        let mut w = WireRequest::from_map(&call.headers, &call.body);
        w.headers.push(("x-envoy-internal".into(), "true".into()));
        w.headers.push((
            "x-envoy-expected-rq-timeout-ms".into(),
            call.timeout_ms.to_string(),
        ));
        w.framed()
    }
}

pub use crate::headers::{JOINED_REQUEST_HEADERS, JOINED_RESPONSE_HEADERS};

/// Headers as Envoy's codec stores them: a repeat of a name in `joined` is appended to the first
/// value with a comma; any other repeat stays a pair of its own.
pub fn join_repeated(headers: Vec<(String, String)>, joined: &[&str]) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::with_capacity(headers.len());
    for (k, v) in headers {
        if joined.contains(&k.as_str())
            && let Some(first) = out.iter_mut().find(|(n, _)| *n == k)
        {
            first.1.push(',');
            first.1.push_str(&v);
        } else {
            out.push((k, v));
        }
    }
    out
}

/// `x-envoy-expected-rq-timeout-ms`: Envoy's router adds it to every upstream request, after
/// the filters (the route's default timeout, 15 s).
pub const EXPECTED_TIMEOUT_MS: &str = "15000";

/// The `x-request-id` the scenario runner's connection manager gives every request (Envoy's is a
/// random UUID). Its other per-run values: `x-envoy-upstream-service-time` is `0`, as no host time
/// passes, and `date` is the host clock's.
pub const REQUEST_ID: &str = "00000000-0000-4000-8000-000000000000";

/// Headers a proxy adds or rewrites on its own (Envoy: routing, tracing, timing, framing). A
/// report of what a *filter* changed (`wasmctl run`) leaves them out; outcomes are compared with
/// them.
pub const PROXY_HEADERS: &[&str] = &[
    ":authority",
    ":scheme",
    ":method",
    ":path",
    ":status",
    "host",
    "date",
    "server",
    "content-length",
    "transfer-encoding",
    "x-forwarded-proto",
    "x-request-id",
    "x-envoy-expected-rq-timeout-ms",
    "x-envoy-upstream-service-time",
];

/// Keep the headers a filter is responsible for (for showing what a filter changed).
pub fn filtered<'a>(pairs: impl Iterator<Item = (&'a str, &'a str)>) -> Vec<(String, String)> {
    pairs
        .filter(|(k, _)| !PROXY_HEADERS.contains(&k.to_ascii_lowercase().as_str()))
        .map(|(k, v)| (k.to_ascii_lowercase(), v.to_string()))
        .collect()
}

impl Scenario {
    /// Parse a scenario from YAML; errors name the line and the field.
    pub fn from_yaml(text: &str) -> std::result::Result<Scenario, String> {
        let s: Scenario = serde_norway::from_str(text).map_err(|e| e.to_string())?;
        // Which fields are written, defaults or not: a connection scenario has no HTTP field.
        let raw: serde_norway::Value = serde_norway::from_str(text).map_err(|e| e.to_string())?;
        let has = |v: &serde_norway::Value, key: &str| v.get(key).is_some();
        let expect = raw.get("expect").cloned().unwrap_or_default();
        if s.connection.is_some() {
            if let Some(f) = HTTP_FIELDS.iter().find(|f| has(&raw, f)) {
                return Err(format!(
                    "`{f}` and `connection` cannot both be given: `{f}` describes an HTTP \
                     request, `connection` a TCP connection (HTTP fields: {})",
                    HTTP_FIELDS.join(", ")
                ));
            }
            if let Some(f) = HTTP_EXPECTATIONS.iter().find(|f| has(&expect, f)) {
                return Err(format!(
                    "expect.{f} is an HTTP expectation, and `connection` makes this a TCP \
                     connection scenario (its expectations: {}, logs, metrics, http_calls)",
                    CONNECTION_EXPECTATIONS.join(", ")
                ));
            }
        } else if let Some(f) = CONNECTION_EXPECTATIONS.iter().find(|f| has(&expect, f)) {
            return Err(format!(
                "expect.{f} is a connection expectation: the scenario needs a `connection:` \
                 block (the TCP connection's steps)"
            ));
        }
        if let Some(steps) = &s.connection {
            check_steps(steps)?;
        } else if !s.tcp_clusters.is_empty() {
            return Err(
                "`tcp_clusters` are upstreams of a TCP connection: the scenario needs a \
                 `connection:` block"
                    .into(),
            );
        }
        for (i, name) in s.tcp_clusters.iter().enumerate() {
            if name.is_empty()
                || name == DEFAULT_CLUSTER
                || s.tcp_clusters[..i].contains(name)
                || s.clusters.contains_key(name)
                || s.grpc.contains_key(name)
            {
                return Err(format!(
                    "tcp_clusters[{i}]: {name:?} must be a new cluster name (not empty, not \
                     `{DEFAULT_CLUSTER}`, not repeated, not under `clusters` or `grpc`)"
                ));
            }
        }
        s.request.pieces()?;
        s.upstream.pieces_of("upstream")?;
        for (name, a) in &s.clusters {
            let field = format!("clusters.{name}");
            let (piece_fields, trailers) = (
                !a.body_chunks.is_empty() || a.body_repeat.is_some() || a.chunk_size.is_some(),
                !a.trailers.is_empty(),
            );
            if piece_fields || trailers {
                return Err(format!(
                    "{field}: a called cluster answers with one `body` (no `body_chunks`, \
                     `body_repeat`, `chunk_size` or `trailers`)"
                ));
            }
        }
        for (cluster, methods) in &s.grpc {
            for (method, a) in methods {
                let field = format!("grpc.{cluster}.{method}");
                match method.split_once('/') {
                    Some((svc, m)) if !svc.is_empty() && !m.is_empty() && !m.contains('/') => {}
                    _ => {
                        return Err(format!(
                            "{field}: methods are named SERVICE/METHOD (e.g. auth.Authorizer/Check)"
                        ));
                    }
                }
                a.check(&field)?;
            }
            if s.clusters.contains_key(cluster) {
                return Err(format!(
                    "grpc.{cluster}: {cluster} is also under `clusters:` (an HTTP cluster); a \
                     cluster is one or the other"
                ));
            }
        }
        if s.buffer_limit == Some(0) {
            return Err("buffer_limit: must be at least 1 (bytes)".into());
        }
        Ok(s)
    }

    /// Whether this is a connection scenario (it has `connection:`).
    pub fn is_connection(&self) -> bool {
        self.connection.is_some()
    }

    /// The HTTP fields and expectations this scenario gives (those not at their defaults), by
    /// name: what a connection scenario must not have.
    pub fn http_fields_given(&self) -> Vec<&'static str> {
        let e = &self.expect;
        let given = [
            ("request", self.request != Request::default()),
            ("upstream", self.upstream != Answer::default()),
            ("expect.status", e.status.is_some()),
            ("expect.response_headers", !e.response_headers.is_empty()),
            ("expect.response_absent", !e.response_absent.is_empty()),
            (
                "expect.response_header_order",
                !e.response_header_order.is_empty(),
            ),
            ("expect.upstream_headers", !e.upstream_headers.is_empty()),
            ("expect.upstream_absent", !e.upstream_absent.is_empty()),
            (
                "expect.upstream_header_order",
                !e.upstream_header_order.is_empty(),
            ),
            ("expect.upstream_reached", e.upstream_reached.is_some()),
            ("expect.upstream", e.upstream.is_some()),
            ("expect.local_response", e.local_response.is_some()),
            ("expect.body", e.body.is_some()),
            ("expect.body_size", e.body_size.is_some()),
            ("expect.response_trailers", e.response_trailers.is_some()),
            ("expect.upstream_trailers", e.upstream_trailers.is_some()),
            ("buffer_limit", self.buffer_limit.is_some()),
            ("metadata", self.metadata.is_some()),
            ("filter_state", !self.filter_state.is_empty()),
        ];
        given
            .into_iter()
            .filter(|(_, g)| *g)
            .map(|(n, _)| n)
            .collect()
    }

    /// What the client sends, in order, as curl would: `host` (the request's own, else
    /// `example.test`) first, the request's headers, and a `content-length` for a body (none when
    /// the request has trailers: it goes chunked, and Envoy's codec keeps no framing header).
    pub fn client_headers(&self) -> Vec<(String, String)> {
        let mut h = Vec::new();
        if !self
            .request
            .headers
            .iter()
            .any(|(k, _)| k.eq_ignore_ascii_case("host"))
        {
            h.push(("host".to_string(), "example.test".to_string()));
        }
        h.extend(
            self.request
                .headers
                .iter()
                .map(|(k, v)| (k.to_ascii_lowercase(), v.clone())),
        );
        let size = self.request_body_size();
        if size > 0 && self.request.trailers.is_empty() {
            h.push(("content-length".to_string(), size.to_string()));
        }
        h
    }

    /// The length of the request's body.
    pub fn request_body_size(&self) -> usize {
        self.request
            .pieces()
            .map(|p| p.iter().map(Vec::len).sum())
            .unwrap_or(0)
    }

    /// The request headers Envoy's connection manager hands the first filter: the pseudo-headers
    /// first (`:authority` from `host`, `:path`, `:method`, `:scheme`), the client's other
    /// headers in order, then `x-forwarded-proto` and `x-request-id`, which the connection
    /// manager adds.
    pub fn request_headers(&self) -> Vec<(String, String)> {
        let client = self.client_headers();
        let authority = client
            .iter()
            .find(|(k, _)| k == "host")
            .map(|(_, v)| v.clone())
            .unwrap_or_default();
        let mut h = vec![
            (":authority".to_string(), authority),
            (":path".to_string(), self.request.path.clone()),
            (":method".to_string(), self.request.method.clone()),
            (":scheme".to_string(), "http".to_string()),
        ];
        h.extend(join_repeated(
            client.into_iter().filter(|(k, _)| k != "host").collect(),
            JOINED_REQUEST_HEADERS,
        ));
        h.push(("x-forwarded-proto".into(), "http".into()));
        h.push(("x-request-id".into(), REQUEST_ID.into()));
        h
    }

    /// Check an outcome against the expectations; every failure is listed.
    pub fn check(&self, o: &Outcome) -> std::result::Result<(), Vec<String>> {
        let e = &self.expect;
        let mut bad = Vec::new();
        if let Some(s) = e.status
            && s != o.status
        {
            bad.push(format!("status: expected {s}, got {}", o.status));
        }
        let values = |pairs: &[(String, String)], name: &str| -> Vec<String> {
            pairs
                .iter()
                .filter(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
                .collect()
        };
        for (name, want) in &e.response_headers {
            let got = values(&o.response_headers, name);
            if &got != want {
                bad.push(format!(
                    "response header {name}: expected {want:?}, got {got:?}"
                ));
            }
        }
        for name in &e.response_absent {
            if !values(&o.response_headers, name).is_empty() {
                bad.push(format!("response header {name}: expected absent"));
            }
        }
        if let Some(reached) = e.upstream_reached
            && reached != o.upstream.is_some()
        {
            bad.push(format!("upstream reached: expected {reached}"));
        }
        let up = o
            .upstream
            .as_ref()
            .map(|u| u.headers.clone())
            .unwrap_or_default();
        for (name, want) in &e.upstream_headers {
            let got = values(&up, name);
            if &got != want {
                bad.push(format!(
                    "upstream header {name}: expected {want:?}, got {got:?}"
                ));
            }
        }
        for name in &e.upstream_absent {
            if !values(&up, name).is_empty() {
                bad.push(format!("upstream header {name}: expected absent"));
            }
        }
        if let Some(b) = &e.body
            && b != &o.body
        {
            bad.push(format!("body: expected {b:?}, got {:?}", o.body));
        }
        if let Some(n) = e.body_size
            && n != o.body.len()
        {
            bad.push(format!("body size: expected {n}, got {}", o.body.len()));
        }
        if let Some(t) = &e.response_trailers
            && t != &o.response_trailers
        {
            bad.push(format!(
                "response trailers: expected {t:?}, got {:?}",
                o.response_trailers
            ));
        }
        if let Some(t) = &e.upstream_trailers {
            match &o.upstream {
                None => bad.push(format!(
                    "upstream trailers: expected {t:?}, got none: the upstream was not reached"
                )),
                Some(u) if &u.trailers != t => bad.push(format!(
                    "upstream trailers: expected {t:?}, got {:?}",
                    u.trailers
                )),
                Some(_) => {}
            }
        }
        if !e.response_header_order.is_empty() {
            let got = first_order(&o.response_headers, &e.response_header_order);
            if got != e.response_header_order {
                bad.push(format!(
                    "response header order: expected {:?}, got {got:?}",
                    e.response_header_order
                ));
            }
        }
        if !e.upstream_header_order.is_empty() {
            let got = first_order(&up, &e.upstream_header_order);
            if got != e.upstream_header_order {
                bad.push(format!(
                    "upstream header order: expected {:?}, got {got:?}",
                    e.upstream_header_order
                ));
            }
        }
        if let Some(want) = &e.upstream {
            match &o.upstream {
                None => bad.push(format!(
                    "upstream: expected a request ({}), got none: the upstream was not reached",
                    describe_request(want)
                )),
                Some(got) => {
                    let parts = [
                        ("method", &want.method, &got.method),
                        ("path", &want.path, &got.path),
                        ("body", &want.body, &got.body),
                    ];
                    for (part, want, got) in parts {
                        if let Some(w) = want
                            && w != got
                        {
                            bad.push(format!("upstream {part}: expected {w:?}, got {got:?}"));
                        }
                    }
                    if let Some(n) = want.body_size
                        && n != got.body.len()
                    {
                        bad.push(format!(
                            "upstream body size: expected {n}, got {}",
                            got.body.len()
                        ));
                    }
                }
            }
        }
        if let Some(want) = &e.local_response {
            match &o.local_response {
                None => bad.push(format!(
                    "local response: expected one ({}), got none (status {} {})",
                    describe_local(want),
                    o.status,
                    if o.upstream.is_some() {
                        "from the upstream"
                    } else {
                        "without a local response recorded"
                    }
                )),
                Some((status, details)) => {
                    if let Some(w) = want.status
                        && w != *status
                    {
                        bad.push(format!("local response status: expected {w}, got {status}"));
                    }
                    if let Some(w) = &want.details
                        && w != details
                    {
                        bad.push(format!(
                            "local response details: expected {w:?}, got {details:?}"
                        ));
                    }
                }
            }
        }
        if bad.is_empty() { Ok(()) } else { Err(bad) }
    }

    /// Check what only the harness observes of a run against `expect.logs`, `expect.metrics`
    /// and `expect.http_calls`; every failure is listed. The arguments are in the shapes
    /// `wasmctl run` reports: log lines as (level, message) in order (levels as
    /// [`crate::abi::LogLevel`] prints them), metrics as (name, kind, value), and the HTTP
    /// calls made as (cluster, method, path) in order.
    pub fn check_observed(
        &self,
        logs: &[(String, String)],
        metrics: &[(String, String, i64)],
        http_calls: &[(String, String, String)],
    ) -> std::result::Result<(), Vec<String>> {
        let e = &self.expect;
        let mut bad = Vec::new();
        // A subsequence: each expected line after the one the previous expectation matched.
        let matches = |want: &ExpectLog, (level, message): &(String, String)| {
            want.level.as_ref().is_none_or(|l| l == level) && message.contains(&want.contains)
        };
        let mut next = 0;
        let mut previous: Option<usize> = None;
        for (i, want) in e.logs.iter().enumerate() {
            match logs[next..].iter().position(|l| matches(want, l)) {
                Some(at) => {
                    next += at + 1;
                    previous = Some(i);
                }
                None => {
                    let after = match previous {
                        Some(p) => format!(" after the line of logs[{p}]"),
                        None => String::new(),
                    };
                    let earlier = if logs[..next].iter().any(|l| matches(want, l)) {
                        " (a matching line comes earlier: out of order)"
                    } else {
                        ""
                    };
                    bad.push(format!(
                        "logs[{i}]: expected a line {want}{after}, got none{earlier}; lines: {}",
                        shown_lines(&logs[next..])
                    ));
                }
            }
        }
        for (name, want) in &e.metrics {
            match metrics.iter().rev().find(|(n, _, _)| n == name) {
                Some((_, _, got)) if got == want => {}
                Some((_, kind, got)) => bad.push(format!(
                    "metric {name}: expected {want}, got {got} ({kind})"
                )),
                None => {
                    let names: Vec<&str> = metrics.iter().map(|(n, _, _)| n.as_str()).collect();
                    bad.push(format!(
                        "metric {name}: expected {want}, got no such metric (defined: {names:?})"
                    ));
                }
            }
        }
        if let Some(want) = &e.http_calls {
            let shown = |calls: Vec<String>| format!("[{}]", calls.join(", "));
            let got: Vec<String> = http_calls
                .iter()
                .map(|(c, m, p)| format!("{c}: {m} {p}"))
                .collect();
            if want.len() != http_calls.len() {
                bad.push(format!(
                    "http calls: expected {} {}, got {} {}",
                    want.len(),
                    shown(want.iter().map(ToString::to_string).collect()),
                    got.len(),
                    shown(got)
                ));
            } else {
                for (i, (w, (cluster, method, path))) in want.iter().zip(http_calls).enumerate() {
                    let parts = [
                        ("cluster", Some(&w.cluster), cluster),
                        ("method", w.method.as_ref(), method),
                        ("path", w.path.as_ref(), path),
                    ];
                    for (part, want, got) in parts {
                        if let Some(want) = want
                            && want != got
                        {
                            bad.push(format!(
                                "http_calls[{i}] {part}: expected {want:?}, got {got:?}"
                            ));
                        }
                    }
                }
            }
        }
        if bad.is_empty() { Ok(()) } else { Err(bad) }
    }

    /// Check the filter state objects the module set ([`crate::Host::filter_states_set`], as
    /// (name, value) in order) against `expect.filter_state`: each name's last value. Every
    /// failure is listed.
    pub fn check_observed_filter_state(
        &self,
        set: &[(String, String)],
    ) -> std::result::Result<(), Vec<String>> {
        let mut bad = Vec::new();
        for (name, want) in &self.expect.filter_state {
            match set.iter().rev().find(|(n, _)| n == name) {
                Some((_, got)) if got == want => {}
                Some((_, got)) => bad.push(format!(
                    "filter state {name}: expected {want:?}, got {got:?}"
                )),
                None => {
                    let names: Vec<&str> = set.iter().map(|(n, _)| n.as_str()).collect();
                    bad.push(format!(
                        "filter state {name}: expected {want:?}, never set (set: {names:?})"
                    ));
                }
            }
        }
        if bad.is_empty() { Ok(()) } else { Err(bad) }
    }

    /// Check the gRPC calls the module made against `expect.grpc_calls` (harness only, as
    /// [`Scenario::check_observed`]): the calls as (cluster, service, method), in order.
    pub fn check_observed_grpc(
        &self,
        grpc_calls: &[(String, String, String)],
    ) -> std::result::Result<(), Vec<String>> {
        let Some(want) = &self.expect.grpc_calls else {
            return Ok(());
        };
        let mut bad = Vec::new();
        let shown = |calls: Vec<String>| format!("[{}]", calls.join(", "));
        let got: Vec<String> = grpc_calls
            .iter()
            .map(|(c, s, m)| format!("{c}: {s}/{m}"))
            .collect();
        if want.len() != grpc_calls.len() {
            bad.push(format!(
                "grpc calls: expected {} {}, got {} {}",
                want.len(),
                shown(want.iter().map(ToString::to_string).collect()),
                got.len(),
                shown(got)
            ));
        } else {
            for (i, (w, (cluster, service, method))) in want.iter().zip(grpc_calls).enumerate() {
                let parts = [
                    ("cluster", Some(&w.cluster), cluster),
                    ("service", w.service.as_ref(), service),
                    ("method", w.method.as_ref(), method),
                ];
                for (part, want, got) in parts {
                    if let Some(want) = want
                        && want != got
                    {
                        bad.push(format!(
                            "grpc_calls[{i}] {part}: expected {want:?}, got {got:?}"
                        ));
                    }
                }
            }
        }
        if bad.is_empty() { Ok(()) } else { Err(bad) }
    }

    /// Run the scenario through a plugin as Envoy would: request headers (and body), any HTTP
    /// calls answered from [`Scenario::clusters`], the upstream's answer unless the filter
    /// answered locally, then the end of the stream.
    pub fn run(&self, plugin: &Plugin) -> Result<Outcome> {
        if self.is_connection() {
            return Err(Error::Usage(format!(
                "scenario {:?} describes a TCP connection: run it with run_connection",
                self.name
            )));
        }
        self.prepare().run(plugin)
    }

    /// Check a connection's outcome against the expectations (`upstream_received`,
    /// `downstream_received`, `closed`); every failure is listed.
    pub fn check_connection(&self, o: &ConnectionOutcome) -> std::result::Result<(), Vec<String>> {
        let e = &self.expect;
        let mut bad = Vec::new();
        if let Some(want) = &e.upstream_cluster
            && want != &o.upstream_cluster
        {
            bad.push(format!(
                "upstream cluster: expected {want:?}, got {:?}",
                o.upstream_cluster
            ));
        }
        if let Some(want) = &e.upstream_received
            && want != &o.upstream_received
        {
            bad.push(format!(
                "upstream received: expected {want:?}, got {:?}",
                o.upstream_received
            ));
        }
        if let Some(want) = &e.downstream_received
            && want != &o.downstream_received
        {
            bad.push(format!(
                "downstream received: expected {want:?}, got {:?}",
                o.downstream_received
            ));
        }
        if let Some(want) = &e.closed
            && want != &o.closed
        {
            let shown = |v: &[End]| {
                format!(
                    "[{}]",
                    v.iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            };
            bad.push(format!(
                "closed: expected {}, got {}",
                shown(want),
                shown(&o.closed)
            ));
        }
        if bad.is_empty() { Ok(()) } else { Err(bad) }
    }

    /// The steps a connection runs: the scenario's, then a close of each end it leaves open
    /// (the client first), marked `true`. An error when the steps are not possible
    /// ([`check_steps`]).
    pub fn steps_to_run(&self) -> std::result::Result<Vec<(Step, bool)>, String> {
        let steps = self.connection.clone().unwrap_or_default();
        check_steps(&steps)?;
        let mut all: Vec<(Step, bool)> = steps.into_iter().map(|s| (s, false)).collect();
        for end in [End::Downstream, End::Upstream] {
            if !all.iter().any(|(s, _)| *s == Step::Close(end)) {
                all.push((Step::Close(end), true));
            }
        }
        Ok(all)
    }

    /// Run a connection scenario through a network-filter plugin as Envoy runs a
    /// `envoy.filters.network.wasm` filter in front of `tcp_proxy`; see
    /// [`Scenario::run_connection_traced`].
    pub fn run_connection(&self, plugin: &Plugin) -> Result<ConnectionOutcome> {
        self.run_connection_traced(plugin).map(|(o, _)| o)
    }

    /// Run a connection scenario as Envoy 1.40 runs a network filter before `tcp_proxy`
    /// (measured: `tests/tests/scenarios.rs`), and say what each step did:
    ///
    /// - the connection opens: `proxy_on_context_create`, `proxy_on_new_connection`;
    /// - each chunk the client sends: `proxy_on_downstream_data(size, false)` (size: what the
    ///   filter has buffered, this chunk included); on `continue` the buffer, as the filter
    ///   left it, goes to the upstream; the upstream's chunks likewise through
    ///   `proxy_on_upstream_data`, to the client;
    /// - the client closes: `proxy_on_downstream_data(size, true)`, and its end of stream goes
    ///   on to the upstream;
    /// - the upstream closes: `proxy_on_upstream_data(size, true)`, then
    ///   `proxy_on_upstream_connection_close(Unknown)`, and its end goes on to the client;
    /// - once both have closed, the proxy closes the connection:
    ///   `proxy_on_downstream_connection_close` with peer `Remote` when the client's close came
    ///   last (the proxy read it), `Local` when the upstream's did (the proxy wrote it), then
    ///   `proxy_on_done`, `proxy_on_log`, `proxy_on_delete`; an end that had not been sent an
    ///   end of stream is closed then (the client first).
    ///
    /// An end the scenario does not close closes at its end, the client first. HTTP calls the
    /// filter makes are answered from [`Scenario::clusters`] after each step.
    pub fn run_connection_traced(
        &self,
        plugin: &Plugin,
    ) -> Result<(ConnectionOutcome, ConnectionTrace)> {
        use crate::abi::PeerType;
        let all = self
            .steps_to_run()
            .map_err(|m| Error::Usage(format!("scenario {:?}: {m}", self.name)))?;
        let host = plugin.host();
        let (mut c, opened) = plugin.network_stream()?;
        // tcp_proxy, the next filter, picks its cluster once the filter let the connection on.
        let picked = c
            .filter_state(TCP_PROXY_CLUSTER)
            .map(|b| String::from_utf8_lossy(&b).into_owned());
        let upstream_cluster = match picked {
            None => DEFAULT_CLUSTER.to_string(),
            Some(name) if name == DEFAULT_CLUSTER || self.tcp_clusters.contains(&name) => name,
            Some(name) => {
                return Err(Error::Usage(format!(
                    "scenario {:?}: the filter picked the cluster {name:?} ({TCP_PROXY_CLUSTER}), \
                     which is neither `{DEFAULT_CLUSTER}` nor in `tcp_clusters` (Envoy would \
                     close the connection: not modelled)",
                    self.name
                )));
            }
        };
        self.answer_calls(&host)?;
        let mut trace = ConnectionTrace {
            new_connection: opened.to_string(),
            steps: Vec::new(),
        };
        let mut closed: Vec<End> = Vec::new();
        let mut ended = [false, false];
        for (step, implicit) in all {
            let (to_upstream, to_client) =
                (c.downstream_forwarded().len(), c.upstream_forwarded().len());
            let action = match &step {
                Step::Downstream(t) => c.send_downstream_data(t.as_bytes(), false)?,
                Step::Upstream(t) => c.send_upstream_data(t.as_bytes(), false)?,
                Step::Close(End::Downstream) => {
                    let a = c.send_downstream_data(b"", true)?;
                    ended[0] = true;
                    if a == crate::abi::Action::Continue {
                        closed.push(End::Upstream);
                    }
                    a
                }
                Step::Close(End::Upstream) => {
                    let a = c.send_upstream_data(b"", true)?;
                    c.upstream_closed(PeerType::Unknown)?;
                    ended[1] = true;
                    if a == crate::abi::Action::Continue {
                        closed.push(End::Downstream);
                    }
                    a
                }
            };
            self.answer_calls(&host)?;
            let passed = match &step {
                Step::Downstream(_) | Step::Close(End::Downstream) => {
                    &c.downstream_forwarded()[to_upstream..]
                }
                Step::Upstream(_) | Step::Close(End::Upstream) => {
                    &c.upstream_forwarded()[to_client..]
                }
            };
            let passed = String::from_utf8_lossy(passed).into_owned();
            let mut connection_closed = None;
            if ended == [true, true] {
                // Both ends are done: the proxy closes the connection. Measured in Envoy 1.40:
                // the peer is Remote when it read the last end of stream, Local when it wrote it.
                let peer = if step == Step::Close(End::Downstream) {
                    PeerType::Remote
                } else {
                    PeerType::Local
                };
                for end in [End::Downstream, End::Upstream] {
                    if !closed.contains(&end) {
                        closed.push(end);
                    }
                }
                c.close(peer)?;
                self.answer_calls(&host)?;
                connection_closed = Some(peer.to_string());
            }
            trace.steps.push(StepRecord {
                step,
                implicit,
                action: action.to_string(),
                passed,
                connection_closed,
            });
        }
        let outcome = ConnectionOutcome {
            upstream_cluster,
            upstream_received: String::from_utf8_lossy(c.downstream_forwarded()).into_owned(),
            downstream_received: String::from_utf8_lossy(c.upstream_forwarded()).into_owned(),
            closed,
        };
        Ok((outcome, trace))
    }

    /// The scenario ready to run many times: the maps the proxy hands the filter are built
    /// once (`wasmctl bench` runs it thousands of times).
    pub fn prepare(&self) -> Prepared<'_> {
        let mut response = vec![(":status".to_string(), self.upstream.status.to_string())];
        response.extend(join_repeated(
            self.upstream
                .headers
                .iter()
                .map(|(k, v)| (k.to_ascii_lowercase(), v.clone()))
                .collect(),
            JOINED_RESPONSE_HEADERS,
        ));
        let response_pieces = self.upstream.pieces_of("upstream").unwrap_or_default();
        // A 204 carries no content-length: Envoy drops the upstream's. An answer with trailers
        // comes chunked, and Envoy's codec keeps its `transfer-encoding` in the map.
        if !self.upstream.trailers.is_empty() {
            response.push(("transfer-encoding".into(), "chunked".into()));
        } else if self.upstream.status != 204 {
            let size: usize = response_pieces.iter().map(Vec::len).sum();
            response.push(("content-length".into(), size.to_string()));
        }
        // The router's timing header, which the filters see.
        response.push(("x-envoy-upstream-service-time".into(), "0".into()));
        let lower = |v: &[(String, String)]| -> Vec<(String, String)> {
            v.iter()
                .map(|(k, v)| (k.to_ascii_lowercase(), v.clone()))
                .collect()
        };
        Prepared {
            scenario: self,
            request: self.request_headers(),
            response,
            request_pieces: self.request.pieces().unwrap_or_default(),
            response_pieces,
            request_trailers: lower(&self.request.trailers),
            response_trailers: lower(&self.upstream.trailers),
            date: std::cell::RefCell::new((u64::MAX, String::new())),
        }
    }

    /// Run a bootstrap service (Envoy's `WasmService`: a plugin with a root context and no
    /// stream) for `advance` of host time: ticks fire in time order, the work each tick queued
    /// runs before the next, and its HTTP calls are answered from [`Scenario::clusters`] at once,
    /// before the next tick, as a nearby cluster answers in Envoy. Calls made while the plugin
    /// started are answered first.
    pub fn run_service(&self, plugin: &Plugin, advance: std::time::Duration) -> Result<()> {
        let host = plugin.host();
        self.answer_calls(&host)?;
        let target = host.now_nanos() + advance.as_nanos() as u64;
        while let Some(at) = host.next_tick_nanos().filter(|t| *t <= target) {
            host.advance(std::time::Duration::from_nanos(
                at.saturating_sub(host.now_nanos()),
            ))?;
            self.answer_calls(&host)?;
        }
        host.advance(std::time::Duration::from_nanos(
            target.saturating_sub(host.now_nanos()),
        ))
    }

    /// Answer the first gRPC call or stream that can be answered (a unary call, or a stream
    /// whose module side is closed) from [`Scenario::grpc`], as Envoy delivers a server's
    /// answer: a unary call gets its message (status OK) or its close; a stream its initial
    /// metadata (when the server sent any), each message, its trailing metadata, its close.
    /// Whether one was answered.
    fn answer_grpc_call(&self, host: &Host) -> Result<bool> {
        let pending = host.pending_grpc_calls();
        let Some(call) = pending.iter().find(|c| !c.cancelled && c.local_closed) else {
            return Ok(false);
        };
        let key = format!("{}/{}", call.service_name, call.method);
        let answer = self.grpc.get(&call.service).and_then(|m| m.get(&key));
        let Some(a) = answer else {
            let (status, message) = GRPC_UNIMPLEMENTED;
            let message = &grpc_close_message(message);
            if call.stream {
                host.grpc_stream_event(call.token, GrpcStreamEvent::Close(status, message))?;
            } else {
                host.respond_grpc_call(call.token, Err((status, message)))?;
            }
            return Ok(true);
        };
        let messages = a
            .message_bytes(&format!("grpc.{}.{key}", call.service))
            .map_err(Error::Usage)?;
        if let Some(delay) = a.delay_ms {
            let timeout = u64::from(call.timeout_ms);
            if !call.stream && timeout > 0 && delay >= timeout {
                // Envoy's async client gives up at the timeout.
                host.advance(std::time::Duration::from_millis(timeout))?;
                let (status, message) = GRPC_TIMEOUT;
                host.respond_grpc_call(call.token, Err((status, message)))?;
                return Ok(true);
            }
            host.advance(std::time::Duration::from_millis(delay))?;
        }
        if !call.stream {
            match messages.first() {
                Some(m) if a.status == 0 => host.respond_grpc_call(call.token, Ok(m))?,
                None if a.status == 0 => {
                    host.respond_grpc_call(call.token, Err(GRPC_NO_MESSAGE))?
                }
                _ => host.respond_grpc_call(
                    call.token,
                    Err((a.status, &grpc_close_message(&a.message))),
                )?,
            }
            return Ok(true);
        }
        // A stream: each part as Envoy delivers what the server sent (measured order).
        let t = call.token;
        if !a.initial_metadata.is_empty() || !messages.is_empty() {
            let mut md: Vec<(&str, &str)> = GRPC_SERVER_HEADERS.to_vec();
            md.extend(as_pairs(&a.initial_metadata));
            md.push(("x-envoy-upstream-service-time", "0"));
            host.grpc_stream_event(t, GrpcStreamEvent::InitialMetadata(&md))?;
        }
        for m in &messages {
            host.grpc_stream_event(t, GrpcStreamEvent::Message(m))?;
        }
        let status = a.status.to_string();
        let mut md = vec![
            ("grpc-status", status.as_str()),
            ("grpc-message", &a.message),
        ];
        md.extend(as_pairs(&a.trailing_metadata));
        host.grpc_stream_event(t, GrpcStreamEvent::TrailingMetadata(&md))?;
        let message = grpc_close_message(&a.message);
        host.grpc_stream_event(t, GrpcStreamEvent::Close(a.status, &message))?;
        Ok(true)
    }

    fn answer_calls(&self, host: &Host) -> Result<()> {
        // Answering may make the filter call again: loop until nothing is pending.
        for _ in 0..16 {
            if self.answer_grpc_call(host)? {
                continue;
            }
            let pending = host.pending_http_calls();
            let Some(call) = pending.first() else {
                return Ok(());
            };
            match self.clusters.get(&call.upstream) {
                Some(a) => {
                    let mut h = vec![(":status".to_string(), a.status.to_string())];
                    h.extend(join_repeated(
                        a.headers
                            .iter()
                            .map(|(k, v)| (k.to_ascii_lowercase(), v.clone()))
                            .collect(),
                        JOINED_RESPONSE_HEADERS,
                    ));
                    h.push(("content-length".into(), a.body.len().to_string()));
                    host.respond_http_call(call.token, &as_pairs(&h), a.body.as_bytes(), &[])?;
                }
                // No such cluster in the scenario: Envoy's async client answers 503.
                None => host.respond_http_call(call.token, &[(":status", "503")], b"", &[])?,
            }
        }
        Err(Error::Usage(format!(
            "scenario {:?}: more than 16 HTTP calls",
            self.name
        )))
    }
}

/// The names of `want` in the order of their first occurrence in `pairs` (absent names left out).
fn first_order(pairs: &[(String, String)], want: &[String]) -> Vec<String> {
    let mut got: Vec<String> = Vec::new();
    for (k, _) in pairs {
        if want.contains(k) && !got.contains(k) {
            got.push(k.clone());
        }
    }
    got
}

fn describe_request(r: &ExpectRequest) -> String {
    let mut parts: Vec<String> = [("method", &r.method), ("path", &r.path), ("body", &r.body)]
        .into_iter()
        .filter_map(|(n, v)| v.as_ref().map(|v| format!("{n} {v:?}")))
        .collect();
    if let Some(n) = r.body_size {
        parts.push(format!("body size {n}"));
    }
    if parts.is_empty() {
        "any".into()
    } else {
        parts.join(", ")
    }
}

fn describe_local(l: &ExpectLocalResponse) -> String {
    match (&l.status, &l.details) {
        (Some(s), Some(d)) => format!("status {s}, details {d:?}"),
        (Some(s), None) => format!("status {s}"),
        (None, Some(d)) => format!("details {d:?}"),
        (None, None) => "any".into(),
    }
}

/// Log lines for a failure message: `[level] message`, at most 20 of them.
fn shown_lines(lines: &[(String, String)]) -> String {
    const MAX: usize = 20;
    let mut shown: Vec<String> = lines
        .iter()
        .take(MAX)
        .map(|(l, m)| format!("[{l}] {m:?}"))
        .collect();
    if lines.len() > MAX {
        shown.push(format!("... {} more", lines.len() - MAX));
    }
    format!("[{}]", shown.join(", "))
}

/// A scenario ready to run many times ([`Scenario::prepare`]).
pub struct Prepared<'a> {
    scenario: &'a Scenario,
    /// What the connection manager hands the first filter.
    request: Vec<(String, String)>,
    /// What the codec and the router hand the filters of the upstream's answer.
    response: Vec<(String, String)>,
    /// The request's body as the codec delivers it, one body callback each.
    request_pieces: Vec<Vec<u8>>,
    /// The upstream's body likewise.
    response_pieces: Vec<Vec<u8>>,
    /// The request's trailers.
    request_trailers: Vec<(String, String)>,
    /// The upstream's trailers.
    response_trailers: Vec<(String, String)>,
    /// The `date` header for the second of host time it was made in.
    date: std::cell::RefCell<(u64, String)>,
}

impl Prepared<'_> {
    /// Run the scenario once: what [`Scenario::run`] does.
    pub fn run(&self, plugin: &Plugin) -> Result<Outcome> {
        self.drive(plugin, true)
    }

    /// Run the scenario once as [`Prepared::run`] does, the filter seeing the same, but build
    /// no [`Outcome`] (only its status when a local reply was sent): what a filter costs, for
    /// benchmarks.
    pub fn run_unobserved(&self, plugin: &Plugin) -> Result<()> {
        self.drive(plugin, false).map(|_| ())
    }

    fn drive(&self, plugin: &Plugin, keep: bool) -> Result<Outcome> {
        let sc = self.scenario;
        let host = plugin.host();
        let mut s = plugin.http_stream()?;
        // What Envoy's configuration tells a filter, as a scenario's Envoy is configured: one
        // unnamed route to the cluster `upstream`, on a listener of no set direction.
        s.set_property(&["xds", "cluster_name"], "upstream");
        s.set_property(&["xds", "route_name"], "");
        s.set_property(&["xds", "listener_direction"], 0i64.to_le_bytes());
        // What filters before this one set.
        if let Some(m) = &sc.metadata {
            for (path, value) in m.properties() {
                let path: Vec<&str> = path.iter().map(String::as_str).collect();
                s.set_property(&path, value);
            }
        }
        for (name, value) in &sc.filter_state {
            s.set_property(&["filter_state", name], value);
        }
        let limit = sc.buffer_limit.unwrap_or(DEFAULT_BUFFER_LIMIT) as usize;
        let pairs = as_pairs(&self.request);
        let has_body = !self.request_pieces.is_empty();
        let has_trailers = !self.request_trailers.is_empty();
        let mut action = s.send_request_headers(&pairs, !has_body && !has_trailers)?;
        sc.answer_calls(&host)?;
        s.sync()?;
        // Envoy 1.40's HTTP/1 codec (measured): each piece the client wrote is one body callback
        // without end of stream; then the trailers, or an empty body callback with it.
        let mut too_large = false;
        if has_body || has_trailers {
            let mut buffered = 0usize;
            let empty_end: &[Vec<u8>] = if has_trailers { &[] } else { &[Vec::new()] };
            let pieces = self.request_pieces.iter().chain(empty_end);
            let last = self.request_pieces.len() + empty_end.len();
            for (i, piece) in pieces.enumerate() {
                if s.local_response().is_some() {
                    break;
                }
                action = s.send_request_body(piece, i + 1 == last && !has_trailers)?;
                sc.answer_calls(&host)?;
                s.sync()?;
                // A filter that buffers (Pause) past the limit: Envoy answers 413.
                buffered = if action == Action::Continue {
                    0
                } else {
                    buffered + piece.len()
                };
                if buffered > limit && s.local_response().is_none() {
                    too_large = true;
                    break;
                }
            }
            if has_trailers && !too_large && s.local_response().is_none() {
                action = s.send_request_trailers(&as_pairs(&self.request_trailers))?;
                sc.answer_calls(&host)?;
                s.sync()?;
            }
        }
        let resumed = s.resumed().contains(&0);
        let mut outcome = Outcome::default();
        let mut close = false;
        if too_large {
            s.send_proxy_reply(413, b"Payload Too Large", "request_payload_too_large")?;
            outcome.status = 413;
            outcome.local_response = Some((413, "request_payload_too_large".into()));
            // Envoy closes the connection after this reply.
            close = true;
        } else if let Some(local) = s.local_response() {
            outcome.status = local.status as u16;
            outcome.local_response = Some((local.status as u16, local.details.clone()));
        } else if action == Action::Continue || resumed {
            // The router, after every filter.
            s.proxy_request_headers(&[("x-envoy-expected-rq-timeout-ms", EXPECTED_TIMEOUT_MS)]);
            if keep {
                let wire = WireRequest::from_map(&s.request_headers(), &s.request_body());
                outcome.upstream = Some(if has_trailers {
                    wire.chunked(&s.request_trailers())
                } else {
                    wire.framed()
                });
            }
            // What Envoy's codec makes of the upstream's answer, delivered as the request is.
            let has_resp_body = !self.response_pieces.is_empty();
            let has_resp_trailers = !self.response_trailers.is_empty();
            s.send_response_headers(
                &as_pairs(&self.response),
                !has_resp_body && !has_resp_trailers,
            )?;
            if has_resp_body || has_resp_trailers {
                let empty_end: &[Vec<u8>] = if has_resp_trailers {
                    &[]
                } else {
                    &[Vec::new()]
                };
                let last = self.response_pieces.len() + empty_end.len();
                for (i, piece) in self.response_pieces.iter().chain(empty_end).enumerate() {
                    s.send_response_body(piece, i + 1 == last && !has_resp_trailers)?;
                }
                if has_resp_trailers {
                    s.send_response_trailers(&as_pairs(&self.response_trailers))?;
                }
            }
            if keep {
                outcome.status = s
                    .response_headers()
                    .get(":status")
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0);
            }
        } else {
            return Err(Error::Usage(format!(
                "scenario {:?}: the filter paused the request and never resumed it",
                sc.name
            )));
        }
        // What the client gets: the final map without `:status`, then what the connection
        // manager adds to every response after the filters.
        {
            // The date changes once a second: formatted once per second of host time.
            let now = host.now_nanos() / 1_000_000_000;
            let mut date = self.date.borrow_mut();
            if date.0 != now {
                *date = (now, http_date(host.now_nanos()));
            }
            s.proxy_response_headers(&[("date", &date.1), ("server", "envoy")]);
            if close {
                s.proxy_response_headers(&[("connection", "close")]);
            }
        }
        if keep {
            let resp = s.response_headers();
            // Envoy's HTTP/1 codec writes its own `transfer-encoding: chunked` after every
            // header of the map.
            let chunked = resp.get("transfer-encoding").is_some();
            outcome.response_headers = pair_iter(&resp)
                .filter(|(k, _)| *k != ":status" && *k != "transfer-encoding")
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            if chunked {
                outcome
                    .response_headers
                    .push(("transfer-encoding".into(), "chunked".into()));
            }
            outcome.body = String::from_utf8_lossy(&s.response_body()).into_owned();
            outcome.response_trailers = pair_iter(&s.response_trailers())
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
        }
        s.complete()?;
        Ok(outcome)
    }
}

/// An HTTP date (RFC 9110 IMF-fixdate) of a host-clock reading.
pub fn http_date(unix_nanos: u64) -> String {
    let secs = unix_nanos / 1_000_000_000;
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    format!(
        "{}, {day:02} {} {year} {:02}:{:02}:{:02} GMT",
        DAYS[days.rem_euclid(7) as usize],
        MONTHS[(month - 1) as usize],
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

fn as_pairs(v: &[(String, String)]) -> Vec<(&str, &str)> {
    v.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect()
}

fn pair_iter(h: &HeaderMap) -> impl Iterator<Item = (&str, &str)> {
    h.iter()
        .map(|(k, v)| (k, std::str::from_utf8(v).unwrap_or("")))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::panic)]
    use super::*;

    fn pairs(v: &[(&str, &str)]) -> Vec<(String, String)> {
        v.iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    fn with_expect(expect: &str) -> Scenario {
        let text = format!("name: t\nexpect:\n{expect}");
        Scenario::from_yaml(&text).unwrap_or_else(|e| panic!("{e}\n{text}"))
    }

    /// The upstream got `POST /a` with `x-1, x-2, x-1` and body `b`; the client got `x-a, x-b`.
    fn proxied() -> Outcome {
        Outcome {
            status: 200,
            response_headers: pairs(&[("x-a", "1"), ("date", "d"), ("x-b", "2"), ("x-a", "3")]),
            body: String::new(),
            response_trailers: Vec::new(),
            upstream: Some(WireRequest {
                method: "POST".into(),
                path: "/a".into(),
                headers: pairs(&[("host", "h"), ("x-1", "1"), ("x-2", "2"), ("x-1", "3")]),
                body: "b".into(),
                trailers: Vec::new(),
            }),
            local_response: None,
        }
    }

    fn failures(s: &Scenario, o: &Outcome) -> Vec<String> {
        s.check(o).err().unwrap_or_default()
    }

    #[test]
    fn header_order_is_the_order_of_first_occurrences() {
        let o = proxied();
        let s = with_expect(
            "  response_header_order: [x-a, x-b]\n  upstream_header_order: [host, x-2]",
        );
        assert_eq!(failures(&s, &o), Vec::<String>::new());
        let s = with_expect(
            "  response_header_order: [x-b, x-a]\n  upstream_header_order: [x-2, x-1, x-3]",
        );
        assert_eq!(
            failures(&s, &o),
            [
                r#"response header order: expected ["x-b", "x-a"], got ["x-a", "x-b"]"#,
                r#"upstream header order: expected ["x-2", "x-1", "x-3"], got ["x-1", "x-2"]"#,
            ]
        );
    }

    #[test]
    fn the_upstream_request_is_checked_part_by_part() {
        let o = proxied();
        let s = with_expect("  upstream: {method: POST, path: /a, body: b}");
        assert_eq!(failures(&s, &o), Vec::<String>::new());
        let s = with_expect("  upstream: {path: /a}");
        assert_eq!(failures(&s, &o), Vec::<String>::new());
        let s = with_expect("  upstream: {method: GET, path: /b, body: ''}");
        assert_eq!(
            failures(&s, &o),
            [
                r#"upstream method: expected "GET", got "POST""#,
                r#"upstream path: expected "/b", got "/a""#,
                r#"upstream body: expected "", got "b""#,
            ]
        );
        let not_reached = Outcome {
            upstream: None,
            ..proxied()
        };
        let s = with_expect("  upstream: {path: /a}");
        assert_eq!(
            failures(&s, &not_reached),
            [r#"upstream: expected a request (path "/a"), got none: the upstream was not reached"#]
        );
    }

    #[test]
    fn the_local_response_is_checked_part_by_part() {
        let local = Outcome {
            status: 403,
            upstream: None,
            local_response: Some((403, "denied_by_auth".into())),
            ..Outcome::default()
        };
        let s = with_expect("  local_response: {status: 403, details: denied_by_auth}");
        assert_eq!(failures(&s, &local), Vec::<String>::new());
        let s = with_expect("  local_response: {}");
        assert_eq!(failures(&s, &local), Vec::<String>::new());
        let s = with_expect("  local_response: {status: 401, details: other}");
        assert_eq!(
            failures(&s, &local),
            [
                "local response status: expected 401, got 403",
                r#"local response details: expected "other", got "denied_by_auth""#,
            ]
        );
        let s = with_expect("  local_response: {status: 403}");
        assert_eq!(
            failures(&s, &proxied()),
            ["local response: expected one (status 403), got none (status 200 from the upstream)"]
        );
    }

    #[test]
    fn observed_expectations_are_not_checked_against_an_outcome() {
        let s = with_expect(
            "  logs: [{contains: never}]\n  metrics: {m: 1}\n  http_calls: [{cluster: auth}]",
        );
        assert_eq!(failures(&s, &proxied()), Vec::<String>::new());
        assert!(s.check_observed(&[], &[], &[]).is_err());
    }

    fn lines() -> Vec<(String, String)> {
        pairs(&[
            ("info", "configured 2 rule(s)"),
            ("debug", "rule 0 applied"),
            ("warn", "rule 1 skipped"),
        ])
    }

    #[test]
    fn logs_match_in_order_by_level_and_text() {
        let s = with_expect(
            "  logs:\n  - {level: info, contains: configured}\n  - {contains: applied}\n  - {level: warn}",
        );
        assert_eq!(s.check_observed(&lines(), &[], &[]), Ok(()));
        let s = with_expect("  logs: [{level: info, contains: rule 0}]");
        let bad = s.check_observed(&lines(), &[], &[]).unwrap_err();
        assert_eq!(bad.len(), 1);
        assert!(
            bad[0].starts_with(r#"logs[0]: expected a line [info] containing "rule 0", got none; lines: [[info] "configured 2 rule(s)", [debug] "rule 0 applied""#),
            "{bad:?}"
        );
        // Out of order: each after the line the one before it matched.
        let s = with_expect("  logs: [{contains: skipped}, {contains: applied}]");
        let bad = s.check_observed(&lines(), &[], &[]).unwrap_err();
        assert_eq!(
            bad,
            [
                r#"logs[1]: expected a line [any level] containing "applied" after the line of logs[0], got none (a matching line comes earlier: out of order); lines: []"#
            ]
        );
    }

    #[test]
    fn a_log_level_must_be_one_envoy_knows_and_fields_are_named() {
        let e =
            Scenario::from_yaml("name: t\nexpect:\n  logs: [{level: information}]").unwrap_err();
        assert!(
            e.contains("information") && e.contains("one of trace"),
            "{e}"
        );
        assert!(e.contains("line 3"), "{e}");
        let e = Scenario::from_yaml("name: t\nexpect:\n  upstream: {verb: GET}").unwrap_err();
        assert!(
            e.contains("unknown field `verb`") && e.contains("line 3"),
            "{e}"
        );
        let e = Scenario::from_yaml("name: t\nexpect:\n  http_calls: [{path: /x}]").unwrap_err();
        assert!(e.contains("missing field `cluster`"), "{e}");
    }

    #[test]
    fn metrics_are_checked_by_final_value() {
        let m = vec![
            ("a.count".to_string(), "counter".to_string(), 2),
            ("a.level".to_string(), "gauge".to_string(), -1),
        ];
        let s = with_expect("  metrics: {a.count: 2, a.level: -1}");
        assert_eq!(s.check_observed(&[], &m, &[]), Ok(()));
        let s = with_expect("  metrics: {a.count: 3, a.gone: 0}");
        assert_eq!(
            s.check_observed(&[], &m, &[]).unwrap_err(),
            [
                r#"metric a.count: expected 3, got 2 (counter)"#,
                r#"metric a.gone: expected 0, got no such metric (defined: ["a.count", "a.level"])"#,
            ]
        );
    }

    #[test]
    fn grpc_answers_parse_and_errors_name_the_field() {
        let s = Scenario::from_yaml(
            "name: t\ngrpc:\n  auth:\n    a.B/Check: {messages: [\"6869\"], encoding: hex, \
             initial_metadata: [[x-a, \"1\"]]}\nexpect:\n  grpc_calls: [{cluster: auth}]",
        )
        .unwrap();
        let a = &s.grpc["auth"]["a.B/Check"];
        assert_eq!(a.message_bytes("f").unwrap(), vec![b"hi".to_vec()]);
        for (yaml, want) in [
            ("{a.B/C: {status: 17}}", "grpc.auth.a.B/C.status: 17"),
            (
                "{Check: {}}",
                "grpc.auth.Check: methods are named SERVICE/METHOD",
            ),
            (
                "{a.B/C: {messages: [zz], encoding: hex}}",
                "grpc.auth.a.B/C.messages[0]: not hex",
            ),
            (
                "{a.B/C: {messages: [\"!\"], encoding: base64}}",
                "grpc.auth.a.B/C.messages[0]: not base64",
            ),
            (
                "{a.B/C: {trailing_metadata: [[X-A, b]]}}",
                "grpc.auth.a.B/C.trailing_metadata[0]",
            ),
        ] {
            let e = Scenario::from_yaml(&format!("name: t\ngrpc:\n  auth: {yaml}")).unwrap_err();
            assert!(e.contains(want), "{yaml}: {e}");
        }
        let e = Scenario::from_yaml("name: t\ngrpc: {auth: {a.B/C: {statuss: 1}}}").unwrap_err();
        assert!(e.contains("statuss"), "{e}");
    }

    #[test]
    fn grpc_calls_are_all_of_them_in_order() {
        let s = with_expect("  grpc_calls: [{cluster: auth, service: a.B, method: Check}]");
        let row = |c: &str, m: &str| (c.to_string(), "a.B".to_string(), m.to_string());
        assert_eq!(s.check_observed_grpc(&[row("auth", "Check")]), Ok(()));
        assert_eq!(
            s.check_observed_grpc(&[row("auth", "Watch")]).unwrap_err(),
            vec![r#"grpc_calls[0] method: expected "Check", got "Watch""#.to_string()]
        );
        let bad = s.check_observed_grpc(&[]).unwrap_err();
        assert!(bad[0].starts_with("grpc calls: expected 1"), "{bad:?}");
        assert_eq!(with_expect("  {}").check_observed_grpc(&[]), Ok(()));
    }

    #[test]
    fn http_calls_are_all_of_them_in_order() {
        let calls = vec![
            ("auth".to_string(), "GET".to_string(), "/check".to_string()),
            ("audit".to_string(), "POST".to_string(), "/log".to_string()),
        ];
        let s = with_expect(
            "  http_calls: [{cluster: auth, method: GET, path: /check}, {cluster: audit}]",
        );
        assert_eq!(s.check_observed(&[], &[], &calls), Ok(()));
        let s = with_expect("  http_calls: []");
        assert_eq!(s.check_observed(&[], &[], &[]), Ok(()));
        assert_eq!(
            s.check_observed(&[], &[], &calls).unwrap_err(),
            ["http calls: expected 0 [], got 2 [auth: GET /check, audit: POST /log]"]
        );
        let s = with_expect("  http_calls: [{cluster: audit}, {cluster: audit, path: /x}]");
        assert_eq!(
            s.check_observed(&[], &[], &calls).unwrap_err(),
            [
                r#"http_calls[0] cluster: expected "audit", got "auth""#,
                r#"http_calls[1] path: expected "/x", got "/log""#,
            ]
        );
        // Not given: not checked.
        assert_eq!(with_expect("  {}").check_observed(&[], &[], &calls), Ok(()));
    }

    #[test]
    fn a_connection_parses_step_by_step() {
        let s = Scenario::from_yaml(
            r#"
name: tcp
connection:
  - downstream: "hello "
  - upstream: HELLO
  - close: downstream
  - close: upstream
expect:
  upstream_received: "hello "
  downstream_received: HELLO
  closed: [upstream, downstream]
  logs: [{contains: bytes}]
"#,
        )
        .unwrap();
        assert!(s.is_connection());
        assert_eq!(
            s.connection.as_deref().unwrap(),
            [
                Step::Downstream("hello ".into()),
                Step::Upstream("HELLO".into()),
                Step::Close(End::Downstream),
                Step::Close(End::Upstream),
            ]
        );
        assert_eq!(s.expect.closed, Some(vec![End::Upstream, End::Downstream]));
        assert!(!Scenario::from_yaml("name: h").unwrap().is_connection());
    }

    #[test]
    fn a_connection_and_http_fields_exclude_each_other_by_name() {
        let e = Scenario::from_yaml(
            "name: t
request: {path: /}
connection: []
",
        )
        .unwrap_err();
        assert!(
            e.starts_with("`request` and `connection` cannot both be given"),
            "{e}"
        );
        // Written, even at its default value.
        let e = Scenario::from_yaml(
            "name: t
upstream: {}
connection: []
",
        )
        .unwrap_err();
        assert!(e.starts_with("`upstream` and `connection`"), "{e}");
        let e = Scenario::from_yaml(
            "name: t
connection: []
expect: {status: 200}
",
        )
        .unwrap_err();
        assert!(
            e.starts_with("expect.status is an HTTP expectation")
                && e.contains("upstream_received"),
            "{e}"
        );
        let e = Scenario::from_yaml(
            "name: t
expect: {downstream_received: x}
",
        )
        .unwrap_err();
        assert!(
            e.starts_with("expect.downstream_received is a connection expectation")
                && e.contains("`connection:`"),
            "{e}"
        );
        // Logs, metrics and calls are for both.
        assert!(
            Scenario::from_yaml(
                "name: t
connection: []
expect: {logs: [], metrics: {a: 1}, http_calls: []}
"
            )
            .is_ok()
        );
    }

    #[test]
    fn connection_steps_name_what_is_wrong() {
        let e = Scenario::from_yaml("name: t\nconnection:\n  - close: sideways\n").unwrap_err();
        assert!(e.contains("sideways") && e.contains("downstream"), "{e}");
        let e = Scenario::from_yaml("name: t\nconnection:\n  - download: x\n").unwrap_err();
        assert!(e.contains("unknown field `download`"), "{e}");
        let e = Scenario::from_yaml("name: t\nconnection:\n  - {downstream: a, upstream: b}\n")
            .unwrap_err();
        assert!(e.contains("a step is one of"), "{e}");
        let e = Scenario::from_yaml(
            "name: t\nconnection:\n  - close: downstream\n  - upstream: a\n  - downstream: b\n",
        )
        .unwrap_err();
        assert_eq!(
            e,
            "connection[2]: the client sends after it closed (connection[0])"
        );
        assert_eq!(
            check_steps(&[Step::Close(End::Upstream), Step::Close(End::Upstream)]),
            Err("connection[1]: the upstream closes again after it closed (connection[0])".into())
        );
    }

    #[test]
    fn a_connection_outcome_is_checked_part_by_part() {
        let s = Scenario::from_yaml(
            "name: t\nconnection: []\nexpect:\n  upstream_received: HELLO\n  downstream_received: hi\n  closed: [upstream, downstream]\n  upstream_cluster: upstream",
        )
        .unwrap();
        let o = ConnectionOutcome {
            upstream_cluster: "upstream".into(),
            upstream_received: "HELLO".into(),
            downstream_received: "hi".into(),
            closed: vec![End::Upstream, End::Downstream],
        };
        assert_eq!(s.check_connection(&o), Ok(()));
        let o = ConnectionOutcome {
            upstream_cluster: "b".into(),
            upstream_received: "hello".into(),
            downstream_received: "hi".into(),
            closed: vec![End::Downstream],
        };
        assert_eq!(
            s.check_connection(&o).unwrap_err(),
            [
                r#"upstream cluster: expected "upstream", got "b""#,
                r#"upstream received: expected "HELLO", got "hello""#,
                "closed: expected [upstream, downstream], got [downstream]",
            ]
        );
    }

    #[test]
    fn bodies_come_in_pieces_and_errors_name_the_field() {
        let s = Scenario::from_yaml(
            "name: t\nrequest:\n  body_repeat: {text: ab, times: 5}\n  chunk_size: 4\n  trailers: [[x-t, '1']]\nupstream:\n  body_chunks: [a, b]\n  trailers: [[grpc-status, '0']]\nbuffer_limit: 64\n",
        )
        .unwrap();
        assert_eq!(
            s.request.pieces().unwrap(),
            [b"abab".to_vec(), b"abab".to_vec(), b"ab".to_vec()]
        );
        assert_eq!(
            s.upstream.pieces_of("upstream").unwrap(),
            [b"a".to_vec(), b"b".to_vec()]
        );
        assert_eq!(s.buffer_limit, Some(64));
        // Trailers: chunked, so no content-length.
        assert!(
            !s.client_headers()
                .iter()
                .any(|(k, _)| k == "content-length")
        );
        let s = Scenario::from_yaml("name: t\nrequest: {body_chunks: [ab, c]}").unwrap();
        assert!(
            s.client_headers()
                .contains(&("content-length".into(), "3".into()))
        );
        for (yaml, want) in [
            (
                "request: {body: a, body_chunks: [b]}",
                "request: `body` and `body_chunks` cannot both be given",
            ),
            (
                "upstream: {body_chunks: [b], body_repeat: {text: x, times: 2}}",
                "upstream: `body_chunks` and `body_repeat`",
            ),
            (
                "request: {body: a, chunk_size: 0}",
                "request.chunk_size: must be at least 1",
            ),
            (
                "request: {body_chunks: [a], chunk_size: 2}",
                "request.chunk_size: splits",
            ),
            (
                "request: {body_repeat: {text: x, times: 100000000}}",
                "request.body_repeat: 100000000 bytes",
            ),
            (
                "clusters: {auth: {trailers: [[a, b]]}}",
                "clusters.auth: a called cluster",
            ),
            ("buffer_limit: 0", "buffer_limit: must be at least 1"),
        ] {
            let e = Scenario::from_yaml(&format!("name: t\n{yaml}\n")).unwrap_err();
            assert!(e.starts_with(want), "{yaml}: {e}");
        }
        let e = Scenario::from_yaml("name: t\nrequest: {body_repeat: {text: x}}\n").unwrap_err();
        assert!(e.contains("missing field `times`"), "{e}");
        let e = Scenario::from_yaml("name: t\nrequest: {trailer: []}\n").unwrap_err();
        assert!(e.contains("unknown field `trailer`"), "{e}");
        let e = Scenario::from_yaml("name: t\nconnection: []\nfilter_state: {a: b}\n").unwrap_err();
        assert!(e.starts_with("`filter_state` and `connection`"), "{e}");
    }

    #[test]
    fn metadata_is_served_as_envoy_serializes_it() {
        let s = Scenario::from_yaml(
            "name: t\nmetadata:\n  filter_metadata:\n    envoy.lua: {k: v, n: 42, b: true, t: {a: x}}\nfilter_state: {my.key: fsv}\n",
        )
        .unwrap();
        let m = s.metadata.as_ref().unwrap();
        let props: BTreeMap<String, Vec<u8>> = m
            .properties()
            .into_iter()
            .map(|(p, v)| (p.join("."), v))
            .collect();
        let at = |p: &str| {
            props
                .get(&format!("metadata.filter_metadata.envoy.lua{p}"))
                .unwrap()
        };
        assert_eq!(at(".k"), b"v");
        assert_eq!(at(".n"), &42f64.to_le_bytes());
        assert_eq!(at(".b"), &[1]);
        assert_eq!(at(".t.a"), b"x");
        // Measured in Envoy 1.40: a one-field struct as a proxy-wasm map.
        assert_eq!(
            at(".t"),
            &[1, 0, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0, b'a', 0, b'x', 0]
        );
        assert_eq!(
            MetaValue::Struct(BTreeMap::from([(
                "a\"b".to_string(),
                MetaValue::Number(1.5)
            )]))
            .to_lua(),
            r#"{["a\"b"] = 1.5}"#
        );
        assert_eq!(s.filter_state["my.key"], "fsv");
        let e = Scenario::from_yaml("name: t\nmetadata: {filter_meta: {}}\n").unwrap_err();
        assert!(e.contains("unknown field `filter_meta`"), "{e}");
    }

    #[test]
    fn trailers_are_checked_in_order() {
        let mut o = proxied();
        o.response_trailers = pairs(&[("x-keep", "3"), ("x-added", "wasm")]);
        if let Some(u) = &mut o.upstream {
            u.trailers = pairs(&[("x-keep", "2")]);
        }
        let s = with_expect(
            "  response_trailers: [[x-keep, '3'], [x-added, wasm]]\n  upstream_trailers: [[x-keep, '2']]\n  upstream: {body_size: 1}\n  body_size: 0",
        );
        assert_eq!(failures(&s, &o), Vec::<String>::new());
        let s = with_expect("  response_trailers: []\n  upstream_trailers: []\n  body_size: 3");
        assert_eq!(
            failures(&s, &o),
            [
                "body size: expected 3, got 0",
                r#"response trailers: expected [], got [("x-keep", "3"), ("x-added", "wasm")]"#,
                r#"upstream trailers: expected [], got [("x-keep", "2")]"#,
            ]
        );
    }

    #[test]
    fn http_dates_are_imf_fixdate() {
        assert_eq!(http_date(0), "Thu, 01 Jan 1970 00:00:00 GMT");
        assert_eq!(
            http_date(1_700_000_000_000_000_000),
            "Tue, 14 Nov 2023 22:13:20 GMT"
        );
        assert_eq!(
            http_date(951_782_400_000_000_000),
            "Tue, 29 Feb 2000 00:00:00 GMT"
        );
    }

    #[test]
    fn the_wire_form_moves_pseudo_headers_to_the_request_line_and_host() {
        let map = HeaderMap::from_pairs(&[
            (":authority", "a.test"),
            (":path", "/p"),
            (":method", "PUT"),
            (":scheme", "http"),
            ("x-a", "1"),
            ("x-a", "2"),
        ]);
        let w = WireRequest::from_map(&map, b"body");
        assert_eq!((w.method.as_str(), w.path.as_str()), ("PUT", "/p"));
        let names: Vec<&str> = w.headers.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(names, ["host", "x-a", "x-a"]);
        assert_eq!(w.body, "body");
    }

    #[test]
    fn tcp_clusters_belong_to_connections_and_filter_state_expectations_hold() {
        let s = Scenario::from_yaml(
            "name: t\ntcp_clusters: [b]\nconnection: []\nexpect: {upstream_cluster: b, filter_state: {envoy.tcp_proxy.cluster: b}}\n",
        )
        .unwrap();
        assert_eq!(s.tcp_clusters, ["b"]);
        assert_eq!(s.expect.upstream_cluster.as_deref(), Some("b"));
        let set = |v: &[(&str, &str)]| -> Vec<(String, String)> {
            v.iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect()
        };
        assert_eq!(
            s.check_observed_filter_state(&set(&[
                ("envoy.tcp_proxy.cluster", "a"),
                ("envoy.tcp_proxy.cluster", "b")
            ])),
            Ok(())
        );
        assert_eq!(
            s.check_observed_filter_state(&set(&[("envoy.tcp_proxy.cluster", "a")])),
            Err(vec![
                r#"filter state envoy.tcp_proxy.cluster: expected "b", got "a""#.to_string()
            ])
        );
        assert_eq!(
            s.check_observed_filter_state(&[]),
            Err(vec![
                r#"filter state envoy.tcp_proxy.cluster: expected "b", never set (set: [])"#
                    .to_string()
            ])
        );
        let e = Scenario::from_yaml("name: t\ntcp_clusters: [b]\n").unwrap_err();
        assert!(
            e.starts_with("`tcp_clusters` are upstreams of a TCP connection"),
            "{e}"
        );
        for bad in ["[upstream]", "[b, b]", "[\"\"]"] {
            let e = Scenario::from_yaml(&format!("name: t\ntcp_clusters: {bad}\nconnection: []\n"))
                .unwrap_err();
            assert!(e.starts_with("tcp_clusters["), "{bad}: {e}");
        }
        let e = Scenario::from_yaml("name: t\nexpect: {upstream_cluster: b}\n").unwrap_err();
        assert!(
            e.starts_with("expect.upstream_cluster is a connection expectation"),
            "{e}"
        );
    }
}
