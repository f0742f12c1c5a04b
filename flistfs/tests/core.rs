//! The fs core over real stores: lazy fetching, corrupt chunks, stores that fail or hang,
//! rfs flists both ways, and tar import.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use erasure::store::{ChunkStore, DirStore, FaultPlan, FaultyStore};
use flistfs::chunk::{seal_rfs, RFS_BLOCK_BYTES};
use flistfs::format::mode;
use flistfs::fs::{ChunkSource, FsCore, FsError};
use flistfs::pack::{PackOptions, Packer};
use flistfs::rfs::RfsWriter;
use flistfs::source::{Route, SourceConfig, StoreSource};
use flistfs::{Flist, InodeMeta};

const CHUNK_BYTES: u32 = 64 * 1024;

fn pattern(seed: u64, length: usize) -> Vec<u8> {
    fixtures::bytes::xorshift_bytes(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1, length)
}

fn all_routes(store: Arc<dyn ChunkStore>) -> Vec<(Route, Arc<dyn ChunkStore>)> {
    vec![(Route::parse(&store.url()).unwrap(), store)]
}

fn pack_dir(source: &Path, store: Arc<dyn ChunkStore>, output: &Path) {
    let options = PackOptions {
        chunk_bytes: CHUNK_BYTES,
        upload_parallel: 4,
        progress: false,
    };
    let root = InodeMeta {
        mode: mode::DIRECTORY | 0o755,
        ..InodeMeta::default()
    };
    let mut packer = Packer::new(all_routes(store), root, options).unwrap();
    packer.add_directory(source).unwrap();
    packer.finish(output).unwrap();
}

fn core_over(
    flist: &Path,
    store: Arc<dyn ChunkStore>,
    config: SourceConfig,
) -> (FsCore, StoreSource) {
    let source = StoreSource::new(all_routes(store), None, config).unwrap();
    let core = FsCore::new(
        Arc::new(Flist::open(flist).unwrap()),
        Arc::new(source.clone()) as Arc<dyn ChunkSource>,
    );
    (core, source)
}

fn read_all(core: &FsCore, path: &[u8]) -> Result<Vec<u8>, FsError> {
    let inode = core.flist().resolve(path).unwrap().expect("entry exists");
    let id = u64::from(inode.number) + 1;
    let mut out = Vec::new();
    loop {
        let bytes = core.read(id, out.len() as u64, 100_000)?;
        if bytes.is_empty() {
            return Ok(out);
        }
        out.extend_from_slice(&bytes);
    }
}

/// A tree of ten 5-chunk files.
fn ten_files(directory: &Path) -> Vec<Vec<u8>> {
    (0..10u64)
        .map(|index| {
            let content = pattern(index, CHUNK_BYTES as usize * 5 - 7);
            std::fs::write(directory.join(format!("file{index}")), &content).unwrap();
            content
        })
        .collect()
}

#[test]
fn reading_one_file_fetches_only_its_chunks() {
    let scratch = tempfile::tempdir().unwrap();
    let (source_dir, store_dir) = (scratch.path().join("src"), scratch.path().join("store"));
    std::fs::create_dir_all(&source_dir).unwrap();
    let contents = ten_files(&source_dir);
    let store: Arc<dyn ChunkStore> = Arc::new(DirStore::new(&store_dir));
    let flist_path = scratch.path().join("ten.fl");
    pack_dir(&source_dir, store.clone(), &flist_path);

    let (core, source) = core_over(&flist_path, store, SourceConfig::default());
    // Listing and stat-ing everything touches no chunk.
    core.readdir(1, 0, |item| {
        core.getattr(item.id).unwrap();
        true
    })
    .unwrap();
    assert_eq!(source.store_reads(), 0, "metadata must not fetch chunks");
    assert_eq!(read_all(&core, b"file3").unwrap(), contents[3]);
    // Read-ahead may still be finishing: it only ever fetches chunks of the same file.
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(
        source.store_reads(),
        5,
        "exactly the five chunks of file3, each once"
    );
    assert_eq!(read_all(&core, b"file3").unwrap(), contents[3]);
    assert_eq!(
        source.store_reads(),
        5,
        "a second read is served from memory"
    );
}

