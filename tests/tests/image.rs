//! The wasmctl container image (`make image`, `scripts/image`): built without a Docker daemon,
//! pushed to a real registry, pulled back over the registry API, and checked as a runtime would
//! read it: entrypoint, user, labels, a static binary that runs (`--version`).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use e2e::http1;
use e2e::registry::Registry;
use serde_json::Value;
use std::fs;
use std::path::Path;
use std::process::Command;

const ACCEPT: &str = "application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json";

fn get(registry: &Registry, path: &str) -> Vec<u8> {
    let r = http1::get(registry.addr, path, &[("accept", ACCEPT)]).unwrap();
    assert_eq!(r.status(), 200, "GET {path}: {}", r.text());
    r.body
}

/// Whether an ELF64 file has a program interpreter (a dynamically linked executable does).
fn has_interpreter(elf: &[u8]) -> bool {
    assert_eq!(&elf[..4], b"\x7fELF", "not an ELF file");
    let u16_at = |o: usize| u16::from_le_bytes([elf[o], elf[o + 1]]) as usize;
    let phoff = u64::from_le_bytes(elf[0x20..0x28].try_into().unwrap()) as usize;
    let (size, count) = (u16_at(0x36), u16_at(0x38));
    (0..count).any(|i| {
        let o = phoff + i * size;
        u32::from_le_bytes(elf[o..o + 4].try_into().unwrap()) == 3 // PT_INTERP
    })
}

#[test]
fn the_wasmctl_image_builds_pushes_and_runs() {
    let registry = Registry::start();
    let work = tempfile::tempdir().unwrap();
    let reference = registry.reference("envoy-wasm-toolkit/wasmctl:e2e");
    let out = Command::new(e2e::workspace_root().join("scripts/image"))
        .args([
            "--tag",
            "localhost/envoy-wasm-toolkit/wasmctl:e2e",
            "--push",
            &reference,
            "--plain-http",
            "--root",
        ])
        .arg(work.path().join("buildah"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "scripts/image failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let manifest: Value = serde_json::from_slice(&get(
        &registry,
        "/v2/envoy-wasm-toolkit/wasmctl/manifests/e2e",
    ))
    .unwrap();
    let config_digest = manifest["config"]["digest"].as_str().unwrap();
    let config: Value = serde_json::from_slice(&get(
        &registry,
        &format!("/v2/envoy-wasm-toolkit/wasmctl/blobs/{config_digest}"),
    ))
    .unwrap();
    let c = &config["config"];
    assert_eq!(
        c["Entrypoint"],
        serde_json::json!(["/usr/local/bin/wasmctl"]),
        "{config}"
    );
    assert_eq!(c["User"], "65532:65532", "{config}");
    let labels = &c["Labels"];
    assert_eq!(labels["org.opencontainers.image.title"], "wasmctl");
    assert_eq!(
        labels["org.opencontainers.image.version"],
        env!("CARGO_PKG_VERSION")
    );
    assert!(
        labels["org.opencontainers.image.revision"]
            .as_str()
            .is_some_and(|r| !r.is_empty())
    );
    assert_eq!(config["os"], "linux");
    assert_eq!(config["architecture"], "amd64");

    // Every layer unpacked, as a runtime would, then the binary run from it.
    let rootfs = work.path().join("rootfs");
    fs::create_dir_all(&rootfs).unwrap();
    for (i, layer) in manifest["layers"].as_array().unwrap().iter().enumerate() {
        let digest = layer["digest"].as_str().unwrap();
        let blob = work.path().join(format!("layer-{i}"));
        fs::write(
            &blob,
            get(
                &registry,
                &format!("/v2/envoy-wasm-toolkit/wasmctl/blobs/{digest}"),
            ),
        )
        .unwrap();
        let ok = Command::new("tar")
            .arg("-xf")
            .arg(&blob)
            .arg("-C")
            .arg(&rootfs)
            .status()
            .unwrap();
        assert!(
            ok.success(),
            "layer {i} ({}) does not unpack",
            layer["mediaType"]
        );
    }
    let bin = rootfs.join("usr/local/bin/wasmctl");
    let elf = fs::read(&bin).unwrap();
    assert!(!has_interpreter(&elf), "the binary is dynamically linked");
    let version = Command::new(&bin).arg("--version").output().unwrap();
    assert!(version.status.success());
    assert_eq!(
        String::from_utf8_lossy(&version.stdout).trim(),
        format!("wasmctl {}", env!("CARGO_PKG_VERSION"))
    );
    let passwd = fs::read_to_string(rootfs.join("etc/passwd")).unwrap();
    assert!(passwd.contains(":65532:65532:"), "{passwd}");
    assert!(rootfs.join("etc/ssl/certs/ca-certificates.crt").is_file());
    let tmp = fs::metadata(rootfs.join("tmp")).unwrap();
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(tmp.permissions().mode() & 0o7777, 0o1777);
    // Nothing else: the binary, its user, the CA bundle and /tmp.
    let mut files = Vec::new();
    walk(&rootfs, &rootfs, &mut files);
    files.sort();
    assert_eq!(
        files,
        [
            "etc/group",
            "etc/passwd",
            "etc/ssl/certs/ca-certificates.crt",
            "usr/local/bin/wasmctl"
        ],
    );
}

fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
    for e in fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            walk(root, &p, out);
        } else {
            out.push(p.strip_prefix(root).unwrap().display().to_string());
        }
    }
}
