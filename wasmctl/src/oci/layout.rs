//! Wasm image layouts: building the manifest and blobs of each push format, recognising the
//! layout of a pulled manifest, and judging whether Istio and Envoy Gateway load it. Pure: no
//! network, so every rule is unit-tested.
//!
//! ```
//! use std::collections::BTreeMap;
//! use wasmctl::{oci::runtime_config::RuntimeConfig, oci::layout::{self, Format, Layout}, module::tests_support};
//!
//! let wasm = tests_support::module_with_exports(&["proxy_abi_version_0_2_1"]);
//! let config = RuntimeConfig::generated(vec!["proxy_abi_version_0_2_1".into()], vec![]);
//! let image = layout::build(Format::Solo, &wasm, "filter.wasm", &config, &BTreeMap::new()).unwrap();
//! // The config blob is layer 0 too, the module layer 1: the layout Istio loads.
//! assert_eq!(image.manifest.layers.len(), 2);
//! assert_eq!(image.manifest.layers[0].digest, image.manifest.config.digest);
//! let found = layout::locate(&image.manifest).unwrap();
//! assert_eq!(found.layout, Layout::Solo { layers: 2 });
//! assert!(layout::istio_verdict(&image.manifest, None).loads);
//! ```

use crate::error::{Error, Result};
use crate::module;
use crate::oci::media;
use crate::oci::runtime_config::RuntimeConfig;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use std::collections::BTreeMap;
use std::fmt;
use std::io::Read;

/// Largest module Istio's and Envoy Gateway's fetchers accept (256 MiB); pull's default cap.
pub const DEFAULT_MAX_SIZE: u64 = 256 * 1024 * 1024;

/// A content descriptor: media type, digest, size, annotations.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    /// The blob's media type.
    pub media_type: String,
    /// `sha256:<hex>`.
    pub digest: String,
    /// Size in bytes.
    pub size: u64,
    /// Annotations (a layer's title, ...).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// An OCI image manifest or a Docker schema 2 manifest (same shape).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    /// Always 2.
    pub schema_version: u32,
    /// The manifest's media type, when it states one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    /// The artifact type, when it states one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact_type: Option<String>,
    /// The config blob.
    pub config: Descriptor,
    /// The layers, in order.
    pub layers: Vec<Descriptor>,
    /// Manifest annotations.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

impl Manifest {
    /// Parse manifest JSON, refusing image indexes and schema 1 with a message that says so.
    pub fn parse(bytes: &[u8]) -> std::result::Result<Manifest, String> {
        let v: serde_json::Value =
            serde_json::from_slice(bytes).map_err(|e| format!("manifest is not JSON: {e}"))?;
        let media_type = v.get("mediaType").and_then(|m| m.as_str()).unwrap_or("");
        if v.get("manifests").is_some()
            || media_type == media::OCI_INDEX
            || media_type == media::DOCKER_MANIFEST_LIST
        {
            return Err(
                "it is an image index (a multi-platform list); a wasm image is a single manifest: pull one of its manifests by digest".to_string(),
            );
        }
        if v.get("schemaVersion").and_then(|s| s.as_u64()) != Some(2) {
            return Err(
                "manifest schemaVersion is not 2 (Docker schema 1 is not supported)".to_string(),
            );
        }
        serde_json::from_value(v).map_err(|e| format!("malformed manifest: {e}"))
    }

    /// The manifest's canonical bytes as pushed.
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }
}

/// `sha256:<hex>` of `bytes`.
pub fn sha256_digest(bytes: &[u8]) -> String {
    format!("sha256:{:x}", Sha256::digest(bytes))
}

/// Hex sha256 of `bytes` (a module file's name and the `sha256` Istio and Envoy check).
pub fn sha256_hex(bytes: &[u8]) -> String {
    format!("{:x}", Sha256::digest(bytes))
}

/// The layout `wasmctl push` writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Config blob as manifest config and as layer 0, the module as layer 1 (Istio, Envoy Gateway).
    Solo,
    /// One tar.gz layer holding `plugin.wasm`, annotation `module.wasm.image/variant: compat`.
    Compat,
    /// CNCF TAG Runtime artifact: `application/vnd.wasm.config.v0+json` + `application/wasm`.
    Cncf,
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Format::Solo => "solo",
            Format::Compat => "compat",
            Format::Cncf => "cncf",
        })
    }
}

/// One blob to upload.
#[derive(Debug, Clone)]
pub struct Blob {
    /// Its descriptor.
    pub descriptor: Descriptor,
    /// Its bytes.
    pub data: Bytes,
}

