//! Envoy's foreign functions in the harness (`proxy_call_foreign_function` and
//! `proxy_wasm_harness::foreign`), on any arguments.
//!
//! The first byte picks a function (Envoy's five the harness implements, one it does not, an
//! unknown name); the rest are its arguments. The pure functions must not panic and must agree
//! with themselves: a decoded `SetEnvoyFilterStateArguments` or `DeclarePropertyArguments`
//! re-encodes to bytes that decode to it again, `uncompress(compress(x))` is `x`, and what
//! `uncompress` accepts compresses and uncompresses back. Then a guest module calls the
//! function with those arguments from a stream (and its root context) in the harness: the
//! status must be one Envoy answers for that function, the host must record the call with it,
//! and a filter state object it set must read back through `proxy_get_property`.

use proxy_wasm_harness::abi::Status;
use proxy_wasm_harness::foreign::{self, DeclareProperty, SetEnvoyFilterState};
use proxy_wasm_harness::{Host, Module, Runtime};
use std::sync::OnceLock;

/// The names the first byte picks from.
const NAMES: &[&str] = &[
    foreign::SET_ENVOY_FILTER_STATE,
    foreign::DECLARE_PROPERTY,
    foreign::CLEAR_ROUTE_CACHE,
    foreign::COMPRESS,
    foreign::UNCOMPRESS,
    "verify_signature",
    "no_such_function",
];

/// The statuses Envoy answers for each function.
fn allowed(name: &str) -> &'static [Status] {
    match name {
        foreign::SET_ENVOY_FILTER_STATE => &[Status::Ok, Status::NotFound, Status::BadArgument],
        foreign::DECLARE_PROPERTY => &[Status::Ok, Status::BadArgument],
        foreign::CLEAR_ROUTE_CACHE | foreign::COMPRESS => &[Status::Ok],
        foreign::UNCOMPRESS => &[Status::Ok, Status::SerializationFailure],
        n if foreign::UNIMPLEMENTED.contains(&n) => &[Status::Unimplemented],
        _ => &[Status::NotFound],
    }
}

