//! `header-filter`: a proxy-wasm HTTP filter that appends, sets and removes request and response
//! headers from a JSON plugin configuration.
//!
//! The rules live in [`config`] (plain Rust, tested natively); `glue.rs` is the thin layer to the
//! proxy-wasm host, written against the ABI directly, and is compiled only for wasm targets.
//!
//! Per stream the glue does no JSON work: the configuration is compiled once in `on_configure`, and a
//! configuration whose only rules append fixed response headers costs one host call per rule on the
//! response path, none on the request path, and no allocation.
//!
//! On wasm the crate is `no_std` (with `alloc`): the module carries no WASI imports and none of
//! the standard library's runtime, which keeps it small and quick for Envoy to compile. Native
//! builds (the tests, tools that reuse [`config`]) have `std` as usual.

#![cfg_attr(target_family = "wasm", no_std)]

extern crate alloc;

pub mod config;
pub mod json;

#[cfg(target_family = "wasm")]
mod glue;
#[cfg(target_family = "wasm")]
mod heap;
#[cfg(any(test, target_family = "wasm"))]
mod table;
