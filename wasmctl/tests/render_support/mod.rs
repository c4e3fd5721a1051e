//! Shared helpers of the render tests: the examples, running `wasmctl render`, reading YAML.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use serde::Deserialize as _;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The workspace root.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// One example of `manifests/examples/`: its directory and the files render reads.
#[derive(Clone)]
pub struct Example {
    pub dir: PathBuf,
    pub inputs: Vec<PathBuf>,
}

/// Every example; inputs are the YAML files other than `kustomization.yaml` and `rendered.yaml`.
pub fn examples() -> Vec<Example> {
    let root = workspace_root().join("manifests/examples");
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(&root)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir())
        .collect();
    dirs.sort();
    assert!(!dirs.is_empty(), "no example in {}", root.display());
    dirs.into_iter()
        .map(|dir| {
            let mut inputs: Vec<PathBuf> = std::fs::read_dir(&dir)
                .unwrap()
                .map(|e| e.unwrap().path())
                .filter(|p| {
                    let n = p.file_name().unwrap().to_string_lossy();
                    n.ends_with(".yaml") && n != "kustomization.yaml" && n != "rendered.yaml"
                })
                .collect();
            inputs.sort();
            Example { dir, inputs }
        })
        .collect()
}

/// Run `wasmctl render --no-resolve FILES... EXTRA...`; fail with its stderr unless it succeeds.
pub fn render_cli(files: &[PathBuf], extra: &[&str]) -> String {
    let out = render_cli_raw(files, extra);
    assert!(
        out.status.success(),
        "wasmctl render {files:?} {extra:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Run `wasmctl render --no-resolve FILES... EXTRA...` and return what happened.
pub fn render_cli_raw(files: &[PathBuf], extra: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_wasmctl"))
        .arg("render")
        .arg("--no-resolve")
        .args(files)
        .args(extra)
        .output()
        .unwrap()
}

/// Every document of a YAML stream, as JSON values.
pub fn docs(yaml: &str) -> Vec<Value> {
    serde_norway::Deserializer::from_str(yaml)
        .map(|d| Value::deserialize(d).unwrap())
        .filter(|v| !v.is_null())
        .collect()
}

/// Istio's CRDs, by kind: `crd-all.gen.yaml` of the Istio module the control plane is built
/// from (pinned in `controlplane/versions.env`), which `scripts/control-plane-build` copies
/// beside the binaries (building them first when missing).
pub fn istio_crd(kind: &str) -> Value {
    let script = workspace_root().join("scripts/control-plane-build");
    let out = Command::new(&script)
        .stderr(std::process::Stdio::inherit())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
    assert!(out.status.success(), "{} failed", script.display());
    let path =
        PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()).join("istio/crd-all.gen.yaml");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "Istio's CRDs, from the pinned module, at {}: {e}",
            path.display()
        )
    });
    docs(&text)
        .into_iter()
        .find(|d| d["kind"] == "CustomResourceDefinition" && d["spec"]["names"]["kind"] == kind)
        .unwrap_or_else(|| panic!("no CRD for {kind} in {}", path.display()))
}

/// `kubectl`, if it is installed and has `kustomize`.
pub fn kubectl() -> Option<PathBuf> {
    let ok = Command::new("kubectl")
        .args(["kustomize", "--help"])
        .output()
        .is_ok_and(|o| o.status.success());
    ok.then(|| PathBuf::from("kubectl"))
}
