//! What the harness-against-Envoy comparisons share: the one list of values masked because they
//! differ on every run, and readers for what Envoy shows (its wasm log lines, a request as a
//! server received it).

use crate::http1::Message;
use proxy_wasm_harness::scenario::WireRequest;

/// Header values that differ on every run, masked by name wherever they appear (responses,
/// upstream requests, calls, the maps a filter reads) before comparing; nothing else is left
/// out of any comparison.
pub const PER_RUN: &[(&str, &str)] = &[
    ("date", "the time the response was sent"),
    (
        "x-request-id",
        "a random UUID per request (Envoy); a fixed one in the harness",
    ),
    (
        "x-envoy-upstream-service-time",
        "milliseconds the upstream took",
    ),
];

/// Attributes (`proxy_get_property`) whose values differ on every run: compared by shape only
/// (the same status and the same length), each for the reason given. The harness gives each a
/// value of Envoy's type and size.
pub const PER_RUN_ATTRIBUTES: &[(&str, &str)] = &[
    (
        "request.id",
        "the x-request-id, a random UUID per request in Envoy",
    ),
    ("request.time", "the wall-clock time the request arrived"),
    ("request.duration", "the time the request took"),
    (
        "connection.id",
        "Envoy's count of connections accepted so far",
    ),
    (
        "source.address",
        "the client's port, chosen by the kernel (the address is 127.0.0.1 in both)",
    ),
    ("source.port", "the client's port, chosen by the kernel"),
    (
        "destination.address",
        "the listener's port, chosen by the kernel",
    ),
    (
        "destination.port",
        "the listener's port, chosen by the kernel",
    ),
    (
        "upstream.address",
        "the upstream's port, chosen by the kernel",
    ),
    ("upstream.port", "the upstream's port, chosen by the kernel"),
];

/// What every hand-written test module shares, in WAT (after its imports): `pages` of exported
/// memory, a bump `malloc` from `heap` (the host hands the module data through it), the ABI
/// 0.2.1 marker, and a context create and configure that accept everything. The bump pointer is
/// the global `$next`.
pub fn abi_prelude(pages: u32, heap: u32) -> String {
    format!(
        r#"
  (memory (export "memory") {pages})
  (global $next (mut i32) (i32.const {heap}))
  (func (export "malloc") (param $n i32) (result i32)
    (local $p i32)
    (local.set $p (global.get $next))
    (global.set $next (i32.add (global.get $next) (local.get $n)))
    (local.get $p))
  (func (export "proxy_abi_version_0_2_1"))
  (func (export "proxy_on_context_create") (param i32 i32))
  (func (export "proxy_on_configure") (param i32 i32) (result i32) (i32.const 1))
"#
    )
}

/// The `tests/scenarios/*.yaml` files (HTTP requests) in name order: (file name, scenario).
pub fn scenarios() -> Vec<(String, proxy_wasm_harness::scenario::Scenario)> {
    scenarios_in("tests/scenarios")
}

/// The `tests/scenarios/connections/*.yaml` files (TCP connections through a network filter)
/// in name order: (file name, scenario).
pub fn connection_scenarios() -> Vec<(String, proxy_wasm_harness::scenario::Scenario)> {
    scenarios_in("tests/scenarios/connections")
}

/// The `tests/scenarios/streams/*.yaml` files (HTTP requests whose bodies come in pieces, with
/// trailers, buffer limits, metadata and filter state other filters set) in name order: (file
/// name, scenario). Their client and upstream write each body piece on its own.
pub fn stream_scenarios() -> Vec<(String, proxy_wasm_harness::scenario::Scenario)> {
    scenarios_in("tests/scenarios/streams")
}

