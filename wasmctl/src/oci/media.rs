//! Media types and annotation keys of wasm images, in one place.
//!
//! The layouts they make up (see [`crate::oci::layout`]):
//!
//! | layout | config | layers |
//! | --- | --- | --- |
//! | solo (two layers) | [`SOLO_CONFIG`] | [`SOLO_CONFIG`] (the config again), [`SOLO_WASM_LAYER`] |
//! | solo (one layer, plain `oras push`) | [`SOLO_CONFIG`] | [`SOLO_WASM_LAYER`] |
//! | compat | [`OCI_IMAGE_CONFIG`] | [`OCI_LAYER_TAR_GZIP`] holding [`COMPAT_FILE_NAME`] |
//! | cncf | [`CNCF_CONFIG`] | [`CNCF_WASM_LAYER`] |
//!
//! ```
//! assert_eq!(wasmctl::oci::media::SOLO_WASM_LAYER, "application/vnd.module.wasm.content.layer.v1+wasm");
//! ```

/// Config of a solo.io / Istio wasm image (the runtime config JSON).
pub const SOLO_CONFIG: &str = "application/vnd.module.wasm.config.v1+json";
/// The raw wasm module layer of a solo.io / Istio wasm image.
pub const SOLO_WASM_LAYER: &str = "application/vnd.module.wasm.content.layer.v1+wasm";
/// Config of the CNCF TAG Runtime wasm artifact.
pub const CNCF_CONFIG: &str = "application/vnd.wasm.config.v0+json";
/// The raw wasm module layer of the CNCF TAG Runtime wasm artifact.
pub const CNCF_WASM_LAYER: &str = "application/wasm";
/// The wasm layer of the older `wasm-to-oci` artifact (pull accepts it).
pub const WASM_TO_OCI_LAYER: &str = "application/vnd.wasm.content.layer.v1+wasm";
/// A gzip-compressed tar layer of an OCI image (the compat variant's layer).
pub const OCI_LAYER_TAR_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
/// A gzip-compressed tar layer of a Docker image (compat variant in a Docker manifest).
pub const DOCKER_LAYER_TAR_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
/// An OCI image config (the compat variant's config).
pub const OCI_IMAGE_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
/// An OCI image manifest.
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// An OCI image index (a list of manifests).
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// A Docker schema 2 image manifest.
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// A Docker schema 2 manifest list.
pub const DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
/// The manifest media types pull and inspect ask a registry for.
pub const ACCEPTED_MANIFESTS: &[&str] = &[
    OCI_MANIFEST,
    DOCKER_MANIFEST,
    OCI_INDEX,
    DOCKER_MANIFEST_LIST,
];

/// File name of the module inside a compat layer.
pub const COMPAT_FILE_NAME: &str = "plugin.wasm";
/// Title given to the compat layer (the name oras saves it under).
pub const COMPAT_ARCHIVE_NAME: &str = "plugin.tar.gz";
/// Title given to the runtime config when it is also a layer (solo layout).
pub const RUNTIME_CONFIG_FILE_NAME: &str = "runtime-config.json";

/// OCI annotation: a layer's file name (oras uses it as the output file name).
pub const ANNOTATION_TITLE: &str = "org.opencontainers.image.title";
/// OCI annotation: when the image was made (RFC 3339).
pub const ANNOTATION_CREATED: &str = "org.opencontainers.image.created";
/// Manifest annotation marking the compat variant.
pub const ANNOTATION_VARIANT: &str = "module.wasm.image/variant";
/// Value of [`ANNOTATION_VARIANT`] for the compat variant.
pub const VARIANT_COMPAT: &str = "compat";
/// Manifest annotation: the runtime the module targets (`envoy_proxy`).
pub const ANNOTATION_RUNTIME_TYPE: &str = "module.wasm.runtime/type";
/// Manifest annotation: the proxy-wasm ABI versions, comma-separated.
pub const ANNOTATION_RUNTIME_ABI: &str = "module.wasm.runtime/abi_version";
/// Manifest annotation: the root ids, comma-separated.
pub const ANNOTATION_RUNTIME_ROOT_IDS: &str = "module.wasm.runtime/root_ids";

/// The runtime config `type` for proxy-wasm modules run by Envoy.
pub const RUNTIME_TYPE_ENVOY: &str = "envoy_proxy";
