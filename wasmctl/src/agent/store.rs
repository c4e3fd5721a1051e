//! The agent's directory: content-addressed modules (`<sha256>.wasm`), one relative symlink per
//! entry (`<name>.wasm`) and one per manifest digest held (`manifest-sha256-<hex>.wasm`), the
//! agent's own state file, and the ECDS files it writes. Every write is
//! atomic (temporary file or link in the same directory, then rename).

use super::list::Ecds;
use crate::error::{Error, Result};
use crate::fsutil;
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The state file, in the module directory (hidden: sidecars only look at `*.wasm`).
pub const STATE_FILE: &str = ".wasm-agent-state.json";

/// What the agent has in place for one entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Current {
    /// The image reference this module was obtained for.
    pub image: String,
    /// Its manifest digest.
    pub manifest_digest: String,
    /// Hex sha256 of the module file.
    pub sha256: String,
    /// Its size in bytes.
    pub size: u64,
    /// Root ids from the image's runtime config.
    #[serde(default)]
    pub root_ids: Vec<String>,
}

/// The state the agent keeps across restarts.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct State {
    /// Entries with a module in place, by name.
    #[serde(default)]
    pub images: BTreeMap<String, Current>,
    /// Names no longer listed, with the time (Unix seconds) they left the list.
    #[serde(default)]
    pub removed: BTreeMap<String, f64>,
    /// Module files no entry uses any more, with the time they stopped being used.
    #[serde(default)]
    pub unreferenced: BTreeMap<String, f64>,
}

impl State {
    /// Read the state file of `dir`; a missing or unreadable one is an empty state (the agent
    /// then re-resolves everything, which costs downloads but loses nothing).
    pub fn load(dir: &Path) -> (State, Option<String>) {
        let path = dir.join(STATE_FILE);
        match std::fs::read(&path) {
            Ok(bytes) => match serde_json::from_slice(&bytes) {
                Ok(s) => (s, None),
                Err(e) => (
                    State::default(),
                    Some(format!("{}: ignored, not valid: {e}", path.display())),
                ),
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => (State::default(), None),
            Err(e) => (
                State::default(),
                Some(format!("{}: ignored, cannot read: {e}", path.display())),
            ),
        }
    }

    /// Write the state file atomically.
    pub fn save(&self, dir: &Path) -> Result<()> {
        let bytes = serde_json::to_vec_pretty(self)
            .map_err(|e| Error::Usage(format!("cannot serialize the agent state: {e}")))?;
        fsutil::write_atomic(&dir.join(STATE_FILE), &bytes, 0o644)
    }
}

/// `<sha>.wasm`.
pub fn module_file(sha: &str) -> String {
    format!("{sha}.wasm")
}

/// Is `name` a content-addressed module file name; its sha if so.
pub fn module_sha(name: &str) -> Option<&str> {
    let sha = name.strip_suffix(".wasm")?;
    (sha.len() == 64
        && sha
            .bytes()
            .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c)))
    .then_some(sha)
}

use crate::oci::layout::sha256_hex;

/// Does `DIR/<sha>.wasm` exist with exactly that content?
pub fn verify(dir: &Path, sha: &str) -> bool {
    std::fs::read(dir.join(module_file(sha))).is_ok_and(|b| sha256_hex(&b) == sha)
}

/// Write `DIR/<sha>.wasm` unless it is already there with that content.
pub fn write_module(dir: &Path, sha: &str, bytes: &[u8]) -> Result<bool> {
    if verify(dir, sha) {
        return Ok(false);
    }
    fsutil::write_atomic(&dir.join(module_file(sha)), bytes, 0o644)?;
    Ok(true)
}

/// The target of the symlink `DIR/<name>.wasm`, if it is one.
pub fn link_target(dir: &Path, name: &str) -> Option<PathBuf> {
    std::fs::read_link(dir.join(format!("{name}.wasm"))).ok()
}