/// The protocol options of a `grpc:` cluster in Envoy: HTTP/2 to the server, and
/// `grpc-timeout` removed on the way there. grpcio enforces that header's deadline itself and
/// answers 4 DEADLINE_EXCEEDED when it passes, which races Envoy's own timer for the call (14
/// UNAVAILABLE, "upstream request timeout", what a scenario expects); on a loaded machine the
/// server's answer can come first. Without the header only Envoy's timer ends the call.
pub fn grpc_cluster_options() -> serde_json::Value {
    serde_json::json!({
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
            "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
            "explicit_http_config": {"http2_protocol_options": {}},
            "http_filters": [
                {
                    "name": "envoy.filters.http.header_mutation",
                    "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.filters.http.header_mutation.v3.HeaderMutation",
                        "mutations": {"request_mutations": [{"remove": "grpc-timeout"}]},
                    },
                },
                {
                    "name": "envoy.filters.http.upstream_codec",
                    "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.filters.http.upstream_codec.v3.UpstreamCodec",
                    },
                },
            ],
        },
    })
}

/// The `tests/scenarios/grpc/*.yaml` files (a filter calling gRPC services: `grpc:` answers,
/// served by `tests/grpc_server.py` in Envoy) in name order: (file name, scenario).
pub fn grpc_scenarios() -> Vec<(String, proxy_wasm_harness::scenario::Scenario)> {
    scenarios_in("tests/scenarios/grpc")
}

/// The filters a scenario's Envoy runs before the module, setting what the scenario says other
/// filters set: a Lua filter setting its `metadata`, a `set_filter_state` filter setting its
/// `filter_state` (factory `envoy.string`).
pub fn filters_before(s: &proxy_wasm_harness::scenario::Scenario) -> Vec<serde_json::Value> {
    let mut filters = Vec::new();
    if let Some(m) = &s.metadata {
        let mut lua = String::from(
            "function envoy_on_request(h)\n  local m = h:streamInfo():dynamicMetadata()\n",
        );
        for (ns, fields) in &m.filter_metadata {
            for (k, v) in fields {
                let text =
                    |t: &str| proxy_wasm_harness::scenario::MetaValue::Text(t.into()).to_lua();
                lua.push_str(&format!(
                    "  m:set({}, {}, {})\n",
                    text(ns),
                    text(k),
                    v.to_lua()
                ));
            }
        }
        lua.push_str("end\n");
        filters.push(serde_json::json!({
            "name": "envoy.filters.http.lua",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.lua.v3.Lua",
                "default_source_code": {"inline_string": lua},
            },
        }));
    }
    if !s.filter_state.is_empty() {
        let entries: Vec<serde_json::Value> = s
            .filter_state
            .iter()
            .map(|(k, v)| {
                serde_json::json!({
                    "object_key": k,
                    "factory_key": "envoy.string",
                    "format_string": {"text_format_source": {"inline_string": v}},
                })
            })
            .collect();
        filters.push(serde_json::json!({
            "name": "envoy.filters.http.set_filter_state",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.set_filter_state.v3.Config",
                "on_request_headers": entries,
            },
        }));
    }
    filters
}

fn scenarios_in(folder: &str) -> Vec<(String, proxy_wasm_harness::scenario::Scenario)> {
    let dir = crate::workspace_root().join(folder);
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|p| {
            let text =
                std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            let s = proxy_wasm_harness::scenario::Scenario::from_yaml(&text)
                .unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            (
                p.file_name()
                    .unwrap_or_default()
                    .to_string_lossy()
                    .into_owned(),
                s,
            )
        })
        .collect()
}

/// What a masked value reads.
pub const MASKED: &str = "<per run>";

/// Whether a header's value is masked ([`PER_RUN`]).
pub fn is_per_run(name: &str) -> bool {
    PER_RUN.iter().any(|(n, _)| n.eq_ignore_ascii_case(name))
}

/// Mask the per-run values of a header list in place.
pub fn mask(headers: &mut [(String, String)]) {
    for (k, v) in headers.iter_mut() {
        if is_per_run(k) {
            *v = MASKED.into();
        }
    }
}

/// Mask the per-run values ([`PER_RUN`]) in a log line that lists a map as `|name=value`
/// pairs (as the stream filter logs them).
pub fn mask_logged(line: &str) -> String {
    let mut parts: Vec<String> = line.split('|').map(str::to_string).collect();
    for p in parts.iter_mut().skip(1) {
        if let Some((k, _)) = p.split_once('=')
            && is_per_run(k)
        {
            *p = format!("{k}={MASKED}");
        }
    }
    parts.join("|")
}

