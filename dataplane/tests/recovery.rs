//! Recovery, checked against a model: a fault-injecting I/O backend "crashes" at the Nth write
//! or sync (then drops unsynced bytes as a power loss would), over many seeded runs; and
//! damage planted in segments and index snapshots is reported, never served, never cut off
//! unless it is the torn tail.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use dataplane::engine::{
    Durability, Engine, EngineConfig, EngineError, SetOutcome, DEFAULT_NAMESPACE,
};
use dataplane::fault::FaultIo;
use dataplane::sys::{PosixIo, StorageIo, UringIo};
use rand::{Rng, SeedableRng};

fn config(dir: &Path) -> EngineConfig {
    let mut config = EngineConfig::new(dir.join("data"), dir.join("index"));
    config.durability = Durability::Sync;
    config.segment_bytes_max = 1024 * 1024;
    config
}

fn open(dir: &Path, io: Arc<dyn StorageIo>) -> Arc<Engine> {
    Engine::open(config(dir), io).unwrap()
}

fn block_on<F: std::future::Future>(future: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(future)
}

#[test]
fn crash_at_any_write_or_sync_keeps_every_acknowledged_write() {
    for seed in 0..48u64 {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let dir = tempfile::tempdir().unwrap();
        // A first life without faults, so the crash also hits a namespace with history.
        let mut model: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
        {
            let engine = open(dir.path(), Arc::new(UringIo::new()));
            let ns = engine.namespace(DEFAULT_NAMESPACE).unwrap();
            for i in 0..rng.gen_range(0..50) {
                let key = format!("k{}", i % 20).into_bytes();
                let value = vec![rng.gen::<u8>(); rng.gen_range(0..5000)];
                if let SetOutcome::Stored { ticket, .. } =
                    engine.set(&ns, &key, &value, None).unwrap()
                {
                    block_on(engine.wait_durable(ticket)).unwrap();
                }
                model.insert(key, value);
            }
            engine.shutdown();
        }
        let crash_at = rng.gen_range(1..80);
        let fault = Arc::new(FaultIo::new(seed, crash_at));
        let engine = open(dir.path(), fault.clone());
        let ns = engine.namespace(DEFAULT_NAMESPACE).unwrap();
        let mut in_flight: Option<(Vec<u8>, Option<Vec<u8>>)> = None;
        for _ in 0..200 {
            let key = format!("k{}", rng.gen_range(0..30)).into_bytes();
            let delete = rng.gen_bool(0.2) && model.contains_key(&key);
            let value = vec![rng.gen::<u8>(); rng.gen_range(0..60_000)];
            let ticket = if delete {
                engine.delete(&ns, &key).map(Some)
            } else {
                engine.set(&ns, &key, &value, None).map(|o| match o {
                    SetOutcome::Stored { ticket, .. } => Some(ticket),
                    SetOutcome::Unchanged => None,
                })
            };
            let durable = match ticket {
                Ok(Some(ticket)) => block_on(engine.wait_durable(ticket)),
                Ok(None) => Ok(()),
                Err(error) => Err(error),
            };
            match durable {
                Ok(()) if delete => {
                    model.remove(&key);
                }
                Ok(()) => {
                    model.insert(key, value);
                }
                Err(_) => {
                    in_flight = Some((key, (!delete).then_some(value)));
                    break;
                }
            }
        }
        engine.shutdown();
        drop(engine);
        fault.power_loss().unwrap();

        let engine = open(dir.path(), Arc::new(UringIo::new()));
        let ns = engine.namespace(DEFAULT_NAMESPACE).unwrap();
        let mut keys: Vec<Vec<u8>> = model.keys().cloned().collect();
        if let Some((key, _)) = &in_flight {
            keys.push(key.clone());
        }
        for key in keys {
            let stored = engine
                .get(&ns, &key)
                .unwrap_or_else(|e| panic!("seed {seed}: {e}"));
            let acknowledged = model.get(&key).cloned();
            let may_be = in_flight
                .as_ref()
                .filter(|(k, _)| *k == key)
                .map(|(_, v)| v.clone());
            assert!(
                stored == acknowledged || may_be.is_some_and(|v| v == stored),
                "seed {seed} crash_at {crash_at}: key {} is {:?} bytes, acknowledged {:?}",
                String::from_utf8_lossy(&key),
                stored.as_ref().map(|v| v.len()),
                acknowledged.as_ref().map(|v| v.len()),
            );
        }
        assert_eq!(
            engine.info(&ns).damaged,
            0,
            "seed {seed}: a torn tail must be cut, not reported as damage"
        );
        // The recovered namespace takes new writes.
        let outcome = engine.set(&ns, b"after", b"crash", None).unwrap();
        assert!(matches!(outcome, SetOutcome::Stored { .. }));
        engine.shutdown();
    }
}

