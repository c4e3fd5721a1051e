//! The filter's side of the proxy-wasm ABI (v0.2.1), written directly against the host's
//! imports and exports rather than through an SDK.
//!
//! What that buys, per request and per module:
//! - Envoy calls into the VM only for what the filter uses: context create, request headers,
//!   response headers and delete. There is no `proxy_on_log` or `proxy_on_done` export, so Envoy
//!   skips those two calls (an SDK exports every callback).
//! - A stream is an entry in a [`Table`] keyed by context id: no box, no trait object, no hash.
//!   With the seed configuration a request allocates nothing.
//! - Rule counters are summed in the VM and added to Envoy's counters once a second (on the root
//!   context's tick) and when the configuration is replaced or the plugin stops, instead of one
//!   `proxy_increment_metric` per rule per request. Envoy's `/stats` lags by at most a second.
//! - No `std`: no WASI imports, no formatting or panic machinery beyond what error messages
//!   need, and a small allocator ([`crate::heap`]).
//!
//! Only wasm32 builds compile this module.

use crate::config::{self, Config, Direction, Outcome, StreamState};
use crate::heap::Allocator;
use crate::table::Table;
use alloc::format;
use alloc::rc::Rc;
use alloc::string::String;
use alloc::vec::Vec;
use core::cell::{Cell, RefCell};
use core::sync::atomic::{AtomicBool, AtomicU8, Ordering};

#[global_allocator]
static HEAP: Allocator = Allocator::new();

// `memcmp` (which comparing byte strings compiles to) comes from the target's own C library,
// as it would with `std`; nothing else of it is linked.
#[link(name = "c")]
unsafe extern "C" {}

/// The host functions the filter calls (`env` module, ABI v0.2.1).
mod host {
    #[link(wasm_import_module = "env")]
    unsafe extern "C" {
        pub fn proxy_log(level: u32, message: *const u8, size: usize) -> u32;
        pub fn proxy_get_log_level(level: *mut u32) -> u32;
        pub fn proxy_set_tick_period_milliseconds(period: u32) -> u32;
        pub fn proxy_get_buffer_bytes(
            buffer: u32,
            start: usize,
            max: usize,
            data: *mut *mut u8,
            size: *mut usize,
        ) -> u32;
        pub fn proxy_get_property(
            path: *const u8,
            path_size: usize,
            data: *mut *mut u8,
            size: *mut usize,
        ) -> u32;
        pub fn proxy_define_metric(
            kind: u32,
            name: *const u8,
            name_size: usize,
            id: *mut u32,
        ) -> u32;
        pub fn proxy_increment_metric(id: u32, offset: i64) -> u32;
        pub fn proxy_get_header_map_pairs(map: u32, data: *mut *mut u8, size: *mut usize) -> u32;
        pub fn proxy_get_header_map_value(
            map: u32,
            key: *const u8,
            key_size: usize,
            data: *mut *mut u8,
            size: *mut usize,
        ) -> u32;
        pub fn proxy_add_header_map_value(
            map: u32,
            key: *const u8,
            key_size: usize,
            value: *const u8,
            value_size: usize,
        ) -> u32;
        pub fn proxy_replace_header_map_value(
            map: u32,
            key: *const u8,
            key_size: usize,
            value: *const u8,
            value_size: usize,
        ) -> u32;
        pub fn proxy_remove_header_map_value(map: u32, key: *const u8, key_size: usize) -> u32;
    }
}

const OK: u32 = 0;
const PLUGIN_CONFIGURATION: u32 = 7;
const COUNTER: u32 = 0;
const CONTINUE: u32 = 0;

/// Log levels as the ABI numbers them.
#[derive(Clone, Copy)]
enum Level {
    Debug = 1,
    Info = 2,
    Warn = 3,
    Error = 4,
    Critical = 5,
}

/// Envoy's `wasm` log level, refreshed on configure and on every tick, so that a message below it
/// costs neither formatting nor a host call. Starts at `Info`, Envoy's default.
static LEVEL: AtomicU8 = AtomicU8::new(Level::Info as u8);

/// How often each root context adds the summed counters to Envoy's and re-reads the log level.
const TICK_MS: u32 = 1000;

fn enabled(level: Level) -> bool {
    level as u8 >= LEVEL.load(Ordering::Relaxed)
}

/// Log `message` (built only when `level` is enabled).
fn log(level: Level, message: impl FnOnce() -> String) {
    if enabled(level) {
        let m = message();
        // SAFETY: the host reads `m.len()` bytes at `m.as_ptr()` during the call.
        unsafe { host::proxy_log(level as u32, m.as_ptr(), m.len()) };
    }
}

