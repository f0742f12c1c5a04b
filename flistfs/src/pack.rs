//! Pack: a source tree (a directory or a tar file, plain, gzip or zstd) into an flist,
//! with its chunks uploaded to the stores.
//!
//! The walk is single-threaded (it reads and seals chunks); uploads run in parallel on a
//! tokio runtime, at most `upload_parallel` at once, each asking the store whether it
//! already has the chunk before sending it. Equal chunks (within a run and, thanks to
//! convergent encryption, across flists) are uploaded once. All-zero chunks are holes.

use std::collections::{HashMap, HashSet};
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use erasure::store::ChunkStore;
use indicatif::{ProgressBar, ProgressStyle};

use crate::chunk::{self, ChunkCodec, ChunkRef, CHUNK_BYTES_MAX, CHUNK_BYTES_MIN};
use crate::format::writer::show;
use crate::format::{mode, FlistBuilder, FormatError, InodeMeta, ROOT_INODE};
use crate::source::Route;

/// Default number of uploads in flight.
pub const UPLOAD_PARALLEL_DEFAULT: usize = 16;
/// Most uploads in flight, whatever is asked.
pub const UPLOAD_PARALLEL_MAX: usize = 256;
/// Time one store call may take during pack.
pub const UPLOAD_TIMEOUT_MS: u64 = 60_000;

/// Errors of packing.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PackError {
    /// Reading the source failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being read.
        context: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The source holds something that cannot be packed.
    #[error("{0}")]
    Invalid(String),
    /// The tree does not fit the format.
    #[error(transparent)]
    Format(#[from] FormatError),
    /// A store refused or failed an upload.
    #[error("upload failed: {0}")]
    Upload(String),
}

fn io_error(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> PackError {
    let context = context.into();
    move |source| PackError::Io { context, source }
}

/// Settings of a pack.
#[derive(Debug, Clone)]
pub struct PackOptions {
    /// Plaintext bytes per chunk.
    pub chunk_bytes: u32,
    /// Uploads in flight.
    pub upload_parallel: usize,
    /// Show a progress bar on stderr (hidden anyway when stderr is not a terminal).
    pub progress: bool,
}

impl Default for PackOptions {
    fn default() -> Self {
        Self {
            chunk_bytes: chunk::CHUNK_BYTES_DEFAULT,
            upload_parallel: UPLOAD_PARALLEL_DEFAULT,
            progress: true,
        }
    }
}

/// What a pack did.
#[derive(Debug, Clone, Default)]
pub struct PackStats {
    /// Entries (all types, without the root).
    pub entries: u64,
    /// Regular files.
    pub files: u64,
    /// Content bytes read.
    pub bytes: u64,
    /// Chunks cut (holes excluded).
    pub chunks: u64,
    /// Distinct chunks.
    pub chunks_unique: u64,
    /// Chunks sent to a store.
    pub chunks_uploaded: u64,
    /// Chunks a store already had.
    pub chunks_present: u64,
    /// Stored bytes sent.
    pub bytes_uploaded: u64,
    /// Time taken.
    pub elapsed: Duration,
}

impl std::fmt::Display for PackStats {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let dedup = if self.chunks == 0 {
            1.0
        } else {
            self.chunks as f64 / self.chunks_unique.max(1) as f64
        };
        write!(
            formatter,
            "{} entries ({} files, {} bytes) in {:.2} s; {} chunks, {} distinct (dedup ratio {:.2}), \
             {} uploaded ({} bytes), {} already in the store",
            self.entries,
            self.files,
            self.bytes,
            self.elapsed.as_secs_f64(),
            self.chunks,
            self.chunks_unique,
            dedup,
            self.chunks_uploaded,
            self.bytes_uploaded,
            self.chunks_present
        )
    }
}

struct Uploader {
    runtime: tokio::runtime::Runtime,
    stores: Arc<Vec<(Route, Arc<dyn ChunkStore>)>>,
    permits: Arc<tokio::sync::Semaphore>,
    seen: HashSet<[u8; 32]>,
    uploaded: Arc<AtomicU64>,
    present: Arc<AtomicU64>,
    bytes_uploaded: Arc<AtomicU64>,
    failure: Arc<Mutex<Option<String>>>,
    permits_total: u32,
}

