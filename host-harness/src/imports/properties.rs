//! Properties (the spec's "Properties"): `proxy_get_property` reads the attributes Envoy exposes
//! (see `host::property`), `proxy_set_property` writes the acting stream's filter state.

use super::helpers::{HostResult, OK, gave, give, read, stream, tri};
use crate::abi::Status;
use crate::vm::VmState;
use wasmtime::Caller;

/// `proxy_get_property(path_data, path_size, return_data, return_size)`: a property's value;
/// `NotFound` when there is none.
pub(super) fn proxy_get_property(
    mut c: Caller<'_, VmState>,
    pp: i32,
    ps: i32,
    rp: i32,
    rs: i32,
) -> HostResult {
    let path = tri!(read(&mut c, pp, ps));
    let v = tri!(crate::host::property(c.data(), &path).ok_or(Status::NotFound));
    gave(give(&mut c, &v, rp, rs))
}

/// `proxy_set_property(path_data, path_size, value_data, value_size)`: set a property in the
/// acting stream's filter state; `NotFound` outside a stream.
pub(super) fn proxy_set_property(
    mut c: Caller<'_, VmState>,
    pp: i32,
    ps: i32,
    vp: i32,
    vs: i32,
) -> HostResult {
    let path = tri!(read(&mut c, pp, ps));
    let value = tri!(read(&mut c, vp, vs));
    // Envoy keeps it in the stream's filter state; without a stream there is none.
    let s = tri!(stream(c.data_mut()).map_err(|_| Status::NotFound));
    s.properties.insert(crate::host::path_key(&path), value);
    Ok(OK)
}
