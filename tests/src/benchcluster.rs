//! The controller at scale on the real control plane (`make bench-cluster`,
//! `tests/src/bin/bench-cluster.rs`; the regression check `tests/tests/bench_cluster.rs`).
//!
//! Per size (nodes) and per controller binary, on a fresh control plane (etcd, kube-apiserver
//! with an audit log of the controller's requests, kube-controller-manager, istiod):
//!
//! - **kwok** ([`crate::kwok`]) plays the kubelet of `nodes` Nodes and marks `pods_per_node`
//!   Pods per Node Running. The Pods belong to `nodes / nodes_per_fd` workloads (a Deployment
//!   with no replicas of its own, carrying the sidecar annotations the controller sets, and
//!   `pods_per_node * nodes_per_fd` Pods labelled `app: wl-J`, each Pod on its own Node where
//!   the Nodes allow, as a scheduler spreads them); one FilterDeployment per workload selects
//!   its Pods by that label.
//! - **Simulated node agents**: the agents' own format ([`wasmctl::render::node_report`]: one
//!   ConfigMap per Node in the agent namespace, its name and labels, owned by the Node),
//!   written by this process as the agents would: an empty report per Node at first, then,
//!   whenever the image list changes, every Node reports the modules of every listed image
//!   (each agent holds the whole list).
//! - **A real registry** with the header filter pushed as `filters/header-filter:v1`; the
//!   FilterDeployments name that tag.
//! - **The controller** runs with the service account and RBAC of `manifests/controller`; the
//!   API server's audit log counts its requests by verb and resource (its `/metrics` do not
//!   tell clients apart).
//!
//! Measured: time from the controller's start until every FilterDeployment is Ready; the time
//! from a FilterDeployment change (new parameters) to its EnvoyFilter carrying them (p50, p99);
//! API requests per reconcile; writes and reads per minute at rest; the controller's RSS and
//! CPU (`/proc`); and the envoyFilter rollout of a re-pushed tag: the time from the last node
//! report holding the new module to the last EnvoyFilter naming it.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::agent;
use crate::controller::Controller;
use crate::controlplane::ControlPlane;
use crate::kwok::{self, Kwok};
use crate::registry::Registry;
use futures_util::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Node, Pod};
use kube::api::{
    Api, ApiResource, DynamicObject, GroupVersionKind, ListParams, Patch, PatchParams, PostParams,
};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::{BufRead, Read, Seek};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use wasmctl::render::{self, node_report};

/// The namespace of the workloads, their Pods and FilterDeployments.
pub const NAMESPACE: &str = "bench";

/// The controller's identity in the API server (the service account of `manifests/controller`).
pub const CONTROLLER_USER: &str = "system:serviceaccount:wasm-system:wasmctl-controller";

/// How many requests the load generator keeps in flight.
const IN_FLIGHT: usize = 32;

/// A controller binary under test.
#[derive(Debug, Clone)]
pub struct Binary {
    /// Its name in the results (`before`, `after`, `debug`).
    pub label: String,
    /// The `wasmctl` executable.
    pub path: PathBuf,
}

/// Wait until the controller's reconcile count has stood still for 750 ms (the work a step
/// queued is done), polling every 100 ms, at most 30 s: a measured span then ends with it.
fn settle(controller: &Controller) {
    let count = || {
        controller.metric("wasm_controller_reconciles_total{result=\"success\"}")
            + controller.metric("wasm_controller_reconciles_total{result=\"error\"}")
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    let (mut last, mut since) = (count(), Instant::now());
    while Instant::now() < deadline && since.elapsed() < Duration::from_millis(750) {
        std::thread::sleep(Duration::from_millis(100));
        let now = count();
        if now != last {
            (last, since) = (now, Instant::now());
        }
    }
}

impl Binary {
    /// Its path as the results record it: relative to the workspace when inside it (a
    /// committed result names no machine's directories).
    pub fn shown(&self) -> String {
        self.path
            .strip_prefix(crate::workspace_root())
            .unwrap_or(&self.path)
            .display()
            .to_string()
    }
}

/// What one run measures.
#[derive(Debug, Clone)]
pub struct Options {
    /// Pods per Node.
    pub pods_per_node: usize,
    /// Nodes' worth of Pods per workload (one FilterDeployment each).
    pub nodes_per_fd: usize,
    /// FilterDeployment changes timed one after another.
    pub changes: usize,
    /// The controller's `--resync`.
    pub resync: Duration,
    /// The window at rest in which requests are counted (it should span a few resyncs).
    pub rest: Duration,
    /// Time the envoyFilter rollout of a re-pushed tag.
    pub rollout: bool,
    /// Measure istiod for the same objects in each delivery mode (with the first binary).
    pub istiod: bool,
    /// How long the controller may take to make every FilterDeployment Ready.
    pub ready_deadline: Duration,
}

impl Options {
    /// The benchmark's figures: 30 changes, resync 30 s, 75 s at rest, the rollout timed,
    /// istiod measured.
    pub fn full() -> Options {
        Options {
            pods_per_node: 10,
            nodes_per_fd: 10,
            changes: 30,
            resync: Duration::from_secs(30),
            rest: Duration::from_secs(75),
            rollout: true,
            istiod: true,
            ready_deadline: Duration::from_secs(900),
        }
    }

    /// The regression check: 6 changes, resync 4 s, 10 s at rest, no rollout, no istiod.
    pub fn quick() -> Options {
        Options {
            changes: 6,
            resync: Duration::from_secs(4),
            rest: Duration::from_secs(10),
            rollout: false,
            istiod: false,
            ready_deadline: Duration::from_secs(120),
            ..Options::full()
        }
    }
}

/// The audit policy: the controller's requests, as metadata; nothing of anyone else.
pub fn audit_policy() -> String {
    format!(
        "apiVersion: audit.k8s.io/v1\n\
         kind: Policy\n\
         omitStages: [\"RequestReceived\"]\n\
         rules:\n\
         - level: Metadata\n  users: [\"{CONTROLLER_USER}\"]\n\
         - level: None\n"
    )
}

/// Requests counted in the audit log between two offsets.
#[derive(Debug, Clone, Default)]
pub struct Requests {
    /// By verb.
    pub by_verb: BTreeMap<String, u64>,
    /// By `verb resource[/subresource]`.
    pub by_resource: BTreeMap<String, u64>,
}

const WRITE_VERBS: [&str; 5] = ["create", "update", "patch", "delete", "deletecollection"];

impl Requests {
    /// Every request.
    pub fn total(&self) -> u64 {
        self.by_verb.values().sum()
    }

    /// Creates, updates, patches, deletes.
    pub fn writes(&self) -> u64 {
        WRITE_VERBS
            .iter()
            .map(|v| self.by_verb.get(*v).copied().unwrap_or(0))
            .sum()
    }

    /// Gets and lists.
    pub fn reads(&self) -> u64 {
        ["get", "list"]
            .iter()
            .map(|v| self.by_verb.get(*v).copied().unwrap_or(0))
            .sum()
    }

    /// Watches started.
    pub fn watches(&self) -> u64 {
        self.by_verb.get("watch").copied().unwrap_or(0)
    }

    fn json(&self) -> Value {
        json!({
            "total": self.total(),
            "reads": self.reads(),
            "writes": self.writes(),
            "watches": self.watches(),
            "by_verb": self.by_verb,
            "by_resource": self.by_resource,
        })
    }
}

/// The audit events in `path` from byte `from` to byte `to`: one per request (a watch counts
/// when it starts, any other request when it completes).
pub fn audit_between(path: &Path, from: u64, to: u64) -> Requests {
    let mut r = Requests::default();
    let Ok(mut f) = std::fs::File::open(path) else {
        return r;
    };
    if f.seek(std::io::SeekFrom::Start(from)).is_err() {
        return r;
    }
    let reader = std::io::BufReader::new(f.take(to.saturating_sub(from)));
    for line in reader.lines().map_while(Result::ok) {
        let Ok(e) = serde_json::from_str::<Value>(&line) else {
            continue;
        };
        if e["user"]["username"] != CONTROLLER_USER {
            continue;
        }
        let verb = e["verb"].as_str().unwrap_or("").to_string();
        let stage = e["stage"].as_str().unwrap_or("");
        let counts = if verb == "watch" {
            stage == "ResponseStarted"
        } else {
            stage == "ResponseComplete"
        };
        if !counts {
            continue;
        }
        let o = &e["objectRef"];
        let mut resource = o["resource"].as_str().unwrap_or("?").to_string();
        if let Some(s) = o["subresource"].as_str() {
            resource = format!("{resource}/{s}");
        }
        *r.by_verb.entry(verb.clone()).or_default() += 1;
        *r.by_resource
            .entry(format!("{verb} {resource}"))
            .or_default() += 1;
    }
    r
}

/// A process's CPU time (user + system, seconds), RSS and peak RSS (MiB), from `/proc`.
pub fn proc_usage(pid: u32) -> (f64, f64, f64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(") ").map(|(_, a)| a).unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // Fields 14 and 15 (utime, stime), counted from field 3 (state) here.
    let cpu = (ticks(11) + ticks(12)) / hz;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kb = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (cpu, kb("VmRSS:") / 1024.0, kb("VmHWM:") / 1024.0)
}

/// A point in a run: time, audit log length, the controller's CPU and counters.
#[derive(Debug, Clone)]
struct Mark {
    at: Instant,
    audit: u64,
    cpu: f64,
    reconciles: f64,
    writes: f64,
}

/// What happened between two marks.
struct Span {
    seconds: f64,
    requests: Requests,
    cpu: f64,
    reconciles: f64,
    writes_metric: f64,
}

impl Span {
    fn json(&self) -> Value {
        json!({
            "seconds": round(self.seconds, 3),
            "requests": self.requests.json(),
            "cpu_seconds": round(self.cpu, 3),
            "reconciles": self.reconciles,
            "writes_metric": self.writes_metric,
            "requests_per_reconcile": if self.reconciles > 0.0 {
                round(self.requests.total() as f64 / self.reconciles, 2)
            } else {
                0.0
            },
        })
    }
}

fn round(v: f64, digits: i32) -> f64 {
    let p = 10f64.powi(digits);
    (v * p).round() / p
}

/// The p-th percentile (nearest rank) of `v`.
pub fn percentile(v: &[f64], p: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * s.len() as f64).ceil() as usize;
    s[rank.clamp(1, s.len()) - 1]
}

