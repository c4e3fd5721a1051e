//! Host calls tested alone: each named function wrapped as a host [`Func`] and called from Rust
//! on a store with a host-made memory, no module involved.

use super::{define, header_maps, logging, metrics, wasi};
use crate::abi::{AbiVersion, LogLevel, Status};
use crate::vm::{Abort, IdMap, Limiter, MapPool, Restriction, StreamCtx, VmState};
use crate::{Host, LogRecord};
use std::collections::BTreeMap;
use wasmtime::{Engine, Func, IntoFunc, Linker, Memory, MemoryType, Store, WasmParams};

/// A store whose state has a one-page memory, no allocator and no context running.
fn store(engine: &Engine) -> Store<VmState> {
    let state = VmState {
        shared: Host::new().shared,
        vm_id: String::new(),
        vm_configuration: Vec::new(),
        vm_index: 0,
        memory: None,
        alloc: None,
        current: 0,
        effective: None,
        roots: BTreeMap::new(),
        streams: IdMap::default(),
        resumed_dirty: false,
        map_pool: MapPool::default(),
        stream_pool: Vec::new(),
        call_data: Vec::new(),
        call_response: None,
        limiter: Limiter {
            cap: 1 << 20,
            breached: false,
        },
        abort: None,
        restricted: None,
        plugin_config_visible: false,
        metric_ids: Vec::new(),
        next_callout: 0,
        pending_done: Default::default(),
        done_called: Vec::new(),
        last_status: (0, String::new()),
        declared: Default::default(),
    };
    let mut store = Store::new(engine, state);
    let memory = Memory::new(&mut store, MemoryType::new(1, None)).unwrap();
    store.data_mut().memory = Some(memory);
    store
}

/// Call the host function `f` once with `args`; its status (or errno), or its trap.
fn call<Params, Results, P: WasmParams>(
    store: &mut Store<VmState>,
    f: impl IntoFunc<VmState, Params, Results>,
    args: P,
) -> wasmtime::Result<i32> {
    let f = Func::wrap(&mut *store, f);
    f.typed::<P, i32>(&*store)?.call(&mut *store, args)
}

fn poke(store: &mut Store<VmState>, at: usize, bytes: &[u8]) {
    let memory = store.data().memory.unwrap();
    memory.data_mut(store)[at..at + bytes.len()].copy_from_slice(bytes);
}

fn peek(store: &Store<VmState>, at: usize, len: usize) -> Vec<u8> {
    let memory = store.data().memory.unwrap();
    memory.data(store)[at..at + len].to_vec()
}

fn peek_u32(store: &Store<VmState>, at: usize) -> u32 {
    u32::from_le_bytes(peek(store, at, 4).try_into().unwrap())
}

fn logs(store: &Store<VmState>) -> Vec<LogRecord> {
    store.data().shared.borrow().logs.clone()
}

const OK: i32 = Status::Ok as i32;
/// One past the end of the one-page memory.
const OUTSIDE: i32 = 65536;

#[test]
fn proxy_log_records_the_message_at_its_level() {
    let engine = Engine::default();
    let mut s = store(&engine);
    poke(&mut s, 16, b"hello");
    let r = call(&mut s, logging::proxy_log, (LogLevel::Warn as i32, 16, 5)).unwrap();
    assert_eq!(r, OK);
    let logs = logs(&s);
    assert_eq!(logs.len(), 1);
    assert_eq!(logs[0].level, LogLevel::Warn);
    assert_eq!(logs[0].message, "hello");
}

#[test]
fn proxy_log_reads_the_message_before_checking_the_level() {
    let engine = Engine::default();
    let mut s = store(&engine);
    let r = call(&mut s, logging::proxy_log, (9, 16, 5)).unwrap();
    assert_eq!(r, Status::BadArgument as i32);
    let r = call(&mut s, logging::proxy_log, (9, OUTSIDE, 1)).unwrap();
    assert_eq!(r, Status::InvalidMemoryAccess as i32);
    assert!(logs(&s).is_empty());
}

