//! `zos vm disk serve`: opens and locks a volume, binds the socket once, and serves one VMM
//! connection after another until signalled (or after the first with `once`).
//!
//! The socket stays bound for the daemon's whole life, so a VMM started after another one
//! exited never finds a socket file with nobody behind it (the loop is [`crate::serve`]'s,
//! shared with virtio-fs). Each connection gets a fresh backend (queues, rings, memory map);
//! the previous one is torn down when its VMM goes.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use vhost::vhost_user::Listener;
use vmm_sys_util::epoll::EventSet;

use super::backend::{BlkBackend, Device, POLL_IDLE_DEFAULT};
use crate::crypto::{VolumeKey, SECTOR_BYTES};
use crate::serve::{ConnectionError, SocketError};
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
    /// The socket is served by another process, is no socket, or cannot be bound.
    #[error(transparent)]
    Socket(#[from] SocketError),
    #[error("vhost-user: {0}")]
    VhostUser(String),
    #[error("io_uring or eventfd setup: {0}")]
    Setup(std::io::Error),
    #[error("{0}")]
    BadSetting(String),
}

impl From<ConnectionError> for ServeError {
    fn from(error: ConnectionError) -> Self {
        match error {
            ConnectionError::VhostUser(message) => ServeError::VhostUser(message),
            ConnectionError::Setup(source) => ServeError::Setup(source),
        }
    }
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
    crate::serve::check_socket_path(&config.socket)?;
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

/// Serves the volume until SIGINT/SIGTERM (or one connection with `once`).
pub fn serve(config: &ServeConfig) -> Result<(), ServeError> {
    // Signals are taken by one thread with sigwait; block them before any thread starts.
    sys::block_termination_signals().map_err(ServeError::Setup)?;
    let device = prepare(config)?;
    let mut listener = crate::serve::bind(&config.socket)?;
    tracing::info!(
        volume = %config.volume.display(),
        socket = %config.socket.display(),
        sectors = device.capacity_sectors,
        encrypted = device.cipher.is_some(),
        read_only = device.read_only,
        direct = device.direct,
        "serving vhost-user-blk"
    );
    let signal_device = device.clone();
    crate::serve::exit_on_termination_signal(config.socket.clone(), move || {
        // Guest flushes already made writes durable; this covers writes a guest did not
        // flush before we were told to stop.
        if let Err(error) = signal_device.file.sync_data() {
            tracing::error!(%error, "final sync of the volume");
        }
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
    let memory = crate::serve::new_guest_memory();
    let backend = BlkBackend::new(device.clone(), config.num_queues, memory.clone())
        .map_err(ServeError::Setup)?;
    let completions = backend.clone();
    crate::serve::serve_connection("zos-vm-blk", backend, memory, listener, |daemon| {
        // Each queue's io_uring completions wake that queue's epoll thread.
        for (queue_index, handler) in daemon.get_epoll_handlers().iter().enumerate() {
            let fd = completions
                .completion_fd(queue_index)
                .ok_or_else(|| ConnectionError::VhostUser("queue without a worker".to_owned()))?;
            handler
                .register_listener(
                    fd,
                    EventSet::IN,
                    completions.completion_event_id(queue_index),
                )
                .map_err(ConnectionError::Setup)?;
        }
        Ok(())
    })?;
    Ok(())
}
