//! The controller's decisions as plain functions over the render library: what a
//! `FilterDeployment` object from the API means, which objects it should produce, how the
//! workload's annotations change, what its status says. Nothing here talks to the API server, so
//! unit tests run them directly; `super` calls them and applies the result.

use crate::error::Error;
use crate::render::{self, Inputs, Options, Resolved, spec::Delivery};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use std::collections::{BTreeMap, BTreeSet};

/// The field manager of every server-side apply the controller makes.
pub const FIELD_MANAGER: &str = "wasmctl-controller";
/// The finalizer that lets the controller take its entries back when a FilterDeployment goes.
pub const FINALIZER: &str = "filters.envoy-wasm-toolkit.io/cleanup";
/// The condition type every FilterDeployment carries.
pub const READY: &str = "Ready";

/// Why a FilterDeployment is not ready: the `reason` of its `Ready=False` condition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// The spec breaks a rule admission could not check (the message names the field).
    InvalidSpec,
    /// `spec.filter.pullSecret` names a Secret that does not exist or holds no credentials.
    PullSecretNotFound,
    /// The registry refused or could not be reached, or the image is no wasm image.
    RegistryError,
    /// The module's `proxy_on_configure` refused `spec.filter.parameters`.
    ParametersRejected,
    /// `spec.workload.name` names no workload of that kind.
    WorkloadNotFound,
    /// The namespace of the agent's image list does not exist (`kubectl apply -k manifests/`).
    AgentNamespaceMissing,
    /// The API server refused a write.
    ApplyFailed,
    /// Nodes running the workload did not get the new module within the rollout timeout (the
    /// old one keeps serving).
    RolloutStalled,
    /// `spec.filter.verification` is set and no signature of the digest verifies with its key
    /// (or the key cannot be read).
    SignatureNotVerified,
}

impl Reason {
    /// The reason as the condition carries it.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::InvalidSpec => "InvalidSpec",
            Reason::PullSecretNotFound => "PullSecretNotFound",
            Reason::RegistryError => "RegistryError",
            Reason::ParametersRejected => "ParametersRejected",
            Reason::WorkloadNotFound => "WorkloadNotFound",
            Reason::AgentNamespaceMissing => "AgentNamespaceMissing",
            Reason::ApplyFailed => "ApplyFailed",
            Reason::RolloutStalled => "RolloutStalled",
            Reason::SignatureNotVerified => "SignatureNotVerified",
        }
    }
}

/// A failed reconcile: the reason and a message that names the field or quotes the filter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// Why.
    pub reason: Reason,
    /// What to fix.
    pub message: String,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.reason.as_str(), self.message)
    }
}

impl std::error::Error for Failure {}

impl Failure {
    /// A failure with `reason`.
    pub fn new(reason: Reason, message: impl Into<String>) -> Failure {
        Failure {
            reason,
            message: message.into(),
        }
    }

    /// A registry error (pull, inspect) as a failure.
    pub fn registry(e: &Error) -> Failure {
        Failure::new(Reason::RegistryError, e.to_string())
    }
}

/// The `.dockerconfigjson` of the pull secret `namespace/name` (`None`: it does not exist).
pub fn docker_config<'a>(
    secret: Option<&'a k8s_openapi::api::core::v1::Secret>,
    namespace: &str,
    name: &str,
) -> Result<&'a [u8], Failure> {
    let s = secret.ok_or_else(|| {
        Failure::new(
            Reason::PullSecretNotFound,
            format!("spec.filter.pullSecret: Secret {namespace}/{name} does not exist"),
        )
    })?;
    s.data
        .as_ref()
        .and_then(|d| d.get(".dockerconfigjson"))
        .map(|b| b.0.as_slice())
        .ok_or_else(|| {
            Failure::new(
                Reason::PullSecretNotFound,
                format!(
                    "spec.filter.pullSecret: Secret {namespace}/{name} has no .dockerconfigjson (type kubernetes.io/dockerconfigjson)"
                ),
            )
        })
}

/// A failure to get the key of `spec.filter.verification.keyRef`.
pub fn key_failure(message: String) -> Failure {
    Failure::new(
        Reason::SignatureNotVerified,
        format!("spec.filter.verification.keyRef: {message}"),
    )
}

/// The key text `r` names, from what its object holds (`None`: no such object; `Some(None)`: no
/// such key in it).
pub fn key_text(
    found: Option<Option<String>>,
    r: &crate::render::spec::KeyRef,
    namespace: &str,
) -> Result<String, Failure> {
    use crate::render::spec::KeyKind;
    let what = match r.kind {
        KeyKind::ConfigMap => "ConfigMap",
        KeyKind::Secret => "Secret",
    };
    let name = &r.name;
    match found {
        None => Err(key_failure(format!(
            "{what} {namespace}/{name} does not exist"
        ))),
        Some(None) => Err(key_failure(format!(
            "{what} {namespace}/{name} has no key {:?}",
            r.key
        ))),
        Some(Some(text)) => Ok(text),
    }
}

