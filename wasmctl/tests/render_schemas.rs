//! Everything `render` prints and everything `manifests/` holds is valid where it is applied:
//! Istio resources against Istio's CRD schemas (`crd-all.gen.yaml` of the pinned Istio module, with a
//! structural-schema validator that rejects fields the API server would prune), built-in objects
//! against the Kubernetes types of `k8s-openapi` (unknown fields rejected), FilterDeployments
//! against our own CRD; `kubectl kustomize` renders every overlay offline.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod render_support;

use render_support::{docs, examples, istio_crd, kubectl, workspace_root};
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use std::path::Path;
use wasmctl::render::{self, Options, Resolved, schema, spec::Delivery};

/// Deserialize `v` as `T`; also the paths of fields `T` does not know (k8s-openapi itself
/// skips them silently, as the API server prunes them).
fn typed<T: DeserializeOwned>(v: &Value) -> Result<(T, Vec<String>), String> {
    let mut unknown = Vec::new();
    let t: T = serde_ignored::deserialize(v.clone(), |p| {
        // serde_ignored marks each Option level with "?": drop those.
        let path: Vec<String> = p
            .to_string()
            .split('.')
            .filter(|s| *s != "?")
            .map(String::from)
            .collect();
        unknown.push(path.join("."));
    })
    .map_err(|e| e.to_string())?;
    Ok((t, unknown))
}

/// [`typed`], failing on an invalid object or any unknown field.
fn strict<T: DeserializeOwned>(v: &Value, what: &str) -> T {
    let (t, unknown) = typed::<T>(v).unwrap_or_else(|e| {
        panic!(
            "{what}: not a valid {}: {e}\n{v:#}",
            std::any::type_name::<T>()
        )
    });
    assert!(
        unknown.is_empty(),
        "{what}: fields unknown to {}: {unknown:?}\n{v:#}",
        std::any::type_name::<T>()
    );
    t
}

#[test]
fn built_in_checks_catch_unknown_fields_and_bad_types() {
    use k8s_openapi::api::{apps::v1::Deployment, core::v1::ConfigMap};
    let mut d = base_deployment();
    assert!(typed::<Deployment>(&d).unwrap().1.is_empty());
    d["spec"]["template"]["metadata"]["anotations"] = json!({"a": "b"});
    let unknown = typed::<Deployment>(&d).unwrap().1;
    assert_eq!(unknown, ["spec.template.metadata.anotations"]);
    let mut d = base_deployment();
    d["spec"]["replicas"] = json!("one");
    assert!(typed::<Deployment>(&d).is_err());
    let cm = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x"}, "data": {"k": 1}});
    assert!(
        typed::<ConfigMap>(&cm).is_err(),
        "ConfigMap data values are strings"
    );
}

fn own_crd() -> Value {
    let text =
        std::fs::read_to_string(workspace_root().join("manifests/crd/filterdeployment.yaml"))
            .unwrap();
    docs(&text).remove(0)
}

/// Check one object by kind: Istio kinds and FilterDeployment by schema, built-ins by type.
fn check_object(v: &Value, what: &str) {
    use k8s_openapi::api::{apps::v1 as apps, core::v1 as core};
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1 as ext;
    let kind = v["kind"]
        .as_str()
        .unwrap_or_else(|| panic!("{what}: no kind"));
    let crd = match kind {
        "EnvoyFilter" | "WasmPlugin" | "TrafficExtension" => Some(istio_crd(kind)),
        "FilterDeployment" => Some(own_crd()),
        _ => None,
    };
    if let Some(crd) = crd {
        let r = schema::validate_resource(&crd, v);
        let lines: Vec<String> = r.violations.iter().map(ToString::to_string).collect();
        assert!(
            lines.is_empty(),
            "{what}: {kind} breaks its CRD schema:\n{}\n{v:#}",
            lines.join("\n")
        );
        // The metadata the API server checks itself.
        let _: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta =
            strict(&v["metadata"], &format!("{what} metadata"));
        return;
    }
    match kind {
        "ConfigMap" => {
            let _: core::ConfigMap = strict(v, what);
        }
        "Namespace" => {
            let _: core::Namespace = strict(v, what);
        }
        "ServiceAccount" => {
            let _: core::ServiceAccount = strict(v, what);
        }
        "Deployment" => {
            let _: apps::Deployment = strict(v, what);
        }
        "DaemonSet" => {
            let _: apps::DaemonSet = strict(v, what);
        }
        "StatefulSet" => {
            let _: apps::StatefulSet = strict(v, what);
        }
        "CustomResourceDefinition" => {
            let _: ext::CustomResourceDefinition = strict(v, what);
        }
        "ClusterRole" => {
            let _: k8s_openapi::api::rbac::v1::ClusterRole = strict(v, what);
        }
        "ClusterRoleBinding" => {
            let _: k8s_openapi::api::rbac::v1::ClusterRoleBinding = strict(v, what);
        }
        "Role" => {
            let _: k8s_openapi::api::rbac::v1::Role = strict(v, what);
        }
        "RoleBinding" => {
            let _: k8s_openapi::api::rbac::v1::RoleBinding = strict(v, what);
        }
        other => panic!("{what}: no check for kind {other}"),
    }
}

