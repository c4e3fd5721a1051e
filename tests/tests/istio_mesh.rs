//! Istio for real: a kube-apiserver (with etcd and kube-controller-manager) and istiod built from
//! their Go modules, and Envoy sidecars started by Istio's pilot-agent, all on 127.0.0.1. The
//! API server is the validator of record for what `wasmctl render` prints and `manifests/`
//! holds; istiod translates it; the sidecars serve the filter. Both delivery modes are proven
//! end to end, with hot and bad updates under load. (No kubelet runs here: a workload is an app
//! process plus a sidecar; see `e2e::sidecar`.)

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use e2e::agent::{self, Agent};
use e2e::controlplane::ControlPlane;
use e2e::http1;
use e2e::mesh::*;
use e2e::registry::Registry;
use e2e::sidecar::{Sidecar, Workload};
use std::fs;
use std::time::{Duration, Instant};

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
    let rendered = render_details(
        work.path(),
        &example("bookinfo-details", &registry, "filters/header-filter:v1"),
    );
    cp.apply(&rendered).unwrap();
    let (_agent, details) = details_from_the_agent(&cp, work.path(), &node);
    let r = details.get("/details/0");
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

/// wasmPlugin delivery through istiod: the WasmPlugin, pinned to the pushed digest, makes
/// pilot-agent pull the image from the registry and the sidecar serve the header.
#[test]
fn wasm_plugin_delivery_through_istiod() {
    let cp = ControlPlane::start();
    let registry = Registry::start();
    let digest = push_filter(&registry);
    let work = tempfile::tempdir().unwrap();
    let node = work.path().join("node");
    let details = Sidecar::start(
        &cp,
        Workload::new("default", "details-v1-0", DETAILS),
        &node,
    );
    assert_eq!(hello(&details.get("/details/0")), None);

    let rendered = wasm_plugin(
        work.path(),
        &registry,
        &details,
        "filters/header-filter:v1",
        false,
    );
    assert!(
        rendered.contains(&format!("header-filter@{digest}")),
        "{rendered}"
    );
    cp.apply(&rendered).unwrap();
    let r = details.get_until("/details/0", PROPAGATION, |r| hello(r).is_some());
    assert_eq!(r.status(), 200);
    assert_eq!(hello(&r), Some("hello details"), "{:?}", r.headers);

    // What docs/deploy.md tells a user to run for this delivery: the filter came by ECDS, its
    // code the module pilot-agent fetched into its cache.
    let dump = work.path().join("details.json");
    std::fs::write(&dump, details.config_dump("").to_string()).unwrap();
    let out = std::process::Command::new(e2e::controlplane::bin("istioctl"))
        .args([
            "proxy-config",
            "ecds",
            "--file",
            dump.to_str().unwrap(),
            "-o",
            "json",
        ])
        .output()
        .unwrap();
    let ecds = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(ecds.contains("default.details-v1-wasmplugin"), "{ecds}");
    assert!(
        ecds.contains("envoy.extensions.filters.http.wasm.v3.Wasm"),
        "{ecds}"
    );
}

/// The same with a registry that wants credentials: `wasmctl` logs in, the WasmPlugin names an
/// `imagePullSecret`, istiod hands the secret to the authenticated sidecar only, and
/// pilot-agent pulls with it.
#[test]
fn wasm_plugin_delivery_with_an_image_pull_secret() {
    let (user, password) = ("puller", "pull-Secret-42");
    let cp = ControlPlane::start();
    // Istio refuses a basic challenge whose realm is no public URL (see the constructor).
    let registry =
        Registry::start_with_htpasswd_realm(user, password, "https://registry.e2e.example/");
    let work = tempfile::tempdir().unwrap();
    let login = std::process::Command::new(e2e::wasmctl_bin())
        .args([
            "login",
            &registry.host(),
            "-u",
            user,
            "--password-stdin",
            "--plain-http",
        ])
        .env("DOCKER_CONFIG", work.path().join("docker"))
        .stdin(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write;
            c.stdin
                .take()
                .unwrap()
                .write_all(format!("{password}\n").as_bytes())?;
            c.wait()
        })
        .unwrap();
    assert!(login.success());
    let module = e2e::filter_wasm();
    wasmctl_in(
        work.path(),
        &[
            "push".into(),
            registry.reference("filters/header-filter:v1"),
            module.display().to_string(),
            "--plain-http".into(),
            "--root-id".into(),
            "my_root_id".into(),
        ],
    );
    cp.create_pull_secret("default", "regcred", &registry.host(), user, password);
    let node = work.path().join("node");
    let details = Sidecar::start(
        &cp,
        Workload::new("default", "details-v1-0", DETAILS),
        &node,
    );
    let rendered = wasm_plugin(
        work.path(),
        &registry,
        &details,
        "filters/header-filter:v1",
        true,
    );
    assert!(rendered.contains("imagePullSecret: regcred"), "{rendered}");
    cp.apply(&rendered).unwrap();
    let r = details.get_until("/details/0", PROPAGATION, |r| hello(r).is_some());
    assert_eq!(hello(&r), Some("hello details"), "{:?}", r.headers);
}

