//! Helpers shared by the end-to-end tests: start the real `zdb` binary on a free port and
//! stop it (politely or with SIGKILL), through `fixtures::zdb`; raw bytes and redis-cli.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use fixtures::zdb::ZdbProcess;

/// The real `zdb` binary of this build, run by `fixtures::zdb::ZdbProcess` (which kills it
/// when dropped).
pub struct Zdb {
    pub port: u16,
    process: ZdbProcess,
}

/// Sends raw bytes and returns what the server answers within a short time (nothing when
/// nobody listens).
pub fn raw(port: u16, bytes: &[u8]) -> Vec<u8> {
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) else {
        return Vec::new();
    };
    stream
        .set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    stream.write_all(bytes).unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(_) => break,
        }
    }
    out
}

impl Zdb {
    /// Starts zdb with its data under `dir`, and waits until it answers PING.
    pub fn start(dir: &Path, args: &[&str]) -> Zdb {
        let process = ZdbProcess::start(Path::new(env!("CARGO_BIN_EXE_zdb")), dir, args);
        Zdb {
            port: process.port(),
            process,
        }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    pub fn connection(&self) -> redis::Connection {
        redis::Client::open(self.url())
            .unwrap()
            .get_connection()
            .unwrap()
    }

    pub fn kill9(mut self) {
        self.process.kill();
    }

    /// SIGTERM, and wait for a clean exit.
    pub fn stop(mut self) {
        self.process.stop();
    }

    /// A clean stop, then the same server (port, data, flags) started again.
    pub fn restart(mut self) -> Zdb {
        self.process.restart();
        self
    }

    pub fn log(&self) -> String {
        self.process.log()
    }
}

/// Runs redis-cli against the server; the test fails loudly when redis-cli is missing.
pub fn redis_cli(port: u16, args: &[&str], stdin: Option<&str>) -> String {
    let mut command = Command::new("redis-cli");
    command.arg("-p").arg(port.to_string()).args(args);
    command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = command
        .spawn()
        .expect("redis-cli is needed by this test: apt-get install redis-tools");
    {
        let mut input = child.stdin.take().unwrap();
        if let Some(text) = stdin {
            input.write_all(text.as_bytes()).unwrap();
        }
    }
    let output = child.wait_with_output().unwrap();
    String::from_utf8_lossy(&output.stdout)
        .trim_end()
        .to_string()
}