#[test]
fn concurrent_readers_share_one_fetch() {
    let scratch = tempfile::tempdir().unwrap();
    let (source_dir, store_dir) = (scratch.path().join("src"), scratch.path().join("store"));
    std::fs::create_dir_all(&source_dir).unwrap();
    let contents = ten_files(&source_dir);
    let store: Arc<dyn ChunkStore> = Arc::new(DirStore::new(&store_dir));
    let flist_path = scratch.path().join("ten.fl");
    pack_dir(&source_dir, store.clone(), &flist_path);
    let (core, source) = core_over(&flist_path, store, SourceConfig::default());
    let core = Arc::new(core);
    let readers: Vec<_> = (0..8)
        .map(|_| {
            let core = core.clone();
            std::thread::spawn(move || read_all(&core, b"file7").unwrap())
        })
        .collect();
    for reader in readers {
        assert_eq!(reader.join().unwrap(), contents[7]);
    }
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(
        source.store_reads(),
        5,
        "eight readers, one fetch per chunk"
    );
}

#[test]
fn a_corrupt_chunk_is_eio_and_the_rest_still_reads() {
    let scratch = tempfile::tempdir().unwrap();
    let (source_dir, store_dir) = (scratch.path().join("src"), scratch.path().join("store"));
    std::fs::create_dir_all(&source_dir).unwrap();
    let contents = ten_files(&source_dir);
    let dir_store = DirStore::new(&store_dir);
    let flist_path = scratch.path().join("ten.fl");
    pack_dir(
        &source_dir,
        Arc::new(DirStore::new(&store_dir)),
        &flist_path,
    );
    let flist = Flist::open(&flist_path).unwrap();
    let file0 = flist.resolve(b"file0").unwrap().unwrap();
    let victim = flist.chunk(&file0, 2).unwrap();
    let path = dir_store.chunk_path(&victim.id);
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[10] ^= 0x01;
    std::fs::write(&path, bytes).unwrap();

    let (core, _) = core_over(&flist_path, Arc::new(dir_store), SourceConfig::default());
    let error = read_all(&core, b"file0").unwrap_err();
    assert_eq!(error.errno(), libc::EIO);
    // The chunks before the bad one still read, and so do other files.
    let id = u64::from(file0.number) + 1;
    assert_eq!(
        core.read(id, 0, CHUNK_BYTES).unwrap(),
        contents[0][..CHUNK_BYTES as usize]
    );
    assert_eq!(read_all(&core, b"file1").unwrap(), contents[1]);
}

#[test]
fn a_store_that_is_down_gives_eio_then_recovers() {
    let scratch = tempfile::tempdir().unwrap();
    let (source_dir, store_dir) = (scratch.path().join("src"), scratch.path().join("store"));
    std::fs::create_dir_all(&source_dir).unwrap();
    let contents = ten_files(&source_dir);
    let flist_path = scratch.path().join("ten.fl");
    pack_dir(
        &source_dir,
        Arc::new(DirStore::new(&store_dir)),
        &flist_path,
    );
    let faulty = FaultyStore::new(Arc::new(DirStore::new(&store_dir)), 7);
    let (core, _) = core_over(
        &flist_path,
        Arc::new(faulty.clone()),
        SourceConfig::default(),
    );
    faulty.set_plan(FaultPlan {
        down: true,
        ..FaultPlan::default()
    });
    assert_eq!(read_all(&core, b"file4").unwrap_err().errno(), libc::EIO);
    faulty.set_plan(FaultPlan::default());
    assert_eq!(
        read_all(&core, b"file4").unwrap(),
        contents[4],
        "failures are not cached"
    );
    faulty.set_plan(FaultPlan {
        corrupt_reads: true,
        ..FaultPlan::default()
    });
    assert_eq!(
        read_all(&core, b"file5").unwrap_err().errno(),
        libc::EIO,
        "corrupt replies are refused"
    );
}

#[test]
fn a_store_that_hangs_gives_eio_after_the_timeout() {
    let scratch = tempfile::tempdir().unwrap();
    let (source_dir, store_dir) = (scratch.path().join("src"), scratch.path().join("store"));
    std::fs::create_dir_all(&source_dir).unwrap();
    ten_files(&source_dir);
    let flist_path = scratch.path().join("ten.fl");
    pack_dir(
        &source_dir,
        Arc::new(DirStore::new(&store_dir)),
        &flist_path,
    );
    // A zdb "server" that accepts connections and never answers.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let _silent = std::thread::spawn(move || {
        let mut held = Vec::new();
        for stream in listener.incoming().flatten() {
            held.push(stream);
        }
    });
    let hanging = erasure::store::open_store(&format!("zdb://127.0.0.1:{port}/flist")).unwrap();
    let config = SourceConfig {
        store_timeout: Duration::from_millis(300),
        ..SourceConfig::default()
    };
    let (core, _) = core_over(&flist_path, hanging, config);
    let started = Instant::now();
    let error = read_all(&core, b"file2").unwrap_err();
    assert_eq!(error.errno(), libc::EIO);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "bounded by the timeout, took {:?}",
        started.elapsed()
    );
}