/// A new digest (WasmPlugin) reaches the same Envoy process with no failed request under
/// keep-alive load: istiod pushes the new ECDS config, pilot-agent fetches the new image, and
/// Envoy swaps the filter.
#[test]
fn a_new_digest_reaches_the_same_sidecar_with_no_failed_request() {
    let v2_wasm = e2e::assemblyscript_wasm(); // built before the clock starts
    let cp = ControlPlane::start();
    let registry = Registry::start();
    let v1 = push_filter(&registry);
    let work = tempfile::tempdir().unwrap();
    let details = Sidecar::start(
        &cp,
        Workload::new("default", "details-v1-0", DETAILS),
        &work.path().join("node"),
    );
    cp.apply(&wasm_plugin(
        work.path(),
        &registry,
        &details,
        "filters/header-filter:v1",
        false,
    ))
    .unwrap();
    details.get_until("/details/0", PROPAGATION, |r| classify(r) == "old");
    let pid = details.envoy_pid().expect("envoy runs");

    let load = load_on(&details);
    let v2 = agent::push(
        &registry.reference("filters/header-filter:v1"),
        &v2_wasm,
        "as_filter",
        &[],
    );
    assert_ne!(v1, v2);
    let fd = example(
        "bookinfo-details-wasmplugin",
        &registry,
        "filters/header-filter:v1",
    )
    .replace("port: 9080", &format!("port: {}", details.inbound.port()))
    .replace("rootId: my_root_id", "rootId: as_filter");
    let rendered = render(work.path(), &[("fd.yaml", &fd)]);
    assert!(
        rendered.contains(&format!("header-filter@{v2}")),
        "{rendered}"
    );
    cp.apply(&rendered).unwrap();
    let report = finish_after(load, "new", 500);

    report.assert_clean(&["old", "new"]);
    assert!(report.classes["new"] >= 500, "{:?}", report.classes);
    assert_eq!(
        details.envoy_pid(),
        Some(pid),
        "the sidecar's Envoy was restarted"
    );
}

/// New parameters (EnvoyFilter) reach the same Envoy process with no failed request under
/// keep-alive load: istiod pushes the changed extension config (ECDS); the listener stays.
#[test]
fn new_parameters_reach_the_same_sidecar_with_no_failed_request() {
    let cp = ControlPlane::start();
    let registry = Registry::start();
    push_filter(&registry);
    let work = tempfile::tempdir().unwrap();
    let node = work.path().join("node");
    apply_manifests(&cp);
    let fd = example("bookinfo-details", &registry, "filters/header-filter:v1");
    cp.apply(&render_details(work.path(), &fd)).unwrap();
    let (_agent, details) = details_from_the_agent(&cp, work.path(), &node);
    let pid = details.envoy_pid().expect("envoy runs");

    let load = load_on(&details);
    let v2 = fd.replace("hello details", "hello details v2");
    cp.apply(&render_details(work.path(), &v2)).unwrap();
    let report = finish_after(load, "new", 500);

    report.assert_clean(&["old", "new"]);
    assert!(report.classes["new"] >= 500, "{:?}", report.classes);
    assert_eq!(
        details.envoy_pid(),
        Some(pid),
        "the sidecar's Envoy was restarted"
    );
    assert_eq!(
        details.stat("listener_manager.lds.update_rejected"),
        Some(0)
    );
}

