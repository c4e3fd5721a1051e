//! One VM: a wasmtime store with an instance of the module, its contexts, and the code that calls
//! into it and turns traps into [`Error`]s.

use crate::abi::{AbiVersion, LogLevel};
use crate::error::{Error, Result};
use crate::headers::HeaderMap;
use crate::host::Shared;
use crate::runtime::{EPOCH_TICK, Module};
use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::hash::{BuildHasherDefault, Hasher};
use std::rc::Rc;
use std::time::Duration;
use wasmtime::{Memory, ResourceLimiter, Store, Trap, TypedFunc, WasmParams, WasmResults};

/// A host function's reason to stop the module: recorded in the store, then turned into an
/// [`Error`] by the caller of the callback.
#[derive(Debug)]
pub(crate) enum Abort {
    /// `proc_exit(code)` (recorded; the module's own `unreachable` after it is what traps).
    Exit(i32),
    /// An import the host does not provide.
    Unsupported(String),
    /// A host function called where Envoy forbids it (see [`Restriction`]).
    Restricted(&'static str, Restriction),
}

/// Where Envoy (proxy-wasm-cpp-host) lets a module call only a few host functions, and traps
/// with `restricted_callback` on any other.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Restriction {
    /// The VM's start: `_initialize` (then `main`) or `_start`.
    Start,
    /// The module's allocator, while the host hands it data.
    Malloc,
}

impl Restriction {
    /// The host functions allowed (by name; WASI under either module name).
    pub fn allowed(self) -> &'static [&'static str] {
        match self {
            Restriction::Start => &[
                "proxy_log",
                "fd_write",
                "args_sizes_get",
                "args_get",
                "environ_sizes_get",
                "environ_get",
                "fd_prestat_get",
                "fd_prestat_dir_name",
                "clock_time_get",
                "clock_res_get",
                "random_get",
                "fd_fdstat_get",
                "fd_fdstat_set_flags",
                "fd_fdstat_set_rights",
                "path_filestat_get",
                "fd_filestat_get",
                "emscripten_notify_memory_growth",
            ],
            Restriction::Malloc => &["proxy_log", "fd_write", "clock_time_get"],
        }
    }
}

impl std::fmt::Display for Abort {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Abort::Exit(c) => write!(f, "proc_exit({c})"),
            Abort::Unsupported(i) => write!(f, "unsupported import {i}"),
            Abort::Restricted(name, _) => write!(f, "restricted_callback: {name}"),
        }
    }
}

impl std::error::Error for Abort {}

/// Memory cap for one VM.
pub(crate) struct Limiter {
    pub cap: usize,
    pub breached: bool,
}

impl ResourceLimiter for Limiter {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.cap {
            // As in V8 under Envoy: memory.grow returns -1; the module decides what to do (a Rust
            // module aborts, which traps).
            self.breached = true;
            return Ok(false);
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= 1_000_000)
    }
}

/// Hasher for context ids: they are small host-chosen integers, not attacker input, so SipHash's
/// flood resistance buys nothing, and stream lookups happen several times per callback. A
/// multiply spreads sequential ids into the high bits the table probes with.
#[derive(Default)]
pub(crate) struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0.wrapping_mul(0x9E37_79B9_7F4A_7C15)
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 << 8) | u64::from(b);
        }
    }

    fn write_u32(&mut self, n: u32) {
        self.0 = u64::from(n);
    }
}

/// A map keyed by context id.
pub(crate) type IdMap<V> = HashMap<u32, V, BuildHasherDefault<IdHasher>>;

/// Header maps kept for reuse by later streams: a map's storage is cleared, not freed, so a
/// stream's headers cost no allocation once the VM has served a few streams.
#[derive(Default)]
pub(crate) struct MapPool {
    maps: Vec<HeaderMap>,
}

impl MapPool {
    /// At most this many maps are kept (a stream has up to four).
    const KEEP: usize = 16;
    /// Maps holding more storage than this are freed rather than kept.
    const KEEP_CAPACITY: usize = 64 << 10;