fn render_example(inputs: &[std::path::PathBuf], mode: Option<Delivery>) -> Vec<Value> {
    let all = inputs
        .iter()
        .map(|p| render::parse_file(p).unwrap())
        .collect();
    let inputs = render::merge(all).unwrap();
    let by_ref = inputs
        .deployments
        .iter()
        .any(|s| !s.deployment.spec.target_refs.is_empty());
    match render::render(&inputs, &Options { mode }, &Resolved::default()) {
        Ok(objects) => objects.into_iter().map(|o| o.value).collect(),
        // Attached by reference: no envoyFilter form, and render names the field.
        Err(e) if by_ref && mode == Some(Delivery::EnvoyFilter) => {
            assert!(e.to_string().contains("spec.targetRefs"), "{e}");
            Vec::new()
        }
        Err(e) => panic!("{e}"),
    }
}

#[test]
fn istio_crds_serve_the_versions_rendered() {
    let ef = istio_crd("EnvoyFilter");
    assert!(
        schema::crd_schema(&ef, "v1alpha3").is_some(),
        "EnvoyFilter v1alpha3 is served"
    );
    let wp = istio_crd("WasmPlugin");
    assert!(
        schema::crd_schema(&wp, "v1alpha1").is_some(),
        "WasmPlugin v1alpha1 is served"
    );
    let te = istio_crd("TrafficExtension");
    assert!(
        schema::crd_schema(&te, "v1alpha1").is_some(),
        "TrafficExtension v1alpha1 is served"
    );
}

#[test]
fn every_rendered_object_validates_in_both_modes() {
    let mut seen = std::collections::BTreeSet::new();
    for ex in examples() {
        for mode in [
            None,
            Some(Delivery::EnvoyFilter),
            Some(Delivery::WasmPlugin),
            Some(Delivery::TrafficExtension),
        ] {
            for v in render_example(&ex.inputs, mode) {
                let what = format!("{} ({mode:?}): {}", ex.dir.display(), v["kind"]);
                check_object(&v, &what);
                seen.insert(v["kind"].as_str().unwrap().to_string());
                // A strategic-merge patch: merged into a complete workload, it must still be one.
                if v["kind"] == "Deployment" && v["spec"].get("selector").is_none() {
                    let base = base_deployment();
                    let merged = merge(base, &v);
                    check_object(&merged, &format!("{what} (patch merged into a Deployment)"));
                    assert_eq!(
                        merged["spec"]["template"]["metadata"]["annotations"],
                        v["spec"]["template"]["metadata"]["annotations"]
                    );
                }
            }
        }
    }
    for kind in [
        "EnvoyFilter",
        "WasmPlugin",
        "TrafficExtension",
        "ConfigMap",
        "Deployment",
    ] {
        assert!(seen.contains(kind), "no {kind} was rendered: {seen:?}");
    }
}

fn base_deployment() -> Value {
    let text = std::fs::read_to_string(
        workspace_root().join("manifests/examples/bookinfo-details/workload.yaml"),
    )
    .unwrap();
    docs(&text).remove(0)
}

/// JSON merge (what a strategic-merge patch does to maps).
fn merge(mut base: Value, patch: &Value) -> Value {
    match (base.as_object_mut(), patch.as_object()) {
        (Some(b), Some(p)) => {
            for (k, v) in p {
                let cur = b.remove(k).unwrap_or(Value::Null);
                b.insert(
                    k.clone(),
                    if cur.is_object() {
                        merge(cur, v)
                    } else {
                        v.clone()
                    },
                );
            }
            base
        }
        _ => patch.clone(),
    }
}

