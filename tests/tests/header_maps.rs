//! Header maps as a filter sees them, in order, duplicates kept: a probe module logs every pair
//! of the request map (at `proxy_on_request_headers`) and the response map (at
//! `proxy_on_response_headers`) in Envoy 1.40 and in the harness's scenario runner, for the
//! requests of every scenario. Only per-run values are masked (`e2e::fidelity::PER_RUN`).

// Helpers outside test functions fail the test loudly.
#![allow(clippy::unwrap_used, clippy::panic)]

use e2e::envoy::{Envoy, bootstrap, wasm_filter};
use e2e::fidelity::{abi_prelude, envoy_wasm_logs, mask, scenarios};
use e2e::http1::{Client, Upstream};
use proxy_wasm_harness::abi::LogLevel;
use proxy_wasm_harness::scenario::{JOINED_REQUEST_HEADERS, JOINED_RESPONSE_HEADERS};
use proxy_wasm_harness::{Host, Module, Runtime};

/// Logs `TAG|name=value|name=value...` for map `type` (0 request, 2 response headers).
fn probe() -> String {
    format!(
        r#"(module
  (import "env" "proxy_log" (func $log (param i32 i32 i32) (result i32)))
  (import "env" "proxy_get_header_map_pairs" (func $pairs (param i32 i32 i32) (result i32)))
  {prelude}
  (func $dump (param $type i32) (param $tag i32)
    (local $p i32) (local $n i32) (local $i i32) (local $lens i32) (local $data i32)
    (local $out i32) (local $kl i32) (local $vl i32)
    (global.set $next (i32.const 65536))
    (drop (call $pairs (local.get $type) (i32.const 64) (i32.const 68)))
    (local.set $p (i32.load (i32.const 64)))
    (local.set $n (i32.load (local.get $p)))
    (local.set $lens (i32.add (local.get $p) (i32.const 4)))
    (local.set $data (i32.add (local.get $lens) (i32.mul (local.get $n) (i32.const 8))))
    (local.set $out (i32.const 8192))
    (i32.store8 (local.get $out) (local.get $tag))
    (local.set $out (i32.add (local.get $out) (i32.const 1)))
    (block $done (loop $each
      (br_if $done (i32.ge_u (local.get $i) (local.get $n)))
      (local.set $kl (i32.load (i32.add (local.get $lens) (i32.mul (local.get $i) (i32.const 8)))))
      (local.set $vl (i32.load (i32.add (local.get $lens) (i32.add (i32.mul (local.get $i) (i32.const 8)) (i32.const 4)))))
      (i32.store8 (local.get $out) (i32.const 124))
      (local.set $out (i32.add (local.get $out) (i32.const 1)))
      (memory.copy (local.get $out) (local.get $data) (local.get $kl))
      (local.set $out (i32.add (local.get $out) (local.get $kl)))
      (local.set $data (i32.add (local.get $data) (i32.add (local.get $kl) (i32.const 1))))
      (i32.store8 (local.get $out) (i32.const 61))
      (local.set $out (i32.add (local.get $out) (i32.const 1)))
      (memory.copy (local.get $out) (local.get $data) (local.get $vl))
      (local.set $out (i32.add (local.get $out) (local.get $vl)))
      (local.set $data (i32.add (local.get $data) (i32.add (local.get $vl) (i32.const 1))))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br $each)))
    (drop (call $log (i32.const 2) (i32.const 8192) (i32.sub (local.get $out) (i32.const 8192)))))
  (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
    (call $dump (i32.const 0) (i32.const 81)) (i32.const 0))
  (func (export "proxy_on_response_headers") (param i32 i32 i32) (result i32)
    (call $dump (i32.const 2) (i32.const 83)) (i32.const 0))
)"#,
        prelude = abi_prelude(4, 65536)
    )
}

/// Envoy with the probe as its only filter, in front of `upstream`.
fn envoy_with_probe(wasm: &std::path::Path, upstream: &Upstream) -> Envoy {
    Envoy::must_start(&bootstrap(
        upstream.addr(),
        vec![wasm_filter("probe", "", wasm, "")],
    ))
}

/// A probe line as (map tag, pairs), per-run values masked.
fn parse(line: &str) -> (String, Vec<(String, String)>) {
    let mut parts = line.split('|');
    let tag = parts.next().unwrap_or_default().to_string();
    let mut pairs: Vec<(String, String)> = parts
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (k.to_string(), v.to_string())
        })
        .collect();
    mask(&mut pairs);
    (tag, pairs)
}

