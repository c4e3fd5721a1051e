//! The host functions: the proxy-wasm ABI (`env.proxy_*`) and WASI preview 1 as Envoy provides it.
//! Status codes follow proxy-wasm-cpp-host and Envoy's context. See the crate README for the list
//! and for what is `Unimplemented`.

use crate::abi::{
    AbiVersion, BufferType, ENV_MODULE, LogLevel, MapType, MetricType, Status, WASI_MODULE,
    WASI_UNSTABLE_MODULE,
};
use crate::headers::{HeaderMap, deserialize_pairs};
use crate::host::{GrpcCall, HttpCall};
use crate::vm::{Abort, LocalResponse, Restriction, StreamCtx, VmState};
use std::borrow::Cow;
use std::collections::HashSet;
use std::time::Duration;
use wasmtime::{Caller, ExternType, FuncType, Linker, Val};

type C<'a> = Caller<'a, VmState>;
type R = wasmtime::Result<i32>;

const OK: i32 = Status::Ok as i32;

fn st(s: Status) -> R {
    Ok(s as i32)
}

/// Read `len` bytes at `ptr` from the module's memory.
fn read(c: &mut C<'_>, ptr: i32, len: i32) -> Result<Vec<u8>, Status> {
    let mem = c.data().memory.ok_or(Status::InvalidMemoryAccess)?;
    let data = mem.data(&*c);
    let (p, l) = (ptr as u32 as usize, len as u32 as usize);
    data.get(p..p.checked_add(l).ok_or(Status::InvalidMemoryAccess)?)
        .map(<[u8]>::to_vec)
        .ok_or(Status::InvalidMemoryAccess)
}

/// `len` bytes at `ptr` within `data` (the module's memory).
fn slice(data: &[u8], ptr: i32, len: i32) -> Result<&[u8], Status> {
    let (p, l) = (ptr as u32 as usize, len as u32 as usize);
    data.get(p..p.checked_add(l).ok_or(Status::InvalidMemoryAccess)?)
        .ok_or(Status::InvalidMemoryAccess)
}

/// The module's memory and the store's data at once, so host calls use arguments in place
/// instead of copying them out first.
fn memory_and_data<'a>(c: &'a mut C<'_>) -> Result<(&'a [u8], &'a mut VmState), Status> {
    let mem = c.data().memory.ok_or(Status::InvalidMemoryAccess)?;
    let (data, d) = mem.data_and_store_mut(c);
    Ok((data, d))
}

fn read_str(c: &mut C<'_>, ptr: i32, len: i32) -> Result<String, Status> {
    read(c, ptr, len).map(|b| {
        String::from_utf8(b).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
    })
}

/// `bytes` as text, invalid UTF-8 replaced (as `String::from_utf8_lossy`), borrowed when valid.
/// Validation first: it takes a fast path for ASCII, which header names almost always are,
/// while the lossy decoder walks every byte.
fn text(bytes: &[u8]) -> Cow<'_, str> {
    match std::str::from_utf8(bytes) {
        Ok(s) => Cow::Borrowed(s),
        Err(_) => String::from_utf8_lossy(bytes),
    }
}

fn write(c: &mut C<'_>, ptr: i32, bytes: &[u8]) -> Result<(), Status> {
    let mem = c.data().memory.ok_or(Status::InvalidMemoryAccess)?;
    let p = ptr as u32 as usize;
    mem.data_mut(&mut *c)
        .get_mut(p..p + bytes.len())
        .ok_or(Status::InvalidMemoryAccess)?
        .copy_from_slice(bytes);
    Ok(())
}

fn write_u32(c: &mut C<'_>, ptr: i32, v: u32) -> Result<(), Status> {
    write(c, ptr, &v.to_le_bytes())
}

