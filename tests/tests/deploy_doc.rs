//! docs/deploy.md is a path a person walks: every `sh` block of it runs here, in order, in one
//! bash state (exported variables carry over from block to block, as in one terminal), from the
//! repository root, against a real kube-apiserver and istiod, a registry that asks for a
//! password, and the project's own builds.
//!
//! No kubelet runs on this machine. A line that needs running Pods ends with `# (test: ...)`;
//! for it the test does the Pod's part (starts the agent, the controller, a pilot-agent sidecar),
//! and replaces only the command before the line's first `|`, `>` or `&` with one that reads
//! the same thing from the process it started (the rest of the pipeline runs as written). The
//! agent's `/status` is on a free port, so `127.0.0.1:9090` in the block that port-forwards to
//! it names that port. Everything else runs verbatim; checks after the blocks hold the outcome
//! (the filter served, upgraded, rolled back, removed) against the sidecar itself.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use e2e::agent::{self, Agent};
use e2e::controller::Controller;
use e2e::controlplane::{ControlPlane, bin_dir};
use e2e::kubelet::{Kubelet, Volume};
use e2e::mesh::{DETAILS, PROPAGATION, hello};
use e2e::registry::Registry;
use e2e::sidecar::{Sidecar, Workload};
use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

const USER: &str = "deployer";
const PASSWORD: &str = "deploy-Doc-3";
const NODE: &str = "node-1";

/// The `sh` blocks of docs/deploy.md: (line of the opening fence, text).
fn blocks(doc: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    let mut cur: Option<(usize, String)> = None;
    for (i, line) in doc.lines().enumerate() {
        match (&mut cur, line.trim_end()) {
            (None, "```sh") => cur = Some((i + 1, String::new())),
            (Some(_), "```") => out.push(cur.take().unwrap()),
            (Some((_, text)), l) => {
                text.push_str(l);
                text.push('\n');
            }
            _ => {}
        }
    }
    assert!(cur.is_none(), "docs/deploy.md: an sh block is not closed");
    out
}

/// What the test has started in the Pods' place; dropped (everything stopped) at the end or on
/// failure.
#[derive(Default)]
struct Pods {
    kubelet: Option<Kubelet>,
    agent: Option<Agent>,
    controller: Option<Controller>,
    sidecar: Option<Sidecar>,
}

/// Fields drop in order: the processes standing in for Pods stop first, then the control plane,
/// then the working directory goes.
struct Walk {
    pods: Pods,
    cp: ControlPlane,
    work: tempfile::TempDir,
    node_dir: PathBuf,
    secrets: PathBuf,
    env: Vec<(String, String)>,
    state: PathBuf,
    transcript: String,
}

impl Walk {
    fn sidecar(&self) -> &Sidecar {
        self.pods
            .sidecar
            .as_ref()
            .expect("details-v1's sidecar is started")
    }

    /// A file the stand-in command reads.
    fn file(&self, name: &str, text: &str) -> String {
        let p = self.work.path().join(name);
        fs::write(&p, text).unwrap();
        format!("cat '{}'", p.display())
    }

