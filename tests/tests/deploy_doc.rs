//! docs/deploy.md is a path a person walks: every `sh` block of it runs here, in order, in one
//! bash state (exported variables carry over from block to block, as in one terminal), from the
//! repository root, on a real two-node cluster ([`e2e::cluster`]: kubelets, containerd, istiod
//! with its injection webhook), from a workstation on the cluster's network (where the registry
//! and the API server have the addresses the Pods use), with a registry that asks for a
//! password, and the project's own builds. The agent, the controller and the sidecars are Pods.
//!
//! One line ends with `# (test: ...)`: `cargo install`, whose build the test has (PATH leads to
//! it); the command before its first `|`, `>` or `&` is replaced. Everything else runs verbatim;
//! checks after the blocks hold the outcome (the filter served, upgraded, rolled back, removed)
//! against what a client Pod receives through the sidecars.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use e2e::cluster::Cluster;
use e2e::controlplane::bin_dir;
use e2e::netns;
use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const USER: &str = "deployer";
const PASSWORD: &str = "deploy-Doc-3";
/// How long a change may take to reach the sidecars (a rollout of new Pods included).
const PROPAGATION: Duration = Duration::from_secs(240);

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

/// Fields drop in order: the cluster goes first (everything the walk started runs in it or in
/// the workstation), then the working directory.
struct Walk {
    cluster: Cluster,
    workstation: u32,
    work: tempfile::TempDir,
    env: Vec<(String, String)>,
    state: PathBuf,
    transcript: String,
}

impl Walk {
    /// The command that replaces the part of a marked line before its first `|`, `>` or `&`.
    fn stand_in(&mut self, command: &str, line: usize) -> String {
        if command.starts_with("cargo install --locked --path wasmctl") {
            // PATH already leads to the test build of wasmctl.
            return "true".into();
        }
        panic!(
            "docs/deploy.md:{line}: a `# (test: ...)` line this test has no stand-in for: {command}"
        );
    }

    /// Run one block in the shared bash state, on the workstation; its combined output.
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
        let state = self.state.display().to_string();
        let full = format!(
            "set -euo pipefail\n[ -f '{state}' ] && source '{state}'\n{script}\nexport -p > '{state}'\n"
        );
        // Output to a file, not a pipe: a block may leave a process running in the background
        // (`kubectl port-forward ... &`), which would hold a pipe open.
        let log = self.work.path().join("block.log");
        let file = fs::File::create(&log).unwrap();
        let status = netns::nsenter(self.workstation, false, &["bash", "-c", &full])
            .current_dir(e2e::workspace_root())
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(std::process::Stdio::null())
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .status()
            .unwrap();
        let text = fs::read_to_string(&log).unwrap_or_default();
        self.transcript.push_str(&format!(
            "---- docs/deploy.md:{line}\n{script}---- output\n{text}"
        ));
        assert!(
            status.success(),
            "docs/deploy.md:{line}: the block failed ({status}):\n{script}\n---- its output ----\n{text}\n---- the walk so far ----\n{}",
            self.transcript
        );
        text
    }

    /// The `hello` header a request from the client Pod to details gets back (`None`: none;
    /// `Err`: no answer).
    fn hello(&self) -> Result<Option<String>, String> {
        let r = e2e::pods::curl_details(&self.cluster, "default")?;
        if !r.starts_with("HTTP/1.1 200") {
            return Err(r);
        }
        Ok(r.lines()
            .find_map(|l| l.strip_prefix("hello: "))
            .map(|v| v.trim().to_string()))
    }

    /// Wait until a client Pod's request gets `want` as its `hello` header.
    fn sidecar_says(&self, want: Option<&str>) {
        let mut last = Ok(None);
        let ok = e2e::poll_until(Instant::now() + PROPAGATION, || {
            last = self.hello();
            (last.as_ref().ok().map(|h| h.as_deref()) == Some(want)).then_some(())
        });
        assert!(
            ok.is_some(),
            "a client Pod never got hello={want:?}; last {last:?}\n{}",
            self.transcript
        );
    }
}

fn path_with(dirs: &[&Path]) -> String {
    let mut parts: Vec<String> = dirs.iter().map(|d| d.display().to_string()).collect();
    parts.push(std::env::var("PATH").unwrap_or_default());
    parts.join(":")
}

