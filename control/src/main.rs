//! `zos`: one command line for the Zero-OS storage data plane.
//!
//! Thin on purpose: parse arguments, set up logging, hand each subcommand group to its module.

mod flist;
mod stor;
mod vm;
mod vm_fs;
mod vm_machine;

use clap::Parser;

/// Zero-OS storage data plane: flists, erasure-coded storage, VM disks and shares.
#[derive(Debug, Parser)]
#[command(name = "zos", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    /// Flist images: pack a tree into an flist, mount it lazily, unpack, inspect.
    #[command(subcommand)]
    Flist(flist::FlistCommand),
    /// Erasure-coded object storage over many zdb backends (zstor).
    #[command(subcommand)]
    Stor(stor::StorCommand),
    /// Virtual machines: volumes over vhost-user-blk, flists over vhost-user-fs, VM lifecycle.
    #[command(subcommand)]
    Vm(vm::VmCommand),
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    match Cli::parse().command {
        Command::Flist(command) => flist::run(command),
        Command::Stor(command) => stor::run(command),
        Command::Vm(command) => vm::run(command),
    }
}
