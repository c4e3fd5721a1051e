//! Envoy's foreign functions in the harness (`proxy_call_foreign_function`), through WAT modules
//! that assert each status themselves (a wrong status traps, which fails the test), and what the
//! host records of them: the filter state set, the calls and their statuses, the route cache
//! clears. `tests/tests/foreign_functions_in_envoy.rs` compares the same calls with Envoy 1.40.

// Test helpers outside #[test] functions fail loudly too.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use proxy_wasm_harness::abi::{Action, PeerType, Status};
use proxy_wasm_harness::foreign::{self, DeclareProperty, LifeSpan, SetEnvoyFilterState, WasmType};
use proxy_wasm_harness::{Host, Module, Runtime};

/// Bytes as a WAT string literal.
fn lit(b: &[u8]) -> String {
    b.iter().map(|b| format!("\\{b:02x}")).collect()
}

/// A module whose `proxy_on_configure` runs `configure` and whose `proxy_on_request_headers`
/// and `proxy_on_new_connection` run `stream`; `data` is placed at 1024. `$f` calls a foreign
/// function (name at 1024+n, args at 1024+a) with out-parameters at 16 and 20.
fn module(data: &[u8], configure: &str, stream: &str) -> Module {
    let wat = format!(
        r#"(module
  (import "env" "proxy_call_foreign_function" (func $foreign (param i32 i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_set_property" (func $set_prop (param i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_get_property" (func $get_prop (param i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_set_effective_context" (func $effective (param i32) (result i32)))
  (memory (export "memory") 2)
  (data (i32.const 1024) "{}")
  (global $next (mut i32) (i32.const 65536))
  (global $stream (mut i32) (i32.const 0))
  (func (export "malloc") (param $n i32) (result i32)
    (local $p i32)
    (local.set $p (global.get $next))
    (global.set $next (i32.add (global.get $next) (local.get $n)))
    (local.get $p))
  (func $check (param $want i32) (param $got i32)
    (if (i32.ne (local.get $want) (local.get $got)) (then unreachable)))
  (func $f (param $name i32) (param $nlen i32) (param $args i32) (param $alen i32) (result i32)
    (i32.store (i32.const 16) (i32.const 0x11111111))
    (i32.store (i32.const 20) (i32.const 0x11111111))
    (call $foreign (i32.add (i32.const 1024) (local.get $name)) (local.get $nlen)
                   (i32.add (i32.const 1024) (local.get $args)) (local.get $alen)
                   (i32.const 16) (i32.const 20)))
  (func $same (param $a i32) (param $b i32) (param $n i32)
    (local $i i32)
    (block $done (loop $more
      (br_if $done (i32.ge_u (local.get $i) (local.get $n)))
      (call $check (i32.load8_u (i32.add (local.get $a) (local.get $i)))
                   (i32.load8_u (i32.add (local.get $b) (local.get $i))))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br $more))))
  (func (export "proxy_abi_version_0_2_1"))
  (func (export "proxy_on_context_create") (param i32 i32))
  (func (export "proxy_on_configure") (param $root i32) (param i32) (result i32)
{configure}
    (i32.const 1))
  (func (export "proxy_on_request_headers") (param $ctx i32) (param i32 i32) (result i32)
{stream}
    (i32.const 0))
  (func (export "proxy_on_new_connection") (param $ctx i32) (result i32)
{stream}
    (i32.const 0))
  (func (export "proxy_on_downstream_data") (param i32 i32 i32) (result i32) (i32.const 0))
  (func (export "proxy_on_upstream_data") (param i32 i32 i32) (result i32) (i32.const 0)))"#,
        lit(data)
    );
    Module::from_bytes(&Runtime::shared(), wat.as_bytes()).unwrap()
}

/// Constant data for [`module`]: each piece's offset from 1024 and length.
#[derive(Default)]
struct Data(Vec<u8>);

impl Data {
    fn put(&mut self, b: &[u8]) -> String {
        let at = self.0.len();
        self.0.extend(b);
        format!("(i32.const {at}) (i32.const {})", b.len())
    }
    /// The absolute address and length (for the property calls).
    fn abs(&mut self, b: &[u8]) -> String {
        let at = 1024 + self.0.len();
        self.0.extend(b);
        format!("(i32.const {at}) (i32.const {})", b.len())
    }
}

fn fs(path: &str, value: &str, span: LifeSpan) -> Vec<u8> {
    SetEnvoyFilterState {
        path: path.into(),
        value: value.into(),
        span,
    }
    .encode()
}

const TCP: &str = "envoy.tcp_proxy.cluster";

#[test]
fn set_envoy_filter_state_sets_an_object_that_reads_back_and_is_recorded() {
    let mut d = Data::default();
    let name = d.put(b"set_envoy_filter_state");
    let (c1, other_span, c3) = (
        d.put(&fs(TCP, "c1", LifeSpan::FilterChain)),
        d.put(&fs(TCP, "c2", LifeSpan::DownstreamConnection)),
        d.put(&fs(TCP, "c3", LifeSpan::FilterChain)),
    );
    let (unknown, garbage) = (
        d.put(&fs("my.own.key", "x", LifeSpan::FilterChain)),
        d.put(b"\xff"),
    );
    let read = d.abs(b"filter_state\0envoy.tcp_proxy.cluster");
    let configure = format!(
        "    ;; no stream on the root context: NotFound, and the out-parameters are written
    (call $check (i32.const 1) (call $f {name} {c1}))
    (call $check (i32.const 0) (i32.load (i32.const 16)))
    (call $check (i32.const 0) (i32.load (i32.const 20)))"
    );
    let stream = format!(
        "    (call $check (i32.const 0) (call $f {name} {c1}))
    (call $check (i32.const 0) (i32.load (i32.const 16)))
    (call $check (i32.const 0) (i32.load (i32.const 20)))
    (call $check (i32.const 0) (call $get_prop {read} (i32.const 24) (i32.const 28)))
    (call $check (i32.const 2) (i32.load (i32.const 28)))
    (call $check (i32.const 0x3163) (i32.load16_u (i32.load (i32.const 24))))
    (call $check (i32.const 0) (call $f {name} {other_span}))
    (call $check (i32.const 0) (call $f {name} {c3}))
    (call $check (i32.const 1) (call $f {name} {unknown}))
    (call $check (i32.const 2) (call $f {name} {garbage}))"
    );
    let m = module(&d.0, &configure, &stream);

    // An HTTP stream: another life span leaves the object as it was (Envoy: an envoy bug, Ok).
    let host = Host::new();
    let p = host.start_plugin(&m, "", "").unwrap();
    let mut s = p.http_stream().unwrap();
    assert_eq!(
        s.send_request_headers(&[(":path", "/")], true).unwrap(),
        Action::Continue
    );
    assert_eq!(s.filter_state(TCP).as_deref(), Some(&b"c3"[..]));
    let set: Vec<(String, Vec<u8>, LifeSpan)> = host
        .filter_states_set()
        .into_iter()
        .map(|f| (f.name, f.value, f.span))
        .collect();
    assert_eq!(
        set,
        [
            (TCP.to_string(), b"c1".to_vec(), LifeSpan::FilterChain),
            (TCP.to_string(), b"c3".to_vec(), LifeSpan::FilterChain),
        ]
    );
    let calls: Vec<Status> = host.foreign_calls().iter().map(|c| c.status).collect();
    assert_eq!(
        calls,
        [
            Status::NotFound,
            Status::Ok,
            Status::Ok,
            Status::Ok,
            Status::NotFound,
            Status::BadArgument
        ]
    );

    // A connection: its filter state takes any life span, the last set wins.
    let host = Host::new();
    let p = host.start_plugin(&m, "", "").unwrap();
    let (mut c, _) = p.network_stream().unwrap();
    assert_eq!(c.filter_state(TCP).as_deref(), Some(&b"c3"[..]));
    let spans: Vec<LifeSpan> = host.filter_states_set().iter().map(|f| f.span).collect();
    assert_eq!(
        spans,
        [
            LifeSpan::FilterChain,
            LifeSpan::DownstreamConnection,
            LifeSpan::FilterChain
        ]
    );
    c.close(PeerType::Local).unwrap();
    assert_eq!(c.filter_state(TCP), None, "gone with the connection");
}

#[test]
fn declared_properties_decide_how_set_property_behaves() {
    let mut d = Data::default();
    let declare = d.put(b"declare_property");
    let ro = d.put(
        &DeclareProperty {
            name: "ro".into(),
            readonly: true,
            kind: WasmType::Bytes,
            schema: Vec::new(),
            span: LifeSpan::FilterChain,
        }
        .encode(),
    );
    let garbage = d.put(b"\x0a\x05");
    let (ro_path, a, b) = (d.abs(b"ro"), d.abs(b"a"), d.abs(b"b"));
    let (rw_path, fs_ro, deeper, two) = (
        d.abs(b"rw"),
        d.abs(b"filter_state\0wasm.ro"),
        d.abs(b"ro\0x"),
        d.abs(b"x\0y"),
    );
    let configure = format!(
        "    (call $check (i32.const 0) (call $f {declare} {ro}))
    (call $check (i32.const 2) (call $f {declare} {ro}))
    (call $check (i32.const 2) (call $f {declare} {garbage}))
    ;; set_property needs a stream
    (call $check (i32.const 1) (call $set_prop {rw_path} {a}))"
    );
    let stream = format!(
        "    ;; readonly once set
    (call $check (i32.const 0) (call $set_prop {ro_path} {a}))
    (call $check (i32.const 2) (call $set_prop {ro_path} {b}))
    (call $check (i32.const 0) (call $get_prop {ro_path} (i32.const 24) (i32.const 28)))
    (call $check (i32.const 97) (i32.load8_u (i32.load (i32.const 24))))
    (call $check (i32.const 0) (call $get_prop {fs_ro} (i32.const 24) (i32.const 28)))
    (call $check (i32.const 97) (i32.load8_u (i32.load (i32.const 24))))
    (call $check (i32.const 1) (call $get_prop {deeper} (i32.const 24) (i32.const 28)))
    ;; undeclared: writable
    (call $check (i32.const 0) (call $set_prop {rw_path} {a}))
    (call $check (i32.const 0) (call $set_prop {rw_path} {b}))
    (call $check (i32.const 0) (call $get_prop {rw_path} (i32.const 24) (i32.const 28)))
    (call $check (i32.const 98) (i32.load8_u (i32.load (i32.const 24))))
    ;; a two-token path is stored, but read as a path into the first token's value
    (call $check (i32.const 0) (call $set_prop {two} {a}))
    (call $check (i32.const 1) (call $get_prop {two} (i32.const 24) (i32.const 28)))
    ;; declared on the stream's own context: once, and not what set_property consults
    (call $check (i32.const 0) (call $f {declare} {ro}))
    (call $check (i32.const 2) (call $f {declare} {ro}))"
    );
    let m = module(&d.0, &configure, &stream);
    let host = Host::new();
    let p = host.start_plugin(&m, "", "").unwrap();
    let mut s = p.http_stream().unwrap();
    s.send_request_headers(&[(":path", "/")], true).unwrap();
    s.complete().unwrap();
    assert!(p.failure().is_none());
}

#[test]
fn the_other_functions_compress_clear_the_route_cache_or_are_unimplemented() {
    let mut d = Data::default();
    let (compress, uncompress, clear) = (
        d.put(b"compress"),
        d.put(b"uncompress"),
        d.put(b"clear_route_cache"),
    );
    let (hello, nothing, bad) = (d.put(b"hello"), d.put(b""), d.put(b"hello"));
    let (unknown, verify, expr) = (
        d.put(b"no_such_function"),
        d.put(b"verify_signature"),
        d.put(b"expr_create"),
    );
    let stream = format!(
        "    ;; compress, then uncompress what it gave
    (call $check (i32.const 0) (call $f {compress} {hello}))
    (i32.store (i32.const 32) (i32.load (i32.const 16)))
    (i32.store (i32.const 36) (i32.load (i32.const 20)))
    (call $check (i32.const 0) (call $foreign (i32.add (i32.const 1024) (i32.const {uncompress_at})) (i32.const 10)
                                              (i32.load (i32.const 32)) (i32.load (i32.const 36)) (i32.const 16) (i32.const 20)))
    (call $check (i32.const 5) (i32.load (i32.const 20)))
    (call $same (i32.load (i32.const 16)) (i32.add (i32.const 1024) (i32.const {hello_at})) (i32.const 5))
    (call $check (i32.const 3) (call $f {uncompress} {bad}))
    (call $check (i32.const 0) (i32.load (i32.const 16)))
    (call $check (i32.const 3) (call $f {uncompress} {nothing}))
    (call $check (i32.const 0) (call $f {clear} {nothing}))
    (call $check (i32.const 0) (call $f {clear} {hello}))
    ;; unknown: NotFound, out-parameters untouched
    (call $check (i32.const 1) (call $f {unknown} {nothing}))
    (call $check (i32.const 0x11111111) (i32.load (i32.const 16)))
    (call $check (i32.const 12) (call $f {verify} {nothing}))
    (call $check (i32.const 0) (i32.load (i32.const 16)))
    (call $check (i32.const 0) (i32.load (i32.const 20)))
    (call $check (i32.const 12) (call $f {expr} {nothing}))",
        uncompress_at = uncompress.split(' ').nth(1).unwrap().trim_end_matches(')'),
        hello_at = hello.split(' ').nth(1).unwrap().trim_end_matches(')'),
    );
    let m = module(&d.0, "", &stream);
    let host = Host::new();
    let p = host.start_plugin(&m, "", "").unwrap();
    let mut s = p.http_stream().unwrap();
    s.send_request_headers(&[(":path", "/")], true).unwrap();
    assert_eq!(s.route_cache_clears(), 2);
    let names: Vec<(String, Status)> = host
        .foreign_calls()
        .into_iter()
        .map(|c| (c.name, c.status))
        .collect();
    assert_eq!(names[0], ("compress".into(), Status::Ok));
    assert_eq!(
        names[2],
        ("uncompress".into(), Status::SerializationFailure)
    );
    assert_eq!(names[6], ("no_such_function".into(), Status::NotFound));
    assert_eq!(names[7], ("verify_signature".into(), Status::Unimplemented));

    // A registered function replaces Envoy's: a test may stub one.
    let host = Host::new();
    host.register_foreign_function("verify_signature", |_| Ok(Vec::new()));
    host.register_foreign_function("expr_create", |_| Err(Status::Unimplemented));
    let p = host.start_plugin(&m, "", "").unwrap();
    let mut s = p.http_stream().unwrap();
    let e = s.send_request_headers(&[(":path", "/")], true);
    assert!(
        e.is_err() || p.failure().is_some(),
        "verify_signature stubbed to Ok fails the module's check"
    );
    assert_eq!(
        host.foreign_calls().last().map(|c| c.status),
        Some(Status::Ok)
    );
    assert!(foreign::UNIMPLEMENTED.contains(&"verify_signature"));
}

#[test]
fn a_connection_goes_to_the_cluster_its_filter_picked() {
    use proxy_wasm_harness::scenario::Scenario;
    let mut d = Data::default();
    let name = d.put(b"set_envoy_filter_state");
    let b = d.put(&fs(TCP, "b_side", LifeSpan::FilterChain));
    let m = module(&d.0, "", &format!("    (drop (call $f {name} {b}))"));
    let run = |yaml: &str| {
        let host = Host::new();
        let p = host.start_plugin(&m, "", "").unwrap();
        Scenario::from_yaml(yaml).unwrap().run_connection(&p)
    };
    let o = run("name: t\ntcp_clusters: [b_side]\nconnection: [{downstream: x}]\n").unwrap();
    assert_eq!(o.upstream_cluster, "b_side");
    assert_eq!(o.upstream_received, "x");
    let e = run("name: t\ntcp_clusters: [c]\nconnection: [{downstream: x}]\n").unwrap_err();
    assert!(
        e.to_string()
            .contains("neither `upstream` nor in `tcp_clusters`"),
        "{e}"
    );
}