/// Writes an rfs flist of `files` (name, content) plus a symlink, blocks into `store_dir`.
fn write_rfs(path: &Path, store_dir: &Path, files: &[(&str, Vec<u8>)]) {
    let directory = InodeMeta {
        mode: mode::DIRECTORY | 0o755,
        mtime: (1_600_000_000, 0),
        ..InodeMeta::default()
    };
    let writer = RfsWriter::create(path, &directory).unwrap();
    let sub = writer.add(1, b"sub", &directory).unwrap();
    for (name, content) in files {
        let meta = InodeMeta {
            mode: mode::REGULAR | 0o640,
            uid: 7,
            gid: 8,
            size: content.len() as u64,
            mtime: (1_600_000_001, 0),
            ctime: (1_600_000_002, 0),
            ..InodeMeta::default()
        };
        let ino = writer.add(sub, name.as_bytes(), &meta).unwrap();
        for block in content.chunks(RFS_BLOCK_BYTES as usize) {
            let sealed = seal_rfs(block).unwrap();
            let hex = hex::encode(sealed.id);
            std::fs::create_dir_all(store_dir.join(&hex[..2])).unwrap();
            std::fs::write(store_dir.join(&hex[..2]).join(&hex), &sealed.stored).unwrap();
            writer.add_block(ino, &sealed.id, &sealed.key).unwrap();
        }
    }
    let link = writer
        .add(
            1,
            b"link",
            &InodeMeta {
                mode: mode::SYMLINK | 0o777,
                size: 9,
                ..InodeMeta::default()
            },
        )
        .unwrap();
    writer.set_target(link, b"sub/big").unwrap();
    writer.add_tag("entrypoint", "/bin/sh").unwrap();
    writer
        .add_route(0, 255, &format!("dir://{}", store_dir.display()))
        .unwrap();
    writer.finish().unwrap();
}

#[test]
fn rfs_flists_mount_and_convert() {
    let scratch = tempfile::tempdir().unwrap();
    let store_dir = scratch.path().join("store");
    let big = pattern(1, RFS_BLOCK_BYTES as usize * 2 + 1234);
    let exact = pattern(2, RFS_BLOCK_BYTES as usize);
    let files = [
        ("big", big.clone()),
        ("exact", exact.clone()),
        ("empty", Vec::new()),
    ];
    let rfs_path = scratch.path().join("made-by-rfs.fl");
    write_rfs(&rfs_path, &store_dir, &files);
    assert!(flistfs::rfs::is_rfs(&rfs_path));

    let flist = flistfs::open_any(&rfs_path).unwrap();
    let tags: Vec<(Vec<u8>, Vec<u8>)> = flist
        .tags()
        .unwrap()
        .into_iter()
        .map(|(key, value)| (key.to_vec(), value.to_vec()))
        .collect();
    assert!(tags.contains(&(b"entrypoint".to_vec(), b"/bin/sh".to_vec())));
    let route = format!("00-ff=dir://{}", store_dir.display()).into_bytes();
    assert!(tags.contains(&(b"route".to_vec(), route)));
    let file = flist.resolve(b"sub/big").unwrap().unwrap();
    assert_eq!(
        (file.record.mode, file.record.uid, file.record.gid),
        (mode::REGULAR | 0o640, 7, 8)
    );
    assert_eq!(file.record.mtime_sec, 1_600_000_001);

    // Convert: our format, chunks still read with rfs's codec from the rfs store.
    let converted = scratch.path().join("converted.fl");
    flistfs::rfs::read(&rfs_path)
        .unwrap()
        .write_to(&converted)
        .unwrap();
    for path in [&rfs_path, &converted] {
        let flist = Arc::new(flistfs::open_any(path).unwrap());
        let store: Arc<dyn ChunkStore> = Arc::new(DirStore::new(&store_dir));
        let source = StoreSource::new(all_routes(store), None, SourceConfig::default()).unwrap();
        let core = FsCore::new(flist, Arc::new(source));
        assert_eq!(read_all(&core, b"sub/big").unwrap(), big);
        assert_eq!(read_all(&core, b"sub/exact").unwrap(), exact);
        assert_eq!(read_all(&core, b"sub/empty").unwrap(), Vec::<u8>::new());
        let link = core.flist().resolve(b"link").unwrap().unwrap();
        assert_eq!(
            core.readlink(u64::from(link.number) + 1).unwrap(),
            b"sub/big"
        );
    }
}