/// Point `DIR/<name>.wasm` at `<sha>.wasm` (relative), replacing any previous link atomically.
pub fn link(dir: &Path, name: &str, sha: &str) -> Result<bool> {
    let target = PathBuf::from(module_file(sha));
    if link_target(dir, name).as_deref() == Some(target.as_path()) {
        return Ok(false);
    }
    let path = dir.join(format!("{name}.wasm"));
    let tmp = dir.join(format!(".{name}.wasm.{}.tmp", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    symlink(&target, &tmp).map_err(|e| Error::io("cannot create the symlink", &tmp, e))?;
    if let Err(e) = std::fs::rename(&tmp, &path) {
        let _ = std::fs::remove_file(&tmp);
        return Err(Error::io(
            "cannot rename the symlink into place as",
            path,
            e,
        ));
    }
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(true)
}

#[cfg(unix)]
fn symlink(target: &Path, link: &Path) -> std::io::Result<()> {
    std::os::unix::fs::symlink(target, link)
}

#[cfg(not(unix))]
fn symlink(_: &Path, _: &Path) -> std::io::Result<()> {
    Err(std::io::Error::other("symlinks need a Unix system"))
}

/// Remove `DIR/<name>.wasm` if it is a symlink to a module file (never anything else).
pub fn unlink(dir: &Path, name: &str) -> Result<bool> {
    match link_target(dir, name) {
        Some(t) if t.to_str().and_then(module_sha).is_some() => {
            let path = dir.join(format!("{name}.wasm"));
            std::fs::remove_file(&path).map_err(|e| Error::io("cannot remove", path, e))?;
            Ok(true)
        }
        _ => Ok(false),
    }
}

/// The module files in `dir`, by sha.
pub fn module_files(dir: &Path) -> Vec<String> {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    rd.filter_map(|e| e.ok())
        .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
        .filter_map(|e| {
            e.file_name()
                .to_str()
                .and_then(module_sha)
                .map(str::to_string)
        })
        .collect()
}

/// The manifest-digest links in `dir` (`manifest-sha256-<hex>`, without `.wasm`), symlinks only.
pub fn digest_links(dir: &Path) -> Vec<String> {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    rd.filter_map(|e| e.ok())
        .filter(|e| e.file_type().is_ok_and(|t| t.is_symlink()))
        .filter_map(|e| {
            let n = e.file_name().to_str()?.strip_suffix(".wasm")?.to_string();
            let digest = n.strip_prefix("manifest-")?.replacen('-', ":", 1);
            (crate::render::digest_link(&digest).as_deref() == Some(n.as_str())).then_some(n)
        })
        .collect()
}

/// Remove temporary files an interrupted run left (`.wasmctl-*.tmp`, `.<name>.wasm.*.tmp`).
pub fn remove_stale_temporaries(dir: &Path) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.filter_map(|e| e.ok()) {
        let n = e.file_name().to_string_lossy().into_owned();
        if n.starts_with('.') && n.ends_with(".tmp") {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

/// The ECDS file for `ecds`: a `DiscoveryResponse` holding one `TypedExtensionConfig` whose Wasm
/// filter loads `module` (absolute path), as Envoy's file-based `config_discovery` reads it.
pub fn ecds_document(
    ecds: &Ecds,
    entry_name: &str,
    image: &str,
    current: &Current,
    module: &Path,
) -> Vec<u8> {
    let name = ecds.filter_name(entry_name);
    let root_id = ecds
        .root_id
        .clone()
        .or_else(|| current.root_ids.first().cloned())
        .unwrap_or_default();
    let mut config = json!({
        "name": name,
        "root_id": root_id,
        "configuration": {
            "@type": "type.googleapis.com/google.protobuf.StringValue",
            "value": ecds.configuration,
        },
        "vm_config": {
            "vm_id": ecds.vm_id.as_deref().unwrap_or(name),
            "runtime": "envoy.wasm.runtime.v8",
            "code": {"local": {"filename": module.to_string_lossy()}},
        },
    });
    if ecds.fail_open {
        // `fail_open` is deprecated in Envoy 1.40; `failure_policy` replaces it.
        config["failure_policy"] = json!("FAIL_OPEN");
    }
    let doc = json!({
        "resources": [{
            "@type": "type.googleapis.com/envoy.config.core.v3.TypedExtensionConfig",
            "name": name,
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
                "config": config,
            },
        }],
    });
    let mut out = Vec::new();
    let is_json = ecds
        .file
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("json"));
    if !is_json {
        // JSON is YAML too; the comment says where the file comes from.
        out.extend_from_slice(
            format!(
                "# Written by wasmctl agent for {entry_name}: image {image}, manifest {}, module sha256 {}.\n",
                current.manifest_digest, current.sha256
            )
            .as_bytes(),
        );
    }
    out.extend_from_slice(&serde_json::to_vec_pretty(&doc).unwrap_or_default());
    out.push(b'\n');
    out
}

/// Write `bytes` to `path` atomically unless it already holds exactly them.
pub fn write_if_changed(path: &Path, bytes: &[u8]) -> Result<bool> {
    if std::fs::read(path).is_ok_and(|b| b == bytes) {
        return Ok(false);
    }
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)
            .map_err(|e| Error::io("cannot create directory", parent, e))?;
    }
    fsutil::write_atomic(path, bytes, 0o644)?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_and_modules() {
        let d = tempfile::tempdir().unwrap();
        let sha = sha256_hex(b"\0asm");
        assert!(write_module(d.path(), &sha, b"\0asm").unwrap());
        assert!(!write_module(d.path(), &sha, b"\0asm").unwrap());
        assert!(link(d.path(), "a", &sha).unwrap());
        assert!(!link(d.path(), "a", &sha).unwrap());
        assert_eq!(
            link_target(d.path(), "a").unwrap(),
            PathBuf::from(format!("{sha}.wasm"))
        );
        assert_eq!(std::fs::read(d.path().join("a.wasm")).unwrap(), b"\0asm");
        assert_eq!(module_files(d.path()), vec![sha.clone()]);
        assert!(unlink(d.path(), "a").unwrap());
        assert!(!unlink(d.path(), "a").unwrap());
        assert!(module_sha("abc.wasm").is_none());
        let ecds: Ecds = serde_norway::from_str(
            "{file: /e/f.yaml, filterName: hf, configuration: '{\"a\":1}', failOpen: true}",
        )
        .unwrap();
        let current = Current {
            image: "r/x:v1".into(),
            manifest_digest: "sha256:m".into(),
            sha256: sha.clone(),
            size: 4,
            root_ids: vec!["from_image".into()],
        };
        let doc = ecds_document(&ecds, "n", "r/x:v1", &current, Path::new("/d/m.wasm"));
        let text = String::from_utf8(doc).unwrap();
        assert!(
            text.starts_with("# Written by wasmctl agent for n: image r/x:v1"),
            "{text}"
        );
        let v: serde_json::Value = serde_json::from_str(text.split_once('\n').unwrap().1).unwrap();
        let r = &v["resources"][0];
        assert_eq!(r["name"], "hf");
        let c = &r["typed_config"]["config"];
        assert_eq!(c["root_id"], "from_image");
        assert_eq!(c["failure_policy"], "FAIL_OPEN");
        assert_eq!(c["configuration"]["value"], "{\"a\":1}");
        assert_eq!(c["vm_config"]["code"]["local"]["filename"], "/d/m.wasm");
        assert_eq!(module_sha(&format!("{sha}.wasm")), Some(sha.as_str()));
    }
}