/// A failure of the shared pipeline, as the reason a FilterDeployment is not ready.
pub fn pipeline_failure(f: &crate::pipeline::Failed) -> Failure {
    use crate::pipeline::Stage;
    match f.stage {
        Stage::Resolve | Stage::Module => Failure::registry(&f.error),
        Stage::Verify => Failure::new(
            Reason::SignatureNotVerified,
            format!("spec.filter.verification: {}", f.error),
        ),
        Stage::Parameters => Failure::new(Reason::ParametersRejected, f.error.to_string()),
    }
}

/// A failed write of the image list, as [`Reason::AgentNamespaceMissing`] when its namespace is
/// what is missing.
pub fn agent_namespace(f: Failure) -> Failure {
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

/// Whether `have` holds every field of `want` with the same value (lists compared whole).
pub fn contains(have: &Value, want: &Value) -> bool {
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

/// `object` with [`APPLIED_ANNOTATION`] set to a digest of it.
pub fn with_digest(object: &Value) -> Value {
    let mut digest = crate::oci::layout::sha256_hex(object.to_string().as_bytes());
    digest.truncate(24);
    let mut o = object.clone();
    if !o["metadata"]["annotations"].is_object() {
        o["metadata"]["annotations"] = json!({});
    }
    o["metadata"]["annotations"][APPLIED_ANNOTATION] = json!(digest);
    o
}

/// The sidecar annotations of a workload to apply (`None`: nothing to change), from its live
/// object (`None`: it does not exist). Adding to a workload that does not exist is
/// [`Reason::WorkloadNotFound`].
pub fn workload_annotations(
    live: Option<&Value>,
    kind: &str,
    namespace: &str,
    name: &str,
    add: bool,
) -> Result<Option<Value>, Failure> {
    let Some(live) = live else {
        if add {
            return Err(Failure::new(
                Reason::WorkloadNotFound,
                format!("spec.workload.name: {kind} {namespace}/{name} does not exist"),
            ));
        }
        return Ok(None);
    };
    let current = live
        .pointer("/spec/template/metadata/annotations")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    let want = annotations(&current, add)?;
    let unchanged = [render::USER_VOLUME, render::USER_VOLUME_MOUNT]
        .iter()
        .all(|k| current.get(*k) == want.get(*k));
    if unchanged {
        return Ok(None);
    }
    Ok(Some(workload_apply(kind, namespace, name, want)))
}

/// `NAMESPACE/NAME` of an API object.
pub fn key(obj: &Value) -> String {
    format!(
        "{}/{}",
        obj.pointer("/metadata/namespace")
            .and_then(Value::as_str)
            .unwrap_or("default"),
        obj.pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or("")
    )
}

/// Read a FilterDeployment as the API returns it (status, uid and the other server-set fields
/// dropped) with the same rules as `render`; errors name the object and the field.
pub fn parse(obj: &Value) -> Result<Inputs, Failure> {
    let doc = json!({
        "apiVersion": obj.get("apiVersion").cloned().unwrap_or(Value::Null),
        "kind": obj.get("kind").cloned().unwrap_or(Value::Null),
        "metadata": {
            "name": obj.pointer("/metadata/name").cloned().unwrap_or(Value::Null),
            "namespace": obj.pointer("/metadata/namespace").cloned().unwrap_or(Value::Null),
        },
        "spec": obj.get("spec").cloned().unwrap_or(Value::Null),
    });
    render::parse_str(&doc.to_string(), &format!("FilterDeployment {}", key(obj)))
        .map_err(|e| Failure::new(Reason::InvalidSpec, e.to_string()))
}

/// The annotation of an EnvoyFilter naming the pinned image it loads.
pub const IMAGE_ANNOTATION: &str = "filters.envoy-wasm-toolkit.io/image";
/// The annotation of an EnvoyFilter naming the sha256 of the module file it loads.
pub const MODULE_ANNOTATION: &str = "filters.envoy-wasm-toolkit.io/module-sha256";

/// The Istio object one FilterDeployment produces (EnvoyFilter or WasmPlugin), pinned to
/// `pinned` and owned by the FilterDeployment `owner` (so the garbage collector removes it
/// with its owner). With `module` (the module's sha256), an EnvoyFilter names the node's
/// content-addressed file and carries [`IMAGE_ANNOTATION`] and [`MODULE_ANNOTATION`], so the
/// version it serves can be read back.
pub fn filter_object(
    inputs: &Inputs,
    image: &str,
    pinned: &str,
    module: Option<&str>,
    owner: &Value,
) -> Result<Value, Failure> {
    let mut resolved = Resolved {
        pinned: BTreeMap::from([(image.to_string(), pinned.to_string())]),
        ..Resolved::default()
    };
    if let Some(sha) = module {
        resolved.modules.insert(image.to_string(), sha.to_string());
    }
    let objects = render::render(inputs, &Options::default(), &resolved)
        .map_err(|e| Failure::new(Reason::InvalidSpec, e.to_string()))?;
    let mut object = objects
        .into_iter()
        .map(|o| o.value)
        .find(|v| {
            matches!(
                v["kind"].as_str(),
                Some("EnvoyFilter" | "WasmPlugin" | "TrafficExtension")
            )
        })
        .ok_or_else(|| {
            Failure::new(
                Reason::InvalidSpec,
                "renders no EnvoyFilter, WasmPlugin or TrafficExtension",
            )
        })?;
    if let (Some(sha), "EnvoyFilter") = (module, object["kind"].as_str().unwrap_or("")) {
        object["metadata"]["annotations"] =
            json!({IMAGE_ANNOTATION: pinned, MODULE_ANNOTATION: sha});
    }
    // Owner references cannot cross namespaces (the garbage collector would delete the object
    // at once): a workload in another namespace gets an unowned object, which the finalizer
    // removes.
    if object.pointer("/metadata/namespace") == owner.pointer("/metadata/namespace") {
        object["metadata"]["ownerReferences"] = json!([{
            "apiVersion": render::spec::API_VERSION,
            "kind": render::spec::KIND,
            "name": owner.pointer("/metadata/name").cloned().unwrap_or(Value::Null),
            "uid": owner.pointer("/metadata/uid").cloned().unwrap_or(Value::Null),
            "controller": true,
            "blockOwnerDeletion": true,
        }]);
    }
    Ok(object)
}

/// The version an EnvoyFilter serves, from the annotations [`filter_object`] sets: (pinned
/// image, module sha256).
pub fn serving(envoy_filter: &Value) -> Option<(String, String)> {
    let a = envoy_filter.pointer("/metadata/annotations")?;
    Some((
        a.get(IMAGE_ANNOTATION)?.as_str()?.to_string(),
        a.get(MODULE_ANNOTATION)?.as_str()?.to_string(),
    ))
}

/// The nodes (of those running a matching workload) whose report lacks module `sha`, sorted.
pub fn pending_nodes(
    sha: &str,
    nodes: &BTreeSet<String>,
    reports: &BTreeMap<String, BTreeSet<String>>,
) -> Vec<String> {
    nodes
        .iter()
        .filter(|n| !reports.get(*n).is_some_and(|m| m.contains(sha)))
        .cloned()
        .collect()
}

/// One FilterDeployment's share of the agent's image list: its target image, and the image its
/// EnvoyFilter still serves while a rollout is under way (kept on every node until the switch).
#[derive(Debug, Clone)]
pub struct ListEntry {
    /// The FilterDeployment.
    pub inputs: Inputs,
    /// The image the nodes should hold (pinned).
    pub target: String,
    /// The image the EnvoyFilter names now, when it differs from the target.
    pub serving: Option<String>,
}

/// The agent's image list over every FilterDeployment with envoyFilter delivery: each entry is
/// one that reconciled (or is reconciling) successfully. A rollout adds an entry
/// `NAMESPACE.NAME.serving` for the version still served, so no node drops it early.
pub fn image_list(deployments: &[ListEntry]) -> Result<Value, Failure> {
    let mut all = Inputs::default();
    let mut resolved = Resolved::default();
    for e in deployments {
        for s in &e.inputs.deployments {
            if s.deployment.spec.delivery != Delivery::EnvoyFilter {
                continue;
            }
            let name = s.deployment.metadata.name.clone();
            let versions = std::iter::once((name.clone(), &e.target))
                .chain(e.serving.iter().map(|p| (format!("{name}.serving"), p)));
            for (name, pinned) in versions {
                let mut d = s.clone();
                // A distinct image key per version, pinned to that version.
                d.deployment.metadata.name = name;
                d.deployment.spec.filter.image = pinned.clone();
                resolved.pinned.insert(pinned.clone(), pinned.clone());
                // Without a name no workload patch is rendered: only the image list is wanted.
                d.deployment.spec.workload.name = None;
                all.deployments.push(d);
            }
        }
    }
    if all.deployments.is_empty() {
        return Ok(empty_image_list());
    }
    let objects = render::render(&all, &Options::default(), &resolved)
        .map_err(|e| Failure::new(Reason::InvalidSpec, e.to_string()))?;
    objects
        .into_iter()
        .map(|o| o.value)
        .find(|v| v["kind"] == "ConfigMap")
        .ok_or_else(|| Failure::new(Reason::InvalidSpec, "renders no image list"))
}

/// The image list with no entry.
pub fn empty_image_list() -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": render::IMAGES_CONFIGMAP,
            "namespace": render::AGENT_NAMESPACE,
            "labels": {render::MANAGED_BY: "wasmctl"},
        },
        "data": {render::IMAGES_KEY: "images: []\n"},
    })
}

