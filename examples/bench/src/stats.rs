//! Percentiles, medians, process CPU time and peak memory (from `/proc`, no `unsafe`).

use std::time::Duration;

/// Exact percentile `p` (0..=100) of `sorted` (ascending), nearest rank.
pub(crate) fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    // The epsilon keeps float error (0.999 * 1000 = 999.0000000000001) from adding a rank.
    let rank = ((p / 100.0) * sorted.len() as f64 - 1e-9).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Median of `values` (mean of the middle two for an even count).
pub(crate) fn median(values: &[f64]) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if !n.is_multiple_of(2) {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn clock_ticks() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse::<f64>().ok())
        .unwrap_or(100.0)
}

/// User + system CPU time of this process so far (all threads, librdkafka's included).
pub(crate) fn cpu_time() -> Duration {
    process_cpu_time("self").unwrap_or_default()
}

/// Clock ticks per second of `/proc`'s CPU counters (asked once).
fn ticks_per_second() -> f64 {
    static TICKS: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(clock_ticks)
}

/// `/proc/<pid>/stat`: the process's command name and its CPU counters in clock ticks (utime,
/// stime, and cutime, cstime: what its exited children used), `None` when it cannot be read.
fn proc_stat(pid: &str) -> Option<(String, [f64; 4])> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (head, rest) = stat.rsplit_once(')')?;
    let comm = head.split_once('(').map_or("", |(_, c)| c).to_owned();
    // Fields after the `(comm)`: state is field 3, utime 14, stime 15, cutime 16, cstime 17.
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let get = |i: usize| fields.get(i).and_then(|f| f.parse::<f64>().ok());
    Some((comm, [get(11)?, get(12)?, get(13)?, get(14)?]))
}

/// User + system CPU time so far of the process `pid` (`"self"` for this one), `None` when its
/// `/proc` entry cannot be read (it exited, or it runs on another machine).
pub(crate) fn process_cpu_time(pid: &str) -> Option<Duration> {
    let (_, [user, system, ..]) = proc_stat(pid)?;
    Some(Duration::from_secs_f64(
        (user + system) / ticks_per_second(),
    ))
}

/// User + system CPU time so far of every process named `postgres` on this machine (the
/// PostgreSQL server: postmaster, backends, walsenders, background workers), with what their
/// exited children used (so a backend that ended meanwhile still counts); `None` when `url`
/// names another machine or no such process runs here.
pub(crate) fn postgres_cpu_time(url: &str) -> Option<Duration> {
    if !is_local(url) {
        return None;
    }
    let ticks: Vec<f64> = std::fs::read_dir("/proc")
        .ok()?
        .flatten()
        .filter_map(|entry| {
            let name = entry.file_name();
            let pid = name.to_str()?;
            if !pid.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            let (comm, counters) = proc_stat(pid)?;
            (comm == "postgres").then(|| counters.iter().sum())
        })
        .collect();
    if ticks.is_empty() {
        return None;
    }
    Some(Duration::from_secs_f64(
        ticks.iter().sum::<f64>() / ticks_per_second(),
    ))
}

/// Whether database URL `url` names this machine (loopback, or a Unix socket: no host).
fn is_local(url: &str) -> bool {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = rest.split(['/', '?']).next().unwrap_or_default();
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let host = if let Some(v6) = host_port.strip_prefix('[') {
        v6.split(']').next().unwrap_or_default()
    } else {
        host_port.split(':').next().unwrap_or_default()
    };
    matches!(host, "" | "localhost" | "127.0.0.1" | "::1")
}

/// Peak resident set size of this process (`VmHWM`), in KiB.
pub(crate) fn peak_rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// Latency summary of one run, in microseconds.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Latency {
    pub(crate) mean: f64,
    pub(crate) p50: f64,
    pub(crate) p99: f64,
    pub(crate) p999: f64,
}

impl Latency {
    pub(crate) fn of(mut micros: Vec<u64>) -> Latency {
        micros.sort_unstable();
        let mean = if micros.is_empty() {
            0.0
        } else {
            micros.iter().sum::<u64>() as f64 / micros.len() as f64
        };
        Latency {
            mean,
            p50: percentile(&micros, 50.0) as f64,
            p99: percentile(&micros, 99.0) as f64,
            p999: percentile(&micros, 99.9) as f64,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_use_nearest_rank() {
        let v: Vec<u64> = (1..=1000).collect();
        assert_eq!(percentile(&v, 50.0), 500);
        assert_eq!(percentile(&v, 99.0), 990);
        assert_eq!(percentile(&v, 99.9), 999);
        assert_eq!(percentile(&v, 100.0), 1000);
        assert_eq!(percentile(&[], 50.0), 0);
    }

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), 2.5);
    }

    #[test]
    fn process_counters_are_readable() {
        let before = cpu_time();
        let mut x = 0u64;
        for i in 0..50_000_000u64 {
            x = x.wrapping_add(i * i);
        }
        std::hint::black_box(x);
        assert!(cpu_time() >= before);
        assert!(peak_rss_kib() > 0);
    }

    #[test]
    fn only_loopback_and_socket_urls_are_local() {
        assert!(is_local("postgres://postgres@127.0.0.1:5432/test"));
        assert!(is_local("postgres://u:p@localhost/test?sslmode=disable"));
        assert!(is_local("postgres://u@[::1]:5432/db"));
        assert!(is_local("postgres:///test?host=/var/run/postgresql"));
        assert!(!is_local("postgres://postgres@db.example.com:5432/test"));
        assert!(!is_local("postgres://u:p@10.0.0.7/test"));
        assert_eq!(postgres_cpu_time("postgres://u@db.example.com/test"), None);
        // The project's machines run PostgreSQL locally (CI's included).
        if std::env::var_os("CI").is_some() {
            assert!(postgres_cpu_time("postgres://postgres@127.0.0.1:5432/test").is_some());
        }
    }
}
