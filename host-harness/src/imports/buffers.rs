//! Buffers (the spec's "Buffers"): `proxy_get_buffer_bytes`, `proxy_get_buffer_status` and
//! `proxy_set_buffer_bytes` on the bodies, network data, call responses, configurations and
//! foreign-call arguments as Envoy exposes them to the acting context; and v0.1.0's
//! `proxy_get_configuration`, which reads the plugin configuration buffer.

use super::helpers::{HostResult, OK, gave, give, read, st, stream, tri, write_u32};
use crate::abi::{BufferType, Status};
use crate::vm::VmState;
use wasmtime::Caller;

/// A buffer's bytes as Envoy exposes them to the acting context.
fn buffer(d: &VmState, t: i32) -> Result<Vec<u8>, Status> {
    let t = BufferType::from_i32(t).ok_or(Status::BadArgument)?;
    let ctx = d.context();
    let s = d.streams.get(&ctx);
    Ok(match t {
        BufferType::VmConfiguration => d.vm_configuration.clone(),
        BufferType::PluginConfiguration if d.plugin_config_visible => d
            .root_of(ctx)
            .map(|r| r.configuration.clone())
            .ok_or(Status::NotFound)?,
        BufferType::PluginConfiguration => return Err(Status::NotFound),
        // Outside its callbacks Envoy's body buffer is empty, not missing.
        BufferType::HttpRequestBody => s
            .filter(|s| s.request_body_held)
            .map(|s| s.request_body.clone())
            .unwrap_or_default(),
        BufferType::HttpResponseBody => s
            .filter(|s| s.response_body_held)
            .map(|s| s.response_body.clone())
            .unwrap_or_default(),
        BufferType::DownstreamData => s.ok_or(Status::NotFound)?.downstream_data.clone(),
        BufferType::UpstreamData => s.ok_or(Status::NotFound)?.upstream_data.clone(),
        BufferType::HttpCallResponseBody => d
            .call_response
            .as_ref()
            .ok_or(Status::NotFound)?
            .body
            .clone(),
        BufferType::GrpcReceiveBuffer => d
            .call_response
            .as_ref()
            .map(|r| r.body.clone())
            .unwrap_or_default(),
        BufferType::CallData => d.call_data.clone(),
    })
}

/// `proxy_get_configuration(return_data, return_size)` (v0.1.0): the plugin configuration.
pub(super) fn proxy_get_configuration(mut c: Caller<'_, VmState>, pp: i32, sp: i32) -> HostResult {
    let cfg = tri!(buffer(c.data(), BufferType::PluginConfiguration as i32));
    gave(give(&mut c, &cfg, pp, sp))
}

/// `proxy_get_buffer_bytes(buffer, start, max_size, return_data, return_size)`: up to `len`
/// bytes of the buffer from `start`.
pub(super) fn proxy_get_buffer_bytes(
    mut c: Caller<'_, VmState>,
    t: i32,
    start: i32,
    len: i32,
    pp: i32,
    sp: i32,
) -> HostResult {
    let bytes = tri!(buffer(c.data(), t));
    let (start, len) = (start as u32 as usize, len as u32 as usize);
    // Reading past the end gives nothing; a long read is clamped.
    let slice = bytes
        .get(start..)
        .map(|b| &b[..len.min(b.len())])
        .unwrap_or(&[])
        .to_vec();
    gave(give(&mut c, &slice, pp, sp))
}

/// `proxy_get_buffer_status(buffer, return_size, return_flags)`: the buffer's size (flags 0).
pub(super) fn proxy_get_buffer_status(
    mut c: Caller<'_, VmState>,
    t: i32,
    len_ptr: i32,
    flags_ptr: i32,
) -> HostResult {
    let n = tri!(buffer(c.data(), t)).len() as u32;
    tri!(write_u32(&mut c, len_ptr, n));
    tri!(write_u32(&mut c, flags_ptr, 0));
    Ok(OK)
}

/// `proxy_set_buffer_bytes(buffer, start, size, data, data_size)`: replace, prepend or append,
/// on a buffer the acting stream holds.
pub(super) fn proxy_set_buffer_bytes(
    mut c: Caller<'_, VmState>,
    t: i32,
    start: i32,
    len: i32,
    ptr: i32,
    size: i32,
) -> HostResult {
    let data = tri!(read(&mut c, ptr, size));
    let raw = t;
    let t = tri!(BufferType::from_i32(t).ok_or(Status::BadArgument));
    // A buffer Envoy does not hold right now is NotFound, as when reading it (the plugin
    // configuration outside configure, a call response outside its callback); one it holds
    // but will not change is BadArgument, below.
    if matches!(
        t,
        BufferType::PluginConfiguration | BufferType::HttpCallResponseBody
    ) && let Err(e) = buffer(c.data(), raw)
    {
        return st(e);
    }
    let s = match stream(c.data_mut()) {
        Ok(s) => s,
        // Configuration, call responses and call data are immutable.
        Err(_) => return st(Status::BadArgument),
    };
    let buf: &mut Vec<u8> = match t {
        BufferType::HttpRequestBody if s.request_body_held => &mut s.request_body,
        BufferType::HttpResponseBody if s.response_body_held => &mut s.response_body,
        BufferType::DownstreamData => &mut s.downstream_data,
        BufferType::UpstreamData => &mut s.upstream_data,
        _ => return st(Status::BadArgument),
    };
    // Envoy: start 0 replaces the first `len` bytes (a prepend when len is 0); start at or
    // past the end appends; a splice in the middle is refused.
    let (start, len) = (start as u32 as usize, len as u32 as usize);
    if start == 0 {
        let cut = len.min(buf.len());
        buf.splice(0..cut, data);
    } else if start >= buf.len() {
        buf.extend_from_slice(&data);
    } else {
        return st(Status::BadArgument);
    }
    Ok(OK)
}