#[test]
fn header_maps_outside_a_stream_are_bad_argument_or_empty() {
    let engine = Engine::default();
    let mut s = store(&engine);
    let size = header_maps::proxy_get_header_map_size;
    let r = call(&mut s, size, (0, 16)).unwrap();
    assert_eq!(r, Status::BadArgument as i32);
    let r = call(&mut s, header_maps::proxy_get_header_map_pairs, (9, 16, 20)).unwrap();
    assert_eq!(r, Status::BadArgument as i32);
    // A known map Envoy does not hold now reads as empty: (0, 0), nothing allocated.
    poke(&mut s, 16, &[0xff; 8]);
    let r = call(&mut s, header_maps::proxy_get_header_map_pairs, (0, 16, 20)).unwrap();
    assert_eq!(r, OK);
    assert_eq!(peek(&s, 16, 8), [0; 8]);
}

#[test]
fn header_map_edits_reach_the_acting_stream() {
    let engine = Engine::default();
    let mut s = store(&engine);
    let stream = StreamCtx {
        request_headers_held: true,
        ..StreamCtx::default()
    };
    s.data_mut().streams.insert(2, Box::new(stream));
    s.data_mut().current = 2;
    poke(&mut s, 16, b"x-a");
    poke(&mut s, 32, b"1");
    poke(&mut s, 40, b"2");
    let add = header_maps::proxy_add_header_map_value;
    assert_eq!(call(&mut s, add, (0, 16, 3, 32, 1)).unwrap(), OK);
    assert_eq!(call(&mut s, add, (0, 16, 3, 40, 1)).unwrap(), OK);
    let headers = s.data().streams[&2].request_headers.clone().unwrap();
    assert_eq!(headers.get_all("x-a"), ["1", "2"]);

    let r = call(&mut s, header_maps::proxy_get_header_map_size, (0, 64)).unwrap();
    assert_eq!(r, OK);
    assert_eq!(peek_u32(&s, 64) as usize, headers.byte_size());

    // Response headers are not held: the edit is refused and nothing is created.
    assert_eq!(
        call(&mut s, add, (2, 16, 3, 32, 1)).unwrap(),
        Status::BadArgument as i32
    );
    assert!(s.data().streams[&2].response_headers.is_none());

    let remove = header_maps::proxy_remove_header_map_value;
    assert_eq!(call(&mut s, remove, (0, 16, 3)).unwrap(), OK);
    let get = header_maps::proxy_get_header_map_value;
    let r = call(&mut s, get, (0, 16, 3, 64, 68)).unwrap();
    assert_eq!(r, Status::NotFound as i32);
}

#[test]
fn metrics_count_through_their_ids() {
    let engine = Engine::default();
    let mut s = store(&engine);
    poke(&mut s, 16, b"requests");
    let r = call(&mut s, metrics::proxy_define_metric, (0, 16, 8, 32)).unwrap();
    assert_eq!(r, OK);
    let id = peek_u32(&s, 32) as i32;
    let inc = metrics::proxy_increment_metric;
    assert_eq!(
        call(&mut s, inc, (id, -1i64)).unwrap(),
        Status::BadArgument as i32
    );
    assert_eq!(call(&mut s, inc, (id, 3i64)).unwrap(), OK);
    let r = call(&mut s, metrics::proxy_get_metric, (id, 40)).unwrap();
    assert_eq!(r, OK);
    assert_eq!(peek(&s, 40, 8), 3u64.to_le_bytes());
    // The same number as a gauge is another id, unknown to this VM.
    let r = call(&mut s, metrics::proxy_get_metric, (id + 1, 40)).unwrap();
    assert_eq!(r, Status::NotFound as i32);
}

#[test]
fn fd_write_logs_stdout_without_its_newline_and_refuses_other_fds() {
    let engine = Engine::default();
    let mut s = store(&engine);
    poke(&mut s, 64, b"out\n");
    // One iovec at 16: (64, 4).
    poke(&mut s, 16, &[64, 0, 0, 0, 4, 0, 0, 0]);
    let r = call(&mut s, wasi::fd_write, (1, 16, 1, 32)).unwrap();
    assert_eq!(r, 0);
    assert_eq!(peek_u32(&s, 32), 4);
    let logs = logs(&s);
    assert_eq!(
        (logs[0].level, logs[0].message.as_str()),
        (LogLevel::Info, "out")
    );
    let r = call(&mut s, wasi::fd_write, (3, 16, 1, 32)).unwrap();
    assert_eq!(r, 8, "EBADF");
    let r = call(&mut s, wasi::fd_write, (2, OUTSIDE, 1, 32)).unwrap();
    assert_eq!(r, 21, "EFAULT");
}

