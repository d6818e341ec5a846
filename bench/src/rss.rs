//! The process's memory as the kernel counts it: `VmRSS` (resident now) and `VmHWM` (the
//! highest resident size since the process started) from `/proc/self/status`, sampled at the
//! edges of every benchmark mode (and per interval where a mode runs long) so that "memory
//! stays flat" can be read off the JSON report.
//!
//! Owns: the parser of `/proc/self/status` and the samples' report shape. Never: allocates on
//! anyone's data path (a sample is one small file read, taken by the benchmark's own thread).

use serde::{Deserialize, Serialize};
use std::time::Instant;

/// Resident memory of this process at one moment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Memory {
    /// `VmRSS`: resident set size now, bytes.
    pub rss_bytes: u64,
    /// `VmHWM`: the largest resident set size so far (the high-water mark), bytes.
    pub hwm_bytes: u64,
    /// `RssAnon`: of `rss_bytes`, anonymous memory (the heap: what "memory stays flat" is
    /// about), bytes; absent before Linux 4.5.
    #[serde(default)]
    pub anon_bytes: Option<u64>,
    /// `RssFile`: of `rss_bytes`, file pages mapped (e.g. WAL segments mapped by recovery:
    /// page cache the kernel can take back), bytes; absent before Linux 4.5.
    #[serde(default)]
    pub file_bytes: Option<u64>,
}

/// The value of one `Name:   1234 kB` line of `/proc/<pid>/status`, in bytes.
fn field_bytes(text: &str, name: &str) -> Option<u64> {
    let line = text.lines().find(|l| {
        l.strip_prefix(name)
            .is_some_and(|rest| rest.starts_with(':'))
    })?;
    let mut words = line[name.len() + 1..].split_whitespace();
    let number: u64 = words.next()?.parse().ok()?;
    let factor = match words.next() {
        Some("kB") => 1024,
        // The kernel has always said kB; anything else is not a figure to trust.
        _ => return None,
    };
    if words.next().is_some() {
        return None;
    }
    number.checked_mul(factor)
}

/// `VmRSS` and `VmHWM` (and `RssAnon`, `RssFile` where the kernel has them) from the text
/// of a `/proc/<pid>/status` file; `None` when `VmRSS` or `VmHWM` is missing or malformed
/// (kernel threads have neither).
pub fn parse_status(text: &str) -> Option<Memory> {
    Some(Memory {
        rss_bytes: field_bytes(text, "VmRSS")?,
        hwm_bytes: field_bytes(text, "VmHWM")?,
        anon_bytes: field_bytes(text, "RssAnon"),
        file_bytes: field_bytes(text, "RssFile"),
    })
}

/// This process's memory now (`None` off Linux or when `/proc` is not mounted).
pub fn read_self() -> Option<Memory> {
    parse_status(&std::fs::read_to_string("/proc/self/status").ok()?)
}

/// One sample: when, what the benchmark was doing, and the memory.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Sample {
    /// Seconds since the mode started.
    pub seconds: f64,
    /// What was happening (`start`, `after load`, `end`, a phase's name, `interval`).
    pub at: String,
    /// `VmRSS`, bytes.
    pub rss_bytes: u64,
    /// `VmHWM`, bytes.
    pub hwm_bytes: u64,
    /// `RssAnon`, bytes (absent on old kernels).
    pub anon_bytes: Option<u64>,
    /// `RssFile`, bytes (absent on old kernels).
    pub file_bytes: Option<u64>,
}

/// A mode's memory figures, as the JSON reports carry them.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct RssReport {
    /// `VmRSS` when the mode started, bytes (0: not readable here).
    pub rss_bytes_start: u64,
    /// `VmRSS` right after the mode's load stopped, bytes.
    pub rss_bytes_after_load: u64,
    /// `VmRSS` at the end (after the mode released what it started), bytes.
    pub rss_bytes_end: u64,
    /// `VmHWM` at the end: the largest resident size of the whole run, bytes.
    pub rss_hwm_bytes: u64,
    /// The largest `RssAnon` among the samples (the heap's peak as sampled), bytes.
    #[serde(default)]
    pub rss_anon_bytes_max: u64,
    /// `RssAnon` at the end, bytes.
    #[serde(default)]
    pub rss_anon_bytes_end: u64,
    /// Every sample, in order (a bounded number: `SAMPLES_MAX`).
    pub samples: Vec<Sample>,
}

/// Most samples one log keeps (one per 250 ms is about 40 minutes); later interval samples
/// replace the last one, so the series stays bounded and its end stays current.
pub const SAMPLES_MAX: usize = 10_000;

/// Samples taken by one mode.
#[derive(Debug)]
pub struct RssLog {
    started: Instant,
    samples: Vec<Sample>,
    after_load: Option<u64>,
}

impl RssLog {
    /// Starts the log and takes the `start` sample.
    pub fn start() -> RssLog {
        let mut log = RssLog {
            started: Instant::now(),
            samples: Vec::new(),
            after_load: None,
        };
        log.sample("start");
        log
    }

