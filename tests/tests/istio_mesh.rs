//! Istio for real: a kube-apiserver (with etcd and kube-controller-manager) and istiod built from
//! their Go modules, and Envoy sidecars started by Istio's pilot-agent, all on 127.0.0.1. The
//! API server is the validator of record for what `wasmctl render` prints and `manifests/`
//! holds; istiod translates it; the sidecars serve the filter. Both delivery modes are proven
//! end to end, with hot and bad updates under load. (No kubelet runs here: a workload is an app
//! process plus a sidecar; see `e2e::sidecar`.)

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use e2e::agent::{self, Agent};
use e2e::controlplane::ControlPlane;
use e2e::http1::Message;
use e2e::load::Load;
use e2e::registry::Registry;
use e2e::sidecar::{Sidecar, Workload};
use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// How long a change may take from `kubectl apply` to the sidecar serving it (istiod debounces
/// pushes for 100 ms; a remote module is fetched and compiled by V8).
const PROPAGATION: Duration = Duration::from_secs(60);

const DETAILS: &[(&str, &str)] = &[("app", "details"), ("version", "v1")];

/// bookinfo's productpage-v1, as a cluster holds it before any filter is deployed.
const PRODUCTPAGE: &str = "apiVersion: apps/v1
kind: Deployment
metadata:
  name: productpage-v1
  namespace: default
  labels: {app: productpage, version: v1}
spec:
  selector:
    matchLabels: {app: productpage, version: v1}
  template:
    metadata:
      labels: {app: productpage, version: v1}
      annotations: {kept.example.com/owner: team-a}
    spec:
      containers:
      - name: productpage
        image: docker.io/istio/examples-bookinfo-productpage-v1:1.20.3
";

fn examples() -> PathBuf {
    e2e::workspace_root().join("manifests/examples")
}

fn hello(r: &Message) -> Option<&str> {
    r.header("hello")
}

