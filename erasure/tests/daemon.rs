//! The daemon's HTTP API over its unix socket, spoken as raw HTTP/1.1 so the test depends on
//! nothing but the socket. Backends are local folders here; the Python and Go clients test
//! the same API against real zdb servers.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use erasure::daemon::{serve, Listen};
use erasure::zstor::Zstor;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

struct Reply {
    status: u16,
    headers: String,
    body: Vec<u8>,
}

async fn request(
    socket: &std::path::Path,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: &[u8],
) -> Reply {
    let mut stream = tokio::net::UnixStream::connect(socket).await.unwrap();
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: zstor\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    if let Some(token) = token {
        head.push_str(&format!("Authorization: Bearer {token}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(body).await.unwrap();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await.unwrap();
    let split = response
        .windows(4)
        .position(|window| window == b"\r\n\r\n")
        .unwrap();
    let headers = String::from_utf8_lossy(&response[..split]).into_owned();
    let status = headers[9..12].parse().unwrap();
    let mut body = response[split + 4..].to_vec();
    if headers
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        body = dechunk(&body);
    }
    Reply {
        status,
        headers,
        body,
    }
}

fn dechunk(mut input: &[u8]) -> Vec<u8> {
    let mut output = Vec::new();
    loop {
        let line_end = input
            .windows(2)
            .position(|window| window == b"\r\n")
            .unwrap();
        let size =
            usize::from_str_radix(std::str::from_utf8(&input[..line_end]).unwrap().trim(), 16)
                .unwrap();
        input = &input[line_end + 2..];
        if size == 0 {
            return output;
        }
        output.extend_from_slice(&input[..size]);
        input = &input[size + 2..];
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_objects_chunks_and_reports_with_a_token() {
    let folder = tempfile::tempdir().unwrap();
    let config = common::folder_config(folder.path(), 64 * 1024);
    let token = config.daemon.token.clone();
    let zstor = Arc::new(Zstor::open(config).unwrap());
    let socket = folder.path().join("zstor.sock");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(serve(
        zstor,
        token.clone(),
        Listen {
            socket: Some(socket.clone()),
            tcp: None,
        },
        async move {
            let _ = stopped.await;
        },
    ));
    for _ in 0..200 {
        if socket.exists() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&socket).unwrap().permissions().mode() & 0o777,
        0o600
    );

    let token = Some(token.as_str());
    assert_eq!(
        request(&socket, "GET", "/v1/objects", None, b"")
            .await
            .status,
        401
    );
    assert_eq!(
        request(&socket, "GET", "/v1/objects", Some("wrong"), b"")
            .await
            .status,
        401
    );

    let data: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let put = request(&socket, "PUT", "/v1/objects/dir/file.bin", token, &data).await;
    assert_eq!(put.status, 201, "{}", String::from_utf8_lossy(&put.body));
    let report: serde_json::Value = serde_json::from_slice(&put.body).unwrap();
    assert_eq!(report["size"], 300_000);
    assert_eq!(report["chunks"], 5);

    let got = request(&socket, "GET", "/v1/objects/dir/file.bin", token, b"").await;
    assert_eq!(got.status, 200);
    assert_eq!(got.body, data);
    let head = request(&socket, "HEAD", "/v1/objects/dir/file.bin", token, b"").await;
    assert_eq!(head.status, 200);
    assert!(
        head.headers
            .to_ascii_lowercase()
            .contains("content-length: 300000"),
        "{}",
        head.headers
    );
    assert!(head.headers.contains(report["blake3"].as_str().unwrap()));

    let list = request(&socket, "GET", "/v1/objects", token, b"").await;
    let list: serde_json::Value = serde_json::from_slice(&list.body).unwrap();
    assert_eq!(list[0]["name"], "dir/file.bin");

    let chunk = request(&socket, "PUT", "/v1/chunks/abcd", token, b"chunk bytes").await;
    assert_eq!(chunk.status, 201);
    assert_eq!(
        request(&socket, "GET", "/v1/chunks/abcd", token, b"")
            .await
            .body,
        b"chunk bytes"
    );
    assert_eq!(
        request(&socket, "GET", "/v1/chunks/zz", token, b"")
            .await
            .status,
        400
    );
    assert_eq!(
        request(&socket, "GET", "/v1/chunks/abce", token, b"")
            .await
            .status,
        404
    );

    let key = hex::encode(b"zs:m:dir/file.bin");
    let raw = request(&socket, "GET", &format!("/v1/shards/0/{key}"), token, b"").await;
    assert_eq!(raw.status, 200);
    assert_eq!(&raw.body[..4], b"ZSMR");

    let check = request(&socket, "POST", "/v1/check", token, b"").await;
    let check: serde_json::Value = serde_json::from_slice(&check.body).unwrap();
    assert_eq!(check.as_array().unwrap().len(), 2);
    assert!(check
        .as_array()
        .unwrap()
        .iter()
        .all(|object| object["problems"].as_array().unwrap().is_empty()));
    let repair = request(&socket, "POST", "/v1/repair?key=dir/file.bin", token, b"").await;
    assert_eq!(repair.status, 200);
    let status = request(&socket, "GET", "/v1/status", token, b"").await;
    let status: serde_json::Value = serde_json::from_slice(&status.body).unwrap();
    assert_eq!(status.as_array().unwrap().len(), 6);
    assert!(status
        .as_array()
        .unwrap()
        .iter()
        .all(|backend| backend["reachable"] == true));

    let metrics =
        String::from_utf8(request(&socket, "GET", "/metrics", token, b"").await.body).unwrap();
    assert!(
        metrics.contains("zstor_objects_stored_total 1"),
        "{metrics}"
    );
    assert!(metrics.contains("zstor_unauthorized_total 2"), "{metrics}");

    assert_eq!(
        request(&socket, "DELETE", "/v1/objects/dir/file.bin", token, b"")
            .await
            .status,
        204
    );
    assert_eq!(
        request(&socket, "GET", "/v1/objects/dir/file.bin", token, b"")
            .await
            .status,
        404
    );

    stop.send(()).unwrap();
    server.await.unwrap().unwrap();
    assert!(!socket.exists());
}
