//! Plaintext copies of whole files (for FUSE passthrough): made only from local, verified
//! chunks, written atomically, checked against the flist, counted in the cache's bound and
//! evicted by its LRU, never while in use.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::os::unix::fs::{FileExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use erasure::store::{ChunkStore, DirStore};
use flistfs::cache::ChunkCache;
use flistfs::copies::{copy_name, verify_copy, Copies, COPY_FILE_BYTES_MIN};
use flistfs::format::mode;
use flistfs::fs::{ChunkSource, FsCore};
use flistfs::pack::{PackOptions, Packer};
use flistfs::source::{Route, SourceConfig, StoreSource};
use flistfs::{Flist, InodeMeta};

const CHUNK_BYTES: u32 = 256 * 1024;
const CACHE_BYTES: u64 = 64 * 1024 * 1024;

fn pattern(seed: u64, length: usize) -> Vec<u8> {
    fixtures::bytes::xorshift_bytes(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1, length)
}

struct Fixture {
    _scratch: tempfile::TempDir,
    flist: Arc<Flist>,
    store: Arc<dyn ChunkStore>,
    cache_dir: PathBuf,
    /// Content of `big` (data, a hole of two chunks, data: 1.25 MiB) and `twin` (the same).
    content: Vec<u8>,
}

fn fixture() -> Fixture {
    let scratch = tempfile::tempdir().unwrap();
    let source_dir = scratch.path().join("src");
    std::fs::create_dir_all(&source_dir).unwrap();
    let chunk = CHUNK_BYTES as usize;
    let mut content = pattern(1, 2 * chunk);
    content.extend(vec![0u8; 2 * chunk]);
    content.extend(pattern(2, chunk + 1000));
    assert!(content.len() as u64 >= COPY_FILE_BYTES_MIN);
    std::fs::write(source_dir.join("big"), &content).unwrap();
    std::fs::write(source_dir.join("twin"), &content).unwrap();
    std::fs::write(source_dir.join("small"), pattern(3, 5000)).unwrap();
    let store: Arc<dyn ChunkStore> = Arc::new(DirStore::new(scratch.path().join("store")));
    let options = PackOptions {
        chunk_bytes: CHUNK_BYTES,
        upload_parallel: 2,
        progress: false,
    };
    let root = InodeMeta {
        mode: mode::DIRECTORY | 0o755,
        ..InodeMeta::default()
    };
    let routes = vec![(Route::parse(&store.url()).unwrap(), store.clone())];
    let mut packer = Packer::new(routes, root, options).unwrap();
    packer.add_directory(&source_dir).unwrap();
    let flist_path = scratch.path().join("t.fl");
    packer.finish(&flist_path).unwrap();
    Fixture {
        flist: Arc::new(Flist::open(&flist_path).unwrap()),
        store,
        cache_dir: scratch.path().join("cache"),
        content,
        _scratch: scratch,
    }
}

struct Mount {
    core: FsCore,
    source: StoreSource,
    cache: Arc<ChunkCache>,
    copies: Arc<Copies>,
}

/// What a mount process holds: a source over the store through the cache, a core, copies.
fn mount(fixture: &Fixture, cache_bytes: u64) -> Mount {
    let cache = Arc::new(ChunkCache::open(&fixture.cache_dir, cache_bytes).unwrap());
    let routes = vec![(
        Route::parse(&fixture.store.url()).unwrap(),
        fixture.store.clone(),
    )];
    let source = StoreSource::new(routes, Some(cache.clone()), SourceConfig::default()).unwrap();
    let shared: Arc<dyn ChunkSource> = Arc::new(source.clone());
    let core = FsCore::new(fixture.flist.clone(), shared.clone());
    let copies = Copies::new(fixture.flist.clone(), shared, cache.clone()).unwrap();
    Mount {
        core,
        source,
        cache,
        copies,
    }
}

fn id_of(flist: &Flist, path: &[u8]) -> u64 {
    u64::from(flist.resolve(path).unwrap().unwrap().number) + 1
}