#[test]
fn rfs_files_with_missing_blocks_are_refused() {
    let scratch = tempfile::tempdir().unwrap();
    let path = scratch.path().join("bad.fl");
    let root = InodeMeta {
        mode: mode::DIRECTORY | 0o755,
        ..InodeMeta::default()
    };
    let writer = RfsWriter::create(&path, &root).unwrap();
    let meta = InodeMeta {
        mode: mode::REGULAR | 0o644,
        size: u64::from(RFS_BLOCK_BYTES) + 1,
        ..InodeMeta::default()
    };
    let ino = writer.add(1, b"short", &meta).unwrap();
    writer.add_block(ino, &[1; 32], &[2; 32]).unwrap();
    writer.finish().unwrap();
    let error = flistfs::open_any(&path).unwrap_err().to_string();
    assert!(
        error.contains("short") && error.contains("blocks"),
        "{error}"
    );
}

/// A header with every numeric field set, as real tar writers make them.
fn full_header() -> tar::Header {
    let mut header = tar::Header::new_gnu();
    header.set_uid(0);
    header.set_gid(0);
    header.set_mtime(1_500_000_000);
    header.set_mode(0o644);
    header
}

fn tar_bytes() -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    let mut header = full_header();
    header.set_entry_type(tar::EntryType::Directory);
    header.set_mode(0o750);
    header.set_mtime(1_500_000_000);
    header.set_size(0);
    builder.append_data(&mut header, "etc/", &[][..]).unwrap();
    let content = pattern(9, 200_000);
    let mut header = full_header();
    header.set_mode(0o4755);
    header.set_uid(5);
    header.set_mtime(1_500_000_001);
    header.set_size(content.len() as u64);
    builder
        .append_data(&mut header, "usr/bin/tool", &content[..])
        .unwrap();
    let mut header = full_header();
    header.set_entry_type(tar::EntryType::Link);
    header.set_size(0);
    builder
        .append_link(&mut header, "usr/bin/tool-again", "usr/bin/tool")
        .unwrap();
    let mut header = full_header();
    header.set_entry_type(tar::EntryType::Symlink);
    header.set_size(0);
    header.set_mode(0o777);
    builder
        .append_link(&mut header, "etc/tool", "/usr/bin/tool")
        .unwrap();
    let mut header = full_header();
    header.set_entry_type(tar::EntryType::Fifo);
    header.set_size(0);
    header.set_mode(0o600);
    builder
        .append_data(&mut header, "run/pipe", &[][..])
        .unwrap();
    builder.into_inner().unwrap()
}

fn pack_tar_bytes(
    bytes: &[u8],
    store: Arc<dyn ChunkStore>,
    output: &Path,
) -> Result<(), flistfs::pack::PackError> {
    let options = PackOptions {
        chunk_bytes: CHUNK_BYTES,
        upload_parallel: 4,
        progress: false,
    };
    let root = InodeMeta {
        mode: mode::DIRECTORY | 0o755,
        ..InodeMeta::default()
    };
    let mut packer = Packer::new(all_routes(store), root, options)?;
    packer.add_tar(bytes)?;
    packer.finish(output).map(|_| ())
}

