//! End to end: `zos vm start/list/stop` with the real `zos` binary, real QEMU guests (the
//! fixtures guest, KVM or TCG as ZOS_GUEST_ACCEL says, auto by default), the root
//! filesystem packed into an flist and served by `zos vm fs serve`, a host share through
//! virtiofsd, the SSH key through the configuration share, and a real SSH login.
//!
//! Needs: `zos` built (`cargo build -p control --bin zos`), qemu-system-x86 (with
//! /usr/lib/qemu/virtiofsd, or the virtiofsd package), openssh-client (ssh, ssh-keygen),
//! cpio, tar, and the guest image (built on first use by fixtures/guest/build.sh).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use common::{failure_stderr, success_stdout, zos_binary};
use fixtures::guest::GuestImage;

/// ssh options for a throwaway guest: no host key checks, no prompts, a bounded connect.
const SSH_OPTIONS: [&str; 8] = [
    "-o",
    "StrictHostKeyChecking=no",
    "-o",
    "UserKnownHostsFile=/dev/null",
    "-o",
    "BatchMode=yes",
    "-o",
    "ConnectTimeout=60",
];

struct Env {
    state_dir: PathBuf,
    accel: String,
}

impl Env {
    fn zos(&self, args: &[&str]) -> Output {
        Command::new(zos_binary())
            .args(args)
            .env("ZOS_VM_STATE_DIR", &self.state_dir)
            .env("ZOS_GUEST_DIR", GuestImage::cache_dir())
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    fn ok(&self, args: &[&str]) -> String {
        success_stdout(format_args!("zos {args:?}"), &self.zos(args))
    }

    fn err(&self, args: &[&str]) -> String {
        failure_stderr(format_args!("zos {args:?}"), &self.zos(args))
    }

    fn list(&self) -> serde_json::Value {
        serde_json::from_str(&self.ok(&["vm", "list", "--json"])).unwrap()
    }

    fn vm(&self, name: &str) -> serde_json::Value {
        self.list()
            .as_array()
            .unwrap()
            .iter()
            .find(|vm| vm["name"] == name)
            .unwrap_or_else(|| panic!("{name} missing from zos vm list"))
            .clone()
    }
}

fn run(program: &str, args: &[&str]) -> String {
    let output = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|error| {
            panic!("{program} could not run ({error}): apt-get install openssh-client coreutils")
        });
    success_stdout(format_args!("{program} {args:?}"), &output)
}

fn as_refs(args: &[String]) -> Vec<&str> {
    args.iter().map(String::as_str).collect()
}

fn pids(vm: &serde_json::Value) -> Vec<u32> {
    let mut pids: Vec<u32> = vm["processes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|process| process["pid"].as_u64().unwrap() as u32)
        .collect();
    pids.push(vm["supervisor_pid"].as_u64().unwrap() as u32);
    pids
}

fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|stat| {
            stat.rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().next())
                .is_some_and(|state| state != "Z")
        })
        .unwrap_or(false)
}

fn sockets_in(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .map(|entry| entry.path())
                .filter(|path| path.extension().is_some_and(|ext| ext == "sock"))
                .collect()
        })
        .unwrap_or_default()
}

