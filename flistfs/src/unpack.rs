//! Unpack: restores an flist's tree into a directory, everything pack keeps (types, modes
//! with setuid/setgid/sticky, owners, times, xattrs, hard links, devices).
//!
//! It never writes outside the destination: names come from the reader, which refuses
//! `/`, NUL, `.` and `..`; every path is built from the destination and such names; the
//! destination must be empty; and files are created with `create_new`, so nothing an
//! earlier entry made (a symlink, say) is ever followed.

use std::collections::HashMap;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::format::{mode, Flist, FormatError, Inode};
use crate::fs::ChunkSource;

/// Errors of unpacking.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum UnpackError {
    /// Writing the destination failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being written.
        context: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The flist is corrupt.
    #[error(transparent)]
    Format(#[from] FormatError),
    /// A chunk could not be fetched or verified.
    #[error("{path}: {reason}")]
    Chunk {
        /// The file being restored.
        path: String,
        /// Why.
        reason: String,
    },
    /// The destination is not usable.
    #[error("{0}")]
    Destination(String),
}

fn io_error(context: &Path, what: &str) -> impl FnOnce(std::io::Error) -> UnpackError {
    let context = format!("{what} {}", context.display());
    move |source| UnpackError::Io { context, source }
}

/// What an unpack did.
#[derive(Debug, Clone, Default)]
pub struct UnpackStats {
    /// Entries restored (without the root).
    pub entries: u64,
    /// Content bytes written.
    pub bytes: u64,
}

/// Chunks of a file asked of the source ahead of the one being written.
const UNPACK_READ_AHEAD_CHUNKS: u64 = 8;

/// Restores `flist` into `destination` (created if missing, must be empty), reading
/// content from `chunks`.
pub fn unpack(
    flist: &Flist,
    chunks: &dyn ChunkSource,
    destination: &Path,
) -> Result<UnpackStats, UnpackError> {
    unpack_with_progress(flist, chunks, destination, false)
}

/// [`unpack`], showing a progress bar on stderr when `progress` is set (bytes of content
/// written out of the flist's total, and entries; hidden when stderr is not a terminal).
pub fn unpack_with_progress(
    flist: &Flist,
    chunks: &dyn ChunkSource,
    destination: &Path,
    progress: bool,
) -> Result<UnpackStats, UnpackError> {
    let bar = if progress {
        indicatif::ProgressBar::new(flist.file_bytes())
    } else {
        indicatif::ProgressBar::hidden()
    };
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{elapsed} [{bar:30}] {bytes}/{total_bytes} ({bytes_per_sec}, {eta} left) {msg}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    bar.enable_steady_tick(std::time::Duration::from_millis(200));
    let outcome = unpack_into(flist, chunks, destination, &bar);
    bar.finish_and_clear();
    outcome
}

fn unpack_into(
    flist: &Flist,
    chunks: &dyn ChunkSource,
    destination: &Path,
    bar: &indicatif::ProgressBar,
) -> Result<UnpackStats, UnpackError> {
    std::fs::create_dir_all(destination).map_err(io_error(destination, "creating"))?;
    if std::fs::read_dir(destination)
        .map_err(io_error(destination, "listing"))?
        .next()
        .is_some()
    {
        return Err(UnpackError::Destination(format!(
            "{} is not empty",
            destination.display()
        )));
    }
    let mut state = State {
        flist,
        chunks,
        first_path: HashMap::new(),
        stats: UnpackStats::default(),
        bar,
    };
    let root = flist.root()?;
    state.directory(&root, destination)?;
    state.finish_metadata(&root, destination)?;
    Ok(state.stats)
}

struct State<'a> {
    flist: &'a Flist,
    chunks: &'a dyn ChunkSource,
    first_path: HashMap<u32, PathBuf>,
    stats: UnpackStats,
    bar: &'a indicatif::ProgressBar,
}

