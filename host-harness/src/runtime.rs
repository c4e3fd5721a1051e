//! The wasmtime engine (with the epoch ticker that interrupts runaway callbacks) and compiled
//! modules, reusable across hosts.

use crate::abi::{AbiVersion, ENV_MODULE, WASI_MODULE, WASI_UNSTABLE_MODULE};
use crate::error::{Error, Result};
use crate::imports;
use crate::vm::VmState;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread;
use std::time::Duration;
use wasmtime::{Config, Engine, ExternType, InstancePre, Linker, Module as WasmModule};

/// How often the engine's epoch advances; callback deadlines are counted in these ticks.
pub const EPOCH_TICK: Duration = Duration::from_millis(5);

struct Ticker {
    stop: Arc<AtomicBool>,
}

impl Drop for Ticker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// A wasmtime engine configured for proxy-wasm modules. Cheap to clone; compile modules with
/// [`Module::from_bytes`] once and run them in any number of [`crate::Host`]s.
#[derive(Clone)]
pub struct Runtime {
    engine: Engine,
    _ticker: Arc<Ticker>,
}

impl Runtime {
    /// A new engine with epoch interruption and a background ticker (stopped when the last clone
    /// of the runtime is dropped).
    pub fn new() -> Runtime {
        let mut config = Config::new();
        config.epoch_interruption(true);
        // Envoy's V8 has no wasm threads or GC; modules built for it use MVP plus common
        // post-MVP features, which wasmtime enables by default.
        let engine = Engine::new(&config).unwrap_or_else(|_| Engine::default());
        let stop = Arc::new(AtomicBool::new(false));
        let (e, s) = (engine.weak(), stop.clone());
        thread::Builder::new()
            .name("proxy-wasm-harness-epoch".into())
            .spawn(move || {
                while !s.load(Ordering::Relaxed) {
                    thread::sleep(EPOCH_TICK);
                    match e.upgrade() {
                        Some(engine) => engine.increment_epoch(),
                        None => break,
                    }
                }
            })
            .ok();
        Runtime {
            engine,
            _ticker: Arc::new(Ticker { stop }),
        }
    }

    /// A runtime shared by everything in this process that asks for it (tests, the CLI).
    pub fn shared() -> Runtime {
        static SHARED: OnceLock<Runtime> = OnceLock::new();
        SHARED.get_or_init(Runtime::new).clone()
    }

    pub(crate) fn engine(&self) -> &Engine {
        &self.engine
    }
}

impl Default for Runtime {
    fn default() -> Runtime {
        Runtime::new()
    }
}

/// One import of a module and whether the host (and Envoy) provides it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Import {
    /// Import module, e.g. `env`.
    pub module: String,
    /// Import name, e.g. `proxy_log`.
    pub name: String,
    /// Whether this host provides it with a real implementation.
    pub supported: bool,
}

/// A compiled proxy-wasm module with what the host learned about it.
#[derive(Clone)]
pub struct Module {
    pub(crate) runtime: Runtime,
    pub(crate) module: WasmModule,
    pub(crate) pre: InstancePre<VmState>,
    abi: AbiVersion,
    imports: Vec<Import>,
    size: usize,
}

impl Module {
    /// Compile a module from a file.
    pub fn from_file(runtime: &Runtime, path: impl AsRef<Path>) -> Result<Module> {
        let path = path.as_ref();
        let bytes = std::fs::read(path).map_err(|e| Error::Read {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        Module::from_bytes(runtime, &bytes)
    }

    /// Compile a module from bytes (binary wasm, or text format).
    pub fn from_bytes(runtime: &Runtime, bytes: &[u8]) -> Result<Module> {
        let module = WasmModule::new(runtime.engine(), bytes)
            .map_err(|e| Error::Compile(format!("{e:#}")))?;
        let versions: Vec<AbiVersion> = module
            .exports()
            .filter_map(|e| AbiVersion::from_export(e.name()))
            .collect();
        let abi = match versions.as_slice() {
            [] => return Err(Error::NoAbiVersion),
            [v] => *v,
            _ => return Err(Error::ManyAbiVersions(versions)),
        };
        let mut linker: Linker<VmState> = Linker::new(runtime.engine());
        let provided =
            imports::define(&mut linker, abi).map_err(|e| Error::Instantiate(format!("{e:#}")))?;
        let mut imports = Vec::new();
        for imp in module.imports() {
            let known = provided.contains(&(imp.module(), imp.name()));
            imports.push(Import {
                module: imp.module().to_string(),
                name: imp.name().to_string(),
                supported: known,
            });
            if !known && matches!(imp.ty(), ExternType::Func(_)) {
                imports::define_unsupported(&mut linker, imp.module(), imp.name(), imp.ty())
                    .map_err(|e| Error::Instantiate(format!("{e:#}")))?;
            }
        }
        let pre = linker
            .instantiate_pre(&module)
            .map_err(|e| Error::Instantiate(format!("{e:#}")))?;
        Ok(Module {
            runtime: runtime.clone(),
            module,
            pre,
            abi,
            imports,
            size: bytes.len(),
        })
    }

    /// The ABI version the module declares.
    pub fn abi_version(&self) -> AbiVersion {
        self.abi
    }

    /// Every import, with whether the host provides it.
    pub fn imports(&self) -> &[Import] {
        &self.imports
    }

    /// Imports the host does not provide (calling one fails the callback with an error naming it).
    pub fn unsupported_imports(&self) -> Vec<String> {
        self.imports
            .iter()
            .filter(|i| !i.supported)
            .map(|i| format!("{}.{}", i.module, i.name))
            .collect()
    }

    /// Names of the exported functions.
    pub fn exports(&self) -> Vec<String> {
        self.module
            .exports()
            .filter(|e| matches!(e.ty(), ExternType::Func(_)))
            .map(|e| e.name().to_string())
            .collect()
    }

    /// Size of the module file in bytes.
    pub fn size(&self) -> usize {
        self.size
    }

    /// The exported memory's limits in 64 KiB pages: (minimum, maximum).
    pub fn memory_pages(&self) -> Option<(u64, Option<u64>)> {
        self.module.exports().find_map(|e| match e.ty() {
            ExternType::Memory(m) => Some((m.minimum(), m.maximum())),
            _ => None,
        })
    }

    /// Whether an import module is one the host serves (`env` and WASI preview 1 under both
    /// names).
    pub fn is_host_module(name: &str) -> bool {
        name == ENV_MODULE || name == WASI_MODULE || name == WASI_UNSTABLE_MODULE
    }
}