/// The two sidecar volume annotations with our volume merged into what the workload has
/// (`current`: its pod template's annotations), or with it taken out (`add == false`). A key
/// whose value would be left empty is absent from the result.
pub fn annotations(current: &Map<String, Value>, add: bool) -> Result<Map<String, Value>, Failure> {
    let (volume, mount) = render::volume_annotations();
    let mut out = Map::new();
    for (key, ours) in [
        (render::USER_VOLUME, volume),
        (render::USER_VOLUME_MOUNT, mount),
    ] {
        let have = current.get(key).and_then(Value::as_str).unwrap_or("");
        let mut map: Map<String, Value> = if have.trim().is_empty() {
            Map::new()
        } else {
            serde_json::from_str(have).map_err(|e| {
                Failure::new(
                    Reason::InvalidSpec,
                    format!(
                        "the workload's annotation {key} is not a JSON object keyed by volume name: {e}"
                    ),
                )
            })?
        };
        let ours: Map<String, Value> = serde_json::from_str(&ours).unwrap_or_default();
        if add {
            map.extend(ours);
        } else {
            for k in ours.keys() {
                map.remove(k);
            }
        }
        if !map.is_empty() {
            out.insert(
                key.to_string(),
                Value::String(Value::Object(map).to_string()),
            );
        }
    }
    Ok(out)
}