    /// An empty map, reused when one is pooled.
    pub fn take(&mut self) -> HeaderMap {
        self.maps.pop().unwrap_or_default()
    }

    /// Keep a map's storage for a later stream.
    pub fn give(&mut self, map: Option<HeaderMap>) {
        if let Some(mut m) = map
            && self.maps.len() < Self::KEEP
            && m.capacity() <= Self::KEEP_CAPACITY
        {
            m.clear();
            self.maps.push(m);
        }
    }

    /// Keep the header maps of a stream that is gone.
    pub fn give_stream(&mut self, s: &mut StreamCtx) {
        self.give(s.request_headers.take());
        self.give(s.response_headers.take());
        self.give(s.request_trailers.take());
        self.give(s.response_trailers.take());
    }
}

/// A plugin's root context inside a VM.
#[derive(Debug, Clone, Default)]
pub(crate) struct RootCtx {
    pub root_id: String,
    pub name: String,
    pub configuration: Vec<u8>,
    pub tick_period: Option<Duration>,
    /// Host clock (nanoseconds since the epoch) of the next tick.
    pub next_tick: u64,
}

/// A local response sent with `proxy_send_local_response`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalResponse {
    /// HTTP status.
    pub status: u32,
    /// Response code details, as Envoy records them.
    pub details: String,
    /// Body.
    pub body: Vec<u8>,
    /// Extra headers.
    pub headers: HeaderMap,
    /// gRPC status, or -1 for none.
    pub grpc_status: i32,
}

/// The state of one HTTP stream (or network connection) context.
#[derive(Debug, Clone, Default)]
pub(crate) struct StreamCtx {
    pub root: u32,
    pub request_headers: Option<HeaderMap>,
    pub request_body: Vec<u8>,
    pub request_trailers: Option<HeaderMap>,
    pub response_headers: Option<HeaderMap>,
    pub response_body: Vec<u8>,
    pub response_trailers: Option<HeaderMap>,
    pub local_response: Option<LocalResponse>,
    pub properties: HashMap<String, Vec<u8>>,
    /// `proxy_continue_stream` / `proxy_continue_request|response` calls: 0 request, 1 response.
    pub resumed: Vec<i32>,
    /// `proxy_close_stream` / `proxy_reset_stream` calls.
    pub closed: Vec<i32>,
    /// Network: downstream and upstream data buffers.
    pub downstream_data: Vec<u8>,
    pub upstream_data: Vec<u8>,
    /// Envoy holds a map only while its callback runs or the filter paused there: outside, the
    /// module gets `BadArgument` (and header-backed properties `NotFound`).
    pub request_headers_held: bool,
    pub response_headers_held: bool,
    pub request_trailers_held: bool,
    pub response_trailers_held: bool,
    /// Body buffers are visible during body callbacks.
    pub request_body_held: bool,
    pub response_body_held: bool,
    /// `proxy_on_log` is running: maps and header properties are readable.
    pub in_log: bool,
    /// `proxy_on_context_create` ran (else `proxy_on_delete` is skipped, as in cpp-host).
    pub created: bool,
    /// How many `resumed` entries have been applied.
    pub resumed_applied: usize,
    /// Host clock when the stream opened (`request.time`).
    pub start_ns: u64,
    /// Body bytes given to the stream (`request.size`, `response.size`).
    pub request_bytes: u64,
    pub response_bytes: u64,
    /// The stream's downstream connection (`connection.id`).
    pub connection_id: u64,
    /// Details of a reply the proxy itself sent on the stream (`response.code_details`).
    pub proxy_reply_details: Option<String>,
    /// A network connection (its filter state lives as long as the connection), not an HTTP
    /// stream.
    pub network: bool,
    /// Filter state objects set with the foreign function `set_envoy_filter_state`: by name,
    /// the bytes `proxy_get_property(["filter_state", NAME])` reads (`None`: the object does not
    /// serialize) and the life span.
    pub envoy_filter_state: BTreeMap<String, (Option<Vec<u8>>, crate::foreign::LifeSpan)>,
    /// Properties set with `proxy_set_property`: Envoy's `wasm.`-prefixed `CelState` filter
    /// state objects, by the path as the module gave it.
    pub cel_state: HashMap<Vec<u8>, CelState>,
    /// `clear_route_cache` calls on this stream.
    pub route_cache_cleared: u32,
}

