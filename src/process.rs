//! The process's own figures from `/proc/self` (Linux): the standard Prometheus `process_*`
//! metrics and `/debug/memory` both read them here, so there is one reader of each file.

use std::fmt::Write;

/// Clock ticks per second of `/proc/*/stat` times. `USER_HZ` is fixed at 100 in the Linux
/// user ABI on every architecture the broker targets, so no `sysconf` call is needed.
const TICKS_PER_SECOND: f64 = 100.0;

/// What `/proc/self` says about this process; a field is `None` where the file is missing.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct ProcessStats {
    /// Resident set size, bytes.
    pub resident_bytes: Option<u64>,
    /// Virtual memory size, bytes.
    pub virtual_bytes: Option<u64>,
    /// User + system CPU time, seconds.
    pub cpu_seconds: Option<f64>,
    /// Open file descriptors.
    pub open_fds: Option<u64>,
    /// The soft limit on open file descriptors.
    pub max_fds: Option<u64>,
    /// Start time, seconds since the Unix epoch.
    pub start_time_seconds: Option<f64>,
}

impl ProcessStats {
    /// Reads the current figures.
    pub fn read() -> Self {
        let stat = std::fs::read_to_string("/proc/self/stat").ok();
        let fields = stat.as_deref().and_then(stat_fields);
        let boot = std::fs::read_to_string("/proc/stat")
            .ok()
            .and_then(|s| boot_time(&s));
        let status = std::fs::read_to_string("/proc/self/status").ok();
        Self {
            resident_bytes: status
                .as_deref()
                .and_then(|s| status_kb(s, "VmRSS:"))
                .map(|kb| kb * 1024),
            virtual_bytes: status
                .as_deref()
                .and_then(|s| status_kb(s, "VmSize:"))
                .map(|kb| kb * 1024),
            cpu_seconds: fields
                .as_ref()
                .map(|f| (f.utime + f.stime) as f64 / TICKS_PER_SECOND),
            open_fds: std::fs::read_dir("/proc/self/fd")
                .ok()
                .map(|d| d.count() as u64),
            max_fds: std::fs::read_to_string("/proc/self/limits")
                .ok()
                .and_then(|l| max_open_files(&l)),
            start_time_seconds: fields
                .zip(boot)
                .map(|(f, boot)| boot as f64 + f.start_ticks as f64 / TICKS_PER_SECOND),
        }
    }

    /// Appends the standard `process_*` series (the names client libraries use).
    pub fn render(&self, out: &mut String) {
        let series: [(&str, &str, &str, Option<f64>); 6] = [
            (
                "process_resident_memory_bytes",
                "gauge",
                "Resident memory size in bytes.",
                self.resident_bytes.map(|v| v as f64),
            ),
            (
                "process_virtual_memory_bytes",
                "gauge",
                "Virtual memory size in bytes.",
                self.virtual_bytes.map(|v| v as f64),
            ),
            (
                "process_cpu_seconds_total",
                "counter",
                "Total user and system CPU time spent in seconds.",
                self.cpu_seconds,
            ),
            (
                "process_open_fds",
                "gauge",
                "Number of open file descriptors.",
                self.open_fds.map(|v| v as f64),
            ),
            (
                "process_max_fds",
                "gauge",
                "Maximum number of open file descriptors.",
                self.max_fds.map(|v| v as f64),
            ),
            (
                "process_start_time_seconds",
                "gauge",
                "Start time of the process since unix epoch in seconds.",
                self.start_time_seconds,
            ),
        ];
        for (name, kind, help, value) in series {
            if let Some(value) = value {
                let _ = writeln!(
                    out,
                    "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
                );
            }
        }
    }
}

/// The fields of `/proc/self/stat` used here.
struct StatFields {
    utime: u64,
    stime: u64,
    start_ticks: u64,
}

/// Parses `/proc/<pid>/stat`; the command name (field 2) may hold spaces and parentheses,
/// so fields are counted from the last `)`.
fn stat_fields(stat: &str) -> Option<StatFields> {
    let rest = &stat[stat.rfind(')')? + 1..];
    // After ")": field 3 (state) is index 0, so field N is index N - 3.
    let f: Vec<&str> = rest.split_whitespace().collect();
    Some(StatFields {
        utime: f.get(14 - 3)?.parse().ok()?,
        stime: f.get(15 - 3)?.parse().ok()?,
        start_ticks: f.get(22 - 3)?.parse().ok()?,
    })
}

fn boot_time(proc_stat: &str) -> Option<u64> {
    proc_stat
        .lines()
        .find_map(|l| l.strip_prefix("btime "))?
        .trim()
        .parse()
        .ok()
}

fn status_kb(status: &str, key: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

fn max_open_files(limits: &str) -> Option<u64> {
    limits
        .lines()
        .find(|l| l.starts_with("Max open files"))?
        .split_whitespace()
        .nth(3)?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_is_parsed_past_a_command_with_spaces() {
        let line = "42 (my (odd) cmd) S 1 42 42 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 4 0 12345 1000 10 18446744073709551615";
        let f = stat_fields(line).expect("parsed");
        assert_eq!((f.utime, f.stime, f.start_ticks), (250, 50, 12345));
    }

    #[test]
    fn this_process_reports_every_figure() {
        let s = ProcessStats::read();
        assert!(s.resident_bytes.is_some_and(|b| b > 1024 * 1024));
        assert!(s.open_fds.is_some_and(|n| n >= 3));
        assert!(s.max_fds.is_some_and(|n| n >= 64));
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0);
        let start = s.start_time_seconds.unwrap_or(0.0);
        assert!(
            start > now - 3600.0 && start <= now + 1.0,
            "{start} vs {now}"
        );
        let mut out = String::new();
        s.render(&mut out);
        assert!(out.contains("# TYPE process_cpu_seconds_total counter\n"));
        assert!(out.contains("\nprocess_resident_memory_bytes "));
    }
}
