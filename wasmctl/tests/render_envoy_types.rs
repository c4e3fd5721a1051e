//! The Wasm filter config inside every rendered EnvoyFilter parses as
//! `envoy.extensions.filters.http.wasm.v3.Wasm` with unknown fields rejected: the protobuf JSON
//! mapping (as Envoy reads it), from the descriptor set that ships with the `envoy-types` crate,
//! through `prost-reflect`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod render_support;

use prost_reflect::{DescriptorPool, DeserializeOptions, DynamicMessage};
use render_support::{examples, workspace_root};
use serde_json::{Value, json};
use std::path::PathBuf;
use wasmctl::render::{self, Options, Resolved, spec::Delivery};

/// `src/generated/types.bin` of the `envoy-types` package this workspace locked (a
/// dev-dependency of wasmctl, so cargo has unpacked it under `$CARGO_HOME/registry/src/`).
fn descriptor_set() -> PathBuf {
    let lock = std::fs::read_to_string(workspace_root().join("Cargo.lock")).unwrap();
    let version = lock
        .split("[[package]]")
        .find(|p| p.contains("name = \"envoy-types\""))
        .and_then(|p| p.lines().find_map(|l| l.strip_prefix("version = ")))
        .expect("envoy-types in Cargo.lock")
        .trim_matches('"')
        .to_string();
    let home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .expect("CARGO_HOME or HOME");
    let src = home.join("registry/src");
    let found = std::fs::read_dir(&src)
        .unwrap_or_else(|e| panic!("{}: {e}", src.display()))
        .map(|e| {
            e.unwrap()
                .path()
                .join(format!("envoy-types-{version}/src/generated/types.bin"))
        })
        .find(|p| p.is_file());
    found.unwrap_or_else(|| {
        panic!(
            "envoy-types {version}: src/generated/types.bin not found under {}",
            src.display()
        )
    })
}

fn pool() -> DescriptorPool {
    let bytes = std::fs::read(descriptor_set()).unwrap();
    DescriptorPool::decode(bytes.as_slice()).unwrap()
}

/// Parse `typed_config` (with its `@type`) as an `Any`, strictly: unknown fields are errors.
fn parse_any(pool: &DescriptorPool, typed_config: &Value) -> Result<DynamicMessage, String> {
    let any = pool.get_message_by_name("google.protobuf.Any").unwrap();
    let opts = DeserializeOptions::new().deny_unknown_fields(true);
    DynamicMessage::deserialize_with_options(any, typed_config.clone(), &opts)
        .map_err(|e| e.to_string())
}

fn rendered_filters() -> Vec<(String, Value)> {
    let mut out = Vec::new();
    for ex in examples() {
        let all = ex
            .inputs
            .iter()
            .map(|p| render::parse_file(p).unwrap())
            .collect();
        let inputs = render::merge(all).unwrap();
        // An example attached by reference has no envoyFilter form (render says why).
        if inputs
            .deployments
            .iter()
            .any(|s| !s.deployment.spec.target_refs.is_empty())
        {
            continue;
        }
        let objects = render::render(
            &inputs,
            &Options {
                mode: Some(Delivery::EnvoyFilter),
            },
            &Resolved::default(),
        )
        .unwrap();
        for o in objects {
            if let Some(f) = render::http_filter_of(&o.value) {
                out.push((ex.dir.display().to_string(), f.clone()));
            }
        }
    }
    assert!(out.len() >= 3, "{out:?}");
    out
}

#[test]
fn every_rendered_wasm_config_parses_strictly() {
    let pool = pool();
    for (what, filter) in rendered_filters() {
        let tc = &filter["typed_config"];
        // An HTTP filter's config, or a network (TCP) filter's.
        assert!(
            tc["@type"] == render::WASM_TYPE_URL || tc["@type"] == render::NETWORK_WASM_TYPE_URL,
            "{what}: {}",
            tc["@type"]
        );
        let msg = parse_any(&pool, tc).unwrap_or_else(|e| panic!("{what}: {e}\n{tc:#}"));
        // Unpack the Any and look at the fields Envoy will use.
        let name = tc["@type"]
            .as_str()
            .unwrap()
            .trim_start_matches("type.googleapis.com/");
        let wasm = pool.get_message_by_name(name).unwrap();
        let any: prost_types_any::Any = prost_types_any::from_dynamic(&msg);
        let decoded = DynamicMessage::decode(wasm, any.value.as_slice()).unwrap();
        let back = serde_json::to_value(&decoded).unwrap();
        let config = &back["config"];
        assert_eq!(config["rootId"], tc["config"]["root_id"], "{what}");
        assert_eq!(
            config["vmConfig"]["runtime"], "envoy.wasm.runtime.v8",
            "{what}"
        );
        assert!(
            config["vmConfig"]["code"]["local"]["filename"]
                .as_str()
                .unwrap()
                .starts_with("/var/local/lib/wasm-filters/"),
            "{what}"
        );
        assert_eq!(
            config["configuration"]["value"], tc["config"]["configuration"]["value"],
            "{what}: parameters travel as a StringValue"
        );
        assert!(
            ["FAIL_OPEN", "FAIL_CLOSED", "FAIL_RELOAD"]
                .contains(&config["failurePolicy"].as_str().unwrap()),
            "{what}: {config}"
        );
    }
}

#[test]
fn unknown_or_misspelt_fields_are_rejected() {
    let pool = pool();
    let (_, filter) = rendered_filters().remove(0);
    let tc = filter["typed_config"].clone();
    for (path, bad) in [
        ("config.rootId", {
            let mut t = tc.clone();
            t["config"]["root_idd"] = json!("x");
            t
        }),
        ("config.vm_config.runtime_", {
            let mut t = tc.clone();
            t["config"]["vm_config"]["runtme"] = json!("v8");
            t
        }),
        ("config.failure_policy", {
            let mut t = tc.clone();
            t["config"]["failure_policy"] = json!("FAIL_SOMETIMES");
            t
        }),
        ("@type", {
            let mut t = tc.clone();
            t["@type"] = json!("type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasmm");
            t
        }),
    ] {
        assert!(parse_any(&pool, &bad).is_err(), "{path}: accepted\n{bad:#}");
    }
}

/// Reading an `Any` out of a dynamic message without depending on `prost-types` directly.
mod prost_types_any {
    use prost_reflect::{DynamicMessage, Value};

    pub struct Any {
        pub value: Vec<u8>,
    }

    pub fn from_dynamic(m: &DynamicMessage) -> Any {
        let value = match m.get_field_by_name("value").as_deref() {
            Some(Value::Bytes(b)) => b.to_vec(),
            other => panic!("Any.value: {other:?}"),
        };
        Any { value }
    }
}
