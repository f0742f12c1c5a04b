//! End-to-end: the real `zdb` binary, driven with the `redis` crate, redis-cli and raw bytes.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{raw, redis_cli, Zdb};
use redis::{RedisResult, Value};

fn cmd(con: &mut redis::Connection, args: &[&[u8]]) -> RedisResult<Value> {
    let mut command = redis::cmd(std::str::from_utf8(args[0]).unwrap());
    for arg in &args[1..] {
        command.arg(*arg);
    }
    command.query(con)
}

fn bulk(value: Value) -> Option<Vec<u8>> {
    match value {
        Value::BulkString(bytes) => Some(bytes),
        Value::Nil => None,
        other => panic!("expected a bulk string, got {other:?}"),
    }
}

fn err_text(result: RedisResult<Value>) -> String {
    match result {
        // The redis crate shows the first word of an error reply as its code: "Key: not found".
        Err(error) => error.to_string().replacen(": ", " ", 1),
        Ok(value) => panic!("expected an error, got {value:?}"),
    }
}

#[test]
fn basic_commands_follow_0db() {
    let dir = tempfile::tempdir().unwrap();
    let zdb = Zdb::start(dir.path(), &[]);
    let mut con = zdb.connection();
    assert_eq!(
        cmd(&mut con, &[b"PING"]).unwrap(),
        Value::SimpleString("PONG".into())
    );
    // SET replies with the key; the same value again writes nothing and replies nil.
    assert_eq!(
        bulk(cmd(&mut con, &[b"SET", b"k\x00bin", b"v1"]).unwrap()),
        Some(b"k\x00bin".to_vec())
    );
    assert_eq!(
        bulk(cmd(&mut con, &[b"SET", b"k\x00bin", b"v1"]).unwrap()),
        None
    );
    assert_eq!(
        bulk(cmd(&mut con, &[b"GET", b"k\x00bin"]).unwrap()),
        Some(b"v1".to_vec())
    );
    assert_eq!(
        bulk(cmd(&mut con, &[b"SET", b"k\x00bin", b"v2"]).unwrap()),
        Some(b"k\x00bin".to_vec())
    );
    assert_eq!(
        cmd(&mut con, &[b"EXISTS", b"k\x00bin"]).unwrap(),
        Value::Int(1)
    );
    assert_eq!(cmd(&mut con, &[b"EXISTS", b"nope"]).unwrap(), Value::Int(0));
    assert_eq!(
        cmd(&mut con, &[b"CHECK", b"k\x00bin"]).unwrap(),
        Value::Int(1)
    );
    assert_eq!(
        cmd(&mut con, &[b"LENGTH", b"k\x00bin"]).unwrap(),
        Value::Int(2)
    );
    let Value::Int(time) = cmd(&mut con, &[b"KEYTIME", b"k\x00bin"]).unwrap() else {
        panic!()
    };
    assert!(time > 1_700_000_000);
    // HISTORY walks back to the first version.
    let Value::Array(now) = cmd(&mut con, &[b"HISTORY", b"k\x00bin"]).unwrap() else {
        panic!()
    };
    assert_eq!(now[2], Value::BulkString(b"v2".to_vec()));
    let Value::BulkString(previous) = &now[0] else {
        panic!()
    };
    let Value::Array(before) = cmd(&mut con, &[b"HISTORY", b"k\x00bin", previous]).unwrap() else {
        panic!()
    };
    assert_eq!(before[2], Value::BulkString(b"v1".to_vec()));
    // MGET, DEL (OK, then an error for a missing key), GET of a deleted key is nil.
    let Value::Array(values) = cmd(&mut con, &[b"MGET", b"k\x00bin", b"nope"]).unwrap() else {
        panic!()
    };
    assert_eq!(values, vec![Value::BulkString(b"v2".to_vec()), Value::Nil]);
    assert_eq!(cmd(&mut con, &[b"DEL", b"k\x00bin"]).unwrap(), Value::Okay);
    assert!(err_text(cmd(&mut con, &[b"DEL", b"k\x00bin"])).contains("Key not found"));
    assert_eq!(bulk(cmd(&mut con, &[b"GET", b"k\x00bin"]).unwrap()), None);
    assert_eq!(cmd(&mut con, &[b"DBSIZE"]).unwrap(), Value::Int(0));
    let Value::Array(time) = cmd(&mut con, &[b"TIME"]).unwrap() else {
        panic!()
    };
    assert_eq!(time.len(), 2);
    let info = bulk(cmd(&mut con, &[b"INFO"]).unwrap()).unwrap();
    assert!(String::from_utf8_lossy(&info).contains("io_backend: io_uring"));
    // Limits: keys over 255 bytes, values over 8 MiB, unknown commands.
    assert!(err_text(cmd(&mut con, &[b"SET", &[b'k'; 256], b"v"])).contains("Key too large"));
    assert!(err_text(cmd(
        &mut con,
        &[b"SET", b"big", &vec![0u8; 8 * 1024 * 1024 + 1]]
    ))
    .contains("too large"));
    assert_eq!(
        bulk(cmd(&mut con, &[b"SET", b"max", &vec![7u8; 8 * 1024 * 1024]]).unwrap()),
        Some(b"max".to_vec())
    );
    assert_eq!(
        bulk(cmd(&mut con, &[b"GET", b"max"]).unwrap())
            .unwrap()
            .len(),
        8 * 1024 * 1024
    );
    assert!(err_text(cmd(&mut con, &[b"BOGUS"])).contains("not supported"));
    // FLUSH empties the namespace.
    assert_eq!(cmd(&mut con, &[b"FLUSH"]).unwrap(), Value::Okay);
    assert_eq!(cmd(&mut con, &[b"DBSIZE"]).unwrap(), Value::Int(0));
    assert_eq!(bulk(cmd(&mut con, &[b"GET", b"max"]).unwrap()), None);
    zdb.stop();
}