/// A built image: manifest, its bytes and digest, and the distinct blobs it references.
#[derive(Debug, Clone)]
pub struct BuiltImage {
    /// The manifest.
    pub manifest: Manifest,
    /// The manifest bytes that are pushed (their sha256 is [`BuiltImage::digest`]).
    pub manifest_json: Vec<u8>,
    /// The manifest digest.
    pub digest: String,
    /// Distinct blobs, config first.
    pub blobs: Vec<Blob>,
}

fn descriptor(media_type: &str, data: &[u8], title: Option<&str>) -> Descriptor {
    let mut annotations = BTreeMap::new();
    if let Some(t) = title {
        annotations.insert(media::ANNOTATION_TITLE.to_string(), t.to_string());
    }
    Descriptor {
        media_type: media_type.to_string(),
        digest: sha256_digest(data),
        size: data.len() as u64,
        annotations,
    }
}

/// Build the manifest and blobs of `module` in `format`. `title` is the module's file name as
/// recorded in the title annotation (a file name only: never used to choose a path on pull).
pub fn build(
    format: Format,
    module: &[u8],
    title: &str,
    config: &RuntimeConfig,
    annotations: &BTreeMap<String, String>,
) -> Result<BuiltImage> {
    let module = Bytes::copy_from_slice(module);
    let config_json = Bytes::from(config.to_json());
    let mut manifest_annotations = BTreeMap::new();
    manifest_annotations.insert(
        media::ANNOTATION_RUNTIME_TYPE.to_string(),
        config.runtime_type.clone(),
    );
    if !config.abi_versions.is_empty() {
        manifest_annotations.insert(
            media::ANNOTATION_RUNTIME_ABI.to_string(),
            config.abi_versions.join(","),
        );
    }
    if !config.config.root_ids.is_empty() {
        manifest_annotations.insert(
            media::ANNOTATION_RUNTIME_ROOT_IDS.to_string(),
            config.config.root_ids.join(","),
        );
    }
    let (config_desc, layers, blobs) = match format {
        Format::Solo => {
            let cfg = descriptor(media::SOLO_CONFIG, &config_json, None);
            let layer0 = descriptor(
                media::SOLO_CONFIG,
                &config_json,
                Some(media::RUNTIME_CONFIG_FILE_NAME),
            );
            let layer1 = descriptor(media::SOLO_WASM_LAYER, &module, Some(title));
            let blobs = vec![
                Blob {
                    descriptor: cfg.clone(),
                    data: config_json,
                },
                Blob {
                    descriptor: layer1.clone(),
                    data: module,
                },
            ];
            (cfg, vec![layer0, layer1], blobs)
        }
        Format::Compat => {
            let (targz, tar_digest) = compat_layer(&module, &config_json)?;
            let image_config = serde_json::json!({
                "architecture": "wasm",
                "os": "wasip1",
                "config": {},
                "rootfs": {"type": "layers", "diff_ids": [tar_digest]},
            });
            let image_config = Bytes::from(serde_json::to_vec(&image_config).unwrap_or_default());
            let cfg = descriptor(media::OCI_IMAGE_CONFIG, &image_config, None);
            let layer = descriptor(
                media::OCI_LAYER_TAR_GZIP,
                &targz,
                Some(media::COMPAT_ARCHIVE_NAME),
            );
            manifest_annotations.insert(
                media::ANNOTATION_VARIANT.to_string(),
                media::VARIANT_COMPAT.to_string(),
            );
            let blobs = vec![
                Blob {
                    descriptor: cfg.clone(),
                    data: image_config,
                },
                Blob {
                    descriptor: layer.clone(),
                    data: Bytes::from(targz),
                },
            ];
            (cfg, vec![layer], blobs)
        }
        Format::Cncf => {
            let layer = descriptor(media::CNCF_WASM_LAYER, &module, Some(title));
            let cncf_config = serde_json::json!({
                "architecture": "wasm",
                "os": "wasip1",
                "layerDigests": [layer.digest],
            });
            let cncf_config = Bytes::from(serde_json::to_vec(&cncf_config).unwrap_or_default());
            let cfg = descriptor(media::CNCF_CONFIG, &cncf_config, None);
            let blobs = vec![
                Blob {
                    descriptor: cfg.clone(),
                    data: cncf_config,
                },
                Blob {
                    descriptor: layer.clone(),
                    data: module,
                },
            ];
            (cfg, vec![layer], blobs)
        }
    };
    manifest_annotations.extend(annotations.iter().map(|(k, v)| (k.clone(), v.clone())));
    let manifest = Manifest {
        schema_version: 2,
        media_type: Some(media::OCI_MANIFEST.to_string()),
        artifact_type: None,
        config: config_desc,
        layers,
        annotations: manifest_annotations,
    };
    let manifest_json = manifest.to_json();
    let digest = sha256_digest(&manifest_json);
    Ok(BuiltImage {
        manifest,
        manifest_json,
        digest,
        blobs,
    })
}