/// The apply configuration of a workload that sets exactly `annotations` on its pod template
/// (server-side apply removes those the controller set before and no longer sends).
pub fn workload_apply(
    kind: &str,
    namespace: &str,
    name: &str,
    annotations: Map<String, Value>,
) -> Value {
    json!({
        "apiVersion": "apps/v1",
        "kind": kind,
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"template": {"metadata": {"annotations": annotations}}},
    })
}

/// What a successful reconcile wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    /// The manifest digest serving.
    pub digest: String,
    /// The digest-pinned image serving.
    pub image: String,
    /// The objects written (`Kind namespace/name`).
    pub objects: Vec<String>,
    /// A rollout under way: the serving version stays until every node holds the target.
    pub rollout: Option<Rollout>,
}

/// A version waiting for nodes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rollout {
    /// The target's pinned image.
    pub image: String,
    /// The target's manifest digest.
    pub digest: String,
    /// Nodes running a matching workload that do not hold the target's module yet.
    pub pending: Vec<String>,
    /// When this target started waiting (RFC 3339).
    pub since: String,
}

/// A FilterDeployment's `status`, as the controller writes and reads it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Status {
    /// The generation this status describes.
    #[serde(default)]
    pub observed_generation: i64,
    /// The `Ready` condition.
    #[serde(default)]
    pub conditions: Vec<Condition>,
    /// The manifest digest serving.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
    /// The digest-pinned image serving.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// The objects written (`Kind namespace/name`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub objects: Option<Vec<String>>,
    /// A version waiting for nodes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<RolloutStatus>,
}

/// A condition, as `metav1.Condition`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    /// `Ready`.
    #[serde(rename = "type")]
    pub type_: String,
    /// `True` or `False`.
    pub status: String,
    /// A [`Reason`], `Applied` or `RollingOut`.
    pub reason: String,
    /// What serves, or what to fix.
    pub message: String,
    /// When `status` last changed (RFC 3339).
    pub last_transition_time: String,
    /// The generation it describes.
    #[serde(default)]
    pub observed_generation: i64,
}

/// `status.rollout`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RolloutStatus {
    /// The target's pinned image.
    pub image: String,
    /// The target's manifest digest.
    pub digest: String,
    /// Nodes that do not hold the target's module yet.
    #[serde(default)]
    pub pending_nodes: Vec<String>,
    /// When the target started waiting (RFC 3339).
    pub since: String,
}

impl Status {
    /// The status of an API object (`None` when it has none, or one this controller cannot
    /// read: it is rewritten whole).
    pub fn of(obj: &Value) -> Option<Status> {
        obj.get("status")
            .filter(|s| !s.is_null())
            .and_then(|s| serde_json::from_value(s.clone()).ok())
    }

    /// The `Ready` condition.
    pub fn ready(&self) -> Option<&Condition> {
        self.conditions.iter().find(|c| c.type_ == READY)
    }

