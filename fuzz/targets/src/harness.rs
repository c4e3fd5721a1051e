//! The harness's host functions, called by a guest that does what the input says.
//!
//! One guest module, generated below as WAT and compiled once per process, imports every host
//! function the harness provides (ABI 0.2.1 and WASI) and one it does not. Its plugin
//! configuration is a program: each callback (configure, the stream's callbacks, tick, call
//! responses, foreign function, done, delete) runs the next operations of it until a yield.
//! An operation is an import index and its arguments, each drawn from small numbers, pointers
//! into a scratch area, raw 32-bit values, values the host wrote earlier (read back from
//! memory), the memory's end, or extremes. The exported `proxy_on_memory_allocate` answers as
//! the program's allocation directives say: honestly, with any pointer (null, past the end,
//! straddling it, on top of the out-parameters), by trapping, or by calling a host function
//! Envoy forbids there.
//!
//! The guest keeps its own state in a second memory the host cannot see. Before each call it
//! copies the module's memory aside; after it, it records the arguments, the result, the
//! allocations the host asked for and every byte range that changed, and hands the record to
//! a foreign function of the fuzz target. The target then checks, call by call, that each
//! result is a status code of the ABI (an errno for WASI), that the host wrote only to the
//! out-parameters and the blocks it allocated, that a success left every out-parameter in
//! bounds, and that a map, buffer, metric or log level the ABI does not define is refused. A
//! panic in the host fails the target like any other.

use proxy_wasm_harness::{FailurePolicy, Host, Module, Runtime};
use std::cell::RefCell;
use std::rc::Rc;
use std::sync::OnceLock;
use std::time::Duration;

/// How a host function's result is read.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Family {
    /// A proxy-wasm `WasmResult`.
    Status,
    /// A WASI errno.
    Errno,
    /// 0 or 1 (`pthread_equal`).
    Bool,
    /// No result.
    Void,
}

/// One host function: where it is imported from, its parameters (`i` i32, `I` i64), what it
/// returns, the out-parameters it writes on success (argument index, bytes), and the pointer
/// and size out-parameters through which it hands over an allocated block.
struct Import {
    module: &'static str,
    name: &'static str,
    params: &'static str,
    family: Family,
    outs: &'static [(usize, u64)],
    give: Option<(usize, usize)>,
}

const fn env(
    name: &'static str,
    params: &'static str,
    outs: &'static [(usize, u64)],
    give: Option<(usize, usize)>,
) -> Import {
    Import {
        module: "env",
        name,
        params,
        family: Family::Status,
        outs,
        give,
    }
}

const fn wasi(name: &'static str, params: &'static str, outs: &'static [(usize, u64)]) -> Import {
    Import {
        module: "wasi_snapshot_preview1",
        name,
        params,
        family: Family::Errno,
        outs,
        give: None,
    }
}

const ENVIRON_GET: &str = "environ_get";
const RANDOM_GET: &str = "random_get";
const FOREIGN: &str = "proxy_call_foreign_function";