/// The compat layer: a gzip tar holding `plugin.wasm` and `runtime-config.json`, reproducible
/// (fixed mtime, owner and mode). Returns the tar.gz and the digest of the uncompressed tar.
fn compat_layer(module: &[u8], config_json: &[u8]) -> Result<(Vec<u8>, String)> {
    let io = |e: std::io::Error| Error::Usage(format!("cannot build the compat layer: {e}"));
    let mut tar = tar::Builder::new(Vec::new());
    for (name, data) in [
        (media::COMPAT_FILE_NAME, module),
        (media::RUNTIME_CONFIG_FILE_NAME, config_json),
    ] {
        let mut header = tar::Header::new_ustar();
        header.set_path(name).map_err(io)?;
        header.set_size(data.len() as u64);
        header.set_mode(0o644);
        header.set_mtime(0);
        header.set_uid(0);
        header.set_gid(0);
        header.set_cksum();
        tar.append(&header, data).map_err(io)?;
    }
    let tar = tar.into_inner().map_err(io)?;
    let tar_digest = sha256_digest(&tar);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    std::io::Write::write_all(&mut gz, &tar).map_err(io)?;
    Ok((gz.finish().map_err(io)?, tar_digest))
}

/// Find `plugin.wasm` in a compat tar.gz layer, reading at most `max` bytes of it. Entry names
/// are only compared, never used as paths. `Ok(None)` when the archive has no `plugin.wasm`.
pub fn extract_compat(targz: &[u8], max: u64) -> std::result::Result<Option<Vec<u8>>, String> {
    let gz = flate2::read::GzDecoder::new(targz);
    // Bound decompression: a tar holding a module of `max` bytes is barely larger.
    let mut archive = tar::Archive::new(gz.take(max.saturating_add(1024 * 1024)));
    let entries = archive
        .entries()
        .map_err(|e| format!("not a tar.gz archive: {e}"))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| format!("not a tar.gz archive: {e}"))?;
        let is_plugin = entry
            .path()
            .ok()
            .and_then(|p| p.file_name().map(|n| n == media::COMPAT_FILE_NAME))
            .unwrap_or(false);
        if !is_plugin || entry.header().entry_type().is_dir() {
            continue;
        }
        let size = entry.size();
        if size > max {
            return Err(format!(
                "{} in the archive is {size} bytes, over the {max}-byte cap",
                media::COMPAT_FILE_NAME
            ));
        }
        let mut out = Vec::with_capacity(size as usize);
        entry
            .read_to_end(&mut out)
            .map_err(|e| format!("cannot read {}: {e}", media::COMPAT_FILE_NAME))?;
        return Ok(Some(out));
    }
    Ok(None)
}

/// The layout a pulled manifest is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// `application/vnd.module.wasm.content.layer.v1+wasm` among `layers` layers (2: what Istio
    /// loads; 1: what a plain `oras push` makes).
    Solo {
        /// How many layers the manifest has.
        layers: usize,
    },
    /// A tar.gz last layer holding `plugin.wasm`; `docker` when the manifest is Docker schema 2.
    Compat {
        /// Docker schema 2 manifest with a Docker layer.
        docker: bool,
    },
    /// CNCF wasm artifact (`application/wasm`).
    Cncf,
    /// The older `wasm-to-oci` artifact (`application/vnd.wasm.content.layer.v1+wasm`).
    WasmToOci,
}

impl fmt::Display for Layout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Layout::Solo { layers: 2 } => f.write_str("solo (two layers: config, module)"),
            Layout::Solo { layers: 1 } => {
                f.write_str("solo (one layer: module only, as plain `oras push` makes)")
            }
            Layout::Solo { layers } => write!(f, "solo ({layers} layers)"),
            Layout::Compat { docker: false } => {
                f.write_str("compat (OCI tar.gz layer with plugin.wasm)")
            }
            Layout::Compat { docker: true } => {
                f.write_str("compat (Docker schema 2, tar.gz layer with plugin.wasm)")
            }
            Layout::Cncf => f.write_str("cncf (application/wasm)"),
            Layout::WasmToOci => {
                f.write_str("wasm-to-oci (application/vnd.wasm.content.layer.v1+wasm)")
            }
        }
    }
}

/// Where the module is in a manifest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Located {
    /// The layout.
    pub layout: Layout,
    /// Index of the layer holding the module.
    pub layer: usize,
    /// True when the layer is a tar.gz holding `plugin.wasm`, false for a raw module.
    pub tar_gz: bool,
}

