//! The fuzz targets' bodies, one plain function each, so that they build once with the rest of
//! the workspace: `fuzz/` (cargo-fuzz, nightly, libFuzzer) calls them on generated inputs, and
//! `tests/replay.rs` calls them on every file of `fuzz/corpus/<target>/` on the stable toolchain,
//! so each crash the fuzzers ever found stays a regression test.
//!
//! A target reports a broken property by panicking; libFuzzer keeps the input.
//!
//! ```
//! fuzz_targets::image_reference(b"ghcr.io/acme/header-filter:v1");
//! assert!(fuzz_targets::TARGETS.iter().any(|(name, _)| *name == "filter_config"));
//! ```

// Asserting a property by panicking is how a fuzz target reports; the inputs are arbitrary, so
// the checks index and unwrap what they have just checked.
#![allow(clippy::panic, clippy::unwrap_used, clippy::expect_used)]
#![deny(missing_docs)]

mod filter;
mod foreign;
mod harness;
mod wasmctl;

pub use filter::{filter_config, filter_headers};
pub use foreign::harness_foreign;
pub use harness::harness_host_calls;
pub use wasmctl::{agent_image_list, image_layout, image_reference, render_deployment};

/// A target's body: takes any bytes, panics when a property does not hold.
pub type Target = fn(&[u8]);

/// Every target by name: the name of its cargo-fuzz binary and of its corpus directory.
pub const TARGETS: &[(&str, Target)] = &[
    ("filter_config", filter_config),
    ("filter_headers", filter_headers),
    ("harness_host_calls", harness_host_calls),
    ("harness_foreign", harness_foreign),
    ("image_reference", image_reference),
    ("image_layout", image_layout),
    ("agent_image_list", agent_image_list),
    ("render_deployment", render_deployment),
];
