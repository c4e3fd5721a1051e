//! Taking a cluster down and giving the host back: what `DIR/cluster.json` records, killing
//! every process of a node by namespace and cgroup, removing its cgroups, restoring the kernel
//! settings the kubelet changes, and the remains a killed test left.

use super::*;

/// Kernel settings outside any namespace that a kubelet changes (`protectKernelDefaults:
/// false`): saved before the first kubelet starts, written back by [`Cluster::down`].
pub(super) const HOST_SYSCTLS: [&str; 5] = [
    "vm.overcommit_memory",
    "kernel.panic",
    "kernel.panic_on_oops",
    "kernel.keys.root_maxkeys",
    "kernel.keys.root_maxbytes",
];

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
    /// `name=value` of the kernel settings the kubelet changes, before the first kubelet started.
    pub sysctls: Vec<(String, String)>,
    /// Other network namespaces of the cluster (`net:[...]`, the workstation's) whose processes
    /// are killed too.
    pub namespaces: Vec<String>,
}

impl State {
    pub(super) fn to_json(&self) -> Value {
        json!({
            "pids": self.pids.iter().map(|(p, t)| json!([p, t])).collect::<Vec<_>>(),
            "sysctls": self.sysctls.iter().map(|(k, v)| json!([k, v])).collect::<Vec<_>>(),
            "namespaces": self.namespaces,
            "nodes": self.nodes.iter().map(|n| json!({
                "name": n.name, "ip": n.ip.to_string(), "podCIDR": n.pod_cidr,
                "holder": n.holder, "mnt": n.mnt, "net": n.net, "cgroup": n.cgroup,
            })).collect::<Vec<_>>(),
        })
    }

    pub(super) fn from_json(v: &Value) -> Result<State, String> {
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
        for ns in v["namespaces"].as_array().into_iter().flatten() {
            state.namespaces.extend(ns.as_str().map(str::to_string));
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

/// How the cgroups of this project's nodes are named: `ewt-<id>-node-<N>`.
pub(super) const CGROUP_PREFIX: &str = "ewt-";

/// The cgroup v1 hierarchies mounted here (`/sys/fs/cgroup/cpu`, ...), and the v2 one if any.
pub(super) fn cgroup_hierarchies() -> Vec<PathBuf> {
    let Ok(text) = fs::read_to_string("/proc/self/mountinfo") else {
        return Vec::new();
    };
    text.lines()
        .filter(|l| l.contains(" - cgroup ") || l.contains(" - cgroup2 "))
        .filter_map(|l| l.split_whitespace().nth(4).map(PathBuf::from))
        .collect()
}

/// Whether `pid` is gone (or a zombie).
pub(super) fn gone(pid: u32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(s) => s
            .rsplit_once(") ")
            .is_some_and(|(_, rest)| rest.starts_with('Z')),
    }
}

/// When `pid` started (clock ticks after boot), if it exists.
pub(super) fn start_time(pid: u32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(") ")?;
    rest.split_whitespace().nth(19)?.parse().ok()
}

pub(super) fn kill9(pid: u32) {
    // SAFETY: kill(2) with a pid and a signal number has no memory effects.
    unsafe {
        libc::kill(pid as libc::pid_t, libc::SIGKILL);
    }
}

/// Every pid in the cgroup directory `dir` and below.
pub(super) fn cgroup_pids(dir: &Path, out: &mut Vec<u32>) {
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
pub(super) fn remove_cgroup(dir: &Path) -> std::io::Result<()> {
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

pub(super) fn read_sysctl(name: &str) -> Option<String> {
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
    for ns in &state.namespaces {
        let _ = crate::poll_until(deadline, || {
            let pids: Vec<u32> = netns::pids_in_ns("net", ns)
                .into_iter()
                .filter(|p| !gone(*p))
                .collect();
            pids.iter().copied().for_each(kill9);
            pids.is_empty().then_some(())
        });
    }
    for node in &state.nodes {
        let mut left = Vec::new();
        let done = crate::poll_until(deadline, || {
            let mut pids = netns::pids_in_ns("mnt", &node.mnt);
            pids.extend(netns::pids_in_ns("net", &node.net));
            for h in &hierarchies {
                cgroup_pids(&h.join(&node.cgroup), &mut pids);
            }
            pids.retain(|p| !gone(*p));
            pids.iter().copied().for_each(kill9);
            left = pids;
            left.is_empty().then_some(())
        });
        if done.is_none() {
            problems.push(format!(
                "{}: processes {left:?} survived SIGKILL",
                node.name
            ));
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

/// The `pids` hierarchy (where a node's own processes are counted).
pub(super) fn pids_hierarchy() -> Option<PathBuf> {
    cgroup_hierarchies()
        .into_iter()
        .find(|h| h.ends_with("pids"))
}

/// Count `pid` in node cgroup `cgroup`'s `runtime` or `owner` group (pids hierarchy).
pub(super) fn join_node_cgroup(cgroup: &str, pid: u32, runtime: bool) {
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

/// `/<cgroup>` in every hierarchy, with cpuset's CPUs and memory nodes copied from the root
/// (a new cpuset cgroup has none, and no task could join it), and `node` below it in the pids
/// hierarchy for the node's own processes (`owner`, `runtime`: see [`reap_stale_nodes`]).
pub(super) fn make_cgroups(cgroup: &str) -> Result<(), String> {
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
