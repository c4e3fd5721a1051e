//! `wasmctl`: ship proxy-wasm filters through OCI registries in the layouts Istio and Envoy
//! Gateway load, and get them back from any layout others pushed.
//!
//! Where each concern lives:
//!
//! - [`oci`]: everything about images: references, credentials, layouts (solo, compat, cncf;
//!   Istio's and Envoy Gateway's layer rules), media types, the runtime config, the registry
//!   client (push, pull, inspect, login) and cosign signatures.
//! - [`ops`]: what a long-running process needs to be operated (logs, metrics, the status
//!   server, time), shared by the agent and the controller.
//! - [`module`]: is a file a valid wasm module, which proxy-wasm ABI does it export.
//! - [`render`]: `FilterDeployment` resources into Istio `EnvoyFilter`/`WasmPlugin`, workload
//!   volume patches and the node agent's image list.
//! - [`pipeline`]: the one way an image becomes a served module (resolve, verify the
//!   signature, fetch, check the parameters), used by `render`, the agent and the controller.
//! - [`agent`]: the node agent: keeps a directory of modules in step with an image list.
//! - [`controller`]: keeps `FilterDeployment`s in a cluster rendered, applied and reported.
//! - [`run`], [`bench`]: the harness commands (`wasmctl run`, `wasmctl bench`).
//! - [`new`], [`suite`], [`dev`]: a filter author's loop: a new project (`wasmctl new`), its
//!   scenarios as a suite (`wasmctl test`), a real Envoy that swaps in every rebuild
//!   (`wasmctl dev`); [`project`] is the project file they share.
//!
//! The agent and the controller share only [`oci`], [`ops`] and [`pipeline`], and the formats of
//! the two objects between them in [`render`] (the image list, [`render::node_report`]).
//!
//! A worked example, without a registry: build the image `wasmctl push` would upload, and check
//! that Istio's rules accept it.
//!
//! ```
//! use std::collections::BTreeMap;
//! use wasmctl::{module, oci::layout, oci::runtime_config::RuntimeConfig};
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
pub mod bench;
pub mod controller;
pub mod dev;
pub mod error;
pub mod fsutil;
pub mod module;
pub mod new;
pub mod oci;
pub mod ops;
pub mod pipeline;
pub mod project;
pub mod render;
pub mod run;
pub mod suite;

pub use error::{Error, Result};
