//! Online compaction and the verifiable hash chain: compaction reclaims space while writes go
//! on, keeps every live value and the chain (VERIFY, proofs); a crash at any write or sync of a
//! compaction loses nothing acknowledged; VERIFY catches any flipped byte.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use dataplane::engine::{Durability, Engine, EngineConfig, SetOutcome, DEFAULT_NAMESPACE};
use dataplane::fault::FaultIo;
use dataplane::log::record;
use dataplane::sys::{StorageIo, UringIo};
use rand::{Rng, SeedableRng};

fn open(dir: &Path, io: Arc<dyn StorageIo>) -> Arc<Engine> {
    let mut config = EngineConfig::new(dir.join("data"), dir.join("index"));
    config.durability = Durability::Sync;
    config.segment_bytes_max = 1024 * 1024;
    config.compact_garbage_ratio = 0.0; // only explicit compactions here
    Engine::open(config, io).unwrap()
}

fn block_on<F: std::future::Future>(future: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(future)
}

fn set(engine: &Engine, key: &[u8], value: &[u8]) -> Result<(), String> {
    let ns = engine.namespace(DEFAULT_NAMESPACE).unwrap();
    match engine
        .set(&ns, key, value, None)
        .map_err(|e| e.to_string())?
    {
        SetOutcome::Stored { ticket, .. } => {
            block_on(engine.wait_durable(ticket)).map_err(|e| e.to_string())
        }
        SetOutcome::Unchanged => Ok(()),
    }
}

fn log_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir.join("data").join(DEFAULT_NAMESPACE))
        .unwrap()
        .map(|e| e.unwrap())
        .filter(|e| e.file_name().to_string_lossy().starts_with("seg-"))
        .map(|e| e.metadata().unwrap().len())
        .sum()
}

#[test]
fn compaction_reclaims_space_and_keeps_values_and_chain() {
    let dir = tempfile::tempdir().unwrap();
    let engine = open(dir.path(), Arc::new(UringIo::new()));
    let ns = engine.namespace(DEFAULT_NAMESPACE).unwrap();
    let mut model = BTreeMap::new();
    for round in 0..4 {
        for i in 0..800 {
            let value = format!("round{round}-{i}-{}", "v".repeat(900)).into_bytes();
            set(&engine, format!("key{i}").as_bytes(), &value).unwrap();
            model.insert(format!("key{i}").into_bytes(), value);
        }
    }
    for i in (0..800).step_by(7) {
        engine.delete(&ns, format!("key{i}").as_bytes()).unwrap();
        model.remove(format!("key{i}").as_bytes());
    }
    // A client remembers the head after record 1000.
    let (head_then, count_then) = {
        let digests = engine.chain_digests(&ns, 0, 1000).unwrap();
        let mut link = [0u8; 32];
        for digest in &digests {
            link = record::link_from(&link, digest);
        }
        (link, 1000u64)
    };
    let (head_before, count_before) = engine.chain(&ns).unwrap();
    engine.verify(&ns).unwrap();
    let bytes_before = log_bytes(dir.path());
    let report = engine.compact(&ns).unwrap();
    let bytes_after = log_bytes(dir.path());
    assert!(
        bytes_after * 3 < bytes_before,
        "compaction kept {bytes_after} of {bytes_before} bytes"
    );
    assert!(report.records_dropped > 0 && report.records_carried as usize == model.len());
    assert_eq!(
        engine.chain(&ns).unwrap(),
        (head_before, count_before),
        "compaction must not change the chain"
    );
    engine.verify(&ns).unwrap();
    for (key, value) in &model {
        assert_eq!(
            engine.get(&ns, key).unwrap().as_deref(),
            Some(value.as_slice())
        );
    }
    // The client's old head is extended by the digests after it, up to today's head, even
    // though most of those records were compacted away.
    let digests = engine.chain_digests(&ns, count_then, u64::MAX).unwrap();
    let mut link = head_then;
    for digest in &digests {
        link = record::link_from(&link, digest);
    }
    assert_eq!(link, head_before);
    // HISTORY of a compacted key ends at the copy (older versions were garbage).
    let item = engine.history(&ns, b"key1", None).unwrap();
    assert!(item.previous.is_none());
    engine.shutdown();
    drop(engine);
    // After a restart: same values, same chain, VERIFY passes; compacting again is a no-op.
    let engine = open(dir.path(), Arc::new(UringIo::new()));
    let ns = engine.namespace(DEFAULT_NAMESPACE).unwrap();
    assert_eq!(engine.chain(&ns).unwrap(), (head_before, count_before));
    engine.verify(&ns).unwrap();
    for (key, value) in &model {
        assert_eq!(
            engine.get(&ns, key).unwrap().as_deref(),
            Some(value.as_slice())
        );
    }
    set(&engine, b"after", b"restart").unwrap();
    engine.compact(&ns).unwrap();
    engine.verify(&ns).unwrap();
    engine.shutdown();
}