/// Allocate in the module, copy `bytes` there, and store pointer and size at the out-params.
/// Empty data is returned as (0, 0) without allocating, as cpp-host does.
fn give(
    c: &mut C<'_>,
    bytes: &[u8],
    ptr_ptr: i32,
    size_ptr: i32,
) -> wasmtime::Result<Result<(), Status>> {
    let mut ptr = 0u32;
    if !bytes.is_empty() {
        let Some(alloc) = c.data().alloc.clone() else {
            return Ok(Err(Status::InternalFailure));
        };
        // Envoy lets the allocator call only a few host functions.
        let outer = c.data_mut().restricted.replace(Restriction::Malloc);
        let allocated = alloc.call(&mut *c, bytes.len() as i32);
        c.data_mut().restricted = outer;
        ptr = match allocated {
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
    }
    Ok(write_u32(c, ptr_ptr, ptr).and_then(|_| write_u32(c, size_ptr, bytes.len() as u32)))
}

macro_rules! tri {
    ($e:expr) => {
        match $e {
            Ok(v) => v,
            Err(s) => return Ok(s as i32),
        }
    };
}

/// Trap, as Envoy does with `restricted_callback`, when `name` is not allowed under `r`.
fn restricted(c: &mut C<'_>, name: &'static str, r: Restriction) -> wasmtime::Result<()> {
    if r.allowed().contains(&name) {
        return Ok(());
    }
    c.data_mut().abort = Some(Abort::Restricted(name, r));
    Err(wasmtime::Error::new(Abort::Restricted(name, r)))
}

/// Finish a `give`: a trap propagates, a status is returned.
fn gave(r: wasmtime::Result<Result<(), Status>>) -> R {
    match r? {
        Ok(()) => Ok(OK),
        Err(s) => Ok(s as i32),
    }
}

fn stream(d: &mut VmState) -> Result<&mut StreamCtx, Status> {
    let ctx = d.context();
    d.streams
        .get_mut(&ctx)
        .map(|s| &mut **s)
        .ok_or(Status::BadArgument)
}

/// A header map as Envoy exposes it to the acting context. `write`: the mutable view (add,
/// replace, remove, set pairs, size), which call responses and gRPC metadata never are. Outside
/// the callbacks that hold a map Envoy answers `BadArgument`; `proxy_on_log` can read them all.
fn header_map(d: &mut VmState, t: i32, write: bool) -> Result<&mut HeaderMap, Status> {
    let t = MapType::from_i32(t).ok_or(Status::BadArgument)?;
    if matches!(
        t,
        MapType::HttpCallResponseHeaders
            | MapType::HttpCallResponseTrailers
            | MapType::GrpcReceiveInitialMetadata
            | MapType::GrpcReceiveTrailingMetadata
    ) {
        if write {
            return Err(Status::BadArgument);
        }
        let r = d.call_response.as_mut().ok_or(Status::BadArgument)?;
        return Ok(match t {
            MapType::HttpCallResponseHeaders | MapType::GrpcReceiveInitialMetadata => {
                &mut r.headers
            }
            _ => &mut r.trailers,
        });
    }
    let s = stream(d)?;
    let readable = !write && s.in_log;
    let (held, m) = match t {
        MapType::HttpRequestHeaders => (s.request_headers_held, &mut s.request_headers),
        MapType::HttpRequestTrailers => (s.request_trailers_held, &mut s.request_trailers),
        MapType::HttpResponseHeaders => (s.response_headers_held, &mut s.response_headers),
        _ => (s.response_trailers_held, &mut s.response_trailers),
    };
    if !(held || readable) {
        return Err(Status::BadArgument);
    }
    Ok(m.get_or_insert_with(HeaderMap::new))
}

/// Add or replace a header read straight from the module's memory (no copies).
/// The headers Envoy keeps as one entry in a map of this type (its inline headers): request
/// headers (0) and response headers (2); none elsewhere (trailers, metadata, call answers).
fn joined_headers(t: i32) -> &'static [&'static str] {
    match t {
        0 => crate::headers::JOINED_REQUEST_HEADERS,
        2 => crate::headers::JOINED_RESPONSE_HEADERS,
        _ => &[],
    }
}

fn edit_header(
    c: &mut C<'_>,
    t: i32,
    (kp, ks): (i32, i32),
    (vp, vs): (i32, i32),
    edit: impl FnOnce(&mut HeaderMap, &str, &[u8]),
) -> i32 {
    let run = || -> Result<(), Status> {
        let (data, d) = memory_and_data(c)?;
        let key = text(slice(data, kp, ks)?);
        let value = slice(data, vp, vs)?;
        edit(header_map(d, t, true)?, &key, value);
        Ok(())
    };
    match run() {
        Ok(()) => OK,
        Err(s) => s as i32,
    }
}