/// Writes `count` keys, stops cleanly, returns the data directory of the default namespace.
fn populate(dir: &Path, count: usize) -> std::path::PathBuf {
    let engine = open(dir, Arc::new(UringIo::new()));
    let ns = engine.namespace(DEFAULT_NAMESPACE).unwrap();
    for i in 0..count {
        let value = format!("value-{i:05}-{}", "p".repeat(200));
        engine
            .set(&ns, format!("key{i:05}").as_bytes(), value.as_bytes(), None)
            .unwrap();
    }
    engine.shutdown();
    dir.join("data").join(DEFAULT_NAMESPACE)
}

fn flip(path: &Path, needle: &[u8], delta: usize) -> u64 {
    let mut bytes = std::fs::read(path).unwrap();
    let at = bytes
        .windows(needle.len())
        .position(|w| w == needle)
        .expect("needle in segment");
    bytes[at + delta] ^= 0x20;
    std::fs::write(path, &bytes).unwrap();
    bytes.len() as u64
}

#[test]
fn damaged_value_in_the_middle_is_reported_and_never_served() {
    for drop_index in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let data = populate(dir.path(), 300);
        let segment = data.join("seg-00000001.zdb");
        let length = flip(&segment, b"value-00150-", 3);
        if drop_index {
            std::fs::remove_file(
                dir.path()
                    .join("index")
                    .join(DEFAULT_NAMESPACE)
                    .join("index.zdx"),
            )
            .unwrap();
        }
        let engine = open(dir.path(), Arc::new(UringIo::new()));
        let ns = engine.namespace(DEFAULT_NAMESPACE).unwrap();
        assert_eq!(
            std::fs::metadata(&segment).unwrap().len(),
            length,
            "damage in the middle must not be cut off"
        );
        let error = engine.get(&ns, b"key00150").unwrap_err();
        assert!(matches!(error, EngineError::Corrupt { .. }), "{error}");
        assert_eq!(engine.check(&ns, b"key00150").unwrap(), Some(false));
        for i in (0..300).filter(|i| *i != 150) {
            let value = engine
                .get(&ns, format!("key{i:05}").as_bytes())
                .unwrap()
                .unwrap();
            assert!(value.starts_with(format!("value-{i:05}-").as_bytes()));
        }
        assert!(engine.info(&ns).damaged >= 1);
        assert!(engine
            .damage(&ns)
            .iter()
            .any(|d| d.key.as_deref() == Some(b"key00150".as_slice())));
        engine.shutdown();
    }
}

#[test]
fn damaged_header_in_the_middle_is_skipped_on_rebuild() {
    let dir = tempfile::tempdir().unwrap();
    let data = populate(dir.path(), 200);
    let segment = data.join("seg-00000001.zdb");
    // Flip a byte of the key inside the header-covered area of record "key00100": its header
    // still checks, so flip the value length instead (bytes 8..12 of the header).
    let bytes = std::fs::read(&segment).unwrap();
    let key_at = bytes.windows(8).position(|w| w == b"key00100").unwrap();
    let header_at = key_at - 80;
    let mut damaged = bytes.clone();
    damaged[header_at + 9] ^= 0x40;
    std::fs::write(&segment, &damaged).unwrap();
    std::fs::remove_file(
        dir.path()
            .join("index")
            .join(DEFAULT_NAMESPACE)
            .join("index.zdx"),
    )
    .unwrap();
    let engine = open(dir.path(), Arc::new(UringIo::new()));
    let ns = engine.namespace(DEFAULT_NAMESPACE).unwrap();
    assert_eq!(
        std::fs::metadata(&segment).unwrap().len(),
        bytes.len() as u64
    );
    assert_eq!(
        engine.get(&ns, b"key00100").unwrap(),
        None,
        "a record whose header is lost cannot be found"
    );
    for i in (0..200).filter(|i| *i != 100) {
        assert!(
            engine
                .get(&ns, format!("key{i:05}").as_bytes())
                .unwrap()
                .is_some(),
            "key{i:05} lost"
        );
    }
    assert_eq!(engine.info(&ns).damaged, 1);
    engine.shutdown();
}

