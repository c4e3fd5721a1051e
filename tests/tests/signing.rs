//! `wasmctl sign` and `verify` against the real cosign CLI (built from its Go module by
//! `scripts/cosign-build`) and a real registry, offline: no transparency log, no certificate
//! authority. Each tool verifies what the other signed, with cosign's own key files; and
//! `verify` refuses, naming why, an unsigned image, another key, a tag moved to a new digest
//! after signing, and a signature payload changed in the registry's storage.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use e2e::agent::push;
use e2e::registry::Registry;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const PASSWORD: &str = "sign-Me-5";

/// cosign, offline and without a home of its own: its TUF cache in `dir`, the key password set.
fn cosign(dir: &Path, args: &[&str]) -> Output {
    let bin = e2e::cosign_bin();
    Command::new(&bin)
        .args(args)
        .current_dir(dir)
        .env("COSIGN_PASSWORD", PASSWORD)
        .env("HOME", dir)
        .env("TUF_ROOT", dir.join("tuf"))
        .env("SIGSTORE_NO_CACHE", "true")
        .output()
        .unwrap_or_else(|e| panic!("{}: {e}", bin.display()))
}

fn ok(what: &str, out: Output) -> String {
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{text}",
        out.status
    );
    text
}

/// A cosign key pair in `dir/NAME.key` and `dir/NAME.pub`, made by cosign itself.
fn key_pair(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    let sub = dir.join(name);
    std::fs::create_dir_all(&sub).unwrap();
    ok(
        "cosign generate-key-pair",
        cosign(&sub, &["generate-key-pair"]),
    );
    (sub.join("cosign.key"), sub.join("cosign.pub"))
}

fn wasmctl(args: &[&str]) -> Output {
    Command::new(e2e::wasmctl_bin())
        .args(args)
        .env("COSIGN_PASSWORD", PASSWORD)
        .output()
        .unwrap()
}

fn verify(reference: &str, key: &Path) -> Output {
    wasmctl(&[
        "verify",
        reference,
        "--key",
        key.to_str().unwrap(),
        "--plain-http",
    ])
}

/// `wasmctl sign --plain-http IMAGE --key KEY EXTRA`, which must succeed; its output.
fn wasmctl_sign(image: &str, key: &Path, extra: &[&str]) -> String {
    let mut args = vec![
        "sign",
        image,
        "--key",
        key.to_str().unwrap(),
        "--plain-http",
    ];
    args.extend(extra);
    ok("wasmctl sign", wasmctl(&args))
}

/// `wasmctl verify` fails, and its message contains `reason`.
fn refused(reference: &str, key: &Path, reason: &str) -> String {
    let out = verify(reference, key);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        !out.status.success(),
        "verify accepted {reference}:\n{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(err.contains(reason), "expected {reason:?} in:\n{err}");
    assert!(err.contains("is not verified"), "{err}");
    err
}

