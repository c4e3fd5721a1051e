//! `wasmctl controller` against the real API server and istiod: a FilterDeployment applied with
//! kubectl becomes the EnvoyFilter or WasmPlugin, the agent's image-list entry and the workload's
//! annotations; sidecars serve the filter; changes, re-pushed tags and deletion follow;
//! invalid input is refused at admission or reported in status while the last good objects
//! stay; a restarted controller writes nothing for an unchanged world; with two replicas one
//! leads and a killed leader hands over within the lease.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use e2e::agent;
use e2e::controller::{Controller, FAST};
use e2e::controlplane::ControlPlane;
use e2e::mesh::*;
use e2e::registry::Registry;
use e2e::sidecar::{Sidecar, Workload};
use serde_json::Value;
use std::fs;
use std::time::{Duration, Instant};

/// bookinfo's details-v1 as the cluster holds it, with an annotation of its owners.
fn details_deployment() -> String {
    fs::read_to_string(examples().join("bookinfo-details/workload.yaml"))
        .unwrap()
        .replace(
            "    metadata:\n      labels:",
            "    metadata:\n      annotations:\n        kept.example.com/owner: team-a\n      labels:",
        )
}

fn get_json(cp: &ControlPlane, args: &[&str]) -> Value {
    let mut a = vec!["get"];
    a.extend(args);
    a.extend(["-o", "json"]);
    serde_json::from_str(&cp.kubectl_ok(&a)).unwrap()
}

fn try_get_json(cp: &ControlPlane, args: &[&str]) -> Option<Value> {
    let mut a = vec!["get"];
    a.extend(args);
    a.extend(["-o", "json"]);
    let out = cp.kubectl(&a);
    out.status
        .success()
        .then(|| serde_json::from_slice(&out.stdout).unwrap())
}

fn ready(fd: &Value) -> (String, String, String) {
    let c = fd["status"]["conditions"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["type"] == "Ready"))
        .cloned()
        .unwrap_or(Value::Null);
    let s = |k: &str| c[k].as_str().unwrap_or("").to_string();
    (s("status"), s("reason"), s("message"))
}

/// Wait until the FilterDeployment's `Ready` condition has `status` (for its current
/// generation); returns the object.
fn wait_ready(cp: &ControlPlane, ns: &str, name: &str, status: &str, c: &Controller) -> Value {
    let mut last = Value::Null;
    let ok = e2e::poll_until(Instant::now() + PROPAGATION, || {
        last = get_json(cp, &["filterdeployment", "-n", ns, name]);
        let fresh = last["status"]["observedGeneration"] == last["metadata"]["generation"];
        (fresh && ready(&last).0 == status).then_some(())
    });
    assert!(
        ok.is_some(),
        "{ns}/{name} not Ready={status}: {}\n---- controller ----\n{}",
        serde_json::to_string_pretty(&last["status"]).unwrap(),
        c.log()
    );
    last
}

/// Delete the FilterDeployment `default/name` and wait until its `kind` object is gone too.
fn delete_and_wait(cp: &ControlPlane, name: &str, kind: &str) {
    cp.kubectl_ok(&[
        "delete",
        "filterdeployment",
        "-n",
        "default",
        name,
        "--wait=true",
        "--timeout=60s",
    ]);
    let gone = e2e::poll_until(Instant::now() + PROPAGATION, || {
        try_get_json(cp, &[kind, "-n", "default", name])
            .is_none()
            .then_some(())
    });
    assert!(gone.is_some(), "the {kind} outlived its FilterDeployment");
}

/// [`wait_ready`] for the bookinfo-details FilterDeployment.
fn wait_details(cp: &ControlPlane, status: &str, c: &Controller) -> Value {
    wait_ready(cp, "default", "details-v1-wasmfiltering", status, c)
}

fn annotations(cp: &ControlPlane) -> Value {
    get_json(cp, &["deployment", "-n", "default", "details-v1"])["spec"]["template"]["metadata"]
        ["annotations"]
        .clone()
}

fn image_list(cp: &ControlPlane) -> String {
    image_list_text(cp)
}

