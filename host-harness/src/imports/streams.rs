//! Stream operations (the spec's "Common stream operations" and "HTTP"): resuming and closing the
//! acting stream (`proxy_continue_stream`, `proxy_close_stream`; v0.1.0's
//! `proxy_continue_request`, `proxy_continue_response` and `proxy_clear_route_cache`), sending a
//! local response, and `proxy_get_status` of the last HTTP or gRPC call.

use super::helpers::{HostResult, OK, gave, give, read, read_str, st, stream, tri, write_u32};
use crate::abi::Status;
use crate::headers::HeaderMap;
use crate::vm::{LocalResponse, VmState};
use wasmtime::Caller;

/// `proxy_send_local_response(status, details_data, details_size, body_data, body_size,
/// headers_data, headers_size, grpc_status)`: answer the acting HTTP stream from the filter.
#[allow(clippy::too_many_arguments)]
pub(super) fn proxy_send_local_response(
    mut c: Caller<'_, VmState>,
    status: i32,
    dp: i32,
    ds: i32,
    bp: i32,
    bs: i32,
    hp: i32,
    hs: i32,
    grpc: i32,
) -> HostResult {
    let details = tri!(read_str(&mut c, dp, ds));
    let body = tri!(read(&mut c, bp, bs));
    let raw = tri!(read(&mut c, hp, hs));
    // Malformed pairs are no headers, as in cpp-host.
    let headers = HeaderMap::deserialize(&raw).unwrap_or_default();
    let Ok(s) = stream(c.data_mut()) else {
        // Envoy: a silent no-op outside an HTTP stream.
        return Ok(OK);
    };
    s.local_response = Some(LocalResponse {
        status: status as u32,
        details: details.replace(char::is_whitespace, "_"),
        body,
        headers,
        grpc_status: grpc,
    });
    Ok(OK)
}

/// `proxy_continue_request()` (v0.1.0): resume the acting stream's request.
pub(super) fn proxy_continue_request(mut c: Caller<'_, VmState>) -> HostResult {
    let d = c.data_mut();
    tri!(stream(d)).resumed.push(0);
    d.resumed_dirty = true;
    Ok(OK)
}

/// `proxy_continue_response()` (v0.1.0): resume the acting stream's response.
pub(super) fn proxy_continue_response(mut c: Caller<'_, VmState>) -> HostResult {
    let d = c.data_mut();
    tri!(stream(d)).resumed.push(1);
    d.resumed_dirty = true;
    Ok(OK)
}

/// `proxy_clear_route_cache()` (v0.1.0): nothing to clear.
pub(super) fn proxy_clear_route_cache(_c: Caller<'_, VmState>) -> HostResult {
    Ok(OK)
}

/// `proxy_continue_stream(stream_type)`: resume the acting stream's request (0), response (1)
/// or downstream (2).
pub(super) fn proxy_continue_stream(mut c: Caller<'_, VmState>, t: i32) -> HostResult {
    match t {
        0..=2 => {
            let d = c.data_mut();
            tri!(stream(d)).resumed.push(t);
            d.resumed_dirty = true;
            Ok(OK)
        }
        // Envoy cannot resume an upstream connection.
        3 => st(Status::Unimplemented),
        _ => st(Status::BadArgument),
    }
}

/// `proxy_close_stream(stream_type)`: close or reset the acting stream's `t` (0 to 3).
pub(super) fn proxy_close_stream(mut c: Caller<'_, VmState>, t: i32) -> HostResult {
    if !(0..=3).contains(&t) {
        return st(Status::BadArgument);
    }
    tri!(stream(c.data_mut())).closed.push(t);
    Ok(OK)
}

/// `proxy_get_status(return_code, return_message_data, return_message_size)`: the status of
/// the HTTP call that failed or the gRPC call that closed.
pub(super) fn proxy_get_status(
    mut c: Caller<'_, VmState>,
    code_ptr: i32,
    pp: i32,
    sp: i32,
) -> HostResult {
    let (code, msg) = c.data().last_status.clone();
    tri!(write_u32(&mut c, code_ptr, code));
    gave(give(&mut c, msg.as_bytes(), pp, sp))
}
