//! What the controller reads besides the FilterDeployments it watches: pull secrets,
//! verification keys and live objects from the API server; the nodes running a workload and the
//! agents' node reports from the caches its watches fill. Each read's failure is a [`Failure`]
//! whose reason and message say what to fix; what the result means is decided in
//! [`super::plan`] and [`super::rollout`].

use super::Ctx;
use super::plan::{self, Failure, Reason};
use crate::render::{self, node_report, spec::KeyKind, spec::KeyRef};
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret};
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, ListParams};
use kube::runtime::reflector::ObjectRef;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

/// The API resource of `apiVersion` and `kind`.
pub fn resource(api_version: &str, kind: &str) -> ApiResource {
    let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
    ApiResource::from_gvk(&GroupVersionKind::gvk(group, version, kind))
}

/// The Istio object kinds a FilterDeployment produces.
pub fn envoy_filters() -> ApiResource {
    resource("networking.istio.io/v1alpha3", "EnvoyFilter")
}

/// See [`envoy_filters`].
pub fn wasm_plugins() -> ApiResource {
    resource("extensions.istio.io/v1alpha1", "WasmPlugin")
}

/// See [`envoy_filters`].
pub fn traffic_extensions() -> ApiResource {
    resource("extensions.istio.io/v1alpha1", "TrafficExtension")
}

/// The kind a delivery mode produces, and the kinds the others do (left behind by a switch).
pub fn kinds(delivery: crate::render::spec::Delivery) -> (ApiResource, Vec<ApiResource>) {
    use crate::render::spec::Delivery;
    let all = [envoy_filters(), wasm_plugins(), traffic_extensions()];
    let this = match delivery {
        Delivery::EnvoyFilter => 0,
        Delivery::WasmPlugin => 1,
        Delivery::TrafficExtension => 2,
    };
    let others = all
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != this)
        .map(|(_, a)| a.clone())
        .collect();
    (all[this].clone(), others)
}

impl Ctx {
    /// The API of `ar` objects in `namespace` (all namespaces: `None`).
    pub(super) fn api(&self, ar: &ApiResource, namespace: Option<&str>) -> Api<DynamicObject> {
        match namespace {
            Some(ns) => Api::namespaced_with(self.client.clone(), ns, ar),
            None => Api::all_with(self.client.clone(), ar),
        }
    }

    /// The live `ar` object `namespace/name` as JSON, if it exists.
    pub(super) async fn live(
        &self,
        ar: &ApiResource,
        namespace: &str,
        name: &str,
    ) -> Result<Option<Value>, Failure> {
        let o = self
            .api(ar, Some(namespace))
            .get_opt(name)
            .await
            .map_err(|e| {
                Failure::new(
                    Reason::ApplyFailed,
                    format!("cannot read {} {namespace}/{name}: {e}", ar.kind),
                )
            })?;
        Ok(o.map(|o| serde_json::to_value(&o).unwrap_or(Value::Null)))
    }

    /// The credentials of `spec.filter.pullSecret` as a Docker config file for the registry
    /// client.
    pub(super) async fn pull_secret(
        &self,
        namespace: &str,
        secret: &str,
    ) -> Result<PathBuf, Failure> {
        let api: Api<Secret> = Api::namespaced(self.client.clone(), namespace);
        let s = api.get_opt(secret).await.map_err(|e| {
            Failure::new(
                Reason::PullSecretNotFound,
                format!("spec.filter.pullSecret: cannot read Secret {namespace}/{secret}: {e}"),
            )
        })?;
        let data = plan::docker_config(s.as_ref(), namespace, secret)?;
        let dir = self
            .modules
            .path()
            .join("secrets")
            .join(namespace)
            .join(secret);
        std::fs::create_dir_all(&dir)
            .map_err(|e| Failure::new(Reason::PullSecretNotFound, e.to_string()))?;
        let path = dir.join("config.json");
        crate::fsutil::write_atomic(&path, data, 0o600)
            .map_err(|e| Failure::new(Reason::PullSecretNotFound, e.to_string()))?;
        Ok(path)
    }