#[test]
fn examples_validate_against_our_crd() {
    let crd = own_crd();
    check_object(&crd, "manifests/crd/filterdeployment.yaml");
    for ex in examples() {
        for p in &ex.inputs {
            for v in docs(&std::fs::read_to_string(p).unwrap()) {
                // FilterDeployments against our CRD, workloads against the Kubernetes types.
                check_object(&v, &p.display().to_string());
            }
        }
    }
}

#[test]
fn our_crd_is_structural_and_matches_the_parser() {
    let crd = own_crd();
    let s = schema::crd_schema(&crd, "v1alpha1").unwrap();
    // Structural: every node has a type, unless it preserves unknown fields or is int-or-string.
    fn walk(s: &Value, path: &str) {
        let typed = s.get("type").is_some()
            || s.get("x-kubernetes-preserve-unknown-fields") == Some(&json!(true))
            || s.get("x-kubernetes-int-or-string") == Some(&json!(true));
        assert!(typed, "{path}: no type");
        if let Some(ps) = s.get("properties").and_then(Value::as_object) {
            for (k, v) in ps {
                walk(v, &format!("{path}.{k}"));
            }
        }
        if let Some(i) = s.get("items") {
            walk(i, &format!("{path}[]"));
        }
        if let Some(a) = s.get("additionalProperties").filter(|a| a.is_object()) {
            walk(a, &format!("{path}.*"));
        }
    }
    walk(s, "");
    // Every field the schema declares, the parser takes; and the reverse.
    let full = json!({
        "apiVersion": "filters.envoy-wasm-toolkit.io/v1alpha1",
        "kind": "FilterDeployment",
        "metadata": {"name": "all-fields", "namespace": "team-a"},
        "spec": {
            "workload": {"kind": "StatefulSet", "name": "db", "labels": {"app": "db"}, "namespace": "data"},
            "filter": {
                "image": "registry.example.com/f/h:v1", "rootId": "r", "id": "x", "vmId": "vm",
                "parameters": {"name": "a", "value": "b"}, "pullSecret": "regcred",
                "type": "NETWORK",
            },
            "placement": {"direction": "gateway", "port": 8443},
            "failurePolicy": "reload",
            "delivery": "wasmPlugin",
            "wasmPlugin": {"phase": "AUTHZ", "priority": -5},
        },
    });
    let r = schema::validate_resource(&crd, &full);
    assert!(r.violations.is_empty(), "{:?}", r.violations);
    let yaml = serde_norway::to_string(&full).unwrap();
    render::parse_str(&yaml, "all-fields.yaml").unwrap();
    // By reference instead of labels (the two exclude each other): spec.targetRefs, and the
    // delivery options' targetRefs.
    let mut by_ref = full.clone();
    by_ref["spec"]["workload"] = json!({"namespace": "data"});
    by_ref["spec"]["delivery"] = json!("trafficExtension");
    by_ref["spec"]["trafficExtension"] = json!({"phase": "AUTHN", "priority": 1});
    by_ref["spec"].as_object_mut().unwrap().remove("wasmPlugin");
    by_ref["spec"]["targetRefs"] = json!([
        {"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": "gw"}]);
    let r = schema::validate_resource(&crd, &by_ref);
    assert!(r.violations.is_empty(), "{:?}", r.violations);
    let yaml = serde_norway::to_string(&by_ref).unwrap();
    render::parse_str(&yaml, "by-ref.yaml").unwrap();
    let mut old_place = full.clone();
    old_place["spec"]["wasmPlugin"]["targetRefs"] = by_ref["spec"]["targetRefs"].clone();
    let r = schema::validate_resource(&crd, &old_place);
    assert!(r.violations.is_empty(), "{:?}", r.violations);
    let yaml = serde_norway::to_string(&old_place).unwrap();
    render::parse_str(&yaml, "old-place.yaml").unwrap();
    // Both refuse an unknown field.
    let mut bad = full.clone();
    bad["spec"]["filter"]["rootID"] = json!("r");
    let r = schema::validate_resource(&crd, &bad);
    assert_eq!(
        r.violations[0].path, ".spec.filter.rootID",
        "{:?}",
        r.violations
    );
    let e = render::parse_str(&serde_norway::to_string(&bad).unwrap(), "bad.yaml")
        .unwrap_err()
        .to_string();
    assert!(e.contains("spec.filter") && e.contains("rootID"), "{e}");
}

