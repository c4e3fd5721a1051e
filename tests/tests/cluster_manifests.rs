//! `manifests/` on real Pods (the DaemonSet, the controller Deployment and the image `make image`
//! builds, in a real cluster): `kubectl apply -k manifests/` and `kubectl set image` as
//! docs/deploy.md says; the agent runs one Pod per node and the controller two replicas with
//! one leader, each with the hardened spec the manifests declare, reaching the API server
//! through the in-cluster Service address with projected service-account tokens; the agent's
//! readiness means what the docs say (every listed image has a module in place).

// Test helpers: a failed expectation fails the test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use e2e::cluster::{Cluster, cluster_registry};
use e2e::pods::jsonpath;
use std::time::{Duration, Instant};

const NS: &str = "wasm-system";

/// Wait until every agent Pod's Ready condition is `want`.
fn wait_agents_ready(c: &Cluster, want: &str, within: Duration) {
    let deadline = Instant::now() + within;
    let mut last = String::new();
    let ok = e2e::poll_until(deadline, || {
        last = jsonpath(
            c,
            &[
                "-n",
                NS,
                "get",
                "pods",
                "-l",
                "app.kubernetes.io/name=wasm-agent",
            ],
            "{range .items[*]}{.status.conditions[?(@.type==\"Ready\")].status}{\"\\n\"}{end}",
        );
        (last.lines().count() == 2 && last.lines().all(|l| l == want)).then_some(())
    });
    assert!(
        ok.is_some(),
        "agents not Ready={want} within {within:?}: {last}"
    );
}

#[test]
fn the_agent_and_the_controller_run_from_the_manifests_on_real_pods() {
    let c = Cluster::start(2);
    c.install_toolkit(&[]);

    // One agent per node, Running and Ready.
    let agents = jsonpath(
        &c,
        &[
            "-n",
            NS,
            "get",
            "pods",
            "-l",
            "app.kubernetes.io/name=wasm-agent",
        ],
        "{range .items[*]}{.spec.nodeName} {.status.phase} {.spec.priority}{\"\\n\"}{end}",
    );
    let mut lines: Vec<&str> = agents.lines().collect();
    lines.sort();
    assert_eq!(
        lines,
        ["node-1 Running 2000001000", "node-2 Running 2000001000"],
        "one agent per node, at system-node-critical priority"
    );
    wait_agents_ready(&c, "True", Duration::from_secs(60));

    // Two controller replicas, one of them holding the Lease.
    // (the first Pods, made before the image was set, may still be going away)
    let mut replicas = String::new();
    let settled = e2e::poll_until(Instant::now() + Duration::from_secs(60), || {
        replicas = jsonpath(
            &c,
            &[
                "-n",
                NS,
                "get",
                "pods",
                "-l",
                "app.kubernetes.io/name=wasmctl-controller",
            ],
            "{range .items[*]}{.metadata.name} {.status.phase}{\"\\n\"}{end}",
        );
        (replicas.lines().count() == 2 && replicas.lines().all(|l| l.ends_with(" Running")))
            .then_some(())
    });
    assert!(settled.is_some(), "two controller replicas: {replicas}");
    let names: Vec<&str> = replicas
        .lines()
        .filter_map(|l| l.split(' ').next())
        .collect();
    let holder = e2e::poll_until(Instant::now() + Duration::from_secs(60), || {
        let out = c.kubectl(&[
            "-n",
            NS,
            "get",
            "lease",
            "wasmctl-controller",
            "-o",
            "jsonpath={.spec.holderIdentity}",
        ]);
        let h = String::from_utf8_lossy(&out.stdout).trim().to_string();
        names.contains(&h.as_str()).then_some(h)
    });
    assert!(holder.is_some(), "no controller replica holds the Lease");

    // Each agent reached the API server through the in-cluster address with its own token:
    // its node report exists.
    for node in ["node-1", "node-2"] {
        let ok = e2e::poll_until(Instant::now() + Duration::from_secs(60), || {
            c.kubectl(&["-n", NS, "get", "configmap", &format!("wasm-node-{node}")])
                .status
                .success()
                .then_some(())
        });
        assert!(ok.is_some(), "no node report from {node}'s agent");
    }

    // The hardened spec, as the processes run on the nodes: user 65532, a read-only root.
    for (what, needle) in [
        ("agent", "wasmctl agent"),
        ("controller", "wasmctl controller"),
    ] {
        let pids = c.pod_processes(needle);
        assert_eq!(pids.len(), 2, "two {what} processes: {pids:?}");
        for pid in pids {
            let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
            let uid = status
                .lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .map(|u| u.split_whitespace().collect::<Vec<_>>())
                .unwrap_or_default();
            assert_eq!(uid, ["65532"; 4], "{what} {pid} runs as 65532: {status}");
            let caps = status
                .lines()
                .find_map(|l| l.strip_prefix("CapEff:"))
                .map(str::trim)
                .unwrap_or_default()
                .to_string();
            assert_eq!(caps, "0000000000000000", "{what} {pid} holds no capability");
            let mounts =
                std::fs::read_to_string(format!("/proc/{pid}/mountinfo")).expect("mountinfo");
            let root = mounts
                .lines()
                .find(|l| l.split_whitespace().nth(4) == Some("/"))
                .unwrap_or_default();
            assert!(
                root.split_whitespace()
                    .nth(5)
                    .is_some_and(|o| o.split(',').any(|f| f == "ro")),
                "{what} {pid}'s root is read-only: {root}"
            );
        }
    }

    // Readiness means every listed image has a module in place. List an image that is not in
    // the registry, and the kubelet's probes turn both agents NotReady (the list reaches them
    // through the kubelet's ConfigMap volume); list one that is, and they turn Ready again.
    c.push_wasm(
        "filters/header-filter:v1",
        &e2e::filter_wasm(),
        "my_root_id",
    );
    let list = |image: &str| {
        format!(
            "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: wasm-agent-images\n  namespace: {NS}\ndata:\n  images.yaml: |\n    images:\n    - name: default.readiness\n      image: {}/filters/{image}\n",
            cluster_registry()
        )
    };
    c.cp()
        .apply(&list("absent:v1"))
        .expect("apply the image list");
    wait_agents_ready(&c, "False", Duration::from_secs(120));
    c.cp()
        .apply(&list("header-filter:v1"))
        .expect("apply the image list");
    wait_agents_ready(&c, "True", Duration::from_secs(120));
    // Both agents report the module by its sha256 in their node reports.
    let out = std::process::Command::new("sha256sum")
        .arg(e2e::filter_wasm())
        .output()
        .expect("sha256sum");
    let sha = String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string();
    for node in ["node-1", "node-2"] {
        let modules = jsonpath(
            &c,
            &["-n", NS, "get", "configmap", &format!("wasm-node-{node}")],
            "{.data.modules}",
        );
        assert!(modules.contains(&sha), "{node} reports {sha}: {modules}");
    }
}
