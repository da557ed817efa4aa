//! `cargo xtask lab`: the built-in demo (filled in below).
use std::path::Path;

use anyhow::Result;

#[derive(clap::Args)]
pub struct LabArgs {}

pub fn run(_bin: &Path, _args: &LabArgs) -> Result<()> {
    Ok(())
}
