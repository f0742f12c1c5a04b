//! `zos stor`: Erasure-coded object storage over zdb backends (zstor).
//!
//! Argument parsing only; the work is done by the library crates.

/// `zos stor` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum StorCommand {}

/// Runs one `zos stor` subcommand.
pub fn run(command: StorCommand) -> anyhow::Result<()> {
    match command {}
}