/// Every host function the harness defines for ABI 0.2.1, and one it does not.
const IMPORTS: &[Import] = &[
    env("proxy_log", "iii", &[], None),
    env("proxy_get_log_level", "i", &[(0, 4)], None),
    env("proxy_get_current_time_nanoseconds", "i", &[(0, 8)], None),
    env("proxy_set_tick_period_milliseconds", "i", &[], None),
    env("proxy_get_buffer_bytes", "iiiii", &[], Some((3, 4))),
    env("proxy_get_buffer_status", "iii", &[(1, 4), (2, 4)], None),
    env("proxy_set_buffer_bytes", "iiiii", &[], None),
    env("proxy_get_header_map_pairs", "iii", &[], Some((1, 2))),
    env("proxy_set_header_map_pairs", "iii", &[], None),
    env("proxy_get_header_map_value", "iiiii", &[], Some((3, 4))),
    env("proxy_add_header_map_value", "iiiii", &[], None),
    env("proxy_replace_header_map_value", "iiiii", &[], None),
    env("proxy_remove_header_map_value", "iii", &[], None),
    env("proxy_get_header_map_size", "ii", &[(1, 4)], None),
    env("proxy_send_local_response", "iiiiiiii", &[], None),
    env("proxy_continue_stream", "i", &[], None),
    env("proxy_close_stream", "i", &[], None),
    env("proxy_done", "", &[], None),
    env("proxy_set_effective_context", "i", &[], None),
    env("proxy_get_property", "iiii", &[], Some((2, 3))),
    env("proxy_set_property", "iiii", &[], None),
    env("proxy_get_shared_data", "iiiii", &[(4, 4)], Some((2, 3))),
    env("proxy_set_shared_data", "iiiii", &[], None),
    env("proxy_register_shared_queue", "iii", &[(2, 4)], None),
    env("proxy_resolve_shared_queue", "iiiii", &[(4, 4)], None),
    env("proxy_enqueue_shared_queue", "iii", &[], None),
    env("proxy_dequeue_shared_queue", "iii", &[], Some((1, 2))),
    env("proxy_define_metric", "iiii", &[(3, 4)], None),
    env("proxy_increment_metric", "iI", &[], None),
    env("proxy_record_metric", "iI", &[], None),
    env("proxy_get_metric", "ii", &[(1, 8)], None),
    env("proxy_http_call", "iiiiiiiiii", &[(9, 4)], None),
    env("proxy_grpc_call", "iiiiiiiiiiii", &[(11, 4)], None),
    env("proxy_grpc_stream", "iiiiiiiii", &[(8, 4)], None),
    env("proxy_grpc_send", "iiii", &[], None),
    env("proxy_grpc_cancel", "i", &[], None),
    env("proxy_grpc_close", "i", &[], None),
    env("proxy_get_status", "iii", &[(0, 4)], Some((1, 2))),
    env(FOREIGN, "iiiiii", &[], Some((4, 5))),
    Import {
        module: "env",
        name: "pthread_equal",
        params: "ii",
        family: Family::Bool,
        outs: &[],
        give: None,
    },
    Import {
        module: "env",
        name: "emscripten_notify_memory_growth",
        params: "i",
        family: Family::Void,
        outs: &[],
        give: None,
    },
    wasi("fd_write", "iiii", &[(3, 4)]),
    wasi("fd_read", "iiii", &[]),
    wasi("fd_close", "i", &[]),
    wasi("fd_seek", "iIii", &[]),
    wasi("fd_fdstat_get", "ii", &[(1, 24)]),
    wasi("fd_fdstat_set_flags", "ii", &[]),
    wasi("fd_prestat_get", "ii", &[]),
    wasi("fd_prestat_dir_name", "iii", &[]),
    wasi("fd_filestat_get", "ii", &[]),
    wasi("path_open", "iiiiiIIii", &[]),
    wasi("path_filestat_get", "iiiii", &[]),
    wasi("environ_sizes_get", "ii", &[(0, 4), (1, 4)]),
    wasi(ENVIRON_GET, "ii", &[]),
    wasi("args_sizes_get", "ii", &[(0, 4), (1, 4)]),
    wasi("args_get", "ii", &[]),
    wasi("clock_time_get", "iIi", &[(2, 8)]),
    wasi("clock_res_get", "ii", &[(1, 8)]),
    wasi(RANDOM_GET, "ii", &[]),
    wasi("sched_yield", "", &[]),
    wasi("poll_oneoff", "iiii", &[(3, 4)]),
    Import {
        module: "wasi_snapshot_preview1",
        name: "proc_exit",
        params: "i",
        family: Family::Void,
        outs: &[],
        give: None,
    },
    // Not a host function: calling it fails the VM with an error naming it.
    env("proxy_not_provided", "", &[], None),
];

/// Size of the module's memory (one page, not growable).
const MEMORY: u64 = 0x1_0000;
/// Pointers of the "scratch" kind fall below this; the seeded strings are here.
const SCRATCH: u32 = 0x4000;
/// Honest allocations cycle through `[ALLOC, FLUSH)`.
const ALLOC: u32 = 0x8000;
/// Where a record is placed for the report call (saved and restored around it).
const FLUSH: u32 = 0xf000;
/// Private memory: the copy of the module's memory at 0, the program here, the record after.
const PROGRAM: u32 = 0x1_0000;
const RECORD: u32 = 0x2_0000;
const SAVE: u32 = 0x2_1000;
const NAME_AT: u32 = 0x2_2000;
/// The foreign function the guest reports through; a name the program cannot easily make.
const REPORT: &str = "\u{1}fuzz-report\u{2}";
/// Operations one input may run in all.
const MAX_OPS: u32 = 96;
const MAX_ARGS: usize = 12;
const MAX_ALLOCS: usize = 8;
const MAX_RUNS: usize = 16;
/// Record layout: seq, import, args (i64 each), result (i64), allocations (count, then n and
/// pointer), changed ranges (count, then start and end).
const R_ARGS: u32 = 8;
const R_RESULT: u32 = R_ARGS + 8 * MAX_ARGS as u32;
const R_ALLOCS: u32 = R_RESULT + 8;
const R_RUNS: u32 = R_ALLOCS + 4 + 8 * MAX_ALLOCS as u32;
const RECORD_SIZE: u32 = R_RUNS + 4 + 8 * MAX_RUNS as u32;

/// The environment the host gives WASI, whose `environ_get` writes a known number of bytes.
const ENV: &[(&str, &str)] = &[("HOME", "/"), ("A", "b")];

fn wat_string(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("\\{b:02x}")).collect()
}

