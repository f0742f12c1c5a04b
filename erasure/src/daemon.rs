//! The zstor daemon: an HTTP API (axum) over a unix socket and optionally TCP, in front of
//! one [`Zstor`]. Every request needs `Authorization: Bearer <token>` from the config.
//! Object bodies stream both ways; memory stays at a few chunks per transfer.
//! The API is described in `docs/openapi.yaml`.

pub mod client;

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{DefaultBodyLimit, Path, Query, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures::TryStreamExt;
use serde::Deserialize;
use tokio_util::io::{ReaderStream, StreamReader};

use crate::store::ChunkStore;
use crate::zstor::{Zstor, ZstorError};

/// Bytes buffered between a running get and the HTTP response body.
pub const STREAM_BUFFER_BYTES: usize = 1 << 20;
/// Largest body of a low-level chunk PUT.
pub const CHUNK_BODY_BYTES_MAX: usize = 64 * 1024 * 1024;
/// Concurrent requests served at most; more wait.
pub const REQUESTS_IN_FLIGHT_MAX: usize = 64;

/// Errors starting the daemon.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DaemonError {
    /// The config has no token.
    #[error("the config's [daemon] token is empty: every request must carry a bearer token")]
    NoToken,
    /// Binding or serving failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
}

#[derive(Debug, Default)]
struct Metrics {
    requests: AtomicU64,
    unauthorized: AtomicU64,
    errors: AtomicU64,
    bytes_stored: AtomicU64,
    bytes_served: AtomicU64,
    objects_stored: AtomicU64,
    objects_served: AtomicU64,
}

#[derive(Debug)]
struct AppState {
    zstor: Arc<Zstor>,
    token: String,
    metrics: Metrics,
    limiter: tokio::sync::Semaphore,
}

type Shared = Arc<AppState>;

/// Where the daemon listens.
#[derive(Debug, Clone)]
pub struct Listen {
    /// Unix socket path (created with mode 0600; an old socket file is replaced).
    pub socket: Option<PathBuf>,
    /// TCP address, e.g. `127.0.0.1:9980`.
    pub tcp: Option<String>,
}

fn error_response(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(serde_json::json!({ "error": message.into() }))).into_response()
}

fn zstor_error(state: &AppState, error: ZstorError) -> Response {
    state.metrics.errors.fetch_add(1, Ordering::Relaxed);
    let status = match &error {
        ZstorError::NotFound(_) => StatusCode::NOT_FOUND,
        ZstorError::Meta(_) => StatusCode::BAD_REQUEST,
        ZstorError::WriteFailed { .. }
        | ZstorError::MetadataWriteFailed { .. }
        | ZstorError::ReadFailed { .. }
        | ZstorError::MetadataUnavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    error_response(status, error.to_string())
}

fn tokens_match(given: &[u8], expected: &[u8]) -> bool {
    // Constant time in the token's content: the length is not secret.
    given.len() == expected.len()
        && given
            .iter()
            .zip(expected)
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
}

async fn authorize(State(state): State<Shared>, request: Request, next: Next) -> Response {
    state.metrics.requests.fetch_add(1, Ordering::Relaxed);
    let given = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "))
        .unwrap_or("");
    if !tokens_match(given.as_bytes(), state.token.as_bytes()) {
        state.metrics.unauthorized.fetch_add(1, Ordering::Relaxed);
        let mut response =
            error_response(StatusCode::UNAUTHORIZED, "missing or wrong bearer token");
        response
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        return response;
    }
    let Ok(_permit) = state.limiter.acquire().await else {
        return error_response(StatusCode::SERVICE_UNAVAILABLE, "shutting down");
    };
    next.run(request).await
}

/// The daemon's routes over `zstor`, protected by `token`.
pub fn router(zstor: Arc<Zstor>, token: String) -> Router {
    let state: Shared = Arc::new(AppState {
        zstor,
        token,
        metrics: Metrics::default(),
        limiter: tokio::sync::Semaphore::new(REQUESTS_IN_FLIGHT_MAX),
    });
    Router::new()
        .route("/v1/objects", get(list_objects))
        .route(
            "/v1/objects/{*key}",
            get(get_object)
                .head(head_object)
                .put(put_object)
                .delete(delete_object)
                .layer(DefaultBodyLimit::disable()),
        )
        .route(
            "/v1/chunks/{id}",
            get(get_chunk)
                .head(head_chunk)
                .put(put_chunk)
                .delete(delete_chunk)
                .layer(DefaultBodyLimit::max(CHUNK_BODY_BYTES_MAX)),
        )
        .route("/v1/shards/{backend}/{key}", get(get_shard))
        .route("/v1/check", post(check))
        .route("/v1/repair", post(repair))
        .route("/v1/status", get(status))
        .route("/metrics", get(metrics))
        .layer(middleware::from_fn_with_state(state.clone(), authorize))
        .with_state(state)
}

async fn list_objects(State(state): State<Shared>) -> Response {
    match state.zstor.list().await {
        Ok(objects) => Json(objects).into_response(),
        Err(error) => zstor_error(&state, error),
    }
}

fn object_headers(size: u64, hash: &[u8; 32]) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(size));
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    if let Ok(etag) = HeaderValue::from_str(&format!("\"{}\"", hex::encode(hash))) {
        headers.insert(header::ETAG, etag);
    }
    headers
}

