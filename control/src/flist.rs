//! `zos flist`: flist images: pack, mount, unpack, inspect.
//!
//! Argument parsing and printing only; the work is done by the `flistfs` crate.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use flistfs::format::{builder_from_flist, mode, Flist};
use flistfs::fs::{ChunkSource, FsCore};
use flistfs::source::{Route, SourceConfig, StoreSource};

/// `zos flist` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum FlistCommand {
    /// Pack a directory, a tar file (plain, gzip or zstd) or an OCI image (an OCI layout
    /// folder or a `docker save` tarball) into an flist, uploading its chunks to stores.
    ///
    /// Example: zos flist pack ./rootfs -o app.fl --store dir:///srv/chunks --tag entrypoint=/bin/app
    Pack {
        /// A directory, a tar file, an OCI layout folder or a `docker save` tarball.
        source: PathBuf,
        /// The flist to write.
        #[arg(short, long)]
        output: PathBuf,
        /// Store for the chunks: dir:///path, zdb://[user:pass@]host:port/ns, zstor://CONFIG,
        /// optionally limited to a range of id first bytes: 00-7f=URL. Repeat for several
        /// stores; overlapping ranges are replicas.
        #[arg(long = "store", required = true)]
        stores: Vec<String>,
        /// A tag key=value to record (entrypoint, env, ports, volumes, readme, ...). Repeatable.
        #[arg(long = "tag")]
        tags: Vec<String>,
        /// Plaintext bytes per chunk.
        #[arg(long, default_value_t = flistfs::chunk::CHUNK_BYTES_DEFAULT)]
        chunk_size: u32,
        /// Uploads in flight.
        #[arg(long, default_value_t = flistfs::pack::UPLOAD_PARALLEL_DEFAULT)]
        parallel: usize,
        /// Write store passwords into the flist (they are removed by default).
        #[arg(long)]
        keep_passwords: bool,
    },
    /// Mount an flist (ours or rfs's) read-only with FUSE, fetching chunks on first read.
    /// Runs in the foreground until Ctrl-C, SIGTERM or `zos flist umount`.
    Mount {
        /// The flist.
        flist: PathBuf,
        /// Where to mount it.
        mountpoint: PathBuf,
        /// Chunk cache folder, shared by all mounts [default: /var/cache/zos/chunks as root].
        #[arg(long)]
        cache: Option<PathBuf>,
        /// Bound of the chunk cache in MiB.
        #[arg(long, default_value_t = flistfs::cache::CACHE_BYTES_DEFAULT / 1048576)]
        cache_mib: u64,
        /// Bound of the decrypted chunks a mount keeps in memory, in MiB.
        #[arg(long, default_value_t = flistfs::source::MEMORY_CACHE_BYTES_DEFAULT / 1048576)]
        memory_cache_mib: u64,
        /// Read chunks from these stores instead of the flist's routes. Repeatable.
        #[arg(long = "store")]
        stores: Vec<String>,
        /// Milliseconds a store may take for one chunk before the read fails with EIO.
        #[arg(long, default_value_t = flistfs::source::STORE_TIMEOUT_MS_DEFAULT)]
        timeout_ms: u64,
        /// FUSE worker threads.
        #[arg(long, default_value_t = flistfs::fuse::FUSE_THREADS_DEFAULT)]
        threads: usize,
        /// A writable view: an overlayfs at MOUNTPOINT over the read-only flist (mounted
        /// at UPPERDIR/lower), writes going to UPPERDIR/upper (UPPERDIR/work is
        /// overlayfs's scratch). Unmounting MOUNTPOINT ends the mount.
        #[arg(long, value_name = "UPPERDIR")]
        rw: Option<PathBuf>,
        /// Serve every read from the mount process: make no plaintext copies of files in
        /// the cache and use no FUSE passthrough (by default a file of 1 MiB or more that
        /// was read whole gets a checked plaintext copy in CACHE/files, and later opens
        /// let the kernel read that copy directly, at local filesystem speed).
        #[arg(long)]
        no_passthrough: bool,
    },
    /// Unmount an flist mounted with `zos flist mount` (its process then exits).
    Umount {
        /// The mount point.
        mountpoint: PathBuf,
    },
    /// Restore an flist's tree into a directory (created if missing, must be empty).
    Unpack {
        /// The flist.
        flist: PathBuf,
        /// Destination folder.
        destination: PathBuf,
        /// Read chunks from these stores instead of the flist's routes.
        #[arg(long = "store")]
        stores: Vec<String>,
        /// Chunk cache folder (none by default).
        #[arg(long)]
        cache: Option<PathBuf>,
    },
    /// Show an flist's header, counts and tags, and verify every section.
    Inspect {
        /// The flist.
        flist: PathBuf,
    },
    /// List a directory of an flist, like `ls -l`.
    Ls {
        /// The flist.
        flist: PathBuf,
        /// Directory inside the flist.
        #[arg(default_value = "/")]
        path: String,
    },
    /// Show an flist's tree.
    Tree {
        /// The flist.
        flist: PathBuf,
        /// Directory inside the flist.
        #[arg(default_value = "/")]
        path: String,
    },
    /// Print a file of an flist to stdout (fetching its chunks).
    Cat {
        /// The flist.
        flist: PathBuf,
        /// File inside the flist.
        path: String,
        /// Read chunks from these stores instead of the flist's routes.
        #[arg(long = "store")]
        stores: Vec<String>,
    },
    /// List an flist's tags, or change them (the flist is rewritten in place).
    Tag {
        /// The flist (ours; convert rfs flists first).
        flist: PathBuf,
        /// Set key=value (replacing that key's values). Repeatable.
        #[arg(long = "set")]
        set: Vec<String>,
        /// Remove every tag with this key. Repeatable.
        #[arg(long = "remove")]
        remove: Vec<String>,
    },
    /// Quickstart, no configuration needed: packs a sample tree into an flist on a local
    /// store (a dir store in a fresh work folder), mounts it, shows what is there, and
    /// keeps it mounted until Ctrl-C. Run it from the project's folder (it packs
    /// fixtures/trees/sample by default), as root (mounting needs it).
    Demo {
        /// The tree to pack.
        #[arg(default_value = "fixtures/trees/sample")]
        source: PathBuf,
        /// Work folder for the store, flist, cache and mount point [default: a new one in
        /// the temporary folder].
        #[arg(long)]
        workdir: Option<PathBuf>,
    },
    /// Convert an rfs flist (.fl, SQLite) into our format. Its chunks stay where they are
    /// (the routes are kept) and are read with rfs's codec.
    Convert {
        /// The rfs flist.
        input: PathBuf,
        /// The flist to write.
        output: PathBuf,
    },
}

