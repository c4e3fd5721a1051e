//! The controller's decisions as plain functions over the render library: what a
//! `FilterDeployment` object from the API means, which objects it should produce, how the
//! workload's annotations change, what its status says. Nothing here talks to the API server, so
//! unit tests run them directly; `super` calls them and applies the result.

use crate::error::Error;
use crate::render::{self, Inputs, Options, Resolved, spec::Delivery};
use serde_json::{Map, Value, json};
use std::collections::BTreeMap;

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

/// The Istio object one FilterDeployment produces (EnvoyFilter or WasmPlugin), pinned to
/// `pinned` and owned by the FilterDeployment `owner` (so the garbage collector removes it
/// with its owner).
pub fn filter_object(
    inputs: &Inputs,
    image: &str,
    pinned: &str,
    owner: &Value,
) -> Result<Value, Failure> {
    let resolved = Resolved {
        pinned: BTreeMap::from([(image.to_string(), pinned.to_string())]),
    };
    let objects = render::render(inputs, &Options::default(), &resolved)
        .map_err(|e| Failure::new(Reason::InvalidSpec, e.to_string()))?;
    let mut object = objects
        .into_iter()
        .map(|o| o.value)
        .find(|v| matches!(v["kind"].as_str(), Some("EnvoyFilter" | "WasmPlugin")))
        .ok_or_else(|| Failure::new(Reason::InvalidSpec, "renders no EnvoyFilter or WasmPlugin"))?;
    object["metadata"]["ownerReferences"] = json!([{
        "apiVersion": render::spec::API_VERSION,
        "kind": render::spec::KIND,
        "name": owner.pointer("/metadata/name").cloned().unwrap_or(Value::Null),
        "uid": owner.pointer("/metadata/uid").cloned().unwrap_or(Value::Null),
        "controller": true,
        "blockOwnerDeletion": true,
    }]);
    Ok(object)
}

/// The agent's image list over every FilterDeployment with envoyFilter delivery: each
/// `(inputs, pinned image)` pair is one that reconciled (or is reconciling) successfully.
pub fn image_list(deployments: &[(Inputs, String)]) -> Result<Value, Failure> {
    let mut all = Inputs::default();
    let mut resolved = Resolved::default();
    for (inputs, pinned) in deployments {
        for s in &inputs.deployments {
            if s.deployment.spec.delivery != Delivery::EnvoyFilter {
                continue;
            }
            resolved
                .pinned
                .insert(s.deployment.spec.filter.image.clone(), pinned.clone());
            let mut d = s.clone();
            // Without a name no workload patch is rendered: only the image list is wanted.
            d.deployment.spec.workload.name = None;
            all.deployments.push(d);
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
    /// The manifest digest the tag resolved to.
    pub digest: String,
    /// The digest-pinned image.
    pub image: String,
    /// The objects written (`Kind namespace/name`).
    pub objects: Vec<String>,
}

/// The status for `generation` after a reconcile: `applied` is what is serving (the last good
/// result: on failure the previous status's), `failure` why this reconcile failed. The `Ready`
/// condition's `lastTransitionTime` moves only when its status does (`previous` is the current
/// status, `now` an RFC 3339 time).
pub fn status(
    generation: i64,
    applied: Option<&Applied>,
    failure: Option<&Failure>,
    previous: Option<&Value>,
    now: &str,
) -> Value {
    let (ready, reason, message) = match failure {
        None => (
            "True",
            "Applied",
            applied
                .map(|a| format!("{} serving; wrote {}", a.image, a.objects.join(", ")))
                .unwrap_or_default(),
        ),
        Some(f) => ("False", f.reason.as_str(), f.message.clone()),
    };
    let old = previous
        .and_then(|s| s.get("conditions"))
        .and_then(Value::as_array)
        .and_then(|c| c.iter().find(|c| c["type"] == READY));
    let since = match old {
        Some(c) if c["status"] == ready => c["lastTransitionTime"].as_str().unwrap_or(now),
        _ => now,
    };
    let mut s = json!({
        "observedGeneration": generation,
        "conditions": [{
            "type": READY,
            "status": ready,
            "reason": reason,
            "message": message,
            "lastTransitionTime": since,
            "observedGeneration": generation,
        }],
    });
    if let Some(a) = applied {
        s["digest"] = json!(a.digest);
        s["image"] = json!(a.image);
        s["objects"] = json!(a.objects);
    } else if let Some(p) = previous {
        for k in ["digest", "image", "objects"] {
            if let Some(v) = p.get(k) {
                s[k] = v.clone();
            }
        }
    }
    s
}

/// What the last good reconcile recorded in `status` (digest, pinned image, objects), if any.
pub fn last_applied(status: Option<&Value>) -> Option<Applied> {
    let s = status?;
    Some(Applied {
        digest: s.get("digest")?.as_str()?.to_string(),
        image: s.get("image")?.as_str()?.to_string(),
        objects: s
            .get("objects")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default(),
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
        let o = filter_object(&inputs, "r.example/f:v1", "r.example/f@sha256:ab", &owner).unwrap();
        assert_eq!(o["kind"], "WasmPlugin");
        assert_eq!(o["spec"]["url"], "oci://r.example/f@sha256:ab");
        assert_eq!(o["metadata"]["ownerReferences"][0]["uid"], "u-1");
        assert_eq!(o["metadata"]["ownerReferences"][0]["controller"], true);
    }

    #[test]
    fn the_image_list_aggregates_envoy_filter_deployments_only() {
        let a = parse(&fd("envoyFilter", "{}")).unwrap();
        let mut other = fd("envoyFilter", "{}");
        other["metadata"]["name"] = json!("ratings");
        other["spec"]["filter"]["image"] = json!("r.example/g:v2");
        let b = parse(&other).unwrap();
        let c = parse(&fd("wasmPlugin", "{}")).unwrap();
        let list = image_list(&[
            (a, "r.example/f@sha256:aa".into()),
            (b, "r.example/g@sha256:bb".into()),
            (c, "r.example/f@sha256:cc".into()),
        ])
        .unwrap();
        let text = list["data"]["images.yaml"].as_str().unwrap();
        assert!(text.contains("name: default.details-hello"), "{text}");
        assert!(text.contains("image: r.example/f@sha256:aa"), "{text}");
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
    fn status_keeps_the_last_good_result_and_the_transition_time() {
        let a = Applied {
            digest: "sha256:aa".into(),
            image: "r/f@sha256:aa".into(),
            objects: vec!["EnvoyFilter default/x".into()],
        };
        let ok = status(3, Some(&a), None, None, "t1");
        assert_eq!(ok["conditions"][0]["status"], "True");
        assert_eq!(ok["conditions"][0]["lastTransitionTime"], "t1");
        assert_eq!(last_applied(Some(&ok)), Some(a.clone()));
        let still = status(3, Some(&a), None, Some(&ok), "t2");
        assert_eq!(still, ok, "an unchanged world gives the same status");

        let f = Failure::new(Reason::ParametersRejected, "rules[0].direction: unknown");
        let bad = status(4, None, Some(&f), Some(&ok), "t3");
        assert_eq!(bad["conditions"][0]["status"], "False");
        assert_eq!(bad["conditions"][0]["reason"], "ParametersRejected");
        assert_eq!(bad["conditions"][0]["lastTransitionTime"], "t3");
        assert_eq!(
            bad["digest"], "sha256:aa",
            "the serving digest stays in the status"
        );
        assert_eq!(bad["observedGeneration"], 4);
    }
}
