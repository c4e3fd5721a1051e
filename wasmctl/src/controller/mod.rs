//! `wasmctl controller`: keeps every `FilterDeployment` in the cluster rendered, resolved, applied
//! and reported, the role of Alibaba ASM's controller. `render` stays the offline path over the
//! same code ([`crate::render`]); the decisions live in [`plan`] as plain functions, and this
//! module is the edge that reads and writes the API.
//!
//! For each FilterDeployment the controller
//! 1. reads it with `render`'s rules (an error names the field),
//! 2. resolves the image's tag to a digest with the credentials of `spec.filter.pullSecret`
//!    (read from the API), pulling the module when the digest is new, and runs its
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
//! With `--leader-elect`, replicas share a `Lease` and only its holder reconciles.
//!
//! ```no_run
//! # async fn f() -> wasmctl::Result<()> {
//! let cfg = wasmctl::controller::Config::default();
//! wasmctl::controller::run(cfg, std::future::pending()).await?;
//! # Ok(()) }
//! ```

pub mod lease;
pub mod plan;

use crate::error::{Error, Result};
use crate::oci::registry::{self, Fetched, Options};
use crate::ops::server::{self, Published};
use crate::ops::{log, time};
use crate::render::{self, spec::Delivery};
use futures_util::StreamExt;
use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, GroupVersionKind, Patch, PatchParams,
};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::Store;
use kube::runtime::watcher;
use kube::{Client, Resource, ResourceExt};
use plan::{Applied, Failure, Reason};
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

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

fn resource(api_version: &str, kind: &str) -> ApiResource {
    let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
    ApiResource::from_gvk(&GroupVersionKind::gvk(group, version, kind))
}

/// Counters for `/metrics`.
#[derive(Debug, Default)]
struct Metrics {
    /// (result) -> (count, seconds)
    reconciles: BTreeMap<String, (u64, f64)>,
    /// (reason) -> count
    errors: BTreeMap<String, u64>,
    writes: u64,
    leader: bool,
}

impl Metrics {
    fn text(&self) -> String {
        let mut out = String::new();
        out.push_str("# HELP wasm_controller_reconciles_total Reconciles by result.\n# TYPE wasm_controller_reconciles_total counter\n");
        for (r, (n, _)) in &self.reconciles {
            out.push_str(&format!(
                "wasm_controller_reconciles_total{{result=\"{r}\"}} {n}\n"
            ));
        }
        out.push_str("# HELP wasm_controller_reconcile_seconds Time spent reconciling, by result.\n# TYPE wasm_controller_reconcile_seconds summary\n");
        for (r, (n, s)) in &self.reconciles {
            out.push_str(&format!("wasm_controller_reconcile_seconds_sum{{result=\"{r}\"}} {s:.6}\nwasm_controller_reconcile_seconds_count{{result=\"{r}\"}} {n}\n"));
        }
        out.push_str("# HELP wasm_controller_errors_total Failed reconciles by reason.\n# TYPE wasm_controller_errors_total counter\n");
        for (r, n) in &self.errors {
            out.push_str(&format!(
                "wasm_controller_errors_total{{reason=\"{r}\"}} {n}\n"
            ));
        }
        out.push_str(&format!("# HELP wasm_controller_writes_total Objects written to the API server.\n# TYPE wasm_controller_writes_total counter\nwasm_controller_writes_total {}\n", self.writes));
        out.push_str(&format!("# HELP wasm_controller_leader Whether this replica holds the lease.\n# TYPE wasm_controller_leader gauge\nwasm_controller_leader {}\n", u8::from(self.leader)));
        out
    }
}

/// What reconciles share.
struct Ctx {
    client: Client,
    cfg: Config,
    /// The FilterDeployments watched: one store per watched namespace (or one for all).
    stores: Vec<Store<DynamicObject>>,
    recorder: Recorder,
    /// Modules pulled, by manifest digest.
    modules: tempfile::TempDir,
    /// (digest, root id, parameters) combinations the module accepted.
    checked: Mutex<std::collections::HashSet<(String, String, String)>>,
    /// Consecutive failures by FilterDeployment, for the backoff.
    failures: Mutex<HashMap<String, u32>>,
    metrics: Arc<Mutex<Metrics>>,
    published: Arc<Mutex<Published>>,
}

impl Ctx {
    /// Every FilterDeployment watched, from the watches' stores.
    fn filter_deployments(&self) -> Vec<Arc<DynamicObject>> {
        self.stores.iter().flat_map(Store::state).collect()
    }

    fn count_write(&self) {
        if let Ok(mut m) = self.metrics.lock() {
            m.writes += 1;
        }
    }

