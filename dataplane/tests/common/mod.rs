//! Helpers shared by the end-to-end tests: start the real `zdb` binary on a free port and
//! stop it (politely or with SIGKILL).
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Zdb {
    pub port: u16,
    pub child: Child,
    pub dir: PathBuf,
    pub args: Vec<String>,
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
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
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        for _ in 0..5 {
            let port = free_port();
            let mut child = Command::new(env!("CARGO_BIN_EXE_zdb"))
                .arg("--listen")
                .arg("127.0.0.1")
                .arg("--port")
                .arg(port.to_string())
                .arg("--data")
                .arg(dir.join("data"))
                .arg("--index")
                .arg(dir.join("index"))
                .args(&args)
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(dir.join(format!("zdb-{port}.log"))).unwrap())
                .spawn()
                .expect("start zdb");
            let deadline = Instant::now() + Duration::from_secs(20);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    break;
                }
                if raw(port, b"PING\r\n").starts_with(b"+PONG") {
                    return Zdb {
                        port,
                        child,
                        dir: dir.to_path_buf(),
                        args,
                    };
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!("zdb did not start; logs in {}", dir.display());
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
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, and wait for a clean exit.
    pub fn stop(mut self) {
        unsafe_free_sigterm(self.child.id());
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                assert!(status.success(), "zdb exited with {status}");
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("zdb did not stop on SIGTERM");
    }

    pub fn restart(self) -> Zdb {
        let dir = self.dir.clone();
        let args = self.args.clone();
        self.stop();
        let refs: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
        Zdb::start(&dir, &refs)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join(format!("zdb-{}.log", self.port))).unwrap_or_default()
    }
}

fn unsafe_free_sigterm(pid: u32) {
    let status = Command::new("kill")
        .arg("-TERM")
        .arg(pid.to_string())
        .status()
        .expect("kill");
    assert!(status.success());
}

impl Drop for Zdb {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
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
