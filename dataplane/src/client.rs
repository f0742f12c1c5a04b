//! `client`: an async (tokio) client for zdb's dialect of RESP.
//!
//! A [`Client`] owns one connection (TCP or unix socket), selects its namespace with the
//! password (plain or with the SECURE challenge), and reconnects once, transparently, when the
//! connection breaks between requests. [`Client::pipeline`] sends many commands in one write
//! and reads their replies in order. [`Pool`] spreads requests over several connections.
//! Every read is bounded in size and every request in time.

use std::io::IoSlice;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use sha1::{Digest, Sha1};
use thiserror::Error;
use tokio::io::{
    AsyncBufRead, AsyncBufReadExt, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader,
};
use tokio::net::{TcpStream, UnixStream};
use tokio::sync::Mutex;

use crate::resp::frame::BULK_BYTES_MAX;

/// Elements of a reply array, at most.
pub const REPLY_ARRAY_MAX: usize = 1 << 20;
/// Default time to connect.
pub const CONNECT_TIMEOUT_DEFAULT: Duration = Duration::from_secs(5);
/// Default time for one request (or one pipeline) to be answered.
pub const REQUEST_TIMEOUT_DEFAULT: Duration = Duration::from_secs(30);

/// A reply from the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    Status(String),
    Error(String),
    Integer(i64),
    Bulk(Option<Vec<u8>>),
    Array(Option<Vec<Reply>>),
}

#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ClientError {
    #[error("cannot connect to {address}: {source}")]
    Connect {
        address: String,
        source: std::io::Error,
    },
    #[error("timed out after {0:?} talking to {1}")]
    Timeout(Duration, String),
    #[error("I/O error talking to {address}: {source}")]
    Io {
        address: String,
        source: std::io::Error,
    },
    #[error("protocol error from {address}: {detail}")]
    Protocol { address: String, detail: String },
    #[error("server {address} replied: {message}")]
    Server { address: String, message: String },
    #[error("unexpected reply from {address}: {reply:?}")]
    Unexpected { address: String, reply: Reply },
    #[error("invalid address '{0}' (expected host:port or unix:/path)")]
    Address(String),
}

pub type Result<T> = std::result::Result<T, ClientError>;

/// Where a zdb listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Address {
    Tcp(String),
    Unix(PathBuf),
}

impl Address {
    /// `host:port`, `[v6]:port` or `unix:/path/to/socket`.
    pub fn parse(text: &str) -> Result<Self> {
        if let Some(path) = text.strip_prefix("unix:") {
            if path.is_empty() {
                return Err(ClientError::Address(text.into()));
            }
            return Ok(Address::Unix(path.into()));
        }
        match text.rsplit_once(':') {
            Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => {
                Ok(Address::Tcp(text.into()))
            }
            _ => Err(ClientError::Address(text.into())),
        }
    }
}

impl std::fmt::Display for Address {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Address::Tcp(address) => f.write_str(address),
            Address::Unix(path) => write!(f, "unix:{}", path.display()),
        }
    }
}

/// How to reach a namespace.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    pub address: Address,
    /// Namespace to SELECT after connecting (`None`: stay in `default`).
    pub namespace: Option<String>,
    /// The namespace's password.
    pub password: Option<String>,
    /// Send the password with the SECURE challenge (never in clear) instead of as is.
    pub secure: bool,
    /// Admin password to AUTH with after connecting.
    pub admin_password: Option<String>,
    pub connect_timeout: Duration,
    pub request_timeout: Duration,
}

impl ClientConfig {
    pub fn new(address: Address) -> Self {
        Self {
            address,
            namespace: None,
            password: None,
            secure: true,
            admin_password: None,
            connect_timeout: CONNECT_TIMEOUT_DEFAULT,
            request_timeout: REQUEST_TIMEOUT_DEFAULT,
        }
    }

    pub fn namespace(mut self, namespace: impl Into<String>, password: Option<String>) -> Self {
        self.namespace = Some(namespace.into());
        self.password = password;
        self
    }
}

trait Stream: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Stream for T {}

struct Connection {
    stream: BufReader<Box<dyn Stream>>,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Connection")
    }
}

/// Arguments from this size on are written from the caller's memory (one `writev`), not
/// copied into the request buffer first: a shard or chunk of a MiB or more is not copied twice.
pub const ARG_BORROWED_BYTES_MIN: usize = 16 * 1024;
/// Most slices handed to one `writev` (the kernel refuses more than 1024).
const IO_SLICES_PER_WRITE_MAX: usize = 1024;

