//! rfs flists: SQLite files made by rfs, read into our format, and written (for tests and
//! `convert`).
//!
//! What is known of the format (there is no spec): tables `inode(ino, parent, name, size,
//! uid, gid, mode, rdev, ctime, mtime)` with the root named `/` and parent 0, `extra(ino,
//! data)` holding symlink targets, `block(ino, id, key)` listing a file's 512 KiB blocks in
//! rowid order, `tag(key, value)` and `route(start, end, url)` mapping the first byte of a
//! block id to a store. `mode` holds the file type bits too. Blocks use
//! [`ChunkCodec::Rfs`].
//!
//! Reading turns the database into an [`FlistBuilder`]: the tree is walked from the root,
//! each inode once, so a cycle or an orphan in a damaged file cannot loop or escape. Routes
//! become `route` tags (`00-ff=URL`), rfs tags stay tags.

use std::collections::{HashMap, HashSet, VecDeque};
use std::path::Path;

use rusqlite::types::ValueRef;
use rusqlite::{Connection, OpenFlags};

use crate::chunk::{ChunkCodec, ChunkRef, RFS_BLOCK_BYTES};
use crate::format::writer::show;
use crate::format::{mode, FlistBuilder, FormatError, InodeMeta};

/// The first bytes of every SQLite file, hence of every rfs flist.
pub const SQLITE_MAGIC: &[u8; 16] = b"SQLite format 3\0";

/// Most rows of any table an rfs flist may have before it is refused (bounds memory).
pub const RFS_ROWS_MAX: usize = 50_000_000;

/// Errors of reading or writing an rfs flist.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RfsError {
    /// SQLite refused the file or a query.
    #[error("rfs flist: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// The content is not what an rfs flist holds.
    #[error("rfs flist is invalid: {0}")]
    Invalid(String),
    /// The tree does not fit our format.
    #[error(transparent)]
    Format(#[from] FormatError),
}

/// Whether the file at `path` starts like an SQLite database (an rfs flist).
pub fn is_rfs(path: &Path) -> bool {
    use std::io::Read;
    let mut magic = [0u8; 16];
    std::fs::File::open(path)
        .and_then(|mut file| file.read_exact(&mut magic))
        .map(|()| &magic == SQLITE_MAGIC)
        .unwrap_or(false)
}

fn invalid(message: String) -> RfsError {
    RfsError::Invalid(message)
}

fn bytes_of(value: ValueRef<'_>, what: &str) -> Result<Vec<u8>, RfsError> {
    match value {
        ValueRef::Text(bytes) | ValueRef::Blob(bytes) => Ok(bytes.to_vec()),
        ValueRef::Null => Ok(Vec::new()),
        _ => Err(invalid(format!("{what} is not text or a blob"))),
    }
}

fn hash_of(value: ValueRef<'_>, what: &str) -> Result<[u8; 32], RfsError> {
    let bytes = bytes_of(value, what)?;
    bytes
        .try_into()
        .map_err(|bytes: Vec<u8>| invalid(format!("{what} has {} bytes, not 32", bytes.len())))
}

/// A block's id and key.
type BlockIdKey = ([u8; 32], [u8; 32]);

struct Row {
    parent: i64,
    name: Vec<u8>,
    meta: InodeMeta,
}

fn clamp_u32(value: i64) -> u32 {
    u32::try_from(value).unwrap_or(0)
}

