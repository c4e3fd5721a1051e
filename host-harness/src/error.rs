//! The harness's one error type.

use crate::abi::AbiVersion;
use std::path::PathBuf;

/// Everything that can go wrong loading or driving a module. Each variant names the module
/// callback or file at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The module file could not be read.
    #[error("cannot read {path}: {message}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The OS error.
        message: String,
    },
    /// The bytes are not a valid wasm module, or wasmtime could not compile them.
    #[error("invalid wasm module: {0}")]
    Compile(String),
    /// The module declares no proxy-wasm ABI version (no `proxy_abi_version_*` export).
    #[error(
        "not a proxy-wasm module: no proxy_abi_version_0_1_0/0_2_0/0_2_1 export (a plain wasm or WASI command?)"
    )]
    NoAbiVersion,
    /// The module declares several ABI versions.
    #[error("the module declares several proxy-wasm ABI versions: {0:?}")]
    ManyAbiVersions(Vec<AbiVersion>),
    /// The module exports no linear memory named `memory`.
    #[error("the module exports no memory named \"memory\"")]
    NoMemory,
    /// The module exports neither `proxy_on_memory_allocate` nor `malloc`.
    #[error(
        "the module exports neither proxy_on_memory_allocate nor malloc: the host cannot return data to it"
    )]
    NoAllocator,
    /// A required callback export is missing or has the wrong signature.
    #[error("export {name}: {message}")]
    BadExport {
        /// The export.
        name: String,
        /// What is wrong.
        message: String,
    },
    /// Instantiation failed (start function trapped, imports did not link).
    #[error("cannot instantiate the module: {0}")]
    Instantiate(String),
    /// The module trapped in a callback (unreachable, out-of-bounds access, panic, ...).
    #[error("{callback} trapped: {message}")]
    Trap {
        /// The callback, e.g. `proxy_on_request_headers`.
        callback: String,
        /// wasmtime's description, with the wasm backtrace when known.
        message: String,
    },
    /// The module called `proc_exit`.
    #[error("{callback}: the module called proc_exit({code})")]
    Exit {
        /// The callback.
        callback: String,
        /// The exit code.
        code: i32,
    },
    /// A callback ran past its deadline (a runaway loop).
    #[error("{callback} ran longer than the {millis} ms deadline and was interrupted")]
    Timeout {
        /// The callback.
        callback: String,
        /// The deadline.
        millis: u64,
    },
    /// The module tried to grow its memory past the cap.
    #[error("{callback}: memory limit of {limit} bytes exceeded")]
    MemoryLimit {
        /// The callback.
        callback: String,
        /// The cap.
        limit: usize,
    },
    /// The module called an import the host does not provide.
    #[error("{callback}: the module called {import}, which the host does not provide")]
    UnsupportedImport {
        /// The callback.
        callback: String,
        /// `module.name` of the import.
        import: String,
    },
    /// The module called a host function Envoy forbids while it runs `callback` (the VM's
    /// `_initialize`/`_start`/`main`, or `malloc` when the host gives it data): Envoy traps
    /// with `restricted_callback`.
    #[error(
        "{callback}: the module called {function}, which Envoy does not allow during {callback} \
         (it traps with restricted_callback; allowed: {allowed})"
    )]
    RestrictedCall {
        /// The callback that was running.
        callback: String,
        /// The host function called.
        function: String,
        /// What Envoy allows there.
        allowed: String,
    },
    /// `proxy_on_vm_start` returned false.
    #[error("proxy_on_vm_start returned false for vm_id {vm_id:?}")]
    VmStartFailed {
        /// The VM.
        vm_id: String,
    },
    /// `proxy_on_configure` returned false.
    #[error("proxy_on_configure returned false for root_id {root_id:?}")]
    ConfigureFailed {
        /// The plugin's root id.
        root_id: String,
    },
    /// The VM failed earlier and has not been reloaded.
    #[error("the VM failed earlier ({0}) and cannot run more callbacks")]
    VmFailed(String),
    /// A harness API was used out of order (e.g. response headers before request headers).
    #[error("harness misuse: {0}")]
    Usage(String),
    /// No pending HTTP/gRPC call has this token.
    #[error("no pending call with token {0}")]
    UnknownToken(u32),
}

/// Result with the harness error.
pub type Result<T> = std::result::Result<T, Error>;
