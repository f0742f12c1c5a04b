//! The raw process calls of the VM supervisor: signal handlers, child set-up before exec
//! (`setsid`, `PR_SET_PDEATHSIG`, the signal mask), sending signals and reading `/proc`.
//! The only `unsafe` code of [`crate::machine`].

use std::io;
use std::os::unix::process::CommandExt;
use std::process::Command;
use std::sync::atomic::{AtomicI32, Ordering};

/// The last termination signal caught by [`install_termination_handler`] (0: none).
static TERMINATION_SIGNAL: AtomicI32 = AtomicI32::new(0);

extern "C" fn remember_signal(signal: libc::c_int) {
    // Only an atomic store: async-signal-safe.
    TERMINATION_SIGNAL.store(signal, Ordering::SeqCst);
}

/// Catches SIGTERM, SIGINT and SIGHUP: they set a flag that [`take_termination_signal`]
/// reads, so the supervisor's loop can stop the VM in an orderly way.
pub fn install_termination_handler() -> io::Result<()> {
    for signal in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP] {
        // SAFETY: a zeroed sigaction is a valid "no flags, empty mask" value; the handler is
        // an `extern "C"` function that only stores into an atomic (async-signal-safe).
        let result = unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = remember_signal as extern "C" fn(libc::c_int) as usize;
            libc::sigemptyset(&mut action.sa_mask);
            libc::sigaction(signal, &action, std::ptr::null_mut())
        };
        if result != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// The termination signal caught since the last call, if any.
pub fn take_termination_signal() -> Option<i32> {
    match TERMINATION_SIGNAL.swap(0, Ordering::SeqCst) {
        0 => None,
        signal => Some(signal),
    }
}

/// How a child is tied to the process that starts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChildTie {
    /// A new session: the child outlives its parent and a terminal's Ctrl-C does not reach
    /// it (the supervisor, started by `zos vm start`).
    Detached,
    /// The child gets SIGTERM when its parent dies (QEMU and the backends, so that nothing
    /// outlives a killed supervisor).
    DiesWithParent,
}

/// Prepares `command` so that the child starts with an empty signal mask and default
/// handlers, tied to its parent as `tie` says.
pub fn tie_child(command: &mut Command, tie: ChildTie) {
    let pre_exec = move || -> io::Result<()> {
        // SAFETY: between fork and exec only async-signal-safe calls are made: sigemptyset,
        // sigprocmask, signal, setsid and prctl, on values owned by this closure.
        unsafe {
            let mut empty: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut empty);
            if libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut()) != 0 {
                return Err(io::Error::last_os_error());
            }
            for signal in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP] {
                libc::signal(signal, libc::SIG_DFL);
            }
            match tie {
                ChildTie::Detached => {
                    if libc::setsid() < 0 {
                        return Err(io::Error::last_os_error());
                    }
                }
                ChildTie::DiesWithParent => {
                    let signal = libc::SIGTERM as libc::c_ulong;
                    if libc::prctl(libc::PR_SET_PDEATHSIG, signal, 0, 0, 0) != 0 {
                        return Err(io::Error::last_os_error());
                    }
                }
            }
        }
        Ok(())
    };
    // SAFETY: the closure only makes async-signal-safe calls (see above) and allocates
    // nothing.
    unsafe {
        command.pre_exec(pre_exec);
    }
}

/// Sends `signal` to process `pid`.
pub fn send_signal(pid: u32, signal: i32) -> io::Result<()> {
    let pid = libc::pid_t::try_from(pid)
        .ok()
        .filter(|pid| *pid > 0)
        .ok_or_else(|| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: kill takes plain integers; the pid is positive, so it names one process and
    // never a process group.
    let result = unsafe { libc::kill(pid, signal) };
    if result == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// True while process `pid` exists and is not a zombie (reads `/proc/PID/stat`).
pub fn process_running(pid: u32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // The state letter follows the command name, which is in parentheses and may hold spaces.
    stat.rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().next())
        .is_some_and(|state| state != "Z" && state != "X")
}

/// This process's id.
pub fn own_pid() -> u32 {
    std::process::id()
}

/// This process's effective user id.
pub fn effective_uid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}