    /// Do the Pod's part for a marked line; returns the command that replaces the part of the
    /// line before its first `|`, `>` or `&`.
    fn stand_in(&mut self, command: &str, line: usize) -> String {
        let cp = &self.cp;
        let kubeconfig = cp.kubeconfig.clone();
        if command.starts_with("cargo install --locked --path wasmctl") {
            // PATH already leads to the test build of wasmctl.
            return "true".into();
        }
        if command.contains("rollout status daemonset/wasm-agent") {
            // The kubelet registers its node and mounts the agent's volumes; the DaemonSet's
            // container runs `wasmctl agent` with the node's name and the agent's token.
            cp.apply_as(
                "kubelet",
                &format!("apiVersion: v1\nkind: Node\nmetadata:\n  name: {NODE}\n"),
            )
            .unwrap();
            let list = self.work.path().join("images.yaml");
            self.pods.kubelet = Some(Kubelet::start(
                &kubeconfig,
                vec![
                    Volume::image_list(&list),
                    Volume::pull_secret("regcred", &self.secrets),
                ],
            ));
            let args = [
                &agent::FAST[..],
                &["--node-name", NODE, "--secrets-dir"],
                &[self.secrets.to_str().unwrap()],
            ]
            .concat();
            let kc = cp.kubeconfig_for("wasm-system", "wasm-agent");
            self.pods.agent = Some(Agent::start_with_env(
                &list,
                &self.node_dir,
                &args,
                &[("KUBECONFIG", kc.as_path())],
            ));
            let reported = e2e::poll_until(std::time::Instant::now() + PROPAGATION, || {
                cp.kubectl(&["get", "configmap", "-n", "wasm-system", "wasm-node-node-1"])
                    .status
                    .success()
                    .then_some(())
            });
            assert!(reported.is_some(), "the agent of {NODE} never reported");
            return "true".into();
        }
        if command.contains("rollout status deployment/wasmctl-controller") {
            let kc = cp.kubeconfig_for("wasm-system", "wasmctl-controller");
            self.pods.controller = Some(Controller::start_with(&kc, &e2e::controller::FAST));
            return "true".into();
        }
        if command.contains("port-forward daemonset/wasm-agent") {
            return "true".into();
        }
        if command.contains("rollout status deployment/details-v1") {
            // The scheduler's and kubelet's part: a Pod of details-v1 bound to the node (what
            // the controller's rollout waits for), and its sidecar Envoy.
            cp.apply_as(
                "kubelet",
                &format!(
                    "apiVersion: v1\nkind: Pod\nmetadata:\n  name: details-v1-{NODE}\n  namespace: default\n  labels: {{app: details, version: v1}}\nspec:\n  nodeName: {NODE}\n  containers:\n  - name: details\n    image: docker.io/istio/examples-bookinfo-details-v1:1.20.3\n"
                ),
            )
            .unwrap();
            fs::create_dir_all(&self.node_dir).unwrap();
            self.pods.sidecar = Some(Sidecar::start(
                cp,
                Workload::new("default", "details-v1-0", DETAILS),
                &self.node_dir,
            ));
            return "true".into();
        }
        if command.contains("pilot-agent request GET config_dump") {
            let dump = self.sidecar().config_dump("");
            return self.file("config_dump.json", &dump.to_string());
        }
        if command.starts_with("istioctl proxy-config log deploy/details-v1 --level wasm:debug") {
            return format!(
                "curl -sf -X POST 'http://{}/logging?wasm=debug'",
                self.sidecar().admin
            );
        }
        if command.starts_with("kubectl logs deploy/details-v1 -c istio-proxy") {
            // One request after the level changed, so its rule outcomes are in the log.
            let s = self.sidecar();
            assert_eq!(hello(&s.get("/details/0")), Some("hello details"));
            let logged = e2e::poll_until(std::time::Instant::now() + PROPAGATION, || {
                s.log().contains("): applied").then_some(())
            });
            assert!(
                logged.is_some(),
                "no debug line of the filter:\n{}",
                s.log()
            );
            let log = s.log();
            return self.file("sidecar.log", &log);
        }
        panic!(
            "docs/deploy.md:{line}: a `# (test: ...)` line this test has no stand-in for: {command}"
        );
    }

    /// Run one block in the shared bash state; its combined output.
    fn run(&mut self, line: usize, block: &str) -> String {
        let mut script = String::new();
        for (i, l) in block.lines().enumerate() {
            let Some((cmd, note)) = l.split_once("# (test:") else {
                script.push_str(l);
                script.push('\n');
                continue;
            };
            let cut = cmd.find(['|', '>', '&']).unwrap_or(cmd.len());
            let replacement = self.stand_in(cmd[..cut].trim(), line + 1 + i);
            script.push_str(&format!(
                "{replacement} {}  # stand-in, test:{}\n",
                &cmd[cut..],
                note.trim_end().trim_end_matches(')')
            ));
        }
        if block.contains("port-forward daemonset/wasm-agent") {
            let addr = self.pods.agent.as_ref().unwrap().addr.to_string();
            script = script.replace("127.0.0.1:9090", &addr);
        }
        let state = self.state.display().to_string();
        let full = format!(
            "set -euo pipefail\n[ -f '{state}' ] && source '{state}'\n{script}\nexport -p > '{state}'\n"
        );
        let out = Command::new("bash")
            .arg("-c")
            .arg(&full)
            .current_dir(e2e::workspace_root())
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        self.transcript.push_str(&format!(
            "---- docs/deploy.md:{line}\n{script}---- output\n{text}"
        ));
        assert!(
            out.status.success(),
            "docs/deploy.md:{line}: the block failed ({}):\n{script}\n---- its output ----\n{text}\n---- controller ----\n{}",
            out.status,
            self.pods
                .controller
                .as_ref()
                .map(|c| c.log())
                .unwrap_or_default()
        );
        text
    }
}

fn path_with(dirs: &[&Path]) -> String {
    let mut parts: Vec<String> = dirs.iter().map(|d| d.display().to_string()).collect();
    parts.push(std::env::var("PATH").unwrap_or_default());
    parts.join(":")
}

