//! Failure modes: modules that trap, loop, eat memory, exit or call what the host lacks become
//! typed errors naming the callback, the host survives, and the failure policy decides what
//! streams get (as Envoy does).

// Test helpers outside #[test] functions fail loudly too.
#![allow(clippy::unwrap_used, clippy::panic)]

use proxy_wasm_harness::abi::{AbiVersion, Action};
use proxy_wasm_harness::{Error, FailurePolicy, Host, Module, RELOAD_BACKOFF, Runtime};
use std::time::Duration;

/// A proxy-wasm module in WAT: a bump allocator, the ABI marker, and `body` as the request
/// headers callback `(param $ctx i32) (param $n i32) (param $eos i32) (result i32)`.
fn module(imports: &str, body: &str) -> Module {
    let wat = format!(
        r#"(module
          {imports}
          (memory (export "memory") 2)
          (global $next (mut i32) (i32.const 1024))
          (func (export "malloc") (param $n i32) (result i32)
            (local $p i32)
            global.get $next
            local.set $p
            global.get $next
            local.get $n
            i32.add
            global.set $next
            local.get $p)
          (func (export "proxy_abi_version_0_2_1"))
          (func (export "proxy_on_context_create") (param i32 i32))
          (func (export "proxy_on_configure") (param i32 i32) (result i32) i32.const 1)
          (func (export "proxy_on_request_headers") (param $ctx i32) (param $n i32) (param $eos i32) (result i32)
            {body})
        )"#
    );
    Module::from_bytes(&Runtime::shared(), wat.as_bytes()).unwrap()
}

/// Traps when the request has exactly one header, continues otherwise.
fn trap_on_one_header() -> Module {
    module(
        "",
        "local.get $n
         i32.const 1
         i32.eq
         if unreachable end
         i32.const 0",
    )
}

#[test]
fn a_trap_is_a_typed_error_naming_the_callback_and_the_stream_gets_503() {
    let host = Host::new();
    let plugin = host.start_plugin(&trap_on_one_header(), "r", "").unwrap();
    let mut s = plugin.http_stream().unwrap();
    let err = s.send_request_headers(&[(":path", "/")], true).unwrap_err();
    let Error::Trap { callback, message } = &err else {
        panic!("{err:?}")
    };
    assert_eq!(callback, "proxy_on_request_headers");
    assert!(message.contains("unreachable"), "{message}");
    let reply = s.local_response().unwrap();
    assert_eq!(
        (reply.status, reply.details.as_str(), reply.grpc_status),
        (503, "wasm_fail_stream", 14)
    );
    assert_eq!(plugin.failure(), Some(err));
    // Fail closed (the default): the next stream is refused without calling the module.
    let mut next = plugin.http_stream().unwrap();
    assert_eq!(
        next.send_request_headers(&[(":path", "/"), ("a", "b")], true)
            .unwrap(),
        Action::Pause
    );
    assert_eq!(next.local_response().unwrap().status, 503);
}

#[test]
fn fail_open_lets_later_streams_through_untouched() {
    let host = Host::new();
    let plugin = host
        .plugin(&trap_on_one_header())
        .root_id("r")
        .failure_policy(FailurePolicy::FailOpen)
        .start()
        .unwrap();
    let mut s = plugin.http_stream().unwrap();
    assert!(s.send_request_headers(&[(":path", "/")], true).is_err());
    assert_eq!(
        s.local_response().unwrap().status,
        503,
        "the stream in flight still fails"
    );
    let mut next = plugin.http_stream().unwrap();
    assert_eq!(
        next.send_request_headers(&[(":path", "/")], true).unwrap(),
        Action::Continue
    );
    assert!(next.local_response().is_none());
    assert_eq!(next.request_headers().get(":path").as_deref(), Some("/"));
}

#[test]
fn fail_reload_builds_a_fresh_vm_after_the_backoff() {
    let host = Host::new();
    let plugin = host
        .plugin(&trap_on_one_header())
        .root_id("r")
        .failure_policy(FailurePolicy::Reload)
        .start()
        .unwrap();
    let mut s = plugin.http_stream().unwrap();
    assert!(s.send_request_headers(&[(":path", "/")], true).is_err());
    // Within the backoff: 503, as Envoy answers while it waits.
    let mut early = plugin.http_stream().unwrap();
    assert_eq!(
        early
            .send_request_headers(&[(":path", "/"), ("a", "b")], true)
            .unwrap(),
        Action::Pause
    );
    assert_eq!(early.local_response().unwrap().status, 503);
    host.advance(RELOAD_BACKOFF).unwrap();
    let mut later = plugin.http_stream().unwrap();
    assert_eq!(
        later
            .send_request_headers(&[(":path", "/"), ("a", "b")], true)
            .unwrap(),
        Action::Continue
    );
    assert!(later.local_response().is_none());
    assert!(plugin.failure().is_none(), "a fresh VM serves");
}