    /// The same status without transition times, to tell whether anything else changed.
    pub fn without_times(&self) -> Status {
        let mut s = self.clone();
        for c in &mut s.conditions {
            c.last_transition_time.clear();
        }
        s
    }
}

/// The status for `generation` after a reconcile: `applied` is what is serving (the last good
/// result: on failure the previous status's), `failure` why this reconcile failed. The `Ready`
/// condition's `lastTransitionTime` moves only when its status does (`previous` is the current
/// status, `now` an RFC 3339 time).
pub fn status(
    generation: i64,
    applied: Option<&Applied>,
    failure: Option<&Failure>,
    previous: Option<&Status>,
    now: &str,
) -> Status {
    let rollout = applied.and_then(|a| a.rollout.as_ref());
    // Ready means a version serves: during a first rollout nothing does yet.
    let serving = applied.is_some_and(|a| !a.image.is_empty());
    let (ready, reason, message) = match (failure, rollout) {
        (None, Some(r)) => (
            if serving { "True" } else { "False" },
            "RollingOut",
            format!(
                "{} serving; {} waits for nodes {} to hold its module",
                applied
                    .map(|a| a.image.as_str())
                    .filter(|i| !i.is_empty())
                    .unwrap_or("nothing"),
                r.image,
                r.pending.join(", ")
            ),
        ),
        (None, None) => (
            "True",
            "Applied",
            applied
                .map(|a| format!("{} serving; wrote {}", a.image, a.objects.join(", ")))
                .unwrap_or_default(),
        ),
        (Some(f), _) => ("False", f.reason.as_str(), f.message.clone()),
    };
    let since = match previous.and_then(Status::ready) {
        Some(c) if c.status == ready => c.last_transition_time.clone(),
        _ => now.to_string(),
    };
    let mut s = Status {
        observed_generation: generation,
        conditions: vec![Condition {
            type_: READY.into(),
            status: ready.into(),
            reason: reason.into(),
            message,
            last_transition_time: since,
            observed_generation: generation,
        }],
        ..Status::default()
    };
    if let Some(a) = applied {
        s.digest = Some(a.digest.clone());
        s.image = Some(a.image.clone());
        s.objects = Some(a.objects.clone());
        s.rollout = a.rollout.as_ref().map(|r| RolloutStatus {
            image: r.image.clone(),
            digest: r.digest.clone(),
            pending_nodes: r.pending.clone(),
            since: r.since.clone(),
        });
    } else if let Some(p) = previous {
        s.digest = p.digest.clone();
        s.image = p.image.clone();
        s.objects = p.objects.clone();
        s.rollout = p.rollout.clone();
    }
    s
}

