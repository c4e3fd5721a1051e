//! gRPC calls (the spec's "gRPC calls"): `proxy_grpc_call` and `proxy_grpc_stream` queue a call on
//! the host, owned by the acting root context; `proxy_grpc_send`, `proxy_grpc_cancel` and
//! `proxy_grpc_close` act on one by token.

use super::helpers::{HostResult, OK, read, read_str, st, tri, write_u32};
use crate::abi::Status;
use crate::headers::HeaderMap;
use crate::host::GrpcCall;
use crate::vm::VmState;
use wasmtime::Caller;

/// A call read from the module's arguments: `p` holds the (pointer, size) pairs of service,
/// service name, method and initial metadata; `request` the message of a unary call.
fn grpc_call(
    c: &mut Caller<'_, VmState>,
    p: [i32; 8],
    request: Option<(i32, i32)>,
    timeout: i32,
) -> Result<GrpcCall, Status> {
    let service = read(c, p[0], p[1])?;
    let service_name = read_str(c, p[2], p[3])?;
    let method = read_str(c, p[4], p[5])?;
    let metadata = HeaderMap::deserialize(&read(c, p[6], p[7])?).unwrap_or_default();
    let message = match request {
        Some((rp, rs)) => Some(read(c, rp, rs)?),
        None => None,
    };
    let d = c.data_mut();
    let service = String::from_utf8_lossy(&service).into_owned();
    if !d.shared.borrow().knows_cluster(&service) {
        // Envoy: a service that is neither a GrpcService nor a known cluster.
        return Err(Status::ParseFailure);
    }
    let unary = message.is_some();
    Ok(GrpcCall {
        token: d.next_callout_id(if unary { 1 } else { 2 }),
        service,
        service_name,
        method,
        initial_metadata: metadata,
        stream: !unary,
        sent: message.into_iter().collect(),
        timeout_ms: timeout as u32,
        vm_index: d.vm_index,
        context: d.acting_root(),
        cancelled: false,
        local_closed: unary,
        answered: Default::default(),
    })
}

/// `proxy_grpc_call(service_data, service_size, service_name_data, service_name_size,
/// method_data, method_size, metadata_data, metadata_size, message_data, message_size, timeout,
/// return_token)`: queue a unary call.
#[allow(clippy::too_many_arguments)]
pub(super) fn proxy_grpc_call(
    mut c: Caller<'_, VmState>,
    sp: i32,
    ss: i32,
    snp: i32,
    sns: i32,
    mp: i32,
    ms: i32,
    ip: i32,
    is: i32,
    rp: i32,
    rs: i32,
    timeout: i32,
    out: i32,
) -> HostResult {
    let call = tri!(grpc_call(
        &mut c,
        [sp, ss, snp, sns, mp, ms, ip, is],
        Some((rp, rs)),
        timeout
    ));
    let token = call.token;
    let mut s = c.data().shared.borrow_mut();
    s.grpc_calls_made.push(call.clone());
    s.grpc_calls.push(call);
    drop(s);
    tri!(write_u32(&mut c, out, token));
    Ok(OK)
}

/// `proxy_grpc_stream(service_data, service_size, service_name_data, service_name_size,
/// method_data, method_size, metadata_data, metadata_size, return_token)`: open a stream.
#[allow(clippy::too_many_arguments)]
pub(super) fn proxy_grpc_stream(
    mut c: Caller<'_, VmState>,
    sp: i32,
    ss: i32,
    snp: i32,
    sns: i32,
    mp: i32,
    ms: i32,
    ip: i32,
    is: i32,
    out: i32,
) -> HostResult {
    let call = tri!(grpc_call(
        &mut c,
        [sp, ss, snp, sns, mp, ms, ip, is],
        None,
        0
    ));
    let token = call.token;
    let mut s = c.data().shared.borrow_mut();
    s.grpc_calls_made.push(call.clone());
    s.grpc_calls.push(call);
    drop(s);
    tri!(write_u32(&mut c, out, token));
    Ok(OK)
}

/// `proxy_grpc_send(token, message_data, message_size, end_stream)`: send on a stream.
pub(super) fn proxy_grpc_send(
    mut c: Caller<'_, VmState>,
    token: i32,
    mp: i32,
    ms: i32,
    end: i32,
) -> HostResult {
    let msg = tri!(read(&mut c, mp, ms));
    if token as u32 & 3 != 2 {
        return st(Status::BadArgument);
    }
    let vm = c.data().vm_index;
    let mut s = c.data().shared.borrow_mut();
    let call = tri!(s.grpc_call_mut(vm, token as u32).ok_or(Status::NotFound));
    call.sent.push(msg.clone());
    call.local_closed |= end != 0;
    if let Some(m) = s.grpc_made_mut(vm, token as u32) {
        m.sent.push(msg);
        m.local_closed |= end != 0;
    }
    Ok(OK)
}

/// `proxy_grpc_cancel(token)`: cancel a call or stream.
pub(super) fn proxy_grpc_cancel(c: Caller<'_, VmState>, token: i32) -> HostResult {
    if !matches!(token as u32 & 3, 1 | 2) {
        return st(Status::BadArgument);
    }
    let vm = c.data().vm_index;
    let mut s = c.data().shared.borrow_mut();
    tri!(s.grpc_call_mut(vm, token as u32).ok_or(Status::NotFound)).cancelled = true;
    Ok(OK)
}

/// `proxy_grpc_close(token)`: close the module's side of a call or stream.
pub(super) fn proxy_grpc_close(c: Caller<'_, VmState>, token: i32) -> HostResult {
    if !matches!(token as u32 & 3, 1 | 2) {
        return st(Status::BadArgument);
    }
    let vm = c.data().vm_index;
    let mut s = c.data().shared.borrow_mut();
    tri!(s.grpc_call_mut(vm, token as u32).ok_or(Status::NotFound)).local_closed = true;
    Ok(OK)
}