/// Define every host function for `abi`; returns the `(module, name)` pairs provided.
pub(crate) fn define(
    l: &mut Linker<VmState>,
    abi: AbiVersion,
) -> wasmtime::Result<HashSet<(&'static str, &'static str)>> {
    let mut names: HashSet<(&'static str, &'static str)> = HashSet::new();
    // Every host function first checks Envoy's restriction of the moment (VM start, malloc):
    // one branch on a field that is almost always `None`.
    macro_rules! guarded {
        ($name:literal, |mut $c:ident : $ct:ty $(, $a:ident : $t:ty)* $(,)?| $(-> $r:ty)? $body:block) => {
            guarded!($name, |$c: $ct $(, $a: $t)*| $(-> $r)? $body)
        };
        ($name:literal, |$c:ident : $ct:ty $(, $a:ident : $t:ty)* $(,)?| $(-> $r:ty)? $body:block) => {
            move |mut caller: $ct $(, $a: $t)*| $(-> $r)? {
                if let Some(r) = caller.data().restricted {
                    restricted(&mut caller, $name, r)?;
                }
                #[allow(unused_mut)]
                let mut $c = caller;
                $body
            }
        };
    }
    macro_rules! env {
        ($name:literal, $($f:tt)+) => {{
            l.func_wrap(ENV_MODULE, $name, guarded!($name, $($f)+))?;
            names.insert((ENV_MODULE, $name));
        }};
    }
    // cpp-host registers WASI under both names.
    macro_rules! wasi {
        ($name:literal, $($f:tt)+) => {{
            let f = guarded!($name, $($f)+);
            l.func_wrap(WASI_MODULE, $name, f)?;
            l.func_wrap(WASI_UNSTABLE_MODULE, $name, f)?;
            names.insert((WASI_MODULE, $name));
            names.insert((WASI_UNSTABLE_MODULE, $name));
        }};
    }

    // ---- logging, time, configuration ----
    env!("proxy_log", |mut c: C<'_>,
                       level: i32,
                       ptr: i32,
                       len: i32|
     -> R {
        let msg = tri!(read_str(&mut c, ptr, len));
        let level = tri!(LogLevel::from_i32(level).ok_or(Status::BadArgument));
        c.data().log(level, msg);
        Ok(OK)
    });
    if abi == AbiVersion::V0_2_1 {
        env!("proxy_get_log_level", |mut c: C<'_>, out: i32| -> R {
            let level = c.data().shared.borrow().log_level as u32;
            tri!(write_u32(&mut c, out, level));
            Ok(OK)
        });
    }
    env!("proxy_get_current_time_nanoseconds", |mut c: C<'_>,
                                                out: i32|
     -> R {
        let now = c.data().shared.borrow().now;
        tri!(write(&mut c, out, &now.to_le_bytes()));
        Ok(OK)
    });
    env!("proxy_set_tick_period_milliseconds", |mut c: C<'_>,
                                                ms: i32|
     -> R {
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
    });
    if abi == AbiVersion::V0_1_0 {
        env!("proxy_get_configuration", |mut c: C<'_>,
                                         pp: i32,
                                         sp: i32|
         -> R {
            let cfg = tri!(buffer(c.data(), BufferType::PluginConfiguration as i32));
            gave(give(&mut c, &cfg, pp, sp))
        });
    }

    // ---- buffers ----
    env!("proxy_get_buffer_bytes", |mut c: C<'_>,
                                    t: i32,
                                    start: i32,
                                    len: i32,
                                    pp: i32,
                                    sp: i32|
     -> R {
        let bytes = tri!(buffer(c.data(), t));
        let (start, len) = (start as u32 as usize, len as u32 as usize);
        // Reading past the end gives nothing; a long read is clamped.
        let slice = bytes
            .get(start..)
            .map(|b| &b[..len.min(b.len())])
            .unwrap_or(&[])
            .to_vec();
        gave(give(&mut c, &slice, pp, sp))
    });
    env!("proxy_get_buffer_status", |mut c: C<'_>,
                                     t: i32,
                                     len_ptr: i32,
                                     flags_ptr: i32|
     -> R {
        let n = tri!(buffer(c.data(), t)).len() as u32;
        tri!(write_u32(&mut c, len_ptr, n));
        tri!(write_u32(&mut c, flags_ptr, 0));
        Ok(OK)
    });
    env!("proxy_set_buffer_bytes", |mut c: C<'_>,
                                    t: i32,
                                    start: i32,
                                    len: i32,
                                    ptr: i32,
                                    size: i32|
     -> R {
        let data = tri!(read(&mut c, ptr, size));
        let raw = t;
        let t = tri!(BufferType::from_i32(t).ok_or(Status::BadArgument));
        // A buffer Envoy does not hold right now is NotFound, as when reading it (the plugin
        // configuration outside configure, a call response outside its callback); one it holds
        // but will not change is BadArgument, below.
        if matches!(
            t,
            BufferType::PluginConfiguration | BufferType::HttpCallResponseBody
        ) && let Err(e) = buffer(c.data(), raw)
        {
            return st(e);
        }
        let s = match stream(c.data_mut()) {
            Ok(s) => s,
            // Configuration, call responses and call data are immutable.
            Err(_) => return st(Status::BadArgument),
        };
        let buf: &mut Vec<u8> = match t {
            BufferType::HttpRequestBody if s.request_body_held => &mut s.request_body,
            BufferType::HttpResponseBody if s.response_body_held => &mut s.response_body,
            BufferType::DownstreamData => &mut s.downstream_data,
            BufferType::UpstreamData => &mut s.upstream_data,
            _ => return st(Status::BadArgument),
        };
        // Envoy: start 0 replaces the first `len` bytes (a prepend when len is 0); start at or
        // past the end appends; a splice in the middle is refused.
        let (start, len) = (start as u32 as usize, len as u32 as usize);
        if start == 0 {
            let cut = len.min(buf.len());
            buf.splice(0..cut, data);
        } else if start >= buf.len() {
            buf.extend_from_slice(&data);
        } else {
            return st(Status::BadArgument);
        }
        Ok(OK)
    });

    // ---- header maps ----
    env!("proxy_get_header_map_pairs", |mut c: C<'_>,
                                        t: i32,
                                        pp: i32,
                                        sp: i32|
     -> R {
        if MapType::from_i32(t).is_none() {
            return st(Status::BadArgument);
        }
        // An unavailable or empty map is an empty result, not an error.
        let bytes = match header_map(c.data_mut(), t, false) {
            Ok(m) if !m.is_empty() => m.serialize(),
            _ => Vec::new(),
        };
        gave(give(&mut c, &bytes, pp, sp))
    });
    env!("proxy_set_header_map_pairs", |mut c: C<'_>,
                                        t: i32,
                                        ptr: i32,
                                        size: i32|
     -> R {
        let raw = tri!(read(&mut c, ptr, size));
        // cpp-host reads malformed pairs as an empty list: the map is cleared, and Ok.
        // Envoy clears the map and adds each pair (`addCopy`), joining inline headers.
        let joined = joined_headers(t);
        let mut new = HeaderMap::new();
        for (k, v) in deserialize_pairs(&raw).unwrap_or_default() {
            new.add_or_join(&text(k), v, joined);
        }
        *tri!(header_map(c.data_mut(), t, true)) = new;
        Ok(OK)
    });
    env!("proxy_get_header_map_value", |mut c: C<'_>,
                                        t: i32,
                                        kp: i32,
                                        ks: i32,
                                        pp: i32,
                                        sp: i32|
     -> R {
        let v = {
            let (data, d) = tri!(memory_and_data(&mut c));
            // Lossy as the module's bytes may not be UTF-8; no copy when they are.
            let key = text(tri!(slice(data, kp, ks)));
            tri!(header_map(d, t, false))
                .get_bytes(&key)
                .map(<[u8]>::to_vec)
        };
        let v = tri!(v.ok_or(Status::NotFound));
        gave(give(&mut c, &v, pp, sp))
    });
    env!("proxy_add_header_map_value", |mut c: C<'_>,
                                        t: i32,
                                        kp: i32,
                                        ks: i32,
                                        vp: i32,
                                        vs: i32|
     -> R {
        let joined = joined_headers(t);
        Ok(edit_header(&mut c, t, (kp, ks), (vp, vs), |m, k, v| {
            m.add_or_join(k, v, joined)
        }))
    });
    env!("proxy_replace_header_map_value", |mut c: C<'_>,
                                            t: i32,
                                            kp: i32,
                                            ks: i32,
                                            vp: i32,
                                            vs: i32|
     -> R {
        Ok(edit_header(&mut c, t, (kp, ks), (vp, vs), |m, k, v| {
            m.set(k, v)
        }))
    });
    env!("proxy_remove_header_map_value", |mut c: C<'_>,
                                           t: i32,
                                           kp: i32,
                                           ks: i32|
     -> R {
        let (data, d) = tri!(memory_and_data(&mut c));
        let key = text(tri!(slice(data, kp, ks)));
        tri!(header_map(d, t, true)).remove(&key);
        Ok(OK)
    });
    env!("proxy_get_header_map_size", |mut c: C<'_>,
                                       t: i32,
                                       out: i32|
     -> R {
        let n = tri!(header_map(c.data_mut(), t, true)).byte_size() as u32;
        tri!(write_u32(&mut c, out, n));
        Ok(OK)
    });

    // ---- stream control ----
    env!("proxy_send_local_response", |mut c: C<'_>,
                                       status: i32,
                                       dp: i32,
                                       ds: i32,
                                       bp: i32,
                                       bs: i32,
                                       hp: i32,
                                       hs: i32,
                                       grpc: i32|
     -> R {
        let details = tri!(read_str(&mut c, dp, ds));
        let body = tri!(read(&mut c, bp, bs));
        let raw = tri!(read(&mut c, hp, hs));
        // Malformed pairs are no headers, as in cpp-host.
        let headers = HeaderMap::deserialize(&raw).unwrap_or_default();
        let Ok(s) = stream(c.data_mut()) else {
            // Envoy: a silent no-op outside an HTTP stream.
            return Ok(OK);
        };
        s.local_response = Some(LocalResponse {
            status: status as u32,
            details: details.replace(char::is_whitespace, "_"),
            body,
            headers,
            grpc_status: grpc,
        });
        Ok(OK)
    });
    if abi == AbiVersion::V0_1_0 {
        env!("proxy_continue_request", |mut c: C<'_>| -> R {
            let d = c.data_mut();
            tri!(stream(d)).resumed.push(0);
            d.resumed_dirty = true;
            Ok(OK)
        });
        env!("proxy_continue_response", |mut c: C<'_>| -> R {
            let d = c.data_mut();
            tri!(stream(d)).resumed.push(1);
            d.resumed_dirty = true;
            Ok(OK)
        });
        env!("proxy_clear_route_cache", |_c: C<'_>| -> R { Ok(OK) });
    } else {
        env!("proxy_continue_stream", |mut c: C<'_>, t: i32| -> R {
            match t {
                0..=2 => {
                    let d = c.data_mut();
                    tri!(stream(d)).resumed.push(t);
                    d.resumed_dirty = true;
                    Ok(OK)
                }
                // Envoy cannot resume an upstream connection.
                3 => st(Status::Unimplemented),
                _ => st(Status::BadArgument),
            }
        });
        env!("proxy_close_stream", |mut c: C<'_>, t: i32| -> R {
            if !(0..=3).contains(&t) {
                return st(Status::BadArgument);
            }
            tri!(stream(c.data_mut())).closed.push(t);
            Ok(OK)
        });
    }
    env!("proxy_done", |mut c: C<'_>| -> R {
        let d = c.data_mut();
        let ctx = d.context();
        if d.pending_done.remove(&ctx) {
            d.done_called.push(ctx);
            Ok(OK)
        } else {
            st(Status::NotFound)
        }
    });
    env!("proxy_set_effective_context", |mut c: C<'_>,
                                         ctx: i32|
     -> R {
        let d = c.data_mut();
        let ctx = ctx as u32;
        if !d.roots.contains_key(&ctx) && !d.streams.contains_key(&ctx) {
            return st(Status::BadArgument);
        }
        d.effective = Some(ctx);
        Ok(OK)
    });

    // ---- properties ----
    env!("proxy_get_property", |mut c: C<'_>,
                                pp: i32,
                                ps: i32,
                                rp: i32,
                                rs: i32|
     -> R {
        let path = tri!(read(&mut c, pp, ps));
        let v = tri!(crate::host::property(c.data(), &path).ok_or(Status::NotFound));
        gave(give(&mut c, &v, rp, rs))
    });
    env!("proxy_set_property", |mut c: C<'_>,
                                pp: i32,
                                ps: i32,
                                vp: i32,
                                vs: i32|
     -> R {
        let path = tri!(read(&mut c, pp, ps));
        let value = tri!(read(&mut c, vp, vs));
        // Envoy keeps it in the stream's filter state; without a stream there is none.
        let s = tri!(stream(c.data_mut()).map_err(|_| Status::NotFound));
        s.properties.insert(crate::host::path_key(&path), value);
        Ok(OK)
    });

    // ---- shared data and queues ----
    env!("proxy_get_shared_data", |mut c: C<'_>,
                                   kp: i32,
                                   ks: i32,
                                   pp: i32,
                                   sp: i32,
                                   cas_ptr: i32|
     -> R {
        let key = tri!(read_str(&mut c, kp, ks));
        let got = {
            let d = c.data();
            d.shared
                .borrow()
                .shared_data
                .get(&(d.vm_id.clone(), key))
                .cloned()
        };
        let (value, cas) = tri!(got.ok_or(Status::NotFound));
        let r = gave(give(&mut c, &value, pp, sp))?;
        if r != OK {
            return Ok(r);
        }
        tri!(write_u32(&mut c, cas_ptr, cas));
        Ok(OK)
    });
    env!("proxy_set_shared_data", |mut c: C<'_>,
                                   kp: i32,
                                   ks: i32,
                                   vp: i32,
                                   vs: i32,
                                   cas: i32|
     -> R {
        let key = tri!(read_str(&mut c, kp, ks));
        let value = tri!(read(&mut c, vp, vs));
        let d = c.data();
        let s = &mut *d.shared.borrow_mut();
        Ok(s.set_shared_data(&d.vm_id, key, value, cas as u32) as i32)
    });
    env!("proxy_register_shared_queue", |mut c: C<'_>,
                                         np: i32,
                                         ns: i32,
                                         out: i32|
     -> R {
        let name = tri!(read_str(&mut c, np, ns));
        let token = {
            let d = c.data();
            // Deliveries go to the registering context's root (the last registrant wins).
            let ctx = d.context();
            let root = d.streams.get(&ctx).map(|s| s.root).unwrap_or(ctx);
            d.shared
                .borrow_mut()
                .register_queue(&d.vm_id, name, d.vm_index, root)
        };
        tri!(write_u32(&mut c, out, token));
        Ok(OK)
    });
    env!("proxy_resolve_shared_queue", |mut c: C<'_>,
                                        vp: i32,
                                        vs: i32,
                                        np: i32,
                                        ns: i32,
                                        out: i32|
     -> R {
        let mut vm_id = tri!(read_str(&mut c, vp, vs));
        let name = tri!(read_str(&mut c, np, ns));
        if vm_id.is_empty() {
            vm_id = c.data().vm_id.clone();
        }
        let token = c.data().shared.borrow().resolve_queue(&vm_id, &name);
        let token = tri!(token.ok_or(Status::NotFound));
        tri!(write_u32(&mut c, out, token));
        Ok(OK)
    });
    env!("proxy_enqueue_shared_queue", |mut c: C<'_>,
                                        token: i32,
                                        vp: i32,
                                        vs: i32|
     -> R {
        let value = tri!(read(&mut c, vp, vs));
        Ok(c.data().shared.borrow_mut().enqueue(token as u32, value) as i32)
    });
    env!("proxy_dequeue_shared_queue", |mut c: C<'_>,
                                        token: i32,
                                        pp: i32,
                                        sp: i32|
     -> R {
        let v = c.data().shared.borrow_mut().dequeue(token as u32);
        let v = tri!(v);
        gave(give(&mut c, &v, pp, sp))
    });

    // ---- metrics: ids per VM, (n << 2) | kind; the stat itself is host-wide by name ----
    env!("proxy_define_metric", |mut c: C<'_>,
                                 t: i32,
                                 np: i32,
                                 ns: i32,
                                 out: i32|
     -> R {
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
    });
    env!("proxy_increment_metric", |c: C<'_>,
                                    id: i32,
                                    offset: i64|
     -> R {
        let stat = tri!(metric_id(c.data(), id as u32));
        Ok(c.data().shared.borrow_mut().stat_at(stat).increment(offset) as i32)
    });
    env!("proxy_record_metric", |c: C<'_>,
                                 id: i32,
                                 value: i64|
     -> R {
        let stat = tri!(metric_id(c.data(), id as u32));
        Ok(c.data()
            .shared
            .borrow_mut()
            .stat_at(stat)
            .record(value as u64) as i32)
    });
    env!("proxy_get_metric", |mut c: C<'_>, id: i32, out: i32| -> R {
        let stat = tri!(metric_id(c.data(), id as u32));
        let v = tri!(c.data().shared.borrow_mut().stat_at(stat).get());
        tri!(write(&mut c, out, &v.to_le_bytes()));
        Ok(OK)
    });

    // ---- HTTP and gRPC calls (owned by the root context, as in Envoy) ----
    env!("proxy_http_call", |mut c: C<'_>,
                             up: i32,
                             us: i32,
                             hp: i32,
                             hs: i32,
                             bp: i32,
                             bs: i32,
                             tp: i32,
                             ts: i32,
                             timeout: i32,
                             out: i32|
     -> R {
        tri!(write_u32(&mut c, out, 0));
        let upstream = tri!(read_str(&mut c, up, us));
        let headers = HeaderMap::deserialize(&tri!(read(&mut c, hp, hs))).unwrap_or_default();
        let body = tri!(read(&mut c, bp, bs));
        let trailers = HeaderMap::deserialize(&tri!(read(&mut c, tp, ts))).unwrap_or_default();
        if timeout < 0
            || !c.data().shared.borrow().knows_cluster(&upstream)
            || [":method", ":path", ":authority"]
                .iter()
                .any(|h| !headers.contains(h))
        {
            // Envoy: negative timeout, unknown cluster, or missing routing pseudo-headers.
            return st(Status::BadArgument);
        }
        let token = {
            let d = c.data_mut();
            let root = d.acting_root();
            let token = d.next_callout_id(0);
            let mut shared = d.shared.borrow_mut();
            let call = HttpCall {
                token,
                upstream,
                headers,
                body,
                trailers,
                timeout_ms: timeout as u32,
                made_at_nanos: shared.now,
                vm_index: d.vm_index,
                context: root,
            };
            shared.http_calls_made.push(call.clone());
            shared.http_calls.push(call);
            token
        };
        tri!(write_u32(&mut c, out, token));
        Ok(OK)
    });
    env!("proxy_grpc_call", |mut c: C<'_>,
                             sp: i32,
                             ss: i32,
                             snp: i32,
                             sns: i32,
                             mp: i32,
                             ms: i32,
                             ip: i32,
                             is: i32,
                             rp: i32,
                             rs: i32,
                             timeout: i32,
                             out: i32|
     -> R {
        let call = tri!(grpc_call(
            &mut c,
            [sp, ss, snp, sns, mp, ms, ip, is],
            Some((rp, rs)),
            timeout
        ));
        let token = call.token;
        c.data().shared.borrow_mut().grpc_calls.push(call);
        tri!(write_u32(&mut c, out, token));
        Ok(OK)
    });
    env!("proxy_grpc_stream", |mut c: C<'_>,
                               sp: i32,
                               ss: i32,
                               snp: i32,
                               sns: i32,
                               mp: i32,
                               ms: i32,
                               ip: i32,
                               is: i32,
                               out: i32|
     -> R {
        let call = tri!(grpc_call(
            &mut c,
            [sp, ss, snp, sns, mp, ms, ip, is],
            None,
            0
        ));
        let token = call.token;
        c.data().shared.borrow_mut().grpc_calls.push(call);
        tri!(write_u32(&mut c, out, token));
        Ok(OK)
    });
    env!("proxy_grpc_send", |mut c: C<'_>,
                             token: i32,
                             mp: i32,
                             ms: i32,
                             end: i32|
     -> R {
        let msg = tri!(read(&mut c, mp, ms));
        if token as u32 & 3 != 2 {
            return st(Status::BadArgument);
        }
        let vm = c.data().vm_index;
        let mut s = c.data().shared.borrow_mut();
        let call = tri!(s.grpc_call_mut(vm, token as u32).ok_or(Status::NotFound));
        call.sent.push(msg);
        call.local_closed |= end != 0;
        Ok(OK)
    });
    env!("proxy_grpc_cancel", |c: C<'_>, token: i32| -> R {
        if !matches!(token as u32 & 3, 1 | 2) {
            return st(Status::BadArgument);
        }
        let vm = c.data().vm_index;
        let mut s = c.data().shared.borrow_mut();
        tri!(s.grpc_call_mut(vm, token as u32).ok_or(Status::NotFound)).cancelled = true;
        Ok(OK)
    });
    env!("proxy_grpc_close", |c: C<'_>, token: i32| -> R {
        if !matches!(token as u32 & 3, 1 | 2) {
            return st(Status::BadArgument);
        }
        let vm = c.data().vm_index;
        let mut s = c.data().shared.borrow_mut();
        tri!(s.grpc_call_mut(vm, token as u32).ok_or(Status::NotFound)).local_closed = true;
        Ok(OK)
    });
    env!("proxy_get_status", |mut c: C<'_>,
                              code_ptr: i32,
                              pp: i32,
                              sp: i32|
     -> R {
        let (code, msg) = c.data().last_status.clone();
        tri!(write_u32(&mut c, code_ptr, code));
        gave(give(&mut c, msg.as_bytes(), pp, sp))
    });

    // ---- foreign functions ----
    env!("proxy_call_foreign_function", |mut c: C<'_>,
                                         np: i32,
                                         ns: i32,
                                         ap: i32,
                                         asz: i32,
                                         pp: i32,
                                         sp: i32|
     -> R {
        let name = tri!(read_str(&mut c, np, ns));
        let args = tri!(read(&mut c, ap, asz));
        let f = c.data().shared.borrow().foreign.get(&name).cloned();
        let f = tri!(f.ok_or(Status::NotFound));
        let out = tri!(f(&args));
        if pp == 0 {
            return Ok(OK);
        }
        gave(give(&mut c, &out, pp, sp))
    });

    // ---- Emscripten/pthread shims cpp-host provides ----
    env!("pthread_equal", |_c: C<'_>, a: i32, b: i32| -> R {
        Ok((a == b) as i32)
    });
    env!("emscripten_notify_memory_growth", |_c: C<'_>,
                                             _i: i32|
     -> wasmtime::Result<
        (),
    > { Ok(()) });

    // ---- WASI preview 1, as cpp-host/Envoy provide it ----
    wasi!("fd_write", |mut c: C<'_>,
                       fd: i32,
                       iovs: i32,
                       n: i32,
                       written: i32|
     -> R {
        if fd != 1 && fd != 2 {
            return Ok(ERRNO_BADF);
        }
        let mut out = Vec::new();
        for i in 0..n {
            let iov = tri_errno!(read(&mut c, iovs + i * 8, 8));
            let p = i32::from_le_bytes([iov[0], iov[1], iov[2], iov[3]]);
            let l = i32::from_le_bytes([iov[4], iov[5], iov[6], iov[7]]);
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
    });
    wasi!("fd_read", |_c: C<'_>,
                      _fd: i32,
                      _iovs: i32,
                      _n: i32,
                      _read: i32|
     -> R { Ok(ERRNO_NOSYS) });
    wasi!("fd_close", |_c: C<'_>, _fd: i32| -> R { Ok(0) });
    wasi!("fd_seek", |_c: C<'_>,
                      _fd: i32,
                      _off: i64,
                      _whence: i32,
                      _out: i32|
     -> R { Ok(0) });
    wasi!("fd_fdstat_get", |mut c: C<'_>, fd: i32, out: i32| -> R {
        if fd != 1 && fd != 2 {
            return Ok(ERRNO_BADF);
        }
        // [u64 0, u64 rights = FD_WRITE (64), u64 0], as cpp-host writes it.
        let mut stat = [0u8; 24];
        stat[8] = 64;
        tri_errno!(write(&mut c, out, &stat));
        Ok(0)
    });
    wasi!("fd_fdstat_set_flags", |_c: C<'_>,
                                  _fd: i32,
                                  _flags: i32|
     -> R { Ok(ERRNO_NOSYS) });
    wasi!("fd_prestat_get", |_c: C<'_>, _fd: i32, _out: i32| -> R {
        Ok(ERRNO_BADF)
    });
    wasi!("fd_prestat_dir_name", |_c: C<'_>,
                                  _fd: i32,
                                  _p: i32,
                                  _l: i32|
     -> R { Ok(ERRNO_NOSYS) });
    wasi!("fd_filestat_get", |_c: C<'_>, _fd: i32, _out: i32| -> R {
        Ok(ERRNO_BADF)
    });
    wasi!("path_open", |_c: C<'_>,
                        _fd: i32,
                        _df: i32,
                        _p: i32,
                        _l: i32,
                        _of: i32,
                        _rb: i64,
                        _ri: i64,
                        _ff: i32,
                        _out: i32|
     -> R { Ok(ERRNO_NOENT) });
    wasi!("path_filestat_get", |_c: C<'_>,
                                _fd: i32,
                                _f: i32,
                                _p: i32,
                                _l: i32,
                                _out: i32|
     -> R { Ok(ERRNO_NOTSUP) });
    wasi!("environ_sizes_get", |mut c: C<'_>,
                                count: i32,
                                size: i32|
     -> R {
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
    });
    wasi!("environ_get", |mut c: C<'_>, ptrs: i32, buf: i32| -> R {
        let env = c.data().shared.borrow().env.clone();
        let mut at = buf;
        for (i, (k, v)) in env.iter().enumerate() {
            tri_errno!(write_u32(&mut c, ptrs + 4 * i as i32, at as u32));
            let entry = format!("{k}={v}\0");
            tri_errno!(write(&mut c, at, entry.as_bytes()));
            at += entry.len() as i32;
        }
        Ok(0)
    });
    wasi!("args_sizes_get", |mut c: C<'_>,
                             count: i32,
                             size: i32|
     -> R {
        tri_errno!(write_u32(&mut c, count, 0));
        tri_errno!(write_u32(&mut c, size, 0));
        Ok(0)
    });
    wasi!("args_get", |_c: C<'_>, _ptrs: i32, _buf: i32| -> R {
        Ok(0)
    });
    wasi!("clock_time_get", |mut c: C<'_>,
                             id: i32,
                             _precision: i64,
                             out: i32|
     -> R {
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
    });
    wasi!("clock_res_get", |mut c: C<'_>, id: i32, out: i32| -> R {
        if !(0..=1).contains(&id) {
            return Ok(ERRNO_NOTSUP);
        }
        tri_errno!(write(&mut c, out, &1u64.to_le_bytes()));
        Ok(0)
    });
    wasi!("random_get", |mut c: C<'_>, buf: i32, len: i32| -> R {
        let len = len as u32 as usize;
        if len > 65536 {
            return Ok(ERRNO_INVAL);
        }
        let bytes = c.data().shared.borrow_mut().random_bytes(len);
        tri_errno!(write(&mut c, buf, &bytes));
        Ok(0)
    });
    wasi!("sched_yield", |_c: C<'_>| -> R { Ok(0) });
    wasi!("poll_oneoff", |mut c: C<'_>,
                          _in: i32,
                          _out: i32,
                          _n: i32,
                          nevents: i32|
     -> R {
        tri_errno!(write_u32(&mut c, nevents, 0));
        Ok(0)
    });
    // Envoy only logs proc_exit and returns; the module's own trap right after it is what
    // fails the VM. The harness records the code so that error names it.
    wasi!("proc_exit", |mut c: C<'_>,
                        code: i32|
     -> wasmtime::Result<()> {
        c.data_mut().abort = Some(Abort::Exit(code));
        Ok(())
    });
    Ok(names)
}

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

