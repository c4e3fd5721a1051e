//! `wasmctl render`: `FilterDeployment` resources in, Kubernetes objects out.
//!
//! Two delivery modes:
//!
//! - **envoyFilter** (the node agent brings the module to the host): an Istio `EnvoyFilter` that
//!   delivers `envoy.filters.http.wasm` through ECDS (an `EXTENSION_CONFIG` patch with the Wasm
//!   config, and an `HTTP_FILTER` before the router that names it with `config_discovery`, so an
//!   update never touches the listener), loading the agent's content-addressed
//!   `/var/local/lib/wasm-filters/SHA256.wasm` (or, unresolved, the per-deployment link
//!   `NAMESPACE.NAME.wasm`); a strategic-merge patch of the workload
//!   (or the patched workload, when its manifest is given) adding the read-only `hostPath`
//!   volume through `sidecar.istio.io/userVolume` and `userVolumeMount`; and the agent's image
//!   list, ConfigMap `wasm-agent-images` in `wasm-system`, merging every FilterDeployment.
//! - **wasmPlugin** (Istio's agent pulls the image): an Istio `WasmPlugin` with a digest-pinned
//!   `oci://` URL.
//!
//! Output is deterministic: objects in a fixed order, keys sorted, so a re-render of unchanged
//! input is byte-for-byte the same.
//!
//! ```
//! use wasmctl::render::{self, Options};
//!
//! let yaml = r#"
//! apiVersion: filters.envoy-wasm-toolkit.io/v1alpha1
//! kind: FilterDeployment
//! metadata: {name: details-hello, namespace: default}
//! spec:
//!   workload: {kind: Deployment, name: details-v1, labels: {app: details, version: v1}}
//!   filter:
//!     image: registry.example.com/filters/header-filter:v1
//!     rootId: my_root_id
//!     parameters: '{"name":"hello","value":"hello details"}'
//! "#;
//! let inputs = render::parse_str(yaml, "details.yaml")?;
//! let objects = render::render(&inputs, &Options::default(), &render::Resolved::default())?;
//! let out = render::to_yaml(&objects)?;
//! assert!(out.contains("kind: EnvoyFilter"));
//! assert!(out.contains("operation: INSERT_BEFORE"));
//! # Ok::<(), wasmctl::Error>(())
//! ```

pub mod node_report;
pub mod schema;
pub mod spec;

use crate::error::{Error, Result};
use crate::oci::registry;
use serde_json::{Map, Value, json};
use spec::{Delivery, Direction, FailurePolicy, FilterDeployment};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Directory on the node where the agent writes modules (hostPath, read-only in sidecars).
pub const NODE_DIR: &str = "/var/local/lib/wasm-filters";
/// Name of the sidecar volume holding [`NODE_DIR`].
pub const VOLUME_NAME: &str = "wasm-filters";
/// Namespace of the agent.
pub const AGENT_NAMESPACE: &str = "wasm-system";
/// ConfigMap holding the agent's image list.
pub const IMAGES_CONFIGMAP: &str = "wasm-agent-images";
/// Key of the image list in [`IMAGES_CONFIGMAP`].
pub const IMAGES_KEY: &str = "images.yaml";
/// Annotation naming extra sidecar volumes (object form keyed by volume name).
pub const USER_VOLUME: &str = "sidecar.istio.io/userVolume";
/// Annotation naming their mounts (object form keyed by volume name).
pub const USER_VOLUME_MOUNT: &str = "sidecar.istio.io/userVolumeMount";
/// Label set on every rendered object.
pub const MANAGED_BY: &str = "app.kubernetes.io/managed-by";
/// Label naming the FilterDeployment an object came from.
pub const FROM_LABEL: &str = "filters.envoy-wasm-toolkit.io/filter-deployment";
/// Type URL of the Wasm HTTP filter's config.
pub const WASM_TYPE_URL: &str = "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm";
/// Type URL of Envoy's Wasm network filter config.
pub const NETWORK_WASM_TYPE_URL: &str =
    "type.googleapis.com/envoy.extensions.filters.network.wasm.v3.Wasm";
/// Type URL of the plugin configuration wrapper.
pub const STRING_VALUE_TYPE_URL: &str = "type.googleapis.com/google.protobuf.StringValue";
/// The V8 runtime (the one Istio's and Envoy's builds carry).
pub const RUNTIME_V8: &str = "envoy.wasm.runtime.v8";

/// One `FilterDeployment`, with where it came from.
#[derive(Debug, Clone)]
pub struct Source {
    /// `FILE` or `FILE (document N)`: what error messages name.
    pub origin: String,
    /// The resource.
    pub deployment: FilterDeployment,
}

/// A workload manifest given to `render` to be patched.
#[derive(Debug, Clone)]
pub struct WorkloadManifest {
    /// Where it came from.
    pub origin: String,
    /// The object as read.
    pub object: Value,
}

/// Everything read from the input files.
#[derive(Debug, Clone, Default)]
pub struct Inputs {
    /// The FilterDeployments.
    pub deployments: Vec<Source>,
    /// Deployments, StatefulSets and DaemonSets to patch.
    pub workloads: Vec<WorkloadManifest>,
}

/// How `render` behaves.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Overrides every resource's own `spec.delivery`.
    pub mode: Option<Delivery>,
}