/// envoyFilter delivery by the controller (with the service account and RBAC of
/// `manifests/controller`): `kubectl apply` of the bookinfo-details
/// FilterDeployment -> EnvoyFilter (owned), the image-list entry, the workload's annotations;
/// the agent pulls, the sidecar serves. New parameters reach the same Envoy under load with no
/// failed request. Deleting the FilterDeployment takes all of it back, other annotations kept.
#[test]
fn envoy_filter_delivery_update_and_deletion() {
    let cp = ControlPlane::start();
    let registry = Registry::start();
    let digest = push_filter(&registry);
    let work = tempfile::tempdir().unwrap();
    let node = work.path().join("node");
    apply_manifests(&cp);
    cp.apply_as("e2e-workloads", &details_deployment()).unwrap();
    // As the Deployment of manifests/controller runs it: its service account, its RBAC.
    let sa = cp.kubeconfig_for("wasm-system", "wasmctl-controller");
    // It may list Pods (rollouts ask where a workload runs) but not list Secrets or read Nodes.
    for args in [
        &["get", "secrets", "-A"][..],
        &["get", "nodes", "-o", "name"],
    ] {
        let denied = std::process::Command::new(e2e::controlplane::bin("kubectl"))
            .args(args)
            .env("KUBECONFIG", &sa)
            .output()
            .unwrap();
        assert!(
            String::from_utf8_lossy(&denied.stderr).contains("forbidden"),
            "the controller's service account may {args:?}: RBAC is not in force"
        );
    }
    let controller = Controller::start_with(&sa, &FAST);

    let fd = example("bookinfo-details", &registry, "filters/header-filter:v1");
    cp.apply(&fd).unwrap();
    let obj = wait_details(&cp, "True", &controller);
    assert_eq!(obj["status"]["digest"], digest.as_str());
    assert!(
        obj["metadata"]["finalizers"]
            .to_string()
            .contains("filters.envoy-wasm-toolkit.io/cleanup")
    );
    let ef = get_json(
        &cp,
        &["envoyfilter", "-n", "default", "details-v1-wasmfiltering"],
    );
    assert_eq!(
        ef["metadata"]["ownerReferences"][0]["uid"],
        obj["metadata"]["uid"]
    );
    let list = image_list(&cp);
    assert!(list.contains(&format!("header-filter@{digest}")), "{list}");
    let a = annotations(&cp);
    assert!(
        a["sidecar.istio.io/userVolume"]
            .as_str()
            .unwrap()
            .contains("wasm-filters"),
        "{a}"
    );
    assert_eq!(a["kept.example.com/owner"], "team-a");
    let events = cp.kubectl_ok(&[
        "get",
        "events",
        "-n",
        "default",
        "--field-selector",
        "involvedObject.name=details-v1-wasmfiltering",
        "-o",
        "jsonpath={.items[*].reason}",
    ]);
    assert!(events.contains("Applied"), "{events}");

    let (_agent, details) = details_from_the_agent(&cp, work.path(), &node);
    let pid = details.envoy_pid().unwrap();

    // New parameters with kubectl apply: the same Envoy serves them, no request fails.
    let load = load_on(&details);
    cp.apply(&fd.replace("hello details", "hello details v2"))
        .unwrap();
    let report = finish_after(load, "new", 500);
    report.assert_clean(&["old", "new"]);
    assert_eq!(details.envoy_pid(), Some(pid));

    // Deletion: the EnvoyFilter, the entry and our annotations go; the owners' annotation stays.
    delete_and_wait(&cp, "details-v1-wasmfiltering", "envoyfilter");
    let list = image_list(&cp);
    assert!(!list.contains("details-v1-wasmfiltering"), "{list}");
    let a = annotations(&cp);
    assert!(a.get("sidecar.istio.io/userVolume").is_none(), "{a}");
    assert!(a.get("sidecar.istio.io/userVolumeMount").is_none(), "{a}");
    assert_eq!(a["kept.example.com/owner"], "team-a");
    let r = details.get_until("/details/0", PROPAGATION, |r| hello(r).is_none());
    assert_eq!(hello(&r), None, "the sidecar still adds the header");
}

