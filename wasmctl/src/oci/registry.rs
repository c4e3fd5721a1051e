//! Talking to OCI registries (on the `oci-client` crate, rustls): push, pull, inspect, login.
//!
//! Every operation first authenticates against `/v2/` (Basic, or the Bearer token flow when the
//! registry's `WWW-Authenticate` names a realm), so an unreachable registry, a refused login or a
//! token service's refusal is reported before any upload, naming the registry and which
//! credentials were tried (never the secret).
//!
//! ```no_run
//! # async fn demo() -> wasmctl::Result<()> {
//! use wasmctl::oci::registry::{self, Options, PushRequest};
//! use wasmctl::oci::layout::Format;
//!
//! let opts = Options { plain_http: true, ..Options::default() };
//! let pushed = registry::push(&PushRequest {
//!     reference: "127.0.0.1:5000/filters/header:v1".into(),
//!     module: "header_filter.wasm".into(),
//!     format: Format::Solo,
//!     ..PushRequest::default()
//! }, &opts).await?;
//! println!("{}", pushed.pinned); // 127.0.0.1:5000/filters/header@sha256:...
//! let pulled = registry::pull(&pushed.pinned, "out.wasm".as_ref(), &opts).await?;
//! assert_eq!(pulled.digest, pushed.digest);
//! # Ok(()) }
//! ```

use crate::error::{Error, Result};
use crate::oci::auth::{self, Credentials};
use crate::oci::layout::{self, BuiltImage, Format, Layout, Manifest, Verdict};
use crate::oci::media;
use crate::oci::runtime_config::RuntimeConfig;
use crate::{fsutil, module};
use bytes::Bytes;
use futures_util::StreamExt as _;
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::errors::{OciDistributionError, OciErrorCode};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference, RegistryOperation};
use std::collections::BTreeMap;
use std::io::{IsTerminal as _, Write as _};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Size of each upload request of a blob (the registry sees a chunked upload for larger blobs).
pub const CHUNK_SIZE: usize = 4 * 1024 * 1024;

/// How to reach registries and whose credentials to use.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Speak plain HTTP to the registry (never the default).
    pub plain_http: bool,
    /// Accept any TLS certificate (self-signed registries).
    pub insecure: bool,
    /// Credentials file in the Docker config format (a `dockerconfigjson` pull secret);
    /// default: [`auth::docker_config_path`].
    pub registry_config: Option<PathBuf>,
    /// Show a progress line on stderr (only when stderr is a terminal).
    pub progress: bool,
    /// Largest module pull accepts; default [`layout::DEFAULT_MAX_SIZE`].
    pub max_size: Option<u64>,
}

impl Options {
    fn credentials_file(&self) -> Option<PathBuf> {
        self.registry_config
            .clone()
            .or_else(auth::docker_config_path)
    }
}

/// Parse an image reference, accepting an `oci://` prefix.
pub fn parse_reference(text: &str) -> Result<Reference> {
    let t = text.trim().trim_start_matches("oci://");
    if t.is_empty() {
        return Err(Error::InvalidReference {
            reference: text.to_string(),
            reason: "empty".to_string(),
        });
    }
    crate::oci::reference::parse(t).map_err(|reason| Error::InvalidReference {
        reference: text.to_string(),
        reason,
    })
}

/// `REGISTRY/REPOSITORY@DIGEST`: the reference deployments should use.
pub fn pinned(reference: &Reference, digest: &str) -> String {
    format!(
        "{}/{}@{}",
        reference.registry(),
        reference.repository(),
        digest
    )
}

/// A connection to one repository of one registry, authenticated for one operation.
pub(crate) struct Remote {
    client: Client,
    reference: Reference,
    text: String,
    registry: String,
    scheme: &'static str,
    auth: RegistryAuth,
    tried: String,
    operation: &'static str,
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        let s_text = s.to_string();
        if !out.contains(&s_text) {
            out.push_str(": ");
            out.push_str(&s_text);
        }
        cur = s.source();
    }
    out
}

fn client_for(opts: &Options, registry: &str) -> Result<Client> {
    let config = ClientConfig {
        protocol: if opts.plain_http {
            ClientProtocol::HttpsExcept(vec![registry.to_string()])
        } else {
            ClientProtocol::Https
        },
        accept_invalid_certificates: opts.insecure,
        platform_resolver: None,
        connect_timeout: Some(Duration::from_secs(10)),
        read_timeout: Some(Duration::from_secs(120)),
        user_agent: concat!("wasmctl/", env!("CARGO_PKG_VERSION")),
        ..ClientConfig::default()
    };
    Client::try_from(config)
        .map_err(|e| Error::Usage(format!("cannot set up the HTTP client: {e}")))
}

