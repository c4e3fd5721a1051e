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

/// The router namespace's address on the nodes' bridge: where nodes and Pods reach the API
/// server and the registry.
pub const ROUTER_IP: Ipv4Addr = Ipv4Addr::new(10, 250, 0, 1);
/// The registry's port at [`ROUTER_IP`] (what Pods use: `10.250.0.1:5000/...`).
pub const CLUSTER_REGISTRY_PORT: u16 = 5000;
/// The Pods' address range; node N has `10.244.N.0/24`.
pub const CLUSTER_CIDR: &str = "10.244.0.0/16";
/// The cluster DNS Service's address (in the API server's Service range, 10.0.0.0/24).
pub const DNS_IP: &str = "10.0.0.10";
/// How long nodes may take to become Ready after their kubelets start.
pub const NODE_READY_DEADLINE: Duration = Duration::from_secs(120);

/// Kernel settings outside any namespace that a kubelet changes (`protectKernelDefaults:
/// false`): saved before the first kubelet starts, written back by [`Cluster::down`].
const HOST_SYSCTLS: [&str; 5] = [
    "vm.overcommit_memory",
    "kernel.panic",
    "kernel.panic_on_oops",
    "kernel.keys.root_maxkeys",
    "kernel.keys.root_maxbytes",
];

/// The binaries of a node beyond Kubernetes's own (containerd, its shim, ctr, CoreDNS), built
/// once per machine by `scripts/node-build`.
pub fn node_bin_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| script_output("scripts/node-build", &[]))
}

fn script_output(script: &str, args: &[&str]) -> PathBuf {
    let path = crate::workspace_root().join(script);
    let out = Command::new(&path)
        .args(args)
        .stderr(Stdio::inherit())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", path.display()));
    assert!(
        out.status.success(),
        "{} failed with {}",
        path.display(),
        out.status
    );
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
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

/// One node as [`Cluster::down`] needs to find everything of it again.
#[derive(Debug, Clone)]
pub struct NodeState {
    /// `node-1`, `node-2`, ...
    pub name: String,
    /// Its address on the bridge.
    pub ip: Ipv4Addr,
    /// Its Pod range.
    pub pod_cidr: String,
    /// The process holding its network and mount namespaces.
    pub holder: u32,
    /// `mnt:[...]` and `net:[...]` of the holder.
    pub mnt: String,
    /// See `mnt`.
    pub net: String,
    /// Its cgroup root, in every hierarchy (`/sys/fs/cgroup/*/<cgroup>`).
    pub cgroup: String,
}

/// What `DIR/cluster.json` records: enough to stop everything from another process.
#[derive(Debug, Clone, Default)]
pub struct State {
    /// Top-level processes (control plane, registry, relay, router, node processes), newest
    /// last, each with its start time (`/proc/PID/stat` field 22), so a pid the system has
    /// since given to another process is never signalled.
    pub pids: Vec<(u32, u64)>,
    /// The nodes.
    pub nodes: Vec<NodeState>,
    /// `name=value` of [`HOST_SYSCTLS`] before the first kubelet started.
    pub sysctls: Vec<(String, String)>,
}

impl State {
    fn to_json(&self) -> Value {
        json!({
            "pids": self.pids.iter().map(|(p, t)| json!([p, t])).collect::<Vec<_>>(),
            "sysctls": self.sysctls.iter().map(|(k, v)| json!([k, v])).collect::<Vec<_>>(),
            "nodes": self.nodes.iter().map(|n| json!({
                "name": n.name, "ip": n.ip.to_string(), "podCIDR": n.pod_cidr,
                "holder": n.holder, "mnt": n.mnt, "net": n.net, "cgroup": n.cgroup,
            })).collect::<Vec<_>>(),
        })
    }

    fn from_json(v: &Value) -> Result<State, String> {
        let s = |v: &Value, k: &str| -> Result<String, String> {
            v[k].as_str()
                .map(str::to_string)
                .ok_or_else(|| format!("cluster.json: {k} missing"))
        };
        let mut state = State::default();
        for p in v["pids"].as_array().into_iter().flatten() {
            if let (Some(pid), Some(t)) = (p[0].as_u64(), p[1].as_u64()) {
                state.pids.push((pid as u32, t));
            }
        }
        for kv in v["sysctls"].as_array().into_iter().flatten() {
            if let (Some(k), Some(val)) = (kv[0].as_str(), kv[1].as_str()) {
                state.sysctls.push((k.into(), val.into()));
            }
        }
        for n in v["nodes"].as_array().into_iter().flatten() {
            state.nodes.push(NodeState {
                name: s(n, "name")?,
                ip: s(n, "ip")?
                    .parse()
                    .map_err(|e| format!("cluster.json ip: {e}"))?,
                pod_cidr: s(n, "podCIDR")?,
                holder: n["holder"].as_u64().unwrap_or(0) as u32,
                mnt: s(n, "mnt")?,
                net: s(n, "net")?,
                cgroup: s(n, "cgroup")?,
            });
        }
        Ok(state)
    }
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

fn node_ip(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 250, 0, 10 + i as u8)
}

fn write(path: &Path, text: impl AsRef<[u8]>) -> Result<(), String> {
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).map_err(|e| format!("{}: {e}", parent.display()))?;
    }
    fs::write(path, text).map_err(|e| format!("{}: {e}", path.display()))
}