#[test]
fn cosign_and_wasmctl_verify_each_others_signatures_and_refusals_say_why() {
    let reg = Registry::start();
    let work = tempfile::tempdir().unwrap();
    let (key, public) = key_pair(work.path(), "team");
    let (_, other_public) = key_pair(work.path(), "other");
    let cosign_flags = ["--allow-http-registry", "--allow-insecure-registry"];

    // cosign signs, wasmctl verifies.
    let a = reg.reference("filters/by-cosign:v1");
    let a_digest = push(&a, &e2e::filter_wasm(), "my_root_id", &[]);
    let a_pinned = format!("{}@{a_digest}", reg.reference("filters/by-cosign"));
    let mut args = vec![
        "sign",
        "--key",
        key.to_str().unwrap(),
        "--tlog-upload=false",
        "--yes",
        "-a",
        "built-by=ci",
    ];
    args.extend(cosign_flags);
    args.push(&a_pinned);
    ok("cosign sign", cosign(work.path(), &args));
    let out = ok("wasmctl verify", verify(&a, &public));
    assert!(out.contains(&format!("verified: {a_digest}")), "{out}");
    assert!(out.contains("built-by=ci"), "{out}");

    // wasmctl signs, cosign verifies (and so does wasmctl).
    let b = reg.reference("filters/by-wasmctl:v1");
    let b_digest = push(
        &b,
        &e2e::filter_wasm(),
        "my_root_id",
        &["--format", "compat"],
    );
    let out = wasmctl_sign(&b, &key, &["-a", "team=mesh"]);
    assert!(out.contains(&format!("signed: {b_digest}")), "{out}");
    let mut args = vec![
        "verify",
        "--key",
        public.to_str().unwrap(),
        "--insecure-ignore-tlog=true",
    ];
    args.extend(cosign_flags);
    args.push(&b);
    let out = ok("cosign verify", cosign(work.path(), &args));
    assert!(out.contains(&b_digest), "{out}");
    assert!(out.contains("\"team\":\"mesh\""), "{out}");
    ok("wasmctl verify", verify(&b, &public));
    // cosign refuses another key too: the format is the same on both sides.
    let mut args = vec![
        "verify",
        "--key",
        other_public.to_str().unwrap(),
        "--insecure-ignore-tlog=true",
    ];
    args.extend(cosign_flags);
    args.push(&b);
    assert!(!cosign(work.path(), &args).status.success());

    // Refusals.
    let unsigned = reg.reference("filters/unsigned:v1");
    push(&unsigned, &e2e::filter_wasm(), "my_root_id", &[]);
    refused(&unsigned, &public, "no signature");
    refused(&b, &other_public, "does not verify with this key");
    // The tag moved to other code after signing: its new digest has no signature.
    push(&b, &e2e::minimal_wasm(), "", &[]);
    refused(&b, &public, "no signature");
    // The old digest still verifies, pinned.
    let b_pinned = format!("{}@{b_digest}", reg.reference("filters/by-wasmctl"));
    ok(
        "wasmctl verify of the old digest",
        verify(&b_pinned, &public),
    );
    // The payload changed in the registry's storage: its bytes no longer match the digest the
    // signature manifest names, and nothing else verifies.
    let sig_manifest = ok(
        "the signature manifest, read with curl",
        Command::new("curl")
            .args([
                "-sf",
                "-H",
                "Accept: application/vnd.oci.image.manifest.v1+json",
                &format!(
                    "http://{}/v2/filters/by-cosign/manifests/{}",
                    reg.host(),
                    a_digest.replacen(':', "-", 1) + ".sig"
                ),
            ])
            .output()
            .unwrap(),
    );
    let m: serde_json::Value = serde_json::from_str(&sig_manifest).unwrap();
    let payload = m["layers"][0]["digest"].as_str().unwrap();
    let file = reg.blob_path(payload);
    let text = std::fs::read_to_string(&file).unwrap();
    std::fs::write(&file, text.replace("built-by", "built-xy")).unwrap();
    refused(&a, &public, "the payload's bytes do not match its digest");
}

/// The node agent with a verification key: it pulls a signed digest; a tag re-pushed with
/// unsigned code leaves the last good module in place (and says why in status, log and
/// metrics); signing the new digest lets it through.
#[test]
fn the_agent_pulls_only_signed_digests_and_keeps_the_last_good_module() {
    use e2e::agent::{Agent, FAST, link_target, sha256_file, write_atomic};
    let reg = Registry::start();
    let work = tempfile::tempdir().unwrap();
    let (key, public) = key_pair(work.path(), "team");
    let image = reg.reference("filters/header:v1");
    push(&image, &e2e::filter_wasm(), "my_root_id", &[]);
    let sign = || wasmctl_sign(&image, &key, &[]);
    sign();
    let list = work.path().join("images.yaml");
    write_atomic(
        &list,
        &format!(
            "images:\n  - name: default.signed\n    image: {image}\n    verifyKey: {}\n",
            public.display()
        ),
    );
    let dir = work.path().join("node");
    let agent = Agent::start(&list, &dir, &FAST);
    let wait = std::time::Duration::from_secs(30);
    let v1 = sha256_file(&e2e::filter_wasm());
    let sha = |a: &Agent| {
        a.image("default.signed")["sha256"]
            .as_str()
            .unwrap_or("")
            .to_string()
    };
    agent.wait_for("the signed module", wait, |a| sha(a) == v1);

    // The tag now names other code, unsigned: refused, the signed module stays.
    push(&image, &e2e::minimal_wasm(), "", &[]);
    agent.wait_for("the unsigned digest refused", wait, |a| {
        let i = a.image("default.signed");
        i["state"] == "failing"
            && i["lastError"]
                .as_str()
                .is_some_and(|e| e.contains("is not verified") && e.contains("no signature"))
    });
    assert_eq!(sha(&agent), v1);
    assert_eq!(
        link_target(&dir, "default.signed").as_deref(),
        Some(format!("{v1}.wasm").as_str())
    );
    assert_eq!(sha256_file(&dir.join("default.signed.wasm")), v1);
    assert!(
        agent
            .metric("wasm_agent_failures_total", "default.signed")
            .is_some_and(|n| n >= 1.0),
        "{}",
        agent.metrics()
    );
    assert!(agent.log().contains("is not verified"), "{}", agent.log());
    assert!(
        !dir.join(format!("{}.wasm", sha256_file(&e2e::minimal_wasm())))
            .exists(),
        "the unsigned module was written to the node directory"
    );

    // Signed: it goes through.
    sign();
    let v2 = sha256_file(&e2e::minimal_wasm());
    agent.wait_for("the newly signed module", wait, |a| sha(a) == v2);
    assert_eq!(sha256_file(&dir.join("default.signed.wasm")), v2);
}