/// Two VMs at once from one flist: the first with a host share and an SSH key. The key and
/// the share reach the guest (console report, real SSH login, a file written by the guest
/// read on the host); `zos vm list --json` shows both; a name in use and other misuse are
/// refused; `zos vm stop` shuts the first down cleanly; the second's supervisor is killed
/// and its processes follow it; no process or socket is left behind.
#[test]
fn start_list_stop_with_share_and_ssh_key() {
    let image =
        GuestImage::ensure().expect("guest image (apt-get install cpio fio qemu-system-x86)");
    let work = tempfile::tempdir().unwrap();
    let env = Env {
        state_dir: work.path().join("state"),
        accel: std::env::var("ZOS_GUEST_ACCEL").unwrap_or_else(|_| "auto".to_owned()),
    };
    let store = work.path().join("store");
    let cache = work.path().join("cache");
    let flist = work.path().join("root.fl");
    std::fs::create_dir_all(&store).unwrap();
    let store_url = format!("dir://{}", store.display());
    env.ok(&[
        "flist",
        "pack",
        image.rootfs_tar.to_str().unwrap(),
        "-o",
        flist.to_str().unwrap(),
        "--store",
        &store_url,
    ]);
    let key = work.path().join("key");
    run(
        "ssh-keygen",
        &["-q", "-t", "ed25519", "-N", "", "-f", key.to_str().unwrap()],
    );
    let public_key = work.path().join("key.pub");
    let share = work.path().join("share");
    std::fs::create_dir_all(&share).unwrap();
    let token = format!("host-token-{}", std::process::id());
    std::fs::write(share.join("from-host.txt"), format!("{token}\n")).unwrap();
    let share_arg = format!("{}:hostshare", share.display());

    let start = |name: &str, extra: &[&str]| -> Vec<String> {
        let mut args: Vec<String> = ["vm", "start", "-n", name]
            .iter()
            .map(|arg| (*arg).to_owned())
            .collect();
        // Defaults, unless the case gives its own.
        for (flag, value) in [("--mem", "256M"), ("--disksize", "64M")] {
            if !extra.contains(&flag) {
                args.extend([flag.to_owned(), value.to_owned()]);
            }
        }
        args.extend(
            [
                "--flist",
                flist.to_str().unwrap(),
                "--cache",
                cache.to_str().unwrap(),
                "--accel",
                &env.accel,
                "--boot-timeout",
                "150",
            ]
            .iter()
            .map(|arg| (*arg).to_owned()),
        );
        args.extend(extra.iter().map(|arg| (*arg).to_owned()));
        args
    };

    // Misuse, before any boot.
    let missing = work.path().join("missing.fl");
    let error = env.err(&[
        "vm",
        "start",
        "-n",
        "bad",
        "--flist",
        missing.to_str().unwrap(),
    ]);
    assert!(
        error.contains("flist") && error.contains("missing.fl"),
        "{error}"
    );
    let error = env.err(&as_refs(&start(
        "bad",
        &["--kernel", "/nonexistent/vmlinuz"],
    )));
    assert!(error.contains("kernel /nonexistent/vmlinuz"), "{error}");
    let error = env.err(&as_refs(&start("bad", &["--mem", "60T"])));
    assert!(error.contains("not enough memory"), "{error}");
    let error = env.err(&as_refs(&start("bad", &["--disksize", "12Q"])));
    assert!(error.contains("--disksize"), "{error}");
    let error = env.err(&as_refs(&start(
        "bad",
        &["--ssh-key", key.to_str().unwrap()],
    )));
    assert!(error.contains("private key"), "{error}");
    let error = env.err(&as_refs(&start("bad", &["--share", "/nonexistent:x"])));
    assert!(error.contains("/nonexistent"), "{error}");
    let error = env.err(&as_refs(&start("bad/name", &[])));
    assert!(error.contains("VM name"), "{error}");
    // A socket path of the VM that another process listens on.
    std::fs::create_dir_all(env.state_dir.join("taken")).unwrap();
    let taken = env.state_dir.join("taken").join("disk.sock");
    let _listener = std::os::unix::net::UnixListener::bind(&taken).unwrap();
    let error = env.err(&as_refs(&start("taken", &[])));
    assert!(error.contains("disk.sock is taken"), "{error}");

    // A root filesystem without /sbin/init: the guest's init says so, start fails with the
    // console's last lines, and nothing of the VM keeps running.
    let empty_root = work.path().join("empty-root");
    std::fs::create_dir_all(&empty_root).unwrap();
    let error = env.err(&[
        "vm",
        "start",
        "-n",
        "broken",
        "--mem",
        "256M",
        "--disksize",
        "16M",
        "--root-dir",
        empty_root.to_str().unwrap(),
        "--accel",
        &env.accel,
    ]);
    assert!(
        error.contains("ZOS-VM-FAILED: no /sbin/init") && error.contains("last console lines"),
        "{error}"
    );
    let broken = env.vm("broken");
    assert_eq!(broken["state"], "failed", "{broken}");
    assert!(broken["processes"].as_array().unwrap().is_empty());
    assert!(sockets_in(&env.state_dir.join("broken")).is_empty());

    // Two VMs at once.
    let output = env.ok(&as_refs(&start(
        "vm-a",
        &[
            "--ssh-key",
            public_key.to_str().unwrap(),
            "--share",
            &share_arg,
        ],
    )));
    assert!(output.contains("started vm-a"), "{output}");
    let output = env.ok(&as_refs(&start("vm-b", &[])));
    assert!(output.contains("started vm-b"), "{output}");

    // The name is taken while vm-a runs.
    let error = env.err(&as_refs(&start("vm-a", &[])));
    assert!(error.contains("already running"), "{error}");

    let vm_a = env.vm("vm-a");
    let vm_b = env.vm("vm-b");
    assert_eq!(vm_a["state"], "running", "{vm_a}");
    assert_eq!(vm_b["state"], "running", "{vm_b}");
    assert_eq!(vm_a["memory_bytes"], 256u64 << 20);
    assert_eq!(vm_a["disk_bytes"], 64u64 << 20);
    assert_eq!(
        vm_a["root"],
        flist.canonicalize().unwrap().to_str().unwrap()
    );
    assert_ne!(vm_a["ssh_port"], vm_b["ssh_port"]);
    let roles: Vec<&str> = vm_a["processes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|process| process["role"].as_str().unwrap())
        .collect();
    for role in ["qemu", "root", "config", "share-0", "disk"] {
        assert!(roles.contains(&role), "{role} missing: {vm_a}");
    }
    for process in vm_a["processes"].as_array().unwrap() {
        let socket = Path::new(process["socket"].as_str().unwrap());
        assert!(socket.exists(), "{} missing", socket.display());
    }
    let all_pids: Vec<u32> = pids(&vm_a).into_iter().chain(pids(&vm_b)).collect();
    assert!(all_pids.iter().all(|pid| alive(*pid)), "{all_pids:?}");

    // The key reached the guest: the init reports its hash, and SSH logs in with it.
    let console = std::fs::read_to_string(vm_a["console"].as_str().unwrap())
        .unwrap()
        .replace('\r', "");
    let key_hash = run("sha256sum", &[public_key.to_str().unwrap()]);
    let key_hash = key_hash.split_whitespace().next().unwrap();
    assert!(
        console.contains(&format!("ZOS-VM-KEYS={key_hash}")),
        "{console}"
    );
    assert!(console.contains("ZOS-VM-SHARE=hostshare"), "{console}");
    assert!(console.contains("ZOS-VM-SSH=listening"), "{console}");
    let port = vm_a["ssh_port"].as_u64().unwrap().to_string();
    let mut ssh_arguments = vec!["-i", key.to_str().unwrap(), "-p", &port];
    ssh_arguments.extend(SSH_OPTIONS);
    ssh_arguments.extend([
        "-o",
        "LogLevel=ERROR",
        "root@127.0.0.1",
        "echo SHARE=$(cat /mnt/hostshare/from-host.txt); echo from-guest-$(hostname) > /mnt/hostshare/from-guest.txt; echo DISK=$(cat /sys/block/vda/size); echo ROOT=$(head -1 /etc/inittab)",
    ]);
    let guest = run("ssh", &ssh_arguments);
    assert!(guest.contains(&format!("SHARE={token}")), "{guest}");
    assert!(guest.contains("DISK=131072"), "{guest}");
    assert!(guest.contains("ROOT=::sysinit:/etc/init.d/rcS"), "{guest}");
    assert_eq!(
        std::fs::read_to_string(share.join("from-guest.txt")).unwrap(),
        "from-guest-vm-a\n"
    );
    // vm-b got no key: nobody may log in.
    let denied = Command::new("ssh")
        .args(["-i", key.to_str().unwrap(), "-p"])
        .arg(vm_b["ssh_port"].as_u64().unwrap().to_string())
        .args(SSH_OPTIONS)
        .args(["root@127.0.0.1", "true"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let denied_text = String::from_utf8_lossy(&denied.stderr);
    assert!(
        !denied.status.success() && denied_text.contains("Permission denied"),
        "vm-b should refuse the key: {denied_text}"
    );

    // vm-a: a clean shutdown through the ACPI power button.
    let output = env.ok(&["vm", "stop", "vm-a"]);
    assert!(output.contains("the guest shut down"), "{output}");
    assert_eq!(env.vm("vm-a")["state"], "stopped");

    // vm-b: its supervisor is SIGKILLed; its children follow it (PR_SET_PDEATHSIG), the
    // list calls it dead, and stop removes the leftovers.
    let supervisor = vm_b["supervisor_pid"].as_u64().unwrap() as i32;
    // SAFETY: a signal to a process this test started (through zos vm start).
    assert_eq!(unsafe { libc::kill(supervisor, libc::SIGKILL) }, 0);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while pids(&vm_b).iter().any(|pid| alive(*pid)) && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert_eq!(env.vm("vm-b")["state"], "dead");
    let output = env.ok(&["vm", "stop", "vm-b"]);
    assert!(output.contains("not running"), "{output}");

    // Nothing left behind.
    let still: Vec<u32> = all_pids.iter().copied().filter(|pid| alive(*pid)).collect();
    assert!(still.is_empty(), "processes left behind: {still:?}");
    for name in ["vm-a", "vm-b"] {
        let dir = env.state_dir.join(name);
        assert!(sockets_in(&dir).is_empty(), "{:?}", sockets_in(&dir));
        assert!(!dir.join("config").exists());
    }
    let output = env.ok(&["vm", "stop", "vm-a", "--rm"]);
    assert!(output.contains("not running"), "{output}");
    assert!(!env.state_dir.join("vm-a").exists());
    let error = env.err(&["vm", "stop", "vm-a"]);
    assert!(error.contains("no VM named vm-a"), "{error}");
}
