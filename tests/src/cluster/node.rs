//! One node: its namespaces and mounts, its link to the router, its cgroups, and containerd,
//! the kubelet and kube-proxy started inside; what a test does to a node (restart its kubelet).

use super::*;
use teardown::make_cgroups;

impl Cluster {
    pub(super) fn start_node(
        &mut self,
        i: usize,
        token: &str,
        kube_proxy_token: &str,
        router: u32,
        tied: bool,
    ) -> Result<(), String> {
        let name = format!("node-{i}");
        let ip = node_ip(i);
        let pod_cidr = format!("10.244.{i}.0/24");
        let nd = self.dir.join(&name);
        let cgroup = format!("{}-{name}", self.id);
        // The node's files; inside the node they are at /run/node.
        for d in ["var/lib", "var/log", "var/local/lib", "var/cache", "cni"] {
            fs::create_dir_all(nd.join(d)).map_err(|e| e.to_string())?;
        }
        let tmp = nd.join("var/tmp");
        fs::create_dir_all(&tmp).map_err(|e| e.to_string())?;
        let _ = Command::new("chmod").arg("1777").arg(&tmp).status();
        for (link, target) in [("var/run", "/run"), ("var/lock", "/run/lock")] {
            let _ = std::os::unix::fs::symlink(target, nd.join(link));
        }
        fs::copy(self.dir.join("control-plane/pki/ca.crt"), nd.join("ca.crt"))
            .map_err(|e| format!("copy the CA: {e}"))?;
        write(&nd.join("resolv.conf"), "")?;
        write(&nd.join("kubelet.kubeconfig"), self.kubeconfig_text(token))?;
        write(
            &nd.join("kube-proxy.kubeconfig"),
            self.kubeconfig_text(kube_proxy_token),
        )?;
        self.write_node_configs(&nd, &name, ip, &pod_cidr, &cgroup)?;

        // The Node object first, with its Pod range: the kubelet adopts it on registration.
        let node_yaml = format!(
            "apiVersion: v1\nkind: Node\nmetadata:\n  name: {name}\n  labels:\n    kubernetes.io/hostname: {name}\nspec:\n  podCIDR: {pod_cidr}\n  podCIDRs: [{pod_cidr}]\n"
        );
        self.cp().apply(&node_yaml)?;

        // Namespaces, then the node's mounts inside its own mount namespace.
        let mut cmd = Command::new("unshare");
        cmd.args([
            "--net",
            "--mount",
            "--propagation",
            "private",
            "--",
            "sleep",
            "infinity",
        ]);
        let holder = self.spawn(&format!("{name}-holder"), cmd, tied);
        wait_own_netns(holder)?;
        self.state.nodes.push(NodeState {
            name: name.clone(),
            ip,
            pod_cidr: pod_cidr.clone(),
            holder,
            mnt: netns::ns_id(holder, "mnt").unwrap_or_default(),
            net: netns::ns_id(holder, "net").unwrap_or_default(),
            cgroup: cgroup.clone(),
        });
        self.save_state();
        make_cgroups(&cgroup)?;
        join_node_cgroup(&cgroup, holder, false);
        sh_in(
            holder,
            true,
            &format!(
                "mount --make-rshared /
                 mount -t tmpfs -o mode=0755 node-run /run
                 mkdir -p /run/node /run/lock
                 mount --bind {} /run/node
                 mount --rbind /run/node/var /var",
                nd.display()
            ),
        )?;
        sh_in(
            router,
            false,
            &format!(
                "ip link add v{name} type veth peer name eth0 netns {holder}
                 ip link set v{name} master br0 up
                 ip route add {pod_cidr} via {ip}"
            ),
        )?;
        sh_in(
            holder,
            false,
            &format!(
                "ip link set lo up
                 ip addr add {ip}/24 dev eth0
                 ip link set eth0 up
                 ip route add default via {ROUTER_IP}
                 sysctl -qw net.ipv4.ip_forward=1
                 sysctl -qw net.bridge.bridge-nf-call-iptables=1 || true"
            ),
        )?;

        let path = node_path();
        let containerd = node_bin_dir().join("containerd");
        let mut cmd = netns::nsenter(
            holder,
            true,
            &[
                containerd.to_str().unwrap_or("containerd"),
                "--config",
                "/run/node/containerd.toml",
            ],
        );
        cmd.env("PATH", &path);
        self.spawn(&format!("{name}-containerd"), cmd, tied);
        let ctr = node_bin_dir().join("ctr");
        let ctr = ctr.display();
        crate::poll_until(Instant::now() + controlplane::READY_DEADLINE, || {
            sh_in(
                holder,
                true,
                &format!("{ctr} --address /run/containerd/containerd.sock version"),
            )
            .ok()
            .map(|_| ())
        })
        .ok_or_else(|| format!("{name}: containerd did not answer"))?;

        let cmd = kubelet_cmd(holder, &name, ip);
        self.spawn(&format!("{name}-kubelet"), cmd, tied);

        let proxy = controlplane::bin("kube-proxy");
        let mut cmd = netns::nsenter(
            holder,
            true,
            &[
                proxy.to_str().unwrap_or("kube-proxy"),
                "--config=/run/node/kube-proxy.yaml",
                "--v=1",
            ],
        );
        cmd.env("PATH", &path);
        self.spawn(&format!("{name}-kube-proxy"), cmd, tied);
        Ok(())
    }

