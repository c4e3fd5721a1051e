//! The header filter's cases through the compiled wasm in the harness.

// Test code: a failed setup should stop the test loudly (helpers outside `#[test]` too).
#![allow(clippy::unwrap_used)]

use proxy_wasm_harness::abi::{Action, LogLevel};
use proxy_wasm_harness::{Error, Host, Module, Runtime};

fn module() -> Module {
    Module::from_file(&Runtime::shared(), e2e::filter_wasm()).unwrap()
}

#[test]
fn seed_configuration_in_the_harness() {
    let host = Host::new();
    let plugin = host
        .start_plugin(
            &module(),
            "my_root_id",
            r#"{"name":"resp-header-demo","value":"added by our filter"}"#,
        )
        .unwrap();
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
        s.send_response_headers(&[(":status", "200"), ("x-up", "1")], false)
            .unwrap(),
        Action::Continue
    );
    s.complete().unwrap();
    assert_eq!(
        s.response_headers().get_all("resp-header-demo"),
        ["added by our filter"]
    );
    assert_eq!(s.response_headers().get("x-up").as_deref(), Some("1"));
    assert!(
        host.logs_at(LogLevel::Info)
            .iter()
            .any(|l| l.contains("configured 1 rule(s)")),
        "{:?}",
        host.logs()
    );
    assert_eq!(
        host.metric("header_filter.default.rule_0.applied")
            .map(|m| m.value),
        Some(1)
    );
}

#[test]
fn bad_configuration_fails_configure_with_the_filters_log() {
    let host = Host::new();
    let err = host
        .start_plugin(&module(), "my_root_id", r#"{"rules":[]}"#)
        .err()
        .unwrap();
    assert_eq!(
        err,
        Error::ConfigureFailed {
            root_id: "my_root_id".into()
        }
    );
    assert!(
        host.logs_at(LogLevel::Error)
            .iter()
            .any(|l| l.contains("invalid configuration: rules: empty")),
        "{:?}",
        host.logs()
    );
}
