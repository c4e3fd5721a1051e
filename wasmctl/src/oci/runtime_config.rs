//! The runtime config of a wasm image (`application/vnd.module.wasm.config.v1+json`): which
//! runtime runs the module, which proxy-wasm ABI versions it speaks, which root ids it serves.
//!
//! ```
//! use wasmctl::oci::runtime_config::RuntimeConfig;
//! let c = RuntimeConfig::generated(vec!["proxy_abi_version_0_2_1".into()], vec!["my_root_id".into()]);
//! assert_eq!(
//!     String::from_utf8(c.to_json()).unwrap(),
//!     r#"{"type":"envoy_proxy","abiVersions":["proxy_abi_version_0_2_1"],"config":{"rootIds":["my_root_id"]}}"#
//! );
//! // Readers also accept the snake_case spelling some tools write.
//! let c = RuntimeConfig::parse(br#"{"type":"envoy_proxy","abi_versions":["v0"],"config":{"root_ids":["r"]}}"#).unwrap();
//! assert_eq!(c.config.root_ids, ["r"]);
//! ```

use crate::error::{Error, Result};
use crate::oci::media;
use serde::{Deserialize, Serialize};
use std::path::Path;

/// The runtime config JSON.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuntimeConfig {
    /// The runtime: `envoy_proxy` for proxy-wasm modules.
    #[serde(rename = "type")]
    pub runtime_type: String,
    /// The proxy-wasm ABI versions (`proxy_abi_version_0_2_1`, ...).
    #[serde(rename = "abiVersions", alias = "abi_versions", default)]
    pub abi_versions: Vec<String>,
    /// Runtime options.
    #[serde(default)]
    pub config: RuntimeOptions,
}

/// The `config` object of a runtime config.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuntimeOptions {
    /// The root ids the module serves.
    #[serde(rename = "rootIds", alias = "root_ids", default)]
    pub root_ids: Vec<String>,
}

impl RuntimeConfig {
    /// A config for an Envoy proxy-wasm module.
    pub fn generated(abi_versions: Vec<String>, root_ids: Vec<String>) -> Self {
        RuntimeConfig {
            runtime_type: media::RUNTIME_TYPE_ENVOY.to_string(),
            abi_versions,
            config: RuntimeOptions { root_ids },
        }
    }

    /// Parse the JSON of a runtime config.
    pub fn parse(bytes: &[u8]) -> std::result::Result<Self, String> {
        let c: RuntimeConfig = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
        if c.runtime_type.trim().is_empty() {
            return Err("\"type\" is empty (use \"envoy_proxy\")".to_string());
        }
        Ok(c)
    }

    /// Read and parse a runtime config file.
    pub fn load(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|e| Error::io("cannot read", path, e))?;
        RuntimeConfig::parse(&bytes).map_err(|reason| Error::InvalidRuntimeConfig {
            path: path.to_path_buf(),
            reason,
        })
    }

    /// The compact JSON that is pushed as the config blob.
    pub fn to_json(&self) -> Vec<u8> {
        // Serialising plain strings and vectors cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }
}