impl Remote {
    pub(crate) async fn connect(
        text: &str,
        opts: &Options,
        op: RegistryOperation,
    ) -> Result<Remote> {
        let reference = parse_reference(text)?;
        let registry = reference.registry().to_string();
        let file = opts.credentials_file();
        let creds: Option<Credentials> = match &file {
            Some(f) => auth::find(f, &registry)?,
            None => None,
        };
        let (auth, tried) = match creds {
            Some(c) => {
                let tried = c.describe();
                (RegistryAuth::Basic(c.username, c.password), tried)
            }
            None => (
                RegistryAuth::Anonymous,
                format!(
                    "no credentials were sent: none stored for {registry} in {}; log in with `wasmctl login {registry} -u USER --password-stdin` or pass --registry-config FILE",
                    file.map(|f| f.display().to_string())
                        .unwrap_or_else(|| "~/.docker/config.json (HOME is not set)".to_string())
                ),
            ),
        };
        let remote = Remote {
            client: client_for(opts, &registry)?,
            text: text.trim().trim_start_matches("oci://").to_string(),
            scheme: if opts.plain_http { "http" } else { "https" },
            registry,
            reference,
            auth,
            tried,
            operation: match op {
                RegistryOperation::Pull => "pull",
                RegistryOperation::Push => "push",
            },
        };
        remote
            .client
            .auth(&remote.reference, &remote.auth, op)
            .await
            .map_err(|e| remote.map_err(e, "authentication"))?;
        Ok(remote)
    }

    /// The reference as the user wrote it (without `oci://`).
    pub(crate) fn text(&self) -> &str {
        &self.text
    }

    /// `REGISTRY/REPOSITORY`.
    pub(crate) fn repository_name(&self) -> String {
        format!("{}/{}", self.registry, self.reference.repository())
    }

    /// The same repository at `tag`.
    pub(crate) fn at_tag(&self, tag: &str) -> Result<Remote> {
        let r = parse_reference(&format!("{}:{tag}", self.repository_name()))?;
        Ok(self.with_reference(r))
    }

    /// The manifest's bytes and media type, or `None` when the registry has no such manifest;
    /// refused above `max` bytes.
    pub(crate) async fn raw_manifest(&self, max: u64) -> Result<Option<(Vec<u8>, String)>> {
        match self
            .client
            .pull_manifest_raw(&self.reference, &self.auth, media::ACCEPTED_MANIFESTS)
            .await
        {
            Ok((bytes, media_type)) => {
                if bytes.len() as u64 > max {
                    return Err(Error::TooLarge {
                        reference: self.text.clone(),
                        what: "manifest".to_string(),
                        size: bytes.len() as u64,
                        limit: max,
                    });
                }
                Ok(Some((bytes.to_vec(), media_type)))
            }
            Err(e) => match self.map_err(e, "manifest") {
                Error::ManifestNotFound { .. } | Error::RepositoryNotFound { .. } => Ok(None),
                other => Err(other),
            },
        }
    }

    /// The digest of the manifest the reference names now (of the bytes received, checked
    /// against a pinned digest).
    pub(crate) async fn resolve_digest(&self) -> Result<String> {
        let Some((bytes, _)) = self.raw_manifest(16 << 20).await? else {
            return Err(self.not_found(None));
        };
        self.manifest_digest(&bytes)
    }

    /// The sha256 digest of manifest `bytes`, which must be the pinned one if the reference
    /// pins a digest.
    fn manifest_digest(&self, bytes: &[u8]) -> Result<String> {
        let actual = layout::sha256_digest(bytes);
        if let Some(pinned) = self.reference.digest()
            && pinned != actual
        {
            return Err(Error::DigestMismatch {
                reference: self.text.clone(),
                what: "manifest".to_string(),
                expected: pinned.to_string(),
                actual,
            });
        }
        Ok(actual)
    }

    /// Upload `data` unless the registry has it.
    pub(crate) async fn put_blob(&self, data: &[u8]) -> Result<()> {
        let blob = layout::Blob {
            descriptor: layout::Descriptor {
                media_type: "application/octet-stream".to_string(),
                digest: layout::sha256_digest(data),
                size: data.len() as u64,
                annotations: BTreeMap::new(),
            },
            data: Bytes::copy_from_slice(data),
        };
        self.upload(&blob, &Arc::new(Progress::new(false, String::new(), 0)))
            .await
            .map(|_| ())
    }

    /// Download the blob `digest` of `size` bytes (verified), refused above `max`.
    pub(crate) async fn get_blob(&self, digest: &str, size: u64, max: u64) -> Result<Vec<u8>> {
        let desc = layout::Descriptor {
            media_type: String::new(),
            digest: digest.to_string(),
            size,
            annotations: BTreeMap::new(),
        };
        self.blob(&desc, "blob", max, &Progress::new(false, String::new(), 0))
            .await
    }

    /// Store `manifest` (of `media_type`) under the reference's tag.
    pub(crate) async fn put_manifest(&self, manifest: Vec<u8>, media_type: &str) -> Result<()> {
        let header = media_type
            .parse()
            .map_err(|_| Error::Usage(format!("bad content type {media_type}")))?;
        self.client
            .push_manifest_raw(&self.reference, manifest, header)
            .await
            .map_err(|e| self.map_err(e, "manifest upload"))?;
        Ok(())
    }

