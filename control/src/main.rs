//! `zos`: one command line for the Zero-OS storage data plane.

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
    /// Print version information.
    Version,
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match cli.command {
        Command::Version => println!("zos {}", env!("CARGO_PKG_VERSION")),
    }
    Ok(())
}