/// Runs one `zos flist` subcommand.
pub fn run(command: FlistCommand) -> anyhow::Result<()> {
    match run_command(command) {
        // `zos flist ls x.fl | head` is not an error.
        Err(error)
            if error
                .downcast_ref::<std::io::Error>()
                .is_some_and(|error| error.kind() == std::io::ErrorKind::BrokenPipe) =>
        {
            Ok(())
        }
        other => other,
    }
}

fn run_command(command: FlistCommand) -> anyhow::Result<()> {
    match command {
        FlistCommand::Pack {
            source,
            output,
            stores,
            tags,
            chunk_size,
            parallel,
            keep_passwords,
        } => pack(
            &source,
            &output,
            &stores,
            &tags,
            chunk_size,
            parallel,
            keep_passwords,
        ),
        FlistCommand::Mount {
            flist,
            mountpoint,
            cache,
            cache_mib,
            memory_cache_mib,
            stores,
            timeout_ms,
            threads,
            rw,
            no_passthrough,
        } => {
            let options = MountOptions {
                cache,
                cache_mib,
                memory_cache_mib,
                timeout_ms,
                threads,
                rw,
                passthrough: !no_passthrough,
            };
            mount(&flist, &mountpoint, &stores, options)
        }
        FlistCommand::Umount { mountpoint } => flistfs::sys::unmount(&mountpoint)
            .with_context(|| format!("unmounting {}", mountpoint.display())),
        FlistCommand::Unpack {
            flist,
            destination,
            stores,
            cache,
        } => {
            let image = open(&flist)?;
            let (source, _) = chunk_source(
                &image,
                &stores,
                cache,
                flistfs::cache::CACHE_BYTES_DEFAULT,
                SourceConfig::default(),
            )?;
            let started = std::time::Instant::now();
            let stats = flistfs::unpack::unpack_with_progress(&image, &source, &destination, true)
                .with_context(|| {
                    format!(
                        "unpacking {} into {}",
                        flist.display(),
                        destination.display()
                    )
                })?;
            let seconds = started.elapsed().as_secs_f64();
            println!(
                "unpacked {} entries, {} bytes into {} in {seconds:.2} s ({:.0} MB/s);                  {} chunks fetched from the stores",
                stats.entries,
                stats.bytes,
                destination.display(),
                stats.bytes as f64 / seconds.max(1e-6) / 1e6,
                source.store_reads()
            );
            Ok(())
        }
        FlistCommand::Demo { source, workdir } => demo(&source, workdir),
        FlistCommand::Inspect { flist } => inspect(&flist),
        FlistCommand::Ls { flist, path } => ls(&flist, &path),
        FlistCommand::Tree { flist, path } => tree(&flist, &path),
        FlistCommand::Cat {
            flist,
            path,
            stores,
        } => cat(&flist, &path, &stores),
        FlistCommand::Tag { flist, set, remove } => tag(&flist, &set, &remove),
        FlistCommand::Convert { input, output } => {
            if !flistfs::rfs::is_rfs(&input) {
                bail!(
                    "{} is not an rfs flist (not an SQLite file)",
                    input.display()
                );
            }
            let builder = flistfs::rfs::read(&input)
                .with_context(|| format!("reading {}", input.display()))?;
            builder
                .write_to(&output)
                .with_context(|| format!("writing {}", output.display()))?;
            println!(
                "converted {} into {} ({} inodes)",
                input.display(),
                output.display(),
                builder.inode_count()
            );
            Ok(())
        }
    }
}

