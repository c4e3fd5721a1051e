//! WASI preview 1, as cpp-host and Envoy provide it (registered under both
//! `wasi_snapshot_preview1` and `wasi_unstable`). The spec lists these under "Logging"
//! (`fd_write`), "Clocks" (`clock_time_get`), "Randomness" (`random_get`), "Environment
//! variables" (`environ_*`) and "Unimplemented WASI functions" (the rest, which answer as stubs).
//! They return a WASI errno, not a proxy-wasm status.

use super::helpers::{HostResult, read, write, write_u32};
use crate::abi::LogLevel;
use crate::vm::{Abort, VmState};
use wasmtime::Caller;

/// What the monotonic clock (`clock_time_get` id 1) reads when a [`Host`](crate::Host) starts:
/// Envoy answers with its steady clock, which counts from the machine's boot and is never zero
/// (Go's runtime refuses to start on a monotonic clock that reads zero: "nanotime returning
/// zero"). As if the machine had booted an hour before.
const MONOTONIC_ORIGIN: u64 = 3_600_000_000_000;

const ERRNO_NOENT: i32 = 44;
const ERRNO_NOSYS: i32 = 52;
const ERRNO_BADF: i32 = 8;
const ERRNO_INVAL: i32 = 28;
const ERRNO_NOTSUP: i32 = 58;
const ERRNO_FAULT: i32 = 21;
const ERRNO_FBIG: i32 = 22;

/// Most iovecs one `fd_write` takes (POSIX's `IOV_MAX`, which wasi-libc's `writev` keeps to).
pub const FD_WRITE_MAX_IOVS: i32 = 1024;
/// Most bytes one `fd_write` gathers: iovecs may name the same memory again and again, so without
/// a cap a guest makes the host allocate without bound (Envoy's host has none; nothing a real
/// filter writes to its log comes near).
pub const FD_WRITE_MAX_BYTES: usize = 1 << 20;

/// The value of a `Result`, or return `EFAULT` from the WASI function.
macro_rules! tri_errno {
    ($e:expr) => {
        match $e {
            Ok(v) => v,
            Err(_) => return Ok(ERRNO_FAULT),
        }
    };
}

/// `fd_write(fd, iovs, iovs_len, return_written)`: stdout and stderr become log lines.
pub(super) fn fd_write(
    mut c: Caller<'_, VmState>,
    fd: i32,
    iovs: i32,
    n: i32,
    written: i32,
) -> HostResult {
    if fd != 1 && fd != 2 {
        return Ok(ERRNO_BADF);
    }
    if !(0..=FD_WRITE_MAX_IOVS).contains(&n) {
        return Ok(ERRNO_INVAL);
    }
    let mut out = Vec::new();
    for i in 0..n {
        let iov = tri_errno!(read(&mut c, iovs + i * 8, 8));
        let p = i32::from_le_bytes([iov[0], iov[1], iov[2], iov[3]]);
        let l = i32::from_le_bytes([iov[4], iov[5], iov[6], iov[7]]);
        // Checked before reading: nothing past the cap is ever copied.
        if usize::try_from(l).map_or(true, |l| out.len() + l > FD_WRITE_MAX_BYTES) {
            return Ok(if l < 0 { ERRNO_FAULT } else { ERRNO_FBIG });
        }
        out.extend(tri_errno!(read(&mut c, p, l)));
    }
    let n = out.len() as u32;
    // As cpp-host's writevImpl: stdout logs at info, stderr at error, one trailing newline
    // dropped; a write of no bytes logs nothing, but a lone newline logs an empty line (Go's
    // runtime writes a panic's message in pieces, blank lines among them).
    if !out.is_empty() {
        let text = String::from_utf8_lossy(&out);
        let text = text.strip_suffix('\n').unwrap_or(&text);
        c.data().log(
            if fd == 1 {
                LogLevel::Info
            } else {
                LogLevel::Error
            },
            text.to_string(),
        );
    }
    tri_errno!(write_u32(&mut c, written, n));
    Ok(0)
}

/// `fd_read`: `ENOSYS`.
pub(super) fn fd_read(
    _c: Caller<'_, VmState>,
    _fd: i32,
    _iovs: i32,
    _n: i32,
    _read: i32,
) -> HostResult {
    Ok(ERRNO_NOSYS)
}

/// `fd_close`: success, closing nothing.
pub(super) fn fd_close(_c: Caller<'_, VmState>, _fd: i32) -> HostResult {
    Ok(0)
}

/// `fd_seek`: success, moving nothing.
pub(super) fn fd_seek(
    _c: Caller<'_, VmState>,
    _fd: i32,
    _off: i64,
    _whence: i32,
    _out: i32,
) -> HostResult {
    Ok(0)
}

/// `fd_fdstat_get(fd, return_stat)`: stdout and stderr, writable; `EBADF` for any other fd.
pub(super) fn fd_fdstat_get(mut c: Caller<'_, VmState>, fd: i32, out: i32) -> HostResult {
    if fd != 1 && fd != 2 {
        return Ok(ERRNO_BADF);
    }
    // [u64 0, u64 rights = FD_WRITE (64), u64 0], as cpp-host writes it.
    let mut stat = [0u8; 24];
    stat[8] = 64;
    tri_errno!(write(&mut c, out, &stat));
    Ok(0)
}

/// `fd_fdstat_set_flags`: `ENOSYS`.
pub(super) fn fd_fdstat_set_flags(_c: Caller<'_, VmState>, _fd: i32, _flags: i32) -> HostResult {
    Ok(ERRNO_NOSYS)
}

/// `fd_prestat_get`: `EBADF`, there are no preopened directories.
pub(super) fn fd_prestat_get(_c: Caller<'_, VmState>, _fd: i32, _out: i32) -> HostResult {
    Ok(ERRNO_BADF)
}