/// Parameters the filter refuses, applied around `wasmctl render`'s check (an edited
/// EnvoyFilter), reach the sidecar: Envoy rejects the listener update, says so in its stats
/// and log, and the old filter keeps serving every request.
#[test]
fn a_bad_update_is_rejected_by_the_sidecar_and_the_old_filter_keeps_serving() {
    let cp = ControlPlane::start();
    let registry = Registry::start();
    push_filter(&registry);
    let work = tempfile::tempdir().unwrap();
    let node = work.path().join("node");
    apply_manifests(&cp);
    let fd = example("bookinfo-details", &registry, "filters/header-filter:v1");
    let good = render_details(work.path(), &fd);
    cp.apply(&good).unwrap();
    let (_agent, details) = details_from_the_agent(&cp, work.path(), &node);
    let pid = details.envoy_pid().expect("envoy runs");
    // The filter comes through ECDS: a bad config is an extension config update rejected, and
    // the listener is never touched.
    let rejected = |s: &Sidecar| {
        s.stat("extension_config_discovery.http_filter.default.details-v1-wasmfiltering.update_rejected")
            .unwrap_or(0)
    };
    let listener_rejected =
        |s: &Sidecar| s.stat("listener_manager.lds.update_rejected").unwrap_or(0);
    assert_eq!(rejected(&details), 0);

    let load = load_on(&details);
    let bad = good.replace(
        r#"value: '{"name":"hello","value":"hello details"}'"#,
        r#"value: '{"rules":[{"direction":"sideways","name":"hello","value":"x"}]}'"#,
    );
    assert_ne!(bad, good, "the rendered parameters moved: update the test");
    cp.apply(&bad).unwrap();
    let seen = e2e::poll_until(std::time::Instant::now() + PROPAGATION, || {
        (rejected(&details) > 0).then_some(())
    });
    // Keep the load on for a while after the rejection: nothing may change.
    let settle = load.sent() + 1_000;
    e2e::poll_until(std::time::Instant::now() + Duration::from_secs(20), || {
        (load.sent() >= settle).then_some(())
    });
    let report = load.finish();
    println!(
        "load: {} responses {:?}, errors {}",
        report.responses,
        report.classes,
        report.errors.len()
    );
    assert!(
        seen.is_some(),
        "the sidecar never rejected the update\n{}\n{}",
        e2e::http1::get(
            details.admin,
            "/stats?filter=extension_config_discovery",
            &[]
        )
        .map(|r| r.text())
        .unwrap_or_default(),
        details.log()
    );
    report.assert_clean(&["old"]);
    assert_eq!(details.envoy_pid(), Some(pid));
    assert_eq!(listener_rejected(&details), 0, "the listener was updated");
    let log = details.log();
    for line in log
        .lines()
        .filter(|l| l.contains("rejected") || l.contains("sideways"))
    {
        println!("sidecar: {line}");
    }
    assert!(
        log.contains("sideways"),
        "the filter's reason is not in the sidecar's log:\n{log}"
    );
    assert!(
        log.contains("rejected"),
        "no rejection in the sidecar's log:\n{log}"
    );
}