#[test]
fn a_runaway_loop_is_interrupted_at_the_deadline() {
    let host = Host::new();
    let plugin = host
        .plugin(&module("", "(loop (br 0)) i32.const 0"))
        .root_id("r")
        .deadline(Duration::from_millis(50))
        .start()
        .unwrap();
    let mut s = plugin.http_stream().unwrap();
    let err = s.send_request_headers(&[(":path", "/")], true).unwrap_err();
    assert_eq!(
        err,
        Error::Timeout {
            callback: "proxy_on_request_headers".into(),
            millis: 50
        }
    );
    assert_eq!(s.local_response().unwrap().status, 503);
}

#[test]
fn growing_memory_past_the_cap_is_a_memory_limit_error() {
    // Grow one page at a time until the host refuses, then abort as a Rust module would.
    let hungry = module(
        "",
        "(block $done
           (loop $more
             i32.const 1
             memory.grow
             i32.const -1
             i32.eq
             br_if $done
             br $more))
         unreachable",
    );
    let host = Host::new();
    let plugin = host
        .plugin(&hungry)
        .root_id("r")
        .memory_cap(4 << 20)
        .start()
        .unwrap();
    let mut s = plugin.http_stream().unwrap();
    let err = s.send_request_headers(&[(":path", "/")], true).unwrap_err();
    assert_eq!(
        err,
        Error::MemoryLimit {
            callback: "proxy_on_request_headers".into(),
            limit: 4 << 20
        }
    );
}

#[test]
fn proc_exit_is_reported_with_its_code() {
    let exiting = module(
        r#"(import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))"#,
        "i32.const 3
         call $exit
         unreachable",
    );
    let host = Host::new();
    let plugin = host.start_plugin(&exiting, "r", "").unwrap();
    let mut s = plugin.http_stream().unwrap();
    let err = s.send_request_headers(&[(":path", "/")], true).unwrap_err();
    assert_eq!(
        err,
        Error::Exit {
            callback: "proxy_on_request_headers".into(),
            code: 3
        }
    );
}

#[test]
fn an_import_the_host_lacks_is_listed_and_fails_only_when_called() {
    let m = module(
        r#"(import "env" "proxy_not_a_host_call" (func $nope (result i32)))"#,
        "call $nope",
    );
    assert_eq!(m.abi_version(), AbiVersion::V0_2_1);
    assert_eq!(m.unsupported_imports(), ["env.proxy_not_a_host_call"]);
    let host = Host::new();
    // Loading and configuring work: the import is not called yet.
    let plugin = host.start_plugin(&m, "r", "").unwrap();
    let mut s = plugin.http_stream().unwrap();
    let err = s.send_request_headers(&[(":path", "/")], true).unwrap_err();
    assert_eq!(
        err,
        Error::UnsupportedImport {
            callback: "proxy_on_request_headers".into(),
            import: "env.proxy_not_a_host_call".into()
        }
    );
}

#[test]
fn modules_that_are_not_proxy_wasm_are_refused_at_load() {
    let rt = Runtime::shared();
    assert!(matches!(
        Module::from_bytes(&rt, b"not wasm"),
        Err(Error::Compile(_))
    ));
    assert_eq!(
        Module::from_bytes(&rt, b"(module (memory (export \"memory\") 1))").err(),
        Some(Error::NoAbiVersion)
    );
}

#[test]
fn the_host_survives_and_other_plugins_keep_working() {
    let host = Host::new();
    let broken = host
        .start_plugin(&trap_on_one_header(), "broken", "")
        .unwrap();
    let healthy = host
        .start_plugin(&trap_on_one_header(), "healthy", "")
        .unwrap();
    assert!(
        broken
            .http_stream()
            .unwrap()
            .send_request_headers(&[(":path", "/")], true)
            .is_err()
    );
    let mut s = healthy.http_stream().unwrap();
    assert_eq!(
        s.send_request_headers(&[(":path", "/"), ("a", "b")], true)
            .unwrap(),
        Action::Continue
    );
}
