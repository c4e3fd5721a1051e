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
