//! A real Kubernetes cluster on this machine: the control plane of [`crate::controlplane`]
//! (etcd, kube-apiserver, kube-controller-manager, kube-scheduler) on 127.0.0.1, and nodes that
//! each run containerd (with Debian's runc), a kubelet and kube-proxy, all built from their Go
//! modules by `scripts/control-plane-build` and `scripts/node-build`. CoreDNS runs as a
//! Deployment, as in any cluster. Images come from `scripts/cluster-images` (buildah, from this
//! project's binaries and Debian packages) through a registry on 127.0.0.1; nothing is pulled
//! from outside.
//!
//! Network: everything with an address other than loopback lives in network namespaces the
//! cluster creates. A router namespace holds a bridge (`10.250.0.1/24`); each node has a
//! namespace of its own with a veth on that bridge (`10.250.0.11`, `.12`, ...) and a Pod range
//! (`10.244.N.0/24`, Debian's CNI bridge plugin), routed by the router. The relay
//! ([`crate::netns`]) listens at `10.250.0.1` for the API server and the registry (port
//! [`CLUSTER_REGISTRY_PORT`]) and carries both to their 127.0.0.1 ports, and it is the API
//! server's egress proxy to kubelets and Pods (`kubectl exec`, `logs`, webhooks).
//!
//! Each node's kubelet and containerd run in a mount namespace of their own, where the node's
//! directory is bind-mounted over `/var` and a tmpfs over `/run`, so `/var/lib/kubelet`,
//! `/var/lib/containerd`, `/var/log/pods`, `/run/containerd` and the Pods' network namespaces are
//! the node's own and vanish with it; its cgroups live under `/<id>-<node>` in every hierarchy
//! (kubelet `cgroupRoot`). [`Cluster::down`] (also on drop) kills every process of every node by
//! namespace and cgroup, removes those cgroups and restores the kernel settings the kubelet
//! changes, so the host is left as it was found.
//!
//! ```no_run
//! let cluster = e2e::cluster::Cluster::start(2);
//! let nodes = cluster.kubectl_ok(&["get", "nodes", "-o", "name"]);
//! assert_eq!(nodes.lines().count(), 2);
//! ```

use crate::controlplane::{self, ControlPlane, NodeAccess, Proc, free_port};
use crate::netns::{self, sh_in};
use serde_json::{Value, json};
use std::fs;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

mod addons;
mod node;
mod teardown;

use teardown::{
    CGROUP_PREFIX, HOST_SYSCTLS, cgroup_hierarchies, cgroup_pids, join_node_cgroup, read_sysctl,
    start_time,
};
pub use teardown::{NodeState, State, reap_stale_nodes, teardown};

/// The router namespace's address on the nodes' bridge: where nodes and Pods reach the API
/// server and the registry.
pub const ROUTER_IP: Ipv4Addr = Ipv4Addr::new(10, 250, 0, 1);
/// The registry's port at [`ROUTER_IP`] (what Pods use: `10.250.0.1:5000/...`).
pub const CLUSTER_REGISTRY_PORT: u16 = 5000;
/// The password registry's address from the cluster ([`Cluster::start_private_registry`]).
pub const PRIVATE_REGISTRY: &str = "10.250.0.1:5001";
/// The workstation's address on the nodes' bridge ([`Cluster::start_workstation`]).
pub const WORKSTATION_IP: Ipv4Addr = Ipv4Addr::new(10, 250, 0, 2);
/// The Pods' address range; node N has `10.244.N.0/24`.
pub const CLUSTER_CIDR: &str = "10.244.0.0/16";
/// The cluster DNS Service's address (in the API server's Service range, 10.0.0.0/24).
pub const DNS_IP: &str = "10.0.0.10";
/// How long nodes may take to become Ready after their kubelets start.
pub const NODE_READY_DEADLINE: Duration = Duration::from_secs(120);

/// The binaries of a node beyond Kubernetes's own (containerd, its shim, ctr, CoreDNS), built
/// once per machine by `scripts/node-build`.
pub fn node_bin_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| controlplane::script_output("scripts/node-build"))
}

/// The `cluster` binary of this crate (the relay runs as `cluster relay ...`), built on first use.
fn cluster_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let status = Command::new(cargo)
            .current_dir(crate::workspace_root())
            .args(["build", "--quiet", "-p", "e2e", "--bin", "cluster"])
            .status()
            .expect("run cargo");
        assert!(status.success(), "building the cluster binary failed");
        crate::target_dir().join("debug/cluster")
    })
}

/// The images the nodes run, as references in the cluster's registry.
#[derive(Debug, Clone, Default)]
pub struct Images {
    /// `NAME=REF` lines of `scripts/cluster-images`.
    pub refs: Vec<(String, String)>,
}

