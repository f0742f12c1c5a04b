//! The 0-db dialect: each command checks its arguments and the session's rights, calls the
//! engine, and encodes the reply as 0-db gives it. Every command is listed, with its replies,
//! in `dataplane/docs/commands.md`.

use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use sha1::{Digest, Sha1};

use super::frame::reply;
use crate::engine::{Engine, EngineError, Mode, Namespace, SetOutcome, DEFAULT_NAMESPACE};

/// A change NSSET makes to a namespace's settings.
type SettingsChange = Box<dyn FnOnce(&mut crate::engine::Settings)>;

/// Bytes of values one MGET reply carries at most (memory stays bounded).
pub const MGET_REPLY_BYTES_MAX: usize = 64 * 1024 * 1024;

/// Digests one CHAIN PROOF reply carries at most.
pub const CHAIN_PROOF_DIGESTS_MAX: u64 = 100_000;

/// Keys a SCAN or RSCAN reply carries at most.
pub const SCAN_ITEMS_MAX: usize = 128;

/// What the server knows that every session shares.
#[derive(Debug)]
pub struct ServerState {
    pub engine: Arc<Engine>,
    pub admin_password: Option<String>,
    pub protect: bool,
    pub started: Instant,
    pub connections_max: usize,
    pub connections: std::sync::atomic::AtomicUsize,
    pub commands: std::sync::atomic::AtomicU64,
    pub listen_description: String,
}

/// One client's state.
pub struct Session {
    pub namespace: Arc<Namespace>,
    pub admin: bool,
    pub can_write: bool,
    challenge: Option<String>,
    /// Highest write ticket of this session not yet known to be durable.
    pub pending_ticket: u64,
    /// Set by QUIT (or a fatal condition): close after replying.
    pub closing: bool,
    /// A command that takes long (VERIFY, COMPACT, CHAIN PROOF): the connection runs it on a
    /// blocking thread, so no client waits behind it, and appends its reply in order.
    pub slow: Option<SlowJob>,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("namespace", &self.namespace.name())
            .field("admin", &self.admin)
            .field("can_write", &self.can_write)
            .field("pending_ticket", &self.pending_ticket)
            .field("slow", &self.slow.is_some())
            .finish_non_exhaustive()
    }
}

/// Work of a slow command, returning its encoded reply.
pub type SlowJob = Box<dyn FnOnce() -> Vec<u8> + Send>;

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn secure_hash(challenge: &str, password: &str) -> String {
    let mut hasher = Sha1::new();
    hasher.update(challenge.as_bytes());
    hasher.update(b":");
    hasher.update(password.as_bytes());
    hex::encode(hasher.finalize())
}

impl Session {
    pub fn new(server: &ServerState) -> Result<Self, EngineError> {
        let namespace = server.engine.namespace(DEFAULT_NAMESPACE)?;
        let admin = server.admin_password.is_none();
        let mut session = Session {
            namespace,
            admin,
            can_write: false,
            challenge: None,
            pending_ticket: 0,
            closing: false,
            slow: None,
        };
        session.can_write = session.default_write(server);
        Ok(session)
    }

    /// Write rights on the default namespace without SELECT: everyone, except under
    /// `--protect`, where only the admin may write.
    fn default_write(&self, server: &ServerState) -> bool {
        self.admin || !server.protect
    }
}

/// An error reply.
fn fail(out: &mut Vec<u8>, text: &str) {
    reply::error(out, text);
}

fn engine_error(out: &mut Vec<u8>, error: &EngineError) {
    let text = match error {
        EngineError::KeyTooLong(_) => "Key too large".to_string(),
        EngineError::NotFound => "Key not found".to_string(),
        EngineError::InvalidCursor => "Invalid key format".to_string(),
        EngineError::NamespaceNotFound => "Namespace not found".to_string(),
        EngineError::NamespaceExists => "This namespace is not available".to_string(),
        other => {
            let text = other.to_string();
            let mut chars = text.chars();
            match chars.next() {
                Some(first) => first.to_uppercase().collect::<String>() + chars.as_str(),
                None => text,
            }
        }
    };
    fail(out, &text);
}