/// A short id that names this cluster's cgroups (unique among clusters running at once).
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

/// How the cgroups of this project's nodes are named: `ewt-<id>-node-<N>`.
const CGROUP_PREFIX: &str = "ewt-";

/// The cgroup v1 hierarchies mounted here (`/sys/fs/cgroup/cpu`, ...), and the v2 one if any.
fn cgroup_hierarchies() -> Vec<PathBuf> {
    let Ok(text) = fs::read_to_string("/proc/self/mountinfo") else {
        return Vec::new();
    };
    text.lines()
        .filter(|l| l.contains(" - cgroup ") || l.contains(" - cgroup2 "))
        .filter_map(|l| l.split_whitespace().nth(4).map(PathBuf::from))
        .collect()
}

/// Whether `pid` is gone (or a zombie).
fn gone(pid: u32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(s) => s
            .rsplit_once(") ")
            .is_some_and(|(_, rest)| rest.starts_with('Z')),
    }
}

/// When `pid` started (clock ticks after boot), if it exists.
fn start_time(pid: u32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(") ")?;
    rest.split_whitespace().nth(19)?.parse().ok()
}

fn kill9(pid: u32) {
    // SAFETY: kill(2) with a pid and a signal number has no memory effects.
    unsafe {
        libc::kill(pid as libc::pid_t, libc::SIGKILL);
    }
}

/// Every pid in the cgroup directory `dir` and below.
fn cgroup_pids(dir: &Path, out: &mut Vec<u32>) {
    if let Ok(text) = fs::read_to_string(dir.join("cgroup.procs")) {
        out.extend(text.lines().filter_map(|l| l.trim().parse::<u32>().ok()));
    }
    if let Ok(entries) = fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                cgroup_pids(&e.path(), out);
            }
        }
    }
}