/// The FilterDeployment API resource.
fn fds() -> ApiResource {
    ApiResource::from_gvk(&GroupVersionKind::gvk(
        render::spec::GROUP,
        render::spec::VERSION,
        render::spec::KIND,
    ))
}

fn deployments() -> ApiResource {
    ApiResource::from_gvk(&GroupVersionKind::gvk("apps", "v1", "Deployment"))
}

/// The controller's field manager (`wasmctl::controller::plan::FIELD_MANAGER`).
const CONTROLLER_MANAGER: &str = wasmctl::controller::plan::FIELD_MANAGER;

fn envoy_filters() -> ApiResource {
    ApiResource::from_gvk(&GroupVersionKind::gvk(
        "networking.istio.io",
        "v1alpha3",
        "EnvoyFilter",
    ))
}

/// An API client with `kubeconfig`'s credentials.
pub async fn client(kubeconfig: &Path) -> Client {
    let kc = kube::config::Kubeconfig::read_from(kubeconfig).expect("read kubeconfig");
    let cfg = kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
        .await
        .expect("kubeconfig");
    Client::try_from(cfg).expect("client")
}

/// Run `f` over `items` with [`IN_FLIGHT`] at a time.
async fn each<T, F, Fut, R>(items: Vec<T>, f: F) -> Vec<R>
where
    F: Fn(T) -> Fut,
    Fut: std::future::Future<Output = R>,
{
    futures_util::stream::iter(items.into_iter().map(f))
        .buffer_unordered(IN_FLIGHT)
        .collect()
        .await
}

/// The names of the Nodes, workloads and Pods of a size.
#[derive(Debug, Clone)]
pub struct Layout {
    /// Nodes.
    pub nodes: usize,
    /// Pods per Node.
    pub pods_per_node: usize,
    /// Workloads (and FilterDeployments).
    pub workloads: usize,
}

impl Layout {
    /// `nodes` Nodes as `opts` shapes them.
    pub fn new(nodes: usize, opts: &Options) -> Layout {
        Layout {
            nodes,
            pods_per_node: opts.pods_per_node,
            workloads: nodes.div_ceil(opts.nodes_per_fd).max(1),
        }
    }

    /// Every Pod.
    pub fn pods(&self) -> usize {
        self.nodes * self.pods_per_node
    }

    /// Node `i`'s name.
    pub fn node(i: usize) -> String {
        format!("kwok-node-{i}")
    }

    /// Workload `j`'s name (its Deployment, its Pods' `app` label, its FilterDeployment).
    pub fn workload(j: usize) -> String {
        format!("wl-{j}")
    }

    /// Pod `p` (of all): (workload, name, node). Pods go to Nodes round-robin, so each
    /// workload's Pods land on as many distinct Nodes as there are (as a scheduler spreads
    /// replicas) and each Node holds `pods_per_node`.
    pub fn pod(&self, p: usize) -> (usize, String, String) {
        let per = self.pods().div_ceil(self.workloads);
        let j = (p / per).min(self.workloads - 1);
        (
            j,
            format!("{}-{}", Layout::workload(j), p),
            Layout::node(p % self.nodes),
        )
    }
}

/// The simulated node agents: which Nodes there are, what each module digest holds, and when
/// each change of the image list was reported by every Node.
struct Agents {
    nodes: Vec<(String, String)>,
    /// Manifest digest -> module sha256.
    known: Mutex<BTreeMap<String, String>>,
    /// (modules reported, when the first write began, when the last completed).
    reported: Mutex<Vec<(BTreeSet<String>, Instant, Instant)>>,
    /// The modules every Node reports now.
    last: Mutex<Option<BTreeSet<String>>>,
    /// Every version of the image list seen, with when.
    lists: Mutex<Vec<(Instant, String)>>,
}