#[test]
fn namespaces_passwords_and_reservations() {
    let dir = tempfile::tempdir().unwrap();
    let zdb = Zdb::start(dir.path(), &["--admin", "root-secret"]);
    let mut con = zdb.connection();
    // Admin commands need AUTH once an admin password is set.
    assert!(err_text(cmd(&mut con, &[b"NSNEW", b"ns1"])).contains("Permission denied"));
    assert!(err_text(cmd(&mut con, &[b"AUTH", b"wrong"])).contains("Access denied"));
    assert_eq!(
        cmd(&mut con, &[b"AUTH", b"root-secret"]).unwrap(),
        Value::Okay
    );
    assert_eq!(cmd(&mut con, &[b"NSNEW", b"ns1"]).unwrap(), Value::Okay);
    assert!(err_text(cmd(&mut con, &[b"NSNEW", b"ns1"])).contains("not available"));
    assert!(err_text(cmd(&mut con, &[b"NSNEW", b"../escape"])).contains("nvalid namespace name"));
    assert_eq!(
        cmd(&mut con, &[b"NSSET", b"ns1", b"password", b"pw"]).unwrap(),
        Value::Okay
    );
    assert_eq!(
        cmd(&mut con, &[b"NSSET", b"ns1", b"public", b"0"]).unwrap(),
        Value::Okay
    );
    assert_eq!(
        cmd(&mut con, &[b"NSSET", b"ns1", b"maxsize", b"100"]).unwrap(),
        Value::Okay
    );
    assert!(
        err_text(cmd(&mut con, &[b"NSSET", b"ns1", b"colour", b"blue"]))
            .contains("Invalid property")
    );
    let Value::Array(list) = cmd(&mut con, &[b"NSLIST"]).unwrap() else {
        panic!()
    };
    assert!(list.contains(&Value::BulkString(b"ns1".to_vec())));

    // A plain client: private namespace needs the password, a wrong one is refused.
    let mut user = zdb.connection();
    assert!(err_text(cmd(&mut user, &[b"SELECT", b"ns1"])).contains("protected"));
    assert!(err_text(cmd(&mut user, &[b"SELECT", b"ns1", b"bad"])).contains("Access denied"));
    assert_eq!(
        cmd(&mut user, &[b"SELECT", b"ns1", b"pw"]).unwrap(),
        Value::Okay
    );
    assert_eq!(
        bulk(cmd(&mut user, &[b"SET", b"a", &[1u8; 60]]).unwrap()),
        Some(b"a".to_vec())
    );
    // maxsize: 60 + 60 > 100 is refused, nothing written.
    assert!(err_text(cmd(&mut user, &[b"SET", b"b", &[2u8; 60]])).contains("No space left"));
    assert_eq!(cmd(&mut user, &[b"EXISTS", b"b"]).unwrap(), Value::Int(0));
    assert!(err_text(cmd(&mut user, &[b"NSDEL", b"ns1"])).contains("Permission denied"));

    // SECURE challenge for SELECT and AUTH.
    let mut secure = zdb.connection();
    let Value::SimpleString(challenge) =
        cmd(&mut secure, &[b"AUTH", b"SECURE", b"CHALLENGE"]).unwrap()
    else {
        panic!()
    };
    use sha1::Digest;
    let hash = hex::encode(sha1::Sha1::digest(format!("{challenge}:pw").as_bytes()));
    assert_eq!(
        cmd(
            &mut secure,
            &[b"SELECT", b"ns1", b"SECURE", hash.as_bytes()]
        )
        .unwrap(),
        Value::Okay
    );
    assert_eq!(
        bulk(cmd(&mut secure, &[b"GET", b"a"]).unwrap()),
        Some(vec![1u8; 60])
    );
    let Value::SimpleString(challenge) =
        cmd(&mut secure, &[b"AUTH", b"SECURE", b"CHALLENGE"]).unwrap()
    else {
        panic!()
    };
    let hash = hex::encode(sha1::Sha1::digest(
        format!("{challenge}:root-secret").as_bytes(),
    ));
    assert_eq!(
        cmd(&mut secure, &[b"AUTH", b"SECURE", hash.as_bytes()]).unwrap(),
        Value::Okay
    );
    assert_eq!(cmd(&mut secure, &[b"NSNEW", b"ns2"]).unwrap(), Value::Okay);

    // public + password: readable without the password, writable only with it.
    assert_eq!(
        cmd(&mut con, &[b"NSSET", b"ns2", b"password", b"pw2"]).unwrap(),
        Value::Okay
    );
    let mut reader = zdb.connection();
    assert_eq!(cmd(&mut reader, &[b"SELECT", b"ns2"]).unwrap(), Value::Okay);
    assert!(err_text(cmd(&mut reader, &[b"SET", b"x", b"y"])).contains("read-only"));
    assert_eq!(bulk(cmd(&mut reader, &[b"GET", b"x"]).unwrap()), None);

    // worm: no overwrite, no delete. lock: read-only. freeze: nothing.
    assert_eq!(
        cmd(&mut con, &[b"NSSET", b"ns2", b"worm", b"1"]).unwrap(),
        Value::Okay
    );
    assert_eq!(cmd(&mut con, &[b"SELECT", b"ns2"]).unwrap(), Value::Okay);
    assert_eq!(
        bulk(cmd(&mut con, &[b"SET", b"w", b"1"]).unwrap()),
        Some(b"w".to_vec())
    );
    assert!(err_text(cmd(&mut con, &[b"SET", b"w", b"2"])).contains("worm"));
    assert!(err_text(cmd(&mut con, &[b"DEL", b"w"])).contains("worm"));
    assert_eq!(
        cmd(&mut con, &[b"NSSET", b"ns2", b"worm", b"0"]).unwrap(),
        Value::Okay
    );
    assert_eq!(
        cmd(&mut con, &[b"NSSET", b"ns2", b"lock", b"1"]).unwrap(),
        Value::Okay
    );
    assert!(err_text(cmd(&mut con, &[b"SET", b"w", b"3"])).contains("locked"));
    assert_eq!(
        bulk(cmd(&mut con, &[b"GET", b"w"]).unwrap()),
        Some(b"1".to_vec())
    );
    assert_eq!(
        cmd(&mut con, &[b"NSSET", b"ns2", b"lock", b"0"]).unwrap(),
        Value::Okay
    );
    assert_eq!(
        cmd(&mut con, &[b"NSSET", b"ns2", b"freeze", b"1"]).unwrap(),
        Value::Okay
    );
    assert!(err_text(cmd(&mut con, &[b"GET", b"w"])).contains("frozen"));
    assert_eq!(
        cmd(&mut con, &[b"NSSET", b"ns2", b"freeze", b"0"]).unwrap(),
        Value::Okay
    );

    // NSINFO, NSDEL (not the one in use), and settings survive a restart.
    let info =
        String::from_utf8(bulk(cmd(&mut con, &[b"NSINFO", b"ns1"]).unwrap()).unwrap()).unwrap();
    assert!(
        info.contains("entries: 1")
            && info.contains("password: yes")
            && info.contains("data_limits_bytes: 100"),
        "{info}"
    );
    assert!(err_text(cmd(&mut con, &[b"NSDEL", b"ns2"])).contains("currently using"));
    assert_eq!(
        cmd(&mut con, &[b"SELECT", b"default"]).unwrap(),
        Value::Okay
    );
    assert_eq!(cmd(&mut con, &[b"NSDEL", b"ns2"]).unwrap(), Value::Okay);
    drop((con, user, secure, reader));
    let zdb = zdb.restart();
    let mut con = zdb.connection();
    assert_eq!(
        cmd(&mut con, &[b"SELECT", b"ns1", b"pw"]).unwrap(),
        Value::Okay
    );
    assert_eq!(
        bulk(cmd(&mut con, &[b"GET", b"a"]).unwrap()),
        Some(vec![1u8; 60])
    );
    assert!(err_text(cmd(&mut con, &[b"SELECT", b"ns2"])).contains("Namespace not found"));
    // Passwords never reach the log.
    let log = zdb.log();
    assert!(
        !log.contains("root-secret") && !log.contains("pw2"),
        "{log}"
    );
    zdb.stop();
}

