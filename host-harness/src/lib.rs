//! `proxy-wasm-harness`: a proxy-wasm host on wasmtime that loads any proxy-wasm module (any SDK)
//! and drives it the way Envoy does, so filters are unit-tested, debugged and benchmarked
//! without Envoy.
//!
//! A [`Runtime`] compiles [`Module`]s once; a [`Host`] is one "Envoy" (clock, logs, metrics,
//! shared data, queues, pending calls) and holds any number of [`Plugin`]s, each a root context in
//! a VM; a plugin opens [`HttpStream`]s that the test feeds and inspects. Hosts are values:
//! tests run in parallel.
//!
//! ```no_run
//! use proxy_wasm_harness::{Host, Module, Runtime};
//!
//! let module = Module::from_file(&Runtime::shared(), "target/wasm32-wasip1/wasm/header_filter.wasm")?;
//! let host = Host::new();
//! let plugin = host.start_plugin(&module, "my_root_id",
//!     r#"{"name":"resp-header-demo","value":"added by our filter"}"#)?;
//! let mut stream = plugin.http_stream()?;
//! stream.send_request_headers(&[(":method", "GET"), (":path", "/")], true)?;
//! stream.send_response_headers(&[(":status", "200")], true)?;
//! stream.complete()?;
//! assert_eq!(stream.response_headers().get("resp-header-demo").as_deref(), Some("added by our filter"));
//! # Ok::<(), proxy_wasm_harness::Error>(())
//! ```

#![deny(missing_docs)]

pub mod abi;
mod error;
pub mod foreign;
pub mod headers;
mod host;
mod imports;
mod plugin;
mod runtime;
pub mod scenario;
mod vm;

pub use error::{Error, Result};
pub use host::{
    DEFAULT_UPSTREAM, FilterStateSet, ForeignCall, GrpcAnswered, GrpcCall, GrpcStreamEvent, Host,
    HttpCall, LogRecord, Metric,
};
pub use plugin::{
    DEFAULT_DEADLINE, DEFAULT_MEMORY_CAP, FAIL_CLOSED_STATUS, FailurePolicy, HttpStream,
    NetworkStream, Plugin, PluginBuilder, RELOAD_BACKOFF,
};
pub use runtime::{Import, Module, Runtime};
pub use vm::LocalResponse;
