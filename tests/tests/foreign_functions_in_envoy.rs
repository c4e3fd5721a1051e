//! Envoy's foreign functions against Envoy 1.40: a module calls `proxy_call_foreign_function`
//! (and the property calls they change) from its root context while configuring and from
//! `proxy_on_request_headers`, and logs what each returned, as `name=status ptr=... size=...`
//! with the value it got (text, or hex); Envoy and the harness must log the same lines in the
//! same order. What the lines show is also asserted, so the test says what Envoy does:
//!
//! - an unknown name is `NotFound`, the out-parameters untouched; a function that ran writes
//!   them whatever its status (0 and 0 when it returned nothing);
//! - `set_envoy_filter_state`: `BadArgument` for arguments protobuf does not parse (a string
//!   that is not UTF-8 included), `NotFound` for a path no factory has (and on a root context),
//!   `BadArgument` for a value the factory refuses; the object reads back through
//!   `proxy_get_property(["filter_state", PATH])`; set again with another life span it stays;
//! - every filter state factory of Envoy 1.40 the harness knows, set with a few values and read
//!   back;
//! - `declare_property`: once per name and context (`BadArgument` after); a readonly property
//!   set twice is `BadArgument`; a property reads at `NAME` and at `filter_state.wasm.NAME`,
//!   but not deeper;
//! - `clear_route_cache` is `Ok` everywhere; `compress`/`uncompress` round-trip, `uncompress`
//!   refuses what is not a zlib stream with `SerializationFailure` and allocates even an empty
//!   result.
//!
//! The functions the harness does not implement (`foreign::UNIMPLEMENTED`) answer
//! `Unimplemented` (12) in the harness; the test checks that Envoy has them (anything but
//! `NotFound`; with no arguments each answers `BadArgument`) and that the harness says
//! `Unimplemented`, writing the out-parameters as a function that ran.

// Helpers outside #[test] functions fail the test loudly.
#![allow(clippy::unwrap_used, clippy::panic)]

use e2e::envoy::{Envoy, bootstrap, wasm_filter};
use e2e::fidelity::abi_prelude;
use e2e::http1::{Client, Upstream};
use proxy_wasm_harness::abi::LogLevel;
use proxy_wasm_harness::foreign::{self, DeclareProperty, LifeSpan, SetEnvoyFilterState, WasmType};
use proxy_wasm_harness::{Host, Module, Runtime};
use std::fmt::Write as _;
use std::time::{Duration, Instant};

/// Where the constant strings live, the out-parameters land, and the log line is built.
const DATA: u32 = 16 * 1024;
const OUT: u32 = 64;
const SAVE: u32 = 80;
const LINE: u32 = 4096;
const UNTOUCHED: u32 = 0x1111_1111;

/// zlib's `compress()` of `hello` and of nothing (as Python's `zlib.compress` writes them).
const ZLIB_HELLO: &[u8] = b"\x78\x9c\xcb\x48\xcd\xc9\xc9\x07\x00\x06\x2c\x02\x15";
const ZLIB_EMPTY: &[u8] = b"\x78\x9c\x03\x00\x00\x00\x00\x01";

struct Consts {
    bytes: Vec<u8>,
}

impl Consts {
    fn put(&mut self, b: &[u8]) -> (u32, u32) {
        let at = DATA + self.bytes.len() as u32;
        self.bytes.extend(b);
        self.bytes.push(0);
        (at, b.len() as u32)
    }
    fn b(&mut self, b: &[u8]) -> String {
        let (p, l) = self.put(b);
        format!("(i32.const {p}) (i32.const {l})")
    }
}

/// How a case's line shows the out-parameters.
#[derive(Clone, Copy)]
enum Show {
    /// The status only.
    Status,
    /// Status, pointer and size.
    Out,
    /// Status, pointer, size and the value as text.
    Text,
    /// Status, pointer, size and the value in hex.
    Hex,
}

struct Case {
    name: String,
    expr: String,
    show: Show,
    /// Run after the case (e.g. keep its result).
    then: String,
}

fn case(name: &str, expr: String, show: Show) -> Case {
    Case {
        name: name.into(),
        expr,
        show,
        then: String::new(),
    }
}

fn call(k: &mut Consts, function: &str, args: &[u8]) -> String {
    format!(
        "(call $proxy_call_foreign_function {} {} (i32.const {OUT}) (i32.const {}))",
        k.b(function.as_bytes()),
        k.b(args),
        OUT + 4
    )
}