/// A property set with `proxy_set_property` (Envoy's `CelState`): its value and what the
/// prototype it was created from says (`declare_property`, else writable bytes).
#[derive(Debug, Clone, Default)]
pub(crate) struct CelState {
    pub value: Vec<u8>,
    pub readonly: bool,
    pub kind: crate::foreign::WasmType,
}

/// What an HTTP or gRPC call's response exposes while `proxy_on_*_response` runs.
#[derive(Debug, Clone, Default)]
pub(crate) struct CallResponse {
    pub headers: HeaderMap,
    pub body: Vec<u8>,
    pub trailers: HeaderMap,
}

/// The data of a store.
pub(crate) struct VmState {
    pub shared: Rc<RefCell<Shared>>,
    pub vm_id: String,
    pub vm_configuration: Vec<u8>,
    pub vm_index: usize,
    pub memory: Option<Memory>,
    pub alloc: Option<Func<i32, i32>>,
    /// The context whose callback is running.
    pub current: u32,
    /// Set by `proxy_set_effective_context` for the rest of the callback.
    pub effective: Option<u32>,
    pub roots: BTreeMap<u32, RootCtx>,
    /// Boxed: a stream's state is a few hundred bytes, moved in and out of the map once per
    /// stream, so only a pointer moves.
    pub streams: IdMap<Box<StreamCtx>>,
    /// Set when a callback called `proxy_continue_stream` (or `proxy_continue_request|response`):
    /// the streams' `resumed` lists then need applying once the callback returns.
    pub resumed_dirty: bool,
    /// Header maps of finished streams, for reuse.
    pub map_pool: MapPool,
    /// Stream states of finished streams, for reuse (no allocation per stream). Boxed on
    /// purpose: a box moves into `streams` as a pointer.
    #[allow(clippy::vec_box)]
    pub stream_pool: Vec<Box<StreamCtx>>,
    /// Arguments of the foreign function call being delivered (`CallData`).
    pub call_data: Vec<u8>,
    /// The HTTP/gRPC call response being delivered.
    pub call_response: Option<CallResponse>,
    pub limiter: Limiter,
    pub abort: Option<Abort>,
    /// Set while Envoy would restrict host calls (VM start, the module's allocator).
    pub restricted: Option<Restriction>,
    /// The plugin configuration buffer is visible (root `on_context_create` and `on_configure`).
    pub plugin_config_visible: bool,
    /// Metric ids of this VM: `(kind, host-wide stat index)`; id = ((index + 1) << 2) | kind.
    pub metric_ids: Vec<(crate::abi::MetricType, usize)>,
    /// Per-VM callout id counter (ids are `n << 2 | kind`: 0 HTTP, 1 gRPC call, 2 gRPC stream).
    pub next_callout: u32,
    /// Root contexts whose `proxy_on_done` returned false, waiting for `proxy_done`.
    pub pending_done: std::collections::HashSet<u32>,
    /// Root contexts that called `proxy_done` (deleted after the callback returns).
    pub done_called: Vec<u32>,
    /// What `proxy_get_status` reports: set when an HTTP call fails or a gRPC call closes.
    pub last_status: (u32, String),
    /// Properties declared with the foreign function `declare_property`, by the context that
    /// declared them (Envoy keeps them on that context; `proxy_set_property` reads the acting
    /// stream's root context's).
    pub declared: IdMap<HashMap<String, crate::foreign::DeclareProperty>>,
}

impl VmState {
    /// The context host calls act on: the effective one if set, else the running one.
    pub fn context(&self) -> u32 {
        self.effective.unwrap_or(self.current)
    }

    /// The root context of the acting context (callouts belong to it, as in Envoy).
    pub fn acting_root(&self) -> u32 {
        let ctx = self.context();
        self.streams.get(&ctx).map(|s| s.root).unwrap_or(ctx)
    }