    fn api(&self, ar: &ApiResource, namespace: Option<&str>) -> Api<DynamicObject> {
        match namespace {
            Some(ns) => Api::namespaced_with(self.client.clone(), ns, ar),
            None => Api::all_with(self.client.clone(), ar),
        }
    }

    /// Server-side apply `object` (forced: the controller owns what it writes) unless the live
    /// object already has every field of it; true when it wrote.
    async fn apply(&self, object: &Value) -> std::result::Result<bool, Failure> {
        let object = &with_digest(object);
        let ar = resource(
            object["apiVersion"].as_str().unwrap_or(""),
            object["kind"].as_str().unwrap_or(""),
        );
        let ns = object
            .pointer("/metadata/namespace")
            .and_then(Value::as_str);
        let name = object
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or("");
        let api = self.api(&ar, ns);
        let what = format!("{} {}", ar.kind, plan::key(object));
        if let Some(live) = api
            .get_opt(name)
            .await
            .map_err(|e| Failure::new(Reason::ApplyFailed, format!("cannot read {what}: {e}")))?
        {
            let live = serde_json::to_value(&live).unwrap_or(Value::Null);
            if contains(&live, object) {
                return Ok(false);
            }
        }
        let pp = PatchParams::apply(plan::FIELD_MANAGER).force();
        api.patch(name, &pp, &Patch::Apply(object))
            .await
            .map_err(|e| Failure::new(Reason::ApplyFailed, format!("cannot apply {what}: {e}")))?;
        self.count_write();
        Ok(true)
    }
}

/// Whether `have` holds every field of `want` with the same value (lists compared whole).
fn contains(have: &Value, want: &Value) -> bool {
    match (have, want) {
        (Value::Object(h), Value::Object(w)) => w
            .iter()
            .all(|(k, v)| h.get(k).is_some_and(|hv| contains(hv, v))),
        _ => have == want,
    }
}

/// The annotation holding a digest of what the controller last applied to an object: a field
/// it stopped sending is still on the live object (so [`contains`] alone cannot tell), but the
/// digest differs and the apply, which removes it, happens.
pub const APPLIED_ANNOTATION: &str = "filters.envoy-wasm-toolkit.io/applied";

fn with_digest(object: &Value) -> Value {
    let mut digest = crate::oci::layout::sha256_hex(object.to_string().as_bytes());
    digest.truncate(24);
    let mut o = object.clone();
    if !o["metadata"]["annotations"].is_object() {
        o["metadata"]["annotations"] = json!({});
    }
    o["metadata"]["annotations"][APPLIED_ANNOTATION] = json!(digest);
    o
}

/// The FilterDeployment APIs to watch: one per namespace of `namespaces`, exactly those; all
/// namespaces when it is empty.
fn watched(client: &Client, namespaces: &[String]) -> Vec<Api<DynamicObject>> {
    let fds = filter_deployments();
    if namespaces.is_empty() {
        return vec![Api::all_with(client.clone(), &fds)];
    }
    let mut seen = std::collections::BTreeSet::new();
    namespaces
        .iter()
        .filter(|ns| seen.insert(ns.as_str()))
        .map(|ns| Api::namespaced_with(client.clone(), ns, &fds))
        .collect()
}