    fn with_reference(&self, reference: Reference) -> Remote {
        Remote {
            client: self.client.clone(),
            text: reference.whole(),
            reference,
            registry: self.registry.clone(),
            scheme: self.scheme,
            auth: self.auth.clone(),
            tried: self.tried.clone(),
            operation: self.operation,
        }
    }

    fn unauthorized(&self) -> Error {
        Error::Unauthorized {
            registry: self.registry.clone(),
            operation: self.operation,
            reference: self.text.clone(),
            tried: match self.auth {
                RegistryAuth::Anonymous => self.tried.clone(),
                _ => format!("it refused {}", self.tried),
            },
        }
    }

    fn not_found(&self, code: Option<&OciErrorCode>) -> Error {
        if code == Some(&OciErrorCode::NameUnknown) {
            return Error::RepositoryNotFound {
                registry: self.registry.clone(),
                repository: self.reference.repository().to_string(),
                reference: self.text.clone(),
            };
        }
        Error::ManifestNotFound {
            registry: self.registry.clone(),
            repository: self.reference.repository().to_string(),
            what: match (self.reference.digest(), self.reference.tag()) {
                (Some(d), _) => format!("digest {d}"),
                (None, Some(t)) => format!("tag {t:?}"),
                (None, None) => "tag \"latest\"".to_string(),
            },
            reference: self.text.clone(),
        }
    }

    fn generic(&self, operation: &str, reason: String) -> Error {
        Error::Registry {
            registry: self.registry.clone(),
            operation: operation.to_string(),
            reference: self.text.clone(),
            reason,
        }
    }

    /// Turn the client's error into one that names the registry, the reference and what to do.
    fn map_err(&self, e: OciDistributionError, operation: &str) -> Error {
        match e {
            OciDistributionError::RequestError(ref re) => {
                if re.status().map(|s| s.as_u16()) == Some(401) {
                    return self.unauthorized();
                }
                if re.is_connect() || re.is_timeout() || re.is_request() {
                    let reason = error_chain(re);
                    let hint = if self.scheme == "https" {
                        " (is it running? if it serves plain HTTP, pass --plain-http; for a self-signed certificate, --insecure)".to_string()
                    } else {
                        " (is it running on that address?)".to_string()
                    };
                    return Error::Unreachable {
                        registry: self.registry.clone(),
                        scheme: self.scheme,
                        reason,
                        hint,
                    };
                }
                self.generic(operation, error_chain(re))
            }
            OciDistributionError::UnauthorizedError { .. } => self.unauthorized(),
            OciDistributionError::AuthenticationFailure(reason) => Error::TokenRefused {
                registry: self.registry.clone(),
                reference: self.text.clone(),
                reason: reason.trim().to_string(),
                tried: match self.auth {
                    RegistryAuth::Anonymous => self.tried.clone(),
                    _ => format!("tried {}", self.tried),
                },
            },
            OciDistributionError::RegistryError { envelope, .. } => {
                let code = envelope.errors.first().map(|e| &e.code);
                match code {
                    Some(
                        OciErrorCode::NameUnknown
                        | OciErrorCode::ManifestUnknown
                        | OciErrorCode::NotFound,
                    ) => self.not_found(code),
                    Some(OciErrorCode::Unauthorized) => self.unauthorized(),
                    Some(OciErrorCode::Denied) => Error::Forbidden {
                        registry: self.registry.clone(),
                        operation: self.operation,
                        reference: self.text.clone(),
                        tried: self.tried.clone(),
                        message: envelope.to_string(),
                    },
                    _ => self.generic(operation, envelope.to_string()),
                }
            }
            OciDistributionError::ServerError { code: 401, .. } => self.unauthorized(),
            OciDistributionError::ServerError {
                code: 403, message, ..
            } => Error::Forbidden {
                registry: self.registry.clone(),
                operation: self.operation,
                reference: self.text.clone(),
                tried: self.tried.clone(),
                message: message.trim().to_string(),
            },
            OciDistributionError::ServerError {
                code: 404, message, ..
            } if message.contains("NAME_UNKNOWN") => {
                self.not_found(Some(&OciErrorCode::NameUnknown))
            }
            OciDistributionError::ServerError { code: 404, .. } => self.not_found(None),
            OciDistributionError::ServerError { code, message, url } => self.generic(
                operation,
                format!("HTTP {code} from {url}: {}", message.trim()),
            ),
            OciDistributionError::DigestError(
                oci_client::errors::DigestError::VerificationError { expected, actual },
            ) => Error::DigestMismatch {
                reference: self.text.clone(),
                what: operation.to_string(),
                expected,
                actual,
            },
            other => self.generic(operation, error_chain(&other)),
        }
    }