/// wasmPlugin delivery by the controller: the WasmPlugin, digest-pinned, and the sidecar
/// serves it; a tag re-pushed with other code rolls out within `--resync`, to the same Envoy,
/// with no failed request.
#[test]
fn wasm_plugin_delivery_and_a_repushed_tag() {
    let v2_wasm = e2e::assemblyscript_wasm();
    let cp = ControlPlane::start();
    let registry = Registry::start();
    let v1 = push_filter(&registry);
    let work = tempfile::tempdir().unwrap();
    apply_manifests(&cp);
    let controller = Controller::start(&cp, &FAST);
    let details = Sidecar::start(
        &cp,
        Workload::new("default", "details-v1-0", DETAILS),
        &work.path().join("node"),
    );
    // The AssemblyScript module registers root id as_filter; the header filter takes any.
    let fd = example(
        "bookinfo-details-wasmplugin",
        &registry,
        "filters/header-filter:v1",
    )
    .replace("port: 9080", &format!("port: {}", details.inbound.port()))
    .replace("rootId: my_root_id", "rootId: as_filter");
    cp.apply(&fd).unwrap();
    let obj = wait_ready(&cp, "default", "details-v1-wasmplugin", "True", &controller);
    assert_eq!(obj["status"]["digest"], v1.as_str());
    let wp = get_json(
        &cp,
        &["wasmplugin", "-n", "default", "details-v1-wasmplugin"],
    );
    assert!(
        wp["spec"]["url"]
            .as_str()
            .unwrap()
            .ends_with(&format!("@{v1}")),
        "{wp}"
    );
    details.get_until("/details/0", PROPAGATION, |r| classify(r) == "old");
    let pid = details.envoy_pid().unwrap();

    let load = load_on(&details);
    let pushed = Instant::now();
    let v2 = agent::push(
        &registry.reference("filters/header-filter:v1"),
        &v2_wasm,
        "as_filter",
        &[],
    );
    let report = finish_after(load, "new", 500);
    println!(
        "the re-pushed tag served {:?} after the push",
        pushed.elapsed()
    );
    report.assert_clean(&["old", "new"]);
    assert_eq!(details.envoy_pid(), Some(pid));
    let obj = get_json(
        &cp,
        &["filterdeployment", "-n", "default", "details-v1-wasmplugin"],
    );
    assert_eq!(obj["status"]["digest"], v2.as_str());

    // Deleting it removes the WasmPlugin, and the sidecar stops serving the filter.
    delete_and_wait(&cp, "details-v1-wasmplugin", "wasmplugin");
    let r = details.get_until("/details/0", PROPAGATION, |r| {
        r.header("x-as-filter").is_none()
    });
    assert_eq!(r.header("x-as-filter"), None);
}

