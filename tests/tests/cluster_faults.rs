//! Faults on real Pods, each while a client Pod sends a request every 100 ms through the
//! sidecars that already serve the filter: an agent Pod deleted (the DaemonSet recreates it and
//! the module stays on the node), a node's kubelet restarted, the leader controller Pod deleted
//! (the other replica takes the Lease), istiod restarted, and the registry down for a minute.
//! No request fails, no workload Pod restarts, and the FilterDeployment stays Ready.

// Test helpers: a failed expectation fails the test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use e2e::cluster::Cluster;
use e2e::pods::*;
use std::time::{Duration, Instant};

/// Let the client send through `pause`, then check every request so far was answered.
fn settle(c: &Cluster, what: &str, pause: Duration) -> usize {
    let from = client_lines(c).len();
    std::thread::sleep(pause);
    let lines = wait_client(c, from, "hello=hello details", 10);
    assert_clean(&lines);
    eprintln!("{what}: {} requests so far, all 200", lines.len());
    lines.len()
}

fn ready_reason(c: &Cluster) -> String {
    jsonpath(
        c,
        &[
            "-n",
            NS,
            "get",
            "filterdeployment",
            "details-v1-wasmfiltering",
        ],
        "{.status.conditions[?(@.type==\"Ready\")].status}/{.status.conditions[?(@.type==\"Ready\")].reason}",
    )
}

fn lease_holder(c: &Cluster) -> String {
    jsonpath(
        c,
        &["-n", "wasm-system", "get", "lease", "wasmctl-controller"],
        "{.spec.holderIdentity}",
    )
}

#[test]
fn agents_kubelets_the_leader_istiod_and_the_registry_fail_and_no_request_does() {
    let mut c = Cluster::start(2);
    c.install_toolkit(&["--resync=5s"]);
    let v1 = c.push_wasm(
        "filters/header-filter:v1",
        &e2e::filter_wasm(),
        "my_root_id",
    );
    let app = c.images.get("APP_IMAGE").unwrap().to_string();
    let curl = c.images.get("CURL_IMAGE").unwrap().to_string();
    c.cp().apply(&apps(&app, &curl)).expect("apply the apps");
    c.cp()
        .apply(&filter_deployment("envoyFilter"))
        .expect("apply the FilterDeployment");
    wait_fd(&c, "v1 applied", Duration::from_secs(180), |r, d| {
        r == "Applied" && d == v1
    });
    rollout(&c, NS, "details-v1");
    start_client(&c, &curl);
    wait_client(&c, 0, "hello=hello details", 20);
    let pods = details_pods(&c);
    let sha = {
        let out = std::process::Command::new("sha256sum")
            .arg(e2e::filter_wasm())
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .next()
            .unwrap()
            .to_string()
    };
    let files = [c.node_dir("node-1"), c.node_dir("node-2")]
        .map(|d| d.join(format!("var/local/lib/wasm-filters/{sha}.wasm")));
    let module = |node: &str| &files[if node == "node-1" { 0 } else { 1 }];
    // The rollout waited only for the nodes running details Pods; an agent on a node without
    // one gets the new image list when its kubelet next syncs the ConfigMap volume (up to about
    // a minute), and pulls then.
    let both = e2e::poll_until(Instant::now() + Duration::from_secs(150), || {
        (module("node-1").exists() && module("node-2").exists()).then_some(())
    });
    assert!(
        both.is_some(),
        "the module {sha} on node-1: {}, on node-2: {} (pods: {pods:?})",
        module("node-1").exists(),
        module("node-2").exists()
    );

    // 1. An agent Pod deleted: the DaemonSet makes a new one; the module never left the node.
    let agent = jsonpath(
        &c,
        &[
            "-n",
            "wasm-system",
            "get",
            "pods",
            "-l",
            "app.kubernetes.io/name=wasm-agent",
            "--field-selector=spec.nodeName=node-1",
        ],
        "{.items[0].metadata.name}",
    );
    c.kubectl_ok(&["-n", "wasm-system", "delete", "pod", &agent, "--wait=false"]);
    assert!(
        module("node-1").exists(),
        "the module stays while the agent is gone"
    );
    c.kubectl_ok(&[
        "-n",
        "wasm-system",
        "rollout",
        "status",
        "daemonset/wasm-agent",
        "--timeout=120s",
    ]);
    settle(
        &c,
        "agent Pod deleted and recreated",
        Duration::from_secs(5),
    );
    assert!(module("node-1").exists());

    // 2. A node's kubelet restarted: its Pods keep running, the node is Ready again.
    c.restart_kubelet("node-1");
    settle(&c, "node-1's kubelet restarted", Duration::from_secs(5));

    // 3. The leader controller Pod deleted: the other replica takes the Lease.
    let leader = lease_holder(&c);
    c.kubectl_ok(&[
        "-n",
        "wasm-system",
        "delete",
        "pod",
        &leader,
        "--wait=false",
    ]);
    let next = e2e::poll_until(Instant::now() + Duration::from_secs(120), || {
        let h = lease_holder(&c);
        (!h.is_empty() && h != leader).then_some(h)
    });
    assert!(
        next.is_some(),
        "no other replica took the Lease from {leader}"
    );
    settle(&c, "leader controller deleted", Duration::from_secs(5));
    assert_eq!(ready_reason(&c), "True/Applied");

    // 4. istiod restarted: the sidecars reconnect to the new istiod.
    c.kubectl_ok(&[
        "-n",
        "istio-system",
        "rollout",
        "restart",
        "deployment/istiod",
    ]);
    c.kubectl_ok(&[
        "-n",
        "istio-system",
        "rollout",
        "status",
        "deployment/istiod",
        "--timeout=180s",
    ]);
    settle(&c, "istiod restarted", Duration::from_secs(10));

    // 5. The registry down for a minute: tag resolution and pulls fail, what serves stays.
    c.stop_registry();
    settle(&c, "registry down", Duration::from_secs(60));
    c.start_registry_again();
    let total = settle(&c, "registry back", Duration::from_secs(10));
    // (the controller may have said Ready=False while it could not resolve the tag; it retries
    // with backoff)
    let back = e2e::poll_until(Instant::now() + Duration::from_secs(180), || {
        (ready_reason(&c) == "True/Applied").then_some(())
    });
    assert!(
        back.is_some(),
        "Ready again after the registry came back: {}",
        ready_reason(&c)
    );
    // Both nodes still hold the module: the registry's outage removed nothing.
    assert!(module("node-1").exists() && module("node-2").exists());
    assert_eq!(
        details_pods(&c),
        pods,
        "the same Pods served throughout, never restarted"
    );
    eprintln!("{total} requests across five faults, all answered");
}
