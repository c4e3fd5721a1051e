//! HTTP calls (the spec's "HTTP calls"): `proxy_http_call`, queued on the host for the test to
//! answer, owned by the acting root context as in Envoy.

use super::helpers::{HostResult, OK, read, read_str, st, tri, write_u32};
use crate::abi::Status;
use crate::headers::HeaderMap;
use crate::host::HttpCall;
use crate::vm::VmState;
use wasmtime::Caller;

/// `proxy_http_call(upstream_data, upstream_size, headers_data, headers_size, body_data,
/// body_size, trailers_data, trailers_size, timeout, return_token)`: queue an HTTP call.
#[allow(clippy::too_many_arguments)]
pub(super) fn proxy_http_call(
    mut c: Caller<'_, VmState>,
    up: i32,
    us: i32,
    hp: i32,
    hs: i32,
    bp: i32,
    bs: i32,
    tp: i32,
    ts: i32,
    timeout: i32,
    out: i32,
) -> HostResult {
    tri!(write_u32(&mut c, out, 0));
    let upstream = tri!(read_str(&mut c, up, us));
    let headers = HeaderMap::deserialize(&tri!(read(&mut c, hp, hs))).unwrap_or_default();
    let body = tri!(read(&mut c, bp, bs));
    let trailers = HeaderMap::deserialize(&tri!(read(&mut c, tp, ts))).unwrap_or_default();
    if timeout < 0
        || !c.data().shared.borrow().knows_cluster(&upstream)
        || [":method", ":path", ":authority"]
            .iter()
            .any(|h| !headers.contains(h))
    {
        // Envoy: negative timeout, unknown cluster, or missing routing pseudo-headers.
        return st(Status::BadArgument);
    }
    let token = {
        let d = c.data_mut();
        let root = d.acting_root();
        let token = d.next_callout_id(0);
        let mut shared = d.shared.borrow_mut();
        let call = HttpCall {
            token,
            upstream,
            headers,
            body,
            trailers,
            timeout_ms: timeout as u32,
            made_at_nanos: shared.now,
            vm_index: d.vm_index,
            context: root,
        };
        shared.http_calls_made.push(call.clone());
        shared.http_calls.push(call);
        token
    };
    tri!(write_u32(&mut c, out, token));
    Ok(OK)
}