    async fn manifest(&self) -> Result<(Manifest, Vec<u8>, String)> {
        let result = self
            .client
            .pull_manifest_raw(&self.reference, &self.auth, media::ACCEPTED_MANIFESTS)
            .await;
        let (bytes, digest) = match result {
            Ok(ok) => ok,
            Err(e) => {
                let err = self.map_err(e, "manifest");
                // Distribution answers MANIFEST_UNKNOWN for a tag of a repository that does not
                // exist either; the tag list tells the two apart.
                if let Error::ManifestNotFound { .. } = err
                    && let Err(OciDistributionError::RegistryError { envelope, .. }) = self
                        .client
                        .list_tags(&self.reference, &self.auth, Some(1), None)
                        .await
                    && envelope
                        .errors
                        .iter()
                        .any(|e| e.code == OciErrorCode::NameUnknown)
                {
                    return Err(self.not_found(Some(&OciErrorCode::NameUnknown)));
                }
                return Err(err);
            }
        };
        // Verify ourselves too: the manifest's bytes must hash to the pinned digest.
        let actual = self.manifest_digest(&bytes)?;
        let manifest = Manifest::parse(&bytes).map_err(|reason| Error::NotWasmImage {
            reference: self.text.clone(),
            reason,
        })?;
        let _ = digest;
        Ok((manifest, bytes.to_vec(), actual))
    }

    /// Download a blob, verifying its digest and size and refusing more than `max` bytes.
    async fn blob(
        &self,
        desc: &layout::Descriptor,
        what: &str,
        max: u64,
        progress: &Progress,
    ) -> Result<Vec<u8>> {
        if desc.size > max {
            return Err(Error::TooLarge {
                reference: self.text.clone(),
                what: what.to_string(),
                size: desc.size,
                limit: max,
            });
        }
        let mut stream = self
            .client
            .pull_blob_stream(&self.reference, desc.digest.as_str())
            .await
            .map_err(|e| self.map_err(e, what))?;
        let mut out = Vec::with_capacity(desc.size as usize);
        let mut hasher = <sha2::Sha256 as sha2::Digest>::new();
        let mut stream_error = None;
        while let Some(chunk) = stream.next().await {
            match chunk {
                Ok(c) => {
                    sha2::Digest::update(&mut hasher, &c);
                    out.extend_from_slice(&c);
                    progress.advance(c.len() as u64);
                    if out.len() as u64 > max {
                        return Err(Error::TooLarge {
                            reference: self.text.clone(),
                            what: what.to_string(),
                            size: out.len() as u64,
                            limit: max,
                        });
                    }
                }
                Err(e) => {
                    stream_error = Some(e);
                    break;
                }
            }
        }
        let actual = format!("sha256:{:x}", sha2::Digest::finalize(hasher));
        if stream_error.is_none() && actual != desc.digest
            || stream_error.is_some() && out.len() as u64 == desc.size && actual != desc.digest
        {
            return Err(Error::DigestMismatch {
                reference: self.text.clone(),
                what: what.to_string(),
                expected: desc.digest.clone(),
                actual,
            });
        }
        if let Some(e) = stream_error {
            return Err(self.generic(what, format!("download interrupted: {}", error_chain(&e))));
        }
        if out.len() as u64 != desc.size {
            return Err(self.generic(
                what,
                format!(
                    "received {} bytes, the manifest says {}",
                    out.len(),
                    desc.size
                ),
            ));
        }
        Ok(out)
    }

    /// Download layer `index` of `manifest` (with a progress bar when asked and it is large),
    /// and name it: `layer 1 (media type)`.
    async fn layer(
        &self,
        manifest: &Manifest,
        index: usize,
        max: u64,
        progress: bool,
    ) -> Result<(Vec<u8>, String)> {
        let desc = &manifest.layers[index];
        let what = format!("layer {index} ({})", desc.media_type);
        let bar = Progress::new(
            progress && desc.size > CHUNK_SIZE as u64,
            format!("pulling {}", self.text),
            desc.size,
        );
        let blob = self.blob(desc, &what, max, &bar).await;
        bar.finish();
        Ok((blob?, what))
    }

    async fn upload(&self, blob: &layout::Blob, progress: &Arc<Progress>) -> Result<bool> {
        let what = format!(
            "upload of blob {} ({})",
            blob.descriptor.digest, blob.descriptor.media_type
        );
        let exists = self
            .client
            .blob_exists(&self.reference, &blob.descriptor.digest)
            .await
            .map_err(|e| self.map_err(e, &what))?;
        if exists {
            progress.advance(blob.data.len() as u64);
            return Ok(false);
        }
        let data = blob.data.clone();
        let chunks: Vec<Bytes> = (0..data.len())
            .step_by(CHUNK_SIZE)
            .map(|start| data.slice(start..(start + CHUNK_SIZE).min(data.len())))
            .collect();
        let p = Arc::clone(progress);
        let stream = futures_util::stream::iter(chunks.into_iter().map(move |c| {
            p.advance(c.len() as u64);
            Ok::<Bytes, OciDistributionError>(c)
        }));
        self.client
            .push_blob_stream(
                &self.reference,
                stream,
                &blob.descriptor.digest,
                Some(blob.data.len() as u64),
            )
            .await
            .map_err(|e| self.map_err(e, &what))?;
        Ok(true)
    }
}

/// A progress line on stderr, drawn only when enabled and stderr is a terminal.
struct Progress {
    enabled: bool,
    label: String,
    total: u64,
    done: AtomicU64,
}