fn wrong_arity(out: &mut Vec<u8>, name: &str) {
    fail(
        out,
        &format!(
            "ERR wrong number of arguments for '{}' command",
            name.to_ascii_lowercase()
        ),
    );
}

fn now() -> (u64, u32) {
    let since = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    (since.as_secs(), since.subsec_micros())
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Hands a slow command's work to the connection, which runs it on a blocking thread.
fn defer(
    session: &mut Session,
    server: &ServerState,
    job: impl FnOnce(&Engine, &mut Vec<u8>) + Send + 'static,
) {
    let engine = Arc::clone(&server.engine);
    session.slow = Some(Box::new(move || {
        let mut out = Vec::new();
        job(&engine, &mut out);
        out
    }));
}

/// Replies to a SET: the key (or the new id in seq mode), nil when nothing changed.
fn reply_set(
    session: &mut Session,
    out: &mut Vec<u8>,
    key: &[u8],
    result: Result<SetOutcome, EngineError>,
) {
    match result {
        Ok(SetOutcome::Stored {
            assigned_id,
            ticket,
        }) => {
            session.pending_ticket = session.pending_ticket.max(ticket);
            match assigned_id {
                Some(id) => reply::bulk(out, &id.to_le_bytes()),
                None => reply::bulk(out, key),
            }
        }
        Ok(SetOutcome::Unchanged) => reply::nil(out),
        Err(error) => engine_error(out, &error),
    }
}

/// Whether `args` is a SET that [`execute_sets`] may run with its neighbours: the common
/// `SET key value` of a session that may write.
pub fn is_plain_set(session: &Session, args: &[&[u8]]) -> bool {
    args.len() == 3 && args[0].eq_ignore_ascii_case(b"SET") && session.can_write
}

/// Runs consecutive plain SETs (see [`is_plain_set`]) as [`execute`] would run them one by
/// one, replies included, under one acquisition of the namespace lock
/// (`Engine::set_many`).
pub fn execute_sets<'k>(
    server: &ServerState,
    session: &mut Session,
    sets: &[(&'k [u8], &'k [u8])],
    out: &mut Vec<u8>,
) {
    let namespace = Arc::clone(&session.namespace);
    server.engine.set_many(&namespace, sets, |key, result| {
        reply_set(session, out, key, result)
    });
}

/// Whether `args` is a GET that [`execute_gets`] may run with its neighbours (any session
/// may read).
pub fn is_get(args: &[&[u8]]) -> bool {
    args.len() == 2 && args[0].eq_ignore_ascii_case(b"GET")
}

/// Runs consecutive GETs of `keys` (see [`is_get`]) as [`execute`] would run them one by
/// one, replies included, for as long as their values are in memory
/// (`Engine::get_many_in_memory`) and their values add up to less than `value_bytes_max`;
/// returns how many it ran. The caller runs the next one with [`execute`].
pub fn execute_gets(
    server: &ServerState,
    session: &Session,
    keys: &[&[u8]],
    value_bytes_max: usize,
    out: &mut Vec<u8>,
) -> usize {
    server.engine.get_many_in_memory(
        &session.namespace,
        keys,
        value_bytes_max,
        |value| match value {
            Some(value) => reply::bulk(out, value),
            None => reply::nil(out),
        },
    )
}

