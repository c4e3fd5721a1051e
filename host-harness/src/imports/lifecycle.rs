//! Context lifecycle (the spec's "Context lifecycle"): `proxy_done`, which lets a root context
//! that returned false from `proxy_on_done` finish, and `proxy_set_effective_context`.

use super::helpers::{HostResult, OK, st};
use crate::abi::Status;
use crate::vm::VmState;
use wasmtime::Caller;

/// `proxy_done()`: the acting root context is done; `NotFound` unless it was pending.
pub(super) fn proxy_done(mut c: Caller<'_, VmState>) -> HostResult {
    let d = c.data_mut();
    let ctx = d.context();
    if d.pending_done.remove(&ctx) {
        d.done_called.push(ctx);
        Ok(OK)
    } else {
        st(Status::NotFound)
    }
}

/// `proxy_set_effective_context(context_id)`: host calls act on `ctx` for the rest of the
/// callback; `BadArgument` for an unknown context.
pub(super) fn proxy_set_effective_context(mut c: Caller<'_, VmState>, ctx: i32) -> HostResult {
    let d = c.data_mut();
    let ctx = ctx as u32;
    if !d.roots.contains_key(&ctx) && !d.streams.contains_key(&ctx) {
        return st(Status::BadArgument);
    }
    d.effective = Some(ctx);
    Ok(OK)
}
