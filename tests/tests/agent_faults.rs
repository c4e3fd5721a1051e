//! The node agent against a real registry that fails: down, 401, digest mismatch, unknown tag.
//! Each leaves the last good module in place and recovers once the fault is removed. Also: a
//! restart with a populated directory downloads nothing, a ConfigMap-style `..data` swap is seen,
//! and removed entries are deleted only after the grace period.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use e2e::agent::{Agent, FAST, link_target, push, sha256_file, write_atomic};
use e2e::registry::Registry;
use std::fs;
use std::os::unix::fs::MetadataExt as _;
use std::path::Path;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(30);

fn one(name: &str, image: &str) -> String {
    format!("images:\n  - name: {name}\n    image: {image}\n")
}

fn sha_of(a: &Agent, name: &str) -> String {
    a.image(name)["sha256"].as_str().unwrap_or("").to_string()
}

fn failing_with(a: &Agent, name: &str, text: &str) -> bool {
    let i = a.image(name);
    i["state"] == "failing" && i["lastError"].as_str().is_some_and(|e| e.contains(text))
}

/// The module in place is still `sha`: status, link and file content.
fn kept(a: &Agent, dir: &Path, name: &str, sha: &str) {
    assert_eq!(sha_of(a, name), sha, "{}", a.log());
    linked(dir, name, sha);
}

/// `DIR/<name>.wasm` is a link to the module file of `sha`.
fn linked(dir: &Path, name: &str, sha: &str) {
    assert_eq!(
        link_target(dir, name).as_deref(),
        Some(format!("{sha}.wasm").as_str())
    );
    assert_eq!(sha256_file(&dir.join(format!("{name}.wasm"))), sha);
}

#[test]
fn registry_down_digest_mismatch_and_unknown_tag_keep_the_last_good_module() {
    let mut reg = Registry::start();
    let v1_ref = reg.reference("filters/h:v1");
    push(&v1_ref, &e2e::filter_wasm(), "my_root_id", &[]);
    let work = tempfile::tempdir().unwrap();
    let (list, dir) = (work.path().join("images.yaml"), work.path().join("modules"));
    write_atomic(&list, &one("h", &v1_ref));
    let a = Agent::start(&list, &dir, &FAST);
    a.wait_for("v1 in place", WAIT, Agent::ready);
    let v1 = sha_of(&a, "h");
    assert_eq!(v1, sha256_file(&e2e::filter_wasm()));
    kept(&a, &dir, "h", &v1);

    // Down: connection refused; the module stays; the same registry back: recovered.
    reg.stop();
    a.wait_for("registry-down failure", WAIT, |a| {
        failing_with(a, "h", "not reachable")
    });
    kept(&a, &dir, "h", &v1);
    assert!(a.ready(), "a module is in place: still ready");
    reg.restart();
    a.wait_for("recovery after the registry came back", WAIT, |a| {
        a.image("h")["state"] == "ok"
    });
    assert!(!a.events("recovered").is_empty());

    // Digest mismatch: v2 (other code) under the tag, with its layer corrupted in storage.
    let v2_wasm = e2e::callout_wasm();
    let v2 = sha256_file(&v2_wasm);
    let staged = reg.reference("filters/h:staging");
    push(&staged, &v2_wasm, "", &[]);
    let blob = reg.blob_path(&format!("sha256:{v2}"));
    let good = fs::read(&blob).unwrap();
    let mut bad = good.clone();
    bad[100] ^= 0xff;
    fs::write(&blob, &bad).unwrap();
    push(&v1_ref, &v2_wasm, "", &[]); // the blob exists: only the tag moves
    a.wait_for("digest mismatch", WAIT, |a| {
        failing_with(a, "h", "failed verification")
    });
    kept(&a, &dir, "h", &v1);
    assert!(!dir.join(format!("{v2}.wasm")).exists());
    fs::write(&blob, &good).unwrap();
    a.wait_for("v2 after the blob was repaired", WAIT, |a| {
        sha_of(a, "h") == v2 && a.image("h")["state"] == "ok"
    });
    kept(&a, &dir, "h", &v2);

    // Unknown tag: the list names a tag that does not exist yet; v2 stays until it is pushed.
    let missing = reg.reference("filters/h:v3");
    write_atomic(&list, &one("h", &missing));
    a.wait_for("unknown tag", WAIT, |a| failing_with(a, "h", "not found"));
    kept(&a, &dir, "h", &v2);
    assert!(!a.ready(), "the listed image has no module yet");
    push(&missing, &e2e::filter_wasm(), "my_root_id", &[]);
    a.wait_for("v3 in place", WAIT, |a| a.ready() && sha_of(a, "h") == v1);
    kept(&a, &dir, "h", &v1);
    let failed = a.events("failed");
    assert!(
        failed
            .iter()
            .any(|l| l.contains("image=") && l.contains("kept=")),
        "{failed:?}"
    );
}