/// Encodes one command as a RESP array of bulk strings.
pub fn encode_command(out: &mut Vec<u8>, args: &[&[u8]]) {
    encode_command_parts(out, args, None);
}

/// Encodes one command into `out`. With `borrowed`, arguments of [`ARG_BORROWED_BYTES_MIN`]
/// bytes or more are left out of `out`: `borrowed(position in out, argument)` is called where
/// their bytes belong instead.
fn encode_command_parts<'a>(
    out: &mut Vec<u8>,
    args: &[&'a [u8]],
    mut borrowed: Option<&mut dyn FnMut(usize, &'a [u8])>,
) {
    let mut decimal = itoa::Buffer::new();
    out.push(b'*');
    out.extend_from_slice(decimal.format(args.len()).as_bytes());
    out.extend_from_slice(b"\r\n");
    for arg in args {
        out.push(b'$');
        out.extend_from_slice(decimal.format(arg.len()).as_bytes());
        out.extend_from_slice(b"\r\n");
        match borrowed.as_mut() {
            Some(borrowed) if arg.len() >= ARG_BORROWED_BYTES_MIN => borrowed(out.len(), arg),
            _ => out.extend_from_slice(arg),
        }
        out.extend_from_slice(b"\r\n");
    }
}

/// Writes `commands` as one request: their small parts gathered in one buffer, large
/// arguments straight from the caller's memory, with as few `writev` calls as the stream takes.
async fn write_commands<W: AsyncWrite + Unpin + ?Sized>(
    stream: &mut W,
    commands: &[&[&[u8]]],
) -> std::io::Result<()> {
    let mut small = Vec::with_capacity(256);
    let mut large: Vec<(usize, &[u8])> = Vec::new();
    for command in commands {
        encode_command_parts(
            &mut small,
            command,
            Some(&mut |at, arg| large.push((at, arg))),
        );
    }
    if large.is_empty() {
        return stream.write_all(&small).await;
    }
    let mut slices = Vec::with_capacity(2 * large.len() + 1);
    let mut from = 0;
    for (at, arg) in &large {
        slices.push(IoSlice::new(&small[from..*at]));
        slices.push(IoSlice::new(arg));
        from = *at;
    }
    slices.push(IoSlice::new(&small[from..]));
    let mut remaining = &mut slices[..];
    while !remaining.is_empty() {
        let batch = remaining.len().min(IO_SLICES_PER_WRITE_MAX);
        let written = stream.write_vectored(&remaining[..batch]).await?;
        if written == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        IoSlice::advance_slices(&mut remaining, written);
    }
    Ok(())
}

async fn read_line<R: AsyncBufRead + Unpin>(reader: &mut R) -> std::io::Result<Vec<u8>> {
    let mut line = Vec::new();
    let read = (&mut *reader)
        .take(64 * 1024)
        .read_until(b'\n', &mut line)
        .await?;
    if read == 0 {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "connection closed",
        ));
    }
    if !line.ends_with(b"\r\n") {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "reply line not terminated",
        ));
    }
    line.truncate(line.len() - 2);
    Ok(line)
}

fn parse_number(bytes: &[u8]) -> std::io::Result<i64> {
    std::str::from_utf8(bytes)
        .ok()
        .and_then(|t| t.parse().ok())
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidData, "bad number in reply"))
}