/// What the registry said about each image (filled by [`resolve`]; empty with `--no-resolve`).
#[derive(Debug, Clone, Default)]
pub struct Resolved {
    /// Image as written -> digest-pinned reference (`REGISTRY/REPO@sha256:...`).
    pub pinned: BTreeMap<String, String>,
    /// Image as written -> hex sha256 of its module, when the module was pulled: the EnvoyFilter
    /// then names the agent's content-addressed file `NODE_DIR/<sha256>.wasm` and a VM id that
    /// changes with it, so a new module is a new config that Envoy loads as a new VM.
    pub modules: BTreeMap<String, String>,
}

/// One rendered object.
#[derive(Debug, Clone, PartialEq)]
pub struct Object {
    /// File name used by `render -o DIR`: `NAMESPACE.NAME.KIND.yaml`.
    pub file_name: String,
    /// The object.
    pub value: Value,
}

fn err(origin: &str, field: &str, reason: impl Into<String>) -> Error {
    Error::Render {
        file: origin.to_string(),
        field: field.to_string(),
        reason: reason.into(),
    }
}

/// Read every YAML document of `path`.
pub fn parse_file(path: &Path) -> Result<Inputs> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io("cannot read", path, e))?;
    parse_str(&text, &path.display().to_string())
}

/// Read every YAML document of `text`; `name` is what errors call the file.
pub fn parse_str(text: &str, name: &str) -> Result<Inputs> {
    use serde::Deserialize as _;
    let mut out = Inputs::default();
    // serde_norway's document iterator repeats a syntax error without end (its parser stays
    // failed): read up to the first document that fails, never collect the iterator itself.
    let mut docs = Vec::new();
    for doc in serde_norway::Deserializer::from_str(text) {
        let value = Value::deserialize(doc);
        let failed = value.is_err();
        docs.push(value);
        if failed {
            break;
        }
    }
    let many = docs.len() > 1;
    for (i, value) in docs.into_iter().enumerate() {
        let origin = if many {
            format!("{name} (document {})", i + 1)
        } else {
            name.to_string()
        };
        let value = value.map_err(|e| err(&origin, "(document)", e.to_string()))?;
        if value.is_null() {
            continue;
        }
        let kind = value.get("kind").and_then(Value::as_str).unwrap_or("");
        match kind {
            spec::KIND => {
                let deployment: FilterDeployment = serde_path_to_error::deserialize(&value)
                    .map_err(|e| {
                        // A top-level key that is the empty string has an empty path.
                        let path = match e.path().to_string() {
                            p if p.is_empty() => "\"\"".to_string(),
                            p => p,
                        };
                        err(&origin, &path, e.into_inner().to_string())
                    })?;
                check(&deployment, &origin)?;
                out.deployments.push(Source { origin, deployment });
            }
            "Deployment" | "StatefulSet" | "DaemonSet" => {
                // Its name and namespace become the patched object's file name under `-o DIR`.
                let name = value.pointer("/metadata/name").and_then(Value::as_str);
                if !name.is_some_and(is_dns_subdomain) {
                    return Err(err(
                        &origin,
                        "metadata.name",
                        format!("{name:?} is not a valid object name"),
                    ));
                }
                if let Some(ns) = value.pointer("/metadata/namespace")
                    && !ns.as_str().is_some_and(|ns| is_dns_label(ns, 63))
                {
                    return Err(err(
                        &origin,
                        "metadata.namespace",
                        format!("{ns} is not a DNS label"),
                    ));
                }
                out.workloads.push(WorkloadManifest {
                    origin,
                    object: value,
                })
            }
            "" => {
                return Err(err(
                    &origin,
                    "kind",
                    "missing: expected FilterDeployment, Deployment, StatefulSet or DaemonSet",
                ));
            }
            other => {
                return Err(err(
                    &origin,
                    "kind",
                    format!(
                        "{other:?} is not something render reads (FilterDeployment, or a Deployment, StatefulSet or DaemonSet to patch)"
                    ),
                ));
            }
        }
    }
    Ok(out)
}

/// Merge several [`Inputs`], refusing two FilterDeployments with the same namespace and name.
pub fn merge(all: Vec<Inputs>) -> Result<Inputs> {
    let mut out = Inputs::default();
    let mut seen: BTreeMap<String, String> = BTreeMap::new();
    for i in all {
        for d in i.deployments {
            let key = stable_name(&d.deployment);
            if let Some(first) = seen.get(&key) {
                return Err(err(
                    &d.origin,
                    "metadata.name",
                    format!("FilterDeployment {key} is also defined in {first}"),
                ));
            }
            seen.insert(key, d.origin.clone());
            out.deployments.push(d);
        }
        out.workloads.extend(i.workloads);
    }
    Ok(out)
}

fn is_dns_label(s: &str, max: usize) -> bool {
    !s.is_empty()
        && s.len() <= max
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

fn is_dns_subdomain(s: &str) -> bool {
    s.len() <= 253 && s.split('.').all(|p| is_dns_label(p, 63))
}

fn is_label_value(s: &str) -> bool {
    s.len() <= 63
        && (s.is_empty()
            || (s
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
                && s.as_bytes()[0].is_ascii_alphanumeric()
                && s.as_bytes()[s.len() - 1].is_ascii_alphanumeric()))
}

fn is_label_key(s: &str) -> bool {
    let (prefix, name) = match s.rsplit_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, s),
    };
    prefix.is_none_or(is_dns_subdomain) && !name.is_empty() && is_label_value(name)
}

