//! Plugins (a root context in a VM) and the streams they filter.

use crate::abi::Action;
use crate::error::{Error, Result};
use crate::headers::HeaderMap;
use crate::host::Host;
use crate::runtime::Module;
use crate::vm::{LocalResponse, RootCtx, StreamCtx, Vm, VmInner, VmOptions};
use std::cell::RefCell;
use std::rc::Rc;
use std::time::Duration;

/// What happens to streams once the plugin's VM has failed (Envoy's `failure_policy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FailurePolicy {
    /// Streams get a local 503 (Envoy's default).
    #[default]
    FailClosed,
    /// Streams pass through as if the filter were not there.
    FailOpen,
    /// The next stream gets a fresh VM (started and configured again).
    Reload,
}

/// Status of the local reply Envoy sends when a fail-closed plugin cannot run.
pub const FAIL_CLOSED_STATUS: u32 = 503;

/// How long FAIL_RELOAD waits after a failure before building a new VM (Envoy's default
/// `reload_config.backoff.base_interval`); measured on the host clock.
pub const RELOAD_BACKOFF: Duration = Duration::from_secs(1);

/// Default per-callback deadline. Envoy has none (a callback that never returns holds its
/// worker for good); the harness stops it so that a test ends.
pub const DEFAULT_DEADLINE: Duration = Duration::from_secs(1);
/// Default memory cap per VM: 1 GiB, where Envoy 1.40's V8 refuses `memory.grow` (the request
/// returns -1 and the module goes on, in both).
pub const DEFAULT_MEMORY_CAP: usize = 1 << 30;

/// Builds a [`Plugin`]: root id, configuration, VM id and configuration, name, failure policy,
/// limits. Start it with [`PluginBuilder::start`].
pub struct PluginBuilder {
    host: Host,
    module: Module,
    root: RootCtx,
    vm_id: String,
    vm_configuration: Vec<u8>,
    policy: FailurePolicy,
    deadline: Duration,
    memory_cap: usize,
    share: Option<Vm>,
    canary: bool,
    main_thread: bool,
}

impl PluginBuilder {
    pub(crate) fn new(host: Host, module: Module) -> PluginBuilder {
        PluginBuilder {
            host,
            module,
            root: RootCtx::default(),
            vm_id: String::new(),
            vm_configuration: Vec::new(),
            policy: FailurePolicy::FailClosed,
            deadline: DEFAULT_DEADLINE,
            memory_cap: DEFAULT_MEMORY_CAP,
            share: None,
            canary: false,
            main_thread: false,
        }
    }

    /// The root id (`config.root_id` in Envoy).
    pub fn root_id(mut self, id: &str) -> Self {
        self.root.root_id = id.to_string();
        self
    }

    /// The plugin configuration (`config.configuration`).
    pub fn configuration(mut self, bytes: impl AsRef<[u8]>) -> Self {
        self.root.configuration = bytes.as_ref().to_vec();
        self
    }

    /// The plugin name (`config.name`, the `plugin_name` property).
    pub fn name(mut self, name: &str) -> Self {
        self.root.name = name.to_string();
        self
    }

    /// The VM id (`vm_config.vm_id`): shared data and queues are scoped by it.
    pub fn vm_id(mut self, id: &str) -> Self {
        self.vm_id = id.to_string();
        self
    }

    /// The VM configuration (`vm_config.configuration`), seen by `proxy_on_vm_start`.
    pub fn vm_configuration(mut self, bytes: impl AsRef<[u8]>) -> Self {
        self.vm_configuration = bytes.as_ref().to_vec();
        self
    }

    /// What streams get after the VM failed.
    pub fn failure_policy(mut self, p: FailurePolicy) -> Self {
        self.policy = p;
        self
    }

    /// The longest one callback may run before it is interrupted.
    pub fn deadline(mut self, d: Duration) -> Self {
        self.deadline = d;
        self
    }

    /// The most linear memory the VM may have.
    pub fn memory_cap(mut self, bytes: usize) -> Self {
        self.memory_cap = bytes;
        self
    }

    /// Run this plugin in the VM of `other` (as Envoy does for plugins with the same VM config).
    pub fn in_vm_of(mut self, other: &Plugin) -> Self {
        self.share = Some(other.inner.borrow().vm.clone());
        self.vm_id = other.inner.borrow().vm.borrow().store.data().vm_id.clone();
        self
    }

    /// Envoy's configuration canary: before the plugin's own VM starts, a throwaway VM of the
    /// same module runs `proxy_on_vm_start` and `proxy_on_configure` and is destroyed (with no
    /// `proxy_on_done`), so a module's start-up logs and metric definitions happen twice and what
    /// the canary set up (a tick period, say) is gone. Envoy 1.40 does this for every plugin it
    /// creates (cpp-host's `createWasm` checks the configuration in a clone of the base VM);
    /// off by default, so a test counts one start. Ignored with [`PluginBuilder::in_vm_of`].
    pub fn canary(mut self, on: bool) -> Self {
        self.canary = on;
        self
    }

