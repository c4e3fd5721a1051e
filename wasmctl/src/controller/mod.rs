//! `wasmctl controller`: keeps every `FilterDeployment` in the cluster rendered, resolved, applied
//! and reported, the role of Alibaba ASM's controller. `render` stays the offline path over the
//! same code ([`crate::render`]).
//!
//! For each FilterDeployment the controller
//! 1. reads it with `render`'s rules (an error names the field),
//! 2. runs the shared [`crate::pipeline`]: resolves the image's tag to a digest with the
//!    credentials of `spec.filter.pullSecret` (read from the API), verifies its signature when
//!    `spec.filter.verification` asks, pulls the module when the digest is new, and runs its
//!    `proxy_on_configure` with the parameters in the harness, before writing anything;
//! 3. applies, by server-side apply under the field manager [`plan::FIELD_MANAGER`]: the
//!    `EnvoyFilter` or `WasmPlugin` (owned by the FilterDeployment), and for envoyFilter delivery
//!    the agent's image list aggregated over every FilterDeployment and the workload's two
//!    sidecar volume annotations (only those fields);
//! 4. writes `status` (observed generation, digest, pinned image, objects, a `Ready` condition
//!    whose reason and message say what to fix) and an Event when something changed.
//!
//! A failure leaves the last good objects in place, sets `Ready=False` and retries with
//! exponential backoff; a success re-resolves the tag every `resync`. A resync that changes
//! nothing writes nothing. A finalizer takes the image-list entry and the annotations back when
//! the FilterDeployment is deleted (the garbage collector removes the owned Istio object).
//! An envoyFilter rollout moves on when a node report or a Pod of the workload changes (both are
//! watched). With `--leader-elect`, replicas share a `Lease` and only its holder reconciles.
//!
//! Where each part lives:
//! - this file: the configuration and the loop (watches, leader election, shutdown);
//! - [`reconcile`]: one FilterDeployment, from the object to its status (the finalizer, the
//!   pipeline, the objects, the status);
//! - [`api`]: what the controller reads from the API (pull secrets, keys, Pods, node reports);
//! - [`apply`]: what it writes (server-side apply, annotations, deletions, the image list);
//! - [`rollout`]: when an EnvoyFilter may move to a new module (nodes and their reports);
//! - [`status`]: the status, Events and log lines a reconcile leaves;
//! - [`plan`]: the decisions as plain functions (objects, annotations, the typed status), unit
//!   tested without an API server;
//! - [`lease`]: leader election.
//!
//! ```no_run
//! # async fn f() -> wasmctl::Result<()> {
//! let cfg = wasmctl::controller::Config::default();
//! wasmctl::controller::run(cfg, std::future::pending()).await?;
//! # Ok(()) }
//! ```

pub mod api;
pub mod apply;
pub mod lease;
pub mod plan;
pub mod reconcile;
pub mod rollout;
pub mod status;

use crate::error::{Error, Result};
use crate::oci::registry::Options;
use crate::ops::server::{self, Published};
use crate::ops::{log, metrics::Registry};
use crate::render;
use futures_util::StreamExt;
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind};
use kube::runtime::controller::Controller;
use kube::runtime::reflector::Store;
use kube::runtime::watcher::{self, watcher};
use kube::{Client, ResourceExt};
use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How the controller runs.
#[derive(Debug, Clone)]
pub struct Config {
    /// Namespaces to watch; empty: all.
    pub namespaces: Vec<String>,
    /// How often a ready FilterDeployment's tag is re-resolved.
    pub resync: Duration,
    /// First retry delay after a failure, doubled per consecutive failure.
    pub backoff_initial: Duration,
    /// Largest retry delay.
    pub backoff_max: Duration,
    /// Registry transport (plain HTTP, insecure TLS); credentials come from pull secrets, else
    /// the Docker config of the process.
    pub registry: Options,
    /// The HTTP listener (`/healthz`, `/readyz`, `/metrics`, `/status`); `None`: none.
    pub listen: Option<SocketAddr>,
    /// Leader election: the `Lease` (namespace, name) replicas share; `None`: reconcile alone.
    pub lease_name: Option<(String, String)>,
    /// Leader election's lease duration, renew deadline and retry period.
    pub lease: lease::Timing,
    /// This replica's identity in the lease and in Events.
    pub identity: String,
    /// How long an envoyFilter rollout may wait for nodes before `Ready=False`.
    pub rollout_timeout: Duration,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            namespaces: Vec::new(),
            resync: Duration::from_secs(60),
            backoff_initial: Duration::from_secs(1),
            backoff_max: Duration::from_secs(300),
            registry: Options::default(),
            listen: Some(SocketAddr::from(([127, 0, 0, 1], 9091))),
            lease_name: None,
            lease: lease::Timing::for_lease(Duration::from_secs(15)),
            rollout_timeout: Duration::from_secs(300),
            identity: std::env::var("POD_NAME")
                .or_else(|_| std::env::var("HOSTNAME"))
                .unwrap_or_else(|_| format!("wasmctl-controller-{}", std::process::id())),
        }
    }
}

