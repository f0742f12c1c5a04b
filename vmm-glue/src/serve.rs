//! The daemon loop both vhost-user devices share ([`crate::blk::serve`] and
//! [`crate::fs::serve`]): the socket is bound once and stays bound for the daemon's whole
//! life, so a VMM started after another one exited never finds a socket file with nobody
//! behind it; a socket another process serves is refused, a stale one (nobody listening) is
//! replaced, a path that is no socket is left alone; SIGINT/SIGTERM remove the socket and end
//! the process; each VMM connection gets a fresh vhost-user daemon over a fresh backend.
//!
//! What is served (a volume, an flist) and each device's own setup stay in the devices.

use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

use vhost::vhost_user::Listener;
use vhost_user_backend::{VhostUserBackend, VhostUserDaemon, VringRwLock};
use vm_memory::{GuestMemoryAtomic, GuestMemoryMmap};

use crate::sys;
use crate::virtio::GuestMemory;

/// Why a socket path cannot be served.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SocketError {
    #[error("socket {0} is already served by another process")]
    InUse(PathBuf),
    #[error("{0} exists and is not a socket; refusing to replace it")]
    NotASocket(PathBuf),
    #[error("socket {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Why one VMM connection could not be served.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectionError {
    #[error("vhost-user: {0}")]
    VhostUser(String),
    #[error("setup: {0}")]
    Setup(std::io::Error),
}

/// Refuses a socket path another server listens on, or a path that is not a socket; a
/// stale socket file (nobody listening) is removed.
pub fn check_socket_path(path: &Path) -> Result<(), SocketError> {
    let metadata = match std::fs::symlink_metadata(path) {
        Ok(metadata) => metadata,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(source) => {
            return Err(SocketError::Io {
                path: path.to_owned(),
                source,
            })
        }
    };
    if !metadata.file_type().is_socket() {
        return Err(SocketError::NotASocket(path.to_owned()));
    }
    if UnixStream::connect(path).is_ok() {
        return Err(SocketError::InUse(path.to_owned()));
    }
    std::fs::remove_file(path).map_err(|source| SocketError::Io {
        path: path.to_owned(),
        source,
    })
}

/// Binds the socket the daemon keeps for its whole life (after [`check_socket_path`]).
pub fn bind(path: &Path) -> Result<Listener, SocketError> {
    Listener::new(path, true).map_err(|error| SocketError::Io {
        path: path.to_owned(),
        source: std::io::Error::other(error.to_string()),
    })
}

/// Starts the thread that takes SIGINT/SIGTERM (which [`sys::block_termination_signals`] must
/// have blocked before any thread started): it runs `before_exit`, removes `socket` and ends
/// the process.
pub fn exit_on_termination_signal(
    socket: PathBuf,
    before_exit: impl FnOnce() + Send + 'static,
) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("signals".to_owned())
        .spawn(move || {
            let signal = sys::wait_for_termination_signal();
            tracing::info!(?signal, "stopping");
            before_exit();
            let _ = std::fs::remove_file(&socket);
            std::process::exit(0);
        })
        .map(drop)
}

/// Serves one VMM connection on `listener` with a vhost-user daemon named `name` over
/// `backend` (built by the caller over `memory`, a fresh guest memory map). `register` sees
/// the daemon before it starts, to add the backend's own event sources to its epoll loops.
/// A VMM that goes away, cleanly or mid-message, ends the connection without an error.
pub fn serve_connection<Backend>(
    name: &str,
    backend: Backend,
    memory: GuestMemory,
    listener: &mut Listener,
    register: impl FnOnce(&VhostUserDaemon<Backend>) -> Result<(), ConnectionError>,
) -> Result<(), ConnectionError>
where
    Backend: VhostUserBackend<Bitmap = (), Vring = VringRwLock<GuestMemory>> + Clone + 'static,
{
    let mut daemon = VhostUserDaemon::new(name.to_owned(), backend, memory)
        .map_err(|error| ConnectionError::VhostUser(error.to_string()))?;
    register(&daemon)?;
    daemon
        .start(listener)
        .map_err(|error| ConnectionError::VhostUser(error.to_string()))?;
    tracing::info!("VMM connected");
    let result = daemon.wait();
    for handler in daemon.get_epoll_handlers() {
        handler.send_exit_event();
    }
    match result {
        Ok(()) => tracing::info!("VMM disconnected"),
        // A VMM that dies mid-message is an ordinary end of a connection for a daemon that
        // outlives its VMs.
        Err(error) => tracing::info!(%error, "VMM connection ended"),
    }
    Ok(())
}

/// A fresh, empty guest memory map for a new connection (the VMM sends its table).
pub fn new_guest_memory() -> GuestMemory {
    GuestMemoryAtomic::new(GuestMemoryMmap::new())
}