/// The entries of an image list: (name, manifest digest).
fn list_entries(text: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut name = None;
    for line in text.lines() {
        let t = line.trim().trim_start_matches("- ");
        if let Some(n) = t.strip_prefix("name:") {
            name = Some(n.trim().trim_matches('"').to_string());
        } else if let Some(i) = t.strip_prefix("image:")
            && let Some(n) = name.take()
        {
            let digest = i.trim().trim_matches('"').rsplit('@').next().unwrap_or("");
            out.push((n, digest.to_string()));
        }
    }
    out
}

/// Write `node`'s report as its agent does (`wasmctl::agent::node`): server-side apply under
/// the agent's field manager, labelled, owned by the Node.
async fn write_report(api: &Api<ConfigMap>, node: &str, uid: &str, modules: &BTreeSet<String>) {
    let list: Vec<&str> = modules.iter().map(String::as_str).collect();
    let cm = json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": node_report::report_name(node),
            "namespace": render::AGENT_NAMESPACE,
            "labels": {node_report::REPORT_LABEL: node, render::MANAGED_BY: "wasmctl"},
            "ownerReferences": [{"apiVersion": "v1", "kind": "Node", "name": node, "uid": uid}],
        },
        "data": {node_report::NODE_KEY: node, node_report::MODULES_KEY: list.join("\n")},
    });
    let pp = PatchParams::apply("wasmctl-agent").force();
    for attempt in 0..5 {
        match api
            .patch(&node_report::report_name(node), &pp, &Patch::Apply(&cm))
            .await
        {
            Ok(_) => return,
            Err(e) if attempt == 4 => panic!("node report of {node}: {e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

impl Agents {
    async fn report_all(&self, client: &Client, modules: &BTreeSet<String>) {
        let api: Api<ConfigMap> = Api::namespaced(client.clone(), render::AGENT_NAMESPACE);
        let started = Instant::now();
        each(self.nodes.clone(), |(n, uid)| {
            let api = api.clone();
            async move { write_report(&api, &n, &uid, modules).await }
        })
        .await;
        self.reported
            .lock()
            .unwrap()
            .push((modules.clone(), started, Instant::now()));
    }

    /// The module shas of the image list `text` (`None` while a digest in it is unknown).
    fn modules_of(&self, text: &str) -> Option<BTreeSet<String>> {
        let known = self.known.lock().unwrap();
        let mut out = BTreeSet::new();
        for line in text.lines() {
            let Some(image) = line.trim().trim_start_matches("- ").strip_prefix("image:") else {
                continue;
            };
            let digest = image
                .trim()
                .trim_matches('"')
                .rsplit('@')
                .next()
                .unwrap_or("");
            out.insert(known.get(digest)?.clone());
        }
        Some(out)
    }

    /// Follow the image list: whenever the modules it names change, every Node reports them.
    /// The list is watched, and read again every 2 s besides (a missed event would leave the
    /// nodes behind and stall a rollout).
    async fn follow(self: Arc<Self>, client: Client) {
        let api: Api<ConfigMap> = Api::namespaced(client.clone(), render::AGENT_NAMESPACE);
        let wc = watcher::Config::default()
            .fields(&format!("metadata.name={}", render::IMAGES_CONFIGMAP));
        let mut stream = std::pin::pin!(
            watcher::watcher(api.clone(), wc)
                .default_backoff()
                .applied_objects()
        );
        let mut tick = tokio::time::interval(Duration::from_secs(2));
        loop {
            let cm = tokio::select! {
                ev = stream.next() => match ev {
                    Some(Ok(cm)) => cm,
                    Some(Err(e)) => {
                        say(&format!("simulated agents: watch of the image list: {e}"));
                        continue;
                    }
                    None => return,
                },
                _ = tick.tick() => match api.get_opt(render::IMAGES_CONFIGMAP).await {
                    Ok(Some(cm)) => cm,
                    _ => continue,
                },
            };
            let text = cm
                .data
                .as_ref()
                .and_then(|d| d.get(render::IMAGES_KEY))
                .cloned()
                .unwrap_or_default();
            {
                let mut lists = self.lists.lock().unwrap();
                if lists.last().is_none_or(|(_, t)| *t != text) {
                    lists.push((Instant::now(), text.clone()));
                }
            }
            // A digest pushed a moment ago may not be known yet.
            let mut modules = None;
            for _ in 0..200 {
                modules = self.modules_of(&text);
                if modules.is_some() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            let Some(modules) = modules else {
                say(&format!("simulated agents: unknown digests in {text}"));
                continue;
            };
            let changed = self.last.lock().unwrap().as_ref() != Some(&modules);
            if changed {
                self.report_all(&client, &modules).await;
                *self.last.lock().unwrap() = Some(modules);
            }
        }
    }
}

/// The EnvoyFilters as the API server's watch shows them: each version with when it arrived.
#[derive(Default)]
struct Filters {
    seen: Mutex<HashMap<String, Vec<(Instant, String)>>>,
}

impl Filters {
    async fn follow(self: Arc<Self>, client: Client) {
        let api: Api<DynamicObject> = Api::namespaced_with(client, NAMESPACE, &envoy_filters());
        let mut stream = std::pin::pin!(
            watcher::watcher(api, watcher::Config::default())
                .default_backoff()
                .applied_objects()
        );
        while let Some(ev) = stream.next().await {
            let Ok(o) = ev else { continue };
            let text = serde_json::to_string(&o).unwrap_or_default();
            self.seen
                .lock()
                .unwrap()
                .entry(o.name_any())
                .or_default()
                .push((Instant::now(), text));
        }
    }

    /// When the EnvoyFilter `name` first held `needle` after `since`.
    fn first(&self, name: &str, needle: &str, since: Instant) -> Option<Instant> {
        self.seen.lock().unwrap().get(name).and_then(|v| {
            v.iter()
                .find(|(t, text)| *t >= since && text.contains(needle))
                .map(|(t, _)| *t)
        })
    }
}

/// The parameters of FilterDeployment changes: a value no other change used.
fn parameters(value: &str) -> String {
    json!({"name": "hello", "value": value}).to_string()
}

fn filter_deployment(j: usize, image: &str) -> Value {
    let name = Layout::workload(j);
    json!({
        "apiVersion": render::spec::API_VERSION,
        "kind": render::spec::KIND,
        "metadata": {"name": name, "namespace": NAMESPACE},
        "spec": {
            "workload": {"kind": "Deployment", "name": name, "labels": {"app": name}},
            "filter": {
                "image": image,
                "rootId": "my_root_id",
                "parameters": parameters(&format!("{name}-start")),
            },
            "placement": {"direction": "inbound"},
            "failurePolicy": "closed",
            "delivery": "envoyFilter",
        },
    })
}

/// Whether a FilterDeployment is Ready for its generation with no rollout under way.
fn settled(o: &DynamicObject) -> bool {
    let s = &o.data["status"];
    let ready = s["conditions"].as_array().is_some_and(|cs| {
        cs.iter()
            .any(|c| c["type"] == "Ready" && c["status"] == "True")
    });
    ready
        && s["observedGeneration"].as_i64() == o.metadata.generation
        && s.get("rollout").is_none_or(Value::is_null)
}

/// Create `layout`'s Nodes (returns (name, uid)), workloads and Pods, and wait until kwok has
/// made every Node Ready and every Pod Running.
async fn populate(client: &Client, layout: &Layout) -> Vec<(String, String)> {
    let t0 = Instant::now();
    let nodes: Api<Node> = Api::all(client.clone());
    let created = each((0..layout.nodes).collect(), |i| {
        let nodes = nodes.clone();
        async move {
            let name = Layout::node(i);
            let n: Node = serde_json::from_value(json!({
                "apiVersion": "v1",
                "kind": "Node",
                "metadata": {
                    "name": name,
                    "annotations": {kwok::NODE_ANNOTATION.0: kwok::NODE_ANNOTATION.1},
                    "labels": {"type": "kwok", "kubernetes.io/hostname": name},
                },
            }))
            .unwrap();
            let n = nodes
                .create(&PostParams::default(), &n)
                .await
                .expect("create Node");
            (name, n.uid().unwrap_or_default())
        }
    })
    .await;
    let deployments: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), NAMESPACE, &deployments());
    each((0..layout.workloads).collect(), |j| {
        let deployments = deployments.clone();
        async move {
            let name = Layout::workload(j);
            // No replicas of its own, and a selector its Pods (created below, as bare Pods) do
            // not match: the controller sets its sidecar annotations, the ReplicaSet
            // controller leaves the Pods alone.
            let selector = json!({"app": name, "bench.envoy-wasm-toolkit.io/replicas": "none"});
            let d: DynamicObject = serde_json::from_value(json!({
                "apiVersion": "apps/v1",
                "kind": "Deployment",
                "metadata": {"name": name, "namespace": NAMESPACE},
                "spec": {
                    "replicas": 0,
                    "selector": {"matchLabels": selector},
                    "template": {
                        "metadata": {"labels": selector},
                        "spec": {"containers": [{"name": "app", "image": "registry.example/app:1"}]},
                    },
                },
            }))
            .unwrap();
            deployments
                .create(&PostParams::default(), &d)
                .await
                .expect("create Deployment");
        }
    })
    .await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), NAMESPACE);
    each((0..layout.pods()).collect(), |p| {
        let pods = pods.clone();
        let (j, name, node) = layout.pod(p);
        async move {
            let pod: Pod = serde_json::from_value(json!({
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": name, "namespace": NAMESPACE,
                             "labels": {"app": Layout::workload(j)}},
                // The host's network: kwok gives such a Pod its Node's address, the same
                // whenever it plays a stage again (a Pod address of its own can be played twice
                // under load, and the API server refuses a second address).
                "spec": {
                    "nodeName": node,
                    "hostNetwork": true,
                    "containers": [{"name": "app", "image": "registry.example/app:1"}],
                },
            }))
            .unwrap();
            pods.create(&PostParams::default(), &pod)
                .await
                .expect("create Pod");
        }
    })
    .await;
    say(&format!(
        "{} Nodes, {} workloads, {} Pods created in {:.1} s",
        layout.nodes,
        layout.workloads,
        layout.pods(),
        t0.elapsed().as_secs_f64()
    ));
    let deadline = Instant::now() + Duration::from_secs(900);
    let (mut last_pending, mut since) = (usize::MAX, Instant::now());
    let mut nudges = 0;
    loop {
        let pending: Vec<String> = pods
            .list(&ListParams::default().fields("status.phase!=Running"))
            .await
            .map(|l| l.items.iter().map(ResourceExt::name_any).collect())
            .unwrap_or_else(|_| vec![String::new()]);
        let ready = nodes
            .list(&ListParams::default().labels("type=kwok"))
            .await
            .map(|l| {
                l.items
                    .iter()
                    .filter(|n| {
                        n.status
                            .as_ref()
                            .and_then(|s| s.conditions.as_ref())
                            .is_some_and(|cs| {
                                cs.iter().any(|c| c.type_ == "Ready" && c.status == "True")
                            })
                    })
                    .count()
            })
            .unwrap_or(0);
        if pending.is_empty() && ready == layout.nodes {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "kwok did not make {} Nodes Ready ({ready} are) and every Pod Running ({} are not)",
            layout.nodes,
            pending.len()
        );
        // kwok (0.8) now and then misses a Pod under load: an event brings it back.
        if pending.len() != last_pending {
            (last_pending, since) = (pending.len(), Instant::now());
        } else if since.elapsed() > Duration::from_secs(10) && pending.len() < 100 {
            nudges += 1;
            let bump = json!({"metadata": {"annotations": {"bench.envoy-wasm-toolkit.io/nudge": nudges.to_string()}}});
            for name in &pending {
                let _ = pods
                    .patch(name, &PatchParams::default(), &Patch::Merge(&bump))
                    .await;
            }
            since = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    if nudges > 0 {
        say(&format!("kwok needed {nudges} nudges for the last Pods"));
    }
    created
}

/// Append a custom section to a wasm module: the same filter as another module (another
/// sha256), as a re-pushed tag brings.
pub fn another_version(wasm: &[u8], tag: &str) -> Vec<u8> {
    let name = b"envoy-wasm-toolkit.bench";
    let payload = tag.as_bytes();
    let mut section = Vec::new();
    section.push(name.len() as u8);
    section.extend_from_slice(name);
    section.extend_from_slice(payload);
    let mut out = wasm.to_vec();
    out.push(0); // custom section
    let mut n = section.len();
    loop {
        let b = (n & 0x7f) as u8;
        n >>= 7;
        if n == 0 {
            out.push(b);
            break;
        }
        out.push(b | 0x80);
    }
    out.extend_from_slice(&section);
    out
}

fn sha256_hex(bytes: &[u8]) -> String {
    wasmctl::oci::layout::sha256_hex(bytes)
}

/// Apply what the benchmark needs of `manifests/`: the CRD, the agent namespace, the
/// controller's service account and RBAC (not the DaemonSet or the controller's Deployment:
/// nothing here runs Pods); the workload namespace.
fn prepare_cluster(cp: &ControlPlane) {
    let m = crate::workspace_root().join("manifests");
    let p = |s: &str| m.join(s).display().to_string();
    cp.kubectl_ok(&[
        "apply",
        "--server-side",
        "--field-manager=e2e",
        "-k",
        &p("crd"),
    ]);
    for f in [
        "agent/namespace.yaml",
        "controller/serviceaccount.yaml",
        "controller/rbac.yaml",
    ] {
        cp.kubectl_ok(&["apply", "--server-side", "--field-manager=e2e", "-f", &p(f)]);
    }
    cp.kubectl_ok(&["create", "namespace", NAMESPACE]);
    cp.kubectl_ok(&[
        "wait",
        "--for=condition=Established",
        "--timeout=60s",
        "crd/filterdeployments.filters.envoy-wasm-toolkit.io",
    ]);
}

/// Progress on stderr.
pub fn say(msg: &str) {
    eprintln!("bench-cluster: {msg}");
}

/// One size's cluster: the control plane, the registry, kwok with its Nodes and Pods, the
/// workloads, the simulated agents; each controller binary is measured on it in turn, with
/// [`Cluster::reset`] in between.
pub struct Cluster {
    layout: Layout,
    // Dropped in this order: tasks, kwok, registry, control plane.
    rt: Option<tokio::runtime::Runtime>,
    kwok: Option<Kwok>,
    registry: Option<Registry>,
    cp: Option<ControlPlane>,
    work: tempfile::TempDir,
    admin: Client,
    agents: Arc<Agents>,
    filters: Arc<Filters>,
    fd_api: Api<DynamicObject>,
    image: String,
    wasm: Vec<u8>,
    /// How long it took to create the Nodes, the workloads and the Pods and have kwok run them.
    pub populate_seconds: f64,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
        self.kwok.take();
        self.registry.take();
        self.cp.take();
    }
}

