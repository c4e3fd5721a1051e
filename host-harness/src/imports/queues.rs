//! Shared queues (the spec's "Shared Queues"): `proxy_register_shared_queue`,
//! `proxy_resolve_shared_queue`, `proxy_enqueue_shared_queue` and `proxy_dequeue_shared_queue`.

use super::helpers::{HostResult, OK, gave, give, read, read_str, tri, write_u32};
use crate::abi::Status;
use crate::vm::VmState;
use wasmtime::Caller;

/// `proxy_register_shared_queue(name_data, name_size, return_token)`: create or reopen this
/// VM id's queue `name`; deliveries go to the registering context's root.
pub(super) fn proxy_register_shared_queue(
    mut c: Caller<'_, VmState>,
    np: i32,
    ns: i32,
    out: i32,
) -> HostResult {
    let name = tri!(read_str(&mut c, np, ns));
    let token = {
        let d = c.data();
        // Deliveries go to the registering context's root (the last registrant wins).
        let ctx = d.context();
        let root = d.streams.get(&ctx).map(|s| s.root).unwrap_or(ctx);
        d.shared
            .borrow_mut()
            .register_queue(&d.vm_id, name, d.vm_index, root)
    };
    tri!(write_u32(&mut c, out, token));
    Ok(OK)
}

/// `proxy_resolve_shared_queue(vm_id_data, vm_id_size, name_data, name_size, return_token)`:
/// an existing queue (an empty VM id is the caller's); `NotFound` when there is none.
pub(super) fn proxy_resolve_shared_queue(
    mut c: Caller<'_, VmState>,
    vp: i32,
    vs: i32,
    np: i32,
    ns: i32,
    out: i32,
) -> HostResult {
    let mut vm_id = tri!(read_str(&mut c, vp, vs));
    let name = tri!(read_str(&mut c, np, ns));
    if vm_id.is_empty() {
        vm_id = c.data().vm_id.clone();
    }
    let token = c.data().shared.borrow().resolve_queue(&vm_id, &name);
    let token = tri!(token.ok_or(Status::NotFound));
    tri!(write_u32(&mut c, out, token));
    Ok(OK)
}

/// `proxy_enqueue_shared_queue(token, value_data, value_size)`: add an item.
pub(super) fn proxy_enqueue_shared_queue(
    mut c: Caller<'_, VmState>,
    token: i32,
    vp: i32,
    vs: i32,
) -> HostResult {
    let value = tri!(read(&mut c, vp, vs));
    Ok(c.data().shared.borrow_mut().enqueue(token as u32, value) as i32)
}

/// `proxy_dequeue_shared_queue(token, return_data, return_size)`: take the oldest item;
/// `Empty` when there is none.
pub(super) fn proxy_dequeue_shared_queue(
    mut c: Caller<'_, VmState>,
    token: i32,
    pp: i32,
    sp: i32,
) -> HostResult {
    let v = c.data().shared.borrow_mut().dequeue(token as u32);
    let v = tri!(v);
    gave(give(&mut c, &v, pp, sp))
}