#[test]
fn validator_catches_what_the_api_server_refuses_or_prunes() {
    let ef_crd = istio_crd("EnvoyFilter");
    let ex = examples()
        .into_iter()
        .find(|e| e.dir.ends_with("bookinfo-details"))
        .unwrap();
    let ef = render_example(&ex.inputs, None)
        .into_iter()
        .find(|v| v["kind"] == "EnvoyFilter")
        .unwrap();
    assert!(
        schema::validate_resource(&ef_crd, &ef)
            .violations
            .is_empty()
    );

    let broken = |f: &dyn Fn(&mut Value)| {
        let mut v = ef.clone();
        f(&mut v);
        schema::validate_resource(&ef_crd, &v).violations
    };
    // An unknown field where the schema prunes.
    let v = broken(&|v| v["spec"]["configPatches"][0]["patch"]["bogus"] = json!(1));
    assert_eq!(v[0].path, ".spec.configPatches[0].patch.bogus", "{v:?}");
    assert!(v[0].reason.contains("unknown field"), "{v:?}");
    // Wrong enum value, wrong type, null where not nullable.
    let v = broken(&|v| v["spec"]["configPatches"][0]["applyTo"] = json!("HTTP_FILTERS"));
    assert_eq!(v[0].path, ".spec.configPatches[0].applyTo", "{v:?}");
    let v =
        broken(&|v| v["spec"]["configPatches"][0]["match"]["listener"]["portNumber"] = json!("80"));
    assert!(v[0].reason.contains("expected integer"), "{v:?}");
    let v = broken(&|v| v["spec"]["workloadSelector"] = Value::Null);
    assert!(v[0].reason.contains("null"), "{v:?}");
    // patch.value preserves unknown fields: any Envoy config is kept as is.
    assert!(
        broken(&|v| v["spec"]["configPatches"][0]["patch"]["value"]["anything"] = json!({"x": 1}))
            .is_empty()
    );
    // Wrong apiVersion.
    let v = broken(&|v| v["apiVersion"] = json!("networking.istio.io/v9"));
    assert_eq!(v[0].path, ".apiVersion", "{v:?}");

    let wp_crd = istio_crd("WasmPlugin");
    let wp = render_example(&ex.inputs, Some(Delivery::WasmPlugin)).remove(0);
    assert!(
        schema::validate_resource(&wp_crd, &wp)
            .violations
            .is_empty()
    );
    let mut bad = wp.clone();
    bad["spec"]["priority"] = json!(4_294_967_296_u64);
    let v = schema::validate_resource(&wp_crd, &bad).violations;
    assert!(v[0].reason.contains("out of range"), "{v:?}");
    let mut bad = wp.clone();
    bad["spec"]["failStrategy"] = json!("FAIL_CLOSED");
    assert_eq!(
        schema::validate_resource(&wp_crd, &bad).violations[0].path,
        ".spec.failStrategy"
    );
    let mut bad = wp.clone();
    bad["spec"]["sha256"] = json!("not-hex");
    assert!(
        schema::validate_resource(&wp_crd, &bad).violations[0]
            .reason
            .contains("pattern")
    );

    // int-or-string and nullable, on a schema of their own.
    let s = json!({"type": "object", "properties": {
        "port": {"x-kubernetes-int-or-string": true},
        "maybe": {"type": "string", "nullable": true},
        "free": {"type": "object", "x-kubernetes-preserve-unknown-fields": true},
        "map": {"type": "object", "additionalProperties": {"type": "integer"}},
    }});
    let ok = json!({"port": "http", "maybe": null, "free": {"a": [1]}, "map": {"a": 1}});
    assert!(schema::validate(&s, &ok).violations.is_empty());
    assert!(
        schema::validate(&s, &json!({"port": 80}))
            .violations
            .is_empty()
    );
    assert_eq!(
        schema::validate(&s, &json!({"port": true}))
            .violations
            .len(),
        1
    );
    assert_eq!(
        schema::validate(&s, &json!({"map": {"a": "x"}})).violations[0].path,
        ".map.a"
    );
}