    /// A fresh stream state of root `root`, in storage a finished stream gave back when there is.
    pub fn new_stream(&mut self, root: u32, created: bool) -> Box<StreamCtx> {
        let (start_ns, connection_id) = {
            let mut sh = self.shared.borrow_mut();
            sh.next_connection += 1;
            (sh.now, sh.next_connection)
        };
        let ctx = StreamCtx {
            root,
            created,
            start_ns,
            connection_id,
            ..StreamCtx::default()
        };
        match self.stream_pool.pop() {
            Some(mut b) => {
                *b = ctx;
                b
            }
            None => Box::new(ctx),
        }
    }

    /// Keep the state of a stream that is gone: its header maps and its box serve later streams.
    pub fn recycle_stream(&mut self, mut s: Box<StreamCtx>) {
        self.map_pool.give_stream(&mut s);
        if self.stream_pool.len() < MapPool::KEEP {
            self.stream_pool.push(s);
        }
    }

    /// The next callout id of `kind` (0 HTTP, 1 gRPC call, 2 gRPC stream): 4, 8, ... | kind.
    pub fn next_callout_id(&mut self, kind: u32) -> u32 {
        self.next_callout += 1;
        (self.next_callout << 2) | kind
    }

    /// The root context owning the acting context (itself when it is a root).
    pub fn root_of(&self, ctx: u32) -> Option<&RootCtx> {
        match self.roots.get(&ctx) {
            Some(r) => Some(r),
            None => self.streams.get(&ctx).and_then(|s| self.roots.get(&s.root)),
        }
    }

    /// Record a log line from the module.
    pub fn log(&self, level: LogLevel, message: String) {
        let ctx = self.context();
        let root_id = self
            .root_of(ctx)
            .map(|r| r.root_id.clone())
            .unwrap_or_default();
        self.shared
            .borrow_mut()
            .log(level, message, &self.vm_id, &root_id, ctx);
    }
}

/// A typed export. Behind an `Rc` because cloning a wasmtime 48 `TypedFunc` clones its
/// registered type (reference counts in the engine's type registry): measurable when done for
/// every callback of every request, while an `Rc` clone is one increment.
pub(crate) type Func<P, R> = Rc<TypedFunc<P, R>>;

/// `proxy_on_http_call_response(context, token, headers, body_size, trailers)`.
pub(crate) type HttpCallResponseFn = Func<(i32, i32, i32, i32, i32), ()>;

/// Cached callback exports. Absent exports are `None`: the callback is skipped as in cpp-host.
#[derive(Clone, Default)]
pub(crate) struct Exports {
    pub on_context_create: Option<Func<(i32, i32), ()>>,
    pub on_vm_start: Option<Func<(i32, i32), i32>>,
    pub on_configure: Option<Func<(i32, i32), i32>>,
    pub on_tick: Option<Func<i32, ()>>,
    pub on_queue_ready: Option<Func<(i32, i32), ()>>,
    pub on_foreign_function: Option<Func<(i32, i32, i32), ()>>,
    pub on_done: Option<Func<i32, i32>>,
    pub on_log: Option<Func<i32, ()>>,
    pub on_delete: Option<Func<i32, ()>>,
    /// 0.2.x: (context, count, end_of_stream); 0.1.0: (context, count) adapted.
    pub on_request_headers: Option<Callback3>,
    pub on_request_body: Option<Func<(i32, i32, i32), i32>>,
    pub on_request_trailers: Option<Func<(i32, i32), i32>>,
    pub on_response_headers: Option<Callback3>,
    pub on_response_body: Option<Func<(i32, i32, i32), i32>>,
    pub on_response_trailers: Option<Func<(i32, i32), i32>>,
    pub on_http_call_response: Option<HttpCallResponseFn>,
    pub on_grpc_receive_initial_metadata: Option<Func<(i32, i32, i32), ()>>,
    pub on_grpc_receive: Option<Func<(i32, i32, i32), ()>>,
    pub on_grpc_receive_trailing_metadata: Option<Func<(i32, i32, i32), ()>>,
    pub on_grpc_close: Option<Func<(i32, i32, i32), ()>>,
    pub on_new_connection: Option<Func<i32, i32>>,
    pub on_downstream_data: Option<Func<(i32, i32, i32), i32>>,
    pub on_upstream_data: Option<Func<(i32, i32, i32), i32>>,
    pub on_downstream_connection_close: Option<Func<(i32, i32), ()>>,
    pub on_upstream_connection_close: Option<Func<(i32, i32), ()>>,
}