impl Cluster {
    /// Start and populate a cluster of `nodes` Nodes shaped by `opts`.
    pub fn start(opts: &Options, nodes: usize) -> Cluster {
        let layout = Layout::new(nodes, opts);
        say(&format!(
            "{nodes} nodes: control plane, registry, kwok; {} Pods, {} FilterDeployments",
            layout.pods(),
            layout.workloads
        ));
        let work = tempfile::tempdir().expect("temp dir");
        let cp = ControlPlane::start_audited(&work.path().join("cp"), true, &audit_policy())
            .unwrap_or_else(|e| panic!("{e}"));
        let registry = Registry::start();
        let wasm = std::fs::read(crate::filter_wasm()).expect("read the filter");
        let image = registry.reference("filters/header-filter:v1");
        let digest1 = agent::push(&image, &crate::filter_wasm(), "my_root_id", &[]);
        prepare_cluster(&cp);
        let kwok = Kwok::start(&cp);
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("tokio runtime");
        let admin = rt.block_on(client(&cp.kubeconfig));
        let started = Instant::now();
        let node_uids = rt.block_on(populate(&admin, &layout));
        let populate_seconds = started.elapsed().as_secs_f64();
        let agents = Arc::new(Agents {
            nodes: node_uids,
            known: Mutex::new(BTreeMap::from([(digest1, sha256_hex(&wasm))])),
            reported: Mutex::new(Vec::new()),
            last: Mutex::new(None),
            lists: Mutex::new(Vec::new()),
        });
        let filters = Arc::new(Filters::default());
        rt.spawn(agents.clone().follow(admin.clone()));
        rt.spawn(filters.clone().follow(admin.clone()));
        let fd_api = Api::namespaced_with(admin.clone(), NAMESPACE, &fds());
        let c = Cluster {
            layout,
            rt: Some(rt),
            kwok: Some(kwok),
            registry: Some(registry),
            cp: Some(cp),
            work,
            admin,
            agents,
            filters,
            fd_api,
            image,
            wasm,
            populate_seconds,
        };
        c.fresh_start();
        say(&format!(
            "{nodes} nodes: populated in {:.1} s",
            c.populate_seconds
        ));
        c
    }

