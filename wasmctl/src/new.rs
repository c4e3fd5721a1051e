//! `wasmctl new` (not yet).
#![allow(missing_docs)]
/// `wasmctl new`'s arguments.
#[derive(clap::Args)]
pub struct NewArgs {}
pub fn run(_a: &NewArgs) -> anyhow::Result<()> {
    anyhow::bail!("wasmctl new: not yet")
}
