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
    }
}
