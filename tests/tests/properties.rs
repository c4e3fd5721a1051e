//! Properties (Envoy's attributes) as a module reads them with `proxy_get_property`: a probe
//! module written in WAT reads a list of attribute paths in `on_response_headers` (answered as
//! response headers) and in `on_log` (logged), hex-encoding each value, and the harness must give
//! the same bytes, or the same status, as a real Envoy 1.40 does for the same request.

// Helpers outside #[test] functions fail the test loudly.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use e2e::fidelity::{PER_RUN_ATTRIBUTES, mask};
use e2e::{envoy, http1};
use proxy_wasm_harness::scenario::Scenario;
use proxy_wasm_harness::{Host, Module, Runtime};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// The probe: reads `paths` (dot-separated attribute paths) and reports each as `=HEX` (the
/// value's bytes) or `!NN` (the status when not Ok): in `on_response_headers` as the response
/// header `x-pNN`, in `on_log` as the info log line `pNN=HEX`.
fn probe_wat(paths: &[&str]) -> String {
    // Path strings from offset 8192, their (ptr, len) table at 1024.
    let mut data = String::new();
    let mut table = Vec::new();
    let mut offset = 8192usize;
    for p in paths {
        let bytes: Vec<u8> = p.replace('.', "\0").into_bytes();
        let escaped: String = bytes.iter().map(|b| format!("\\{b:02x}")).collect();
        data.push_str(&format!("  (data (i32.const {offset}) \"{escaped}\")\n"));
        table.push((offset, bytes.len()));
        offset += bytes.len() + 1;
    }
    for (i, (ptr, len)) in table.iter().enumerate() {
        let entry: String = [*ptr as u32, *len as u32]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .map(|b| format!("\\{b:02x}"))
            .collect();
        data.push_str(&format!(
            "  (data (i32.const {}) \"{entry}\")\n",
            1024 + i * 8
        ));
    }
    let n = paths.len();
    format!(
        r#"(module
  (import "env" "proxy_get_property" (func $get (param i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_add_header_map_value" (func $add (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_log" (func $log (param i32 i32 i32) (result i32)))
  (memory (export "memory") 2)
  (global $heap (mut i32) (i32.const 65536))
{data}
  (func (export "proxy_abi_version_0_2_1"))
  (func (export "malloc") (param $n i32) (result i32) (local $p i32)
    (local.set $p (global.get $heap))
    (global.set $heap (i32.and (i32.add (i32.add (global.get $heap) (local.get $n)) (i32.const 7)) (i32.const -8)))
    (if (i32.gt_u (global.get $heap) (i32.mul (memory.size) (i32.const 65536)))
      (then (drop (memory.grow
        (i32.add (i32.div_u (i32.sub (global.get $heap) (i32.mul (memory.size) (i32.const 65536))) (i32.const 65536)) (i32.const 1))))))
    (local.get $p))
  (func $hex (param $d i32) (result i32)
    (if (result i32) (i32.lt_u (local.get $d) (i32.const 10))
      (then (i32.add (local.get $d) (i32.const 48)))
      (else (i32.add (local.get $d) (i32.const 87)))))
  ;; Writes "pNN" at 16384 and "=HEX" or "!NN" from 16387; returns the length from 16384.
  (func $probe (param $i i32) (result i32) (local $st i32) (local $ptr i32) (local $len i32) (local $k i32) (local $b i32)
    (i32.store8 (i32.const 16384) (i32.const 112))
    (i32.store8 (i32.const 16385) (i32.add (i32.const 48) (i32.div_u (local.get $i) (i32.const 10))))
    (i32.store8 (i32.const 16386) (i32.add (i32.const 48) (i32.rem_u (local.get $i) (i32.const 10))))
    (local.set $st (call $get
      (i32.load (i32.add (i32.const 1024) (i32.mul (local.get $i) (i32.const 8))))
      (i32.load (i32.add (i32.const 1028) (i32.mul (local.get $i) (i32.const 8))))
      (i32.const 0) (i32.const 4)))
    (if (result i32) (i32.eqz (local.get $st))
      (then
        (i32.store8 (i32.const 16387) (i32.const 61))
        (local.set $ptr (i32.load (i32.const 0)))
        (local.set $len (i32.load (i32.const 4)))
        (if (i32.gt_u (local.get $len) (i32.const 12000)) (then (local.set $len (i32.const 12000))))
        (local.set $k (i32.const 0))
        (block $done (loop $next
          (br_if $done (i32.ge_u (local.get $k) (local.get $len)))
          (local.set $b (i32.load8_u (i32.add (local.get $ptr) (local.get $k))))
          (i32.store8 (i32.add (i32.const 16388) (i32.shl (local.get $k) (i32.const 1)))
            (call $hex (i32.shr_u (local.get $b) (i32.const 4))))
          (i32.store8 (i32.add (i32.const 16389) (i32.shl (local.get $k) (i32.const 1)))
            (call $hex (i32.and (local.get $b) (i32.const 15))))
          (local.set $k (i32.add (local.get $k) (i32.const 1)))
          (br $next)))
        (i32.add (i32.const 4) (i32.shl (local.get $len) (i32.const 1))))
      (else
        (i32.store8 (i32.const 16387) (i32.const 33))
        (i32.store8 (i32.const 16388) (i32.add (i32.const 48) (i32.div_u (local.get $st) (i32.const 10))))
        (i32.store8 (i32.const 16389) (i32.add (i32.const 48) (i32.rem_u (local.get $st) (i32.const 10))))
        (i32.const 6))))
  (func (export "proxy_on_context_create") (param i32 i32))
  (func (export "proxy_on_vm_start") (param i32 i32) (result i32) (i32.const 1))
  (func (export "proxy_on_configure") (param i32 i32) (result i32) (i32.const 1))
  (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32) (i32.const 0))
  (func (export "proxy_on_response_headers") (param i32 i32 i32) (result i32) (local $i i32) (local $n i32)
    (block $done (loop $next
      (br_if $done (i32.ge_u (local.get $i) (i32.const {n})))
      (global.set $heap (i32.const 65536))
      (local.set $n (call $probe (local.get $i)))
      ;; header name "x-pNN": "x-" at 16382, then the "pNN" at 16384
      (i32.store8 (i32.const 16382) (i32.const 120))
      (i32.store8 (i32.const 16383) (i32.const 45))
      (drop (call $add (i32.const 2) (i32.const 16382) (i32.const 5) (i32.const 16387) (i32.sub (local.get $n) (i32.const 3))))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br $next)))
    (i32.const 0))
  (func (export "proxy_on_log") (param i32) (local $i i32) (local $n i32)
    (block $done (loop $next
      (br_if $done (i32.ge_u (local.get $i) (i32.const {n})))
      (global.set $heap (i32.const 65536))
      (local.set $n (call $probe (local.get $i)))
      (drop (call $log (i32.const 2) (i32.const 16384) (local.get $n)))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br $next))))
  (func (export "proxy_on_done") (param i32) (result i32) (i32.const 1))
  (func (export "proxy_on_delete") (param i32)))
