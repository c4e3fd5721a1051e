//! The one way an image becomes a module this toolkit serves, shared by `wasmctl render`, the
//! node agent and the controller, so their signature policy cannot drift apart:
//!
//! 1. **resolve** the reference to the manifest digest it names now;
//! 2. **verify**, when a key is given, that this digest carries a signature made with it (the
//!    digest is taken from the verification, and exactly that digest is fetched: a tag moved in
//!    between is not);
//! 3. **fetch** the module in any layout [`registry::fetch`] reads (skipped when the caller
//!    holds the module of that digest already, or asks only for the digest), and check that it
//!    is WebAssembly exporting a proxy-wasm ABI version, as Envoy requires;
//! 4. **check** the parameters of each deployment using it: its `proxy_on_configure` runs in the
//!    harness with them, and a configuration the filter refuses fails here.
//!
//! A failure says at which [`Stage`] it stopped, so each caller reports it in its own terms
//! (the controller's `Ready` reasons, the agent's log, `render`'s error).

use crate::error::{Error, Result};
use crate::oci::registry::{self, Fetched, FetchedModule, Options};
use crate::render::{self, Source};
use p256::ecdsa::VerifyingKey;
use std::path::{Path, PathBuf};

/// What to do with an image.
#[derive(Clone, Copy)]
pub struct Request<'a> {
    /// The image reference (a tag or a digest).
    pub image: &'a str,
    /// Registry transport and credentials.
    pub opts: &'a Options,
    /// Verify the digest's signature with this key.
    pub key: Option<&'a VerifyingKey>,
    /// Fetch the module, or only resolve the digest.
    pub fetch: Option<Fetch<'a>>,
    /// Deployments whose parameters to check against the module (needs [`Request::fetch`] or
    /// [`Request::module`]).
    pub parameters: &'a [&'a Source],
    /// A module file to check the parameters against instead of the image's (`render
    /// --module`).
    pub module: Option<&'a Path>,
    /// Whether the parameters were accepted by the module of this manifest digest before (the
    /// controller remembers; the check is then skipped).
    pub checked_before: &'a (dyn Fn(&str) -> bool + Sync),
}

/// For [`Request::checked_before`]: never.
pub fn never(_: &str) -> bool {
    false
}

/// How to fetch the module.
#[derive(Clone, Copy, Default)]
pub struct Fetch<'a> {
    /// A manifest digest whose module the caller holds: when the image still names it, nothing
    /// but the manifest is requested. With [`Fetch::save`], it counts only while its file is
    /// in that directory.
    pub known: Option<&'a str>,
    /// Read the root ids of a solo image's runtime config too.
    pub runtime_config: bool,
    /// Write the module to `DIR/<digest>.wasm` (see [`module_file`]), atomically.
    pub save: Option<&'a Path>,
}

/// Where a failure happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// The reference, the registry, the manifest or the module's layers.
    Resolve,
    /// The signature (none, or none that verifies with the key).
    Verify,
    /// The module is no proxy-wasm module.
    Module,
    /// The filter refused a deployment's parameters.
    Parameters,
}

/// A failed [`prepare`].
#[derive(Debug)]
pub struct Failed {
    /// Where it stopped.
    pub stage: Stage,
    /// Why.
    pub error: Error,
}

impl std::fmt::Display for Failed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.error.fmt(f)
    }
}

impl From<Failed> for Error {
    fn from(f: Failed) -> Error {
        f.error
    }
}

/// What [`prepare`] found.
#[derive(Debug)]
pub struct Prepared {
    /// The manifest digest the image names.
    pub digest: String,
    /// The image pinned to it (`registry/repository@digest`).
    pub pinned: String,
    /// The module, when fetched and new (`None`: not asked for, or the known digest).
    pub module: Option<FetchedModule>,
    /// Its file, with [`Fetch::save`].
    pub file: Option<PathBuf>,
}

/// The file a module of manifest `digest` is saved as in `dir`.
pub fn module_file(dir: &Path, digest: &str) -> PathBuf {
    dir.join(format!("{}.wasm", digest.replace(':', "-")))
}

fn at(stage: Stage) -> impl FnOnce(Error) -> Failed {
    move |error| Failed { stage, error }
}