/// Run until `shutdown` resolves (then finish the reconciles under way and, with leader
/// election, give the lease up).
pub async fn run(cfg: Config, shutdown: impl Future<Output = ()> + Send + 'static) -> Result<()> {
    let client = Client::try_default().await.map_err(|e| Error::Kubernetes(format!(
        "cannot reach the Kubernetes API (KUBECONFIG, ~/.kube/config or the in-cluster service account): {e}"
    )))?;
    let metrics = Arc::new(Mutex::new(Metrics::default()));
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
    let probe: Api<DynamicObject> = Api::all_with(client.clone(), &fds);
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
    if let Ok(mut m) = metrics.lock() {
        m.leader = true;
    }
    publish(&published, &metrics, true, "");

    let controllers: Vec<Controller<DynamicObject>> = watched(&client, &cfg.namespaces)
        .into_iter()
        .map(|api| Controller::new_with(api, watcher::Config::default(), fds.clone()))
        .collect();
    let ctx = Arc::new(Ctx {
        recorder: Recorder::new(
            client.clone(),
            Reporter {
                controller: plan::FIELD_MANAGER.into(),
                instance: Some(cfg.identity.clone()),
            },
        ),
        stores: controllers.iter().map(Controller::store).collect(),
        client: client.clone(),
        cfg: cfg.clone(),
        modules: tempfile::tempdir()
            .map_err(|e| Error::io("cannot create", std::env::temp_dir(), e))?,
        checked: Mutex::new(Default::default()),
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
            .run(reconcile, error_policy, ctx.clone())
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
            if let Ok(mut m) = metrics.lock() {
                m.leader = false;
            }
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

fn publish(published: &Mutex<Published>, metrics: &Mutex<Metrics>, ready: bool, why: &str) {
    let text = metrics.lock().map(|m| m.text()).unwrap_or_default();
    let leader = metrics.lock().map(|m| m.leader).unwrap_or(false);
    if let Ok(mut p) = published.lock() {
        p.ready = ready;
        p.not_ready = why.to_string();
        p.metrics = text;
        p.status = json!({"leader": leader}).to_string();
    }
}

fn now() -> String {
    time::rfc3339(time::unix_now())
}

async fn reconcile(obj: Arc<DynamicObject>, ctx: Arc<Ctx>) -> std::result::Result<Action, Failure> {
    let started = Instant::now();
    let value = serde_json::to_value(obj.as_ref()).unwrap_or(Value::Null);
    let key = plan::key(&value);
    let api = ctx.api(&filter_deployments(), obj.namespace().as_deref());
    let name = obj.name_any();

    if obj.meta().deletion_timestamp.is_some() {
        if obj.finalizers().iter().any(|f| f == plan::FINALIZER) {
            cleanup(&ctx, &value).await?;
            let left: Vec<&String> = obj
                .finalizers()
                .iter()
                .filter(|f| *f != plan::FINALIZER)
                .collect();
            let patch = json!({"metadata": {"finalizers": left, "resourceVersion": obj.resource_version()}});
            api.patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
                .map_err(|e| {
                    Failure::new(
                        Reason::ApplyFailed,
                        format!("cannot remove the finalizer of {key}: {e}"),
                    )
                })?;
            ctx.count_write();
            log::log("info", "deleted", &[("filterdeployment", &key)]);
        }
        return Ok(Action::await_change());
    }
    if !obj.finalizers().iter().any(|f| f == plan::FINALIZER) {
        let mut all = obj.finalizers().to_vec();
        all.push(plan::FINALIZER.to_string());
        let patch =
            json!({"metadata": {"finalizers": all, "resourceVersion": obj.resource_version()}});
        api.patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map_err(|e| {
                Failure::new(
                    Reason::ApplyFailed,
                    format!("cannot add the finalizer to {key}: {e}"),
                )
            })?;
        ctx.count_write();
        // The change comes back as a watch event.
        return Ok(Action::await_change());
    }

    let previous = value.get("status").filter(|s| !s.is_null());
    let generation = obj.meta().generation.unwrap_or(0);
    let result = apply_one(&ctx, &value).await;
    let (applied, failure) = match &result {
        Ok(a) => (Some(a.clone()), None),
        Err(f) => (None, Some(f.clone())),
    };
    let status = plan::status(
        generation,
        applied.as_ref(),
        failure.as_ref(),
        previous,
        &now(),
    );
    let changed = previous.map(strip_times) != Some(strip_times(&status));
    if changed {
        let patch = json!({
            "apiVersion": render::spec::API_VERSION,
            "kind": render::spec::KIND,
            "status": status,
        });
        api.patch_status(
            &name,
            &PatchParams::apply(plan::FIELD_MANAGER).force(),
            &Patch::Apply(&patch),
        )
        .await
        .map_err(|e| {
            Failure::new(
                Reason::ApplyFailed,
                format!("cannot write the status of {key}: {e}"),
            )
        })?;
        ctx.count_write();
        let (type_, reason, note) = match (&applied, &failure) {
            (Some(a), _) => (EventType::Normal, "Applied", format!("{} serving", a.image)),
            (_, Some(f)) => (EventType::Warning, f.reason.as_str(), f.message.clone()),
            _ => (EventType::Normal, "Applied", String::new()),
        };
        let event = Event {
            type_,
            reason: reason.into(),
            note: Some(note.chars().take(1000).collect()),
            action: "Reconcile".into(),
            secondary: None,
        };
        if let Err(e) = ctx
            .recorder
            .publish(&event, &obj.object_ref(&filter_deployments()))
            .await
        {
            log::log(
                "warn",
                "event-failed",
                &[("filterdeployment", &key), ("error", &e.to_string())],
            );
        }
        match (&applied, &failure) {
            (Some(a), _) => log::log(
                "info",
                "applied",
                &[
                    ("filterdeployment", &key),
                    ("image", &a.image),
                    ("objects", &a.objects.join(",")),
                ],
            ),
            (_, Some(f)) => log::log(
                "warn",
                "failed",
                &[
                    ("filterdeployment", &key),
                    ("reason", f.reason.as_str()),
                    ("message", &f.message),
                ],
            ),
            _ => {}
        }
    }
    let label = if failure.is_some() {
        "error"
    } else {
        "success"
    };
    if let Ok(mut m) = ctx.metrics.lock() {
        let e = m.reconciles.entry(label.into()).or_default();
        e.0 += 1;
        e.1 += started.elapsed().as_secs_f64();
        if let Some(f) = &failure {
            *m.errors.entry(f.reason.as_str().into()).or_default() += 1;
        }
    }
    publish(&ctx.published, &ctx.metrics, true, "");
    match result {
        Ok(a) => {
            if let Ok(mut f) = ctx.failures.lock() {
                f.remove(&key);
            }
            // A rollout waits for nodes: look again soon.
            let next = if a.rollout.is_some() {
                ctx.cfg.resync.min(Duration::from_secs(2))
            } else {
                ctx.cfg.resync
            };
            Ok(Action::requeue(next))
        }
        Err(f) => Err(f),
    }
}

/// A status without its transition times, to compare two.
fn strip_times(s: &Value) -> Value {
    let mut s = s.clone();
    if let Some(cs) = s.get_mut("conditions").and_then(Value::as_array_mut) {
        for c in cs {
            if let Some(o) = c.as_object_mut() {
                o.remove("lastTransitionTime");
            }
        }
    }
    s
}

fn error_policy(obj: Arc<DynamicObject>, _e: &Failure, ctx: Arc<Ctx>) -> Action {
    let key = format!("{}/{}", obj.namespace().unwrap_or_default(), obj.name_any());
    let n = ctx
        .failures
        .lock()
        .map(|mut f| {
            let n = f.entry(key).or_insert(0);
            *n += 1;
            *n
        })
        .unwrap_or(1);
    let delay = ctx
        .cfg
        .backoff_initial
        .saturating_mul(1u32 << n.min(16).saturating_sub(1));
    Action::requeue(delay.min(ctx.cfg.backoff_max))
}

/// The credentials of `spec.filter.pullSecret` as a Docker config file for the registry client.
async fn pull_secret(
    ctx: &Ctx,
    namespace: &str,
    secret: &str,
) -> std::result::Result<PathBuf, Failure> {
    let api: Api<k8s_openapi::api::core::v1::Secret> =
        Api::namespaced(ctx.client.clone(), namespace);
    let s = api
        .get_opt(secret)
        .await
        .map_err(|e| {
            Failure::new(
                Reason::PullSecretNotFound,
                format!("spec.filter.pullSecret: cannot read Secret {namespace}/{secret}: {e}"),
            )
        })?
        .ok_or_else(|| {
            Failure::new(
                Reason::PullSecretNotFound,
                format!("spec.filter.pullSecret: Secret {namespace}/{secret} does not exist"),
            )
        })?;
    let data = s
        .data
        .as_ref()
        .and_then(|d| d.get(".dockerconfigjson"))
        .ok_or_else(|| Failure::new(Reason::PullSecretNotFound, format!("spec.filter.pullSecret: Secret {namespace}/{secret} has no .dockerconfigjson (type kubernetes.io/dockerconfigjson)")))?;
    let dir = ctx
        .modules
        .path()
        .join("secrets")
        .join(namespace)
        .join(secret);
    std::fs::create_dir_all(&dir)
        .map_err(|e| Failure::new(Reason::PullSecretNotFound, e.to_string()))?;
    let path = dir.join("config.json");
    crate::fsutil::write_atomic(&path, &data.0, 0o600)
        .map_err(|e| Failure::new(Reason::PullSecretNotFound, e.to_string()))?;
    Ok(path)
}

/// The cosign public key `spec.filter.verification.keyRef` names, as PEM text.
async fn verification_key(
    ctx: &Ctx,
    namespace: &str,
    r: &crate::render::spec::KeyRef,
) -> std::result::Result<String, Failure> {
    use crate::render::spec::KeyKind;
    let fail = |m: String| {
        Failure::new(
            Reason::SignatureNotVerified,
            format!("spec.filter.verification.keyRef: {m}"),
        )
    };
    let (kind, name, key) = (r.kind, r.name.as_str(), r.key.as_str());
    let text = match kind {
        KeyKind::ConfigMap => {
            let api: Api<k8s_openapi::api::core::v1::ConfigMap> =
                Api::namespaced(ctx.client.clone(), namespace);
            let cm = api
                .get_opt(name)
                .await
                .map_err(|e| fail(format!("cannot read ConfigMap {namespace}/{name}: {e}")))?
                .ok_or_else(|| fail(format!("ConfigMap {namespace}/{name} does not exist")))?;
            cm.data.and_then(|d| d.get(key).cloned())
        }
        KeyKind::Secret => {
            let api: Api<k8s_openapi::api::core::v1::Secret> =
                Api::namespaced(ctx.client.clone(), namespace);
            let s = api
                .get_opt(name)
                .await
                .map_err(|e| fail(format!("cannot read Secret {namespace}/{name}: {e}")))?
                .ok_or_else(|| fail(format!("Secret {namespace}/{name} does not exist")))?;
            s.data.and_then(|d| {
                d.get(key)
                    .map(|b| String::from_utf8_lossy(&b.0).into_owned())
            })
        }
    };
    let what = match kind {
        KeyKind::ConfigMap => "ConfigMap",
        KeyKind::Secret => "Secret",
    };
    text.ok_or_else(|| fail(format!("{what} {namespace}/{name} has no key {key:?}")))
}

async fn apply_one(ctx: &Ctx, obj: &Value) -> std::result::Result<Applied, Failure> {
    let inputs = plan::parse(obj)?;
    let source = inputs.deployments[0].clone();
    let d = &source.deployment;
    let ns = d
        .metadata
        .namespace
        .clone()
        .unwrap_or_else(|| "default".into());
    let mut opts = ctx.cfg.registry.clone();
    if let Some(secret) = &d.spec.filter.pull_secret {
        opts.registry_config = Some(pull_secret(ctx, &ns, secret).await?);
    }
    let image = d.spec.filter.image.clone();
    let known = plan::last_applied(obj.get("status"))
        .map(|a| a.rollout.map(|r| r.digest).unwrap_or(a.digest));
    let reference = registry::parse_reference(&image)
        .map_err(|e| Failure::new(Reason::InvalidSpec, format!("spec.filter.image: {e}")))?;
    // One manifest request when the digest is known and its module is at hand.
    let known = known.filter(|k| module_path(ctx, k).exists());
    let digest = match registry::fetch(&image, &opts, known.as_deref(), false).await {
        Ok(Fetched::Unchanged { digest }) => digest,
        Ok(Fetched::Module(m)) => {
            crate::fsutil::write_atomic(&module_path(ctx, &m.digest), &m.module, 0o644)
                .map_err(|e| Failure::new(Reason::RegistryError, e.to_string()))?;
            m.digest
        }
        Err(e) => return Err(Failure::registry(&e)),
    };
    let pinned = registry::pinned(&reference, &digest);
    if let Some(v) = &d.spec.filter.verification {
        let pem = verification_key(ctx, &ns, &v.key_ref).await?;
        let verified = (format!("signature {digest}"), pem.clone(), String::new());
        if !ctx
            .checked
            .lock()
            .map(|c| c.contains(&verified))
            .unwrap_or(false)
        {
            let origin = PathBuf::from(format!(
                "{:?} {ns}/{} key {}",
                v.key_ref.kind, v.key_ref.name, v.key_ref.key
            ));
            let key = crate::oci::sign::parse_public_key(&pem, &origin).map_err(|e| {
                Failure::new(
                    Reason::SignatureNotVerified,
                    format!("spec.filter.verification.keyRef: {e}"),
                )
            })?;
            crate::oci::sign::verify(&pinned, &key, &opts)
                .await
                .map_err(|e| {
                    Failure::new(
                        Reason::SignatureNotVerified,
                        format!("spec.filter.verification: {e}"),
                    )
                })?;
            if let Ok(mut c) = ctx.checked.lock() {
                c.insert(verified);
            }
        }
    }
    let params = render::parameters_text(d);
    let check = (digest.clone(), d.spec.filter.root_id.clone(), params);
    if !ctx
        .checked
        .lock()
        .map(|c| c.contains(&check))
        .unwrap_or(false)
    {
        let module = module_path(ctx, &digest);
        let src = source.clone();
        tokio::task::spawn_blocking(move || render::check_parameters(&src, &module))
            .await
            .map_err(|e| Failure::new(Reason::ParametersRejected, e.to_string()))?
            .map_err(|e| Failure::new(Reason::ParametersRejected, e.to_string()))?;
        if let Ok(mut c) = ctx.checked.lock() {
            c.insert(check);
        }
    }

    let mut objects = Vec::new();
    // A switch of delivery mode leaves the other kind's object behind: remove it.
    let (this_kind, other) = if d.spec.delivery == Delivery::EnvoyFilter {
        (
            resource("networking.istio.io/v1alpha3", "EnvoyFilter"),
            resource("extensions.istio.io/v1alpha1", "WasmPlugin"),
        )
    } else {
        (
            resource("extensions.istio.io/v1alpha1", "WasmPlugin"),
            resource("networking.istio.io/v1alpha3", "EnvoyFilter"),
        )
    };
    let wns = render::workload_namespace(d).to_string();
    delete_owned(ctx, &other, &wns, &d.metadata.name, obj).await?;

    if d.spec.delivery == Delivery::WasmPlugin {
        // Each sidecar's istio-agent pulls the image itself: nothing to wait for.
        let filter = plan::filter_object(&inputs, &image, &pinned, None, obj)?;
        ctx.apply(&filter).await?;
        objects.push(format!("WasmPlugin {}", plan::key(&filter)));
        let list = image_list(ctx, obj, None)?;
        if ctx.apply_needed(&list).await? {
            ctx.apply(&list).await?;
        }
        return Ok(Applied {
            digest,
            image: pinned,
            objects,
            rollout: None,
        });
    }

    if let Some(w) = &d.spec.workload.name {
        let kind = d.spec.workload.kind.as_str();
        set_annotations(ctx, kind, &wns, w, true).await?;
        objects.push(format!("{kind} {wns}/{w} (annotations)"));
    }
    // The rollout: the EnvoyFilter names a module file, so it moves to a new module only when
    // every node running a matching workload holds it; until then it keeps the old one, and
    // the image list keeps both on every node.
    let bytes = std::fs::read(module_path(ctx, &digest))
        .map_err(|e| Failure::new(Reason::RegistryError, e.to_string()))?;
    let sha = crate::oci::layout::sha256_hex(&bytes);
    let live = ctx
        .api(&this_kind, Some(&wns))
        .get_opt(&d.metadata.name)
        .await
        .map_err(|e| Failure::new(Reason::ApplyFailed, e.to_string()))?
        .map(|o| serde_json::to_value(&o).unwrap_or(Value::Null));
    let serving = live.as_ref().and_then(plan::serving);
    let nodes = matching_nodes(ctx, &wns, d).await?;
    let reports = node_reports(ctx).await?;
    let pending = plan::pending_nodes(&sha, &nodes, &reports);
    if !pending.is_empty() {
        let all: Vec<&str> = nodes.iter().map(String::as_str).collect();
        log::log(
            "info",
            "rollout-waiting",
            &[
                ("filterdeployment", &plan::key(obj)),
                ("module", &sha),
                ("nodes", &all.join(",")),
                ("pending", &pending.join(",")),
            ],
        );
    }
    let switch = pending.is_empty() || serving.as_ref().is_some_and(|(_, s)| *s == sha);
    let keep = serving
        .as_ref()
        .filter(|(_, s)| !switch && *s != sha)
        .map(|(p, _)| p.clone());
    let list = image_list(ctx, obj, Some((&inputs, &pinned, keep.as_deref())))?;
    ctx.apply(&list).await.map_err(agent_namespace)?;
    objects.push(format!("ConfigMap {}", plan::key(&list)));
    if switch {
        let filter = plan::filter_object(&inputs, &image, &pinned, Some(&sha), obj)?;
        ctx.apply(&filter).await?;
        objects.insert(0, format!("EnvoyFilter {}", plan::key(&filter)));
        return Ok(Applied {
            digest,
            image: pinned,
            objects,
            rollout: None,
        });
    }
    let previous = plan::last_applied(obj.get("status")).and_then(|a| a.rollout);
    let since = previous
        .filter(|r| r.digest == digest)
        .map(|r| r.since)
        .unwrap_or_else(now);
    let waited = since
        .parse::<k8s_openapi::jiff::Timestamp>()
        .map(|t| {
            k8s_openapi::jiff::Timestamp::now()
                .duration_since(t)
                .as_secs_f64()
        })
        .unwrap_or(0.0);
    if waited > ctx.cfg.rollout_timeout.as_secs_f64() {
        let serving_text = keep.clone().unwrap_or_else(|| "nothing".into());
        return Err(Failure::new(
            Reason::RolloutStalled,
            format!(
                "nodes {} do not hold {pinned} (module sha256 {sha}) after {:?}; {serving_text} keeps serving",
                pending.join(", "),
                ctx.cfg.rollout_timeout
            ),
        ));
    }
    let rollout = plan::Rollout {
        image: pinned.clone(),
        digest: digest.clone(),
        pending,
        since,
    };
    let (image, digest) = match &serving {
        Some((p, _)) => (p.clone(), p.rsplit('@').next().unwrap_or("").to_string()),
        None => (String::new(), String::new()),
    };
    if serving.is_some() {
        objects.insert(
            0,
            format!("EnvoyFilter {wns}/{} (unchanged)", d.metadata.name),
        );
    }
    Ok(Applied {
        digest,
        image,
        objects,
        rollout: Some(rollout),
    })
}

/// The nodes that run a Pod the FilterDeployment selects (its workload's labels, in the
/// workload's namespace): the nodes whose agents a rollout waits for.
async fn matching_nodes(
    ctx: &Ctx,
    namespace: &str,
    d: &render::spec::FilterDeployment,
) -> std::result::Result<std::collections::BTreeSet<String>, Failure> {
    use k8s_openapi::api::core::v1::Pod;
    let selector: Vec<String> = d
        .spec
        .workload
        .labels
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), namespace);
    let list = pods
        .list(&kube::api::ListParams::default().labels(&selector.join(",")))
        .await
        .map_err(|e| {
            Failure::new(
                Reason::ApplyFailed,
                format!("cannot list the workload's Pods in {namespace}: {e}"),
            )
        })?;
    Ok(list
        .items
        .into_iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter(|p| {
            !matches!(
                p.status.as_ref().and_then(|s| s.phase.as_deref()),
                Some("Succeeded" | "Failed")
            )
        })
        .filter_map(|p| p.spec.and_then(|s| s.node_name))
        .collect())
}

/// Every node agent's report: node -> the module shas it holds.
async fn node_reports(
    ctx: &Ctx,
) -> std::result::Result<BTreeMap<String, std::collections::BTreeSet<String>>, Failure> {
    use crate::agent::node;
    use k8s_openapi::api::core::v1::ConfigMap;
    let api: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), render::AGENT_NAMESPACE);
    let list = api
        .list(&kube::api::ListParams::default().labels(node::REPORT_LABEL))
        .await
        .map_err(|e| {
            Failure::new(
                Reason::ApplyFailed,
                format!("cannot read the node reports: {e}"),
            )
        })?;
    Ok(list
        .items
        .into_iter()
        .filter_map(|cm| {
            let data = cm.data?;
            let name = data.get(node::NODE_KEY)?.clone();
            let modules = node::modules_of(
                data.get(node::MODULES_KEY)
                    .map(String::as_str)
                    .unwrap_or(""),
            );
            Some((name, modules))
        })
        .collect())
}