/// The FilterDeployment API resource.
pub fn filter_deployments() -> ApiResource {
    ApiResource::from_gvk(&GroupVersionKind::gvk(
        render::spec::GROUP,
        render::spec::VERSION,
        render::spec::KIND,
    ))
}

/// Histograms by label set.
pub type Histograms = prometheus_client::metrics::family::Family<
    Vec<(String, String)>,
    prometheus_client::metrics::histogram::Histogram,
    fn() -> prometheus_client::metrics::histogram::Histogram,
>;

/// The controller's metrics, served on `/metrics`.
pub struct Metrics {
    registry: Registry,
    /// Reconciles by result (`success`, `error`).
    pub reconciles: prometheus_client::metrics::family::Family<
        Vec<(String, String)>,
        prometheus_client::metrics::counter::Counter,
    >,
    /// Time spent reconciling, by result.
    pub reconcile_seconds: Histograms,
    /// Failed reconciles by reason.
    pub errors: prometheus_client::metrics::family::Family<
        Vec<(String, String)>,
        prometheus_client::metrics::counter::Counter,
    >,
    /// Objects written to the API server.
    pub writes: prometheus_client::metrics::counter::Counter,
    /// Whether this replica holds the lease.
    pub leader: prometheus_client::metrics::gauge::Gauge,
}

impl Metrics {
    fn new() -> Metrics {
        use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
        let mut registry = Registry::default();
        let reconciles = Default::default();
        fn seconds() -> Histogram {
            Histogram::new(exponential_buckets(0.005, 4.0, 8))
        }
        let reconcile_seconds = prometheus_client::metrics::family::Family::new_with_constructor(
            seconds as fn() -> Histogram,
        );
        let errors = Default::default();
        let writes = Default::default();
        let leader = Default::default();
        registry.register(
            "wasm_controller_reconciles",
            "Reconciles by result",
            Clone::clone(&reconciles),
        );
        registry.register(
            "wasm_controller_reconcile_seconds",
            "Time spent reconciling, by result",
            Clone::clone(&reconcile_seconds),
        );
        registry.register(
            "wasm_controller_errors",
            "Failed reconciles by reason",
            Clone::clone(&errors),
        );
        registry.register(
            "wasm_controller_writes",
            "Objects written to the API server",
            Clone::clone(&writes),
        );
        registry.register(
            "wasm_controller_leader",
            "Whether this replica holds the lease",
            Clone::clone(&leader),
        );
        Metrics {
            registry,
            reconciles,
            reconcile_seconds,
            errors,
            writes,
            leader,
        }
    }

    fn text(&self) -> String {
        crate::ops::metrics::encode(&self.registry)
    }
}

/// What reconciles share.
pub struct Ctx {
    client: Client,
    cfg: Config,
    /// The FilterDeployments watched: one store per watched namespace (or one for all).
    stores: Vec<Store<DynamicObject>>,
    /// The watch-backed caches of Pods and node reports, one per controller.
    caches: Vec<Caches>,
    recorder: kube::runtime::events::Recorder,
    /// Modules pulled, by manifest digest.
    modules: tempfile::TempDir,
    /// The module sha256 of each manifest digest pulled (the node reports name modules by it).
    shas: Shas,
    /// (digest, root id, parameters) combinations the module accepted.
    checked: Mutex<HashSet<(String, String, String)>>,
    /// Consecutive failures by FilterDeployment, for the backoff.
    failures: Mutex<HashMap<String, u32>>,
    /// The agent's image list: entries as reconciles decided them, and its writes batched.
    list: apply::ListWriter,
    metrics: Arc<Metrics>,
    published: Arc<Mutex<Published>>,
}