/// What the last good reconcile recorded in `status` (digest, pinned image, objects), if any.
pub fn last_applied(status: Option<&Status>) -> Option<Applied> {
    let s = status?;
    Some(Applied {
        rollout: s.rollout.as_ref().map(|r| Rollout {
            image: r.image.clone(),
            digest: r.digest.clone(),
            pending: r.pending_nodes.clone(),
            since: r.since.clone(),
        }),
        digest: s.digest.clone()?,
        image: s.image.clone()?,
        objects: s.objects.clone().unwrap_or_default(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fd(delivery: &str, params: &str) -> Value {
        json!({
            "apiVersion": "filters.envoy-wasm-toolkit.io/v1alpha1",
            "kind": "FilterDeployment",
            "metadata": {"name": "details-hello", "namespace": "default", "uid": "u-1", "generation": 2},
            "spec": {
                "workload": {"kind": "Deployment", "name": "details-v1", "labels": {"app": "details"}},
                "filter": {"image": "r.example/f:v1", "rootId": "my_root_id", "parameters": params},
                "delivery": delivery,
            },
            "status": {"observedGeneration": 1},
        })
    }

    #[test]
    fn parses_what_the_api_returns_and_names_the_field_of_a_bad_spec() {
        let inputs = parse(&fd("envoyFilter", r#"{"name":"hello"}"#)).unwrap();
        assert_eq!(
            inputs.deployments[0].deployment.metadata.name,
            "details-hello"
        );
        let mut bad = fd("envoyFilter", "{}");
        bad["spec"]["filter"]["rootId"] = json!("");
        let e = parse(&bad).unwrap_err();
        assert_eq!(e.reason, Reason::InvalidSpec);
        assert!(
            e.message.contains("FilterDeployment default/details-hello"),
            "{e}"
        );
        assert!(e.message.contains("spec.filter.rootId"), "{e}");
    }

    #[test]
    fn the_filter_object_is_pinned_and_owned() {
        let owner = fd("wasmPlugin", r#"{"name":"hello"}"#);
        let inputs = parse(&owner).unwrap();
        let o = filter_object(
            &inputs,
            "r.example/f:v1",
            "r.example/f@sha256:ab",
            None,
            &owner,
        )
        .unwrap();
        assert_eq!(o["kind"], "WasmPlugin");
        assert_eq!(o["spec"]["url"], "oci://r.example/f@sha256:ab");
        assert_eq!(o["metadata"]["ownerReferences"][0]["uid"], "u-1");
        assert_eq!(o["metadata"]["ownerReferences"][0]["controller"], true);
        // A workload in another namespace: no owner reference can point across.
        let mut other = owner.clone();
        other["spec"]["workload"]["namespace"] = json!("bookinfo");
        let o = filter_object(
            &parse(&other).unwrap(),
            "r.example/f:v1",
            "r.example/f@sha256:ab",
            None,
            &other,
        )
        .unwrap();
        assert_eq!(o["metadata"]["namespace"], "bookinfo");
        assert!(o["metadata"].get("ownerReferences").is_none(), "{o}");
    }

    #[test]
    fn the_image_list_aggregates_envoy_filter_deployments_only() {
        let a = parse(&fd("envoyFilter", "{}")).unwrap();
        let mut other = fd("envoyFilter", "{}");
        other["metadata"]["name"] = json!("ratings");
        other["spec"]["filter"]["image"] = json!("r.example/g:v2");
        let b = parse(&other).unwrap();
        let c = parse(&fd("wasmPlugin", "{}")).unwrap();
        let entry = |inputs, target: &str, serving: Option<&str>| ListEntry {
            inputs,
            target: target.into(),
            serving: serving.map(str::to_string),
        };
        let list = image_list(&[
            entry(a, "r.example/f@sha256:aa", Some("r.example/f@sha256:a0")),
            entry(b, "r.example/g@sha256:bb", None),
            entry(c, "r.example/f@sha256:cc", None),
        ])
        .unwrap();
        let text = list["data"]["images.yaml"].as_str().unwrap();
        assert!(
            text.contains("name: default.details-hello\n  image: r.example/f@sha256:aa"),
            "{text}"
        );
        assert!(
            text.contains("name: default.details-hello.serving\n  image: r.example/f@sha256:a0"),
            "the version still served stays listed: {text}"
        );
        assert!(text.contains("name: default.ratings"), "{text}");
        assert!(!text.contains("sha256:cc"), "{text}");
        assert_eq!(image_list(&[]).unwrap(), empty_image_list());
    }

    #[test]
    fn annotations_keep_other_volumes_and_disappear_when_only_ours_was_there() {
        let mut current = Map::new();
        current.insert(
            render::USER_VOLUME.into(),
            json!(r#"{"certs":{"secret":{"secretName":"c"}}}"#),
        );
        current.insert("team".into(), json!("a"));
        let added = annotations(&current, true).unwrap();
        let volume: Value =
            serde_json::from_str(added[render::USER_VOLUME].as_str().unwrap()).unwrap();
        assert!(volume.get("certs").is_some() && volume.get(render::VOLUME_NAME).is_some());
        assert!(added.contains_key(render::USER_VOLUME_MOUNT));
        assert!(
            !added.contains_key("team"),
            "only the two volume annotations are ours"
        );

        let removed = annotations(&added, false).unwrap();
        assert_eq!(
            removed[render::USER_VOLUME].as_str().unwrap(),
            r#"{"certs":{"secret":{"secretName":"c"}}}"#
        );
        assert!(!removed.contains_key(render::USER_VOLUME_MOUNT));

        current.insert(render::USER_VOLUME.into(), json!("not json"));
        let e = annotations(&current, true).unwrap_err();
        assert!(e.message.contains(render::USER_VOLUME), "{e}");
    }

    #[test]
    fn an_envoy_filter_names_the_module_file_and_the_nodes_gate_it() {
        let owner = fd("envoyFilter", r#"{"name":"hello"}"#);
        let inputs = parse(&owner).unwrap();
        let sha = "5".repeat(64);
        let o = filter_object(
            &inputs,
            "r.example/f:v1",
            "r.example/f@sha256:ab",
            Some(&sha),
            &owner,
        )
        .unwrap();
        let config = &o["spec"]["configPatches"][0]["patch"]["value"]["typed_config"]["config"];
        assert_eq!(
            config["vm_config"]["code"]["local"]["filename"],
            format!("/var/local/lib/wasm-filters/{sha}.wasm")
        );
        assert_eq!(
            config["vm_config"]["vm_id"],
            "default.details-hello.555555555555"
        );
        assert_eq!(
            serving(&o),
            Some(("r.example/f@sha256:ab".into(), sha.clone()))
        );

        let nodes: BTreeSet<String> = ["a", "b", "c"].iter().map(|s| s.to_string()).collect();
        let reports = BTreeMap::from([
            ("a".to_string(), BTreeSet::from([sha.clone()])),
            ("b".to_string(), BTreeSet::new()),
            ("z".to_string(), BTreeSet::new()),
        ]);
        assert_eq!(pending_nodes(&sha, &nodes, &reports), ["b", "c"]);
        assert!(
            pending_nodes(&sha, &BTreeSet::new(), &reports).is_empty(),
            "no node, no wait"
        );
    }

    /// The `Ready` condition a failure leads to: status False, its reason, its message.
    fn ready_of(f: &Failure) -> (String, String, String) {
        let s = status(1, None, Some(f), None, "t");
        let c = s.ready().unwrap().clone();
        (c.status, c.reason, c.message)
    }

    fn assert_reason(f: &Failure, reason: Reason, names: &str) {
        let (st, r, message) = ready_of(f);
        assert_eq!((st.as_str(), r.as_str()), ("False", reason.as_str()), "{f}");
        assert!(
            message.contains(names),
            "{message:?} does not name {names:?}"
        );
    }

    #[test]
    fn ready_reason_invalid_spec() {
        let mut bad = fd("envoyFilter", "{}");
        bad["spec"]["filter"]["image"] = json!("Not A Reference");
        let e = parse(&bad)
            .and_then(|i| filter_object(&i, "Not A Reference", "x", None, &bad))
            .unwrap_err();
        assert_reason(&e, Reason::InvalidSpec, "spec.filter.image");
    }

    #[test]
    fn ready_reason_pull_secret_not_found() {
        let missing = docker_config(None, "default", "regcred").unwrap_err();
        assert_reason(
            &missing,
            Reason::PullSecretNotFound,
            "Secret default/regcred does not exist",
        );
        let opaque = k8s_openapi::api::core::v1::Secret::default();
        let empty = docker_config(Some(&opaque), "default", "regcred").unwrap_err();
        assert_reason(
            &empty,
            Reason::PullSecretNotFound,
            "has no .dockerconfigjson",
        );
        let mut good = opaque.clone();
        good.data = Some(BTreeMap::from([(
            ".dockerconfigjson".to_string(),
            k8s_openapi::ByteString(b"{}".to_vec()),
        )]));
        assert_eq!(
            docker_config(Some(&good), "default", "regcred").unwrap(),
            b"{}"
        );
    }

    fn failed(stage: crate::pipeline::Stage, message: &str) -> crate::pipeline::Failed {
        crate::pipeline::Failed {
            stage,
            error: Error::Usage(message.into()),
        }
    }

    #[test]
    fn ready_reason_registry_error() {
        use crate::pipeline::Stage;
        let f = pipeline_failure(&failed(Stage::Resolve, "r.example: connection refused"));
        assert_reason(&f, Reason::RegistryError, "connection refused");
        let f = pipeline_failure(&failed(Stage::Module, "layer 1: not a proxy-wasm module"));
        assert_reason(&f, Reason::RegistryError, "not a proxy-wasm module");
    }

    #[test]
    fn ready_reason_parameters_rejected() {
        let f = pipeline_failure(&failed(
            crate::pipeline::Stage::Parameters,
            "spec.filter.parameters: the filter refuses them",
        ));
        assert_reason(&f, Reason::ParametersRejected, "spec.filter.parameters");
    }

    #[test]
    fn ready_reason_signature_not_verified() {
        use crate::render::spec::{KeyKind, KeyRef};
        let f = pipeline_failure(&failed(crate::pipeline::Stage::Verify, "no signature"));
        assert_reason(
            &f,
            Reason::SignatureNotVerified,
            "spec.filter.verification: no signature",
        );
        let r = KeyRef {
            kind: KeyKind::ConfigMap,
            name: "cosign".into(),
            key: "cosign.pub".into(),
        };
        let gone = key_text(None, &r, "default").unwrap_err();
        assert_reason(
            &gone,
            Reason::SignatureNotVerified,
            "ConfigMap default/cosign does not exist",
        );
        let no_key = key_text(Some(None), &r, "default").unwrap_err();
        assert_reason(
            &no_key,
            Reason::SignatureNotVerified,
            "has no key \"cosign.pub\"",
        );
        assert_eq!(
            key_text(Some(Some("PEM".into())), &r, "default").unwrap(),
            "PEM"
        );
    }

    #[test]
    fn ready_reason_workload_not_found() {
        let e =
            workload_annotations(None, "Deployment", "default", "details-v1", true).unwrap_err();
        assert_reason(
            &e,
            Reason::WorkloadNotFound,
            "spec.workload.name: Deployment default/details-v1",
        );
        assert_eq!(
            workload_annotations(None, "Deployment", "default", "details-v1", false).unwrap(),
            None,
            "taking back from a workload that is gone is nothing to do"
        );
        let live = json!({"spec": {"template": {"metadata": {"annotations": {}}}}});
        let apply = workload_annotations(Some(&live), "Deployment", "default", "details-v1", true)
            .unwrap()
            .unwrap();
        assert!(
            apply
                .pointer("/spec/template/metadata/annotations")
                .unwrap()[render::USER_VOLUME]
                .is_string()
        );
    }

    #[test]
    fn ready_reason_agent_namespace_missing_and_apply_failed() {
        let write = Failure::new(
            Reason::ApplyFailed,
            format!(
                "cannot apply ConfigMap: namespaces \"{}\" not found",
                render::AGENT_NAMESPACE
            ),
        );
        assert_reason(
            &agent_namespace(write),
            Reason::AgentNamespaceMissing,
            "kubectl apply -k manifests/",
        );
        let other = Failure::new(
            Reason::ApplyFailed,
            "cannot apply EnvoyFilter default/x: forbidden",
        );
        assert_reason(&agent_namespace(other), Reason::ApplyFailed, "forbidden");
    }

    #[test]
    fn ready_reason_applied_and_rolling_out() {
        let a = Applied {
            digest: "sha256:aa".into(),
            image: "r/f@sha256:aa".into(),
            objects: vec!["WasmPlugin default/x".into()],
            rollout: None,
        };
        let s = status(1, Some(&a), None, None, "t");
        let c = s.ready().unwrap();
        assert_eq!((c.status.as_str(), c.reason.as_str()), ("True", "Applied"));
        assert_eq!(
            c.message,
            "r/f@sha256:aa serving; wrote WasmPlugin default/x"
        );
        // RolloutStalled comes from the rollout's own decision (see `rollout`'s tests).
    }

    /// The status as the API stores it.
    fn json(s: &Status) -> Value {
        serde_json::to_value(s).unwrap()
    }

    #[test]
    fn status_keeps_the_last_good_result_and_the_transition_time() {
        let a = Applied {
            digest: "sha256:aa".into(),
            image: "r/f@sha256:aa".into(),
            objects: vec!["EnvoyFilter default/x".into()],
            rollout: None,
        };
        let ok_status = status(3, Some(&a), None, None, "t1");
        let ok = json(&ok_status);
        assert_eq!(ok["conditions"][0]["status"], "True");
        assert_eq!(ok["conditions"][0]["lastTransitionTime"], "t1");
        assert_eq!(last_applied(Some(&ok_status)), Some(a.clone()));
        let still = status(3, Some(&a), None, Some(&ok_status), "t2");
        assert_eq!(still, ok_status, "an unchanged world gives the same status");
        assert_eq!(
            Status::of(&json!({ "status": ok })),
            Some(ok_status.clone()),
            "what is written reads back the same"
        );

        let f = Failure::new(Reason::ParametersRejected, "rules[0].direction: unknown");
        let bad = json(&status(4, None, Some(&f), Some(&ok_status), "t3"));
        assert_eq!(bad["conditions"][0]["status"], "False");
        assert_eq!(bad["conditions"][0]["reason"], "ParametersRejected");
        assert_eq!(bad["conditions"][0]["lastTransitionTime"], "t3");
        assert_eq!(
            bad["digest"], "sha256:aa",
            "the serving digest stays in the status"
        );
        assert_eq!(bad["observedGeneration"], 4);
    }

    #[test]
    fn ready_during_a_rollout_only_while_a_version_serves() {
        let target = Rollout {
            image: "r/f@sha256:bb".into(),
            digest: "sha256:bb".into(),
            pending: vec!["node-a".into()],
            since: "t0".into(),
        };
        let first = Applied {
            digest: String::new(),
            image: String::new(),
            objects: vec![],
            rollout: Some(target.clone()),
        };
        let s = json(&status(1, Some(&first), None, None, "t1"));
        assert_eq!(s["conditions"][0]["status"], "False", "{s}");
        assert_eq!(s["conditions"][0]["reason"], "RollingOut");
        let upgrade = Applied {
            digest: "sha256:aa".into(),
            image: "r/f@sha256:aa".into(),
            objects: vec!["EnvoyFilter default/x".into()],
            rollout: Some(target),
        };
        let s = json(&status(2, Some(&upgrade), None, None, "t1"));
        assert_eq!(s["conditions"][0]["status"], "True", "{s}");
        assert_eq!(s["conditions"][0]["reason"], "RollingOut");
        assert_eq!(s["rollout"]["pendingNodes"][0], "node-a");
    }
}
