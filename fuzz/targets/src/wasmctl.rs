//! wasmctl's parsers: image references, manifests and runtime configs, the agent's image list,
//! `FilterDeployment`s and what `render` makes of them.

use oci_client::Reference;
use serde::Deserialize as _;
use serde_json::Value;
use wasmctl::agent::list::{self, Entry};
use wasmctl::oci::layout::{self, Manifest};
use wasmctl::oci::runtime_config::RuntimeConfig;
use wasmctl::oci::{media, registry};
use wasmctl::render::{self, Options, Resolved, spec::Delivery};

fn parts(r: &Reference) -> (String, Option<String>, Option<String>) {
    (
        r.whole(),
        r.tag().map(str::to_string),
        r.digest().map(str::to_string),
    )
}

/// `image_reference`: any text as an image reference.
///
/// - An accepted reference is normalised: parsing its whole form again gives the same
///   reference, and oci-client's own parser (Docker's grammar as a regular expression) reads the
///   text as the same reference; the one extension is a bracketed IPv6 registry.
/// - `registry::parse_reference` (what the CLI, the agent and `render` call) is the same parser
///   after trimming and an `oci://` prefix.
/// - A refused reference's error names the part that is wrong.
pub fn image_reference(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let ours = wasmctl::oci::reference::parse(text);
    let cli = registry::parse_reference(text);
    let inner = text.trim().trim_start_matches("oci://");
    match (&cli, wasmctl::oci::reference::parse(inner)) {
        (Ok(a), Ok(b)) => assert_eq!(parts(a), parts(&b)),
        (Err(_), Err(_)) => {}
        (a, b) => panic!("parse_reference({text:?}) is {a:?}, parse of the trimmed text {b:?}"),
    }
    match ours {
        Ok(r) => {
            let whole = r.whole();
            match wasmctl::oci::reference::parse(&whole) {
                Ok(again) => assert_eq!(parts(&again), parts(&r), "{text:?} -> {whole:?}"),
                Err(e) => panic!("{text:?} reads as {whole:?}, which is refused: {e}"),
            }
            if r.registry().starts_with('[') {
                return;
            }
            match text.parse::<Reference>() {
                Ok(theirs) => assert_eq!(parts(&theirs), parts(&r), "oci-client reads {text:?}"),
                Err(e) => panic!("we accept {text:?} ({whole}), oci-client refuses it: {e}"),
            }
        }
        Err(e) => {
            assert!(
                ["empty", "registry", "repository", "tag", "digest"]
                    .iter()
                    .any(|part| e.contains(part)),
                "{text:?}: the error names no part: {e}"
            );
        }
    }
}

/// The layer Istio's fetcher reads the module from, when it loads the image (with any
/// `plugin.wasm` in a tar.gz present).
fn istio_layer(m: &Manifest) -> Option<usize> {
    let last = m.layers.len().checked_sub(1)?;
    if m.media_type.as_deref() == Some(media::DOCKER_MANIFEST) {
        return (m.layers[last].media_type == media::DOCKER_LAYER_TAR_GZIP).then_some(last);
    }
    if m.layers[last].media_type == media::OCI_LAYER_TAR_GZIP {
        return Some(last);
    }
    if m.layers.len() != 2 {
        return None;
    }
    m.layers
        .iter()
        .position(|l| l.media_type == media::SOLO_WASM_LAYER)
}

/// The layer of Istio's oci variant, which it reads when the compat variant fails (a tar.gz
/// without `plugin.wasm`): not for Docker manifests; exactly two layers, the first solo one.
fn istio_oci_layer(m: &Manifest) -> Option<usize> {
    if m.media_type.as_deref() == Some(media::DOCKER_MANIFEST) || m.layers.len() != 2 {
        return None;
    }
    m.layers
        .iter()
        .position(|l| l.media_type == media::SOLO_WASM_LAYER)
}