    fn rt(&self) -> &tokio::runtime::Runtime {
        self.rt.as_ref().expect("runtime")
    }

    fn cp(&self) -> &ControlPlane {
        self.cp.as_ref().expect("control plane")
    }

    /// What a controller finds when it starts: every Node reports holding nothing, the
    /// FilterDeployments exist and have no status.
    fn fresh_start(&self) {
        let rt = self.rt();
        if let Ok(mut last) = self.agents.last.lock() {
            *last = Some(BTreeSet::new());
        }
        rt.block_on(self.agents.report_all(&self.admin, &BTreeSet::new()));
        rt.block_on(each((0..self.layout.workloads).collect(), |j| {
            let fd_api = self.fd_api.clone();
            let o: DynamicObject =
                serde_json::from_value(filter_deployment(j, &self.image)).unwrap();
            async move {
                fd_api
                    .create(&PostParams::default(), &o)
                    .await
                    .expect("create FilterDeployment");
            }
        }));
    }

    /// Back to the state before the first controller started: the FilterDeployments (their
    /// finalizers dropped), EnvoyFilters, the image list and the workloads' annotations gone,
    /// the tag back on the first module, every report empty; then the FilterDeployments again.
    pub fn reset(&self) {
        let rt = self.rt();
        let admin = self.admin.clone();
        rt.block_on(async {
            let list = self
                .fd_api
                .list(&ListParams::default())
                .await
                .expect("list FilterDeployments");
            let unfinalize = json!({"metadata": {"finalizers": null}});
            for o in &list.items {
                let name = o.name_any();
                let _ = self
                    .fd_api
                    .patch(&name, &PatchParams::default(), &Patch::Merge(&unfinalize))
                    .await;
                let _ = self.fd_api.delete(&name, &Default::default()).await;
            }
            let efs: Api<DynamicObject> =
                Api::namespaced_with(admin.clone(), NAMESPACE, &envoy_filters());
            let _ = efs
                .delete_collection(&Default::default(), &ListParams::default())
                .await;
            let cms: Api<ConfigMap> = Api::namespaced(admin.clone(), render::AGENT_NAMESPACE);
            let _ = cms
                .delete(render::IMAGES_CONFIGMAP, &Default::default())
                .await;
            // The sidecar annotations the controller applied: its field manager applies none.
            let deployments: Api<DynamicObject> =
                Api::namespaced_with(admin.clone(), NAMESPACE, &deployments());
            let pp = PatchParams::apply(CONTROLLER_MANAGER).force();
            for j in 0..self.layout.workloads {
                let name = Layout::workload(j);
                let none = json!({"apiVersion": "apps/v1", "kind": "Deployment",
                                  "metadata": {"name": name, "namespace": NAMESPACE}});
                deployments
                    .patch(&name, &pp, &Patch::Apply(&none))
                    .await
                    .expect("take the annotations back");
            }
            let deadline = Instant::now() + Duration::from_secs(120);
            while !self
                .fd_api
                .list(&ListParams::default())
                .await
                .map(|l| l.items.is_empty())
                .unwrap_or(false)
            {
                assert!(Instant::now() < deadline, "FilterDeployments not deleted");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        });
        agent::push(&self.image, &crate::filter_wasm(), "my_root_id", &[]);
        self.filters.seen.lock().unwrap().clear();
        self.fresh_start();
    }

    /// Measure one controller binary on this cluster: the figures as JSON.
    pub fn measure(&self, opts: &Options, bin: &Binary, istiod: bool) -> Value {
        let rt = self.rt();
        let cp = self.cp();
        let layout = &self.layout;
        let fd_api = &self.fd_api;
        let filters = &self.filters;
        let agents = &self.agents;
        let nodes = layout.nodes;
        let tag = format!("{nodes} nodes, {}", bin.label);
        // The controller, as manifests/controller runs it (its service account).
        let sa = cp.kubeconfig_for("wasm-system", "wasmctl-controller");
        let resync = format!("{}s", opts.resync.as_secs());
        let args = [
            "--plain-http",
            "--resync",
            &resync,
            "--backoff-initial",
            "200ms",
            "--backoff-max",
            "5s",
            "--rollout-timeout",
            "30m",
        ];
        let audit = cp.audit_log();
        let audit_len = || std::fs::metadata(&audit).map(|m| m.len()).unwrap_or(0);
        let start = Mark {
            at: Instant::now(),
            audit: audit_len(),
            cpu: 0.0,
            reconciles: 0.0,
            writes: 0.0,
        };
        // BENCH_CLUSTER_RUST_LOG: the controller's RUST_LOG (e.g. kube_runtime=debug).
        let rust_log = std::env::var("BENCH_CLUSTER_RUST_LOG").unwrap_or_default();
        let env: Vec<(&str, &str)> = if rust_log.is_empty() {
            Vec::new()
        } else {
            vec![("RUST_LOG", rust_log.as_str())]
        };
        let controller = Controller::start_program(&bin.path, &sa, &args, &[], &env);
        let pid = controller.pid();
        let mark = || {
            let (cpu, _, _) = proc_usage(pid);
            Mark {
                at: Instant::now(),
                audit: audit_len(),
                cpu,
                reconciles: controller
                    .metric("wasm_controller_reconciles_total{result=\"success\"}")
                    + controller.metric("wasm_controller_reconciles_total{result=\"error\"}"),
                writes: controller.metric("wasm_controller_writes_total"),
            }
        };
        let span = |a: &Mark, b: &Mark| Span {
            seconds: (b.at - a.at).as_secs_f64(),
            requests: audit_between(&audit, a.audit, b.audit),
            cpu: b.cpu - a.cpu,
            reconciles: b.reconciles - a.reconciles,
            writes_metric: b.writes - a.writes,
        };

        // 1. Start: every FilterDeployment Ready.
        let deadline = start.at + opts.ready_deadline;
        let count = loop {
            let list = rt
                .block_on(fd_api.list(&ListParams::default()))
                .expect("list FilterDeployments");
            let count = list.items.iter().filter(|o| settled(o)).count();
            if count == layout.workloads {
                break count;
            }
            assert!(
                Instant::now() < deadline,
                "{tag}: {count} of {} FilterDeployments Ready after {:?}\n{}",
                layout.workloads,
                opts.ready_deadline,
                tail(&controller.log(), 40)
            );
            std::thread::sleep(Duration::from_millis(100));
        };
        let ready = mark();
        let startup = span(&start, &ready);
        let (_, rss_ready, _) = proc_usage(pid);
        say(&format!(
            "{tag}: {count} FilterDeployments Ready in {:.2} s ({} requests, {} reconciles, {:.2} s CPU)",
            startup.seconds,
            startup.requests.total(),
            startup.reconciles,
            startup.cpu
        ));

        // Let the last reconciles the start queued finish.
        settle(&controller);

        // 2. Changes, one at a time: new parameters -> the EnvoyFilter carries them.
        let before_changes = mark();
        let mut latencies = Vec::new();
        for i in 0..opts.changes {
            let j = (i * 7) % layout.workloads;
            let name = Layout::workload(j);
            let value = format!("{name}-change-{i}-{}", bin.label);
            let patch = json!({"spec": {"filter": {"parameters": parameters(&value)}}});
            let t0 = Instant::now();
            rt.block_on(fd_api.patch(&name, &PatchParams::default(), &Patch::Merge(&patch)))
                .expect("patch FilterDeployment");
            let seen = crate::poll_until(Instant::now() + Duration::from_secs(120), || {
                filters.first(&name, &value, t0)
            })
            .unwrap_or_else(|| {
                panic!(
                    "{tag}: EnvoyFilter {name} never carried {value}\n{}",
                    tail(&controller.log(), 40)
                )
            });
            latencies.push((seen - t0).as_secs_f64() * 1000.0);
        }
        settle(&controller);
        let after_changes = mark();
        let changes = span(&before_changes, &after_changes);
        say(&format!(
            "{tag}: {} changes, p50 {:.0} ms, p99 {:.0} ms, {} requests, {} reconciles",
            latencies.len(),
            percentile(&latencies, 50.0),
            percentile(&latencies, 99.0),
            changes.requests.total(),
            changes.reconciles
        ));

        // 3. At rest: nothing changes; the resync runs.
        settle(&controller);
        let rest_from = mark();
        std::thread::sleep(opts.rest);
        let rest_to = mark();
        let rest = span(&rest_from, &rest_to);
        let minutes = rest.seconds / 60.0;
        say(&format!(
            "{tag}: at rest {:.0} s: {} writes, {} reads ({:?})",
            rest.seconds,
            rest.requests.writes(),
            rest.requests.reads(),
            rest.requests.by_resource
        ));

        // 4. A re-pushed tag: the rollout gate.
        let rollout = if opts.rollout {
            let v2 = another_version(&self.wasm, "v2");
            let sha2 = sha256_hex(&v2);
            let file = self.work.path().join("v2.wasm");
            std::fs::write(&file, &v2).expect("write v2");
            let from = mark();
            let pushed_at = Instant::now();
            let digest2 = agent::push(&self.image, &file, "my_root_id", &[]);
            agents
                .known
                .lock()
                .unwrap()
                .insert(digest2.clone(), sha2.clone());
            let names: Vec<String> = (0..layout.workloads).map(Layout::workload).collect();
            let deadline = Instant::now() + opts.resync * 2 + Duration::from_secs(600);
            let switched = crate::poll_until(deadline, || {
                names
                    .iter()
                    .map(|n| filters.first(n, &sha2, pushed_at))
                    .collect::<Option<Vec<Instant>>>()
            })
            .unwrap_or_else(|| {
                panic!(
                    "{tag}: the EnvoyFilters did not all switch to {sha2}\n{}",
                    tail(&controller.log(), 40)
                )
            });
            let last_switch = switched.iter().max().copied().unwrap_or(pushed_at);
            let (_, listed, reports_done) = agents
                .reported
                .lock()
                .unwrap()
                .iter()
                .find(|(m, s, _)| *s >= pushed_at && m.contains(&sha2))
                .cloned()
                .expect("the agents reported the new module");
            // Each FilterDeployment finds the new digest at its own resync, and lists it then:
            // its gate opens when its entry is listed and every Node reports the module,
            // whichever is later, and closes when its EnvoyFilter names the module.
            let lists = agents.lists.lock().unwrap().clone();
            let gates: Vec<f64> = names
                .iter()
                .zip(&switched)
                .map(|(n, t_switch)| {
                    let entry = format!("{NAMESPACE}.{n}");
                    let t_listed = lists
                        .iter()
                        .find(|(t, text)| {
                            *t >= pushed_at
                                && list_entries(text)
                                    .iter()
                                    .any(|(name, d)| *name == entry && *d == digest2)
                        })
                        .map(|(t, _)| *t)
                        .unwrap_or(pushed_at);
                    let open = t_listed.max(reports_done);
                    t_switch.saturating_duration_since(open).as_secs_f64()
                })
                .collect();
            let last_listed = lists
                .iter()
                .filter(|(t, _)| *t >= pushed_at)
                .map(|(t, _)| *t)
                .max()
                .unwrap_or(listed);
            // Then the old module leaves the list and every FilterDeployment settles.
            crate::poll_until(Instant::now() + Duration::from_secs(600), || {
                let list = rt.block_on(fd_api.list(&ListParams::default())).ok()?;
                let done = list.items.iter().all(|o| {
                    settled(o) && o.data["status"]["digest"].as_str() == Some(digest2.as_str())
                });
                let only_new = agents
                    .reported
                    .lock()
                    .unwrap()
                    .last()
                    .is_some_and(|(m, _, _)| m.len() == 1 && m.contains(&sha2));
                (done && only_new).then_some(())
            })
            .unwrap_or_else(|| {
                panic!(
                    "{tag}: the rollout did not settle\n{}",
                    tail(&controller.log(), 40)
                )
            });
            settle(&controller);
            let to = mark();
            let s = span(&from, &to);
            let (gate50, gate_max) = (percentile(&gates, 50.0), percentile(&gates, 100.0));
            say(&format!(
                "{tag}: rollout: first listed after {:.1} s, every Node reported it {:.1} s later; gate p50 {:.0} ms, max {:.0} ms; last EnvoyFilter switched {:.1} s after the push; {} requests ({} writes), {} reconciles",
                (listed - pushed_at).as_secs_f64(),
                (reports_done - listed).as_secs_f64(),
                gate50 * 1000.0,
                gate_max * 1000.0,
                (last_switch - pushed_at).as_secs_f64(),
                s.requests.total(),
                s.requests.writes(),
                s.reconciles
            ));
            json!({
                "first_listed_seconds": round((listed - pushed_at).as_secs_f64(), 3),
                "last_listed_seconds": round((last_listed - pushed_at).as_secs_f64(), 3),
                "reports_seconds": round((reports_done - listed).as_secs_f64(), 3),
                "gate_p50_seconds": round(gate50, 3),
                "gate_seconds": round(gate_max, 3),
                "gates_seconds": gates.iter().map(|g| round(*g, 3)).collect::<Vec<_>>(),
                "total_seconds": round((last_switch - pushed_at).as_secs_f64(), 3),
                "span": s.json(),
            })
        } else {
            Value::Null
        };

        // 5. istiod, for the same objects in each delivery mode.
        let istiod = if istiod {
            self.istiod_phase(&tag, || tail(&controller.log(), 40))
        } else {
            Value::Null
        };

        let (cpu_total, rss_end, rss_peak) = proc_usage(pid);
        // BENCH_CLUSTER_LOGS=DIR keeps each controller's log.
        if let Some(dir) = std::env::var_os("BENCH_CLUSTER_LOGS") {
            let dir = PathBuf::from(dir);
            let _ = std::fs::create_dir_all(&dir);
            let _ = std::fs::write(
                dir.join(format!("controller-{nodes}-{}.log", bin.label)),
                controller.log(),
            );
            let _ = std::fs::copy(&audit, dir.join(format!("audit-{nodes}-{}.log", bin.label)));
        }
        drop(controller);
        json!({
            "nodes": nodes,
            "pods": layout.pods(),
            "filterdeployments": layout.workloads,
            "controller": bin.label,
            "binary": bin.shown(),
            "resync_seconds": opts.resync.as_secs(),
            "populate_seconds": round(self.populate_seconds, 1),
            "startup": {"span": startup.json()},
            "changes": {
                "latencies_ms": latencies.iter().map(|v| round(*v, 1)).collect::<Vec<_>>(),
                "p50_ms": round(percentile(&latencies, 50.0), 1),
                "p99_ms": round(percentile(&latencies, 99.0), 1),
                "span": changes.json(),
            },
            "rest": {
                "span": rest.json(),
                "writes_per_minute": round(rest.requests.writes() as f64 / minutes, 2),
                "reads_per_minute": round(rest.requests.reads() as f64 / minutes, 2),
                "requests_per_minute": round(rest.requests.total() as f64 / minutes, 2),
                "cpu_percent": round(100.0 * rest.cpu / rest.seconds, 2),
            },
            "rollout": rollout,
            "istiod": istiod,
            "rss_mib": {"ready": round(rss_ready, 1), "end": round(rss_end, 1), "peak": round(rss_peak, 1)},
            "cpu_seconds_total": round(cpu_total, 2),
        })
    }
}

/// How many sidecars (pilot-agent and Envoy, one per workload) istiod pushes to.
pub const SIDECARS: usize = 4;

impl Cluster {
    /// Wait until every FilterDeployment is settled for its generation with an object of
    /// `kind` among those its status names.
    fn wait_settled(&self, kind: &str, what: &str, log: &dyn Fn() -> String) {
        let rt = self.rt();
        crate::poll_until(Instant::now() + Duration::from_secs(300), || {
            let list = rt.block_on(self.fd_api.list(&ListParams::default())).ok()?;
            list.items
                .iter()
                .all(|o| {
                    settled(o)
                        && o.data["status"]["objects"].as_array().is_some_and(|a| {
                            a.iter()
                                .any(|x| x.as_str().is_some_and(|x| x.starts_with(kind)))
                        })
                })
                .then_some(())
        })
        .unwrap_or_else(|| {
            panic!(
                "{what}: the FilterDeployments did not settle on {kind}\n{}",
                log()
            )
        });
    }

