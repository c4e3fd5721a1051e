//! A filter project's `wasmctl.yaml`: what `wasmctl test` and `wasmctl dev` use when the command
//! line does not say (the module the build writes, the build command, the scenarios, the root id
//! and configuration Envoy gives the plugin). `wasmctl new` writes one.
//!
//! ```
//! use wasmctl::project::Project;
//!
//! let p = Project::from_yaml(
//!     "module: target/wasm32-wasip1/release/my_filter.wasm\n\
//!      build: cargo build --target wasm32-wasip1 --release\n\
//!      rootId: my_filter\n",
//!     "wasmctl.yaml".as_ref(),
//! ).unwrap();
//! // Relative paths are relative to the project file's folder.
//! assert_eq!(p.scenarios, std::path::Path::new("scenarios"));
//! ```

use crate::error::{Error, Result};
use serde::Deserialize;
use std::path::{Path, PathBuf};

/// The project file's name.
pub const FILE: &str = "wasmctl.yaml";

/// A project file, its relative paths resolved against the folder it is in.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Project {
    /// The module the build writes.
    pub module: PathBuf,
    /// The build command (run by `sh -c` in the project's folder).
    #[serde(default)]
    pub build: Option<String>,
    /// The scenarios folder (default `scenarios`).
    #[serde(default = "default_scenarios")]
    pub scenarios: PathBuf,
    /// The plugin's root id (Envoy's `config.root_id`), for `wasmctl dev`.
    #[serde(default)]
    pub root_id: String,
    /// The plugin configuration, for `wasmctl dev` when `--config` is not given.
    #[serde(default)]
    pub config: Option<String>,
    /// The folder the file is in (not in the file).
    #[serde(skip)]
    pub dir: PathBuf,
}

fn default_scenarios() -> PathBuf {
    PathBuf::from("scenarios")
}

impl Project {
    /// Parse a project file's text; `file` names it in errors and its folder resolves the
    /// relative paths.
    pub fn from_yaml(text: &str, file: &Path) -> Result<Project> {
        let mut p: Project = serde_norway::from_str(text).map_err(|e| Error::Project {
            file: file.to_path_buf(),
            message: e.to_string(),
        })?;
        let dir = file.parent().unwrap_or(Path::new(""));
        p.module = dir.join(&p.module);
        p.scenarios = dir.join(&p.scenarios);
        p.dir = dir.to_path_buf();
        Ok(p)
    }

    /// The project file in `start` or the nearest folder above it that has one, as cargo finds
    /// `Cargo.toml`; `None` when there is none.
    pub fn find(start: &Path) -> Result<Option<Project>> {
        let start = std::path::absolute(start).unwrap_or_else(|_| start.to_path_buf());
        for dir in start.ancestors() {
            let file = dir.join(FILE);
            if file.is_file() {
                let text = std::fs::read_to_string(&file).map_err(|source| Error::Io {
                    action: "cannot read",
                    path: file.clone(),
                    source,
                })?;
                return Project::from_yaml(&text, &file).map(Some);
            }
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn paths_resolve_against_the_files_folder_and_unknown_fields_are_named() {
        let p = Project::from_yaml(
            "module: out/f.wasm\nscenarios: sc\n",
            Path::new("/p/wasmctl.yaml"),
        )
        .unwrap();
        assert_eq!(p.module, Path::new("/p/out/f.wasm"));
        assert_eq!(p.scenarios, Path::new("/p/sc"));
        let e = Project::from_yaml("module: f.wasm\nbiuld: make\n", Path::new("wasmctl.yaml"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("wasmctl.yaml") && e.contains("biuld"), "{e}");
    }

    #[test]
    fn the_nearest_project_file_above_is_found() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join(FILE), "module: m.wasm\n").unwrap();
        std::fs::create_dir_all(d.path().join("src/deep")).unwrap();
        let p = Project::find(&d.path().join("src/deep")).unwrap().unwrap();
        assert_eq!(p.module, d.path().join("m.wasm"));
        assert!(Project::find(Path::new("/")).unwrap().is_none());
    }
}