#[test]
fn fd_write_gathers_under_a_cap() {
    let engine = Engine::default();
    let mut s = store(&engine);
    // 32 iovecs at 1024, each naming the same 60 KiB at 4096: 1.9 MiB gathered from 60 KiB.
    for i in 0..32 {
        poke(&mut s, 1024 + i * 8, &[0, 16, 0, 0, 0, 240, 0, 0]);
    }
    let r = call(&mut s, wasi::fd_write, (1, 1024, 32, 32)).unwrap();
    assert_eq!(r, 22, "EFBIG");
    assert!(logs(&s).is_empty(), "nothing past the cap is logged");
    // Up to the cap it is written: 17 x 60 KiB = 1,044,480 bytes.
    let r = call(&mut s, wasi::fd_write, (1, 1024, 17, 32)).unwrap();
    assert_eq!(r, 0);
    assert_eq!(peek_u32(&s, 32), 17 * 61440);
    // More iovecs than IOV_MAX, or a negative count: EINVAL before any is read.
    let r = call(
        &mut s,
        wasi::fd_write,
        (1, 1024, wasi::FD_WRITE_MAX_IOVS + 1, 32),
    )
    .unwrap();
    assert_eq!(r, 28, "EINVAL");
    let r = call(&mut s, wasi::fd_write, (1, 1024, -1, 32)).unwrap();
    assert_eq!(r, 28, "EINVAL");
    // A negative length is a bad address, as before.
    poke(&mut s, 1024, &[0, 16, 0, 0, 255, 255, 255, 255]);
    let r = call(&mut s, wasi::fd_write, (1, 1024, 1, 32)).unwrap();
    assert_eq!(r, 21, "EFAULT");
}

#[test]
fn the_table_traps_calls_envoy_restricts() {
    let engine = Engine::default();
    let mut s = store(&engine);
    let mut linker = Linker::new(&engine);
    define(&mut linker, AbiVersion::V0_2_1).unwrap();
    s.data_mut().restricted = Some(Restriction::Malloc);
    poke(&mut s, 16, b"x");
    let log = linker.get(&mut s, "env", "proxy_log").unwrap();
    let log = log.into_func().unwrap().typed::<(i32, i32, i32), i32>(&s);
    assert_eq!(log.unwrap().call(&mut s, (2, 16, 1)).unwrap(), OK);
    let done = linker.get(&mut s, "env", "proxy_done").unwrap();
    let done = done.into_func().unwrap().typed::<(), i32>(&s).unwrap();
    let e = done.call(&mut s, ()).unwrap_err();
    assert!(matches!(
        e.downcast_ref::<Abort>(),
        Some(Abort::Restricted("proxy_done", Restriction::Malloc))
    ));
    assert!(matches!(
        s.data().abort,
        Some(Abort::Restricted("proxy_done", Restriction::Malloc))
    ));
}

#[test]
fn the_table_follows_the_abi_version() {
    let engine = Engine::default();
    let names = |abi| define(&mut Linker::new(&engine), abi).unwrap();
    let (v010, v020, v021) = (
        names(AbiVersion::V0_1_0),
        names(AbiVersion::V0_2_0),
        names(AbiVersion::V0_2_1),
    );
    for (name, in_010, in_020, in_021) in [
        ("proxy_get_configuration", true, false, false),
        ("proxy_continue_request", true, false, false),
        ("proxy_continue_stream", false, true, true),
        ("proxy_get_log_level", false, false, true),
        ("proxy_log", true, true, true),
    ] {
        assert_eq!(v010.contains(&("env", name)), in_010, "{name} in 0.1.0");
        assert_eq!(v020.contains(&("env", name)), in_020, "{name} in 0.2.0");
        assert_eq!(v021.contains(&("env", name)), in_021, "{name} in 0.2.1");
    }
    for module in ["wasi_snapshot_preview1", "wasi_unstable"] {
        assert!(v021.contains(&(module, "fd_write")), "{module}");
    }
    assert_eq!((v010.len(), v020.len(), v021.len()), (84, 82, 83));
}