fn open(path: &Path) -> anyhow::Result<Flist> {
    flistfs::open_any(path).with_context(|| format!("opening flist {}", path.display()))
}

fn parse_routes(
    texts: &[String],
    keep_passwords: bool,
) -> anyhow::Result<Vec<(Route, Arc<dyn erasure::store::ChunkStore>)>> {
    texts
        .iter()
        .map(|text| {
            let mut route = Route::parse(text)?;
            let store = erasure::store::open_store(&route.url)
                .with_context(|| format!("opening store {}", route.url))?;
            if !keep_passwords {
                route.url = flistfs::source::strip_password(&route.url);
            }
            Ok((route, store))
        })
        .collect()
}

fn chunk_source(
    flist: &Flist,
    stores: &[String],
    cache: Option<PathBuf>,
    cache_bytes: u64,
    config: SourceConfig,
) -> anyhow::Result<(StoreSource, Option<Arc<flistfs::cache::ChunkCache>>)> {
    let texts: Vec<String> = if stores.is_empty() {
        flist
            .tags()?
            .into_iter()
            .filter(|(key, _)| *key == b"route")
            .map(|(_, value)| String::from_utf8_lossy(value).into_owned())
            .collect()
    } else {
        stores.to_vec()
    };
    // Keep passwords given here: they are only used, never written.
    let routes = parse_routes(&texts, true)?;
    let cache = match cache {
        Some(directory) => Some(Arc::new(
            flistfs::cache::ChunkCache::open(&directory, cache_bytes)
                .with_context(|| format!("opening the chunk cache {}", directory.display()))?,
        )),
        None => None,
    };
    Ok((StoreSource::new(routes, cache.clone(), config)?, cache))
}

fn parse_tag(text: &str) -> anyhow::Result<(&str, &str)> {
    text.split_once('=')
        .with_context(|| format!("tag {text:?} is not key=value"))
}