impl Progress {
    fn new(enabled: bool, label: String, total: u64) -> Progress {
        Progress {
            enabled: enabled && std::io::stderr().is_terminal(),
            label,
            total,
            done: AtomicU64::new(0),
        }
    }

    fn advance(&self, n: u64) {
        let done = self.done.fetch_add(n, Ordering::Relaxed) + n;
        if self.enabled {
            let pct = (done.min(self.total) * 100)
                .checked_div(self.total)
                .unwrap_or(100);
            let mut err = std::io::stderr().lock();
            let _ = write!(
                err,
                "\r{} {:>3}% {:.1}/{:.1} MB",
                self.label,
                pct,
                done as f64 / 1e6,
                self.total as f64 / 1e6
            );
            let _ = err.flush();
        }
    }

    fn finish(&self) {
        if self.enabled {
            eprintln!();
        }
    }
}

/// What to push.
#[derive(Debug, Clone)]
pub struct PushRequest {
    /// `REGISTRY/REPO:TAG`; several tags as `REPO:TAG1,TAG2`.
    pub reference: String,
    /// Further tags.
    pub extra_tags: Vec<String>,
    /// The module file.
    pub module: PathBuf,
    /// The layout.
    pub format: Format,
    /// Root ids for the generated runtime config.
    pub root_ids: Vec<String>,
    /// A runtime config file to use instead of generating one.
    pub config: Option<PathBuf>,
    /// Manifest annotations.
    pub annotations: BTreeMap<String, String>,
    /// Push even if the file is not a proxy-wasm module.
    pub force: bool,
}

impl Default for PushRequest {
    fn default() -> Self {
        PushRequest {
            reference: String::new(),
            extra_tags: Vec::new(),
            module: PathBuf::new(),
            format: Format::Solo,
            root_ids: Vec::new(),
            config: None,
            annotations: BTreeMap::new(),
            force: false,
        }
    }
}

/// What a push did.
#[derive(Debug, Clone)]
pub struct Pushed {
    /// The manifest digest.
    pub digest: String,
    /// `REGISTRY/REPO@DIGEST`.
    pub pinned: String,
    /// Every tag written, as full references.
    pub tagged: Vec<String>,
    /// Blobs uploaded.
    pub uploaded: usize,
    /// Blobs the registry already had.
    pub skipped: usize,
    /// Warnings for the user (format not loaded by Istio, module checks overridden).
    pub warnings: Vec<String>,
    /// The module's size.
    pub module_size: u64,
}

/// Split `REPO:TAG1,TAG2` into the first reference and further tags.
fn split_tags(reference: &str) -> (String, Vec<String>) {
    let (head, last) = match reference.rsplit_once('/') {
        Some((h, l)) => (format!("{h}/"), l),
        None => (String::new(), reference),
    };
    match last.split_once(':') {
        Some((name, tags)) if tags.contains(',') && !last.contains('@') => {
            let mut it = tags.split(',').map(str::trim).filter(|t| !t.is_empty());
            let first = it.next().unwrap_or("latest");
            (
                format!("{head}{name}:{first}"),
                it.map(str::to_string).collect(),
            )
        }
        _ => (reference.to_string(), Vec::new()),
    }
}

/// Build the image from the module (checked first: nothing is uploaded for a bad file), upload
/// the blobs the registry lacks, and tag the manifest.
pub async fn push(req: &PushRequest, opts: &Options) -> Result<Pushed> {
    let (first, mut tags) = split_tags(&req.reference);
    tags.extend(req.extra_tags.iter().cloned());
    let reference = parse_reference(&first)?;
    if reference.digest().is_some() {
        return Err(Error::InvalidReference {
            reference: req.reference.clone(),
            reason: "push needs a tag, not a digest (the digest is computed from what is pushed)"
                .to_string(),
        });
    }
    let mut refs = vec![reference.clone()];
    for t in &tags {
        let r = format!("{}/{}:{t}", reference.registry(), reference.repository());
        refs.push(parse_reference(&r)?);
    }

    let path = &req.module;
    let name = path.display().to_string();
    let bytes = std::fs::read(path).map_err(|e| Error::io("cannot read module", path, e))?;
    let mut warnings = Vec::new();
    let summary = match module::check(&bytes, &name).and_then(|s| {
        module::require_proxy_wasm(&s, &name)?;
        Ok(s)
    }) {
        Ok(s) => Some(s),
        Err(e) if req.force => {
            warnings.push(format!("pushing anyway (--force): {e}"));
            None
        }
        Err(e) => return Err(e),
    };
    let config = match &req.config {
        Some(p) => RuntimeConfig::load(p)?,
        None => RuntimeConfig::generated(
            summary.map(|s| s.abi_versions).unwrap_or_default(),
            req.root_ids.clone(),
        ),
    };
    let title = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "plugin.wasm".to_string());
    let image: BuiltImage = layout::build(req.format, &bytes, &title, &config, &req.annotations)?;
    match req.format {
        Format::Cncf => warnings.push(
            "format cncf: Istio and Envoy Gateway do not load this layout (they need solo or compat); use it for other runtimes".to_string(),
        ),
        Format::Solo | Format::Compat => {}
    }

    let remote = Remote::connect(&first, opts, RegistryOperation::Push).await?;
    let total: u64 = image.blobs.iter().map(|b| b.data.len() as u64).sum();
    let progress = Arc::new(Progress::new(
        opts.progress && bytes.len() > CHUNK_SIZE,
        format!("pushing {}", remote.text),
        total,
    ));
    let (mut uploaded, mut skipped) = (0, 0);
    for blob in &image.blobs {
        if remote.upload(blob, &progress).await? {
            uploaded += 1;
        } else {
            skipped += 1;
        }
    }
    progress.finish();
    let content_type = image
        .manifest
        .media_type
        .clone()
        .unwrap_or_else(|| media::OCI_MANIFEST.to_string());
    let mut tagged = Vec::new();
    for r in refs {
        let target = remote.with_reference(r);
        let header = content_type
            .parse()
            .map_err(|_| Error::Usage(format!("bad content type {content_type}")))?;
        target
            .client
            .push_manifest_raw(&target.reference, image.manifest_json.clone(), header)
            .await
            .map_err(|e| target.map_err(e, "manifest upload"))?;
        tagged.push(target.text.clone());
    }
    Ok(Pushed {
        pinned: pinned(&reference, &image.digest),
        digest: image.digest,
        tagged,
        uploaded,
        skipped,
        warnings,
        module_size: bytes.len() as u64,
    })
}