/// Reads one reply (recursively for arrays), bounding every length.
async fn read_reply<R: AsyncBufRead + Unpin + Send>(reader: &mut R) -> std::io::Result<Reply> {
    let mut stack: Vec<(Vec<Reply>, usize)> = Vec::new();
    loop {
        let line = read_line(reader).await?;
        let Some((&kind, rest)) = line.split_first() else {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "empty reply line",
            ));
        };
        let reply = match kind {
            b'+' => Reply::Status(String::from_utf8_lossy(rest).into_owned()),
            b'-' => Reply::Error(String::from_utf8_lossy(rest).into_owned()),
            b':' => Reply::Integer(parse_number(rest)?),
            b'$' => {
                let length = parse_number(rest)?;
                if length < 0 {
                    Reply::Bulk(None)
                } else if length as usize > BULK_BYTES_MAX {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::InvalidData,
                        "bulk reply too large",
                    ));
                } else {
                    // Read into spare capacity: no pass zero-filling what the read overwrites.
                    let mut data = Vec::with_capacity(length as usize + 2);
                    let read = (&mut *reader)
                        .take(length as u64 + 2)
                        .read_to_end(&mut data)
                        .await?;
                    if read < length as usize + 2 {
                        return Err(std::io::ErrorKind::UnexpectedEof.into());
                    }
                    if !data.ends_with(b"\r\n") {
                        return Err(std::io::Error::new(
                            std::io::ErrorKind::InvalidData,
                            "bulk not terminated",
                        ));
                    }
                    data.truncate(length as usize);
                    Reply::Bulk(Some(data))
                }
            }
            b'*' => {
                let length = parse_number(rest)?;
                if length < 0 {
                    Reply::Array(None)
                } else if length as usize > REPLY_ARRAY_MAX || stack.len() > 32 {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::InvalidData,
                        "array reply too large",
                    ));
                } else if length == 0 {
                    Reply::Array(Some(Vec::new()))
                } else {
                    stack.push((
                        Vec::with_capacity(length.min(1024) as usize),
                        length as usize,
                    ));
                    continue;
                }
            }
            other => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("unknown reply type {:?}", other as char),
                ))
            }
        };
        // Attach the finished reply to the arrays being built.
        let mut finished = reply;
        loop {
            match stack.last_mut() {
                None => return Ok(finished),
                Some((items, expected)) => {
                    items.push(finished);
                    if items.len() < *expected {
                        break;
                    }
                    let (items, _) = stack.pop().unwrap_or_default();
                    finished = Reply::Array(Some(items));
                }
            }
        }
    }
}

/// One connection to one namespace of one zdb, reconnecting when needed.
#[derive(Debug)]
pub struct Client {
    config: ClientConfig,
    connection: Mutex<Option<Connection>>,
}

impl Client {
    /// Connects, authenticates and selects the namespace.
    pub async fn connect(config: ClientConfig) -> Result<Self> {
        let client = Client {
            config,
            connection: Mutex::new(None),
        };
        let connection = client.open().await?;
        *client.connection.lock().await = Some(connection);
        Ok(client)
    }

    pub fn config(&self) -> &ClientConfig {
        &self.config
    }

    fn address(&self) -> String {
        self.config.address.to_string()
    }

    async fn open(&self) -> Result<Connection> {
        let address = self.address();
        let connect = async {
            let stream: Box<dyn Stream> = match &self.config.address {
                Address::Tcp(target) => {
                    let stream = TcpStream::connect(target).await?;
                    stream.set_nodelay(true)?;
                    Box::new(stream)
                }
                Address::Unix(path) => Box::new(UnixStream::connect(path).await?),
            };
            Ok::<_, std::io::Error>(stream)
        };
        let stream = tokio::time::timeout(self.config.connect_timeout, connect)
            .await
            .map_err(|_| ClientError::Timeout(self.config.connect_timeout, address.clone()))?
            .map_err(|source| ClientError::Connect {
                address: address.clone(),
                source,
            })?;
        let mut connection = Connection {
            stream: BufReader::with_capacity(64 * 1024, stream),
        };
        if let Some(admin) = &self.config.admin_password {
            let reply = self
                .round_trip(&mut connection, &[&[b"AUTH".as_slice(), admin.as_bytes()]])
                .await?;
            self.expect_ok(reply)?;
        }
        if let Some(namespace) = &self.config.namespace {
            let reply = match (&self.config.password, self.config.secure) {
                (None, _) => {
                    self.round_trip(
                        &mut connection,
                        &[&[b"SELECT".as_slice(), namespace.as_bytes()]],
                    )
                    .await?
                }
                (Some(password), false) => {
                    self.round_trip(
                        &mut connection,
                        &[&[
                            b"SELECT".as_slice(),
                            namespace.as_bytes(),
                            password.as_bytes(),
                        ]],
                    )
                    .await?
                }
                (Some(password), true) => {
                    let challenge = self
                        .round_trip(
                            &mut connection,
                            &[&[b"AUTH".as_slice(), b"SECURE", b"CHALLENGE"]],
                        )
                        .await?;
                    let challenge = match challenge.into_iter().next() {
                        Some(Reply::Status(text)) => text,
                        Some(Reply::Bulk(Some(bytes))) => {
                            String::from_utf8_lossy(&bytes).into_owned()
                        }
                        Some(Reply::Error(message)) => {
                            return Err(ClientError::Server { address, message })
                        }
                        other => {
                            return Err(ClientError::Unexpected {
                                address,
                                reply: other.unwrap_or(Reply::Bulk(None)),
                            })
                        }
                    };
                    let mut hasher = Sha1::new();
                    hasher.update(challenge.as_bytes());
                    hasher.update(b":");
                    hasher.update(password.as_bytes());
                    let hash = hex::encode(hasher.finalize());
                    self.round_trip(
                        &mut connection,
                        &[&[
                            b"SELECT".as_slice(),
                            namespace.as_bytes(),
                            b"SECURE",
                            hash.as_bytes(),
                        ]],
                    )
                    .await?
                }
            };
            self.expect_ok(reply)?;
        }
        Ok(connection)
    }