/// The guest: its plugin configuration is `NAME \0 ARGS`; `proxy_on_configure` keeps it and
/// calls the function on the root context, `proxy_on_request_headers` on the stream, then
/// reads `filter_state.envoy.tcp_proxy.cluster` and logs that property call's status and value.
const GUEST: &str = r#"(module
  (import "env" "proxy_call_foreign_function" (func $foreign (param i32 i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_get_buffer_bytes" (func $get_buf (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_get_property" (func $get_prop (param i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_log" (func $log (param i32 i32 i32) (result i32)))
  (memory (export "memory") 2)
  (data (i32.const 256) "filter_state\00envoy.tcp_proxy.cluster")
  (global $next (mut i32) (i32.const 4096))
  (global $config (mut i32) (i32.const 0))
  (global $size (mut i32) (i32.const 0))
  (global $name_len (mut i32) (i32.const 0))
  (func (export "malloc") (param $n i32) (result i32)
    (local $p i32)
    (local.set $p (global.get $next))
    (global.set $next (i32.add (global.get $next) (i32.and (i32.add (local.get $n) (i32.const 7)) (i32.const -8))))
    (if (i32.gt_u (global.get $next) (i32.mul (memory.size) (i32.const 65536)))
      (then (drop (memory.grow (i32.add (i32.const 1) (i32.shr_u (local.get $n) (i32.const 16)))))))
    (local.get $p))
  (func $call
    (drop (call $foreign (global.get $config) (global.get $name_len)
      (i32.add (global.get $config) (i32.add (global.get $name_len) (i32.const 1)))
      (i32.sub (global.get $size) (i32.add (global.get $name_len) (i32.const 1)))
      (i32.const 16) (i32.const 20))))
  (func (export "proxy_abi_version_0_2_1"))
  (func (export "proxy_on_context_create") (param i32 i32))
  (func (export "proxy_on_configure") (param i32) (param $n i32) (result i32)
    (if (i32.ne (call $get_buf (i32.const 7) (i32.const 0) (local.get $n) (i32.const 8) (i32.const 12)) (i32.const 0))
      (then (return (i32.const 1))))
    (global.set $config (i32.load (i32.const 8)))
    (global.set $size (i32.load (i32.const 12)))
    (block $found (loop $scan
      (br_if $found (i32.ge_u (global.get $name_len) (global.get $size)))
      (br_if $found (i32.eqz (i32.load8_u (i32.add (global.get $config) (global.get $name_len)))))
      (global.set $name_len (i32.add (global.get $name_len) (i32.const 1)))
      (br $scan)))
    (call $call)
    (i32.const 1))
  (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
    (local $st i32)
    (call $call)
    (local.set $st (call $get_prop (i32.const 256) (i32.const 36) (i32.const 24) (i32.const 28)))
    (if (i32.eqz (local.get $st))
      (then (drop (call $log (i32.const 2) (i32.load (i32.const 24)) (i32.load (i32.const 28)))))
      (else (i32.store8 (i32.const 32) (i32.add (i32.const 48) (local.get $st)))
            (drop (call $log (i32.const 1) (i32.const 32) (i32.const 1)))))
    (i32.const 0)))"#;

fn guest() -> &'static Module {
    static M: OnceLock<Module> = OnceLock::new();
    M.get_or_init(|| Module::from_bytes(&Runtime::shared(), GUEST.as_bytes()).unwrap())
}

/// The target.
pub fn harness_foreign(data: &[u8]) {
    let Some((&pick, args)) = data.split_first() else {
        return;
    };
    let name = NAMES[pick as usize % NAMES.len()];

    // The pure functions.
    if let Ok(a) = SetEnvoyFilterState::decode(args) {
        assert_eq!(SetEnvoyFilterState::decode(&a.encode()), Ok(a.clone()));
        match foreign::filter_state_object(&a.path, a.value.as_bytes()) {
            Ok(_) | Err(Status::NotFound | Status::BadArgument) => {}
            Err(s) => panic!("filter_state_object: {s:?}"),
        }
    }
    if let Ok(a) = DeclareProperty::decode(args) {
        assert_eq!(DeclareProperty::decode(&a.encode()), Ok(a));
    }
    assert_eq!(
        foreign::uncompress(&foreign::compress(args)).as_deref(),
        Ok(args)
    );
    if let Ok(plain) = foreign::uncompress(args) {
        assert_eq!(foreign::uncompress(&foreign::compress(&plain)), Ok(plain));
    }

    // Through the host: on the root context, then on a stream.
    let mut config = name.as_bytes().to_vec();
    config.push(0);
    config.extend_from_slice(args);
    let host = Host::new();
    let plugin = host.start_plugin(guest(), "", &config).unwrap();
    let mut s = plugin.http_stream().unwrap();
    s.send_request_headers(&[(":path", "/")], true).unwrap();
    s.complete().unwrap();
    assert!(plugin.failure().is_none(), "{:?}", plugin.failure());
    let calls = host.foreign_calls();
    assert_eq!(calls.len(), 2, "{calls:?}");
    for c in &calls {
        assert_eq!(c.name, name);
        assert!(
            allowed(name).contains(&c.status),
            "{name}: {:?} on context {}",
            c.status,
            c.context_id
        );
    }
    // No stream on the root context: set_envoy_filter_state cannot succeed there.
    if name == foreign::SET_ENVOY_FILTER_STATE {
        assert_ne!(calls[0].status, Status::Ok);
    }
    // What the stream set reads back as the factory serializes it.
    let set = host.filter_states_set();
    let logs = host.logs();
    match set.last() {
        Some(f) if f.name == "envoy.tcp_proxy.cluster" => {
            assert_eq!(calls[1].status, Status::Ok);
            assert_eq!(
                logs.last().map(|l| l.message.as_bytes()),
                Some(&f.value[..])
            );
        }
        _ => assert_eq!(logs.last().map(|l| l.message.as_str()), Some("1")),
    }
}