async fn head_object(State(state): State<Shared>, Path(key): Path<String>) -> Response {
    match state.zstor.read_head(key.as_bytes()).await {
        Ok(head) => (
            StatusCode::OK,
            object_headers(head.size, &head.content_hash),
        )
            .into_response(),
        Err(error) => zstor_error(&state, error),
    }
}

async fn get_object(State(state): State<Shared>, Path(key): Path<String>) -> Response {
    let head = match state.zstor.read_head(key.as_bytes()).await {
        Ok(head) => head,
        Err(error) => return zstor_error(&state, error),
    };
    let (writer, reader) = tokio::io::duplex(STREAM_BUFFER_BYTES);
    let task_state = state.clone();
    tokio::spawn(async move {
        // An error ends the body early: the client sees fewer bytes than Content-Length
        // and fails; it never receives unverified bytes.
        match task_state.zstor.get(key.as_bytes(), writer, &|_| {}).await {
            Ok(report) => {
                task_state
                    .metrics
                    .objects_served
                    .fetch_add(1, Ordering::Relaxed);
                task_state
                    .metrics
                    .bytes_served
                    .fetch_add(report.size, Ordering::Relaxed);
            }
            Err(error) => {
                task_state.metrics.errors.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(key, %error, "get failed while streaming");
            }
        }
    });
    (
        StatusCode::OK,
        object_headers(head.size, &head.content_hash),
        Body::from_stream(ReaderStream::new(reader)),
    )
        .into_response()
}

async fn put_object(State(state): State<Shared>, Path(key): Path<String>, body: Body) -> Response {
    let stream = body.into_data_stream().map_err(std::io::Error::other);
    let reader = StreamReader::new(stream);
    match state.zstor.put(key.as_bytes(), reader, &|_| {}).await {
        Ok(report) => {
            state.metrics.objects_stored.fetch_add(1, Ordering::Relaxed);
            state
                .metrics
                .bytes_stored
                .fetch_add(report.size, Ordering::Relaxed);
            (StatusCode::CREATED, Json(report)).into_response()
        }
        Err(error) => zstor_error(&state, error),
    }
}

async fn delete_object(State(state): State<Shared>, Path(key): Path<String>) -> Response {
    match state.zstor.delete(key.as_bytes()).await {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(error) => zstor_error(&state, error),
    }
}

fn chunk_id(id: &str) -> Result<Vec<u8>, Box<Response>> {
    hex::decode(id)
        .map_err(|_| Box::new(error_response(StatusCode::BAD_REQUEST, "chunk ids are hex")))
}

fn store_error(state: &AppState, error: crate::store::StoreError) -> Response {
    state.metrics.errors.fetch_add(1, Ordering::Relaxed);
    let status = match error {
        crate::store::StoreError::InvalidId { .. } => StatusCode::BAD_REQUEST,
        _ => StatusCode::SERVICE_UNAVAILABLE,
    };
    error_response(status, error.to_string())
}

async fn get_chunk(State(state): State<Shared>, Path(id): Path<String>) -> Response {
    let id = match chunk_id(&id) {
        Ok(id) => id,
        Err(response) => return *response,
    };
    match ChunkStore::get(state.zstor.as_ref(), &id).await {
        Ok(Some(data)) => (StatusCode::OK, data).into_response(),
        Ok(None) => error_response(StatusCode::NOT_FOUND, "no such chunk"),
        Err(error) => store_error(&state, error),
    }
}

async fn head_chunk(State(state): State<Shared>, Path(id): Path<String>) -> Response {
    let id = match chunk_id(&id) {
        Ok(id) => id,
        Err(response) => return *response,
    };
    match ChunkStore::exists(state.zstor.as_ref(), &id).await {
        Ok(true) => StatusCode::OK.into_response(),
        Ok(false) => StatusCode::NOT_FOUND.into_response(),
        Err(error) => store_error(&state, error),
    }
}