fn kustomize(dir: &Path) -> Option<String> {
    let bin = kubectl()?;
    let out = std::process::Command::new(bin)
        .arg("kustomize")
        .arg(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "kubectl kustomize {}: {}",
        dir.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    Some(String::from_utf8(out.stdout).unwrap())
}

#[test]
fn every_overlay_renders_offline_and_validates() {
    if kubectl().is_none() {
        // On a developer's machine the offline checks above still run; in CI a missing tool is
        // a failure, never a silent skip.
        assert!(
            std::env::var_os("CI").is_none_or(|v| v.is_empty() || v == "false"),
            "kubectl with kustomize is not installed (scripts/setup installs it); CI is set, so \
             this fails instead of skipping"
        );
        eprintln!(
            "SKIPPED: kubectl with kustomize is not installed and scripts/setup could not install it"
        );
        return;
    }
    let root = workspace_root().join("manifests");
    let mut dirs = vec![
        root.clone(),
        root.join("crd"),
        root.join("agent"),
        root.join("controller"),
    ];
    dirs.extend(examples().into_iter().map(|e| e.dir));
    for dir in dirs {
        let out = kustomize(&dir).unwrap();
        let objects = docs(&out);
        assert!(!objects.is_empty(), "{}: nothing rendered", dir.display());
        for v in &objects {
            check_object(
                v,
                &format!("kubectl kustomize {}: {}", dir.display(), v["kind"]),
            );
        }
    }
    // The agent as the contract describes it.
    let out = kustomize(&root.join("agent")).unwrap();
    let ds = docs(&out)
        .into_iter()
        .find(|v| v["kind"] == "DaemonSet")
        .unwrap();
    let pod = &ds["spec"]["template"]["spec"];
    let c = &pod["containers"][0];
    let args: Vec<&str> = c["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert_eq!(
        args.join(" "),
        "agent --images /etc/wasm-agent/images/images.yaml --dir /var/local/lib/wasm-filters --secrets-dir /etc/wasm-agent/secrets --listen 0.0.0.0:9090"
    );
    assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(c["ports"][0]["containerPort"], 9090);
    assert_eq!(c["securityContext"]["readOnlyRootFilesystem"], true);
    assert_eq!(c["securityContext"]["runAsNonRoot"], true);
    assert!(c["resources"]["requests"].is_object() && c["resources"]["limits"].is_object());
    let host = pod["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["hostPath"].is_object())
        .unwrap();
    assert_eq!(host["hostPath"]["path"], "/var/local/lib/wasm-filters");
    assert_eq!(host["hostPath"]["type"], "DirectoryOrCreate");
    // No image list among the manifests (re-applying them must not empty the controller's):
    // the DaemonSet mounts it optional.
    assert!(
        !docs(&out).iter().any(|v| v["kind"] == "ConfigMap"),
        "manifests/ holds a ConfigMap"
    );
    let list = pod["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "images")
        .unwrap();
    assert_eq!(list["configMap"]["name"], "wasm-agent-images");
    assert_eq!(list["configMap"]["optional"], true);
}

/// A waypoint's attachment: `spec.targetRefs` naming a Service renders a WasmPlugin and a
/// TrafficExtension that Istio's CRD schemas accept (no waypoint runs in the tests).
#[test]
fn a_service_target_for_a_waypoint_renders_valid_objects() {
    let text = std::fs::read_to_string(
        workspace_root().join("manifests/examples/gateway-trafficextension/filterdeployment.yaml"),
    )
    .unwrap()
    .replace(
        "  - group: gateway.networking.k8s.io\n    kind: Gateway\n    name: bookinfo-gateway\n",
        "  - kind: Service\n    name: reviews\n",
    );
    assert!(text.contains("kind: Service"), "the example moved: {text}");
    let inputs = render::parse_str(&text, "waypoint.yaml").unwrap();
    for mode in [Delivery::WasmPlugin, Delivery::TrafficExtension] {
        let objects =
            render::render(&inputs, &Options { mode: Some(mode) }, &Resolved::default()).unwrap();
        assert_eq!(objects.len(), 1);
        let v = &objects[0].value;
        assert_eq!(v["spec"]["targetRefs"][0]["kind"], "Service", "{v}");
        assert!(v["spec"].get("selector").is_none(), "{v}");
        check_object(v, &format!("{mode:?} for a waypoint"));
    }
}
