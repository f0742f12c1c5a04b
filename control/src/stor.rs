//! `zos stor`: erasure-coded object storage over zdb backends (zstor).
//!
//! Argument parsing and printing only; the work is done by the `erasure` crate.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use erasure::config::{BackendConfig, Config};
use erasure::daemon::client::{DaemonClient, Endpoint};
use erasure::zstor::{default_config_path, ObjectInfo, PutReport, Zstor};
use indicatif::{ProgressBar, ProgressStyle};

/// Options every `zos stor` command takes.
#[derive(Debug, clap::Args)]
pub struct Common {
    /// The zstor config file [default: $XDG_CONFIG_HOME/zos/stor.toml, else
    /// ~/.config/zos/stor.toml].
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
}

/// `--daemon`: go through a running `zos stor daemon` instead of the backends directly.
#[derive(Debug, clap::Args)]
pub struct Via {
    /// Send the request to a running `zos stor daemon` instead of talking to the backends
    /// directly: at a unix socket path or `http://host:port`, or, with no value, at the
    /// config's [daemon] socket (default <state_dir>/zstor.sock). The token is read from
    /// the config. Without a value, put `--daemon` after the positional arguments.
    #[arg(long, value_name = "SOCKET|URL", num_args = 0..=1, default_missing_value = "")]
    daemon: Option<String>,
}

/// `--json` for the commands that print reports.
#[derive(Debug, clap::Args)]
pub struct Output {
    /// Print machine-readable JSON instead of a table.
    #[arg(long)]
    json: bool,
}

/// `zos stor` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum StorCommand {
    /// Write a new config: shard geometry, backends, and a freshly generated encryption key.
    ///
    /// The file is created with mode 0600 and never overwritten. BACK UP ITS
    /// `encryption_key`: without it nothing stored with this config can be read.
    ///
    /// Example: zos stor init --data-shards 4 --parity-shards 2
    ///   --backend zdb://10.0.0.1:9900/stor --backend zdb://:secret@10.0.0.2:9900/stor ...
    Init {
        /// Data shards per chunk (k).
        #[arg(long, default_value_t = erasure::config::DATA_SHARDS_DEFAULT)]
        data_shards: usize,
        /// Parity shards per chunk (m): how many backends may be lost.
        #[arg(long, default_value_t = erasure::config::PARITY_SHARDS_DEFAULT)]
        parity_shards: usize,
        /// A backend, `zdb://[user:password@]host:port/namespace`; give at least k+m.
        /// Append `#group` to name its failure group (e.g. `zdb://h:9900/ns#rack-a`).
        #[arg(long = "backend", value_name = "URL", required = true)]
        backends: Vec<String>,
        /// Plaintext bytes per chunk.
        #[arg(long, default_value_t = erasure::config::CHUNK_BYTES_DEFAULT)]
        chunk_size: usize,
        #[command(flatten)]
        common: Common,
    },
    /// Store a file (or standard input with `-`) as an object.
    ///
    /// The object is cut into chunks, each compressed, encrypted and spread as k+m shards
    /// over k+m backends. Succeeds when every chunk has at least `write_threshold` shards
    /// stored; missing shards are queued for `zos stor repair`.
    Put {
        /// The file to store; `-` for standard input.
        file: PathBuf,
        /// Object name [default: the file's name].
        #[arg(long)]
        key: Option<String>,
        #[command(flatten)]
        via: Via,
        #[command(flatten)]
        common: Common,
    },
    /// Read an object back, verified, to a file or standard output.
    Get {
        /// Object name.
        key: String,
        /// Write here (atomically: the file appears only once complete) instead of stdout.
        #[arg(short, long, value_name = "FILE")]
        output: Option<PathBuf>,
        #[command(flatten)]
        via: Via,
        #[command(flatten)]
        common: Common,
    },
    /// List objects.
    Ls {
        #[command(flatten)]
        output: Output,
        #[command(flatten)]
        via: Via,
        #[command(flatten)]
        common: Common,
    },
    /// Delete an object.
    Rm {
        /// Object name.
        key: String,
        #[command(flatten)]
        via: Via,
        #[command(flatten)]
        common: Common,
    },
    /// Verify every shard and metadata copy of an object (or all), without decoding.
    /// Exits non-zero when anything is missing or corrupt.
    Check {
        /// Object name [default: every object].
        key: Option<String>,
        #[command(flatten)]
        output: Output,
        #[command(flatten)]
        via: Via,
        #[command(flatten)]
        common: Common,
    },
    /// Rebuild missing or corrupt shards (of one object, or of all objects and the repair
    /// queue) onto their backend or, when it is gone from the config, onto another one.
    Repair {
        /// Object name [default: every object and the repair queue].
        key: Option<String>,
        #[command(flatten)]
        output: Output,
        #[command(flatten)]
        via: Via,
        #[command(flatten)]
        common: Common,
    },
    /// Serve the HTTP API (docs/openapi.yaml in the erasure crate) until SIGINT or SIGTERM.
    ///
    /// Listens on a unix socket (mode 0600, so only this user may use it) and optionally
    /// on TCP. Every request needs `Authorization: Bearer TOKEN`, the config's [daemon] token.
    ///
    /// Example: zos stor daemon --listen 127.0.0.1:9980
    ///          curl --unix-socket ~/.local/state/zos/stor/zstor.sock \
    ///               -H "Authorization: Bearer $TOKEN" http://zstor/v1/objects
    Daemon {
        /// Unix socket [default: the config's [daemon] socket, else <state_dir>/zstor.sock].
        #[arg(long, value_name = "PATH")]
        socket: Option<PathBuf>,
        /// Also listen on this TCP address [default: the config's [daemon] listen, if any].
        #[arg(long, value_name = "ADDRESS")]
        listen: Option<String>,
        #[command(flatten)]
        common: Common,
    },
    /// Health and usage of every backend.
    Status {
        #[command(flatten)]
        output: Output,
        #[command(flatten)]
        via: Via,
        #[command(flatten)]
        common: Common,
    },
}