/// The example's FilterDeployment with the image in `registry` and no pull secret (the
/// registry is anonymous unless a test says otherwise).
fn example(name: &str, registry: &Registry, image: &str) -> String {
    let text = fs::read_to_string(examples().join(name).join("filterdeployment.yaml")).unwrap();
    let mut out = String::new();
    for line in text.lines() {
        let t = line.trim_start();
        if t.starts_with("pullSecret:") {
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
/// the pulled module).
fn render(work: &Path, files: &[(&str, &str)]) -> String {
    let mut args = vec!["render".to_string(), "--plain-http".to_string()];
    for (name, text) in files {
        let p = work.join(name);
        fs::write(&p, text).unwrap();
        args.push(p.display().to_string());
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    agent::wasmctl(&args)
}

fn apply_manifests(cp: &ControlPlane) {
    let root = e2e::workspace_root().join("manifests");
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
fn agent_from_configmap(cp: &ControlPlane, work: &Path, node_dir: &Path) -> Agent {
    let list = cp.kubectl_ok(&[
        "get",
        "configmap",
        "-n",
        "wasm-system",
        "wasm-agent-images",
        "-o",
        r"jsonpath={.data.images\.yaml}",
    ]);
    let file = work.join("images.yaml");
    agent::write_atomic(&file, &list);
    Agent::start(&file, node_dir, &agent::FAST)
}

#[test]
fn the_api_server_accepts_the_manifests_and_every_rendered_example() {
    let cp = ControlPlane::start();
    apply_manifests(&cp);
    cp.kubectl_ok(&[
        "wait",
        "--for=condition=Established",
        "--timeout=60s",
        "crd/filterdeployments.filters.envoy-wasm-toolkit.io",
    ]);
    // productpage-outbound's rendered.yaml patches a Deployment it was not given: a partial
    // object that server-side apply merges into the workload already in the cluster.
    cp.apply_as("e2e-workloads", PRODUCTPAGE).unwrap();
    for example in [
        "bookinfo-details",
        "bookinfo-details-wasmplugin",
        "productpage-outbound",
    ] {
        let dir = examples().join(example);
        for file in ["filterdeployment.yaml", "rendered.yaml"] {
            let text = fs::read_to_string(dir.join(file)).unwrap();
            cp.apply(&text)
                .unwrap_or_else(|e| panic!("{example}/{file} refused by the API server: {e}"));
        }
    }
    let annotations = cp.kubectl_ok(&[
        "get",
        "deployment",
        "productpage-v1",
        "-o",
        "jsonpath={.spec.template.metadata.annotations}",
    ]);
    assert!(
        annotations.contains("sidecar.istio.io/userVolume"),
        "{annotations}"
    );
    assert!(
        annotations.contains("kept.example.com/owner"),
        "other annotations stay: {annotations}"
    );
    let image = cp.kubectl_ok(&[
        "get",
        "deployment",
        "productpage-v1",
        "-o",
        "jsonpath={.spec.template.spec.containers[0].image}",
    ]);
    assert_eq!(
        image,
        "docker.io/istio/examples-bookinfo-productpage-v1:1.20.3"
    );
    let names = cp.kubectl_ok(&[
        "get",
        "envoyfilters,wasmplugins,filterdeployments",
        "-A",
        "-o",
        "name",
    ]);
    assert!(
        names.contains("envoyfilter.networking.istio.io/details-v1-wasmfiltering"),
        "{names}"
    );
    assert!(
        names.contains("wasmplugin.extensions.istio.io/details-v1-wasmplugin"),
        "{names}"
    );

    // Istio's own schema, served by the API server, names what is wrong.
    let bad = fs::read_to_string(examples().join("bookinfo-details-wasmplugin/rendered.yaml"))
        .unwrap()
        .replace("failStrategy: FAIL_OPEN", "failStrategy: FAIL_SOMETIMES")
        .replace("name: details-v1-wasmplugin", "name: broken");
    let e = cp
        .apply(&bad)
        .expect_err("an invalid WasmPlugin is refused");
    assert!(e.contains("spec.failStrategy"), "{e}");
    assert!(e.contains("FAIL_SOMETIMES"), "{e}");
}

/// envoyFilter delivery through istiod: the rendered objects applied, the agent's module in the
/// node directory, and a sidecar with the workload's labels serves the header; one without
/// them gets no filter.
#[test]
fn envoy_filter_delivery_through_istiod() {
    let cp = ControlPlane::start();
    let registry = Registry::start();
    agent::push(
        &registry.reference("filters/header-filter:v1"),
        &e2e::filter_wasm(),
        "my_root_id",
        &[],
    );
    let work = tempfile::tempdir().unwrap();
    let node = work.path().join("node");
    apply_manifests(&cp);
    let workload = fs::read_to_string(examples().join("bookinfo-details/workload.yaml")).unwrap();
    let rendered = render(
        work.path(),
        &[
            (
                "fd.yaml",
                &example("bookinfo-details", &registry, "filters/header-filter:v1"),
            ),
            ("workload.yaml", &workload),
        ],
    );
    cp.apply(&rendered).unwrap();
    let agent = agent_from_configmap(&cp, work.path(), &node);
    agent.wait_for("the module in the node directory", PROPAGATION, |_| {
        node.join("default.details-v1-wasmfiltering.wasm").exists()
    });

    let details = Sidecar::start(
        &cp,
        Workload::new("default", "details-v1-0", DETAILS),
        &node,
        &[],
    );
    let r = details.get_until("/details/0", PROPAGATION, |r| hello(r).is_some());
    assert_eq!(r.status(), 200);
    assert_eq!(hello(&r), Some("hello details"), "{:?}", r.headers);

    let reviews = Sidecar::start(
        &cp,
        Workload::new(
            "default",
            "reviews-v1-0",
            &[("app", "reviews"), ("version", "v1")],
        ),
        &node,
        &[],
    );
    let r = reviews.get("/reviews/0");
    assert_eq!(r.status(), 200);
    assert_eq!(
        hello(&r),
        None,
        "a workload the selector does not match got the filter"
    );
    let dump = reviews.config_dump("").to_string();
    assert!(
        !dump.contains("details-v1-wasmfiltering"),
        "its listeners name the filter"
    );
}