    /// Envoy's main-thread copy: Envoy 1.40 runs an HTTP filter's plugin on every thread, its
    /// main thread included, though streams only reach the workers' copies. With this, a second
    /// VM of the module is started and configured before the plugin's own, and kept: it logs its
    /// start-up, defines its metrics and ticks like Envoy's, and never sees a stream. (A
    /// `WasmService` with `singleton: true` runs on the main thread only: that is the plugin's
    /// own VM, without this.) Off by default. Ignored with [`PluginBuilder::in_vm_of`].
    pub fn main_thread(mut self, on: bool) -> Self {
        self.main_thread = on;
        self
    }

    /// Start the VM (unless shared), create the root context and configure it. Fails with the
    /// module's error, or [`Error::ConfigureFailed`] when `proxy_on_configure` returns false.
    pub fn start(self) -> Result<Plugin> {
        if self.canary && self.share.is_none() {
            let canary = self.new_vm()?;
            configure(&canary, &self.root)?;
            drop(canary);
            // Work the canary queued has nowhere to go now: it is skipped, as Envoy drops it.
            self.host.run_deferred()?;
        }
        let main_thread = if self.main_thread && self.share.is_none() {
            let vm = self.new_vm()?;
            configure(&vm, &self.root)?;
            self.host.run_deferred()?;
            Some(vm)
        } else {
            None
        };
        let vm = match &self.share {
            Some(vm) => vm.clone(),
            None => self.new_vm()?,
        };
        let root_ctx = configure(&vm, &self.root)?;
        self.host.run_deferred()?;
        Ok(Plugin {
            inner: Rc::new(RefCell::new(PluginInner {
                host: self.host.clone(),
                vm,
                root_ctx,
                builder: self,
                _main_thread: main_thread,
            })),
        })
    }

    fn new_vm(&self) -> Result<Vm> {
        VmInner::start(
            &self.module,
            self.host.shared.clone(),
            VmOptions {
                vm_id: self.vm_id.clone(),
                vm_configuration: self.vm_configuration.clone(),
                memory_cap: self.memory_cap,
                deadline: self.deadline,
            },
        )
    }
}

/// Create and start a root context as cpp-host does: `proxy_on_context_create(root, 0)`, then
/// `proxy_on_vm_start(root, vm_config_len)`, then `proxy_on_configure(root, plugin_config_len)`.
/// The plugin configuration is visible during the first and the last.
fn configure(vm: &Vm, root: &RootCtx) -> Result<u32> {
    let mut v = vm.borrow_mut();
    let id = v.new_context_id();
    v.store.data_mut().roots.insert(id, root.clone());
    let result = (|| {
        v.store.data_mut().plugin_config_visible = true;
        let create = v.exports.on_context_create.clone();
        v.call("proxy_on_context_create", id, create, (id as i32, 0))?;
        v.store.data_mut().plugin_config_visible = false;
        let vm_cfg = v.store.data().vm_configuration.len() as i32;
        let start = v.exports.on_vm_start.clone();
        if v.call("proxy_on_vm_start", id, start, (id as i32, vm_cfg))? == Some(0) {
            return Err(Error::VmStartFailed {
                vm_id: v.store.data().vm_id.clone(),
            });
        }
        v.store.data_mut().plugin_config_visible = true;
        let f = v.exports.on_configure.clone();
        let ok = v.call(
            "proxy_on_configure",
            id,
            f,
            (id as i32, root.configuration.len() as i32),
        )?;
        if ok == Some(0) {
            return Err(Error::ConfigureFailed {
                root_id: root.root_id.clone(),
            });
        }
        Ok(id)
    })();
    v.store.data_mut().plugin_config_visible = false;
    if result.is_err() {
        v.store.data_mut().roots.remove(&id);
    }
    result
}

struct PluginInner {
    host: Host,
    vm: Vm,
    root_ctx: u32,
    builder: PluginBuilder,
    /// Envoy's main-thread copy ([`PluginBuilder::main_thread`]): kept alive so that it ticks.
    _main_thread: Option<Vm>,
}

/// A configured plugin: a root context in a VM. Clone it freely; streams keep it alive.
#[derive(Clone)]
pub struct Plugin {
    inner: Rc<RefCell<PluginInner>>,
}

impl Plugin {
    /// The host it runs in.
    pub fn host(&self) -> Host {
        self.inner.borrow().host.clone()
    }

    /// The root context id.
    pub fn root_context_id(&self) -> u32 {
        self.inner.borrow().root_ctx
    }

    /// The error that failed the VM, if it failed.
    pub fn failure(&self) -> Option<Error> {
        self.inner.borrow().vm.borrow().failed.clone()
    }

    /// The size of the VM's linear memory now, in bytes: what the module has grown it to.
    /// Memory that keeps growing over many identical requests is a leak.
    pub fn memory_size(&self) -> usize {
        let p = self.inner.borrow();
        let v = p.vm.borrow();
        v.store.data().memory.map_or(0, |m| m.data_size(&v.store))
    }