"#
    )
}

const PATHS: &[&str] = &[
    "request.path",
    "request.url_path",
    "request.host",
    "request.scheme",
    "request.method",
    "request.headers",
    "request.referer",
    "request.useragent",
    "request.time",
    "request.id",
    "request.protocol",
    "request.query",
    "request.duration",
    "request.size",
    "request.total_size",
    "response.code",
    "response.code_details",
    "response.flags",
    "response.grpc_status",
    "response.headers",
    "response.trailers",
    "response.size",
    "response.total_size",
    "source.address",
    "source.port",
    "destination.address",
    "destination.port",
    "connection.id",
    "connection.mtls",
    "connection.requested_server_name",
    "connection.tls_version",
    "upstream.address",
    "upstream.port",
    "xds.cluster_name",
    "xds.route_name",
    "xds.listener_direction",
    "plugin_name",
    "plugin_root_id",
    "plugin_vm_id",
    "listener_direction",
    "route_name",
    "cluster_name",
    "request.headers.x-probe",
    "response.headers.content-type",
];

/// What the probe reported: attribute path -> `=HEX` or `!NN`, at response headers and at log.
struct Outcome {
    at_headers: BTreeMap<String, String>,
    at_log: BTreeMap<String, String>,
}

fn parse_probe_line(message: &str) -> Option<(usize, String)> {
    let rest = message.strip_prefix('p')?;
    let i = rest.get(..2)?.parse::<usize>().ok()?;
    (i < PATHS.len()).then(|| (i, rest[2..].to_string()))
}

fn unhex(v: &str) -> Vec<u8> {
    let hex = v
        .strip_prefix('=')
        .unwrap_or_else(|| panic!("not a value: {v}"));
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
        .collect()
}

/// A pairs-serialized map without the probe's own `x-pNN` headers (they repeat the attributes
/// compared one by one).
fn pairs(v: &str) -> Vec<(String, String)> {
    let bytes = unhex(v);
    let map = proxy_wasm_harness::headers::HeaderMap::deserialize(&bytes)
        .unwrap_or_else(|| panic!("not a pairs map: {v}"));
    let p: Vec<(String, String)> = map
        .to_pairs()
        .into_iter()
        .filter(|(k, _)| !(k.starts_with("x-p") && k.len() == 5))
        .collect();
    p
}