fn agent_namespace(f: Failure) -> Failure {
    if f.message.contains("not found") && f.message.contains(render::AGENT_NAMESPACE) {
        Failure::new(
            Reason::AgentNamespaceMissing,
            format!(
                "namespace {} does not exist: apply the agent's manifests first (kubectl apply -k manifests/): {}",
                render::AGENT_NAMESPACE,
                f.message
            ),
        )
    } else {
        f
    }
}

impl Ctx {
    /// Whether the live image list differs from `list` (true also when it cannot be read).
    async fn apply_needed(&self, list: &Value) -> std::result::Result<bool, Failure> {
        let api: Api<DynamicObject> =
            self.api(&resource("v1", "ConfigMap"), Some(render::AGENT_NAMESPACE));
        match api.get_opt(render::IMAGES_CONFIGMAP).await {
            Ok(Some(live)) => Ok(!contains(
                &serde_json::to_value(&live).unwrap_or(Value::Null),
                &with_digest(list),
            )),
            _ => Ok(false),
        }
    }
}

fn module_path(ctx: &Ctx, digest: &str) -> PathBuf {
    ctx.modules
        .path()
        .join(format!("{}.wasm", digest.replace(':', "-")))
}

/// The image list over every FilterDeployment the controller knows, with `this` (being
/// reconciled: its target image and the image still serving during a rollout) in place of its
/// status, or without the one being deleted (`this == None`).
fn image_list(
    ctx: &Ctx,
    obj: &Value,
    this: Option<(&render::Inputs, &str, Option<&str>)>,
) -> std::result::Result<Value, Failure> {
    let me = plan::key(obj);
    let mut all = Vec::new();
    if let Some((inputs, target, serving)) = this {
        all.push(plan::ListEntry {
            inputs: inputs.clone(),
            target: target.to_string(),
            serving: serving.map(str::to_string),
        });
    }
    for other in ctx.filter_deployments() {
        let v = serde_json::to_value(other.as_ref()).unwrap_or(Value::Null);
        if plan::key(&v) == me || other.meta().deletion_timestamp.is_some() {
            continue;
        }
        let (Ok(inputs), Some(applied)) = (plan::parse(&v), plan::last_applied(v.get("status")))
        else {
            continue;
        };
        // Mid-rollout: the target and the version still served.
        let (target, serving) = match applied.rollout {
            Some(r) => (r.image, Some(applied.image).filter(|i| !i.is_empty())),
            None => (applied.image, None),
        };
        all.push(plan::ListEntry {
            inputs,
            target,
            serving,
        });
    }
    all.sort_by(|a, b| {
        a.inputs.deployments[0]
            .origin
            .cmp(&b.inputs.deployments[0].origin)
    });
    plan::image_list(&all)
}

