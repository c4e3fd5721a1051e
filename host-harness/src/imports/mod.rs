//! The host functions: the proxy-wasm ABI (`env.proxy_*`) and WASI preview 1 as Envoy provides it.
//! Status codes follow proxy-wasm-cpp-host and Envoy's context. See the crate README for the list
//! and for what is `Unimplemented`.
//!
//! Each host call is a function named as its import, in the file of its section of the ABI
//! specification (v0.2.1; v0.1.0's calls sit beside the ones that replaced them). [`define`] is
//! the one table that registers them all; `helpers` holds what they share (the module's memory,
//! status codes).

mod buffers;
mod emscripten;
mod foreign;
mod grpc;
mod header_maps;
mod helpers;
mod http_calls;
mod lifecycle;
mod logging;
mod metrics;
mod properties;
mod queues;
mod shared_data;
mod streams;
mod time;
mod wasi;

#[cfg(test)]
mod tests;

use crate::abi::{AbiVersion, ENV_MODULE, WASI_MODULE, WASI_UNSTABLE_MODULE};
use crate::vm::{Abort, Restriction, VmState};
use std::collections::HashSet;
use wasmtime::{Caller, ExternType, FuncType, Linker, Val, WasmRet, WasmTy};

/// The ABI versions a host call is provided for.
type Abis = &'static [AbiVersion];
/// Every version.
const ALL: Abis = &AbiVersion::ALL;
/// v0.1.0 only: calls v0.2.0 replaced.
const V0_1: Abis = &[AbiVersion::V0_1_0];
/// v0.2.0 and v0.2.1.
const V0_2: Abis = &[AbiVersion::V0_2_0, AbiVersion::V0_2_1];
/// v0.2.1 only.
const V0_2_1: Abis = &[AbiVersion::V0_2_1];

