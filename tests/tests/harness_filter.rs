//! The header filter's cases through the compiled wasm in the harness.

// Test helpers outside #[test] functions: a failed expectation should fail the test, loudly.
#![allow(clippy::unwrap_used)]

use proxy_wasm_harness::abi::{Action, LogLevel};
use proxy_wasm_harness::{Error, Host, Module};
use std::time::Duration;

fn module() -> Module {
    e2e::harness_module(&e2e::filter_wasm())
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
    // Rule counters are summed in the VM and added to the host's on the next tick (1 s).
    let applied = || {
        host.metric("header_filter.default.rule_0.applied")
            .map(|m| m.value)
    };
    assert_eq!(applied(), Some(0));
    host.advance(Duration::from_secs(1)).unwrap();
    assert_eq!(applied(), Some(1));
}

#[test]
fn counters_summed_in_the_vm_reach_the_host_on_tick_and_on_shutdown() {
    let host = Host::new();
    let plugin = host
        .start_plugin(
            &module(),
            "my_root_id",
            r#"{"rules":[{"direction":"response","op":"append","name":"x-a","value":"1",
                "when":{"method":"GET"}}]}"#,
        )
        .unwrap();
    let request = |method: &str| {
        let mut s = plugin.http_stream().unwrap();
        s.send_request_headers(&[(":method", method), (":path", "/")], true)
            .unwrap();
        s.send_response_headers(&[(":status", "200")], false)
            .unwrap();
        s.complete().unwrap();
    };
    let counts = || {
        ["applied", "skipped"].map(|o| {
            host.metric(&format!("header_filter.default.rule_0.{o}"))
                .map(|m| m.value)
        })
    };
    request("GET");
    request("POST");
    assert_eq!(counts(), [Some(0), Some(0)]);
    host.advance(Duration::from_millis(999)).unwrap();
    assert_eq!(counts(), [Some(0), Some(0)]);
    host.advance(Duration::from_millis(1)).unwrap();
    assert_eq!(counts(), [Some(1), Some(1)]);
    // Nothing new: the next tick adds nothing.
    host.advance(Duration::from_secs(1)).unwrap();
    assert_eq!(counts(), [Some(1), Some(1)]);
    // What was counted since the last tick is added when the plugin stops.
    for _ in 0..3 {
        request("GET");
    }
    request("PUT");
    assert!(plugin.shutdown().unwrap());
    assert_eq!(counts(), [Some(4), Some(2)]);
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

/// The deepest configuration the JSON parser accepts (32 levels) and one past it run in the
/// module to a clean refusal, not a trap: the recursion fits the module's stack.
#[test]
fn the_deepest_configuration_fits_the_modules_stack() {
    for (depth, error) in [(31, "unknown field"), (40, "nesting deeper than 32")] {
        let nested = format!("{}{}", "[".repeat(depth), "]".repeat(depth));
        let config = format!(r#"{{"name":"x","value":"y","deep":{nested}}}"#);
        let host = Host::new();
        let err = host
            .start_plugin(&module(), "my_root_id", &config)
            .err()
            .unwrap();
        assert_eq!(
            err,
            Error::ConfigureFailed {
                root_id: "my_root_id".into()
            },
            "depth {depth}"
        );
        assert!(
            host.logs_at(LogLevel::Error)
                .iter()
                .any(|l| l.contains(error)),
            "depth {depth}: {:?}",
            host.logs()
        );
    }
}

/// The module's allocator reuses what a stream freed: thousands of requests with rendered values
/// and request headers of changing sizes leave the VM's memory where the first hundred left it.
#[test]
fn many_requests_leave_memory_where_it_was() {
    let host = Host::new();
    host.set_log_level(LogLevel::Info);
    let plugin = host
        .start_plugin(
            &module(),
            "my_root_id",
            r#"{"rules":[
 {"direction":"request","op":"set","name":"x-route","value":"${request.method} ${request.path}"},
 {"direction":"request","op":"remove","name":"x-internal-token"},
 {"direction":"response","name":"hello","value":"hello details"},
 {"direction":"response","op":"set","name":"x-path","value":"${request.path}"},
 {"direction":"response","op":"set","name":"x-debug-seen","value":"yes","when":{"header_present":"x-debug"}}
]}"#,
        )
        .unwrap();
    let request = |i: usize| {
        let path = format!("/items/{}", "x".repeat(i % 700));
        let cookie = "c".repeat((i * 37) % 5000);
        let mut s = plugin.http_stream().unwrap();
        let mut headers = vec![
            (":method", "GET"),
            (":path", path.as_str()),
            ("cookie", &cookie),
        ];
        if i.is_multiple_of(2) {
            headers.push(("x-debug", "1"));
        }
        s.send_request_headers(&headers, true).unwrap();
        s.send_response_headers(&[(":status", "200")], false)
            .unwrap();
        s.complete().unwrap();
        assert_eq!(s.response_headers().get("x-path"), Some(path.clone()));
        assert_eq!(
            s.request_headers().get("x-route"),
            Some(format!("GET {path}"))
        );
    };
    // The first 700 requests meet every size (paths up to 706 bytes, cookies up to 5,000).
    for i in 0..700 {
        request(i);
    }
    let warm = plugin.memory_size();
    for i in 700..3500 {
        request(i);
    }
    assert_eq!(plugin.memory_size(), warm);
}