    /// Open an HTTP stream. Its context is created (`proxy_on_context_create`) when request
    /// headers arrive, as Envoy does. Once the VM has failed, the failure policy decides:
    /// fail-open streams skip the module, fail-closed ones get a local 503, and reload starts a
    /// fresh VM first once [`RELOAD_BACKOFF`] has passed on the host clock (503 before that).
    pub fn http_stream(&self) -> Result<HttpStream> {
        let policy = self.inner.borrow().builder.policy;
        if policy == FailurePolicy::Reload
            && let Some(failed_at) = self.failed_at()
        {
            let now = self.host().now_nanos();
            if now.saturating_sub(failed_at) >= RELOAD_BACKOFF.as_nanos() as u64 {
                self.reload()?;
            }
        }
        let (vm, root, host, failed) = {
            let p = self.inner.borrow();
            let failed = p.vm.borrow().failed.is_some();
            (p.vm.clone(), p.root_ctx, p.host.clone(), failed)
        };
        let mut stream = HttpStream {
            _plugin: self.clone(),
            host,
            vm: vm.clone(),
            id: 0,
            root,
            bypass: false,
            error: None,
            request_forwarded: Vec::new(),
            response_forwarded: Vec::new(),
            failure_reply: None,
            finished: None,
            local_reply_sent: false,
            response_started: false,
            reset: false,
        };
        if failed {
            match policy {
                FailurePolicy::FailOpen => stream.bypass = true,
                FailurePolicy::FailClosed | FailurePolicy::Reload => stream.fail_closed(),
            }
        }
        let mut v = vm.borrow_mut();
        let id = v.new_context_id();
        stream.id = id;
        let d = v.store.data_mut();
        let ctx = d.new_stream(root, false);
        d.streams.insert(id, ctx);
        drop(v);
        Ok(stream)
    }

    fn failed_at(&self) -> Option<u64> {
        let p = self.inner.borrow();
        let v = p.vm.borrow();
        v.failed.as_ref().map(|_| v.failed_at)
    }

    /// Answer a pending HTTP call this plugin's VM made (tokens are per VM).
    pub fn respond_http_call(
        &self,
        token: u32,
        headers: &[(&str, &str)],
        body: impl AsRef<[u8]>,
        trailers: &[(&str, &str)],
    ) -> Result<()> {
        let vm_index = self.inner.borrow().vm.borrow().store.data().vm_index;
        self.host()
            .respond_http_call_in(vm_index, token, headers, body.as_ref(), trailers)
    }

    /// Replace a failed VM with a fresh one, started and configured as before.
    pub fn reload(&self) -> Result<()> {
        let mut p = self.inner.borrow_mut();
        let vm = p.builder.new_vm()?;
        let root = configure(&vm, &p.builder.root)?;
        p.vm = vm;
        p.root_ctx = root;
        Ok(())
    }

    /// Call `proxy_on_foreign_function(root, function_id, args)` on the root context, with the
    /// arguments in the `CallData` buffer.
    pub fn call_foreign_function(&self, function_id: u32, args: &[u8]) -> Result<()> {
        let (vm, root) = {
            let p = self.inner.borrow();
            (p.vm.clone(), p.root_ctx)
        };
        {
            let mut v = vm.borrow_mut();
            v.store.data_mut().call_data = args.to_vec();
            let f = v.exports.on_foreign_function.clone();
            let r = v.call(
                "proxy_on_foreign_function",
                root,
                f,
                (root as i32, function_id as i32, args.len() as i32),
            );
            v.store.data_mut().call_data.clear();
            r?;
        }
        self.host().run_deferred()
    }

    /// The root context's tick period (`proxy_set_tick_period_milliseconds`), `None` when it does
    /// not tick.
    pub fn tick_period(&self) -> Option<Duration> {
        let p = self.inner.borrow();
        let v = p.vm.borrow();
        v.store.data().roots.get(&p.root_ctx)?.tick_period
    }

    /// Tear the root context down as Envoy does on config removal: `proxy_on_done` then
    /// `proxy_on_delete`. Returns what `proxy_on_done` returned (false: the plugin will call
    /// `proxy_done` later).
    pub fn shutdown(&self) -> Result<bool> {
        let (vm, root) = {
            let p = self.inner.borrow();
            (p.vm.clone(), p.root_ctx)
        };
        let mut v = vm.borrow_mut();
        let f = v.exports.on_done.clone();
        let done = v.call("proxy_on_done", root, f, root as i32)? != Some(0);
        if done {
            let f = v.exports.on_delete.clone();
            v.call("proxy_on_delete", root, f, root as i32)?;
            v.store.data_mut().roots.remove(&root);
        } else {
            // The root stays until it calls proxy_done (then it is deleted).
            v.store.data_mut().pending_done.insert(root);
        }
        Ok(done)
    }
}

/// One HTTP stream through a plugin. Feed it what a client and upstream send, read what the
/// filter did. Every event returns the module's [`Action`] (forced to `Pause` when the module sent
/// a local response, as Envoy does). A failing callback returns its error after the stream got
/// Envoy's failure reply (a local 503, see [`HttpStream::local_response`]).
pub struct HttpStream {
    /// Keeps the plugin alive as long as its streams.
    _plugin: Plugin,
    /// The plugin's host (kept here: deferred work is checked after every callback).
    host: Host,
    vm: Vm,
    id: u32,
    root: u32,
    /// The module is not consulted (fail-open, or after a failure reply).
    bypass: bool,
    /// Boxed, as `failure_reply`: both are rare, and a small stream moves cheaply (it is
    /// returned by value for every request).
    error: Option<Box<Error>>,
    request_forwarded: Vec<u8>,
    response_forwarded: Vec<u8>,
    failure_reply: Option<Box<LocalResponse>>,
    /// The stream's state once completed (the VM forgets it).
    finished: Option<Box<StreamCtx>>,
    local_reply_sent: bool,
    /// The response headers went on to the client (the filter continued them).
    response_started: bool,
    /// The VM failed after that: Envoy resets the stream, too late for its 503.
    reset: bool,
}