impl Uploader {
    fn submit(&mut self, id: [u8; 32], stored: Vec<u8>) -> Result<(), PackError> {
        if !self.seen.insert(id) {
            return Ok(());
        }
        if let Some(message) = self
            .failure
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
        {
            return Err(PackError::Upload(message));
        }
        let permit = self
            .runtime
            .block_on(self.permits.clone().acquire_owned())
            .map_err(|_| PackError::Upload("uploader closed".into()))?;
        let stores = self.stores.clone();
        let (uploaded, present, bytes_uploaded, failure) = (
            self.uploaded.clone(),
            self.present.clone(),
            self.bytes_uploaded.clone(),
            self.failure.clone(),
        );
        self.runtime.spawn(async move {
            let _permit = permit;
            let timeout = Duration::from_millis(UPLOAD_TIMEOUT_MS);
            for (route, store) in stores.iter().filter(|(route, _)| route.covers(&id)) {
                let outcome = async {
                    if tokio::time::timeout(timeout, store.exists(&id))
                        .await
                        .map_err(|_| "timed out".to_string())?
                        .map_err(|error| error.to_string())?
                    {
                        present.fetch_add(1, Ordering::Relaxed);
                        return Ok::<(), String>(());
                    }
                    tokio::time::timeout(timeout, store.put(&id, &stored))
                        .await
                        .map_err(|_| "timed out".to_string())?
                        .map_err(|error| error.to_string())?;
                    uploaded.fetch_add(1, Ordering::Relaxed);
                    bytes_uploaded.fetch_add(stored.len() as u64, Ordering::Relaxed);
                    Ok(())
                }
                .await;
                if let Err(error) = outcome {
                    let mut failure = failure
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner);
                    failure.get_or_insert(format!(
                        "chunk {} to {}: {error}",
                        hex::encode(id),
                        route.url
                    ));
                }
            }
        });
        Ok(())
    }

    /// Waits for every upload; the first failure, if any, is the error.
    fn finish(self) -> Result<(), PackError> {
        // Every task holds one permit while it runs; owning them all means all are done.
        self.runtime
            .block_on(self.permits.acquire_many(self.permits_total))
            .map_err(|_| PackError::Upload("uploader closed".into()))?
            .forget();
        match self
            .failure
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take()
        {
            Some(message) => Err(PackError::Upload(message)),
            None => Ok(()),
        }
    }
}

/// Packs trees into an flist.
pub struct Packer {
    builder: FlistBuilder,
    options: PackOptions,
    uploader: Uploader,
    stats: PackStats,
    progress: ProgressBar,
    started: Instant,
    hard_links: HashMap<(u64, u64), u32>,
    /// While applying an OCI layer: the entries this layer added (whiteouts and opaque
    /// directories only remove what lower layers made).
    layer_added: Option<HashSet<(u32, Vec<u8>)>>,
}

fn meta_of(metadata: &std::fs::Metadata) -> InodeMeta {
    InodeMeta {
        mode: metadata.mode(),
        uid: metadata.uid(),
        gid: metadata.gid(),
        size: metadata.size(),
        rdev: metadata.rdev(),
        atime: (metadata.atime(), metadata.atime_nsec() as u32),
        mtime: (metadata.mtime(), metadata.mtime_nsec() as u32),
        ctime: (metadata.ctime(), metadata.ctime_nsec() as u32),
    }
}

/// Reads until `buffer` is full or the source ends; returns the bytes read.
fn fill(reader: &mut impl Read, buffer: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buffer.len() {
        match reader.read(&mut buffer[filled..]) {
            Ok(0) => break,
            Ok(count) => filled += count,
            Err(error) if error.kind() == std::io::ErrorKind::Interrupted => {}
            Err(error) => return Err(error),
        }
    }
    Ok(filled)
}