/// `delivery: trafficExtension`: the rendered TrafficExtension serves the filter through istiod
/// to the sidecar (Istio's fetcher pulls the digest-pinned image), a new digest reaches the same
/// Envoy with no failed request, and the API server refuses invalid ones naming the field: a
/// `spec.trafficExtension` block without that delivery (our CRD's CEL) and a TrafficExtension
/// whose `wasm.url` has no scheme Istio takes (Istio's CRD).
#[test]
fn traffic_extension_delivery_through_istiod_and_a_new_digest() {
    let v2_wasm = e2e::assemblyscript_wasm(); // built before the clock starts
    let cp = ControlPlane::start();
    let registry = Registry::start();
    let v1 = push_filter(&registry);
    let work = tempfile::tempdir().unwrap();
    apply_manifests(&cp);
    let details = Sidecar::start(
        &cp,
        Workload::new("default", "details-v1-0", DETAILS),
        &work.path().join("node"),
    );
    assert_eq!(hello(&details.get("/details/0")), None);
    let fd = |rest: &str| {
        example("bookinfo-details-trafficextension", &registry, rest)
            .replace("port: 9080", &format!("port: {}", details.inbound.port()))
    };
    let rendered = render(work.path(), &[("fd.yaml", &fd("filters/header-filter:v1"))]);
    assert!(rendered.contains("kind: TrafficExtension"), "{rendered}");
    assert!(
        rendered.contains(&format!("header-filter@{v1}")),
        "{rendered}"
    );
    cp.apply(&rendered).unwrap();
    let r = details.get_until("/details/0", PROPAGATION, |r| hello(r).is_some());
    assert_eq!(hello(&r), Some("hello details"), "{:?}", r.headers);
    let pid = details.envoy_pid().expect("envoy runs");

    let load = load_on(&details);
    let v2 = agent::push(
        &registry.reference("filters/header-filter:v1"),
        &v2_wasm,
        "as_filter",
        &[],
    );
    assert_ne!(v1, v2);
    let rendered = render(
        work.path(),
        &[(
            "fd.yaml",
            &fd("filters/header-filter:v1").replace("rootId: my_root_id", "rootId: as_filter"),
        )],
    );
    assert!(
        rendered.contains(&format!("header-filter@{v2}")),
        "{rendered}"
    );
    cp.apply(&rendered).unwrap();
    let report = finish_after(load, "new", 500);
    report.assert_clean(&["old", "new"]);
    assert_eq!(
        details.envoy_pid(),
        Some(pid),
        "the sidecar's Envoy was restarted"
    );

    // Refused at admission, naming the field.
    let misplaced = example(
        "bookinfo-details-trafficextension",
        &registry,
        "filters/header-filter:v1",
    )
    .replace("delivery: trafficExtension", "delivery: wasmPlugin");
    let e = cp.apply(&misplaced).unwrap_err();
    assert!(e.contains("spec.trafficExtension"), "{e}");
    let bad_url = rendered.replace("url: oci://", "url: ftp://");
    assert_ne!(bad_url, rendered);
    let e = cp.apply(&bad_url).unwrap_err();
    assert!(e.contains("spec.wasm.url"), "{e}");
}

/// `spec.filter.type: NETWORK` in each delivery mode: the example TCP filter
/// (manifests/examples/tcp-bytes-count, examples/tcp-filter) reaches a sidecar whose inbound port
/// is TCP, through istiod, as an EnvoyFilter (the agent holding the module), a WasmPlugin and a
/// TrafficExtension (pilot-agent fetching it); each time a connection through the sidecar is
/// counted both ways in the filter's log line.
#[test]
fn a_network_filter_counts_a_tcp_connections_bytes_in_each_mode() {
    let cp = ControlPlane::start();
    let registry = Registry::start();
    let work = tempfile::tempdir().unwrap();
    let node = work.path().join("node");
    apply_manifests(&cp);
    agent::push(
        &registry.reference("filters/tcp-filter:v1"),
        &e2e::tcp_filter_wasm(),
        "tcp_root",
        &[],
    );
    let app = e2e::longlived::App::start();
    let sidecar = Sidecar::start_tcp(
        &cp,
        Workload::new("default", "mongodb-v1-0", &[("app", "mongodb")]),
        &node,
        app.addr,
    );
    let fd_path = work.path().join("fd.yaml");
    let images = work.path().join("images.yaml");
    let mut agent = None;
    let name = "ratings-tcp-bytes";
    for (mode, prefix) in [
        ("envoy-filter", "through-envoyfilter"),
        ("wasm-plugin", "through-wasmplugin"),
        ("traffic-extension", "through-trafficextension"),
    ] {
        for kind in ["envoyfilter", "wasmplugin", "trafficextension"] {
            cp.kubectl_ok(&["delete", kind, "-n", "default", name, "--ignore-not-found"]);
        }
        let fd = example("tcp-bytes-count", &registry, "filters/tcp-filter:v1")
            .replace("port: 27017", &format!("port: {}", sidecar.inbound.port()))
            .replace("prefix: mongodb", &format!("prefix: {prefix}"));
        std::fs::write(&fd_path, &fd).unwrap();
        let rendered = wasmctl_in(
            work.path(),
            &[
                "render".into(),
                "--plain-http".into(),
                "--mode".into(),
                mode.into(),
                fd_path.display().to_string(),
            ],
        );
        // The workload's volume patch is for a Deployment this test has not: apply the rest.
        let objects: Vec<serde_json::Value> = serde_norway::Deserializer::from_str(&rendered)
            .map(|d| <serde_json::Value as serde::Deserialize>::deserialize(d).unwrap())
            .filter(|v| !v.is_null() && v["kind"] != "Deployment")
            .collect();
        if mode == "envoy-filter" {
            let list =
                objects.iter().find(|o| o["kind"] == "ConfigMap").unwrap()["data"]["images.yaml"]
                    .as_str()
                    .unwrap()
                    .to_string();
            agent::write_atomic(&images, &list);
            let a = agent.get_or_insert_with(|| Agent::start(&images, &node, &agent::FAST));
            let ef = objects.iter().find(|o| o["kind"] == "EnvoyFilter").unwrap();
            assert_eq!(ef["spec"]["configPatches"][1]["applyTo"], "NETWORK_FILTER");
            let sha = ef
                .to_string()
                .split("/var/local/lib/wasm-filters/")
                .nth(1)
                .and_then(|t| t.split(".wasm").next())
                .unwrap()
                .to_string();
            let path = node.join(format!("{sha}.wasm"));
            a.wait_for("the module on the node", PROPAGATION, |_| path.exists());
        } else {
            let o = &objects[0];
            let wasm_type = if mode == "wasm-plugin" {
                &o["spec"]["type"]
            } else {
                &o["spec"]["wasm"]["type"]
            };
            assert_eq!(wasm_type, "NETWORK", "{o}");
        }
        let text = objects
            .iter()
            .map(|o| serde_json::to_string(o).unwrap())
            .collect::<Vec<_>>()
            .join("\n---\n");
        cp.apply(&text).unwrap();
        let wanted = format!("tcp-filter {prefix}: downstream");
        let line = e2e::poll_until(Instant::now() + PROPAGATION, || {
            let r = http1::get(sidecar.inbound, "/through-tcp", &[]).ok()?;
            assert_eq!(r.status(), 200);
            sidecar
                .log()
                .lines()
                .find(|l| l.contains(&wanted))
                .map(str::to_string)
        });
        let line =
            line.unwrap_or_else(|| panic!("{mode}: no byte count logged\n{}", sidecar.log()));
        println!("{mode}: {line}");
        assert!(
            !line.contains("downstream 0 bytes") && !line.contains("upstream 0 bytes"),
            "{line}"
        );
    }
}