/// A headers callback in either arity.
#[derive(Clone)]
pub(crate) enum Callback3 {
    /// 0.2.x
    Three(Func<(i32, i32, i32), i32>),
    /// 0.1.0
    Two(Func<(i32, i32), i32>),
}

/// A running VM.
pub(crate) struct VmInner {
    pub store: Store<VmState>,
    pub exports: Exports,
    pub failed: Option<Error>,
    /// Host clock when the VM failed (FAIL_RELOAD's backoff counts from it).
    pub failed_at: u64,
    pub deadline: Duration,
    /// `deadline` in epoch ticks, computed once (a 128-bit division).
    pub deadline_ticks: u64,
    pub next_context_id: u32,
}

pub(crate) type Vm = Rc<RefCell<VmInner>>;

fn typed<P: WasmParams, R: WasmResults>(
    store: &mut Store<VmState>,
    instance: &wasmtime::Instance,
    name: &str,
) -> Result<Option<Func<P, R>>> {
    match instance.get_func(&mut *store, name) {
        None => Ok(None),
        Some(f) => f
            .typed::<P, R>(&*store)
            .map(|f| Some(Rc::new(f)))
            .map_err(|e| Error::BadExport {
                name: name.to_string(),
                message: format!("{e:#}"),
            }),
    }
}

/// Options for a new VM.
pub(crate) struct VmOptions {
    pub vm_id: String,
    pub vm_configuration: Vec<u8>,
    pub memory_cap: usize,
    pub deadline: Duration,
}