/// Runs one `zos stor` subcommand.
pub fn run(command: StorCommand) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(run_async(command))
}

fn config_path(common: &Common) -> PathBuf {
    common.config.clone().unwrap_or_else(default_config_path)
}

fn open(common: &Common) -> anyhow::Result<Zstor> {
    let path = config_path(common);
    let config = Config::load(&path).with_context(|| {
        format!(
            "loading the zstor config {} (create one with `zos stor init`)",
            path.display()
        )
    })?;
    Zstor::open(config).context("opening the zstor backends")
}

fn bar(length: Option<u64>, unit_bytes: bool) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = match length {
        Some(length) => ProgressBar::new(length),
        None => ProgressBar::new_spinner(),
    };
    let template = if unit_bytes {
        "{spinner} [{elapsed_precise}] {wide_bar} {bytes}/{total_bytes} {bytes_per_sec} eta {eta}"
    } else {
        "{spinner} [{elapsed_precise}] {wide_bar} {pos}/{len} chunks"
    };
    if let Ok(style) = ProgressStyle::with_template(template) {
        bar.set_style(style);
    }
    bar
}

fn print_json(value: &impl serde::Serialize) -> anyhow::Result<()> {
    println!(
        "{}",
        serde_json::to_string_pretty(value).context("encoding JSON")?
    );
    Ok(())
}

fn human_bytes(bytes: u64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < units.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", units[unit])
    }
}

fn parse_backend(text: &str) -> BackendConfig {
    match text.rsplit_once('#') {
        Some((url, group)) if !group.is_empty() => BackendConfig {
            url: url.to_string(),
            group: Some(group.to_string()),
        },
        _ => BackendConfig {
            url: text.to_string(),
            group: None,
        },
    }
}