/// Set (or, with `add == false`, take back) the two sidecar volume annotations of a workload.
async fn set_annotations(
    ctx: &Ctx,
    kind: &str,
    namespace: &str,
    name: &str,
    add: bool,
) -> std::result::Result<(), Failure> {
    let ar = resource("apps/v1", kind);
    let api = ctx.api(&ar, Some(namespace));
    let live = api.get_opt(name).await.map_err(|e| {
        Failure::new(
            Reason::ApplyFailed,
            format!("cannot read {kind} {namespace}/{name}: {e}"),
        )
    })?;
    let Some(live) = live else {
        if add {
            return Err(Failure::new(
                Reason::WorkloadNotFound,
                format!("spec.workload.name: {kind} {namespace}/{name} does not exist"),
            ));
        }
        return Ok(());
    };
    let live = serde_json::to_value(&live).unwrap_or(Value::Null);
    let current = live
        .pointer("/spec/template/metadata/annotations")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    let want = plan::annotations(&current, add)?;
    let unchanged = [render::USER_VOLUME, render::USER_VOLUME_MOUNT]
        .iter()
        .all(|k| current.get(*k) == want.get(*k));
    if unchanged {
        return Ok(());
    }
    let apply = plan::workload_apply(kind, namespace, name, want);
    api.patch(
        name,
        &PatchParams::apply(plan::FIELD_MANAGER).force(),
        &Patch::Apply(&apply),
    )
    .await
    .map_err(|e| {
        Failure::new(
            Reason::ApplyFailed,
            format!("cannot set the annotations of {kind} {namespace}/{name}: {e}"),
        )
    })?;
    ctx.count_write();
    Ok(())
}