fn fs_args(path: &str, value: &[u8], span: LifeSpan) -> Vec<u8> {
    // Built by hand where the value is not UTF-8 (the type holds a String).
    match std::str::from_utf8(value) {
        Ok(v) => SetEnvoyFilterState {
            path: path.into(),
            value: v.into(),
            span,
        }
        .encode(),
        Err(_) => {
            let mut b = SetEnvoyFilterState {
                path: path.into(),
                value: String::new(),
                span,
            }
            .encode();
            b.push(0x12);
            b.push(value.len() as u8);
            b.extend(value);
            b
        }
    }
}

fn get_property(k: &mut Consts, path: &[&str]) -> String {
    format!(
        "(call $proxy_get_property {} (i32.const {OUT}) (i32.const {}))",
        k.b(path.join("\0").as_bytes()),
        OUT + 4
    )
}

fn set_property(k: &mut Consts, path: &[&str], value: &str) -> String {
    format!(
        "(call $proxy_set_property {} {})",
        k.b(path.join("\0").as_bytes()),
        k.b(value.as_bytes())
    )
}

fn declare(name: &str, readonly: bool, kind: WasmType) -> Vec<u8> {
    DeclareProperty {
        name: name.into(),
        readonly,
        kind,
        schema: Vec::new(),
        span: LifeSpan::FilterChain,
    }
    .encode()
}

/// Values each filter state factory is tried with.
const FACTORY_VALUES: &[&str] = &[
    "x",
    "8080",
    " +7 ",
    "127.0.0.1",
    "127.0.0.1:8080",
    "true",
    "No",
    "",
];

/// The cases on the root context, while configuring.
fn root_cases(k: &mut Consts) -> Vec<Case> {
    let tcp = |v: &str| {
        fs_args(
            "envoy.tcp_proxy.cluster",
            v.as_bytes(),
            LifeSpan::FilterChain,
        )
    };
    vec![
        case("root_unknown", call(k, "no_such_function", b""), Show::Out),
        case(
            "root_set_filter_state",
            call(k, "set_envoy_filter_state", &tcp("c1")),
            Show::Out,
        ),
        case(
            "root_clear_route_cache",
            call(k, "clear_route_cache", b""),
            Show::Out,
        ),
        case(
            "root_declare_ro",
            call(k, "declare_property", &declare("ro", true, WasmType::Bytes)),
            Show::Out,
        ),
        case(
            "root_declare_ro_again",
            call(
                k,
                "declare_property",
                &declare("ro", false, WasmType::String),
            ),
            Show::Out,
        ),
        case(
            "root_declare_str",
            call(
                k,
                "declare_property",
                &declare("str", false, WasmType::String),
            ),
            Show::Out,
        ),
        case(
            "root_declare_garbage",
            call(k, "declare_property", b"\xff"),
            Show::Out,
        ),
        case(
            "root_set_property",
            set_property(k, &["rw"], "v"),
            Show::Status,
        ),
    ]
}