/// The stable name of a FilterDeployment: `NAMESPACE.NAME` (the agent's file name, the
/// default filter id).
pub fn stable_name(d: &FilterDeployment) -> String {
    format!("{}.{}", namespace(d), d.metadata.name)
}

fn namespace(d: &FilterDeployment) -> &str {
    d.metadata.namespace.as_deref().unwrap_or("default")
}

/// The namespace of the workload (and of the objects rendered for it): `spec.workload.namespace`,
/// else the FilterDeployment's.
pub fn workload_namespace(d: &FilterDeployment) -> &str {
    d.spec
        .workload
        .namespace
        .as_deref()
        .unwrap_or_else(|| namespace(d))
}

/// The plugin configuration text: the string as written, or the object as compact JSON.
pub fn parameters_text(d: &FilterDeployment) -> String {
    match &d.spec.filter.parameters {
        None => String::new(),
        Some(Value::String(s)) => s.clone(),
        Some(v) => v.to_string(),
    }
}

/// The plugin configuration as a JSON value (WasmPlugin `pluginConfig`).
fn parameters_value(d: &FilterDeployment) -> Option<Value> {
    match &d.spec.filter.parameters {
        None => None,
        Some(Value::String(s)) => serde_json::from_str(s).ok(),
        Some(v) => Some(v.clone()),
    }
}

/// The rules that serde cannot express: names, labels, image, parameters.
fn check(d: &FilterDeployment, origin: &str) -> Result<()> {
    if d.api_version != spec::API_VERSION {
        return Err(err(
            origin,
            "apiVersion",
            format!("{:?}: expected {}", d.api_version, spec::API_VERSION),
        ));
    }
    if !is_dns_label(&d.metadata.name, 63) {
        return Err(err(
            origin,
            "metadata.name",
            format!(
                "{:?} is not a DNS label (lower-case letters, digits and '-', at most 63)",
                d.metadata.name
            ),
        ));
    }
    for (field, ns) in [
        ("metadata.namespace", d.metadata.namespace.as_deref()),
        (
            "spec.workload.namespace",
            d.spec.workload.namespace.as_deref(),
        ),
    ] {
        if let Some(ns) = ns
            && !is_dns_label(ns, 63)
        {
            return Err(err(origin, field, format!("{ns:?} is not a DNS label")));
        }
    }
    let w = &d.spec.workload;
    if let Some(name) = &w.name
        && !is_dns_subdomain(name)
    {
        return Err(err(
            origin,
            "spec.workload.name",
            format!("{name:?} is not a valid object name"),
        ));
    }
    let (field, targets) = d.spec.target_refs();
    let refs = !targets.is_empty();
    if !d.spec.target_refs.is_empty()
        && [&d.spec.wasm_plugin, &d.spec.traffic_extension]
            .iter()
            .any(|o| o.as_ref().is_some_and(|o| !o.target_refs.is_empty()))
    {
        return Err(err(
            origin,
            "spec.targetRefs",
            "given twice: here and in the delivery's options; keep spec.targetRefs",
        ));
    }
    // The older place (the delivery options' targetRefs) came with labels, which it ignores.
    if !d.spec.target_refs.is_empty() && !w.labels.is_empty() {
        return Err(err(
            origin,
            field,
            "set together with spec.workload.labels: the proxies are selected one way; keep targetRefs for gateways and waypoints, or labels for sidecars",
        ));
    }
    for (i, t) in targets.iter().enumerate() {
        if !spec::TARGET_KINDS.contains(&(t.group.as_str(), t.kind.as_str())) {
            let allowed: Vec<String> = spec::TARGET_KINDS
                .iter()
                .map(|(g, k)| {
                    if g.is_empty() {
                        k.to_string()
                    } else {
                        format!("{k} ({g})")
                    }
                })
                .collect();
            return Err(err(
                origin,
                &format!("{field}[{i}]"),
                format!(
                    "{} (group {:?}) cannot be targeted; one of {}",
                    t.kind,
                    t.group,
                    allowed.join(", ")
                ),
            ));
        }
    }
    if w.labels.is_empty() && !refs {
        return Err(err(
            origin,
            "spec.workload.labels",
            "empty: it would select every proxy in the namespace; name the workload's pod labels",
        ));
    }
    for (k, v) in &w.labels {
        if !is_label_key(k) {
            return Err(err(
                origin,
                &format!("spec.workload.labels.{k}"),
                "not a valid label key",
            ));
        }
        if !is_label_value(v) {
            return Err(err(
                origin,
                &format!("spec.workload.labels.{k}"),
                format!("{v:?} is not a valid label value"),
            ));
        }
    }
    let f = &d.spec.filter;
    registry::parse_reference(&f.image)
        .map_err(|e| err(origin, "spec.filter.image", e.to_string()))?;
    if f.root_id.trim().is_empty() {
        return Err(err(origin, "spec.filter.rootId", "empty"));
    }
    if let Some(s) = &f.pull_secret
        && !is_dns_subdomain(s)
    {
        return Err(err(
            origin,
            "spec.filter.pullSecret",
            format!("{s:?} is not a valid Secret name"),
        ));
    }
    match &f.parameters {
        None | Some(Value::Object(_)) => {}
        Some(Value::String(s)) => {
            let v: Value = serde_json::from_str(s)
                .map_err(|e| err(origin, "spec.filter.parameters", format!("not JSON: {e}")))?;
            if !v.is_object() {
                return Err(err(
                    origin,
                    "spec.filter.parameters",
                    "must be a JSON object (or a string holding one)",
                ));
            }
        }
        Some(_) => {
            return Err(err(
                origin,
                "spec.filter.parameters",
                "must be a JSON object (or a string holding one)",
            ));
        }
    }
    if d.spec.placement.port == Some(0) {
        return Err(err(origin, "spec.placement.port", "0 is not a port"));
    }
    let name = stable_name(d);
    if name.len() > 128 {
        return Err(err(
            origin,
            "metadata.name",
            format!("NAMESPACE.NAME {name:?} is longer than 128 characters (the agent's limit)"),
        ));
    }
    Ok(())
}

