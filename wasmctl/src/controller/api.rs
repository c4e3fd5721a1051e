//! What the controller reads from the API server besides the FilterDeployments it watches: pull
//! secrets, verification keys, live objects, the nodes running a workload, the agents' node
//! reports. Each read's failure is a [`Failure`] whose reason and message say what to fix; what
//! the result means is decided in [`super::plan`] and [`super::rollout`].

use super::Ctx;
use super::plan::{self, Failure, Reason};
use crate::render::{self, node_report, spec::KeyKind, spec::KeyRef};
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret};
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, ListParams};
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
    /// workload's namespace): the nodes whose agents a rollout waits for.
    pub(super) async fn matching_nodes(
        &self,
        namespace: &str,
        d: &render::spec::FilterDeployment,
    ) -> Result<BTreeSet<String>, Failure> {
        let selector: Vec<String> = d
            .spec
            .workload
            .labels
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
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

    /// Every node agent's report: node -> the module shas it holds.
    pub(super) async fn node_reports(&self) -> Result<BTreeMap<String, BTreeSet<String>>, Failure> {
        let api: Api<ConfigMap> = Api::namespaced(self.client.clone(), render::AGENT_NAMESPACE);
        let list = api
            .list(&ListParams::default().labels(node_report::REPORT_LABEL))
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
            .filter_map(|cm| node_report::read(&cm.data?))
            .collect())
    }
}