fn read_whole(core: &FsCore, id: u64) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let bytes = core.read(id, out.len() as u64, 1 << 20).unwrap();
        if bytes.is_empty() {
            return out;
        }
        out.extend_from_slice(&bytes);
    }
}

fn copy_path(fixture: &Fixture, mount: &Mount, path: &[u8]) -> PathBuf {
    let inode = fixture.flist.resolve(path).unwrap().unwrap();
    mount
        .cache
        .copy_path(&copy_name(&fixture.flist, &inode).unwrap())
}

fn leftovers(cache_dir: &Path) -> usize {
    std::fs::read_dir(cache_dir.join("tmp")).unwrap().count()
}

#[test]
fn copies_are_made_only_from_local_chunks_and_shared_by_equal_files() {
    let fixture = fixture();
    let mount = mount(&fixture, CACHE_BYTES);
    let big = id_of(&fixture.flist, b"big");
    let twin = id_of(&fixture.flist, b"twin");
    assert!(!mount.copies.wanted(id_of(&fixture.flist, b"small")));
    assert!(mount.copies.wanted(big));

    // Nothing read yet: no copy, and making one never asks the store.
    assert!(!mount.copies.make_now(big).unwrap());
    assert_eq!(mount.source.store_reads(), 0);
    assert!(mount.copies.open(big).is_none());

    assert_eq!(read_whole(&mount.core, big), fixture.content);
    let reads = mount.source.store_reads();
    assert!(mount.copies.make_now(big).unwrap());
    assert_eq!(
        mount.source.store_reads(),
        reads,
        "made from local chunks only"
    );

    let path = copy_path(&fixture, &mount, b"big");
    assert_eq!(std::fs::read(&path).unwrap(), fixture.content);
    let file_mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    let dir_mode = std::fs::metadata(path.parent().unwrap())
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!((file_mode, dir_mode), (0o600, 0o700));
    assert_eq!(
        leftovers(&fixture.cache_dir),
        0,
        "the temporary was renamed"
    );

    // The twin has the same chunk list: the same copy, nothing new written.
    assert_eq!(copy_path(&fixture, &mount, b"twin"), path);
    let copy = mount
        .copies
        .open(twin)
        .expect("the twin uses the same copy");
    let mut head = vec![0u8; 4096];
    copy.read_exact_at(&mut head, 0).unwrap();
    assert_eq!(head, fixture.content[..4096]);
    // The hole stays a hole: the copy allocates less than its length.
    use std::os::unix::fs::MetadataExt;
    let metadata = std::fs::metadata(&path).unwrap();
    assert!(metadata.blocks() * 512 < metadata.len());
}

#[test]
fn a_corrupt_cached_chunk_makes_no_copy() {
    let fixture = fixture();
    {
        let first = mount(&fixture, CACHE_BYTES);
        read_whole(&first.core, id_of(&fixture.flist, b"big"));
    }
    // A fresh process (empty memory cache) over a disk cache with one chunk tampered.
    let inode = fixture.flist.resolve(b"big").unwrap().unwrap();
    let chunk = fixture.flist.chunk(&inode, 1).unwrap();
    let hex = hex::encode(chunk.id);
    let chunk_path = fixture.cache_dir.join(&hex[..2]).join(&hex);
    let mut bytes = std::fs::read(&chunk_path).unwrap();
    bytes[100] ^= 0x40;
    std::fs::write(&chunk_path, bytes).unwrap();
    let second = mount(&fixture, CACHE_BYTES);
    let big = id_of(&fixture.flist, b"big");
    assert!(!second.copies.make_now(big).unwrap());
    assert!(!copy_path(&fixture, &second, b"big").exists());
    assert!(!chunk_path.exists(), "the corrupt chunk was dropped");
    assert_eq!(
        second.source.store_reads(),
        0,
        "and not fetched for the copy"
    );
    assert_eq!(leftovers(&fixture.cache_dir), 0);
}

