//! Shared helpers of the end-to-end tests: the real `zos` binary, a served volume or flist.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use fixtures::guest::GuestOutput;

/// The `zos` binary: `$ZOS_BIN`, else `zos` in the target directory this test was built in.
/// It must be built first (`cargo build -p control --bin zos`); a missing one fails loudly.
pub fn zos_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("ZOS_BIN") {
        return PathBuf::from(path);
    }
    // The test executable lives in <target>/<profile>/deps/.
    let exe = std::env::current_exe().unwrap();
    let profile_dir = exe.parent().unwrap().parent().unwrap();
    let zos = profile_dir.join("zos");
    assert!(
        zos.is_file(),
        "the zos binary is missing at {}: run `cargo build -p control --bin zos` before these tests (or set ZOS_BIN)",
        zos.display()
    );
    zos
}

/// Runs `zos ARGS...` to completion.
pub fn zos(args: &[&str]) -> Output {
    Command::new(zos_binary())
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

/// Runs `zos ARGS...` and asserts success, returning stdout.
pub fn zos_ok(args: &[&str]) -> String {
    success_stdout(format_args!("zos {args:?}"), &zos(args))
}

/// Runs `zos ARGS...`, asserts failure, returns stderr.
pub fn zos_err(args: &[&str]) -> String {
    failure_stderr(format_args!("zos {args:?}"), &zos(args))
}

/// Asserts that the command `what` succeeded (showing its output otherwise); its stdout.
pub fn success_stdout(what: impl std::fmt::Display, output: &Output) -> String {
    assert!(
        output.status.success(),
        "{what} failed:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Asserts that the command `what` failed (showing its stdout otherwise); its stderr.
pub fn failure_stderr(what: impl std::fmt::Display, output: &Output) -> String {
    assert!(
        !output.status.success(),
        "{what} should have failed:\n{}",
        String::from_utf8_lossy(&output.stdout)
    );
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// A running `zos vm disk serve` or `zos vm fs serve`, killed (SIGKILL) on drop if still
/// running.
pub struct Server {
    pub child: Child,
    pub socket: PathBuf,
    pub log: PathBuf,
}

/// How long a server may take to bind its socket.
const SERVER_START_TIMEOUT: Duration = Duration::from_secs(20);

impl Server {
    /// `zos vm disk serve VOLUME --socket SOCKET EXTRA...`, once it serves.
    pub fn start(volume: &Path, socket: &Path, extra: &[&str]) -> Self {
        let mut arguments: Vec<&OsStr> = vec!["vm".as_ref(), "disk".as_ref(), "serve".as_ref()];
        arguments.extend([volume.as_os_str(), "--socket".as_ref(), socket.as_os_str()]);
        arguments.extend(extra.iter().map(OsStr::new));
        Self::serve(&arguments, socket, "serving vhost-user-blk")
    }

    /// Runs `zos ARGUMENTS...` and waits (bounded) until `socket` exists and the log says
    /// `ready_line` (it comes after the socket is bound; a stale socket file may exist
    /// before).
    pub fn serve(arguments: &[&OsStr], socket: &Path, ready_line: &str) -> Self {
        let log = socket.with_extension("log");
        let log_file = std::fs::File::create(&log).unwrap();
        let child = Command::new(zos_binary())
            .args(arguments)
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().unwrap())
            .stderr(log_file)
            .spawn()
            .unwrap();
        let mut server = Self {
            child,
            socket: socket.to_owned(),
            log,
        };
        let started = Instant::now();
        while !(socket.exists() && server.log_text().contains(ready_line)) {
            if let Some(status) = server.child.try_wait().unwrap() {
                panic!("zos {arguments:?} exited ({status}): {}", server.log_text());
            }
            assert!(
                started.elapsed() < SERVER_START_TIMEOUT,
                "no socket after {SERVER_START_TIMEOUT:?}: {}",
                server.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        server
    }

    /// Asserts that the guest `who` ran its script to the end, showing its console and the
    /// server's log otherwise.
    pub fn assert_completed(&self, output: &GuestOutput, who: &str) {
        assert!(
            output.completed(),
            "{who}: {}\nserver: {}",
            output.tail(30),
            self.log_text()
        );
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Sends SIGTERM and waits for a clean exit.
    pub fn terminate(mut self) {
        // SAFETY: sending a signal to our own child process by its pid.
        let result = unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        assert_eq!(result, 0);
        let status = self.child.wait().unwrap();
        assert!(
            status.success(),
            "serve exited with {status}: {}",
            self.log_text()
        );
        assert!(!self.socket.exists(), "socket left behind after SIGTERM");
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// blake3 of a byte range of a file.
pub fn file_range_hash(path: &Path, offset: u64, length: usize) -> String {
    use std::io::{Read, Seek, SeekFrom};
    let mut file = std::fs::File::open(path).unwrap();
    file.seek(SeekFrom::Start(offset)).unwrap();
    let mut bytes = vec![0u8; length];
    file.read_exact(&mut bytes).unwrap();
    md5_hex(&bytes)
}

/// The guest has busybox md5sum; the host computes the same digest with the `md5sum` tool
/// on the same bytes (coreutils), fed through stdin.
pub fn md5_hex(bytes: &[u8]) -> String {
    use std::io::Write;
    let mut child = Command::new("md5sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("md5sum (coreutils)");
    child.stdin.take().unwrap().write_all(bytes).unwrap();
    let output = child.wait_with_output().unwrap();
    String::from_utf8_lossy(&output.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned()
}
