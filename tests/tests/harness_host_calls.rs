//! Host-call groups through the Rust SDK example (`examples/callout-filter`): timers on the
//! controllable clock, shared data with CAS, queues, the three metric kinds, HTTP callouts
//! answered, failed and refused.

// Helpers outside #[test] functions fail the test loudly.
#![allow(clippy::unwrap_used, clippy::panic)]

use proxy_wasm_harness::abi::{Action, LogLevel, MetricType};
use proxy_wasm_harness::{Host, HttpStream, Plugin};
use std::time::Duration;

fn plugin(host: &Host) -> Plugin {
    host.plugin(&e2e::harness_module(&e2e::callout_wasm()))
        .root_id("callout")
        .vm_id("vm1")
        .configuration("auth")
        .start()
        .unwrap()
}

fn request(plugin: &Plugin, path: &str, extra: &[(&str, &str)]) -> (HttpStream, Action) {
    let mut s = plugin.http_stream().unwrap();
    let mut h = vec![
        (":method", "GET"),
        (":path", path),
        (":authority", "example"),
    ];
    h.extend_from_slice(extra);
    let a = s.send_request_headers(&h, true).unwrap();
    (s, a)
}

fn metric(host: &Host, name: &str) -> i64 {
    host.metric(name)
        .unwrap_or_else(|| panic!("no metric {name}"))
        .value
}

#[test]
fn ticks_fire_on_the_controllable_clock_and_update_shared_data_with_cas() {
    let host = Host::new();
    let p = plugin(&host);
    assert_eq!(host.shared_data("vm1", "ticks"), None);
    host.advance(Duration::from_secs(59)).unwrap();
    assert_eq!(metric(&host, "callout.ticks"), 0, "not due yet");
    host.advance(Duration::from_secs(1)).unwrap();
    assert_eq!(metric(&host, "callout.ticks"), 1);
    let (v1, cas1) = host.shared_data("vm1", "ticks").unwrap();
    assert_eq!(v1, b"1");
    // Three more periods at once: three ticks, in order, each a CAS write.
    host.advance(Duration::from_secs(180)).unwrap();
    assert_eq!(metric(&host, "callout.ticks"), 4);
    let (v4, cas4) = host.shared_data("vm1", "ticks").unwrap();
    assert_eq!(v4, b"4");
    assert!(cas4 > cas1);
    // The value reaches responses.
    let (mut s, _) = request(&p, "/", &[("x-skip-auth", "1")]);
    s.send_response_headers(&[(":status", "200")], true)
        .unwrap();
    assert_eq!(s.response_headers().get("x-ticks").as_deref(), Some("4"));
}

#[test]
fn shared_data_is_scoped_by_vm_id_and_shared_within_it() {
    let host = Host::new();
    let a = plugin(&host);
    let b = host
        .plugin(&e2e::harness_module(&e2e::callout_wasm()))
        .root_id("callout")
        .vm_id("vm1")
        .configuration("auth")
        .start()
        .unwrap();
    let other = host
        .plugin(&e2e::harness_module(&e2e::callout_wasm()))
        .root_id("callout")
        .vm_id("vm2")
        .configuration("auth")
        .start()
        .unwrap();
    host.advance(Duration::from_secs(60)).unwrap();
    // Both vm1 plugins ticked against the same key: one CAS each, no lost update.
    assert_eq!(host.shared_data("vm1", "ticks").unwrap().0, b"2");
    assert_eq!(host.shared_data("vm2", "ticks").unwrap().0, b"1");
    drop((a, b, other));
}

#[test]
fn an_answered_callout_resumes_the_request_with_the_answer() {
    let host = Host::new();
    let p = plugin(&host);
    let (mut s, action) = request(&p, "/orders", &[("x-user", "alice")]);
    assert_eq!(action, Action::Pause);
    let calls = host.pending_http_calls();
    assert_eq!(calls.len(), 1);
    let call = &calls[0];
    assert_eq!(call.upstream, "auth");
    assert_eq!(
        call.token % 4,
        0,
        "HTTP call tokens are 4, 8, ... as in Envoy"
    );
    assert_eq!(call.headers.get(":path").as_deref(), Some("/check"));
    assert_eq!(call.headers.get("x-user").as_deref(), Some("alice"));
    p.respond_http_call(call.token, &[(":status", "200")], "alice", &[])
        .unwrap();
    s.sync().unwrap();
    assert_eq!(s.resumed(), [0]);
    assert_eq!(s.request_headers().get("x-auth").as_deref(), Some("alice"));
    assert!(s.local_response().is_none());
    assert_eq!(metric(&host, "callout.allowed"), 1);
    assert_eq!(host.metric("callout.answer_bytes").unwrap().recorded, [5]);
    assert!(host.pending_http_calls().is_empty());
}

#[test]
fn a_failed_callout_denies_with_a_local_reply_through_the_response_callback() {
    let host = Host::new();
    let p = plugin(&host);
    let (mut s, _) = request(&p, "/orders", &[]);
    let token = host.pending_http_calls()[0].token;
    host.fail_http_call(token).unwrap();
    s.sync().unwrap();
    let reply = s.local_response().unwrap();
    assert_eq!((reply.status, reply.body.as_slice()), (403, &b"denied"[..]));
    let h = s.response_headers();
    assert_eq!(h.get("x-denied-by").as_deref(), Some("callout"));
    assert_eq!(
        h.get("x-requests").as_deref(),
        Some("1"),
        "the reply passed on_response_headers"
    );
    assert_eq!(metric(&host, "callout.denied"), 1);
    assert!(host.logged("callout: denied"));
    assert!(
        host.respond_http_call(token, &[], "", &[]).is_err(),
        "answered once only"
    );
}

#[test]
fn calling_an_unknown_cluster_is_refused_at_once() {
    let host = Host::new();
    host.set_clusters(&["upstream"]);
    let p = plugin(&host);
    let (s, action) = request(&p, "/orders", &[]);
    assert_eq!(action, Action::Pause);
    assert!(host.pending_http_calls().is_empty());
    assert_eq!(s.local_response().unwrap().status, 503);
    assert!(
        host.logs_at(LogLevel::Error)
            .iter()
            .any(|l| l.contains("cannot call auth: BadArgument")),
        "{:?}",
        host.logs()
    );
}

#[test]
fn queues_deliver_after_the_enqueuing_callback_and_metrics_have_their_kinds() {
    let host = Host::new();
    let p = plugin(&host);
    let (_s, _) = request(&p, "/a/long/path", &[("x-skip-auth", "1")]);
    // on_queue_ready ran on the root after the request callback returned: gauge set, debug log.
    assert_eq!(
        metric(&host, "callout.last_path_len"),
        "/a/long/path".len() as i64
    );
    assert!(host.logged("callout: dequeued /a/long/path"));
    let kinds: Vec<(String, MetricType)> = host
        .metrics()
        .into_iter()
        .map(|m| (m.name, m.kind))
        .collect();
    assert!(kinds.contains(&("callout.requests".into(), MetricType::Counter)));
    assert!(kinds.contains(&("callout.last_path_len".into(), MetricType::Gauge)));
    assert!(kinds.contains(&("callout.answer_bytes".into(), MetricType::Histogram)));
    assert_eq!(metric(&host, "callout.skipped"), 1);
}