fn delivery(d: &FilterDeployment, opts: &Options) -> Delivery {
    opts.mode.unwrap_or(d.spec.delivery)
}

/// Images that need a digest: those of every deployment, as written, without duplicates.
pub fn images(inputs: &Inputs) -> Vec<String> {
    let set: BTreeSet<String> = inputs
        .deployments
        .iter()
        .map(|s| s.deployment.spec.filter.image.clone())
        .collect();
    set.into_iter().collect()
}

/// How many compiled modules [`check_parameters`] keeps.
const COMPILED_KEPT: usize = 8;

/// `module` compiled in the shared harness runtime, from a small cache (the last
/// [`COMPILED_KEPT`]) keyed by the sha256 of its bytes: a controller checks every FilterDeployment's parameters against the same few
/// modules, and compiling one (Cranelift, about 0.1 s for the header filter) costs far more
/// than running its `proxy_on_configure`.
fn compiled(module: &Path) -> Result<proxy_wasm_harness::Module> {
    use proxy_wasm_harness::{Module, Runtime};
    use std::sync::{Mutex, OnceLock};
    static CACHE: OnceLock<Mutex<Vec<(String, Module)>>> = OnceLock::new();
    let harness = |message: String| Error::Harness {
        file: module.to_path_buf(),
        message,
    };
    let bytes = std::fs::read(module).map_err(|e| Error::io("cannot read", module, e))?;
    let sha = crate::oci::layout::sha256_hex(&bytes);
    // Held while compiling: checks that arrive together compile a module once.
    let mut cache = CACHE
        .get_or_init(|| Mutex::new(Vec::new()))
        .lock()
        .map_err(|e| harness(e.to_string()))?;
    if let Some((_, m)) = cache.iter().find(|(s, _)| *s == sha) {
        return Ok(m.clone());
    }
    let m = Module::from_bytes(&Runtime::shared(), &bytes).map_err(|e| harness(e.to_string()))?;
    if cache.len() >= COMPILED_KEPT {
        cache.remove(0);
    }
    cache.push((sha, m.clone()));
    Ok(m)
}

/// Run `proxy_on_configure` of `module` with each deployment's root id and parameters in the
/// harness: a configuration the filter refuses fails here, with the filter's own log line.
pub fn check_parameters(source: &Source, module: &Path) -> Result<()> {
    use proxy_wasm_harness::{Host, abi::LogLevel};
    let d = &source.deployment;
    let m = compiled(module)?;
    let host = Host::new();
    let started = host
        .plugin(&m)
        .root_id(&d.spec.filter.root_id)
        .configuration(parameters_text(d))
        .start();
    if let Err(e) = started {
        let logs = host.logs();
        let mut lines: Vec<String> = logs
            .iter()
            .filter(|l| l.level >= LogLevel::Warn)
            .map(|l| l.message.clone())
            .collect();
        if lines.is_empty() {
            lines = logs.iter().map(|l| l.message.clone()).collect();
        }
        let said = if lines.is_empty() {
            String::new()
        } else {
            format!(": {}", lines.join("; "))
        };
        return Err(err(
            &source.origin,
            "spec.filter.parameters",
            format!(
                "the filter ({}, root id {:?}) refuses them: {e}{said}",
                module.display(),
                d.spec.filter.root_id
            ),
        ));
    }
    Ok(())
}

fn labels(d: &FilterDeployment) -> Value {
    json!({MANAGED_BY: "wasmctl", FROM_LABEL: d.metadata.name})
}

fn image_for(d: &FilterDeployment, resolved: &Resolved) -> String {
    let image = &d.spec.filter.image;
    resolved
        .pinned
        .get(image)
        .cloned()
        .unwrap_or_else(|| image.trim().trim_start_matches("oci://").to_string())
}

/// The node agent's link for the module of manifest digest `digest` (`sha256:<hex>`):
/// `manifest-sha256-<hex>` (the file is that name plus `.wasm` in [`NODE_DIR`]). The agent keeps
/// one beside each module it holds, so a render that knows only a pinned digest (`--no-resolve`)
/// names a file that changes with the digest. `None` for a digest of another form.
pub fn digest_link(digest: &str) -> Option<String> {
    let hex = digest.strip_prefix("sha256:")?;
    (hex.len() == 64
        && hex
            .bytes()
            .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c)))
    .then(|| format!("manifest-sha256-{hex}"))
}

/// The manifest digest an image reference pins (`...@sha256:<hex>`), if it pins one.
pub fn pinned_digest(image: &str) -> Option<&str> {
    let (_, digest) = image.trim().rsplit_once('@')?;
    digest_link(digest).map(|_| digest)
}