fn is_raw_wasm(media_type: &str) -> bool {
    [
        media::SOLO_WASM_LAYER,
        media::CNCF_WASM_LAYER,
        media::WASM_TO_OCI_LAYER,
    ]
    .contains(&media_type)
}

fn layer_list(m: &Manifest) -> String {
    if m.layers.is_empty() {
        return "no layers".to_string();
    }
    let types: Vec<String> = m
        .layers
        .iter()
        .enumerate()
        .map(|(i, l)| format!("{i}: {}", l.media_type))
        .collect();
    format!("layers [{}]", types.join(", "))
}

/// Find the module in a manifest, in any layout pull accepts. An image Istio's fetcher loads is
/// read from the layer Istio reads, so the agent and a `WasmPlugin` deliver the same module;
/// other images from their one raw wasm layer, else a last tar.gz layer.
///
/// A tar.gz layer is located on the assumption that it holds `plugin.wasm`; only its content
/// tells. When it does not, the module is where [`locate_without_plugin`] says.
pub fn locate(m: &Manifest) -> std::result::Result<Located, String> {
    if let Some(found) = istio_layer(m) {
        return Ok(found);
    }
    if let Some(found) = raw_layer(m)? {
        return Ok(found);
    }
    if let Some(last) = m.layers.last() {
        let docker = m.media_type.as_deref() == Some(media::DOCKER_MANIFEST);
        if last.media_type == media::OCI_LAYER_TAR_GZIP
            || last.media_type == media::DOCKER_LAYER_TAR_GZIP
        {
            return Ok(Located {
                layout: Layout::Compat { docker },
                layer: m.layers.len() - 1,
                tar_gz: true,
            });
        }
    }
    Err(format!(
        "no wasm layer ({}); expected a layer of type {}, {}, or a last layer {} holding {}",
        layer_list(m),
        media::SOLO_WASM_LAYER,
        media::CNCF_WASM_LAYER,
        media::OCI_LAYER_TAR_GZIP,
        media::COMPAT_FILE_NAME
    ))
}

/// Where the module is when the tar.gz layer [`locate`] found holds no `plugin.wasm` (or is not
/// a readable tar.gz). Istio's fetcher then tries its oci variant: of an OCI manifest with
/// exactly two layers, the first solo wasm layer, so pull reads that one too. An image Istio
/// then refuses (a Docker manifest, more or fewer than two layers, no solo wasm layer) is read,
/// as [`locate`] reads the images Istio does not load, from its one raw wasm layer. `Err` says
/// why there is nothing to read instead, naming the layers.
pub fn locate_without_plugin(m: &Manifest) -> std::result::Result<Located, String> {
    if let Some(layer) = oci_variant_layer(m) {
        return Ok(Located {
            layout: Layout::Solo { layers: 2 },
            layer,
            tar_gz: false,
        });
    }
    raw_layer(m)?.ok_or_else(|| {
        format!(
            "no wasm layer to read instead ({}; Istio's oci variant needs exactly two layers, one of type {})",
            layer_list(m),
            media::SOLO_WASM_LAYER
        )
    })
}

/// The image's one raw wasm layer (solo, CNCF or wasm-to-oci type); `Err` when it has several.
fn raw_layer(m: &Manifest) -> std::result::Result<Option<Located>, String> {
    let raw: Vec<usize> = (0..m.layers.len())
        .filter(|&i| is_raw_wasm(&m.layers[i].media_type))
        .collect();
    match raw.as_slice() {
        [] => Ok(None),
        [i] => {
            let layout = match m.layers[*i].media_type.as_str() {
                media::SOLO_WASM_LAYER => Layout::Solo {
                    layers: m.layers.len(),
                },
                media::CNCF_WASM_LAYER => Layout::Cncf,
                _ => Layout::WasmToOci,
            };
            Ok(Some(Located {
                layout,
                layer: *i,
                tar_gz: false,
            }))
        }
        many => Err(format!(
            "{} wasm layers ({}): ambiguous, which one is the filter?",
            many.len(),
            layer_list(m)
        )),
    }
}

/// The layer Istio's fetcher (`pkg/wasm/imagefetcher.go`) reads the module from, when it loads
/// the image (a tar.gz layer taken to hold `plugin.wasm`): a Docker manifest's last layer; an
/// OCI tar+gzip last layer (the compat variant, tried first); else the oci variant's layer.
fn istio_layer(m: &Manifest) -> Option<Located> {
    let last = m.layers.len().checked_sub(1)?;
    let compat = |docker| Located {
        layout: Layout::Compat { docker },
        layer: last,
        tar_gz: true,
    };
    if m.media_type.as_deref() == Some(media::DOCKER_MANIFEST) {
        return (m.layers[last].media_type == media::DOCKER_LAYER_TAR_GZIP).then(|| compat(true));
    }
    if m.layers[last].media_type == media::OCI_LAYER_TAR_GZIP {
        return Some(compat(false));
    }
    let layer = oci_variant_layer(m)?;
    Some(Located {
        layout: Layout::Solo { layers: 2 },
        layer,
        tar_gz: false,
    })
}