#[test]
fn protect_mode_needs_admin_password_to_write_default() {
    let dir = tempfile::tempdir().unwrap();
    let zdb = Zdb::start(dir.path(), &["--admin", "adm", "--protect"]);
    let mut con = zdb.connection();
    assert!(err_text(cmd(&mut con, &[b"SET", b"a", b"b"])).contains("read-only"));
    assert_eq!(
        cmd(&mut con, &[b"SELECT", b"default", b"adm"]).unwrap(),
        Value::Okay
    );
    assert_eq!(
        bulk(cmd(&mut con, &[b"SET", b"a", b"b"]).unwrap()),
        Some(b"a".to_vec())
    );
    zdb.stop();
}

#[test]
fn seq_mode_scan_and_keycur() {
    let dir = tempfile::tempdir().unwrap();
    // Small segments so that SCAN crosses several of them.
    let zdb = Zdb::start(dir.path(), &["--datasize", "1048576"]);
    let mut con = zdb.connection();
    assert_eq!(cmd(&mut con, &[b"NSNEW", b"sq"]).unwrap(), Value::Okay);
    assert_eq!(
        cmd(&mut con, &[b"NSSET", b"sq", b"mode", b"seq"]).unwrap(),
        Value::Okay
    );
    assert_eq!(cmd(&mut con, &[b"SELECT", b"sq"]).unwrap(), Value::Okay);
    for id in 0u64..3 {
        assert_eq!(
            bulk(cmd(&mut con, &[b"SET", b"", b"value"]).unwrap()),
            Some(id.to_le_bytes().to_vec())
        );
    }
    // Updating an existing id works; an unknown id is refused.
    assert_eq!(
        bulk(cmd(&mut con, &[b"SET", &1u64.to_le_bytes(), b"new"]).unwrap()),
        Some(1u64.to_le_bytes().to_vec())
    );
    assert!(cmd(&mut con, &[b"SET", &99u64.to_le_bytes(), b"x"]).is_err());
    assert_eq!(
        bulk(cmd(&mut con, &[b"GET", &1u64.to_le_bytes()]).unwrap()),
        Some(b"new".to_vec())
    );
    // The mode cannot change once there are keys.
    assert!(cmd(&mut con, &[b"NSSET", b"sq", b"mode", b"user"]).is_err());

    // SCAN over more keys than one reply holds, over several segments, forward and back.
    assert_eq!(
        cmd(&mut con, &[b"SELECT", b"default"]).unwrap(),
        Value::Okay
    );
    let value = vec![b'v'; 3000];
    let mut pipe = redis::pipe();
    for i in 0..1000 {
        pipe.cmd("SET").arg(format!("key{i:04}")).arg(&value[..]);
    }
    pipe.query::<()>(&mut con).unwrap();
    assert_eq!(cmd(&mut con, &[b"NSJUMP"]).unwrap(), Value::Okay);
    assert_eq!(cmd(&mut con, &[b"DEL", b"key0500"]).unwrap(), Value::Okay);
    assert_eq!(
        bulk(cmd(&mut con, &[b"SET", b"key0007", b"changed"]).unwrap()),
        Some(b"key0007".to_vec())
    );
    let walk = |con: &mut redis::Connection, command: &[u8]| {
        let mut seen = Vec::new();
        let mut cursor: Option<Vec<u8>> = None;
        loop {
            let result = match &cursor {
                Some(c) => cmd(con, &[command, c]),
                None => cmd(con, &[command]),
            };
            let Ok(Value::Array(parts)) = result else {
                assert!(err_text(result).contains("No more data"));
                break;
            };
            let Value::BulkString(next) = &parts[0] else {
                panic!()
            };
            let Value::Array(items) = &parts[1] else {
                panic!()
            };
            for item in items {
                let Value::Array(fields) = item else { panic!() };
                let Value::BulkString(key) = &fields[0] else {
                    panic!()
                };
                seen.push(String::from_utf8(key.clone()).unwrap());
            }
            cursor = Some(next.clone());
        }
        seen
    };
    let forward = walk(&mut con, b"SCAN");
    assert_eq!(forward.len(), 999);
    assert!(!forward.contains(&"key0500".to_string()));
    assert_eq!(
        forward.last().unwrap(),
        "key0007",
        "an updated key moves to the end of the log"
    );
    let mut backward = walk(&mut con, b"RSCAN");
    backward.reverse();
    assert_eq!(forward, backward);
    // KEYCUR: scanning from a key's cursor continues after it.
    let Value::BulkString(cursor) = cmd(&mut con, &[b"KEYCUR", b"key0998"]).unwrap() else {
        panic!()
    };
    let Value::Array(parts) = cmd(&mut con, &[b"SCAN", &cursor]).unwrap() else {
        panic!()
    };
    let Value::Array(items) = &parts[1] else {
        panic!()
    };
    let Value::Array(first) = &items[0] else {
        panic!()
    };
    assert_eq!(first[0], Value::BulkString(b"key0999".to_vec()));
    assert!(err_text(cmd(&mut con, &[b"SCAN", b"bad"])).contains("Invalid key format"));

    // redis-cli against the same server: the stock client works unchanged.
    assert_eq!(redis_cli(zdb.port, &["GET", "key0007"], None), "changed");
    let out = redis_cli(
        zdb.port,
        &[],
        Some("SELECT sq\nGET \"\\x02\\x00\\x00\\x00\\x00\\x00\\x00\\x00\"\n"),
    );
    assert_eq!(out, "OK\nvalue");
    zdb.stop();
}