#[test]
fn a_tampered_copy_is_detected_at_first_use_and_deleted() {
    let fixture = fixture();
    let big = id_of(&fixture.flist, b"big");
    let path;
    {
        let first = mount(&fixture, CACHE_BYTES);
        read_whole(&first.core, big);
        assert!(first.copies.make_now(big).unwrap());
        path = copy_path(&fixture, &first, b"big");
        assert!(first.copies.open(big).is_some());
    }
    let inode = fixture.flist.resolve(b"big").unwrap().unwrap();
    let original = std::fs::read(&path).unwrap();
    let chunk = CHUNK_BYTES as u64;
    // A flipped byte in data, a byte written into the hole, and a truncation.
    for (offset, length) in [(chunk + 7, None), (2 * chunk + 9, None), (0, Some(chunk))] {
        std::fs::write(&path, &original).unwrap();
        let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        match length {
            Some(length) => file.set_len(length).unwrap(),
            None => file.write_all_at(&[0x5a], offset).unwrap(),
        }
        drop(file);
        let reopened = std::fs::File::open(&path).unwrap();
        assert!(verify_copy(&fixture.flist, &inode, &reopened).is_err());
        drop(reopened);
        // A new process checks a copy before its first use.
        let next = mount(&fixture, CACHE_BYTES);
        assert!(
            next.copies.open(big).is_none(),
            "tampered at {offset} is refused"
        );
        assert!(!path.exists(), "and deleted");
        // Reads still give the right bytes (from the chunks).
        assert_eq!(read_whole(&next.core, big), fixture.content);
    }
}

#[test]
fn a_copy_that_fails_its_check_is_never_renamed_in() {
    let fixture = fixture();
    let mount = mount(&fixture, CACHE_BYTES);
    let name = [7u8; 32];
    let failed = mount.cache.put_copy(
        &name,
        10,
        |file| file.write_all_at(b"0123456789", 0),
        |_| Err("checked: wrong".into()),
    );
    assert!(failed.is_err());
    let failed = mount.cache.put_copy(
        &name,
        10,
        |_| Err(std::io::Error::other("disk full")),
        |_| Ok(()),
    );
    assert!(failed.is_err());
    assert!(!mount.cache.copy_path(&name).exists());
    assert_eq!(leftovers(&fixture.cache_dir), 0);
    assert_eq!(mount.cache.total_bytes(), 0);
    let made = mount
        .cache
        .put_copy(
            &name,
            10,
            |file| file.write_all_at(b"0123456789", 0),
            |_| Ok(()),
        )
        .unwrap();
    assert!(made.is_some());
    assert_eq!(
        std::fs::read(mount.cache.copy_path(&name)).unwrap(),
        b"0123456789"
    );
    assert!(mount.cache.total_bytes() > 0, "counted in the bound");
}

#[test]
fn copies_count_in_the_bound_and_are_evicted_only_when_unused() {
    let fixture = fixture();
    // A bound of 8 MiB: copies up to 2 MiB, chunks of 256 KiB.
    let bound = 8 * 1024 * 1024;
    let mount = mount(&fixture, bound);
    let big = id_of(&fixture.flist, b"big");
    read_whole(&mount.core, big);
    assert!(mount.copies.make_now(big).unwrap());
    let path = copy_path(&fixture, &mount, b"big");
    let before = mount.cache.total_bytes();
    assert!(
        before >= 3 * u64::from(CHUNK_BYTES),
        "chunks and copy counted"
    );

    // In use (open and locked, as a passthrough open holds it): never evicted.
    let in_use = mount.copies.open(big).unwrap();
    let fill = |seed: u64| {
        for index in 0..40u64 {
            let sealed = flistfs::chunk::seal(&pattern(seed * 1000 + index, 200_000)).unwrap();
            mount.cache.put(&sealed.id, &sealed.stored).unwrap();
        }
    };
    fill(1);
    assert!(mount.cache.total_bytes() <= bound);
    assert!(path.exists(), "a copy in use survives eviction");

    // Unused and the least recently used: evicted like a chunk.
    drop(in_use);
    fill(2);
    assert!(mount.cache.total_bytes() <= bound);
    assert!(!path.exists(), "an unused old copy is evicted");
    assert!(mount.copies.open(big).is_none());
}