/// What a pull wrote.
#[derive(Debug, Clone)]
pub struct Pulled {
    /// The manifest digest.
    pub digest: String,
    /// The layout found.
    pub layout: Layout,
    /// The module's size.
    pub size: u64,
    /// The file written.
    pub path: PathBuf,
}

/// Fetch the module of `reference` in any layout, verify everything, and write it to `out`
/// atomically: on any error nothing is written and no temporary file is left.
pub async fn pull(reference: &str, out: &Path, opts: &Options) -> Result<Pulled> {
    let Fetched::Module(m) = fetch(reference, opts, None, false).await? else {
        // Without a known digest every manifest is new; this arm is never taken.
        return Err(Error::Usage(format!("{reference}: nothing to pull")));
    };
    fsutil::write_atomic(out, &m.module, 0o644)?;
    Ok(Pulled {
        digest: m.digest,
        layout: m.layout,
        size: m.module.len() as u64,
        path: out.to_path_buf(),
    })
}

/// What [`fetch`] got.
#[derive(Debug, Clone)]
pub enum Fetched {
    /// The tag resolves to the manifest digest the caller already has: only the manifest was
    /// requested, nothing else was downloaded.
    Unchanged {
        /// The manifest digest.
        digest: String,
    },
    /// A module, verified (digests, size cap, wasm magic) but not written anywhere.
    Module(FetchedModule),
}

/// A module fetched from a registry, in memory.
#[derive(Debug, Clone)]
pub struct FetchedModule {
    /// The manifest digest.
    pub digest: String,
    /// The layout found.
    pub layout: Layout,
    /// The module's bytes.
    pub module: Vec<u8>,
    /// Which layer (and file inside it) held the module, e.g. `layer 1 (application/...)`.
    pub what: String,
    /// Root ids from the image's runtime config, when asked for and the image has one (solo).
    pub root_ids: Vec<String>,
    /// Bytes downloaded for blobs (the manifest not counted).
    pub downloaded: u64,
}

/// Resolve `reference` to its manifest digest and, unless it equals `known`, download and verify
/// the module (and, with `runtime_config`, read the root ids of a solo image's config blob).
/// This is `pull` without the file: the node agent uses it to re-resolve tags at the cost of one
/// manifest request.
pub async fn fetch(
    reference: &str,
    opts: &Options,
    known: Option<&str>,
    runtime_config: bool,
) -> Result<Fetched> {
    let max = opts.max_size.unwrap_or(layout::DEFAULT_MAX_SIZE);
    let remote = Remote::connect(reference, opts, RegistryOperation::Pull).await?;
    let (manifest, _, digest) = remote.manifest().await?;
    if known == Some(digest.as_str()) {
        return Ok(Fetched::Unchanged { digest });
    }
    let found = layout::locate(&manifest).map_err(|reason| Error::NotWasmImage {
        reference: remote.text.clone(),
        reason,
    })?;
    let (blob, what) = remote
        .layer(&manifest, found.layer, max, opts.progress)
        .await?;
    let mut downloaded = blob.len() as u64;
    let plugin = found.tar_gz.then(|| {
        layout::extract_compat(&blob, max)?
            .ok_or_else(|| format!("{} not found in the archive", media::COMPAT_FILE_NAME))
    });
    let (found, module, what) = match plugin {
        None => (found, blob, what),
        Some(Ok(module)) => (
            found,
            module,
            format!("{what}, file {}", media::COMPAT_FILE_NAME),
        ),
        // What Istio's fetcher does when its compat variant fails: read the layer of its oci
        // variant (for an image Istio refuses, the one raw wasm layer, as for any such image).
        Some(Err(missing)) => {
            let instead =
                layout::locate_without_plugin(&manifest).map_err(|why| Error::NotWasmImage {
                    reference: remote.text.clone(),
                    reason: format!("{what}: {missing}; {why}"),
                })?;
            let (blob, raw) = remote
                .layer(&manifest, instead.layer, max, opts.progress)
                .await?;
            downloaded += blob.len() as u64;
            let what = format!("{raw}, read because {what} is no compat layer: {missing}");
            (instead, blob, what)
        }
    };
    layout::require_magic(&module, &remote.text, &what)?;
    let mut root_ids = Vec::new();
    if runtime_config && manifest.config.media_type == media::SOLO_CONFIG {
        let quiet = Progress::new(false, String::new(), 0);
        let blob = remote
            .blob(&manifest.config, "config blob", 1024 * 1024, &quiet)
            .await?;
        downloaded += blob.len() as u64;
        if let Ok(c) = RuntimeConfig::parse(&blob) {
            root_ids = c.config.root_ids;
        }
    }
    Ok(Fetched::Module(FetchedModule {
        digest,
        layout: found.layout,
        module,
        what,
        root_ids,
        downloaded,
    }))
}