/// The guest module's text.
fn guest_wat() -> String {
    let mut w = String::from("(module\n");
    for (i, imp) in IMPORTS.iter().enumerate() {
        let params: String = imp
            .params
            .chars()
            .map(|c| if c == 'I' { " i64" } else { " i32" })
            .collect();
        let params = if params.is_empty() {
            params
        } else {
            format!("(param{params})")
        };
        let result = if imp.family == Family::Void {
            ""
        } else {
            "(result i32)"
        };
        w += &format!(
            "  (import \"{}\" \"{}\" (func $imp{i} {params} {result}))\n",
            imp.module, imp.name
        );
    }
    let foreign = IMPORTS.iter().position(|i| i.name == FOREIGN).unwrap_or(0);
    let get_buffer = 4;
    let log = 0;
    // Strings a program is likely to want, in the scratch area.
    let pairs = {
        let mut p = Vec::new();
        let h: &[(&str, &str)] = &[(":method", "GET"), (":path", "/"), (":authority", "a")];
        p.extend_from_slice(&(h.len() as u32).to_le_bytes());
        for (k, v) in h {
            p.extend_from_slice(&(k.len() as u32).to_le_bytes());
            p.extend_from_slice(&(v.len() as u32).to_le_bytes());
        }
        for (k, v) in h {
            p.extend_from_slice(k.as_bytes());
            p.push(0);
            p.extend_from_slice(v.as_bytes());
            p.push(0);
        }
        p
    };
    let seeds: &[(u32, &[u8])] = &[
        (0x100, b"echo"),
        (0x108, b"upstream"),
        (0x118, b":path"),
        (0x120, b"x-a"),
        (0x128, b"value"),
        (0x130, b"request\0path"),
        (0x140, b"plugin_root_id"),
        (0x150, b"svc.S"),
        (0x158, b"M"),
        (0x160, b"queue"),
        (0x170, b"\x00\x01\x00\x00\x04\x00\x00\x00"),
        (0x200, &pairs),
    ];
    w += "  (memory $m0 (export \"memory\") 1 1)\n  (memory $m1 3 3)\n";
    for (at, bytes) in seeds {
        w += &format!(
            "  (data (memory $m0) (i32.const {at}) \"{}\")\n",
            wat_string(bytes)
        );
    }
    w += &format!(
        "  (data (memory $m1) (i32.const {NAME_AT}) \"{}\")\n",
        wat_string(REPORT.as_bytes())
    );
    let n = IMPORTS.len();
    w += &format!(
        r#"  (global $pc (mut i32) (i32.const 0))
  (global $plen (mut i32) (i32.const 0))
  (global $loaded (mut i32) (i32.const 0))
  (global $ops (mut i32) (i32.const 0))
  (global $seq (mut i32) (i32.const 0))
  (global $in_call (mut i32) (i32.const 0))
  (global $dirs (mut i32) (i32.const 0))
  (global $dir (mut i32) (i32.const 0))
  (global $bump (mut i32) (i32.const {ALLOC}))
  (type $thunk (func (result i64)))
  (table $tab {n} funcref)

  (func $byte (result i32)
    (if (i32.ge_u (global.get $pc) (global.get $plen)) (then (return (i32.const 0))))
    (global.set $pc (i32.add (global.get $pc) (i32.const 1)))
    (i32.load8_u $m1 (i32.add (i32.const {PROGRAM}) (i32.sub (global.get $pc) (i32.const 1)))))
  (func $u16 (result i32)
    (i32.or (call $byte) (i32.shl (call $byte) (i32.const 8))))
  (func $u32 (result i32)
    (i32.or (call $u16) (i32.shl (call $u16) (i32.const 16))))
  (func $special (result i32)
    (local $b i32)
    (local.set $b (i32.and (call $byte) (i32.const 3)))
    (if (i32.eqz (local.get $b)) (then (return (i32.const -1))))
    (if (i32.eq (local.get $b) (i32.const 1)) (then (return (i32.const 0x80000000))))
    (if (i32.eq (local.get $b) (i32.const 2)) (then (return (i32.const 0x7fffffff))))
    (i32.const {MEMORY}))
  ;; An argument of kind $t (the low three bits of its first byte).
  (func $dec (param $t i32) (result i32)
    (if (i32.eqz (local.get $t)) (then (return (call $byte))))
    (if (i32.eq (local.get $t) (i32.const 1)) (then (return (i32.rem_u (call $u16) (i32.const {SCRATCH})))))
    (if (i32.eq (local.get $t) (i32.const 2)) (then (return (call $u32))))
    (if (i32.eq (local.get $t) (i32.const 3))
      (then (return (i32.load $m0 (i32.rem_u (call $u16) (i32.const {deref_max}))))))
    (if (i32.eq (local.get $t) (i32.const 4)) (then (return (i32.sub (i32.const {MEMORY}) (call $byte)))))
    (if (i32.eq (local.get $t) (i32.const 5)) (then (return (call $special))))
    (if (i32.eq (local.get $t) (i32.const 6)) (then (return (i32.sub (i32.const 0) (call $byte)))))
    (call $u16))
  (func $arg_at (param $slot i32) (result i32)
    (i32.add (i32.const {args_at}) (i32.shl (local.get $slot) (i32.const 3))))
  (func $a32 (param $slot i32) (result i32)
    (local $v i32)
    (local.set $v (call $dec (i32.and (call $byte) (i32.const 7))))
    (i64.store $m1 (call $arg_at (local.get $slot)) (i64.extend_i32_s (local.get $v)))
    (local.get $v))
  (func $a64 (param $slot i32) (result i64)
    (local $t i32) (local $v i64)
    (local.set $t (i32.and (call $byte) (i32.const 7)))
    (if (i32.eq (local.get $t) (i32.const 2))
      (then (local.set $v (i64.or (i64.extend_i32_u (call $u32))
                                  (i64.shl (i64.extend_i32_u (call $u32)) (i64.const 32)))))
      (else (local.set $v (i64.extend_i32_s (call $dec (local.get $t))))))
    (i64.store $m1 (call $arg_at (local.get $slot)) (local.get $v))
    (local.get $v))

  (func $honest (param $n i32) (result i32)
    (local $p i32)
    (if (i32.gt_u (local.get $n) (i32.const {honest_max})) (then (return (i32.const {ALLOC}))))
    (if (i32.gt_u (i32.add (global.get $bump) (local.get $n)) (i32.const {FLUSH}))
      (then (global.set $bump (i32.const {ALLOC}))))
    (local.set $p (global.get $bump))
    (global.set $bump (i32.and (i32.add (i32.add (local.get $p) (local.get $n)) (i32.const 7)) (i32.const -8)))
    (local.get $p))
  (func (export "proxy_on_memory_allocate") (param $n i32) (result i32)
    (local $tag i32) (local $val i32) (local $p i32) (local $at i32) (local $count i32)
    (if (i32.and (global.get $loaded) (i32.ne (global.get $dirs) (i32.const 0)))
      (then
        (local.set $at (i32.add (i32.const {dir_base}) (i32.mul (global.get $dir) (i32.const 5))))
        (local.set $tag (i32.and (i32.load8_u $m1 (local.get $at)) (i32.const 7)))
        (local.set $val (i32.load $m1 offset=1 (local.get $at)))
        (global.set $dir (i32.rem_u (i32.add (global.get $dir) (i32.const 1)) (global.get $dirs)))))
    (block $chosen
      (if (i32.eq (local.get $tag) (i32.const 1)) (then (local.set $p (local.get $val)) (br $chosen)))
      (if (i32.eq (local.get $tag) (i32.const 2)) (then (local.set $p (i32.const 0)) (br $chosen)))
      (if (i32.eq (local.get $tag) (i32.const 3))
        (then (local.set $p (i32.sub (i32.const {MEMORY}) (i32.and (local.get $val) (i32.const 255)))) (br $chosen)))
      (if (i32.eq (local.get $tag) (i32.const 4)) (then unreachable))
      (if (i32.eq (local.get $tag) (i32.const 5))
        ;; Envoy forbids this call while allocating: the harness traps.
        (then (drop (call $imp{get_buffer} (i32.const 7) (i32.const 0) (i32.const 1) (i32.const 0xff00) (i32.const 0xff04)))))
      (if (i32.eq (local.get $tag) (i32.const 6))
        (then (drop (call $imp{log} (i32.const 2) (i32.const 0x100) (i32.const 4)))))
      (if (i32.eq (local.get $tag) (i32.const 7))
        (then (local.set $p (i32.rem_u (local.get $val) (i32.const {SCRATCH}))) (br $chosen)))
      (local.set $p (call $honest (local.get $n))))
    (if (global.get $in_call)
      (then
        (local.set $count (i32.load $m1 (i32.const {allocs_at})))
        (if (i32.lt_u (local.get $count) (i32.const {MAX_ALLOCS}))
          (then
            (local.set $at (i32.add (i32.const {allocs_at}) (i32.add (i32.const 4) (i32.shl (local.get $count) (i32.const 3)))))
            (i32.store $m1 (local.get $at) (local.get $n))
            (i32.store $m1 offset=4 (local.get $at) (local.get $p))))
        (i32.store $m1 (i32.const {allocs_at}) (i32.add (local.get $count) (i32.const 1)))))
    (local.get $p))

  ;; Every byte range of the module's memory that differs from the copy taken before the call.
  (func $diff
    (local $i i32) (local $j i32) (local $end i32) (local $runs i32) (local $last i32) (local $at i32)
    (local.set $last (i32.const -1))
    (loop $words
      (if (i64.ne (i64.load $m0 (local.get $i)) (i64.load $m1 (local.get $i)))
        (then
          (local.set $j (local.get $i))
          (local.set $end (i32.add (local.get $i) (i32.const 8)))
          (loop $bytes
            (if (i32.ne (i32.load8_u $m0 (local.get $j)) (i32.load8_u $m1 (local.get $j)))
              (then
                (if (i32.eq (local.get $j) (local.get $last))
                  (then
                    (if (i32.le_u (local.get $runs) (i32.const {MAX_RUNS}))
                      (then
                        (local.set $at (i32.add (i32.const {runs_at}) (i32.shl (local.get $runs) (i32.const 3))))
                        (i32.store $m1 (local.get $at) (i32.add (local.get $j) (i32.const 1))))))
                  (else
                    (if (i32.lt_u (local.get $runs) (i32.const {MAX_RUNS}))
                      (then
                        (local.set $at (i32.add (i32.const {runs_at}) (i32.shl (local.get $runs) (i32.const 3))))
                        (i32.store $m1 offset=4 (local.get $at) (local.get $j))
                        (i32.store $m1 offset=8 (local.get $at) (i32.add (local.get $j) (i32.const 1)))))
                    (local.set $runs (i32.add (local.get $runs) (i32.const 1)))))
                (local.set $last (i32.add (local.get $j) (i32.const 1)))))
            (local.set $j (i32.add (local.get $j) (i32.const 1)))
            (br_if $bytes (i32.lt_u (local.get $j) (local.get $end))))))
      (local.set $i (i32.add (local.get $i) (i32.const 8)))
      (br_if $words (i32.lt_u (local.get $i) (i32.const {MEMORY}))))
    (i32.store $m1 (i32.const {runs_count}) (local.get $runs)))

  ;; Hand the record to the fuzz target, leaving the module's memory as it was.
  (func $flush
    (memory.copy $m1 $m0 (i32.const {SAVE}) (i32.const {FLUSH}) (i32.const {flush_len}))
    (memory.copy $m0 $m1 (i32.const {FLUSH}) (i32.const {RECORD}) (i32.const {RECORD_SIZE}))
    (memory.copy $m0 $m1 (i32.const {name_in_m0}) (i32.const {NAME_AT}) (i32.const {name_len}))
    (drop (call $imp{foreign} (i32.const {name_in_m0}) (i32.const {name_len}) (i32.const {FLUSH}) (i32.const {RECORD_SIZE}) (i32.const 0) (i32.const 0)))
    (memory.copy $m0 $m1 (i32.const {FLUSH}) (i32.const {SAVE}) (i32.const {flush_len})))

  (func $op (param $idx i32)
    (local $r i64)
    (memory.fill $m1 (i32.const {RECORD}) (i32.const 0) (i32.const {RECORD_SIZE}))
    (i32.store $m1 (i32.const {RECORD}) (global.get $seq))
    (i32.store $m1 (i32.const {idx_at}) (local.get $idx))
    (global.set $seq (i32.add (global.get $seq) (i32.const 1)))
    (memory.copy $m1 $m0 (i32.const 0) (i32.const 0) (i32.const {MEMORY}))
    (global.set $in_call (i32.const 1))
    (local.set $r (call_indirect $tab (type $thunk) (local.get $idx)))
    (global.set $in_call (i32.const 0))
    (i64.store $m1 (i32.const {result_at}) (local.get $r))
    (call $diff)
    (call $flush))

  ;; Run operations until a yield (0xff, then the callback's return value) or the end.
  (func $run (param $default i32) (result i32)
    (local $b i32)
    (if (i32.eqz (global.get $loaded)) (then (return (local.get $default))))
    (loop $next
      (if (i32.ge_u (global.get $pc) (global.get $plen)) (then (return (local.get $default))))
      (if (i32.ge_u (global.get $ops) (i32.const {MAX_OPS})) (then (return (local.get $default))))
      (local.set $b (call $byte))
      (if (i32.eq (local.get $b) (i32.const 255)) (then (return (call $byte))))
      (global.set $ops (i32.add (global.get $ops) (i32.const 1)))
      (call $op (i32.rem_u (local.get $b) (i32.const {n})))
      (br $next))
    (local.get $default))

  ;; The program is the plugin configuration: a directive count, that many 5-byte allocation
  ;; directives, then operations.
  (func $load (param $size i32)
    (local $p i32) (local $len i32)
    (if (i32.ne (call $imp{get_buffer} (i32.const 7) (i32.const 0) (local.get $size) (i32.const 0xff00) (i32.const 0xff04)) (i32.const 0))
      (then (return)))
    (local.set $p (i32.load $m0 (i32.const 0xff00)))
    (local.set $len (i32.load $m0 (i32.const 0xff04)))
    (if (i32.gt_u (local.get $len) (i32.const {program_max})) (then (local.set $len (i32.const {program_max}))))
    (if (i32.gt_u (i32.add (local.get $p) (local.get $len)) (i32.const {MEMORY})) (then (return)))
    (memory.copy $m1 $m0 (i32.const {PROGRAM}) (local.get $p) (local.get $len))
    (global.set $plen (local.get $len))
    (global.set $dirs (i32.rem_u (call $byte) (i32.const 32)))
    (if (i32.gt_u (i32.add (i32.const 1) (i32.mul (global.get $dirs) (i32.const 5))) (local.get $len))
      (then (global.set $dirs (i32.const 0))))
    (global.set $pc (i32.add (i32.const 1) (i32.mul (global.get $dirs) (i32.const 5))))
    (global.set $loaded (i32.const 1)))

  (func (export "proxy_abi_version_0_2_1"))
  (func (export "proxy_on_context_create") (param i32 i32) (drop (call $run (i32.const 0))))
  (func (export "proxy_on_vm_start") (param i32 i32) (result i32) (i32.const 1))
  (func (export "proxy_on_configure") (param $ctx i32) (param $size i32) (result i32)
    (if (i32.eqz (global.get $loaded)) (then (call $load (local.get $size))))
    (call $run (i32.const 1)))
  (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32) (call $run (i32.const 0)))
  (func (export "proxy_on_request_body") (param i32 i32 i32) (result i32) (call $run (i32.const 0)))
  (func (export "proxy_on_request_trailers") (param i32 i32) (result i32) (call $run (i32.const 0)))
  (func (export "proxy_on_response_headers") (param i32 i32 i32) (result i32) (call $run (i32.const 0)))
  (func (export "proxy_on_response_body") (param i32 i32 i32) (result i32) (call $run (i32.const 0)))
  (func (export "proxy_on_response_trailers") (param i32 i32) (result i32) (call $run (i32.const 0)))
  (func (export "proxy_on_log") (param i32) (drop (call $run (i32.const 0))))
  (func (export "proxy_on_done") (param i32) (result i32) (call $run (i32.const 1)))
  (func (export "proxy_on_delete") (param i32) (drop (call $run (i32.const 0))))
  (func (export "proxy_on_tick") (param i32) (drop (call $run (i32.const 0))))
  (func (export "proxy_on_queue_ready") (param i32 i32) (drop (call $run (i32.const 0))))
  (func (export "proxy_on_foreign_function") (param i32 i32 i32) (drop (call $run (i32.const 0))))
  (func (export "proxy_on_http_call_response") (param i32 i32 i32 i32 i32) (drop (call $run (i32.const 0))))
  (func (export "proxy_on_grpc_receive_initial_metadata") (param i32 i32 i32) (drop (call $run (i32.const 0))))
  (func (export "proxy_on_grpc_receive") (param i32 i32 i32) (drop (call $run (i32.const 0))))
  (func (export "proxy_on_grpc_receive_trailing_metadata") (param i32 i32 i32) (drop (call $run (i32.const 0))))
  (func (export "proxy_on_grpc_close") (param i32 i32 i32) (drop (call $run (i32.const 0))))
"#,
        deref_max = MEMORY - 3,
        args_at = RECORD + R_ARGS,
        honest_max = FLUSH - ALLOC,
        dir_base = PROGRAM + 1,
        allocs_at = RECORD + R_ALLOCS,
        runs_at = RECORD + R_RUNS,
        runs_count = RECORD + R_RUNS,
        flush_len = RECORD_SIZE + 64,
        name_in_m0 = FLUSH + RECORD_SIZE,
        name_len = REPORT.len(),
        idx_at = RECORD + 4,
        result_at = RECORD + R_RESULT,
        program_max = 0x1_0000,
    );
    // One thunk per import: decode its arguments from the program, call it, widen the result.
    for (i, imp) in IMPORTS.iter().enumerate() {
        let args: String = imp
            .params
            .chars()
            .enumerate()
            .map(|(slot, c)| {
                if c == 'I' {
                    format!(" (call $a64 (i32.const {slot}))")
                } else {
                    format!(" (call $a32 (i32.const {slot}))")
                }
            })
            .collect();
        let body = if imp.family == Family::Void {
            format!("(call $imp{i}{args}) (i64.const 0)")
        } else {
            format!("(i64.extend_i32_s (call $imp{i}{args}))")
        };
        w += &format!("  (func $t{i} (type $thunk) {body})\n");
    }
    let thunks: String = (0..n).map(|i| format!(" $t{i}")).collect();
    w += &format!("  (elem (table $tab) (i32.const 0) func{thunks})\n)\n");
    w
}