impl Drop for HttpStream {
    fn drop(&mut self) {
        // Nobody can read a completed stream's maps any more: their storage serves the next
        // streams' headers. (A VM borrowed right now, which a stream dropped from inside a host
        // callback would see, just lets them be freed.)
        if let Some(s) = self.finished.take()
            && let Ok(mut v) = self.vm.try_borrow_mut()
        {
            v.store.data_mut().recycle_stream(s);
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Side {
    Request,
    Response,
}

impl HttpStream {
    /// The context id.
    pub fn context_id(&self) -> u32 {
        self.id
    }

    /// Envoy's reply when the VM cannot run: 503, empty body, details `wasm_fail_stream`, gRPC
    /// status 14 (UNAVAILABLE). The module is not called again for this stream.
    fn fail_closed(&mut self) {
        self.bypass = true;
        self.failure_reply = Some(Box::new(LocalResponse {
            status: FAIL_CLOSED_STATUS,
            details: "wasm_fail_stream".into(),
            body: Vec::new(),
            headers: HeaderMap::new(),
            grpc_status: 14,
        }));
    }

    fn fail(&mut self, e: Error) -> Error {
        // Whatever the policy, the stream in flight when the VM fails gets the 503, unless its
        // response headers already went to the client: then Envoy can only reset it.
        if self.response_started {
            self.bypass = true;
            self.reset = true;
        } else {
            self.fail_closed();
        }
        self.error = Some(Box::new(e.clone()));
        e
    }

    /// Change the stream's state. Once completed, the state is a snapshot: a change lands on a
    /// copy and is lost (the VM forgot the stream).
    fn with<T>(&self, f: impl FnOnce(&mut StreamCtx) -> T) -> Option<T> {
        if self.id != 0
            && let Some(s) = self
                .vm
                .borrow_mut()
                .store
                .data_mut()
                .streams
                .get_mut(&self.id)
        {
            return Some(f(s));
        }
        self.finished.as_deref().cloned().as_mut().map(f)
    }

    /// Read the stream's state: live in the VM, or the snapshot taken when it completed.
    fn read<T>(&self, f: impl FnOnce(&StreamCtx) -> T) -> Option<T> {
        if self.id != 0
            && let Some(s) = self.vm.borrow().store.data().streams.get(&self.id)
        {
            return Some(f(s));
        }
        self.finished.as_deref().map(f)
    }

    /// A map of `pairs` in storage a finished stream gave back (see `Drop`).
    fn pooled_map(&self, pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = self.vm.borrow_mut().store.data_mut().map_pool.take();
        map.extend_from_pairs(pairs);
        map
    }

    /// Create the context on first use (Envoy does so on request headers).
    fn ensure_created(&mut self) -> Result<()> {
        if self.bypass {
            return Ok(());
        }
        let (id, root) = (self.id, self.root);
        let r = {
            let mut v = self.vm.borrow_mut();
            let live = match id {
                0 => None,
                _ => v.store.data_mut().streams.get_mut(&id),
            };
            // A stream the VM forgot counts as created unless its snapshot says otherwise.
            let created = match live {
                Some(s) => std::mem::replace(&mut s.created, true),
                None => self.finished.as_ref().is_none_or(|s| s.created),
            };
            if created {
                return Ok(());
            }
            let f = v.exports.on_context_create.clone();
            v.call("proxy_on_context_create", id, f, (id as i32, root as i32))
        };
        r.map(|_| ()).map_err(|e| self.fail(e))
    }

    /// After a callback: turn its result into an action, send a local reply it asked for, run
    /// deferred host work.
    fn after(&mut self, side: Side, r: Result<Option<i32>>) -> Result<Action> {
        let raw = match r {
            Ok(a) => a.unwrap_or(0),
            Err(e) => return Err(self.fail(e)),
        };
        let mut action = Action::from_i32(raw);
        // Envoy forces a stop when the filter sent a local reply in this callback.
        if self.pending_local_reply() {
            action = Action::Pause;
            if side == Side::Request {
                self.send_local_reply()?;
                return Ok(action);
            }
            self.local_reply_sent = true;
        }
        self.host.run_deferred()?;
        Ok(action)
    }

    fn pending_local_reply(&self) -> bool {
        !self.local_reply_sent && self.read(|s| s.local_response.is_some()).unwrap_or(false)
    }

    /// Send the filter's local reply as Envoy does once the callback returned: it passes this
    /// filter's response callbacks like any response.
    fn send_local_reply(&mut self) -> Result<()> {
        self.local_reply_sent = true;
        let Some(reply) = self.read(|s| s.local_response.clone()).flatten() else {
            return Ok(());
        };
        // Envoy's order: the status, the filter's own headers, then the framing it adds.
        let mut headers: Vec<(String, String)> = vec![(":status".into(), reply.status.to_string())];
        headers.extend(reply.headers.to_pairs());
        if !reply.body.is_empty() {
            headers.push(("content-length".into(), reply.body.len().to_string()));
            headers.push(("content-type".into(), "text/plain".into()));
        }
        let pairs: Vec<(&str, &str)> = headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        self.host.run_deferred()?;
        self.headers(Side::Response, &pairs, reply.body.is_empty())?;
        if !reply.body.is_empty() {
            self.body(Side::Response, &reply.body, true)?;
        }
        Ok(())
    }

    /// A reply Envoy itself sends on this stream, e.g. `413 Payload Too Large` when the request
    /// body a filter buffers exceeds the buffer limit: like a filter's local reply it passes this
    /// filter's response callbacks (`:status`, then `content-length` and `content-type:
    /// text/plain` for a body; the body in one callback with end of stream). `details` is
    /// Envoy's response code details, which `response.code_details` reads.
    pub fn send_proxy_reply(&mut self, status: u32, body: &[u8], details: &str) -> Result<()> {
        self.with(|s| s.proxy_reply_details = Some(details.to_string()));
        let mut headers: Vec<(String, String)> = vec![(":status".into(), status.to_string())];
        if !body.is_empty() {
            headers.push(("content-length".into(), body.len().to_string()));
            headers.push(("content-type".into(), "text/plain".into()));
        }
        let pairs: Vec<(&str, &str)> = headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        self.headers(Side::Response, &pairs, body.is_empty())?;
        if !body.is_empty() {
            self.body(Side::Response, body, true)?;
        }
        Ok(())
    }

    /// Apply what the filter did for this stream outside its own callbacks, e.g. a local reply
    /// sent from `proxy_on_http_call_response`: the reply runs through the response callbacks.
    /// Call it after answering a call the stream is waiting for.
    pub fn sync(&mut self) -> Result<()> {
        if self.pending_local_reply() {
            self.send_local_reply()?;
        }
        Ok(())
    }

    fn headers(
        &mut self,
        side: Side,
        pairs: &[(&str, &str)],
        end_of_stream: bool,
    ) -> Result<Action> {
        self.ensure_created()?;
        let bypass = self.bypass;
        let n = pairs.len() as i32;
        let live = {
            let mut v = self.vm.borrow_mut();
            let d = v.store.data_mut();
            let stream = match self.id {
                0 => None,
                id => d.streams.get_mut(&id),
            };
            match stream {
                Some(s) => {
                    let (slot, held) = match side {
                        Side::Request => (&mut s.request_headers, &mut s.request_headers_held),
                        Side::Response => (&mut s.response_headers, &mut s.response_headers_held),
                    };
                    // The map being replaced, if any, else one a finished stream gave back;
                    // filled where it stays.
                    let map = match slot {
                        Some(m) => {
                            m.clear();
                            m
                        }
                        None => slot.insert(d.map_pool.take()),
                    };
                    map.extend_from_pairs(pairs);
                    *held = !bypass;
                    true
                }
                None => false,
            }
        };
        // A completed stream keeps only its snapshot (the new map would land on a copy).
        if !live && self.finished.is_none() {
            return Err(Error::Usage("the stream was completed".into()));
        }
        if bypass {
            return Ok(self.failure_action());
        }
        let out = {
            let mut v = self.vm.borrow_mut();
            let (name, f) = match side {
                Side::Request => (
                    "proxy_on_request_headers",
                    v.exports.on_request_headers.clone(),
                ),
                Side::Response => (
                    "proxy_on_response_headers",
                    v.exports.on_response_headers.clone(),
                ),
            };
            v.call_headers(name, self.id, f, n, end_of_stream)
        };
        let action = self.after(side, out)?;
        if action == Action::Continue {
            self.response_started |= side == Side::Response;
            // Envoy releases the map once the filter continues.
            self.with(|s| match side {
                Side::Request => s.request_headers_held = false,
                Side::Response => s.response_headers_held = false,
            });
        }
        Ok(action)
    }

    /// What a bypassed event returns: Continue when failing open, a stop after a failure reply.
    fn failure_action(&self) -> Action {
        if self.failure_reply.is_some() {
            Action::Pause
        } else {
            Action::Continue
        }
    }

    /// Request headers from the client (`proxy_on_request_headers`).
    pub fn send_request_headers(
        &mut self,
        headers: &[(&str, &str)],
        end_of_stream: bool,
    ) -> Result<Action> {
        self.headers(Side::Request, headers, end_of_stream)
    }

    /// Response headers from the upstream (`proxy_on_response_headers`).
    pub fn send_response_headers(
        &mut self,
        headers: &[(&str, &str)],
        end_of_stream: bool,
    ) -> Result<Action> {
        self.headers(Side::Response, headers, end_of_stream)
    }

    fn body(&mut self, side: Side, chunk: &[u8], end_of_stream: bool) -> Result<Action> {
        self.ensure_created()?;
        let bypass = self.bypass;
        let size = self.with(|s| {
            let (buf, held) = match side {
                Side::Request => (&mut s.request_body, &mut s.request_body_held),
                Side::Response => (&mut s.response_body, &mut s.response_body_held),
            };
            buf.extend_from_slice(chunk);
            *held = !bypass;
            let size = buf.len() as i32;
            match side {
                Side::Request => s.request_bytes += chunk.len() as u64,
                Side::Response => s.response_bytes += chunk.len() as u64,
            }
            size
        });
        let Some(size) = size else {
            return Err(Error::Usage("the stream was completed".into()));
        };
        let action = if bypass {
            self.failure_action()
        } else {
            let out = {
                let mut v = self.vm.borrow_mut();
                let (name, f) = match side {
                    Side::Request => ("proxy_on_request_body", v.exports.on_request_body.clone()),
                    Side::Response => {
                        ("proxy_on_response_body", v.exports.on_response_body.clone())
                    }
                };
                v.call(
                    name,
                    self.id,
                    f,
                    (self.id as i32, size, end_of_stream as i32),
                )
            };
            self.after(side, out)?
        };
        // Continue moves the buffered body on; a pause keeps it buffered for the next callback.
        let data = self
            .with(|s| {
                let (buf, held) = match side {
                    Side::Request => (&mut s.request_body, &mut s.request_body_held),
                    Side::Response => (&mut s.response_body, &mut s.response_body_held),
                };
                *held = false;
                if action == Action::Continue {
                    std::mem::take(buf)
                } else {
                    Vec::new()
                }
            })
            .unwrap_or_default();
        match side {
            Side::Request => self.request_forwarded.extend(data),
            Side::Response => self.response_forwarded.extend(data),
        }
        Ok(action)
    }

    /// A chunk of request body (`proxy_on_request_body` with the buffered size).
    pub fn send_request_body(&mut self, chunk: &[u8], end_of_stream: bool) -> Result<Action> {
        self.body(Side::Request, chunk, end_of_stream)
    }

    /// A chunk of response body.
    pub fn send_response_body(&mut self, chunk: &[u8], end_of_stream: bool) -> Result<Action> {
        self.body(Side::Response, chunk, end_of_stream)
    }

    fn trailers(&mut self, side: Side, pairs: &[(&str, &str)]) -> Result<Action> {
        let map = self.pooled_map(pairs);
        let n = map.len() as i32;
        self.ensure_created()?;
        let bypass = self.bypass;
        let set = self.with(|s| match side {
            Side::Request => {
                s.request_trailers = Some(map);
                s.request_trailers_held = !bypass;
            }
            Side::Response => {
                s.response_trailers = Some(map);
                s.response_trailers_held = !bypass;
            }
        });
        if set.is_none() {
            return Err(Error::Usage("the stream was completed".into()));
        }
        if bypass {
            return Ok(self.failure_action());
        }
        let out = {
            let mut v = self.vm.borrow_mut();
            let (name, f) = match side {
                Side::Request => (
                    "proxy_on_request_trailers",
                    v.exports.on_request_trailers.clone(),
                ),
                Side::Response => (
                    "proxy_on_response_trailers",
                    v.exports.on_response_trailers.clone(),
                ),
            };
            v.call(name, self.id, f, (self.id as i32, n))
        };
        let action = self.after(side, out)?;
        self.with(|s| match side {
            Side::Request => s.request_trailers_held = false,
            Side::Response => s.response_trailers_held = false,
        });
        Ok(action)
    }

    /// Request trailers.
    pub fn send_request_trailers(&mut self, trailers: &[(&str, &str)]) -> Result<Action> {
        self.trailers(Side::Request, trailers)
    }

    /// Response trailers.
    pub fn send_response_trailers(&mut self, trailers: &[(&str, &str)]) -> Result<Action> {
        self.trailers(Side::Response, trailers)
    }

    /// End the stream as Envoy does: `proxy_on_log` (access-log time, maps readable), then
    /// `proxy_on_done` and `proxy_on_delete`. A stream whose context was never created, or whose
    /// VM failed, gets none of them.
    pub fn complete(&mut self) -> Result<()> {
        if self.id == 0 {
            return Ok(());
        }
        let created = self.read(|s| s.created).unwrap_or(false);
        let mut result = Ok(());
        if created && !self.bypass {
            let ctx = self.id as i32;
            let mut v = self.vm.borrow_mut();
            if let Some(s) = v.store.data_mut().streams.get_mut(&self.id) {
                s.in_log = true;
            }
            let f = v.exports.on_log.clone();
            let r = v
                .call("proxy_on_log", self.id, f, ctx)
                .and_then(|_| {
                    if let Some(s) = v.store.data_mut().streams.get_mut(&self.id) {
                        s.in_log = false;
                    }
                    let f = v.exports.on_done.clone();
                    v.call("proxy_on_done", self.id, f, ctx)
                })
                .and_then(|_| {
                    let f = v.exports.on_delete.clone();
                    v.call("proxy_on_delete", self.id, f, ctx)
                });
            drop(v);
            if let Err(e) = r {
                result = Err(self.fail(e));
            }
        }
        {
            let mut v = self.vm.borrow_mut();
            let d = v.store.data_mut();
            self.finished = d.streams.remove(&self.id);
            if !d.declared.is_empty() {
                d.declared.remove(&self.id);
            }
        }
        self.id = 0;
        result?;
        self.host.run_deferred()
    }

    /// Set a property on this stream (overrides what headers imply and the host's).
    pub fn set_property(&self, path: &[&str], value: impl AsRef<[u8]>) {
        let v = value.as_ref().to_vec();
        self.with(|s| s.properties.insert(path.join("\0"), v));
    }

    /// A filter state object the filter set with `set_envoy_filter_state` (as
    /// `proxy_get_property(["filter_state", NAME])` reads it), also once the stream completed.
    pub fn filter_state(&self, name: &str) -> Option<Vec<u8>> {
        self.read(|s| s.envoy_filter_state.get(name).and_then(|(b, _)| b.clone()))
            .flatten()
    }

    /// How many times the filter called the foreign function `clear_route_cache` on this stream.
    pub fn route_cache_clears(&self) -> u32 {
        self.read(|s| s.route_cache_cleared).unwrap_or(0)
    }

    /// Request headers as the filter left them (what the upstream gets).
    pub fn request_headers(&self) -> HeaderMap {
        self.read(|s| s.request_headers.clone())
            .flatten()
            .unwrap_or_default()
    }

    /// Response headers as the filter left them (what the client gets).
    pub fn response_headers(&self) -> HeaderMap {
        self.read(|s| s.response_headers.clone())
            .flatten()
            .unwrap_or_default()
    }

    /// Request trailers as the filter left them.
    pub fn request_trailers(&self) -> HeaderMap {
        self.read(|s| s.request_trailers.clone())
            .flatten()
            .unwrap_or_default()
    }

    /// Response trailers as the filter left them.
    pub fn response_trailers(&self) -> HeaderMap {
        self.read(|s| s.response_trailers.clone())
            .flatten()
            .unwrap_or_default()
    }

    /// Request body the filter let through, then what it still buffers.
    pub fn request_body(&self) -> Vec<u8> {
        let mut b = self.request_forwarded.clone();
        if let Some(more) = self.read(|s| s.request_body.clone()) {
            b.extend(more);
        }
        b
    }

    /// Response body the filter let through, then what it still buffers.
    pub fn response_body(&self) -> Vec<u8> {
        let mut b = self.response_forwarded.clone();
        if let Some(more) = self.read(|s| s.response_body.clone()) {
            b.extend(more);
        }
        b
    }

    /// The local response the filter sent, or the 503 Envoy sends when the VM cannot run.
    pub fn local_response(&self) -> Option<LocalResponse> {
        self.failure_reply
            .as_deref()
            .cloned()
            .or_else(|| self.read(|s| s.local_response.clone()).flatten())
    }

    /// Headers the proxy's router appends to the request after the filters (Envoy adds
    /// `x-envoy-expected-rq-timeout-ms`): the upstream gets them and `proxy_on_log` reads them;
    /// no filter callback sees them.
    pub fn proxy_request_headers(&mut self, pairs: &[(&str, &str)]) {
        self.with(|s| {
            if let Some(m) = &mut s.request_headers {
                for (k, v) in pairs {
                    m.add(k, v);
                }
            }
        });
    }

    /// Headers the proxy itself appends to the response after the filters (Envoy's connection
    /// manager adds `date` and `server`): the client gets them and `proxy_on_log` reads them;
    /// no filter callback sees them.
    pub fn proxy_response_headers(&mut self, pairs: &[(&str, &str)]) {
        self.with(|s| {
            if let Some(m) = &mut s.response_headers {
                for (k, v) in pairs {
                    m.add(k, v);
                }
            }
        });
    }

    /// Directions the filter resumed with `proxy_continue_stream` (0 request, 1 response).
    pub fn resumed(&self) -> Vec<i32> {
        self.read(|s| s.resumed.clone()).unwrap_or_default()
    }

    /// Directions the filter closed (reset) with `proxy_close_stream`.
    pub fn closed(&self) -> Vec<i32> {
        self.read(|s| s.closed.clone()).unwrap_or_default()
    }

    /// Envoy reset the stream: its VM failed after the response headers had gone on to the
    /// client, too late for the failure reply. The client gets the headers (and any body let
    /// through) and then a reset, never a complete response.
    pub fn was_reset(&self) -> bool {
        self.reset
    }

    /// The error a callback of this stream failed with, if any.
    pub fn error(&self) -> Option<&Error> {
        self.error.as_deref()
    }
}

/// One TCP connection through a network-filter plugin (`proxy_on_new_connection`,
/// `proxy_on_downstream_data`, `proxy_on_upstream_data`, the close callbacks). Data the filter
/// lets through is collected per direction.
pub struct NetworkStream {
    plugin: Plugin,
    vm: Vm,
    id: u32,
    downstream_forwarded: Vec<u8>,
    upstream_forwarded: Vec<u8>,
    closed: bool,
}

impl Plugin {
    /// Open a TCP connection: creates its context and calls `proxy_on_new_connection`.
    pub fn network_stream(&self) -> Result<(NetworkStream, Action)> {
        let (vm, root) = {
            let p = self.inner.borrow();
            (p.vm.clone(), p.root_ctx)
        };
        let id = {
            let mut v = vm.borrow_mut();
            let id = v.new_context_id();
            let d = v.store.data_mut();
            let mut ctx = d.new_stream(root, true);
            ctx.network = true;
            d.streams.insert(id, ctx);
            id
        };
        let out = {
            let mut v = vm.borrow_mut();
            let f = v.exports.on_context_create.clone();
            v.call("proxy_on_context_create", id, f, (id as i32, root as i32))?;
            let f = v.exports.on_new_connection.clone();
            v.call("proxy_on_new_connection", id, f, id as i32)?
        };
        self.host().run_deferred()?;
        let stream = NetworkStream {
            plugin: self.clone(),
            vm,
            id,
            downstream_forwarded: Vec::new(),
            upstream_forwarded: Vec::new(),
            closed: false,
        };
        Ok((stream, Action::from_i32(out.unwrap_or(0))))
    }
}

impl NetworkStream {
    fn data(&mut self, downstream: bool, chunk: &[u8], end_of_stream: bool) -> Result<Action> {
        let out = {
            let mut v = self.vm.borrow_mut();
            let Some(s) = v.store.data_mut().streams.get_mut(&self.id) else {
                return Err(Error::Usage("the connection was closed".into()));
            };
            let buf = if downstream {
                &mut s.downstream_data
            } else {
                &mut s.upstream_data
            };
            buf.extend_from_slice(chunk);
            let size = buf.len() as i32;
            let (name, f) = if downstream {
                (
                    "proxy_on_downstream_data",
                    v.exports.on_downstream_data.clone(),
                )
            } else {
                ("proxy_on_upstream_data", v.exports.on_upstream_data.clone())
            };
            v.call(
                name,
                self.id,
                f,
                (self.id as i32, size, end_of_stream as i32),
            )?
        };
        let action = Action::from_i32(out.unwrap_or(0));
        if action == Action::Continue {
            let mut v = self.vm.borrow_mut();
            if let Some(s) = v.store.data_mut().streams.get_mut(&self.id) {
                let data = std::mem::take(if downstream {
                    &mut s.downstream_data
                } else {
                    &mut s.upstream_data
                });
                if downstream {
                    self.downstream_forwarded.extend(data);
                } else {
                    self.upstream_forwarded.extend(data);
                }
            }
        }
        self.plugin.host().run_deferred()?;
        Ok(action)
    }

    /// Bytes from the client (`proxy_on_downstream_data`).
    pub fn send_downstream_data(&mut self, chunk: &[u8], end_of_stream: bool) -> Result<Action> {
        self.data(true, chunk, end_of_stream)
    }

    /// Bytes from the upstream (`proxy_on_upstream_data`).
    pub fn send_upstream_data(&mut self, chunk: &[u8], end_of_stream: bool) -> Result<Action> {
        self.data(false, chunk, end_of_stream)
    }

    /// What the filter let through towards the upstream (client bytes).
    pub fn downstream_forwarded(&self) -> &[u8] {
        &self.downstream_forwarded
    }

    /// What the filter let through towards the client (upstream bytes).
    pub fn upstream_forwarded(&self) -> &[u8] {
        &self.upstream_forwarded
    }

    /// Close the connection from `peer` as Envoy reports it: the downstream close callback, then
    /// `proxy_on_done`, `proxy_on_log`, `proxy_on_delete` (Envoy's TCP teardown order).
    pub fn close(&mut self, peer: crate::abi::PeerType) -> Result<()> {
        if self.closed {
            return Ok(());
        }
        self.closed = true;
        let ctx = self.id as i32;
        {
            let mut v = self.vm.borrow_mut();
            let f = v.exports.on_downstream_connection_close.clone();
            v.call(
                "proxy_on_downstream_connection_close",
                self.id,
                f,
                (ctx, peer as i32),
            )?;
            let f = v.exports.on_done.clone();
            v.call("proxy_on_done", self.id, f, ctx)?;
            let f = v.exports.on_log.clone();
            v.call("proxy_on_log", self.id, f, ctx)?;
            let f = v.exports.on_delete.clone();
            v.call("proxy_on_delete", self.id, f, ctx)?;
            let d = v.store.data_mut();
            d.streams.remove(&self.id);
            d.declared.remove(&self.id);
        }
        self.plugin.host().run_deferred()
    }

    /// A filter state object the filter set on this connection with `set_envoy_filter_state`
    /// (as `proxy_get_property(["filter_state", NAME])` reads it), while the connection is open.
    pub fn filter_state(&self, name: &str) -> Option<Vec<u8>> {
        let v = self.vm.borrow();
        let s = v.store.data().streams.get(&self.id)?;
        s.envoy_filter_state.get(name).and_then(|(b, _)| b.clone())
    }

    /// The upstream closed (`proxy_on_upstream_connection_close`). Envoy calls it when the
    /// upstream's end of stream reaches the filter, right after `proxy_on_upstream_data` with
    /// `end_of_stream`, with peer type `Unknown`.
    pub fn upstream_closed(&mut self, peer: crate::abi::PeerType) -> Result<()> {
        let ctx = self.id as i32;
        {
            let mut v = self.vm.borrow_mut();
            let f = v.exports.on_upstream_connection_close.clone();
            v.call(
                "proxy_on_upstream_connection_close",
                self.id,
                f,
                (ctx, peer as i32),
            )?;
        }
        self.plugin.host().run_deferred()
    }
}