async fn run_async(command: StorCommand) -> anyhow::Result<()> {
    match command {
        StorCommand::Init {
            data_shards,
            parity_shards,
            backends,
            chunk_size,
            common,
        } => {
            let path = config_path(&common);
            let mut config = Config::generate(
                data_shards,
                parity_shards,
                backends.iter().map(|b| parse_backend(b)).collect(),
            )
            .context("invalid zstor settings")?;
            config.chunk_size = chunk_size;
            config.validate().context("invalid zstor settings")?;
            config
                .write_new(&path)
                .with_context(|| format!("writing {}", path.display()))?;
            println!(
                "wrote {} ({}+{} over {} backends). Back up its encryption_key: without it nothing can be read.",
                path.display(),
                data_shards,
                parity_shards,
                backends.len()
            );
            Ok(())
        }
        StorCommand::Put {
            file,
            key,
            via,
            common,
        } => {
            let from_stdin = file == Path::new("-");
            let name = match key {
                Some(key) => key,
                None if from_stdin => bail!("--key is required when reading standard input"),
                None => file
                    .file_name()
                    .map(|name| name.to_string_lossy().into_owned())
                    .with_context(|| format!("{} has no file name; give --key", file.display()))?,
            };
            if let Some(target) = via.daemon {
                let client = daemon_client(&common, &target)?;
                let report = if from_stdin {
                    client.put(&name, tokio::io::stdin(), None).await
                } else {
                    let input = tokio::fs::File::open(&file)
                        .await
                        .with_context(|| format!("opening {}", file.display()))?;
                    let length = input.metadata().await.ok().map(|metadata| metadata.len());
                    client.put(&name, input, length).await
                }
                .with_context(|| format!("storing {name:?} through the daemon"))?;
                print_put(&report);
                return Ok(());
            }
            let zstor = open(&common)?;
            let report = if from_stdin {
                let bar = bar(None, true);
                let report = zstor
                    .put(name.as_bytes(), tokio::io::stdin(), &|bytes| {
                        bar.set_position(bytes)
                    })
                    .await;
                bar.finish_and_clear();
                report
            } else {
                let input = tokio::fs::File::open(&file)
                    .await
                    .with_context(|| format!("opening {}", file.display()))?;
                let length = input.metadata().await.ok().map(|metadata| metadata.len());
                let bar = bar(length, true);
                let report = zstor
                    .put(name.as_bytes(), input, &|bytes| bar.set_position(bytes))
                    .await;
                bar.finish_and_clear();
                report
            }
            .with_context(|| format!("storing {name:?}"))?;
            print_put(&report);
            Ok(())
        }
        StorCommand::Get {
            key,
            output,
            via: Via {
                daemon: Some(target),
            },
            common,
        } => {
            let client = daemon_client(&common, &target)?;
            match &output {
                Some(path) => {
                    let partial = partial_path(path);
                    let file = tokio::fs::File::create(&partial)
                        .await
                        .with_context(|| format!("creating {}", partial.display()))?;
                    let mut writer = tokio::io::BufWriter::with_capacity(1 << 20, file);
                    match client.get(&key, &mut writer).await {
                        Ok(_) => {
                            writer
                                .into_inner()
                                .sync_all()
                                .await
                                .with_context(|| format!("syncing {}", partial.display()))?;
                            tokio::fs::rename(&partial, path)
                                .await
                                .with_context(|| format!("renaming to {}", path.display()))?;
                        }
                        Err(error) => {
                            let _ = tokio::fs::remove_file(&partial).await;
                            return Err(error)
                                .with_context(|| format!("reading {key:?} through the daemon"));
                        }
                    }
                }
                None => {
                    client
                        .get(&key, tokio::io::stdout())
                        .await
                        .with_context(|| format!("reading {key:?} through the daemon"))?;
                }
            }
            Ok(())
        }
        StorCommand::Ls {
            output,
            via: Via {
                daemon: Some(target),
            },
            common,
        } => {
            let objects = daemon_client(&common, &target)?
                .list()
                .await
                .context("listing objects through the daemon")?;
            print_objects(&objects, output.json)
        }
        StorCommand::Rm {
            key,
            via: Via {
                daemon: Some(target),
            },
            common,
        } => {
            daemon_client(&common, &target)?
                .delete(&key)
                .await
                .with_context(|| format!("deleting {key:?} through the daemon"))?;
            println!("deleted {key:?}");
            Ok(())
        }
        StorCommand::Get {
            key,
            output,
            via: _,
            common,
        } => {
            let zstor = open(&common)?;
            let head = zstor
                .read_head(key.as_bytes())
                .await
                .with_context(|| format!("reading {key:?}"))?;
            let bar = bar(Some(head.size), true);
            let progress = |bytes| bar.set_position(bytes);
            let report = match &output {
                Some(path) => {
                    let partial = partial_path(path);
                    let file = tokio::fs::File::create(&partial)
                        .await
                        .with_context(|| format!("creating {}", partial.display()))?;
                    let mut writer = tokio::io::BufWriter::with_capacity(1 << 20, file);
                    let result = zstor.get(key.as_bytes(), &mut writer, &progress).await;
                    let result = match result {
                        Ok(report) => {
                            let file = writer.into_inner();
                            file.sync_all()
                                .await
                                .with_context(|| format!("syncing {}", partial.display()))?;
                            tokio::fs::rename(&partial, path)
                                .await
                                .with_context(|| format!("renaming to {}", path.display()))?;
                            Ok(report)
                        }
                        Err(error) => {
                            let _ = tokio::fs::remove_file(&partial).await;
                            Err(error)
                        }
                    };
                    result
                }
                None => {
                    let stdout = tokio::io::stdout();
                    zstor.get(key.as_bytes(), stdout, &progress).await
                }
            };
            bar.finish_and_clear();
            let report = report.with_context(|| format!("reading {key:?}"))?;
            if report.bad_shards > 0 {
                eprintln!(
                    "warning: {} shards of {key:?} were missing or corrupt (queued for `zos stor repair`)",
                    report.bad_shards
                );
            }
            Ok(())
        }
        StorCommand::Ls {
            output,
            via: _,
            common,
        } => {
            let zstor = open(&common)?;
            let objects = zstor.list().await.context("listing objects")?;
            print_objects(&objects, output.json)
        }
        StorCommand::Rm {
            key,
            via: _,
            common,
        } => {
            let zstor = open(&common)?;
            zstor
                .delete(key.as_bytes())
                .await
                .with_context(|| format!("deleting {key:?}"))?;
            println!("deleted {key:?}");
            Ok(())
        }
        StorCommand::Check {
            key,
            output,
            via,
            common,
        } => {
            let checks = over_objects(
                &common,
                &via,
                "checking",
                async |client| client.check(key.as_deref()).await,
                async |zstor, progress| {
                    zstor
                        .check(key.as_deref().map(str::as_bytes), progress)
                        .await
                },
            )
            .await?;
            let unhealthy = checks.iter().filter(|check| !check.healthy()).count();
            if output.json {
                print_json(&checks)?;
            } else {
                for check in &checks {
                    let state = if check.healthy() {
                        "ok".to_string()
                    } else if check.chunks_unreadable > 0 {
                        format!("UNREADABLE ({} chunks)", check.chunks_unreadable)
                    } else {
                        "degraded".to_string()
                    };
                    println!(
                        "{state:<12} {} ({} chunks, {} shards ok, {} bad, metadata missing on {})",
                        check.name,
                        check.chunks,
                        check.shards_ok,
                        check.problems.len(),
                        check.metadata_missing_on.len()
                    );
                    for problem in &check.problems {
                        println!(
                            "    chunk {} shard {}: {} on {}",
                            problem.chunk, problem.shard, problem.problem, problem.backend
                        );
                    }
                }
            }
            if unhealthy > 0 {
                bail!(
                    "{unhealthy} of {} objects need `zos stor repair`",
                    checks.len()
                );
            }
            Ok(())
        }
        StorCommand::Repair {
            key,
            output,
            via,
            common,
        } => {
            let repairs = over_objects(
                &common,
                &via,
                "repairing",
                async |client| client.repair(key.as_deref()).await,
                async |zstor, progress| {
                    zstor
                        .repair(key.as_deref().map(str::as_bytes), progress)
                        .await
                },
            )
            .await?;
            let failed = repairs
                .iter()
                .filter(|repair| !repair.failures.is_empty())
                .count();
            if output.json {
                print_json(&repairs)?;
            } else {
                for repair in &repairs {
                    println!(
                        "{}: {} shards rebuilt{}",
                        repair.name,
                        repair.shards_rebuilt,
                        if repair.metadata_rewritten {
                            ", metadata rewritten"
                        } else {
                            ""
                        }
                    );
                    for failure in &repair.failures {
                        println!("    failed: {failure}");
                    }
                }
            }
            if failed > 0 {
                bail!("{failed} objects could not be fully repaired");
            }
            Ok(())
        }
        StorCommand::Daemon {
            socket,
            listen,
            common,
        } => {
            let zstor = open(&common)?;
            let config = zstor.config().clone();
            let socket = socket
                .or_else(|| config.daemon.socket.clone())
                .unwrap_or_else(|| config.state_dir().join("zstor.sock"));
            let tcp = listen.or_else(|| config.daemon.listen.clone());
            eprintln!(
                "zstor daemon: unix socket {}{}",
                socket.display(),
                tcp.as_ref()
                    .map(|address| format!(", tcp {address}"))
                    .unwrap_or_default()
            );
            let shutdown = async {
                let mut terminate =
                    tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = async {
                        match terminate.as_mut() {
                            Some(signal) => { signal.recv().await; }
                            None => std::future::pending::<()>().await,
                        }
                    } => {}
                }
            };
            erasure::daemon::serve(
                std::sync::Arc::new(zstor),
                config.daemon.token.clone(),
                erasure::daemon::Listen {
                    socket: Some(socket),
                    tcp,
                },
                shutdown,
            )
            .await
            .context("running the zstor daemon")
        }
        StorCommand::Status {
            output,
            via,
            common,
        } => {
            let statuses = match &via.daemon {
                Some(target) => daemon_client(&common, target)?
                    .status()
                    .await
                    .context("asking the daemon for the backends' status")?,
                None => open(&common)?.status().await,
            };
            if output.json {
                print_json(&statuses)?;
            } else {
                for status in &statuses {
                    let size = |value: Option<u64>| value.map_or("-".to_string(), human_bytes);
                    println!(
                        "{:<5} {}  entries {}  used {}  free {}{}",
                        if status.reachable { "up" } else { "DOWN" },
                        status.backend,
                        status
                            .entries
                            .map_or("-".to_string(), |entries| entries.to_string()),
                        size(status.used_bytes),
                        size(status.free_bytes),
                        status
                            .error
                            .as_ref()
                            .map(|error| format!("  ({error})"))
                            .unwrap_or_default()
                    );
                }
            }
            let down = statuses.iter().filter(|status| !status.reachable).count();
            if down > 0 {
                bail!("{down} of {} backends are unreachable", statuses.len());
            }
            Ok(())
        }
    }
}