/// The guest, compiled once per process.
fn guest() -> &'static Module {
    static GUEST: OnceLock<Module> = OnceLock::new();
    GUEST.get_or_init(|| {
        let wat = guest_wat();
        Module::from_bytes(&Runtime::shared(), wat.as_bytes())
            .unwrap_or_else(|e| panic!("the guest does not compile: {e}\n{wat}"))
    })
}

/// One host call as the guest saw it.
#[derive(Debug)]
struct Record {
    seq: u32,
    import: usize,
    args: [i64; MAX_ARGS],
    result: i64,
    allocs: Vec<(u32, u32)>,
    allocs_overflow: bool,
    runs: Vec<(u32, u32)>,
    runs_overflow: bool,
}

fn u32_at(b: &[u8], at: u32) -> u32 {
    let at = at as usize;
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn i64_at(b: &[u8], at: u32) -> i64 {
    let at = at as usize;
    let mut w = [0u8; 8];
    w.copy_from_slice(&b[at..at + 8]);
    i64::from_le_bytes(w)
}

fn record(b: &[u8]) -> Record {
    assert_eq!(b.len(), RECORD_SIZE as usize, "a report of the wrong size");
    let count = |at: u32, max: usize| (u32_at(b, at) as usize, max);
    let (allocs, max_allocs) = count(R_ALLOCS, MAX_ALLOCS);
    let (runs, max_runs) = count(R_RUNS, MAX_RUNS);
    Record {
        seq: u32_at(b, 0),
        import: u32_at(b, 4) as usize,
        args: std::array::from_fn(|i| i64_at(b, R_ARGS + 8 * i as u32)),
        result: i64_at(b, R_RESULT),
        allocs: (0..allocs.min(max_allocs) as u32)
            .map(|i| {
                (
                    u32_at(b, R_ALLOCS + 4 + 8 * i),
                    u32_at(b, R_ALLOCS + 8 + 8 * i),
                )
            })
            .collect(),
        allocs_overflow: allocs > max_allocs,
        runs: (0..runs.min(max_runs) as u32)
            .map(|i| (u32_at(b, R_RUNS + 4 + 8 * i), u32_at(b, R_RUNS + 8 + 8 * i)))
            .collect(),
        runs_overflow: runs > max_runs,
    }
}

/// `[start, start + len)` of the module's memory, as 64-bit numbers (no wrapping).
fn range(ptr: i64, len: u64) -> (u64, u64) {
    let start = u64::from(ptr as u32);
    (start, start + len)
}

fn check(r: &Record) {
    let imp = IMPORTS
        .get(r.import)
        .unwrap_or_else(|| panic!("no import {}", r.import));
    let what = format!(
        "{}({:?}) = {}",
        imp.name,
        &r.args[..imp.params.len()],
        r.result
    );
    let result = r.result as i32;
    match imp.family {
        Family::Status => assert!(
            [0, 1, 2, 3, 4, 6, 7, 8, 10, 11, 12].contains(&result),
            "{what}: not a proxy-wasm status"
        ),
        Family::Errno => assert!((0..=76).contains(&result), "{what}: not a WASI errno"),
        Family::Bool => assert!(result == 0 || result == 1, "{what}: not a boolean"),
        Family::Void => assert_eq!(result, 0, "{what}"),
    }
    // What the host may write: the out-parameters, the blocks it allocated.
    let arg = |i: usize| r.args[i];
    let mut may: Vec<(u64, u64)> = imp.outs.iter().map(|&(i, w)| range(arg(i), w)).collect();
    let give = imp
        .give
        .filter(|&(pp, _)| !(imp.name == FOREIGN && arg(pp) == 0));
    if let Some((pp, sp)) = give {
        may.push(range(arg(pp), 4));
        may.push(range(arg(sp), 4));
    }
    match imp.name {
        ENVIRON_GET => {
            may.push(range(arg(0), 4 * ENV.len() as u64));
            let bytes: usize = ENV.iter().map(|(k, v)| k.len() + v.len() + 2).sum();
            may.push(range(arg(1), bytes as u64));
        }
        RANDOM_GET => may.push(range(arg(0), u64::from(arg(1) as u32))),
        _ => {}
    }
    for &(n, p) in &r.allocs {
        may.push(range(i64::from(p), u64::from(n)));
    }
    if !r.allocs_overflow {
        for &(start, end) in &r.runs {
            for byte in u64::from(start)..u64::from(end) {
                assert!(
                    may.iter().any(|&(s, e)| s <= byte && byte < e),
                    "{what}: wrote byte {byte:#x}, outside {may:x?} (allocations {:x?}, changed {:x?}{})",
                    r.allocs,
                    r.runs,
                    if r.runs_overflow { " and more" } else { "" }
                );
            }
        }
    }
    // A success wrote every out-parameter, so each was inside the memory.
    if result == 0 && imp.family != Family::Void && imp.family != Family::Bool {
        let mut written: Vec<(u64, u64)> =
            imp.outs.iter().map(|&(i, w)| range(arg(i), w)).collect();
        if let Some((pp, sp)) = give {
            written.push(range(arg(pp), 4));
            written.push(range(arg(sp), 4));
        }
        if imp.name == RANDOM_GET {
            written.push(range(arg(0), u64::from(arg(1) as u32)));
        }
        for (s, e) in written {
            assert!(
                e <= MEMORY,
                "{what}: success, but [{s:#x}, {e:#x}) is outside the memory"
            );
        }
    }
    // Kinds the ABI does not define are refused.
    let bad = |i: usize, max: i64| !(0..=max).contains(&arg(i));
    let refused = match imp.name {
        "proxy_log" => bad(0, 5),
        "proxy_get_buffer_bytes" | "proxy_get_buffer_status" | "proxy_set_buffer_bytes" => {
            bad(0, 8)
        }
        "proxy_get_header_map_pairs"
        | "proxy_set_header_map_pairs"
        | "proxy_get_header_map_value"
        | "proxy_add_header_map_value"
        | "proxy_replace_header_map_value"
        | "proxy_remove_header_map_value"
        | "proxy_get_header_map_size" => bad(0, 7),
        "proxy_define_metric" => bad(0, 2),
        _ => false,
    };
    if refused {
        assert_ne!(result, 0, "{what}: an undefined kind accepted");
    }
}

/// `harness_host_calls`: a flags byte (failure policy, streams), then the guest's program.
pub fn harness_host_calls(data: &[u8]) {
    for r in run(data) {
        check(&r);
    }
}

/// Drive a plugin of the guest through a stream, call responses, ticks, a foreign function
/// call and shutdown; return the guest's records, in order.
fn run(data: &[u8]) -> Vec<Record> {
    let module = guest();
    let (flags, program) = match data.split_first() {
        Some((f, p)) => (*f, p),
        None => (0, &[][..]),
    };
    let host = Host::new();
    host.set_env(ENV);
    host.set_clusters(&["upstream"]);
    host.register_foreign_function("echo", |args| Ok(args.to_vec()));
    let reports: Rc<RefCell<Vec<Vec<u8>>>> = Rc::default();
    let sink = reports.clone();
    host.register_foreign_function(REPORT, move |rec| {
        sink.borrow_mut().push(rec.to_vec());
        Ok(Vec::new())
    });
    let policy = match flags & 3 {
        0 => FailurePolicy::FailClosed,
        1 => FailurePolicy::FailOpen,
        _ => FailurePolicy::Reload,
    };
    let started = host
        .plugin(module)
        .root_id("r")
        .vm_id("vm")
        .configuration(program)
        .failure_policy(policy)
        .start();
    if let Ok(plugin) = started {
        for _ in 0..1 + (flags >> 2 & 1) {
            let Ok(mut s) = plugin.http_stream() else {
                break;
            };
            let _ = s.send_request_headers(
                &[
                    (":method", "GET"),
                    (":path", "/p"),
                    (":authority", "h"),
                    ("x-a", "1"),
                ],
                false,
            );
            let _ = s.send_request_body(b"body", false);
            let _ = s.send_request_trailers(&[("t", "1")]);
            let _ = s.send_response_headers(&[(":status", "200"), ("x-b", "2")], false);
            let _ = s.send_response_body(b"resp", true);
            let _ = s.complete();
        }
        for call in host.pending_http_calls() {
            let _ = host.respond_http_call(call.token, &[(":status", "200")], b"ok", &[]);
        }
        for call in host.pending_grpc_calls() {
            let _ = host.respond_grpc_call(call.token, Ok(b"m"));
        }
        let _ = host.advance(Duration::from_millis(50));
        let _ = plugin.call_foreign_function(1, b"args");
        let _ = plugin.shutdown();
    }
    let reports = reports.borrow();
    reports
        .iter()
        .enumerate()
        .map(|(i, b)| {
            let r = record(b);
            assert_eq!(r.seq as usize, i, "reports out of order");
            r
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_guest_compiles_and_reports_each_call() {
        // No allocation directives; proxy_get_current_time_nanoseconds into scratch, a yield
        // (configure returns 1), and proxy_get_header_map_pairs of the request headers.
        let program = [0u8, 2, 1, 0x10, 0, 0xff, 1, 7, 0, 0, 1, 0x20, 0, 1, 0x24, 0];
        let mut input = vec![0u8];
        input.extend_from_slice(&program);
        let records = run(&input);
        assert_eq!(records.len(), 2, "{records:?}");
        assert_eq!(
            IMPORTS[records[0].import].name,
            "proxy_get_current_time_nanoseconds"
        );
        assert_eq!(records[0].result, 0);
        assert_eq!(records[0].runs.len(), 1, "{records:?}");
        assert_eq!(
            IMPORTS[records[1].import].name,
            "proxy_get_header_map_pairs"
        );
        harness_host_calls(&input);
    }

    #[test]
    fn the_seed_program_gets_an_answer_from_most_host_functions() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../corpus/harness_host_calls/seed-every-group"
        );
        let records = run(&std::fs::read(path).unwrap());
        let ok: std::collections::BTreeSet<&str> = records
            .iter()
            .filter(|r| r.result == 0)
            .map(|r| IMPORTS[r.import].name)
            .collect();
        assert!(ok.len() >= 35, "{ok:?}");
        assert!(
            records
                .iter()
                .any(|r| !r.allocs.is_empty() && !r.runs.is_empty())
        );
    }
}