/// Istio's oci variant (`extractOCIArtifactImage`), which it tries when the manifest is not
/// Docker's and the compat variant failed: exactly two layers, the module in the first one of
/// the solo wasm type.
fn oci_variant_layer(m: &Manifest) -> Option<usize> {
    if m.media_type.as_deref() == Some(media::DOCKER_MANIFEST) || m.layers.len() != 2 {
        return None;
    }
    m.layers
        .iter()
        .position(|l| l.media_type == media::SOLO_WASM_LAYER)
}

/// Whether one consumer loads an image, and why not when it does not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    /// Who: `Istio (WasmPlugin / agent)`, `Envoy Gateway`.
    pub consumer: &'static str,
    /// True when it loads.
    pub loads: bool,
    /// The rule that decided.
    pub why: String,
}

/// Whether Istio's fetcher (`pkg/wasm/imagefetcher.go`) loads this manifest: a Docker schema 2
/// manifest needs a last layer of Docker tar.gzip holding `plugin.wasm`; otherwise the compat
/// variant (last layer OCI tar+gzip holding `plugin.wasm`) is tried, then the solo variant
/// (exactly two layers, one of them the solo wasm layer). `compat_has_plugin` says whether the
/// tar.gz last layer holds `plugin.wasm` (`None`: not checked, assumed).
pub fn istio_verdict(m: &Manifest, compat_has_plugin: Option<bool>) -> Verdict {
    verdict("Istio (WasmPlugin / agent)", m, compat_has_plugin)
}

/// Whether Envoy Gateway's fetcher (`internal/wasm/imagefetcher.go`, derived from Istio's) loads
/// it: the same layer rules, and `plugin.wasm` is read through a 256 MiB limit.
pub fn envoy_gateway_verdict(m: &Manifest, compat_has_plugin: Option<bool>) -> Verdict {
    let mut v = verdict("Envoy Gateway", m, compat_has_plugin);
    if v.loads
        && let Some(last) = m.layers.last()
        && last.size > DEFAULT_MAX_SIZE
        && (last.media_type == media::OCI_LAYER_TAR_GZIP
            || last.media_type == media::DOCKER_LAYER_TAR_GZIP)
    {
        v.loads = false;
        v.why = format!(
            "the tar.gz layer is {} bytes; Envoy Gateway reads at most 256 MiB of it",
            last.size
        );
    }
    v
}

fn verdict(consumer: &'static str, m: &Manifest, compat_has_plugin: Option<bool>) -> Verdict {
    let plugin = |present: Option<bool>| -> std::result::Result<(), String> {
        match present {
            Some(false) => Err(format!(
                "{} not found in the archive",
                media::COMPAT_FILE_NAME
            )),
            _ => Ok(()),
        }
    };
    let last = m.layers.last();
    let done = |loads: bool, why: String| Verdict {
        consumer,
        loads,
        why,
    };
    if m.media_type.as_deref() == Some(media::DOCKER_MANIFEST) {
        return match last {
            None => done(
                false,
                "Docker manifest: number of layers must be greater than zero".into(),
            ),
            Some(l) if l.media_type != media::DOCKER_LAYER_TAR_GZIP => done(
                false,
                format!(
                    "Docker manifest: last layer has media type {} (expect {})",
                    l.media_type,
                    media::DOCKER_LAYER_TAR_GZIP
                ),
            ),
            Some(_) => match plugin(compat_has_plugin) {
                Ok(()) => done(
                    true,
                    "Docker compat image: last layer is a tar.gz holding plugin.wasm".into(),
                ),
                Err(e) => done(false, format!("Docker manifest: {e}")),
            },
        };
    }
    let compat = match last {
        None => Err("number of layers must be greater than zero".to_string()),
        Some(l) if l.media_type != media::OCI_LAYER_TAR_GZIP => Err(format!(
            "invalid media type {} (expect {})",
            l.media_type,
            media::OCI_LAYER_TAR_GZIP
        )),
        Some(_) => plugin(compat_has_plugin),
    };
    if compat.is_ok() {
        return done(
            true,
            "compat variant: last layer is an OCI tar+gzip holding plugin.wasm".into(),
        );
    }
    let oci = if m.layers.len() != 2 {
        Err(format!(
            "number of layers must be 2 but got {}",
            m.layers.len()
        ))
    } else if !m
        .layers
        .iter()
        .any(|l| l.media_type == media::SOLO_WASM_LAYER)
    {
        Err(format!(
            "could not find the layer of type {}",
            media::SOLO_WASM_LAYER
        ))
    } else {
        Ok(())
    };
    match (compat, oci) {
        (_, Ok(())) => done(
            true,
            "oci variant: two layers, one of them the wasm layer".into(),
        ),
        (Err(c), Err(o)) => done(
            false,
            format!("not the compat variant ({c}); not the oci variant ({o})"),
        ),
        (Ok(()), Err(_)) => done(true, String::new()),
    }
}

