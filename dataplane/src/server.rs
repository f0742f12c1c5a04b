//! `server`: accepts clients on TCP and a unix socket, bounds how many there are, and runs
//! each connection: read what the client sent, execute every complete command in it (a
//! pipelined batch at once), wait for durability when the policy asks, write all replies.

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::Semaphore;

use crate::engine::GET_RUN_MAX;
use crate::resp::commands::{self, ServerState, Session};
use crate::resp::frame::{self, reply};

/// Default limit on connected clients.
pub const CONNECTIONS_MAX_DEFAULT: usize = 1024;
/// Bytes read from a socket at once.
const READ_CHUNK_BYTES: usize = 64 * 1024;
/// Replies are written out once this many bytes are waiting, even mid-batch.
const REPLY_FLUSH_BYTES: usize = 1024 * 1024;

/// Where the server listens.
#[derive(Debug, Clone)]
pub struct ListenConfig {
    pub tcp: Option<String>,
    pub unix: Option<PathBuf>,
    pub connections_max: usize,
}

/// Runs the server until `shutdown` resolves, then closes the listeners and returns; the
/// caller then shuts the engine down (which flushes and syncs).
pub async fn serve(
    state: Arc<ServerState>,
    listen: ListenConfig,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    let limit = Arc::new(Semaphore::new(listen.connections_max));
    let tcp = match &listen.tcp {
        Some(address) => Some(
            TcpListener::bind(address)
                .await
                .map_err(|e| anyhow::anyhow!("cannot listen on {address}: {e}"))?,
        ),
        None => None,
    };
    let unix = match &listen.unix {
        Some(path) => {
            if path.exists() {
                // A socket file left by a previous run: only remove it if nobody answers on it.
                if std::os::unix::net::UnixStream::connect(path).is_ok() {
                    anyhow::bail!("unix socket {} is in use by another server", path.display());
                }
                std::fs::remove_file(path).map_err(|e| {
                    anyhow::anyhow!("cannot remove stale socket {}: {e}", path.display())
                })?;
            }
            Some(
                UnixListener::bind(path)
                    .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", path.display()))?,
            )
        }
        None => None,
    };
    if let Some(listener) = &tcp {
        tracing::info!(address = %listener.local_addr()?, "listening on TCP");
    }
    if let Some(path) = &listen.unix {
        tracing::info!(path = %path.display(), "listening on unix socket");
    }
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            accepted = accept_tcp(&tcp) => match accepted {
                Ok(stream) => {
                    let _ = stream.set_nodelay(true);
                    spawn_connection(Arc::clone(&state), Arc::clone(&limit), stream);
                }
                Err(error) => tracing::warn!(%error, "accept failed"),
            },
            accepted = accept_unix(&unix) => match accepted {
                Ok(stream) => spawn_connection(Arc::clone(&state), Arc::clone(&limit), stream),
                Err(error) => tracing::warn!(%error, "accept failed"),
            },
        }
    }
    if let Some(path) = &listen.unix {
        let _ = std::fs::remove_file(path);
    }
    Ok(())
}

async fn accept_tcp(listener: &Option<TcpListener>) -> std::io::Result<tokio::net::TcpStream> {
    match listener {
        Some(listener) => listener.accept().await.map(|(stream, _)| stream),
        None => std::future::pending().await,
    }
}

async fn accept_unix(listener: &Option<UnixListener>) -> std::io::Result<tokio::net::UnixStream> {
    match listener {
        Some(listener) => listener.accept().await.map(|(stream, _)| stream),
        None => std::future::pending().await,
    }
}

fn spawn_connection<S>(state: Arc<ServerState>, limit: Arc<Semaphore>, mut stream: S)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    tokio::spawn(async move {
        let Ok(permit) = limit.try_acquire_owned() else {
            let mut out = Vec::new();
            reply::error(&mut out, "ERR max number of clients reached");
            let _ = stream.write_all(&out).await;
            return;
        };
        state.connections.fetch_add(1, Ordering::Relaxed);
        if let Err(error) = run_connection(&state, &mut stream).await {
            tracing::debug!(%error, "connection ended");
        }
        state.connections.fetch_sub(1, Ordering::Relaxed);
        drop(permit);
    });
}