#[test]
fn every_command_of_the_deploy_guide_runs_against_the_control_plane() {
    let doc_path = e2e::workspace_root().join("docs/deploy.md");
    let doc = fs::read_to_string(&doc_path).unwrap();
    let cp = ControlPlane::start();
    let registry = Registry::start_with_htpasswd(USER, PASSWORD);
    // The filter and wasmctl are built before the guide's `make build` (a no-op then).
    e2e::filter_wasm();
    let wasmctl = e2e::wasmctl_bin();
    let work = tempfile::tempdir().unwrap();
    let docker = work.path().join("docker");
    fs::create_dir_all(&docker).unwrap();
    let env: Vec<(String, String)> = [
        (
            "PATH",
            path_with(&[
                wasmctl.parent().unwrap(),
                bin_dir(),
                e2e::cosign_bin().parent().unwrap(),
            ]),
        ),
        ("KUBECONFIG", cp.kubeconfig.display().to_string()),
        ("REGISTRY", format!("{}/team", registry.host())),
        ("REGISTRY_USER", USER.into()),
        ("REGISTRY_PASSWORD", PASSWORD.into()),
        ("DOCKER_CONFIG", docker.display().to_string()),
        // buildah reads the credentials `wasmctl login` stored.
        (
            "REGISTRY_AUTH_FILE",
            docker.join("config.json").display().to_string(),
        ),
        ("WASMCTL_PLAIN_HTTP", "true".into()),
        ("COSIGN_PASSWORD", "deploy-Key-7".into()),
        ("PLAIN_HTTP", "1".into()),
        ("TMPDIR", work.path().display().to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    let mut walk = Walk {
        node_dir: work.path().join(NODE).join("wasm-filters"),
        secrets: work.path().join(NODE).join("secrets"),
        state: work.path().join("shell-state"),
        cp,
        work,
        pods: Pods::default(),
        env,
        transcript: String::new(),
    };

    // What each step must have done, checked after the block that contains the key.
    let mut checked = BTreeSet::new();
    let all = blocks(&doc);
    assert!(
        all.len() >= 10,
        "docs/deploy.md has {} sh blocks",
        all.len()
    );
    for (line, block) in &all {
        let out = walk.run(*line, block);
        let mut check = |key: &str, f: &mut dyn FnMut(&str)| {
            if block.contains(key) {
                f(&out);
                checked.insert(key.to_string());
            }
        };
        check("wasmctl run target/", &mut |out| {
            assert!(out.contains("+ hello: hello details"), "{out}")
        });
        check("wasmctl inspect", &mut |out| {
            assert!(out.contains("sha256:"), "{out}")
        });
        check(
            "get configmap -l filters.envoy-wasm-toolkit.io/node-report",
            &mut |out| assert!(out.contains("wasm-node-node-1"), "{out}"),
        );
        check("/status", &mut |out| {
            let v: serde_json::Value = serde_json::from_str(out.trim())
                .unwrap_or_else(|e| panic!("the agent's /status is not JSON ({e}): {out}"));
            assert!(v.is_object(), "{out}");
        });
        check("wasmctl verify", &mut |out| {
            assert!(
                out.contains("verified: sha256:") && out.contains("git-sha=0123abc"),
                "{out}"
            )
        });
        check("istioctl analyze", &mut |out| {
            assert!(out.contains("IST0151"), "{out}")
        });
        check("istioctl proxy-config listener", &mut |out| {
            assert!(
                out.contains("\"name\": \"default.details-v1-wasmfiltering\""),
                "{out}"
            );
            assert!(out.contains("/var/local/lib/wasm-filters/"), "{out}");
        });
        check("kubectl logs deploy/details-v1", &mut |out| {
            assert!(out.contains("header-filter: rule 0"), "{out}")
        });
        let sidecar_says = |want: Option<&str>| {
            let r = walk.sidecar().get_until("/details/0", PROPAGATION, |r| {
                r.status() == 200 && hello(r) == want
            });
            assert_eq!(hello(&r), want, "status {}", r.status());
        };
        if block.contains("kubectl apply -f \"$WORK/details.yaml\"")
            && !block.contains("header-filter:v2")
        {
            sidecar_says(Some("hello details"));
            checked.insert("deployed".into());
        }
        if block.contains("header-filter:v2") {
            sidecar_says(Some("hello details v2"));
            checked.insert("upgraded".into());
        }
        if block.starts_with("kubectl apply -f \"$WORK/details-v1.yaml\"") {
            sidecar_says(Some("hello details"));
            checked.insert("rolled back".into());
        }
        if block.contains("kubectl delete filterdeployment") {
            assert!(out.contains("No resources found"), "{out}");
            sidecar_says(None);
            checked.insert("uninstalled".into());
        }
    }
    let want = [
        "wasmctl run target/",
        "wasmctl inspect",
        "get configmap -l filters.envoy-wasm-toolkit.io/node-report",
        "/status",
        "istioctl analyze",
        "wasmctl verify",
        "istioctl proxy-config listener",
        "kubectl logs deploy/details-v1",
        "deployed",
        "upgraded",
        "rolled back",
        "uninstalled",
    ];
    for w in want {
        assert!(
            checked.contains(w),
            "docs/deploy.md no longer has the step checked as {w:?}\n{}",
            walk.transcript
        );
    }
    // The walk, as a person would have seen it (shown with --nocapture).
    eprintln!("{}", walk.transcript);
    // Nothing of the toolkit is left in the cluster.
    let left = walk.cp.kubectl(&["get", "namespace", "wasm-system"]);
    assert!(
        !left.status.success() || String::from_utf8_lossy(&left.stdout).contains("Terminating")
    );
}
