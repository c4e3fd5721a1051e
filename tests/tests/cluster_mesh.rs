//! The filter's whole path on real Pods: istiod's webhook injects the sidecar into bookinfo's
//! `details`, a FilterDeployment makes the controller add the volume annotations, the Deployment
//! rolls to Pods whose sidecar mounts the node's directory read-only, and a client Pod sees the
//! filter's header. A re-pushed tag reaches every Pod on both nodes (the agent's pull, the
//! kubelet's ConfigMap update, the controller's gate) while a client Pod sends continuously: no
//! request fails and no Pod restarts; a rollback likewise. Then the same filter through Istio's
//! `WasmPlugin`.

// Test helpers: a failed expectation fails the test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use e2e::cluster::Cluster;
use e2e::pods::*;
use std::time::{Duration, Instant};

#[test]
fn a_filter_reaches_injected_pods_and_a_re_pushed_tag_rolls_out_without_a_failed_request() {
    let c = Cluster::start(2);
    // Tags re-resolved every 5 s instead of every minute, so the re-push is noticed soon.
    c.install_toolkit(&["--resync=5s"]);
    let v1 = c.push_wasm(
        "filters/header-filter:v1",
        &e2e::filter_wasm(),
        "my_root_id",
    );
    let app = c.images.get("APP_IMAGE").unwrap();
    let curl = c.images.get("CURL_IMAGE").unwrap();
    c.cp().apply(&apps(app, curl)).expect("apply the apps");
    for d in ["details-v1", "curl"] {
        rollout(&c, NS, d);
    }
    // istiod's webhook injected the sidecar (a native sidecar: an init container that keeps
    // running) and istio-init.
    let containers = jsonpath(
        &c,
        &["-n", NS, "get", "pods", "-l", "app=details"],
        "{range .items[*]}{range .spec.initContainers[*]}{.name} {end}{\"\\n\"}{end}",
    );
    assert!(
        containers
            .lines()
            .all(|l| l.contains("istio-init") && l.contains("istio-proxy")),
        "{containers}"
    );

    // envoyFilter delivery: the controller annotates the Deployment, which rolls.
    c.cp()
        .apply(&filter_deployment("envoyFilter"))
        .expect("apply the FilterDeployment");
    wait_fd(&c, "v1 applied", Duration::from_secs(180), |r, d| {
        r == "Applied" && d == v1
    });
    let annotations = jsonpath(
        &c,
        &["-n", NS, "get", "deployment", "details-v1"],
        "{.spec.template.metadata.annotations}",
    );
    assert!(
        annotations.contains("sidecar.istio.io/userVolume")
            && annotations.contains("sidecar.istio.io/userVolumeMount"),
        "{annotations}"
    );
    rollout(&c, NS, "details-v1");
    // The injected sidecar mounts the node's directory, read-only.
    let mounts = jsonpath(
        &c,
        &["-n", NS, "get", "pods", "-l", "app=details"],
        "{range .items[*]}{range .spec.initContainers[?(@.name==\"istio-proxy\")].volumeMounts[?(@.name==\"wasm-filters\")]}{.mountPath} {.readOnly}{end} {.spec.volumes[?(@.name==\"wasm-filters\")].hostPath.path}{\"\\n\"}{end}",
    );
    assert_eq!(
        mounts.trim(),
        "/var/local/lib/wasm-filters true /var/local/lib/wasm-filters\n/var/local/lib/wasm-filters true /var/local/lib/wasm-filters",
        "both Pods' sidecars mount the hostPath read-only"
    );
    wait_curl(&c, NS, "hello: hello details", Duration::from_secs(60));

    // A re-pushed tag, with a client sending all along.
    let before = details_pods(&c);
    start_client(&c, curl);
    let lines = wait_client(&c, 0, "hello=hello details", 20);
    let mark = lines.len();
    let v2 = c.push_wasm(
        "filters/header-filter:v1",
        &e2e::assemblyscript_wasm(),
        "as_filter",
    );
    assert_ne!(v1, v2);
    wait_fd(
        &c,
        "the re-pushed tag applied",
        Duration::from_secs(300),
        |r, d| r == "Applied" && d == v2,
    );
    // Both Pods serve v2: 20 responses in a row carry it.
    let lines = wait_client_all(&c, mark, "as={", 20);
    assert_clean(&lines);

    // A rollback: the tag points at v1 again.
    let mark = lines.len();
    let back = c.push_wasm(
        "filters/header-filter:v1",
        &e2e::filter_wasm(),
        "my_root_id",
    );
    assert_eq!(back, v1, "the same content is the same digest");
    wait_fd(
        &c,
        "the rollback applied",
        Duration::from_secs(300),
        |r, d| r == "Applied" && d == v1,
    );
    // Both Pods serve v1 again.
    let lines = wait_client_all(&c, mark, "hello=hello details", 20);
    assert_clean(&lines);
    assert_eq!(
        details_pods(&c),
        before,
        "the same Pods served throughout, never restarted"
    );
    let total = lines.len();
    eprintln!("the client sent {total} requests across the re-push and the rollback: all 200");

    // The same filter through Istio's WasmPlugin: istio-agent in each sidecar pulls it.
    c.cp()
        .apply(&filter_deployment("wasmPlugin"))
        .expect("apply the FilterDeployment");
    let plugin = e2e::poll_until(Instant::now() + Duration::from_secs(120), || {
        let out = c.kubectl(&["-n", NS, "get", "wasmplugin", "-o", "name"]);
        let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
        (!text.is_empty()).then_some(text)
    });
    assert!(plugin.is_some(), "no WasmPlugin was applied");
    rollout(&c, NS, "details-v1");
    wait_curl(&c, NS, "hello: hello details", Duration::from_secs(120));
    let envoy_filters = c.kubectl_ok(&["-n", NS, "get", "envoyfilter", "-o", "name"]);
    assert!(
        envoy_filters.trim().is_empty(),
        "the EnvoyFilter is gone: {envoy_filters}"
    );
}