fn envoy_outcome(wasm: &std::path::Path) -> Outcome {
    let upstream =
        http1::Upstream::answering(200, &[("content-type", "text/plain")], Some("hello"));
    let filter = envoy::wasm_filter("probe", "probe", wasm, "");
    let mut proxy = envoy::Envoy::must_start(&envoy::bootstrap(upstream.addr(), vec![filter]));
    let s = scenario();
    let sent = s.client_headers();
    let headers: Vec<(&str, &str)> = sent.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let resp = http1::get(proxy.listener, &s.request.path, &headers).unwrap();
    assert_eq!(resp.status(), 200);
    let mut at_headers = BTreeMap::new();
    for (i, path) in PATHS.iter().enumerate() {
        let v = resp
            .header(&format!("x-p{i:02}"))
            .unwrap_or_else(|| panic!("no x-p{i:02} ({path})"));
        at_headers.insert(path.to_string(), v.to_string());
    }
    // on_log runs once the response is sent: poll Envoy's log for the lines.
    let mut at_log = BTreeMap::new();
    e2e::poll_until(Instant::now() + Duration::from_secs(10), || {
        for line in proxy.log().lines() {
            if let Some((_, msg)) = line.split_once("probe probe probe: ")
                && let Some((i, v)) = parse_probe_line(msg)
            {
                at_log.insert(PATHS[i].to_string(), v);
            }
        }
        (at_log.len() == PATHS.len()).then_some(())
    });
    assert_eq!(at_log.len(), PATHS.len(), "on_log lines:\n{}", proxy.log());
    proxy.stop();
    Outcome { at_headers, at_log }
}

/// The request both sides get: what a client sends and what the upstream answers. The harness
/// takes it from here, as Envoy takes it from the wire; nothing Envoy reported is fed back.
fn scenario() -> Scenario {
    Scenario::from_yaml(
        "name: properties\nrequest: {path: '/details/1?x=1', headers: [[x-probe, 'yes'], [user-agent, probe/1]]}\nupstream: {status: 200, headers: [[content-type, text/plain]], body: hello}\n",
    )
    .unwrap()
}

/// The same request through the harness's own model of the connection and the request.
fn harness_outcome(wasm: &[u8]) -> Outcome {
    let host = Host::new();
    let module = Module::from_bytes(&Runtime::shared(), wasm).unwrap();
    let plugin = host
        .plugin(&module)
        .root_id("probe")
        .vm_id("probe")
        .name("probe")
        .start()
        .unwrap();
    let outcome = scenario().run(&plugin).unwrap();
    let mut at_headers = BTreeMap::new();
    for (i, path) in PATHS.iter().enumerate() {
        let name = format!("x-p{i:02}");
        let v = outcome
            .response_headers
            .iter()
            .find(|(k, _)| *k == name)
            .unwrap_or_else(|| panic!("harness: no {name} ({path})"));
        at_headers.insert(path.to_string(), v.1.clone());
    }
    let mut at_log = BTreeMap::new();
    for r in host.logs() {
        if let Some((i, v)) = parse_probe_line(&r.message) {
            at_log.insert(PATHS[i].to_string(), v);
        }
    }
    Outcome { at_headers, at_log }
}

/// How an attribute is compared: byte for byte, except the per-run ones
/// (`e2e::fidelity::PER_RUN_ATTRIBUTES`: the same status and length) and maps (the same entries,
/// per-run header values masked, in any order: Envoy serializes an attribute map in the order
/// of its hash table, which is no order a filter can rely on or the harness reproduce).
fn compare(path: &str, envoy: &str, harness: &str) -> Result<(), String> {
    let maps = ["request.headers", "response.headers", "response.trailers"];
    let same = if maps.contains(&path) {
        let entries = |v: &str| {
            let mut p = pairs(v);
            mask(&mut p);
            p.sort();
            p
        };
        envoy.starts_with('=') && harness.starts_with('=') && entries(envoy) == entries(harness)
    } else if PER_RUN_ATTRIBUTES.iter().any(|(p, _)| *p == path) {
        envoy.chars().next() == harness.chars().next() && envoy.len() == harness.len()
    } else {
        envoy == harness
    };
    if same {
        Ok(())
    } else {
        Err(format!("{path}: Envoy {envoy}, harness {harness}"))
    }
}

#[test]
fn the_harness_reads_attributes_as_envoy_serializes_them() {
    let wasm = wat::parse_str(probe_wat(PATHS)).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("probe.wasm");
    std::fs::write(&file, &wasm).unwrap();
    let envoy = envoy_outcome(&file);
    let harness = harness_outcome(&wasm);
    let mut wrong = Vec::new();
    for path in PATHS {
        for (phase, e, h) in [
            ("response headers", &envoy.at_headers, &harness.at_headers),
            ("log", &envoy.at_log, &harness.at_log),
        ] {
            let hv = h.get(*path).map(String::as_str).unwrap_or("(none)");
            if let Err(why) = compare(path, &e[*path], hv) {
                wrong.push(format!("at {phase}: {why}"));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "{} differences:\n{}",
        wrong.len(),
        wrong.join("\n")
    );
}