/// One client, until it leaves or breaks the protocol.
async fn run_connection<S>(state: &ServerState, stream: &mut S) -> std::io::Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut session = match Session::new(state) {
        Ok(session) => session,
        Err(error) => {
            let mut out = Vec::new();
            reply::error(&mut out, &format!("ERR {error}"));
            stream.write_all(&out).await?;
            return Ok(());
        }
    };
    let mut input = BytesMut::with_capacity(READ_CHUNK_BYTES);
    let mut out: Vec<u8> = Vec::with_capacity(READ_CHUNK_BYTES);
    let mut ranges = Vec::new();
    let mut inline = Vec::new();
    // Bytes the command at the front of `input` is known to need (a large value's length).
    let mut needed_bytes = 0usize;
    loop {
        if input.capacity() - input.len() < READ_CHUNK_BYTES / 4 {
            input.reserve(READ_CHUNK_BYTES);
        }
        if needed_bytes > input.capacity() {
            // Room for the whole value at once: growing by doubling would copy it again and
            // again as it arrives.
            input.reserve(needed_bytes - input.len());
        }
        let read = stream.read_buf(&mut input).await?;
        if read == 0 {
            return Ok(());
        }
        let mut wrote = false;
        let mut executed = 0u64;
        loop {
            match frame::parse_command_sized(&input, &mut ranges, &mut inline, &mut needed_bytes) {
                Ok(Some((consumed, is_inline))) => {
                    let before = session.pending_ticket;
                    let run = if is_inline {
                        None
                    } else {
                        run_gets(state, &session, &input, consumed, &ranges, &mut out).or_else(
                            || {
                                run_plain_sets(
                                    state,
                                    &mut session,
                                    &input,
                                    consumed,
                                    &ranges,
                                    &mut out,
                                )
                            },
                        )
                    };
                    if let Some((run_bytes, count)) = run {
                        wrote |= session.pending_ticket != before;
                        executed += count;
                        input.advance(run_bytes);
                        if out.len() >= REPLY_FLUSH_BYTES {
                            flush_replies(state, &mut session, stream, &mut out, wrote).await?;
                            wrote = false;
                        }
                        continue;
                    }
                    {
                        let source: &[u8] = if is_inline { &inline } else { &input };
                        let args: smallvec::SmallVec<[&[u8]; 8]> =
                            ranges.iter().map(|r| &source[r.clone()]).collect();
                        if !args.is_empty() {
                            commands::execute(state, &mut session, &args, &mut out);
                            wrote |= session.pending_ticket != before;
                            executed += 1;
                        }
                    }
                    input.advance(consumed);
                    if let Some(job) = session.slow.take() {
                        let reply = tokio::task::spawn_blocking(job)
                            .await
                            .map_err(std::io::Error::other)?;
                        out.extend_from_slice(&reply);
                    }
                    if session.closing {
                        break;
                    }
                    if out.len() >= REPLY_FLUSH_BYTES {
                        flush_replies(state, &mut session, stream, &mut out, wrote).await?;
                        wrote = false;
                    }
                }
                Ok(None) => break,
                Err(error) => {
                    flush_replies(state, &mut session, stream, &mut out, wrote).await?;
                    let mut error_reply = Vec::new();
                    reply::error(&mut error_reply, &format!("ERR {error}"));
                    stream.write_all(&error_reply).await?;
                    return Ok(());
                }
            }
        }
        state.commands.fetch_add(executed, Ordering::Relaxed);
        flush_replies(state, &mut session, stream, &mut out, wrote).await?;
        if wrote {
            state.engine.wait_for_room(&session.namespace).await;
        }
        if session.closing {
            return Ok(());
        }
    }
}

/// For looking ahead in a pipeline: the length of the complete command (not an inline one)
/// at `input[at..]`, its arguments parsed into `ranges` (relative to `at`); `None` at anything
/// else (incomplete, inline, malformed), which the main loop then handles.
fn next_command(
    input: &[u8],
    at: usize,
    ranges: &mut Vec<std::ops::Range<usize>>,
    inline: &mut Vec<u8>,
) -> Option<usize> {
    let mut needed = 0;
    match frame::parse_command_sized(&input[at..], ranges, inline, &mut needed) {
        Ok(Some((consumed, false))) => Some(consumed),
        _ => None,
    }
}

/// Plain SETs run under one acquisition of the namespace lock at most.
const SET_RUN_MAX: usize = 64;

