//! CPU-time clocks (`clock_gettime`), and the CPU time of other processes from `/proc`.

/// Reads one of the CPU-time clocks, in nanoseconds.
fn cpu_clock_ns(clock: libc::clockid_t) -> u64 {
    let mut time = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `time` is a valid timespec for clock_gettime to fill.
    let result = unsafe { libc::clock_gettime(clock, &mut time) };
    assert_eq!(result, 0, "clock_gettime");
    time.tv_sec as u64 * 1_000_000_000 + time.tv_nsec as u64
}

/// CPU time this thread has run (nanoseconds).
pub fn thread_cpu_ns() -> u64 {
    cpu_clock_ns(libc::CLOCK_THREAD_CPUTIME_ID)
}

/// CPU time of every thread of this process (nanoseconds).
pub fn process_cpu_ns() -> u64 {
    cpu_clock_ns(libc::CLOCK_PROCESS_CPUTIME_ID)
}

/// CPU time (user and system) of the processes `pids`, in seconds, from `/proc`.
pub fn processes_cpu_seconds(pids: &[u32]) -> std::io::Result<f64> {
    let malformed = |pid| std::io::Error::other(format!("/proc/{pid}/stat: unexpected format"));
    // SAFETY: sysconf reads a constant of the system; it has no memory effects.
    let ticks_per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let mut seconds = 0.0;
    for pid in pids {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
        // Fields after the command name, which is in parentheses and may hold spaces.
        let rest = stat
            .rfind(')')
            .and_then(|end| stat.get(end + 2..))
            .ok_or_else(|| malformed(pid))?;
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let ticks = |index: usize| -> std::io::Result<f64> {
            fields
                .get(index)
                .and_then(|field| field.parse().ok())
                .ok_or_else(|| malformed(pid))
        };
        seconds += (ticks(11)? + ticks(12)?) / ticks_per_second;
    }
    Ok(seconds)
}
