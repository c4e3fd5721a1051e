//! Invalid input to `wasmctl render` fails with one line naming the file, the field and the
//! reason, and prints nothing on stdout.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod render_support;

use render_support::render_cli_raw;

const GOOD: &str = r#"apiVersion: filters.envoy-wasm-toolkit.io/v1alpha1
kind: FilterDeployment
metadata: {name: details-hello, namespace: default}
spec:
  workload: {name: details-v1, labels: {app: details}}
  filter:
    image: registry.example.com/filters/header-filter:v1
    rootId: my_root_id
    parameters: '{"name":"hello","value":"hello details"}'
"#;

/// Render `text` (written to a file) and return (file path, stderr), asserting failure.
fn fails(text: &str) -> (String, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fd.yaml");
    std::fs::write(&path, text).unwrap();
    let out = render_cli_raw(std::slice::from_ref(&path), &[]);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "accepted:\n{text}");
    assert!(out.stdout.is_empty(), "printed on failure");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(
        stderr.contains(path.to_str().unwrap()),
        "no file name: {stderr}"
    );
    (path.display().to_string(), stderr)
}

#[test]
fn good_input_renders() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fd.yaml");
    std::fs::write(&path, GOOD).unwrap();
    let out = render_cli_raw(&[path], &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn unknown_field_is_named_with_its_path() {
    let (file, e) = fails(&GOOD.replace("rootId:", "rootID:"));
    assert!(
        e.contains(&format!(
            "{file}: spec.filter.rootID: unknown field `rootID`"
        )),
        "{e}"
    );
    let (file, e) = fails(&format!("{GOOD}\"\": 1\n"));
    assert!(
        e.contains(&format!("{file}: \"\": unknown field ``")),
        "{e}"
    );
    let (_, e) = fails(&GOOD.replace("spec:\n", "spec:\n  replicas: 2\n"));
    assert!(e.contains("spec.replicas: unknown field `replicas`"), "{e}");
}

#[test]
fn malformed_yaml_fails_at_once_naming_the_document() {
    // A syntax error used to make the document reader repeat it until memory ran out.
    let (file, e) = fails(&format!("{GOOD}---\nkind: [\n"));
    assert!(
        e.contains(&format!("{file} (document 2): (document): ")),
        "{e}"
    );
    let (file, e) = fails("metadata: \"a\0b\"\n");
    assert!(e.contains(&format!("{file}: (document): ")), "{e}");
}

#[test]
fn a_workload_manifest_needs_a_valid_name_and_namespace() {
    // Its name and namespace make an output file name (render -o DIR).
    let workload = "---\napiVersion: apps/v1\nkind: Deployment\nmetadata: {name: ../../x, namespace: default}\nspec: {template: {metadata: {labels: {app: details}}}}\n";
    let (file, e) = fails(&format!("{GOOD}{workload}"));
    assert!(
        e.contains(&format!("{file} (document 2): metadata.name: ")),
        "{e}"
    );
    let workload = workload.replace(
        "name: ../../x, namespace: default",
        "name: details-v1, namespace: Default",
    );
    let (_, e) = fails(&format!("{GOOD}{workload}"));
    assert!(e.contains("metadata.namespace: "), "{e}");
}

#[test]
fn bad_image_reference() {
    let (file, e) = fails(&GOOD.replace(
        "registry.example.com/filters/header-filter:v1",
        "registry.example.com/Filters/UPPER:v1",
    ));
    assert!(
        e.contains(&format!(
            "{file}: spec.filter.image: invalid image reference"
        )),
        "{e}"
    );
}

#[test]
fn parameters_that_are_not_json() {
    let (file, e) = fails(&GOOD.replace(
        r#"'{"name":"hello","value":"hello details"}'"#,
        r#"'{"name":"hello",}'"#,
    ));
    assert!(
        e.contains(&format!("{file}: spec.filter.parameters: not JSON")),
        "{e}"
    );
    let (_, e) = fails(&GOOD.replace(r#"'{"name":"hello","value":"hello details"}'"#, "'[1]'"));
    assert!(
        e.contains("spec.filter.parameters: must be a JSON object"),
        "{e}"
    );
}

#[test]
fn wrong_values_and_missing_fields() {
    let (_, e) = fails(&GOOD.replace("    rootId: my_root_id\n", ""));
    assert!(e.contains("spec.filter: missing field `rootId`"), "{e}");
    let (_, e) = fails(&GOOD.replace("name: details-v1,", "kind: Pod, name: details-v1,"));
    assert!(
        e.contains("spec.workload.kind: unknown variant `Pod`"),
        "{e}"
    );
    let (_, e) = fails(&GOOD.replace("labels: {app: details}", "labels: {}"));
    assert!(e.contains("spec.workload.labels: empty"), "{e}");
    let (_, e) = fails(&GOOD.replace("name: details-hello,", "name: Details_Hello,"));
    assert!(e.contains("metadata.name:"), "{e}");
    let (_, e) = fails(&GOOD.replace("v1alpha1", "v1"));
    assert!(e.contains("apiVersion:"), "{e}");
    let (_, e) = fails(&format!("{GOOD}  placement: {{direction: sideways}}\n"));
    assert!(
        e.contains("spec.placement.direction: unknown variant `sideways`"),
        "{e}"
    );
    let (_, e) = fails("apiVersion: v1\nkind: Service\nmetadata: {name: x}\n");
    assert!(e.contains("kind:"), "{e}");
}

#[test]
fn target_refs_need_the_wasm_plugin_delivery() {
    let text = format!(
        "{GOOD}  wasmPlugin:\n    targetRefs: [{{group: gateway.networking.k8s.io, kind: Gateway, name: gw}}]\n"
    );
    let (_, e) = fails(&text);
    assert!(e.contains("spec.wasmPlugin.targetRefs"), "{e}");
}

#[test]
fn duplicate_deployments_across_files() {
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a.yaml");
    let b = dir.path().join("b.yaml");
    std::fs::write(&a, GOOD).unwrap();
    std::fs::write(&b, GOOD).unwrap();
    let out = render_cli_raw(&[a.clone(), b.clone()], &[]);
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        e.contains(b.to_str().unwrap()) && e.contains(a.to_str().unwrap()),
        "both files named: {e}"
    );
}

#[test]
fn target_refs_are_named_when_they_cannot_be() {
    let refs = "  targetRefs:\n  - {group: gateway.networking.k8s.io, kind: Gateway, name: gw}\n";
    let by_ref = GOOD.replace(
        "  workload: {name: details-v1, labels: {app: details}}\n",
        refs,
    ) + "  delivery: trafficExtension\n";
    // Labels beside targetRefs.
    let (file, e) = fails(&format!("{GOOD}{refs}  delivery: wasmPlugin\n"));
    assert!(
        e.contains(&format!(
            "{file}: spec.targetRefs: set together with spec.workload.labels"
        )),
        "{e}"
    );
    // A kind Istio cannot target.
    let (file, e) = fails(&by_ref.replace("kind: Gateway", "kind: Deployment"));
    assert!(
        e.contains(&format!("{file}: spec.targetRefs[0]: Deployment")),
        "{e}"
    );
    // The envoyFilter delivery cannot attach by reference, and says why.
    let (file, e) = fails(&by_ref.replace("delivery: trafficExtension", "delivery: envoyFilter"));
    assert!(
        e.contains(&format!("{file}: spec.targetRefs: only the image-based")),
        "{e}"
    );
    assert!(e.contains("sidecar.istio.io/userVolume"), "{e}");
}
