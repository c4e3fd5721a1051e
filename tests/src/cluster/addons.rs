//! What runs on the nodes once they are Ready: the images, CoreDNS, istiod; and the toolkit's
//! own install and pushes, as the tests and docs/deploy.md do them.

use super::*;

impl Cluster {
    pub(super) fn build_images(&mut self) -> Result<(), String> {
        let script = crate::workspace_root().join("scripts/cluster-images");
        let out = Command::new(&script)
            .arg(self.registry.to_string())
            .arg(self.dir.join("images"))
            .stderr(Stdio::inherit())
            .output()
            .map_err(|e| format!("{}: {e}", script.display()))?;
        if !out.status.success() {
            return Err(format!("scripts/cluster-images failed: {}", out.status));
        }
        self.images.refs = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Ok(())
    }

    pub(super) fn install_coredns(&self) -> Result<(), String> {
        let image = self
            .images
            .get("COREDNS_IMAGE")
            .ok_or("no CoreDNS image was built")?;
        let yaml = fs::read_to_string(crate::workspace_root().join("tests/cluster/coredns.yaml"))
            .map_err(|e| format!("tests/cluster/coredns.yaml: {e}"))?
            .replace("${COREDNS_IMAGE}", image)
            .replace("${DNS_IP}", DNS_IP);
        self.cp().apply(&yaml)?;
        let out = self.kubectl(&[
            "-n",
            "kube-system",
            "rollout",
            "status",
            "deployment/coredns",
            "--timeout=120s",
        ]);
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "CoreDNS did not become ready: {}\n{}",
                String::from_utf8_lossy(&out.stderr),
                String::from_utf8_lossy(
                    &self
                        .kubectl(&["-n", "kube-system", "describe", "pods"])
                        .stdout
                )
            ))
        }
    }

    /// istiod as Istio installs it: `istioctl manifest generate` of the pinned module (profile
    /// `minimal`: istiod, its sidecar injection webhook, the CRDs), pointed at the images of
    /// `scripts/cluster-images`, with what upstream Envoy needs turned off (Istio's ALPN and
    /// metadata-exchange filters, its stats filter, auto mTLS; docs/istio.md). Returns once
    /// istiod is ready and the API server trusts its webhook.
    pub(super) fn install_istio(&self) -> Result<(), String> {
        let hub = self
            .images
            .get("ISTIO_HUB")
            .ok_or("no Istio images were built")?;
        let tag = self
            .images
            .get("ISTIO_TAG")
            .ok_or("no Istio images were built")?;
        let sets = [
            "profile=minimal".to_string(),
            format!("hub={hub}"),
            format!("tag={tag}"),
            "values.telemetry.enabled=false".into(),
            "values.pilot.env.PILOT_ENABLE_ALPN_FILTER=false".into(),
            "values.pilot.env.PILOT_ENABLE_METADATA_EXCHANGE=false".into(),
            "meshConfig.enableAutoMtls=false".into(),
            "meshConfig.enablePrometheusMerge=false".into(),
            // Two small nodes share this machine: ask for little.
            "values.pilot.autoscaleEnabled=false".into(),
            "values.pilot.resources.requests.cpu=100m".into(),
            "values.pilot.resources.requests.memory=256Mi".into(),
            "values.global.proxy.resources.requests.cpu=10m".into(),
            "values.global.proxy.resources.requests.memory=40Mi".into(),
        ];
        let mut cmd = Command::new(controlplane::bin("istioctl"));
        cmd.args(["manifest", "generate"]);
        for s in &sets {
            cmd.args(["--set", s]);
        }
        let out = cmd.output().map_err(|e| format!("istioctl: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "istioctl manifest generate failed: {}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        let manifest = String::from_utf8_lossy(&out.stdout).into_owned();
        write(&self.dir.join("istio.yaml"), &manifest)?;
        let out = self.cp().kubectl_stdin(
            &[
                "apply",
                "--server-side",
                "--force-conflicts",
                "--field-manager=istioctl",
                "-f",
                "-",
            ],
            Some(&manifest),
        );
        if !out.status.success() {
            return Err(format!(
                "applying Istio's manifest failed: {}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        let out = self.kubectl(&[
            "-n",
            controlplane::ISTIO_NAMESPACE,
            "rollout",
            "status",
            "deployment/istiod",
            "--timeout=180s",
        ]);
        if !out.status.success() {
            return Err(format!(
                "istiod did not become ready: {}\n{}",
                String::from_utf8_lossy(&out.stderr),
                String::from_utf8_lossy(
                    &self
                        .kubectl(&["-n", "istio-system", "describe", "pods"])
                        .stdout
                )
            ));
        }
        // istiod writes its CA into the injection webhook; until then the API server cannot
        // call it (and, failing closed, would refuse Pods in labelled namespaces).
        crate::poll_until(Instant::now() + controlplane::READY_DEADLINE, || {
            let out = self.kubectl(&[
                "get",
                "mutatingwebhookconfiguration",
                "istio-sidecar-injector",
                "-o",
                "jsonpath={.webhooks[0].clientConfig.caBundle}",
            ]);
            (!String::from_utf8_lossy(&out.stdout).trim().is_empty()).then_some(())
        })
        .ok_or_else(|| "istiod never wrote its CA into the injection webhook".to_string())
    }

    /// `kubectl apply -k manifests/` and the agent's and controller's image set to the
    /// cluster's wasmctl image, with the `--plain-http` that docs/deploy.md's step 0 adds for a
    /// registry without TLS and `controller_args` appended to the controller's, in one change
    /// each (one rollout); returns once both have rolled out.
    pub fn install_toolkit(&self, controller_args: &[&str]) {
        let manifests = crate::workspace_root().join("manifests");
        self.kubectl_ok(&["apply", "-k", &manifests.display().to_string()]);
        let image = self.images.get("WASMCTL_IMAGE").expect("wasmctl image");
        let arg = |a: &str| {
            format!(
                r#",{{"op":"add","path":"/spec/template/spec/containers/0/args/-","value":"{a}"}}"#
            )
        };
        for (kind, extra) in [
            ("daemonset/wasm-agent", &[][..]),
            ("deployment/wasmctl-controller", controller_args),
        ] {
            let mut patch = format!(
                r#"[{{"op":"replace","path":"/spec/template/spec/containers/0/image","value":"{image}"}}"#
            );
            for a in std::iter::once(&"--plain-http").chain(extra) {
                patch.push_str(&arg(a));
            }
            patch.push(']');
            self.kubectl_ok(&[
                "-n",
                "wasm-system",
                "patch",
                kind,
                "--type=json",
                "-p",
                &patch,
            ]);
        }
        for kind in ["daemonset/wasm-agent", "deployment/wasmctl-controller"] {
            self.kubectl_ok(&[
                "-n",
                "wasm-system",
                "rollout",
                "status",
                kind,
                "--timeout=180s",
            ]);
        }
    }

    /// `wasmctl push REGISTRY/REPO FILE --root-id ROOT_ID` to the cluster's registry (from the
    /// host; Pods pull the same repository at [`cluster_registry`]). Returns the digest.
    pub fn push_wasm(&self, repo_tag: &str, file: &Path, root_id: &str) -> String {
        let out = Command::new(crate::wasmctl_bin())
            .arg("push")
            .arg(format!("{}/{repo_tag}", self.registry))
            .arg(file)
            .args(["--root-id", root_id, "--plain-http"])
            .output()
            .expect("run wasmctl push");
        assert!(
            out.status.success(),
            "wasmctl push failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8_lossy(&out.stdout);
        text.split('@')
            .nth(1)
            .map(|d| d.trim().to_string())
            .unwrap_or_else(|| text.trim().to_string())
    }

    /// The processes of every node's Pods whose command line contains `needle`, found through
    /// the nodes' cgroups (what `ps` on the node would show).
    pub fn pod_processes(&self, needle: &str) -> Vec<u32> {
        let mut pids = Vec::new();
        for node in &self.state.nodes {
            for h in cgroup_hierarchies() {
                if h.ends_with("pids") {
                    cgroup_pids(&h.join(&node.cgroup), &mut pids);
                }
            }
        }
        pids.sort_unstable();
        pids.dedup();
        pids.retain(|pid| {
            fs::read(format!("/proc/{pid}/cmdline"))
                .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
                .is_ok_and(|c| c.contains(needle))
        });
        pids
    }

    /// A registry that asks for `user`/`password` (htpasswd, bcrypt), beside the anonymous one:
    /// on 127.0.0.1 here and at [`PRIVATE_REGISTRY`] for the nodes, Pods and the workstation
    /// (its own relay). The nodes pull from it with a Pod's `imagePullSecrets`, as from any
    /// private registry. Returns the address Pods use.
    pub fn start_private_registry(&mut self, user: &str, password: &str) -> String {
        let out = Command::new("htpasswd")
            .args(["-Bbn", user, password])
            .output()
            .expect("run htpasswd (Debian apache2-utils; run scripts/setup)");
        assert!(out.status.success(), "htpasswd failed: {out:?}");
        let dir = self.dir.join("private-registry");
        write(&dir.join("htpasswd"), out.stdout).expect("write htpasswd");
        let port = free_port();
        // Istio's fetcher takes only a realm that is an http(s) URL.
        write(
            &dir.join("config.yml"),
            format!(
                "version: 0.1\nlog:\n  level: warn\n  accesslog:\n    disabled: true\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:{port}\nauth:\n  htpasswd:\n    realm: https://registry.example.com/token\n    path: {}\n",
                dir.join("storage").display(),
                dir.join("htpasswd").display()
            ),
        )
        .expect("write the registry's config");
        let mut cmd = Command::new("docker-registry");
        cmd.arg("serve").arg(dir.join("config.yml"));
        let tied = self.tied;
        self.spawn("private-registry", cmd, tied);
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let up = crate::poll_until(Instant::now() + controlplane::READY_DEADLINE, || {
            crate::http1::get(addr, "/v2/", &[])
                .is_ok_and(|r| r.status() == 401)
                .then_some(())
        });
        assert!(
            up.is_some(),
            "the private registry on {addr} did not answer"
        );
        let router = self.router;
        let mut cmd = Command::new(cluster_bin());
        cmd.arg("relay")
            .arg("--netns")
            .arg(format!("/proc/{router}/ns/net"))
            .arg("--forward")
            .arg(format!("{PRIVATE_REGISTRY}={addr}"));
        self.spawn("private-relay", cmd, tied);
        let ns = PathBuf::from(format!("/proc/{router}/ns/net"));
        let target: SocketAddr = PRIVATE_REGISTRY.parse().expect("an address");
        let relayed = crate::poll_until(Instant::now() + Duration::from_secs(20), || {
            netns::in_netns(&ns, move || std::net::TcpStream::connect(target))
                .ok()
                .map(|_| ())
        });
        assert!(
            relayed.is_some(),
            "the relay to the private registry did not listen"
        );
        for node in self.state.nodes.clone() {
            write(
                &self
                    .node_dir(&node.name)
                    .join(format!("certs.d/{PRIVATE_REGISTRY}/hosts.toml")),
                format!("server = \"http://{PRIVATE_REGISTRY}\"\n"),
            )
            .expect("the nodes' registry configuration");
        }
        PRIVATE_REGISTRY.to_string()
    }

    /// A workstation on the cluster's network (network namespace, `10.250.0.2` on the bridge):
    /// what a person's machine is, where the registry and the API server have the same names
    /// as for the cluster. Returns the process holding its namespace (run commands there with
    /// [`netns::nsenter`]) and an admin kubeconfig naming the API server at its cluster
    /// address.
    pub fn start_workstation(&mut self) -> (u32, PathBuf) {
        let tied = self.tied;
        let mut cmd = Command::new("unshare");
        cmd.args(["--net", "--", "sleep", "infinity"]);
        let holder = self.spawn("workstation", cmd, tied);
        wait_own_netns(holder).expect("the workstation's namespace");
        self.state.namespaces.extend(netns::ns_id(holder, "net"));
        self.save_state();
        let router = self.router;
        sh_in(
            router,
            false,
            &format!(
                "ip link add vworkstation type veth peer name eth0 netns {holder}
                 ip link set vworkstation master br0 up"
            ),
        )
        .expect("link the workstation");
        sh_in(
            holder,
            false,
            &format!(
                "ip link set lo up
                 ip addr add {WORKSTATION_IP}/24 dev eth0
                 ip link set eth0 up
                 ip route add default via {ROUTER_IP}"
            ),
        )
        .expect("address the workstation");
        let text = fs::read_to_string(&self.kubeconfig).expect("the kubeconfig");
        let mut kc: Value = serde_json::from_str(&text).expect("kubeconfig JSON");
        let api = self.cp().endpoints.api.port();
        kc["clusters"][0]["cluster"]["server"] = json!(format!("https://{ROUTER_IP}:{api}"));
        let path = self.dir.join("workstation.kubeconfig");
        write(&path, serde_json::to_vec_pretty(&kc).expect("JSON")).expect("write");
        (holder, path)
    }
}