/// Invalid input: CEL refuses at admission, naming the field; parameters the filter refuses give
/// `Ready=False` with the filter's message and a Warning event, and the objects applied before
/// stay as they were; so do a missing workload and a registry that is down; fixing each makes
/// it ready again.
#[test]
fn invalid_input_is_refused_or_reported_and_the_last_good_objects_stay() {
    let cp = ControlPlane::start();
    let registry = Registry::start();
    push_filter(&registry);
    apply_manifests(&cp);
    cp.apply_as("e2e-workloads", &details_deployment()).unwrap();

    let fd = example("bookinfo-details", &registry, "filters/header-filter:v1");
    let e = cp
        .apply(&fd.replace(
            "delivery: envoyFilter",
            "delivery: envoyFilter\n  wasmPlugin:\n    phase: STATS",
        ))
        .expect_err("a wasmPlugin block with envoyFilter delivery is refused");
    assert!(e.contains("spec.wasmPlugin"), "{e}");
    let e = cp
        .apply(&fd.replace(
            &registry.reference("filters/header-filter:v1"),
            "Not An Image!",
        ))
        .expect_err("a malformed image is refused");
    assert!(e.contains("spec.filter.image"), "{e}");
    assert!(e.contains("not an image reference"), "{e}");

    let controller = Controller::start(&cp, &FAST);
    cp.apply(&fd).unwrap();
    wait_details(&cp, "True", &controller);
    let before = get_json(
        &cp,
        &["envoyfilter", "-n", "default", "details-v1-wasmfiltering"],
    );
    let list_before = image_list(&cp);

    let bad = fd.replace(
        r#"parameters: '{"name":"hello","value":"hello details"}'"#,
        r#"parameters: '{"rules":[{"direction":"sideways","name":"hello","value":"x"}]}'"#,
    );
    assert_ne!(bad, fd);
    cp.apply(&bad).unwrap();
    let obj = wait_details(&cp, "False", &controller);
    let (_, reason, message) = ready(&obj);
    assert_eq!(reason, "ParametersRejected");
    assert!(message.contains("spec.filter.parameters"), "{message}");
    assert!(
        message.contains("unknown value \"sideways\""),
        "the filter's own reason: {message}"
    );
    let after = get_json(
        &cp,
        &["envoyfilter", "-n", "default", "details-v1-wasmfiltering"],
    );
    assert_eq!(
        after["metadata"]["resourceVersion"],
        before["metadata"]["resourceVersion"]
    );
    assert_eq!(image_list(&cp), list_before);
    let events = cp.kubectl_ok(&[
        "get",
        "events",
        "-n",
        "default",
        "--field-selector",
        "type=Warning",
        "-o",
        "jsonpath={.items[*].reason}",
    ]);
    assert!(events.contains("ParametersRejected"), "{events}");
    let printed = cp.kubectl_ok(&["get", "filterdeployment", "-n", "default"]);
    assert!(
        printed.contains("READY") && printed.contains("ParametersRejected"),
        "{printed}"
    );

    // A workload that does not exist.
    cp.apply(&fd.replace("name: details-v1\n", "name: details-v9\n"))
        .unwrap();
    let obj = wait_details(&cp, "False", &controller);
    let (_, reason, message) = ready(&obj);
    assert_eq!(reason, "WorkloadNotFound");
    assert!(
        message.contains("spec.workload.name") && message.contains("details-v9"),
        "{message}"
    );

    cp.apply(&fd).unwrap();
    wait_details(&cp, "True", &controller);

    // The registry down: Ready=False with the registry's answer, retried with backoff, the
    // objects kept; back up, ready again.
    let mut registry = registry;
    registry.stop();
    cp.apply(&fd.replace("hello details", "hello details v2"))
        .unwrap();
    let obj = wait_details(&cp, "False", &controller);
    let (_, reason, message) = ready(&obj);
    assert_eq!(reason, "RegistryError");
    assert!(message.contains(&registry.host()), "{message}");
    let ef = get_json(
        &cp,
        &["envoyfilter", "-n", "default", "details-v1-wasmfiltering"],
    );
    assert!(
        !ef.to_string().contains("hello details v2"),
        "applied without the registry"
    );
    registry.restart();
    wait_details(&cp, "True", &controller);
    let ef = get_json(
        &cp,
        &["envoyfilter", "-n", "default", "details-v1-wasmfiltering"],
    );
    assert!(ef.to_string().contains("hello details v2"), "{ef}");
}

