//! Logging (the spec's "Logging"): `proxy_log` and, in v0.2.1, `proxy_get_log_level`. WASI's
//! `fd_write`, which logs too, is in `wasi`.

use super::helpers::{HostResult, OK, read_str, tri, write_u32};
use crate::abi::{LogLevel, Status};
use crate::vm::VmState;
use wasmtime::Caller;

/// `proxy_log(level, message_data, message_size)`: record the message at `level`.
pub(super) fn proxy_log(mut c: Caller<'_, VmState>, level: i32, ptr: i32, len: i32) -> HostResult {
    let msg = tri!(read_str(&mut c, ptr, len));
    let level = tri!(LogLevel::from_i32(level).ok_or(Status::BadArgument));
    c.data().log(level, msg);
    Ok(OK)
}

/// `proxy_get_log_level(return_level)`: the host's log level (v0.2.1).
pub(super) fn proxy_get_log_level(mut c: Caller<'_, VmState>, out: i32) -> HostResult {
    let level = c.data().shared.borrow().log_level as u32;
    tri!(write_u32(&mut c, out, level));
    Ok(OK)
}