impl VmInner {
    /// Instantiate the module, run its initializer and `proxy_on_vm_start`.
    pub fn start(module: &Module, shared: Rc<RefCell<Shared>>, opts: VmOptions) -> Result<Vm> {
        let vm_index = shared.borrow().vms.len();
        let state = VmState {
            shared: shared.clone(),
            vm_id: opts.vm_id.clone(),
            vm_configuration: opts.vm_configuration,
            vm_index,
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
                cap: opts.memory_cap,
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
            declared: IdMap::default(),
        };
        let mut store = Store::new(module.runtime.engine(), state);
        store.limiter(|s| &mut s.limiter);
        let ticks = deadline_ticks(opts.deadline);
        store.set_epoch_deadline(ticks);
        let instance = module
            .pre
            .instantiate(&mut store)
            .map_err(|e| Error::Instantiate(format!("{e:#}")))?;
        let memory = instance
            .get_memory(&mut store, "memory")
            .ok_or(Error::NoMemory)?;
        // cpp-host prefers `malloc` and falls back to `proxy_on_memory_allocate`.
        let alloc = match typed::<i32, i32>(&mut store, &instance, "malloc")? {
            Some(f) => Some(f),
            None => typed::<i32, i32>(&mut store, &instance, "proxy_on_memory_allocate")?,
        };
        if alloc.is_none() {
            return Err(Error::NoAllocator);
        }
        store.data_mut().memory = Some(memory);
        store.data_mut().alloc = alloc;

        let abi = module.abi_version();
        let headers = |store: &mut Store<VmState>, name: &str| -> Result<Option<Callback3>> {
            if abi == AbiVersion::V0_1_0 {
                Ok(typed::<(i32, i32), i32>(store, &instance, name)?.map(Callback3::Two))
            } else {
                Ok(typed::<(i32, i32, i32), i32>(store, &instance, name)?.map(Callback3::Three))
            }
        };
        let s = &mut store;
        let exports = Exports {
            on_context_create: typed(s, &instance, "proxy_on_context_create")?,
            on_vm_start: typed(s, &instance, "proxy_on_vm_start")?,
            on_configure: typed(s, &instance, "proxy_on_configure")?,
            on_tick: typed(s, &instance, "proxy_on_tick")?,
            on_queue_ready: typed(s, &instance, "proxy_on_queue_ready")?,
            on_foreign_function: typed(s, &instance, "proxy_on_foreign_function")?,
            on_done: typed(s, &instance, "proxy_on_done")?,
            on_log: typed(s, &instance, "proxy_on_log")?,
            on_delete: typed(s, &instance, "proxy_on_delete")?,
            on_request_headers: headers(s, "proxy_on_request_headers")?,
            on_request_body: typed(s, &instance, "proxy_on_request_body")?,
            on_request_trailers: typed(s, &instance, "proxy_on_request_trailers")?,
            on_response_headers: headers(s, "proxy_on_response_headers")?,
            on_response_body: typed(s, &instance, "proxy_on_response_body")?,
            on_response_trailers: typed(s, &instance, "proxy_on_response_trailers")?,
            on_http_call_response: typed(s, &instance, "proxy_on_http_call_response")?,
            on_grpc_receive_initial_metadata: typed(
                s,
                &instance,
                "proxy_on_grpc_receive_initial_metadata",
            )?,
            on_grpc_receive: typed(s, &instance, "proxy_on_grpc_receive")?,
            on_grpc_receive_trailing_metadata: typed(
                s,
                &instance,
                "proxy_on_grpc_receive_trailing_metadata",
            )?,
            on_grpc_close: typed(s, &instance, "proxy_on_grpc_close")?,
            on_new_connection: typed(s, &instance, "proxy_on_new_connection")?,
            on_downstream_data: typed(s, &instance, "proxy_on_downstream_data")?,
            on_upstream_data: typed(s, &instance, "proxy_on_upstream_data")?,
            on_downstream_connection_close: typed(
                s,
                &instance,
                "proxy_on_downstream_connection_close",
            )?,
            on_upstream_connection_close: typed(
                s,
                &instance,
                "proxy_on_upstream_connection_close",
            )?,
        };
        let init = typed::<(), ()>(&mut store, &instance, "_initialize")?;
        let start = typed::<(), ()>(&mut store, &instance, "_start")?;
        let main = typed::<(i32, i32), i32>(&mut store, &instance, "main")?;
        let main_void = typed::<(), i32>(&mut store, &instance, "__main_void")?;
        let mut vm = VmInner {
            store,
            exports,
            failed: None,
            failed_at: 0,
            deadline: opts.deadline,
            deadline_ticks: ticks,
            next_context_id: 1,
        };
        // As cpp-host's startVm: a reactor's _initialize then main(0, 0) or __main_void; a
        // command's _start. All on the VM context (id 0), which never gets proxy_on_* calls.
        // Envoy restricts the host calls a module may make while it starts.
        vm.store.data_mut().restricted = Some(Restriction::Start);
        let started = (|| {
            if let Some(f) = init {
                vm.call("_initialize", 0, Some(f), ())?;
                if let Some(f) = main {
                    vm.call("main", 0, Some(f), (0, 0))?;
                } else if let Some(f) = main_void {
                    vm.call("__main_void", 0, Some(f), ())?;
                }
            } else if let Some(f) = start {
                vm.call("_start", 0, Some(f), ())?;
            }
            Ok::<(), Error>(())
        })();
        vm.store.data_mut().restricted = None;
        started?;
        let vm = Rc::new(RefCell::new(vm));
        shared.borrow_mut().vms.push(Rc::downgrade(&vm));
        Ok(vm)
    }

    /// A fresh context id.
    pub fn new_context_id(&mut self) -> u32 {
        let id = self.next_context_id;
        self.next_context_id += 1;
        id
    }

