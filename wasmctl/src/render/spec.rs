//! The `FilterDeployment` resource as `render` reads it: serde types that refuse unknown fields,
//! mirroring the CRD in `manifests/crd/filterdeployment.yaml`.

use serde::Deserialize;
use serde_json::Value;
use std::collections::BTreeMap;

/// API group of the `FilterDeployment` CRD.
pub const GROUP: &str = "filters.envoy-wasm-toolkit.io";
/// Its only version.
pub const VERSION: &str = "v1alpha1";
/// `apiVersion` of a `FilterDeployment`.
pub const API_VERSION: &str = "filters.envoy-wasm-toolkit.io/v1alpha1";
/// Its kind.
pub const KIND: &str = "FilterDeployment";

/// A `FilterDeployment`: which workload gets which filter, how it is configured and delivered.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct FilterDeployment {
    /// Must be [`API_VERSION`].
    pub api_version: String,
    /// Must be [`KIND`].
    pub kind: String,
    /// Name and namespace (other metadata, as `kubectl get -o yaml` prints it, is ignored).
    pub metadata: Metadata,
    /// What to deploy where.
    pub spec: Spec,
    /// What the controller wrote (`kubectl get -o yaml` prints it); never read.
    #[serde(default, skip_serializing)]
    pub status: Option<Value>,
}

/// The part of `metadata` that matters here.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Metadata {
    /// Name of the resource.
    pub name: String,
    /// Namespace; `default` when absent.
    #[serde(default)]
    pub namespace: Option<String>,
}

/// `spec` of a `FilterDeployment`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Spec {
    /// The workload whose sidecars (or gateway) get the filter (absent with `targetRefs`).
    #[serde(default)]
    pub workload: Workload,
    /// Attach by reference instead of by pod labels: Gateway API `Gateway`s and
    /// `GatewayClass`es, or `Service`s (a waypoint's); the image-based deliveries only.
    #[serde(default)]
    pub target_refs: Vec<TargetRef>,
    /// The filter: image, root id, parameters.
    pub filter: Filter,
    /// Which traffic: inbound, outbound or gateway, and optionally one listener port.
    #[serde(default)]
    pub placement: Placement,
    /// What Envoy does when the filter's VM fails.
    #[serde(default)]
    pub failure_policy: FailurePolicy,
    /// How the module reaches Envoy.
    #[serde(default)]
    pub delivery: Delivery,
    /// Options that only the `wasmPlugin` delivery uses.
    #[serde(default)]
    pub wasm_plugin: Option<WasmPluginOptions>,
    /// Options that only the `trafficExtension` delivery uses (the same as `wasmPlugin`'s).
    #[serde(default)]
    pub traffic_extension: Option<WasmPluginOptions>,
}

/// The kinds a `targetRefs` entry may name, with their API group, as Istio takes them.
pub const TARGET_KINDS: [(&str, &str); 3] = [
    ("gateway.networking.k8s.io", "Gateway"),
    ("gateway.networking.k8s.io", "GatewayClass"),
    ("", "Service"),
];

impl Spec {
    /// The references the filter attaches by: `spec.targetRefs`, else the image-based
    /// options' `targetRefs` (the older place), with the field's name.
    pub fn target_refs(&self) -> (&'static str, &[TargetRef]) {
        if !self.target_refs.is_empty() {
            return ("spec.targetRefs", &self.target_refs);
        }
        for (field, o) in [
            ("spec.wasmPlugin.targetRefs", &self.wasm_plugin),
            ("spec.trafficExtension.targetRefs", &self.traffic_extension),
        ] {
            if let Some(o) = o
                && !o.target_refs.is_empty()
            {
                return (field, &o.target_refs);
            }
        }
        ("spec.targetRefs", &[])
    }

    /// The options of an image-based delivery (`wasmPlugin` or `trafficExtension`): its own
    /// block, else the other one's (`render --mode` may pick the other mode; the fields are the
    /// same).
    pub fn image_options(&self, delivery: Delivery) -> WasmPluginOptions {
        let (own, other) = match delivery {
            Delivery::TrafficExtension => (&self.traffic_extension, &self.wasm_plugin),
            _ => (&self.wasm_plugin, &self.traffic_extension),
        };
        own.clone().or_else(|| other.clone()).unwrap_or_default()
    }
}

/// Kind of the workload.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
pub enum WorkloadKind {
    /// apps/v1 Deployment.
    #[default]
    Deployment,
    /// apps/v1 StatefulSet.
    StatefulSet,
    /// apps/v1 DaemonSet.
    DaemonSet,
}

impl WorkloadKind {
    /// The kind's name.
    pub fn as_str(self) -> &'static str {
        match self {
            WorkloadKind::Deployment => "Deployment",
            WorkloadKind::StatefulSet => "StatefulSet",
            WorkloadKind::DaemonSet => "DaemonSet",
        }
    }
}

