//! `zos flist`: Flist images: pack, mount, unpack, inspect.
//!
//! Argument parsing only; the work is done by the library crates.

/// `zos flist` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum FlistCommand {}

/// Runs one `zos flist` subcommand.
pub fn run(command: FlistCommand) -> anyhow::Result<()> {
    match command {}
}
