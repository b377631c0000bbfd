//! CPU time of this process and of some of its threads, read from procfs.
//!
//! The in-process server (or echo responder) and the generator share one process, so the
//! bench splits the process's CPU time: whatever the process spent during the heartbeat phase,
//! minus what the generator's threads and the main thread spent, is the server's. This needs no
//! knowledge of how many threads the server runs or what they are called (its IO layer may
//! move work between threads), and it includes threads that exit during the phase. Linux keeps
//! the figures under `/proc/self`:
//!
//! - the whole process: `/proc/self/stat` fields 14 and 15, user and system time of every
//!   thread, live or exited, in clock ticks (`USER_HZ`, 100 on every Linux ABI): 10 ms
//!   resolution, about 0.1 % of a 10 s run's server time;
//! - one thread: `/proc/self/task/<tid>/schedstat`, whose first field is the time the thread
//!   has spent on a CPU in nanoseconds (user and system together; the scheduler's
//!   `sum_exec_runtime`), or, where that file is missing (kernels without
//!   `CONFIG_SCHED_INFO`), the thread's own `stat` fields 14 and 15.
//!
//! These are the figures `getrusage(RUSAGE_SELF)` and `getrusage(RUSAGE_THREAD)` report, but
//! readable for *other* threads, without `unsafe` and without another nix feature. Kernel work
//! done on behalf of a thread (system calls, and on loopback the softirq delivery of the
//! datagrams it sends) counts as that thread's system time. Other benches or tests running in
//! the same process at the same time would be counted as server time: run one bench per process.

use std::path::Path;

/// `USER_HZ`: fixed at 100 by the Linux user-space ABI for `/proc/*/stat`.
const USER_HZ: f64 = 100.0;

/// How the bench measured, for the report.
pub const METHOD: &str = "from the start to the end (after the drain) of the heartbeat phase: \
     server = this process's CPU time (/proc/self/stat utime+stime, every thread, USER_HZ=100) \
     minus the generator threads' and the main thread's (/proc/self/task/<tid>/schedstat, ns); \
     generator = its threads' schedstat";

/// User + system CPU seconds of the whole process so far, exited threads included.
pub fn process_cpu_seconds() -> Option<f64> {
    stat_cpu_seconds(Path::new("/proc/self"))
}

/// CPU seconds so far of the calling thread.
pub fn current_thread_cpu_seconds() -> Option<f64> {
    task_cpu_seconds(Path::new("/proc/thread-self"))
}

/// Total CPU seconds (user + system) so far of every live thread of this process whose name is
/// `name`. `None` when procfs is not readable (not Linux).
pub fn threads_cpu_seconds(name: &str) -> Option<f64> {
    let tasks = std::fs::read_dir("/proc/self/task").ok()?;
    let mut total = 0.0;
    for t in tasks.flatten() {
        let dir = t.path();
        let comm = std::fs::read_to_string(dir.join("comm")).unwrap_or_default();
        if comm.trim_end_matches('\n') != name {
            continue;
        }
        total += task_cpu_seconds(&dir).unwrap_or(0.0);
    }
    Some(total)
}

fn task_cpu_seconds(dir: &Path) -> Option<f64> {
    if let Ok(s) = std::fs::read_to_string(dir.join("schedstat")) {
        if let Some(ns) = s.split_whitespace().next().and_then(|f| f.parse::<u64>().ok()) {
            return Some(ns as f64 / 1e9);
        }
    }
    stat_cpu_seconds(dir)
}

/// utime + stime from `dir/stat` (a process or a task).
fn stat_cpu_seconds(dir: &Path) -> Option<f64> {
    let stat = std::fs::read_to_string(dir.join("stat")).ok()?;
    // The name (field 2) is in parentheses and may hold spaces: split after the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3 (state), so utime (14) and stime (15) are at 11 and 12.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) as f64 / USER_HZ)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_busy_named_thread_is_measured() {
        let name = "lic-cpu-test";
        let h = std::thread::Builder::new()
            .name(name.into())
            .spawn(move || {
                // Spin until the thread itself has used 30 ms of CPU (not for a wall time: on a
                // loaded machine 100 ms of wall time gave it only 17 ms), at most 10 s.
                let start = std::time::Instant::now();
                let mut x = 0u64;
                while current_thread_cpu_seconds().is_some_and(|c| c < 0.03)
                    && start.elapsed() < std::time::Duration::from_secs(10)
                {
                    for _ in 0..10_000 {
                        x = x.wrapping_mul(31).wrapping_add(1);
                    }
                }
                let cpu = threads_cpu_seconds(name);
                std::hint::black_box(x);
                cpu
            })
            .expect("spawn");
        let cpu = h.join().expect("join");
        if let Some(cpu) = cpu {
            assert!(cpu > 0.02, "{cpu}");
            assert_eq!(threads_cpu_seconds("no-such-thread"), Some(0.0));
            // The process's total includes the thread, which has exited by now.
            assert!(process_cpu_seconds().is_some_and(|p| p >= cpu - 0.011), "{cpu}");
            assert!(current_thread_cpu_seconds().is_some());
        }
    }
}
