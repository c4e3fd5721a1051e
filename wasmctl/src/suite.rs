//! `wasmctl test` (not yet).
#![allow(missing_docs)]
#[derive(clap::Args)]
pub struct TestArgs {}
pub fn run(_a: &TestArgs) -> anyhow::Result<bool> {
    anyhow::bail!("wasmctl test: not yet")
}