/// Remove the cgroup directory `dir` and everything below it, deepest first.
fn remove_cgroup(dir: &Path) -> std::io::Result<()> {
    if let Ok(entries) = fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                remove_cgroup(&e.path())?;
            }
        }
    }
    match fs::remove_dir(dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

fn read_sysctl(name: &str) -> Option<String> {
    fs::read_to_string(format!("/proc/sys/{}", name.replace('.', "/")))
        .ok()
        .map(|s| s.trim().to_string())
}

/// Stop everything `state` names and undo what the nodes changed on the host; returns what
/// could not be undone.
pub fn teardown(state: &State) -> Vec<String> {
    let mut problems = Vec::new();
    let hierarchies = cgroup_hierarchies();
    // Nodes first: every process in a node's namespaces (kubelet, containerd, shims,
    // kube-proxy) or cgroups (the Pods' containers), until none is left.
    let deadline = Instant::now() + Duration::from_secs(30);
    for node in &state.nodes {
        loop {
            let mut pids = netns::pids_in_ns("mnt", &node.mnt);
            pids.extend(netns::pids_in_ns("net", &node.net));
            for h in &hierarchies {
                cgroup_pids(&h.join(&node.cgroup), &mut pids);
            }
            pids.retain(|p| !gone(*p));
            if pids.is_empty() {
                break;
            }
            if Instant::now() > deadline {
                problems.push(format!(
                    "{}: processes {pids:?} survived SIGKILL",
                    node.name
                ));
                break;
            }
            pids.iter().copied().for_each(kill9);
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    let ours: Vec<u32> = state
        .pids
        .iter()
        .rev()
        .filter(|(pid, t)| start_time(*pid) == Some(*t))
        .map(|(pid, _)| *pid)
        .collect();
    ours.iter().copied().for_each(kill9);
    let _ = crate::poll_until(Instant::now() + Duration::from_secs(20), || {
        ours.iter().all(|p| gone(*p)).then_some(())
    });
    // Cgroups: a directory can be removed once its last task has exited.
    for node in &state.nodes {
        for h in &hierarchies {
            let dir = h.join(&node.cgroup);
            let r = crate::poll_until(Instant::now() + Duration::from_secs(10), || {
                remove_cgroup(&dir).ok()
            });
            if r.is_none() && dir.exists() {
                problems.push(format!("cgroup {} could not be removed", dir.display()));
            }
        }
    }
    for (k, v) in &state.sysctls {
        if read_sysctl(k).as_deref() != Some(v.as_str()) {
            let path = format!("/proc/sys/{}", k.replace('.', "/"));
            if let Err(e) = fs::write(&path, v) {
                problems.push(format!("sysctl {k}={v}: {e}"));
            }
        }
    }
    problems
}

impl Cluster {
    /// A cluster of `nodes` nodes in a temporary directory, tied to the calling thread (see
    /// [`controlplane::Proc::spawn`]); taken down on drop. Panics with the logs on failure.
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
    /// node is Ready and CoreDNS serves. On failure everything started is taken down.
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
        self.start_registry(tied)?;
        let api_port = free_port();
        let egress = self.dir.join("egress.sock");
        self.start_relay(router, api_port, &egress, tied)?;
        let mut tokens = Vec::new();
        for i in 1..=nodes {
            tokens.push((
                format!("node-token-{i}-{}", free_port()),
                format!("system:node:node-{i}"),
                "system:nodes".to_string(),
            ));
        }
        tokens.push((
            format!("kube-proxy-token-{}", free_port()),
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

    fn build_images(&mut self) -> Result<(), String> {
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

    fn start_node(
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

    fn write_node_configs(
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

    fn install_coredns(&self) -> Result<(), String> {
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
    fn install_istio(&self) -> Result<(), String> {
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

    /// The directory of node `name` (its `/var` is `DIR/NAME/var`).
    pub fn node_dir(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    fn take_proc(&mut self, name: &str) -> Proc {
        let i = self
            .procs
            .iter()
            .position(|p| p.name == name)
            .unwrap_or_else(|| panic!("no process {name} in the cluster"));
        self.procs.remove(i)
    }

    fn respawn(&mut self, name: &str, cmd: Command) {
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

/// `/<cgroup>` in every hierarchy, with cpuset's CPUs and memory nodes copied from the root
/// (a new cpuset cgroup has none, and no task could join it), and `node` below it in the pids
/// hierarchy for the node's own processes (`owner`, `runtime`: see [`reap_stale_nodes`]).
fn make_cgroups(cgroup: &str) -> Result<(), String> {
    for h in cgroup_hierarchies() {
        let dir = h.join(cgroup);
        fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        for f in ["cpuset.cpus", "cpuset.mems"] {
            if let Ok(v) = fs::read_to_string(h.join(f)) {
                fs::write(dir.join(f), v.trim())
                    .map_err(|e| format!("{}/{f}: {e}", dir.display()))?;
            }
        }
        if h.ends_with("pids") {
            for group in ["owner", "runtime"] {
                fs::create_dir_all(dir.join(group))
                    .map_err(|e| format!("{}/{group}: {e}", dir.display()))?;
            }
        }
    }
    Ok(())
}

/// `PATH` on a node: its binaries, then the system's.
fn node_path() -> String {
    format!(
        "{}:{}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        node_bin_dir().display(),
        controlplane::bin_dir().display()
    )
}

/// The kubelet of node `name`, inside the namespaces `holder` keeps.
fn kubelet_cmd(holder: u32, name: &str, ip: Ipv4Addr) -> Command {
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

/// The `pids` hierarchy (where a node's own processes are counted).
fn pids_hierarchy() -> Option<PathBuf> {
    cgroup_hierarchies()
        .into_iter()
        .find(|h| h.ends_with("pids"))
}

/// Count `pid` in node cgroup `cgroup`'s `runtime` or `owner` group (pids hierarchy).
fn join_node_cgroup(cgroup: &str, pid: u32, runtime: bool) {
    if let Some(h) = pids_hierarchy() {
        let group = if runtime { "runtime" } else { "owner" };
        let _ = fs::write(
            h.join(cgroup).join(group).join("cgroup.procs"),
            pid.to_string(),
        );
    }
}

/// Take down what a test killed without unwinding (SIGKILL, a CI timeout) left: nodes whose
/// owners are all gone (their `owner` group is empty, made more than 30 s ago) while their
/// Pods' containers and runc shims (in `runtime`) live on. Their processes are killed and their cgroups
/// removed. A cluster `scripts/cluster up` left running keeps its node processes, and is left
/// alone.
pub fn reap_stale_nodes() {
    let Some(pids_root) = pids_hierarchy() else {
        return;
    };
    let Ok(entries) = fs::read_dir(&pids_root) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !name.starts_with(CGROUP_PREFIX) || !name.contains("-node-") {
            continue;
        }
        let old = e
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age > Duration::from_secs(30));
        let owner = fs::read_to_string(e.path().join("owner/cgroup.procs")).unwrap_or_default();
        if !old || !owner.trim().is_empty() {
            continue;
        }
        eprintln!("cluster: removing the remains of node cgroup {name} (its owner is gone)");
        let state = State {
            nodes: vec![NodeState {
                name: name.clone(),
                ip: Ipv4Addr::UNSPECIFIED,
                pod_cidr: String::new(),
                holder: 0,
                mnt: "none".into(),
                net: "none".into(),
                cgroup: name,
            }],
            ..State::default()
        };
        for problem in teardown(&state) {
            eprintln!("cluster: {problem}");
        }
    }
}