/// `spec.filter.verification` through the real API server: the controller (with its own
/// service account and RBAC) applies a signed digest, reports `Ready=False`,
/// `SignatureNotVerified` for an unsigned re-push while the WasmPlugin keeps the signed digest,
/// and applies the new digest once it is signed. `render` needs the key given to it.
#[test]
fn the_controller_and_render_apply_only_signed_digests() {
    use e2e::controller::Controller;
    use e2e::controlplane::ControlPlane;
    use e2e::mesh::{PROPAGATION, apply_manifests, example};
    use serde_json::Value;

    let cp = ControlPlane::start();
    let reg = Registry::start();
    let work = tempfile::tempdir().unwrap();
    let (key, public) = key_pair(work.path(), "team");
    let image = reg.reference("filters/header-filter:v1");
    let v1 = push(&image, &e2e::filter_wasm(), "my_root_id", &[]);
    let sign = || wasmctl_sign(&image, &key, &[]);
    sign();
    let fd = example(
        "bookinfo-details-wasmplugin",
        &reg,
        "filters/header-filter:v1",
    )
    .replace(
        "    rootId: my_root_id\n",
        "    rootId: my_root_id\n    verification:\n      keyRef: {kind: ConfigMap, name: filter-keys}\n",
    );
    let fd_file = work.path().join("fd.yaml");
    std::fs::write(&fd_file, &fd).unwrap();

    // render: the key is in the cluster, so render must be given it.
    let render = |extra: &[&str]| {
        let mut args = vec!["render", fd_file.to_str().unwrap(), "--plain-http"];
        args.extend(extra);
        wasmctl(&args)
    };
    let out = render(&[]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("spec.filter.verification") && err.contains("--verify-key"),
        "{err}"
    );
    let out = ok(
        "wasmctl render --verify-key",
        render(&["--verify-key", public.to_str().unwrap()]),
    );
    assert!(out.contains(&format!("@{v1}")), "{out}");

    apply_manifests(&cp);
    cp.kubectl_ok(&[
        "create",
        "configmap",
        "filter-keys",
        "-n",
        "default",
        &format!("--from-file=cosign.pub={}", public.display()),
    ]);
    let controller = Controller::start_with(
        &cp.kubeconfig_for("wasm-system", "wasmctl-controller"),
        &e2e::controller::FAST,
    );
    cp.apply(&fd).unwrap();
    let status = |cp: &ControlPlane| -> Value {
        let text = cp.kubectl_ok(&[
            "get",
            "filterdeployment",
            "-n",
            "default",
            "details-v1-wasmplugin",
            "-o",
            "json",
        ]);
        serde_json::from_str::<Value>(&text).unwrap()["status"].clone()
    };
    let ready = |s: &Value| {
        let c = &s["conditions"][0];
        (
            c["status"].as_str().unwrap_or("").to_string(),
            c["reason"].as_str().unwrap_or("").to_string(),
            c["message"].as_str().unwrap_or("").to_string(),
        )
    };
    let wait = |what: &str, f: &dyn Fn(&Value) -> bool| {
        let mut last = Value::Null;
        let seen = e2e::poll_until(std::time::Instant::now() + PROPAGATION, || {
            last = status(&cp);
            f(&last).then_some(())
        });
        assert!(
            seen.is_some(),
            "{what}: {last}\n---- controller ----\n{}",
            controller.log()
        );
        last
    };
    let url = |cp: &ControlPlane| {
        cp.kubectl_ok(&[
            "get",
            "wasmplugin",
            "-n",
            "default",
            "details-v1-wasmplugin",
            "-o",
            "jsonpath={.spec.url}",
        ])
    };
    wait("the signed digest applied", &|s| {
        ready(s).0 == "True" && s["digest"] == v1.as_str()
    });
    assert!(url(&cp).ends_with(&format!("@{v1}")), "{}", url(&cp));

    // An unsigned re-push of the tag: refused with the reason, the WasmPlugin unchanged.
    let v2 = push(
        &image,
        &e2e::filter_wasm(),
        "my_root_id",
        &["--format", "compat"],
    );
    assert_ne!(v1, v2);
    let s = wait("the unsigned digest refused", &|s| {
        ready(s).1 == "SignatureNotVerified"
    });
    let (st, _, message) = ready(&s);
    assert_eq!(st, "False", "{s}");
    assert!(
        message.contains(&v2) && message.contains("no signature"),
        "{message}"
    );
    assert_eq!(s["digest"], v1.as_str(), "the signed digest still serves");
    assert!(url(&cp).ends_with(&format!("@{v1}")), "{}", url(&cp));

    // Signed: applied.
    sign();
    wait("the newly signed digest applied", &|s| {
        ready(s).0 == "True" && s["digest"] == v2.as_str()
    });
    assert!(url(&cp).ends_with(&format!("@{v2}")), "{}", url(&cp));
}