    /// Takes one sample labelled `at`; returns it (None when /proc cannot be read).
    pub fn sample(&mut self, at: &str) -> Option<Memory> {
        let memory = read_self()?;
        let sample = Sample {
            seconds: self.started.elapsed().as_secs_f64(),
            at: at.to_string(),
            rss_bytes: memory.rss_bytes,
            hwm_bytes: memory.hwm_bytes,
            anon_bytes: memory.anon_bytes,
            file_bytes: memory.file_bytes,
        };
        if self.samples.len() >= SAMPLES_MAX {
            self.samples.pop();
        }
        self.samples.push(sample);
        Some(memory)
    }

    /// Takes the `after load` sample (the figure `rss_bytes_after_load` reports).
    pub fn after_load(&mut self) {
        if let Some(memory) = self.sample("after load") {
            self.after_load = Some(memory.rss_bytes);
        }
    }

    /// Takes the `end` sample and returns the report.
    pub fn finish(mut self) -> RssReport {
        let end = self.sample("end");
        RssReport {
            rss_bytes_start: self.samples.first().map_or(0, |s| s.rss_bytes),
            rss_bytes_after_load: self.after_load.unwrap_or(0),
            rss_bytes_end: end.map_or(0, |m| m.rss_bytes),
            rss_hwm_bytes: end.map_or(0, |m| m.hwm_bytes),
            rss_anon_bytes_max: self
                .samples
                .iter()
                .filter_map(|s| s.anon_bytes)
                .max()
                .unwrap_or(0),
            rss_anon_bytes_end: end.and_then(|m| m.anon_bytes).unwrap_or(0),
            samples: self.samples,
        }
    }
}

/// "12.3 MiB".
pub fn mib_text(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

/// One line for a report's text output.
pub fn summary_line(report: &RssReport) -> String {
    format!(
        "memory (this process): RSS start {}, after load {}, end {}; high-water mark {}; \
         anonymous (heap) at most {} as sampled, {} at the end",
        mib_text(report.rss_bytes_start),
        mib_text(report.rss_bytes_after_load),
        mib_text(report.rss_bytes_end),
        mib_text(report.rss_hwm_bytes),
        mib_text(report.rss_anon_bytes_max),
        mib_text(report.rss_anon_bytes_end)
    )
}

#[cfg(test)]
mod tests {
    //! Proves that the status parser reads VmRSS and VmHWM in bytes, refuses what it cannot
    //! trust (a missing field, another unit, a near-miss name), and that this process's own
    //! status parses with a resident size no larger than its high-water mark.
    use super::*;

    const STATUS: &str = "Name:\tpaxring-bench\nUmask:\t0022\nState:\tR (running)\n\
        VmPeak:\t  123456 kB\nVmSize:\t  120000 kB\nVmHWM:\t    9000 kB\nVmRSS:\t    8192 kB\n\
        RssAnon:\t    4096 kB\nThreads:\t5\n";

    #[test]
    fn reads_rss_and_hwm_in_bytes() {
        let memory = parse_status(STATUS).expect("parses");
        assert_eq!(memory.rss_bytes, 8192 * 1024);
        assert_eq!(memory.hwm_bytes, 9000 * 1024);
        assert_eq!(memory.anon_bytes, Some(4096 * 1024));
        // RssFile is optional (kernels before 4.5 have neither it nor RssAnon).
        assert_eq!(memory.file_bytes, None);
    }

    #[test]
    fn refuses_what_it_cannot_trust() {
        let without_rss = STATUS.replace("VmRSS", "VmXYZ");
        assert_eq!(parse_status(&without_rss), None);
        let in_pages = STATUS.replace("8192 kB", "8192 pages");
        assert_eq!(parse_status(&in_pages), None);
        let garbage = STATUS.replace("8192 kB", "lots kB");
        assert_eq!(parse_status(&garbage), None);
        // "VmRSSx:" is not "VmRSS:".
        let near_miss = "VmRSSx:\t 1 kB\nVmHWM:\t 2 kB\n";
        assert_eq!(parse_status(near_miss), None);
        // A kernel thread's status has neither field.
        assert_eq!(parse_status("Name:\tkworker/0:1\nState:\tI (idle)\n"), None);
    }

    #[test]
    fn this_process_has_a_resident_size() {
        let memory = read_self().expect("/proc/self/status is readable on Linux");
        assert!(memory.rss_bytes > 0);
        assert!(memory.rss_bytes <= memory.hwm_bytes, "{memory:?}");
        let mut log = RssLog::start();
        log.after_load();
        let report = log.finish();
        assert_eq!(report.samples.len(), 3);
        assert!(report.rss_bytes_start > 0 && report.rss_bytes_end > 0);
        assert!(report.rss_hwm_bytes >= report.rss_bytes_end);
        if let Some(anon) = memory.anon_bytes {
            assert!(anon <= memory.rss_bytes, "{memory:?}");
            assert!(report.rss_anon_bytes_max > 0);
        }
    }
}