/// What names the module of an EnvoyFilter's image on the node.
#[derive(Debug, Clone, Copy)]
enum NodeFile<'a> {
    /// Its sha256: the agent's content-addressed file.
    Module(&'a str),
    /// The manifest digest the image pins: the agent's link for it.
    Digest(&'a str),
    /// Neither is known (`--no-resolve` of a tag): the per-deployment link.
    Entry,
}

impl<'a> NodeFile<'a> {
    fn of(d: &'a FilterDeployment, resolved: &'a Resolved) -> NodeFile<'a> {
        let image = &d.spec.filter.image;
        if let Some(sha) = resolved.modules.get(image) {
            return NodeFile::Module(sha);
        }
        let pinned = resolved.pinned.get(image).unwrap_or(image);
        match pinned_digest(pinned) {
            Some(digest) => NodeFile::Digest(digest),
            None => NodeFile::Entry,
        }
    }
}

/// The EnvoyFilter of one deployment. With the module's sha256 it names the agent's
/// content-addressed file and a VM id of that version; with only a pinned manifest digest
/// (`--no-resolve`), the agent's link for that digest and a VM id of it; with neither (a tag,
/// `--no-resolve`), the agent's per-deployment link `NAMESPACE.NAME.wasm`, which a sidecar reads
/// only when its listener is next built.
fn envoy_filter(d: &FilterDeployment, node_file: NodeFile<'_>) -> Value {
    let name = stable_name(d);
    let f = &d.spec.filter;
    let id = f.id.clone().unwrap_or_else(|| name.clone());
    let vm_id = f.vm_id.clone().unwrap_or_else(|| id.clone());
    let short = |hex: &str| hex[..hex.len().min(12)].to_string();
    let (file, vm_id) = match node_file {
        NodeFile::Module(sha) => (
            format!("{NODE_DIR}/{sha}.wasm"),
            format!("{vm_id}.{}", short(sha)),
        ),
        NodeFile::Digest(digest) => {
            let link = digest_link(digest).unwrap_or_else(|| name.clone());
            let hex = digest.trim_start_matches("sha256:");
            (
                format!("{NODE_DIR}/{link}.wasm"),
                format!("{vm_id}.{}", short(hex)),
            )
        }
        NodeFile::Entry => (format!("{NODE_DIR}/{name}.wasm"), vm_id),
    };
    let context = match d.spec.placement.direction {
        Direction::Inbound => "SIDECAR_INBOUND",
        Direction::Outbound => "SIDECAR_OUTBOUND",
        Direction::Gateway => "GATEWAY",
    };
    // An HTTP filter goes before the router; a network filter before tcp_proxy.
    let (apply_to, type_url, mut listener) = match f.kind {
        spec::FilterType::HTTP => (
            "HTTP_FILTER",
            WASM_TYPE_URL,
            json!({
                "filterChain": {"filter": {
                    "name": "envoy.filters.network.http_connection_manager",
                    "subFilter": {"name": "envoy.filters.http.router"},
                }},
            }),
        ),
        spec::FilterType::NETWORK => (
            "NETWORK_FILTER",
            NETWORK_WASM_TYPE_URL,
            json!({"filterChain": {"filter": {"name": "envoy.filters.network.tcp_proxy"}}}),
        ),
    };
    if let Some(port) = d.spec.placement.port {
        listener["portNumber"] = json!(port);
    }
    let mut config = json!({
        "name": id,
        "root_id": f.root_id,
        "vm_config": {
            "vm_id": vm_id,
            "runtime": RUNTIME_V8,
            "code": {"local": {"filename": file}},
        },
        "failure_policy": match d.spec.failure_policy {
            FailurePolicy::Open => "FAIL_OPEN",
            FailurePolicy::Closed => "FAIL_CLOSED",
            FailurePolicy::Reload => "FAIL_RELOAD",
        },
    });
    if f.parameters.is_some() {
        config["configuration"] = json!({
            "@type": STRING_VALUE_TYPE_URL,
            "value": parameters_text(d),
        });
    }
    let mut selector = Map::new();
    for (k, v) in &d.spec.workload.labels {
        selector.insert(k.clone(), json!(v));
    }
    // Through ECDS: the Wasm config is an extension config of its own (istiod serves it by
    // name), and the listener's HTTP filter only names it. A new module or new parameters then
    // change the extension config, never the listener, so no connection is drained.
    json!({
        "apiVersion": "networking.istio.io/v1alpha3",
        "kind": "EnvoyFilter",
        "metadata": {
            "name": d.metadata.name,
            "namespace": workload_namespace(d),
            "labels": labels(d),
        },
        "spec": {
            "workloadSelector": {"labels": selector},
            "configPatches": [
                {
                    "applyTo": "EXTENSION_CONFIG",
                    "patch": {
                        "operation": "ADD",
                        "value": {
                            "name": id,
                            "typed_config": {"@type": type_url, "config": config},
                        },
                    },
                },
                {
                    "applyTo": apply_to,
                    "match": {"context": context, "listener": listener},
                    "patch": {
                        "operation": "INSERT_BEFORE",
                        "value": {
                            "name": id,
                            "config_discovery": {
                                // Wait for the extension config rather than serve without
                                // the filter: istiod sends it with the listener.
                                "config_source": {"ads": {}, "initial_fetch_timeout": "0s"},
                                "type_urls": [type_url],
                            },
                        },
                    },
                },
            ],
        },
    })
}