#[test]
fn wrong_or_missing_credentials_keep_the_last_good_module() {
    let reg = Registry::start_with_htpasswd("alice", "s3cret");
    let reference = reg.reference("filters/h:v1");
    let work = tempfile::tempdir().unwrap();
    let secrets = work.path().join("secrets");
    let secret = secrets.join("regcred");
    fs::create_dir_all(&secret).unwrap();
    let dockerconfig = |user: &str, password: &str| {
        let auth = e2e::agent::base64(&format!("{user}:{password}"));
        format!(
            "{{\"auths\":{{\"{}\":{{\"auth\":\"{auth}\"}}}}}}",
            reg.host()
        )
    };
    let secret_file = secret.join(".dockerconfigjson");
    write_atomic(&secret_file, &dockerconfig("alice", "s3cret"));
    // Push with the same credentials.
    e2e::agent::wasmctl(&[
        "push",
        &reference,
        &e2e::filter_wasm().to_string_lossy(),
        "--root-id",
        "my_root_id",
        "--plain-http",
        "-q",
        "--registry-config",
        &secret_file.to_string_lossy(),
    ]);
    let (list, dir) = (work.path().join("images.yaml"), work.path().join("modules"));
    write_atomic(
        &list,
        &format!("images:\n  - name: h\n    image: {reference}\n    pullSecret: regcred\n"),
    );
    let mut args = FAST.to_vec();
    let secrets_arg = secrets.to_string_lossy().into_owned();
    args.extend(["--secrets-dir", &secrets_arg]);
    let a = Agent::start(&list, &dir, &args);
    a.wait_for("v1 in place", WAIT, Agent::ready);
    let v1 = sha_of(&a, "h");

    // Wrong password: 401 naming the user and the secret file, never the password.
    write_atomic(&secret_file, &dockerconfig("alice", "wrong"));
    a.wait_for("401", WAIT, |a| failing_with(a, "h", "401"));
    let err = a.image("h")["lastError"].as_str().unwrap().to_string();
    assert!(err.contains("alice") && err.contains("regcred"), "{err}");
    assert!(!a.log().contains("wrong"), "the password was logged");
    kept(&a, &dir, "h", &v1);

    // No credentials at all.
    fs::remove_file(&secret_file).unwrap();
    a.wait_for("401 without credentials", WAIT, |a| {
        failing_with(a, "h", "no credentials were sent")
    });
    kept(&a, &dir, "h", &v1);

    // Fixed: recovered.
    write_atomic(&secret_file, &dockerconfig("alice", "s3cret"));
    a.wait_for("recovery", WAIT, |a| a.image("h")["state"] == "ok");
    kept(&a, &dir, "h", &v1);
}

