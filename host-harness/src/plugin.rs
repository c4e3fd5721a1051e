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

/// Default per-callback deadline.
pub const DEFAULT_DEADLINE: Duration = Duration::from_secs(1);
/// Default memory cap per VM (Envoy's V8 default heap is larger; 256 MiB is plenty for filters).
pub const DEFAULT_MEMORY_CAP: usize = 256 << 20;

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

    /// Start the VM (unless shared), create the root context and configure it. Fails with the
    /// module's error, or [`Error::ConfigureFailed`] when `proxy_on_configure` returns false.
    pub fn start(self) -> Result<Plugin> {
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

fn configure(vm: &Vm, root: &RootCtx) -> Result<u32> {
    let mut v = vm.borrow_mut();
    let id = v.new_context_id();
    v.store.data_mut().roots.insert(id, root.clone());
    let create = v.exports.on_context_create.clone();
    v.call("proxy_on_context_create", id, create, (id as i32, 0))?;
    let f = v.exports.on_configure.clone();
    let ok = v.call(
        "proxy_on_configure",
        id,
        f,
        (id as i32, root.configuration.len() as i32),
    )?;
    if ok == Some(0) {
        v.store.data_mut().roots.remove(&id);
        return Err(Error::ConfigureFailed {
            root_id: root.root_id.clone(),
        });
    }
    Ok(id)
}

struct PluginInner {
    host: Host,
    vm: Vm,
    root_ctx: u32,
    builder: PluginBuilder,
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

    /// Open an HTTP stream: creates its context (`proxy_on_context_create`) unless the VM has
    /// failed, in which case the failure policy decides (fail-open streams skip the module,
    /// fail-closed ones answer 503, reload starts a fresh VM first).
    pub fn http_stream(&self) -> Result<HttpStream> {
        let policy = self.inner.borrow().builder.policy;
        if self.failure().is_some() && policy == FailurePolicy::Reload {
            self.reload()?;
        }
        let (vm, root) = {
            let p = self.inner.borrow();
            (p.vm.clone(), p.root_ctx)
        };
        let mut stream = HttpStream {
            plugin: self.clone(),
            vm: vm.clone(),
            id: 0,
            policy,
            bypass: false,
            error: None,
            request_forwarded: Vec::new(),
            response_forwarded: Vec::new(),
            fail_closed_reply: None,
            finished: None,
        };
        if let Some(e) = self.failure() {
            stream.fail(e);
            return Ok(stream);
        }
        let mut v = vm.borrow_mut();
        let id = v.new_context_id();
        v.store.data_mut().streams.insert(
            id,
            StreamCtx {
                root,
                ..StreamCtx::default()
            },
        );
        stream.id = id;
        let f = v.exports.on_context_create.clone();
        if let Err(e) = v.call("proxy_on_context_create", id, f, (id as i32, root as i32)) {
            drop(v);
            stream.fail(e.clone());
            return Err(e);
        }
        Ok(stream)
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
        let done = v.call("proxy_on_done", root, f, root as i32)?;
        let f = v.exports.on_delete.clone();
        v.call("proxy_on_delete", root, f, root as i32)?;
        v.store.data_mut().roots.remove(&root);
        Ok(done != Some(0))
    }
}

/// One HTTP stream through a plugin. Feed it what a client and upstream send, read what the
/// filter did. Every event returns the module's [`Action`]; a failing callback returns the error
/// after the failure policy has been applied to the stream (see [`HttpStream::local_response`]).
pub struct HttpStream {
    plugin: Plugin,
    vm: Vm,
    id: u32,
    policy: FailurePolicy,
    /// The module is not consulted (fail-open after a failure).
    bypass: bool,
    error: Option<Error>,
    request_forwarded: Vec<u8>,
    response_forwarded: Vec<u8>,
    fail_closed_reply: Option<LocalResponse>,
    /// The stream's state once completed (the VM forgets it).
    finished: Option<StreamCtx>,
}

#[derive(Clone, Copy)]
enum Side {
    Request,
    Response,
}

impl HttpStream {
    /// The context id.
    pub fn context_id(&self) -> u32 {
        self.id
    }

    fn fail(&mut self, e: Error) {
        match self.policy {
            FailurePolicy::FailOpen => self.bypass = true,
            FailurePolicy::FailClosed | FailurePolicy::Reload => {
                self.bypass = true;
                self.fail_closed_reply = Some(LocalResponse {
                    status: FAIL_CLOSED_STATUS,
                    details: "wasm_fail_stream".into(),
                    body: Vec::new(),
                    headers: HeaderMap::new(),
                    grpc_status: -1,
                });
            }
        }
        self.error = Some(e);
    }

    fn with<T>(&self, f: impl FnOnce(&mut StreamCtx) -> T) -> Option<T> {
        let mut v = self.vm.borrow_mut();
        match v.store.data_mut().streams.get_mut(&self.id) {
            Some(s) => Some(f(s)),
            None => self.finished.clone().as_mut().map(f),
        }
    }

    fn finish(&mut self, r: Result<Option<i32>>) -> Result<Action> {
        let r = match r {
            Ok(a) => a.map(Action::from_i32).unwrap_or(Action::Continue),
            Err(e) => {
                self.fail(e.clone());
                return Err(e);
            }
        };
        self.plugin.host().run_deferred()?;
        Ok(r)
    }

    fn headers(
        &mut self,
        side: Side,
        pairs: &[(&str, &str)],
        end_of_stream: bool,
    ) -> Result<Action> {
        let map = HeaderMap::from_pairs(pairs);
        let n = map.len() as i32;
        if self.bypass {
            self.with(|s| match side {
                Side::Request => s.request_headers = Some(map),
                Side::Response => s.response_headers = Some(map),
            });
            return Ok(Action::Continue);
        }
        let out = {
            let mut v = self.vm.borrow_mut();
            let Some(s) = v.store.data_mut().streams.get_mut(&self.id) else {
                return Err(Error::Usage("the stream was completed".into()));
            };
            let (name, f) = match side {
                Side::Request => {
                    s.request_headers = Some(map);
                    (
                        "proxy_on_request_headers",
                        v.exports.on_request_headers.clone(),
                    )
                }
                Side::Response => {
                    s.response_headers = Some(map);
                    (
                        "proxy_on_response_headers",
                        v.exports.on_response_headers.clone(),
                    )
                }
            };
            v.call_headers(name, self.id, f, n, end_of_stream)
        };
        self.finish(out)
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
        let mut v = self.vm.borrow_mut();
        let Some(s) = v.store.data_mut().streams.get_mut(&self.id) else {
            return Err(Error::Usage("the stream was completed".into()));
        };
        let buf = match side {
            Side::Request => &mut s.request_body,
            Side::Response => &mut s.response_body,
        };
        buf.extend_from_slice(chunk);
        let size = buf.len() as i32;
        if self.bypass {
            let data = std::mem::take(buf);
            drop(v);
            self.forwarded(side).extend(data);
            return Ok(Action::Continue);
        }
        let (name, f) = match side {
            Side::Request => ("proxy_on_request_body", v.exports.on_request_body.clone()),
            Side::Response => ("proxy_on_response_body", v.exports.on_response_body.clone()),
        };
        let out = v.call(
            name,
            self.id,
            f,
            (self.id as i32, size, end_of_stream as i32),
        );
        drop(v);
        let action = self.finish(out)?;
        if action == Action::Continue || end_of_stream {
            // What passed the filter leaves its buffer (Envoy moves it on downstream/upstream).
            let data = self
                .with(|s| match side {
                    Side::Request => std::mem::take(&mut s.request_body),
                    Side::Response => std::mem::take(&mut s.response_body),
                })
                .unwrap_or_default();
            if action == Action::Continue {
                self.forwarded(side).extend(data);
            } else {
                // Paused at end of stream: keep it visible until resumed.
                self.with(|s| match side {
                    Side::Request => s.request_body = data,
                    Side::Response => s.response_body = data,
                });
            }
        }
        Ok(action)
    }

    fn forwarded(&mut self, side: Side) -> &mut Vec<u8> {
        match side {
            Side::Request => &mut self.request_forwarded,
            Side::Response => &mut self.response_forwarded,
        }
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
        let map = HeaderMap::from_pairs(pairs);
        let n = map.len() as i32;
        let mut v = self.vm.borrow_mut();
        let Some(s) = v.store.data_mut().streams.get_mut(&self.id) else {
            return Err(Error::Usage("the stream was completed".into()));
        };
        match side {
            Side::Request => s.request_trailers = Some(map),
            Side::Response => s.response_trailers = Some(map),
        }
        if self.bypass {
            return Ok(Action::Continue);
        }
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
        let out = v.call(name, self.id, f, (self.id as i32, n));
        drop(v);
        self.finish(out)
    }

    /// Request trailers.
    pub fn send_request_trailers(&mut self, trailers: &[(&str, &str)]) -> Result<Action> {
        self.trailers(Side::Request, trailers)
    }

    /// Response trailers.
    pub fn send_response_trailers(&mut self, trailers: &[(&str, &str)]) -> Result<Action> {
        self.trailers(Side::Response, trailers)
    }

    /// End the stream as Envoy does: `proxy_on_done`, `proxy_on_log`, `proxy_on_delete`.
    pub fn complete(&mut self) -> Result<()> {
        if self.id == 0 {
            return Ok(());
        }
        if !self.bypass {
            let mut v = self.vm.borrow_mut();
            let ctx = self.id as i32;
            let f = v.exports.on_done.clone();
            let r = v
                .call("proxy_on_done", self.id, f, ctx)
                .and_then(|_| {
                    let f = v.exports.on_log.clone();
                    v.call("proxy_on_log", self.id, f, ctx)
                })
                .and_then(|_| {
                    let f = v.exports.on_delete.clone();
                    v.call("proxy_on_delete", self.id, f, ctx)
                });
            drop(v);
            if let Err(e) = r {
                self.fail(e.clone());
                return Err(e);
            }
        }
        self.finished = self
            .vm
            .borrow_mut()
            .store
            .data_mut()
            .streams
            .remove(&self.id);
        self.id = 0;
        self.plugin.host().run_deferred()
    }

    /// Set a property on this stream (overrides what headers imply and the host's).
    pub fn set_property(&self, path: &[&str], value: impl AsRef<[u8]>) {
        let v = value.as_ref().to_vec();
        self.with(|s| s.properties.insert(path.join("\0"), v));
    }

    /// Request headers as the filter left them (what the upstream gets).
    pub fn request_headers(&self) -> HeaderMap {
        self.with(|s| s.request_headers.clone())
            .flatten()
            .unwrap_or_default()
    }

    /// Response headers as the filter left them (what the client gets).
    pub fn response_headers(&self) -> HeaderMap {
        self.with(|s| s.response_headers.clone())
            .flatten()
            .unwrap_or_default()
    }

    /// Request trailers as the filter left them.
    pub fn request_trailers(&self) -> HeaderMap {
        self.with(|s| s.request_trailers.clone())
            .flatten()
            .unwrap_or_default()
    }

    /// Response trailers as the filter left them.
    pub fn response_trailers(&self) -> HeaderMap {
        self.with(|s| s.response_trailers.clone())
            .flatten()
            .unwrap_or_default()
    }

    /// Request body the filter let through, then what it still buffers.
    pub fn request_body(&self) -> Vec<u8> {
        let mut b = self.request_forwarded.clone();
        b.extend(self.with(|s| s.request_body.clone()).unwrap_or_default());
        b
    }

    /// Response body the filter let through, then what it still buffers.
    pub fn response_body(&self) -> Vec<u8> {
        let mut b = self.response_forwarded.clone();
        b.extend(self.with(|s| s.response_body.clone()).unwrap_or_default());
        b
    }

    /// The local response the filter sent, or the 503 the failure policy sent.
    pub fn local_response(&self) -> Option<LocalResponse> {
        self.with(|s| s.local_response.clone())
            .flatten()
            .or_else(|| self.fail_closed_reply.clone())
    }

    /// Directions the filter resumed with `proxy_continue_stream` (0 request, 1 response).
    pub fn resumed(&self) -> Vec<i32> {
        self.with(|s| s.resumed.clone()).unwrap_or_default()
    }

    /// Directions the filter closed or reset.
    pub fn closed(&self) -> Vec<i32> {
        self.with(|s| s.closed.clone()).unwrap_or_default()
    }

    /// The error a callback of this stream failed with, if any.
    pub fn error(&self) -> Option<&Error> {
        self.error.as_ref()
    }
}