fn print_put(report: &PutReport) {
    println!(
        "stored {:?}: {} in {} chunks, blake3 {}",
        report.name,
        human_bytes(report.size),
        report.chunks,
        report.blake3
    );
    if report.degraded_chunks > 0 {
        eprintln!(
            "warning: {} chunks are missing shards (queued for `zos stor repair`); failed backends: {}",
            report.degraded_chunks,
            report.failed_backends.join("; ")
        );
    }
}

fn print_objects(objects: &[ObjectInfo], json: bool) -> anyhow::Result<()> {
    if json {
        return print_json(&objects);
    }
    for object in objects {
        println!(
            "{:>12}  {}+{}  {}",
            human_bytes(object.size),
            object.data_shards,
            object.parity_shards,
            object.name
        );
    }
    Ok(())
}

/// A client for the daemon at `target` (a socket path or `http://host:port`), or at the
/// config's socket when `target` is empty; the token comes from the config.
/// Runs an operation over the objects (check, repair) through the daemon `via` names, with
/// a spinner, or here, with a bar that counts the objects done. `doing` names it in errors.
async fn over_objects<T, DaemonError, ZstorError>(
    common: &Common,
    via: &Via,
    doing: &str,
    through_daemon: impl AsyncFnOnce(DaemonClient) -> Result<T, DaemonError>,
    here: impl AsyncFnOnce(Zstor, &(dyn Fn(u64) + Sync)) -> Result<T, ZstorError>,
) -> anyhow::Result<T>
where
    DaemonError: std::error::Error + Send + Sync + 'static,
    ZstorError: std::error::Error + Send + Sync + 'static,
{
    let bar = bar(None, false);
    let result = match &via.daemon {
        Some(target) => {
            bar.enable_steady_tick(std::time::Duration::from_millis(200));
            through_daemon(daemon_client(common, target)?)
                .await
                .with_context(|| format!("{doing} through the daemon"))
        }
        None => here(open(common)?, &|_| bar.inc(1))
            .await
            .with_context(|| doing.to_string()),
    };
    bar.finish_and_clear();
    result
}

fn daemon_client(common: &Common, target: &str) -> anyhow::Result<DaemonClient> {
    let path = config_path(common);
    let config = Config::load(&path).with_context(|| {
        format!(
            "loading the zstor config {} for the daemon's token",
            path.display()
        )
    })?;
    let endpoint = if target.is_empty() {
        Endpoint::Unix(
            config
                .daemon
                .socket
                .clone()
                .unwrap_or_else(|| config.state_dir().join("zstor.sock")),
        )
    } else {
        Endpoint::parse(target)?
    };
    Ok(DaemonClient::with_endpoint(endpoint, config.daemon.token))
}

fn partial_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".zstor-partial");
    path.with_file_name(name)
}