/// The cases on the stream, in `proxy_on_request_headers`.
fn stream_cases(k: &mut Consts) -> Vec<Case> {
    let fs = |path: &str, v: &[u8], span| fs_args(path, v, span);
    let tcp = "envoy.tcp_proxy.cluster";
    let read_tcp = |k: &mut Consts| get_property(k, &["filter_state", tcp]);
    let mut with_unknown_field = fs(tcp, b"c4", LifeSpan::FilterChain);
    with_unknown_field.extend([0x48, 0x07, 0x52, 0x01, b'z']);
    let mut v = vec![
        case("unknown", call(k, "no_such_function", b"args"), Show::Out),
        case(
            "unknown_without_result",
            format!(
                "(call $proxy_call_foreign_function {} {} (i32.const 0) (i32.const 0))",
                k.b(b"no_such_function"),
                k.b(b"")
            ),
            Show::Out,
        ),
        case(
            "fs_set",
            call(
                k,
                "set_envoy_filter_state",
                &fs(tcp, b"c1", LifeSpan::FilterChain),
            ),
            Show::Out,
        ),
        case("fs_get", read_tcp(k), Show::Text),
        case(
            "fs_set_other_span",
            call(
                k,
                "set_envoy_filter_state",
                &fs(tcp, b"c2", LifeSpan::DownstreamRequest),
            ),
            Show::Out,
        ),
        case("fs_get_after_other_span", read_tcp(k), Show::Text),
        case(
            "fs_set_again",
            call(
                k,
                "set_envoy_filter_state",
                &fs(tcp, b"c3", LifeSpan::FilterChain),
            ),
            Show::Out,
        ),
        case("fs_get_again", read_tcp(k), Show::Text),
        case(
            "fs_set_unknown_fields",
            call(k, "set_envoy_filter_state", &with_unknown_field),
            Show::Out,
        ),
        case("fs_get_unknown_fields", read_tcp(k), Show::Text),
        case(
            "fs_unknown_path",
            call(
                k,
                "set_envoy_filter_state",
                &fs("my.own.key", b"x", LifeSpan::FilterChain),
            ),
            Show::Out,
        ),
        case(
            "fs_empty_arguments",
            call(k, "set_envoy_filter_state", b""),
            Show::Out,
        ),
        case(
            "fs_garbage",
            call(k, "set_envoy_filter_state", b"\xff"),
            Show::Out,
        ),
        case(
            "fs_value_not_utf8",
            call(
                k,
                "set_envoy_filter_state",
                &fs(tcp, b"\xff\xfe", LifeSpan::FilterChain),
            ),
            Show::Out,
        ),
        case(
            "fs_get_unset",
            get_property(k, &["filter_state", "my.own.key"]),
            Show::Out,
        ),
    ];
    for factory in foreign::filter_state_factories() {
        if factory == tcp {
            continue;
        }
        for value in FACTORY_VALUES {
            v.push(case(
                &format!("factory {factory} {value:?} set"),
                call(
                    k,
                    "set_envoy_filter_state",
                    &fs(factory, value.as_bytes(), LifeSpan::FilterChain),
                ),
                Show::Out,
            ));
            v.push(case(
                &format!("factory {factory} {value:?} get"),
                get_property(k, &["filter_state", factory]),
                Show::Hex,
            ));
        }
    }
    v.extend([
        case("clear_route_cache", call(k, "clear_route_cache", b"x"), Show::Out),
        case("compress", call(k, "compress", b"hello hello hello"), Show::Out),
        Case {
            then: format!(
                "(i32.store (i32.const {SAVE}) (i32.load (i32.const {OUT}))) (i32.store (i32.const {}) (i32.load (i32.const {})))",
                SAVE + 4,
                OUT + 4
            ),
            ..case("compress_again", call(k, "compress", b"hello hello hello"), Show::Hex)
        },
        case(
            "uncompress_compressed",
            format!(
                "(call $proxy_call_foreign_function {} (i32.load (i32.const {SAVE})) (i32.load (i32.const {})) (i32.const {OUT}) (i32.const {}))",
                k.b(b"uncompress"),
                SAVE + 4,
                OUT + 4
            ),
            Show::Text,
        ),
        case("uncompress_zlib", call(k, "uncompress", ZLIB_HELLO), Show::Text),
        case(
            "uncompress_trailing_byte",
            call(k, "uncompress", &[ZLIB_HELLO, b"!"].concat()),
            Show::Text,
        ),
        case(
            "uncompress_truncated",
            call(k, "uncompress", &ZLIB_HELLO[..ZLIB_HELLO.len() - 1]),
            Show::Out,
        ),
        case("uncompress_garbage", call(k, "uncompress", b"hello"), Show::Out),
        case("uncompress_nothing", call(k, "uncompress", b""), Show::Out),
        case("uncompress_empty", call(k, "uncompress", ZLIB_EMPTY), Show::Out),
        case(
            "compress_without_result",
            format!(
                "(call $proxy_call_foreign_function {} {} (i32.const 0) (i32.const {}))",
                k.b(b"compress"),
                k.b(b"hello"),
                OUT + 4
            ),
            Show::Out,
        ),
        // Properties: the root context declared `ro` (readonly) and `str`.
        case("set_ro", set_property(k, &["ro"], "a"), Show::Status),
        case("set_ro_again", set_property(k, &["ro"], "b"), Show::Status),
        case("get_ro", get_property(k, &["ro"]), Show::Text),
        case(
            "get_ro_filter_state",
            get_property(k, &["filter_state", "wasm.ro"]),
            Show::Text,
        ),
        case("get_ro_deeper", get_property(k, &["ro", "x"]), Show::Out),
        case("set_str", set_property(k, &["str"], "s"), Show::Status),
        case(
            "get_str_filter_state",
            get_property(k, &["filter_state", "wasm.str"]),
            Show::Text,
        ),
        case("set_rw", set_property(k, &["rw"], "1"), Show::Status),
        case("set_rw_again", set_property(k, &["rw"], "2"), Show::Status),
        case("get_rw", get_property(k, &["rw"]), Show::Text),
        case("set_two_tokens", set_property(k, &["a", "b"], "x"), Show::Status),
        case("get_two_tokens", get_property(k, &["a", "b"]), Show::Out),
        case("get_never_set", get_property(k, &["never_set"]), Show::Out),
        case(
            "declare_in_stream",
            call(k, "declare_property", &declare("ro", false, WasmType::Bytes)),
            Show::Out,
        ),
        case(
            "declare_in_stream_again",
            call(k, "declare_property", &declare("ro", false, WasmType::Bytes)),
            Show::Out,
        ),
        case(
            "declare_new_in_stream",
            call(k, "declare_property", &declare("late", true, WasmType::Bytes)),
            Show::Out,
        ),
        case("set_late", set_property(k, &["late"], "1"), Show::Status),
        case("set_late_again", set_property(k, &["late"], "2"), Show::Status),
    ]);
    for name in foreign::UNIMPLEMENTED {
        v.push(case(name, call(k, name, b""), Show::Out));
    }
    v
}