/// Reads the rfs flist at `path` into a builder holding the same tree.
pub fn read(path: &Path) -> Result<FlistBuilder, RfsError> {
    let connection = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    let mut rows: HashMap<i64, Row> = HashMap::new();
    let mut children: HashMap<i64, Vec<i64>> = HashMap::new();
    let mut root: Option<i64> = None;
    {
        let mut statement = connection
            .prepare("SELECT ino, parent, name, size, uid, gid, mode, rdev, ctime, mtime FROM inode ORDER BY ino")?;
        let mut cursor = statement.query([])?;
        while let Some(row) = cursor.next()? {
            if rows.len() >= RFS_ROWS_MAX {
                return Err(invalid(format!("more than {RFS_ROWS_MAX} inodes")));
            }
            let ino: i64 = row.get(0)?;
            let parent: i64 = row.get::<_, Option<i64>>(1)?.unwrap_or(0);
            let name = bytes_of(row.get_ref(2)?, "inode.name")?;
            let mode_value = clamp_u32(row.get::<_, Option<i64>>(6)?.unwrap_or(0));
            let ctime: i64 = row.get::<_, Option<i64>>(8)?.unwrap_or(0);
            let mtime: i64 = row.get::<_, Option<i64>>(9)?.unwrap_or(0);
            let meta = InodeMeta {
                mode: mode_value,
                uid: clamp_u32(row.get::<_, Option<i64>>(4)?.unwrap_or(0)),
                gid: clamp_u32(row.get::<_, Option<i64>>(5)?.unwrap_or(0)),
                size: u64::try_from(row.get::<_, Option<i64>>(3)?.unwrap_or(0)).unwrap_or(0),
                rdev: u64::try_from(row.get::<_, Option<i64>>(7)?.unwrap_or(0)).unwrap_or(0),
                atime: (mtime, 0),
                mtime: (mtime, 0),
                ctime: (ctime, 0),
            };
            if parent == 0 {
                if root.is_some() {
                    return Err(invalid("more than one inode with parent 0 (root)".into()));
                }
                root = Some(ino);
            } else {
                children.entry(parent).or_default().push(ino);
            }
            rows.insert(ino, Row { parent, name, meta });
        }
    }
    let root = root.ok_or_else(|| invalid("no root inode (parent 0)".into()))?;
    let mut targets: HashMap<i64, Vec<u8>> = HashMap::new();
    {
        let mut statement = connection.prepare("SELECT ino, data FROM extra")?;
        let mut cursor = statement.query([])?;
        while let Some(row) = cursor.next()? {
            targets.insert(row.get(0)?, bytes_of(row.get_ref(1)?, "extra.data")?);
        }
    }
    let mut blocks: HashMap<i64, Vec<BlockIdKey>> = HashMap::new();
    {
        let mut statement =
            connection.prepare("SELECT ino, id, key FROM block ORDER BY ino, rowid")?;
        let mut cursor = statement.query([])?;
        let mut count = 0usize;
        while let Some(row) = cursor.next()? {
            count += 1;
            if count > RFS_ROWS_MAX {
                return Err(invalid(format!("more than {RFS_ROWS_MAX} blocks")));
            }
            let ino: i64 = row.get(0)?;
            blocks.entry(ino).or_default().push((
                hash_of(row.get_ref(1)?, "block.id")?,
                hash_of(row.get_ref(2)?, "block.key")?,
            ));
        }
    }

    let root_row = rows
        .get(&root)
        .ok_or_else(|| invalid("root row vanished".into()))?;
    if root_row.meta.mode & mode::TYPE_MASK != mode::DIRECTORY {
        return Err(invalid("the root inode is not a directory".into()));
    }
    let mut builder = FlistBuilder::new(root_row.meta, RFS_BLOCK_BYTES);
    let mut visited: HashSet<i64> = HashSet::from([root]);
    let mut queue: VecDeque<(i64, u32)> = VecDeque::from([(root, crate::format::ROOT_INODE)]);
    while let Some((rfs_directory, our_directory)) = queue.pop_front() {
        let Some(entries) = children.get(&rfs_directory) else {
            continue;
        };
        for &ino in entries {
            if !visited.insert(ino) {
                continue;
            }
            let Some(row) = rows.get(&ino) else { continue };
            debug_assert_eq!(row.parent, rfs_directory);
            let kind = row.meta.mode & mode::TYPE_MASK;
            let chunks = if kind == mode::REGULAR {
                block_chunks(
                    &row.name,
                    row.meta.size,
                    blocks.get(&ino).map(Vec::as_slice).unwrap_or(&[]),
                )?
            } else {
                Vec::new()
            };
            let target = if kind == mode::SYMLINK {
                targets
                    .get(&ino)
                    .cloned()
                    .ok_or_else(|| invalid(format!("symlink {} has no target", show(&row.name))))?
            } else {
                Vec::new()
            };
            let ours = builder.add(our_directory, &row.name, row.meta, chunks, &target)?;
            if kind == mode::DIRECTORY {
                queue.push_back((ino, ours));
            }
        }
    }
    let unreachable = rows.len() - visited.len();
    if unreachable > 0 {
        tracing::warn!(
            unreachable,
            "rfs flist has inodes not reachable from its root; they are left out"
        );
    }
    {
        let mut statement = connection.prepare("SELECT key, value FROM tag")?;
        let mut cursor = statement.query([])?;
        while let Some(row) = cursor.next()? {
            builder.add_tag(
                &bytes_of(row.get_ref(0)?, "tag.key")?,
                &bytes_of(row.get_ref(1)?, "tag.value")?,
            )?;
        }
    }
    {
        let mut statement =
            connection.prepare("SELECT start, end, url FROM route ORDER BY rowid")?;
        let mut cursor = statement.query([])?;
        while let Some(row) = cursor.next()? {
            let start: i64 = row.get(0)?;
            let end: i64 = row.get(1)?;
            let url = bytes_of(row.get_ref(2)?, "route.url")?;
            if !(0..=255).contains(&start) || !(start..=255).contains(&end) {
                return Err(invalid(format!(
                    "route range {start}-{end} is not within 0-255"
                )));
            }
            let mut value = format!("{start:02x}-{end:02x}=").into_bytes();
            value.extend_from_slice(&url);
            builder.add_tag(b"route", &value)?;
        }
    }
    Ok(builder)
}