#[test]
fn a_restart_with_a_populated_directory_downloads_nothing() {
    let reg = Registry::start();
    let reference = reg.reference("filters/h:v1");
    let pushed = push(&reference, &e2e::filter_wasm(), "my_root_id", &[]);
    let work = tempfile::tempdir().unwrap();
    let (list, dir) = (work.path().join("images.yaml"), work.path().join("modules"));
    write_atomic(&list, &one("h", &reference));
    let mut a = Agent::start(&list, &dir, &FAST);
    a.wait_for("v1 in place", WAIT, Agent::ready);
    assert_eq!(a.metric("wasm_agent_pulls_total", "h"), Some(1.0));
    // At least the module's own bytes were downloaded (with the manifest and config, more).
    let module_bytes = fs::metadata(e2e::filter_wasm()).unwrap().len() as f64;
    assert!(a.metric("wasm_agent_pull_bytes_total", "h").unwrap() >= module_bytes);
    let sha = sha_of(&a, "h");
    let file = dir.join(format!("{sha}.wasm"));
    let inode = fs::metadata(&file).unwrap().ino();
    let status = a.terminate();
    assert!(status.success(), "SIGTERM: {status}\n{}", a.log());
    assert_eq!(a.events("stopped").len(), 1, "{}", a.log());

    // Any download now fails verification: the module's blob in the registry is corrupted.
    let blob = reg.blob_path(&format!("sha256:{sha}"));
    let mut bytes = fs::read(&blob).unwrap();
    bytes[10] ^= 0xff;
    fs::write(&blob, &bytes).unwrap();

    let b = Agent::start(&list, &dir, &FAST);
    let health = e2e::http1::get(b.addr, "/healthz", &[]).unwrap();
    assert_eq!((health.status(), health.text().as_str()), (200, "ok\n"));
    let nothing = e2e::http1::get(b.addr, "/nothing", &[]).unwrap();
    assert_eq!(nothing.status(), 404);
    b.wait_for("a resolve", WAIT, |b| {
        b.metric("wasm_agent_resolves_total", "h")
            .is_some_and(|n| n >= 2.0)
    });
    assert!(b.ready());
    assert_eq!(b.metric("wasm_agent_pulls_total", "h"), Some(0.0));
    assert_eq!(b.metric("wasm_agent_pull_bytes_total", "h"), Some(0.0));
    assert_eq!(
        b.metric("wasm_agent_failures_total", "h"),
        Some(0.0),
        "{}",
        b.log()
    );
    assert_eq!(b.image("h")["manifestDigest"], pushed.as_str());
    assert_eq!(
        fs::metadata(&file).unwrap().ino(),
        inode,
        "the module was rewritten"
    );
    assert!(b.events("updated").is_empty(), "{}", b.log());
}

#[test]
fn configmap_swaps_are_seen_and_removed_entries_go_after_the_grace_period() {
    let reg = Registry::start();
    let (a_ref, b_ref) = (reg.reference("filters/a:v1"), reg.reference("filters/b:v1"));
    let a_digest = push(&a_ref, &e2e::filter_wasm(), "my_root_id", &[]);
    push(&b_ref, &e2e::callout_wasm(), "", &[]);
    let a_by_digest = format!("manifest-{}", a_digest.replacen(':', "-", 1));
    let work = tempfile::tempdir().unwrap();
    let (cm, dir) = (work.path().join("images"), work.path().join("modules"));
    fs::create_dir_all(&cm).unwrap();
    // The layout kubelet gives a mounted ConfigMap: key -> ..data/key, ..data -> ..<timestamp>.
    let publish = |version: &str, text: &str| {
        let d = cm.join(format!("..{version}"));
        fs::create_dir_all(&d).unwrap();
        fs::write(d.join("images.txt"), text).unwrap();
        let tmp = cm.join("..data_tmp");
        std::os::unix::fs::symlink(format!("..{version}"), &tmp).unwrap();
        fs::rename(&tmp, cm.join("..data")).unwrap();
    };
    publish("2026_11_25_01", &format!("# plain lines\n{a_ref}\n"));
    std::os::unix::fs::symlink("..data/images.txt", cm.join("images.txt")).unwrap();
    let mut args = FAST.to_vec();
    args.extend(["--grace", "2s"]);
    let ag = Agent::start(&cm.join("images.txt"), &dir, &args);
    ag.wait_for("a in place", WAIT, Agent::ready);
    let a_sha = sha_of(&ag, "a");
    // Its manifest digest's link too (what `render --no-resolve` of a pinned image names).
    linked(&dir, &a_by_digest, &a_sha);

    publish("2026_11_25_02", &format!("{a_ref}\nb {b_ref}\n"));
    ag.wait_for("b in place", WAIT, |g| {
        g.ready() && g.image("b")["state"] == "ok"
    });
    let b_sha = sha_of(&ag, "b");
    kept(&ag, &dir, "b", &b_sha);

    // A list that does not parse: reported, the previous list kept.
    publish("2026_11_25_03", "images:\n  - name: Bad!\n    image: x\n");
    ag.wait_for("list error", WAIT, |g| {
        g.status()["listError"]
            .as_str()
            .is_some_and(|e| e.contains("images[0]"))
    });
    kept(&ag, &dir, "a", &a_sha);
    kept(&ag, &dir, "b", &b_sha);

    // a leaves the list: its link and module stay for the grace period, then go; b stays.
    publish("2026_11_25_04", &format!("b {b_ref}\n"));
    ag.wait_for("a unlisted", WAIT, |g| !g.events("unlisted").is_empty());
    assert!(
        dir.join("a.wasm").exists(),
        "deleted before the grace period"
    );
    assert!(dir.join(format!("{a_by_digest}.wasm")).exists());
    ag.wait_for("a deleted", WAIT, |_| {
        !dir.join("a.wasm").exists() && !dir.join(format!("{a_sha}.wasm")).exists()
    });
    assert!(
        fs::symlink_metadata(dir.join(format!("{a_by_digest}.wasm"))).is_err(),
        "the digest link outlived its module"
    );
    kept(&ag, &dir, "b", &b_sha);
    assert!(ag.ready());
    // The entry's link, its digest's link, its module.
    assert_eq!(ag.events("deleted").len(), 3, "{}", ag.log());
}

