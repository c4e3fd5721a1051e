//! Names and numbers of the proxy-wasm ABI (v0.1.0, v0.2.0, v0.2.1), in one place.
//!
//! ```
//! use proxy_wasm_harness::abi::{AbiVersion, Status};
//!
//! assert_eq!(AbiVersion::from_export("proxy_abi_version_0_2_1"), Some(AbiVersion::V0_2_1));
//! assert_eq!(Status::NotFound as i32, 1);
//! ```

use std::fmt;

/// An ABI version, as a module declares it with an exported function of that name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum AbiVersion {
    /// `proxy_abi_version_0_1_0`
    V0_1_0,
    /// `proxy_abi_version_0_2_0`
    V0_2_0,
    /// `proxy_abi_version_0_2_1`
    V0_2_1,
}

impl AbiVersion {
    /// Every version, oldest first.
    pub const ALL: [AbiVersion; 3] = [AbiVersion::V0_1_0, AbiVersion::V0_2_0, AbiVersion::V0_2_1];

    /// The export that declares this version.
    pub fn export_name(self) -> &'static str {
        match self {
            AbiVersion::V0_1_0 => "proxy_abi_version_0_1_0",
            AbiVersion::V0_2_0 => "proxy_abi_version_0_2_0",
            AbiVersion::V0_2_1 => "proxy_abi_version_0_2_1",
        }
    }

    /// The version an export name declares, if it is one.
    pub fn from_export(name: &str) -> Option<AbiVersion> {
        AbiVersion::ALL
            .into_iter()
            .find(|v| v.export_name() == name)
    }

    /// The version as written in runtime configs (`0.2.1`).
    pub fn as_str(self) -> &'static str {
        match self {
            AbiVersion::V0_1_0 => "0.1.0",
            AbiVersion::V0_2_0 => "0.2.0",
            AbiVersion::V0_2_1 => "0.2.1",
        }
    }
}

impl fmt::Display for AbiVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `WasmResult` status codes returned by host functions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(i32)]
pub enum Status {
    /// Success.
    Ok = 0,
    /// The thing asked for does not exist.
    NotFound = 1,
    /// An argument is out of range or of the wrong kind.
    BadArgument = 2,
    /// A value could not be serialized.
    SerializationFailure = 3,
    /// A value could not be parsed.
    ParseFailure = 4,
    /// A pointer/length pair is outside the module's memory.
    InvalidMemoryAccess = 6,
    /// A queue or buffer is empty.
    Empty = 7,
    /// A compare-and-swap lost.
    CasMismatch = 8,
    /// Internal error.
    InternalFailure = 10,
    /// The connection is gone.
    BrokenConnection = 11,
    /// The host does not implement this call.
    Unimplemented = 12,
}

/// Buffer kinds for `proxy_get_buffer_bytes` and friends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(i32)]
pub enum BufferType {
    /// Request body.
    HttpRequestBody = 0,
    /// Response body.
    HttpResponseBody = 1,
    /// Data from downstream (network filters).
    DownstreamData = 2,
    /// Data from upstream (network filters).
    UpstreamData = 3,
    /// Body of an HTTP call's response.
    HttpCallResponseBody = 4,
    /// A received gRPC message.
    GrpcReceiveBuffer = 5,
    /// VM configuration.
    VmConfiguration = 6,
    /// Plugin configuration.
    PluginConfiguration = 7,
    /// Arguments of a foreign function call.
    CallData = 8,
}

impl BufferType {
    /// From the ABI number.
    pub fn from_i32(v: i32) -> Option<BufferType> {
        use BufferType::*;
        Some(match v {
            0 => HttpRequestBody,
            1 => HttpResponseBody,
            2 => DownstreamData,
            3 => UpstreamData,
            4 => HttpCallResponseBody,
            5 => GrpcReceiveBuffer,
            6 => VmConfiguration,
            7 => PluginConfiguration,
            8 => CallData,
            _ => return None,
        })
    }
}

/// Header map kinds for `proxy_*_header_map_*`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(i32)]
pub enum MapType {
    /// Request headers.
    HttpRequestHeaders = 0,
    /// Request trailers.
    HttpRequestTrailers = 1,
    /// Response headers.
    HttpResponseHeaders = 2,
    /// Response trailers.
    HttpResponseTrailers = 3,
    /// Initial metadata of a gRPC stream or call response.
    GrpcReceiveInitialMetadata = 4,
    /// Trailing metadata of a gRPC stream or call response.
    GrpcReceiveTrailingMetadata = 5,
    /// Headers of an HTTP call's response.
    HttpCallResponseHeaders = 6,
    /// Trailers of an HTTP call's response.
    HttpCallResponseTrailers = 7,
}