/// Module sha256 by manifest digest.
pub type Shas = Arc<Mutex<HashMap<String, String>>>;

/// The caches a controller's watches fill: the Pods it watches (all namespaces, or
/// `namespace`) and every node report. Reads come from here, not from the API: a reconcile
/// costs no list of every Pod of a workload or of every node's report.
#[derive(Clone)]
pub struct Caches {
    /// The Pods' namespace (`None`: all).
    pub namespace: Option<String>,
    /// Pods, stripped to what a rollout reads (labels, node, phase, deletion).
    pub pods: Store<k8s_openapi::api::core::v1::Pod>,
    /// Node reports.
    pub reports: Store<k8s_openapi::api::core::v1::ConfigMap>,
    /// Whether each holds its watch's first list: (Pods, node reports).
    pub filled: (Filled, Filled),
}

/// Whether a cache holds its watch's first list. (A watch channel: kube-runtime's
/// `Store::wait_until_ready` wakes only the last of several tasks waiting at once, so one
/// task per cache waits there and tells every reconcile here.)
pub type Filled = tokio::sync::watch::Receiver<bool>;

/// A [`Filled`] for `store`.
fn filled<K>(store: &Store<K>) -> Filled
where
    K: kube::Resource + Clone + Send + Sync + 'static,
    K::DynamicType: Eq + std::hash::Hash + Clone + Send + Sync,
{
    let (tx, rx) = tokio::sync::watch::channel(false);
    let store = store.clone();
    tokio::spawn(async move {
        if store.wait_until_ready().await.is_ok() {
            let _ = tx.send(true);
        }
    });
    rx
}

impl Ctx {
    /// Every FilterDeployment watched, from the watches' stores.
    fn filter_deployments(&self) -> Vec<Arc<DynamicObject>> {
        self.stores.iter().flat_map(Store::state).collect()
    }

    fn count_write(&self) {
        self.metrics.writes.inc();
    }

    fn publish(&self, ready: bool, why: &str) {
        publish(&self.published, &self.metrics, ready, why);
    }
}

/// The FilterDeployment APIs to watch: one per namespace of `namespaces`, exactly those; all
/// namespaces when it is empty.
fn watched(client: &Client, namespaces: &[String]) -> Vec<(Api<DynamicObject>, Option<String>)> {
    let fds = filter_deployments();
    if namespaces.is_empty() {
        return vec![(Api::all_with(client.clone(), &fds), None)];
    }
    let mut seen = std::collections::BTreeSet::new();
    namespaces
        .iter()
        .filter(|ns| seen.insert(ns.as_str()))
        .map(|ns| {
            (
                Api::namespaced_with(client.clone(), ns, &fds),
                Some(ns.clone()),
            )
        })
        .collect()
}

/// A Pod as the cache keeps it: what a rollout reads (namespace, name, labels, deletion, node,
/// phase), nothing else, so ten thousand Pods take a few megabytes.
fn strip_pod(p: &mut k8s_openapi::api::core::v1::Pod) {
    use k8s_openapi::api::core::v1::{PodSpec, PodStatus};
    let m = &mut p.metadata;
    m.managed_fields = None;
    m.annotations = None;
    m.owner_references = None;
    m.finalizers = None;
    let node_name = p.spec.as_ref().and_then(|s| s.node_name.clone());
    p.spec = Some(PodSpec {
        node_name,
        ..PodSpec::default()
    });
    let phase = p.status.as_ref().and_then(|s| s.phase.clone());
    p.status = Some(PodStatus {
        phase,
        ..PodStatus::default()
    });
}

/// A node report as the cache keeps it: its name, labels and data.
fn strip_report(cm: &mut k8s_openapi::api::core::v1::ConfigMap) {
    cm.metadata.managed_fields = None;
    cm.metadata.annotations = None;
    cm.metadata.owner_references = None;
}

/// Whether node `node`'s report (in `reports`) holds the module of manifest digest `digest`
/// (`None`: this replica has not pulled that digest, so its module is not known).
fn holds(
    reports: &Store<k8s_openapi::api::core::v1::ConfigMap>,
    shas: &Shas,
    node: &str,
    digest: &str,
) -> Option<bool> {
    let sha = shas.lock().ok()?.get(digest)?.clone();
    let key = kube::runtime::reflector::ObjectRef::new(&render::node_report::report_name(node))
        .within(render::AGENT_NAMESPACE);
    Some(
        reports
            .get(&key)
            .and_then(|cm| render::node_report::read(cm.data.as_ref()?))
            .is_some_and(|(n, modules)| n == node && modules.contains(&sha)),
    )
}

