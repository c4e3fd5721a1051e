//! What the Istio tests share: the examples of `manifests/examples` pointed at a local
//! registry, `wasmctl render` and `kubectl apply`, the node agent fed from the API server, and a
//! bounded load that tells the old filter from the new.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::agent::{self, Agent};
use crate::controlplane::ControlPlane;
use crate::http1::Message;
use crate::load::{Load, Report};
use crate::registry::Registry;
use crate::sidecar::Sidecar;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// How long a change may take from `kubectl apply` to the sidecar serving it (istiod debounces
/// pushes for 100 ms; a remote module is fetched and compiled by V8).
pub const PROPAGATION: Duration = Duration::from_secs(60);

/// The labels of bookinfo's details-v1.
pub const DETAILS: &[(&str, &str)] = &[("app", "details"), ("version", "v1")];

/// `manifests/examples`.
pub fn examples() -> PathBuf {
    crate::workspace_root().join("manifests/examples")
}

/// The `hello` response header the examples' filter adds.
pub fn hello(r: &Message) -> Option<&str> {
    r.header("hello")
}

/// The example's FilterDeployment with the image in `registry` and no pull secret (the
/// registry is anonymous unless a test says otherwise).
pub fn example(name: &str, registry: &Registry, image: &str) -> String {
    example_with(name, registry, image, false)
}