    /// The cosign public key `spec.filter.verification.keyRef` names, as PEM text.
    pub(super) async fn verification_key(
        &self,
        namespace: &str,
        r: &KeyRef,
    ) -> Result<String, Failure> {
        let (name, key) = (r.name.as_str(), r.key.as_str());
        let text = match r.kind {
            KeyKind::ConfigMap => {
                let api: Api<ConfigMap> = Api::namespaced(self.client.clone(), namespace);
                let cm = api.get_opt(name).await.map_err(|e| {
                    plan::key_failure(format!("cannot read ConfigMap {namespace}/{name}: {e}"))
                })?;
                cm.map(|cm| cm.data.and_then(|d| d.get(key).cloned()))
            }
            KeyKind::Secret => {
                let api: Api<Secret> = Api::namespaced(self.client.clone(), namespace);
                let s = api.get_opt(name).await.map_err(|e| {
                    plan::key_failure(format!("cannot read Secret {namespace}/{name}: {e}"))
                })?;
                s.map(|s| {
                    s.data.and_then(|d| {
                        d.get(key)
                            .map(|b| String::from_utf8_lossy(&b.0).into_owned())
                    })
                })
            }
        };
        plan::key_text(text, r, namespace)
    }

    /// The nodes that run a Pod the FilterDeployment selects (its workload's labels, in the
    /// workload's namespace): the nodes whose agents a rollout waits for. From the Pod cache
    /// of a controller that watches that namespace; listed from the API otherwise.
    pub(super) async fn matching_nodes(
        &self,
        namespace: &str,
        d: &render::spec::FilterDeployment,
    ) -> Result<BTreeSet<String>, Failure> {
        let labels = &d.spec.workload.labels;
        let cache = self
            .caches
            .iter()
            .find(|c| c.namespace.as_deref().is_none_or(|ns| ns == namespace));
        if let Some(c) = cache {
            ready(&c.filled.0, "the Pod cache").await?;
            let pods = c.pods.state();
            let selected = pods.iter().map(AsRef::as_ref).filter(|p| {
                p.metadata.namespace.as_deref() == Some(namespace)
                    && labels.iter().all(|(k, v)| {
                        p.metadata
                            .labels
                            .as_ref()
                            .and_then(|l| l.get(k))
                            .is_some_and(|have| have == v)
                    })
            });
            return Ok(super::rollout::nodes_running(selected));
        }
        let selector: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), namespace);
        let list = pods
            .list(&ListParams::default().labels(&selector.join(",")))
            .await
            .map_err(|e| {
                Failure::new(
                    Reason::ApplyFailed,
                    format!("cannot list the workload's Pods in {namespace}: {e}"),
                )
            })?;
        Ok(super::rollout::nodes_running(&list.items))
    }

    /// The reports of `nodes` (node -> the module shas it holds), from the node-report cache.
    pub(super) async fn node_reports(
        &self,
        nodes: &BTreeSet<String>,
    ) -> Result<BTreeMap<String, BTreeSet<String>>, Failure> {
        let Some(c) = self.caches.first() else {
            return Ok(BTreeMap::new());
        };
        ready(&c.filled.1, "the node-report cache").await?;
        Ok(nodes
            .iter()
            .filter_map(|node| {
                let key = ObjectRef::<ConfigMap>::new(&node_report::report_name(node))
                    .within(render::AGENT_NAMESPACE);
                let cm = c.reports.get(&key)?;
                let (n, modules) = node_report::read(cm.data.as_ref()?)?;
                (&n == node).then_some((n, modules))
            })
            .collect())
    }
}

/// How long a reconcile waits for a cache's first list (the watch's start) before it fails
/// (and retries with backoff).
const CACHE_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

/// Wait until a cache holds its watch's first list: an empty cache would say that no node runs
/// the workload, and a rollout would switch without waiting for any agent.
async fn ready(filled: &super::Filled, what: &str) -> Result<(), Failure> {
    let mut rx = filled.clone();
    match tokio::time::timeout(CACHE_WAIT, rx.wait_for(|f| *f)).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(_)) => Err(Failure::new(
            Reason::ApplyFailed,
            format!("{what}: its watch stopped before it was filled"),
        )),
        Err(_) => Err(Failure::new(
            Reason::ApplyFailed,
            format!(
                "{what} is not filled within {CACHE_WAIT:?} (can the controller list and watch it?)"
            ),
        )),
    }
}
