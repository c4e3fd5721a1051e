//! The request of `lifecycle/seed_request`, repeated without criterion around it: a program to
//! profile, and whose instruction count per request is deterministic (unlike times on a shared
//! machine).
//!
//! ```sh
//! cargo bench -p proxy-wasm-harness --bench requests --no-run   # prints the binary's path
//! valgrind --tool=callgrind --collect-atstart=no --toggle-collect='requests::run' \
//!     target/release/deps/requests-HASH 10000
//! callgrind_annotate callgrind.out.PID
//! ```
//!
//! With `--toggle-collect`, only the request loop counts: the total `Ir` / N is the cost of one
//! request. Without an argument (as `cargo bench` runs it) it does a few thousand requests and
//! prints the mean time of one.

// A benchmark program, not library code: a failed setup should stop it loudly.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{REQUEST, RESPONSE, ROOT_ID, SEED};
use proxy_wasm_harness::{Module, Plugin, Runtime};
use std::hint::black_box;
use std::time::Instant;

/// One request, as `lifecycle/seed_request` times it.
fn one(plugin: &Plugin) {
    let mut s = plugin.http_stream().unwrap();
    s.send_request_headers(black_box(&REQUEST), true).unwrap();
    s.send_response_headers(black_box(&RESPONSE), false)
        .unwrap();
    s.complete().unwrap();
    black_box(&s);
}

/// The measured loop (the name `--toggle-collect` refers to).
#[inline(never)]
fn run(plugin: &Plugin, n: u64) {
    for _ in 0..n {
        one(plugin);
    }
}

fn main() {
    // `cargo bench` passes `--bench`; a number is the count of requests.
    let n: Option<u64> = std::env::args().skip(1).find_map(|a| a.parse().ok());
    let wasm = common::filter_path();
    if !wasm.exists() {
        println!("requests: {} missing, skipped", wasm.display());
        return;
    }
    let module = Module::from_file(&Runtime::shared(), &wasm).unwrap();
    let host = common::host();
    let plugin = host.start_plugin(&module, ROOT_ID, SEED).unwrap();
    // Warm the pools as the criterion bench does before it times.
    for _ in 0..100 {
        one(&plugin);
    }
    let n = n.unwrap_or(20_000);
    let started = Instant::now();
    run(&plugin, n);
    let took = started.elapsed();
    if n > 0 {
        println!(
            "requests: {n} seed requests, {:.0} ns each",
            took.as_nanos() as f64 / n as f64
        );
    }
}