fn block_chunks(name: &[u8], size: u64, blocks: &[BlockIdKey]) -> Result<Vec<ChunkRef>, RfsError> {
    let block_bytes = u64::from(RFS_BLOCK_BYTES);
    let expected = size.div_ceil(block_bytes);
    if blocks.len() as u64 != expected {
        return Err(invalid(format!(
            "file {} of {size} bytes has {} blocks, expected {expected}",
            show(name),
            blocks.len()
        )));
    }
    Ok(blocks
        .iter()
        .enumerate()
        .map(|(index, (id, key))| {
            let file_offset = index as u64 * block_bytes;
            ChunkRef {
                file_offset,
                plain_bytes: (size - file_offset).min(block_bytes) as u32,
                stored_bytes: 0,
                codec: ChunkCodec::Rfs,
                id: *id,
                key: *key,
            }
        })
        .collect())
}

/// Writes rfs flists, with rfs's schema.
#[derive(Debug)]
pub struct RfsWriter {
    connection: Connection,
}

impl RfsWriter {
    /// Creates a new rfs flist at `path` (which must not exist) holding only the root.
    pub fn create(path: &Path, root: &InodeMeta) -> Result<Self, RfsError> {
        let connection = Connection::open(path)?;
        connection.execute_batch(
            "CREATE TABLE inode (ino INTEGER PRIMARY KEY AUTOINCREMENT, parent INTEGER, name VARCHAR(255),
                size INTEGER, uid INTEGER, gid INTEGER, mode INTEGER, rdev INTEGER, ctime INTEGER, mtime INTEGER);
             CREATE INDEX parents ON inode (parent);
             CREATE INDEX names ON inode (name);
             CREATE TABLE extra (ino INTEGER PRIMARY KEY, data VARCHAR(4096));
             CREATE TABLE block (ino INTEGER, id VARCHAR(32), key VARCHAR(32));
             CREATE INDEX block_ino ON block (ino);
             CREATE TABLE tag (key VARCHAR(10) PRIMARY KEY, value VARCHAR(255));
             CREATE TABLE route (start integer, end integer, url VARCHAR(2048));
             BEGIN;",
        )?;
        let writer = Self { connection };
        writer.insert(0, b"/", root)?;
        Ok(writer)
    }

    fn insert(&self, parent: i64, name: &[u8], meta: &InodeMeta) -> Result<i64, RfsError> {
        let name = String::from_utf8_lossy(name);
        self.connection.execute(
            "INSERT INTO inode (parent, name, size, uid, gid, mode, rdev, ctime, mtime) VALUES (?1,?2,?3,?4,?5,?6,?7,?8,?9)",
            rusqlite::params![
                parent,
                name,
                meta.size as i64,
                meta.uid,
                meta.gid,
                meta.mode,
                meta.rdev as i64,
                meta.ctime.0,
                meta.mtime.0
            ],
        )?;
        Ok(self.connection.last_insert_rowid())
    }

    /// Adds an inode under `parent` (the root is 1) and returns its ino.
    pub fn add(&self, parent: i64, name: &[u8], meta: &InodeMeta) -> Result<i64, RfsError> {
        self.insert(parent, name, meta)
    }

    /// Records a symlink's target.
    pub fn set_target(&self, ino: i64, target: &[u8]) -> Result<(), RfsError> {
        self.connection.execute(
            "INSERT INTO extra (ino, data) VALUES (?1, ?2)",
            rusqlite::params![ino, target],
        )?;
        Ok(())
    }

    /// Appends a block to a file's list.
    pub fn add_block(&self, ino: i64, id: &[u8; 32], key: &[u8; 32]) -> Result<(), RfsError> {
        self.connection.execute(
            "INSERT INTO block (ino, id, key) VALUES (?1, ?2, ?3)",
            rusqlite::params![ino, &id[..], &key[..]],
        )?;
        Ok(())
    }

    /// Adds a tag.
    pub fn add_tag(&self, key: &str, value: &str) -> Result<(), RfsError> {
        self.connection.execute(
            "INSERT INTO tag (key, value) VALUES (?1, ?2)",
            rusqlite::params![key, value],
        )?;
        Ok(())
    }

    /// Adds a route for block ids whose first byte is in `start..=end`.
    pub fn add_route(&self, start: u8, end: u8, url: &str) -> Result<(), RfsError> {
        self.connection.execute(
            "INSERT INTO route (start, end, url) VALUES (?1, ?2, ?3)",
            rusqlite::params![start, end, url],
        )?;
        Ok(())
    }

    /// Commits and closes.
    pub fn finish(self) -> Result<(), RfsError> {
        self.connection.execute_batch("COMMIT;")?;
        Ok(())
    }
}