macro_rules! tri_errno {
    ($e:expr) => {
        match $e {
            Ok(v) => v,
            Err(_) => return Ok(ERRNO_FAULT),
        }
    };
}
use tri_errno;

/// A buffer's bytes as Envoy exposes them to the acting context.
fn buffer(d: &VmState, t: i32) -> Result<Vec<u8>, Status> {
    let t = BufferType::from_i32(t).ok_or(Status::BadArgument)?;
    let ctx = d.context();
    let s = d.streams.get(&ctx);
    Ok(match t {
        BufferType::VmConfiguration => d.vm_configuration.clone(),
        BufferType::PluginConfiguration if d.plugin_config_visible => d
            .root_of(ctx)
            .map(|r| r.configuration.clone())
            .ok_or(Status::NotFound)?,
        BufferType::PluginConfiguration => return Err(Status::NotFound),
        // Outside its callbacks Envoy's body buffer is empty, not missing.
        BufferType::HttpRequestBody => s
            .filter(|s| s.request_body_held)
            .map(|s| s.request_body.clone())
            .unwrap_or_default(),
        BufferType::HttpResponseBody => s
            .filter(|s| s.response_body_held)
            .map(|s| s.response_body.clone())
            .unwrap_or_default(),
        BufferType::DownstreamData => s.ok_or(Status::NotFound)?.downstream_data.clone(),
        BufferType::UpstreamData => s.ok_or(Status::NotFound)?.upstream_data.clone(),
        BufferType::HttpCallResponseBody => d
            .call_response
            .as_ref()
            .ok_or(Status::NotFound)?
            .body
            .clone(),
        BufferType::GrpcReceiveBuffer => d
            .call_response
            .as_ref()
            .map(|r| r.body.clone())
            .unwrap_or_default(),
        BufferType::CallData => d.call_data.clone(),
    })
}

