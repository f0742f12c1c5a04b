//! A client for the daemon over its unix socket, used by `zos stor ... --daemon SOCKET`:
//! hyper's HTTP/1.1 client on a tokio `UnixStream`, bodies streamed both ways.

use std::path::{Path, PathBuf};

use bytes::Bytes;
use futures::TryStreamExt;
use http_body_util::{BodyExt, Empty, Full, StreamBody};
use hyper::body::Frame;
use hyper::header::{AUTHORIZATION, CONTENT_LENGTH, HOST};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio_util::io::ReaderStream;

use crate::zstor::{ObjectInfo, PutReport};

/// Largest JSON or error body read from the daemon.
pub const REPLY_BYTES_MAX: usize = 64 * 1024 * 1024;

/// Errors talking to the daemon.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The socket could not be reached.
    #[error("cannot reach the zstor daemon at {socket}: {source}")]
    Connect {
        /// The socket path.
        socket: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The daemon answered with an error.
    #[error("the zstor daemon answered {status}: {message}")]
    Status {
        /// HTTP status.
        status: u16,
        /// Its message.
        message: String,
    },
    /// The exchange failed midway.
    #[error("talking to the zstor daemon: {0}")]
    Transport(String),
    /// Reading the input or writing the output failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// A client for one daemon socket.
#[derive(Debug, Clone)]
pub struct DaemonClient {
    socket: PathBuf,
    token: String,
}

fn object_path(key: &str) -> String {
    let mut path = String::from("/v1/objects/");
    for byte in key.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~/".contains(&byte) {
            path.push(byte as char);
        } else {
            path.push_str(&format!("%{byte:02X}"));
        }
    }
    path
}

type BoxBody = http_body_util::combinators::UnsyncBoxBody<Bytes, std::io::Error>;

impl DaemonClient {
    /// A client for the daemon on `socket`, authenticating with `token`.
    pub fn new(socket: &Path, token: String) -> Self {
        DaemonClient {
            socket: socket.to_path_buf(),
            token,
        }
    }

    async fn send(
        &self,
        method: Method,
        path: &str,
        body: BoxBody,
        length: Option<u64>,
    ) -> Result<hyper::Response<hyper::body::Incoming>, ClientError> {
        let stream = tokio::net::UnixStream::connect(&self.socket)
            .await
            .map_err(|source| ClientError::Connect {
                socket: self.socket.display().to_string(),
                source,
            })?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| ClientError::Transport(e.to_string()))?;
        tokio::spawn(connection);
        let mut request = Request::builder()
            .method(method)
            .uri(path)
            .header(HOST, "zstor")
            .header(AUTHORIZATION, format!("Bearer {}", self.token));
        if let Some(length) = length {
            request = request.header(CONTENT_LENGTH, length);
        }
        let request = request
            .body(body)
            .map_err(|e| ClientError::Transport(e.to_string()))?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| ClientError::Transport(e.to_string()))?;
        if response.status().is_client_error() || response.status().is_server_error() {
            let status = response.status();
            let body = read_body(response).await.unwrap_or_default();
            let message = serde_json::from_slice::<serde_json::Value>(&body)
                .ok()
                .and_then(|value| value["error"].as_str().map(str::to_string))
                .unwrap_or_else(|| String::from_utf8_lossy(&body).into_owned());
            return Err(ClientError::Status {
                status: status.as_u16(),
                message,
            });
        }
        Ok(response)
    }

    fn empty() -> BoxBody {
        Empty::<Bytes>::new()
            .map_err(|never| match never {})
            .boxed_unsync()
    }

    /// Stores `input` as `key`, streamed.
    pub async fn put(
        &self,
        key: &str,
        input: impl AsyncRead + Send + Unpin + 'static,
        length: Option<u64>,
    ) -> Result<PutReport, ClientError> {
        let frames = ReaderStream::with_capacity(input, 1 << 20).map_ok(Frame::data);
        let body = StreamBody::new(frames).boxed_unsync();
        let response = self
            .send(Method::PUT, &object_path(key), body, length)
            .await?;
        let body = read_body(response).await?;
        serde_json::from_slice(&body)
            .map_err(|e| ClientError::Transport(format!("bad put report: {e}")))
    }

    /// Streams object `key` into `output`; returns its size. A body shorter than announced
    /// (the daemon could not read the rest) is an error.
    pub async fn get(
        &self,
        key: &str,
        mut output: impl AsyncWrite + Unpin,
    ) -> Result<u64, ClientError> {
        let response = self
            .send(Method::GET, &object_path(key), Self::empty(), None)
            .await?;
        let expected = response
            .headers()
            .get(CONTENT_LENGTH)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.parse::<u64>().ok());
        let mut body = response.into_body();
        let mut written = 0u64;
        while let Some(frame) = body.frame().await {
            let Ok(frame) = frame else {
                break;
            };
            if let Ok(data) = frame.into_data() {
                output
                    .write_all(&data)
                    .await
                    .map_err(|source| ClientError::Io {
                        context: format!("writing {key:?}"),
                        source,
                    })?;
                written += data.len() as u64;
            }
        }
        output.flush().await.map_err(|source| ClientError::Io {
            context: format!("writing {key:?}"),
            source,
        })?;
        if expected.is_some_and(|expected| expected != written) {
            return Err(ClientError::Status {
                status: StatusCode::SERVICE_UNAVAILABLE.as_u16(),
                message: format!(
                    "object {key:?} ended early after {written} bytes (see the daemon's log)"
                ),
            });
        }
        Ok(written)
    }

    /// Every object.
    pub async fn list(&self) -> Result<Vec<ObjectInfo>, ClientError> {
        let response = self
            .send(Method::GET, "/v1/objects", Self::empty(), None)
            .await?;
        let body = read_body(response).await?;
        serde_json::from_slice(&body)
            .map_err(|e| ClientError::Transport(format!("bad object list: {e}")))
    }

    /// Deletes `key`.
    pub async fn delete(&self, key: &str) -> Result<(), ClientError> {
        let body = Full::new(Bytes::new())
            .map_err(|never| match never {})
            .boxed_unsync();
        self.send(Method::DELETE, &object_path(key), body, Some(0))
            .await?;
        Ok(())
    }
}

async fn read_body(
    response: hyper::Response<hyper::body::Incoming>,
) -> Result<Vec<u8>, ClientError> {
    let mut body = response.into_body();
    let mut bytes = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| ClientError::Transport(e.to_string()))?;
        if let Ok(data) = frame.into_data() {
            if bytes.len() + data.len() > REPLY_BYTES_MAX {
                return Err(ClientError::Transport("reply too large".into()));
            }
            bytes.extend_from_slice(&data);
        }
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    #[test]
    fn keys_are_percent_encoded_but_keep_slashes() {
        assert_eq!(super::object_path("a b/c%"), "/v1/objects/a%20b/c%25");
    }
}