fn refresh_log_level() {
    let mut level = 0;
    // SAFETY: the host writes one u32 to `level`.
    if unsafe { host::proxy_get_log_level(&mut level) } == OK {
        LEVEL.store(level as u8, Ordering::Relaxed);
    }
}

/// Bytes the host allocated in this module (through `proxy_on_memory_allocate`) and handed over.
struct Buf {
    data: *mut u8,
    size: usize,
}

impl Buf {
    fn empty() -> Buf {
        Buf {
            data: core::ptr::null_mut(),
            size: 0,
        }
    }

    fn bytes(&self) -> &[u8] {
        if self.data.is_null() {
            return &[];
        }
        // SAFETY: the host wrote `size` bytes at `data`, a block this module allocated.
        unsafe { core::slice::from_raw_parts(self.data, self.size) }
    }

    fn text(&self) -> Option<String> {
        core::str::from_utf8(self.bytes()).ok().map(String::from)
    }
}

impl Drop for Buf {
    fn drop(&mut self) {
        if !self.data.is_null() {
            // SAFETY: the host got this block from `proxy_on_memory_allocate(size)`.
            unsafe { HEAP.free(self.data, self.size, 1) };
        }
    }
}

/// Run a host call that returns bytes; `None` unless it answered `Ok`.
fn fetch(call: impl FnOnce(*mut *mut u8, *mut usize) -> u32) -> Option<Buf> {
    let mut buf = Buf::empty();
    (call(&mut buf.data, &mut buf.size) == OK).then_some(buf)
}

fn property(path: &[&str]) -> Option<String> {
    let mut key = Vec::new();
    for (i, part) in path.iter().enumerate() {
        if i > 0 {
            key.push(0);
        }
        key.extend_from_slice(part.as_bytes());
    }
    // SAFETY (for every `fetch` below): the host reads the input slices during the call and
    // writes a pointer and a size to the two out-parameters.
    fetch(|d, s| unsafe { host::proxy_get_property(key.as_ptr(), key.len(), d, s) })?.text()
}

fn map_of(d: Direction) -> u32 {
    match d {
        Direction::Request => 0,  // HttpRequestHeaders
        Direction::Response => 2, // HttpResponseHeaders
    }
}

/// The first value of `name` in serialized header pairs: a u32 count, then a (key size, value
/// size) u32 pair per header, then each key and value followed by a NUL.
fn find_pair<'a>(pairs: &'a [u8], name: &str) -> Option<&'a [u8]> {
    let word = |at: usize| -> Option<usize> {
        let b = pairs.get(at..at + 4)?;
        Some(u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
    };
    let n = word(0)?;
    let mut data = 4 + n * 8;
    for i in 0..n {
        let (k, v) = (word(4 + i * 8)?, word(8 + i * 8)?);
        let key = pairs.get(data..data + k)?;
        let value_at = data + k + 1;
        if key == name.as_bytes() {
            return pairs.get(value_at..value_at + v);
        }
        data = value_at + v + 1;
    }
    None
}

/// A configuration in force, with its counters.
struct Active {
    config: Config,
    counters: Vec<Counter>,
}

/// One rule's two Envoy counters and what is not added to them yet.
struct Counter {
    applied_id: u32,
    skipped_id: u32,
    applied: Cell<u32>,
    skipped: Cell<u32>,
}

impl Active {
    /// Add what the rules counted since the last flush to Envoy's counters.
    fn flush(&self) {
        for c in &self.counters {
            for (id, n) in [(c.applied_id, &c.applied), (c.skipped_id, &c.skipped)] {
                if n.get() > 0 {
                    // SAFETY: plain values only.
                    unsafe { host::proxy_increment_metric(id, i64::from(n.replace(0))) };
                }
            }
        }
    }
}

impl Drop for Active {
    /// A configuration replaced or a plugin stopped loses no counts.
    fn drop(&mut self) {
        self.flush();
    }
}

struct Root {
    id: u32,
    active: Option<Rc<Active>>,
}

struct Stream {
    active: Rc<Active>,
    state: StreamState,
}

struct State {
    roots: Vec<Root>,
    streams: Table<Stream>,
}

/// The module's state. The host enters the module one callback at a time and never re-enters it
/// during a host call (except to allocate, which does not touch this), so each export borrows it
/// once; a bug that borrowed it twice would trap rather than corrupt it.
struct Global(RefCell<State>);

// SAFETY: wasm32 without threads: there is one thread.
unsafe impl Sync for Global {}

