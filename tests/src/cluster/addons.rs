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
}
