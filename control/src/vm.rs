//! `zos vm`: Virtual machines: disks (vhost-user-blk), flist shares (vhost-user-fs), start and stop.
//!
//! Argument parsing only; the work is done by the library crates.

/// `zos vm` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum VmCommand {}

/// Runs one `zos vm` subcommand.
pub fn run(command: VmCommand) -> anyhow::Result<()> {
    match command {}
}