static STATE: Global = Global(RefCell::new(State {
    roots: Vec::new(),
    streams: Table::new(),
}));

fn with_state<T>(f: impl FnOnce(&mut State) -> T) -> T {
    f(&mut STATE.0.borrow_mut())
}

/// Parse, compile and put in force a root context's configuration.
fn configure(size: usize) -> Option<Active> {
    refresh_log_level();
    let json = if size == 0 {
        Buf::empty()
    } else {
        // SAFETY: see `property`.
        fetch(|d, s| unsafe { host::proxy_get_buffer_bytes(PLUGIN_CONFIGURATION, 0, size, d, s) })
            .unwrap_or_else(Buf::empty)
    };
    let config = match Config::compile(json.bytes(), &property) {
        Ok(c) => c,
        Err(e) => {
            log(Level::Error, || {
                format!("header-filter: invalid configuration: {e}")
            });
            return None;
        }
    };
    let plugin = property(&["plugin_name"])
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| String::from("default"));
    let mut counters = Vec::with_capacity(config.rules().len());
    for (i, rule) in config.rules().iter().enumerate() {
        let define = |outcome: &str| {
            let name = format!("header_filter.{plugin}.rule_{i}.{outcome}");
            let mut id = 0;
            // SAFETY: the host reads the name during the call and writes one u32 to `id`.
            let status =
                unsafe { host::proxy_define_metric(COUNTER, name.as_ptr(), name.len(), &mut id) };
            (status == OK).then_some(id).ok_or(status)
        };
        match (define("applied"), define("skipped")) {
            (Ok(applied_id), Ok(skipped_id)) => counters.push(Counter {
                applied_id,
                skipped_id,
                applied: Cell::new(0),
                skipped: Cell::new(0),
            }),
            (Err(status), _) | (_, Err(status)) => {
                log(Level::Error, || {
                    format!("header-filter: cannot define metrics for rule {i}: status {status}")
                });
                return None;
            }
        }
        log(Level::Info, || {
            format!(
                "header-filter: rule {i}: {} {} {}{}",
                rule.direction,
                rule.op,
                rule.name,
                if rule.when.is_some() {
                    " (conditional)"
                } else {
                    ""
                }
            )
        });
    }
    log(Level::Info, || {
        format!(
            "header-filter: configured {} rule(s) for plugin {plugin}",
            config.rules().len()
        )
    });
    Some(Active { config, counters })
}

/// The host as the rules see it, for one callback of one stream.
struct Host<'a> {
    active: &'a Active,
    /// The request headers as they reached the filter, fetched in one host call the first time
    /// a condition or placeholder reads one.
    request: Option<Buf>,
}

fn write(
    call: unsafe extern "C" fn(u32, *const u8, usize, *const u8, usize) -> u32,
    what: &str,
    map: Direction,
    name: &str,
    value: &str,
) {
    // SAFETY: the host reads both slices during the call.
    let status = unsafe {
        call(
            map_of(map),
            name.as_ptr(),
            name.len(),
            value.as_ptr(),
            value.len(),
        )
    };
    if status != OK {
        log(Level::Warn, || {
            format!("header-filter: cannot {what} {map} header {name}: status {status}")
        });
    }
}

impl config::Stream for Host<'_> {
    fn property(&mut self, path: &[&str]) -> Option<String> {
        property(path)
    }

    fn header(&mut self, map: Direction, name: &str) -> Option<String> {
        fetch(|d, s| unsafe {
            host::proxy_get_header_map_value(map_of(map), name.as_ptr(), name.len(), d, s)
        })?
        .text()
    }

    fn request_header(&mut self, name: &str) -> Option<String> {
        let pairs = self.request.get_or_insert_with(|| {
            fetch(|d, s| unsafe { host::proxy_get_header_map_pairs(0, d, s) })
                .unwrap_or_else(Buf::empty)
        });
        let value = find_pair(pairs.bytes(), name)?;
        core::str::from_utf8(value).ok().map(String::from)
    }

    fn append_header(&mut self, map: Direction, name: &str, value: &str) {
        write(host::proxy_add_header_map_value, "append", map, name, value);
    }

    fn set_header(&mut self, map: Direction, name: &str, value: &str) {
        write(
            host::proxy_replace_header_map_value,
            "set",
            map,
            name,
            value,
        );
    }

    fn remove_header(&mut self, map: Direction, name: &str) {
        // SAFETY: the host reads the name during the call.
        let status =
            unsafe { host::proxy_remove_header_map_value(map_of(map), name.as_ptr(), name.len()) };
        if status != OK {
            log(Level::Warn, || {
                format!("header-filter: cannot remove {map} header {name}: status {status}")
            });
        }
    }

    fn outcome(&mut self, rule: usize, outcome: Outcome) {
        let Some(c) = self.active.counters.get(rule) else {
            return;
        };
        let n = match outcome {
            Outcome::Applied => &c.applied,
            Outcome::Skipped => &c.skipped,
        };
        n.set(n.get().wrapping_add(1));
        if enabled(Level::Debug)
            && let Some(r) = self.active.config.rules().get(rule)
        {
            log(Level::Debug, || {
                format!(
                    "header-filter: rule {rule} ({} {} {}): {outcome}",
                    r.direction, r.op, r.name
                )
            });
        }
    }
}