    /// istiod's cost for the same objects (one per FilterDeployment) in envoyFilter,
    /// wasmPlugin and trafficExtension delivery, with [`SIDECARS`] sidecars connected: for
    /// each mode, every FilterDeployment switched to it, then new parameters for all of them at
    /// once, measured from that change until every sidecar serves them and istiod is quiet.
    fn istiod_phase(&self, tag: &str, log: impl Fn() -> String) -> Value {
        use crate::sidecar::{Sidecar, Workload};
        let cp = self.cp();
        let rt = self.rt();
        let pid = cp.pid("istiod").expect("istiod runs");
        let monitoring = cp.endpoints.istiod_monitoring;
        // The node directory the sidecars mount: every module an EnvoyFilter may name, by its
        // sha256 (what the agent keeps).
        let node_dir = self.work.path().join("node");
        std::fs::create_dir_all(&node_dir).expect("node dir");
        for v in [self.wasm.clone(), another_version(&self.wasm, "v2")] {
            std::fs::write(node_dir.join(format!("{}.wasm", sha256_hex(&v))), &v)
                .expect("write module");
        }
        let k = self.layout.workloads.min(SIDECARS);
        let sidecars: Vec<Sidecar> = (0..k)
            .map(|j| {
                let app = Layout::workload(j);
                let w = Workload::new(NAMESPACE, &format!("proxy-{j}"), &[("app", app.as_str())]);
                Sidecar::start(cp, w, &node_dir)
            })
            .collect();
        say(&format!("{tag}: istiod: {k} sidecars connected"));
        let kinds = [
            ("envoyFilter", "EnvoyFilter"),
            ("wasmPlugin", "WasmPlugin"),
            ("trafficExtension", "TrafficExtension"),
        ];
        let mut out = serde_json::Map::new();
        for (mode, kind) in kinds {
            // Switch every FilterDeployment to this mode.
            let patch = json!({"spec": {"delivery": mode}});
            rt.block_on(each((0..self.layout.workloads).collect(), |j| {
                let fd_api = self.fd_api.clone();
                let patch = patch.clone();
                async move {
                    fd_api
                        .patch(
                            &Layout::workload(j),
                            &PatchParams::default(),
                            &Patch::Merge(&patch),
                        )
                        .await
                        .expect("switch delivery");
                }
            }));
            self.wait_settled(kind, tag, &log);
            istiod_quiet(monitoring);
            // The same change in every mode: new parameters for every FilterDeployment.
            let marker = format!("istiod-{mode}");
            let before = (proc_usage(pid).0, metrics(monitoring));
            let t0 = Instant::now();
            rt.block_on(each((0..self.layout.workloads).collect(), |j| {
                let fd_api = self.fd_api.clone();
                let patch =
                    json!({"spec": {"filter": {"parameters": parameters(&format!("{marker}-{j}"))}}});
                async move {
                    fd_api
                        .patch(&Layout::workload(j), &PatchParams::default(), &Patch::Merge(&patch))
                        .await
                        .expect("patch parameters");
                }
            }));
            let served = crate::poll_until(Instant::now() + Duration::from_secs(180), || {
                sidecars
                    .iter()
                    .enumerate()
                    .all(|(j, s)| {
                        crate::http1::get(s.inbound, "/", &[]).is_ok_and(|r| {
                            r.header("hello") == Some(format!("{marker}-{j}").as_str())
                        })
                    })
                    .then(Instant::now)
            })
            .unwrap_or_else(|| {
                panic!(
                    "{tag}: the sidecars did not serve the {mode} parameters\n{}\n{}",
                    sidecars
                        .iter()
                        .map(|s| tail(&s.log(), 15))
                        .collect::<Vec<_>>()
                        .join("\n"),
                    log()
                )
            });
            istiod_quiet(monitoring);
            let after = (proc_usage(pid).0, metrics(monitoring));
            let delta = |name: &str| sum(&after.1, name) - sum(&before.1, name);
            let h = |name: &str| histogram_delta(&before.1, &after.1, name);
            let v = json!({
                "objects": self.layout.workloads,
                "sidecars": k,
                "served_seconds": round((served - t0).as_secs_f64(), 3),
                "istiod_cpu_seconds": round(after.0 - before.0, 3),
                "pushes": delta("pilot_xds_pushes"),
                "config_events": delta("pilot_k8s_cfg_events"),
                "push_time": h("pilot_xds_push_time"),
                "proxy_convergence": h("pilot_proxy_convergence_time"),
                "pushcontext_init": h("pilot_pushcontext_init_seconds"),
            });
            say(&format!("{tag}: istiod, {mode}: {v}"));
            out.insert(mode.to_string(), v);
        }
        drop(sidecars);
        Value::Object(out)
    }
}

/// istiod's `/metrics`.
fn metrics(addr: std::net::SocketAddr) -> String {
    crate::http1::get(addr, "/metrics", &[])
        .map(|r| r.text())
        .unwrap_or_default()
}

/// The samples named `name` (labels aside): (labels, value).
fn samples<'a>(text: &'a str, name: &str) -> Vec<(&'a str, f64)> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (metric, value) = l.rsplit_once(' ')?;
            let (n, labels) = match metric.split_once('{') {
                Some((n, rest)) => (n, rest.trim_end_matches('}')),
                None => (metric, ""),
            };
            (n == name).then(|| Some((labels, value.parse().ok()?)))?
        })
        .collect()
}