/// The module's lines in an Envoy log, `[..][thread][level][wasm] [..] wasm log NAME VM: message`,
/// as (level, message) in order; Envoy's `warning` is the ABI's `warn`.
pub fn envoy_wasm_logs(log: &str) -> Vec<(String, String)> {
    log.lines()
        .filter_map(|l| {
            let (head, rest) = l.split_once(" wasm log ")?;
            let level = match head.split('[').nth(3)?.trim_end_matches(']') {
                "warning" => "warn".to_string(),
                other => other.to_string(),
            };
            Some((level, rest.split_once(": ")?.1.to_string()))
        })
        .collect()
}

/// A request as a test server received it, in the harness's wire form.
pub fn wire(m: &Message) -> WireRequest {
    let mut line = m.start.split(' ');
    WireRequest {
        method: line.next().unwrap_or_default().to_string(),
        path: line.next().unwrap_or_default().to_string(),
        headers: m.headers.clone(),
        body: m.text(),
        trailers: Vec::new(),
    }
}

/// The stream filter: a hand-written module for the stream scenarios
/// (`tests/scenarios/streams/`), its behaviour chosen by the first byte of its configuration.
/// Every callback logs what it got (each header and trailer map pair by pair, each body callback's
/// size and end of stream, and the buffered bytes `proxy_get_buffer_bytes` returns: their length,
/// first and last byte), so the comparison of log lines compares Envoy's callbacks one by one.
///
/// - `p` (pause): every body callback returns `Pause` until end of stream, then reads the whole
///   body (`whole body N`);
/// - `u` (upper): every body chunk is upper-cased in place (`proxy_set_buffer_bytes`);
/// - `t` (trailers): each trailer map gets `x-added: wasm` and loses `x-drop`;
/// - `m:PATH;PATH...` (properties): request headers read each property (`/`-separated segments)
///   and log its status and value in hex;
/// - anything else: continue everywhere.
pub fn stream_filter_wat() -> String {
    r#"(module
  (import "env" "proxy_log" (func $log (param i32 i32 i32) (result i32)))
  (import "env" "proxy_get_buffer_bytes" (func $get_buf (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_set_buffer_bytes" (func $set_buf (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_get_header_map_pairs" (func $pairs (param i32 i32 i32) (result i32)))
  (import "env" "proxy_add_header_map_value" (func $add (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_remove_header_map_value" (func $remove (param i32 i32 i32) (result i32)))
  (import "env" "proxy_get_property" (func $prop (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 48)
  (global $next (mut i32) (i32.const 131072))
  (global $out (mut i32) (i32.const 8192))
  (global $mode (mut i32) (i32.const 0))
  (global $cfg_len (mut i32) (i32.const 0))
  (data (i32.const 256) "request ")
  (data (i32.const 272) "response ")
  (data (i32.const 288) "body size=")
  (data (i32.const 304) " eos=")
  (data (i32.const 320) "trailers n=")
  (data (i32.const 336) "whole body ")
  (data (i32.const 352) "property ")
  (data (i32.const 368) " status=")
  (data (i32.const 384) " value=")
  (data (i32.const 400) "x-added")
  (data (i32.const 408) "wasm")
  (data (i32.const 416) "x-drop")
  (data (i32.const 424) "upper ")
  (data (i32.const 432) "headers eos=")
  (data (i32.const 448) " got=")
  (data (i32.const 456) " first=")
  (data (i32.const 464) " last=")
  (data (i32.const 472) " get=")
  (func (export "malloc") (param $n i32) (result i32)
    (local $p i32)
    (local.set $p (global.get $next))
    (global.set $next (i32.add (global.get $next) (local.get $n)))
    (if (i32.gt_u (global.get $next) (i32.mul (memory.size) (i32.const 65536)))
      (then (drop (memory.grow (i32.add (i32.const 1)
        (i32.div_u (i32.sub (global.get $next) (i32.mul (memory.size) (i32.const 65536))) (i32.const 65536)))))))
    (local.get $p))
  (func (export "proxy_abi_version_0_2_1"))
  (func (export "proxy_on_context_create") (param i32 i32))
  (func (export "proxy_on_configure") (param $root i32) (param $size i32) (result i32)
    (if (i32.gt_u (local.get $size) (i32.const 0))
      (then
        (drop (call $get_buf (i32.const 7) (i32.const 0) (local.get $size) (i32.const 64) (i32.const 68)))
        (global.set $cfg_len (i32.load (i32.const 68)))
        (if (i32.gt_u (global.get $cfg_len) (i32.const 1000)) (then (global.set $cfg_len (i32.const 1000))))
        (memory.copy (i32.const 1024) (i32.load (i32.const 64)) (global.get $cfg_len))
        (global.set $mode (i32.load8_u (i32.const 1024)))))
    (global.set $next (i32.const 131072))
    (i32.const 1))
  (func $put (param $p i32) (param $n i32)
    (memory.copy (global.get $out) (local.get $p) (local.get $n))
    (global.set $out (i32.add (global.get $out) (local.get $n))))
  (func $putc (param $c i32)
    (i32.store8 (global.get $out) (local.get $c))
    (global.set $out (i32.add (global.get $out) (i32.const 1))))
  (func $num (param $v i32)
    (local $i i32)
    (local.set $i (i32.const 32))
    (loop $d
      (local.set $i (i32.sub (local.get $i) (i32.const 1)))
      (i32.store8 (local.get $i) (i32.add (i32.const 48) (i32.rem_u (local.get $v) (i32.const 10))))
      (local.set $v (i32.div_u (local.get $v) (i32.const 10)))
      (br_if $d (i32.ne (local.get $v) (i32.const 0))))
    (call $put (local.get $i) (i32.sub (i32.const 32) (local.get $i))))
  (func $hexd (param $d i32)
    (call $putc (i32.add (local.get $d) (select (i32.const 48) (i32.const 87) (i32.lt_u (local.get $d) (i32.const 10))))))
  (func $hex (param $p i32) (param $n i32)
    (local $e i32)
    (local.set $e (i32.add (local.get $p) (local.get $n)))
    (block $done (loop $each
      (br_if $done (i32.ge_u (local.get $p) (local.get $e)))
      (call $hexd (i32.shr_u (i32.load8_u (local.get $p)) (i32.const 4)))
      (call $hexd (i32.and (i32.load8_u (local.get $p)) (i32.const 15)))
      (local.set $p (i32.add (local.get $p) (i32.const 1)))
      (br $each))))
  (func $flush
    (drop (call $log (i32.const 2) (i32.const 8192) (i32.sub (global.get $out) (i32.const 8192))))
    (global.set $out (i32.const 8192)))
  (func $side (param $side i32)
    (if (local.get $side)
      (then (call $put (i32.const 272) (i32.const 9)))
      (else (call $put (i32.const 256) (i32.const 8)))))
  ;; `|name=value` for every pair of map `type`.
  (func $dump (param $type i32)
    (local $p i32) (local $n i32) (local $i i32) (local $lens i32) (local $data i32)
    (local $kl i32) (local $vl i32)
    (if (call $pairs (local.get $type) (i32.const 64) (i32.const 68)) (then (return)))
    (if (i32.eqz (i32.load (i32.const 68))) (then (return)))
    (local.set $p (i32.load (i32.const 64)))
    (local.set $n (i32.load (local.get $p)))
    (local.set $lens (i32.add (local.get $p) (i32.const 4)))
    (local.set $data (i32.add (local.get $lens) (i32.mul (local.get $n) (i32.const 8))))
    (block $done (loop $each
      (br_if $done (i32.ge_u (local.get $i) (local.get $n)))
      (local.set $kl (i32.load (i32.add (local.get $lens) (i32.mul (local.get $i) (i32.const 8)))))
      (local.set $vl (i32.load (i32.add (local.get $lens) (i32.add (i32.mul (local.get $i) (i32.const 8)) (i32.const 4)))))
      (call $putc (i32.const 124))
      (call $put (local.get $data) (local.get $kl))
      (local.set $data (i32.add (local.get $data) (i32.add (local.get $kl) (i32.const 1))))
      (call $putc (i32.const 61))
      (call $put (local.get $data) (local.get $vl))
      (local.set $data (i32.add (local.get $data) (i32.add (local.get $vl) (i32.const 1))))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br $each))))
  ;; Read every property the configuration lists after `m:`, `;`-separated, `/` between segments.
  (func $props
    (local $i i32) (local $start i32) (local $j i32) (local $c i32) (local $st i32) (local $n i32)
    (local.set $i (i32.const 2))
    (local.set $start (i32.const 2))
    (block $done (loop $each
      (if (i32.or (i32.ge_u (local.get $i) (global.get $cfg_len))
                  (i32.eq (i32.load8_u (i32.add (i32.const 1024) (local.get $i))) (i32.const 59)))
        (then
          (if (i32.gt_u (local.get $i) (local.get $start)) (then
            (local.set $j (i32.const 0))
            (block $cd (loop $copy
              (br_if $cd (i32.ge_u (i32.add (local.get $start) (local.get $j)) (local.get $i)))
              (local.set $c (i32.load8_u (i32.add (i32.const 1024) (i32.add (local.get $start) (local.get $j)))))
              (if (i32.eq (local.get $c) (i32.const 47)) (then (local.set $c (i32.const 0))))
              (i32.store8 (i32.add (i32.const 4096) (local.get $j)) (local.get $c))
              (local.set $j (i32.add (local.get $j) (i32.const 1)))
              (br $copy)))
            (i32.store (i32.const 68) (i32.const 0))
            (local.set $st (call $prop (i32.const 4096) (local.get $j) (i32.const 64) (i32.const 68)))
            (call $put (i32.const 352) (i32.const 9))
            (call $put (i32.add (i32.const 1024) (local.get $start)) (local.get $j))
            (call $put (i32.const 368) (i32.const 8))
            (call $num (local.get $st))
            (if (i32.eqz (local.get $st)) (then
              (call $put (i32.const 384) (i32.const 7))
              (local.set $n (i32.load (i32.const 68)))
              (if (i32.gt_u (local.get $n) (i32.const 256)) (then (local.set $n (i32.const 256))))
              (call $hex (i32.load (i32.const 64)) (local.get $n))))
            (call $flush)))
          (local.set $start (i32.add (local.get $i) (i32.const 1)))))
      (br_if $done (i32.ge_u (local.get $i) (global.get $cfg_len)))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br $each))))
  (func $headers (param $side i32) (param $eos i32) (result i32)
    (global.set $next (i32.const 131072))
    (call $side (local.get $side))
    (call $put (i32.const 432) (i32.const 12))
    (call $num (local.get $eos))
    (call $dump (i32.mul (local.get $side) (i32.const 2)))
    (call $flush)
    (if (i32.and (i32.eqz (local.get $side)) (i32.eq (global.get $mode) (i32.const 109)))
      (then (call $props)))
    (i32.const 0))
  (func $body (param $side i32) (param $size i32) (param $eos i32) (result i32)
    (local $st i32) (local $p i32) (local $n i32) (local $i i32) (local $c i32)
    (global.set $next (i32.const 131072))
    (call $side (local.get $side))
    (call $put (i32.const 288) (i32.const 10))
    (call $num (local.get $size))
    (call $put (i32.const 304) (i32.const 5))
    (call $num (local.get $eos))
    (if (i32.gt_u (local.get $size) (i32.const 0)) (then
      (i32.store (i32.const 68) (i32.const 0))
      (local.set $st (call $get_buf (local.get $side) (i32.const 0) (local.get $size) (i32.const 64) (i32.const 68)))
      (local.set $p (i32.load (i32.const 64)))
      (local.set $n (i32.load (i32.const 68)))
      (call $put (i32.const 472) (i32.const 5))
      (call $num (local.get $st))
      (call $put (i32.const 448) (i32.const 5))
      (call $num (local.get $n))
      (if (i32.gt_u (local.get $n) (i32.const 0)) (then
        (call $put (i32.const 456) (i32.const 7))
        (call $putc (i32.load8_u (local.get $p)))
        (call $put (i32.const 464) (i32.const 6))
        (call $putc (i32.load8_u (i32.sub (i32.add (local.get $p) (local.get $n)) (i32.const 1))))))))
    (call $flush)
    ;; pause
    (if (i32.eq (global.get $mode) (i32.const 112)) (then
      (if (i32.eqz (local.get $eos)) (then (return (i32.const 1))))
      (call $side (local.get $side))
      (call $put (i32.const 336) (i32.const 11))
      (call $num (local.get $n))
      (call $flush)))
    ;; upper
    (if (i32.and (i32.eq (global.get $mode) (i32.const 117)) (i32.gt_u (local.get $n) (i32.const 0))) (then
      (local.set $i (i32.const 0))
      (block $done (loop $each
        (br_if $done (i32.ge_u (local.get $i) (local.get $n)))
        (local.set $c (i32.load8_u (i32.add (local.get $p) (local.get $i))))
        (if (i32.and (i32.ge_u (local.get $c) (i32.const 97)) (i32.le_u (local.get $c) (i32.const 122)))
          (then (i32.store8 (i32.add (local.get $p) (local.get $i)) (i32.sub (local.get $c) (i32.const 32)))))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br $each)))
      (local.set $st (call $set_buf (local.get $side) (i32.const 0) (local.get $size) (local.get $p) (local.get $n)))
      (call $side (local.get $side))
      (call $put (i32.const 424) (i32.const 6))
      (call $num (local.get $n))
      (call $put (i32.const 472) (i32.const 5))
      (call $num (local.get $st))
      (call $flush)))
    (i32.const 0))
  (func $trailers (param $side i32) (param $count i32) (result i32)
    (local $type i32)
    (global.set $next (i32.const 131072))
    (local.set $type (i32.add (i32.mul (local.get $side) (i32.const 2)) (i32.const 1)))
    (call $side (local.get $side))
    (call $put (i32.const 320) (i32.const 11))
    (call $num (local.get $count))
    (call $dump (local.get $type))
    (call $flush)
    (if (i32.eq (global.get $mode) (i32.const 116)) (then
      (drop (call $add (local.get $type) (i32.const 400) (i32.const 7) (i32.const 408) (i32.const 4)))
      (drop (call $remove (local.get $type) (i32.const 416) (i32.const 6)))))
    (i32.const 0))
  (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
    (call $headers (i32.const 0) (local.get 2)))
  (func (export "proxy_on_response_headers") (param i32 i32 i32) (result i32)
    (call $headers (i32.const 1) (local.get 2)))
  (func (export "proxy_on_request_body") (param i32 i32 i32) (result i32)
    (call $body (i32.const 0) (local.get 1) (local.get 2)))
  (func (export "proxy_on_response_body") (param i32 i32 i32) (result i32)
    (call $body (i32.const 1) (local.get 1) (local.get 2)))
  (func (export "proxy_on_request_trailers") (param i32 i32) (result i32)
    (call $trailers (i32.const 0) (local.get 1)))
  (func (export "proxy_on_response_trailers") (param i32 i32) (result i32)
    (call $trailers (i32.const 1) (local.get 1)))
)"#
    .to_string()
}

/// [`stream_filter_wat`] compiled, in the target directory (written once per process).
pub fn stream_filter_wasm() -> std::path::PathBuf {
    static PATH: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();
    PATH.get_or_init(|| {
        let dir = crate::target_dir().join("stream-filter");
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        // Written aside, then renamed into place: test processes running at once agree.
        let path = dir.join("stream_filter.wasm");
        let tmp = dir.join(format!("stream_filter.wasm.{}", std::process::id()));
        let wasm = wat::parse_str(stream_filter_wat()).unwrap_or_else(|e| panic!("{e}"));
        std::fs::write(&tmp, wasm).unwrap_or_else(|e| panic!("{}: {e}", tmp.display()));
        std::fs::rename(&tmp, &path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        path
    })
    .clone()
}

/// How long a streamed message's writer waits between its pieces, so that Envoy's codec reads
/// each piece on its own (one body callback per piece).
pub const PIECE_PAUSE: std::time::Duration = std::time::Duration::from_millis(40);

/// Write an HTTP/1.1 message piece by piece: the head, then each body piece in a write of its
/// own after [`PIECE_PAUSE`], framed with `content-length` (the total; none for an empty body),
/// or with `transfer-encoding: chunked` (each piece a chunk) when `trailers` is given, which end
/// it in a last write.
pub fn write_streamed(
    w: &mut impl std::io::Write,
    start: &str,
    headers: &[(String, String)],
    pieces: &[Vec<u8>],
    trailers: Option<&[(String, String)]>,
) -> std::io::Result<()> {
    let total: usize = pieces.iter().map(Vec::len).sum();
    let mut head = format!("{start}\r\n");
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    if trailers.is_some() {
        head.push_str("transfer-encoding: chunked\r\n");
    } else if total > 0 || start.starts_with("HTTP/") {
        head.push_str(&format!("content-length: {total}\r\n"));
    }
    head.push_str("\r\n");
    w.write_all(head.as_bytes())?;
    w.flush()?;
    for piece in pieces.iter().filter(|p| !p.is_empty()) {
        std::thread::sleep(PIECE_PAUSE);
        let mut out = Vec::with_capacity(piece.len() + 16);
        if trailers.is_some() {
            out.extend_from_slice(format!("{:x}\r\n", piece.len()).as_bytes());
            out.extend_from_slice(piece);
            out.extend_from_slice(b"\r\n");
        } else {
            out.extend_from_slice(piece);
        }
        w.write_all(&out)?;
        w.flush()?;
    }
    if let Some(t) = trailers {
        std::thread::sleep(PIECE_PAUSE);
        let mut out = String::from("0\r\n");
        for (k, v) in t {
            out.push_str(&format!("{k}: {v}\r\n"));
        }
        out.push_str("\r\n");
        w.write_all(out.as_bytes())?;
        w.flush()?;
    }
    Ok(())
}

fn read_line(r: &mut impl std::io::BufRead) -> std::io::Result<String> {
    let mut line = String::new();
    if r.read_line(&mut line)? == 0 {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "connection closed",
        ));
    }
    Ok(line.trim_end().to_string())
}

fn header_lines(r: &mut impl std::io::BufRead) -> std::io::Result<Vec<(String, String)>> {
    let mut headers = Vec::new();
    loop {
        let line = read_line(r)?;
        if line.is_empty() {
            return Ok(headers);
        }
        let (k, v) = line.split_once(':').ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("bad line {line:?}"),
            )
        })?;
        headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
    }
}