/// A controller for the FilterDeployments of `api`, also woken by what moves a rollout on: a
/// node report (the FilterDeployments waiting for that node, see [`rollout::Wakes`]) and a Pod
/// (those whose workload it is). Both are watched once, into the caches returned, which the
/// reconciles read. Pods are watched in `namespace` only when the FilterDeployments are (a Role
/// there is enough; a workload elsewhere is listed from the API).
fn controller(
    client: &Client,
    api: Api<DynamicObject>,
    namespace: Option<&str>,
    shas: &Shas,
) -> (Controller<DynamicObject>, Caches) {
    use k8s_openapi::api::core::v1::{ConfigMap, Pod};
    use kube::runtime::{WatchStreamExt, reflector};
    let fds = filter_deployments();
    let c = Controller::new_with(api, watcher::Config::default(), fds);
    let store = c.store();

    let (reports, writer) = reflector::store::<ConfigMap>();
    let report_stream = watcher(
        Api::<ConfigMap>::namespaced(client.clone(), render::AGENT_NAMESPACE),
        watcher::Config::default().labels(render::node_report::REPORT_LABEL),
    )
    .default_backoff()
    .modify(strip_report)
    .reflect(writer)
    .touched_objects();
    let wakes = rollout::Wakes::new(Duration::from_secs(2));
    let by_report = {
        let (store, reports, shas) = (store.clone(), reports.clone(), shas.clone());
        move |cm: ConfigMap| {
            let node = cm
                .data
                .as_ref()
                .and_then(|d| d.get(render::node_report::NODE_KEY).cloned())
                .unwrap_or_default();
            rollout::woken_by_report(
                &store.state(),
                &node,
                |n, digest| holds(&reports, &shas, n, digest),
                &wakes,
                std::time::Instant::now(),
            )
        }
    };

    let (pods, writer) = reflector::store::<Pod>();
    let pods_api = match namespace {
        Some(ns) => Api::<Pod>::namespaced(client.clone(), ns),
        None => Api::<Pod>::all(client.clone()),
    };
    let pod_stream = watcher(pods_api, watcher::Config::default())
        .default_backoff()
        .modify(strip_pod)
        .reflect(writer)
        .touched_objects();
    let by_pod = move |p: Pod| {
        let labels = p.labels().clone();
        let ns = p.namespace().unwrap_or_default();
        rollout::waiting(&store.state(), rollout::Change::Pod(&ns, &labels))
    };
    let caches = Caches {
        namespace: namespace.map(str::to_string),
        filled: (filled(&pods), filled(&reports)),
        pods,
        reports,
    };
    (
        c.watches_stream(report_stream, by_report)
            .watches_stream(pod_stream, by_pod),
        caches,
    )
}