impl State<'_> {
    fn directory(&mut self, directory: &Inode, path: &Path) -> Result<(), UnpackError> {
        for index in 0..self.flist.dir_len(directory)? {
            let entry = self.flist.dir_entry(directory, index)?;
            let child_path = path.join(std::ffi::OsStr::from_bytes(entry.name));
            let child = self.flist.inode(entry.inode)?;
            self.stats.entries += 1;
            if self.stats.entries.is_multiple_of(256) {
                self.bar
                    .set_message(format!("{} entries", self.stats.entries));
            }
            if let Some(existing) = self.first_path.get(&entry.inode) {
                std::fs::hard_link(existing, &child_path)
                    .map_err(io_error(&child_path, "linking"))?;
                continue;
            }
            match child.kind() {
                mode::DIRECTORY => {
                    std::fs::create_dir(&child_path).map_err(io_error(&child_path, "creating"))?;
                    self.directory(&child, &child_path)?;
                }
                mode::REGULAR => self.file(&child, &child_path)?,
                mode::SYMLINK => {
                    let target = self.flist.symlink_target(&child)?;
                    std::os::unix::fs::symlink(std::ffi::OsStr::from_bytes(target), &child_path)
                        .map_err(io_error(&child_path, "creating symlink"))?;
                }
                kind => crate::sys::make_node(
                    &child_path,
                    kind | (child.record.mode & 0o777),
                    child.record.rdev,
                )
                .map_err(io_error(&child_path, "creating node"))?,
            }
            if child.record.nlink > 1 && !child.is_dir() {
                self.first_path.insert(entry.inode, child_path.clone());
            }
            self.finish_metadata(&child, &child_path)?;
        }
        Ok(())
    }

    fn file(&mut self, file: &Inode, path: &Path) -> Result<(), UnpackError> {
        let mut output = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode_private()
            .open(path)
            .map_err(io_error(path, "creating"))?;
        let chunk_count = self.flist.chunk_len(file)?;
        for index in 0..chunk_count {
            if index % UNPACK_READ_AHEAD_CHUNKS == 0 {
                // The source fetches these in the background while this one is written.
                let ahead = (index + 1..chunk_count.min(index + 1 + UNPACK_READ_AHEAD_CHUNKS))
                    .map(|next| self.flist.chunk(file, next))
                    .collect::<Result<Vec<_>, _>>()?;
                self.chunks.prefetch(&ahead);
            }
            let chunk = self.flist.chunk(file, index)?;
            let plain = self
                .chunks
                .fetch(&chunk)
                .map_err(|reason| UnpackError::Chunk {
                    path: path.display().to_string(),
                    reason,
                })?;
            output
                .write_all_at(&plain, chunk.file_offset)
                .map_err(io_error(path, "writing"))?;
            self.stats.bytes += plain.len() as u64;
            self.bar.inc(plain.len() as u64);
        }
        // Holes (and a trailing one) stay sparse.
        output
            .set_len(file.record.size)
            .map_err(io_error(path, "sizing"))?;
        output.flush().map_err(io_error(path, "writing"))?;
        Ok(())
    }

    fn finish_metadata(&self, inode: &Inode, path: &Path) -> Result<(), UnpackError> {
        let record = &inode.record;
        for (name, value) in self.flist.xattrs(inode)? {
            xattr::set(path, std::ffi::OsStr::from_bytes(name), value)
                .map_err(io_error(path, "setting xattrs of"))?;
        }
        std::os::unix::fs::lchown(path, Some(record.uid), Some(record.gid))
            .map_err(io_error(path, "chown"))?;
        if inode.kind() != mode::SYMLINK {
            // After chown, which clears setuid and setgid.
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(record.mode & 0o7777))
                .map_err(io_error(path, "chmod"))?;
        }
        crate::sys::set_times_nofollow(
            path,
            (record.atime_sec, record.atime_nsec),
            (record.mtime_sec, record.mtime_nsec),
        )
        .map_err(io_error(path, "setting times of"))?;
        Ok(())
    }
}

trait PrivateMode {
    fn mode_private(&mut self) -> &mut Self;
}

impl PrivateMode for std::fs::OpenOptions {
    /// Files start owner-only; their real mode is set once they are complete.
    fn mode_private(&mut self) -> &mut Self {
        std::os::unix::fs::OpenOptionsExt::mode(self, 0o600)
    }
}