/// Define every host function for `abi`; returns the `(module, name)` pairs provided.
///
/// The one table of host calls: one line each, by area in the spec's order (a table, so
/// rustfmt leaves its lines whole).
#[rustfmt::skip]
pub(crate) fn define(
    l: &mut Linker<VmState>,
    abi: AbiVersion,
) -> wasmtime::Result<HashSet<(&'static str, &'static str)>> {
    let mut t = Table { linker: l, abi, names: HashSet::new() };
    // Context lifecycle
    t.env(ALL, "proxy_done", lifecycle::proxy_done)?;
    t.env(ALL, "proxy_set_effective_context", lifecycle::proxy_set_effective_context)?;
    // Logging
    t.env(ALL, "proxy_log", logging::proxy_log)?;
    t.env(V0_2_1, "proxy_get_log_level", logging::proxy_get_log_level)?;
    // Clocks and timers
    t.env(ALL, "proxy_get_current_time_nanoseconds", time::proxy_get_current_time_nanoseconds)?;
    t.env(ALL, "proxy_set_tick_period_milliseconds", time::proxy_set_tick_period_milliseconds)?;
    // Buffers (and v0.1.0's plugin configuration)
    t.env(V0_1, "proxy_get_configuration", buffers::proxy_get_configuration)?;
    t.env(ALL, "proxy_get_buffer_bytes", buffers::proxy_get_buffer_bytes)?;
    t.env(ALL, "proxy_get_buffer_status", buffers::proxy_get_buffer_status)?;
    t.env(ALL, "proxy_set_buffer_bytes", buffers::proxy_set_buffer_bytes)?;
    // HTTP fields (header maps)
    t.env(ALL, "proxy_get_header_map_pairs", header_maps::proxy_get_header_map_pairs)?;
    t.env(ALL, "proxy_set_header_map_pairs", header_maps::proxy_set_header_map_pairs)?;
    t.env(ALL, "proxy_get_header_map_value", header_maps::proxy_get_header_map_value)?;
    t.env(ALL, "proxy_add_header_map_value", header_maps::proxy_add_header_map_value)?;
    t.env(ALL, "proxy_replace_header_map_value", header_maps::proxy_replace_header_map_value)?;
    t.env(ALL, "proxy_remove_header_map_value", header_maps::proxy_remove_header_map_value)?;
    t.env(ALL, "proxy_get_header_map_size", header_maps::proxy_get_header_map_size)?;
    // Common stream operations and HTTP
    t.env(ALL, "proxy_send_local_response", streams::proxy_send_local_response)?;
    t.env(V0_1, "proxy_continue_request", streams::proxy_continue_request)?;
    t.env(V0_1, "proxy_continue_response", streams::proxy_continue_response)?;
    t.env(V0_1, "proxy_clear_route_cache", streams::proxy_clear_route_cache)?;
    t.env(V0_2, "proxy_continue_stream", streams::proxy_continue_stream)?;
    t.env(V0_2, "proxy_close_stream", streams::proxy_close_stream)?;
    t.env(ALL, "proxy_get_status", streams::proxy_get_status)?;
    // HTTP calls
    t.env(ALL, "proxy_http_call", http_calls::proxy_http_call)?;
    // gRPC calls
    t.env(ALL, "proxy_grpc_call", grpc::proxy_grpc_call)?;
    t.env(ALL, "proxy_grpc_stream", grpc::proxy_grpc_stream)?;
    t.env(ALL, "proxy_grpc_send", grpc::proxy_grpc_send)?;
    t.env(ALL, "proxy_grpc_cancel", grpc::proxy_grpc_cancel)?;
    t.env(ALL, "proxy_grpc_close", grpc::proxy_grpc_close)?;
    // Shared key-value store
    t.env(ALL, "proxy_get_shared_data", shared_data::proxy_get_shared_data)?;
    t.env(ALL, "proxy_set_shared_data", shared_data::proxy_set_shared_data)?;
    // Shared queues
    t.env(ALL, "proxy_register_shared_queue", queues::proxy_register_shared_queue)?;
    t.env(ALL, "proxy_resolve_shared_queue", queues::proxy_resolve_shared_queue)?;
    t.env(ALL, "proxy_enqueue_shared_queue", queues::proxy_enqueue_shared_queue)?;
    t.env(ALL, "proxy_dequeue_shared_queue", queues::proxy_dequeue_shared_queue)?;
    // Metrics
    t.env(ALL, "proxy_define_metric", metrics::proxy_define_metric)?;
    t.env(ALL, "proxy_increment_metric", metrics::proxy_increment_metric)?;
    t.env(ALL, "proxy_record_metric", metrics::proxy_record_metric)?;
    t.env(ALL, "proxy_get_metric", metrics::proxy_get_metric)?;
    // Properties
    t.env(ALL, "proxy_get_property", properties::proxy_get_property)?;
    t.env(ALL, "proxy_set_property", properties::proxy_set_property)?;
    // Foreign function interface
    t.env(ALL, "proxy_call_foreign_function", foreign::proxy_call_foreign_function)?;
    // Emscripten/pthread shims cpp-host provides
    t.env(ALL, "pthread_equal", emscripten::pthread_equal)?;
    t.env(ALL, "emscripten_notify_memory_growth", emscripten::emscripten_notify_memory_growth)?;
    // WASI preview 1, under both module names
    t.wasi("fd_write", wasi::fd_write)?;
    t.wasi("fd_read", wasi::fd_read)?;
    t.wasi("fd_close", wasi::fd_close)?;
    t.wasi("fd_seek", wasi::fd_seek)?;
    t.wasi("fd_fdstat_get", wasi::fd_fdstat_get)?;
    t.wasi("fd_fdstat_set_flags", wasi::fd_fdstat_set_flags)?;
    t.wasi("fd_prestat_get", wasi::fd_prestat_get)?;
    t.wasi("fd_prestat_dir_name", wasi::fd_prestat_dir_name)?;
    t.wasi("fd_filestat_get", wasi::fd_filestat_get)?;
    t.wasi("path_open", wasi::path_open)?;
    t.wasi("path_filestat_get", wasi::path_filestat_get)?;
    t.wasi("environ_sizes_get", wasi::environ_sizes_get)?;
    t.wasi("environ_get", wasi::environ_get)?;
    t.wasi("args_sizes_get", wasi::args_sizes_get)?;
    t.wasi("args_get", wasi::args_get)?;
    t.wasi("clock_time_get", wasi::clock_time_get)?;
    t.wasi("clock_res_get", wasi::clock_res_get)?;
    t.wasi("random_get", wasi::random_get)?;
    t.wasi("sched_yield", wasi::sched_yield)?;
    t.wasi("poll_oneoff", wasi::poll_oneoff)?;
    t.wasi("proc_exit", wasi::proc_exit)?;
    Ok(t.names)
}

/// The linker being filled by [`define`], and the `(module, name)` pairs defined so far.
struct Table<'l> {
    linker: &'l mut Linker<VmState>,
    abi: AbiVersion,
    names: HashSet<(&'static str, &'static str)>,
}