    fn expect_ok(&self, replies: Vec<Reply>) -> Result<()> {
        match replies.into_iter().next() {
            Some(Reply::Status(status)) if status == "OK" => Ok(()),
            Some(Reply::Error(message)) => Err(ClientError::Server {
                address: self.address(),
                message,
            }),
            other => Err(ClientError::Unexpected {
                address: self.address(),
                reply: other.unwrap_or(Reply::Bulk(None)),
            }),
        }
    }

    async fn round_trip(
        &self,
        connection: &mut Connection,
        commands: &[&[&[u8]]],
    ) -> Result<Vec<Reply>> {
        let address = self.address();
        let work = async {
            write_commands(connection.stream.get_mut(), commands).await?;
            let mut replies = Vec::with_capacity(commands.len());
            for _ in 0..commands.len() {
                replies.push(read_reply(&mut connection.stream).await?);
            }
            Ok::<_, std::io::Error>(replies)
        };
        match tokio::time::timeout(self.config.request_timeout, work).await {
            Err(_) => Err(ClientError::Timeout(self.config.request_timeout, address)),
            Ok(Err(source)) if source.kind() == std::io::ErrorKind::InvalidData => {
                Err(ClientError::Protocol {
                    address,
                    detail: source.to_string(),
                })
            }
            Ok(Err(source)) => Err(ClientError::Io { address, source }),
            Ok(Ok(replies)) => Ok(replies),
        }
    }

    /// Sends every command in one write and returns their replies in order. Server errors come
    /// back as [`Reply::Error`] items, not as a failure of the whole pipeline. A broken
    /// connection is reopened and the pipeline sent again, once, when `idempotent`.
    pub async fn pipeline_with(
        &self,
        commands: &[&[&[u8]]],
        idempotent: bool,
    ) -> Result<Vec<Reply>> {
        let mut slot = self.connection.lock().await;
        for attempt in 0..2 {
            // The connection is taken out of its slot for the round trip and put back only
            // when every reply was read: if this future is dropped halfway (a timeout or a
            // cancelled caller), the connection goes with it instead of handing its unread
            // replies to the next request.
            let mut connection = match slot.take() {
                Some(connection) => connection,
                None => self.open().await?,
            };
            match self.round_trip(&mut connection, commands).await {
                Ok(replies) => {
                    *slot = Some(connection);
                    return Ok(replies);
                }
                Err(error) => {
                    // The stream is in an unknown state: it is dropped, never reused.
                    let retry =
                        attempt == 0 && idempotent && matches!(error, ClientError::Io { .. });
                    if !retry {
                        return Err(error);
                    }
                }
            }
        }
        Err(ClientError::Io {
            address: self.address(),
            source: std::io::Error::other("retry failed"),
        })
    }

    /// [`Client::pipeline_with`] for commands that are safe to repeat.
    pub async fn pipeline(&self, commands: &[&[&[u8]]]) -> Result<Vec<Reply>> {
        self.pipeline_with(commands, true).await
    }

    /// One command; a server error is returned as [`ClientError::Server`].
    pub async fn call(&self, args: &[&[u8]]) -> Result<Reply> {
        // A seq-mode append (SET with an empty key) would store twice if repeated.
        let is_append =
            args.len() >= 2 && args[0].eq_ignore_ascii_case(b"SET") && args[1].is_empty();
        let idempotent = !is_append;
        let reply = self
            .pipeline_with(&[args], idempotent)
            .await?
            .into_iter()
            .next()
            .unwrap_or(Reply::Bulk(None));
        match reply {
            Reply::Error(message) => Err(ClientError::Server {
                address: self.address(),
                message,
            }),
            other => Ok(other),
        }
    }