/// A message and its trailers, as [`read_streamed`] reads it.
pub type WithTrailers = (Message, Vec<(String, String)>);

/// Read one HTTP/1.1 message (content-length or chunked framing) with its trailers;
/// `Ok(None)` on a clean close before any byte.
pub fn read_streamed(r: &mut impl std::io::BufRead) -> std::io::Result<Option<WithTrailers>> {
    let mut start = String::new();
    if r.read_line(&mut start)? == 0 {
        return Ok(None);
    }
    let mut m = Message {
        start: start.trim_end().to_string(),
        headers: header_lines(r)?,
        ..Message::default()
    };
    let mut trailers = Vec::new();
    let bad = |e: String| std::io::Error::new(std::io::ErrorKind::InvalidData, e);
    if m.header("transfer-encoding")
        .is_some_and(|v| v.eq_ignore_ascii_case("chunked"))
    {
        loop {
            let line = read_line(r)?;
            let size = usize::from_str_radix(line.split(';').next().unwrap_or("").trim(), 16)
                .map_err(|e| bad(format!("chunk size {line:?}: {e}")))?;
            if size == 0 {
                trailers = header_lines(r)?;
                break;
            }
            let mut chunk = vec![0; size + 2];
            r.read_exact(&mut chunk)?;
            chunk.truncate(size);
            m.body.extend_from_slice(&chunk);
        }
    } else if let Some(len) = m.header("content-length") {
        let len: usize = len
            .parse()
            .map_err(|e| bad(format!("content-length: {e}")))?;
        m.body = vec![0; len];
        r.read_exact(&mut m.body)?;
    }
    Ok(Some((m, trailers)))
}

