//! A proxy-wasm module from another SDK: the AssemblyScript filter in `examples/assemblyscript`
//! (`@solo-io/proxy-runtime`, ABI 0.2.0, WASI `wasi_unstable`), built by `npm` on first use. The
//! harness must load and drive it as it does Rust SDK modules, and agree with a real Envoy.

// Test helpers outside #[test] functions: a failed expectation should fail the test, loudly.
#![allow(clippy::unwrap_used)]

use e2e::envoy::{Envoy, bootstrap, wasm_filter};
use e2e::http1::{Upstream, get};
use proxy_wasm_harness::abi::{AbiVersion, Action, LogLevel};
use proxy_wasm_harness::{Host, Module, Runtime};

/// The root id the module registers its root context under.
const ROOT_ID: &str = "as_filter";
/// The plugin configuration: a plain string that becomes the header's value.
const CONFIG: &str = "from assemblyscript";

fn module() -> Module {
    Module::from_file(&Runtime::shared(), e2e::assemblyscript_wasm()).unwrap()
}

/// One request/response through the harness; the `x-as-filter` values the client would see.
fn harness_response(host: &Host, module: &Module) -> Vec<String> {
    let plugin = host.start_plugin(module, ROOT_ID, CONFIG).unwrap();
    let mut s = plugin.http_stream().unwrap();
    assert_eq!(
        s.send_request_headers(
            &[(":method", "GET"), (":path", "/"), (":authority", "x")],
            true
        )
        .unwrap(),
        Action::Continue
    );
    assert_eq!(
        s.send_response_headers(&[(":status", "200"), ("x-upstream", "kept")], false)
            .unwrap(),
        Action::Continue
    );
    s.complete().unwrap();
    assert_eq!(
        s.response_headers().get("x-upstream").as_deref(),
        Some("kept")
    );
    s.response_headers().get_all("x-as-filter")
}

#[test]
fn the_harness_loads_and_drives_an_assemblyscript_module() {
    let module = module();
    assert_eq!(module.abi_version(), AbiVersion::V0_2_0);
    assert_eq!(module.unsupported_imports(), Vec::<String>::new());

    let host = Host::new();
    assert_eq!(harness_response(&host, &module), [CONFIG]);
    assert!(
        host.logs_at(LogLevel::Info)
            .iter()
            .any(|l| l == &format!("as-filter: configured {CONFIG}")),
        "{:?}",
        host.logs()
    );
    assert!(
        host.logs_at(LogLevel::Critical).is_empty(),
        "the AssemblyScript runtime logs aborts at critical: {:?}",
        host.logs()
    );
}

#[test]
fn envoy_agrees_with_the_harness() {
    let module = module();
    let expected = harness_response(&Host::new(), &module);

    let upstream = Upstream::start(&[("x-upstream", "kept")]);
    let filter = wasm_filter(ROOT_ID, ROOT_ID, &e2e::assemblyscript_wasm(), CONFIG);
    let envoy = Envoy::must_start(&bootstrap(upstream.addr(), vec![filter]));

    let resp = get(envoy.listener, "/", &[]).unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.header("x-upstream"), Some("kept"));
    assert_eq!(resp.values("x-as-filter"), expected);
    assert_eq!(resp.values("x-as-filter"), [CONFIG]);
    let log = envoy.log();
    assert!(
        log.contains(&format!("as-filter: configured {CONFIG}")),
        "{log}"
    );
}
