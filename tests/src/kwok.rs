//! kwok (`sigs.k8s.io/kwok`, built from its Go module by `scripts/kwok-build`) against a
//! [`ControlPlane`]: it plays the kubelet of every Node carrying [`NODE_ANNOTATION`] (the Node
//! becomes Ready, its Lease is renewed) and marks the Pods bound to those Nodes Running, with
//! the stage files of its own module (`node-initialize`, `node-heartbeat-with-lease`,
//! `pod-ready`, `pod-complete`, `pod-delete`). Nothing runs in those Pods: they are API objects
//! with the status a kubelet would write, which is what a controller watching them sees. Started
//! on 127.0.0.1 (its health port), stopped by process id on drop.
//!
//! ```no_run
//! let cp = e2e::controlplane::ControlPlane::start();
//! let _kwok = e2e::kwok::Kwok::start(&cp);
//! // create Nodes annotated kwok.x-k8s.io/node=fake, then Pods with spec.nodeName
//! ```

use crate::controlplane::{self, ControlPlane, Proc};
use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// The annotation (key, value) that puts a Node under kwok's management.
pub const NODE_ANNOTATION: (&str, &str) = ("kwok.x-k8s.io/node", "fake");

/// Where the Pods' addresses come from: room for every Pod of the largest benchmark.
pub const POD_CIDR: &str = "10.128.0.0/12";

/// The directory `scripts/kwok-build` prints (`kwok`, `stages/*.yaml`), built once per machine.
pub fn dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| controlplane::script_output("scripts/kwok-build"))
}

/// The stage files kwok runs with, in the order they are given to it.
const STAGES: [&str; 5] = [
    "node-initialize.yaml",
    "node-heartbeat-with-lease.yaml",
    "pod-ready.yaml",
    "pod-complete.yaml",
    "pod-delete.yaml",
];

/// A running kwok.
pub struct Kwok {
    proc: Option<Proc>,
    _dir: tempfile::TempDir,
    /// Its health endpoint (`/healthz`).
    pub addr: SocketAddr,
}

impl Kwok {
    /// Start kwok with the control plane's admin kubeconfig, managing the Nodes annotated
    /// [`NODE_ANNOTATION`]; returns once `/healthz` answers.
    pub fn start(cp: &ControlPlane) -> Kwok {
        let work = tempfile::tempdir().expect("temp dir");
        // One configuration file: kwok's options, then the stages of its module.
        let mut config = String::from(
            "apiVersion: config.kwok.x-k8s.io/v1alpha1\n\
             kind: KwokConfiguration\n\
             options:\n  \
               podPlayStageParallelism: 16\n  \
               nodePlayStageParallelism: 16\n  \
               nodeLeaseParallelism: 16\n  \
               podsOnNodeSyncParallelism: 16\n",
        );
        for s in STAGES {
            let text = fs::read_to_string(dir().join("stages").join(s))
                .unwrap_or_else(|e| panic!("kwok stage {s}: {e}"));
            config.push_str("---\n");
            config.push_str(&text);
            if !text.ends_with('\n') {
                config.push('\n');
            }
        }
        let file = work.path().join("kwok.yaml");
        fs::write(&file, config).expect("write kwok.yaml");
        let addr: SocketAddr = ([127, 0, 0, 1], controlplane::free_port()).into();
        let mut cmd = Command::new(dir().join("kwok"));
        cmd.arg(format!("--kubeconfig={}", cp.kubeconfig.display()))
            .arg(format!("--config={}", file.display()))
            .arg(format!(
                "--manage-nodes-with-annotation-selector={}={}",
                NODE_ANNOTATION.0, NODE_ANNOTATION.1
            ))
            .arg("--manage-all-nodes=false")
            .arg(format!("--cidr={POD_CIDR}"))
            .arg("--node-ip=10.127.0.1")
            .arg("--node-lease-duration-seconds=40")
            .arg(format!("--server-address={addr}"));
        let mut p = Proc::spawn("kwok", cmd, work.path().join("kwok.log"), true);
        if let Err(e) = controlplane::wait_ready(&mut p, "kwok", || {
            crate::http1::get(addr, "/healthz", &[]).is_ok_and(|r| r.status() == 200)
        }) {
            p.kill();
            panic!("{e}");
        }
        Kwok {
            proc: Some(p),
            _dir: work,
            addr,
        }
    }

    /// Process id.
    pub fn pid(&self) -> u32 {
        self.proc.as_ref().map(|p| p.child.id()).unwrap_or(0)
    }

    /// The tail of its log.
    pub fn tail(&self, lines: usize) -> String {
        self.proc
            .as_ref()
            .map(|p| p.tail(lines))
            .unwrap_or_default()
    }
}

impl Drop for Kwok {
    fn drop(&mut self) {
        if let Some(mut p) = self.proc.take() {
            if std::thread::panicking() {
                eprintln!("---- kwok log (tail) ----\n{}", p.tail(40));
            }
            p.kill();
        }
    }
}