const IMPORTS: &str = r#"
  (import "env" "proxy_log" (func $proxy_log (param i32 i32 i32) (result i32)))
  (import "env" "proxy_call_foreign_function" (func $proxy_call_foreign_function (param i32 i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_get_property" (func $proxy_get_property (param i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_set_property" (func $proxy_set_property (param i32 i32 i32 i32) (result i32)))"#;

/// WAT that runs `cases`, each reported with `$report`.
fn body(k: &mut Consts, cases: &[Case]) -> String {
    let mut body = String::new();
    for c in cases {
        let (p, l) = k.put(c.name.as_bytes());
        let mode = c.show as u32;
        writeln!(
            body,
            "    (call $prefill) (call $report (i32.const {p}) (i32.const {l}) {} (i32.const {mode})) {}",
            c.expr, c.then
        )
        .unwrap();
    }
    body
}

/// The module, and how many lines it logs per configure and per request.
fn module_wat() -> (String, usize, usize) {
    let mut k = Consts { bytes: Vec::new() };
    let root = root_cases(&mut k);
    let stream = stream_cases(&mut k);
    let root_body = body(&mut k, &root);
    let stream_body = body(&mut k, &stream);
    let w = |k: &mut Consts, s: &str| {
        let (p, l) = k.put(s.as_bytes());
        format!("(i32.const {p}) (i32.const {l})")
    };
    let (ptr, size, value, hex) = (
        w(&mut k, " ptr="),
        w(&mut k, " size="),
        w(&mut k, " value="),
        w(&mut k, " hex="),
    );
    let (zero, untouched, allocated) = (
        w(&mut k, "0"),
        w(&mut k, "untouched"),
        w(&mut k, "allocated"),
    );
    let (digits, _) = k.put(b"0123456789abcdef");
    let data: String = k.bytes.iter().map(|b| format!("\\{b:02x}")).collect();
    let prelude = abi_prelude(4, 131072).replace(
        r#"(func (export "proxy_on_configure") (param i32 i32) (result i32) (i32.const 1))"#,
        "",
    );
    let wat = format!(
        r#"(module
{IMPORTS}{prelude}
  (data (i32.const {DATA}) "{data}")
  (func $write_str (param $at i32) (param $p i32) (param $n i32) (result i32)
    (memory.copy (local.get $at) (local.get $p) (local.get $n))
    (i32.add (local.get $at) (local.get $n)))
  (func $write_dec (param $at i32) (param $v i32) (result i32)
    (local $n i32) (local $digits i32) (local $end i32)
    (local.set $n (local.get $v))
    (local.set $digits (i32.const 1))
    (block $done (loop $more
      (br_if $done (i32.lt_u (local.get $n) (i32.const 10)))
      (local.set $n (i32.div_u (local.get $n) (i32.const 10)))
      (local.set $digits (i32.add (local.get $digits) (i32.const 1)))
      (br $more)))
    (local.set $end (i32.add (local.get $at) (local.get $digits)))
    (local.set $at (local.get $end))
    (loop $write
      (local.set $at (i32.sub (local.get $at) (i32.const 1)))
      (i32.store8 (local.get $at) (i32.add (i32.const 48) (i32.rem_u (local.get $v) (i32.const 10))))
      (local.set $v (i32.div_u (local.get $v) (i32.const 10)))
      (br_if $write (i32.ne (local.get $v) (i32.const 0))))
    (local.get $end))
  (func $write_hex (param $at i32) (param $p i32) (param $n i32) (result i32)
    (local $i i32) (local $b i32)
    (block $done (loop $more
      (br_if $done (i32.ge_u (local.get $i) (local.get $n)))
      (local.set $b (i32.load8_u (i32.add (local.get $p) (local.get $i))))
      (i32.store8 (local.get $at) (i32.load8_u (i32.add (i32.const {digits}) (i32.shr_u (local.get $b) (i32.const 4)))))
      (i32.store8 (i32.add (local.get $at) (i32.const 1)) (i32.load8_u (i32.add (i32.const {digits}) (i32.and (local.get $b) (i32.const 15)))))
      (local.set $at (i32.add (local.get $at) (i32.const 2)))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br $more)))
    (local.get $at))
  (func $prefill
    (i32.store (i32.const {OUT}) (i32.const {UNTOUCHED}))
    (i32.store (i32.const {out4}) (i32.const {UNTOUCHED})))
  ;; Log "NAME=STATUS", then as `mode` says: " ptr=P size=N", " value=TEXT" or " hex=HEX".
  (func $report (param $name i32) (param $len i32) (param $status i32) (param $mode i32)
    (local $at i32) (local $ptr i32) (local $size i32)
    (local.set $at (call $write_str (i32.const {LINE}) (local.get $name) (local.get $len)))
    (i32.store8 (local.get $at) (i32.const 61))
    (local.set $at (call $write_dec (i32.add (local.get $at) (i32.const 1)) (local.get $status)))
    (if (i32.ge_u (local.get $mode) (i32.const 1)) (then
      (local.set $ptr (i32.load (i32.const {OUT})))
      (local.set $size (i32.load (i32.const {out4})))
      (local.set $at (call $write_str (local.get $at) {ptr}))
      (if (i32.eqz (local.get $ptr))
        (then (local.set $at (call $write_str (local.get $at) {zero})))
        (else (if (i32.eq (local.get $ptr) (i32.const {UNTOUCHED}))
          (then (local.set $at (call $write_str (local.get $at) {untouched})))
          (else (local.set $at (call $write_str (local.get $at) {allocated}))))))
      (local.set $at (call $write_str (local.get $at) {size}))
      (if (i32.eq (local.get $size) (i32.const {UNTOUCHED}))
        (then (local.set $at (call $write_str (local.get $at) {untouched})))
        (else (local.set $at (call $write_dec (local.get $at) (local.get $size)))))
      (if (i32.and (i32.ge_u (local.get $mode) (i32.const 2)) (i32.eqz (local.get $status))) (then
        (if (i32.eq (local.get $mode) (i32.const 2))
          (then
            (local.set $at (call $write_str (local.get $at) {value}))
            (local.set $at (call $write_str (local.get $at) (local.get $ptr) (local.get $size))))
          (else
            (local.set $at (call $write_str (local.get $at) {hex}))
            (local.set $at (call $write_hex (local.get $at) (local.get $ptr) (local.get $size)))))))))
    (drop (call $proxy_log (i32.const 2) (i32.const {LINE}) (i32.sub (local.get $at) (i32.const {LINE})))))
  (func (export "proxy_on_configure") (param i32 i32) (result i32)
{root_body}    (i32.const 1))
  (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
{stream_body}    (i32.const 0))
)"#,
        out4 = OUT + 4,
    );
    (wat, root.len(), stream.len())
}

