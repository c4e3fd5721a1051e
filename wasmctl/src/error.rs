//! The one error type of the library. Every variant names what is at fault: the registry, the
//! reference, the layer or the file, and says what to do when there is something to do.

use std::path::PathBuf;

/// Everything that can go wrong in `wasmctl`'s library.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The harness could not load, configure or run a module (`wasmctl run`, local `inspect`).
    #[error("{file}: {message}")]
    Harness {
        /// The module file.
        file: PathBuf,
        /// What the harness reported.
        message: String,
    },
    /// The module is another kind of filter than the run drives: a network (TCP) filter run
    /// over HTTP, or an HTTP filter run as a connection (`--tcp`). The message says which kind
    /// it is, how that was found, and the flag to use; `wasmctl` exits with 2 (bad usage).
    #[error("{file}: {message}")]
    FilterKind {
        /// The module file.
        file: PathBuf,
        /// What kind it is, why, and the flag to run it with, then what went wrong.
        message: String,
    },
    /// A scenario file is malformed.
    #[error("scenario {file}: {message}")]
    Scenario {
        /// The scenario file.
        file: PathBuf,
        /// What is wrong (line, column, field).
        message: String,
    },
    /// A project file (`wasmctl.yaml`) is malformed.
    #[error("project file {file}: {message}")]
    Project {
        /// The project file.
        file: PathBuf,
        /// What is wrong (line, column, field).
        message: String,
    },
    /// The node agent's image list (or one of its entries) is invalid; `reason` names the
    /// entry, the line or the field.
    #[error("image list {file}: {reason}")]
    ImageList {
        /// The image list file.
        file: PathBuf,
        /// What is wrong, and where.
        reason: String,
    },
    /// A file could not be read or written.
    #[error("{action} {path}: {source}")]
    Io {
        /// What was being done ("cannot read", "cannot write", ...).
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A file is not a valid WebAssembly module.
    #[error("{path}: not a valid WebAssembly module: {reason}")]
    InvalidModule {
        /// The file (or `layer sha256:...` for pulled bytes).
        path: String,
        /// What the validator said.
        reason: String,
    },
    /// A valid module exports no `proxy_abi_version_*` function, so no proxy-wasm host loads it.
    #[error(
        "{path}: a valid WebAssembly module, but not a proxy-wasm module: it exports no proxy_abi_version_* function (exports: {exports}); build it with a proxy-wasm SDK, or pass --force to push it anyway"
    )]
    NotProxyWasm {
        /// The file.
        path: String,
        /// Its exports, abbreviated.
        exports: String,
    },
    /// A reference could not be parsed.
    #[error(
        "invalid image reference {reference:?}: {reason} (expected REGISTRY/REPOSITORY[:TAG][@sha256:DIGEST])"
    )]
    InvalidReference {
        /// The text given.
        reference: String,
        /// Why it was refused.
        reason: String,
    },
    /// A command-line value was not usable.
    #[error("{0}")]
    Usage(String),
    /// The controller could not use the Kubernetes API (unreachable, refused, no CRD, lost lease).
    #[error("Kubernetes API: {0}")]
    Kubernetes(String),
    /// A runtime config file was not valid.
    #[error("runtime config {path}: {reason}")]
    InvalidRuntimeConfig {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A Docker-style credentials file could not be read or is malformed.
    #[error("credentials file {path}: {reason}")]
    Credentials {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// Nothing answered at the registry's address.
    #[error("registry {registry} is not reachable at {scheme}://{registry}: {reason}{hint}")]
    Unreachable {
        /// host[:port].
        registry: String,
        /// `http` or `https`.
        scheme: &'static str,
        /// The transport error.
        reason: String,
        /// A hint about --plain-http / --insecure, or empty.
        hint: String,
    },
    /// The registry refused the credentials (or their absence).
    #[error("registry {registry} refused {operation} of {reference} (401 Unauthorized): {tried}")]
    Unauthorized {
        /// host[:port].
        registry: String,
        /// `pull` or `push`.
        operation: &'static str,
        /// The reference.
        reference: String,
        /// Which credentials were tried, never the secret.
        tried: String,
    },
    /// The registry denied the operation to authenticated credentials.
    #[error(
        "registry {registry} denied {operation} of {reference} (403 Forbidden) to {tried}: {message}"
    )]
    Forbidden {
        /// host[:port].
        registry: String,
        /// `pull` or `push`.
        operation: &'static str,
        /// The reference.
        reference: String,
        /// Which credentials were used.
        tried: String,
        /// The registry's message.
        message: String,
    },
    /// The token service of a registry using the Bearer flow refused to issue a token.
    #[error(
        "the token service of registry {registry} refused a token for {reference}: {reason}; {tried}"
    )]
    TokenRefused {
        /// host[:port].
        registry: String,
        /// The reference.
        reference: String,
        /// The token service's answer.
        reason: String,
        /// Which credentials were tried.
        tried: String,
    },
    /// The repository does not exist in the registry.
    #[error("repository {repository} does not exist in registry {registry} (pulling {reference})")]
    RepositoryNotFound {
        /// host[:port].
        registry: String,
        /// The repository path.
        repository: String,
        /// The reference.
        reference: String,
    },
    /// The tag or digest does not exist in an existing repository.
    #[error(
        "{reference}: manifest {what} not found in repository {repository} of registry {registry}"
    )]
    ManifestNotFound {
        /// host[:port].
        registry: String,
        /// The repository path.
        repository: String,
        /// `tag "v1"` or `digest sha256:...`.
        what: String,
        /// The reference.
        reference: String,
    },
    /// A blob's bytes do not hash to its descriptor's digest (tampered or corrupt storage).
    #[error(
        "{reference}: {what} failed verification: expected {expected}, got {actual}; the registry's copy is corrupt or was tampered with, nothing was written"
    )]
    DigestMismatch {
        /// The reference.
        reference: String,
        /// `manifest` or `layer 1 (application/...)`.
        what: String,
        /// The digest the descriptor (or pinned reference) names.
        expected: String,
        /// The digest of the bytes received.
        actual: String,
    },
    /// A blob or module exceeds the size cap.
    #[error(
        "{reference}: {what} is {size} bytes, over the {limit}-byte cap (raise it with --max-size)"
    )]
    TooLarge {
        /// The reference.
        reference: String,
        /// What is too large.
        what: String,
        /// Its size.
        size: u64,
        /// The cap.
        limit: u64,
    },
    /// The manifest is not a wasm image in any layout `wasmctl` knows.
    #[error("{reference}: not a wasm image: {reason}")]
    NotWasmImage {
        /// The reference.
        reference: String,
        /// Why, naming the layers found.
        reason: String,
    },
    /// The image's module bytes are not WebAssembly.
    #[error(
        "{reference}: {what} is not a WebAssembly module (it starts with {head}, not \\0asm); nothing was written"
    )]
    NotWasmBytes {
        /// The reference.
        reference: String,
        /// The layer (and file inside it).
        what: String,
        /// The first bytes, escaped.
        head: String,
    },
    /// Any other answer of the registry that the cases above do not cover.
    #[error("registry {registry}: {operation} of {reference} failed: {reason}")]
    Registry {
        /// host[:port].
        registry: String,
        /// What was being done.
        operation: String,
        /// The reference.
        reference: String,
        /// The registry's or the client's message.
        reason: String,
    },
    /// A local file was given where only remote inspection exists.
    #[error("{path}: local inspection failed: {reason}")]
    LocalInspect {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// A key file that cannot be used.
    #[error("key {path}: {reason}")]
    Key {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// No signature of the image verifies with the key.
    #[error("{reference} ({digest}) is not verified: {reason}")]
    NotVerified {
        /// The image as given.
        reference: String,
        /// The digest it names now.
        digest: String,
        /// Why each signature found was refused, or that there is none.
        reason: String,
    },
    /// A `FilterDeployment` (or a workload given to `render`) is invalid: the file, the field
    /// path inside it and the reason.
    #[error("{file}: {field}: {reason}")]
    Render {
        /// The input file (with the document number when the file holds several).
        file: String,
        /// The field path, e.g. `spec.filter.parameters`.
        field: String,
        /// What is wrong.
        reason: String,
    },
}

/// The library's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn io(
        action: &'static str,
        path: impl Into<PathBuf>,
        source: std::io::Error,
    ) -> Self {
        Error::Io {
            action,
            path: path.into(),
            source,
        }
    }
}