#[test]
fn a_pinned_digest_is_requested_once() {
    let reg = Registry::start();
    let reference = reg.reference("filters/h:v1");
    let digest = push(&reference, &e2e::filter_wasm(), "my_root_id", &[]);
    let pinned = reg.reference(&format!("filters/h@{digest}"));
    let work = tempfile::tempdir().unwrap();
    let (list, dir) = (work.path().join("images.yaml"), work.path().join("modules"));
    write_atomic(&list, &format!("h {pinned}\n"));
    let a = Agent::start(&list, &dir, &FAST);
    a.wait_for("h in place", WAIT, Agent::ready);
    let first = a.image("h")["lastSuccess"].clone();
    a.wait_for("two more resync periods", WAIT, |a| {
        a.image("h")["lastSuccess"] != first
    });
    let again = a.image("h")["lastSuccess"].clone();
    a.wait_for("one more", WAIT, |a| a.image("h")["lastSuccess"] != again);
    assert_eq!(a.metric("wasm_agent_resolves_total", "h"), Some(1.0));
    assert_eq!(a.metric("wasm_agent_pulls_total", "h"), Some(1.0));
    kept(&a, &dir, "h", &sha256_file(&e2e::filter_wasm()));
    let by_digest = format!("manifest-{}", digest.replacen(':', "-", 1));
    linked(&dir, &by_digest, &sha256_file(&e2e::filter_wasm()));
    // `render --no-resolve` of a FilterDeployment pinned to that digest names exactly that
    // file, which this agent holds: a new digest renders a new EnvoyFilter that a running
    // sidecar can load.
    let fd = work.path().join("fd.yaml");
    fs::write(
        &fd,
        format!(
            "apiVersion: filters.envoy-wasm-toolkit.io/v1alpha1\nkind: FilterDeployment\n\
             metadata: {{name: h, namespace: default}}\n\
             spec:\n  workload: {{labels: {{app: h}}}}\n  filter: {{image: {pinned}, rootId: my_root_id}}\n"
        ),
    )
    .unwrap();
    let out = std::process::Command::new(e2e::wasmctl_bin())
        .args(["render", "--no-resolve"])
        .arg(&fd)
        .output()
        .unwrap();
    let rendered = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let file = rendered
        .lines()
        .find_map(|l| {
            l.trim()
                .strip_prefix("filename: /var/local/lib/wasm-filters/")
        })
        .unwrap_or_else(|| panic!("no node file in: {rendered}"));
    assert_eq!(file, format!("{by_digest}.wasm"), "{rendered}");
    assert_eq!(
        sha256_file(&dir.join(file)),
        sha256_file(&e2e::filter_wasm())
    );
}

#[test]
fn a_failed_write_keeps_the_last_good_module() {
    let reg = Registry::start();
    let reference = reg.reference("filters/h:v1");
    push(&reference, &e2e::filter_wasm(), "my_root_id", &[]);
    let work = tempfile::tempdir().unwrap();
    let (list, dir) = (work.path().join("images.yaml"), work.path().join("modules"));
    write_atomic(&list, &one("h", &reference));
    let a = Agent::start(&list, &dir, &FAST);
    a.wait_for("v1 in place", WAIT, Agent::ready);
    let v1 = sha_of(&a, "h");

    // The new module's file name is taken by a directory: the write fails as on a full or
    // broken disk, and nothing in place changes.
    let v2_wasm = e2e::callout_wasm();
    let v2 = sha256_file(&v2_wasm);
    let blocker = dir.join(format!("{v2}.wasm"));
    fs::create_dir(&blocker).unwrap();
    push(&reference, &v2_wasm, "", &[]);
    a.wait_for("write failure", WAIT, |a| {
        failing_with(a, "h", "cannot rename into place")
    });
    kept(&a, &dir, "h", &v1);
    let leftovers: Vec<_> = fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");
    fs::remove_dir(&blocker).unwrap();
    a.wait_for("v2 after the fault is gone", WAIT, |a| {
        sha_of(a, "h") == v2 && a.image("h")["state"] == "ok"
    });
    kept(&a, &dir, "h", &v2);
}