impl Packer {
    /// A packer writing chunks to `stores` (each with its route; together they must cover
    /// every id), with `root` as the root directory's metadata.
    pub fn new(
        stores: Vec<(Route, Arc<dyn ChunkStore>)>,
        root: InodeMeta,
        options: PackOptions,
    ) -> Result<Self, PackError> {
        if !(CHUNK_BYTES_MIN..=CHUNK_BYTES_MAX).contains(&options.chunk_bytes) {
            return Err(PackError::Invalid(format!(
                "chunk size {} is outside {CHUNK_BYTES_MIN}..={CHUNK_BYTES_MAX} bytes",
                options.chunk_bytes
            )));
        }
        let routes: Vec<Route> = stores.iter().map(|(route, _)| route.clone()).collect();
        if !crate::source::routes_cover_all(&routes) {
            return Err(PackError::Invalid(
                "the store routes do not cover every chunk id (00-ff)".into(),
            ));
        }
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("flist-upload")
            .enable_all()
            .build()
            .map_err(io_error("starting the upload runtime"))?;
        let parallel = options.upload_parallel.clamp(1, UPLOAD_PARALLEL_MAX);
        let progress = if options.progress {
            ProgressBar::new_spinner()
        } else {
            ProgressBar::hidden()
        };
        progress.set_style(
            ProgressStyle::with_template("{spinner} {elapsed} {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_spinner()),
        );
        progress.enable_steady_tick(Duration::from_millis(200));
        Ok(Self {
            builder: FlistBuilder::new(root, options.chunk_bytes),
            options,
            uploader: Uploader {
                runtime,
                stores: Arc::new(stores),
                permits: Arc::new(tokio::sync::Semaphore::new(parallel)),
                seen: HashSet::new(),
                uploaded: Arc::default(),
                present: Arc::default(),
                bytes_uploaded: Arc::default(),
                failure: Arc::default(),
                permits_total: parallel as u32,
            },
            stats: PackStats::default(),
            progress,
            started: Instant::now(),
            hard_links: HashMap::new(),
            layer_added: None,
        })
    }

    /// The flist being built (to add tags, for instance).
    pub fn builder_mut(&mut self) -> &mut FlistBuilder {
        &mut self.builder
    }

    fn show_progress(&self) {
        let dedup = self.stats.chunks as f64 / self.stats.chunks_unique.max(1) as f64;
        self.progress.set_message(format!(
            "{} entries, {} files, {:.1} MiB, {} chunks (dedup {:.2})",
            self.stats.entries,
            self.stats.files,
            self.stats.bytes as f64 / 1048576.0,
            self.stats.chunks,
            dedup
        ));
    }

    /// Cuts `reader` into chunks, seals and uploads them; returns the chunk list and size.
    fn content(
        &mut self,
        reader: &mut impl Read,
        what: &str,
    ) -> Result<(Vec<ChunkRef>, u64), PackError> {
        let mut buffer = vec![0u8; self.options.chunk_bytes as usize];
        let mut chunks = Vec::new();
        let mut offset = 0u64;
        loop {
            let filled = fill(reader, &mut buffer).map_err(io_error(format!("reading {what}")))?;
            if filled == 0 {
                break;
            }
            let plain = &buffer[..filled];
            if plain.iter().any(|&byte| byte != 0) {
                let sealed =
                    chunk::seal(plain).map_err(|error| PackError::Invalid(error.to_string()))?;
                self.stats.chunks += 1;
                if !self.uploader.seen.contains(&sealed.id) {
                    self.stats.chunks_unique += 1;
                }
                chunks.push(ChunkRef {
                    file_offset: offset,
                    plain_bytes: filled as u32,
                    stored_bytes: sealed.stored.len() as u32,
                    codec: ChunkCodec::ZosV1,
                    id: sealed.id,
                    key: sealed.key,
                });
                self.uploader.submit(sealed.id, sealed.stored)?;
            }
            offset += filled as u64;
            self.stats.bytes += filled as u64;
            if filled < buffer.len() {
                break;
            }
        }
        Ok((chunks, offset))
    }

    /// Adds the directory tree under `source` to the root.
    pub fn add_directory(&mut self, source: &Path) -> Result<(), PackError> {
        let metadata =
            std::fs::symlink_metadata(source).map_err(io_error(format!("{}", source.display())))?;
        if !metadata.is_dir() {
            return Err(PackError::Invalid(format!(
                "{} is not a directory",
                source.display()
            )));
        }
        let mut root = meta_of(&metadata);
        root.size = 0;
        self.builder.set_meta(ROOT_INODE, root)?;
        self.add_xattrs(source, ROOT_INODE)?;
        self.walk(source, ROOT_INODE)
    }

    fn add_xattrs(&mut self, path: &Path, inode: u32) -> Result<(), PackError> {
        let names = match xattr::list(path) {
            Ok(names) => names,
            // Filesystems without xattr support simply have none.
            Err(error) if error.raw_os_error() == Some(libc::ENOTSUP) => return Ok(()),
            Err(error) => {
                return Err(io_error(format!("listing xattrs of {}", path.display()))(
                    error,
                ))
            }
        };
        for name in names {
            if let Some(value) = xattr::get(path, &name)
                .map_err(io_error(format!("xattrs of {}", path.display())))?
            {
                self.builder.set_xattr(inode, name.as_bytes(), &value)?;
            }
        }
        Ok(())
    }

    fn walk(&mut self, directory: &Path, parent: u32) -> Result<(), PackError> {
        let mut entries: Vec<std::fs::DirEntry> = std::fs::read_dir(directory)
            .map_err(io_error(format!("listing {}", directory.display())))?
            .collect::<Result<_, _>>()
            .map_err(io_error(format!("listing {}", directory.display())))?;
        entries.sort_by_key(|entry| entry.file_name());
        for entry in entries {
            let path = entry.path();
            let name = entry.file_name();
            let metadata = std::fs::symlink_metadata(&path)
                .map_err(io_error(format!("{}", path.display())))?;
            let meta = meta_of(&metadata);
            let kind = meta.mode & mode::TYPE_MASK;
            self.stats.entries += 1;
            if kind != mode::DIRECTORY && metadata.nlink() > 1 {
                if let Some(&existing) = self.hard_links.get(&(metadata.dev(), metadata.ino())) {
                    self.builder
                        .link(parent, name.as_bytes(), existing)
                        .map_err(|error| entry_error(&path, error))?;
                    continue;
                }
            }
            let inode = match kind {
                mode::REGULAR => {
                    let mut file = std::fs::File::open(&path)
                        .map_err(io_error(format!("opening {}", path.display())))?;
                    let (chunks, size) = self.content(&mut file, &path.display().to_string())?;
                    self.stats.files += 1;
                    let mut meta = meta;
                    meta.size = size;
                    self.builder.add(parent, name.as_bytes(), meta, chunks, b"")
                }
                mode::SYMLINK => {
                    let target = std::fs::read_link(&path)
                        .map_err(io_error(format!("reading link {}", path.display())))?;
                    self.builder.add(
                        parent,
                        name.as_bytes(),
                        meta,
                        vec![],
                        target.as_os_str().as_bytes(),
                    )
                }
                _ => {
                    let mut meta = meta;
                    meta.size = 0;
                    self.builder.add(parent, name.as_bytes(), meta, vec![], b"")
                }
            }
            .map_err(|error| entry_error(&path, error))?;
            if kind != mode::DIRECTORY && metadata.nlink() > 1 {
                self.hard_links
                    .insert((metadata.dev(), metadata.ino()), inode);
            }
            self.add_xattrs(&path, inode)?;
            if kind == mode::DIRECTORY {
                self.walk(&path, inode)?;
            }
            self.show_progress();
        }
        Ok(())
    }

    /// Applies an OCI image layer (a tar stream, plain, gzip or zstd) on the tree:
    /// `.wh.NAME` removes NAME of the layers below, `.wh..wh..opq` empties its directory of
    /// what the layers below put there.
    pub fn add_layer(&mut self, reader: impl Read) -> Result<(), PackError> {
        self.layer_added = Some(HashSet::new());
        let outcome = self.add_tar(reader);
        self.layer_added = None;
        outcome
    }

    /// Adds the entries of a tar stream (plain, gzip or zstd, detected from its first
    /// bytes) to the tree. Later entries replace earlier ones of the same path.
    pub fn add_tar(&mut self, reader: impl Read) -> Result<(), PackError> {
        let mut reader = std::io::BufReader::new(reader);
        let magic = {
            use std::io::BufRead;
            reader
                .fill_buf()
                .map_err(io_error("reading the tar file"))?
                .get(..4)
                .map(<[u8]>::to_vec)
        };
        let decoded: Box<dyn Read> = match magic.as_deref() {
            Some([0x1f, 0x8b, ..]) => Box::new(flate2::read::MultiGzDecoder::new(reader)),
            Some([0x28, 0xb5, 0x2f, 0xfd]) => Box::new(
                zstd::stream::read::Decoder::with_buffer(reader)
                    .map_err(io_error("starting zstd"))?,
            ),
            _ => Box::new(reader),
        };
        let mut archive = tar::Archive::new(decoded);
        for entry in archive
            .entries()
            .map_err(io_error("reading the tar file"))?
        {
            let mut entry = entry.map_err(io_error("reading a tar entry"))?;
            self.add_tar_entry(&mut entry)?;
            self.show_progress();
        }
        Ok(())
    }

    /// Components of a tar path, refusing any that could escape.
    fn tar_components(path: &[u8]) -> Result<Vec<Vec<u8>>, PackError> {
        let mut components = Vec::new();
        for component in Path::new(std::ffi::OsStr::from_bytes(path)).components() {
            match component {
                Component::Normal(name) => components.push(name.as_bytes().to_vec()),
                Component::CurDir | Component::RootDir => {}
                Component::ParentDir | Component::Prefix(_) => {
                    return Err(PackError::Invalid(format!(
                        "refusing tar entry {}: '..' could escape the tree on unpack",
                        show(path)
                    )))
                }
            }
        }
        Ok(components)
    }

    /// The directory for `components` (all but the last), creating missing ones.
    fn directory_for(&mut self, components: &[Vec<u8>]) -> Result<u32, PackError> {
        let mut parent = ROOT_INODE;
        for name in components {
            parent = match self.builder.child(parent, name) {
                Some(existing)
                    if self
                        .builder
                        .meta(existing)
                        .map(|meta| meta.mode & mode::TYPE_MASK)
                        == Some(mode::DIRECTORY) =>
                {
                    existing
                }
                Some(_) => {
                    self.builder.unlink(parent, name)?;
                    self.add_implicit_directory(parent, name)?
                }
                None => self.add_implicit_directory(parent, name)?,
            };
        }
        Ok(parent)
    }

    fn add_implicit_directory(&mut self, parent: u32, name: &[u8]) -> Result<u32, PackError> {
        let meta = InodeMeta {
            mode: mode::DIRECTORY | 0o755,
            ..InodeMeta::default()
        };
        self.stats.entries += 1;
        Ok(self.builder.add(parent, name, meta, vec![], b"")?)
    }

    fn add_tar_entry<R: Read>(&mut self, entry: &mut tar::Entry<'_, R>) -> Result<(), PackError> {
        let path = entry.path_bytes().into_owned();
        let components = Self::tar_components(&path)?;
        let header = entry.header().clone();
        let entry_type = header.entry_type();
        if entry_type.is_pax_global_extensions()
            || entry_type.is_pax_local_extensions()
            || entry_type.is_gnu_longname()
        {
            return Ok(());
        }
        let field = |value: std::io::Result<u64>| {
            value.map_err(io_error(format!("tar entry {}", show(&path))))
        };
        let type_bits = match entry_type {
            tar::EntryType::Regular | tar::EntryType::Continuous => mode::REGULAR,
            tar::EntryType::Directory => mode::DIRECTORY,
            tar::EntryType::Symlink => mode::SYMLINK,
            tar::EntryType::Char => mode::CHAR_DEVICE,
            tar::EntryType::Block => mode::BLOCK_DEVICE,
            tar::EntryType::Fifo => mode::FIFO,
            tar::EntryType::Link => 0,
            other => {
                tracing::warn!(entry = %show(&path), kind = ?other, "skipping unsupported tar entry");
                return Ok(());
            }
        };
        let mtime = field(header.mtime())? as i64;
        let rdev = match (header.device_major(), header.device_minor()) {
            (Ok(Some(major)), Ok(Some(minor))) => libc::makedev(major, minor),
            _ => 0,
        };
        let meta = InodeMeta {
            mode: type_bits | (field(header.mode().map(u64::from))? as u32 & 0o7777),
            uid: field(header.uid())? as u32,
            gid: field(header.gid())? as u32,
            size: 0,
            rdev,
            atime: (mtime, 0),
            mtime: (mtime, 0),
            ctime: (mtime, 0),
        };
        let mut xattrs: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
        if let Ok(Some(extensions)) = entry.pax_extensions() {
            for extension in extensions.flatten() {
                if let Some(name) = extension.key_bytes().strip_prefix(b"SCHILY.xattr.") {
                    xattrs.push((name.to_vec(), extension.value_bytes().to_vec()));
                }
            }
        }
        let Some((name, parents)) = components.split_last() else {
            // The root itself ("./"): keep its metadata.
            if type_bits == mode::DIRECTORY {
                self.builder.set_meta(ROOT_INODE, meta)?;
            }
            return Ok(());
        };
        let parent = self.directory_for(parents)?;
        if self.layer_added.is_some() {
            if name.as_slice() == b".wh..wh..opq" {
                let added = self.layer_added.as_ref().map(|added| {
                    self.builder
                        .children(parent)
                        .into_iter()
                        .filter(|(child, _)| !added.contains(&(parent, child.clone())))
                        .collect::<Vec<_>>()
                });
                for (child, _) in added.unwrap_or_default() {
                    self.builder.unlink(parent, &child)?;
                }
                return Ok(());
            }
            if let Some(hidden) = name.strip_prefix(b".wh.") {
                self.builder.unlink(parent, hidden)?;
                return Ok(());
            }
            if let Some(added) = self.layer_added.as_mut() {
                added.insert((parent, name.clone()));
            }
        }
        let existing = self.builder.child(parent, name);
        if type_bits == mode::DIRECTORY {
            if let Some(existing) = existing {
                if self
                    .builder
                    .meta(existing)
                    .map(|meta| meta.mode & mode::TYPE_MASK)
                    == Some(mode::DIRECTORY)
                {
                    self.builder.set_meta(existing, meta)?;
                    return Ok(());
                }
            }
        }
        if existing.is_some() {
            self.builder.unlink(parent, name)?;
        }
        self.stats.entries += 1;
        let inode = match type_bits {
            0 => {
                let target = entry.link_name_bytes().ok_or_else(|| {
                    PackError::Invalid(format!("hard link {} has no target", show(&path)))
                })?;
                let target_components = Self::tar_components(&target)?;
                let mut target_inode = ROOT_INODE;
                for component in &target_components {
                    target_inode =
                        self.builder.child(target_inode, component).ok_or_else(|| {
                            PackError::Invalid(format!(
                                "hard link {} to missing {}",
                                show(&path),
                                show(&target)
                            ))
                        })?;
                }
                self.builder.link(parent, name, target_inode)?;
                return Ok(());
            }
            mode::REGULAR => {
                let (chunks, size) = self.content(entry, &show(&path))?;
                self.stats.files += 1;
                self.builder
                    .add(parent, name, InodeMeta { size, ..meta }, chunks, b"")
            }
            mode::SYMLINK => {
                let target = entry.link_name_bytes().ok_or_else(|| {
                    PackError::Invalid(format!("symlink {} has no target", show(&path)))
                })?;
                self.builder.add(parent, name, meta, vec![], &target)
            }
            _ => self.builder.add(parent, name, meta, vec![], b""),
        }
        .map_err(|error| PackError::Invalid(format!("tar entry {}: {error}", show(&path))))?;
        for (xattr_name, value) in xattrs {
            self.builder.set_xattr(inode, &xattr_name, &value)?;
        }
        Ok(())
    }

    /// Waits for the uploads and writes the flist to `output`.
    pub fn finish(self, output: &Path) -> Result<PackStats, PackError> {
        self.progress.set_message("waiting for the last uploads");
        let Self {
            builder,
            uploader,
            mut stats,
            progress,
            started,
            ..
        } = self;
        let (uploaded, present, bytes_uploaded) = (
            uploader.uploaded.clone(),
            uploader.present.clone(),
            uploader.bytes_uploaded.clone(),
        );
        uploader.finish()?;
        builder.write_to(output).map_err(|error| match error {
            FormatError::Io(source) => PackError::Io {
                context: format!("writing {}", output.display()),
                source,
            },
            other => PackError::Format(other),
        })?;
        progress.finish_and_clear();
        stats.chunks_uploaded = uploaded.load(Ordering::Relaxed);
        stats.chunks_present = present.load(Ordering::Relaxed);
        stats.bytes_uploaded = bytes_uploaded.load(Ordering::Relaxed);
        stats.elapsed = started.elapsed();
        Ok(stats)
    }
}

fn entry_error(path: &Path, error: FormatError) -> PackError {
    PackError::Invalid(format!("{}: {error}", path.display()))
}