impl MapType {
    /// From the ABI number.
    pub fn from_i32(v: i32) -> Option<MapType> {
        use MapType::*;
        Some(match v {
            0 => HttpRequestHeaders,
            1 => HttpRequestTrailers,
            2 => HttpResponseHeaders,
            3 => HttpResponseTrailers,
            4 => GrpcReceiveInitialMetadata,
            5 => GrpcReceiveTrailingMetadata,
            6 => HttpCallResponseHeaders,
            7 => HttpCallResponseTrailers,
            _ => return None,
        })
    }
}

/// Metric kinds for `proxy_define_metric`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(i32)]
pub enum MetricType {
    /// Only goes up.
    Counter = 0,
    /// Goes up and down, or is set.
    Gauge = 1,
    /// Records values.
    Histogram = 2,
}

impl MetricType {
    /// From the ABI number.
    pub fn from_i32(v: i32) -> Option<MetricType> {
        Some(match v {
            0 => MetricType::Counter,
            1 => MetricType::Gauge,
            2 => MetricType::Histogram,
            _ => return None,
        })
    }
}

/// Log levels of `proxy_log` and `proxy_get_log_level`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(i32)]
pub enum LogLevel {
    /// trace
    Trace = 0,
    /// debug
    Debug = 1,
    /// info
    Info = 2,
    /// warn
    Warn = 3,
    /// error
    Error = 4,
    /// critical
    Critical = 5,
}

impl LogLevel {
    /// From the ABI number.
    pub fn from_i32(v: i32) -> Option<LogLevel> {
        use LogLevel::*;
        Some(match v {
            0 => Trace,
            1 => Debug,
            2 => Info,
            3 => Warn,
            4 => Error,
            5 => Critical,
            _ => return None,
        })
    }

    /// Lower-case name, as Envoy prints it.
    pub fn as_str(self) -> &'static str {
        match self {
            LogLevel::Trace => "trace",
            LogLevel::Debug => "debug",
            LogLevel::Info => "info",
            LogLevel::Warn => "warn",
            LogLevel::Error => "error",
            LogLevel::Critical => "critical",
        }
    }
}

impl fmt::Display for LogLevel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a stream callback returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    /// Continue to the next filter.
    Continue,
    /// Stop iteration (headers) or buffer (body) until resumed.
    Pause,
    /// An action number the ABI does not define (kept so tests can see it).
    Other(i32),
}

impl Action {
    /// From the ABI number.
    pub fn from_i32(v: i32) -> Action {
        match v {
            0 => Action::Continue,
            1 => Action::Pause,
            n => Action::Other(n),
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Action::Continue => f.write_str("continue"),
            Action::Pause => f.write_str("pause"),
            Action::Other(n) => write!(f, "action {n}"),
        }
    }
}

/// The peer that closed a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(i32)]
pub enum PeerType {
    /// Unknown.
    Unknown = 0,
    /// This side.
    Local = 1,
    /// The other side.
    Remote = 2,
}

impl fmt::Display for PeerType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PeerType::Unknown => "unknown",
            PeerType::Local => "local",
            PeerType::Remote => "remote",
        })
    }
}

/// Envoy's stats prefix for metrics that modules define.
pub const ENVOY_CUSTOM_METRIC_PREFIX: &str = "wasmcustom.";

/// The module name of the host functions.
pub const ENV_MODULE: &str = "env";
/// The module name of WASI preview 1.
pub const WASI_MODULE: &str = "wasi_snapshot_preview1";
/// The older WASI module name, which cpp-host also serves.
pub const WASI_UNSTABLE_MODULE: &str = "wasi_unstable";

/// The callbacks only an HTTP filter's stream context is given (Envoy's
/// `envoy.filters.http.wasm`).
pub const HTTP_CALLBACKS: &[&str] = &[
    "proxy_on_request_headers",
    "proxy_on_request_body",
    "proxy_on_request_trailers",
    "proxy_on_response_headers",
    "proxy_on_response_body",
    "proxy_on_response_trailers",
];

/// The callbacks only a network (TCP) filter's connection context is given (Envoy's
/// `envoy.filters.network.wasm`).
pub const NETWORK_CALLBACKS: &[&str] = &[
    "proxy_on_new_connection",
    "proxy_on_downstream_data",
    "proxy_on_upstream_data",
    "proxy_on_downstream_connection_close",
    "proxy_on_upstream_connection_close",
];