    /// Call a callback on context `ctx`. A missing export is skipped (`Ok(None)`). A failure marks
    /// the VM failed.
    pub fn call<P: WasmParams, R: WasmResults>(
        &mut self,
        name: &str,
        ctx: u32,
        f: Option<Func<P, R>>,
        args: P,
    ) -> Result<Option<R>> {
        if let Some(e) = &self.failed {
            return Err(Error::VmFailed(e.to_string()));
        }
        let Some(f) = f else { return Ok(None) };
        {
            let d = self.store.data_mut();
            d.current = ctx;
            d.effective = None;
        }
        self.store.set_epoch_deadline(self.deadline_ticks);
        let out = f.call(&mut self.store, args);
        let d = self.store.data_mut();
        d.effective = None;
        // Envoy applies continue_stream after the callback: the resumed maps are released.
        if d.resumed_dirty {
            d.resumed_dirty = false;
            for st in d.streams.values_mut() {
                if st.resumed.len() > st.resumed_applied {
                    for &t in &st.resumed[st.resumed_applied..] {
                        st.request_headers_held = false;
                        st.request_trailers_held = false;
                        st.request_body_held = false;
                        if t == 1 {
                            st.response_headers_held = false;
                            st.response_trailers_held = false;
                            st.response_body_held = false;
                        }
                    }
                    st.resumed_applied = st.resumed.len();
                }
            }
        }
        // Roots that called proxy_done are deleted once the callback has returned.
        if !d.done_called.is_empty() {
            let done = std::mem::take(&mut d.done_called);
            if out.is_ok() {
                for root in done {
                    let f = self.exports.on_delete.clone();
                    self.call("proxy_on_delete", root, f, root as i32)?;
                    self.store.data_mut().roots.remove(&root);
                }
            }
        }
        match out {
            Ok(r) => {
                // A restricted call in malloc fails the VM (Envoy: RuntimeError), while the host
                // call that needed the memory returned an error status and the callback went on.
                if let Some(Abort::Restricted(_, Restriction::Malloc)) = self.store.data().abort {
                    let err = self.classify(name, wasmtime::Error::msg("restricted_callback"));
                    self.failed = Some(err);
                    self.failed_at = self.store.data().shared.borrow().now;
                }
                Ok(Some(r))
            }
            Err(e) => {
                let err = self.classify(name, e);
                self.failed = Some(err.clone());
                self.failed_at = self.store.data().shared.borrow().now;
                Err(err)
            }
        }
    }

    /// A headers callback in the module's arity.
    pub fn call_headers(
        &mut self,
        name: &str,
        ctx: u32,
        f: Option<Callback3>,
        count: i32,
        end_of_stream: bool,
    ) -> Result<Option<i32>> {
        match f {
            None => Ok(None),
            Some(Callback3::Three(f)) => self.call(
                name,
                ctx,
                Some(f),
                (ctx as i32, count, end_of_stream as i32),
            ),
            Some(Callback3::Two(f)) => self.call(name, ctx, Some(f), (ctx as i32, count)),
        }
    }

    fn classify(&mut self, callback: &str, e: wasmtime::Error) -> Error {
        let callback = callback.to_string();
        let d = self.store.data_mut();
        if let Some(abort) = d.abort.take() {
            return match abort {
                Abort::Exit(code) => Error::Exit { callback, code },
                Abort::Unsupported(import) => Error::UnsupportedImport { callback, import },
                Abort::Restricted(function, r) => Error::RestrictedCall {
                    callback: match r {
                        Restriction::Start => callback,
                        Restriction::Malloc => format!("malloc (in {callback})"),
                    },
                    function: function.to_string(),
                    allowed: r.allowed().join(", "),
                },
            };
        }
        if d.limiter.breached {
            return Error::MemoryLimit {
                callback,
                limit: d.limiter.cap,
            };
        }
        if e.downcast_ref::<Trap>() == Some(&Trap::Interrupt) {
            return Error::Timeout {
                callback,
                millis: self.deadline.as_millis() as u64,
            };
        }
        Error::Trap {
            callback,
            message: format!("{e:?}"),
        }
    }
}

fn deadline_ticks(d: Duration) -> u64 {
    (d.as_nanos() / EPOCH_TICK.as_nanos()).max(1) as u64 + 1
}
