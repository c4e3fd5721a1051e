//! Foreign function interface (the spec's "Foreign function interface"):
//! `proxy_call_foreign_function` calls a function the test registered on the host by name.

use super::helpers::{HostResult, OK, gave, give, read, read_str, tri};
use crate::abi::Status;
use crate::vm::VmState;
use wasmtime::Caller;

/// `proxy_call_foreign_function(name_data, name_size, args_data, args_size, return_data,
/// return_size)`: the function's result (dropped when `return_data` is 0); `NotFound` for an
/// unknown name.
pub(super) fn proxy_call_foreign_function(
    mut c: Caller<'_, VmState>,
    np: i32,
    ns: i32,
    ap: i32,
    asz: i32,
    pp: i32,
    sp: i32,
) -> HostResult {
    let name = tri!(read_str(&mut c, np, ns));
    let args = tri!(read(&mut c, ap, asz));
    let f = c.data().shared.borrow().foreign.get(&name).cloned();
    let f = tri!(f.ok_or(Status::NotFound));
    let out = tri!(f(&args));
    if pp == 0 {
        return Ok(OK);
    }
    gave(give(&mut c, &out, pp, sp))
}