/// A restarted controller makes no write for an unchanged world (resourceVersions and its write
/// counter unchanged after several resyncs); with two replicas on a Lease one leads, and
/// killing it hands over within the lease duration.
#[test]
fn restart_writes_nothing_and_a_killed_leader_hands_over() {
    let cp = ControlPlane::start();
    let registry = Registry::start();
    push_filter(&registry);
    apply_manifests(&cp);
    cp.apply_as("e2e-workloads", &details_deployment()).unwrap();
    let mut first = Controller::start(&cp, &FAST);
    cp.apply(&example(
        "bookinfo-details",
        &registry,
        "filters/header-filter:v1",
    ))
    .unwrap();
    wait_details(&cp, "True", &first);
    let versions = |cp: &ControlPlane| -> Vec<Value> {
        [
            vec![
                "filterdeployment",
                "-n",
                "default",
                "details-v1-wasmfiltering",
            ],
            vec!["envoyfilter", "-n", "default", "details-v1-wasmfiltering"],
            vec!["configmap", "-n", "wasm-system", "wasm-agent-images"],
            vec!["deployment", "-n", "default", "details-v1"],
        ]
        .iter()
        .map(|a| get_json(cp, a)["metadata"]["resourceVersion"].clone())
        .collect()
    };
    assert!(first.terminate().success(), "SIGTERM: a clean exit");
    let before = versions(&cp);

    let second = Controller::start(&cp, &FAST);
    let resyncs = e2e::poll_until(Instant::now() + Duration::from_secs(30), || {
        (second.metric("wasm_controller_reconciles_total{result=\"success\"}") >= 3.0).then_some(())
    });
    assert!(resyncs.is_some(), "no resyncs\n{}", second.log());
    assert_eq!(
        versions(&cp),
        before,
        "a resync of an unchanged world wrote\n{}",
        second.log()
    );
    assert_eq!(
        second.metric("wasm_controller_writes_total"),
        0.0,
        "{}",
        second.metrics()
    );
    drop(second);

    // Two replicas, one lease.
    let lease = [
        "--leader-elect",
        "wasm-system/wasmctl-controller",
        "--lease-duration",
        "4s",
    ];
    let args = |id: &'static str| -> Vec<&'static str> {
        let mut a = FAST.to_vec();
        a.extend(lease);
        a.extend(["--identity", id]);
        a
    };
    let mut a = Controller::start(&cp, &args("replica-a"));
    let mut b = Controller::start(&cp, &args("replica-b"));
    let one = e2e::poll_until(Instant::now() + Duration::from_secs(30), || {
        (a.leads() != b.leads()).then_some(())
    });
    assert!(
        one.is_some(),
        "not exactly one leader: a={} b={}",
        a.leads(),
        b.leads()
    );
    let (leader, follower, id) = if a.leads() {
        (&mut a, &mut b, "replica-a")
    } else {
        (&mut b, &mut a, "replica-b")
    };
    let holder = cp.kubectl_ok(&[
        "get",
        "lease",
        "-n",
        "wasm-system",
        "wasmctl-controller",
        "-o",
        "jsonpath={.spec.holderIdentity}",
    ]);
    assert_eq!(holder, id);
    let killed = Instant::now();
    leader.kill();
    let took = e2e::poll_until(Instant::now() + Duration::from_secs(20), || {
        follower.leads().then(|| killed.elapsed())
    });
    let took = took.unwrap_or_else(|| panic!("no hand-over\n{}", follower.log()));
    println!("hand-over {took:?} after the leader was killed (lease 4 s)");
    // The lease runs out at most 4 s after the last renewal; the follower asks every 0.8 s
    // (a fifth of the lease), so the hand-over takes at most the lease plus one or two asks.
    assert!(
        took <= Duration::from_secs(4) + Duration::from_millis(2 * 800 + 1000),
        "hand-over took {took:?}"
    );
    // The new leader reconciles: a change is applied and reported.
    cp.apply(
        &example("bookinfo-details", &registry, "filters/header-filter:v1")
            .replace("hello details", "hello details v3"),
    )
    .unwrap();
    wait_details(&cp, "True", follower);
    let ef = get_json(
        &cp,
        &["envoyfilter", "-n", "default", "details-v1-wasmfiltering"],
    );
    assert!(ef.to_string().contains("hello details v3"), "{ef}");
}