/// Check that `bytes` (from `what` of `reference`) are a wasm module: the magic is enough here,
/// the module is not compiled.
pub fn require_magic(bytes: &[u8], reference: &str, what: &str) -> Result<()> {
    if module::has_magic(bytes) {
        Ok(())
    } else {
        Err(Error::NotWasmBytes {
            reference: reference.to_string(),
            what: what.to_string(),
            head: module::head_escaped(bytes),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::module::tests_support::module_with_exports;

    fn cfg() -> RuntimeConfig {
        RuntimeConfig::generated(vec!["proxy_abi_version_0_2_1".into()], vec!["root".into()])
    }

    fn wasm() -> Vec<u8> {
        module_with_exports(&["proxy_abi_version_0_2_1"])
    }

    #[test]
    fn solo_is_two_layers_config_first_with_runtime_annotations() {
        let img = build(Format::Solo, &wasm(), "f.wasm", &cfg(), &BTreeMap::new()).unwrap();
        let m = &img.manifest;
        assert_eq!(m.config.media_type, media::SOLO_CONFIG);
        assert_eq!(m.layers[0].digest, m.config.digest);
        assert_eq!(
            m.layers[0].annotations[media::ANNOTATION_TITLE],
            "runtime-config.json"
        );
        assert_eq!(m.layers[1].media_type, media::SOLO_WASM_LAYER);
        assert_eq!(m.layers[1].annotations[media::ANNOTATION_TITLE], "f.wasm");
        assert_eq!(m.annotations[media::ANNOTATION_RUNTIME_TYPE], "envoy_proxy");
        assert_eq!(
            m.annotations[media::ANNOTATION_RUNTIME_ABI],
            "proxy_abi_version_0_2_1"
        );
        assert_eq!(m.annotations[media::ANNOTATION_RUNTIME_ROOT_IDS], "root");
        assert_eq!(img.blobs.len(), 2, "config uploaded once");
        assert_eq!(img.digest, sha256_digest(&img.manifest_json));
        assert_eq!(Manifest::parse(&img.manifest_json).unwrap(), *m);
        assert!(istio_verdict(m, None).loads && envoy_gateway_verdict(m, None).loads);
    }

    #[test]
    fn compat_round_trips_plugin_wasm_and_is_reproducible() {
        let a = build(Format::Compat, &wasm(), "f.wasm", &cfg(), &BTreeMap::new()).unwrap();
        let b = build(Format::Compat, &wasm(), "f.wasm", &cfg(), &BTreeMap::new()).unwrap();
        assert_eq!(a.digest, b.digest);
        let m = &a.manifest;
        assert_eq!(m.annotations[media::ANNOTATION_VARIANT], "compat");
        let found = locate(m).unwrap();
        assert_eq!(found.layout, Layout::Compat { docker: false });
        let extracted = extract_compat(&a.blobs[1].data, DEFAULT_MAX_SIZE)
            .unwrap()
            .unwrap();
        assert_eq!(extracted, wasm());
        assert!(istio_verdict(m, Some(true)).loads);
        assert!(!istio_verdict(m, Some(false)).loads);
    }

    #[test]
    fn one_layer_oras_image_is_pullable_but_istio_refuses_it() {
        let mut img = build(Format::Solo, &wasm(), "f.wasm", &cfg(), &BTreeMap::new()).unwrap();
        img.manifest.layers.remove(0);
        let found = locate(&img.manifest).unwrap();
        assert_eq!(
            found,
            Located {
                layout: Layout::Solo { layers: 1 },
                layer: 0,
                tar_gz: false
            }
        );
        let v = istio_verdict(&img.manifest, None);
        assert!(!v.loads);
        assert!(
            v.why.contains("number of layers must be 2 but got 1"),
            "{}",
            v.why
        );
    }

    #[test]
    fn cncf_is_pullable_and_not_loaded_by_istio() {
        let img = build(Format::Cncf, &wasm(), "f.wasm", &cfg(), &BTreeMap::new()).unwrap();
        assert_eq!(img.manifest.config.media_type, media::CNCF_CONFIG);
        assert_eq!(locate(&img.manifest).unwrap().layout, Layout::Cncf);
        let v = istio_verdict(&img.manifest, None);
        assert!(!v.loads && v.why.contains("application/wasm"), "{}", v.why);
    }

    #[test]
    fn refuses_indexes_and_foreign_images_naming_their_layers() {
        let e = Manifest::parse(br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[]}"#).unwrap_err();
        assert!(e.contains("image index"), "{e}");
        let mut img = build(Format::Cncf, &wasm(), "f.wasm", &cfg(), &BTreeMap::new()).unwrap();
        img.manifest.layers[0].media_type = "application/octet-stream".into();
        let e = locate(&img.manifest).unwrap_err();
        assert!(e.contains("0: application/octet-stream"), "{e}");
    }

    #[test]
    fn pull_reads_the_layer_istio_reads() {
        let mut img = build(Format::Solo, &wasm(), "f.wasm", &cfg(), &BTreeMap::new()).unwrap();
        // Two wasm layers: Istio takes the solo one, and so does pull.
        img.manifest.layers[0].media_type = media::CNCF_WASM_LAYER.into();
        assert!(istio_verdict(&img.manifest, None).loads);
        assert_eq!(locate(&img.manifest).unwrap().layer, 1);
        // A wasm layer and a last tar.gz: Istio reads plugin.wasm from the tar.gz first.
        img.manifest.layers[0].media_type = media::SOLO_WASM_LAYER.into();
        img.manifest.layers[1].media_type = media::OCI_LAYER_TAR_GZIP.into();
        let found = locate(&img.manifest).unwrap();
        assert_eq!((found.layer, found.tar_gz), (1, true));
        // Istio refuses three layers; pull still reads the one wasm layer.
        img.manifest.layers[1].media_type = media::SOLO_CONFIG.into();
        img.manifest.layers.push(img.manifest.layers[1].clone());
        assert!(!istio_verdict(&img.manifest, None).loads);
        assert_eq!(locate(&img.manifest).unwrap().layer, 0);
    }

    /// A gzip tar holding `files`.
    fn targz(files: &[(&str, &[u8])]) -> Vec<u8> {
        let mut tar = tar::Builder::new(Vec::new());
        for (name, data) in files {
            let mut header = tar::Header::new_ustar();
            header.set_path(name).unwrap();
            header.set_size(data.len() as u64);
            header.set_mode(0o644);
            header.set_cksum();
            tar.append(&header, *data).unwrap();
        }
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut gz, &tar.into_inner().unwrap()).unwrap();
        gz.finish().unwrap()
    }

    /// An OCI manifest (or a Docker one) with these layers, each a descriptor of its bytes.
    fn manifest_of(docker: bool, layers: &[(&str, &[u8])]) -> Manifest {
        Manifest {
            schema_version: 2,
            media_type: Some(
                if docker {
                    media::DOCKER_MANIFEST
                } else {
                    media::OCI_MANIFEST
                }
                .into(),
            ),
            artifact_type: None,
            config: descriptor(media::SOLO_CONFIG, &cfg().to_json(), None),
            layers: layers
                .iter()
                .map(|(media_type, data)| descriptor(media_type, data, None))
                .collect(),
            annotations: BTreeMap::new(),
        }
    }

    /// What pull reads: the located layer; a tar.gz's `plugin.wasm`, or where
    /// `locate_without_plugin` says when the archive has none. (layer, bytes) or the error.
    fn pulled(m: &Manifest, blobs: &[&[u8]]) -> std::result::Result<(usize, Vec<u8>), String> {
        let found = locate(m)?;
        if !found.tar_gz {
            return Ok((found.layer, blobs[found.layer].to_vec()));
        }
        match extract_compat(blobs[found.layer], DEFAULT_MAX_SIZE) {
            Ok(Some(module)) => Ok((found.layer, module)),
            _ => locate_without_plugin(m).map(|l| (l.layer, blobs[l.layer].to_vec())),
        }
    }

    #[test]
    fn a_tar_gz_without_plugin_wasm_beside_a_solo_layer_is_read_as_istio_reads_it() {
        let wasm = wasm();
        let other = module_with_exports(&["proxy_abi_version_0_2_0"]);
        let config = cfg().to_json();
        let no_plugin = targz(&[("runtime-config.json", &config)]);
        let with_plugin = targz(&[("plugin.wasm", &other)]);
        assert_eq!(extract_compat(&no_plugin, DEFAULT_MAX_SIZE), Ok(None));
        let (solo, oci_tar, docker_tar) = (
            media::SOLO_WASM_LAYER,
            media::OCI_LAYER_TAR_GZIP,
            media::DOCKER_LAYER_TAR_GZIP,
        );

        // Two layers, the wasm and a tar.gz without plugin.wasm: Istio's compat variant fails,
        // its oci variant reads the wasm layer. Pull reads it too.
        let m = manifest_of(false, &[(solo, &wasm), (oci_tar, &no_plugin)]);
        assert_eq!(locate(&m).unwrap().layer, 1, "the tar.gz is tried first");
        let instead = locate_without_plugin(&m).unwrap();
        assert_eq!(
            instead,
            Located {
                layout: Layout::Solo { layers: 2 },
                layer: 0,
                tar_gz: false
            }
        );
        assert_eq!(pulled(&m, &[&wasm, &no_plugin]), Ok((0, wasm.clone())));
        let v = istio_verdict(&m, Some(false));
        assert!(v.loads && v.why.contains("oci variant"), "{}", v.why);
        // A tar.gz that is no tar.gz at all fails Istio's compat variant the same way.
        assert!(extract_compat(b"not gzip", DEFAULT_MAX_SIZE).is_err());
        assert_eq!(pulled(&m, &[&wasm, b"not gzip"]), Ok((0, wasm.clone())));
        // With plugin.wasm in the archive, Istio takes it from there (compat first), so does pull.
        assert_eq!(pulled(&m, &[&wasm, &with_plugin]), Ok((1, other.clone())));

        // The tar.gz first, the wasm last: not the compat variant (last layer's type); the oci
        // variant reads the wasm layer, without looking into the archive.
        let m = manifest_of(false, &[(oci_tar, &no_plugin), (solo, &wasm)]);
        assert_eq!(
            locate(&m).unwrap(),
            Located {
                layout: Layout::Solo { layers: 2 },
                layer: 1,
                tar_gz: false
            }
        );
        assert!(istio_verdict(&m, None).loads);

        // Images Istio refuses when the archive has no plugin.wasm: pull reads their one raw wasm
        // layer, as it reads any image Istio refuses.
        // A Docker manifest: Istio reads its last layer only.
        let m = manifest_of(true, &[(solo, &wasm), (docker_tar, &no_plugin)]);
        assert_eq!(locate(&m).unwrap().layer, 1);
        assert!(istio_verdict(&m, Some(true)).loads);
        let v = istio_verdict(&m, Some(false));
        assert!(
            !v.loads && v.why.contains("plugin.wasm not found"),
            "{}",
            v.why
        );
        assert_eq!(pulled(&m, &[&wasm, &no_plugin]), Ok((0, wasm.clone())));
        // Three layers: not the oci variant.
        let m = manifest_of(
            false,
            &[
                (media::SOLO_CONFIG, &config),
                (solo, &wasm),
                (oci_tar, &no_plugin),
            ],
        );
        let v = istio_verdict(&m, Some(false));
        assert!(
            !v.loads && v.why.contains("must be 2 but got 3"),
            "{}",
            v.why
        );
        assert_eq!(
            pulled(&m, &[&config, &wasm, &no_plugin]),
            Ok((1, wasm.clone()))
        );

        // Nothing to read instead: the error names the layers and what is missing.
        let m = manifest_of(
            false,
            &[(media::SOLO_CONFIG, &config), (oci_tar, &no_plugin)],
        );
        assert!(!istio_verdict(&m, Some(false)).loads);
        let e = pulled(&m, &[&config, &no_plugin]).unwrap_err();
        for part in [
            "no wasm layer to read instead",
            "0: application/vnd.module.wasm.config.v1+json",
            "1: application/vnd.oci.image.layer.v1.tar+gzip",
            media::SOLO_WASM_LAYER,
        ] {
            assert!(e.contains(part), "{part:?} missing from: {e}");
        }
        let m = manifest_of(
            false,
            &[
                (media::CNCF_WASM_LAYER, &wasm),
                (solo, &wasm),
                (oci_tar, &no_plugin),
            ],
        );
        let e = pulled(&m, &[&wasm, &wasm, &no_plugin]).unwrap_err();
        assert!(
            e.contains("2 wasm layers") && e.contains("ambiguous"),
            "{e}"
        );
    }

    #[test]
    fn compat_extraction_ignores_paths_and_honours_the_cap() {
        let img = build(Format::Compat, &wasm(), "f.wasm", &cfg(), &BTreeMap::new()).unwrap();
        let e = extract_compat(&img.blobs[1].data, 4).unwrap_err();
        assert!(e.contains("over the 4-byte cap"), "{e}");
        assert!(extract_compat(b"not gzip", 100).is_err());
    }
}