impl Images {
    /// The reference of `name` (`WASMCTL_IMAGE`, `APP_IMAGE`, ...).
    pub fn get(&self, name: &str) -> Option<&str> {
        self.refs
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// A running cluster.
pub struct Cluster {
    dir: PathBuf,
    id: String,
    detached: bool,
    tied: bool,
    restarts: usize,
    /// The process holding the router namespace.
    router: u32,
    _temp: Option<tempfile::TempDir>,
    cp: Option<ControlPlane>,
    procs: Vec<Proc>,
    state: State,
    /// The registry on the host (`wasmctl push` here; the nodes pull the same references).
    pub registry: SocketAddr,
    /// The images pushed there.
    pub images: Images,
    /// The admin kubeconfig.
    pub kubeconfig: PathBuf,
}

/// The registry as Pods reach it (`10.250.0.1:5000`).
pub fn cluster_registry() -> String {
    format!("{ROUTER_IP}:{CLUSTER_REGISTRY_PORT}")
}

fn write(path: &Path, text: impl AsRef<[u8]>) -> Result<(), String> {
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).map_err(|e| format!("{}: {e}", parent.display()))?;
    }
    fs::write(path, text).map_err(|e| format!("{}: {e}", path.display()))
}

/// A short id that names this cluster's cgroups (unique among clusters running at once).
/// A bearer token no Pod can guess (the API server is reachable from Pods): 128 random bits.
fn random_token() -> String {
    use std::io::Read;
    let mut bytes = [0u8; 16];
    if let Ok(mut f) = fs::File::open("/dev/urandom") {
        let _ = f.read_exact(&mut bytes);
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn cluster_id() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!(
        "{CGROUP_PREFIX}{:x}{:05x}",
        std::process::id(),
        nanos & 0xfffff
    )
}

impl Cluster {
    /// A cluster of `nodes` nodes in a temporary directory, tied to the calling thread (see
    /// `Proc::spawn` in `controlplane`); taken down on drop. Panics with the logs on failure.
    pub fn start(nodes: usize) -> Cluster {
        let temp = tempfile::Builder::new()
            .prefix("cluster-")
            .tempdir()
            .expect("temp dir");
        let mut c = Cluster::start_in(temp.path(), nodes, true).unwrap_or_else(|e| panic!("{e}"));
        c._temp = Some(temp);
        c
    }

    /// Bring a cluster up with its files in `dir` (see the module docs); returns once every
    /// node is Ready, CoreDNS serves and istiod's injection webhook is trusted. On failure
    /// everything started is taken down.
    pub fn start_in(dir: &Path, nodes: usize, tied: bool) -> Result<Cluster, String> {
        fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let dir = dir.canonicalize().map_err(|e| e.to_string())?;
        reap_stale_nodes();
        // Build (or find) everything first: a missing binary fails before anything starts.
        let _ = controlplane::bin_dir();
        let _ = node_bin_dir();
        let _ = cluster_bin();
        let mut c = Cluster {
            kubeconfig: dir.join("control-plane/kubeconfig"),
            dir,
            id: cluster_id(),
            detached: false,
            tied,
            restarts: 0,
            router: 0,
            _temp: None,
            cp: None,
            procs: Vec::new(),
            state: State::default(),
            registry: SocketAddr::from(([127, 0, 0, 1], 0)),
            images: Images::default(),
        };
        c.state.sysctls = HOST_SYSCTLS
            .iter()
            .filter_map(|k| read_sysctl(k).map(|v| (k.to_string(), v)))
            .collect();
        match c.bring_up(nodes, tied) {
            Ok(()) => Ok(c),
            Err(e) => {
                let logs = c.logs();
                c.down();
                Err(format!("{e}\n{logs}"))
            }
        }
    }

    fn spawn(&mut self, name: &str, cmd: Command, tied: bool) -> u32 {
        let p = Proc::spawn(name, cmd, self.dir.join(format!("{name}.log")), tied);
        let pid = p.child.id();
        self.count_in_node(name, pid);
        self.state.pids.push((pid, start_time(pid).unwrap_or(0)));
        self.procs.push(p);
        self.save_state();
        pid
    }

    /// Count a node's own process in its cgroups (pids hierarchy): containerd (and so the runc
    /// shims it starts) in `runtime`, the others (the namespace holder, kubelet, kube-proxy) in
    /// `owner`, which is empty once whoever started the node is gone (see [`reap_stale_nodes`]).
    fn count_in_node(&self, name: &str, pid: u32) {
        if let Some(node) = self
            .state
            .nodes
            .iter()
            .find(|n| name.starts_with(&format!("{}-", n.name)))
        {
            join_node_cgroup(&node.cgroup, pid, name.ends_with("-containerd"));
        }
    }

    fn save_state(&self) {
        let _ = write(
            &self.dir.join("cluster.json"),
            serde_json::to_vec_pretty(&self.state.to_json()).unwrap_or_default(),
        );
    }

    fn bring_up(&mut self, nodes: usize, tied: bool) -> Result<(), String> {
        let router = self.start_router(tied)?;
        self.router = router;
        self.start_registry(tied)?;
        let api_port = free_port();
        let egress = self.dir.join("egress.sock");
        self.start_relay(router, api_port, &egress, tied)?;
        let mut tokens = Vec::new();
        for i in 1..=nodes {
            tokens.push((
                random_token(),
                format!("system:node:node-{i}"),
                "system:nodes".to_string(),
            ));
        }
        tokens.push((
            random_token(),
            "system:kube-proxy".to_string(),
            "e2e:kube-proxy".to_string(),
        ));
        let access = NodeAccess {
            advertise: ROUTER_IP,
            api_port,
            egress: egress.clone(),
            tokens: tokens.clone(),
            cluster_cidr: CLUSTER_CIDR.into(),
        };
        let cp = ControlPlane::start_for_nodes(&self.dir.join("control-plane"), tied, access)?;
        // The control plane's processes are recorded too, for `down` from another process.
        if let Ok(pids) = fs::read_to_string(self.dir.join("control-plane/pids")) {
            self.state.pids.extend(
                pids.lines()
                    .filter_map(|l| l.split_whitespace().next()?.parse::<u32>().ok())
                    .map(|p| (p, start_time(p).unwrap_or(0))),
            );
        }
        self.cp = Some(cp);
        self.save_state();
        self.build_images()?;
        let kube_proxy_token = tokens.last().map(|t| t.0.clone()).unwrap_or_default();
        for i in 1..=nodes {
            self.start_node(i, &tokens[i - 1].0, &kube_proxy_token, router, tied)?;
        }
        self.wait_nodes_ready(nodes)?;
        self.install_coredns()?;
        self.install_istio()?;
        self.write_env()?;
        Ok(())
    }

    /// The router namespace: a bridge for the nodes, forwarding on.
    fn start_router(&mut self, tied: bool) -> Result<u32, String> {
        let mut cmd = Command::new("unshare");
        cmd.args(["--net", "--", "sleep", "infinity"]);
        let pid = self.spawn("router", cmd, tied);
        wait_own_netns(pid)?;
        sh_in(
            pid,
            false,
            &format!(
                "ip link set lo up
                 ip link add br0 type bridge
                 ip addr add {ROUTER_IP}/24 dev br0
                 ip link set br0 up
                 sysctl -qw net.ipv4.ip_forward=1"
            ),
        )?;
        Ok(pid)
    }

    fn start_registry(&mut self, tied: bool) -> Result<(), String> {
        let port = free_port();
        let cfg = self.dir.join("registry/config.yml");
        write(
            &cfg,
            format!(
                "version: 0.1\nlog:\n  level: warn\n  accesslog:\n    disabled: true\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:{port}\n",
                self.dir.join("registry/storage").display()
            ),
        )?;
        let mut cmd = Command::new("docker-registry");
        cmd.arg("serve").arg(&cfg);
        self.spawn("registry", cmd, tied);
        self.registry = SocketAddr::from(([127, 0, 0, 1], port));
        self.wait_registry()
    }

    fn wait_registry(&self) -> Result<(), String> {
        let addr = self.registry;
        crate::poll_until(Instant::now() + controlplane::READY_DEADLINE, || {
            crate::http1::get(addr, "/v2/", &[])
                .is_ok_and(|r| r.status() == 200)
                .then_some(())
        })
        .ok_or_else(|| format!("the registry on {addr} did not answer /v2/"))
    }

    fn start_relay(
        &mut self,
        router: u32,
        api_port: u16,
        egress: &Path,
        tied: bool,
    ) -> Result<(), String> {
        let mut cmd = Command::new(cluster_bin());
        cmd.arg("relay")
            .arg("--netns")
            .arg(format!("/proc/{router}/ns/net"))
            .arg("--forward")
            .arg(format!("{ROUTER_IP}:{api_port}=127.0.0.1:{api_port}"))
            .arg("--forward")
            .arg(format!("{}={}", cluster_registry(), self.registry))
            .arg("--connect-proxy")
            .arg(egress);
        self.spawn("relay", cmd, tied);
        crate::poll_until(Instant::now() + Duration::from_secs(20), || {
            std::os::unix::net::UnixStream::connect(egress)
                .ok()
                .map(|_| ())
        })
        .ok_or_else(|| "the relay did not listen".to_string())
    }

    fn kubeconfig_text(&self, token: &str) -> String {
        let api = self
            .cp
            .as_ref()
            .map(|c| c.endpoints.api.port())
            .unwrap_or(0);
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: local\n  cluster:\n    server: https://{ROUTER_IP}:{api}\n    certificate-authority: /run/node/ca.crt\nusers:\n- name: node\n  user:\n    token: {token}\ncontexts:\n- name: local\n  context:\n    cluster: local\n    user: node\ncurrent-context: local\n"
        )
    }

    fn wait_nodes_ready(&self, nodes: usize) -> Result<(), String> {
        let deadline = Instant::now() + NODE_READY_DEADLINE;
        let ready = crate::poll_until(deadline, || {
            let out = self.kubectl(&[
                "get",
                "nodes",
                "-o",
                "jsonpath={range .items[*]}{.metadata.name}={.status.conditions[?(@.type==\"Ready\")].status}{\"\\n\"}{end}",
            ]);
            let text = String::from_utf8_lossy(&out.stdout);
            (text.lines().filter(|l| l.ends_with("=True")).count() == nodes).then_some(())
        });
        ready.ok_or_else(|| {
            format!(
                "nodes not Ready within {NODE_READY_DEADLINE:?}:\n{}",
                String::from_utf8_lossy(&self.kubectl(&["describe", "nodes"]).stdout)
            )
        })
    }

    /// The lines of `DIR/env`.
    pub fn env_lines(&self) -> String {
        let mut s = format!(
            "export KUBECONFIG={}\nexport REGISTRY={}\nexport CLUSTER_REGISTRY={}\nexport PATH={}:$PATH\n",
            self.kubeconfig.display(),
            self.registry,
            cluster_registry(),
            controlplane::bin_dir().display()
        );
        for (k, v) in &self.images.refs {
            s.push_str(&format!("export {k}={v}\n"));
        }
        s
    }

    fn write_env(&self) -> Result<(), String> {
        write(&self.dir.join("env"), self.env_lines())
    }

    /// The directory of its files.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The control plane.
    pub fn cp(&self) -> &ControlPlane {
        self.cp.as_ref().expect("the control plane is up")
    }

    /// The nodes.
    pub fn nodes(&self) -> &[NodeState] {
        &self.state.nodes
    }

    /// `kubectl ARGS` as the admin.
    pub fn kubectl(&self, args: &[&str]) -> Output {
        match &self.cp {
            Some(cp) => cp.kubectl(args),
            None => Command::new("false").output().expect("run false"),
        }
    }

    /// `kubectl ARGS`, failing the test with its error output unless it succeeds; stdout.
    pub fn kubectl_ok(&self, args: &[&str]) -> String {
        self.cp().kubectl_ok(args)
    }

    /// The tail of every process's log.
    pub fn logs(&self) -> String {
        let mut s: String = self
            .procs
            .iter()
            .map(|p| {
                format!(
                    "---- {} ({}) ----\n{}\n",
                    p.name,
                    p.log.display(),
                    p.tail(25)
                )
            })
            .collect();
        if let Some(cp) = &self.cp {
            s.push_str(&cp.logs());
        }
        s
    }

    /// Leave everything running (`scripts/cluster up`); `DIR/cluster.json` keeps what
    /// `scripts/cluster down DIR` needs.
    pub fn detach(mut self) {
        self.procs.clear();
        if let Some(cp) = self.cp.take() {
            cp.detach();
        }
        self.detached = true;
        self._temp = None;
    }

    /// Take everything down (see [`teardown`]); returns what could not be undone.
    pub fn down(&mut self) -> Vec<String> {
        if std::thread::panicking() {
            eprintln!("{}", self.logs());
        }
        let problems = teardown(&self.state);
        for p in &mut self.procs {
            p.kill();
        }
        self.procs.clear();
        if let Some(mut cp) = self.cp.take() {
            cp.stop();
        }
        self.state = State::default();
        let _ = fs::remove_file(self.dir.join("cluster.json"));
        problems
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if self.detached {
            return;
        }
        let problems = self.down();
        if !problems.is_empty() {
            eprintln!("cluster teardown: {}", problems.join("; "));
        }
    }
}

/// `scripts/cluster down DIR`: read `DIR/cluster.json` and take it all down.
pub fn down_dir(dir: &Path) -> Result<(), String> {
    let path = dir.join("cluster.json");
    let text = fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let v: Value = serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    let state = State::from_json(&v)?;
    let problems = teardown(&state);
    if problems.is_empty() {
        let _ = fs::remove_file(&path);
        Ok(())
    } else {
        Err(problems.join("\n"))
    }
}

/// Wait until `pid` has a network namespace other than ours (unshare has run).
fn wait_own_netns(pid: u32) -> Result<(), String> {
    let ours = netns::ns_id(std::process::id(), "net");
    crate::poll_until(Instant::now() + Duration::from_secs(10), || {
        let theirs = netns::ns_id(pid, "net")?;
        (Some(&theirs) != ours.as_ref()).then_some(())
    })
    .ok_or_else(|| format!("process {pid} did not enter a network namespace of its own"))
}