#[test]
fn an_ecds_file_that_cannot_be_written_is_reported_and_retried() {
    let reg = Registry::start();
    let reference = reg.reference("filters/h:v1");
    push(&reference, &e2e::filter_wasm(), "my_root_id", &[]);
    let work = tempfile::tempdir().unwrap();
    let (list, dir) = (work.path().join("images.yaml"), work.path().join("modules"));
    // The ECDS file's directory is taken by a plain file.
    let blocker = work.path().join("ecds");
    fs::write(&blocker, "not a directory").unwrap();
    let ecds = blocker.join("h.yaml");
    write_atomic(
        &list,
        &format!(
            "images:\n  - name: h\n    image: {reference}\n    ecds: {{file: {}, configuration: x}}\n",
            ecds.display()
        ),
    );
    let a = Agent::start(&list, &dir, &FAST);
    a.wait_for("ECDS failure", WAIT, |a| failing_with(a, "h", "ECDS file"));
    kept(&a, &dir, "h", &sha256_file(&e2e::filter_wasm()));
    fs::remove_file(&blocker).unwrap();
    a.wait_for("ECDS written", WAIT, |a| {
        a.image("h")["state"] == "ok" && ecds.exists()
    });
    assert!(
        fs::read_to_string(&ecds)
            .unwrap()
            .contains("\"root_id\": \"my_root_id\"")
    );
}

#[test]
fn a_failing_entry_does_not_hold_up_the_others() {
    let reg = Registry::start();
    let good = reg.reference("filters/good:v1");
    push(&good, &e2e::filter_wasm(), "my_root_id", &[]);
    let work = tempfile::tempdir().unwrap();
    let (list, dir) = (work.path().join("images.yaml"), work.path().join("modules"));
    let absent = reg.reference("filters/absent:v1");
    write_atomic(&list, &format!("good {good}\nabsent {absent}\n"));
    let a = Agent::start(&list, &dir, &FAST);
    a.wait_for("good in place, absent failing", WAIT, |a| {
        a.image("good")["state"] == "ok" && failing_with(a, "absent", "does not exist")
    });
    assert!(!a.ready(), "absent has no module");
    let v2_wasm = e2e::callout_wasm();
    push(&good, &v2_wasm, "", &[]);
    let v2 = sha256_file(&v2_wasm);
    a.wait_for("good updated while absent keeps failing", WAIT, |a| {
        sha_of(a, "good") == v2 && failing_with(a, "absent", "does not exist")
    });
    kept(&a, &dir, "good", &v2);
    assert!(!dir.join("absent.wasm").exists());
}

/// The image-list ConfigMap is mounted optional and exists only once something is deployed: an
/// absent list is an empty one (ready, holding nothing), and the list appearing later is loaded.
#[test]
fn an_absent_image_list_is_empty_until_it_appears() {
    let reg = Registry::start();
    let image = reg.reference("filters/header:v1");
    let sha = sha256_file(&e2e::filter_wasm());
    push(&image, &e2e::filter_wasm(), "my_root_id", &[]);
    let work = tempfile::tempdir().unwrap();
    let list = work.path().join("images.yaml");
    let dir = work.path().join("node");
    let a = Agent::start(&list, &dir, &FAST);
    let status = a.status();
    assert_eq!(status["ready"], true, "{status}");
    assert_eq!(status["listError"], serde_json::Value::Null, "{status}");
    assert_eq!(status["images"], serde_json::json!([]), "{status}");
    write_atomic(&list, &one("default.details", &image));
    a.wait_for("the module of the list that appeared", WAIT, |a| {
        sha_of(a, "default.details") == sha
    });
    kept(&a, &dir, "default.details", &sha);
}