/// What a [`StreamUpstream`] answers: status, headers, body pieces and trailers (given, the
/// answer is chunked).
#[derive(Debug, Clone, Default)]
pub struct StreamAnswer {
    /// Status.
    pub status: u16,
    /// Headers besides the framing.
    pub headers: Vec<(String, String)>,
    /// Body pieces, each written on its own.
    pub pieces: Vec<Vec<u8>>,
    /// Trailers.
    pub trailers: Option<Vec<(String, String)>>,
}

/// An upstream on 127.0.0.1 that records each request with its trailers and answers every one
/// with a [`StreamAnswer`], piece by piece ([`write_streamed`]).
pub struct StreamUpstream {
    listener: std::net::TcpListener,
    received: std::sync::Arc<std::sync::Mutex<Vec<WithTrailers>>>,
}

impl StreamUpstream {
    /// Start it; it serves until dropped (its thread ends with the process).
    pub fn start(answer: StreamAnswer) -> std::io::Result<StreamUpstream> {
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        let received = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (l, rec) = (listener.try_clone()?, received.clone());
        std::thread::spawn(move || {
            for conn in l.incoming() {
                let Ok(conn) = conn else { return };
                let (rec, answer) = (rec.clone(), answer.clone());
                std::thread::spawn(move || {
                    let Ok(mut w) = conn.try_clone() else { return };
                    let mut r = std::io::BufReader::new(conn);
                    while let Ok(Some((mut m, t))) = read_streamed(&mut r) {
                        m.received_at = Some(std::time::Instant::now());
                        if let Ok(mut all) = rec.lock() {
                            all.push((m, t));
                        }
                        let line = format!("HTTP/1.1 {} Status", answer.status);
                        if write_streamed(
                            &mut w,
                            &line,
                            &answer.headers,
                            &answer.pieces,
                            answer.trailers.as_deref(),
                        )
                        .is_err()
                        {
                            return;
                        }
                    }
                });
            }
        });
        Ok(StreamUpstream { listener, received })
    }