/// Resolve, verify, fetch and check `req.image` (see the module's documentation).
pub async fn prepare(req: &Request<'_>) -> std::result::Result<Prepared, Failed> {
    let reference = registry::parse_reference(req.image).map_err(at(Stage::Resolve))?;
    let verified;
    let target = match req.key {
        Some(key) => {
            // A registry that cannot be reached is a registry error, not a bad signature.
            let v = crate::oci::sign::verify(req.image, key, req.opts)
                .await
                .map_err(|error| Failed {
                    stage: match error {
                        Error::NotVerified { .. } | Error::Key { .. } => Stage::Verify,
                        _ => Stage::Resolve,
                    },
                    error,
                })?;
            verified = registry::pinned(&reference, &v.digest);
            verified.as_str()
        }
        None => req.image,
    };
    let Some(fetch) = req.fetch else {
        let digest = match req.key {
            Some(_) => target.rsplit('@').next().unwrap_or("").to_string(),
            None => {
                registry::inspect(req.image, req.opts)
                    .await
                    .map_err(at(Stage::Resolve))?
                    .digest
            }
        };
        let pinned = registry::pinned(&reference, &digest);
        if let Some(m) = req.module {
            check(req.parameters, m)?;
        }
        return Ok(Prepared {
            digest,
            pinned,
            module: None,
            file: None,
        });
    };
    let known = fetch
        .known
        .filter(|k| fetch.save.is_none_or(|dir| module_file(dir, k).is_file()));
    let fetched = registry::fetch(target, req.opts, known, fetch.runtime_config)
        .await
        .map_err(at(Stage::Resolve))?;
    let (digest, module) = match fetched {
        Fetched::Unchanged { digest } => (digest, None),
        Fetched::Module(m) => {
            let what = format!("{target}: {}", m.what);
            let summary = crate::module::check(&m.module, &what).map_err(at(Stage::Module))?;
            crate::module::require_proxy_wasm(&summary, &what).map_err(at(Stage::Module))?;
            (m.digest.clone(), Some(m))
        }
    };
    let file = match (fetch.save, &module) {
        (Some(dir), Some(m)) => {
            let path = module_file(dir, &digest);
            crate::fsutil::write_atomic(&path, &m.module, 0o644).map_err(at(Stage::Resolve))?;
            Some(path)
        }
        (Some(dir), None) => Some(module_file(dir, &digest)),
        (None, _) => None,
    };
    let checked = req.module.or(file.as_deref());
    if (req.checked_before)(&digest) {
        return Ok(Prepared {
            pinned: registry::pinned(&reference, &digest),
            digest,
            module,
            file,
        });
    }
    match checked {
        Some(m) => check(req.parameters, m)?,
        None if !req.parameters.is_empty() => {
            return Err(Failed {
                stage: Stage::Parameters,
                error: Error::Usage(format!(
                    "{}: the parameters need the module: save it (Fetch::save) or name one",
                    req.image
                )),
            });
        }
        None => {}
    }
    Ok(Prepared {
        pinned: registry::pinned(&reference, &digest),
        digest,
        module,
        file,
    })
}

/// Each deployment's `proxy_on_configure` with its parameters, off the async threads.
fn check(parameters: &[&Source], module: &Path) -> std::result::Result<(), Failed> {
    for s in parameters {
        let run = || render::check_parameters(s, module);
        let result = match tokio::runtime::Handle::try_current() {
            Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
                tokio::task::block_in_place(run)
            }
            _ => run(),
        };
        result.map_err(at(Stage::Parameters))?;
    }
    Ok(())
}

/// [`prepare`] for several images with the same key, in order, for `render`: each image once,
/// the parameters of every deployment using it checked against its module. Returns the images
/// pinned and (when fetched) the module sha256 by image.
pub async fn prepare_all(
    inputs: &render::Inputs,
    opts: &Options,
    key: Option<&VerifyingKey>,
    modules: Option<&Path>,
    module: Option<&Path>,
) -> Result<render::Resolved> {
    let mut resolved = render::Resolved::default();
    for image in render::images(inputs) {
        let using: Vec<&Source> = inputs
            .deployments
            .iter()
            .filter(|s| s.deployment.spec.filter.image == image)
            .collect();
        let req = Request {
            image: &image,
            opts,
            key,
            fetch: modules.map(|dir| Fetch {
                save: Some(dir),
                ..Fetch::default()
            }),
            parameters: &using,
            module,
            checked_before: &never,
        };
        let p = prepare(&req).await?;
        if let Some(file) = &p.file {
            let bytes = std::fs::read(file).map_err(|e| Error::io("cannot read", file, e))?;
            resolved
                .modules
                .insert(image.clone(), crate::oci::layout::sha256_hex(&bytes));
        }
        resolved.pinned.insert(image, p.pinned);
    }
    Ok(resolved)
}