/// `image_layout`: a manifest, then after a NUL byte a runtime config blob, then after another a
/// compat layer (tar.gz).
///
/// - An accepted manifest survives its own serialisation (what `push` uploads).
/// - `locate` (what `pull` and the agent read) names a layer the manifest has, of a type it
///   can read; when Istio would load the image, `locate` picks the layer Istio reads, so the
///   agent and Istio's fetcher deliver the same module. The same holds when a tar.gz `locate`
///   picked has no `plugin.wasm`: `locate_without_plugin` names a raw wasm layer, the one Istio
///   then reads when it loads the image.
/// - The verdicts give a reason whenever they refuse, and `None` ("not checked") judges as a
///   tar.gz that holds `plugin.wasm`.
/// - A runtime config `RuntimeConfig::parse` accepts reads back the same from its JSON.
/// - `extract_compat` never returns more than its cap, whatever the archive claims.
pub fn image_layout(data: &[u8]) {
    let mut parts = data.splitn(3, |&b| b == 0);
    let manifest = parts.next().unwrap_or_default();
    let config = parts.next().unwrap_or_default();
    let targz = parts.next().unwrap_or_default();
    for max in [0, 16, 4096] {
        if let Ok(Some(module)) = layout::extract_compat(targz, max) {
            assert!(
                module.len() as u64 <= max,
                "{} bytes over a cap of {max}",
                module.len()
            );
        }
    }
    if let Ok(m) = Manifest::parse(manifest) {
        let json = m.to_json();
        match Manifest::parse(&json) {
            Ok(again) => assert_eq!(again, m, "manifest changed through its JSON"),
            Err(e) => panic!("our own manifest JSON is refused: {e}"),
        }
        let located = layout::locate(&m);
        match &located {
            Ok(l) => {
                let layer = m.layers.get(l.layer).unwrap_or_else(|| {
                    panic!("layer {} of {}", l.layer, m.layers.len());
                });
                let tar = [media::OCI_LAYER_TAR_GZIP, media::DOCKER_LAYER_TAR_GZIP];
                let raw = [
                    media::SOLO_WASM_LAYER,
                    media::CNCF_WASM_LAYER,
                    media::WASM_TO_OCI_LAYER,
                ];
                let kinds: &[&str] = if l.tar_gz { &tar } else { &raw };
                assert!(
                    kinds.contains(&layer.media_type.as_str()),
                    "{:?} located in a layer of type {}",
                    l.layout,
                    layer.media_type
                );
            }
            Err(e) => assert!(!e.is_empty()),
        }
        for has_plugin in [None, Some(true), Some(false)] {
            for v in [
                layout::istio_verdict(&m, has_plugin),
                layout::envoy_gateway_verdict(&m, has_plugin),
            ] {
                assert!(
                    v.loads || !v.why.is_empty(),
                    "{} refuses, no reason",
                    v.consumer
                );
            }
        }
        assert_eq!(
            layout::istio_verdict(&m, None),
            layout::istio_verdict(&m, Some(true))
        );
        if let Ok(l) = &located
            && l.tar_gz
        {
            let instead = layout::locate_without_plugin(&m);
            if let Ok(i) = &instead {
                let t = m.layers.get(i.layer).map(|l| l.media_type.as_str());
                assert!(
                    !i.tar_gz
                        && [
                            media::SOLO_WASM_LAYER,
                            media::CNCF_WASM_LAYER,
                            media::WASM_TO_OCI_LAYER
                        ]
                        .iter()
                        .any(|r| Some(*r) == t),
                    "without plugin.wasm, pull reads layer {} of type {t:?}",
                    i.layer
                );
            }
            if layout::istio_verdict(&m, Some(false)).loads {
                let want = istio_oci_layer(&m);
                assert!(want.is_some(), "Istio loads it from no layer we know");
                match instead {
                    Ok(i) => assert_eq!(Some(i.layer), want, "without plugin.wasm"),
                    Err(e) => {
                        panic!("Istio loads the image without plugin.wasm, pull refuses: {e}")
                    }
                }
            }
        }
        if layout::istio_verdict(&m, None).loads {
            let want = istio_layer(&m);
            assert!(want.is_some(), "Istio loads it from no layer we know");
            match located {
                Ok(l) => assert_eq!(
                    Some(l.layer),
                    want,
                    "pull reads layer {}, Istio layer {want:?}",
                    l.layer
                ),
                Err(e) => panic!("Istio loads the image, pull refuses it: {e}"),
            }
        }
    }
    if let Ok(c) = RuntimeConfig::parse(config) {
        match RuntimeConfig::parse(&c.to_json()) {
            Ok(again) => assert_eq!(again, c),
            Err(e) => panic!("our own runtime config is refused: {e}"),
        }
    }
}

#[derive(serde::Serialize)]
struct ImageList<'a> {
    images: &'a [Entry],
}

/// `agent_image_list`: any text as the agent's image list (YAML or plain lines).
///
/// - Every accepted entry has a valid, unique name (a file name in the agent's directory) and an
///   image reference the agent can pull.
/// - The list written back as YAML reads back the same; as plain lines (when it has nothing
///   but names and images), it reads back as the same names and references.
/// - An error names the entry (`images[i]`), the line, or the YAML position.
pub fn agent_image_list(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match list::parse(text) {
        Ok(entries) => {
            let mut names = std::collections::BTreeSet::new();
            for e in &entries {
                if let Err(r) = list::valid_name(&e.name) {
                    panic!("accepted entry with a bad name: {r}");
                }
                assert!(names.insert(e.name.clone()), "{} twice", e.name);
                if let Err(r) = registry::parse_reference(&e.image) {
                    panic!("accepted entry with a bad image: {r}");
                }
            }
            let yaml = match serde_norway::to_string(&ImageList { images: &entries }) {
                Ok(y) => y,
                Err(e) => panic!("cannot write the list: {e}"),
            };
            match list::parse(&yaml) {
                Ok(again) => assert_eq!(again, entries, "through YAML:\n{yaml}"),
                Err(e) => panic!("the list written as YAML is refused: {e}\n{yaml}"),
            }
            let simple = entries
                .iter()
                .all(|e| e.pull_secret.is_none() && e.ecds.is_none() && e.verify_key.is_none());
            if simple && !entries.is_empty() {
                let lines: String = entries
                    .iter()
                    .map(|e| format!("{} {}\n", e.name, e.image))
                    .collect();
                match list::parse(&lines) {
                    Ok(again) => {
                        assert_eq!(again.len(), entries.len());
                        for (a, b) in again.iter().zip(&entries) {
                            assert_eq!(a.name, b.name);
                            let (ra, rb) = (
                                registry::parse_reference(&a.image).map(|r| r.whole()),
                                registry::parse_reference(&b.image).map(|r| r.whole()),
                            );
                            assert_eq!(ra.ok(), rb.ok(), "{lines}");
                        }
                    }
                    Err(e) => panic!("the list written as lines is refused: {e}\n{lines}"),
                }
            }
        }
        Err(e) => assert!(
            e.contains("images[") || e.contains("line ") || e.starts_with("not a valid image list"),
            "the error names no entry or line: {e}"
        ),
    }
}