/// Run until `shutdown` resolves (then finish the reconciles under way and, with leader
/// election, give the lease up).
pub async fn run(cfg: Config, shutdown: impl Future<Output = ()> + Send + 'static) -> Result<()> {
    let client = Client::try_default().await.map_err(|e| Error::Kubernetes(format!(
        "cannot reach the Kubernetes API (KUBECONFIG, ~/.kube/config or the in-cluster service account): {e}"
    )))?;
    let metrics = Arc::new(Metrics::new());
    let published = Arc::new(Mutex::new(Published {
        ready: false,
        not_ready: "starting".into(),
        ..Published::default()
    }));
    let server = match cfg.listen {
        Some(addr) => {
            let l = server::bind(addr)
                .await
                .map_err(|e| Error::Usage(format!("cannot listen on {addr}: {e}")))?;
            log::log(
                "info",
                "listening",
                &[(
                    "addr",
                    &l.local_addr().map(|a| a.to_string()).unwrap_or_default(),
                )],
            );
            Some(tokio::spawn(server::serve(l, published.clone())))
        }
        None => None,
    };
    // Readiness: the API answers (a replica waiting for the lease is ready, as in
    // controller-runtime).
    let fds = filter_deployments();
    let probe: Api<DynamicObject> = match cfg.namespaces.first() {
        Some(ns) => Api::namespaced_with(client.clone(), ns, &fds),
        None => Api::all_with(client.clone(), &fds),
    };
    probe
        .list(&kube::api::ListParams::default().limit(1))
        .await
        .map_err(|e| Error::Kubernetes(format!("cannot list FilterDeployments (is the CRD installed? kubectl apply -k manifests/): {e}")))?;
    publish(&published, &metrics, true, "");

    let (shutdown_tx, shutdown_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        let _ = shutdown_tx.send(true);
    });
    let stopped = || {
        let mut rx = shutdown_rx.clone();
        async move {
            let _ = rx.wait_for(|s| *s).await;
        }
    };

    let mut holder = None;
    if let Some((ns, name)) = cfg.lease_name.clone() {
        cfg.lease.check().map_err(Error::Usage)?;
        let l = lease::Lease::new(client.clone(), &ns, &name, &cfg.identity, cfg.lease);
        let mut rx = shutdown_rx.clone();
        let since = tokio::select! {
            since = l.acquire() => since,
            _ = rx.wait_for(|s| *s) => {
                if let Some(s) = server { s.abort(); }
                return Ok(());
            }
        };
        log::log(
            "info",
            "leader",
            &[
                ("lease", &format!("{ns}/{name}")),
                ("identity", &cfg.identity),
            ],
        );
        holder = Some((l, since));
    }
    metrics.leader.set(1);
    publish(&published, &metrics, true, "");

    let shas: Shas = Arc::default();
    let (controllers, caches): (Vec<Controller<DynamicObject>>, Vec<Caches>) =
        watched(&client, &cfg.namespaces)
            .into_iter()
            .map(|(api, ns)| controller(&client, api, ns.as_deref(), &shas))
            .unzip();
    let ctx = Arc::new(Ctx {
        recorder: kube::runtime::events::Recorder::new(
            client.clone(),
            kube::runtime::events::Reporter {
                controller: plan::FIELD_MANAGER.into(),
                instance: Some(cfg.identity.clone()),
            },
        ),
        stores: controllers.iter().map(Controller::store).collect(),
        caches,
        shas,
        list: apply::ListWriter::default(),
        client: client.clone(),
        cfg: cfg.clone(),
        modules: tempfile::tempdir()
            .map_err(|e| Error::io("cannot create", std::env::temp_dir(), e))?,
        checked: Mutex::new(HashSet::new()),
        failures: Mutex::new(HashMap::new()),
        metrics: metrics.clone(),
        published: published.clone(),
    });
    // Losing the lease stops reconciling at once (another replica may hold it now).
    let lost = {
        let holder = holder.clone();
        async move {
            match holder {
                Some((h, since)) => h.keep(since).await,
                None => std::future::pending().await,
            }
        }
    };
    // One controller per watched namespace: their objects never overlap, so no FilterDeployment
    // is reconciled by two at once.
    let runs = controllers.into_iter().map(|c| {
        c.graceful_shutdown_on(stopped())
            .run(reconcile::reconcile, reconcile::error_policy, ctx.clone())
            .boxed()
    });
    let run = futures_util::stream::select_all(runs).for_each(|r| async move {
        if let Err(e) = r {
            log::log("warn", "reconcile-error", &[("error", &e.to_string())]);
        }
    });
    let lost_lease = tokio::select! {
        _ = run => false,
        reason = lost => {
            // Not leading from here on: say so before anything else can stall.
            metrics.leader.set(0);
            publish(&published, &metrics, false, "lost the leader lease");
            log::log("error", "lease-lost", &[("reason", &reason)]);
            true
        }
    };
    if let Some((h, _)) = holder {
        h.release().await;
    }
    if let Some(s) = server {
        s.abort();
    }
    if lost_lease {
        return Err(Error::Kubernetes(
            "lost the leader lease; stopping so that one replica reconciles".into(),
        ));
    }
    Ok(())
}

fn publish(published: &Mutex<Published>, metrics: &Metrics, ready: bool, why: &str) {
    let text = metrics.text();
    let leader = metrics.leader.get() == 1;
    if let Ok(mut p) = published.lock() {
        p.ready = ready;
        p.not_ready = why.to_string();
        p.metrics = text;
        p.status = serde_json::json!({"leader": leader}).to_string();
    }
}
