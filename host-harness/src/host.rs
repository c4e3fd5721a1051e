//! The host: what every plugin and VM of one "Envoy" shares (clock, logs, metrics, shared data,
//! queues, properties, pending calls), and the API to build plugins and drive time.

use crate::abi::{LogLevel, MetricType, Status};
use crate::error::{Error, Result};
use crate::headers::HeaderMap;
use crate::plugin::{FailurePolicy, Plugin, PluginBuilder};
use crate::runtime::Module;
use crate::vm::{CallResponse, VmInner, VmState};
use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::rc::{Rc, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// One line a module logged (through `proxy_log`, or stdout/stderr via WASI).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogRecord {
    /// Level.
    pub level: LogLevel,
    /// The message.
    pub message: String,
    /// The VM it came from.
    pub vm_id: String,
    /// The root id of the plugin whose context logged, empty for the VM context.
    pub root_id: String,
    /// The context id that logged.
    pub context_id: u32,
}

/// A metric a module defined.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Metric {
    /// Name as defined (Envoy shows it with the `wasmcustom.` prefix).
    pub name: String,
    /// Kind.
    pub kind: MetricType,
    /// Counter or gauge value.
    pub value: i64,
    /// Values a histogram recorded.
    pub recorded: Vec<u64>,
}

impl Metric {
    /// Envoy: counters take positive increments only; gauges add or subtract; histograms refuse.
    pub(crate) fn increment(&mut self, offset: i64) -> Status {
        match self.kind {
            MetricType::Counter if offset <= 0 => Status::BadArgument,
            MetricType::Counter | MetricType::Gauge => {
                self.value = self.value.wrapping_add(offset);
                Status::Ok
            }
            MetricType::Histogram => Status::BadArgument,
        }
    }

    /// Envoy: a counter adds the value, a gauge is set to it, a histogram records it.
    pub(crate) fn record(&mut self, value: u64) -> Status {
        match self.kind {
            MetricType::Counter => self.value = self.value.wrapping_add(value as i64),
            MetricType::Gauge => self.value = value as i64,
            MetricType::Histogram => self.recorded.push(value),
        }
        Status::Ok
    }

    pub(crate) fn get(&self) -> std::result::Result<u64, Status> {
        match self.kind {
            MetricType::Counter | MetricType::Gauge => Ok(self.value as u64),
            MetricType::Histogram => Err(Status::BadArgument),
        }
    }
}

/// An HTTP call a module dispatched with `proxy_http_call`, waiting for the test's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpCall {
    /// Token the module got.
    pub token: u32,
    /// The cluster (upstream) named.
    pub upstream: String,
    /// Request headers (with `:method`, `:path`, `:authority`).
    pub headers: HeaderMap,
    /// Request body.
    pub body: Vec<u8>,
    /// Request trailers.
    pub trailers: HeaderMap,
    /// Timeout the module asked for.
    pub timeout_ms: u32,
    /// The host clock when the call was made (nanoseconds since the Unix epoch).
    pub made_at_nanos: u64,
    pub(crate) vm_index: usize,
    pub(crate) context: u32,
}

/// A gRPC call or stream a module opened, waiting for the test's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrpcCall {
    /// Token the module got.
    pub token: u32,
    /// The service (cluster) as the module serialized it.
    pub service: String,
    /// gRPC service name.
    pub service_name: String,
    /// Method.
    pub method: String,
    /// Initial metadata.
    pub initial_metadata: HeaderMap,
    /// Messages sent (one for a unary call).
    pub sent: Vec<Vec<u8>>,
    /// A stream (`proxy_grpc_stream`) rather than a unary call.
    pub stream: bool,
    /// Timeout (unary calls).
    pub timeout_ms: u32,
    pub(crate) vm_index: usize,
    pub(crate) context: u32,
    /// `proxy_grpc_cancel` was called.
    pub cancelled: bool,
    /// The module closed its side (end of stream, `proxy_grpc_close`, or a unary call).
    pub local_closed: bool,
    /// What the module was delivered so far (in [`Host::grpc_calls_made`]; empty while pending).
    pub answered: GrpcAnswered,
}

/// What a gRPC call or stream delivered to the module, in the order of its callbacks.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GrpcAnswered {
    /// Initial metadata (`proxy_on_grpc_receive_initial_metadata`).
    pub initial_metadata: Vec<(String, String)>,
    /// Messages (`proxy_on_grpc_receive`).
    pub messages: Vec<Vec<u8>>,
    /// Trailing metadata (`proxy_on_grpc_receive_trailing_metadata`).
    pub trailing_metadata: Vec<(String, String)>,
    /// The close's gRPC status and message (`proxy_on_grpc_close`).
    pub close: Option<(u32, String)>,
}