    fn unexpected(&self, reply: Reply) -> ClientError {
        ClientError::Unexpected {
            address: self.address(),
            reply,
        }
    }

    pub async fn ping(&self) -> Result<()> {
        match self.call(&[b"PING"]).await? {
            Reply::Status(_) => Ok(()),
            other => Err(self.unexpected(other)),
        }
    }

    /// SET: returns the key stored under (the new id in seq mode), or `None` when the key
    /// already held exactly this value.
    pub async fn set(&self, key: &[u8], value: &[u8]) -> Result<Option<Vec<u8>>> {
        match self.call(&[b"SET", key, value]).await? {
            Reply::Bulk(key) => Ok(key),
            other => Err(self.unexpected(other)),
        }
    }

    /// In a seq-mode namespace: stores a value under a new id and returns the id.
    pub async fn append(&self, value: &[u8]) -> Result<u64> {
        match self.set(b"", value).await? {
            Some(id) if id.len() == 8 => {
                let mut bytes = [0u8; 8];
                bytes.copy_from_slice(&id);
                Ok(u64::from_le_bytes(bytes))
            }
            other => Err(self.unexpected(Reply::Bulk(other))),
        }
    }

    pub async fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        match self.call(&[b"GET", key]).await? {
            Reply::Bulk(value) => Ok(value),
            other => Err(self.unexpected(other)),
        }
    }

    /// GET of many keys in one pipeline; a key's server error (a damaged record) is an
    /// `Err` in its place.
    pub async fn get_many(
        &self,
        keys: &[&[u8]],
    ) -> Result<Vec<std::result::Result<Option<Vec<u8>>, String>>> {
        let commands: Vec<[&[u8]; 2]> = keys.iter().map(|k| [b"GET".as_slice(), *k]).collect();
        let refs: Vec<&[&[u8]]> = commands.iter().map(|c| c.as_slice()).collect();
        let replies = self.pipeline(&refs).await?;
        replies
            .into_iter()
            .map(|reply| match reply {
                Reply::Bulk(value) => Ok(Ok(value)),
                Reply::Error(message) => Ok(Err(message)),
                other => Err(self.unexpected(other)),
            })
            .collect()
    }

    /// DEL; `Ok(false)` when the key did not exist.
    pub async fn del(&self, key: &[u8]) -> Result<bool> {
        match self.call(&[b"DEL", key]).await {
            Ok(Reply::Status(_)) => Ok(true),
            Err(ClientError::Server { message, .. }) if message.contains("not found") => Ok(false),
            Ok(other) => Err(self.unexpected(other)),
            Err(error) => Err(error),
        }
    }

    pub async fn exists(&self, key: &[u8]) -> Result<bool> {
        match self.call(&[b"EXISTS", key]).await? {
            Reply::Integer(n) => Ok(n == 1),
            other => Err(self.unexpected(other)),
        }
    }

    /// CHECK: `Some(true)` when the stored record verifies, `None` when there is no such key.
    pub async fn check(&self, key: &[u8]) -> Result<Option<bool>> {
        match self.call(&[b"CHECK", key]).await? {
            Reply::Integer(n) => Ok(Some(n == 1)),
            Reply::Bulk(None) => Ok(None),
            other => Err(self.unexpected(other)),
        }
    }

    pub async fn dbsize(&self) -> Result<u64> {
        match self.call(&[b"DBSIZE"]).await? {
            Reply::Integer(n) => Ok(n.max(0) as u64),
            other => Err(self.unexpected(other)),
        }
    }

    /// One SCAN step: the keys after `cursor` with their sizes and times, and the cursor to
    /// continue from; `None` when there is nothing more.
    #[allow(clippy::type_complexity)]
    pub async fn scan(
        &self,
        cursor: Option<&[u8]>,
    ) -> Result<Option<(Vec<u8>, Vec<(Vec<u8>, u64, u64)>)>> {
        let reply = match cursor {
            Some(cursor) => self.call(&[b"SCAN", cursor]).await,
            None => self.call(&[b"SCAN"]).await,
        };
        let reply = match reply {
            Err(ClientError::Server { message, .. }) if message.contains("No more data") => {
                return Ok(None)
            }
            other => other?,
        };
        let Reply::Array(Some(parts)) = reply else {
            return Err(self.unexpected(reply));
        };
        let mut parts = parts.into_iter();
        let (Some(Reply::Bulk(Some(next))), Some(Reply::Array(Some(entries)))) =
            (parts.next(), parts.next())
        else {
            return Err(self.unexpected(Reply::Bulk(None)));
        };
        let mut keys = Vec::with_capacity(entries.len());
        for entry in entries {
            match entry {
                Reply::Array(Some(fields)) if fields.len() == 3 => {
                    let mut fields = fields.into_iter();
                    match (fields.next(), fields.next(), fields.next()) {
                        (
                            Some(Reply::Bulk(Some(key))),
                            Some(Reply::Integer(size)),
                            Some(Reply::Integer(time)),
                        ) => keys.push((key, size.max(0) as u64, time.max(0) as u64)),
                        _ => return Err(self.unexpected(Reply::Bulk(None))),
                    }
                }
                other => return Err(self.unexpected(other)),
            }
        }
        Ok(Some((next, keys)))
    }

    /// Every key of the namespace, walking SCAN to the end.
    pub async fn keys(&self) -> Result<Vec<Vec<u8>>> {
        let mut all = Vec::new();
        let mut cursor: Option<Vec<u8>> = None;
        while let Some((next, keys)) = self.scan(cursor.as_deref()).await? {
            all.extend(keys.into_iter().map(|(key, _, _)| key));
            cursor = Some(next);
        }
        Ok(all)
    }

    /// A command whose reply is `+OK`.
    pub async fn call_ok(&self, args: &[&[u8]]) -> Result<()> {
        match self.call(args).await? {
            Reply::Status(status) if status == "OK" => Ok(()),
            other => Err(self.unexpected(other)),
        }
    }

    /// NSNEW (admin).
    pub async fn namespace_create(&self, name: &str) -> Result<()> {
        self.call_ok(&[b"NSNEW", name.as_bytes()]).await
    }

    /// NSSET (admin).
    pub async fn namespace_set(&self, name: &str, property: &str, value: &str) -> Result<()> {
        self.call_ok(&[
            b"NSSET",
            name.as_bytes(),
            property.as_bytes(),
            value.as_bytes(),
        ])
        .await
    }

    /// NSINFO parsed into `field: value` pairs.
    pub async fn namespace_info(&self, name: &str) -> Result<Vec<(String, String)>> {
        match self.call(&[b"NSINFO", name.as_bytes()]).await? {
            Reply::Bulk(Some(text)) => Ok(String::from_utf8_lossy(&text)
                .lines()
                .filter_map(|line| line.split_once(": "))
                .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
                .collect()),
            other => Err(self.unexpected(other)),
        }
    }
}

