//! `zdb`: a key/value server that speaks 0-db's dialect of the Redis protocol, over an
//! io_uring append-only log. Thin: parse arguments, build the configuration, run.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::{Parser, ValueEnum};

use dataplane::engine::{
    Durability, Engine, EngineConfig, Mode, SEGMENT_BYTES_DEFAULT, SEGMENT_BYTES_MAX,
};
use dataplane::resp::commands::ServerState;
use dataplane::server::{self, ListenConfig, CONNECTIONS_MAX_DEFAULT};

#[derive(Debug, Clone, Copy, ValueEnum)]
enum IoArg {
    /// io_uring when a ring can be set up here, else positional reads and writes (logged).
    Auto,
    /// io_uring, or fail to start.
    Uring,
    /// Positional reads and writes (pread, pwrite, fdatasync).
    Posix,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum ModeArg {
    /// Clients choose their keys (binary, up to 255 bytes).
    User,
    /// The server assigns 64-bit little-endian ids in order; SET with an empty key.
    Seq,
    /// Each namespace picks its mode with NSSET (new namespaces start in user mode).
    Mixed,
}

/// zdb: a 0-db compatible key/value server over an io_uring append-only log.
///
/// Data lives in append-only segment files under --data, one folder per namespace; an index
/// snapshot under --index makes restarts fast. Any Redis client talks to it (redis-cli -p 9900).
/// Without --admin every client is admin; with it, admin commands (NSNEW, NSSET, NSDEL, ...)
/// need AUTH first.
#[derive(Debug, Parser)]
#[command(name = "zdb", version, about, long_about, verbatim_doc_comment)]
struct Args {
    /// Address to listen on for TCP clients.
    #[arg(long, default_value = "0.0.0.0", value_name = "ADDRESS")]
    listen: String,
    /// TCP port.
    #[arg(long, default_value_t = 9900)]
    port: u16,
    /// Also listen on this unix socket (a stale socket file is replaced).
    #[arg(long, value_name = "PATH")]
    socket: Option<PathBuf>,
    /// Do not listen on TCP at all (only --socket).
    #[arg(long, requires = "socket")]
    no_tcp: bool,
    /// Folder of the data segments (created when missing).
    #[arg(long, default_value = "./zdb-data", value_name = "DIR")]
    data: PathBuf,
    /// Folder of the index snapshots (created when missing).
    #[arg(long, default_value = "./zdb-index", value_name = "DIR")]
    index: PathBuf,
    /// How keys are chosen in new namespaces.
    #[arg(long, value_enum, default_value = "user")]
    mode: ModeArg,
    /// Reply to a write only once it is on disk (fdatasync, shared by every write of a batch).
    #[arg(long, conflicts_with = "synctime")]
    sync: bool,
    /// Make writes durable at least every SECONDS seconds (default 1). Replies are sent once
    /// the write is in its file: a crash of the process loses nothing replied to, a crash of
    /// the machine at most the last SECONDS seconds.
    #[arg(long, value_name = "SECONDS")]
    synctime: Option<u64>,
    /// Admin password: admin commands need AUTH with it. Without it every client is admin.
    #[arg(
        long,
        value_name = "PASSWORD",
        env = "ZDB_ADMIN",
        hide_env_values = true
    )]
    admin: Option<String>,
    /// Writing to the default namespace needs the admin password (SELECT default PASSWORD).
    #[arg(long, requires = "admin")]
    protect: bool,
    /// Size of a data segment before a new one is started (bytes; at most 4 GiB).
    #[arg(long, default_value_t = SEGMENT_BYTES_DEFAULT, value_name = "BYTES")]
    datasize: u64,
    /// Maximum size of the default namespace's data (bytes; 0: no limit).
    #[arg(long, default_value_t = 0, value_name = "BYTES")]
    maxsize: u64,
    /// Clients connected at once, at most.
    #[arg(long, default_value_t = CONNECTIONS_MAX_DEFAULT, value_name = "COUNT")]
    max_connections: usize,
    /// Threads serving clients. One (the default, like 0-db and Redis) runs a single event
    /// loop, the fastest when clients share the machine's few cores; more spread clients over
    /// a work-stealing pool. Disk writes, syncs and slow admin commands have threads of their own.
    #[arg(long, default_value_t = 1, value_name = "COUNT")]
    threads: usize,
    /// Bytes of memory for reads by the whole server, shared equally by its namespaces:
    /// recently read values, and the latest written buffers (at most half), so that reading
    /// what was just written needs no disk read (0: no cache).
    #[arg(long, default_value_t = dataplane::cache::CACHE_BYTES_DEFAULT, value_name = "BYTES")]
    cache_size: usize,
    /// Compact a namespace by itself once this share of its log (over 64 MiB) is garbage
    /// (overwritten or deleted values); 0 turns automatic compaction off (COMPACT still works).
    #[arg(long, default_value_t = dataplane::engine::COMPACT_GARBAGE_RATIO_DEFAULT, value_name = "RATIO")]
    compact_ratio: f64,
    /// Disk I/O backend.
    #[arg(long, value_enum, default_value = "auto")]
    io: IoArg,
    /// Log more (debug level). RUST_LOG overrides.
    #[arg(long, short)]
    verbose: bool,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let level = if args.verbose { "debug" } else { "info" };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level)),
        )
        .with_writer(std::io::stderr)
        .init();
    if args.datasize < 1024 * 1024 || args.datasize > SEGMENT_BYTES_MAX {
        bail!(
            "--datasize must be between 1 MiB and 4 GiB (got {})",
            args.datasize
        );
    }
    if args.max_connections == 0 {
        bail!("--max-connections must be at least 1");
    }
    let durability = if args.sync {
        Durability::Sync
    } else {
        let seconds = args.synctime.unwrap_or(1);
        if seconds == 0 {
            bail!("--synctime must be at least 1 second (use --sync for durable replies)");
        }
        Durability::Periodic(Duration::from_secs(seconds))
    };
    let mut config = EngineConfig::new(&args.data, &args.index);
    config.segment_bytes_max = args.datasize;
    config.durability = durability;
    config.cache_bytes_max = args.cache_size;
    if !(0.0..1.0).contains(&args.compact_ratio) {
        bail!(
            "--compact-ratio must be at least 0 and below 1 (got {})",
            args.compact_ratio
        );
    }
    config.compact_garbage_ratio = args.compact_ratio;
    config.default_mode = match args.mode {
        ModeArg::Seq => Mode::Seq,
        ModeArg::User | ModeArg::Mixed => Mode::User,
    };
    let io: Arc<dyn dataplane::sys::StorageIo> = match args.io {
        IoArg::Auto => dataplane::sys::default_io(),
        IoArg::Uring => Arc::new(
            dataplane::sys::UringIo::probe().context("--io uring: cannot set up an io_uring")?,
        ),
        IoArg::Posix => Arc::new(dataplane::sys::PosixIo),
    };
    tracing::info!(io = io.name(), data = %args.data.display(), index = %args.index.display(), ?durability, "opening");
    let engine = Engine::open(config, io)
        .with_context(|| format!("opening the data in {}", args.data.display()))?;
    if args.maxsize > 0 {
        let default = engine.namespace(dataplane::engine::DEFAULT_NAMESPACE)?;
        engine.update_settings(&default, |s| {
            s.maxsize = args.maxsize;
            Ok(())
        })?;
    }
    let tcp = (!args.no_tcp).then(|| {
        if args.listen.contains(':') && !args.listen.starts_with('[') {
            format!("[{}]:{}", args.listen, args.port)
        } else {
            format!("{}:{}", args.listen, args.port)
        }
    });
    let listen_description = [
        tcp.clone(),
        args.socket.as_ref().map(|p| p.display().to_string()),
    ]
    .into_iter()
    .flatten()
    .collect::<Vec<_>>()
    .join(", ");
    let state = Arc::new(ServerState {
        engine: Arc::clone(&engine),
        admin_password: args.admin.clone(),
        protect: args.protect,
        started: Instant::now(),
        connections_max: args.max_connections,
        connections: Default::default(),
        commands: Default::default(),
        listen_description,
    });
    let threads = args.threads.max(1);
    // One thread: a single-threaded runtime, without the work-stealing scheduler's
    // cross-thread wake-ups (slow commands still run on blocking threads).
    let mut builder = if threads == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut builder = tokio::runtime::Builder::new_multi_thread();
        builder.worker_threads(threads);
        builder
    };
    let runtime = builder
        .enable_all()
        .thread_name("zdb-worker")
        .build()
        .context("starting the async runtime")?;
    let listen = ListenConfig {
        tcp,
        unix: args.socket.clone(),
        connections_max: args.max_connections,
    };
    let result = runtime.block_on(server::serve(state, listen, shutdown_signal()));
    tracing::info!("stopping: flushing, syncing and writing index snapshots");
    engine.shutdown();
    runtime.shutdown_timeout(Duration::from_secs(1));
    result
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut terminate), Ok(mut interrupt)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = terminate.recv() => {},
        _ = interrupt.recv() => {},
    }
}