/// The Wasm HTTP filter (`envoy.filters.http.wasm` with its typed config) that the EnvoyFilter
/// `envoy_filter` delivers through ECDS, as `{name, typed_config}`: what Envoy receives, for
/// checks outside Kubernetes (an `HttpFilter` of that shape loads the same filter inline).
pub fn http_filter_of(envoy_filter: &Value) -> Option<&Value> {
    envoy_filter
        .pointer("/spec/configPatches")
        .and_then(Value::as_array)?
        .iter()
        .find(|p| p["applyTo"] == "EXTENSION_CONFIG")?
        .pointer("/patch/value")
        .filter(|v| v.is_object())
}

/// The `TrafficExtension` of one deployment: what its `WasmPlugin` would say, with the Wasm
/// fields under `wasm` and the attachment (selector or targetRefs, phase, priority, match) at
/// the top, as the CRD has them.
fn traffic_extension(d: &FilterDeployment, resolved: &Resolved) -> Value {
    let plugin = wasm_plugin(d, resolved, Delivery::TrafficExtension);
    let mut spec = Map::new();
    let mut wasm = Map::new();
    if let Some(all) = plugin["spec"].as_object() {
        for (k, v) in all {
            match k.as_str() {
                "selector" | "targetRefs" | "phase" | "priority" | "match" => {
                    spec.insert(k.clone(), v.clone())
                }
                _ => wasm.insert(k.clone(), v.clone()),
            };
        }
    }
    spec.insert("wasm".into(), Value::Object(wasm));
    json!({
        "apiVersion": "extensions.istio.io/v1alpha1",
        "kind": "TrafficExtension",
        "metadata": plugin["metadata"].clone(),
        "spec": spec,
    })
}

fn wasm_plugin(d: &FilterDeployment, resolved: &Resolved, mode: Delivery) -> Value {
    let f = &d.spec.filter;
    let opts = d.spec.image_options(mode);
    let mut spec = json!({
        "url": format!("oci://{}", image_for(d, resolved)),
        "pluginName": f.root_id,
        "type": match f.kind {
            spec::FilterType::HTTP => "HTTP",
            spec::FilterType::NETWORK => "NETWORK",
        },
        "failStrategy": match d.spec.failure_policy {
            FailurePolicy::Open => "FAIL_OPEN",
            FailurePolicy::Closed => "FAIL_CLOSE",
            FailurePolicy::Reload => "FAIL_RELOAD",
        },
    });
    let (_, targets) = d.spec.target_refs();
    if targets.is_empty() {
        spec["selector"] = json!({"matchLabels": d.spec.workload.labels});
    } else {
        spec["targetRefs"] = Value::Array(
            targets
                .iter()
                .map(|r| json!({"group": r.group, "kind": r.kind, "name": r.name}))
                .collect(),
        );
    }
    if let Some(v) = parameters_value(d) {
        spec["pluginConfig"] = v;
    }
    if let Some(p) = opts.phase {
        spec["phase"] = json!(format!("{p:?}"));
    }
    if let Some(p) = opts.priority {
        spec["priority"] = json!(p);
    }
    if let Some(s) = &f.pull_secret {
        spec["imagePullSecret"] = json!(s);
    }
    let mode = match d.spec.placement.direction {
        Direction::Inbound => Some("SERVER"),
        Direction::Outbound => Some("CLIENT"),
        Direction::Gateway => None,
    };
    let mut m = Map::new();
    if let Some(mode) = mode {
        m.insert("mode".into(), json!(mode));
    }
    if let Some(port) = d.spec.placement.port {
        m.insert("ports".into(), json!([{"number": port}]));
    }
    if !m.is_empty() {
        spec["match"] = json!([m]);
    }
    json!({
        "apiVersion": "extensions.istio.io/v1alpha1",
        "kind": "WasmPlugin",
        "metadata": {
            "name": d.metadata.name,
            "namespace": workload_namespace(d),
            "labels": labels(d),
        },
        "spec": spec,
    })
}

/// The two sidecar annotations: the hostPath volume and its read-only mount.
pub fn volume_annotations() -> (String, String) {
    let volume =
        json!({VOLUME_NAME: {"hostPath": {"path": NODE_DIR, "type": "DirectoryOrCreate"}}});
    let mount = json!({VOLUME_NAME: {"mountPath": NODE_DIR, "readOnly": true}});
    (volume.to_string(), mount.to_string())
}

/// Merge our volume into an existing annotation value (object form), keeping other volumes.
fn merge_annotation(
    existing: Option<&str>,
    ours: &str,
    origin: &str,
    field: &str,
) -> Result<String> {
    let Some(existing) = existing.filter(|e| !e.trim().is_empty()) else {
        return Ok(ours.to_string());
    };
    let mut have: Map<String, Value> = serde_json::from_str(existing).map_err(|e| {
        err(
            origin,
            field,
            format!("not a JSON object keyed by volume name: {e}"),
        )
    })?;
    let add: Map<String, Value> = serde_json::from_str(ours).unwrap_or_default();
    have.extend(add);
    Ok(Value::Object(have).to_string())
}

fn workload_patch(d: &FilterDeployment, name: &str) -> Value {
    let (volume, mount) = volume_annotations();
    json!({
        "apiVersion": "apps/v1",
        "kind": d.spec.workload.kind.as_str(),
        "metadata": {"name": name, "namespace": workload_namespace(d)},
        "spec": {"template": {"metadata": {"annotations": {
            USER_VOLUME: volume,
            USER_VOLUME_MOUNT: mount,
        }}}},
    })
}