/// What the server side of a gRPC stream does next.
#[derive(Debug, Clone, Copy)]
pub enum GrpcStreamEvent<'a> {
    /// Initial metadata (`proxy_on_grpc_receive_initial_metadata`).
    InitialMetadata(&'a [(&'a str, &'a str)]),
    /// A message (`proxy_on_grpc_receive`).
    Message(&'a [u8]),
    /// Trailing metadata (`proxy_on_grpc_receive_trailing_metadata`).
    TrailingMetadata(&'a [(&'a str, &'a str)]),
    /// The close, with gRPC status and message (`proxy_on_grpc_close`).
    Close(u32, &'a str),
}

type Foreign = Rc<dyn Fn(&[u8]) -> std::result::Result<Vec<u8>, Status>>;

/// A filter state object a module set with the foreign function `set_envoy_filter_state`
/// ([`Host::filter_states_set`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FilterStateSet {
    /// The context (stream or connection) it was set on.
    pub context_id: u32,
    /// The object's name (its factory's).
    pub name: String,
    /// The value the module gave.
    pub value: Vec<u8>,
    /// Its life span.
    pub span: crate::foreign::LifeSpan,
}

/// A call of `proxy_call_foreign_function` ([`Host::foreign_calls`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForeignCall {
    /// The acting context.
    pub context_id: u32,
    /// The function's name.
    pub name: String,
    /// What the call returned.
    pub status: Status,
}

struct Queue {
    vm_id: String,
    name: String,
    vm_index: usize,
    context: u32,
    items: VecDeque<Vec<u8>>,
}

/// Work to run after the current callback returns (never re-entering a running VM).
pub(crate) enum Deferred {
    QueueReady {
        vm_index: usize,
        context: u32,
        token: u32,
    },
}

/// Host-wide state, shared by every VM of a [`Host`].
pub(crate) struct Shared {
    pub now: u64,
    start: u64,
    /// The last `connection.id` given to a stream.
    pub next_connection: u64,
    pub log_level: LogLevel,
    pub logs: Vec<LogRecord>,
    pub properties: HashMap<String, Vec<u8>>,
    pub shared_data: HashMap<(String, String), (Vec<u8>, u32)>,
    next_cas: u32,
    queues: Vec<Queue>,
    metrics: Vec<Metric>,
    pub foreign: HashMap<String, Foreign>,
    /// Every `proxy_call_foreign_function`, in order.
    pub foreign_calls: Vec<ForeignCall>,
    /// Every filter state object set with `set_envoy_filter_state`, in order.
    pub filter_states_set: Vec<FilterStateSet>,
    clusters: Option<Vec<String>>,
    pub http_calls: Vec<HttpCall>,
    /// Every HTTP call made, answered or not.
    pub http_calls_made: Vec<HttpCall>,
    /// Every gRPC call and stream made, in order, with what was sent and answered.
    pub grpc_calls_made: Vec<GrpcCall>,
    pub grpc_calls: Vec<GrpcCall>,
    pub env: Vec<(String, String)>,
    rng: u64,
    pub vms: Vec<Weak<RefCell<VmInner>>>,
    pub deferred: Vec<Deferred>,
    /// `proxy_on_tick` calls made so far.
    ticks: u64,
}

impl Shared {
    pub(crate) fn log(
        &mut self,
        level: LogLevel,
        message: String,
        vm_id: &str,
        root_id: &str,
        ctx: u32,
    ) {
        self.logs.push(LogRecord {
            level,
            message,
            vm_id: vm_id.to_string(),
            root_id: root_id.to_string(),
            context_id: ctx,
        });
    }

    pub(crate) fn monotonic(&self) -> u64 {
        self.now - self.start
    }

    pub(crate) fn set_shared_data(
        &mut self,
        vm_id: &str,
        key: String,
        value: Vec<u8>,
        cas: u32,
    ) -> Status {
        let slot = (vm_id.to_string(), key);
        // cpp-host: a CAS is checked only against an existing key; cas 0 always writes.
        if cas != 0
            && let Some((_, current)) = self.shared_data.get(&slot)
            && *current != cas
        {
            return Status::CasMismatch;
        }
        self.next_cas = self.next_cas.wrapping_add(1).max(1);
        self.shared_data.insert(slot, (value, self.next_cas));
        Status::Ok
    }

    pub(crate) fn register_queue(
        &mut self,
        vm_id: &str,
        name: String,
        vm_index: usize,
        context: u32,
    ) -> u32 {
        if let Some(i) = self
            .queues
            .iter()
            .position(|q| q.vm_id == vm_id && q.name == name)
        {
            let q = &mut self.queues[i];
            q.vm_index = vm_index;
            q.context = context;
            return i as u32 + 1;
        }
        self.queues.push(Queue {
            vm_id: vm_id.to_string(),
            name,
            vm_index,
            context,
            items: VecDeque::new(),
        });
        self.queues.len() as u32
    }

    pub(crate) fn resolve_queue(&self, vm_id: &str, name: &str) -> Option<u32> {
        self.queues
            .iter()
            .position(|q| q.vm_id == vm_id && q.name == name)
            .map(|i| i as u32 + 1)
    }

    pub(crate) fn enqueue(&mut self, token: u32, value: Vec<u8>) -> Status {
        let Some(q) = token
            .checked_sub(1)
            .and_then(|i| self.queues.get_mut(i as usize))
        else {
            return Status::NotFound;
        };
        q.items.push_back(value);
        let (vm_index, context) = (q.vm_index, q.context);
        self.deferred.push(Deferred::QueueReady {
            vm_index,
            context,
            token,
        });
        Status::Ok
    }

    pub(crate) fn dequeue(&mut self, token: u32) -> std::result::Result<Vec<u8>, Status> {
        let q = token
            .checked_sub(1)
            .and_then(|i| self.queues.get_mut(i as usize))
            .ok_or(Status::NotFound)?;
        q.items.pop_front().ok_or(Status::Empty)
    }

    /// The index of the host-wide stat behind a name and kind (Envoy's `wasmcustom.<name>`),
    /// created on first definition. Stats are never removed, so a VM resolves its metric ids
    /// once, at definition, and increments need no name lookup.
    pub(crate) fn stat_index(&mut self, kind: MetricType, name: &str) -> usize {
        match self
            .metrics
            .iter()
            .position(|m| m.name == name && m.kind == kind)
        {
            Some(i) => i,
            None => {
                self.metrics.push(Metric {
                    name: name.to_string(),
                    kind,
                    value: 0,
                    recorded: Vec::new(),
                });
                self.metrics.len() - 1
            }
        }
    }

    /// The stat at an index from [`Shared::stat_index`].
    pub(crate) fn stat_at(&mut self, i: usize) -> &mut Metric {
        &mut self.metrics[i]
    }

    pub(crate) fn knows_cluster(&self, name: &str) -> bool {
        self.clusters
            .as_ref()
            .is_none_or(|c| c.iter().any(|n| n == name))
    }

    /// The record of a call in `grpc_calls_made` (the last with this token on this VM).
    pub(crate) fn grpc_made_mut(&mut self, vm_index: usize, token: u32) -> Option<&mut GrpcCall> {
        self.grpc_calls_made
            .iter_mut()
            .rev()
            .find(|c| c.vm_index == vm_index && c.token == token)
    }

    pub(crate) fn grpc_call_mut(&mut self, vm_index: usize, token: u32) -> Option<&mut GrpcCall> {
        self.grpc_calls
            .iter_mut()
            .find(|c| c.vm_index == vm_index && c.token == token)
    }

    pub(crate) fn random_bytes(&mut self, n: usize) -> Vec<u8> {
        // xorshift64*: reproducible per host, which tests want; modules asking for entropy get
        // bytes that differ from call to call.
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            self.rng ^= self.rng >> 12;
            self.rng ^= self.rng << 25;
            self.rng ^= self.rng >> 27;
            let v = self.rng.wrapping_mul(0x2545_F491_4F6C_DD1D);
            out.extend_from_slice(&v.to_le_bytes()[..(n - out.len()).min(8)]);
        }
        out
    }

    fn vm(&self, index: usize) -> Option<Rc<RefCell<VmInner>>> {
        self.vms.get(index).and_then(Weak::upgrade)
    }
}

