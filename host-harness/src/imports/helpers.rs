//! What the host calls share: reading and writing the module's memory, handing data to the module
//! through its allocator, the acting stream, and turning a [`Status`] into a host call's result.

use crate::abi::Status;
use crate::vm::{Abort, Restriction, StreamCtx, VmState};
use std::borrow::Cow;
use wasmtime::Caller;

/// What a host call returns: its status (an errno for WASI), or a trap.
pub(super) type HostResult = wasmtime::Result<i32>;

/// [`Status::Ok`] as a host call returns it.
pub(super) const OK: i32 = Status::Ok as i32;

/// Return `s` from a host call.
pub(super) fn st(s: Status) -> HostResult {
    Ok(s as i32)
}

/// The value of a `Result<_, Status>`, or return its status from the host call.
macro_rules! tri {
    ($e:expr) => {
        match $e {
            Ok(v) => v,
            Err(s) => return Ok(s as i32),
        }
    };
}
pub(super) use tri;

/// Read `len` bytes at `ptr` from the module's memory.
pub(super) fn read(c: &mut Caller<'_, VmState>, ptr: i32, len: i32) -> Result<Vec<u8>, Status> {
    let mem = c.data().memory.ok_or(Status::InvalidMemoryAccess)?;
    let data = mem.data(&*c);
    let (p, l) = (ptr as u32 as usize, len as u32 as usize);
    data.get(p..p.checked_add(l).ok_or(Status::InvalidMemoryAccess)?)
        .map(<[u8]>::to_vec)
        .ok_or(Status::InvalidMemoryAccess)
}

/// `len` bytes at `ptr` within `data` (the module's memory).
pub(super) fn slice(data: &[u8], ptr: i32, len: i32) -> Result<&[u8], Status> {
    let (p, l) = (ptr as u32 as usize, len as u32 as usize);
    data.get(p..p.checked_add(l).ok_or(Status::InvalidMemoryAccess)?)
        .ok_or(Status::InvalidMemoryAccess)
}

/// The module's memory and the store's data at once, so host calls use arguments in place
/// instead of copying them out first.
pub(super) fn memory_and_data<'a>(
    c: &'a mut Caller<'_, VmState>,
) -> Result<(&'a [u8], &'a mut VmState), Status> {
    let mem = c.data().memory.ok_or(Status::InvalidMemoryAccess)?;
    let (data, d) = mem.data_and_store_mut(c);
    Ok((data, d))
}

/// Read `len` bytes at `ptr` as text, invalid UTF-8 replaced.
pub(super) fn read_str(c: &mut Caller<'_, VmState>, ptr: i32, len: i32) -> Result<String, Status> {
    read(c, ptr, len).map(|b| {
        String::from_utf8(b).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
    })
}

/// `bytes` as text, invalid UTF-8 replaced (as `String::from_utf8_lossy`), borrowed when valid.
/// Validation first: it takes a fast path for ASCII, which header names almost always are,
/// while the lossy decoder walks every byte.
pub(super) fn text(bytes: &[u8]) -> Cow<'_, str> {
    match std::str::from_utf8(bytes) {
        Ok(s) => Cow::Borrowed(s),
        Err(_) => String::from_utf8_lossy(bytes),
    }
}

/// Write `bytes` at `ptr` in the module's memory.
pub(super) fn write(c: &mut Caller<'_, VmState>, ptr: i32, bytes: &[u8]) -> Result<(), Status> {
    let mem = c.data().memory.ok_or(Status::InvalidMemoryAccess)?;
    let p = ptr as u32 as usize;
    mem.data_mut(&mut *c)
        .get_mut(p..p + bytes.len())
        .ok_or(Status::InvalidMemoryAccess)?
        .copy_from_slice(bytes);
    Ok(())
}

/// Write `v` (little-endian) at `ptr` in the module's memory.
pub(super) fn write_u32(c: &mut Caller<'_, VmState>, ptr: i32, v: u32) -> Result<(), Status> {
    write(c, ptr, &v.to_le_bytes())
}

/// Allocate in the module, copy `bytes` there, and store pointer and size at the out-params.
/// Empty data is returned as (0, 0) without allocating, as cpp-host does.
pub(super) fn give(
    c: &mut Caller<'_, VmState>,
    bytes: &[u8],
    ptr_ptr: i32,
    size_ptr: i32,
) -> wasmtime::Result<Result<(), Status>> {
    let mut ptr = 0u32;
    if !bytes.is_empty() {
        ptr = match alloc_copy(c, bytes)? {
            Ok(p) => p,
            Err(s) => return Ok(Err(s)),
        };
    }
    Ok(write_u32(c, ptr_ptr, ptr).and_then(|_| write_u32(c, size_ptr, bytes.len() as u32)))
}

/// Allocate `bytes.len()` bytes in the module (with its allocator, even for none, as
/// cpp-host's `allocMemory`) and copy `bytes` there: the pointer.
pub(super) fn alloc_copy(
    c: &mut Caller<'_, VmState>,
    bytes: &[u8],
) -> wasmtime::Result<Result<u32, Status>> {
    let Some(alloc) = c.data().alloc.clone() else {
        return Ok(Err(Status::InternalFailure));
    };
    // Envoy lets the allocator call only a few host functions.
    let outer = c.data_mut().restricted.replace(Restriction::Malloc);
    let allocated = alloc.call(&mut *c, bytes.len() as i32);
    c.data_mut().restricted = outer;
    let ptr = match allocated {
        Ok(p) => p as u32,
        // Envoy: the allocator trapped on a restricted call; the VM is failed (see
        // `VmInner::call`) and this host call reports that it could not copy the data.
        Err(_)
            if matches!(
                c.data().abort,
                Some(Abort::Restricted(_, Restriction::Malloc))
            ) =>
        {
            return Ok(Err(Status::InvalidMemoryAccess));
        }
        Err(e) => return Err(e),
    };
    if ptr == 0 {
        return Ok(Err(Status::InternalFailure));
    }
    if let Err(s) = write(c, ptr as i32, bytes) {
        return Ok(Err(s));
    }
    Ok(Ok(ptr))
}

/// Finish a `give`: a trap propagates, a status is returned.
pub(super) fn gave(r: wasmtime::Result<Result<(), Status>>) -> HostResult {
    match r? {
        Ok(()) => Ok(OK),
        Err(s) => Ok(s as i32),
    }
}

/// The acting context's stream (HTTP stream or network connection); `BadArgument` without one.
pub(super) fn stream(d: &mut VmState) -> Result<&mut StreamCtx, Status> {
    let ctx = d.context();
    d.streams
        .get_mut(&ctx)
        .map(|s| &mut **s)
        .ok_or(Status::BadArgument)
}