#[test]
fn every_command_of_the_deploy_guide_runs_on_a_real_cluster() {
    let doc_path = e2e::workspace_root().join("docs/deploy.md");
    let doc = fs::read_to_string(&doc_path).unwrap();
    let mut cluster = Cluster::start(2);
    let registry = cluster.start_private_registry(USER, PASSWORD);
    let (workstation, kubeconfig) = cluster.start_workstation();
    // The cluster as the guide finds it: bookinfo's details-v1 belongs to the default
    // namespace, labelled for injection, with its ServiceAccount and Service; a client Pod
    // (Istio's curl sample) to send requests from.
    cluster.kubectl_ok(&["label", "namespace", "default", "istio-injection=enabled"]);
    cluster.kubectl_ok(&["create", "serviceaccount", "bookinfo-details"]);
    cluster.kubectl_ok(&[
        "create",
        "service",
        "clusterip",
        "details",
        "--tcp=9080:9080",
    ]);
    let curl = cluster.images.get("CURL_IMAGE").unwrap().to_string();
    cluster.kubectl_ok(&["create", "deployment", "curl", &format!("--image={curl}")]);
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
        ("KUBECONFIG", kubeconfig.display().to_string()),
        ("REGISTRY", format!("{registry}/team")),
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
        state: work.path().join("shell-state"),
        cluster,
        workstation,
        work,
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
        if block.starts_with("kubectl logs deploy/details-v1") {
            // "Send the workload a request": the client Pod does, again until the filter has
            // read the new log level (on its 1 s tick, which a loaded machine delays) and a
            // request's debug line is in the sidecar's log, as a person would retry.
            let logged = e2e::poll_until(Instant::now() + PROPAGATION, || {
                let r = walk.hello();
                assert!(r.is_ok(), "the request before reading the log: {r:?}");
                let log = walk
                    .cluster
                    .kubectl(&["logs", "deploy/details-v1", "-c", "istio-proxy"]);
                if String::from_utf8_lossy(&log.stdout).contains("header-filter: rule 0") {
                    return Some(());
                }
                std::thread::sleep(Duration::from_secs(1));
                None
            });
            assert!(
                logged.is_some(),
                "the sidecar never logged a request at wasm:debug\n{}",
                walk.transcript
            );
        }
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
            &mut |out| {
                assert!(
                    out.contains("wasm-node-node-1") && out.contains("wasm-node-node-2"),
                    "{out}"
                )
            },
        );
        check("/status", &mut |out| {
            // (kubectl port-forward's own lines come first: "Forwarding from ...")
            let json = out.find("\n{").map_or(out, |i| &out[i + 1..]);
            let v: serde_json::Value = serde_json::from_str(json.trim())
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
        check("istioctl proxy-status", &mut |out| {
            assert!(
                out.lines()
                    .any(|l| l.starts_with("details-v1-") && l.contains("Kubernetes")),
                "{out}"
            )
        });
        check("istioctl proxy-config listener", &mut |out| {
            assert!(
                out.contains("\"name\": \"default.details-v1-wasmfiltering\""),
                "{out}"
            );
        });
        // The Wasm config comes by ECDS: its code is the agent's content-addressed file.
        check("istioctl proxy-config ecds", &mut |out| {
            assert!(
                out.contains("\"name\": \"default.details-v1-wasmfiltering\"")
                    && out.contains("/var/local/lib/wasm-filters/"),
                "{out}"
            );
        });
        check("kubectl logs deploy/details-v1", &mut |out| {
            assert!(out.contains("header-filter: rule 0"), "{out}")
        });
        check("gateway-trafficextension", &mut |out| {
            assert!(
                out.contains("kind: Gateway") && out.contains("name: bookinfo-gateway"),
                "{out}"
            )
        });
        check("tcp-bytes-count", &mut |out| {
            assert!(
                out.contains("applyTo: NETWORK_FILTER")
                    && out.contains("envoy.filters.network.tcp_proxy")
                    && out.contains("portNumber: 27017"),
                "{out}"
            )
        });
        if block.contains("kubectl apply -f \"$WORK/details.yaml\"")
            && !block.contains("header-filter:v2")
        {
            walk.sidecar_says(Some("hello details"));
            // The Pod the controller's annotations replaced may still be shutting down; the
            // debugging steps below name `deploy/details-v1`, which must be the new one.
            let one = e2e::poll_until(Instant::now() + PROPAGATION, || {
                let out =
                    walk.cluster
                        .kubectl_ok(&["get", "pods", "-l", "app=details", "-o", "name"]);
                (out.lines().count() == 1).then_some(())
            });
            assert!(one.is_some(), "the replaced details-v1 Pod never went away");
            checked.insert("deployed".into());
        }
        if block.contains("header-filter:v2") {
            walk.sidecar_says(Some("hello details v2"));
            checked.insert("upgraded".into());
        }
        if block.starts_with("kubectl apply -f \"$WORK/details-v1.yaml\"") {
            walk.sidecar_says(Some("hello details"));
            checked.insert("rolled back".into());
        }
        if block.contains("details-te.yaml") {
            // The TrafficExtension serves it now, through istio-agent's pull; no EnvoyFilter.
            assert!(
                out.contains("trafficextension.extensions.istio.io/details-v1-wasmfiltering")
                    && !out.contains("envoyfilter.networking.istio.io/"),
                "{out}"
            );
            // The sidecar's extension config is the module istio-agent pulled, no longer the
            // node agent's file.
            let mut dump = String::new();
            let pulled = e2e::poll_until(Instant::now() + PROPAGATION, || {
                let o = walk.cluster.kubectl(&[
                    "exec",
                    "deploy/details-v1",
                    "-c",
                    "istio-proxy",
                    "--",
                    "pilot-agent",
                    "request",
                    "GET",
                    "config_dump?resource=ecds_filters",
                ]);
                dump = String::from_utf8_lossy(&o.stdout).into_owned();
                (dump.contains("default.details-v1-wasmfiltering")
                    && !dump.contains("/var/local/lib/wasm-filters/"))
                .then_some(())
            });
            assert!(
                pulled.is_some(),
                "the sidecar's extension config is not the TrafficExtension's: {dump}"
            );
            walk.sidecar_says(Some("hello details"));
            checked.insert("trafficExtension".into());
        }
        if block.contains("kubectl delete filterdeployment") {
            assert!(out.contains("No resources found"), "{out}");
            walk.sidecar_says(None);
            checked.insert("uninstalled".into());
        }
    }
    let want = [
        "wasmctl run target/",
        "wasmctl inspect",
        "get configmap -l filters.envoy-wasm-toolkit.io/node-report",
        "/status",
        "istioctl analyze",
        "istioctl proxy-status",
        "wasmctl verify",
        "istioctl proxy-config listener",
        "istioctl proxy-config ecds",
        "kubectl logs deploy/details-v1",
        "deployed",
        "upgraded",
        "rolled back",
        "trafficExtension",
        "gateway-trafficextension",
        "tcp-bytes-count",
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
    let left = walk.cluster.kubectl(&["get", "namespace", "wasm-system"]);
    assert!(
        !left.status.success() || String::from_utf8_lossy(&left.stdout).contains("Terminating")
    );
}