/// The sum of every sample named `name`.
fn sum(text: &str, name: &str) -> f64 {
    samples(text, name).iter().map(|(_, v)| v).sum()
}

/// A histogram over every label set, from `before` to `after`: count, mean and the bucket
/// bound under which 50 % and 99 % of the observations fall (milliseconds).
fn histogram_delta(before: &str, after: &str, name: &str) -> Value {
    let count = sum(after, &format!("{name}_count")) - sum(before, &format!("{name}_count"));
    let total = sum(after, &format!("{name}_sum")) - sum(before, &format!("{name}_sum"));
    let buckets = |text: &str| {
        let mut b: BTreeMap<String, f64> = BTreeMap::new();
        for (labels, v) in samples(text, &format!("{name}_bucket")) {
            let le = labels
                .split(',')
                .find_map(|kv| kv.trim().strip_prefix("le="))
                .unwrap_or("")
                .trim_matches('"')
                .to_string();
            *b.entry(le).or_default() += v;
        }
        b
    };
    let (b0, b1) = (buckets(before), buckets(after));
    let mut bounds: Vec<(f64, f64)> = b1
        .iter()
        .map(|(le, v)| {
            let bound = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().unwrap_or(f64::INFINITY)
            };
            (bound, v - b0.get(le).copied().unwrap_or(0.0))
        })
        .collect();
    bounds.sort_by(|a, b| a.0.total_cmp(&b.0));
    let under = |q: f64| {
        bounds
            .iter()
            .find(|(_, c)| count > 0.0 && *c >= q * count)
            .map(|(b, _)| {
                if b.is_finite() {
                    json!(round(b * 1000.0, 1))
                } else {
                    json!("+Inf")
                }
            })
            .unwrap_or(Value::Null)
    };
    json!({
        "count": count,
        "mean_ms": if count > 0.0 { round(total / count * 1000.0, 2) } else { 0.0 },
        "p50_under_ms": under(0.5),
        "p99_under_ms": under(0.99),
    })
}