#[test]
fn a_filter_sees_the_same_header_maps() {
    let dir = tempfile::tempdir().unwrap();
    let wasm = dir.path().join("probe.wasm");
    std::fs::write(&wasm, wat::parse_str(probe()).unwrap()).unwrap();
    let module = Module::from_bytes(&Runtime::shared(), probe().as_bytes()).unwrap();
    let mut differ = Vec::new();
    let all = scenarios();
    for (file, s) in &all {
        let h: Vec<(&str, &str)> = s
            .upstream
            .headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let upstream = Upstream::answering(s.upstream.status, &h, Some(&s.upstream.body));
        let envoy = envoy_with_probe(&wasm, &upstream);
        let sent: Vec<(String, String)> = s
            .client_headers()
            .into_iter()
            .filter(|(k, _)| k != "content-length")
            .collect();
        let headers: Vec<(&str, &str)> =
            sent.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        Client::connect(envoy.listener)
            .unwrap()
            .send(
                &s.request.method,
                &s.request.path,
                &headers,
                s.request.body.as_bytes(),
            )
            .unwrap();
        let in_envoy: Vec<_> = envoy_wasm_logs(&envoy.log())
            .iter()
            .map(|(_, m)| parse(m))
            .collect();

        let host = Host::new();
        let plugin = host.plugin(&module).start().unwrap();
        s.run(&plugin).unwrap();
        let in_harness: Vec<_> = host
            .logs_at(LogLevel::Info)
            .iter()
            .map(|m| parse(m))
            .collect();
        assert_eq!(in_envoy.len(), 2, "{file}: {in_envoy:?}");
        if in_envoy != in_harness {
            differ.push(format!(
                "{file}:\n  envoy   {in_envoy:?}\n  harness {in_harness:?}"
            ));
        }
    }
    assert!(
        differ.is_empty(),
        "{} of {} differ:\n{}",
        differ.len(),
        all.len(),
        differ.join("\n")
    );
}

/// Headers a client or an upstream might repeat, whose handling by Envoy's codec is checked:
/// the framing, hop-by-hop and proxy-owned headers (host, content-length, transfer-encoding,
/// connection, te, upgrade, keep-alive, x-forwarded-proto, x-request-id, x-envoy-*) are left
/// out, since Envoy rewrites or refuses them.
const CANDIDATES: &[&str] = &[
    "accept",
    "accept-encoding",
    "accept-language",
    "access-control-allow-headers",
    "access-control-allow-methods",
    "access-control-allow-origin",
    "access-control-expose-headers",
    "age",
    "allow",
    "authorization",
    "cache-control",
    "content-encoding",
    "content-language",
    "content-type",
    "cookie",
    "etag",
    "expires",
    "forwarded",
    "grpc-accept-encoding",
    "grpc-timeout",
    "if-match",
    "if-modified-since",
    "if-none-match",
    "if-range",
    "if-unmodified-since",
    "last-modified",
    "link",
    "location",
    "origin",
    "pragma",
    "range",
    "referer",
    "retry-after",
    "set-cookie",
    "strict-transport-security",
    "traceparent",
    "tracestate",
    "user-agent",
    "vary",
    "via",
    "www-authenticate",
    "x-b3-traceid",
    "x-client-trace-id",
    "x-content-type-options",
    "x-custom",
    "x-forwarded-for",
    "x-forwarded-host",
    "x-ot-span-context",
];

#[test]
fn envoy_joins_exactly_the_repeated_headers_the_harness_joins() {
    let dir = tempfile::tempdir().unwrap();
    let wasm = dir.path().join("probe.wasm");
    std::fs::write(&wasm, wat::parse_str(probe()).unwrap()).unwrap();
    let mut twice: Vec<(&str, &str)> = Vec::new();
    for name in CANDIDATES {
        twice.push((name, "a"));
        twice.push((name, "b"));
    }
    let upstream = Upstream::answering(200, &twice, Some(""));
    let envoy = envoy_with_probe(&wasm, &upstream);
    let mut req = vec![("host", "example.test")];
    req.extend(twice.iter().copied());
    Client::connect(envoy.listener)
        .unwrap()
        .send("GET", "/", &req, b"")
        .unwrap();
    let maps: Vec<_> = envoy_wasm_logs(&envoy.log())
        .iter()
        .map(|(_, m)| parse(m))
        .collect();
    assert_eq!(maps.len(), 2, "{maps:?}");
    for ((tag, pairs), listed) in maps
        .iter()
        .zip([JOINED_REQUEST_HEADERS, JOINED_RESPONSE_HEADERS])
    {
        let mut joined = Vec::new();
        for name in CANDIDATES {
            let values: Vec<&str> = pairs
                .iter()
                .filter(|(k, _)| k == name)
                .map(|(_, v)| v.as_str())
                .collect();
            match values.as_slice() {
                ["a,b"] => joined.push(*name),
                ["a", "b"] => {}
                other => panic!("{tag}: Envoy made {other:?} of a repeated {name}"),
            }
        }
        assert_eq!(joined, listed, "{tag}: the headers Envoy joins");
    }
}