/// Delete the `ar` object `namespace/name` if this FilterDeployment made it: owned by it, or
/// (in another namespace, where owner references cannot point) labelled with its name by us.
async fn delete_owned(
    ctx: &Ctx,
    ar: &ApiResource,
    namespace: &str,
    name: &str,
    owner: &Value,
) -> std::result::Result<(), Failure> {
    let api = ctx.api(ar, Some(namespace));
    let Ok(Some(o)) = api.get_opt(name).await else {
        return Ok(());
    };
    let uid = owner.pointer("/metadata/uid").and_then(Value::as_str);
    let labels = o.labels();
    let ours = if o.owner_references().is_empty() {
        labels.get(render::FROM_LABEL).map(String::as_str) == Some(name)
            && labels.get(render::MANAGED_BY).map(String::as_str) == Some("wasmctl")
    } else {
        o.owner_references()
            .iter()
            .any(|r| Some(r.uid.as_str()) == uid)
    };
    if ours {
        api.delete(name, &DeleteParams::default())
            .await
            .map_err(|e| {
                Failure::new(
                    Reason::ApplyFailed,
                    format!("cannot delete {} {namespace}/{name}: {e}", ar.kind),
                )
            })?;
        ctx.count_write();
    }
    Ok(())
}

/// A FilterDeployment is going: its image-list entry and (unless another envoyFilter
/// FilterDeployment still needs them) the workload's annotations are taken back; its Istio
/// object is deleted (the garbage collector would too).
async fn cleanup(ctx: &Ctx, obj: &Value) -> std::result::Result<(), Failure> {
    let list = image_list(ctx, obj, None)?;
    if ctx.apply_needed(&list).await? {
        ctx.apply(&list).await?;
    }
    let Ok(inputs) = plan::parse(obj) else {
        return Ok(());
    };
    let d = &inputs.deployments[0].deployment;
    let name = d.metadata.name.clone();
    let wns = render::workload_namespace(d).to_string();
    for ar in [
        resource("networking.istio.io/v1alpha3", "EnvoyFilter"),
        resource("extensions.istio.io/v1alpha1", "WasmPlugin"),
    ] {
        delete_owned(ctx, &ar, &wns, &name, obj).await?;
    }
    if d.spec.delivery != Delivery::EnvoyFilter {
        return Ok(());
    }
    let Some(w) = &d.spec.workload.name else {
        return Ok(());
    };
    let kind = d.spec.workload.kind.as_str();
    let me = plan::key(obj);
    let still_needed = ctx.filter_deployments().iter().any(|o| {
        let v = serde_json::to_value(o.as_ref()).unwrap_or(Value::Null);
        plan::key(&v) != me
            && o.meta().deletion_timestamp.is_none()
            && plan::parse(&v).is_ok_and(|i| {
                let od = &i.deployments[0].deployment;
                od.spec.delivery == Delivery::EnvoyFilter
                    && od.spec.workload.kind.as_str() == kind
                    && od.spec.workload.name.as_deref() == Some(w.as_str())
                    && render::workload_namespace(od) == wns
            })
    });
    if !still_needed {
        set_annotations(ctx, kind, &wns, w, false).await?;
    }
    Ok(())
}