/// The run of consecutive commands at the front of `input` that `pick` takes, at most `max`
/// of them; the front one's `consumed` bytes are already parsed into `front` (the caller's
/// ranges, left as they are: the commands after it are parsed into buffers of this call).
/// `pick` gets a command's arguments and their ranges in `input`; each command taken gives
/// what `pick` made of it and where the command after it starts. Empty when `pick` does not
/// take the front one.
fn collect_run<T>(
    input: &[u8],
    consumed: usize,
    front: &[std::ops::Range<usize>],
    max: usize,
    mut pick: impl FnMut(&[&[u8]], &[std::ops::Range<usize>]) -> Option<T>,
) -> smallvec::SmallVec<[(T, usize); SET_RUN_MAX]> {
    let mut run = smallvec::SmallVec::new();
    let (mut ahead, mut ahead_inline) = (Vec::new(), Vec::new());
    let (mut at, mut length) = (0, consumed);
    loop {
        let ranges = if run.is_empty() { front } else { &ahead[..] };
        let placed: smallvec::SmallVec<[std::ops::Range<usize>; 3]> =
            ranges.iter().map(|r| r.start + at..r.end + at).collect();
        let args: smallvec::SmallVec<[&[u8]; 3]> =
            placed.iter().map(|r| &input[r.clone()]).collect();
        let Some(picked) = pick(&args, &placed) else {
            break;
        };
        at += length;
        run.push((picked, at));
        if run.len() >= max {
            break;
        }
        let Some(next) = next_command(input, at, &mut ahead, &mut ahead_inline) else {
            break;
        };
        length = next;
    }
    run
}

/// When the command at the front of `input` (its `consumed` bytes parsed into `ranges`) is a
/// plain SET, runs it with the plain SETs right after it (`commands::execute_sets`) and
/// returns the bytes and the number of commands they took.
fn run_plain_sets(
    state: &ServerState,
    session: &mut Session,
    input: &[u8],
    consumed: usize,
    ranges: &[std::ops::Range<usize>],
    out: &mut Vec<u8>,
) -> Option<(usize, u64)> {
    let run = collect_run(input, consumed, ranges, SET_RUN_MAX, |args, placed| {
        commands::is_plain_set(session, args).then(|| (placed[1].clone(), placed[2].clone()))
    });
    let &(_, end) = run.last()?;
    let sets: smallvec::SmallVec<[(&[u8], &[u8]); SET_RUN_MAX]> = run
        .iter()
        .map(|((key, value), _)| (&input[key.clone()], &input[value.clone()]))
        .collect();
    commands::execute_sets(state, session, &sets, out);
    Some((end, sets.len() as u64))
}

/// When the command at the front of `input` (its `consumed` bytes parsed into `ranges`) is a
/// GET, runs it with the GETs right after it for as long as their values are in memory
/// (`commands::execute_gets`) and returns the bytes and the number of commands they took;
/// `None` when it ran none (the main loop then runs the front one on its own).
fn run_gets(
    state: &ServerState,
    session: &Session,
    input: &[u8],
    consumed: usize,
    ranges: &[std::ops::Range<usize>],
    out: &mut Vec<u8>,
) -> Option<(usize, u64)> {
    let run = collect_run(input, consumed, ranges, GET_RUN_MAX, |args, placed| {
        commands::is_get(args).then(|| placed[1].clone())
    });
    if run.is_empty() {
        return None;
    }
    let keys: smallvec::SmallVec<[&[u8]; GET_RUN_MAX]> =
        run.iter().map(|(key, _)| &input[key.clone()]).collect();
    // Replies are written out at REPLY_FLUSH_BYTES: a batch of large values stops there too.
    let value_bytes_max = REPLY_FLUSH_BYTES.saturating_sub(out.len());
    let served = commands::execute_gets(state, session, &keys, value_bytes_max, out);
    let &(_, end) = run.get(served.checked_sub(1)?)?;
    Some((end, served as u64))
}

/// Writes the replies gathered so far. When they acknowledge writes, those are committed
/// first: in their segment files (default), or on disk (`--sync`). If they cannot be, the
/// connection is closed without acknowledging them.
async fn flush_replies<S>(
    state: &ServerState,
    session: &mut Session,
    stream: &mut S,
    out: &mut Vec<u8>,
    wrote: bool,
) -> std::io::Result<()>
where
    S: AsyncWrite + Unpin,
{
    if wrote {
        if let Err(error) = state.engine.commit(session.pending_ticket).await {
            tracing::error!(%error, "writes could not be made durable: closing the connection unacknowledged");
            return Err(std::io::Error::other(error.to_string()));
        }
    }
    if !out.is_empty() {
        stream.write_all(out).await?;
        out.clear();
    }
    Ok(())
}
