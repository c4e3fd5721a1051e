//! Properties (the spec's "Properties"): `proxy_get_property` reads the attributes Envoy exposes
//! and the properties set before (see `host::property`), `proxy_set_property` writes the acting
//! stream's filter state.

use super::helpers::{HostResult, OK, gave, give, read, stream, tri};
use crate::abi::Status;
use crate::vm::{CelState, VmState};
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
/// acting stream's filter state, as Envoy does (`Context::setProperty`): the object `wasm.PATH`
/// is created on first set from the prototype the stream's root context declared for `PATH`
/// (`declare_property`), else as writable bytes; a readonly property set before gives
/// `BadArgument`. `NotFound` outside a stream.
pub(super) fn proxy_set_property(
    mut c: Caller<'_, VmState>,
    pp: i32,
    ps: i32,
    vp: i32,
    vs: i32,
) -> HostResult {
    let path = tri!(read(&mut c, pp, ps));
    let value = tri!(read(&mut c, vp, vs));
    let d = c.data_mut();
    let root = d.acting_root();
    let prototype = std::str::from_utf8(&path)
        .ok()
        .and_then(|p| d.declared.get(&root)?.get(p).cloned());
    // Envoy keeps it in the stream's filter state; without a stream there is none.
    let s = tri!(stream(d).map_err(|_| Status::NotFound));
    match s.cel_state.get_mut(&path) {
        Some(state) if state.readonly => Ok(Status::BadArgument as i32),
        Some(state) => {
            state.value = value;
            Ok(OK)
        }
        None => {
            let p = prototype.unwrap_or_default();
            s.cel_state.insert(
                path,
                CelState {
                    value,
                    readonly: p.readonly,
                    kind: p.kind,
                },
            );
            Ok(OK)
        }
    }
}
