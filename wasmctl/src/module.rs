//! Checks on WebAssembly modules that other parts of the toolkit reuse: is it valid wasm, which
//! proxy-wasm ABI versions does it export, what does it import and export.
//!
//! ```
//! // The smallest proxy-wasm-shaped module: one exported function named after the ABI.
//! let wasm = wasmctl::module::tests_support::module_with_exports(&["proxy_abi_version_0_2_1"]);
//! let summary = wasmctl::module::check(&wasm, "filter.wasm").unwrap();
//! assert_eq!(summary.abi_versions, vec!["proxy_abi_version_0_2_1".to_string()]);
//! assert!(wasmctl::module::check(b"not wasm", "x").is_err());
//! ```

use crate::error::{Error, Result};
use wasmparser::{Parser, Payload, Validator, WasmFeatures};

/// The first 8 bytes of every core wasm module: `\0asm` and version 1.
pub const WASM_MAGIC: [u8; 8] = [0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00];

/// Prefix of the exports that declare a proxy-wasm ABI version (`proxy_abi_version_0_2_1`).
pub const ABI_EXPORT_PREFIX: &str = "proxy_abi_version_";

/// What a module is, as far as packaging and loading care.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModuleSummary {
    /// Size in bytes.
    pub size: u64,
    /// The `proxy_abi_version_*` exports, in module order.
    pub abi_versions: Vec<String>,
    /// Imports as `module.name`.
    pub imports: Vec<String>,
    /// Export names.
    pub exports: Vec<String>,
}

impl ModuleSummary {
    /// True when the module exports at least one proxy-wasm ABI version.
    pub fn is_proxy_wasm(&self) -> bool {
        !self.abi_versions.is_empty()
    }
}

/// True when `bytes` start with the wasm magic and version 1.
pub fn has_magic(bytes: &[u8]) -> bool {
    bytes.starts_with(&WASM_MAGIC)
}

/// The first bytes of `bytes`, escaped for an error message.
pub fn head_escaped(bytes: &[u8]) -> String {
    let head: String = bytes
        .iter()
        .take(8)
        .flat_map(|b| std::ascii::escape_default(*b))
        .map(char::from)
        .collect();
    format!("\"{head}\"")
}

/// Validate `bytes` as a core WebAssembly module and summarise it. `name` is used in errors.
/// A valid module without proxy-wasm exports is returned, not refused: see [`require_proxy_wasm`].
pub fn check(bytes: &[u8], name: &str) -> Result<ModuleSummary> {
    if !has_magic(bytes) {
        let reason = if bytes.len() >= 4 && bytes[..4] == WASM_MAGIC[..4] {
            "a WebAssembly component or an unsupported version (only core modules, version 1, load in Envoy)".to_string()
        } else {
            format!(
                "it starts with {}, not the wasm magic \\0asm",
                head_escaped(bytes)
            )
        };
        return Err(Error::InvalidModule {
            path: name.to_string(),
            reason,
        });
    }
    let invalid = |e: wasmparser::BinaryReaderError| Error::InvalidModule {
        path: name.to_string(),
        reason: e.to_string(),
    };
    Validator::new_with_features(WasmFeatures::default())
        .validate_all(bytes)
        .map_err(invalid)?;
    let mut summary = ModuleSummary {
        size: bytes.len() as u64,
        abi_versions: Vec::new(),
        imports: Vec::new(),
        exports: Vec::new(),
    };
    for payload in Parser::new(0).parse_all(bytes) {
        match payload.map_err(invalid)? {
            Payload::ImportSection(reader) => {
                for import in reader.into_imports() {
                    let import = import.map_err(invalid)?;
                    summary
                        .imports
                        .push(format!("{}.{}", import.module, import.name));
                }
            }
            Payload::ExportSection(reader) => {
                for export in reader {
                    let export = export.map_err(invalid)?;
                    if export.name.starts_with(ABI_EXPORT_PREFIX) {
                        summary.abi_versions.push(export.name.to_string());
                    }
                    summary.exports.push(export.name.to_string());
                }
            }
            _ => {}
        }
    }
    Ok(summary)
}

/// Refuse a module without a proxy-wasm ABI export, naming the file and what it does export.
pub fn require_proxy_wasm(summary: &ModuleSummary, name: &str) -> Result<()> {
    if summary.is_proxy_wasm() {
        return Ok(());
    }
    let mut exports: Vec<&str> = summary.exports.iter().map(String::as_str).take(8).collect();
    if summary.exports.len() > 8 {
        exports.push("...");
    }
    Err(Error::NotProxyWasm {
        path: name.to_string(),
        exports: if exports.is_empty() {
            "none".to_string()
        } else {
            exports.join(", ")
        },
    })
}

/// Tiny hand-made modules for examples and tests.
pub mod tests_support {
    /// A valid module exporting one no-op function under each of `names`.
    pub fn module_with_exports(names: &[&str]) -> Vec<u8> {
        let mut m = super::WASM_MAGIC.to_vec();
        // type section: one type () -> ()
        m.extend_from_slice(&[0x01, 0x04, 0x01, 0x60, 0x00, 0x00]);
        // function section: one function of type 0
        m.extend_from_slice(&[0x03, 0x02, 0x01, 0x00]);
        // export section
        let mut body = vec![names.len() as u8];
        for n in names {
            body.push(n.len() as u8);
            body.extend_from_slice(n.as_bytes());
            body.extend_from_slice(&[0x00, 0x00]); // func 0
        }
        m.push(0x07);
        m.push(body.len() as u8);
        m.extend_from_slice(&body);
        // code section: one empty body
        m.extend_from_slice(&[0x0a, 0x04, 0x01, 0x02, 0x00, 0x0b]);
        m
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detects_abi_exports() {
        let wasm = tests_support::module_with_exports(&["proxy_abi_version_0_2_1", "malloc"]);
        let s = check(&wasm, "f.wasm").unwrap();
        assert_eq!(s.abi_versions, ["proxy_abi_version_0_2_1"]);
        assert_eq!(s.exports, ["proxy_abi_version_0_2_1", "malloc"]);
        require_proxy_wasm(&s, "f.wasm").unwrap();
    }

    #[test]
    fn refuses_a_module_without_abi_export_naming_the_file() {
        let wasm = tests_support::module_with_exports(&["main"]);
        let s = check(&wasm, "f.wasm").unwrap();
        let e = require_proxy_wasm(&s, "f.wasm").unwrap_err().to_string();
        assert!(
            e.contains("f.wasm") && e.contains("proxy_abi_version_") && e.contains("main"),
            "{e}"
        );
        assert!(e.contains("--force"), "{e}");
    }

    #[test]
    fn refuses_non_wasm_and_truncated_wasm() {
        let e = check(b"#!/bin/sh\necho", "script.wasm")
            .unwrap_err()
            .to_string();
        assert!(e.contains("script.wasm") && e.contains("magic"), "{e}");
        let wasm = tests_support::module_with_exports(&["proxy_abi_version_0_2_1"]);
        let e = check(&wasm[..wasm.len() - 3], "cut.wasm")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("cut.wasm: not a valid WebAssembly module"),
            "{e}"
        );
    }
}