    pub(super) fn write_node_configs(
        &self,
        nd: &Path,
        name: &str,
        ip: Ipv4Addr,
        pod_cidr: &str,
        cgroup: &str,
    ) -> Result<(), String> {
        let pause = self.images.get("PAUSE_IMAGE").unwrap_or("pause");
        let registry = cluster_registry();
        write(
            &nd.join("containerd.toml"),
            format!(
                r#"version = 3
root = "/var/lib/containerd"
state = "/run/containerd"
[grpc]
  address = "/run/containerd/containerd.sock"
[plugins.'io.containerd.cri.v1.images']
  snapshotter = "overlayfs"
  [plugins.'io.containerd.cri.v1.images'.pinned_images]
    sandbox = "{pause}"
  [plugins.'io.containerd.cri.v1.images'.registry]
    config_path = "/run/node/certs.d"
[plugins.'io.containerd.cri.v1.runtime']
  # root here cannot lower oom_score_adj (no CAP_SYS_RESOURCE): keep containers at or above ours
  restrict_oom_score_adj = true
  enable_criu = false
  [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc]
    runtime_type = "io.containerd.runc.v2"
    [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]
      BinaryName = "/usr/sbin/runc"
      SystemdCgroup = false
  [plugins.'io.containerd.cri.v1.runtime'.cni]
    bin_dirs = ["/usr/lib/cni"]
    conf_dir = "/run/node/cni"
[plugins.'io.containerd.grpc.v1.cri']
  stream_server_address = "127.0.0.1"
"#
            ),
        )?;
        // Every registry name the nodes pull by goes to the one registry: the host's name for
        // it, the cluster's, and docker.io (the manifests' `busybox`), as an air-gapped
        // cluster mirrors it.
        for host in [
            self.registry.to_string(),
            registry.clone(),
            "docker.io".into(),
        ] {
            write(
                &nd.join(format!("certs.d/{host}/hosts.toml")),
                format!(
                    "server = \"http://{registry}\"\n[host.\"http://{registry}\"]\n  capabilities = [\"pull\", \"resolve\"]\n"
                ),
            )?;
        }
        write(
            &nd.join("cni/10-bridge.conflist"),
            serde_json::to_vec_pretty(&json!({
                "cniVersion": "1.0.0",
                "name": "cluster",
                "plugins": [
                    {"type": "bridge", "bridge": "cni0", "isGateway": true, "ipMasq": false,
                     "hairpinMode": true,
                     "ipam": {"type": "host-local", "ranges": [[{"subnet": pod_cidr}]],
                              "routes": [{"dst": "0.0.0.0/0"}]}},
                    {"type": "portmap", "capabilities": {"portMappings": true}}
                ]
            }))
            .unwrap_or_default(),
        )?;
        write(
            &nd.join("kubelet.yaml"),
            format!(
                "apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
# This machine: cgroup v1 (hybrid layout), no systemd as PID 1.
failCgroupV1: false
cgroupDriver: cgroupfs
cgroupRoot: /{cgroup}
containerRuntimeEndpoint: unix:///run/containerd/containerd.sock
address: {ip}
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
authentication:
  anonymous: {{enabled: false}}
  webhook: {{enabled: true}}
  x509: {{clientCAFile: /run/node/ca.crt}}
authorization: {{mode: Webhook}}
clusterDomain: cluster.local
clusterDNS: [{DNS_IP}]
# Pods get the cluster's DNS only: nothing outside it resolves.
resolvConf: /run/node/resolv.conf
failSwapOn: false
# Root here lacks CAP_SYS_RESOURCE: a negative oom_score_adj is refused.
oomScoreAdj: 0
protectKernelDefaults: false
serializeImagePulls: false
# The nodes share this machine's disk and memory: evict only when nearly out.
evictionHard: {{memory.available: 100Mi, nodefs.available: 1%, imagefs.available: 1%, nodefs.inodesFree: 1%}}
imageGCHighThresholdPercent: 100
podPidsLimit: -1
syncFrequency: 10s
fileCheckFrequency: 10s
"
            ),
        )?;
        write(
            &nd.join("kube-proxy.yaml"),
            format!(
                "apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection: {{kubeconfig: /run/node/kube-proxy.kubeconfig}}
hostnameOverride: {name}
bindAddress: {ip}
clusterCIDR: {CLUSTER_CIDR}
mode: iptables
# Pod to Service to a Pod on the same bridge: masquerade so the answer comes back the same way.
iptables: {{masqueradeAll: true}}
# conntrack limits are the host's (not per namespace): leave them alone.
conntrack: {{maxPerCore: 0, min: 0, tcpEstablishedTimeout: 0s, tcpCloseWaitTimeout: 0s}}
metricsBindAddress: 127.0.0.1:10249
healthzBindAddress: 127.0.0.1:10256
"
            ),
        )?;
        Ok(())
    }