#[test]
fn writes_and_reads_go_on_during_compaction() {
    let dir = tempfile::tempdir().unwrap();
    let engine = open(dir.path(), Arc::new(UringIo::new()));
    let ns = engine.namespace(DEFAULT_NAMESPACE).unwrap();
    for round in 0..3 {
        for i in 0..600 {
            set(
                &engine,
                format!("k{i}").as_bytes(),
                format!("{round}-{}", "x".repeat(1500)).as_bytes(),
            )
            .unwrap();
        }
    }
    let writer = {
        let engine = Arc::clone(&engine);
        std::thread::spawn(move || {
            let mut written = BTreeMap::new();
            for i in 0..2000 {
                let key = format!("k{}", i % 600);
                let value = format!("during-{i}");
                set(&engine, key.as_bytes(), value.as_bytes()).unwrap();
                let ns = engine.namespace(DEFAULT_NAMESPACE).unwrap();
                assert!(engine.get(&ns, key.as_bytes()).unwrap().is_some());
                written.insert(key, value);
            }
            written
        })
    };
    let mut compactions = 0;
    while !writer.is_finished() {
        engine.compact(&ns).unwrap();
        compactions += 1;
    }
    let written = writer.join().unwrap();
    assert!(compactions >= 1);
    for (key, value) in &written {
        assert_eq!(
            engine.get(&ns, key.as_bytes()).unwrap().unwrap(),
            value.as_bytes()
        );
    }
    engine.verify(&ns).unwrap();
    engine.shutdown();
    drop(engine);
    let engine = open(dir.path(), Arc::new(UringIo::new()));
    let ns = engine.namespace(DEFAULT_NAMESPACE).unwrap();
    for (key, value) in &written {
        assert_eq!(
            engine.get(&ns, key.as_bytes()).unwrap().unwrap(),
            value.as_bytes()
        );
    }
    engine.verify(&ns).unwrap();
    engine.shutdown();
}

#[test]
fn crash_during_compaction_loses_nothing_and_space_comes_back() {
    for seed in 0..24u64 {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let dir = tempfile::tempdir().unwrap();
        let mut model = BTreeMap::new();
        {
            let engine = open(dir.path(), Arc::new(UringIo::new()));
            for round in 0..3 {
                for i in 0..300 {
                    let value = format!("{round}-{i}-{}", "z".repeat(rng.gen_range(100..3000)))
                        .into_bytes();
                    set(&engine, format!("key{i}").as_bytes(), &value).unwrap();
                    model.insert(format!("key{i}").into_bytes(), value);
                }
            }
            engine.shutdown();
        }
        let uncompacted = log_bytes(dir.path());
        let fault = Arc::new(FaultIo::new(seed, rng.gen_range(1..12)));
        {
            let engine = open(dir.path(), fault.clone());
            let ns = engine.namespace(DEFAULT_NAMESPACE).unwrap();
            let _ = engine.compact(&ns); // crashes somewhere inside, or completes
            engine.shutdown();
        }
        fault.power_loss().unwrap();
        let engine = open(dir.path(), Arc::new(UringIo::new()));
        let ns = engine.namespace(DEFAULT_NAMESPACE).unwrap();
        for (key, value) in &model {
            let stored = engine
                .get(&ns, key)
                .unwrap_or_else(|e| panic!("seed {seed}: {e}"));
            assert_eq!(
                stored.as_deref(),
                Some(value.as_slice()),
                "seed {seed}: {}",
                String::from_utf8_lossy(key)
            );
        }
        engine
            .verify(&ns)
            .unwrap_or_else(|e| panic!("seed {seed}: VERIFY after a crash in compaction: {e}"));
        engine.compact(&ns).unwrap();
        engine.verify(&ns).unwrap();
        let after = log_bytes(dir.path());
        let files: Vec<String> = std::fs::read_dir(dir.path().join("data").join(DEFAULT_NAMESPACE))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert!(
            after * 2 < uncompacted,
            "seed {seed}: space not reclaimed: {uncompacted} -> {after} bytes, files {files:?}"
        );
        engine.shutdown();
    }
}

#[test]
fn verify_catches_any_flipped_byte_of_any_record() {
    let dir = tempfile::tempdir().unwrap();
    {
        let engine = open(dir.path(), Arc::new(UringIo::new()));
        for i in 0..50 {
            set(
                &engine,
                format!("key{i:03}").as_bytes(),
                format!("value-{i:03}-{}", "w".repeat(40)).as_bytes(),
            )
            .unwrap();
        }
        engine.shutdown();
    }
    let segment = dir
        .path()
        .join("data")
        .join(DEFAULT_NAMESPACE)
        .join("seg-00000001.zdb");
    let clean = std::fs::read(&segment).unwrap();
    let record_at = clean.windows(6).position(|w| w == b"key025").unwrap() - 80;
    let record_len = 80 + 6 + 50;
    for position in 0..record_len {
        let mut bytes = clean.clone();
        bytes[record_at + position] ^= 0x01;
        std::fs::write(&segment, &bytes).unwrap();
        let engine = open(dir.path(), Arc::new(UringIo::new()));
        let ns = engine.namespace(DEFAULT_NAMESPACE).unwrap();
        let failure = engine.verify(&ns).expect_err(&format!(
            "flip at byte {position} of the record went unnoticed"
        ));
        assert!(
            failure.to_string().contains("segment 1") || failure.sequence.is_some(),
            "{failure}"
        );
        assert!(
            engine.get(&ns, b"key025").is_err(),
            "flip at byte {position}: GET served the record"
        );
        engine.shutdown();
    }
    std::fs::write(&segment, &clean).unwrap();
    let engine = open(dir.path(), Arc::new(UringIo::new()));
    let ns = engine.namespace(DEFAULT_NAMESPACE).unwrap();
    engine.verify(&ns).unwrap();
    engine.shutdown();
}