#[unsafe(no_mangle)]
extern "C" fn proxy_abi_version_0_2_1() {}

#[unsafe(no_mangle)]
extern "C" fn proxy_on_memory_allocate(size: usize) -> *mut u8 {
    HEAP.malloc(size, 1)
}

#[unsafe(no_mangle)]
extern "C" fn proxy_on_vm_start(_root: u32, _size: usize) -> u32 {
    1
}

#[unsafe(no_mangle)]
extern "C" fn proxy_on_configure(root: u32, size: usize) -> u32 {
    let Some(active) = configure(size) else {
        return 0; // Envoy rejects the configuration; a previous one stays in force
    };
    with_state(|s| {
        let active = Some(Rc::new(active));
        match s.roots.iter_mut().find(|r| r.id == root) {
            Some(r) => r.active = active,
            None => s.roots.push(Root { id: root, active }),
        }
    });
    // SAFETY: plain value.
    unsafe { host::proxy_set_tick_period_milliseconds(TICK_MS) };
    1
}

#[unsafe(no_mangle)]
extern "C" fn proxy_on_tick(root: u32) {
    refresh_log_level();
    with_state(|s| {
        if let Some(a) = s
            .roots
            .iter()
            .find(|r| r.id == root)
            .and_then(|r| r.active.as_ref())
        {
            a.flush();
        }
    });
}

#[unsafe(no_mangle)]
extern "C" fn proxy_on_context_create(id: u32, parent: u32) {
    with_state(|s| {
        if parent == 0 {
            if !s.roots.iter().any(|r| r.id == id) {
                s.roots.push(Root { id, active: None });
            }
            return;
        }
        // A stream of a root that has no configuration is let through untouched.
        let Some(active) = s
            .roots
            .iter()
            .find(|r| r.id == parent)
            .and_then(|r| r.active.clone())
        else {
            return;
        };
        let state = active.config.initial_state();
        s.streams.insert(id, Stream { active, state });
    });
}

/// Run a headers phase of stream `id` when its configuration has work there (`wanted`).
fn on_headers(
    id: u32,
    wanted: fn(&Config) -> bool,
    run: impl FnOnce(&Config, &mut StreamState, &mut Host<'_>),
) -> u32 {
    with_state(|s| {
        if let Some(stream) = s.streams.get_mut(id)
            && wanted(&stream.active.config)
        {
            let active = &stream.active;
            let mut host = Host {
                active,
                request: None,
            };
            run(&active.config, &mut stream.state, &mut host);
        }
    });
    CONTINUE
}

#[unsafe(no_mangle)]
extern "C" fn proxy_on_request_headers(id: u32, _headers: usize, _end_of_stream: u32) -> u32 {
    on_headers(id, Config::needs_request_phase, |config, state, host| {
        *state = config.on_request(host);
    })
}

#[unsafe(no_mangle)]
extern "C" fn proxy_on_response_headers(id: u32, _headers: usize, _end_of_stream: u32) -> u32 {
    on_headers(id, Config::has_response_rules, |config, state, host| {
        config.on_response(state, host);
    })
}

#[unsafe(no_mangle)]
extern "C" fn proxy_on_delete(id: u32) {
    // The last reference to a replaced configuration, or a stopped root's, flushes its counters
    // as it drops.
    with_state(|s| {
        if s.streams.remove(id).is_none()
            && let Some(at) = s.roots.iter().position(|r| r.id == id)
        {
            s.roots.swap_remove(at);
        }
    });
}

/// A panic (none is expected: clippy denies the constructs that raise one) reaches Envoy's log
/// as a critical message, then traps, which Envoy handles by its failure policy.
#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    static PANICKING: AtomicBool = AtomicBool::new(false);
    if !PANICKING.swap(true, Ordering::Relaxed) {
        log(Level::Critical, || format!("header-filter: panic: {info}"));
    }
    core::arch::wasm32::unreachable()
}