const DIGEST: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

/// `render_deployment`: any text as `render`'s input (FilterDeployments and workload
/// manifests), rendered in each delivery mode, unresolved and resolved.
///
/// - An error names a field.
/// - Rendering is deterministic, and the YAML it prints reads back as the same objects.
/// - The image list it writes is one the agent accepts, with one entry per envoyFilter
///   deployment, named `NAMESPACE.NAME`.
/// - Output file names are plain names (no directory, not hidden).
pub fn render_deployment(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // As `wasmctl render` reads its files: each parsed, then merged (which refuses a
    // FilterDeployment defined twice).
    let inputs = match render::parse_str(text, "in.yaml").and_then(|i| render::merge(vec![i])) {
        Ok(i) => i,
        Err(e) => return render_error(&e),
    };
    let mut resolved = Resolved::default();
    for image in render::images(&inputs) {
        if let Ok(r) = registry::parse_reference(&image) {
            resolved
                .pinned
                .insert(image.clone(), registry::pinned(&r, DIGEST));
            resolved
                .modules
                .insert(image, DIGEST["sha256:".len()..].to_string());
        }
    }
    let _ = render::notes(&inputs, &Options::default(), &Resolved::default());
    for mode in [
        None,
        Some(Delivery::EnvoyFilter),
        Some(Delivery::WasmPlugin),
    ] {
        let opts = Options { mode };
        for resolved in [&Resolved::default(), &resolved] {
            let objects = match render::render(&inputs, &opts, resolved) {
                Ok(o) => o,
                Err(e) => {
                    render_error(&e);
                    continue;
                }
            };
            match render::render(&inputs, &opts, resolved) {
                Ok(again) => assert_eq!(again, objects, "rendering is not deterministic"),
                Err(e) => panic!("the same input renders, then fails: {e}"),
            }
            let yaml = match render::to_yaml(&objects) {
                Ok(y) => y,
                Err(e) => panic!("cannot print what was rendered: {e}"),
            };
            // (Nothing rendered prints nothing, which reads as one empty document.)
            let read: Vec<Value> = serde_norway::Deserializer::from_str(&yaml)
                .map(|doc| {
                    Value::deserialize(doc)
                        .unwrap_or_else(|e| panic!("printed YAML does not read: {e}\n{yaml}"))
                })
                .filter(|v| !(objects.is_empty() && v.is_null()))
                .collect();
            let values: Vec<&Value> = objects.iter().map(|o| &o.value).collect();
            assert_eq!(
                read.iter().collect::<Vec<_>>(),
                values,
                "printed YAML reads back otherwise:\n{yaml}"
            );
            for o in &objects {
                assert!(
                    !o.file_name.contains('/') && !o.file_name.starts_with('.'),
                    "file name {:?}",
                    o.file_name
                );
                if o.value["kind"] == "ConfigMap" {
                    agent_reads(&o.value, &inputs, &opts);
                }
                if o.value["kind"] == "EnvoyFilter" {
                    assert!(render::http_filter_of(&o.value).is_some());
                }
            }
        }
    }
}

/// The image list `render` wrote is one the agent reads, entry for entry.
fn agent_reads(configmap: &Value, inputs: &render::Inputs, opts: &Options) {
    let Some(text) = configmap["data"][render::IMAGES_KEY].as_str() else {
        panic!("image list ConfigMap without {}", render::IMAGES_KEY);
    };
    let entries = match list::parse(text) {
        Ok(e) => e,
        Err(e) => panic!("the agent refuses the image list render wrote: {e}\n{text}"),
    };
    let mut want: Vec<String> = inputs
        .deployments
        .iter()
        .filter(|s| opts.mode.unwrap_or(s.deployment.spec.delivery) == Delivery::EnvoyFilter)
        .map(|s| render::stable_name(&s.deployment))
        .collect();
    want.sort();
    let got: Vec<String> = entries.into_iter().map(|e| e.name).collect();
    assert_eq!(got, want, "image list entries");
}

fn render_error(e: &wasmctl::Error) {
    match e {
        wasmctl::Error::Render { field, .. } => {
            assert!(!field.is_empty(), "render error without a field: {e}")
        }
        other => panic!("render fails without naming a field: {other}"),
    }
}
