//! What the benchmarks report about this process and the machine beside their timings: CPU
//! time (on a shared machine it varies far less than wall time), the load average, peak
//! memory and the memory on transparent huge pages (Linux's /proc; None elsewhere).

/// CPU time (user + system, all threads) this process has used, in ms.
pub fn cpu_ms() -> f64 {
    // SAFETY: getrusage only writes into the zeroed struct we pass.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) } != 0 {
        return 0.0;
    }
    let tv = |t: libc::timeval| t.tv_sec as f64 * 1000.0 + t.tv_usec as f64 / 1000.0;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// The 1-minute load average (other work on the machine skews the figures).
pub fn load_average() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Peak resident memory (`VmHWM`), in bytes.
pub fn peak_rss_bytes() -> Option<u64> {
    Some(proc_kb("/proc/self/status", "VmHWM:")? * 1024)
}

/// Memory of this process on transparent huge pages (`AnonHugePages`), in bytes: near the
/// weights' size when the kernel granted them, 0 when THP is off.
pub fn huge_page_bytes() -> Option<u64> {
    Some(proc_kb("/proc/self/smaps_rollup", "AnonHugePages:")? * 1024)
}

/// The `key` line's figure, in kB, of a /proc file.
fn proc_kb(path: &str, key: &str) -> Option<u64> {
    let s = std::fs::read_to_string(path).ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix(key))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}