/// `spec.targetRefs` (manifests/examples/gateway-trafficextension): the API server takes the
/// example and its rendered TrafficExtension; it refuses, naming the field, targetRefs beside
/// workload labels, targetRefs with the envoyFilter delivery, and a kind Istio cannot target;
/// `wasmctl render` refuses the envoyFilter mode for it with the reason.
#[test]
fn target_refs_are_checked_at_admission_and_by_render() {
    let cp = ControlPlane::start();
    apply_manifests(&cp);
    let dir = examples().join("gateway-trafficextension");
    let fd = fs::read_to_string(dir.join("filterdeployment.yaml")).unwrap();
    cp.apply(&fd).unwrap();
    cp.apply(&fs::read_to_string(dir.join("rendered.yaml")).unwrap())
        .unwrap();
    let refused = |text: &str, what: &str| {
        assert_ne!(text, fd, "{what}: the example moved; update the test");
        let e = cp.apply(text).unwrap_err();
        assert!(e.contains("spec.targetRefs"), "{what}: {e}");
        e
    };
    let e = refused(
        &fd.replace(
            "spec:\n  targetRefs:",
            "spec:\n  workload:\n    labels: {app: gw}\n  targetRefs:",
        ),
        "labels too",
    );
    assert!(e.contains("one way"), "{e}");
    let e = refused(
        &fd.replace("delivery: trafficExtension", "delivery: envoyFilter"),
        "envoyFilter",
    );
    assert!(e.contains("envoyFilter delivery cannot attach"), "{e}");
    let e = refused(
        &fd.replace("kind: Gateway\n", "kind: Deployment\n"),
        "a Deployment",
    );
    assert!(e.contains("Gateway or GatewayClass"), "{e}");

    let out = std::process::Command::new(e2e::wasmctl_bin())
        .args(["render", "--no-resolve", "--mode", "envoy-filter"])
        .arg(dir.join("filterdeployment.yaml"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "rendered: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(
        err.contains("spec.targetRefs") && err.contains("userVolume"),
        "{err}"
    );
}