#[test]
fn bad_input_never_takes_the_server_down() {
    let dir = tempfile::tempdir().unwrap();
    let zdb = Zdb::start(dir.path(), &["--max-connections", "8"]);
    // Malformed frames get an error and the connection is closed.
    for garbage in [
        &b"*1\r\n$99999999999\r\n"[..],
        b"*-5\r\n*abc\r\n",
        b"*2\r\n$3\r\nGET\r\n:12\r\n",
        b"*1\r\n$4\r\nPINGxx\r\n",
        b"\x00\xff\xfe garbage \"unterminated\r\n",
    ] {
        let reply = raw(zdb.port, garbage);
        assert!(
            reply.starts_with(b"-") || reply.is_empty() || reply.starts_with(b"+"),
            "{reply:?}"
        );
    }
    // A client that vanishes mid-command.
    {
        use std::io::Write;
        let mut stream = std::net::TcpStream::connect(("127.0.0.1", zdb.port)).unwrap();
        stream
            .write_all(b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$1000\r\nonly part")
            .unwrap();
    }
    // Random bytes from a seeded generator.
    use rand::{Rng, SeedableRng};
    let seed = 0x5eed_u64;
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    for _ in 0..30 {
        let length = rng.gen_range(1..2000);
        let bytes: Vec<u8> = (0..length).map(|_| rng.gen()).collect();
        let _ = raw(zdb.port, &bytes);
    }
    // Connection limit: the ninth client is told and turned away, the others keep working.
    let mut held: Vec<redis::Connection> = (0..8).map(|_| zdb.connection()).collect();
    for con in held.iter_mut() {
        assert_eq!(
            cmd(con, &[b"PING"]).unwrap(),
            Value::SimpleString("PONG".into())
        );
    }
    let refused = raw(zdb.port, b"PING\r\n");
    assert!(
        String::from_utf8_lossy(&refused).contains("max number of clients"),
        "seed {seed}: {refused:?}"
    );
    drop(held);
    std::thread::sleep(std::time::Duration::from_millis(200));
    let mut con = zdb.connection();
    assert_eq!(
        cmd(&mut con, &[b"PING"]).unwrap(),
        Value::SimpleString("PONG".into())
    );
    zdb.stop();
}

#[test]
fn unix_socket_and_client_library() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("zdb.sock");
    let zdb = Zdb::start(dir.path(), &["--socket", socket.to_str().unwrap()]);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        use dataplane::client::{Address, Client, ClientConfig, Pool};
        let admin = Client::connect(ClientConfig::new(Address::Unix(socket.clone())))
            .await
            .unwrap();
        admin.ping().await.unwrap();
        admin.namespace_create("shards").await.unwrap();
        admin
            .namespace_set("shards", "password", "s3cret")
            .await
            .unwrap();
        let info = admin.namespace_info("shards").await.unwrap();
        assert!(info.contains(&("password".to_string(), "yes".to_string())));
        // SECURE select over TCP, pipelined writes and reads.
        let config = ClientConfig::new(Address::parse(&format!("127.0.0.1:{}", zdb.port)).unwrap())
            .namespace("shards", Some("s3cret".into()));
        let pool = Pool::connect(config.clone(), 3).await.unwrap();
        let client = pool.get();
        assert_eq!(client.set(b"a", b"1").await.unwrap(), Some(b"a".to_vec()));
        assert_eq!(client.set(b"a", b"1").await.unwrap(), None);
        let keys: Vec<Vec<u8>> = (0..300).map(|i| format!("k{i}").into_bytes()).collect();
        let commands: Vec<[&[u8]; 3]> = keys
            .iter()
            .map(|k| [b"SET".as_slice(), k.as_slice(), k.as_slice()])
            .collect();
        let refs: Vec<&[&[u8]]> = commands.iter().map(|c| c.as_slice()).collect();
        pool.get().pipeline(&refs).await.unwrap();
        let key_refs: Vec<&[u8]> = keys.iter().map(|k| k.as_slice()).collect();
        let values = pool.get().get_many(&key_refs).await.unwrap();
        for (key, value) in keys.iter().zip(values) {
            assert_eq!(value.unwrap().as_deref(), Some(key.as_slice()));
        }
        assert_eq!(pool.get().dbsize().await.unwrap(), 301);
        assert_eq!(pool.get().keys().await.unwrap().len(), 301);
        assert_eq!(client.check(b"k5").await.unwrap(), Some(true));
        assert!(client.del(b"k5").await.unwrap());
        assert!(!client.del(b"k5").await.unwrap());
        // A wrong password is a clear error.
        let wrong =
            ClientConfig::new(config.address.clone()).namespace("shards", Some("nope".into()));
        let error = Client::connect(wrong).await.unwrap_err().to_string();
        assert!(error.contains("Access denied"), "{error}");
        // Seq-mode appends return the ids in order.
        admin.namespace_create("log").await.unwrap();
        admin.namespace_set("log", "mode", "seq").await.unwrap();
        let log = Client::connect(ClientConfig::new(config.address.clone()).namespace("log", None))
            .await
            .unwrap();
        assert_eq!(log.append(b"first").await.unwrap(), 0);
        assert_eq!(log.append(b"second").await.unwrap(), 1);
        assert_eq!(
            log.get(&1u64.to_le_bytes()).await.unwrap(),
            Some(b"second".to_vec())
        );
    });
    // The same client survives a server restart (it reconnects and selects again).
    let zdb = zdb.restart();
    runtime.block_on(async {
        use dataplane::client::{Address, Client, ClientConfig};
        let client = Client::connect(
            ClientConfig::new(Address::Unix(socket.clone()))
                .namespace("shards", Some("s3cret".into())),
        )
        .await
        .unwrap();
        assert_eq!(client.get(b"k7").await.unwrap(), Some(b"k7".to_vec()));
    });
    zdb.stop();
}