#[test]
fn torn_tail_is_cut_and_writing_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let data = populate(dir.path(), 50);
    let segment = data.join("seg-00000001.zdb");
    let clean_length = std::fs::metadata(&segment).unwrap().len();
    // Half a record at the end, as a crash during a write leaves it.
    let mut bytes = std::fs::read(&segment).unwrap();
    let last_record: Vec<u8> = bytes[bytes.len() - 300..].to_vec();
    bytes.extend_from_slice(&last_record[..150]);
    std::fs::write(&segment, &bytes).unwrap();
    let engine = open(dir.path(), Arc::new(UringIo::new()));
    let ns = engine.namespace(DEFAULT_NAMESPACE).unwrap();
    assert_eq!(std::fs::metadata(&segment).unwrap().len(), clean_length);
    assert_eq!(engine.info(&ns).damaged, 0);
    assert_eq!(engine.info(&ns).entries, 50);
    engine.set(&ns, b"new", b"after the cut", None).unwrap();
    engine.shutdown();
    let engine = open(dir.path(), Arc::new(UringIo::new()));
    let ns = engine.namespace(DEFAULT_NAMESPACE).unwrap();
    assert_eq!(engine.get(&ns, b"new").unwrap().unwrap(), b"after the cut");
    assert_eq!(engine.info(&ns).entries, 51);
    engine.shutdown();
}

#[test]
fn missing_or_damaged_index_is_rebuilt_from_segments() {
    let dir = tempfile::tempdir().unwrap();
    populate(dir.path(), 2000);
    let index = dir
        .path()
        .join("index")
        .join(DEFAULT_NAMESPACE)
        .join("index.zdx");
    let expect_all = |engine: &Engine| {
        let ns = engine.namespace(DEFAULT_NAMESPACE).unwrap();
        assert_eq!(engine.info(&ns).entries, 2000);
        for i in (0..2000).step_by(97) {
            assert!(engine
                .get(&ns, format!("key{i:05}").as_bytes())
                .unwrap()
                .is_some());
        }
    };
    // Damaged: one flipped byte.
    let mut bytes = std::fs::read(&index).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 1;
    std::fs::write(&index, &bytes).unwrap();
    let engine = open(dir.path(), Arc::new(UringIo::new()));
    expect_all(&engine);
    engine.shutdown();
    // Missing.
    std::fs::remove_file(&index).unwrap();
    let engine = open(dir.path(), Arc::new(UringIo::new()));
    expect_all(&engine);
    engine.shutdown();
    // Present (written at shutdown): used, and the tail written after it is replayed.
    assert!(index.exists());
    let engine = open(dir.path(), Arc::new(UringIo::new()));
    expect_all(&engine);
    engine.shutdown();
}

#[test]
fn periodic_durability_syncs_within_the_interval() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(dir.path());
    config.durability = Durability::Periodic(Duration::from_millis(200));
    let engine = Engine::open(config, Arc::new(UringIo::new())).unwrap();
    let ns = engine.namespace(DEFAULT_NAMESPACE).unwrap();
    let SetOutcome::Stored { ticket, .. } = engine.set(&ns, b"k", b"v", None).unwrap() else {
        panic!()
    };
    let started = std::time::Instant::now();
    block_on(engine.wait_durable(ticket)).unwrap();
    assert!(started.elapsed() < Duration::from_secs(2));
    engine.shutdown();
}

