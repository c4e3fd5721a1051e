//! What one HTTP request costs in the harness, against the floor of calling into wasm at all.
//!
//! - `lifecycle/seed_request`: one full request through `header_filter.wasm` with the seed
//!   configuration: stream open, context create, request headers (10), response headers (10,
//!   plus the injected one), log, done, delete.
//! - `floor/bare_wasmtime`: the same six callbacks, and the one `proxy_add_header_map_value`
//!   host call, into a minimal WAT module on a bare `wasmtime::Linker`: the cost of the wasm
//!   calls alone, without a proxy-wasm host or an SDK.
//! - `instantiate/cached_module`: a new plugin from the compiled module (instantiate, VM start,
//!   configure).
//!
//! A summary at the end prints the medians of this run and the ratio seed_request / floor.
//! Run: `cargo bench -p proxy-wasm-harness` (builds `header_filter.wasm` first if needed).

// A benchmark program, not library code: a failed setup should stop it loudly.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{REQUEST, RESPONSE, ROOT_ID, SEED, filter_path, host, target_dir, workspace_root};
use criterion::{BatchSize, Criterion};
use proxy_wasm_harness::{Module, Runtime};
use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::SystemTime;

/// The minimal module of the floor: the six callbacks of a request, and on response headers one
/// `proxy_add_header_map_value(HttpResponseHeaders, name, value)`.
const FLOOR_WAT: &str = r#"
(module
  (import "env" "proxy_add_header_map_value"
    (func $add (param i32 i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 16) "resp-header-demo")
  (data (i32.const 32) "added by our filter")
  (func (export "proxy_on_context_create") (param i32 i32))
  (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
    i32.const 0)
  (func (export "proxy_on_response_headers") (param i32 i32 i32) (result i32)
    (drop (call $add (i32.const 2) (i32.const 16) (i32.const 16) (i32.const 32) (i32.const 19)))
    i32.const 0)
  (func (export "proxy_on_log") (param i32))
  (func (export "proxy_on_done") (param i32) (result i32)
    i32.const 1)
  (func (export "proxy_on_delete") (param i32)))
"#;

/// Build `header_filter.wasm` (an up-to-date build costs a fraction of a second) and return it.
fn filter_wasm() -> PathBuf {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let status = Command::new(cargo)
        .current_dir(workspace_root())
        .args([
            "build",
            "--profile",
            "wasm",
            "--target",
            "wasm32-wasip1",
            "-p",
            "header-filter",
        ])
        .status()
        .expect("run cargo");
    assert!(status.success(), "building header_filter.wasm: {status}");
    let path = filter_path();
    assert!(path.exists(), "{} missing after build", path.display());
    path
}

fn seed_request(c: &mut Criterion, module: &Module) {
    let host = host();
    let plugin = host.start_plugin(module, ROOT_ID, SEED).unwrap();
    let one = || {
        let mut s = plugin.http_stream().unwrap();
        s.send_request_headers(black_box(&REQUEST), true).unwrap();
        s.send_response_headers(black_box(&RESPONSE), false)
            .unwrap();
        s.complete().unwrap();
        s
    };
    // What is timed below does what the seed configuration promises.
    let s = one();
    let response = s.response_headers();
    assert_eq!(
        response.get("resp-header-demo").as_deref(),
        Some("added by our filter")
    );
    assert_eq!(response.len(), RESPONSE.len() + 1);
    assert_eq!(s.request_headers().len(), REQUEST.len());
    assert!(s.error().is_none());

    c.benchmark_group("lifecycle")
        .bench_function("seed_request", |b| b.iter(&one));
}

/// State of the floor's store: what the host function saw.
#[derive(Default)]
struct FloorState {
    memory: Option<wasmtime::Memory>,
    added: usize,
}

fn floor(c: &mut Criterion) {
    use wasmtime::{Caller, Engine, Linker, Module as WasmModule, Store};
    let engine = Engine::default();
    let module = WasmModule::new(&engine, FLOOR_WAT).unwrap();
    let mut linker: Linker<FloorState> = Linker::new(&engine);
    linker
        .func_wrap(
            "env",
            "proxy_add_header_map_value",
            |mut c: Caller<'_, FloorState>, _map: i32, kp: i32, ks: i32, vp: i32, vs: i32| -> i32 {
                // Bounds-check and touch the name and value, as any host must.
                let Some(mem) = c.data().memory else { return 1 };
                let data = mem.data(&c);
                let slice = |p: i32, l: i32| data.get(p as usize..(p as usize + l as usize));
                let n = match (slice(kp, ks), slice(vp, vs)) {
                    (Some(k), Some(v)) => k.len() + v.len(),
                    _ => return 1,
                };
                c.data_mut().added += n;
                0
            },
        )
        .unwrap();
    let mut store = Store::new(&engine, FloorState::default());
    let instance = linker.instantiate(&mut store, &module).unwrap();
    store.data_mut().memory = instance.get_memory(&mut store, "memory");
    let create = instance
        .get_typed_func::<(i32, i32), ()>(&mut store, "proxy_on_context_create")
        .unwrap();
    let req = instance
        .get_typed_func::<(i32, i32, i32), i32>(&mut store, "proxy_on_request_headers")
        .unwrap();
    let resp = instance
        .get_typed_func::<(i32, i32, i32), i32>(&mut store, "proxy_on_response_headers")
        .unwrap();
    let log = instance
        .get_typed_func::<i32, ()>(&mut store, "proxy_on_log")
        .unwrap();
    let done = instance
        .get_typed_func::<i32, i32>(&mut store, "proxy_on_done")
        .unwrap();
    let delete = instance
        .get_typed_func::<i32, ()>(&mut store, "proxy_on_delete")
        .unwrap();
    let mut id = 1;
    let mut one = move || {
        id += 1;
        create.call(&mut store, (id, 1)).unwrap();
        req.call(&mut store, (id, 10, 1)).unwrap();
        resp.call(&mut store, (id, 10, 0)).unwrap();
        log.call(&mut store, id).unwrap();
        done.call(&mut store, id).unwrap();
        delete.call(&mut store, id).unwrap();
        store.data().added
    };
    assert_eq!(one(), 35);
    c.benchmark_group("floor")
        .bench_function("bare_wasmtime", |b| b.iter(&mut one));
}

