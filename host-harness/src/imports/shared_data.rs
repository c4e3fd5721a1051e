//! Shared key-value store (the spec's "Shared Key-Value Store"): `proxy_get_shared_data` and
//! `proxy_set_shared_data`, per VM id, with compare-and-swap.

use super::helpers::{HostResult, OK, gave, give, read, read_str, tri, write_u32};
use crate::abi::Status;
use crate::vm::VmState;
use wasmtime::Caller;

/// `proxy_get_shared_data(key_data, key_size, return_data, return_size, return_cas)`: a value
/// and its CAS; `NotFound` when absent.
pub(super) fn proxy_get_shared_data(
    mut c: Caller<'_, VmState>,
    kp: i32,
    ks: i32,
    pp: i32,
    sp: i32,
    cas_ptr: i32,
) -> HostResult {
    let key = tri!(read_str(&mut c, kp, ks));
    let got = {
        let d = c.data();
        d.shared
            .borrow()
            .shared_data
            .get(&(d.vm_id.clone(), key))
            .cloned()
    };
    let (value, cas) = tri!(got.ok_or(Status::NotFound));
    let r = gave(give(&mut c, &value, pp, sp))?;
    if r != OK {
        return Ok(r);
    }
    tri!(write_u32(&mut c, cas_ptr, cas));
    Ok(OK)
}

/// `proxy_set_shared_data(key_data, key_size, value_data, value_size, cas)`: store a value;
/// `CasMismatch` when `cas` is set and stale.
pub(super) fn proxy_set_shared_data(
    mut c: Caller<'_, VmState>,
    kp: i32,
    ks: i32,
    vp: i32,
    vs: i32,
    cas: i32,
) -> HostResult {
    let key = tri!(read_str(&mut c, kp, ks));
    let value = tri!(read(&mut c, vp, vs));
    let d = c.data();
    let s = &mut *d.shared.borrow_mut();
    Ok(s.set_shared_data(&d.vm_id, key, value, cas as u32) as i32)
}
