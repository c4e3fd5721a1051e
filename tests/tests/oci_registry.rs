//! `wasmctl push|pull|login|inspect` against a real CNCF Distribution registry (Debian
//! `docker-registry`), with oras-py (PyPI `oras`) as the independent client: what one pushes the
//! other pulls, byte for byte, with the same manifest digest.

// Test helpers: a failed expectation here should fail the test, loudly.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use e2e::registry::Registry;
use serde_json::Value;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

const SOLO_CONFIG: &str = "application/vnd.module.wasm.config.v1+json";
const SOLO_LAYER: &str = "application/vnd.module.wasm.content.layer.v1+wasm";
const OCI_TAR_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
const DOCKER_TAR_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";

struct Out {
    ok: bool,
    stdout: String,
    stderr: String,
}

impl Out {
    fn line(&self, prefix: &str) -> String {
        self.stdout
            .lines()
            .find_map(|l| l.strip_prefix(prefix))
            .unwrap_or_else(|| panic!("no {prefix:?} line in:\n{}", self.stdout))
            .trim()
            .to_string()
    }
}

/// A scratch directory, also used as `DOCKER_CONFIG` so the host's credentials never leak in.
struct Ctx {
    dir: tempfile::TempDir,
    /// Extra environment for every wasmctl run.
    env: Vec<(String, String)>,
}