async fn put_chunk(
    State(state): State<Shared>,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> Response {
    let id = match chunk_id(&id) {
        Ok(id) => id,
        Err(response) => return *response,
    };
    match ChunkStore::put(state.zstor.as_ref(), &id, &body).await {
        Ok(()) => StatusCode::CREATED.into_response(),
        Err(error) => store_error(&state, error),
    }
}

async fn delete_chunk(State(state): State<Shared>, Path(id): Path<String>) -> Response {
    let id = match chunk_id(&id) {
        Ok(id) => id,
        Err(response) => return *response,
    };
    match ChunkStore::delete(state.zstor.as_ref(), &id).await {
        Ok(true) => StatusCode::NO_CONTENT.into_response(),
        Ok(false) => error_response(StatusCode::NOT_FOUND, "no such chunk"),
        Err(error) => store_error(&state, error),
    }
}

async fn get_shard(
    State(state): State<Shared>,
    Path((backend, key)): Path<(usize, String)>,
) -> Response {
    let Ok(key) = hex::decode(&key) else {
        return error_response(StatusCode::BAD_REQUEST, "shard keys are hex");
    };
    let Some(store) = state.zstor.backend_store(backend) else {
        return error_response(StatusCode::NOT_FOUND, format!("no backend {backend}"));
    };
    match store.get(&key).await {
        Ok(Some(data)) => (StatusCode::OK, data).into_response(),
        Ok(None) => error_response(StatusCode::NOT_FOUND, "no such key on that backend"),
        Err(error) => store_error(&state, error),
    }
}

#[derive(Debug, Deserialize)]
struct KeyQuery {
    key: Option<String>,
}

async fn check(State(state): State<Shared>, Query(query): Query<KeyQuery>) -> Response {
    match state
        .zstor
        .check(query.key.as_deref().map(str::as_bytes), &|_| {})
        .await
    {
        Ok(checks) => Json(checks).into_response(),
        Err(error) => zstor_error(&state, error),
    }
}

async fn repair(State(state): State<Shared>, Query(query): Query<KeyQuery>) -> Response {
    match state
        .zstor
        .repair(query.key.as_deref().map(str::as_bytes), &|_| {})
        .await
    {
        Ok(repairs) => Json(repairs).into_response(),
        Err(error) => zstor_error(&state, error),
    }
}

async fn status(State(state): State<Shared>) -> Response {
    Json(state.zstor.status().await).into_response()
}

async fn metrics(State(state): State<Shared>) -> Response {
    let metrics = &state.metrics;
    let mut text = String::new();
    let mut counter = |name: &str, help: &str, value: &AtomicU64| {
        text.push_str(&format!(
            "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}\n",
            value.load(Ordering::Relaxed)
        ));
    };
    counter(
        "zstor_requests_total",
        "HTTP requests received.",
        &metrics.requests,
    );
    counter(
        "zstor_unauthorized_total",
        "Requests refused for a missing or wrong token.",
        &metrics.unauthorized,
    );
    counter(
        "zstor_errors_total",
        "Requests that failed.",
        &metrics.errors,
    );
    counter(
        "zstor_objects_stored_total",
        "Objects stored.",
        &metrics.objects_stored,
    );
    counter(
        "zstor_objects_served_total",
        "Objects read back in full.",
        &metrics.objects_served,
    );
    counter(
        "zstor_stored_bytes_total",
        "Object bytes stored.",
        &metrics.bytes_stored,
    );
    counter(
        "zstor_served_bytes_total",
        "Object bytes served.",
        &metrics.bytes_served,
    );
    let statuses = state.zstor.status().await;
    text.push_str(
        "# HELP zstor_backend_up Whether a backend answers.\n# TYPE zstor_backend_up gauge\n",
    );
    for backend in &statuses {
        text.push_str(&format!(
            "zstor_backend_up{{backend=\"{}\"}} {}\n",
            backend.backend.replace('"', "'"),
            u8::from(backend.reachable)
        ));
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}

/// Serves the API until `shutdown` completes.
pub async fn serve(
    zstor: Arc<Zstor>,
    token: String,
    listen: Listen,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), DaemonError> {
    if token.is_empty() {
        return Err(DaemonError::NoToken);
    }
    let app = router(zstor, token);
    let (stop_sender, _) = tokio::sync::broadcast::channel::<()>(1);
    let mut servers = tokio::task::JoinSet::new();
    if let Some(path) = &listen.socket {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(|source| DaemonError::Io {
                context: format!("creating {}", parent.display()),
                source,
            })?;
        }
        match std::fs::remove_file(path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(DaemonError::Io {
                    context: format!("removing the old socket {}", path.display()),
                    source,
                })
            }
        }
        let listener = tokio::net::UnixListener::bind(path).map_err(|source| DaemonError::Io {
            context: format!("binding {}", path.display()),
            source,
        })?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(
            |source| DaemonError::Io {
                context: format!("restricting {}", path.display()),
                source,
            },
        )?;
        let app = app.clone();
        let mut stop = stop_sender.subscribe();
        servers.spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = stop.recv().await;
                })
                .await
        });
    }
    if let Some(address) = &listen.tcp {
        let listener = tokio::net::TcpListener::bind(address)
            .await
            .map_err(|source| DaemonError::Io {
                context: format!("binding {address}"),
                source,
            })?;
        let mut stop = stop_sender.subscribe();
        servers.spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = stop.recv().await;
                })
                .await
        });
    }
    if servers.is_empty() {
        return Err(DaemonError::Io {
            context: "nothing to listen on".into(),
            source: std::io::ErrorKind::InvalidInput.into(),
        });
    }
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop_sender.send(());
    });
    while let Some(result) = servers.join_next().await {
        match result {
            Ok(Ok(())) => {}
            Ok(Err(source)) => {
                return Err(DaemonError::Io {
                    context: "serving".into(),
                    source,
                })
            }
            Err(error) => {
                return Err(DaemonError::Io {
                    context: "server task".into(),
                    source: std::io::Error::other(error.to_string()),
                })
            }
        }
    }
    if let Some(path) = &listen.socket {
        let _ = std::fs::remove_file(path);
    }
    Ok(())
}