/// `fd_prestat_dir_name`: `ENOSYS`.
pub(super) fn fd_prestat_dir_name(
    _c: Caller<'_, VmState>,
    _fd: i32,
    _p: i32,
    _l: i32,
) -> HostResult {
    Ok(ERRNO_NOSYS)
}

/// `fd_filestat_get`: `EBADF`.
pub(super) fn fd_filestat_get(_c: Caller<'_, VmState>, _fd: i32, _out: i32) -> HostResult {
    Ok(ERRNO_BADF)
}

/// `path_open`: `ENOENT`, there is no file system.
#[allow(clippy::too_many_arguments)]
pub(super) fn path_open(
    _c: Caller<'_, VmState>,
    _fd: i32,
    _df: i32,
    _p: i32,
    _l: i32,
    _of: i32,
    _rb: i64,
    _ri: i64,
    _ff: i32,
    _out: i32,
) -> HostResult {
    Ok(ERRNO_NOENT)
}

/// `path_filestat_get`: `ENOTSUP`.
pub(super) fn path_filestat_get(
    _c: Caller<'_, VmState>,
    _fd: i32,
    _f: i32,
    _p: i32,
    _l: i32,
    _out: i32,
) -> HostResult {
    Ok(ERRNO_NOTSUP)
}

/// `environ_sizes_get(return_count, return_size)`: the host's environment variables (see
/// `Shared::env`), counted as `KEY=VALUE\0` entries.
pub(super) fn environ_sizes_get(mut c: Caller<'_, VmState>, count: i32, size: i32) -> HostResult {
    let (n, bytes) = {
        let s = c.data().shared.borrow();
        (
            s.env.len() as u32,
            s.env
                .iter()
                .map(|(k, v)| k.len() + v.len() + 2)
                .sum::<usize>() as u32,
        )
    };
    tri_errno!(write_u32(&mut c, count, n));
    tri_errno!(write_u32(&mut c, size, bytes));
    Ok(0)
}

/// `environ_get(return_pointers, return_buffer)`: the environment as `KEY=VALUE\0` entries.
pub(super) fn environ_get(mut c: Caller<'_, VmState>, ptrs: i32, buf: i32) -> HostResult {
    let env = c.data().shared.borrow().env.clone();
    let mut at = buf;
    for (i, (k, v)) in env.iter().enumerate() {
        tri_errno!(write_u32(&mut c, ptrs + 4 * i as i32, at as u32));
        let entry = format!("{k}={v}\0");
        tri_errno!(write(&mut c, at, entry.as_bytes()));
        at += entry.len() as i32;
    }
    Ok(0)
}

/// `args_sizes_get(return_count, return_size)`: no arguments.
pub(super) fn args_sizes_get(mut c: Caller<'_, VmState>, count: i32, size: i32) -> HostResult {
    tri_errno!(write_u32(&mut c, count, 0));
    tri_errno!(write_u32(&mut c, size, 0));
    Ok(0)
}

/// `args_get`: no arguments to write.
pub(super) fn args_get(_c: Caller<'_, VmState>, _ptrs: i32, _buf: i32) -> HostResult {
    Ok(0)
}

/// `clock_time_get(id, precision, return_time)`: the host clock (id 0, realtime) or the
/// monotonic clock (id 1); `ENOTSUP` for other ids.
pub(super) fn clock_time_get(
    mut c: Caller<'_, VmState>,
    id: i32,
    _precision: i64,
    out: i32,
) -> HostResult {
    let t = {
        let s = c.data().shared.borrow();
        match id {
            0 => s.now,
            1 => MONOTONIC_ORIGIN + s.monotonic(),
            _ => return Ok(ERRNO_NOTSUP),
        }
    };
    tri_errno!(write(&mut c, out, &t.to_le_bytes()));
    Ok(0)
}

/// `clock_res_get(id, return_resolution)`: 1 ns for clocks 0 and 1; `ENOTSUP` for others.
pub(super) fn clock_res_get(mut c: Caller<'_, VmState>, id: i32, out: i32) -> HostResult {
    if !(0..=1).contains(&id) {
        return Ok(ERRNO_NOTSUP);
    }
    tri_errno!(write(&mut c, out, &1u64.to_le_bytes()));
    Ok(0)
}

/// `random_get(buffer, size)`: the host's seeded pseudo-random bytes; `EINVAL` above 64 KiB.
pub(super) fn random_get(mut c: Caller<'_, VmState>, buf: i32, len: i32) -> HostResult {
    let len = len as u32 as usize;
    if len > 65536 {
        return Ok(ERRNO_INVAL);
    }
    let bytes = c.data().shared.borrow_mut().random_bytes(len);
    tri_errno!(write(&mut c, buf, &bytes));
    Ok(0)
}

/// `sched_yield()`: success.
pub(super) fn sched_yield(_c: Caller<'_, VmState>) -> HostResult {
    Ok(0)
}

/// `poll_oneoff(in, out, count, return_events)`: no events.
pub(super) fn poll_oneoff(
    mut c: Caller<'_, VmState>,
    _in: i32,
    _out: i32,
    _n: i32,
    nevents: i32,
) -> HostResult {
    tri_errno!(write_u32(&mut c, nevents, 0));
    Ok(0)
}

/// `proc_exit(code)`: Envoy only logs it and returns; the module's own trap right after it is
/// what fails the VM. The harness records the code so that error names it.
pub(super) fn proc_exit(mut c: Caller<'_, VmState>, code: i32) -> wasmtime::Result<()> {
    c.data_mut().abort = Some(Abort::Exit(code));
    Ok(())
}