#[allow(clippy::too_many_arguments)]
fn pack(
    source: &Path,
    output: &Path,
    stores: &[String],
    tags: &[String],
    chunk_bytes: u32,
    parallel: usize,
    keep_passwords: bool,
) -> anyhow::Result<()> {
    let routes = parse_routes(stores, keep_passwords)?;
    let route_tags: Vec<String> = routes.iter().map(|(route, _)| route.to_tag()).collect();
    let options = flistfs::pack::PackOptions {
        chunk_bytes,
        upload_parallel: parallel,
        progress: true,
    };
    let root = flistfs::InodeMeta {
        mode: mode::DIRECTORY | 0o755,
        ..Default::default()
    };
    let mut packer = flistfs::pack::Packer::new(routes, root, options)?;
    let metadata =
        std::fs::metadata(source).with_context(|| format!("reading {}", source.display()))?;
    if metadata.is_dir() && flistfs::oci::is_image_directory(source) {
        flistfs::oci::add_image_directory(&mut packer, source)
            .with_context(|| format!("packing OCI image {}", source.display()))?;
    } else if metadata.is_dir() {
        packer
            .add_directory(source)
            .with_context(|| format!("packing {}", source.display()))?;
    } else if flistfs::oci::is_image_tar(source)? {
        flistfs::oci::add_image_tar(&mut packer, source)
            .with_context(|| format!("packing image archive {}", source.display()))?;
    } else {
        let file =
            std::fs::File::open(source).with_context(|| format!("opening {}", source.display()))?;
        packer
            .add_tar(file)
            .with_context(|| format!("packing tar file {}", source.display()))?;
    }
    for route in &route_tags {
        packer.builder_mut().add_tag(b"route", route.as_bytes())?;
    }
    for text in tags {
        let (key, value) = parse_tag(text)?;
        packer
            .builder_mut()
            .add_tag(key.as_bytes(), value.as_bytes())?;
    }
    let stats = packer
        .finish(output)
        .with_context(|| format!("writing {}", output.display()))?;
    println!(
        "packed {} into {}: {stats}",
        source.display(),
        output.display()
    );
    Ok(())
}

/// Settings of `zos flist mount` besides the flist, mount point and stores.
struct MountOptions {
    cache: Option<PathBuf>,
    cache_mib: u64,
    memory_cache_mib: u64,
    timeout_ms: u64,
    threads: usize,
    rw: Option<PathBuf>,
    /// Plaintext copies and FUSE passthrough.
    passthrough: bool,
}

