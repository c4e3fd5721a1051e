//! `wasmctl bench`: what a filter costs in the proxy-wasm harness, per request and per VM, and
//! whether its memory keeps growing.
//!
//! The request is a scenario (the same flags or file as `wasmctl run`). One plugin serves every
//! request, as one Envoy worker's VM does. Figures are wall-clock medians on this machine, for
//! comparing modules and configurations side by side; Envoy runs modules in V8, whose figures
//! `make bench-envoy` measures.
//!
//! ```no_run
//! use proxy_wasm_harness::scenario::Scenario;
//! let scenario = Scenario::from_yaml("root_id: my_root_id\nconfiguration: '{\"name\":\"a\",\"value\":\"b\"}'\n")?;
//! let report = wasmctl::bench::bench("header_filter.wasm".as_ref(), &scenario, 10_000)?;
//! println!("{report}");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use crate::error::{Error, Result};
use proxy_wasm_harness::abi::LogLevel;
use proxy_wasm_harness::scenario::Scenario;
use proxy_wasm_harness::{Host, Module, Plugin, Runtime};
use serde::Serialize;
use std::fmt;
use std::path::Path;
use std::time::{Duration, Instant};

/// Fresh plugins started to time plugin start.
const STARTS: usize = 20;
/// Batches the requests are timed in.
const BATCHES: usize = 10;

/// What `wasmctl bench` measured.
#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    /// The module file.
    pub module: String,
    /// Its size in bytes.
    pub size: usize,
    /// Compiling the module (once per module), milliseconds.
    pub compile_ms: f64,
    /// Starting a plugin from the compiled module (instantiate, VM start, configure): median
    /// of [`STARTS`] starts, microseconds.
    pub plugin_start_us: f64,
    /// Requests run.
    pub requests: usize,
    /// One request, microseconds: the median of [`BATCHES`] batch means.
    pub request_us: f64,
    /// The slowest batch's mean, microseconds.
    pub request_us_max_batch: f64,
    /// The VM's linear memory after the first request, bytes.
    pub memory_before: usize,
    /// The VM's linear memory after half the requests, bytes.
    pub memory_mid: usize,
    /// The VM's linear memory after the last request, bytes.
    pub memory_after: usize,
    /// HTTP calls the filter made per request (answered from the scenario's clusters).
    pub http_calls_per_request: usize,
}

impl BenchReport {
    /// The memory grew over the second half of the run: a likely leak. Growth in the first half
    /// only is a heap reaching its working size: a garbage-collected runtime (Go's) grows its
    /// heap up to its first collections, then reuses what they free.
    pub fn memory_grew(&self) -> bool {
        self.memory_after > self.memory_mid
    }
}

fn harness_err(module: &Path, e: impl fmt::Display) -> Error {
    Error::Harness {
        file: module.to_path_buf(),
        message: e.to_string(),
    }
}

fn micros(d: Duration, n: usize) -> f64 {
    d.as_secs_f64() * 1e6 / n.max(1) as f64
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

fn start(module: &Module, scenario: &Scenario) -> std::result::Result<(Host, Plugin), String> {
    // Envoy's default `wasm` log level: per-request debug lines are not formatted.
    let (host, plugin) = crate::run::start(module, scenario, LogLevel::Info, false);
    Ok((host, plugin.map_err(|e| e.to_string())?))
}

/// Compile `module`, time plugin starts, then run `scenario` `requests` times through one
/// plugin. Every request must succeed as the first did (an error stops the run).
pub fn bench(module: &Path, scenario: &Scenario, requests: usize) -> Result<BenchReport> {
    let bytes = std::fs::read(module).map_err(|source| Error::Io {
        action: "cannot read",
        path: module.to_path_buf(),
        source,
    })?;
    let t = Instant::now();
    let m = Module::from_bytes(&Runtime::shared(), &bytes).map_err(|e| harness_err(module, e))?;
    let compile_ms = t.elapsed().as_secs_f64() * 1e3;

    let mut starts = Vec::with_capacity(STARTS);
    for _ in 0..STARTS {
        let t = Instant::now();
        let started = start(&m, scenario);
        starts.push(micros(t.elapsed(), 1));
        started.map_err(|e| harness_err(module, e))?;
    }

    let (host, plugin) = start(&m, scenario).map_err(|e| harness_err(module, e))?;
    // The first request warms the VM (allocator, lazily built state) and shows the work to
    // repeat, including the HTTP calls to answer.
    let prepared = scenario.prepare();
    prepared.run(&plugin).map_err(|e| harness_err(module, e))?;
    let http_calls_per_request = host.http_calls_made().len();
    let memory_before = plugin.memory_size();
    let per_batch = requests.div_ceil(BATCHES).max(1);
    let mut batches = Vec::with_capacity(BATCHES);
    let mut done = 0;
    let mut memory_mid = None;
    while done < requests {
        let n = per_batch.min(requests - done);
        let t = Instant::now();
        for _ in 0..n {
            prepared
                .run_unobserved(&plugin)
                .map_err(|e| harness_err(module, e))?;
        }
        batches.push(micros(t.elapsed(), n));
        done += n;
        if memory_mid.is_none() && done * 2 >= requests {
            memory_mid = Some(plugin.memory_size());
        }
    }
    if let Some(e) = plugin.failure() {
        return Err(harness_err(
            module,
            format!("the VM failed during the run: {e}"),
        ));
    }
    let request_us_max_batch = batches.iter().copied().fold(0.0, f64::max);
    Ok(BenchReport {
        module: module.display().to_string(),
        size: bytes.len(),
        compile_ms,
        plugin_start_us: median(starts),
        requests,
        request_us: median(batches),
        request_us_max_batch,
        memory_before,
        memory_mid: memory_mid.unwrap_or(memory_before),
        memory_after: plugin.memory_size(),
        http_calls_per_request,
    })
}

fn mib(bytes: usize) -> String {
    format!("{:.2} MiB", bytes as f64 / (1024.0 * 1024.0))
}

impl fmt::Display for BenchReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{}: {} bytes", self.module, self.size)?;
        writeln!(
            f,
            "  compile        {:>10.1} ms  once per module",
            self.compile_ms
        )?;
        writeln!(
            f,
            "  plugin start   {:>10.1} µs  median of {STARTS}: instantiate, VM start, configure",
            self.plugin_start_us
        )?;
        writeln!(
            f,
            "  request        {:>10.2} µs  median of {BATCHES} batches over {} requests (slowest batch {:.2} µs)",
            self.request_us, self.requests, self.request_us_max_batch
        )?;
        if self.http_calls_per_request > 0 {
            writeln!(
                f,
                "                              includes answering {} HTTP call(s) per request",
                self.http_calls_per_request
            )?;
        }
        let growth = if self.memory_grew() {
            "GREW: memory kept growing over identical requests (a leak?)"
        } else if self.memory_mid > self.memory_before {
            "grew in the first half, then held (a heap reaching its working size)"
        } else {
            "no growth"
        };
        writeln!(
            f,
            "  memory         {} -> {} after the requests: {growth}",
            mib(self.memory_before),
            mib(self.memory_after)
        )
    }
}