    /// Where it listens.
    pub fn addr(&self) -> std::net::SocketAddr {
        self.listener
            .local_addr()
            .unwrap_or_else(|e| panic!("upstream address: {e}"))
    }

    /// Every request received so far, with its trailers.
    pub fn received(&self) -> Vec<WithTrailers> {
        self.received.lock().map(|r| r.clone()).unwrap_or_default()
    }
}

/// A bootstrap for the stream scenarios: [`crate::envoy::bootstrap_with_clusters`] with HTTP/1
/// trailers enabled on the listener and on every cluster (Envoy's HTTP/1 codec drops them
/// otherwise), and the listener's `per_connection_buffer_limit_bytes` when given.
pub fn stream_bootstrap(
    upstream: std::net::SocketAddr,
    http_filters: Vec<serde_json::Value>,
    extra: &[(&str, std::net::SocketAddr)],
    buffer_limit: Option<u32>,
) -> serde_json::Value {
    let mut b = crate::envoy::bootstrap_with_clusters(upstream, http_filters, extra);
    let listener = &mut b["static_resources"]["listeners"][0];
    if let Some(limit) = buffer_limit {
        listener["per_connection_buffer_limit_bytes"] = serde_json::json!(limit);
    }
    listener["filter_chains"][0]["filters"][0]["typed_config"]["http_protocol_options"] =
        serde_json::json!({"enable_trailers": true});
    if let Some(clusters) = b["static_resources"]["clusters"].as_array_mut() {
        for c in clusters {
            c["typed_extension_protocol_options"] = serde_json::json!({
                "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                    "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                    "explicit_http_config": {"http_protocol_options": {"enable_trailers": true}},
                },
            });
        }
    }
    b
}