impl Ctx {
    fn new() -> Ctx {
        Ctx {
            dir: tempfile::tempdir().unwrap(),
            env: Vec::new(),
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn wasmctl_with_stdin(&self, args: &[&str], stdin: &str) -> Out {
        use std::io::Write;
        let mut child = Command::new(e2e::wasmctl_bin())
            .args(args)
            .env("DOCKER_CONFIG", self.path("docker"))
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(stdin.as_bytes())
            .unwrap();
        let o = child.wait_with_output().unwrap();
        Out {
            ok: o.status.success(),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }

    fn wasmctl(&self, args: &[&str]) -> Out {
        self.wasmctl_with_stdin(args, "")
    }

    fn ok(&self, args: &[&str]) -> Out {
        let o = self.wasmctl(args);
        assert!(o.ok, "wasmctl {args:?} failed:\n{}\n{}", o.stdout, o.stderr);
        o
    }

    fn fails(&self, args: &[&str]) -> String {
        let o = self.wasmctl(args);
        assert!(!o.ok, "wasmctl {args:?} should fail:\n{}", o.stdout);
        assert!(!o.stderr.contains("panicked"), "{}", o.stderr);
        o.stderr
    }
}

fn oras(args: &[&str]) -> String {
    let o = Command::new(e2e::python())
        .arg(e2e::oras_helper())
        .args(args)
        .output()
        .expect("python (scripts/setup makes .venv)");
    assert!(
        o.status.success(),
        "oras-py {args:?} failed (scripts/setup installs it in .venv):\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// The raw manifest as oras-py fetches it: (sha256 of its bytes, parsed JSON).
fn oras_manifest(reference: &str) -> (String, Value) {
    let out = oras(&["manifest", reference]);
    let (digest, json) = out.split_once('\n').unwrap();
    (digest.to_string(), serde_json::from_str(json).unwrap())
}

fn filter() -> Vec<u8> {
    fs::read(e2e::filter_wasm()).unwrap()
}

/// The filter padded with a custom section to at least `size` bytes: still a valid module.
fn padded_filter(size: usize) -> Vec<u8> {
    let mut m = filter();
    let name = b"padding";
    let payload = size.saturating_sub(m.len());
    let body_len = 1 + name.len() + payload;
    m.push(0);
    let mut n = body_len as u32;
    loop {
        let byte = (n & 0x7f) as u8;
        n >>= 7;
        if n == 0 {
            m.push(byte);
            break;
        }
        m.push(byte | 0x80);
    }
    m.push(name.len() as u8);
    m.extend_from_slice(name);
    m.extend((0..payload).map(|i| (i % 251) as u8));
    m
}

fn runtime_config(ctx: &Ctx) -> PathBuf {
    let p = ctx.path("runtime-config.json");
    fs::write(
        &p,
        r#"{"type":"envoy_proxy","abiVersions":["proxy_abi_version_0_2_1"],"config":{"rootIds":["my_root_id"]}}"#,
    )
    .unwrap();
    p
}

/// Nothing at `out`, and no temporary file left beside it.
fn assert_nothing_written(out: &Path) {
    assert!(
        !out.exists(),
        "{} exists after a failed pull",
        out.display()
    );
    let leftovers: Vec<_> = fs::read_dir(out.parent().unwrap())
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".wasmctl-") || n.ends_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn seed_one_layer_image_pushed_by_oras_is_pulled_identically() {
    let reg = Registry::start();
    let ctx = Ctx::new();
    let wasm = ctx.path("example-filter.wasm");
    fs::write(&wasm, filter()).unwrap();
    let reference = reg.reference("seed/filter:v1");
    let pushed = oras(&["push-seed", &reference, s(&wasm), s(&runtime_config(&ctx))]);
    let (digest, manifest) = oras_manifest(&reference);
    assert_eq!(pushed.trim(), digest);
    assert_eq!(
        manifest["layers"].as_array().unwrap().len(),
        1,
        "the seed image has one layer"
    );

    let out = ctx.path("pulled.wasm");
    let o = ctx.ok(&["pull", &reference, "-o", s(&out), "--plain-http"]);
    assert_eq!(fs::read(&out).unwrap(), filter());
    assert_eq!(o.line("digest: "), digest);
    assert!(o.stdout.contains("one layer"), "{}", o.stdout);

    // inspect explains why Istio refuses the seed image, and what to do.
    let i = ctx.ok(&["inspect", &reference, "--plain-http"]);
    assert!(
        i.stdout
            .contains("Istio (WasmPlugin / agent): does NOT load"),
        "{}",
        i.stdout
    );
    assert!(
        i.stdout.contains("number of layers must be 2 but got 1"),
        "{}",
        i.stdout
    );
    assert!(
        i.stdout.contains("Envoy Gateway: does NOT load"),
        "{}",
        i.stdout
    );
    assert!(i.stdout.contains("rootIds=[my_root_id]"), "{}", i.stdout);
}

#[test]
fn every_format_pushed_by_wasmctl_is_pulled_by_oras_with_the_same_bytes_and_digest() {
    let reg = Registry::start();
    let ctx = Ctx::new();
    let wasm = ctx.path("filter.wasm");
    fs::write(&wasm, filter()).unwrap();
    for format in ["solo", "compat", "cncf"] {
        let reference = reg.reference(&format!("fmt/{format}:v1"));
        let o = ctx.ok(&[
            "push",
            &reference,
            s(&wasm),
            "--format",
            format,
            "--root-id",
            "my_root_id",
            "--plain-http",
        ]);
        let digest = o.line("digest: ");
        assert_eq!(
            o.line("pinned: "),
            format!("{}@{digest}", reg.reference(&format!("fmt/{format}")))
        );
        if format == "cncf" {
            assert!(
                o.stderr.contains("Istio and Envoy Gateway do not load"),
                "{}",
                o.stderr
            );
        } else {
            assert!(!o.stderr.contains("warning"), "{}", o.stderr);
        }

        let (oras_digest, manifest) = oras_manifest(&reference);
        assert_eq!(oras_digest, digest, "{format}: manifest digest");
        let outdir = ctx.path(&format!("oras-{format}"));
        let files = oras(&["pull", &reference, s(&outdir)]);
        let module = match format {
            "compat" => {
                // oras-py unpacks an OCI tar+gzip layer into the output directory itself.
                assert!(files.contains("plugin.tar.gz"), "{files}");
                assert_eq!(
                    manifest["annotations"]["module.wasm.image/variant"],
                    "compat"
                );
                outdir.join("plugin.wasm")
            }
            _ => outdir.join("filter.wasm"),
        };
        assert_eq!(
            fs::read(&module).unwrap(),
            filter(),
            "{format}: module bytes from oras"
        );

        let out = ctx.path(&format!("{format}.wasm"));
        let pulled = ctx.ok(&["pull", &reference, "-o", s(&out), "--plain-http"]);
        assert_eq!(
            fs::read(&out).unwrap(),
            filter(),
            "{format}: module bytes from wasmctl"
        );
        assert_eq!(pulled.line("digest: "), digest);
    }
}

/// The layer rules of Istio's fetcher, `pkg/wasm/imagefetcher.go` (`PrepareFetch`,
/// `extractDockerImage`, `extractOCIStandardImage`, `extractWasmPluginBinary`,
/// `extractOCIArtifactImage`), written here independently of wasmctl's own implementation:
/// a Docker schema 2 manifest needs a last layer of Docker tar.gzip holding `plugin.wasm`;
/// otherwise the compat variant (last layer OCI tar+gzip holding a file whose base name is
/// `plugin.wasm`) is tried, then the oci variant (exactly two layers, one of type
/// `application/vnd.module.wasm.content.layer.v1+wasm`). Returns the module Istio would load.
fn istio_extract(manifest: &Value, blob: impl Fn(&str) -> Vec<u8>) -> Result<Vec<u8>, String> {
    let layers = manifest["layers"].as_array().cloned().unwrap_or_default();
    let plugin_in = |digest: &str| -> Result<Vec<u8>, String> {
        let gz = flate2_free_gunzip(&blob(digest))?;
        tar_find(&gz, "plugin.wasm")
            .ok_or_else(|| "plugin.wasm not found in the archive".to_string())
    };
    if manifest["mediaType"] == DOCKER_MANIFEST {
        let last = layers
            .last()
            .ok_or("number of layers must be greater than zero")?;
        if last["mediaType"] != DOCKER_TAR_GZIP {
            return Err(format!("invalid media type {}", last["mediaType"]));
        }
        return plugin_in(last["digest"].as_str().unwrap());
    }
    let compat = match layers.last() {
        None => Err("number of layers must be greater than zero".to_string()),
        Some(l) if l["mediaType"] != OCI_TAR_GZIP => {
            Err(format!("invalid media type {}", l["mediaType"]))
        }
        Some(l) => plugin_in(l["digest"].as_str().unwrap()),
    };
    if let Ok(m) = compat {
        return Ok(m);
    }
    if layers.len() != 2 {
        return Err(format!(
            "number of layers must be 2 but got {}",
            layers.len()
        ));
    }
    let layer = layers.iter().find(|l| l["mediaType"] == SOLO_LAYER).ok_or(
        "could not find the layer of type application/vnd.module.wasm.content.layer.v1+wasm",
    )?;
    Ok(blob(layer["digest"].as_str().unwrap()))
}

/// gunzip with gzip(1), so the test does not share wasmctl's decoder.
fn flate2_free_gunzip(data: &[u8]) -> Result<Vec<u8>, String> {
    use std::io::Write;
    let mut child = Command::new("gzip")
        .args(["-dc"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(data).unwrap();
    let o = child.wait_with_output().unwrap();
    o.status
        .success()
        .then_some(o.stdout)
        .ok_or_else(|| "failed to parse layer as tar.gz".to_string())
}

/// Find a file by base name in a ustar archive (512-byte headers).
fn tar_find(tar: &[u8], base: &str) -> Option<Vec<u8>> {
    let mut at = 0;
    while at + 512 <= tar.len() {
        let h = &tar[at..at + 512];
        if h.iter().all(|b| *b == 0) {
            return None;
        }
        let name = String::from_utf8_lossy(&h[..100])
            .trim_end_matches('\0')
            .to_string();
        let size_text = String::from_utf8_lossy(&h[124..136])
            .trim_matches(|c: char| c == '\0' || c == ' ')
            .to_string();
        let size = usize::from_str_radix(&size_text, 8).ok()?;
        let data = at + 512;
        if Path::new(&name).file_name().is_some_and(|n| n == base) {
            return Some(tar[data..data + size].to_vec());
        }
        at = data + size.div_ceil(512) * 512;
    }
    None
}

#[test]
fn https_trusts_the_system_roots_and_insecure_accepts_a_self_signed_registry() {
    let reg = Registry::start_tls();
    let mut ctx = Ctx::new();
    let wasm = ctx.path("filter.wasm");
    fs::write(&wasm, filter()).unwrap();
    let out = ctx.path("out.wasm");
    let reference = reg.reference("tls/filter:v1");
    // HTTPS is the default; a certificate no system root vouches for is refused, with the way out.
    for args in [
        vec!["push", &reference, s(&wasm)],
        vec!["pull", &reference, "-o", s(&out)],
    ] {
        let e = ctx.fails(&args);
        assert!(e.contains("https://"), "{e}");
        assert!(e.to_lowercase().contains("certificate"), "{e}");
        assert!(e.contains("--insecure"), "{e}");
        assert!(!out.exists());
    }
    // --insecure accepts it.
    ctx.ok(&["push", &reference, s(&wasm), "--insecure"]);
    ctx.ok(&["pull", &reference, "-o", s(&out), "--insecure"]);
    assert_eq!(fs::read(&out).unwrap(), filter());
    fs::remove_file(&out).unwrap();
    // Once the system roots include the registry's certificate (SSL_CERT_FILE is how OpenSSL
    // and rustls-native-certs let an operator point at a bundle), no flag is needed.
    let cert = reg.certificate().display().to_string();
    ctx.env.push(("SSL_CERT_FILE".into(), cert));
    ctx.env.push((
        "SSL_CERT_DIR".into(),
        ctx.path("no-such-dir").display().to_string(),
    ));
    ctx.ok(&["pull", &reference, "-o", s(&out)]);
    assert_eq!(fs::read(&out).unwrap(), filter());
}

#[test]
fn a_docker_schema_2_image_is_pulled_pinned_and_inspected() {
    let reg = Registry::start();
    let ctx = Ctx::new();
    let wasm = ctx.path("filter.wasm");
    fs::write(&wasm, filter()).unwrap();
    let reference = reg.reference("docker/plugin:v1");
    let digest = oras(&["push-docker", &reference, s(&wasm)]);
    let digest = digest.trim();
    let (served, manifest) = oras_manifest(&reference);
    assert_eq!(served, digest);
    assert_eq!(
        manifest["mediaType"],
        "application/vnd.docker.distribution.manifest.v2+json"
    );
    // By tag and pinned by the manifest digest: the same module, byte for byte.
    for r in [
        reference.clone(),
        format!("{}@{digest}", reg.reference("docker/plugin")),
    ] {
        let out = ctx.path("out.wasm");
        let _ = fs::remove_file(&out);
        let p = ctx.ok(&["pull", &r, "-o", s(&out), "--plain-http"]);
        assert_eq!(fs::read(&out).unwrap(), filter(), "{r}");
        assert!(p.stdout.contains(digest), "{}", p.stdout);
    }
    let i = ctx.ok(&["inspect", &reference, "--plain-http"]);
    assert!(i.stdout.contains("compat"), "{}", i.stdout);
    assert!(
        i.stdout.contains("Istio (WasmPlugin / agent): loads"),
        "{}",
        i.stdout
    );
    // Istio's own rules take the module from the Docker image's last layer.
    let blob = |d: &str| fs::read(reg.blob_path(d)).unwrap();
    assert_eq!(istio_extract(&manifest, blob).unwrap(), filter());
}

#[test]
fn solo_and_compat_images_pass_the_layer_rules_of_istios_fetcher() {
    let reg = Registry::start();
    let ctx = Ctx::new();
    let wasm = ctx.path("filter.wasm");
    fs::write(&wasm, filter()).unwrap();
    let blob = |digest: &str| fs::read(reg.blob_path(digest)).unwrap();
    for (format, loads) in [("solo", true), ("compat", true), ("cncf", false)] {
        let reference = reg.reference(&format!("istio/{format}:v1"));
        ctx.ok(&[
            "push",
            &reference,
            s(&wasm),
            "--format",
            format,
            "--plain-http",
        ]);
        let (_, manifest) = oras_manifest(&reference);
        let got = istio_extract(&manifest, blob);
        if loads {
            assert_eq!(
                got.unwrap(),
                filter(),
                "{format}: Istio would load the module"
            );
        } else {
            assert!(got.is_err(), "{format}: Istio must refuse it");
        }
        // wasmctl inspect gives the same verdict.
        let i = ctx.ok(&["inspect", &reference, "--plain-http"]);
        let verdict = if loads {
            "Istio (WasmPlugin / agent): loads"
        } else {
            "Istio (WasmPlugin / agent): does NOT load"
        };
        assert!(i.stdout.contains(verdict), "{format}:\n{}", i.stdout);
    }
    // The seed's one-layer image is refused, with Istio's own words.
    let seed = reg.reference("istio/seed:v1");
    oras(&["push-seed", &seed, s(&wasm), s(&runtime_config(&ctx))]);
    let (_, manifest) = oras_manifest(&seed);
    let err = istio_extract(&manifest, blob).unwrap_err();
    assert!(
        err.contains("number of layers must be 2 but got 1"),
        "{err}"
    );
}

/// `tar.gz` (gzip'd ustar, by tar(1)) of `files` in `dir`.
fn targz(dir: &Path, out: &str, files: &[&str]) -> PathBuf {
    let path = dir.join(out);
    let o = Command::new("tar")
        .args(["--format=ustar", "-czf", s(&path), "-C", s(dir)])
        .args(files)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    path
}

#[test]
fn a_tar_gz_without_plugin_wasm_beside_the_wasm_layer_is_read_as_istio_reads_it() {
    let reg = Registry::start();
    let ctx = Ctx::new();
    let wasm = ctx.path("filter.wasm");
    fs::write(&wasm, filter()).unwrap();
    let config = runtime_config(&ctx);
    // An archive holding the runtime config and no plugin.wasm.
    let no_plugin = targz(ctx.dir.path(), "no-plugin.tar.gz", &["runtime-config.json"]);
    let blob = |digest: &str| fs::read(reg.blob_path(digest)).unwrap();
    let push = |repo: &str, manifest_type: &str, layers: &[(&Path, &str)]| -> String {
        let reference = reg.reference(repo);
        let mut args = vec![
            "push-raw".to_string(),
            reference.clone(),
            manifest_type.to_string(),
            format!("{}:{SOLO_CONFIG}", s(&config)),
        ];
        args.extend(layers.iter().map(|(p, t)| format!("{}:{t}", s(p))));
        oras(&args.iter().map(String::as_str).collect::<Vec<_>>());
        reference
    };
    let oci = "application/vnd.oci.image.manifest.v1+json";

    // The wasm layer and a last tar.gz without plugin.wasm: Istio's compat variant fails, its
    // oci variant (two layers, one of the wasm type) loads the wasm layer. Pull reads that layer.
    let reference = push(
        "fallback/two:v1",
        oci,
        &[(&wasm, SOLO_LAYER), (&no_plugin, OCI_TAR_GZIP)],
    );
    let (_, manifest) = oras_manifest(&reference);
    assert_eq!(istio_extract(&manifest, blob).unwrap(), filter());
    let out = ctx.path("two.wasm");
    let p = ctx.ok(&["pull", &reference, "-o", s(&out), "--plain-http"]);
    assert_eq!(fs::read(&out).unwrap(), filter(), "{}", p.stdout);
    let i = ctx.ok(&["inspect", &reference, "--plain-http"]);
    assert!(
        i.stdout
            .contains("Istio (WasmPlugin / agent): loads (oci variant"),
        "{}",
        i.stdout
    );
    assert!(
        i.stdout.contains("layout:    solo (two layers"),
        "{}",
        i.stdout
    );

    // Three layers: Istio refuses the image (not the oci variant either); pull reads its one
    // wasm layer, as for any image Istio refuses.
    let reference = push(
        "fallback/three:v1",
        oci,
        &[
            (&config, SOLO_CONFIG),
            (&wasm, SOLO_LAYER),
            (&no_plugin, OCI_TAR_GZIP),
        ],
    );
    let (_, manifest) = oras_manifest(&reference);
    let e = istio_extract(&manifest, blob).unwrap_err();
    assert!(e.contains("number of layers must be 2 but got 3"), "{e}");
    let out = ctx.path("three.wasm");
    ctx.ok(&["pull", &reference, "-o", s(&out), "--plain-http"]);
    assert_eq!(fs::read(&out).unwrap(), filter());
    let i = ctx.ok(&["inspect", &reference, "--plain-http"]);
    assert!(i.stdout.contains("does NOT load"), "{}", i.stdout);

    // A Docker manifest: Istio reads its last layer and nothing else, so it refuses the image.
    let reference = push(
        "fallback/docker:v1",
        DOCKER_MANIFEST,
        &[(&wasm, SOLO_LAYER), (&no_plugin, DOCKER_TAR_GZIP)],
    );
    let (_, manifest) = oras_manifest(&reference);
    assert_eq!(manifest["mediaType"], DOCKER_MANIFEST);
    let e = istio_extract(&manifest, blob).unwrap_err();
    assert!(e.contains("plugin.wasm not found"), "{e}");
    let out = ctx.path("docker.wasm");
    ctx.ok(&["pull", &reference, "-o", s(&out), "--plain-http"]);
    assert_eq!(fs::read(&out).unwrap(), filter());

    // No wasm layer to fall back on: the error names the layers and what each lacks; no file.
    let reference = push(
        "fallback/none:v1",
        oci,
        &[(&config, SOLO_CONFIG), (&no_plugin, OCI_TAR_GZIP)],
    );
    let (_, manifest) = oras_manifest(&reference);
    assert!(istio_extract(&manifest, blob).is_err());
    let out = ctx.path("none.wasm");
    let e = ctx.fails(&["pull", &reference, "-o", s(&out), "--plain-http"]);
    for part in [
        "layer 1 (application/vnd.oci.image.layer.v1.tar+gzip): plugin.wasm not found in the archive",
        "no wasm layer to read instead",
        "0: application/vnd.module.wasm.config.v1+json",
        SOLO_LAYER,
    ] {
        assert!(e.contains(part), "{part:?} missing from:\n{e}");
    }
    assert_nothing_written(&out);
}

#[test]
fn the_bearer_token_flow_logs_in_pushes_and_pulls() {
    let reg = Registry::start_with_token_auth("alice", "s3cret-Pw");
    let issuer = reg.issuer.as_ref().unwrap();
    let ctx = Ctx::new();
    let wasm = ctx.path("filter.wasm");
    fs::write(&wasm, filter()).unwrap();
    let out = ctx.path("out.wasm");
    let reference = reg.reference("bearer/filter:v1");
    let login = |password: &str| {
        ctx.wasmctl_with_stdin(
            &[
                "login",
                &reg.host(),
                "-u",
                "alice",
                "--password-stdin",
                "--plain-http",
            ],
            password,
        )
    };

    // Anonymous: the issuer grants nothing, the registry refuses, the error says nothing was sent.
    let e = ctx.fails(&["push", &reference, s(&wasm), "--plain-http"]);
    assert!(
        e.contains(&reg.host()) && e.contains("no credentials were sent"),
        "{e}"
    );
    // A wrong password is refused by the issuer; the error names the user, never the secret.
    let o = login("wrong-pw");
    assert!(!o.ok, "{}", o.stdout);
    assert!(o.stderr.contains("alice"), "{}", o.stderr);
    assert!(!o.stderr.contains("wrong-pw"), "{}", o.stderr);
    // The right one: push and pull get tokens for the repository and move the module.
    let o = login("s3cret-Pw");
    assert!(o.ok, "{}", o.stderr);
    ctx.ok(&["push", &reference, s(&wasm), "--plain-http"]);
    ctx.ok(&["pull", &reference, "-o", s(&out), "--plain-http"]);
    assert_eq!(fs::read(&out).unwrap(), filter());
    let scopes = issuer.scopes();
    for want in [
        "repository:bearer/filter:pull,push",
        "repository:bearer/filter:pull",
    ] {
        assert!(scopes.iter().any(|s| s == want), "{want} not in {scopes:?}");
    }
    // Every token after login was asked for with alice's credentials.
    let basic = format!(
        "Basic {}",
        base64::Engine::encode(
            &base64::engine::general_purpose::STANDARD,
            "alice:s3cret-Pw"
        )
    );
    let last = issuer.requests().pop().unwrap();
    assert_eq!(last.header("authorization"), Some(basic.as_str()));
}

#[test]
fn login_stores_credentials_where_docker_looks_and_push_pull_use_them() {
    let reg = Registry::start_with_htpasswd("alice", "correct horse");
    let ctx = Ctx::new();
    let wasm = ctx.path("filter.wasm");
    fs::write(&wasm, filter()).unwrap();
    let reference = reg.reference("auth/filter:v1");

    // Without credentials: a 401 that says none were sent and how to log in.
    let err = ctx.fails(&["push", &reference, s(&wasm), "--plain-http"]);
    assert!(
        err.contains(&format!("registry {} refused push", reg.host())),
        "{err}"
    );
    assert!(
        err.contains("no credentials were sent") && err.contains("wasmctl login"),
        "{err}"
    );

    // A wrong password: login fails, names the user, never prints the secret, stores nothing.
    let o = ctx.wasmctl_with_stdin(
        &[
            "login",
            &reg.host(),
            "-u",
            "alice",
            "--password-stdin",
            "--plain-http",
        ],
        "wrong-secret\n",
    );
    assert!(!o.ok);
    assert!(o.stderr.contains("refused user \"alice\""), "{}", o.stderr);
    assert!(!o.stderr.contains("wrong-secret") && !o.stdout.contains("wrong-secret"));
    assert!(!ctx.path("docker/config.json").exists());

    let o = ctx.wasmctl_with_stdin(
        &[
            "login",
            &reg.host(),
            "-u",
            "alice",
            "--password-stdin",
            "--plain-http",
        ],
        "correct horse\n",
    );
    assert!(o.ok, "{}", o.stderr);
    let stored: Value =
        serde_json::from_slice(&fs::read(ctx.path("docker/config.json")).unwrap()).unwrap();
    // base64("alice:correct horse")
    assert_eq!(
        stored["auths"][reg.host()]["auth"],
        "YWxpY2U6Y29ycmVjdCBob3JzZQ=="
    );
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = fs::metadata(ctx.path("docker/config.json"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0, "credentials readable by others: {mode:o}");
    }

    ctx.ok(&["push", &reference, s(&wasm), "--plain-http"]);
    let out = ctx.path("out.wasm");
    ctx.ok(&["pull", &reference, "-o", s(&out), "--plain-http"]);
    assert_eq!(fs::read(&out).unwrap(), filter());
}

#[test]
fn a_dockerconfigjson_file_authenticates_and_wrong_credentials_fail_clearly() {
    let reg = Registry::start_with_htpasswd("bob", "pa55word");
    let ctx = Ctx::new();
    let wasm = ctx.path("filter.wasm");
    fs::write(&wasm, filter()).unwrap();
    let reference = reg.reference("secret/filter:v1");
    // The `.dockerconfigjson` of a Kubernetes pull secret: base64("bob:pa55word").
    let secret = ctx.path("pull-secret.json");
    fs::write(
        &secret,
        format!(
            r#"{{"auths":{{"http://{}":{{"auth":"Ym9iOnBhNTV3b3Jk"}}}}}}"#,
            reg.host()
        ),
    )
    .unwrap();
    ctx.ok(&[
        "push",
        &reference,
        s(&wasm),
        "--plain-http",
        "--registry-config",
        s(&secret),
    ]);
    let out = ctx.path("out.wasm");
    ctx.ok(&[
        "pull",
        &reference,
        "-o",
        s(&out),
        "--plain-http",
        "--registry-config",
        s(&secret),
    ]);
    assert_eq!(fs::read(&out).unwrap(), filter());

    // Wrong password in the file: the error names registry, user and file, not the secret.
    let bad = ctx.path("bad-secret.json");
    // base64("bob:not-the-password")
    fs::write(
        &bad,
        format!(
            r#"{{"auths":{{"{}":{{"auth":"Ym9iOm5vdC10aGUtcGFzc3dvcmQ="}}}}}}"#,
            reg.host()
        ),
    )
    .unwrap();
    let out2 = ctx.path("out2.wasm");
    let err = ctx.fails(&[
        "pull",
        &reference,
        "-o",
        s(&out2),
        "--plain-http",
        "--registry-config",
        s(&bad),
    ]);
    assert!(
        err.contains(&format!("registry {} refused pull", reg.host())),
        "{err}"
    );
    assert!(
        err.contains("user \"bob\"") && err.contains("bad-secret.json"),
        "{err}"
    );
    assert!(
        !err.contains("not-the-password") && !err.contains("Ym9i"),
        "{err}"
    );
    assert_nothing_written(&out2);

    // A malformed file is named too.
    fs::write(&bad, "{not json").unwrap();
    let err = ctx.fails(&[
        "pull",
        &reference,
        "-o",
        s(&out2),
        "--plain-http",
        "--registry-config",
        s(&bad),
    ]);
    assert!(
        err.contains("bad-secret.json") && err.contains("not valid JSON"),
        "{err}"
    );
}

#[test]
fn faults_are_clear_errors_and_never_leave_a_file() {
    let mut reg = Registry::start();
    let ctx = Ctx::new();
    let wasm = ctx.path("filter.wasm");
    fs::write(&wasm, filter()).unwrap();
    let reference = reg.reference("faults/filter:v1");
    let pushed = ctx.ok(&["push", &reference, s(&wasm), "--plain-http"]);
    let out = ctx.path("out.wasm");

    let err = ctx.fails(&[
        "pull",
        &reg.reference("faults/filter:nope"),
        "-o",
        s(&out),
        "--plain-http",
    ]);
    assert!(
        err.contains("manifest tag \"nope\" not found in repository faults/filter"),
        "{err}"
    );
    assert_nothing_written(&out);

    let err = ctx.fails(&[
        "pull",
        &reg.reference("nothing/here:v1"),
        "-o",
        s(&out),
        "--plain-http",
    ]);
    assert!(
        err.contains("repository nothing/here does not exist in registry"),
        "{err}"
    );
    assert_nothing_written(&out);

    // A non-wasm layer (oras-py pushes a text file with the wasm media type).
    let text = ctx.path("notes.wasm");
    fs::write(&text, "this is not wasm\n").unwrap();
    let bogus = reg.reference("faults/bogus:v1");
    oras(&[
        "push-file",
        &bogus,
        s(&text),
        SOLO_LAYER,
        s(&runtime_config(&ctx)),
    ]);
    let err = ctx.fails(&["pull", &bogus, "-o", s(&out), "--plain-http"]);
    assert!(
        err.contains("is not a WebAssembly module") && err.contains("layer 0"),
        "{err}"
    );
    assert_nothing_written(&out);

    // A tampered blob in the registry's storage (same length, other bytes).
    let manifest: Value = oras_manifest(&reference).1;
    let layer = manifest["layers"][1]["digest"]
        .as_str()
        .unwrap()
        .to_string();
    let path = reg.blob_path(&layer);
    let mut bytes = fs::read(&path).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    fs::write(&path, bytes).unwrap();
    let err = ctx.fails(&[
        "pull",
        &pushed.line("pinned: "),
        "-o",
        s(&out),
        "--plain-http",
    ]);
    assert!(
        err.contains("failed verification") && err.contains(&layer),
        "{err}"
    );
    assert_nothing_written(&out);

    // A pinned digest that is not in the repository.
    let other = format!(
        "{}@sha256:{}",
        reg.reference("faults/filter"),
        "0".repeat(64)
    );
    let err = ctx.fails(&["pull", &other, "-o", s(&out), "--plain-http"]);
    assert!(err.contains("not found"), "{err}");
    assert_nothing_written(&out);

    // The registry not running.
    let host = reg.host();
    reg.stop();
    let err = ctx.fails(&["pull", &reference, "-o", s(&out), "--plain-http"]);
    assert!(
        err.contains(&format!("registry {host} is not reachable"))
            && err.contains("Connection refused"),
        "{err}"
    );
    assert_nothing_written(&out);
    // And HTTPS to a plain-HTTP registry says which flag to use.
    let reg2 = Registry::start();
    let err = ctx.fails(&["pull", &reg2.reference("x/y:v1"), "-o", s(&out)]);
    assert!(err.contains("--plain-http"), "{err}");
}

#[test]
fn push_refuses_bad_modules_before_uploading_anything() {
    let reg = Registry::start();
    let ctx = Ctx::new();
    let not_wasm = ctx.path("config.yaml");
    fs::write(&not_wasm, "key: value\n").unwrap();
    let err = ctx.fails(&[
        "push",
        &reg.reference("bad/a:v1"),
        s(&not_wasm),
        "--plain-http",
    ]);
    assert!(
        err.contains("config.yaml: not a valid WebAssembly module"),
        "{err}"
    );

    // Valid wasm, but no proxy_abi_version_* export: a minimal module exporting "main".
    let plain = ctx.path("plain.wasm");
    let mut m = vec![
        0x00, 0x61, 0x73, 0x6d, 0x01, 0, 0, 0, 0x01, 0x04, 0x01, 0x60, 0, 0, 0x03, 0x02, 0x01, 0x00,
    ];
    m.extend_from_slice(&[
        0x07, 0x08, 0x01, 0x04, b'm', b'a', b'i', b'n', 0x00, 0x00, 0x0a, 0x04, 0x01, 0x02, 0x00,
        0x0b,
    ]);
    fs::write(&plain, &m).unwrap();
    let err = ctx.fails(&[
        "push",
        &reg.reference("bad/b:v1"),
        s(&plain),
        "--plain-http",
    ]);
    assert!(
        err.contains("not a proxy-wasm module")
            && err.contains("exports: main")
            && err.contains("--force"),
        "{err}"
    );

    // Nothing reached the registry.
    let catalog = e2e::http1::get(reg.addr, "/v2/_catalog", &[])
        .unwrap()
        .text();
    assert!(catalog.contains(r#""repositories":[]"#), "{catalog}");

    // --force pushes it anyway, with a warning.
    let o = ctx.ok(&[
        "push",
        &reg.reference("bad/b:v1"),
        s(&plain),
        "--plain-http",
        "--force",
    ]);
    assert!(
        o.stderr.contains("warning: pushing anyway (--force)"),
        "{}",
        o.stderr
    );
}

#[test]
fn tags_annotations_config_file_and_pinned_pull() {
    let reg = Registry::start();
    let ctx = Ctx::new();
    let wasm = ctx.path("filter.wasm");
    fs::write(&wasm, filter()).unwrap();
    let config = runtime_config(&ctx);
    let o = ctx.ok(&[
        "push",
        &reg.reference("meta/filter:v1,stable"),
        s(&wasm),
        "-t",
        "latest",
        "--plain-http",
        "--config",
        s(&config),
        "--annotation",
        "org.opencontainers.image.source=https://example.com/filter",
    ]);
    let digest = o.line("digest: ");
    for tag in ["v1", "stable", "latest"] {
        let (d, manifest) = oras_manifest(&reg.reference(&format!("meta/filter:{tag}")));
        assert_eq!(d, digest, "tag {tag}");
        assert_eq!(
            manifest["annotations"]["org.opencontainers.image.source"],
            "https://example.com/filter"
        );
        assert_eq!(
            manifest["annotations"]["module.wasm.runtime/root_ids"],
            "my_root_id"
        );
        assert_eq!(manifest["config"]["mediaType"], SOLO_CONFIG);
        assert_eq!(
            manifest["layers"][0]["digest"],
            manifest["config"]["digest"]
        );
    }
    let out = ctx.path("pinned.wasm");
    ctx.ok(&["pull", &o.line("pinned: "), "-o", s(&out), "--plain-http"]);
    assert_eq!(fs::read(&out).unwrap(), filter());
    // A second push uploads nothing: the registry has every blob (HEAD before upload).
    let again = ctx.ok(&[
        "push",
        &reg.reference("meta/filter:v2"),
        s(&wasm),
        "--plain-http",
        "--config",
        s(&config),
        "--annotation",
        "org.opencontainers.image.source=https://example.com/filter",
    ]);
    assert!(
        again
            .stdout
            .contains("0 blob(s) uploaded, 2 already present"),
        "{}",
        again.stdout
    );
    assert_eq!(again.line("digest: "), digest, "same input, same digest");
    // Local inspect summarises a module file.
    let local = ctx.ok(&["inspect", s(&wasm)]);
    assert!(
        local
            .stdout
            .contains("proxy-wasm ABI: proxy_abi_version_0_2_1"),
        "{}",
        local.stdout
    );
}

#[test]
fn a_20_mb_module_pushes_and_pulls_in_chunks_both_ways() {
    let reg = Registry::start();
    let ctx = Ctx::new();
    let big = padded_filter(20 * 1000 * 1000);
    let wasm = ctx.path("big.wasm");
    fs::write(&wasm, &big).unwrap();
    let reference = reg.reference("big/filter:v1");
    let o = ctx.ok(&["push", &reference, s(&wasm), "--plain-http"]);
    // Not a terminal: no progress output.
    assert!(o.stderr.is_empty(), "{}", o.stderr);
    let out = ctx.path("out.wasm");
    let p = ctx.ok(&["pull", &reference, "-o", s(&out), "--plain-http"]);
    assert!(p.stderr.is_empty(), "{}", p.stderr);
    assert!(
        fs::read(&out).unwrap() == big,
        "20 MB module differs after the round trip"
    );
    let files = oras(&["pull", &reference, s(&ctx.path("oras"))]);
    assert!(files.contains("big.wasm"));
    assert!(
        fs::read(ctx.path("oras/big.wasm")).unwrap() == big,
        "oras-py got other bytes"
    );
    // A cap below the module's size refuses it before downloading.
    let err = ctx.fails(&[
        "pull",
        &reference,
        "-o",
        s(&ctx.path("capped.wasm")),
        "--plain-http",
        "--max-size",
        "1000000",
    ]);
    assert!(err.contains("over the 1000000-byte cap"), "{err}");
    assert_nothing_written(&ctx.path("capped.wasm"));
}