/// The workload selector.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Workload {
    /// Deployment, StatefulSet or DaemonSet (default Deployment).
    #[serde(default = "default_kind")]
    pub kind: WorkloadKind,
    /// Name of the workload object (the volume patch targets it); when absent, the patch is
    /// not rendered and a workload manifest given to `render` is matched by its pod labels.
    #[serde(default)]
    pub name: Option<String>,
    /// Pod labels that select the proxies (EnvoyFilter `workloadSelector`, WasmPlugin `selector`).
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Namespace of the workload; default: the FilterDeployment's.
    #[serde(default)]
    pub namespace: Option<String>,
}

fn default_kind() -> WorkloadKind {
    WorkloadKind::Deployment
}

/// The filter and its configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Filter {
    /// OCI image: `REGISTRY/REPOSITORY:TAG` or `...@sha256:DIGEST` (an `oci://` prefix is accepted).
    pub image: String,
    /// Root id of the plugin (`config.root_id`; WasmPlugin `pluginName`).
    pub root_id: String,
    /// Stable name of the filter (Envoy's `config.name`, stats prefix); default `NAMESPACE.NAME`.
    #[serde(default)]
    pub id: Option<String>,
    /// The plugin configuration: a JSON object, or a string holding one.
    #[serde(default)]
    pub parameters: Option<Value>,
    /// Name of a `kubernetes.io/dockerconfigjson` Secret with the registry's credentials.
    #[serde(default)]
    pub pull_secret: Option<String>,
    /// VM id; default: the filter's id.
    #[serde(default)]
    pub vm_id: Option<String>,
    /// Apply only a digest that carries a cosign signature verifying with this key.
    #[serde(default)]
    pub verification: Option<Verification>,
    /// An HTTP filter (default) or a network (TCP) filter.
    #[serde(default, rename = "type")]
    pub kind: FilterType,
}

/// What kind of Envoy filter the module is.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[allow(clippy::upper_case_acronyms)]
pub enum FilterType {
    /// `envoy.filters.http.wasm`, in the HTTP connection manager's filter chain.
    #[default]
    HTTP,
    /// `envoy.filters.network.wasm`, before `tcp_proxy` in a TCP filter chain.
    NETWORK,
}

/// Signature verification of the image (cosign's format, key pairs only).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Verification {
    /// The cosign public key: a ConfigMap or Secret in the FilterDeployment's namespace.
    pub key_ref: KeyRef,
}

/// A key in a ConfigMap or Secret.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct KeyRef {
    /// `ConfigMap` or `Secret`.
    pub kind: KeyKind,
    /// The object's name.
    pub name: String,
    /// The data key holding the PEM public key; default `cosign.pub`.
    #[serde(default = "default_key_name")]
    pub key: String,
}

fn default_key_name() -> String {
    "cosign.pub".to_string()
}

/// Where a key is kept.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
pub enum KeyKind {
    /// A ConfigMap (a public key is no secret).
    ConfigMap,
    /// A Secret.
    Secret,
}

/// Which traffic the filter sees.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Placement {
    /// inbound (default), outbound or gateway.
    #[serde(default)]
    pub direction: Direction,
    /// Only the listener on this port.
    #[serde(default)]
    pub port: Option<u16>,
}

/// Traffic direction.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub enum Direction {
    /// Requests to the workload (EnvoyFilter `SIDECAR_INBOUND`, WasmPlugin mode `SERVER`).
    #[default]
    Inbound,
    /// Requests from the workload (`SIDECAR_OUTBOUND`, mode `CLIENT`).
    Outbound,
    /// A gateway's listeners (`GATEWAY`).
    Gateway,
}

/// What happens when the VM fails.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub enum FailurePolicy {
    /// Requests fail with 503 (Envoy's default).
    #[default]
    Closed,
    /// Requests bypass the filter.
    Open,
    /// A new VM is created for the next request after a runtime error (falls back to closed
    /// for other failures).
    Reload,
}

/// How the module reaches Envoy.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub enum Delivery {
    /// The node agent pulls it to the host; an EnvoyFilter loads it as a local file.
    #[default]
    EnvoyFilter,
    /// Istio's own fetcher pulls it (`WasmPlugin`).
    WasmPlugin,
    /// Istio's own fetcher pulls it (`TrafficExtension`, the successor of `WasmPlugin` since
    /// Istio 1.30).
    TrafficExtension,
}

/// WasmPlugin-only options.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct WasmPluginOptions {
    /// Filter chain phase: AUTHN, AUTHZ, STATS (default: Istio's, before the router).
    #[serde(default)]
    pub phase: Option<Phase>,
    /// Order inside the phase (higher first).
    #[serde(default)]
    pub priority: Option<i32>,
    /// Attach by reference (Gateway API gateways, services) instead of by labels.
    #[serde(default)]
    pub target_refs: Vec<TargetRef>,
}

/// WasmPlugin phase.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[allow(clippy::upper_case_acronyms)]
pub enum Phase {
    /// Before Istio's authentication filters.
    AUTHN,
    /// Before Istio's authorization filters.
    AUTHZ,
    /// Before Istio's stats filters.
    STATS,
}

/// A WasmPlugin target reference.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TargetRef {
    /// API group ("" for core, `gateway.networking.k8s.io` for a Gateway).
    #[serde(default)]
    pub group: String,
    /// Kind (Gateway, Service, ...).
    pub kind: String,
    /// Name.
    pub name: String,
}
