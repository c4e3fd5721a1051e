//! The Emscripten and pthread shims cpp-host provides in `env`, outside the proxy-wasm spec:
//! `pthread_equal` and `emscripten_notify_memory_growth`.

use super::helpers::HostResult;
use crate::vm::VmState;
use wasmtime::Caller;

/// `pthread_equal(a, b)`: 1 when the thread ids are equal.
pub(super) fn pthread_equal(_c: Caller<'_, VmState>, a: i32, b: i32) -> HostResult {
    Ok((a == b) as i32)
}

/// `emscripten_notify_memory_growth(memory_index)`: nothing to do.
pub(super) fn emscripten_notify_memory_growth(
    _c: Caller<'_, VmState>,
    _i: i32,
) -> wasmtime::Result<()> {
    Ok(())
}