#[test]
fn posix_fallback_serves_the_same() {
    let dir = tempfile::tempdir().unwrap();
    let zdb = Zdb::start(dir.path(), &["--io", "posix", "--sync"]);
    let mut con = zdb.connection();
    let info = bulk(cmd(&mut con, &[b"INFO"]).unwrap()).unwrap();
    assert!(String::from_utf8_lossy(&info).contains("io_backend: posix"));
    for i in 0..200 {
        assert_eq!(
            bulk(
                cmd(
                    &mut con,
                    &[b"SET", format!("k{i}").as_bytes(), &vec![i as u8; 5000]]
                )
                .unwrap()
            ),
            Some(format!("k{i}").into_bytes())
        );
    }
    drop(con);
    let zdb = zdb.restart();
    let mut con = zdb.connection();
    for i in 0..200 {
        assert_eq!(
            bulk(cmd(&mut con, &[b"GET", format!("k{i}").as_bytes()]).unwrap()),
            Some(vec![i as u8; 5000])
        );
    }
    assert_eq!(
        cmd(&mut con, &[b"VERIFY", b"default"]).unwrap(),
        Value::Okay
    );
    zdb.stop();
}

/// RESP encoding of one command.
fn encode(args: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::new();
    dataplane::client::encode_command(&mut out, args);
    out
}