/// Runs one command. `args[0]` is the command name.
pub fn execute(server: &ServerState, session: &mut Session, args: &[&[u8]], out: &mut Vec<u8>) {
    let Some(name) = args.first() else {
        return;
    };
    // The two commands that carry nearly all traffic skip the general dispatch.
    if is_get(args) {
        return match server
            .engine
            .get_with(&session.namespace, args[1], |value| reply::bulk(out, value))
        {
            Ok(Some(())) => {}
            Ok(None) => reply::nil(out),
            Err(error) => engine_error(out, &error),
        };
    }
    if is_plain_set(session, args) {
        let result = server
            .engine
            .set(&session.namespace, args[1], args[2], None);
        return reply_set(session, out, args[1], result);
    }
    // Upper-cased on the stack: no allocation per command on the hot path.
    let mut name_buffer = [0u8; 16];
    let name_bytes = &name[..name.len().min(16)];
    name_buffer[..name_bytes.len()].copy_from_slice(name_bytes);
    name_buffer.make_ascii_uppercase();
    let name = if name.len() <= 16 {
        std::str::from_utf8(&name_buffer[..name_bytes.len()]).unwrap_or("?")
    } else {
        "?"
    };
    let engine = &*server.engine;
    let argc = args.len();
    let ns = Arc::clone(&session.namespace);
    macro_rules! arity {
        ($ok:expr) => {
            if !($ok) {
                return wrong_arity(out, name);
            }
        };
    }
    macro_rules! need_admin {
        () => {
            if !session.admin {
                return fail(out, "Permission denied");
            }
        };
    }
    macro_rules! need_write {
        () => {
            if !session.can_write {
                return fail(out, "Namespace is in read-only mode");
            }
        };
    }
    macro_rules! try_engine {
        ($e:expr) => {
            match $e {
                Ok(value) => value,
                Err(error) => return engine_error(out, &error),
            }
        };
    }
    match name {
        "PING" => match argc {
            1 => reply::simple(out, "PONG"),
            2 => reply::bulk(out, args[1]),
            _ => wrong_arity(out, name),
        },
        "ECHO" => {
            arity!(argc == 2);
            reply::bulk(out, args[1]);
        }
        "QUIT" => {
            reply::ok(out);
            session.closing = true;
        }
        "COMMAND" => reply::array(out, 0),
        "TIME" => {
            let (seconds, micros) = now();
            reply::array(out, 2);
            reply::bulk(out, seconds.to_string().as_bytes());
            reply::bulk(out, micros.to_string().as_bytes());
        }
        "SET" => {
            arity!(argc == 3 || argc == 4);
            need_write!();
            let timestamp = if argc == 4 {
                need_admin!();
                match text(args[3]).parse::<u32>() {
                    Ok(value) => Some(value),
                    Err(_) => return fail(out, "Invalid timestamp"),
                }
            } else {
                None
            };
            let result = engine.set(&ns, args[1], args[2], timestamp);
            reply_set(session, out, args[1], result);
        }
        "GET" => {
            arity!(argc == 2);
            let found = try_engine!(engine.get_with(&ns, args[1], |value| reply::bulk(out, value)));
            if found.is_none() {
                reply::nil(out);
            }
        }
        "MGET" => {
            arity!(argc >= 2);
            let mut values = Vec::with_capacity(argc - 1);
            let mut reply_bytes = 0usize;
            for key in &args[1..] {
                let value = try_engine!(engine.get(&ns, key));
                reply_bytes += value.as_ref().map_or(0, |v| v.len());
                if reply_bytes > MGET_REPLY_BYTES_MAX {
                    return fail(
                        out,
                        "ERR MGET reply would exceed 64 MiB: ask for fewer keys",
                    );
                }
                values.push(value);
            }
            reply::array(out, values.len());
            for value in values {
                match value {
                    Some(value) => reply::bulk(out, &value),
                    None => reply::nil(out),
                }
            }
        }
        "DEL" => {
            arity!(argc == 2);
            need_write!();
            let ticket = try_engine!(engine.delete(&ns, args[1]));
            session.pending_ticket = session.pending_ticket.max(ticket);
            reply::ok(out);
        }
        "EXISTS" => {
            arity!(argc == 2);
            reply::integer(out, try_engine!(engine.exists(&ns, args[1])) as i64);
        }
        "CHECK" => {
            arity!(argc == 2);
            match try_engine!(engine.check(&ns, args[1])) {
                Some(intact) => reply::integer(out, intact as i64),
                None => reply::nil(out),
            }
        }
        "LENGTH" => {
            arity!(argc == 2);
            match try_engine!(engine.entry(&ns, args[1])) {
                Some(entry) => reply::integer(out, entry.value_len() as i64),
                None => reply::nil(out),
            }
        }
        "KEYTIME" => {
            arity!(argc == 2);
            match try_engine!(engine.key_time(&ns, args[1])) {
                Some(seconds) => reply::integer(out, seconds as i64),
                None => reply::nil(out),
            }
        }
        "KEYCUR" => {
            arity!(argc == 2);
            let cursor = try_engine!(engine.key_cursor(&ns, args[1]));
            reply::bulk(out, &cursor);
        }
        "SCAN" | "SCANX" | "RSCAN" => {
            arity!(argc <= 2);
            let cursor = args.get(1).copied();
            let (items, last) =
                try_engine!(engine.scan(&ns, cursor, name == "RSCAN", SCAN_ITEMS_MAX));
            let Some(last) = last.filter(|_| !items.is_empty()) else {
                return fail(out, "No more data");
            };
            reply::array(out, 2);
            reply::bulk(out, &last);
            reply::array(out, items.len());
            for item in items {
                reply::array(out, 3);
                reply::bulk(out, &item.key);
                reply::integer(out, item.value_len as i64);
                reply::integer(out, item.timestamp_s as i64);
            }
        }
        "HISTORY" => {
            arity!(argc == 2 || argc == 3);
            let item = try_engine!(engine.history(&ns, args[1], args.get(2).copied()));
            reply::array(out, 3);
            reply::bulk(out, item.previous.as_deref().unwrap_or(b""));
            reply::integer(out, item.timestamp_s as i64);
            match item.value {
                Some(value) => reply::bulk(out, &value),
                None => reply::nil(out),
            }
        }
        "DBSIZE" => {
            arity!(argc == 1);
            reply::integer(out, engine.info(&ns).entries as i64);
        }
        "FLUSH" => {
            arity!(argc == 1);
            need_write!();
            try_engine!(engine.flush_namespace(&ns));
            reply::ok(out);
        }
        "INFO" => {
            let mut text = String::new();
            let uptime = server.started.elapsed().as_secs();
            text.push_str("# server\n");
            text.push_str(&format!(
                "server_name: zdb (zero-os data plane)\nserver_version: {}\n",
                env!("CARGO_PKG_VERSION")
            ));
            text.push_str(&format!(
                "uptime_seconds: {uptime}\nlisten: {}\n",
                server.listen_description
            ));
            text.push_str(&format!("io_backend: {}\n", engine.io_name()));
            let durability = match engine.config().durability {
                crate::engine::Durability::Sync => "sync (every reply after fdatasync)".to_string(),
                crate::engine::Durability::Periodic(d) => {
                    format!("periodic (fdatasync every {} ms)", d.as_millis())
                }
            };
            text.push_str(&format!("durability: {durability}\n"));
            text.push_str(&format!(
                "datafile_bytes_max: {}\n",
                engine.config().segment_bytes_max
            ));
            text.push_str(&format!(
                "storage_failed: {}\n",
                engine.failure().unwrap_or_else(|| "no".into())
            ));
            text.push_str("\n# clients\n");
            text.push_str(&format!(
                "clients_connected: {}\nclients_max: {}\ncommands_executed: {}\n",
                server
                    .connections
                    .load(std::sync::atomic::Ordering::Relaxed),
                server.connections_max,
                server.commands.load(std::sync::atomic::Ordering::Relaxed)
            ));
            text.push_str("\n# namespaces\n");
            let names = engine.namespace_names();
            text.push_str(&format!("namespaces: {}\n", names.len()));
            let mut damaged_total = 0;
            for name in &names {
                if let Ok(namespace) = engine.namespace(name) {
                    let info = engine.info(&namespace);
                    damaged_total += info.damaged;
                    text.push_str(&format!(
                        "namespace_{name}: entries={} data_bytes={} log_bytes={} segments={} damaged={}\n",
                        info.entries, info.data_bytes, info.log_bytes, info.segments, info.damaged
                    ));
                    for damage in engine.damage(&namespace).iter().take(20) {
                        text.push_str(&format!(
                            "damaged_{name}: segment={} offset={} length={} key={} reason={}\n",
                            damage.segment,
                            damage.offset,
                            damage.length,
                            damage
                                .key
                                .as_deref()
                                .map(hex::encode)
                                .unwrap_or_else(|| "?".into()),
                            damage.detail
                        ));
                    }
                }
            }
            text.push_str(&format!("damaged_records: {damaged_total}\n"));
            reply::bulk(out, text.as_bytes());
        }
        "NSNEW" => {
            arity!(argc == 2);
            need_admin!();
            try_engine!(engine.create_namespace(&text(args[1])));
            reply::ok(out);
        }
        "NSDEL" => {
            arity!(argc == 2);
            need_admin!();
            let name_arg = text(args[1]);
            if name_arg == DEFAULT_NAMESPACE {
                return fail(out, "Cannot remove the default namespace");
            }
            if name_arg == ns.name() {
                return fail(out, "Cannot remove namespace you're currently using");
            }
            try_engine!(engine.delete_namespace(&name_arg));
            reply::ok(out);
        }
        "NSLIST" => {
            let names = engine.namespace_names();
            reply::array(out, names.len());
            for name in names {
                reply::bulk(out, name.as_bytes());
            }
        }
        "NSINFO" => {
            arity!(argc == 2);
            let target = try_engine!(engine.namespace(&text(args[1])));
            let info = engine.info(&target);
            let yes = |b: bool| if b { "yes" } else { "no" };
            let mut body = String::new();
            body.push_str("# namespace\n");
            body.push_str(&format!("name: {}\n", info.name));
            body.push_str(&format!("entries: {}\n", info.entries));
            body.push_str(&format!("public: {}\n", yes(info.settings.public)));
            body.push_str(&format!(
                "password: {}\n",
                yes(info.settings.password.is_some())
            ));
            body.push_str(&format!("data_size_bytes: {}\n", info.data_bytes));
            body.push_str(&format!(
                "data_size_mb: {:.2}\n",
                info.data_bytes as f64 / 1_048_576.0
            ));
            body.push_str(&format!("data_limits_bytes: {}\n", info.settings.maxsize));
            body.push_str(&format!(
                "index_size_bytes: {}\n",
                info.index_bytes_estimate
            ));
            body.push_str(&format!(
                "index_size_kb: {:.2}\n",
                info.index_bytes_estimate as f64 / 1024.0
            ));
            body.push_str(&format!("mode: {}\n", info.settings.mode.name()));
            body.push_str(&format!("worm: {}\n", yes(info.settings.worm)));
            body.push_str(&format!("locked: {}\n", yes(info.settings.lock)));
            body.push_str(&format!("frozen: {}\n", yes(info.settings.freeze)));
            body.push_str(&format!("log_size_bytes: {}\n", info.log_bytes));
            body.push_str(&format!("data_files: {}\n", info.segments));
            body.push_str(&format!("records: {}\n", info.record_count));
            body.push_str(&format!("damaged_records: {}\n", info.damaged));
            body.push_str(&format!("chain_head: {}\n", hex::encode(info.chain_head)));
            if let Some(last) = &info.last_compaction {
                body.push_str(&format!(
                    "last_compaction: bytes {} -> {}, kept {}, dropped {}, longest pause {} us, took {} ms\n",
                    last.log_bytes_before,
                    last.log_bytes_after,
                    last.records_carried,
                    last.records_dropped,
                    last.pause_max_us,
                    last.elapsed_ms
                ));
            }
            reply::bulk(out, body.as_bytes());
        }
        "NSSET" => {
            arity!(argc == 4);
            need_admin!();
            let target = try_engine!(engine.namespace(&text(args[1])));
            let property = text(args[2]).to_ascii_lowercase();
            let value = text(args[3]);
            let flag = match value.as_str() {
                "1" | "yes" | "true" | "on" => Ok(true),
                "0" | "no" | "false" | "off" => Ok(false),
                _ => Err("Invalid value: expected 1 or 0"),
            };
            let change: Result<SettingsChange, &str> = match property.as_str() {
                "maxsize" => match value.parse::<u64>() {
                    Ok(bytes) => Ok(Box::new(move |s| s.maxsize = bytes)),
                    Err(_) => Err("Invalid value: maxsize is a number of bytes"),
                },
                "password" if value == "*" => Ok(Box::new(|s| s.password = None)),
                "password" => {
                    let password = value.clone();
                    Ok(Box::new(move |s| s.password = Some(password)))
                }
                "public" => flag.map(|f| {
                    Box::new(move |s: &mut crate::engine::Settings| s.public = f) as Box<_>
                }),
                "worm" => flag
                    .map(|f| Box::new(move |s: &mut crate::engine::Settings| s.worm = f) as Box<_>),
                "lock" => flag
                    .map(|f| Box::new(move |s: &mut crate::engine::Settings| s.lock = f) as Box<_>),
                "freeze" => flag.map(|f| {
                    Box::new(move |s: &mut crate::engine::Settings| s.freeze = f) as Box<_>
                }),
                "mode" => match value.to_ascii_lowercase().as_str() {
                    "user" | "userkey" => Ok(Box::new(|s| s.mode = Mode::User)),
                    "seq" | "sequential" => Ok(Box::new(|s| s.mode = Mode::Seq)),
                    _ => Err("Invalid value: mode is user or seq"),
                },
                _ => Err("Invalid property"),
            };
            match change {
                Ok(change) => {
                    try_engine!(engine.update_settings(&target, |settings| {
                        change(settings);
                        Ok(())
                    }));
                    reply::ok(out);
                }
                Err(message) => fail(out, message),
            }
        }
        "NSJUMP" => {
            arity!(argc == 1);
            need_admin!();
            try_engine!(engine.jump(&ns));
            reply::ok(out);
        }
        "SELECT" => {
            arity!((2..=4).contains(&argc));
            let target = try_engine!(engine.namespace(&text(args[1])));
            let settings = target.settings();
            let given: Option<Result<bool, &str>> = match argc {
                2 => None,
                3 => Some(Ok(settings
                    .password
                    .as_deref()
                    .is_some_and(|p| constant_time_eq(p.as_bytes(), args[2])))),
                _ => {
                    if !text(args[2]).eq_ignore_ascii_case("SECURE") {
                        return wrong_arity(out, name);
                    }
                    match (&session.challenge, settings.password.as_deref()) {
                        (None, _) => {
                            Some(Err("No challenge requested (AUTH SECURE CHALLENGE first)"))
                        }
                        (Some(challenge), Some(password)) => {
                            let expected = secure_hash(challenge, password);
                            Some(Ok(constant_time_eq(
                                expected.as_bytes(),
                                &args[3].to_ascii_lowercase(),
                            )))
                        }
                        (Some(_), None) => Some(Ok(false)),
                    }
                }
            };
            let is_default = target.name() == DEFAULT_NAMESPACE;
            let (allowed, writable) = if session.admin && given.is_none() {
                // An admin may enter any namespace; a password it gives is still checked.
                (true, true)
            } else if session.admin && matches!(given, Some(Ok(true))) {
                (true, true)
            } else if is_default && server.protect {
                // Under --protect the default namespace takes the admin password to write.
                let admin_ok = match argc {
                    3 => server
                        .admin_password
                        .as_deref()
                        .is_some_and(|p| constant_time_eq(p.as_bytes(), args[2])),
                    _ => false,
                };
                (true, admin_ok)
            } else {
                match (settings.password.is_some(), given) {
                    (_, Some(Err(message))) => return fail(out, message),
                    (false, _) => (true, true),
                    (true, Some(Ok(true))) => (true, true),
                    (true, Some(Ok(false))) => return fail(out, "Access denied"),
                    (true, None) if settings.public => (true, false),
                    (true, None) => return fail(out, "Namespace protected and private"),
                }
            };
            if allowed {
                session.namespace = target;
                session.can_write = writable;
                reply::ok(out);
            }
        }
        "AUTH" => {
            arity!(argc == 2 || argc == 3);
            if argc == 3 && !text(args[1]).eq_ignore_ascii_case("SECURE") {
                return wrong_arity(out, name);
            }
            // The challenge also serves SELECT ... SECURE, with or without an admin password.
            if argc == 3 && text(args[2]).eq_ignore_ascii_case("CHALLENGE") {
                let nonce: [u8; 16] = rand::random();
                let challenge = hex::encode(nonce);
                reply::simple(out, &challenge);
                session.challenge = Some(challenge);
                return;
            }
            let Some(admin_password) = server.admin_password.as_deref() else {
                return fail(out, "Authentication disabled (no admin password set)");
            };
            if argc == 3 {
                let Some(challenge) = session.challenge.take() else {
                    return fail(out, "No challenge requested (AUTH SECURE CHALLENGE first)");
                };
                let expected = secure_hash(&challenge, admin_password);
                if constant_time_eq(expected.as_bytes(), &args[2].to_ascii_lowercase()) {
                    session.admin = true;
                    session.can_write = true;
                    return reply::ok(out);
                }
                return fail(out, "Access denied");
            }
            if constant_time_eq(admin_password.as_bytes(), args[1]) {
                session.admin = true;
                session.can_write = true;
                reply::ok(out);
            } else {
                fail(out, "Access denied");
            }
        }
        "CHAIN" => {
            arity!(argc == 2 || argc == 4 || argc == 5);
            need_admin!();
            let target = try_engine!(engine.namespace(&text(args[1])));
            if argc == 2 {
                let (head, count) = try_engine!(engine.chain(&target));
                reply::array(out, 2);
                reply::bulk(out, hex::encode(head).as_bytes());
                reply::integer(out, count as i64);
                return;
            }
            if !text(args[2]).eq_ignore_ascii_case("PROOF") {
                return fail(out, "ERR usage: CHAIN namespace [PROOF from [count]]");
            }
            let from = text(args[3]).parse::<u64>();
            let count = args
                .get(4)
                .map_or(Ok(CHAIN_PROOF_DIGESTS_MAX), |c| text(c).parse::<u64>());
            let (Ok(from), Ok(count)) = (from, count) else {
                return fail(out, "ERR CHAIN PROOF takes record numbers");
            };
            let count = count.min(CHAIN_PROOF_DIGESTS_MAX);
            defer(session, server, move |engine, out| {
                match engine.chain_digests(&target, from, count) {
                    Ok(digests) => {
                        reply::array(out, digests.len());
                        for digest in digests {
                            reply::bulk(out, &digest);
                        }
                    }
                    Err(failure) => fail(out, &format!("ERR {failure}")),
                }
            });
        }
        "VERIFY" => {
            arity!(argc == 2);
            need_admin!();
            let target = try_engine!(engine.namespace(&text(args[1])));
            defer(session, server, move |engine, out| {
                match engine.verify(&target) {
                    Ok(_) => reply::ok(out),
                    Err(failure) => fail(out, &format!("ERR VERIFY failed: {failure}")),
                }
            });
        }
        "COMPACT" => {
            arity!(argc == 2);
            need_admin!();
            let target = try_engine!(engine.namespace(&text(args[1])));
            defer(session, server, move |engine, out| {
                match engine.compact(&target) {
                    Ok(report) => reply::simple(
                        out,
                        &format!(
                            "OK segments {} -> {}, bytes {} -> {}, records kept {}, dropped {}, longest pause {} us",
                            report.segments_before,
                            report.segments_after,
                            report.log_bytes_before,
                            report.log_bytes_after,
                            report.records_carried,
                            report.records_dropped,
                            report.pause_max_us
                        ),
                    ),
                    Err(error) => engine_error(out, &error),
                }
            });
        }
        "STOP" => {
            need_admin!();
            reply::ok(out);
            session.closing = true;
        }
        _ => fail(
            out,
            &format!("Command not supported: {}", name.to_ascii_lowercase()),
        ),
    }
}
