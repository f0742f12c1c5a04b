//! `zos vm start|list|stop`: supervised VMs (QEMU plus their vhost-user backends).
//!
//! Argument parsing only; the supervisor lives in `vmm_glue`.

/// `zos vm` lifecycle subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum MachineCommand {
    /// List the VMs started with `zos vm start`.
    List,
}

/// Runs one `zos vm` lifecycle subcommand.
pub fn run(command: MachineCommand) -> anyhow::Result<()> {
    match command {
        MachineCommand::List => anyhow::bail!("VM lifecycle is not in this build yet"),
    }
}
