//! Metrics (the spec's "Metrics"): `proxy_define_metric`, `proxy_increment_metric`,
//! `proxy_record_metric` and `proxy_get_metric`. Ids are per VM, `(n << 2) | kind`; the stat
//! itself is host-wide, by name.

use super::helpers::{HostResult, OK, read_str, tri, write, write_u32};
use crate::abi::{MetricType, Status};
use crate::vm::VmState;
use wasmtime::Caller;

/// The host-wide stat (its index, see `Shared::stat_at`) behind a module's metric id.
fn metric_id(d: &VmState, id: u32) -> Result<usize, Status> {
    let kind = MetricType::from_i32((id & 3) as i32).ok_or(Status::BadArgument)?;
    let (k, stat) = d
        .metric_ids
        .get(((id >> 2) as usize).wrapping_sub(1))
        .ok_or(Status::NotFound)?;
    if *k != kind {
        return Err(Status::NotFound);
    }
    Ok(*stat)
}

/// `proxy_define_metric(type, name_data, name_size, return_id)`: a new id for the stat of that
/// kind and name.
pub(super) fn proxy_define_metric(
    mut c: Caller<'_, VmState>,
    t: i32,
    np: i32,
    ns: i32,
    out: i32,
) -> HostResult {
    let kind = tri!(MetricType::from_i32(t).ok_or(Status::BadArgument));
    let name = tri!(read_str(&mut c, np, ns));
    let id = {
        let d = c.data_mut();
        let stat = d.shared.borrow_mut().stat_index(kind, &name);
        d.metric_ids.push((kind, stat));
        ((d.metric_ids.len() as u32) << 2) | kind as u32
    };
    tri!(write_u32(&mut c, out, id));
    Ok(OK)
}

/// `proxy_increment_metric(id, offset)`: add to a counter (positive only) or a gauge.
pub(super) fn proxy_increment_metric(c: Caller<'_, VmState>, id: i32, offset: i64) -> HostResult {
    let stat = tri!(metric_id(c.data(), id as u32));
    Ok(c.data().shared.borrow_mut().stat_at(stat).increment(offset) as i32)
}

/// `proxy_record_metric(id, value)`: add to a counter, set a gauge, record in a histogram.
pub(super) fn proxy_record_metric(c: Caller<'_, VmState>, id: i32, value: i64) -> HostResult {
    let stat = tri!(metric_id(c.data(), id as u32));
    Ok(c.data()
        .shared
        .borrow_mut()
        .stat_at(stat)
        .record(value as u64) as i32)
}

/// `proxy_get_metric(id, return_value)`: a counter's or gauge's value.
pub(super) fn proxy_get_metric(mut c: Caller<'_, VmState>, id: i32, out: i32) -> HostResult {
    let stat = tri!(metric_id(c.data(), id as u32));
    let v = tri!(c.data().shared.borrow_mut().stat_at(stat).get());
    tri!(write(&mut c, out, &v.to_le_bytes()));
    Ok(OK)
}
