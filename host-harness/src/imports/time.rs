//! Clocks and timers (the spec's "Clocks" and "Timers"): `proxy_get_current_time_nanoseconds`
//! reads the host clock, `proxy_set_tick_period_milliseconds` sets the acting root's tick. WASI's
//! clocks are in `wasi`.

use super::helpers::{HostResult, OK, tri, write};
use crate::abi::Status;
use crate::vm::VmState;
use std::time::Duration;
use wasmtime::Caller;

/// `proxy_get_current_time_nanoseconds(return_time)`: the host clock, nanoseconds since the
/// epoch.
pub(super) fn proxy_get_current_time_nanoseconds(
    mut c: Caller<'_, VmState>,
    out: i32,
) -> HostResult {
    let now = c.data().shared.borrow().now;
    tri!(write(&mut c, out, &now.to_le_bytes()));
    Ok(OK)
}

/// `proxy_set_tick_period_milliseconds(period)`: tick the acting context's root every `ms`
/// (0 stops it), the first tick one period from now.
pub(super) fn proxy_set_tick_period_milliseconds(
    mut c: Caller<'_, VmState>,
    ms: i32,
) -> HostResult {
    let d = c.data_mut();
    let now = d.shared.borrow().now;
    let ctx = d.context();
    let root = if d.roots.contains_key(&ctx) {
        ctx
    } else {
        tri!(
            d.streams
                .get(&ctx)
                .map(|s| s.root)
                .ok_or(Status::BadArgument)
        )
    };
    let r = tri!(d.roots.get_mut(&root).ok_or(Status::BadArgument));
    let period = Duration::from_millis(ms as u32 as u64);
    r.tick_period = (!period.is_zero()).then_some(period);
    r.next_tick = now + period.as_nanos() as u64;
    Ok(OK)
}