/// The key of a property path: NUL-separated tokens without a trailing NUL.
pub(crate) fn path_key(path: &[u8]) -> String {
    String::from_utf8_lossy(path)
        .trim_end_matches('\0')
        .to_string()
}

fn int(v: i64) -> Vec<u8> {
    v.to_le_bytes().to_vec()
}

/// `upstream.address` of a stream an upstream answered, unless set with [`Host::set_property`].
pub const DEFAULT_UPSTREAM: &str = "127.0.0.1:20000";

/// Envoy's mapping of an HTTP status to a gRPC status (`Grpc::Utility::httpToGrpcStatus`),
/// what `response.grpc_status` reads when the response carries no `grpc-status`.
fn grpc_status_of_http(code: i64) -> i64 {
    match code {
        400 => 13,
        401 => 16,
        403 => 7,
        404 => 12,
        429 | 502 | 503 | 504 => 14,
        _ => 2,
    }
}

/// Resolve a property for the acting context: values set on the stream, then attributes derived
/// from the stream's headers, then the plugin's, then the host's.
pub(crate) fn property(d: &VmState, path: &[u8]) -> Option<Vec<u8>> {
    let key = path_key(path);
    let ctx = d.context();
    if let Some(s) = d.streams.get(&ctx) {
        if let Some(v) = s.properties.get(&key) {
            return Some(v.clone());
        }
        if let Some(name) = key.strip_prefix("filter_state\0") {
            return filter_state(s, name);
        }
        // Header-backed attributes exist only while Envoy holds the map, and in on_log.
        let req = s
            .request_headers
            .as_ref()
            .filter(|_| s.request_headers_held || s.in_log);
        let resp = s
            .response_headers
            .as_ref()
            .filter(|_| s.response_headers_held || s.in_log);
        let rh = |name: &str| req.and_then(|h| h.get_bytes(name)).map(<[u8]>::to_vec);
        let resp_trailers = s
            .response_trailers
            .as_ref()
            .filter(|_| s.response_trailers_held || s.in_log);
        let req_trailers = s
            .request_trailers
            .as_ref()
            .filter(|_| s.request_trailers_held || s.in_log);
        // Maps Envoy no longer holds read as empty maps, not as missing attributes.
        let map = |m: Option<&HeaderMap>| {
            m.map_or_else(|| 0u32.to_le_bytes().to_vec(), HeaderMap::serialize)
        };
        let size = |m: Option<&HeaderMap>| m.map_or(0, HeaderMap::byte_size) as i64;
        let status = || {
            s.response_headers
                .as_ref()
                .and_then(|h| h.get_bytes(":status"))
                .and_then(|c| std::str::from_utf8(c).ok()?.parse::<i64>().ok())
        };
        let derived = match key.as_str() {
            "request\0path" => rh(":path"),
            "request\0url_path" => rh(":path").map(|p| {
                let end = p.iter().position(|&b| b == b'?').unwrap_or(p.len());
                p[..end].to_vec()
            }),
            "request\0query" => rh(":path").map(|p| match p.iter().position(|&b| b == b'?') {
                Some(q) => p[q + 1..].to_vec(),
                None => Vec::new(),
            }),
            "request\0host" => rh(":authority"),
            "request\0scheme" => rh(":scheme"),
            "request\0method" => rh(":method"),
            "request\0id" => rh("x-request-id"),
            "request\0referer" => rh("referer"),
            "request\0useragent" => rh("user-agent"),
            "request\0protocol" => Some(b"HTTP/1.1".to_vec()),
            "request\0headers" => Some(map(req)),
            "request\0time" => Some(int(s.start_ns as i64)),
            // Known once the stream is complete: in on_log.
            "request\0duration" => s
                .in_log
                .then(|| int(d.shared.borrow().now.saturating_sub(s.start_ns) as i64)),
            "request\0size" => Some(int(s.request_bytes as i64)),
            "request\0total_size" => {
                Some(int(s.request_bytes as i64 + size(req) + size(req_trailers)))
            }
            "response\0code" => status().map(int),
            "response\0code_details" => match (&s.local_response, &s.response_headers) {
                _ if s.proxy_reply_details.is_some() => {
                    s.proxy_reply_details.clone().map(String::into_bytes)
                }
                (Some(l), _) => Some(l.details.clone().into_bytes()),
                (None, Some(_)) => Some(b"via_upstream".to_vec()),
                (None, None) => None,
            },
            "response\0flags" => Some(int(0)),
            "response\0grpc_status" => status().map(|code| {
                let header = resp_trailers
                    .and_then(|t| t.get_bytes("grpc-status"))
                    .or_else(|| resp.and_then(|h| h.get_bytes("grpc-status")))
                    .and_then(|v| std::str::from_utf8(v).ok()?.parse::<i64>().ok());
                int(header.unwrap_or_else(|| grpc_status_of_http(code)))
            }),
            "response\0headers" => Some(map(resp)),
            "response\0trailers" => Some(map(resp_trailers)),
            "response\0size" => Some(int(s.response_bytes as i64)),
            "response\0total_size" => Some(int(s.response_bytes as i64
                + size(resp)
                + size(resp_trailers))),
            "connection\0id" => Some(int(s.connection_id as i64)),
            "connection\0mtls" => Some(vec![0]),
            "connection\0requested_server_name" => Some(Vec::new()),
            // An upstream exists once it answered (not for a local reply).
            "upstream\0address"
                if s.local_response.is_none()
                    && s.proxy_reply_details.is_none()
                    && s.response_headers.is_some() =>
            {
                Some(
                    d.shared
                        .borrow()
                        .properties
                        .get("upstream\0address")
                        .cloned()
                        .unwrap_or_else(|| DEFAULT_UPSTREAM.as_bytes().to_vec()),
                )
            }
            "upstream\0address" => None,
            _ => None,
        };
        if derived.is_some() || key == "upstream\0address" || key == "request\0duration" {
            return derived;
        }
        if let Some(h) = key.strip_prefix("request\0headers\0") {
            return rh(h);
        }
        if let Some(h) = key.strip_prefix("response\0headers\0") {
            return resp.and_then(|m| m.get_bytes(h)).map(<[u8]>::to_vec);
        }
    }
    if let Some(root) = d.root_of(ctx) {
        match key.as_str() {
            "plugin_root_id" => return Some(root.root_id.clone().into_bytes()),
            "plugin_name" => return Some(root.name.clone().into_bytes()),
            _ => {}
        }
    }
    if key == "plugin_vm_id" {
        return Some(d.vm_id.clone().into_bytes());
    }
    for side in ["source", "destination", "upstream"] {
        if key.strip_prefix(side) == Some("\0port") {
            let address = property(d, format!("{side}\0address").as_bytes())?;
            let port = std::str::from_utf8(&address).ok()?.rsplit_once(':')?.1;
            return port.parse::<i64>().ok().map(int);
        }
    }
    if let Some(v) = d.shared.borrow().properties.get(&key) {
        return Some(v.clone());
    }
    // Envoy: a top-level name no attribute answers is a property the module set
    // (`proxy_set_property`), held as the filter state object `wasm.NAME`; a longer path would
    // go into its value, which bytes and strings do not have.
    let s = d.streams.get(&ctx)?;
    let first = path.split(|&b| b == 0).next().unwrap_or_default();
    if path.len() > first.len() + 1 {
        return None;
    }
    s.cel_state.get(first).map(|c| c.value.clone())
}