/// Length of the first complete simple reply (status, error, integer, bulk) in `buf`.
fn reply_len(buf: &[u8]) -> Option<usize> {
    let line_end = buf.windows(2).position(|w| w == b"\r\n")? + 2;
    if buf[0] != b'$' {
        return Some(line_end);
    }
    let length: i64 = std::str::from_utf8(&buf[1..line_end - 2])
        .ok()?
        .parse()
        .ok()?;
    let total = if length < 0 {
        line_end
    } else {
        line_end + length as usize + 2
    };
    (buf.len() >= total).then_some(total)
}

/// Sends each command on its own, waiting for its reply before the next; returns the replies.
fn one_by_one(port: u16, commands: &[Vec<&[u8]>]) -> Vec<u8> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream
        .set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .unwrap();
    let mut replies = Vec::new();
    for command in commands {
        stream.write_all(&encode(command)).unwrap();
        let mut reply = Vec::new();
        let mut buf = [0u8; 1024];
        while reply.is_empty() || reply_len(&reply) != Some(reply.len()) {
            let n = stream.read(&mut buf).unwrap();
            assert!(n > 0, "server closed the connection");
            reply.extend_from_slice(&buf[..n]);
        }
        replies.extend_from_slice(&reply);
    }
    replies
}

#[test]
fn a_pipeline_of_sets_answers_as_the_same_commands_one_by_one() {
    // Plain SETs in a row run under one lock acquisition: errors, same-value SETs and other
    // commands in between must answer exactly as when each command is sent on its own.
    let long_key = vec![b'k'; 300];
    let commands: Vec<Vec<&[u8]>> = vec![
        vec![b"SET", b"a", b"v1"],
        vec![b"SET", b"b", b"v2"],
        vec![b"SET", b"a", b"v1"],
        vec![b"SET", &long_key, b"x"],
        vec![b"SET", b"c", b"v3"],
        vec![b"GET", b"a"],
        vec![b"SET", b"d", b"v4"],
        vec![b"SET", b"d", b"v4"],
        vec![b"SET", b"e"],
        vec![b"SET", b"e", b"v5"],
        vec![b"DEL", b"b"],
        vec![b"SET", b"b", b"v6"],
        vec![b"SET", b"c", b"v3-changed"],
        vec![b"GET", b"b"],
        vec![b"GET", b"c"],
    ];
    let pipelined_dir = tempfile::tempdir().unwrap();
    let pipelined = Zdb::start(pipelined_dir.path(), &[]);
    let all: Vec<u8> = commands.iter().flat_map(|c| encode(c)).collect();
    let replies = raw(pipelined.port, &all);

    let single_dir = tempfile::tempdir().unwrap();
    let single = Zdb::start(single_dir.path(), &[]);
    let expected = one_by_one(single.port, &commands);
    assert_eq!(
        String::from_utf8_lossy(&replies),
        String::from_utf8_lossy(&expected)
    );
    // 0-db's answers: the key when stored, nil when the value is the same, errors in place.
    assert_eq!(
        String::from_utf8_lossy(&expected),
        "$1\r\na\r\n$1\r\nb\r\n$-1\r\n-Key too large\r\n$1\r\nc\r\n$2\r\nv1\r\n\
         $1\r\nd\r\n$-1\r\n-ERR wrong number of arguments for 'set' command\r\n\
         $1\r\ne\r\n+OK\r\n$1\r\nb\r\n$1\r\nc\r\n$2\r\nv6\r\n$10\r\nv3-changed\r\n"
    );
    // And what was stored is the same.
    let mut con = pipelined.connection();
    for (key, value) in [
        (&b"a"[..], &b"v1"[..]),
        (b"b", b"v6"),
        (b"c", b"v3-changed"),
        (b"d", b"v4"),
        (b"e", b"v5"),
    ] {
        assert_eq!(
            bulk(cmd(&mut con, &[b"GET", key]).unwrap()),
            Some(value.to_vec())
        );
    }
}