fn selects(d: &FilterDeployment, w: &Value) -> bool {
    if w.get("kind").and_then(Value::as_str) != Some(d.spec.workload.kind.as_str()) {
        return false;
    }
    let ns = w
        .pointer("/metadata/namespace")
        .and_then(Value::as_str)
        .unwrap_or("default");
    if ns != workload_namespace(d) {
        return false;
    }
    if let Some(name) = &d.spec.workload.name {
        return w.pointer("/metadata/name").and_then(Value::as_str) == Some(name);
    }
    let pod = w.pointer("/spec/template/metadata/labels");
    d.spec
        .workload
        .labels
        .iter()
        .all(|(k, v)| pod.and_then(|p| p.get(k)).and_then(Value::as_str) == Some(v))
}

/// The workload manifest with the volume annotations added, in `namespace` (the one it was
/// selected in: `default`) when it names none, so that kubectl applies it there whatever its
/// context's namespace.
fn patch_workload(w: &WorkloadManifest, namespace: &str) -> Result<Value> {
    let (volume, mount) = volume_annotations();
    let mut obj = w.object.clone();
    if let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.entry("namespace").or_insert_with(|| json!(namespace));
    }
    let Some(template) = obj.pointer_mut("/spec/template") else {
        return Err(err(&w.origin, "spec.template", "missing"));
    };
    let Some(template) = template.as_object_mut() else {
        return Err(err(&w.origin, "spec.template", "not an object"));
    };
    let meta = template.entry("metadata").or_insert_with(|| json!({}));
    let Some(meta) = meta.as_object_mut() else {
        return Err(err(&w.origin, "spec.template.metadata", "not an object"));
    };
    let ann = meta.entry("annotations").or_insert_with(|| json!({}));
    let Some(ann) = ann.as_object_mut() else {
        return Err(err(
            &w.origin,
            "spec.template.metadata.annotations",
            "not an object",
        ));
    };
    for (key, ours) in [(USER_VOLUME, volume), (USER_VOLUME_MOUNT, mount)] {
        let field = format!("spec.template.metadata.annotations.{key}");
        let merged = merge_annotation(
            ann.get(key).and_then(Value::as_str),
            &ours,
            &w.origin,
            &field,
        )?;
        ann.insert(key.to_string(), json!(merged));
    }
    Ok(obj)
}

/// One entry of the agent's image list.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct ImageEntry {
    name: String,
    image: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pull_secret: Option<String>,
}

#[derive(serde::Serialize)]
struct ImageList {
    images: Vec<ImageEntry>,
}

fn image_list(entries: Vec<ImageEntry>) -> Result<Value> {
    let text = serde_norway::to_string(&ImageList { images: entries })
        .map_err(|e| Error::Usage(format!("cannot write the image list: {e}")))?;
    Ok(json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": IMAGES_CONFIGMAP,
            "namespace": AGENT_NAMESPACE,
            "labels": {MANAGED_BY: "wasmctl"},
        },
        "data": {IMAGES_KEY: text},
    }))
}

fn file_name(v: &Value) -> String {
    let get = |p: &str| v.pointer(p).and_then(Value::as_str).unwrap_or("");
    format!(
        "{}.{}.{}.yaml",
        get("/metadata/namespace"),
        get("/metadata/name"),
        get("/kind").to_ascii_lowercase()
    )
}

fn kind_rank(v: &Value) -> u8 {
    match v.get("kind").and_then(Value::as_str) {
        Some("ConfigMap") => 0,
        Some("EnvoyFilter") => 1,
        Some("WasmPlugin") => 2,
        _ => 3,
    }
}

/// Render every deployment of `inputs`. The order of the result is fixed: the image-list
/// ConfigMap, EnvoyFilters, WasmPlugins, then workload patches (or patched workloads), each by
/// namespace and name.
pub fn render(inputs: &Inputs, opts: &Options, resolved: &Resolved) -> Result<Vec<Object>> {
    let mut objects: Vec<Value> = Vec::new();
    let mut entries = Vec::new();
    let mut workloads: BTreeMap<(String, String, String), Value> = BTreeMap::new();
    for s in &inputs.deployments {
        let d = &s.deployment;
        match delivery(d, opts) {
            Delivery::EnvoyFilter => {
                let (field, targets) = d.spec.target_refs();
                if !targets.is_empty() {
                    return Err(err(
                        &s.origin,
                        field,
                        "only the image-based deliveries (wasmPlugin, trafficExtension) can attach by reference: the envoyFilter delivery needs the node agent's directory mounted through sidecar.istio.io/userVolume, which Istio's gateway injection template does not read; select sidecars by spec.workload.labels, or use delivery wasmPlugin or trafficExtension",
                    ));
                }
                objects.push(envoy_filter(d, NodeFile::of(d, resolved)));
                entries.push(ImageEntry {
                    name: stable_name(d),
                    image: image_for(d, resolved),
                    pull_secret: d.spec.filter.pull_secret.clone(),
                });
                let matched: Vec<&WorkloadManifest> = inputs
                    .workloads
                    .iter()
                    .filter(|w| selects(d, &w.object))
                    .collect();
                for w in matched {
                    let patched = patch_workload(w, workload_namespace(d))?;
                    let key = (
                        d.spec.workload.kind.as_str().to_string(),
                        workload_namespace(d).to_string(),
                        patched
                            .pointer("/metadata/name")
                            .and_then(Value::as_str)
                            .unwrap_or("")
                            .to_string(),
                    );
                    workloads.insert(key, patched);
                }
                if let Some(name) = &d.spec.workload.name {
                    let key = (
                        d.spec.workload.kind.as_str().to_string(),
                        workload_namespace(d).to_string(),
                        name.clone(),
                    );
                    workloads
                        .entry(key)
                        .or_insert_with(|| workload_patch(d, name));
                }
            }
            mode @ (Delivery::WasmPlugin | Delivery::TrafficExtension) => {
                if let Some(Value::String(_)) = &d.spec.filter.parameters
                    && parameters_value(d).is_none()
                {
                    return Err(err(&s.origin, "spec.filter.parameters", "not JSON"));
                }
                objects.push(if mode == Delivery::WasmPlugin {
                    wasm_plugin(d, resolved, mode)
                } else {
                    traffic_extension(d, resolved)
                });
            }
        }
    }
    if !entries.is_empty() {
        entries.sort_by(|a, b| a.name.cmp(&b.name));
        objects.push(image_list(entries)?);
    }
    objects.extend(workloads.into_values());
    objects.sort_by_key(|a| (kind_rank(a), file_name(a)));
    Ok(objects
        .into_iter()
        .map(|value| Object {
            file_name: file_name(&value),
            value,
        })
        .collect())
}

