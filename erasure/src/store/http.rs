//! `http(s)://...`: a read-only chunk store on a web server, in the `dir` layout.
//!
//! `GET <base>/<first two hex digits>/<hex of id>`; 404 means "not stored". The blocking
//! client runs on tokio's blocking pool, with connect and overall timeouts so a dead server
//! cannot hang a reader.

use std::io::Read;
use std::time::Duration;

use super::{check_id, ChunkStore, StoreError, VALUE_BYTES_MAX};

/// How long to wait for a TCP (and TLS) connection.
pub const HTTP_CONNECT_TIMEOUT_MS: u64 = 10_000;
/// How long one whole request may take, body included.
pub const HTTP_REQUEST_TIMEOUT_MS: u64 = 120_000;

/// A read-only chunk store served over HTTP or HTTPS.
#[derive(Debug, Clone)]
pub struct HttpStore {
    base: url::Url,
    agent: ureq::Agent,
}

impl HttpStore {
    /// A store under `base`, which must end with `/`.
    pub fn new(base: url::Url) -> Result<Self, StoreError> {
        if !base.path().ends_with('/') || !matches!(base.scheme(), "http" | "https") {
            return Err(StoreError::InvalidUrl {
                url: base.to_string(),
                reason: "expected http(s)://host/path/".into(),
            });
        }
        let agent = ureq::AgentBuilder::new()
            .timeout_connect(Duration::from_millis(HTTP_CONNECT_TIMEOUT_MS))
            .timeout(Duration::from_millis(HTTP_REQUEST_TIMEOUT_MS))
            .build();
        Ok(HttpStore { base, agent })
    }

    fn chunk_url(&self, id: &[u8]) -> Result<url::Url, StoreError> {
        let hex = hex::encode(id);
        self.base
            .join(&format!("{}/{}", &hex[..2], hex))
            .map_err(|e| StoreError::InvalidUrl {
                url: self.base.to_string(),
                reason: e.to_string(),
            })
    }

    fn backend_error(&self, reason: impl ToString) -> StoreError {
        StoreError::Backend {
            store: self.url(),
            reason: reason.to_string(),
        }
    }

    /// Runs one request; `Ok(None)` for 404.
    async fn request(
        &self,
        method: &'static str,
        id: &[u8],
    ) -> Result<Option<Vec<u8>>, StoreError> {
        check_id(id)?;
        let url = self.chunk_url(id)?;
        let agent = self.agent.clone();
        let store = self.url();
        let result =
            tokio::task::spawn_blocking(move || match agent.request_url(method, &url).call() {
                Ok(response) => {
                    let mut body = Vec::new();
                    if method == "GET" {
                        response
                            .into_reader()
                            .take(VALUE_BYTES_MAX as u64 + 1)
                            .read_to_end(&mut body)
                            .map_err(|e| format!("reading {url}: {e}"))?;
                        if body.len() > VALUE_BYTES_MAX {
                            return Err(format!("{url}: body larger than {VALUE_BYTES_MAX} bytes"));
                        }
                    }
                    Ok(Some(body))
                }
                Err(ureq::Error::Status(404, _)) => Ok(None),
                Err(ureq::Error::Status(code, _)) => Err(format!("{url}: HTTP status {code}")),
                Err(e) => Err(format!("{url}: {e}")),
            })
            .await
            .map_err(|e| StoreError::Backend {
                store,
                reason: e.to_string(),
            })?;
        result.map_err(|reason| self.backend_error(reason))
    }
}

#[async_trait::async_trait]
impl ChunkStore for HttpStore {
    async fn get(&self, id: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.request("GET", id).await
    }

    async fn put(&self, id: &[u8], _data: &[u8]) -> Result<(), StoreError> {
        check_id(id)?;
        Err(StoreError::ReadOnly(self.url()))
    }

    async fn exists(&self, id: &[u8]) -> Result<bool, StoreError> {
        Ok(self.request("HEAD", id).await?.is_some())
    }

    async fn delete(&self, id: &[u8]) -> Result<bool, StoreError> {
        check_id(id)?;
        Err(StoreError::ReadOnly(self.url()))
    }

    fn url(&self) -> String {
        self.base.to_string()
    }

    fn is_read_only(&self) -> bool {
        true
    }
}
