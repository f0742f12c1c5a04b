//! `zos vm fs`: an flist served to a VM over vhost-user-fs (virtio-fs).
//!
//! Argument parsing only; the device lives in `vmm_glue`.

use std::path::PathBuf;

/// `zos vm fs` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum FsCommand {
    /// Serve an flist over vhost-user-fs on a unix socket, in the foreground.
    Serve {
        /// The flist to serve.
        flist: PathBuf,
        /// Unix socket path to listen on.
        #[arg(long)]
        socket: PathBuf,
    },
}

/// Runs one `zos vm fs` subcommand.
pub fn run(command: FsCommand) -> anyhow::Result<()> {
    match command {
        FsCommand::Serve { flist, socket } => anyhow::bail!(
            "serving {} on {}: vhost-user-fs is not in this build yet",
            flist.display(),
            socket.display()
        ),
    }
}