/// Wait (up to 60 s) until istiod has pushed nothing and seen no config event for 2 s.
fn istiod_quiet(addr: std::net::SocketAddr) {
    let state = || {
        let m = metrics(addr);
        (
            sum(&m, "pilot_xds_pushes"),
            sum(&m, "pilot_k8s_cfg_events"),
            sum(&m, "pilot_pushcontext_init_seconds_count"),
        )
    };
    let mut last = state();
    let mut since = Instant::now();
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline && since.elapsed() < Duration::from_secs(2) {
        std::thread::sleep(Duration::from_millis(250));
        let now = state();
        if now != last {
            last = now;
            since = Instant::now();
        }
    }
}

/// The last `n` lines of `text`.
fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Every size with every binary (at each size one cluster, the binaries in turn, their order
/// alternating from size to size): the figures as JSON, by size, then by binary.
pub fn run(opts: &Options, sizes: &[usize], binaries: &[Binary]) -> Vec<Value> {
    run_with(opts, sizes, binaries, |_| {})
}

/// [`run`], calling `each_result` with the results so far after every measurement (a run that
/// is stopped half-way leaves what it measured).
pub fn run_with(
    opts: &Options,
    sizes: &[usize],
    binaries: &[Binary],
    mut each_result: impl FnMut(&[Value]),
) -> Vec<Value> {
    let mut results = Vec::new();
    for (i, &n) in sizes.iter().enumerate() {
        let cluster = Cluster::start(opts, n);
        let mut order: Vec<&Binary> = binaries.iter().collect();
        if i % 2 == 1 {
            order.reverse();
        }
        for (k, b) in order.iter().enumerate() {
            if k > 0 {
                cluster.reset();
            }
            // istiod is measured with the first binary given (the one under test).
            let istiod = opts.istiod && std::ptr::eq(*b, &binaries[0]);
            results.push(cluster.measure(opts, b, istiod));
            sort(&mut results, binaries);
            each_result(&results);
        }
    }
    results
}

/// By size, then in the order the binaries were given.
fn sort(results: &mut [Value], binaries: &[Binary]) {
    let rank = |r: &Value| {
        binaries
            .iter()
            .position(|b| r["controller"] == b.label.as_str())
            .unwrap_or(0)
    };
    results.sort_by_key(|r| (r["nodes"].as_u64().unwrap_or(0), rank(r)));
}
