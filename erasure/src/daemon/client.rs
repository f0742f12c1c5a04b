//! A client for the daemon over its unix socket or TCP, used by `zos stor ... --daemon
//! SOCKET|URL`: hyper's HTTP/1.1 client on a tokio `UnixStream` or `TcpStream`, bodies
//! streamed both ways.

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

use crate::zstor::{BackendStatus, ObjectCheck, ObjectInfo, ObjectRepair, PutReport};

/// Largest JSON or error body read from the daemon.
pub const REPLY_BYTES_MAX: usize = 64 * 1024 * 1024;

/// Errors talking to the daemon.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The daemon's address is not a socket path or an `http://host:port` URL.
    #[error("bad zstor daemon address {address:?}: {reason}")]
    Address {
        /// The address given.
        address: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The socket could not be reached.
    #[error("cannot reach the zstor daemon at {socket}: {source}")]
    Connect {
        /// The socket path or TCP address.
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

/// Where a daemon listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// A unix socket.
    Unix(PathBuf),
    /// A TCP address, `host:port`.
    Tcp(String),
}

impl Endpoint {
    /// `http://host:port[/]` is TCP; `unix:PATH` or anything else is a socket path.
    pub fn parse(address: &str) -> Result<Endpoint, ClientError> {
        let bad = |reason: &str| ClientError::Address {
            address: address.to_string(),
            reason: reason.to_string(),
        };
        if let Some(path) = address.strip_prefix("unix:") {
            return Ok(Endpoint::Unix(PathBuf::from(path)));
        }
        if !address.contains("://") {
            if address.is_empty() {
                return Err(bad("empty"));
            }
            return Ok(Endpoint::Unix(PathBuf::from(address)));
        }
        let url = url::Url::parse(address).map_err(|e| bad(&e.to_string()))?;
        if url.scheme() != "http" {
            return Err(bad(
                "only http://host:port (TCP) or a unix socket path is understood",
            ));
        }
        if !matches!(url.path(), "" | "/") || url.query().is_some() {
            return Err(bad("give only http://host:port, without a path"));
        }
        let host = url.host_str().ok_or_else(|| bad("no host"))?;
        let port = url.port_or_known_default().unwrap_or(80);
        Ok(Endpoint::Tcp(format!("{host}:{port}")))
    }

    fn host_header(&self) -> String {
        match self {
            Endpoint::Unix(_) => "zstor".into(),
            Endpoint::Tcp(address) => address.clone(),
        }
    }
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Endpoint::Unix(path) => write!(f, "{}", path.display()),
            Endpoint::Tcp(address) => write!(f, "http://{address}"),
        }
    }
}

/// A client for one daemon.
#[derive(Debug, Clone)]
pub struct DaemonClient {
    endpoint: Endpoint,
    token: String,
}

/// `?key=K` with K percent-encoded, or nothing.
fn key_query(key: Option<&str>) -> String {
    match key {
        None => String::new(),
        Some(key) => {
            let mut query = String::from("?key=");
            for byte in key.bytes() {
                if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
                    query.push(byte as char);
                } else {
                    query.push_str(&format!("%{byte:02X}"));
                }
            }
            query
        }
    }
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
            endpoint: Endpoint::Unix(socket.to_path_buf()),
            token,
        }
    }

    /// A client for the daemon at `endpoint`, authenticating with `token`.
    pub fn with_endpoint(endpoint: Endpoint, token: String) -> Self {
        DaemonClient { endpoint, token }
    }

    /// Where requests go.
    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    async fn handshake<T>(
        &self,
        stream: T,
    ) -> Result<hyper::client::conn::http1::SendRequest<BoxBody>, ClientError>
    where
        T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
    {
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| ClientError::Transport(e.to_string()))?;
        tokio::spawn(connection);
        Ok(sender)
    }

    async fn send(
        &self,
        method: Method,
        path: &str,
        body: BoxBody,
        length: Option<u64>,
    ) -> Result<hyper::Response<hyper::body::Incoming>, ClientError> {
        let connect_error = |source| ClientError::Connect {
            socket: self.endpoint.to_string(),
            source,
        };
        let mut sender = match &self.endpoint {
            Endpoint::Unix(socket) => {
                let stream = tokio::net::UnixStream::connect(socket)
                    .await
                    .map_err(connect_error)?;
                self.handshake(stream).await?
            }
            Endpoint::Tcp(address) => {
                let stream = tokio::net::TcpStream::connect(address)
                    .await
                    .map_err(connect_error)?;
                let _ = stream.set_nodelay(true);
                self.handshake(stream).await?
            }
        };
        let mut request = Request::builder()
            .method(method)
            .uri(path)
            .header(HOST, self.endpoint.host_header())
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

    async fn json<T: serde::de::DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        what: &str,
    ) -> Result<T, ClientError> {
        let body = Full::new(Bytes::new())
            .map_err(|never| match never {})
            .boxed_unsync();
        let length = (method == Method::POST).then_some(0);
        let response = self.send(method, path, body, length).await?;
        let body = read_body(response).await?;
        serde_json::from_slice(&body)
            .map_err(|e| ClientError::Transport(format!("bad {what} report: {e}")))
    }

    /// Checks `key` (or every object): `POST /v1/check`.
    pub async fn check(&self, key: Option<&str>) -> Result<Vec<ObjectCheck>, ClientError> {
        self.json(
            Method::POST,
            &format!("/v1/check{}", key_query(key)),
            "check",
        )
        .await
    }

    /// Repairs `key` (or every object and the daemon's repair queue): `POST /v1/repair`.
    pub async fn repair(&self, key: Option<&str>) -> Result<Vec<ObjectRepair>, ClientError> {
        self.json(
            Method::POST,
            &format!("/v1/repair{}", key_query(key)),
            "repair",
        )
        .await
    }

    /// Health and usage of every backend: `GET /v1/status`.
    pub async fn status(&self) -> Result<Vec<BackendStatus>, ClientError> {
        self.json(Method::GET, "/v1/status", "status").await
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
    use super::*;

    #[test]
    fn keys_are_percent_encoded_but_keep_slashes() {
        assert_eq!(object_path("a b/c%"), "/v1/objects/a%20b/c%25");
        assert_eq!(key_query(Some("a b/c&d")), "?key=a%20b%2Fc%26d");
        assert_eq!(key_query(None), "");
    }

    #[test]
    fn addresses_are_sockets_or_http_urls() {
        assert_eq!(
            Endpoint::parse("/run/zstor.sock").unwrap(),
            Endpoint::Unix("/run/zstor.sock".into())
        );
        assert_eq!(
            Endpoint::parse("unix:rel/sock").unwrap(),
            Endpoint::Unix("rel/sock".into())
        );
        assert_eq!(
            Endpoint::parse("http://127.0.0.1:9980").unwrap(),
            Endpoint::Tcp("127.0.0.1:9980".into())
        );
        assert_eq!(
            Endpoint::parse("http://[::1]:9980/").unwrap(),
            Endpoint::Tcp("[::1]:9980".into())
        );
        assert!(Endpoint::parse("https://host:1").is_err());
        assert!(Endpoint::parse("http://host:1/v1").is_err());
        assert!(Endpoint::parse("").is_err());
    }
}