    /// Stop node `name`'s kubelet (SIGTERM, as a service manager restarting it does) and start
    /// it again; its Pods keep running meanwhile. Returns once the node is Ready again.
    pub fn restart_kubelet(&mut self, name: &str) {
        let proc_name = format!("{name}-kubelet");
        let mut p = self.take_proc(&proc_name);
        // SAFETY: kill(2) with a pid and a signal number has no memory effects.
        unsafe {
            libc::kill(p.child.id() as libc::pid_t, libc::SIGTERM);
        }
        let _ = p.child.wait();
        let node = self
            .state
            .nodes
            .iter()
            .find(|n| n.name == name)
            .cloned()
            .expect("a node of this cluster");
        self.respawn(&proc_name, kubelet_cmd(node.holder, name, node.ip));
        // The node's Ready condition outlives a short restart (its lease has not expired), so
        // it says nothing: wait until the new kubelet serves its Pods through the API server
        // (what `kubectl logs` and `exec` need) and the node is Ready.
        let serving = crate::poll_until(Instant::now() + NODE_READY_DEADLINE, || {
            let out = self.kubectl(&["get", "--raw", &format!("/api/v1/nodes/{name}/proxy/pods")]);
            let pods: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
            pods["items"]
                .as_array()
                .is_some_and(|items| !items.is_empty())
                .then_some(())
        });
        assert!(
            serving.is_some(),
            "{name}'s kubelet did not serve its Pods after the restart"
        );
        let out = self.kubectl(&[
            "wait",
            &format!("node/{name}"),
            "--for=condition=Ready",
            "--timeout=120s",
        ]);
        assert!(
            out.status.success(),
            "{name} not Ready after its kubelet restarted: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// The directory of node `name` (its `/var` is `DIR/NAME/var`).
    pub fn node_dir(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    pub(super) fn take_proc(&mut self, name: &str) -> Proc {
        let i = self
            .procs
            .iter()
            .position(|p| p.name == name)
            .unwrap_or_else(|| panic!("no process {name} in the cluster"));
        self.procs.remove(i)
    }

    pub(super) fn respawn(&mut self, name: &str, cmd: Command) {
        self.restarts += 1;
        let tied = self.tied;
        let log_name = format!("{name}.{}", self.restarts);
        let p = Proc::spawn(name, cmd, self.dir.join(format!("{log_name}.log")), tied);
        let pid = p.child.id();
        self.count_in_node(name, pid);
        self.state.pids.push((pid, start_time(pid).unwrap_or(0)));
        self.procs.push(p);
        self.save_state();
    }

    /// Stop the registry (every pull and tag resolution fails until [`Cluster::start_registry_again`]).
    pub fn stop_registry(&mut self) {
        self.take_proc("registry").kill();
    }

    /// Start the registry again on its address, with the images it held.
    pub fn start_registry_again(&mut self) {
        let mut cmd = Command::new("docker-registry");
        cmd.arg("serve").arg(self.dir.join("registry/config.yml"));
        self.respawn("registry", cmd);
        self.wait_registry().expect("the registry answers again");
    }
}

/// `PATH` on a node: its binaries, then the system's.
pub(super) fn node_path() -> String {
    format!(
        "{}:{}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        node_bin_dir().display(),
        controlplane::bin_dir().display()
    )
}

/// The kubelet of node `name`, inside the namespaces `holder` keeps.
pub(super) fn kubelet_cmd(holder: u32, name: &str, ip: Ipv4Addr) -> Command {
    let kubelet = controlplane::bin("kubelet");
    let mut cmd = netns::nsenter(
        holder,
        true,
        &[
            kubelet.to_str().unwrap_or("kubelet"),
            "--config=/run/node/kubelet.yaml",
            "--kubeconfig=/run/node/kubelet.kubeconfig",
            &format!("--hostname-override={name}"),
            &format!("--node-ip={ip}"),
            "--v=1",
        ],
    );
    cmd.env("PATH", node_path());
    cmd
}

pub(super) fn node_ip(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 250, 0, 10 + i as u8)
}