#[test]
fn large_and_small_records_interleaved_read_back_before_and_after_restart() {
    // Large records get pending chunks of their own and small ones fill a chunk up to its
    // growth limit: every mix must read back while pending, chain, and replay.
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(dir.path());
    config.durability = Durability::Periodic(Duration::from_secs(60));
    config.segment_bytes_max = 8 * 1024 * 1024;
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let sizes = [
        10,
        70 * 1024,
        1,
        300 * 1024,
        64 * 1024 - 40,
        5000,
        1024 * 1024,
        0,
    ];
    let mut model: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
    {
        let engine = Engine::open(config.clone(), Arc::new(UringIo::new())).unwrap();
        let ns = engine.namespace(DEFAULT_NAMESPACE).unwrap();
        for i in 0..600usize {
            let size = if i % 7 == 0 {
                sizes[i / 7 % sizes.len()]
            } else {
                rng.gen_range(0..3000)
            };
            let key = format!("k{i}").into_bytes();
            let value = fixtures::bytes::xorshift_bytes(i as u64 + 1, size);
            engine.set(&ns, &key, &value, None).unwrap();
            model.insert(key, value);
        }
        for (key, value) in &model {
            assert_eq!(
                engine.get(&ns, key).unwrap().as_ref(),
                Some(value),
                "pending {key:?}"
            );
        }
        let (_, count) = engine.verify(&ns).unwrap();
        assert_eq!(count, model.len() as u64);
        engine.shutdown();
    }
    let engine = Engine::open(config, Arc::new(UringIo::new())).unwrap();
    let ns = engine.namespace(DEFAULT_NAMESPACE).unwrap();
    for (key, value) in &model {
        assert_eq!(
            engine.get(&ns, key).unwrap().as_ref(),
            Some(value),
            "replayed {key:?}"
        );
    }
    engine.verify(&ns).unwrap();
}

/// Positional I/O that counts its reads and makes every fdatasync take `sync_delay` more
/// (a slow disk).
#[derive(Debug, Default)]
struct ProbeIo {
    sync_delay: Duration,
    reads: std::sync::atomic::AtomicUsize,
}

impl StorageIo for ProbeIo {
    fn write_batch(
        &self,
        writes: &[dataplane::sys::WriteRequest<'_>],
        sync: &[&std::fs::File],
    ) -> std::io::Result<()> {
        if !sync.is_empty() {
            std::thread::sleep(self.sync_delay);
        }
        PosixIo.write_batch(writes, sync)
    }

    fn read_exact_at(
        &self,
        file: &std::fs::File,
        offset: u64,
        buf: &mut [u8],
    ) -> std::io::Result<()> {
        self.reads
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        PosixIo.read_exact_at(file, offset, buf)
    }

    fn name(&self) -> &'static str {
        "probe"
    }
}

#[test]
fn on_a_slow_disk_sync_rounds_leave_the_event_loop_free() {
    // Under --sync a small round may be synced on the event loop itself; once a sync was slow,
    // the next ones go to the flusher and the event loop serves others (a read) meanwhile.
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(
        config(dir.path()),
        Arc::new(ProbeIo {
            sync_delay: Duration::from_millis(300),
            ..ProbeIo::default()
        }),
    )
    .unwrap();
    let ns = engine.namespace(DEFAULT_NAMESPACE).unwrap();
    block_on(async {
        let stored = |key: &[u8]| match engine.set(&ns, key, b"value", None).unwrap() {
            SetOutcome::Stored { ticket, .. } => ticket,
            SetOutcome::Unchanged => panic!("a new key was not stored"),
        };
        // The first commit finds out that syncs are slow.
        engine.commit(stored(b"first")).await.unwrap();
        let ticket = stored(b"second");
        let writer = {
            let engine = Arc::clone(&engine);
            tokio::spawn(async move { engine.commit(ticket).await })
        };
        // Enough turns for the writer to reach its choice (it yields once before it).
        for _ in 0..4 {
            tokio::task::yield_now().await;
        }
        assert!(
            !writer.is_finished(),
            "the commit ran its slow sync on the event loop"
        );
        assert_eq!(engine.get(&ns, b"first").unwrap(), Some(b"value".to_vec()));
        writer.await.unwrap().unwrap();
    });
    assert_eq!(engine.get(&ns, b"second").unwrap(), Some(b"value".to_vec()));
}