/// `proxy_get_property(["filter_state", NAME])` on a stream: an object set with
/// `set_envoy_filter_state` (as it serializes), or a bytes or string property set with
/// `proxy_set_property` (`wasm.NAME`). Deeper paths, and protobuf and FlatBuffers properties
/// (which Envoy answers as messages of their schema), are not served.
fn filter_state(s: &crate::vm::StreamCtx, name: &str) -> Option<Vec<u8>> {
    use crate::foreign::WasmType;
    if let Some((bytes, _)) = s.envoy_filter_state.get(name) {
        return bytes.clone();
    }
    let cel = name.strip_prefix("wasm.")?;
    s.cel_state
        .get(cel.as_bytes())
        .filter(|c| matches!(c.kind, WasmType::Bytes | WasmType::String))
        .map(|c| c.value.clone())
}

/// A proxy-wasm host: a value, never global, so tests run in parallel. It owns the controllable
/// clock, the logs, metrics, shared data and queues of every plugin created from it.
#[derive(Clone)]
pub struct Host {
    pub(crate) shared: Rc<RefCell<Shared>>,
}

impl Default for Host {
    fn default() -> Host {
        Host::new()
    }
}

impl Host {
    /// A host whose clock starts at the current time, log level `trace` (everything recorded),
    /// node id `test-node` in cluster `test-cluster`, and any upstream cluster name accepted
    /// for HTTP calls.
    pub fn new() -> Host {
        // Whole microseconds, as Envoy's clocks read (a module formatting the time shows six
        // fractional digits in both).
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_micros() as u64 * 1000)
            .unwrap_or(0);
        let shared = Shared {
            now,
            start: now,
            next_connection: 0,
            log_level: LogLevel::Trace,
            logs: Vec::new(),
            properties: HashMap::new(),
            shared_data: HashMap::new(),
            next_cas: 0,
            queues: Vec::new(),
            metrics: Vec::new(),
            foreign: HashMap::new(),
            foreign_calls: Vec::new(),
            filter_states_set: Vec::new(),
            clusters: None,
            http_calls: Vec::new(),
            http_calls_made: Vec::new(),
            grpc_calls_made: Vec::new(),
            grpc_calls: Vec::new(),
            env: Vec::new(),
            rng: 0x9E37_79B9_7F4A_7C15,
            vms: Vec::new(),
            deferred: Vec::new(),
            ticks: 0,
        };
        let host = Host {
            shared: Rc::new(RefCell::new(shared)),
        };
        host.set_property(&["xds", "node", "id"], "test-node");
        host.set_property(&["xds", "node", "cluster"], "test-cluster");
        host.set_property(&["source", "address"], "127.0.0.1:40000");
        host.set_property(&["destination", "address"], "127.0.0.1:10000");
        host
    }

    /// Start building a plugin of `module` (its own VM unless shared).
    pub fn plugin(&self, module: &Module) -> PluginBuilder {
        PluginBuilder::new(self.clone(), module.clone())
    }

    /// A plugin with root id and configuration, fail-closed, in its own VM: the common case.
    pub fn start_plugin(
        &self,
        module: &Module,
        root_id: &str,
        configuration: impl AsRef<[u8]>,
    ) -> Result<Plugin> {
        self.plugin(module)
            .root_id(root_id)
            .configuration(configuration)
            .failure_policy(FailurePolicy::FailClosed)
            .start()
    }

    /// Set a host-wide property (path tokens, e.g. `["xds", "node", "id"]`) to raw bytes.
    pub fn set_property(&self, path: &[&str], value: impl AsRef<[u8]>) {
        self.shared
            .borrow_mut()
            .properties
            .insert(path.join("\0"), value.as_ref().to_vec());
    }

    /// The level modules see from `proxy_get_log_level`. Every line is recorded regardless.
    pub fn set_log_level(&self, level: LogLevel) {
        self.shared.borrow_mut().log_level = level;
    }

    /// Environment variables for WASI `environ_get` (Envoy's `vm_config.environment_variables`).
    pub fn set_env(&self, vars: &[(&str, &str)]) {
        self.shared.borrow_mut().env = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
    }

    /// Restrict `proxy_http_call` to these cluster names (others get `BadArgument`, as Envoy
    /// answers for an unknown cluster).
    pub fn set_clusters(&self, names: &[&str]) {
        self.shared.borrow_mut().clusters = Some(names.iter().map(|s| s.to_string()).collect());
    }

    /// Register a foreign function modules can call with `proxy_call_foreign_function`. It
    /// takes the place of Envoy's function of the same name, if any ([`crate::foreign`]): a test
    /// may stub one (`verify_signature`, say, which the harness does not implement).
    pub fn register_foreign_function(
        &self,
        name: &str,
        f: impl Fn(&[u8]) -> std::result::Result<Vec<u8>, Status> + 'static,
    ) {
        self.shared
            .borrow_mut()
            .foreign
            .insert(name.to_string(), Rc::new(f));
    }

    /// Every call of `proxy_call_foreign_function` so far (Envoy's functions, the registered
    /// ones and unknown names), in order, with its status.
    pub fn foreign_calls(&self) -> Vec<ForeignCall> {
        self.shared.borrow().foreign_calls.clone()
    }

    /// Every filter state object modules set with `set_envoy_filter_state` (the sets Envoy
    /// accepted), in order.
    pub fn filter_states_set(&self) -> Vec<FilterStateSet> {
        self.shared.borrow().filter_states_set.clone()
    }

    /// Every log line so far.
    pub fn logs(&self) -> Vec<LogRecord> {
        self.shared.borrow().logs.clone()
    }

    /// Messages logged at `level`.
    pub fn logs_at(&self, level: LogLevel) -> Vec<String> {
        self.shared
            .borrow()
            .logs
            .iter()
            .filter(|l| l.level == level)
            .map(|l| l.message.clone())
            .collect()
    }

    /// Whether any log line contains `needle`.
    pub fn logged(&self, needle: &str) -> bool {
        self.shared
            .borrow()
            .logs
            .iter()
            .any(|l| l.message.contains(needle))
    }

    /// Forget the logs recorded so far.
    pub fn clear_logs(&self) {
        self.shared.borrow_mut().logs.clear();
    }

    /// A metric by the name the module defined (without Envoy's `wasmcustom.` prefix).
    pub fn metric(&self, name: &str) -> Option<Metric> {
        self.shared
            .borrow()
            .metrics
            .iter()
            .find(|m| m.name == name)
            .cloned()
    }

    /// Every metric.
    pub fn metrics(&self) -> Vec<Metric> {
        self.shared.borrow().metrics.clone()
    }

    /// Shared data of `vm_id` under `key`: value and CAS.
    pub fn shared_data(&self, vm_id: &str, key: &str) -> Option<(Vec<u8>, u32)> {
        self.shared
            .borrow()
            .shared_data
            .get(&(vm_id.to_string(), key.to_string()))
            .cloned()
    }

    /// Every shared-data entry: (VM id, key, value, CAS), sorted by VM id and key.
    pub fn shared_data_entries(&self) -> Vec<(String, String, Vec<u8>, u32)> {
        let mut all: Vec<_> = self
            .shared
            .borrow()
            .shared_data
            .iter()
            .map(|((vm, key), (value, cas))| (vm.clone(), key.clone(), value.clone(), *cas))
            .collect();
        all.sort();
        all
    }

    /// Every registered shared queue, in registration order: (VM id, name, items not yet
    /// dequeued).
    pub fn queues(&self) -> Vec<(String, String, Vec<Vec<u8>>)> {
        self.shared
            .borrow()
            .queues
            .iter()
            .map(|q| {
                (
                    q.vm_id.clone(),
                    q.name.clone(),
                    q.items.iter().cloned().collect(),
                )
            })
            .collect()
    }

    /// HTTP calls modules made that have not been answered yet.
    pub fn pending_http_calls(&self) -> Vec<HttpCall> {
        self.shared.borrow().http_calls.clone()
    }

    /// Every HTTP call modules made, answered or not, in order.
    pub fn http_calls_made(&self) -> Vec<HttpCall> {
        self.shared.borrow().http_calls_made.clone()
    }

    /// Every gRPC call and stream the modules made, in order: what they sent and what they were
    /// delivered ([`GrpcCall::answered`]).
    pub fn grpc_calls_made(&self) -> Vec<GrpcCall> {
        self.shared.borrow().grpc_calls_made.clone()
    }

    /// gRPC calls and streams that are still open.
    pub fn pending_grpc_calls(&self) -> Vec<GrpcCall> {
        self.shared.borrow().grpc_calls.clone()
    }

    /// The host clock (nanoseconds since the Unix epoch).
    pub fn now_nanos(&self) -> u64 {
        self.shared.borrow().now
    }

    /// When the next `proxy_on_tick` is due (host clock, nanoseconds), if any plugin ticks.
    pub fn next_tick_nanos(&self) -> Option<u64> {
        self.earliest_tick(u64::MAX).map(|(at, _, _)| at)
    }

    /// `proxy_on_tick` calls made so far, across every plugin of this host.
    pub fn ticks(&self) -> u64 {
        self.shared.borrow().ticks
    }

    /// The earliest tick due at or before `limit`: (when, VM, root context).
    fn earliest_tick(&self, limit: u64) -> Option<(u64, Rc<RefCell<VmInner>>, u32)> {
        let mut due: Option<(u64, Rc<RefCell<VmInner>>, u32)> = None;
        let vms: Vec<_> = self
            .shared
            .borrow()
            .vms
            .iter()
            .filter_map(Weak::upgrade)
            .collect();
        for vm in vms {
            let v = vm.borrow();
            if v.failed.is_some() {
                continue;
            }
            for (id, r) in &v.store.data().roots {
                if r.tick_period.is_some()
                    && r.next_tick <= limit
                    && due.as_ref().is_none_or(|d| r.next_tick < d.0)
                {
                    due = Some((r.next_tick, vm.clone(), *id));
                }
            }
        }
        due
    }

    /// Advance the clock; every plugin whose tick period elapsed gets `proxy_on_tick` (once per
    /// elapsed period, in time order), and the work each tick queued runs before the next.
    pub fn advance(&self, by: Duration) -> Result<()> {
        let target = self.shared.borrow().now + by.as_nanos() as u64;
        while let Some((at, vm, ctx)) = self.earliest_tick(target) {
            self.shared.borrow_mut().now = at;
            self.shared.borrow_mut().ticks += 1;
            {
                let mut v = vm.borrow_mut();
                if let Some(r) = v.store.data_mut().roots.get_mut(&ctx) {
                    r.next_tick = at
                        + r.tick_period
                            .map(|p| p.as_nanos() as u64)
                            .unwrap_or(u64::MAX / 2);
                }
                let f = v.exports.on_tick.clone();
                v.call("proxy_on_tick", ctx, f, ctx as i32)?;
            }
            self.run_deferred()?;
        }
        self.shared.borrow_mut().now = target;
        Ok(())
    }

    fn take_http_call(&self, token: u32, vm: Option<usize>) -> Result<HttpCall> {
        let mut s = self.shared.borrow_mut();
        let i = s
            .http_calls
            .iter()
            .position(|c| c.token == token && vm.is_none_or(|v| v == c.vm_index))
            .ok_or(Error::UnknownToken(token))?;
        Ok(s.http_calls.remove(i))
    }

    /// Answer a pending HTTP call (the first with this token; tokens are per VM, see
    /// [`Plugin::respond_http_call`](crate::Plugin::respond_http_call) for one plugin's): the
    /// module's `proxy_on_http_call_response` runs on the calling root context with these
    /// headers, body and trailers readable.
    pub fn respond_http_call(
        &self,
        token: u32,
        headers: &[(&str, &str)],
        body: impl AsRef<[u8]>,
        trailers: &[(&str, &str)],
    ) -> Result<()> {
        let call = self.take_http_call(token, None)?;
        self.deliver_http_response(call, headers, body.as_ref(), trailers)
    }

    pub(crate) fn respond_http_call_in(
        &self,
        vm_index: usize,
        token: u32,
        headers: &[(&str, &str)],
        body: &[u8],
        trailers: &[(&str, &str)],
    ) -> Result<()> {
        let call = self.take_http_call(token, Some(vm_index))?;
        self.deliver_http_response(call, headers, body, trailers)
    }

    /// Fail a pending HTTP call as Envoy does on a reset: the callback runs with no headers, no
    /// body, and `proxy_get_status` reports (11, "reset").
    pub fn fail_http_call(&self, token: u32) -> Result<()> {
        let call = self.take_http_call(token, None)?;
        self.callout(call.vm_index, |v| {
            v.store.data_mut().last_status = (11, "reset".into());
            v.store.data_mut().call_response = Some(CallResponse::default());
            let f = v.exports.on_http_call_response.clone();
            let ctx = call.context;
            v.call(
                "proxy_on_http_call_response",
                ctx,
                f,
                (ctx as i32, call.token as i32, 0, 0, 0),
            )
            .map(|_| ())
        })
    }

    fn deliver_http_response(
        &self,
        call: HttpCall,
        headers: &[(&str, &str)],
        body: &[u8],
        trailers: &[(&str, &str)],
    ) -> Result<()> {
        let response = CallResponse {
            headers: HeaderMap::from_pairs(headers),
            body: body.to_vec(),
            trailers: HeaderMap::from_pairs(trailers),
        };
        let counts = (
            response.headers.len() as i32,
            response.body.len() as i32,
            response.trailers.len() as i32,
        );
        self.callout(call.vm_index, |v| {
            v.store.data_mut().call_response = Some(response);
            let f = v.exports.on_http_call_response.clone();
            let ctx = call.context;
            v.call(
                "proxy_on_http_call_response",
                ctx,
                f,
                (ctx as i32, call.token as i32, counts.0, counts.1, counts.2),
            )
            .map(|_| ())
        })
    }

    /// Run `f` on a VM with a call response in place, then clear it and run deferred work.
    fn callout(&self, vm_index: usize, f: impl FnOnce(&mut VmInner) -> Result<()>) -> Result<()> {
        let vm = self
            .shared
            .borrow()
            .vm(vm_index)
            .ok_or(Error::Usage("the VM that made the call is gone".into()))?;
        let r = {
            let mut v = vm.borrow_mut();
            if v.failed.is_some() {
                // cpp-host skips callbacks into a failed VM.
                return Ok(());
            }
            let r = f(&mut v);
            v.store.data_mut().call_response = None;
            r
        };
        r?;
        self.run_deferred()
    }

    /// Answer a pending unary gRPC call: with `Ok(message)` the module's
    /// `proxy_on_grpc_receive` runs with the message; with `Err((status, message))` its
    /// `proxy_on_grpc_close` runs and `proxy_get_status` reports them, as Envoy does.
    pub fn respond_grpc_call(
        &self,
        token: u32,
        response: std::result::Result<&[u8], (u32, &str)>,
    ) -> Result<()> {
        let call = {
            let mut s = self.shared.borrow_mut();
            let i = s
                .grpc_calls
                .iter()
                .position(|c| c.token == token)
                .ok_or(Error::UnknownToken(token))?;
            let call = s.grpc_calls.remove(i);
            if let Some(m) = s.grpc_made_mut(call.vm_index, token) {
                match response {
                    Ok(body) => m.answered.messages.push(body.to_vec()),
                    Err((status, message)) => {
                        m.answered.close = Some((status, message.to_string()));
                    }
                }
            }
            call
        };
        let ctx = call.context;
        self.callout(call.vm_index, |v| match response {
            Ok(body) => {
                v.store.data_mut().call_response = Some(CallResponse {
                    body: body.to_vec(),
                    ..CallResponse::default()
                });
                let f = v.exports.on_grpc_receive.clone();
                v.call(
                    "proxy_on_grpc_receive",
                    ctx,
                    f,
                    (ctx as i32, token as i32, body.len() as i32),
                )
                .map(|_| ())
            }
            Err((status, message)) => {
                v.store.data_mut().last_status = (status, message.to_string());
                let f = v.exports.on_grpc_close.clone();
                v.call(
                    "proxy_on_grpc_close",
                    ctx,
                    f,
                    (ctx as i32, token as i32, status as i32),
                )
                .map(|_| ())
            }
        })
    }

    /// Drive an open gRPC stream from the server side: initial metadata, a message, trailing
    /// metadata, or the close with a status (then the stream is forgotten).
    pub fn grpc_stream_event(&self, token: u32, event: GrpcStreamEvent<'_>) -> Result<()> {
        let call = {
            let mut s = self.shared.borrow_mut();
            let i = s
                .grpc_calls
                .iter()
                .position(|c| c.token == token && c.stream)
                .ok_or(Error::UnknownToken(token))?;
            let call = if matches!(event, GrpcStreamEvent::Close(..)) {
                s.grpc_calls.remove(i)
            } else {
                s.grpc_calls[i].clone()
            };
            if let Some(m) = s.grpc_made_mut(call.vm_index, token) {
                let owned = |pairs: &[(&str, &str)]| {
                    pairs
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect::<Vec<_>>()
                };
                match event {
                    GrpcStreamEvent::InitialMetadata(p) => m.answered.initial_metadata = owned(p),
                    GrpcStreamEvent::Message(b) => m.answered.messages.push(b.to_vec()),
                    GrpcStreamEvent::TrailingMetadata(p) => {
                        m.answered.trailing_metadata = owned(p);
                    }
                    GrpcStreamEvent::Close(status, message) => {
                        m.answered.close = Some((status, message.to_string()));
                    }
                }
            }
            call
        };
        let ctx = call.context;
        let t = token as i32;
        self.callout(call.vm_index, |v| match event {
            GrpcStreamEvent::InitialMetadata(pairs) => {
                v.store.data_mut().call_response = Some(CallResponse {
                    headers: HeaderMap::from_pairs(pairs),
                    ..CallResponse::default()
                });
                let f = v.exports.on_grpc_receive_initial_metadata.clone();
                v.call(
                    "proxy_on_grpc_receive_initial_metadata",
                    ctx,
                    f,
                    (ctx as i32, t, pairs.len() as i32),
                )
                .map(|_| ())
            }
            GrpcStreamEvent::Message(body) => {
                v.store.data_mut().call_response = Some(CallResponse {
                    body: body.to_vec(),
                    ..CallResponse::default()
                });
                let f = v.exports.on_grpc_receive.clone();
                v.call(
                    "proxy_on_grpc_receive",
                    ctx,
                    f,
                    (ctx as i32, t, body.len() as i32),
                )
                .map(|_| ())
            }
            GrpcStreamEvent::TrailingMetadata(pairs) => {
                v.store.data_mut().call_response = Some(CallResponse {
                    trailers: HeaderMap::from_pairs(pairs),
                    ..CallResponse::default()
                });
                let f = v.exports.on_grpc_receive_trailing_metadata.clone();
                v.call(
                    "proxy_on_grpc_receive_trailing_metadata",
                    ctx,
                    f,
                    (ctx as i32, t, pairs.len() as i32),
                )
                .map(|_| ())
            }
            GrpcStreamEvent::Close(status, message) => {
                v.store.data_mut().last_status = (status, message.to_string());
                let f = v.exports.on_grpc_close.clone();
                v.call(
                    "proxy_on_grpc_close",
                    ctx,
                    f,
                    (ctx as i32, t, status as i32),
                )
                .map(|_| ())
            }
        })
    }

    /// Deliver work that had to wait for a callback to return (queue notifications). Called
    /// after every callback of every stream, and almost always with nothing to do: that check is
    /// inlined, the delivery is not.
    #[inline]
    pub(crate) fn run_deferred(&self) -> Result<()> {
        if self.shared.borrow().deferred.is_empty() {
            return Ok(());
        }
        self.deliver_deferred()
    }

    #[cold]
    fn deliver_deferred(&self) -> Result<()> {
        loop {
            let next = {
                let mut s = self.shared.borrow_mut();
                if s.deferred.is_empty() {
                    return Ok(());
                }
                s.deferred.remove(0)
            };
            match next {
                Deferred::QueueReady {
                    vm_index,
                    context,
                    token,
                } => {
                    let Some(vm) = self.shared.borrow().vm(vm_index) else {
                        continue;
                    };
                    let mut v = vm.borrow_mut();
                    if v.failed.is_some() {
                        continue;
                    }
                    let f = v.exports.on_queue_ready.clone();
                    v.call(
                        "proxy_on_queue_ready",
                        context,
                        f,
                        (context as i32, token as i32),
                    )?;
                }
            }
        }
    }
}
