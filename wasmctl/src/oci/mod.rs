//! Images: how a filter travels through an OCI registry.
//!
//! - [`reference`]: image references, parsed and normalised as Docker does.
//! - [`auth`]: Docker-format credentials (`~/.docker/config.json`, `dockerconfigjson`).
//! - [`media`]: media types and annotation keys.
//! - [`runtime_config`]: the wasm runtime config (`type`, `abiVersions`, `rootIds`).
//! - [`layout`]: the solo, compat and cncf layouts; recognising a pulled one; Istio's and Envoy
//!   Gateway's layer rules.
//! - [`registry`]: push, pull, inspect, login against a registry (`oci-client`, rustls).
//! - [`sign`]: cosign-compatible signatures (sign, verify, keys).

pub mod auth;
pub mod layout;
pub mod media;
pub mod reference;
pub mod registry;
pub mod runtime_config;
pub mod sign;
