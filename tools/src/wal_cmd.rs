//! `paxring wal`: inspect a WAL directory (dump, verify, stat) without modifying it.
//!
//! Owns: the human-readable (and JSON) reports of what recovery finds. Must never write to the
//! directory: it reads segments the way recovery does and reports.
use clap::{Args, Subcommand};
use paxring_wal::recovery::Recovery;
use paxring_wal::segfile::cores_in_dir;
use paxring_wal::{inspect_dir, GroupId};
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// Arguments of `paxring wal`.
#[derive(Args, Debug)]
pub struct WalArgs {
    #[command(subcommand)]
    command: WalCommand,
}

#[derive(Subcommand, Debug)]
enum WalCommand {
    /// Print every recovered record, then what was cut or damaged.
    Dump {
        /// The WAL directory (one core's segments).
        dir: PathBuf,
        /// Only this core (default: every core found in DIR).
        #[arg(long)]
        core: Option<u32>,
        /// Print at most this many records per core.
        #[arg(long)]
        limit: Option<usize>,
        /// Also print up to this many payload bytes of each record, in hex.
        #[arg(long, default_value_t = 0)]
        payload_bytes: usize,
    },
    /// Check every checksum; exit 0 when clean, 1 with a report of torn tails and corruption.
    Verify {
        /// The WAL directory.
        dir: PathBuf,
        /// Only this core (default: every core found in DIR).
        #[arg(long)]
        core: Option<u32>,
    },
    /// Summarise segments, LSNs, groups and sizes.
    Stat {
        /// The WAL directory.
        dir: PathBuf,
        /// Only this core (default: every core found in DIR).
        #[arg(long)]
        core: Option<u32>,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

/// Runs `paxring wal`.
pub fn run(args: WalArgs) -> ExitCode {
    let result = match args.command {
        WalCommand::Dump {
            dir,
            core,
            limit,
            payload_bytes,
        } => dump(&dir, core, limit, payload_bytes),
        WalCommand::Verify { dir, core } => verify(&dir, core),
        WalCommand::Stat { dir, core, json } => stat(&dir, core, json),
    };
    match result {
        Ok(code) => code,
        Err(message) => {
            eprintln!("paxring wal: {message}");
            ExitCode::from(2)
        }
    }
}

type Inspected = Vec<(u32, Recovery, Vec<(u64, PathBuf)>)>;

fn inspect(dir: &Path, core: Option<u32>) -> Result<Inspected, String> {
    if !dir.is_dir() {
        return Err(format!("{} is not a directory", dir.display()));
    }
    let cores = match core {
        Some(core) => vec![core],
        None => cores_in_dir(dir).map_err(|e| e.to_string())?,
    };
    if cores.is_empty() {
        return Err(format!("{} holds no WAL segments", dir.display()));
    }
    cores
        .into_iter()
        .map(|core| {
            let (recovery, segments) = inspect_dir(dir, core).map_err(|e| e.to_string())?;
            if segments.is_empty() {
                return Err(format!(
                    "{} holds no segments of core {core}",
                    dir.display()
                ));
            }
            Ok((core, recovery, segments))
        })
        .collect()
}

fn dump(
    dir: &Path,
    core: Option<u32>,
    limit: Option<usize>,
    payload_bytes: usize,
) -> Result<ExitCode, String> {
    for (core, recovery, _) in inspect(dir, core)? {
        println!("# core {core}");
        println!("lsn\tkind\tgroup\tinstance\tpromised\taccepted\tpayload_bytes\tsegment\toffset");
        let locations: BTreeMap<u64, (u64, u64)> = recovery
            .index
            .values()
            .flat_map(|m| m.values())
            .map(|l| (l.lsn.0, (l.segment, l.offset)))
            .collect();
        for (lsn, record) in recovery.records.iter().take(limit.unwrap_or(usize::MAX)) {
            let (segment, offset) = locations
                .get(&lsn.0)
                .map(|(s, o)| (s.to_string(), o.to_string()))
                .unwrap_or_else(|| ("-".into(), "-".into()));
            print!(
                "{lsn}\t{:?}\t{}\t{}\t{}\t{}\t{}\t{segment}\t{offset}",
                record.kind,
                record.group,
                record.instance,
                record.promised,
                record.accepted,
                record.payload.len()
            );
            if payload_bytes > 0 {
                let shown = &record.payload[..record.payload.len().min(payload_bytes)];
                let hex: String = shown.iter().map(|b| format!("{b:02x}")).collect();
                print!("\t{hex}");
            }
            println!();
        }
        print_problems(&recovery);
    }
    Ok(ExitCode::SUCCESS)
}

fn print_problems(recovery: &Recovery) {
    for region in &recovery.tail_regions {
        println!(
            "torn tail: segment {} offset {} length {} bytes: {}",
            region.segment, region.offset, region.len, region.reason
        );
    }
    if let Some((first, last)) = recovery.torn_lsns {
        println!(
            "torn tail: LSNs {first}..={last} were cut (their write never completed as a whole)"
        );
    }
    for damage in &recovery.damaged {
        let who = if damage.identities_complete {
            let names: Vec<String> = damage
                .groups_instances
                .iter()
                .map(|(g, i)| format!("group {g} instance {i}"))
                .collect();
            format!("lost records: {}", names.join(", "))
        } else if damage.groups_instances.is_empty() {
            "identities of the lost records unknown: every group of this core is suspect".into()
        } else {
            let names: Vec<String> = damage
                .groups_instances
                .iter()
                .map(|(g, i)| format!("group {g} instance {i}"))
                .collect();
            format!(
                "some identities unknown (every group suspect); legible: {}",
                names.join(", ")
            )
        };
        println!(
            "DAMAGE: LSNs {}..={} at segment {} offset {}: {}; {}",
            damage.first_lsn, damage.last_lsn, damage.segment, damage.offset, damage.reason, who
        );
    }
    if recovery.junk_bytes > 0 {
        println!(
            "junk: {} bytes between batches that hid no records",
            recovery.junk_bytes
        );
    }
}

fn verify(dir: &Path, core: Option<u32>) -> Result<ExitCode, String> {
    let mut clean = true;
    for (core, recovery, segments) in inspect(dir, core)? {
        let status = if recovery.is_clean() {
            "clean"
        } else {
            "NOT CLEAN"
        };
        println!(
            "core {core}: {status}: {} segments, {} records verified, next LSN {}",
            segments.len(),
            recovery.records.len(),
            recovery.next_lsn
        );
        if !recovery.is_clean() {
            clean = false;
            print_problems(&recovery);
        }
    }
    Ok(if clean {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

#[derive(Serialize)]
struct GroupStat {
    group: u32,
    records: u64,
    instance_min: u64,
    instance_max: u64,
}

#[derive(Serialize)]
struct CoreStat {
    core: u32,
    segments: usize,
    segment_bytes_total: u64,
    records: usize,
    payload_bytes: u64,
    first_lsn: u64,
    last_lsn: u64,
    next_lsn: u64,
    groups: Vec<GroupStat>,
    torn_tail_bytes: u64,
    damaged_ranges: usize,
    junk_bytes: u64,
    stale_bytes: u64,
    clean: bool,
}

fn stat(dir: &Path, core: Option<u32>, json: bool) -> Result<ExitCode, String> {
    let mut stats = Vec::new();
    for (core, recovery, segments) in inspect(dir, core)? {
        let mut groups: BTreeMap<GroupId, GroupStat> = BTreeMap::new();
        let mut payload_bytes = 0u64;
        for (_, record) in &recovery.records {
            payload_bytes += record.payload.len() as u64;
            let entry = groups.entry(record.group).or_insert(GroupStat {
                group: record.group.0,
                records: 0,
                instance_min: record.instance.0,
                instance_max: record.instance.0,
            });
            entry.records += 1;
            entry.instance_min = entry.instance_min.min(record.instance.0);
            entry.instance_max = entry.instance_max.max(record.instance.0);
        }
        let segment_bytes_total = segments
            .iter()
            .map(|(_, path)| std::fs::metadata(path).map(|m| m.len()).unwrap_or(0))
            .sum();
        stats.push(CoreStat {
            core,
            segments: segments.len(),
            segment_bytes_total,
            records: recovery.records.len(),
            payload_bytes,
            first_lsn: recovery.records.first().map_or(0, |(l, _)| l.0),
            last_lsn: recovery.last_lsn().0,
            next_lsn: recovery.next_lsn.0,
            groups: groups.into_values().collect(),
            torn_tail_bytes: recovery.torn_tail_bytes,
            damaged_ranges: recovery.damaged.len(),
            junk_bytes: recovery.junk_bytes,
            stale_bytes: recovery.stale_bytes,
            clean: recovery.is_clean(),
        });
    }
    if json {
        let text = serde_json::to_string_pretty(&stats).map_err(|e| e.to_string())?;
        println!("{text}");
        return Ok(ExitCode::SUCCESS);
    }
    for s in &stats {
        println!("core {}", s.core);
        println!(
            "  segments:        {} ({} bytes)",
            s.segments, s.segment_bytes_total
        );
        println!(
            "  records:         {} ({} payload bytes)",
            s.records, s.payload_bytes
        );
        println!(
            "  LSNs:            {}..={} (next {})",
            s.first_lsn, s.last_lsn, s.next_lsn
        );
        println!("  groups:          {}", s.groups.len());
        for g in &s.groups {
            println!(
                "    group {}: {} records, instances {}..={}",
                g.group, g.records, g.instance_min, g.instance_max
            );
        }
        println!("  torn tail bytes: {}", s.torn_tail_bytes);
        println!("  damaged ranges:  {}", s.damaged_ranges);
        println!("  junk bytes:      {}", s.junk_bytes);
        println!(
            "  stale bytes:     {} (earlier life of recycled segments)",
            s.stale_bytes
        );
    }
    Ok(ExitCode::SUCCESS)
}