#[test]
fn a_pipeline_of_gets_answers_as_the_same_commands_one_by_one() {
    // GETs in a row are served from memory under one lock acquisition, up to the first one
    // whose value is only on disk: that one and the rest must still answer in order, as
    // when each GET is sent on its own.
    let dir = tempfile::tempdir().unwrap();
    let zdb = Zdb::start(dir.path(), &[]);
    let mut con = zdb.connection();
    for (key, value) in [
        (&b"old1"[..], &b"o1"[..]),
        (b"old2", b"o2"),
        (b"gone", b"g"),
    ] {
        cmd(&mut con, &[b"SET", key, value]).unwrap();
    }
    drop(con);
    // After a restart the old records are on disk only: neither cached nor in a kept buffer.
    let zdb = zdb.restart();
    let mut con = zdb.connection();
    cmd(&mut con, &[b"SET", b"new1", b"n1"]).unwrap();
    cmd(&mut con, &[b"SET", b"new2", b"n2"]).unwrap();
    cmd(&mut con, &[b"DEL", b"gone"]).unwrap();
    let commands: Vec<Vec<&[u8]>> = vec![
        vec![b"GET", b"new1"],
        vec![b"GET", b"missing"],
        vec![b"GET", b"old1"],
        vec![b"GET", b"new2"],
        vec![b"GET", b"gone"],
        vec![b"GET"],
        vec![b"GET", b"old2"],
        vec![b"GET", b"old1"],
        vec![b"get", b"new2"],
        vec![b"GET", b"new1", b"extra"],
        vec![b"GET", b"new1"],
    ];
    let want = "$2\r\nn1\r\n$-1\r\n$2\r\no1\r\n$2\r\nn2\r\n$-1\r\n\
                -ERR wrong number of arguments for 'get' command\r\n$2\r\no2\r\n$2\r\no1\r\n\
                $2\r\nn2\r\n-ERR wrong number of arguments for 'get' command\r\n$2\r\nn1\r\n";
    let all: Vec<u8> = commands.iter().flat_map(|c| encode(c)).collect();
    assert_eq!(String::from_utf8_lossy(&raw(zdb.port, &all)), want);
    // Once more now that the old values are cached, and one by one.
    assert_eq!(String::from_utf8_lossy(&raw(zdb.port, &all)), want);
    assert_eq!(
        String::from_utf8_lossy(&one_by_one(zdb.port, &commands)),
        want
    );
    // Large values: a batch stops once its replies reach the point where they are written
    // out, and the GETs after that point still answer in order.
    let mut con = zdb.connection();
    let values: Vec<Vec<u8>> = (0..5u8).map(|i| vec![b'a' + i; 700_000]).collect();
    for (i, value) in values.iter().enumerate() {
        cmd(&mut con, &[b"SET", format!("big{i}").as_bytes(), value]).unwrap();
    }
    let mut pipe = redis::pipe();
    for i in [0, 1, 4, 2, 3, 0] {
        pipe.cmd("GET").arg(format!("big{i}"));
    }
    pipe.cmd("GET").arg("new1");
    let got: Vec<Vec<u8>> = pipe.query(&mut con).unwrap();
    let mut expected: Vec<Vec<u8>> = [0, 1, 4, 2, 3, 0]
        .iter()
        .map(|&i| values[i].clone())
        .collect();
    expected.push(b"n1".to_vec());
    assert!(
        got == expected,
        "large values came back wrong or out of order"
    );
    zdb.stop();
}