/// What `render` leaves to the user, one line each: which node file an envoyFilter deployment's
/// EnvoyFilter names when no module is known (a pinned digest's link, or the per-deployment link
/// of a tag, which running sidecars do not reload), envoyFilter deployments whose workload gets
/// no volume (no `spec.workload.name`, no matching manifest given), and workload manifests no
/// deployment selects (left out of the output).
pub fn notes(inputs: &Inputs, opts: &Options, resolved: &Resolved) -> Vec<String> {
    let mut out = Vec::new();
    for s in &inputs.deployments {
        let d = &s.deployment;
        if delivery(d, opts) == Delivery::EnvoyFilter {
            match NodeFile::of(d, resolved) {
                NodeFile::Module(_) => {}
                NodeFile::Digest(digest) => out.push(format!(
                    "{}: the EnvoyFilter names {NODE_DIR}/{}.wasm, the node agent's link for the module of {digest}",
                    s.origin,
                    digest_link(digest).unwrap_or_default()
                )),
                NodeFile::Entry => out.push(format!(
                    "{}: spec.filter.image {} is a tag and no module is known (--no-resolve): the EnvoyFilter names the agent's per-deployment link {NODE_DIR}/{}.wasm, which a running sidecar reads only when its listener is next built; pin the image by digest or pass --module to render a file that changes with the module",
                    s.origin,
                    d.spec.filter.image,
                    stable_name(d)
                )),
            }
        }
        if delivery(d, opts) == Delivery::EnvoyFilter
            && d.spec.workload.name.is_none()
            && !inputs.workloads.iter().any(|w| selects(d, &w.object))
        {
            out.push(format!(
                "{}: spec.workload.name is not set and no workload manifest given selects it: no volume patch rendered; the pods need the {USER_VOLUME} and {USER_VOLUME_MOUNT} annotations (docs/deploy.md)",
                s.origin
            ));
        }
    }
    for w in &inputs.workloads {
        let selected = inputs.deployments.iter().any(|s| {
            delivery(&s.deployment, opts) == Delivery::EnvoyFilter
                && selects(&s.deployment, &w.object)
        });
        if !selected {
            out.push(format!(
                "{}: no envoyFilter FilterDeployment selects this workload; it is not printed",
                w.origin
            ));
        }
    }
    out
}

/// A JSON value as YAML with every mapping's keys sorted.
fn canonical(v: &Value) -> serde_norway::Value {
    match v {
        Value::Object(m) => {
            let mut keys: Vec<&String> = m.keys().collect();
            keys.sort();
            let mut out = serde_norway::Mapping::new();
            for k in keys {
                out.insert(serde_norway::Value::String(k.clone()), canonical(&m[k]));
            }
            serde_norway::Value::Mapping(out)
        }
        Value::Array(a) => serde_norway::Value::Sequence(a.iter().map(canonical).collect()),
        Value::String(s) => serde_norway::Value::String(s.clone()),
        Value::Bool(b) => serde_norway::Value::Bool(*b),
        Value::Null => serde_norway::Value::Null,
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                serde_norway::Value::Number(i.into())
            } else if let Some(u) = n.as_u64() {
                serde_norway::Value::Number(u.into())
            } else {
                serde_norway::Value::Number(n.as_f64().unwrap_or_default().into())
            }
        }
    }
}

/// One object as YAML (keys sorted).
pub fn object_yaml(v: &Value) -> Result<String> {
    serde_norway::to_string(&canonical(v))
        .map_err(|e| Error::Usage(format!("cannot write YAML: {e}")))
}

/// All objects as one YAML stream, `---` between documents.
pub fn to_yaml(objects: &[Object]) -> Result<String> {
    let mut out = String::new();
    for (i, o) in objects.iter().enumerate() {
        if i > 0 {
            out.push_str("---\n");
        }
        out.push_str(&object_yaml(&o.value)?);
    }
    Ok(out)
}

/// Write each object to `DIR/NAMESPACE.NAME.KIND.yaml`, atomically; returns the paths.
pub fn write_dir(objects: &[Object], dir: &Path) -> Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io("cannot create", dir, e))?;
    let mut out = Vec::new();
    for o in objects {
        let path = dir.join(&o.file_name);
        crate::fsutil::write_atomic(&path, object_yaml(&o.value)?.as_bytes(), 0o644)?;
        out.push(path);
    }
    Ok(out)
}