/// Several connections to the same namespace, used in turn.
#[derive(Debug)]
pub struct Pool {
    clients: Vec<Client>,
    next: AtomicUsize,
}

impl Pool {
    pub async fn connect(config: ClientConfig, size: usize) -> Result<Self> {
        let mut clients = Vec::with_capacity(size.max(1));
        for _ in 0..size.max(1) {
            clients.push(Client::connect(config.clone()).await?);
        }
        Ok(Pool {
            clients,
            next: AtomicUsize::new(0),
        })
    }

    /// The next connection in turn.
    pub fn get(&self) -> &Client {
        let index = self.next.fetch_add(1, Ordering::Relaxed) % self.clients.len();
        &self.clients[index]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn parses_nested_replies() {
        let bytes = b"*2\r\n$3\r\nabc\r\n*3\r\n:1\r\n$-1\r\n+OK\r\n".to_vec();
        let mut reader = BufReader::new(&bytes[..]);
        let reply = read_reply(&mut reader).await.unwrap();
        assert_eq!(
            reply,
            Reply::Array(Some(vec![
                Reply::Bulk(Some(b"abc".to_vec())),
                Reply::Array(Some(vec![
                    Reply::Integer(1),
                    Reply::Bulk(None),
                    Reply::Status("OK".into())
                ])),
            ]))
        );
    }

    #[tokio::test]
    async fn refuses_absurd_lengths() {
        for bytes in [
            &b"$999999999999\r\n"[..],
            b"*99999999\r\n",
            b"?x\r\n",
            b"$3\r\nabcd\r\n",
        ] {
            let mut reader = BufReader::new(bytes);
            assert!(read_reply(&mut reader).await.is_err(), "{bytes:?}");
        }
    }

    #[tokio::test]
    async fn a_dropped_request_never_leaks_its_reply_to_the_next() {
        use tokio::io::AsyncWriteExt as _;
        // A server that answers each request (one line) slowly with its own text.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap().to_string();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                tokio::spawn(async move {
                    let (read, mut write) = stream.into_split();
                    let mut lines = BufReader::new(read);
                    loop {
                        let Ok(reply) = read_reply(&mut lines).await else {
                            return;
                        };
                        let Reply::Array(Some(args)) = reply else {
                            return;
                        };
                        let Some(Reply::Bulk(Some(word))) = args.into_iter().last() else {
                            return;
                        };
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        let mut out = Vec::new();
                        crate::resp::frame::reply::bulk(&mut out, &word);
                        if write.write_all(&out).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        let client = Client::connect(ClientConfig::new(Address::parse(&address).unwrap()))
            .await
            .unwrap();
        let slow = tokio::time::timeout(Duration::from_millis(10), client.get(b"first")).await;
        assert!(
            slow.is_err(),
            "the first request should have been cut short"
        );
        assert_eq!(
            client.get(b"second").await.unwrap(),
            Some(b"second".to_vec())
        );
    }

    /// A writer that takes at most `step` bytes per call, vectored or not.
    struct Trickle {
        written: Vec<u8>,
        step: usize,
    }

    impl AsyncWrite for Trickle {
        fn poll_write(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            buf: &[u8],
        ) -> std::task::Poll<std::io::Result<usize>> {
            let take = buf.len().min(self.step);
            self.written.extend_from_slice(&buf[..take]);
            std::task::Poll::Ready(Ok(take))
        }
        fn poll_write_vectored(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            bufs: &[IoSlice<'_>],
        ) -> std::task::Poll<std::io::Result<usize>> {
            let mut left = self.step;
            for buf in bufs {
                let take = buf.len().min(left);
                self.written.extend_from_slice(&buf[..take]);
                left -= take;
                if left == 0 {
                    break;
                }
            }
            std::task::Poll::Ready(Ok(self.step - left))
        }
        fn is_write_vectored(&self) -> bool {
            true
        }
        fn poll_flush(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            std::task::Poll::Ready(Ok(()))
        }
        fn poll_shutdown(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            std::task::Poll::Ready(Ok(()))
        }
    }

    #[tokio::test]
    async fn large_arguments_are_written_in_place_byte_for_byte() {
        let big = fixtures::bytes::xorshift_bytes(3, ARG_BORROWED_BYTES_MIN * 3 + 7);
        let edge = vec![b'e'; ARG_BORROWED_BYTES_MIN];
        let just_under = vec![b'u'; ARG_BORROWED_BYTES_MIN - 1];
        let first: [&[&[u8]]; 4] = [
            &[b"SET", b"k1", &big],
            &[b"PING"],
            &[b"SET", &edge, &just_under],
            &[b"SET", b"", &big[..ARG_BORROWED_BYTES_MIN + 1]],
        ];
        // Then more large arguments than one writev may carry.
        let many: Vec<[&[u8]; 3]> = (0..IO_SLICES_PER_WRITE_MAX)
            .map(|_| [&b"SET"[..], &b"k"[..], &edge[..]])
            .collect();
        let commands: Vec<&[&[u8]]> = first
            .iter()
            .copied()
            .chain(many.iter().map(|command| &command[..]))
            .collect();
        let mut expected = Vec::new();
        for command in &commands {
            encode_command(&mut expected, command);
        }
        for step in [1, 7, 4096, 1 << 20] {
            let mut writer = Trickle {
                written: Vec::new(),
                step,
            };
            write_commands(&mut writer, &commands).await.unwrap();
            let first_difference = writer
                .written
                .iter()
                .zip(&expected)
                .position(|(a, b)| a != b);
            assert!(
                writer.written == expected,
                "step {step}: {} vs {} bytes, first difference at {first_difference:?}",
                writer.written.len(),
                expected.len()
            );
        }
    }

    #[test]
    fn addresses() {
        assert_eq!(
            Address::parse("127.0.0.1:9900").unwrap(),
            Address::Tcp("127.0.0.1:9900".into())
        );
        assert_eq!(
            Address::parse("unix:/run/zdb.sock").unwrap(),
            Address::Unix("/run/zdb.sock".into())
        );
        assert!(Address::parse("nohost").is_err());
        assert!(Address::parse("host:notaport").is_err());
    }
}
