#![doc = include_str!("../README.md")]

use std::fmt;
use std::time::Duration;

/// Whether the short CI run was asked for (`KISARA_BENCH_SMOKE` set).
pub fn smoke() -> bool {
    std::env::var_os("KISARA_BENCH_SMOKE").is_some()
}

/// The number in environment variable `name`, else `default`.
pub fn env_count(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Whether `section` runs: every section unless `KISARA_BENCH_ONLY` names
/// another one.
pub fn runs(section: &str) -> bool {
    std::env::var("KISARA_BENCH_ONLY")
        .ok()
        .is_none_or(|only| only == section)
}

/// Durations in milliseconds, summarised as median and range: on shared
/// cores a single mean hides the outliers that matter.
#[derive(Debug, Clone, Default)]
pub struct Samples(Vec<f64>);

impl Samples {
    /// Records one duration.
    pub fn push(&mut self, sample: Duration) {
        self.0.push(sample.as_secs_f64() * 1000.0);
    }

    /// Records one plain value (a rate, a size).
    pub fn push_value(&mut self, value: f64) {
        self.0.push(value);
    }

    /// Whether nothing was recorded, as when every attempt failed.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn sorted(&self) -> Vec<f64> {
        let mut sorted = self.0.clone();
        sorted.sort_by(f64::total_cmp);
        sorted
    }

    /// The median (the upper one of an even count); NaN when empty.
    pub fn median(&self) -> f64 {
        let sorted = self.sorted();
        sorted.get(sorted.len() / 2).copied().unwrap_or(f64::NAN)
    }

    /// The smallest and largest sample.
    pub fn range(&self) -> (f64, f64) {
        let sorted = self.sorted();
        (
            sorted.first().copied().unwrap_or(f64::NAN),
            sorted.last().copied().unwrap_or(f64::NAN),
        )
    }
}

impl fmt::Display for Samples {
    /// `median [min–max]`, with the precision asked for (default 1).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let precision = f.precision().unwrap_or(1);
        let (min, max) = self.range();
        write!(
            f,
            "{:.precision$} [{min:.precision$}–{max:.precision$}]",
            self.median()
        )
    }
}

/// This process's resident memory in bytes (`VmRSS` of
/// `/proc/self/status`); 0 where there is no procfs.
pub fn rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map_or(0, |kib| kib * 1024)
}

/// CPU time this process has used so far, user plus system, in seconds
/// (`/proc/self/stat`, counted in 1/100 s ticks); NaN where there is no
/// procfs.
pub fn cpu_seconds() -> f64 {
    std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|stat| {
            // Fields after the command name, which may hold spaces; utime
            // and stime are the 14th and 15th fields of the line.
            let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
            let ticks = |n: usize| fields.get(n - 3)?.parse::<u64>().ok();
            Some((ticks(14)? + ticks(15)?) as f64 / 100.0)
        })
        .unwrap_or(f64::NAN)
}

/// How many file descriptors this process holds (`/proc/self/fd`); 0 where
/// there is no procfs.
pub fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").map_or(0, Iterator::count)
}

/// The share of CPU time the host stole from this VM over an interval: time
/// a vCPU was ready to run but the hypervisor ran something else. On a
/// shared cloud VM it is what makes figures noisy, so benches print it next
/// to them.
#[derive(Debug, Clone, Copy)]
pub struct Steal {
    start: Option<CpuTicks>,
}

impl Steal {
    /// Starts the interval now.
    pub fn start() -> Self {
        Self {
            start: CpuTicks::read(),
        }
    }

    /// Stolen ticks ÷ all ticks since [`Steal::start`], × 100. NaN, never
    /// a made-up 0, where `/proc/stat` is missing or unreadable, or when no
    /// tick has passed yet.
    pub fn percent(&self) -> f64 {
        match (self.start, CpuTicks::read()) {
            (Some(start), Some(now)) => now.percent_stolen_since(start),
            _ => f64::NAN,
        }
    }
}

/// The all-CPU counters of `/proc/stat`, in clock ticks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct CpuTicks {
    /// Time stolen by the host (the 8th value, `steal`).
    steal: u64,
    /// All time: user, nice, system, idle, iowait, irq, softirq and steal.
    /// The `guest` values after them are left out: the kernel already
    /// counts them in user and nice.
    total: u64,
}

