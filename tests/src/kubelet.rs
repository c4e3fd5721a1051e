//! The kubelet's part of a node for the tests on the control plane alone ([`crate::controlplane`],
//! no nodes): the agent's ConfigMap and Secret volumes kept in step with the API server, as files
//! in a directory. A test stand-in, and said to be one: it reads with `kubectl` what the kubelet
//! would mount, and writes it atomically, as the kubelet's `..data` swap does. `rollout.rs` uses
//! it to break one node's pull secret at a time; the real kubelet's volumes are exercised on
//! [`crate::cluster`] (`cluster_manifests`, `cluster_mesh`).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::controlplane::bin;
use base64::Engine;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;

/// One mounted key: the object (`configmap` or `secret`, in `wasm-system`), its key, and the
/// file it appears as. An absent object means an absent file (the volumes are `optional`).
pub struct Volume {
    /// `configmap` or `secret`.
    pub kind: &'static str,
    /// The object's name in `wasm-system`.
    pub name: String,
    /// The key mounted.
    pub key: String,
    /// Where the key appears on the node.
    pub file: PathBuf,
}

impl Volume {
    /// The agent's image list: ConfigMap `wasm-agent-images`, key `images.yaml`.
    pub fn image_list(file: &Path) -> Volume {
        Volume {
            kind: "configmap",
            name: "wasm-agent-images".into(),
            key: "images.yaml".into(),
            file: file.to_path_buf(),
        }
    }

    /// A pull secret (`kubernetes.io/dockerconfigjson`) mounted under `secrets_dir/NAME`.
    pub fn pull_secret(name: &str, secrets_dir: &Path) -> Volume {
        Volume {
            kind: "secret",
            name: name.into(),
            key: ".dockerconfigjson".into(),
            file: secrets_dir.join(name).join(".dockerconfigjson"),
        }
    }

    /// The content the kubelet would mount now; `None` when the object or key is absent.
    fn read(&self, kubeconfig: &Path) -> Option<String> {
        let path = format!("jsonpath={{.data.{}}}", self.key.replace('.', "\\."));
        let out = Command::new(bin("kubectl"))
            .env("KUBECONFIG", kubeconfig)
            .args([
                "get",
                self.kind,
                "-n",
                "wasm-system",
                &self.name,
                "-o",
                &path,
            ])
            .output()
            .ok()?;
        if !out.status.success() || out.stdout.is_empty() {
            return None;
        }
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        if self.kind == "secret" {
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(text.trim())
                .ok()?;
            return Some(String::from_utf8_lossy(&bytes).into_owned());
        }
        Some(text)
    }

    /// Bring the file in step: written atomically when it differs, removed when absent.
    pub fn sync(&self, kubeconfig: &Path) {
        match self.read(kubeconfig) {
            Some(text) => {
                if fs::read_to_string(&self.file).ok().as_deref() != Some(text.as_str()) {
                    fs::create_dir_all(self.file.parent().unwrap()).unwrap();
                    crate::agent::write_atomic(&self.file, &text);
                }
            }
            None => {
                let _ = fs::remove_file(&self.file);
            }
        }
    }
}

/// The volumes of one node, synced once now and then every 200 ms until dropped (also when the
/// test fails).
pub struct Kubelet {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Kubelet {
    /// Sync `volumes` now, then keep them in step in a thread.
    pub fn start(kubeconfig: &Path, volumes: Vec<Volume>) -> Kubelet {
        for v in &volumes {
            v.sync(kubeconfig);
        }
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (stop, kubeconfig) = (stop.clone(), kubeconfig.to_path_buf());
            std::thread::spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    for v in &volumes {
                        v.sync(&kubeconfig);
                    }
                    std::thread::sleep(crate::POLL_INTERVAL * 8);
                }
            })
        };
        Kubelet {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Kubelet {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
