//! `paxring-bench compare A.json B.json`: the differences between two cluster benchmark runs,
//! point by point (absolute and percent), ceilings included.
//!
//! Owns: reading two `--json` outputs and printing their differences. Never: judges a change
//! good or bad on its own (it prints the numbers; which direction is better is in the header).

use serde_json::Value;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// Arguments of `paxring-bench compare`.
#[derive(clap::Args, Debug)]
pub struct CompareArgs {
    /// The baseline run (`--json` output).
    pub a: PathBuf,
    /// The run to compare with it.
    pub b: PathBuf,
}

/// Figures compared per point: (JSON path, label, higher is better).
const POINT_FIGURES: [(&str, &str, bool); 12] = [
    ("commits_per_s", "commits/s", true),
    ("payload_mb_per_s", "payload MB/s", true),
    ("latency_us.p50", "p50 µs", false),
    ("latency_us.p99", "p99 µs", false),
    ("latency_us.p999", "p999 µs", false),
    ("latency_us.max", "max µs", false),
    ("durable_writes_per_commit", "durable writes/commit", false),
    ("durable_writes_per_round", "durable writes/round", false),
    ("records_per_round", "records/round", true),
    ("rtts_per_commit", "RTTs/commit", false),
    ("write_amplification", "write amplification", false),
    ("cpu_us_per_commit", "CPU µs/commit", false),
];

const CEILING_FIGURES: [(&str, &str, bool); 4] = [
    ("disk_fsync_p50_us", "disk fsync p50 µs", false),
    ("disk_mb_per_s_1w", "disk MB/s, 1 writer", true),
    ("disk_mb_per_s_3w", "disk MB/s, 3 writers", true),
    ("rtt_us_p50", "loopback RTT p50 µs", false),
];

fn load(path: &Path) -> Result<Value, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let value: Value =
        serde_json::from_str(&text).map_err(|e| format!("{} is not JSON: {e}", path.display()))?;
    if !value.get("points").is_some_and(Value::is_array) {
        return Err(format!(
            "{} has no \"points\" array: is it a `paxring-bench --json` output?",
            path.display()
        ));
    }
    Ok(value)
}

fn field(value: &Value, path: &str) -> Option<f64> {
    let mut v = value;
    for part in path.split('.') {
        v = v.get(part)?;
    }
    v.as_f64()
}

fn key(point: &Value) -> Option<(u64, u64, u64, u64)> {
    Some((
        point.get("groups")?.as_u64()?,
        point.get("value_bytes")?.as_u64()?,
        point.get("pipeline_depth")?.as_u64()?,
        point.get("clients")?.as_u64()?,
    ))
}

fn diff_line(out: &mut String, label: &str, a: Option<f64>, b: Option<f64>, higher_better: bool) {
    let show = |x: Option<f64>| match x {
        Some(x) => format!("{x:.3}"),
        None => "-".into(),
    };
    let (delta, pct) = match (a, b) {
        (Some(a), Some(b)) => (
            format!("{:+.3}", b - a),
            if a != 0.0 {
                format!("{:+.1}%", (b - a) / a * 100.0)
            } else {
                "-".into()
            },
        ),
        _ => ("-".into(), "-".into()),
    };
    let _ = writeln!(
        out,
        "    {label:<24} {:>14} {:>14} {delta:>14} {pct:>9}   ({} is better)",
        show(a),
        show(b),
        if higher_better { "higher" } else { "lower" }
    );
}

/// The comparison as text.
pub fn compare_text(a: &Value, b: &Value) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "    {:<24} {:>14} {:>14} {:>14} {:>9}",
        "", "A", "B", "B - A", "%"
    );
    let _ = writeln!(out, "ceilings:");
    for (path, label, hb) in CEILING_FIGURES {
        diff_line(
            &mut out,
            label,
            a.get("ceilings").and_then(|c| field(c, path)),
            b.get("ceilings").and_then(|c| field(c, path)),
            hb,
        );
    }
    let empty = Vec::new();
    let a_points = a["points"].as_array().unwrap_or(&empty);
    let b_points = b["points"].as_array().unwrap_or(&empty);
    for pa in a_points {
        let Some(k) = key(pa) else { continue };
        let _ = writeln!(
            out,
            "groups={} value={} B pipeline={} clients={}:",
            k.0, k.1, k.2, k.3
        );
        match b_points.iter().find(|pb| key(pb) == Some(k)) {
            Some(pb) => {
                for (path, label, hb) in POINT_FIGURES {
                    diff_line(&mut out, label, field(pa, path), field(pb, path), hb);
                }
            }
            None => {
                let _ = writeln!(out, "    only in A");
            }
        }
    }
    for pb in b_points {
        let Some(k) = key(pb) else { continue };
        if !a_points.iter().any(|pa| key(pa) == Some(k)) {
            let _ = writeln!(
                out,
                "groups={} value={} B pipeline={} clients={}:\n    only in B",
                k.0, k.1, k.2, k.3
            );
        }
    }
    out
}

/// Runs `paxring-bench compare`.
pub fn run(args: CompareArgs) -> ExitCode {
    match load(&args.a).and_then(|a| load(&args.b).map(|b| (a, b))) {
        Ok((a, b)) => {
            println!("A = {}\nB = {}", args.a.display(), args.b.display());
            print!("{}", compare_text(&a, &b));
            ExitCode::SUCCESS
        }
        Err(message) => {
            eprintln!("paxring-bench compare: {message}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    //! Proves that matching points are diffed with the right sign and percent, and that points
    //! present in one run only are named.
    use super::*;

    #[test]
    fn diffs_matching_points() {
        let a = serde_json::json!({
            "ceilings": {"disk_fsync_p50_us": 100.0, "disk_mb_per_s_1w": 200.0,
                         "disk_mb_per_s_3w": 300.0, "rtt_us_p50": 25.0},
            "points": [
                {"groups": 100, "value_bytes": 100, "pipeline_depth": 8, "clients": 800,
                 "commits_per_s": 1000.0, "latency_us": {"p50": 500.0}},
                {"groups": 1, "value_bytes": 100, "pipeline_depth": 8, "clients": 1,
                 "commits_per_s": 10.0}
            ]
        });
        let b = serde_json::json!({
            "ceilings": {"disk_fsync_p50_us": 110.0},
            "points": [
                {"groups": 100, "value_bytes": 100, "pipeline_depth": 8, "clients": 800,
                 "commits_per_s": 1500.0, "latency_us": {"p50": 400.0}},
                {"groups": 20, "value_bytes": 4096, "pipeline_depth": 8, "clients": 160,
                 "commits_per_s": 5.0}
            ]
        });
        let text = compare_text(&a, &b);
        assert!(
            text.contains("+500.000") && text.contains("+50.0%"),
            "{text}"
        );
        assert!(
            text.contains("-100.000") && text.contains("-20.0%"),
            "{text}"
        );
        assert!(text.contains("+10.0%"), "{text}");
        assert!(
            text.contains("only in A") && text.contains("only in B"),
            "{text}"
        );
    }
}
