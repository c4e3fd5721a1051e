//! `scripts/cluster up DIR --nodes N` and `down DIR`, as a person uses them: up returns with the
//! nodes Ready and prints `DIR/env`, usable from a shell (kubectl, the images, the registry);
//! down, a separate process, stops everything up left running and leaves the host as it was.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use e2e::host_state::HostState;
use std::fs;
use std::process::Command;

#[test]
fn up_leaves_a_usable_cluster_and_down_gives_the_host_back() {
    assert!(
        e2e::is_root(),
        "the cluster needs root: namespaces, mounts, cgroups"
    );
    e2e::cluster::reap_stale_nodes();
    let before = HostState::capture();
    let dir = tempfile::tempdir().unwrap();
    let c = dir.path().join("c");
    let script = e2e::workspace_root().join("scripts/cluster");
    // Whatever happens below, take down what was started.
    struct Down(std::path::PathBuf, std::path::PathBuf);
    impl Drop for Down {
        fn drop(&mut self) {
            let _ = Command::new(&self.0).arg("down").arg(&self.1).output();
        }
    }
    let guard = Down(script.clone(), c.clone());
    let up = Command::new(&script)
        .arg("up")
        .arg(&c)
        .args(["--nodes", "1"])
        .output()
        .unwrap();
    assert!(
        up.status.success(),
        "up failed: {}",
        String::from_utf8_lossy(&up.stderr)
    );
    let env = fs::read_to_string(c.join("env")).unwrap();
    assert_eq!(
        String::from_utf8_lossy(&up.stdout),
        env,
        "up prints DIR/env"
    );
    for var in [
        "KUBECONFIG=",
        "REGISTRY=127.0.0.1:",
        "CLUSTER_REGISTRY=10.250.0.1:5000",
        "WASMCTL_IMAGE=127.0.0.1:",
        "APP_IMAGE=127.0.0.1:",
        "CURL_IMAGE=127.0.0.1:",
    ] {
        assert!(env.contains(var), "{var} in {env}");
    }
    assert!(
        String::from_utf8_lossy(&up.stderr).contains("1 nodes Ready in"),
        "{}",
        String::from_utf8_lossy(&up.stderr)
    );

    // As a person would: source the env file; the node, a Pod from an image of the registry
    // (the mirror in the node's containerd), the registry from here.
    let shell = format!(
        ". '{}'
         kubectl get nodes -o name
         kubectl run app --image=\"$APP_IMAGE\" --restart=Never >/dev/null
         kubectl wait pod/app --for=condition=Ready --timeout=120s >/dev/null
         kubectl get pod app -o jsonpath='{{.spec.nodeName}} {{.status.phase}}{{\"\\n\"}}'
         curl -sf \"http://$REGISTRY/v2/_catalog\"",
        c.join("env").display()
    );
    let out = Command::new("sh").arg("-c").arg(&shell).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[..2], ["node/node-1", "node-1 Running"], "{text}");
    assert!(lines[2].contains("\"wasmctl\""), "{text}");

    // down, from another process than up: nothing of the cluster is left.
    drop(guard);
    assert!(
        !c.join("cluster.json").exists(),
        "down removes cluster.json"
    );
    let left: Vec<String> = fs::read_dir("/sys/fs/cgroup/pids")
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("ewt-") && n.contains("-node-"))
        .collect();
    let changes = HostState::capture().changes_since(&before);
    assert!(
        changes.is_empty(),
        "the host changed across up and down:\n{}\n(node cgroups left: {left:?})",
        changes.join("\n")
    );
}