#[test]
fn just_written_records_are_read_from_memory_and_match_the_disk() {
    // The write buffers a round handed to the kernel stay readable: reading what was just
    // written costs no disk read. Without a cache every read goes to the file, with the same
    // answers; FLUSH and compaction throw the buffers away with what they describe.
    for cache_bytes in [256 * 1024 * 1024, 0] {
        let dir = tempfile::tempdir().unwrap();
        let mut config = config(dir.path());
        config.durability = Durability::Periodic(Duration::from_secs(60));
        config.cache_bytes_max = cache_bytes;
        let io = Arc::new(ProbeIo::default());
        let engine = Engine::open(config, Arc::clone(&io) as Arc<dyn StorageIo>).unwrap();
        let ns = engine.namespace(DEFAULT_NAMESPACE).unwrap();
        let mut rng = rand::rngs::StdRng::seed_from_u64(11);
        let mut model: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
        let mut last_ticket = 0;
        for i in 0..3000 {
            let key = format!("key-{}", i % 1000).into_bytes();
            let value: Vec<u8> = (0..rng.gen_range(1..3000)).map(|_| rng.gen()).collect();
            if let SetOutcome::Stored { ticket, .. } = engine.set(&ns, &key, &value, None).unwrap()
            {
                last_ticket = ticket;
                if i % 100 == 99 {
                    block_on(engine.commit(ticket)).unwrap();
                }
            }
            model.insert(key, value);
        }
        // Everything written (nothing left pending, which would be served from memory anyway).
        block_on(engine.commit(last_ticket)).unwrap();
        let reads_before = io.reads.load(std::sync::atomic::Ordering::Relaxed);
        for (key, value) in &model {
            assert_eq!(engine.get(&ns, key).unwrap().as_ref(), Some(value));
        }
        let reads = io.reads.load(std::sync::atomic::Ordering::Relaxed) - reads_before;
        if cache_bytes > 0 {
            assert_eq!(reads, 0, "reads of just-written records went to the disk");
        } else {
            assert_eq!(
                reads,
                model.len(),
                "without a cache every read is a disk read"
            );
        }
        // The same through batches of GETs: from memory they all come back, in order, each
        // batch stopping once its values reach the bound (not before); without a cache none
        // is in memory, so a batch serves nothing and leaves the key to a disk read.
        let keys: Vec<&[u8]> = model.keys().map(Vec::as_slice).collect();
        let bound_bytes = 10_000;
        for batch in keys.chunks(dataplane::engine::GET_RUN_MAX) {
            let mut at = 0;
            while at < batch.len() {
                let mut values = Vec::new();
                let served = engine.get_many_in_memory(&ns, &batch[at..], bound_bytes, |v| {
                    values.push(v.map(<[u8]>::to_vec))
                });
                assert_eq!(served, values.len());
                if cache_bytes == 0 {
                    assert_eq!(served, 0, "without a cache a value was found in memory");
                    break;
                }
                let sizes: Vec<usize> = values
                    .iter()
                    .map(|v| v.as_ref().map_or(0, Vec::len))
                    .collect();
                assert!(served >= 1);
                assert!(sizes[..served - 1].iter().sum::<usize>() < bound_bytes);
                if at + served < batch.len() {
                    assert!(sizes.iter().sum::<usize>() >= bound_bytes, "stopped early");
                }
                for (key, value) in batch[at..at + served].iter().zip(&values) {
                    assert_eq!(value.as_ref(), model.get(*key));
                }
                at += served;
            }
        }
        engine.compact(&ns).unwrap();
        for (key, value) in &model {
            assert_eq!(engine.get(&ns, key).unwrap().as_ref(), Some(value));
        }
        engine.flush_namespace(&ns).unwrap();
        for key in model.keys() {
            assert_eq!(engine.get(&ns, key).unwrap(), None);
        }
        engine.shutdown();
    }
}
