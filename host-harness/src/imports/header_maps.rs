//! HTTP fields (the spec's "HTTP fields"): the `proxy_*_header_map_*` calls on request and
//! response headers and trailers, HTTP call responses and gRPC metadata, each visible only where
//! Envoy holds it.

use super::helpers::{
    HostResult, OK, gave, give, memory_and_data, read, slice, st, stream, text, tri, write_u32,
};
use crate::abi::{MapType, Status};
use crate::headers::{HeaderMap, deserialize_pairs};
use crate::vm::VmState;
use wasmtime::Caller;

/// A header map as Envoy exposes it to the acting context. `write`: the mutable view (add,
/// replace, remove, set pairs, size), which call responses and gRPC metadata never are. Outside
/// the callbacks that hold a map Envoy answers `BadArgument`; `proxy_on_log` can read them all.
fn header_map(d: &mut VmState, t: i32, write: bool) -> Result<&mut HeaderMap, Status> {
    let t = MapType::from_i32(t).ok_or(Status::BadArgument)?;
    if matches!(
        t,
        MapType::HttpCallResponseHeaders
            | MapType::HttpCallResponseTrailers
            | MapType::GrpcReceiveInitialMetadata
            | MapType::GrpcReceiveTrailingMetadata
    ) {
        if write {
            return Err(Status::BadArgument);
        }
        let r = d.call_response.as_mut().ok_or(Status::BadArgument)?;
        return Ok(match t {
            MapType::HttpCallResponseHeaders | MapType::GrpcReceiveInitialMetadata => {
                &mut r.headers
            }
            _ => &mut r.trailers,
        });
    }
    let s = stream(d)?;
    let readable = !write && s.in_log;
    let (held, m) = match t {
        MapType::HttpRequestHeaders => (s.request_headers_held, &mut s.request_headers),
        MapType::HttpRequestTrailers => (s.request_trailers_held, &mut s.request_trailers),
        MapType::HttpResponseHeaders => (s.response_headers_held, &mut s.response_headers),
        _ => (s.response_trailers_held, &mut s.response_trailers),
    };
    if !(held || readable) {
        return Err(Status::BadArgument);
    }
    Ok(m.get_or_insert_with(HeaderMap::new))
}

/// The headers Envoy keeps as one entry in a map of this type (its inline headers): request
/// headers (0) and response headers (2); none elsewhere (trailers, metadata, call answers).
fn joined_headers(t: i32) -> &'static [&'static str] {
    match t {
        0 => crate::headers::JOINED_REQUEST_HEADERS,
        2 => crate::headers::JOINED_RESPONSE_HEADERS,
        _ => &[],
    }
}

/// Add or replace a header read straight from the module's memory (no copies).
fn edit_header(
    c: &mut Caller<'_, VmState>,
    t: i32,
    (kp, ks): (i32, i32),
    (vp, vs): (i32, i32),
    edit: impl FnOnce(&mut HeaderMap, &str, &[u8]),
) -> i32 {
    let run = || -> Result<(), Status> {
        let (data, d) = memory_and_data(c)?;
        let key = text(slice(data, kp, ks)?);
        let value = slice(data, vp, vs)?;
        edit(header_map(d, t, true)?, &key, value);
        Ok(())
    };
    match run() {
        Ok(()) => OK,
        Err(s) => s as i32,
    }
}

/// `proxy_get_header_map_pairs(map, return_data, return_size)`: the map serialized; an
/// unavailable or empty map gives nothing.
pub(super) fn proxy_get_header_map_pairs(
    mut c: Caller<'_, VmState>,
    t: i32,
    pp: i32,
    sp: i32,
) -> HostResult {
    if MapType::from_i32(t).is_none() {
        return st(Status::BadArgument);
    }
    // An unavailable or empty map is an empty result, not an error.
    let bytes = match header_map(c.data_mut(), t, false) {
        Ok(m) if !m.is_empty() => m.serialize(),
        _ => Vec::new(),
    };
    gave(give(&mut c, &bytes, pp, sp))
}

/// `proxy_set_header_map_pairs(map, data, size)`: replace the whole map with serialized pairs.
pub(super) fn proxy_set_header_map_pairs(
    mut c: Caller<'_, VmState>,
    t: i32,
    ptr: i32,
    size: i32,
) -> HostResult {
    let raw = tri!(read(&mut c, ptr, size));
    // cpp-host reads malformed pairs as an empty list: the map is cleared, and Ok.
    // Envoy clears the map and adds each pair (`addCopy`), joining inline headers.
    let joined = joined_headers(t);
    let mut new = HeaderMap::new();
    for (k, v) in deserialize_pairs(&raw).unwrap_or_default() {
        new.add_or_join(&text(k), v, joined);
    }
    *tri!(header_map(c.data_mut(), t, true)) = new;
    Ok(OK)
}

/// `proxy_get_header_map_value(map, key_data, key_size, return_data, return_size)`: one
/// header's value; `NotFound` when absent.
pub(super) fn proxy_get_header_map_value(
    mut c: Caller<'_, VmState>,
    t: i32,
    kp: i32,
    ks: i32,
    pp: i32,
    sp: i32,
) -> HostResult {
    let v = {
        let (data, d) = tri!(memory_and_data(&mut c));
        // Lossy as the module's bytes may not be UTF-8; no copy when they are.
        let key = text(tri!(slice(data, kp, ks)));
        tri!(header_map(d, t, false))
            .get_bytes(&key)
            .map(<[u8]>::to_vec)
    };
    let v = tri!(v.ok_or(Status::NotFound));
    gave(give(&mut c, &v, pp, sp))
}

/// `proxy_add_header_map_value(map, key_data, key_size, value_data, value_size)`: add a value,
/// joined to an existing one for Envoy's inline headers.
pub(super) fn proxy_add_header_map_value(
    mut c: Caller<'_, VmState>,
    t: i32,
    kp: i32,
    ks: i32,
    vp: i32,
    vs: i32,
) -> HostResult {
    let joined = joined_headers(t);
    Ok(edit_header(&mut c, t, (kp, ks), (vp, vs), |m, k, v| {
        m.add_or_join(k, v, joined)
    }))
}

/// `proxy_replace_header_map_value(map, key_data, key_size, value_data, value_size)`: set a
/// header to one value.
pub(super) fn proxy_replace_header_map_value(
    mut c: Caller<'_, VmState>,
    t: i32,
    kp: i32,
    ks: i32,
    vp: i32,
    vs: i32,
) -> HostResult {
    Ok(edit_header(&mut c, t, (kp, ks), (vp, vs), |m, k, v| {
        m.set(k, v)
    }))
}

/// `proxy_remove_header_map_value(map, key_data, key_size)`: remove a header (Ok when absent).
pub(super) fn proxy_remove_header_map_value(
    mut c: Caller<'_, VmState>,
    t: i32,
    kp: i32,
    ks: i32,
) -> HostResult {
    let (data, d) = tri!(memory_and_data(&mut c));
    let key = text(tri!(slice(data, kp, ks)));
    tri!(header_map(d, t, true)).remove(&key);
    Ok(OK)
}

/// `proxy_get_header_map_size(map, return_size)`: the map's serialized size.
pub(super) fn proxy_get_header_map_size(
    mut c: Caller<'_, VmState>,
    t: i32,
    out: i32,
) -> HostResult {
    let n = tri!(header_map(c.data_mut(), t, true)).byte_size() as u32;
    tri!(write_u32(&mut c, out, n));
    Ok(OK)
}
