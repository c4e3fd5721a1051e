//! `wasmctl`: ship proxy-wasm filters through OCI registries in the layouts Istio and Envoy
//! Gateway load, and get them back from any layout others pushed.
//!
//! - [`agent`]: the node agent: keeps a directory of modules in step with an image list.
//! - [`bench`]: what a filter costs per request and per VM in the harness, and memory growth.
//! - [`module`]: is a file a valid wasm module, which proxy-wasm ABI does it export.
//! - [`config`]: the runtime config (`type`, `abiVersions`, `rootIds`).
//! - [`controller`]: keeps `FilterDeployment`s in a cluster rendered, applied and reported.
//! - [`layout`]: the solo, compat and cncf layouts; recognising a pulled one; Istio's and Envoy
//!   Gateway's layer rules.
//! - [`reference`]: image references, parsed and normalised as Docker does.
//! - [`registry`]: push, pull, inspect, login against a registry (`oci-client`, rustls).
//! - [`auth`]: Docker-format credentials (`~/.docker/config.json`, `dockerconfigjson`).
//! - [`media`]: media types and annotation keys.
//! - [`render`]: `FilterDeployment` resources into Istio `EnvoyFilter`/`WasmPlugin`, workload
//!   volume patches and the node agent's image list.
//!
//! A worked example, without a registry: build the image `wasmctl push` would upload, and check
//! that Istio's rules accept it.
//!
//! ```
//! use std::collections::BTreeMap;
//! use wasmctl::{config::RuntimeConfig, layout, module};
//!
//! let wasm = module::tests_support::module_with_exports(&["proxy_abi_version_0_2_1"]);
//! let summary = module::check(&wasm, "filter.wasm")?;
//! module::require_proxy_wasm(&summary, "filter.wasm")?;
//! let config = RuntimeConfig::generated(summary.abi_versions, vec!["my_root_id".into()]);
//! let image = layout::build(layout::Format::Solo, &wasm, "filter.wasm", &config, &BTreeMap::new())?;
//! assert!(layout::istio_verdict(&image.manifest, None).loads);
//! println!("would push manifest {}", image.digest);
//! # Ok::<(), wasmctl::Error>(())
//! ```

#![deny(missing_docs)]

pub mod agent;
pub mod auth;
pub mod bench;
pub mod config;
pub mod controller;
pub mod error;
pub mod fsutil;
pub mod layout;
pub mod media;
pub mod module;
pub mod reference;
pub mod registry;
pub mod render;
pub mod run;
pub mod sign;

pub use error::{Error, Result};
