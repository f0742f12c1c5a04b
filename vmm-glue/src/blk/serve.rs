//! `zos vm disk serve`: opens and locks a volume, binds the socket once, and serves one VMM
//! connection after another until signalled (or after the first with `once`).
//!
//! The socket stays bound for the daemon's whole life, so a VMM started after another one
//! exited never finds a socket file with nobody behind it. Each connection gets a fresh
//! backend (queues, rings, memory map); the previous one is torn down when its VMM goes.

use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use vhost::vhost_user::Listener;
use vhost_user_backend::VhostUserDaemon;
use vm_memory::{GuestMemoryAtomic, GuestMemoryMmap};
use vmm_sys_util::epoll::EventSet;

use super::backend::{BlkBackend, Device, POLL_IDLE_DEFAULT};
use crate::crypto::{VolumeKey, SECTOR_BYTES};
use crate::sys;
use crate::volume::{Volume, VolumeError};

/// Queues offered by default (the guest uses at most one per vCPU).
pub const QUEUES_DEFAULT: usize = 4;

/// What to serve and how.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    pub volume: PathBuf,
    pub socket: PathBuf,
    pub read_only: bool,
    pub key_file: Option<PathBuf>,
    pub num_queues: usize,
    /// Open the volume with O_DIRECT (bypass the host page cache).
    pub direct: bool,
    /// Exit after the first VMM disconnects instead of waiting for the next.
    pub once: bool,
}

/// Errors of the serve loop.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServeError {
    #[error(transparent)]
    Volume(#[from] VolumeError),
    #[error("socket {0} is already served by another process")]
    SocketInUse(PathBuf),
    #[error("{0} exists and is not a socket; refusing to replace it")]
    NotASocket(PathBuf),
    #[error("socket {path}: {source}")]
    Socket {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("vhost-user: {0}")]
    VhostUser(String),
    #[error("io_uring or eventfd setup: {0}")]
    Setup(std::io::Error),
    #[error("{0}")]
    BadSetting(String),
}

/// Opens everything a serve needs, failing early with a clear error: the volume (locked),
/// the key (checked), the socket path (free).
pub fn prepare(config: &ServeConfig) -> Result<Arc<Device>, ServeError> {
    let volume = Volume::open(&config.volume)?;
    let key = config
        .key_file
        .as_deref()
        .map(VolumeKey::from_file)
        .transpose()
        .map_err(VolumeError::from)?;
    let cipher = volume.cipher(key.as_ref())?;
    let file = volume.open_locked_with(!config.read_only, config.direct)?;
    check_socket_path(&config.socket)?;
    Ok(Arc::new(Device {
        file,
        cipher,
        capacity_sectors: volume.metadata.size_bytes / SECTOR_BYTES as u64,
        serial: volume.metadata.serial,
        read_only: config.read_only,
        direct: config.direct,
        poll_idle: poll_idle_from_env()?,
    }))
}

/// Environment variable overriding the queue polling window, in microseconds (0: off).
pub const POLL_IDLE_ENV: &str = "ZOS_BLK_POLL_US";
/// Largest polling window accepted from [`POLL_IDLE_ENV`].
pub const POLL_IDLE_MAX: Duration = Duration::from_millis(1);

fn poll_idle_from_env() -> Result<Duration, ServeError> {
    let Ok(text) = std::env::var(POLL_IDLE_ENV) else {
        return Ok(POLL_IDLE_DEFAULT);
    };
    text.trim()
        .parse::<u64>()
        .ok()
        .map(Duration::from_micros)
        .filter(|window| *window <= POLL_IDLE_MAX)
        .ok_or_else(|| {
            ServeError::BadSetting(format!(
                "{POLL_IDLE_ENV}={text:?}: expected microseconds from 0 to {}",
                POLL_IDLE_MAX.as_micros()
            ))
        })
}

/// Refuses a socket path another server listens on, or a path that is not a socket; a
/// stale socket file (nobody listening) is removed.
fn check_socket_path(path: &Path) -> Result<(), ServeError> {
    let metadata = match std::fs::symlink_metadata(path) {
        Ok(metadata) => metadata,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(source) => {
            return Err(ServeError::Socket {
                path: path.to_owned(),
                source,
            })
        }
    };
    if !metadata.file_type().is_socket() {
        return Err(ServeError::NotASocket(path.to_owned()));
    }
    if UnixStream::connect(path).is_ok() {
        return Err(ServeError::SocketInUse(path.to_owned()));
    }
    std::fs::remove_file(path).map_err(|source| ServeError::Socket {
        path: path.to_owned(),
        source,
    })
}

/// Serves the volume until SIGINT/SIGTERM (or one connection with `once`).
pub fn serve(config: &ServeConfig) -> Result<(), ServeError> {
    // Signals are taken by one thread with sigwait; block them before any thread starts.
    sys::block_termination_signals().map_err(ServeError::Setup)?;
    let device = prepare(config)?;
    let mut listener = Listener::new(&config.socket, true).map_err(|error| ServeError::Socket {
        path: config.socket.clone(),
        source: std::io::Error::other(error.to_string()),
    })?;
    tracing::info!(
        volume = %config.volume.display(),
        socket = %config.socket.display(),
        sectors = device.capacity_sectors,
        encrypted = device.cipher.is_some(),
        read_only = device.read_only,
        direct = device.direct,
        "serving vhost-user-blk"
    );
    let socket = config.socket.clone();
    let signal_device = device.clone();
    std::thread::Builder::new()
        .name("signals".to_owned())
        .spawn(move || {
            let signal = sys::wait_for_termination_signal();
            tracing::info!(?signal, "stopping");
            // Guest flushes already made writes durable; this covers writes a guest did not
            // flush before we were told to stop.
            if let Err(error) = signal_device.file.sync_data() {
                tracing::error!(%error, "final sync of the volume");
            }
            let _ = std::fs::remove_file(&socket);
            std::process::exit(0);
        })
        .map_err(ServeError::Setup)?;
    loop {
        serve_connection(config, &device, &mut listener)?;
        if config.once {
            return Ok(());
        }
    }
}

fn serve_connection(
    config: &ServeConfig,
    device: &Arc<Device>,
    listener: &mut Listener,
) -> Result<(), ServeError> {
    let memory = GuestMemoryAtomic::new(GuestMemoryMmap::new());
    let backend = BlkBackend::new(device.clone(), config.num_queues, memory.clone())
        .map_err(ServeError::Setup)?;
    let mut daemon = VhostUserDaemon::new("zos-vm-blk".to_owned(), backend.clone(), memory)
        .map_err(|error| ServeError::VhostUser(error.to_string()))?;
    for (queue_index, handler) in daemon.get_epoll_handlers().iter().enumerate() {
        let fd = backend
            .completion_fd(queue_index)
            .ok_or_else(|| ServeError::VhostUser("queue without a worker".to_owned()))?;
        handler
            .register_listener(fd, EventSet::IN, backend.completion_event_id(queue_index))
            .map_err(ServeError::Setup)?;
    }
    daemon
        .start(listener)
        .map_err(|error| ServeError::VhostUser(error.to_string()))?;
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
