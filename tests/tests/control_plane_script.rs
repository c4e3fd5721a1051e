//! `scripts/control-plane up DIR` and `down DIR`, as a person uses them: up returns with every
//! component ready and `DIR/env` usable from a shell; down stops every process it started.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::fs;
use std::process::Command;

fn alive(pid: &str) -> bool {
    // A zombie (exited, not yet reaped by its parent) counts as stopped.
    fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            !s.rsplit_once(')')
                .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'))
        })
        .unwrap_or(false)
}

#[test]
fn up_gives_a_usable_environment_and_down_stops_everything() {
    let dir = tempfile::tempdir().unwrap();
    let cp = dir.path().join("cp");
    let script = e2e::workspace_root().join("scripts/control-plane");
    let up = Command::new(&script).arg("up").arg(&cp).output().unwrap();
    let pids = fs::read_to_string(cp.join("pids")).unwrap_or_default();
    // Whatever happens below, stop what was started.
    struct Down(std::path::PathBuf, std::path::PathBuf);
    impl Drop for Down {
        fn drop(&mut self) {
            let _ = Command::new(&self.0).arg("down").arg(&self.1).output();
        }
    }
    let guard = Down(script.clone(), cp.clone());
    assert!(
        up.status.success(),
        "up failed: {}",
        String::from_utf8_lossy(&up.stderr)
    );
    let env = fs::read_to_string(cp.join("env")).unwrap();
    assert_eq!(
        String::from_utf8_lossy(&up.stdout),
        env,
        "up prints DIR/env"
    );
    for var in [
        "KUBECONFIG=",
        "ISTIOD_XDS=127.0.0.1:",
        "ISTIOD_HTTP=127.0.0.1:",
    ] {
        assert!(env.contains(var), "{env}");
    }
    let names: Vec<&str> = pids
        .lines()
        .filter_map(|l| l.split_whitespace().nth(1))
        .collect();
    assert_eq!(
        names,
        [
            "etcd",
            "kube-apiserver",
            "kube-controller-manager",
            "istiod"
        ]
    );

    // As a person would: source the env file, use kubectl and istiod's debug endpoint.
    let shell = format!(
        ". '{}'; kubectl get crd -o name | grep -c 'istio.io$'; kubectl get namespace istio-system -o name; curl -sf \"http://$ISTIOD_HTTP/debug/configz\" | head -c 1",
        cp.join("env").display()
    );
    let out = Command::new("sh").arg("-c").arg(&shell).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = text.lines().collect();
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        lines[0].parse::<u32>().unwrap() >= 10,
        "Istio's CRDs: {text}"
    );
    assert_eq!(lines[1], "namespace/istio-system");
    assert!(lines[2].starts_with('['), "istiod /debug/configz: {text}");

    drop(guard);
    for line in pids.lines() {
        let pid = line.split_whitespace().next().unwrap();
        assert!(!alive(pid), "{line} still runs after down");
    }
    assert!(!cp.join("pids").exists());
}