impl CpuTicks {
    fn read() -> Option<Self> {
        Self::parse(&std::fs::read_to_string("/proc/stat").ok()?)
    }

    /// The aggregate `cpu` line of a `/proc/stat` text; `None` without one
    /// or when it has fewer than 8 values (kernels before 2.6.11).
    fn parse(stat: &str) -> Option<Self> {
        let values: Vec<u64> = stat
            .lines()
            .find_map(|line| line.strip_prefix("cpu "))?
            .split_whitespace()
            .take(8)
            .map(str::parse)
            .collect::<Result<_, _>>()
            .ok()?;
        let &steal = values.get(7)?;
        Some(Self {
            steal,
            total: values.iter().sum(),
        })
    }

    /// The share of the ticks between `earlier` and these that was stolen,
    /// in percent; NaN when none passed.
    fn percent_stolen_since(self, earlier: Self) -> f64 {
        let steal = self.steal.saturating_sub(earlier.steal) as f64;
        let total = self.total.saturating_sub(earlier.total) as f64;
        steal / total * 100.0
    }
}

/// The `docker run` flags for what Kisara's runtime applies to a spec
/// without options (`ContainerDefaults::default()`): never privileged,
/// `no-new-privileges`, every capability dropped, pids, memory and CPU
/// limits. A raw `docker run` peer passes them so the engine does the same
/// work for both.
pub const DOCKER_RUN_DEFAULTS: &[&str] = &[
    "--security-opt",
    "no-new-privileges",
    "--cap-drop",
    "ALL",
    "--pids-limit",
    "256",
    "--memory",
    "512m",
    "--memory-swap",
    "512m",
    "--cpus",
    "1",
];

/// A closing summary as a Markdown table, ready to paste into notes.
#[derive(Debug, Clone)]
pub struct Table {
    header: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    /// A table with these column names.
    pub fn new(header: &[&str]) -> Self {
        Self {
            header: header.iter().map(|&h| h.to_owned()).collect(),
            rows: Vec::new(),
        }
    }

    /// Adds a row, one cell per column.
    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }
}

/// "yes", "no", or "–" for a measure without a goal.
pub fn met(met: Option<bool>) -> String {
    match met {
        Some(true) => "yes",
        Some(false) => "no",
        None => "–",
    }
    .to_owned()
}

impl fmt::Display for Table {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "| {} |", self.header.join(" | "))?;
        writeln!(f, "|{}", "---|".repeat(self.header.len()))?;
        for row in &self.rows {
            writeln!(f, "| {} |", row.join(" | "))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::CpuTicks;

    const STAT: &str = "cpu  10 0 5 80 0 0 0 5 0 0\n\
                        cpu0 6 0 3 40 0 0 0 1 0 0\n\
                        intr 12345 0 0\n";

    #[test]
    fn reads_steal_and_total_from_the_aggregate_cpu_line() {
        assert_eq!(
            CpuTicks::parse(STAT),
            Some(CpuTicks {
                steal: 5,
                total: 100
            })
        );
    }

    #[test]
    fn leaves_guest_time_out_of_the_total() {
        let stat = "cpu  10 0 5 80 0 0 0 5 7 3\n";
        assert_eq!(CpuTicks::parse(stat).map(|t| t.total), Some(100));
    }

    #[test]
    fn needs_the_steal_column() {
        assert_eq!(CpuTicks::parse("cpu  10 0 5 80 0 0 0\n"), None);
        assert_eq!(CpuTicks::parse("cpu0 10 0 5 80 0 0 0 5\n"), None);
        assert_eq!(CpuTicks::parse(""), None);
    }

    #[test]
    fn percent_is_stolen_over_all_ticks_in_the_interval() {
        let earlier = CpuTicks::parse(STAT).unwrap();
        let later = CpuTicks::parse("cpu  40 0 15 120 0 0 0 25 0 0\n").unwrap();
        // 20 of the 100 ticks in between were stolen.
        assert!((later.percent_stolen_since(earlier) - 20.0).abs() < 1e-9);
        assert!(earlier.percent_stolen_since(earlier).is_nan());
    }
}