/// [`example`], keeping the example's `pullSecret: regcred` when `pull_secret`.
pub fn example_with(name: &str, registry: &Registry, image: &str, pull_secret: bool) -> String {
    let text = fs::read_to_string(examples().join(name).join("filterdeployment.yaml")).unwrap();
    let mut out = String::new();
    for line in text.lines() {
        let t = line.trim_start();
        if t.starts_with("pullSecret:") && !pull_secret {
            continue;
        }
        if t.starts_with("image:") {
            let indent = &line[..line.len() - t.len()];
            out.push_str(&format!("{indent}image: {}\n", registry.reference(image)));
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

/// `wasmctl render --plain-http FILES...` (tags pinned to digests, parameters checked against
/// the pulled module), with the registry credentials of `work/docker/config.json` if any.
pub fn render(work: &Path, files: &[(&str, &str)]) -> String {
    let mut args = vec!["render".to_string(), "--plain-http".to_string()];
    for (name, text) in files {
        let p = work.join(name);
        fs::write(&p, text).unwrap();
        args.push(p.display().to_string());
    }
    wasmctl_in(work, &args)
}

/// The bookinfo-details example's FilterDeployment `fd` rendered with its workload.yaml (so the
/// Deployment is printed whole, with the volume annotations added).
pub fn render_details(work: &Path, fd: &str) -> String {
    let workload = fs::read_to_string(examples().join("bookinfo-details/workload.yaml")).unwrap();
    render(work, &[("fd.yaml", fd), ("workload.yaml", &workload)])
}

/// `wasmctl ARGS` with `DOCKER_CONFIG=work/docker`; stdout, or the test fails with stderr.
pub fn wasmctl_in(work: &Path, args: &[String]) -> String {
    let out = std::process::Command::new(crate::wasmctl_bin())
        .args(args)
        .env("DOCKER_CONFIG", work.join("docker"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "wasmctl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `kubectl apply --server-side -k manifests/`: the CRD and the agent's manifests.
pub fn apply_manifests(cp: &ControlPlane) {
    let root = crate::workspace_root().join("manifests");
    cp.kubectl_ok(&[
        "apply",
        "--server-side",
        "--field-manager=e2e",
        "-k",
        root.to_str().unwrap(),
    ]);
}

/// The node agent, fed the image list of the ConfigMap in the API server as the kubelet would
/// mount it (a test stand-in: the file is written from what `kubectl get` returns).
pub fn agent_from_configmap(cp: &ControlPlane, work: &Path, node_dir: &Path) -> Agent {
    let list = image_list_text(cp);
    let file = work.join("images.yaml");
    agent::write_atomic(&file, &list);
    Agent::start(&file, node_dir, &agent::FAST)
}

/// The bookinfo-details example served on one node: the agent fed from the ConfigMap holds the
/// module (`default.details-v1-wasmfiltering.wasm` in `node_dir`), and details-v1's sidecar on
/// that node serves the filter (`old` in [`classify`]).
pub fn details_from_the_agent(cp: &ControlPlane, work: &Path, node_dir: &Path) -> (Agent, Sidecar) {
    let agent = agent_from_configmap(cp, work, node_dir);
    agent.wait_for("the module in the node directory", PROPAGATION, |_| {
        node_dir
            .join("default.details-v1-wasmfiltering.wasm")
            .exists()
    });
    let details = Sidecar::start(
        cp,
        crate::sidecar::Workload::new("default", "details-v1-0", DETAILS),
        node_dir,
    );
    details.get_until("/details/0", PROPAGATION, |r| classify(r) == "old");
    (agent, details)
}

/// The `kubectl` arguments that print the agent's image list (ConfigMap `wasm-agent-images`).
pub const IMAGE_LIST_ARGS: [&str; 7] = [
    "get",
    "configmap",
    "-n",
    "wasm-system",
    "wasm-agent-images",
    "-o",
    r"jsonpath={.data.images\.yaml}",
];

/// The agent's image list as the API server holds it.
pub fn image_list_text(cp: &ControlPlane) -> String {
    cp.kubectl_ok(&IMAGE_LIST_ARGS)
}

/// Push the header filter as `filters/header-filter:v1`; returns the manifest digest.
pub fn push_filter(registry: &Registry) -> String {
    agent::push(
        &registry.reference("filters/header-filter:v1"),
        &crate::filter_wasm(),
        "my_root_id",
        &[],
    )
}

/// The WasmPlugin example rendered for `sidecar`'s inbound port, pinned to the digest of `tag`
/// (with its `pullSecret: regcred` when `pull_secret`).
pub fn wasm_plugin(
    work: &Path,
    registry: &Registry,
    sidecar: &Sidecar,
    tag: &str,
    pull_secret: bool,
) -> String {
    let fd = example_with("bookinfo-details-wasmplugin", registry, tag, pull_secret)
        .replace("port: 9080", &format!("port: {}", sidecar.inbound.port()));
    render(work, &[("fd.yaml", &fd)])
}

/// Old and new behaviour of a hot update: `old` is the header filter's `hello: hello details`,
/// `new` either the same filter with the v2 parameters or the v2 module (AssemblyScript, which
/// adds `x-as-filter`).
pub fn classify(m: &Message) -> String {
    if m.status() != 200 {
        return format!("status {}", m.status());
    }
    match (hello(m), m.header("x-as-filter")) {
        (Some("hello details"), None) => "old".into(),
        (Some("hello details v2"), None) | (None, Some(_)) => "new".into(),
        (a, b) => format!("unexpected hello={a:?} x-as-filter={b:?}"),
    }
}

/// The most requests one load sends (with 90 s, its bound): room for a rollout that waits for
/// a resync while the load keeps both cores busy.
pub const LOAD_MAX: u64 = 200_000;

/// Bounded keep-alive load on `sidecar` (4 connections, at most [`LOAD_MAX`] requests or 90 s), once
/// it has seen 200 `old` responses.
pub fn load_on(sidecar: &Sidecar) -> Load {
    load_from(sidecar, "old")
}

/// [`load_on`], warmed up on 200 responses of `class`.
pub fn load_from(sidecar: &Sidecar, class: &str) -> Load {
    let load = Load::start(
        sidecar.inbound,
        "/details/0",
        4,
        LOAD_MAX,
        Duration::from_secs(90),
        classify,
    );
    let warm = crate::poll_until(Instant::now() + Duration::from_secs(20), || {
        (load.seen(class) >= 200).then_some(())
    });
    assert!(warm.is_some(), "the load saw no {class} responses");
    load
}

/// Wait until the load has seen `n` responses of `class` (or sent all it may), then stop it.
pub fn finish_after(load: Load, class: &str, n: u64) -> Report {
    crate::poll_until(Instant::now() + PROPAGATION, || {
        (load.seen(class) >= n || load.sent() >= LOAD_MAX).then_some(())
    });
    let report = load.finish();
    println!(
        "load: {} responses {:?} (first seen {:?}), errors {}",
        report.responses,
        report.classes,
        report.first_seen,
        report.errors.len()
    );
    report
}