/// What `inspect` found in a remote image.
#[derive(Debug, Clone)]
pub struct Inspection {
    /// The reference inspected.
    pub reference: String,
    /// The manifest digest.
    pub digest: String,
    /// The manifest.
    pub manifest: Manifest,
    /// Size of the manifest.
    pub manifest_size: usize,
    /// The layout, or why none was recognised.
    pub layout: std::result::Result<Layout, String>,
    /// The runtime config, when the config blob is one.
    pub runtime_config: Option<std::result::Result<RuntimeConfig, String>>,
    /// Verdicts: Istio, Envoy Gateway.
    pub verdicts: Vec<Verdict>,
}

/// Fetch a remote image's manifest and config (and a compat layer, to look for `plugin.wasm`),
/// and judge where it loads.
pub async fn inspect(reference: &str, opts: &Options) -> Result<Inspection> {
    let max = opts.max_size.unwrap_or(layout::DEFAULT_MAX_SIZE);
    let remote = Remote::connect(reference, opts, RegistryOperation::Pull).await?;
    let (manifest, bytes, digest) = remote.manifest().await?;
    let quiet = Progress::new(false, String::new(), 0);
    let runtime_config = if manifest.config.media_type == media::SOLO_CONFIG {
        let blob = remote
            .blob(&manifest.config, "config blob", 1024 * 1024, &quiet)
            .await?;
        Some(RuntimeConfig::parse(&blob))
    } else {
        None
    };
    let located = layout::locate(&manifest);
    let mut compat_has_plugin = None;
    if let Some(last) = manifest.layers.last()
        && (last.media_type == media::OCI_LAYER_TAR_GZIP
            || last.media_type == media::DOCKER_LAYER_TAR_GZIP)
    {
        let what = format!("layer {} ({})", manifest.layers.len() - 1, last.media_type);
        let blob = remote.blob(last, &what, max, &quiet).await?;
        compat_has_plugin = Some(matches!(layout::extract_compat(&blob, max), Ok(Some(_))));
    }
    let verdicts = vec![
        layout::istio_verdict(&manifest, compat_has_plugin),
        layout::envoy_gateway_verdict(&manifest, compat_has_plugin),
    ];
    Ok(Inspection {
        reference: remote.text.clone(),
        digest,
        manifest_size: bytes.len(),
        layout: match located {
            // Pull then reads the layer Istio's oci variant reads, if there is one.
            Ok(l) if l.tar_gz && compat_has_plugin == Some(false) => {
                layout::locate_without_plugin(&manifest)
                    .map(|instead| instead.layout)
                    .map_err(|why| {
                        format!(
                            "layer {} is a tar.gz without {}; {why}",
                            l.layer,
                            media::COMPAT_FILE_NAME
                        )
                    })
            }
            Ok(l) => Ok(l.layout),
            Err(e) => Err(e),
        },
        runtime_config,
        verdicts,
        manifest,
    })
}

