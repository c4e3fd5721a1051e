//! `wasmctl render` on every example of `manifests/examples/`: the output is compared byte for
//! byte with the committed `rendered.yaml` (`UPDATE_SNAPSHOTS=1` rewrites them), it is stable
//! under reordering of the inputs, `-o DIR` writes the same objects, and the seed's example has
//! the seed's shape.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod render_support;

use render_support::{docs, examples, render_cli, workspace_root};
use serde_json::Value;

#[test]
fn every_example_matches_its_snapshot() {
    let update = std::env::var_os("UPDATE_SNAPSHOTS").is_some_and(|v| v == "1");
    let mut failures = Vec::new();
    for ex in examples() {
        let out = render_cli(&ex.inputs, &[]);
        let path = ex.dir.join("rendered.yaml");
        if update {
            std::fs::write(&path, &out).unwrap();
            continue;
        }
        let want = std::fs::read_to_string(&path).unwrap_or_else(|e| {
            panic!(
                "{}: {e} (run UPDATE_SNAPSHOTS=1 cargo test -p wasmctl --test render_snapshots)",
                path.display()
            )
        });
        if want != out {
            failures.push(format!(
                "{} differs from what render prints now:\n{out}\n(if the change is intended: UPDATE_SNAPSHOTS=1 cargo test -p wasmctl --test render_snapshots)",
                path.display()
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn output_does_not_depend_on_input_order() {
    for ex in examples() {
        let mut reversed = ex.inputs.clone();
        reversed.reverse();
        assert_eq!(
            render_cli(&ex.inputs, &[]),
            render_cli(&reversed, &[]),
            "{}",
            ex.dir.display()
        );
    }
    // All examples at once: one image list merging every envoyFilter deployment.
    let all: Vec<_> = examples().into_iter().flat_map(|e| e.inputs).collect();
    let mut rev = all.clone();
    rev.reverse();
    let out = render_cli(&all, &[]);
    assert_eq!(out, render_cli(&rev, &[]));
    let cms: Vec<Value> = docs(&out)
        .into_iter()
        .filter(|d| d["kind"] == "ConfigMap")
        .collect();
    assert_eq!(cms.len(), 1, "one image list for the cluster");
    let list: Value =
        serde_norway::from_str(cms[0]["data"]["images.yaml"].as_str().unwrap()).unwrap();
    let names: Vec<&str> = list["images"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "default.details-v1-wasmfiltering",
            "default.productpage-caller",
            "default.ratings-tcp-bytes"
        ]
    );
}

#[test]
fn a_workload_manifest_without_namespace_is_patched_in_default() {
    // As render selects it: kubectl would apply it wherever its context points.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("in.yaml");
    std::fs::write(
        &path,
        "apiVersion: filters.envoy-wasm-toolkit.io/v1alpha1\nkind: FilterDeployment\nmetadata: {name: f}\nspec:\n  workload: {labels: {app: cart}}\n  filter: {image: r.example/f:v1, rootId: r}\n---\napiVersion: apps/v1\nkind: Deployment\nmetadata: {name: cart}\nspec: {template: {metadata: {labels: {app: cart}}}}\n",
    )
    .unwrap();
    let out = docs(&render_cli(&[path], &[]));
    let patched = out.iter().find(|d| d["kind"] == "Deployment").unwrap();
    assert_eq!(patched["metadata"]["namespace"], "default");
}

#[test]
fn output_dir_holds_one_file_per_object() {
    let ex = examples()
        .into_iter()
        .find(|e| e.dir.ends_with("bookinfo-details"))
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let out_dir = dir.path().join("out");
    let printed = render_cli(&ex.inputs, &["-o", out_dir.to_str().unwrap()]);
    let stream = docs(&render_cli(&ex.inputs, &[]));
    let mut names: Vec<String> = std::fs::read_dir(&out_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            "default.details-v1-wasmfiltering.envoyfilter.yaml",
            "default.details-v1.deployment.yaml",
            "wasm-system.wasm-agent-images.configmap.yaml",
        ],
        "{printed}"
    );
    for doc in stream {
        let file = format!(
            "{}.{}.{}.yaml",
            doc["metadata"]["namespace"].as_str().unwrap(),
            doc["metadata"]["name"].as_str().unwrap(),
            doc["kind"].as_str().unwrap().to_ascii_lowercase()
        );
        let text = std::fs::read_to_string(out_dir.join(&file)).unwrap();
        let v: Value = serde_norway::from_str(&text).unwrap();
        assert_eq!(v, doc, "{file}");
    }
}

#[test]
fn seed_example_has_the_seed_shape() {
    let dir = workspace_root().join("manifests/examples/bookinfo-details");
    let out = std::fs::read_to_string(dir.join("rendered.yaml")).unwrap();
    let docs = docs(&out);
    let ef = docs.iter().find(|d| d["kind"] == "EnvoyFilter").unwrap();
    assert_eq!(ef["apiVersion"], "networking.istio.io/v1alpha3");
    assert_eq!(
        ef["spec"]["workloadSelector"]["labels"],
        serde_json::json!({"app": "details", "version": "v1"})
    );
    // Through ECDS: the Wasm config is an extension config; the HTTP filter names it.
    let ext = &ef["spec"]["configPatches"][0];
    assert_eq!(ext["applyTo"], "EXTENSION_CONFIG");
    assert_eq!(ext["patch"]["operation"], "ADD");
    assert_eq!(
        ext["patch"]["value"]["name"],
        "default.details-v1-wasmfiltering"
    );
    let patch = &ef["spec"]["configPatches"][1];
    assert_eq!(patch["applyTo"], "HTTP_FILTER");
    assert_eq!(
        patch["patch"]["value"]["name"],
        "default.details-v1-wasmfiltering"
    );
    let discovery = &patch["patch"]["value"]["config_discovery"];
    assert_eq!(discovery["config_source"]["ads"], serde_json::json!({}));
    assert_eq!(
        discovery["type_urls"][0],
        "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm"
    );
    assert!(
        patch["patch"]["value"].get("typed_config").is_none(),
        "the listener carries no Wasm config: an update never drains it"
    );
    assert_eq!(patch["match"]["context"], "SIDECAR_INBOUND");
    assert_eq!(
        patch["match"]["listener"]["filterChain"]["filter"]["name"],
        "envoy.filters.network.http_connection_manager"
    );
    assert_eq!(
        patch["match"]["listener"]["filterChain"]["filter"]["subFilter"]["name"],
        "envoy.filters.http.router"
    );
    assert_eq!(patch["patch"]["operation"], "INSERT_BEFORE");
    let tc = &ext["patch"]["value"]["typed_config"];
    assert_eq!(
        tc["@type"],
        "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm"
    );
    assert_eq!(tc["config"]["root_id"], "my_root_id");
    assert_eq!(
        tc["config"]["configuration"]["@type"],
        "type.googleapis.com/google.protobuf.StringValue"
    );
    assert_eq!(
        tc["config"]["configuration"]["value"],
        r#"{"name":"hello","value":"hello details"}"#
    );
    assert_eq!(
        tc["config"]["vm_config"]["runtime"],
        "envoy.wasm.runtime.v8"
    );
    assert_eq!(
        tc["config"]["vm_config"]["code"]["local"]["filename"],
        "/var/local/lib/wasm-filters/default.details-v1-wasmfiltering.wasm"
    );

    let dep = docs.iter().find(|d| d["kind"] == "Deployment").unwrap();
    let ann = &dep["spec"]["template"]["metadata"]["annotations"];
    let volume: Value =
        serde_json::from_str(ann["sidecar.istio.io/userVolume"].as_str().unwrap()).unwrap();
    let mount: Value =
        serde_json::from_str(ann["sidecar.istio.io/userVolumeMount"].as_str().unwrap()).unwrap();
    assert_eq!(
        volume["wasm-filters"]["hostPath"]["path"],
        "/var/local/lib/wasm-filters"
    );
    assert_eq!(
        mount["wasm-filters"]["mountPath"],
        "/var/local/lib/wasm-filters"
    );
    assert_eq!(mount["wasm-filters"]["readOnly"], true);
    // The rest of the workload is kept as given.
    assert_eq!(
        dep["spec"]["template"]["spec"]["containers"][0]["image"],
        "docker.io/istio/examples-bookinfo-details-v1:1.20.3"
    );

    let cm = docs.iter().find(|d| d["kind"] == "ConfigMap").unwrap();
    assert_eq!(cm["metadata"]["name"], "wasm-agent-images");
    assert_eq!(cm["metadata"]["namespace"], "wasm-system");
    let list: Value = serde_norway::from_str(cm["data"]["images.yaml"].as_str().unwrap()).unwrap();
    assert_eq!(
        list,
        serde_json::json!({"images": [{
            "name": "default.details-v1-wasmfiltering",
            "image": "registry.example.com/filters/header-filter:v1",
            "pullSecret": "regcred",
        }]})
    );
}

#[test]
fn wasm_plugin_example_is_pinned_and_complete() {
    let dir = workspace_root().join("manifests/examples/bookinfo-details-wasmplugin");
    let out = std::fs::read_to_string(dir.join("rendered.yaml")).unwrap();
    let docs = docs(&out);
    assert_eq!(docs.len(), 1, "a WasmPlugin needs no agent list nor volume");
    let wp = &docs[0];
    assert_eq!(wp["kind"], "WasmPlugin");
    let s = &wp["spec"];
    assert!(
        s["url"]
            .as_str()
            .unwrap()
            .starts_with("oci://registry.example.com/filters/header-filter@sha256:")
    );
    assert_eq!(s["pluginName"], "my_root_id");
    assert_eq!(
        s["pluginConfig"],
        serde_json::json!({"name": "hello", "value": "hello details"})
    );
    assert_eq!(s["failStrategy"], "FAIL_OPEN");
    assert_eq!(s["phase"], "STATS");
    assert_eq!(s["priority"], 10);
    assert_eq!(s["imagePullSecret"], "regcred");
    assert_eq!(
        s["selector"]["matchLabels"],
        serde_json::json!({"app": "details", "version": "v1"})
    );
    assert_eq!(
        s["match"],
        serde_json::json!([{"mode": "SERVER", "ports": [{"number": 9080}]}])
    );
}

#[test]
fn mode_flag_overrides_the_resource() {
    let ex = examples()
        .into_iter()
        .find(|e| e.dir.ends_with("bookinfo-details"))
        .unwrap();
    let out = render_cli(&ex.inputs, &["--mode", "wasm-plugin"]);
    let d = docs(&out);
    let kinds: Vec<&str> = d.iter().map(|d| d["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["WasmPlugin"], "{out}");
    // --no-resolve keeps the tag: nothing was asked of the registry.
    assert_eq!(
        d[0]["spec"]["url"],
        "oci://registry.example.com/filters/header-filter:v1"
    );
    assert_eq!(d[0]["spec"]["failStrategy"], "FAIL_CLOSE");

    let wp = examples()
        .into_iter()
        .find(|e| e.dir.ends_with("bookinfo-details-wasmplugin"))
        .unwrap();
    let out = render_cli(&wp.inputs, &["--mode", "envoy-filter"]);
    let kinds: Vec<String> = docs(&out)
        .iter()
        .map(|d| d["kind"].as_str().unwrap().to_string())
        .collect();
    // No workload name: no volume patch, only the filter and the agent's list.
    assert_eq!(kinds, ["ConfigMap", "EnvoyFilter"], "{out}");
    // Its image is pinned by digest: with nothing resolved, the EnvoyFilter names the agent's
    // link for that digest (another digest renders another EnvoyFilter), not the
    // per-deployment link a running sidecar never reloads.
    let hex = "8f4e7ef2b6de5d1b3a6d0e6c3b1f6a48e2f1d7f0c2b9e4a5d6c7b8a9f0e1d2c3";
    assert!(
        out.contains(&format!(
            "filename: /var/local/lib/wasm-filters/manifest-sha256-{hex}.wasm"
        )),
        "{out}"
    );
    assert!(
        out.contains(".8f4e7ef2b6de\n"),
        "the VM id names the digest: {out}"
    );
}

#[test]
fn what_is_left_to_the_user_is_said_on_stderr() {
    let wp = examples()
        .into_iter()
        .find(|e| e.dir.ends_with("bookinfo-details-wasmplugin"))
        .unwrap();
    let out = render_support::render_cli_raw(&wp.inputs, &["--mode", "envoy-filter"]);
    assert!(out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("spec.workload.name is not set") && err.contains("no volume patch rendered"),
        "{err}"
    );
    // A workload no deployment selects is named, not silently printed or patched.
    let seed = examples()
        .into_iter()
        .find(|e| e.dir.ends_with("bookinfo-details"))
        .unwrap();
    let workload = seed.dir.join("workload.yaml");
    let out = render_support::render_cli_raw(&[wp.inputs[0].clone(), workload.clone()], &[]);
    assert!(out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!(
            "{}: no envoyFilter FilterDeployment selects",
            workload.display()
        )),
        "{err}"
    );
    assert!(!String::from_utf8_lossy(&out.stdout).contains("kind: Deployment"));
    // The seed's example is complete; the one thing said is that its tag, unresolved, names
    // the per-deployment link, which running sidecars do not reload.
    let out = render_support::render_cli_raw(&seed.inputs, &[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("spec.filter.image registry.example.com/filters/header-filter:v1 is a tag")
            && err.contains("/var/local/lib/wasm-filters/default.details-v1-wasmfiltering.wasm")
            && err.contains("pin the image by digest or pass --module"),
        "{err}"
    );
}