/// `--namespace a --namespace b` watches exactly those two: FilterDeployments there become
/// ready, one in a third namespace is never touched (no finalizer, no status, no WasmPlugin).
#[test]
fn repeated_namespace_flags_watch_exactly_those_namespaces() {
    let cp = ControlPlane::start();
    let registry = Registry::start();
    push_filter(&registry);
    apply_manifests(&cp);
    let fd = example(
        "bookinfo-details-wasmplugin",
        &registry,
        "filters/header-filter:v1",
    );
    for ns in ["team-a", "team-b", "team-c"] {
        cp.kubectl_ok(&["create", "namespace", ns]);
        let text = fd.replace("namespace: default", &format!("namespace: {ns}"));
        assert!(text.contains(&format!("namespace: {ns}")), "{text}");
        cp.apply(&text).unwrap();
    }
    let mut args = FAST.to_vec();
    args.extend(["--namespace", "team-a", "--namespace", "team-b"]);
    let controller = Controller::start(&cp, &args);
    for ns in ["team-a", "team-b"] {
        wait_ready(&cp, ns, "details-v1-wasmplugin", "True", &controller);
    }
    // Once each watched one has been resynced twice more, the third is still as applied.
    let success = "wasm_controller_reconciles_total{result=\"success\"}";
    let start = controller.metric(success);
    let resynced = e2e::poll_until(Instant::now() + Duration::from_secs(30), || {
        (controller.metric(success) >= start + 4.0).then_some(())
    });
    assert!(resynced.is_some(), "no resyncs\n{}", controller.log());
    let c = get_json(
        &cp,
        &["filterdeployment", "-n", "team-c", "details-v1-wasmplugin"],
    );
    assert!(
        c["metadata"]["finalizers"].is_null() && c["status"].is_null(),
        "team-c is not watched, yet its FilterDeployment was reconciled: {}\n{}",
        serde_json::to_string_pretty(&c).unwrap(),
        controller.log()
    );
    assert!(
        try_get_json(
            &cp,
            &["wasmplugin", "-n", "team-c", "details-v1-wasmplugin"]
        )
        .is_none(),
        "a WasmPlugin was made in team-c"
    );
}

/// `delivery: trafficExtension` by the controller: the TrafficExtension, digest-pinned and owned;
/// switching the same FilterDeployment to wasmPlugin replaces it with a WasmPlugin (the
/// TrafficExtension is deleted), and back.
#[test]
fn traffic_extension_delivery_and_a_switch_of_mode() {
    let cp = ControlPlane::start();
    let registry = Registry::start();
    let digest = push_filter(&registry);
    apply_manifests(&cp);
    let controller = Controller::start(&cp, &FAST);
    let te = example(
        "bookinfo-details-trafficextension",
        &registry,
        "filters/header-filter:v1",
    );
    let name = "details-v1-trafficextension";
    cp.apply(&te).unwrap();
    let fd = wait_ready(&cp, "default", name, "True", &controller);
    assert_eq!(fd["status"]["digest"], digest.as_str());
    let obj = get_json(&cp, &["trafficextension", "-n", "default", name]);
    assert!(
        obj["spec"]["wasm"]["url"]
            .as_str()
            .unwrap()
            .ends_with(&format!("@{digest}")),
        "{obj}"
    );
    assert_eq!(
        obj["metadata"]["ownerReferences"][0]["kind"],
        "FilterDeployment"
    );

    let wp = te
        .replace("delivery: trafficExtension", "delivery: wasmPlugin")
        .replace("  trafficExtension:\n", "  wasmPlugin:\n");
    cp.apply(&wp).unwrap();
    wait_ready(&cp, "default", name, "True", &controller);
    let gone = e2e::poll_until(Instant::now() + PROPAGATION, || {
        try_get_json(&cp, &["trafficextension", "-n", "default", name])
            .is_none()
            .then_some(())
    });
    assert!(
        gone.is_some(),
        "the TrafficExtension outlived the switch\n{}",
        controller.log()
    );
    assert!(try_get_json(&cp, &["wasmplugin", "-n", "default", name]).is_some());

    cp.apply(&te).unwrap();
    wait_ready(&cp, "default", name, "True", &controller);
    let gone = e2e::poll_until(Instant::now() + PROPAGATION, || {
        try_get_json(&cp, &["wasmplugin", "-n", "default", name])
            .is_none()
            .then_some(())
    });
    assert!(gone.is_some(), "the WasmPlugin outlived the switch back");
    delete_and_wait(&cp, name, "trafficextension");
}