impl std::fmt::Display for Inspection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let m = &self.manifest;
        writeln!(f, "reference: {}", self.reference)?;
        writeln!(f, "digest:    {}", self.digest)?;
        writeln!(
            f,
            "manifest:  {} ({} bytes)",
            m.media_type.as_deref().unwrap_or("(no mediaType: OCI)"),
            self.manifest_size
        )?;
        match &self.layout {
            Ok(l) => writeln!(f, "layout:    {l}")?,
            Err(e) => writeln!(f, "layout:    not a wasm image: {e}")?,
        }
        writeln!(
            f,
            "config:    {} {} {} bytes",
            m.config.media_type, m.config.digest, m.config.size
        )?;
        for (i, l) in m.layers.iter().enumerate() {
            let title = l
                .annotations
                .get(media::ANNOTATION_TITLE)
                .map(|t| format!(" title={t:?}"))
                .unwrap_or_default();
            writeln!(
                f,
                "layer {i}:   {} {} {} bytes{title}",
                l.media_type, l.digest, l.size
            )?;
        }
        if !m.annotations.is_empty() {
            writeln!(f, "annotations:")?;
            for (k, v) in &m.annotations {
                writeln!(f, "  {k}: {v}")?;
            }
        }
        match &self.runtime_config {
            Some(Ok(c)) => writeln!(
                f,
                "runtime config: type={} abiVersions=[{}] rootIds=[{}]",
                c.runtime_type,
                c.abi_versions.join(", "),
                c.config.root_ids.join(", ")
            )?,
            Some(Err(e)) => writeln!(f, "runtime config: invalid: {e}")?,
            None => writeln!(f, "runtime config: none ({})", m.config.media_type)?,
        }
        for v in &self.verdicts {
            if v.loads {
                writeln!(f, "{}: loads ({})", v.consumer, v.why)?;
            } else {
                writeln!(f, "{}: does NOT load: {}", v.consumer, v.why)?;
            }
        }
        if self.verdicts.iter().any(|v| !v.loads) {
            writeln!(
                f,
                "fix: re-push the module with `wasmctl push REF FILTER.wasm` (format solo, two layers), which Istio and Envoy Gateway load"
            )?;
        }
        Ok(())
    }
}

/// Check `username`/`password` against the registry's `/v2/` (Basic, or a token from the Bearer
/// realm it names), then store them in `file` (default `~/.docker/config.json`).
pub async fn login(
    registry: &str,
    username: &str,
    password: &str,
    opts: &Options,
) -> Result<PathBuf> {
    let host = auth::normalize_host(registry);
    let file = opts.credentials_file().ok_or_else(|| {
        Error::Usage(
            "HOME is not set: pass --registry-config FILE to say where to store credentials"
                .to_string(),
        )
    })?;
    let scheme = if opts.plain_http { "http" } else { "https" };
    let http = reqwest::Client::builder()
        .danger_accept_invalid_certs(opts.insecure)
        .connect_timeout(Duration::from_secs(10))
        .timeout(Duration::from_secs(60))
        .user_agent(concat!("wasmctl/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| Error::Usage(format!("cannot set up the HTTP client: {e}")))?;
    let tried = format!("user {username:?} (from --password-stdin)");
    let unreachable = |e: reqwest::Error| Error::Unreachable {
        registry: host.clone(),
        scheme,
        reason: error_chain(&e),
        hint: if scheme == "https" {
            " (is it running? if it serves plain HTTP, pass --plain-http; for a self-signed certificate, --insecure)".to_string()
        } else {
            " (is it running on that address?)".to_string()
        },
    };
    let refused = |status: u16| Error::Unauthorized {
        registry: host.clone(),
        operation: "login",
        reference: format!("{scheme}://{host}/v2/"),
        tried: format!("it refused {tried} (HTTP {status})"),
    };
    let url = format!("{scheme}://{host}/v2/");
    let res = http
        .get(&url)
        .basic_auth(username, Some(password))
        .send()
        .await
        .map_err(unreachable)?;
    let status = res.status().as_u16();
    if status != 200 {
        let challenge = res
            .headers()
            .get(reqwest::header::WWW_AUTHENTICATE)
            .and_then(|h| h.to_str().ok())
            .unwrap_or("")
            .to_string();
        if status != 401 || !challenge.to_ascii_lowercase().starts_with("bearer") {
            return Err(refused(status));
        }
        let param = |name: &str| -> Option<String> {
            let key = format!("{name}=\"");
            let start = challenge.find(&key)? + key.len();
            let end = challenge[start..].find('"')? + start;
            Some(challenge[start..end].to_string())
        };
        let realm = param("realm").ok_or_else(|| refused(status))?;
        let mut query = vec![("account", username.to_string())];
        if let Some(service) = param("service") {
            query.push(("service", service));
        }
        let token = http
            .get(&realm)
            .query(&query)
            .basic_auth(username, Some(password))
            .send()
            .await
            .map_err(unreachable)?;
        if !token.status().is_success() {
            return Err(Error::TokenRefused {
                registry: host.clone(),
                reference: url,
                reason: format!("HTTP {} from {realm}", token.status().as_u16()),
                tried,
            });
        }
    }
    auth::store(&file, &host, username, password)?;
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_comma_tags() {
        assert_eq!(
            split_tags("127.0.0.1:5000/a/b:v1,latest"),
            (
                "127.0.0.1:5000/a/b:v1".to_string(),
                vec!["latest".to_string()]
            )
        );
        assert_eq!(
            split_tags("127.0.0.1:5000/a:v1"),
            ("127.0.0.1:5000/a:v1".to_string(), vec![])
        );
    }

    #[test]
    fn pins_by_digest_and_refuses_bad_references() {
        let r = parse_reference("oci://127.0.0.1:5000/f/h:v1").unwrap();
        assert_eq!(pinned(&r, "sha256:ab"), "127.0.0.1:5000/f/h@sha256:ab");
        let e = parse_reference("127.0.0.1:5000/Bad Name")
            .unwrap_err()
            .to_string();
        assert!(e.contains("invalid image reference"), "{e}");
    }
}