#[test]
fn tar_files_import_plain_gzip_and_zstd() {
    let scratch = tempfile::tempdir().unwrap();
    let store: Arc<dyn ChunkStore> = Arc::new(DirStore::new(scratch.path().join("store")));
    let plain = tar_bytes();
    let mut gzip = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gzip.write_all(&plain).unwrap();
    let gzip = gzip.finish().unwrap();
    let zstd = zstd::bulk::compress(&plain, 3).unwrap();
    for (label, bytes) in [("plain", plain), ("gzip", gzip), ("zstd", zstd)] {
        let output = scratch.path().join(format!("{label}.fl"));
        pack_tar_bytes(&bytes, store.clone(), &output).unwrap();
        let flist = Arc::new(Flist::open(&output).unwrap());
        let tool = flist.resolve(b"usr/bin/tool").unwrap().unwrap();
        assert_eq!(
            (tool.record.mode, tool.record.uid, tool.record.nlink),
            (mode::REGULAR | 0o4755, 5, 2),
            "{label}"
        );
        assert_eq!(
            flist
                .resolve(b"usr/bin/tool-again")
                .unwrap()
                .unwrap()
                .number,
            tool.number
        );
        let etc = flist.resolve(b"etc").unwrap().unwrap();
        assert_eq!(
            (etc.record.mode, etc.record.mtime_sec),
            (mode::DIRECTORY | 0o750, 1_500_000_000)
        );
        let link = flist.resolve(b"etc/tool").unwrap().unwrap();
        assert_eq!(flist.symlink_target(&link).unwrap(), b"/usr/bin/tool");
        assert_eq!(
            flist.resolve(b"run/pipe").unwrap().unwrap().kind(),
            mode::FIFO
        );
        let source =
            StoreSource::new(all_routes(store.clone()), None, SourceConfig::default()).unwrap();
        let core = FsCore::new(flist, Arc::new(source));
        assert_eq!(
            read_all(&core, b"usr/bin/tool").unwrap(),
            pattern(9, 200_000),
            "{label}"
        );
    }
}

#[test]
fn tar_entries_that_could_escape_are_refused() {
    let scratch = tempfile::tempdir().unwrap();
    let store: Arc<dyn ChunkStore> = Arc::new(DirStore::new(scratch.path().join("store")));
    let mut bytes = Vec::new();
    {
        let mut builder = tar::Builder::new(&mut bytes);
        let mut header = full_header();
        header.set_size(2);
        header.set_mode(0o644);
        // `append_data` refuses `..`; write the name into the header by hand.
        header.as_old_mut().name[..13].copy_from_slice(b"../etc/passwd");
        header.set_cksum();
        builder.append(&header, &b"x\n"[..]).unwrap();
        builder.finish().unwrap();
    }
    let error = pack_tar_bytes(&bytes, store, &scratch.path().join("evil.fl"))
        .unwrap_err()
        .to_string();
    assert!(error.contains("../etc/passwd"), "{error}");
}

fn layer(entries: &[(&str, &[u8])]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    for (path, content) in entries {
        let mut header = full_header();
        if path.ends_with('/') {
            header.set_entry_type(tar::EntryType::Directory);
            header.set_mode(0o755);
        }
        header.set_size(content.len() as u64);
        builder.append_data(&mut header, path, *content).unwrap();
    }
    builder.into_inner().unwrap()
}

fn sha256_name(index: usize) -> String {
    // Layout digests need only be unique and hex here: the importer trusts the manifest.
    format!("{index:064x}")
}

