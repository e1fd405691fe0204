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

/// Whether section `name` runs: every section unless `KISARA_BENCH_ONLY`
/// names another one.
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