/// Mounts the overlay once the flist is mounted at `lower`, then ends the FUSE mount when
/// the overlay goes away (`zos flist umount MOUNTPOINT`).
fn stack_overlay(lower: PathBuf, upper: PathBuf, work: PathBuf, target: PathBuf) {
    std::thread::spawn(move || {
        let started = std::time::Instant::now();
        while !flistfs::sys::is_mount_point(&lower) {
            if started.elapsed() > Duration::from_secs(30) {
                tracing::error!("the flist did not mount; no overlay");
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        if let Err(error) = flistfs::sys::mount_overlay(&lower, &upper, &work, &target) {
            tracing::error!(%error, "mounting the writable overlay failed; unmounting");
            let _ = flistfs::sys::unmount(&lower);
            return;
        }
        tracing::info!(mountpoint = %target.display(), upper = %upper.display(), "writable overlay mounted");
        while flistfs::sys::is_mount_point(&target) && flistfs::sys::is_mount_point(&lower) {
            std::thread::sleep(Duration::from_millis(200));
        }
        let _ = flistfs::sys::unmount(&lower);
    });
}

fn mount(
    flist_path: &Path,
    mountpoint: &Path,
    stores: &[String],
    options: MountOptions,
) -> anyhow::Result<()> {
    flistfs::sys::keep_freed_memory();
    let flist = Arc::new(open(flist_path)?);
    let config = SourceConfig {
        store_timeout: Duration::from_millis(options.timeout_ms),
        memory_cache_bytes: options.memory_cache_mib.saturating_mul(1048576),
    };
    let cache = Some(options.cache.unwrap_or_else(flistfs::cache::default_dir));
    let (source, cache) = chunk_source(
        &flist,
        stores,
        cache,
        options.cache_mib.saturating_mul(1048576),
        config,
    )?;
    let source = Arc::new(source) as Arc<dyn ChunkSource>;
    let copies = match cache {
        Some(cache) if options.passthrough => Some(
            flistfs::copies::Copies::new(flist.clone(), source.clone(), cache)
                .context("starting the plaintext copy maker")?,
        ),
        _ => None,
    };
    let core = FsCore::new(flist, source);
    let (fuse_mountpoint, stacked) = match &options.rw {
        Some(upper_root) => {
            for part in ["lower", "upper", "work"] {
                std::fs::create_dir_all(upper_root.join(part))
                    .with_context(|| format!("creating {}", upper_root.join(part).display()))?;
            }
            let upper_root = upper_root
                .canonicalize()
                .with_context(|| format!("resolving {}", upper_root.display()))?;
            let target = mountpoint
                .canonicalize()
                .with_context(|| format!("resolving {}", mountpoint.display()))?;
            let lower = upper_root.join("lower");
            stack_overlay(
                lower.clone(),
                upper_root.join("upper"),
                upper_root.join("work"),
                target.clone(),
            );
            (lower, Some(target))
        }
        None => (mountpoint.to_path_buf(), None),
    };
    tracing::info!(flist = %flist_path.display(), mountpoint = %mountpoint.display(), "mounting; Ctrl-C or `zos flist umount` to stop");
    flistfs::fuse::serve(
        core,
        copies,
        &fuse_mountpoint,
        options.threads,
        &flist_path.display().to_string(),
        stacked,
    )
    .with_context(|| {
        format!(
            "mounting {} at {}",
            flist_path.display(),
            fuse_mountpoint.display()
        )
    })
}

fn show(name: &[u8]) -> String {
    String::from_utf8_lossy(name).into_owned()
}

fn inspect(path: &Path) -> anyhow::Result<()> {
    let flist = open(path)?;
    let kind = if flistfs::rfs::is_rfs(path) {
        "rfs (SQLite), read into format version 1"
    } else {
        "flist format version 1"
    };
    println!("file:       {}", path.display());
    println!("format:     {kind}");
    println!("inodes:     {}", flist.inode_count());
    println!("chunks:     {}", flist.chunk_count());
    println!("chunk size: {} bytes", flist.chunk_bytes());
    match flist.verify_all() {
        Ok(()) => println!("checksums:  all sections verified"),
        Err(error) => println!("checksums:  FAILED: {error}"),
    }
    for (key, value) in flist.tags()? {
        println!("tag:        {}={}", show(key), show(value));
    }
    flist.verify_all().context("the flist is corrupt")?;
    Ok(())
}

fn resolve(flist: &Flist, path: &str) -> anyhow::Result<flistfs::format::Inode> {
    flist
        .resolve(path.as_bytes())?
        .with_context(|| format!("{path}: no such entry in the flist"))
}

fn type_char(type_bits: u32) -> char {
    match type_bits & mode::TYPE_MASK {
        mode::DIRECTORY => 'd',
        mode::SYMLINK => 'l',
        mode::CHAR_DEVICE => 'c',
        mode::BLOCK_DEVICE => 'b',
        mode::FIFO => 'p',
        mode::SOCKET => 's',
        _ => '-',
    }
}

fn permissions(mode_bits: u32) -> String {
    let mut text = String::new();
    for (shift, special, special_char) in [(6, 0o4000, 's'), (3, 0o2000, 's'), (0, 0o1000, 't')] {
        let bits = (mode_bits >> shift) & 7;
        text.push(if bits & 4 != 0 { 'r' } else { '-' });
        text.push(if bits & 2 != 0 { 'w' } else { '-' });
        let execute = bits & 1 != 0;
        text.push(match (mode_bits & special != 0, execute) {
            (true, true) => special_char,
            (true, false) => special_char.to_ascii_uppercase(),
            (false, true) => 'x',
            (false, false) => '-',
        });
    }
    text
}

fn ls(path: &Path, inner: &str) -> anyhow::Result<()> {
    let flist = open(path)?;
    let directory = resolve(&flist, inner)?;
    let entries: Vec<(Vec<u8>, u32)> = if directory.is_dir() {
        (0..flist.dir_len(&directory)?)
            .map(|index| {
                flist
                    .dir_entry(&directory, index)
                    .map(|entry| (entry.name.to_vec(), entry.inode))
            })
            .collect::<Result<_, _>>()?
    } else {
        vec![(inner.as_bytes().to_vec(), directory.number)]
    };
    let mut out = std::io::stdout().lock();
    use std::io::Write;
    for (name, number) in entries {
        let inode = flist.inode(number)?;
        let record = &inode.record;
        let mut line = format!(
            "{}{} {:>3} {:>5} {:>5} {:>10} {} {}",
            type_char(record.mode),
            permissions(record.mode),
            record.nlink,
            record.uid,
            record.gid,
            record.size,
            record.mtime_sec,
            show(&name)
        );
        if inode.kind() == mode::SYMLINK {
            line.push_str(&format!(" -> {}", show(flist.symlink_target(&inode)?)));
        }
        writeln!(out, "{line}")?;
    }
    Ok(())
}

fn tree(path: &Path, inner: &str) -> anyhow::Result<()> {
    let flist = open(path)?;
    let top = resolve(&flist, inner)?;
    let mut out = std::io::stdout().lock();
    use std::io::Write;
    writeln!(out, "{inner}")?;
    let mut stack: Vec<(flistfs::format::Inode, u64, String)> = vec![(top, 0, String::new())];
    let mut count = 0u64;
    while let Some((directory, index, prefix)) = stack.pop() {
        if !directory.is_dir() || index >= flist.dir_len(&directory)? {
            continue;
        }
        let last = index + 1 == flist.dir_len(&directory)?;
        let entry = flist.dir_entry(&directory, index)?;
        let child = flist.inode(entry.inode)?;
        let mut line = format!(
            "{prefix}{}{}",
            if last { "└── " } else { "├── " },
            show(entry.name)
        );
        if child.kind() == mode::SYMLINK {
            line.push_str(&format!(" -> {}", show(flist.symlink_target(&child)?)));
        }
        writeln!(out, "{line}")?;
        count += 1;
        stack.push((directory, index + 1, prefix.clone()));
        if child.is_dir() {
            stack.push((
                child,
                0,
                format!("{prefix}{}", if last { "    " } else { "│   " }),
            ));
        }
    }
    writeln!(out, "\n{count} entries")?;
    Ok(())
}

fn cat(path: &Path, inner: &str, stores: &[String]) -> anyhow::Result<()> {
    let flist = Arc::new(open(path)?);
    let file = resolve(&flist, inner)?;
    if file.kind() != mode::REGULAR {
        bail!("{inner} is not a regular file");
    }
    let (source, _) = chunk_source(&flist, stores, None, 0, SourceConfig::default())?;
    let core = FsCore::new(flist.clone(), Arc::new(source));
    let mut out = std::io::stdout().lock();
    use std::io::Write;
    let mut offset = 0u64;
    let step = 4 * 1024 * 1024;
    while offset < file.record.size {
        let bytes = core
            .read(u64::from(file.number) + 1, offset, step)
            .map_err(|error| anyhow::anyhow!("{inner} at byte {offset}: {error}"))?;
        if bytes.is_empty() {
            break;
        }
        out.write_all(&bytes)?;
        offset += bytes.len() as u64;
    }
    Ok(())
}

fn tag(path: &Path, set: &[String], remove: &[String]) -> anyhow::Result<()> {
    let flist = open(path)?;
    if set.is_empty() && remove.is_empty() {
        for (key, value) in flist.tags()? {
            println!("{}={}", show(key), show(value));
        }
        return Ok(());
    }
    if flistfs::rfs::is_rfs(path) {
        bail!(
            "{} is an rfs flist: `zos flist convert` it first",
            path.display()
        );
    }
    let mut builder = builder_from_flist(&flist)?;
    for key in remove {
        builder.remove_tags(key.as_bytes());
    }
    for text in set {
        let (key, value) = parse_tag(text)?;
        builder.remove_tags(key.as_bytes());
        builder.add_tag(key.as_bytes(), value.as_bytes())?;
    }
    drop(flist);
    builder
        .write_to(path)
        .with_context(|| format!("rewriting {}", path.display()))?;
    Ok(())
}

fn is_mounted(mountpoint: &Path) -> bool {
    let Ok(mountinfo) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    let wanted = mountpoint.to_string_lossy();
    mountinfo
        .lines()
        .any(|line| line.split(' ').nth(4) == Some(wanted.as_ref()))
}

fn show_tree(
    root: &Path,
    relative: &Path,
    depth: usize,
    out: &mut impl std::io::Write,
) -> std::io::Result<()> {
    let mut entries: Vec<_> = std::fs::read_dir(root.join(relative))?.collect::<Result<_, _>>()?;
    entries.sort_by_key(|entry| entry.file_name());
    for entry in entries {
        let metadata = std::fs::symlink_metadata(entry.path())?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let indent = "  ".repeat(depth);
        if metadata.file_type().is_symlink() {
            writeln!(
                out,
                "{indent}{name} -> {}",
                std::fs::read_link(entry.path())?.display()
            )?;
        } else if metadata.is_dir() {
            writeln!(out, "{indent}{name}/")?;
            show_tree(root, &relative.join(entry.file_name()), depth + 1, out)?;
        } else {
            writeln!(out, "{indent}{name} ({} bytes)", metadata.len())?;
        }
    }
    Ok(())
}

fn demo(source: &Path, workdir: Option<PathBuf>) -> anyhow::Result<()> {
    if !source.is_dir() {
        bail!(
            "{} is not a folder: run `zos flist demo` from the project's folder, or give a tree to pack",
            source.display()
        );
    }
    let workdir = workdir.unwrap_or_else(|| {
        std::env::temp_dir().join(format!("zos-flist-demo-{}", std::process::id()))
    });
    for part in ["store", "mnt", "cache"] {
        std::fs::create_dir_all(workdir.join(part))
            .with_context(|| format!("creating {}", workdir.display()))?;
    }
    let workdir = workdir
        .canonicalize()
        .with_context(|| format!("resolving {}", workdir.display()))?;
    let flist = workdir.join("sample.fl");
    let store = format!("dir://{}", workdir.join("store").display());
    println!(
        "1. packing {} into {} (chunks go to the local store {store})",
        source.display(),
        flist.display()
    );
    pack(
        source,
        &flist,
        &[store],
        &["readme=zos flist demo".into()],
        flistfs::chunk::CHUNK_BYTES_DEFAULT,
        flistfs::pack::UPLOAD_PARALLEL_DEFAULT,
        false,
    )?;
    let mountpoint = workdir.join("mnt");
    println!(
        "2. mounting it at {} (chunks are fetched on first read)",
        mountpoint.display()
    );
    let watched = mountpoint.clone();
    std::thread::spawn(move || {
        let started = std::time::Instant::now();
        while !is_mounted(&watched) {
            if started.elapsed() > Duration::from_secs(10) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let mut out = std::io::stdout().lock();
        use std::io::Write;
        let _ = writeln!(out, "3. what is there:");
        let _ = show_tree(&watched, Path::new(""), 1, &mut out);
        if let Ok(text) = std::fs::read_to_string(watched.join("README.txt")) {
            let _ = writeln!(out, "\n{}/README.txt says:\n{text}", watched.display());
        }
        let _ = writeln!(
            out,
            "mounted at {}; try `ls -l {0}`; press Ctrl-C (or run `zos flist umount {0}`) to unmount",
            watched.display()
        );
    });
    let options = MountOptions {
        cache: Some(workdir.join("cache")),
        cache_mib: 1024,
        memory_cache_mib: flistfs::source::MEMORY_CACHE_BYTES_DEFAULT / 1048576,
        timeout_ms: flistfs::source::STORE_TIMEOUT_MS_DEFAULT,
        threads: flistfs::fuse::FUSE_THREADS_DEFAULT,
        rw: None,
        passthrough: true,
    };
    mount(&flist, &mountpoint, &[], options)?;
    println!(
        "unmounted; the store and flist stay in {}",
        workdir.display()
    );
    Ok(())
}