#[test]
fn oci_layouts_apply_layers_with_whiteouts() {
    let scratch = tempfile::tempdir().unwrap();
    let image = scratch.path().join("image");
    std::fs::create_dir_all(image.join("blobs/sha256")).unwrap();
    let lower = layer(&[
        ("etc/", b""),
        ("etc/keep", b"keep"),
        ("etc/gone", b"gone"),
        ("opaque/", b""),
        ("opaque/old", b"old"),
    ]);
    let upper = layer(&[
        ("etc/.wh.gone", b""),
        ("opaque/new", b"new"),
        ("opaque/.wh..wh..opq", b""),
        ("etc/added", b"added"),
    ]);
    let mut gzip = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gzip.write_all(&upper).unwrap();
    let layers = [lower, gzip.finish().unwrap()];
    let mut layer_json = Vec::new();
    for (index, bytes) in layers.iter().enumerate() {
        std::fs::write(
            image.join("blobs/sha256").join(sha256_name(index + 1)),
            bytes,
        )
        .unwrap();
        layer_json.push(format!(
            r#"{{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"sha256:{}","size":{}}}"#,
            sha256_name(index + 1),
            bytes.len()
        ));
    }
    let manifest = format!(
        r#"{{"schemaVersion":2,"layers":[{}]}}"#,
        layer_json.join(",")
    );
    std::fs::write(image.join("blobs/sha256").join(sha256_name(9)), manifest).unwrap();
    std::fs::write(
        image.join("index.json"),
        format!(
            r#"{{"schemaVersion":2,"manifests":[{{"digest":"sha256:{}"}}]}}"#,
            sha256_name(9)
        ),
    )
    .unwrap();
    std::fs::write(
        image.join("oci-layout"),
        r#"{"imageLayoutVersion":"1.0.0"}"#,
    )
    .unwrap();
    assert!(flistfs::oci::is_image_directory(&image));

    let store: Arc<dyn ChunkStore> = Arc::new(DirStore::new(scratch.path().join("store")));
    let options = PackOptions {
        chunk_bytes: CHUNK_BYTES,
        upload_parallel: 4,
        progress: false,
    };
    let root = InodeMeta {
        mode: mode::DIRECTORY | 0o755,
        ..InodeMeta::default()
    };
    let mut packer = Packer::new(all_routes(store.clone()), root, options).unwrap();
    flistfs::oci::add_image_directory(&mut packer, &image).unwrap();
    let output = scratch.path().join("image.fl");
    packer.finish(&output).unwrap();

    let flist = Flist::open(&output).unwrap();
    let names = |path: &[u8]| -> Vec<Vec<u8>> {
        let directory = flist.resolve(path).unwrap().unwrap();
        (0..flist.dir_len(&directory).unwrap())
            .map(|index| flist.dir_entry(&directory, index).unwrap().name.to_vec())
            .collect()
    };
    assert_eq!(
        names(b"etc"),
        vec![b"added".to_vec(), b"keep".to_vec()],
        "the whiteout removed etc/gone"
    );
    assert_eq!(
        names(b"opaque"),
        vec![b"new".to_vec()],
        "the opaque directory dropped the lower layer's entries only"
    );

    // The same image as a `docker save` style tarball.
    let mut archive = tar::Builder::new(Vec::new());
    archive.append_dir_all(".", &image).unwrap();
    let tarball = scratch.path().join("image.tar");
    std::fs::write(&tarball, archive.into_inner().unwrap()).unwrap();
    assert!(flistfs::oci::is_image_tar(&tarball).unwrap());
    let options = PackOptions {
        chunk_bytes: CHUNK_BYTES,
        upload_parallel: 4,
        progress: false,
    };
    let mut packer = Packer::new(all_routes(store), root, options).unwrap();
    flistfs::oci::add_image_tar(&mut packer, &tarball).unwrap();
    let output = scratch.path().join("tarball.fl");
    packer.finish(&output).unwrap();
    let flist = Flist::open(&output).unwrap();
    assert!(flist.resolve(b"etc/gone").unwrap().is_none());
    assert!(flist.resolve(b"opaque/new").unwrap().is_some());
}

#[test]
fn holes_are_zeros_and_seek_finds_them() {
    let scratch = tempfile::tempdir().unwrap();
    let (source_dir, store_dir) = (scratch.path().join("src"), scratch.path().join("store"));
    std::fs::create_dir_all(&source_dir).unwrap();
    let chunk = CHUNK_BYTES as usize;
    let mut content = pattern(5, chunk);
    content.extend(vec![0u8; 2 * chunk]);
    content.extend(pattern(6, chunk / 2));
    std::fs::write(source_dir.join("sparse"), &content).unwrap();
    let store: Arc<dyn ChunkStore> = Arc::new(DirStore::new(&store_dir));
    let flist_path = scratch.path().join("sparse.fl");
    pack_dir(&source_dir, store.clone(), &flist_path);
    let (core, source) = core_over(&flist_path, store, SourceConfig::default());
    let file = core.flist().resolve(b"sparse").unwrap().unwrap();
    assert_eq!(
        core.flist().chunk_len(&file).unwrap(),
        2,
        "the all-zero chunks are holes"
    );
    assert_eq!(read_all(&core, b"sparse").unwrap(), content);
    let id = u64::from(file.number) + 1;
    let size = content.len() as u64;
    let chunk = chunk as u64;
    assert_eq!(core.seek_data_or_hole(id, 0, false).unwrap(), 0);
    assert_eq!(core.seek_data_or_hole(id, 0, true).unwrap(), chunk);
    assert_eq!(
        core.seek_data_or_hole(id, chunk + 5, false).unwrap(),
        3 * chunk
    );
    assert_eq!(core.seek_data_or_hole(id, 3 * chunk, true).unwrap(), size);
    assert_eq!(
        core.seek_data_or_hole(id, size, false).unwrap_err().errno(),
        libc::ENXIO
    );
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(source.store_reads(), 2);
}