fn envoy_lines(log: &str) -> Vec<String> {
    log.lines()
        .filter_map(|l| {
            l.split_once(" wasm log ")?
                .1
                .split_once(": ")
                .map(|(_, m)| m.to_string())
        })
        .filter(|m| m.contains('='))
        .collect()
}

#[test]
fn foreign_functions_answer_as_in_envoy() {
    let (wat, roots, streams) = module_wat();
    let dir = tempfile::tempdir().unwrap();
    let wasm = dir.path().join("foreign.wasm");
    std::fs::write(&wasm, wat::parse_str(&wat).unwrap()).unwrap();

    let upstream = Upstream::answering(200, &[], Some("up"));
    let filter = wasm_filter("foreign", "", &wasm, "");
    let envoy = Envoy::must_start(&bootstrap(upstream.addr(), vec![filter]));
    let resp = Client::connect(envoy.listener)
        .unwrap()
        .get("/", &[])
        .unwrap();
    // Envoy configures three times (the canary, the main thread, the worker), as the harness
    // does when asked.
    let count = 3 * roots + streams;
    let in_envoy = e2e::poll_until(Instant::now() + Duration::from_secs(10), || {
        let lines = envoy_lines(&envoy.log());
        (lines.len() >= count).then_some(lines)
    })
    .unwrap_or_else(|| panic!("Envoy logged fewer than {count} results:\n{}", envoy.log()));

    let host = Host::new();
    host.set_clusters(&["upstream"]);
    let module = Module::from_bytes(&Runtime::shared(), wat.as_bytes()).unwrap();
    let plugin = host
        .plugin(&module)
        .name("foreign")
        .vm_id("foreign")
        .canary(true)
        .main_thread(true)
        .start()
        .unwrap();
    let mut s = plugin.http_stream().unwrap();
    s.send_request_headers(
        &[(":method", "GET"), (":path", "/"), (":authority", "x")],
        true,
    )
    .unwrap();
    let in_harness: Vec<String> = host
        .logs()
        .into_iter()
        .filter(|l| l.level == LogLevel::Info && l.message.contains('='))
        .map(|l| l.message)
        .collect();
    assert_eq!(resp.status(), 200, "{}", envoy.log());

    let unimplemented = |line: &str| {
        foreign::UNIMPLEMENTED
            .iter()
            .any(|n| line.starts_with(&format!("{n}=")))
    };
    let mut differ = Vec::new();
    for (e, h) in in_envoy.iter().zip(&in_harness) {
        let same = e == h;
        println!(
            "{} envoy {e:<60} harness {h}",
            if same { "  " } else { "!=" }
        );
        if unimplemented(e) {
            // Envoy has it; the harness says it does not implement it.
            assert!(!e.contains("=1 "), "Envoy 1.40 lacks it: {e}");
            assert!(
                h.ends_with("=12 ptr=0 size=0"),
                "the harness must say Unimplemented: {h}"
            );
        } else if !same {
            differ.push(format!("envoy {e}\n  harness {h}"));
        }
    }
    assert_eq!(in_envoy.len(), in_harness.len());
    assert!(
        differ.is_empty(),
        "{} of {count} lines differ:\n{}",
        differ.len(),
        differ.join("\n")
    );
    // What Envoy does, as the lines show it (the harness agreed with every line above).
    let line = |name: &str| -> &str {
        in_envoy
            .iter()
            .rev()
            .find(|l| l.starts_with(&format!("{name}=")))
            .unwrap_or_else(|| panic!("no line {name}"))
    };
    for (name, want) in [
        (
            "root_unknown",
            "root_unknown=1 ptr=untouched size=untouched",
        ),
        (
            "root_set_filter_state",
            "root_set_filter_state=1 ptr=0 size=0",
        ),
        (
            "root_clear_route_cache",
            "root_clear_route_cache=0 ptr=0 size=0",
        ),
        ("root_declare_ro", "root_declare_ro=0 ptr=0 size=0"),
        (
            "root_declare_ro_again",
            "root_declare_ro_again=2 ptr=0 size=0",
        ),
        (
            "root_declare_garbage",
            "root_declare_garbage=2 ptr=0 size=0",
        ),
        ("root_set_property", "root_set_property=1"),
        ("unknown", "unknown=1 ptr=untouched size=untouched"),
        ("fs_set", "fs_set=0 ptr=0 size=0"),
        ("fs_get", "fs_get=0 ptr=allocated size=2 value=c1"),
        ("fs_unknown_path", "fs_unknown_path=1 ptr=0 size=0"),
        ("fs_empty_arguments", "fs_empty_arguments=1 ptr=0 size=0"),
        ("fs_garbage", "fs_garbage=2 ptr=0 size=0"),
        (
            "fs_get_unset",
            "fs_get_unset=1 ptr=untouched size=untouched",
        ),
        ("clear_route_cache", "clear_route_cache=0 ptr=0 size=0"),
        (
            "uncompress_zlib",
            "uncompress_zlib=0 ptr=allocated size=5 value=hello",
        ),
        ("uncompress_garbage", "uncompress_garbage=3 ptr=0 size=0"),
        ("set_ro", "set_ro=0"),
        ("set_ro_again", "set_ro_again=2"),
        ("get_ro", "get_ro=0 ptr=allocated size=1 value=a"),
        ("get_rw", "get_rw=0 ptr=allocated size=1 value=2"),
    ] {
        assert_eq!(line(name), want);
    }
}