impl Table<'_> {
    /// Define `env.name` as `f` if the module's ABI version is one of `abis`.
    fn env<Args, Ret>(
        &mut self,
        abis: Abis,
        name: &'static str,
        f: impl HostCall<Args, Ret>,
    ) -> wasmtime::Result<()> {
        if abis.contains(&self.abi) {
            f.define(self.linker, ENV_MODULE, name)?;
            self.names.insert((ENV_MODULE, name));
        }
        Ok(())
    }

    /// Define a WASI function under both module names, as cpp-host registers WASI.
    fn wasi<Args, Ret>(
        &mut self,
        name: &'static str,
        f: impl HostCall<Args, Ret>,
    ) -> wasmtime::Result<()> {
        for module in [WASI_MODULE, WASI_UNSTABLE_MODULE] {
            f.define(self.linker, module, name)?;
            self.names.insert((module, name));
        }
        Ok(())
    }
}

/// A host call: a function of the [`Caller`] and the call's wasm arguments (`Args`), returning
/// `Ret` or a trap.
trait HostCall<Args, Ret>: Copy + Send + Sync + 'static {
    /// Define `module.name` as this function behind the check every host function makes first:
    /// Envoy's restriction of the moment (VM start, malloc), one branch on a field that is
    /// almost always `None`.
    fn define(
        self,
        l: &mut Linker<VmState>,
        module: &'static str,
        name: &'static str,
    ) -> wasmtime::Result<()>;
}

macro_rules! host_call {
    ($($a:ident: $t:ident),*) => {
        impl<F, $($t,)* Ret> HostCall<($($t,)*), Ret> for F
        where
            F: Fn(Caller<'_, VmState> $(, $t)*) -> wasmtime::Result<Ret>
                + Copy
                + Send
                + Sync
                + 'static,
            $($t: WasmTy,)*
            wasmtime::Result<Ret>: WasmRet,
        {
            fn define(
                self,
                l: &mut Linker<VmState>,
                module: &'static str,
                name: &'static str,
            ) -> wasmtime::Result<()> {
                l.func_wrap(
                    module,
                    name,
                    move |mut caller: Caller<'_, VmState> $(, $a: $t)*| {
                        if let Some(r) = caller.data().restricted {
                            restricted(&mut caller, name, r)?;
                        }
                        self(caller $(, $a)*)
                    },
                )?;
                Ok(())
            }
        }
    };
}

// Every arity a host call has: none (`sched_yield`) to twelve (`proxy_grpc_call`).
host_call!();
host_call!(a1: A1);
host_call!(a1: A1, a2: A2);
host_call!(a1: A1, a2: A2, a3: A3);
host_call!(a1: A1, a2: A2, a3: A3, a4: A4);
host_call!(a1: A1, a2: A2, a3: A3, a4: A4, a5: A5);
host_call!(a1: A1, a2: A2, a3: A3, a4: A4, a5: A5, a6: A6);
host_call!(a1: A1, a2: A2, a3: A3, a4: A4, a5: A5, a6: A6, a7: A7);
host_call!(a1: A1, a2: A2, a3: A3, a4: A4, a5: A5, a6: A6, a7: A7, a8: A8);
host_call!(a1: A1, a2: A2, a3: A3, a4: A4, a5: A5, a6: A6, a7: A7, a8: A8, a9: A9);
host_call!(a1: A1, a2: A2, a3: A3, a4: A4, a5: A5, a6: A6, a7: A7, a8: A8, a9: A9, a10: A10);
host_call!(
    a1: A1, a2: A2, a3: A3, a4: A4, a5: A5, a6: A6, a7: A7, a8: A8, a9: A9, a10: A10, a11: A11
);
host_call!(
    a1: A1, a2: A2, a3: A3, a4: A4, a5: A5, a6: A6, a7: A7, a8: A8, a9: A9, a10: A10, a11: A11,
    a12: A12
);

/// Trap, as Envoy does with `restricted_callback`, when `name` is not allowed under `r`.
fn restricted(
    c: &mut Caller<'_, VmState>,
    name: &'static str,
    r: Restriction,
) -> wasmtime::Result<()> {
    if r.allowed().contains(&name) {
        return Ok(());
    }
    c.data_mut().abort = Some(Abort::Restricted(name, r));
    Err(wasmtime::Error::new(Abort::Restricted(name, r)))
}

/// An import the host does not provide: calling it stops the module with an error naming it.
pub(crate) fn define_unsupported(
    l: &mut Linker<VmState>,
    module: &str,
    name: &str,
    ty: ExternType,
) -> wasmtime::Result<()> {
    let ExternType::Func(ft) = ty else {
        return Ok(());
    };
    let full = format!("{module}.{name}");
    let ft: FuncType = ft;
    l.func_new(
        module,
        name,
        ft,
        move |mut c: Caller<'_, VmState>, _args: &[Val], _ret: &mut [Val]| {
            c.data_mut().abort = Some(Abort::Unsupported(full.clone()));
            Err(wasmtime::Error::new(Abort::Unsupported(full.clone())))
        },
    )?;
    Ok(())
}