fn grpc_call(
    c: &mut C<'_>,
    p: [i32; 8],
    request: Option<(i32, i32)>,
    timeout: i32,
) -> Result<GrpcCall, Status> {
    let service = read(c, p[0], p[1])?;
    let service_name = read_str(c, p[2], p[3])?;
    let method = read_str(c, p[4], p[5])?;
    let metadata = HeaderMap::deserialize(&read(c, p[6], p[7])?).unwrap_or_default();
    let message = match request {
        Some((rp, rs)) => Some(read(c, rp, rs)?),
        None => None,
    };
    let d = c.data_mut();
    let service = String::from_utf8_lossy(&service).into_owned();
    if !d.shared.borrow().knows_cluster(&service) {
        // Envoy: a service that is neither a GrpcService nor a known cluster.
        return Err(Status::ParseFailure);
    }
    let unary = message.is_some();
    Ok(GrpcCall {
        token: d.next_callout_id(if unary { 1 } else { 2 }),
        service,
        service_name,
        method,
        initial_metadata: metadata,
        stream: !unary,
        sent: message.into_iter().collect(),
        timeout_ms: timeout as u32,
        vm_index: d.vm_index,
        context: d.acting_root(),
        cancelled: false,
        local_closed: unary,
    })
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
        move |mut c: C<'_>, _args: &[Val], _ret: &mut [Val]| {
            c.data_mut().abort = Some(Abort::Unsupported(full.clone()));
            Err(wasmtime::Error::new(Abort::Unsupported(full.clone())))
        },
    )?;
    Ok(())
}