fn instantiate(c: &mut Criterion, module: &Module) {
    c.benchmark_group("instantiate")
        .bench_function("cached_module", |b| {
            // A fresh host per plugin (not timed), so nothing accumulates across iterations; the
            // plugin is dropped outside the timing too.
            b.iter_batched(
                host,
                |host| {
                    let plugin = host.start_plugin(module, ROOT_ID, SEED).unwrap();
                    (host, plugin)
                },
                BatchSize::SmallInput,
            )
        });
}

/// The median (ns) criterion estimated for `group/name` in this run, if it ran.
fn median(dir: &Path, id: &str, since: SystemTime) -> Option<f64> {
    let path = dir.join(id).join("new/estimates.json");
    let fresh = std::fs::metadata(&path).ok()?.modified().ok()? >= since;
    if !fresh {
        return None;
    }
    let json: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).ok()?).ok()?;
    json["median"]["point_estimate"].as_f64()
}

fn show(ns: Option<f64>) -> String {
    match ns {
        Some(ns) if ns >= 1000.0 => format!("{:.2} µs", ns / 1000.0),
        Some(ns) => format!("{ns:.0} ns"),
        None => "not measured in this run".into(),
    }
}

fn main() {
    let started = SystemTime::now();
    let out = target_dir().join("criterion");
    let mut c = Criterion::default()
        .output_directory(&out)
        .configure_from_args();
    let module = Module::from_file(&Runtime::shared(), filter_wasm()).unwrap();

    seed_request(&mut c, &module);
    floor(&mut c);
    instantiate(&mut c, &module);
    c.final_summary();

    let seed = median(&out, "lifecycle/seed_request", started);
    let floor = median(&out, "floor/bare_wasmtime", started);
    let inst = median(&out, "instantiate/cached_module", started);
    if seed.is_none() && floor.is_none() && inst.is_none() {
        return; // `cargo test --benches`, or a filter that ran none of them
    }
    println!("\nsummary (medians of this run):");
    println!("  lifecycle/seed_request     {}", show(seed));
    println!("  floor/bare_wasmtime        {}", show(floor));
    println!("  instantiate/cached_module  {}", show(inst));
    match (seed, floor) {
        (Some(s), Some(f)) => println!("  ratio seed_request/floor = {:.2}", s / f),
        _ => println!("  ratio seed_request/floor: needs both benches in one run"),
    }
}
